//! The agent's tools: files in the workspace, search, commands through the
//! host's tool broker, memory across dispatches, and `finish`.
//!
//! Every tool takes the model's arguments as JSON text and answers
//! `Ok(text)` or `Err(message)`; nothing a model sends can make one panic.
//! Paths are relative to the workspace root, which is a parameter so tests
//! can use a temporary directory; WASI itself also keeps every path inside
//! the preopened `/workspace`, symlinks included.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use regex::RegexBuilder;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use crate::glob;
use crate::http::Post;
use crate::text;

/// `read_file` shows at most this many lines per call.
pub const READ_MAX_LINES: usize = 2000;
/// `read_file` shows at most this many bytes per call.
pub const READ_MAX_BYTES: usize = 64 * 1024;
/// A line longer than this is shown shortened, so one huge line (minified
/// code, data) cannot fill a whole read.
const READ_MAX_LINE: usize = 2000;
/// `list_dir` names at most this many entries.
pub const LIST_MAX: usize = 500;
/// `glob` returns at most this many paths.
pub const GLOB_MAX: usize = 500;
/// `grep` returns at most this many matching lines.
pub const GREP_MAX: usize = 200;
/// `grep` shows at most this many bytes of a matching line.
const GREP_LINE_MAX: usize = 300;
/// `grep` passes over files larger than this: they are data, not source.
const GREP_FILE_MAX: u64 = 4 << 20;
/// `edit_file` refuses files larger than this.
const EDIT_FILE_MAX: u64 = 16 << 20;
/// One memory holds at most this much text.
const MEMORY_MAX: usize = 64 * 1024;
/// A file whose first this-many bytes hold a NUL is taken as binary.
const BINARY_SNIFF: usize = 8192;
/// How much of each of a command's streams is kept: the head (first errors)
/// and the tail (summaries), the middle cut.
const RUN_HEAD: usize = 3 * 1024;
const RUN_TAIL: usize = 4 * 1024;

/// The tools' names, in the order the model is told about them.
pub const NAMES: [&str; 10] = [
    "read_file",
    "write_file",
    "edit_file",
    "list_dir",
    "glob",
    "grep",
    "run",
    "remember",
    "recall",
    "finish",
];

/// What one tool call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The tool ran (or refused its input): the result for the model.
    Done(Result<String, String>),
    /// `finish` was called with this summary: the loop ends.
    Finish(String),
}

/// The tools, bound to one dispatch's workspace, memory and broker.
pub struct Tools<'a> {
    /// The workspace every path is relative to.
    pub root: PathBuf,
    /// The memory directory, when the agent has one.
    pub memory: Option<PathBuf>,
    /// The host's tool broker, when the agent may run commands.
    pub broker: Option<String>,
    /// How the broker is reached.
    pub http: &'a dyn Post,
    /// `read_file`'s byte budget per call, at most [`READ_MAX_BYTES`]; the
    /// loop lowers it so a read fits in one tool result and keeps its note.
    pub read_max_bytes: usize,
}

