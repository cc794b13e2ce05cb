//! The blocks registry server.
//!
//! It will hold the encrypted block store (SQLite and PostgreSQL through sqlx), the
//! Prefect-compatible JSON API (axum) and the `blocks` command line. Today it only
//! re-exports the block model it is built on.

#![deny(missing_docs)]

pub use block_types;
