//! Root endpoints: health, versions, readiness, CSRF.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::routes::{Route, get};
use super::{API_VERSION, AppState, PREFECT_VERSION};

pub(super) fn routes() -> Vec<Route> {
    let routes = vec![
        get("/api/health", || async { Json(true) })
            .public()
            .unversioned()
            .summary("Liveness: always true")
            .returns(200, Some("Boolean")),
        get("/api/version", || async { Json(API_VERSION) })
            .public()
            .unversioned()
            .summary("The Prefect API version this server speaks")
            .returns(200, Some("String")),
        get("/api/ready", ready)
            .public()
            .unversioned()
            .summary("Readiness: 200 once the store answers, 503 otherwise")
            .returns(200, Some("Message")),
        get("/api/admin/version", || async { Json(PREFECT_VERSION) })
            .summary("The Prefect server version reported to clients")
            .returns(200, Some("String")),
        get("/api/hello", || async { Json("👋") })
            .summary("A greeting")
            .returns(200, Some("String")),
        get("/api/csrf-token", csrf_token)
            .summary("CSRF protection is off: always 422")
            .query(&[("client", "string", "The client's id")])
            .returns(422, Some("Error")),
    ];
    routes.into_iter().map(|r| r.tag("server")).collect()
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
