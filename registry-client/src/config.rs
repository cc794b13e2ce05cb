//! Where the client finds its server and token.

use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use url::Url;

use crate::Error;

/// Where a setting came from, so an error can say what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// `BLOCKS_API_URL` / `BLOCKS_API_KEY`.
    BlocksEnv,
    /// `PREFECT_API_URL` / `PREFECT_API_KEY`.
    PrefectEnv,
    /// A profile file written by `blocks serve`.
    Profile(PathBuf),
    /// Given in code.
    Explicit,
}

impl ConfigSource {
    /// Where the token of this source is set.
    pub fn key_variable(&self) -> String {
        match self {
            Self::BlocksEnv => "BLOCKS_API_KEY".to_owned(),
            Self::PrefectEnv => "PREFECT_API_KEY".to_owned(),
            Self::Profile(path) => format!("api_key in {}", path.display()),
            Self::Explicit => "the client's configuration".to_owned(),
        }
    }
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BlocksEnv => f.write_str("BLOCKS_API_URL"),
            Self::PrefectEnv => f.write_str("PREFECT_API_URL"),
            Self::Profile(path) => write!(f, "the profile {}", path.display()),
            Self::Explicit => f.write_str("the client's configuration"),
        }
    }
}

/// The server's API URL, the token, and an optional extra CA certificate.
#[derive(Clone)]
pub struct Config {
    /// The API base URL, e.g. `http://127.0.0.1:4200/api`.
    pub api_url: Url,
    /// The bearer token.
    pub api_key: Option<SecretString>,
    /// A PEM file with CA certificates to trust besides the built-in web PKI roots (a
    /// server with a private certificate): `BLOCKS_CA_CERT`.
    pub ca_cert: Option<PathBuf>,
    /// Where `api_url` came from.
    pub source: ConfigSource,
    /// A workload identity to sign in with instead of `api_key`:
    /// `BLOCKS_IDENTITY_TOKEN_FILE` and `BLOCKS_ROLE`.
    pub identity: Option<crate::Identity>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("api_url", &{
                let mut url = self.api_url.clone();
                let _ = url.set_password(None);
                url.to_string()
            })
            .field("api_key", &self.api_key.as_ref().map(|_| "********"))
            .field("ca_cert", &self.ca_cert)
            .field("source", &self.source)
            .field("identity", &self.identity)
            .finish()
    }
}

/// The profile file, `$BLOCKS_HOME/profile.toml`: written by `blocks serve` when it creates
/// a store's first token, read by the client and the CLI. Its `Debug` output hides the key.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Profile {
    /// The API base URL, `http(s)://HOST:PORT/api`.
    pub api_url: String,
    /// The token to send as `Authorization: Bearer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

impl fmt::Debug for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Profile")
            .field("api_url", &self.api_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "********"))
            .finish()
    }
}

impl Profile {
    /// Parses a profile file's text.
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The profile file's text.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}

impl Config {
    /// A configuration given in code. The URL gets a trailing slash, so request paths
    /// join under it.
    ///
    /// ```
    /// let config = registry_client::Config::new("http://127.0.0.1:4200/api", Some("blk_x"))?;
    /// assert_eq!(config.api_url.as_str(), "http://127.0.0.1:4200/api/");
    /// assert!(!format!("{config:?}").contains("blk_x"), "Debug hides the token");
    /// assert!(registry_client::Config::new("ftp://host", None).is_err());
    /// # Ok::<(), registry_client::Error>(())
    /// ```
    pub fn new(api_url: &str, api_key: Option<&str>) -> Result<Self, Error> {
        Ok(Self {
            api_url: parse_url(api_url, &ConfigSource::Explicit)?,
            api_key: api_key.map(|k| SecretString::from(k.trim().to_owned())),
            ca_cert: None,
            source: ConfigSource::Explicit,
            identity: None,
        })
    }

    /// Signs in with a workload identity (the JWT in `token_file`, exchanged for a
    /// short-lived token of `role`) instead of a token.
    ///
    /// ```
    /// let config = registry_client::Config::new("http://127.0.0.1:4200/api", None)?
    ///     .with_identity("/var/run/secrets/tokens/blocks", "etl-loader");
    /// assert_eq!(config.identity.unwrap().role, "etl-loader");
    /// # Ok::<(), registry_client::Error>(())
    /// ```
    #[must_use]
    pub fn with_identity(
        mut self,
        token_file: impl Into<PathBuf>,
        role: impl Into<String>,
    ) -> Self {
        self.identity = Some(crate::Identity {
            token_file: token_file.into(),
            role: role.into(),
        });
        self
    }

