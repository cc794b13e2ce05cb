//! The blocks registry server.
//!
//! - [`crypto`]: envelope encryption of secret field values (master key, data keys,
//!   AES-256-GCM bound to document, path and key).
//!
//! Still to come here: the encrypted block store (SQLite and PostgreSQL through sqlx), the
//! Prefect-compatible JSON API (axum) and the `blocks` command line.

#![deny(missing_docs)]

pub mod crypto;
pub mod http;
pub mod serve;
pub mod store;

pub use block_types;
