//! The harness: the agents as loaded, their prepared guests, and the work
//! queue. Every dispatch it accepts is a task row in the store before the
//! caller hears of it; dispatches on the shared workspace (the repository
//! itself) run one at a time in arrival order; `isolation = "worktree"`
//! gives each dispatch its own git worktree and branch, in parallel.
//!
//! A task's life: `submitted` (in the store and the queue) → `working`
//! (its dispatch is on the timeline) → `completed` | `failed` |
//! `canceled`. A failed or canceled dispatch is rolled back. After a crash,
//! `submitted` tasks run again and `working` ones were rolled back by the
//! timeline's recovery and are marked failed, interrupted.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Map, Value};
use tokio::sync::{Notify, oneshot};

use super::consensus;
use super::events::{Event, Events};
use super::metrics::Metrics;
use crate::a2a::client::{Peer, send as send_to_peer};
use crate::agents::config::{self as agent_config, AgentConfig, GuestSource, Isolation};
use crate::broker::{self, BROKER_HOST, Broker, confine};
use crate::data_dir::DataDir;
use crate::dispatch::{Dispatch, Kind};
use crate::guest_ref::GuestRef;
use crate::image::{self, Images, PullPolicy};
use crate::invoke::{self, Extra, Marks};
use crate::sandbox::{DefaultLimits, Guest, Limits, Sandbox};
use crate::sidecar::Sidecar;
use crate::sidecar::config::Budget;
use crate::store::Store;
use crate::store::tasks::TaskRow;
use crate::timeline::{Conflict, RollbackPolicy, Target, Timeline, Undone};

/// One agent as the harness runs it: its config and prepared guests.
pub struct Agent {
    pub config: AgentConfig,
    guests: HashMap<String, Prepared>,
    /// Guests that could not be prepared, one line each: the agent is
    /// unhealthy, dispatches routed to them fail at once.
    pub problems: Vec<String>,
    /// `<data>/agents/<name>`: what the guest sees read-only at `/agent`.
    mount: PathBuf,
}

enum Prepared {
    Local(Arc<Guest>),
    Peer(Peer),
}

impl Prepared {
    fn origin(&self) -> String {
        match self {
            Prepared::Local(g) => g.origin.clone(),
            Prepared::Peer(p) => format!("a2a:{}", p.url),
        }
    }
}

/// Why a dispatch was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("no agent `{0}`")]
    UnknownAgent(String),
    #[error("agent `{agent}` is unhealthy: {why}")]
    Unhealthy { agent: String, why: String },
    #[error("{0}")]
    Invalid(String),
    #[error(
        "agent `{agent}` is busy: {queued} dispatch(es) already wait for its workspace (queue_limit {limit}); retry in {retry_after} s"
    )]
    Busy {
        agent: String,
        queued: usize,
        limit: usize,
        retry_after: u64,
    },
    #[error("cairn is shutting down; retry in {0} s")]
    Stopping(u64),
    #[error("{0}")]
    Internal(String),
}

/// What a caller asks for.
pub struct Request {
    pub agent: String,
    pub kind: Kind,
    pub prompt: String,
    /// The session (A2A `contextId`); a new one when absent.
    pub session: Option<String>,
    pub message_id: Option<String>,
    pub metadata: Map<String, Value>,
    /// A prompt file's choices, over the agent's routing: the guest, the
    /// model, and a cap on the dispatch's tokens through the sidecar.
    pub guest: Option<String>,
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
}

/// The metadata key that carries a prompt file's guest to the dispatch.
const GUEST_KEY: &str = "cairn.guest";
/// The metadata key of a prompt file's consensus: `[{"guest", "model"}]`.
pub const CONSENSUS_KEY: &str = "cairn.consensus";

