//! The object store: file contents kept by the timeline, content-addressed
//! under `<data>/timeline/objects/`, so a byte sequence is stored once
//! however many paths and steps hold it.
//!
//! - `copy/ab/cdef…`: a copy of a file's bytes, named by their sha256. The
//!   file is read once, hashed and written in the same pass; an object that
//!   already exists is not written again.
//! - `link/ab/cdef…`: a hard link to a workspace file's inode, for files
//!   cairn cannot read and for git's object files, which git never changes
//!   in place: no byte is copied.
//!
//! Objects are written to a temporary name and renamed, so a crash never
//! leaves a half object under its final name. They are not fsynced one by
//! one: a process crash loses nothing (the page cache survives it), and
//! after a power loss a damaged object is caught by the hash check on
//! restore rather than written into a workspace.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::entry::Content;

const CHUNK: usize = 256 << 10;

pub struct Objects {
    root: PathBuf,
}

impl Objects {
    pub fn open(root: PathBuf) -> Result<Objects> {
        for sub in ["copy", "link", "tmp"] {
            fs::create_dir_all(root.join(sub))
                .with_context(|| format!("creating {}", root.join(sub).display()))?;
        }
        Ok(Objects { root })
    }

    pub fn path(&self, content: &Content) -> PathBuf {
        let (dir, id) = match content {
            Content::Copy(h) => ("copy", h),
            Content::Link(h) => ("link", h),
        };
        let split = id.len().min(2);
        self.root.join(dir).join(&id[..split]).join(&id[split..])
    }

