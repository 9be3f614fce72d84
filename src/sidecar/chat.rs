//! `POST /v1/chat/completions`: check the request, admit it under the
//! budgets, mark the step boundary, forward it with retries and fallbacks,
//! relay the answer (whole or streamed), and record what it cost.
//!
//! Retry rules: 429, 5xx and connection failures are retried with
//! exponential backoff and jitter, honouring `Retry-After`; a stream is
//! handed to the client only once its first event arrived, so failures
//! before that are retried too, and nothing is retried once a byte reached
//! the client. An attempt that failed after running `billed_after_secs` may
//! have been billed: it is recorded (estimated) and not retried.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{BoxStream, Peekable};
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Frame;
use serde_json::{Value, json};

use super::budget::{Amount, Payer, Reservation};
use super::config::{Kind, Model, OnExceeded, Provider};
use super::sse::{Decoder, Event};
use super::{ApiError, Caller, Sidecar, anthropic, metrics};
use crate::store::now_ms;
use crate::store::usage::UsageRow;
use crate::web::{self, Response};

/// Largest whole (non-streamed) upstream answer read.
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// What was asked, as far as routing and accounting need it.
struct Ask {
    body: Value,
    requested: String,
    stream: bool,
    /// The client asked for the usage chunk itself.
    wants_usage: bool,
    input_estimate: u64,
    max_output: Option<u64>,
}

