//! The process-wide wasmtime `Engine`: its configuration, the pooling
//! allocator's sizing, and the one epoch ticker that interrupts guests.
//!
//! Owns nothing per guest or per run. Must not know about dispatches, the
//! guest contract or the filesystem.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances. A guest in a tight loop notices its deadline
/// within one tick, and yields to the executor once per tick so that a
/// computing guest cannot starve the others on its thread.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Largest linear memory a guest may have: all of wasm32's 4 GiB.
pub const MAX_MEMORY_BYTES: usize = 4 << 30;

/// Stack of the fiber each guest runs on. Guests get 512 KiB of wasm stack
/// (`max_wasm_stack`); the rest is headroom for host calls made from it.
const ASYNC_STACK: usize = 2 << 20;
const WASM_STACK: usize = 512 << 10;

/// Builds the engine. With `slots > 0` instances come from a pooling
/// allocator sized for `slots` guests running at once; its memory is
/// reserved up front and reused warm, which is what makes an instantiation
/// take microseconds. If the pool cannot be reserved (a tight `ulimit -v`),
/// the engine falls back to on-demand allocation and says so.
pub fn build(slots: u32) -> Result<(Engine, bool)> {
    if slots > 0 {
        let mut config = base_config();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool_config(slots)));
        match Engine::new(&config) {
            Ok(engine) => return Ok((engine, true)),
            Err(e) => tracing::warn!(
                "could not reserve the instance pool for {slots} guests ({e}); allocating on demand"
            ),
        }
    }
    let engine = Engine::new(&base_config())
        .map_err(anyhow::Error::from)
        .context("creating the wasm engine")?;
    Ok((engine, false))
}

fn base_config() -> Config {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        // Trap messages are shown to people on one line; backtraces would add
        // a multi-line dump of guest frames that says little to them.
        .wasm_backtrace_max_frames(None)
        .max_wasm_stack(WASM_STACK)
        .async_stack_size(ASYNC_STACK)
        .parallel_compilation(true);
    config
}

fn pool_config(slots: u32) -> PoolingAllocationConfig {
    // A Rust component holds up to a few core instances (its module plus the
    // shims `wit-component` adds), each with a table, and usually one memory.
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(4))
        .total_memories(slots.saturating_mul(2))
        .total_tables(slots.saturating_mul(4))
        .total_stacks(slots)
        .max_memory_size(MAX_MEMORY_BYTES)
        .max_memories_per_component(2)
        .max_tables_per_component(8)
        .max_core_instances_per_component(8);
    pool
}

/// A stable name for everything about the engine that decides whether
/// compiled code can be reused: wasmtime's compatibility hash covers its own
/// version, the target, codegen flags, tunables and enabled features.
pub fn fingerprint(engine: &Engine) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("engine-{:016x}", hasher.finish())
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on one thread for the
/// whole process; dropping it stops and joins the thread.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub fn start(engine: &Engine) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let engine = engine.weak();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("cairn-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    // Parked rather than slept, so a stop wakes it at once
                    // instead of holding the process's exit for a tick.
                    std::thread::park_timeout(EPOCH_TICK);
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    match engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .context("starting the epoch ticker thread")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
