//! `cairn pull <ref>`: fetches a guest image into the cache and prints the
//! digest its reference resolved to.

use crate::commands::{Global, block_on};
use crate::data_dir::DataDir;
use crate::error::Failure;
use crate::image::{self, ImageRef, Images};

#[derive(clap::Args)]
pub struct PullCommand {
    /// The image: registry/repo:tag or registry/repo@sha256:…
    pub reference: String,
    /// Allow plain HTTP to the registry (always allowed for localhost)
    #[arg(long)]
    pub insecure: bool,
}

impl PullCommand {
    pub fn execute(self, global: &Global) -> Result<(), Failure> {
        let r = ImageRef::parse(&self.reference).map_err(Failure::Usage)?;
        let data = DataDir::resolve(global.data_dir.as_deref())?;
        let mut images = Images::open(&data)?;
        let opts = image::Options {
            insecure: self.insecure,
        };
        let pulled = block_on(images.pull(&r, opts))??;
        if pulled.transferred == 0 {
            tracing::info!("{r}: every blob was already cached");
        }
        println!("{}", pulled.image.digest);
        Ok(())
    }
}
