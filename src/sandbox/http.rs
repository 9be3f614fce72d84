//! A guest's outgoing HTTP (`wasi:http`): hosts cairn serves in-process
//! (the sidecar) are answered without a socket, bound to the run's
//! identity; hosts the agent's config allows are forwarded; every other
//! request is refused with a message naming the entry that would allow it.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::web::{self, BodyError};

/// A host served in-process.
pub trait LocalHttp: Send + Sync {
    /// The largest request body it takes.
    fn max_body(&self) -> usize;
    /// The answer to a request whose body was larger than [`Self::max_body`].
    fn too_large(&self, limit: usize) -> web::Response;
    fn call(
        &self,
        req: http::Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = web::Response> + Send>>;
}

/// What a run may reach over HTTP.
#[derive(Clone, Default)]
pub struct Outbound {
    /// Host names answered in-process (`sidecar.cairn.internal`).
    pub local: Vec<(String, Arc<dyn LocalHttp>)>,
    /// Other hosts allowed, as `host` (any port) or `host:port`, lowercase.
    pub allow_hosts: Vec<String>,
    /// Where an allowed host would be listed, for the denial message
    /// (`allow_hosts of [agents.cli] in sidecar.toml`).
    pub allow_entry: String,
    /// The client for allowed hosts.
    pub client: Option<reqwest::Client>,
}

/// Largest body sent to or read from an allowed outside host.
const MAX_FORWARDED_BODY: usize = 64 << 20;

pub(super) struct Hooks {
    pub outbound: Arc<Outbound>,
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
)>;

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let outbound = self.outbound.clone();
        Box::new(async move {
            let done: Box<dyn Future<Output = Result<(), HttpError>> + Send> =
                Box::new(async { Ok(()) });
            let host = request.uri().host().unwrap_or("").to_ascii_lowercase();
            if let Some((_, local)) = outbound.local.iter().find(|(h, _)| *h == host) {
                let (parts, body) = request.into_parts();
                let response = match web::read_body(body, local.max_body()).await {
                    Ok(bytes) => local.call(http::Request::from_parts(parts, bytes)).await,
                    Err(BodyError::TooLarge(limit)) => local.too_large(limit),
                    Err(BodyError::Broken(why)) => return Err(HttpError::InternalError(Some(why))),
                };
                return Ok((to_wasi(response), done));
            }
            let port = request
                .uri()
                .port_u16()
                .unwrap_or(match request.uri().scheme_str() {
                    Some("http") => 80,
                    _ => 443,
                });
            let allowed = outbound
                .allow_hosts
                .iter()
                .any(|a| *a == host || *a == format!("{host}:{port}"));
            match (&outbound.client, allowed) {
                (Some(client), true) => forward(client, request).await.map(|r| (r, done)),
                _ => Err(HttpError::InternalError(Some(format!(
                    "HTTP request denied: {host}:{port} is not an allowed host; allow it with \"{host}\" in {}",
                    outbound.allow_entry
                )))),
            }
        })
    }
}

fn to_wasi(response: web::Response) -> http::Response<WasiBody> {
    response.map(|b| {
        b.map_err(|e| HttpError::InternalError(Some(e.to_string())))
            .boxed_unsync()
    })
}

async fn forward(
    client: &reqwest::Client,
    request: http::Request<WasiBody>,
) -> Result<http::Response<WasiBody>, HttpError> {
    let (parts, body) = request.into_parts();
    let body = match web::read_body(body, MAX_FORWARDED_BODY).await {
        Ok(b) => b,
        Err(BodyError::TooLarge(_)) => return Err(HttpError::HttpRequestBodySize(None)),
        Err(BodyError::Broken(why)) => return Err(HttpError::InternalError(Some(why))),
    };
    let req = client
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body);
    let resp = req.send().await.map_err(|e| {
        if e.is_connect() {
            HttpError::ConnectionRefused
        } else if e.is_timeout() {
            HttpError::ConnectionTimeout
        } else {
            HttpError::InternalError(Some(e.to_string()))
        }
    })?;
    let mut out = http::Response::builder().status(resp.status());
    if let Some(h) = out.headers_mut() {
        *h = resp.headers().clone();
    }
    let stream = resp.bytes_stream().map(|chunk| {
        chunk
            .map(hyper::body::Frame::data)
            .map_err(|e| HttpError::InternalError(Some(e.to_string())))
    });
    out.body(StreamBody::new(stream).boxed_unsync())
        .map_err(|e| HttpError::InternalError(Some(e.to_string())))
}
