//! Markdown files with YAML frontmatter: the fields on top, the prompt as
//! the body.
//!
//! ```text
//! ---
//! name: daily-summary
//! schedule: "0 8 * * *"
//! ---
//! Summarise the day's key events.
//! ```
//!
//! The YAML is read event by event from `saphyr-parser` and the tree is
//! built here, so that every value keeps the file line it starts on, keys
//! stay in file order, duplicate keys name both lines, and hostile input is
//! refused early: aliases are not expanded (no billion laughs), nesting is
//! capped (no deep recursion anywhere), and sizes are bounded before any
//! parsing. Nothing is validated beyond YAML's own rules; the typed getters
//! on [`Doc`] let the caller check field by field, and every refusal is one
//! line, `path:line: field: why`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt::Display;
use std::time::Duration;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span, Tag};

/// Far beyond any real set of fields; keeps parsing cheap and bounded.
pub const MAX_FRONTMATTER: usize = 64 * 1024;
/// Far beyond any real prompt; keeps a stray large file out of memory.
pub const MAX_FILE: usize = 128 * 1024;
/// Deepest nesting of lists and mappings (the top-level mapping is level 1).
/// Real frontmatter uses two or three levels; the cap keeps every walk of
/// the tree, including its drop, far from the stack's limit.
pub const MAX_DEPTH: usize = 64;

/// The handle of YAML's core tags (`!!str` is this plus `str`).
const CORE_TAG: &str = "tag:yaml.org,2002:";

/// A YAML value with the 1-based line it starts on.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub line: usize,
    pub value: Value,
}

/// A YAML value, scalars resolved by YAML 1.2's core schema.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Node>),
    /// Keys in file order; non-string scalar keys as they were written.
    Map(Vec<(String, Node)>),
}

/// A parsed file: the frontmatter's top-level mapping (keys in order, each
/// with its node), the body, and the line the body starts on.
#[derive(Debug)]
pub struct Doc {
    pub path: String,
    pub fields: Vec<(String, Node)>,
    pub body: String,
    pub body_line: usize,
}

/// One-line error: `path:line: field: why` (or `path: why` /
/// `path:line: why` when no field applies).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct FmError(pub String);

/// Parses raw file bytes. `path` is only used in messages.
///
/// A file that does not open with a `---` line has no frontmatter: its
/// whole text is the body. The body is kept exactly as written, from the
/// line after the closing delimiter.
pub fn parse(path: &str, bytes: &[u8]) -> Result<Doc, FmError> {
    let text = decode(path, bytes)?;
    let doc = |fields, body: &str, body_line| Doc {
        path: path.to_string(),
        fields,
        body: body.to_string(),
        body_line,
    };
    match split(text) {
        Split::Plain => Ok(doc(Vec::new(), text, 1)),
        Split::Unclosed => Err(FmError(format!(
            "{path}:1: frontmatter opened with `---` is never closed"
        ))),
        Split::Front {
            yaml,
            body,
            body_line,
        } => {
            if yaml.len() > MAX_FRONTMATTER {
                return Err(FmError(format!(
                    "{path}: frontmatter is {} bytes, more than the {MAX_FRONTMATTER} allowed",
                    yaml.len()
                )));
            }
            let fields = fields(path, yaml)?;
            Ok(doc(fields, body, body_line))
        }
    }
}

/// The file as text: size-checked before anything else, then UTF-8, with
/// a leading byte-order mark dropped (it is encoding, not content).
fn decode<'b>(path: &str, bytes: &'b [u8]) -> Result<&'b str, FmError> {
    if bytes.len() > MAX_FILE {
        return Err(FmError(format!(
            "{path}: {} bytes, more than the {MAX_FILE} allowed",
            bytes.len()
        )));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| FmError(format!("{path}: not UTF-8 (at byte {})", e.valid_up_to())))?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(text))
}

/// How a file's text divides into frontmatter and body.
#[derive(Debug, PartialEq)]
enum Split<'t> {
    /// No frontmatter: the whole text is the body.
    Plain,
    /// An opening `---` with no closing line.
    Unclosed,
    /// `yaml` is the text between the delimiter lines, which starts on
    /// file line 2; `body` follows the closing line.
    Front {
        yaml: &'t str,
        body: &'t str,
        body_line: usize,
    },
}

fn split(text: &str) -> Split<'_> {
    let mut lines = text.split_inclusive('\n');
    let Some(first) = lines.next() else {
        return Split::Plain;
    };
    if !is_delimiter(first, &["---"]) {
        return Split::Plain;
    }
    let start = first.len();
    let mut end = start;
    // The line after the opening delimiter is line 2.
    for (line_no, line) in (2..).zip(lines) {
        if is_delimiter(line, &["---", "..."]) {
            return Split::Front {
                yaml: text.get(start..end).unwrap_or_default(),
                body: text.get(end + line.len()..).unwrap_or_default(),
                body_line: line_no + 1,
            };
        }
        end += line.len();
    }
    Split::Unclosed
}

/// Whether a line (with its line break, if any) is one of `marks`, allowing
/// trailing blanks and a CRLF ending that editors add unseen.
fn is_delimiter(line: &str, marks: &[&str]) -> bool {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    marks.contains(&line.trim_end_matches([' ', '\t']))
}

/// The frontmatter's top-level mapping; empty when the frontmatter holds
/// nothing (or only comments, or an explicit `null`).
fn fields(path: &str, yaml: &str) -> Result<Vec<(String, Node)>, FmError> {
    let mut builder = Builder::new(path, yaml, 2);
    for item in Parser::new_from_str(yaml) {
        let (event, span) = item.map_err(|e| builder.syntax(&e))?;
        builder.event(event, span)?;
    }
    match builder.root {
        None => Ok(Vec::new()),
        Some(Node {
            value: Value::Null, ..
        }) => Ok(Vec::new()),
        Some(Node {
            value: Value::Map(fields),
            ..
        }) => Ok(fields),
        Some(Node { line, value }) => Err(FmError(format!(
            "{path}:{line}: frontmatter must be a mapping of fields, got {}",
            value.kind()
        ))),
    }
}

/// A list or mapping still being read.
enum Frame {
    List {
        line: usize,
        items: Vec<Node>,
    },
    Map {
        line: usize,
        entries: Vec<(String, Node)>,
        /// Each key read so far and its line, for duplicates.
        seen: HashMap<String, usize>,
        /// The key whose value comes next.
        key: Option<String>,
    },
}

impl Frame {
    fn wants_key(&self) -> bool {
        matches!(self, Frame::Map { key: None, .. })
    }
}

