//! `cairn init`: a `.cairn/` directory with one working agent, `echo`,
//! whose files document every field as commented examples, so the format is
//! learned from the files themselves rather than from a manual.
//!
//! Examples are written `#key = value` (no space after `#`), prose
//! `# text`: removing the `#` of the examples gives a valid file.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::config::{AGENT_FILE, CARD_FILE, INSTRUCTIONS_FILE, MEMORY_DIR, agents_dir};

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
";

/// `cairn init`: writes `.cairn/` into `repo` with the example agent `echo`,
/// a commented `sidecar.toml` and a README. Refuses, writing nothing, when
/// `.cairn/agents/echo` exists; never overwrites an existing sidecar.toml or
/// README. Returns the paths written.
pub fn scaffold(repo: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let cairn = repo.join(".cairn");
    let agents = agents_dir(repo);
    let echo = agents.join(EXAMPLE_AGENT);
    if echo.symlink_metadata().is_ok() {
        bail!(
            "{} already exists; nothing written (remove it to start over)",
            echo.display()
        );
    }
    let memory = echo.join(MEMORY_DIR);
    // Directories made here, so a failure halfway takes them back.
    let mut created: Vec<PathBuf> = [&cairn, &agents, &echo, &memory]
        .into_iter()
        .filter(|d| d.symlink_metadata().is_err())
        .cloned()
        .collect();
    let mut written = Vec::new();
    let result = write_all(&cairn, &echo, &memory, &mut written);
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
    cairn: &Path,
    echo: &Path,
    memory: &Path,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(memory)
        .with_context(|| format!("cannot create {}", memory.display()))?;
    let files = [
        (echo.join(AGENT_FILE), AGENT_TOML, true),
        (echo.join(CARD_FILE), AGENT_CARD, true),
        (echo.join(INSTRUCTIONS_FILE), INSTRUCTIONS, true),
        (memory.join(".gitkeep"), "", true),
        (cairn.join("sidecar.toml"), SIDECAR_TOML, false),
        (cairn.join("README.md"), README, false),
    ];
    for (path, text, required) in files {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path);
        let mut file = match file {
            Ok(f) => f,
            // The user's own sidecar.toml or README stays.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && !required => continue,
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
        let written = scaffold(repo.path()).unwrap();
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
        scaffold(repo.path()).unwrap();
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
        scaffold(repo.path()).unwrap();
        let readme = repo.path().join(".cairn/README.md");
        std::fs::write(&readme, "mine").unwrap();
        let e = scaffold(repo.path()).unwrap_err().to_string();
        assert!(e.contains("already exists; nothing written"), "{e}");
        assert_eq!(std::fs::read_to_string(&readme).unwrap(), "mine");

        // Without the echo agent, init writes it and leaves the user's files.
        std::fs::remove_dir_all(agents_dir(repo.path()).join("echo")).unwrap();
        let written = scaffold(repo.path()).unwrap();
        assert_eq!(written.len(), 4);
        assert_eq!(std::fs::read_to_string(&readme).unwrap(), "mine");
    }

    #[test]
    fn init_creates_missing_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("a/b/repo");
        scaffold(&repo).unwrap();
        assert!(repo.join(".cairn/agents/echo/memory/.gitkeep").is_file());
    }
}
