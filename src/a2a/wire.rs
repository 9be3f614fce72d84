//! The A2A JSON-RPC wire format, in the two versions peers speak today.
//!
//! Sources checked (not memory), and what was relied on:
//!
//! - A2A specification 1.0 (tags `v1.0.0`, `v1.0.1`, and `main` as of Aug
//!   2026) in `a2aproject/A2A`: `specification/a2a.proto` (normative) and
//!   `docs/specification.md` sections 3.2 (SendMessageConfiguration,
//!   StreamResponse, historyLength), 3.2.6 and 3.6 (the `A2A-Version`
//!   service parameter), 3.3.2 and 5.4 (error codes), 5.5 (ProtoJSON field
//!   and enum spelling), 5.6.1 (timestamps), 8 (agent card) and 9 (JSON-RPC
//!   binding).
//! - A2A specification 0.3 (tag `v0.3.0`): `docs/specification.md` sections
//!   5 (agent card), 7 (methods), 8 (errors), 9 (examples) and
//!   `types/src/types.ts`.
//! - The official Python SDK `a2a-sdk` 1.3.0 (PyPI, `a2aproject/a2a-python`):
//!   `client/card_resolver.py` (card parsing, with 0.3 compatibility),
//!   `client/client_factory.py` (interface and version choice),
//!   `client/transports/jsonrpc.py` and `compat/v0_3/jsonrpc_transport.py`,
//!   `server/routes/jsonrpc_dispatcher.py`, `utils/version_validator.py`,
//!   `utils/error_handlers.py`, and `server/request_handlers/
//!   response_helpers.py::agent_card_to_dict` (which serves one merged card
//!   carrying both the 1.0 and the 0.3 fields).
//!
//! What differs between 1.0 and 0.3 on the JSON-RPC binding:
//!
//! | | 1.0 | 0.3 |
//! |---|---|---|
//! | methods | `SendMessage`, `SendStreamingMessage`, `GetTask`, `CancelTask`, `SubscribeToTask` | `message/send`, `message/stream`, `tasks/get`, `tasks/cancel`, `tasks/resubscribe` |
//! | `kind` discriminator | none: a Part is `{"text"}` / `{"data"}` / `{"raw"}` / `{"url"}` | on every object: `"kind":"text"`, `"task"`, `"message"`, `"status-update"`, `"artifact-update"` |
//! | Role | `ROLE_USER`, `ROLE_AGENT` | `user`, `agent` |
//! | TaskState | `TASK_STATE_COMPLETED`, `TASK_STATE_INPUT_REQUIRED`, ... | `completed`, `input-required`, ... |
//! | send result | `{"task":{..}}` or `{"message":{..}}` | the Task or Message itself, told apart by `kind` |
//! | stream event | `{"task"}` / `{"message"}` / `{"statusUpdate"}` / `{"artifactUpdate"}` | the object itself with its `kind`; a status update carries `final` |
//! | blocking | `configuration.returnImmediately` (default false, so blocking) | `configuration.blocking` (unset is blocking in the SDKs) |
//! | error `data` | array of `google.rpc` details, each with `@type` | any value |
//! | version error | -32009 `VersionNotSupportedError` | (none defined) |
//! | card | `supportedInterfaces[{url, protocolBinding, protocolVersion}]`, `securityRequirements[{schemes:{name:{list}}}]`, schemes wrapped (`httpAuthSecurityScheme`) | `url`, `preferredTransport`, `protocolVersion`, `additionalInterfaces[{url, transport}]`, `security[{name:[scopes]}]`, schemes flat with `type` |
//!
//! Both versions publish the card at `/.well-known/agent-card.json` (0.2.x
//! used `/.well-known/agent.json`, which the 0.3 SDKs still try as a
//! fallback), so the 1.0 card is served merged with the 0.3 fields exactly
//! as the official SDK does: a 0.3 client reads `url`, a 1.0 client reads
//! `supportedInterfaces`, and each ignores the other's fields.
//!
//! `A2A-Version`: clients send `Major.Minor` (patch ignored); servers must
//! answer -32009 for a version they do not serve, and read an absent header
//! as 0.3. Here the method name decides the version (so a 1.0 client that
//! omits the header still works), and a header naming another version than
//! the method's, or one we do not serve, gets -32009, as the SDK's server
//! does.
//!
//! JSON-RPC errors travel with HTTP 200 (the SDK client raises on any
//! non-2xx before reading the body); `busy` is the exception: send it with
//! HTTP 503 and `Retry-After` so clients know nothing ran.

use serde_json::{Map, Value, json};

/// Path of the agent card for A2A 1.0 and 0.3 (both use it; the card
/// served there carries both versions' fields).
pub const CARD_PATH: &str = "/.well-known/agent-card.json";
/// Pre-0.3 path, still probed by 0.3 SDKs; serve the pure 0.3 card there.
pub const LEGACY_CARD_PATH: &str = "/.well-known/agent.json";
/// The HTTP header (A2A "service parameter") naming the protocol version.
pub const VERSION_HEADER: &str = "A2A-Version";

/// JSON-RPC error codes used here, per JSON-RPC 2.0 and A2A 1.0 section 5.4.
pub mod codes {
    /// Invalid JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a valid JSON-RPC request object.
    pub const INVALID_REQUEST: i64 = -32600;
    /// Unknown method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Bad params.
    pub const INVALID_PARAMS: i64 = -32602;
    /// Server-side failure.
    pub const INTERNAL: i64 = -32603;
    /// A2A `TaskNotFoundError`.
    pub const TASK_NOT_FOUND: i64 = -32001;
    /// A2A `TaskNotCancelableError`.
    pub const TASK_NOT_CANCELABLE: i64 = -32002;
    /// A2A `PushNotificationNotSupportedError`.
    pub const PUSH_NOT_SUPPORTED: i64 = -32003;
    /// A2A `UnsupportedOperationError`.
    pub const UNSUPPORTED_OPERATION: i64 = -32004;
    /// A2A `ExtendedAgentCardNotConfiguredError`.
    pub const EXTENDED_CARD_NOT_CONFIGURED: i64 = -32007;
    /// A2A `VersionNotSupportedError` (1.0 only).
    pub const VERSION_NOT_SUPPORTED: i64 = -32009;
    /// cairn's "busy, retry later". -32000 is the generic implementation
    /// defined server error of JSON-RPC 2.0; A2A's own codes start at
    /// -32001, so this cannot collide with a current or future A2A error.
    pub const BUSY: i64 = -32000;
}

const ERROR_INFO_TYPE: &str = "type.googleapis.com/google.rpc.ErrorInfo";
const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";
const A2A_DOMAIN: &str = "a2a-protocol.org";

/// The protocol version of one request; it decides every output shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// A2A 1.0 (ProtoJSON shapes, PascalCase methods).
    V1,
    /// A2A 0.3 (`kind` discriminators, slash methods).
    V03,
}

impl Version {
    /// The `Major.Minor` string used in headers and cards.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1 => "1.0",
            Version::V03 => "0.3",
        }
    }

    /// Reads an `A2A-Version` value; patch numbers are ignored as the spec
    /// requires, and only the versions served here are recognised.
    pub fn parse(value: &str) -> Option<Version> {
        let value = value.trim();
        let value = value.strip_prefix(['v', 'V']).unwrap_or(value);
        let mut it = value.split('.');
        let major: u32 = it.next()?.parse().ok()?;
        let minor: u32 = it.next().unwrap_or("0").parse().ok()?;
        if let Some(patch) = it.next()
            && (patch.parse::<u32>().is_err() || it.next().is_some())
        {
            return None;
        }
        match (major, minor) {
            (1, 0) => Some(Version::V1),
            (0, 3) => Some(Version::V03),
            _ => None,
        }
    }

    /// The JSON-RPC method name of `method` in this version.
    pub fn method_name(self, method: Method) -> &'static str {
        match (self, method) {
            (Version::V1, Method::Send) => "SendMessage",
            (Version::V1, Method::Stream) => "SendStreamingMessage",
            (Version::V1, Method::Get) => "GetTask",
            (Version::V1, Method::Cancel) => "CancelTask",
            (Version::V1, Method::Subscribe) => "SubscribeToTask",
            (Version::V03, Method::Send) => "message/send",
            (Version::V03, Method::Stream) => "message/stream",
            (Version::V03, Method::Get) => "tasks/get",
            (Version::V03, Method::Cancel) => "tasks/cancel",
            (Version::V03, Method::Subscribe) => "tasks/resubscribe",
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The operations cairn serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// SendMessage / message/send.
    Send,
    /// SendStreamingMessage / message/stream (answered with SSE).
    Stream,
    /// GetTask / tasks/get.
    Get,
    /// CancelTask / tasks/cancel.
    Cancel,
    /// SubscribeToTask / tasks/resubscribe (answered with SSE).
    Subscribe,
}

