//! The conversation with the model: its messages, keeping it within a size
//! budget (compaction), and spotting a model that repeats itself.
//!
//! One rule holds throughout: an assistant message with tool calls is
//! followed by exactly one tool message per call, in order. The chat API
//! refuses a conversation that breaks it, so compaction moves whole groups.

use serde_json::{Value, json};

use crate::text;
use crate::tools;

/// A tool call the model asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The id the tool message must answer with.
    pub id: String,
    pub name: String,
    /// The arguments as the model sent them (JSON text, maybe malformed).
    pub arguments: String,
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    System(String),
    User(String),
    Assistant {
        content: Option<String>,
        calls: Vec<ToolCall>,
    },
    Tool {
        call_id: String,
        content: String,
    },
}

/// How a compaction's summary message starts, so a later compaction can
/// find it and carry its lines forward.
const SUMMARY_HEAD: &str = "[Earlier work, summarised to save room]";
/// A compaction summary lists at most this many lines, the newest kept.
const SUMMARY_MAX_LINES: usize = 200;
/// When compaction is not enough, older tool results shrink to this size.
const SHRUNK_RESULT: usize = 2048;

impl Message {
    /// The message's size in bytes of text, the measure of the budget.
    pub fn size(&self) -> usize {
        match self {
            Message::System(text) | Message::User(text) => text.len(),
            Message::Assistant { content, calls } => {
                content.as_ref().map_or(0, String::len)
                    + calls
                        .iter()
                        .map(|c| c.id.len() + c.name.len() + c.arguments.len())
                        .sum::<usize>()
            }
            Message::Tool { call_id, content } => call_id.len() + content.len(),
        }
    }

    /// The message in the chat completions API's form.
    pub fn to_json(&self) -> Value {
        match self {
            Message::System(text) => json!({"role": "system", "content": text}),
            Message::User(text) => json!({"role": "user", "content": text}),
            Message::Assistant { content, calls } if calls.is_empty() => {
                json!({"role": "assistant", "content": content.as_deref().unwrap_or("")})
            }
            Message::Assistant { content, calls } => json!({
                "role": "assistant",
                "content": content,
                "tool_calls": calls.iter().map(|c| json!({
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                })).collect::<Vec<_>>(),
            }),
            Message::Tool { call_id, content } => {
                json!({"role": "tool", "tool_call_id": call_id, "content": content})
            }
        }
    }
}

/// The messages sent to the model: the system prompt, the task, then the
/// work so far.
#[derive(Debug, Clone)]
pub struct Conversation {
    messages: Vec<Message>,
}

impl Conversation {
    /// A conversation of the system prompt and the first user message.
    pub fn new(system: &str, prompt: &str) -> Self {
        Conversation {
            messages: vec![
                Message::System(system.to_string()),
                Message::User(prompt.to_string()),
            ],
        }
    }

    pub fn push(&mut self, message: Message) {
        self.messages.push(message);
    }

    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// The messages in the API's form, for a request.
    pub fn to_json(&self) -> Vec<Value> {
        self.messages.iter().map(Message::to_json).collect()
    }

    /// The total size of the messages.
    pub fn size(&self) -> usize {
        self.messages.iter().map(Message::size).sum()
    }

    /// Bring the conversation under `limit` bytes when it is over: replace
    /// the middle (between the task and the last `keep` messages) with a
    /// summary of the tool calls made there, then, if still over, shorten
    /// tool results older than the latest turn. Returns whether anything
    /// changed.
    pub fn compact(&mut self, limit: usize, keep: usize) -> bool {
        if self.size() <= limit {
            return false;
        }
        let summarised = self.summarise_middle(keep);
        let shrunk = self.size() > limit && self.shrink_old_results();
        summarised || shrunk
    }

    /// Replace the messages between the task and the last `keep` with one
    /// summary. The kept tail never starts with a tool message: it is moved
    /// back to that message's assistant, so pairs stay whole.
    fn summarise_middle(&mut self, keep: usize) -> bool {
        let len = self.messages.len();
        let mut start = len.saturating_sub(keep).max(2);
        while start > 2 && matches!(self.messages.get(start), Some(Message::Tool { .. })) {
            start -= 1;
        }
        let middle = &self.messages[2.min(len)..start.min(len)];
        let only_a_summary =
            matches!(middle, [Message::User(text)] if text.starts_with(SUMMARY_HEAD));
        if middle.is_empty() || only_a_summary {
            return false;
        }
        let summary = summarise(middle);
        let tail = self.messages.split_off(start);
        self.messages.truncate(2);
        self.messages.push(Message::User(summary));
        self.messages.extend(tail);
        true
    }

