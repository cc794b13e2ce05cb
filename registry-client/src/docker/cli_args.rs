//! The `docker` CLI side of a run: `docker login` and `docker run` arguments, the env
//! file and the names the CLI itself reads from its environment.

use std::path::Path;

use super::DockerError;
use super::RunConfig;
use super::registry::RegistryLogin;
use block_types::catalog::ImagePullPolicy;
use secrecy::{ExposeSecret as _, SecretString};

impl RunConfig {
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

    pub(super) fn run_args(&self, env: RunEnv<'_>) -> Vec<String> {
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
pub(super) enum RunEnv<'a> {
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
    pub(super) const NAMES: [&str; 11] = [
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
    pub(super) const PREFIXES: [&str; 5] = ["DOCKER_", "LD_", "DYLD_", "XDG_", "OTEL_"];
    let name = name.to_ascii_uppercase();
    NAMES.contains(&name.as_str())
        || PREFIXES.iter().any(|prefix| name.starts_with(prefix))
        || name.ends_with("_PROXY")
}

/// Whether `docker run --env-file` reads `KEY=VALUE` back as this variable: one line,
/// split at the first `=`, the name trimmed of leading whitespace and refused with any
/// inside, `#` lines skipped, a leading byte-order mark dropped, a trailing `\r` dropped.
pub(super) fn check_env_file_var(key: &str, value: &str) -> Result<(), DockerError> {
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