impl Sidecar {
    pub(super) async fn chat(
        self: &Arc<Self>,
        body: Bytes,
        caller: Caller,
    ) -> Result<Response, ApiError> {
        let started = Instant::now();
        let mut ask = parse(&body)?;
        self.fit_to_dispatch(&caller, &mut ask);
        let Some(model) = self.config.models.get(&ask.requested) else {
            let known: Vec<&str> = self.config.models.keys().map(String::as_str).collect();
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!(
                    "the model `{}` does not exist (known: {})",
                    ask.requested,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            )
            .code("model_not_found"));
        };
        let (model, reservation, degraded) = self.admit(&caller, model, &ask)?;
        let step = match &caller.steps {
            Some(steps) => {
                let steps = steps.clone();
                let detail = format!("model {}", model.alias);
                tokio::task::spawn_blocking(move || steps.model_call(&detail))
                    .await
                    .ok()
                    .flatten()
            }
            None => None,
        };
        let mut record = Record {
            sidecar: self.clone(),
            row: UsageRow {
                agent: caller.agent.clone(),
                dispatch: caller.dispatch.clone(),
                step,
                model_requested: ask.requested.clone(),
                stream: ask.stream,
                ..UsageRow::default()
            },
            started,
            reservation: Some(reservation),
            input_estimate: ask.input_estimate,
            output_chars: 0,
            usage: None,
            billable: false,
            done: false,
        };
        let overhead_before = started.elapsed();
        let opened = self.open(&ask, model, &mut record).await?;
        let route = record.route();
        self.metrics
            .overhead
            .get_or_create(&route)
            .observe(overhead_before.as_secs_f64());
        let mut response = match opened.answer {
            Answer::Whole(bytes) => {
                let after = Instant::now();
                let r = self.whole(bytes, opened.model, opened.provider, &mut record)?;
                self.metrics
                    .overhead
                    .get_or_create(&route)
                    .observe(after.elapsed().as_secs_f64());
                r
            }
            Answer::Stream {
                stream,
                decoder,
                first,
            } => {
                let relay = Relay {
                    translator: (opened.provider.kind == Kind::Anthropic).then(|| {
                        anthropic::StreamTranslator::new(&opened.model.model, unix_secs())
                    }),
                    wants_usage: ask.wants_usage,
                    record,
                    stream,
                    decoder,
                    first: Some(first),
                    deadline: Box::pin(tokio::time::sleep_until(
                        (started + self.config.server.timeout).into(),
                    )),
                    ended: false,
                    out: bytes::BytesMut::new(),
                    idle: 0,
                    fresh: true,
                };
                let mut r = http::Response::new(BodyExt::boxed_unsync(relay));
                let h = r.headers_mut();
                h.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/event-stream"),
                );
                h.insert(
                    http::header::CACHE_CONTROL,
                    http::HeaderValue::from_static("no-cache"),
                );
                r
            }
        };
        let h = response.headers_mut();
        let served = format!("{}/{}", opened.provider.name, opened.model.model);
        if let Ok(v) = http::HeaderValue::from_str(&served) {
            h.insert("x-cairn-served-by", v);
        }
        if let Ok(v) = http::HeaderValue::from_str(&opened.model.alias) {
            h.insert("x-cairn-model", v);
        }
        if let Some(why) = degraded
            && let Ok(v) = http::HeaderValue::from_str(&why)
        {
            h.insert("x-cairn-degraded", v);
        }
        Ok(response)
    }

    /// Under a dispatch's `max-tokens`, a call may produce no more than is
    /// left of it: its `max_tokens` is lowered to that, so calls go on
    /// until the cap rather than being refused for asking the whole of it.
    /// With nothing left, the call is left as is, for the budget to refuse.
    fn fit_to_dispatch(&self, caller: &Caller, ask: &mut Ask) {
        let (Some(cap), Some(dispatch)) = (caller.max_tokens, caller.dispatch.as_deref()) else {
            return;
        };
        let room = cap
            .saturating_sub(self.ledger.dispatch_used(dispatch))
            .saturating_sub(ask.input_estimate);
        if room == 0 || ask.max_output.is_some_and(|m| m <= room) {
            return;
        }
        ask.max_output = Some(room);
        if let Some(obj) = ask.body.as_object_mut() {
            let key = if obj.contains_key("max_completion_tokens") {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            obj.insert(key.into(), json!(room));
        }
    }

    /// Checks the budgets; on `degrade`, moves the call to the configured
    /// model (once). Returns the model that will serve and its reservation.
    fn admit<'a>(
        &'a self,
        caller: &Caller,
        model: &'a Model,
        ask: &Ask,
    ) -> Result<(&'a Model, Reservation, Option<String>), ApiError> {
        let payer = Payer {
            agent: &caller.agent,
            dispatch: caller.dispatch.as_deref(),
            dispatch_max_tokens: caller.max_tokens,
        };
        let output = ask
            .max_output
            .unwrap_or(self.config.server.reserve_output_tokens);
        let mut model = model;
        let mut degraded: Option<String> = None;
        loop {
            let price = self.config.price(&model.model);
            let amount = Amount {
                tokens: ask.input_estimate + output,
                usd: (ask.input_estimate as f64 * price.input + output as f64 * price.output) / 1e6,
            };
            let exceeded = match self
                .ledger
                .reserve(&payer, amount, now_ms(), degraded.is_some())
            {
                Ok(r) => {
                    for a in &r.alerts {
                        tracing::warn!(agent = %caller.agent, "{a}; the call passes");
                        self.count_exceeded(a);
                    }
                    return Ok((model, r, degraded));
                }
                Err(e) => e,
            };
            self.count_exceeded(&exceeded);
            let to = exceeded
                .degrade_to
                .as_deref()
                .and_then(|to| self.config.models.get(to));
            match (exceeded.on_exceeded, to) {
                (OnExceeded::Degrade, Some(to))
                    if degraded.is_none() && to.alias != model.alias =>
                {
                    tracing::info!(agent = %caller.agent, "{exceeded}: served by `{}` instead of `{}`", to.alias, model.alias);
                    degraded = Some(format!("{exceeded}; served by {}", to.alias));
                    model = to;
                }
                _ => {
                    if let Some(d) = &caller.dispatch {
                        self.record_budget_stop(d, exceeded.to_string());
                    }
                    let row = UsageRow {
                        at: now_ms(),
                        agent: caller.agent.clone(),
                        dispatch: caller.dispatch.clone(),
                        model_requested: ask.requested.clone(),
                        status: "budget_exceeded".into(),
                        stream: ask.stream,
                        detail: Some(exceeded.to_string()),
                        ..UsageRow::default()
                    };
                    self.usage.record(row);
                    return Err(ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "budget_exceeded",
                        exceeded.to_string(),
                    )
                    .code("budget_exceeded"));
                }
            }
        }
    }

    fn count_exceeded(&self, e: &super::budget::Exceeded) {
        self.metrics
            .budget_exceeded
            .get_or_create(&metrics::Limit {
                scope: e.scope.split(' ').next().unwrap_or("").to_string(),
                limit: e.limit_name.to_string(),
            })
            .inc();
    }

    /// Sends the call to `model`, then to its fallbacks in order, each with
    /// its retries, until one answers.
    async fn open<'a>(
        &'a self,
        ask: &Ask,
        model: &'a Model,
        record: &mut Record,
    ) -> Result<Opened<'a>, ApiError> {
        let deadline = record.started + self.config.server.timeout;
        let chain = std::iter::once(model).chain(
            model
                .fallbacks
                .iter()
                .filter_map(|f| self.config.models.get(f)),
        );
        let mut last: Option<ApiError> = None;
        for target in chain {
            let Some(provider) = self.config.providers.get(&target.provider) else {
                continue;
            };
            record.row.provider = Some(provider.name.clone());
            record.row.model_served = Some(target.model.clone());
            let (url, payload) = request_for(provider, target, ask)?;
            for attempt in 0..=self.config.server.retries {
                if attempt > 0 {
                    let wait = backoff(
                        &self.config.server,
                        attempt,
                        last.as_ref().and_then(|e| e.retry_after),
                    );
                    if wait > self.config.server.max_backoff || Instant::now() + wait >= deadline {
                        break;
                    }
                    self.metrics
                        .retries
                        .get_or_create(&metrics::Provider {
                            provider: provider.name.clone(),
                        })
                        .inc();
                    tokio::time::sleep(wait).await;
                }
                record.row.attempts += 1;
                let sent = Instant::now();
                let failure = match self
                    .attempt(provider, &url, &payload, ask.stream, deadline)
                    .await
                {
                    Ok(answer) => {
                        record.billable = true;
                        return Ok(Opened {
                            answer,
                            model: target,
                            provider,
                        });
                    }
                    Err(f) => f,
                };
                self.metrics
                    .upstream_errors
                    .get_or_create(&metrics::UpstreamError {
                        provider: provider.name.clone(),
                        kind: failure.kind.clone(),
                    })
                    .inc();
                tracing::warn!(
                    agent = %record.row.agent,
                    "upstream {} ({}) attempt {}: {}",
                    provider.name,
                    target.model,
                    attempt + 1,
                    failure.error.message
                );
                if sent.elapsed() >= self.config.server.billed_after {
                    // It ran long enough to have been billed: count it, and
                    // do not pay for it twice.
                    record.billable = true;
                    record.fail("billed_failure", &failure.error.message);
                    return Err(failure.error);
                }
                if !failure.retryable {
                    record.fail("upstream_error", &failure.error.message);
                    return Err(failure.error);
                }
                last = Some(failure.error);
            }
        }
        let error = last.unwrap_or_else(|| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "no provider could be tried",
            )
        });
        record.fail("upstream_error", &error.message);
        Err(error)
    }

    /// One attempt: the request sent, the status checked, and the answer
    /// read far enough that nothing was yet passed on (the whole body, or a
    /// stream's first event).
    async fn attempt(
        &self,
        provider: &Provider,
        url: &str,
        payload: &Bytes,
        stream: bool,
        deadline: Instant,
    ) -> Result<Answer, Failure> {
        let first_byte = (Instant::now() + self.config.server.first_byte_timeout).min(deadline);
        let mut req = self
            .client
            .post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(payload.clone());
        req = match provider.kind {
            Kind::Openai => match &provider.api_key {
                Some(key) => req.bearer_auth(key),
                None => req,
            },
            Kind::Anthropic => {
                let req = req.header("anthropic-version", anthropic::API_VERSION);
                match &provider.api_key {
                    Some(key) => req.header("x-api-key", key),
                    None => req,
                }
            }
        };
        let name = &provider.name;
        let resp = match tokio::time::timeout_at(first_byte.into(), req.send()).await {
            Err(_) => return Err(Failure::timeout(name)),
            Ok(Err(e)) => return Err(Failure::connect(name, &e)),
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status();
        if !status.is_success() {
            let retry_after = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let text = tokio::time::timeout_at(first_byte.into(), read_capped(resp, 64 << 10))
                .await
                .unwrap_or_default();
            return Err(Failure::status(provider, status, retry_after, &text));
        }
        if !stream {
            let deadline = tokio::time::Instant::from(deadline);
            return match tokio::time::timeout_at(deadline, read_all(resp)).await {
                Err(_) => Err(Failure::timeout(name)),
                Ok(Err(e)) => Err(Failure::died(name, &e)),
                Ok(Ok(bytes)) => Ok(Answer::Whole(bytes)),
            };
        }
        let mut stream = resp.bytes_stream().boxed().peekable();
        let mut decoder = Decoder::default();
        loop {
            match decoder.next() {
                Ok(Some(first)) => {
                    gather(&mut stream, &mut decoder).await;
                    return Ok(Answer::Stream {
                        stream,
                        decoder,
                        first,
                    });
                }
                Ok(None) => {}
                Err(e) => return Err(Failure::garbage(name, &e)),
            }
            match tokio::time::timeout_at(first_byte.into(), stream.next()).await {
                Err(_) => return Err(Failure::timeout(name)),
                Ok(Some(Ok(chunk))) => decoder.push(&chunk),
                Ok(Some(Err(e))) => return Err(Failure::died(name, &e.to_string())),
                Ok(None) => {
                    return Err(Failure::died(
                        name,
                        "the stream ended before its first event",
                    ));
                }
            }
        }
    }

    /// A whole answer: checked, translated, usage taken, `model` set to
    /// the model that served it.
    fn whole(
        &self,
        bytes: Bytes,
        model: &Model,
        provider: &Provider,
        record: &mut Record,
    ) -> Result<Response, ApiError> {
        let garbage = |why: String| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                format!(
                    "upstream {} returned an invalid answer: {why}",
                    provider.name
                ),
            )
            .code("upstream_invalid_response")
        };
        let fail = |record: &mut Record, e: ApiError| {
            record.fail("upstream_error", &e.message);
            e
        };
        let body = match provider.kind {
            // Passed through byte for byte; only `usage` is read, unless
            // the upstream gave none and the text must be measured.
            Kind::Openai => {
                let lite: LiteAnswer = serde_json::from_slice(&bytes)
                    .map_err(|e| fail(record, garbage(format!("not a chat completion ({e})"))))?;
                record.usage = lite.usage.map(|u| (u.prompt_tokens, u.completion_tokens));
                if record.usage.is_none() {
                    let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
                    record.output_chars += output_chars(&v);
                }
                bytes
            }
            Kind::Anthropic => {
                let parsed: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| fail(record, garbage(format!("not JSON ({e})"))))?;
                let answer = anthropic::to_chat_completion(&parsed, &model.model, unix_secs())
                    .map_err(|e| fail(record, garbage(e)))?;
                record.usage = usage_of(&answer);
                record.output_chars += output_chars(&answer);
                Bytes::from(answer.to_string())
            }
        };
        record.ttft();
        record.finish("ok", None);
        let mut r = http::Response::new(web::full(body));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        Ok(r)
    }
}

