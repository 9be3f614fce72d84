//! What the benches share: a scaffolded repository with `cairn up`
//! running on it, a process's resident memory, and the 100,000-file tree.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// `cairn up` on a temporary repository scaffolded by `cairn init`; killed
/// when dropped.
pub struct Up {
    pub child: Child,
    pub url: String,
    pub data: tempfile::TempDir,
    pub repo: tempfile::TempDir,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Scaffolds a repository, lets `prepare` add to it, and starts `cairn up`
/// on it with `extra` arguments; returns once it listens.
pub fn up(prepare: impl FnOnce(&Path), extra: &[&str]) -> Up {
    let cairn = env!("CARGO_BIN_EXE_cairn");
    let data = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    let init = Command::new(cairn)
        .arg("init")
        .arg(repo.path())
        .env("CAIRN_DATA_DIR", data.path())
        .output()
        .unwrap();
    assert!(init.status.success());
    prepare(repo.path());
    let mut child = Command::new(cairn)
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .arg("--repo")
        .arg(repo.path())
        .env("CAIRN_DATA_DIR", data.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    std::thread::spawn(move || for _ in stdout.lines() {});
    let url = line.trim().split_once(" — ").unwrap().1.to_string();
    Up {
        child,
        url,
        data,
        repo,
    }
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The 100,000-file tree the timeline and broker benches share.
pub const DIRS: usize = 1000;
pub const PER_DIR: usize = 100;

pub fn bench_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/timeline-bench")
}

/// Source-like text of 1–8 KiB, different for every file.
pub fn content(n: usize, round: usize) -> Vec<u8> {
    let size = 1024 + (n * 7919 % 7168);
    let mut out = Vec::with_capacity(size + 80);
    let mut line = 0;
    while out.len() < size {
        out.extend_from_slice(
            format!("fn item_{n}_{line}() -> u64 {{ {round} + {line} * {n} }} // generated\n")
                .as_bytes(),
        );
        line += 1;
    }
    out
}

pub fn path_of(tree: &Path, n: usize) -> PathBuf {
    tree.join(format!(
        "d{:03}/s{}/f{:03}.rs",
        n / PER_DIR,
        n % 10,
        n % PER_DIR
    ))
}

pub fn generate(tree: &Path) {
    let done = tree.join(".complete");
    if done.exists() {
        return;
    }
    let _ = fs::remove_dir_all(tree);
    eprintln!(
        "generating {} files under {}",
        DIRS * PER_DIR,
        tree.display()
    );
    for n in 0..DIRS * PER_DIR {
        let p = path_of(tree, n);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content(n, 0)).unwrap();
    }
    fs::write(done, b"").unwrap();
}
