//! One agent's definition, read from `.cairn/agents/<name>/`: `agent.toml`
//! (guests, routing, budget), `agent-card.md` (name, description, skills),
//! `instructions.md` and `memory/`.
//!
//! The TOML is walked by hand over toml's spanned document rather than
//! deserialized, so every refusal, semantic ones included, names the file,
//! the line and the field: `.cairn/agents/echo/agent.toml:7:
//! guests.echo.timeout_secs: must be a whole number from 1 to 86400, got -3`.
//! Nothing half-checked is ever returned.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt::Display;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use crate::broker::confine::{Mode, Policy};
use crate::dispatch::Kind;
use crate::sidecar::config::{Budget, OnExceeded};

/// The agent's configuration file, required.
pub const AGENT_FILE: &str = "agent.toml";
/// The agent's card: display name, description, skills.
pub const CARD_FILE: &str = "agent-card.md";
/// Standing instructions for the agent's guests.
pub const INSTRUCTIONS_FILE: &str = "instructions.md";
/// The agent's memory directory, preopened for its guests.
pub const MEMORY_DIR: &str = "memory";

/// Far beyond any real agent.toml; keeps a stray huge file out of memory.
const MAX_AGENT_TOML: u64 = 1 << 20;
const MAX_CARD: u64 = 64 << 10;
const MAX_INSTRUCTIONS: u64 = 256 << 10;

const DEFAULT_QUEUE_LIMIT: u64 = 32;
const MAX_QUEUE_LIMIT: u64 = 10_000;
const DEFAULT_TIMEOUT_SECS: u64 = 300;
const MAX_TIMEOUT_SECS: u64 = 86_400;
const DEFAULT_MEMORY_MIB: u64 = 256;
const MAX_MEMORY_MIB: u64 = 4096;

/// An agent that loaded, checked as a whole.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The directory's name.
    pub name: String,
    /// The agent's directory, absolute.
    pub dir: PathBuf,
    /// The card's first `# ` heading, else the name.
    pub display_name: String,
    /// `description` in agent.toml, else the card's first paragraphs.
    pub description: String,
    pub skills: Vec<Skill>,
    /// `instructions.md` when present; its content is read at dispatch.
    pub instructions: Option<PathBuf>,
    /// `memory/`, created at load when missing.
    pub memory: PathBuf,
    pub isolation: Isolation,
    /// Most dispatches waiting for this agent's workspace.
    pub queue_limit: usize,
    pub guests: BTreeMap<String, GuestEntry>,
    /// Always holds [`RouteKind::Default`].
    pub routing: BTreeMap<RouteKind, Route>,
    /// This agent's model budget, for the sidecar.
    pub budget: Option<Budget>,
    /// What the host tool broker may run for it (`[tools]`); None: nothing.
    pub tools: Option<Tools>,
    /// Changes whenever one of the agent's files does: equal fingerprints
    /// mean a reload would change nothing.
    pub fingerprint: String,
}

/// `[tools]` in agent.toml: how the host tool broker runs this agent's
/// commands, and the validation after a dispatch.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Tools {
    /// Mode, allow-list, timeout, output cap, network, processes, env.
    #[serde(flatten)]
    pub policy: Policy,
    /// Commands run after a dispatch that changed files; a failure rolls
    /// it back (or is fed back to the guest, `retry_on_fail` times).
    pub validate: Vec<String>,
    pub retry_on_fail: u32,
}

/// One skill from the card's `## Skills` section, as an A2A agent card lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Skill {
    /// The label as a slug (`code-review`).
    pub id: String,
    /// The label as written, or the id made readable (`Code review`).
    pub name: String,
    pub description: String,
}

/// Where an agent's dispatches run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// In the repository itself, one dispatch at a time.
    #[default]
    Shared,
    /// Each dispatch in its own git worktree and branch.
    Worktree,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Shared => "shared",
            Isolation::Worktree => "worktree",
        }
    }
}

/// A key of `[routing]`: the dispatch kind without its name, or `default`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteKind {
    Default,
    A2a,
    Heartbeat,
    Job,
    Task,
    Trigger,
    Continuation,
}

impl RouteKind {
    pub const ALL: [RouteKind; 7] = [
        RouteKind::Default,
        RouteKind::A2a,
        RouteKind::Heartbeat,
        RouteKind::Job,
        RouteKind::Task,
        RouteKind::Trigger,
        RouteKind::Continuation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Default => "default",
            RouteKind::A2a => "a2a",
            RouteKind::Heartbeat => "heartbeat",
            RouteKind::Job => "job",
            RouteKind::Task => "task",
            RouteKind::Trigger => "trigger",
            RouteKind::Continuation => "continuation",
        }
    }

    /// The routing key as written in agent.toml.
    pub fn from_key(key: &str) -> Option<RouteKind> {
        RouteKind::ALL.into_iter().find(|k| k.as_str() == key)
    }

    /// `job:nightly` routes as `job`. `None` only for a kind cairn does not
    /// know, which a parsed [`Kind`] never is.
    pub fn from_kind(kind: &Kind) -> Option<RouteKind> {
        let prefix = kind.as_str().split(':').next().unwrap_or_default();
        Self::from_key(prefix).filter(|k| *k != RouteKind::Default)
    }
}

/// A route's guest, and the model alias it runs with on this route.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Route {
    pub guest: String,
    pub model: Option<String>,
}

/// One `[guests.<name>]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestEntry {
    pub name: String,
    pub source: GuestSource,
    pub timeout: Duration,
    pub memory_mib: u64,
    /// `host` or `host:port`, lowercase, as the sandbox compares them.
    pub allow_hosts: Vec<String>,
    /// The guest's default model alias.
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
}

/// What runs a guest's dispatches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestSource {
    /// A bundled guest, a `.wasm`/`.wat` file (a relative one made absolute
    /// against the agent's directory) or an OCI image reference.
    Image(String),
    /// A peer A2A agent, dispatched to like a local guest.
    Peer {
        url: String,
        /// The variable holding the peer's bearer token.
        token_env: Option<String>,
    },
}

/// Why an agent was refused, in one line: `<file>:<line>: <field>: <why>`
/// (or `<path>: <why>` for a whole file or directory).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl AgentConfig {
    /// The guest and model for a dispatch of `kind`. Precedence for the
    /// guest: `guest_override` (a prompt file's choice) > routing[kind] >
    /// routing.default; for the model: `model_override` > that route's model
    /// (when the route names the guest chosen) > the guest's own model.
    pub fn route(
        &self,
        kind: &Kind,
        guest_override: Option<&str>,
        model_override: Option<&str>,
    ) -> Result<(&GuestEntry, Option<String>), String> {
        let routed = RouteKind::from_kind(kind)
            .and_then(|k| self.routing.get(&k))
            .or_else(|| self.routing.get(&RouteKind::Default));
        let name = match (guest_override, routed) {
            (Some(g), _) => g,
            (None, Some(r)) => r.guest.as_str(),
            (None, None) => {
                return Err(format!(
                    "agent {}: no route for a {} dispatch and no routing.default",
                    self.name,
                    kind.as_str()
                ));
            }
        };
        let guest = self.guests.get(name).ok_or_else(|| {
            format!(
                "agent {}: no guest `{name}` (guests: {})",
                self.name,
                self.guests.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        let route_model = routed
            .filter(|r| r.guest == guest.name)
            .and_then(|r| r.model.clone());
        let model = model_override
            .map(str::to_string)
            .or(route_model)
            .or_else(|| guest.model.clone());
        Ok((guest, model))
    }
}

/// `<repo>/.cairn/agents`.
pub fn agents_dir(repo: &Path) -> PathBuf {
    repo.join(".cairn").join("agents")
}

/// Agent and guest names: safe as a directory, a branch and a metric label.
pub fn valid_name(s: &str) -> bool {
    s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
}

const NAME_RULE: &str =
    "use 1 to 63 lowercase letters, digits, `-` and `_`, starting with a letter or digit";

/// Every agent under `<repo>/.cairn/agents/`: the good ones and one error
/// per bad one (a bad agent never hides the others).
pub fn load_all(repo: &Path) -> (BTreeMap<String, AgentConfig>, Vec<ConfigError>) {
    let root = agents_dir(repo);
    let shown = shown(repo, &root);
    let mut agents = BTreeMap::new();
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let why = "no agents directory; run `cairn init` to create one with an example agent";
            return (agents, vec![ConfigError(format!("{shown}: {why}"))]);
        }
        Err(e) => {
            return (
                agents,
                vec![ConfigError(format!("{shown}: {}", io_why(&e)))],
            );
        }
    };
    let mut dirs = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) if entry.path().is_dir() => dirs.push(entry.path()),
            Ok(_) => {}
            Err(e) => errors.push(ConfigError(format!("{shown}: {}", io_why(&e)))),
        }
    }
    dirs.sort();
    for dir in dirs {
        match load_agent(repo, &dir) {
            Ok(agent) => {
                agents.insert(agent.name.clone(), agent);
            }
            Err(e) => errors.push(e),
        }
    }
    (agents, errors)
}

