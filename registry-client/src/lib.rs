//! Load typed blocks from a blocks registry in Rust pipelines.
//!
//! ```no_run
//! use block_types::catalog::GcsBucket;
//! use registry_client::BlockExt as _;
//!
//! # async fn run() -> Result<(), registry_client::Error> {
//! // The server and token come from BLOCKS_API_URL/BLOCKS_API_KEY, PREFECT_API_URL/
//! // PREFECT_API_KEY, or the profile `blocks serve` writes ($BLOCKS_HOME/profile.toml).
//! let bucket = GcsBucket::load("zoom-gcs").await?;
//! println!("{}", bucket.bucket);
//! // The nested credentials were resolved from their reference in the same request;
//! // their key prints as "********".
//! println!("{:?}", bucket.gcp_credentials);
//! # Ok(())
//! # }
//! ```
//!
//! With an explicit [`Client`] (another server, a cache):
//!
//! ```no_run
//! use std::time::Duration;
//! use block_types::catalog::GcpCredentials;
//! use registry_client::{Client, Config};
//!
//! # async fn run() -> Result<(), registry_client::Error> {
//! let client = Client::new(Config::new("http://127.0.0.1:4200/api", Some("blk_…"))?)?
//!     .with_cache(Duration::from_secs(30));
//! let credentials: GcpCredentials = client.load("zoom-gcp-creds").await?;
//! let any = client.load_json("gcs-bucket/zoom-gcs").await?; // no Rust type needed
//! # Ok(())
//! # }
//! ```
//!
//! In a Kubernetes pod or a CI job, no secret needs to be configured: with
//! `BLOCKS_IDENTITY_TOKEN_FILE` (the platform's identity token, a JWT) and `BLOCKS_ROLE`,
//! the client exchanges the identity for a short-lived token of the role at the server,
//! and again before that token expires.
//!
//! Saving registers the block type and schema when the server lacks them; nested blocks
//! that were loaded (or saved) through the same client are saved as references to their
//! documents, others are saved first as anonymous documents:
//!
//! ```no_run
//! use block_types::catalog::{GcpCredentials, GcsBucket};
//! use registry_client::{BlockExt as _, Client};
//!
//! # async fn run() -> Result<(), registry_client::Error> {
//! let client = Client::from_env()?;
//! let credentials: GcpCredentials = client.load("zoom-gcp-creds").await?;
//! let bucket = GcsBucket { bucket: "dtc-data-lake".into(), bucket_folder: String::new(), gcp_credentials: credentials };
//! client.save(&bucket, "zoom-gcs").await?;           // gcp_credentials → $ref zoom-gcp-creds
//! client.save_overwrite(&bucket, "zoom-gcs").await?; // conditional replace (If-Match)
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod api;
mod client;
mod config;
mod error;
mod identity;
mod provenance;
mod save;
mod transfer;
mod watch;

#[cfg(feature = "docker")]
pub mod docker;
mod encoding;
#[cfg(feature = "gcp")]
pub mod gcp;
#[cfg(feature = "sqlalchemy")]
pub mod sqlalchemy;

use std::sync::OnceLock;

pub use api::{AuditFilter, MAX_LISTED_ITEMS, NewToken, NewWebhook};
pub use block_types;
pub use client::{CacheStats, Client, JsonBlock};
pub use config::{Config, ConfigSource, Profile};
pub use error::Error;
pub use identity::Identity;
pub use transfer::{ExportedDocument, Restored, Snapshot};
pub use watch::{Watch, WatchEvent};

use block_types::Block;

/// The client [`BlockExt`] uses, configured from the environment on first use.
pub fn default_client() -> Result<&'static Client, Error> {
    static DEFAULT: OnceLock<Client> = OnceLock::new();
    if let Some(client) = DEFAULT.get() {
        return Ok(client);
    }
    let client = Client::from_env()?;
    Ok(DEFAULT.get_or_init(|| client))
}

/// `load` on every block type, through [`default_client`].
pub trait BlockExt: Block + Sized {
    /// Loads the block `name` of this type, nested blocks resolved.
    fn load(name: &str) -> impl std::future::Future<Output = Result<Self, Error>> + Send {
        async move { default_client()?.load::<Self>(name).await }
    }

    /// Saves the block as `name` ([`Error::NameConflict`] if it exists).
    fn save(
        &self,
        name: &str,
    ) -> impl std::future::Future<Output = Result<uuid::Uuid, Error>> + Send {
        async move { default_client()?.save(self, name).await }
    }

    /// Saves the block as `name`, replacing an existing one unless it changed meanwhile.
    fn save_overwrite(
        &self,
        name: &str,
    ) -> impl std::future::Future<Output = Result<uuid::Uuid, Error>> + Send {
        async move { default_client()?.save_overwrite(self, name).await }
    }

    /// Loads a block of this type by its document id.
    fn load_by_id(id: uuid::Uuid) -> impl std::future::Future<Output = Result<Self, Error>> + Send {
        async move { default_client()?.load_by_id::<Self>(id).await }
    }
}

impl<T: Block> BlockExt for T {}
