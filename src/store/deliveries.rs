//! Webhook deliveries, written when a dispatch's end matches a webhook and
//! before any attempt, so a delivery survives a restart: `pending` until
//! `delivered` or `failed` (its attempts spent, or refused for good).
//! The body and headers are rendered at that moment; secrets and URLs
//! from the environment are read at each attempt and never stored.

use anyhow::Result;
use rusqlite::params;

use super::{Store, now_ms};

#[derive(Clone, Debug, serde::Serialize)]
pub struct Delivery {
    pub id: String,
    pub agent: String,
    pub webhook: String,
    pub dispatch: String,
    /// `url:<url>` or `env:<VAR>`.
    pub target: String,
    /// JSON list of `[name, value]`.
    pub headers: String,
    #[serde(skip)]
    pub body: Vec<u8>,
    pub attempts: u32,
    pub next_at: i64,
    pub state: String,
    pub detail: Option<String>,
    pub created_at: i64,
}

const COLUMNS: &str = "id, agent, webhook, dispatch, target, headers, body, attempts, next_at, state, detail, created_at";

fn row(r: &rusqlite::Row) -> rusqlite::Result<Delivery> {
    Ok(Delivery {
        id: r.get(0)?,
        agent: r.get(1)?,
        webhook: r.get(2)?,
        dispatch: r.get(3)?,
        target: r.get(4)?,
        headers: r.get(5)?,
        body: r.get(6)?,
        attempts: r.get(7)?,
        next_at: r.get(8)?,
        state: r.get(9)?,
        detail: r.get(10)?,
        created_at: r.get(11)?,
    })
}

impl Store {
    pub fn insert_delivery(&self, d: &Delivery) -> Result<()> {
        self.conn.execute(
            &format!(
                "INSERT INTO deliveries ({COLUMNS}, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12)"
            ),
            params![
                d.id, d.agent, d.webhook, d.dispatch, d.target, d.headers, d.body, d.attempts,
                d.next_at, d.state, d.detail, d.created_at
            ],
        )?;
        Ok(())
    }

    /// Pending deliveries due at `now`, oldest first.
    pub fn due_deliveries(&self, now: i64, limit: usize) -> Result<Vec<Delivery>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM deliveries WHERE state = 'pending' AND next_at <= ?1 ORDER BY next_at LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![now, limit as i64], row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// When the next pending delivery is due.
    pub fn next_delivery_at(&self) -> Result<Option<i64>> {
        Ok(self.conn.query_row(
            "SELECT MIN(next_at) FROM deliveries WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )?)
    }

    /// Records an attempt: the new state, the attempts so far, when to try
    /// again (pending) and why.
    pub fn update_delivery(
        &self,
        id: &str,
        state: &str,
        attempts: u32,
        next_at: i64,
        detail: Option<&str>,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE deliveries SET state = ?2, attempts = ?3, next_at = ?4, detail = ?5, updated_at = ?6 WHERE id = ?1",
            params![id, state, attempts, next_at, detail, now_ms()],
        )?;
        Ok(())
    }

    /// The latest deliveries of an agent's webhook, newest first.
    pub fn recent_deliveries(
        &self,
        agent: &str,
        webhook: &str,
        limit: usize,
    ) -> Result<Vec<Delivery>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM deliveries WHERE agent = ?1 AND webhook = ?2 ORDER BY created_at DESC LIMIT ?3"
        ))?;
        let rows = stmt.query_map(params![agent, webhook, limit as i64], row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
