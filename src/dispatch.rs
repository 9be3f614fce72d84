//! The guest contract, version 1, from the host's side: the dispatch a guest
//! reads on stdin, the environment it gets, and the events and reply it
//! writes on stdout. `docs/guest-contract.md` is the normative text; this
//! module is its implementation. Must not know how a guest is run.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const CONTRACT_VERSION: u32 = 1;

/// One unit of work for a guest. Field order is the wire order the contract
/// promises (small guests scan for keys), so do not reorder.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Dispatch {
    pub contract: u32,
    pub id: String,
    pub agent: String,
    pub kind: Kind,
    pub session: String,
    pub prompt: String,
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
    pub metadata: Map<String, Value>,
}

impl Dispatch {
    /// A dispatch with a fresh id; the session is the dispatch's own unless
    /// it continues one.
    pub fn new(agent: &str, kind: Kind, prompt: String, session: Option<String>) -> Self {
        let id = uuid::Uuid::now_v7().to_string();
        Self {
            contract: CONTRACT_VERSION,
            session: session.unwrap_or_else(|| id.clone()),
            id,
            agent: agent.to_string(),
            kind,
            prompt,
            model: None,
            max_tokens: None,
            metadata: Map::new(),
        }
    }

    /// The bytes on the guest's stdin: one compact JSON line.
    pub fn to_stdin(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("a dispatch always serializes");
        line.push(b'\n');
        line
    }

    /// The environment the contract gives a guest.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("CAIRN_CONTRACT", CONTRACT_VERSION.to_string()),
            ("CAIRN_DISPATCH_ID", self.id.clone()),
            ("CAIRN_AGENT", self.agent.clone()),
            ("CAIRN_KIND", self.kind.as_str().to_string()),
            ("CAIRN_SESSION", self.session.clone()),
            ("CAIRN_WORKSPACE", "/workspace".to_string()),
            ("PWD", "/workspace".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// Why a dispatch happens: `a2a`, `heartbeat`, or `job:`, `task:`,
/// `trigger:`, `continuation:` followed by a name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Kind(String);

impl TryFrom<String> for Kind {
    type Error = String;
    fn try_from(s: String) -> Result<Kind, String> {
        s.parse()
    }
}

impl From<Kind> for String {
    fn from(k: Kind) -> String {
        k.0
    }
}

const NAMED_KINDS: [&str; 4] = ["job", "task", "trigger", "continuation"];

impl Kind {
    pub fn a2a() -> Self {
        Kind("a2a".into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let valid_name = |n: &str| {
            n.len() <= 64
                && n.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        };
        match s.split_once(':') {
            None if s == "a2a" || s == "heartbeat" => Ok(Kind(s.into())),
            Some((prefix, name)) if NAMED_KINDS.contains(&prefix) && valid_name(name) => {
                Ok(Kind(s.into()))
            }
            _ => Err(format!(
                "unknown dispatch kind `{s}`: expected a2a, heartbeat, or job:, task:, trigger:, continuation: \
                 followed by a name of lowercase letters, digits, `-` and `_`"
            )),
        }
    }
}

/// One line of a guest's stdout.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Event {
    /// A JSON object with a string `type`, kept whole.
    Typed(Map<String, Value>),
    /// Any other line, taken as reply text.
    Text(String),
}

/// What a guest said: its events, and the reply they add up to.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Reply {
    pub text: String,
    pub events: Vec<Event>,
    /// Whether the guest ended with a `final` event, as the contract asks.
    pub finished: bool,
    /// Lines written after `final`, which the contract ignores.
    pub lines_after_final: usize,
}

impl Reply {
    pub fn parse(stdout: &[u8]) -> Reply {
        let mut reply = Reply::default();
        let mut texts: Vec<String> = Vec::new();
        let stdout = String::from_utf8_lossy(stdout);
        for line in stdout.lines() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if reply.finished {
                if !line.trim().is_empty() {
                    reply.lines_after_final += 1;
                }
                continue;
            }
            match parse_event(line) {
                Some(event) => {
                    match event.get("type").and_then(Value::as_str) {
                        Some("final") => {
                            reply.text = str_field(&event, "text");
                            reply.finished = true;
                        }
                        Some("text") => texts.push(str_field(&event, "text")),
                        _ => {}
                    }
                    reply.events.push(Event::Typed(event));
                }
                None => {
                    texts.push(line.to_string());
                    reply.events.push(Event::Text(line.to_string()));
                }
            }
        }
        if !reply.finished {
            // Trailing empty lines are how output ends, not part of the reply.
            while texts.last().is_some_and(|t| t.is_empty()) {
                texts.pop();
            }
            reply.text = texts.join("\n");
        }
        reply
    }
}

fn parse_event(line: &str) -> Option<Map<String, Value>> {
    if !line.trim_start().starts_with('{') {
        return None;
    }
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(map)) if map.get("type").is_some_and(Value::is_string) => Some(map),
        _ => None,
    }
}

fn str_field(event: &Map<String, Value>, key: &str) -> String {
    match event.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_order_is_the_documented_one() {
        let d = Dispatch::new("cli", Kind::a2a(), "hi \"you\"".into(), Some("s1".into()));
        let line = String::from_utf8(d.to_stdin()).unwrap();
        let keys = [
            "contract",
            "id",
            "agent",
            "kind",
            "session",
            "prompt",
            "model",
            "max_tokens",
            "metadata",
        ];
        let positions: Vec<usize> = keys
            .iter()
            .map(|k| line.find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{line}");
        assert!(line.ends_with("}\n") && !line[..line.len() - 1].contains('\n'));
    }

    #[test]
    fn final_event_is_the_reply_and_later_lines_are_counted() {
        let out = b"{\"type\":\"progress\",\"message\":\"working\"}\nplain\n{\"type\":\"final\",\"text\":\"done\"}\nlate\n";
        let reply = Reply::parse(out);
        assert_eq!(reply.text, "done");
        assert!(reply.finished);
        assert_eq!(reply.events.len(), 3);
        assert_eq!(reply.lines_after_final, 1);
    }

    #[test]
    fn without_final_text_and_plain_lines_make_the_reply() {
        let reply = Reply::parse(b"{\"type\":\"text\",\"text\":\"a\"}\n{not json\nb\n\n");
        assert_eq!(reply.text, "a\n{not json\nb");
        assert!(!reply.finished);
    }

    #[test]
    fn kinds_are_checked() {
        for ok in [
            "a2a",
            "heartbeat",
            "job:nightly",
            "task:triage-1",
            "continuation:x_y",
        ] {
            assert!(ok.parse::<Kind>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "job",
            "job:",
            "jobs:x",
            "job:Upper",
            "a2a:x",
            "trigger:-x",
        ] {
            assert!(bad.parse::<Kind>().is_err(), "{bad}");
        }
    }
}
