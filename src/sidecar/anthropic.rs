//! Translation between the OpenAI Chat Completions API and Anthropic's Messages API.
//!
//! The gateway speaks Chat Completions to its clients. When a model is served by
//! Anthropic, [`to_messages_request`] turns the client's request body into a Messages
//! request, [`to_chat_completion`] turns a non-streaming Messages response back into a
//! `chat.completion` object, and [`StreamTranslator`] turns the Messages SSE events of a
//! streaming response into `chat.completion.chunk` objects.
//!
//! Translated: system and developer messages (joined into the top-level `system`), text
//! and image content, PDF `file` parts given inline as `data:` URLs, assistant tool calls,
//! tool results, function tools, `tool_choice`, `parallel_tool_calls: false`, token
//! limits, `temperature`, `top_p`, `stop`, `stream` and `user`.
//!
//! Not translated:
//! - `n` greater than 1 is rejected; Anthropic returns one choice.
//! - Audio, in either direction: `input_audio` content parts are rejected, and the
//!   `audio` and `modalities` options are ignored.
//! - Uploaded files referenced by `file_id` are rejected.
//! - `logprobs`, `top_logprobs`, `logit_bias`, `seed`, `presence_penalty`,
//!   `frequency_penalty`, `response_format`, `reasoning_effort`, `prediction`,
//!   `service_tier`, `store`, `metadata`, `web_search_options` and `stream_options` are
//!   ignored. (The usage chunk is always produced when streaming; the caller drops it
//!   when the client did not ask for it.)
//! - The legacy `functions`/`function_call` fields and `function` role messages.
//! - Message `name` fields.
//! - Anthropic thinking, redacted thinking, server tool and citation content in
//!   responses is dropped.
//! - Values are passed on as given: Anthropic accepts `temperature` only up to 1, and
//!   some Claude models refuse requests that set both `temperature` and `top_p`; such
//!   requests fail upstream.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

/// The `anthropic-version` header value sent upstream.
pub const API_VERSION: &str = "2023-06-01";

/// Default `max_tokens` when the OpenAI request gives neither `max_completion_tokens` nor
/// `max_tokens` (Anthropic requires one).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// An OpenAI chat-completions request body -> an Anthropic Messages request body for
/// upstream model `model`.
///
/// Errors name the offending field, e.g.
/// `messages[2].tool_calls[0].function.arguments is not valid JSON`.
pub fn to_messages_request(openai: &Value, model: &str) -> Result<Value, String> {
    let req = openai
        .as_object()
        .ok_or("request body is not a JSON object")?;

    if let Some(n) = present(req, "n") {
        match n.as_u64() {
            Some(0 | 1) => {}
            Some(_) => return Err("n > 1 is not supported by Anthropic".into()),
            None => return Err("n is not a positive integer".into()),
        }
    }

    let messages = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("messages is missing or not an array")?;

    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for (i, msg) in messages.iter().enumerate() {
        let role = msg
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("messages[{i}].role is missing or not a string"))?;
        match role {
            "system" | "developer" => {
                let text = plain_text(msg.get("content"), &format!("messages[{i}].content"))?;
                if !text.is_empty() {
                    system.push(text);
                }
            }
            "user" => push_turn(&mut turns, Role::User, user_blocks(msg, i)?),
            "assistant" => push_turn(&mut turns, Role::Assistant, assistant_blocks(msg, i)?),
            "tool" => push_turn(&mut turns, Role::User, vec![tool_result(msg, i)?]),
            other => return Err(format!("messages[{i}].role \"{other}\" is not supported")),
        }
    }
    if turns.is_empty() {
        return Err("messages has no user or assistant content".into());
    }

    let mut out = Map::new();
    out.insert("model".into(), Value::String(model.to_owned()));
    out.insert("max_tokens".into(), json!(max_tokens(req)?));
    if !system.is_empty() {
        out.insert("system".into(), Value::String(system.join("\n\n")));
    }
    out.insert(
        "messages".into(),
        Value::Array(turns.into_iter().map(Turn::into_value).collect()),
    );

    let tools = match present(req, "tools") {
        Some(tools) => convert_tools(tools)?,
        None => Vec::new(),
    };
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = convert_tool_choice(req)? {
            out.insert("tool_choice".into(), choice);
        }
    }

    for key in ["temperature", "top_p"] {
        if let Some(v) = present(req, key) {
            if !v.is_number() {
                return Err(format!("{key} is not a number"));
            }
            out.insert(key.into(), v.clone());
        }
    }

    if let Some(stop) = present(req, "stop") {
        let sequences = stop_sequences(stop)?;
        if !sequences.is_empty() {
            out.insert("stop_sequences".into(), json!(sequences));
        }
    }

    if let Some(stream) = present(req, "stream") {
        let stream = stream.as_bool().ok_or("stream is not a boolean")?;
        out.insert("stream".into(), Value::Bool(stream));
    }

    if let Some(user) = present(req, "user") {
        let user = user.as_str().ok_or("user is not a string")?;
        if !user.is_empty() {
            out.insert("metadata".into(), json!({ "user_id": user }));
        }
    }

    Ok(Value::Object(out))
}

/// A non-streaming Anthropic Messages response -> an OpenAI `chat.completion` object whose
/// `model` is `model`.
pub fn to_chat_completion(resp: &Value, model: &str, created: i64) -> Result<Value, String> {
    if let Some(message) = error_message(resp) {
        return Err(format!("upstream error: {message}"));
    }
    let content = resp
        .get("content")
        .and_then(Value::as_array)
        .ok_or("response is not a message: content array is missing")?;
    let id = resp.get("id").and_then(Value::as_str).unwrap_or_default();

    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for (i, block) in content.iter().enumerate() {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                text.push_str(
                    block
                        .get("text")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                );
            }
            Some("tool_use") => {
                let call_id = block
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("response content[{i}].id is missing"))?;
                let name = block
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("response content[{i}].name is missing"))?;
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(json!({
                    "id": call_id,
                    "type": "function",
                    "function": { "name": name, "arguments": input.to_string() },
                }));
            }
            _ => {}
        }
    }

    let content = if text.is_empty() && !tool_calls.is_empty() {
        Value::Null
    } else {
        Value::String(text)
    };
    let mut message = json!({ "role": "assistant", "content": content, "refusal": null });
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }

    let finish_reason = resp
        .get("stop_reason")
        .and_then(Value::as_str)
        .map_or(Value::Null, |r| Value::String(finish_reason(r).into()));
    let tokens = resp
        .get("usage")
        .map(Tokens::from_usage)
        .unwrap_or_default();

    Ok(json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
        "usage": tokens.openai_usage(),
    }))
}

