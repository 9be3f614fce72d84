//! HTTP as the agent needs it: one JSON POST, answered with a status and a
//! body. The loop only sees the [`Post`] trait, so it runs natively in tests
//! against a scripted fake; the real client, over `wasi:http`, exists only
//! when built for WASI.

/// Posts a JSON body and returns the answer's status and body.
pub trait Post {
    /// `Err` means no answer came (refused, unreachable, broken stream); any
    /// status, 2xx or not, is an `Ok`.
    fn post(&self, url: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String>;
}

#[cfg(target_os = "wasi")]
pub use client::WasiHttp;

#[cfg(target_os = "wasi")]
mod client {
    use super::Post;
    use wasi::http::outgoing_handler;
    use wasi::http::types::{
        Fields, IncomingResponse, Method, OutgoingBody, OutgoingRequest, Scheme, http_error_code,
    };
    use wasi::io::streams::StreamError;

    /// The largest write `blocking-write-and-flush` accepts, and our read size.
    const CHUNK: usize = 4096;

    /// An answer larger than this is refused rather than held in memory: no
    /// chat completion or broker answer the agent can use is anywhere near it.
    const MAX_BODY: usize = 32 << 20;

    /// The client over `wasi:http`'s outgoing handler.
    pub struct WasiHttp;

    impl Post for WasiHttp {
        fn post(&self, url: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
            let result = send(url, body).and_then(|response| {
                let status = response.status();
                read_body(&response).map(|bytes| (status, bytes))
            });
            match &result {
                Ok((status, bytes)) => {
                    eprintln!("coder: POST {url} -> {status} ({} bytes)", bytes.len())
                }
                Err(e) => eprintln!("coder: POST {url} -> error: {e}"),
            }
            result
        }
    }

    /// An error's `Debug` text, which names the error code and its payload.
    fn debug(e: impl std::fmt::Debug) -> String {
        format!("{e:?}")
    }

    /// Split an `http(s)://authority/path?query` URL into its request parts.
    fn parse_url(url: &str) -> Result<(Scheme, &str, String), String> {
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

    /// Send a JSON POST and wait for the response's head.
    fn send(url: &str, body: &[u8]) -> Result<IncomingResponse, String> {
        let (scheme, authority, path) = parse_url(url)?;
        let json = ("content-type".to_string(), b"application/json".to_vec());
        let headers = Fields::from_list(&[json]).map_err(debug)?;
        let req = OutgoingRequest::new(headers);
        if req.set_method(&Method::Post).is_err()
            || req.set_scheme(Some(&scheme)).is_err()
            || req.set_authority(Some(authority)).is_err()
            || req.set_path_with_query(Some(&path)).is_err()
        {
            return Err(format!("invalid request URL {url:?}"));
        }
        let outgoing = req.body().map_err(|()| "request body already taken")?;
        // Hand the request over first, then stream the body into it: wasmtime
        // buffers only a couple of chunks of a body that is not being sent yet.
        let future = outgoing_handler::handle(req, None).map_err(debug)?;
        let written = write_body(outgoing, body);
        // A failed connection also breaks the body's stream: report its cause.
        future.subscribe().block();
        let response = match future.get() {
            Some(Ok(result)) => result.map_err(debug)?,
            Some(Err(())) | None => return Err("no response after waiting for it".to_string()),
        };
        written.map(|()| response)
    }

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

    fn stream_error(e: &StreamError) -> String {
        match e {
            StreamError::Closed => "stream closed".to_string(),
            StreamError::LastOperationFailed(err) => {
                http_error_code(err).map_or_else(|| err.to_debug_string(), debug)
            }
        }
    }

    /// The whole response body, refused past [`MAX_BODY`].
    fn read_body(response: &IncomingResponse) -> Result<Vec<u8>, String> {
        let body = response
            .consume()
            .map_err(|()| "response body already taken")?;
        let stream = body
            .stream()
            .map_err(|()| "response body stream already taken")?;
        let mut bytes = Vec::new();
        loop {
            match stream.blocking_read(CHUNK as u64) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => return Ok(bytes),
                Err(e) => return Err(stream_error(&e)),
            }
            if bytes.len() > MAX_BODY {
                return Err(format!("answer larger than {MAX_BODY} bytes"));
            }
        }
    }
}
