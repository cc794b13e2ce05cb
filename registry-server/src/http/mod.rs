//! The HTTP API: Prefect's block endpoints under `/api`, with Prefect's paths, status codes
//! and JSON shapes, so the stock Prefect client and CLI work against it.
//!
//! [`app`] builds the router from a state, so tests drive it in-process or on a real
//! listener; `serve` in the binary adds the listener and graceful shutdown.

pub(crate) mod admin;
pub mod audit;
pub mod auth;
mod block_documents;
mod block_schemas;
pub mod block_types;
pub mod error;
mod events;
mod extract;
pub mod feed;
mod grants;
pub mod identity;
pub mod metrics;
mod openapi;
mod root;
pub(crate) mod routes;
pub mod webhooks;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use parking_lot::Mutex;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use audit::AuditLog;
pub use auth::AuthGuard;
pub use error::ApiError;
pub use events::BlockLoadEvent;
pub use metrics::Metrics;

use crate::store::Store;

/// The Prefect API version this server speaks (`X-PREFECT-API-VERSION`).
pub const API_VERSION: &str = "0.8.4";
/// The Prefect server version reported to clients: a 3.x at least as new as the clients
/// we support, so 3.x clients accept us.
pub const PREFECT_VERSION: &str = "3.9.1";
/// The oldest API version a client may send.
const MINIMUM_API_VERSION: (u64, u64, u64) = (0, 8, 0);
/// Bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How long one request may take by default, body included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Block-load events kept in memory.
const MAX_EVENTS: usize = 10_000;

/// What every handler shares: one `Arc`, so the per-request clones axum makes of the state
/// (one per layer) cost one counter each.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

/// The parts of [`AppState`].
#[derive(Debug)]
pub struct Shared {
    /// The block store.
    pub store: Arc<Store>,
    /// Recent block-load events from the events socket, newest last.
    pub events: Mutex<VecDeque<BlockLoadEvent>>,
    /// The audit log writer.
    pub audit: AuditLog,
    /// Failed-authentication counting.
    pub auth: AuthGuard,
    /// Request counters and latencies.
    pub metrics: Metrics,
    /// How long one request may take, body included (408 after that).
    pub request_timeout: Duration,
    /// Whether the server is reached over TLS (the console's sign-in and its origin check
    /// depend on it).
    pub tls: bool,
    /// Keys fetched from trusted JWT issuers.
    pub identity: identity::IdentityKeys,
    /// The change feed's broadcast and open streams.
    pub feed: Arc<feed::Feed>,
    /// The webhook sender (its worker runs beside the audit writer).
    pub webhooks: Arc<webhooks::Webhooks>,
    routes: routes::RouteTable,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// State over an open store; starts the audit writer (call inside a Tokio runtime).
    pub fn new(store: Arc<Store>) -> Self {
        Self::with_guard(store, AuthGuard::default())
    }

    /// State with a chosen failed-authentication limit.
    pub fn with_guard(store: Arc<Store>, guard: AuthGuard) -> Self {
        Self::configured(store, guard, DEFAULT_REQUEST_TIMEOUT)
    }

    /// State with a chosen failed-authentication limit and request timeout.
    pub fn configured(store: Arc<Store>, guard: AuthGuard, request_timeout: Duration) -> Self {
        let hooks = Arc::new(webhooks::Webhooks::default());
        webhooks::start(&store, &hooks);
        Self(Arc::new(Shared {
            webhooks: hooks,
            audit: AuditLog::start(store.clone()),
            feed: feed::Feed::start(&store),
            store,
            events: Mutex::new(VecDeque::new()),
            auth: guard,
            metrics: Metrics::default(),
            request_timeout,
            tls: false,
            identity: identity::IdentityKeys::default(),
            routes: routes::table(&all_routes()),
        }))
    }

    /// The same state for a server reached over TLS. Call before the state is shared.
    #[must_use]
    pub fn over_tls(mut self) -> Self {
        match Arc::get_mut(&mut self.0) {
            Some(shared) => shared.tls = true,
            None => tracing::error!(
                "the TLS setting came after the state was shared; the console treats the server as plain HTTP"
            ),
        }
        self
    }

    /// A copy of the recorded block-load events.
    pub fn block_load_events(&self) -> Vec<BlockLoadEvent> {
        self.events.lock().iter().cloned().collect()
    }

    fn record_event(&self, event: BlockLoadEvent) {
        let mut events = self.events.lock();
        if events.len() >= MAX_EVENTS {
            events.pop_front();
        }
        events.push_back(event);
    }
}

