//! `cairn log [--dispatch ID] [--workspace DIR]`: dispatches and their steps,
//! newest first, with the paths each step changed.

use std::io::Write;
use std::path::PathBuf;

use crate::commands::{Global, open_store};
use crate::error::Failure;
use crate::timeline::entry::display;

#[derive(clap::Args)]
pub struct LogCommand {
    /// Only this dispatch (an id or a unique prefix of one)
    #[arg(long, value_name = "ID")]
    pub dispatch: Option<String>,
    /// Only dispatches on this workspace
    #[arg(long, short, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// How many dispatches to show
    #[arg(long, short = 'n', default_value_t = 20)]
    pub limit: i64,
}

impl LogCommand {
    pub fn execute(self, global: &Global) -> Result<(), Failure> {
        let (_, store) = open_store(global)?;
        let dispatches = match &self.dispatch {
            Some(id) => match store.find_dispatch(id)? {
                Some(d) => vec![d],
                None => return Err(Failure::Usage(format!("no dispatch {id}"))),
            },
            None => {
                let ws = match &self.workspace {
                    Some(dir) => {
                        let dir = dir.canonicalize().map_err(|e| {
                            Failure::Usage(format!("workspace {}: {e}", dir.display()))
                        })?;
                        Some(store.workspace_id(dir.as_os_str().as_encoded_bytes())?)
                    }
                    None => None,
                };
                store.dispatches(ws, self.limit)?
            }
        };
        let mut out = std::io::stdout().lock();
        let mut print = || -> anyhow::Result<()> {
            for d in &dispatches {
                writeln!(
                    out,
                    "dispatch {}  {}  {}  {}  {}  {}",
                    d.id,
                    d.status,
                    d.kind,
                    d.guest,
                    super::utc(d.started_at),
                    d.workspace
                )?;
                if let Some(detail) = &d.detail {
                    writeln!(out, "    {detail}")?;
                }
                for step in store.steps(&d.id)?.iter().rev() {
                    let changes = store.changes(step.id)?;
                    let detail = step
                        .detail
                        .as_deref()
                        .map(|t| format!("  {t}"))
                        .unwrap_or_default();
                    let open = if step.ended_at.is_none() {
                        "  (open)"
                    } else {
                        ""
                    };
                    writeln!(
                        out,
                        "  step {}  #{} {}  {} change(s){open}{detail}",
                        step.id,
                        step.idx,
                        step.opened_by,
                        changes.len()
                    )?;
                    for c in &changes {
                        writeln!(out, "    {} {}", c.kind().letter(), display(&c.path))?;
                    }
                }
            }
            out.flush()?;
            Ok(())
        };
        // A closed stdout (`cairn log | head`) is the reader's choice.
        match print() {
            Err(e) if !crate::error::is_broken_pipe(&e) => Err(Failure::Internal(e)),
            _ => Ok(()),
        }
    }
}
