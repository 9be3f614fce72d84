//! Hot reload: `.cairn/` is watched (the `notify` crate); after a quiet
//! moment every agent is read again. Valid edits apply without a restart;
//! an agent whose edit is invalid keeps its last good version and the
//! error is logged, kept for `/health/ready`, and sent as an event. The
//! same path serves `POST /admin/reload`.

use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use super::events::Event;
use super::harness::Harness;
use crate::agents::config as agent_config;
use crate::schedule::Scheduler;

/// Editors write a file in several steps; reload once they are done.
const QUIET: Duration = Duration::from_millis(300);

/// Starts the watcher; it lives as long as the returned value.
pub fn watch(
    harness: Arc<Harness>,
    scheduler: Arc<Scheduler>,
) -> notify::Result<notify::RecommendedWatcher> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&harness.repo.join(".cairn"), RecursiveMode::Recursive)?;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Wait until the edits stop, then read everything once.
            while let Ok(Some(())) = tokio::time::timeout(QUIET, rx.recv()).await {}
            // A dispatch in the repository may be about to roll its edits
            // back: read the agents once it has ended.
            while harness.shared_busy() {
                tokio::time::sleep(QUIET).await;
            }
            while let Ok(Some(())) = tokio::time::timeout(QUIET, rx.recv()).await {}
            reload(&harness, &scheduler).await;
        }
    });
    Ok(watcher)
}

/// Reads every agent again, and their prompt files, and applies what is
/// valid. Returns the errors.
pub async fn reload(harness: &Arc<Harness>, scheduler: &Scheduler) -> Vec<String> {
    let (configs, errors) = agent_config::load_all(&harness.repo);
    let mut errors: Vec<String> = errors.into_iter().map(|e| e.0).collect();
    harness.apply(configs, &errors).await;
    errors.extend(scheduler.reload());
    harness.metrics.reload(errors.is_empty());
    let mut event = Event::new(if errors.is_empty() {
        "config.reloaded"
    } else {
        "config.rejected"
    });
    if errors.is_empty() {
        tracing::info!("agents reloaded");
        *harness
            .config_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    } else {
        for e in &errors {
            tracing::error!("{e}; keeping the last good version");
        }
        event.detail = Some(errors.join("; "));
        *harness
            .config_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(errors.join("; "));
    }
    harness.events.send(event);
    errors
}
