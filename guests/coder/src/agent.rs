//! The agent loop: ask the model, run the tools it calls, give it the
//! results, until it answers without calling a tool, calls `finish`, or
//! runs out of turns. Every way a model can misbehave ends in a tool error
//! it can react to or in a clear failure, never in a crash.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::conversation::{self, Conversation, Message, RepeatGuard, ToolCall, Verdict};
use crate::http::Post;
use crate::model::{self, Reply, Usage};
use crate::prompt;
use crate::text;
use crate::tools::{self, Outcome, Tools};

/// Turns allowed when `$CODER_MAX_TURNS` does not say.
pub const DEFAULT_MAX_TURNS: u32 = 40;
/// The most turns `$CODER_MAX_TURNS` may allow.
const MAX_TURNS_CAP: u32 = 1000;
/// Each tool result is cut to this many bytes.
pub const RESULT_MAX: usize = 16 * 1024;
/// Past this many bytes the conversation is compacted.
pub const CONTEXT_MAX: usize = 120_000;
/// Compaction keeps this many of the latest messages.
pub const KEEP_LAST: usize = 8;
/// Room left in a tool result for `read_file`'s own note.
const READ_NOTE_ROOM: usize = 256;

const NUDGE: &str = "Your last answer was empty. Continue with a tool call, \
or call finish with a summary of what you did.";

/// The dispatch, as the guest contract gives it on stdin. Fields this
/// agent does not use are ignored.
#[derive(Debug, Deserialize)]
pub struct Dispatch {
    pub prompt: String,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub session: String,
    #[serde(default)]
    pub metadata: Value,
}

/// Everything a run needs, gathered from the dispatch and the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `$OPENAI_BASE_URL/chat/completions`.
    pub chat_url: String,
    pub model: String,
    pub max_tokens: Option<u64>,
    pub max_turns: u32,
    pub workspace: PathBuf,
    pub memory: Option<PathBuf>,
    pub broker: Option<String>,
    pub system_prompt: String,
    pub prompt: String,
}

