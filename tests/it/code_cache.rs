// The compiled-code cache on disk: written once, reused, and never trusted when corrupt.

use std::fs;

use crate::*;

fn cache_entries(env: &Env) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let code = env.data.path().join("code");
    for engine_dir in fs::read_dir(&code).unwrap() {
        for entry in fs::read_dir(engine_dir.unwrap().path()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "cwasm") {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn a_guest_is_compiled_once_and_then_loaded_from_the_cache() {
    let env = Env::new();
    let first = env.run("echo", &["one", "-vv"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        !stderr(&first).contains("from the cache"),
        "{}",
        stderr(&first)
    );
    assert_eq!(cache_entries(&env).len(), 1);

    let second = env.run("echo", &["two", "-vv"]);
    assert!(second.status.success());
    assert!(
        stderr(&second).contains("compiled code from the cache"),
        "{}",
        stderr(&second)
    );
    assert_eq!(stdout(&second), "echo (a2a): two\n");
}

#[test]
fn a_corrupt_cache_entry_is_detected_and_rebuilt() {
    let env = Env::new();
    assert!(env.run("echo", &["warm"]).status.success());
    let entry = cache_entries(&env).pop().unwrap();
    let mut bytes = fs::read(&entry).unwrap();
    // Flip bytes deep in the native code, where only a checksum would notice.
    let at = bytes.len() * 2 / 3;
    for b in &mut bytes[at..at + 16] {
        *b ^= 0x5a;
    }
    fs::write(&entry, &bytes).unwrap();

    let out = env.run("echo", &["after corruption"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "echo (a2a): after corruption\n");
    assert!(
        stderr(&out).contains("is corrupt; recompiling"),
        "{}",
        stderr(&out)
    );
    let rebuilt = fs::read(&entry).unwrap();
    assert_ne!(rebuilt, bytes, "the entry was rewritten");

    let again = env.run("echo", &["clean", "-vv"]);
    assert!(
        stderr(&again).contains("compiled code from the cache"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn a_truncated_cache_entry_is_detected_and_rebuilt() {
    let env = Env::new();
    assert!(env.run("echo", &["warm"]).status.success());
    let entry = cache_entries(&env).pop().unwrap();
    let bytes = fs::read(&entry).unwrap();
    fs::write(&entry, &bytes[..100]).unwrap();
    let out = env.run("echo", &["after truncation"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is corrupt; recompiling"),
        "{}",
        stderr(&out)
    );
}
