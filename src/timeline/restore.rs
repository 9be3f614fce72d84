//! Puts paths of a workspace back into recorded states. A plan is a list of
//! (path, target) with target `None` meaning "absent"; applying it is
//! idempotent, so a restore interrupted by a crash is finished by applying
//! the same plan again.
//!
//! Order: first what must go (deepest first, so a directory is empty when
//! it is removed), then what must exist (shallowest first, so parents come
//! before children), then directory permissions (deepest first, so a
//! read-only directory is closed after its children were written). A file
//! or symlink is written under a temporary name in its directory and
//! renamed over the path, so a reader never sees half a file; the temporary
//! names derive from the journal id and are overwritten on a retry.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::entry::{Entry, Kind, RelPath, display, kind_of};
use super::objects::Objects;
use super::scan::parent;

/// Why a path could not be put back; the rest of the plan still ran.
pub type Warnings = Vec<String>;

pub fn apply(
    root: &Path,
    objects: &Objects,
    plan: &[(RelPath, Option<Entry>)],
    tag: i64,
    pause: Option<std::time::Duration>,
) -> Result<Warnings> {
    let mut plan: Vec<&(RelPath, Option<Entry>)> = plan.iter().collect();
    plan.sort_by(|a, b| a.0.cmp(&b.0));
    let abs = |rel: &[u8]| root.join(OsStr::from_bytes(rel));
    let mut warnings = Warnings::new();

    // 1. Remove what must not be there, or is in the way of another kind.
    for (rel, target) in plan.iter().rev().map(|p| (&p.0, &p.1)) {
        let path = abs(rel);
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let current = kind_of(&meta);
        let in_the_way = match target {
            None => true,
            Some(t) => (current == Some(Kind::Dir)) != (t.kind == Kind::Dir),
        };
        if !in_the_way {
            continue;
        }
        let removed = if current == Some(Kind::Dir) {
            fs::remove_dir(&path)
        } else {
            fs::remove_file(&path)
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty && target.is_none() => {
                warnings.push(format!(
                    "kept directory {}: it holds files the snapshot does not cover (ignored)",
                    display(rel)
                ));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("removing {}", path.display()));
            }
        }
    }

    // 2. Create directories, files and symlinks, parents first.
    for (n, (rel, target)) in plan.iter().map(|p| (&p.0, &p.1)).enumerate() {
        let Some(t) = target else { continue };
        let path = abs(rel);
        let dir = abs(parent(rel));
        match t.kind {
            Kind::Dir => {
                if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                    fs::create_dir_all(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                }
            }
            Kind::File => {
                let Some(content) = &t.content else {
                    warnings.push(format!(
                        "cannot restore {}: its content could not be kept when it was recorded",
                        display(rel)
                    ));
                    continue;
                };
                fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                let tmp = dir.join(format!(".cairn-restore-{tag}-{n}"));
                objects.restore_to(content, &tmp)?;
                let linked = matches!(content, super::entry::Content::Link(_));
                if !linked {
                    fs::set_permissions(&tmp, fs::Permissions::from_mode(t.mode))
                        .with_context(|| format!("setting the mode of {}", path.display()))?;
                }
                fs::rename(&tmp, &path).with_context(|| format!("restoring {}", path.display()))?;
            }
            Kind::Symlink => {
                let Some(target) = &t.target else {
                    bail!("the record of symlink {} has no target", display(rel));
                };
                fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                let tmp = dir.join(format!(".cairn-restore-{tag}-{n}"));
                match fs::remove_file(&tmp) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).with_context(|| format!("clearing {}", tmp.display())),
                }
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &tmp)
                    .with_context(|| format!("creating symlink {}", path.display()))?;
                fs::rename(&tmp, &path).with_context(|| format!("restoring {}", path.display()))?;
            }
        }
        if let Some(pause) = pause {
            std::thread::sleep(pause);
        }
    }

    // 3. Directory permissions, children first.
    for (rel, target) in plan.iter().rev().map(|p| (&p.0, &p.1)) {
        if let Some(t) = target.as_ref().filter(|t| t.kind == Kind::Dir) {
            let path = abs(rel);
            let mode = fs::symlink_metadata(&path).map(|m| m.permissions().mode() & 0o7777);
            if mode.is_ok_and(|m| m != t.mode) {
                fs::set_permissions(&path, fs::Permissions::from_mode(t.mode))
                    .with_context(|| format!("setting the mode of {}", path.display()))?;
            }
        }
    }
    Ok(warnings)
}
