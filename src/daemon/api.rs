//! The daemon's HTTP API, one listener:
//!
//! | path | token | what |
//! |---|---|---|
//! | `GET /health/live`, `/health/ready`, `/health/start` | none | probes |
//! | `GET /.well-known/agent-card.json` (1.0), `/.well-known/agent.json` (0.3) | none | the card, when there is one agent |
//! | `GET /a2a/{agent}/.well-known/agent-card.json`, `…/agent.json` | none | each agent's card |
//! | `POST /a2a/{agent}` | invoke | A2A JSON-RPC, 1.0 and 0.3 |
//! | `GET /dispatches`, `/dispatches/{id}`, `/conversations`, `/events` | observe | what happened, and the live stream |
//! | `POST /admin/dispatch`, `/admin/reload`, `/admin/rollback` | admin | manual runs, reload, undo |
//! | `POST /triggers/{endpoint}` | HMAC signature or invoke | a trigger's dispatch |
//! | `GET /heartbeat`, `/jobs`, `/tasks`, `/triggers`, `/continuations`, `/webhooks` | observe | the scheduler's items |
//! | `POST /jobs/{name}/run`, `/tasks/…`, `/triggers/…`, `/heartbeat/run` | admin | a manual fire |
//! | `GET /.well-known/agent-triggers.json` | none | the enabled triggers |
//!
//! The admin token is accepted wherever another is. Cards and probes reveal
//! no conversation and change nothing, so they are open.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::events::Event;
use super::harness::{Harness, Refused, Request, RollbackRefused};
use super::tokens::{Scope, Tokens};
use crate::a2a::wire::{
    self, Artifact, CardInfo, Method as RpcMethod, Msg, Params, Role, RpcError, Skill, State,
    TaskView, Version,
};
use crate::dispatch::Kind;
use crate::store::tasks::TaskRow;
use crate::web::{self, Body, BodyError, Handler, Response, json_response};

pub struct Api {
    pub harness: Arc<Harness>,
    pub scheduler: Arc<crate::schedule::Scheduler>,
    /// None: `--insecure-no-auth`.
    pub tokens: Option<Tokens>,
    pub max_body: usize,
    /// The URL callers reach this listener at, for the cards.
    pub base_url: String,
}

fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    json_response(status, &json!({ "error": message.into() }))
}

