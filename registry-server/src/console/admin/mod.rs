//! The admin pages (sessions whose token holds `admin`): tokens, the audit log, data keys
//! and settings. They call the same store methods as the API's admin routes; every write
//! goes through [`audited`](super::session::audited), the form-token check and the
//! same-origin check like every console form, and a session without `admin` gets a 403
//! page naming the scope on every page and post.

mod audit;
mod keys;
mod settings;
mod tokens;

use axum::Router;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use maud::{Markup, html};

use super::layout::{self, Nav, Page};
use super::session::{ConsoleWrite, FormPairs};
use super::{PageError, Viewer};
use crate::http::AppState;
use crate::store::Scope;

/// The admin routes, merged into the console's router (and under its layers).
pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/admin", get(index))
        .route("/admin/tokens", get(tokens::list).post(tokens::create))
        .route("/admin/tokens/new", get(tokens::new_form))
        .route(
            "/admin/tokens/{id}/revoke",
            get(tokens::confirm_revoke).post(tokens::revoke),
        )
        .route("/admin/audit", get(audit::page))
        .route("/admin/audit/download", get(audit::download))
        .route("/admin/keys", get(keys::page))
        .route(
            "/admin/keys/rotate",
            get(keys::confirm_rotate).post(keys::rotate),
        )
        .route("/admin/keys/resume", post(keys::resume))
        .route("/admin/keys/progress", get(keys::progress_page))
        .route("/admin/keys/progress.json", get(keys::progress_json))
        .route(
            "/admin/settings",
            get(settings::page).post(settings::update),
        )
}

/// The 403 of a session without `admin`.
pub(super) fn require_admin(viewer: &Viewer) -> Result<(), PageError> {
    viewer.require(Scope::Admin, "Administering this server")
}

async fn index(viewer: Viewer) -> Result<axum::response::Redirect, Response> {
    require_admin(&viewer).map_err(|e| e.render(Some(&viewer)))?;
    Ok(axum::response::Redirect::to("/admin/tokens"))
}

/// An admin page's answer: the 403 page for a session without `admin` (before `render`
/// starts), else what `render` makes, an error as its page.
pub(super) async fn answer<T>(
    viewer: &Viewer,
    render: impl Future<Output = Result<T, PageError>>,
) -> Result<T, Response> {
    let answer = match require_admin(viewer) {
        Ok(()) => render.await,
        Err(e) => Err(e),
    };
    answer.map_err(|e| e.render(Some(viewer)))
}

/// Runs `work`, an admin write, as [`ConsoleWrite::run`] does, once the session is known to
/// hold `admin` and the form carries its form token.
pub(super) async fn admin_write<F>(
    write: ConsoleWrite,
    action: &'static str,
    target: impl Into<String>,
    work: impl FnOnce(AppState, Viewer, FormPairs) -> F + Send + 'static,
) -> Response
where
    F: Future<Output = Result<(Response, Option<String>), PageError>> + Send + 'static,
{
    write
        .run(
            action,
            target.into(),
            move |state, viewer, form| async move {
                require_admin(&viewer)?;
                viewer.check_form(&form)?;
                work(state, viewer, form).await
            },
        )
        .await
}

/// The admin area's sections, for its own navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    Tokens,
    Audit,
    Keys,
    Settings,
}

/// An admin page inside the console's frame, with the admin area's navigation.
pub(super) fn page(viewer: &Viewer, title: &str, section: Section, body: &Markup) -> Response {
    let current = |s: Section| (s == section).then_some("page");
    let body = html! {
        nav.subnav aria-label="Admin" {
            a href="/admin/tokens" aria-current=[current(Section::Tokens)] { "Tokens" }
            a href="/admin/audit" aria-current=[current(Section::Audit)] { "Audit log" }
            a href="/admin/keys" aria-current=[current(Section::Keys)] { "Keys" }
            a href="/admin/settings" aria-current=[current(Section::Settings)] { "Settings" }
        }
        (body)
    };
    super::html(layout::shell(
        &Page::titled(title).in_nav(Nav::Admin),
        Some(viewer),
        &body,
    ))
}

