//! Dirty-path tracking, so a step boundary looks only at what changed.
//!
//! A recursive inotify watch (the `notify` crate) on the workspace collects
//! the paths of every event. To know that every event caused before a
//! boundary has arrived, the boundary writes a cookie file in a directory
//! of the data dir watched by the same inotify instance: the kernel queues
//! events in order, so once the cookie's event is read, everything before it
//! has been too (git's fsmonitor and watchman use the same trick).
//!
//! When the watcher cannot be set up (watch limit, unsupported filesystem),
//! when the kernel's queue overflows, or when the cookie does not arrive in
//! time, [`Watch::take`] answers "rescan" and the caller walks the tree.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use notify::{Config, Event, RecommendedWatcher, RecursiveMode, Watcher};

use super::entry::RelPath;

/// How long a boundary waits for its cookie before falling back to a walk.
const COOKIE_WAIT: Duration = Duration::from_secs(2);

pub struct Watch {
    _watcher: RecommendedWatcher,
    events: Receiver<notify::Result<Event>>,
    root: PathBuf,
    cookies: PathBuf,
    next_cookie: u64,
    dirty: BTreeSet<RelPath>,
    rescan: bool,
}

/// What changed since the last [`Watch::take`].
pub enum Dirty {
    Paths(BTreeSet<RelPath>),
    Rescan,
}

impl Watch {
    /// Starts watching `root`; cookies go in `cookies` (outside the root).
    pub fn start(root: &Path, cookies: &Path) -> Result<Watch> {
        std::fs::create_dir_all(cookies)
            .with_context(|| format!("creating {}", cookies.display()))?;
        let (tx, events) = channel();
        let mut watcher = RecommendedWatcher::new(
            move |ev| {
                let _ = tx.send(ev);
            },
            Config::default().with_follow_symlinks(false),
        )
        .context("starting a file watcher")?;
        watcher
            .watch(cookies, RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", cookies.display()))?;
        watcher
            .watch(root, RecursiveMode::Recursive)
            .with_context(|| format!("watching {}", root.display()))?;
        Ok(Watch {
            _watcher: watcher,
            events,
            root: root.to_path_buf(),
            cookies: cookies.to_path_buf(),
            next_cookie: 0,
            dirty: BTreeSet::new(),
            rescan: false,
        })
    }

    /// Every path touched since the last call, once all events caused
    /// before this call have arrived.
    pub fn take(&mut self) -> Dirty {
        let cookie = self.cookies.join(format!("c{}", self.next_cookie));
        self.next_cookie += 1;
        if std::fs::write(&cookie, b"").is_err() {
            self.rescan = true;
        } else {
            let deadline = Instant::now() + COOKIE_WAIT;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.events.recv_timeout(left) {
                    Ok(Ok(ev)) => {
                        if self.absorb(ev, &cookie) {
                            break;
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "file watcher error: rescanning");
                        self.rescan = true;
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        tracing::debug!("file watcher cookie late: rescanning");
                        self.rescan = true;
                        break;
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        self.rescan = true;
                        break;
                    }
                }
            }
            let _ = std::fs::remove_file(&cookie);
        }
        let dirty = std::mem::take(&mut self.dirty);
        if std::mem::take(&mut self.rescan) {
            Dirty::Rescan
        } else {
            Dirty::Paths(dirty)
        }
    }

    /// Records an event; true when it is `cookie`'s.
    fn absorb(&mut self, ev: Event, cookie: &Path) -> bool {
        if ev.need_rescan() {
            self.rescan = true;
        }
        let mut is_cookie = false;
        for path in ev.paths {
            if path == cookie {
                is_cookie = true;
            } else if let Ok(rel) = path.strip_prefix(&self.root) {
                let rel = rel.as_os_str().as_encoded_bytes();
                if rel.is_empty() {
                    // The root itself: moved, deleted or its mode changed.
                    self.rescan = true;
                } else {
                    self.dirty.insert(rel.to_vec());
                }
            }
        }
        is_cookie
    }
}