/// Every route we serve, in one table (see [`routes`]).
pub(crate) fn all_routes() -> Vec<routes::Route> {
    let mut all = Vec::new();
    all.extend(root::routes());
    all.extend(block_types::routes());
    all.extend(block_schemas::routes());
    all.extend(block_documents::routes());
    all.extend(events::routes());
    all.extend(feed::routes());
    all.extend(webhooks::routes());
    all.extend(admin::routes());
    all.extend(identity::routes());
    all.extend(metrics::routes());
    all.extend(openapi::routes());
    all
}

/// The whole router, built from [`all_routes`].
pub fn app(state: AppState) -> Router {
    let request_timeout = state.request_timeout;
    let mut router = Router::new();
    for route in all_routes() {
        let handler: MethodRouter<AppState> = if route.versioned {
            route.handler.layer(middleware::from_fn(check_api_version))
        } else {
            route.handler
        };
        router = router.route(route.path, handler);
    }
    // The API behind the token check; the console behind its session check, beside it.
    router
        .layer(middleware::from_fn_with_state(state.clone(), auth::guard))
        .merge(crate::console::router(&state))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state)
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        // Outside the body limit and the timeout, so their answers are JSON and carry the
        // request id too.
        .layer(middleware::map_response(json_error_bodies))
        .layer(middleware::from_fn(request_ids))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
            tracing::info_span!("request", method = %req.method(), route)
        }))
}

/// Errors produced outside our handlers (a body over the limit, a timeout, a path that is
/// not UTF-8) come with plain-text or empty bodies; give them `{"detail": …}` too.
async fn json_error_bodies(response: Response) -> Response {
    let status = response.status();
    // JSON already, or a console page (which says what went wrong in its own words).
    let has_body = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    if !(status.is_client_error() || status.is_server_error()) || has_body {
        return response;
    }
    let detail = status.canonical_reason().unwrap_or("Error");
    (status, axum::Json(serde_json::json!({"detail": detail}))).into_response()
}

/// Gives every request an id (the caller's `x-request-id` when it is a sane one) before
/// anything can answer it, and every answer that lacks one the same id: a 413 or a 408 from
/// the outer layers is as traceable as a handler's answer.
async fn request_ids(mut req: Request, next: Next) -> Response {
    let id = auth::request_id(req.headers());
    let value = axum::http::HeaderValue::from_str(&id).ok();
    if let Some(value) = &value {
        req.headers_mut().insert("x-request-id", value.clone());
    }
    let mut response = next.run(req).await;
    if let Some(value) = value {
        response
            .headers_mut()
            .entry("x-request-id")
            .or_insert(value);
    }
    response
}

/// A path nobody serves: the API's JSON 404 under `/api`, the console's page elsewhere.
async fn not_found(uri: axum::http::Uri) -> Response {
    if crate::console::owns(uri.path()) {
        crate::console::not_found()
    } else {
        ApiError::NotFound("Not Found".into()).into_response()
    }
}

/// Prefect's `EnforceMinimumAPIVersion`: an absent header passes; a malformed or too old
/// one is a 400 with Prefect's wording.
async fn check_api_version(req: Request, next: Next) -> Response {
    if let Some(value) = req.headers().get("x-prefect-api-version") {
        let text = value.to_str().unwrap_or("");
        let parts: Vec<Option<u64>> = text.split('.').map(|p| p.parse().ok()).collect();
        let version = match parts.as_slice() {
            [Some(a), Some(b), Some(c)] => (*a, *b, *c),
            _ => {
                return ApiError::BadRequest(format!(
                    "Invalid X-PREFECT-API-VERSION header format.Expected header in format 'x.y.z' but received {text}"
                ))
                .into_response();
            }
        };
        if version < MINIMUM_API_VERSION {
            return ApiError::BadRequest(format!(
                "The request specified API version {text} but this server requires version 0.8.0 or higher."
            ))
            .into_response();
        }
    }
    next.run(req).await
}

/// A 201 with a JSON body.
fn created<T: serde::Serialize>(value: T) -> Response {
    (StatusCode::CREATED, axum::Json(value)).into_response()
}

type ApiResult<T> = Result<T, ApiError>;

/// Shorthand for the state extractor.
type St = State<AppState>;

#[cfg(test)]
mod audit_tests;
#[cfg(test)]
mod auth_tests;
#[cfg(test)]
mod feed_tests;
#[cfg(test)]
mod grants_tests;
#[cfg(test)]
mod identity_tests;
#[cfg(test)]
mod keys_tests;
#[cfg(test)]
mod metrics_tests;
#[cfg(test)]
mod openapi_tests;
#[cfg(test)]
mod security_tests;
#[cfg(test)]
pub(crate) mod test_app;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod versions_tests;
#[cfg(test)]
mod webhooks_tests;
