//! The daemon, `cairn up`: every part in one process on one repository.
//! The agents defined in `.cairn/agents/` (see [`crate::agents`]) are served
//! over A2A; the harness queues and runs their dispatches on the timeline;
//! the sidecar (`.cairn/sidecar.toml`, optional) is every guest's road to a
//! model; a second listener serves Prometheus metrics.
//!
//! Start order: configuration (refused with file, line and field before
//! anything listens), tokens, store recovery (interrupted dispatches rolled
//! back, queued ones queued again), listeners, then the guests are prepared
//! in the background while `/health/ready` says so.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::agents::config as agent_config;
use crate::data_dir::DataDir;
use crate::error::Failure;
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::sidecar::{Config, Sidecar};

pub mod api;
pub mod consensus;
pub mod events;
pub mod harness;
pub mod metrics;
pub mod reload;
pub mod tokens;

use harness::Harness;

pub struct Options {
    pub repo: PathBuf,
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub insecure_no_auth: bool,
    pub grace: Duration,
    pub max_body: usize,
    pub slots: u32,
    pub schedule: crate::schedule::Limits,
}

/// Where a running daemon listens, for `cairn status`, `logs` and `token`:
/// `<data>/daemon.json`, removed when it stops.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Running {
    pub url: String,
    pub metrics_url: String,
    pub pid: u32,
    pub repo: PathBuf,
}

pub fn running_path(data: &DataDir) -> PathBuf {
    data.root().join("daemon.json")
}

