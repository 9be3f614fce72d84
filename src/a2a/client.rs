//! Dispatching a prompt to a peer A2A agent, the way cairn runs a local
//! guest: one text in, one text out.
//!
//! Retries must never run a prompt twice (a peer may bill each run), so a
//! request is retried only when it certainly never reached the peer's
//! handler: the connection could not be made, or the peer answered 503 /
//! 429 (busy, nothing started). Anything that fails after the request went
//! out is reported as [`PeerError::Uncertain`] and left to the caller.
//!
//! Protocol choice: a blocking 1.0 `SendMessage` first (with
//! `A2A-Version: 1.0`); a peer answering method-not-found,
//! version-not-supported or invalid-request (older 0.3 servers validate the
//! method name that way) certainly ran nothing, so the same message is then
//! sent as 0.3 `message/send`. A task that comes back unfinished is polled
//! with `GetTask` / `tasks/get` until it ends, waits on the user, or
//! [`Peer::timeout`] runs out.

use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::wire::{CARD_PATH, Method, Role, State, VERSION_HEADER, Version, codes, one_line};

/// Attempts for a request that never reached the peer (connect failure or
/// 503/429), first one included.
const ATTEMPTS: u32 = 3;
/// First backoff delay; doubled per attempt, plus up to 50% jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest `Retry-After` honoured; a peer asking for more is treated as
/// refusing.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(5);
/// First and longest delay between two polls of an unfinished task.
const POLL_FIRST: Duration = Duration::from_millis(200);
const POLL_MAX: Duration = Duration::from_secs(2);

/// A peer agent, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The JSON-RPC endpoint, or a base URL whose
    /// `/.well-known/agent-card.json` names it (a URL ending in `.json` is
    /// read as the card itself).
    pub url: String,
    /// Bearer token sent as `Authorization: Bearer …`.
    pub token: Option<String>,
    /// Budget for the whole exchange: connecting, running and polling. Give
    /// the reqwest client a shorter `connect_timeout` so that a connect
    /// timeout is told apart from a slow answer (and retried).
    pub timeout: Duration,
}

/// What the peer answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerReply {
    /// The agent's message text, or its artifacts' text joined with "\n"
    /// (for a task waiting on input: its question).
    pub text: String,
    /// Completed, or InputRequired (which also stands for the peer's
    /// auth-required); failures are [`PeerError::Failed`].
    pub state: State,
    /// The peer's task id, to continue an input-required task.
    pub task_id: Option<String>,
    /// The peer's conversation id, to continue the conversation.
    pub context_id: Option<String>,
}

/// Why a peer dispatch failed. Each Display is one line naming the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The peer certainly did not run the prompt: it could not be reached
    /// (after retries), stayed busy, or turned the request away (4xx).
    #[error("A2A peer refused, nothing ran: {0}")]
    Refused(String),
    /// The request may have reached the peer's handler, so the peer may
    /// have run (and billed) the prompt; never retried.
    #[error("A2A peer outcome unknown, the peer may have run it: {0}")]
    Uncertain(String),
    /// The peer answered with a JSON-RPC error.
    #[error("A2A peer {url} answered JSON-RPC error {code}: {message}")]
    Rpc {
        /// The endpoint that answered.
        url: String,
        /// JSON-RPC / A2A error code.
        code: i64,
        /// The peer's message (one line).
        message: String,
    },
    /// The task ended failed, canceled or rejected; carries its status
    /// message.
    #[error("A2A peer task did not complete: {0}")]
    Failed(String),
    /// The peer cannot be used as configured (bad URL, no usable card);
    /// nothing was sent to an agent.
    #[error("A2A peer unusable: {0}")]
    Config(String),
}

/// Sends `text` to the peer as one blocking message and waits for the
/// outcome. `message_id` should be stable across the caller's own retries
/// so a peer can deduplicate.
pub async fn send(
    client: &reqwest::Client,
    peer: &Peer,
    text: &str,
    context_id: Option<&str>,
    message_id: &str,
) -> Result<PeerReply, PeerError> {
    let deadline = deadline_after(peer.timeout);
    let parsed = reqwest::Url::parse(&peer.url)
        .map_err(|e| PeerError::Config(format!("{}: not a URL: {e}", one_line(&peer.url))))?;
    let direct = vec![
        (peer.url.clone(), Version::V1),
        (peer.url.clone(), Version::V03),
    ];
    // A bare host is most likely a base URL (read its card first), a .json
    // URL a card; any other path most likely the endpoint itself.
    let base_only = matches!(parsed.path(), "" | "/");
    let card_only = parsed.path().ends_with(".json");
    let mut targets = if base_only || card_only {
        match resolve_card(client, peer, &card_url(&peer.url), deadline).await {
            Ok(t) => t,
            // No card at a bare host: the root may be the endpoint itself.
            Err(PeerError::Config(_)) if base_only => direct,
            Err(e) => return Err(e),
        }
    } else {
        direct
    };
    let mut resolved = base_only || card_only;
    let mut i = 0;
    while let Some((url, version)) = targets.get(i).cloned() {
        let body = send_body(version, text, context_id, message_id);
        match call(client, peer, &url, version, &body, deadline).await {
            Ok(result) => return finish(client, peer, &url, version, result, deadline).await,
            Err(CallError::NoEndpoint(status)) if !resolved => {
                resolved = true;
                targets = resolve_card(client, peer, &card_url(&peer.url), deadline)
                    .await
                    .map_err(|e| match e {
                        PeerError::Config(why) => PeerError::Config(format!(
                            "{url}: HTTP {status}, not an A2A endpoint, and {why}"
                        )),
                        other => other,
                    })?;
                i = 0;
            }
            Err(CallError::NoEndpoint(status)) => {
                return Err(PeerError::Refused(format!(
                    "{url}: HTTP {status}: no A2A JSON-RPC endpoint there"
                )));
            }
            Err(CallError::Peer(PeerError::Rpc { code, .. }))
                if falls_back(code) && i + 1 < targets.len() =>
            {
                i += 1;
            }
            Err(CallError::Peer(e)) => return Err(e),
        }
    }
    Err(PeerError::Config(format!(
        "{}: no JSON-RPC interface to send to",
        one_line(&peer.url)
    )))
}

