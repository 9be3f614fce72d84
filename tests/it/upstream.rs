//! A scripted fake model provider: a real HTTP/1.1 server on 127.0.0.1 that
//! speaks OpenAI's Chat Completions and Anthropic's Messages wire formats,
//! streaming included. Each request consumes one scripted [`Behavior`]: a
//! normal answer (text or a tool call, with or without usage), an error
//! status, garbage, a stream that dies midway, or a stall. Requests refused
//! before that (a body that isn't JSON, no `anthropic-version` header) leave
//! the script alone. It runs on its own thread and runtime, so sync tests and
//! benchmarks can use it alike.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// The reply used when the script is empty and no default was set.
pub const DEFAULT_TEXT: &str = "Hello from the fake upstream.";

/// Size of the pieces a tool call's arguments are streamed in.
const ARGUMENT_FRAGMENT: usize = 8;

/// What the fake upstream does with one request.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// A normal answer. `text` is the reply; split into words for streaming
    /// (one chunk per word, its leading whitespace included). `tool_call`:
    /// `Some((name, arguments_json))` makes the answer a tool call
    /// (`finish_reason` `"tool_calls"`; arguments streamed in ~8-byte
    /// fragments with index 0). `usage`: whether usage is reported
    /// (non-stream: the `usage` field; OpenAI stream: the final usage chunk,
    /// only if the request also asked for `stream_options.include_usage`;
    /// Anthropic: usage in `message_start` and `message_delta`).
    /// `first_byte_delay` delays the response headers; `chunk_delay` sleeps
    /// between streamed chunks.
    Reply {
        text: String,
        tool_call: Option<(String, String)>,
        usage: bool,
        prompt_tokens: u64,
        completion_tokens: u64,
        first_byte_delay: Duration,
        chunk_delay: Duration,
    },
    /// An error status with an OpenAI-shaped (Anthropic-shaped on
    /// `/v1/messages`) error body; `retry_after` sets the Retry-After header
    /// in seconds.
    Status { code: u16, retry_after: Option<u64> },
    /// 200 with a body that is not JSON (for streams, SSE data lines that are
    /// not JSON).
    Garbage,
    /// Streams `after_chunks` chunks, then closes the connection without
    /// `[DONE]`/`message_stop`. For a non-stream request: headers with a
    /// Content-Length larger than the bytes sent, then the connection closes.
    DieMidStream { after_chunks: usize },
    /// Accepts the request and never answers, until the client goes away,
    /// which is counted in [`Upstream::disconnects`].
    Stall,
}

impl Behavior {
    /// A text answer with usage (12 prompt, 5 completion tokens), no delays.
    pub fn reply(text: &str) -> Behavior {
        Behavior::Reply {
            text: text.to_owned(),
            tool_call: None,
            usage: true,
            prompt_tokens: 12,
            completion_tokens: 5,
            first_byte_delay: Duration::ZERO,
            chunk_delay: Duration::ZERO,
        }
    }

    /// A tool call to `name` with `args` (a JSON object as text), with usage.
    pub fn tool_call(name: &str, args: &str) -> Behavior {
        let mut b = Behavior::reply("");
        if let Behavior::Reply { tool_call, .. } = &mut b {
            *tool_call = Some((name.to_owned(), args.to_owned()));
        }
        b
    }

    /// An error status without Retry-After.
    pub fn status(code: u16) -> Behavior {
        Behavior::Status {
            code,
            retry_after: None,
        }
    }

    /// For a `Reply`: whether usage is reported. Other behaviors are unchanged.
    pub fn with_usage(mut self, on: bool) -> Behavior {
        if let Behavior::Reply { usage, .. } = &mut self {
            *usage = on;
        }
        self
    }

    /// For a `Reply`: the token counts reported.
    pub fn with_tokens(mut self, prompt: u64, completion: u64) -> Behavior {
        if let Behavior::Reply {
            prompt_tokens,
            completion_tokens,
            ..
        } = &mut self
        {
            *prompt_tokens = prompt;
            *completion_tokens = completion;
        }
        self
    }