impl Method {
    /// Both the method and the version it implies, from a method name.
    pub fn from_name(name: &str) -> Option<(Method, Version)> {
        [Version::V1, Version::V03].into_iter().find_map(|v| {
            [
                Method::Send,
                Method::Stream,
                Method::Get,
                Method::Cancel,
                Method::Subscribe,
            ]
            .into_iter()
            .find(|m| v.method_name(*m) == name)
            .map(|m| (m, v))
        })
    }

    /// Whether the answer is an SSE stream rather than one JSON body.
    pub fn is_streaming(self) -> bool {
        matches!(self, Method::Stream | Method::Subscribe)
    }
}

/// A JSON-RPC error object, ready for [`error_response`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("JSON-RPC error {code}: {message}")]
pub struct RpcError {
    /// JSON-RPC / A2A error code (see [`codes`]).
    pub code: i64,
    /// One human-readable line.
    pub message: String,
    /// Structured details: in A2A 1.0 an array of `google.rpc` objects.
    pub data: Option<Value>,
}

impl RpcError {
    /// An error carrying a `google.rpc.ErrorInfo` detail, the shape A2A 1.0
    /// requires for `data` (0.3 accepts any `data`, so it serves both).
    fn a2a(code: i64, message: String, reason: &str, metadata: Value) -> RpcError {
        RpcError {
            code,
            message,
            data: Some(json!([{
                "@type": ERROR_INFO_TYPE,
                "reason": reason,
                "domain": A2A_DOMAIN,
                "metadata": metadata,
            }])),
        }
    }

    /// Appends a reason to the message, keeping it one line.
    pub fn with_reason(mut self, why: impl AsRef<str>) -> RpcError {
        self.message = format!("{}: {}", self.message, one_line(why.as_ref()));
        self
    }

    /// Replaces the message (kept to one line), e.g. to say who is busy.
    pub fn with_message(mut self, message: impl AsRef<str>) -> RpcError {
        self.message = one_line(message.as_ref());
        self
    }

    /// -32700: the body is not JSON.
    pub fn parse_error() -> RpcError {
        RpcError::a2a(
            codes::PARSE_ERROR,
            "Invalid JSON payload".into(),
            "PARSE_ERROR",
            json!({}),
        )
    }

    /// -32600: JSON, but not a JSON-RPC 2.0 request.
    pub fn invalid_request() -> RpcError {
        RpcError::a2a(
            codes::INVALID_REQUEST,
            "Request payload validation error".into(),
            "INVALID_REQUEST",
            json!({}),
        )
    }

    /// -32600 with the reason (e.g. the body is too large).
    pub fn invalid_request_why(why: impl AsRef<str>) -> RpcError {
        RpcError::invalid_request().with_reason(why)
    }

    /// -32601, naming the method so the caller sees its typo.
    pub fn method_not_found(name: &str) -> RpcError {
        RpcError::a2a(
            codes::METHOD_NOT_FOUND,
            format!("Method not found: {}", one_line(name)),
            "METHOD_NOT_FOUND",
            json!({ "method": name }),
        )
    }

    /// -32602 with a one-line reason naming the field.
    pub fn invalid_params(why: &str) -> RpcError {
        RpcError::a2a(
            codes::INVALID_PARAMS,
            format!("Invalid parameters: {}", one_line(why)),
            "INVALID_PARAMS",
            json!({}),
        )
    }

    /// -32603: our fault, not the caller's.
    pub fn internal(why: &str) -> RpcError {
        RpcError::a2a(
            codes::INTERNAL,
            format!("Internal error: {}", one_line(why)),
            "INTERNAL_ERROR",
            json!({}),
        )
    }

    /// -32001 (also used for tasks the caller may not see, per spec 3.3.2).
    pub fn task_not_found(id: &str) -> RpcError {
        RpcError::a2a(
            codes::TASK_NOT_FOUND,
            format!("Task not found: {}", one_line(id)),
            "TASK_NOT_FOUND",
            json!({ "taskId": id }),
        )
    }

    /// -32002: the task already ended. `state` is what it is now (a
    /// [`State`], or the store's word for it).
    pub fn task_not_cancelable(id: &str, state: impl std::fmt::Display) -> RpcError {
        let state = one_line(&state.to_string());
        RpcError::a2a(
            codes::TASK_NOT_CANCELABLE,
            format!("Task cannot be canceled: {} is {state}", one_line(id)),
            "TASK_NOT_CANCELABLE",
            json!({ "taskId": id, "state": state }),
        )
    }

    /// -32009: the `A2A-Version` header names a version not served here.
    pub fn version_not_supported(v: &str) -> RpcError {
        RpcError::a2a(
            codes::VERSION_NOT_SUPPORTED,
            format!(
                "Protocol version not supported: {} (supported: 1.0, 0.3)",
                one_line(v)
            ),
            "VERSION_NOT_SUPPORTED",
            json!({ "requestedVersion": v, "supportedVersions": "1.0,0.3" }),
        )
    }

    /// -32004: a known operation (or part of one) cairn does not offer.
    pub fn unsupported_operation(why: &str) -> RpcError {
        RpcError::a2a(
            codes::UNSUPPORTED_OPERATION,
            format!("This operation is not supported: {}", one_line(why)),
            "UNSUPPORTED_OPERATION",
            json!({}),
        )
    }

    /// -32003: push notifications are not offered (the card says so).
    pub fn push_not_supported() -> RpcError {
        RpcError::a2a(
            codes::PUSH_NOT_SUPPORTED,
            "Push Notification is not supported".into(),
            "PUSH_NOTIFICATION_NOT_SUPPORTED",
            json!({}),
        )
    }

    /// -32007: there is no authenticated extended card.
    pub fn extended_card_not_configured() -> RpcError {
        RpcError::a2a(
            codes::EXTENDED_CARD_NOT_CONFIGURED,
            "Extended agent card is not configured".into(),
            "EXTENDED_AGENT_CARD_NOT_CONFIGURED",
            json!({}),
        )
    }

    /// -32000 ([`codes::BUSY`]): nothing was run, try again later. Serve it
    /// with HTTP 503 and `Retry-After` so that clients, ours included,
    /// know the prompt never started and may safely retry.
    pub fn busy(retry_after_secs: u64) -> RpcError {
        RpcError {
            code: codes::BUSY,
            message: format!("Server busy: retry after {retry_after_secs} s"),
            data: Some(json!([
                {
                    "@type": ERROR_INFO_TYPE,
                    "reason": "SERVER_BUSY",
                    "domain": "cairn",
                    "metadata": { "retryAfterSeconds": retry_after_secs.to_string() },
                },
                { "@type": RETRY_INFO_TYPE, "retryDelay": format!("{retry_after_secs}s") },
            ])),
        }
    }

    /// The retry delay a [`RpcError::busy`] carries, for the HTTP layer's
    /// `Retry-After` header.
    pub fn retry_after_secs(&self) -> Option<u64> {
        if self.code != codes::BUSY {
            return None;
        }
        self.data.as_ref()?.as_array()?.iter().find_map(|d| {
            d.get("metadata")?
                .get("retryAfterSeconds")?
                .as_str()?
                .parse()
                .ok()
        })
    }
}

/// One parsed JSON-RPC request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The JSON-RPC id, echoed in every answer (a string or a number).
    pub id: Value,
    /// What is asked.
    pub method: Method,
    /// The version to answer in.
    pub version: Version,
    /// The method's parameters.
    pub params: Params,
}

/// Parameters, per method.
#[derive(Debug, Clone, PartialEq)]
pub enum Params {
    /// For [`Method::Send`] and [`Method::Stream`].
    Send(SendParams),
    /// For [`Method::Get`].
    Get {
        /// Task id.
        id: String,
        /// How many recent history messages to return (None: no limit).
        history_length: Option<usize>,
    },
    /// For [`Method::Cancel`].
    Cancel {
        /// Task id.
        id: String,
    },
    /// For [`Method::Subscribe`].
    Subscribe {
        /// Task id.
        id: String,
    },
}

