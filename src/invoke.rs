//! Runs one dispatch on one guest: the contract's input built, the sandbox
//! run, the output read back as a reply. The seam between the contract
//! (`dispatch`) and the runtime (`sandbox`); the harness will call it too.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;

use crate::dispatch::{Dispatch, Reply};
use crate::sandbox::{Guest, GuestFailure, Invocation, Limits, Outbound, Sandbox};
use crate::sidecar::{GUEST_HOST, Steps};
use crate::timeline::{Active, Opener, Timeline};

/// A dispatch that ran: what it was, what the guest replied, how it ended.
pub struct Outcome {
    pub dispatch: Dispatch,
    pub reply: Reply,
    pub result: Result<(), GuestFailure>,
    pub elapsed: Duration,
}

/// Runs a dispatch with no outbound HTTP at all.
pub async fn dispatch(
    sandbox: &Sandbox,
    guest: &Guest,
    dispatch: Dispatch,
    workspace: &Path,
    limits: Limits,
) -> Result<Outcome> {
    let outbound = Arc::new(Outbound {
        allow_entry: "a sidecar configuration".into(),
        ..Outbound::default()
    });
    dispatch_with(sandbox, guest, dispatch, workspace, limits, outbound).await
}

/// Runs a dispatch that may reach what `outbound` allows. When the sidecar
/// is among its in-process hosts, the guest finds it in `OPENAI_BASE_URL`.
pub async fn dispatch_with(
    sandbox: &Sandbox,
    guest: &Guest,
    dispatch: Dispatch,
    workspace: &Path,
    limits: Limits,
    outbound: Arc<Outbound>,
) -> Result<Outcome> {
    let mut env = dispatch.env();
    if outbound.local.iter().any(|(host, _)| host == GUEST_HOST) {
        env.push(("OPENAI_BASE_URL".into(), format!("http://{GUEST_HOST}/v1")));
    }
    let invocation = Invocation {
        stdin: dispatch.to_stdin(),
        env,
        workspace: workspace.to_path_buf(),
        limits,
        log_tag: Arc::from(dispatch.id.as_str()),
        outbound,
    };
    let finished = sandbox.run(guest, invocation).await?;
    let reply = Reply::parse(&finished.stdout);
    if reply.lines_after_final > 0 {
        tracing::warn!(
            dispatch = %dispatch.id,
            "guest {} wrote {} line(s) after its final event; ignored",
            guest.name,
            reply.lines_after_final
        );
    }
    Ok(Outcome {
        dispatch,
        reply,
        result: finished.outcome,
        elapsed: finished.elapsed,
    })
}

/// The timeline of a running dispatch, shared with the sidecar so each
/// model call marks a step boundary. Taken back when the dispatch ends.
pub struct Marks {
    inner: Mutex<Option<(Timeline, Active)>>,
}

impl Marks {
    pub fn new(timeline: Timeline, active: Active) -> Arc<Marks> {
        Arc::new(Marks {
            inner: Mutex::new(Some((timeline, active))),
        })
    }

    pub fn take(&self) -> Option<(Timeline, Active)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Steps for Marks {
    fn model_call(&self, detail: &str) -> Option<i64> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (timeline, active) = guard.as_mut()?;
        match timeline.boundary(active, Opener::ModelCall, Some(detail)) {
            Ok(step) => Some(step),
            Err(e) => {
                tracing::warn!(dispatch = %active.id, "could not mark a step at a model call: {e:#}");
                None
            }
        }
    }
}
