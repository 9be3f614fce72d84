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

    /// An answer larger than this is refused rather than held in memory: no
    /// chat completion or broker answer the agent can use is anywhere near it.
    const MAX_BODY: usize = 32 << 20;

    /// The client over `wasi:http`'s outgoing handler (`guests/wasi-post`).
    pub struct WasiHttp;

    impl Post for WasiHttp {
        fn post(&self, url: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
            let result = wasi_post::send(url, Some(body)).and_then(|response| {
                let status = response.status();
                wasi_post::read_all(&response, MAX_BODY).map(|bytes| (status, bytes))
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
}
