//! The timeline: the workspace recorded at every step boundary, automatic
//! rollback of a failed dispatch, and undo of any step or dispatch later.
//!
//! A [`Timeline`] is one workspace opened by one process: it holds the
//! workspace's lock (one writer at a time), the entries of its last
//! boundary, a file watcher for dirty paths, and the store and object
//! store. Opening it first finishes whatever a dead process left: a restore
//! in the journal is applied again, and a dispatch still marked running is
//! rolled back to its last complete boundary and marked interrupted.
//!
//! A boundary (`begin`, `boundary`, `end`) finds what changed since the
//! previous one (dirty paths from the watcher, or a walk that trusts the
//! stat cache), stores new contents, and records the step's changes and the
//! new entries in one transaction. A rollback composes the changes to undo,
//! refuses when a path has changed since (unless forced), writes its plan to
//! the journal, applies it, and records it as a step of its own, so a
//! rollback can itself be rolled back.
//!
//! Changes made while no dispatch runs (a person editing) are found at the
//! next boundary and recorded as an `outside` dispatch of their own, so
//! they are never blamed on, or undone with, an agent's dispatch.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::data_dir::DataDir;
use crate::store::Store;
use crate::store::timeline::StepRow;

pub mod diff;
pub mod entry;
pub mod objects;
pub mod restore;
pub mod scan;
pub mod watch;

use entry::{Change, ChangeKind, Entry, RelPath, display};
use objects::Objects;
use scan::{Found, Scanner};
use watch::{Dirty, Watch};

/// Below this many recorded paths a walk is cheaper than a watcher: a walk
/// of 2,000 paths takes about 10 ms, and closing an inotify instance costs
/// the kernel an RCU grace period (about 15 ms here) that a short-lived
/// `cairn run` would pay on exit.
const WATCH_MIN_ENTRIES: usize = 2000;

/// What opened a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opener {
    /// The dispatch started.
    Start,
    /// A model call through the sidecar.
    ModelCall,
    /// A host tool call.
    ToolCall,
    /// A rollback (automatic or asked for).
    Rollback,
    /// Changes found between dispatches, made outside cairn.
    Outside,
}

impl Opener {
    pub fn as_str(self) -> &'static str {
        match self {
            Opener::Start => "start",
            Opener::ModelCall => "model-call",
            Opener::ToolCall => "tool-call",
            Opener::Rollback => "rollback",
            Opener::Outside => "outside",
        }
    }
}

/// What a failed dispatch gets undone to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RollbackPolicy {
    /// Back to the state at the dispatch's start.
    #[default]
    Dispatch,
    /// Only the step that failed (the last one) is undone.
    FailedStep,
}

/// A dispatch in progress: its id and its open step.
#[derive(Debug)]
pub struct Active {
    pub id: String,
    step: i64,
    idx: i64,
}

impl Active {
    /// The store id of the open step.
    pub fn step(&self) -> i64 {
        self.step
    }
}

/// What a rollback or a dispatch's end did.
#[derive(Debug, Default)]
pub struct Undone {
    /// The step that recorded the rollback (None: nothing to undo).
    pub step: Option<i64>,
    /// Paths put back.
    pub paths: usize,
    pub warnings: Vec<String>,
}

/// What to roll back.
#[derive(Clone, Debug)]
pub enum Target {
    Step(i64),
    Dispatch(String),
}

impl Target {
    /// Reads `text`, a step number or a dispatch id (or a unique prefix of
    /// one): the target and the dispatch it belongs to, None when there is
    /// no such step or dispatch.
    pub fn find(store: &Store, text: &str) -> Result<Option<(Target, String)>> {
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            let Ok(id) = text.parse::<i64>() else {
                return Ok(None);
            };
            return Ok(store.step(id)?.map(|s| (Target::Step(id), s.dispatch)));
        }
        Ok(store
            .find_dispatch(text)?
            .map(|d| (Target::Dispatch(d.id.clone()), d.id)))
    }

    /// What to say when [`Target::find`] found nothing for `text`.
    pub fn not_found(text: &str) -> String {
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            format!("no step {text}")
        } else {
            format!("no dispatch or step {text}")
        }
    }

    /// How a report names it: `step 4`, `dispatch 0193…`.
    pub fn describe(&self) -> String {
        match self {
            Target::Step(s) => format!("step {s}"),
            Target::Dispatch(d) => format!("dispatch {d}"),
        }
    }
}

