//! The sidecar: the only road from an agent to a model. It speaks OpenAI's
//! chat completions to its callers (guests in-process, native tools on a
//! port), forwards to the configured providers (OpenAI-compatible servers,
//! Anthropic translated both ways) with retries and fallbacks, holds every
//! call to its budgets, and records what each call cost.
//!
//! A caller is an agent (and, for guests, the dispatch and its step hook).
//! Guests' identity comes from the sandbox they run in; native tools prove
//! theirs with a bearer key per agent ([`server`]).
//!
//! Cost grows with calls, not with agents or history: a call takes one
//! lock for its budget check and one for settling, its usage row is
//! batched by one writer thread, and a stream is relayed event by event
//! with only the current event in memory.

pub mod anthropic;
mod budget;
mod chat;
pub mod config;
mod metrics;
pub mod server;
mod sse;
mod usage;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::StatusCode;
use serde_json::json;

use crate::web::{self, Response};
pub use budget::Amount;
pub use config::{Config, ConfigError};
use usage::Writer;

/// The host name guests reach the sidecar at; served in-process, never
/// resolved. `OPENAI_BASE_URL` is `http://<this>/v1`.
pub const GUEST_HOST: &str = "sidecar.cairn.internal";

/// Marks step boundaries for the dispatch a caller runs in.
pub trait Steps: Send + Sync {
    /// A model call is about to be forwarded: closes the open step and
    /// opens the next. Returns the new step's id. Blocking.
    fn model_call(&self, detail: &str) -> Option<i64>;
}

/// Who is calling.
#[derive(Clone)]
pub struct Caller {
    pub agent: String,
    pub dispatch: Option<String>,
    /// The dispatch's own token cap (`max-tokens`).
    pub max_tokens: Option<u64>,
    pub steps: Option<Arc<dyn Steps>>,
}

impl Caller {
    pub fn agent(name: &str) -> Caller {
        Caller {
            agent: name.to_string(),
            dispatch: None,
            max_tokens: None,
            steps: None,
        }
    }
}

pub struct Sidecar {
    pub config: Config,
    client: reqwest::Client,
    ledger: Arc<budget::Ledger>,
    usage: Writer,
    metrics: metrics::Metrics,
    /// Dispatches a budget stopped, and which budget: the harness ends
    /// them `budget_exceeded`.
    stopped: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub param: Option<&'static str>,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            code: None,
            param: None,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn invalid(param: Option<&'static str>, message: impl Into<String>) -> ApiError {
        ApiError {
            param,
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    pub fn code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    pub fn body(&self) -> serde_json::Value {
        json!({ "error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }

    pub fn response(&self) -> Response {
        let mut r = web::json_response(self.status, &self.body());
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, secs.into());
        }
        r
    }
}

impl Sidecar {
    /// Starts the sidecar: the upstream client, the budgets seeded from the
    /// store at `store_path`, and the usage writer.
    pub fn start(config: Config, store_path: &std::path::Path) -> Result<Arc<Sidecar>> {
        let client = crate::web::client_builder()
            .connect_timeout(config.server.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the upstream HTTP client")?;
        let ledger = Arc::new(budget::Ledger::new(&config));
        let store = crate::store::Store::open(store_path)?;
        ledger
            .seed(&store, crate::store::now_ms())
            .context("reading this month's usage from the store")?;
        let usage = Writer::start(store)?;
        let sidecar = Arc::new(Sidecar {
            config,
            client,
            ledger,
            usage,
            metrics: metrics::Metrics::new(),
            stopped: Default::default(),
        });
        sidecar.update_remaining();
        Ok(sidecar)
    }

    /// Serves one request of an authenticated caller. `path` is the
    /// request's path, starting at `/v1`.
    pub async fn handle(
        self: &Arc<Self>,
        method: &http::Method,
        path: &str,
        body: Bytes,
        caller: Caller,
    ) -> Response {
        let path = path.split('?').next().unwrap_or(path).trim_end_matches('/');
        let result = match (method, path) {
            (&http::Method::POST, "/v1/chat/completions") => self.chat(body, caller).await,
            (&http::Method::GET, "/v1/models") => Ok(self.models()),
            (_, "/v1/chat/completions" | "/v1/models") => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                format!("{method} is not allowed on {path}"),
            )),
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("no endpoint {method} {path} (the sidecar serves POST /v1/chat/completions and GET /v1/models)"),
            )
            .code("unknown_url")),
        };
        result.unwrap_or_else(|e| e.response())
    }