impl Handler for Api {
    async fn handle(self: Arc<Self>, _peer: SocketAddr, req: http::Request<Incoming>) -> Response {
        let path = req.uri().path().to_string();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let method = req.method().clone();
        match (&method, segments.as_slice()) {
            (&Method::GET, ["health", probe]) => self.health(probe),
            (&Method::GET, [".well-known", file]) if *file != "agent-triggers.json" => {
                let agents = self.harness.agents();
                match agents.keys().next() {
                    Some(only) if agents.len() == 1 => self.card(only, file),
                    _ => problem(
                        StatusCode::NOT_FOUND,
                        format!(
                            "{} agents: each card is at /a2a/<agent>/.well-known/{file} ({})",
                            agents.len(),
                            agents.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    ),
                }
            }
            (&Method::GET, ["a2a", agent, ".well-known", file]) => self.card(agent, file),
            (&Method::POST, ["a2a", agent]) => {
                if let Some(r) = self.refuse(&req, Scope::Invoke) {
                    return r;
                }
                let agent = agent.to_string();
                self.rpc(agent, req).await
            }
            (&Method::GET, ["dispatches"]) => match self.refuse(&req, Scope::Observe) {
                Some(r) => r,
                None => self.dispatches(&query(&req)),
            },
            (&Method::GET, ["dispatches", id]) => match self.refuse(&req, Scope::Observe) {
                Some(r) => r,
                None => self.dispatch(id),
            },
            (&Method::GET, ["conversations"]) => match self.refuse(&req, Scope::Observe) {
                Some(r) => r,
                None => self.conversations(&query(&req)),
            },
            (&Method::GET, ["events"]) => match self.refuse(&req, Scope::Observe) {
                Some(r) => r,
                None => self.events(),
            },
            (&Method::POST, ["admin", "reload"]) => match self.refuse(&req, Scope::Admin) {
                Some(r) => r,
                None => {
                    let errors = super::reload::reload(&self.harness, &self.scheduler).await;
                    let status = if errors.is_empty() {
                        StatusCode::OK
                    } else {
                        StatusCode::UNPROCESSABLE_ENTITY
                    };
                    json_response(
                        status,
                        &json!({ "applied": errors.is_empty(), "errors": errors }),
                    )
                }
            },
            (&Method::POST, ["admin", "dispatch"]) => match self.refuse(&req, Scope::Admin) {
                Some(r) => r,
                None => self.manual(req).await,
            },
            (&Method::POST, ["admin", "rollback"]) => match self.refuse(&req, Scope::Admin) {
                Some(r) => r,
                None => self.rollback(req).await,
            },
            (&Method::POST, ["triggers", endpoint]) => {
                let endpoint = endpoint.to_string();
                self.trigger(&endpoint, req).await
            }
            (&Method::GET, [".well-known", "agent-triggers.json"]) => json_response(
                StatusCode::OK,
                &self.scheduler.trigger_descriptors(&self.base_url),
            ),
            (
                &Method::GET,
                [
                    list @ ("heartbeat" | "jobs" | "tasks" | "triggers" | "continuations"
                    | "webhooks"),
                ],
            ) => match self.refuse(&req, Scope::Observe) {
                Some(r) => r,
                None => json_response(
                    StatusCode::OK,
                    &self.scheduler.list(list.trim_end_matches('s')),
                ),
            },
            (&Method::POST, ["validate"]) => match self.refuse(&req, Scope::Admin) {
                Some(r) => r,
                None => {
                    let report =
                        crate::schedule::validate(&self.harness.repo, &self.scheduler.allow());
                    let status = if report.errors.is_empty() {
                        StatusCode::OK
                    } else {
                        StatusCode::UNPROCESSABLE_ENTITY
                    };
                    json_response(
                        status,
                        &json!({ "valid": report.errors.is_empty(), "report": report }),
                    )
                }
            },
            (&Method::POST, ["heartbeat", "run"]) => match self.refuse(&req, Scope::Admin) {
                Some(r) => r,
                None => self.run_now("heartbeat", "heartbeat", &req),
            },
            (&Method::POST, [list @ ("jobs" | "tasks" | "triggers"), name, "run"]) => {
                match self.refuse(&req, Scope::Admin) {
                    Some(r) => r,
                    None => self.run_now(list.trim_end_matches('s'), name, &req),
                }
            }
            (
                _,
                ["health", _] | ["dispatches"] | ["dispatches", _] | ["conversations"] | ["events"],
            )
            | (_, ["a2a", _] | ["a2a", _, ".well-known", _] | [".well-known", _])
            | (_, ["admin", _]) => problem(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on {path}"),
            ),
            _ => problem(StatusCode::NOT_FOUND, format!("no such path: {path}")),
        }
    }
}

fn scheduler_refusal(r: crate::schedule::Refusal) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = problem(status, r.message);
    if let Some(after) = r.retry_after {
        resp.headers_mut()
            .insert(http::header::RETRY_AFTER, after.into());
    }
    resp
}

/// The query string as a map (a repeated key keeps its last value).
fn query(req: &http::Request<Incoming>) -> HashMap<String, String> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn limit(q: &HashMap<String, String>) -> i64 {
    q.get("limit")
        .and_then(|l| l.parse::<i64>().ok())
        .unwrap_or(50)
        .clamp(1, 1000)
}

impl Api {
    fn refuse(&self, req: &http::Request<Incoming>, scope: Scope) -> Option<Response> {
        let tokens = self.tokens.as_ref()?;
        let presented = web::bearer(req.headers());
        let why = match presented {
            None => format!(
                "missing token: send `Authorization: Bearer <the {} token>` (`cairn token {}`)",
                scope.as_str(),
                scope.as_str()
            ),
            Some(t) if tokens.grants(scope, t) => return None,
            Some(_) => format!("this token does not grant {}", scope.as_str()),
        };
        self.harness.metrics.requests_unauthorized.inc();
        let mut r = problem(StatusCode::UNAUTHORIZED, why);
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
        Some(r)
    }

