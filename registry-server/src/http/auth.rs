//! The access check: every route but the public ones needs a bearer token holding the
//! route's scope. Denials, writes and secret reads are written to the audit log before the
//! answer goes out; clients that keep failing to authenticate are refused for a while.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::Utc;
use uuid::Uuid;

use super::extract::Caller;
use super::routes::{Access, Kind};
use super::{ApiError, AppState};
use crate::store::{NewAuditRecord, Scope, TokenInfo, TokenRejection};

/// Failed authentications a client may make per window before it is refused (429).
pub const DEFAULT_MAX_FAILURES: u32 = 20;
/// The window over which failures count.
pub const DEFAULT_FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// `last_used` is written at most this often per token and process.
const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// Clients tracked at most; beyond this, expired windows are dropped first.
const MAX_TRACKED_CLIENTS: usize = 100_000;

/// The request's id, as answered in `x-request-id` and written to the audit log.
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub(crate) String);

/// The client's address (unspecified when the server was not given it, as in tests).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientIp(pub(crate) IpAddr);

#[derive(Debug)]
struct Window {
    start: Instant,
    failures: u32,
    refusal_recorded: bool,
}

/// Failed-authentication counting per client, and `last_used` throttling.
#[derive(Debug)]
pub struct AuthGuard {
    max_failures: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, Window>>,
    touched: Mutex<HashMap<Uuid, Instant>>,
}

impl Default for AuthGuard {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FAILURES, DEFAULT_FAILURE_WINDOW)
    }
}

impl AuthGuard {
    /// A guard refusing a client after `max_failures` failed authentications within
    /// `window`, until the window ends.
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self {
            max_failures: max_failures.max(1),
            window,
            failures: Mutex::new(HashMap::new()),
            touched: Mutex::new(HashMap::new()),
        }
    }

    /// When `ip` is refused: seconds until it may try again, and whether this is the
    /// first refusal of its window (only that one is audited, so a flood cannot flood the
    /// log).
    fn refused(&self, ip: IpAddr) -> Option<(u64, bool)> {
        let mut map = lock(&self.failures);
        let w = map.get_mut(&ip)?;
        let elapsed = w.start.elapsed();
        if elapsed >= self.window {
            map.remove(&ip);
            return None;
        }
        if w.failures < self.max_failures {
            return None;
        }
        let first = !w.refusal_recorded;
        w.refusal_recorded = true;
        Some(((self.window - elapsed).as_secs().max(1), first))
    }

    fn failed(&self, ip: IpAddr) {
        let mut map = lock(&self.failures);
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
        let w = map.entry(ip).or_insert_with(|| Window {
            start: Instant::now(),
            failures: 0,
            refusal_recorded: false,
        });
        if w.start.elapsed() >= self.window {
            *w = Window {
                start: Instant::now(),
                failures: 0,
                refusal_recorded: false,
            };
        }
        w.failures += 1;
    }

    fn due_for_touch(&self, id: Uuid) -> bool {
        let mut map = lock(&self.touched);
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
pub(crate) async fn authenticate(
    state: &AppState,
    ip: IpAddr,
    token: Option<&str>,
    scope: Scope,
) -> Result<Arc<TokenInfo>, (ApiError, Option<Uuid>, bool)> {
    if let Some((retry_after, first)) = state.auth.refused(ip) {
        // A refused client still gets through with a token this server already knows to be
        // good (from memory: refusal costs the database nothing); anything else waits.
        match token.and_then(|t| state.store.authenticate_cached(t)) {
            Some(info) if info.grants(scope) => return Ok(Arc::new(info)),
            _ => return Err((ApiError::TooManyRequests(retry_after), None, first)),
        }
    }
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        state.auth.failed(ip);
        return Err((
            ApiError::Unauthorized(
                "this route needs a token: send `Authorization: Bearer <token>` (PREFECT_API_KEY)"
                    .into(),
            ),
            None,
            true,
        ));
    };
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
    state.auth.failed(ip);
    let (message, id) = match rejection {
        TokenRejection::Unknown => ("the token is not known to this server", None),
        TokenRejection::Expired(id) => ("the token has expired", Some(id)),
        TokenRejection::Revoked(id) => ("the token has been revoked", Some(id)),
    };
    Err((ApiError::Unauthorized(message.into()), id, true))
}

/// The caller's `x-request-id` when it is a sane one, else a new id: a random prefix
/// chosen once per process and a counter, unique across replicas without a random draw
/// per request.
fn request_id(headers: &HeaderMap) -> String {
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
    let record = Pending {
        request_id: id.clone(),
        method,
        route,
        target: req.uri().path().to_owned(),
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
                    };
                    req.extensions_mut().insert(caller.clone());
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
                        let denied = matches!(response.status().as_u16(), 401 | 403 | 429);
                        if kind == Kind::Write || denied || secrets {
                            record
                                .store(&state, Some(token_id), secrets, response)
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
                            Err(e) => ApiError::Internal(format!("the handler failed: {e}"))
                                .into_response(),
                        }
                    } else {
                        work.await
                    }
                }
                Err((error, token_id, audit)) => {
                    let response = error.into_response();
                    if audit {
                        record.store(&state, token_id, false, response).await
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

/// What an audit record of this request will say, once its outcome is known.
struct Pending {
    request_id: String,
    method: axum::http::Method,
    route: Option<String>,
    target: String,
}

impl Pending {
    /// Stores the record for `response` and returns the response, or a 503 when the record
    /// could not be stored (a secret read or refusal is never answered unrecorded).
    async fn store(
        self,
        state: &AppState,
        token_id: Option<Uuid>,
        secrets: bool,
        response: Response,
    ) -> Response {
        let status = response.status();
        let record = NewAuditRecord {
            at: Utc::now(),
            request_id: self.request_id,
            token_id,
            action: format!(
                "{} {}",
                self.method,
                self.route.as_deref().unwrap_or("unmatched")
            ),
            target: if secrets {
                format!("{}?include_secrets=true", self.target)
            } else {
                self.target
            },
            outcome: outcome(status),
            status: status.as_u16(),
        };
        match state.audit.record(record).await {
            Ok(()) => response,
            Err(e) => {
                tracing::error!(error = %e, "answering 503: the audit record could not be stored");
                ApiError::Unavailable("the audit log is unavailable".into()).into_response()
            }
        }
    }
}
