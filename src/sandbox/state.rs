//! What a store holds for one run: the guest's WASI context and the limits
//! that watch it. Lives exactly as long as one invocation.

use wasmtime::ResourceLimiter;
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::http::Hooks;

/// Store data for a run. `W` is the WASI context of the guest's shape.
pub struct State<W> {
    pub wasi: W,
    pub limiter: MemoryCap,
    /// Set by the epoch callback when it stops the guest at its deadline.
    pub deadline_hit: bool,
}

/// WASI 0.2 context for components.
pub struct P2Ctx {
    pub ctx: WasiCtx,
    pub table: ResourceTable,
    pub http: WasiHttpCtx,
    pub hooks: Hooks,
}

impl WasiHttpView for State<P2Ctx> {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.wasi.http,
            table: &mut self.wasi.table,
            hooks: &mut self.wasi.hooks,
        }
    }
}

impl WasiView for State<P2Ctx> {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi.ctx,
            table: &mut self.wasi.table,
        }
    }
}

/// Caps the linear memory of all of a guest's memories together, and
/// remembers that the cap was hit so the failure can name it.
pub struct MemoryCap {
    pub cap: usize,
    used: usize,
    pub hit: bool,
}

/// Tables hold function references; a guest growing one without end would
/// take host memory the memory cap does not see.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl MemoryCap {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            used: 0,
            hit: false,
        }
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current);
        match self.used.checked_add(growth) {
            Some(total) if total <= self.cap => {
                self.used = total;
                Ok(true)
            }
            _ => {
                self.hit = true;
                wasmtime::bail!("memory cap of {} MiB exceeded", self.cap >> 20)
            }
        }
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
