//! Outbound webhooks: one delivery attempt of a notification to a
//! configured URL, and the pieces around it (the address guard, the body
//! template, the signature, the backoff between attempts).
//!
//! A webhook URL comes from config, but where it leads is decided by DNS
//! at the moment of delivery, so the daemon must not be turned into a
//! proxy onto its own network (SSRF): [`Guard`] refuses loopback, private,
//! link-local and other non-public addresses both when the config is
//! loaded (IP literals) and at every attempt (what a name resolves to
//! then), and [`deliver`] connects only to the addresses that were checked,
//! never following a redirect and never through a proxy. A receiver is
//! also held to a deadline and to a cap on what it may send back.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, LOCATION, RETRY_AFTER};
use sha2::Sha256;
use tokio::time::Instant;
use url::{Host, Url};

type HmacSha256 = Hmac<Sha256>;

/// The header carrying the body's HMAC, named and shaped as GitHub's.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";
/// The header carrying the delivery's id, so a receiver can drop repeats.
pub const DELIVERY_HEADER: &str = "x-cairn-delivery";

/// First backoff ceiling; doubled per attempt.
const BACKOFF_BASE_MS: u64 = 1_000;
/// Longest backoff ceiling.
const BACKOFF_MAX_MS: u64 = 5 * 60 * 1_000;
/// Longest `Retry-After` honoured: a receiver may slow its deliveries
/// down, not park them indefinitely.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(60 * 60);
/// Longest attempt, whatever the request asks: keeps the deadline
/// arithmetic in range.
const TIMEOUT_CAP: Duration = Duration::from_secs(24 * 60 * 60);
/// How much of a refusing receiver's body is quoted in the outcome.
const PREVIEW: usize = 200;

const METADATA: &str = "a cloud metadata address";

// ---------------------------------------------------------------------
// Where a webhook may go.

/// Where a webhook may go. Built once from config.
///
/// Allow-list entries are `host` or `host:port` (IPv6 as `[::1]` or
/// `[::1]:8080`); they let a webhook reach a non-public address on
/// purpose, e.g. a receiver on the same machine.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// Normalized entries: lowercase, IPs in canonical form, IPv6 in
    /// brackets, no trailing dot on names.
    allow: Vec<String>,
}

/// Why an address lookup gave nothing to connect to: a refusal is final,
/// a failed lookup may be temporary.
#[derive(Debug)]
enum Refusal {
    Refused(String),
    Lookup(String),
}

impl Refusal {
    fn into_message(self) -> String {
        match self {
            Refusal::Refused(why) | Refusal::Lookup(why) => why,
        }
    }
}

impl Guard {
    pub fn new(allow: &[String]) -> Guard {
        Guard {
            allow: allow.iter().map(|entry| normalize_entry(entry)).collect(),
        }
    }

    /// Static check of a URL at load time: http/https only, has a host, no
    /// userinfo (credentials in URLs leak into logs), and an IP literal
    /// host must be public unless allow-listed. `localhost` names are
    /// refused here too (they are loopback by definition), so the mistake
    /// shows at load rather than at the first delivery.
    pub fn check_url(&self, url: &str) -> Result<Url, String> {
        let url = Url::parse(url.trim()).map_err(|e| format!("url: {e}"))?;
        self.check_parsed(&url)?;
        if let Some(Host::Domain(name)) = url.host() {
            let name = normalize_name(name);
            let port = port_of(&url)?;
            if is_localhost(&name) && !self.allowed(&name, port) {
                return Err(format!(
                    "url: {name} is a loopback name; allow it with \
                     [webhooks] allow_hosts = [\"{name}:{port}\"]"
                ));
            }
        }
        Ok(url)
    }

    /// Resolves at delivery time (every time: DNS may have changed since
    /// the last attempt) and checks every resolved address; returns the
    /// addresses to connect to.
    pub async fn resolve(&self, url: &Url) -> Result<Vec<SocketAddr>, String> {
        self.lookup(url).await.map_err(Refusal::into_message)
    }

    /// The checks that need no DNS, shared by load time and delivery time
    /// (a URL that skipped [`Guard::check_url`] is still held to them).
    fn check_parsed(&self, url: &Url) -> Result<(), String> {
        let scheme = url.scheme();
        if scheme != "http" && scheme != "https" {
            return Err(format!(
                "url: scheme `{}` is not allowed (http or https only)",
                one_line(scheme)
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "url: credentials in the URL are not allowed (they end up in logs); \
                 send them in a header instead"
                    .into(),
            );
        }
        let port = port_of(url)?;
        match url.host() {
            None => Err("url: has no host".into()),
            Some(Host::Ipv4(ip)) => self.check_literal(IpAddr::V4(ip), port),
            Some(Host::Ipv6(ip)) => self.check_literal(IpAddr::V6(ip), port),
            Some(Host::Domain(_)) => Ok(()),
        }
    }

    fn check_literal(&self, ip: IpAddr, port: u16) -> Result<(), String> {
        let Some(why) = classify(ip) else {
            return Ok(());
        };
        let key = ip_key(ip);
        if self.allowed(&key, port) {
            return Ok(());
        }
        Err(format!(
            "url: {ip} is {why}; allow it with [webhooks] allow_hosts = [\"{key}:{port}\"]"
        ))
    }

    async fn lookup(&self, url: &Url) -> Result<Vec<SocketAddr>, Refusal> {
        self.check_parsed(url).map_err(Refusal::Refused)?;
        let port = port_of(url).map_err(Refusal::Refused)?;
        let name = match url.host() {
            Some(Host::Domain(name)) => name,
            Some(Host::Ipv4(ip)) => return Ok(vec![SocketAddr::new(IpAddr::V4(ip), port)]),
            Some(Host::Ipv6(ip)) => return Ok(vec![SocketAddr::new(IpAddr::V6(ip), port)]),
            None => return Err(Refusal::Refused("url: has no host".into())),
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name, port))
            .await
            .map_err(|e| {
                Refusal::Lookup(format!("resolving {name}: {}", one_line(&e.to_string())))
            })?
            .collect();
        if addrs.is_empty() {
            return Err(Refusal::Lookup(format!("resolving {name}: no addresses")));
        }
        let name = normalize_name(name);
        let name_allowed = self.allowed(&name, port);
        for addr in &addrs {
            self.check_resolved(&name, addr.ip(), port, name_allowed)?;
        }
        Ok(addrs)
    }

    /// One resolved address. Allow-listing a name lets it resolve to
    /// private addresses, but not to a cloud metadata address: that needs
    /// the address itself allow-listed, so rebinding an allowed internal
    /// name cannot reach the instance's credentials.
    fn check_resolved(
        &self,
        name: &str,
        ip: IpAddr,
        port: u16,
        name_allowed: bool,
    ) -> Result<(), Refusal> {
        let Some(why) = classify(ip) else {
            return Ok(());
        };
        let key = ip_key(ip);
        if self.allowed(&key, port) || (name_allowed && why != METADATA) {
            return Ok(());
        }
        let suggest = if why == METADATA {
            key
        } else {
            name.to_string()
        };
        Err(Refusal::Refused(format!(
            "url: {name} resolves to {ip}, {why}; allow it with \
             [webhooks] allow_hosts = [\"{suggest}:{port}\"]"
        )))
    }

