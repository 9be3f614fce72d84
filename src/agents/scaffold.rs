//! `cairn init`: a `.cairn/` directory with one working agent, `echo`,
//! whose files document every field as commented examples, so the format is
//! learned from the files themselves rather than from a manual; and, when a
//! model is configured ([`super::setup`]), the `coder` agent running the
//! bundled coding guest, reachable by A2A and by a trigger.
//!
//! Examples are written `#key = value` (no space after `#`), prose
//! `# text`: removing the `#` of the examples gives a valid file.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::config::{AGENT_FILE, CARD_FILE, INSTRUCTIONS_FILE, MEMORY_DIR, agents_dir};
use super::setup::Choice;

/// The example agent's name.
pub const EXAMPLE_AGENT: &str = "echo";

/// `.cairn/agents/echo/agent.toml`: runs the bundled `echo` guest (no model,
/// no key needed); everything else is commented.
pub const AGENT_TOML: &str = r#"# The echo agent. It runs the `echo` guest bundled into cairn, which replies
# with the prompt and the kind of dispatch: it works without a model or an API
# key, so you can watch dispatches flow before wiring up anything else.
#
# Lines like `#key = value` are examples: remove the `#` to use one. Every key
# an agent.toml accepts is shown; any other key is refused with its line.

# Shown to other agents as this agent's description (overrides the paragraph
# under the title in agent-card.md).
#description = "Replies with what it was sent"

# Where dispatches run. "shared" (the default) runs them in the repository
# itself, one at a time. "worktree" gives each dispatch its own git worktree
# and branch, so several can run at once without stepping on each other.
#isolation = "worktree"

# How many dispatches may wait for this agent's workspace (1 to 10000);
# more are refused until the queue drains.
#queue_limit = 32

# A guest is a WASI program that handles dispatches. `image` is a guest
# bundled into cairn (`echo`), a .wasm/.wat file (relative to this directory),
# or an OCI image reference (registry/repo:tag or registry/repo@sha256:…).
[guests.echo]
image = "echo"
# Seconds one dispatch may run (1 to 86400).
timeout_secs = 300
# The guest's memory limit in MiB (1 to 4096).
memory_mib = 256
# Outside hosts the guest may reach over HTTP, as "host" (any port) or
# "host:port"; none by default. Models are reached through the sidecar.
#allow_hosts = ["api.github.com"]
# The model alias (see .cairn/sidecar.toml) the guest uses unless a route or
# the dispatch names another, and the most tokens one answer may use.
#model = "smart"
#max_tokens = 4096

# A second guest, here from an OCI image, that works on the code.
#[guests.coder]
#image = "ghcr.io/acme/coder:1"
#timeout_secs = 1800
#memory_mib = 1024
#allow_hosts = ["api.github.com", "registry.npmjs.org:443"]
#model = "smart"
#max_tokens = 8192

# A peer A2A agent, dispatched to like a local guest.
#[guests.reviewer]
#a2a = "http://127.0.0.1:8080/a2a/reviewer"
#token_env = "REVIEWER_TOKEN"   # the variable holding the peer's bearer token
#timeout_secs = 600

# Which guest handles each kind of dispatch. A route is a guest's name, or
# { guest = "…", model = "…" } to also pick its model. Kinds without a route
# go to `default`; with a single guest and no [routing], it takes everything.
#[routing]
#default = "echo"
#a2a = { guest = "reviewer" }
#heartbeat = "echo"
#job = { guest = "coder", model = "smart" }
#task = "coder"
#trigger = { guest = "coder", model = "local" }
#continuation = "coder"

# This agent's model budget, enforced by the sidecar (numbers ≥ 0).
#[budget]
#usd_per_day = 5
#usd_per_month = 100
#tokens_per_day = 500000
#tokens_per_month = 2000000
#tokens_per_dispatch = 200000
#on_exceeded = "degrade"   # "stop" refuses, "alert" logs and allows, "degrade" switches model
#degrade_to = "local"      # the model alias used once over budget (needed by "degrade")

