//! The timeline's tables: workspaces, their current entries (the stat
//! cache and content map as of the last boundary), dispatches, steps, the
//! changes each step made, and the journal of restores in progress.

use std::collections::{BTreeMap, HashSet};

use anyhow::{Context, Result};
use rusqlite::{OptionalExtension, Transaction, params};

use super::{Store, now_ms};
use crate::timeline::entry::{Change, Content, Entry, Kind, RelPath, Stat};

#[derive(Clone, Debug)]
pub struct DispatchRow {
    pub id: String,
    pub workspace: String,
    pub guest: String,
    pub kind: String,
    pub status: String,
    pub detail: Option<String>,
    pub started_at: i64,
    pub ended_at: Option<i64>,
}

#[derive(Clone, Debug)]
pub struct StepRow {
    pub id: i64,
    pub dispatch: String,
    pub idx: i64,
    pub opened_by: String,
    pub detail: Option<String>,
    pub started_at: i64,
    pub ended_at: Option<i64>,
}

/// A restore in progress, as the journal keeps it.
#[derive(Clone, Debug)]
pub struct JournalRow {
    pub id: i64,
    pub op: String,
}

impl Store {
    pub fn workspace_id(&self, path: &[u8]) -> Result<i64> {
        self.conn.execute(
            "INSERT OR IGNORE INTO workspaces (path, created_at) VALUES (?1, ?2)",
            params![path, now_ms()],
        )?;
        Ok(self
            .conn
            .query_row("SELECT id FROM workspaces WHERE path = ?1", [path], |r| {
                r.get(0)
            })?)
    }

    pub fn workspace_path(&self, id: i64) -> Result<Vec<u8>> {
        Ok(self
            .conn
            .query_row("SELECT path FROM workspaces WHERE id = ?1", [id], |r| {
                r.get(0)
            })?)
    }

