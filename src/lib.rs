//! cairn runs persistent, self-directed AI agents on a repository, each
//! backend agent a WASI guest inside the one process.
//!
//! # Layout
//! - [`commands`]: the command line, one file per subcommand.
//! - [`sandbox`]: the wasmtime engine, guest loading and the compiled-code
//!   cache, one run of a guest under its limits. The only module that
//!   touches wasmtime.
//! - [`dispatch`]: the guest contract from the host's side: the dispatch on
//!   stdin, the environment, the events and reply on stdout.
//! - [`invoke`]: runs one dispatch on one guest (contract + sandbox).
//! - [`sidecar`]: the OpenAI-compatible gateway to every model: providers,
//!   retries, budgets, usage accounting, metrics.
//! - [`daemon`]: `cairn up`: the harness (queue, workers, recovery), the
//!   HTTP API (A2A, observability, admin), tokens, hot reload.
//! - [`agents`]: agent directories (`.cairn/agents/<name>/`): loading with
//!   file/line/field errors, and `cairn init`'s scaffold.
//! - [`a2a`]: the A2A protocol (1.0 and 0.3 JSON-RPC): wire shapes, and the
//!   client that dispatches to a peer agent.
//! - [`web`]: HTTP plumbing shared by the servers (bodies, serving).
//! - [`guest_ref`]: what a guest reference names (file, bundled, image).
//! - [`timeline`]: snapshots of the workspace at every step boundary,
//!   rollback of failed dispatches, undo of any step.
//! - [`store`]: the SQLite store, the only module that speaks SQL.
//! - [`data_dir`]: where cairn's state lives, outside every workspace.
//! - [`error`]: failures and their exit codes.
//! - [`logging`]: `tracing` set up from `-v` and `RUST_LOG`.

pub mod a2a;
pub mod agents;
pub mod broker;
pub mod commands;
pub mod daemon;
pub mod data_dir;
pub mod dispatch;
pub mod error;
pub mod guest_ref;
pub mod image;
pub mod invoke;
pub mod logging;
pub mod sandbox;
pub mod schedule;
pub mod sidecar;
pub mod store;
pub mod timeline;
pub mod web;
