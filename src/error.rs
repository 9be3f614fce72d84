//! The failures a command reports, and the exit code of each. A user's
//! script branches on the code; the message says the rest on one line.

use crate::sandbox::{GuestFailure, LoadError};

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Bad arguments, or a workspace that cannot be used: nothing ran.
    #[error("{0}")]
    Usage(String),
    /// The guest could not be loaded: nothing ran.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A guest image could not be pushed, pulled or found: nothing ran.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    /// The guest ran and failed; `then` says what the timeline did about
    /// it (`; rolled back …`), or is empty.
    #[error("{guest}: {failure}{then}")]
    Guest {
        guest: String,
        failure: GuestFailure,
        then: String,
    },
    /// A rollback refused because the workspace changed since.
    #[error(transparent)]
    Conflict(#[from] crate::timeline::Conflict),
    /// cairn itself failed.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Exit codes of `cairn run`, documented in the README.
pub mod exit {
    pub const OK: u8 = 0;
    pub const INTERNAL: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const LOAD: u8 = 3;
    pub const TRAP: u8 = 4;
    pub const GUEST_EXIT: u8 = 5;
    pub const DEADLINE: u8 = 6;
    pub const MEMORY: u8 = 7;
    pub const OUTPUT: u8 = 8;
    pub const CONFLICT: u8 = 9;
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => exit::USAGE,
            Failure::Load(_) | Failure::Image(_) => exit::LOAD,
            Failure::Internal(_) => exit::INTERNAL,
            Failure::Conflict(_) => exit::CONFLICT,
            Failure::Guest { failure, .. } => match failure {
                GuestFailure::Trap(_) | GuestFailure::Fault(_) => exit::TRAP,
                GuestFailure::Exit(_) => exit::GUEST_EXIT,
                GuestFailure::Deadline(_) => exit::DEADLINE,
                GuestFailure::MemoryCap(_) => exit::MEMORY,
                GuestFailure::OutputCap { .. } => exit::OUTPUT,
            },
        }
    }

    /// The message on one line, as `cairn: <message>` prints it.
    pub fn one_line(&self) -> String {
        let text = match self {
            Failure::Internal(e) => format!("{e:#}"),
            other => other.to_string(),
        };
        one_line(&text)
    }
}

/// A message on one line, as cairn prints every error: the lines of a
/// multi-line rendering (an error chain, a parser's report) joined by spaces.
pub fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether writing to stdout failed because the reader went away
/// (`cairn log | head`): the reader's choice, not an error.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}
