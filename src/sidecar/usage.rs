//! The usage writer: one thread that owns a store connection and writes
//! the rows calls hand it, in batches, so no call waits on SQLite (nor
//! wakes a thread: under load the writer takes a batch every [`LINGER`]).

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};

use anyhow::{Context, Result};

use crate::store::Store;
use crate::store::usage::UsageRow;

pub struct Writer {
    tx: Sender<UsageRow>,
    /// Rows sent and rows written, to wait for the writer to catch up.
    progress: Arc<(Mutex<(u64, u64)>, Condvar)>,
}

/// Rows written in one transaction, at most.
const BATCH: usize = 512;

/// How long the writer lets rows gather after a batch that was not full.
/// A row reaches the store at most this much (plus a commit) after its
/// call ended; an idle writer sleeps in `recv`, without waking.
const LINGER: std::time::Duration = std::time::Duration::from_millis(10);

impl Writer {
    pub fn start(store: Store) -> Result<Writer> {
        let (tx, rx) = channel();
        let progress = Arc::new((Mutex::new((0, 0)), Condvar::new()));
        let p = progress.clone();
        std::thread::Builder::new()
            .name("cairn-usage".into())
            .spawn(move || run(store, rx, p))
            .context("starting the usage writer")?;
        Ok(Writer { tx, progress })
    }

    pub fn record(&self, row: UsageRow) {
        let (lock, _) = &*self.progress;
        lock.lock().unwrap_or_else(|p| p.into_inner()).0 += 1;
        // The writer only stops with the process.
        let _ = self.tx.send(row);
    }

    /// Blocks until every row recorded so far is committed.
    pub fn flush(&self) {
        let (lock, cvar) = &*self.progress;
        let mut g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let target = g.0;
        while g.1 < target {
            g = cvar.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}

fn run(mut store: Store, rx: Receiver<UsageRow>, progress: Arc<(Mutex<(u64, u64)>, Condvar)>) {
    let mut batch: Vec<UsageRow> = Vec::with_capacity(BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        batch.extend(rx.try_iter().take(BATCH - 1));
        // A failed write is retried a few times; rows are not dropped
        // silently: the error names how many.
        let mut tries = 0;
        while let Err(e) = store.record_usage(&batch) {
            tries += 1;
            if tries == 5 {
                tracing::error!(
                    "could not write {} usage row(s) to the store: {e:#}",
                    batch.len()
                );
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100 * tries));
        }
        let (lock, cvar) = &*progress;
        lock.lock().unwrap_or_else(|p| p.into_inner()).1 += batch.len() as u64;
        cvar.notify_all();
        let full = batch.len() == BATCH;
        batch.clear();
        // Let the next rows gather: calls then hand theirs over without
        // waking this thread, one wake per batch instead of one per call.
        if !full {
            std::thread::sleep(LINGER);
        }
    }
}
