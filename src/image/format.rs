//! What a wasm guest looks like in a registry.
//!
//! cairn writes the CNCF TAG-Runtime wasm artifact: an OCI image manifest
//! whose config is `application/vnd.wasm.config.v0+json` and whose single
//! layer is `application/wasm`. It reads that, the layer types older tools
//! publish (Spin's `application/vnd.wasm.content.layer.v1+wasm`, the
//! Bytecode Alliance's component layer), and ORAS-style artifacts: one layer
//! of any type, no container config, whose bytes turn out to be wasm. An
//! image index is followed to its wasm entry. Everything else is refused
//! with a description of what was found.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The manifest types a pull asks for.
pub const ACCEPT: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
pub const WASM_LAYER: &str = "application/wasm";
const SPIN_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";
const COMPONENT_LAYER: &str = "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";
const CONTAINER_CONFIGS: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];
pub const TITLE: &str = "org.opencontainers.image.title";

/// Manifests larger than this are refused (the distribution registry's own
/// limit is 4 MiB).
pub const MAX_MANIFEST: usize = 4 << 20;
/// A wasm config blob larger than this is not read.
pub const MAX_CONFIG: u64 = 1 << 20;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

/// A manifest or an index, read leniently: only what choosing a layer needs.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    pub media_type: Option<String>,
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    pub manifests: Option<Vec<Descriptor>>,
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| format!("the registry sent a manifest that is not valid JSON: {e}"))?;
        if m.schema_version != 2 {
            return Err(format!(
                "unsupported manifest schema version {}",
                m.schema_version
            ));
        }
        Ok(m)
    }

    pub fn is_index(&self) -> bool {
        match self.media_type.as_deref() {
            Some(OCI_INDEX | DOCKER_LIST) => true,
            Some(_) => false,
            None => self.manifests.is_some(),
        }
    }
}

/// Where the wasm came from, in the registry's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// CNCF wasm artifact (`application/wasm`).
    Cncf,
    /// Spin and older tooling.
    Spin,
    /// The Bytecode Alliance component layer.
    Component,
    /// One layer of another type; its bytes must be wasm.
    Oras,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Cncf => "cncf",
            Layout::Spin => "spin",
            Layout::Component => "component-layer",
            Layout::Oras => "single-layer",
        }
    }
}

/// The layer a guest is read from.
#[derive(Debug)]
pub struct Choice {
    pub layer: Descriptor,
    pub layout: Layout,
    /// The config blob, when it is a wasm config worth reading.
    pub wasm_config: Option<Descriptor>,
}

/// The index entry for wasm: a `wasm` platform, else a wasm artifact type.
pub fn choose_entry(index: &Manifest) -> Result<Descriptor, String> {
    let entries = index.manifests.as_deref().unwrap_or_default();
    let wasm = entries.iter().find(|e| {
        e.platform
            .as_ref()
            .is_some_and(|p| p.architecture == "wasm")
            || e.artifact_type.as_deref().is_some_and(is_wasm_type)
    });
    match wasm {
        Some(e) => Ok(e.clone()),
        None if entries.is_empty() => Err("an empty image index".into()),
        None => {
            let platforms: Vec<String> = entries
                .iter()
                .map(|e| match &e.platform {
                    Some(p) => format!("{}/{}", p.os, p.architecture),
                    None => e.media_type.clone(),
                })
                .collect();
            Err(format!(
                "an image index for {}, with no wasm entry: not a wasm guest",
                platforms.join(", ")
            ))
        }
    }
}

fn is_wasm_type(t: &str) -> bool {
    t == WASM_CONFIG || t == WASM_LAYER || t == SPIN_LAYER || t == COMPONENT_LAYER
}

