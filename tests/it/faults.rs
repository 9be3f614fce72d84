// Bad guests, bad arguments, and guests that misbehave: each gets one line and an exit code.

use std::fs;

use crate::*;

fn write(env: &Env, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = env.data.path().join(name);
    fs::write(&path, bytes).unwrap();
    path
}

fn echo_binary() -> Vec<u8> {
    wat::parse_file(wat("echo.wat")).unwrap()
}

#[test]
fn a_file_that_is_not_wasm() {
    let env = Env::new();
    let path = write(&env, "notes.wasm", b"\x7fELF\x02\x01\x01 not wasm at all");
    let out = env.run(&path, &[]);
    assert_one_line_error(&out, 3, &["notes.wasm", "not a wasm module", "7f 45 4c 46"]);
}

#[test]
fn an_empty_file() {
    let env = Env::new();
    let path = write(&env, "empty.wasm", b"");
    let out = env.run(&path, &[]);
    assert_one_line_error(&out, 3, &["empty.wasm", "empty"]);
}

#[test]
fn a_truncated_module() {
    let env = Env::new();
    let bin = echo_binary();
    let path = write(&env, "truncated.wasm", &bin[..bin.len() / 2]);
    let out = env.run(&path, &[]);
    assert_one_line_error(&out, 3, &["truncated.wasm", "invalid wasm module"]);
}

#[test]
fn a_corrupt_module() {
    let env = Env::new();
    let mut bin = echo_binary();
    // Past the header, overwrite a stretch with bytes no section can hold.
    for b in &mut bin[8..40] {
        *b = 0xff;
    }
    let path = write(&env, "corrupt.wasm", &bin);
    let out = env.run(&path, &[]);
    assert_one_line_error(&out, 3, &["corrupt.wasm", "invalid wasm module"]);
}

#[test]
fn a_module_without_start() {
    let env = Env::new();
    let out = env.run(wat("bad/no-start.wat"), &[]);
    assert_one_line_error(&out, 3, &["no-start.wat", "no `_start` export"]);
}

#[test]
fn a_component_of_another_world() {
    let env = Env::new();
    let out = env.run(wat("bad/other-world.wat"), &[]);
    assert_one_line_error(&out, 3, &["other-world.wat", "wasi:cli/run"]);
}

#[test]
fn a_wat_file_with_a_syntax_error() {
    let env = Env::new();
    let out = env.run(wat("bad/syntax.wat"), &[]);
    assert_one_line_error(&out, 3, &["syntax.wat:3:", "invalid WAT"]);
}

#[test]
fn a_missing_guest_file() {
    let env = Env::new();
    let out = env.run("/nonexistent/guest.wasm", &[]);
    assert_one_line_error(&out, 2, &["/nonexistent/guest.wasm", "no such file"]);
}

#[test]
fn a_trap_reports_its_message() {
    let env = Env::new();
    let out = env.run(wat("trap.wat"), &[]);
    assert_one_line_error(&out, 4, &["trap.wat", "wasm trap", "unreachable"]);
    assert!(stdout(&out).is_empty());
}

#[test]
fn a_spinning_guest_stops_at_its_deadline() {
    let env = Env::new();
    let mut cmd = env.cairn();
    cmd.arg("run").arg(wat("spin.wat")).args(["--timeout", "1"]);
    // Generous: the point is that it stopped at all, not how fast.
    let out = output_within(cmd, std::time::Duration::from_secs(60));
    assert_one_line_error(&out, 6, &["spin.wat", "deadline of 1 s exceeded"]);
}

#[test]
fn a_memory_bomb_stops_at_the_cap() {
    let env = Env::new();
    let out = env.run(wat("membomb.wat"), &["--memory", "16", "--timeout", "60"]);
    assert_one_line_error(&out, 7, &["membomb.wat", "memory cap of 16 MiB exceeded"]);
}

#[test]
fn a_flood_of_output_is_capped_and_the_cap_reported() {
    let env = Env::new();
    let out = env.run(wat("flood.wat"), &["--timeout", "60", "--json"]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("stdout exceeded its cap of 16777216 bytes"),
        "{}",
        stderr(&out)
    );
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["status"]["ok"], false);
}

#[test]
fn a_missing_workspace() {
    let env = Env::new();
    let out = env
        .cairn()
        .args(["run", "echo", "--workspace", "/nonexistent/ws"])
        .output()
        .unwrap();
    assert_one_line_error(&out, 2, &["workspace /nonexistent/ws", "no such file"]);
}

#[test]
fn a_workspace_that_is_a_file() {
    let env = Env::new();
    let file = write(&env, "plain-file", b"x");
    let out = env
        .cairn()
        .args(["run", "echo", "--workspace"])
        .arg(&file)
        .output()
        .unwrap();
    assert_one_line_error(&out, 2, &["plain-file", "not a directory"]);
}

#[test]
fn an_unreadable_workspace() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let ws = env.data.path().join("locked");
    fs::create_dir(&ws).unwrap();
    fs::set_permissions(&ws, fs::Permissions::from_mode(0o000)).unwrap();
    // root reads any directory; the check is made as an unprivileged user.
    let out = if unsafe { libc_geteuid() } == 0 {
        fs::set_permissions(env.data.path(), fs::Permissions::from_mode(0o777)).unwrap();
        // A copy the unprivileged user can reach wherever the checkout is.
        let binary = env.data.path().join("cairn");
        fs::copy(env!("CARGO_BIN_EXE_cairn"), &binary).unwrap();
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&binary)
            .args(["run", "echo", "--workspace"])
            .arg(&ws)
            .env("CAIRN_DATA_DIR", env.data.path().join("nobody-data"))
            .output()
            .unwrap()
    } else {
        env.cairn()
            .args(["run", "echo", "--workspace"])
            .arg(&ws)
            .output()
            .unwrap()
    };
    fs::set_permissions(&ws, fs::Permissions::from_mode(0o755)).unwrap();
    assert_one_line_error(&out, 2, &["locked", "cannot be read", "permission denied"]);
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

#[test]
fn memory_and_timeout_out_of_range_are_refused_before_anything_runs() {
    let env = Env::new();
    for (flag, value) in [
        ("--memory", "0"),
        ("--memory", "4097"),
        ("--timeout", "0"),
        ("--timeout", "86401"),
        ("--timeout", "abc"),
    ] {
        let out = env
            .cairn()
            .args(["run", "echo", flag, value])
            .output()
            .unwrap();
        assert_one_line_error(&out, 2, &[flag, value]);
    }
    // Nothing ran: not even the code cache was created.
    assert!(!env.data.path().join("code").exists());
}

#[test]
fn a_bad_kind_is_refused() {
    let env = Env::new();
    let out = env.run("echo", &["--kind", "jobs:x"]);
    assert_one_line_error(&out, 2, &["jobs:x", "kind"]);
}