/// A rollback refused because paths it would put back changed since.
#[derive(Debug, thiserror::Error)]
#[error("{what} refused: {count} path(s) changed since: {list}; --force overwrites them")]
pub struct Conflict {
    pub what: String,
    pub count: usize,
    pub list: String,
}

/// A restore as the journal keeps it until its result is recorded.
#[derive(Serialize, Deserialize)]
struct RestoreOp {
    dispatch: String,
    step: i64,
    status: Option<String>,
    detail: Option<String>,
    plan: Vec<(RelPath, Option<Entry>)>,
}

pub struct Timeline {
    store: Store,
    objects: Objects,
    scanner: Scanner,
    watch: Option<Watch>,
    ws: i64,
    index: BTreeMap<RelPath, Entry>,
    /// Whether `index` matches the disk as of the last boundary (false until
    /// the first full scan of this process).
    synced: bool,
    _lock: File,
    /// Where to start a watcher once the workspace proves large enough.
    watch_later: Option<(PathBuf, PathBuf)>,
    /// Testing hook (`CAIRN_RESTORE_PAUSE_MS`): a pause after each restored
    /// path, so a test can kill cairn in the middle of a rollback.
    pause: Option<Duration>,
}

impl Timeline {
    /// Opens `workspace` (canonical) for writing: waits for its lock,
    /// starts the watcher (if `watch` and the workspace is large enough to
    /// gain from it), and finishes unfinished work.
    pub fn open(data: &DataDir, workspace: &Path, watch: bool) -> Result<Timeline> {
        let store = Store::open(&data.store())?;
        let objects = Objects::open(data.timeline().join("objects"))?;
        let ws = store.workspace_id(workspace.as_os_str().as_encoded_bytes())?;
        let lock = lock_workspace(data, ws, workspace)?;
        let index = store.load_entries(ws)?;
        let cookies = data
            .timeline()
            .join("cookies")
            .join(format!("{}-{ws}", std::process::id()));
        let wanted = watch.then(|| (workspace.to_path_buf(), cookies));
        let watch = match &wanted {
            Some((root, cookies)) if index.len() >= WATCH_MIN_ENTRIES => start_watch(root, cookies),
            _ => None,
        };
        let pause = std::env::var("CAIRN_RESTORE_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis);
        let mut tl = Timeline {
            store,
            objects,
            scanner: Scanner::new(workspace),
            // Not started yet: the first walk may show the workspace is
            // large enough to gain from one.
            watch_later: if watch.is_none() { wanted } else { None },
            watch,
            ws,
            index,
            synced: false,
            _lock: lock,
            pause,
        };
        tl.recover()
            .context("finishing work left by a stopped cairn")?;
        Ok(tl)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Starts a dispatch: records changes made outside cairn since the last
    /// boundary, then the dispatch and its first step.
    pub fn begin(&mut self, id: &str, guest: &str, kind: &str) -> Result<Active> {
        let found = self.sync()?;
        let ws = self.ws;
        let step = self.store.write(|tx| {
            record_outside(tx, ws, &found)?;
            tx.insert_dispatch(id, ws, guest, kind, "running")?;
            tx.open_step(id, 0, Opener::Start.as_str(), None)
        })?;
        self.absorb(&found);
        Ok(Active {
            id: id.to_string(),
            step,
            idx: 0,
        })
    }

    /// A boundary inside a dispatch: closes the open step with what it
    /// changed and opens the next. Returns the new step's id.
    pub fn boundary(
        &mut self,
        active: &mut Active,
        opener: Opener,
        detail: Option<&str>,
    ) -> Result<i64> {
        let found = self.sync()?;
        let ws = self.ws;
        let (closing, next) = (active.step, active.idx + 1);
        let step = self.store.write(|tx| {
            tx.close_step(ws, closing, &found.changes, &found.restat)?;
            tx.open_step(&active.id, next, opener.as_str(), detail)
        })?;
        self.absorb(&found);
        active.step = step;
        active.idx = next;
        Ok(step)
    }

    /// Ends a dispatch. A failure (`Err(why)`) is rolled back per `policy`,
    /// and the dispatch is marked `rolled-back`; success marks it `ok`.
    pub fn end(
        &mut self,
        active: Active,
        outcome: Result<(), String>,
        policy: RollbackPolicy,
    ) -> Result<Undone> {
        let found = self.sync()?;
        let ws = self.ws;
        let ok = outcome.is_ok();
        self.store.write(|tx| {
            tx.close_step(ws, active.step, &found.changes, &found.restat)?;
            if ok {
                tx.end_dispatch(&active.id, "ok", None)?;
            }
            Ok(())
        })?;
        self.absorb(&found);
        let Err(why) = outcome else {
            return Ok(Undone::default());
        };
        let undo = match policy {
            RollbackPolicy::Dispatch => self.composed(&Target::Dispatch(active.id.clone()))?,
            RollbackPolicy::FailedStep => self.composed(&Target::Step(active.step))?,
        };
        self.revert(undo, &active.id, active.idx + 1, "rolled-back", Some(why))
    }

    /// Undoes a step or a dispatch: puts every path it changed back to its
    /// state before, refusing (with [`Conflict`]) when one has changed since,
    /// unless `force`. Recorded as a dispatch of kind `rollback`.
    pub fn rollback(&mut self, target: &Target, force: bool) -> Result<Undone> {
        let found = self.sync()?;
        let ws = self.ws;
        self.store.write(|tx| record_outside(tx, ws, &found))?;
        self.absorb(&found);

        let what = format!("rollback of {}", target.describe());
        let undo = self.composed(target)?;
        let mut conflicts = Vec::new();
        for c in &undo {
            if !same(self.index.get(&c.path), c.after.as_ref()) {
                conflicts.push(c.path.clone());
            }
        }
        if !conflicts.is_empty() && !force {
            let since = match target {
                Target::Step(s) => *s,
                Target::Dispatch(d) => self.store.steps(d)?.first().map(|s| s.id).unwrap_or(0),
            };
            let list = conflicts
                .iter()
                .take(10)
                .map(|p| {
                    let by = self.store.later_change(self.ws, since, p).ok().flatten();
                    match by {
                        Some(StepRow { id, dispatch, .. }) => {
                            format!("{} (by step {id} of dispatch {dispatch})", display(p))
                        }
                        None => display(p),
                    }
                })
                .collect::<Vec<_>>()
                .join(", ");
            let more = if conflicts.len() > 10 { ", …" } else { "" };
            return Err(Conflict {
                what,
                count: conflicts.len(),
                list: format!("{list}{more}"),
            }
            .into());
        }
        let id = uuid::Uuid::now_v7().to_string();
        self.store
            .write(|tx| tx.insert_dispatch(&id, ws, "-", "rollback", "running"))?;
        self.revert(undo, &id, 0, "ok", Some(what))
    }

    /// The changes of a step, or of a whole dispatch composed path by path
    /// (state before its first change, after its last), that changed
    /// something.
    fn composed(&self, target: &Target) -> Result<Vec<Change>> {
        let steps = match target {
            Target::Step(id) => {
                let Some(step) = self.store.step(*id)? else {
                    bail!("no step {id}");
                };
                vec![step]
            }
            Target::Dispatch(d) => self.store.steps(d)?,
        };
        let mut by_path: BTreeMap<RelPath, Change> = BTreeMap::new();
        for step in steps {
            for c in self.store.changes(step.id)? {
                by_path
                    .entry(c.path.clone())
                    .and_modify(|prev| prev.after = c.after.clone())
                    .or_insert(c);
            }
        }
        Ok(by_path
            .into_values()
            .filter(|c| ChangeKind::of(c.before.as_ref(), c.after.as_ref()).is_some())
            .collect())
    }

    /// Puts `undo`'s paths back to their `before` states, journaled, and
    /// records it as step `idx` of `dispatch`, ending it with `status`.
    fn revert(
        &mut self,
        undo: Vec<Change>,
        dispatch: &str,
        idx: i64,
        status: &str,
        detail: Option<String>,
    ) -> Result<Undone> {
        let plan: Vec<(RelPath, Option<Entry>)> = undo
            .into_iter()
            .filter(|c| !same(self.index.get(&c.path), c.before.as_ref()))
            .map(|c| (c.path, c.before))
            .collect();
        let ws = self.ws;
        let mut op = RestoreOp {
            dispatch: dispatch.to_string(),
            step: 0,
            status: Some(status.to_string()),
            detail,
            plan,
        };
        let journal = self.store.write(|tx| {
            op.step = tx.open_step(
                dispatch,
                idx,
                Opener::Rollback.as_str(),
                op.detail.as_deref(),
            )?;
            let text = serde_json::to_string(&op).context("encoding a restore plan")?;
            tx.insert_journal(ws, &text)
        })?;
        self.finish(journal, op)
    }

    /// Applies a journaled restore and records its result; used for new
    /// restores and to finish one a crash interrupted.
    fn finish(&mut self, journal: i64, op: RestoreOp) -> Result<Undone> {
        let root = self.scanner.root().to_path_buf();
        let warnings = restore::apply(&root, &self.objects, &op.plan, journal, self.pause)?;
        for w in &warnings {
            tracing::warn!("{w}");
        }
        // What the restore changed, as the disk now says.
        let paths = op.plan.iter().map(|(p, _)| p.clone());
        let found = self.scanner.refresh(paths, &self.index, &self.objects)?;
        let ws = self.ws;
        self.store.write(|tx| {
            tx.close_step(ws, op.step, &found.changes, &found.restat)?;
            tx.delete_journal(journal)?;
            if let Some(status) = &op.status {
                tx.end_dispatch(&op.dispatch, status, op.detail.as_deref())?;
            }
            Ok(())
        })?;
        self.absorb(&found);
        Ok(Undone {
            step: Some(op.step),
            paths: op.plan.len(),
            warnings,
        })
    }

    /// Finishes a restore left in the journal, then rolls back every
    /// dispatch still marked running to its last complete boundary.
    fn recover(&mut self) -> Result<()> {
        for j in self.store.journal(self.ws)? {
            let op: RestoreOp = serde_json::from_str(&j.op)
                .with_context(|| format!("reading journal entry {}", j.id))?;
            tracing::info!(dispatch = %op.dispatch, paths = op.plan.len(), "finishing an interrupted rollback");
            self.finish(j.id, op)?;
        }
        for d in self.store.running_dispatches(self.ws)? {
            let found = self.sync()?;
            let steps = self.store.steps(&d.id)?;
            let ws = self.ws;
            let (open, idx) = match steps.last() {
                Some(s) if s.ended_at.is_none() => (s.id, s.idx),
                Some(s) => (0, s.idx),
                None => (0, -1),
            };
            let open = self.store.write(|tx| {
                let open = if open == 0 {
                    tx.open_step(&d.id, idx + 1, Opener::Start.as_str(), None)?
                } else {
                    open
                };
                tx.close_step(ws, open, &found.changes, &found.restat)?;
                Ok(open)
            })?;
            self.absorb(&found);
            let last_idx = self.store.step(open)?.map(|s| s.idx).unwrap_or(idx + 1);
            let detail = format!(
                "interrupted: cairn stopped during step {open}; rolled back to its last boundary"
            );
            tracing::warn!(dispatch = %d.id, "{detail}");
            self.revert(
                found.changes,
                &d.id,
                last_idx + 1,
                "interrupted",
                Some(detail),
            )?;
        }
        Ok(())
    }

    /// Brings the entries up to date with the disk: the watcher's dirty
    /// paths when it can vouch for them, else a full walk.
    fn sync(&mut self) -> Result<Found> {
        let dirty = match (&mut self.watch, self.synced) {
            (Some(w), true) => w.take(),
            (Some(w), false) => {
                // Events so far are covered by the walk below.
                let _ = w.take();
                Dirty::Rescan
            }
            (None, _) => Dirty::Rescan,
        };
        let found = match dirty {
            Dirty::Paths(paths) if !paths.iter().any(|p| Scanner::is_ignore_file(p)) => {
                self.scanner.refresh(paths, &self.index, &self.objects)?
            }
            _ => {
                self.scanner.reset();
                self.scanner.full(&self.index, &self.objects)?
            }
        };
        for dir in &found.unreadable {
            let dir = display(dir);
            tracing::warn!(path = %dir, "cannot list this directory: its contents are not covered");
        }
        self.synced = true;
        Ok(found)
    }

    fn absorb(&mut self, found: &Found) {
        for c in &found.changes {
            match &c.after {
                Some(e) => self.index.insert(c.path.clone(), e.clone()),
                None => self.index.remove(&c.path),
            };
        }
        for (p, e) in &found.restat {
            self.index.insert(p.clone(), e.clone());
        }
        // A workspace first seen now turned out large: watch it from here.
        // The next sync walks once more (what changed before the watcher
        // started), then follows its events.
        if self.index.len() >= WATCH_MIN_ENTRIES
            && let Some((root, cookies)) = self.watch_later.take()
        {
            self.watch = start_watch(&root, &cookies);
            self.synced = false;
        }
    }
}

/// Starts the file watcher, or says why a boundary will walk instead.
fn start_watch(root: &Path, cookies: &Path) -> Option<Watch> {
    match Watch::start(root, cookies) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::info!(error = %format!("{e:#}"), "no file watcher: every boundary walks the workspace");
            None
        }
    }
}

