//! The built-in block catalog, in four collections.
//!
//! | collection | block types |
//! |---|---|
//! | `core` | `secret`, `webhook`, `local-file-system` (protected), `json`, `string`, `date-time` |
//! | `sqlalchemy` | `sqlalchemy-connector`, `async-sqlalchemy-connector` |
//! | `gcp` | `gcp-credentials`, `gcs-bucket` |
//! | `docker` | `docker-container` (nesting `docker-registry`), `docker-registry`, `docker-registry-credentials`, `docker-host` |
//!
//! Field names, types, defaults and secret fields match Prefect's, so a document moves
//! freely between Python and Rust; the schemas carry our own descriptions, so their
//! checksums are ours.

mod core;
mod docker;
mod gcp;
mod schema;
mod sqlalchemy;

use std::fmt;
use std::str::FromStr;

pub use self::core::{
    DateTime, Json, LocalFileSystem, Secret, StringBlock, Webhook, WebhookMethod,
};
pub use self::docker::{
    DEFAULT_IMAGE, DockerContainer, DockerHost, DockerRegistry, DockerRegistryCredentials,
    ImagePullPolicy, MemoryLimit, SwapLimit,
};
pub use self::gcp::{GcpCredentials, GcsBucket};
pub use self::sqlalchemy::{
    ASYNC_DRIVERS, AsyncSqlAlchemyConnector, ConnectionComponents, ConnectionInfo, SYNC_DRIVERS,
    SqlAlchemyConnector,
};

use serde_json::{Value, json};

use crate::block::{Block, BlockSpec};

/// The version string of every built-in schema.
pub const SCHEMA_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A group of built-in block types registered together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Collection {
    /// Secret, webhook, local file system, JSON, string, date-time.
    Core,
    /// SQLAlchemy connectors.
    Sqlalchemy,
    /// GCP credentials and GCS bucket.
    Gcp,
    /// Docker container, registry, registry credentials and host.
    Docker,
}

impl Collection {
    /// Every collection.
    pub const ALL: [Collection; 4] = [Self::Core, Self::Sqlalchemy, Self::Gcp, Self::Docker];

    /// The collection's name (`core`, `sqlalchemy`, `gcp`, `docker`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Core => "core",
            Self::Sqlalchemy => "sqlalchemy",
            Self::Gcp => "gcp",
            Self::Docker => "docker",
        }
    }

    /// The collection's block types and schemas, each nested type before its parent.
    pub fn specs(self) -> Vec<BlockSpec> {
        match self {
            Self::Core => vec![
                Secret::spec(),
                Webhook::spec(),
                LocalFileSystem::spec(),
                Json::spec(),
                StringBlock::spec(),
                DateTime::spec(),
            ],
            Self::Sqlalchemy => vec![
                SqlAlchemyConnector::spec(),
                AsyncSqlAlchemyConnector::spec(),
            ],
            Self::Gcp => vec![GcpCredentials::spec(), GcsBucket::spec()],
            Self::Docker => vec![
                DockerRegistry::spec(),
                DockerContainer::spec(),
                DockerRegistryCredentials::spec(),
                DockerHost::spec(),
            ],
        }
    }
}

impl fmt::Display for Collection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown collection name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown collection '{0}': expected one of core, sqlalchemy, gcp, docker")]
pub struct UnknownCollection(pub String);

impl FromStr for Collection {
    type Err = UnknownCollection;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| UnknownCollection(s.to_owned()))
    }
}

/// Every built-in block type, collection by collection.
pub fn all_specs() -> Vec<BlockSpec> {
    Collection::ALL
        .into_iter()
        .flat_map(Collection::specs)
        .collect()
}

/// The built-in spec with this slug.
pub fn spec_for_slug(slug: &str) -> Option<BlockSpec> {
    all_specs().into_iter().find(|s| s.block_type.slug == slug)
}

