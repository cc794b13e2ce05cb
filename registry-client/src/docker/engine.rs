//! The Engine API side of a run: the create, pull and network-connect calls and their
//! bodies.

use crate::encoding::encode;
use std::collections::BTreeMap;

use super::RunConfig;
use super::registry::RegistryLogin;
use block_types::catalog::ImagePullPolicy;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Serialize;
use serde_json::{Value, json};

impl RunConfig {
    /// The path and query of the create call, e.g. `/containers/create?name=zoom`,
    /// relative to the Engine API's root (prefix a version such as `/v1.43` to pin one).
    pub fn create_path(&self) -> String {
        self.create.path()
    }

    /// The JSON body of the create call.
    pub fn create_body(&self) -> Value {
        self.create.body_json()
    }

    /// The path and query of the pull call, e.g.
    /// `/images/create?fromImage=discdiver%2Fprefect&tag=zoom`.
    pub fn pull_path(&self) -> String {
        self.image.pull_path()
    }

    /// Whether to pull the image before creating the container, given whether the engine
    /// already has it.
    pub fn should_pull(&self, image_present: bool) -> bool {
        match self.pull {
            ImagePullPolicy::Always => true,
            ImagePullPolicy::IfNotPresent => !image_present,
            ImagePullPolicy::Never => false,
        }
    }

    /// The registry credentials, when the block has some.
    pub fn registry(&self) -> Option<&RegistryLogin> {
        self.registry.as_ref()
    }

    /// The `X-Registry-Auth` header value for the pull call: URL-safe base64 of
    /// `{"username", "password", "serveraddress"}`; `None` without registry credentials.
    pub fn registry_auth(&self) -> Option<&SecretString> {
        self.registry.as_ref().map(RegistryLogin::auth_header)
    }
}

/// The path of the call that joins a container to `network`:
/// `/networks/{network}/connect`, with [`network_connect_body`] as its body.
pub fn network_connect_path(network: &str) -> String {
    format!("/networks/{}/connect", encode(network))
}

/// The body of the call that joins `container` (its id or name) to a network.
pub fn network_connect_body(container: &str) -> Value {
    json!({ "Container": container })
}

/// The create-container call: its `name` query parameter and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateContainer {
    /// The container's name (the `name` query parameter); Docker picks one when unset.
    pub name: Option<String>,
    /// The request body.
    pub body: ContainerConfig,
}

impl CreateContainer {
    /// `/containers/create`, with `?name=…` (percent-encoded) when the name is set.
    pub fn path(&self) -> String {
        match &self.name {
            Some(name) => format!("/containers/create?name={}", encode(name)),
            None => "/containers/create".to_owned(),
        }
    }

    /// The body as JSON, with Docker's field names.
    pub fn body_json(&self) -> Value {
        serde_json::to_value(&self.body)
            .expect("a container config of strings, integers and booleans serializes")
    }
}

/// The body of `POST /containers/create`, serialized with Docker's field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// The image reference, as the block gives it.
    pub image: String,
    /// The command; the image's when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// The environment, in key order; variables set to `null` are left out. Serialized as
    /// Docker's `KEY=value` strings, shown by `Debug` as `KEY=********`.
    pub env: Environment,
    /// Container labels.
    pub labels: BTreeMap<String, String>,
    /// Host settings: removal, mounts, network mode, limits, privileges.
    pub host_config: HostConfig,
    /// The network endpoint joined at create time, when networks are given without a
    /// network mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub networking_config: Option<NetworkingConfig>,
}

/// A container's environment variables, in order. Their values may be secret (API keys,
/// database passwords), so they are held as [`SecretString`]s:
///
/// - `Debug` shows the names only: `["PREFECT_API_KEY=********"]`.
/// - Serialized, as the `Env` of the create call's body, it is the list of `KEY=value`
///   strings Docker expects, with the real values: that body goes over the Docker socket,
///   not on a command line.
#[derive(Clone, Default)]
pub struct Environment {
    pub(super) vars: Vec<(String, SecretString)>,
}

impl Environment {
    /// The variables' names, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.vars.iter().map(|(key, _)| key.as_str())
    }

    /// The variables' names and values, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &SecretString)> {
        self.vars.iter().map(|(key, value)| (key.as_str(), value))
    }

    /// The number of variables.
    pub fn len(&self) -> usize {
        self.vars.len()
    }

    /// Whether there are no variables.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }
}

impl FromIterator<(String, SecretString)> for Environment {
    /// Variables in the order given. Names are not checked here; [`run_config`] checks the
    /// block's.
    fn from_iter<I: IntoIterator<Item = (String, SecretString)>>(iter: I) -> Self {
        Self {
            vars: iter.into_iter().collect(),
        }
    }
}

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys().map(|key| format!("{key}=********")))
            .finish()
    }
}

impl PartialEq for Environment {
    fn eq(&self, other: &Self) -> bool {
        self.vars.len() == other.vars.len()
            && self
                .iter()
                .zip(other.iter())
                .all(|((k1, v1), (k2, v2))| k1 == k2 && v1.expose_secret() == v2.expose_secret())
    }
}

impl Eq for Environment {}

impl Serialize for Environment {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            self.iter()
                .map(|(key, value)| format!("{key}={}", value.expose_secret())),
        )
    }
}

/// The `HostConfig` of a create call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostConfig {
    /// Remove the container when it exits.
    pub auto_remove: bool,
    /// Volumes, as `host:container[:mode]`.
    pub binds: Vec<String>,
    /// The network mode: the block's, or its first network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    /// The memory limit in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<i64>,
    /// The memory-plus-swap limit in bytes; `-1` is unlimited swap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_swap: Option<i64>,
    /// Run privileged.
    pub privileged: bool,
}

/// The `NetworkingConfig` of a create call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkingConfig {
    /// The network joined at create time, by name.
    pub endpoints_config: BTreeMap<String, EndpointSettings>,
}

/// The settings of a network endpoint; none are set, so it serializes to `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EndpointSettings {}
