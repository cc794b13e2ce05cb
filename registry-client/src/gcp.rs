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

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use block_types::catalog::{GcpCredentials, GcsBucket};
use block_types::secret::SecretString;
pub use gcp_auth::TokenProvider;
use percent_encoding::utf8_percent_encode;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt as _;

/// The scope a bucket client asks for.
pub const STORAGE_SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";

/// What is encoded in a path segment: an object name's `/` too, as the JSON API wants.
use crate::encoding::UNRESERVED as SEGMENT;

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

    fn check(info: &Map<String, Value>, field: &str) -> Result<Self, GcpError> {
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
fn home_dir() -> Option<PathBuf> {
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
fn expand_home(path: &Path, home: Option<&Path>) -> Result<PathBuf, GcpError> {
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
fn describe(error: &gcp_auth::Error) -> String {
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

/// Where storage requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Google Cloud Storage, with a token.
    Google,
    /// An emulator at this URL, without a token.
    Emulator(String),
    /// Another URL that wants a token (a proxy, a private endpoint).
    Authenticated(String),
}

impl Endpoint {
    /// `STORAGE_EMULATOR_HOST` when set (`http://host:port`, or `host:port`), else Google.
    pub fn from_env() -> Self {
        Self::from_emulator_host(std::env::var("STORAGE_EMULATOR_HOST").ok().as_deref())
    }

    /// What a `STORAGE_EMULATOR_HOST` value means: an emulator when set and not empty.
    pub fn from_emulator_host(value: Option<&str>) -> Self {
        match value {
            Some(host) if !host.trim().is_empty() => {
                let host = host.trim().trim_end_matches('/');
                if host.contains("://") {
                    Self::Emulator(host.to_owned())
                } else {
                    Self::Emulator(format!("http://{host}"))
                }
            }
            _ => Self::Google,
        }
    }

    /// The base URL requests go to.
    pub fn base(&self) -> &str {
        match self {
            Self::Google => GOOGLE_STORAGE,
            Self::Emulator(url) | Self::Authenticated(url) => url.trim_end_matches('/'),
        }
    }
}

/// The capabilities of a `gcs-bucket` block.
pub trait GcsBucketExt {
    /// A client for the bucket with the block's credentials, at [`Endpoint::from_env`].
    ///
    /// # Errors
    /// [`GcpError`] when the credentials are unusable.
    fn storage(&self) -> impl Future<Output = Result<Bucket, GcpError>> + Send;

    /// A client for the bucket at the given endpoint.
    ///
    /// # Errors
    /// [`GcpError`] when the credentials are unusable.
    fn storage_at(
        &self,
        endpoint: Endpoint,
    ) -> impl Future<Output = Result<Bucket, GcpError>> + Send;
}

impl GcsBucketExt for GcsBucket {
    fn storage(&self) -> impl Future<Output = Result<Bucket, GcpError>> + Send {
        self.storage_at(Endpoint::from_env())
    }

    async fn storage_at(&self, endpoint: Endpoint) -> Result<Bucket, GcpError> {
        if self.bucket.trim().is_empty() {
            return Err(GcpError::Path {
                path: String::new(),
                message: "the block names no bucket".to_owned(),
            });
        }
        // The key is checked even for an emulator, so a bad block fails early.
        let account = self.gcp_credentials.service_account()?;
        let tokens = match (&endpoint, account) {
            (Endpoint::Emulator(_), _) => None,
            (_, Some(account)) => Some(account.token_provider()),
            (_, None) => Some(self.gcp_credentials.token_provider().await?),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| GcpError::Unreachable {
                endpoint: endpoint.base().to_owned(),
                action: "set up".to_owned(),
                reason: e.to_string(),
            })?;
        let folder = self.bucket_folder.trim_matches('/');
        Ok(Bucket {
            http,
            endpoint,
            bucket: self.bucket.clone(),
            folder: if folder.is_empty() {
                String::new()
            } else {
                format!("{folder}/")
            },
            tokens,
        })
    }
}

/// An object in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Blob {
    /// The full object name.
    pub name: String,
    /// Its size in bytes.
    #[serde(default, deserialize_with = "size")]
    pub size: u64,
    /// Its content type.
    #[serde(default, rename = "contentType")]
    pub content_type: Option<String>,
    /// Its MD5, base64, when the service gives one.
    #[serde(default, rename = "md5Hash")]
    pub md5_hash: Option<String>,
}

fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => s.parse().map_err(serde::de::Error::custom),
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| serde::de::Error::custom("size is not a whole number")),
        _ => Ok(0),
    }
}

