//! `cairn sidecar --config FILE`: the model gateway alone, on a port, for
//! native tools (any OpenAI client) with a bearer key per agent. Runs until
//! Ctrl-C or SIGTERM; calls in flight are given time to finish and every
//! usage row is written before it exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::commands::Global;
use crate::data_dir::DataDir;
use crate::error::Failure;
use crate::sidecar::server::Server;
use crate::sidecar::{Config, Sidecar};

#[derive(clap::Args)]
pub struct SidecarCommand {
    /// The sidecar's configuration: providers, model aliases, prices, budgets, agents' keys
    #[arg(long, short, env = "CAIRN_SIDECAR_CONFIG", value_name = "FILE")]
    pub config: PathBuf,
    /// Where to listen (port 0 picks a free one)
    #[arg(long, default_value = "127.0.0.1:4000", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Threads serving calls. A call costs the sidecar a few microseconds of
    /// its own work, so one thread relays about 18,000 calls/s; more add
    /// cross-thread wake-ups to every call (latency) before they add speed.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
}

impl SidecarCommand {
    pub fn execute(self, global: &Global) -> Result<(), Failure> {
        let config = Config::load(&self.config).map_err(|e| Failure::Usage(e.to_string()))?;
        let data = DataDir::resolve(global.data_dir.as_deref())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(self.threads))
            .enable_all()
            .thread_name("cairn-sidecar")
            .build()
            .map_err(|e| {
                Failure::Internal(anyhow::Error::from(e).context("starting the runtime"))
            })?;
        let sidecar = Sidecar::start(config, &data.store())?;
        let server = Arc::new(Server::new(sidecar.clone()));
        let listen = self.listen;
        let (aliases, origin) = (sidecar.config.models.len(), sidecar.config.origin.clone());
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| Failure::Usage(format!("cannot listen on {listen}: {e}")))?;
            let addr = listener
                .local_addr()
                .map_err(|e| Failure::Internal(e.into()))?;
            if server.agents_with_keys() == 0 {
                tracing::warn!(
                    "no agent has a key (key_env in [agents.<name>] of {}): every /v1 request will be refused",
                    origin
                );
            }
            println!("cairn sidecar listening on http://{addr}/v1");
            eprintln!(
                "cairn: {} model alias(es), {} agent key(s); metrics at http://{addr}/metrics",
                aliases,
                server.agents_with_keys()
            );
            crate::web::serve(listener, server, shutdown_signal(), Duration::from_secs(30)).await;
            Ok::<(), Failure>(())
        })?;
        sidecar.flush();
        Ok(())
    }
}

/// Ctrl-C or SIGTERM, said on stderr.
async fn shutdown_signal() {
    crate::daemon::shutdown_signal().await;
    eprintln!("cairn: shutting down");
}
