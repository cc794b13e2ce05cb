//! The access check: every route but the public ones needs a bearer token holding the
//! route's scope. Denials, writes and secret reads are written to the audit log before the
//! answer goes out; clients that keep failing to authenticate are refused for a while, but
//! a valid token is never refused.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::Utc;
use parking_lot::Mutex;
use uuid::Uuid;

use super::audit::Durability;
use super::extract::{Answered, Caller};
use super::routes::{Access, Kind};
use super::{ApiError, AppState};
use crate::store::{NewAuditRecord, Scope, TokenInfo, TokenRejection, token_digest};

/// Failed authentications a client may make per window before it is refused (429).
pub const DEFAULT_MAX_FAILURES: u32 = 20;
/// The window over which failures count.
pub const DEFAULT_FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Block-load events one token may report over the events socket per window; the rest of
/// the window's events are dropped (and the first one dropped is audited).
pub const DEFAULT_MAX_EVENTS: u32 = 600;
/// The window over which block-load events count.
pub const DEFAULT_EVENT_WINDOW: Duration = Duration::from_secs(60);
/// `last_used` is written at most this often per token and process.
const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// Clients tracked at most; beyond this, expired windows are dropped first.
const MAX_TRACKED_CLIENTS: usize = 100_000;
/// Digests of failed tokens remembered per client and window, so a client repeating a bad
/// token while refused costs no token query.
const MAX_REMEMBERED_FAILURES: usize = 32;

/// The request's id, as answered in `x-request-id` and written to the audit log.
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub(crate) String);

/// The client's address (unspecified when the server was not given it, as in tests).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientIp(pub(crate) IpAddr);

#[derive(Debug)]
struct Window {
    start: Instant,
    /// Tokens presented that did not authenticate.
    failures: u32,
    /// Requests that presented no token at all (CORS preflights, anonymous calls): they are
    /// answered 401 and never count as failures; only the first ones are audited.
    anonymous: u32,
    refusal_recorded: bool,
    /// Digests of the tokens that failed in this window (at most
    /// [`MAX_REMEMBERED_FAILURES`]).
    failed_digests: HashSet<String>,
}

impl Window {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            failures: 0,
            anonymous: 0,
            refusal_recorded: false,
            failed_digests: HashSet::new(),
        }
    }
}

#[derive(Debug)]
struct EventWindow {
    start: Instant,
    events: u32,
    excess_recorded: bool,
}

/// Whether a block-load event reported over the events socket is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventAdmission {
    /// Within the token's budget.
    Admitted,
    /// Over it: dropped. `first` is true for the first event dropped in the window (only
    /// that one is audited).
    Excess { first: bool },
}

/// Failed-authentication counting per client, block-load event budgets per token, and
/// `last_used` throttling.
#[derive(Debug)]
pub struct AuthGuard {
    max_failures: u32,
    window: Duration,
    max_events: u32,
    event_window: Duration,
    failures: Mutex<HashMap<IpAddr, Window>>,
    events: Mutex<HashMap<Uuid, EventWindow>>,
    touched: Mutex<HashMap<Uuid, Instant>>,
}

impl Default for AuthGuard {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FAILURES, DEFAULT_FAILURE_WINDOW)
    }
}

