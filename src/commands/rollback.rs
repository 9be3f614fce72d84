//! `cairn rollback <step|dispatch> [--force]`: puts back every path a step
//! or a dispatch changed, as it was before. Refuses when one of them has
//! changed since, unless `--force`. The rollback is recorded as a dispatch
//! of its own, so it can be rolled back too.
//!
//! While a daemon runs on the workspace it holds the workspace's lock: the
//! rollback is then asked of it (`POST /admin/rollback`, the admin token
//! read from the data directory) and runs between its dispatches.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde_json::{Value, json};

use crate::commands::status::Daemon;
use crate::commands::{Global, block_on, open_store};
use crate::daemon::tokens::Scope;
use crate::error::Failure;
use crate::timeline::{Conflict, Target, Timeline};

#[derive(clap::Args)]
pub struct RollbackCommand {
    /// A step number, or a dispatch id (or a unique prefix of one)
    pub target: String,
    /// Overwrite paths that changed since
    #[arg(long)]
    pub force: bool,
}

impl RollbackCommand {
    pub fn execute(self, global: &Global) -> Result<(), Failure> {
        let (data, store) = open_store(global)?;
        let Some((target, dispatch)) = Target::find(&store, &self.target)? else {
            return Err(Failure::Usage(Target::not_found(&self.target)));
        };
        let ws = store.dispatch_workspace(&dispatch)?;
        let path = store.workspace_path(ws)?;
        let path = Path::new(OsStr::from_bytes(&path));
        if !path.is_dir() {
            return Err(Failure::Usage(format!(
                "workspace {} of dispatch {dispatch} no longer exists",
                path.display()
            )));
        }
        drop(store);
        if let Some(done) = through_daemon(global, path, &self.target, self.force)? {
            println!("{done}");
            return Ok(());
        }
        let mut timeline = Timeline::open(&data, path, false)?;
        let undone =
            timeline.rollback(&target, self.force).map_err(|e| match e
                .downcast::<crate::timeline::Conflict>()
            {
                Ok(c) => Failure::Conflict(c),
                Err(e) => Failure::Internal(e),
            })?;
        for w in &undone.warnings {
            eprintln!("cairn: warning: {w}");
        }
        let what = target.describe();
        match undone.step {
            Some(step) if undone.paths > 0 => println!(
                "rolled back {what}: {} path(s) restored in {} (recorded as step {step}; `cairn rollback {step}` undoes it)",
                undone.paths,
                path.display()
            ),
            _ => println!("rolled back {what}: nothing to restore, the workspace already matches"),
        }
        Ok(())
    }
}

/// Asks the daemon running on `path`, if there is one, to do the rollback:
/// its report, or None when no daemon answers for that workspace.
fn through_daemon(
    global: &Global,
    path: &Path,
    target: &str,
    force: bool,
) -> Result<Option<String>, Failure> {
    let Ok(daemon) = Daemon::find(global, Scope::Admin) else {
        return Ok(None);
    };
    if daemon.running.repo != path {
        return Ok(None);
    }
    block_on(async {
        let sent = daemon
            .post("/admin/rollback")
            .json(&json!({ "target": target, "force": force }))
            .send()
            .await;
        // A daemon.json left by a daemon that was killed: nobody holds the
        // workspace, do it here.
        let Ok(r) = sent else { return Ok(None) };
        let status = r.status();
        let v: Value = r
            .json()
            .await
            .map_err(|e| Failure::Usage(format!("the daemon's answer: {e}")))?;
        if status.is_success() {
            let what = v["rolled_back"].as_str().unwrap_or(target);
            return Ok(Some(match v["step"].as_i64() {
                Some(step) if v["paths"].as_u64().unwrap_or(0) > 0 => format!(
                    "rolled back {what}: {} path(s) restored in {} by the daemon (recorded as step {step}; `cairn rollback {step}` undoes it)",
                    v["paths"],
                    path.display()
                ),
                _ => {
                    format!("rolled back {what}: nothing to restore, the workspace already matches")
                }
            }));
        }
        let c = &v["conflict"];
        if let (Some(what), Some(count), Some(list)) =
            (c["what"].as_str(), c["count"].as_u64(), c["list"].as_str())
        {
            return Err(Failure::Conflict(Conflict {
                what: what.to_string(),
                count: count as usize,
                list: list.to_string(),
            }));
        }
        let why = v["error"].as_str().unwrap_or("no reason given");
        Err(Failure::Usage(format!("the daemon refused: {why}")))
    })?
}