/// A user message to run, flattened to what a cairn guest consumes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SendParams {
    /// The client's message id (required by both versions).
    pub message_id: String,
    /// Conversation to continue, if any.
    pub context_id: Option<String>,
    /// Task to continue (e.g. one in input-required), if any.
    pub task_id: Option<String>,
    /// All text parts joined with "\n"; data parts as compact JSON.
    pub text: String,
    /// Wait for a terminal or interrupted state before answering. Both
    /// versions default to blocking (1.0: `returnImmediately` false; 0.3:
    /// `blocking` unset, as the SDKs read it).
    pub blocking: bool,
    /// How many recent history messages to return (None: no limit).
    pub history_length: Option<usize>,
    /// The request's `metadata` object.
    pub metadata: Map<String, Value>,
}

/// Parses one JSON-RPC request body. On error, returns the id to answer
/// with (Null when it could not be read) and the error to send.
pub fn parse_request(
    body: &[u8],
    a2a_version_header: Option<&str>,
) -> Result<Request, (Value, RpcError)> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| {
        (
            Value::Null,
            RpcError::parse_error().with_reason(e.to_string()),
        )
    })?;
    let Value::Object(obj) = doc else {
        return Err((
            Value::Null,
            RpcError::invalid_request().with_reason(
                "the body must be one JSON-RPC request object (batches are not supported)",
            ),
        ));
    };
    let id = match obj.get("id") {
        Some(v @ (Value::String(_) | Value::Number(_))) => v.clone(),
        Some(_) => {
            return Err((
                Value::Null,
                RpcError::invalid_request().with_reason("id must be a string or a number"),
            ));
        }
        None => {
            return Err((
                Value::Null,
                RpcError::invalid_request()
                    .with_reason("id is required (notifications are not supported)"),
            ));
        }
    };
    let fail = |e: RpcError| Err((id.clone(), e));
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return fail(RpcError::invalid_request().with_reason("jsonrpc must be \"2.0\""));
    }
    let name = match obj.get("method") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return fail(RpcError::invalid_request().with_reason("method must be a string")),
        None => return fail(RpcError::invalid_request().with_reason("method is required")),
    };
    // An empty header is the same as none: the spec reads it as 0.3, here
    // the method name decides.
    let header = a2a_version_header.map(str::trim).filter(|h| !h.is_empty());
    let header_version = match header {
        Some(h) => match Version::parse(h) {
            Some(v) => Some(v),
            None => return fail(RpcError::version_not_supported(h)),
        },
        None => None,
    };
    let Some((method, version)) = Method::from_name(name) else {
        return fail(unserved_method(name));
    };
    if let (Some(h), Some(hv)) = (header, header_version)
        && hv != version
    {
        return fail(RpcError::version_not_supported(h).with_message(format!(
            "Protocol version not supported: the A2A-Version header says {h} but {name} is an A2A {version} method"
        )));
    }
    let params = match obj.get("params") {
        Some(Value::Object(p)) => p,
        Some(_) => return fail(RpcError::invalid_params("params must be an object")),
        None => return fail(RpcError::invalid_params("params is required")),
    };
    let params = match method {
        Method::Send | Method::Stream => parse_send(params, version).map(Params::Send),
        Method::Get => task_id(params).and_then(|id| {
            Ok(Params::Get {
                id,
                history_length: history_length(params, "historyLength")?,
            })
        }),
        Method::Cancel => task_id(params).map(|id| Params::Cancel { id }),
        Method::Subscribe => task_id(params).map(|id| Params::Subscribe { id }),
    };
    match params {
        Ok(params) => Ok(Request {
            id,
            method,
            version,
            params,
        }),
        Err(e) => fail(e),
    }
}

/// The error for a method name cairn does not serve: A2A methods it
/// deliberately leaves out get their specific A2A error, anything else -32601.
fn unserved_method(name: &str) -> RpcError {
    match name {
        "CreateTaskPushNotificationConfig"
        | "GetTaskPushNotificationConfig"
        | "ListTaskPushNotificationConfigs"
        | "DeleteTaskPushNotificationConfig"
        | "tasks/pushNotificationConfig/set"
        | "tasks/pushNotificationConfig/get"
        | "tasks/pushNotificationConfig/list"
        | "tasks/pushNotificationConfig/delete" => RpcError::push_not_supported(),
        "GetExtendedAgentCard" | "agent/getAuthenticatedExtendedCard" => {
            RpcError::extended_card_not_configured()
        }
        "ListTasks" | "tasks/list" => RpcError::unsupported_operation(name),
        _ => RpcError::method_not_found(name),
    }
}

/// Reads a SendMessageRequest (1.0) / MessageSendParams (0.3).
fn parse_send(params: &Map<String, Value>, version: Version) -> Result<SendParams, RpcError> {
    let message = match params.get("message") {
        Some(Value::Object(m)) => m,
        Some(_) => return Err(RpcError::invalid_params("message must be an object")),
        None => return Err(RpcError::invalid_params("message is required")),
    };
    let message_id = match message.get("messageId") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) | None => {
            return Err(RpcError::invalid_params("message.messageId is required"));
        }
        Some(_) => {
            return Err(RpcError::invalid_params(
                "message.messageId must be a string",
            ));
        }
    };
    match message.get("role") {
        Some(Value::String(r)) => match Role::parse(r) {
            Some(Role::User) => {}
            Some(Role::Agent) => {
                return Err(RpcError::invalid_params(
                    "message.role must be ROLE_USER (\"user\" in 0.3): a client sends user messages",
                ));
            }
            None => {
                return Err(RpcError::invalid_params(&format!(
                    "message.role {r:?} is not a role (ROLE_USER or \"user\")"
                )));
            }
        },
        Some(_) => return Err(RpcError::invalid_params("message.role must be a string")),
        None => return Err(RpcError::invalid_params("message.role is required")),
    }
    let parts = match message.get("parts") {
        Some(Value::Array(p)) if !p.is_empty() => p,
        Some(Value::Array(_)) | None => {
            return Err(RpcError::invalid_params(
                "message.parts must hold at least one part",
            ));
        }
        Some(_) => return Err(RpcError::invalid_params("message.parts must be an array")),
    };
    let texts = parts
        .iter()
        .enumerate()
        .map(|(i, p)| part_text(p, i))
        .collect::<Result<Vec<_>, _>>()?;
    let context_id = opt_string(message, "contextId", "message.contextId")?;
    let task_id = opt_string(message, "taskId", "message.taskId")?;

    let mut blocking = true;
    let mut history = None;
    match params.get("configuration") {
        None | Some(Value::Null) => {}
        Some(Value::Object(cfg)) => {
            // Both spellings are read in both versions (harmless); the
            // version's own field wins when a client sends both.
            let immediate = opt_bool(cfg, "returnImmediately", "configuration.returnImmediately")?;
            let block = opt_bool(cfg, "blocking", "configuration.blocking")?;
            blocking = match (version, immediate, block) {
                (Version::V1, Some(i), _) => !i,
                (Version::V03, _, Some(b)) => b,
                (_, Some(i), None) => !i,
                (_, None, Some(b)) => b,
                (_, None, None) => true,
            };
            history = history_length(cfg, "historyLength")?;
            for key in ["taskPushNotificationConfig", "pushNotificationConfig"] {
                if cfg.get(key).is_some_and(|v| !v.is_null()) {
                    return Err(RpcError::push_not_supported());
                }
            }
        }
        Some(_) => return Err(RpcError::invalid_params("configuration must be an object")),
    }
    let metadata = match params.get("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(RpcError::invalid_params("metadata must be an object")),
    };
    Ok(SendParams {
        message_id,
        context_id,
        task_id,
        text: texts.join("\n"),
        blocking,
        history_length: history,
        metadata,
    })
}

/// The text a part contributes; file parts are refused because a guest
/// only reads text.
fn part_text(part: &Value, i: usize) -> Result<String, RpcError> {
    let Value::Object(p) = part else {
        return Err(RpcError::invalid_params(&format!(
            "message.parts[{i}] must be an object"
        )));
    };
    let kind = p.get("kind").and_then(Value::as_str);
    if let Some(t) = p.get("text") {
        return match t {
            Value::String(s) => Ok(s.clone()),
            _ => Err(RpcError::invalid_params(&format!(
                "message.parts[{i}].text must be a string"
            ))),
        };
    }
    if kind == Some("file") || ["file", "raw", "url"].iter().any(|k| p.contains_key(*k)) {
        return Err(RpcError::invalid_params(&format!(
            "message.parts[{i}] is a file part; only text and data parts are accepted"
        )));
    }
    if let Some(d) = p.get("data") {
        return Ok(serde_json::to_string(d).unwrap_or_default());
    }
    Err(RpcError::invalid_params(&format!(
        "message.parts[{i}] has neither text nor data"
    )))
}

/// The required task `id` of GetTask / CancelTask / SubscribeToTask.
fn task_id(params: &Map<String, Value>) -> Result<String, RpcError> {
    match params.get("id") {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) | None => Err(RpcError::invalid_params("id is required")),
        Some(_) => Err(RpcError::invalid_params("id must be a string")),
    }
}

