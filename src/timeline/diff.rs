//! Unified diffs of what a step changed, from the contents kept in the
//! object store. Binary files (a NUL byte, or not UTF-8) and files larger
//! than [`MAX_TEXT`] are named, not dumped.

use std::io::Write;

use anyhow::Result;
use similar::TextDiff;

use super::entry::{Change, Content, Entry, Kind, display};
use super::objects::Objects;

/// Files larger than this are summarized rather than diffed.
const MAX_TEXT: u64 = 8 << 20;

pub fn write(out: &mut impl Write, objects: &Objects, change: &Change) -> Result<()> {
    let name = display(&change.path);
    let (a, b) = (format!("a/{name}"), format!("b/{name}"));
    writeln!(out, "diff --cairn {a} {b}")?;
    let (before, after) = (change.before.as_ref(), change.after.as_ref());
    match (before, after) {
        (None, Some(e)) => writeln!(out, "new {} mode {:o}", kind_name(e), e.mode)?,
        (Some(e), None) => writeln!(out, "deleted {} mode {:o}", kind_name(e), e.mode)?,
        (Some(x), Some(y)) => {
            if x.kind != y.kind {
                writeln!(
                    out,
                    "type changed from {} to {}",
                    kind_name(x),
                    kind_name(y)
                )?;
            }
            if x.mode != y.mode {
                writeln!(out, "old mode {:o}\nnew mode {:o}", x.mode, y.mode)?;
            }
        }
        (None, None) => {}
    }
    let old = text_of(objects, before)?;
    let new = text_of(objects, after)?;
    match (old, new) {
        (Text::Bytes(o), Text::Bytes(n)) if o == n => {}
        (Text::Bytes(o), Text::Bytes(n)) => {
            match (std::str::from_utf8(&o), std::str::from_utf8(&n)) {
                (Ok(o), Ok(n)) if !o.contains('\0') && !n.contains('\0') => {
                    let a = if before.is_some() {
                        a
                    } else {
                        "/dev/null".into()
                    };
                    let b = if after.is_some() {
                        b
                    } else {
                        "/dev/null".into()
                    };
                    let diff = TextDiff::from_lines(o, n);
                    write!(
                        out,
                        "{}",
                        diff.unified_diff().context_radius(3).header(&a, &b)
                    )?;
                }
                _ => writeln!(out, "Binary files {a} and {b} differ")?,
            }
        }
        (Text::Unavailable(why), _) | (_, Text::Unavailable(why)) => {
            writeln!(out, "contents not shown: {why}")?
        }
    }
    Ok(())
}

enum Text {
    /// The bytes to diff (empty for an absent path or a directory).
    Bytes(Vec<u8>),
    Unavailable(String),
}

fn text_of(objects: &Objects, entry: Option<&Entry>) -> Result<Text> {
    let Some(e) = entry else {
        return Ok(Text::Bytes(Vec::new()));
    };
    match e.kind {
        Kind::Dir => Ok(Text::Bytes(Vec::new())),
        // A symlink diffs as its target, like git shows it.
        Kind::Symlink => Ok(Text::Bytes(e.target.clone().unwrap_or_default())),
        Kind::File => {
            if e.size > MAX_TEXT {
                return Ok(Text::Unavailable(format!(
                    "{} bytes, larger than the diff limit",
                    e.size
                )));
            }
            match &e.content {
                None => Ok(Text::Unavailable("the content could not be kept".into())),
                Some(c @ (Content::Copy(_) | Content::Link(_))) => {
                    match objects.read(c, MAX_TEXT)? {
                        Some(bytes) => Ok(Text::Bytes(bytes)),
                        None => Ok(Text::Unavailable("the file cannot be read".into())),
                    }
                }
            }
        }
    }
}

fn kind_name(e: &Entry) -> &'static str {
    match e.kind {
        Kind::File => "file",
        Kind::Dir => "directory",
        Kind::Symlink => "symlink",
    }
}
