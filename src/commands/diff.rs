//! `cairn diff <step>`: a unified diff of what one step changed.

use std::io::Write;

use crate::commands::{Global, open_store};
use crate::error::Failure;
use crate::timeline::diff;

#[derive(clap::Args)]
pub struct DiffCommand {
    /// The step (its number, as `cairn log` shows it)
    pub step: i64,
}

impl DiffCommand {
    pub fn execute(self, global: &Global) -> Result<(), Failure> {
        let (data, store) = open_store(global)?;
        if store.step(self.step)?.is_none() {
            return Err(Failure::Usage(format!("no step {}", self.step)));
        }
        let objects = crate::timeline::objects::Objects::open(data.timeline().join("objects"))?;
        let mut out = std::io::stdout().lock();
        for change in store.changes(self.step)? {
            match diff::write(&mut out, &objects, &change) {
                Err(e) if crate::error::is_broken_pipe(&e) => return Ok(()),
                Err(e) => return Err(Failure::Internal(e)),
                Ok(()) => {}
            }
        }
        let _ = out.flush();
        Ok(())
    }
}