impl Tools<'_> {
    /// Run the tool `name` with the model's `arguments` (JSON text).
    pub fn call(&self, name: &str, arguments: &str) -> Outcome {
        // Some models send nothing for a tool without required arguments.
        let args = if arguments.trim().is_empty() {
            "{}"
        } else {
            arguments
        };
        let result = match name {
            "read_file" => parse(name, args).and_then(|a| self.read_file(a)),
            "write_file" => parse(name, args).and_then(|a| self.write_file(a)),
            "edit_file" => parse(name, args).and_then(|a| self.edit_file(a)),
            "list_dir" => parse(name, args).and_then(|a| self.list_dir(a)),
            "glob" => parse(name, args).and_then(|a| self.glob(a)),
            "grep" => parse(name, args).and_then(|a| self.grep(a)),
            "run" => parse(name, args).and_then(|a| self.run(a)),
            "remember" => parse(name, args).and_then(|a| self.remember(a)),
            "recall" => parse(name, args).and_then(|a| self.recall(a)),
            "finish" => {
                return match parse::<FinishArgs>(name, args) {
                    Ok(a) if !a.summary.trim().is_empty() => Outcome::Finish(a.summary),
                    Ok(_) => Outcome::Done(Err(
                        "finish needs a non-empty summary of what was done".to_string(),
                    )),
                    Err(e) => Outcome::Done(Err(e)),
                };
            }
            _ => Err(unknown_tool(name)),
        };
        Outcome::Done(result)
    }

    fn read_file(&self, a: ReadArgs) -> Result<String, String> {
        let (full, rel) = resolve(&self.root, &a.path)?;
        let start = a.start_line.unwrap_or(1).max(1);
        if let Some(end) = a.end_line.filter(|&end| end < start) {
            return Err(format!("end_line {end} is before start_line {start}"));
        }
        let budget = self.read_max_bytes.min(READ_MAX_BYTES);
        read_lines(&full, &rel, start, a.end_line, budget)
    }

    fn write_file(&self, a: WriteArgs) -> Result<String, String> {
        let (full, rel) = resolve(&self.root, &a.path)?;
        if rel == "." {
            return Err("write_file needs a file path".to_string());
        }
        if full.is_dir() {
            return Err(format!("{rel} is a directory"));
        }
        let existed = full.exists();
        if let Some(parent) = full.parent() {
            fs::create_dir_all(parent).map_err(|e| io_error(&rel, &e))?;
        }
        fs::write(&full, &a.content).map_err(|e| io_error(&rel, &e))?;
        let how = if existed { "replaced" } else { "new file" };
        Ok(format!("wrote {} bytes to {rel} ({how})", a.content.len()))
    }

    fn edit_file(&self, a: EditArgs) -> Result<String, String> {
        let (full, rel) = resolve(&self.root, &a.path)?;
        let meta = match fs::metadata(&full) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!("{rel} does not exist; create it with write_file"));
            }
            Err(e) => return Err(io_error(&rel, &e)),
        };
        if meta.is_dir() {
            return Err(format!("{rel} is a directory"));
        }
        if meta.len() > EDIT_FILE_MAX {
            return Err(format!("{rel} is too large to edit ({} bytes)", meta.len()));
        }
        if a.search.is_empty() {
            return Err("search must not be empty; to replace a whole file use write_file".into());
        }
        let bytes = fs::read(&full).map_err(|e| io_error(&rel, &e))?;
        let content = String::from_utf8(bytes)
            .map_err(|_| format!("{rel} is not UTF-8 text; edit_file cannot change it"))?;
        let at = unique_match(&content, &a.search, &rel)?;
        let mut edited = String::with_capacity(content.len() + a.replace.len());
        edited.push_str(&content[..at]);
        edited.push_str(&a.replace);
        edited.push_str(&content[at + a.search.len()..]);
        fs::write(&full, &edited).map_err(|e| io_error(&rel, &e))?;
        let line = content[..at].matches('\n').count() + 1;
        Ok(format!(
            "edited {rel} at line {line}: {} replaced by {}; the file now has {} lines",
            lines(&a.search),
            lines(&a.replace),
            edited.lines().count()
        ))
    }

    fn list_dir(&self, a: ListArgs) -> Result<String, String> {
        let (full, rel) = resolve(&self.root, a.path.as_deref().unwrap_or("."))?;
        let meta = fs::metadata(&full).map_err(|e| io_error(&rel, &e))?;
        if !meta.is_dir() {
            return Err(format!("{rel} is not a directory; use read_file"));
        }
        fs::read_dir(&full).map_err(|e| io_error(&rel, &e))?;
        let entries = glob::sorted_entries(&full);
        if entries.is_empty() {
            return Ok(format!("{rel} is empty"));
        }
        let mut out: Vec<String> = entries
            .iter()
            .take(LIST_MAX)
            .map(|(name, is_dir)| {
                // A symlink to a directory reads as one too.
                let dir = *is_dir || full.join(name).is_dir();
                if dir {
                    format!("{name}/")
                } else {
                    name.clone()
                }
            })
            .collect();
        if entries.len() > LIST_MAX {
            out.push(format!(
                "[{} more entries not shown; use glob or grep to narrow down]",
                entries.len() - LIST_MAX
            ));
        }
        Ok(out.join("\n"))
    }

    fn glob(&self, a: GlobArgs) -> Result<String, String> {
        let pattern = a.pattern.trim();
        if pattern.is_empty() {
            return Err("pattern must not be empty, e.g. \"**/*.rs\"".to_string());
        }
        // A pattern is a path too: the same rules keep it inside.
        resolve(&self.root, pattern)?;
        let walked = glob::walk(&self.root, "");
        let mut found = walked
            .entries
            .iter()
            .filter(|e| glob::matches(pattern, &e.path))
            .map(|e| {
                if e.is_dir {
                    format!("{}/", e.path)
                } else {
                    e.path.clone()
                }
            });
        let mut out: Vec<String> = found.by_ref().take(GLOB_MAX).collect();
        let more = found.count();
        if out.is_empty() {
            return Ok(format!("no paths match {pattern}"));
        }
        if more > 0 {
            out.push(format!(
                "[{more} more matches not shown; narrow the pattern]"
            ));
        }
        if walked.stopped {
            out.push(stopped_note());
        }
        Ok(out.join("\n"))
    }

    fn grep(&self, a: GrepArgs) -> Result<String, String> {
        let regex = RegexBuilder::new(&a.pattern)
            .size_limit(1 << 22)
            .build()
            .map_err(|e| format!("bad regex {:?}: {e}", a.pattern))?;
        let (full, rel) = resolve(&self.root, a.path.as_deref().unwrap_or("."))?;
        let meta = fs::metadata(&full).map_err(|e| io_error(&rel, &e))?;
        let (files, stopped): (Vec<String>, bool) = if meta.is_dir() {
            let walked = glob::walk(&full, &rel);
            let filter = a.glob.as_deref().map(str::trim).filter(|g| !g.is_empty());
            let files = walked
                .entries
                .into_iter()
                .filter(|e| !e.is_dir && filter.is_none_or(|g| glob_filter(g, &e.path)))
                .map(|e| e.path)
                .collect();
            (files, walked.stopped)
        } else {
            (vec![rel.clone()], false)
        };
        let mut out = Vec::new();
        let mut more = false;
        for file in &files {
            let Ok((path, _)) = resolve(&self.root, file) else {
                continue;
            };
            if !grep_file(&path, file, &regex, &mut out) {
                more = true;
                break;
            }
        }
        if out.is_empty() {
            out.push(format!(
                "no matches for {:?} in {rel} ({} files searched)",
                a.pattern,
                files.len()
            ));
        }
        if more {
            out.push(format!(
                "[stopped at {GREP_MAX} matches; narrow the pattern, path or glob]"
            ));
        }
        if stopped {
            out.push(stopped_note());
        }
        Ok(out.join("\n"))
    }

    fn run(&self, a: RunArgs) -> Result<String, String> {
        let broker = self
            .broker
            .as_deref()
            .ok_or("no tool broker: this agent cannot run commands")?;
        if a.argv.first().is_none_or(|p| p.trim().is_empty()) {
            return Err("argv must start with a program, e.g. [\"cargo\", \"test\"]".to_string());
        }
        let url = format!("{}/v1/run", broker.trim_end_matches('/'));
        let body = run_request(&a.argv, a.timeout_secs);
        let (status, bytes) = self
            .http
            .post(&url, body.to_string().as_bytes())
            .map_err(|e| format!("cannot reach the tool broker: {e}"))?;
        run_answer(status, &bytes)
    }

    fn remember(&self, a: RememberArgs) -> Result<String, String> {
        let dir = self.memory_dir()?;
        check_key(&a.key)?;
        if a.text.len() > MEMORY_MAX {
            return Err(format!(
                "text is {} bytes; a memory holds at most {MEMORY_MAX}",
                a.text.len()
            ));
        }
        let path = dir.join(format!("{}.md", a.key));
        fs::write(&path, &a.text).map_err(|e| io_error(&a.key, &e))?;
        Ok(format!("remembered {} ({} bytes)", a.key, a.text.len()))
    }

    fn recall(&self, a: RecallArgs) -> Result<String, String> {
        let dir = self.memory_dir()?;
        let keys = memory_keys(dir);
        let Some(key) = a.key.filter(|k| !k.trim().is_empty()) else {
            return Ok(if keys.is_empty() {
                "nothing remembered yet".to_string()
            } else {
                format!("keys: {}", keys.join(", "))
            });
        };
        check_key(&key)?;
        match fs::read(dir.join(format!("{key}.md"))) {
            Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
                "nothing remembered under {key}; keys: {}",
                if keys.is_empty() {
                    "none".to_string()
                } else {
                    keys.join(", ")
                }
            )),
            Err(e) => Err(io_error(&key, &e)),
        }
    }

    /// The memory directory, or why there is none.
    fn memory_dir(&self) -> Result<&Path, String> {
        let dir = self
            .memory
            .as_deref()
            .ok_or("no memory: this agent has no memory directory")?;
        if !dir.is_dir() {
            return Err(format!("no memory: {} is not available", dir.display()));
        }
        Ok(dir)
    }
}

