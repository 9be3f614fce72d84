//! `cairn run <guest> [PROMPT | -]`: one dispatch on one guest, its reply on
//! stdout, the guest's stderr in the log, and an exit code that says how it
//! went (see [`crate::error::exit`]).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::value_parser;

use crate::commands::Global;
use crate::data_dir::DataDir;
use crate::dispatch::{Dispatch, Kind};
use crate::error::Failure;
use crate::guest_ref::{GuestRef, io_reason};
use crate::image::{self, ImageRef, Images, PullPolicy, Resolved};
use crate::invoke::{self, Marks};
use crate::sandbox::Outbound;
use crate::sandbox::{DefaultLimits, GuestSource, Limits, Sandbox, SandboxConfig};
use crate::sidecar::{Config, Sidecar};
use crate::timeline::{RollbackPolicy, Timeline};

/// The largest prompt read from stdin with `-`.
const MAX_STDIN_PROMPT: u64 = 16 << 20;

#[derive(clap::Args)]
#[command(
    after_help = "Exit codes: 0 success, 1 internal error, 2 bad arguments or workspace, \
3 guest could not be loaded, 4 guest trapped, 5 guest exited non-zero, 6 deadline exceeded, \
7 memory cap exceeded, 8 output cap exceeded"
)]
pub struct RunCommand {
    /// The guest: a .wasm or .wat file, a bundled guest's name (echo), or an image (registry/repo:tag, registry/repo@sha256:…)
    pub guest: String,
    /// The prompt; `-` reads it from stdin
    pub prompt: Option<String>,
    /// Directory the guest sees read-write at /workspace [default: a new empty temporary directory]
    #[arg(long, short, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Wall-clock deadline of the dispatch, in seconds
    #[arg(long, value_name = "SECS", default_value_t = DefaultLimits::bundled().timeout_secs, value_parser = value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
    /// Cap on the guest's linear memory, in MiB
    #[arg(long, value_name = "MIB", default_value_t = DefaultLimits::bundled().memory_mib, value_parser = value_parser!(u64).range(1..=4096))]
    pub memory: u64,
    /// Why the dispatch happens: a2a, heartbeat, job:NAME, task:NAME, trigger:NAME, continuation:NAME
    #[arg(long, default_value = "a2a")]
    pub kind: Kind,
    /// The model the dispatch asks for (a model alias of the sidecar)
    #[arg(long, value_name = "ALIAS")]
    pub model: Option<String>,
    /// The session the dispatch continues [default: a new one]
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// Print the whole outcome (dispatch, events, reply, status) as JSON
    #[arg(long)]
    pub json: bool,
    /// For an image reference: when to ask the registry
    #[arg(long, value_enum, default_value_t = PullPolicy::Missing)]
    pub pull: PullPolicy,
    /// Allow plain HTTP to the image's registry (always allowed for localhost)
    #[arg(long)]
    pub insecure: bool,
    /// The sidecar's configuration: with it the guest reaches models at OPENAI_BASE_URL, as agent `cli`
    #[arg(long, env = "CAIRN_SIDECAR_CONFIG", value_name = "FILE")]
    pub sidecar: Option<PathBuf>,
}

