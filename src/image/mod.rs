//! Guest images: wasm guests pushed to and pulled from OCI registries, and
//! the cache of what was pulled.
//!
//! A pull fetches the manifest (following an image index to its wasm
//! entry), chooses the wasm layer ([`format`]), and streams each missing
//! blob through a sha256 check into the cache ([`cache`]); the reference,
//! the digest it resolved to and the blobs it names are then recorded in
//! the store. A blob already cached is never fetched again, and the
//! sandbox's compiled-code cache is keyed by the same sha256, so a pulled
//! guest is compiled once.
//!
//! `cairn run <ref>` uses the cache when it holds the reference (by tag, or
//! by the pinned digest) and says so; otherwise it pulls. `--pull always`
//! asks the registry first and falls back to the cache only when the
//! registry cannot be reached.

pub mod cache;
pub mod format;
pub mod reference;
mod registry;

use std::io::IsTerminal;

use futures_util::StreamExt;
use oci_client::RegistryOperation;

use crate::data_dir::DataDir;
use crate::store::Store;
use crate::store::images::ImageRow;
use cache::{Cache, sha256_digest};
use format::{Choice, Manifest, WasmConfig, WasmKind};
pub use reference::ImageRef;
use registry::Registry;

/// A failure about one reference: `<ref>: <cause>`.
#[derive(Debug, thiserror::Error)]
#[error("{reference}: {cause}")]
pub struct ImageError {
    pub reference: String,
    pub cause: String,
}

fn fail(r: &impl std::fmt::Display) -> impl Fn(String) -> ImageError + '_ {
    move |cause| ImageError {
        reference: r.to_string(),
        cause,
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Plain HTTP to any registry (it is always allowed for loopback hosts).
    pub insecure: bool,
}

/// When `cairn run` asks the registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PullPolicy {
    /// Only when the reference is not cached
    #[default]
    Missing,
    /// Every time; the cache only when the registry is unreachable
    Always,
    /// Never: the cache or nothing
    Never,
}

/// A reference resolved to a cached guest.
#[derive(Debug)]
pub struct Resolved {
    pub image: ImageRow,
    /// Served from the cache, without asking the registry.
    pub from_cache: bool,
    /// Why the cache was used when a pull was wanted.
    pub fallback: Option<String>,
    /// Blob bytes fetched over the network.
    pub transferred: u64,
}

/// The image cache and the store's record of it.
pub struct Images {
    cache: Cache,
    store: Store,
    _lock: std::fs::File,
}

impl Images {
    /// Opens the cache, holding its lock shared (a gc waits).
    pub fn open(data: &DataDir) -> anyhow::Result<Images> {
        let cache = Cache::open(data.images())?;
        let lock = cache.lock_file()?;
        lock.lock_shared()?;
        Ok(Images {
            cache,
            store: Store::open(&data.store())?,
            _lock: lock,
        })
    }

    /// Fetches `r` from its registry into the cache.
    pub async fn pull(&mut self, r: &ImageRef, opts: Options) -> Result<Resolved, ImageError> {
        let reg = Registry::new(r, opts.insecure);
        let pulled = pull(&reg, &self.cache, r).await.map_err(fail(r))?;
        let now = crate::store::now_ms();
        let row = ImageRow {
            registry: r.registry.clone(),
            repository: r.repository.clone(),
            name: r.name().to_string(),
            digest: pulled.digest,
            manifest: pulled.manifest,
            config: pulled.config,
            layer: pulled.choice.layer.digest.clone(),
            layout: pulled.choice.layout.as_str().to_string(),
            os: pulled.kind.os().to_string(),
            size: pulled.choice.layer.size as i64,
            pulled_at: now,
            used_at: now,
        };
        self.store
            .record_image(&row)
            .map_err(|e| fail(r)(format!("recording the image: {e:#}")))?;
        Ok(Resolved {
            image: row,
            from_cache: false,
            fallback: None,
            transferred: pulled.transferred,
        })
    }

