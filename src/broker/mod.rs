//! The host tool broker: what a sandbox cannot do itself — run the tests,
//! build the project — a guest asks the host for, by HTTP to
//! `$CAIRN_BROKER_URL` (`http://broker.cairn.internal`), served in-process
//! and bound to the guest's dispatch like the sidecar.
//!
//! `POST /v1/run {"argv": [..], "timeout_secs"?}` runs one command in the
//! dispatch's workspace under the agent's `[tools]` policy ([`confine`]):
//! an allow-list of programs, a mode (what it may write), no network by
//! default, a timeout, an output cap, a scrubbed environment. Each run is
//! a step of the timeline (opened by `tool-call`, its detail the command
//! and then its exit), so what the command changed can be undone.
//!
//! Answers: 200 `{"exit", "signal", "stdout", "stderr", "truncated",
//! "timed_out", "step", "confinement"}`; 403 `{"error"}` when the policy
//! refuses (naming the line that would allow it) or no confinement is
//! available; 400 for a malformed request.
//!
//! `POST /v1/step {"tool", "detail"?}` opens a `tool-call` step before a
//! tool the guest runs itself (a file edit, a read), so what each tool call
//! changed is a step of its own, named `tool: detail` in `cairn log`.
//! Answers 200 `{"step"}` (null when the timeline could not mark it); any
//! guest may call it, with or without `[tools]`, up to 10,000 times a
//! dispatch (429 past that).

pub mod confine;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

use crate::agents::config::Tools;
use crate::invoke::Marks;
use crate::sandbox::LocalHttp;
use crate::timeline::Opener;
use crate::web::{self, Response};

/// The host name guests reach the broker at.
pub const BROKER_HOST: &str = "broker.cairn.internal";

/// The broker as one dispatch sees it.
pub struct Broker {
    pub support: Arc<confine::Support>,
    /// None: the agent has no `[tools]`.
    pub tools: Option<Tools>,
    pub agent: String,
    pub workspace: PathBuf,
    /// Where each run's private temp dir is made.
    pub temp_root: PathBuf,
    pub marks: Arc<Marks>,
    /// Steps this dispatch's guest opened with `/v1/step`.
    pub steps: std::sync::atomic::AtomicU32,
}

fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    web::json_response(status, &json!({ "error": message.into() }))
}

/// A fresh private temp dir for one command, under `root`.
pub fn private_temp(root: &Path, prefix: &str) -> std::io::Result<tempfile::TempDir> {
    std::fs::create_dir_all(root)?;
    tempfile::Builder::new().prefix(prefix).tempdir_in(root)
}

/// Opens the `tool-call` step a command runs in; its id (None when the
/// timeline could not mark it, which is logged).
pub async fn open_step(marks: &Arc<Marks>, detail: String) -> Option<i64> {
    let marks = marks.clone();
    tokio::task::spawn_blocking(move || marks.mark(Opener::ToolCall, &detail))
        .await
        .ok()
        .flatten()
}

/// How a confined command ended, as a step's detail says it.
pub fn ended(out: &confine::Output) -> String {
    match (out.exit, out.signal, out.timed_out) {
        (_, _, true) => "timed out".to_string(),
        (Some(code), _, _) => format!("exit {code}"),
        (None, Some(sig), _) => format!("killed by signal {sig}"),
        (None, None, _) => "ended".to_string(),
    }
}

/// A command as a step's detail: its words, cut to 200 characters.
fn shown(argv: &[String]) -> String {
    cut(&argv.join(" "), DETAIL_MAX)
}

/// `text` cut to `max` characters, with `…` when cut.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() > max {
        format!("{}…", text.chars().take(max).collect::<String>())
    } else {
        text.to_string()
    }
}

/// Longest tool name and detail a step takes from a guest.
const TOOL_NAME_MAX: usize = 64;
const DETAIL_MAX: usize = 200;

/// Steps one dispatch's guest may open with `/v1/step`: far more than a
/// run of tool calls needs, few enough that a guest cannot fill the store.
const GUEST_STEPS_MAX: u32 = 10_000;

