//! `cairn push <file.wasm|file.wat|bundled> <ref>`: publishes a guest as a
//! CNCF wasm artifact and prints the manifest digest. A bundled guest's
//! name (`coder`, `echo`) publishes the one compiled into this binary.

use crate::commands::{Global, block_on, utc};
use crate::error::Failure;
use crate::guest_ref::GuestRef;
use crate::image::{self, ImageRef};

#[derive(clap::Args)]
pub struct PushCommand {
    /// The guest: a preview-1 module or preview-2 component (.wasm or .wat),
    /// or a bundled guest's name (coder, echo)
    pub file: String,
    /// Where to push it: registry/repo:tag
    pub reference: String,
    /// Allow plain HTTP to the registry (always allowed for localhost)
    #[arg(long)]
    pub insecure: bool,
}

impl PushCommand {
    pub fn execute(self, _global: &Global) -> Result<(), Failure> {
        let r = ImageRef::parse(&self.reference).map_err(Failure::Usage)?;
        let bad = |why: String| Failure::Usage(format!("{}: {why}", self.file));
        let guest = match GuestRef::parse(&self.file).map_err(Failure::Usage)? {
            GuestRef::Image(_) => {
                return Err(bad(
                    "an image reference; push takes a .wasm/.wat file or a bundled guest".into(),
                ));
            }
            local => local,
        };
        let source = guest.source().map_err(Failure::Usage)?;
        // A binary passes through; WAT text is compiled, as `cairn run` does.
        let bytes = crate::sandbox::to_binary(&source)
            .map_err(bad)?
            .into_owned();
        let title = format!("{}.wasm", source.name);
        let created = format!("{}Z", utc(crate::store::now_ms()).replace(' ', "T"));
        let opts = image::Options {
            insecure: self.insecure,
        };
        let digest = block_on(image::push(bytes, &title, &created, &r, opts))??;
        println!("{digest}");
        Ok(())
    }
}
