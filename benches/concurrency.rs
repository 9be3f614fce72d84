//! Many guests at once: 1,000 `echo` dispatches started together, and 1,000
//! `sleep` guests (each waits 200 ms inside the guest) so that all of them
//! are alive at the same moment; reports wall time and the peak resident
//! memory added per concurrent guest (VmHWM after, minus VmRSS before).
//!
//! `cargo bench --bench concurrency`

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use cairn::dispatch::{Dispatch, Kind};
use cairn::guest_ref::GuestRef;
use cairn::invoke;
use cairn::sandbox::{Guest, GuestSource, Limits, Sandbox, SandboxConfig};

const N: usize = 1000;

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn reset_peak() {
    // Writing 5 to clear_refs resets VmHWM to the current RSS (Linux ≥ 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn run_all(
    rt: &tokio::runtime::Runtime,
    sandbox: &Arc<Sandbox>,
    guest: &Arc<Guest>,
    ws: &Path,
) -> f64 {
    let started = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..N)
            .map(|i| {
                let (sandbox, guest, ws) = (sandbox.clone(), guest.clone(), ws.to_path_buf());
                tokio::spawn(async move {
                    let d = Dispatch::new("bench", Kind::a2a(), format!("n{i}"), None);
                    invoke::dispatch(&sandbox, &guest, d, &ws, Limits::default())
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().result, Ok(()));
        }
    });
    started.elapsed().as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` asks every bench for its names
    }
    let data = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let sandbox = Arc::new(
        Sandbox::new(&SandboxConfig {
            code_dir: data.path().join("code"),
            slots: N as u32,
        })
        .unwrap(),
    );
    let echo = sandbox
        .load(&GuestRef::parse("echo").unwrap().source().unwrap())
        .unwrap();
    let sleep_wat =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("wat/sleep.wat")).unwrap();
    let sleep = sandbox
        .load(&GuestSource {
            name: "sleep".into(),
            origin: "wat/sleep.wat".into(),
            bytes: sleep_wat.into(),
            path: None,
            sha256: None,
        })
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    // Warm up: every pool slot touched once, as in a long-running daemon.
    run_all(&rt, &sandbox, &echo, ws.path());

    let rss_before = status_kib("VmRSS:");
    reset_peak();
    let echo_secs = run_all(&rt, &sandbox, &echo, ws.path());
    let echo_peak = status_kib("VmHWM:");

    reset_peak();
    let rss_before_sleep = status_kib("VmRSS:");
    let sleep_secs = run_all(&rt, &sandbox, &sleep, ws.path());
    let sleep_peak = status_kib("VmHWM:");

    println!(
        "{N} echo dispatches at once: {:.1} ms wall, all succeeded",
        echo_secs * 1e3
    );
    println!(
        "  peak RSS {} KiB over {} KiB before: {:.1} KiB per dispatch",
        echo_peak,
        rss_before,
        (echo_peak.saturating_sub(rss_before)) as f64 / N as f64
    );
    println!(
        "{N} sleep guests alive at once (200 ms each): {:.1} ms wall",
        sleep_secs * 1e3
    );
    println!(
        "  peak RSS {} KiB over {} KiB before: {:.1} KiB per concurrent guest",
        sleep_peak,
        rss_before_sleep,
        (sleep_peak.saturating_sub(rss_before_sleep)) as f64 / N as f64
    );
}