    /// Shorten the results of tool calls before the last assistant message.
    fn shrink_old_results(&mut self) -> bool {
        let last_assistant = self
            .messages
            .iter()
            .rposition(|m| matches!(m, Message::Assistant { .. }))
            .unwrap_or(0);
        let mut changed = false;
        for message in &mut self.messages[..last_assistant] {
            if let Message::Tool { content, .. } = message
                && content.len() > SHRUNK_RESULT
            {
                *content = text::cap(
                    content,
                    SHRUNK_RESULT,
                    "shortened to save room; run the tool again if you need it",
                );
                changed = true;
            }
        }
        changed
    }
}

/// The summary of removed messages: the tool calls made (name, what on,
/// ok or the error), the notes the model wrote, carried-forward lines of
/// earlier summaries.
fn summarise(middle: &[Message]) -> String {
    let mut lines = Vec::new();
    for (i, message) in middle.iter().enumerate() {
        match message {
            Message::User(text) if text.starts_with(SUMMARY_HEAD) => {
                lines.extend(
                    text.lines()
                        .filter(|l| l.starts_with("- "))
                        .map(str::to_string),
                );
            }
            Message::User(text) => lines.push(format!("- user: {}", text::one_line(text, 200))),
            Message::Assistant { content, calls } => {
                if let Some(note) = content.as_deref().filter(|c| !c.trim().is_empty()) {
                    lines.push(format!("- you noted: {}", text::one_line(note, 200)));
                }
                for call in calls {
                    let result = middle[i..]
                        .iter()
                        .find_map(|m| match m {
                            Message::Tool { call_id, content } if *call_id == call.id => {
                                Some(result_word(content))
                            }
                            _ => None,
                        })
                        .unwrap_or_else(|| "no result".to_string());
                    let what = tools::describe(&call.name, &call.arguments);
                    lines.push(format!("- {}: {result}", join(&call.name, &what)));
                }
            }
            Message::System(_) | Message::Tool { .. } => {}
        }
    }
    let dropped = lines.len().saturating_sub(SUMMARY_MAX_LINES);
    let kept = &lines[dropped..];
    let mut out = format!(
        "{SUMMARY_HEAD} {} messages were removed from here. What happened in them:\n",
        middle.len()
    );
    if dropped > 0 {
        out.push_str(&format!("- ({dropped} earlier items left out)\n"));
    }
    for line in kept {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("Files may have changed since: read them again before editing.");
    out
}

/// A tool's name and what it was called on, as one phrase.
pub fn join(name: &str, what: &str) -> String {
    if what.is_empty() {
        name.to_string()
    } else {
        format!("{name} {what}")
    }
}

/// `ok`, or `error: <first line>` for a tool result.
fn result_word(content: &str) -> String {
    match content.strip_prefix("error: ") {
        Some(error) => format!("error ({})", text::one_line(error, 100)),
        None => "ok".to_string(),
    }
}

/// Checks the pairing rule: each assistant's tool calls answered, in order,
/// by the tool messages right after it, and no tool message elsewhere.
pub fn check_pairs(messages: &[Message]) -> Result<(), String> {
    let mut i = 0;
    while i < messages.len() {
        match &messages[i] {
            Message::Assistant { calls, .. } => {
                for (k, call) in calls.iter().enumerate() {
                    match messages.get(i + 1 + k) {
                        Some(Message::Tool { call_id, .. }) if *call_id == call.id => {}
                        other => {
                            return Err(format!(
                                "call {} at message {i} answered by {other:?}",
                                call.id
                            ));
                        }
                    }
                }
                i += 1 + calls.len();
            }
            Message::Tool { call_id, .. } => {
                return Err(format!("tool message {call_id} at {i} without its call"));
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// After how many identical calls in a row a call is refused.
pub const REFUSE_AT: u32 = 3;
/// After how many identical calls in a row the agent gives up.
pub const GIVE_UP_AT: u32 = 5;

/// What to do with a call, given the calls before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Run,
    /// Refuse it with this message; the model gets to change approach.
    Refuse(String),
    /// Stop the dispatch with this message.
    GiveUp(String),
}

/// Notices the same call (same tool, same arguments) made again and again
/// in a row: a model stuck in a loop.
#[derive(Debug, Default)]
pub struct RepeatGuard {
    last: Option<(String, String)>,
    run: u32,
}

impl RepeatGuard {
    /// Record a call and judge it.
    pub fn check(&mut self, name: &str, arguments: &str) -> Verdict {
        let key = (name.to_string(), canonical(arguments));
        if self.last.as_ref() == Some(&key) {
            self.run += 1;
        } else {
            self.last = Some(key);
            self.run = 1;
        }
        let n = self.run;
        if n >= GIVE_UP_AT {
            Verdict::GiveUp(format!(
                "the model called {name} with the same arguments {n} times in a row; giving up"
            ))
        } else if n >= REFUSE_AT {
            Verdict::Refuse(format!(
                "you called {name} with the same arguments {n} times; change approach or finish"
            ))
        } else {
            Verdict::Run
        }
    }
}

/// Arguments in a canonical form, so key order and spacing do not hide a
/// repeat; text that is not JSON stays as it is.
fn canonical(arguments: &str) -> String {
    serde_json::from_str::<Value>(arguments)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| arguments.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str, name: &str, args: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: args.into(),
        }
    }

    fn assistant(calls: Vec<ToolCall>) -> Message {
        Message::Assistant {
            content: None,
            calls,
        }
    }

    fn tool(id: &str, content: &str) -> Message {
        Message::Tool {
            call_id: id.into(),
            content: content.into(),
        }
    }

    /// A conversation of `turns` turns, each one assistant reading a file
    /// with `width` calls answered by results of `size` bytes.
    fn long_conversation(turns: usize, width: usize, size: usize) -> Conversation {
        let mut conv = Conversation::new("system", "task");
        for t in 0..turns {
            let calls: Vec<ToolCall> = (0..width)
                .map(|k| {
                    call(
                        &format!("c{t}_{k}"),
                        "read_file",
                        &format!(r#"{{"path":"src/f{t}_{k}.rs"}}"#),
                    )
                })
                .collect();
            let ids: Vec<String> = calls.iter().map(|c| c.id.clone()).collect();
            conv.push(assistant(calls));
            for id in ids {
                conv.push(tool(&id, &"x".repeat(size)));
            }
        }
        conv
    }

    #[test]
    fn messages_serialise_to_the_chat_format() {
        let m = assistant(vec![call("c1", "read_file", r#"{"path":"a"}"#)]);
        assert_eq!(
            m.to_json(),
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"a\"}"}}
            ]})
        );
        assert_eq!(
            tool("c1", "out").to_json(),
            json!({"role": "tool", "tool_call_id": "c1", "content": "out"})
        );
        let plain = Message::Assistant {
            content: None,
            calls: vec![],
        };
        assert_eq!(plain.to_json(), json!({"role": "assistant", "content": ""}));
    }

    #[test]
    fn small_conversations_are_not_compacted() {
        let mut conv = long_conversation(3, 1, 10);
        let before = conv.messages().to_vec();
        assert!(!conv.compact(120_000, 8));
        assert_eq!(conv.messages(), before.as_slice());
    }

    #[test]
    fn compaction_keeps_the_head_the_tail_and_the_pairs() {
        let mut conv = long_conversation(30, 1, 10_000);
        assert!(conv.size() > 120_000);
        assert!(conv.compact(120_000, 8));
        let m = conv.messages();
        assert_eq!(m[0], Message::System("system".into()));
        assert_eq!(m[1], Message::User("task".into()));
        let Message::User(summary) = &m[2] else {
            panic!("no summary: {:?}", m[2]);
        };
        assert!(summary.starts_with(SUMMARY_HEAD));
        assert!(summary.contains("- read_file src/f0_0.rs: ok"), "{summary}");
        assert!(
            summary.contains("- read_file src/f25_0.rs: ok"),
            "{summary}"
        );
        assert!(!summary.contains("src/f26_0.rs"), "{summary}");
        assert_eq!(m.len(), 3 + 8);
        check_pairs(m).unwrap();
        assert!(conv.size() < 120_000);
    }

    #[test]
    fn compaction_moves_the_cut_back_to_a_whole_group() {
        // Each assistant has 4 calls, so "the last 8" would start inside a
        // group; the whole group must be kept.
        let mut conv = long_conversation(20, 4, 2_000);
        assert!(conv.compact(120_000, 8));
        let m = conv.messages();
        check_pairs(m).unwrap();
        assert!(matches!(m[3], Message::Assistant { .. }));
        assert_eq!(m.len(), 3 + 10); // two whole groups of five
    }

    #[test]
    fn compaction_carries_earlier_summaries_and_errors_forward() {
        let mut conv = long_conversation(15, 1, 10_000);
        conv.push(assistant(vec![call(
            "bad",
            "edit_file",
            r#"{"path":"x.rs"}"#,
        )]));
        conv.push(tool("bad", "error: search not found in x.rs\nmore"));
        conv.compact(120_000, 8);
        for t in 0..20 {
            let id = format!("n{t}");
            conv.push(assistant(vec![call(
                &id,
                "grep",
                r#"{"pattern":"fn main"}"#,
            )]));
            conv.push(tool(&id, &"y".repeat(10_000)));
        }
        assert!(conv.compact(120_000, 8));
        let Message::User(summary) = &conv.messages()[2] else {
            panic!("no summary");
        };
        assert!(summary.contains("- read_file src/f0_0.rs: ok"), "{summary}");
        assert!(
            summary.contains("- edit_file x.rs: error (search not found in x.rs…)"),
            "{summary}"
        );
        assert!(summary.contains("- grep /fn main/: ok"), "{summary}");
        assert_eq!(summary.matches(SUMMARY_HEAD).count(), 1);
        check_pairs(conv.messages()).unwrap();
    }

    #[test]
    fn huge_recent_results_shrink_the_older_ones() {
        let mut conv = long_conversation(4, 2, 40_000);
        assert!(conv.compact(120_000, 8));
        let m = conv.messages();
        check_pairs(m).unwrap();
        let last = m
            .iter()
            .rposition(|m| matches!(m, Message::Assistant { .. }))
            .unwrap();
        for (i, message) in m.iter().enumerate() {
            if let Message::Tool { content, .. } = message {
                if i < last {
                    assert!(content.len() < 2_200, "message {i} not shrunk");
                } else {
                    assert_eq!(content.len(), 40_000, "latest result {i} shrunk");
                }
            }
        }
    }

    #[test]
    fn check_pairs_finds_broken_conversations() {
        let ok = [
            Message::User("u".into()),
            assistant(vec![call("a", "x", "{}"), call("b", "x", "{}")]),
            tool("a", ""),
            tool("b", ""),
        ];
        check_pairs(&ok).unwrap();
        assert!(check_pairs(&ok[..3]).is_err());
        assert!(check_pairs(&[tool("a", "")]).is_err());
        let swapped = [ok[1].clone(), ok[3].clone(), ok[2].clone()];
        assert!(check_pairs(&swapped).is_err());
    }

    #[test]
    fn repeats_are_refused_then_given_up() {
        let mut guard = RepeatGuard::default();
        assert_eq!(guard.check("read_file", r#"{"path":"a"}"#), Verdict::Run);
        assert_eq!(
            guard.check("read_file", r#"{ "path" : "a" }"#),
            Verdict::Run
        );
        assert_eq!(
            guard.check("read_file", r#"{"path":"a"}"#),
            Verdict::Refuse(
                "you called read_file with the same arguments 3 times; change approach or finish"
                    .into()
            )
        );
        assert!(matches!(
            guard.check("read_file", r#"{"path":"a"}"#),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            guard.check("read_file", r#"{"path":"a"}"#),
            Verdict::GiveUp(_)
        ));
    }

    #[test]
    fn a_different_call_resets_the_count() {
        let mut guard = RepeatGuard::default();
        for _ in 0..2 {
            assert_eq!(guard.check("grep", r#"{"pattern":"a"}"#), Verdict::Run);
        }
        assert_eq!(guard.check("grep", r#"{"pattern":"b"}"#), Verdict::Run);
        assert_eq!(guard.check("glob", r#"{"pattern":"b"}"#), Verdict::Run);
        assert_eq!(guard.check("grep", r#"{"pattern":"a"}"#), Verdict::Run);
        assert_eq!(guard.check("grep", "not json"), Verdict::Run);
        assert_eq!(guard.check("grep", " not json "), Verdict::Run);
        assert!(matches!(
            guard.check("grep", "not json"),
            Verdict::Refuse(_)
        ));
    }
}
