//! The SQLite store, `<data>/cairn.db`: everything that must survive a
//! crash. One file in WAL mode, so readers (`cairn log`) never block the
//! writer, and each change is one transaction. The only module that speaks
//! SQL; the rest of cairn sees typed functions.
//!
//! Durability: `synchronous = NORMAL` in WAL mode. A committed transaction
//! survives a crash of the process (`kill -9`); after a power loss the
//! database is intact but may lack the last transactions.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use rusqlite::Connection;

pub mod deliveries;
pub mod images;
pub mod tasks;
pub mod timeline;
pub mod usage;

/// Schema migrations, applied in order; `PRAGMA user_version` is how many
/// have run. Append, never edit.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE workspaces (
    id INTEGER PRIMARY KEY,
    path BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
-- The workspace as of its last boundary: one row per covered path.
CREATE TABLE entries (
    workspace INTEGER NOT NULL,
    path BLOB NOT NULL,
    kind INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime INTEGER NOT NULL,
    ctime INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    dev INTEGER NOT NULL,
    racy INTEGER NOT NULL,
    content_kind INTEGER NOT NULL,
    content TEXT,
    target BLOB,
    PRIMARY KEY (workspace, path)
) WITHOUT ROWID;
CREATE TABLE dispatches (
    id TEXT PRIMARY KEY,
    workspace INTEGER NOT NULL,
    guest TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT,
    started_at INTEGER NOT NULL,
    ended_at INTEGER
);
CREATE INDEX dispatches_by_workspace ON dispatches (workspace, started_at);
CREATE TABLE steps (
    id INTEGER PRIMARY KEY,
    dispatch TEXT NOT NULL,
    idx INTEGER NOT NULL,
    opened_by TEXT NOT NULL,
    detail TEXT,
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    UNIQUE (dispatch, idx)
);
-- What each step changed: the path's state before and after (JSON, NULL =
-- absent).
CREATE TABLE changes (
    step INTEGER NOT NULL,
    path BLOB NOT NULL,
    before TEXT,
    after TEXT,
    PRIMARY KEY (step, path)
) WITHOUT ROWID;
CREATE INDEX changes_by_path ON changes (path, step);
-- Restores in progress: written before the first file is touched, deleted
-- in the transaction that records the result.
CREATE TABLE journal (
    id INTEGER PRIMARY KEY,
    workspace INTEGER NOT NULL,
    op TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
"#,
    r#"
-- Guest images in the cache: what each reference (a tag, or a digest when
-- pulled by digest) resolved to, and the blobs that make it up.
CREATE TABLE images (
    registry TEXT NOT NULL,
    repository TEXT NOT NULL,
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    manifest TEXT NOT NULL,
    config TEXT,
    layer TEXT NOT NULL,
    layout TEXT NOT NULL,
    os TEXT NOT NULL,
    size INTEGER NOT NULL,
    pulled_at INTEGER NOT NULL,
    used_at INTEGER NOT NULL,
    PRIMARY KEY (registry, repository, name)
) WITHOUT ROWID;
"#,
    // 3: one row per model call through the sidecar.
    r#"
CREATE TABLE usage (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    agent TEXT NOT NULL,
    dispatch TEXT,
    step INTEGER,
    provider TEXT,
    model_requested TEXT NOT NULL,
    model_served TEXT,
    tokens_in INTEGER NOT NULL,
    tokens_out INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    latency_ms REAL NOT NULL,
    ttft_ms REAL,
    status TEXT NOT NULL,
    estimated INTEGER NOT NULL,
    stream INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    detail TEXT
);
CREATE INDEX usage_at ON usage (at);
CREATE INDEX usage_dispatch ON usage (dispatch) WHERE dispatch IS NOT NULL;
"#,
    // 4: the daemon: every dispatch it accepted (its A2A task), written
    // before it is acknowledged, and the conversation log per session.
    r#"
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    context TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    dispatch TEXT NOT NULL,
    message_id TEXT,
    reply TEXT,
    detail TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX tasks_open ON tasks (state, created_at) WHERE state IN ('submitted', 'working');
CREATE INDEX tasks_by_context ON tasks (context, created_at);
CREATE TABLE conversation (
    id INTEGER PRIMARY KEY,
    agent TEXT NOT NULL,
    session TEXT NOT NULL,
    task TEXT,
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX conversation_by_session ON conversation (session, id);
"#,
    r#"
CREATE INDEX tasks_by_kind ON tasks (agent, kind, created_at);
CREATE TABLE deliveries (
    id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    webhook TEXT NOT NULL,
    dispatch TEXT NOT NULL,
    target TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL,
    state TEXT NOT NULL,
    detail TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX deliveries_pending ON deliveries (next_at) WHERE state = 'pending';
"#,
];

pub struct Store {
    conn: Connection,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let conn =
            Connection::open(path).with_context(|| format!("opening store {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // A short-lived `cairn run` would otherwise checkpoint (and fsync)
        // on every exit; the WAL is checkpointed as it grows instead.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )?;
        let mut store = Store { conn };
        store
            .migrate()
            .with_context(|| format!("migrating store {}", path.display()))?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let version = usize::try_from(version).unwrap_or(usize::MAX);
        if version > MIGRATIONS.len() {
            anyhow::bail!(
                "the store was written by a newer cairn (schema {version}, this one knows {})",
                MIGRATIONS.len()
            );
        }
        for sql in &MIGRATIONS[version..] {
            tx.execute_batch(sql)?;
        }
        tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)?;
        tx.commit()?;
        Ok(())
    }
}

/// The UTC calendar date and second of the day of a timestamp in
/// milliseconds: `(year, month, day, seconds)`.
pub fn civil(ms: i64) -> (i64, i64, i64, i64) {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem)
}

/// Milliseconds since the Unix epoch, how every timestamp is stored.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