impl RunCommand {
    pub fn execute(self, global: &Global) -> Result<(), Failure> {
        // Everything a user can get wrong is checked before a guest is loaded.
        let workspace = Workspace::open(self.workspace.as_deref())?;
        let data = DataDir::resolve(global.data_dir.as_deref())?;
        data.check_outside(workspace.path())
            .map_err(|e| Failure::Usage(format!("{e:#}")))?;
        let prompt = self.read_prompt()?;
        let sidecar_config = match &self.sidecar {
            Some(path) => Some(Config::load(path).map_err(|e| Failure::Usage(e.to_string()))?),
            None => None,
        };
        let guest_ref = GuestRef::parse(&self.guest).map_err(Failure::Usage)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                Failure::Internal(anyhow::Error::from(e).context("starting the runtime"))
            })?;
        let (source, image) = match &guest_ref {
            GuestRef::Image(r) => {
                let opts = image::Options {
                    insecure: self.insecure,
                };
                let (source, resolved) =
                    runtime.block_on(image_source(&data, r, self.pull, opts))?;
                (source, Some(resolved))
            }
            other => (other.source().map_err(Failure::Usage)?, None),
        };

        let sandbox = Sandbox::new(&SandboxConfig {
            code_dir: data.code(),
            slots: 1,
        })?;
        let guest = sandbox.load(&source)?;
        let limits = Limits {
            deadline: Duration::from_secs(self.timeout),
            memory_bytes: (self.memory as usize) << 20,
            ..Limits::default()
        };
        let mut dispatch = Dispatch::new(AGENT, self.kind, prompt, self.session);
        dispatch.model = self.model;
        // Every dispatch goes through the timeline: recorded at its start,
        // a step at every model call, rolled back if the guest fails.
        let mut timeline = Timeline::open(&data, workspace.path(), true)?;
        let active = timeline.begin(&dispatch.id, &guest.origin, dispatch.kind.as_str())?;
        let marks = Marks::new(timeline, active);
        let sidecar = match sidecar_config {
            Some(config) => Some(Sidecar::start(config, &data.store())?),
            None => None,
        };
        let outbound = Arc::new(outbound(sidecar.as_ref(), &dispatch, marks.clone()));
        let outcome = runtime.block_on(invoke::dispatch_with(
            &sandbox,
            &guest,
            dispatch,
            workspace.path(),
            limits,
            outbound,
            invoke::Extra::default(),
        ));
        if let Some(s) = &sidecar {
            s.flush();
        }
        let (mut timeline, active) = marks
            .take()
            .ok_or_else(|| Failure::Internal(anyhow::anyhow!("the timeline was lost")))?;
        let outcome = outcome?;
        tracing::debug!(dispatch = %outcome.dispatch.id, elapsed = ?outcome.elapsed, "dispatch ended");
        let verdict = outcome
            .result
            .as_ref()
            .map(|_| ())
            .map_err(|f| f.to_string());
        let undone = timeline.end(active, verdict, RollbackPolicy::Dispatch)?;
        for w in &undone.warnings {
            tracing::warn!("{w}");
        }

        let mut stdout = std::io::stdout().lock();
        let printed = if self.json {
            let status = match &outcome.result {
                Ok(()) => serde_json::json!({ "ok": true }),
                Err(f) => serde_json::json!({ "ok": false, "error": f.to_string() }),
            };
            let json = serde_json::json!({
                "dispatch": outcome.dispatch,
                "guest": { "origin": guest.origin, "sha256": guest.sha256, "shape": format!("{:?}", guest.shape).to_lowercase() },
                "image": image.as_ref().map(|i| serde_json::json!({
                    "reference": i.image.reference(),
                    "digest": i.image.digest,
                    "layer": i.image.layer,
                    "from_cache": i.from_cache,
                    "transferred": i.transferred,
                })),
                "status": status,
                "reply": outcome.reply,
                "elapsed_ms": outcome.elapsed.as_secs_f64() * 1e3,
                "rolled_back": undone.step.map(|step| serde_json::json!({ "step": step, "paths": undone.paths })),
            });
            writeln!(stdout, "{json}")
        } else if outcome.result.is_ok() {
            writeln!(stdout, "{}", outcome.reply.text)
        } else {
            Ok(())
        };
        // A closed stdout (`cairn run … | head -0`) is the reader's choice.
        let _ = printed.and_then(|()| stdout.flush());
        outcome.result.map_err(|failure| Failure::Guest {
            guest: guest.origin.clone(),
            failure,
            then: match undone.step {
                Some(step) if undone.paths > 0 => format!(
                    "; rolled back {} path(s) (dispatch {}, step {step})",
                    undone.paths, outcome.dispatch.id
                ),
                _ => format!("; it changed nothing (dispatch {})", outcome.dispatch.id),
            },
        })
    }

    fn read_prompt(&self) -> Result<String, Failure> {
        match self.prompt.as_deref() {
            None => Ok(String::new()),
            Some("-") => {
                let mut prompt = String::new();
                std::io::stdin()
                    .take(MAX_STDIN_PROMPT + 1)
                    .read_to_string(&mut prompt)
                    .map_err(|e| Failure::Usage(format!("reading the prompt from stdin: {e}")))?;
                if prompt.len() as u64 > MAX_STDIN_PROMPT {
                    return Err(Failure::Usage(format!(
                        "the prompt on stdin is larger than {} MiB",
                        MAX_STDIN_PROMPT >> 20
                    )));
                }
                Ok(prompt)
            }
            Some(text) => Ok(text.to_string()),
        }
    }
}

