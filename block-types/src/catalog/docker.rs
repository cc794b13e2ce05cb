//! The `docker` collection: a container to run (nesting its registry credentials), registry
//! credentials and a Docker host.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::SCHEMA_VERSION;
use super::schema::{block_schema, optional, prop, secret_string, type_info};
use crate::block::{Block, BlockSpec};
use crate::secret::SecretString;

fn yes() -> bool {
    true
}

fn registry_fields(title: &str, slug: &str, description: &str) -> Value {
    block_schema(
        title,
        slug,
        description,
        vec![
            (
                "username",
                prop(
                    "Username",
                    "The user that logs in to the registry.",
                    json!({"type": "string"}),
                ),
            ),
            (
                "password",
                prop(
                    "Password",
                    "The user's password or access token.",
                    secret_string(),
                ),
            ),
            (
                "registry_url",
                prop(
                    "Registry URL",
                    "The registry's address; the scheme may be left out.",
                    json!({"type": "string", "examples": ["index.docker.io"]}),
                ),
            ),
            (
                "reauth",
                prop(
                    "Reauth",
                    "Whether to log in again on every use.",
                    json!({"type": "boolean", "default": true}),
                ),
            ),
        ],
        &["username", "password", "registry_url"],
        &["password"],
    )
}

fn example(rust_name: &str, name: &str) -> String {
    format!(
        "```rust\nuse block_types::catalog::{rust_name};\nuse registry_client::BlockExt;\n\nlet block = {rust_name}::load(\"{name}\").await?;\n```"
    )
}

macro_rules! registry_block {
    ($(#[$doc:meta])* $name:ident, $slug:literal, $display:literal, $summary:literal, [$($capability:literal),*]) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub struct $name {
            /// The user that logs in.
            pub username: String,
            /// The password or access token.
            pub password: SecretString,
            /// The registry's address, e.g. `index.docker.io`.
            pub registry_url: String,
            /// Whether to log in again on every use.
            #[serde(default = "yes")]
            pub reauth: bool,
        }

        impl Block for $name {
            const SLUG: &'static str = $slug;

            fn spec() -> BlockSpec {
                BlockSpec {
                    block_type: type_info($display, $slug, stringify!($name), $summary, &example(stringify!($name), "dockerhub")),
                    fields: registry_fields(stringify!($name), $slug, $summary),
                    capabilities: vec![$($capability.to_owned()),*],
                    version: SCHEMA_VERSION.to_owned(),
                }
            }
        }
    };
}

registry_block!(
    /// Credentials for a Docker registry, nested in a [`DockerContainer`].
    DockerRegistry,
    "docker-registry",
    "Docker Registry",
    "Credentials that log in to a Docker registry; the password is secret.",
    ["docker-login"]
);

registry_block!(
    /// Credentials for a Docker registry, for Docker workers.
    DockerRegistryCredentials,
    "docker-registry-credentials",
    "Docker Registry Credentials",
    "Credentials that log in to a Docker registry; the password is secret.",
    []
);

/// When to pull a container's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ImagePullPolicy {
    /// Pull only when the image is absent.
    IfNotPresent,
    /// Always pull.
    Always,
    /// Never pull.
    Never,
}

/// A memory limit: bytes, or a string with a unit (`"512m"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MemoryLimit {
    /// Bytes.
    Bytes(f64),
    /// With a unit, as Docker reads it.
    Text(String),
}

/// A memory-plus-swap limit: bytes, or a string with a unit (`"1g"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SwapLimit {
    /// Bytes.
    Bytes(i64),
    /// With a unit, as Docker reads it.
    Text(String),
}

/// The image every new container uses unless told otherwise.
pub const DEFAULT_IMAGE: &str = "prefecthq/prefect:2-latest";

fn default_container_type() -> String {
    DockerContainer::SLUG.to_owned()
}

fn default_image() -> String {
    DEFAULT_IMAGE.to_owned()
}

