//! Test helpers: temporary directories and a scripted HTTP fake.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

use crate::http::Post;

/// A fresh directory under the system's temporary directory, removed when
/// dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("coder-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Write a file (creating its directories).
    pub fn write(&self, rel: &str, content: &str) {
        let path = self.0.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("create dirs");
        std::fs::write(path, content).expect("write");
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.0.join(rel)).expect("read")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One scripted answer: a status and a body, or no answer at all.
type Scripted = Result<(u16, Vec<u8>), String>;

/// Answers posts from scripts: the model's answers to `/chat/completions`,
/// the broker's to `/v1/run`, in order; records every request.
#[derive(Default)]
pub struct FakeHttp {
    pub model: RefCell<VecDeque<Scripted>>,
    pub broker: RefCell<VecDeque<Scripted>>,
    pub requests: RefCell<Vec<(String, Value)>>,
}

impl FakeHttp {
    pub fn new() -> Self {
        Self::default()
    }

    /// Script the model's next answer: a 200 with this message.
    pub fn answer(&self, message: Value) -> &Self {
        let body = json!({"choices": [{"message": message}], "usage": {"prompt_tokens": 10, "completion_tokens": 2}});
        self.model
            .borrow_mut()
            .push_back(Ok((200, body.to_string().into_bytes())));
        self
    }

    /// Script an answer calling one tool.
    pub fn calls(&self, id: &str, name: &str, args: Value) -> &Self {
        self.answer(json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": id, "type": "function", "function": {"name": name, "arguments": args.to_string()}}
        ]}))
    }

    /// Script an answer calling one tool with raw argument text.
    pub fn calls_raw(&self, id: &str, name: &str, args: &str) -> &Self {
        self.answer(json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": id, "type": "function", "function": {"name": name, "arguments": args}}
        ]}))
    }

    /// Script a plain text answer.
    pub fn says(&self, text: &str) -> &Self {
        self.answer(json!({"role": "assistant", "content": text}))
    }

    /// Script a raw model answer.
    pub fn raw(&self, status: u16, body: &str) -> &Self {
        self.model
            .borrow_mut()
            .push_back(Ok((status, body.as_bytes().to_vec())));
        self
    }

    /// Script the broker's next answer.
    pub fn broker_says(&self, status: u16, body: Value) -> &Self {
        self.broker
            .borrow_mut()
            .push_back(Ok((status, body.to_string().into_bytes())));
        self
    }

    /// The bodies sent to the model, in order.
    pub fn model_requests(&self) -> Vec<Value> {
        self.requests
            .borrow()
            .iter()
            .filter(|(url, _)| url.ends_with("/chat/completions"))
            .map(|(_, body)| body.clone())
            .collect()
    }

    /// The bodies sent to the broker's `/v1/run`, in order.
    pub fn broker_requests(&self) -> Vec<(String, Value)> {
        self.sent_to("/v1/run")
    }

    /// The bodies sent to the broker's `/v1/step`, in order.
    pub fn step_requests(&self) -> Vec<Value> {
        self.sent_to("/v1/step")
            .into_iter()
            .map(|(_, b)| b)
            .collect()
    }

    fn sent_to(&self, suffix: &str) -> Vec<(String, Value)> {
        self.requests
            .borrow()
            .iter()
            .filter(|(url, _)| url.ends_with(suffix))
            .cloned()
            .collect()
    }
}

impl Post for FakeHttp {
    fn post(&self, url: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        let json: Value = serde_json::from_slice(body).expect("requests are JSON");
        self.requests.borrow_mut().push((url.to_string(), json));
        if url.ends_with("/v1/step") {
            let n = self.requests.borrow().len();
            return Ok((200, json!({ "step": n }).to_string().into_bytes()));
        }
        let script = if url.ends_with("/chat/completions") {
            &self.model
        } else if url.ends_with("/v1/run") {
            &self.broker
        } else {
            return Err(format!("no such host for {url}"));
        };
        script
            .borrow_mut()
            .pop_front()
            .unwrap_or_else(|| Err(format!("nothing scripted for {url}")))
    }
}