/// Loads the agent in `dir` (a path as opened; shown relative to `repo`),
/// creating its `memory/` when missing.
pub fn load_agent(repo: &Path, dir: &Path) -> Result<AgentConfig, ConfigError> {
    let shown_dir = shown(repo, dir);
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !valid_name(&name) {
        return Err(ConfigError(format!(
            "{shown_dir}: `{name}` is not a valid agent name: {NAME_RULE}"
        )));
    }
    let abs_dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let file = |f: &str| (dir.join(f), shown(repo, &dir.join(f)));

    let (toml_path, toml_shown) = file(AGENT_FILE);
    let toml_bytes = match read_capped(&toml_path, MAX_AGENT_TOML, &toml_shown)? {
        Some(bytes) => bytes,
        None => {
            return Err(ConfigError(format!(
                "{toml_shown}: missing; every agent directory needs one (`cairn init` writes an example)"
            )));
        }
    };
    let text = utf8(&toml_bytes, &toml_shown)?;
    let doc = Doc {
        origin: &toml_shown,
        text,
    };
    let parsed = parse_agent_toml(&doc, &abs_dir)?;

    let (card_path, card_shown) = file(CARD_FILE);
    let card_bytes = read_capped(&card_path, MAX_CARD, &card_shown)?;
    let card = match &card_bytes {
        Some(bytes) => parse_card(utf8(bytes, &card_shown)?, &card_shown)?,
        None => Card::default(),
    };

    let (instructions_path, instructions_shown) = file(INSTRUCTIONS_FILE);
    let instructions_bytes =
        read_capped(&instructions_path, MAX_INSTRUCTIONS, &instructions_shown)?;

    let memory = abs_dir.join(MEMORY_DIR);
    let memory_shown = shown(repo, &dir.join(MEMORY_DIR));
    match std::fs::metadata(&memory) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(ConfigError(format!(
                "{memory_shown}: not a directory (the agent's memory lives there)"
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&memory).map_err(|e| {
                ConfigError(format!("{memory_shown}: cannot be created: {}", io_why(&e)))
            })?;
        }
        Err(e) => return Err(ConfigError(format!("{memory_shown}: {}", io_why(&e)))),
    }

    let budget = parsed.budget.map(|mut b| {
        b.scope = format!("agent {name}");
        b
    });
    let fingerprint = fingerprint(
        &[
            (AGENT_FILE, Some(toml_bytes.as_slice())),
            (CARD_FILE, card_bytes.as_deref()),
            (INSTRUCTIONS_FILE, instructions_bytes.as_deref()),
        ],
        &parsed.guests,
    );
    Ok(AgentConfig {
        display_name: card.name.unwrap_or_else(|| name.clone()),
        description: parsed.description.unwrap_or(card.description),
        skills: card.skills,
        instructions: instructions_bytes.map(|_| abs_dir.join(INSTRUCTIONS_FILE)),
        memory,
        name,
        dir: abs_dir,
        isolation: parsed.isolation,
        queue_limit: parsed.queue_limit,
        guests: parsed.guests,
        routing: parsed.routing,
        budget,
        tools: parsed.tools,
        fingerprint,
    })
}

/// `path` relative to the repository, as the user knows it.
fn shown(repo: &Path, path: &Path) -> String {
    path.strip_prefix(repo)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn io_why(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// The file's bytes, `None` when it does not exist; refuses directories and
/// anything over `cap` without reading past it.
fn read_capped(path: &Path, cap: u64, shown: &str) -> Result<Option<Vec<u8>>, ConfigError> {
    let fail = |why: String| ConfigError(format!("{shown}: {why}"));
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(io_why(&e))),
    };
    if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        return Err(fail("is a directory, not a file".into()));
    }
    let mut bytes = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(io_why(&e)))?;
    if bytes.len() as u64 > cap {
        return Err(fail(format!("larger than {} KiB", cap >> 10)));
    }
    Ok(Some(bytes))
}

fn utf8<'b>(bytes: &'b [u8], shown: &str) -> Result<&'b str, ConfigError> {
    std::str::from_utf8(bytes).map_err(|e| {
        ConfigError(format!(
            "{shown}: not UTF-8 text (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })
}

/// Hashes the agent's files, and the size and time of its local guest
/// files, so an edit anywhere shows while an untouched agent reads equal.
fn fingerprint(files: &[(&str, Option<&[u8]>)], guests: &BTreeMap<String, GuestEntry>) -> String {
    let mut h = DefaultHasher::new();
    let mut total = 0usize;
    for (name, bytes) in files {
        name.hash(&mut h);
        bytes.hash(&mut h);
        total += bytes.map_or(0, <[u8]>::len);
    }
    for guest in guests.values() {
        if let GuestSource::Image(image) = &guest.source
            && Path::new(image).is_absolute()
            && let Ok(meta) = std::fs::metadata(image)
        {
            image.hash(&mut h);
            meta.len().hash(&mut h);
            meta.modified().ok().hash(&mut h);
        }
    }
    format!("{total}-{:016x}", h.finish())
}

/// The file being walked, for error lines.
struct Doc<'a> {
    origin: &'a str,
    text: &'a str,
}

impl Doc<'_> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text
            .as_bytes()
            .get(..end)
            .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
            + 1
    }

    fn fail(&self, span: &Range<usize>, field: &str, why: impl Display) -> ConfigError {
        ConfigError(format!(
            "{}:{}: {field}: {why}",
            self.origin,
            self.line(span.start)
        ))
    }
}

type Key<'i> = Spanned<DeString<'i>>;
type Value<'i> = Spanned<DeValue<'i>>;

/// `prefix.key`, quoting a key TOML would need quoted.
fn join(prefix: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let key = if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}

/// A table's entries in the order they appear, so the first mistake in the
/// file is the one reported.
fn entries<'t, 'i>(table: &'t DeTable<'i>) -> Vec<(&'t Key<'i>, &'t Value<'i>)> {
    let mut all: Vec<_> = table.iter().collect();
    all.sort_by_key(|(k, _)| k.span().start);
    all
}