struct Opened<'a> {
    answer: Answer,
    model: &'a Model,
    provider: &'a Provider,
}

/// An upstream's streamed body.
type Upstream = Peekable<BoxStream<'static, reqwest::Result<Bytes>>>;

/// Takes into `decoder` the chunks the upstream connection already holds
/// (it hands them over one per turn of its task), so that the response's
/// head and the first events go out in one write. Stops at the stream's
/// end or an error, which are left for the relay, after [`IDLE_YIELDS`]
/// turns that brought nothing, or at [`BATCH_BYTES`].
async fn gather(stream: &mut Upstream, decoder: &mut Decoder) {
    use std::task::Poll;
    let mut idle = 0;
    while decoder.buffered() < BATCH_BYTES {
        let ready = std::future::poll_fn(|cx| {
            Poll::Ready(match std::pin::Pin::new(&mut *stream).poll_peek(cx) {
                Poll::Ready(Some(Ok(_))) => Some(true),
                Poll::Ready(_) => None,
                Poll::Pending => Some(false),
            })
        })
        .await;
        match ready {
            Some(true) => {
                if let Some(Ok(chunk)) = stream.next().await {
                    decoder.push(&chunk);
                }
                idle = 0;
            }
            Some(false) if idle < IDLE_YIELDS => {
                idle += 1;
                tokio::task::yield_now().await;
            }
            _ => return,
        }
    }
}