/// Turns the parser's events into a [`Node`] tree, refusing what a config
/// file has no use for (aliases, custom tags, complex keys, more than one
/// document) and anything nested past [`MAX_DEPTH`].
struct Builder<'a> {
    path: &'a str,
    /// The YAML text, to quote an alias's name.
    yaml: &'a str,
    /// The file line of the YAML's first line.
    first_line: usize,
    stack: Vec<Frame>,
    root: Option<Node>,
    documents: usize,
}

impl<'a> Builder<'a> {
    fn new(path: &'a str, yaml: &'a str, first_line: usize) -> Self {
        Builder {
            path,
            yaml,
            first_line,
            stack: Vec::new(),
            root: None,
            documents: 0,
        }
    }

    /// The file line of a parser line (1-based within the YAML).
    fn file_line(&self, yaml_line: usize) -> usize {
        yaml_line.max(1) + self.first_line - 1
    }

    fn syntax(&self, e: &ScanError) -> FmError {
        let mark = e.marker();
        FmError(format!(
            "{}:{}: invalid YAML: {} (column {})",
            self.path,
            self.file_line(mark.line()),
            e.info(),
            mark.col() + 1
        ))
    }

    /// An error at `line` about the value being read, named by its path
    /// from the top (`consensus[0].guest`) when it has one.
    fn fail(&self, line: usize, why: impl Display) -> FmError {
        let field = self.field_path(None);
        if field.is_empty() {
            FmError(format!("{}:{line}: {why}", self.path))
        } else {
            FmError(format!("{}:{line}: {field}: {why}", self.path))
        }
    }