    /// For a `Reply`: how long the response headers are held back.
    pub fn with_first_byte_delay(mut self, delay: Duration) -> Behavior {
        if let Behavior::Reply {
            first_byte_delay, ..
        } = &mut self
        {
            *first_byte_delay = delay;
        }
        self
    }

    /// For a `Reply`: the pause between streamed chunks.
    pub fn with_chunk_delay(mut self, delay: Duration) -> Behavior {
        if let Behavior::Reply { chunk_delay, .. } = &mut self {
            *chunk_delay = delay;
        }
        self
    }
}

/// One request as the fake upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    /// Header names are lowercase.
    pub headers: Vec<(String, String)>,
    /// `Null` if the body was empty or not JSON.
    pub body: Value,
}

impl Recorded {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A running fake upstream; stopped when dropped.
pub struct Upstream {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub url: String,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct State {
    script: Mutex<VecDeque<Behavior>>,
    default: Mutex<Behavior>,
    recording: AtomicBool,
    requests: Mutex<Vec<Recorded>>,
    hits: AtomicUsize,
    disconnects: AtomicUsize,
    next_id: AtomicU64,
    stopping: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    fn next_behavior(&self) -> Behavior {
        if let Some(b) = lock(&self.script).pop_front() {
            return b;
        }
        lock(&self.default).clone()
    }

    fn client_left(&self) {
        if !self.stopping.load(Ordering::Acquire) {
            self.disconnects.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Upstream {
    /// Starts the server on its own thread with its own two-worker runtime.
    /// With an empty script every request gets `Behavior::reply(DEFAULT_TEXT)`.
    pub fn start() -> Upstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the fake upstream");
        listener
            .set_nonblocking(true)
            .expect("make the fake upstream's listener non-blocking");
        let addr = listener.local_addr().expect("the fake upstream's address");
        let state = Arc::new(State {
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(Behavior::reply(DEFAULT_TEXT)),
            recording: AtomicBool::new(true),
            requests: Mutex::new(Vec::new()),
            hits: AtomicUsize::new(0),
            disconnects: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
        });
        let (tx, rx) = oneshot::channel();
        let server_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("fake-upstream".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("fake-upstream-worker")
                    .enable_all()
                    .build()
                    .expect("the fake upstream's runtime");
                rt.block_on(serve(listener, server_state, rx));
                // Dropping the runtime drops every connection still open.
                drop(rt);
            })
            .expect("spawn the fake upstream's thread");
        Upstream {
            url: format!("http://{addr}"),
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// Queues behaviors, consumed one per request, in order, across endpoints.
    pub fn script(&self, behaviors: impl IntoIterator<Item = Behavior>) {
        lock(&self.state.script).extend(behaviors);
    }

    /// Sets the behavior used when the queue is empty.
    pub fn set_default(&self, b: Behavior) {
        *lock(&self.state.default) = b;
    }

    /// Every request received while recording was on, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state.requests).clone()
    }

    /// Turns recording of requests on (the default) or off.
    pub fn record(&self, on: bool) {
        self.state.recording.store(on, Ordering::Release);
    }

    /// How many requests reached `/v1/chat/completions` or `/v1/messages`.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::Acquire)
    }

    /// How many stalled or streaming responses saw their client disconnect
    /// before the response ended.
    pub fn disconnects(&self) -> usize {
        self.state.disconnects.load(Ordering::Acquire)
    }

    /// Waits up to `limit` for `disconnects()` to reach `n`; whether it did.
    pub fn wait_for_disconnects(&self, n: usize, limit: Duration) -> bool {
        let started = Instant::now();
        while self.disconnects() < n {
            if started.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::Release);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<State>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let listener =
        tokio::net::TcpListener::from_std(listener).expect("register the fake upstream's listener");
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of descriptors, or a connection reset before it
                    // was accepted: try again shortly.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(state.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    OpenAi,
    Anthropic,
}

/// What one response is about, shared by every chunk of it.
struct Ctx<'a> {
    id: u64,
    model: &'a str,
    created: u64,
    include_usage: bool,
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<FakeBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let json: Option<Value> = serde_json::from_slice(&bytes).ok();
    if state.recording.load(Ordering::Acquire) {
        let recorded = Recorded {
            path: parts.uri.path().to_owned(),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: json.clone().unwrap_or(Value::Null),
        };
        lock(&state.requests).push(recorded);
    }

    let path = parts.uri.path();
    let api = match (&parts.method, path) {
        (&Method::GET, "/v1/models") => return Ok(json_response(StatusCode::OK, &models())),
        (&Method::POST, "/v1/chat/completions") => Api::OpenAi,
        (&Method::POST, "/v1/messages") => Api::Anthropic,
        (_, "/v1/models" | "/v1/chat/completions" | "/v1/messages") => {
            let msg = format!("Method {} not allowed on {path}", parts.method);
            return Ok(json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &openai_error(&msg, "invalid_request_error", Some("method_not_allowed")),
            ));
        }
        _ => {
            let msg = format!("Unknown request URL: {} {path}", parts.method);
            return Ok(json_response(
                StatusCode::NOT_FOUND,
                &openai_error(&msg, "invalid_request_error", Some("unknown_url")),
            ));
        }
    };
    state.hits.fetch_add(1, Ordering::AcqRel);