fn only_keys(
    doc: &Doc,
    table: &DeTable,
    prefix: &str,
    allowed: &[&str],
) -> Result<(), ConfigError> {
    match entries(table)
        .into_iter()
        .find(|(k, _)| !allowed.contains(&k.get_ref().as_ref()))
    {
        Some((k, _)) => Err(doc.fail(
            &k.span(),
            &join(prefix, k.get_ref()),
            format!("unknown key (expected {})", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

fn get<'t, 'i>(table: &'t DeTable<'i>, key: &str) -> Option<(&'t Key<'i>, &'t Value<'i>)> {
    table.get_key_value(key)
}

/// A value as it appears in the file, for messages.
fn shown_value(v: &DeValue) -> String {
    match v {
        DeValue::String(s) => format!("{s:?}"),
        DeValue::Integer(i) => {
            let prefix = match i.radix() {
                2 => "0b",
                8 => "0o",
                16 => "0x",
                _ => "",
            };
            format!("{prefix}{}", i.as_str())
        }
        DeValue::Float(f) => f.as_str().to_string(),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(d) => d.to_string(),
        DeValue::Array(_) => "an array".into(),
        DeValue::Table(_) => "a table".into(),
    }
}

fn integer(v: &DeValue) -> Option<i128> {
    match v {
        DeValue::Integer(i) if (2..=36).contains(&i.radix()) => {
            i128::from_str_radix(i.as_str(), i.radix()).ok()
        }
        _ => None,
    }
}

fn whole(doc: &Doc, v: &Value, field: &str, lo: u64, hi: u64) -> Result<u64, ConfigError> {
    match integer(v.get_ref()).and_then(|n| u64::try_from(n).ok()) {
        Some(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => {
            let range = if hi == u64::MAX {
                format!("≥ {lo}")
            } else {
                format!("from {lo} to {hi}")
            };
            Err(doc.fail(
                &v.span(),
                field,
                format!(
                    "must be a whole number {range}, got {}",
                    shown_value(v.get_ref())
                ),
            ))
        }
    }
}

fn non_negative(doc: &Doc, v: &Value, field: &str) -> Result<f64, ConfigError> {
    let n = match v.get_ref() {
        DeValue::Integer(_) => integer(v.get_ref()).map(|n| n as f64),
        DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n.is_finite() && n >= 0.0 => Ok(n),
        _ => Err(doc.fail(
            &v.span(),
            field,
            format!("must be a number ≥ 0, got {}", shown_value(v.get_ref())),
        )),
    }
}

fn string<'t>(doc: &Doc, v: &'t Value, field: &str) -> Result<&'t str, ConfigError> {
    match v.get_ref() {
        DeValue::String(s) => Ok(s.as_ref()),
        other => Err(doc.fail(
            &v.span(),
            field,
            format!("must be a string, got {}", shown_value(other)),
        )),
    }
}

/// A non-empty string with no spaces or control characters: a model
/// alias, an image reference, a host.
fn word<'t>(doc: &Doc, v: &'t Value, field: &str, what: &str) -> Result<&'t str, ConfigError> {
    let s = string(doc, v, field)?;
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(doc.fail(
            &v.span(),
            field,
            format!("must be {what} (no spaces), got {s:?}"),
        ));
    }
    Ok(s)
}

fn table<'t, 'i>(doc: &Doc, v: &'t Value<'i>, field: &str) -> Result<&'t DeTable<'i>, ConfigError> {
    match v.get_ref() {
        DeValue::Table(t) => Ok(t),
        other => Err(doc.fail(
            &v.span(),
            field,
            format!("must be a table, got {}", shown_value(other)),
        )),
    }
}

/// agent.toml, checked; the card and files come later.
struct Parsed {
    description: Option<String>,
    isolation: Isolation,
    queue_limit: usize,
    guests: BTreeMap<String, GuestEntry>,
    routing: BTreeMap<RouteKind, Route>,
    budget: Option<Budget>,
    tools: Option<Tools>,
}

fn parse_agent_toml(doc: &Doc, dir: &Path) -> Result<Parsed, ConfigError> {
    let root = DeTable::parse(doc.text).map_err(|e| {
        let line = e.span().map_or(1, |s| doc.line(s.start));
        let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        ConfigError(format!("{}:{line}: {message}", doc.origin))
    })?;
    let root = root.get_ref();
    only_keys(
        doc,
        root,
        "",
        &[
            "description",
            "isolation",
            "queue_limit",
            "guests",
            "routing",
            "budget",
            "tools",
        ],
    )?;

    let description = match get(root, "description") {
        Some((_, v)) => Some(string(doc, v, "description")?.trim().to_string()),
        None => None,
    };
    let isolation = match get(root, "isolation") {
        Some((_, v)) => match string(doc, v, "isolation") {
            Ok("shared") => Isolation::Shared,
            Ok("worktree") => Isolation::Worktree,
            _ => {
                return Err(doc.fail(
                    &v.span(),
                    "isolation",
                    format!(
                        "must be \"shared\" or \"worktree\", got {}",
                        shown_value(v.get_ref())
                    ),
                ));
            }
        },
        None => Isolation::Shared,
    };
    let queue_limit = match get(root, "queue_limit") {
        Some((_, v)) => whole(doc, v, "queue_limit", 1, MAX_QUEUE_LIMIT)?,
        None => DEFAULT_QUEUE_LIMIT,
    };

    let Some((guests_key, guests_value)) = get(root, "guests") else {
        return Err(doc.fail(
            &(0..0),
            "guests",
            "no guests; add one, e.g. [guests.main] with image = \"echo\"",
        ));
    };
    let guests_table = table(doc, guests_value, "guests")?;
    if guests_table.is_empty() {
        return Err(doc.fail(
            &guests_key.span(),
            "guests",
            "no guests; add one, e.g. [guests.main] with image = \"echo\"",
        ));
    }
    let mut guests = BTreeMap::new();
    for (key, value) in entries(guests_table) {
        let name = key.get_ref().as_ref();
        if !valid_name(name) {
            return Err(doc.fail(
                &key.span(),
                &join("guests", name),
                format!("`{name}` is not a valid guest name: {NAME_RULE}"),
            ));
        }
        guests.insert(name.to_string(), parse_guest(doc, name, key, value, dir)?);
    }

    let routing = parse_routing(doc, root, guests_key, &guests)?;

    let budget = match get(root, "budget") {
        Some((_, v)) => Some(parse_budget(doc, v)?),
        None => None,
    };
    let tools = match get(root, "tools") {
        Some((_, v)) => Some(parse_tools(doc, v)?),
        None => None,
    };

    Ok(Parsed {
        description,
        isolation,
        queue_limit: queue_limit as usize,
        guests,
        routing,
        budget,
        tools,
    })
}

fn parse_guest(
    doc: &Doc,
    name: &str,
    key: &Key,
    value: &Value,
    dir: &Path,
) -> Result<GuestEntry, ConfigError> {
    let field = join("guests", name);
    let f = |k: &str| format!("{field}.{k}");
    let t = table(doc, value, &field)?;
    only_keys(
        doc,
        t,
        &field,
        &[
            "image",
            "a2a",
            "token_env",
            "timeout_secs",
            "memory_mib",
            "allow_hosts",
            "model",
            "max_tokens",
        ],
    )?;

    let source = match (get(t, "image"), get(t, "a2a")) {
        (Some((ik, _)), Some((ak, _))) => {
            let (later, span) = if ik.span().start > ak.span().start {
                ("image", ik.span())
            } else {
                ("a2a", ak.span())
            };
            return Err(doc.fail(&span, &f(later), "a guest has `image` or `a2a`, not both"));
        }
        (Some((_, v)), None) => {
            let image = word(doc, v, &f("image"), "a bundled guest, a path or an image")?;
            if let Some((k, _)) = get(t, "token_env") {
                return Err(doc.fail(
                    &k.span(),
                    &f("token_env"),
                    "only for `a2a` guests (the bearer token of a peer)",
                ));
            }
            GuestSource::Image(resolve_image(image, dir))
        }
        (None, Some((_, v))) => {
            let url = string(doc, v, &f("a2a"))?;
            if !http_url(url) {
                return Err(doc.fail(
                    &v.span(),
                    &f("a2a"),
                    format!("must be an http:// or https:// URL, got {url:?}"),
                ));
            }
            for only_image in ["memory_mib", "allow_hosts"] {
                if let Some((k, _)) = get(t, only_image) {
                    return Err(doc.fail(
                        &k.span(),
                        &f(only_image),
                        "only for `image` guests (a peer runs outside cairn's sandbox)",
                    ));
                }
            }
            let token_env = match get(t, "token_env") {
                Some((_, v)) => {
                    let var = string(doc, v, &f("token_env"))?;
                    if !env_name(var) {
                        return Err(doc.fail(
                            &v.span(),
                            &f("token_env"),
                            format!(
                                "must be an environment variable name (letters, digits, `_`), got {var:?}"
                            ),
                        ));
                    }
                    Some(var.to_string())
                }
                None => None,
            };
            GuestSource::Peer {
                url: url.to_string(),
                token_env,
            }
        }
        (None, None) => {
            return Err(doc.fail(
                &key.span(),
                &field,
                "needs `image` (a bundled guest, a .wasm/.wat path or an OCI image reference) \
                 or `a2a` (a peer agent's URL)",
            ));
        }
    };

    let timeout_secs = match get(t, "timeout_secs") {
        Some((_, v)) => whole(doc, v, &f("timeout_secs"), 1, MAX_TIMEOUT_SECS)?,
        None => DEFAULT_TIMEOUT_SECS,
    };
    let memory_mib = match get(t, "memory_mib") {
        Some((_, v)) => whole(doc, v, &f("memory_mib"), 1, MAX_MEMORY_MIB)?,
        None => DEFAULT_MEMORY_MIB,
    };
    let mut allow_hosts = Vec::new();
    if let Some((_, v)) = get(t, "allow_hosts") {
        let DeValue::Array(items) = v.get_ref() else {
            return Err(doc.fail(
                &v.span(),
                &f("allow_hosts"),
                format!(
                    "must be an array of hosts, got {}",
                    shown_value(v.get_ref())
                ),
            ));
        };
        for item in items.iter() {
            let host = string(doc, item, &f("allow_hosts"))?;
            if !host_or_port(host) {
                return Err(doc.fail(
                    &item.span(),
                    &f("allow_hosts"),
                    format!("`{host}` is not a host or host:port (no scheme, no path)"),
                ));
            }
            allow_hosts.push(host.to_ascii_lowercase());
        }
    }
    let model = match get(t, "model") {
        Some((_, v)) => Some(word(doc, v, &f("model"), "a model alias")?.to_string()),
        None => None,
    };
    let max_tokens = match get(t, "max_tokens") {
        Some((_, v)) => Some(whole(doc, v, &f("max_tokens"), 1, u64::MAX)?),
        None => None,
    };
    Ok(GuestEntry {
        name: name.to_string(),
        source,
        timeout: Duration::from_secs(timeout_secs),
        memory_mib,
        allow_hosts,
        model,
        max_tokens,
    })
}

/// A relative file is made absolute against the agent's directory, so the
/// reference works from anywhere; bare names stay as written (a bundled
/// guest wins, as on the command line), as do image references.
fn resolve_image(image: &str, dir: &Path) -> String {
    let path = Path::new(image);
    let wasm = path.extension().is_some_and(|e| e == "wasm" || e == "wat");
    let bare = !image.contains('/') && !image.starts_with('.');
    let local = dir.join(path);
    if path.is_relative()
        && (wasm || (!bare && local.exists()))
        && let Some(s) = local.to_str()
    {
        return s.to_string();
    }
    image.to_string()
}

fn http_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    !url.chars().any(|c| c.is_whitespace() || c.is_control()) && host_or_port(authority)
}

