//! `cairn push <file.wasm|file.wat> <ref>`: publishes a guest as a CNCF
//! wasm artifact and prints the manifest digest.

use std::path::PathBuf;

use crate::commands::{Global, block_on, utc};
use crate::error::Failure;
use crate::guest_ref::io_reason;
use crate::image::{self, ImageRef};

#[derive(clap::Args)]
pub struct PushCommand {
    /// The guest: a preview-1 module or preview-2 component, .wasm or .wat
    pub file: PathBuf,
    /// Where to push it: registry/repo:tag
    pub reference: String,
    /// Allow plain HTTP to the registry (always allowed for localhost)
    #[arg(long)]
    pub insecure: bool,
}

impl PushCommand {
    pub fn execute(self, _global: &Global) -> Result<(), Failure> {
        let r = ImageRef::parse(&self.reference).map_err(Failure::Usage)?;
        let bad = |why: String| Failure::Usage(format!("{}: {why}", self.file.display()));
        let raw = std::fs::read(&self.file).map_err(|e| bad(io_reason(&e)))?;
        let bytes = if self.file.extension().is_some_and(|e| e == "wat") {
            wat::parse_bytes(&raw)
                .map_err(|e| bad(e.to_string()))?
                .into_owned()
        } else {
            raw
        };
        let stem = self
            .file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned());
        let title = format!("{}.wasm", stem.as_deref().unwrap_or("guest"));
        let created = format!("{}Z", utc(crate::store::now_ms()).replace(' ', "T"));
        let opts = image::Options {
            insecure: self.insecure,
        };
        let digest = block_on(image::push(bytes, &title, &created, &r, opts))??;
        println!("{digest}");
        Ok(())
    }
}
