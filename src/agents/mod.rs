//! Agents defined in a repository: each `.cairn/agents/<name>/` directory
//! holds an `agent.toml` (its guests, routing and budget), an optional
//! `agent-card.md` and `instructions.md`, and its `memory/`.
//!
//! - [`config`]: reads and checks one agent, or all of them, refusing every
//!   mistake with its file, line and field.
//! - [`scaffold`]: `cairn init`, an example agent to learn the format from,
//!   and the coder agent when [`setup`] finds a model for it.

pub mod config;
pub mod scaffold;
pub mod setup;

pub use config::{
    AgentConfig, ConfigError, GuestEntry, GuestSource, Isolation, Route, RouteKind, Skill,
    agents_dir, load_agent, load_all,
};
pub use scaffold::scaffold;
