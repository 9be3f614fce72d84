//! What a snapshot covers, and how the workspace's current state is found:
//! a full walk, or a refresh of only the paths known to be dirty. Both
//! compare against the entries of the last boundary and read a file only
//! when its stat fields moved (or it was racily clean), storing its new
//! content in the object store as they go.
//!
//! Coverage: every file, directory and symlink git would not ignore
//! (`.gitignore` files, `.git/info/exclude` and the global excludes file,
//! only inside a git repository) and not matched by a `.cairnignore`
//! (anywhere). Inside `.git`, everything but lock files is covered, so HEAD,
//! refs, the index and config roll back with the files; git's object files
//! are kept as hard links, since git never changes them in place. Fifos,
//! sockets and devices are not covered.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};
use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::entry::{Change, Entry, Kind, RelPath, Stat, kind_of};
use super::objects::Objects;

const CAIRNIGNORE: &str = ".cairnignore";
const GITIGNORE: &str = ".gitignore";

/// What a scan found: the changes since the entries it compared against,
/// and entries whose state is the same but whose stat fields moved.
#[derive(Default)]
pub struct Found {
    pub changes: Vec<Change>,
    pub restat: Vec<(RelPath, Entry)>,
    /// Directories that could not be listed: their contents are not covered.
    pub unreadable: Vec<RelPath>,
}

pub struct Scanner {
    root: PathBuf,
    git: bool,
    /// Matchers of each directory's ignore files, built on first use.
    dirs: HashMap<RelPath, Option<Gitignore>>,
    excludes: Vec<Gitignore>,
}

impl Scanner {
    pub fn new(root: &Path) -> Scanner {
        let mut s = Scanner {
            root: root.to_path_buf(),
            git: false,
            dirs: HashMap::new(),
            excludes: Vec::new(),
        };
        s.reset();
        s
    }

    /// Forgets every ignore matcher: an ignore file changed.
    pub fn reset(&mut self) {
        self.dirs.clear();
        self.excludes.clear();
        self.git = self.root.join(".git").exists();
        if self.git {
            let mut b = GitignoreBuilder::new(&self.root);
            b.add(self.root.join(".git/info/exclude"));
            if let Ok(g) = b.build() {
                self.excludes.push(g);
            }
            let (global, _) = Gitignore::global();
            self.excludes.push(global);
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn abs(&self, rel: &[u8]) -> PathBuf {
        self.root.join(OsStr::from_bytes(rel))
    }

    /// Whether a path's name is an ignore file: a change to one changes
    /// what is covered, so the next scan is a full one.
    pub fn is_ignore_file(rel: &[u8]) -> bool {
        let name = rel.rsplit(|&b| b == b'/').next().unwrap_or(rel);
        name == GITIGNORE.as_bytes()
            || name == CAIRNIGNORE.as_bytes()
            || rel == b".git/info/exclude"
    }

    /// Whether `rel`, whose parent is covered, is itself left out.
    pub fn ignored(&mut self, rel: &[u8], is_dir: bool) -> bool {
        if rel == b".git" || rel.starts_with(b".git/") {
            // Git's own state: covered, except transient lock files.
            return !self.git || (!is_dir && rel.ends_with(b".lock"));
        }
        let abs = self.abs(rel);
        let mut dir: &[u8] = parent(rel);
        loop {
            if let Some(m) = self.matcher(dir) {
                match m.matched(&abs, is_dir) {
                    Match::Ignore(_) => return true,
                    Match::Whitelist(_) => return false,
                    Match::None => {}
                }
            }
            if dir.is_empty() {
                break;
            }
            dir = parent(dir);
        }
        for g in &self.excludes {
            match g.matched(&abs, is_dir) {
                Match::Ignore(_) => return true,
                Match::Whitelist(_) => return false,
                Match::None => {}
            }
        }
        false
    }

    fn matcher(&mut self, dir: &[u8]) -> Option<&Gitignore> {
        if !self.dirs.contains_key(dir) {
            let abs = self.abs(dir);
            let mut b = GitignoreBuilder::new(&abs);
            let mut any = false;
            // Later files take precedence: .cairnignore overrides .gitignore.
            let names: &[&str] = if self.git {
                &[GITIGNORE, CAIRNIGNORE]
            } else {
                &[CAIRNIGNORE]
            };
            for name in names {
                let f = abs.join(name);
                if f.is_file() {
                    any |= b.add(f).is_none();
                }
            }
            let m = if any { b.build().ok() } else { None };
            self.dirs.insert(dir.to_vec(), m);
        }
        self.dirs.get(dir).and_then(Option::as_ref)
    }

    /// Walks the whole workspace and compares with `old`.
    pub fn full(&mut self, old: &BTreeMap<RelPath, Entry>, objects: &Objects) -> Result<Found> {
        let now = SystemTime::now();
        let mut found = Found::default();
        let mut seen: BTreeMap<RelPath, Entry> = BTreeMap::new();
        self.walk(Vec::new(), old, objects, now, &mut seen, &mut found)?;
        // Merge the two sorted maps into changes.
        let mut changes = Vec::new();
        let mut a = old.iter().peekable();
        let mut b = seen.into_iter().peekable();
        loop {
            let order = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((pa, _)), Some((pb, _))) => pa.as_slice().cmp(pb.as_slice()),
            };
            match order {
                std::cmp::Ordering::Less => {
                    let (p, e) = a.next().unwrap();
                    changes.push(Change {
                        path: p.clone(),
                        before: Some(e.clone()),
                        after: None,
                    });
                }
                std::cmp::Ordering::Greater => {
                    let (p, e) = b.next().unwrap();
                    changes.push(Change {
                        path: p,
                        before: None,
                        after: Some(e),
                    });
                }
                std::cmp::Ordering::Equal => {
                    let (_, before) = a.next().unwrap();
                    let (p, after) = b.next().unwrap();
                    compare(
                        p,
                        Some(before),
                        Some(after),
                        &mut changes,
                        &mut found.restat,
                    );
                }
            }
        }
        found.changes = changes;
        Ok(found)
    }

