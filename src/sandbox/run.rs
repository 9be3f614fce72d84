//! One run of a prepared guest: a fresh store and WASI context, the
//! workspace preopened at `/workspace`, limits armed, output captured, and
//! the way it ended classified.
//!
//! Everything created here lives for one invocation. Must not know the guest
//! contract's meaning (the caller passes stdin bytes and environment).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, ResourceTable, WasiCtxBuilder};

use super::guest::{Guest, Pre, one_line};
use super::http::{Hooks, Outbound};
use super::output::Capture;
use super::state::{MemoryCap, P2Ctx, State};
use super::{GuestFailure, Sandbox};

/// Limits of one run.
#[derive(Clone, Debug)]
pub struct Limits {
    pub deadline: Duration,
    pub memory_bytes: usize,
    pub stdout_bytes: usize,
    pub stderr_bytes: usize,
}

/// The bundled defaults, `config/sandbox.toml`, as written in the binary.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultLimits {
    pub timeout_secs: u64,
    pub memory_mib: u64,
    pub stdout_bytes: usize,
    pub stderr_bytes: usize,
}

impl DefaultLimits {
    pub fn bundled() -> &'static DefaultLimits {
        #[derive(serde::Deserialize)]
        struct File {
            limits: DefaultLimits,
        }
        static PARSED: std::sync::OnceLock<DefaultLimits> = std::sync::OnceLock::new();
        PARSED.get_or_init(|| {
            let text = include_str!("../../config/sandbox.toml");
            // Checked by a unit test: the bundled file is part of the build.
            toml::from_str::<File>(text)
                .expect("config/sandbox.toml is valid")
                .limits
        })
    }
}

impl Default for Limits {
    fn default() -> Self {
        let d = DefaultLimits::bundled();
        Self {
            deadline: Duration::from_secs(d.timeout_secs),
            memory_bytes: (d.memory_mib as usize) << 20,
            stdout_bytes: d.stdout_bytes,
            stderr_bytes: d.stderr_bytes,
        }
    }
}

/// What a run is given.
pub struct Invocation {
    pub stdin: Vec<u8>,
    pub env: Vec<(String, String)>,
    /// Host directory preopened read-write at `/workspace`.
    pub workspace: PathBuf,
    /// Further host directories the guest sees: (host, guest path,
    /// writable). The agent's `/memory` and its read-only `/agent`.
    pub mounts: Vec<(PathBuf, String, bool)>,
    pub limits: Limits,
    /// Tags the guest's log lines (the dispatch id).
    pub log_tag: Arc<str>,
    /// What the guest may reach over `wasi:http` (preview-2 guests).
    pub outbound: Arc<Outbound>,
}

/// How a run went. Output is kept whatever the outcome.
pub struct Finished {
    pub outcome: Result<(), GuestFailure>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
}