    fn allowed(&self, host: &str, port: u16) -> bool {
        let with_port = format!("{host}:{port}");
        self.allow.iter().any(|e| *e == host || *e == with_port)
    }
}

fn port_of(url: &Url) -> Result<u16, String> {
    url.port_or_known_default()
        .ok_or_else(|| "url: has no port".to_string())
}

/// An allow-list entry in the form hosts are compared in.
fn normalize_entry(entry: &str) -> String {
    let entry = entry.trim().to_ascii_lowercase();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return ip_key(ip);
    }
    let (host, port) = split_port(&entry);
    let host = match host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse::<IpAddr>()
    {
        Ok(ip) => ip_key(ip),
        Err(_) => normalize_name(host),
    };
    match port {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

/// Splits `host:port` (`[v6]:port` included); a suffix that is not a port
/// stays part of the host.
fn split_port(entry: &str) -> (&str, Option<u16>) {
    if let Some((host, port)) = entry.rsplit_once(':')
        && (!host.contains(':') || host.ends_with(']'))
        && let Ok(port) = port.parse::<u16>()
    {
        return (host, Some(port));
    }
    (entry, None)
}

fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// How an address is written in the allow-list: mapped IPv6 forms as
/// their IPv4 address, IPv6 in brackets.
fn ip_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// `localhost` and `*.localhost` always mean this machine (RFC 6761).
fn is_localhost(name: &str) -> bool {
    name == "localhost" || name.ends_with(".localhost")
}

// ---------------------------------------------------------------------
// Which addresses are public.

/// Whether an address is public: one a webhook may reach without being
/// allow-listed.
pub fn is_public(ip: IpAddr) -> bool {
    classify(ip).is_none()
}

/// Why an address is not public, or `None` when it is.
fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// Non-public IPv4 blocks, most specific first (the first match names the
/// reason).
const V4_BLOCKS: &[(Ipv4Addr, u8, &str)] = &[
    (Ipv4Addr::new(169, 254, 169, 254), 32, METADATA),
    (Ipv4Addr::new(100, 100, 100, 200), 32, METADATA),
    // Azure's WireServer: a public-looking address only its VMs reach.
    (Ipv4Addr::new(168, 63, 129, 16), 32, METADATA),
    (Ipv4Addr::UNSPECIFIED, 32, "the unspecified address"),
    (Ipv4Addr::BROADCAST, 32, "the broadcast address"),
    (Ipv4Addr::new(0, 0, 0, 0), 8, "a \"this network\" address"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "a private address"),
    (Ipv4Addr::new(100, 64, 0, 0), 10, "a shared (CGNAT) address"),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "a loopback address"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "a link-local address"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "a private address"),
    (Ipv4Addr::new(192, 0, 0, 0), 24, "a reserved address"),
    (Ipv4Addr::new(192, 0, 2, 0), 24, "a documentation address"),
    (Ipv4Addr::new(192, 88, 99, 0), 24, "a reserved address"),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "a private address"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "a benchmarking address"),
    (
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        "a documentation address",
    ),
    (Ipv4Addr::new(203, 0, 113, 0), 24, "a documentation address"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "a multicast address"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "a reserved address"),
];

/// Non-public IPv6 blocks checked before looking for an embedded IPv4
/// address. Outside these, only global unicast (2000::/3) is public.
const V6_BLOCKS: &[(Ipv6Addr, u8, &str)] = &[
    (
        Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
        128,
        METADATA,
    ),
    (Ipv6Addr::UNSPECIFIED, 128, "the unspecified address"),
    (Ipv6Addr::LOCALHOST, 128, "a loopback address"),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "a discard-only address",
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "a local-use NAT64 address",
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "a unique-local address",
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        "a link-local address",
    ),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        "a site-local address",
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        "a multicast address",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "a documentation address",
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "a documentation address",
    ),
    // IETF protocol assignments: Teredo, benchmarking, ORCHID and others.
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        "a reserved address",
    ),
];

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let bits = ip.to_bits();
    V4_BLOCKS
        .iter()
        .find(|(net, len, _)| prefix_match(u128::from(bits), u128::from(net.to_bits()), *len, 32))
        .map(|(_, _, why)| *why)
}

fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let bits = ip.to_bits();
    if let Some((_, _, why)) = V6_BLOCKS
        .iter()
        .find(|(net, len, _)| prefix_match(bits, net.to_bits(), *len, 128))
    {
        return Some(why);
    }
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    if !prefix_match(bits, 0x2000 << 112, 3, 128) {
        return Some("a reserved address");
    }
    None
}

/// The IPv4 address an IPv6 address stands for, in the forms a connection
/// ends up at that IPv4 address: mapped (`::ffff:a.b.c.d`), compatible
/// (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) and 6to4 (`2002:aabb:ccdd::`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = ip.to_bits();
    let last32 = Ipv4Addr::from_bits(bits as u32);
    let mapped = prefix_match(bits, 0xffff << 32, 96, 128);
    let compatible = prefix_match(bits, 0, 96, 128);
    let nat64 = prefix_match(bits, 0x64_ff9b << 96, 96, 128);
    if mapped || compatible || nat64 {
        return Some(last32);
    }
    if prefix_match(bits, 0x2002 << 112, 16, 128) {
        return Some(Ipv4Addr::from_bits((bits >> 80) as u32));
    }
    None
}

/// Whether the top `len` of `width` bits of `a` and `net` agree.
fn prefix_match(a: u128, net: u128, len: u8, width: u32) -> bool {
    let len = u32::from(len).min(width);
    if len == 0 {
        return true;
    }
    let shift = width - len;
    (a >> shift) == (net >> shift)
}

// ---------------------------------------------------------------------
// Signatures.

/// `sha256=<hex HMAC-SHA256 of the raw body>`, the value of
/// `X-Hub-Signature-256` (GitHub's format, so existing receivers verify it).
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(mac(secret, body).finalize().into_bytes())
    )
}

/// Whether `header` is a valid `X-Hub-Signature-256` value for `body`,
/// compared in constant time. An empty secret verifies nothing: anyone
/// could sign with it.
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    if secret.is_empty() {
        return false;
    }
    let Some(hex_digest) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(presented) = hex::decode(hex_digest) else {
        return false;
    };
    presented.len() == 32 && mac(secret, body).verify_slice(&presented).is_ok()
}

fn mac(secret: &[u8], body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac
}

// ---------------------------------------------------------------------
// Bodies.

/// What a notification says; the values of the template variables.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    pub agent: String,
    pub kind: String,
    pub session: String,
    pub dispatch: String,
    pub success: bool,
    pub error: String,
    pub duration_ms: u64,
    pub reply_preview: String,
    pub timestamp: String,
    pub delivery_id: String,
}

/// The variable names a template may use.
const VARIABLES: &[&str] = &[
    "agent",
    "kind",
    "session",
    "dispatch",
    "success",
    "error",
    "duration_ms",
    "reply_preview",
    "timestamp",
    "delivery_id",
];

