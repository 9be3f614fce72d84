//! `cairn diff <step>` / `cairn diff --dispatch ID`: a unified diff of what
//! one step, or each step of a dispatch, changed. Each step's diff follows a
//! `# step …` line naming what opened it (a model call, a tool call with its
//! command or file, a rollback); tools that apply patches skip such lines.

use std::io::Write;

use crate::commands::{Global, open_store};
use crate::error::Failure;
use crate::store::Store;
use crate::store::timeline::StepRow;
use crate::timeline::diff;
use crate::timeline::objects::Objects;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["step", "dispatch"])))]
pub struct DiffCommand {
    /// The step (its number, as `cairn log` shows it)
    pub step: Option<i64>,
    /// Every step of this dispatch, in order (an id or a unique prefix)
    #[arg(long, value_name = "ID")]
    pub dispatch: Option<String>,
}

impl DiffCommand {
    pub fn execute(self, global: &Global) -> Result<(), Failure> {
        let (data, store) = open_store(global)?;
        let steps = match (self.step, &self.dispatch) {
            (Some(id), _) => match store.step(id)? {
                Some(step) => vec![step],
                None => return Err(Failure::Usage(format!("no step {id}"))),
            },
            (None, Some(id)) => match store.find_dispatch(id)? {
                Some(d) => store.steps(&d.id)?,
                None => return Err(Failure::Usage(format!("no dispatch {id}"))),
            },
            (None, None) => return Err(Failure::Usage("name a step or a dispatch".into())),
        };
        let objects = Objects::open(data.timeline().join("objects"))?;
        let mut out = std::io::stdout().lock();
        match write_steps(&mut out, &store, &objects, &steps) {
            // A closed stdout (`cairn diff | head`) is the reader's choice.
            Err(e) if crate::error::is_broken_pipe(&e) => Ok(()),
            Err(e) => Err(Failure::Internal(e)),
            Ok(()) => Ok(()),
        }
    }
}

fn write_steps(
    out: &mut impl Write,
    store: &Store,
    objects: &Objects,
    steps: &[StepRow],
) -> anyhow::Result<()> {
    for step in steps {
        let changes = store.changes(step.id)?;
        let detail = step
            .detail
            .as_deref()
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        writeln!(
            out,
            "# step {} (#{} of dispatch {}, {}{detail}), {} change(s)",
            step.id,
            step.idx,
            step.dispatch,
            step.opened_by,
            changes.len()
        )?;
        for change in &changes {
            diff::write(out, objects, change)?;
        }
    }
    out.flush()?;
    Ok(())
}