impl AuthGuard {
    /// A guard refusing a client after `max_failures` failed authentications within
    /// `window`, until the window ends. A valid token is let through all the same.
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self {
            max_failures: max_failures.max(1),
            window,
            max_events: DEFAULT_MAX_EVENTS,
            event_window: DEFAULT_EVENT_WINDOW,
            failures: Mutex::new(HashMap::new()),
            events: Mutex::new(HashMap::new()),
            touched: Mutex::new(HashMap::new()),
        }
    }

    /// The same guard taking at most `max_events` block-load events per token within
    /// `window` from the events socket.
    #[must_use]
    pub fn with_event_limit(mut self, max_events: u32, window: Duration) -> Self {
        self.max_events = max_events.max(1);
        self.event_window = window;
        self
    }

    /// When `ip` is refused: seconds until its window ends. Only failed tokens count.
    fn limited(&self, ip: IpAddr) -> Option<u64> {
        let mut map = self.failures.lock();
        let w = map.get_mut(&ip)?;
        let elapsed = w.start.elapsed();
        if elapsed >= self.window {
            map.remove(&ip);
            return None;
        }
        (w.failures >= self.max_failures).then(|| (self.window - elapsed).as_secs().max(1))
    }

    /// Marks a refusal of `ip` (a 429): true for the first of its window, the only one
    /// audited, so a flood cannot flood the log.
    fn first_refusal(&self, ip: IpAddr) -> bool {
        let mut map = self.failures.lock();
        map.get_mut(&ip).is_some_and(|w| {
            let first = !w.refusal_recorded;
            w.refusal_recorded = true;
            first
        })
    }

    /// Whether `digest` already failed for `ip` in its current window.
    fn known_bad(&self, ip: IpAddr, digest: &str) -> bool {
        self.failures
            .lock()
            .get(&ip)
            .is_some_and(|w| w.start.elapsed() < self.window && w.failed_digests.contains(digest))
    }

    /// The window of `ip`, created (or renewed, when it has ended) as needed.
    fn window_of<'m>(&self, map: &'m mut HashMap<IpAddr, Window>, ip: IpAddr) -> &'m mut Window {
        if map.len() >= MAX_TRACKED_CLIENTS && !map.contains_key(&ip) {
            let window = self.window;
            map.retain(|_, w| w.start.elapsed() < window);
            if map.len() >= MAX_TRACKED_CLIENTS {
                // Every tracked client is within its window: the oldest window goes.
                if let Some(oldest) = map.iter().min_by_key(|(_, w)| w.start).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let w = map.entry(ip).or_insert_with(Window::new);
        if w.start.elapsed() >= self.window {
            *w = Window::new();
        }
        w
    }

    /// Counts a token presented by `ip` that did not authenticate.
    fn failed(&self, ip: IpAddr, digest: String) {
        let mut map = self.failures.lock();
        let w = self.window_of(&mut map, ip);
        w.failures = w.failures.saturating_add(1);
        if w.failed_digests.len() < MAX_REMEMBERED_FAILURES {
            w.failed_digests.insert(digest);
        }
    }

    /// For a sign-in with an identity token from `ip`: while `ip` is refused, the seconds
    /// to wait and whether this is the window's first refusal (the one audited).
    pub(crate) fn sign_in_refused(&self, ip: IpAddr) -> Option<(u64, bool)> {
        self.limited(ip).map(|wait| (wait, self.first_refusal(ip)))
    }

    /// Counts a refused sign-in with an identity token (its digest) from `ip`, as a
    /// failed token counts.
    pub(crate) fn sign_in_failed(&self, ip: IpAddr, digest: String) {
        self.failed(ip, digest);
    }

    /// Counts a request from `ip` that presented no token; true while such requests are
    /// still audited in this window (the first `max_failures` of them).
    fn anonymous(&self, ip: IpAddr) -> bool {
        let mut map = self.failures.lock();
        let w = self.window_of(&mut map, ip);
        w.anonymous = w.anonymous.saturating_add(1);
        w.anonymous <= self.max_failures
    }

    /// Takes one block-load event reported by `token` from its budget.
    pub(crate) fn admit_event(&self, token: Uuid) -> EventAdmission {
        let mut map = self.events.lock();
        if map.len() >= MAX_TRACKED_CLIENTS && !map.contains_key(&token) {
            let window = self.event_window;
            map.retain(|_, w| w.start.elapsed() < window);
        }
        let w = map.entry(token).or_insert_with(|| EventWindow {
            start: Instant::now(),
            events: 0,
            excess_recorded: false,
        });
        if w.start.elapsed() >= self.event_window {
            *w = EventWindow {
                start: Instant::now(),
                events: 0,
                excess_recorded: false,
            };
        }
        if w.events < self.max_events {
            w.events += 1;
            return EventAdmission::Admitted;
        }
        let first = !w.excess_recorded;
        w.excess_recorded = true;
        EventAdmission::Excess { first }
    }

    /// The event budget, for the audit record of an excess: (events, window).
    pub(crate) fn event_limit(&self) -> (u32, Duration) {
        (self.max_events, self.event_window)
    }

    fn due_for_touch(&self, id: Uuid) -> bool {
        let mut map = self.touched.lock();
        let now = Instant::now();
        match map.get(&id) {
            Some(at) if now.duration_since(*at) < TOUCH_EVERY => false,
            _ => {
                map.insert(id, now);
                true
            }
        }
    }
}

