//! The daemon's tables: one task per dispatch it accepted (the A2A task;
//! its id is the dispatch id), written before the caller is answered, and
//! the conversation log, prompts and replies per session.
//!
//! A task's `dispatch` column is the whole dispatch as the guest will read
//! it (JSON), so a task still `submitted` after a crash runs unchanged.

use anyhow::Result;
use rusqlite::{OptionalExtension, params};

use super::{Store, now_ms};

#[derive(Clone, Debug, serde::Serialize)]
pub struct TaskRow {
    pub id: String,
    pub agent: String,
    pub context: String,
    pub kind: String,
    /// `submitted`, `working`, `completed`, `failed`, `canceled`.
    pub state: String,
    pub dispatch: String,
    pub message_id: Option<String>,
    pub reply: Option<String>,
    pub detail: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Line {
    pub id: i64,
    pub agent: String,
    pub session: String,
    pub task: Option<String>,
    pub role: String,
    pub text: String,
    pub at: i64,
}

const TASK_COLUMNS: &str =
    "id, agent, context, kind, state, dispatch, message_id, reply, detail, created_at, updated_at";

fn task_row(r: &rusqlite::Row) -> rusqlite::Result<TaskRow> {
    Ok(TaskRow {
        id: r.get(0)?,
        agent: r.get(1)?,
        context: r.get(2)?,
        kind: r.get(3)?,
        state: r.get(4)?,
        dispatch: r.get(5)?,
        message_id: r.get(6)?,
        reply: r.get(7)?,
        detail: r.get(8)?,
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
    })
}

impl Store {
    /// The latest task of an agent with this kind (`job:nightly`).
    pub fn last_task_of_kind(&self, agent: &str, kind: &str) -> Result<Option<TaskRow>> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {TASK_COLUMNS} FROM tasks WHERE agent = ?1 AND kind = ?2 ORDER BY created_at DESC, id DESC LIMIT 1"
                ),
                params![agent, kind],
                task_row,
            )
            .optional()?)
    }

    /// Records an accepted task and its prompt in one transaction.
    pub fn insert_task(&mut self, t: &TaskRow, prompt: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            &format!(
                "INSERT INTO tasks ({TASK_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
            ),
            params![
                t.id,
                t.agent,
                t.context,
                t.kind,
                t.state,
                t.dispatch,
                t.message_id,
                t.reply,
                t.detail,
                t.created_at,
                t.updated_at
            ],
        )?;
        tx.execute(
            "INSERT INTO conversation (agent, session, task, role, text, at) VALUES (?1, ?2, ?3, 'user', ?4, ?5)",
            params![t.agent, t.context, t.id, prompt, t.created_at],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Moves a task to `state`, only from one of `from` (so a canceled task
    /// is never marked completed). Returns whether it moved.
    pub fn set_task_state(
        &mut self,
        id: &str,
        from: &[&str],
        state: &str,
        detail: Option<&str>,
    ) -> Result<bool> {
        let from = from
            .iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(",");
        let n = self.conn.execute(
            &format!(
                "UPDATE tasks SET state = ?2, detail = COALESCE(?3, detail), updated_at = ?4 \
                 WHERE id = ?1 AND state IN ({from})"
            ),
            params![id, state, detail, now_ms()],
        )?;
        Ok(n == 1)
    }

    /// Ends a task with the guest's reply, logged in the conversation, in
    /// one transaction; nothing changes if it had already ended.
    pub fn finish_task(
        &mut self,
        id: &str,
        state: &str,
        reply: &str,
        detail: Option<&str>,
    ) -> Result<bool> {
        let tx = self.conn.transaction()?;
        let now = now_ms();
        let n = tx.execute(
            "UPDATE tasks SET state = ?2, reply = ?3, detail = ?4, updated_at = ?5 \
             WHERE id = ?1 AND state IN ('submitted', 'working')",
            params![id, state, reply, detail, now],
        )?;
        if n == 1 && !reply.is_empty() {
            tx.execute(
                "INSERT INTO conversation (agent, session, task, role, text, at) \
                 SELECT agent, context, id, 'agent', ?2, ?3 FROM tasks WHERE id = ?1",
                params![id, reply, now],
            )?;
        }
        tx.commit()?;
        Ok(n == 1)
    }

    pub fn task(&self, id: &str) -> Result<Option<TaskRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"),
                [id],
                task_row,
            )
            .optional()?)
    }

    /// Tasks in `state`, oldest first: what a restart picks up.
    pub fn tasks_in(&self, state: &str) -> Result<Vec<TaskRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE state = ?1 ORDER BY created_at, rowid"
        ))?;
        let rows = stmt.query_map([state], task_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The newest tasks, optionally of one agent.
    pub fn recent_tasks(&self, agent: Option<&str>, limit: i64) -> Result<Vec<TaskRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE ?1 IS NULL OR agent = ?1 \
             ORDER BY created_at DESC, rowid DESC LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![agent, limit], task_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The conversation log: one session's lines in order, or the newest
    /// lines of all sessions.
    pub fn conversation(&self, session: Option<&str>, limit: i64) -> Result<Vec<Line>> {
        let sql = "SELECT id, agent, session, task, role, text, at FROM conversation \
                   WHERE ?1 IS NULL OR session = ?1 ORDER BY id DESC LIMIT ?2";
        let mut stmt = self.conn.prepare(sql)?;
        let rows = stmt.query_map(params![session, limit], |r| {
            Ok(Line {
                id: r.get(0)?,
                agent: r.get(1)?,
                session: r.get(2)?,
                task: r.get(3)?,
                role: r.get(4)?,
                text: r.get(5)?,
                at: r.get(6)?,
            })
        })?;
        let mut lines = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        lines.reverse();
        Ok(lines)
    }
}
