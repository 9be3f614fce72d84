//! The timeline on a synthetic tree of 100,000 files (~400 MB), side by side
//! with the two ways checkpoints are taken today:
//!
//! - `timeline/boundary-10-changed`: a step boundary after 10 files changed
//!   (in-process, with the file watcher: the steady state of a daemon);
//! - `timeline/rollback-10-changed`: undoing that step;
//! - `baseline/cp-a`: a full copy of the tree (`cp -a`);
//! - `baseline/shadow-git-commit-10-changed`: `git add -A && git commit` in
//!   a shadow repository (its own GIT_DIR, the tree as work tree).
//!
//! Printed once: the first full snapshot (`Timeline::open` + the first
//! boundary, which copies every file into the object store), a boundary
//! without the watcher (the walk that trusts the stat cache, what a fresh
//! `cairn run` does at its start), and the store's growth over 100 steps of
//! 10 changed files against the bytes those steps changed.
//!
//! The tree is generated once under `target/timeline-bench/` and reused.
//! `cargo bench --bench timeline` (about 5 minutes the first time).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cairn::data_dir::DataDir;
use cairn::timeline::{Opener, Target, Timeline};
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};

mod common;
use common::{DIRS, PER_DIR, bench_root, content, generate, path_of};

fn du(path: &Path) -> u64 {
    let out = Command::new("du").arg("-sb").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Rewrites 10 files spread over the tree; returns the bytes written.
fn change_ten(tree: &Path, round: usize) -> u64 {
    let mut bytes = 0;
    for i in 0..10 {
        let n = (round * 10 + i) * 997 % (DIRS * PER_DIR);
        let c = content(n, round + 1);
        bytes += c.len() as u64;
        fs::write(path_of(tree, n), c).unwrap();
    }
    bytes
}

fn git(shadow: &Path, tree: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .arg("--git-dir")
        .arg(shadow)
        .arg("--work-tree")
        .arg(tree)
        .args(["-c", "user.name=b", "-c", "user.email=b@example.com"])
        .args(args)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "git {args:?}");
}

fn benches(c: &mut Criterion) {
    let root = bench_root();
    let tree = root.join("tree");
    generate(&tree);
    let data_root = root.join("data");
    let _ = fs::remove_dir_all(&data_root);
    let data = DataDir::resolve(Some(&data_root)).unwrap();

    // First full snapshot: every file read, hashed and copied once.
    let start = Instant::now();
    let mut tl = Timeline::open(&data, &tree.canonicalize().unwrap(), true).unwrap();
    let mut active = tl.begin("bench", "bench", "job:bench").unwrap();
    let first = start.elapsed();
    let store_after_first = du(&data_root);
    eprintln!(
        "first full snapshot: {:.2} s, store {:.0} MiB for a {:.0} MiB tree",
        first.as_secs_f64(),
        store_after_first as f64 / 1048576.0,
        du(&tree) as f64 / 1048576.0
    );

    let mut round = 0usize;
    let mut g = c.benchmark_group("timeline");
    g.sample_size(30).warm_up_time(Duration::from_secs(1));
    g.bench_function("boundary-10-changed", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                change_ten(&tree, round);
                let t = Instant::now();
                tl.boundary(&mut active, Opener::ToolCall, None).unwrap();
                total += t.elapsed();
            }
            total
        })
    });
    g.bench_function("rollback-10-changed", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                change_ten(&tree, round);
                let changed = active.step();
                tl.boundary(&mut active, Opener::ToolCall, None).unwrap();
                let t = Instant::now();
                let undone = tl.rollback(&Target::Step(changed), false).unwrap();
                total += t.elapsed();
                assert_eq!(undone.paths, 10);
            }
            total
        })
    });
    g.finish();

    // Store growth: 100 steps of 10 changed files. The WAL is folded into
    // the database first, each time, so its size does not blur the figure.
    tl.store().vacuum().unwrap();
    let before = du(&data_root);
    let mut written = 0;
    for _ in 0..100 {
        round += 1;
        written += change_ten(&tree, round);
        tl.boundary(&mut active, Opener::ToolCall, None).unwrap();
    }
    tl.store().vacuum().unwrap();
    let growth = du(&data_root).saturating_sub(before);
    eprintln!(
        "store growth over 100 steps of 10 changed files: {:.2} MiB for {:.2} MiB changed ({:.2}x)",
        growth as f64 / 1048576.0,
        written as f64 / 1048576.0,
        growth as f64 / written as f64
    );
    tl.end(active, Ok(()), Default::default()).unwrap();
    drop(tl);

    // A boundary without the watcher: what `cairn run` pays at its start.
    // The first one also re-reads the files the steps above rewrote within
    // the racy window of their boundary; the second is the settled case.
    for what in ["after rapid steps", "settled"] {
        let mut cold = Timeline::open(&data, &tree.canonicalize().unwrap(), false).unwrap();
        round += 1;
        change_ten(&tree, round);
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        let a = cold
            .begin(&format!("bench-walk-{what}"), "bench", "job:bench")
            .unwrap();
        eprintln!(
            "boundary by walking the tree (stat cache, no watcher), 10 changed, {what}: {:.1} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
        cold.end(a, Ok(()), Default::default()).unwrap();
    }

    // Baselines.
    let mut g = c.benchmark_group("baseline");
    // Flat sampling: one iteration per sample, not 1..10 (a copy takes seconds).
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1));
    let copy = root.join("copy");
    g.bench_function("cp-a", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let _ = fs::remove_dir_all(&copy);
                let t = Instant::now();
                let ok = Command::new("cp")
                    .arg("-a")
                    .arg(&tree)
                    .arg(&copy)
                    .status()
                    .unwrap();
                total += t.elapsed();
                assert!(ok.success());
            }
            total
        })
    });
    let _ = fs::remove_dir_all(&copy);
    let shadow = root.join("shadow.git");
    let _ = fs::remove_dir_all(&shadow);
    git(&shadow, &tree, &["init", "-q"]);
    git(&shadow, &tree, &["add", "-A"]);
    git(&shadow, &tree, &["commit", "-q", "-m", "base"]);
    g.bench_function("shadow-git-commit-10-changed", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                change_ten(&tree, round);
                let t = Instant::now();
                git(&shadow, &tree, &["add", "-A"]);
                git(&shadow, &tree, &["commit", "-q", "-m", "step"]);
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
    let _ = fs::remove_dir_all(&shadow);
    let _ = fs::remove_dir_all(&data_root);
}

criterion_group!(timeline, benches);
criterion_main!(timeline);