    fn models(&self) -> Response {
        let data: Vec<_> = self
            .config
            .models
            .values()
            .map(|m| {
                json!({ "id": m.alias, "object": "model", "created": 0, "owned_by": m.provider })
            })
            .collect();
        web::json_response(StatusCode::OK, &json!({ "object": "list", "data": data }))
    }

    /// Sets the budgets of the agents defined in their own directories
    /// (`budget` in `agent.toml`), over those of `sidecar.toml`; called at
    /// start and on every reload. Spending so far is kept.
    pub fn set_agent_budgets(&self, defined: &std::collections::BTreeMap<String, config::Budget>) {
        let mut all: std::collections::HashMap<String, config::Budget> = self
            .config
            .agent_budgets
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (agent, b) in defined {
            if let Some(to) = &b.degrade_to
                && !self.config.models.contains_key(to)
            {
                tracing::warn!(
                    "agent {agent}: budget.degrade_to: no model `{to}` in {}; calls over its budget are refused instead",
                    self.config.origin
                );
            }
            all.insert(agent.clone(), b.clone());
        }
        self.ledger.set_agents(all);
        self.metrics.budget_remaining.clear();
        self.update_remaining();
    }

    /// Whether a budget refused a call of `dispatch` (its `max-tokens`, or
    /// a budget that stops), and which; forgotten once asked.
    pub fn take_budget_stop(&self, dispatch: &str) -> Option<String> {
        self.stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(dispatch)
    }

    pub(crate) fn record_budget_stop(&self, dispatch: &str, why: String) {
        self.stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(dispatch.to_string(), why);
    }

    /// The Prometheus text of the sidecar's metrics.
    pub fn metrics_text(&self) -> String {
        self.update_remaining();
        self.metrics.encode()
    }

    fn update_remaining(&self) {
        for (scope, limit, left) in self.ledger.remaining(crate::store::now_ms()) {
            self.metrics
                .budget_remaining
                .get_or_create(&metrics::Limit {
                    scope,
                    limit: limit.to_string(),
                })
                .set(left);
        }
    }

    /// A client for the outside hosts an agent is allowed to reach.
    pub fn outside_client(&self) -> reqwest::Client {
        self.client.clone()
    }

    /// Waits until every usage row handed to the writer is in the store.
    pub fn flush(&self) {
        self.usage.flush();
    }
}

/// The in-process port a guest's `wasi:http` requests to [`GUEST_HOST`]
/// arrive at: bound to the guest's dispatch, so its identity is the
/// sandbox's, whatever headers it sends.
pub struct GuestPort {
    pub sidecar: Arc<Sidecar>,
    pub caller: Caller,
}

impl crate::sandbox::LocalHttp for GuestPort {
    fn max_body(&self) -> usize {
        self.sidecar.config.server.max_body_bytes
    }

    fn call(
        &self,
        req: http::Request<Bytes>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Response> + Send>> {
        let sidecar = self.sidecar.clone();
        let caller = self.caller.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            sidecar
                .handle(&parts.method, parts.uri.path(), body, caller)
                .await
        })
    }

    fn too_large(&self, limit: usize) -> Response {
        too_large(limit).response()
    }
}

pub fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        format!(
            "the request body is larger than the limit of {limit} bytes (server.max_body_bytes)"
        ),
    )
    .code("request_too_large")
}
