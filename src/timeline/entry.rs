//! What the timeline records about one path: its kind, permission bits,
//! content (an object in the store) or link target, and the stat fields that
//! let a later scan trust it without reading the file. Paths are relative
//! to the workspace root and kept as raw bytes: a name need not be UTF-8.

use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A workspace-relative path, raw bytes, `/`-separated, never empty.
pub type RelPath = Vec<u8>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// Where a file's bytes are kept in the object store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Content {
    /// A copy, named by the sha256 of its bytes (hex).
    Copy(String),
    /// A hard link to the file's own inode, for files cairn cannot read and
    /// for git's immutable object files: no byte is copied. Named by the
    /// sha256 of (device, inode, size, mtime) in hex.
    Link(String),
}

impl Content {
    pub fn id(&self) -> &str {
        match self {
            Content::Copy(h) | Content::Link(h) => h,
        }
    }
}

/// The recorded state of one path.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    pub size: u64,
    /// Files only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    /// Symlinks only: the link's target, raw bytes, never followed.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "bytes_opt")]
    pub target: Option<Vec<u8>>,
    /// Stat cache: the entry is trusted while these match (see [`Stat`]).
    pub stat: Stat,
}

impl Entry {
    /// Same state as far as a user can see: kind, mode, bytes, target.
    /// Stat fields do not count (a rewritten identical file is unchanged).
    pub fn same_state(&self, other: &Entry) -> bool {
        self.kind == other.kind
            && self.mode == other.mode
            && match self.kind {
                Kind::Dir => true,
                Kind::Symlink => self.target == other.target,
                Kind::File => self.size == other.size && same_content(self, other),
            }
    }
}

fn same_content(a: &Entry, b: &Entry) -> bool {
    match (&a.content, &b.content) {
        (Some(x), Some(y)) => x == y,
        // Neither could be preserved: the same inode, untouched, is the same.
        (None, None) => a.stat.ino == b.stat.ino && a.stat.ctime_ns == b.stat.ctime_ns,
        _ => false,
    }
}

/// The stat fields git's index also trusts: a file whose size, mtime, ctime
/// and inode are unchanged is not read again, unless it was "racily clean"
/// when recorded (modified so close to the scan that a later change in the
/// same timestamp tick would not move its mtime).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub dev: u64,
    pub racy: bool,
}

/// Kernel file timestamps come from a coarse clock (one tick: 10 ms at
/// HZ=100, less above); anything modified this close to a scan is re-read
/// at the next one.
const RACY_WINDOW: Duration = Duration::from_millis(20);

impl Stat {
    pub fn of(meta: &Metadata, scanned_at: SystemTime) -> Stat {
        let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
        let ctime_ns = meta.ctime() * 1_000_000_000 + meta.ctime_nsec();
        let scan_ns = scanned_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let window = RACY_WINDOW.as_nanos() as i64;
        Stat {
            mtime_ns,
            ctime_ns,
            ino: meta.ino(),
            dev: meta.dev(),
            racy: mtime_ns.max(ctime_ns) + window >= scan_ns,
        }
    }

    /// Whether the recorded entry can be trusted for a path whose stat is now
    /// `now`, without reading it.
    pub fn still_valid(&self, now: &Stat) -> bool {
        !self.racy
            && self.mtime_ns == now.mtime_ns
            && self.ctime_ns == now.ctime_ns
            && self.ino == now.ino
            && self.dev == now.dev
    }
}

/// The kind of a path from its (not followed) metadata; sockets, fifos and
/// devices are not covered by snapshots.
pub fn kind_of(meta: &Metadata) -> Option<Kind> {
    let ft = meta.file_type();
    if ft.is_symlink() {
        Some(Kind::Symlink)
    } else if ft.is_dir() {
        Some(Kind::Dir)
    } else if ft.is_file() {
        Some(Kind::File)
    } else {
        debug_assert!(
            ft.is_fifo() || ft.is_socket() || ft.is_block_device() || ft.is_char_device()
        );
        None
    }
}

/// How one path changed in a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
    Mode,
}

impl ChangeKind {
    pub fn of(before: Option<&Entry>, after: Option<&Entry>) -> Option<ChangeKind> {
        match (before, after) {
            (None, None) => None,
            (None, Some(_)) => Some(ChangeKind::Added),
            (Some(_), None) => Some(ChangeKind::Deleted),
            (Some(b), Some(a)) if b.same_state(a) => None,
            (Some(b), Some(a)) => {
                let only_mode = b.mode != a.mode && {
                    let mut a2 = a.clone();
                    a2.mode = b.mode;
                    b.same_state(&a2)
                };
                Some(if only_mode {
                    ChangeKind::Mode
                } else {
                    ChangeKind::Modified
                })
            }
        }
    }

    /// The letter `cairn log` prints: A, M, D, or P (permissions).
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Modified => 'M',
            ChangeKind::Deleted => 'D',
            ChangeKind::Mode => 'P',
        }
    }
}

/// One path's change: its state before and after (None = absent).
#[derive(Clone, Debug)]
pub struct Change {
    pub path: RelPath,
    pub before: Option<Entry>,
    pub after: Option<Entry>,
}

impl Change {
    pub fn kind(&self) -> ChangeKind {
        ChangeKind::of(self.before.as_ref(), self.after.as_ref()).unwrap_or(ChangeKind::Modified)
    }
}

/// A path for messages: lossy UTF-8, with control characters escaped so a
/// name holding a newline still prints on one line.
pub fn display(path: &[u8]) -> String {
    String::from_utf8_lossy(path).escape_debug().to_string()
}

mod bytes_opt {
    //! Link targets as JSON: a string when UTF-8, else an array of bytes.
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Bytes(Vec<u8>),
    }

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref()
            .map(|b| match std::str::from_utf8(b) {
                Ok(t) => Repr::Text(t.to_string()),
                Err(_) => Repr::Bytes(b.clone()),
            })
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<Repr>::deserialize(d)?.map(|r| match r {
            Repr::Text(t) => t.into_bytes(),
            Repr::Bytes(b) => b,
        }))
    }
}