    fn temp(&self) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{}-{}", std::process::id(), uuid::Uuid::now_v7()))
    }

    /// Stores the file at `path`: a copy when it can be read, else a hard
    /// link. `None` when neither is possible (a file that vanished, or an
    /// unreadable file on another filesystem than the store).
    pub fn put(&self, path: &Path, meta: &fs::Metadata) -> Result<Option<Content>> {
        match File::open(path) {
            Ok(file) => self.put_copy(file).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => self.put_link(path, meta),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn put_copy(&self, mut file: File) -> Result<Content> {
        // Most files are small: read whole, hash, and write only if the
        // store lacks them (a re-read of an unchanged file writes nothing).
        let mut head = Vec::with_capacity(CHUNK);
        (&mut file)
            .take(CHUNK as u64 + 1)
            .read_to_end(&mut head)
            .context("reading a file into the object store")?;
        if head.len() <= CHUNK {
            let content = Content::Copy(hex(&Sha256::digest(&head)));
            if !self.path(&content).exists() {
                let tmp = self.temp();
                fs::write(&tmp, &head).with_context(|| format!("writing {}", tmp.display()))?;
                self.settle(&tmp, &content)?;
            }
            return Ok(content);
        }
        let tmp = self.temp();
        let mut out = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut hasher = Sha256::new();
        hasher.update(&head);
        let copied = out
            .write_all(&head)
            .and_then(|()| copy_hashing(&mut file, &mut out, hasher));
        drop(out);
        let hasher = match copied {
            Ok(h) => h,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e).context("copying a file into the object store");
            }
        };
        let content = Content::Copy(hex(&hasher.finalize()));
        self.settle(&tmp, &content)?;
        Ok(content)
    }

    /// A hard link keeps the inode alive whatever happens to the workspace
    /// path. Its id binds the inode's identity, size and mtime. Not its
    /// ctime: linking moves the ctime, so an id bound to it would change at
    /// every scan, and every scan would link the file again. (A mode change
    /// is the entry's own field.)
    pub fn put_link(&self, path: &Path, meta: &fs::Metadata) -> Result<Option<Content>> {
        let mut h = Sha256::new();
        for v in [meta.dev(), meta.ino(), meta.size()] {
            h.update(v.to_le_bytes());
        }
        h.update(meta.mtime().to_le_bytes());
        h.update(meta.mtime_nsec().to_le_bytes());
        let content = Content::Link(hex(&h.finalize()));
        let dest = self.path(&content);
        if dest.exists() {
            return Ok(Some(content));
        }
        let tmp = self.temp();
        match fs::hard_link(path, &tmp) {
            Ok(()) => {}
            // Gone, or a file the kernel will not let us link (not ours).
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
                ) =>
            {
                return Ok(None);
            }
            Err(e) if e.raw_os_error() == Some(18 /* EXDEV */) => {
                return match File::open(path) {
                    Ok(f) => self.put_copy(f).map(Some),
                    Err(_) => Ok(None),
                };
            }
            Err(e) => {
                return Err(e).with_context(|| format!("linking {}", path.display()));
            }
        }
        self.settle(&tmp, &content)?;
        Ok(Some(content))
    }

    fn settle(&self, tmp: &Path, content: &Content) -> Result<()> {
        let dest = self.path(content);
        if dest.exists() {
            let _ = fs::remove_file(tmp);
            return Ok(());
        }
        let parent = dest.parent().expect("objects live in a fan-out dir");
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        fs::rename(tmp, &dest).with_context(|| format!("storing {}", dest.display()))
    }

    /// Writes the object's bytes to `dest` (created or truncated), checking
    /// a copy's hash on the way. A link object is hard-linked instead.
    pub fn restore_to(&self, content: &Content, dest: &Path) -> Result<()> {
        let src = self.path(content);
        match content {
            Content::Link(_) => {
                match fs::remove_file(dest) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e).with_context(|| format!("clearing {}", dest.display()));
                    }
                }
                fs::hard_link(&src, dest)
                    .or_else(|e| {
                        if e.raw_os_error() == Some(18) {
                            fs::copy(&src, dest).map(drop)
                        } else {
                            Err(e)
                        }
                    })
                    .with_context(|| format!("restoring {} from {}", dest.display(), src.display()))
            }
            Content::Copy(hash) => {
                let mut input = File::open(&src)
                    .with_context(|| format!("object {hash} is missing from the store"))?;
                let mut out =
                    File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
                let hasher = copy_hashing(&mut input, &mut out, Sha256::new())
                    .with_context(|| format!("restoring {}", dest.display()))?;
                if hex(&hasher.finalize()) != *hash {
                    drop(out);
                    let _ = fs::remove_file(dest);
                    bail!(
                        "object {hash} in the store is damaged (its bytes do not match its hash)"
                    );
                }
                Ok(())
            }
        }
    }

    /// The bytes of a copy object, for diffs. `None` for link objects that
    /// cannot be read.
    pub fn read(&self, content: &Content, limit: u64) -> Result<Option<Vec<u8>>> {
        let path = self.path(content);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let mut bytes = Vec::new();
        file.take(limit).read_to_end(&mut bytes)?;
        Ok(Some(bytes))
    }

    /// Deletes every object not in `keep`; returns (objects, bytes) freed.
    pub fn sweep(&self, keep: &std::collections::HashSet<String>) -> Result<(u64, u64)> {
        let (mut count, mut bytes) = (0, 0);
        for kind in ["copy", "link"] {
            let dir = self.root.join(kind);
            for fan in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
                let fan = fan?;
                let prefix = fan.file_name().to_string_lossy().into_owned();
                for obj in fs::read_dir(fan.path())? {
                    let obj = obj?;
                    let id = format!("{prefix}{}", obj.file_name().to_string_lossy());
                    if keep.contains(&id) {
                        continue;
                    }
                    let meta = obj.metadata()?;
                    // A link object frees space only if it held the last link.
                    let freed = if kind == "copy" || meta.nlink() == 1 {
                        meta.len()
                    } else {
                        0
                    };
                    fs::remove_file(obj.path())?;
                    count += 1;
                    bytes += freed;
                }
            }
        }
        // Temporary files of writers that died.
        for tmp in fs::read_dir(self.root.join("tmp"))? {
            let tmp = tmp?;
            if !is_live_temp(&tmp.file_name().to_string_lossy()) {
                bytes += tmp.metadata().map(|m| m.len()).unwrap_or(0);
                let _ = fs::remove_file(tmp.path());
            }
        }
        Ok((count, bytes))
    }
}

/// Copies `input` to `out` in chunks, feeding `hasher` on the way.
fn copy_hashing(
    input: &mut impl Read,
    out: &mut impl Write,
    mut hasher: Sha256,
) -> io::Result<Sha256> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher);
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
}

/// A temporary object belongs to a live writer when its pid prefix is a
/// running process.
fn is_live_temp(name: &str) -> bool {
    name.split('-')
        .next()
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_linked_file_keeps_its_id_though_linking_moved_its_ctime() {
        let dir = tempfile::tempdir().unwrap();
        let objects = Objects::open(dir.path().join("objects")).unwrap();
        let file = dir.path().join("object");
        fs::write(&file, "immutable").unwrap();
        // Past a clock tick, so that linking moves the ctime.
        std::thread::sleep(std::time::Duration::from_millis(30));
        let before = fs::metadata(&file).unwrap();
        let first = objects.put_link(&file, &before).unwrap().unwrap();
        let after = fs::metadata(&file).unwrap();
        assert_eq!(after.nlink(), 2);
        assert_ne!(
            (before.ctime(), before.ctime_nsec()),
            (after.ctime(), after.ctime_nsec())
        );
        let second = objects.put_link(&file, &after).unwrap().unwrap();
        assert_eq!(first, second);
        // Linked once: a second scan adds no link.
        assert_eq!(fs::metadata(&file).unwrap().nlink(), 2);
    }
}
