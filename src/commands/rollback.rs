//! `cairn rollback <step|dispatch> [--force]`: puts back every path a step
//! or a dispatch changed, as it was before. Refuses when one of them has
//! changed since, unless `--force`. The rollback is recorded as a dispatch
//! of its own, so it can be rolled back too.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::commands::{Global, open_store};
use crate::error::Failure;
use crate::timeline::{Target, Timeline};

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
        let (target, dispatch) = if self.target.bytes().all(|b| b.is_ascii_digit()) {
            let id: i64 = self
                .target
                .parse()
                .map_err(|_| Failure::Usage(format!("no step {}", self.target)))?;
            let Some(step) = store.step(id)? else {
                return Err(Failure::Usage(format!("no step {id}")));
            };
            (Target::Step(id), step.dispatch)
        } else {
            let Some(d) = store.find_dispatch(&self.target)? else {
                return Err(Failure::Usage(format!(
                    "no dispatch or step {}",
                    self.target
                )));
            };
            (Target::Dispatch(d.id.clone()), d.id)
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
        let what = match &target {
            Target::Step(s) => format!("step {s}"),
            Target::Dispatch(d) => format!("dispatch {d}"),
        };
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
