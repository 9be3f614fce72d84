//! The daemon's event stream: dispatch and step events, told to every
//! `/events` subscriber and to callers waiting on a task. A subscriber that
//! falls behind loses events (it is told so) and never slows a dispatch.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::sync::broadcast;

/// How many events a slow subscriber may fall behind before losing some.
const BACKLOG: usize = 4096;

#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub seq: u64,
    pub at: i64,
    /// `dispatch.queued`, `dispatch.started`, `step`, `dispatch.ended`,
    /// `config.reloaded`, `config.rejected`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dispatch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The task's state after the event (`submitted`, `working`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Event {
    pub fn new(kind: &'static str) -> Event {
        Event {
            seq: 0,
            at: crate::store::now_ms(),
            kind,
            agent: None,
            dispatch: None,
            session: None,
            state: None,
            step: None,
            detail: None,
        }
    }
}

pub struct Events {
    tx: broadcast::Sender<Event>,
    seq: AtomicU64,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(BACKLOG).0,
            seq: AtomicU64::new(1),
        }
    }
}

impl Events {
    pub fn send(&self, mut event: Event) {
        event.seq = self.seq.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(kind = event.kind, dispatch = ?event.dispatch, state = ?event.state, "event");
        // No subscriber is not an error.
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