# Commands the host may run for this agent's guests (the `run` tool), each
# confined (writes only in the workspace and a private temp dir, no network)
# and recorded as a step. Without [tools], guests run nothing.
#[tools]
#mode = "workspace-write"      # or "read-only", "full"
#allow = ["cargo", "git"]      # program names on PATH, or absolute path prefixes
#timeout_secs = 300
#output_kib = 256              # kept of stdout and of stderr each
#network = false
#accept_unconfined = false     # refuse to run where no confinement is available
#validate = ["cargo test"]     # after a dispatch that changed files; failing rolls it back
#retry_on_fail = 0             # or feed the failure back to the guest up to N times
"#;

/// `.cairn/agents/echo/agent-card.md`.
pub const AGENT_CARD: &str = "# Echo

Replies with the prompt it was sent and the kind of dispatch that carried it.
A first agent to try cairn with: it needs no model and no API key.

## Skills

- **echo**: Replies with the prompt it was sent, unchanged.
- **dispatch-kind**: Says which kind of dispatch it received (a2a, heartbeat,
  job, task, trigger or continuation).
";

/// `.cairn/agents/echo/instructions.md`.
pub const INSTRUCTIONS: &str = "# Instructions

Standing instructions for this agent's guests, given with every dispatch.
The bundled echo guest ignores them; a model-backed guest follows them.

- Keep replies short and say what you changed.
- Work on a branch; never push to main.
- Write what you learn about this repository to `memory/`.
";

/// `.cairn/sidecar.toml`, entirely commented: with no providers, guests run
/// without models (as echo does).
pub const SIDECAR_TOML: &str = r#"# The sidecar: the gateway through which every guest reaches its models. It
# holds the API keys (guests never see them), retries, falls back, and
# enforces budgets. Everything here is commented out: remove the `#` of the
# examples you want.

# Providers: where models are served. kind = "openai" is any server speaking
# OpenAI's chat completions; "anthropic" is Anthropic's Messages API. Keys are
# read from the variable named by api_key_env.
#[providers.openai]
#kind = "openai"
#base_url = "https://api.openai.com/v1"
#api_key_env = "OPENAI_API_KEY"

#[providers.anthropic]
#kind = "anthropic"
#base_url = "https://api.anthropic.com/v1"
#api_key_env = "ANTHROPIC_API_KEY"

# A local Ollama, no key needed.
#[providers.ollama]
#kind = "openai"
#base_url = "http://127.0.0.1:11434/v1"

# Models: the aliases guests and routes ask for. `fallbacks` are tried in
# order when a model keeps failing.
#[models.smart]
#provider = "anthropic"
#model = "claude-sonnet-4-5"
#fallbacks = ["local"]

#[models.local]
#provider = "ollama"
#model = "qwen2.5-coder:7b"

# Prices in dollars per million tokens, for dollar budgets.
#[prices."claude-sonnet-4-5"]
#input = 3.0
#output = 15.0

# A budget over all agents; each agent can add its own in its agent.toml.
#[budgets.global]
#usd_per_month = 50
#on_exceeded = "degrade"
#degrade_to = "local"
"#;

/// `.cairn/README.md`.
pub const README: &str = "# .cairn

This directory defines the AI agents cairn runs on this repository.

- `agents/<name>/` is one agent:
  - `agent.toml`: its guests (the WASI programs or A2A peers that do the
    work), which guest handles each kind of dispatch, where dispatches run
    (in the repository or in a worktree each), and its model budget.
  - `agent-card.md`: its name, description and skills, shown to other agents.
  - `instructions.md`: standing instructions for its guests.
  - `memory/`: the agent's own files, kept between dispatches.
  - What it does on its own, each a markdown file (YAML frontmatter, then
    the prompt): `HEARTBEAT.md` (a cron schedule), `jobs/*.md` (cron
    schedules, or once), `tasks/*.md` (daily windows), `triggers/*.md`
    (`POST /triggers/<endpoint>`, signed), `continuations/*.md` (after
    other dispatches) and `webhooks/*.md` (notifications after
    dispatches). cairn's `examples/scheduled-agent` has one of each;
    `cairn validate` checks them.
