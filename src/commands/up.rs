//! `cairn up [--repo DIR]`: the daemon on a repository, until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::value_parser;

use crate::commands::Global;
use crate::daemon::{self, Options};
use crate::data_dir::DataDir;
use crate::error::Failure;

#[derive(clap::Args)]
pub struct UpCommand {
    /// The repository (its `.cairn/agents/` defines the agents) [default: the current directory]
    #[arg(long, value_name = "DIR")]
    pub repo: Option<PathBuf>,
    /// Where the API (A2A, dispatches, events) listens; port 0 picks a free one
    #[arg(long, default_value = "127.0.0.1:7700", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Where Prometheus metrics are served
    #[arg(long, default_value = "127.0.0.1:7701", value_name = "ADDR")]
    pub metrics_listen: SocketAddr,
    /// Scaffold .cairn/ first (as `cairn init`) when the repository has none
    #[arg(long)]
    pub init: bool,
    /// Serve without tokens (local development only; warned about on every start)
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Seconds running dispatches get to finish at shutdown before they are rolled back
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub grace: u64,
    /// Largest request body (and so prompt), in bytes; 413 past it
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES", value_parser = value_parser!(u64).range(1024..=(1 << 30)))]
    pub max_body: u64,
    /// How many guests may run at once
    #[arg(long, default_value_t = 16, value_parser = value_parser!(u32).range(1..=1024))]
    pub slots: u32,
    /// Jobs that may run at once over all agents; a job due past it is skipped
    #[arg(long, default_value_t = 8, value_parser = value_parser!(u32).range(1..=10_000))]
    pub max_jobs: u32,
    #[command(flatten)]
    pub webhooks: crate::commands::validate::WebhookAllow,
    /// Let prompt files read environment variables whose names start with
    /// PREFIX as `{{env.VAR}}` (off unless given; repeat for more)
    #[arg(
        long = "prompt-env",
        value_name = "PREFIX",
        env = "CAIRN_PROMPT_ENV",
        value_delimiter = ','
    )]
    pub prompt_env: Vec<String>,
}

impl UpCommand {
    pub fn execute(self, global: &Global) -> Result<(), Failure> {
        let repo = match self.repo {
            Some(r) => r,
            None => std::env::current_dir()
                .map_err(|e| Failure::Usage(format!("the current directory: {e}")))?,
        };
        if self.init && !crate::agents::config::agents_dir(&repo).exists() {
            crate::commands::init::InitCommand {
                dir: Some(repo.clone()),
                ..Default::default()
            }
            .execute()?;
        }
        let data = DataDir::resolve(global.data_dir.as_deref())?;
        daemon::run(
            Options {
                repo,
                listen: self.listen,
                metrics_listen: self.metrics_listen,
                insecure_no_auth: self.insecure_no_auth,
                grace: Duration::from_secs(self.grace),
                max_body: self.max_body as usize,
                slots: self.slots,
                schedule: crate::schedule::Limits {
                    max_jobs: self.max_jobs as usize,
                    webhook_allow: self.webhooks.hosts(),
                    prompt_env: self
                        .prompt_env
                        .iter()
                        .filter(|p| !p.trim().is_empty())
                        .map(|p| p.trim().to_string())
                        .collect(),
                    ..Default::default()
                },
            },
            data,
        )
    }
}