enum Answer {
    Whole(Bytes),
    Stream {
        stream: Upstream,
        decoder: Decoder,
        first: Event,
    },
}

/// A failed attempt: the error the client would get, and whether another
/// attempt may succeed.
struct Failure {
    error: ApiError,
    retryable: bool,
    kind: String,
}

impl Failure {
    fn bad_gateway(kind: &str, message: String, retryable: bool) -> Failure {
        Failure {
            error: ApiError::new(StatusCode::BAD_GATEWAY, "upstream_error", message),
            retryable,
            kind: kind.into(),
        }
    }

    fn timeout(provider: &str) -> Failure {
        Failure {
            error: ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_error",
                format!("upstream {provider} did not answer in time"),
            )
            .code("upstream_timeout"),
            retryable: true,
            kind: "timeout".into(),
        }
    }

    fn connect(provider: &str, e: &reqwest::Error) -> Failure {
        let mut why = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            why = format!("{why}: {s}");
            source = s.source();
        }
        Failure::bad_gateway(
            "connect",
            format!("cannot reach upstream {provider}: {why}"),
            true,
        )
    }

    fn died(provider: &str, why: &str) -> Failure {
        Failure::bad_gateway(
            "died",
            format!("upstream {provider} broke off its answer: {why}"),
            true,
        )
    }

    fn garbage(provider: &str, why: &str) -> Failure {
        Failure::bad_gateway(
            "garbage",
            format!("upstream {provider} returned an invalid answer: {why}"),
            false,
        )
    }

    fn status(
        provider: &Provider,
        status: StatusCode,
        retry_after: Option<u64>,
        body: &str,
    ) -> Failure {
        let detail = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| match provider.kind {
                Kind::Anthropic => anthropic::error_message(&v),
                Kind::Openai => v
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            })
            .unwrap_or_else(|| {
                body.chars()
                    .take(200)
                    .collect::<String>()
                    .trim()
                    .to_string()
            });
        let retryable = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
        // The caller's own mistakes keep their status; the upstream's
        // failures are the gateway's.
        let client_status = match status.as_u16() {
            400 | 404 | 413 | 422 | 429 => status,
            _ => StatusCode::BAD_GATEWAY,
        };
        let kind = if status.is_server_error() {
            "status_5xx".to_string()
        } else {
            format!("status_{}", status.as_u16())
        };
        let mut error = ApiError::new(
            client_status,
            "upstream_error",
            format!("upstream {} answered {status}: {detail}", provider.name),
        );
        error.retry_after = retry_after;
        Failure {
            error,
            retryable,
            kind,
        }
    }
}