    let Some(body) = json else {
        let msg = "We could not parse the JSON body of your request.";
        return Ok(json_response(
            StatusCode::BAD_REQUEST,
            &error_body(api, 400, msg),
        ));
    };
    if api == Api::Anthropic && !parts.headers.contains_key("anthropic-version") {
        let msg = "anthropic-version: header is required";
        return Ok(json_response(
            StatusCode::BAD_REQUEST,
            &anthropic_error(msg, "invalid_request_error"),
        ));
    }

    let behavior = state.next_behavior();
    let stream = body["stream"].as_bool() == Some(true);
    let ctx = Ctx {
        id: state.next_id.fetch_add(1, Ordering::AcqRel),
        model: body["model"].as_str().unwrap_or("fake-small"),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        include_usage: stream
            && api == Api::OpenAi
            && body["stream_options"]["include_usage"].as_bool() == Some(true),
    };

    let response = match behavior {
        Behavior::Reply {
            text,
            tool_call,
            usage,
            prompt_tokens,
            completion_tokens,
            first_byte_delay,
            chunk_delay,
        } => {
            if !first_byte_delay.is_zero() {
                tokio::time::sleep(first_byte_delay).await;
            }
            let answer = Answer {
                text: &text,
                tool_call: tool_call.as_ref().map(|(n, a)| (n.as_str(), a.as_str())),
                usage,
                prompt_tokens,
                completion_tokens,
            };
            if stream {
                let chunks = stream_chunks(api, &ctx, &answer);
                sse_response(chunks, chunk_delay, End::Clean, &state)
            } else {
                json_response(StatusCode::OK, &whole_answer(api, &ctx, &answer))
            }
        }
        Behavior::Status { code, retry_after } => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let reason = status.canonical_reason().unwrap_or("error");
            let msg = format!("The fake upstream was told to fail with {code} {reason}.");
            let mut response = json_response(status, &error_body(api, code, &msg));
            if let Some(secs) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            response
        }
        Behavior::Garbage => {
            if stream {
                let chunks = match api {
                    Api::OpenAi => vec![
                        Bytes::from_static(b"data: {\"id\": \"chatcmpl-garbage\", oops\n\n"),
                        Bytes::from_static(b"data: <html>not json</html>\n\n"),
                        Bytes::from_static(b"data: [DONE]\n\n"),
                    ],
                    Api::Anthropic => vec![
                        Bytes::from_static(b"event: message_start\ndata: {\"type\": oops\n\n"),
                        Bytes::from_static(b"event: message_stop\ndata: <html>not json</html>\n\n"),
                    ],
                };
                sse_response(chunks, Duration::ZERO, End::Clean, &state)
            } else {
                let mut response = Response::new(FakeBody::full(Bytes::from_static(
                    b"<html><body>this is not json {\"choices\": [</body></html>",
                )));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
        }
        Behavior::DieMidStream { after_chunks } => {
            let answer = Answer {
                text: DEFAULT_TEXT,
                tool_call: None,
                usage: true,
                prompt_tokens: 12,
                completion_tokens: 5,
            };
            if stream {
                let mut chunks = stream_chunks(api, &ctx, &answer);
                chunks.truncate(after_chunks.min(chunks.len() - 1));
                sse_response(chunks, Duration::ZERO, End::Abort, &state)
            } else {
                let whole = to_bytes(&whole_answer(api, &ctx, &answer));
                let sent = whole.slice(..whole.len() / 2);
                let mut body = FakeBody::stream(vec![sent], Duration::ZERO, End::Abort, None);
                body.exact = None;
                let mut response = Response::new(body);
                let headers = response.headers_mut();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(whole.len()));
                response
            }
        }
        Behavior::Stall => {
            let _guard = StallGuard(state.clone());
            let never: Infallible = std::future::pending().await;
            match never {}
        }
    };
    Ok(response)
}

/// Counts a disconnect when a stalled request's future is dropped.
struct StallGuard(Arc<State>);

impl Drop for StallGuard {
    fn drop(&mut self) {
        self.0.client_left();
    }
}

struct Answer<'a> {
    text: &'a str,
    tool_call: Option<(&'a str, &'a str)>,
    usage: bool,
    prompt_tokens: u64,
    completion_tokens: u64,
}

