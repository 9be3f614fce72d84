//! `cairn status`: the running daemon's health and latest dispatches, from
//! its API (the observe token is read from the data directory).

use serde_json::Value;

use crate::commands::{Global, block_on, utc};
use crate::daemon::tokens::{self, Scope, Tokens};
use crate::daemon::{Running, running_path};
use crate::data_dir::DataDir;
use crate::error::Failure;

#[derive(clap::Args)]
pub struct StatusCommand {
    /// How many recent dispatches to show
    #[arg(long, short = 'n', default_value_t = 10)]
    pub limit: u32,
}

/// The running daemon of this data directory and a client with one of
/// its tokens.
pub struct Daemon {
    pub running: Running,
    pub client: reqwest::Client,
    pub token: Option<String>,
}

impl Daemon {
    pub fn find(global: &Global, scope: Scope) -> Result<Daemon, Failure> {
        let data = DataDir::resolve(global.data_dir.as_deref())?;
        let path = running_path(&data);
        let text = std::fs::read_to_string(&path).map_err(|_| {
            Failure::Usage(format!(
                "no daemon is running for data directory {} (start one with `cairn up`)",
                data.root().display()
            ))
        })?;
        let running: Running = serde_json::from_str(&text)
            .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
        let token = Tokens::load(&tokens::path(&data))
            .ok()
            .map(|t| t.get(scope).to_string());
        let client = crate::web::client_builder()
            .build()
            .map_err(|e| Failure::Internal(e.into()))?;
        Ok(Daemon {
            running,
            client,
            token,
        })
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.authorized(self.client.get(format!("{}{path}", self.running.url)))
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.authorized(self.client.post(format!("{}{path}", self.running.url)))
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    pub async fn json(&self, path: &str) -> Result<Value, Failure> {
        let unreachable = |e: reqwest::Error| {
            Failure::Usage(format!(
                "the daemon at {} does not answer ({e}); is it still running (pid {})?",
                self.running.url, self.running.pid
            ))
        };
        let r = self.get(path).send().await.map_err(unreachable)?;
        let status = r.status();
        let v: Value = r.json().await.map_err(unreachable)?;
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(Failure::Usage(format!("{path}: {}", v["error"])));
        }
        Ok(v)
    }
}

/// One dispatch as a line: when, id, agent, kind, state, detail.
pub fn dispatch_line(d: &Value) -> String {
    let text = |k: &str| d[k].as_str().unwrap_or("-").to_string();
    let mut line = format!(
        "{}  {}  {:<12} {:<16} {}",
        d["started_at"].as_i64().map(utc).unwrap_or_default(),
        text("id"),
        text("agent"),
        text("kind"),
        d["state"]
            .as_str()
            .unwrap_or(d["status"].as_str().unwrap_or("-")),
    );
    if let Some(detail) = d["detail"].as_str() {
        line.push_str("  ");
        line.push_str(detail);
    }
    line
}

impl StatusCommand {
    pub fn execute(self, global: &Global) -> Result<(), Failure> {
        let daemon = Daemon::find(global, Scope::Observe)?;
        block_on(async {
            let health = daemon.json("/health/ready").await?;
            println!(
                "cairn {} on {} (pid {}): {}",
                daemon.running.url,
                daemon.running.repo.display(),
                daemon.running.pid,
                health["status"].as_str().unwrap_or("?")
            );
            for r in health["reasons"].as_array().into_iter().flatten() {
                println!("  - {}", r.as_str().unwrap_or_default());
            }
            let list = daemon
                .json(&format!("/dispatches?limit={}", self.limit))
                .await?;
            let dispatches = list["dispatches"].as_array().cloned().unwrap_or_default();
            if dispatches.is_empty() {
                println!("no dispatches yet");
            }
            for d in dispatches.iter().rev() {
                println!("{}", dispatch_line(d));
            }
            Ok(())
        })?
    }
}