/// Picks the wasm layer of an image manifest, or says what the image is.
pub fn choose_layer(m: &Manifest) -> Result<Choice, String> {
    let config_type = m.config.as_ref().map(|c| c.media_type.as_str());
    let wasm: Vec<(&Descriptor, Layout)> = m
        .layers
        .iter()
        .filter_map(|l| {
            let layout = match l.media_type.as_str() {
                WASM_LAYER => Layout::Cncf,
                SPIN_LAYER => Layout::Spin,
                COMPONENT_LAYER => Layout::Component,
                _ => return None,
            };
            Some((l, layout))
        })
        .collect();
    let wasm_config = m
        .config
        .clone()
        .filter(|c| c.media_type == WASM_CONFIG && c.size <= MAX_CONFIG);
    match wasm.as_slice() {
        [(layer, layout)] => Ok(Choice {
            layer: (*layer).clone(),
            layout: *layout,
            wasm_config,
        }),
        [] => {
            let container = config_type.is_some_and(|t| CONTAINER_CONFIGS.contains(&t));
            if let ([layer], false) = (m.layers.as_slice(), container) {
                return Ok(Choice {
                    layer: layer.clone(),
                    layout: Layout::Oras,
                    wasm_config,
                });
            }
            Err(format!("{}: not a wasm guest", describe(m)))
        }
        many => Err(format!(
            "{} wasm layers ({}): a guest is one module or component",
            many.len(),
            many.iter()
                .map(|(l, _)| short(&l.digest))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// `a container image (config …, 3 layers of …)`.
fn describe(m: &Manifest) -> String {
    let config = m.config.as_ref().map_or("no config".to_string(), |c| {
        format!("config {}", c.media_type)
    });
    let mut types: Vec<&str> = m.layers.iter().map(|l| l.media_type.as_str()).collect();
    types.dedup();
    let what = if m
        .config
        .as_ref()
        .is_some_and(|c| CONTAINER_CONFIGS.contains(&c.media_type.as_str()))
    {
        "a container image"
    } else {
        "an artifact"
    };
    let layers = match m.layers.len() {
        0 => "no layers".to_string(),
        1 => format!("1 layer of {}", types.join(", ")),
        n => format!("{n} layers of {}", types.join(", ")),
    };
    format!("{what} ({config}, {layers})")
}

/// `sha256:0123456789ab`.
pub fn short(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}

/// What the bytes of a wasm binary are, from its 8-byte header.
pub fn wasm_kind(header: &[u8]) -> Option<WasmKind> {
    match header.get(..8)? {
        [0, b'a', b's', b'm', 1, 0, 0, 0] => Some(WasmKind::Module),
        [0, b'a', b's', b'm', _, _, 1, 0] => Some(WasmKind::Component),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WasmKind {
    Module,
    Component,
}

impl WasmKind {
    /// The `os` of the CNCF config.
    pub fn os(self) -> &'static str {
        match self {
            WasmKind::Module => "wasip1",
            WasmKind::Component => "wasip2",
        }
    }
}

/// The CNCF config of an artifact cairn pushes.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WasmConfig {
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    pub architecture: String,
    pub os: String,
    pub layer_digests: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<ComponentInfo>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct ComponentInfo {
    pub exports: Vec<String>,
    pub imports: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Validates a wasm binary and reads what the config records of it.
pub fn inspect(bytes: &[u8]) -> Result<(WasmKind, Option<ComponentInfo>), String> {
    let kind = wasm_kind(bytes).ok_or("not a WebAssembly binary (no `\\0asm` header)")?;
    wasmparser::Validator::new()
        .validate_all(bytes)
        .map_err(|e| format!("not a valid WebAssembly binary: {e}"))?;
    if kind == WasmKind::Module {
        return Ok((kind, None));
    }
    let mut info = ComponentInfo::default();
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        use wasmparser::Payload::*;
        match payload.map_err(|e| e.to_string())? {
            ModuleSection { .. } | ComponentSection { .. } => depth += 1,
            End(_) => depth = depth.saturating_sub(1),
            ComponentImportSection(s) if depth == 0 => {
                for i in s {
                    info.imports
                        .push(i.map_err(|e| e.to_string())?.name.name.to_string());
                }
            }
            ComponentExportSection(s) if depth == 0 => {
                for x in s {
                    info.exports
                        .push(x.map_err(|e| e.to_string())?.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    // A component exporting `wasi:cli/run` is a WASI command: the world
    // the guest contract expects.
    if let Some(run) = info.exports.iter().find(|e| e.starts_with("wasi:cli/run@")) {
        let version = run.rsplit('@').next().unwrap_or_default();
        info.target = Some(format!("wasi:cli/command@{version}"));
    }
    Ok((kind, Some(info)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(json: &str) -> Manifest {
        Manifest::parse(json.as_bytes()).unwrap()
    }

    fn layer(media_type: &str, n: u8) -> String {
        format!(
            r#"{{"mediaType":"{media_type}","digest":"sha256:{}","size":10}}"#,
            format!("{n:02x}").repeat(32)
        )
    }

    #[test]
    fn each_published_layout_is_read() {
        for (t, layout) in [
            (WASM_LAYER, Layout::Cncf),
            (SPIN_LAYER, Layout::Spin),
            (COMPONENT_LAYER, Layout::Component),
            ("application/vnd.oci.image.layer.v1.tar", Layout::Oras),
        ] {
            let m = manifest(&format!(
                r#"{{"schemaVersion":2,"config":{},"layers":[{}]}}"#,
                layer("application/vnd.oci.empty.v1+json", 0),
                layer(t, 1)
            ));
            assert_eq!(choose_layer(&m).unwrap().layout, layout, "{t}");
        }
    }

    #[test]
    fn container_images_and_two_wasm_layers_are_refused() {
        let m = manifest(&format!(
            r#"{{"schemaVersion":2,"config":{},"layers":[{},{}]}}"#,
            layer("application/vnd.oci.image.config.v1+json", 0),
            layer("application/vnd.oci.image.layer.v1.tar+gzip", 1),
            layer("application/vnd.oci.image.layer.v1.tar+gzip", 2)
        ));
        let e = choose_layer(&m).unwrap_err();
        assert!(e.starts_with("a container image (config application/vnd.oci.image.config.v1+json, 2 layers of application/vnd.oci.image.layer.v1.tar+gzip)"), "{e}");
        let m = manifest(&format!(
            r#"{{"schemaVersion":2,"config":{},"layers":[{},{}]}}"#,
            layer(WASM_CONFIG, 0),
            layer(WASM_LAYER, 1),
            layer(WASM_LAYER, 2)
        ));
        assert!(choose_layer(&m).unwrap_err().starts_with("2 wasm layers"));
    }

    #[test]
    fn an_index_picks_its_wasm_entry() {
        let idx = manifest(&format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{}","size":1,"platform":{{"architecture":"wasm","os":"wasip2"}}}}]}}"#,
            "1".repeat(64),
            "2".repeat(64)
        ));
        assert!(idx.is_index());
        assert_eq!(
            choose_entry(&idx).unwrap().digest,
            format!("sha256:{}", "2".repeat(64))
        );
    }

    #[test]
    fn components_are_described_by_their_world() {
        let wat = r#"(component
            (import "wasi:cli/environment@0.2.0" (instance))
            (core module $m (func (export "run") (result i32) i32.const 0))
            (core instance $i (instantiate $m))
            (func $run (result (result)) (canon lift (core func $i "run")))
            (instance $r (export "run" (func $run)))
            (export "wasi:cli/run@0.2.0" (instance $r)))"#;
        let bytes = wat::parse_str(wat).unwrap();
        let (kind, info) = inspect(&bytes).unwrap();
        let info = info.unwrap();
        assert_eq!(kind, WasmKind::Component);
        assert_eq!(info.imports, ["wasi:cli/environment@0.2.0"]);
        assert_eq!(info.exports, ["wasi:cli/run@0.2.0"]);
        assert_eq!(info.target.as_deref(), Some("wasi:cli/command@0.2.0"));
        let module = wat::parse_str("(module)").unwrap();
        assert_eq!(inspect(&module).unwrap().0, WasmKind::Module);
        assert!(inspect(b"\0asm\x01\0\0\0garbage").is_err());
    }
}