/// Log targets that write what crosses the wire at `trace` level: tungstenite logs every
/// websocket frame and message (the events socket's auth message holds a token), and the
/// HTTP crates log frames and connection details.
pub const WIRE_LOG_TARGETS: [&str; 5] = [
    "tungstenite",
    "tokio_tungstenite",
    "hyper",
    "hyper_util",
    "h2",
];

/// Whether a span or event may be logged whatever `BLOCKS_LOG` asks: nothing at `trace`
/// from [`WIRE_LOG_TARGETS`] (nor their modules).
pub fn loggable(meta: &tracing::Metadata<'_>) -> bool {
    if *meta.level() != tracing::Level::TRACE {
        return true;
    }
    let target = meta.target();
    !WIRE_LOG_TARGETS.iter().any(|wire| {
        target
            .strip_prefix(wire)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// A filter layer for the `blocks` subscriber that caps [`WIRE_LOG_TARGETS`] below
/// `trace`, over any user filter: `BLOCKS_LOG=trace` (or `tungstenite::protocol=trace`)
/// never logs a token sent over the events socket.
pub fn wire_log_cap() -> tracing_subscriber::filter::FilterFn<fn(&tracing::Metadata<'_>) -> bool> {
    tracing_subscriber::filter::filter_fn(loggable as fn(&tracing::Metadata<'_>) -> bool)
}

/// The token a request presents: `Authorization: Bearer <token>` (what Prefect clients
/// send from `PREFECT_API_KEY`) or `Basic` with the token as the password (from
/// `PREFECT_API_AUTH_STRING=<name>:<token>`).
pub(crate) fn presented_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        return Some(token_of_auth_string(&text).to_owned());
    }
    None
}

/// `name:token` → `token`; a bare token stays as it is.
pub(crate) fn token_of_auth_string(text: &str) -> &str {
    text.split_once(':').map_or(text, |(_, token)| token)
}

/// Checks `token` for `scope`, counting failures against `ip`. A refusal carries the
/// error, the token's id when it was recognised, and whether to audit it.
///
/// A client with too many failed tokens in its window is refused (429) unless it presents a
/// valid token: the limiter slows guessing down without locking out pipelines that share
/// the address. Requests without any token (CORS preflights, anonymous calls) are answered
/// 401 and never count as failures.
pub(crate) async fn authenticate(
    state: &AppState,
    ip: IpAddr,
    token: Option<&str>,
    scope: Scope,
) -> Result<Arc<TokenInfo>, (ApiError, Option<Uuid>, bool)> {
    let limited = state.auth.limited(ip);
    let too_many = |retry_after| ApiError::TooManyRequests(retry_after);
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        if let Some(retry_after) = limited {
            return Err((too_many(retry_after), None, state.auth.first_refusal(ip)));
        }
        let audit = state.auth.anonymous(ip);
        return Err((
            ApiError::Unauthorized(
                "this route needs a token: send `Authorization: Bearer <token>` (PREFECT_API_KEY)"
                    .into(),
            ),
            None,
            audit,
        ));
    };
    let digest = token_digest(token);
    if let Some(retry_after) = limited
        && state.auth.known_bad(ip, &digest)
    {
        // The same bad token again: refused from memory, at no cost to the database.
        return Err((too_many(retry_after), None, state.auth.first_refusal(ip)));
    }
    let rejection = match state.store.authenticate(token).await {
        Ok(Ok(info)) => {
            if !info.grants(scope) {
                let held: Vec<&str> = info.scopes.iter().map(|s| s.as_str()).collect();
                return Err((
                    ApiError::Forbidden(format!(
                        "this route needs the {} scope; the token has {}",
                        scope.as_str(),
                        held.join(", ")
                    )),
                    Some(info.id),
                    true,
                ));
            }
            if state.auth.due_for_touch(info.id) {
                let store = state.store.clone();
                let id = info.id;
                tokio::spawn(async move {
                    if let Err(e) = store.touch_token(id).await {
                        tracing::warn!(error = %e, "could not record a token's last use");
                    }
                });
            }
            return Ok(Arc::new(info));
        }
        Ok(Err(rejection)) => rejection,
        Err(e) => return Err((ApiError::from(e), None, false)),
    };
    state.auth.failed(ip, digest);
    let (message, id) = match rejection {
        TokenRejection::Unknown => ("the token is not known to this server", None),
        TokenRejection::Expired(id) => ("the token has expired", Some(id)),
        TokenRejection::Revoked(id) => ("the token has been revoked", Some(id)),
    };
    if let Some(retry_after) = limited {
        return Err((too_many(retry_after), id, state.auth.first_refusal(ip)));
    }
    Err((ApiError::Unauthorized(message.into()), id, true))
}

/// The caller's `x-request-id` when it is a sane one, else a new id: a random prefix
/// chosen once per process and a counter, unique across replicas without a random draw
/// per request.
pub(crate) fn request_id(headers: &HeaderMap) -> String {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
        .map_or_else(
            || {
                let prefix =
                    PREFIX.get_or_init(|| Uuid::new_v4().simple().to_string()[..16].to_owned());
                let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("{prefix}-{n:x}")
            },
            ToOwned::to_owned,
        )
}

/// `ok`, `denied`, `failed` or `error`, from the answer's status.
pub(crate) fn outcome(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 | 403 | 429 => "denied",
        s if s >= 500 => "error",
        s if s >= 400 => "failed",
        _ => "ok",
    }
}

/// The middleware: request id, access check, audit.
pub(super) async fn guard(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = request_id(req.headers());
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let (access, kind) = match route.as_deref() {
        None => (Access::Public, Kind::Read),
        Some(path) => super::routes::rule(&state.routes, &method, path),
    };
    let has_nul = req
        .uri()
        .path_and_query()
        .is_some_and(|pq| pq.as_str().as_bytes().windows(3).any(|w| w == b"%00"));
    if has_nul {
        // No name, slug or filter of ours holds NUL (PostgreSQL text cannot store it).
        return ApiError::BadRequest("the URL must not contain NUL characters (%00)".into())
            .into_response();
    }
    let target = canonical_target(req.uri().path(), route.as_deref());
    let record = Pending {
        request_id: id.clone(),
        method,
        route,
        target,
    };
    req.extensions_mut().insert(RequestId(id.clone()));
    req.extensions_mut().insert(ClientIp(ip));

    let mut response = match access {
        Access::Public | Access::Socket => next.run(req).await,
        Access::Token(scope) => {
            let token = presented_token(req.headers());
            match authenticate(&state, ip, token.as_deref(), scope).await {
                Ok(info) => {
                    let token_id = info.id;
                    let caller = Caller {
                        token: Some(info),
                        read_secrets: Arc::default(),
                        hidden: Arc::default(),
                    };
                    req.extensions_mut().insert(caller.clone());
                    if kind == Kind::Write {
                        req.extensions_mut()
                            .insert(WriteRecord(Arc::new(record.record(
                                Some(token_id),
                                record.target.clone(),
                                StatusCode::OK,
                                false,
                            ))));
                    }
                    let (failed, failed_state) = (record.clone(), state.clone());
                    let state = state.clone();
                    let work = async move {
                        let mut response = next.run(req).await;
                        // A 304 confirms the caller's copy and sends no secret: not a read.
                        let secrets = caller
                            .read_secrets
                            .load(std::sync::atomic::Ordering::Relaxed)
                            && response.status() != StatusCode::NOT_MODIFIED;
                        if secrets {
                            // No cache on the way may keep a copy of secret values.
                            response.headers_mut().insert(
                                header::CACHE_CONTROL,
                                HeaderValue::from_static("no-store"),
                            );
                        }
                        let hidden = caller.hidden.load(std::sync::atomic::Ordering::Relaxed);
                        let denied =
                            matches!(response.status().as_u16(), 401 | 403 | 429) || hidden;
                        // A write that stored its record in its own transaction, with the
                        // status it answers, is recorded already.
                        let stored_with_write = kind == Kind::Write
                            && !denied
                            && !secrets
                            && response
                                .extensions()
                                .get::<RecordedWithWrite>()
                                .is_some_and(|r| r.0 == response.status());
                        if stored_with_write {
                            state.audit.counted_with_write();
                            response
                        } else if kind == Kind::Write || denied || secrets {
                            // A read's record need not wait for the disk: it is committed
                            // before the answer and synced moments later.
                            let durability = if kind == Kind::Read && !denied {
                                Durability::Deferred
                            } else {
                                Durability::Synced
                            };
                            record
                                .store(
                                    &state,
                                    Some(token_id),
                                    secrets,
                                    durability,
                                    response,
                                    hidden,
                                )
                                .await
                        } else {
                            response
                        }
                    };
                    if kind == Kind::Write {
                        // A write and its audit record run to their end even if the client
                        // goes away or the timeout fires mid-way: the two never part.
                        match tokio::spawn(work).await {
                            Ok(response) => response,
                            // A handler that panicked is answered 500, and recorded so.
                            Err(e) => {
                                let response =
                                    ApiError::Internal(format!("the handler failed: {e}"))
                                        .into_response();
                                failed
                                    .store(
                                        &failed_state,
                                        Some(token_id),
                                        false,
                                        Durability::Synced,
                                        response,
                                        false,
                                    )
                                    .await
                            }
                        }
                    } else {
                        work.await
                    }
                }
                Err((error, token_id, audit)) => {
                    let response = error.into_response();
                    if audit {
                        record
                            .store(&state, token_id, false, Durability::Synced, response, false)
                            .await
                    } else {
                        response
                    }
                }
            }
        }
    };
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

impl Pending {
    /// The record of this request answered `status`.
    fn record(
        &self,
        token_id: Option<Uuid>,
        target: String,
        status: StatusCode,
        hidden: bool,
    ) -> NewAuditRecord {
        NewAuditRecord {
            at: Utc::now(),
            request_id: self.request_id.clone(),
            token_id,
            action: format!(
                "{} {}",
                self.method,
                self.route.as_deref().unwrap_or("unmatched")
            ),
            target,
            outcome: if hidden { "denied" } else { outcome(status) },
            status: status.as_u16(),
        }
    }
}

/// A write's audit record, for a handler that stores it in the write's own transaction
/// (one commit for both) instead of the guard storing it after the answer: the handler
/// gives it the status it will answer ([`WriteRecord::answering`]) and marks its response
/// with [`RecordedWithWrite`]. Present in the request only for writes with a token.
#[derive(Debug, Clone)]
pub(crate) struct WriteRecord(Arc<NewAuditRecord>);

impl WriteRecord {
    /// The record of the write answered `status`, at this moment.
    pub(crate) fn answering(&self, status: StatusCode) -> NewAuditRecord {
        NewAuditRecord {
            at: Utc::now(),
            outcome: outcome(status),
            status: status.as_u16(),
            ..(*self.0).clone()
        }
    }

    /// `response`, marked as recorded with the write when it answers `status`; the guard
    /// stores a record of its own for any other answer.
    pub(crate) fn recorded(status: StatusCode, response: Response) -> Response {
        let mut response = response;
        response.extensions_mut().insert(RecordedWithWrite(status));
        response
    }
}

impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for WriteRecord {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<WriteRecord>().cloned())
    }
}