impl Broker {
    /// `POST /v1/step`: a step boundary for a tool call made in the guest.
    async fn step(&self, body: Bytes) -> Response {
        let v: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return problem(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")),
        };
        let tool = v["tool"].as_str().unwrap_or("");
        let named = !tool.is_empty()
            && tool.len() <= TOOL_NAME_MAX
            && tool
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
        if !named {
            return problem(
                StatusCode::BAD_REQUEST,
                format!(
                    "`tool` must be a tool's name (letters, digits, `_`, `-`, `.`; at most {TOOL_NAME_MAX})"
                ),
            );
        }
        let detail = match &v["detail"] {
            Value::Null => String::new(),
            Value::String(d) => d.clone(),
            _ => return problem(StatusCode::BAD_REQUEST, "`detail` must be a string"),
        };
        let detail: String = detail
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let shown = if detail.trim().is_empty() {
            tool.to_string()
        } else {
            format!("{tool}: {}", cut(detail.trim(), DETAIL_MAX))
        };
        let opened = self
            .steps
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if opened >= GUEST_STEPS_MAX {
            return problem(
                StatusCode::TOO_MANY_REQUESTS,
                format!("this dispatch opened {GUEST_STEPS_MAX} steps; no more are opened"),
            );
        }
        let step = open_step(&self.marks, shown).await;
        web::json_response(StatusCode::OK, &json!({ "step": step }))
    }

    async fn run(&self, body: Bytes) -> Response {
        let Some(tools) = &self.tools else {
            return problem(
                StatusCode::FORBIDDEN,
                format!(
                    "agent {} runs no commands: add [tools] with allow = [...] to .cairn/agents/{}/agent.toml",
                    self.agent, self.agent
                ),
            );
        };
        let v: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return problem(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")),
        };
        let argv: Option<Vec<String>> = v["argv"].as_array().and_then(|a| {
            a.iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
        });
        let Some(argv) = argv.filter(|a| !a.is_empty()) else {
            return problem(
                StatusCode::BAD_REQUEST,
                "`argv` (a non-empty array of strings) is required",
            );
        };
        let timeout = match &v["timeout_secs"] {
            Value::Null => None,
            t => match t.as_u64() {
                Some(s) if s > 0 => Some(Duration::from_secs(s)),
                _ => {
                    return problem(
                        StatusCode::BAD_REQUEST,
                        "`timeout_secs` must be a positive whole number",
                    );
                }
            },
        };
        let policy = &tools.policy;
        if let Err(refused) = confine::check_allowed(policy, &argv) {
            return problem(
                StatusCode::FORBIDDEN,
                format!("{refused} (.cairn/agents/{}/agent.toml)", self.agent),
            );
        }
        let temp = match private_temp(&self.temp_root, "run-") {
            Ok(t) => t,
            Err(e) => {
                return problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("making the command's temp dir: {e}"),
                );
            }
        };
        let detail = format!("run: {}", shown(&argv));
        let opened = open_step(&self.marks, detail.clone()).await;
        let request = confine::Request {
            argv: argv.clone(),
            workspace: self.workspace.clone(),
            temp: temp.path().to_path_buf(),
            timeout,
        };
        let result = confine::run(&self.support, policy, &request).await;
        let out = match result {
            Ok(out) => out,
            Err(refused) => {
                if let Some(step) = opened {
                    self.marks
                        .describe(step, &format!("{detail} → refused: {refused}"));
                }
                return problem(StatusCode::FORBIDDEN, refused.to_string());
            }
        };
        let ended = ended(&out);
        if let Some(step) = opened {
            let size = out.stdout.len() + out.stderr.len();
            self.marks.describe(
                step,
                &format!(
                    "{detail} → {ended}, {size} bytes of output{}",
                    if out.truncated { " (cut)" } else { "" }
                ),
            );
        }
        web::json_response(
            StatusCode::OK,
            &json!({
                "exit": out.exit,
                "signal": out.signal,
                "stdout": String::from_utf8_lossy(&out.stdout),
                "stderr": String::from_utf8_lossy(&out.stderr),
                "truncated": out.truncated,
                "timed_out": out.timed_out,
                "step": opened,
                "confinement": out.confinement,
            }),
        )
    }
}

