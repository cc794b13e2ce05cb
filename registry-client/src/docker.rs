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

use crate::encoding::encode;
use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE;
use block_types::catalog::{
    DockerContainer, DockerRegistry, ImagePullPolicy, MemoryLimit, SwapLimit,
};
use secrecy::zeroize::Zeroize as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Serialize;
use serde_json::{Value, json};

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

    /// The registry password, to write to the standard input of
    /// [`docker_login_args`](Self::docker_login_args).
    pub fn login_password(&self) -> Option<&SecretString> {
        self.registry.as_ref().map(RegistryLogin::password)
    }

    /// `login --username U --password-stdin REGISTRY` (without the leading `docker`); the
    /// password is read from standard input ([`login_password`](Self::login_password)).
    /// `None` without registry credentials.
    pub fn docker_login_args(&self) -> Option<Vec<String>> {
        self.registry.as_ref().map(RegistryLogin::docker_login_args)
    }

    /// The `docker run` arguments equivalent to the API calls (without the leading
    /// `docker`), with the environment given by name only: `--env KEY` for each variable.
    /// Their values go into the `docker` process's own environment, from
    /// [`docker_run_env`](Self::docker_run_env), which refuses any name the `docker` CLI
    /// itself reads (`PATH`, `HOME`, `DOCKER_HOST`, `LD_PRELOAD`, `HTTPS_PROXY`, …; see
    /// [`is_read_by_docker_cli`]).
    ///
    /// Three routes carry the environment, safest first:
    ///
    /// 1. The Engine API: [`create_body`](Self::create_body) carries every variable and
    ///    value over the Docker socket, whatever its name or value.
    /// 2. An env file: [`docker_run_env_file`](Self::docker_run_env_file) and
    ///    [`docker_run_args_with_env_file`](Self::docker_run_args_with_env_file). This is
    ///    the CLI's general route: any name, any value without a line break, and nothing
    ///    reaches the `docker` process's environment.
    /// 3. These arguments with [`docker_run_env`](Self::docker_run_env): only for blocks
    ///    whose variables the `docker` CLI does not read. **The caller must set the
    ///    variables on the `docker` process** (e.g. [`Command::envs`]); a variable left out
    ///    there is not set in the container, or takes whatever value the `docker` process
    ///    inherited from its parent.
    ///
    /// No secret is among the arguments, which any local user can read (`ps`,
    /// `/proc/<pid>/cmdline`). The registry password is not given either: log in first
    /// with [`docker_login_args`](Self::docker_login_args).
    ///
    /// Every network is given with its own `--network` (the network mode or the first
    /// network, then [`connect_networks`](Self::connect_networks)). A second `--network`
    /// needs Docker 25 or later; older engines refuse the command rather than ignore the
    /// networks.
    ///
    /// [`Command::envs`]: std::process::Command::envs
    pub fn docker_run_args(&self) -> Vec<String> {
        self.run_args(RunEnv::Names)
    }

    /// The `docker run` arguments equivalent to the API calls (without the leading
    /// `docker`), as [`docker_run_args`](Self::docker_run_args) but with the environment
    /// read from the env file at `path`: one `--env-file <path>` (always given, even for
    /// an empty environment) in place of the `--env KEY`s.
    ///
    /// Write [`docker_run_env_file`](Self::docker_run_env_file) to `path` first, in a new
    /// file only its owner can read (mode `0600`, created with `create_new` so that no
    /// existing file or symbolic link is reused), and delete it once `docker` has exited.
    /// Only the path is on the command line, never a value.
    ///
    /// `path` should be valid UTF-8 (as a path under [`std::env::temp_dir`] normally is);
    /// any other path is converted lossily, and `docker` then fails to find the file.
    pub fn docker_run_args_with_env_file(&self, path: &Path) -> Vec<String> {
        self.run_args(RunEnv::File(path))
    }

    fn run_args(&self, env: RunEnv<'_>) -> Vec<String> {
        let body = &self.create.body;
        let host = &body.host_config;
        let mut args = vec!["run".to_owned()];
        let mut push = |flag: &str, value: &str| {
            args.push(flag.to_owned());
            args.push(value.to_owned());
        };
        if let Some(name) = &self.create.name {
            push("--name", name);
        }
        match env {
            RunEnv::Names => {
                for key in body.env.keys() {
                    push("--env", key);
                }
            }
            RunEnv::File(path) => push("--env-file", &path.to_string_lossy()),
        }
        for (key, value) in &body.labels {
            push("--label", &format!("{key}={value}"));
        }
        for volume in &host.binds {
            push("--volume", volume);
        }
        if let Some(mode) = &host.network_mode {
            push("--network", mode);
        }
        for network in &self.connect_networks {
            push("--network", network);
        }
        if let Some(memory) = host.memory {
            push("--memory", &memory.to_string());
        }
        if let Some(swap) = host.memory_swap {
            push("--memory-swap", &swap.to_string());
        }
        push("--pull", pull_flag(self.pull));
        if host.auto_remove {
            args.push("--rm".to_owned());
        }
        if host.privileged {
            args.push("--privileged".to_owned());
        }
        args.push(body.image.clone());
        args.extend(body.cmd.iter().flatten().cloned());
        args
    }

    /// The environment as the text of a Docker env file, for
    /// [`docker_run_args_with_env_file`](Self::docker_run_args_with_env_file): one
    /// `KEY=VALUE` line per variable, in key order. `docker run --env-file` takes each
    /// value as it is, with no quoting nor expansion, and gives the variables to the
    /// container only, never to the `docker` process; any name is allowed, including
    /// those the CLI reads.
    ///
    /// The text holds the values, which may be secret: write it to a file only its owner
    /// can read (mode `0600`), delete the file once `docker` has exited, and keep the text
    /// out of logs. An empty environment gives an empty text.
    ///
    /// # Errors
    /// [`DockerError`] on the field `env.<KEY>` (naming the key, never the value) when
    /// an env file cannot carry the variable as it is: its value holds a line break (`\n`
    /// or `\r`), or its name holds whitespace or a control character, starts with `#`, or
    /// holds a byte-order mark. Run such a block through the Engine API
    /// ([`create_body`](Self::create_body)).
    pub fn docker_run_env_file(&self) -> Result<SecretString, DockerError> {
        let env = &self.create.body.env;
        let mut len = 0;
        for (key, value) in env.iter() {
            check_env_file_var(key, value.expose_secret())?;
            len += key.len() + value.expose_secret().len() + 2;
        }
        // Sized exactly, so that the buffer never reallocates (leaving an unzeroed copy of
        // the values behind) nor shrinks when it becomes a `SecretString`.
        let mut text = String::with_capacity(len);
        for (key, value) in env.iter() {
            text.push_str(key);
            text.push('=');
            text.push_str(value.expose_secret());
            text.push('\n');
        }
        Ok(SecretString::from(text))
    }

    /// The environment to give the `docker` CLI process that runs
    /// [`docker_run_args`](Self::docker_run_args): each variable's name and value, in key
    /// order, one for each `--env KEY` among the arguments. `docker run --env KEY` (no
    /// value) copies `KEY` from its own environment into the container's, so the values
    /// never appear on a command line.
    ///
    /// Set them all on the process, e.g.
    /// `command.envs(env.iter().map(|(key, value)| (key, value.expose_secret())))`; the
    /// values may be secret (API keys, passwords), so keep them out of logs.
    ///
    /// Prefer the env file ([`docker_run_env_file`](Self::docker_run_env_file)), which
    /// takes any name, or the Engine API ([`create_body`](Self::create_body)), which
    /// takes any name and value.
    ///
    /// # Errors
    /// [`DockerError`] on the field `env.<KEY>` for the first variable whose name the
    /// `docker` CLI itself reads ([`is_read_by_docker_cli`]: `PATH`, `HOME`, `DOCKER_*`,
    /// `LD_*`, `*_PROXY`, …). Set on the `docker` process, such a variable would change
    /// which `docker` runs, which daemon it talks to (and so where the values go), which
    /// login it uses, or what code it loads.
    pub fn docker_run_env(&self) -> Result<Vec<(String, SecretString)>, DockerError> {
        let env = &self.create.body.env;
        if let Some(key) = env.keys().find(|key| is_read_by_docker_cli(key)) {
            return Err(DockerError::new(
                format!("env.{key}"),
                format!(
                    "{key:?} is read by the docker CLI itself, so it cannot be passed through the docker process's environment (docker run --env {key}); use the env-file form (docker_run_env_file with docker_run_args_with_env_file) or the Engine API (create_body)"
                ),
            ));
        }
        Ok(env
            .iter()
            .map(|(key, value)| (key.to_owned(), value.clone()))
            .collect())
    }
}

