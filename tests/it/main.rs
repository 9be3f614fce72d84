//! cairn's integration tests: the real binary, real files in temp dirs, real
//! guests. Each module says what belongs in it.

mod code_cache;
mod coder;
mod component;
mod concurrency;
mod confinement;
mod daemon;
mod faults;
mod images;
mod registry;
mod run_cli;
mod schedule;
mod sidecar;
mod tidy;
mod timeline;
mod upstream;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's root, where `wat/` and `guests/` are.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn wat(name: &str) -> PathBuf {
    repo().join("wat").join(name)
}

/// A test's own data directory and workspace, removed when it ends.
pub struct Env {
    pub data: tempfile::TempDir,
    pub workspace: tempfile::TempDir,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    pub fn new() -> Self {
        Self {
            data: tempfile::tempdir().unwrap(),
            workspace: tempfile::tempdir().unwrap(),
        }
    }

    /// `cairn` with this env's data directory and nothing of the caller's.
    pub fn cairn(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
        cmd.env_remove("RUST_LOG")
            .env("CAIRN_DATA_DIR", self.data.path());
        cmd
    }

    /// `cairn run <guest> --workspace <ws> <args…>`.
    pub fn run(&self, guest: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Output {
        self.cairn()
            .arg("run")
            .arg(guest)
            .arg("--workspace")
            .arg(self.workspace.path())
            .args(args)
            .output()
            .unwrap()
    }

    pub fn ws(&self, rel: &str) -> PathBuf {
        self.workspace.path().join(rel)
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A failure as the contract for errors says: exit code `code`, and on
/// stderr exactly one line, `cairn: …`, containing every one of `parts`, with
/// no panic and no backtrace.
#[track_caller]
pub fn assert_one_line_error(out: &Output, code: i32, parts: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "exit code; stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line of error, got: {err}");
    assert!(lines[0].starts_with("cairn: "), "{err}");
    for part in parts {
        assert!(lines[0].contains(part), "`{part}` missing from: {err}");
    }
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

/// Runs `cmd` to the end, or kills it after `limit` and fails the test: a
/// guest that should have been stopped must not hang the suite instead.
#[track_caller]
pub fn output_within(mut cmd: Command, limit: std::time::Duration) -> Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {limit:?}: the guest was not stopped");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}
