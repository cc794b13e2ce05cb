//! The `gcp-credentials` block at work: a checked service account and access tokens.

use super::GcpError;
use super::credentials_error;
use block_types::catalog::GcpCredentials;
use block_types::secret::SecretString;
use gcp_auth::TokenProvider;
use serde_json::{Map, Value};
use std::ffi::OsStr;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// A checked service-account key. `Debug` shows the account, never the key.
#[derive(Clone)]
pub struct ServiceAccount {
    client_email: String,
    project_id: Option<String>,
    private_key_id: Option<String>,
    json: SecretString,
    /// The signer and token cache, made once when the key is checked (it also loads the
    /// TLS roots its HTTP client needs).
    signer: Arc<gcp_auth::CustomServiceAccount>,
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("project_id", &self.project_id)
            .field("private_key", &"********")
            .finish()
    }
}

impl ServiceAccount {
    /// Checks a service-account key (the contents of its JSON file): `type` is
    /// `service_account`, and `client_email`, `private_key` (PEM) and `token_uri` are
    /// present.
    ///
    /// # Errors
    /// [`GcpError::Credentials`] naming the missing or malformed field.
    pub fn from_info(info: &Map<String, Value>) -> Result<Self, GcpError> {
        Self::check(info, "service_account_info")
    }

    /// Reads and checks a service-account key file. A leading `~` (`~/keys/sa.json`)
    /// stands for the home directory (`HOME`), as in Prefect.
    ///
    /// # Errors
    /// [`GcpError::Credentials`] when the file is missing, not JSON, or not a key, or when
    /// the path starts with `~` and there is no home directory.
    pub fn from_file(path: &Path) -> Result<Self, GcpError> {
        let field = "service_account_file";
        let path = &expand_home(path, home_dir().as_deref())?;
        let text = std::fs::read_to_string(path).map_err(|e| {
            credentials_error(field, format!("cannot read {}: {e}", path.display()))
        })?;
        // A parse error could quote the key: say only where it is.
        let value: Value = serde_json::from_str(&text).map_err(|e| {
            credentials_error(
                field,
                format!(
                    "{} is not JSON (line {}, column {})",
                    path.display(),
                    e.line(),
                    e.column()
                ),
            )
        })?;
        let Value::Object(info) = value else {
            return Err(credentials_error(
                field,
                format!("{} does not hold a JSON object", path.display()),
            ));
        };
        Self::check(&info, field)
    }

    pub(super) fn check(info: &Map<String, Value>, field: &str) -> Result<Self, GcpError> {
        let text = |key: &str| -> Result<Option<&str>, GcpError> {
            match info.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(credentials_error(&format!("{field}.{key}"), "must be text")),
            }
        };
        let required = |key: &str| -> Result<&str, GcpError> {
            text(key)?.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
                credentials_error(
                    &format!("{field}.{key}"),
                    "is missing; paste the whole JSON key file of the service account",
                )
            })
        };
        match text("type")? {
            Some("service_account") => {}
            Some(other) => {
                return Err(credentials_error(
                    &format!("{field}.type"),
                    format!("is {other:?}; only service_account keys are supported here"),
                ));
            }
            None => {
                return Err(credentials_error(
                    &format!("{field}.type"),
                    "is missing; a service-account key has \"type\": \"service_account\"",
                ));
            }
        }
        let client_email = required("client_email")?;
        if !client_email.contains('@') {
            return Err(credentials_error(
                &format!("{field}.client_email"),
                "is not an email address",
            ));
        }
        let private_key = required("private_key")?;
        if !private_key.contains("-----BEGIN PRIVATE KEY-----") {
            return Err(credentials_error(
                &format!("{field}.private_key"),
                "is not a PEM private key (-----BEGIN PRIVATE KEY-----)",
            ));
        }
        required("token_uri")?;
        let json = serde_json::to_string(info)
            .map_err(|_| credentials_error(field, "cannot be written back as JSON"))?;
        // The key must also parse as RSA; gcp_auth's error names no key material.
        let signer = gcp_auth::CustomServiceAccount::from_json(&json).map_err(|e| {
            credentials_error(
                &format!("{field}.private_key"),
                format!("is not a usable RSA key ({})", describe(&e)),
            )
        })?;
        Ok(Self {
            client_email: client_email.to_owned(),
            project_id: text("project_id")?.map(str::to_owned),
            private_key_id: text("private_key_id")?.map(str::to_owned),
            json: SecretString::new(json),
            signer: Arc::new(signer),
        })
    }

    /// The account's email address.
    pub fn client_email(&self) -> &str {
        &self.client_email
    }

    /// The project the key belongs to.
    pub fn project_id(&self) -> Option<&str> {
        self.project_id.as_deref()
    }

    /// The key's id.
    pub fn private_key_id(&self) -> Option<&str> {
        self.private_key_id.as_deref()
    }

    /// The whole key file, as JSON text. Secret: hand it only to what signs with it.
    pub fn key_json(&self) -> &SecretString {
        &self.json
    }

    /// A token source for this account (tokens are cached until shortly before they
    /// expire); clones share one cache.
    pub fn token_provider(&self) -> Arc<dyn TokenProvider> {
        self.signer.clone()
    }
}