/// The status a write's record was stored with, in its transaction (see [`WriteRecord`]).
#[derive(Debug, Clone, Copy)]
struct RecordedWithWrite(StatusCode);

/// What an audit record of this request will say, once its outcome is known.
#[derive(Clone)]
struct Pending {
    request_id: String,
    method: axum::http::Method,
    route: Option<String>,
    target: String,
}

/// The longest request path kept in a target; the document ids of a secret read follow it.
const MAX_TARGET_PATH: usize = 512;
/// Document ids named at most in the target of a secret read (then a count of the rest).
pub(crate) const MAX_TARGET_DOCUMENTS: usize = 100;

/// The request path as the audit log records it: the `{id}` segments of the matched route
/// in canonical form (lowercase, hyphenated), so `?target=<id>` finds a request whatever
/// spelling of the id it used (`ABCDEF…`, no hyphens, braces, percent-encoded).
fn canonical_target(path: &str, route: Option<&str>) -> String {
    let Some(route) = route else {
        return path.to_owned();
    };
    let segments: Vec<&str> = path.split('/').collect();
    let templates: Vec<&str> = route.split('/').collect();
    if segments.len() != templates.len() {
        return path.to_owned();
    }
    let mut out = String::with_capacity(path.len());
    for (i, (segment, template)) in segments.iter().zip(&templates).enumerate() {
        if i > 0 {
            out.push('/');
        }
        let id = (*template == "{id}")
            .then(|| {
                percent_encoding::percent_decode_str(segment)
                    .decode_utf8()
                    .ok()
            })
            .flatten()
            .and_then(|text| Uuid::parse_str(&text).ok());
        match id {
            Some(id) => out.push_str(&id.hyphenated().to_string()),
            None => out.push_str(segment),
        }
    }
    out
}

