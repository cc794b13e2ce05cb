//! The HTTP client: loads with retries, errors in words, and an optional cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use block_types::model::BlockDocument;
use block_types::{Block, SecretMap};
use reqwest::StatusCode;
use secrecy::ExposeSecret as _;
use serde_json::Value;
use uuid::Uuid;

use crate::config::Config;
use crate::error::Error;

/// Attempts of an idempotent request (connection errors, 429 and 503 are retried).
const ATTEMPTS: u32 = 4;
/// The first retry's wait; each next one doubles.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest `Retry-After` honoured; a longer one is answered as an error at once.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// A block read without a Rust type: its identity and data (secret values in clear, held
/// in a redacting [`SecretMap`]).
#[derive(Debug, Clone)]
pub struct JsonBlock {
    /// The document's id.
    pub id: Uuid,
    /// The block type's slug.
    pub slug: String,
    /// The document's name.
    pub name: Option<String>,
    /// The data, nested blocks resolved.
    pub data: SecretMap,
}

#[derive(Debug)]
struct CacheEntry {
    etag: String,
    fetched: Instant,
    document: BlockDocument,
}

/// The optional cache: documents by URL, fresh for a time-to-live and then revalidated
/// with `If-None-Match` (the server's ETag covers the resolved tree, so a changed child
/// is seen).
#[derive(Debug)]
struct Cache {
    ttl: Duration,
    entries: Mutex<HashMap<String, CacheEntry>>,
}

/// Counters of the cache, for measurements.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Loads answered from memory without asking the server.
    pub fresh_hits: u64,
    /// Loads the server confirmed unchanged (304).
    pub revalidated: u64,
    /// Loads that read the document.
    pub misses: u64,
}

/// A client of one blocks server. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    config: Arc<Config>,
    cache: Option<Arc<Cache>>,
    stats: Arc<Mutex<CacheStats>>,
    provenance: Arc<crate::save::Provenance>,
}

impl Client {
    /// A client configured from the environment (see [`Config::from_env`]).
    pub fn from_env() -> Result<Self, Error> {
        Self::new(Config::from_env()?)
    }