/// The home directory `~` stands for: `HOME`; on Windows, `USERPROFILE` when `HOME` is
/// not set.
pub(super) fn home_dir() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty());
    #[cfg(windows)]
    let home = home.or_else(|| std::env::var_os("USERPROFILE").filter(|h| !h.is_empty()));
    home.map(PathBuf::from)
}

/// `path` with a leading `~` component (`~`, `~/…`) replaced by `home`, as Python's
/// `os.path.expanduser` does and Prefect does to `service_account_file`. Other paths,
/// `~user/…` among them, are returned as they are.
///
/// # Errors
/// [`GcpError::Credentials`] on `service_account_file` when the path starts with `~` and
/// `home` is `None` or empty.
pub(super) fn expand_home(path: &Path, home: Option<&Path>) -> Result<PathBuf, GcpError> {
    let mut components = path.components();
    if components.next() != Some(Component::Normal(OsStr::new("~"))) {
        return Ok(path.to_owned());
    }
    let home = home.filter(|h| !h.as_os_str().is_empty()).ok_or_else(|| {
        credentials_error(
            "service_account_file",
            format!(
                "{} starts with ~, but HOME is not set; give the full path",
                path.display()
            ),
        )
    })?;
    let rest = components.as_path();
    if rest.as_os_str().is_empty() {
        Ok(home.to_owned())
    } else {
        Ok(home.join(rest))
    }
}

/// gcp_auth's error in words, without its source chain (a JSON error there could quote
/// key material).
pub(super) fn describe(error: &gcp_auth::Error) -> String {
    match error {
        gcp_auth::Error::Json(what, _) => (*what).to_owned(),
        other => other.to_string(),
    }
}

/// The capabilities of a `gcp-credentials` block.
pub trait GcpCredentialsExt {
    /// The checked service account of the block, or `None` when the block has no key
    /// (Application Default Credentials apply).
    ///
    /// # Errors
    /// [`GcpError::Credentials`] naming the field at fault.
    fn service_account(&self) -> Result<Option<ServiceAccount>, GcpError>;

    /// The project: the block's own, else the key's.
    ///
    /// # Errors
    /// As [`GcpCredentialsExt::service_account`].
    fn project_id(&self) -> Result<Option<String>, GcpError>;

    /// A token source: the block's service account, else Application Default
    /// Credentials (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud, the metadata server).
    ///
    /// # Errors
    /// [`GcpError`] when the key is unusable or no default credentials are found.
    fn token_provider(
        &self,
    ) -> impl Future<Output = Result<Arc<dyn TokenProvider>, GcpError>> + Send;
}

impl GcpCredentialsExt for GcpCredentials {
    fn service_account(&self) -> Result<Option<ServiceAccount>, GcpError> {
        match (&self.service_account_info, &self.service_account_file) {
            (Some(_), Some(_)) => Err(credentials_error(
                "service_account_info",
                "give service_account_info or service_account_file, not both",
            )),
            (Some(info), None) => ServiceAccount::from_info(info.expose_secret()).map(Some),
            (None, Some(file)) => ServiceAccount::from_file(file).map(Some),
            (None, None) => Ok(None),
        }
    }

    fn project_id(&self) -> Result<Option<String>, GcpError> {
        if let Some(project) = self.project.as_ref().filter(|p| !p.is_empty()) {
            return Ok(Some(project.clone()));
        }
        Ok(self
            .service_account()?
            .and_then(|account| account.project_id().map(str::to_owned)))
    }

    fn token_provider(
        &self,
    ) -> impl Future<Output = Result<Arc<dyn TokenProvider>, GcpError>> + Send {
        let account = self.service_account();
        async move {
            match account? {
                Some(account) => Ok(account.token_provider()),
                None => gcp_auth::provider().await.map_err(|e| {
                    GcpError::Token(format!(
                        "the block has no service-account key and no default credentials were found ({})",
                        describe(&e)
                    ))
                }),
            }
        }
    }
}