    fn health(&self, probe: &str) -> Response {
        let h = &self.harness;
        let ready = h.ready.load(std::sync::atomic::Ordering::SeqCst);
        match probe {
            "live" => json_response(StatusCode::OK, &json!({ "status": "live" })),
            "start" if ready => json_response(StatusCode::OK, &json!({ "status": "started" })),
            "start" => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "status": "starting", "reasons": ["preparing the agents' guests"] }),
            ),
            "ready" => {
                let mut reasons = Vec::new();
                if !ready {
                    reasons.push("starting: preparing the agents' guests".to_string());
                } else {
                    for (name, agent) in h.agents().iter() {
                        for p in &agent.problems {
                            reasons.push(format!("agent {name}: {p}"));
                        }
                    }
                }
                if let Some(e) = h
                    .config_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                {
                    reasons.push(format!("configuration refused (last good kept): {e}"));
                }
                if reasons.is_empty() {
                    json_response(StatusCode::OK, &json!({ "status": "ready" }))
                } else {
                    let status = if ready { "degraded" } else { "starting" };
                    json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({ "status": status, "reasons": reasons }),
                    )
                }
            }
            _ => problem(
                StatusCode::NOT_FOUND,
                format!("no probe `{probe}`: live, ready, start"),
            ),
        }
    }

    fn card(&self, agent: &str, file: &str) -> Response {
        let version = match file {
            "agent-card.json" => Version::V1,
            "agent.json" => Version::V03,
            _ => return problem(StatusCode::NOT_FOUND, format!("no such file: {file}")),
        };
        let agents = self.harness.agents();
        let Some(a) = agents.get(agent) else {
            return problem(StatusCode::NOT_FOUND, format!("no agent `{agent}`"));
        };
        let c = &a.config;
        let info = CardInfo {
            name: c.display_name.clone(),
            description: c.description.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            url: format!("{}/a2a/{}", self.base_url, c.name),
            streaming: true,
            skills: c
                .skills
                .iter()
                .map(|s| Skill {
                    id: s.id.clone(),
                    name: s.name.clone(),
                    description: s.description.clone(),
                    tags: Vec::new(),
                })
                .collect(),
        };
        json_response(StatusCode::OK, &wire::agent_card(&info, version))
    }

    async fn rpc(&self, agent: String, req: http::Request<Incoming>) -> Response {
        if !self.harness.agents().contains_key(&agent) {
            return problem(StatusCode::NOT_FOUND, format!("no agent `{agent}`"));
        }
        let header = req
            .headers()
            .get("a2a-version")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = match web::read_body(req.into_body(), self.max_body).await {
            Ok(b) => b,
            Err(BodyError::TooLarge(limit)) => {
                let e = RpcError::invalid_request_why(format!(
                    "the request is larger than {limit} bytes"
                ));
                return json_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &wire::error_response(&Value::Null, &e),
                );
            }
            Err(BodyError::Broken(why)) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    format!("reading the request: {why}"),
                );
            }
        };
        let request = match wire::parse_request(&body, header.as_deref()) {
            Ok(r) => r,
            Err((id, e)) => return rpc_json(wire::error_response(&id, &e), None),
        };
        let v = request.version;
        let id = request.id.clone();
        match request.params {
            Params::Send(p) => {
                let streaming = request.method == RpcMethod::Stream;
                let blocking = p.blocking;
                let history = p.history_length;
                // Subscribed before the task exists, so no event is missed.
                let events = self.harness.events.subscribe();
                let row = match self.submit(&agent, p) {
                    Ok(row) => row,
                    Err(r) => return r.into_response(&id),
                };
                if streaming {
                    return self.stream(row, events, v, id);
                }
                let row = if blocking {
                    wait_until_ended(&self.harness, row, events).await
                } else {
                    row
                };
                // `historyLength`: the newest messages only.
                let mut task = view(&row);
                if let Some(n) = history {
                    let skip = task.history.len().saturating_sub(n);
                    task.history.drain(..skip);
                }
                rpc_json(wire::response(&id, wire::send_result(&task, v)), Some(v))
            }
            Params::Get {
                id: task,
                history_length,
            } => match self.task_of(&agent, &task) {
                Some(row) => rpc_json(
                    wire::response(&id, wire::task_json(&view(&row), history_length, v)),
                    Some(v),
                ),
                None => rpc_json(
                    wire::error_response(&id, &RpcError::task_not_found(&task)),
                    Some(v),
                ),
            },
            Params::Cancel { id: task } => {
                if self.task_of(&agent, &task).is_none() {
                    return rpc_json(
                        wire::error_response(&id, &RpcError::task_not_found(&task)),
                        Some(v),
                    );
                }
                let events = self.harness.events.subscribe();
                match self.harness.cancel(&task) {
                    Ok(Some(row)) => {
                        // A running dispatch stops at once; its rollback
                        // is waited for, briefly, so the answer is final.
                        let row = tokio::time::timeout(
                            Duration::from_secs(10),
                            wait_until_ended(&self.harness, row.clone(), events),
                        )
                        .await
                        .unwrap_or(row);
                        rpc_json(
                            wire::response(&id, wire::task_json(&view(&row), None, v)),
                            Some(v),
                        )
                    }
                    Ok(None) => rpc_json(
                        wire::error_response(&id, &RpcError::task_not_found(&task)),
                        Some(v),
                    ),
                    Err(state) => rpc_json(
                        wire::error_response(&id, &RpcError::task_not_cancelable(&task, &state)),
                        Some(v),
                    ),
                }
            }
            Params::Subscribe { id: task } => {
                let events = self.harness.events.subscribe();
                match self.task_of(&agent, &task) {
                    Some(row) => self.stream(row, events, v, id),
                    None => rpc_json(
                        wire::error_response(&id, &RpcError::task_not_found(&task)),
                        Some(v),
                    ),
                }
            }
        }
    }

    fn task_of(&self, agent: &str, id: &str) -> Option<TaskRow> {
        match self.harness.store().task(id) {
            Ok(Some(t)) if t.agent == agent => Some(t),
            Ok(_) => None,
            Err(e) => {
                tracing::error!(task = %id, "reading a task: {e:#}");
                None
            }
        }
    }

    fn submit(&self, agent: &str, p: wire::SendParams) -> Result<TaskRow, Refused> {
        // A follow-up naming a task continues that task's session.
        let session = match (&p.context_id, &p.task_id) {
            (Some(c), _) => Some(c.clone()),
            (None, Some(t)) => self.task_of(agent, t).map(|row| row.context),
            (None, None) => None,
        };
        self.harness.submit(Request {
            agent: agent.to_string(),
            kind: Kind::a2a(),
            prompt: p.text,
            session,
            message_id: Some(p.message_id),
            metadata: p.metadata,
            guest: None,
            model: None,
            max_tokens: None,
        })
    }

    /// An SSE stream of one task: where it is now, then each change, until
    /// it ends.
    fn stream(
        &self,
        row: TaskRow,
        mut events: broadcast::Receiver<Event>,
        v: Version,
        id: Value,
    ) -> Response {
        let harness = self.harness.clone();
        let task_id = row.id.clone();
        let stream = async_stream(move |tx| async move {
            let send = |value: Value| {
                let frame = format!("data: {}\n\n", wire::response(&id, value));
                tx.send(Bytes::from(frame)).is_ok()
            };
            if !send(wire::stream_task(&view(&row), v)) {
                return;
            }
            if state_of(&row.state).is_terminal() {
                return;
            }
            loop {
                let event = tokio::time::timeout(Duration::from_secs(15), events.recv()).await;
                let current = match event {
                    Err(_) => {
                        if tx.send(Bytes::from_static(b": keepalive\n\n")).is_err() {
                            return;
                        }
                        continue;
                    }
                    Ok(Ok(e)) if e.dispatch.as_deref() == Some(&task_id) => e,
                    Ok(Ok(_)) => continue,
                    // Fell behind or closed: the store knows where it is.
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => Event::new("dispatch.ended"),
                    Ok(Err(broadcast::error::RecvError::Closed)) => return,
                };
                let Ok(Some(row)) = harness.store().task(&task_id) else {
                    return;
                };
                let state = state_of(&row.state);
                match current.kind {
                    "dispatch.started"
                        if !state.is_terminal()
                            && !send(wire::stream_status(
                                &row.id,
                                &row.context,
                                state,
                                None,
                                false,
                                v,
                            )) =>
                    {
                        return;
                    }
                    "dispatch.ended" if state.is_terminal() => {
                        let view = view(&row);
                        for a in &view.artifacts {
                            if !send(wire::stream_artifact(&row.id, &row.context, a, true, v)) {
                                return;
                            }
                        }
                        send(wire::stream_status(
                            &row.id,
                            &row.context,
                            state,
                            view.status_message.as_ref(),
                            true,
                            v,
                        ));
                        return;
                    }
                    _ => {}
                }
            }
        });
        sse(stream, Some(v))
    }

    fn dispatches(&self, q: &HashMap<String, String>) -> Response {
        let store = self.harness.store();
        let rows = match store.dispatches(None, limit(q)) {
            Ok(r) => r,
            Err(e) => return problem(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        };
        let list: Vec<Value> = rows
            .iter()
            .map(|d| {
                let task = store.task(&d.id).ok().flatten();
                dispatch_json(d, task.as_ref())
            })
            .filter(|d| {
                q.get("agent")
                    .is_none_or(|a| d["agent"].as_str() == Some(a.as_str()))
            })
            .collect();
        json_response(StatusCode::OK, &json!({ "dispatches": list }))
    }

    fn dispatch(&self, id: &str) -> Response {
        let store = self.harness.store();
        let task = store.task(id).ok().flatten();
        let row = match store.find_dispatch(id) {
            Ok(Some(d)) => d,
            Ok(None) => {
                // Accepted but not started yet: only the task exists.
                return match task {
                    Some(t) => json_response(
                        StatusCode::OK,
                        &json!({ "id": t.id, "agent": t.agent, "session": t.context, "kind": t.kind,
                                 "state": t.state, "detail": t.detail, "steps": [] }),
                    ),
                    None => problem(StatusCode::NOT_FOUND, format!("no dispatch `{id}`")),
                };
            }
            Err(e) => return problem(StatusCode::BAD_REQUEST, format!("{e:#}")),
        };
        let task = task.or_else(|| store.task(&row.id).ok().flatten());
        let mut out = dispatch_json(&row, task.as_ref());
        let steps = store.steps(&row.id).unwrap_or_default();
        out["steps"] = steps
            .iter()
            .map(|s| {
                let changes: Vec<Value> = store
                    .changes(s.id)
                    .unwrap_or_default()
                    .iter()
                    .map(|c| json!({ "path": crate::timeline::entry::display(&c.path), "change": c.kind().letter().to_string() }))
                    .collect();
                json!({
                    "id": s.id, "idx": s.idx, "opened_by": s.opened_by, "detail": s.detail,
                    "started_at": s.started_at, "ended_at": s.ended_at, "changes": changes,
                })
            })
            .collect();
        if let Some(t) = &task {
            out["reply"] = json!(t.reply);
        }
        json_response(StatusCode::OK, &out)
    }

    fn conversations(&self, q: &HashMap<String, String>) -> Response {
        let session = q.get("session").map(String::as_str);
        match self.harness.store().conversation(session, limit(q)) {
            Ok(lines) => json_response(StatusCode::OK, &json!({ "lines": lines })),
            Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        }
    }

    fn events(&self) -> Response {
        let mut events = self.harness.events.subscribe();
        let stream = async_stream(move |tx| async move {
            if tx.send(Bytes::from_static(b": cairn events\n\n")).is_err() {
                return;
            }
            loop {
                let next = tokio::time::timeout(Duration::from_secs(15), events.recv()).await;
                let frame = match next {
                    Err(_) => Bytes::from_static(b": keepalive\n\n"),
                    Ok(Ok(e)) => {
                        let json = serde_json::to_string(&e).unwrap_or_default();
                        Bytes::from(format!(
                            "id: {}\nevent: {}\ndata: {json}\n\n",
                            e.seq, e.kind
                        ))
                    }
                    Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                        Bytes::from(format!("event: lagged\ndata: {{\"missed\":{n}}}\n\n"))
                    }
                    Ok(Err(broadcast::error::RecvError::Closed)) => return,
                };
                if tx.send(frame).is_err() {
                    return;
                }
            }
        });
        sse(stream, None)
    }

    /// `POST /triggers/<endpoint>`: the body (up to 1 MiB, or the
    /// configured cap if lower) reaches the trigger's prompt, marked as
    /// untrusted. 202 with the dispatch id.
    async fn trigger(&self, endpoint: &str, req: http::Request<Incoming>) -> Response {
        let bearer_ok = self
            .tokens
            .as_ref()
            .map(|t| web::bearer(req.headers()).is_some_and(|b| t.grants(Scope::Invoke, b)));
        let headers = req.headers().clone();
        let cap = self.max_body.min(1 << 20);
        let body = match web::read_body(req.into_body(), cap).await {
            Ok(b) => b,
            Err(BodyError::TooLarge(limit)) => {
                return problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("larger than {limit} bytes"),
                );
            }
            Err(BodyError::Broken(why)) => return problem(StatusCode::BAD_REQUEST, why),
        };
        match self.scheduler.trigger(endpoint, &headers, &body, bearer_ok) {
            Ok((dispatch, session)) => json_response(
                StatusCode::ACCEPTED,
                &json!({ "dispatch": dispatch, "session": session }),
            ),
            Err(r) => scheduler_refusal(r),
        }
    }

    /// A manual fire; `?agent=` picks among agents defining the same name.
    fn run_now(&self, kind: &str, name: &str, req: &http::Request<Incoming>) -> Response {
        let q = query(req);
        match self
            .scheduler
            .run_now(kind, name, q.get("agent").map(String::as_str))
        {
            Ok(dispatch) => json_response(StatusCode::ACCEPTED, &json!({ "dispatch": dispatch })),
            Err(r) => scheduler_refusal(r),
        }
    }

    /// An admin request's JSON body, or the response refusing it.
    async fn json_body(&self, req: http::Request<Incoming>) -> Result<Value, Response> {
        let body = match web::read_body(req.into_body(), self.max_body).await {
            Ok(b) => b,
            Err(BodyError::TooLarge(limit)) => {
                return Err(problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("larger than {limit} bytes"),
                ));
            }
            Err(BodyError::Broken(why)) => return Err(problem(StatusCode::BAD_REQUEST, why)),
        };
        serde_json::from_slice(&body)
            .map_err(|e| problem(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))
    }

    /// `POST /admin/rollback {"target", "force"?}`: undoes a step (its
    /// number) or a dispatch (its id or a unique prefix) of the repository,
    /// between dispatches. 200 with what was restored; 404 unknown target;
    /// 409 when paths changed since (unless `force`) or the target is not
    /// in the repository.
    async fn rollback(&self, req: http::Request<Incoming>) -> Response {
        let v = match self.json_body(req).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let target = match &v["target"] {
            Value::String(s) => s.clone(),
            Value::Number(n) if n.is_u64() => n.to_string(),
            _ => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "`target` (a step number or a dispatch id) is required",
                );
            }
        };
        let force = match &v["force"] {
            Value::Null => false,
            Value::Bool(b) => *b,
            _ => return problem(StatusCode::BAD_REQUEST, "`force` must be true or false"),
        };
        match self.harness.rollback(&target, force).await {
            Ok((target, undone)) => json_response(
                StatusCode::OK,
                &json!({
                    "rolled_back": target.describe(),
                    "paths": undone.paths,
                    "step": undone.step,
                    "warnings": undone.warnings,
                }),
            ),
            Err(e) => {
                let status = match &e {
                    RollbackRefused::NotFound(_) => StatusCode::NOT_FOUND,
                    RollbackRefused::Elsewhere(_) | RollbackRefused::Conflict(_) => {
                        StatusCode::CONFLICT
                    }
                    RollbackRefused::Stopping => StatusCode::SERVICE_UNAVAILABLE,
                    RollbackRefused::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
                };
                let mut body = json!({ "error": e.to_string() });
                if let RollbackRefused::Conflict(c) = &e {
                    body["conflict"] = json!({ "what": c.what, "count": c.count, "list": c.list });
                }
                json_response(status, &body)
            }
        }
    }

    /// `POST /admin/dispatch {"agent", "prompt", "kind"?, "session"?}`: a
    /// manual run; answers at once with the task (202).
    async fn manual(&self, req: http::Request<Incoming>) -> Response {
        let v = match self.json_body(req).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let (Some(agent), Some(prompt)) = (v["agent"].as_str(), v["prompt"].as_str()) else {
            return problem(
                StatusCode::BAD_REQUEST,
                "`agent` and `prompt` (strings) are required",
            );
        };
        let kind = match v["kind"].as_str().unwrap_or("a2a").parse::<Kind>() {
            Ok(k) => k,
            Err(why) => return problem(StatusCode::BAD_REQUEST, format!("kind: {why}")),
        };
        let request = Request {
            agent: agent.to_string(),
            kind,
            prompt: prompt.to_string(),
            session: v["session"].as_str().map(str::to_string),
            message_id: None,
            metadata: Default::default(),
            guest: None,
            model: None,
            max_tokens: None,
        };
        match self.harness.submit(request) {
            Ok(row) => json_response(
                StatusCode::ACCEPTED,
                &json!({ "dispatch": row.id, "session": row.context, "state": row.state }),
            ),
            Err(r) => r.into_response(&Value::Null),
        }
    }
}

