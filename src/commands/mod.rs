//! The command line: one file per subcommand, each a clap struct with an
//! `execute` method; options every command shares are in [`Global`].

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub mod diff;
pub mod doctor;
pub mod gc;
pub mod images;
pub mod init;
pub mod log;
pub mod logs;
pub mod pull;
pub mod push;
pub mod rollback;
pub mod run;
pub mod sidecar;
pub mod status;
pub mod token;
pub mod up;
pub mod validate;

use crate::data_dir::DataDir;
use crate::error::Failure;
use crate::store::Store;

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
    /// Where cairn keeps its state (compiled code, the store, snapshots, cached images)
    #[arg(long, global = true, env = "CAIRN_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// More logging: -v shows guests' stderr, -vv debug, -vvv trace (RUST_LOG overrides)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Subcommand)]
pub enum Command {
    /// Scaffold .cairn/ in a repository: an echo agent that needs no API key, and commented examples
    Init(init::InitCommand),
    /// Start the daemon on a repository: its agents over A2A, until Ctrl-C
    Up(up::UpCommand),
    /// Show the daemon's bearer tokens
    Token(token::TokenCommand),
    /// Show the running daemon's health and latest dispatches
    Status(status::StatusCommand),
    /// Show what this machine gives cairn: command confinement, git, the data directory
    Doctor(doctor::DoctorCommand),
    /// Check a repository's agents and prompt files without running anything
    Validate(validate::ValidateCommand),
    /// Show recent dispatches; with -f, follow dispatch and step events
    Logs(logs::LogsCommand),
    /// Run one dispatch on a guest and print its reply
    Run(run::RunCommand),
    /// Show dispatches and their steps, newest first, with changed paths
    Log(log::LogCommand),
    /// Show what one step changed, as a unified diff
    Diff(diff::DiffCommand),
    /// Undo a step or a whole dispatch
    Rollback(rollback::RollbackCommand),
    /// Forget old dispatches (and with --images cached images); delete what nothing refers to
    Gc(gc::GcCommand),
    /// Push a guest to an OCI registry as a wasm artifact; prints its digest
    Push(push::PushCommand),
    /// Pull a guest image into the cache; prints its digest
    Pull(pull::PullCommand),
    /// List the guest images in the cache
    Images(images::ImagesCommand),
    /// Serve the model gateway (OpenAI-compatible) on a port for native tools
    Sidecar(sidecar::SidecarCommand),
}

/// The data directory and its store, after finishing whatever a stopped
/// cairn left unfinished in workspaces no one is using.
pub fn open_store(global: &Global) -> Result<(DataDir, Store), Failure> {
    let data = DataDir::resolve(global.data_dir.as_deref())?;
    let store = Store::open(&data.store())?;
    crate::timeline::recover_idle(&data, &store)?;
    Ok((data, store))
}

/// Runs a future to completion on a runtime of its own: the commands that
/// talk to a registry are otherwise synchronous.
pub fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Internal(anyhow::Error::from(e).context("starting the runtime")))?;
    Ok(runtime.block_on(f))
}

/// A store timestamp (ms since the epoch) as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn utc(ms: i64) -> String {
    let (y, m, d, rem) = crate::store::civil(ms);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
