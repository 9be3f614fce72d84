//! `cairn images`: the guest images in the cache.

use crate::commands::gc::human_bytes;
use crate::commands::{Global, utc};
use crate::data_dir::DataDir;
use crate::error::Failure;
use crate::image::Images;

#[derive(clap::Args)]
pub struct ImagesCommand {
    /// One JSON object per line instead of a table
    #[arg(long)]
    pub json: bool,
}

impl ImagesCommand {
    pub fn execute(self, global: &Global) -> Result<(), Failure> {
        let data = DataDir::resolve(global.data_dir.as_deref())?;
        let rows = Images::open(&data)?.list()?;
        if self.json {
            for row in &rows {
                println!(
                    "{}",
                    serde_json::to_string(row).map_err(anyhow::Error::from)?
                );
            }
            return Ok(());
        }
        if rows.is_empty() {
            println!("no cached images");
            return Ok(());
        }
        let width = rows
            .iter()
            .map(|r| r.reference().len())
            .max()
            .unwrap_or(0)
            .max(9);
        println!(
            "{:width$}  {:19}  {:6}  {:>9}  LAST USED",
            "REFERENCE", "DIGEST", "OS", "SIZE"
        );
        for row in &rows {
            println!(
                "{:width$}  {:19}  {:6}  {:>9}  {}",
                row.reference(),
                crate::image::format::short(&row.digest),
                row.os,
                human_bytes(row.size as u64),
                utc(row.used_at)
            );
        }
        Ok(())
    }
}
