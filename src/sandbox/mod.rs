//! The sandbox: runs guests in the process's one wasmtime engine.
//!
//! Process-lifetime state lives in [`Sandbox`]: the engine, its epoch
//! ticker, the linkers, the compiled-code cache, the prepared guests, and the
//! slots of the instance pool. A run creates a store and a WASI context and
//! drops them when it ends. **No module outside `sandbox` touches wasmtime
//! types**: the rest of cairn sees [`Guest`], [`Invocation`] and [`Finished`].

mod code_cache;
mod engine;
mod guest;
mod http;
mod output;
mod run;
mod state;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::Semaphore;
use wasmtime::Engine;
use wasmtime_wasi::p1::WasiP1Ctx;

pub use code_cache::forget as forget_compiled;
pub use guest::{Guest, GuestSource, Shape, to_binary};
pub use http::{LocalHttp, Outbound};
pub use run::{DefaultLimits, Finished, Invocation, Limits};

use code_cache::CodeCache;
use state::{P2Ctx, State};

/// How a sandbox is set up.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Where compiled code is cached (`<data dir>/code`).
    pub code_dir: PathBuf,
    /// How many guests may run at once. Runs past it wait for a slot. The
    /// instance pool is sized for this many.
    pub slots: u32,
}

/// A guest that cannot be loaded: what it was, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{origin}: {reason}")]
pub struct LoadError {
    pub origin: String,
    pub reason: String,
}

/// Why a run failed, as the guest's doing or the host's limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestFailure {
    #[error("{0}")]
    Trap(String),
    #[error("guest failed: {0}")]
    Fault(String),
    #[error("guest exited with code {0}")]
    Exit(i32),
    #[error("deadline of {} exceeded", secs(*.0))]
    Deadline(Duration),
    #[error("memory cap of {} MiB exceeded", .0 >> 20)]
    MemoryCap(usize),
    #[error("{stream} exceeded its cap of {cap} bytes")]
    OutputCap { stream: &'static str, cap: usize },
}

fn secs(d: Duration) -> String {
    match d.subsec_nanos() {
        0 => format!("{} s", d.as_secs()),
        _ => format!("{:.3} s", d.as_secs_f64()).replace(".000", ""),
    }
}

pub struct Sandbox {
    engine: Engine,
    _ticker: engine::EpochTicker,
    pooled: bool,
    p1_linker: wasmtime::Linker<State<WasiP1Ctx>>,
    p2_linker: wasmtime::component::Linker<State<P2Ctx>>,
    code_cache: CodeCache,
    prepared: Mutex<HashMap<String, Arc<Guest>>>,
    slots: Semaphore,
}

impl Sandbox {
    pub fn new(config: &SandboxConfig) -> Result<Self> {
        let slots = config.slots.max(1);
        let (engine, pooled) = engine::build(slots)?;
        let ticker = engine::EpochTicker::start(&engine)?;

        let mut p1_linker = wasmtime::Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut p1_linker, |s: &mut State<WasiP1Ctx>| {
            &mut s.wasi
        })
        .map_err(anyhow::Error::from)
        .context("linking WASI preview 1")?;
        let mut p2_linker = wasmtime::component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut p2_linker)
            .map_err(anyhow::Error::from)
            .context("linking WASI 0.2")?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut p2_linker)
            .map_err(anyhow::Error::from)
            .context("linking wasi:http")?;

        let code_cache = CodeCache::new(&config.code_dir, &engine::fingerprint(&engine));
        Ok(Self {
            engine,
            _ticker: ticker,
            pooled,
            p1_linker,
            p2_linker,
            code_cache,
            prepared: Mutex::new(HashMap::new()),
            slots: Semaphore::new(slots as usize),
        })
    }

    /// Whether instances come from the pooling allocator.
    pub fn pooled(&self) -> bool {
        self.pooled
    }

    /// Loads a guest: compiled once per machine, prepared once per process.
    /// Prepared guests are found again by the hash of their source and name.
    pub fn load(&self, src: &GuestSource<'_>) -> Result<Arc<Guest>, LoadError> {
        let source_sha256 = match &src.sha256 {
            Some(known) => known.clone(),
            None => guest::hex(&<sha2::Sha256 as sha2::Digest>::digest(&src.bytes[..])),
        };
        let key = format!("{source_sha256}:{}", src.name);
        if let Some(guest) = self.lock_prepared().get(&key) {
            return Ok(guest.clone());
        }
        let guest = Arc::new(self.prepare(src, source_sha256)?);
        self.lock_prepared().insert(key, guest.clone());
        Ok(guest)
    }

    fn lock_prepared(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Guest>>> {
        self.prepared.lock().unwrap_or_else(|p| p.into_inner())
    }
}
