//! The coder guest in a real daemon, its model a scripted fake upstream
//! replaying a plausible tool-calling conversation: it reads the failing
//! crate, edits it, runs `cargo test` through the tool broker (confined),
//! and finishes; the crate's tests pass afterwards and `cairn log` shows
//! every step. A variant runs `rm -rf src` through the broker and then
//! fails: everything is restored.

use std::path::Path;
use std::process::Command;

use crate::daemon::{agent, commit, repo, send_v1, start, try_start_with};
use crate::upstream::{Behavior, Upstream};

/// Copies `examples/fix-me` into the repository and commits it.
fn with_failing_crate(env: &crate::Env) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fix-me");
    for file in ["Cargo.toml", ".gitignore", "src/lib.rs"] {
        let to = env.ws(file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(src.join(file), to).unwrap();
    }
    commit(env.workspace.path(), "a crate with a bug");
}

fn coder_agent(env: &crate::Env, up: &Upstream, allow: &str) {
    coder_agent_with(env, up, allow, "");
}

fn coder_agent_with(env: &crate::Env, up: &Upstream, allow: &str, tools: &str) {
    std::fs::write(
        env.ws(".cairn/sidecar.toml"),
        crate::sidecar::config(up, ""),
    )
    .unwrap();
    // The coder bundled in the binary.
    agent(
        env,
        "coder",
        &format!(
            "[guests.main]\nimage = \"coder\"\nmodel = \"small\"\ntimeout_secs = 600\n\n[tools]\nallow = [{allow}]\ntimeout_secs = 300\n{tools}"
        ),
    );
}