fn backoff(server: &super::config::Server, attempt: u32, retry_after: Option<u64>) -> Duration {
    let exp = server
        .backoff
        .saturating_mul(1u32 << (attempt - 1).min(16))
        .min(server.max_backoff);
    // Jitter: anywhere in the upper half, so retries do not arrive together.
    let jittered = exp.mul_f64(0.5 + fastrand::f64() * 0.5);
    match retry_after {
        Some(secs) => jittered.max(Duration::from_secs(secs)),
        None => jittered,
    }
}

fn parse(body: &[u8]) -> Result<Ask, ApiError> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(None, format!("the request body is not valid JSON: {e}")))?;
    let Some(obj) = body.as_object() else {
        return Err(ApiError::invalid(
            None,
            "the request body must be a JSON object",
        ));
    };
    let requested = match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(_) => {
            return Err(ApiError::invalid(
                Some("model"),
                "`model` must be a non-empty string",
            ));
        }
        None => {
            return Err(ApiError::invalid(
                Some("model"),
                "missing required parameter: `model`",
            ));
        }
    };
    let input_chars = match obj.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => {
            m.iter().map(|m| text_len(Some(m)) + 4).sum::<usize>()
        }
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                Some("messages"),
                "`messages` must not be empty",
            ));
        }
        Some(_) => {
            return Err(ApiError::invalid(
                Some("messages"),
                "`messages` must be an array",
            ));
        }
        None => {
            return Err(ApiError::invalid(
                Some("messages"),
                "missing required parameter: `messages`",
            ));
        }
    };
    let tools_chars = obj.get("tools").map(|t| t.to_string().len()).unwrap_or(0);
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid(
                Some("stream"),
                "`stream` must be a boolean",
            ));
        }
    };
    let wants_usage = stream
        && obj
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            == Some(true);
    let max_output = obj
        .get("max_completion_tokens")
        .or_else(|| obj.get("max_tokens"))
        .and_then(Value::as_u64);
    Ok(Ask {
        input_estimate: estimate_tokens(input_chars + tools_chars),
        body,
        requested,
        stream,
        wants_usage,
        max_output,
    })
}

/// Tokens, from characters: about four per token in English and code.
fn estimate_tokens(chars: usize) -> u64 {
    chars.div_ceil(4) as u64
}

/// Characters of text in a message or delta: content (string or parts)
/// and tool-call arguments.
fn text_len(message: Option<&Value>) -> usize {
    let Some(m) = message else { return 0 };
    let content = match m.get("content") {
        Some(Value::String(s)) => s.len(),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| p.get("text").and_then(Value::as_str).map_or(0, str::len))
            .sum(),
        _ => 0,
    };
    let tools = m
        .get("tool_calls")
        .and_then(Value::as_array)
        .map_or(0, |calls| {
            calls
                .iter()
                .map(|c| {
                    c.pointer("/function/arguments")
                        .and_then(Value::as_str)
                        .map_or(0, str::len)
                        + c.pointer("/function/name")
                            .and_then(Value::as_str)
                            .map_or(0, str::len)
                })
                .sum()
        });
    content + tools
}

/// What is read of a streamed OpenAI chunk.
#[derive(serde::Deserialize)]
struct LiteChunk<'a> {
    #[serde(borrow)]
    choices: Option<Vec<LiteChoice<'a>>>,
    usage: Option<LiteUsage>,
    #[serde(borrow)]
    error: Option<LiteError<'a>>,
}

#[derive(serde::Deserialize)]
struct LiteChoice<'a> {
    #[serde(borrow)]
    delta: Option<LiteDelta<'a>>,
}

#[derive(serde::Deserialize)]
struct LiteDelta<'a> {
    #[serde(borrow)]
    content: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    tool_calls: Option<Vec<LiteToolCall<'a>>>,
}

#[derive(serde::Deserialize)]
struct LiteToolCall<'a> {
    #[serde(borrow)]
    function: Option<LiteFunction<'a>>,
}

#[derive(serde::Deserialize)]
struct LiteFunction<'a> {
    #[serde(borrow)]
    name: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    arguments: Option<std::borrow::Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct LiteError<'a> {
    #[serde(borrow)]
    message: Option<std::borrow::Cow<'a, str>>,
}

/// What is read of a whole OpenAI answer: that it has `choices`, and its
/// usage.
#[derive(serde::Deserialize)]
struct LiteAnswer {
    #[serde(rename = "choices")]
    _choices: Vec<serde::de::IgnoredAny>,
    usage: Option<LiteUsage>,
}