impl Answer<'_> {
    fn has_text_block(&self) -> bool {
        !self.text.is_empty() || self.tool_call.is_none()
    }
}

fn models() -> Value {
    let model = |id: &str| json!({"id": id, "object": "model", "created": 1_700_000_000u64, "owned_by": "fake-upstream"});
    json!({"object": "list", "data": [model("fake-small"), model("fake-large")]})
}

fn openai_error(message: &str, kind: &str, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

fn anthropic_error(message: &str, kind: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

fn error_body(api: Api, code: u16, message: &str) -> Value {
    match api {
        Api::OpenAi => {
            let (kind, code) = match code {
                401 => ("invalid_request_error", Some("invalid_api_key")),
                403 => ("permission_error", None),
                404 => ("invalid_request_error", Some("model_not_found")),
                429 => ("requests", Some("rate_limit_exceeded")),
                500..=599 => ("server_error", None),
                _ => ("invalid_request_error", None),
            };
            openai_error(message, kind, code)
        }
        Api::Anthropic => {
            let kind = match code {
                401 => "authentication_error",
                402 => "billing_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                504 => "timeout_error",
                529 => "overloaded_error",
                500..=599 => "api_error",
                _ => "invalid_request_error",
            };
            anthropic_error(message, kind)
        }
    }
}

fn whole_answer(api: Api, ctx: &Ctx<'_>, a: &Answer<'_>) -> Value {
    match api {
        Api::OpenAi => {
            let mut message = json!({
                "role": "assistant",
                "content": if a.has_text_block() { Value::from(a.text) } else { Value::Null },
                "refusal": null,
            });
            if let Some((name, args)) = a.tool_call {
                message["tool_calls"] = json!([{
                    "id": format!("call_fake_{}", ctx.id),
                    "type": "function",
                    "function": {"name": name, "arguments": args},
                }]);
            }
            let finish = if a.tool_call.is_some() {
                "tool_calls"
            } else {
                "stop"
            };
            let mut v = json!({
                "id": format!("chatcmpl-fake-{}", ctx.id),
                "object": "chat.completion",
                "created": ctx.created,
                "model": ctx.model,
                "system_fingerprint": null,
                "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            });
            if a.usage {
                v["usage"] = openai_usage(a);
            }
            v
        }
        Api::Anthropic => {
            let mut content = Vec::new();
            if a.has_text_block() {
                content.push(json!({"type": "text", "text": a.text}));
            }
            if let Some((name, args)) = a.tool_call {
                content.push(json!({
                    "type": "tool_use",
                    "id": format!("toolu_fake_{}", ctx.id),
                    "name": name,
                    "input": tool_input(args),
                }));
            }
            let mut v = json!({
                "id": format!("msg_fake_{}", ctx.id),
                "type": "message",
                "role": "assistant",
                "model": ctx.model,
                "content": content,
                "stop_reason": anthropic_stop_reason(a),
                "stop_sequence": null,
            });
            if a.usage {
                v["usage"] =
                    json!({"input_tokens": a.prompt_tokens, "output_tokens": a.completion_tokens});
            }
            v
        }
    }
}

fn openai_usage(a: &Answer<'_>) -> Value {
    json!({
        "prompt_tokens": a.prompt_tokens,
        "completion_tokens": a.completion_tokens,
        "total_tokens": a.prompt_tokens + a.completion_tokens,
    })
}

fn anthropic_stop_reason(a: &Answer<'_>) -> &'static str {
    if a.tool_call.is_some() {
        "tool_use"
    } else {
        "end_turn"
    }
}

/// A tool call's arguments as Anthropic's `input` object.
fn tool_input(args: &str) -> Value {
    match serde_json::from_str::<Value>(args) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

fn stream_chunks(api: Api, ctx: &Ctx<'_>, a: &Answer<'_>) -> Vec<Bytes> {
    match api {
        Api::OpenAi => openai_chunks(ctx, a),
        Api::Anthropic => anthropic_events(ctx, a),
    }
}

fn openai_chunks(ctx: &Ctx<'_>, a: &Answer<'_>) -> Vec<Bytes> {
    let chunk = |delta: Value, finish: Option<&str>| {
        let mut v = json!({
            "id": format!("chatcmpl-fake-{}", ctx.id),
            "object": "chat.completion.chunk",
            "created": ctx.created,
            "model": ctx.model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if ctx.include_usage {
            v["usage"] = Value::Null;
        }
        sse_data(&v)
    };
    let tool_header = |name: &str| {
        json!([{
            "index": 0,
            "id": format!("call_fake_{}", ctx.id),
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }])
    };

    let mut out = Vec::new();
    if a.has_text_block() {
        out.push(chunk(
            json!({"role": "assistant", "content": "", "refusal": null}),
            None,
        ));
        for word in words(a.text) {
            out.push(chunk(json!({"content": word}), None));
        }
        if let Some((name, _)) = a.tool_call {
            out.push(chunk(json!({"tool_calls": tool_header(name)}), None));
        }
    } else if let Some((name, _)) = a.tool_call {
        out.push(chunk(
            json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": tool_header(name)}),
            None,
        ));
    }
    if let Some((_, args)) = a.tool_call {
        for fragment in fragments(args, ARGUMENT_FRAGMENT) {
            out.push(chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}),
                None,
            ));
        }
    }
    let finish = if a.tool_call.is_some() {
        "tool_calls"
    } else {
        "stop"
    };
    out.push(chunk(json!({}), Some(finish)));
    if ctx.include_usage && a.usage {
        out.push(sse_data(&json!({
            "id": format!("chatcmpl-fake-{}", ctx.id),
            "object": "chat.completion.chunk",
            "created": ctx.created,
            "model": ctx.model,
            "system_fingerprint": null,
            "choices": [],
            "usage": openai_usage(a),
        })));
    }
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

fn anthropic_events(ctx: &Ctx<'_>, a: &Answer<'_>) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut message = json!({
        "id": format!("msg_fake_{}", ctx.id),
        "type": "message",
        "role": "assistant",
        "model": ctx.model,
        "content": [],
        "stop_reason": null,
        "stop_sequence": null,
    });
    if a.usage {
        message["usage"] = json!({"input_tokens": a.prompt_tokens, "output_tokens": 1});
    }
    out.push(sse_event(
        "message_start",
        &json!({"type": "message_start", "message": message}),
    ));

    let mut index = 0;
    if a.has_text_block() {
        out.push(sse_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
        ));
        out.push(sse_event("ping", &json!({"type": "ping"})));
        for word in words(a.text) {
            out.push(sse_event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": word}}),
            ));
        }
        out.push(sse_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        ));
        index += 1;
    }
    if let Some((name, args)) = a.tool_call {
        out.push(sse_event(
            "content_block_start",
            &json!({
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "tool_use", "id": format!("toolu_fake_{}", ctx.id), "name": name, "input": {}},
            }),
        ));
        if index == 0 {
            out.push(sse_event("ping", &json!({"type": "ping"})));
        }
        for fragment in fragments(args, ARGUMENT_FRAGMENT) {
            out.push(sse_event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": fragment}}),
            ));
        }
        out.push(sse_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        ));
    }

    let mut delta = json!({
        "type": "message_delta",
        "delta": {"stop_reason": anthropic_stop_reason(a), "stop_sequence": null},
    });
    if a.usage {
        delta["usage"] = json!({"output_tokens": a.completion_tokens});
    }
    out.push(sse_event("message_delta", &delta));
    out.push(sse_event("message_stop", &json!({"type": "message_stop"})));
    out
}