/// Errors that certainly mean "this version is not spoken here, nothing
/// ran", so the next version may be tried.
fn falls_back(code: i64) -> bool {
    matches!(
        code,
        codes::METHOD_NOT_FOUND | codes::VERSION_NOT_SUPPORTED | codes::INVALID_REQUEST
    )
}

/// Where the card of `url` lives (`url` itself when it names a .json).
fn card_url(url: &str) -> String {
    if url.ends_with(".json") {
        url.to_string()
    } else {
        format!("{}{CARD_PATH}", url.trim_end_matches('/'))
    }
}

/// The JSON-RPC request for a blocking send of one text part.
fn send_body(version: Version, text: &str, context_id: Option<&str>, message_id: &str) -> Value {
    let mut message = Map::new();
    message.insert("messageId".into(), message_id.into());
    if let Some(c) = context_id.filter(|c| !c.is_empty()) {
        message.insert("contextId".into(), c.into());
    }
    let configuration = match version {
        Version::V1 => {
            message.insert("role".into(), "ROLE_USER".into());
            message.insert("parts".into(), json!([{ "text": text }]));
            json!({ "returnImmediately": false })
        }
        Version::V03 => {
            message.insert("kind".into(), "message".into());
            message.insert("role".into(), "user".into());
            message.insert("parts".into(), json!([{ "kind": "text", "text": text }]));
            json!({ "blocking": true })
        }
    };
    rpc_body(
        version,
        Method::Send,
        json!({ "message": message, "configuration": configuration }),
    )
}

/// A JSON-RPC request envelope with a fresh id.
fn rpc_body(version: Version, method: Method, params: Value) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": format!("cairn-{:016x}", fastrand::u64(..)),
        "method": version.method_name(method),
        "params": params,
    })
}

/// Why one JSON-RPC call failed.
enum CallError {
    /// 404/405 without a JSON-RPC body: the URL is not an endpoint (so
    /// nothing ran); the card may name the right one.
    NoEndpoint(u16),
    /// Anything else.
    Peer(PeerError),
}

impl From<PeerError> for CallError {
    fn from(e: PeerError) -> Self {
        CallError::Peer(e)
    }
}

/// POSTs one JSON-RPC request and returns its `result`, retrying only
/// what certainly never reached the peer's handler.
async fn call(
    client: &reqwest::Client,
    peer: &Peer,
    url: &str,
    version: Version,
    body: &Value,
    deadline: Instant,
) -> Result<Value, CallError> {
    let payload = serde_json::to_vec(body)
        .map_err(|e| PeerError::Config(format!("{url}: cannot encode request: {e}")))?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(PeerError::Refused(format!(
                "{url}: the {:?} budget ran out after {} attempts, before the peer accepted the request",
                peer.timeout,
                attempt - 1
            ))
            .into());
        }
        let mut req = client
            .post(url)
            .timeout(remaining)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .header(VERSION_HEADER, version.as_str())
            .body(payload.clone());
        if let Some(token) = &peer.token {
            req = req.bearer_auth(token);
        }
        let (wait, why) = match req.send().await {
            Err(e) if e.is_builder() => {
                return Err(PeerError::Config(format!("{url}: {}", error_chain(&e))).into());
            }
            Err(e) if e.is_connect() => (
                backoff(attempt),
                format!("cannot connect: {}", error_chain(&e)),
            ),
            Err(e) => return Err(PeerError::Uncertain(sent_failure(url, &e, peer.timeout)).into()),
            Ok(resp) => {
                let status = resp.status().as_u16();
                if status == 503 || status == 429 {
                    // Busy: the peer turned the request away before running it.
                    let wait = retry_after(resp.headers()).unwrap_or_else(|| backoff(attempt));
                    (wait, format!("HTTP {status} (busy, retry after {wait:?})"))
                } else {
                    let bytes = resp.bytes().await.map_err(|e| {
                        PeerError::Uncertain(format!(
                            "{url}: reading the answer failed: {}",
                            error_chain(&e)
                        ))
                    })?;
                    return classify(url, status, &bytes);
                }
            }
        };
        if attempt >= ATTEMPTS || wait > RETRY_AFTER_CAP || !fits(wait, deadline) {
            return Err(PeerError::Refused(format!("{url}: {why} ({attempt} attempts)")).into());
        }
        tokio::time::sleep(wait).await;
    }
}

