//! `cairn init [DIR]`: scaffolds `.cairn/` with an `echo` agent that works
//! with no API key, and commented examples of everything else.

use std::path::PathBuf;

use crate::error::Failure;

#[derive(clap::Args)]
pub struct InitCommand {
    /// The repository [default: the current directory]
    pub dir: Option<PathBuf>,
}

impl InitCommand {
    pub fn execute(self) -> Result<(), Failure> {
        let dir = match self.dir {
            Some(d) => d,
            None => std::env::current_dir()
                .map_err(|e| Failure::Usage(format!("the current directory: {e}")))?,
        };
        if !dir.is_dir() {
            return Err(Failure::Usage(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
        let written = crate::agents::scaffold::scaffold(&dir)
            .map_err(|e| Failure::Usage(format!("{e:#}")))?;
        for p in &written {
            println!("created {}", p.strip_prefix(&dir).unwrap_or(p).display());
        }
        println!(
            "next: cairn up --repo {}   (the echo agent needs no API key)",
            dir.display()
        );
        Ok(())
    }
}
