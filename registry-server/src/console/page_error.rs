//! A refused or failed page: its status and a message for a person. Server errors are
//! logged with their detail and shown without it, as the API does.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::html;

use super::Viewer;
use super::layout::{self, Page};
use crate::http::ApiError;
use crate::store::StoreError;

/// An error page.
#[derive(Debug)]
pub(crate) struct PageError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    /// Documents named by a refusal (the referrers of a document that cannot be deleted).
    pub(crate) names: Vec<String>,
}

impl PageError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            names: Vec::new(),
        }
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// The error as a page, inside the console's frame.
    pub(crate) fn render(&self, viewer: Option<&Viewer>) -> Response {
        let title = self
            .status
            .canonical_reason()
            .unwrap_or("Something went wrong");
        let body = html! {
            section.narrow {
                h1 { (title) }
                p.error-message role="alert" { (self.message) }
                @if !self.names.is_empty() {
                    ul { @for name in &self.names { li { code { (name) } } } }
                }
                p { a href="/blocks" { "Back to the blocks" } }
            }
        };
        let mut response = super::html(layout::shell(&Page::titled(title), viewer, &body));
        *response.status_mut() = self.status;
        response
    }
}

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> Self {
        let status = error.status();
        let message = match &error {
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "console page failed: internal error");
                "The server failed to answer; the error is in its log.".to_owned()
            }
            ApiError::Unavailable(detail) => {
                tracing::warn!(%detail, "console page failed: service unavailable");
                "The store is unavailable or busy; try again in a moment.".to_owned()
            }
            ApiError::Validation(errors) => errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            other => other.to_string(),
        };
        Self::new(status, message)
    }
}

impl From<StoreError> for PageError {
    fn from(error: StoreError) -> Self {
        let names = match &error {
            StoreError::InUse { referrers, .. } => referrers.clone(),
            _ => Vec::new(),
        };
        let mut page = Self::from(ApiError::from(error));
        page.names = names;
        page
    }
}

/// Handlers that know no viewer (or failed before knowing one) answer with the bare frame.
impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        self.render(None)
    }
}