/// The message of an Anthropic error body (`{"type":"error","error":{"type":..,"message":..}}`),
/// if it is one.
pub fn error_message(body: &Value) -> Option<String> {
    if body.get("type").and_then(Value::as_str) != Some("error") {
        return None;
    }
    let error = body.get("error")?;
    let message = error.get("message").and_then(Value::as_str)?;
    Some(message.to_owned())
}

/// Translates an Anthropic SSE stream into OpenAI `chat.completion.chunk` objects, event by
/// event.
pub struct StreamTranslator {
    model: String,
    created: i64,
    id: String,
    started: bool,
    finished: bool,
    tokens: Tokens,
    /// Anthropic content block index -> OpenAI tool call index.
    tool_blocks: HashMap<u64, u64>,
    next_tool: u64,
    finish_sent: bool,
}

impl StreamTranslator {
    /// A translator whose chunks carry `model` and `created`.
    pub fn new(model: &str, created: i64) -> Self {
        Self {
            model: model.to_owned(),
            created,
            id: String::new(),
            started: false,
            finished: false,
            tokens: Tokens::default(),
            tool_blocks: HashMap::new(),
            next_tool: 0,
            finish_sent: false,
        }
    }

    /// Feeds one SSE event: its `event:` name and its parsed `data:` JSON. Returns the
    /// OpenAI chunks to send (possibly none). An empty `event` name falls back to the
    /// data's `type`.
    pub fn event(&mut self, event: &str, data: &Value) -> Result<Vec<Value>, String> {
        let name = if event.is_empty() {
            data.get("type").and_then(Value::as_str).unwrap_or_default()
        } else {
            event
        };
        match name {
            "message_start" => Ok(self.message_start(data)),
            "content_block_start" => Ok(self.block_start(data)),
            "content_block_delta" => Ok(self.block_delta(data)),
            "message_delta" => Ok(self.message_delta(data)),
            "message_stop" => {
                self.finished = true;
                Ok(vec![self.usage_chunk()])
            }
            "error" => Err(error_message(data)
                .or_else(|| {
                    data.pointer("/error/message")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| "upstream stream error".into())),
            _ => Ok(Vec::new()),
        }
    }

    /// (prompt_tokens, completion_tokens) seen so far, if message_start arrived.
    pub fn usage(&self) -> Option<(u64, u64)> {
        self.started
            .then(|| (self.tokens.prompt(), self.tokens.output))
    }

    /// Whether message_stop arrived.
    pub fn finished(&self) -> bool {
        self.finished
    }

    fn message_start(&mut self, data: &Value) -> Vec<Value> {
        let message = data.get("message").unwrap_or(&Value::Null);
        if let Some(id) = message.get("id").and_then(Value::as_str) {
            self.id = id.to_owned();
        }
        if let Some(usage) = message.get("usage") {
            self.tokens = Tokens::from_usage(usage);
        }
        self.started = true;
        vec![self.chunk(json!({ "role": "assistant", "content": "" }), None)]
    }

    fn block_start(&mut self, data: &Value) -> Vec<Value> {
        let block = data.get("content_block").unwrap_or(&Value::Null);
        match block.get("type").and_then(Value::as_str) {
            Some("tool_use") => {
                let Some(block_index) = data.get("index").and_then(Value::as_u64) else {
                    return Vec::new();
                };
                let index = self.next_tool;
                self.next_tool += 1;
                self.tool_blocks.insert(block_index, index);
                let id = block.get("id").and_then(Value::as_str).unwrap_or_default();
                let name = block
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                vec![self.chunk(
                    json!({ "tool_calls": [{
                        "index": index,
                        "id": id,
                        "type": "function",
                        "function": { "name": name, "arguments": "" },
                    }] }),
                    None,
                )]
            }
            Some("text") => match block.get("text").and_then(Value::as_str) {
                Some(text) if !text.is_empty() => {
                    vec![self.chunk(json!({ "content": text }), None)]
                }
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    fn block_delta(&mut self, data: &Value) -> Vec<Value> {
        let delta = data.get("delta").unwrap_or(&Value::Null);
        match delta.get("type").and_then(Value::as_str) {
            Some("text_delta") => match delta.get("text").and_then(Value::as_str) {
                Some(text) if !text.is_empty() => {
                    vec![self.chunk(json!({ "content": text }), None)]
                }
                _ => Vec::new(),
            },
            Some("input_json_delta") => {
                let partial = delta
                    .get("partial_json")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                // Blocks that are not client tool calls (e.g. server tools) also stream
                // input_json_delta; only mapped blocks are forwarded.
                let index = data
                    .get("index")
                    .and_then(Value::as_u64)
                    .and_then(|b| self.tool_blocks.get(&b).copied());
                match index {
                    Some(index) if !partial.is_empty() => vec![self.chunk(
                        json!({ "tool_calls": [{
                            "index": index,
                            "function": { "arguments": partial },
                        }] }),
                        None,
                    )],
                    _ => Vec::new(),
                }
            }
            _ => Vec::new(),
        }
    }

    fn message_delta(&mut self, data: &Value) -> Vec<Value> {
        if let Some(usage) = data.get("usage") {
            self.tokens.update(usage);
        }
        let Some(reason) = data.pointer("/delta/stop_reason").and_then(Value::as_str) else {
            return Vec::new();
        };
        if self.finish_sent {
            return Vec::new();
        }
        self.finish_sent = true;
        vec![self.chunk(json!({}), Some(finish_reason(reason)))]
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": format!("chatcmpl-{}", self.id),
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish_reason }],
        })
    }

    fn usage_chunk(&self) -> Value {
        json!({
            "id": format!("chatcmpl-{}", self.id),
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": self.tokens.openai_usage(),
        })
    }
}

/// Anthropic stop_reason -> OpenAI finish_reason.
fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// Anthropic token counts.
#[derive(Clone, Copy, Debug, Default)]
struct Tokens {
    input: u64,
    cache_creation: u64,
    cache_read: u64,
    output: u64,
}

impl Tokens {
    fn from_usage(usage: &Value) -> Self {
        let mut tokens = Self::default();
        tokens.update(usage);
        tokens
    }

    /// Overwrites the counts present in `usage` (Anthropic reports cumulative counts).
    fn update(&mut self, usage: &Value) {
        let fields = [
            ("input_tokens", &mut self.input),
            ("cache_creation_input_tokens", &mut self.cache_creation),
            ("cache_read_input_tokens", &mut self.cache_read),
            ("output_tokens", &mut self.output),
        ];
        for (key, slot) in fields {
            if let Some(n) = usage.get(key).and_then(Value::as_u64) {
                *slot = n;
            }
        }
    }