/// Where `docker run` takes the environment from.
#[derive(Clone, Copy)]
enum RunEnv<'a> {
    /// `--env KEY` for each variable; the values come from the `docker` process.
    Names,
    /// `--env-file <path>`.
    File(&'a Path),
}

/// Whether the `docker` CLI (or the Go runtime or C loader it runs on) reads an
/// environment variable of this name from its own environment, so that setting it on the
/// `docker` process changes how the CLI behaves:
///
/// - `PATH` (which `docker` and credential helper run), `HOME`, `USERPROFILE` and
///   `XDG_*` (where the CLI's configuration and logins are), `TMPDIR`;
/// - `DOCKER_*` (`DOCKER_HOST`, `DOCKER_CONTEXT`, `DOCKER_CONFIG`, `DOCKER_TLS_VERIFY`,
///   `DOCKER_CERT_PATH`, …: which daemon, which login);
/// - `LD_*` and `DYLD_*` (`LD_PRELOAD`, `LD_LIBRARY_PATH`: code loaded into the CLI);
/// - `*_PROXY` (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`, …), `SSL_CERT_FILE`,
///   `SSL_CERT_DIR`, `GODEBUG` and `OTEL_*` (where and how the CLI connects);
/// - the Go runtime's `GOGC`, `GOMAXPROCS`, `GOMEMLIMIT`, `GOTRACEBACK`.
///
/// Names are compared ignoring ASCII case (Windows environments ignore it, and the proxy
/// variables are read in both cases), so `http_proxy` and `Path` count too.
/// [`RunConfig::docker_run_env`] refuses these names; the env file and the Engine API take
/// them.
pub fn is_read_by_docker_cli(name: &str) -> bool {
    const NAMES: [&str; 11] = [
        "PATH",
        "HOME",
        "USERPROFILE",
        "TMPDIR",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "GODEBUG",
        "GOGC",
        "GOMAXPROCS",
        "GOMEMLIMIT",
        "GOTRACEBACK",
    ];
    const PREFIXES: [&str; 5] = ["DOCKER_", "LD_", "DYLD_", "XDG_", "OTEL_"];
    let name = name.to_ascii_uppercase();
    NAMES.contains(&name.as_str())
        || PREFIXES.iter().any(|prefix| name.starts_with(prefix))
        || name.ends_with("_PROXY")
}

/// Whether `docker run --env-file` reads `KEY=VALUE` back as this variable: one line,
/// split at the first `=`, the name trimmed of leading whitespace and refused with any
/// inside, `#` lines skipped, a leading byte-order mark dropped, a trailing `\r` dropped.
fn check_env_file_var(key: &str, value: &str) -> Result<(), DockerError> {
    let fail = |message: String| Err(DockerError::new(format!("env.{key}"), message));
    let api = "run this block through the Engine API (create_body) instead";
    if value.contains(['\n', '\r']) {
        return fail(format!(
            "the value of {key:?} contains a line break, which a docker env file cannot carry; {api}"
        ));
    }
    if key.starts_with('#')
        || key
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\u{feff}')
    {
        return fail(format!(
            "the name {key:?} starts with '#' or contains whitespace, a control character or a byte-order mark, which a docker env file cannot carry; {api}"
        ));
    }
    Ok(())
}

/// The value of `docker run --pull` for a policy: `always`, `missing` or `never`.
pub fn pull_flag(policy: ImagePullPolicy) -> &'static str {
    match policy {
        ImagePullPolicy::Always => "always",
        ImagePullPolicy::IfNotPresent => "missing",
        ImagePullPolicy::Never => "never",
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
    vars: Vec<(String, SecretString)>,
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

/// An image reference split as the Engine's pull call wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The repository, with its registry host and port when given
    /// (`localhost:5000/flows`), without tag or digest.
    pub repository: String,
    /// The tag, when given.
    pub tag: Option<String>,
    /// The digest (`sha256:…`), when given; it wins over the tag.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Splits `[registry[:port]/]repository[:tag][@digest]`.
    ///
    /// # Errors
    /// [`DockerError`] on the `image` field when the reference is malformed.
    pub fn parse(image: &str) -> Result<Self, DockerError> {
        let fail = |message: String| DockerError::new("image", message);
        if image.is_empty() {
            return Err(fail(
                "is empty; give an image reference such as prefecthq/prefect:2-latest".to_owned(),
            ));
        }
        if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(fail(format!("{image:?} contains whitespace")));
        }
        if image.starts_with('-') {
            return Err(fail(format!("{image:?} starts with '-'")));
        }
        let (name, digest) = match image.rsplit_once('@') {
            Some((name, digest)) => {
                if !is_digest(digest) {
                    return Err(fail(format!(
                        "{image:?} has a malformed digest; expected algorithm:hex, e.g. sha256:…"
                    )));
                }
                (name, Some(digest.to_owned()))
            }
            None => (image, None),
        };
        // A colon after the last slash starts the tag; one before it is a registry's port.
        let (repository, tag) = match name.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag)),
            _ => (name, None),
        };
        if let Some(tag) = tag
            && !is_tag(tag)
        {
            return Err(fail(format!(
                "{image:?} has a malformed tag {tag:?}; a tag is 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
            )));
        }
        if repository.is_empty()
            || repository.contains('@')
            || repository.starts_with('/')
            || repository.ends_with('/')
            || repository.contains("//")
        {
            return Err(fail(format!("{image:?} has a malformed repository name")));
        }
        Ok(Self {
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// Whether the reference names one image for good: a digest, or a tag other than
    /// `latest`.
    pub fn is_pinned(&self) -> bool {
        self.digest.is_some() || self.tag.as_deref().is_some_and(|tag| tag != "latest")
    }

    /// What the pull call asks for: the digest, else the tag, else `latest` (an empty
    /// `tag` would pull every tag).
    pub fn pull_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// `/images/create?fromImage=<repository>&tag=<tag or digest>`, percent-encoded.
    pub fn pull_path(&self) -> String {
        format!(
            "/images/create?fromImage={}&tag={}",
            encode(&self.repository),
            encode(self.pull_reference())
        )
    }
}

/// Registry credentials, resolved: who logs in where, and the secrets to do it with.
#[derive(Debug, Clone)]
pub struct RegistryLogin {
    /// The user that logs in.
    pub username: String,
    /// The registry's address, as the block gives it.
    pub server_address: String,
    /// Whether to log in again on every use.
    pub reauth: bool,
    password: SecretString,
    auth_header: SecretString,
}

impl RegistryLogin {
    fn new(registry: &DockerRegistry) -> Result<Self, DockerError> {
        let username = registry.username.trim();
        let server_address = registry.registry_url.trim();
        if username.is_empty() {
            return Err(DockerError::new("image_registry.username", "is empty"));
        }
        if server_address.is_empty() {
            return Err(DockerError::new(
                "image_registry.registry_url",
                "is empty; give the registry's address, e.g. index.docker.io",
            ));
        }
        let password = registry.password.expose_secret();
        if password.is_empty() {
            return Err(DockerError::new("image_registry.password", "is empty"));
        }
        Ok(Self {
            username: username.to_owned(),
            server_address: server_address.to_owned(),
            reauth: registry.reauth,
            password: SecretString::from(password),
            auth_header: auth_header(username, password, server_address),
        })
    }

    /// The password or access token.
    pub fn password(&self) -> &SecretString {
        &self.password
    }

    /// The `X-Registry-Auth` header value.
    pub fn auth_header(&self) -> &SecretString {
        &self.auth_header
    }

    /// `login --username U --password-stdin REGISTRY`.
    pub fn docker_login_args(&self) -> Vec<String> {
        vec![
            "login".to_owned(),
            "--username".to_owned(),
            self.username.clone(),
            "--password-stdin".to_owned(),
            self.server_address.clone(),
        ]
    }
}

impl PartialEq for RegistryLogin {
    fn eq(&self, other: &Self) -> bool {
        self.username == other.username
            && self.server_address == other.server_address
            && self.reauth == other.reauth
            && self.password.expose_secret() == other.password.expose_secret()
    }
}

/// URL-safe base64 of the auth JSON; the plaintext buffer is zeroed.
fn auth_header(username: &str, password: &str, server_address: &str) -> SecretString {
    #[derive(Serialize)]
    struct AuthConfig<'a> {
        username: &'a str,
        password: &'a str,
        serveraddress: &'a str,
    }
    // Sized for the worst escaping (\u00XX per byte) so that the buffer never reallocates
    // and leaves an unzeroed copy behind.
    let capacity = 64 + 6 * (username.len() + password.len() + server_address.len());
    let mut plain = Vec::with_capacity(capacity);
    serde_json::to_writer(
        &mut plain,
        &AuthConfig {
            username,
            password,
            serveraddress: server_address,
        },
    )
    .expect("writing strings as JSON to memory cannot fail");
    let mut encoded = String::with_capacity(base64::encoded_len(plain.len(), true).unwrap_or(0));
    URL_SAFE.encode_string(&plain, &mut encoded);
    plain.zeroize();
    SecretString::from(encoded)
}

