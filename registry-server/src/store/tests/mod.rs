//! The store's test suite. Every test runs on SQLite and on PostgreSQL.

pub(crate) mod harness;

mod batch;
mod browse;
mod connections;
mod documents;
mod events;
mod grants;
mod identity;
mod keys;
mod listing;
mod schemas;
mod secret_paths;
mod sessions;
mod tokens;
mod tree_cache;