    fn prompt(&self) -> u64 {
        self.input + self.cache_creation + self.cache_read
    }

    fn openai_usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt(),
            "completion_tokens": self.output,
            "total_tokens": self.prompt() + self.output,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    User,
    Assistant,
}

/// One Anthropic message under construction.
struct Turn {
    role: Role,
    blocks: Vec<Value>,
}

impl Turn {
    fn into_value(self) -> Value {
        let role = match self.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        let mut blocks = self.blocks;
        if self.role == Role::User {
            // Anthropic wants tool results before any other content of a user turn.
            let (mut results, rest): (Vec<Value>, Vec<Value>) = blocks
                .into_iter()
                .partition(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"));
            results.extend(rest);
            blocks = results;
        }
        json!({ "role": role, "content": blocks })
    }
}

/// Appends `blocks` as a `role` turn, merging into the previous turn of the same role
/// (Anthropic requires alternating roles). Empty messages are dropped.
fn push_turn(turns: &mut Vec<Turn>, role: Role, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some(last) if last.role == role => last.blocks.extend(blocks),
        _ => turns.push(Turn { role, blocks }),
    }
}

/// The value of `key` unless absent or null.
fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn max_tokens(req: &Map<String, Value>) -> Result<u64, String> {
    for key in ["max_completion_tokens", "max_tokens"] {
        if let Some(v) = present(req, key) {
            return match v.as_u64() {
                Some(n) if n > 0 => Ok(n),
                _ => Err(format!("{key} is not a positive integer")),
            };
        }
    }
    Ok(DEFAULT_MAX_TOKENS)
}

fn stop_sequences(stop: &Value) -> Result<Vec<String>, String> {
    match stop {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("stop[{i}] is not a string"))
            })
            .collect(),
        _ => Err("stop is not a string or a list of strings".into()),
    }
}

/// Text of a content value that may only hold text: a string, or an array of text parts.
fn plain_text(content: Option<&Value>, path: &str) -> Result<String, String> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                let kind = part.get("type").and_then(Value::as_str);
                if kind != Some("text") {
                    return Err(format!("{path}[{j}] is not a text part"));
                }
                let text = part
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("{path}[{j}].text is missing or not a string"))?;
                texts.push(text);
            }
            Ok(texts.join("\n"))
        }
        Some(_) => Err(format!("{path} is not a string or an array of parts")),
    }
}

fn text_block(text: &str) -> Value {
    json!({ "type": "text", "text": text })
}

fn user_blocks(msg: &Value, i: usize) -> Result<Vec<Value>, String> {
    let path = format!("messages[{i}].content");
    match msg.get("content") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![text_block(s)]),
        Some(Value::Array(parts)) => {
            let mut blocks = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                if let Some(block) = user_part(part, &format!("{path}[{j}]"))? {
                    blocks.push(block);
                }
            }
            Ok(blocks)
        }
        Some(_) => Err(format!("{path} is not a string or an array of parts")),
    }
}

/// One user content part -> an Anthropic block (None for empty text).
fn user_part(part: &Value, path: &str) -> Result<Option<Value>, String> {
    let kind = part
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{path}.type is missing"))?;
    match kind {
        "text" => {
            let text = part
                .get("text")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{path}.text is missing or not a string"))?;
            Ok((!text.is_empty()).then(|| text_block(text)))
        }
        "image_url" => {
            let image = part.get("image_url");
            let url = image
                .and_then(|v| v.as_str().or_else(|| v.get("url").and_then(Value::as_str)))
                .ok_or_else(|| format!("{path}.image_url.url is missing"))?;
            let url_path = format!("{path}.image_url.url");
            let source = if url.starts_with("data:") {
                let (media_type, data) = parse_data_url(url, &url_path)?;
                json!({ "type": "base64", "media_type": media_type, "data": data })
            } else if url.starts_with("https://") || url.starts_with("http://") {
                json!({ "type": "url", "url": url })
            } else {
                return Err(format!("{url_path} is not a data: or http(s) URL"));
            };
            Ok(Some(json!({ "type": "image", "source": source })))
        }
        "file" => {
            let file = part.get("file").unwrap_or(&Value::Null);
            if file.get("file_id").is_some_and(|v| !v.is_null()) {
                return Err(format!("{path}.file.file_id is not supported"));
            }
            let data_url = file
                .get("file_data")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{path}.file.file_data is missing"))?;
            let file_path = format!("{path}.file.file_data");
            let (media_type, data) = parse_data_url(data_url, &file_path)?;
            if media_type != "application/pdf" {
                return Err(format!("{file_path} is not a PDF"));
            }
            let mut block = json!({
                "type": "document",
                "source": { "type": "base64", "media_type": media_type, "data": data },
            });
            if let Some(name) = file.get("filename").and_then(Value::as_str) {
                block["title"] = Value::String(name.to_owned());
            }
            Ok(Some(block))
        }
        other => Err(format!("{path}.type \"{other}\" is not supported")),
    }
}

/// `data:<media type>[;params];base64,<data>` -> (media type, data).
fn parse_data_url<'a>(url: &'a str, path: &str) -> Result<(&'a str, &'a str), String> {
    let invalid = || format!("{path} is not a base64 data: URL");
    let rest = url.strip_prefix("data:").ok_or_else(invalid)?;
    let (meta, data) = rest.split_once(',').ok_or_else(invalid)?;
    let mut params = meta.split(';');
    let media_type = params.next().unwrap_or_default();
    if media_type.is_empty() || !params.any(|p| p == "base64") {
        return Err(invalid());
    }
    Ok((media_type, data))
}

fn assistant_blocks(msg: &Value, i: usize) -> Result<Vec<Value>, String> {
    let path = format!("messages[{i}].content");
    let mut blocks = Vec::new();
    match msg.get("content") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            if !s.is_empty() {
                blocks.push(text_block(s));
            }
        }
        Some(Value::Array(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                let text = match part.get("type").and_then(Value::as_str) {
                    Some("text") => part.get("text"),
                    Some("refusal") => part.get("refusal"),
                    _ => return Err(format!("{path}[{j}] is not a text or refusal part")),
                };
                let text = text
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("{path}[{j}] has no text"))?;
                if !text.is_empty() {
                    blocks.push(text_block(text));
                }
            }
        }
        Some(_) => return Err(format!("{path} is not a string or an array of parts")),
    }

    if let Some(calls) = msg.get("tool_calls").filter(|v| !v.is_null()) {
        let calls = calls
            .as_array()
            .ok_or_else(|| format!("messages[{i}].tool_calls is not an array"))?;
        for (k, call) in calls.iter().enumerate() {
            blocks.push(tool_use(call, &format!("messages[{i}].tool_calls[{k}]"))?);
        }
    }
    Ok(blocks)
}