/// Runs the daemon until Ctrl-C or SIGTERM (a second Ctrl-C exits at once).
pub fn run(opts: Options, data: DataDir) -> Result<(), Failure> {
    let repo = opts
        .repo
        .canonicalize()
        .map_err(|e| Failure::Usage(format!("repository {}: {e}", opts.repo.display())))?;
    if !repo.is_dir() {
        return Err(Failure::Usage(format!(
            "{} is not a directory",
            repo.display()
        )));
    }
    data.check_outside(&repo)
        .map_err(|e| Failure::Usage(format!("{e:#}")))?;
    let (configs, errors) = agent_config::load_all(&repo);
    if !errors.is_empty() {
        let lines: Vec<String> = errors.into_iter().map(|e| e.0).collect();
        return Err(Failure::Usage(lines.join("\n")));
    }
    let report = crate::schedule::validate(&repo, &opts.schedule.webhook_allow);
    for w in &report.warnings {
        tracing::warn!("{w}");
    }
    if !report.errors.is_empty() {
        return Err(Failure::Usage(report.errors.join("\n")));
    }
    if configs.is_empty() {
        return Err(Failure::Usage(format!(
            "{}: no agents (run `cairn init` to make one)",
            agent_config::agents_dir(&repo).display()
        )));
    }
    let sidecar_config = load_sidecar_config(&repo)?;
    let tokens = if opts.insecure_no_auth {
        None
    } else {
        Some(tokens::Tokens::load_or_create(&data)?)
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cairn")
        .build()
        .map_err(|e| Failure::Internal(anyhow::Error::from(e).context("starting the runtime")))?;
    let sandbox = Sandbox::new(&SandboxConfig {
        code_dir: data.code(),
        slots: opts.slots,
    })?;
    let sidecar = Sidecar::start(sidecar_config, &data.store())?;
    sidecar.set_agent_budgets(&harness::budgets(configs.values()));
    let running_file = running_path(&data);
    let agent_names: Vec<String> = configs.keys().cloned().collect();
    let harness = Harness::new(repo.clone(), data, sandbox, sidecar.clone(), configs)?;

    runtime.block_on(async move {
        tokio::task::block_in_place(|| harness.start())?;
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|e| Failure::Usage(format!("cannot listen on {}: {e}", opts.listen)))?;
        let metrics_listener = tokio::net::TcpListener::bind(opts.metrics_listen)
            .await
            .map_err(|e| {
                Failure::Usage(format!("cannot listen on {} (metrics): {e}", opts.metrics_listen))
            })?;
        let addr = listener.local_addr().map_err(|e| Failure::Internal(e.into()))?;
        let maddr = metrics_listener
            .local_addr()
            .map_err(|e| Failure::Internal(e.into()))?;
        let url = format!("http://{addr}");
        let info = Running {
            url: url.clone(),
            metrics_url: format!("http://{maddr}/metrics"),
            pid: std::process::id(),
            repo: repo.clone(),
        };
        let json = serde_json::to_string_pretty(&info).map_err(|e| Failure::Internal(e.into()))?;
        std::fs::write(&running_file, json)
            .with_context(|| format!("writing {}", running_file.display()))?;

        if opts.insecure_no_auth {
            tracing::warn!(
                "AUTHENTICATION IS OFF (--insecure-no-auth): anyone who can reach {url} can run agents and read every conversation"
            );
        }
        println!("cairn is up on {} — {url}", repo.display());
        for name in &agent_names {
            println!("  agent {name}: A2A at {url}/a2a/{name} (card: {url}/a2a/{name}/.well-known/agent-card.json)");
        }
        println!("  metrics: {}", info.metrics_url);
        if opts.insecure_no_auth {
            println!("  auth: OFF");
        } else {
            println!("  tokens: `cairn token` (invoke, observe, admin); send `Authorization: Bearer <token>`");
        }
        if let Some(first) = agent_names.first() {
            println!(
                "  try: curl -s {url}/a2a/{first} -H \"Authorization: Bearer $(cairn token invoke)\" -H 'Content-Type: application/json' \\\n       -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"SendMessage\",\"params\":{{\"message\":{{\"messageId\":\"m1\",\"role\":\"ROLE_USER\",\"parts\":[{{\"text\":\"hello\"}}]}}}}}}'"
            );
        }
        println!("  stop: Ctrl-C (twice to force)");

        let scheduler = crate::schedule::Scheduler::new(harness.clone(), opts.schedule.clone());
        for e in scheduler.start() {
            tracing::error!("{e}");
        }
        let api = Arc::new(api::Api {
            scheduler: scheduler.clone(),
            harness: harness.clone(),
            tokens,
            max_body: opts.max_body,
            base_url: url,
        });
        let metrics = Arc::new(MetricsServer {
            harness: harness.clone(),
        });
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let serving = {
            let mut rx = stop_rx.clone();
            tokio::spawn(crate::web::serve(
                listener,
                api,
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                },
                Duration::from_secs(5),
            ))
        };
        let metrics_serving = {
            let mut rx = stop_rx.clone();
            tokio::spawn(crate::web::serve(
                metrics_listener,
                metrics,
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                },
                Duration::from_secs(1),
            ))
        };
        {
            let h = harness.clone();
            tokio::spawn(async move { h.prepare_all().await });
        }
        let _watcher = match reload::watch(harness.clone(), scheduler.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!("no hot reload ({e}); `POST /admin/reload` still works");
                None
            }
        };

        shutdown_signal().await;
        // A second Ctrl-C while stopping exits at once.
        tokio::spawn(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("cairn: forced exit");
                std::process::exit(130);
            }
        });
        eprintln!(
            "cairn: stopping: no new work; running dispatches get {:?} to finish (Ctrl-C again to force)",
            opts.grace
        );
        harness.shutdown(opts.grace).await;
        let _ = stop_tx.send(true);
        let _ = serving.await;
        let _ = metrics_serving.await;
        let _ = std::fs::remove_file(&running_file);
        Ok::<(), Failure>(())
    })?;
    sidecar.flush();
    eprintln!("cairn: stopped");
    Ok(())
}

/// `.cairn/sidecar.toml` when there is one; otherwise a sidecar with no
/// models (guests asking for one are told so).
fn load_sidecar_config(repo: &std::path::Path) -> Result<Config, Failure> {
    let path = repo.join(".cairn").join("sidecar.toml");
    if path.exists() {
        Config::load(&path).map_err(|e| Failure::Usage(e.to_string()))
    } else {
        Config::parse("", ".cairn/sidecar.toml (absent)", &|name| {
            std::env::var(name).ok()
        })
        .map_err(|e| Failure::Usage(e.to_string()))
    }
}

struct MetricsServer {
    harness: Arc<Harness>,
}

impl crate::web::Handler for MetricsServer {
    async fn handle(
        self: Arc<Self>,
        _peer: SocketAddr,
        req: http::Request<hyper::body::Incoming>,
    ) -> crate::web::Response {
        if req.uri().path() != "/metrics" {
            return crate::web::json_response(
                http::StatusCode::NOT_FOUND,
                &serde_json::json!({ "error": "only /metrics is here" }),
            );
        }
        let mut text = self.harness.metrics.encode();
        text.push_str(&self.harness.sidecar().metrics_text());
        let mut r = http::Response::new(crate::web::full(text));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
        );
        r
    }
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