/// An image's guest: from the cache, or pulled now. Says on stderr which,
/// and the digest the reference resolved to (which the dispatch records as
/// its guest's origin).
async fn image_source(
    data: &DataDir,
    r: &ImageRef,
    policy: PullPolicy,
    opts: image::Options,
) -> Result<(GuestSource<'static>, Resolved), Failure> {
    let mut images = Images::open(data)?;
    let resolved = images.resolve(r, policy, opts).await?;
    let bytes = images.load(r, &resolved.image)?;
    let digest = &resolved.image.digest;
    match (&resolved.fallback, resolved.from_cache) {
        (Some(why), _) => eprintln!("cairn: {r}: {why}; using the cached {digest}"),
        (None, true) => eprintln!("cairn: {r} is {digest} (from the cache)"),
        (None, false) => eprintln!("cairn: pulled {r} ({digest})"),
    }
    let name = r
        .repository
        .rsplit('/')
        .next()
        .unwrap_or("guest")
        .to_string();
    let source = GuestSource {
        name,
        origin: format!(
            "{}@{digest}",
            ImageRef {
                digest: None,
                ..r.clone()
            }
        ),
        bytes: std::borrow::Cow::Owned(bytes),
        path: None,
        // Checked against the layer's digest as it was read.
        sha256: Some(
            resolved
                .image
                .layer
                .trim_start_matches("sha256:")
                .to_string(),
        ),
    };
    Ok((source, resolved))
}

/// The agent `cairn run` dispatches as: its budgets, key and allowed
/// hosts are `[budgets.agents.cli]` and `[agents.cli]` in the sidecar's
/// configuration.
const AGENT: &str = "cli";

/// What the guest may reach: the sidecar (when configured), bound to this
/// dispatch, and the hosts `[agents.cli]` allows.
fn outbound(sidecar: Option<&Arc<Sidecar>>, dispatch: &Dispatch, marks: Arc<Marks>) -> Outbound {
    let (allow_hosts, allow_entry) = match sidecar {
        Some(s) => (
            s.config
                .agents
                .get(AGENT)
                .map(|a| a.allow_hosts.clone())
                .unwrap_or_default(),
            format!("allow_hosts of [agents.{AGENT}] in {}", s.config.origin),
        ),
        None => (
            Vec::new(),
            "a sidecar configuration (cairn run --sidecar FILE, [agents.cli] allow_hosts)".into(),
        ),
    };
    invoke::outbound(sidecar, AGENT, dispatch, marks, allow_hosts, allow_entry)
}

/// The directory a run works on: the one given, checked, or a temporary one
/// removed when the run ends.
enum Workspace {
    Given(PathBuf),
    Temporary(tempfile::TempDir),
}

impl Workspace {
    fn open(given: Option<&std::path::Path>) -> Result<Self, Failure> {
        let Some(dir) = given else {
            let tmp = tempfile::Builder::new()
                .prefix("cairn-workspace-")
                .tempdir()
                .map_err(|e| {
                    Failure::Internal(
                        anyhow::Error::from(e).context("creating a temporary workspace"),
                    )
                })?;
            return Ok(Workspace::Temporary(tmp));
        };
        let bad = |why: String| Failure::Usage(format!("workspace {}: {why}", dir.display()));
        let meta = std::fs::metadata(dir).map_err(|e| bad(io_reason(&e)))?;
        if !meta.is_dir() {
            return Err(bad("not a directory".into()));
        }
        std::fs::read_dir(dir).map_err(|e| bad(format!("cannot be read ({})", io_reason(&e))))?;
        let dir = dir.canonicalize().map_err(|e| bad(io_reason(&e)))?;
        Ok(Workspace::Given(dir))
    }

    fn path(&self) -> &std::path::Path {
        match self {
            Workspace::Given(p) => p,
            Workspace::Temporary(t) => t.path(),
        }
    }
}