/// Parse a tool's arguments, or say what was wrong and what was expected.
fn parse<T: DeserializeOwned>(name: &str, args: &str) -> Result<T, String> {
    serde_json::from_str(args).map_err(|e| {
        format!(
            "malformed arguments for {name}: {e}; expected {}",
            shape(name)
        )
    })
}

/// The expected arguments of a tool, for error messages.
fn shape(name: &str) -> &'static str {
    match name {
        "read_file" => r#"{"path": string, "start_line"?: int, "end_line"?: int}"#,
        "write_file" => r#"{"path": string, "content": string}"#,
        "edit_file" => r#"{"path": string, "search": string, "replace": string}"#,
        "list_dir" => r#"{"path"?: string}"#,
        "glob" => r#"{"pattern": string}"#,
        "grep" => r#"{"pattern": string, "path"?: string, "glob"?: string}"#,
        "run" => r#"{"argv": [string, ...], "timeout_secs"?: int}"#,
        "remember" => r#"{"key": string, "text": string}"#,
        "recall" => r#"{"key"?: string}"#,
        "finish" => r#"{"summary": string}"#,
        _ => "a JSON object",
    }
}

/// The error for a tool that does not exist.
pub fn unknown_tool(name: &str) -> String {
    format!("unknown tool {name:?}; tools are {}", tool_list())
}

/// The tools' names, comma-separated.
pub fn tool_list() -> String {
    NAMES.join(", ")
}

/// Resolve `path` (relative to `root`) to a full path and its normalised
/// relative form (`.` for the root). Refuses absolute paths and `..` that
/// would leave the root; `.` and empty segments are dropped.
pub fn resolve(root: &Path, path: &str) -> Result<(PathBuf, String), String> {
    let path = path.trim();
    if let Some(inside) = path.strip_prefix("/workspace/") {
        return Err(format!(
            "absolute path {path:?} refused: paths are relative to the workspace; use {inside:?}"
        ));
    }
    if path.starts_with('/') || path.starts_with('\\') {
        return Err(format!(
            "absolute path {path:?} refused: paths are relative to the workspace, e.g. \"src/main.rs\""
        ));
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!("path {path:?} leaves the workspace"));
                }
            }
            part => parts.push(part),
        }
    }
    let full = parts.iter().fold(root.to_path_buf(), |p, s| p.join(s));
    let rel = if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    };
    Ok((full, rel))
}

/// "1 line" or "N lines", for the lines of a piece of text.
fn lines(text: &str) -> String {
    match text.lines().count() {
        1 => "1 line".to_string(),
        n => format!("{n} lines"),
    }
}

/// An I/O error as a one-line message naming the path.
fn io_error(rel: &str, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => format!("{rel} does not exist"),
        _ => format!("{rel}: {e}"),
    }
}

/// Numbered lines of a file from `start`, until `end`, [`READ_MAX_LINES`]
/// or `budget` bytes, with a note saying how to read on when cut.
fn read_lines(
    full: &Path,
    rel: &str,
    start: u64,
    end: Option<u64>,
    budget: usize,
) -> Result<String, String> {
    let meta = fs::metadata(full).map_err(|e| io_error(rel, &e))?;
    if meta.is_dir() {
        return Err(format!("{rel} is a directory; use list_dir"));
    }
    let mut reader = BufReader::new(File::open(full).map_err(|e| io_error(rel, &e))?);
    if looks_binary(&mut reader) {
        return Err(format!(
            "{rel} looks binary ({} bytes); not shown",
            meta.len()
        ));
    }
    let mut out = String::new();
    let (mut number, mut shown, mut cut_at) = (0u64, 0usize, None);
    let mut line = Vec::new();
    loop {
        let length = match next_line(&mut reader, &mut line) {
            Ok(Some(length)) => length,
            Ok(None) => break,
            Err(e) => return Err(io_error(rel, &e)),
        };
        number += 1;
        if number < start || cut_at.is_some() {
            continue; // still counting lines for the note
        }
        if end.is_some_and(|end| number > end) {
            break;
        }
        let shown_line = numbered(number, &line, length);
        // The first line always shows, so reading on always advances.
        if shown > 0 && (shown >= READ_MAX_LINES || out.len() + shown_line.len() > budget) {
            cut_at = Some(number);
            continue;
        }
        out.push_str(&shown_line);
        shown += 1;
    }
    if number == 0 {
        return Ok(format!("{rel} is empty"));
    }
    if shown == 0 && cut_at.is_none() {
        return Err(format!("{rel} has only {number} lines"));
    }
    if let Some(next) = cut_at {
        out.push_str(&format!(
            "[showing lines {start}-{} of {number}; call read_file with start_line={next} to read on]",
            next - 1
        ));
    }
    Ok(out)
}

/// Read the next line into `line`, keeping at most [`READ_MAX_LINE`] bytes
/// of it however long it is (a file may be one huge line); returns the
/// line's whole length, `None` at the end of the file.
fn next_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<Option<usize>> {
    line.clear();
    let mut length = 0;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok((length > 0).then_some(length));
        }
        let (used, ends) = match chunk.iter().position(|&b| b == b'\n') {
            Some(at) => (at + 1, true),
            None => (chunk.len(), false),
        };
        let room = (READ_MAX_LINE + 1).saturating_sub(line.len());
        line.extend_from_slice(&chunk[..used.min(room)]);
        length += used;
        reader.consume(used);
        if ends {
            return Ok(Some(length));
        }
    }
}

/// One line as `   12\ttext\n`, shortened past [`READ_MAX_LINE`] bytes
/// (`length` is the whole line's).
fn numbered(number: u64, kept: &[u8], length: usize) -> String {
    let text = String::from_utf8_lossy(kept);
    let text = text.trim_end_matches(['\n', '\r']);
    if length > READ_MAX_LINE + 1 || text.len() > READ_MAX_LINE {
        let kept = text::prefix(text, READ_MAX_LINE);
        format!("{number:>6}\t{kept} [... line cut: {length} bytes in all]\n")
    } else {
        format!("{number:>6}\t{text}\n")
    }
}

/// Whether a file's first bytes hold a NUL, the usual sign of binary data.
fn looks_binary(reader: &mut BufReader<File>) -> bool {
    reader
        .fill_buf()
        .map(|head| head.iter().take(BINARY_SNIFF).any(|&b| b == 0))
        .unwrap_or(false)
}