/// Reads an HTTP answer to a JSON-RPC call.
fn classify(url: &str, status: u16, body: &[u8]) -> Result<Value, CallError> {
    let doc: Option<Value> = serde_json::from_slice(body).ok();
    let rpc_error = doc.as_ref().and_then(|d| d.get("error")).and_then(|e| {
        let code = e.get("code")?.as_i64()?;
        let message = e.get("message").and_then(Value::as_str).unwrap_or("");
        Some((code, one_line(message)))
    });
    match status {
        200..=299 => {
            if let Some((code, message)) = rpc_error {
                return Err(PeerError::Rpc {
                    url: url.to_string(),
                    code,
                    message,
                }
                .into());
            }
            match doc.and_then(|mut d| d.get_mut("result").map(Value::take)) {
                Some(result) => Ok(result),
                None => Err(PeerError::Uncertain(format!(
                    "{url}: HTTP {status} without a JSON-RPC result: {}",
                    snippet(body)
                ))
                .into()),
            }
        }
        500..=599 => Err(PeerError::Uncertain(format!(
            "{url}: HTTP {status} after the request was sent: {}",
            snippet(body)
        ))
        .into()),
        _ => {
            if let Some((code, message)) = rpc_error {
                return Err(PeerError::Rpc {
                    url: url.to_string(),
                    code,
                    message,
                }
                .into());
            }
            if matches!(status, 404 | 405) {
                return Err(CallError::NoEndpoint(status));
            }
            let hint = if matches!(status, 401 | 403) {
                " (check the peer's bearer token)"
            } else {
                ""
            };
            Err(PeerError::Refused(format!("{url}: HTTP {status}{hint}: {}", snippet(body))).into())
        }
    }
}

/// Turns the `result` of a send into the reply, polling an unfinished task.
async fn finish(
    client: &reqwest::Client,
    peer: &Peer,
    url: &str,
    version: Version,
    result: Value,
    deadline: Instant,
) -> Result<PeerReply, PeerError> {
    let task = match SendOutcome::read(result) {
        Some(SendOutcome::Message(m)) => {
            return Ok(PeerReply {
                text: parts_text(m.get("parts")),
                state: State::Completed,
                task_id: str_field(&m, "taskId"),
                context_id: str_field(&m, "contextId"),
            });
        }
        Some(SendOutcome::Task(t)) => t,
        None => {
            return Err(PeerError::Uncertain(format!(
                "{url}: the answer is neither a task nor a message"
            )));
        }
    };
    let mut view = PeerTask::read(url, &Value::Object(task))?;
    if !view.state.is_settled() {
        view = poll(client, peer, url, version, &view, deadline).await?;
    }
    match view.state {
        State::Completed | State::InputRequired => Ok(PeerReply {
            text: view.text,
            state: view.state,
            task_id: Some(view.id),
            context_id: view.context_id,
        }),
        state => Err(PeerError::Failed(format!(
            "{url}: task {} is {state}: {}",
            one_line(&view.id),
            if view.status_text.is_empty() {
                "(no status message)".to_string()
            } else {
                one_line(&view.status_text)
            }
        ))),
    }
}

/// Polls GetTask with growing delays until the task settles. A failed poll
/// runs nothing, so transport failures are tolerated until the deadline.
async fn poll(
    client: &reqwest::Client,
    peer: &Peer,
    url: &str,
    version: Version,
    first: &PeerTask,
    deadline: Instant,
) -> Result<PeerTask, PeerError> {
    let mut delay = POLL_FIRST;
    let mut state = first.state;
    let mut last_error = String::new();
    loop {
        let pause = delay + jitter(delay);
        if !fits(pause, deadline) {
            let last = if last_error.is_empty() {
                String::new()
            } else {
                format!("; last poll failed: {last_error}")
            };
            return Err(PeerError::Uncertain(format!(
                "{url}: task {} still {state} when the {:?} budget ran out{last}",
                one_line(&first.id),
                peer.timeout
            )));
        }
        tokio::time::sleep(pause).await;
        delay = (delay * 2).min(POLL_MAX);
        // With history: a peer may put its reply only there.
        let body = rpc_body(version, Method::Get, json!({ "id": first.id }));
        match call(client, peer, url, version, &body, deadline).await {
            Ok(task) => {
                let view = PeerTask::read(url, &task)?;
                if view.state.is_settled() {
                    return Ok(view);
                }
                state = view.state;
            }
            Err(CallError::Peer(PeerError::Rpc { code, message, .. })) => {
                return Err(PeerError::Uncertain(format!(
                    "{url}: the peer took task {} but polling it failed: error {code}: {message}",
                    one_line(&first.id)
                )));
            }
            Err(CallError::Peer(e)) => last_error = e.to_string(),
            Err(CallError::NoEndpoint(status)) => last_error = format!("HTTP {status}"),
        }
    }
}

/// A send's `result`, in either version's shape.
enum SendOutcome {
    Task(Map<String, Value>),
    Message(Map<String, Value>),
}

impl SendOutcome {
    /// 1.0 wraps (`{"task"}` / `{"message"}`); 0.3 is bare with `kind`.
    /// Both are accepted whatever was asked, since peers are not always
    /// consistent.
    fn read(result: Value) -> Option<SendOutcome> {
        let Value::Object(mut o) = result else {
            return None;
        };
        if let Some(Value::Object(t)) = o.remove("task") {
            return Some(SendOutcome::Task(t));
        }
        if let Some(Value::Object(m)) = o.remove("message") {
            return Some(SendOutcome::Message(m));
        }
        match o.get("kind").and_then(Value::as_str) {
            Some("task") => Some(SendOutcome::Task(o)),
            Some("message") => Some(SendOutcome::Message(o)),
            _ if o.contains_key("status") && o.contains_key("id") => Some(SendOutcome::Task(o)),
            _ if o.contains_key("messageId") && o.contains_key("parts") => {
                Some(SendOutcome::Message(o))
            }
            _ => None,
        }
    }
}