    /// What `cairn run` uses for `r` under `policy`.
    pub async fn resolve(
        &mut self,
        r: &ImageRef,
        policy: PullPolicy,
        opts: Options,
    ) -> Result<Resolved, ImageError> {
        let cached = self.cached(r).map_err(fail(r))?;
        let from_cache = |image, fallback| Resolved {
            image,
            from_cache: true,
            fallback,
            transferred: 0,
        };
        match (policy, cached) {
            (PullPolicy::Missing | PullPolicy::Never, Some(image)) => Ok(from_cache(image, None)),
            (PullPolicy::Never, None) => Err(fail(r)(
                "not in the image cache (and --pull never was given)".into(),
            )),
            (PullPolicy::Always, Some(image)) => match self.pull(r, opts).await {
                Ok(done) => Ok(done),
                Err(e) if is_unreachable(&e.cause) => Ok(from_cache(image, Some(e.cause))),
                Err(e) => Err(e),
            },
            (_, None) => self.pull(r, opts).await,
        }
    }

    /// The cached image `r` names, if its wasm blob is still there.
    fn cached(&self, r: &ImageRef) -> Result<Option<ImageRow>, String> {
        let row = match (&r.digest, &r.tag) {
            (Some(d), _) => self.store.image_with_digest(&r.registry, &r.repository, d),
            (None, Some(t)) => self.store.image_named(&r.registry, &r.repository, t),
            (None, None) => Ok(None),
        }
        .map_err(|e| format!("reading the image cache: {e:#}"))?;
        Ok(row.filter(|row| self.cache.has(&row.layer, row.size as u64)))
    }

    /// The guest's bytes, checked against their digest, and the image
    /// marked as used.
    pub fn load(&mut self, r: &ImageRef, image: &ImageRow) -> Result<Vec<u8>, ImageError> {
        let bytes = self.cache.read(&image.layer).map_err(fail(r))?;
        if let Err(e) = self.store.touch_image(image) {
            tracing::warn!("{r}: recording its use: {e:#}");
        }
        Ok(bytes)
    }

    pub fn list(&self) -> anyhow::Result<Vec<ImageRow>> {
        self.store.images()
    }

    /// Forgets every image last used before `forget` (ms since the epoch;
    /// none when None), then, if no other cairn is using the cache, deletes
    /// the blobs no image names and the compiled code of forgotten guests.
    pub fn prune(self, data: &DataDir, forget: Option<i64>) -> anyhow::Result<Prune> {
        let Images {
            cache,
            mut store,
            _lock,
        } = self;
        let forgotten = match forget {
            Some(before) => store.forget_images(before)?,
            None => Vec::new(),
        };
        drop(_lock);
        let lock = cache.lock_file()?;
        let mut prune = Prune {
            forgotten: forgotten.len(),
            ..Prune::default()
        };
        if lock.try_lock().is_ok() {
            let live = store.image_blobs()?;
            (prune.files, prune.bytes) = cache.sweep(&live)?;
            prune.swept = true;
            // Compiled code of a guest no image holds any more.
            for row in &forgotten {
                if !live.contains(&row.layer) {
                    crate::sandbox::forget_compiled(
                        &data.code(),
                        row.layer.trim_start_matches("sha256:"),
                    );
                }
            }
        }
        Ok(prune)
    }
}

#[derive(Debug, Default)]
pub struct Prune {
    pub forgotten: usize,
    pub files: u64,
    pub bytes: u64,
    pub swept: bool,
}

fn is_unreachable(cause: &str) -> bool {
    cause.starts_with("cannot reach registry")
        || cause.starts_with("unknown registry host")
        || cause.contains("timed out")
}

struct Pulled {
    /// What the reference resolved to: the manifest, or the index.
    digest: String,
    /// The image manifest the layer came from.
    manifest: String,
    config: Option<String>,
    choice: Choice,
    kind: WasmKind,
    transferred: u64,
}

/// Pulls `r`; a pull that fails removes the blobs it had added, so that
/// nothing of it stays in the cache.
async fn pull(reg: &Registry, cache: &Cache, r: &ImageRef) -> Result<Pulled, String> {
    let mut added = Vec::new();
    let result = pull_into(reg, cache, r, &mut added).await;
    if result.is_err() {
        for digest in &added {
            cache.remove(digest);
        }
    }
    result
}