    /// A client for `config`.
    pub fn new(config: Config) -> Result<Self, Error> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!(
                "blocks-registry-client/",
                env!("CARGO_PKG_VERSION")
            ));
        if let Some(path) = &config.ca_cert {
            let pem = std::fs::read(path).map_err(|e| {
                Error::Config(format!(
                    "cannot read the CA certificate {}: {e}",
                    path.display()
                ))
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                Error::Config(format!("{} is not a PEM certificate: {e}", path.display()))
            })?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder
            .build()
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            config: Arc::new(config),
            cache: None,
            stats: Arc::default(),
            provenance: Arc::default(),
        })
    }

    /// Keeps loaded documents for `ttl`; after that a load asks the server whether the
    /// document (or anything it references) changed, and reads it again only if so.
    #[must_use]
    pub fn with_cache(mut self, ttl: Duration) -> Self {
        self.cache = Some(Arc::new(Cache {
            ttl,
            entries: Mutex::default(),
        }));
        self
    }

    /// The cache's counters.
    pub fn cache_stats(&self) -> CacheStats {
        *lock(&self.stats)
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn provenance(&self) -> &crate::save::Provenance {
        &self.provenance
    }

    /// Loads the block `name` of type `T`, nested blocks resolved, in one request.
    pub async fn load<T: Block>(&self, name: &str) -> Result<T, Error> {
        let document = self.document(T::SLUG, name).await?;
        self.typed(&document, T::SLUG, name)
    }

    fn typed<T: Block>(
        &self,
        document: &BlockDocument,
        slug: &str,
        name: &str,
    ) -> Result<T, Error> {
        let value: T = typed(document, slug, name)?;
        self.provenance.remember_loaded(&value, document);
        Ok(value)
    }

    /// Loads a block by its document id; the document must be of type `T`.
    pub async fn load_by_id<T: Block>(&self, id: Uuid) -> Result<T, Error> {
        let path = format!("block_documents/{id}?include_secrets=true");
        let document = self
            .get_document(&path, || Error::NotFound {
                slug: T::SLUG.to_owned(),
                name: id.to_string(),
            })
            .await?;
        let found = document
            .block_type
            .as_ref()
            .map(|t| t.slug.clone())
            .unwrap_or_default();
        if found != T::SLUG {
            return Err(Error::WrongType {
                expected: T::SLUG.to_owned(),
                found,
                name: id.to_string(),
            });
        }
        self.typed(&document, T::SLUG, &id.to_string())
    }

    /// Loads `slug/name` (e.g. `gcs-bucket/zoom-gcs`) for types with no Rust struct.
    pub async fn load_json(&self, slug_and_name: &str) -> Result<JsonBlock, Error> {
        let (slug, name) = slug_and_name.split_once('/').ok_or_else(|| {
            Error::Config(format!(
                "{slug_and_name:?} is not <block type slug>/<block name>, e.g. gcs-bucket/zoom-gcs"
            ))
        })?;
        let document = self.document(slug, name).await?;
        Ok(JsonBlock {
            id: document.id,
            slug: slug.to_owned(),
            name: document.name,
            data: SecretMap::new(document.data),
        })
    }

    async fn document(&self, slug: &str, name: &str) -> Result<BlockDocument, Error> {
        let path = format!(
            "block_types/slug/{}/block_documents/name/{}?include_secrets=true",
            encode(slug),
            encode(name)
        );
        self.get_document(&path, || Error::NotFound {
            slug: slug.to_owned(),
            name: name.to_owned(),
        })
        .await
    }

    /// GET a document, through the cache when there is one.
    async fn get_document(
        &self,
        path: &str,
        not_found: impl Fn() -> Error,
    ) -> Result<BlockDocument, Error> {
        let url = self.url(path)?;
        let cached = self.cache.as_ref().and_then(|cache| {
            let entries = lock(&cache.entries);
            entries.get(url.as_str()).map(|e| {
                (
                    e.etag.clone(),
                    e.fetched.elapsed() < cache.ttl,
                    e.document.clone(),
                )
            })
        });
        if let Some((_, true, document)) = &cached {
            lock(&self.stats).fresh_hits += 1;
            return Ok(document.clone());
        }
        let etag = cached.as_ref().map(|(etag, _, _)| etag.clone());
        let response = self.send_idempotent(&url, etag.as_deref()).await?;
        if response.status() == StatusCode::NOT_MODIFIED
            && let (Some(cache), Some((etag, _, document))) = (&self.cache, cached)
        {
            lock(&self.stats).revalidated += 1;
            lock(&cache.entries).insert(
                url.to_string(),
                CacheEntry {
                    etag,
                    fetched: Instant::now(),
                    document: document.clone(),
                },
            );
            return Ok(document);
        }
        if response.status() == StatusCode::NOT_FOUND {
            return Err(not_found());
        }
        let response = self.check(response).await?;
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(ToOwned::to_owned);
        let document: BlockDocument = response.json().await.map_err(|e| Error::Http {
            status: 200,
            detail: format!("the answer is not a block document: {e}"),
        })?;
        lock(&self.stats).misses += 1;
        if let (Some(cache), Some(etag)) = (&self.cache, etag) {
            lock(&cache.entries).insert(
                url.to_string(),
                CacheEntry {
                    etag,
                    fetched: Instant::now(),
                    document: document.clone(),
                },
            );
        }
        Ok(document)
    }

    fn url(&self, path: &str) -> Result<url::Url, Error> {
        self.config
            .api_url
            .join(path)
            .map_err(|e| Error::Config(format!("bad request path {path:?}: {e}")))
    }

    /// Sends a GET, retrying connection errors, 429 (after `Retry-After`) and 503 with
    /// backoff. Only idempotent requests come here.
    async fn send_idempotent(
        &self,
        url: &url::Url,
        if_none_match: Option<&str>,
    ) -> Result<reqwest::Response, Error> {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let mut request = self.http.get(url.clone());
            if let Some(key) = &self.config.api_key {
                request = request.bearer_auth(key.expose_secret());
            }
            if let Some(etag) = if_none_match {
                request = request.header(reqwest::header::IF_NONE_MATCH, etag);
            }
            let outcome = request.send().await;
            let wait = match &outcome {
                Err(e) if e.is_connect() || e.is_timeout() => Some(backoff),
                Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => Some(backoff),
                Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS => {
                    retry_after(r).filter(|d| *d <= MAX_RETRY_AFTER)
                }
                _ => None,
            };
            match (wait, attempt < ATTEMPTS) {
                (Some(wait), true) => {
                    tokio::time::sleep(wait).await;
                    backoff *= 2;
                    attempt += 1;
                }
                _ => {
                    return outcome.map_err(|e| Error::Unreachable {
                        url: without_query(url),
                        source_of_url: self.config.source.clone(),
                        reason: e.without_url().to_string(),
                    });
                }
            }
        }
    }

    /// Turns an error answer into an [`Error`].
    async fn check(&self, response: reqwest::Response) -> Result<reqwest::Response, Error> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry = retry_after(&response);
        let body: Value = response.json().await.unwrap_or(Value::Null);
        Err(self.error(status, &body, retry))
    }

    /// The [`Error`] for an error answer with JSON `body`.
    pub(crate) fn error(&self, status: StatusCode, body: &Value, retry: Option<Duration>) -> Error {
        let detail = body
            .get("detail")
            .and_then(Value::as_str)
            .map(ToOwned::to_owned)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
        match status {
            StatusCode::UNAUTHORIZED => Error::Unauthorized {
                detail,
                source_of_url: self.config.source.clone(),
            },
            StatusCode::FORBIDDEN => Error::Forbidden { detail },
            StatusCode::TOO_MANY_REQUESTS => Error::RateLimited {
                retry_after_s: retry.map_or(1, |d| d.as_secs()),
            },
            other => Error::Http {
                status: other.as_u16(),
                detail,
            },
        }
    }

    /// Sends one request of the save path and returns the status, the JSON body and the
    /// `ETag`. Only a connection that never got through is retried: a write that may have
    /// landed is not sent twice.
    pub(crate) async fn write(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<(StatusCode, Value, Option<String>), Error> {
        let url = self.url(path)?;
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        let response = loop {
            let mut request = self.http.request(method.clone(), url.clone());
            if let Some(key) = &self.config.api_key {
                request = request.bearer_auth(key.expose_secret());
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            if let Some(etag) = if_match {
                request = request.header(reqwest::header::IF_MATCH, etag);
            }
            match request.send().await {
                Err(e) if e.is_connect() && attempt < ATTEMPTS => {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(Error::Unreachable {
                        url: without_query(&url),
                        source_of_url: self.config.source.clone(),
                        reason: e.without_url().to_string(),
                    });
                }
                Ok(response) => break response,
            }
        };
        let status = response.status();
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(ToOwned::to_owned);
        if status == StatusCode::TOO_MANY_REQUESTS {
            let retry = retry_after(&response);
            let value: Value = response.json().await.unwrap_or(Value::Null);
            return Err(self.error(status, &value, retry));
        }
        let value: Value = response.json().await.unwrap_or(Value::Null);
        Ok((status, value, etag))
    }
}

fn typed<T: Block>(document: &BlockDocument, slug: &str, name: &str) -> Result<T, Error> {
    T::from_data(document.data.clone()).map_err(|e| Error::Data {
        slug: slug.to_owned(),
        name: name.to_owned(),
        field: e.field.clone(),
        message: without_values(&e.message),
    })
}

/// A serde message without the offending value (it may be a secret):
/// `invalid type: string "…", expected u16` → `invalid type: expected u16`.
fn without_values(message: &str) -> String {
    for kind in ["invalid type", "invalid value", "invalid length"] {
        if message.starts_with(kind) {
            return match message.rsplit_once(", expected ") {
                Some((_, expected)) => format!("{kind}: expected {expected}"),
                None => kind.to_owned(),
            };
        }
    }
    message.to_owned()
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

fn without_query(url: &url::Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.to_string()
}

/// A path segment, percent-encoded.
pub(crate) fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