/// The parts of an answered document that name documents: its id (`block_document_id` for
/// a version) and, recursively, the documents it references. Everything else (the data with
/// its secrets) is skipped by the parser, never copied.
#[derive(serde::Deserialize)]
struct Named {
    #[serde(default)]
    id: Option<Uuid>,
    #[serde(default)]
    block_document_id: Option<Uuid>,
    #[serde(default)]
    block_document_references: HashMap<String, NamedReference>,
}

#[derive(serde::Deserialize)]
struct NamedReference {
    block_document: Named,
}

impl Named {
    fn collect(&self, ids: &mut Vec<Uuid>) {
        for id in [self.id, self.block_document_id].into_iter().flatten() {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let mut fields: Vec<_> = self.block_document_references.iter().collect();
        fields.sort_by(|a, b| a.0.cmp(b.0));
        for (_, reference) in fields {
            reference.block_document.collect(ids);
        }
    }
}

/// The ids of the documents a secret answer (one document, a version, or a list) shows,
/// roots first, each once.
fn answered_documents(body: &[u8]) -> Vec<Uuid> {
    let mut ids = Vec::new();
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => {
            if let Ok(list) = serde_json::from_slice::<Vec<Named>>(body) {
                for named in &list {
                    named.collect(&mut ids);
                }
            }
        }
        Some(b'{') => {
            if let Ok(named) = serde_json::from_slice::<Named>(body) {
                named.collect(&mut ids);
            }
        }
        _ => {}
    }
    ids
}