/// A Docker container to run a flow in: image, environment, volumes, networks and limits,
/// with optional registry credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DockerContainer {
    /// Always `docker-container`.
    #[serde(default = "default_container_type", rename = "type")]
    pub kind: String,
    /// Environment variables; a `null` value unsets one.
    #[serde(default)]
    pub env: BTreeMap<String, Option<String>>,
    /// Container labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Container name.
    #[serde(default)]
    pub name: Option<String>,
    /// Command to run.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Image reference.
    #[serde(default = "default_image")]
    pub image: String,
    /// When to pull the image.
    #[serde(default)]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// Registry credentials; usually a reference to a saved `docker-registry` block.
    #[serde(default)]
    pub image_registry: Option<DockerRegistry>,
    /// Networks to join.
    #[serde(default)]
    pub networks: Vec<String>,
    /// Network mode (`host`, `bridge`, …).
    #[serde(default)]
    pub network_mode: Option<String>,
    /// Remove the container when it exits.
    #[serde(default)]
    pub auto_remove: bool,
    /// Volumes as `host:container[:mode]`.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Stream the container's output.
    #[serde(default = "yes")]
    pub stream_output: bool,
    /// Memory plus swap limit.
    #[serde(default)]
    pub memswap_limit: Option<SwapLimit>,
    /// Memory limit.
    #[serde(default)]
    pub mem_limit: Option<MemoryLimit>,
    /// Run privileged.
    #[serde(default)]
    pub privileged: bool,
}

impl DockerContainer {
    /// A container of `image` with every other setting at its default.
    pub fn new(image: impl Into<String>) -> Self {
        Self {
            kind: default_container_type(),
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            name: None,
            command: None,
            image: image.into(),
            image_pull_policy: None,
            image_registry: None,
            networks: Vec::new(),
            network_mode: None,
            auto_remove: false,
            volumes: Vec::new(),
            stream_output: true,
            memswap_limit: None,
            mem_limit: None,
            privileged: false,
        }
    }
}

impl Block for DockerContainer {
    const SLUG: &'static str = "docker-container";

    fn spec() -> BlockSpec {
        let summary = "A Docker container to run in: image, environment, volumes, networks and limits, with optional registry credentials.";
        let fields = block_schema(
            "DockerContainer",
            Self::SLUG,
            summary,
            vec![
                (
                    "type",
                    prop(
                        "Type",
                        "The infrastructure kind; always docker-container.",
                        json!({"type": "string", "enum": ["docker-container"], "default": "docker-container"}),
                    ),
                ),
                (
                    "env",
                    prop(
                        "Environment",
                        "Environment variables; a null value unsets a variable.",
                        json!({"type": "object", "additionalProperties": {"anyOf": [{"type": "string"}, {"type": "null"}]}, "default": {}}),
                    ),
                ),
                (
                    "labels",
                    prop(
                        "Labels",
                        "Labels for the container.",
                        json!({"type": "object", "additionalProperties": {"type": "string"}, "default": {}}),
                    ),
                ),
                (
                    "name",
                    optional("Name", "The container's name.", json!({"type": "string"})),
                ),
                (
                    "command",
                    optional(
                        "Command",
                        "The command to run, as a list of arguments.",
                        json!({"type": "array", "items": {"type": "string"}}),
                    ),
                ),
                (
                    "image",
                    prop(
                        "Image",
                        "The image reference.",
                        json!({"type": "string", "default": DEFAULT_IMAGE}),
                    ),
                ),
                (
                    "image_pull_policy",
                    optional(
                        "Image Pull Policy",
                        "When to pull the image.",
                        json!({"type": "string", "enum": ["IF_NOT_PRESENT", "ALWAYS", "NEVER"]}),
                    ),
                ),
                (
                    "image_registry",
                    optional(
                        "Image Registry",
                        "Credentials for the registry that holds the image.",
                        json!({"$ref": "#/definitions/DockerRegistry"}),
                    ),
                ),
                (
                    "networks",
                    prop(
                        "Networks",
                        "Networks the container joins.",
                        json!({"type": "array", "items": {"type": "string"}, "default": []}),
                    ),
                ),
                (
                    "network_mode",
                    optional(
                        "Network Mode",
                        "The container's network mode, e.g. host.",
                        json!({"type": "string"}),
                    ),
                ),
                (
                    "auto_remove",
                    prop(
                        "Auto Remove",
                        "Remove the container when it exits.",
                        json!({"type": "boolean", "default": false}),
                    ),
                ),
                (
                    "volumes",
                    prop(
                        "Volumes",
                        "Volumes to mount, as host:container[:mode].",
                        json!({"type": "array", "items": {"type": "string", "pattern": ":"}, "default": []}),
                    ),
                ),
                (
                    "stream_output",
                    prop(
                        "Stream Output",
                        "Stream the container's output.",
                        json!({"type": "boolean", "default": true}),
                    ),
                ),
                (
                    "memswap_limit",
                    optional(
                        "Memory+Swap Limit",
                        "Memory plus swap: bytes, or a number with a unit (1g).",
                        json!({"anyOf": [{"type": "integer"}, {"type": "string"}]}),
                    ),
                ),
                (
                    "mem_limit",
                    optional(
                        "Memory Limit",
                        "Memory: bytes, or a number with a unit (512m).",
                        json!({"anyOf": [{"type": "number"}, {"type": "string"}]}),
                    ),
                ),
                (
                    "privileged",
                    prop(
                        "Privileged",
                        "Give the container extended privileges.",
                        json!({"type": "boolean", "default": false}),
                    ),
                ),
            ],
            &[],
            &[],
        );
        BlockSpec {
            block_type: type_info(
                "Docker Container",
                Self::SLUG,
                "DockerContainer",
                summary,
                &example("DockerContainer", "zoom"),
            ),
            fields,
            capabilities: vec!["run-infrastructure".to_owned()],
            version: SCHEMA_VERSION.to_owned(),
        }
        .nest("image_registry", &DockerRegistry::spec())
    }