async fn pull_into(
    reg: &Registry,
    cache: &Cache,
    r: &ImageRef,
    added: &mut Vec<String>,
) -> Result<Pulled, String> {
    reg.login(r, RegistryOperation::Pull).await?;
    let (bytes, digest) = match fetch_manifest(reg, r, r.digest.as_deref()).await {
        Err(e) if e == registry::MANIFEST_UNKNOWN && r.digest.is_none() => {
            return Err(reg.tag_hint(r).await);
        }
        other => other?,
    };
    let mut manifests = vec![(digest.clone(), bytes)];
    let mut m = Manifest::parse(&manifests[0].1)?;
    if m.is_index() {
        let entry = format::choose_entry(&m)?;
        let (bytes, d) = fetch_manifest(reg, &r.at(&entry.digest), Some(&entry.digest)).await?;
        m = Manifest::parse(&bytes)?;
        if m.is_index() {
            return Err("the wasm entry of the image index is itself an index".into());
        }
        manifests.push((d, bytes));
    }
    let choice = format::choose_layer(&m)?;
    let mut transferred = 0;
    let config = match &choice.wasm_config {
        Some(c) => {
            if !cache.has(&c.digest, c.size) {
                transferred += fetch_blob(reg, cache, r, &c.digest, c.size).await?;
                added.push(c.digest.clone());
            }
            // Kept so the cache holds the whole artifact; what the guest
            // is (module or component) is read from its bytes, not from here.
            Some(c.digest.clone())
        }
        None => None,
    };
    let layer = &choice.layer;
    let fresh = !cache.has(&layer.digest, layer.size);
    if fresh {
        transferred += fetch_blob(reg, cache, r, &layer.digest, layer.size).await?;
        added.push(layer.digest.clone());
    }
    let head = cache.head(&layer.digest, 8)?;
    let Some(kind) = format::wasm_kind(&head) else {
        return Err(format!(
            "its one layer ({}, {} bytes) is not WebAssembly: not a wasm guest",
            layer.media_type, layer.size
        ));
    };
    for (d, bytes) in &manifests {
        if !cache.has(d, bytes.len() as u64) {
            cache.put(d, bytes)?;
        }
    }
    Ok(Pulled {
        manifest: manifests.last().map(|(d, _)| d.clone()).unwrap_or_default(),
        digest,
        config,
        choice,
        kind,
        transferred,
    })
}

/// A manifest and its digest, checked against `pinned` and against its
/// own bytes.
async fn fetch_manifest(
    reg: &Registry,
    r: &ImageRef,
    pinned: Option<&str>,
) -> Result<(bytes::Bytes, String), String> {
    let (bytes, digest) = reg
        .client
        .pull_manifest_raw(&r.oci(), &reg.auth, format::ACCEPT)
        .await
        .map_err(|e| reg.explain(e))?;
    if bytes.len() > format::MAX_MANIFEST {
        return Err(format!(
            "the manifest is {} bytes, more than a manifest may be",
            bytes.len()
        ));
    }
    let actual = sha256_digest(&bytes);
    if let Some(p) = pinned
        && p != actual
    {
        return Err(format!(
            "the registry sent a manifest whose digest is {actual}, not {p}"
        ));
    }
    if digest != actual {
        tracing::debug!("{r}: registry says {digest}, bytes hash to {actual}");
    }
    Ok((bytes, actual))
}