/// What cairn needs of a peer's task.
#[derive(Debug)]
struct PeerTask {
    id: String,
    context_id: Option<String>,
    state: State,
    /// Status message text.
    status_text: String,
    /// The reply: artifacts' text, else the status message, else the last
    /// agent message of the history.
    text: String,
}

impl PeerTask {
    /// Reads a Task object of either version.
    fn read(url: &str, task: &Value) -> Result<PeerTask, PeerError> {
        let id = task.get("id").and_then(Value::as_str).unwrap_or_default();
        if id.is_empty() {
            return Err(PeerError::Uncertain(format!(
                "{url}: the task in the answer has no id"
            )));
        }
        let status = task.get("status");
        let raw_state = status
            .and_then(|s| s.get("state"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let state = match raw_state {
            // Waits on the caller like input-required; cairn has no
            // separate auth flow for peers.
            "TASK_STATE_AUTH_REQUIRED" | "auth-required" => State::InputRequired,
            s => State::parse(s).ok_or_else(|| {
                PeerError::Uncertain(format!(
                    "{url}: task {} has an unknown state {:?}",
                    one_line(id),
                    one_line(s)
                ))
            })?,
        };
        let status_text = parts_text(
            status
                .and_then(|s| s.get("message"))
                .and_then(|m| m.get("parts")),
        );
        let artifacts: Vec<String> = task
            .get("artifacts")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|art| parts_text(art.get("parts"))).collect())
            .unwrap_or_default();
        let mut text = artifacts
            .into_iter()
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        if text.is_empty() {
            text = status_text.clone();
        }
        if text.is_empty() {
            text = task
                .get("history")
                .and_then(Value::as_array)
                .and_then(|h| {
                    h.iter().rev().find(|m| {
                        m.get("role").and_then(Value::as_str).and_then(Role::parse)
                            == Some(Role::Agent)
                    })
                })
                .map(|m| parts_text(m.get("parts")))
                .unwrap_or_default();
        }
        Ok(PeerTask {
            id: id.to_string(),
            context_id: task
                .get("contextId")
                .and_then(Value::as_str)
                .map(str::to_string),
            state,
            status_text,
            text,
        })
    }
}

