//! What the whole-process benches share: a scaffolded repository with
//! `cairn up` running on it, and a process's resident memory.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
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