/// The secret paths of the built-in type with this slug, whichever schema a document of it
/// uses (none for other slugs): a schema some client registers for `gcp-credentials` never
/// keeps `service_account_info` in clear.
pub fn secret_floor(slug: &str) -> &'static [crate::SecretPath] {
    static FLOORS: std::sync::LazyLock<std::collections::HashMap<String, Vec<crate::SecretPath>>> =
        std::sync::LazyLock::new(|| {
            let mut floors: std::collections::HashMap<String, Vec<crate::SecretPath>> =
                std::collections::HashMap::new();
            for spec in all_specs() {
                let paths = floors.entry(spec.block_type.slug.clone()).or_default();
                paths.extend(spec.secret_fields());
                paths.extend(crate::secret_fields::marked_paths(&spec.fields, false));
            }
            floors
                .into_iter()
                .map(|(slug, paths)| (slug, crate::secret_fields::normalized(&paths)))
                .collect()
        });
    FLOORS.get(slug).map_or(&[], Vec::as_slice)
}

/// A document of every built-in type, in the shapes Prefect's Python client writes them
/// (nested blocks resolved inline), with `secret` in each secret field: test data for
/// checking that a secret never shows (`Debug`, logs, pages, errors), not a template (the
/// webhook sample allows private URLs). Some types have two samples, one per form a field
/// takes.
pub fn samples(secret: &str) -> Vec<(&'static str, Value)> {
    vec![
        ("secret", json!({"value": secret})),
        (
            "secret",
            json!({"value": {"username": "johndoe", "password": secret}}),
        ),
        (
            "webhook",
            json!({"method": "POST", "url": format!("https://hooks.example.com/{secret}"), "headers": {"Authorization": secret}, "allow_private_urls": true, "verify": true}),
        ),
        ("local-file-system", json!({"basepath": "/data"})),
        ("json", json!({"value": {"a": [1, 2]}})),
        ("string", json!({"value": "s"})),
        ("date-time", json!({"value": "2026-11-24T17:20:25.120785Z"})),
        (
            "sqlalchemy-connector",
            json!({"connection_info": {"driver": "postgresql+psycopg2", "database": "ny_taxi", "username": "root", "password": secret, "host": "localhost", "port": 5432, "query": {"sslmode": "disable"}}, "connect_args": null, "fetch_size": 1}),
        ),
        (
            "sqlalchemy-connector",
            json!({"connection_info": format!("postgresql+psycopg2://root:{secret}@localhost:5432/ny_taxi")}),
        ),
        (
            "async-sqlalchemy-connector",
            json!({"connection_info": {"driver": "postgresql+asyncpg", "database": "db", "username": "u", "password": secret, "host": "h", "port": 5433, "query": null}, "connect_args": {"timeout": 5}, "fetch_size": 10}),
        ),
        (
            "gcp-credentials",
            json!({"service_account_file": null, "service_account_info": {"type": "service_account", "private_key": secret}, "project": "dtc-de"}),
        ),
        // Spec §3.2: a GcsBucket with its credentials resolved from a reference.
        (
            "gcs-bucket",
            json!({"bucket": "dtc-data-lake", "bucket_folder": "", "gcp_credentials": {"service_account_file": null, "service_account_info": {"type": "service_account", "private_key": secret}, "project": "p2"}}),
        ),
        (
            "docker-registry",
            json!({"username": "u", "password": secret, "registry_url": "index.docker.io", "reauth": true}),
        ),
        // The course's container block.
        (
            "docker-container",
            json!({"type": "docker-container", "env": {"EXTRA_PIP_PACKAGES": "s3fs", "UNSET": null}, "labels": {}, "name": null, "command": null, "image": "discdiver/prefect:zoom", "image_pull_policy": "ALWAYS", "image_registry": {"username": "u", "password": secret, "registry_url": "index.docker.io", "reauth": true}, "networks": [], "network_mode": null, "auto_remove": true, "volumes": ["/data:/data:ro"], "stream_output": true, "memswap_limit": "1g", "mem_limit": 536870912.0, "privileged": false}),
        ),
        (
            "docker-registry-credentials",
            json!({"username": "u", "password": secret, "registry_url": "index.docker.io", "reauth": true}),
        ),
        (
            "docker-host",
            json!({"base_url": "unix:///var/run/docker.sock", "version": "auto", "timeout": 60, "max_pool_size": null, "client_kwargs": {}}),
        ),
    ]
}

#[cfg(test)]
mod tests;
