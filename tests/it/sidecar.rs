//! The sidecar on its port: a real `cairn sidecar` process, the scripted
//! fake upstream on loopback, a real HTTP client, and the usage rows read
//! back from the store.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Env;
use crate::upstream::{Behavior, Upstream};

pub const KEY_A: &str = "sk-cairn-test-agent-a";
pub const KEY_B: &str = "sk-cairn-test-agent-b";

/// A configuration with an OpenAI-compatible provider `up` and an
/// Anthropic one `anth`, both the fake upstream, and two agents with keys.
pub fn config(up: &Upstream, extra: &str) -> String {
    format!(
        r#"
[server]
backoff_ms = 10
max_backoff_ms = 2000

[providers.up]
kind = "openai"
base_url = "{url}/v1"

[providers.anth]
kind = "anthropic"
base_url = "{url}/v1"
api_key_env = "CAIRN_TEST_ANTHROPIC_KEY"

[models.small]
provider = "up"
model = "fake-small"

[models.claude]
provider = "anth"
model = "claude-fake"

[models.local]
provider = "up"
model = "fake-large"

[agents.a]
key_env = "CAIRN_TEST_KEY_A"

[agents.b]
key_env = "CAIRN_TEST_KEY_B"
{extra}"#,
        url = up.url
    )
}

/// `cairn sidecar` on a free port, stopped when dropped.
pub struct Gateway {
    pub env: Env,
    pub base: String,
    child: Child,
    pub client: reqwest::Client,
    pub rt: tokio::runtime::Runtime,
}

