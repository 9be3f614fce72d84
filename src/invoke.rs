//! Runs one dispatch on one guest: the contract's input built, the sandbox
//! run, the output read back as a reply. The seam between the contract
//! (`dispatch`) and the runtime (`sandbox`); the harness will call it too.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::dispatch::{Dispatch, Reply};
use crate::sandbox::{Guest, GuestFailure, Invocation, Limits, Sandbox};

/// A dispatch that ran: what it was, what the guest replied, how it ended.
pub struct Outcome {
    pub dispatch: Dispatch,
    pub reply: Reply,
    pub result: Result<(), GuestFailure>,
    pub elapsed: Duration,
}

pub async fn dispatch(
    sandbox: &Sandbox,
    guest: &Guest,
    dispatch: Dispatch,
    workspace: &Path,
    limits: Limits,
) -> Result<Outcome> {
    let invocation = Invocation {
        stdin: dispatch.to_stdin(),
        env: dispatch.env(),
        workspace: workspace.to_path_buf(),
        limits,
        log_tag: Arc::from(dispatch.id.as_str()),
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