#[derive(Deserialize)]
struct Listing {
    #[serde(default)]
    items: Vec<Blob>,
    #[serde(default, rename = "nextPageToken")]
    next_page_token: Option<String>,
}

/// A client for one bucket. Paths are relative to the block's `bucket_folder`.
#[derive(Clone)]
pub struct Bucket {
    http: reqwest::Client,
    endpoint: Endpoint,
    bucket: String,
    folder: String,
    tokens: Option<Arc<dyn TokenProvider>>,
}

impl fmt::Debug for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bucket")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("folder", &self.folder)
            .field("authenticated", &self.tokens.is_some())
            .finish()
    }
}

impl Bucket {
    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.bucket
    }

    /// The folder paths are relative to (`""` or ending in `/`).
    pub fn folder(&self) -> &str {
        &self.folder
    }

    /// Where requests go.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The full object name of `path`: the block's folder joined with it. A path that
    /// already starts with the folder is taken as it is, as Prefect does.
    ///
    /// # Errors
    /// [`GcpError::Path`] for an empty path or one with `.` or `..` segments.
    pub fn resolve(&self, path: &str) -> Result<String, GcpError> {
        let trimmed = path.trim_start_matches('/');
        let bad = |message: &str| GcpError::Path {
            path: path.to_owned(),
            message: message.to_owned(),
        };
        if trimmed.is_empty() {
            return Err(bad("is empty; name an object"));
        }
        if trimmed.split('/').any(|s| s == "." || s == "..") {
            return Err(bad("has . or .. segments; object names are plain paths"));
        }
        if !self.folder.is_empty() && trimmed.starts_with(&self.folder) {
            return Ok(trimmed.to_owned());
        }
        Ok(format!("{}{trimmed}", self.folder))
    }

    fn folder_prefix(&self, folder: Option<&str>) -> Result<String, GcpError> {
        match folder
            .map(|f| f.trim_matches('/'))
            .filter(|f| !f.is_empty())
        {
            None => Ok(self.folder.clone()),
            Some(f) => Ok(format!("{}/", self.resolve(f)?)),
        }
    }

    /// The bucket's objects collection: `{base}{api}/storage/v1/b/{bucket}/o`, where `api` is
    /// `""` for metadata, downloads and listings, `"/upload"` for uploads.
    fn objects_url(&self, api: &str) -> String {
        format!(
            "{}{api}/storage/v1/b/{}/o",
            self.endpoint.base(),
            utf8_percent_encode(&self.bucket, SEGMENT)
        )
    }

    fn object_url(&self, name: &str) -> String {
        format!(
            "{}/{}",
            self.objects_url(""),
            utf8_percent_encode(name, SEGMENT)
        )
    }

    /// Sends a request, trying again after a 429, a server error, a refused connection
    /// or a timeout (up to [`ATTEMPTS`] in all), and gives the last answer whatever its
    /// status.
    async fn exchange(
        &self,
        action: &str,
        build: impl Fn() -> reqwest::RequestBuilder + Send + Sync,
    ) -> Result<Answer, GcpError> {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 1;
        let mut retried = false;
        loop {
            let mut request = build();
            if let Some(tokens) = &self.tokens {
                let token = tokens
                    .token(&[STORAGE_SCOPE])
                    .await
                    .map_err(|e| GcpError::Token(describe(&e)))?;
                request = request.bearer_auth(token.as_str());
            }
            match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let again = status == reqwest::StatusCode::TOO_MANY_REQUESTS
                        || status.is_server_error();
                    if !again || attempt >= ATTEMPTS {
                        return Ok(Answer { response, retried });
                    }
                    // The service may have acted before failing; a 429 means it did not.
                    retried |= status.is_server_error();
                }
                Err(e) if attempt >= ATTEMPTS || !(e.is_connect() || e.is_timeout()) => {
                    return Err(GcpError::Unreachable {
                        endpoint: self.endpoint.base().to_owned(),
                        action: action.to_owned(),
                        reason: chain(&e),
                    });
                }
                // A request that timed out may have been carried out; a refused connection
                // was not.
                Err(e) => retried |= !e.is_connect(),
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
            attempt += 1;
        }
    }

    /// As [`Bucket::exchange`], with any answer but a success made an error.
    async fn send(
        &self,
        action: &str,
        build: impl Fn() -> reqwest::RequestBuilder + Send + Sync,
    ) -> Result<reqwest::Response, GcpError> {
        let answer = self.exchange(action, build).await?;
        success(answer.response, action).await
    }

    fn not_found(&self, name: &str, error: GcpError) -> GcpError {
        match error {
            GcpError::Http { status: 404, .. } => GcpError::NotFound {
                bucket: self.bucket.clone(),
                name: name.to_owned(),
            },
            other => other,
        }
    }

    /// Writes `content` to `path`, replacing what is there; returns the object's name.
    ///
    /// # Errors
    /// [`GcpError`] when the path is unusable or storage refuses.
    pub async fn write_path(&self, path: &str, content: Vec<u8>) -> Result<String, GcpError> {
        let name = self.resolve(path)?;
        self.write_name(&name, content).await?;
        Ok(name)
    }

    /// Reads the object at `path`.
    ///
    /// # Errors
    /// [`GcpError::NotFound`] when there is none; others when storage refuses.
    pub async fn read_path(&self, path: &str) -> Result<Vec<u8>, GcpError> {
        let name = self.resolve(path)?;
        let url = self.object_url(&name);
        let action = format!("download {name}");
        let response = self
            .send(&action, || self.http.get(&url).query(&[("alt", "media")]))
            .await
            .map_err(|e| self.not_found(&name, e))?;
        let body = response.bytes().await.map_err(|e| GcpError::Unreachable {
            endpoint: self.endpoint.base().to_owned(),
            action,
            reason: chain(&e),
        })?;
        Ok(body.to_vec())
    }

    /// Deletes the object at `path`.
    ///
    /// # Errors
    /// [`GcpError::NotFound`] when there is none; others when storage refuses.
    pub async fn delete_path(&self, path: &str) -> Result<(), GcpError> {
        let name = self.resolve(path)?;
        let url = self.object_url(&name);
        let action = format!("delete {name}");
        let answer = self.exchange(&action, || self.http.delete(&url)).await?;
        // An earlier attempt may have deleted the object and lost its answer: a 404 to
        // the retry means the object is gone, as asked — unless it says the bucket is
        // missing (`The specified bucket does not exist.`), which no delete explains.
        if answer.retried && answer.response.status() == reqwest::StatusCode::NOT_FOUND {
            let detail = answer.response.text().await.unwrap_or_default();
            if detail
                .to_ascii_lowercase()
                .contains("bucket does not exist")
            {
                return Err(GcpError::Http {
                    status: 404,
                    action,
                    detail: brief(&detail),
                });
            }
            return Ok(());
        }
        success(answer.response, &action)
            .await
            .map_err(|e| self.not_found(&name, e))?;
        Ok(())
    }

    /// Uploads the local file `from` to `to`; returns the object's name.
    ///
    /// # Errors
    /// [`GcpError::Io`] when the file cannot be read; others as [`Bucket::write_path`].
    pub async fn upload_from_path(
        &self,
        from: impl AsRef<Path>,
        to: &str,
    ) -> Result<String, GcpError> {
        let from = from.as_ref();
        let content = tokio::fs::read(from).await.map_err(|source| GcpError::Io {
            path: from.to_owned(),
            source,
        })?;
        self.write_path(to, content).await
    }

    /// Downloads the object at `from` to the local file `to` (its directory is created),
    /// streaming into a temporary file beside `to` that replaces `to` once complete. A
    /// failed or abandoned (dropped) download leaves no partial file and `to` as it was.
    ///
    /// # Errors
    /// [`GcpError::NotFound`], [`GcpError::Io`], or others when storage refuses.
    pub async fn download_object_to_path(
        &self,
        from: &str,
        to: impl AsRef<Path>,
    ) -> Result<PathBuf, GcpError> {
        let name = self.resolve(from)?;
        self.download_name(&name, to.as_ref()).await
    }

    async fn download_name(&self, name: &str, to: &Path) -> Result<PathBuf, GcpError> {
        let io = |source| GcpError::Io {
            path: to.to_owned(),
            source,
        };
        let Some(file_name) = to.file_name() else {
            return Err(GcpError::Path {
                path: to.display().to_string(),
                message: "names no file to download to".to_owned(),
            });
        };
        let url = self.object_url(name);
        let action = format!("download {name}");
        let mut response = self
            .send(&action, || self.http.get(&url).query(&[("alt", "media")]))
            .await
            .map_err(|e| self.not_found(name, e))?;
        let parent = match to.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) => {
                tokio::fs::create_dir_all(parent).await.map_err(io)?;
                parent.to_owned()
            }
            None => PathBuf::from("."),
        };
        // A temporary file of this download's own beside the target, renamed onto it once
        // complete. An error, or the future being dropped, deletes it (NamedTempFile's
        // drop): no partial file is left, none of the user's is overwritten, and
        // concurrent downloads to the same target do not mix their bytes.
        let prefix = hidden_prefix(file_name);
        let temp = blocking(move || {
            let mut builder = tempfile::Builder::new();
            builder.prefix(&prefix).suffix(".partial");
            // As File::create would: 0o666 less the umask, not tempfile's 0o600.
            #[cfg(unix)]
            builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
            builder.tempfile_in(parent)
        })
        .await
        .map_err(io)?;
        let mut file = tokio::fs::File::from_std(temp.as_file().try_clone().map_err(io)?);
        while let Some(chunk) = response.chunk().await.map_err(|e| GcpError::Unreachable {
            endpoint: self.endpoint.base().to_owned(),
            action: action.clone(),
            reason: chain(&e),
        })? {
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        drop(file);
        let target = to.to_owned();
        blocking(move || temp.persist(target).map(drop).map_err(|e| e.error))
            .await
            .map_err(io)?;
        Ok(to.to_owned())
    }

    /// Every object under `folder` (relative to the block's folder; `None` for the block's
    /// folder itself), following every page of the listing.
    ///
    /// # Errors
    /// [`GcpError`] when storage refuses.
    pub async fn list_blobs(&self, folder: Option<&str>) -> Result<Vec<Blob>, GcpError> {
        let prefix = self.folder_prefix(folder)?;
        self.list_prefix(&prefix).await
    }

    async fn list_prefix(&self, prefix: &str) -> Result<Vec<Blob>, GcpError> {
        let url = self.objects_url("");
        let mut blobs = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let action = format!("list {prefix}");
            let response = self
                .send(&action, || {
                    let mut request = self.http.get(&url).query(&[("prefix", prefix)]);
                    if let Some(token) = &page {
                        request = request.query(&[("pageToken", token)]);
                    }
                    request
                })
                .await?;
            let listing: Listing = response.json().await.map_err(|e| GcpError::Http {
                status: 200,
                action,
                detail: format!("the listing is not what GCS sends: {e}"),
            })?;
            blobs.extend(listing.items);
            match listing.next_page_token.filter(|t| !t.is_empty()) {
                Some(token) => page = Some(token),
                None => break,
            }
        }
        Ok(blobs)
    }

    /// Uploads every file under the local directory `local` to `to` (relative to the
    /// block's folder; `None` for the folder itself), keeping relative paths. Returns how
    /// many files were uploaded.
    ///
    /// # Errors
    /// [`GcpError::Io`] when the directory cannot be read; others as
    /// [`Bucket::write_path`].
    pub async fn put_directory(
        &self,
        local: impl AsRef<Path>,
        to: Option<&str>,
    ) -> Result<usize, GcpError> {
        let local = local.as_ref();
        let prefix = self.folder_prefix(to)?;
        let files = walk(local).await?;
        for file in &files {
            let relative = file.strip_prefix(local).unwrap_or(file);
            let name: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let content = tokio::fs::read(file).await.map_err(|source| GcpError::Io {
                path: file.clone(),
                source,
            })?;
            // `prefix` is already resolved; write it as is.
            self.write_name(&format!("{prefix}{}", name.join("/")), content)
                .await?;
        }
        Ok(files.len())
    }

    async fn write_name(&self, name: &str, content: Vec<u8>) -> Result<(), GcpError> {
        let url = self.objects_url("/upload");
        let body = bytes::Bytes::from(content);
        self.send(&format!("upload {name}"), || {
            self.http
                .post(&url)
                .query(&[("uploadType", "media"), ("name", name)])
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(body.clone())
        })
        .await?;
        Ok(())
    }

    /// Downloads every object under `from` (relative to the block's folder; `None` for the
    /// folder itself) into the local directory `local`, keeping paths relative to `from`.
    /// When `from` names an object rather than a folder, that object is downloaded into
    /// `local` under its file name. Returns the files written.
    ///
    /// # Errors
    /// [`GcpError::Path`] for an object name that would leave `local` (`..`, an absolute
    /// path), before anything is downloaded; others as
    /// [`Bucket::download_object_to_path`].
    pub async fn get_directory(
        &self,
        from: Option<&str>,
        local: impl AsRef<Path>,
    ) -> Result<Vec<PathBuf>, GcpError> {
        let local = local.as_ref();
        let exact = match from.map(|f| f.trim_matches('/')).filter(|f| !f.is_empty()) {
            Some(f) => Some(self.resolve(f)?),
            None => None,
        };
        let prefix = match &exact {
            Some(name) => name.clone(),
            None => self.folder.clone(),
        };
        // Every target is checked before anything is written.
        let mut plan = Vec::new();
        for blob in self.list_prefix(&prefix).await? {
            if blob.name.ends_with('/') {
                continue; // a folder placeholder
            }
            let relative = if exact.as_deref() == Some(blob.name.as_str()) {
                blob.name
                    .rsplit('/')
                    .next()
                    .unwrap_or(&blob.name)
                    .to_owned()
            } else if prefix.is_empty() || prefix.ends_with('/') {
                blob.name[prefix.len()..].to_owned()
            } else if let Some(rest) = blob.name.strip_prefix(&format!("{prefix}/")) {
                rest.to_owned()
            } else {
                continue; // `data/yellow2/…` when asked for `data/yellow`
            };
            let target = safe_join(local, &relative).ok_or_else(|| GcpError::Path {
                path: blob.name.clone(),
                message: format!("would be written outside {}", local.display()),
            })?;
            plan.push((blob.name, target));
        }
        let mut written = Vec::with_capacity(plan.len());
        for (name, target) in &plan {
            written.push(self.download_name(name, target).await?);
        }
        Ok(written)
    }
}

