//! The A2A (Agent2Agent) protocol over its JSON-RPC binding, in versions 1.0
//! and 0.3, so that both current and older A2A clients and peers work.
//!
//! - [`wire`]: request parsing, the version-independent task model, and the
//!   renderers for each version's JSON shapes and agent cards (the server
//!   side; it does no I/O).
//! - [`client`]: sending a prompt to a peer A2A agent as if it were a local
//!   guest, with retries that never run a prompt twice.

pub mod client;
pub mod wire;
