//! coronium: a Coronium Core compatible Lua application server on PostgreSQL.
//!
//! Module map (see ARCHITECTURE.md for the invariants):
//! - [`app`]: the composition root: `App::build(config)`, and each worker's `Services`.
//! - [`config`]: typed settings from `coronium.toml`, the environment and flags.
//! - [`status`]: Coronium status codes and the error answer, shared by every layer.
//! - [`db`]: the per-worker database handle, migrations, and the embedded PostgreSQL cluster.
//! - [`users`]: the users domain (validation, passwords, SQL); no Lua or HTTP in it.
//! - [`admin`]: the operator's console (admins, sessions, audit, pages); no HTTP in it.
//! - [`analytics`]: `api.analytics` records and their daily roll-ups.
//! - [`logging`]: one line per log event whatever its values hold; a gate for repeated errors.
//! - [`lua`]: the Luau runtime, the only module that touches mlua.
//! - [`wire`]: the Coronium wire protocol (signature, envelopes, `api.users`, a client).
//! - [`permissions`]: client permissions per scope for the built-in modules' wire actions.
//! - [`server`]: `coronium serve`: workers, listeners, HTTP.
//! - [`scaffold`]: `coronium new`: a new API project with the editor's type definitions.
//! - [`cli`]: the `coronium` command line and its subcommands.

// Every `unsafe` block says why it is sound (`SAFETY:`), and every `unsafe fn` when it may be
// called (`# Safety`).
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

pub mod admin;
pub mod analytics;
pub mod app;
pub mod cli;
pub mod config;
pub mod db;
pub mod logging;
pub mod lua;
pub mod mail;
pub mod permissions;
pub mod rate;
pub mod scaffold;
pub mod server;
pub mod status;
pub mod users;
pub mod vitals;
pub mod wire;