impl Vars {
    fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        Some(match name {
            "agent" => Cow::Borrowed(self.agent.as_str()),
            "kind" => Cow::Borrowed(self.kind.as_str()),
            "session" => Cow::Borrowed(self.session.as_str()),
            "dispatch" => Cow::Borrowed(self.dispatch.as_str()),
            "success" => Cow::Borrowed(if self.success { "true" } else { "false" }),
            "error" => Cow::Borrowed(self.error.as_str()),
            "duration_ms" => Cow::Owned(self.duration_ms.to_string()),
            "reply_preview" => Cow::Borrowed(self.reply_preview.as_str()),
            "timestamp" => Cow::Borrowed(self.timestamp.as_str()),
            "delivery_id" => Cow::Borrowed(self.delivery_id.as_str()),
            _ => return None,
        })
    }
}

/// Renders `{{name}}` placeholders (spaces inside the braces allowed).
/// With `json` the template is a JSON body and each value is escaped as
/// the inside of a JSON string, so a reply containing quotes cannot break
/// out of the string it is put in. An unknown variable is left as written;
/// [`check_template`] reports it at load time. Nothing else is
/// interpreted: no environment, no expressions.
pub fn render(template: &str, vars: &Vars, json: bool) -> String {
    let mut out = String::with_capacity(template.len());
    let mut at = 0;
    for (range, name) in placeholders(template) {
        out.push_str(&template[at..range.start]);
        match vars.get(name) {
            Some(value) if json => escape_json(&value, &mut out),
            Some(value) => out.push_str(&value),
            None => out.push_str(&template[range.clone()]),
        }
        at = range.end;
    }
    out.push_str(&template[at..]);
    out
}

/// Refuses a template naming a variable that does not exist.
pub fn check_template(template: &str) -> Result<(), String> {
    let mut unknown: Vec<&str> = Vec::new();
    for (_, name) in placeholders(template) {
        if !VARIABLES.contains(&name) && !unknown.contains(&name) {
            unknown.push(name);
        }
    }
    if unknown.is_empty() {
        return Ok(());
    }
    let listed: Vec<String> = unknown
        .iter()
        .map(|n| format!("{{{{{}}}}}", one_line(n)))
        .collect();
    Err(format!(
        "template: unknown variable{} {} (known: {})",
        if unknown.len() == 1 { "" } else { "s" },
        listed.join(", "),
        VARIABLES.join(", ")
    ))
}

/// The body of a webhook that has no template of its own.
pub fn default_body(vars: &Vars) -> String {
    let error = if vars.error.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::Value::from(vars.error.as_str())
    };
    serde_json::json!({
        "event": "dispatch.completed",
        "delivery_id": vars.delivery_id,
        "timestamp": vars.timestamp,
        "agent": vars.agent,
        "kind": vars.kind,
        "session": vars.session,
        "dispatch": vars.dispatch,
        "success": vars.success,
        "error": error,
        "duration_ms": vars.duration_ms,
        "reply_preview": vars.reply_preview,
    })
    .to_string()
}

/// The placeholders of a template: where each is and the name it holds.
/// In a run of braces (`{{{agent}}}`, as a JSON object around a value
/// would write it) the placeholder is the innermost pair.
fn placeholders(template: &str) -> Vec<(Range<usize>, &str)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(rel) = template[from..].find("{{") {
        let mut start = from + rel;
        while template[start + 2..].starts_with('{') {
            start += 1;
        }
        let inner = start + 2;
        let Some(close) = template[inner..].find("}}") else {
            break;
        };
        let name = template[inner..inner + close].trim_matches(' ');
        if is_variable_name(name) {
            let end = inner + close + 2;
            found.push((start..end, name));
            from = end;
        } else {
            from = inner;
        }
    }
    found
}

fn is_variable_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Appends `value` escaped as the inside of a JSON string (RFC 8259).
fn escape_json(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
}

// ---------------------------------------------------------------------
// Delivery.

/// One webhook request, rendered and ready to send.
#[derive(Clone)]
pub struct Request {
    pub url: Url,
    /// Extra headers (e.g. `Content-Type`, an `Authorization` token).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Signs the body into `X-Hub-Signature-256` when set.
    pub secret: Option<Vec<u8>>,
    /// For the whole attempt: resolving, connecting, sending and reading.
    pub timeout: Duration,
    /// The most of the response body read before it is dropped.
    pub max_response: usize,
}

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered {
        status: u16,
    },
    /// Worth another attempt; `after` is the receiver's `Retry-After`.
    Retry {
        why: String,
        after: Option<Duration>,
    },
    /// Another attempt would fare no better.
    Failed {
        why: String,
    },
}

/// Headers the client writes itself; a configured duplicate would
/// corrupt the request's framing or its target.
const CLIENT_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
];

/// Whether a configured header may be sent with a webhook: a valid name
/// and value, and not one the client writes itself (`Host`,
/// `Content-Length`, …). For the loader, so a bad header shows at load.
pub fn check_header(name: &str, value: &str) -> Result<(), String> {
    parse_header(name, value).map(|_| ())
}

fn parse_header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("header: `{}` is not a valid header name", one_line(name)))?;
    if CLIENT_HEADERS.contains(&parsed.as_str()) {
        return Err(format!(
            "header: `{parsed}` is set by the client and cannot be configured"
        ));
    }
    // The value is not quoted: it is often a token.
    let value = HeaderValue::from_str(value).map_err(|_| {
        format!("header: the value of `{parsed}` has characters a header cannot carry")
    })?;
    Ok((parsed, value))
}

/// One attempt: resolve through the guard, connect only to the addresses
/// it checked, POST the body, read at most `max_response` bytes of the
/// answer, all within `timeout`.
///
/// 2xx is delivered; 408, 429, 5xx and transport errors are worth a retry
/// (with the receiver's `Retry-After` on 429 and 503); any other status,
/// a redirect (never followed: it could point anywhere) and a refusal by
/// the guard are final. `delivery_id` goes out as `X-Cairn-Delivery`
/// (the same id on every attempt, so a receiver can drop repeats), and the
/// signature as `X-Hub-Signature-256` when `secret` is set; both replace a
/// configured header of the same name. `Content-Type` is the caller's.
pub async fn deliver(guard: &Guard, req: &Request, delivery_id: &str) -> Outcome {
    let timeout = req.timeout.min(TIMEOUT_CAP);
    let deadline = Instant::now() + timeout;
    let addrs = match tokio::time::timeout_at(deadline, guard.lookup(&req.url)).await {
        Ok(Ok(addrs)) => addrs,
        Ok(Err(Refusal::Refused(why))) => return Outcome::Failed { why },
        Ok(Err(Refusal::Lookup(why))) => return Outcome::Retry { why, after: None },
        Err(_) => {
            return Outcome::Retry {
                why: format!(
                    "timed out after {timeout:?} resolving {}",
                    host_port(&req.url)
                ),
                after: None,
            };
        }
    };
    attempt(req, &addrs, delivery_id, timeout, deadline).await
}

