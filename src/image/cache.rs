//! Cached blobs: `<data>/images/blobs/sha256/<hex>`, content-addressed and
//! shared by every image that holds them. A blob reaches its name only
//! after its digest was checked, by a rename from `tmp/`; a failed download
//! leaves nothing behind. Which reference names which blobs is in the store.
//!
//! Blobs are not fsynced: a blob damaged by a crash fails its digest when
//! it is next used, is deleted, and is pulled again.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::reference::is_sha256_hex;
use crate::timeline::objects::hex;

pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn open(root: PathBuf) -> Result<Cache> {
        for dir in [root.join("blobs/sha256"), root.join("tmp")] {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(Cache { root })
    }

    /// The file of a blob, whether or not it is there. Refuses a digest that
    /// is not `sha256:<64 hex>` (a registry's manifest chooses these names).
    pub fn path(&self, digest: &str) -> Result<PathBuf, String> {
        match digest.strip_prefix("sha256:") {
            Some(hex) if is_sha256_hex(hex) => Ok(self.root.join("blobs/sha256").join(hex)),
            _ => Err(format!("`{digest}` is not a sha256 digest")),
        }
    }

    /// Whether the blob is cached with the expected size.
    pub fn has(&self, digest: &str, size: u64) -> bool {
        self.path(digest)
            .ok()
            .and_then(|p| fs::metadata(p).ok())
            .is_some_and(|m| m.is_file() && m.len() == size)
    }

    /// A new blob, written through [`Incoming`] and kept only by `finish`.
    pub fn incoming(&self, digest: &str, size: u64) -> Result<Incoming, String> {
        let dest = self.path(digest)?;
        let tmp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(self.root.join("tmp"))
            .map_err(|e| format!("creating a file in the image cache: {e}"))?;
        Ok(Incoming {
            tmp,
            dest,
            expected: digest.to_string(),
            size,
            written: 0,
            hasher: Sha256::new(),
        })
    }

    /// Stores a small blob already in memory (a manifest, a config).
    pub fn put(&self, digest: &str, bytes: &[u8]) -> Result<(), String> {
        let mut blob = self.incoming(digest, bytes.len() as u64)?;
        blob.write(bytes)?;
        blob.finish()
    }

    /// A blob's bytes, checked against its digest; a blob that fails is
    /// deleted so that the next pull fetches it again.
    pub fn read(&self, digest: &str) -> Result<Vec<u8>, String> {
        let path = self.path(digest)?;
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| format!("cached blob {digest}: {e}"))?;
        if sha256_digest(&bytes) != digest {
            let _ = fs::remove_file(&path);
            return Err(format!(
                "cached blob {digest} was damaged on disk and has been deleted; pull the image again"
            ));
        }
        Ok(bytes)
    }

    /// The first bytes of a cached blob.
    pub fn head(&self, digest: &str, n: usize) -> Result<Vec<u8>, String> {
        let path = self.path(digest)?;
        let mut buf = Vec::with_capacity(n);
        File::open(&path)
            .and_then(|f| f.take(n as u64).read_to_end(&mut buf))
            .map_err(|e| format!("cached blob {digest}: {e}"))?;
        Ok(buf)
    }

    pub fn remove(&self, digest: &str) {
        if let Ok(p) = self.path(digest) {
            let _ = fs::remove_file(p);
        }
    }

    /// Deletes every blob not in `live`, and whatever a stopped download
    /// left in `tmp/`. Call only while holding the cache's lock exclusively.
    /// Returns the files deleted and their bytes.
    pub fn sweep(&self, live: &HashSet<String>) -> Result<(u64, u64)> {
        let (mut files, mut bytes) = (0, 0);
        for (dir, keep_known) in [("blobs/sha256", true), ("tmp", false)] {
            let dir = self.root.join(dir);
            for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if keep_known && live.contains(&format!("sha256:{name}")) {
                    continue;
                }
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                if fs::remove_file(entry.path()).is_ok() {
                    files += 1;
                    bytes += len;
                }
            }
        }
        Ok((files, bytes))
    }

    /// The cache's lock file: shared while pulling or running, exclusive
    /// while sweeping.
    pub fn lock_file(&self) -> Result<File> {
        let path = self.root.join("lock");
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))
    }
}

/// A blob being written: hashed as it arrives, never longer than declared,
/// and renamed into the cache only when complete and matching its digest.
/// Dropped unfinished, its temporary file is deleted.
pub struct Incoming {
    tmp: tempfile::NamedTempFile,
    dest: PathBuf,
    expected: String,
    size: u64,
    written: u64,
    hasher: Sha256,
}

impl Incoming {
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), String> {
        self.written += chunk.len() as u64;
        if self.written > self.size {
            return Err(format!(
                "blob {} is longer than the {} bytes its descriptor declares",
                self.expected, self.size
            ));
        }
        self.hasher.update(chunk);
        self.tmp
            .write_all(chunk)
            .map_err(|e| format!("writing to the image cache: {e}"))
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn finish(self) -> Result<(), String> {
        if self.written != self.size {
            return Err(format!(
                "blob {} ended after {} of its {} bytes",
                self.expected, self.written, self.size
            ));
        }
        let got = format!("sha256:{}", hex(&self.hasher.finalize()));
        if got != self.expected {
            return Err(format!(
                "blob {} does not match its digest (its bytes hash to {got}); nothing was cached",
                self.expected
            ));
        }
        self.tmp
            .persist(&self.dest)
            .map_err(|e| format!("storing blob {}: {}", self.expected, e.error))?;
        Ok(())
    }
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}
