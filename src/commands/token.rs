//! `cairn token [invoke|observe|admin]`: the daemon's bearer tokens.

use crate::commands::Global;
use crate::daemon::tokens::{self, Scope, Tokens};
use crate::data_dir::DataDir;
use crate::error::Failure;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Which {
    Invoke,
    Observe,
    Admin,
}

#[derive(clap::Args)]
pub struct TokenCommand {
    /// Print only this token (for scripts); all three when absent
    pub which: Option<Which>,
}

impl TokenCommand {
    pub fn execute(self, global: &Global) -> Result<(), Failure> {
        let data = DataDir::resolve(global.data_dir.as_deref())?;
        let t = Tokens::load(&tokens::path(&data)).map_err(|e| Failure::Usage(format!("{e:#}")))?;
        match self.which {
            Some(w) => {
                let scope = match w {
                    Which::Invoke => Scope::Invoke,
                    Which::Observe => Scope::Observe,
                    Which::Admin => Scope::Admin,
                };
                println!("{}", t.get(scope));
            }
            None => {
                println!("invoke   {}  (A2A: send messages to agents)", t.invoke);
                println!(
                    "observe  {}  (dispatches, conversations, events)",
                    t.observe
                );
                println!(
                    "admin    {}  (manual runs, reload; accepted everywhere)",
                    t.admin
                );
            }
        }
        Ok(())
    }
}