/// Docker's container names: `/?[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
fn check_name(name: &str) -> Result<(), DockerError> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    let mut chars = bare.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && bare.len() >= 2
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else {
        Err(DockerError::new(
            "name",
            format!(
                "{name:?} is not a valid container name; use at least 2 characters of [a-zA-Z0-9_.-], starting with a letter or digit"
            ),
        ))
    }
}

fn environment(env: &BTreeMap<String, Option<String>>) -> Result<Environment, DockerError> {
    let mut vars = Vec::with_capacity(env.len());
    for (key, value) in env {
        // Values may be secret: messages name keys only.
        if key.is_empty() {
            return Err(DockerError::new("env", "a variable has an empty name"));
        }
        if key.contains('=') || key.contains('\0') {
            return Err(DockerError::new(
                "env",
                format!("the variable name {key:?} contains '=' or a NUL byte"),
            ));
        }
        if let Some(value) = value {
            // The value goes into a process environment (`docker run --env KEY`) and the
            // container's, neither of which can hold a NUL byte.
            if value.contains('\0') {
                return Err(DockerError::new(
                    "env",
                    format!("the value of {key:?} contains a NUL byte"),
                ));
            }
            vars.push((key.clone(), SecretString::from(value.as_str())));
        }
    }
    Ok(Environment { vars })
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), DockerError> {
    for key in labels.keys() {
        if key.is_empty() {
            return Err(DockerError::new("labels", "a label has an empty key"));
        }
        if key.contains('=') {
            return Err(DockerError::new(
                "labels",
                format!("the label key {key:?} contains '='"),
            ));
        }
    }
    Ok(())
}

/// `host:container` or `host:container:mode`, every part non-empty. A Windows drive
/// (`C:\data:/data`) is part of the host path.
fn check_volume(index: usize, volume: &str) -> Result<(), DockerError> {
    let fail = |problem: &str| {
        DockerError::new(
            format!("volumes[{index}]"),
            format!("{volume:?} {problem}; write host:container or host:container:mode"),
        )
    };
    let bytes = volume.as_bytes();
    let drive = bytes.len() >= 3
        && bytes[0].is_ascii_alphabetic()
        && bytes[1] == b':'
        && matches!(bytes[2], b'\\' | b'/');
    let rest = if drive { &volume[2..] } else { volume };
    let parts: Vec<&str> = rest.split(':').collect();
    if !(2..=3).contains(&parts.len()) {
        return Err(fail(if parts.len() < 2 {
            "has no container path"
        } else {
            "has too many ':'"
        }));
    }
    for (part, what) in parts.iter().zip(["host path", "container path", "mode"]) {
        if part.is_empty() {
            return Err(fail(&format!("has an empty {what}")));
        }
    }
    Ok(())
}

/// How a container joins its networks.
struct Networks {
    /// `HostConfig.NetworkMode`.
    mode: Option<String>,
    /// The endpoint joined at create time.
    endpoint: Option<String>,
    /// Networks joined after create.
    connect: Vec<String>,
}

fn networks(mode: Option<&str>, networks: &[String]) -> Result<Networks, DockerError> {
    for (i, network) in networks.iter().enumerate() {
        if network.trim().is_empty() {
            return Err(DockerError::new(format!("networks[{i}]"), "is empty"));
        }
        if networks[..i].contains(network) {
            return Err(DockerError::new(
                format!("networks[{i}]"),
                format!("{network:?} is listed twice"),
            ));
        }
    }
    match mode {
        Some(mode) => {
            if mode.trim().is_empty() {
                return Err(DockerError::new("network_mode", "is empty"));
            }
            if !networks.is_empty()
                && (mode == "host" || mode == "none" || mode.starts_with("container:"))
            {
                return Err(DockerError::new(
                    "networks",
                    format!(
                        "a container with network_mode {mode:?} cannot join other networks; drop network_mode or the networks"
                    ),
                ));
            }
            Ok(Networks {
                mode: Some(mode.to_owned()),
                endpoint: None,
                connect: networks.to_vec(),
            })
        }
        None => match networks.split_first() {
            Some((first, rest)) => Ok(Networks {
                mode: Some(first.clone()),
                endpoint: Some(first.clone()),
                connect: rest.to_vec(),
            }),
            None => Ok(Networks {
                mode: None,
                endpoint: None,
                connect: Vec::new(),
            }),
        },
    }
}

/// `(Memory, MemorySwap)` in bytes, checked as the Docker daemon checks them.
fn memory_limits(
    mem: Option<&MemoryLimit>,
    swap: Option<&SwapLimit>,
) -> Result<(Option<i64>, Option<i64>), DockerError> {
    let memory = match mem {
        None => None,
        Some(MemoryLimit::Bytes(bytes)) => Some(bytes_from_f64("mem_limit", *bytes, false)?),
        Some(MemoryLimit::Text(text)) => Some(parse_bytes("mem_limit", text, false)?),
    };
    let memory_swap = match swap {
        None => None,
        Some(SwapLimit::Bytes(-1)) => Some(-1),
        Some(SwapLimit::Bytes(bytes)) if *bytes < 0 => return Err(negative("memswap_limit", true)),
        Some(SwapLimit::Bytes(bytes)) => Some(*bytes),
        Some(SwapLimit::Text(text)) => Some(parse_bytes("memswap_limit", text, true)?),
    };
    if let Some(memory) = memory
        && memory > 0
        && memory < MIN_MEMORY_BYTES
    {
        return Err(DockerError::new(
            "mem_limit",
            format!(
                "is {memory} bytes; Docker's minimum is 6m ({MIN_MEMORY_BYTES} bytes). A bare number counts bytes: write 512m for 512 MiB"
            ),
        ));
    }
    if let Some(swap) = memory_swap
        && swap > 0
    {
        match memory {
            Some(memory) if memory > 0 && swap < memory => {
                return Err(DockerError::new(
                    "memswap_limit",
                    format!(
                        "is {swap} bytes, less than mem_limit ({memory} bytes); it counts memory plus swap, so it must be at least mem_limit, or -1 for unlimited swap"
                    ),
                ));
            }
            Some(memory) if memory > 0 => {}
            _ => {
                return Err(DockerError::new(
                    "memswap_limit",
                    "needs mem_limit: Docker refuses a memory-plus-swap limit without a memory limit",
                ));
            }
        }
    }
    Ok((memory, memory_swap))
}

fn negative(field: &str, swap: bool) -> DockerError {
    DockerError::new(
        field,
        if swap {
            "is negative; -1 (unlimited swap) is the only negative value allowed"
        } else {
            "is negative"
        },
    )
}

