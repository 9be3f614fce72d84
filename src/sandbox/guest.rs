//! Loading a guest: text or binary to a checked, compiled, pre-instantiated
//! program, ready for any number of runs.
//!
//! The work here is done once per guest per process (and the compilation
//! once per machine, through the code cache); a run only instantiates what
//! this module prepared. Must not know about workspaces or dispatches.

use std::borrow::Cow;
use std::path::Path;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, InstancePre, Module};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;

use super::code_cache::{CodeCache, Lookup};
use super::state::{P2Ctx, State};
use super::{LoadError, Sandbox};

/// Where a guest's bytes come from, for loading and for messages.
pub struct GuestSource<'a> {
    /// The guest's name: `argv[0]`, and how logs call it.
    pub name: String,
    /// How a person would name it in an error: a path, or `bundled guest echo`.
    pub origin: String,
    pub bytes: std::borrow::Cow<'a, [u8]>,
    /// Set when the bytes came from a file, so WAT errors can name it.
    pub path: Option<&'a Path>,
    /// The bytes' sha256 (hex), when the caller has just checked it (a
    /// cached image layer): saves hashing them twice.
    pub sha256: Option<String>,
}

/// The two shapes of WASI command the contract accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A preview-1 core module, entered at `_start`.
    Module,
    /// A preview-2 component, entered at `wasi:cli/run`.
    Component,
}

/// A guest ready to run: compiled and linked against WASI once.
pub struct Guest {
    pub name: String,
    pub origin: String,
    /// sha256 of the wasm binary, lowercase hex.
    pub sha256: String,
    pub shape: Shape,
    pub(super) pre: Pre,
}

pub(super) enum Pre {
    P1(InstancePre<State<WasiP1Ctx>>),
    P2(CommandPre<State<P2Ctx>>),
}

const MAGIC: &[u8; 4] = b"\0asm";
const CORE_VERSION: [u8; 4] = [1, 0, 0, 0];
const COMPONENT_VERSION: [u8; 4] = [0x0d, 0, 1, 0];

impl Sandbox {
    /// `source_sha256` is the hash of `src.bytes`, which is the binary's
    /// when the source is already binary: it is not hashed twice.
    pub(super) fn prepare(
        &self,
        src: &GuestSource<'_>,
        source_sha256: String,
    ) -> Result<Guest, LoadError> {
        let fail = |reason: String| LoadError {
            origin: src.origin.clone(),
            reason,
        };
        let binary = to_binary(src).map_err(fail)?;
        let shape = shape_of(&binary).map_err(fail)?;
        let sha256 = match &binary {
            Cow::Borrowed(_) => source_sha256,
            Cow::Owned(from_wat) => hex(&Sha256::digest(from_wat)),
        };
        let pre = match shape {
            Shape::Module => {
                let module: Module = self.compiled(&sha256, &binary, shape).map_err(fail)?;
                check_command_module(&module).map_err(fail)?;
                let pre = self
                    .p1_linker
                    .instantiate_pre(&module)
                    .map_err(|e| fail(format!("cannot be linked: {}", one_line(e))))?;
                Pre::P1(pre)
            }
            Shape::Component => {
                let component: Component = self.compiled(&sha256, &binary, shape).map_err(fail)?;
                let pre = self.p2_linker.instantiate_pre(&component).map_err(|e| {
                    fail(format!(
                        "imports what WASI 0.2 does not provide: {}",
                        one_line(e)
                    ))
                })?;
                let pre = CommandPre::new(pre).map_err(|e| {
                    fail(format!(
                        "not a WASI command: the component does not export `wasi:cli/run` ({})",
                        one_line(e)
                    ))
                })?;
                Pre::P2(pre)
            }
        };
        Ok(Guest {
            name: src.name.clone(),
            origin: src.origin.clone(),
            sha256,
            shape,
            pre,
        })
    }

    /// The compiled code for `binary`, from the disk cache when it holds a
    /// sound entry, else compiled now and stored for the next run.
    fn compiled<C: Compiled>(
        &self,
        sha256: &str,
        binary: &[u8],
        shape: Shape,
    ) -> Result<C, String> {
        let cache: &CodeCache = &self.code_cache;
        match cache.get(sha256) {
            Lookup::Hit(code) => match C::deserialize(&self.engine, &code) {
                Ok(compiled) => {
                    tracing::debug!(sha256, "compiled code from the cache");
                    return Ok(compiled);
                }
                Err(e) => {
                    tracing::warn!(
                        "compiled-code cache entry {} was refused by the engine ({}); recompiling",
                        cache.path_of(sha256).display(),
                        one_line(e)
                    );
                    cache.remove(sha256);
                }
            },
            Lookup::Corrupt(path) => {
                tracing::warn!(
                    "compiled-code cache entry {} is corrupt; recompiling",
                    path.display()
                )
            }
            Lookup::Miss => {}
        }
        let started = std::time::Instant::now();
        let compiled = C::compile(&self.engine, binary)
            .map_err(|e| format!("invalid {}: {}", shape.noun(), one_line(e)))?;
        tracing::debug!(sha256, elapsed = ?started.elapsed(), "compiled");
        match compiled.serialize() {
            Ok(code) => {
                if let Err(e) = cache.put(sha256, &code) {
                    tracing::warn!("could not store compiled code: {e:#}");
                }
            }
            Err(e) => tracing::warn!("could not serialize compiled code: {}", one_line(e)),
        }
        Ok(compiled)
    }
}

