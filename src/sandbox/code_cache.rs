//! The compiled-code cache on disk: native code for a guest, keyed by the
//! sha256 of its wasm binary and the engine's fingerprint, so a guest is
//! compiled once per machine rather than once per run.
//!
//! An entry is `MAGIC || sha256(payload) || payload`, written to a temporary
//! file and renamed into place, so readers never see half an entry. Loading
//! checks the checksum before wasmtime sees a byte: wasmtime's deserialization
//! trusts its input, so an entry that was truncated, flipped or replaced is
//! deleted and rebuilt, never run. Must not know about guests' meaning.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"CAIRNCC1";
const HEADER: usize = MAGIC.len() + 32;

pub struct CodeCache {
    dir: PathBuf,
}

/// What a lookup found.
pub enum Lookup {
    Hit(Vec<u8>),
    Miss,
    /// There was an entry, but it failed its checksum; it has been removed.
    Corrupt(PathBuf),
}

impl CodeCache {
    /// `root` is the data directory's `code/`; entries go under a directory
    /// named after the engine, so an upgraded cairn never reads old code.
    pub fn new(root: &Path, engine_fingerprint: &str) -> Self {
        Self {
            dir: root.join(engine_fingerprint),
        }
    }

    pub fn path_of(&self, wasm_sha256: &str) -> PathBuf {
        self.dir.join(format!("{wasm_sha256}.cwasm"))
    }

    pub fn get(&self, wasm_sha256: &str) -> Lookup {
        let path = self.path_of(wasm_sha256);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(_) => return Lookup::Miss,
        };
        match verify(&bytes) {
            true => {
                let mut bytes = bytes;
                bytes.drain(..HEADER);
                Lookup::Hit(bytes)
            }
            false => {
                self.remove(wasm_sha256);
                Lookup::Corrupt(path)
            }
        }
    }

    /// Removes an entry that the engine refused even though its checksum held
    /// (written by an incompatible build under the same name).
    pub fn remove(&self, wasm_sha256: &str) {
        let _ = fs::remove_file(self.path_of(wasm_sha256));
    }

    /// Stores compiled code. A failure to write the cache only costs a later
    /// recompilation, so callers log it and go on.
    pub fn put(&self, wasm_sha256: &str, payload: &[u8]) -> Result<()> {
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let mut tmp = tempfile_in(&self.dir)?;
        let checksum = Sha256::digest(payload);
        let write = (|| {
            tmp.1.write_all(MAGIC)?;
            tmp.1.write_all(&checksum)?;
            tmp.1.write_all(payload)?;
            tmp.1.sync_data()
        })();
        let target = self.path_of(wasm_sha256);
        let result = write
            .and_then(|()| fs::rename(&tmp.0, &target))
            .with_context(|| format!("writing {}", target.display()));
        if result.is_err() {
            let _ = fs::remove_file(&tmp.0);
        }
        result
    }
}

/// Deletes a guest's compiled code under every engine's directory in
/// `root` (the data directory's `code/`), when nothing will run it again.
pub fn forget(root: &Path, wasm_sha256: &str) {
    let Ok(engines) = fs::read_dir(root) else {
        return;
    };
    for engine in engines.flatten() {
        let _ = fs::remove_file(engine.path().join(format!("{wasm_sha256}.cwasm")));
    }
}

fn verify(bytes: &[u8]) -> bool {
    bytes.len() > HEADER
        && &bytes[..MAGIC.len()] == MAGIC
        && Sha256::digest(&bytes[HEADER..]).as_slice() == &bytes[MAGIC.len()..HEADER]
}

/// A uniquely named file next to its final place, so the rename is atomic.
fn tempfile_in(dir: &Path) -> Result<(PathBuf, fs::File)> {
    let name = format!(
        ".tmp-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    );
    let path = dir.join(name);
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    Ok((path, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_round_trips_and_a_flipped_byte_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CodeCache::new(dir.path(), "engine-test");
        cache.put("abc", b"compiled code").unwrap();
        assert!(matches!(cache.get("abc"), Lookup::Hit(b) if b == b"compiled code"));

        let path = cache.path_of("abc");
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert!(matches!(cache.get("abc"), Lookup::Corrupt(_)));
        assert!(!path.exists(), "a corrupt entry is deleted");
        assert!(matches!(cache.get("abc"), Lookup::Miss));
    }

    #[test]
    fn a_truncated_entry_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CodeCache::new(dir.path(), "engine-test");
        cache.put("abc", b"compiled code").unwrap();
        let path = cache.path_of("abc");
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(cache.get("abc"), Lookup::Corrupt(_)));
    }
}
