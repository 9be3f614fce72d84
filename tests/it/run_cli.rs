// `cairn run` as a user sees it: replies, prompt sources, kinds, sessions, --json, arguments.

use crate::*;

#[test]
fn bundled_echo_replies_with_the_prompt_and_the_kind() {
    let env = Env::new();
    let out = env.run("echo", &["hello there"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "echo (a2a): hello there\n");
    assert!(
        stderr(&out).is_empty(),
        "quiet by default: {}",
        stderr(&out)
    );
}

#[test]
fn echo_keeps_quotes_and_newlines_intact() {
    let env = Env::new();
    let out = env.run("echo", &["say \"hi\"\nand\\bye"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "echo (a2a): say \"hi\"\nand\\bye\n");
}

#[test]
fn the_prompt_can_come_from_stdin() {
    use std::io::Write;
    use std::process::Stdio;
    let env = Env::new();
    let mut child = env
        .cairn()
        .args(["run", "echo", "-", "--kind", "heartbeat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from a pipe")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "echo (heartbeat): from a pipe\n");
}

#[test]
fn json_output_carries_the_dispatch_the_events_and_the_status() {
    let env = Env::new();
    let out = env.run(
        "echo",
        &["hi", "--json", "--kind", "job:nightly", "--session", "s-42"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["dispatch"]["contract"], 1);
    assert_eq!(v["dispatch"]["kind"], "job:nightly");
    assert_eq!(v["dispatch"]["session"], "s-42");
    assert_eq!(v["dispatch"]["prompt"], "hi");
    assert_eq!(v["status"]["ok"], true);
    assert_eq!(v["reply"]["text"], "echo (job:nightly): hi");
    assert_eq!(v["reply"]["finished"], true);
    assert_eq!(v["guest"]["shape"], "module");
    assert_eq!(v["guest"]["sha256"].as_str().unwrap().len(), 64);
}

#[test]
fn a_wat_file_runs_like_a_bundled_guest() {
    let env = Env::new();
    let out = env.run(wat("echo.wat"), &["file"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "echo (a2a): file\n");
}

#[test]
fn guest_stderr_goes_to_the_log_with_v() {
    let env = Env::new();
    let out = env.run(wat("writer.wat"), &["bogus command", "-v"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("bogus"),
        "guest's stderr line is in the log: {err}"
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn writer_creates_and_edits_files_in_the_workspace() {
    let env = Env::new();
    let script = "mkdir src\nwrite src/a.txt first line\nappend src/a.txt second line\nwrite b.txt gone soon\nrm b.txt";
    let out = env.run(wat("writer.wat"), &[script]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(env.ws("src/a.txt")).unwrap(),
        "first line\nsecond line\n"
    );
    assert!(!env.ws("b.txt").exists());
    assert_eq!(stdout(&out), "writer: 5 ops\n");
}

#[test]
fn a_non_zero_exit_fails_the_dispatch_with_its_code() {
    let env = Env::new();
    let out = env.run(wat("exit7.wat"), &[]);
    assert_one_line_error(&out, 5, &["exit7.wat", "guest exited with code 7"]);
}

#[test]
fn noop_succeeds_with_an_empty_reply() {
    let env = Env::new();
    let out = env.run(wat("noop.wat"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "\n");
}

#[test]
fn without_a_workspace_the_guest_gets_an_empty_temporary_one() {
    let env = Env::new();
    let out = env
        .cairn()
        .args(["run"])
        .arg(wat("writer.wat"))
        .arg("write x.txt y")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!std::env::current_dir().unwrap().join("x.txt").exists());
}

#[test]
fn an_unknown_guest_name_lists_the_bundled_ones() {
    let env = Env::new();
    let out = env.run("nosuchguest", &[]);
    assert_one_line_error(&out, 2, &["nosuchguest", "echo"]);
}

#[test]
fn help_lists_the_exit_codes() {
    let env = Env::new();
    let out = env.cairn().args(["run", "--help"]).output().unwrap();
    assert!(out.status.success());
    assert!(stdout(&out).contains("6 deadline exceeded"));
}
