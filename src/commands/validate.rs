//! `cairn validate [--repo DIR]`: reads every agent directory of a
//! repository (its `agent.toml` and prompt files) as `cairn up` would, and
//! reports each problem as `file:line: field: why`, without running
//! anything. Exit 0 when valid (warnings are printed), 2 otherwise.

use std::path::PathBuf;

use crate::agents::config as agent_config;
use crate::error::Failure;

#[derive(clap::Args)]
pub struct ValidateCommand {
    /// The repository (default: the current directory)
    #[arg(long, value_name = "DIR")]
    pub repo: Option<PathBuf>,
    /// Private hosts webhooks may reach, as `cairn up --webhook-allow-host`
    #[arg(
        long = "webhook-allow-host",
        value_name = "HOST[:PORT]",
        env = "CAIRN_WEBHOOK_ALLOW_HOSTS",
        value_delimiter = ','
    )]
    pub webhook_allow: Vec<String>,
}

impl ValidateCommand {
    pub fn execute(self) -> Result<(), Failure> {
        let repo = match self.repo {
            Some(r) => r,
            None => std::env::current_dir()
                .map_err(|e| Failure::Usage(format!("the current directory: {e}")))?,
        };
        let report = crate::schedule::validate(&repo, &self.webhook_allow);
        for w in &report.warnings {
            eprintln!("cairn: warning: {w}");
        }
        if !report.errors.is_empty() {
            return Err(Failure::Usage(report.errors.join("\n")));
        }
        println!("{}", report.summary);
        Ok(())
    }
}

/// Agent configs for [`crate::schedule::validate`].
pub fn agents(
    repo: &std::path::Path,
) -> (
    std::collections::BTreeMap<String, agent_config::AgentConfig>,
    Vec<String>,
) {
    let (configs, errors) = agent_config::load_all(repo);
    (configs, errors.into_iter().map(|e| e.0).collect())
}
