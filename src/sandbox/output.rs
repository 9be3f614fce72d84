//! Bounded capture of a guest's stdout and stderr.
//!
//! Each stream keeps at most its cap. The write that would pass the cap keeps
//! what fits and then traps the guest: a reply cut short is a failed
//! dispatch, reported as such, never a silent truncation. stderr is also
//! forwarded to the log line by line while the guest runs.
//!
//! Must not know what the bytes mean (that is the guest contract's job).

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// How much a guest may hand over in one write; WASI streams use 64 KiB.
const WRITE_PERMIT: usize = 64 << 10;

#[derive(Clone)]
pub struct Capture {
    inner: Arc<Mutex<Buffer>>,
}

struct Buffer {
    name: &'static str,
    data: Vec<u8>,
    cap: usize,
    exceeded: bool,
    /// Forward complete lines to the log under this tag (stderr).
    log_tag: Option<Arc<str>>,
    logged_upto: usize,
}

impl Capture {
    pub fn new(name: &'static str, cap: usize, log_tag: Option<Arc<str>>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Buffer {
                name,
                data: Vec::new(),
                cap,
                exceeded: false,
                log_tag,
                logged_upto: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Buffer> {
        // A poisoned lock only means another thread panicked mid-append; the
        // bytes kept so far are still the best record there is.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the guest tried to write past the cap.
    pub fn exceeded(&self) -> bool {
        self.lock().exceeded
    }

    /// Ends the capture: logs a last unterminated line and returns the bytes.
    pub fn finish(&self) -> Vec<u8> {
        let mut buf = self.lock();
        buf.log_lines(true);
        std::mem::take(&mut buf.data)
    }

    fn append(&self, bytes: &[u8]) -> Result<usize, StreamError> {
        let mut buf = self.lock();
        if buf.exceeded {
            return Err(buf.cap_error());
        }
        let room = buf.cap - buf.data.len();
        let taken = bytes.len().min(room);
        buf.data.extend_from_slice(&bytes[..taken]);
        buf.log_lines(false);
        if taken < bytes.len() {
            buf.exceeded = true;
            return Err(buf.cap_error());
        }
        Ok(taken)
    }
}

impl Buffer {
    fn cap_error(&self) -> StreamError {
        StreamError::trap(&format!(
            "{} exceeded its cap of {} bytes",
            self.name, self.cap
        ))
    }

    fn log_lines(&mut self, flush_partial: bool) {
        let Some(tag) = &self.log_tag else { return };
        let mut rest = &self.data[self.logged_upto..];
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            log_guest_line(tag, &rest[..end]);
            self.logged_upto += end + 1;
            rest = &rest[end + 1..];
        }
        if flush_partial && !rest.is_empty() {
            log_guest_line(tag, rest);
            self.logged_upto = self.data.len();
        }
    }
}

fn log_guest_line(tag: &str, line: &[u8]) {
    let line = String::from_utf8_lossy(line);
    tracing::info!(target: "cairn::guest", parent: None, dispatch = %tag, "{}", line.trim_end_matches('\r'));
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes).map(|_| ())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always offer a full permit, even near the cap: the write that
        // crosses it is the one that reports it.
        let buf = self.lock();
        match buf.exceeded {
            true => Err(buf.cap_error()),
            false => Ok(WRITE_PERMIT),
        }
    }
}

impl AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(
            self.append(buf)
                .map_err(|_| std::io::Error::other("output cap exceeded")),
        )
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_fits_then_refuses() {
        let mut out = Capture::new("stdout", 10, None);
        assert!(out.write(Bytes::from_static(b"hello")).is_ok());
        assert!(out.write(Bytes::from_static(b" world!")).is_err());
        assert!(out.exceeded());
        assert!(out.check_write().is_err());
        assert_eq!(out.finish(), b"hello worl");
    }
}
