//! `cairn doctor`: what this machine gives cairn — how commands run through
//! the tool broker can be confined (Landlock, namespaces), whether git is
//! there for worktrees, and where the data directory is.

use crate::broker::confine::Support;
use crate::commands::Global;
use crate::data_dir::DataDir;
use crate::error::Failure;

#[derive(clap::Args)]
pub struct DoctorCommand {}

impl DoctorCommand {
    pub fn execute(self, global: &Global) -> Result<(), Failure> {
        let support = Support::detect();
        println!("tool broker confinement:");
        for line in support.describe() {
            println!("  {line}");
        }
        if support.confined() {
            println!("  → commands run confined");
        } else {
            println!(
                "  → no confinement: `run` is refused unless an agent's [tools] has accept_unconfined = true"
            );
        }
        let git = std::process::Command::new("git").arg("--version").output();
        match git {
            Ok(out) if out.status.success() => {
                println!("git: {}", String::from_utf8_lossy(&out.stdout).trim())
            }
            _ => println!("git: not found (isolation = \"worktree\" needs it)"),
        }
        match DataDir::resolve(global.data_dir.as_deref()) {
            Ok(data) => println!("data directory: {}", data.root().display()),
            Err(e) => println!("data directory: {e:#}"),
        }
        Ok(())
    }
}