/// `host` or `host:port`, a bracketed IPv6 address allowed.
fn host_or_port(s: &str) -> bool {
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        match v6.split_once(']') {
            Some((addr, rest))
                if !addr.is_empty()
                    && addr
                        .chars()
                        .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.') =>
            {
                match rest.strip_prefix(':') {
                    Some(port) => ("v6", Some(port)),
                    None if rest.is_empty() => ("v6", None),
                    None => return false,
                }
            }
            _ => return false,
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    host_ok && port_ok
}

fn env_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_routing(
    doc: &Doc,
    root: &DeTable,
    guests_key: &Key,
    guests: &BTreeMap<String, GuestEntry>,
) -> Result<BTreeMap<RouteKind, Route>, ConfigError> {
    let mut routing = BTreeMap::new();
    let known = || guests.keys().cloned().collect::<Vec<_>>().join(", ");
    let existing = |v: &Value, field: &str| -> Result<String, ConfigError> {
        let guest = string(doc, v, field)?;
        if guests.contains_key(guest) {
            Ok(guest.to_string())
        } else {
            Err(doc.fail(
                &v.span(),
                field,
                format!("no guest `{guest}` (guests: {})", known()),
            ))
        }
    };
    let routing_entry = get(root, "routing");
    if let Some((_, v)) = routing_entry {
        let t = table(doc, v, "routing")?;
        let kinds: Vec<&str> = RouteKind::ALL.iter().map(|k| k.as_str()).collect();
        only_keys(doc, t, "routing", &kinds)?;
        for (key, value) in entries(t) {
            let Some(kind) = RouteKind::from_key(key.get_ref()) else {
                continue;
            };
            let field = format!("routing.{}", kind.as_str());
            let route = match value.get_ref() {
                DeValue::String(_) => Route {
                    guest: existing(value, &field)?,
                    model: None,
                },
                DeValue::Table(rt) => {
                    only_keys(doc, rt, &field, &["guest", "model"])?;
                    let Some((_, g)) = get(rt, "guest") else {
                        return Err(doc.fail(
                            &value.span(),
                            &format!("{field}.guest"),
                            "missing: the guest this route goes to",
                        ));
                    };
                    let model = match get(rt, "model") {
                        Some((_, m)) => Some(
                            word(doc, m, &format!("{field}.model"), "a model alias")?.to_string(),
                        ),
                        None => None,
                    };
                    Route {
                        guest: existing(g, &format!("{field}.guest"))?,
                        model,
                    }
                }
                other => {
                    return Err(doc.fail(
                        &value.span(),
                        &field,
                        format!(
                            "must be a guest name or {{ guest = \"…\", model = \"…\" }}, got {}",
                            shown_value(other)
                        ),
                    ));
                }
            };
            routing.insert(kind, route);
        }
    }
    if let Entry::Vacant(slot) = routing.entry(RouteKind::Default) {
        let mut names = guests.keys();
        match (names.next(), names.next()) {
            (Some(only), None) => {
                slot.insert(Route {
                    guest: only.clone(),
                    model: None,
                });
            }
            _ => {
                let span = routing_entry.map_or_else(|| guests_key.span(), |(k, _)| k.span());
                return Err(doc.fail(
                    &span,
                    "routing.default",
                    format!(
                        "missing: with several guests ({}), name the one for dispatches no other route takes",
                        known()
                    ),
                ));
            }
        }
    }
    Ok(routing)
}

/// A list of strings at `field`.
fn strings(doc: &Doc, v: &Value, field: &str) -> Result<Vec<String>, ConfigError> {
    let DeValue::Array(items) = v.get_ref() else {
        return Err(doc.fail(
            &v.span(),
            field,
            format!(
                "must be an array of strings, got {}",
                shown_value(v.get_ref())
            ),
        ));
    };
    items
        .iter()
        .map(|item| string(doc, item, field).map(str::to_string))
        .collect()
}

fn boolean(doc: &Doc, v: &Value, field: &str) -> Result<bool, ConfigError> {
    match v.get_ref() {
        DeValue::Boolean(b) => Ok(*b),
        other => Err(doc.fail(
            &v.span(),
            field,
            format!("must be true or false, got {}", shown_value(other)),
        )),
    }
}

fn parse_tools(doc: &Doc, value: &Value) -> Result<Tools, ConfigError> {
    let t = table(doc, value, "tools")?;
    only_keys(
        doc,
        t,
        "tools",
        &[
            "mode",
            "allow",
            "timeout_secs",
            "output_kib",
            "network",
            "accept_unconfined",
            "max_processes",
            "env",
            "validate",
            "retry_on_fail",
        ],
    )?;
    let mode = match get(t, "mode") {
        None => Mode::WorkspaceWrite,
        Some((_, v)) => match string(doc, v, "tools.mode") {
            Ok("read-only") => Mode::ReadOnly,
            Ok("workspace-write") => Mode::WorkspaceWrite,
            Ok("full") => Mode::Full,
            _ => {
                return Err(doc.fail(
                    &v.span(),
                    "tools.mode",
                    format!(
                        "must be \"read-only\", \"workspace-write\" or \"full\", got {}",
                        shown_value(v.get_ref())
                    ),
                ));
            }
        },
    };
    let mut allow = Vec::new();
    if let Some((_, v)) = get(t, "allow") {
        let DeValue::Array(items) = v.get_ref() else {
            return Err(doc.fail(
                &v.span(),
                "tools.allow",
                format!(
                    "must be an array of program names or absolute path prefixes, got {}",
                    shown_value(v.get_ref())
                ),
            ));
        };
        for item in items.iter() {
            let p = string(doc, item, "tools.allow")?;
            let ok = !p.is_empty()
                && !p.chars().any(|c| c.is_whitespace() || c.is_control())
                && (p.starts_with('/') || !p.contains('/'));
            if !ok {
                return Err(doc.fail(
                    &item.span(),
                    "tools.allow",
                    format!("`{p}` is not a program name (`cargo`) or an absolute path prefix (`/usr/bin/`)"),
                ));
            }
            allow.push(p.to_string());
        }
    }
    let env = match get(t, "env") {
        Some((_, v)) => strings(doc, v, "tools.env")?,
        None => Vec::new(),
    };
    let validate = match get(t, "validate") {
        Some((_, v)) => strings(doc, v, "tools.validate")?,
        None => Vec::new(),
    };
    let num = |k: &str, lo: u64, hi: u64, default: u64| -> Result<u64, ConfigError> {
        get(t, k).map_or(Ok(default), |(_, v)| {
            whole(doc, v, &format!("tools.{k}"), lo, hi)
        })
    };
    let flag = |k: &str| -> Result<bool, ConfigError> {
        get(t, k).map_or(Ok(false), |(_, v)| boolean(doc, v, &format!("tools.{k}")))
    };
    Ok(Tools {
        policy: Policy {
            mode,
            allow,
            timeout: Duration::from_secs(num("timeout_secs", 1, 24 * 3600, 300)?),
            output_cap: (num("output_kib", 1, 64 * 1024, 256)? as usize) << 10,
            network: flag("network")?,
            accept_unconfined: flag("accept_unconfined")?,
            max_processes: num("max_processes", 1, 100_000, 256)?,
            env_pass: env,
        },
        validate,
        retry_on_fail: num("retry_on_fail", 0, 10, 0)? as u32,
    })
}

fn parse_budget(doc: &Doc, value: &Value) -> Result<Budget, ConfigError> {
    let t = table(doc, value, "budget")?;
    only_keys(
        doc,
        t,
        "budget",
        &[
            "usd_per_day",
            "usd_per_month",
            "tokens_per_day",
            "tokens_per_month",
            "tokens_per_dispatch",
            "on_exceeded",
            "degrade_to",
        ],
    )?;
    let usd = |k: &str| -> Result<Option<f64>, ConfigError> {
        get(t, k)
            .map(|(_, v)| non_negative(doc, v, &format!("budget.{k}")))
            .transpose()
    };
    let tokens = |k: &str| -> Result<Option<u64>, ConfigError> {
        get(t, k)
            .map(|(_, v)| whole(doc, v, &format!("budget.{k}"), 0, u64::MAX))
            .transpose()
    };
    let mut budget = Budget {
        scope: String::new(),
        usd_per_day: usd("usd_per_day")?,
        usd_per_month: usd("usd_per_month")?,
        tokens_per_day: tokens("tokens_per_day")?,
        tokens_per_month: tokens("tokens_per_month")?,
        tokens_per_dispatch: tokens("tokens_per_dispatch")?,
        on_exceeded: OnExceeded::Stop,
        degrade_to: None,
    };
    if let Some((_, v)) = get(t, "on_exceeded") {
        budget.on_exceeded = match string(doc, v, "budget.on_exceeded") {
            Ok("stop") => OnExceeded::Stop,
            Ok("alert") => OnExceeded::Alert,
            Ok("degrade") => OnExceeded::Degrade,
            _ => {
                return Err(doc.fail(
                    &v.span(),
                    "budget.on_exceeded",
                    format!(
                        "must be \"stop\", \"alert\" or \"degrade\", got {}",
                        shown_value(v.get_ref())
                    ),
                ));
            }
        };
    }
    if let Some((_, v)) = get(t, "degrade_to") {
        budget.degrade_to = Some(word(doc, v, "budget.degrade_to", "a model alias")?.to_string());
    }
    if budget.on_exceeded == OnExceeded::Degrade && budget.degrade_to.is_none() {
        let span = get(t, "on_exceeded").map_or_else(|| value.span(), |(_, v)| v.span());
        return Err(doc.fail(
            &span,
            "budget.degrade_to",
            "missing: on_exceeded = \"degrade\" needs the model alias to degrade to",
        ));
    }
    Ok(budget)
}

/// What agent-card.md says.
#[derive(Debug, Default, PartialEq)]
struct Card {
    name: Option<String>,
    description: String,
    skills: Vec<Skill>,
}

/// The level and text of an ATX heading (`## Skills`).
fn heading(line: &str) -> Option<(usize, &str)> {
    let trimmed = line.trim_start();
    if line.len() - trimmed.len() > 3 {
        return None;
    }
    let level = trimmed.bytes().take_while(|&b| b == b'#').count();
    let rest = trimmed.get(level..)?;
    if !(1..=6).contains(&level) || !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
        return None;
    }
    let text = rest.trim().trim_end_matches('#').trim_end();
    Some((level, text))
}