/// Whole bytes from a number of bytes: fractions dropped, `-1` allowed for swap.
fn bytes_from_f64(field: &str, bytes: f64, swap: bool) -> Result<i64, DockerError> {
    if !bytes.is_finite() {
        return Err(DockerError::new(field, "is not a finite number"));
    }
    if bytes < 0.0 {
        return if swap && bytes == -1.0 {
            Ok(-1)
        } else {
            Err(negative(field, swap))
        };
    }
    let whole = bytes.trunc();
    // 2^63 is the first f64 above i64::MAX.
    if whole >= 9_223_372_036_854_775_808.0 {
        return Err(DockerError::new(field, "is too large"));
    }
    Ok(whole as i64)
}

/// docker-py's `parse_bytes`: a number with an optional unit `b`, `k`, `m` or `g`
/// (1024-based, any case, optionally followed by `b`: `512mb`).
fn parse_bytes(field: &str, text: &str, swap: bool) -> Result<i64, DockerError> {
    let hint = "give bytes or a number with a unit b, k, m or g (e.g. 512m, 1.5g)";
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(DockerError::new(field, format!("is empty; {hint}")));
    }
    let mut number = trimmed;
    let mut chars = trimmed.chars().rev();
    if let (Some(last), Some(before)) = (chars.next(), chars.next())
        && last.eq_ignore_ascii_case(&'b')
        && before.is_alphabetic()
    {
        number = &trimmed[..trimmed.len() - 1];
    }
    let multiplier: f64 = match number.chars().last() {
        Some(c) if c.is_ascii_digit() || c == '.' => 1.0,
        Some(c) => {
            let multiplier = match c.to_ascii_lowercase() {
                'b' => 1.0,
                'k' => 1024.0,
                'm' => 1024.0 * 1024.0,
                'g' => 1024.0 * 1024.0 * 1024.0,
                _ => {
                    return Err(DockerError::new(
                        field,
                        format!("{text:?} has an unknown unit {c:?}; {hint}"),
                    ));
                }
            };
            number = &number[..number.len() - c.len_utf8()];
            multiplier
        }
        None => 1.0,
    };
    let number = number.trim();
    // Digits, one optional point and a leading minus only: no exponents, inf or NaN.
    let well_formed = {
        let digits = number.strip_prefix('-').unwrap_or(number);
        digits.chars().any(|c| c.is_ascii_digit())
            && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
            && digits.matches('.').count() <= 1
    };
    let value: f64 = match number.parse() {
        Ok(value) if well_formed => value,
        _ => {
            return Err(DockerError::new(
                field,
                format!("{text:?} is not a number of bytes; {hint}"),
            ));
        }
    };
    bytes_from_f64(field, value * multiplier, swap)
}