/// Streams one blob into the cache, hashing as it goes. Returns its size.
async fn fetch_blob(
    reg: &Registry,
    cache: &Cache,
    r: &ImageRef,
    digest: &str,
    size: u64,
) -> Result<u64, String> {
    let mut blob = cache.incoming(digest, size)?;
    // A range from 0 makes the client hand over the raw stream: the digest
    // is checked here, once.
    let response = reg
        .client
        .pull_blob_stream_partial(&r.oci(), &digest, 0, None)
        .await
        .map_err(|e| reg.explain(e))?;
    let (oci_client::client::BlobResponse::Full(s) | oci_client::client::BlobResponse::Partial(s)) =
        response;
    let mut stream = s.stream;
    let bar = progress(size);
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                blob.write(&chunk)?;
                if let Some(bar) = &bar {
                    bar.set_position(blob.written());
                }
            }
            // All bytes arrived and the stream still failed: the client's
            // own digest check; ours says which digest.
            Err(_) if blob.written() == size => break,
            Err(e) => {
                return Err(format!(
                    "the connection broke off after {} of {} bytes of blob {} ({e})",
                    blob.written(),
                    size,
                    format::short(digest)
                ));
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    blob.finish()?;
    Ok(size)
}

/// A progress bar on a terminal, for blobs worth watching.
fn progress(size: u64) -> Option<indicatif::ProgressBar> {
    if size < (1 << 20) || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(size),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bytes}/{total_bytes} [{wide_bar}] {binary_bytes_per_sec} {eta}",
    ) {
        bar.set_style(style);
    }
    Some(bar)
}

/// Pushes a guest as a CNCF wasm artifact. Returns the manifest digest.
pub async fn push(
    bytes: Vec<u8>,
    title: &str,
    created: &str,
    r: &ImageRef,
    opts: Options,
) -> Result<String, ImageError> {
    push_inner(bytes, title, created, r, opts)
        .await
        .map_err(fail(r))
}

async fn push_inner(
    bytes: Vec<u8>,
    title: &str,
    created: &str,
    r: &ImageRef,
    opts: Options,
) -> Result<String, String> {
    let (kind, component) = format::inspect(&bytes)?;
    let layer_digest = sha256_digest(&bytes);
    let config = WasmConfig {
        created: created.to_string(),
        author: None,
        architecture: "wasm".into(),
        os: kind.os().into(),
        layer_digests: vec![layer_digest.clone()],
        component,
    };
    let config = serde_json::to_vec(&config).map_err(|e| e.to_string())?;
    let config_digest = sha256_digest(&config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": format::OCI_MANIFEST,
        "config": { "mediaType": format::WASM_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": [{
            "mediaType": format::WASM_LAYER,
            "digest": layer_digest,
            "size": bytes.len(),
            "annotations": { format::TITLE: title },
        }],
        "annotations": { "org.opencontainers.image.created": created },
    });
    let manifest = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    let digest = sha256_digest(&manifest);
    if let Some(pinned) = &r.digest
        && *pinned != digest
    {
        return Err(format!(
            "the reference pins {pinned}, but this guest's manifest would be {digest}"
        ));
    }
    let reg = Registry::new(r, opts.insecure);
    reg.login(r, RegistryOperation::Push).await?;
    let oci = r.oci();
    for (d, blob) in [(&config_digest, config), (&layer_digest, bytes)] {
        let exists = reg
            .client
            .blob_exists(&oci, d)
            .await
            .map_err(|e| reg.explain(e))?;
        if exists {
            continue;
        }
        let pushed = match progress(blob.len() as u64) {
            // On a terminal, the blob goes up in chunks that move a bar.
            Some(bar) => {
                let blob = bytes::Bytes::from(blob);
                let chunks: Vec<bytes::Bytes> = (0..blob.len())
                    .step_by(1 << 20)
                    .map(|at| blob.slice(at..blob.len().min(at + (1 << 20))))
                    .collect();
                let shown = bar.clone();
                let stream = futures_util::stream::iter(chunks).map(move |chunk| {
                    shown.inc(chunk.len() as u64);
                    Ok(chunk)
                });
                let pushed = reg.client.push_blob_stream(&oci, stream, d, None).await;
                bar.finish_and_clear();
                pushed
            }
            None => reg.client.push_blob(&oci, blob, d).await,
        };
        pushed.map_err(|e| reg.explain(e))?;
    }
    let content_type = http::HeaderValue::from_static(format::OCI_MANIFEST);
    reg.client
        .push_manifest_raw(&oci, manifest, content_type)
        .await
        .map_err(|e| reg.explain(e))?;
    Ok(digest)
}