/// The HTTP part of an attempt, to addresses already checked.
async fn attempt(
    req: &Request,
    addrs: &[SocketAddr],
    delivery_id: &str,
    timeout: Duration,
    deadline: Instant,
) -> Outcome {
    let target = host_port(&req.url);
    let headers = match header_map(req, delivery_id) {
        Ok(headers) => headers,
        Err(why) => return Outcome::Failed { why },
    };
    let client = match pinned_client(&req.url, addrs, timeout) {
        Ok(client) => client,
        Err(why) => return Outcome::Failed { why },
    };
    let send = client
        .post(req.url.clone())
        .headers(headers)
        .body(req.body.clone())
        .send();
    let response = match tokio::time::timeout_at(deadline, send).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => return transport_outcome(e, &target),
        Err(_) => {
            return Outcome::Retry {
                why: format!("timed out after {timeout:?} waiting for {target}"),
                after: None,
            };
        }
    };
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let location = response
        .headers()
        .get(LOCATION)
        .map(|v| quote(v.as_bytes()))
        .unwrap_or_default();
    // What is left of the deadline bounds the read; the status is known
    // already, so a receiver dawdling over its body changes nothing.
    let preview = tokio::time::timeout_at(deadline, drain(response, req.max_response))
        .await
        .map(|(_, preview)| preview)
        .unwrap_or_default();
    judge(status, retry_after, &location, &preview)
}

/// Turns a status into an outcome.
fn judge(
    status: StatusCode,
    retry_after: Option<Duration>,
    location: &str,
    preview: &[u8],
) -> Outcome {
    let code = status.as_u16();
    let said = if preview.is_empty() {
        String::new()
    } else {
        format!(": {}", quote(preview))
    };
    match code {
        200..=299 => Outcome::Delivered { status: code },
        300..=399 => Outcome::Failed {
            why: if location.is_empty() {
                format!("HTTP {status}: redirects are not followed")
            } else {
                format!("HTTP {status}: redirects are not followed (Location: {location})")
            },
        },
        408 | 429 | 500..=599 => Outcome::Retry {
            why: format!("HTTP {status}{said}"),
            after: if code == 429 || code == 503 {
                retry_after
            } else {
                None
            },
        },
        _ => Outcome::Failed {
            why: format!("HTTP {status}{said}"),
        },
    }
}

fn transport_outcome(e: reqwest::Error, target: &str) -> Outcome {
    let builder = e.is_builder();
    let why = format!("posting to {target}: {}", chain(&e.without_url()));
    if builder {
        Outcome::Failed { why }
    } else {
        // Connect failures, resets, TLS handshakes, broken responses:
        // the receiver may well be back on the next attempt.
        Outcome::Retry { why, after: None }
    }
}

/// A client for one attempt: no proxy, no redirects, no pooled
/// connections, and a resolver that answers only the URL's host, with the
/// checked addresses, so nothing is looked up a second time.
fn pinned_client(
    url: &Url,
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<reqwest::Client, String> {
    let pinned = Pinned {
        host: url.host_str().unwrap_or_default().to_ascii_lowercase(),
        addrs: addrs.to_vec(),
    };
    crate::web::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(pinned))
        .pool_max_idle_per_host(0)
        .timeout(timeout)
        .user_agent(concat!("cairn/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("building the HTTP client: {}", chain(&e)))
}

/// Resolves the one host of an attempt to the addresses the guard passed.
struct Pinned {
    host: String,
    addrs: Vec<SocketAddr>,
}

impl reqwest::dns::Resolve for Pinned {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let answer = if name.as_str().eq_ignore_ascii_case(&self.host) {
            let addrs: reqwest::dns::Addrs = Box::new(self.addrs.clone().into_iter());
            Ok(addrs)
        } else {
            Err(format!("{} is not the host being delivered to", name.as_str()).into())
        };
        Box::pin(std::future::ready(answer))
    }
}

fn header_map(req: &Request, delivery_id: &str) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, value) in &req.headers {
        let (name, value) = parse_header(name, value)?;
        map.append(name, value);
    }
    // Set last, replacing any configured header of the same name: the id
    // and the signature are cairn's to vouch for.
    if !delivery_id.is_empty() {
        let id = HeaderValue::from_str(delivery_id).map_err(|_| {
            format!(
                "delivery id {} is not a valid header value",
                quote(delivery_id.as_bytes())
            )
        })?;
        map.insert(DELIVERY_HEADER, id);
    }
    if let Some(secret) = &req.secret {
        let value = HeaderValue::from_str(&signature(secret, &req.body))
            .map_err(|_| "signature is not a valid header value".to_string())?;
        map.insert(SIGNATURE_HEADER, value);
    }
    Ok(map)
}

/// Reads at most `max` bytes of a response (one chunk past it at most, as
/// the connection delivers them) and keeps the start for messages; the
/// rest is never read, and dropping the response closes the connection.
async fn drain(mut response: reqwest::Response, max: usize) -> (usize, Vec<u8>) {
    let mut read = 0usize;
    let mut preview = Vec::new();
    while read < max {
        let Ok(Some(chunk)) = response.chunk().await else {
            break;
        };
        let keep = PREVIEW
            .min(max)
            .saturating_sub(preview.len())
            .min(chunk.len());
        preview.extend_from_slice(&chunk[..keep]);
        read = read.saturating_add(chunk.len());
    }
    (read, preview)
}

/// `Retry-After` in seconds (the HTTP-date form is not honoured), capped.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(RETRY_AFTER_CAP))
}

/// How long to wait after failed attempt `attempt` (1-based): exponential
/// backoff with full jitter, a random delay up to a ceiling of 1s doubling
/// per attempt and capped at 5 minutes, so that many deliveries failing
/// together do not come back together. The receiver's `after` wins when
/// longer.
pub fn backoff(attempt: u32, after: Option<Duration>) -> Duration {
    let doublings = attempt.saturating_sub(1).min(20);
    let ceiling = (BACKOFF_BASE_MS << doublings).min(BACKOFF_MAX_MS);
    let jittered = Duration::from_millis(fastrand::u64(0..=ceiling));
    match after {
        Some(after) if after > jittered => after,
        _ => jittered,
    }
}

/// `host:port` of a URL, for messages: never its path or query, which may
/// hold a token (chat webhooks put theirs there).
fn host_port(url: &Url) -> String {
    match (url.host_str(), url.port_or_known_default()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_string(),
        _ => "the receiver".to_string(),
    }
}