impl LocalHttp for Arc<Broker> {
    fn max_body(&self) -> usize {
        64 << 10
    }

    fn too_large(&self, limit: usize) -> Response {
        problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a run request is at most {limit} bytes"),
        )
    }

    fn call(&self, req: http::Request<Bytes>) -> Pin<Box<dyn Future<Output = Response> + Send>> {
        let me = self.clone();
        Box::pin(async move {
            let path = req.uri().path().trim_end_matches('/').to_string();
            match (req.method(), path.as_str()) {
                (&http::Method::POST, "/v1/run") => me.run(req.into_body()).await,
                (&http::Method::POST, "/v1/step") => me.step(req.into_body()).await,
                _ => problem(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no endpoint {} {path} (the broker serves POST /v1/run and /v1/step)",
                        req.method()
                    ),
                ),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data_dir::DataDir;
    use crate::timeline::Timeline;

    fn post(broker: &Arc<Broker>, path: &str, body: &str) -> (u16, Value) {
        let req = http::Request::post(path)
            .body(Bytes::from(body.to_string()))
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let r = broker.call(req).await;
            let status = r.status().as_u16();
            let bytes = http_body_util::BodyExt::collect(r.into_body())
                .await
                .unwrap()
                .to_bytes();
            (
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            )
        })
    }

    #[test]
    fn steps_are_opened_for_named_tools_checked_and_capped() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().join("ws");
        std::fs::create_dir_all(&ws).unwrap();
        let data = DataDir::resolve(Some(&tmp.path().join("data"))).unwrap();
        let mut timeline = Timeline::open(&data, &ws, true).unwrap();
        let active = timeline.begin("t", "echo", "a2a").unwrap();
        let id = active.id.clone();
        let marks = Marks::new(timeline, active);
        let broker = Arc::new(Broker {
            support: Arc::new(confine::Support::detect()),
            tools: None,
            agent: "a".into(),
            workspace: ws.clone(),
            temp_root: tmp.path().join("tmp"),
            marks: marks.clone(),
            steps: Default::default(),
        });

        let (status, v) = post(
            &broker,
            "/v1/step",
            r#"{"tool":"edit_file","detail":"x.txt\nmore"}"#,
        );
        assert_eq!(status, 200, "{v}");
        assert!(v["step"].as_i64().is_some(), "{v}");
        let (status, v) = post(&broker, "/v1/step", r#"{"tool":"read_file"}"#);
        assert_eq!(status, 200, "{v}");

        for (body, why) in [
            ("{", "malformed JSON"),
            (r#"{"detail":"x"}"#, "`tool` must be"),
            (r#"{"tool":"a b"}"#, "`tool` must be"),
            (r#"{"tool":"t","detail":7}"#, "`detail` must be a string"),
        ] {
            let (status, v) = post(&broker, "/v1/step", body);
            assert_eq!(status, 400, "{body}: {v}");
            assert!(v["error"].as_str().unwrap().contains(why), "{body}: {v}");
        }

        // The steps are the dispatch's, named by tool and detail (control
        // characters made spaces).
        let (timeline, _) = marks.take().unwrap();
        let steps = timeline.store().steps(&id).unwrap();
        let named: Vec<(&str, Option<&str>)> = steps
            .iter()
            .map(|s| (s.opened_by.as_str(), s.detail.as_deref()))
            .collect();
        assert_eq!(
            named,
            [
                ("start", None),
                ("tool-call", Some("edit_file: x.txt more")),
                ("tool-call", Some("read_file")),
            ]
        );

        // Past the cap: refused, no step opened.
        broker
            .steps
            .store(GUEST_STEPS_MAX, std::sync::atomic::Ordering::Relaxed);
        let (status, v) = post(&broker, "/v1/step", r#"{"tool":"read_file"}"#);
        assert_eq!(status, 429, "{v}");
        assert!(v["error"].as_str().unwrap().contains("10000 steps"), "{v}");
    }
}