/// An optional non-negative `historyLength`; ProtoJSON also allows int32
/// as a decimal string, so that is read too.
fn history_length(map: &Map<String, Value>, key: &str) -> Result<Option<usize>, RpcError> {
    let bad = || RpcError::invalid_params(&format!("{key} must be a non-negative integer"));
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|n| Some(usize::try_from(n).unwrap_or(usize::MAX)))
            .ok_or_else(bad),
        Some(Value::String(s)) => s.trim().parse::<usize>().map(Some).map_err(|_| bad()),
        Some(_) => Err(bad()),
    }
}

/// An optional string field; empty reads as absent (proto3 default).
fn opt_string(
    map: &Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<String>, RpcError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(RpcError::invalid_params(&format!(
            "{field} must be a string"
        ))),
    }
}

/// An optional boolean field.
fn opt_bool(map: &Map<String, Value>, key: &str, field: &str) -> Result<Option<bool>, RpcError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(RpcError::invalid_params(&format!(
            "{field} must be a boolean"
        ))),
    }
}

/// Task lifecycle states cairn produces. AUTH_REQUIRED and UNSPECIFIED /
/// `unknown` exist on the wire but never arise in cairn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Accepted, not started.
    Submitted,
    /// Running.
    Working,
    /// Finished successfully (terminal).
    Completed,
    /// Finished with an error (terminal).
    Failed,
    /// Canceled (terminal).
    Canceled,
    /// The agent declined it (terminal).
    Rejected,
    /// Paused until the user answers (interrupted, not terminal).
    InputRequired,
}

impl State {
    const ALL: [State; 7] = [
        State::Submitted,
        State::Working,
        State::Completed,
        State::Failed,
        State::Canceled,
        State::Rejected,
        State::InputRequired,
    ];

    /// Completed, failed, canceled and rejected are final: no more messages.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            State::Completed | State::Failed | State::Canceled | State::Rejected
        )
    }

    /// Where a blocking send returns: terminal or waiting on the user.
    pub fn is_settled(self) -> bool {
        self.is_terminal() || self == State::InputRequired
    }

    /// The wire spelling in `version`.
    pub fn as_str(self, version: Version) -> &'static str {
        match (version, self) {
            (Version::V1, State::Submitted) => "TASK_STATE_SUBMITTED",
            (Version::V1, State::Working) => "TASK_STATE_WORKING",
            (Version::V1, State::Completed) => "TASK_STATE_COMPLETED",
            (Version::V1, State::Failed) => "TASK_STATE_FAILED",
            (Version::V1, State::Canceled) => "TASK_STATE_CANCELED",
            (Version::V1, State::Rejected) => "TASK_STATE_REJECTED",
            (Version::V1, State::InputRequired) => "TASK_STATE_INPUT_REQUIRED",
            (Version::V03, State::Submitted) => "submitted",
            (Version::V03, State::Working) => "working",
            (Version::V03, State::Completed) => "completed",
            (Version::V03, State::Failed) => "failed",
            (Version::V03, State::Canceled) => "canceled",
            (Version::V03, State::Rejected) => "rejected",
            (Version::V03, State::InputRequired) => "input-required",
        }
    }

    /// Reads either version's spelling (peers are not always consistent).
    pub fn parse(s: &str) -> Option<State> {
        State::ALL
            .into_iter()
            .find(|st| st.as_str(Version::V1) == s || st.as_str(Version::V03) == s)
    }
}

/// The 0.3 spelling (`input-required`), which reads well in messages.
impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str(Version::V03))
    }
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The client.
    User,
    /// The agent.
    Agent,
}

impl Role {
    /// The wire spelling in `version`.
    pub fn as_str(self, version: Version) -> &'static str {
        match (version, self) {
            (Version::V1, Role::User) => "ROLE_USER",
            (Version::V1, Role::Agent) => "ROLE_AGENT",
            (Version::V03, Role::User) => "user",
            (Version::V03, Role::Agent) => "agent",
        }
    }

    /// Reads either version's spelling, case-insensitively.
    pub fn parse(s: &str) -> Option<Role> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("ROLE_USER") || s.eq_ignore_ascii_case("user") {
            Some(Role::User)
        } else if s.eq_ignore_ascii_case("ROLE_AGENT") || s.eq_ignore_ascii_case("agent") {
            Some(Role::Agent)
        } else {
            None
        }
    }
}

/// A text message, version-independent.
#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    /// Message id.
    pub message_id: String,
    /// Author.
    pub role: Role,
    /// The text (rendered as one text part).
    pub text: String,
    /// Conversation id (always set on server messages).
    pub context_id: String,
    /// Task id, when the message belongs to a task.
    pub task_id: Option<String>,
}

/// A task as cairn knows it, version-independent.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskView {
    /// Task id.
    pub id: String,
    /// Conversation id.
    pub context_id: String,
    /// Current state.
    pub state: State,
    /// The message attached to the current status (e.g. the question of an
    /// input-required task, or the reason of a failure).
    pub status_message: Option<Msg>,
    /// When the status was recorded, ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// Messages exchanged, oldest first.
    pub history: Vec<Msg>,
    /// Outputs.
    pub artifacts: Vec<Artifact>,
    /// Task metadata.
    pub metadata: Map<String, Value>,
}

/// A text output of a task.
#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    /// Unique within the task.
    pub artifact_id: String,
    /// Human-readable name.
    pub name: Option<String>,
    /// The text (rendered as one text part).
    pub text: String,
}

/// Parts of a text: one text part (parts must never be empty).
fn parts_json(text: &str, version: Version) -> Value {
    match version {
        Version::V1 => json!([{ "text": text }]),
        Version::V03 => json!([{ "kind": "text", "text": text }]),
    }
}

/// A Message object.
pub fn message_json(m: &Msg, version: Version) -> Value {
    let mut o = Map::new();
    if version == Version::V03 {
        o.insert("kind".into(), "message".into());
    }
    o.insert("messageId".into(), m.message_id.clone().into());
    if !m.context_id.is_empty() {
        o.insert("contextId".into(), m.context_id.clone().into());
    }
    if let Some(t) = &m.task_id {
        o.insert("taskId".into(), t.clone().into());
    }
    o.insert("role".into(), m.role.as_str(version).into());
    o.insert("parts".into(), parts_json(&m.text, version));
    Value::Object(o)
}

/// A TaskStatus object.
fn status_json(state: State, message: Option<&Msg>, timestamp_ms: i64, version: Version) -> Value {
    let mut o = Map::new();
    o.insert("state".into(), state.as_str(version).into());
    if let Some(m) = message {
        o.insert("message".into(), message_json(m, version));
    }
    o.insert("timestamp".into(), iso8601_ms(timestamp_ms).into());
    Value::Object(o)
}

/// An Artifact object.
fn artifact_json(a: &Artifact, version: Version) -> Value {
    let mut o = Map::new();
    o.insert("artifactId".into(), a.artifact_id.clone().into());
    if let Some(n) = &a.name {
        o.insert("name".into(), n.clone().into());
    }
    o.insert("parts".into(), parts_json(&a.text, version));
    Value::Object(o)
}

/// A Task object, with at most `history_length` recent history messages
/// (None: all; 0: the `history` field is omitted, as spec 3.2.4 asks).
pub fn task_json(t: &TaskView, history_length: Option<usize>, version: Version) -> Value {
    let mut o = Map::new();
    if version == Version::V03 {
        o.insert("kind".into(), "task".into());
    }
    o.insert("id".into(), t.id.clone().into());
    o.insert("contextId".into(), t.context_id.clone().into());
    o.insert(
        "status".into(),
        status_json(t.state, t.status_message.as_ref(), t.timestamp_ms, version),
    );
    if !t.artifacts.is_empty() {
        let arts = t.artifacts.iter().map(|a| artifact_json(a, version));
        o.insert("artifacts".into(), Value::Array(arts.collect()));
    }
    let keep = history_length.unwrap_or(usize::MAX).min(t.history.len());
    if keep > 0 {
        let recent = &t.history[t.history.len() - keep..];
        let msgs = recent.iter().map(|m| message_json(m, version));
        o.insert("history".into(), Value::Array(msgs.collect()));
    }
    if !t.metadata.is_empty() {
        o.insert("metadata".into(), Value::Object(t.metadata.clone()));
    }
    Value::Object(o)
}

/// The `result` of SendMessage (`{"task": …}`) / message/send (the task).
/// Trim `t.history` first to honour the request's `historyLength`.
pub fn send_result(t: &TaskView, version: Version) -> Value {
    wrap("task", task_json(t, None, version), version)
}