/// The consensus a dispatch asks for: guest patterns and models.
fn consensus_voters(dispatch: &Dispatch) -> Vec<(String, Option<String>)> {
    dispatch
        .metadata
        .get(CONSENSUS_KEY)
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|v| {
                    let guest = v["guest"].as_str()?.to_string();
                    Some((guest, v["model"].as_str().map(str::to_string)))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A rollback asked of the daemon (`POST /admin/rollback`): the
/// repository's worker runs it between dispatches.
struct RollbackJob {
    target: Target,
    force: bool,
    reply: oneshot::Sender<Result<Undone>>,
}

/// Why a rollback was not done.
#[derive(Debug, thiserror::Error)]
pub enum RollbackRefused {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Elsewhere(String),
    #[error(transparent)]
    Conflict(Conflict),
    #[error("cairn is stopping")]
    Stopping,
    #[error("{0}")]
    Failed(String),
}

/// The budgets the agents define, by agent, for the sidecar.
pub fn budgets<'a>(configs: impl Iterator<Item = &'a AgentConfig>) -> BTreeMap<String, Budget> {
    configs
        .filter_map(|c| Some((c.name.clone(), c.budget.clone()?)))
        .collect()
}

pub struct Harness {
    pub repo: PathBuf,
    data: DataDir,
    store: Mutex<Store>,
    sandbox: Sandbox,
    sidecar: Arc<Sidecar>,
    agents: RwLock<Arc<BTreeMap<String, Arc<Agent>>>>,
    /// The last reload that was refused, until one is accepted.
    pub config_error: Mutex<Option<String>>,
    pub events: Events,
    pub metrics: Metrics,
    /// Task ids waiting for the shared workspace, in arrival order.
    queue: Mutex<VecDeque<(String, String)>>,
    /// Rollbacks waiting for the shared workspace; they go first.
    rollbacks: Mutex<VecDeque<RollbackJob>>,
    wake: Notify,
    /// Worktree dispatches accepted and not yet ended, per agent.
    pending_worktree: Mutex<HashMap<String, usize>>,
    /// Cancellation of the dispatches running now.
    cancels: Mutex<HashMap<String, Arc<Notify>>>,
    running: AtomicUsize,
    /// Whether a dispatch runs in the repository itself now.
    shared_busy: AtomicBool,
    ended: Notify,
    stopping: AtomicBool,
    /// Whether every agent's guests were prepared at least once.
    pub ready: AtomicBool,
    became_ready: Notify,
    client: reqwest::Client,
    limits: &'static DefaultLimits,
    /// What confinement commands run through the broker get here.
    tool_support: Arc<confine::Support>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Harness {
    pub fn new(
        repo: PathBuf,
        data: DataDir,
        sandbox: Sandbox,
        sidecar: Arc<Sidecar>,
        configs: BTreeMap<String, AgentConfig>,
    ) -> Result<Arc<Harness>> {
        let store = Store::open(&data.store())?;
        let agents = configs
            .into_iter()
            .map(|(name, config)| {
                let mount = data.root().join("agents").join(&name);
                let agent = Agent {
                    config,
                    guests: HashMap::new(),
                    problems: vec!["its guests are being prepared".into()],
                    mount,
                };
                (name, Arc::new(agent))
            })
            .collect();
        let client = crate::web::client_builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("building the A2A client")?;
        Ok(Arc::new(Harness {
            repo,
            data,
            store: Mutex::new(store),
            sandbox,
            sidecar,
            agents: RwLock::new(Arc::new(agents)),
            config_error: Mutex::new(None),
            events: Events::default(),
            metrics: Metrics::default(),
            queue: Mutex::new(VecDeque::new()),
            rollbacks: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            pending_worktree: Mutex::new(HashMap::new()),
            cancels: Mutex::new(HashMap::new()),
            running: AtomicUsize::new(0),
            shared_busy: AtomicBool::new(false),
            ended: Notify::new(),
            stopping: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            became_ready: Notify::new(),
            client,
            limits: DefaultLimits::bundled(),
            tool_support: Arc::new(confine::Support::detect()),
        }))
    }

    pub fn agents(&self) -> Arc<BTreeMap<String, Arc<Agent>>> {
        self.agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        lock(&self.store)
    }

    /// Whether a dispatch is changing the repository now (a reload waits:
    /// a failed dispatch's edits are about to be rolled back).
    pub fn shared_busy(&self) -> bool {
        self.shared_busy.load(Ordering::SeqCst)
    }

    pub fn sidecar(&self) -> &Arc<Sidecar> {
        &self.sidecar
    }

    /// Opens the shared workspace (finishing what a stopped cairn left),
    /// settles the tasks a crash interrupted, queues the ones that never
    /// started, and starts the worker.
    pub fn start(self: &Arc<Self>) -> Result<()> {
        let timeline = Timeline::open(&self.data, &self.repo, true)
            .with_context(|| format!("opening workspace {}", self.repo.display()))?;
        crate::timeline::recover_idle(&self.data, &self.store())?;
        let (working, submitted) = {
            let store = self.store();
            (store.tasks_in("working")?, store.tasks_in("submitted")?)
        };
        for t in working {
            let status = self
                .store()
                .find_dispatch(&t.id)?
                .map(|d| d.status)
                .unwrap_or_default();
            let (state, detail) = if status == "ok" {
                (
                    "completed",
                    "cairn stopped after the dispatch ended; its reply was lost",
                )
            } else {
                (
                    "failed",
                    "interrupted: cairn stopped while it ran; its changes were rolled back",
                )
            };
            self.store().finish_task(&t.id, state, "", Some(detail))?;
            tracing::warn!(task = %t.id, agent = %t.agent, "{detail}");
        }
        let agents = self.agents();
        for t in submitted {
            let worktree = agents
                .get(&t.agent)
                .is_some_and(|a| a.config.isolation == Isolation::Worktree);
            tracing::info!(task = %t.id, agent = %t.agent, "queued before a restart: runs now");
            if worktree {
                *lock(&self.pending_worktree)
                    .entry(t.agent.clone())
                    .or_default() += 1;
                tokio::spawn(self.clone().run_worktree(t.id, t.agent));
            } else {
                lock(&self.queue).push_back((t.id, t.agent));
            }
        }
        self.metrics.queue_depth.set(lock(&self.queue).len() as i64);
        tokio::spawn(self.clone().shared_worker(timeline));
        Ok(())
    }

    /// Prepares every agent's guests (compiling, pulling images) and swaps
    /// them in; an agent whose guests fail is kept, unhealthy.
    pub async fn prepare_all(self: &Arc<Self>) {
        let agents = self.agents();
        for (name, agent) in agents.iter() {
            let prepared = self.prepare(agent.config.clone()).await;
            self.replace(name, Some(prepared));
        }
        self.ready.store(true, Ordering::SeqCst);
        self.became_ready.notify_waiters();
    }

    /// Work queued before a restart waits for the guests it needs.
    async fn until_ready(&self) {
        while !self.ready.load(Ordering::SeqCst) {
            let notified = self.became_ready.notified();
            if self.ready.load(Ordering::SeqCst) {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
    }

    fn replace(&self, name: &str, agent: Option<Agent>) {
        let mut guard = self.agents.write().unwrap_or_else(|p| p.into_inner());
        let mut map = (**guard).clone();
        match agent {
            Some(a) => {
                self.metrics.set_health(name, a.problems.is_empty());
                map.insert(name.to_string(), Arc::new(a));
            }
            None => {
                self.metrics.forget(name);
                map.remove(name);
            }
        }
        *guard = Arc::new(map);
    }

    /// Applies a new set of agent configs: changed agents are prepared
    /// again, removed ones dropped; agents whose edit was refused keep
    /// their last good version.
    pub async fn apply(
        self: &Arc<Self>,
        configs: BTreeMap<String, AgentConfig>,
        refused: &[String],
    ) {
        let current = self.agents();
        for (name, config) in &configs {
            let unchanged = current
                .get(name)
                .is_some_and(|a| a.config.fingerprint == config.fingerprint);
            if !unchanged {
                tracing::info!(agent = %name, "agent changed: reloading it");
                let prepared = self.prepare(config.clone()).await;
                self.replace(name, Some(prepared));
            }
        }
        // Removals apply only with a clean read: an error may be why an
        // agent is missing, and its last good version is kept then.
        if refused.is_empty() {
            for name in current.keys() {
                if !configs.contains_key(name) {
                    tracing::info!(agent = %name, "agent removed");
                    self.replace(name, None);
                }
            }
        }
        let now = self.agents();
        self.sidecar
            .set_agent_budgets(&budgets(now.values().map(|a| &a.config)));
    }

    async fn prepare(&self, config: AgentConfig) -> Agent {
        let mount = self.data.root().join("agents").join(&config.name);
        let mut problems = Vec::new();
        if let Err(e) = stage_mount(&mount, config.instructions.as_deref()) {
            problems.push(format!("staging its instructions: {e:#}"));
        }
        let mut guests = HashMap::new();
        for (name, entry) in &config.guests {
            let prepared = match &entry.source {
                GuestSource::Peer { url, token_env } => {
                    let token = token_env.as_deref().and_then(|v| std::env::var(v).ok());
                    if let Some(v) = token_env
                        && token.is_none()
                    {
                        tracing::warn!(agent = %config.name, guest = %name, "token_env {v} is not set: the peer is called without a token");
                    }
                    Ok(Prepared::Peer(Peer {
                        url: url.clone(),
                        token,
                        timeout: entry.timeout,
                    }))
                }
                GuestSource::Image(reference) => self.load_guest(reference).await,
            };
            match prepared {
                Ok(p) => {
                    guests.insert(name.clone(), p);
                }
                Err(why) => {
                    tracing::error!(agent = %config.name, "guest {name}: {why}");
                    problems.push(format!("guest {name}: {why}"));
                }
            }
        }
        Agent {
            config,
            guests,
            problems,
            mount,
        }
    }

    async fn load_guest(&self, reference: &str) -> Result<Prepared, String> {
        let guest_ref = GuestRef::parse(reference)?;
        let loaded = match &guest_ref {
            GuestRef::Image(r) => {
                let mut images = Images::open(&self.data).map_err(|e| format!("{e:#}"))?;
                let opts = image::Options { insecure: false };
                let resolved = images
                    .resolve(r, PullPolicy::Missing, opts)
                    .await
                    .map_err(|e| e.to_string())?;
                let bytes = images.load(r, &resolved.image).map_err(|e| e.to_string())?;
                let source = crate::sandbox::GuestSource {
                    name: r
                        .repository
                        .rsplit('/')
                        .next()
                        .unwrap_or("guest")
                        .to_string(),
                    origin: format!("{r}@{}", resolved.image.digest),
                    bytes: std::borrow::Cow::Owned(bytes),
                    path: None,
                    sha256: None,
                };
                tokio::task::block_in_place(|| self.sandbox.load(&source))
            }
            other => {
                let source = other.source()?;
                tokio::task::block_in_place(|| self.sandbox.load(&source))
            }
        };
        loaded.map(Prepared::Local).map_err(|e| e.reason)
    }

    /// Accepts a dispatch: checks it can run, records it, queues it.
    pub fn submit(self: &Arc<Self>, req: Request) -> Result<TaskRow, Refused> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(Refused::Stopping(5));
        }
        let agents = self.agents();
        let agent = agents
            .get(&req.agent)
            .ok_or_else(|| Refused::UnknownAgent(req.agent.clone()))?;
        let (entry, _) = agent
            .config
            .route(&req.kind, req.guest.as_deref(), None)
            .map_err(Refused::Invalid)?;
        if !agent.guests.contains_key(&entry.name) {
            return Err(Refused::Unhealthy {
                agent: req.agent.clone(),
                why: agent.problems.join("; "),
            });
        }
        let worktree = agent.config.isolation == Isolation::Worktree;
        let limit = agent.config.queue_limit;
        let queued = if worktree {
            lock(&self.pending_worktree)
                .get(&req.agent)
                .copied()
                .unwrap_or(0)
        } else {
            lock(&self.queue).len()
        };
        if queued >= limit {
            self.metrics.busy.inc();
            return Err(Refused::Busy {
                agent: req.agent.clone(),
                queued,
                limit,
                retry_after: 2,
            });
        }
        let mut dispatch = Dispatch::new(&req.agent, req.kind, req.prompt, req.session);
        dispatch.metadata = req.metadata;
        if let Some(g) = req.guest {
            dispatch.metadata.insert(GUEST_KEY.into(), Value::String(g));
        }
        dispatch.model = req.model;
        dispatch.max_tokens = req.max_tokens;
        let now = crate::store::now_ms();
        let row = TaskRow {
            id: dispatch.id.clone(),
            agent: req.agent.clone(),
            context: dispatch.session.clone(),
            kind: dispatch.kind.as_str().to_string(),
            state: "submitted".into(),
            dispatch: serde_json::to_string(&dispatch)
                .map_err(|e| Refused::Internal(e.to_string()))?,
            message_id: req.message_id,
            reply: None,
            detail: None,
            created_at: now,
            updated_at: now,
        };
        self.store()
            .insert_task(&row, &dispatch.prompt)
            .map_err(|e| Refused::Internal(format!("recording the task: {e:#}")))?;
        let mut event = Event::new("dispatch.queued");
        event.agent = Some(row.agent.clone());
        event.dispatch = Some(row.id.clone());
        event.session = Some(row.context.clone());
        event.state = Some("submitted".into());
        self.events.send(event);
        if worktree {
            *lock(&self.pending_worktree)
                .entry(req.agent.clone())
                .or_default() += 1;
            tokio::spawn(self.clone().run_worktree(row.id.clone(), req.agent));
        } else {
            let depth = {
                let mut q = lock(&self.queue);
                q.push_back((row.id.clone(), req.agent));
                q.len()
            };
            self.metrics.queue_depth.set(depth as i64);
            self.wake.notify_one();
        }
        Ok(row)
    }

    /// Cancels a task: a queued one never runs, a running one is stopped
    /// and rolled back. Returns the task as it is after, or None when it
    /// does not exist; Err(state) when it had already ended.
    pub fn cancel(&self, id: &str) -> Result<Option<TaskRow>, String> {
        let moved = self
            .store()
            .set_task_state(
                id,
                &["submitted"],
                "canceled",
                Some("canceled before it started"),
            )
            .map_err(|e| format!("{e:#}"))?;
        if moved {
            let depth = {
                let mut q = lock(&self.queue);
                q.retain(|(t, _)| t != id);
                q.len()
            };
            self.metrics.queue_depth.set(depth as i64);
            let mut event = Event::new("dispatch.ended");
            event.dispatch = Some(id.to_string());
            event.state = Some("canceled".into());
            self.events.send(event);
        } else if let Some(n) = lock(&self.cancels).get(id) {
            n.notify_one();
        }
        let row = self.store().task(id).map_err(|e| format!("{e:#}"))?;
        match row {
            Some(t) if !moved && !lock(&self.cancels).contains_key(id) && t.state != "canceled" => {
                Err(t.state)
            }
            other => Ok(other),
        }
    }

    /// Stops taking work: new submissions are refused and queued ones wait
    /// in the store for the next start. Running dispatches get `grace` to
    /// finish; then they are canceled (rolled back).
    pub async fn shutdown(&self, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        // Their callers hear that cairn is stopping.
        lock(&self.rollbacks).clear();
        let deadline = tokio::time::Instant::now() + grace;
        while self.running.load(Ordering::SeqCst) > 0 {
            let ended = self.ended.notified();
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                break;
            }
        }
        let left: Vec<_> = lock(&self.cancels).values().cloned().collect();
        if !left.is_empty() {
            tracing::warn!(
                "{} dispatch(es) still running after {grace:?}: canceling and rolling them back",
                left.len()
            );
            for n in &left {
                n.notify_one();
            }
            while self.running.load(Ordering::SeqCst) > 0 {
                let ended = self.ended.notified();
                if tokio::time::timeout(Duration::from_secs(30), ended)
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        self.sidecar.flush();
    }

    /// Rolls back a step or a dispatch of the repository, as `cairn
    /// rollback` does, once the dispatch running now (if any) has ended:
    /// rollbacks go ahead of queued dispatches.
    pub async fn rollback(
        &self,
        text: &str,
        force: bool,
    ) -> Result<(Target, Undone), RollbackRefused> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(RollbackRefused::Stopping);
        }
        let failed = |e: anyhow::Error| RollbackRefused::Failed(format!("{e:#}"));
        let (target, dispatch, path) = {
            let store = self.store();
            let Some((target, dispatch)) = Target::find(&store, text).map_err(failed)? else {
                return Err(RollbackRefused::NotFound(Target::not_found(text)));
            };
            let path = store
                .dispatch_workspace(&dispatch)
                .and_then(|ws| store.workspace_path(ws))
                .map_err(failed)?;
            (target, dispatch, path)
        };
        use std::os::unix::ffi::OsStrExt;
        if path != self.repo.as_os_str().as_bytes() {
            return Err(RollbackRefused::Elsewhere(format!(
                "dispatch {dispatch} ran in {}, not in the repository {}: a worktree dispatch's result is its branch (delete the branch to drop it)",
                String::from_utf8_lossy(&path),
                self.repo.display()
            )));
        }
        let (reply, answer) = oneshot::channel();
        lock(&self.rollbacks).push_back(RollbackJob {
            target: target.clone(),
            force,
            reply,
        });
        self.wake.notify_one();
        match answer.await {
            Err(_) => Err(RollbackRefused::Stopping),
            Ok(Err(e)) => match e.downcast::<Conflict>() {
                Ok(c) => Err(RollbackRefused::Conflict(c)),
                Err(e) => Err(failed(e)),
            },
            Ok(Ok(undone)) => {
                let mut event = Event::new("rollback");
                event.step = undone.step;
                event.detail = Some(format!(
                    "{}: {} path(s) restored",
                    target.describe(),
                    undone.paths
                ));
                self.events.send(event);
                Ok((target, undone))
            }
        }
    }

    /// The repository's timeline: the one kept, or opened again after a
    /// dispatch that failed to give it back.
    fn shared_timeline(&self, kept: &mut Option<Timeline>) -> Result<Timeline> {
        match kept.take() {
            Some(tl) => Ok(tl),
            None => tokio::task::block_in_place(|| Timeline::open(&self.data, &self.repo, true))
                .with_context(|| format!("opening workspace {}", self.repo.display())),
        }
    }

    /// The shared workspace's one writer.
    async fn shared_worker(self: Arc<Self>, timeline: Timeline) {
        let mut timeline = Some(timeline);
        self.until_ready().await;
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let rollback = lock(&self.rollbacks).pop_front();
            if let Some(job) = rollback {
                self.shared_busy.store(true, Ordering::SeqCst);
                let result = self.shared_timeline(&mut timeline).and_then(|mut tl| {
                    let r = tokio::task::block_in_place(|| tl.rollback(&job.target, job.force));
                    timeline = Some(tl);
                    r
                });
                self.shared_busy.store(false, Ordering::SeqCst);
                let _ = job.reply.send(result);
                continue;
            }
            let next = lock(&self.queue).pop_front();
            let Some((id, _agent)) = next else {
                self.wake.notified().await;
                continue;
            };
            self.metrics.queue_depth.set(lock(&self.queue).len() as i64);
            let repo = self.repo.clone();
            self.shared_busy.store(true, Ordering::SeqCst);
            let tl = match self.shared_timeline(&mut timeline) {
                Ok(tl) => tl,
                Err(e) => {
                    let why = format!("{e:#}");
                    tracing::error!("{why}");
                    let _ = self.store().finish_task(&id, "failed", "", Some(&why));
                    self.shared_busy.store(false, Ordering::SeqCst);
                    continue;
                }
            };
            timeline = self.execute(&id, tl, &repo).await.0;
            self.shared_busy.store(false, Ordering::SeqCst);
        }
    }

    /// A dispatch in its own worktree and branch `cairn/<agent>/<id>`: on
    /// success its changes are committed there; on failure the branch is
    /// deleted. The worktree directory is removed either way.
    async fn run_worktree(self: Arc<Self>, id: String, agent: String) {
        let dir = self.data.root().join("worktrees").join(&id);
        let branch = format!("cairn/{agent}/{id}");
        self.until_ready().await;
        let result = async {
            std::fs::create_dir_all(self.data.root().join("worktrees"))?;
            git(&self.repo, &["worktree", "add", "-q", "-b", &branch])
                .arg(&dir)
                .arg("HEAD")
                .status_ok()
                .await?;
            let dir = dir.canonicalize()?;
            let timeline = tokio::task::block_in_place(|| Timeline::open(&self.data, &dir, false))?;
            let (timeline, state) = self.execute(&id, timeline, &dir).await;
            drop(timeline);
            Ok::<_, anyhow::Error>(state)
        }
        .await;
        let keep = matches!(&result, Ok(Some(s)) if s == "completed");
        let _ = git(&self.repo, &["worktree", "remove", "--force"])
            .arg(&dir)
            .status_ok()
            .await;
        if !keep {
            let _ = git(&self.repo, &["branch", "-q", "-D", &branch])
                .status_ok()
                .await;
        }
        if let Err(e) = result {
            let why = format!("worktree {}: {e:#}", dir.display());
            tracing::error!(task = %id, "{why}");
            let _ = self.store().finish_task(&id, "failed", "", Some(&why));
            self.ended_event(&id, &agent, "failed", Some(why));
        }
        if let Some(n) = lock(&self.pending_worktree).get_mut(&agent) {
            *n = n.saturating_sub(1);
        }
    }

    fn ended_event(&self, id: &str, agent: &str, state: &str, detail: Option<String>) {
        // Counted before anyone waiting on the event hears of it.
        self.metrics.ended(agent, state);
        let mut event = Event::new("dispatch.ended");
        event.agent = Some(agent.to_string());
        event.dispatch = Some(id.to_string());
        event.state = Some(state.to_string());
        event.detail = detail;
        self.events.send(event);
    }

    fn fail_early(&self, task: &TaskRow, why: String) {
        tracing::warn!(task = %task.id, agent = %task.agent, "{why}");
        let _ = self.store().finish_task(&task.id, "failed", "", Some(&why));
        self.ended_event(&task.id, &task.agent, "failed", Some(why));
    }

    /// Runs one task on `timeline`'s workspace and gives the timeline back,
    /// with the state the task ended in (None: it did not run).
    async fn execute(
        self: &Arc<Self>,
        id: &str,
        timeline: Timeline,
        workspace: &Path,
    ) -> (Option<Timeline>, Option<String>) {
        let task = match self.store().task(id) {
            Ok(Some(t)) if t.state == "submitted" => t,
            Ok(_) => return (Some(timeline), None),
            Err(e) => {
                tracing::error!(task = %id, "reading the task: {e:#}");
                return (Some(timeline), None);
            }
        };
        let mut dispatch: Dispatch = match serde_json::from_str(&task.dispatch) {
            Ok(d) => d,
            Err(e) => {
                self.fail_early(&task, format!("the stored dispatch cannot be read: {e}"));
                return (Some(timeline), Some("failed".into()));
            }
        };
        let agents = self.agents();
        let Some(agent) = agents.get(&task.agent).cloned() else {
            self.fail_early(
                &task,
                format!("agent `{}` is no longer defined", task.agent),
            );
            return (Some(timeline), Some("failed".into()));
        };
        let guest = dispatch.metadata.get(GUEST_KEY).and_then(Value::as_str);
        let routed = agent
            .config
            .route(&dispatch.kind, guest, dispatch.model.as_deref());
        let (entry, model) = match routed {
            Ok((e, m)) => (e.clone(), m),
            Err(why) => {
                self.fail_early(&task, why);
                return (Some(timeline), Some("failed".into()));
            }
        };
        let Some(prepared) = agent.guests.get(&entry.name) else {
            let why = format!(
                "agent `{}` is unhealthy: {}",
                task.agent,
                agent.problems.join("; ")
            );
            self.fail_early(&task, why);
            return (Some(timeline), Some("failed".into()));
        };
        dispatch.model = model;
        dispatch.max_tokens = dispatch.max_tokens.or(entry.max_tokens);
        match self
            .store()
            .set_task_state(id, &["submitted"], "working", None)
        {
            Ok(true) => {}
            _ => return (Some(timeline), None),
        }
        let cancel = Arc::new(Notify::new());
        lock(&self.cancels).insert(id.to_string(), cancel.clone());
        self.running.fetch_add(1, Ordering::SeqCst);
        self.metrics.running.inc();
        let mut event = Event::new("dispatch.started");
        event.agent = Some(task.agent.clone());
        event.dispatch = Some(id.to_string());
        event.session = Some(task.context.clone());
        event.state = Some("working".into());
        event.detail = Some(prepared.origin());
        self.events.send(event);

        let first_line: String = dispatch
            .prompt
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(72)
            .collect();
        let (mut state, reply, mut detail, timeline) = self
            .run_on_timeline(
                &agent, &entry, prepared, dispatch, timeline, workspace, &cancel,
            )
            .await;
        // A worktree's result is its branch: committed before the caller
        // hears the dispatch completed.
        if state == "completed" && workspace != self.repo {
            let message = commit_message(&task.agent, id, &first_line, &reply);
            if let Err(e) = commit_all(workspace, &message).await {
                state = "failed".into();
                detail = Some(format!("committing the result to its branch: {e:#}"));
            }
        }
        let finished = self
            .store()
            .finish_task(id, &state, &reply, detail.as_deref());
        if let Err(e) = finished {
            tracing::error!(task = %id, "recording the task's end: {e:#}");
        }
        lock(&self.cancels).remove(id);
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.metrics.running.dec();
        self.ended_event(id, &task.agent, &state, detail);
        self.ended.notify_waiters();
        (timeline, Some(state))
    }

    /// Runs the agent's `validate` commands, each a step, once the
    /// dispatch changed files (nothing changed: nothing to validate).
    /// Err: the first failing command and the end of its output.
    async fn validate(
        &self,
        agent: &Agent,
        tools: &agent_config::Tools,
        workspace: &Path,
        marks: &Arc<Marks>,
    ) -> Result<(), String> {
        let first = tools
            .validate
            .first()
            .map_or("", String::as_str)
            .to_string();
        let opened = broker::open_step(marks, format!("validate: {first}")).await;
        let changed = {
            let marks = marks.clone();
            tokio::task::spawn_blocking(move || marks.changed())
                .await
                .unwrap_or(true)
        };
        if !changed {
            if let Some(step) = opened {
                marks.describe(step, "validate: skipped, the dispatch changed nothing");
            }
            return Ok(());
        }
        let policy = &tools.policy;
        let temp_root = self.data.root().join("tmp");
        for (i, command) in tools.validate.iter().enumerate() {
            let argv: Vec<String> = command.split_whitespace().map(str::to_string).collect();
            let step = if i == 0 {
                opened
            } else {
                broker::open_step(marks, format!("validate: {command}")).await
            };
            let temp = broker::private_temp(&temp_root, "validate-")
                .map_err(|e| format!("{command}: making its temp dir: {e}"))?;
            let request = confine::Request {
                argv,
                workspace: workspace.to_path_buf(),
                temp: temp.path().to_path_buf(),
                timeout: None,
            };
            let out = confine::run(&self.tool_support, policy, &request)
                .await
                .map_err(|e| {
                    format!(
                        "{command}: {e} (.cairn/agents/{}/agent.toml)",
                        agent.config.name
                    )
                })?;
            let ok = out.exit == Some(0) && !out.timed_out;
            let ended = broker::ended(&out);
            if let Some(step) = step {
                marks.describe(step, &format!("validate: {command} → {ended}"));
            }
            if !ok {
                let tail = |b: &[u8]| {
                    let t = String::from_utf8_lossy(b);
                    let chars: Vec<char> = t.chars().collect();
                    chars[chars.len().saturating_sub(4000)..]
                        .iter()
                        .collect::<String>()
                };
                return Err(format!(
                    "{command}: {ended}\n{}{}",
                    tail(&out.stdout),
                    tail(&out.stderr)
                ));
            }
        }
        Ok(())
    }

    /// A consensus run: every (guest, model) pair the patterns match runs
    /// the dispatch in parallel; then the majority of yes/no answers, or
    /// the default guest (`entry`) merging them. Voters that fail are left
    /// out; all failing fails the dispatch.
    async fn consensus(
        &self,
        agent: &Agent,
        entry: &agent_config::GuestEntry,
        voters: &[(String, Option<String>)],
        dispatch: &Dispatch,
        workspace: &Path,
        marks: &Arc<Marks>,
    ) -> Result<String, (String, String)> {
        let mut pairs = Vec::new();
        for (pattern, model) in voters {
            for name in agent.config.guests.keys() {
                if crate::schedule::defs::glob(pattern, name) {
                    pairs.push((name.clone(), model.clone()));
                }
            }
        }
        if pairs.is_empty() {
            let patterns: Vec<&str> = voters.iter().map(|(p, _)| p.as_str()).collect();
            return Err((
                format!("consensus: no guest matches {}", patterns.join(", ")),
                String::new(),
            ));
        }
        let runs = pairs.iter().map(|(name, model)| async move {
            let (e, m) = agent
                .config
                .route(&dispatch.kind, Some(name), model.as_deref())
                .map_err(|why| (why, String::new()))?;
            let prepared = agent
                .guests
                .get(&e.name)
                .ok_or_else(|| (format!("guest {} is not prepared", e.name), String::new()))?;
            let mut d = dispatch.clone();
            d.model = m.clone();
            self.invoke_one(agent, e, prepared, d, workspace, marks)
                .await
                .map(|reply| consensus::Answer {
                    guest: name.clone(),
                    model: m,
                    reply,
                })
        });
        let results = futures_util::future::join_all(runs).await;
        let mut answers = Vec::new();
        let mut failures = Vec::new();
        for ((name, _), r) in pairs.iter().zip(results) {
            match r {
                Ok(a) => answers.push(a),
                Err((why, _)) => failures.push(format!("{name}: {why}")),
            }
        }
        for f in &failures {
            tracing::warn!(dispatch = %dispatch.id, "consensus voter failed: {f}");
        }
        if answers.is_empty() {
            return Err((
                format!("consensus: every guest failed: {}", failures.join("; ")),
                String::new(),
            ));
        }
        match consensus::aggregate(&answers, &entry.name) {
            consensus::Outcome::Vote { reply, yes, no } => {
                tracing::info!(dispatch = %dispatch.id, "consensus: {yes} yes, {no} no");
                Ok(reply)
            }
            consensus::Outcome::Synthesize => {
                let prepared = agent.guests.get(&entry.name).ok_or_else(|| {
                    (
                        format!("guest {} is not prepared", entry.name),
                        String::new(),
                    )
                })?;
                let mut d = dispatch.clone();
                d.prompt = consensus::synthesis_prompt(&dispatch.prompt, &answers);
                self.invoke_one(agent, entry, prepared, d, workspace, marks)
                    .await
            }
        }
    }

    /// One guest's run of `dispatch`: its reply, or why it failed and what
    /// it had said.
    async fn invoke_one(
        &self,
        agent: &Agent,
        entry: &agent_config::GuestEntry,
        prepared: &Prepared,
        dispatch: Dispatch,
        workspace: &Path,
        marks: &Arc<Marks>,
    ) -> Result<String, (String, String)> {
        match prepared {
            Prepared::Local(guest) => {
                let mut outbound = invoke::outbound(
                    Some(&self.sidecar),
                    &agent.config.name,
                    &dispatch,
                    marks.clone(),
                    entry.allow_hosts.clone(),
                    format!(
                        "allow_hosts of [guests.{}] in .cairn/agents/{}/agent.toml",
                        entry.name, agent.config.name
                    ),
                );
                let broker = Broker {
                    support: self.tool_support.clone(),
                    tools: agent.config.tools.clone(),
                    agent: agent.config.name.clone(),
                    workspace: workspace.to_path_buf(),
                    temp_root: self.data.root().join("tmp"),
                    marks: marks.clone(),
                    steps: Default::default(),
                };
                outbound
                    .local
                    .push((BROKER_HOST.to_string(), Arc::new(Arc::new(broker))));
                let outbound = Arc::new(outbound);
                let limits = Limits {
                    deadline: entry.timeout,
                    memory_bytes: (entry.memory_mib as usize) << 20,
                    stdout_bytes: self.limits.stdout_bytes,
                    stderr_bytes: self.limits.stderr_bytes,
                };
                let mut extra = Extra::default();
                extra
                    .mounts
                    .push((agent.config.memory.clone(), "/memory".into(), true));
                extra.env.push(("CAIRN_MEMORY".into(), "/memory".into()));
                extra
                    .mounts
                    .push((agent.mount.clone(), "/agent".into(), false));
                if agent.config.instructions.is_some() {
                    extra
                        .env
                        .push(("CAIRN_INSTRUCTIONS".into(), "/agent/instructions.md".into()));
                }
                let outcome = invoke::dispatch_with(
                    &self.sandbox,
                    guest,
                    dispatch.clone(),
                    workspace,
                    limits,
                    outbound,
                    extra,
                )
                .await;
                match outcome {
                    Ok(o) => match o.result {
                        Ok(()) => Ok(o.reply.text),
                        Err(f) => Err((f.to_string(), o.reply.text)),
                    },
                    Err(e) => Err((format!("{e:#}"), String::new())),
                }
            }
            Prepared::Peer(peer) => send_to_peer(
                &self.client,
                peer,
                &dispatch.prompt,
                Some(&dispatch.session),
                &dispatch.id,
            )
            .await
            .map(|r| r.text)
            .map_err(|e| (e.to_string(), String::new())),
        }
    }

    /// The dispatch between its first and last boundary: (state, reply,
    /// detail, the timeline back).
    #[allow(clippy::too_many_arguments)]
    async fn run_on_timeline(
        self: &Arc<Self>,
        agent: &Agent,
        entry: &agent_config::GuestEntry,
        prepared: &Prepared,
        dispatch: Dispatch,
        mut timeline: Timeline,
        workspace: &Path,
        cancel: &Notify,
    ) -> (String, String, Option<String>, Option<Timeline>) {
        let id = dispatch.id.clone();
        let begun = tokio::task::block_in_place(|| {
            timeline.begin(&id, &prepared.origin(), dispatch.kind.as_str())
        });
        let active = match begun {
            Ok(a) => a,
            Err(e) => {
                return (
                    "failed".into(),
                    String::new(),
                    Some(format!("recording the dispatch's start: {e:#}")),
                    Some(timeline),
                );
            }
        };
        let mut step = Event::new("step");
        step.agent = Some(agent.config.name.clone());
        step.dispatch = Some(id.clone());
        step.step = Some(active.step());
        step.detail = Some("start".into());
        self.events.send(step);
        let hook_self = self.clone();
        let hook_agent = agent.config.name.clone();
        let hook: invoke::StepHook = Box::new(move |dispatch, step_id, detail| {
            let mut step = Event::new("step");
            step.agent = Some(hook_agent.clone());
            step.dispatch = Some(dispatch.to_string());
            step.step = Some(step_id);
            step.detail = Some(detail.to_string());
            hook_self.events.send(step);
        });
        let marks = Marks::with_hook(timeline, active, Some(hook));

        let voters = consensus_voters(&dispatch);
        let tools = agent
            .config
            .tools
            .clone()
            .filter(|t| !t.validate.is_empty());
        let run = async {
            let mut attempt = 0;
            let mut this = dispatch.clone();
            loop {
                let reply = if voters.is_empty() {
                    self.invoke_one(agent, entry, prepared, this.clone(), workspace, &marks)
                        .await?
                } else {
                    self.consensus(agent, entry, &voters, &this, workspace, &marks)
                        .await?
                };
                let Some(tools) = &tools else {
                    return Ok(reply);
                };
                match self.validate(agent, tools, workspace, &marks).await {
                    Ok(()) => return Ok(reply),
                    Err(failure) if attempt < tools.retry_on_fail => {
                        attempt += 1;
                        tracing::info!(dispatch = %id, "validation failed; attempt {attempt} of {} more", tools.retry_on_fail);
                        this.prompt = format!(
                            "{}\n\n---\nYour changes failed validation (retry {attempt} of {}). Fix them; the failure:\n{failure}\n",
                            dispatch.prompt, tools.retry_on_fail
                        );
                    }
                    Err(failure) => return Err((format!("validation failed: {failure}"), reply)),
                }
            }
        };
        // The agents' definitions are not the guests' to change: a
        // dispatch in the repository that edits `.cairn/` (memory aside)
        // fails and is rolled back.
        let guarded = workspace == self.repo;
        let before = guarded.then(|| definitions_fingerprint(&self.repo));
        let (outcome, canceled) = tokio::select! {
            r = run => (r, false),
            () = cancel.notified() => (Err(("canceled".to_string(), String::new())), true),
        };
        // What the guest said, even when it failed: a dispatch a budget
        // stopped keeps its partial reply.
        let (mut outcome, partial) = match outcome {
            Ok(reply) => (Ok(reply), String::new()),
            Err((why, partial)) => (Err(why), partial),
        };
        if outcome.is_ok() && before.is_some_and(|b| b != definitions_fingerprint(&self.repo)) {
            outcome = Err(
                "the guest changed .cairn/ (agent definitions); only memory/ is its to write"
                    .into(),
            );
        }
        // A budget (the dispatch's max-tokens, or one that stops) refused a
        // model call: the dispatch ends `budget_exceeded`, its changes
        // rolled back, its reply so far kept.
        let budget = self.sidecar.take_budget_stop(&id);
        let (outcome, partial) = match (budget.as_ref(), outcome) {
            (Some(why), Ok(reply)) => (Err(format!("budget_exceeded: {why}")), reply),
            (Some(why), Err(_)) if !canceled => (Err(format!("budget_exceeded: {why}")), partial),
            (_, outcome) => (outcome, partial),
        };
        self.sidecar.flush();
        let Some((mut timeline, active)) = marks.take() else {
            // Only the run that owns the marks takes them back, once.
            return (
                "failed".into(),
                String::new(),
                Some("the dispatch's timeline was lost".into()),
                None,
            );
        };
        let verdict = outcome.as_ref().map(|_| ()).map_err(Clone::clone);
        let undone =
            tokio::task::block_in_place(|| timeline.end(active, verdict, RollbackPolicy::Dispatch));
        let rolled_back = match &undone {
            Ok(u) => {
                for w in &u.warnings {
                    tracing::warn!(dispatch = %id, "{w}");
                }
                match u.step {
                    Some(_) if u.paths > 0 => format!("; rolled back {} path(s)", u.paths),
                    _ => "; it changed nothing".into(),
                }
            }
            Err(e) => format!("; the rollback failed: {e:#}"),
        };
        let result = match outcome {
            Ok(reply) => match undone {
                Ok(_) => ("completed".into(), reply, None),
                Err(e) => (
                    "failed".into(),
                    reply,
                    Some(format!("ending the dispatch: {e:#}")),
                ),
            },
            Err(why) if canceled => (
                "canceled".into(),
                String::new(),
                Some(format!("{why}{rolled_back}")),
            ),
            Err(why) => {
                if budget.is_some() {
                    let detail = format!("{why}{rolled_back}");
                    let marked = self
                        .store()
                        .write(|tx| tx.end_dispatch(&id, "budget_exceeded", Some(&detail)));
                    if let Err(e) = marked {
                        tracing::error!(dispatch = %id, "recording budget_exceeded: {e:#}");
                    }
                }
                (
                    "failed".into(),
                    partial,
                    Some(format!("{why}{rolled_back}")),
                )
            }
        };
        (result.0, result.1, result.2, Some(timeline))
    }
}

