// The preview-2 path end to end: a Rust guest built for wasm32-wasip2, run as a component.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use crate::*;

/// Builds `guests/echo-rs` once per test run (needs `rustup target add wasm32-wasip2`).
pub(crate) fn echo_rs() -> PathBuf {
    rust_guest("echo-rs")
}

/// Builds the Rust guest `guests/<name>` once per test run.
pub(crate) fn rust_guest(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, path)) = built.iter().find(|(n, _)| n == name) {
        return path.clone();
    }
    let target_dir = repo().join("target/guests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(repo().join("guests").join(name).join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building guests/{name} (is the wasm32-wasip2 target installed?): {}",
        stderr(&out)
    );
    let path = target_dir.join(format!("wasm32-wasip2/release/{name}.wasm"));
    built.push((name.to_string(), path.clone()));
    path
}

#[test]
fn a_rust_component_reads_the_dispatch_and_replies() {
    let env = Env::new();
    std::fs::write(env.ws("one"), "1").unwrap();
    std::fs::write(env.ws("two"), "2").unwrap();
    let out = env.run(
        echo_rs(),
        &["hello component", "--kind", "task:daily", "--json", "-v"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["guest"]["shape"], "component");
    assert_eq!(v["reply"]["text"], "echo-rs (task:daily): hello component");
    let events = v["reply"]["events"].as_array().unwrap();
    let last = events.last().unwrap();
    assert_eq!(last["data"]["workspace_entries"], 2);
    assert_eq!(events[0]["type"], "progress");
    let id = v["dispatch"]["id"].as_str().unwrap();
    assert!(
        stderr(&out).contains(&format!("echo-rs: dispatch {id}")),
        "stderr reaches the log: {}",
        stderr(&out)
    );
}

#[test]
fn a_rust_component_writes_to_the_workspace() {
    let env = Env::new();
    let out = env.run(echo_rs(), &["write from wasip2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(env.ws("echo-rs.txt")).unwrap(),
        "from wasip2"
    );
}

#[test]
fn a_rust_component_exit_code_fails_the_dispatch() {
    let env = Env::new();
    let out = env.run(echo_rs(), &["fail"]);
    // WASI 0.2's `exit` carries only success or failure: code 3 arrives as 1.
    assert_one_line_error(&out, 5, &["echo-rs.wasm", "guest exited with code 1"]);
}

#[test]
fn a_component_is_compiled_once_too() {
    let env = Env::new();
    assert!(env.run(echo_rs(), &["a"]).status.success());
    let out = env.run(echo_rs(), &["b", "-vv"]);
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("compiled code from the cache"),
        "{}",
        stderr(&out)
    );
}