    fn walk(
        &mut self,
        dir: RelPath,
        old: &BTreeMap<RelPath, Entry>,
        objects: &Objects,
        now: SystemTime,
        seen: &mut BTreeMap<RelPath, Entry>,
        found: &mut Found,
    ) -> Result<()> {
        let mut stack = vec![dir];
        while let Some(dir) = stack.pop() {
            let abs = self.abs(&dir);
            let listing = match fs::read_dir(&abs) {
                Ok(l) => l,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    found.unreadable.push(dir);
                    continue;
                }
                Err(e) => return Err(e).with_context(|| format!("listing {}", abs.display())),
            };
            for item in listing {
                let item = item.with_context(|| format!("listing {}", abs.display()))?;
                let rel = join(&dir, item.file_name().as_bytes());
                let meta = match fs::symlink_metadata(item.path()) {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("examining {}", item.path().display()));
                    }
                };
                let Some(kind) = kind_of(&meta) else { continue };
                if self.ignored(&rel, kind == Kind::Dir) {
                    continue;
                }
                let Some(entry) = self.entry(&rel, &meta, old.get(&rel), objects, now)? else {
                    continue;
                };
                if kind == Kind::Dir {
                    stack.push(rel.clone());
                }
                seen.insert(rel, entry);
            }
        }
        Ok(())
    }

    /// Re-examines only `dirty` paths (and the whole subtree of any new
    /// directory among them), comparing with `old`.
    pub fn refresh(
        &mut self,
        dirty: impl IntoIterator<Item = RelPath>,
        old: &BTreeMap<RelPath, Entry>,
        objects: &Objects,
    ) -> Result<Found> {
        let now = SystemTime::now();
        let mut dirty: Vec<RelPath> = dirty.into_iter().filter(|p| !p.is_empty()).collect();
        dirty.sort();
        dirty.dedup();
        let mut found = Found::default();
        // What this refresh decided so far, so a child sees its new parent.
        let mut now_dirs: HashMap<RelPath, bool> = HashMap::new();
        let mut done: std::collections::HashSet<RelPath> = std::collections::HashSet::new();
        for rel in dirty {
            if done.contains(&rel) {
                continue;
            }
            let par = parent(&rel);
            let parent_covered = par.is_empty()
                || now_dirs
                    .get(par)
                    .copied()
                    .unwrap_or_else(|| old.get(par).is_some_and(|e| e.kind == Kind::Dir));
            if !parent_covered {
                // Under an ignored or vanished directory: its own refresh
                // (or the parent's absence) accounts for it.
                continue;
            }
            let abs = self.abs(&rel);
            let meta = match fs::symlink_metadata(&abs) {
                Ok(m) => Some(m),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) if e.raw_os_error() == Some(20 /* ENOTDIR */) => None,
                Err(e) => return Err(e).with_context(|| format!("examining {}", abs.display())),
            };
            let kind = meta.as_ref().and_then(kind_of);
            let now_entry = match (&meta, kind) {
                (Some(m), Some(k)) if !self.ignored(&rel, k == Kind::Dir) => {
                    self.entry(&rel, m, old.get(&rel), objects, now)?
                }
                _ => None,
            };
            let before = old.get(&rel);
            let was_dir = before.is_some_and(|e| e.kind == Kind::Dir);
            let is_dir = now_entry.as_ref().is_some_and(|e| e.kind == Kind::Dir);
            now_dirs.insert(rel.clone(), is_dir);
            if was_dir && !is_dir {
                // Everything that was under it is gone too.
                for (p, e) in descendants(old, &rel) {
                    found.changes.push(Change {
                        path: p.clone(),
                        before: Some(e.clone()),
                        after: None,
                    });
                    done.insert(p.clone());
                }
            }
            if is_dir && !was_dir {
                // A new directory: its content may predate any watch on it.
                let mut seen = BTreeMap::new();
                self.walk(rel.clone(), old, objects, now, &mut seen, &mut found)?;
                for (p, e) in seen {
                    compare(
                        p.clone(),
                        old.get(&p),
                        Some(e),
                        &mut found.changes,
                        &mut found.restat,
                    );
                    done.insert(p);
                }
            }
            compare(
                rel.clone(),
                before,
                now_entry,
                &mut found.changes,
                &mut found.restat,
            );
            done.insert(rel);
        }
        found.changes.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(found)
    }

    /// The entry for a path as it is now, reusing `old` when its stat says
    /// nothing moved. `None` if it vanished meanwhile.
    fn entry(
        &self,
        rel: &[u8],
        meta: &Metadata,
        old: Option<&Entry>,
        objects: &Objects,
        now: SystemTime,
    ) -> Result<Option<Entry>> {
        let Some(kind) = kind_of(meta) else {
            return Ok(None);
        };
        let stat = Stat::of(meta, now);
        let mode = meta.permissions().mode() & 0o7777;
        let unchanged = old.filter(|o| {
            o.kind == kind && o.mode == mode && o.size == meta.len() && o.stat.still_valid(&stat)
        });
        let mut entry = Entry {
            kind,
            mode,
            size: 0,
            content: None,
            target: None,
            stat,
        };
        match kind {
            Kind::Dir => {}
            Kind::Symlink => {
                entry.size = meta.len();
                entry.target = match unchanged {
                    Some(o) => o.target.clone(),
                    None => match fs::read_link(self.abs(rel)) {
                        Ok(t) => Some(t.into_os_string().into_encoded_bytes()),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                        Err(e) => return Err(e).context("reading a symlink"),
                    },
                };
            }
            Kind::File => {
                entry.size = meta.len();
                entry.content = match unchanged {
                    Some(o) => o.content.clone(),
                    None => {
                        let abs = self.abs(rel);
                        let stored = if rel.starts_with(b".git/objects/") {
                            objects.put_link(&abs, meta)?
                        } else {
                            objects.put(&abs, meta)?
                        };
                        match stored {
                            Some(c) => Some(c),
                            // Vanished while we looked, or cannot be kept.
                            None if !abs.exists() => return Ok(None),
                            None => {
                                tracing::warn!(path = %abs.display(), "cannot read or link this file: a rollback cannot restore it");
                                None
                            }
                        }
                    }
                };
            }
        }
        Ok(Some(entry))
    }
}

