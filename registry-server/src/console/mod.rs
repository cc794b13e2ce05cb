//! The web console at `/`: server-rendered pages (maud) over the same store rules, scope
//! checks and audit records as the API, with a small hand-written script for what needs
//! one (copy, the name check, rows, choices); every core flow works without it.
//!
//! A browser signs in by pasting a token once ([`session`]); the session cookie is
//! accepted on these routes only, never on `/api`. Every page carries a strict
//! Content-Security-Policy and loads nothing from elsewhere ([`assets`] are embedded).

mod admin;
mod assets;
mod blocks;
mod catalog;
mod compare;
mod dashboard;
mod duplicate;
mod edit;
pub(crate) mod form;
mod history;
mod layout;
mod markdown;
mod page_error;
mod reveal;
mod session;
mod snippets;
#[cfg(test)]
mod tests;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::http::AppState;

pub(crate) use page_error::PageError;
pub(crate) use session::Viewer;

/// The console's routes, with their own layers (headers, the cross-site check); the
/// caller adds the shared outer layers (body limit, timeout, request ids, tracing).
pub(crate) fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route(
            "/sign-in",
            get(session::sign_in_page).post(session::sign_in),
        )
        .route("/sign-out", axum::routing::post(session::sign_out))
        .route("/catalog", get(catalog::page))
        .route("/catalog/register", axum::routing::post(catalog::register))
        .route("/blocks", get(blocks::list))
        .route("/blocks/name-check", get(edit::name_check))
        .route("/blocks/new", get(catalog::choose))
        .route("/blocks/new/{slug}", get(edit::new_form).post(edit::create))
        .route("/blocks/{id}", get(blocks::detail))
        .route("/blocks/{id}/edit", get(edit::edit_form).post(edit::update))
        .route("/blocks/{id}/history", get(history::page))
        .route(
            "/blocks/{id}/history/{version}/rollback",
            get(history::confirm_rollback).post(history::rollback),
        )
        .route(
            "/blocks/{id}/history/{version}/destroy",
            get(history::confirm_destroy).post(history::destroy),
        )
        .route(
            "/blocks/{id}/reveal",
            get(reveal::back).post(reveal::reveal),
        )
        .route("/blocks/{id}/compare", get(compare::page))
        .route(
            "/blocks/{id}/duplicate",
            get(duplicate::form).post(duplicate::duplicate),
        )
        .route(
            "/blocks/{id}/delete",
            get(blocks::confirm_delete).post(blocks::delete),
        )
        .route("/assets/{*file}", get(assets::serve))
        .merge(admin::router())
        .layer(middleware::from_fn_with_state(
            state.clone(),
            session::same_origin_writes,
        ))
        .layer(middleware::from_fn(headers))
}

/// Whether `path` belongs to the console (everything outside `/api`, `/metrics` and the
/// root documents the API serves).
pub(crate) fn owns(path: &str) -> bool {
    !(path == "/api" || path.starts_with("/api/") || path == "/metrics")
}

/// The console's answer to a path nobody serves.
pub(crate) fn not_found() -> Response {
    let mut response = PageError::not_found("There is no page here.").render(None);
    secure(&mut response, false);
    response
}

/// The dashboard for a signed-in browser, else the sign-in page.
async fn home(
    state: axum::extract::State<AppState>,
    viewer: Option<Viewer>,
) -> Result<Response, Response> {
    match viewer {
        Some(viewer) => dashboard::page(state, viewer).await,
        None => Ok(Redirect::to("/sign-in").into_response()),
    }
}

/// The Content-Security-Policy of every console answer: nothing from elsewhere, no inline
/// script or style, no framing, forms only to ourselves.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Security headers on every console answer; pages (not assets) are never stored by a
/// cache, since they carry block data.
async fn headers(req: Request, next: Next) -> Response {
    let is_asset = req.uri().path().starts_with("/assets/");
    let mut response = next.run(req).await;
    secure(&mut response, is_asset);
    response
}

/// Adds the security headers to a console answer.
fn secure(response: &mut Response, is_asset: bool) {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !is_asset {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// An HTML answer.
pub(crate) fn html(markup: maud::Markup) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        markup.into_string(),
    )
        .into_response()
}
