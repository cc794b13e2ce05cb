//! The blocks registry server.
//!
//! - [`crypto`]: envelope encryption of secret field values (master key, data keys,
//!   AES-256-GCM bound to document, path and key).
//! - [`store`]: the encrypted block store on SQLite or PostgreSQL (sqlx), with versions,
//!   keys, tokens and the audit log.
//! - [`http`]: the Prefect-compatible JSON API (axum) with tokens and scopes.
//! - [`serve`]: `blocks serve`; [`cli`]: the other `blocks` commands.

#![deny(missing_docs)]

pub mod cli;
pub mod console;
pub mod crypto;
pub mod http;
pub mod serve;
pub mod store;

pub use block_types;
