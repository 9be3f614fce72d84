//! Server-sent events, read incrementally: bytes in, whole events out,
//! each with its raw text so a passed-through event is forwarded unchanged.

/// One event: its `event:` name (empty when none), its `data:` lines
/// joined, and the exact bytes it arrived as (up to its blank line).
#[derive(Debug, PartialEq)]
pub struct Event {
    pub name: String,
    pub data: String,
    pub raw: bytes::Bytes,
}

/// Splits a byte stream into events. Lines may end in `\n`, `\r\n` or `\r`.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// How far `buf` was already searched for an event's end.
    scanned: usize,
}

/// Past this, an upstream event is refused rather than buffered.
pub const MAX_EVENT_BYTES: usize = 8 << 20;

impl Decoder {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Bytes received and not yet taken as events.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole event, if one has arrived. Events without data
    /// (comments, keep-alives) are skipped.
    pub fn next(&mut self) -> Result<Option<Event>, String> {
        loop {
            let Some(end) = self.event_end() else {
                if self.buf.len() > MAX_EVENT_BYTES {
                    return Err(format!(
                        "an event larger than {} MiB",
                        MAX_EVENT_BYTES >> 20
                    ));
                }
                return Ok(None);
            };
            let raw: Vec<u8> = self.buf.drain(..end).collect();
            self.scanned = 0;
            let text = String::from_utf8_lossy(&raw);
            let (mut name, mut data, mut any) = (String::new(), String::new(), false);
            for line in text.split(['\n', '\r']) {
                let (field, value) = match line.split_once(':') {
                    Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                    None => (line, ""),
                };
                match field {
                    "event" => name = value.to_string(),
                    "data" => {
                        if any {
                            data.push('\n');
                        }
                        data.push_str(value);
                        any = true;
                    }
                    _ => {}
                }
            }
            if any {
                return Ok(Some(Event {
                    name,
                    data,
                    raw: raw.into(),
                }));
            }
        }
    }

    /// The end of the first event (after its blank line), if complete.
    fn event_end(&mut self) -> Option<usize> {
        let b = &self.buf;
        let mut i = self.scanned.saturating_sub(3);
        while i < b.len() {
            let rest = &b[i..];
            for sep in [&b"\r\n\r\n"[..], b"\n\n", b"\r\r"] {
                if rest.starts_with(sep) {
                    return Some(i + sep.len());
                }
            }
            i += 1;
        }
        self.scanned = b.len();
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_and_line_endings() {
        let mut d = Decoder::default();
        d.push(b": keep-alive\n\nevent: message_start\r\ndata: {\"a\"");
        assert_eq!(d.next().unwrap(), None);
        d.push(b":1}\r\n\r\ndata: x\ndata: y\n\ndata: [DONE]\n\n");
        let e = d.next().unwrap().unwrap();
        assert_eq!(
            (e.name.as_str(), e.data.as_str()),
            ("message_start", "{\"a\":1}")
        );
        assert_eq!(
            &e.raw[..],
            b"event: message_start\r\ndata: {\"a\":1}\r\n\r\n"
        );
        assert_eq!(d.next().unwrap().unwrap().data, "x\ny");
        assert_eq!(d.next().unwrap().unwrap().data, "[DONE]");
        assert_eq!(d.next().unwrap(), None);
        assert!(d.buf.is_empty());
    }
}