/// `base/relative` when `relative` is a plain relative path (no `..`, not absolute).
fn safe_join(base: &Path, relative: &str) -> Option<PathBuf> {
    let relative = Path::new(relative);
    if relative.as_os_str().is_empty()
        || !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return None;
    }
    Some(base.join(relative))
}

/// `.<file name>.`: the start of a download's temporary file name, hidden on Unix.
fn hidden_prefix(file_name: &OsStr) -> OsString {
    let mut prefix = OsString::from(".");
    prefix.push(file_name);
    prefix.push(".");
    prefix
}

/// Runs blocking file work off the runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(std::io::Error::other)?
}

/// A response, whatever its status; `retried` when it answers a retry after an attempt
/// that may have been carried out (a server error or a timeout; not a 429 nor a refused
/// connection).
struct Answer {
    response: reqwest::Response,
    retried: bool,
}

/// `response` when it is a success, else [`GcpError::Http`] with the service's words.
async fn success(response: reqwest::Response, action: &str) -> Result<reqwest::Response, GcpError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let detail = response.text().await.unwrap_or_default();
    Err(GcpError::Http {
        status: status.as_u16(),
        action: action.to_owned(),
        detail: brief(&detail),
    })
}

/// Every regular file under `root`, depth first, in name order; symbolic links to
/// directories are not followed.
async fn walk(root: &Path) -> Result<Vec<PathBuf>, GcpError> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        let io = |source| GcpError::Io {
            path: dir.clone(),
            source,
        };
        let mut entries = tokio::fs::read_dir(&dir).await.map_err(io)?;
        let mut children = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(io)? {
            children.push(entry.path());
        }
        children.sort();
        for child in children.into_iter().rev() {
            let meta = tokio::fs::metadata(&child)
                .await
                .map_err(|source| GcpError::Io {
                    path: child.clone(),
                    source,
                })?;
            let link = tokio::fs::symlink_metadata(&child)
                .await
                .is_ok_and(|m| m.file_type().is_symlink());
            if meta.is_dir() && !link {
                dirs.push(child);
            } else if meta.is_file() {
                files.push(child);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn brief(text: &str) -> String {
    let text = text.trim();
    let mut end = text.len().min(300);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn expand(path: &str, home: Option<&str>) -> Result<PathBuf, GcpError> {
        expand_home(Path::new(path), home.map(Path::new))
    }

    #[test]
    fn a_leading_tilde_is_the_home_directory() {
        let home = Some("/home/ana");
        assert_eq!(
            expand("~/key.json", home).unwrap(),
            Path::new("/home/ana/key.json")
        );
        assert_eq!(
            expand("~/keys/sa.json", home).unwrap(),
            Path::new("/home/ana/keys/sa.json")
        );
        assert_eq!(
            expand("~//key.json", home).unwrap(),
            Path::new("/home/ana/key.json")
        );
        assert_eq!(expand("~", home).unwrap(), Path::new("/home/ana"));
        assert_eq!(expand("~/", home).unwrap(), Path::new("/home/ana"));
        assert_eq!(
            expand("~/key.json", Some("/home/ana/")).unwrap(),
            Path::new("/home/ana/key.json")
        );
    }

    #[test]
    fn other_paths_are_left_alone() {
        for home in [Some("/home/ana"), None] {
            for path in [
                "/etc/key.json",
                "key.json",
                "./key.json",
                "keys/~/key.json",
                "/~/key.json",
                "~ana/key.json",
                "~key.json",
                "",
            ] {
                assert_eq!(expand(path, home).unwrap(), Path::new(path), "{path}");
            }
        }
    }

    #[test]
    fn a_tilde_without_a_home_names_the_field() {
        for home in [None, Some("")] {
            for path in ["~/key.json", "~"] {
                match expand(path, home) {
                    Err(GcpError::Credentials { field, message }) => {
                        assert_eq!(field, "service_account_file");
                        assert!(message.contains("HOME"), "{message}");
                        assert!(message.contains(path), "{message}");
                    }
                    other => panic!("{path} with {home:?}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn from_file_expands_the_tilde() {
        // The home directory of this process, whatever it is: the error names the
        // expanded path, never `~`.
        let Some(home) = home_dir() else {
            return;
        };
        let missing = format!("blocks-no-such-key-{}.json", uuid::Uuid::new_v4().simple());
        match ServiceAccount::from_file(&Path::new("~").join(&missing)) {
            Err(GcpError::Credentials { field, message }) => {
                assert_eq!(field, "service_account_file");
                let expanded = home.join(&missing);
                assert!(
                    message.contains(&expanded.display().to_string()),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn temporary_names_are_hidden_beside_the_target() {
        assert_eq!(
            hidden_prefix(OsStr::new("copy.bin")),
            OsString::from(".copy.bin.")
        );
    }
}