/// The target of a secret read: the path, then the documents whose secrets the answer
/// showed (unless it is just the one the path names), the first
/// [`MAX_TARGET_DOCUMENTS`] of them and a count of the rest.
pub(crate) fn secret_read_target(path: &str, documents: &[Uuid]) -> String {
    let mut cut = MAX_TARGET_PATH.min(path.len());
    while !path.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut target = format!("{}?include_secrets=true", &path[..cut]);
    let only_the_named_one =
        documents.len() == 1 && path.contains(&documents[0].hyphenated().to_string());
    if documents.is_empty() || only_the_named_one {
        return target;
    }
    target.push_str(" documents=");
    for (i, id) in documents.iter().take(MAX_TARGET_DOCUMENTS).enumerate() {
        if i > 0 {
            target.push(',');
        }
        target.push_str(&id.hyphenated().to_string());
    }
    if documents.len() > MAX_TARGET_DOCUMENTS {
        target.push_str(&format!(
            " (+{} more)",
            documents.len() - MAX_TARGET_DOCUMENTS
        ));
    }
    target
}

/// `response` read back for the ids of the documents its body shows.
async fn read_back(response: Response) -> Result<(Response, Vec<Uuid>), Response> {
    let (parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(error = %e, "answering 500: a secret answer could not be read back");
            return Err(
                ApiError::Internal("the answer could not be prepared".into()).into_response(),
            );
        }
    };
    let documents = answered_documents(&bytes);
    Ok((
        Response::from_parts(parts, axum::body::Body::from(bytes)),
        documents,
    ))
}

impl Pending {
    /// Stores the record for `response` and returns the response, or a 503 when the record
    /// could not be stored (a secret read or refusal is never answered unrecorded).
    /// `hidden`: the token's grants hid what the request named (a 404 recorded as denied).
    async fn store(
        self,
        state: &AppState,
        token_id: Option<Uuid>,
        secrets: bool,
        durability: Durability,
        response: Response,
        hidden: bool,
    ) -> Response {
        let status = response.status();
        let (response, target) = if secrets {
            // Name the documents the answer shows: a filter or a by-name read names none in
            // its path, and a tree shows its children's secrets too.
            let shown = response
                .extensions()
                .get::<Answered>()
                .map(|a| a.0.to_vec());
            let (response, documents) = match shown {
                Some(documents) => (response, documents),
                // An answer that does not say what it shows is read back for the ids.
                None => match read_back(response).await {
                    Ok(read) => read,
                    Err(response) => return response,
                },
            };
            let documents = if status.is_success() {
                documents
            } else {
                Vec::new()
            };
            let target = secret_read_target(&self.target, &documents);
            (response, target)
        } else {
            (response, self.target.clone())
        };
        let record = self.record(token_id, target, status, hidden);
        let stored = match durability {
            Durability::Synced => state.audit.record(record).await,
            Durability::Deferred => state.audit.record_read(record).await,
        };
        match stored {
            Ok(()) => response,
            Err(e) => {
                tracing::error!(error = %e, "answering 503: the audit record could not be stored");
                ApiError::Unavailable("the audit log is unavailable".into()).into_response()
            }
        }
    }
}