/// Where `search` occurs in `content`, when it occurs exactly once.
fn unique_match(content: &str, search: &str, rel: &str) -> Result<usize, String> {
    let mut found = content.match_indices(search).map(|(at, _)| at);
    match (found.next(), found.count()) {
        (Some(at), 0) => Ok(at),
        (Some(_), more) => Err(format!(
            "search found {} times in {rel}; include more context so it is unique",
            more + 1
        )),
        (None, _) => {
            let hint = if content.contains("\r\n") && !search.contains("\r\n") {
                " (the file has CRLF line endings)"
            } else {
                ""
            };
            Err(format!(
                "search not found in {rel}{hint}; read the file and copy the text exactly, without line numbers"
            ))
        }
    }
}

/// Whether a file passes `grep`'s glob filter: a pattern with a `/` is
/// matched against the whole relative path, one without against the name
/// at any depth (so `*.rs` finds every Rust file).
fn glob_filter(pattern: &str, path: &str) -> bool {
    if pattern.contains('/') {
        glob::matches(pattern, path)
    } else {
        let name = path.rsplit('/').next().unwrap_or(path);
        glob::segment_matches(pattern, name)
    }
}

/// Add a file's matching lines to `out`; false once [`GREP_MAX`] is
/// reached. Binary, unreadable and very large files are passed over.
fn grep_file(path: &Path, rel: &str, regex: &regex::Regex, out: &mut Vec<String>) -> bool {
    let Ok(meta) = fs::metadata(path) else {
        return true;
    };
    if !meta.is_file() || meta.len() > GREP_FILE_MAX {
        return true;
    }
    let mut bytes = Vec::new();
    if File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .is_err()
        || bytes.iter().take(BINARY_SNIFF).any(|&b| b == 0)
    {
        return true;
    }
    let text = String::from_utf8_lossy(&bytes);
    for (i, line) in text.lines().enumerate() {
        if regex.is_match(line) {
            if out.len() >= GREP_MAX {
                return false;
            }
            let shown = text::prefix(line.trim_end(), GREP_LINE_MAX);
            out.push(format!("{rel}:{}: {shown}", i + 1));
        }
    }
    true
}

/// The note for a walk that stopped early.
fn stopped_note() -> String {
    format!(
        "[the search stopped after {} entries; name a narrower path]",
        glob::MAX_ENTRIES
    )
}

/// The broker's request for a command.
pub fn run_request(argv: &[String], timeout_secs: Option<u64>) -> Value {
    let mut body = json!({ "argv": argv });
    if let Some(secs) = timeout_secs {
        body["timeout_secs"] = json!(secs);
    }
    body
}

/// The broker's answer to a command, as the model should see it.
#[derive(Debug, Deserialize)]
struct RunAnswer {
    exit: Option<i64>,
    #[serde(default)]
    signal: Option<i64>,
    #[serde(default)]
    stdout: String,
    #[serde(default)]
    stderr: String,
    #[serde(default)]
    truncated: bool,
    #[serde(default)]
    timed_out: bool,
    step: Option<u64>,
}

/// Turn the broker's answer into the tool result: the exit status and both
/// streams (each cut to its head and tail), or the broker's error.
pub fn run_answer(status: u16, body: &[u8]) -> Result<String, String> {
    if !(200..300).contains(&status) {
        let message = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| text::quote(body, 300));
        return Err(match status {
            403 => format!("not allowed by the policy: {message}"),
            _ => format!("the tool broker answered {status}: {message}"),
        });
    }
    let answer: RunAnswer = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the tool broker's answer is not understood ({e}): {}",
            text::quote(body, 300)
        )
    })?;
    let mut out = match (answer.exit, answer.signal, answer.timed_out) {
        (_, _, true) => "timed out (the command was stopped)".to_string(),
        (Some(code), _, false) => format!("exit {code}"),
        (None, Some(signal), false) => format!("killed by signal {signal}"),
        (None, None, false) => "ended without an exit code".to_string(),
    };
    if let Some(step) = answer.step {
        out.push_str(&format!(" (step {step})"));
    }
    if answer.truncated {
        out.push_str("\n[the broker cut the output]");
    }
    for (name, stream) in [("stdout", &answer.stdout), ("stderr", &answer.stderr)] {
        if stream.is_empty() {
            out.push_str(&format!("\n--- {name}: empty ---"));
        } else {
            out.push_str(&format!(
                "\n--- {name} ---\n{}",
                text::ends(stream.trim_end(), RUN_HEAD, RUN_TAIL)
            ));
        }
    }
    Ok(out)
}

/// Whether `key` is a valid memory key, `[a-z0-9_-]{1,64}`.
fn check_key(key: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!("bad key {key:?}: use 1 to 64 of a-z, 0-9, _ and -"))
    }
}

/// The keys remembered in `dir`, sorted.
fn memory_keys(dir: &Path) -> Vec<String> {
    glob::sorted_entries(dir)
        .into_iter()
        .filter(|(_, is_dir)| !is_dir)
        .filter_map(|(name, _)| name.strip_suffix(".md").map(str::to_string))
        .filter(|key| check_key(key).is_ok())
        .collect()
}

/// A short description of a call's arguments, for events, logs and the
/// summary left by compaction: the path, pattern, command or key.
pub fn describe(name: &str, arguments: &str) -> String {
    let args: Value = serde_json::from_str(arguments).unwrap_or(Value::Null);
    let field = |key: &str| args[key].as_str().map(|s| text::one_line(s, 80));
    let described =
        match name {
            "read_file" => field("path").map(|p| {
                match (args["start_line"].as_u64(), args["end_line"].as_u64()) {
                    (Some(s), Some(e)) => format!("{p}:{s}-{e}"),
                    (Some(s), None) => format!("{p}:{s}-"),
                    _ => p,
                }
            }),
            "write_file" | "edit_file" => field("path"),
            "list_dir" => Some(field("path").unwrap_or_else(|| ".".to_string())),
            "glob" => field("pattern"),
            "grep" => field("pattern").map(|p| match field("path") {
                Some(path) => format!("/{p}/ in {path}"),
                None => format!("/{p}/"),
            }),
            "run" => args["argv"].as_array().map(|argv| {
                let words: Vec<&str> = argv.iter().filter_map(Value::as_str).collect();
                text::one_line(&words.join(" "), 80)
            }),
            "remember" | "recall" => field("key"),
            "finish" => Some(String::new()),
            _ => None,
        };
    described.unwrap_or_else(|| text::one_line(arguments, 60))
}