impl Config {
    /// The configuration for `dispatch`, reading the environment through
    /// `env` (so tests can supply one). Reads the instructions and
    /// `AGENTS.md` for the system prompt.
    pub fn new(
        dispatch: &Dispatch,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, String> {
        let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let base = set("OPENAI_BASE_URL")
            .ok_or("OPENAI_BASE_URL is not set: this agent has no model sidecar")?;
        let workspace =
            PathBuf::from(set("CAIRN_WORKSPACE").unwrap_or_else(|| "/workspace".into()));
        let instructions = set("CAIRN_INSTRUCTIONS").map(PathBuf::from);
        let system_prompt = prompt::system_prompt(instructions.as_deref(), &workspace, dispatch);
        Ok(Config {
            chat_url: format!("{}/chat/completions", base.trim_end_matches('/')),
            model: dispatch
                .model
                .clone()
                .filter(|m| !m.trim().is_empty())
                .or_else(|| set("CAIRN_MODEL"))
                .unwrap_or_else(|| "default".into()),
            max_tokens: dispatch.max_tokens,
            max_turns: max_turns(set("CODER_MAX_TURNS").as_deref()),
            workspace,
            memory: set("CAIRN_MEMORY").map(PathBuf::from),
            // The contract reserves CAIRN_HOST_URL for the broker too.
            broker: set("CAIRN_BROKER_URL").or_else(|| set("CAIRN_HOST_URL")),
            system_prompt,
            prompt: dispatch.prompt.clone(),
        })
    }
}

/// The turn limit from `$CODER_MAX_TURNS`: the default when unset or not a
/// number, at least 1, at most [`MAX_TURNS_CAP`].
fn max_turns(value: Option<&str>) -> u32 {
    match value.map(|v| v.trim().parse::<u32>()) {
        None => DEFAULT_MAX_TURNS,
        Some(Ok(n)) => n.clamp(1, MAX_TURNS_CAP),
        Some(Err(_)) => {
            eprintln!("coder: CODER_MAX_TURNS is not a number; using {DEFAULT_MAX_TURNS}");
            DEFAULT_MAX_TURNS
        }
    }
}

/// How a run ended.
#[derive(Debug)]
pub struct Ended {
    /// The reply, or why the run failed.
    pub result: Result<String, String>,
    pub turns: u32,
    pub tool_calls: u32,
    pub usage: Usage,
}

impl Ended {
    /// The last events of the dispatch: an `error` event when it failed,
    /// then the `final` event with the reply.
    pub fn final_events(&self) -> Vec<Value> {
        let data = json!({
            "turns": self.turns,
            "tool_calls": self.tool_calls,
            "usage": {
                "prompt_tokens": self.usage.prompt_tokens,
                "completion_tokens": self.usage.completion_tokens,
            },
        });
        match &self.result {
            Ok(text) => vec![json!({"type": "final", "text": text, "data": data})],
            Err(message) => vec![
                json!({"type": "error", "message": message}),
                json!({"type": "final", "text": format!("error: {message}"), "data": data}),
            ],
        }
    }
}

/// Run the agent to its end, writing progress and tool events through
/// `emit`; the final events are left to the caller ([`Ended::final_events`]).
pub fn run(config: &Config, http: &dyn Post, emit: &mut dyn FnMut(Value)) -> Ended {
    let mut agent = Agent {
        config,
        http,
        tools: Tools {
            root: config.workspace.clone(),
            memory: config.memory.clone(),
            broker: config.broker.clone(),
            http,
            read_max_bytes: RESULT_MAX - READ_NOTE_ROOM,
        },
        specs: tools::specs(),
        conversation: Conversation::new(&config.system_prompt, &config.prompt),
        guard: RepeatGuard::default(),
        emit,
        turn: 0,
        tool_calls: 0,
        usage: Usage::default(),
        nudged: false,
    };
    let result = agent.drive();
    if let Err(message) = &result {
        eprintln!("coder: failed: {message}");
    }
    Ended {
        result,
        turns: agent.turn,
        tool_calls: agent.tool_calls,
        usage: agent.usage,
    }
}

/// One run's state.
struct Agent<'a> {
    config: &'a Config,
    http: &'a dyn Post,
    tools: Tools<'a>,
    specs: Value,
    conversation: Conversation,
    guard: RepeatGuard,
    emit: &'a mut dyn FnMut(Value),
    turn: u32,
    tool_calls: u32,
    usage: Usage,
    /// Whether the last answer was empty and the model was nudged.
    nudged: bool,
}

