//! The command line: one file per subcommand, each a clap struct with an
//! `execute` method; options every command shares are in [`Global`].

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub mod run;

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Persistent, self-directed AI agents on a repository, each in a WebAssembly sandbox"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command.
#[derive(clap::Args)]
pub struct Global {
    /// Where cairn keeps its state (compiled code, later the store and snapshots)
    #[arg(long, global = true, env = "CAIRN_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// More logging: -v shows guests' stderr, -vv debug, -vvv trace (RUST_LOG overrides)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run one dispatch on a guest and print its reply
    Run(run::RunCommand),
}
