//! The sidecar's usage records: one row per model call, written in batches
//! by one writer, summed per agent to seed budgets at start.

use std::collections::HashMap;

use anyhow::Result;
use rusqlite::params;

use super::Store;

/// One model call: who asked, what served it, what it cost and how it went.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct UsageRow {
    pub at: i64,
    pub agent: String,
    pub dispatch: Option<String>,
    pub step: Option<i64>,
    pub provider: Option<String>,
    pub model_requested: String,
    pub model_served: Option<String>,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_usd: f64,
    pub latency_ms: f64,
    pub ttft_ms: Option<f64>,
    /// `ok`, `upstream_error`, `upstream_died`, `client_closed`,
    /// `timeout`, `budget_exceeded`, `billed_failure`.
    pub status: String,
    /// The tokens were estimated (the upstream reported none).
    pub estimated: bool,
    pub stream: bool,
    pub attempts: u32,
    pub detail: Option<String>,
}

/// Tokens and dollars spent by one agent since a time.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Spent {
    pub tokens: u64,
    pub usd: f64,
}

impl Store {
    /// Writes rows in one transaction.
    pub fn record_usage(&mut self, rows: &[UsageRow]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO usage (at, agent, dispatch, step, provider, model_requested, model_served, \
                 tokens_in, tokens_out, cost_usd, latency_ms, ttft_ms, status, estimated, stream, attempts, detail) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            )?;
            for r in rows {
                insert.execute(params![
                    r.at,
                    r.agent,
                    r.dispatch,
                    r.step,
                    r.provider,
                    r.model_requested,
                    r.model_served,
                    r.tokens_in as i64,
                    r.tokens_out as i64,
                    r.cost_usd,
                    r.latency_ms,
                    r.ttft_ms,
                    r.status,
                    r.estimated,
                    r.stream,
                    r.attempts,
                    r.detail,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// What each agent spent since `since_ms`.
    pub fn spent_since(&self, since_ms: i64) -> Result<HashMap<String, Spent>> {
        let mut q = self.conn.prepare_cached(
            "SELECT agent, SUM(tokens_in + tokens_out), SUM(cost_usd) FROM usage WHERE at >= ?1 GROUP BY agent",
        )?;
        let rows = q.query_map([since_ms], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Spent {
                    tokens: r.get::<_, i64>(1)?.max(0) as u64,
                    usd: r.get(2)?,
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The most recent rows, newest first.
    pub fn usage(&self, limit: i64) -> Result<Vec<UsageRow>> {
        let mut q = self.conn.prepare_cached(
            "SELECT at, agent, dispatch, step, provider, model_requested, model_served, tokens_in, tokens_out, \
             cost_usd, latency_ms, ttft_ms, status, estimated, stream, attempts, detail \
             FROM usage ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = q.query_map([limit], |r| {
            Ok(UsageRow {
                at: r.get(0)?,
                agent: r.get(1)?,
                dispatch: r.get(2)?,
                step: r.get(3)?,
                provider: r.get(4)?,
                model_requested: r.get(5)?,
                model_served: r.get(6)?,
                tokens_in: r.get::<_, i64>(7)?.max(0) as u64,
                tokens_out: r.get::<_, i64>(8)?.max(0) as u64,
                cost_usd: r.get(9)?,
                latency_ms: r.get(10)?,
                ttft_ms: r.get(11)?,
                status: r.get(12)?,
                estimated: r.get(13)?,
                stream: r.get(14)?,
                attempts: r.get(15)?,
                detail: r.get(16)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
