//! The image cache's records: one row per cached reference.

use std::collections::HashSet;

use anyhow::Result;
use rusqlite::{OptionalExtension, params};

use super::{Store, now_ms};

#[derive(Clone, Debug, serde::Serialize)]
pub struct ImageRow {
    pub registry: String,
    pub repository: String,
    /// The tag, or the digest for an image pulled by digest alone.
    pub name: String,
    /// What the reference resolved to (a manifest, or an image index).
    pub digest: String,
    /// The image manifest the guest was read from.
    pub manifest: String,
    pub config: Option<String>,
    /// The wasm blob.
    pub layer: String,
    pub layout: String,
    pub os: String,
    pub size: i64,
    pub pulled_at: i64,
    pub used_at: i64,
}

impl ImageRow {
    /// `registry/repo:tag` or `registry/repo@sha256:…`.
    pub fn reference(&self) -> String {
        let sep = if self.name.starts_with("sha256:") {
            '@'
        } else {
            ':'
        };
        format!("{}/{}{sep}{}", self.registry, self.repository, self.name)
    }
}

const COLUMNS: &str = "registry, repository, name, digest, manifest, config, layer, layout, os, size, pulled_at, used_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ImageRow> {
    Ok(ImageRow {
        registry: r.get(0)?,
        repository: r.get(1)?,
        name: r.get(2)?,
        digest: r.get(3)?,
        manifest: r.get(4)?,
        config: r.get(5)?,
        layer: r.get(6)?,
        layout: r.get(7)?,
        os: r.get(8)?,
        size: r.get(9)?,
        pulled_at: r.get(10)?,
        used_at: r.get(11)?,
    })
}

impl Store {
    pub fn record_image(&mut self, i: &ImageRow) -> Result<()> {
        self.conn.execute(
            &format!("INSERT OR REPLACE INTO images ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
            params![
                i.registry, i.repository, i.name, i.digest, i.manifest, i.config, i.layer,
                i.layout, i.os, i.size, i.pulled_at, i.used_at
            ],
        )?;
        Ok(())
    }

    pub fn image_named(
        &self,
        registry: &str,
        repository: &str,
        name: &str,
    ) -> Result<Option<ImageRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM images WHERE registry = ?1 AND repository = ?2 AND name = ?3"),
                params![registry, repository, name],
                row,
            )
            .optional()?)
    }

    /// An image of the repository whose reference resolved to `digest`, or
    /// whose image manifest is `digest` (an index's wasm entry).
    pub fn image_with_digest(
        &self,
        registry: &str,
        repository: &str,
        digest: &str,
    ) -> Result<Option<ImageRow>> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM images WHERE registry = ?1 AND repository = ?2 \
                     AND (digest = ?3 OR manifest = ?3) ORDER BY used_at DESC LIMIT 1"
                ),
                params![registry, repository, digest],
                row,
            )
            .optional()?)
    }

    pub fn images(&self) -> Result<Vec<ImageRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM images ORDER BY registry, repository, name"
        ))?;
        let rows = stmt.query_map([], row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn touch_image(&mut self, i: &ImageRow) -> Result<()> {
        self.conn.execute(
            "UPDATE images SET used_at = ?4 WHERE registry = ?1 AND repository = ?2 AND name = ?3",
            params![i.registry, i.repository, i.name, now_ms()],
        )?;
        Ok(())
    }

    /// Forgets the images last used before `before_ms`.
    pub fn forget_images(&mut self, before_ms: i64) -> Result<Vec<ImageRow>> {
        let tx = self.conn.transaction()?;
        let gone = {
            let mut stmt = tx.prepare(&format!(
                "DELETE FROM images WHERE used_at < ?1 RETURNING {COLUMNS}"
            ))?;
            let rows = stmt.query_map([before_ms], row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        tx.commit()?;
        Ok(gone)
    }

    /// Every blob a cached image names.
    pub fn image_blobs(&self) -> Result<HashSet<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT digest, manifest, config, layer FROM images")?;
        let mut live = HashSet::new();
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            for i in 0..4 {
                if let Some(d) = r.get::<_, Option<String>>(i)? {
                    live.insert(d);
                }
            }
        }
        Ok(live)
    }
}