/// The first stream event: the task (`{"task": …}` in 1.0).
pub fn stream_task(t: &TaskView, version: Version) -> Value {
    wrap("task", task_json(t, None, version), version)
}

/// A status-update stream event. `is_final` only exists on the 0.3 wire
/// (1.0 ends the stream by closing it); set it on the last event.
pub fn stream_status(
    task_id: &str,
    context_id: &str,
    state: State,
    message: Option<&Msg>,
    is_final: bool,
    version: Version,
) -> Value {
    let mut o = Map::new();
    if version == Version::V03 {
        o.insert("kind".into(), "status-update".into());
    }
    o.insert("taskId".into(), task_id.into());
    o.insert("contextId".into(), context_id.into());
    o.insert(
        "status".into(),
        status_json(state, message, now_ms(), version),
    );
    if version == Version::V03 {
        o.insert("final".into(), is_final.into());
    }
    wrap("statusUpdate", Value::Object(o), version)
}

/// An artifact-update stream event carrying the whole artifact (never an
/// append), `last_chunk` marking its last one.
pub fn stream_artifact(
    task_id: &str,
    context_id: &str,
    artifact: &Artifact,
    last_chunk: bool,
    version: Version,
) -> Value {
    let mut o = Map::new();
    if version == Version::V03 {
        o.insert("kind".into(), "artifact-update".into());
        o.insert("append".into(), false.into());
    }
    o.insert("taskId".into(), task_id.into());
    o.insert("contextId".into(), context_id.into());
    o.insert("artifact".into(), artifact_json(artifact, version));
    o.insert("lastChunk".into(), last_chunk.into());
    wrap("artifactUpdate", Value::Object(o), version)
}

/// 1.0 wraps results in a one-field object naming the payload; 0.3 sends
/// the payload bare (its `kind` says what it is).
fn wrap(field: &str, inner: Value, version: Version) -> Value {
    match version {
        Version::V1 => {
            let mut o = Map::new();
            o.insert(field.into(), inner);
            Value::Object(o)
        }
        Version::V03 => inner,
    }
}