/// A worktree dispatch's commit: the reply's first line as the subject
/// (what the agent says it did), the reply and the prompt below.
fn commit_message(agent: &str, id: &str, prompt: &str, reply: &str) -> String {
    let summary: String = reply
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(prompt)
        .chars()
        .take(72)
        .collect();
    let body: String = reply.chars().take(4000).collect();
    format!("{agent}: {summary}\n\n{body}\n\nPrompt: {prompt}\nDispatch: {id} (cairn)\n")
}

/// A hash of every file under `.cairn/` except the agents' `memory/`.
fn definitions_fingerprint(repo: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut stack = vec![repo.join(".cairn")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            path.hash(&mut h);
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                let is_memory = e.file_name() == "memory"
                    && path
                        .parent()
                        .and_then(Path::parent)
                        .and_then(Path::file_name)
                        == Some(std::ffi::OsStr::new("agents"));
                if !is_memory {
                    stack.push(path);
                }
            } else {
                std::fs::read(&path).unwrap_or_default().hash(&mut h);
            }
        }
    }
    h.finish()
}

/// Copies the agent's instructions where the guest sees them read-only
/// (`/agent/instructions.md`): a guest cannot change its own orders.
fn stage_mount(mount: &Path, instructions: Option<&Path>) -> Result<()> {
    std::fs::create_dir_all(mount)?;
    let target = mount.join("instructions.md");
    match instructions {
        Some(src) => {
            std::fs::copy(src, &target).with_context(|| format!("copying {}", src.display()))?;
        }
        None => {
            let _ = std::fs::remove_file(&target);
        }
    }
    Ok(())
}