/// An OpenAI assistant tool call -> an Anthropic `tool_use` block.
fn tool_use(call: &Value, path: &str) -> Result<Value, String> {
    let kind = call
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("function");
    if kind != "function" {
        return Err(format!("{path}.type \"{kind}\" is not supported"));
    }
    let id = call
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{path}.id is missing"))?;
    let function = call
        .get("function")
        .ok_or_else(|| format!("{path}.function is missing"))?;
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{path}.function.name is missing"))?;
    let arguments = match function.get("arguments") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(format!("{path}.function.arguments is not a string")),
    };
    let input = if arguments.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str::<Value>(arguments)
            .map_err(|_| format!("{path}.function.arguments is not valid JSON"))?
    };
    if !input.is_object() {
        return Err(format!("{path}.function.arguments is not a JSON object"));
    }
    Ok(json!({ "type": "tool_use", "id": id, "name": name, "input": input }))
}

/// An OpenAI `tool` message -> an Anthropic `tool_result` block.
fn tool_result(msg: &Value, i: usize) -> Result<Value, String> {
    let id = msg
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("messages[{i}].tool_call_id is missing"))?;
    let text = plain_text(msg.get("content"), &format!("messages[{i}].content"))?;
    let mut block = json!({ "type": "tool_result", "tool_use_id": id });
    if !text.is_empty() {
        block["content"] = Value::String(text);
    }
    Ok(block)
}

fn convert_tools(tools: &Value) -> Result<Vec<Value>, String> {
    let tools = tools.as_array().ok_or("tools is not an array")?;
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let kind = tool.get("type").and_then(Value::as_str).unwrap_or_default();
        if kind != "function" {
            return Err(format!("tools[{i}].type \"{kind}\" is not supported"));
        }
        let function = tool
            .get("function")
            .ok_or_else(|| format!("tools[{i}].function is missing"))?;
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("tools[{i}].function.name is missing"))?;
        let schema = match function.get("parameters") {
            None | Some(Value::Null) => json!({ "type": "object", "properties": {} }),
            Some(p) if p.is_object() => p.clone(),
            Some(_) => return Err(format!("tools[{i}].function.parameters is not an object")),
        };
        let mut converted = json!({ "name": name, "input_schema": schema });
        if let Some(description) = function.get("description").and_then(Value::as_str) {
            converted["description"] = Value::String(description.to_owned());
        }
        out.push(converted);
    }
    Ok(out)
}

