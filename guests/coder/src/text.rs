//! Small helpers for cutting text to a byte budget without splitting a
//! UTF-8 character, so no model or file input can make a slice panic.

/// The longest prefix of `s` that is at most `max` bytes and ends on a
/// character boundary.
pub fn prefix(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The longest suffix of `s` that is at most `max` bytes and starts on a
/// character boundary.
pub fn suffix(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// `s` cut to `max` bytes, with a note saying how much was cut and `hint`
/// (what to do to see the rest). Text within budget comes back unchanged.
pub fn cap(s: &str, max: usize, hint: &str) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let kept = prefix(s, max);
    format!(
        "{kept}\n[cut: showing the first {} of {} bytes; {hint}]",
        kept.len(),
        s.len()
    )
}

/// The head and the tail of `s` when it is longer than `head + tail` bytes:
/// command output has its first errors at the top and its summary at the
/// bottom, so both ends are worth more than the middle.
pub fn ends(s: &str, head: usize, tail: usize) -> String {
    if s.len() <= head + tail {
        return s.to_string();
    }
    let first = prefix(s, head);
    let last = suffix(s, tail);
    let cut = s.len() - first.len() - last.len();
    format!("{first}\n[... {cut} bytes cut ...]\n{last}")
}

/// The first line of `s`, at most `max` bytes, with `…` when shortened: for
/// logs, events and summaries that must stay one short line.
pub fn one_line(s: &str, max: usize) -> String {
    let line = s.trim().lines().next().unwrap_or_default();
    let short = prefix(line, max);
    if short.len() < line.len() || line.len() < s.trim().len() {
        format!("{short}…")
    } else {
        short.to_string()
    }
}

/// Bytes lossily decoded as UTF-8, at most `max` bytes of them: for quoting
/// an unexpected answer in an error message.
pub fn quote(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let short = prefix(&text, max);
    if short.len() < text.len() {
        format!("{short}…")
    } else {
        short.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_suffix_respect_char_boundaries() {
        let s = "aé€b"; // 1 + 2 + 3 + 1 bytes
        assert_eq!(prefix(s, 2), "a");
        assert_eq!(prefix(s, 3), "aé");
        assert_eq!(prefix(s, 100), s);
        assert_eq!(suffix(s, 3), "b");
        assert_eq!(suffix(s, 4), "€b");
        assert_eq!(suffix(s, 0), "");
    }

    #[test]
    fn cap_leaves_short_text_alone_and_notes_a_cut() {
        assert_eq!(cap("short", 10, "x"), "short");
        let cut = cap(&"a".repeat(100), 10, "ask for less");
        assert!(
            cut.starts_with("aaaaaaaaaa\n[cut: showing the first 10 of 100 bytes; ask for less]")
        );
    }

    #[test]
    fn ends_keeps_head_and_tail() {
        let s = format!("{}{}{}", "h".repeat(10), "m".repeat(100), "t".repeat(10));
        let kept = ends(&s, 10, 10);
        assert_eq!(
            kept,
            format!(
                "{}\n[... 100 bytes cut ...]\n{}",
                "h".repeat(10),
                "t".repeat(10)
            )
        );
        assert_eq!(ends("abc", 2, 1), "abc");
    }

    #[test]
    fn one_line_and_quote_shorten() {
        assert_eq!(one_line("  first\nsecond", 100), "first…");
        assert_eq!(one_line("abcdef", 3), "abc…");
        assert_eq!(one_line("abc", 3), "abc");
        assert_eq!(quote(b"\xffabc", 100), "\u{fffd}abc");
        assert_eq!(quote(b"abcdef", 2), "ab…");
    }
}
