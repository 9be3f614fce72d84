//! ask: cairn's guest that asks the model through the sidecar, a
//! `wasm32-wasip2` component that speaks HTTP through `wasi:http` (with the
//! client the guests share, `guests/wasi-post`).
//!
//! It is what cairn's tests run to exercise the sidecar, and the simplest
//! model-backed guest. Following the guest contract (docs/guest-contract.md):
//!
//! 1. parses the dispatch (one JSON object on stdin);
//! 2. a prompt `GET <url>` fetches that URL and replies `<status> <body>`
//!    (the body's first 4 KiB);
//! 3. any other prompt is sent to `$OPENAI_BASE_URL/chat/completions` as one
//!    user message (model: the dispatch's, else `$CAIRN_MODEL`, else
//!    `default`; `max_tokens` when the dispatch has one) and the reply is the
//!    assistant's message. A prompt `STREAM <text>` asks for a streamed (SSE)
//!    reply and writes a `progress` event per chunk. A prompt
//!    `REPEAT <n> <text>` makes n calls in a row, the reply being the last
//!    one's;
//! 4. logs `ask: <method> <url> -> <status>` on stderr per request.
//!
//! A failure (no `OPENAI_BASE_URL`, a refused or failed request, a non-2xx
//! answer from the model) writes an `error` event and a final
//! `error: <message>`, then exits with a failure.
//!
//! Build: `cargo build --release --target wasm32-wasip2`.

use std::io::{self, Read, Write};

use serde::Deserialize;
use serde_json::{Value, json};
use wasi::http::types::IncomingResponse;
use wasi_post::{read_body, send};

/// How much of a fetched body a `GET` prompt's reply shows.
const GET_SHOWN: usize = 4096;

/// The fields of the dispatch this guest uses; the others are ignored.
#[derive(Debug, Deserialize)]
struct Dispatch {
    prompt: String,
    model: Option<String>,
    max_tokens: Option<u64>,
}

/// Write one event as one line of stdout, flushed.
fn emit(event: &Value) {
    let mut out = io::stdout().lock();
    if writeln!(out, "{event}").and_then(|()| out.flush()).is_err() {
        eprintln!("ask: cannot write to stdout");
        std::process::exit(1);
    }
}

/// Report a failure as an `error` event and a final reply, and exit.
fn fail(message: &str) -> ! {
    emit(&json!({"type": "error", "message": message}));
    emit(&json!({"type": "final", "text": format!("error: {message}")}));
    std::process::exit(1);
}

/// Send a request (a POST of a JSON `body`, or a GET) and wait for the
/// response's head. Logs one line on stderr.
fn request(url: &str, body: Option<&[u8]>) -> Result<IncomingResponse, String> {
    let method = if body.is_some() { "POST" } else { "GET" };
    let result = send(url, body);
    match &result {
        Ok(response) => eprintln!("ask: {method} {url} -> {}", response.status()),
        Err(e) => eprintln!("ask: {method} {url} -> error: {e}"),
    }
    result
}

/// The body's first `limit` bytes (all of it if shorter), as text.
fn read_text(response: &IncomingResponse, limit: usize) -> Result<String, String> {
    let mut text = Vec::new();
    read_body(response, |bytes| {
        text.extend_from_slice(bytes);
        text.len() < limit
    })?;
    text.truncate(limit);
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// One chat completion; returns the assistant's text.
fn ask(url: &str, body: &[u8], stream: bool) -> Result<String, String> {
    let response = request(url, Some(body))?;
    let status = response.status();
    if !(200..300).contains(&status) {
        let text = read_text(&response, usize::MAX)?;
        return Err(format!("model answered {status}: {text}"));
    }
    if !stream {
        let reply: Value = serde_json::from_str(&read_text(&response, usize::MAX)?)
            .map_err(|e| format!("bad reply from the model: {e}"))?;
        let message = &reply["choices"][0]["message"];
        return match (&message["content"], &message["tool_calls"]) {
            (Value::String(text), _) => Ok(text.clone()),
            (Value::Null, calls @ Value::Array(_)) => Ok(format!("tool_calls: {calls}")),
            _ => Err(format!("reply has no choices[0].message.content: {reply}")),
        };
    }
    let (mut text, mut pending, mut end) = (String::new(), Vec::new(), None);
    read_body(&response, |bytes| {
        pending.extend_from_slice(bytes);
        while let Some(at) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=at).collect();
            end = sse_line(&String::from_utf8_lossy(&line), &mut text);
            if end.is_some() {
                return false;
            }
        }
        true
    })?;
    let end = end.unwrap_or_else(|| Err("the stream ended before data: [DONE]".to_string()));
    end.map(|()| text)
}

/// One line of server-sent events (`data: {json}`, the last `data: [DONE]`):
/// adds a chunk's content to `text`; `Some` at the end or on a bad chunk.
fn sse_line(line: &str, text: &mut String) -> Option<Result<(), String>> {
    let data = line.trim_end().strip_prefix("data:")?.trim();
    if data == "[DONE]" {
        return Some(Ok(()));
    }
    match serde_json::from_str::<Value>(data) {
        Ok(chunk) => {
            text.push_str(
                chunk["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap_or_default(),
            );
            emit(&json!({"type": "progress", "message": "chunk"}));
            None
        }
        Err(e) => Some(Err(format!("bad stream chunk {data:?}: {e}"))),
    }
}

fn run() -> Result<String, String> {
    let mut input = String::new();
    io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("cannot read the dispatch: {e}"))?;
    let dispatch: Dispatch =
        serde_json::from_str(input.trim_end()).map_err(|e| format!("bad dispatch: {e}"))?;

    if let Some(url) = dispatch.prompt.strip_prefix("GET ") {
        let response = request(url.trim(), None)?;
        return Ok(format!(
            "{} {}",
            response.status(),
            read_text(&response, GET_SHOWN)?
        ));
    }

    let base = std::env::var("OPENAI_BASE_URL").map_err(|_| "OPENAI_BASE_URL is not set")?;
    let url = format!("{}/chat/completions", base.trim_end_matches('/'));
    let (calls, prompt) = match dispatch.prompt.strip_prefix("REPEAT ") {
        Some(rest) => {
            let (n, text) = rest.split_once(' ').unwrap_or((rest, ""));
            (n.parse::<u32>().unwrap_or(1), text)
        }
        None => (1, dispatch.prompt.as_str()),
    };
    let (prompt, stream) = match prompt.strip_prefix("STREAM ") {
        Some(rest) => (rest, true),
        None => (prompt, false),
    };
    let model = dispatch.model.or_else(|| std::env::var("CAIRN_MODEL").ok());
    let mut body = json!({
        "model": model.as_deref().unwrap_or("default"),
        "messages": [{"role": "user", "content": prompt}],
    });
    if let Some(max_tokens) = dispatch.max_tokens {
        body["max_tokens"] = json!(max_tokens);
    }
    if stream {
        body["stream"] = json!(true);
    }
    let body = body.to_string().into_bytes();

    let mut reply = String::new();
    for _ in 0..calls.max(1) {
        reply = ask(&url, &body, stream)?;
    }
    Ok(reply)
}

fn main() {
    match run() {
        Ok(text) => emit(&json!({"type": "final", "text": text})),
        Err(message) => {
            eprintln!("ask: {message}");
            fail(&message);
        }
    }
}
