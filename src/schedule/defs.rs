//! The definitions of an agent's autonomy, read from its directory: each a
//! markdown file with YAML frontmatter on top and the prompt as its body.
//!
//! | file | kind of its dispatches |
//! |---|---|
//! | `HEARTBEAT.md` | `heartbeat` |
//! | `jobs/<name>.md` | `job:<name>` |
//! | `tasks/<name>.md` | `task:<name>` |
//! | `triggers/<name>.md` | `trigger:<name>` |
//! | `continuations/<name>.md` | `continuation:<name>` |
//! | `webhooks/<name>.md` | (none: a delivery after a dispatch) |
//!
//! Every file is read on its own: an invalid one is reported with file,
//! line and field, and the others load. Unknown fields are warnings, so a
//! newer file still loads in an older cairn. The scheduler keeps the last
//! good version of a file whose edit is invalid.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::calendar::{Date, Days, TimeOfDay, Windows};
use super::cron::{Cron, Zone};
use super::frontmatter::{self, Doc, FmError};
use super::webhook::{self, Guard};

/// Fields every prompt file may have.
pub const COMMON: &[&str] = &[
    "name",
    "description",
    "enabled",
    "model",
    "agent",
    "guest",
    "session",
    "consensus",
    "max-tokens",
];

/// One guest pattern of a consensus, with an optional model.
#[derive(Clone, Debug, PartialEq)]
pub struct Voter {
    pub guest: String,
    pub model: Option<String>,
}

