//! Whole process: `cairn run echo hello` with a warm compiled-code cache and
//! with an empty one, beside spawning `true` (the cost of any process at
//! all) measured in the same run.
//!
//! `cargo bench --bench cli`

use std::process::Command;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

fn cairn(data: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.env("CAIRN_DATA_DIR", data)
        .env_remove("RUST_LOG")
        .args(["run", "echo", "hello"]);
    cmd
}

fn whole_process(c: &mut Criterion) {
    let warm = tempfile::tempdir().unwrap();
    assert!(cairn(warm.path()).output().unwrap().status.success());

    let mut group = c.benchmark_group("cairn run echo hello");
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("warm cache", |b| {
        b.iter(|| {
            let out = cairn(warm.path()).output().unwrap();
            assert_eq!(out.stdout, b"echo (a2a): hello\n");
        })
    });
    group.bench_function("cold cache", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap(),
            |cold| {
                let out = cairn(cold.path()).output().unwrap();
                assert!(out.status.success());
                cold
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("spawn `true` (baseline)", |b| {
        b.iter(|| assert!(Command::new("true").status().unwrap().success()))
    });
    group.finish();
}

criterion_group!(benches, whole_process);
criterion_main!(benches);
