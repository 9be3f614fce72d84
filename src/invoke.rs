//! Runs one dispatch on one guest: the contract's input built, the sandbox
//! run, the output read back as a reply. The seam between the contract
//! (`dispatch`) and the runtime (`sandbox`); the harness will call it too.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;

use crate::dispatch::{Dispatch, Reply};
use crate::sandbox::{Guest, GuestFailure, Invocation, Limits, Outbound, Sandbox};
use crate::sidecar::{Caller, GUEST_HOST, GuestPort, Sidecar, Steps};
use crate::timeline::{Active, Opener, Timeline};

/// A dispatch that ran: what it was, what the guest replied, how it ended.
pub struct Outcome {
    pub dispatch: Dispatch,
    pub reply: Reply,
    pub result: Result<(), GuestFailure>,
    pub elapsed: Duration,
}

/// What a dispatch sees beyond the contract: more directories (host,
/// guest path, writable) and the variables that name them.
#[derive(Default)]
pub struct Extra {
    pub mounts: Vec<(std::path::PathBuf, String, bool)>,
    pub env: Vec<(String, String)>,
}

/// What a dispatch's guest may reach: the sidecar (when there is one),
/// bound to this agent and dispatch, and the hosts it is allowed;
/// `allow_entry` names where a denied host would be allowed.
pub fn outbound(
    sidecar: Option<&Arc<Sidecar>>,
    agent: &str,
    dispatch: &Dispatch,
    marks: Arc<Marks>,
    allow_hosts: Vec<String>,
    allow_entry: String,
) -> Outbound {
    let Some(sidecar) = sidecar else {
        return Outbound {
            allow_entry,
            ..Outbound::default()
        };
    };
    let caller = Caller {
        agent: agent.into(),
        dispatch: Some(dispatch.id.clone()),
        max_tokens: dispatch.max_tokens,
        steps: Some(marks),
    };
    Outbound {
        local: vec![(
            GUEST_HOST.to_string(),
            Arc::new(GuestPort {
                sidecar: sidecar.clone(),
                caller,
            }),
        )],
        allow_hosts,
        allow_entry,
        client: Some(sidecar.outside_client()),
    }
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
    dispatch_with(
        sandbox,
        guest,
        dispatch,
        workspace,
        limits,
        outbound,
        Extra::default(),
    )
    .await
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
    extra: Extra,
) -> Result<Outcome> {
    let mut env = dispatch.env();
    env.extend(extra.env);
    if outbound.local.iter().any(|(host, _)| host == GUEST_HOST) {
        env.push(("OPENAI_BASE_URL".into(), format!("http://{GUEST_HOST}/v1")));
    }
    let broker = crate::broker::BROKER_HOST;
    if outbound.local.iter().any(|(host, _)| host == broker) {
        env.push(("CAIRN_BROKER_URL".into(), format!("http://{broker}")));
    }
    let invocation = Invocation {
        stdin: dispatch.to_stdin(),
        env,
        workspace: workspace.to_path_buf(),
        mounts: extra.mounts,
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
    on_step: Option<StepHook>,
}

/// Told of each step a model call opened: (dispatch, step id, detail).
pub type StepHook = Box<dyn Fn(&str, i64, &str) + Send + Sync>;

impl Marks {
    pub fn new(timeline: Timeline, active: Active) -> Arc<Marks> {
        Marks::with_hook(timeline, active, None)
    }

    pub fn with_hook(timeline: Timeline, active: Active, on_step: Option<StepHook>) -> Arc<Marks> {
        Arc::new(Marks {
            inner: Mutex::new(Some((timeline, active))),
            on_step,
        })
    }

    pub fn take(&self) -> Option<(Timeline, Active)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Steps for Marks {
    fn model_call(&self, detail: &str) -> Option<i64> {
        self.mark(Opener::ModelCall, detail)
    }
}

impl Marks {
    /// Closes the open step and opens the next, for `opener` (a model or a
    /// tool call). Returns the new step's id. Blocking.
    pub fn mark(&self, opener: Opener, detail: &str) -> Option<i64> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (timeline, active) = guard.as_mut()?;
        match timeline.boundary(active, opener, Some(detail)) {
            Ok(step) => {
                if let Some(hook) = &self.on_step {
                    hook(&active.id, step, detail);
                }
                Some(step)
            }
            Err(e) => {
                tracing::warn!(dispatch = %active.id, "could not mark a step at a {}: {e:#}", opener.as_str());
                None
            }
        }
    }

    /// Whether the dispatch changed anything so far (as of the last
    /// boundary).
    pub fn changed(&self) -> bool {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().is_some_and(|(timeline, active)| {
            timeline
                .store()
                .dispatch_changed(&active.id)
                .unwrap_or(true)
        })
    }

    /// Replaces the detail of a step of this dispatch (a command's exit
    /// code, known once it ended).
    pub fn describe(&self, step: i64, detail: &str) {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((timeline, _)) = guard.as_ref()
            && let Err(e) = timeline.store().set_step_detail(step, detail)
        {
            tracing::warn!("recording step {step}'s detail: {e:#}");
        }
    }
}
