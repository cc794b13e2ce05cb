//! Root endpoints: health, versions, readiness, CSRF.

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::{API_VERSION, AppState, PREFECT_VERSION};

/// Endpoints outside the API-version check (as in Prefect).
pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(|| async { Json(true) }))
        .route("/version", get(|| async { Json(API_VERSION) }))
        .route("/ready", get(ready))
}

/// Endpoints under the API-version check.
pub(super) fn versioned_router() -> Router<AppState> {
    Router::new()
        .route("/admin/version", get(|| async { Json(PREFECT_VERSION) }))
        .route("/hello", get(|| async { Json("👋") }))
        .route("/csrf-token", get(csrf_token))
}

async fn ready(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(json!({"message": "OK"})).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"message": "Database is not available"})),
            )
                .into_response()
        }
    }
}

/// CSRF protection is off: Prefect clients read this 422 and stop asking.
async fn csrf_token(Query(query): Query<serde_json::Map<String, Value>>) -> Response {
    let detail = if query.contains_key("client") {
        "CSRF protection is disabled."
    } else {
        "CSRF protection is disabled. (The client query parameter is missing.)"
    };
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({"detail": detail})),
    )
        .into_response()
}