fn git(repo: &Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("-C").arg(repo).args(args);
    cmd.env("GIT_TERMINAL_PROMPT", "0");
    cmd
}

trait StatusOk {
    async fn status_ok(&mut self) -> Result<()>;
}

impl StatusOk for tokio::process::Command {
    async fn status_ok(&mut self) -> Result<()> {
        let out = self
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .context("running git")?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let line = err.lines().next().unwrap_or("").trim();
            anyhow::bail!("git failed ({}): {line}", out.status);
        }
        Ok(())
    }
}

/// Commits everything in a worktree (nothing when it is unchanged).
async fn commit_all(dir: &Path, message: &str) -> Result<()> {
    git(dir, &["add", "-A"]).status_ok().await?;
    let changed = !git(dir, &["diff", "--cached", "--quiet"])
        .status()
        .await
        .context("running git")?
        .success();
    if changed {
        git(dir, &["commit", "-q", "--no-verify", "-m", message])
            .env("GIT_AUTHOR_NAME", "cairn")
            .env("GIT_AUTHOR_EMAIL", "cairn@localhost")
            .env("GIT_COMMITTER_NAME", "cairn")
            .env("GIT_COMMITTER_EMAIL", "cairn@localhost")
            .status_ok()
            .await?;
    }
    Ok(())
}