/// Records what a sync found between dispatches: its changes as an
/// `outside` dispatch of their own (if any), its restats as entries.
fn record_outside(tx: &mut crate::store::timeline::Tx, ws: i64, found: &Found) -> Result<()> {
    if found.changes.is_empty() {
        return tx.set_entries(ws, found.restat.iter().map(|(p, e)| (p, Some(e))));
    }
    let id = uuid::Uuid::now_v7().to_string();
    tx.insert_dispatch(&id, ws, "-", "outside", "recorded")?;
    let step = tx.open_step(&id, 0, Opener::Outside.as_str(), None)?;
    tx.close_step(ws, step, &found.changes, &found.restat)?;
    tx.end_dispatch(&id, "recorded", None)
}

fn same(a: Option<&Entry>, b: Option<&Entry>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.same_state(b),
        _ => false,
    }
}

/// One writer per workspace: an advisory lock held as long as the timeline
/// is open. A second cairn on the same workspace waits for it.
fn lock_workspace(data: &DataDir, ws: i64, workspace: &Path) -> Result<File> {
    let file = lock_file(data, ws)?;
    let path = lock_path(data, ws);
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            tracing::info!(workspace = %workspace.display(), "another cairn is using this workspace: waiting");
            file.lock()
                .with_context(|| format!("locking {}", path.display()))?;
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    }
    Ok(file)
}