    fn nested_specs() -> Vec<BlockSpec> {
        vec![DockerRegistry::spec()]
    }
}

/// How to reach a Docker engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DockerHost {
    /// The engine's URL, e.g. `unix:///var/run/docker.sock`; the environment's when unset.
    #[serde(default)]
    pub base_url: Option<String>,
    /// API version, or `auto`.
    #[serde(default = "auto")]
    pub version: String,
    /// Timeout of API calls, in seconds.
    #[serde(default)]
    pub timeout: Option<i64>,
    /// Connections kept in the pool.
    #[serde(default)]
    pub max_pool_size: Option<i64>,
    /// Further client settings.
    #[serde(default)]
    pub client_kwargs: Map<String, Value>,
}

fn auto() -> String {
    "auto".to_owned()
}

impl Block for DockerHost {
    const SLUG: &'static str = "docker-host";

    fn spec() -> BlockSpec {
        let summary = "How to reach a Docker engine: its URL, API version, timeout and pool size.";
        let fields = block_schema(
            "DockerHost",
            Self::SLUG,
            summary,
            vec![
                ("base_url", {
                    let mut p =
                        optional("Base URL", "The engine's URL.", json!({"type": "string"}));
                    p["examples"] = json!(["unix:///var/run/docker.sock"]);
                    p
                }),
                (
                    "version",
                    prop(
                        "Version",
                        "The API version to use, or auto.",
                        json!({"type": "string", "default": "auto"}),
                    ),
                ),
                (
                    "timeout",
                    optional(
                        "Timeout",
                        "Timeout of API calls, in seconds.",
                        json!({"type": "integer"}),
                    ),
                ),
                (
                    "max_pool_size",
                    optional(
                        "Max Pool Size",
                        "Connections kept in the pool.",
                        json!({"type": "integer"}),
                    ),
                ),
                (
                    "client_kwargs",
                    prop(
                        "Additional Configuration",
                        "Further settings for the Docker client.",
                        json!({"type": "object"}),
                    ),
                ),
            ],
            &[],
            &[],
        );
        BlockSpec {
            block_type: type_info(
                "Docker Host",
                Self::SLUG,
                "DockerHost",
                summary,
                &example("DockerHost", "local-engine"),
            ),
            fields,
            capabilities: Vec::new(),
            version: SCHEMA_VERSION.to_owned(),
        }
    }
}