/// `tool_choice` and `parallel_tool_calls` -> Anthropic `tool_choice`.
fn convert_tool_choice(req: &Map<String, Value>) -> Result<Option<Value>, String> {
    let sequential = match present(req, "parallel_tool_calls") {
        Some(v) => !v.as_bool().ok_or("parallel_tool_calls is not a boolean")?,
        None => false,
    };
    let mut choice = match present(req, "tool_choice") {
        None => {
            if !sequential {
                return Ok(None);
            }
            json!({ "type": "auto" })
        }
        Some(Value::String(s)) => match s.as_str() {
            "auto" => json!({ "type": "auto" }),
            "none" => return Ok(Some(json!({ "type": "none" }))),
            "required" => json!({ "type": "any" }),
            other => return Err(format!("tool_choice \"{other}\" is not supported")),
        },
        Some(obj @ Value::Object(_)) => {
            if obj.get("type").and_then(Value::as_str) != Some("function") {
                return Err("tool_choice.type is not \"function\"".into());
            }
            let name = obj
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or("tool_choice.function.name is missing")?;
            json!({ "type": "tool", "name": name })
        }
        Some(_) => return Err("tool_choice is not a string or an object".into()),
    };
    if sequential {
        choice["disable_parallel_tool_use"] = Value::Bool(true);
    }
    Ok(Some(choice))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(req: Value) -> Value {
        to_messages_request(&req, "claude-test").unwrap()
    }

    fn feed(t: &mut StreamTranslator, events: &[(&str, Value)]) -> Vec<Value> {
        let mut out = Vec::new();
        for (name, data) in events {
            out.extend(t.event(name, data).unwrap());
        }
        out
    }

    #[test]
    fn minimal_request_gets_defaults() {
        let out = convert(json!({
            "model": "gpt-x",
            "messages": [{ "role": "user", "content": "hi" }],
        }));
        assert_eq!(
            out,
            json!({
                "model": "claude-test",
                "max_tokens": DEFAULT_MAX_TOKENS,
                "messages": [{ "role": "user", "content": [{ "type": "text", "text": "hi" }] }],
            })
        );
    }

    #[test]
    fn system_and_developer_messages_join_into_system() {
        let out = convert(json!({
            "messages": [
                { "role": "system", "content": "Be brief." },
                { "role": "developer", "content": [
                    { "type": "text", "text": "Use metric" },
                    { "type": "text", "text": "units." },
                ] },
                { "role": "user", "content": "hi" },
            ],
        }));
        assert_eq!(out["system"], "Be brief.\n\nUse metric\nunits.");
        assert_eq!(out["messages"].as_array().unwrap().len(), 1);
        assert_eq!(out["messages"][0]["role"], "user");
    }

    #[test]
    fn system_with_image_is_rejected() {
        let err = to_messages_request(
            &json!({ "messages": [
                { "role": "system", "content": [{ "type": "image_url", "image_url": { "url": "https://x/y.png" } }] },
                { "role": "user", "content": "hi" },
            ] }),
            "m",
        )
        .unwrap_err();
        assert_eq!(err, "messages[0].content[0] is not a text part");
    }

    #[test]
    fn multi_part_user_content() {
        let out = convert(json!({
            "messages": [{ "role": "user", "content": [
                { "type": "text", "text": "What is in these?" },
                { "type": "image_url", "image_url": { "url": "data:image/png;base64,iVBORw0K", "detail": "high" } },
                { "type": "image_url", "image_url": { "url": "https://example.com/cat.jpg" } },
                { "type": "text", "text": "" },
                { "type": "file", "file": { "filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0" } },
            ] }],
        }));
        assert_eq!(
            out["messages"][0]["content"],
            json!([
                { "type": "text", "text": "What is in these?" },
                { "type": "image", "source": { "type": "base64", "media_type": "image/png", "data": "iVBORw0K" } },
                { "type": "image", "source": { "type": "url", "url": "https://example.com/cat.jpg" } },
                { "type": "document", "title": "a.pdf",
                  "source": { "type": "base64", "media_type": "application/pdf", "data": "JVBERi0" } },
            ])
        );
    }

    #[test]
    fn bad_image_url_and_audio_are_rejected() {
        let bad_scheme = to_messages_request(
            &json!({ "messages": [{ "role": "user", "content": [
                { "type": "image_url", "image_url": { "url": "ftp://x/y.png" } },
            ] }] }),
            "m",
        )
        .unwrap_err();
        assert_eq!(
            bad_scheme,
            "messages[0].content[0].image_url.url is not a data: or http(s) URL"
        );

        let not_base64 = to_messages_request(
            &json!({ "messages": [{ "role": "user", "content": [
                { "type": "image_url", "image_url": { "url": "data:image/png,rawbytes" } },
            ] }] }),
            "m",
        )
        .unwrap_err();
        assert_eq!(
            not_base64,
            "messages[0].content[0].image_url.url is not a base64 data: URL"
        );

        let audio = to_messages_request(
            &json!({ "messages": [{ "role": "user", "content": [
                { "type": "input_audio", "input_audio": { "data": "AAA", "format": "wav" } },
            ] }] }),
            "m",
        )
        .unwrap_err();
        assert_eq!(
            audio,
            "messages[0].content[0].type \"input_audio\" is not supported"
        );
    }

    #[test]
    fn tool_calls_and_results_round_trip() {
        let out = convert(json!({
            "messages": [
                { "role": "user", "content": "Weather in Paris and Oslo?" },
                { "role": "assistant", "content": "Checking.", "tool_calls": [
                    { "id": "call_1", "type": "function",
                      "function": { "name": "weather", "arguments": "{\"city\":\"Paris\"}" } },
                    { "id": "call_2", "type": "function",
                      "function": { "name": "weather", "arguments": "{\"city\":\"Oslo\"}" } },
                ] },
                { "role": "tool", "tool_call_id": "call_1", "content": "18C" },
                { "role": "tool", "tool_call_id": "call_2", "content": [{ "type": "text", "text": "9C" }] },
            ],
        }));
        assert_eq!(
            out["messages"],
            json!([
                { "role": "user", "content": [{ "type": "text", "text": "Weather in Paris and Oslo?" }] },
                { "role": "assistant", "content": [
                    { "type": "text", "text": "Checking." },
                    { "type": "tool_use", "id": "call_1", "name": "weather", "input": { "city": "Paris" } },
                    { "type": "tool_use", "id": "call_2", "name": "weather", "input": { "city": "Oslo" } },
                ] },
                { "role": "user", "content": [
                    { "type": "tool_result", "tool_use_id": "call_1", "content": "18C" },
                    { "type": "tool_result", "tool_use_id": "call_2", "content": "9C" },
                ] },
            ])
        );

        // The response side: tool_use blocks come back as tool_calls with compact arguments.
        let resp = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [
                { "type": "tool_use", "id": "toolu_1", "name": "weather", "input": { "city": "Paris", "days": 2 } },
            ],
            "stop_reason": "tool_use",
            "usage": { "input_tokens": 10, "output_tokens": 5 },
        });
        let completion = to_chat_completion(&resp, "gpt-x", 7).unwrap();
        let message = &completion["choices"][0]["message"];
        assert_eq!(message["content"], Value::Null);
        assert_eq!(
            message["tool_calls"],
            json!([{ "id": "toolu_1", "type": "function",
                     "function": { "name": "weather", "arguments": "{\"city\":\"Paris\",\"days\":2}" } }])
        );
        assert_eq!(completion["choices"][0]["finish_reason"], "tool_calls");

        // Feeding the translated call back in reproduces the tool_use block.
        let back = convert(json!({ "messages": [
            { "role": "user", "content": "go" },
            { "role": "assistant", "content": message["content"].clone(), "tool_calls": message["tool_calls"].clone() },
        ] }));
        assert_eq!(
            back["messages"][1]["content"],
            json!([{ "type": "tool_use", "id": "toolu_1", "name": "weather", "input": { "city": "Paris", "days": 2 } }])
        );
    }

    #[test]
    fn empty_arguments_become_empty_object() {
        let out = convert(json!({ "messages": [
            { "role": "user", "content": "go" },
            { "role": "assistant", "content": null, "tool_calls": [
                { "id": "c", "type": "function", "function": { "name": "now", "arguments": "" } },
            ] },
        ] }));
        assert_eq!(out["messages"][1]["content"][0]["input"], json!({}));
    }

    #[test]
    fn bad_arguments_json_names_the_field() {
        let err = to_messages_request(
            &json!({ "messages": [
                { "role": "system", "content": "s" },
                { "role": "user", "content": "go" },
                { "role": "assistant", "tool_calls": [
                    { "id": "c", "type": "function", "function": { "name": "f", "arguments": "{\"a\": " } },
                ] },
            ] }),
            "m",
        )
        .unwrap_err();
        assert_eq!(
            err,
            "messages[2].tool_calls[0].function.arguments is not valid JSON"
        );

        let not_object = to_messages_request(
            &json!({ "messages": [
                { "role": "user", "content": "go" },
                { "role": "assistant", "tool_calls": [
                    { "id": "c", "type": "function", "function": { "name": "f", "arguments": "[1]" } },
                ] },
            ] }),
            "m",
        )
        .unwrap_err();
        assert_eq!(
            not_object,
            "messages[1].tool_calls[0].function.arguments is not a JSON object"
        );
    }

    #[test]
    fn tool_results_merge_with_following_user_message_first() {
        let out = convert(json!({ "messages": [
            { "role": "user", "content": "go" },
            { "role": "assistant", "tool_calls": [
                { "id": "a", "type": "function", "function": { "name": "f", "arguments": "{}" } },
            ] },
            { "role": "user", "content": "also this" },
            { "role": "tool", "tool_call_id": "a", "content": "done" },
        ] }));
        assert_eq!(
            out["messages"][2],
            json!({ "role": "user", "content": [
                { "type": "tool_result", "tool_use_id": "a", "content": "done" },
                { "type": "text", "text": "also this" },
            ] })
        );
    }

    #[test]
    fn consecutive_same_role_messages_merge() {
        let out = convert(json!({ "messages": [
            { "role": "user", "content": "one" },
            { "role": "user", "content": "two" },
            { "role": "system", "content": "mid-conversation system" },
            { "role": "user", "content": "three" },
            { "role": "assistant", "content": "a" },
            { "role": "assistant", "content": "" },
            { "role": "assistant", "content": [{ "type": "text", "text": "b" }] },
            { "role": "user", "content": "" },
            { "role": "user", "content": "four" },
        ] }));
        assert_eq!(out["system"], "mid-conversation system");
        assert_eq!(
            out["messages"],
            json!([
                { "role": "user", "content": [
                    { "type": "text", "text": "one" },
                    { "type": "text", "text": "two" },
                    { "type": "text", "text": "three" },
                ] },
                { "role": "assistant", "content": [
                    { "type": "text", "text": "a" },
                    { "type": "text", "text": "b" },
                ] },
                { "role": "user", "content": [{ "type": "text", "text": "four" }] },
            ])
        );
    }

    #[test]
    fn tools_and_tool_choice_mapping() {
        let tools = json!([
            { "type": "function", "function": {
                "name": "weather", "description": "Current weather",
                "parameters": { "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] },
                "strict": true,
            } },
            { "type": "function", "function": { "name": "now" } },
        ]);
        let base = |choice: Value| {
            let mut req = json!({ "messages": [{ "role": "user", "content": "hi" }], "tools": tools.clone() });
            if !choice.is_null() {
                req["tool_choice"] = choice;
            }
            convert(req)
        };

        let out = base(Value::Null);
        assert_eq!(
            out["tools"],
            json!([
                { "name": "weather", "description": "Current weather",
                  "input_schema": { "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] } },
                { "name": "now", "input_schema": { "type": "object", "properties": {} } },
            ])
        );
        assert!(out.get("tool_choice").is_none());

        assert_eq!(
            base(json!("auto"))["tool_choice"],
            json!({ "type": "auto" })
        );
        assert_eq!(
            base(json!("none"))["tool_choice"],
            json!({ "type": "none" })
        );
        assert_eq!(
            base(json!("required"))["tool_choice"],
            json!({ "type": "any" })
        );
        assert_eq!(
            base(json!({ "type": "function", "function": { "name": "weather" } }))["tool_choice"],
            json!({ "type": "tool", "name": "weather" })
        );

        let sequential = convert(json!({
            "messages": [{ "role": "user", "content": "hi" }],
            "tools": tools.clone(),
            "parallel_tool_calls": false,
        }));
        assert_eq!(
            sequential["tool_choice"],
            json!({ "type": "auto", "disable_parallel_tool_use": true })
        );

        let no_tools = convert(json!({
            "messages": [{ "role": "user", "content": "hi" }],
            "tool_choice": "required",
        }));
        assert!(no_tools.get("tool_choice").is_none());
        assert!(no_tools.get("tools").is_none());

        let err = to_messages_request(
            &json!({ "messages": [{ "role": "user", "content": "hi" }],
                     "tools": [{ "type": "custom", "custom": { "name": "x" } }] }),
            "m",
        )
        .unwrap_err();
        assert_eq!(err, "tools[0].type \"custom\" is not supported");
    }

    #[test]
    fn sampling_options_and_metadata() {
        let out = convert(json!({
            "messages": [{ "role": "user", "content": "hi" }],
            "max_tokens": 100,
            "max_completion_tokens": 200,
            "temperature": 0.5,
            "top_p": 0.9,
            "stop": ["END", "STOP"],
            "stream": true,
            "stream_options": { "include_usage": true },
            "user": "u-42",
            "n": 1,
            "logprobs": false,
        }));
        assert_eq!(out["max_tokens"], 200);
        assert_eq!(out["temperature"], 0.5);
        assert_eq!(out["top_p"], 0.9);
        assert_eq!(out["stop_sequences"], json!(["END", "STOP"]));
        assert_eq!(out["stream"], true);
        assert_eq!(out["metadata"], json!({ "user_id": "u-42" }));
        assert!(out.get("stream_options").is_none());
        assert!(out.get("logprobs").is_none());

        let single = convert(json!({
            "messages": [{ "role": "user", "content": "hi" }],
            "max_tokens": 50,
            "stop": "END",
        }));
        assert_eq!(single["max_tokens"], 50);
        assert_eq!(single["stop_sequences"], json!(["END"]));
    }

    #[test]
    fn invalid_requests_are_rejected() {
        let n = to_messages_request(
            &json!({ "messages": [{ "role": "user", "content": "hi" }], "n": 2 }),
            "m",
        )
        .unwrap_err();
        assert_eq!(n, "n > 1 is not supported by Anthropic");

        let cases = [
            (json!([]), "request body is not a JSON object"),
            (json!({}), "messages is missing or not an array"),
            (
                json!({ "messages": [{ "role": "system", "content": "s" }] }),
                "messages has no user or assistant content",
            ),
            (
                json!({ "messages": [{ "role": "function", "content": "x" }] }),
                "messages[0].role \"function\" is not supported",
            ),
            (
                json!({ "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 0 }),
                "max_tokens is not a positive integer",
            ),
            (
                json!({ "messages": [{ "role": "user", "content": "hi" }], "stop": 5 }),
                "stop is not a string or a list of strings",
            ),
            (
                json!({ "messages": [{ "role": "user", "content": "hi" }], "tool_choice": "sometimes", "tools": [
                    { "type": "function", "function": { "name": "f" } },
                ] }),
                "tool_choice \"sometimes\" is not supported",
            ),
            (
                json!({ "messages": [{ "role": "user", "content": "hi" }, { "role": "tool", "content": "x" }] }),
                "messages[1].tool_call_id is missing",
            ),
        ];
        for (req, want) in cases {
            assert_eq!(to_messages_request(&req, "m").unwrap_err(), want);
        }
    }

    #[test]
    fn text_response_translates() {
        let resp = json!({
            "id": "msg_abc", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [
                { "type": "thinking", "thinking": "hmm", "signature": "sig" },
                { "type": "text", "text": "Hello, " },
                { "type": "text", "text": "world." },
            ],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": { "input_tokens": 12, "output_tokens": 4 },
        });
        let out = to_chat_completion(&resp, "gpt-x", 1_700_000_000).unwrap();
        assert_eq!(
            out,
            json!({
                "id": "chatcmpl-msg_abc",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": "gpt-x",
                "choices": [{
                    "index": 0,
                    "message": { "role": "assistant", "content": "Hello, world.", "refusal": null },
                    "logprobs": null,
                    "finish_reason": "stop",
                }],
                "usage": { "prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16 },
            })
        );
    }

    #[test]
    fn text_and_tool_calls_together() {
        let resp = json!({
            "id": "msg_t", "type": "message", "role": "assistant",
            "content": [
                { "type": "text", "text": "Let me look." },
                { "type": "tool_use", "id": "toolu_a", "name": "f", "input": {} },
            ],
            "stop_reason": "tool_use",
            "usage": { "input_tokens": 1, "output_tokens": 1 },
        });
        let out = to_chat_completion(&resp, "m", 0).unwrap();
        let message = &out["choices"][0]["message"];
        assert_eq!(message["content"], "Let me look.");
        assert_eq!(message["tool_calls"][0]["function"]["arguments"], "{}");
    }

    #[test]
    fn stop_reasons_map() {
        let cases = [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("pause_turn", "stop"),
            ("max_tokens", "length"),
            ("model_context_window_exceeded", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
            ("something_new", "stop"),
        ];
        for (anthropic, openai) in cases {
            let resp = json!({
                "id": "m", "type": "message", "content": [{ "type": "text", "text": "x" }],
                "stop_reason": anthropic, "usage": { "input_tokens": 1, "output_tokens": 1 },
            });
            let out = to_chat_completion(&resp, "m", 0).unwrap();
            assert_eq!(out["choices"][0]["finish_reason"], openai, "{anthropic}");
        }
    }

    #[test]
    fn usage_includes_cache_tokens() {
        let resp = json!({
            "id": "m", "type": "message", "content": [],
            "stop_reason": "end_turn",
            "usage": {
                "input_tokens": 10,
                "cache_creation_input_tokens": 200,
                "cache_read_input_tokens": 3000,
                "output_tokens": 7,
            },
        });
        let out = to_chat_completion(&resp, "m", 0).unwrap();
        assert_eq!(
            out["usage"],
            json!({ "prompt_tokens": 3210, "completion_tokens": 7, "total_tokens": 3217 })
        );
        assert_eq!(out["choices"][0]["message"]["content"], "");
    }

    #[test]
    fn non_message_bodies_are_errors() {
        assert_eq!(
            to_chat_completion(&json!({ "id": "x" }), "m", 0).unwrap_err(),
            "response is not a message: content array is missing"
        );
        let err = json!({ "type": "error", "error": { "type": "overloaded_error", "message": "Overloaded" } });
        assert_eq!(
            to_chat_completion(&err, "m", 0).unwrap_err(),
            "upstream error: Overloaded"
        );
    }

    #[test]
    fn error_message_extraction() {
        let body = json!({
            "type": "error",
            "error": { "type": "invalid_request_error", "message": "max_tokens: Field required" },
            "request_id": "req_1",
        });
        assert_eq!(
            error_message(&body).as_deref(),
            Some("max_tokens: Field required")
        );
        assert_eq!(
            error_message(&json!({ "type": "message", "content": [] })),
            None
        );
        assert_eq!(error_message(&json!({ "type": "error" })), None);
        assert_eq!(error_message(&json!("text")), None);
    }

    #[test]
    fn streamed_text_reply() {
        let mut t = StreamTranslator::new("gpt-x", 42);
        assert_eq!(t.usage(), None);
        assert!(!t.finished());
        let chunks = feed(
            &mut t,
            &[
                (
                    "message_start",
                    json!({ "type": "message_start", "message": {
                    "id": "msg_s", "type": "message", "role": "assistant", "content": [],
                    "model": "claude-x", "stop_reason": null, "stop_sequence": null,
                    "usage": { "input_tokens": 25, "cache_read_input_tokens": 5, "output_tokens": 1 },
                } }),
                ),
                (
                    "content_block_start",
                    json!({ "type": "content_block_start", "index": 0,
                    "content_block": { "type": "text", "text": "" } }),
                ),
                ("ping", json!({ "type": "ping" })),
                (
                    "content_block_delta",
                    json!({ "type": "content_block_delta", "index": 0,
                    "delta": { "type": "text_delta", "text": "Hello" } }),
                ),
                (
                    "content_block_delta",
                    json!({ "type": "content_block_delta", "index": 0,
                    "delta": { "type": "text_delta", "text": "!" } }),
                ),
                (
                    "content_block_stop",
                    json!({ "type": "content_block_stop", "index": 0 }),
                ),
                (
                    "message_delta",
                    json!({ "type": "message_delta",
                    "delta": { "stop_reason": "end_turn", "stop_sequence": null },
                    "usage": { "output_tokens": 15 } }),
                ),
            ],
        );
        assert_eq!(t.usage(), Some((30, 15)));
        assert!(!t.finished());
        let last = t
            .event("message_stop", &json!({ "type": "message_stop" }))
            .unwrap();
        assert!(t.finished());

        let head = |delta: Value, finish: Value| {
            json!({
                "id": "chatcmpl-msg_s", "object": "chat.completion.chunk", "created": 42, "model": "gpt-x",
                "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
            })
        };
        assert_eq!(
            chunks,
            vec![
                head(json!({ "role": "assistant", "content": "" }), Value::Null),
                head(json!({ "content": "Hello" }), Value::Null),
                head(json!({ "content": "!" }), Value::Null),
                head(json!({}), json!("stop")),
            ]
        );
        assert_eq!(
            last,
            vec![json!({
                "id": "chatcmpl-msg_s", "object": "chat.completion.chunk", "created": 42, "model": "gpt-x",
                "choices": [],
                "usage": { "prompt_tokens": 30, "completion_tokens": 15, "total_tokens": 45 },
            })]
        );
    }

    #[test]
    fn streamed_two_tool_calls() {
        let mut t = StreamTranslator::new("gpt-x", 1);
        let chunks = feed(
            &mut t,
            &[
                (
                    "message_start",
                    json!({ "type": "message_start", "message": {
                    "id": "msg_tools", "content": [], "usage": { "input_tokens": 100, "output_tokens": 1 },
                } }),
                ),
                // A text block first, so Anthropic block indexes and tool indexes differ.
                (
                    "content_block_start",
                    json!({ "type": "content_block_start", "index": 0,
                    "content_block": { "type": "text", "text": "" } }),
                ),
                (
                    "content_block_delta",
                    json!({ "type": "content_block_delta", "index": 0,
                    "delta": { "type": "text_delta", "text": "Checking both." } }),
                ),
                (
                    "content_block_stop",
                    json!({ "type": "content_block_stop", "index": 0 }),
                ),
                (
                    "content_block_start",
                    json!({ "type": "content_block_start", "index": 1,
                    "content_block": { "type": "tool_use", "id": "toolu_p", "name": "weather", "input": {} } }),
                ),
                (
                    "content_block_delta",
                    json!({ "type": "content_block_delta", "index": 1,
                    "delta": { "type": "input_json_delta", "partial_json": "" } }),
                ),
                (
                    "content_block_delta",
                    json!({ "type": "content_block_delta", "index": 1,
                    "delta": { "type": "input_json_delta", "partial_json": "{\"city\": " } }),
                ),
                (
                    "content_block_delta",
                    json!({ "type": "content_block_delta", "index": 1,
                    "delta": { "type": "input_json_delta", "partial_json": "\"Paris\"}" } }),
                ),
                (
                    "content_block_stop",
                    json!({ "type": "content_block_stop", "index": 1 }),
                ),
                (
                    "content_block_start",
                    json!({ "type": "content_block_start", "index": 2,
                    "content_block": { "type": "tool_use", "id": "toolu_o", "name": "weather", "input": {} } }),
                ),
                (
                    "content_block_delta",
                    json!({ "type": "content_block_delta", "index": 2,
                    "delta": { "type": "input_json_delta", "partial_json": "{\"city\": \"Oslo\"}" } }),
                ),
                (
                    "content_block_stop",
                    json!({ "type": "content_block_stop", "index": 2 }),
                ),
                (
                    "message_delta",
                    json!({ "type": "message_delta",
                    "delta": { "stop_reason": "tool_use", "stop_sequence": null },
                    "usage": { "output_tokens": 60 } }),
                ),
                ("message_stop", json!({ "type": "message_stop" })),
            ],
        );

        let deltas: Vec<&Value> = chunks
            .iter()
            .filter(|c| !c["choices"].as_array().unwrap().is_empty())
            .map(|c| &c["choices"][0]["delta"])
            .collect();
        assert_eq!(
            deltas,
            vec![
                &json!({ "role": "assistant", "content": "" }),
                &json!({ "content": "Checking both." }),
                &json!({ "tool_calls": [{ "index": 0, "id": "toolu_p", "type": "function",
                                          "function": { "name": "weather", "arguments": "" } }] }),
                &json!({ "tool_calls": [{ "index": 0, "function": { "arguments": "{\"city\": " } }] }),
                &json!({ "tool_calls": [{ "index": 0, "function": { "arguments": "\"Paris\"}" } }] }),
                &json!({ "tool_calls": [{ "index": 1, "id": "toolu_o", "type": "function",
                                          "function": { "name": "weather", "arguments": "" } }] }),
                &json!({ "tool_calls": [{ "index": 1, "function": { "arguments": "{\"city\": \"Oslo\"}" } }] }),
                &json!({}),
            ]
        );

        // Reassembling the fragments by index gives each call's full arguments.
        let mut args = [String::new(), String::new()];
        for delta in &deltas {
            if let Some(calls) = delta.get("tool_calls") {
                let call = &calls[0];
                let i = call["index"].as_u64().unwrap() as usize;
                args[i].push_str(call["function"]["arguments"].as_str().unwrap());
            }
        }
        assert_eq!(args, ["{\"city\": \"Paris\"}", "{\"city\": \"Oslo\"}"]);

        let finish = &chunks[chunks.len() - 2];
        assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
        let usage = &chunks[chunks.len() - 1];
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(
            usage["usage"],
            json!({ "prompt_tokens": 100, "completion_tokens": 60, "total_tokens": 160 })
        );
        assert_eq!(t.usage(), Some((100, 60)));
        assert!(t.finished());
    }

    #[test]
    fn stream_drops_thinking_and_unknown_events() {
        let mut t = StreamTranslator::new("m", 0);
        let chunks = feed(
            &mut t,
            &[
                (
                    "message_start",
                    json!({ "message": { "id": "x", "usage": { "input_tokens": 1 } } }),
                ),
                (
                    "content_block_start",
                    json!({ "index": 0,
                    "content_block": { "type": "thinking", "thinking": "" } }),
                ),
                (
                    "content_block_delta",
                    json!({ "index": 0,
                    "delta": { "type": "thinking_delta", "thinking": "Let me think" } }),
                ),
                (
                    "content_block_delta",
                    json!({ "index": 0,
                    "delta": { "type": "signature_delta", "signature": "abc" } }),
                ),
                ("content_block_stop", json!({ "index": 0 })),
                ("brand_new_event", json!({ "type": "brand_new_event" })),
                // input_json_delta for a block that is not a client tool call.
                (
                    "content_block_delta",
                    json!({ "index": 5,
                    "delta": { "type": "input_json_delta", "partial_json": "{}" } }),
                ),
            ],
        );
        assert_eq!(chunks.len(), 1);
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({ "role": "assistant", "content": "" })
        );
    }

    #[test]
    fn stream_message_delta_updates_cumulative_input_usage() {
        let mut t = StreamTranslator::new("m", 0);
        feed(
            &mut t,
            &[
                (
                    "message_start",
                    json!({ "message": { "id": "x",
                    "usage": { "input_tokens": 10, "cache_creation_input_tokens": 0, "output_tokens": 1 } } }),
                ),
                (
                    "message_delta",
                    json!({ "delta": { "stop_reason": null },
                    "usage": { "input_tokens": 12, "cache_creation_input_tokens": 3, "output_tokens": 2 } }),
                ),
            ],
        );
        assert_eq!(t.usage(), Some((15, 2)));
        let finish = t
            .event(
                "message_delta",
                &json!({ "delta": { "stop_reason": "max_tokens" }, "usage": { "output_tokens": 9 } }),
            )
            .unwrap();
        assert_eq!(finish.len(), 1);
        assert_eq!(finish[0]["choices"][0]["finish_reason"], "length");
        assert_eq!(t.usage(), Some((15, 9)));
    }

    #[test]
    fn stream_error_event() {
        let mut t = StreamTranslator::new("m", 0);
        t.event("message_start", &json!({ "message": { "id": "x" } }))
            .unwrap();
        let err = t
            .event(
                "error",
                &json!({ "type": "error", "error": { "type": "overloaded_error", "message": "Overloaded" } }),
            )
            .unwrap_err();
        assert_eq!(err, "Overloaded");
        assert!(!t.finished());

        let bare = StreamTranslator::new("m", 0)
            .event("error", &json!({}))
            .unwrap_err();
        assert_eq!(bare, "upstream stream error");
    }

    #[test]
    fn stream_event_name_falls_back_to_data_type() {
        let mut t = StreamTranslator::new("m", 0);
        let chunks = t
            .event(
                "",
                &json!({ "type": "message_start", "message": { "id": "y" } }),
            )
            .unwrap();
        assert_eq!(chunks[0]["id"], "chatcmpl-y");
        assert_eq!(t.usage(), Some((0, 0)));
    }

    #[test]
    fn api_constants() {
        assert_eq!(API_VERSION, "2023-06-01");
        assert_eq!(DEFAULT_MAX_TOKENS, 4096);
    }
}
