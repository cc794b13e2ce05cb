//! What the `gcp-credentials` and `gcs-bucket` blocks do: a checked service account, an
//! access token, and a client for the bucket that writes, reads and lists objects and
//! copies whole directories.
//!
//! ```no_run
//! use block_types::catalog::GcsBucket;
//! use registry_client::BlockExt as _;
//! use registry_client::gcp::GcsBucketExt as _;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let block = GcsBucket::load("zoom-gcs").await?;
//! let bucket = block.storage().await?; // honours STORAGE_EMULATOR_HOST
//! bucket.upload_from_path("data/yellow/yellow_tripdata_2021-01.parquet", "data/yellow/yellow_tripdata_2021-01.parquet").await?;
//! let files = bucket.get_directory(Some("data/yellow"), "../data").await?;
//! # Ok(())
//! # }
//! ```
//!
//! Calls go to the GCS JSON API (`storage/v1`): media uploads, `alt=media` downloads,
//! paged listings and deletes, which Google and the usual emulators serve alike. Paths are
//! relative to the block's `bucket_folder`, as in Prefect. Tokens come from the block's
//! service account (inline or file) through `gcp_auth`, or from the environment's
//! Application Default Credentials when the block has no key; with
//! `STORAGE_EMULATOR_HOST` set, requests go to the emulator without a token, as Google's
//! own client libraries do.

mod credentials;
mod storage;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

pub use credentials::{GcpCredentialsExt, ServiceAccount};
pub use storage::{Blob, Bucket, Endpoint, GcsBucketExt};

use std::path::PathBuf;

pub use gcp_auth::TokenProvider;

/// The scope a bucket client asks for.
pub const STORAGE_SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";

const GOOGLE_STORAGE: &str = "https://storage.googleapis.com";
const ATTEMPTS: u32 = 3;

/// What went wrong with credentials or storage. Never holds a key or a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GcpError {
    /// The credentials block is unusable; names the field and the problem.
    #[error("gcp-credentials: {field}: {message}")]
    Credentials {
        /// The field at fault (`service_account_info.private_key`, …).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No token could be had.
    #[error("cannot get a Google access token: {0}")]
    Token(String),
    /// A path is not usable (empty, or would leave the target directory).
    #[error("{path:?}: {message}")]
    Path {
        /// The path.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// No such object.
    #[error("no object {name:?} in the bucket {bucket}")]
    NotFound {
        /// The bucket.
        bucket: String,
        /// The object's full name.
        name: String,
    },
    /// Storage answered with an error.
    #[error("GCS answered {status} to {action}: {detail}")]
    Http {
        /// The status code.
        status: u16,
        /// What was being done (`upload data/x.parquet`).
        action: String,
        /// The service's words.
        detail: String,
    },
    /// Storage could not be reached.
    #[error("cannot reach GCS at {endpoint} ({action}): {reason}")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// What was being done.
        action: String,
        /// Why.
        reason: String,
    },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn credentials_error(field: &str, message: impl Into<String>) -> GcpError {
    GcpError::Credentials {
        field: field.to_owned(),
        message: message.into(),
    }
}