impl Gateway {
    pub fn start(config: &str) -> Gateway {
        let env = Env::new();
        let path = env.data.path().join("sidecar.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = env
            .cairn()
            .args(["sidecar", "--listen", "127.0.0.1:0", "--config"])
            .arg(&path)
            .env("CAIRN_TEST_KEY_A", KEY_A)
            .env("CAIRN_TEST_KEY_B", KEY_B)
            .env("CAIRN_TEST_ANTHROPIC_KEY", "sk-ant-test")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("cairn sidecar listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_string();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Gateway {
            env,
            base,
            child,
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            rt,
        }
    }

    pub fn post(&self, key: Option<&str>, body: impl Into<reqwest::Body>) -> (u16, Value) {
        self.rt.block_on(async {
            let mut req = self
                .client
                .post(format!("{}/chat/completions", self.base))
                .header("content-type", "application/json")
                .body(body);
            if let Some(k) = key {
                req = req.bearer_auth(k);
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

    pub fn chat(&self, body: Value) -> (u16, Value) {
        self.post(Some(KEY_A), body.to_string())
    }

    /// A streamed call: status, headers, and the `data:` payloads in order.
    pub fn stream(&self, body: Value) -> (u16, http::HeaderMap, Vec<String>) {
        self.rt.block_on(async {
            let resp = self
                .client
                .post(format!("{}/chat/completions", self.base))
                .bearer_auth(KEY_A)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let text = resp.text().await.unwrap_or_default();
            let data = text
                .split("\n\n")
                .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
                .map(str::to_string)
                .collect();
            (status, headers, data)
        })
    }

    pub fn get(&self, path: &str, key: Option<&str>) -> (u16, String) {
        self.rt.block_on(async {
            let mut req = self
                .client
                .get(format!("{}{path}", self.base.trim_end_matches("/v1")));
            if let Some(k) = key {
                req = req.bearer_auth(k);
            }
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        })
    }

    /// Usage rows, oldest first, once `n` are in the store.
    pub fn rows(&self, n: usize) -> Vec<Value> {
        usage_rows(self.env.data.path(), n)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The store's usage rows, oldest first, waiting up to 10 s for `n`.
pub fn usage_rows(data: &std::path::Path, n: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let rows = read_rows(data);
        if rows.len() >= n || started.elapsed() > Duration::from_secs(10) {
            assert!(
                rows.len() >= n,
                "wanted {n} usage rows, found {}: {rows:?}",
                rows.len()
            );
            return rows;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_rows(data: &std::path::Path) -> Vec<Value> {
    let Ok(db) = rusqlite::Connection::open(data.join("cairn.db")) else {
        return Vec::new();
    };
    let Ok(mut q) = db.prepare(
        "SELECT agent, dispatch, step, provider, model_requested, model_served, tokens_in, tokens_out, \
         cost_usd, status, estimated, stream, attempts, detail, ttft_ms FROM usage ORDER BY id",
    ) else {
        return Vec::new();
    };
    q.query_map([], |r| {
        Ok(json!({
            "agent": r.get::<_, String>(0)?,
            "dispatch": r.get::<_, Option<String>>(1)?,
            "step": r.get::<_, Option<i64>>(2)?,
            "provider": r.get::<_, Option<String>>(3)?,
            "model_requested": r.get::<_, String>(4)?,
            "model_served": r.get::<_, Option<String>>(5)?,
            "tokens_in": r.get::<_, i64>(6)?,
            "tokens_out": r.get::<_, i64>(7)?,
            "cost_usd": r.get::<_, f64>(8)?,
            "status": r.get::<_, String>(9)?,
            "estimated": r.get::<_, bool>(10)?,
            "stream": r.get::<_, bool>(11)?,
            "attempts": r.get::<_, i64>(12)?,
            "detail": r.get::<_, Option<String>>(13)?,
            "ttft_ms": r.get::<_, Option<f64>>(14)?,
        }))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn hello(model: &str) -> Value {
    json!({ "model": model, "messages": [{ "role": "user", "content": "Say hello." }] })
}

fn error_type(v: &Value) -> (&str, &str) {
    (
        v.pointer("/error/type")
            .and_then(Value::as_str)
            .unwrap_or(""),
        v.pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or(""),
    )
}

#[test]
fn a_plain_call_is_passed_through_and_recorded_exactly() {
    let up = Upstream::start();
    let gw = Gateway::start(&config(
        &up,
        "[prices.fake-small]\ninput = 1.0\noutput = 2.0\n",
    ));
    let (status, body) = gw.chat(hello("small"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from the fake upstream."
    );
    // The upstream got its own model name, not the alias.
    assert_eq!(up.requests()[0].body["model"], "fake-small");
    let row = &gw.rows(1)[0];
    assert_eq!(row["agent"], "a");
    assert_eq!(
        (row["tokens_in"].as_i64(), row["tokens_out"].as_i64()),
        (Some(12), Some(5))
    );
    assert_eq!(row["status"], "ok");
    assert_eq!(row["estimated"], false);
    assert_eq!(
        (
            row["model_requested"].as_str(),
            row["model_served"].as_str()
        ),
        (Some("small"), Some("fake-small"))
    );
    assert!(
        (row["cost_usd"].as_f64().unwrap() - 22e-6).abs() < 1e-12,
        "{row}"
    );

    let (status, models) = gw.get("/v1/models", Some(KEY_B));
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&models).unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["claude", "local", "small"]);
}

#[test]
fn streams_are_relayed_with_exact_usage_and_the_usage_chunk_only_when_asked() {
    let up = Upstream::start();
    let gw = Gateway::start(&config(&up, ""));
    let mut ask = hello("small");
    ask["stream"] = json!(true);
    let (status, headers, data) = gw.stream(ask.clone());
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| !c["choices"].as_array().unwrap().is_empty()),
        "no usage chunk unasked: {data:?}"
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello from the fake upstream.");
    // The sidecar asked for usage anyway, and recorded it exactly.
    assert_eq!(
        up.requests()[0].body["stream_options"]["include_usage"],
        true
    );
    let row = &gw.rows(1)[0];
    assert_eq!(
        (
            row["tokens_in"].as_i64(),
            row["tokens_out"].as_i64(),
            row["estimated"].as_bool()
        ),
        (Some(12), Some(5), Some(false))
    );
    assert!(row["ttft_ms"].as_f64().is_some());

    ask["stream_options"] = json!({ "include_usage": true });
    let (_, _, data) = gw.stream(ask);
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 5);
}

#[test]
fn streamed_tool_calls_keep_their_indexes_and_fragments() {
    let up = Upstream::start();
    let gw = Gateway::start(&config(&up, ""));
    let args = r#"{"path":"src/lib.rs","line":42}"#;
    up.script([Behavior::tool_call("read_file", args)]);
    let mut ask = hello("small");
    ask["stream"] = json!(true);
    ask["tools"] = json!([{ "type": "function", "function": { "name": "read_file", "parameters": { "type": "object" } } }]);
    let (status, _, data) = gw.stream(ask);
    assert_eq!(status, 200);
    let deltas: Vec<Value> = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array().cloned())
        .flatten()
        .collect();
    assert!(
        deltas.len() > 2,
        "arguments arrive in fragments: {deltas:?}"
    );
    assert!(deltas.iter().all(|d| d["index"] == 0));
    let joined: String = deltas
        .iter()
        .filter_map(|d| d["function"]["arguments"].as_str())
        .collect();
    assert_eq!(joined, args);
    assert_eq!(
        up.requests()[0].body["tools"][0]["function"]["name"],
        "read_file"
    );
}

#[test]
fn anthropic_is_translated_both_ways_streaming_included() {
    let up = Upstream::start();
    let gw = Gateway::start(&config(&up, ""));
    let mut ask = hello("claude");
    ask["messages"] = json!([
        { "role": "system", "content": "Be brief." },
        { "role": "user", "content": "Say hello." }
    ]);
    let (status, body) = gw.chat(ask.clone());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from the fake upstream."
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 12);
    let sent = &up.requests()[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.body["system"], "Be brief.");
    assert_eq!(sent.body["model"], "claude-fake");
    assert_eq!(sent.header("x-api-key"), Some("sk-ant-test"));

    up.script([Behavior::tool_call("grep", r#"{"pattern":"fn main"}"#)]);
    ask["stream"] = json!(true);
    let (status, _, data) = gw.stream(ask);
    assert_eq!(status, 200);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data
        .iter()
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    let args: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, r#"{"pattern":"fn main"}"#);
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls")
    );
    let rows = gw.rows(2);
    assert_eq!(
        (
            rows[1]["tokens_in"].as_i64(),
            rows[1]["estimated"].as_bool()
        ),
        (Some(12), Some(false))
    );
}

#[test]
fn bad_requests_get_openai_shaped_errors() {
    let up = Upstream::start();
    let gw =
        Gateway::start(&config(&up, "").replace("[server]\n", "[server]\nmax_body_bytes = 2048\n"));
    let cases: Vec<(String, u16, &str, &str)> = vec![
        ("{\"model\": \"small\", \"messages\": [".into(), 400, "invalid_request_error", "not valid JSON"),
        (hello("gpt-nonexistent").to_string(), 404, "invalid_request_error", "`gpt-nonexistent` does not exist"),
        (json!({ "model": "small" }).to_string(), 400, "invalid_request_error", "`messages`"),
        (json!({ "model": "small", "messages": [] }).to_string(), 400, "invalid_request_error", "must not be empty"),
        (json!({ "messages": [{ "role": "user", "content": "x" }] }).to_string(), 400, "invalid_request_error", "`model`"),
        (json!({ "model": "small", "messages": [{ "role": "user", "content": "x".repeat(4096) }] }).to_string(), 413, "invalid_request_error", "larger than the limit of 2048 bytes"),
    ];
    for (body, want_status, want_type, want_text) in cases {
        let (status, v) = gw.post(Some(KEY_A), body);
        let (kind, message) = error_type(&v);
        assert_eq!((status, kind), (want_status, want_type), "{v}");
        assert!(message.contains(want_text), "{message}");
    }
    assert_eq!(up.hits(), 0, "nothing bad reached the upstream");

    for key in [None, Some("sk-someone-else")] {
        let (status, v) = gw.post(key, hello("small").to_string());
        assert_eq!(status, 401, "{v}");
        assert_eq!(v["error"]["code"], "invalid_api_key");
    }
    let (status, _) = gw.get("/v1/models", None);
    assert_eq!(status, 401);
}

#[test]
fn upstream_garbage_and_early_deaths_are_errors_and_still_recorded() {
    let up = Upstream::start();
    let gw = Gateway::start(&config(&up, ""));
    up.script([Behavior::Garbage]);
    let (status, v) = gw.chat(hello("small"));
    assert_eq!(status, 502, "{v}");
    assert!(error_type(&v).1.contains("invalid answer"), "{v}");

    // Dies after two chunks: the client already has bytes, so no retry; it
    // gets an error event, and the call is still recorded.
    up.script([Behavior::DieMidStream { after_chunks: 2 }]);
    let mut ask = hello("small");
    ask["stream"] = json!(true);
    let (status, _, data) = gw.stream(ask);
    assert_eq!(status, 200);
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "stream_interrupted", "{data:?}");
    assert!(!data.iter().any(|d| d == "[DONE]"));
    let rows = gw.rows(2);
    assert_eq!(rows[0]["status"], "upstream_error");
    assert_eq!(rows[1]["status"], "upstream_died");
    assert_eq!(rows[1]["estimated"], true);
    assert!(rows[1]["tokens_in"].as_i64().unwrap() > 0);
    assert_eq!(up.hits(), 2);
}

#[test]
fn a_client_leaving_mid_stream_cancels_upstream_and_is_recorded() {
    let up = Upstream::start();
    let gw = Gateway::start(&config(&up, ""));
    up.script([
        Behavior::reply("one two three four five six seven eight nine ten")
            .with_chunk_delay(Duration::from_millis(300)),
    ]);
    let mut ask = hello("small");
    ask["stream"] = json!(true);
    gw.rt.block_on(async {
        let mut resp = gw
            .client
            .post(format!("{}/chat/completions", gw.base))
            .bearer_auth(KEY_A)
            .json(&ask)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let first = resp.chunk().await.unwrap().unwrap();
        assert!(first.starts_with(b"data: "));
        // Dropping the response closes the connection.
    });
    assert!(
        up.wait_for_disconnects(1, Duration::from_secs(10)),
        "the upstream call was not cancelled"
    );
    let row = &gw.rows(1)[0];
    assert_eq!(row["status"], "client_closed", "{row}");

    // A stalled non-streamed call is cancelled the same way.
    up.script([Behavior::Stall]);
    gw.rt.block_on(async {
        let call = gw
            .client
            .post(format!("{}/chat/completions", gw.base))
            .bearer_auth(KEY_A)
            .json(&hello("small"))
            .send();
        assert!(
            tokio::time::timeout(Duration::from_millis(500), call)
                .await
                .is_err()
        );
    });
    assert!(
        up.wait_for_disconnects(2, Duration::from_secs(10)),
        "the stalled call was not cancelled"
    );
    assert_eq!(gw.rows(2)[1]["status"], "client_closed");
}

#[test]
fn retries_honour_retry_after_and_fall_back_in_order() {
    let up = Upstream::start();
    let gw = Gateway::start(&config(&up, "").replace(
        "[models.small]\nprovider = \"up\"\nmodel = \"fake-small\"\n",
        "[models.small]\nprovider = \"up\"\nmodel = \"fake-small\"\nfallbacks = [\"local\"]\n",
    ));
    up.script([
        Behavior::status(503),
        Behavior::Status {
            code: 429,
            retry_after: Some(1),
        },
        Behavior::reply("third time"),
    ]);
    let started = Instant::now();
    let (status, v) = gw.chat(hello("small"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "third time");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
    assert_eq!(gw.rows(1)[0]["attempts"], 3);

    // The default is two retries: three failures move on to the fallback.
    up.script([
        Behavior::status(500),
        Behavior::status(502),
        Behavior::status(500),
        Behavior::reply("from the fallback"),
    ]);
    let (status, v) = gw.chat(hello("small"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "from the fallback");
    let models: Vec<String> = up
        .requests()
        .iter()
        .skip(3)
        .map(|r| r.body["model"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        models,
        ["fake-small", "fake-small", "fake-small", "fake-large"]
    );

    // The caller's own mistake is not retried.
    let before = up.hits();
    up.script([Behavior::status(400)]);
    let (status, v) = gw.chat(hello("small"));
    assert_eq!(status, 400, "{v}");
    assert_eq!(up.hits(), before + 1);

    // A stream that dies before its first event reached the client is retried.
    up.script([Behavior::DieMidStream { after_chunks: 0 }]);
    let mut ask = hello("small");
    ask["stream"] = json!(true);
    let (status, _, data) = gw.stream(ask);
    assert_eq!(status, 200);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));

    let (_, metrics) = gw.get("/metrics", None);
    assert!(
        metrics.contains("cairn_sidecar_retries_total{provider=\"up\"}"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("cairn_sidecar_upstream_errors_total{provider=\"up\",kind=\"status_5xx\"} 4"),
        "{metrics}"
    );
}

#[test]
fn a_failure_after_a_billable_time_is_counted_not_retried() {
    let up = Upstream::start();
    let gw = Gateway::start(&config(&up, "").replace(
        "[server]\n",
        "[server]\nbilled_after_secs = 0.2\nfirst_byte_timeout_secs = 0.5\n",
    ));
    up.script([Behavior::Stall, Behavior::reply("must not be asked")]);
    let (status, v) = gw.chat(hello("small"));
    assert_eq!(status, 504, "{v}");
    assert_eq!(up.hits(), 1, "not retried");
    let row = &gw.rows(1)[0];
    assert_eq!(row["status"], "billed_failure");
    assert_eq!(row["estimated"], true);
    assert!(row["tokens_in"].as_i64().unwrap() > 0, "{row}");
}

#[test]
fn budgets_stop_degrade_or_alert() {
    let up = Upstream::start();
    let gw = Gateway::start(&config(
        &up,
        "[budgets.agents.a]\ntokens_per_day = 25\n\
         [budgets.agents.b]\ntokens_per_day = 25\non_exceeded = \"degrade\"\ndegrade_to = \"local\"\n\
         [budgets.global]\ntokens_per_month = 40\non_exceeded = \"alert\"\n",
    ));
    let ask = |max: u64| json!({ "model": "small", "max_tokens": max, "messages": [{ "role": "user", "content": "hi" }] });
    // 12 + 5 tokens per call; each reserves 2 in (estimated) + 10 out.
    let (status, _) = gw.post(Some(KEY_A), ask(10).to_string());
    assert_eq!(status, 200);
    let (status, v) = gw.post(Some(KEY_A), ask(10).to_string());
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["error"]["type"], "budget_exceeded");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("agent a tokens_per_day: 17 tokens spent + 0 tokens in flight"),
        "{message}"
    );
    assert!(
        message.ends_with("+ 12 tokens asked > 25 tokens"),
        "{message}"
    );

    // b degrades to the local model, and says so.
    let (status, _) = gw.post(Some(KEY_B), ask(10).to_string());
    assert_eq!(status, 200);
    let served = gw.rt.block_on(async {
        let r = gw
            .client
            .post(format!("{}/chat/completions", gw.base))
            .bearer_auth(KEY_B)
            .json(&ask(10))
            .send()
            .await
            .unwrap();
        let h = r.headers().clone();
        let v: Value = r.json().await.unwrap();
        (h, v)
    });
    assert_eq!(served.0["x-cairn-model"], "local");
    assert!(
        served.0["x-cairn-degraded"]
            .to_str()
            .unwrap()
            .contains("agent b tokens_per_day")
    );
    assert_eq!(served.1["model"], "fake-large");
    let rows = gw.rows(4);
    assert_eq!(rows[1]["status"], "budget_exceeded");
    assert_eq!(rows[3]["model_served"], "fake-large");

    // The global month (40) is past, but it only alerts.
    let (_, metrics) = gw.get("/metrics", None);
    assert!(
        metrics.contains(
            "cairn_sidecar_budget_exceeded_total{scope=\"global\",limit=\"tokens_per_month\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "cairn_sidecar_budget_remaining{scope=\"agent a\",limit=\"tokens_per_day\"} 8"
        ),
        "{metrics}"
    );
}

#[test]
fn concurrent_streams_cannot_overspend_a_small_budget() {
    let up = Upstream::start();
    // Each call reserves what it asks for (max_tokens 20) plus its prompt
    // estimate; the upstream answers slowly so all 100 are in flight at once.
    let gw = Gateway::start(&config(&up, "[budgets.global]\ntokens_per_day = 200\n"));
    up.set_default(
        Behavior::reply("a b c d e")
            .with_tokens(12, 5)
            .with_chunk_delay(Duration::from_millis(200)),
    );
    let ask = json!({ "model": "small", "stream": true, "max_tokens": 20, "messages": [{ "role": "user", "content": "hi" }] });
    let results: Vec<u16> = gw.rt.block_on(async {
        let calls = (0..100).map(|_| {
            let req = gw
                .client
                .post(format!("{}/chat/completions", gw.base))
                .bearer_auth(KEY_A)
                .json(&ask);
            async move {
                let r = req.send().await.unwrap();
                let s = r.status().as_u16();
                let _ = r.text().await;
                s
            }
        });
        futures_util::future::join_all(calls).await
    });
    let ok = results.iter().filter(|s| **s == 200).count();
    let refused = results.iter().filter(|s| **s == 429).count();
    assert_eq!(ok + refused, 100, "{results:?}");
    // Each call reserves 22 tokens (2 in, estimated, and its max_tokens of
    // 20) and spends 17: 9 reservations fit at once, and a late call may
    // use what settled calls left. Unreserved, all 100 would pass.
    assert!(
        ok <= 200 / 17,
        "{ok} calls admitted against a budget of 200 tokens"
    );
    assert!(ok >= 1);
    let rows = gw.rows(100);
    let spent: i64 = rows
        .iter()
        .map(|r| r["tokens_in"].as_i64().unwrap() + r["tokens_out"].as_i64().unwrap())
        .sum();
    assert!(spent <= 200, "spent {spent} tokens of 200");
}

#[test]
fn bad_budget_configs_are_refused_at_load_with_file_and_field() {
    let up = Upstream::start();
    let env = Env::new();
    for (extra, field, why) in [
        (
            "[budgets.agents.a]\nusd_per_day = -5\n",
            "budgets.agents.a.usd_per_day",
            "must be a number ≥ 0, got -5",
        ),
        (
            "[budgets.global]\nusd_per_month = \"lots\"\n",
            "budgets.global.usd_per_month",
            "must be a number",
        ),
    ] {
        let path = env.data.path().join("bad.toml");
        std::fs::write(&path, config(&up, extra)).unwrap();
        let out = env
            .cairn()
            .args(["sidecar", "--listen", "127.0.0.1:0", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let file = path.display().to_string();
        crate::assert_one_line_error(&out, 2, &[&file, field, why]);
    }
}

/// The official `openai` Python client against the sidecar: a plain call, a
/// streamed one and a tool call (`tests/openai_client.py`).
#[test]
fn the_official_openai_python_client_works() {
    let up = Upstream::start();
    let gw = Gateway::start(&config(&up, ""));
    up.script([
        Behavior::reply("plain answer"),
        Behavior::reply("streamed answer"),
        Behavior::tool_call("get_weather", r#"{"city":"Oslo"}"#),
    ]);
    let out = Command::new("python3")
        .arg(crate::repo().join("tests/openai_client.py"))
        .env("OPENAI_BASE_URL", &gw.base)
        .env("OPENAI_API_KEY", KEY_A)
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openai client failed (tests/deps.sh installs it):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "plain: plain answer",
            "stream: streamed answer",
            "tool: get_weather {\"city\":\"Oslo\"}"
        ]
    );
}

/// `cairn run` of the `ask` guest with a sidecar configuration.
fn run_ask(up: &Upstream, extra: &str, args: &[&str]) -> (Env, std::process::Output) {
    let env = Env::new();
    let path = env.data.path().join("sidecar.toml");
    std::fs::write(&path, config(up, extra)).unwrap();
    let out = env
        .cairn()
        .arg("run")
        .arg(crate::component::rust_guest("ask"))
        .arg("--workspace")
        .arg(env.workspace.path())
        .arg("--sidecar")
        .arg(&path)
        .args(args)
        .output()
        .unwrap();
    (env, out)
}

#[test]
fn a_guest_reaches_the_sidecar_in_process_and_each_call_is_a_step() {
    let up = Upstream::start();
    up.script([Behavior::reply("first"), Behavior::reply("second")]);
    let (env, out) = run_ask(
        &up,
        "",
        &["--model", "small", "--json", "REPEAT 2 Say hello."],
    );
    assert!(out.status.success(), "{}", crate::stderr(&out));
    let v: Value = serde_json::from_str(&crate::stdout(&out)).unwrap();
    assert_eq!(v["reply"]["text"], "second");
    let dispatch = v["dispatch"]["id"].as_str().unwrap();

    // Both calls reached the upstream, with the sidecar's key handling,
    // not anything the guest sent.
    let sent = up.requests();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].body["model"], "fake-small");
    assert_eq!(sent[0].header("authorization"), None);

    // Each call is recorded against the dispatch and its own step.
    let rows = usage_rows(env.data.path(), 2);
    assert!(
        rows.iter()
            .all(|r| r["agent"] == "cli" && r["dispatch"] == dispatch),
        "{rows:?}"
    );
    assert_ne!(rows[0]["step"], rows[1]["step"]);
    let log = env
        .cairn()
        .args(["log", "--dispatch", dispatch])
        .output()
        .unwrap();
    let log = crate::stdout(&log);
    assert_eq!(log.matches("model-call").count(), 2, "{log}");
    assert!(log.contains("model small"), "{log}");
}

#[test]
fn a_guest_streams_through_the_sidecar() {
    let up = Upstream::start();
    let (_env, out) = run_ask(&up, "", &["--model", "claude", "STREAM Say hello."]);
    assert!(out.status.success(), "{}", crate::stderr(&out));
    assert_eq!(crate::stdout(&out).trim(), "Hello from the fake upstream.");
    assert_eq!(up.requests()[0].path, "/v1/messages");
}

#[test]
fn a_guest_is_denied_other_hosts_unless_its_agent_allows_them() {
    let up = Upstream::start();
    let url = format!("{}/v1/models", up.url);
    let port = up.url.rsplit(':').next().unwrap().to_string();

    let (env, out) = run_ask(&up, "", &["--json", &format!("GET {url}")]);
    assert_eq!(out.status.code(), Some(5), "{}", crate::stderr(&out));
    let v: Value = serde_json::from_str(&crate::stdout(&out)).unwrap();
    let reply = v["reply"]["text"].as_str().unwrap();
    let config = env.data.path().join("sidecar.toml").display().to_string();
    assert!(
        reply.contains(&format!(
            "HTTP request denied: 127.0.0.1:{port} is not an allowed host; allow it with \\\"127.0.0.1\\\" in allow_hosts of [agents.cli] in {config}"
        )),
        "{reply}"
    );
    assert_eq!(
        up.hits() + up.requests().len(),
        0,
        "nothing reached the host"
    );

    let allowed = format!("[agents.cli]\nallow_hosts = [\"127.0.0.1:{port}\"]\n");
    let (_env, out) = run_ask(&up, &allowed, &[&format!("GET {url}")]);
    assert!(out.status.success(), "{}", crate::stderr(&out));
    assert!(
        crate::stdout(&out).starts_with("200 "),
        "{}",
        crate::stdout(&out)
    );

    // Without a sidecar there is no model and no outside host.
    let env = Env::new();
    let out = env
        .cairn()
        .arg("run")
        .arg(crate::component::rust_guest("ask"))
        .arg("--json")
        .arg(format!("GET {url}"))
        .env_remove("CAIRN_SIDECAR_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert!(
        crate::stdout(&out).contains("cairn run --sidecar FILE"),
        "{}",
        crate::stdout(&out)
    );
}