/// The model's call editing `src/lib.rs`: `from` becomes `to`.
fn edit(from: &str, to: &str) -> Behavior {
    Behavior::tool_call(
        "edit_file",
        &format!(r#"{{"path":"src/lib.rs","search":"    {from}","replace":"    {to}"}}"#),
    )
}

/// The model's call finishing with `summary`.
fn finish(summary: &str) -> Behavior {
    Behavior::tool_call(
        "finish",
        &serde_json::json!({ "summary": summary }).to_string(),
    )
}

/// A plausible conversation fixing `examples/fix-me`: read the source,
/// edit it, run `cargo test` through the broker, finish with `summary`.
fn fixes_the_crate(summary: &str) -> Vec<Behavior> {
    vec![
        Behavior::tool_call("read_file", r#"{"path":"src/lib.rs"}"#),
        edit("a - b", "a + b"),
        Behavior::tool_call("run", r#"{"argv":["cargo","test","--offline"]}"#),
        finish(summary),
    ]
}

fn cargo_test(dir: &Path) -> std::process::Output {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["test", "--offline", "--quiet"])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .output()
        .unwrap()
}

#[test]
fn the_coder_fixes_a_failing_test_through_the_broker_and_every_step_is_logged() {
    let env = repo();
    with_failing_crate(&env);
    assert!(
        !cargo_test(env.workspace.path()).status.success(),
        "the example must fail first"
    );
    let up = Upstream::start();
    up.script(fixes_the_crate(
        "add subtracted; it adds now and cargo test passes.",
    ));
    coder_agent(&env, &up, "\"cargo\"");
    let d = start(&env, &[]);
    d.wait_ready();
    let v = d.rpc("coder", &send_v1("The tests fail. Fix the bug.", true));
    let task = &v["result"]["task"];
    assert_eq!(task["status"]["state"], "TASK_STATE_COMPLETED", "{v}");
    assert!(
        crate::daemon::artifact_text(task).contains("cargo test passes"),
        "{v}"
    );
    // The model saw the command's result: the tests passed in the sandbox.
    let sent = up.requests();
    let last = serde_json::to_string(&sent.last().unwrap().body).unwrap();
    assert!(last.contains("test result: ok"), "{last}");
    // And they pass now.
    let out = cargo_test(env.workspace.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every step, the run with its command and exit.
    let id = task["id"].as_str().unwrap();
    let log = env
        .cairn()
        .args(["log", "--dispatch", id])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&log.stdout).into_owned();
    assert_eq!(log.matches("model-call").count(), 4, "{log}");
    assert!(log.contains("run: cargo test --offline → exit 0"), "{log}");
    // Each tool call is a step; the edit's change is in the edit's step.
    let lines: Vec<&str> = log.lines().collect();
    let read = lines
        .iter()
        .position(|l| l.contains("tool-call  0 change(s)  read_file: src/lib.rs"));
    assert!(read.is_some(), "{log}");
    let edit = lines
        .iter()
        .position(|l| l.contains("tool-call  1 change(s)  edit_file: src/lib.rs"))
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(lines[edit + 1].trim(), "M src/lib.rs", "{log}");
    // `cairn diff --dispatch` shows each step with its tool call, and the edit.
    let diff = env
        .cairn()
        .args(["diff", "--dispatch", id])
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "{}",
        String::from_utf8_lossy(&diff.stderr)
    );
    let diff = String::from_utf8_lossy(&diff.stdout).into_owned();
    let at = diff
        .find("tool-call: edit_file: src/lib.rs), 1 change(s)")
        .unwrap_or_else(|| panic!("{diff}"));
    assert!(diff[at..].contains("-    a - b\n+    a + b\n"), "{diff}");
    assert!(
        diff.contains("tool-call: run: cargo test --offline → exit 0"),
        "{diff}"
    );
}

#[test]
fn a_destructive_run_then_a_failure_leaves_the_workspace_as_it_was() {
    let env = repo();
    with_failing_crate(&env);
    let before = std::fs::read_to_string(env.ws("src/lib.rs")).unwrap();
    let up = Upstream::start();
    up.script([
        Behavior::tool_call("run", r#"{"argv":["rm","-rf","src"]}"#),
        Behavior::tool_call("run", r#"{"argv":["curl","http://example.com"]}"#),
    ]);
    // Then the model breaks down: the guest fails.
    up.set_default(Behavior::status(500));
    coder_agent(&env, &up, "\"cargo\", \"rm\"");
    let d = start(&env, &[]);
    d.wait_ready();
    let v = d.rpc("coder", &send_v1("Clean up.", true));
    let task = &v["result"]["task"];
    assert_eq!(task["status"]["state"], "TASK_STATE_FAILED", "{v}");
    // The rm ran (the model was told), curl was refused by the policy with
    // the line that would allow it.
    let sent = up.requests();
    let bodies: Vec<String> = sent
        .iter()
        .map(|r| serde_json::to_string(&r.body).unwrap())
        .collect();
    let all = bodies.join("\n");
    assert!(
        all.contains("curl") && all.contains("is not allowed"),
        "{all}"
    );
    assert!(all.contains("tools.allow"), "{all}");
    // Everything is back.
    assert_eq!(
        std::fs::read_to_string(env.ws("src/lib.rs")).unwrap(),
        before
    );
    let id = task["id"].as_str().unwrap();
    let (_, one) = d.get(&format!("/dispatches/{id}"), Some(&d.observe));
    assert_eq!(one["status"], "rolled-back", "{one}");
    let steps = serde_json::to_string(&one["steps"]).unwrap();
    assert!(steps.contains("run: rm -rf src"), "{steps}");
}

#[test]
fn validation_rolls_a_bad_change_back_or_feeds_the_failure_back_to_retry() {
    // No retry: a change that fails `cargo test` is rolled back.
    let env = repo();
    with_failing_crate(&env);
    let before = std::fs::read_to_string(env.ws("src/lib.rs")).unwrap();
    let up = Upstream::start();
    up.script([edit("a - b", "a * b"), finish("done")]);
    coder_agent_with(
        &env,
        &up,
        "\"cargo\"",
        "validate = [\"cargo test --offline\"]\n",
    );
    let d = start(&env, &[]);
    d.wait_ready();
    let v = d.rpc("coder", &send_v1("Fix the bug.", true));
    let task = &v["result"]["task"];
    assert_eq!(task["status"]["state"], "TASK_STATE_FAILED", "{v}");
    let why = serde_json::to_string(&task["status"]).unwrap();
    assert!(
        why.contains("validation failed: cargo test --offline: exit 101"),
        "{why}"
    );
    assert_eq!(
        std::fs::read_to_string(env.ws("src/lib.rs")).unwrap(),
        before
    );
    drop(d);

    // One retry: the failure goes back to the guest, whose second attempt
    // passes.
    let env = repo();
    with_failing_crate(&env);
    let up = Upstream::start();
    up.script([
        edit("a - b", "a * b"),
        finish("done"),
        edit("a * b", "a + b"),
        finish("done"),
    ]);
    coder_agent_with(
        &env,
        &up,
        "\"cargo\"",
        "validate = [\"cargo test --offline\"]\nretry_on_fail = 1\n",
    );
    let d = start(&env, &[]);
    d.wait_ready();
    let v = d.rpc("coder", &send_v1("Fix the bug.", true));
    let task = &v["result"]["task"];
    assert_eq!(task["status"]["state"], "TASK_STATE_COMPLETED", "{v}");
    let sent = up.requests();
    let retry = serde_json::to_string(&sent[2].body).unwrap();
    assert!(retry.contains("failed validation"), "{retry}");
    assert!(
        retry.contains("assertion"),
        "the failure output reached the guest: {retry}"
    );
    assert!(
        std::fs::read_to_string(env.ws("src/lib.rs"))
            .unwrap()
            .contains("a + b")
    );
    let id = task["id"].as_str().unwrap();
    let log = env
        .cairn()
        .args(["log", "--dispatch", id])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&log.stdout).into_owned();
    assert!(
        log.contains("validate: cargo test --offline → exit 101"),
        "{log}"
    );
    assert!(
        log.contains("validate: cargo test --offline → exit 0"),
        "{log}"
    );
}

/// The guest's own tests (its tools, conversation handling and loop, with a
/// scripted model: unknown tools, malformed arguments, missing files,
/// repeated calls, the turn limit), and those of the guests' shared HTTP
/// client, run natively.
#[test]
fn the_coder_guests_own_tests_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for guest in ["coder", "wasi-post"] {
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["test", "--release", "--manifest-path"])
            .arg(root.join("guests").join(guest).join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", root.join("target/guests-native"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{guest}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("test result: ok"), "{guest}: {stdout}");
    }
}

/// `cairn init` in a repository with a model in the environment gives a
/// coder agent (the guest bundled in the binary) that works by A2A and by
/// its trigger.
#[test]
fn init_with_an_api_key_gives_a_coder_reachable_by_a2a_and_by_trigger() {
    let env = repo();
    with_failing_crate(&env);
    let up = Upstream::start();
    let base = format!("{}/v1", up.url);
    let key = [
        ("OPENAI_API_KEY", "sk-test-coder"),
        ("OPENAI_BASE_URL", base.as_str()),
    ];
    let init = env
        .cairn()
        .envs(key)
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("OLLAMA_HOST")
        .args(["init", "--model", "fake-small"])
        .arg(env.workspace.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&init.stdout).into_owned();
    assert!(
        init.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&init.stderr)
    );
    assert!(
        said.contains("created .cairn/agents/coder/agent.toml"),
        "{said}"
    );
    assert!(
        said.contains("the coder agent uses the model `smart`: fake-small"),
        "{said}"
    );
    let toml = std::fs::read_to_string(env.ws(".cairn/agents/coder/agent.toml")).unwrap();
    assert!(toml.contains("image = \"coder\""), "{toml}");
    assert!(toml.contains("allow = [\"cargo\", \"git\"]"), "{toml}");

    up.script(fixes_the_crate("add adds now; cargo test passes."));
    let d = try_start_with(&env, &[], &key)
        .unwrap_or_else(|out| panic!("cairn up: {}", String::from_utf8_lossy(&out.stderr)));
    d.wait_ready();

    // By A2A.
    let v = d.rpc("coder", &send_v1("The tests fail. Fix the bug.", true));
    let task = &v["result"]["task"];
    assert_eq!(task["status"]["state"], "TASK_STATE_COMPLETED", "{v}");
    assert!(
        crate::daemon::artifact_text(task).contains("cargo test passes"),
        "{v}"
    );
    assert!(cargo_test(env.workspace.path()).status.success());
    // The sidecar sent the key from the environment; the guest never had it.
    let sent = up.requests();
    assert!(
        sent[0]
            .headers
            .iter()
            .any(|(k, v)| k == "authorization" && v == "Bearer sk-test-coder"),
        "{:?}",
        sent[0].headers
    );
    let seen = serde_json::to_string(&sent.last().unwrap().body).unwrap();
    assert!(seen.contains("test result: ok"), "{seen}");
    assert!(!seen.contains("sk-test-coder"), "{seen}");

    // By its trigger, with the invoke token.
    up.script([
        Behavior::tool_call(
            "write_file",
            r#"{"path":"NOTES.md","content":"add adds.\n"}"#,
        ),
        finish("wrote NOTES.md"),
    ]);
    let (status, _, v) = d.post(
        "/triggers/coder",
        Some(&d.invoke),
        "Write a note saying what add does.",
    );
    assert_eq!(status, 202, "{v}");
    let id = v["dispatch"].as_str().unwrap().to_string();
    let task = d.wait_task("coder", &id);
    assert_eq!(task["status"]["state"], "TASK_STATE_COMPLETED", "{task}");
    assert_eq!(
        std::fs::read_to_string(env.ws("NOTES.md")).unwrap(),
        "add adds.\n"
    );
    let asked = serde_json::to_string(&up.requests().last().unwrap().body).unwrap();
    assert!(
        asked.contains("Write a note saying what add does."),
        "{asked}"
    );
}