- `sidecar.toml`: the model providers, model aliases, prices and global
  budget; guests reach models only through the sidecar.

`agents/echo` works as is, with no model. Copy it to start a new agent; its
agent.toml shows every setting as a commented example. A mistake in any file
is reported with its file, line and field.

`agents/coder`, written when `cairn init` found a model (an API key in the
environment, a local Ollama, or models in `sidecar.toml`), runs cairn's
bundled coding agent: ask it by A2A (`/a2a/coder`) or by its trigger
(`POST /triggers/coder`); `cairn log` and `cairn diff --dispatch ID` show
each of its steps, `cairn rollback` undoes any of them.
";

/// The coder agent's name.
pub const CODER_AGENT: &str = "coder";

/// `.cairn/agents/coder/agent-card.md`.
pub const CODER_CARD: &str = "# Coder

Changes this repository's code on request: reads it, edits it, runs its
tests through cairn's tool broker, and says what it changed. Every tool call
is a step of cairn's timeline, so any of it can be looked at and undone.

## Skills

- **change-code**: Fixes a bug or makes a change described in plain words,
  then runs the tests.
- **explain-code**: Answers questions about the code, citing files and lines.
";

/// `.cairn/agents/coder/instructions.md`.
pub const CODER_INSTRUCTIONS: &str = "# Instructions

