// The timeline: failed dispatches rolled back byte for byte, undo of any step, git state, odd files, crashes.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::{Env, stderr, stdout, wat};

/// Every path under `root` (symlinks not followed) with its kind, mode and
/// content hash or link target: equal fingerprints mean byte-identical trees.
fn fingerprint(root: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let m = fs::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            let what = if m.file_type().is_symlink() {
                format!("link {:?}", fs::read_link(&p).unwrap())
            } else if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else {
                let h = Sha256::digest(fs::read(&p).unwrap());
                format!("file {h:x}")
            };
            out.insert(rel, format!("{what} {mode:o}"));
        }
    }
    out
}

/// A workspace with the shapes that break naive snapshotters.
fn populate(ws: &Path) {
    fs::create_dir_all(ws.join("src/deep/er")).unwrap();
    fs::write(ws.join("src/deep/er/lib.rs"), "pub fn f() {}\n").unwrap();
    fs::write(ws.join("README.md"), "# hello\n").unwrap();
    fs::write(ws.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(ws.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(ws.join("with space.txt"), "spaces\n").unwrap();
    fs::write(ws.join("new\nline"), "newline in the name\n").unwrap();
    // WASI cannot name a non-UTF-8 file, so a guest cannot list this
    // directory, let alone empty it; it is snapshotted all the same.
    fs::create_dir(ws.join("odd")).unwrap();
    fs::write(
        ws.join(OsStr::from_bytes(b"odd/latin1-\xe9t\xe9")),
        [0u8, 159, 146, 150],
    )
    .unwrap();
    fs::create_dir(ws.join("empty")).unwrap();
    symlink("README.md", ws.join("readme-link")).unwrap();
    symlink("loop-b", ws.join("loop-a")).unwrap();
    symlink("loop-a", ws.join("loop-b")).unwrap();
    symlink("/etc", ws.join("outside")).unwrap();
    fs::write(ws.join("big.bin"), vec![7u8; 3 << 20]).unwrap();
}

/// `cairn rollback <target> <extra…>`.
fn rollback(env: &Env, target: &str, extra: &[&str]) -> std::process::Output {
    env.cairn()
        .arg("rollback")
        .arg(target)
        .args(extra)
        .output()
        .unwrap()
}

fn log(env: &Env) -> String {
    let out = env.cairn().arg("log").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

/// The step numbers `cairn log` shows, oldest first.
/// `cairn rollback`, which must succeed.
#[track_caller]
fn rollback_ok(env: &Env, target: &str, extra: &[&str]) {
    let out = rollback(env, target, extra);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn steps(env: &Env) -> Vec<i64> {
    let mut v: Vec<i64> = log(env)
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("step "))
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn a_rogue_guest_that_fails_is_rolled_back_byte_for_byte() {
    let env = Env::new();
    populate(env.workspace.path());
    let before = fingerprint(env.workspace.path());

    let out = env.run(wat("rogue.wat"), &["fail"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("rolled back"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    assert_eq!(fingerprint(env.workspace.path()), before);
    let log = log(&env);
    assert!(log.contains("rolled-back"), "{log}");
    assert!(log.contains("D src/deep/er/lib.rs"), "{log}");
}

#[test]
fn a_rogue_guest_that_succeeds_is_kept_and_can_be_undone() {
    let env = Env::new();
    populate(env.workspace.path());
    let before = fingerprint(env.workspace.path());
    let out = env.run(wat("rogue.wat"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::read_dir(env.workspace.path()).unwrap().count(),
        1,
        "all but odd/ deleted"
    );

    let id = log(&env)
        .lines()
        .find(|l| l.contains("rogue.wat"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .to_string();
    rollback_ok(&env, &id, &[]);
    assert_eq!(fingerprint(env.workspace.path()), before);
}

#[test]
fn rolling_back_a_middle_step_keeps_later_work_and_refuses_conflicts() {
    let env = Env::new();
    for i in 1..=3 {
        let script = format!("write f{i} v{i}\nwrite shared s{i}");
        let out = env.run(wat("writer.wat"), &[&script]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let s = steps(&env);
    assert_eq!(s.len(), 3, "{}", log(&env));
    let middle = s[1].to_string();

    // `shared` was changed again by step 3: refused, nothing touched.
    let out = rollback(&env, &middle, &[]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("shared") && err.contains("--force"), "{err}");
    assert_eq!(err.lines().count(), 1);
    assert!(env.ws("f2").exists());

    // Make the conflict go away by undoing step 3's `shared` by hand.
    fs::write(env.ws("shared"), "s2\n").unwrap();
    rollback_ok(&env, &middle, &[]);
    assert!(!env.ws("f2").exists(), "step 2's file is gone");
    assert_eq!(fs::read_to_string(env.ws("f1")).unwrap(), "v1\n");
    assert_eq!(
        fs::read_to_string(env.ws("f3")).unwrap(),
        "v3\n",
        "step 3 survives"
    );
    assert_eq!(fs::read_to_string(env.ws("shared")).unwrap(), "s1\n");
}

#[test]
fn force_overwrites_a_conflict_and_a_rollback_can_be_undone() {
    let env = Env::new();
    for script in ["write a one", "write a two"] {
        assert!(env.run(wat("writer.wat"), &[script]).status.success());
    }
    let first = steps(&env)[0].to_string();
    rollback_ok(&env, &first, &["--force"]);
    assert!(!env.ws("a").exists());
    let undo = *steps(&env).last().unwrap();
    rollback_ok(&env, &undo.to_string(), &[]);
    assert_eq!(fs::read_to_string(env.ws("a")).unwrap(), "two\n");
}

#[test]
fn a_file_replaced_by_a_directory_and_back() {
    let env = Env::new();
    fs::write(env.ws("f"), "a file\n").unwrap();
    let before = fingerprint(env.workspace.path());
    let out = env.run(wat("writer.wat"), &["rm f\nmkdir f\nwrite f/inner x"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(env.ws("f").is_dir());
    let step = *steps(&env).last().unwrap();

    rollback_ok(&env, &step.to_string(), &[]);
    assert_eq!(fingerprint(env.workspace.path()), before);

    // And back again: undo the rollback.
    let undo = *steps(&env).last().unwrap();
    rollback_ok(&env, &undo.to_string(), &[]);
    assert_eq!(fs::read_to_string(env.ws("f/inner")).unwrap(), "x\n");
}

#[test]
fn a_non_utf8_name_changed_outside_cairn_can_be_undone_and_redone() {
    let env = Env::new();
    assert!(env.run("echo", &[]).status.success());
    let name = OsStr::from_bytes(b"caf\xe9 \n.txt");
    fs::write(env.workspace.path().join(name), "made by a person\n").unwrap();
    let before = fingerprint(env.workspace.path());
    // The next dispatch records the person's change as an outside dispatch.
    assert!(env.run("echo", &[]).status.success());
    let outside = log(&env)
        .lines()
        .find(|l| l.contains(" outside "))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .to_string();
    rollback_ok(&env, &outside, &[]);
    assert!(!env.workspace.path().join(name).exists());
    let undo = *steps(&env).last().unwrap();
    rollback_ok(&env, &undo.to_string(), &[]);
    assert_eq!(fingerprint(env.workspace.path()), before);
}

#[test]
fn diff_shows_text_changes_and_names_binary_files() {
    let env = Env::new();
    fs::write(env.ws("notes.txt"), "one\ntwo\n").unwrap();
    fs::write(env.ws("blob.bin"), [0u8, 1, 2]).unwrap();
    let out = env.run(
        wat("writer.wat"),
        &["append notes.txt three\nappend blob.bin x"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let step = *steps(&env).last().unwrap();
    let out = env
        .cairn()
        .args(["diff", &step.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let diff = stdout(&out);
    assert!(
        diff.contains("--- a/notes.txt\n+++ b/notes.txt\n"),
        "{diff}"
    );
    assert!(diff.contains("\n two\n+three\n"), "{diff}");
    assert!(
        diff.contains("Binary files a/blob.bin and b/blob.bin differ"),
        "{diff}"
    );

    let out = env.cairn().args(["diff", "999999"]).output().unwrap();
    crate::assert_one_line_error(&out, 2, &["no step 999999"]);
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
    stdout(&out)
}

#[test]
fn a_commit_and_a_branch_move_during_a_failed_dispatch_are_undone() {
    let env = Env::new();
    let ws = env.workspace.path();
    git(ws, &["init", "-q", "-b", "main"]);
    fs::write(ws.join("tracked.txt"), "v1\n").unwrap();
    fs::write(ws.join(".gitignore"), "build/\n").unwrap();
    fs::create_dir(ws.join("build")).unwrap();
    fs::write(ws.join("build/out.o"), "ignored\n").unwrap();
    git(ws, &["add", "-A"]);
    git(ws, &["commit", "-q", "-m", "first"]);
    git(ws, &["branch", "side"]);
    let state = |ws: &Path| {
        (
            git(ws, &["status", "--porcelain"]),
            git(ws, &["log", "--all", "--oneline"]),
            git(ws, &["rev-parse", "HEAD", "main", "side"]),
        )
    };
    let before = state(ws);

    // The guest writes and then waits; meanwhile the step commits and moves
    // a branch; the deadline fails the dispatch.
    let child = env
        .cairn()
        .args(["run", "--timeout", "4", "--workspace"])
        .arg(ws)
        .arg(wat("writer.wat"))
        .arg("write tracked.txt v2\nwait")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(|| fs::read_to_string(ws.join("tracked.txt")).unwrap() == "v2\n");
    git(ws, &["commit", "-q", "-am", "second"]);
    git(ws, &["branch", "-f", "side", "HEAD"]);
    fs::write(ws.join("build/out.o"), "rebuilt\n").unwrap();
    assert_ne!(state(ws), before);

    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("rolled back"), "{}", stderr(&out));
    assert_eq!(state(ws), before);
    assert_eq!(fs::read_to_string(ws.join("tracked.txt")).unwrap(), "v1\n");
    // Ignored files are not the timeline's to touch.
    assert_eq!(
        fs::read_to_string(ws.join("build/out.o")).unwrap(),
        "rebuilt\n"
    );
    let log = log(&env);
    assert!(!log.contains("build/out.o"), "{log}");
}

fn wait_for(mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kill_9_during_a_step_rolls_the_dispatch_back_on_the_next_start() {
    let env = Env::new();
    fs::write(env.ws("keep.txt"), "precious\n").unwrap();
    let before = fingerprint(env.workspace.path());
    let mut child = env
        .cairn()
        .args(["run", "--workspace"])
        .arg(env.workspace.path())
        .arg(wat("writer.wat"))
        .arg("rm keep.txt\nwrite new.txt half-done\nwait")
        .spawn()
        .unwrap();
    wait_for(|| env.ws("new.txt").exists());
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!env.ws("keep.txt").exists());

    let log = log(&env);
    assert!(log.contains("interrupted"), "{log}");
    assert_eq!(fingerprint(env.workspace.path()), before);
}

#[test]
fn kill_9_during_a_rollback_is_finished_on_the_next_start() {
    let env = Env::new();
    for i in 0..40 {
        fs::write(env.ws(&format!("file-{i:02}")), format!("content {i}\n")).unwrap();
    }
    let before = fingerprint(env.workspace.path());
    let mut child = env
        .cairn()
        .env("CAIRN_RESTORE_PAUSE_MS", "100")
        .args(["run", "--workspace"])
        .arg(env.workspace.path())
        .arg(wat("rogue.wat"))
        .arg("fail")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Rogue deletes all 40, the rollback puts them back one every 100 ms:
    // kill it when some, not all, are back. The count passes through that
    // range on the way down too, under load slowly enough to be seen: wait
    // for the bottom first, after which it only rises.
    let count = || fs::read_dir(env.workspace.path()).unwrap().count();
    wait_for(|| count() <= 1);
    wait_for(|| (5..30).contains(&count()));
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = fs::read_dir(env.workspace.path()).unwrap().count();
    assert!(partial < 40, "killed mid-rollback ({partial} back)");

    let log = log(&env);
    assert!(log.contains("rolled-back"), "{log}");
    assert_eq!(fingerprint(env.workspace.path()), before);
}

#[test]
fn files_the_process_cannot_read_survive_snapshot_and_rollback() {
    // Meaningful only without root's power to read anything.
    let env = Env::new();
    let base = env.data.path().join("nobody");
    fs::create_dir(&base).unwrap();
    fs::set_permissions(env.data.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&base, fs::Permissions::from_mode(0o777)).unwrap();
    let ws = base.join("ws");
    fs::create_dir(&ws).unwrap();
    fs::write(ws.join("secret"), "only the owner, and not even them\n").unwrap();
    fs::write(ws.join("plain"), "plain\n").unwrap();
    let binary = base.join("cairn");
    fs::copy(env!("CARGO_BIN_EXE_cairn"), &binary).unwrap();
    let rogue = base.join("rogue.wat");
    fs::copy(wat("rogue.wat"), &rogue).unwrap();
    let as_root = unsafe { geteuid() } == 0;
    if as_root {
        for p in [&ws, &ws.join("secret"), &ws.join("plain")] {
            std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
        }
    }
    fs::set_permissions(ws.join("secret"), fs::Permissions::from_mode(0o000)).unwrap();
    let before = fingerprint(&ws);

    let mut cmd = if as_root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&binary);
        c
    } else {
        Command::new(&binary)
    };
    let out = cmd
        .env_remove("RUST_LOG")
        .env("CAIRN_DATA_DIR", base.join("data"))
        .args(["run", "--workspace"])
        .arg(&ws)
        .arg(&rogue)
        .arg("fail")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("rolled back"), "{}", stderr(&out));
    assert_eq!(fingerprint(&ws), before);
}

unsafe extern "C" {
    fn geteuid() -> u32;
}

#[test]
fn gc_forgets_old_dispatches_and_frees_their_objects() {
    let env = Env::new();
    for i in 0..5 {
        let script = format!("write big {}", "x".repeat(10_000 + i));
        assert!(env.run(wat("writer.wat"), &[&script]).status.success());
    }
    let out = env.cairn().args(["gc", "--keep", "1"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(said.contains("forgot 4 dispatch(es)"), "{said}");
    // The contents of the first three versions; the fourth is the last
    // dispatch's "before", the fifth the current file.
    assert!(said.contains("deleted 3 object(s)"), "{said}");
    // The current content is still referenced and kept.
    assert_eq!(steps(&env).len(), 1);

    let out = env
        .cairn()
        .args(["gc", "--older-than", "soon"])
        .output()
        .unwrap();
    crate::assert_one_line_error(&out, 2, &["soon"]);
}

#[test]
fn a_large_workspace_uses_the_watcher_and_misses_nothing() {
    // Above 2,000 recorded paths the end boundary reads inotify events
    // instead of walking: changes by another process during the step, in
    // new nested directories and in old files, must all be rolled back.
    let env = Env::new();
    for d in 0..30 {
        fs::create_dir(env.ws(&format!("d{d}"))).unwrap();
        for f in 0..80 {
            fs::write(env.ws(&format!("d{d}/f{f}")), format!("{d}/{f}\n")).unwrap();
        }
    }
    // The first dispatch records the tree (and the watcher's threshold).
    assert!(env.run("echo", &[]).status.success());
    let before = fingerprint(env.workspace.path());
    let child = env
        .cairn()
        .args(["run", "--timeout", "3", "--workspace"])
        .arg(env.workspace.path())
        .arg(wat("writer.wat"))
        .arg("write marker x\nwait")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(|| env.ws("marker").exists());
    fs::create_dir_all(env.ws("new/deep/er")).unwrap();
    fs::write(env.ws("new/deep/er/file"), "made during the step\n").unwrap();
    fs::write(env.ws("d3/f7"), "changed during the step\n").unwrap();
    fs::remove_file(env.ws("d9/f1")).unwrap();
    fs::rename(env.ws("d12"), env.ws("d12-moved")).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert_eq!(fingerprint(env.workspace.path()), before);
}