impl Agent<'_> {
    /// Turns until a reply, a failure, or the turn limit.
    fn drive(&mut self) -> Result<String, String> {
        let limit = self.config.max_turns;
        while self.turn < limit {
            self.turn += 1;
            let turn = self.turn;
            (self.emit)(json!({
                "type": "progress",
                "message": format!("turn {turn}"),
                "data": {"turn": turn},
            }));
            if let Some(reply) = self.step()? {
                return Ok(reply);
            }
        }
        Err(format!("turn limit ({limit}) reached without finishing"))
    }

    /// One turn: ask the model, then act on its answer. `Some` is the reply.
    fn step(&mut self) -> Result<Option<String>, String> {
        let before = self.conversation.size();
        if self.conversation.compact(CONTEXT_MAX, KEEP_LAST) {
            eprintln!(
                "coder: turn {}: compacted the conversation from {before} to {} bytes",
                self.turn,
                self.conversation.size()
            );
        }
        let reply = self.ask()?;
        if reply.calls.is_empty() {
            return self.answer(reply.content);
        }
        self.nudged = false;
        if let Some(note) = &reply.content {
            eprintln!(
                "coder: turn {}: says: {}",
                self.turn,
                text::one_line(note, 200)
            );
        }
        self.conversation.push(Message::Assistant {
            content: reply.content,
            calls: reply.calls.clone(),
        });
        for call in &reply.calls {
            if let Some(summary) = self.call(call)? {
                return Ok(Some(summary));
            }
        }
        Ok(None)
    }

    /// Ask the model for its next move.
    fn ask(&mut self) -> Result<Reply, String> {
        let body = model::request_body(
            &self.config.model,
            self.conversation.to_json(),
            &self.specs,
            self.config.max_tokens,
        );
        let (status, bytes) = self
            .http
            .post(&self.config.chat_url, body.to_string().as_bytes())
            .map_err(|e| format!("cannot reach the model: {e}"))?;
        let reply = model::parse_reply(status, &bytes, self.turn)?;
        self.usage.add(reply.usage);
        Ok(reply)
    }

    /// An answer without tool calls: the reply when it has text; an empty
    /// one gets one nudge, then fails the run.
    fn answer(&mut self, content: Option<String>) -> Result<Option<String>, String> {
        if let Some(text) = content {
            return Ok(Some(text));
        }
        if self.nudged {
            return Err(
                "the model answered with neither text nor tool calls twice in a row".into(),
            );
        }
        eprintln!("coder: turn {}: empty answer; nudging", self.turn);
        self.nudged = true;
        self.conversation.push(Message::User(NUDGE.to_string()));
        Ok(None)
    }

    /// Run one tool call and answer it in the conversation. `Some` is the
    /// summary `finish` was called with.
    fn call(&mut self, call: &ToolCall) -> Result<Option<String>, String> {
        self.tool_calls += 1;
        let result = match self.guard.check(&call.name, &call.arguments) {
            Verdict::GiveUp(message) => {
                self.report(call, &Err(message.clone()));
                return Err(message);
            }
            Verdict::Refuse(message) => Err(message),
            Verdict::Run => {
                self.open_step(call);
                match self.tools.call(&call.name, &call.arguments) {
                    Outcome::Finish(summary) => {
                        self.report(call, &Ok(summary.clone()));
                        return Ok(Some(summary));
                    }
                    Outcome::Done(result) => result,
                }
            }
        };
        self.report(call, &result);
        let content = match &result {
            Ok(text) => text::cap(
                text,
                RESULT_MAX,
                "ask for less: a line range, a narrower path or pattern",
            ),
            Err(error) => text::cap(&format!("error: {error}"), RESULT_MAX, "error cut"),
        };
        self.conversation.push(Message::Tool {
            call_id: call.id.clone(),
            content,
        });
        Ok(None)
    }

    /// Asks the broker to open a step for a tool the guest runs itself, so
    /// what the call changes is a step of its own on the timeline (`run`
    /// gets its step from the broker, `finish` changes nothing). Best
    /// effort: without a broker the changes join the model call's step.
    fn open_step(&self, call: &ToolCall) {
        let (Some(broker), false) = (
            self.config.broker.as_deref(),
            matches!(call.name.as_str(), "run" | "finish"),
        ) else {
            return;
        };
        let url = format!("{}/v1/step", broker.trim_end_matches('/'));
        let body = json!({
            "tool": call.name,
            "detail": tools::describe(&call.name, &call.arguments),
        });
        match self.http.post(&url, body.to_string().as_bytes()) {
            Ok((200, _)) => {}
            Ok((status, bytes)) => eprintln!(
                "coder: turn {}: the broker did not open a step ({status}): {}",
                self.turn,
                text::one_line(&String::from_utf8_lossy(&bytes), 200)
            ),
            Err(e) => eprintln!(
                "coder: turn {}: the broker did not open a step: {e}",
                self.turn
            ),
        }
    }

    /// The `tool` event and the log line for a call's result.
    fn report(&mut self, call: &ToolCall, result: &Result<String, String>) {
        let what = tools::describe(&call.name, &call.arguments);
        let (outcome, bytes) = match result {
            Ok(text) => ("ok", text.len()),
            Err(error) => ("error", error.len()),
        };
        let mut event = json!({
            "type": "tool",
            "turn": self.turn,
            "name": call.name,
            "args": what,
            "result": outcome,
            "bytes": bytes,
        });
        if let Err(error) = result {
            event["error"] = json!(text::one_line(error, 200));
        }
        (self.emit)(event);
        let detail = match result {
            Ok(_) => format!("ok ({bytes} bytes)"),
            Err(error) => format!("error: {}", text::one_line(error, 200)),
        };
        eprintln!(
            "coder: turn {}: tool {} -> {detail}",
            self.turn,
            conversation::join(&call.name, &what)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{FakeHttp, TempDir};

    fn config(dir: &TempDir) -> Config {
        Config {
            chat_url: "http://sidecar/v1/chat/completions".into(),
            model: "m1".into(),
            max_tokens: None,
            max_turns: DEFAULT_MAX_TURNS,
            workspace: dir.path().to_path_buf(),
            memory: None,
            broker: Some("http://broker".into()),
            system_prompt: "sys".into(),
            prompt: "fix the bug".into(),
        }
    }

    /// Run with `http`, returning how it ended and the events.
    fn go(config: &Config, http: &FakeHttp) -> (Ended, Vec<Value>) {
        let mut events = Vec::new();
        let ended = run(config, http, &mut |e| events.push(e));
        (ended, events)
    }

    /// The tool messages of a request, as (id, content).
    fn tool_messages(request: &Value) -> Vec<(String, String)> {
        request["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "tool")
            .map(|m| {
                (
                    m["tool_call_id"].as_str().unwrap().to_string(),
                    m["content"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Every request keeps each assistant's calls answered right after it.
    fn assert_pairs(request: &Value) {
        let messages = request["messages"].as_array().unwrap();
        let mut i = 0;
        while i < messages.len() {
            let calls = messages[i]["tool_calls"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert_ne!(messages[i]["role"], "tool", "orphan tool message at {i}");
            for (k, call) in calls.iter().enumerate() {
                let answer = &messages[i + 1 + k];
                assert_eq!(answer["role"], "tool");
                assert_eq!(answer["tool_call_id"], call["id"]);
            }
            i += 1 + calls.len();
        }
    }

    #[test]
    fn reads_edits_runs_and_finishes() {
        let dir = TempDir::new();
        dir.write(
            "src/lib.rs",
            "pub fn add(a: i32, b: i32) -> i32 {\n    a - b\n}\n",
        );
        let http = FakeHttp::new();
        http.calls("c1", "read_file", json!({"path": "src/lib.rs"}))
            .calls(
                "c2",
                "edit_file",
                json!({"path": "src/lib.rs", "search": "a - b", "replace": "a + b"}),
            )
            .calls(
                "c3",
                "run",
                json!({"argv": ["cargo", "test"], "timeout_secs": 120}),
            )
            .calls(
                "c4",
                "finish",
                json!({"summary": "Fixed add: it subtracted. Tests pass."}),
            );
        http.broker_says(200, json!({"exit": 0, "stdout": "test result: ok. 1 passed", "stderr": "", "truncated": false, "timed_out": false, "step": 3}));
        let config = Config {
            max_tokens: Some(500),
            ..config(&dir)
        };
        let (ended, events) = go(&config, &http);

        assert_eq!(
            ended.result,
            Ok("Fixed add: it subtracted. Tests pass.".to_string())
        );
        assert_eq!((ended.turns, ended.tool_calls), (4, 4));
        assert_eq!(
            ended.usage,
            Usage {
                prompt_tokens: 40,
                completion_tokens: 8
            }
        );
        assert_eq!(
            dir.read("src/lib.rs"),
            "pub fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n"
        );
        assert_eq!(
            http.broker_requests(),
            [(
                "http://broker/v1/run".to_string(),
                json!({"argv": ["cargo", "test"], "timeout_secs": 120})
            )]
        );

        assert_eq!(
            http.step_requests(),
            [
                json!({"tool": "read_file", "detail": "src/lib.rs"}),
                json!({"tool": "edit_file", "detail": "src/lib.rs"}),
            ],
            "each tool the guest runs itself opens a step; `run` and `finish` do not"
        );

        let requests = http.model_requests();
        assert_eq!(requests.len(), 4);
        let first = &requests[0];
        assert_eq!(first["model"], "m1");
        assert_eq!(first["max_tokens"], 500);
        assert_eq!(first["tool_choice"], "auto");
        assert_eq!(first["tools"], tools::specs());
        assert_eq!(
            first["messages"],
            json!([
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "fix the bug"},
            ])
        );
        let last = &requests[3];
        assert_pairs(last);
        let results = tool_messages(last);
        let ids: Vec<&str> = results.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["c1", "c2", "c3"]);
        assert!(
            results[0].1.contains("     2\t    a - b"),
            "{}",
            results[0].1
        );
        assert!(
            results[1].1.starts_with("edited src/lib.rs"),
            "{}",
            results[1].1
        );
        assert!(
            results[2].1.starts_with("exit 0 (step 3)"),
            "{}",
            results[2].1
        );

        let progress: Vec<&Value> = events.iter().filter(|e| e["type"] == "progress").collect();
        assert_eq!(progress.len(), 4);
        assert_eq!(progress[2]["data"]["turn"], 3);
        assert_eq!(progress[2]["message"], "turn 3");
        let tool_events: Vec<&Value> = events.iter().filter(|e| e["type"] == "tool").collect();
        assert_eq!(tool_events.len(), 4);
        assert_eq!(tool_events[0]["name"], "read_file");
        assert_eq!(tool_events[0]["args"], "src/lib.rs");
        assert_eq!(tool_events[0]["result"], "ok");
        assert_eq!(tool_events[2]["args"], "cargo test");
        assert_eq!(tool_events[3]["name"], "finish");

        let finals = ended.final_events();
        assert_eq!(finals.len(), 1);
        assert_eq!(finals[0]["type"], "final");
        assert_eq!(finals[0]["text"], "Fixed add: it subtracted. Tests pass.");
        assert_eq!(finals[0]["data"]["turns"], 4);
    }

    #[test]
    fn a_plain_answer_is_the_reply() {
        let dir = TempDir::new();
        let http = FakeHttp::new();
        http.says("Nothing to do.");
        let (ended, _) = go(&config(&dir), &http);
        assert_eq!(ended.result, Ok("Nothing to do.".to_string()));
        assert_eq!(ended.turns, 1);
    }

    #[test]
    fn the_turn_limit_is_a_failure() {
        let dir = TempDir::new();
        let http = FakeHttp::new();
        for n in 0..10 {
            http.calls(
                &format!("c{n}"),
                "glob",
                json!({"pattern": format!("*.{n}")}),
            );
        }
        let config = Config {
            max_turns: 3,
            ..config(&dir)
        };
        let (ended, events) = go(&config, &http);
        assert_eq!(
            ended.result,
            Err("turn limit (3) reached without finishing".to_string())
        );
        assert_eq!(ended.turns, 3);
        assert_eq!(events.iter().filter(|e| e["type"] == "progress").count(), 3);
        let finals = ended.final_events();
        assert_eq!(
            finals[0],
            json!({"type": "error", "message": "turn limit (3) reached without finishing"})
        );
        assert_eq!(finals[1]["type"], "final");
        assert_eq!(
            finals[1]["text"],
            "error: turn limit (3) reached without finishing"
        );
    }

    #[test]
    fn unknown_tools_and_malformed_arguments_are_tool_errors() {
        let dir = TempDir::new();
        let http = FakeHttp::new();
        http.calls("c1", "rm_rf", json!({}))
            .calls_raw("c2", "read_file", "{\"path\": ")
            .says("gave up politely");
        let (ended, events) = go(&config(&dir), &http);
        assert_eq!(ended.result, Ok("gave up politely".to_string()));
        let results = tool_messages(&http.model_requests()[2]);
        assert!(
            results[0]
                .1
                .starts_with("error: unknown tool \"rm_rf\"; tools are read_file, "),
            "{}",
            results[0].1
        );
        assert!(
            results[1]
                .1
                .starts_with("error: malformed arguments for read_file: EOF while parsing"),
            "{}",
            results[1].1
        );
        let tool_events: Vec<&Value> = events.iter().filter(|e| e["type"] == "tool").collect();
        assert_eq!(tool_events[0]["result"], "error");
        assert!(
            tool_events[0]["error"]
                .as_str()
                .unwrap()
                .starts_with("unknown tool")
        );
    }

    #[test]
    fn repeated_calls_are_refused_then_the_run_gives_up() {
        let dir = TempDir::new();
        dir.write("a.txt", "hello\n");
        let http = FakeHttp::new();
        for n in 0..6 {
            http.calls(&format!("c{n}"), "read_file", json!({"path": "a.txt"}));
        }
        let (ended, _) = go(&config(&dir), &http);
        assert_eq!(
            ended.result,
            Err(
                "the model called read_file with the same arguments 5 times in a row; giving up"
                    .to_string()
            )
        );
        assert_eq!(ended.turns, 5);
        let results = tool_messages(&http.model_requests()[4]);
        assert_eq!(results.len(), 4);
        assert!(results[1].1.contains("hello"));
        for refused in &results[2..] {
            assert!(
                refused
                    .1
                    .starts_with("error: you called read_file with the same arguments"),
                "{}",
                refused.1
            );
            assert!(refused.1.ends_with("change approach or finish"));
        }
    }

    #[test]
    fn an_empty_answer_is_nudged_once() {
        let dir = TempDir::new();
        let http = FakeHttp::new();
        http.says("").says("done after all");
        let (ended, _) = go(&config(&dir), &http);
        assert_eq!(ended.result, Ok("done after all".to_string()));
        assert_eq!(ended.turns, 2);
        let second = &http.model_requests()[1];
        let last = second["messages"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(last["role"], "user");
        assert!(last["content"].as_str().unwrap().contains("empty"));

        let http = FakeHttp::new();
        http.says("")
            .answer(json!({"role": "assistant", "content": null}));
        let (ended, _) = go(&config(&dir), &http);
        assert_eq!(
            ended.result,
            Err("the model answered with neither text nor tool calls twice in a row".to_string())
        );
        assert_eq!(ended.turns, 2);
    }

    #[test]
    fn sidecar_failures_end_the_run_with_the_status() {
        let dir = TempDir::new();
        let http = FakeHttp::new();
        http.raw(503, &format!("overloaded {}", "z".repeat(1000)));
        let (ended, _) = go(&config(&dir), &http);
        let err = ended.result.unwrap_err();
        assert!(
            err.starts_with("the model answered 503: overloaded zzz"),
            "{err}"
        );
        assert!(err.len() < 350, "{}", err.len());

        let http = FakeHttp::new();
        http.raw(200, "not json at all");
        let err = go(&config(&dir), &http).0.result.unwrap_err();
        assert!(
            err.contains("not JSON") && err.contains("not json at all"),
            "{err}"
        );

        let http = FakeHttp::new();
        let err = go(&config(&dir), &http).0.result.unwrap_err();
        assert!(err.starts_with("cannot reach the model: "), "{err}");
    }

    #[test]
    fn tool_results_are_cut_to_the_budget() {
        let dir = TempDir::new();
        let long = format!("{}\n", "needle ".repeat(40));
        dir.write("big.txt", &long.repeat(150));
        let http = FakeHttp::new();
        http.calls("c1", "grep", json!({"pattern": "needle"}))
            .calls("c2", "read_file", json!({"path": "big.txt"}))
            .says("ok");
        go(&config(&dir), &http);
        let results = tool_messages(&http.model_requests()[2]);
        assert!(results[0].1.len() <= RESULT_MAX + 200);
        assert!(
            results[0].1.contains("[cut: showing the first"),
            "grep not cut"
        );
        // read_file stays under the budget on its own, ending with its note.
        assert!(results[1].1.len() <= RESULT_MAX);
        assert!(
            results[1].1.ends_with("to read on]"),
            "{}",
            &results[1].1[results[1].1.len() - 100..]
        );
    }

    #[test]
    fn long_runs_are_compacted_with_pairs_intact() {
        let dir = TempDir::new();
        for n in 0..30 {
            dir.write(
                &format!("f{n}.txt"),
                &format!("{}\n", "w".repeat(200)).repeat(70),
            );
        }
        let http = FakeHttp::new();
        for n in 0..30 {
            http.calls(
                &format!("c{n}"),
                "read_file",
                json!({"path": format!("f{n}.txt")}),
            );
        }
        http.says("read everything");
        let (ended, _) = go(&config(&dir), &http);
        assert_eq!(ended.result, Ok("read everything".to_string()));
        let requests = http.model_requests();
        let mut compacted = false;
        for request in &requests {
            assert_pairs(request);
            let messages = request["messages"].as_array().unwrap();
            assert_eq!(messages[0]["content"], "sys");
            assert_eq!(messages[1]["content"], "fix the bug");
            let size: usize = messages.iter().map(|m| m.to_string().len()).sum();
            assert!(
                size < CONTEXT_MAX + 2 * RESULT_MAX,
                "request of {size} bytes"
            );
            let third = messages.get(2).and_then(|m| m["content"].as_str());
            if let Some(summary) = third.filter(|c| c.contains("summarised")) {
                compacted = true;
                assert!(summary.contains("- read_file f0.txt: ok"), "{summary}");
            }
        }
        assert!(compacted, "never compacted");
    }

    #[test]
    fn config_reads_the_environment() {
        let dir = TempDir::new();
        let ws = dir.path().to_string_lossy().into_owned();
        let dispatch: Dispatch = serde_json::from_str(
            r#"{"contract":1,"id":"x","agent":"cli","kind":"a2a","session":"s","prompt":"hi","model":null,"max_tokens":null,"metadata":{}}"#,
        )
        .unwrap();
        let env = |vars: Vec<(&'static str, String)>| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.clone())
            }
        };
        let none = env(vec![("CAIRN_WORKSPACE", ws.clone())]);
        assert!(
            Config::new(&dispatch, &none)
                .unwrap_err()
                .contains("OPENAI_BASE_URL")
        );

        let basic = env(vec![
            (
                "OPENAI_BASE_URL",
                "http://sidecar.cairn.internal/v1/".into(),
            ),
            ("CAIRN_WORKSPACE", ws.clone()),
        ]);
        let c = Config::new(&dispatch, &basic).unwrap();
        assert_eq!(
            c.chat_url,
            "http://sidecar.cairn.internal/v1/chat/completions"
        );
        assert_eq!(c.model, "default");
        assert_eq!(c.max_turns, DEFAULT_MAX_TURNS);
        assert_eq!(c.broker, None);
        assert_eq!(c.memory, None);
        assert_eq!(c.prompt, "hi");

        let full = env(vec![
            ("OPENAI_BASE_URL", "http://s/v1".into()),
            ("CAIRN_WORKSPACE", ws.clone()),
            ("CAIRN_MODEL", "env-model".into()),
            ("CODER_MAX_TURNS", "7".into()),
            ("CAIRN_BROKER_URL", "http://broker".into()),
            ("CAIRN_MEMORY", "/memory".into()),
        ]);
        let c = Config::new(&dispatch, &full).unwrap();
        assert_eq!((c.model.as_str(), c.max_turns), ("env-model", 7));
        assert_eq!(c.broker.as_deref(), Some("http://broker"));
        assert_eq!(c.memory, Some(PathBuf::from("/memory")));
        let with_model = Dispatch {
            model: Some("routed".into()),
            ..dispatch
        };
        assert_eq!(Config::new(&with_model, &full).unwrap().model, "routed");

        assert_eq!(max_turns(Some("0")), 1);
        assert_eq!(max_turns(Some("99999")), MAX_TURNS_CAP);
        assert_eq!(max_turns(Some("lots")), DEFAULT_MAX_TURNS);
    }
}
