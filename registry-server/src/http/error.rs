//! The API's error type: each variant maps to a status and a JSON body in Prefect's shapes.
//! 5xx bodies carry no detail (it is logged instead); no body ever carries a secret value.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use block_types::FieldError;
use serde_json::{Value, json};

use crate::store::StoreError;

/// An API error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 404 `{"detail": …}`.
    #[error("{0}")]
    NotFound(String),
    /// 409 `{"detail": …}`.
    #[error("{0}")]
    Conflict(String),
    /// 400 `{"detail": …}`.
    #[error("{0}")]
    BadRequest(String),
    /// 401 `{"detail": …}` with `WWW-Authenticate: Bearer`.
    #[error("{0}")]
    Unauthorized(String),
    /// 403 `{"detail": …}`.
    #[error("{0}")]
    Forbidden(String),
    /// 412 `{"detail": …}`: an `If-Match` that does not match.
    #[error("{0}")]
    PreconditionFailed(String),
    /// 429 `{"detail": …}` with `Retry-After` (seconds).
    #[error("too many failed authentication attempts; retry after {0} seconds")]
    TooManyRequests(u64),
    /// 429 `{"detail": …}` with `Retry-After: 5`: a limit on open resources (streams), not
    /// on failed authentication.
    #[error("{0}")]
    Busy(String),
    /// 413 `{"detail": …}`.
    #[error("{0}")]
    TooLarge(String),
    /// 422 in Prefect's validation shape, one entry per field.
    #[error("invalid request")]
    Validation(Vec<FieldError>),
    /// 422 `{"detail": …}` (Prefect's plain form, e.g. for limits).
    #[error("{0}")]
    Unprocessable(String),
    /// 503: the database is unavailable or busy.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// 500 `{"detail": …}` that says which document cannot be decrypted (no internal
    /// detail).
    #[error("{0}")]
    Unreadable(String),
    /// 500: logged with detail, answered without.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The status code.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            Self::TooManyRequests(_) | Self::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Validation(_) | Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) | Self::Unreadable(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A 422 about one body field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }
}

/// `a.b.0` → `["body", "a", "b", 0]`.
fn location(field: &str) -> Value {
    let mut loc = vec![json!("body")];
    for part in field.split('.').filter(|p| !p.is_empty()) {
        loc.push(
            part.parse::<u64>()
                .map_or_else(|_| json!(part), |n| json!(n)),
        );
    }
    Value::Array(loc)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            Self::Validation(errors) => json!({
                "exception_message": "Invalid request received.",
                "exception_detail": errors.iter().map(|e| json!({
                    "type": "value_error",
                    "loc": location(&e.field),
                    "msg": e.message,
                })).collect::<Vec<_>>(),
                "detail": errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
                // Prefect echoes the request body here; it may hold secrets, so we do not.
                "request_body": null,
            }),
            Self::Unavailable(detail) => {
                tracing::warn!(%detail, "request failed: service unavailable");
                json!({"exception_message": "Service Unavailable"})
            }
            Self::Internal(detail) => {
                tracing::error!(%detail, "request failed: internal error");
                json!({"exception_message": "Internal Server Error"})
            }
            other => json!({"detail": other.to_string()}),
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::Unauthorized(_) => {
                headers.insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer"),
                );
            }
            Self::TooManyRequests(seconds) => {
                headers.insert(axum::http::header::RETRY_AFTER, (*seconds).into());
            }
            Self::Busy(_) => {
                headers.insert(axum::http::header::RETRY_AFTER, 5.into());
            }
            _ => {}
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(m) => Self::NotFound(m),
            StoreError::AlreadyExists(m)
            | StoreError::MissingBlockType(m)
            | StoreError::Conflict(m) => Self::Conflict(m),
            // Over HTTP, an expected version comes only from `If-Match`.
            StoreError::VersionConflict { .. } => Self::PreconditionFailed(
                "the document changed while the conditional write ran; read it again and retry"
                    .into(),
            ),
            e @ StoreError::InUse { .. } => Self::Conflict(e.to_string()),
            StoreError::Cycle(m) => Self::BadRequest(m),
            StoreError::BadReference(e) | StoreError::BadRequest(e) => {
                Self::BadRequest(e.to_string())
            }
            StoreError::Invalid(errors) => {
                // Prefect answers a bad limit with a plain 422 detail.
                if let [e] = errors.as_slice()
                    && (e.field == "limit" || e.field == "offset")
                {
                    return Self::Unprocessable(e.message.clone());
                }
                Self::Validation(errors)
            }
            StoreError::Protected(m) => Self::Forbidden(m),
            StoreError::Forbidden(e) => Self::Forbidden(e.to_string()),
            StoreError::TooLarge(m) => Self::Unprocessable(m),
            StoreError::Unreadable(m) => Self::Unreadable(m),
            StoreError::Busy(e) => Self::Unavailable(e.to_string()),
            StoreError::Raced(_) => Self::Conflict(
                "the request conflicts with a concurrent change; read the current state and retry"
                    .into(),
            ),
            other => Self::Internal(other.to_string()),
        }
    }
}