/// The tools as OpenAI function tools, for the request's `tools`.
pub fn specs() -> Value {
    let tool = |name: &str, description: &str, properties: Value, required: &[&str]| {
        json!({
            "type": "function",
            "function": {
                "name": name,
                "description": description,
                "parameters": {"type": "object", "properties": properties, "required": required},
            }
        })
    };
    let string = |d: &str| json!({"type": "string", "description": d});
    let integer = |d: &str| json!({"type": "integer", "description": d});
    json!([
        tool(
            "read_file",
            "Read a text file as numbered lines (the numbers are not part of the file). Shows up to 2000 lines per call; the note at the end says how to read on.",
            json!({"path": string("file path, relative to the workspace"),
                   "start_line": integer("first line to show, from 1"),
                   "end_line": integer("last line to show")}),
            &["path"]
        ),
        tool(
            "write_file",
            "Create or replace a whole file (parent directories are created). For changes to an existing file prefer edit_file.",
            json!({"path": string("file path, relative to the workspace"),
                   "content": string("the file's complete new content")}),
            &["path", "content"]
        ),
        tool(
            "edit_file",
            "Replace one exact occurrence of `search` in a file with `replace`. `search` must match the file exactly (whitespace included, no line numbers) and occur once; include surrounding lines to make it unique.",
            json!({"path": string("file path, relative to the workspace"),
                   "search": string("the exact text to replace"),
                   "replace": string("the text to put in its place")}),
            &["path", "search", "replace"]
        ),
        tool(
            "list_dir",
            "List a directory's entries, sorted; directories end with /.",
            json!({"path": string("directory, relative to the workspace; default: the workspace")}),
            &[]
        ),
        tool(
            "glob",
            "Find paths matching a glob pattern: ** spans directories, * and ? match within a name (e.g. \"**/*.rs\", \"src/*.toml\"). .git, target and node_modules are skipped.",
            json!({"pattern": string("glob pattern, relative to the workspace")}),
            &["pattern"]
        ),
        tool(
            "grep",
            "Search file contents with a regular expression (Rust regex syntax); answers path:line: text. Skips binary files, .git, target and node_modules.",
            json!({"pattern": string("regular expression"),
                   "path": string("file or directory to search; default: the workspace"),
                   "glob": string("only files matching this glob, e.g. \"*.rs\" (any depth) or \"src/**/*.rs\"")}),
            &["pattern"]
        ),
        tool(
            "run",
            "Run a command in the workspace through the host (no shell: pass the program and its arguments; use [\"sh\", \"-c\", \"...\"] only when you need a shell and it is allowed). Answers the exit code, stdout and stderr. Commands the agent's policy does not allow are refused with the reason.",
            json!({"argv": {"type": "array", "items": {"type": "string"}, "description": "program and arguments, e.g. [\"cargo\", \"test\"]"},
                   "timeout_secs": integer("how long the command may take")}),
            &["argv"]
        ),
        tool(
            "remember",
            "Keep a note for later dispatches of this agent, under a key (a-z, 0-9, _ and -); replaces what the key held.",
            json!({"key": string("1 to 64 of a-z, 0-9, _ and -"), "text": string("what to remember")}),
            &["key", "text"]
        ),
        tool(
            "recall",
            "Read a note kept with remember; without a key, list the keys.",
            json!({"key": string("the note's key")}),
            &[]
        ),
        tool(
            "finish",
            "End the task: the summary is your final answer (what you did, what you verified, anything left undone).",
            json!({"summary": string("the final answer")}),
            &["summary"]
        ),
    ])
}

/// An optional whole number that a model may also send as a string.
fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < 1e15)
                    .map(|f| f as u64)
            })
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("expected a whole number >= 0, got {n}"))),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("expected a whole number >= 0, got {s:?}"))),
        Some(other) => Err(D::Error::custom(format!(
            "expected a whole number >= 0, got {other}"
        ))),
    }
}

#[derive(Deserialize)]
struct ReadArgs {
    path: String,
    #[serde(default, deserialize_with = "lenient_u64")]
    start_line: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    end_line: Option<u64>,
}

#[derive(Deserialize)]
struct WriteArgs {
    path: String,
    content: String,
}

#[derive(Deserialize)]
struct EditArgs {
    path: String,
    search: String,
    replace: String,
}

#[derive(Deserialize)]
struct ListArgs {
    path: Option<String>,
}

#[derive(Deserialize)]
struct GlobArgs {
    pattern: String,
}

#[derive(Deserialize)]
struct GrepArgs {
    pattern: String,
    path: Option<String>,
    glob: Option<String>,
}

#[derive(Deserialize)]
struct RunArgs {
    argv: Vec<String>,
    #[serde(default, deserialize_with = "lenient_u64")]
    timeout_secs: Option<u64>,
}

#[derive(Deserialize)]
struct RememberArgs {
    key: String,
    text: String,
}

#[derive(Deserialize)]
struct RecallArgs {
    key: Option<String>,
}

#[derive(Deserialize)]
struct FinishArgs {
    summary: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{FakeHttp, TempDir};

