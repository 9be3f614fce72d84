//! coder: cairn's coding agent, a WASI guest (docs/guest-contract.md).
//!
//! It reads the dispatch, then loops: ask the model (the sidecar's chat
//! completions) with the conversation and the tools, run the tools it
//! calls against `/workspace`, give it the results, until it answers
//! without a tool call or calls `finish`. Progress and each tool call are
//! JSON-lines events on stdout; the last event is the final reply.
//!
//! Everything but the `wasi:http` client builds and tests natively.

pub mod agent;
pub mod conversation;
pub mod glob;
pub mod http;
pub mod model;
pub mod prompt;
pub mod text;
pub mod tools;

#[cfg(test)]
mod testutil;