/// An error and its causes on one line.
fn chain(e: &dyn StdError) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&dyn StdError> = Some(e);
    while let Some(err) = next {
        let text = one_line(&err.to_string());
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

/// Text from outside, shortened to one printable line.
fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line = one_line(&text);
    if line.chars().count() > PREVIEW {
        let cut: String = line.chars().take(PREVIEW).collect();
        format!("{cut}…")
    } else {
        line
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Instant as StdInstant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    // -- is_public

    #[test]
    fn public_and_non_public_addresses() {
        let table: &[(&str, bool)] = &[
            // IPv4
            ("8.8.8.8", true),
            ("1.1.1.1", true),
            ("93.184.216.34", true),
            ("172.32.0.1", true),
            ("100.63.255.255", true),
            ("100.128.0.0", true),
            ("198.20.0.1", true),
            ("223.255.255.255", true),
            ("0.0.0.0", false),
            ("0.1.2.3", false),
            ("10.0.0.5", false),
            ("100.64.0.1", false),
            ("100.100.100.200", false),
            ("127.0.0.1", false),
            ("127.255.255.254", false),
            ("169.254.0.1", false),
            ("169.254.169.254", false),
            ("168.63.129.16", false),
            ("172.16.0.1", false),
            ("172.31.255.255", false),
            ("192.0.0.8", false),
            ("192.0.2.1", false),
            ("192.88.99.1", false),
            ("192.168.1.1", false),
            ("198.18.0.1", false),
            ("198.19.255.255", false),
            ("198.51.100.7", false),
            ("203.0.113.9", false),
            ("224.0.0.1", false),
            ("239.255.255.250", false),
            ("240.0.0.1", false),
            ("255.255.255.255", false),
            // IPv6
            ("2606:4700:4700::1111", true),
            ("2001:4860:4860::8888", true),
            ("2a00:1450::1", true),
            ("::", false),
            ("::1", false),
            ("fd00:ec2::254", false),
            ("fd12:3456::1", false),
            ("fc00::1", false),
            ("fe80::1", false),
            ("fec0::1", false),
            ("ff02::1", false),
            ("100::1", false),
            ("2001:db8::1", false),
            ("3fff::1", false),
            ("2001::1", false),
            ("2001:2::1", false),
            ("64:ff9b:1::1", false),
            ("5f00::1", false),
            ("4000::1", false),
            // IPv4 inside IPv6: mapped, compatible, NAT64, 6to4
            ("::ffff:8.8.8.8", true),
            ("::ffff:127.0.0.1", false),
            ("::ffff:169.254.169.254", false),
            ("::ffff:10.0.0.1", false),
            ("::127.0.0.1", false),
            ("::8.8.8.8", true),
            ("64:ff9b::8.8.8.8", true),
            ("64:ff9b::127.0.0.1", false),
            ("64:ff9b::a9fe:a9fe", false),
            ("64:ff9b::100.100.100.200", false),
            ("2002:0808:0808::1", true),
            ("2002:7f00:0001::1", false),
            ("2002:a9fe:a9fe::", false),
            ("2002:c0a8:0101::1", false),
        ];
        for (text, public) in table {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(is_public(ip), *public, "{text}");
        }
        assert_eq!(classify("169.254.169.254".parse().unwrap()), Some(METADATA));
        assert_eq!(classify("fd00:ec2::254".parse().unwrap()), Some(METADATA));
        assert_eq!(
            classify("::ffff:100.100.100.200".parse().unwrap()),
            Some(METADATA)
        );
    }

    // -- check_url

    #[test]
    fn check_url_refuses_what_it_must() {
        let guard = Guard::new(&[]);
        let cases: &[(&str, &str)] = &[
            ("file:///etc/passwd", "scheme `file` is not allowed"),
            ("gopher://example.com/", "scheme `gopher` is not allowed"),
            ("ftp://example.com/", "scheme `ftp`"),
            ("http://user:pw@example.com/", "credentials"),
            ("http://user@example.com/", "credentials"),
            ("http://127.0.0.1/", "127.0.0.1 is a loopback address"),
            ("http://[::1]:9000/", "::1 is a loopback address"),
            ("http://169.254.169.254/latest/meta-data/", METADATA),
            ("http://[fd00:ec2::254]/", METADATA),
            ("http://10.0.0.5/", "10.0.0.5 is a private address"),
            ("http://0.0.0.0:8080/", "the unspecified address"),
            ("http://[::ffff:127.0.0.1]/", "loopback"),
            ("http://0x7f.1/", "127.0.0.1 is a loopback address"),
            ("http://2130706433/", "127.0.0.1 is a loopback address"),
            ("http://localhost:3000/", "localhost is a loopback name"),
            ("http://app.localhost./", "app.localhost is a loopback name"),
            ("not a url", "url: "),
            ("http://", "url: "),
        ];
        for (url, expect) in cases {
            let err = guard.check_url(url).unwrap_err();
            assert!(err.contains(expect), "{url}: {err}");
            assert!(err.starts_with("url: "), "{url}: {err}");
            assert!(!err.contains('\n'), "{url}: {err}");
        }
        assert_eq!(
            guard.check_url("http://127.0.0.1:8080/hook").unwrap_err(),
            "url: 127.0.0.1 is a loopback address; allow it with \
             [webhooks] allow_hosts = [\"127.0.0.1:8080\"]"
        );
        assert!(
            guard
                .check_url("http://[::1]/")
                .unwrap_err()
                .ends_with("allow_hosts = [\"[::1]:80\"]")
        );
    }

    #[test]
    fn check_url_accepts_public_and_allow_listed() {
        let guard = Guard::new(&[]);
        for url in [
            "https://hooks.example.com/services/T0/B0/x?y=1",
            "http://8.8.8.8:8080/",
            "https://[2606:4700:4700::1111]/",
        ] {
            assert!(guard.check_url(url).is_ok(), "{url}");
        }

        let guard = Guard::new(&["127.0.0.1:8080".to_string()]);
        assert!(guard.check_url("http://127.0.0.1:8080/hook").is_ok());
        assert!(guard.check_url("http://127.0.0.1:8081/hook").is_err());
        assert!(guard.check_url("http://127.0.0.1/hook").is_err());

        let guard = Guard::new(&[
            " 10.0.0.5 ".to_string(),
            "::1".to_string(),
            "[fd00::1]:443".to_string(),
            "LocalHost:3000".to_string(),
        ]);
        assert!(guard.check_url("http://10.0.0.5:1234/").is_ok());
        assert!(guard.check_url("http://[::1]:5/").is_ok());
        assert!(guard.check_url("https://[fd00::1]/").is_ok());
        assert!(guard.check_url("http://[fd00::1]/").is_err());
        assert!(guard.check_url("http://localhost:3000/").is_ok());
        assert!(guard.check_url("http://localhost:3001/").is_err());
        // An allowed IPv4 address covers its mapped IPv6 form.
        assert!(guard.check_url("http://[::ffff:10.0.0.5]/").is_ok());
    }

    // -- resolve

    #[tokio::test]
    async fn resolve_refuses_localhost_unless_allow_listed() {
        let url = Url::parse("http://localhost:4567/hook").unwrap();
        // Refused for what it resolves to, not for its name.
        let err = Guard::new(&[]).resolve(&url).await.unwrap_err();
        assert!(err.starts_with("url: localhost resolves to "), "{err}");
        assert!(err.contains("a loopback address"), "{err}");
        assert!(err.ends_with("allow_hosts = [\"localhost:4567\"]"), "{err}");

        for entry in ["localhost", "localhost:4567"] {
            let addrs = Guard::new(&[entry.to_string()])
                .resolve(&url)
                .await
                .unwrap();
            assert!(!addrs.is_empty());
            assert!(
                addrs
                    .iter()
                    .all(|a| a.port() == 4567 && a.ip().is_loopback())
            );
        }
        assert!(
            Guard::new(&["localhost:1".to_string()])
                .resolve(&url)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn resolve_checks_literals_without_dns() {
        let guard = Guard::new(&[]);
        let url = Url::parse("http://8.8.8.8/").unwrap();
        assert_eq!(
            guard.resolve(&url).await.unwrap(),
            vec!["8.8.8.8:80".parse::<SocketAddr>().unwrap()]
        );
        let url = Url::parse("https://[2606:4700:4700::1111]/").unwrap();
        assert_eq!(guard.resolve(&url).await.unwrap()[0].port(), 443);
        for bad in ["http://127.0.0.1/", "file:///x", "http://u:p@8.8.8.8/"] {
            let url = Url::parse(bad).unwrap();
            assert!(guard.resolve(&url).await.is_err(), "{bad}");
        }
    }

    #[test]
    fn allowed_names_still_cannot_reach_metadata() {
        let guard = Guard::new(&["internal.corp".to_string()]);
        let metadata: IpAddr = "169.254.169.254".parse().unwrap();
        let private: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(
            guard
                .check_resolved("internal.corp", private, 80, true)
                .is_ok()
        );
        let err = guard
            .check_resolved("internal.corp", metadata, 80, true)
            .unwrap_err()
            .into_message();
        assert!(
            err.contains("allow_hosts = [\"169.254.169.254:80\"]"),
            "{err}"
        );
        let guard = Guard::new(&["169.254.169.254".to_string()]);
        assert!(
            guard
                .check_resolved("internal.corp", metadata, 80, false)
                .is_ok()
        );
    }

    // -- signatures

    #[test]
    fn signature_matches_known_vectors() {
        // GitHub's documented example.
        assert_eq!(
            signature(b"It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        // `printf body | openssl dgst -sha256 -hmac secret`
        assert_eq!(
            signature(b"secret", b"body"),
            "sha256=dc46983557fea127b43af721467eb9b3fde2338fe3e14f51952aa8478c13d355"
        );
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn verify_accepts_only_the_right_signature() {
        let header = signature(b"secret", b"body");
        assert!(verify(b"secret", b"body", &header));
        assert!(verify(
            b"secret",
            b"body",
            &header.to_uppercase().replace("SHA256=", "sha256=")
        ));
        assert!(verify(b"secret", b"body", &format!(" {header} ")));

        let hex_part = header.strip_prefix("sha256=").unwrap();
        let rejected = [
            String::new(),
            "sha256=".to_string(),
            hex_part.to_string(),
            format!("sha1={hex_part}"),
            format!("SHA256={hex_part}"),
            format!("sha256={}", &hex_part[..62]),
            format!("sha256={hex_part}00"),
            format!("sha256={}zz", &hex_part[..62]),
            format!("sha256={}", "0".repeat(64)),
            "sha256=é".to_string(),
        ];
        for bad in &rejected {
            assert!(!verify(b"secret", b"body", bad), "{bad:?}");
        }
        assert!(!verify(b"other", b"body", &header));
        assert!(!verify(b"secret", b"body!", &header));
        assert!(!verify(b"", b"body", &signature(b"", b"body")));
    }

    // -- templates

    fn vars() -> Vars {
        Vars {
            agent: "coder".into(),
            kind: "prompt".into(),
            session: "s-1".into(),
            dispatch: "d-1".into(),
            success: true,
            error: String::new(),
            duration_ms: 1234,
            reply_preview: "plain".into(),
            timestamp: "2026-01-02T03:04:05Z".into(),
            delivery_id: "dl-1".into(),
        }
    }

    #[test]
    fn render_substitutes_variables() {
        let v = vars();
        assert_eq!(
            render(
                "{{agent}}/{{ kind }} {{success}} {{duration_ms}}ms {{delivery_id}}",
                &v,
                false
            ),
            "coder/prompt true 1234ms dl-1"
        );
        assert_eq!(render("{{nope}} {{agent", &v, false), "{{nope}} {{agent");
        assert_eq!(render("{{{agent}}}", &v, false), "{coder}");
        assert_eq!(
            render("{{ not a var }} {{agent}}", &v, false),
            "{{ not a var }} coder"
        );
        assert_eq!(render("héllo {{agent}} ✓", &v, true), "héllo coder ✓");
        assert_eq!(render("", &v, true), "");
    }

    #[test]
    fn render_escapes_values_in_json_bodies() {
        let mut v = vars();
        v.reply_preview = "say \"hi\"\\\nnext\r\tline\u{1}\u{8}\u{c}\u{1f} é".into();
        v.error = "\", \"admin\": true, \"x\": \"".into();
        let template = r#"{"text": "{{reply_preview}}", "error": "{{error}}", "ok": {{success}}, "ms": {{duration_ms}}}"#;
        let body = render(template, &v, true);
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed["text"], v.reply_preview.as_str());
        assert_eq!(parsed["error"], v.error.as_str());
        assert!(parsed.get("admin").is_none());
        assert_eq!(parsed["ok"], true);
        assert_eq!(parsed["ms"], 1234);
        assert!(
            body.contains(r#"say \"hi\"\\\nnext\r\tline\u0001\b\f\u001f é"#),
            "{body}"
        );

        // Not escaped outside JSON mode.
        assert_eq!(render("{{error}}", &v, false), v.error);
        // A JSON object directly around a placeholder.
        let body = render(r#"{"a":{"ok":{{success}}}}"#, &v, true);
        assert_eq!(body, r#"{"a":{"ok":true}}"#);
    }

    #[test]
    fn check_template_lists_unknown_variables() {
        assert!(check_template("{{agent}} {{ kind }} {{reply_preview}} {{ not a var }}").is_ok());
        assert!(check_template(r#"{"a":{{{success}}}}"#).is_ok());
        let err = check_template("{{agent}} {{env.HOME}} {{Agent}} {{env.HOME}}").unwrap_err();
        assert!(
            err.starts_with("template: unknown variables {{env.HOME}}, {{Agent}} (known: agent,"),
            "{err}"
        );
        let err = check_template("{{secret}}").unwrap_err();
        assert!(
            err.starts_with("template: unknown variable {{secret}} "),
            "{err}"
        );
    }

    #[test]
    fn odd_templates_do_not_panic() {
        let alphabet = [
            '{', '}', ' ', 'a', 'g', 'e', 'n', 't', 'é', '✓', '"', '\\', '\n',
        ];
        let v = vars();
        for _ in 0..5000 {
            let len = fastrand::usize(0..24);
            let template: String = (0..len)
                .map(|_| alphabet[fastrand::usize(..alphabet.len())])
                .collect();
            let plain = render(&template, &v, false);
            let _ = render(&template, &v, true);
            let _ = check_template(&template);
            if placeholders(&template).is_empty() {
                assert_eq!(plain, template);
            }
        }
    }

    #[test]
    fn default_body_is_json_with_every_field() {
        let mut v = vars();
        v.reply_preview = "quote \" and\nnewline".into();
        let body: serde_json::Value = serde_json::from_str(&default_body(&v)).unwrap();
        assert_eq!(body["agent"], "coder");
        assert_eq!(body["success"], true);
        assert_eq!(body["error"], serde_json::Value::Null);
        assert_eq!(body["duration_ms"], 1234);
        assert_eq!(body["reply_preview"], "quote \" and\nnewline");
        assert_eq!(body["delivery_id"], "dl-1");
        v.success = false;
        v.error = "boom".into();
        let body: serde_json::Value = serde_json::from_str(&default_body(&v)).unwrap();
        assert_eq!(body["error"], "boom");
    }

    // -- backoff

    #[test]
    fn backoff_stays_within_bounds() {
        for attempt in 0u32..40 {
            let ceiling =
                Duration::from_millis((1000u64 << attempt.saturating_sub(1).min(20)).min(300_000));
            for _ in 0..50 {
                assert!(backoff(attempt, None) <= ceiling, "attempt {attempt}");
            }
        }
        assert!(backoff(1, None) <= Duration::from_secs(1));
        assert!(backoff(u32::MAX, None) <= Duration::from_secs(300));
        assert_eq!(
            backoff(1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert!(backoff(30, Some(Duration::from_millis(1))) <= Duration::from_secs(300));
        // Jittered: not the same every time.
        let samples: Vec<Duration> = (0..20).map(|_| backoff(10, None)).collect();
        assert!(samples.iter().any(|d| *d != samples[0]));
    }

    #[test]
    fn retry_after_is_seconds_and_capped() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static(" 7 "));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("99999999999"));
        assert_eq!(retry_after(&headers), Some(RETRY_AFTER_CAP));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("-1"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn headers_are_checked() {
        assert!(check_header("Content-Type", "application/json").is_ok());
        assert!(check_header("Authorization", "Bearer abc").is_ok());
        assert!(check_header("bad name", "x").is_err());
        assert!(check_header("Host", "evil").is_err());
        assert!(check_header("content-length", "1").is_err());
        let err = check_header("X-Token", "secret\nvalue").unwrap_err();
        assert!(!err.contains("secret"), "{err}");
    }

    // -- delivery against local receivers

    /// A request as the receiver saw it.
    struct Seen {
        head: String,
        body: Vec<u8>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<String> {
            self.head.lines().find_map(|line| {
                let (n, v) = line.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        }
    }

    async fn bind() -> (TcpListener, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        (listener, port)
    }

    async fn read_request(stream: &mut TcpStream) -> Option<Seen> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut seen = Seen {
            head,
            body: buf[head_end..].to_vec(),
        };
        let length: usize = seen
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while seen.body.len() < length {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            seen.body.extend_from_slice(&chunk[..n]);
        }
        Some(seen)
    }

    /// Answers every request with `reply`, reporting each request seen.
    fn answer(listener: TcpListener, reply: String) -> mpsc::UnboundedReceiver<Seen> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let tx = tx.clone();
                let reply = reply.clone();
                tokio::spawn(async move {
                    if let Some(seen) = read_request(&mut stream).await {
                        let _ = tx.send(seen);
                        let _ = stream.write_all(reply.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    }
                });
            }
        });
        rx
    }

    fn request(port: u16, timeout: Duration) -> Request {
        Request {
            url: Url::parse(&format!("http://127.0.0.1:{port}/hook?token=t0ps3cret")).unwrap(),
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: br#"{"agent":"coder"}"#.to_vec(),
            secret: Some(b"secret".to_vec()),
            timeout,
            max_response: 64 * 1024,
        }
    }

    fn allow(port: u16) -> Guard {
        Guard::new(&[format!("127.0.0.1:{port}")])
    }

    fn canned(status_line: &str, extra: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status_line}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn delivered_with_body_and_signature() {
        let (listener, port) = bind().await;
        let mut seen = answer(listener, canned("200 OK", "", "ok"));
        let req = request(port, Duration::from_secs(5));
        let outcome = deliver(&allow(port), &req, "dl-42").await;
        assert!(
            matches!(outcome, Outcome::Delivered { status: 200 }),
            "{outcome:?}"
        );

        let got = seen.recv().await.unwrap();
        assert!(
            got.head
                .starts_with("POST /hook?token=t0ps3cret HTTP/1.1\r\n"),
            "{}",
            got.head
        );
        assert_eq!(got.body, req.body);
        assert_eq!(got.header("x-cairn-delivery").as_deref(), Some("dl-42"));
        assert_eq!(
            got.header("content-type").as_deref(),
            Some("application/json")
        );
        let sig = got.header("x-hub-signature-256").unwrap();
        assert!(verify(b"secret", &got.body, &sig));
        assert_eq!(
            sig,
            "sha256=9199ecd861d6c48fb5d87a570059a00c0e569de76fd1b366e7120de9b33c056c"
        );
    }

    #[tokio::test]
    async fn unsigned_without_a_secret() {
        let (listener, port) = bind().await;
        let mut seen = answer(listener, canned("204 No Content", "", ""));
        let mut req = request(port, Duration::from_secs(5));
        req.secret = None;
        req.headers
            .push(("X-Hub-Signature-256".into(), "sha256=forged".into()));
        let outcome = deliver(&allow(port), &req, "").await;
        assert!(
            matches!(outcome, Outcome::Delivered { status: 204 }),
            "{outcome:?}"
        );
        let got = seen.recv().await.unwrap();
        assert_eq!(got.header("x-cairn-delivery"), None);

        // With a secret, cairn's signature replaces a configured one.
        let (listener, port) = bind().await;
        let mut seen = answer(listener, canned("200 OK", "", ""));
        req.url.set_port(Some(port)).unwrap();
        req.secret = Some(b"secret".to_vec());
        deliver(&allow(port), &req, "x").await;
        let got = seen.recv().await.unwrap();
        let sig = got.header("x-hub-signature-256").unwrap();
        assert!(verify(b"secret", &got.body, &sig));
    }

    #[tokio::test]
    async fn server_errors_are_retried() {
        let (listener, port) = bind().await;
        let _seen = answer(
            listener,
            canned(
                "500 Internal Server Error",
                "Retry-After: 9\r\n",
                "db down\n",
            ),
        );
        let req = request(port, Duration::from_secs(5));
        match deliver(&allow(port), &req, "dl").await {
            Outcome::Retry { why, after } => {
                assert_eq!(after, None, "Retry-After is honoured on 429 and 503 only");
                assert!(why.contains("500") && why.contains("db down"), "{why}");
                assert!(!why.contains('\n'));
            }
            other => panic!("{other:?}"),
        }

        let (listener, port) = bind().await;
        let _seen = answer(listener, canned("408 Request Timeout", "", ""));
        let req = request(port, Duration::from_secs(5));
        assert!(matches!(
            deliver(&allow(port), &req, "dl").await,
            Outcome::Retry { .. }
        ));
    }

    #[tokio::test]
    async fn too_many_requests_honours_retry_after() {
        for status in ["429 Too Many Requests", "503 Service Unavailable"] {
            let (listener, port) = bind().await;
            let _seen = answer(listener, canned(status, "Retry-After: 7\r\n", ""));
            let req = request(port, Duration::from_secs(5));
            match deliver(&allow(port), &req, "dl").await {
                Outcome::Retry { after, .. } => assert_eq!(after, Some(Duration::from_secs(7))),
                other => panic!("{status}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn redirects_fail_and_are_not_followed() {
        let (listener, port) = bind().await;
        let location = format!("http://127.0.0.1:{port}/elsewhere");
        let mut seen = answer(
            listener,
            canned("302 Found", &format!("Location: {location}\r\n"), ""),
        );
        let req = request(port, Duration::from_secs(5));
        match deliver(&allow(port), &req, "dl").await {
            Outcome::Failed { why } => {
                assert!(why.contains("302") && why.contains(&location), "{why}");
            }
            other => panic!("{other:?}"),
        }
        assert!(seen.recv().await.is_some());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(seen.try_recv().is_err(), "the redirect was followed");
    }

    #[tokio::test]
    async fn client_errors_fail() {
        let (listener, port) = bind().await;
        let _seen = answer(listener, canned("404 Not Found", "", "no such hook"));
        // An unbounded timeout is held to the cap, not overflowed.
        let req = request(port, Duration::MAX);
        match deliver(&allow(port), &req, "dl").await {
            Outcome::Failed { why } => {
                assert!(why.contains("404") && why.contains("no such hook"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_silent_receiver_is_retried_after_the_timeout() {
        let (listener, port) = bind().await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let _ = read_request(&mut stream).await;
            let _ = tx.send(());
            // Holds the connection open without ever answering.
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(stream);
        });
        let timeout = Duration::from_millis(500);
        let started = StdInstant::now();
        let outcome = deliver(&allow(port), &request(port, timeout), "dl").await;
        let took = started.elapsed();
        match outcome {
            Outcome::Retry { why, after: None } => assert!(why.contains("timed out"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(took >= timeout, "{took:?}");
        assert!(rx.recv().await.is_some());
    }

    #[tokio::test]
    async fn a_flooding_receiver_is_read_only_up_to_the_cap() {
        const TOTAL: usize = 100 << 20;
        let (listener, port) = bind().await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let _ = read_request(&mut stream).await;
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {TOTAL}\r\n\r\n");
            let _ = stream.write_all(head.as_bytes()).await;
            let block = vec![b'x'; 64 * 1024];
            let mut written = 0usize;
            while written < TOTAL {
                match stream.write(&block).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => written += n,
                }
            }
            let _ = tx.send(written);
        });
        let req = request(port, Duration::from_secs(20));
        let outcome = deliver(&allow(port), &req, "dl").await;
        assert!(
            matches!(outcome, Outcome::Delivered { status: 200 }),
            "{outcome:?}"
        );
        // The client hung up long before the receiver was done: what it
        // managed to write is the cap plus what the sockets buffer.
        let written = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(written < TOTAL / 2, "receiver wrote {written} bytes");
    }

    #[tokio::test]
    async fn drain_stops_at_the_cap() {
        let (listener, port) = bind().await;
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let _ = read_request(&mut stream).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\n\r\n")
                .await;
            let block = vec![b'y'; 64 * 1024];
            while stream.write_all(&block).await.is_ok() {}
        });
        let url = Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let client = pinned_client(&url, &[addr], Duration::from_secs(10)).unwrap();
        let response = client.post(url).send().await.unwrap();
        let (read, preview) = drain(response, 100_000).await;
        assert!(read >= 100_000, "{read}");
        // At most one chunk past the cap: the body is never held whole.
        assert!(read < 100_000 + (1 << 20), "{read}");
        assert_eq!(preview, vec![b'y'; PREVIEW]);
    }

    #[tokio::test]
    async fn connections_go_only_to_the_pinned_addresses() {
        // A name no resolver knows: reaching the receiver proves the
        // checked address was used and nothing was looked up.
        let (listener, port) = bind().await;
        let mut seen = answer(listener, canned("200 OK", "", ""));
        let mut req = request(port, Duration::from_secs(5));
        req.url = Url::parse(&format!("http://hooks.cairn-test.invalid:{port}/p")).unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + req.timeout;
        let outcome = attempt(&req, &[addr], "dl", req.timeout, deadline).await;
        assert!(
            matches!(outcome, Outcome::Delivered { status: 200 }),
            "{outcome:?}"
        );
        let got = seen.recv().await.unwrap();
        assert_eq!(
            got.header("host"),
            Some(format!("hooks.cairn-test.invalid:{port}"))
        );
    }

    #[tokio::test]
    async fn guard_refusals_fail_without_connecting() {
        let (listener, port) = bind().await;
        let mut seen = answer(listener, canned("200 OK", "", ""));
        let req = request(port, Duration::from_secs(5));
        match deliver(&Guard::new(&[]), &req, "dl").await {
            Outcome::Failed { why } => {
                assert!(why.contains("loopback"), "{why}");
                assert!(!why.contains("t0ps3cret"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        let mut localhost = request(port, Duration::from_secs(5));
        localhost.url = Url::parse(&format!("http://localhost:{port}/")).unwrap();
        assert!(matches!(
            deliver(&Guard::new(&[]), &localhost, "dl").await,
            Outcome::Failed { .. }
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(seen.try_recv().is_err(), "a refused delivery connected");
    }

    #[tokio::test]
    async fn transport_errors_are_retried_without_the_url() {
        // A port nothing listens on.
        let (listener, port) = bind().await;
        drop(listener);
        let req = request(port, Duration::from_secs(5));
        match deliver(&allow(port), &req, "dl").await {
            Outcome::Retry { why, after: None } => {
                assert!(why.contains(&format!("127.0.0.1:{port}")), "{why}");
                assert!(!why.contains("t0ps3cret"), "{why}");
            }
            other => panic!("{other:?}"),
        }

        // TLS to a receiver speaking plain HTTP: the handshake fails.
        let (listener, port) = bind().await;
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let _ = stream.write_all(canned("200 OK", "", "").as_bytes()).await;
            let _ = stream.shutdown().await;
        });
        let mut req = request(port, Duration::from_secs(5));
        req.url.set_scheme("https").unwrap();
        let outcome = deliver(&allow(port), &req, "dl").await;
        match outcome {
            Outcome::Retry { why, .. } => assert!(!why.contains("timed out"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn bad_headers_fail() {
        let (listener, port) = bind().await;
        let _seen = answer(listener, canned("200 OK", "", ""));
        let mut req = request(port, Duration::from_secs(5));
        req.headers.push(("Content-Length".into(), "0".into()));
        assert!(matches!(
            deliver(&allow(port), &req, "dl").await,
            Outcome::Failed { .. }
        ));
        let req = request(port, Duration::from_secs(5));
        assert!(matches!(
            deliver(&allow(port), &req, "bad\nid").await,
            Outcome::Failed { .. }
        ));
    }
}