    /// Workspaces with a dispatch still marked running or a restore in the
    /// journal: work a dead process left unfinished.
    pub fn unfinished_workspaces(&self) -> Result<Vec<i64>> {
        let mut stmt = self.conn.prepare(
            "SELECT workspace FROM dispatches WHERE status = 'running'
             UNION SELECT workspace FROM journal",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn load_entries(&self, ws: i64) -> Result<BTreeMap<RelPath, Entry>> {
        let mut stmt = self.conn.prepare(
            "SELECT path, kind, mode, size, mtime, ctime, ino, dev, racy, content_kind, content, target
             FROM entries WHERE workspace = ?1",
        )?;
        let rows = stmt.query_map([ws], |r| {
            let kind = match r.get::<_, i64>(1)? {
                0 => Kind::File,
                1 => Kind::Dir,
                _ => Kind::Symlink,
            };
            let content = match (r.get::<_, i64>(9)?, r.get::<_, Option<String>>(10)?) {
                (1, Some(h)) => Some(Content::Copy(h)),
                (2, Some(h)) => Some(Content::Link(h)),
                _ => None,
            };
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                Entry {
                    kind,
                    mode: r.get(2)?,
                    size: r.get::<_, i64>(3)? as u64,
                    content,
                    target: r.get(11)?,
                    stat: Stat {
                        mtime_ns: r.get(4)?,
                        ctime_ns: r.get(5)?,
                        ino: r.get::<_, i64>(6)? as u64,
                        dev: r.get::<_, i64>(7)? as u64,
                        racy: r.get(8)?,
                    },
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Runs `f` in one immediate transaction.
    pub fn write<T>(&mut self, f: impl FnOnce(&mut Tx) -> Result<T>) -> Result<T> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut w = Tx { tx };
        let out = f(&mut w)?;
        w.tx.commit().context("committing to the store")?;
        Ok(out)
    }

    pub fn journal(&self, ws: i64) -> Result<Vec<JournalRow>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, op FROM journal WHERE workspace = ?1 ORDER BY id")?;
        let rows = stmt.query_map([ws], |r| {
            Ok(JournalRow {
                id: r.get(0)?,
                op: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn running_dispatches(&self, ws: i64) -> Result<Vec<DispatchRow>> {
        self.dispatches_where("d.workspace = ?1 AND d.status = 'running'", params![ws])
    }

    /// Dispatches newest first; `workspace` limits to one.
    pub fn dispatches(&self, workspace: Option<i64>, limit: i64) -> Result<Vec<DispatchRow>> {
        match workspace {
            Some(ws) => self.dispatches_where(
                "d.workspace = ?1 ORDER BY d.rowid DESC LIMIT ?2",
                params![ws, limit],
            ),
            None => self.dispatches_where("1 ORDER BY d.rowid DESC LIMIT ?1", params![limit]),
        }
    }

    /// The dispatch whose id is `id` or starts with it (an error names the
    /// candidates when several do).
    pub fn find_dispatch(&self, id: &str) -> Result<Option<DispatchRow>> {
        let pattern = format!("{}%", id.replace(['%', '_'], ""));
        let found =
            self.dispatches_where("d.id LIKE ?1 ORDER BY d.id LIMIT 3", params![pattern])?;
        match found.len() {
            0 | 1 => Ok(found.into_iter().next()),
            _ => anyhow::bail!(
                "dispatch id {id} is ambiguous ({}, …): give more of it",
                found
                    .iter()
                    .map(|d| d.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    fn dispatches_where(
        &self,
        clause: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<DispatchRow>> {
        let sql = format!(
            "SELECT d.id, w.path, d.guest, d.kind, d.status, d.detail, d.started_at, d.ended_at
             FROM dispatches d JOIN workspaces w ON w.id = d.workspace WHERE {clause}"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params, |r| {
            Ok(DispatchRow {
                id: r.get(0)?,
                workspace: String::from_utf8_lossy(&r.get::<_, Vec<u8>>(1)?).into_owned(),
                guest: r.get(2)?,
                kind: r.get(3)?,
                status: r.get(4)?,
                detail: r.get(5)?,
                started_at: r.get(6)?,
                ended_at: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Whether any step of a dispatch recorded a change.
    pub fn dispatch_changed(&self, dispatch: &str) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM changes c JOIN steps s ON c.step = s.id WHERE s.dispatch = ?1)",
            [dispatch],
            |r| r.get(0),
        )?)
    }

    /// Replaces a step's detail.
    pub fn set_step_detail(&self, step: i64, detail: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE steps SET detail = ?2 WHERE id = ?1",
            rusqlite::params![step, detail],
        )?;
        Ok(())
    }

    pub fn dispatch_workspace(&self, dispatch: &str) -> Result<i64> {
        Ok(self.conn.query_row(
            "SELECT workspace FROM dispatches WHERE id = ?1",
            [dispatch],
            |r| r.get(0),
        )?)
    }

    pub fn steps(&self, dispatch: &str) -> Result<Vec<StepRow>> {
        self.steps_where("dispatch = ?1 ORDER BY idx", params![dispatch])
    }

    pub fn step(&self, id: i64) -> Result<Option<StepRow>> {
        Ok(self.steps_where("id = ?1", params![id])?.into_iter().next())
    }

    fn steps_where(&self, clause: &str, params: impl rusqlite::Params) -> Result<Vec<StepRow>> {
        let sql = format!(
            "SELECT id, dispatch, idx, opened_by, detail, started_at, ended_at FROM steps WHERE {clause}"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params, |r| {
            Ok(StepRow {
                id: r.get(0)?,
                dispatch: r.get(1)?,
                idx: r.get(2)?,
                opened_by: r.get(3)?,
                detail: r.get(4)?,
                started_at: r.get(5)?,
                ended_at: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn changes(&self, step: i64) -> Result<Vec<Change>> {
        let mut stmt = self
            .conn
            .prepare("SELECT path, before, after FROM changes WHERE step = ?1 ORDER BY path")?;
        let rows = stmt.query_map([step], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (path, before, after) = row?;
            out.push(Change {
                path,
                before: decode(before.as_deref())?,
                after: decode(after.as_deref())?,
            });
        }
        Ok(out)
    }

    /// The first step after `step`, in the same workspace, that changed
    /// `path`: who to blame for a conflict.
    pub fn later_change(&self, ws: i64, step: i64, path: &[u8]) -> Result<Option<StepRow>> {
        let id: Option<i64> = self
            .conn
            .query_row(
                "SELECT c.step FROM changes c JOIN steps s ON s.id = c.step
                 JOIN dispatches d ON d.id = s.dispatch
                 WHERE c.path = ?1 AND c.step > ?2 AND d.workspace = ?3 ORDER BY c.step LIMIT 1",
                params![path, step, ws],
                |r| r.get(0),
            )
            .optional()?;
        match id {
            Some(id) => self.step(id),
            None => Ok(None),
        }
    }

    /// Object ids still referenced by a change or a current entry.
    pub fn live_objects(&self) -> Result<HashSet<String>> {
        let mut live = HashSet::new();
        let mut stmt = self
            .conn
            .prepare("SELECT content FROM entries WHERE content IS NOT NULL")?;
        for id in stmt.query_map([], |r| r.get::<_, String>(0))? {
            live.insert(id?);
        }
        let mut stmt = self.conn.prepare("SELECT before, after FROM changes")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, Option<String>>(1)?,
            ))
        })?;
        for row in rows {
            let (b, a) = row?;
            for e in [decode(b.as_deref())?, decode(a.as_deref())?]
                .into_iter()
                .flatten()
            {
                if let Some(c) = e.content {
                    live.insert(c.id().to_string());
                }
            }
        }
        Ok(live)
    }

    /// Dispatches gc may drop: ended, and beyond the newest `keep` of their
    /// workspace or started before `before_ms`.
    pub fn prunable(&self, keep: Option<i64>, before_ms: Option<i64>) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare(
            "SELECT id FROM (
                SELECT id, started_at, status,
                       ROW_NUMBER() OVER (PARTITION BY workspace ORDER BY rowid DESC) AS n
                FROM dispatches)
             WHERE status != 'running' AND (n > ?1 OR started_at < ?2)",
        )?;
        let rows = stmt.query_map(
            params![keep.unwrap_or(i64::MAX), before_ms.unwrap_or(i64::MIN)],
            |r| r.get(0),
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// Writes inside one transaction.
pub struct Tx<'a> {
    tx: Transaction<'a>,
}

impl Tx<'_> {
    pub fn insert_dispatch(
        &mut self,
        id: &str,
        ws: i64,
        guest: &str,
        kind: &str,
        status: &str,
    ) -> Result<()> {
        self.tx.execute(
            "INSERT INTO dispatches (id, workspace, guest, kind, status, started_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, ws, guest, kind, status, now_ms()],
        )?;
        Ok(())
    }

    pub fn end_dispatch(&mut self, id: &str, status: &str, detail: Option<&str>) -> Result<()> {
        self.tx.execute(
            "UPDATE dispatches SET status = ?2, detail = ?3, ended_at = ?4 WHERE id = ?1",
            params![id, status, detail, now_ms()],
        )?;
        Ok(())
    }

    /// Opens step `idx` of `dispatch`; returns its id.
    pub fn open_step(
        &mut self,
        dispatch: &str,
        idx: i64,
        opened_by: &str,
        detail: Option<&str>,
    ) -> Result<i64> {
        self.tx.execute(
            "INSERT INTO steps (dispatch, idx, opened_by, detail, started_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![dispatch, idx, opened_by, detail, now_ms()],
        )?;
        Ok(self.tx.last_insert_rowid())
    }

    /// Closes a step with what it changed, and moves the workspace's
    /// entries to the new state; `restat` are entries whose stat fields
    /// moved though their state did not.
    pub fn close_step(
        &mut self,
        ws: i64,
        step: i64,
        changes: &[Change],
        restat: &[(RelPath, Entry)],
    ) -> Result<()> {
        self.tx.execute(
            "UPDATE steps SET ended_at = ?2 WHERE id = ?1",
            params![step, now_ms()],
        )?;
        let mut insert = self.tx.prepare_cached(
            "INSERT OR REPLACE INTO changes (step, path, before, after) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for c in changes {
            insert.execute(params![
                step,
                c.path,
                encode(c.before.as_ref())?,
                encode(c.after.as_ref())?
            ])?;
        }
        drop(insert);
        self.set_entries(ws, changes.iter().map(|c| (&c.path, c.after.as_ref())))?;
        self.set_entries(ws, restat.iter().map(|(p, e)| (p, Some(e))))
    }

    /// Moves the workspace's entries of these paths to these states (None:
    /// the path is no longer covered).
    pub fn set_entries<'p>(
        &mut self,
        ws: i64,
        entries: impl IntoIterator<Item = (&'p RelPath, Option<&'p Entry>)>,
    ) -> Result<()> {
        let mut upsert = self.tx.prepare_cached(
            "INSERT OR REPLACE INTO entries
             (workspace, path, kind, mode, size, mtime, ctime, ino, dev, racy, content_kind, content, target)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?;
        let mut delete = self
            .tx
            .prepare_cached("DELETE FROM entries WHERE workspace = ?1 AND path = ?2")?;
        for (path, entry) in entries {
            let Some(e) = entry else {
                delete.execute(params![ws, path])?;
                continue;
            };
            let kind = match e.kind {
                Kind::File => 0,
                Kind::Dir => 1,
                Kind::Symlink => 2,
            };
            let (ck, content) = match &e.content {
                None => (0, None),
                Some(Content::Copy(h)) => (1, Some(h.as_str())),
                Some(Content::Link(h)) => (2, Some(h.as_str())),
            };
            upsert.execute(params![
                ws,
                path,
                kind,
                e.mode,
                e.size as i64,
                e.stat.mtime_ns,
                e.stat.ctime_ns,
                e.stat.ino as i64,
                e.stat.dev as i64,
                e.stat.racy,
                ck,
                content,
                e.target
            ])?;
        }
        Ok(())
    }

    pub fn insert_journal(&mut self, ws: i64, op: &str) -> Result<i64> {
        self.tx.execute(
            "INSERT INTO journal (workspace, op, created_at) VALUES (?1, ?2, ?3)",
            params![ws, op, now_ms()],
        )?;
        Ok(self.tx.last_insert_rowid())
    }

    pub fn delete_journal(&mut self, id: i64) -> Result<()> {
        self.tx.execute("DELETE FROM journal WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Drops dispatches and their steps and changes.
    pub fn delete_dispatches(&mut self, ids: &[String]) -> Result<()> {
        for id in ids {
            self.tx.execute(
                "DELETE FROM changes WHERE step IN (SELECT id FROM steps WHERE dispatch = ?1)",
                [id],
            )?;
            self.tx
                .execute("DELETE FROM steps WHERE dispatch = ?1", [id])?;
            self.tx
                .execute("DELETE FROM dispatches WHERE id = ?1", [id])?;
        }
        Ok(())
    }

    /// Forgets workspaces that no longer exist on disk, with everything
    /// recorded about them.
    pub fn delete_workspace(&mut self, ws: i64) -> Result<()> {
        let ids: Vec<String> = {
            let mut stmt = self
                .tx
                .prepare("SELECT id FROM dispatches WHERE workspace = ?1")?;
            stmt.query_map([ws], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        self.delete_dispatches(&ids)?;
        self.tx
            .execute("DELETE FROM entries WHERE workspace = ?1", [ws])?;
        self.tx
            .execute("DELETE FROM journal WHERE workspace = ?1", [ws])?;
        self.tx
            .execute("DELETE FROM workspaces WHERE id = ?1", [ws])?;
        Ok(())
    }
}

impl Store {
    pub fn workspaces(&self) -> Result<Vec<(i64, Vec<u8>)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, path FROM workspaces ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Reclaims the file space of deleted rows.
    pub fn vacuum(&self) -> Result<()> {
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE); VACUUM;")?;
        Ok(())
    }
}

fn encode(e: Option<&Entry>) -> Result<Option<String>> {
    e.map(serde_json::to_string)
        .transpose()
        .context("encoding an entry")
}

fn decode(s: Option<&str>) -> Result<Option<Entry>> {
    s.map(serde_json::from_str)
        .transpose()
        .context("the store holds an entry this cairn cannot read")
}