    /// From the environment: `BLOCKS_API_URL`/`BLOCKS_API_KEY`, else
    /// `PREFECT_API_URL`/`PREFECT_API_KEY`, else `$BLOCKS_HOME/profile.toml` (default
    /// `~/.blocks/profile.toml`), the file `blocks serve` writes on its first start.
    /// `BLOCKS_CA_CERT` names an extra CA certificate.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`Config::from_env`] over any variable lookup (for tests and embedding).
    ///
    /// ```
    /// use registry_client::{Config, ConfigSource};
    ///
    /// let vars = |name: &str| match name {
    ///     "BLOCKS_API_URL" => Some("https://blocks.internal/api".to_owned()),
    ///     "BLOCKS_API_KEY" => Some("blk_x\n".to_owned()), // trimmed
    ///     "PREFECT_API_URL" => Some("http://ignored/api".to_owned()),
    ///     _ => None,
    /// };
    /// let config = Config::from_lookup(vars)?;
    /// assert_eq!(config.source, ConfigSource::BlocksEnv);
    /// assert_eq!(config.source.key_variable(), "BLOCKS_API_KEY");
    ///
    /// // Nothing set and no profile: the error says what to set.
    /// let err = Config::from_lookup(|name| (name == "BLOCKS_HOME").then(|| "/nonexistent".to_owned()))
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("BLOCKS_API_URL"));
    /// # Ok::<(), registry_client::Error>(())
    /// ```
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let mut config = Self::from_lookup_without_identity(&var)?;
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        match (set("BLOCKS_IDENTITY_TOKEN_FILE"), set("BLOCKS_ROLE")) {
            (Some(file), Some(role)) => {
                config.identity = Some(crate::Identity {
                    token_file: PathBuf::from(file.trim()),
                    role: role.trim().to_owned(),
                });
            }
            (Some(_), None) => {
                return Err(Error::Config(
                    "BLOCKS_IDENTITY_TOKEN_FILE is set but BLOCKS_ROLE is not: set the role to sign in to".to_owned(),
                ));
            }
            (None, Some(_)) => {
                return Err(Error::Config(
                    "BLOCKS_ROLE is set but BLOCKS_IDENTITY_TOKEN_FILE is not: point it at the identity token".to_owned(),
                ));
            }
            (None, None) => {}
        }
        Ok(config)
    }

    fn from_lookup_without_identity(var: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let ca_cert = var("BLOCKS_CA_CERT").map(PathBuf::from);
        for (url_var, key_var, source) in [
            ("BLOCKS_API_URL", "BLOCKS_API_KEY", ConfigSource::BlocksEnv),
            (
                "PREFECT_API_URL",
                "PREFECT_API_KEY",
                ConfigSource::PrefectEnv,
            ),
        ] {
            if let Some(url) = var(url_var).filter(|u| !u.trim().is_empty()) {
                return Self::from_parts(&url, var(key_var), ca_cert, source);
            }
        }
        let home = var("BLOCKS_HOME")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|h| Path::new(&h).join(".blocks")));
        let Some(profile) = home.map(|h| h.join("profile.toml")) else {
            return Err(Error::Config(no_config_message(None)));
        };
        let text = match std::fs::read_to_string(&profile) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Config(no_config_message(Some(&profile))));
            }
            Err(e) => {
                return Err(Error::Config(format!(
                    "cannot read {}: {e}",
                    profile.display()
                )));
            }
        };
        let parsed = Profile::parse(&text).map_err(|e| {
            Error::Config(format!(
                "{} is not a blocks profile ({}); it needs api_url and api_key",
                profile.display(),
                e.message()
            ))
        })?;
        Self::from_parts(
            &parsed.api_url,
            parsed.api_key,
            ca_cert,
            ConfigSource::Profile(profile),
        )
    }

    /// A configuration without an identity: `url` checked as coming from `source`, `key`
    /// trimmed (an empty key is none).
    fn from_parts(
        url: &str,
        key: Option<String>,
        ca_cert: Option<PathBuf>,
        source: ConfigSource,
    ) -> Result<Self, Error> {
        Ok(Self {
            api_url: parse_url(url, &source)?,
            api_key: key
                .map(|k| k.trim().to_owned())
                .filter(|k| !k.is_empty())
                .map(SecretString::from),
            ca_cert,
            source,
            identity: None,
        })
    }
}

fn no_config_message(profile: Option<&Path>) -> String {
    let tried = profile.map_or_else(String::new, |p| {
        format!(", and {} does not exist", p.display())
    });
    format!(
        "no blocks server configured: set BLOCKS_API_URL and BLOCKS_API_KEY (or PREFECT_API_URL and PREFECT_API_KEY){tried}; `blocks serve` writes that profile on its first start"
    )
}

fn parse_url(text: &str, source: &ConfigSource) -> Result<Url, Error> {
    let mut url = Url::parse(text.trim())
        .map_err(|e| Error::Config(format!("{source} is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::Config(format!(
            "{source} must be an http:// or https:// URL"
        )));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}
