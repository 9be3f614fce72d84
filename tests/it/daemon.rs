//! The daemon: the real `cairn up` on a temp repository and port 0, spoken
//! to over real HTTP: A2A (1.0 and 0.3), observability, tokens, restarts
//! after `kill -9`, hot reload, worktrees, two daemons in a chain, and the
//! official A2A Python SDK.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Env, wat};

/// A repository with `cairn init` done and git set up, and a data dir.
pub fn repo() -> Env {
    let env = Env::new();
    git(env.workspace.path(), &["init", "-q", "-b", "main"]);
    std::fs::write(env.ws("README.md"), "a repository\n").unwrap();
    let out = env
        .cairn()
        .arg("init")
        .arg(env.workspace.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    commit(env.workspace.path(), "init");
    env
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes an agent directory with this `agent.toml`.
pub fn agent(env: &Env, name: &str, toml: &str) {
    let dir = env.ws(&format!(".cairn/agents/{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("agent.toml"), toml).unwrap();
}

/// An agent whose one guest is `wat/<file>`: `top` goes before the guest
/// table, `guest` inside it.
pub fn wat_agent(env: &Env, name: &str, file: &str, top: &str, guest: &str) {
    let path = wat(file);
    agent(
        env,
        name,
        &format!(
            "{top}[guests.main]\nimage = \"{}\"\n{guest}",
            path.display()
        ),
    );
}

/// Commits everything in the repository.
pub fn commit(dir: &Path, message: &str) {
    git(dir, &["add", "-A"]);
    git(
        dir,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "-m",
            message,
        ],
    );
}

/// `cairn up` on an env's repository, killed when dropped.
pub struct Daemon {
    pub url: String,
    pub metrics: String,
    child: Child,
    pub invoke: String,
    pub observe: String,
    pub admin: String,
    pub rt: tokio::runtime::Runtime,
    pub client: reqwest::Client,
}

pub fn start(env: &Env, extra: &[&str]) -> Daemon {
    try_start(env, extra)
        .unwrap_or_else(|out| panic!("cairn up failed: {}", String::from_utf8_lossy(&out.stderr)))
}

pub fn try_start(env: &Env, extra: &[&str]) -> Result<Daemon, Output> {
    try_start_with(env, extra, &[])
}

/// `cairn up` with these environment variables set.
pub fn try_start_with(env: &Env, extra: &[&str], vars: &[(&str, &str)]) -> Result<Daemon, Output> {
    let mut child = env
        .cairn()
        .envs(vars.iter().copied())
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--repo",
        ])
        .arg(env.workspace.path())
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let Some((_, url)) = line.trim().split_once(" — ") else {
        let out = child.wait_with_output().unwrap();
        return Err(out);
    };
    // Keep reading the banner so the daemon never blocks on a full pipe;
    // stderr goes to the test's.
    std::thread::spawn(move || for _ in stdout.lines() {});
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[daemon] {l}");
        }
    });
    let running: Value = serde_json::from_str(
        &std::fs::read_to_string(env.data.path().join("daemon.json")).unwrap(),
    )
    .unwrap();
    let tokens: Value = std::fs::read_to_string(env.data.path().join("tokens.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let d = Daemon {
        url: url.to_string(),
        metrics: running["metrics_url"].as_str().unwrap().to_string(),
        child,
        invoke: tokens["invoke"].as_str().unwrap_or("").to_string(),
        observe: tokens["observe"].as_str().unwrap_or("").to_string(),
        admin: tokens["admin"].as_str().unwrap_or("").to_string(),
        rt: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
    };
    Ok(d)
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A 1.0 `SendMessage` with one text part.
pub fn send_v1(text: &str, blocking: bool) -> Value {
    json!({
        "jsonrpc": "2.0", "id": 1, "method": "SendMessage",
        "params": {
            "message": { "messageId": uuid(), "role": "ROLE_USER", "parts": [{ "text": text }] },
            "configuration": { "returnImmediately": !blocking }
        }
    })
}

/// A 0.3 `message/send`.
pub fn send_v03(text: &str) -> Value {
    json!({
        "jsonrpc": "2.0", "id": "a", "method": "message/send",
        "params": { "message": { "kind": "message", "messageId": uuid(), "role": "user",
                                 "parts": [{ "kind": "text", "text": text }] } }
    })
}

fn uuid() -> String {
    format!("m-{}", fastrand::u64(..))
}

impl Daemon {
    /// Sends `n` non-blocking messages; their task ids.
    pub fn queue(&self, agent: &str, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                let v = self.rpc(agent, &send_v1(&format!("job {i}"), false));
                v["result"]["task"]["id"].as_str().unwrap().to_string()
            })
            .collect()
    }

    pub fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        self.rt.block_on(async {
            let mut req = self
                .client
                .post(format!("{}{path}", self.url))
                .header("content-type", "application/json")
                .body(body);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let text = resp.text().await.unwrap();
            (
                status,
                headers,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        })
    }

    /// A JSON-RPC call to an agent with the invoke token.
    pub fn rpc(&self, agent: &str, body: &Value) -> Value {
        let (status, _, v) = self.post(
            &format!("/a2a/{agent}"),
            Some(&self.invoke),
            body.to_string(),
        );
        assert_eq!(status, 200, "{v}");
        v
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.rt.block_on(async {
            let mut req = self.client.get(format!("{}{path}", self.url));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        })
    }

    /// Raw SSE `data:` payloads of a streaming call, until the stream ends.
    pub fn sse(&self, agent: &str, body: &Value) -> Vec<Value> {
        self.rt.block_on(async {
            let resp = self
                .client
                .post(format!("{}/a2a/{agent}", self.url))
                .bearer_auth(&self.invoke)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let text = tokio::time::timeout(Duration::from_secs(60), resp.text())
                .await
                .unwrap()
                .unwrap();
            text.lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .map(|d| serde_json::from_str(d).unwrap())
                .collect()
        })
    }

    pub fn wait_ready(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, v) = self.get("/health/start", None);
            if status == 200 {
                return self.get("/health/ready", None).1;
            }
            assert!(Instant::now() < deadline, "never started: {v}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls a task until it is in a terminal state.
    pub fn wait_task(&self, agent: &str, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.rpc(
                agent,
                &json!({"jsonrpc":"2.0","id":2,"method":"GetTask","params":{"id":id}}),
            );
            let state = v["result"]["status"]["state"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if [
                "TASK_STATE_COMPLETED",
                "TASK_STATE_FAILED",
                "TASK_STATE_CANCELED",
            ]
            .contains(&state.as_str())
            {
                return v["result"].clone();
            }
            assert!(Instant::now() < deadline, "task {id} never ended: {v}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill9(mut self) {
        let _ = Command::new("kill")
            .arg("-9")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().unwrap()
    }
}

/// Text of every part of every artifact of a task, joined.
pub fn artifact_text(task: &Value) -> String {
    task["artifacts"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["parts"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["text"].as_str().map(str::to_string))
        .collect::<Vec<_>>()
        .join("")
}

#[test]
fn init_then_up_serves_echo_over_a2a_and_records_everything() {
    let env = repo();
    let d = start(&env, &[]);
    d.wait_ready();

    let v = d.rpc("echo", &send_v1("hello, daemon", true));
    let task = &v["result"]["task"];
    assert_eq!(task["status"]["state"], "TASK_STATE_COMPLETED", "{v}");
    assert!(artifact_text(task).contains("hello, daemon"), "{v}");
    let id = task["id"].as_str().unwrap().to_string();
    let session = task["contextId"].as_str().unwrap().to_string();

    // The dispatch and its steps.
    let (status, list) = d.get("/dispatches", Some(&d.observe));
    assert_eq!(status, 200);
    assert_eq!(list["dispatches"][0]["id"], id.as_str(), "{list}");
    assert_eq!(list["dispatches"][0]["agent"], "echo");
    let (_, one) = d.get(&format!("/dispatches/{id}"), Some(&d.observe));
    assert_eq!(one["state"], "completed", "{one}");
    assert!(!one["steps"].as_array().unwrap().is_empty(), "{one}");

    // The conversation, by session.
    let (_, conv) = d.get(
        &format!("/conversations?session={session}"),
        Some(&d.observe),
    );
    let lines = conv["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 2, "{conv}");
    assert_eq!(lines[0]["role"], "user");
    assert_eq!(lines[0]["text"], "hello, daemon");
    assert_eq!(lines[1]["role"], "agent");

    // A follow-up in the same context continues the session.
    let mut again = send_v1("second", true);
    again["params"]["message"]["contextId"] = json!(session);
    let v = d.rpc("echo", &again);
    assert_eq!(v["result"]["task"]["contextId"], session.as_str());
    assert_eq!(v["result"]["task"]["history"].as_array().unwrap().len(), 2);
    // historyLength keeps only the newest messages: the reply.
    again["params"]["configuration"]["historyLength"] = json!(1);
    let v = d.rpc("echo", &again);
    let history = v["result"]["task"]["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{v}");
    assert_eq!(history[0]["role"], "ROLE_AGENT", "{v}");

    // Metrics on their own listener.
    let text = d.rt.block_on(async {
        d.client
            .get(&d.metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(
        text.contains("cairn_dispatches_total{agent=\"echo\",state=\"completed\"} 3"),
        "{text}"
    );
}

#[test]
fn cards_and_the_0_3_generation_work() {
    let env = repo();
    let d = start(&env, &[]);
    d.wait_ready();
    let (status, card) = d.get("/.well-known/agent-card.json", None);
    assert_eq!(status, 200);
    let iface = &card["supportedInterfaces"][0];
    assert_eq!(
        iface["url"],
        format!("{}/a2a/echo", d.url).as_str(),
        "{card}"
    );
    let (status, old) = d.get("/a2a/echo/.well-known/agent.json", None);
    assert_eq!(status, 200);
    assert_eq!(old["url"], format!("{}/a2a/echo", d.url).as_str(), "{old}");

    let v = d.rpc("echo", &send_v03("from an older agent"));
    let result = &v["result"];
    assert_eq!(result["kind"], "task", "{v}");
    assert_eq!(result["status"]["state"], "completed", "{v}");
    assert!(artifact_text(result).contains("from an older agent"), "{v}");
    let id = result["id"].as_str().unwrap();
    let got = d.rpc(
        "echo",
        &json!({"jsonrpc":"2.0","id":3,"method":"tasks/get","params":{"id":id}}),
    );
    assert_eq!(got["result"]["status"]["state"], "completed", "{got}");
}

#[test]
fn non_blocking_sends_return_a_task_to_poll_and_streams_end_with_the_reply() {
    let env = repo();
    let d = start(&env, &[]);
    d.wait_ready();
    let v = d.rpc("echo", &send_v1("later", false));
    let task = &v["result"]["task"];
    let id = task["id"].as_str().unwrap();
    let done = d.wait_task("echo", id);
    assert!(artifact_text(&done).contains("later"), "{done}");

    let mut body = send_v1("streamed", true);
    body["method"] = json!("SendStreamingMessage");
    let events = d.sse("echo", &body);
    assert!(events.len() >= 2, "{events:?}");
    assert!(events[0]["result"]["task"].is_object(), "{events:?}");
    let last = &events.last().unwrap()["result"]["statusUpdate"];
    assert_eq!(
        last["status"]["state"], "TASK_STATE_COMPLETED",
        "{events:?}"
    );
    let all = serde_json::to_string(&events).unwrap();
    assert!(all.contains("streamed"), "{all}");

    // Subscribing to a finished task gives it and ends.
    let sub = d.sse(
        "echo",
        &json!({"jsonrpc":"2.0","id":9,"method":"SubscribeToTask","params":{"id":id}}),
    );
    assert_eq!(sub.len(), 1, "{sub:?}");
}

#[test]
fn bad_requests_get_json_rpc_errors_and_missing_tokens_401() {
    let env = repo();
    let d = start(&env, &[]);
    d.wait_ready();
    let code = |body: &str| {
        let (status, _, v) = d.post("/a2a/echo", Some(&d.invoke), body.to_string());
        assert_eq!(status, 200, "{v}");
        v["error"]["code"]
            .as_i64()
            .unwrap_or_else(|| panic!("no error: {v}"))
    };
    assert_eq!(code("{not json"), -32700);
    assert_eq!(
        code(r#"{"jsonrpc":"2.0","id":1,"method":"NoSuchMethod","params":{}}"#),
        -32601
    );
    assert_eq!(
        code(r#"{"jsonrpc":"1.0","id":1,"method":"GetTask","params":{"id":"x"}}"#),
        -32600
    );
    assert_eq!(
        code(r#"{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{}}"#),
        -32602
    );
    assert_eq!(
        code(r#"{"jsonrpc":"2.0","id":1,"method":"GetTask","params":{"id":"nope"}}"#),
        -32001
    );
    // Cancel of a finished task.
    let v = d.rpc("echo", &send_v1("done already", true));
    let id = v["result"]["task"]["id"].as_str().unwrap();
    let body = json!({"jsonrpc":"2.0","id":1,"method":"CancelTask","params":{"id":id}}).to_string();
    assert_eq!(code(&body), -32002);

    // An oversized prompt: 413.
    let big = send_v1(&"x".repeat(2 << 20), true).to_string();
    let (status, _, _) = d.post("/a2a/echo", Some(&d.invoke), big);
    assert_eq!(status, 413);

    // Tokens: none, wrong, another scope's.
    let body = send_v1("hi", true).to_string();
    assert_eq!(d.post("/a2a/echo", None, body.clone()).0, 401);
    assert_eq!(
        d.post("/a2a/echo", Some("cairn_inv_wrong"), body.clone()).0,
        401
    );
    assert_eq!(d.post("/a2a/echo", Some(&d.observe), body.clone()).0, 401);
    assert_eq!(d.get("/dispatches", None).0, 401);
    assert_eq!(d.get("/dispatches", Some(&d.invoke)).0, 401);
    assert_eq!(d.get("/conversations", Some(&d.admin)).0, 200);
    assert_eq!(d.post("/admin/reload", Some(&d.observe), "").0, 401);
    assert_eq!(d.get("/health/live", None).0, 200);

    // The token file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(env.data.path().join("tokens.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let shown = env.cairn().args(["token", "invoke"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&shown.stdout).trim(), d.invoke);
}

#[test]
fn a_typo_in_agent_toml_refuses_to_start_naming_file_line_and_field() {
    let env = repo();
    agent(
        &env,
        "typo",
        "[guests.echo]\nimage = \"echo\"\ntimout_secs = 5\n",
    );
    let Err(out) = try_start(&env, &[]) else {
        panic!("started with a typo");
    };
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(".cairn/agents/typo/agent.toml:3"), "{err}");
    assert!(err.contains("timout_secs"), "{err}");
}

#[test]
fn an_unpullable_guest_makes_its_agent_unhealthy_and_the_others_serve() {
    let env = repo();
    agent(
        &env,
        "broken",
        "[guests.main]\nimage = \"127.0.0.1:9/nothing/here:1\"\n",
    );
    let d = start(&env, &[]);
    let ready = d.wait_ready();
    let (status, body) = d.get("/health/ready", None);
    assert_eq!(status, 503, "{ready}");
    assert!(
        body["reasons"][0]
            .as_str()
            .unwrap()
            .contains("agent broken"),
        "{body}"
    );
    let v = d.rpc("echo", &send_v1("still here", true));
    assert_eq!(
        v["result"]["task"]["status"]["state"],
        "TASK_STATE_COMPLETED"
    );
    let (status, _, v) = d.post(
        "/a2a/broken",
        Some(&d.invoke),
        send_v1("x", true).to_string(),
    );
    assert_eq!(status, 503, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unhealthy"),
        "{v}"
    );
}

#[test]
fn queued_dispatches_survive_kill_9_and_run_after_restart() {
    let env = repo();
    wat_agent(&env, "slow", "sleep.wat", "", "");
    let d = start(&env, &[]);
    d.wait_ready();
    let ids = d.queue("slow", 8);
    d.kill9();

    let d = start(&env, &[]);
    d.wait_ready();
    let mut completed = 0;
    for id in &ids {
        let task = d.wait_task("slow", id);
        let state = task["status"]["state"].as_str().unwrap();
        // At most the one running at the kill was interrupted (rolled back).
        if state == "TASK_STATE_COMPLETED" {
            completed += 1;
        } else {
            assert_eq!(state, "TASK_STATE_FAILED", "{task}");
            let why = serde_json::to_string(&task["status"]).unwrap();
            assert!(why.contains("interrupted"), "{why}");
        }
    }
    assert!(
        completed >= ids.len() - 1,
        "only {completed} of {} ran",
        ids.len()
    );
}

#[test]
fn a_rogue_guest_is_rolled_back_and_reported() {
    let env = repo();
    wat_agent(&env, "rogue", "rogue.wat", "", "");
    std::fs::write(env.ws("src.txt"), "precious\n").unwrap();
    let d = start(&env, &[]);
    d.wait_ready();
    let v = d.rpc("rogue", &send_v1("fail", true));
    let task = &v["result"]["task"];
    assert_eq!(task["status"]["state"], "TASK_STATE_FAILED", "{v}");
    let why = serde_json::to_string(&task["status"]).unwrap();
    assert!(why.contains("rolled back"), "{why}");
    assert_eq!(
        std::fs::read_to_string(env.ws("src.txt")).unwrap(),
        "precious\n"
    );
    assert!(env.ws(".cairn/agents/echo/agent.toml").exists());
    assert!(env.ws(".git/HEAD").exists());
    let (_, one) = d.get(
        &format!("/dispatches/{}", task["id"].as_str().unwrap()),
        Some(&d.observe),
    );
    assert_eq!(one["status"], "rolled-back", "{one}");
    // The daemon still serves.
    let v = d.rpc("echo", &send_v1("after", true));
    assert_eq!(
        v["result"]["task"]["status"]["state"],
        "TASK_STATE_COMPLETED"
    );
}

#[test]
fn hot_reload_applies_good_edits_and_keeps_the_last_good_version() {
    let env = repo();
    let d = start(&env, &[]);
    d.wait_ready();
    // A new agent appears.
    agent(&env, "second", "[guests.main]\nimage = \"echo\"\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.get("/a2a/second/.well-known/agent-card.json", None).0 != 200 {
        assert!(Instant::now() < deadline, "the new agent never appeared");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A bad edit: the last good version keeps serving, and ready says why.
    agent(
        &env,
        "second",
        "[guests.main]\nimage = \"echo\"\nbogus = 1\n",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = d.get("/health/ready", None);
        if status == 503 && body.to_string().contains("bogus") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the bad edit was never reported: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let v = d.rpc("second", &send_v1("still good", true));
    assert_eq!(
        v["result"]["task"]["status"]["state"], "TASK_STATE_COMPLETED",
        "{v}"
    );
    // Fixed again, with a budget: ready, and the sidecar holds the budget.
    agent(
        &env,
        "second",
        "[guests.main]\nimage = \"echo\"\n[budget]\ntokens_per_day = 5000\n",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.get("/health/ready", None).0 != 200 {
        assert!(Instant::now() < deadline, "never ready again");
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics = || {
        d.rt.block_on(async {
            let r = d.client.get(&d.metrics).send().await.unwrap();
            r.text().await.unwrap()
        })
    };
    let limit = r#"budget_remaining{scope="agent second",limit="tokens_per_day"} 5000"#;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !metrics().contains(limit) {
        assert!(
            Instant::now() < deadline,
            "the budget never reached the sidecar"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Removed by an edit: gone from the sidecar too.
    agent(&env, "second", "[guests.main]\nimage = \"echo\"\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    while metrics().contains("scope=\"agent second\"") {
        assert!(Instant::now() < deadline, "the budget was never dropped");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_queue_is_bounded_with_a_busy_error_and_retry_after() {
    let env = repo();
    wat_agent(&env, "slow", "sleep.wat", "queue_limit = 2\n", "");
    let d = start(&env, &[]);
    d.wait_ready();
    let mut busy = None;
    for i in 0..8 {
        let (status, headers, v) = d.post(
            "/a2a/slow",
            Some(&d.invoke),
            send_v1(&format!("{i}"), false).to_string(),
        );
        if status == 503 {
            busy = Some((headers, v));
            break;
        }
    }
    let (headers, v) = busy.expect("the queue never filled");
    assert!(headers.get("retry-after").is_some());
    assert!(
        v["error"]["message"].as_str().unwrap().contains("busy"),
        "{v}"
    );
}

#[test]
fn worktree_isolation_leaves_each_result_on_its_own_branch() {
    let env = repo();
    wat_agent(
        &env,
        "builder",
        "writer.wat",
        "isolation = \"worktree\"\n",
        "",
    );
    commit(env.workspace.path(), "agent");
    let d = start(&env, &[]);
    d.wait_ready();
    let v = d.rpc("builder", &send_v1("write out.txt built", true));
    let task = &v["result"]["task"];
    assert_eq!(task["status"]["state"], "TASK_STATE_COMPLETED", "{v}");
    let id = task["id"].as_str().unwrap();
    let branch = format!("cairn/builder/{id}");
    let files = git(
        env.workspace.path(),
        &["ls-tree", "-r", "--name-only", &branch],
    );
    assert!(files.lines().any(|f| f == "out.txt"), "{files}");
    // The commit says what the agent replied, and which dispatch it was.
    let message = git(env.workspace.path(), &["log", "-1", "--format=%B", &branch]);
    assert!(message.starts_with("builder: writer: 1 ops\n"), "{message}");
    assert!(message.contains(&format!("Dispatch: {id}")), "{message}");
    // The repository itself is untouched.
    assert!(!env.ws("out.txt").exists());
}

#[test]
fn two_daemons_chain_a_message_through_a_peer_guest() {
    let back = repo();
    let b = start(&back, &["--insecure-no-auth"]);
    b.wait_ready();
    let front = repo();
    agent(
        &front,
        "relay",
        &format!("[guests.peer]\na2a = \"{}/a2a/echo\"\n", b.url),
    );
    let a = start(&front, &[]);
    a.wait_ready();
    let v = a.rpc("relay", &send_v1("through both", true));
    let task = &v["result"]["task"];
    assert_eq!(task["status"]["state"], "TASK_STATE_COMPLETED", "{v}");
    assert!(artifact_text(task).contains("through both"), "{v}");
    // The back daemon saw it as an A2A dispatch of its own.
    let (_, conv) = b.get("/conversations", None);
    assert!(conv.to_string().contains("through both"), "{conv}");
}

#[test]
fn the_official_a2a_python_sdk_interoperates() {
    let env = repo();
    let d = start(&env, &[]);
    d.wait_ready();
    let python = std::env::var("CAIRN_A2A_PYTHON").unwrap_or_else(|_| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default())
            .join(".cache/cairn-a2a-venv/bin/python3")
            .display()
            .to_string()
    });
    let out = Command::new(&python)
        .arg(crate::repo().join("tests/a2a_sdk.py"))
        .arg(&d.url)
        .arg("/a2a/echo")
        .arg(&d.invoke)
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e} (tests/deps.sh installs the A2A SDK)"));
    assert!(
        out.status.success(),
        "a2a-sdk client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_graceful_stop_finishes_what_runs_and_keeps_what_waits() {
    let env = repo();
    wat_agent(&env, "slow", "sleep.wat", "", "");
    let d = start(&env, &[]);
    d.wait_ready();
    let ids = d.queue("slow", 4);
    let status = d.stop();
    assert!(status.success(), "{status:?}");
    let d = start(&env, &[]);
    d.wait_ready();
    for id in &ids {
        let task = d.wait_task("slow", id);
        assert_eq!(task["status"]["state"], "TASK_STATE_COMPLETED", "{task}");
    }
}

#[test]
fn a_peer_that_is_down_fails_the_dispatch_with_a_clear_error() {
    let env = repo();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    agent(
        &env,
        "relay",
        &format!("[guests.peer]\na2a = \"http://127.0.0.1:{port}/a2a/echo\"\n"),
    );
    let d = start(&env, &[]);
    d.wait_ready();
    let v = d.rpc("relay", &send_v1("nobody home", true));
    let task = &v["result"]["task"];
    assert_eq!(task["status"]["state"], "TASK_STATE_FAILED", "{v}");
    let why = serde_json::to_string(&task["status"]["message"]).unwrap();
    assert!(why.contains(&format!("127.0.0.1:{port}")), "{why}");
}

#[test]
fn status_and_logs_show_the_daemon_from_the_terminal() {
    let env = repo();
    let d = start(&env, &[]);
    d.wait_ready();
    let mut follow = env
        .cairn()
        .args(["logs", "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    // The stream is subscribed once `logs` prints; give it a moment.
    std::thread::sleep(Duration::from_millis(500));
    let v = d.rpc("echo", &send_v1("watched", true));
    let id = v["result"]["task"]["id"].as_str().unwrap().to_string();
    let mut seen = Vec::new();
    for line in lines.map_while(Result::ok) {
        let done = line.contains("dispatch.ended") && line.contains(&id);
        seen.push(line);
        if done {
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let all = seen.join("\n");
    assert!(all.contains("dispatch.started"), "{all}");
    assert!(all.contains("state=completed"), "{all}");

    let out = env.cairn().arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(": ready"), "{text}");
    assert!(text.contains(&id), "{text}");
}

#[test]
fn cancel_stops_queued_and_running_dispatches() {
    let env = repo();
    wat_agent(&env, "busy", "spin.wat", "", "timeout_secs = 60\n");
    let d = start(&env, &[]);
    d.wait_ready();
    let running = d.rpc("busy", &send_v1("spin", false))["result"]["task"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let queued = d.rpc("busy", &send_v1("spin", false))["result"]["task"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let cancel = |id: &str| {
        d.rpc(
            "busy",
            &json!({"jsonrpc":"2.0","id":5,"method":"CancelTask","params":{"id":id}}),
        )
    };
    let v = cancel(&queued);
    assert_eq!(v["result"]["status"]["state"], "TASK_STATE_CANCELED", "{v}");
    // Wait until the first one runs, then cancel it too.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = d.rpc(
            "busy",
            &json!({"jsonrpc":"2.0","id":2,"method":"GetTask","params":{"id":running}}),
        );
        if v["result"]["status"]["state"] == "TASK_STATE_WORKING" {
            break;
        }
        assert!(Instant::now() < deadline, "never started: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let v = cancel(&running);
    assert_eq!(v["result"]["status"]["state"], "TASK_STATE_CANCELED", "{v}");
    let (_, one) = d.get(&format!("/dispatches/{running}"), Some(&d.observe));
    assert_eq!(one["status"], "rolled-back", "{one}");
}

#[test]
fn admin_rollback_waits_for_the_running_dispatch_and_the_cli_goes_through_the_daemon() {
    let env = repo();
    wat_agent(&env, "writer", "writer.wat", "", "timeout_secs = 60\n");
    std::fs::write(env.ws("notes.txt"), "before\n").unwrap();
    let d = start(&env, &[]);
    d.wait_ready();
    let v = d.rpc("writer", &send_v1("write notes.txt after", true));
    let task = &v["result"]["task"];
    assert_eq!(task["status"]["state"], "TASK_STATE_COMPLETED", "{v}");
    let wrote = task["id"].as_str().unwrap().to_string();
    assert_eq!(
        std::fs::read_to_string(env.ws("notes.txt")).unwrap(),
        "after\n"
    );

    let ask = |target: Value, token: &str| {
        let (status, _, v) = d.post(
            "/admin/rollback",
            Some(token),
            json!({ "target": target }).to_string(),
        );
        (status, v)
    };
    // Only the admin token may; bad targets are refused with the reason.
    assert_eq!(ask(json!(wrote), &d.observe).0, 401);
    assert_eq!(ask(json!(wrote), &d.invoke).0, 401);
    let (status, v) = ask(json!("no-such-dispatch"), &d.admin);
    assert_eq!(status, 404, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("no-such-dispatch"),
        "{v}"
    );
    assert_eq!(ask(json!(999_999), &d.admin).0, 404);
    let (status, _, v) = d.post("/admin/rollback", Some(&d.admin), "{}");
    assert_eq!(status, 400, "{v}");

    // A dispatch holds the repository: the rollback waits for it.
    let waiting = d.rpc("writer", &send_v1("wait", false))["result"]["task"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = d.rpc(
            "writer",
            &json!({"jsonrpc":"2.0","id":2,"method":"GetTask","params":{"id":waiting}}),
        );
        if v["result"]["status"]["state"] == "TASK_STATE_WORKING" {
            break;
        }
        assert!(Instant::now() < deadline, "never started: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, v) = std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        let (d, ask, wrote) = (&d, &ask, &wrote);
        s.spawn(move || tx.send(ask(json!(wrote), &d.admin)).unwrap());
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            rx.try_recv().is_err(),
            "the rollback did not wait for the running dispatch"
        );
        assert_eq!(
            std::fs::read_to_string(env.ws("notes.txt")).unwrap(),
            "after\n"
        );
        let v = d.rpc(
            "writer",
            &json!({"jsonrpc":"2.0","id":5,"method":"CancelTask","params":{"id":waiting}}),
        );
        assert_eq!(v["result"]["status"]["state"], "TASK_STATE_CANCELED", "{v}");
        rx.recv_timeout(Duration::from_secs(60)).unwrap()
    });
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["paths"], 1, "{v}");
    assert_eq!(
        std::fs::read_to_string(env.ws("notes.txt")).unwrap(),
        "before\n"
    );
    let step = v["step"].as_i64().unwrap();

    // Again: the file changed since (by the rollback), so it is a conflict.
    let (status, v) = ask(json!(wrote), &d.admin);
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["conflict"]["count"], 1, "{v}");

    // `cairn rollback` while the daemon holds the workspace asks the
    // daemon, with the same exit codes.
    let out = env.cairn().args(["rollback", &wrote]).output().unwrap();
    assert_eq!(out.status.code(), Some(9), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("notes.txt"),
        "{out:?}"
    );
    let out = env
        .cairn()
        .args(["rollback", &step.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("by the daemon"),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read_to_string(env.ws("notes.txt")).unwrap(),
        "after\n"
    );
    // The daemon still serves.
    let v = d.rpc("echo", &send_v1("after", true));
    assert_eq!(
        v["result"]["task"]["status"]["state"],
        "TASK_STATE_COMPLETED"
    );
}