/// The same page with another status (a refused form: 422).
pub(super) fn page_with_status(
    status: StatusCode,
    viewer: &Viewer,
    title: &str,
    section: Section,
    body: &Markup,
) -> Response {
    let mut response = page(viewer, title, section, body);
    *response.status_mut() = status;
    response
}

/// A refused form shown again with its problems: a 422, and no better audit target.
pub(super) fn refused(
    viewer: &Viewer,
    title: &str,
    section: Section,
    form: &Markup,
) -> (Response, Option<String>) {
    (
        page_with_status(
            StatusCode::UNPROCESSABLE_ENTITY,
            viewer,
            title,
            section,
            form,
        ),
        None,
    )
}

/// The header cells of a list table's columns.
pub(super) fn column_heads(names: &[&str]) -> Markup {
    html! {
        @for name in names {
            th scope="col" { (name) }
        }
    }
}

/// Problems with a submitted form or filter, by field (the field's `id` in the page).
#[derive(Debug, Default)]
pub(super) struct FieldErrors(Vec<(&'static str, String)>);

impl FieldErrors {
    pub(super) fn add(&mut self, field: &'static str, message: impl Into<String>) {
        self.0.push((field, message.into()));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn get(&self, field: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, m)| m.as_str())
    }

    /// The summary at the top of a refused form, each problem linking to its field.
    pub(super) fn summary(&self, what: &str) -> Markup {
        html! {
            @if !self.0.is_empty() {
                div.error-message role="alert" aria-labelledby="error-summary-h" {
                    p #error-summary-h { (what) }
                    ul {
                        @for (field, message) in &self.0 {
                            li { a href=(format!("#{field}")) { (message) } }
                        }
                    }
                }
            }
        }
    }

    /// `aria-invalid` of a field.
    pub(super) fn invalid(&self, field: &str) -> Option<&'static str> {
        self.get(field).map(|_| "true")
    }

    /// `aria-describedby` of a field: its hint, then its error when it has one.
    pub(super) fn described_by(&self, field: &str, hint: bool) -> Option<String> {
        let mut ids = Vec::new();
        if hint {
            ids.push(format!("{field}-hint"));
        }
        if self.get(field).is_some() {
            ids.push(format!("{field}-error"));
        }
        (!ids.is_empty()).then(|| ids.join(" "))
    }

    /// The message under a field, when it has one.
    pub(super) fn at(&self, field: &str) -> Markup {
        html! {
            @if let Some(message) = self.get(field) {
                p.error id=(format!("{field}-error")) { (message) }
            }
        }
    }
}

/// A time as the admin pages show it, in a `<time>` element.
pub(super) fn time(at: DateTime<Utc>) -> Markup {
    html! { time datetime=(at.to_rfc3339()) { (at.format("%Y-%m-%d %H:%M:%S UTC")) } }
}

/// An optional time, or a dash.
pub(super) fn maybe_time(at: Option<DateTime<Utc>>, none: &str) -> Markup {
    match at {
        Some(at) => time(at),
        None => html! { span.muted { (none) } },
    }
}

/// A submitted form of these pairs, for unit tests.
#[cfg(test)]
pub(super) fn form(pairs: &[(&str, &str)]) -> FormPairs {
    FormPairs(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

#[cfg(test)]
mod unit {
    use super::FieldErrors;

    #[test]
    fn field_errors_describe_their_fields() {
        let mut errors = FieldErrors::default();
        assert!(errors.is_empty());
        errors.add("since", "not a time");
        assert_eq!(errors.invalid("since"), Some("true"));
        assert_eq!(errors.invalid("until"), None);
        assert_eq!(
            errors.described_by("since", true).as_deref(),
            Some("since-hint since-error")
        );
        assert_eq!(errors.described_by("until", false), None);
        assert!(
            errors
                .summary("x")
                .into_string()
                .contains("href=\"#since\"")
        );
    }
}