Standing instructions for the coder, given with every dispatch (after the
repository's `AGENTS.md`, when there is one).

- Read the code before changing it; make the smallest change that does what
  was asked, in the style of the code around it.
- Run the tests after a change, and say in your summary whether they pass.
- Leave files unrelated to the request alone.
- Write what you learn about this repository with `remember`.
";

/// `.cairn/agents/coder/triggers/change.md`: `POST /triggers/coder`.
pub const CODER_TRIGGER: &str = "---
description: a change request (POST /triggers/coder, the request as the body), authorised by the invoke token or an X-Hub-Signature-256 made with the secret in $CODER_TRIGGER_SECRET
endpoint: coder
secret-env-var: CODER_TRIGGER_SECRET
---
A change was requested through the `coder` trigger. Make it, run the tests,
and finish with a summary of what you changed.
";

/// The programs a repository's files say it is built and tested with, and
/// its test command: the coder's `[tools] allow` and suggested `validate`.
fn toolchain(repo: &Path) -> (Vec<&'static str>, Option<&'static str>) {
    let has = |f: &str| repo.join(f).exists();
    let mut allow = Vec::new();
    let mut test = None;
    let mut add = |programs: &[&'static str], command: &'static str| {
        allow.extend_from_slice(programs);
        test.get_or_insert(command);
    };
    if has("Cargo.toml") {
        add(&["cargo"], "cargo test");
    }
    if has("package.json") {
        add(&["npm", "npx", "node"], "npm test");
    }
    if has("pyproject.toml") || has("setup.py") || has("requirements.txt") {
        add(&["python3", "pytest"], "python3 -m pytest");
    }
    if has("go.mod") {
        add(&["go"], "go test ./...");
    }
    if has("Makefile") {
        add(&["make"], "make test");
    }
    allow.push("git");
    (allow, test)
}

/// `.cairn/agents/coder/agent.toml` for `model`, with `repo`'s toolchain.
pub fn coder_toml(repo: &Path, model: &Choice) -> String {
    let (allow, test) = toolchain(repo);
    let allow: Vec<String> = allow.iter().map(|p| format!("\"{p}\"")).collect();
    let validate = match test {
        Some(t) => format!(
            "# After a dispatch that changed files, these run; a failure rolls the\n\
             # dispatch back, or (retry_on_fail) is fed back to the coder to fix.\n\
             #validate = [\"{t}\"]\n#retry_on_fail = 1\n"
        ),
        None => "# After a dispatch that changed files, these run; a failure rolls the\n\
                 # dispatch back, or (retry_on_fail) is fed back to the coder to fix.\n\
                 #validate = [\"make test\"]\n#retry_on_fail = 1\n"
            .to_string(),
    };
    let budget = match model {
        Choice::New(p) if p.paid() => {
            let usd = if p.price.is_some() {
                "usd_per_day = 10\n"
            } else {
                ""
            };
            format!(
                "\n# What the coder may spend on its model: calls past it are refused.\n\
                 [budget]\ntokens_per_day = 2000000\n{usd}on_exceeded = \"stop\"\n"
            )
        }
        _ => "\n# What the coder may spend on its model (see echo's agent.toml).\n\
              #[budget]\n#tokens_per_day = 2000000\n#on_exceeded = \"stop\"\n"
            .to_string(),
    };
    format!(
        r#"# The coder agent: cairn's bundled coding agent. It reads and edits the
# repository's files, runs what [tools] allows through cairn's tool broker
# (confined: writes only in the repository and a private temp dir, no
# network), and finishes with a summary. Each model call and each tool call
# is a step of the timeline: `cairn log`, `cairn diff --dispatch ID` and
# `cairn rollback` show and undo any of it.
#
# Reach it by A2A (/a2a/coder) or by its trigger (POST /triggers/coder).
# Its model: {described}.

description = "Changes the code on request: fixes bugs, makes changes, runs the tests"

# Dispatches run in the repository itself, one at a time. "worktree" runs
# each on a branch of its own instead, committed with the coder's summary.
#isolation = "worktree"

[guests.coder]
image = "coder"
model = "{alias}"
timeout_secs = 1800
memory_mib = 1024
#max_tokens = 8192

[tools]
mode = "workspace-write"
allow = [{allow}]
timeout_secs = 600
# Commands get no network; a build that fetches dependencies needs it.
#network = true
{validate}{budget}"#,
        described = model.describe(),
        alias = model.alias(),
        allow = allow.join(", "),
    )
}

/// How one scaffolded file is written.
#[derive(Clone, Copy, PartialEq)]
enum Policy {
    /// Part of a new agent: created, never over an existing file.
    New,
    /// The user's once written (README): left as it is.
    Keep,
    /// `sidecar.toml` declaring a model: written unless the file defines
    /// something (absent or only comments is replaced).
    UnlessDefined,
}

/// `cairn init`: writes `.cairn/` into `repo`: the example agent `echo`
/// unless it exists, and with `coder` (a model for it) the coder agent
/// unless it exists; a `sidecar.toml` (declaring the coder's provider when
/// it is a new one, else commented) and a README, never over the user's
/// own. Refuses, writing nothing, when there is no agent to add. A failure
/// halfway takes back what it wrote. Returns the paths written.
pub fn scaffold(repo: &Path, coder: Option<&Choice>) -> anyhow::Result<Vec<PathBuf>> {
    let cairn = repo.join(".cairn");
    let agents = agents_dir(repo);
    let echo = agents.join(EXAMPLE_AGENT);
    let coder_dir = agents.join(CODER_AGENT);
    let echo_new = echo.symlink_metadata().is_err();
    let coder = coder.filter(|_| coder_dir.symlink_metadata().is_err());
    if !echo_new && coder.is_none() {
        bail!(
            "{} already exists; nothing written (remove it to start over)",
            echo.display()
        );
    }
    let mut dirs: Vec<PathBuf> = vec![cairn.clone(), agents.clone()];
    let mut files: Vec<(PathBuf, String, Policy)> = Vec::new();
    if echo_new {
        let memory = echo.join(MEMORY_DIR);
        dirs.extend([echo.clone(), memory.clone()]);
        files.extend([
            (echo.join(AGENT_FILE), AGENT_TOML.to_string(), Policy::New),
            (echo.join(CARD_FILE), AGENT_CARD.to_string(), Policy::New),
            (
                echo.join(INSTRUCTIONS_FILE),
                INSTRUCTIONS.to_string(),
                Policy::New,
            ),
            (memory.join(".gitkeep"), String::new(), Policy::New),
        ]);
    }
    let mut sidecar = (SIDECAR_TOML.to_string(), Policy::Keep);
    if let Some(model) = coder {
        let memory = coder_dir.join(MEMORY_DIR);
        let triggers = coder_dir.join("triggers");
        dirs.extend([coder_dir.clone(), memory.clone(), triggers.clone()]);
        files.extend([
            (
                coder_dir.join(AGENT_FILE),
                coder_toml(repo, model),
                Policy::New,
            ),
            (
                coder_dir.join(CARD_FILE),
                CODER_CARD.to_string(),
                Policy::New,
            ),
            (
                coder_dir.join(INSTRUCTIONS_FILE),
                CODER_INSTRUCTIONS.to_string(),
                Policy::New,
            ),
            (memory.join(".gitkeep"), String::new(), Policy::New),
            (
                triggers.join("change.md"),
                CODER_TRIGGER.to_string(),
                Policy::New,
            ),
        ]);
        if let Choice::New(p) = model {
            sidecar = (
                super::setup::sidecar_toml(p, SIDECAR_TOML),
                Policy::UnlessDefined,
            );
        }
    }
    files.push((cairn.join("sidecar.toml"), sidecar.0, sidecar.1));
    files.push((cairn.join("README.md"), README.to_string(), Policy::Keep));

    // Directories made here, so a failure halfway takes them back.
    let mut created: Vec<PathBuf> = dirs
        .into_iter()
        .filter(|d| d.symlink_metadata().is_err())
        .collect();
    let mut written = Vec::new();
    let result = write_all(repo, &created, &files, &mut written);
    if result.is_err() {
        for path in written.iter().rev() {
            let _ = std::fs::remove_file(path);
        }
        created.reverse();
        for dir in &created {
            let _ = std::fs::remove_dir(dir);
        }
    }
    result.map(|()| written)
}

fn write_all(
    repo: &Path,
    dirs: &[PathBuf],
    files: &[(PathBuf, String, Policy)],
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    for dir in dirs {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    for (path, text, policy) in files {
        let replace = *policy == Policy::UnlessDefined && super::setup::sidecar_is_blank(repo);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(!replace)
            .create(replace)
            .truncate(replace)
            .open(path);
        let mut file = match file {
            Ok(f) => f,
            // The user's own sidecar.toml or README stays.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && *policy != Policy::New => {
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
        };
        written.push(path.clone());
        file.write_all(text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::config::{GuestSource, Isolation, RouteKind, load_all};
    use crate::dispatch::Kind;
    use crate::sidecar::config::OnExceeded;

    /// Removes the `#` of every example line (`#key`, `#[table]`), leaving
    /// prose comments, as a user trying the examples would.
    fn uncomment(text: &str) -> String {
        text.lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '[') => {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_scaffolded_agent_loads_as_written() {
        let repo = tempfile::tempdir().unwrap();
        let written = scaffold(repo.path(), None).unwrap();
        let rel: Vec<_> = written
            .iter()
            .map(|p| p.strip_prefix(repo.path()).unwrap().to_str().unwrap())
            .collect();
        assert_eq!(
            rel,
            [
                ".cairn/agents/echo/agent.toml",
                ".cairn/agents/echo/agent-card.md",
                ".cairn/agents/echo/instructions.md",
                ".cairn/agents/echo/memory/.gitkeep",
                ".cairn/sidecar.toml",
                ".cairn/README.md",
            ]
        );

        let (agents, errors) = load_all(repo.path());
        assert!(errors.is_empty(), "{errors:?}");
        let echo = &agents["echo"];
        assert_eq!(echo.display_name, "Echo");
        assert!(echo.description.starts_with("Replies with the prompt"));
        let ids: Vec<_> = echo.skills.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["echo", "dispatch-kind"]);
        assert!(
            echo.skills[1]
                .description
                .ends_with("trigger or continuation).")
        );
        assert_eq!(echo.isolation, Isolation::Shared);
        assert_eq!(
            echo.guests["echo"].source,
            GuestSource::Image("echo".into())
        );
        assert!(echo.budget.is_none());
        assert!(echo.instructions.is_some());
        let (guest, model) = echo.route(&Kind::a2a(), None, None).unwrap();
        assert_eq!((guest.name.as_str(), model), ("echo", None));
    }

    /// Every commented example is valid: uncommented, the agent uses them all.
    #[test]
    fn the_commented_examples_are_valid() {
        let repo = tempfile::tempdir().unwrap();
        scaffold(repo.path(), None).unwrap();
        let toml = agents_dir(repo.path()).join("echo").join(AGENT_FILE);
        std::fs::write(&toml, uncomment(AGENT_TOML)).unwrap();
        let (agents, errors) = load_all(repo.path());
        assert!(errors.is_empty(), "{errors:?}");
        let echo = &agents["echo"];
        assert_eq!(echo.isolation, Isolation::Worktree);
        assert_eq!(echo.description, "Replies with what it was sent");
        assert_eq!(echo.guests.len(), 3);
        assert!(matches!(
            echo.guests["reviewer"].source,
            GuestSource::Peer { .. }
        ));
        assert_eq!(echo.routing.len(), RouteKind::ALL.len());
        let budget = echo.budget.as_ref().unwrap();
        assert_eq!(budget.on_exceeded, OnExceeded::Degrade);
        assert_eq!(budget.degrade_to.as_deref(), Some("local"));
    }

    #[test]
    fn the_sidecar_example_is_commented_and_valid_uncommented() {
        let as_is: toml::Table = toml::from_str(SIDECAR_TOML).unwrap();
        assert!(as_is.is_empty(), "fully commented out");
        let all: toml::Table = toml::from_str(&uncomment(SIDECAR_TOML)).unwrap();
        let keys: Vec<_> = all.keys().map(String::as_str).collect();
        assert_eq!(keys, ["budgets", "models", "prices", "providers"]);
        assert_eq!(
            all["providers"]["ollama"]["base_url"].as_str(),
            Some("http://127.0.0.1:11434/v1")
        );
        assert_eq!(
            all["models"]["smart"]["fallbacks"][0].as_str(),
            Some("local")
        );
        assert_eq!(
            all["budgets"]["global"]["degrade_to"].as_str(),
            Some("local")
        );
    }

    #[test]
    fn init_refuses_over_an_existing_agent_and_keeps_user_files() {
        let repo = tempfile::tempdir().unwrap();
        scaffold(repo.path(), None).unwrap();
        let readme = repo.path().join(".cairn/README.md");
        std::fs::write(&readme, "mine").unwrap();
        let e = scaffold(repo.path(), None).unwrap_err().to_string();
        assert!(e.contains("already exists; nothing written"), "{e}");
        assert_eq!(std::fs::read_to_string(&readme).unwrap(), "mine");

        // Without the echo agent, init writes it and leaves the user's files.
        std::fs::remove_dir_all(agents_dir(repo.path()).join("echo")).unwrap();
        let written = scaffold(repo.path(), None).unwrap();
        assert_eq!(written.len(), 4);
        assert_eq!(std::fs::read_to_string(&readme).unwrap(), "mine");
    }

    fn anthropic() -> Choice {
        let env = |name: &str| (name == "ANTHROPIC_API_KEY").then(|| "k".to_string());
        crate::agents::setup::choose(&Default::default(), &[], &env, &|_| None)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn with_a_model_the_coder_agent_is_written_and_loads_with_its_trigger() {
        let repo = tempfile::tempdir().unwrap();
        std::fs::write(repo.path().join("Cargo.toml"), "").unwrap();
        std::fs::write(repo.path().join("Makefile"), "").unwrap();
        let model = anthropic();
        let written = scaffold(repo.path(), Some(&model)).unwrap();
        let rel: Vec<_> = written
            .iter()
            .map(|p| p.strip_prefix(repo.path()).unwrap().to_str().unwrap())
            .collect();
        assert!(
            rel.contains(&".cairn/agents/coder/triggers/change.md"),
            "{rel:?}"
        );
        assert!(rel.contains(&".cairn/agents/echo/agent.toml"), "{rel:?}");

        let (agents, errors) = load_all(repo.path());
        assert!(errors.is_empty(), "{errors:?}");
        let coder = &agents["coder"];
        assert_eq!(coder.display_name, "Coder");
        assert_eq!(
            coder.guests["coder"].source,
            GuestSource::Image("coder".into())
        );
        assert_eq!(coder.guests["coder"].model.as_deref(), Some("smart"));
        let tools = coder.tools.as_ref().unwrap();
        assert_eq!(tools.policy.allow, ["cargo", "make", "git"]);
        assert!(!tools.policy.network);
        assert!(tools.validate.is_empty(), "validation is suggested, not on");
        let budget = coder.budget.as_ref().unwrap();
        assert_eq!(budget.on_exceeded, OnExceeded::Stop);

        // The trigger and every prompt file are valid, and the sidecar
        // declares the model the coder names.
        let report = crate::schedule::validate(repo.path(), &[]);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert!(
            report.summary.contains("1 trigger(s)"),
            "{}",
            report.summary
        );
        let sidecar = crate::sidecar::config::Config::parse(
            &std::fs::read_to_string(repo.path().join(".cairn/sidecar.toml")).unwrap(),
            "sidecar.toml",
            &|_| Some("k".into()),
        )
        .unwrap();
        assert!(sidecar.models.contains_key("smart"));

        // Uncommenting the coder's examples gives a valid agent too.
        let toml = agents_dir(repo.path()).join("coder").join(AGENT_FILE);
        let text = std::fs::read_to_string(&toml).unwrap();
        std::fs::write(&toml, uncomment(&text)).unwrap();
        let (agents, errors) = load_all(repo.path());
        assert!(errors.is_empty(), "{errors:?}");
        let tools = agents["coder"].tools.clone().unwrap();
        assert_eq!(tools.validate, ["cargo test"]);
        assert_eq!(agents["coder"].isolation, Isolation::Worktree);
    }

    #[test]
    fn a_second_init_adds_the_coder_and_replaces_only_a_blank_sidecar() {
        let repo = tempfile::tempdir().unwrap();
        scaffold(repo.path(), None).unwrap();
        let sidecar = repo.path().join(".cairn/sidecar.toml");
        assert!(crate::agents::setup::sidecar_is_blank(repo.path()));
        // Echo exists: with a model, the coder is still added, and the
        // commented sidecar.toml replaced by one declaring the model.
        let written = scaffold(repo.path(), Some(&anthropic())).unwrap();
        assert!(written.contains(&sidecar), "{written:?}");
        assert!(
            std::fs::read_to_string(&sidecar)
                .unwrap()
                .contains("[models.smart]")
        );
        // Both exist: nothing to do.
        let e = scaffold(repo.path(), Some(&anthropic()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("already exists; nothing written"), "{e}");

        // A sidecar.toml that defines something is the user's: kept.
        let repo = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(repo.path().join(".cairn")).unwrap();
        let mine = "[models.mine]\nprovider = \"p\"\nmodel = \"m\"\n";
        std::fs::write(repo.path().join(".cairn/sidecar.toml"), mine).unwrap();
        let written = scaffold(repo.path(), Some(&anthropic())).unwrap();
        assert!(!written.iter().any(|p| p.ends_with("sidecar.toml")));
        assert_eq!(
            std::fs::read_to_string(repo.path().join(".cairn/sidecar.toml")).unwrap(),
            mine
        );
    }

    #[test]
    fn init_creates_missing_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("a/b/repo");
        scaffold(&repo, None).unwrap();
        assert!(repo.join(".cairn/agents/echo/memory/.gitkeep").is_file());
    }
}