/// A JSON-RPC success response.
pub fn response(id: &Value, result: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

/// A JSON-RPC error response.
pub fn error_response(id: &Value, err: &RpcError) -> Value {
    let mut e = Map::new();
    e.insert("code".into(), err.code.into());
    e.insert("message".into(), err.message.clone().into());
    if let Some(d) = &err.data {
        e.insert("data".into(), d.clone());
    }
    json!({ "jsonrpc": "2.0", "id": id, "error": e })
}

/// What cairn says about one agent in its card.
#[derive(Debug, Clone, PartialEq)]
pub struct CardInfo {
    /// Agent name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// The agent's own version (not the protocol's).
    pub version: String,
    /// Absolute URL of the agent's JSON-RPC endpoint.
    pub url: String,
    /// Whether SendStreamingMessage / SubscribeToTask are served.
    pub streaming: bool,
    /// Skills; a card needs at least one, so a general one is made from
    /// the name and description when this is empty.
    pub skills: Vec<Skill>,
}

/// One advertised skill.
#[derive(Debug, Clone, PartialEq)]
pub struct Skill {
    /// Unique id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// Keywords; a card needs at least one, so the id is used when empty.
    pub tags: Vec<String>,
}

/// Name of the bearer scheme in the cards' `securitySchemes`.
const BEARER: &str = "bearer";
/// Media types accepted: text parts, and data parts (read as JSON text).
const INPUT_MODES: [&str; 2] = ["text/plain", "application/json"];
/// Media types produced: text parts only.
const OUTPUT_MODES: [&str; 1] = ["text/plain"];

/// The agent card. `V1`: the card for [`CARD_PATH`], 1.0 fields (two
/// JSON-RPC interfaces at the same URL, 1.0 then 0.3, as spec 3.6.2
/// allows) merged with the 0.3 fields so 0.3 clients reading the same path
/// find `url` too, which is what the official SDK serves. `V03`: a pure 0.3
/// card, for [`LEGACY_CARD_PATH`]. Both declare HTTP bearer auth.
pub fn agent_card(info: &CardInfo, version: Version) -> Value {
    let skills = card_skills(info);
    let capabilities = json!({
        "streaming": info.streaming,
        "pushNotifications": false,
    });
    match version {
        Version::V1 => json!({
            "name": info.name,
            "description": info.description,
            "version": info.version,
            "supportedInterfaces": [
                { "url": info.url, "protocolBinding": "JSONRPC", "protocolVersion": "1.0" },
                { "url": info.url, "protocolBinding": "JSONRPC", "protocolVersion": "0.3" },
            ],
            "capabilities": capabilities,
            // The 1.0 wrapper plus the flat 0.3 fields in one object; each
            // version's parser ignores the other's keys.
            "securitySchemes": { BEARER: {
                "httpAuthSecurityScheme": { "scheme": "Bearer" },
                "type": "http",
                "scheme": "Bearer",
            } },
            "securityRequirements": [{ "schemes": { BEARER: { "list": [] } } }],
            "defaultInputModes": INPUT_MODES,
            "defaultOutputModes": OUTPUT_MODES,
            "skills": skills,
            // 0.3 fields for 0.3 clients reading this same path.
            "url": info.url,
            "preferredTransport": "JSONRPC",
            "protocolVersion": "0.3",
            "security": [{ BEARER: [] }],
        }),
        Version::V03 => json!({
            "protocolVersion": "0.3.0",
            "name": info.name,
            "description": info.description,
            "version": info.version,
            "url": info.url,
            "preferredTransport": "JSONRPC",
            "additionalInterfaces": [{ "url": info.url, "transport": "JSONRPC" }],
            "capabilities": capabilities,
            "securitySchemes": { BEARER: { "type": "http", "scheme": "Bearer" } },
            "security": [{ BEARER: [] }],
            "defaultInputModes": INPUT_MODES,
            "defaultOutputModes": OUTPUT_MODES,
            "skills": skills,
        }),
    }
}

/// Skills as both versions spell them (identically); never empty, and
/// never with empty tags, since both are required non-empty arrays.
fn card_skills(info: &CardInfo) -> Value {
    let fallback;
    let skills = if info.skills.is_empty() {
        fallback = [Skill {
            id: "general".into(),
            name: info.name.clone(),
            description: info.description.clone(),
            tags: vec!["general".into()],
        }];
        &fallback[..]
    } else {
        &info.skills[..]
    };
    Value::Array(
        skills
            .iter()
            .map(|s| {
                let tags = if s.tags.is_empty() {
                    vec![s.id.clone()]
                } else {
                    s.tags.clone()
                };
                json!({ "id": s.id, "name": s.name, "description": s.description, "tags": tags })
            })
            .collect(),
    )
}

/// Milliseconds since the Unix epoch, now (0 if the clock is before 1970).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SS.sssZ` (spec 5.6.1), clamped to the protobuf
/// Timestamp range (years 1..=9999) so any input renders validly.
pub fn iso8601_ms(ms: i64) -> String {
    const MIN_MS: i64 = -62_135_596_800_000; // 0001-01-01T00:00:00Z
    const MAX_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    let ms = ms.clamp(MIN_MS, MAX_MS);
    let milli = ms.rem_euclid(1000);
    let (y, m, d, sod) = crate::store::civil(ms);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Keeps caller-supplied text on one line and bounded, for messages.
pub(crate) fn one_line(s: &str) -> String {
    const MAX: usize = 300;
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX)
        .collect();
    if s.chars().nth(MAX).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Request, (Value, RpcError)> {
        parse_request(body.as_bytes(), None)
    }

    fn err_code(body: &str, header: Option<&str>) -> (Value, i64, String) {
        match parse_request(body.as_bytes(), header) {
            Ok(r) => panic!("expected an error, got {r:?}"),
            Err((id, e)) => (id, e.code, e.message),
        }
    }

    fn send_params(r: Request) -> SendParams {
        match r.params {
            Params::Send(p) => p,
            other => panic!("not a send: {other:?}"),
        }
    }

    // Spec 1.0 section 9.4.1 body around the section 6.1 SendMessageRequest.
    const V1_SEND: &str = r#"{
        "jsonrpc": "2.0", "id": 1, "method": "SendMessage",
        "params": { "message": {
            "role": "ROLE_USER",
            "parts": [{"text": "What is the weather today?"}],
            "messageId": "msg-uuid"
        } }
    }"#;

    // Spec 0.3 section 9.2.
    const V03_SEND: &str = r#"{
        "jsonrpc": "2.0", "id": 1, "method": "message/send",
        "params": {
            "message": {
                "role": "user",
                "parts": [{ "kind": "text", "text": "tell me a joke" }],
                "messageId": "9229e770-767c-417b-a0b0-f0741243c589"
            },
            "metadata": {}
        }
    }"#;

    #[test]
    fn parses_v1_send_message() {
        let r = parse(V1_SEND).expect("valid");
        assert_eq!(r.id, json!(1));
        assert_eq!((r.method, r.version), (Method::Send, Version::V1));
        let p = send_params(r);
        assert_eq!(p.message_id, "msg-uuid");
        assert_eq!(p.text, "What is the weather today?");
        assert!(p.blocking, "1.0 is blocking unless returnImmediately");
        assert_eq!(
            (p.context_id, p.task_id, p.history_length),
            (None, None, None)
        );
    }

    #[test]
    fn parses_v03_send_message() {
        let r = parse(V03_SEND).expect("valid");
        assert_eq!((r.method, r.version), (Method::Send, Version::V03));
        let p = send_params(r);
        assert_eq!(p.text, "tell me a joke");
        assert!(p.blocking, "0.3 is blocking unless blocking:false");
        assert!(p.metadata.is_empty());
    }

    #[test]
    fn parses_streaming_with_configuration_and_continuation() {
        let v1 = r#"{"jsonrpc":"2.0","id":"a","method":"SendStreamingMessage","params":{
            "tenant": "",
            "message":{"messageId":"m2","taskId":"task-uuid","contextId":"ctx","role":"ROLE_USER",
                "parts":[{"text":"From San Francisco"},{"data":{"to":"New York"},"mediaType":"application/json"}]},
            "configuration":{"returnImmediately":true,"historyLength":"3","acceptedOutputModes":["text/plain"]},
            "metadata":{"k":1}}}"#;
        let r = parse(v1).expect("valid");
        assert_eq!((r.method, r.version), (Method::Stream, Version::V1));
        assert!(r.method.is_streaming());
        let p = send_params(r);
        assert_eq!(p.text, "From San Francisco\n{\"to\":\"New York\"}");
        assert_eq!(p.task_id.as_deref(), Some("task-uuid"));
        assert_eq!(p.context_id.as_deref(), Some("ctx"));
        assert!(!p.blocking);
        assert_eq!(p.history_length, Some(3));
        assert_eq!(p.metadata.get("k"), Some(&json!(1)));

        let v03 = r#"{"jsonrpc":"2.0","id":7,"method":"message/stream","params":{
            "message":{"kind":"message","messageId":"m","role":"user","contextId":"",
                "parts":[{"kind":"data","data":{"a":[1,2]}}]},
            "configuration":{"blocking":false,"historyLength":0}}}"#;
        let p = send_params(parse(v03).expect("valid"));
        assert_eq!(p.text, "{\"a\":[1,2]}");
        assert_eq!(p.context_id, None, "empty contextId reads as absent");
        assert!(!p.blocking);
        assert_eq!(p.history_length, Some(0));
    }

    #[test]
    fn parses_task_methods_in_both_versions() {
        // Spec 1.0 section 9.4.3 / 9.4.5 / 9.4.6, 0.3 sections 7.3 / 7.4 / 7.9.
        let cases = [
            (
                r#"{"jsonrpc":"2.0","id":2,"method":"GetTask","params":{"id":"task-uuid","historyLength":10}}"#,
                Method::Get,
                Version::V1,
            ),
            (
                r#"{"jsonrpc":"2.0","id":4,"method":"CancelTask","params":{"id":"task-uuid"}}"#,
                Method::Cancel,
                Version::V1,
            ),
            (
                r#"{"jsonrpc":"2.0","id":5,"method":"SubscribeToTask","params":{"id":"task-uuid"}}"#,
                Method::Subscribe,
                Version::V1,
            ),
            (
                r#"{"jsonrpc":"2.0","id":2,"method":"tasks/get","params":{"id":"task-uuid","historyLength":10}}"#,
                Method::Get,
                Version::V03,
            ),
            (
                r#"{"jsonrpc":"2.0","id":4,"method":"tasks/cancel","params":{"id":"task-uuid"}}"#,
                Method::Cancel,
                Version::V03,
            ),
            (
                r#"{"jsonrpc":"2.0","id":5,"method":"tasks/resubscribe","params":{"id":"task-uuid"}}"#,
                Method::Subscribe,
                Version::V03,
            ),
        ];
        for (body, method, version) in cases {
            let r = parse(body).unwrap_or_else(|e| panic!("{body}: {e:?}"));
            assert_eq!((r.method, r.version), (method, version), "{body}");
            let expected = match method {
                Method::Get => Params::Get {
                    id: "task-uuid".into(),
                    history_length: Some(10),
                },
                Method::Cancel => Params::Cancel {
                    id: "task-uuid".into(),
                },
                _ => Params::Subscribe {
                    id: "task-uuid".into(),
                },
            };
            assert_eq!(r.params, expected, "{body}");
            assert_eq!(
                Method::from_name(version.method_name(method)),
                Some((method, version))
            );
        }
    }

    #[test]
    fn envelope_errors() {
        let (id, code, _) = err_code("{not json", None);
        assert_eq!((id, code), (Value::Null, -32700));
        assert_eq!(err_code("[]", None).1, -32600);
        assert_eq!(
            err_code(r#"{"jsonrpc":"2.0","method":"GetTask","params":{}}"#, None).1,
            -32600
        );
        assert_eq!(
            err_code(r#"{"jsonrpc":"2.0","id":{},"method":"GetTask"}"#, None).1,
            -32600
        );
        let (id, code, _) = err_code(r#"{"jsonrpc":"1.0","id":"x","method":"GetTask"}"#, None);
        assert_eq!((id, code), (json!("x"), -32600));
        assert_eq!(
            err_code(r#"{"jsonrpc":"2.0","id":1,"method":5}"#, None).1,
            -32600
        );
        assert_eq!(err_code(r#"{"jsonrpc":"2.0","id":1}"#, None).1, -32600);
        let (id, code, msg) = err_code(
            r#"{"jsonrpc":"2.0","id":3,"method":"tasks/frobnicate"}"#,
            None,
        );
        assert_eq!((id, code), (json!(3), -32601));
        assert!(msg.contains("tasks/frobnicate"), "{msg}");
        assert_eq!(
            err_code(
                r#"{"jsonrpc":"2.0","id":1,"method":"ListTasks","params":{}}"#,
                None
            )
            .1,
            -32004
        );
        assert_eq!(
            err_code(r#"{"jsonrpc":"2.0","id":1,"method":"tasks/pushNotificationConfig/set","params":{}}"#, None).1,
            -32003
        );
        assert_eq!(
            err_code(
                r#"{"jsonrpc":"2.0","id":1,"method":"GetExtendedAgentCard"}"#,
                None
            )
            .1,
            -32007
        );
    }

    #[test]
    fn param_errors_name_the_field() {
        let send = |params: &str| {
            format!(r#"{{"jsonrpc":"2.0","id":9,"method":"SendMessage","params":{params}}}"#)
        };
        let cases = [
            ("[]", "params"),
            ("{}", "message is required"),
            (r#"{"message":"hi"}"#, "message must be an object"),
            (
                r#"{"message":{"role":"ROLE_USER","parts":[{"text":"x"}]}}"#,
                "message.messageId",
            ),
            (
                r#"{"message":{"messageId":"m","parts":[{"text":"x"}]}}"#,
                "message.role is required",
            ),
            (
                r#"{"message":{"messageId":"m","role":1,"parts":[{"text":"x"}]}}"#,
                "message.role must be a string",
            ),
            (
                r#"{"message":{"messageId":"m","role":"ROLE_AGENT","parts":[{"text":"x"}]}}"#,
                "message.role",
            ),
            (
                r#"{"message":{"messageId":"m","role":"boss","parts":[{"text":"x"}]}}"#,
                "message.role",
            ),
            (
                r#"{"message":{"messageId":"m","role":"ROLE_USER","parts":[]}}"#,
                "message.parts",
            ),
            (
                r#"{"message":{"messageId":"m","role":"ROLE_USER"}}"#,
                "message.parts",
            ),
            (
                r#"{"message":{"messageId":"m","role":"ROLE_USER","parts":[{"text":1}]}}"#,
                "message.parts[0].text",
            ),
            (
                r#"{"message":{"messageId":"m","role":"ROLE_USER","parts":[{"text":"a"},{"url":"https://x/y.png"}]}}"#,
                "message.parts[1]",
            ),
            (
                r#"{"message":{"messageId":"m","role":"ROLE_USER","parts":[{"kind":"file","file":{"uri":"u"}}]}}"#,
                "file part",
            ),
            (
                r#"{"message":{"messageId":"m","role":"ROLE_USER","parts":[{}]}}"#,
                "neither text nor data",
            ),
            (
                r#"{"message":{"messageId":"m","role":"ROLE_USER","parts":[{"text":"x"}],"contextId":3}}"#,
                "message.contextId",
            ),
            (
                r#"{"message":{"messageId":"m","role":"ROLE_USER","parts":[{"text":"x"}]},"configuration":{"returnImmediately":"yes"}}"#,
                "configuration.returnImmediately",
            ),
            (
                r#"{"message":{"messageId":"m","role":"ROLE_USER","parts":[{"text":"x"}]},"configuration":{"historyLength":-1}}"#,
                "historyLength",
            ),
            (
                r#"{"message":{"messageId":"m","role":"ROLE_USER","parts":[{"text":"x"}]},"metadata":[]}"#,
                "metadata",
            ),
        ];
        for (params, field) in cases {
            let (id, code, msg) = err_code(&send(params), None);
            assert_eq!((id, code), (json!(9), -32602), "{params}: {msg}");
            assert!(msg.contains(field), "{params}: {msg:?} should name {field}");
            assert!(!msg.contains('\n'));
        }
        let push = send(
            r#"{"message":{"messageId":"m","role":"ROLE_USER","parts":[{"text":"x"}]},"configuration":{"taskPushNotificationConfig":{"url":"https://cb"}}}"#,
        );
        assert_eq!(err_code(&push, None).1, -32003);
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"GetTask","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tasks/cancel","params":{"id":7}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"GetTask"}"#,
        ] {
            let (_, code, msg) = err_code(body, None);
            assert_eq!(code, -32602, "{body}");
            assert!(msg.contains("id") || msg.contains("params"), "{msg}");
        }
    }

    #[test]
    fn lenient_role_and_part_spellings() {
        // A 1.0 method with 0.3 spellings, and the reverse, are harmless.
        let mixed = r#"{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{"message":
            {"kind":"message","messageId":"m","role":"user","parts":[{"kind":"text","text":"a"}]}}}"#;
        assert_eq!(send_params(parse(mixed).expect("valid")).text, "a");
        let mixed = r#"{"jsonrpc":"2.0","id":1,"method":"message/send","params":{"message":
            {"messageId":"m","role":"ROLE_USER","parts":[{"text":"b"}]},"configuration":{"returnImmediately":true}}}"#;
        let p = send_params(parse(mixed).expect("valid"));
        assert_eq!(p.text, "b");
        assert!(!p.blocking);
    }

    #[test]
    fn version_header() {
        assert_eq!(
            parse_request(V1_SEND.as_bytes(), Some("1.0")).map(|r| r.version),
            Ok(Version::V1)
        );
        assert_eq!(
            parse_request(V1_SEND.as_bytes(), Some(" 1.0.3 ")).map(|r| r.version),
            Ok(Version::V1)
        );
        assert_eq!(
            parse_request(V03_SEND.as_bytes(), Some("0.3")).map(|r| r.version),
            Ok(Version::V03)
        );
        assert_eq!(
            parse_request(V03_SEND.as_bytes(), Some("")).map(|r| r.version),
            Ok(Version::V03)
        );
        // No header: the method name decides, even for 1.0.
        assert_eq!(
            parse_request(V1_SEND.as_bytes(), None).map(|r| r.version),
            Ok(Version::V1)
        );
        for (body, header) in [
            (V1_SEND, "0.5"),
            (V1_SEND, "2.0"),
            (V1_SEND, "1.1"),
            (V1_SEND, "banana"),
            (V1_SEND, "0.3"),
            (V03_SEND, "1.0"),
        ] {
            let (id, code, msg) = err_code(body, Some(header));
            assert_eq!((id, code), (json!(1), -32009), "{header}: {msg}");
            assert!(msg.contains(header.trim()), "{msg}");
        }
    }

    fn agent_msg() -> Msg {
        Msg {
            message_id: "m-2".into(),
            role: Role::Agent,
            text: "echo: hi".into(),
            context_id: "ctx-1".into(),
            task_id: Some("task-1".into()),
        }
    }

    fn task() -> TaskView {
        let user = Msg {
            message_id: "m-1".into(),
            role: Role::User,
            text: "hi".into(),
            context_id: "ctx-1".into(),
            task_id: Some("task-1".into()),
        };
        TaskView {
            id: "task-1".into(),
            context_id: "ctx-1".into(),
            state: State::Completed,
            status_message: Some(agent_msg()),
            timestamp_ms: 1_700_000_000_123,
            history: vec![user, agent_msg()],
            artifacts: vec![Artifact {
                artifact_id: "art-1".into(),
                name: Some("reply".into()),
                text: "echo: hi".into(),
            }],
            metadata: Map::new(),
        }
    }

    #[test]
    fn renders_v1_task_shapes() {
        let t = task_json(&task(), None, Version::V1);
        assert_eq!(t["id"], "task-1");
        assert_eq!(t["contextId"], "ctx-1");
        assert_eq!(t["status"]["state"], "TASK_STATE_COMPLETED");
        assert_eq!(t["status"]["timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(t["status"]["message"]["role"], "ROLE_AGENT");
        assert_eq!(
            t["status"]["message"]["parts"],
            json!([{"text": "echo: hi"}])
        );
        assert_eq!(t["artifacts"][0]["artifactId"], "art-1");
        assert_eq!(t["artifacts"][0]["name"], "reply");
        assert_eq!(t["artifacts"][0]["parts"], json!([{"text": "echo: hi"}]));
        assert_eq!(t["history"][0]["role"], "ROLE_USER");
        assert_eq!(t["history"][0]["messageId"], "m-1");
        assert_eq!(t["history"][0]["taskId"], "task-1");
        assert!(t.get("kind").is_none(), "1.0 has no kind");
        assert!(t.get("metadata").is_none(), "empty metadata is omitted");
        assert!(!t.to_string().contains("\"kind\""));

        let sent = send_result(&task(), Version::V1);
        assert_eq!(sent, json!({ "task": t }));
        assert_eq!(stream_task(&task(), Version::V1), json!({ "task": t }));
        assert_eq!(
            message_json(&agent_msg(), Version::V1),
            json!({
                "messageId": "m-2", "contextId": "ctx-1", "taskId": "task-1",
                "role": "ROLE_AGENT", "parts": [{"text": "echo: hi"}],
            })
        );

        let s = stream_status("task-1", "ctx-1", State::Working, None, false, Version::V1);
        assert_eq!(s["statusUpdate"]["taskId"], "task-1");
        assert_eq!(s["statusUpdate"]["contextId"], "ctx-1");
        assert_eq!(s["statusUpdate"]["status"]["state"], "TASK_STATE_WORKING");
        assert!(
            s["statusUpdate"]["status"]["timestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z'))
        );
        assert!(
            s["statusUpdate"].get("final").is_none(),
            "1.0 has no final flag"
        );
        let s = stream_status(
            "task-1",
            "ctx-1",
            State::InputRequired,
            Some(&agent_msg()),
            true,
            Version::V1,
        );
        assert_eq!(
            s["statusUpdate"]["status"]["state"],
            "TASK_STATE_INPUT_REQUIRED"
        );
        assert_eq!(s["statusUpdate"]["status"]["message"]["messageId"], "m-2");

        let art = &task().artifacts[0];
        let a = stream_artifact("task-1", "ctx-1", art, true, Version::V1);
        assert_eq!(
            a,
            json!({ "artifactUpdate": {
                "taskId": "task-1", "contextId": "ctx-1", "lastChunk": true,
                "artifact": { "artifactId": "art-1", "name": "reply", "parts": [{"text": "echo: hi"}] },
            }})
        );
    }

    #[test]
    fn renders_v03_task_shapes() {
        let t = task_json(&task(), None, Version::V03);
        assert_eq!(t["kind"], "task");
        assert_eq!(t["status"]["state"], "completed");
        assert_eq!(t["status"]["message"]["kind"], "message");
        assert_eq!(t["status"]["message"]["role"], "agent");
        assert_eq!(
            t["artifacts"][0]["parts"],
            json!([{"kind": "text", "text": "echo: hi"}])
        );
        assert_eq!(t["history"][0]["role"], "user");
        assert_eq!(
            send_result(&task(), Version::V03),
            t,
            "0.3 sends the task bare"
        );
        assert_eq!(stream_task(&task(), Version::V03), t);

        let s = stream_status(
            "task-1",
            "ctx-1",
            State::Completed,
            None,
            true,
            Version::V03,
        );
        assert_eq!(s["kind"], "status-update");
        assert_eq!(s["final"], true);
        assert_eq!(s["status"]["state"], "completed");
        assert_eq!(s["taskId"], "task-1");
        let s = stream_status(
            "task-1",
            "ctx-1",
            State::InputRequired,
            None,
            false,
            Version::V03,
        );
        assert_eq!(
            (s["status"]["state"].clone(), s["final"].clone()),
            (json!("input-required"), json!(false))
        );

        let a = stream_artifact("task-1", "ctx-1", &task().artifacts[0], false, Version::V03);
        assert_eq!(a["kind"], "artifact-update");
        assert_eq!(a["append"], false);
        assert_eq!(a["lastChunk"], false);
        assert_eq!(a["artifact"]["parts"][0]["kind"], "text");
    }

    #[test]
    fn history_length_is_honoured() {
        let t = task();
        assert_eq!(
            task_json(&t, None, Version::V1)["history"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );
        let one = task_json(&t, Some(1), Version::V1);
        assert_eq!(
            one["history"],
            json!([message_json(&agent_msg(), Version::V1)])
        );
        assert!(task_json(&t, Some(0), Version::V1).get("history").is_none());
        assert_eq!(
            task_json(&t, Some(99), Version::V03)["history"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );
    }

    #[test]
    fn state_and_role_spellings() {
        for s in State::ALL {
            assert_eq!(State::parse(s.as_str(Version::V1)), Some(s));
            assert_eq!(State::parse(s.as_str(Version::V03)), Some(s));
        }
        assert_eq!(State::InputRequired.as_str(Version::V03), "input-required");
        assert_eq!(State::Canceled.as_str(Version::V1), "TASK_STATE_CANCELED");
        assert_eq!(State::parse("TASK_STATE_AUTH_REQUIRED"), None);
        assert!(State::Rejected.is_terminal() && !State::InputRequired.is_terminal());
        assert!(State::InputRequired.is_settled() && !State::Working.is_settled());
        assert_eq!(Role::parse("ROLE_USER"), Some(Role::User));
        assert_eq!(Role::parse("Agent"), Some(Role::Agent));
        assert_eq!(Role::parse("ROLE_UNSPECIFIED"), None);
    }

    #[test]
    fn error_responses() {
        let e = RpcError::task_not_found("t-9");
        assert_eq!(e.code, -32001);
        let r = error_response(&json!("req-1"), &e);
        assert_eq!(r["jsonrpc"], "2.0");
        assert_eq!(r["id"], "req-1");
        assert_eq!(r["error"]["code"], -32001);
        assert!(
            r["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("t-9"))
        );
        assert_eq!(r["error"]["data"][0]["@type"], ERROR_INFO_TYPE);
        assert_eq!(r["error"]["data"][0]["reason"], "TASK_NOT_FOUND");
        assert_eq!(r["error"]["data"][0]["metadata"]["taskId"], "t-9");
        assert!(r.get("result").is_none());

        assert_eq!(
            RpcError::task_not_cancelable("t", State::Completed).code,
            -32002
        );
        assert!(
            RpcError::task_not_cancelable("t", State::Completed)
                .message
                .contains("completed")
        );
        assert_eq!(RpcError::unsupported_operation("x").code, -32004);
        assert_eq!(RpcError::version_not_supported("9.9").code, -32009);
        assert_eq!(RpcError::internal("boom").code, -32603);
        assert_eq!(RpcError::method_not_found("x").code, -32601);
        let busy = RpcError::busy(7);
        assert_eq!(busy.code, codes::BUSY);
        assert_eq!(busy.retry_after_secs(), Some(7));
        assert_eq!(RpcError::internal("x").retry_after_secs(), None);
        assert_eq!(
            RpcError::invalid_params("a\nb").message,
            "Invalid parameters: a b"
        );
        assert_eq!(
            response(&json!(5), json!({"task": {}})),
            json!({"jsonrpc": "2.0", "id": 5, "result": {"task": {}}})
        );
    }

    fn info() -> CardInfo {
        CardInfo {
            name: "echo".into(),
            description: "Echoes the prompt".into(),
            version: "0.1.0".into(),
            url: "http://127.0.0.1:8080/a2a/echo".into(),
            streaming: true,
            skills: vec![],
        }
    }

    #[test]
    fn v1_card_has_both_interfaces_and_bearer() {
        let c = agent_card(&info(), Version::V1);
        for key in [
            "name",
            "description",
            "version",
            "supportedInterfaces",
            "capabilities",
            "defaultInputModes",
            "defaultOutputModes",
            "skills",
        ] {
            assert!(c.get(key).is_some(), "1.0 card needs {key}");
        }
        assert_eq!(
            c["supportedInterfaces"],
            json!([
                {"url": "http://127.0.0.1:8080/a2a/echo", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
                {"url": "http://127.0.0.1:8080/a2a/echo", "protocolBinding": "JSONRPC", "protocolVersion": "0.3"},
            ])
        );
        assert_eq!(c["capabilities"]["streaming"], true);
        assert_eq!(
            c["securitySchemes"]["bearer"]["httpAuthSecurityScheme"]["scheme"],
            "Bearer"
        );
        assert_eq!(
            c["securityRequirements"],
            json!([{"schemes": {"bearer": {"list": []}}}])
        );
        assert_eq!(c["skills"][0]["tags"], json!(["general"]));
        // The 0.3 fields ride along for 0.3 clients reading the same path.
        assert_eq!(c["url"], "http://127.0.0.1:8080/a2a/echo");
        assert_eq!(c["preferredTransport"], "JSONRPC");
        assert_eq!(c["security"], json!([{"bearer": []}]));
        assert_eq!(c["securitySchemes"]["bearer"]["type"], "http");
    }

    #[test]
    fn v03_card_is_pure_03() {
        let mut i = info();
        i.skills = vec![Skill {
            id: "echo".into(),
            name: "Echo".into(),
            description: "Repeats".into(),
            tags: vec![],
        }];
        let c = agent_card(&i, Version::V03);
        for key in [
            "name",
            "description",
            "version",
            "url",
            "preferredTransport",
            "protocolVersion",
            "capabilities",
            "defaultInputModes",
            "defaultOutputModes",
            "skills",
        ] {
            assert!(c.get(key).is_some(), "0.3 card needs {key}");
        }
        assert!(c.get("supportedInterfaces").is_none());
        assert_eq!(c["protocolVersion"], "0.3.0");
        assert_eq!(
            c["additionalInterfaces"],
            json!([{"url": i.url, "transport": "JSONRPC"}])
        );
        assert_eq!(
            c["securitySchemes"],
            json!({"bearer": {"type": "http", "scheme": "Bearer"}})
        );
        assert_eq!(c["skills"][0]["id"], "echo");
        assert_eq!(c["skills"][0]["tags"], json!(["echo"]));
    }

    #[test]
    fn timestamps_are_iso8601_utc() {
        assert_eq!(iso8601_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso8601_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(iso8601_ms(i64::MIN), "0001-01-01T00:00:00.000Z");
        assert_eq!(iso8601_ms(i64::MAX), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn version_parsing() {
        assert_eq!(Version::parse("1.0"), Some(Version::V1));
        assert_eq!(Version::parse("1"), Some(Version::V1));
        assert_eq!(Version::parse("0.3.0"), Some(Version::V03));
        assert_eq!(Version::parse("v0.3"), Some(Version::V03));
        assert_eq!(Version::parse("0.2.9"), None);
        assert_eq!(Version::parse("1.0.x"), None);
        assert_eq!(Version::parse("1.0.0.0"), None);
        assert_eq!(Version::parse(""), None);
    }

    #[test]
    fn never_panics_on_odd_input() {
        let bodies = [
            "",
            "null",
            "1",
            "\"s\"",
            "{}",
            "{\"id\":null}",
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"SendMessage\",\"params\":{\"message\":{\"messageId\":\"m\",\"role\":\"ROLE_USER\",\"parts\":[1,null,[]]}}}",
            "{\"jsonrpc\":\"2.0\",\"id\":1.5,\"method\":\"GetTask\",\"params\":{\"id\":\"t\",\"historyLength\":1e300}}",
            "\u{0}\u{1}",
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\u{202e}\"}",
        ];
        for b in bodies {
            let _ = parse_request(b.as_bytes(), Some("\u{7f}"));
            let _ = parse_request(b.as_bytes(), None);
        }
        let _ = parse_request(&[0xff, 0xfe, 0x00], None);
    }
}
