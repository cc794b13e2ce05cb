//! What a `docker-container` block does: the Docker Engine API calls, or the `docker`
//! command lines, that run it, with its nested `docker-registry` credentials.
//!
//! ```no_run
//! use block_types::catalog::DockerContainer;
//! use registry_client::BlockExt as _;
//! use registry_client::docker::DockerContainerExt as _;
//! use secrecy::ExposeSecret as _;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let container = DockerContainer::load("zoom").await?;
//! let run = container.run_config()?; // validated: names, volumes, memory, networks, image
//!
//! // Through the Engine API: pull (with `X-Registry-Auth` from `run.registry_auth()`) when
//! // `run.should_pull(image_present)`, then create, connect further networks, start.
//! let pull = run.pull_path(); // /images/create?fromImage=discdiver%2Fprefect&tag=zoom
//! let create = run.create_path(); // /containers/create?name=…
//! let body = run.create_body(); // {"Image": …, "Env": […], "HostConfig": {…}, …}
//!
//! // Or through the CLI; no secret is ever among the arguments. The registry password
//! // goes on stdin; the environment goes into an env file that only its owner can read,
//! // deleted once `docker` has exited.
//! if let Some(login) = run.docker_login_args() {
//!     // docker login --username U --password-stdin REGISTRY  <<< run.login_password()
//! }
//! let env_file = run.docker_run_env_file()?; // refuses values with line breaks
//! let path = std::env::temp_dir().join(format!("zoom-{}.env", std::process::id()));
//! let mut file = {
//!     use std::os::unix::fs::OpenOptionsExt as _;
//!     std::fs::OpenOptions::new()
//!         .write(true)
//!         .create_new(true) // never an existing file, nor a symbolic link
//!         .mode(0o600)
//!         .open(&path)?
//! };
//! let status = std::io::Write::write_all(&mut file, env_file.expose_secret().as_bytes())
//!     .and_then(|()| {
//!         std::process::Command::new("docker")
//!             .args(run.docker_run_args_with_env_file(&path))
//!             .status()
//!     });
//! drop(file);
//! std::fs::remove_file(&path)?; // whether or not `docker` ran
//! let status = status?;
//!
//! // `run.docker_run_args()` with `run.docker_run_env()` set on the `docker` process is
//! // the other CLI route; it refuses names the CLI itself reads (PATH, HOME, DOCKER_HOST,
//! // LD_PRELOAD, HTTPS_PROXY, …), which only the env file and the Engine API can carry.
//! # Ok(())
//! # }
//! ```
//!
//! The behaviour follows Prefect 2's `DockerContainer` infrastructure:
//!
//! - **Pull policy**: the block's when set; otherwise `ALWAYS` when the image has no tag or
//!   the tag `latest`, `IF_NOT_PRESENT` when it is pinned by another tag or by a digest.
//! - **Networks**: `network_mode` when set becomes `HostConfig.NetworkMode` and every
//!   network is joined after the container is created. Without it, the first network is the
//!   network mode and the one endpoint of the create call; the others are joined after
//!   create ([`RunConfig::connect_networks`], `POST /networks/{id}/connect`).
//! - **Memory**: bytes, or a number with a unit `b`, `k`, `m` or `g` (1024-based, any case,
//!   an optional trailing `b`: `512m`, `512MB`, `1.5g`), as docker-py reads them; fractions
//!   of a byte are dropped. `memswap_limit` `-1` is unlimited swap.
//! - **Environment**: a variable whose value is `null` is left out, so it is unset. Values
//!   may be secret (API keys, database passwords): they are in the create call's body, which
//!   goes over the Docker socket (the safest route, for any name and value), or in the env
//!   file of `docker run --env-file` ([`RunConfig::docker_run_env_file`]), and never in
//!   `docker run`'s arguments (readable by any local user through `ps`) nor in any `Debug`
//!   output, which shows `KEY=********`. The `docker` process's own environment
//!   ([`RunConfig::docker_run_env`]) takes no name the CLI itself reads
//!   ([`is_read_by_docker_cli`]).

mod cli_args;
mod engine;
mod image;
mod parse;
mod registry;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

pub use cli_args::{is_read_by_docker_cli, pull_flag};
pub use engine::{
    ContainerConfig, CreateContainer, EndpointSettings, Environment, HostConfig, NetworkingConfig,
    network_connect_body, network_connect_path,
};
pub use image::ImageRef;
use parse::{
    Networks, check_labels, check_name, check_volume, environment, memory_limits, networks,
};
pub use registry::RegistryLogin;