impl Refused {
    /// A refusal as the A2A caller sees it: busy and stopping are 503 with
    /// `Retry-After`; an unknown agent is 404.
    fn into_response(self, id: &Value) -> Response {
        let message = self.to_string();
        let (status, error, retry) = match &self {
            Refused::Busy { retry_after, .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                RpcError::busy(*retry_after).with_message(message),
                Some(*retry_after),
            ),
            Refused::Stopping(after) => (
                StatusCode::SERVICE_UNAVAILABLE,
                RpcError::busy(*after).with_message(message),
                Some(*after),
            ),
            Refused::Unhealthy { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                RpcError::internal(&message),
                None,
            ),
            Refused::UnknownAgent(_) => (
                StatusCode::NOT_FOUND,
                RpcError::invalid_params(&message),
                None,
            ),
            Refused::Invalid(_) => (StatusCode::OK, RpcError::invalid_params(&message), None),
            Refused::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                RpcError::internal(&message),
                None,
            ),
        };
        let mut r = json_response(status, &wire::error_response(id, &error));
        if let Some(after) = retry {
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(after));
        }
        r
    }
}

/// Waits for a task to end; a caller that goes away stops waiting (the
/// task runs on and stays readable).
async fn wait_until_ended(
    harness: &Harness,
    row: TaskRow,
    mut events: broadcast::Receiver<Event>,
) -> TaskRow {
    let id = row.id.clone();
    let mut current = row;
    loop {
        if state_of(&current.state).is_terminal() {
            return current;
        }
        match events.recv().await {
            Ok(e) if e.dispatch.as_deref() != Some(&id) => continue,
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return current,
        }
        match harness.store().task(&id) {
            Ok(Some(row)) => current = row,
            _ => return current,
        }
    }
}

