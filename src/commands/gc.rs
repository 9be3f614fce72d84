//! `cairn gc [--keep N] [--older-than D]`: forgets old dispatches, and
//! workspaces that no longer exist, then deletes the objects nothing refers
//! to any more, and the image blobs no cached image names; `--images`
//! forgets cached guest images first. Reports the space freed.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use crate::commands::{Global, open_store};
use crate::error::Failure;
use crate::image::Images;
use crate::store::now_ms;
use crate::timeline::objects::Objects;

#[derive(clap::Args)]
pub struct GcCommand {
    /// Keep the newest N dispatches of each workspace
    #[arg(long, value_name = "N")]
    pub keep: Option<u32>,
    /// Forget dispatches started longer ago than this (e.g. 30d, 12h, 90m)
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    pub older_than: Option<Duration>,
    /// Also forget cached guest images (with --older-than, those not used within AGE)
    #[arg(long)]
    pub images: bool,
}

impl GcCommand {
    pub fn execute(self, global: &Global) -> Result<(), Failure> {
        let (data, mut store) = open_store(global)?;
        let before = self
            .older_than
            .map(|age| now_ms() - age.as_millis().min(i64::MAX as u128) as i64);
        let drop_ids = if self.keep.is_some() || before.is_some() {
            store.prunable(self.keep.map(i64::from), before)?
        } else {
            Vec::new()
        };
        let gone: Vec<i64> = store
            .workspaces()?
            .into_iter()
            .filter(|(_, p)| !Path::new(OsStr::from_bytes(p)).exists())
            .map(|(id, _)| id)
            .collect();
        store.write(|tx| {
            tx.delete_dispatches(&drop_ids)?;
            for ws in &gone {
                tx.delete_workspace(*ws)?;
            }
            Ok(())
        })?;
        // A writer may hold objects it has not recorded yet: sweep only
        // while no workspace is in use.
        let locks = hold_all_locks(&data, &store)?;
        let (objects, bytes) = match locks {
            Some(_held) => {
                let live = store.live_objects()?;
                Objects::open(data.timeline().join("objects"))?.sweep(&live)?
            }
            None => {
                eprintln!(
                    "cairn: a workspace is in use: objects were not swept; run gc again later"
                );
                (0, 0)
            }
        };
        // Image blobs no cached image names (left by a forgotten image or a
        // stopped pull) go on every gc; `--images` forgets images first.
        let forget = self.images.then(|| before.unwrap_or(i64::MAX));
        let pruned = Images::open(&data)?.prune(&data, forget)?;
        if !pruned.swept {
            eprintln!("cairn: the image cache is in use: blobs were not swept; run gc again later");
        }
        store.vacuum()?;
        println!(
            "gc: forgot {} dispatch(es) and {} missing workspace(s); deleted {objects} object(s), freed {}; \
             forgot {} image(s), deleted {} image blob(s), freed {}",
            drop_ids.len(),
            gone.len(),
            human_bytes(bytes),
            pruned.forgotten,
            pruned.files,
            human_bytes(pruned.bytes)
        );
        Ok(())
    }
}

/// Every workspace's lock, or None if one is held by another process.
fn hold_all_locks(
    data: &crate::data_dir::DataDir,
    store: &crate::store::Store,
) -> anyhow::Result<Option<Vec<std::fs::File>>> {
    let mut held = Vec::new();
    for (id, _) in store.workspaces()? {
        let f = crate::timeline::lock_file(data, id)?;
        match f.try_lock() {
            Ok(()) => held.push(f),
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
    }
    Ok(Some(held))
}

fn parse_age(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not an age like 30d, 12h, 90m, 45s or 2w");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(bad()),
    };
    n.checked_mul(secs).map(Duration::from_secs).ok_or_else(bad)
}

pub fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}