/// Reads the card: the first `# ` heading is the name, the paragraphs after
/// it (or at the top, without one) the description, and the bullets of a
/// `## Skills` section the skills. Fenced code and HTML comments are never
/// taken as structure.
fn parse_card(text: &str, origin: &str) -> Result<Card, ConfigError> {
    #[derive(PartialEq)]
    enum At {
        Description,
        Skills,
        Other,
    }
    let mut card = Card::default();
    let mut at = At::Description;
    let mut fence: Option<&str> = None;
    let mut in_comment = false;
    let mut paragraphs: Vec<Vec<&str>> = vec![Vec::new()];
    // (line, label, description lines) of each skill bullet.
    let mut bullets: Vec<(usize, String, Vec<String>)> = Vec::new();
    let mut in_bullet = false;

    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(marker) = fence {
            if trimmed.starts_with(marker) {
                fence = None;
            }
            continue;
        }
        if in_comment {
            in_comment = !trimmed.contains("-->");
            continue;
        }
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fence = Some(trimmed.get(..3).unwrap_or("```"));
            in_bullet = false;
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix("<!--") {
            in_comment = !comment.contains("-->");
            continue;
        }
        if let Some((level, title)) = heading(line) {
            in_bullet = false;
            if level == 1 && card.name.is_none() && !title.is_empty() {
                card.name = Some(title.to_string());
                paragraphs = vec![Vec::new()];
                at = At::Description;
            } else if level <= 2 && title.eq_ignore_ascii_case("skills") {
                at = At::Skills;
            } else if at != At::Skills || level <= 2 {
                // Subsections of Skills keep their bullets.
                at = At::Other;
            }
            continue;
        }
        match at {
            At::Description if trimmed.is_empty() => {
                if paragraphs.last().is_some_and(|p| !p.is_empty()) {
                    paragraphs.push(Vec::new());
                }
            }
            At::Description => {
                if let Some(p) = paragraphs.last_mut() {
                    p.push(trimmed);
                }
            }
            At::Skills => {
                let indent = line.len() - line.trim_start().len();
                let bullet = ["- ", "* ", "+ "]
                    .iter()
                    .find_map(|b| trimmed.strip_prefix(b));
                match bullet {
                    Some(item) if indent < 2 => {
                        let (label, rest) = skill_label(item);
                        in_bullet = true;
                        bullets.push((n + 1, label, vec![rest]));
                    }
                    _ if trimmed.is_empty() => {}
                    _ if in_bullet && indent >= 2 => {
                        if let Some((_, _, d)) = bullets.last_mut() {
                            d.push(trimmed.to_string());
                        }
                    }
                    _ => in_bullet = false,
                }
            }
            At::Other => {}
        }
    }

    card.description = paragraphs
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| p.join(" "))
        .collect::<Vec<_>>()
        .join("\n\n");
    for (line, label, description) in bullets {
        let id = slug(&label);
        if id.is_empty() {
            continue;
        }
        if card.skills.iter().any(|s| s.id == id) {
            return Err(ConfigError(format!(
                "{origin}:{line}: skills: duplicate skill id `{id}`"
            )));
        }
        let name = if label == id { readable(&id) } else { label };
        let description = description
            .into_iter()
            .filter(|d| !d.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        card.skills.push(Skill {
            id,
            name,
            description,
        });
    }
    Ok(card)
}

/// `**id**: text`, `**id:** text`, `` `id`: text `` or `id: text`.
fn skill_label(item: &str) -> (String, String) {
    let item = item.trim();
    for mark in ["**", "__", "`"] {
        if let Some(rest) = item.strip_prefix(mark)
            && let Some((label, after)) = rest.split_once(mark)
        {
            let label = label.trim().trim_end_matches(':').trim();
            let after = after.trim_start();
            let after = after.strip_prefix(':').unwrap_or(after).trim();
            let after = after.strip_prefix(['-', '—', '–']).unwrap_or(after).trim();
            return (label.to_string(), after.to_string());
        }
    }
    match item.split_once(':') {
        Some((label, after)) => (label.trim().to_string(), after.trim().to_string()),
        None => (item.to_string(), String::new()),
    }
}

