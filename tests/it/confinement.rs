// What a guest cannot reach: host paths, `..`, symlinks out of the workspace; rogue stays inside.

use std::fs;
use std::os::unix::fs::symlink;

use crate::*;

/// A workspace inside a parent that also holds files the guest must not touch.
struct Fenced {
    env: Env,
    outside: tempfile::TempDir,
}

impl Fenced {
    fn new() -> Self {
        let env = Env::new();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("target.txt"), "host data\n").unwrap();
        Self { env, outside }
    }

    fn outside_file(&self) -> String {
        fs::read_to_string(self.outside.path().join("target.txt")).unwrap()
    }
}

#[test]
fn escape_attempts_fail_inside_the_guest_and_host_files_are_untouched() {
    // The workspace's parent has `outside.txt`, reachable by `..` if confinement failed.
    let parent = tempfile::tempdir().unwrap();
    let ws = parent.path().join("ws");
    fs::create_dir(&ws).unwrap();
    fs::write(parent.path().join("outside.txt"), "parent data\n").unwrap();
    let fenced = Fenced::new();
    symlink(fenced.outside.path(), ws.join("link-out")).unwrap();
    symlink(
        fenced.outside.path().join("target.txt"),
        ws.join("link-file"),
    )
    .unwrap();
    let passwd_before = fs::read("/etc/passwd").unwrap();

    let out = fenced
        .env
        .cairn()
        .arg("run")
        .arg(wat("escape.wat"))
        .arg("--workspace")
        .arg(&ws)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the guest reports every attempt refused: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["reply"]["text"], "escape: all refused");

    assert_eq!(fenced.outside_file(), "host data\n");
    assert_eq!(
        fs::read_to_string(parent.path().join("outside.txt")).unwrap(),
        "parent data\n"
    );
    assert_eq!(fs::read("/etc/passwd").unwrap(), passwd_before);
}

#[test]
fn rogue_deletes_the_workspace_and_nothing_else() {
    let fenced = Fenced::new();
    let ws = fenced.env.workspace.path();
    fs::create_dir_all(ws.join("src/deep/er")).unwrap();
    fs::write(ws.join("src/deep/er/f.rs"), "x").unwrap();
    fs::write(ws.join("README"), "y").unwrap();
    symlink(fenced.outside.path(), ws.join("link-out")).unwrap();

    let out = fenced.env.run(wat("rogue.wat"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::read_dir(ws).unwrap().count(),
        0,
        "the workspace is emptied"
    );
    assert_eq!(
        fenced.outside_file(),
        "host data\n",
        "the symlink was removed, not followed"
    );
    assert!(fenced.outside.path().join("target.txt").exists());
}