/// With a local OpenAI-compatible server (an Ollama) instead of a key, the
/// coder is keyless, gets a model the server lists, and works the same.
#[test]
fn init_with_an_ollama_gives_a_keyless_coder() {
    let env = repo();
    let up = Upstream::start();
    let init = env
        .cairn()
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env("OLLAMA_HOST", &up.url)
        // No --model: the first model the server lists (`GET /v1/models`).
        .arg("init")
        .arg(env.workspace.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&init.stdout).into_owned();
    assert!(
        init.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&init.stderr)
    );
    assert!(said.contains("`local`: fake-small"), "{said}");
    assert!(said.contains("OLLAMA_HOST is set"), "{said}");
    let sidecar = std::fs::read_to_string(env.ws(".cairn/sidecar.toml")).unwrap();
    assert!(!sidecar.contains("\napi_key_env"), "{sidecar}");

    up.script([
        Behavior::tool_call("list_dir", r#"{"path":"."}"#),
        finish("looked around"),
    ]);
    let d = start(&env, &[]);
    d.wait_ready();
    let v = d.rpc("coder", &send_v1("What is here?", true));
    let task = &v["result"]["task"];
    assert_eq!(task["status"]["state"], "TASK_STATE_COMPLETED", "{v}");
    assert!(
        crate::daemon::artifact_text(task).contains("looked around"),
        "{v}"
    );
    assert!(
        up.requests()
            .iter()
            .all(|r| r.headers.iter().all(|(k, _)| k != "authorization"))
    );

    // A --model-url that is not http(s) is refused, naming it.
    let bare = repo();
    let out = bare
        .cairn()
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env("OLLAMA_HOST", "127.0.0.1:9")
        .args(["init", "--model-url", "ftp://x"])
        .arg(bare.workspace.path())
        .output()
        .unwrap();
    crate::assert_one_line_error(&out, 2, &["--model-url", "only http and https"]);
}