/// Lowercase letters and digits, other runs turned into one `-`.
fn slug(label: &str) -> String {
    let mut out = String::new();
    for c in label.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() || c == '_' {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

/// `code-review` → `Code review`.
fn readable(id: &str) -> String {
    let spaced = id.replace(['-', '_'], " ");
    let mut chars = spaced.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => spaced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes an agent directory under `<repo>/.cairn/agents/<name>`.
    fn agent(repo: &Path, name: &str, toml: &str) -> PathBuf {
        let dir = agents_dir(repo).join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(AGENT_FILE), toml).unwrap();
        dir
    }

    fn load(toml: &str) -> Result<AgentConfig, String> {
        let repo = tempfile::tempdir().unwrap();
        let dir = agent(repo.path(), "echo", toml);
        load_agent(repo.path(), &dir).map_err(|e| e.0)
    }

    fn err(toml: &str) -> String {
        load(toml).expect_err("should be refused")
    }

    const FILE: &str = ".cairn/agents/echo/agent.toml";

    #[test]
    fn tools_are_the_broker_policy_with_defaults_and_line_errors() {
        let base = "[guests.main]\nimage = \"echo\"\n";
        assert_eq!(load(base).unwrap().tools, None);
        let t = load(&format!(
            "{base}[tools]\nallow = [\"cargo\", \"/usr/bin/\"]\nvalidate = [\"cargo test\"]\nretry_on_fail = 2\n"
        ))
        .unwrap()
        .tools
        .unwrap();
        let p = &t.policy;
        assert_eq!(p.mode, Mode::WorkspaceWrite);
        assert_eq!(p.allow, ["cargo", "/usr/bin/"]);
        assert_eq!(p.timeout, Duration::from_secs(300));
        assert_eq!(p.output_cap, 256 << 10);
        assert!(!p.network && !p.accept_unconfined);
        assert_eq!(t.validate, ["cargo test"]);
        assert_eq!(t.retry_on_fail, 2);
        assert_eq!(
            err(&format!("{base}[tools]\nmode = \"yolo\"\n")),
            format!(
                "{FILE}:4: tools.mode: must be \"read-only\", \"workspace-write\" or \"full\", got \"yolo\""
            )
        );
        assert!(
            err(&format!("{base}[tools]\nallow = [\"bin/sh\"]\n")).starts_with(&format!(
                "{FILE}:4: tools.allow: `bin/sh` is not a program name"
            ))
        );
        assert!(
            err(&format!("{base}[tools]\nnetwork = \"yes\"\n"))
                .contains("tools.network: must be true or false")
        );
        assert!(err(&format!("{base}[tools]\nallowed = []\n")).contains("tools.allowed"));
    }

    #[test]
    fn a_minimal_agent_gets_every_default() {
        let repo = tempfile::tempdir().unwrap();
        let dir = agent(repo.path(), "echo", "[guests.echo]\nimage = \"echo\"\n");
        let a = load_agent(repo.path(), &dir).unwrap();
        assert_eq!(a.name, "echo");
        assert_eq!(a.display_name, "echo");
        assert_eq!(a.description, "");
        assert_eq!(a.isolation, Isolation::Shared);
        assert_eq!(a.queue_limit, 32);
        let g = &a.guests["echo"];
        assert_eq!(g.source, GuestSource::Image("echo".into()));
        assert_eq!(g.timeout, Duration::from_secs(300));
        assert_eq!(g.memory_mib, 256);
        assert!(g.allow_hosts.is_empty());
        assert_eq!(
            a.routing[&RouteKind::Default],
            Route {
                guest: "echo".into(),
                model: None
            }
        );
        assert!(a.budget.is_none());
        assert!(a.instructions.is_none());
        assert!(a.memory.is_dir(), "memory/ is created");
        assert!(a.dir.is_absolute());
    }

    #[test]
    fn a_full_agent_loads_every_field() {
        let a = load(
            r#"
description = "Reviews code"
isolation = "worktree"
queue_limit = 5

[guests.coder]
image = "local/coder.wasm"
timeout_secs = 60
memory_mib = 1024
allow_hosts = ["API.github.com", "localhost:8080", "[::1]:9000"]
model = "smart"
max_tokens = 4096

[guests.peer]
a2a = "https://peer.example:8443/a2a/x"
token_env = "PEER_TOKEN"

[routing]
default = "coder"
a2a = { guest = "peer", model = "local" }
heartbeat = "coder"
job = { guest = "coder" }
task = "peer"
trigger = "coder"
continuation = "coder"

[budget]
usd_per_day = 5
usd_per_month = 12.5
tokens_per_day = 0
tokens_per_month = 2_000_000
tokens_per_dispatch = 200000
on_exceeded = "degrade"
degrade_to = "local"
"#,
        )
        .unwrap();
        assert_eq!(a.description, "Reviews code");
        assert_eq!(a.isolation, Isolation::Worktree);
        assert_eq!(a.queue_limit, 5);
        let coder = &a.guests["coder"];
        let GuestSource::Image(path) = &coder.source else {
            panic!("an image")
        };
        assert!(Path::new(path).is_absolute() && path.ends_with("local/coder.wasm"));
        assert_eq!(
            coder.allow_hosts,
            ["api.github.com", "localhost:8080", "[::1]:9000"]
        );
        assert_eq!(coder.max_tokens, Some(4096));
        assert_eq!(
            a.guests["peer"].source,
            GuestSource::Peer {
                url: "https://peer.example:8443/a2a/x".into(),
                token_env: Some("PEER_TOKEN".into())
            }
        );
        assert_eq!(a.routing.len(), 7);
        let b = a.budget.unwrap();
        assert_eq!(b.scope, "agent echo");
        assert_eq!(b.usd_per_day, Some(5.0));
        assert_eq!(b.usd_per_month, Some(12.5));
        assert_eq!(b.tokens_per_day, Some(0));
        assert_eq!(b.tokens_per_month, Some(2_000_000));
        assert_eq!(b.on_exceeded, OnExceeded::Degrade);
        assert_eq!(b.degrade_to.as_deref(), Some("local"));
    }

    #[test]
    fn image_references_keep_their_shape() {
        let dir = Path::new("/agents/x");
        assert_eq!(resolve_image("echo", dir), "echo");
        assert_eq!(resolve_image("g.wat", dir), "/agents/x/g.wat");
        assert_eq!(resolve_image("/abs/g.wasm", dir), "/abs/g.wasm");
        assert_eq!(
            resolve_image("ghcr.io/acme/coder:1", dir),
            "ghcr.io/acme/coder:1"
        );
        assert_eq!(
            resolve_image("ghcr.io/acme/coder@sha256:abc", dir),
            "ghcr.io/acme/coder@sha256:abc"
        );
        // An existing relative file without the extension is a file.
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("bin")).unwrap();
        std::fs::write(tmp.path().join("bin/guest"), "").unwrap();
        let resolved = resolve_image("bin/guest", tmp.path());
        assert_eq!(Path::new(&resolved), tmp.path().join("bin/guest"));
    }

    /// Each class of mistake, with the line and field it names.
    #[test]
    fn every_error_names_its_line_and_field() {
        let cases: &[(&str, &str)] = &[
            // A syntax error, in toml's words.
            (
                "[guests.echo]\nimage = echo\n",
                ":2: string values must be quoted",
            ),
            // Unknown keys, at every level.
            (
                "colour = 1\n[guests.echo]\nimage = \"echo\"\n",
                ":1: colour: unknown key (expected description, isolation",
            ),
            (
                "[guests.echo]\nimage = \"echo\"\ntimeout = 3\n",
                ":3: guests.echo.timeout: unknown key",
            ),
            (
                "[guests.echo]\nimage = \"echo\"\n[routing]\ndefault = \"echo\"\ncron = \"echo\"\n",
                ":5: routing.cron: unknown key (expected default, a2a, heartbeat",
            ),
            (
                "[guests.echo]\nimage = \"echo\"\n[routing]\na2a = { guest = \"echo\", modle = \"x\" }\n",
                ":4: routing.a2a.modle: unknown key (expected guest, model)",
            ),
            (
                "[guests.echo]\nimage = \"echo\"\n\n[budget]\nusd_per_week = 1\n",
                ":5: budget.usd_per_week: unknown key",
            ),
            // Numbers out of range, negative, of the wrong type, unparsable.
            (
                "[guests.echo]\nimage = \"echo\"\n\n\n\n\ntimeout_secs = -3\n",
                ":7: guests.echo.timeout_secs: must be a whole number from 1 to 86400, got -3",
            ),
            (
                "[guests.echo]\nimage = \"echo\"\nmemory_mib = 8192\n",
                ":3: guests.echo.memory_mib: must be a whole number from 1 to 4096, got 8192",
            ),
            (
                "[guests.echo]\nimage = \"echo\"\nmemory_mib = 1.5\n",
                ":3: guests.echo.memory_mib: must be a whole number from 1 to 4096, got 1.5",
            ),
            (
                "queue_limit = \"32\"\n[guests.echo]\nimage = \"echo\"\n",
                ":1: queue_limit: must be a whole number from 1 to 10000, got \"32\"",
            ),
            (
                "queue_limit = 0\n[guests.echo]\nimage = \"echo\"\n",
                ":1: queue_limit: must be a whole number from 1 to 10000, got 0",
            ),
            (
                "[guests.echo]\nimage = \"echo\"\nmax_tokens = 99999999999999999999999999\n",
                ":3: guests.echo.max_tokens: must be a whole number ≥ 1, got 99999999999999999999999999",
            ),
            (
                "[guests.echo]\nimage = \"echo\"\n[budget]\nusd_per_day = -5\n",
                ":4: budget.usd_per_day: must be a number ≥ 0, got -5",
            ),
            (
                "[guests.echo]\nimage = \"echo\"\n[budget]\nusd_per_day = nan\n",
                ":4: budget.usd_per_day: must be a number ≥ 0, got nan",
            ),
            (
                "[guests.echo]\nimage = \"echo\"\n[budget]\ntokens_per_month = -1\n",
                ":4: budget.tokens_per_month: must be a whole number ≥ 0, got -1",
            ),
            // Enumerations.
            (
                "isolation = \"docker\"\n[guests.echo]\nimage = \"echo\"\n",
                ":1: isolation: must be \"shared\" or \"worktree\", got \"docker\"",
            ),
            (
                "[guests.echo]\nimage = \"echo\"\n[budget]\non_exceeded = \"panic\"\ndegrade_to = \"x\"\n",
                ":4: budget.on_exceeded: must be \"stop\", \"alert\" or \"degrade\", got \"panic\"",
            ),
            (
                "[guests.echo]\nimage = \"echo\"\n[budget]\nusd_per_day = 1\non_exceeded = \"degrade\"\n",
                ":5: budget.degrade_to: missing: on_exceeded = \"degrade\" needs",
            ),
            // Guests.
            ("description = \"x\"\n", ":1: guests: no guests"),
            ("[guests]\n", ":1: guests: no guests"),
            (
                "[guests.Echo]\nimage = \"echo\"\n",
                ":1: guests.Echo: `Echo` is not a valid guest name",
            ),
            (
                "[guests.echo]\nimage = \"echo\"\na2a = \"http://x\"\n",
                ":3: guests.echo.a2a: a guest has `image` or `a2a`, not both",
            ),
            (
                "\n[guests.echo]\ntimeout_secs = 5\n",
                ":2: guests.echo: needs `image`",
            ),
            (
                "[guests.echo]\nimage = \"\"\n",
                ":2: guests.echo.image: must be a bundled guest, a path or an image (no spaces), got \"\"",
            ),
            (
                "[guests.peer]\na2a = \"ftp://x\"\n",
                ":2: guests.peer.a2a: must be an http:// or https:// URL, got \"ftp://x\"",
            ),
            (
                "[guests.peer]\na2a = \"http://x\"\nmemory_mib = 5\n",
                ":3: guests.peer.memory_mib: only for `image` guests",
            ),
            (
                "[guests.peer]\na2a = \"http://x\"\ntoken_env = \"MY-TOKEN\"\n",
                ":3: guests.peer.token_env: must be an environment variable name",
            ),
            (
                "[guests.echo]\nimage = \"echo\"\ntoken_env = \"T\"\n",
                ":3: guests.echo.token_env: only for `a2a` guests",
            ),
            (
                "[guests.echo]\nimage = \"echo\"\nallow_hosts = [\"api.github.com\",\n  \"https://evil.com/x\"]\n",
                ":4: guests.echo.allow_hosts: `https://evil.com/x` is not a host or host:port",
            ),
            (
                "[guests.echo]\nimage = \"echo\"\nallow_hosts = \"api.github.com\"\n",
                ":3: guests.echo.allow_hosts: must be an array of hosts, got \"api.github.com\"",
            ),
            ("guests = 3\n", ":1: guests: must be a table, got 3"),
            // Routing.
            (
                "[guests.echo]\nimage = \"echo\"\n[routing]\na2a = \"nobody\"\n",
                ":4: routing.a2a: no guest `nobody` (guests: echo)",
            ),
            (
                "[guests.echo]\nimage = \"echo\"\n[routing]\njob = { guest = \"nobody\", model = \"x\" }\n",
                ":4: routing.job.guest: no guest `nobody` (guests: echo)",
            ),
            (
                "[guests.echo]\nimage = \"echo\"\n[routing]\ntask = { model = \"x\" }\n",
                ":4: routing.task.guest: missing",
            ),
            (
                "[guests.echo]\nimage = \"echo\"\n[routing]\ntask = 1\n",
                ":4: routing.task: must be a guest name or { guest = \"…\", model = \"…\" }, got 1",
            ),
            (
                "[guests.a]\nimage = \"echo\"\n[guests.b]\nimage = \"echo\"\n",
                ":1: routing.default: missing: with several guests (a, b)",
            ),
            (
                "[guests.a]\nimage = \"echo\"\n[guests.b]\nimage = \"echo\"\n\n[routing]\na2a = \"b\"\n",
                ":6: routing.default: missing",
            ),
        ];
        for (toml, want) in cases {
            let got = err(toml);
            assert!(
                got.starts_with(FILE) && got.contains(want),
                "for\n{toml}\nwant `{FILE}…{want}`\ngot  `{got}`"
            );
            assert!(!got.contains('\n'), "one line: {got}");
        }
    }

    #[test]
    fn the_exact_example_error() {
        let toml = "# c\n[guests.echo]\nimage = \"echo\"\n\n\n\ntimeout_secs = -3\n";
        assert_eq!(
            err(toml),
            ".cairn/agents/echo/agent.toml:7: guests.echo.timeout_secs: \
             must be a whole number from 1 to 86400, got -3"
        );
    }

    #[test]
    fn file_level_errors_name_the_file() {
        let repo = tempfile::tempdir().unwrap();
        let dir = agents_dir(repo.path()).join("empty");
        std::fs::create_dir_all(&dir).unwrap();
        let e = load_agent(repo.path(), &dir).unwrap_err().0;
        assert!(
            e.starts_with(".cairn/agents/empty/agent.toml: missing"),
            "{e}"
        );

        let dir = agent(repo.path(), "bin", "");
        std::fs::write(dir.join(AGENT_FILE), [0xff, 0xfe]).unwrap();
        let e = load_agent(repo.path(), &dir).unwrap_err().0;
        assert!(e.contains("agent.toml: not UTF-8"), "{e}");

        let dir = agent(repo.path(), "big", "[guests.echo]\nimage = \"echo\"\n");
        std::fs::write(dir.join(CARD_FILE), "x".repeat(70_000)).unwrap();
        let e = load_agent(repo.path(), &dir).unwrap_err().0;
        assert_eq!(e, ".cairn/agents/big/agent-card.md: larger than 64 KiB");

        let dir = agent(repo.path(), "mem", "[guests.echo]\nimage = \"echo\"\n");
        std::fs::write(dir.join(MEMORY_DIR), "").unwrap();
        let e = load_agent(repo.path(), &dir).unwrap_err().0;
        assert!(
            e.starts_with(".cairn/agents/mem/memory: not a directory"),
            "{e}"
        );
    }

    #[test]
    fn routing_precedence() {
        let a = load(
            r#"
[guests.echo]
image = "echo"
model = "own"
[guests.coder]
image = "coder.wasm"
[guests.peer]
a2a = "http://127.0.0.1:8080/a2a/echo"

[routing]
default = "echo"
a2a = { guest = "peer", model = "smart" }
job = "coder"
"#,
        )
        .unwrap();
        let kind = |s: &str| s.parse::<Kind>().unwrap();
        let pick = |k: &str, g: Option<&str>, m: Option<&str>| {
            a.route(&kind(k), g, m)
                .map(|(guest, model)| (guest.name.clone(), model))
        };
        let r = |g: &str, m: Option<&str>| Ok((g.to_string(), m.map(str::to_string)));

        // routing[kind], with the route's model.
        assert_eq!(pick("a2a", None, None), r("peer", Some("smart")));
        // routing[kind] by its prefix; no model anywhere.
        assert_eq!(pick("job:nightly", None, None), r("coder", None));
        // No route for the kind: routing.default, with the guest's own model.
        assert_eq!(pick("heartbeat", None, None), r("echo", Some("own")));
        assert_eq!(pick("task:x", None, None), r("echo", Some("own")));
        // The override beats the route; the route's model follows its guest only.
        assert_eq!(pick("a2a", Some("echo"), None), r("echo", Some("own")));
        assert_eq!(pick("a2a", Some("peer"), None), r("peer", Some("smart")));
        // The model override beats everything.
        assert_eq!(pick("a2a", None, Some("cheap")), r("peer", Some("cheap")));
        assert_eq!(
            pick("heartbeat", Some("coder"), Some("cheap")),
            r("coder", Some("cheap"))
        );
        // An unknown override is an error, not a panic.
        let e = pick("a2a", Some("nobody"), None).unwrap_err();
        assert!(
            e.contains("no guest `nobody` (guests: coder, echo, peer)"),
            "{e}"
        );
    }

    #[test]
    fn route_kinds_come_from_dispatch_kinds() {
        for (kind, want) in [
            ("a2a", RouteKind::A2a),
            ("heartbeat", RouteKind::Heartbeat),
            ("job:x", RouteKind::Job),
            ("task:x", RouteKind::Task),
            ("trigger:x", RouteKind::Trigger),
            ("continuation:x", RouteKind::Continuation),
        ] {
            let kind = kind.parse::<Kind>().unwrap();
            assert_eq!(RouteKind::from_kind(&kind), Some(want));
        }
        for k in RouteKind::ALL {
            assert_eq!(RouteKind::from_key(k.as_str()), Some(k));
        }
    }

    #[test]
    fn a_bad_agent_never_hides_a_good_one() {
        let repo = tempfile::tempdir().unwrap();
        agent(repo.path(), "good", "[guests.echo]\nimage = \"echo\"\n");
        agent(
            repo.path(),
            "bad",
            "[guests.echo]\nimage = \"echo\"\nx = 1\n",
        );
        agent(
            repo.path(),
            "Not_Valid",
            "[guests.echo]\nimage = \"echo\"\n",
        );
        std::fs::write(
            agents_dir(repo.path()).join("README.md"),
            "files are ignored",
        )
        .unwrap();
        let (agents, errors) = load_all(repo.path());
        assert_eq!(agents.keys().collect::<Vec<_>>(), ["good"]);
        let errors: Vec<String> = errors.into_iter().map(|e| e.0).collect();
        assert_eq!(
            errors,
            [
                ".cairn/agents/Not_Valid: `Not_Valid` is not a valid agent name: use 1 to 63 \
                 lowercase letters, digits, `-` and `_`, starting with a letter or digit",
                ".cairn/agents/bad/agent.toml:3: guests.echo.x: unknown key (expected image, \
                 a2a, token_env, timeout_secs, memory_mib, allow_hosts, model, max_tokens)",
            ]
        );
    }

    #[test]
    fn no_agents_directory_says_to_run_init() {
        let repo = tempfile::tempdir().unwrap();
        let (agents, errors) = load_all(repo.path());
        assert!(agents.is_empty());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].0.contains("run `cairn init`"), "{}", errors[0]);
    }

    #[test]
    fn the_card_gives_name_description_and_skills() {
        let card = parse_card(
            "<!-- a comment -->\n\
             # Code Reviewer #\n\
             \n\
             Reviews pull requests\n\
             line by line.\n\
             \n\
             Second paragraph.\n\
             \n\
             ## Skills\n\
             \n\
             - **review**: Reviews a diff.\n\
             - **Find Bugs:** Looks for bugs\n\
             \x20 across files.\n\
             * `summarize` — Summarizes.\n\
             - plain-id: Plain form.\n\
             - no description\n\
             \n\
             ```\n\
             # not a heading\n\
             - not: a skill\n\
             ```\n\
             ### Details\n\
             - nested: still a skill\n\
             ## Other\n\
             - other: not a skill\n\
             # Another title\n",
            "card.md",
        )
        .unwrap();
        assert_eq!(card.name.as_deref(), Some("Code Reviewer"));
        assert_eq!(
            card.description,
            "Reviews pull requests line by line.\n\nSecond paragraph."
        );
        let skills: Vec<(&str, &str, &str)> = card
            .skills
            .iter()
            .map(|s| (s.id.as_str(), s.name.as_str(), s.description.as_str()))
            .collect();
        assert_eq!(
            skills,
            [
                ("review", "Review", "Reviews a diff."),
                ("find-bugs", "Find Bugs", "Looks for bugs across files."),
                ("summarize", "Summarize", "Summarizes."),
                ("plain-id", "Plain id", "Plain form."),
                ("no-description", "no description", ""),
                ("nested", "Nested", "still a skill"),
            ]
        );
    }

    #[test]
    fn a_card_without_a_title_or_skills() {
        let card = parse_card("Just a description.\n\n## Notes\nignored\n", "c").unwrap();
        assert_eq!(card.name, None);
        assert_eq!(card.description, "Just a description.");
        assert!(card.skills.is_empty());
        assert_eq!(parse_card("", "c").unwrap(), Card::default());
        let e = parse_card("# X\n## Skills\n- a: 1\n- A: 2\n", "c.md").unwrap_err();
        assert_eq!(e.0, "c.md:4: skills: duplicate skill id `a`");
    }

    #[test]
    fn the_card_and_agent_toml_combine() {
        let repo = tempfile::tempdir().unwrap();
        let dir = agent(repo.path(), "rev", "[guests.echo]\nimage = \"echo\"\n");
        std::fs::write(dir.join(CARD_FILE), "# Reviewer\n\nFrom the card.\n").unwrap();
        std::fs::write(dir.join(INSTRUCTIONS_FILE), "Be brief.\n").unwrap();
        let a = load_agent(repo.path(), &dir).unwrap();
        assert_eq!(a.display_name, "Reviewer");
        assert_eq!(a.description, "From the card.");
        assert_eq!(a.instructions, Some(a.dir.join(INSTRUCTIONS_FILE)));

        std::fs::write(
            dir.join(AGENT_FILE),
            "description = \"From the toml.\"\n[guests.echo]\nimage = \"echo\"\n",
        )
        .unwrap();
        assert_eq!(
            load_agent(repo.path(), &dir).unwrap().description,
            "From the toml."
        );
    }

    #[test]
    fn the_fingerprint_follows_the_files() {
        let repo = tempfile::tempdir().unwrap();
        let dir = agent(repo.path(), "fp", "[guests.echo]\nimage = \"echo\"\n");
        let fp = || load_agent(repo.path(), &dir).unwrap().fingerprint;
        let first = fp();
        assert_eq!(fp(), first, "stable while nothing changes");

        std::fs::write(dir.join(CARD_FILE), "# FP\n").unwrap();
        let with_card = fp();
        assert_ne!(with_card, first);

        std::fs::write(dir.join(INSTRUCTIONS_FILE), "Be brief.\n").unwrap();
        let with_instructions = fp();
        assert_ne!(with_instructions, with_card);

        // Same length, different content.
        std::fs::write(dir.join(AGENT_FILE), "[guests.echo]\nimage = \"ecko\"\n").unwrap();
        assert_ne!(fp(), with_instructions);

        // The guest's memory is not configuration.
        let before = fp();
        std::fs::write(dir.join(MEMORY_DIR).join("notes.md"), "x").unwrap();
        assert_eq!(fp(), before);
    }

    #[test]
    fn hostile_input_never_panics() {
        for toml in [
            "\u{feff}[guests.echo]\nimage = \"echo\"\n",
            "[guests.\"\"]\nimage = \"echo\"\n",
            "[guests.echo]\nimage = \"echo\"\ntimeout_secs = 0x7fffffffffffffff\n",
            "[guests.echo]\nimage = \"echo\"\ntimeout_secs = 1979-05-27\n",
            "[[guests]]\nimage = \"echo\"\n",
            "[guests.echo]\nimage = [\"echo\"]\n",
            "[guests.peer]\na2a = \"http://\"\n",
            "[guests.peer]\na2a = \"http://[::1\"\n",
            "[guests.echo]\nimage = \"echo\"\nallow_hosts = [1, {}]\n",
            "[guests.echo]\nimage = \"echo\"\n[budget]\nusd_per_day = inf\n",
            "[guests.echo]\nimage = \"echo\"\n[routing]\ndefault = { guest = 1 }\n",
            "routing = 1\n[guests.echo]\nimage = \"echo\"\n",
            "budget = []\n[guests.echo]\nimage = \"echo\"\n",
            "a = \"\u{0}\"\n",
            "[",
            "=",
        ] {
            let _ = load(toml);
        }
        let deep = format!("a = {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        assert!(
            load(&deep)
                .unwrap_err()
                .contains(":1: cannot recurse further")
        );
        for card in [
            "#",
            "# ",
            "##Skills",
            "## Skills\n-",
            "## Skills\n- **",
            "## Skills\n- **:**",
            "## Skills\n- ``: x",
            "```",
            "\u{feff}# x",
            "## Skills\n  continuation first",
        ] {
            let _ = parse_card(card, "c");
        }
    }
}