/// What every prompt file has.
#[derive(Clone, Debug, PartialEq)]
pub struct Common {
    /// The name in the dispatch kind (`job:<name>`): the `name` field, or
    /// the file's stem.
    pub name: String,
    pub description: Option<String>,
    pub enabled: bool,
    pub model: Option<String>,
    /// The guest that runs it, over the agent's routing.
    pub guest: Option<String>,
    /// A fixed session (A2A `contextId`); each dispatch has its own when
    /// absent (a task has one per day).
    pub session: Option<String>,
    pub consensus: Vec<Voter>,
    pub max_tokens: Option<u64>,
    /// The prompt.
    pub body: String,
    /// The file, as shown in messages (relative to the repository).
    pub file: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Heartbeat {
    pub common: Common,
    pub schedule: Cron,
    pub zone: Zone,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatchUp {
    /// Fires missed while cairn was down are skipped.
    None,
    /// If any was missed, one fire at start.
    Once,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub common: Common,
    /// None: run once when registered.
    pub schedule: Option<Cron>,
    pub zone: Zone,
    pub catch_up: CatchUp,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    pub common: Common,
    pub windows: Windows,
    /// Fire again after each run ends (`loop-gap` later) until the window
    /// closes or the reply says `done-when`.
    pub repeat: bool,
    pub gap: Duration,
    pub done_when: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Trigger {
    pub common: Common,
    /// `POST /triggers/<endpoint>`.
    pub endpoint: String,
    /// The environment variable holding the HMAC secret of
    /// `X-Hub-Signature-256`.
    pub secret_env: Option<String>,
    /// Request headers passed to the prompt (lowercase).
    pub headers: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Continuation {
    pub common: Common,
    /// Glob patterns over dispatch kinds (`job:*`, `a2a`); more than one
    /// means fan-in: all of them completed in the same session.
    pub after: Vec<String>,
    pub on_success: bool,
    pub on_error: bool,
    /// A phrase the upstream reply must contain.
    pub when: Option<String>,
    pub delay: Duration,
    pub max_concurrent: usize,
    /// How long a partial fan-in waits for the rest.
    pub ttl: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyWhen {
    Always,
    OnSuccess,
    OnError,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Url(String),
    /// The URL is the value of this environment variable, read at delivery.
    Env(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Webhook {
    pub name: String,
    pub description: Option<String>,
    pub enabled: bool,
    pub target: Target,
    pub when: NotifyWhen,
    pub kinds: Vec<String>,
    pub responses: Vec<String>,
    /// Header name and value template.
    pub headers: Vec<(String, String)>,
    /// The body template; empty: the default JSON envelope.
    pub body: String,
    pub secret_env: Option<String>,
    pub content_type: String,
    pub timeout: Duration,
    pub retries: u32,
    pub max_concurrent: usize,
    pub file: String,
}

/// Everything one agent directory defines.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Defs {
    pub heartbeat: Option<Heartbeat>,
    pub jobs: BTreeMap<String, Job>,
    pub tasks: BTreeMap<String, Task>,
    pub triggers: BTreeMap<String, Trigger>,
    pub continuations: BTreeMap<String, Continuation>,
    pub webhooks: BTreeMap<String, Webhook>,
}

/// What reading a directory gave: the definitions that are valid, one
/// error per invalid file (`file:line: field: why`), warnings, and the
/// files that were invalid (whose last good version the caller keeps).
#[derive(Debug, Default)]
pub struct Loaded {
    pub defs: Defs,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub invalid: Vec<String>,
}

/// `^[a-z0-9][a-z0-9-]*$`, up to 64: a name in a kind or a URL path.
pub fn valid_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// `*` any run of characters, `?` one; nothing else is special.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Reads every definition in `dir` (an agent's directory). `shown` is how
/// messages name the directory.
/// `guard` checks webhooks' literal URLs (scheme, credentials, private
/// addresses not allowed).
pub fn load(dir: &Path, shown: &str, guard: &Guard) -> Loaded {
    let mut out = Loaded::default();
    let heartbeat = dir.join("HEARTBEAT.md");
    if heartbeat.is_file() {
        let file = format!("{shown}/HEARTBEAT.md");
        match read(&heartbeat, &file).and_then(|doc| parse_heartbeat(&doc, &mut out.warnings)) {
            Ok(h) => out.defs.heartbeat = Some(h),
            Err(e) => out.fail(file, e),
        }
    }
    let mut defs = std::mem::take(&mut out.defs);
    load_kind(dir, shown, "jobs", &mut out, parse_job, |doc, j| {
        add(&mut defs.jobs, doc, j.common.name.clone(), j)
    });
    load_kind(dir, shown, "tasks", &mut out, parse_task, |doc, t| {
        add(&mut defs.tasks, doc, t.common.name.clone(), t)
    });
    load_kind(dir, shown, "triggers", &mut out, parse_trigger, |doc, t| {
        if let Some(other) = defs.triggers.values().find(|x| x.endpoint == t.endpoint) {
            return Err(doc.error(
                "endpoint",
                format!(
                    "`{}` is also the endpoint of {}",
                    t.endpoint, other.common.file
                ),
            ));
        }
        add(&mut defs.triggers, doc, t.common.name.clone(), t)
    });
    load_kind(
        dir,
        shown,
        "continuations",
        &mut out,
        parse_continuation,
        |doc, c| add(&mut defs.continuations, doc, c.common.name.clone(), c),
    );
    load_kind(dir, shown, "webhooks", &mut out, parse_webhook, |doc, h| {
        if let Target::Url(u) = &h.target {
            guard
                .check_url(u)
                .map_err(|why| doc.error("url", why.trim_start_matches("url: ")))?;
        }
        add(&mut defs.webhooks, doc, h.name.clone(), h)
    });
    out.defs = defs;
    out
}

impl Loaded {
    fn fail(&mut self, file: String, e: FmError) {
        self.errors.push(e.0);
        self.invalid.push(file);
    }
}

/// Reads `dir/<sub>/*.md` in name order, handing each valid one to `keep`.
fn load_kind<T>(
    dir: &Path,
    shown: &str,
    sub: &str,
    out: &mut Loaded,
    parse: fn(&Doc, &mut Vec<String>) -> Result<T, FmError>,
    mut keep: impl FnMut(&Doc, T) -> Result<(), FmError>,
) {
    let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
        return;
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md") && p.is_file())
        .collect();
    files.sort();
    for path in files {
        let file = format!(
            "{shown}/{sub}/{}",
            path.file_name().unwrap_or_default().to_string_lossy()
        );
        let result = read(&path, &file).and_then(|doc| {
            let item = parse(&doc, &mut out.warnings)?;
            keep(&doc, item)
        });
        if let Err(e) = result {
            out.fail(file, e);
        }
    }
}

/// Adds a definition under its name; a name defined twice is an error in
/// the second file.
fn add<T>(map: &mut BTreeMap<String, T>, doc: &Doc, name: String, item: T) -> Result<(), FmError> {
    if map.contains_key(&name) {
        return Err(doc.error(
            "name",
            format!("`{name}` is already defined by another file in this directory"),
        ));
    }
    map.insert(name, item);
    Ok(())
}

fn read(path: &Path, file: &str) -> Result<Doc, FmError> {
    let bytes = std::fs::read(path).map_err(|e| FmError(format!("{file}: cannot be read: {e}")))?;
    frontmatter::parse(file, &bytes)
}

/// The name: `name`, or the file's stem; it must be usable in a kind.
fn name(doc: &Doc) -> Result<String, FmError> {
    let stem = Path::new(&doc.path)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = doc.str("name")?.map(str::to_string).unwrap_or(stem);
    if !valid_name(&name) {
        return Err(doc.error(
            "name",
            format!(
                "`{name}` is not a valid name (lowercase letters, digits and `-`, starting with a letter or digit, at most 64)"
            ),
        ));
    }
    Ok(name)
}

fn common(doc: &Doc, name: String) -> Result<Common, FmError> {
    let mut consensus = Vec::new();
    if let Some(node) = doc.get("consensus") {
        let frontmatter::Value::List(items) = &node.value else {
            return Err(doc.error(
                "consensus",
                "must be a list of {guest: <glob>, model: <alias>}",
            ));
        };
        for item in items {
            let frontmatter::Value::Map(fields) = &item.value else {
                return Err(FmError(format!(
                    "{}:{}: consensus: each entry is a mapping with `guest` (a glob) and optional `model`",
                    doc.path, item.line
                )));
            };
            let text = |key: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, n)| match &n.value {
                        frontmatter::Value::Str(s) => Ok(s.clone()),
                        _ => Err(FmError(format!(
                            "{}:{}: consensus.{key}: must be a string",
                            doc.path, n.line
                        ))),
                    })
            };
            let guest = text("guest")
                .or_else(|| text("backend"))
                .transpose()?
                .ok_or_else(|| {
                    FmError(format!(
                        "{}:{}: consensus: an entry has no `guest`",
                        doc.path, item.line
                    ))
                })?;
            consensus.push(Voter {
                guest,
                model: text("model").transpose()?,
            });
        }
    }
    let max_tokens = doc.uint("max-tokens")?;
    if max_tokens == Some(0) {
        return Err(doc.error("max-tokens", "must be a positive whole number"));
    }
    let guest = match doc.str("agent")? {
        Some(g) => Some(g.to_string()),
        None => doc.str("guest")?.map(str::to_string),
    };
    Ok(Common {
        name,
        description: doc.str("description")?.map(str::to_string),
        enabled: doc.bool("enabled")?.unwrap_or(true),
        model: doc.str("model")?.map(str::to_string),
        guest,
        session: doc.str("session")?.map(str::to_string),
        consensus,
        max_tokens,
        body: doc.body.clone(),
        file: doc.path.clone(),
    })
}

fn warn_unknown(doc: &Doc, own: &[&str], warnings: &mut Vec<String>) {
    let known: Vec<&str> = COMMON.iter().chain(own).copied().collect();
    warnings.extend(doc.unknown(&known));
}

fn zone(doc: &Doc) -> Result<Zone, FmError> {
    match doc.str("timezone")? {
        Some(z) => Zone::parse(z).map_err(|why| doc.error("timezone", why)),
        None => Ok(Zone::utc()),
    }
}

fn cron(doc: &Doc, key: &str) -> Result<Option<Cron>, FmError> {
    doc.str(key)?
        .map(|s| Cron::parse(s).map_err(|why| doc.error(key, why)))
        .transpose()
}

fn non_empty_body(doc: &Doc, c: &Common) -> Result<(), FmError> {
    if c.body.trim().is_empty() {
        return Err(FmError(format!(
            "{}:{}: the prompt (the text after the frontmatter) is empty",
            doc.path, doc.body_line
        )));
    }
    Ok(())
}

pub fn parse_heartbeat(doc: &Doc, warnings: &mut Vec<String>) -> Result<Heartbeat, FmError> {
    warn_unknown(doc, &["schedule", "timezone"], warnings);
    let common = common(doc, "heartbeat".into())?;
    non_empty_body(doc, &common)?;
    let schedule = cron(doc, "schedule")?.ok_or_else(|| {
        doc.error(
            "schedule",
            "is required (a cron schedule, e.g. \"*/30 * * * *\")",
        )
    })?;
    Ok(Heartbeat {
        common,
        schedule,
        zone: zone(doc)?,
    })
}

pub fn parse_job(doc: &Doc, warnings: &mut Vec<String>) -> Result<Job, FmError> {
    warn_unknown(doc, &["schedule", "timezone", "catch-up"], warnings);
    let common = common(doc, name(doc)?)?;
    non_empty_body(doc, &common)?;
    let catch_up = match doc.str("catch-up")? {
        None | Some("none") => CatchUp::None,
        Some("once") => CatchUp::Once,
        Some(other) => {
            return Err(doc.error("catch-up", format!("`{other}`: expected none or once")));
        }
    };
    Ok(Job {
        common,
        schedule: cron(doc, "schedule")?,
        zone: zone(doc)?,
        catch_up,
    })
}

const DAY: Duration = Duration::from_secs(86_400);

pub fn parse_task(doc: &Doc, warnings: &mut Vec<String>) -> Result<Task, FmError> {
    warn_unknown(
        doc,
        &[
            "start",
            "end",
            "days",
            "timezone",
            "window-start",
            "window-duration",
            "loop",
            "loop-gap",
            "done-when",
        ],
        warnings,
    );
    let common = common(doc, name(doc)?)?;
    non_empty_body(doc, &common)?;
    let date = |key: &str| {
        doc.str(key)?
            .map(|s| Date::parse(s).map_err(|why| doc.error(key, why)))
            .transpose()
    };
    let (start, end) = (date("start")?, date("end")?);
    if let (Some(s), Some(e)) = (&start, &end)
        && e < s
    {
        return Err(doc.error("end", "is before start"));
    }
    let days = match doc.str("days")? {
        Some(d) => Days::parse(d).map_err(|why| doc.error("days", why))?,
        None => Days::all(),
    };
    let window_start = match doc.str("window-start")? {
        Some(t) => TimeOfDay::parse(t).map_err(|why| doc.error("window-start", why))?,
        None => TimeOfDay { hour: 0, minute: 0 },
    };
    let duration = doc.duration("window-duration")?;
    let repeat = doc.bool("loop")?.unwrap_or(false);
    if repeat && duration.is_none() {
        return Err(doc.error(
            "loop",
            "needs window-duration (a loop runs until its window closes)",
        ));
    }
    let duration = duration.unwrap_or(DAY);
    if duration.is_zero() || duration > DAY {
        return Err(doc.error(
            "window-duration",
            format!("{duration:?}: must be more than 0 and at most 24h"),
        ));
    }
    let gap = doc.duration("loop-gap")?.unwrap_or(Duration::from_secs(60));
    Ok(Task {
        common,
        windows: Windows {
            zone: zone(doc)?,
            days,
            start,
            end,
            window_start,
            duration_ms: duration.as_millis() as i64,
        },
        repeat,
        gap,
        done_when: doc.str("done-when")?.map(str::to_string),
    })
}

/// An environment variable's name, as `secret-env-var` and `url-env-var`
/// take it.
fn env_name(doc: &Doc, key: &str) -> Result<Option<String>, FmError> {
    let Some(v) = doc.str(key)? else {
        return Ok(None);
    };
    let ok = !v.is_empty()
        && !v.starts_with(|c: char| c.is_ascii_digit())
        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(doc.error(
            key,
            format!(
                "`{v}` is not an environment variable name (the secret itself never goes in a file)"
            ),
        ));
    }
    Ok(Some(v.to_string()))
}

pub fn parse_trigger(doc: &Doc, warnings: &mut Vec<String>) -> Result<Trigger, FmError> {
    warn_unknown(doc, &["endpoint", "secret-env-var", "headers"], warnings);
    let name = name(doc)?;
    let common = common(doc, name.clone())?;
    non_empty_body(doc, &common)?;
    let endpoint = doc.str("endpoint")?.map(str::to_string).unwrap_or(name);
    if !valid_name(&endpoint) {
        return Err(doc.error(
            "endpoint",
            format!("`{endpoint}` must match ^[a-z0-9][a-z0-9-]*$ (at most 64)"),
        ));
    }
    let headers = doc
        .str_list("headers")?
        .unwrap_or_default()
        .into_iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    Ok(Trigger {
        common,
        endpoint,
        secret_env: env_name(doc, "secret-env-var")?,
        headers,
    })
}

pub fn parse_continuation(doc: &Doc, warnings: &mut Vec<String>) -> Result<Continuation, FmError> {
    warn_unknown(
        doc,
        &[
            "continues-after",
            "on-success",
            "on-error",
            "trigger-when",
            "delay",
            "max-concurrent-fires",
            "ttl",
        ],
        warnings,
    );
    let name = name(doc)?;
    let common = common(doc, name.clone())?;
    non_empty_body(doc, &common)?;
    let after = doc.str_list("continues-after")?.unwrap_or_default();
    if after.is_empty() {
        return Err(doc.error(
            "continues-after",
            "is required: one or more patterns of dispatch kinds (e.g. job:nightly, trigger:*)",
        ));
    }
    let own = format!("continuation:{name}");
    if let Some(p) = after.iter().find(|p| glob(p, &own)) {
        return Err(doc.error(
            "continues-after",
            format!("`{p}` matches this continuation itself ({own}): it would fire itself forever"),
        ));
    }
    let max = doc.uint("max-concurrent-fires")?.unwrap_or(1);
    if max == 0 {
        return Err(doc.error("max-concurrent-fires", "must be at least 1"));
    }
    Ok(Continuation {
        common,
        after,
        on_success: doc.bool("on-success")?.unwrap_or(true),
        on_error: doc.bool("on-error")?.unwrap_or(false),
        when: doc.str("trigger-when")?.map(str::to_string),
        delay: doc.duration("delay")?.unwrap_or_default(),
        max_concurrent: max as usize,
        ttl: doc.duration("ttl")?.unwrap_or(Duration::from_secs(3600)),
    })
}

pub fn parse_webhook(doc: &Doc, warnings: &mut Vec<String>) -> Result<Webhook, FmError> {
    let own = [
        "name",
        "description",
        "enabled",
        "url",
        "url-env-var",
        "notify-when",
        "notify-on-kind",
        "notify-on-response",
        "headers",
        "secret-env-var",
        "content-type",
        "timeout",
        "retries",
        "max-concurrent-deliveries",
    ];
    warnings.extend(doc.unknown(&own));
    let name = name(doc)?;
    let target = match (doc.str("url")?, env_name(doc, "url-env-var")?) {
        (Some(_), Some(_)) => {
            return Err(doc.error("url-env-var", "give url or url-env-var, not both"));
        }
        (Some(url), None) => {
            if url.contains("{{") {
                return Err(doc.error(
                    "url",
                    "templates are not expanded in url (put a URL that varies in an environment variable and use url-env-var)",
                ));
            }
            Target::Url(url.to_string())
        }
        (None, Some(var)) => Target::Env(var),
        (None, None) => return Err(doc.error("url", "url or url-env-var is required")),
    };
    let when = match doc.str("notify-when")? {
        None | Some("on_success") => NotifyWhen::OnSuccess,
        Some("always") => NotifyWhen::Always,
        Some("on_error") => NotifyWhen::OnError,
        Some(other) => {
            return Err(doc.error(
                "notify-when",
                format!("`{other}`: expected always, on_success or on_error"),
            ));
        }
    };
    let mut headers = Vec::new();
    if let Some(node) = doc.get("headers") {
        let frontmatter::Value::Map(fields) = &node.value else {
            return Err(doc.error("headers", "must be a mapping of header name to value"));
        };
        for (k, v) in fields {
            let frontmatter::Value::Str(value) = &v.value else {
                return Err(FmError(format!(
                    "{}:{}: headers.{k}: must be a string",
                    doc.path, v.line
                )));
            };
            webhook::check_header(k, value)
                .and_then(|()| webhook::check_template(value))
                .map_err(|why| FmError(format!("{}:{}: headers.{k}: {why}", doc.path, v.line)))?;
            headers.push((k.clone(), value.clone()));
        }
    }
    let retries = doc.uint("retries")?.unwrap_or(3).min(20) as u32;
    let max = doc.uint("max-concurrent-deliveries")?.unwrap_or(4);
    if max == 0 {
        return Err(doc.error("max-concurrent-deliveries", "must be at least 1"));
    }
    let timeout = doc.duration("timeout")?.unwrap_or(Duration::from_secs(10));
    if timeout.is_zero() || timeout > Duration::from_secs(300) {
        return Err(doc.error("timeout", "must be more than 0 and at most 5m"));
    }
    let body = doc.body.trim().to_string();
    webhook::check_template(&body)
        .map_err(|why| FmError(format!("{}:{}: {why}", doc.path, doc.body_line)))?;
    Ok(Webhook {
        name,
        description: doc.str("description")?.map(str::to_string),
        enabled: doc.bool("enabled")?.unwrap_or(true),
        target,
        when,
        kinds: doc
            .str_list("notify-on-kind")?
            .unwrap_or_else(|| vec!["*".into()]),
        responses: doc
            .str_list("notify-on-response")?
            .unwrap_or_else(|| vec!["*".into()]),
        headers,
        body,
        secret_env: env_name(doc, "secret-env-var")?,
        content_type: doc
            .str("content-type")?
            .unwrap_or("application/json")
            .to_string(),
        timeout,
        retries,
        max_concurrent: max as usize,
        file: doc.path.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads an agent directory made of `files` (path, content).
    fn load_files(files: &[(&str, &[u8])]) -> Loaded {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        load(dir.path(), "a", &Guard::new(&[]))
    }

    fn error_of(path: &str, content: &str) -> String {
        let l = load_files(&[(path, content.as_bytes())]);
        assert_eq!(l.errors.len(), 1, "{l:?}");
        assert_eq!(l.invalid, [format!("a/{path}")]);
        l.errors[0].clone()
    }

    #[test]
    fn every_kind_loads_with_its_fields() {
        let l = load_files(&[
            (
                "HEARTBEAT.md",
                b"---\nschedule: \"*/30 * * * *\"\ntimezone: Europe/Paris\n---\nCheck in.\n",
            ),
            (
                "jobs/nightly.md",
                b"---\nschedule: \"0 3 * * *\"\ncatch-up: once\nmax-tokens: 4000\nconsensus:\n  - guest: \"main*\"\n    model: big\n---\nTidy up.\n",
            ),
            ("jobs/setup.md", b"Run once.\n"),
            (
                "tasks/standup.md",
                b"---\ndays: Mon-Fri\nwindow-start: \"22:00\"\nwindow-duration: 4h\nloop: true\nloop-gap: 10m\ndone-when: ALL DONE\n---\nWork the queue.\n",
            ),
            (
                "triggers/deploy.md",
                b"---\nsecret-env-var: DEPLOY_SECRET\nheaders: [X-GitHub-Event]\n---\nA deploy happened.\n",
            ),
            (
                "continuations/review.md",
                b"---\ncontinues-after: [\"trigger:deploy\", \"job:*\"]\ntrigger-when: shipped\ndelay: 30s\n---\nReview it.\n",
            ),
            (
                "webhooks/notify.md",
                b"---\nurl: https://hooks.example.com/x\nnotify-when: always\nnotify-on-kind: [\"job:*\"]\nheaders:\n  X-Team: \"{{agent}}\"\n---\n{\"text\": \"{{reply_preview}}\"}\n",
            ),
        ]);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        let d = &l.defs;
        assert_eq!(d.heartbeat.as_ref().unwrap().zone.name(), "Europe/Paris");
        let nightly = &d.jobs["nightly"];
        assert_eq!(nightly.catch_up, CatchUp::Once);
        assert_eq!(nightly.common.max_tokens, Some(4000));
        assert_eq!(nightly.common.consensus[0].model.as_deref(), Some("big"));
        assert!(d.jobs["setup"].schedule.is_none());
        let t = &d.tasks["standup"];
        assert!(t.repeat);
        assert_eq!(t.windows.duration_ms, 4 * 3_600_000);
        assert_eq!(d.triggers["deploy"].endpoint, "deploy");
        assert_eq!(d.triggers["deploy"].headers, ["x-github-event"]);
        assert_eq!(d.continuations["review"].after.len(), 2);
        assert_eq!(d.webhooks["notify"].when, NotifyWhen::Always);
    }

    #[test]
    fn bad_files_are_refused_with_file_line_and_field() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "jobs/x.md",
                "---\nschedule: \"61 * * * *\"\n---\nx\n",
                "a/jobs/x.md:2: schedule: minute field `61`",
            ),
            (
                "jobs/x.md",
                "---\nschedule: \"0 9 * * *\"\ntimezone: Mars/Base\n---\nx\n",
                "a/jobs/x.md:3: timezone: unknown time zone `Mars/Base`",
            ),
            (
                "tasks/x.md",
                "---\nwindow-duration: 25h\n---\nx\n",
                "a/tasks/x.md:2: window-duration:",
            ),
            (
                "tasks/x.md",
                "---\nloop: true\n---\nx\n",
                "a/tasks/x.md:2: loop: needs window-duration",
            ),
            (
                "jobs/x.md",
                "---\n- a\n- b\n---\nx\n",
                "a/jobs/x.md:2: frontmatter must be a mapping",
            ),
            (
                "continuations/x.md",
                "---\ncontinues-after: \"continuation:*\"\n---\nx\n",
                "a/continuations/x.md:2: continues-after: `continuation:*` matches this continuation itself",
            ),
            (
                "webhooks/x.md",
                "---\nurl: http://127.0.0.1:9/hook\n---\n",
                "a/webhooks/x.md:2: url: 127.0.0.1",
            ),
            (
                "webhooks/x.md",
                "---\nurl: http://169.254.169.254/latest/meta-data\n---\n",
                "a/webhooks/x.md:2: url: 169.254.169.254",
            ),
            (
                "webhooks/x.md",
                "---\nurl: \"https://{{env.HOST}}/x\"\n---\n",
                "a/webhooks/x.md:2: url: templates are not expanded",
            ),
            (
                "triggers/x.md",
                "---\nendpoint: Bad_Name\n---\nx\n",
                "a/triggers/x.md:2: endpoint: `Bad_Name` must match",
            ),
            (
                "jobs/x.md",
                "---\nmax-tokens: 0\n---\nx\n",
                "a/jobs/x.md:2: max-tokens: must be a positive whole number",
            ),
        ];
        for (path, content, expected) in cases {
            let e = error_of(path, content);
            assert!(e.starts_with(expected), "{e}\n  expected: {expected}");
        }
        let l = load_files(&[("jobs/x.md", b"---\nname: x\n---\n\xff\xfe\n")]);
        assert!(
            l.errors[0].starts_with("a/jobs/x.md: not UTF-8"),
            "{:?}",
            l.errors
        );
    }

    #[test]
    fn unknown_fields_are_warned_not_fatal() {
        let l = load_files(&[(
            "jobs/x.md",
            b"---\nschedule: \"0 9 * * *\"\nshedule: typo\n---\nx\n",
        )]);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert_eq!(l.defs.jobs.len(), 1);
        assert!(l.warnings[0].contains("shedule"), "{:?}", l.warnings);
    }

    #[test]
    fn one_bad_file_does_not_stop_the_others() {
        let l = load_files(&[
            ("jobs/a.md", b"---\nschedule: nope\n---\nx\n"),
            ("jobs/b.md", b"---\nschedule: \"0 9 * * *\"\n---\nx\n"),
        ]);
        assert_eq!(l.errors.len(), 1);
        assert!(l.defs.jobs.contains_key("b"));
        assert_eq!(l.invalid, ["a/jobs/a.md"]);
    }

    #[test]
    fn globs_match_kinds() {
        assert!(glob("job:*", "job:nightly"));
        assert!(glob("*", "anything"));
        assert!(glob("trigger:de?loy", "trigger:deploy"));
        assert!(!glob("job:*", "task:x"));
        assert!(glob("*shipped*", "we shipped it"));
        assert!(!glob("a", "ab"));
    }
}
