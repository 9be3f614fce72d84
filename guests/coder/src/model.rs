//! Talking to the model: building a chat completions request and reading
//! its answer. Pure functions; the HTTP is elsewhere.
//!
//! The answer is read leniently (a missing call id is made up, arguments
//! sent as an object are re-serialised, content sent as parts is joined),
//! because an agent that dies on a slightly odd answer is worse than one
//! that carries on; an answer that cannot be used at all is an error that
//! quotes it.

use serde_json::{Value, json};

use crate::conversation::ToolCall;
use crate::text;

/// How much of an unusable answer an error quotes.
const QUOTE: usize = 300;

/// A chat completions request: the model, the messages, the tools.
pub fn request_body(
    model: &str,
    messages: Vec<Value>,
    tools: &Value,
    max_tokens: Option<u64>,
) -> Value {
    let mut body = json!({
        "model": model,
        "messages": messages,
        "tools": tools,
        "tool_choice": "auto",
    });
    if let Some(max_tokens) = max_tokens {
        body["max_tokens"] = json!(max_tokens);
    }
    body
}

/// Tokens the model reports having used.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn add(&mut self, other: Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
    }
}

/// What the model answered: text, tool calls, or both.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The text, `None` when absent or blank.
    pub content: Option<String>,
    pub calls: Vec<ToolCall>,
    pub usage: Usage,
}

/// Read the answer to a request. `turn` makes up ids for calls without one.
pub fn parse_reply(status: u16, body: &[u8], turn: u32) -> Result<Reply, String> {
    if !(200..300).contains(&status) {
        return Err(format!(
            "the model answered {status}: {}",
            text::quote(body, QUOTE)
        ));
    }
    let answer: Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the model's answer is not JSON ({e}): {}",
            text::quote(body, QUOTE)
        )
    })?;
    if let Some(error) = answer.get("error").filter(|e| !e.is_null()) {
        let message = error["message"]
            .as_str()
            .map_or_else(|| error.to_string(), str::to_string);
        return Err(format!(
            "the model answered an error: {}",
            text::one_line(&message, QUOTE)
        ));
    }
    let message = &answer["choices"][0]["message"];
    if !message.is_object() {
        return Err(format!(
            "the model's answer has no choices[0].message: {}",
            text::quote(body, QUOTE)
        ));
    }
    Ok(Reply {
        content: content(&message["content"]),
        calls: calls(&message["tool_calls"], turn),
        usage: usage(&answer["usage"]),
    })
}

/// The message's text: a string, or the text parts of a list of parts.
fn content(value: &Value) -> Option<String> {
    let text = match value {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str().or_else(|| p.as_str()))
            .collect::<Vec<_>>()
            .join(""),
        _ => return None,
    };
    Some(text).filter(|t| !t.trim().is_empty())
}

/// The message's tool calls, each with a unique id.
fn calls(value: &Value, turn: u32) -> Vec<ToolCall> {
    let Some(list) = value.as_array() else {
        return Vec::new();
    };
    let mut seen: Vec<String> = Vec::new();
    list.iter()
        .enumerate()
        .map(|(i, call)| {
            let function = &call["function"];
            let mut id = call["id"]
                .as_str()
                .filter(|id| !id.is_empty())
                .map_or_else(|| format!("call_{turn}_{i}"), str::to_string);
            if seen.contains(&id) {
                id = format!("{id}_{i}");
            }
            seen.push(id.clone());
            let arguments = match &function["arguments"] {
                Value::String(args) => args.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            ToolCall {
                id,
                name: function["name"].as_str().unwrap_or_default().to_string(),
                arguments,
            }
        })
        .collect()
}

fn usage(value: &Value) -> Usage {
    Usage {
        prompt_tokens: value["prompt_tokens"].as_u64().unwrap_or(0),
        completion_tokens: value["completion_tokens"].as_u64().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_names_the_model_tools_and_budget() {
        let tools = json!([{"type": "function"}]);
        let body = request_body("m", vec![json!({"role": "user"})], &tools, Some(100));
        assert_eq!(body["model"], "m");
        assert_eq!(body["tool_choice"], "auto");
        assert_eq!(body["tools"], tools);
        assert_eq!(body["max_tokens"], 100);
        assert_eq!(body["messages"][0]["role"], "user");
        assert!(body.get("stream").is_none());
        let body = request_body("m", vec![], &tools, None);
        assert!(body.get("max_tokens").is_none());
    }

    #[test]
    fn a_text_answer() {
        let body = br#"{"choices":[{"message":{"role":"assistant","content":"done"}}],"usage":{"prompt_tokens":7,"completion_tokens":3}}"#;
        let reply = parse_reply(200, body, 1).unwrap();
        assert_eq!(reply.content.as_deref(), Some("done"));
        assert!(reply.calls.is_empty());
        assert_eq!(
            reply.usage,
            Usage {
                prompt_tokens: 7,
                completion_tokens: 3
            }
        );
    }

    #[test]
    fn tool_calls_are_read_leniently() {
        let body = br#"{"choices":[{"message":{"content":null,"tool_calls":[
            {"id":"a","type":"function","function":{"name":"read_file","arguments":"{\"path\":\"x\"}"}},
            {"type":"function","function":{"name":"list_dir","arguments":{"path":"."}}},
            {"id":"a","function":{"name":"recall"}}
        ]}}]}"#;
        let reply = parse_reply(200, body, 4).unwrap();
        assert_eq!(reply.content, None);
        let ids: Vec<&str> = reply.calls.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a", "call_4_1", "a_2"]);
        assert_eq!(reply.calls[0].arguments, r#"{"path":"x"}"#);
        assert_eq!(reply.calls[1].arguments, r#"{"path":"."}"#);
        assert_eq!(reply.calls[2].arguments, "");
    }

    #[test]
    fn blank_and_part_contents() {
        let blank = br#"{"choices":[{"message":{"content":"  \n"}}]}"#;
        assert_eq!(parse_reply(200, blank, 1).unwrap().content, None);
        let parts = br#"{"choices":[{"message":{"content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}}]}"#;
        assert_eq!(
            parse_reply(200, parts, 1).unwrap().content.as_deref(),
            Some("ab")
        );
    }

    #[test]
    fn unusable_answers_are_errors_quoting_them() {
        let err = parse_reply(502, "bad gateway ".repeat(100).as_bytes(), 1).unwrap_err();
        assert!(
            err.starts_with("the model answered 502: bad gateway"),
            "{err}"
        );
        assert!(err.len() < 400, "{err}");
        let err = parse_reply(200, b"<html>", 1).unwrap_err();
        assert!(err.contains("not JSON") && err.contains("<html>"), "{err}");
        let err = parse_reply(200, br#"{"choices":[]}"#, 1).unwrap_err();
        assert!(err.contains("no choices[0].message"), "{err}");
        let err = parse_reply(200, br#"{"error":{"message":"context too long"}}"#, 1).unwrap_err();
        assert!(err.contains("context too long"), "{err}");
    }
}
