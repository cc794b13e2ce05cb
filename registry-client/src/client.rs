//! The HTTP client: loads with retries, errors in words, and an optional cache.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use block_types::model::BlockDocument;
use block_types::{Block, SecretMap};
use parking_lot::Mutex;
use reqwest::StatusCode;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::Value;
use uuid::Uuid;

use crate::config::Config;
use crate::encoding::encode;
use crate::error::Error;

/// Attempts of an idempotent request (connection errors, 429 and 503 are retried).
const ATTEMPTS: u32 = 4;
/// The first retry's wait; each next one doubles.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest `Retry-After` honoured; a longer one is answered as an error at once.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// A request's precondition.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Condition<'a> {
    /// `If-None-Match`: a 304 when the entity tag still matches.
    IfNoneMatch(&'a str),
    /// `If-Match`: a 412 when it no longer does.
    IfMatch(&'a str),
}

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
    /// The document and every document its tree holds: a change to any drops the entry.
    tree: Vec<Uuid>,
}

/// The optional cache: documents by URL, fresh for a time-to-live and then revalidated
/// with `If-None-Match` (the server's ETag covers the resolved tree, so a changed child
/// is seen).
#[derive(Debug)]
pub(crate) struct Cache {
    ttl: Duration,
    entries: Mutex<HashMap<String, CacheEntry>>,
    /// Set by [`Client::watching`]: the change feed drops changed entries.
    watched: Option<Watched>,
}

/// The watching cache's link to the change feed.
#[derive(Debug, Default)]
struct Watched {
    /// A stream is open: every change from now on reaches the cache. While not, entries
    /// are revalidated on every load.
    connected: AtomicBool,
    /// Moved by every drop, so a load that raced a change does not keep what it read.
    generation: AtomicU64,
    /// A task follows the feed (set when one is started, cleared when it ends).
    started: AtomicBool,
}

impl Cache {
    /// Keeps `document` for `url`, as of now, unless the cache dropped something since
    /// `generation` (the load may have read a document that changed meanwhile).
    fn store(&self, url: &impl ToString, etag: String, document: &BlockDocument, generation: u64) {
        let mut entries = self.entries.lock();
        if self.generation() != generation {
            return;
        }
        entries.insert(
            url.to_string(),
            CacheEntry {
                etag,
                fetched: Instant::now(),
                tree: tree_of(document),
                document: document.clone(),
            },
        );
    }

    fn generation(&self) -> u64 {
        self.watched
            .as_ref()
            .map_or(0, |w| w.generation.load(Ordering::Acquire))
    }

    /// Whether an entry younger than the TTL may be served without asking the server.
    fn trusts_fresh(&self) -> bool {
        self.watched
            .as_ref()
            .is_none_or(|w| w.connected.load(Ordering::Acquire))
    }

    /// Drops the entries whose tree holds `id` (every entry when `None`).
    pub(crate) fn drop_changed(&self, id: Option<Uuid>) {
        let mut entries = self.entries.lock();
        if let Some(w) = &self.watched {
            w.generation.fetch_add(1, Ordering::AcqRel);
        }
        match id {
            Some(id) => entries.retain(|_, e| !e.tree.contains(&id)),
            None => entries.clear(),
        }
    }

    /// The feed task ended: the next load starts another.
    pub(crate) fn follower_ended(&self) {
        if let Some(w) = &self.watched {
            w.started.store(false, Ordering::Release);
        }
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        if let Some(w) = &self.watched {
            w.connected.store(connected, Ordering::Release);
        }
    }
}

/// The ids of `document` and of every document its tree holds.
fn tree_of(document: &BlockDocument) -> Vec<Uuid> {
    fn walk(
        refs: &std::collections::BTreeMap<String, block_types::model::BlockDocumentReference>,
        out: &mut Vec<Uuid>,
    ) {
        for reference in refs.values() {
            out.push(reference.block_document.id);
            walk(&reference.block_document.block_document_references, out);
        }
    }
    let mut out = vec![document.id];
    walk(&document.block_document_references, &mut out);
    out
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

/// Entity tags remembered per document, at most.
const MAX_ETAGS: usize = 10_000;

/// A client of one blocks server. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// For event streams: no limit on the whole answer, a limit on silence instead.
    stream_http: reqwest::Client,
    config: Arc<Config>,
    cache: Option<Arc<Cache>>,
    stats: Arc<Mutex<CacheStats>>,
    provenance: Arc<crate::provenance::Provenance>,
    /// The `ETag` each document had when this client last read it: `save_overwrite` makes
    /// its write conditional on it.
    etags: Arc<Mutex<HashMap<Uuid, String>>>,
    /// Signs in with the configured workload identity, if any.
    signer: Option<Arc<crate::identity::Signer>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.config)
            .field("cache_ttl", &self.cache.as_ref().map(|c| c.ttl))
            .field("stats", &self.cache_stats())
            .finish_non_exhaustive()
    }
}