/// A task row as A2A sees it.
pub fn view(row: &TaskRow) -> TaskView {
    let state = state_of(&row.state);
    let prompt = serde_json::from_str::<Value>(&row.dispatch)
        .ok()
        .and_then(|d| d["prompt"].as_str().map(str::to_string))
        .unwrap_or_default();
    let user = Msg {
        message_id: row
            .message_id
            .clone()
            .unwrap_or_else(|| format!("{}-prompt", row.id)),
        role: Role::User,
        text: prompt,
        context_id: row.context.clone(),
        task_id: Some(row.id.clone()),
    };
    let mut history = vec![user];
    let mut artifacts = Vec::new();
    let status_message = match (state, &row.reply, &row.detail) {
        (State::Completed, Some(reply), _) => {
            let m = Msg {
                message_id: format!("{}-reply", row.id),
                role: Role::Agent,
                text: reply.clone(),
                context_id: row.context.clone(),
                task_id: Some(row.id.clone()),
            };
            history.push(m.clone());
            artifacts.push(Artifact {
                artifact_id: format!("{}-reply", row.id),
                name: Some("reply".into()),
                text: reply.clone(),
            });
            Some(m)
        }
        (_, _, Some(detail)) if state.is_terminal() => Some(Msg {
            message_id: format!("{}-status", row.id),
            role: Role::Agent,
            text: detail.clone(),
            context_id: row.context.clone(),
            task_id: Some(row.id.clone()),
        }),
        _ => None,
    };
    let mut metadata = serde_json::Map::new();
    metadata.insert("cairn.agent".into(), json!(row.agent));
    metadata.insert("cairn.kind".into(), json!(row.kind));
    TaskView {
        id: row.id.clone(),
        context_id: row.context.clone(),
        state,
        status_message,
        timestamp_ms: row.updated_at,
        history,
        artifacts,
        metadata,
    }
}

