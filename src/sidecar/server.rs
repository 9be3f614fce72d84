//! The sidecar on a TCP port, for native tools: each agent proves who it is
//! with its own bearer key (`key_env` in `[agents.<name>]`). Without a
//! valid key every `/v1` request is refused (401). `GET /metrics` (the
//! Prometheus text) and `GET /health` need no key: they reveal no
//! conversation and change nothing.

use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;
use hyper::body::Incoming;
use sha2::{Digest, Sha256};

use super::{ApiError, Caller, Sidecar, too_large};
use crate::web::{self, BodyError, Handler, Response};

pub struct Server {
    sidecar: Arc<Sidecar>,
    /// sha256 of each key, and its agent: compared in constant time.
    keys: Vec<([u8; 32], String)>,
}

impl Server {
    pub fn new(sidecar: Arc<Sidecar>) -> Server {
        let keys = sidecar
            .config
            .agents
            .iter()
            .filter_map(|(name, a)| {
                a.key
                    .as_ref()
                    .map(|k| (Sha256::digest(k.as_bytes()).into(), name.clone()))
            })
            .collect();
        Server { sidecar, keys }
    }

    /// How many agents have a key.
    pub fn agents_with_keys(&self) -> usize {
        self.keys.len()
    }

    fn agent_of(&self, req: &http::Request<Incoming>) -> Result<&str, ApiError> {
        let unauthorized = |why: &str| {
            ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", why)
                .code("invalid_api_key")
        };
        let key = web::bearer(req.headers()).ok_or_else(|| {
            if req.headers().contains_key(http::header::AUTHORIZATION) {
                unauthorized("the Authorization header must be `Bearer <key>`")
            } else {
                unauthorized("missing bearer key: send `Authorization: Bearer <the agent's key>`")
            }
        })?;
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for (k, agent) in &self.keys {
            // Every key is compared in full, whichever matches.
            if web::same_secret(k, &digest) {
                found = Some(agent.as_str());
            }
        }
        found.ok_or_else(|| unauthorized("unknown key: it is no agent's key"))
    }
}

impl Handler for Server {
    async fn handle(self: Arc<Self>, _peer: SocketAddr, req: http::Request<Incoming>) -> Response {
        let path = req.uri().path().to_string();
        match (req.method(), path.as_str()) {
            (&http::Method::GET, "/metrics") => {
                let mut r = http::Response::new(web::full(self.sidecar.metrics_text()));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                return r;
            }
            (&http::Method::GET, "/health") => {
                return web::json_response(StatusCode::OK, &serde_json::json!({ "status": "ok" }));
            }
            _ => {}
        }
        let agent = match self.agent_of(&req) {
            Ok(a) => a.to_string(),
            Err(e) => return e.response(),
        };
        let method = req.method().clone();
        let limit = self.sidecar.config.server.max_body_bytes;
        let body = match web::read_body(req.into_body(), limit).await {
            Ok(b) => b,
            Err(BodyError::TooLarge(limit)) => return too_large(limit).response(),
            Err(BodyError::Broken(why)) => {
                return ApiError::invalid(
                    None,
                    format!("the request body could not be read: {why}"),
                )
                .response();
            }
        };
        self.sidecar
            .handle(&method, &path, body, Caller::agent(&agent))
            .await
    }
}