fn is_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    tag.len() <= 128
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `algorithm:encoded`, as in `sha256:4f…`.
fn is_digest(digest: &str) -> bool {
    digest.split_once(':').is_some_and(|(algorithm, encoded)| {
        !algorithm.is_empty()
            && algorithm.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '.' | '_' | '-')
            })
            && !encoded.is_empty()
            && encoded
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '=' | '_' | '-'))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    const CANARY: &str = "canary-pw-5e1d";
    const DIGEST: &str = "sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945";

    fn container() -> DockerContainer {
        DockerContainer::new("discdiver/prefect:zoom")
    }

    fn config(c: &DockerContainer) -> RunConfig {
        c.run_config().unwrap()
    }

    fn error(c: &DockerContainer) -> DockerError {
        c.run_config().unwrap_err()
    }

    fn body(c: &DockerContainer) -> Value {
        config(c).create_body()
    }

    fn registry(password: &str) -> DockerRegistry {
        DockerRegistry {
            username: "discdiver".to_owned(),
            password: password.into(),
            registry_url: "index.docker.io".to_owned(),
            reauth: true,
        }
    }

    /// The value following `flag` in the run args, for every occurrence.
    fn flag_values(args: &[String], flag: &str) -> Vec<String> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect()
    }

    #[test]
    fn env_keeps_values_with_equals_and_leaves_out_nulls() {
        let mut c = container();
        c.env.insert("A".into(), Some("1".into()));
        c.env
            .insert("URL".into(), Some("postgres://h/db?x=y".into()));
        c.env.insert("EMPTY".into(), Some(String::new()));
        c.env.insert("UNSET".into(), None);
        let run = config(&c);
        assert_eq!(
            run.create_body()["Env"],
            json!(["A=1", "EMPTY=", "URL=postgres://h/db?x=y"])
        );
        let args = run.docker_run_args();
        assert_eq!(flag_values(&args, "--env"), ["A", "EMPTY", "URL"]);
        assert!(!args.iter().any(|a| a.contains("UNSET")));
        assert_eq!(
            exposed(&run.docker_run_env().unwrap()),
            exposed_pairs(&[("A", "1"), ("EMPTY", ""), ("URL", "postgres://h/db?x=y")])
        );
        assert_eq!(
            run.docker_run_env_file().unwrap().expose_secret(),
            "A=1\nEMPTY=\nURL=postgres://h/db?x=y\n"
        );
    }

    fn exposed(env: &[(String, SecretString)]) -> Vec<(String, String)> {
        env.iter()
            .map(|(key, value)| (key.clone(), value.expose_secret().to_owned()))
            .collect()
    }

    fn exposed_pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn env_values_stay_off_the_command_line_and_out_of_debug() {
        let mut c = container();
        c.name = Some("zoom".into());
        c.env.insert("PREFECT_API_KEY".into(), Some(CANARY.into()));
        c.env
            .insert("DB_URL".into(), Some(format!("postgres://u:{CANARY}@h/db")));
        c.labels.insert("team".into(), "data".into());
        let run = config(&c);

        // The values reach the container: in the API body, and for the CLI through the
        // `docker` process's environment.
        assert_eq!(
            run.create_body()["Env"],
            json!([
                format!("DB_URL=postgres://u:{CANARY}@h/db"),
                format!("PREFECT_API_KEY={CANARY}")
            ])
        );
        assert_eq!(
            run.create.body_json()["Env"][1],
            format!("PREFECT_API_KEY={CANARY}")
        );
        assert_eq!(
            exposed(&run.docker_run_env().unwrap()),
            exposed_pairs(&[
                ("DB_URL", &format!("postgres://u:{CANARY}@h/db")),
                ("PREFECT_API_KEY", CANARY)
            ])
        );

        // But only the names are in the arguments and in Debug.
        let args = run.docker_run_args();
        assert_eq!(flag_values(&args, "--env"), ["DB_URL", "PREFECT_API_KEY"]);
        assert_eq!(flag_values(&args, "--label"), ["team=data"]);
        let env = &run.create.body.env;
        for text in [
            args.join(" "),
            format!("{run:?}"),
            format!("{run:#?}"),
            format!("{:?}", run.create),
            format!("{:#?}", run.create),
            format!("{:?}", run.create.body),
            format!("{:#?}", run.create.body),
            format!("{env:?}"),
            format!("{:?}", run.docker_run_env()),
            format!("{:?}", run.docker_run_env_file()),
            run.docker_run_args_with_env_file(Path::new("/run/zoom.env"))
                .join(" "),
        ] {
            assert!(!text.contains(CANARY), "{text}");
        }
        assert_eq!(
            format!("{env:?}"),
            r#"["DB_URL=********", "PREFECT_API_KEY=********"]"#
        );
        assert!(format!("{run:?}").contains("PREFECT_API_KEY=********"));
        assert_eq!(
            env.keys().collect::<Vec<_>>(),
            ["DB_URL", "PREFECT_API_KEY"]
        );
        assert_eq!(env.len(), 2);
        assert!(!env.is_empty());
    }

    #[test]
    fn env_file_carries_the_values_off_the_command_line() {
        let mut c = container();
        c.name = Some("zoom".into());
        c.env.insert("PREFECT_API_KEY".into(), Some(CANARY.into()));
        c.env
            .insert("PATH".into(), Some(format!("/opt/{CANARY}/bin")));
        c.env
            .insert("SPACED".into(), Some(format!("  {CANARY} = x # y ")));
        let run = config(&c);

        let text = run.docker_run_env_file().unwrap();
        assert_eq!(
            text.expose_secret(),
            format!(
                "PATH=/opt/{CANARY}/bin\nPREFECT_API_KEY={CANARY}\nSPACED=  {CANARY} = x # y \n"
            )
        );

        let path = Path::new("/run/user/1000/zoom env.env");
        let args = run.docker_run_args_with_env_file(path);
        assert_eq!(
            flag_values(&args, "--env-file"),
            ["/run/user/1000/zoom env.env"]
        );
        assert!(flag_values(&args, "--env").is_empty());
        assert_eq!(flag_values(&args, "--name"), ["zoom"]);
        for text in [
            args.join(" "),
            run.docker_run_args().join(" "),
            format!("{text:?}"),
            format!("{:?}", run.docker_run_env_file()),
            format!("{run:?}"),
            format!("{run:#?}"),
        ] {
            assert!(!text.contains(CANARY), "{text}");
        }
    }

    #[test]
    fn env_file_refuses_what_it_cannot_carry() {
        for value in [
            format!("{CANARY}\nINJECTED=1"),
            format!("{CANARY}\r"),
            format!("a\r\n{CANARY}"),
        ] {
            let mut c = container();
            c.env.insert("OK".into(), Some("fine".into()));
            c.env.insert("MULTI".into(), Some(value.clone()));
            let run = config(&c);
            // The Engine API carries it.
            assert_eq!(run.create_body()["Env"][0], format!("MULTI={value}"));
            let err = run.docker_run_env_file().unwrap_err();
            assert_eq!(err.field, "env.MULTI");
            assert!(err.message.contains("line break"), "{err}");
            assert!(err.message.contains("create_body"), "{err}");
            assert!(!err.to_string().contains(CANARY), "{err}");
            assert!(!format!("{err:?}").contains(CANARY), "{err:?}");
        }

        for key in [
            "#COMMENT",
            "A B",
            "TAB\tKEY",
            " LEAD",
            "A\nB",
            "\u{feff}BOM",
        ] {
            let mut c = container();
            c.env.insert(key.into(), Some(CANARY.into()));
            let run = config(&c);
            let err = run.docker_run_env_file().unwrap_err();
            assert_eq!(err.field, format!("env.{key}"), "{key:?}");
            assert!(!err.to_string().contains(CANARY), "{err}");
        }
    }

    #[test]
    fn process_env_refuses_names_the_docker_cli_reads() {
        for key in [
            "PATH",
            "Path",
            "HOME",
            "DOCKER_HOST",
            "DOCKER_CONTEXT",
            "DOCKER_TLS_VERIFY",
            "DOCKER_CERT_PATH",
            "DOCKER_CONFIG",
            "docker_host",
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "DYLD_INSERT_LIBRARIES",
            "HTTP_PROXY",
            "http_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "NO_PROXY",
            "no_proxy",
            "ALL_PROXY",
            "all_proxy",
            "TMPDIR",
            "XDG_CONFIG_HOME",
            "SSL_CERT_FILE",
            "SSL_CERT_DIR",
            "GODEBUG",
        ] {
            assert!(is_read_by_docker_cli(key), "{key}");
            let mut c = container();
            c.env.insert("APP_SETTING".into(), Some("1".into()));
            c.env.insert(key.into(), Some(CANARY.into()));
            let run = config(&c);
            let err = run.docker_run_env().unwrap_err();
            assert_eq!(err.field, format!("env.{key}"));
            assert!(err.message.contains(key), "{err}");
            assert!(err.message.contains("env-file"), "{err}");
            assert!(err.message.contains("Engine API"), "{err}");
            assert!(!err.to_string().contains(CANARY), "{err}");
            // The other routes carry it.
            assert!(
                run.docker_run_env_file()
                    .unwrap()
                    .expose_secret()
                    .contains(CANARY)
            );
            assert!(run.create_body()["Env"].to_string().contains(CANARY));
        }

        for key in [
            "PREFECT_API_KEY",
            "PREFECT_API_URL",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "EXTRA_PIP_PACKAGES",
            "DB_PASSWORD",
            "PYTHONPATH",
            "MY_DOCKER",
            "PROXY",
            "HOMEPAGE",
            "LD",
            "AWS_SECRET_ACCESS_KEY",
        ] {
            assert!(!is_read_by_docker_cli(key), "{key}");
            let mut c = container();
            c.env.insert(key.into(), Some(CANARY.into()));
            assert_eq!(
                exposed(&config(&c).docker_run_env().unwrap()),
                exposed_pairs(&[(key, CANARY)])
            );
        }
    }

    #[test]
    fn environments_compare_by_keys_and_values() {
        let env = |pairs: &[(&str, &str)]| -> Environment {
            pairs
                .iter()
                .map(|(key, value)| ((*key).to_owned(), SecretString::from(*value)))
                .collect()
        };
        assert_eq!(env(&[("A", "1")]), env(&[("A", "1")]));
        assert_ne!(env(&[("A", "1")]), env(&[("A", "2")]));
        assert_ne!(env(&[("A", "1")]), env(&[("B", "1")]));
        assert_ne!(env(&[("A", "1")]), env(&[("A", "1"), ("B", "2")]));
        assert!(Environment::default().is_empty());
        assert_eq!(
            serde_json::to_value(env(&[("A", "x=y"), ("B", "")])).unwrap(),
            json!(["A=x=y", "B="])
        );

        let mut c = container();
        c.env.insert("K".into(), Some("1".into()));
        let run = config(&c);
        assert_eq!(run.clone(), run);
        c.env.insert("K".into(), Some("2".into()));
        assert_ne!(config(&c), run);
    }

    #[test]
    fn env_values_with_nul_are_refused_without_the_value() {
        let mut c = container();
        c.env
            .insert("SECRET".into(), Some(format!("{CANARY}\0tail")));
        let err = error(&c);
        assert_eq!(err.field, "env");
        assert!(err.message.contains("SECRET"), "{err}");
        assert!(!err.to_string().contains(CANARY), "{err}");
        assert!(!format!("{err:?}").contains(CANARY), "{err:?}");
    }

    #[test]
    fn env_names_must_be_non_empty_without_equals() {
        let mut c = container();
        c.env.insert("A=B".into(), Some(CANARY.into()));
        let err = error(&c);
        assert_eq!(err.field, "env");
        assert!(err.message.contains("A=B"), "{err}");
        assert!(!err.to_string().contains(CANARY));

        let mut c = container();
        c.env.insert(String::new(), Some("x".into()));
        assert_eq!(error(&c).field, "env");
    }

    #[test]
    fn labels_go_to_body_and_args() {
        let mut c = container();
        c.labels.insert("io.prefect.flow".into(), "etl".into());
        c.labels.insert("team".into(), "data=eng".into());
        let run = config(&c);
        assert_eq!(
            run.create_body()["Labels"],
            json!({"io.prefect.flow": "etl", "team": "data=eng"})
        );
        assert_eq!(
            flag_values(&run.docker_run_args(), "--label"),
            ["io.prefect.flow=etl", "team=data=eng"]
        );

        let mut c = container();
        c.labels.insert("a=b".into(), "c".into());
        assert_eq!(error(&c).field, "labels");
    }

    #[test]
    fn name_goes_to_the_query_and_args() {
        let mut c = container();
        c.name = Some("zoom-flow_1.a".into());
        let run = config(&c);
        assert_eq!(run.create_path(), "/containers/create?name=zoom-flow_1.a");
        assert_eq!(run.create.name.as_deref(), Some("zoom-flow_1.a"));
        assert_eq!(
            flag_values(&run.docker_run_args(), "--name"),
            ["zoom-flow_1.a"]
        );
        assert!(run.create_body().get("Name").is_none());

        c.name = Some("/zoom".into());
        assert_eq!(config(&c).create_path(), "/containers/create?name=%2Fzoom");

        c.name = None;
        let run = config(&c);
        assert_eq!(run.create_path(), "/containers/create");
        assert!(!run.docker_run_args().contains(&"--name".to_owned()));
    }

    #[test]
    fn invalid_names_are_refused() {
        for bad in [
            "",
            "a",
            "_zoom",
            "-zoom",
            "zoom flow",
            "zoom/flow",
            "zöom",
            "a&b=c",
        ] {
            let mut c = container();
            c.name = Some(bad.into());
            let err = error(&c);
            assert_eq!(err.field, "name", "{bad:?}");
            assert!(err.to_string().contains("name"), "{err}");
        }
    }

    #[test]
    fn command_only_when_set() {
        let c = container();
        let run = config(&c);
        assert!(run.create_body().get("Cmd").is_none());
        assert_eq!(
            run.docker_run_args().last().unwrap(),
            "discdiver/prefect:zoom"
        );

        let mut c = container();
        c.command = Some(vec!["python".into(), "-m".into(), "flows.etl".into()]);
        let run = config(&c);
        assert_eq!(
            run.create_body()["Cmd"],
            json!(["python", "-m", "flows.etl"])
        );
        let args = run.docker_run_args();
        assert_eq!(
            args[args.len() - 4..],
            ["discdiver/prefect:zoom", "python", "-m", "flows.etl"]
        );
    }

    #[test]
    fn volumes_become_binds() {
        let mut c = container();
        c.volumes = vec![
            "/data:/opt/data".into(),
            "cache:/root/.cache:ro".into(),
            "C:\\data:/data:rw,z".into(),
        ];
        let run = config(&c);
        assert_eq!(
            run.create_body()["HostConfig"]["Binds"],
            json!([
                "/data:/opt/data",
                "cache:/root/.cache:ro",
                "C:\\data:/data:rw,z"
            ])
        );
        assert_eq!(flag_values(&run.docker_run_args(), "--volume"), c.volumes);
    }

    #[test]
    fn bad_volumes_name_their_index() {
        for bad in ["/data", ":/data", "/data:", "/a:/b:", "/a:/b:ro:x", ""] {
            let mut c = container();
            c.volumes = vec!["/ok:/ok".into(), bad.into()];
            let err = error(&c);
            assert_eq!(err.field, "volumes[1]", "{bad:?}");
            assert!(err.to_string().contains("volumes[1]"));
        }
    }

    #[test]
    fn one_network_is_mode_and_endpoint() {
        let mut c = container();
        c.networks = vec!["prefect".into()];
        let run = config(&c);
        let body = run.create_body();
        assert_eq!(body["HostConfig"]["NetworkMode"], "prefect");
        assert_eq!(
            body["NetworkingConfig"],
            json!({"EndpointsConfig": {"prefect": {}}})
        );
        assert!(run.connect_networks.is_empty());
        assert_eq!(
            flag_values(&run.docker_run_args(), "--network"),
            ["prefect"]
        );
    }

    #[test]
    fn further_networks_are_connected_after_create() {
        let mut c = container();
        c.networks = vec!["front".into(), "back".into(), "db net".into()];
        let run = config(&c);
        let body = run.create_body();
        assert_eq!(body["HostConfig"]["NetworkMode"], "front");
        assert_eq!(
            body["NetworkingConfig"]["EndpointsConfig"],
            json!({"front": {}})
        );
        assert_eq!(run.connect_networks, ["back", "db net"]);
        assert_eq!(network_connect_path("db net"), "/networks/db%20net/connect");
        assert_eq!(
            network_connect_body("abc123"),
            json!({"Container": "abc123"})
        );
        assert_eq!(
            flag_values(&run.docker_run_args(), "--network"),
            ["front", "back", "db net"]
        );

        c.networks = vec!["front".into(), "front".into()];
        assert_eq!(error(&c).field, "networks[1]");
        c.networks = vec![String::new()];
        assert_eq!(error(&c).field, "networks[0]");
    }

    #[test]
    fn network_mode_wins() {
        let mut c = container();
        c.network_mode = Some("bridge".into());
        c.networks = vec!["prefect".into()];
        let run = config(&c);
        let body = run.create_body();
        assert_eq!(body["HostConfig"]["NetworkMode"], "bridge");
        assert!(body.get("NetworkingConfig").is_none());
        assert_eq!(run.connect_networks, ["prefect"]);
        assert_eq!(
            flag_values(&run.docker_run_args(), "--network"),
            ["bridge", "prefect"]
        );

        c.network_mode = Some("host".into());
        c.networks = vec![];
        let run = config(&c);
        assert_eq!(run.create_body()["HostConfig"]["NetworkMode"], "host");
        assert_eq!(flag_values(&run.docker_run_args(), "--network"), ["host"]);

        c.networks = vec!["prefect".into()];
        assert_eq!(error(&c).field, "networks");
    }

    #[test]
    fn no_network_settings_without_networks() {
        let run = config(&container());
        let body = run.create_body();
        assert!(body["HostConfig"].get("NetworkMode").is_none());
        assert!(body.get("NetworkingConfig").is_none());
        assert!(!run.docker_run_args().contains(&"--network".to_owned()));
    }

    #[test]
    fn auto_remove() {
        let mut c = container();
        let run = config(&c);
        assert_eq!(run.create_body()["HostConfig"]["AutoRemove"], false);
        assert!(!run.docker_run_args().contains(&"--rm".to_owned()));
        c.auto_remove = true;
        let run = config(&c);
        assert_eq!(run.create_body()["HostConfig"]["AutoRemove"], true);
        assert!(run.docker_run_args().contains(&"--rm".to_owned()));
    }

    fn memory_of(limit: MemoryLimit) -> Result<Option<i64>, DockerError> {
        let mut c = container();
        c.mem_limit = Some(limit);
        c.run_config().map(|r| r.create.body.host_config.memory)
    }

    #[test]
    fn mem_limit_units() {
        const MIB: i64 = 1024 * 1024;
        let text = |s: &str| memory_of(MemoryLimit::Text(s.into())).unwrap();
        assert_eq!(
            memory_of(MemoryLimit::Bytes(536_870_912.0)).unwrap(),
            Some(512 * MIB)
        );
        assert_eq!(
            memory_of(MemoryLimit::Bytes(10_485_760.9)).unwrap(),
            Some(10 * MIB)
        );
        assert_eq!(text("536870912"), Some(512 * MIB));
        assert_eq!(text("512m"), Some(512 * MIB));
        assert_eq!(text("512M"), Some(512 * MIB));
        assert_eq!(text("512mb"), Some(512 * MIB));
        assert_eq!(text("512MB"), Some(512 * MIB));
        assert_eq!(text("524288k"), Some(512 * MIB));
        assert_eq!(text("536870912b"), Some(512 * MIB));
        assert_eq!(text("1g"), Some(1024 * MIB));
        assert_eq!(text("1G"), Some(1024 * MIB));
        assert_eq!(text("1.5g"), Some(1536 * MIB));
        assert_eq!(text(" 2g "), Some(2048 * MIB));
        assert_eq!(text("0"), Some(0));

        let mut c = container();
        c.mem_limit = Some(MemoryLimit::Text("1g".into()));
        let run = config(&c);
        assert_eq!(
            run.create_body()["HostConfig"]["Memory"],
            json!(1_073_741_824_i64)
        );
        assert_eq!(
            flag_values(&run.docker_run_args(), "--memory"),
            ["1073741824"]
        );

        let run = config(&container());
        assert!(run.create_body()["HostConfig"].get("Memory").is_none());
        assert!(!run.docker_run_args().contains(&"--memory".to_owned()));
    }

    #[test]
    fn bad_mem_limits_name_the_field() {
        let cases = [
            MemoryLimit::Text("512x".into()),
            MemoryLimit::Text("512t".into()),
            MemoryLimit::Text("512kib".into()),
            MemoryLimit::Text(String::new()),
            MemoryLimit::Text("m".into()),
            MemoryLimit::Text("-1g".into()),
            MemoryLimit::Text("1e9".into()),
            MemoryLimit::Text("inf".into()),
            MemoryLimit::Text("1.2.3m".into()),
            MemoryLimit::Bytes(-1.0),
            MemoryLimit::Bytes(f64::NAN),
            MemoryLimit::Bytes(1e300),
            MemoryLimit::Bytes(512.0), // below Docker's 6 MiB minimum
        ];
        for limit in cases {
            let err = memory_of(limit.clone()).unwrap_err();
            assert_eq!(err.field, "mem_limit", "{limit:?}");
            assert!(err.to_string().contains("mem_limit"));
        }
        let err = memory_of(MemoryLimit::Text("512x".into())).unwrap_err();
        assert!(err.message.contains("unknown unit 'x'"), "{err}");
    }

    #[test]
    fn memswap_limit() {
        let with = |mem: Option<&str>, swap: SwapLimit| {
            let mut c = container();
            c.mem_limit = mem.map(|m| MemoryLimit::Text(m.into()));
            c.memswap_limit = Some(swap);
            c.run_config()
        };
        let gib = 1_073_741_824_i64;
        let run = with(Some("512m"), SwapLimit::Bytes(-1)).unwrap();
        assert_eq!(run.create_body()["HostConfig"]["MemorySwap"], json!(-1));
        assert_eq!(flag_values(&run.docker_run_args(), "--memory-swap"), ["-1"]);
        assert_eq!(
            with(None, SwapLimit::Text("-1".into()))
                .unwrap()
                .create
                .body
                .host_config
                .memory_swap,
            Some(-1)
        );
        let run = with(Some("512m"), SwapLimit::Text("1g".into())).unwrap();
        assert_eq!(run.create.body.host_config.memory_swap, Some(gib));
        assert_eq!(
            flag_values(&run.docker_run_args(), "--memory-swap"),
            ["1073741824"]
        );
        assert_eq!(
            with(Some("1g"), SwapLimit::Bytes(gib))
                .unwrap()
                .create
                .body
                .host_config
                .memory_swap,
            Some(gib)
        );

        let err = with(Some("1g"), SwapLimit::Text("512m".into())).unwrap_err();
        assert_eq!(err.field, "memswap_limit");
        assert!(err.message.contains("less than mem_limit"), "{err}");
        for bad in [
            with(None, SwapLimit::Text("1g".into())),
            with(Some("1g"), SwapLimit::Bytes(-2)),
            with(Some("1g"), SwapLimit::Text("-2g".into())),
            with(Some("1g"), SwapLimit::Text("2q".into())),
        ] {
            assert_eq!(bad.unwrap_err().field, "memswap_limit");
        }
    }

    #[test]
    fn privileged() {
        let mut c = container();
        assert_eq!(body(&c)["HostConfig"]["Privileged"], false);
        assert!(
            !config(&c)
                .docker_run_args()
                .contains(&"--privileged".to_owned())
        );
        c.privileged = true;
        assert_eq!(body(&c)["HostConfig"]["Privileged"], true);
        assert!(
            config(&c)
                .docker_run_args()
                .contains(&"--privileged".to_owned())
        );
    }

    fn pull_of(image: &str, policy: Option<ImagePullPolicy>) -> RunConfig {
        let mut c = DockerContainer::new(image);
        c.image_pull_policy = policy;
        config(&c)
    }

    #[test]
    fn explicit_pull_policies() {
        for (policy, flag, absent, present) in [
            (ImagePullPolicy::Always, "always", true, true),
            (ImagePullPolicy::IfNotPresent, "missing", true, false),
            (ImagePullPolicy::Never, "never", false, false),
        ] {
            for image in ["img", "img:latest", "img:1.0"] {
                let run = pull_of(image, Some(policy));
                assert_eq!(run.pull, policy);
                assert_eq!(flag_values(&run.docker_run_args(), "--pull"), [flag]);
                assert_eq!(run.should_pull(false), absent);
                assert_eq!(run.should_pull(true), present);
            }
        }
    }

    #[test]
    fn implied_pull_policies() {
        use ImagePullPolicy::{Always, IfNotPresent};
        let digested = format!("flows@{DIGEST}");
        let tagged_digested = format!("flows:latest@{DIGEST}");
        let hosted_digested = format!("localhost:5000/flows@{DIGEST}");
        for (image, policy, repository, reference) in [
            ("prefecthq/prefect", Always, "prefecthq/prefect", "latest"),
            (
                "prefecthq/prefect:latest",
                Always,
                "prefecthq/prefect",
                "latest",
            ),
            (
                "discdiver/prefect:zoom",
                IfNotPresent,
                "discdiver/prefect",
                "zoom",
            ),
            (
                "localhost:5000/flows",
                Always,
                "localhost:5000/flows",
                "latest",
            ),
            (
                "localhost:5000/flows:latest",
                Always,
                "localhost:5000/flows",
                "latest",
            ),
            (
                "localhost:5000/team/flows:v2",
                IfNotPresent,
                "localhost:5000/team/flows",
                "v2",
            ),
            (digested.as_str(), IfNotPresent, "flows", DIGEST),
            (tagged_digested.as_str(), IfNotPresent, "flows", DIGEST),
            (
                hosted_digested.as_str(),
                IfNotPresent,
                "localhost:5000/flows",
                DIGEST,
            ),
        ] {
            let run = pull_of(image, None);
            assert_eq!(run.pull, policy, "{image}");
            assert_eq!(run.image.repository, repository, "{image}");
            assert_eq!(run.image.pull_reference(), reference, "{image}");
            assert_eq!(run.create_body()["Image"], image, "{image}");
        }
    }

    #[test]
    fn pull_paths() {
        assert_eq!(
            pull_of("discdiver/prefect:zoom", None).pull_path(),
            "/images/create?fromImage=discdiver%2Fprefect&tag=zoom"
        );
        assert_eq!(
            pull_of("localhost:5000/flows", None).pull_path(),
            "/images/create?fromImage=localhost%3A5000%2Fflows&tag=latest"
        );
        assert_eq!(
            pull_of(&format!("flows:1.0@{DIGEST}"), None).pull_path(),
            format!(
                "/images/create?fromImage=flows&tag=sha256%3A{}",
                &DIGEST[7..]
            )
        );
        let image = ImageRef::parse("ghcr.io/org/img:2.1").unwrap();
        assert_eq!(
            image,
            ImageRef {
                repository: "ghcr.io/org/img".into(),
                tag: Some("2.1".into()),
                digest: None,
            }
        );
    }

    #[test]
    fn bad_images_are_refused() {
        for bad in [
            "",
            "img:",
            "img@",
            "img@sha256",
            "img@:abc",
            "-img",
            "my img",
            "img:a/b:",
            "/img",
            "img/",
            ":tag",
            "img:.x",
        ] {
            let err = ImageRef::parse(bad).unwrap_err();
            assert_eq!(err.field, "image", "{bad:?}");
            assert_eq!(error(&DockerContainer::new(bad)).field, "image");
        }
    }

    #[test]
    fn registry_auth_header_is_url_safe_base64_json() {
        // Five '?' (0x3F) and five '>' (0x3E) in a row give '/' and '+' in standard base64.
        let password = "a?????>>>>>b";
        let mut c = container();
        c.image_registry = Some(registry(password));
        let run = config(&c);
        let header = run.registry_auth().unwrap().expose_secret();
        assert!(!header.contains('+') && !header.contains('/'), "{header}");
        let plain = URL_SAFE.decode(header).unwrap();
        let standard = STANDARD.encode(&plain);
        assert!(
            standard.contains('+') && standard.contains('/'),
            "{standard}"
        );
        let decoded: Value = serde_json::from_slice(&plain).unwrap();
        assert_eq!(
            decoded,
            json!({"username": "discdiver", "password": password, "serveraddress": "index.docker.io"})
        );
        assert_eq!(run.login_password().unwrap().expose_secret(), password);
        let login = run.registry().unwrap();
        assert_eq!(login.username, "discdiver");
        assert_eq!(login.server_address, "index.docker.io");
        assert!(login.reauth);

        let run = config(&container());
        assert!(run.registry_auth().is_none());
        assert!(run.login_password().is_none());
        assert!(run.registry().is_none());
    }

    #[test]
    fn registry_fields_are_checked() {
        let mut c = container();
        let mut r = registry(CANARY);
        r.username = " ".into();
        c.image_registry = Some(r);
        assert_eq!(error(&c).field, "image_registry.username");

        let mut r = registry(CANARY);
        r.registry_url = String::new();
        c.image_registry = Some(r);
        assert_eq!(error(&c).field, "image_registry.registry_url");

        c.image_registry = Some(registry(""));
        assert_eq!(error(&c).field, "image_registry.password");
    }

    #[test]
    fn login_args_keep_the_password_off_the_command_line() {
        let mut c = container();
        c.image_registry = Some(registry(CANARY));
        let run = config(&c);
        assert_eq!(
            run.docker_login_args().unwrap(),
            [
                "login",
                "--username",
                "discdiver",
                "--password-stdin",
                "index.docker.io"
            ]
        );
        assert!(config(&container()).docker_login_args().is_none());
    }

    #[test]
    fn the_password_never_leaks() {
        let mut c = container();
        c.image_registry = Some(registry(CANARY));
        c.name = Some("zoom".into());
        c.env.insert("K".into(), Some("v".into()));
        let run = config(&c);
        let header = run.registry_auth().unwrap().expose_secret().to_owned();
        for text in [
            format!("{run:?}"),
            format!("{run:#?}"),
            format!("{:?}", run.registry()),
            format!("{:?}", run.registry_auth()),
            run.create_body().to_string(),
            run.create_path(),
            run.pull_path(),
            run.docker_run_args().join(" "),
            run.docker_login_args().unwrap().join(" "),
        ] {
            assert!(!text.contains(CANARY), "{text}");
            assert!(!text.contains(&header), "{text}");
        }

        // Errors raised while credentials are present never carry the password.
        let mut bad_user = c.clone();
        bad_user.image_registry = Some(DockerRegistry {
            username: String::new(),
            ..registry(CANARY)
        });
        let mut bad_url = c.clone();
        bad_url.image_registry = Some(DockerRegistry {
            registry_url: String::new(),
            ..registry(CANARY)
        });
        let mut bad_kind = c.clone();
        bad_kind.kind = "process".into();
        let mut bad_memory = c.clone();
        bad_memory.mem_limit = Some(MemoryLimit::Text("1x".into()));
        for bad in [bad_user, bad_url, bad_kind, bad_memory] {
            let err = error(&bad);
            assert!(!err.to_string().contains(CANARY), "{err}");
            assert!(!format!("{err:?}").contains(CANARY), "{err:?}");
        }
    }

    #[test]
    fn kind_must_be_docker_container() {
        let mut c = container();
        c.kind = "process".into();
        let err = error(&c);
        assert_eq!(err.field, "type");
        assert!(err.message.contains("docker-container"));
    }

    #[test]
    fn run_configs_compare_and_clone() {
        let mut c = container();
        c.image_registry = Some(registry(CANARY));
        let run = config(&c);
        assert_eq!(run.clone(), run);
        c.image_registry = Some(registry("other"));
        assert_ne!(config(&c), run);
    }

    #[test]
    fn the_course_block() {
        // The zoomcamp's `zoom` block: DockerContainer(image="discdiver/prefect:zoom",
        // image_pull_policy="ALWAYS", auto_remove=True), as the server stores it.
        let block: DockerContainer = serde_json::from_value(json!({
            "type": "docker-container",
            "env": {},
            "labels": {},
            "name": null,
            "command": null,
            "image": "discdiver/prefect:zoom",
            "image_pull_policy": "ALWAYS",
            "image_registry": null,
            "networks": [],
            "network_mode": null,
            "auto_remove": true,
            "volumes": [],
            "stream_output": true,
            "memswap_limit": null,
            "mem_limit": null,
            "privileged": false
        }))
        .unwrap();
        let run = block.run_config().unwrap();
        assert_eq!(
            run.create_body(),
            json!({
                "Image": "discdiver/prefect:zoom",
                "Env": [],
                "Labels": {},
                "HostConfig": {"AutoRemove": true, "Binds": [], "Privileged": false}
            })
        );
        assert_eq!(run.create_path(), "/containers/create");
        assert_eq!(run.pull, ImagePullPolicy::Always);
        assert_eq!(
            run.pull_path(),
            "/images/create?fromImage=discdiver%2Fprefect&tag=zoom"
        );
        assert!(run.stream_output);
        assert!(run.connect_networks.is_empty());
        assert!(run.registry_auth().is_none());
        assert_eq!(
            run.docker_run_args(),
            ["run", "--pull", "always", "--rm", "discdiver/prefect:zoom"]
        );
        assert!(run.docker_run_env().unwrap().is_empty());
        assert_eq!(run.docker_run_env_file().unwrap().expose_secret(), "");
        assert_eq!(
            run.docker_run_args_with_env_file(Path::new("/tmp/zoom.env")),
            [
                "run",
                "--env-file",
                "/tmp/zoom.env",
                "--pull",
                "always",
                "--rm",
                "discdiver/prefect:zoom"
            ]
        );
    }

    #[test]
    fn a_full_block() {
        let mut c = DockerContainer::new("discdiver/prefect:zoom");
        c.name = Some("etl-web-to-gcs".into());
        c.command = Some(vec!["python".into(), "-m".into(), "prefect.engine".into()]);
        c.env = BTreeMap::from([
            ("EXTRA_PIP_PACKAGES".into(), Some("pandas pyarrow".into())),
            ("PREFECT_LOGGING_LEVEL".into(), None),
        ]);
        c.labels = BTreeMap::from([("course".into(), "zoomcamp".into())]);
        c.volumes = vec!["/home/me/data:/opt/prefect/data:ro".into()];
        c.networks = vec!["prefect".into(), "db".into()];
        c.auto_remove = true;
        c.mem_limit = Some(MemoryLimit::Text("2g".into()));
        c.memswap_limit = Some(SwapLimit::Bytes(-1));
        c.image_registry = Some(registry(CANARY));
        let run = c.run_config().unwrap();
        assert_eq!(run, run_config(&c).unwrap());
        assert_eq!(
            run.create_body(),
            json!({
                "Image": "discdiver/prefect:zoom",
                "Cmd": ["python", "-m", "prefect.engine"],
                "Env": ["EXTRA_PIP_PACKAGES=pandas pyarrow"],
                "Labels": {"course": "zoomcamp"},
                "HostConfig": {
                    "AutoRemove": true,
                    "Binds": ["/home/me/data:/opt/prefect/data:ro"],
                    "NetworkMode": "prefect",
                    "Memory": 2_147_483_648_i64,
                    "MemorySwap": -1,
                    "Privileged": false
                },
                "NetworkingConfig": {"EndpointsConfig": {"prefect": {}}}
            })
        );
        assert_eq!(run.create_path(), "/containers/create?name=etl-web-to-gcs");
        assert_eq!(run.connect_networks, ["db"]);
        assert_eq!(run.pull, ImagePullPolicy::IfNotPresent);
        assert_eq!(
            run.docker_run_args(),
            [
                "run",
                "--name",
                "etl-web-to-gcs",
                "--env",
                "EXTRA_PIP_PACKAGES",
                "--label",
                "course=zoomcamp",
                "--volume",
                "/home/me/data:/opt/prefect/data:ro",
                "--network",
                "prefect",
                "--network",
                "db",
                "--memory",
                "2147483648",
                "--memory-swap",
                "-1",
                "--pull",
                "missing",
                "--rm",
                "discdiver/prefect:zoom",
                "python",
                "-m",
                "prefect.engine",
            ]
        );
        assert_eq!(
            exposed(&run.docker_run_env().unwrap()),
            exposed_pairs(&[("EXTRA_PIP_PACKAGES", "pandas pyarrow")])
        );
        assert_eq!(
            run.docker_run_env_file().unwrap().expose_secret(),
            "EXTRA_PIP_PACKAGES=pandas pyarrow\n"
        );
        let mut with_file = run.docker_run_args();
        with_file.splice(3..5, ["--env-file".to_owned(), "/tmp/etl.env".to_owned()]);
        assert_eq!(
            run.docker_run_args_with_env_file(Path::new("/tmp/etl.env")),
            with_file
        );
    }
}