    fn tools<'a>(dir: &TempDir, http: &'a FakeHttp) -> Tools<'a> {
        Tools {
            root: dir.path().to_path_buf(),
            memory: None,
            broker: None,
            http,
            read_max_bytes: READ_MAX_BYTES,
        }
    }

    fn ok(outcome: Outcome) -> String {
        match outcome {
            Outcome::Done(Ok(text)) => text,
            other => panic!("expected a result, got {other:?}"),
        }
    }

    fn err(outcome: Outcome) -> String {
        match outcome {
            Outcome::Done(Err(text)) => text,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn resolve_keeps_paths_inside() {
        let root = Path::new("/ws");
        assert_eq!(
            resolve(root, "src/./a.rs").unwrap(),
            (root.join("src/a.rs"), "src/a.rs".into())
        );
        assert_eq!(resolve(root, "src/../b").unwrap().1, "b");
        assert_eq!(resolve(root, "").unwrap(), (root.to_path_buf(), ".".into()));
        assert_eq!(resolve(root, "./").unwrap().1, ".");
        assert!(
            resolve(root, "..")
                .unwrap_err()
                .contains("leaves the workspace")
        );
        assert!(
            resolve(root, "src/../../etc/passwd")
                .unwrap_err()
                .contains("leaves the workspace")
        );
        assert!(
            resolve(root, "/etc/passwd")
                .unwrap_err()
                .contains("absolute path")
        );
        let hint = resolve(root, "/workspace/src/a.rs").unwrap_err();
        assert!(hint.contains("use \"src/a.rs\""), "{hint}");
    }

    #[test]
    fn every_file_tool_refuses_escapes() {
        let dir = TempDir::new();
        let http = FakeHttp::new();
        let t = tools(&dir, &http);
        for (name, args) in [
            ("read_file", r#"{"path":"../x"}"#),
            ("write_file", r#"{"path":"/tmp/x","content":""}"#),
            (
                "edit_file",
                r#"{"path":"a/../../x","search":"a","replace":"b"}"#,
            ),
            ("list_dir", r#"{"path":".."}"#),
            ("glob", r#"{"pattern":"../*"}"#),
            ("grep", r#"{"pattern":"x","path":"/etc"}"#),
        ] {
            let e = err(t.call(name, args));
            assert!(
                e.contains("leaves the workspace") || e.contains("absolute path"),
                "{name}: {e}"
            );
        }
    }

    #[test]
    fn read_file_numbers_lines_and_ranges() {
        let dir = TempDir::new();
        dir.write("a.txt", "one\ntwo\r\nthree\nfour");
        let http = FakeHttp::new();
        let t = tools(&dir, &http);
        let all = ok(t.call("read_file", r#"{"path":"a.txt"}"#));
        assert_eq!(
            all,
            "     1\tone\n     2\ttwo\n     3\tthree\n     4\tfour\n"
        );
        let some = ok(t.call(
            "read_file",
            r#"{"path":"a.txt","start_line":2,"end_line":"3"}"#,
        ));
        assert_eq!(some, "     2\ttwo\n     3\tthree\n");
        let e = err(t.call("read_file", r#"{"path":"a.txt","start_line":9}"#));
        assert_eq!(e, "a.txt has only 4 lines");
        let e = err(t.call(
            "read_file",
            r#"{"path":"a.txt","start_line":3,"end_line":2}"#,
        ));
        assert!(e.contains("before start_line"), "{e}");
        let e = err(t.call("read_file", r#"{"path":"a.txt","start_line":-1}"#));
        assert!(e.contains("malformed arguments for read_file"), "{e}");
    }

    #[test]
    fn read_file_errors_for_missing_dirs_binary_and_empty() {
        let dir = TempDir::new();
        dir.write("d/x", "");
        std::fs::write(dir.path().join("bin"), b"ab\0cd").unwrap();
        let http = FakeHttp::new();
        let t = tools(&dir, &http);
        assert_eq!(
            err(t.call("read_file", r#"{"path":"nope"}"#)),
            "nope does not exist"
        );
        assert!(err(t.call("read_file", r#"{"path":"d"}"#)).contains("is a directory"));
        assert!(err(t.call("read_file", r#"{"path":"bin"}"#)).contains("looks binary"));
        assert_eq!(ok(t.call("read_file", r#"{"path":"d/x"}"#)), "d/x is empty");
    }

    #[test]
    fn read_file_cuts_long_files_and_says_how_to_read_on() {
        let dir = TempDir::new();
        let lines: String = (1..=2500).map(|n| format!("line {n}\n")).collect();
        dir.write("long.txt", &lines);
        let http = FakeHttp::new();
        let t = tools(&dir, &http);
        let first = ok(t.call("read_file", r#"{"path":"long.txt"}"#));
        assert_eq!(first.lines().count(), READ_MAX_LINES + 1);
        assert!(first.ends_with(
            "[showing lines 1-2000 of 2500; call read_file with start_line=2001 to read on]"
        ));
        let rest = ok(t.call("read_file", r#"{"path":"long.txt","start_line":2001}"#));
        assert!(rest.starts_with("  2001\tline 2001\n"));
        assert!(rest.ends_with("  2500\tline 2500\n"));

        // The byte budget cuts too, on a line boundary.
        let wide: String = (1..=100).map(|n| format!("{n:0>1000}\n")).collect();
        dir.write("wide.txt", &wide);
        let cut = ok(t.call("read_file", r#"{"path":"wide.txt"}"#));
        assert!(cut.len() <= READ_MAX_BYTES + 200);
        assert!(
            cut.contains("of 100; call read_file with start_line="),
            "{}",
            &cut[cut.len() - 120..]
        );
        let small = Tools {
            read_max_bytes: 4096,
            ..tools(&dir, &http)
        };
        let cut = ok(small.call("read_file", r#"{"path":"wide.txt"}"#));
        assert!(
            cut.ends_with(
                "[showing lines 1-4 of 100; call read_file with start_line=5 to read on]"
            )
        );
    }

    #[test]
    fn read_file_shortens_a_huge_line() {
        let dir = TempDir::new();
        dir.write("min.js", &format!("{}\nshort\n", "x".repeat(100_000)));
        let http = FakeHttp::new();
        let out = ok(tools(&dir, &http).call("read_file", r#"{"path":"min.js"}"#));
        assert!(out.len() < 2_100);
        assert!(
            out.contains("[... line cut: 100001 bytes in all]\n     2\tshort\n"),
            "{out}"
        );
    }

    #[test]
    fn write_file_creates_parents_and_replaces() {
        let dir = TempDir::new();
        let http = FakeHttp::new();
        let t = tools(&dir, &http);
        let out = ok(t.call("write_file", r#"{"path":"a/b/c.txt","content":"hi"}"#));
        assert_eq!(out, "wrote 2 bytes to a/b/c.txt (new file)");
        assert_eq!(dir.read("a/b/c.txt"), "hi");
        let out = ok(t.call("write_file", r#"{"path":"a/b/c.txt","content":"bye"}"#));
        assert!(out.ends_with("(replaced)"));
        assert_eq!(dir.read("a/b/c.txt"), "bye");
        assert!(
            err(t.call("write_file", r#"{"path":"a","content":""}"#)).contains("is a directory")
        );
        assert!(err(t.call("write_file", r#"{"path":"a"}"#)).contains("missing field `content`"));
    }

    #[test]
    fn edit_file_replaces_a_unique_match() {
        let dir = TempDir::new();
        dir.write("m.rs", "fn a() {}\nfn b() {}\n");
        let http = FakeHttp::new();
        let t = tools(&dir, &http);
        let out = ok(t.call(
            "edit_file",
            r#"{"path":"m.rs","search":"fn b() {}","replace":"fn b() {\n    a();\n}"}"#,
        ));
        assert_eq!(
            out,
            "edited m.rs at line 2: 1 line replaced by 3 lines; the file now has 4 lines"
        );
        assert_eq!(dir.read("m.rs"), "fn a() {}\nfn b() {\n    a();\n}\n");
    }

    #[test]
    fn edit_file_errors_absent_ambiguous_missing() {
        let dir = TempDir::new();
        dir.write("m.rs", "x = 1\nx = 1\ny = 2\n");
        let http = FakeHttp::new();
        let t = tools(&dir, &http);
        let e = err(t.call(
            "edit_file",
            r#"{"path":"m.rs","search":"z = 3","replace":""}"#,
        ));
        assert!(e.contains("not found in m.rs"), "{e}");
        let e = err(t.call(
            "edit_file",
            r#"{"path":"m.rs","search":"x = 1","replace":""}"#,
        ));
        assert_eq!(
            e,
            "search found 2 times in m.rs; include more context so it is unique"
        );
        let e = err(t.call(
            "edit_file",
            r#"{"path":"new.rs","search":"a","replace":"b"}"#,
        ));
        assert_eq!(e, "new.rs does not exist; create it with write_file");
        let e = err(t.call("edit_file", r#"{"path":"m.rs","search":"","replace":"b"}"#));
        assert!(e.contains("must not be empty"), "{e}");
        assert_eq!(dir.read("m.rs"), "x = 1\nx = 1\ny = 2\n");
        dir.write("crlf.txt", "a\r\nb\r\n");
        let e = err(t.call(
            "edit_file",
            r#"{"path":"crlf.txt","search":"a\nb","replace":""}"#,
        ));
        assert!(e.contains("CRLF"), "{e}");
    }

    #[test]
    fn list_dir_sorts_marks_dirs_and_caps() {
        let dir = TempDir::new();
        dir.write("b.txt", "");
        dir.write("a/x", "");
        dir.write(".hidden", "");
        let http = FakeHttp::new();
        let t = tools(&dir, &http);
        assert_eq!(ok(t.call("list_dir", "{}")), ".hidden\na/\nb.txt");
        assert_eq!(ok(t.call("list_dir", "")), ".hidden\na/\nb.txt");
        assert_eq!(ok(t.call("list_dir", r#"{"path":"a"}"#)), "x");
        assert!(err(t.call("list_dir", r#"{"path":"b.txt"}"#)).contains("not a directory"));
        assert_eq!(
            err(t.call("list_dir", r#"{"path":"zz"}"#)),
            "zz does not exist"
        );
        for n in 0..(LIST_MAX + 5) {
            dir.write(&format!("many/{n:04}"), "");
        }
        let out = ok(t.call("list_dir", r#"{"path":"many"}"#));
        assert_eq!(out.lines().count(), LIST_MAX + 1);
        assert!(out.ends_with("[5 more entries not shown; use glob or grep to narrow down]"));
    }

    #[test]
    fn glob_matches_skips_and_caps() {
        let dir = TempDir::new();
        dir.write("Cargo.toml", "");
        dir.write("src/main.rs", "");
        dir.write("src/a/b.rs", "");
        dir.write("target/debug/build.rs", "");
        dir.write(".git/hooks/x.rs", "");
        dir.write("node_modules/p/q.rs", "");
        let http = FakeHttp::new();
        let t = tools(&dir, &http);
        assert_eq!(
            ok(t.call("glob", r#"{"pattern":"**/*.rs"}"#)),
            "src/a/b.rs\nsrc/main.rs"
        );
        assert_eq!(ok(t.call("glob", r#"{"pattern":"*.toml"}"#)), "Cargo.toml");
        assert_eq!(ok(t.call("glob", r#"{"pattern":"src/?"}"#)), "src/a/");
        assert_eq!(
            ok(t.call("glob", r#"{"pattern":"*.py"}"#)),
            "no paths match *.py"
        );
        for n in 0..(GLOB_MAX + 3) {
            dir.write(&format!("gen/{n:04}.txt"), "");
        }
        let out = ok(t.call("glob", r#"{"pattern":"gen/*.txt"}"#));
        assert_eq!(out.lines().count(), GLOB_MAX + 1);
        assert!(out.ends_with("[3 more matches not shown; narrow the pattern]"));
    }

    #[test]
    fn grep_finds_lines_filters_and_skips() {
        let dir = TempDir::new();
        dir.write("src/main.rs", "fn main() {\n    run();\n}\n");
        dir.write("src/lib.rs", "pub fn run() {}\n");
        dir.write("README.md", "call run() to run\n");
        dir.write("target/x.rs", "fn run() {}\n");
        std::fs::write(dir.path().join("blob.bin"), b"run\0run").unwrap();
        let http = FakeHttp::new();
        let t = tools(&dir, &http);
        assert_eq!(
            ok(t.call("grep", r#"{"pattern":"run\\(\\)"}"#)),
            "README.md:1: call run() to run\nsrc/lib.rs:1: pub fn run() {}\nsrc/main.rs:2:     run();"
        );
        assert_eq!(
            ok(t.call("grep", r#"{"pattern":"run","glob":"*.rs"}"#)),
            "src/lib.rs:1: pub fn run() {}\nsrc/main.rs:2:     run();"
        );
        assert_eq!(
            ok(t.call("grep", r#"{"pattern":"fn","path":"src/main.rs"}"#)),
            "src/main.rs:1: fn main() {"
        );
        assert_eq!(
            ok(t.call(
                "grep",
                r#"{"pattern":"^fn","path":"src","glob":"src/**/lib.rs"}"#
            )),
            "no matches for \"^fn\" in src (1 files searched)"
        );
        let e = err(t.call("grep", r#"{"pattern":"(unclosed"}"#));
        assert!(e.starts_with("bad regex \"(unclosed\""), "{e}");
    }

    #[test]
    fn grep_regex_syntax() {
        let dir = TempDir::new();
        dir.write("u.txt", "Größe = 1\nNAME\n");
        let http = FakeHttp::new();
        let t = tools(&dir, &http);
        assert_eq!(
            ok(t.call("grep", r#"{"pattern":"^\\w+ = \\d"}"#)),
            "u.txt:1: Größe = 1"
        );
        assert_eq!(
            ok(t.call("grep", r#"{"pattern":"(?i)größe|name"}"#))
                .lines()
                .count(),
            2
        );
        let e = err(t.call("grep", r#"{"pattern":"\\p{Greek}"}"#));
        assert!(e.starts_with("bad regex"), "{e}");
    }

    #[test]
    fn grep_caps_matches() {
        let dir = TempDir::new();
        dir.write("many.txt", &"hit\n".repeat(GREP_MAX + 10));
        let http = FakeHttp::new();
        let out = ok(tools(&dir, &http).call("grep", r#"{"pattern":"hit"}"#));
        assert_eq!(out.lines().count(), GREP_MAX + 1);
        assert!(out.ends_with("[stopped at 200 matches; narrow the pattern, path or glob]"));
    }

    #[test]
    fn run_without_a_broker_is_an_error() {
        let dir = TempDir::new();
        let http = FakeHttp::new();
        let e = err(tools(&dir, &http).call("run", r#"{"argv":["ls"]}"#));
        assert_eq!(e, "no tool broker: this agent cannot run commands");
    }

    #[test]
    fn run_asks_the_broker_and_formats_its_answer() {
        let dir = TempDir::new();
        let http = FakeHttp::new();
        http.broker_says(200, json!({"exit": 1, "stdout": "", "stderr": "boom\n", "truncated": false, "timed_out": false, "step": 7}));
        let t = Tools {
            broker: Some("http://broker/".into()),
            ..tools(&dir, &http)
        };
        let out = ok(t.call("run", r#"{"argv":["cargo","test"],"timeout_secs":60}"#));
        assert_eq!(
            out,
            "exit 1 (step 7)\n--- stdout: empty ---\n--- stderr ---\nboom"
        );
        let sent = http.broker_requests();
        assert_eq!(sent[0].0, "http://broker/v1/run");
        assert_eq!(
            sent[0].1,
            json!({"argv": ["cargo", "test"], "timeout_secs": 60})
        );

        http.broker_says(200, json!({"exit": null, "stdout": "x", "stderr": "", "truncated": true, "timed_out": true, "step": null}));
        let out = ok(t.call("run", r#"{"argv":["sleep","9"]}"#));
        assert!(
            out.starts_with("timed out (the command was stopped)\n[the broker cut the output]"),
            "{out}"
        );
        assert_eq!(http.broker_requests()[1].1, json!({"argv": ["sleep", "9"]}));

        assert!(err(t.call("run", r#"{"argv":[]}"#)).contains("argv must start with a program"));
        let e = err(t.call("run", r#"{"argv":"cargo test"}"#));
        assert!(
            e.contains("malformed arguments for run") && e.contains("expected a sequence"),
            "{e}"
        );
    }

    #[test]
    fn run_passes_the_brokers_refusals_on() {
        assert_eq!(
            run_answer(
                403,
                br#"{"error":"cargo is not allowed; add \"cargo\" to [run] allow"}"#
            ),
            Err(
                "not allowed by the policy: cargo is not allowed; add \"cargo\" to [run] allow"
                    .into()
            )
        );
        assert_eq!(
            run_answer(500, b"oops"),
            Err("the tool broker answered 500: oops".into())
        );
        assert!(
            run_answer(200, b"{]")
                .unwrap_err()
                .contains("not understood")
        );
        let killed = json!({"exit": null, "signal": 9, "stdout": "", "stderr": "", "truncated": false, "timed_out": false, "step": 2, "confinement": "landlock"});
        let out = run_answer(200, killed.to_string().as_bytes()).unwrap();
        assert!(out.starts_with("killed by signal 9 (step 2)"), "{out}");
        let long = "L".repeat(20_000);
        let out = run_answer(
            200,
            json!({"exit": 0, "stdout": long}).to_string().as_bytes(),
        )
        .unwrap();
        assert!(out.len() < RUN_HEAD + RUN_TAIL + 200);
        assert!(out.contains("bytes cut ..."));
        let dir = TempDir::new();
        let http = FakeHttp::new();
        let t = Tools {
            broker: Some("http://broker".into()),
            ..tools(&dir, &http)
        };
        let e = err(t.call("run", r#"{"argv":["ls"]}"#));
        assert!(
            e.starts_with("cannot reach the tool broker: nothing scripted"),
            "{e}"
        );
    }

    #[test]
    fn memory_remembers_recalls_and_lists() {
        let dir = TempDir::new();
        dir.write("memory/.keep", "");
        let http = FakeHttp::new();
        let t = Tools {
            memory: Some(dir.path().join("memory")),
            ..tools(&dir, &http)
        };
        assert_eq!(ok(t.call("recall", "{}")), "nothing remembered yet");
        assert_eq!(
            ok(t.call("remember", r#"{"key":"build-cmd","text":"make check"}"#)),
            "remembered build-cmd (10 bytes)"
        );
        ok(t.call("remember", r#"{"key":"a_1","text":"x"}"#));
        assert_eq!(ok(t.call("recall", r#"{"key":"build-cmd"}"#)), "make check");
        assert_eq!(ok(t.call("recall", "{}")), "keys: a_1, build-cmd");
        assert_eq!(
            err(t.call("recall", r#"{"key":"nope"}"#)),
            "nothing remembered under nope; keys: a_1, build-cmd"
        );
        for bad in ["Bad", "../x", "", &"k".repeat(65), "a b"] {
            let args = json!({"key": bad, "text": "x"}).to_string();
            assert!(
                err(t.call("remember", &args)).starts_with("bad key"),
                "{bad}"
            );
        }
    }

    #[test]
    fn memory_absent_is_an_error() {
        let dir = TempDir::new();
        let http = FakeHttp::new();
        let e = err(tools(&dir, &http).call("recall", "{}"));
        assert!(e.starts_with("no memory"), "{e}");
        let t = Tools {
            memory: Some(dir.path().join("gone")),
            ..tools(&dir, &http)
        };
        let e = err(t.call("remember", r#"{"key":"a","text":"b"}"#));
        assert!(
            e.starts_with("no memory") && e.contains("not available"),
            "{e}"
        );
    }

    #[test]
    fn finish_unknown_and_malformed() {
        let dir = TempDir::new();
        let http = FakeHttp::new();
        let t = tools(&dir, &http);
        assert_eq!(
            t.call("finish", r#"{"summary":"all done"}"#),
            Outcome::Finish("all done".into())
        );
        assert!(err(t.call("finish", r#"{"summary":"  "}"#)).contains("non-empty summary"));
        let e = err(t.call("delete_all", "{}"));
        assert_eq!(
            e,
            "unknown tool \"delete_all\"; tools are read_file, write_file, edit_file, list_dir, glob, grep, run, remember, recall, finish"
        );
        let e = err(t.call("read_file", r#"{"path": "a"#));
        assert!(
            e.starts_with("malformed arguments for read_file: EOF while parsing"),
            "{e}"
        );
        assert!(e.contains(r#"expected {"path": string"#), "{e}");
    }

    #[test]
    fn specs_describe_every_tool() {
        let specs = specs();
        let names: Vec<&str> = specs
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["function"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, NAMES);
        for tool in specs.as_array().unwrap() {
            assert_eq!(tool["type"], "function");
            assert_eq!(tool["function"]["parameters"]["type"], "object");
        }
    }

    #[test]
    fn describe_summarises_arguments() {
        assert_eq!(
            describe("read_file", r#"{"path":"a.rs","start_line":5}"#),
            "a.rs:5-"
        );
        assert_eq!(
            describe("run", r#"{"argv":["cargo","test","-q"]}"#),
            "cargo test -q"
        );
        assert_eq!(
            describe("grep", r#"{"pattern":"fn","path":"src"}"#),
            "/fn/ in src"
        );
        assert_eq!(describe("list_dir", "{}"), ".");
        assert_eq!(describe("nope", "garbage"), "garbage");
    }
}