/// How a request's time is bounded.
#[derive(Debug, Clone, Copy)]
enum Timeouts {
    /// 30 s for the whole request.
    Request,
    /// An event stream: no end, but 45 s without a byte (the server sends a heartbeat
    /// every 15 s) means the connection is dead.
    Stream,
}

/// The HTTP client for `config` (its CA certificate, timeouts) with a redirect policy.
fn http_client(
    config: &Config,
    redirects: reqwest::redirect::Policy,
) -> Result<reqwest::Client, Error> {
    http_client_with(config, redirects, Timeouts::Request)
}

fn http_client_with(
    config: &Config,
    redirects: reqwest::redirect::Policy,
    timeouts: Timeouts,
) -> Result<reqwest::Client, Error> {
    let builder = reqwest::Client::builder()
        .redirect(redirects)
        .connect_timeout(Duration::from_secs(5));
    let mut builder = match timeouts {
        Timeouts::Request => builder.timeout(Duration::from_secs(30)),
        Timeouts::Stream => builder.read_timeout(Duration::from_secs(45)),
    }
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
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            Error::Config(format!("{} is not a PEM certificate: {e}", path.display()))
        })?;
        if certs.is_empty() {
            return Err(Error::Config(format!(
                "{} holds no PEM certificate",
                path.display()
            )));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| {
        let file = config.ca_cert.as_ref().map_or_else(String::new, |p| {
            format!(" (with the CA certificate {})", p.display())
        });
        Error::Config(format!("cannot build the HTTP client{file}: {}", chain(&e)))
    })
}

impl Client {
    /// A client configured from the environment (see [`Config::from_env`]).
    pub fn from_env() -> Result<Self, Error> {
        Self::new(Config::from_env()?)
    }

    /// A client for `config`.
    pub fn new(mut config: Config) -> Result<Self, Error> {
        // Relative paths join under the API URL only when it ends in a slash.
        if !config.api_url.path().ends_with('/') {
            let path = format!("{}/", config.api_url.path());
            config.api_url.set_path(&path);
        }
        let http = http_client(&config, reqwest::redirect::Policy::default())?;
        let stream_http =
            http_client_with(&config, reqwest::redirect::Policy::none(), Timeouts::Stream)?;
        let signer = config
            .identity
            .clone()
            .map(|identity| {
                // The sign-in never follows a redirect: it would resend the identity token
                // to wherever the redirect points.
                http_client(&config, reqwest::redirect::Policy::none())
                    .map(|http| Arc::new(crate::identity::Signer::new(identity, http)))
            })
            .transpose()?;
        Ok(Self {
            signer,
            http,
            stream_http,
            config: Arc::new(config),
            cache: None,
            stats: Arc::default(),
            provenance: Arc::default(),
            etags: Arc::default(),
        })
    }

    /// Keeps loaded documents for `ttl`; after that a load asks the server whether the
    /// document (or anything it references) changed, and reads it again only if so. Any
    /// write through this client empties the cache.
    ///
    /// ```
    /// use std::time::Duration;
    /// use registry_client::{CacheStats, Client, Config};
    ///
    /// let client = Client::new(Config::new("http://127.0.0.1:4200/api", Some("blk_x"))?)?
    ///     .with_cache(Duration::from_secs(30));
    /// assert_eq!(client.cache_stats(), CacheStats::default());
    /// # Ok::<(), registry_client::Error>(())
    /// ```
    #[must_use]
    pub fn with_cache(mut self, ttl: Duration) -> Self {
        self.cache = Some(Arc::new(Cache {
            ttl,
            entries: Mutex::default(),
            watched: None,
        }));
        self
    }

    /// Makes the cache follow the server's change feed: an entry is dropped the moment
    /// its block, or any block it references, changes (a rotated credential is loaded
    /// fresh on the next load, however long the TTL), and everything is dropped when the
    /// server says events were missed. While the feed is not connected (before the first
    /// load, after a lost connection, if the token may not open it) every load revalidates
    /// with the server, as a TTL of zero would. Without [`Client::with_cache`] first, the
    /// cache keeps entries for five minutes. The feed is opened by the first load (inside
    /// a Tokio runtime) and closed when the last clone of this client is dropped.
    #[must_use]
    pub fn watching(self) -> Self {
        let ttl = self
            .cache
            .as_ref()
            .map_or(Duration::from_secs(300), |c| c.ttl);
        let mut client = self.with_cache(ttl);
        if let Some(cache) = &mut client.cache
            && let Some(cache) = Arc::get_mut(cache)
        {
            cache.watched = Some(Watched::default());
        }
        client
    }

