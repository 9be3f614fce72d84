//! wasi-post: the `wasi:http` client cairn's guests share. It sends a GET
//! or a JSON POST through the outgoing handler, waits for the answer's head,
//! and reads its body, streamed or whole.
//!
//! It does no logging: each guest logs its requests in its own words.

use wasi::http::outgoing_handler;
use wasi::http::types::{
    Fields, IncomingResponse, Method, OutgoingBody, OutgoingRequest, Scheme, http_error_code,
};
use wasi::io::streams::StreamError;

/// The largest write `blocking-write-and-flush` accepts, and our read size.
const CHUNK: usize = 4096;

/// Split an `http(s)://authority/path?query` URL into its request parts.
pub fn parse_url(url: &str) -> Result<(Scheme, &str, String), String> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else {
        return Err(format!("unsupported URL {url:?}: not http:// or https://"));
    };
    let rest = rest.split('#').next().unwrap_or_default();
    let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    if authority.is_empty() {
        return Err(format!("URL {url:?} has no host"));
    }
    let path = format!("{}{path}", if path.starts_with('/') { "" } else { "/" });
    Ok((scheme, authority, path))
}

/// An error's `Debug` text, which names the error code and its payload.
fn debug(e: impl std::fmt::Debug) -> String {
    format!("{e:?}")
}

/// Send a request and wait for the response's head: a POST of `body` as
/// `application/json`, or a GET when there is none. Any status is an `Ok`;
/// `Err` means no answer came (refused, unreachable, broken stream).
pub fn send(url: &str, body: Option<&[u8]>) -> Result<IncomingResponse, String> {
    let (scheme, authority, path) = parse_url(url)?;
    let json = ("content-type".to_string(), b"application/json".to_vec());
    let headers = Fields::from_list(body.map(|_| json).as_slice()).map_err(debug)?;
    let req = OutgoingRequest::new(headers);
    let method = body.map_or(Method::Get, |_| Method::Post);
    if req.set_method(&method).is_err()
        || req.set_scheme(Some(&scheme)).is_err()
        || req.set_authority(Some(authority)).is_err()
        || req.set_path_with_query(Some(&path)).is_err()
    {
        return Err(format!("invalid request URL {url:?}"));
    }
    let outgoing = body.map(|bytes| req.body().map(|outgoing| (outgoing, bytes)));
    let outgoing = outgoing
        .transpose()
        .map_err(|()| "request body already taken")?;
    // Hand the request over first, then stream the body into it: wasmtime
    // buffers only a couple of chunks of a body that is not being sent yet.
    let future = outgoing_handler::handle(req, None).map_err(debug)?;
    let written = outgoing.map_or(Ok(()), |(outgoing, bytes)| write_body(outgoing, bytes));
    // A failed connection also breaks the body's stream: report its cause.
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(result)) => result.map_err(debug)?,
        Some(Err(())) | None => return Err("no response after waiting for it".to_string()),
    };
    written.map(|()| response)
}

/// Stream `bytes` into a request's body, then finish it.
fn write_body(outgoing: OutgoingBody, bytes: &[u8]) -> Result<(), String> {
    {
        let stream = outgoing
            .write()
            .map_err(|()| "request body stream already taken")?;
        for chunk in bytes.chunks(CHUNK) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| stream_error(&e))?;
        }
    } // the stream, a child of the body, must be gone before `finish`
    OutgoingBody::finish(outgoing, None).map_err(debug)
}

/// A stream's failure in one line, naming the HTTP error code when it has one.
fn stream_error(e: &StreamError) -> String {
    match e {
        StreamError::Closed => "stream closed".to_string(),
        StreamError::LastOperationFailed(err) => {
            http_error_code(err).map_or_else(|| err.to_debug_string(), debug)
        }
    }
}

/// Read the response body chunk by chunk until it ends or `on_chunk`
/// returns false.
pub fn read_body(
    response: &IncomingResponse,
    mut on_chunk: impl FnMut(&[u8]) -> bool,
) -> Result<(), String> {
    let body = response
        .consume()
        .map_err(|()| "response body already taken")?;
    let stream = body
        .stream()
        .map_err(|()| "response body stream already taken")?;
    loop {
        match stream.blocking_read(CHUNK as u64) {
            Ok(bytes) if !on_chunk(&bytes) => return Ok(()),
            Ok(_) => {}
            Err(StreamError::Closed) => return Ok(()),
            Err(e) => return Err(stream_error(&e)),
        }
    }
}

/// The whole response body, refused once it grows past `limit` bytes rather
/// than held in memory.
pub fn read_all(response: &IncomingResponse, limit: usize) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    read_body(response, |chunk| {
        bytes.extend_from_slice(chunk);
        bytes.len() <= limit
    })?;
    if bytes.len() > limit {
        return Err(format!("answer larger than {limit} bytes"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parts with the scheme as its name, `Scheme` having no `PartialEq`.
    fn parts(url: &str) -> Result<(&'static str, &str, String), String> {
        let (scheme, authority, path) = parse_url(url)?;
        let scheme = match scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Other(_) => "other",
        };
        Ok((scheme, authority, path))
    }

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        let url = "http://127.0.0.1:8080/v1/chat/completions";
        let expected = ("http", "127.0.0.1:8080", "/v1/chat/completions".into());
        assert_eq!(parts(url), Ok(expected));
        assert_eq!(parts("https://h"), Ok(("https", "h", "/".into())));
        assert_eq!(parts("http://h?q=1#top"), Ok(("http", "h", "/?q=1".into())));
        assert_eq!(parts("http://h/p?q#f"), Ok(("http", "h", "/p?q".into())));
    }

    #[test]
    fn urls_without_a_host_or_an_http_scheme_are_refused() {
        let refused = |url| parts(url).unwrap_err();
        assert!(refused("ftp://h/").contains("not http:// or https://"));
        assert!(refused("example.com/path").contains("not http:// or https://"));
        assert!(refused("http:///path").contains("has no host"));
    }
}