/// Pushes the change between `before` and `after` of `path`, or, when the
/// state is the same but the stat moved, a restat.
fn compare(
    path: RelPath,
    before: Option<&Entry>,
    after: Option<Entry>,
    changes: &mut Vec<Change>,
    restat: &mut Vec<(RelPath, Entry)>,
) {
    match (before, after) {
        (None, None) => {}
        (Some(b), Some(a)) if b.same_state(&a) => {
            if b.stat != a.stat {
                restat.push((path, a));
            }
        }
        (b, a) => changes.push(Change {
            path,
            before: b.cloned(),
            after: a,
        }),
    }
}

/// The entries strictly under directory `dir`.
pub fn descendants<'a>(
    map: &'a BTreeMap<RelPath, Entry>,
    dir: &[u8],
) -> impl Iterator<Item = (&'a RelPath, &'a Entry)> {
    let mut prefix = dir.to_vec();
    prefix.push(b'/');
    let start = prefix.clone();
    map.range(start..)
        .take_while(move |(p, _)| p.starts_with(&prefix))
}

/// The parent of a relative path (`b""` for a top-level name).
pub fn parent(rel: &[u8]) -> &[u8] {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => &rel[..i],
        None => b"",
    }
}

pub fn join(dir: &[u8], name: &[u8]) -> RelPath {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    if !dir.is_empty() {
        p.extend_from_slice(dir);
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}
