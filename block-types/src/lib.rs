//! The block model of the blocks registry, wire-compatible with Prefect.
//!
//! A *block type* (`gcs-bucket`) has *block schemas* (JSON Schemas identified by a
//! checksum), and *block documents* are named values of a type (`gcs-bucket/zoom-gcs`).
//! This crate holds everything about them that needs no I/O:
//!
//! - [`model`]: the wire types of Prefect's block API (types, schemas, documents, filters);
//! - [`schema_checksum`]: the schema checksum, bit for bit as Prefect computes it;
//! - [`secret_fields`]: secret paths, obfuscation to `"********"` and restoring echoes;
//! - [`references`]: `{"$ref": {"block_document_id": …}}` links between documents;
//! - [`validate`]: names, slugs, URLs and document data against its schema;
//! - [`Block`]: a Rust type that is a block type, and [`catalog`], the built-in ones;
//! - [`SecretString`], [`SecretJson`], [`SecretMap`]: holders that never print secrets.
//!
//! ```
//! use block_types::{Block, catalog::{GcpCredentials, GcsBucket}};
//! use serde_json::json;
//!
//! // Data as Prefect's Python client stores it, nested credentials resolved.
//! let data = json!({
//!     "bucket": "dtc-data-lake",
//!     "bucket_folder": "",
//!     "gcp_credentials": {
//!         "project": "dtc-de",
//!         "service_account_file": null,
//!         "service_account_info": {"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----…"}
//!     }
//! });
//! let bucket = GcsBucket::from_data(data.as_object().unwrap().clone()).unwrap();
//! assert_eq!(bucket.gcp_credentials.project.as_deref(), Some("dtc-de"));
//! // Debug output never shows the key.
//! assert!(!format!("{bucket:?}").contains("PRIVATE KEY"));
//! // The schema checksum is computed the way Prefect computes it.
//! assert!(GcsBucket::spec().checksum().starts_with("sha256:"));
//! ```

#![deny(missing_docs)]

pub mod access;
pub mod block;
pub mod catalog;
pub mod checksum;
pub mod error;
pub mod events;
pub mod identity;
pub mod model;
pub mod references;
pub mod secret;
pub mod secret_fields;
pub mod validate;
pub mod webhooks;

pub use block::{Block, BlockSpec, BlockTypeInfo};
pub use checksum::schema_checksum;
pub use error::FieldError;
pub use events::{ChangeEvent, EventKind};
pub use references::{ReferenceError, extract_references, split_references};
pub use secret::{OBFUSCATED, SecretJson, SecretMap, SecretString};
pub use secret_fields::SecretPath;
pub use validate::DataValidator;