use std::collections::BTreeMap;

use block_types::catalog::{DockerContainer, ImagePullPolicy};

/// The `type` every `docker-container` block has.
const KIND: &str = "docker-container";

/// The smallest memory limit Docker (on Linux) accepts: 6 MiB.
pub const MIN_MEMORY_BYTES: i64 = 6 * 1024 * 1024;

/// Why a container block cannot be run: the field at fault and the problem. Never holds
/// the registry password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("docker-container: {field}: {message}")]
pub struct DockerError {
    /// The field at fault, as the block names it (`mem_limit`, `volumes[2]`,
    /// `image_registry.username`, …).
    pub field: String,
    /// What is wrong, in words that say what to do.
    pub message: String,
}

impl DockerError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Turns a `docker-container` block into what runs it.
pub trait DockerContainerExt {
    /// Validates the block and resolves everything needed to run it.
    ///
    /// # Errors
    /// [`DockerError`] naming the first invalid field.
    fn run_config(&self) -> Result<RunConfig, DockerError>;
}

impl DockerContainerExt for DockerContainer {
    fn run_config(&self) -> Result<RunConfig, DockerError> {
        run_config(self)
    }
}

/// Validates a `docker-container` block and resolves everything needed to run it; the same
/// as [`DockerContainerExt::run_config`].
///
/// # Errors
/// [`DockerError`] naming the first invalid field.
pub fn run_config(container: &DockerContainer) -> Result<RunConfig, DockerError> {
    if container.kind != KIND {
        return Err(DockerError::new(
            "type",
            format!(
                "is {:?}; a docker-container block has type {KIND:?}",
                container.kind
            ),
        ));
    }
    if let Some(name) = &container.name {
        check_name(name)?;
    }
    let image = ImageRef::parse(&container.image)?;
    let pull = container.image_pull_policy.unwrap_or(if image.is_pinned() {
        ImagePullPolicy::IfNotPresent
    } else {
        ImagePullPolicy::Always
    });

    let env = environment(&container.env)?;
    check_labels(&container.labels)?;
    for (i, volume) in container.volumes.iter().enumerate() {
        check_volume(i, volume)?;
    }
    let Networks {
        mode: network_mode,
        endpoint,
        connect: connect_networks,
    } = networks(container.network_mode.as_deref(), &container.networks)?;
    let (memory, memory_swap) = memory_limits(
        container.mem_limit.as_ref(),
        container.memswap_limit.as_ref(),
    )?;
    let registry = container
        .image_registry
        .as_ref()
        .map(RegistryLogin::new)
        .transpose()?;

    let body = ContainerConfig {
        image: container.image.clone(),
        cmd: container.command.clone(),
        env,
        labels: container.labels.clone(),
        host_config: HostConfig {
            auto_remove: container.auto_remove,
            binds: container.volumes.clone(),
            network_mode,
            memory,
            memory_swap,
            privileged: container.privileged,
        },
        networking_config: endpoint.map(|network| NetworkingConfig {
            endpoints_config: BTreeMap::from([(network, EndpointSettings {})]),
        }),
    };
    Ok(RunConfig {
        create: CreateContainer {
            name: container.name.clone(),
            body,
        },
        connect_networks,
        image,
        pull,
        stream_output: container.stream_output,
        registry,
    })
}

/// Everything needed to run a container block, validated.
///
/// Its `Debug` output never shows the registry password nor the environment's values: the
/// password and the `X-Registry-Auth` header are held as [`SecretString`]s, and the
/// environment ([`Environment`]) shows its keys only (`KEY=********`).
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    /// The create-container call (`POST /containers/create`).
    pub create: CreateContainer,
    /// Networks to join once the container exists (`POST /networks/{id}/connect`, see
    /// [`network_connect_path`]): all of them when `network_mode` is set, else all but
    /// the first. Docker attaches one network at create time.
    pub connect_networks: Vec<String>,
    /// The image, split into repository and tag or digest.
    pub image: ImageRef,
    /// When to pull the image: the block's policy, or the one its image implies.
    pub pull: ImagePullPolicy,
    /// Whether the container's output is to be streamed (its logs followed).
    pub stream_output: bool,
    registry: Option<RegistryLogin>,
}
