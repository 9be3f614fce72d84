//! Dirty-path tracking, so a step boundary looks only at what changed.
//!
//! One inotify instance watches every directory of the workspace for
//! changes (create, delete, move, write, attribute change; never opens or
//! reads, so walking or reading the tree adds no events) and a cookie
//! directory in the data dir. A boundary writes a cookie file and reads
//! events until the cookie's: the kernel queues events in order as the
//! syscalls happen, so by then every change made before the boundary has
//! been read (git's fsmonitor and watchman use the same barrier). Events are
//! only read at boundaries; no thread runs in between.
//!
//! A directory created since the last boundary gets its watch when its
//! event is read; what was written inside it before that is found because
//! the scan walks every new directory whole. When the kernel's queue
//! overflowed, a watch could not be added (the per-user limit), the cookie
//! never came, or the workspace root itself moved, [`Watch::take`] answers
//! "rescan" and the caller walks the tree.
//!
//! This uses the `inotify` crate directly rather than `notify`: `notify`
//! always subscribes to open events, and a full walk (one open per
//! directory) or a guest reading many files overflowed the queue, forcing
//! the next boundary into a walk in turn.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use super::entry::RelPath;
use super::scan::join;

/// How long a boundary waits for its cookie before falling back to a walk.
const COOKIE_WAIT: Duration = Duration::from_secs(2);

pub struct Watch {
    inotify: Inotify,
    /// Each watched directory, relative to the root (`b""` is the root).
    dirs: HashMap<WatchDescriptor, RelPath>,
    cookie_wd: WatchDescriptor,
    root: PathBuf,
    cookies: PathBuf,
    next_cookie: u64,
    dirty: BTreeSet<RelPath>,
    rescan: bool,
    /// A watch could not be added: events may be missing from now on.
    broken: bool,
    buf: Vec<u8>,
}

/// What changed since the last [`Watch::take`].
pub enum Dirty {
    Paths(BTreeSet<RelPath>),
    Rescan,
}

fn dir_mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MODIFY
        | WatchMask::CLOSE_WRITE
        | WatchMask::ATTRIB
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
        | WatchMask::DONT_FOLLOW
        | WatchMask::EXCL_UNLINK
}

impl Watch {
    /// Starts watching every directory under `root`; cookies go in
    /// `cookies` (outside the root).
    pub fn start(root: &Path, cookies: &Path) -> Result<Watch> {
        std::fs::create_dir_all(cookies)
            .with_context(|| format!("creating {}", cookies.display()))?;
        let inotify = Inotify::init().context("starting inotify")?;
        let cookie_wd = inotify
            .watches()
            .add(cookies, WatchMask::CREATE | WatchMask::ONLYDIR)
            .with_context(|| format!("watching {}", cookies.display()))?;
        let mut w = Watch {
            inotify,
            dirs: HashMap::new(),
            cookie_wd,
            root: root.to_path_buf(),
            cookies: cookies.to_path_buf(),
            next_cookie: 0,
            dirty: BTreeSet::new(),
            rescan: false,
            broken: false,
            buf: vec![0; 64 << 10],
        };
        w.add_tree(Vec::new())
            .with_context(|| format!("watching {}", root.display()))?;
        Ok(w)
    }

    /// Watches `dir` and every directory under it (symlinks not followed).
    fn add_tree(&mut self, dir: RelPath) -> io::Result<()> {
        let mut stack = vec![dir];
        while let Some(dir) = stack.pop() {
            let abs = self.root.join(OsStr::from_bytes(&dir));
            match self.inotify.watches().add(&abs, dir_mask()) {
                Ok(wd) => {
                    self.dirs.insert(wd, dir.clone());
                }
                // Gone or replaced by a file meanwhile: its parent's events say so.
                Err(e) if matches!(e.raw_os_error(), Some(2 | 20)) => continue,
                Err(e) => return Err(e),
            }
            let Ok(listing) = std::fs::read_dir(&abs) else {
                continue;
            };
            for item in listing.flatten() {
                if item.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(join(&dir, item.file_name().as_bytes()));
                }
            }
        }
        Ok(())
    }

    /// Every path touched since the last call, once all events caused
    /// before this call have been read.
    pub fn take(&mut self) -> Dirty {
        let name = format!("c{}", self.next_cookie);
        self.next_cookie += 1;
        let cookie = self.cookies.join(&name);
        if std::fs::write(&cookie, b"").is_err() {
            self.rescan = true;
        } else {
            let deadline = Instant::now() + COOKIE_WAIT;
            while !self.read_until_cookie(name.as_bytes()) {
                if Instant::now() >= deadline {
                    tracing::debug!("file watcher cookie late: rescanning");
                    self.rescan = true;
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            let _ = std::fs::remove_file(&cookie);
        }
        let dirty = std::mem::take(&mut self.dirty);
        if std::mem::take(&mut self.rescan) || self.broken {
            Dirty::Rescan
        } else {
            Dirty::Paths(dirty)
        }
    }

    /// Reads what is queued; true once `cookie`'s event was among it.
    fn read_until_cookie(&mut self, cookie: &[u8]) -> bool {
        let mut new_dirs = Vec::new();
        let mut seen = false;
        loop {
            let events = match self.inotify.read_events(&mut self.buf) {
                Ok(events) => events,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "reading file watcher events: rescanning");
                    self.rescan = true;
                    return true;
                }
            };
            for ev in events {
                if ev.mask.contains(EventMask::Q_OVERFLOW) {
                    self.rescan = true;
                    continue;
                }
                if ev.wd == self.cookie_wd {
                    seen |= ev.name.is_some_and(|n| n.as_bytes() == cookie);
                    continue;
                }
                let Some(dir) = self.dirs.get(&ev.wd).cloned() else {
                    continue;
                };
                if ev.mask.contains(EventMask::IGNORED) {
                    self.dirs.remove(&ev.wd);
                    continue;
                }
                match ev.name {
                    Some(name) => {
                        let rel = join(&dir, name.as_bytes());
                        if ev.mask.contains(EventMask::ISDIR)
                            && ev.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO)
                        {
                            new_dirs.push(rel.clone());
                        }
                        self.dirty.insert(rel);
                    }
                    // The directory itself: its mode, or it went away.
                    None if dir.is_empty() => {
                        if ev
                            .mask
                            .intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF)
                        {
                            self.rescan = true;
                        }
                    }
                    None => {
                        self.dirty.insert(dir);
                    }
                }
            }
            if seen {
                break;
            }
        }
        for dir in new_dirs {
            if let Err(e) = self.add_tree(dir) {
                tracing::info!(error = %e, "cannot watch a new directory: every boundary walks the workspace from now on");
                self.broken = true;
            }
        }
        seen
    }
}