#[derive(serde::Deserialize)]
struct LiteUsage {
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

fn output_chars(answer: &Value) -> usize {
    answer
        .get("choices")
        .and_then(Value::as_array)
        .map_or(0, |c| c.iter().map(|c| text_len(c.get("message"))).sum())
}

fn usage_of(v: &Value) -> Option<(u64, u64)> {
    let u = v.get("usage")?;
    Some((
        u.get("prompt_tokens")?.as_u64()?,
        u.get("completion_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    ))
}

/// The upstream URL and body for `model` at `provider`.
fn request_for(provider: &Provider, model: &Model, ask: &Ask) -> Result<(String, Bytes), ApiError> {
    match provider.kind {
        Kind::Openai => {
            let mut body = ask.body.clone();
            if let Some(obj) = body.as_object_mut() {
                obj.insert("model".into(), Value::String(model.model.clone()));
                if ask.stream {
                    // Ask for usage always, so streams are accounted exactly;
                    // the chunk is removed again unless the client asked.
                    let opts = obj.entry("stream_options").or_insert_with(|| json!({}));
                    if let Some(o) = opts.as_object_mut() {
                        o.insert("include_usage".into(), Value::Bool(true));
                    }
                }
            }
            Ok((
                format!("{}/chat/completions", provider.base_url),
                Bytes::from(body.to_string()),
            ))
        }
        Kind::Anthropic => {
            let body = anthropic::to_messages_request(&ask.body, &model.model).map_err(|why| {
                ApiError::invalid(None, format!("cannot be sent to {}: {why}", provider.name))
            })?;
            Ok((
                format!("{}/messages", provider.base_url),
                Bytes::from(body.to_string()),
            ))
        }
    }
}

async fn read_capped(resp: reqwest::Response, cap: usize) -> String {
    let mut out = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(Ok(chunk)) = s.next().await {
        out.extend_from_slice(&chunk);
        if out.len() >= cap {
            out.truncate(cap);
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn read_all(resp: reqwest::Response) -> Result<Bytes, String> {
    if resp
        .content_length()
        .is_some_and(|n| n as usize > MAX_ANSWER_BYTES)
    {
        return Err(format!(
            "an answer larger than {} MiB",
            MAX_ANSWER_BYTES >> 20
        ));
    }
    let mut out = bytes::BytesMut::new();
    let mut s = resp.bytes_stream();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| {
            let mut why = e.to_string();
            if let Some(src) = std::error::Error::source(&e) {
                why = format!("{why}: {src}");
            }
            why
        })?;
        out.extend_from_slice(&chunk);
        if out.len() > MAX_ANSWER_BYTES {
            return Err(format!(
                "an answer larger than {} MiB",
                MAX_ANSWER_BYTES >> 20
            ));
        }
    }
    Ok(out.freeze())
}

fn unix_secs() -> i64 {
    now_ms() / 1000
}

/// One call's accounting: written exactly once, when the call ends — or,
/// if it is dropped (the client went away), as `client_closed`.
struct Record {
    sidecar: Arc<Sidecar>,
    row: UsageRow,
    started: Instant,
    reservation: Option<Reservation>,
    input_estimate: u64,
    output_chars: usize,
    /// (prompt, completion) tokens reported by the upstream.
    usage: Option<(u64, u64)>,
    /// An upstream accepted the call (or ran long enough to bill it).
    billable: bool,
    done: bool,
}

impl Record {
    fn route(&self) -> metrics::Route {
        metrics::Route {
            agent: self.row.agent.clone(),
            model: self.row.model_served.clone().unwrap_or_default(),
            provider: self.row.provider.clone().unwrap_or_default(),
        }
    }

    fn ttft(&mut self) {
        if self.row.ttft_ms.is_none() {
            self.row.ttft_ms = Some(self.started.elapsed().as_secs_f64() * 1e3);
        }
    }

    fn fail(&mut self, status: &str, why: &str) {
        self.finish(status, Some(why.to_string()));
    }

    fn finish(&mut self, status: &str, detail: Option<String>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let s = &self.sidecar;
        let now = now_ms();
        let (tokens_in, tokens_out, estimated) = match self.usage {
            Some((i, o)) => (i, o, false),
            None if self.billable => (
                self.input_estimate,
                estimate_tokens(self.output_chars),
                true,
            ),
            None => (0, 0, false),
        };
        let price = s
            .config
            .price(self.row.model_served.as_deref().unwrap_or(""));
        let cost = (tokens_in as f64 * price.input + tokens_out as f64 * price.output) / 1e6;
        if let Some(r) = self.reservation.take() {
            r.settle(
                Amount {
                    tokens: tokens_in + tokens_out,
                    usd: cost,
                },
                now,
            );
        }
        let row = &mut self.row;
        row.at = now;
        row.tokens_in = tokens_in;
        row.tokens_out = tokens_out;
        row.estimated = estimated;
        row.cost_usd = cost;
        row.latency_ms = self.started.elapsed().as_secs_f64() * 1e3;
        row.status = status.to_string();
        row.detail = detail;
        let route = self.route();
        let m = &s.metrics;
        m.requests
            .get_or_create(&metrics::Call {
                agent: route.agent.clone(),
                model: route.model.clone(),
                provider: route.provider.clone(),
                status: status.to_string(),
            })
            .inc();
        for (direction, n) in [("in", tokens_in), ("out", tokens_out)] {
            m.tokens
                .get_or_create(&metrics::Tokens {
                    agent: route.agent.clone(),
                    model: route.model.clone(),
                    provider: route.provider.clone(),
                    direction: direction.into(),
                })
                .inc_by(n);
        }
        m.cost.get_or_create(&route).inc_by(cost);
        m.latency
            .get_or_create(&route)
            .observe(self.started.elapsed().as_secs_f64());
        s.usage.record(std::mem::take(&mut self.row));
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if !self.done {
            self.finish(
                "client_closed",
                Some("the client went away before the answer was complete".into()),
            );
        }
    }
}

/// Relays a stream to the client as its response body: translated
/// (Anthropic), the usage chunk taken and removed unless asked for, and a
/// proper error event if the upstream breaks off. It is pulled by the
/// client's connection (no task, no channel). Events that arrive together
/// go out in one write: the upstream connection hands its body over one
/// chunk at a time (its task runs between two of ours), so with output in
/// hand the relay yields, and sends when [`IDLE_YIELDS`] yields in a row
/// brought nothing new or [`BATCH_BYTES`] are waiting (one write instead
/// of one per event: for a 15-event answer that halved the time the
/// sidecar adds). When the client goes away the body is dropped, which
/// drops the upstream stream (closing its connection, so the upstream
/// stops generating) and records the call as `client_closed`.
struct Relay {
    /// Set for an Anthropic upstream; OpenAI events pass through as they are.
    translator: Option<anthropic::StreamTranslator>,
    wants_usage: bool,
    record: Record,
    stream: Upstream,
    decoder: Decoder,
    first: Option<Event>,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    ended: bool,
    /// What the client gets next, gathered over yields.
    out: bytes::BytesMut,
    /// Yields in a row that brought nothing new.
    idle: u8,
    /// Nothing was sent yet: what the first poll has goes out at once, with
    /// the response's head (the gathering was done before it).
    fresh: bool,
}

/// Past this much waiting output the relay sends without gathering more.
const BATCH_BYTES: usize = 16 << 10;

/// Yields in a row without a new chunk before what is gathered is sent.
/// The upstream connection's task needs two turns to hand over a chunk it
/// already holds; a third covers a busy runtime. An upstream that is
/// really between events costs three quick polls per event.
const IDLE_YIELDS: u8 = 3;

impl hyper::body::Body for Relay {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        use std::task::Poll;
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let mut out = std::mem::take(&mut this.out);
        let mut brought = false;
        loop {
            let next = match this.first.take() {
                Some(e) => Ok(Some(e)),
                None => this.decoder.next(),
            };
            match next {
                Ok(Some(event)) => match this.event(event, &mut out) {
                    Ok(false) => continue,
                    Ok(true) => {
                        this.ended = true;
                        this.record.finish("ok", None);
                        return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
                    }
                    Err(why) => {
                        this.broke_off("upstream_error", &why, &mut out);
                        return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
                    }
                },
                Ok(None) => {}
                Err(why) => {
                    this.broke_off("upstream_died", &why, &mut out);
                    return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
                }
            }
            if out.len() >= BATCH_BYTES {
                this.idle = 0;
                return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
            }
            let (status, why) = match this.stream.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    this.decoder.push(&chunk);
                    brought = true;
                    continue;
                }
                Poll::Pending if !out.is_empty() => {
                    this.idle = if brought { 0 } else { this.idle + 1 };
                    if this.idle > IDLE_YIELDS || std::mem::take(&mut this.fresh) {
                        this.idle = 0;
                        return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
                    }
                    // Let the upstream connection hand over what it holds.
                    this.out = out;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(Some(Err(e))) => ("upstream_died", e.to_string()),
                Poll::Ready(None) => (
                    "upstream_died",
                    "the stream ended before it was complete".to_string(),
                ),
                Poll::Pending => match this.deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => (
                        "timeout",
                        "the call ran past server.timeout_secs".to_string(),
                    ),
                    Poll::Pending => return Poll::Pending,
                },
            };
            this.broke_off(status, &why, &mut out);
            return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

impl Relay {
    /// Handles one upstream event, appending what the client gets to
    /// `out`. `Ok(true)` when the stream is complete; `Err` when the
    /// upstream sent something wrong.
    fn event(&mut self, event: Event, out: &mut bytes::BytesMut) -> Result<bool, String> {
        let Some(t) = self.translator.as_mut() else {
            return self.openai_event(event, out);
        };
        let v: Value = serde_json::from_str(event.data.trim())
            .map_err(|e| format!("an event that is not JSON ({e})"))?;
        let chunks = t.event(&event.name, &v)?;
        if let Some(u) = t.usage() {
            self.record.usage = Some(u);
        }
        let finished = t.finished();
        for chunk in chunks {
            if self.pass(&chunk) {
                out.extend_from_slice(format!("data: {chunk}\n\n").as_bytes());
            }
        }
        if finished {
            out.extend_from_slice(b"data: [DONE]\n\n");
        }
        Ok(finished)
    }

    /// An OpenAI event, read only as far as accounting needs (a borrowed
    /// shape, no tree), and passed on byte for byte.
    fn openai_event(&mut self, event: Event, out: &mut bytes::BytesMut) -> Result<bool, String> {
        if event.data.trim() == "[DONE]" {
            out.extend_from_slice(&event.raw);
            return Ok(true);
        }
        let chunk: LiteChunk<'_> = serde_json::from_str(&event.data)
            .map_err(|e| format!("an event that is not a chunk ({e})"))?;
        if let Some(e) = chunk.error {
            return Err(e
                .message
                .map_or_else(|| "an error event".to_string(), |m| m.into_owned()));
        }
        let choices = chunk.choices.unwrap_or_default();
        if let Some(u) = &chunk.usage {
            self.record.usage = Some((u.prompt_tokens, u.completion_tokens));
            if choices.is_empty() && !self.wants_usage {
                return Ok(false);
            }
        }
        let chars: usize = choices
            .iter()
            .filter_map(|c| c.delta.as_ref())
            .map(|d| {
                d.content.as_ref().map_or(0, |c| c.len())
                    + d.tool_calls.as_ref().map_or(0, |calls| {
                        calls
                            .iter()
                            .filter_map(|c| c.function.as_ref())
                            .map(|f| {
                                f.name.as_ref().map_or(0, |n| n.len())
                                    + f.arguments.as_ref().map_or(0, |a| a.len())
                            })
                            .sum()
                    })
            })
            .sum();
        if chars > 0 {
            self.record.output_chars += chars;
            self.record.ttft();
        }
        out.extend_from_slice(&event.raw);
        Ok(false)
    }

    /// Whether a chunk goes to the client (the usage chunk only when asked
    /// for), counting its text for estimates and time to first token.
    fn pass(&mut self, chunk: &Value) -> bool {
        let choices = chunk.get("choices").and_then(Value::as_array);
        let usage_chunk = choices.is_some_and(|c| c.is_empty())
            && chunk.get("usage").is_some_and(|u| !u.is_null());
        if usage_chunk && !self.wants_usage {
            return false;
        }
        let chars: usize = choices.map_or(0, |c| c.iter().map(|c| text_len(c.get("delta"))).sum());
        if chars > 0 {
            self.record.output_chars += chars;
            self.record.ttft();
        }
        true
    }

    /// The upstream failed mid-stream: the client gets an error event in
    /// OpenAI's shape, and the call is recorded with what was received.
    fn broke_off(&mut self, status: &str, why: &str, out: &mut bytes::BytesMut) {
        self.ended = true;
        let provider = self.record.row.provider.clone().unwrap_or_default();
        let message = format!("upstream {provider} broke off the stream: {why}");
        let event = json!({ "error": {
            "message": message,
            "type": "upstream_error",
            "param": null,
            "code": "stream_interrupted",
        }});
        out.extend_from_slice(format!("data: {event}\n\n").as_bytes());
        self.record
            .sidecar
            .metrics
            .upstream_errors
            .get_or_create(&metrics::UpstreamError {
                provider,
                kind: status.to_string(),
            })
            .inc();
        self.record.fail(status, &message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(text: &'static str) -> reqwest::Result<Bytes> {
        Ok(Bytes::from_static(text.as_bytes()))
    }

    #[tokio::test]
    async fn gather_takes_the_ready_chunks_and_stops_when_none_come() {
        // Two chunks ready, then an upstream that sends nothing more: gather
        // takes both and returns after its idle turns, not waiting.
        let ready = futures_util::stream::iter([chunk("data: 1\n\n"), chunk("data: 2\n\n")]);
        let mut stream: Upstream = ready
            .chain(futures_util::stream::pending())
            .boxed()
            .peekable();
        let mut decoder = Decoder::default();
        gather(&mut stream, &mut decoder).await;
        assert_eq!(decoder.next().unwrap().unwrap().data, "1");
        assert_eq!(decoder.next().unwrap().unwrap().data, "2");
        assert_eq!(decoder.next().unwrap(), None);

        // An error is left in the stream for the relay to report.
        let broken = futures_util::stream::iter([chunk("data: 3\n\n")]).chain(
            futures_util::stream::once(async {
                // A real reqwest error: a request to a URL it cannot send.
                Err(crate::web::client_builder()
                    .build()
                    .unwrap()
                    .get("http://[::1")
                    .build()
                    .unwrap_err())
            }),
        );
        let mut stream: Upstream = broken.boxed().peekable();
        let mut decoder = Decoder::default();
        gather(&mut stream, &mut decoder).await;
        assert_eq!(decoder.next().unwrap().unwrap().data, "3");
        assert!(matches!(stream.next().await, Some(Err(_))));
    }
}
