//! The client pipelines use to load and save typed blocks from a blocks registry.
//!
//! It will add `load` and `save` to every [`block_types::Block`] through an extension
//! trait. Today it only re-exports the block model it is built on.

#![deny(missing_docs)]

pub use block_types;
