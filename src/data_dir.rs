//! Where cairn keeps its state: `--data-dir`, else `$CAIRN_DATA_DIR`, else
//! `$XDG_DATA_HOME/cairn`, else `~/.local/share/cairn`. Never inside a
//! workspace: a guest must not be able to reach cairn's own state.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// `explicit` is `--data-dir` or `$CAIRN_DATA_DIR` (clap reads both).
    pub fn resolve(explicit: Option<&Path>) -> Result<Self> {
        let root = match explicit {
            Some(dir) => dir.to_path_buf(),
            None => default_root()?,
        };
        std::fs::create_dir_all(&root)
            .with_context(|| format!("creating data directory {}", root.display()))?;
        let root = root
            .canonicalize()
            .with_context(|| format!("resolving data directory {}", root.display()))?;
        Ok(Self { root })
    }

    /// Compiled guest code (the sandbox's cache).
    pub fn code(&self) -> PathBuf {
        self.root.join("code")
    }

    /// The SQLite store (`cairn.db`, WAL).
    pub fn store(&self) -> PathBuf {
        self.root.join("cairn.db")
    }

    /// Cached guest images: blobs, and the cache's lock.
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    /// The timeline's objects, workspace locks and watcher cookies.
    pub fn timeline(&self) -> PathBuf {
        self.root.join("timeline")
    }

    /// The daemon's own files: tokens, where it listens, worktrees, the
    /// agents' standing instructions as mounted.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Refuses a workspace that contains the data directory.
    pub fn check_outside(&self, workspace: &Path) -> Result<()> {
        if self.root.starts_with(workspace) {
            bail!(
                "data directory {} is inside workspace {}: a guest could change cairn's state; \
                 choose another with --data-dir",
                self.root.display(),
                workspace.display()
            );
        }
        Ok(())
    }
}

fn default_root() -> Result<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("cairn"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/cairn")),
        None => bail!("no data directory: set --data-dir, CAIRN_DATA_DIR or HOME"),
    }
}
