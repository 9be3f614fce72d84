//! The daemon's bearer tokens, default closed: one to invoke agents (A2A),
//! one to observe (dispatches, conversations, events), one to administer
//! (manual runs, reload). The admin token is accepted wherever the others
//! are. Generated on first `cairn up`, kept in `<data>/tokens.json` with mode
//! 0600, shown by `cairn token`.

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data_dir::DataDir;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Invoke,
    Observe,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Invoke => "invoke",
            Scope::Observe => "observe",
            Scope::Admin => "admin",
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
pub struct Tokens {
    pub invoke: String,
    pub observe: String,
    pub admin: String,
}

pub fn path(data: &DataDir) -> PathBuf {
    data.root().join("tokens.json")
}

impl Tokens {
    /// The data directory's tokens, created (0600) if there are none yet.
    pub fn load_or_create(data: &DataDir) -> Result<Tokens> {
        let path = path(data);
        match Tokens::load(&path) {
            Ok(t) => return Ok(t),
            Err(e) if path.exists() => return Err(e),
            Err(_) => {}
        }
        let tokens = Tokens {
            invoke: fresh("inv")?,
            observe: fresh("obs")?,
            admin: fresh("adm")?,
        };
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(serde_json::to_string_pretty(&tokens)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(tokens)
    }

    /// Reads the tokens; refuses a file others can read.
    pub fn load(path: &Path) -> Result<Tokens> {
        let meta = std::fs::metadata(path).with_context(|| {
            format!("{}: no tokens yet (`cairn up` makes them)", path.display())
        })?;
        if meta.permissions().mode() & 0o077 != 0 {
            anyhow::bail!(
                "{}: readable by others (mode {:o}); run `chmod 600 {}`",
                path.display(),
                meta.permissions().mode() & 0o777,
                path.display()
            );
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a tokens file", path.display()))
    }

    pub fn get(&self, scope: Scope) -> &str {
        match scope {
            Scope::Invoke => &self.invoke,
            Scope::Observe => &self.observe,
            Scope::Admin => &self.admin,
        }
    }

    /// Whether `presented` grants `scope`: its own token or the admin's,
    /// compared in constant time.
    pub fn grants(&self, scope: Scope, presented: &str) -> bool {
        let p: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let matches = |t: &str| crate::web::same_secret(&Sha256::digest(t.as_bytes()).into(), &p);
        let own = matches(self.get(scope));
        let admin = matches(&self.admin);
        own | admin
    }
}

/// 32 random bytes from the kernel, hex, with a prefix saying what it is.
fn fresh(prefix: &str) -> Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("cairn_{prefix}_{hex}"))
}