/// Text of a parts array: text parts, data parts as compact JSON, files
/// as a placeholder naming them; joined with "\n".
fn parts_text(parts: Option<&Value>) -> String {
    let Some(parts) = parts.and_then(Value::as_array) else {
        return String::new();
    };
    parts
        .iter()
        .filter_map(|p| {
            if let Some(t) = p.get("text").and_then(Value::as_str) {
                return Some(t.to_string());
            }
            if let Some(d) = p.get("data") {
                return Some(serde_json::to_string(d).unwrap_or_default());
            }
            let file = p.get("file").unwrap_or(p);
            let name = ["filename", "name", "url", "uri"]
                .iter()
                .find_map(|k| file.get(*k).and_then(Value::as_str));
            let is_file = p.get("kind").and_then(Value::as_str) == Some("file")
                || ["file", "raw", "url"].iter().any(|k| p.get(*k).is_some());
            is_file.then(|| format!("[file {}]", name.unwrap_or("(unnamed)")))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A non-empty string field.
fn str_field(o: &Map<String, Value>, key: &str) -> Option<String> {
    o.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Fetches an agent card and lists its JSON-RPC interfaces, 1.0 first.
async fn resolve_card(
    client: &reqwest::Client,
    peer: &Peer,
    url: &str,
    deadline: Instant,
) -> Result<Vec<(String, Version)>, PeerError> {
    let mut attempt = 0;
    let bytes = loop {
        attempt += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let mut req = client
            .get(url)
            .timeout(remaining)
            .header(ACCEPT, "application/json");
        if let Some(token) = &peer.token {
            req = req.bearer_auth(token);
        }
        // Fetching a card runs nothing, so any transport failure may be retried.
        let failure = match req.send().await {
            Err(e) if e.is_builder() => {
                return Err(PeerError::Config(format!("{url}: {}", error_chain(&e))));
            }
            Err(e) => format!("fetching the agent card failed: {}", error_chain(&e)),
            Ok(resp) if resp.status().is_success() => match resp.bytes().await {
                Ok(b) => break b,
                Err(e) => format!("reading the agent card failed: {}", error_chain(&e)),
            },
            Ok(resp) => {
                let status = resp.status().as_u16();
                if !matches!(status, 429 | 500..=599) {
                    return Err(PeerError::Config(format!(
                        "{url}: no agent card (HTTP {status})"
                    )));
                }
                format!("fetching the agent card gave HTTP {status}")
            }
        };
        let wait = backoff(attempt);
        if attempt >= ATTEMPTS || !fits(wait, deadline) {
            return Err(PeerError::Refused(format!(
                "{url}: {failure} ({attempt} attempts)"
            )));
        }
        tokio::time::sleep(wait).await;
    };
    let card: Value = serde_json::from_slice(&bytes)
        .map_err(|e| PeerError::Config(format!("{url}: the agent card is not JSON: {e}")))?;
    let targets = card_interfaces(&card);
    if targets.is_empty() {
        return Err(PeerError::Config(format!(
            "{url}: the agent card names no JSON-RPC interface for A2A 1.0 or 0.3"
        )));
    }
    Ok(targets)
}

/// The card's JSON-RPC interfaces we speak, 1.0 ones first: 1.0's
/// `supportedInterfaces`, else 0.3's `url` + `preferredTransport` and
/// `additionalInterfaces` (all 0.3).
fn card_interfaces(card: &Value) -> Vec<(String, Version)> {
    let mut out = Vec::new();
    if let Some(list) = card.get("supportedInterfaces").and_then(Value::as_array) {
        for iface in list {
            let binding = iface
                .get("protocolBinding")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let url = iface.get("url").and_then(Value::as_str).unwrap_or_default();
            // A missing version is read as 0.3, the version without the field.
            let version = iface
                .get("protocolVersion")
                .and_then(Value::as_str)
                .map_or(Some(Version::V03), Version::parse);
            if let Some(v) = version
                && binding.eq_ignore_ascii_case("JSONRPC")
                && usable_url(url)
            {
                out.push((url.to_string(), v));
            }
        }
    } else {
        let preferred = card
            .get("preferredTransport")
            .and_then(Value::as_str)
            .unwrap_or("JSONRPC");
        if let Some(url) = card.get("url").and_then(Value::as_str)
            && preferred.eq_ignore_ascii_case("JSONRPC")
            && usable_url(url)
        {
            out.push((url.to_string(), Version::V03));
        }
        for iface in card
            .get("additionalInterfaces")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let transport = iface
                .get("transport")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if let Some(url) = iface.get("url").and_then(Value::as_str)
                && transport.eq_ignore_ascii_case("JSONRPC")
                && usable_url(url)
            {
                out.push((url.to_string(), Version::V03));
            }
        }
    }
    out.sort_by_key(|(_, v)| *v != Version::V1);
    out.dedup();
    out
}

/// A card's URL worth trying: absolute http(s), nothing that would break
/// a one-line error message.
fn usable_url(url: &str) -> bool {
    !url.chars().any(char::is_control)
        && reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
}

/// When a budget starting now runs out; a budget too large to represent
/// is capped at a year rather than overflowing.
fn deadline_after(budget: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(budget)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

/// Whether waiting `wait` from now still ends before `deadline`.
fn fits(wait: Duration, deadline: Instant) -> bool {
    Instant::now()
        .checked_add(wait)
        .is_some_and(|t| t < deadline)
}

/// The exponential delay after failed attempt `attempt` (1-based).
fn backoff(attempt: u32) -> Duration {
    let d = BACKOFF_BASE.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    d + jitter(d)
}

/// Up to half of `d` at random, so clients that failed together spread out.
fn jitter(d: Duration) -> Duration {
    let half = u64::try_from(d.as_millis() / 2).unwrap_or(u64::MAX);
    Duration::from_millis(fastrand::u64(0..=half))
}

/// A `Retry-After` given in seconds (an HTTP date falls back to backoff).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

/// Describes a failure that happened after the request may have been sent.
fn sent_failure(url: &str, e: &reqwest::Error, budget: Duration) -> String {
    if e.is_timeout() {
        format!("{url}: no answer within the {budget:?} budget")
    } else {
        format!(
            "{url}: the request failed after it was sent: {}",
            error_chain(e)
        )
    }
}

/// An error and its causes on one line (reqwest's own Display is terse).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    one_line(&s)
}

/// The start of a body, on one line, for error messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    let text = one_line(text.trim());
    if text.is_empty() {
        "(empty body)".into()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::net::{TcpListener, TcpStream};

    /// One request as the test server saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        line: String,
        headers: Vec<(String, String)>,
        body: Value,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
        fn method(&self) -> &str {
            self.body
                .get("method")
                .and_then(Value::as_str)
                .unwrap_or("")
        }
    }

    /// What the test server does with a request.
    enum Answer {
        /// A raw HTTP/1.1 response.
        Http(String),
        /// Close the connection without answering (after reading it all).
        Hangup,
    }

    type Handler = dyn Fn(usize, &Seen) -> Answer + Send + Sync;

    /// A one-connection-per-request HTTP/1.1 server on 127.0.0.1:0.
    async fn server(handler: Box<Handler>) -> (String, Arc<Mutex<Vec<Seen>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let handler: Arc<Handler> = Arc::from(handler);
        let count = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (log, handler, count) = (log.clone(), handler.clone(), count.clone());
                tokio::spawn(async move {
                    let Some(req) = read_request(&stream).await else {
                        return;
                    };
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    log.lock().expect("lock").push(req.clone());
                    if let Answer::Http(raw) = handler(n, &req) {
                        write_all(&stream, raw.as_bytes()).await;
                    }
                });
            }
        });
        (format!("http://{addr}"), seen)
    }

    async fn read_request(stream: &TcpStream) -> Option<Seen> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let mut lines = head.split("\r\n");
                let line = lines.next()?.to_string();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    let body =
                        serde_json::from_slice(&buf[end + 4..end + 4 + len]).unwrap_or(Value::Null);
                    return Some(Seen {
                        line,
                        headers,
                        body,
                    });
                }
            }
            stream.readable().await.ok()?;
            match stream.try_read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return None,
            }
        }
    }

    async fn write_all(stream: &TcpStream, mut data: &[u8]) {
        while !data.is_empty() {
            if stream.writable().await.is_err() {
                return;
            }
            match stream.try_write(data) {
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }

    fn http(status: &str, extra: &str, body: &str) -> Answer {
        Answer::Http(format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
            body.len()
        ))
    }

    fn ok(id: &Value, result: Value) -> Answer {
        http(
            "200 OK",
            "",
            &json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string(),
        )
    }

    fn rpc_err(id: &Value, code: i64, message: &str) -> Answer {
        let body = json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
        http("200 OK", "", &body.to_string())
    }

    fn v1_task(state: &str, text: &str) -> Value {
        json!({ "task": {
            "id": "task-1", "contextId": "ctx-1",
            "status": { "state": state, "timestamp": "2025-10-28T10:30:00.000Z" },
            "artifacts": [{ "artifactId": "a1", "parts": [{ "text": text }] }],
        }})
    }

    fn reqwest_client() -> reqwest::Client {
        crate::web::client_builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .expect("client")
    }

    fn peer(url: &str) -> Peer {
        Peer {
            url: url.to_string(),
            token: Some("s3cret".into()),
            timeout: Duration::from_secs(10),
        }
    }

    async fn run(p: &Peer) -> Result<PeerReply, PeerError> {
        let client = reqwest_client();
        let fut = send(&client, p, "hello peer", Some("ctx-1"), "msg-1");
        tokio::time::timeout(Duration::from_secs(20), fut)
            .await
            .expect("test timed out")
    }

    fn id_of(s: &Seen) -> Value {
        s.body.get("id").cloned().unwrap_or(Value::Null)
    }

    #[tokio::test]
    async fn v1_success() {
        let (url, seen) = server(Box::new(|_, s| {
            ok(
                &id_of(s),
                v1_task("TASK_STATE_COMPLETED", "echo: hello peer"),
            )
        }))
        .await;
        let reply = run(&peer(&format!("{url}/a2a/echo"))).await.expect("reply");
        assert_eq!(reply.text, "echo: hello peer");
        assert_eq!(reply.state, State::Completed);
        assert_eq!(reply.task_id.as_deref(), Some("task-1"));
        assert_eq!(reply.context_id.as_deref(), Some("ctx-1"));
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen.len(), 1);
        let req = &seen[0];
        assert!(req.line.starts_with("POST /a2a/echo "), "{}", req.line);
        assert_eq!(req.header("a2a-version"), Some("1.0"));
        assert_eq!(req.header("authorization"), Some("Bearer s3cret"));
        assert_eq!(req.method(), "SendMessage");
        let msg = &req.body["params"]["message"];
        assert_eq!(msg["role"], "ROLE_USER");
        assert_eq!(msg["parts"], json!([{"text": "hello peer"}]));
        assert_eq!(msg["messageId"], "msg-1");
        assert_eq!(msg["contextId"], "ctx-1");
        assert_eq!(
            req.body["params"]["configuration"]["returnImmediately"],
            false
        );
    }

    #[tokio::test]
    async fn falls_back_to_v03() {
        let (url, seen) = server(Box::new(|_, s| match s.method() {
            "SendMessage" => rpc_err(&id_of(s), -32601, "Method not found"),
            _ => ok(&id_of(s), json!({
                "kind": "task", "id": "t03", "contextId": "c03",
                "status": { "state": "completed" },
                "artifacts": [{ "artifactId": "a", "parts": [{ "kind": "text", "text": "old echo" }] }],
            })),
        }))
        .await;
        let reply = run(&peer(&format!("{url}/rpc"))).await.expect("reply");
        assert_eq!(
            (reply.text.as_str(), reply.state),
            ("old echo", State::Completed)
        );
        assert_eq!(reply.task_id.as_deref(), Some("t03"));
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].method(), "message/send");
        assert_eq!(seen[1].header("a2a-version"), Some("0.3"));
        let msg = &seen[1].body["params"]["message"];
        assert_eq!(
            (msg["role"].clone(), msg["kind"].clone()),
            (json!("user"), json!("message"))
        );
        assert_eq!(
            msg["parts"],
            json!([{"kind": "text", "text": "hello peer"}])
        );
        assert_eq!(seen[1].body["params"]["configuration"]["blocking"], true);
    }

    #[tokio::test]
    async fn v03_message_reply_after_version_error() {
        let (url, _) = server(Box::new(|_, s| match s.method() {
            "SendMessage" => rpc_err(&id_of(s), -32009, "Protocol version not supported"),
            _ => ok(
                &id_of(s),
                json!({
                    "kind": "message", "messageId": "r1", "role": "agent", "contextId": "c",
                    "parts": [{ "kind": "text", "text": "direct" }],
                }),
            ),
        }))
        .await;
        let reply = run(&peer(&format!("{url}/rpc"))).await.expect("reply");
        assert_eq!(
            (reply.text.as_str(), reply.state),
            ("direct", State::Completed)
        );
        assert_eq!(reply.context_id.as_deref(), Some("c"));
    }

    #[tokio::test]
    async fn polls_a_working_task_to_completion() {
        let (url, seen) = server(Box::new(|n, s| match (n, s.method()) {
            (0, "SendMessage") => ok(&id_of(s), v1_task("TASK_STATE_WORKING", "")),
            (1, "GetTask") => ok(&id_of(s), json!({"id": "task-1", "contextId": "ctx-1", "status": {"state": "TASK_STATE_WORKING"}})),
            (_, "GetTask") => ok(&id_of(s), json!({
                "id": "task-1", "contextId": "ctx-1", "status": {"state": "TASK_STATE_COMPLETED"},
                "artifacts": [{"artifactId": "a", "parts": [{"text": "part one"}]}, {"artifactId": "b", "parts": [{"text": "part two"}]}],
            })),
            _ => rpc_err(&id_of(s), -32601, "unexpected"),
        }))
        .await;
        let reply = run(&peer(&format!("{url}/a2a/slow"))).await.expect("reply");
        assert_eq!(reply.text, "part one\npart two");
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[1].body["params"]["id"], "task-1");
        assert_eq!(seen[2].header("a2a-version"), Some("1.0"));
    }

    #[tokio::test]
    async fn failed_task_is_failed_with_its_status_message() {
        let (url, _) = server(Box::new(|_, s| ok(&id_of(s), json!({"task": {
            "id": "t", "contextId": "c", "status": {"state": "TASK_STATE_FAILED",
                "message": {"messageId": "x", "role": "ROLE_AGENT", "parts": [{"text": "out of quota\nsorry"}]}}}}))))
        .await;
        let err = run(&peer(&format!("{url}/a"))).await.expect_err("failed");
        assert!(!err.to_string().contains('\n'), "{err}");
        let PeerError::Failed(why) = &err else {
            panic!("{err:?}")
        };
        assert!(why.contains("out of quota") && why.contains(&url), "{why}");
    }

    #[tokio::test]
    async fn connection_refused_is_retried_then_refused() {
        // Bind then drop: the port is known to be closed.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let started = std::time::Instant::now();
        let err = run(&peer(&format!("http://{addr}/a2a/echo")))
            .await
            .expect_err("refused");
        let PeerError::Refused(why) = &err else {
            panic!("{err:?}")
        };
        assert!(why.contains("3 attempts"), "{why}");
        assert!(err.to_string().contains(&addr.to_string()));
        assert!(!err.to_string().contains('\n'));
        // Two backoffs: at least 200 ms + 400 ms.
        assert!(
            started.elapsed() >= Duration::from_millis(600),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn reset_after_send_is_not_retried() {
        let (url, seen) = server(Box::new(|_, _| Answer::Hangup)).await;
        let err = run(&peer(&format!("{url}/a2a/echo")))
            .await
            .expect_err("uncertain");
        assert!(matches!(err, PeerError::Uncertain(_)), "{err:?}");
        assert!(err.to_string().contains("may have run"), "{err}");
        assert_eq!(seen.lock().expect("lock").len(), 1, "must not resend");
    }

    #[tokio::test]
    async fn server_error_and_garbage_are_not_retried() {
        let (url, seen) = server(Box::new(|_, _| {
            http("500 Internal Server Error", "", "{\"oops\":1}")
        }))
        .await;
        let err = run(&peer(&format!("{url}/x")))
            .await
            .expect_err("uncertain");
        assert!(
            matches!(&err, PeerError::Uncertain(m) if m.contains("500")),
            "{err:?}"
        );
        assert_eq!(seen.lock().expect("lock").len(), 1);

        let (url, seen) = server(Box::new(|_, _| http("200 OK", "", "<html>hi</html>"))).await;
        let err = run(&peer(&format!("{url}/x")))
            .await
            .expect_err("uncertain");
        assert!(matches!(err, PeerError::Uncertain(_)), "{err:?}");
        assert_eq!(seen.lock().expect("lock").len(), 1);
    }

    #[tokio::test]
    async fn busy_503_with_retry_after_is_retried() {
        let (url, seen) = server(Box::new(|n, s| match n {
            0 => http("503 Service Unavailable", "Retry-After: 1\r\n", ""),
            _ => ok(&id_of(s), v1_task("TASK_STATE_COMPLETED", "after the wait")),
        }))
        .await;
        let started = std::time::Instant::now();
        let reply = run(&peer(&format!("{url}/a2a/echo"))).await.expect("reply");
        assert_eq!(reply.text, "after the wait");
        assert_eq!(seen.lock().expect("lock").len(), 2);
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "Retry-After honoured"
        );
    }

    #[tokio::test]
    async fn busy_for_longer_than_the_cap_is_refused_at_once() {
        let (url, seen) = server(Box::new(|_, _| {
            http("429 Too Many Requests", "Retry-After: 3600\r\n", "")
        }))
        .await;
        let err = run(&peer(&format!("{url}/a2a/echo")))
            .await
            .expect_err("refused");
        assert!(
            matches!(&err, PeerError::Refused(m) if m.contains("429")),
            "{err:?}"
        );
        assert_eq!(seen.lock().expect("lock").len(), 1);
    }

    #[tokio::test]
    async fn rpc_errors_and_auth_failures() {
        let (url, seen) = server(Box::new(|_, s| {
            rpc_err(&id_of(s), -32602, "Invalid parameters: nope")
        }))
        .await;
        let err = run(&peer(&format!("{url}/x"))).await.expect_err("rpc");
        assert_eq!(
            err,
            PeerError::Rpc {
                url: format!("{url}/x"),
                code: -32602,
                message: "Invalid parameters: nope".into()
            }
        );
        assert_eq!(seen.lock().expect("lock").len(), 1);

        let (url, _) = server(Box::new(|_, _| http("401 Unauthorized", "", ""))).await;
        let err = run(&peer(&format!("{url}/x"))).await.expect_err("refused");
        assert!(
            matches!(&err, PeerError::Refused(m) if m.contains("401") && m.contains("token")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn resolves_the_card_of_a_base_url() {
        let (agent, seen) = server(Box::new(|_, s| {
            if s.line.starts_with("POST /a2a/echo ") {
                return ok(&id_of(s), v1_task("TASK_STATE_COMPLETED", "via card"));
            }
            http("404 Not Found", "", "")
        }))
        .await;
        let card = json!({
            "name": "echo", "description": "d", "version": "1",
            "supportedInterfaces": [
                {"url": format!("{agent}/a2a/echo"), "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
                {"url": format!("{agent}/a2a/echo"), "protocolBinding": "JSONRPC", "protocolVersion": "0.3"},
            ],
        })
        .to_string();
        let (host, host_seen) = server(Box::new(move |_, s| {
            let card_paths = [
                "GET /.well-known/agent-card.json ",
                "GET /team/echo/.well-known/agent-card.json ",
            ];
            if card_paths.iter().any(|p| s.line.starts_with(p)) {
                http("200 OK", "", &card)
            } else {
                http("404 Not Found", "", "")
            }
        }))
        .await;
        // A bare host: the card is read first.
        let reply = run(&peer(&host)).await.expect("reply");
        assert_eq!(reply.text, "via card");
        // A path that is not an endpoint: POST gets 404, then the card.
        let reply = run(&peer(&format!("{host}/team/echo")))
            .await
            .expect("reply");
        assert_eq!(reply.text, "via card");
        assert_eq!(seen.lock().expect("lock").len(), 2);
        let host_seen = host_seen.lock().expect("lock").clone();
        let lines: Vec<&str> = host_seen.iter().map(|s| s.line.as_str()).collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[1].starts_with("POST /team/echo "), "{lines:?}");
        assert_eq!(host_seen[0].header("authorization"), Some("Bearer s3cret"));
    }

    #[tokio::test]
    async fn bare_host_without_card_is_tried_as_the_endpoint() {
        let (url, seen) = server(Box::new(|_, s| {
            if s.line.starts_with("POST / ") {
                ok(&id_of(s), v1_task("TASK_STATE_COMPLETED", "at the root"))
            } else {
                http("404 Not Found", "", "")
            }
        }))
        .await;
        let reply = run(&peer(&format!("{url}/"))).await.expect("reply");
        assert_eq!(reply.text, "at the root");
        assert_eq!(seen.lock().expect("lock").len(), 2, "card GET, then POST");
    }

    #[test]
    fn card_interfaces_of_both_versions() {
        let v1 = json!({"supportedInterfaces": [
            {"url": "http://a/03", "protocolBinding": "JSONRPC", "protocolVersion": "0.3"},
            {"url": "http://a/grpc", "protocolBinding": "GRPC", "protocolVersion": "1.0"},
            {"url": "http://a/v1", "protocolBinding": "JSONRPC", "protocolVersion": "1.0.0"},
            {"url": "http://a/v2", "protocolBinding": "JSONRPC", "protocolVersion": "2.0"},
        ]});
        assert_eq!(
            card_interfaces(&v1),
            vec![
                ("http://a/v1".to_string(), Version::V1),
                ("http://a/03".to_string(), Version::V03),
            ]
        );
        let v03 = json!({"url": "http://b/rpc", "preferredTransport": "JSONRPC",
            "additionalInterfaces": [{"url": "http://b/rest", "transport": "HTTP+JSON"}]});
        assert_eq!(
            card_interfaces(&v03),
            vec![("http://b/rpc".to_string(), Version::V03)]
        );
        assert!(card_interfaces(&json!({"url": 5})).is_empty());
        assert!(card_interfaces(&json!({"url": "http://a\nb"})).is_empty());
        assert!(card_interfaces(&json!({"url": "/relative"})).is_empty());
        assert!(card_interfaces(&json!("nope")).is_empty());
    }

    #[test]
    fn send_outcome_shapes() {
        assert!(matches!(
            SendOutcome::read(json!({"task": {"id": "t"}})),
            Some(SendOutcome::Task(_))
        ));
        assert!(matches!(
            SendOutcome::read(json!({"message": {"messageId": "m"}})),
            Some(SendOutcome::Message(_))
        ));
        assert!(matches!(
            SendOutcome::read(json!({"kind": "task", "id": "t"})),
            Some(SendOutcome::Task(_))
        ));
        assert!(matches!(
            SendOutcome::read(json!({"kind": "message"})),
            Some(SendOutcome::Message(_))
        ));
        assert!(SendOutcome::read(json!([1])).is_none());
        assert!(SendOutcome::read(json!({"other": 1})).is_none());
        let t = PeerTask::read(
            "u",
            &json!({"id": "t", "status": {"state": "auth-required"}}),
        )
        .expect("task");
        assert_eq!(t.state, State::InputRequired);
        assert!(PeerTask::read("u", &json!({"id": "t", "status": {"state": "unknown"}})).is_err());
        assert!(PeerTask::read("u", &json!({"status": {"state": "completed"}})).is_err());
        assert_eq!(
            parts_text(Some(
                &json!([{"text": "a"}, {"data": {"b": 1}}, {"url": "http://f", "filename": "f.png"}, {"kind": "file", "file": {"uri": "u"}}])
            )),
            "a\n{\"b\":1}\n[file f.png]\n[file u]"
        );
    }

    #[test]
    fn extreme_durations_do_not_overflow() {
        assert!(deadline_after(Duration::MAX) > Instant::now());
        assert!(!fits(Duration::MAX, deadline_after(Duration::from_secs(5))));
        assert!(fits(Duration::ZERO, deadline_after(Duration::from_secs(5))));
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, u64::MAX.to_string().parse().expect("header"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(u64::MAX)));
    }

    #[test]
    fn backoff_grows_with_jitter() {
        for attempt in 1..=3 {
            let base = BACKOFF_BASE * (1 << (attempt - 1));
            let d = backoff(attempt);
            assert!(d >= base && d <= base + base / 2, "{attempt}: {d:?}");
        }
        assert!(backoff(u32::MAX) > Duration::ZERO);
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "3".parse().expect("header"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("header"),
        );
        assert_eq!(retry_after(&h), None);
    }
}