/// `text` in pieces that each start at a word, with the whitespace before it,
/// so that the pieces concatenate back to `text`.
fn words(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut prev_ws = true;
    for (i, c) in text.char_indices() {
        let ws = c.is_whitespace();
        if ws && !prev_ws && i > start {
            out.push(&text[start..i]);
            start = i;
        }
        prev_ws = ws;
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// `s` in pieces of about `size` bytes, cut at character boundaries.
fn fragments(s: &str, size: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < s.len() {
        let mut end = (start + size).min(s.len());
        while !s.is_char_boundary(end) {
            end += 1;
        }
        out.push(&s[start..end]);
        start = end;
    }
    out
}

fn to_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).expect("serialize JSON"))
}

fn sse_data(v: &Value) -> Bytes {
    let mut buf = Vec::with_capacity(320);
    buf.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut buf, v).expect("serialize JSON");
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

fn sse_event(name: &str, v: &Value) -> Bytes {
    let mut buf = Vec::with_capacity(320);
    buf.extend_from_slice(b"event: ");
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b"\ndata: ");
    serde_json::to_writer(&mut buf, v).expect("serialize JSON");
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

fn json_response(status: StatusCode, v: &Value) -> Response<FakeBody> {
    let mut response = Response::new(FakeBody::full(to_bytes(v)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn sse_response(
    chunks: Vec<Bytes>,
    delay: Duration,
    end: End,
    state: &Arc<State>,
) -> Response<FakeBody> {
    let mut response = Response::new(FakeBody::stream(chunks, delay, end, Some(state.clone())));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// How a body ends once its chunks are sent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Clean,
    /// With an error, which makes hyper close the connection mid-message.
    Abort,
}

/// A response body: whole, or chunks with pauses between them. A streaming
/// body dropped before its end counts as a client disconnect.
struct FakeBody {
    chunks: VecDeque<Bytes>,
    delay: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    end: End,
    exact: Option<u64>,
    /// Set for bodies whose early drop counts as a disconnect.
    state: Option<Arc<State>>,
    flushed: bool,
    done: bool,
}

impl FakeBody {
    fn full(bytes: Bytes) -> FakeBody {
        let len = bytes.len() as u64;
        let mut body = FakeBody::stream(vec![bytes], Duration::ZERO, End::Clean, None);
        body.exact = Some(len);
        body
    }

    fn stream(
        chunks: Vec<Bytes>,
        delay: Duration,
        end: End,
        state: Option<Arc<State>>,
    ) -> FakeBody {
        FakeBody {
            chunks: chunks.into(),
            delay,
            sleep: None,
            end,
            exact: None,
            state,
            flushed: false,
            done: false,
        }
    }
}

impl Body for FakeBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(sleep) = this.sleep.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
        }
        if let Some(chunk) = this.chunks.pop_front() {
            let more = !this.chunks.is_empty() || this.end == End::Abort;
            if more && !this.delay.is_zero() {
                this.sleep = Some(Box::pin(tokio::time::sleep(this.delay)));
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match this.end {
            End::Clean => {
                this.done = true;
                Poll::Ready(None)
            }
            End::Abort if !this.flushed => {
                // Give hyper a turn to flush what was sent before failing.
                this.flushed = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            End::Abort => {
                this.done = true;
                Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the fake upstream was told to die mid-stream",
                ))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.exact {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for FakeBody {
    fn drop(&mut self) {
        if !self.done
            && let Some(state) = &self.state
        {
            state.client_left();
        }
    }
}
