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
    #[command(flatten)]
    pub webhooks: WebhookAllow,
}

impl ValidateCommand {
    pub fn execute(self) -> Result<(), Failure> {
        let repo = match self.repo {
            Some(r) => r,
            None => std::env::current_dir()
                .map_err(|e| Failure::Usage(format!("the current directory: {e}")))?,
        };
        let report = crate::schedule::validate(&repo, &self.webhooks.hosts());
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

/// `--webhook-allow-host`, shared by `up` and `validate`.
#[derive(clap::Args)]
pub struct WebhookAllow {
    /// A private or loopback host (`host` or `host:port`) webhooks may reach
    /// anyway; repeat for more. Webhooks reach only public addresses otherwise
    #[arg(
        long = "webhook-allow-host",
        value_name = "HOST[:PORT]",
        env = "CAIRN_WEBHOOK_ALLOW_HOSTS",
        value_delimiter = ','
    )]
    pub allow: Vec<String>,
}

impl WebhookAllow {
    /// The entries, trimmed and lowercase.
    pub fn hosts(&self) -> Vec<String> {
        self.allow
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect()
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