    /// Where the parser is in the tree, plus `last` as a final key.
    fn field_path(&self, last: Option<&str>) -> String {
        let mut out = String::new();
        let push_key = |out: &mut String, key: &str| {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(key);
        };
        for frame in &self.stack {
            match frame {
                Frame::Map { key: Some(k), .. } => push_key(&mut out, k),
                Frame::Map { key: None, .. } => {}
                Frame::List { items, .. } => out.push_str(&format!("[{}]", items.len())),
            }
        }
        if let Some(key) = last {
            push_key(&mut out, key);
        }
        out
    }

    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), FmError> {
        let line = self.file_line(span.start.line());
        match event {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(FmError(format!(
                        "{}:{line}: frontmatter must be a single YAML document",
                        self.path
                    )));
                }
            }
            Event::Alias(_) => {
                return Err(self.fail(
                    line,
                    format!(
                        "aliases (`*{}`) are not supported: write the value out in full",
                        self.alias_name(span)
                    ),
                ));
            }
            Event::Scalar(text, style, _, tag) => {
                if self.stack.last().is_some_and(Frame::wants_key) {
                    self.key(text.into_owned(), line)?;
                } else {
                    let value = self.scalar(text, style, tag.as_deref(), line)?;
                    self.complete(Node { line, value });
                }
            }
            Event::SequenceStart(_, tag) => {
                self.open(line, tag.as_deref(), "seq")?;
                self.stack.push(Frame::List {
                    line,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(_, tag) => {
                self.open(line, tag.as_deref(), "map")?;
                self.stack.push(Frame::Map {
                    line,
                    entries: Vec::new(),
                    seen: HashMap::new(),
                    key: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match self.stack.pop() {
                    Some(Frame::List { line, items }) => Node {
                        line,
                        value: Value::List(items),
                    },
                    Some(Frame::Map { line, entries, .. }) => Node {
                        line,
                        value: Value::Map(entries),
                    },
                    None => return Ok(()),
                };
                self.complete(node);
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
        Ok(())
    }

    /// The text after `*` at an alias event, for the message.
    fn alias_name(&self, span: Span) -> String {
        // Markers count characters, not bytes.
        self.yaml
            .chars()
            .skip(span.start.index() + 1)
            .take(span.len().saturating_sub(1).min(64))
            .collect()
    }

    /// Checks a list or mapping may start here: not as a key, not too
    /// deep, and with no tag but its own.
    fn open(&self, line: usize, tag: Option<&Tag>, core: &str) -> Result<(), FmError> {
        if self.stack.last().is_some_and(Frame::wants_key) {
            return Err(self.fail(line, "a key must be a plain value, not a list or a mapping"));
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(FmError(format!(
                "{}:{line}: nested more than {MAX_DEPTH} levels deep",
                self.path
            )));
        }
        match tag.map(tag_name) {
            None => Ok(()),
            Some(name) if name == format!("!!{core}") => Ok(()),
            Some(name) => Err(self.fail(line, format!("unsupported tag `{name}`"))),
        }
    }

    /// Records a mapping key, refusing one already in the same mapping.
    fn key(&mut self, key: String, line: usize) -> Result<(), FmError> {
        let field = self.field_path(Some(&key));
        let path = self.path;
        let Some(Frame::Map {
            seen, key: slot, ..
        }) = self.stack.last_mut()
        else {
            return Ok(());
        };
        match seen.entry(key.clone()) {
            Entry::Occupied(first) => Err(FmError(format!(
                "{path}:{line}: {field}: duplicate key, first set on line {}",
                first.get()
            ))),
            Entry::Vacant(slot_seen) => {
                slot_seen.insert(line);
                *slot = Some(key);
                Ok(())
            }
        }
    }

    /// Places a finished node in its list or mapping, or as the root.
    fn complete(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::List { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => {
                if let Some(k) = key.take() {
                    entries.push((k, node));
                }
            }
        }
    }

    /// A scalar's value: plain scalars resolve as YAML 1.2's core schema
    /// says (`true`, `42`, `1.5`, `null`), quoted and block scalars are
    /// strings, and a core tag (`!!str 42`) forces its type.
    fn scalar(
        &self,
        text: Cow<'_, str>,
        style: ScalarStyle,
        tag: Option<&Tag>,
        line: usize,
    ) -> Result<Value, FmError> {
        let Some(tag) = tag else {
            return Ok(match style {
                ScalarStyle::Plain => resolve(&text),
                _ => Value::Str(text.into_owned()),
            });
        };
        let name = tag_name(tag);
        let resolved = resolve(&text);
        let fits = match name.as_str() {
            "!" | "!!str" => return Ok(Value::Str(text.into_owned())),
            "!!null" => matches!(resolved, Value::Null),
            "!!bool" => matches!(resolved, Value::Bool(_)),
            "!!int" => matches!(resolved, Value::Int(_)),
            "!!float" => {
                if let Value::Int(n) = resolved {
                    return Ok(Value::Float(n as f64));
                }
                matches!(resolved, Value::Float(_))
            }
            _ => return Err(self.fail(line, format!("unsupported tag `{name}`"))),
        };
        if fits {
            Ok(resolved)
        } else {
            Err(self.fail(
                line,
                format!(
                    "{} does not fit its tag `{name}`",
                    Value::Str(text.into()).shown()
                ),
            ))
        }
    }
}

/// A tag as it would be written: `!!int`, `!custom`, `!`.
fn tag_name(tag: &Tag) -> String {
    let full = format!("{}{}", tag.handle, tag.suffix);
    match full.strip_prefix(CORE_TAG) {
        Some(core) => format!("!!{core}"),
        None if tag.handle == "!" => format!("!{}", tag.suffix),
        None => full,
    }
}

/// A plain scalar by YAML 1.2's core schema; anything else is a string.
fn resolve(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => Value::Null,
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        _ => integer(text)
            .map(Value::Int)
            .or_else(|| float(text).map(Value::Float))
            .unwrap_or_else(|| Value::Str(text.to_string())),
    }
}

fn all_digits(s: &str, radix: u32) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_digit(radix))
}

/// `42`, `-7`, `+3`, `0o17`, `0x1F`; `None` past i64 (a decimal one then
/// reads as a float, as it would in most YAML tools).
fn integer(text: &str) -> Option<i64> {
    if let Some(octal) = text.strip_prefix("0o") {
        return all_digits(octal, 8)
            .then(|| i64::from_str_radix(octal, 8).ok())
            .flatten();
    }
    if let Some(hex) = text.strip_prefix("0x") {
        return all_digits(hex, 16)
            .then(|| i64::from_str_radix(hex, 16).ok())
            .flatten();
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    all_digits(unsigned, 10)
        .then(|| text.parse().ok())
        .flatten()
}

/// `1.5`, `.5`, `1e3`, `-2.5E-3`, `.inf`, `-.inf`, `.nan`. The shape is
/// checked here, since Rust's parser also takes `inf` and `NaN`.
fn float(text: &str) -> Option<f64> {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    if matches!(unsigned, ".inf" | ".Inf" | ".INF") {
        let sign = if text.starts_with('-') { -1.0 } else { 1.0 };
        return Some(sign * f64::INFINITY);
    }
    if matches!(text, ".nan" | ".NaN" | ".NAN") {
        return Some(f64::NAN);
    }
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (unsigned, None),
    };
    let exponent_ok =
        exponent.is_none_or(|e| all_digits(e.strip_prefix(['-', '+']).unwrap_or(e), 10));
    let mantissa_ok = match mantissa.split_once('.') {
        None => all_digits(mantissa, 10),
        Some(("", frac)) => all_digits(frac, 10),
        Some((int, frac)) => all_digits(int, 10) && (frac.is_empty() || all_digits(frac, 10)),
    };
    (exponent_ok && mantissa_ok)
        .then(|| text.parse().ok())
        .flatten()
}

impl Value {
    /// What sort of value this is, for messages: `a list`.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "an empty value",
            Value::Bool(_) => "true or false",
            Value::Int(_) | Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::List(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The value as a message shows it: scalars as written (strings
    /// quoted and cut short), collections by kind.
    pub fn shown(&self) -> String {
        const MAX_SHOWN: usize = 40;
        match self {
            Value::Str(s) if s.chars().count() > MAX_SHOWN => {
                let cut: String = s.chars().take(MAX_SHOWN).collect();
                format!("{:?}", cut + "…")
            }
            Value::Str(s) => format!("{s:?}"),
            Value::Int(n) => n.to_string(),
            Value::Float(f) if f.is_nan() => ".nan".into(),
            Value::Float(f) if f.is_infinite() => if *f > 0.0 { ".inf" } else { "-.inf" }.into(),
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 1e16 => format!("{f:.1}"),
            Value::Float(f) => f.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null | Value::List(_) | Value::Map(_) => self.kind().into(),
        }
    }
}

impl Node {
    /// The value under `key` when this node is a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, n)| n),
            _ => None,
        }
    }
}

/// The forms [`Doc::duration`] takes, for its message.
const DURATION_FORMS: &str =
    "a duration like \"30s\", \"5m\", \"2h\", \"1d\" or \"1h30m\", or a number of seconds";

impl Doc {
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, n)| n)
    }

    /// An error about `field` at its line (without a line when the field
    /// is absent, as for a missing required one).
    pub fn error(&self, field: &str, why: impl Display) -> FmError {
        match self.get(field) {
            Some(node) => self.error_at(node.line, field, why),
            None => FmError(format!("{}: {field}: {why}", self.path)),
        }
    }

    /// An error about `field` at `line`, for values below the top level
    /// (`consensus[0].guest`).
    pub fn error_at(&self, line: usize, field: &str, why: impl Display) -> FmError {
        FmError(format!("{}:{line}: {field}: {why}", self.path))
    }

    /// Getters read a missing key, an empty value and `null` alike as
    /// `None`: the caller decides what is required.
    fn typed<'d, T>(
        &'d self,
        key: &str,
        read: impl FnOnce(&Self, &str, &'d Node) -> Result<Option<T>, FmError>,
    ) -> Result<Option<T>, FmError> {
        match self.get(key) {
            Some(node) => read(self, key, node),
            None => Ok(None),
        }
    }

    /// A string. Numbers and booleans are refused rather than turned into
    /// text, since YAML has already changed them (`1.10` reads as `1.1`):
    /// the message says to quote them.
    pub fn str(&self, key: &str) -> Result<Option<&str>, FmError> {
        self.typed(key, Self::str_of)
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, FmError> {
        self.typed(key, Self::bool_of)
    }

    /// A whole number, zero or more.
    pub fn uint(&self, key: &str) -> Result<Option<u64>, FmError> {
        self.typed(key, Self::uint_of)
    }

    /// A list of strings, or a single string taken as a one-element list.
    pub fn str_list(&self, key: &str) -> Result<Option<Vec<String>>, FmError> {
        self.typed(key, Self::str_list_of)
    }

    /// `"30s"`, `"5m"`, `"2h"`, `"1d"`, `"1h30m"` (units largest first,
    /// each at most once), `"90"` or `90` (seconds).
    pub fn duration(&self, key: &str) -> Result<Option<Duration>, FmError> {
        self.typed(key, Self::duration_of)
    }

    /// [`Doc::str`] for any node; `field` names it in the error.
    pub fn str_of<'n>(&self, field: &str, node: &'n Node) -> Result<Option<&'n str>, FmError> {
        match &node.value {
            Value::Null => Ok(None),
            Value::Str(s) => Ok(Some(s)),
            v @ (Value::Int(_) | Value::Float(_) | Value::Bool(_)) => Err(self.error_at(
                node.line,
                field,
                format!(
                    "must be a string, got {}; put it in quotes to use it as text",
                    v.shown()
                ),
            )),
            v => Err(self.error_at(
                node.line,
                field,
                format!("must be a string, got {}", v.shown()),
            )),
        }
    }

    /// [`Doc::bool`] for any node.
    pub fn bool_of(&self, field: &str, node: &Node) -> Result<Option<bool>, FmError> {
        match &node.value {
            Value::Null => Ok(None),
            Value::Bool(b) => Ok(Some(*b)),
            v => Err(self.error_at(
                node.line,
                field,
                format!("must be true or false, got {}", v.shown()),
            )),
        }
    }

    /// [`Doc::uint`] for any node.
    pub fn uint_of(&self, field: &str, node: &Node) -> Result<Option<u64>, FmError> {
        match &node.value {
            Value::Null => Ok(None),
            Value::Int(n) => u64::try_from(*n).map(Some).map_err(|_| {
                self.error_at(node.line, field, format!("must be zero or more, got {n}"))
            }),
            v => Err(self.error_at(
                node.line,
                field,
                format!("must be a whole number, got {}", v.shown()),
            )),
        }
    }

    /// [`Doc::str_list`] for any node; a bad item is named `field[i]`.
    pub fn str_list_of(&self, field: &str, node: &Node) -> Result<Option<Vec<String>>, FmError> {
        match &node.value {
            Value::Null => Ok(None),
            Value::Str(s) => Ok(Some(vec![s.clone()])),
            Value::List(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match &item.value {
                    Value::Str(s) => Ok(s.clone()),
                    v => Err(self.error_at(
                        item.line,
                        &format!("{field}[{i}]"),
                        format!("must be a string, got {}", v.shown()),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            v => Err(self.error_at(
                node.line,
                field,
                format!("must be a string or a list of strings, got {}", v.shown()),
            )),
        }
    }

    /// [`Doc::duration`] for any node.
    pub fn duration_of(&self, field: &str, node: &Node) -> Result<Option<Duration>, FmError> {
        let parsed = match &node.value {
            Value::Null => return Ok(None),
            Value::Int(n) => u64::try_from(*n).ok().map(Duration::from_secs),
            Value::Str(s) => parse_duration(s),
            _ => None,
        };
        match parsed {
            Some(d) => Ok(Some(d)),
            None => Err(self.error_at(
                node.line,
                field,
                format!("must be {DURATION_FORMS}, got {}", node.value.shown()),
            )),
        }
    }

    /// Keys present that are not in `known`: one warning each,
    /// `path:line: unknown field `x` (ignored)`, with a suggestion when a
    /// known key is within edit distance 2 (a typo, most likely).
    pub fn unknown(&self, known: &[&str]) -> Vec<String> {
        self.fields
            .iter()
            .filter(|(key, _)| !known.contains(&key.as_str()))
            .map(|(key, node)| {
                let mut warning = format!(
                    "{}:{}: unknown field `{key}` (ignored)",
                    self.path, node.line
                );
                if let Some(near) = nearest(key, known) {
                    warning.push_str(&format!("; did you mean `{near}`?"));
                }
                warning
            })
            .collect()
    }
}

/// `"1h30m"` and the like as seconds; `None` for anything else, including
/// an overflow.
fn parse_duration(text: &str) -> Option<Duration> {
    if all_digits(text, 10) {
        return text.parse().ok().map(Duration::from_secs);
    }
    const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];
    let mut rest = text;
    let mut total: u64 = 0;
    // Units must come largest first, each at most once.
    let mut next_unit = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let (number, tail) = rest.split_at_checked(digits)?;
        let number: u64 = number.parse().ok()?;
        let mut chars = tail.chars();
        let unit = chars.next()?;
        let offset = UNITS
            .get(next_unit..)?
            .iter()
            .position(|&(u, _)| u == unit)?;
        let (_, seconds) = UNITS.get(next_unit + offset)?;
        total = total.checked_add(number.checked_mul(*seconds)?)?;
        next_unit += offset + 1;
        rest = chars.as_str();
    }
    (!text.is_empty()).then(|| Duration::from_secs(total))
}

/// The known key closest to `key`, if within edit distance 2.
fn nearest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .filter(|k| k.len().abs_diff(key.len()) <= 2)
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Edits (insert, delete, substitute, swap two neighbours) turning `a`
/// into `b`; a swap counts once, as typos often are one.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Rows for i-2, i-1 and i over b's prefixes.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut row: Vec<usize> = vec![0; b.len() + 1];
    for (i, &ca) in a.iter().enumerate() {
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            let mut best = substitute.min(prev[j + 1] + 1).min(row[j] + 1);
            if i > 0 && j > 0 && a.get(i - 1) == Some(&cb) && b.get(j - 1) == Some(&ca) {
                best = best.min(before[j - 1] + 1);
            }
            row[j + 1] = best;
        }
        std::mem::swap(&mut before, &mut prev);
        std::mem::swap(&mut prev, &mut row);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "jobs/x.md";

    fn ok(text: &str) -> Doc {
        match parse(PATH, text.as_bytes()) {
            Ok(doc) => doc,
            Err(e) => panic!("expected {text:?} to parse, got {e}"),
        }
    }

    fn err(text: &str) -> String {
        match parse(PATH, text.as_bytes()) {
            Ok(doc) => panic!("expected {text:?} to fail, got {doc:?}"),
            Err(e) => e.0,
        }
    }

    fn node(line: usize, value: Value) -> Node {
        Node { line, value }
    }

    fn s(text: &str) -> Value {
        Value::Str(text.into())
    }

    /// The top-level value of `key: <scalar>`.
    fn scalar(yaml: &str) -> Value {
        let doc = ok(&format!("---\nk: {yaml}\n---\n"));
        match doc.get("k") {
            Some(n) => n.value.clone(),
            None => panic!("no k in {doc:?}"),
        }
    }

    // --- Splitting ---

    #[test]
    fn reads_the_example() {
        let doc = ok(concat!(
            "---\n",
            "name: daily-summary\n",
            "schedule: \"0 8 * * *\"\n",
            "max-tokens: 4000\n",
            "consensus:\n",
            "  - guest: \"claude*\"\n",
            "    model: big\n",
            "---\n",
            "Summarise the day's key events.\n",
        ));
        assert_eq!(doc.path, PATH);
        let consensus = node(
            6,
            Value::List(vec![node(
                6,
                Value::Map(vec![
                    ("guest".into(), node(6, s("claude*"))),
                    ("model".into(), node(7, s("big"))),
                ]),
            )]),
        );
        assert_eq!(
            doc.fields,
            vec![
                ("name".into(), node(2, s("daily-summary"))),
                ("schedule".into(), node(3, s("0 8 * * *"))),
                ("max-tokens".into(), node(4, Value::Int(4000))),
                ("consensus".into(), consensus),
            ]
        );
        assert_eq!(doc.body, "Summarise the day's key events.\n");
        assert_eq!(doc.body_line, 9);
    }

    #[test]
    fn no_frontmatter_is_all_body() {
        let doc = ok("Just a prompt.\n---\nname: x\n---\n");
        assert!(doc.fields.is_empty());
        assert_eq!(doc.body, "Just a prompt.\n---\nname: x\n---\n");
        assert_eq!(doc.body_line, 1);
    }

    #[test]
    fn empty_file_is_an_empty_body() {
        let doc = ok("");
        assert!(doc.fields.is_empty());
        assert_eq!((doc.body.as_str(), doc.body_line), ("", 1));
    }

    #[test]
    fn first_line_must_be_exactly_the_delimiter() {
        for text in ["---x\na: 1\n---\n", " ---\na: 1\n---\n", "----\n---\n"] {
            let doc = ok(text);
            assert!(doc.fields.is_empty(), "{text:?}");
            assert_eq!(doc.body, text);
        }
    }

    #[test]
    fn empty_frontmatter_is_fine() {
        let doc = ok("---\n---\nbody\n");
        assert!(doc.fields.is_empty());
        assert_eq!((doc.body.as_str(), doc.body_line), ("body\n", 3));
    }

    #[test]
    fn comments_only_or_null_frontmatter_has_no_fields() {
        assert!(ok("---\n# nothing yet\n---\n").fields.is_empty());
        assert!(ok("---\n~\n---\n").fields.is_empty());
    }

    #[test]
    fn dots_close_too() {
        let doc = ok("---\na: 1\n...\nbody");
        assert_eq!(doc.fields, vec![("a".into(), node(2, Value::Int(1)))]);
        assert_eq!((doc.body.as_str(), doc.body_line), ("body", 4));
    }

    #[test]
    fn bom_crlf_and_trailing_blanks_are_allowed() {
        let doc = ok("\u{feff}---  \r\nname: x\r\nn: 2\r\n--- \t\r\nline one\r\nline two\r\n");
        assert_eq!(
            doc.fields,
            vec![
                ("name".into(), node(2, s("x"))),
                ("n".into(), node(3, Value::Int(2))),
            ]
        );
        assert_eq!(doc.body, "line one\r\nline two\r\n");
        assert_eq!(doc.body_line, 5);
    }

    #[test]
    fn bom_is_dropped_from_a_plain_body() {
        let doc = ok("\u{feff}hello");
        assert_eq!((doc.body.as_str(), doc.body_line), ("hello", 1));
    }

    #[test]
    fn crlf_block_scalars_read_as_lf() {
        let doc = ok("---\r\np: |\r\n  a\r\n  b\r\n---\r\n");
        assert_eq!(doc.get("p"), Some(&node(3, s("a\nb\n"))));
    }

    #[test]
    fn body_is_kept_exactly() {
        let doc = ok("---\na: 1\n---\n\n\n  indented\n\ntrailing\n\n\n");
        assert_eq!(doc.body, "\n\n  indented\n\ntrailing\n\n\n");
        assert_eq!(doc.body_line, 4);
    }

    #[test]
    fn closing_line_at_end_of_file_leaves_an_empty_body() {
        let doc = ok("---\na: 1\n---");
        assert_eq!((doc.body.as_str(), doc.body_line), ("", 4));
    }

    #[test]
    fn unclosed_frontmatter() {
        let want = "jobs/x.md:1: frontmatter opened with `---` is never closed";
        assert_eq!(err("---\nname: x\nbody\n"), want);
        assert_eq!(err("---"), want);
        assert_eq!(err("---\n"), want);
        // A closing line with more on it is not a delimiter.
        assert_eq!(err("---\na: 1\n--- more\n"), want);
    }

    // --- Bytes and sizes ---

    #[test]
    fn not_utf8() {
        assert_eq!(
            parse(PATH, b"---\nname: \xff\n---\n")
                .map_err(|e| e.0)
                .err(),
            Some("jobs/x.md: not UTF-8 (at byte 10)".to_string())
        );
    }

    #[test]
    fn file_too_large() {
        let big = vec![b'a'; MAX_FILE + 1];
        assert_eq!(
            parse(PATH, &big).map_err(|e| e.0).err(),
            Some("jobs/x.md: 131073 bytes, more than the 131072 allowed".to_string())
        );
        assert!(parse(PATH, &vec![b'a'; MAX_FILE]).is_ok());
    }

    #[test]
    fn frontmatter_too_large() {
        let filler = format!("# {}\n", "x".repeat(MAX_FRONTMATTER));
        assert_eq!(
            err(&format!("---\n{filler}---\nbody")),
            "jobs/x.md: frontmatter is 65539 bytes, more than the 65536 allowed"
        );
        let fits = format!("# {}\n", "x".repeat(MAX_FRONTMATTER - 3));
        assert!(ok(&format!("---\n{fits}---\n")).fields.is_empty());
    }

    // --- YAML errors ---

    #[test]
    fn syntax_errors_name_the_file_line() {
        assert_eq!(
            err("---\nname: x\nbad: a: b\n---\n"),
            "jobs/x.md:3: invalid YAML: mapping values are not allowed in this context (column 7)"
        );
        assert_eq!(
            err("---\nlist: [a, b\n---\n"),
            "jobs/x.md:3: invalid YAML: while parsing a flow sequence, expected ',' or ']' (column 1)"
        );
    }

    #[test]
    fn tabs_for_indentation_are_a_syntax_error() {
        let e = err("---\na:\n\tb: 1\n---\n");
        assert!(e.starts_with("jobs/x.md:3: invalid YAML: "), "{e}");
    }

    #[test]
    fn frontmatter_must_be_a_mapping() {
        assert_eq!(
            err("---\n- a\n- b\n---\n"),
            "jobs/x.md:2: frontmatter must be a mapping of fields, got a list"
        );
        assert_eq!(
            err("---\njust words\n---\n"),
            "jobs/x.md:2: frontmatter must be a mapping of fields, got a string"
        );
        assert_eq!(
            err("---\n\n42\n---\n"),
            "jobs/x.md:3: frontmatter must be a mapping of fields, got a number"
        );
    }

    #[test]
    fn duplicate_keys_name_both_lines() {
        assert_eq!(
            err("---\nname: a\nmodel: b\nname: c\n---\n"),
            "jobs/x.md:4: name: duplicate key, first set on line 2"
        );
        assert_eq!(
            err("---\nconsensus:\n  - guest: a\n    model: x\n    guest: b\n---\n"),
            "jobs/x.md:5: consensus[0].guest: duplicate key, first set on line 3"
        );
        assert_eq!(
            err("---\nm: {a: 1, a: 2}\n---\n"),
            "jobs/x.md:2: m.a: duplicate key, first set on line 2"
        );
    }

    #[test]
    fn same_key_in_different_mappings_is_fine() {
        let doc = ok("---\na: {x: 1}\nb: {x: 2}\n---\n");
        assert_eq!(doc.fields.len(), 2);
    }

    #[test]
    fn second_document_is_refused() {
        assert_eq!(
            err("---\na: 1\n--- b: 2\n...\n"),
            "jobs/x.md:3: frontmatter must be a single YAML document"
        );
    }

    #[test]
    fn aliases_are_refused() {
        assert_eq!(
            err("---\nbase: &b [x, y]\nother: *b\n---\n"),
            "jobs/x.md:3: other: aliases (`*b`) are not supported: write the value out in full"
        );
    }

    #[test]
    fn anchors_without_aliases_are_harmless() {
        let doc = ok("---\nbase: &b [x]\n---\n");
        assert_eq!(
            doc.get("base"),
            Some(&node(2, Value::List(vec![node(2, s("x"))])))
        );
    }

    #[test]
    fn billion_laughs_fails_fast() {
        let mut yaml = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        for pair in names.windows(2) {
            let (prev, next) = (pair[0], pair[1]);
            let refs = vec![format!("*{prev}"); 9].join(",");
            yaml.push_str(&format!("{next}: &{next} [{refs}]\n"));
        }
        let started = std::time::Instant::now();
        assert_eq!(
            err(&format!("---\n{yaml}---\n")),
            "jobs/x.md:3: b[0]: aliases (`*a`) are not supported: write the value out in full"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn deep_flow_nesting_is_refused() {
        // Within the parser's own limit, the depth cap answers.
        let deep = format!("---\nk: {}\n---\n", "[".repeat(100));
        assert_eq!(err(&deep), "jobs/x.md:2: nested more than 64 levels deep");
        let started = std::time::Instant::now();
        let deeper = format!("---\nk: {}\n---\n", "[".repeat(10_000));
        assert_eq!(
            err(&deeper),
            "jobs/x.md:2: invalid YAML: recursion limit exceeded (column 259)"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn deep_block_nesting_is_refused() {
        let lists = format!("---\nk:\n  {}x\n---\n", "- ".repeat(10_000));
        assert_eq!(err(&lists), "jobs/x.md:3: nested more than 64 levels deep");
        let mut maps = String::from("---\n");
        for depth in 0..100 {
            maps.push_str(&format!("{}k{depth}:\n", " ".repeat(depth)));
        }
        maps.push_str("---\n");
        assert_eq!(err(&maps), "jobs/x.md:66: nested more than 64 levels deep");
    }

    #[test]
    fn nesting_at_the_cap_is_fine() {
        // The top-level mapping is level 1, so 63 lists fit under it.
        let yaml = format!("---\nk: {}{}\n---\n", "[".repeat(63), "]".repeat(63));
        assert!(ok(&yaml).get("k").is_some());
        let yaml = format!("---\nk: {}{}\n---\n", "[".repeat(64), "]".repeat(64));
        assert_eq!(err(&yaml), "jobs/x.md:2: nested more than 64 levels deep");
    }

    #[test]
    fn collection_keys_are_refused() {
        assert_eq!(
            err("---\n? [a, b]\n: c\n---\n"),
            "jobs/x.md:2: a key must be a plain value, not a list or a mapping"
        );
        assert_eq!(
            err("---\nm:\n  ? {a: 1}\n  : c\n---\n"),
            "jobs/x.md:3: m: a key must be a plain value, not a list or a mapping"
        );
    }

    #[test]
    fn custom_tags_are_refused() {
        assert_eq!(
            err("---\nk: !secret x\n---\n"),
            "jobs/x.md:2: k: unsupported tag `!secret`"
        );
        assert_eq!(
            err("---\nk: !!set {a: 1}\n---\n"),
            "jobs/x.md:2: k: unsupported tag `!!set`"
        );
        assert_eq!(
            err("---\nk: !!int ten\n---\n"),
            "jobs/x.md:2: k: \"ten\" does not fit its tag `!!int`"
        );
    }

    #[test]
    fn core_tags_force_their_type() {
        assert_eq!(scalar("!!str 42"), s("42"));
        assert_eq!(scalar("!<tag:yaml.org,2002:str> true"), s("true"));
        assert_eq!(scalar("! 1.5"), s("1.5"));
        assert_eq!(scalar("!!int \"7\""), Value::Int(7));
        assert_eq!(scalar("!!float 3"), Value::Float(3.0));
        assert_eq!(scalar("!!bool false"), Value::Bool(false));
        assert_eq!(scalar("!!null ~"), Value::Null);
        assert_eq!(
            scalar("!!seq [1]"),
            Value::List(vec![node(2, Value::Int(1))])
        );
        assert_eq!(scalar("!!map {}"), Value::Map(vec![]));
    }

    // --- Values ---

    #[test]
    fn scalars_resolve_by_the_core_schema() {
        let cases = [
            ("", Value::Null),
            ("~", Value::Null),
            ("null", Value::Null),
            ("NULL", Value::Null),
            ("true", Value::Bool(true)),
            ("False", Value::Bool(false)),
            ("yes", s("yes")),
            ("off", s("off")),
            ("42", Value::Int(42)),
            ("-7", Value::Int(-7)),
            ("+3", Value::Int(3)),
            ("0o17", Value::Int(15)),
            ("0x1F", Value::Int(31)),
            ("0x", s("0x")),
            ("0o9", s("0o9")),
            ("1_000", s("1_000")),
            ("1.5", Value::Float(1.5)),
            ("-.5", Value::Float(-0.5)),
            ("1.", Value::Float(1.0)),
            ("2e3", Value::Float(2000.0)),
            ("2.5E-1", Value::Float(0.25)),
            ("1e", s("1e")),
            (".", s(".")),
            ("-.inf", Value::Float(f64::NEG_INFINITY)),
            (".Inf", Value::Float(f64::INFINITY)),
            ("inf", s("inf")),
            ("NaN", s("NaN")),
            ("99999999999999999999", Value::Float(1e20)),
            ("1.10", Value::Float(1.1)),
            ("\"42\"", s("42")),
            ("'true'", s("true")),
            ("\"\"", s("")),
            ("0 8 * * *", s("0 8 * * *")),
            ("hello world", s("hello world")),
        ];
        for (yaml, want) in cases {
            assert_eq!(scalar(yaml), want, "{yaml:?}");
        }
        assert!(matches!(scalar(".nan"), Value::Float(f) if f.is_nan()));
    }

    #[test]
    fn non_string_keys_keep_their_text() {
        let doc = ok("---\n1: a\ntrue: b\n0x10: c\n1.50: d\n~: e\n\"q\": f\n---\n");
        let keys: Vec<&str> = doc.fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["1", "true", "0x10", "1.50", "~", "q"]);
    }

    #[test]
    fn empty_values_sit_on_their_key_line() {
        let doc = ok("---\na:\n\n\nb: 1\n---\n");
        assert_eq!(doc.get("a"), Some(&node(2, Value::Null)));
        assert_eq!(doc.get("b"), Some(&node(5, Value::Int(1))));
    }

    #[test]
    fn block_values_start_where_their_content_does() {
        let doc = ok("---\np: |\n  line\nl:\n  - x\n---\n");
        assert_eq!(doc.get("p"), Some(&node(3, s("line\n"))));
        assert_eq!(doc.get("l").map(|n| n.line), Some(5));
    }

    #[test]
    fn node_get_reads_mappings() {
        let doc = ok("---\nm: {a: 1}\n---\n");
        let m = doc.get("m");
        assert_eq!(m.and_then(|m| m.get("a")), Some(&node(2, Value::Int(1))));
        assert_eq!(m.and_then(|m| m.get("b")), None);
        assert_eq!(node(1, Value::Int(1)).get("a"), None);
    }

    #[test]
    fn shown_values() {
        assert_eq!(s("lots").shown(), "\"lots\"");
        assert_eq!(
            s(&"x".repeat(50)).shown(),
            format!("\"{}…\"", "x".repeat(40))
        );
        assert_eq!(Value::Float(4000.0).shown(), "4000.0");
        assert_eq!(Value::Float(0.25).shown(), "0.25");
        assert_eq!(Value::Float(f64::NEG_INFINITY).shown(), "-.inf");
        assert_eq!(Value::Float(f64::NAN).shown(), ".nan");
        assert_eq!(Value::Null.shown(), "an empty value");
        assert_eq!(Value::Map(vec![]).shown(), "a mapping");
    }

    // --- Getters ---

    const TYPED: &str = concat!(
        "---\n",
        "name: daily\n",
        "count: 3\n",
        "words: lots\n",
        "neg: -3\n",
        "frac: 2.5\n",
        "flag: true\n",
        "yes: yes\n",
        "empty:\n",
        "tools: [a, b]\n",
        "one: solo\n",
        "mixed:\n",
        "  - a\n",
        "  - 3\n",
        "map: {a: 1}\n",
        "version: 1.10\n",
        "---\n",
    );

    fn typed() -> Doc {
        ok(TYPED)
    }

    fn fails<T: std::fmt::Debug>(r: Result<T, FmError>) -> String {
        match r {
            Ok(v) => panic!("expected an error, got {v:?}"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn str_getter() {
        let doc = typed();
        assert_eq!(doc.str("name"), Ok(Some("daily")));
        assert_eq!(doc.str("missing"), Ok(None));
        assert_eq!(doc.str("empty"), Ok(None));
        assert_eq!(
            fails(doc.str("version")),
            "jobs/x.md:16: version: must be a string, got 1.1; put it in quotes to use it as text"
        );
        assert_eq!(
            fails(doc.str("flag")),
            "jobs/x.md:7: flag: must be a string, got true; put it in quotes to use it as text"
        );
        assert_eq!(
            fails(doc.str("tools")),
            "jobs/x.md:10: tools: must be a string, got a list"
        );
    }

    #[test]
    fn bool_getter() {
        let doc = typed();
        assert_eq!(doc.bool("flag"), Ok(Some(true)));
        assert_eq!(doc.bool("missing"), Ok(None));
        assert_eq!(
            fails(doc.bool("yes")),
            "jobs/x.md:8: yes: must be true or false, got \"yes\""
        );
    }

    #[test]
    fn uint_getter() {
        let doc = typed();
        assert_eq!(doc.uint("count"), Ok(Some(3)));
        assert_eq!(doc.uint("empty"), Ok(None));
        assert_eq!(
            fails(doc.uint("words")),
            "jobs/x.md:4: words: must be a whole number, got \"lots\""
        );
        assert_eq!(
            fails(doc.uint("neg")),
            "jobs/x.md:5: neg: must be zero or more, got -3"
        );
        assert_eq!(
            fails(doc.uint("frac")),
            "jobs/x.md:6: frac: must be a whole number, got 2.5"
        );
        assert_eq!(
            fails(doc.uint("map")),
            "jobs/x.md:15: map: must be a whole number, got a mapping"
        );
    }

    #[test]
    fn str_list_getter() {
        let doc = typed();
        assert_eq!(
            doc.str_list("tools"),
            Ok(Some(vec!["a".into(), "b".into()]))
        );
        assert_eq!(doc.str_list("one"), Ok(Some(vec!["solo".into()])));
        assert_eq!(doc.str_list("missing"), Ok(None));
        assert_eq!(
            fails(doc.str_list("mixed")),
            "jobs/x.md:14: mixed[1]: must be a string, got 3"
        );
        assert_eq!(
            fails(doc.str_list("count")),
            "jobs/x.md:3: count: must be a string or a list of strings, got 3"
        );
        assert_eq!(ok("---\nl: []\n---\n").str_list("l"), Ok(Some(vec![])));
    }

    #[test]
    fn duration_getter() {
        let doc = ok(concat!(
            "---\n",
            "a: 30s\n",
            "b: 5m\n",
            "c: 2h\n",
            "d: 1h30m\n",
            "e: \"90\"\n",
            "f: 90\n",
            "g: 1d2h3m4s\n",
            "h: 0s\n",
            "---\n",
        ));
        let secs = |k: &str| doc.duration(k).map(|d| d.map(|d| d.as_secs()));
        assert_eq!(secs("a"), Ok(Some(30)));
        assert_eq!(secs("b"), Ok(Some(300)));
        assert_eq!(secs("c"), Ok(Some(7200)));
        assert_eq!(secs("d"), Ok(Some(5400)));
        assert_eq!(secs("e"), Ok(Some(90)));
        assert_eq!(secs("f"), Ok(Some(90)));
        assert_eq!(secs("g"), Ok(Some(93_784)));
        assert_eq!(secs("h"), Ok(Some(0)));
        assert_eq!(secs("missing"), Ok(None));
    }

    #[test]
    fn bad_durations_name_the_forms() {
        let forms = "must be a duration like \"30s\", \"5m\", \"2h\", \"1d\" or \"1h30m\", or a number of seconds";
        for (yaml, shown) in [
            ("soon", "\"soon\""),
            ("30m1h", "\"30m1h\""),
            ("1h1h", "\"1h1h\""),
            ("5ms", "\"5ms\""),
            ("h", "\"h\""),
            ("10 s", "\"10 s\""),
            ("-5", "-5"),
            ("1.5", "1.5"),
            ("99999999999999999999s", "\"99999999999999999999s\""),
            ("[1]", "a list"),
        ] {
            let doc = ok(&format!("---\nt: {yaml}\n---\n"));
            assert_eq!(
                fails(doc.duration("t")),
                format!("jobs/x.md:2: t: {forms}, got {shown}"),
                "{yaml:?}"
            );
        }
    }

    #[test]
    fn error_names_field_and_line() {
        let doc = typed();
        assert_eq!(
            doc.error("count", "must be at most 2").0,
            "jobs/x.md:3: count: must be at most 2"
        );
        assert_eq!(
            doc.error("schedule", "is required").0,
            "jobs/x.md: schedule: is required"
        );
        assert_eq!(
            doc.error_at(9, "consensus[0].guest", "no such guest").0,
            "jobs/x.md:9: consensus[0].guest: no such guest"
        );
    }

    #[test]
    fn nested_getters_name_the_path() {
        let doc = ok("---\nconsensus:\n  - guest: 7\n---\n");
        let guest = doc
            .get("consensus")
            .and_then(|c| match &c.value {
                Value::List(items) => items.first(),
                _ => None,
            })
            .and_then(|entry| entry.get("guest"));
        let Some(guest) = guest else {
            panic!("no guest in {doc:?}")
        };
        assert_eq!(
            fails(doc.str_of("consensus[0].guest", guest)),
            "jobs/x.md:3: consensus[0].guest: must be a string, got 7; put it in quotes to use it as text"
        );
    }

    #[test]
    fn unknown_fields_warn_with_suggestions() {
        let doc = ok("---\nname: x\nshedule: a\nmodle: b\nzzz: c\nmax_tokens: 1\n---\n");
        assert_eq!(
            doc.unknown(&["name", "schedule", "model", "max-tokens"]),
            vec![
                "jobs/x.md:3: unknown field `shedule` (ignored); did you mean `schedule`?",
                "jobs/x.md:4: unknown field `modle` (ignored); did you mean `model`?",
                "jobs/x.md:5: unknown field `zzz` (ignored)",
                "jobs/x.md:6: unknown field `max_tokens` (ignored); did you mean `max-tokens`?",
            ]
        );
        assert!(
            doc.unknown(&["name", "shedule", "modle", "zzz", "max_tokens"])
                .is_empty()
        );
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("", "ab"), 2);
        assert_eq!(edit_distance("model", "modle"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("schedule", "shedule"), 1);
        assert_eq!(edit_distance("é", "e"), 1);
        assert_eq!(nearest("gueste", &["guest", "guests"]), Some("guest"));
        assert_eq!(nearest("timeout", &["model"]), None);
    }

    // --- Robustness ---

    fn nasty_inputs() -> Vec<Vec<u8>> {
        let mut inputs: Vec<Vec<u8>> = [
            "",
            "---",
            "---\n",
            "---\n---",
            "---\r\n---\r\n",
            "\u{feff}",
            "\u{feff}---\n---",
            "---\n:\n---\n",
            "---\n- \n---\n",
            "---\n? \n---\n",
            "---\n!\n---\n",
            "---\n&\n---\n",
            "---\n*\n---\n",
            "---\n*a\n---\n",
            "---\n&a\n---\n",
            "---\n\"unterminated\n---\n",
            "---\n'x\n---\n",
            "---\n|\n---\n",
            "---\n>-\n  x\n---\n",
            "---\n{\n---\n",
            "---\n}\n---\n",
            "---\n]\n---\n",
            "---\n%YAML 1.2\n---\n",
            "---\n%TAG ! tag:x,2000:\n---\n",
            "---\n%FOO\n---\n",
            "---\na: !<> x\n---\n",
            "---\n!!! x\n---\n",
            "---\n{a: [b, {c: d}], e: f}\n---\n",
            "---\na:\n  b:\n c: 1\n---\n",
            "---\n\t\n---\n",
            "---\n\"\\u\"\n---\n",
            "---\n\"\\uD800\"\n---\n",
            "---\n\"\\xZZ\"\n---\n",
            "---\na: \"\\U0010FFFF\"\n---\n",
            "---\n\0\n---\n",
            "---\n\u{85}\u{2028}\u{2029}\n---\n",
            "---\n- - - - - -\n---\n",
            "---\n? - a\n  - b\n: c\n---\n",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        inputs.push(b"\xff\xfe\x00\x00".to_vec());
        inputs.push(b"---\n\xc3\n---\n".to_vec());
        inputs.push((0..=255u8).collect());
        inputs.push(format!("---\n{}\n---\n", "[".repeat(10_000)).into_bytes());
        inputs.push(format!("---\n{}\n---\n", "{a: ".repeat(10_000)).into_bytes());
        inputs.push(format!("---\n{}x\n---\n", "- ".repeat(20_000)).into_bytes());
        inputs.push(format!("---\n{}\n---\n", "? ".repeat(20_000)).into_bytes());
        inputs.push(format!("---\nk: {}\n---\n", "]".repeat(10_000)).into_bytes());
        inputs.push(format!("---\nk: \"{}\"\n---\n", "\\".repeat(10_001)).into_bytes());
        inputs.push(format!("---\n{}\n---\n", "&a ".repeat(5_000)).into_bytes());
        inputs.push(format!("---\n{}---\n", "a: 1\n".repeat(13_000)).into_bytes());
        inputs.push(vec![b'-'; MAX_FILE]);
        let example = TYPED.as_bytes();
        for cut in 0..example.len() {
            inputs.push(example.get(..cut).unwrap_or_default().to_vec());
        }
        inputs
    }

    #[test]
    fn never_panics_on_nasty_input() {
        for input in nasty_inputs() {
            let started = std::time::Instant::now();
            let _ = parse(PATH, &input);
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "slow on {:?}",
                String::from_utf8_lossy(input.get(..80).unwrap_or(&input))
            );
        }
    }

    /// A small deterministic generator, so a failure reproduces.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn never_panics_on_mutated_input() {
        const PIECES: &[&str] = &[
            "-", " ", "\n", ":", "?", "[", "]", "{", "}", ",", "'", "\"", "!", "!!", "&a", "*a",
            "#", "|", ">", "\t", "\r", "\\", "%", "@", "`", "---", "...", "é", "0x", "~", "a",
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let seed: Vec<u8> = TYPED.as_bytes().to_vec();
        for _ in 0..3_000 {
            let mut input = seed.clone();
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(input.len() + 1);
                let piece = PIECES[rng.below(PIECES.len())].as_bytes();
                match rng.below(3) {
                    0 => {
                        input.splice(at..at, piece.iter().copied());
                    }
                    1 if at < input.len() => {
                        input.remove(at);
                    }
                    _ => {
                        let byte = (rng.next() & 0xff) as u8;
                        input.insert(at, byte);
                    }
                }
            }
            let _ = parse(PATH, &input);
        }
    }
}