impl Sandbox {
    /// Runs `guest` once. `Err` means the run could not be set up (the
    /// workspace could not be opened, the engine refused an instance); what
    /// the guest itself did is in [`Finished::outcome`].
    pub async fn run(&self, guest: &Guest, inv: Invocation) -> Result<Finished> {
        let _slot = self
            .slots
            .acquire()
            .await
            .context("the sandbox is shutting down")?;
        let started = Instant::now();
        let stdout = Capture::new("stdout", inv.limits.stdout_bytes, None);
        let stderr = Capture::new("stderr", inv.limits.stderr_bytes, Some(inv.log_tag.clone()));

        let mut wasi = WasiCtxBuilder::new();
        wasi.stdin(MemoryInputPipe::new(inv.stdin))
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .args(&[guest.name.as_str()])
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for (key, value) in &inv.env {
            wasi.env(key, value);
        }
        wasi.preopened_dir(&inv.workspace, "/workspace", FsPerms::ReadWrite)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("opening workspace {}", inv.workspace.display()))?;
        for (host, at, writable) in &inv.mounts {
            let perms = if *writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            wasi.preopened_dir(host, at, perms)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("opening {} for {at}", host.display()))?;
        }

        let deadline = started + inv.limits.deadline;
        let memory = MemoryCap::new(inv.limits.memory_bytes);
        let result = match &guest.pre {
            Pre::P1(pre) => {
                let mut store = self.store(wasi.build_p1(), memory, deadline);
                let run = async {
                    let instance = pre.instantiate_async(&mut store).await?;
                    let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                    start.call_async(&mut store, ()).await
                };
                let result = within(deadline, run).await;
                (result, store.data().limiter.hit, store.data().deadline_hit)
            }
            Pre::P2(pre) => {
                let ctx = P2Ctx {
                    ctx: wasi.build(),
                    table: ResourceTable::new(),
                    http: wasmtime_wasi_http::WasiHttpCtx::new(),
                    hooks: Hooks {
                        outbound: inv.outbound.clone(),
                    },
                };
                let mut store = self.store(ctx, memory, deadline);
                let run = async {
                    let command = pre.instantiate_async(&mut store).await?;
                    match command.wasi_cli_run().call_run(&mut store).await? {
                        Ok(()) => Ok(()),
                        Err(()) => Err(wasmtime::Error::new(I32Exit(1))),
                    }
                };
                let result = within(deadline, run).await;
                (result, store.data().limiter.hit, store.data().deadline_hit)
            }
        };
        let (result, memory_hit, deadline_hit) = result;
        let outcome = classify(
            result,
            &inv.limits,
            &stdout,
            &stderr,
            memory_hit,
            deadline_hit,
        );
        Ok(Finished {
            outcome,
            stdout: stdout.finish(),
            stderr: stderr.finish(),
            elapsed: started.elapsed(),
        })
    }

    fn store<W: Send + 'static>(
        &self,
        wasi: W,
        memory: MemoryCap,
        deadline: Instant,
    ) -> Store<State<W>> {
        let mut store = Store::new(
            &self.engine,
            State {
                wasi,
                limiter: memory,
                deadline_hit: false,
            },
        );
        store.limiter(|s| &mut s.limiter);
        // Checked once per epoch tick: stop at the deadline, otherwise yield
        // so a computing guest shares its thread with the others.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut ctx| {
            if Instant::now() >= deadline {
                ctx.data_mut().deadline_hit = true;
                wasmtime::bail!("deadline exceeded")
            }
            Ok(UpdateDeadline::Yield(1))
        });
        store
    }
}

/// Why a run did not reach its end: the guest, or the clock while the guest
/// waited in a host call the epoch cannot interrupt.
enum Stop {
    Guest(wasmtime::Error),
    Clock,
}

async fn within(
    deadline: Instant,
    run: impl Future<Output = wasmtime::Result<()>>,
) -> Result<(), Stop> {
    match tokio::time::timeout_at(deadline.into(), run).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Stop::Guest(e)),
        Err(_) => Err(Stop::Clock),
    }
}

fn classify(
    result: Result<(), Stop>,
    limits: &Limits,
    stdout: &Capture,
    stderr: &Capture,
    memory_hit: bool,
    deadline_hit: bool,
) -> Result<(), GuestFailure> {
    let error = match result {
        Ok(()) => return Ok(()),
        Err(Stop::Clock) => return Err(GuestFailure::Deadline(limits.deadline)),
        Err(Stop::Guest(e)) => e,
    };
    // The flags are checked before the error: they say which of the host's
    // limits stopped the guest, whatever wrapping the error got on its way.
    if deadline_hit {
        return Err(GuestFailure::Deadline(limits.deadline));
    }
    if memory_hit {
        return Err(GuestFailure::MemoryCap(limits.memory_bytes));
    }
    for (capture, name, cap) in [
        (stdout, "stdout", limits.stdout_bytes),
        (stderr, "stderr", limits.stderr_bytes),
    ] {
        if capture.exceeded() {
            return Err(GuestFailure::OutputCap { stream: name, cap });
        }
    }
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return match exit.0 {
            0 => Ok(()),
            code => Err(GuestFailure::Exit(code)),
        };
    }
    if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
        return Err(GuestFailure::Trap(trap.to_string()));
    }
    Err(GuestFailure::Fault(one_line(error)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_defaults_parse_and_are_in_range() {
        let d = DefaultLimits::bundled();
        assert!((1..=86_400).contains(&d.timeout_secs));
        assert!((1..=4096).contains(&d.memory_mib));
        assert!(d.stdout_bytes > 0 && d.stderr_bytes > 0);
    }
}
