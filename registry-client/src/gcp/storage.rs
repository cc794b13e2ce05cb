//! The `gcs-bucket` block at work: a client for the bucket's objects and directories.

use super::ATTEMPTS;
use super::GOOGLE_STORAGE;
use super::GcpCredentialsExt as _;
use super::GcpError;
use super::STORAGE_SCOPE;
use super::credentials::describe;
use crate::encoding::UNRESERVED as SEGMENT;
use block_types::catalog::GcsBucket;
use gcp_auth::TokenProvider;
use percent_encoding::utf8_percent_encode;
use serde::Deserialize;
use serde_json::Value;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt as _;

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

pub(super) fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => s.parse().map_err(serde::de::Error::custom),
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| serde::de::Error::custom("size is not a whole number")),
        _ => Ok(0),
    }
}

#[derive(Deserialize)]
pub(super) struct Listing {
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

    pub(super) fn folder_prefix(&self, folder: Option<&str>) -> Result<String, GcpError> {
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
    pub(super) fn objects_url(&self, api: &str) -> String {
        format!(
            "{}{api}/storage/v1/b/{}/o",
            self.endpoint.base(),
            utf8_percent_encode(&self.bucket, SEGMENT)
        )
    }

    pub(super) fn object_url(&self, name: &str) -> String {
        format!(
            "{}/{}",
            self.objects_url(""),
            utf8_percent_encode(name, SEGMENT)
        )
    }

    /// Sends a request, trying again after a 429, a server error, a refused connection
    /// or a timeout (up to [`ATTEMPTS`] in all), and gives the last answer whatever its
    /// status.
    pub(super) async fn exchange(
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
    pub(super) async fn send(
        &self,
        action: &str,
        build: impl Fn() -> reqwest::RequestBuilder + Send + Sync,
    ) -> Result<reqwest::Response, GcpError> {
        let answer = self.exchange(action, build).await?;
        success(answer.response, action).await
    }

    pub(super) fn not_found(&self, name: &str, error: GcpError) -> GcpError {
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

    pub(super) async fn download_name(&self, name: &str, to: &Path) -> Result<PathBuf, GcpError> {
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

    pub(super) async fn list_prefix(&self, prefix: &str) -> Result<Vec<Blob>, GcpError> {
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

    pub(super) async fn write_name(&self, name: &str, content: Vec<u8>) -> Result<(), GcpError> {
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
pub(super) fn safe_join(base: &Path, relative: &str) -> Option<PathBuf> {
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
pub(super) fn hidden_prefix(file_name: &OsStr) -> OsString {
    let mut prefix = OsString::from(".");
    prefix.push(file_name);
    prefix.push(".");
    prefix
}

/// Runs blocking file work off the runtime's threads.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(std::io::Error::other)?
}

/// A response, whatever its status; `retried` when it answers a retry after an attempt
/// that may have been carried out (a server error or a timeout; not a 429 nor a refused
/// connection).
pub(super) struct Answer {
    response: reqwest::Response,
    retried: bool,
}

/// `response` when it is a success, else [`GcpError::Http`] with the service's words.
pub(super) async fn success(
    response: reqwest::Response,
    action: &str,
) -> Result<reqwest::Response, GcpError> {
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
pub(super) async fn walk(root: &Path) -> Result<Vec<PathBuf>, GcpError> {
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

pub(super) fn brief(text: &str) -> String {
    let text = text.trim();
    let mut end = text.len().min(300);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

pub(super) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