fn lock_path(data: &DataDir, ws: i64) -> PathBuf {
    data.timeline().join("locks").join(format!("{ws}.lock"))
}

/// The file whose advisory lock stands for workspace `ws` (not locked yet).
pub fn lock_file(data: &DataDir, ws: i64) -> Result<File> {
    let path = lock_path(data, ws);
    let dir = path.parent().expect("a lock lives in the locks directory");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    File::create(&path).with_context(|| format!("creating {}", path.display()))
}

/// Finishes work a stopped cairn left (a journaled restore, a dispatch
/// still marked running) in every workspace no live process is using.
pub fn recover_idle(data: &DataDir, store: &Store) -> Result<()> {
    for ws in store.unfinished_workspaces()? {
        let in_use = File::open(lock_path(data, ws))
            .map(|f| matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)))
            .unwrap_or(false);
        let root = store.workspace_path(ws)?;
        let root = Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&root));
        if in_use || !root.is_dir() {
            continue;
        }
        // Opening recovers; the lock is released when it is dropped.
        Timeline::open(data, root, false)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workspace_first_seen_large_is_watched_after_its_first_walk() {
        let (data_dir, ws) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for i in 0..WATCH_MIN_ENTRIES + 10 {
            std::fs::write(ws.path().join(format!("f{i}")), "x").unwrap();
        }
        let data = DataDir::resolve(Some(data_dir.path())).unwrap();
        let root = ws.path().canonicalize().unwrap();
        let mut tl = Timeline::open(&data, &root, true).unwrap();
        assert!(tl.watch.is_none(), "nothing known of it yet");
        let mut active = tl.begin("d", "g", "a2a").unwrap();
        assert!(tl.watch.is_some(), "the first walk showed it is large");
        // Changed while the watcher started: caught by one more walk.
        std::fs::write(root.join("f1"), "changed").unwrap();
        let first = active.step;
        tl.boundary(&mut active, Opener::ToolCall, None).unwrap();
        // From here on, by the watcher's events.
        std::fs::write(root.join("f2"), "changed too").unwrap();
        let second = active.step;
        tl.boundary(&mut active, Opener::ToolCall, None).unwrap();
        let paths = |step: i64| -> Vec<String> {
            tl.store
                .changes(step)
                .unwrap()
                .iter()
                .map(|c| display(&c.path))
                .collect()
        };
        assert_eq!(paths(first), ["f1"]);
        assert_eq!(paths(second), ["f2"]);
    }
}