    /// Whether the watching cache's change feed is connected now.
    pub fn watching_connected(&self) -> bool {
        self.cache
            .as_ref()
            .and_then(|c| c.watched.as_ref())
            .is_some_and(|w| w.connected.load(Ordering::Acquire))
    }

    pub(crate) fn stream_http(&self) -> &reqwest::Client {
        &self.stream_http
    }

    /// Opens the watching cache's feed, once.
    fn start_watching(&self) {
        let Some(cache) = &self.cache else { return };
        let Some(watched) = &cache.watched else {
            return;
        };
        if watched.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut feed = self.clone();
        // The task holds the cache weakly: it ends with the last client.
        feed.cache = None;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(crate::watch::follow(feed, Arc::downgrade(cache)));
            }
            // No runtime: no feed; loads revalidate.
            Err(_) => watched.started.store(false, Ordering::Release),
        }
    }

    /// The cache's counters.
    pub fn cache_stats(&self) -> CacheStats {
        *self.stats.lock()
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn provenance(&self) -> &crate::provenance::Provenance {
        &self.provenance
    }

    /// The `ETag` document `id` had when this client last read it.
    pub(crate) fn known_etag(&self, id: Uuid) -> Option<String> {
        self.etags.lock().get(&id).cloned()
    }

    /// Forgets what this client read of `id` (after its own write changed it).
    pub(crate) fn forget_etag(&self, id: Uuid) {
        self.etags.lock().remove(&id);
    }

    fn remember_etag(&self, id: Uuid, etag: &str) {
        let mut etags = self.etags.lock();
        if etags.len() >= MAX_ETAGS {
            etags.clear();
        }
        etags.insert(id, etag.to_owned());
    }

    /// After a write, nothing cached may be served: a parent's entry covers its children.
    pub(crate) fn after_write(&self) {
        if let Some(cache) = &self.cache {
            cache.drop_changed(None);
        }
    }

    /// Loads the block `name` of type `T`, nested blocks resolved, in one request. Secret
    /// values are asked for only when `T` has secret fields (they need a token with the
    /// `read-secrets` scope).
    pub async fn load<T: Block>(&self, name: &str) -> Result<T, Error> {
        let document = self.document(T::SLUG, name, has_secrets::<T>()).await?;
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
        let path = format!(
            "block_documents/{id}?include_secrets={}",
            has_secrets::<T>()
        );
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
        let document = self.document(slug, name, true).await?;
        Ok(JsonBlock {
            id: document.id,
            slug: slug.to_owned(),
            name: document.name,
            data: SecretMap::new(document.data),
        })
    }

    async fn document(
        &self,
        slug: &str,
        name: &str,
        secrets: bool,
    ) -> Result<BlockDocument, Error> {
        let path = format!(
            "block_types/slug/{}/block_documents/name/{}?include_secrets={secrets}",
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
        self.start_watching();
        let generation = self.cache.as_ref().map_or(0, |c| c.generation());
        let cached = self.cache.as_ref().and_then(|cache| {
            let trusted = cache.trusts_fresh();
            let entries = cache.entries.lock();
            entries.get(url.as_str()).map(|e| {
                (
                    e.etag.clone(),
                    trusted && e.fetched.elapsed() < cache.ttl,
                    e.document.clone(),
                )
            })
        });
        if let Some((_, true, document)) = &cached {
            self.stats.lock().fresh_hits += 1;
            return Ok(document.clone());
        }
        let etag = cached.as_ref().map(|(etag, _, _)| etag.clone());
        let response = self
            .request(
                &reqwest::Method::GET,
                &url,
                None,
                etag.as_deref().map(Condition::IfNoneMatch),
            )
            .await?;
        if response.status() == StatusCode::NOT_MODIFIED
            && let (Some(cache), Some((etag, _, document))) = (&self.cache, cached)
        {
            self.stats.lock().revalidated += 1;
            self.remember_etag(document.id, &etag);
            cache.store(&url, etag, &document, generation);
            return Ok(document);
        }
        if response.status() == StatusCode::NOT_FOUND {
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let detail = body
                .get("detail")
                .and_then(Value::as_str)
                .unwrap_or_default();
            // The server says "Block document not found" for a missing block; anything
            // else (a bare "Not Found") means the URL is not the blocks API.
            if detail.starts_with("Block document not found") {
                return Err(not_found());
            }
            return Err(Error::Http {
                status: 404,
                detail: format!(
                    "{} does not serve the blocks API; check the API URL (from {}), which usually ends in /api",
                    self.config.api_url, self.config.source
                ),
            });
        }
        let response = self.check(response).await?;
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(ToOwned::to_owned);
        let value: Value = response.json().await.map_err(|_| Error::Decode {
            request: format!("GET {path}"),
            at: ".".to_owned(),
            problem: "not JSON".to_owned(),
        })?;
        let document: BlockDocument = crate::error::decode(value, &format!("GET {path}"))?;
        self.stats.lock().misses += 1;
        if let Some(etag) = &etag {
            self.remember_etag(document.id, etag);
        }
        if let (Some(cache), Some(etag)) = (&self.cache, etag) {
            cache.store(&url, etag, &document, generation);
        }
        Ok(document)
    }

    /// The token to send: from the workload identity when one is configured (exchanged
    /// and renewed as needed), else the configured one.
    pub(crate) async fn bearer(&self) -> Result<Option<SecretString>, Error> {
        match &self.signer {
            Some(signer) => signer
                .token(&self.config.api_url, &self.config.source)
                .await
                .map(Some),
            None => Ok(self.config.api_key.clone()),
        }
    }

    pub(crate) fn url(&self, path: &str) -> Result<url::Url, Error> {
        self.config
            .api_url
            .join(path)
            .map_err(|e| Error::Config(format!("bad request path {path:?}: {e}")))
    }

    /// The one request path. A GET is retried on connection errors and timeouts, 503,
    /// and 429 (after `Retry-After`), with backoff; any other method only while the
    /// connection never got through, so a write that may have landed is not sent twice.
    pub(crate) async fn request(
        &self,
        method: &reqwest::Method,
        url: &url::Url,
        body: Option<&Value>,
        condition: Option<Condition<'_>>,
    ) -> Result<reqwest::Response, Error> {
        let idempotent = *method == reqwest::Method::GET;
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let mut request = self.http.request(method.clone(), url.clone());
            if let Some(key) = self.bearer().await? {
                request = request.bearer_auth(key.expose_secret());
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            request = match condition {
                Some(Condition::IfNoneMatch(etag)) => {
                    request.header(reqwest::header::IF_NONE_MATCH, etag)
                }
                Some(Condition::IfMatch(etag)) => request.header(reqwest::header::IF_MATCH, etag),
                None => request,
            };
            let outcome = request.send().await;
            let wait = match &outcome {
                Err(e) if e.is_connect() => Some(backoff),
                Err(e) if idempotent && e.is_timeout() => Some(backoff),
                Ok(r) if idempotent && r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    Some(backoff)
                }
                Ok(r) if idempotent && r.status() == StatusCode::TOO_MANY_REQUESTS => {
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
                        reason: reason(e),
                    });
                }
            }
        }
    }

    /// Turns an error answer into an [`Error`].
    pub(crate) async fn check(
        &self,
        response: reqwest::Response,
    ) -> Result<reqwest::Response, Error> {
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
            StatusCode::UNAUTHORIZED => match &self.signer {
                Some(signer) => {
                    // Revoked or expired early: the next request signs in again.
                    signer.forget();
                    Error::Unauthorized {
                        detail,
                        key_from: signer.identity().describe(),
                    }
                }
                None => Error::Unauthorized {
                    detail,
                    key_from: self.config.source.key_variable(),
                },
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
}

fn typed<T: Block>(document: &BlockDocument, slug: &str, name: &str) -> Result<T, Error> {
    T::from_data(document.data.clone()).map_err(|e| Error::Data {
        slug: slug.to_owned(),
        name: name.to_owned(),
        field: e.field.clone(),
        message: without_values(&e.message),
    })
}

/// A message with every quoted span (`"…"` or `` `…` ``, where serde puts the offending
/// value, which may be a secret) replaced by `…`.
pub(crate) fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut open: Option<char> = None;
    for c in message.chars() {
        match open {
            Some(q) if c == q => open = None,
            Some(_) => {}
            None if c == '"' || c == '`' => {
                open = Some(c);
                out.push('…');
            }
            None => out.push(c),
        }
    }
    out
}

/// Whether a load of `T` must ask for secret values.
fn has_secrets<T: Block>() -> bool {
    !T::spec().secret_fields().is_empty()
}

/// An error with its causes (reqwest's own message names only the kind of failure).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

/// Why a request did not get through, with a hint where one helps.
fn reason(e: reqwest::Error) -> String {
    let text = chain(&e.without_url());
    if text.contains("certificate") || text.contains("UnknownIssuer") {
        format!(
            "{text} (for a server with a private certificate, set BLOCKS_CA_CERT to its CA's PEM file)"
        )
    } else {
        text
    }
}

pub(crate) fn retry_after(response: &reqwest::Response) -> Option<Duration> {
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
    let _ = url.set_password(None);
    url.to_string()
}