impl Shape {
    fn noun(self) -> &'static str {
        match self {
            Shape::Module => "wasm module",
            Shape::Component => "wasm component",
        }
    }
}

/// What the code cache needs of a module or a component.
trait Compiled: Sized {
    fn compile(engine: &Engine, binary: &[u8]) -> wasmtime::Result<Self>;
    fn deserialize(engine: &Engine, code: &[u8]) -> wasmtime::Result<Self>;
    fn serialize(&self) -> wasmtime::Result<Vec<u8>>;
}

impl Compiled for Module {
    fn compile(engine: &Engine, binary: &[u8]) -> wasmtime::Result<Self> {
        Module::from_binary(engine, binary)
    }
    fn deserialize(engine: &Engine, code: &[u8]) -> wasmtime::Result<Self> {
        // SAFETY: `code` was produced by `serialize` on an engine with this
        // fingerprint and passed the cache's checksum before reaching here.
        unsafe { Module::deserialize(engine, code) }
    }
    fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        Module::serialize(self)
    }
}

impl Compiled for Component {
    fn compile(engine: &Engine, binary: &[u8]) -> wasmtime::Result<Self> {
        Component::from_binary(engine, binary)
    }
    fn deserialize(engine: &Engine, code: &[u8]) -> wasmtime::Result<Self> {
        // SAFETY: as for modules above.
        unsafe { Component::deserialize(engine, code) }
    }
    fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        Component::serialize(self)
    }
}

/// The wasm binary of a source: binary as is, WAT compiled to binary; a
/// one-line error for anything else.
pub fn to_binary<'a>(src: &'a GuestSource<'_>) -> Result<Cow<'a, [u8]>, String> {
    let bytes = &src.bytes[..];
    if bytes.starts_with(MAGIC) {
        return Ok(Cow::Borrowed(bytes));
    }
    let is_wat_file = src
        .path
        .is_some_and(|p| p.extension().is_some_and(|e| e == "wat"));
    let text = std::str::from_utf8(bytes).ok();
    let looks_like_wat = text.is_some_and(|t| {
        let t = t.trim_start();
        t.starts_with('(') || t.starts_with(";;")
    });
    if !(is_wat_file || looks_like_wat) {
        return Err(match bytes.is_empty() {
            true => "not a wasm module: the file is empty".into(),
            false => format!(
                "not a wasm module: expected the `\\0asm` magic number or WAT text, found {}",
                describe_start(bytes)
            ),
        });
    }
    let Some(text) = text else {
        return Err("not WAT text: the file is not UTF-8".into());
    };
    wat::Parser::new()
        .parse_str(src.path, text)
        .map(Cow::Owned)
        .map_err(|e| format!("invalid WAT: {}", wat_error_line(&e.to_string())))
}

fn describe_start(bytes: &[u8]) -> String {
    let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("bytes {}", head.join(" "))
}

/// wat renders errors over several lines (message, `--> file:line:col`, a
/// snippet with a caret); cairn's errors are one line: `file:line:col: message`.
fn wat_error_line(rendered: &str) -> String {
    let mut lines = rendered.lines();
    let message = lines.next().unwrap_or("").trim();
    let place = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("--> "))
        .map(str::trim);
    match place {
        Some(place) => format!("{place}: {message}"),
        None => message.to_string(),
    }
}

fn shape_of(binary: &[u8]) -> Result<Shape, String> {
    match binary.get(4..8) {
        Some(v) if v == CORE_VERSION => Ok(Shape::Module),
        Some(v) if v == COMPONENT_VERSION => Ok(Shape::Component),
        Some(v) => Err(format!(
            "unsupported wasm version/layer {} (expected a core module or a component)",
            describe_start(v)
        )),
        None => Err("truncated wasm: the header is cut short".into()),
    }
}

/// A command module is entered at `_start`, which takes and returns nothing.
fn check_command_module(module: &Module) -> Result<(), String> {
    match module.get_export("_start") {
        Some(wasmtime::ExternType::Func(ty))
            if ty.params().len() == 0 && ty.results().len() == 0 =>
        {
            Ok(())
        }
        Some(_) => Err("not a WASI command: `_start` is not a function of no arguments".into()),
        None => Err(
            "not a WASI command: the module has no `_start` export (a reactor or a library?)"
                .into(),
        ),
    }
}

pub(super) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A wasmtime error chain on one line.
pub(super) fn one_line(e: wasmtime::Error) -> String {
    crate::error::one_line(&format!("{:#}", anyhow::Error::from(e)))
}