fn dispatch_json(d: &crate::store::timeline::DispatchRow, task: Option<&TaskRow>) -> Value {
    json!({
        "id": d.id,
        "agent": task.map(|t| t.agent.clone()),
        "session": task.map(|t| t.context.clone()),
        "kind": d.kind,
        "guest": d.guest,
        "workspace": d.workspace,
        "status": d.status,
        "state": task.map(|t| t.state.clone()),
        "detail": d.detail.clone().or_else(|| task.and_then(|t| t.detail.clone())),
        "started_at": d.started_at,
        "ended_at": d.ended_at,
    })
}

/// A JSON-RPC answer (always HTTP 200, as the binding asks), with the
/// protocol version it was spoken in.
fn rpc_json(body: Value, v: Option<Version>) -> Response {
    let mut r = json_response(StatusCode::OK, &body);
    if let Some(v) = v {
        r.headers_mut()
            .insert("a2a-version", HeaderValue::from_static(version_header(v)));
    }
    r
}

/// A body fed by a task through a channel: the task stops when the client
/// goes away (its sends fail).
fn async_stream<F, Fut>(f: F) -> tokio::sync::mpsc::UnboundedReceiver<Bytes>
where
    F: FnOnce(tokio::sync::mpsc::UnboundedSender<Bytes>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(f(tx));
    rx
}

fn sse(rx: tokio::sync::mpsc::UnboundedReceiver<Bytes>, v: Option<Version>) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
    });
    let body: Body = StreamBody::new(stream).boxed_unsync();
    let mut r = http::Response::new(body);
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    if let Some(v) = v {
        h.insert("a2a-version", HeaderValue::from_static(version_header(v)));
    }
    r
}

/// A task row's state as A2A names it.
fn state_of(s: &str) -> State {
    match s {
        "submitted" => State::Submitted,
        "working" => State::Working,
        "completed" => State::Completed,
        "canceled" => State::Canceled,
        _ => State::Failed,
    }
}

fn version_header(v: Version) -> &'static str {
    match v {
        Version::V1 => "1.0",
        Version::V03 => "0.3",
    }
}
