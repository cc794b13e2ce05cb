//! Tokens: the list (never a secret), the create form and the page that shows a new
//! token's secret once, and revocation with a confirmation. Revoking a token ends its
//! console sessions (a session lookup joins its token, so they end on every replica; the
//! rows are deleted too).

use std::collections::BTreeSet;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Redirect, Response};
use chrono::{Duration, Utc};
use maud::html;
use secrecy::ExposeSecret as _;
use uuid::Uuid;

use super::{
    FieldErrors, Section, admin_write, answer, column_heads, maybe_time, page, refused,
    require_admin, time,
};
use crate::console::layout::form_token;
use crate::console::session::{ConsoleWrite, FormPairs, grants_text, scopes_text};
use crate::console::{PageError, Viewer};
use crate::http::AppState;
use crate::store::{Scope, StoreError, TokenCreate, TokenInfo};

/// Tokens the list shows at most (the newest).
const MAX_LISTED: usize = 1000;
/// The longest expiry that may be chosen, in days (ten years).
const MAX_EXPIRY_DAYS: i64 = 3650;

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct ListQuery {
    #[serde(default)]
    revoked: Option<String>,
}

fn parse_token_id(raw: &str) -> Result<Uuid, PageError> {
    Uuid::parse_str(raw)
        .map_err(|_| PageError::not_found("There is no such token (its id is not a UUID)."))
}

fn state_of(token: &TokenInfo) -> (&'static str, &'static str) {
    if token.revoked.is_some() {
        ("revoked", "badge revoked")
    } else if token.expires.is_some_and(|e| e <= Utc::now()) {
        ("expired", "badge expired")
    } else {
        ("active", "badge active")
    }
}

pub(super) async fn list(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(query): Query<ListQuery>,
) -> Result<Response, Response> {
    answer(&viewer, render_list(&state, &viewer, &query)).await
}

async fn render_list(
    state: &AppState,
    viewer: &Viewer,
    query: &ListQuery,
) -> Result<Response, PageError> {
    let mut tokens = state.store.list_tokens().await?;
    let total = tokens.len();
    tokens.truncate(MAX_LISTED);
    let revoked = query
        .revoked
        .as_deref()
        .and_then(|r| Uuid::parse_str(r).ok())
        .and_then(|id| tokens.iter().find(|t| t.id == id));
    let body = html! {
        div.title-row {
            h1 { "Tokens" }
            div.actions { a.button.primary href="/admin/tokens/new" { "Create a token" } }
        }
        @if let Some(t) = revoked {
            p.notice role="status" { "The token " strong { (t.name) } " is revoked: it fails from its next request on, and its console sessions have ended." }
        }
        p.hint { "A token's secret is shown once, when it is made; the server keeps only a digest. "
            "Revoking a token ends its API access and its console sessions." }
        div.table-wrap {
            table.list #tokens {
                caption.visually-hidden { "Tokens, newest first" }
                thead { tr {
                    (column_heads(&["Name", "Scopes", "Blocks", "State", "Created", "Last used", "Expires"]))
                    th scope="col" { span.visually-hidden { "Actions" } }
                } }
                tbody {
                    @for t in &tokens {
                        @let (label, class) = state_of(t);
                        tr id=(format!("t-{}", t.id)) {
                            th scope="row" {
                                (t.name)
                                @if t.id == viewer.token.id { " " span.badge { "this session" } }
                                br; code.muted { (t.id) }
                            }
                            td { (scopes_text(t)) }
                            td { (grants_text(t)) }
                            td { span class=(class) { (label) } @if let Some(at) = t.revoked { " " (time(at)) } }
                            td { (time(t.created)) }
                            td { (maybe_time(t.last_used, "never")) }
                            td { (maybe_time(t.expires, "never")) }
                            td {
                                a href=(format!("/admin/audit?token={}", t.id)) { "Audit" span.visually-hidden { " records of " (t.name) } }
                                @if t.revoked.is_none() {
                                    " · "
                                    a href=(format!("/admin/tokens/{}/revoke", t.id)) { "Revoke" span.visually-hidden { " " (t.name) } }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if total > tokens.len() {
            p.muted { "The newest " (tokens.len()) " of " (total) " tokens are shown." }
        }
    };
    Ok(page(viewer, "Tokens", Section::Tokens, &body))
}

/// What the create form was given, to show it again with its problems.
#[derive(Debug, Default)]
struct Draft {
    name: String,
    scopes: BTreeSet<Scope>,
    expires_days: String,
    grants: String,
}

fn render_form(viewer: &Viewer, draft: &Draft, errors: &FieldErrors) -> maud::Markup {
    html! {
        nav.crumbs aria-label="Breadcrumb" { a href="/admin/tokens" { "Tokens" } " / " span aria-current="page" { "Create" } }
        h1 { "Create a token" }
        (errors.summary("The token was not created:"))
        form.form-panel method="post" action="/admin/tokens" novalidate {
            (form_token(viewer))
            div.field {
                label for="name" { "Name" }
                input #name type="text" name="name" value=(draft.name) required maxlength="100"
                    autocomplete="off" spellcheck="false"
                    aria-invalid=[errors.invalid("name")]
                    aria-describedby=[errors.described_by("name", true)];
                p.hint #name-hint { "Who or what uses it, e.g. ci-deploy (1 to 100 characters)." }
                (errors.at("name"))
            }
            fieldset #scopes aria-describedby=[errors.described_by("scopes", true)] {
                legend { "Scopes" }
                p.hint #scopes-hint { "admin implies every scope; write and read-secrets each imply read." }
                @for scope in Scope::ALL {
                    div.field.check {
                        input type="checkbox" id=(format!("scope-{}", scope.as_str())) name="scope"
                            value=(scope.as_str()) checked[draft.scopes.contains(&scope)];
                        label for=(format!("scope-{}", scope.as_str())) { (scope.as_str()) }
                    }
                }
                (errors.at("scopes"))
            }
            div.field {
                label for="grants" { "Limited to blocks " span.optional { "(optional)" } }
                textarea #grants name="grants" rows="4" spellcheck="false" autocomplete="off"
                    aria-invalid=[errors.invalid("grants")]
                    aria-describedby=[errors.described_by("grants", true)] { (draft.grants) }
                p.hint #grants-hint {
                    "One grant per line, " code { "scope:type-slug/name" } " with " code { "*" } " globs, e.g. "
                    code { "read-secrets:gcs-bucket/zoom-gcs" } ". Empty: every block. A token with grants cannot open this console; admin tokens take none."
                }
                (errors.at("grants"))
            }
            div.field {
                label for="expires_days" { "Expires after (days) " span.optional { "(optional)" } }
                input #expires_days type="number" name="expires_days" value=(draft.expires_days)
                    min="1" max=(MAX_EXPIRY_DAYS) inputmode="numeric"
                    aria-invalid=[errors.invalid("expires_days")]
                    aria-describedby=[errors.described_by("expires_days", true)];
                p.hint #expires_days-hint { "Empty: the token never expires. At most " (MAX_EXPIRY_DAYS) " days." }
                (errors.at("expires_days"))
            }
            div.actions {
                button.primary type="submit" { "Create token" }
                a.button href="/admin/tokens" { "Cancel" }
            }
        }
    }
}

pub(super) async fn new_form(viewer: Viewer) -> Response {
    if let Err(e) = require_admin(&viewer) {
        return e.render(Some(&viewer));
    }
    let draft = Draft {
        scopes: BTreeSet::from([Scope::Read]),
        ..Draft::default()
    };
    page(
        &viewer,
        "Create a token",
        Section::Tokens,
        &render_form(&viewer, &draft, &FieldErrors::default()),
    )
}

/// The create form's values, or the draft with its problems.
fn parse_create(form: &FormPairs) -> Result<TokenCreate, (Draft, FieldErrors)> {
    let mut errors = FieldErrors::default();
    let name = form.get("name").unwrap_or("").trim().to_owned();
    if name.is_empty() || name.chars().count() > 100 {
        errors.add("name", "Name: give 1 to 100 characters.");
    }
    let mut scopes = BTreeSet::new();
    let mut unknown = false;
    for (_, value) in form.0.iter().filter(|(n, _)| n == "scope") {
        match Scope::ALL.iter().find(|s| s.as_str() == value) {
            Some(scope) => {
                scopes.insert(*scope);
            }
            None => unknown = true,
        }
    }
    if unknown {
        errors.add(
            "scopes",
            "Scopes: only read, read-secrets, write and admin exist.",
        );
    } else if scopes.is_empty() {
        errors.add("scopes", "Scopes: choose at least one.");
    }
    let days_text = form.get("expires_days").unwrap_or("").trim();
    let expires = if days_text.is_empty() {
        None
    } else {
        match days_text.parse::<i64>() {
            Ok(days) if (1..=MAX_EXPIRY_DAYS).contains(&days) => {
                Some(Utc::now() + Duration::days(days))
            }
            _ => {
                errors.add(
                    "expires_days",
                    format!(
                        "Expires after: a whole number of days from 1 to {MAX_EXPIRY_DAYS}, or empty for never."
                    ),
                );
                None
            }
        }
    };
    let grants_text = form.get("grants").unwrap_or("");
    let mut grants = Vec::new();
    for (i, line) in grants_text.lines().map(str::trim).enumerate() {
        if line.is_empty() {
            continue;
        }
        if grants.len() >= crate::store::MAX_GRANTS {
            errors.add(
                "grants",
                format!(
                    "Limited to blocks: at most {} grants.",
                    crate::store::MAX_GRANTS
                ),
            );
            break;
        }
        match crate::store::Grant::parse(line) {
            Ok(grant) => grants.push(grant),
            Err(e) => {
                errors.add("grants", format!("Limited to blocks, line {}: {e}.", i + 1));
                break;
            }
        }
    }
    if errors.get("grants").is_none()
        && errors.get("scopes").is_none()
        && let Some(problem) = crate::store::check_grants(&scopes, &grants).first()
    {
        errors.add("grants", format!("Limited to blocks: {}.", problem.message));
    }
    if errors.is_empty() {
        Ok(TokenCreate {
            name,
            scopes,
            expires,
            grants,
            ..Default::default()
        })
    } else {
        let mut draft = Draft {
            name,
            scopes,
            expires_days: days_text.to_owned(),
            grants: grants_text.chars().take(20_000).collect(),
        };
        draft.name = draft.name.chars().take(200).collect();
        draft.expires_days = draft.expires_days.chars().take(20).collect();
        Err((draft, errors))
    }
}

pub(super) async fn create(write: ConsoleWrite) -> Response {
    admin_write(write, "POST /admin/tokens", "/api/tokens", |state, viewer, form| async move {
        let body = match parse_create(&form) {
            Ok(body) => body,
            Err((draft, errors)) => {
                let form = render_form(&viewer, &draft, &errors);
                return Ok(refused(&viewer, "Create a token", Section::Tokens, &form));
            }
        };
        let created = state.store.create_token(body).await?;
        let info = &created.info;
        let target = format!("/api/tokens/{}", info.id);
        let page_body = html! {
            nav.crumbs aria-label="Breadcrumb" { a href="/admin/tokens" { "Tokens" } " / " span aria-current="page" { "Created" } }
            h1 { "Token created" }
            div.error-message role="alert" {
                strong { "Copy the token now: this is the only time it is shown." }
                " The server keeps only a digest of it; if it is lost, revoke it and create another."
            }
            div.new-token {
                code #new-token { (created.token.expose_secret()) }
                button.copy type="button" data-copy="new-token" hidden { "Copy" }
            }
            dl.values {
                dt { "Name" } dd { (info.name) }
                dt { "Id" } dd { code { (info.id) } }
                dt { "Scopes" } dd { (scopes_text(info)) }
                dt { "Blocks" } dd { (grants_text(info)) }
                dt { "Expires" } dd { (maybe_time(info.expires, "never")) }
            }
            div.actions { a.button.primary href="/admin/tokens" { "Done" } }
        };
        let mut response = page(&viewer, "Token created", Section::Tokens, &page_body);
        *response.status_mut() = StatusCode::CREATED;
        Ok((response, Some(target)))
    })
    .await
}

async fn find_token(state: &AppState, id: Uuid) -> Result<TokenInfo, PageError> {
    state
        .store
        .list_tokens()
        .await?
        .into_iter()
        .find(|t| t.id == id)
        .ok_or_else(|| PageError::not_found("There is no such token."))
}

pub(super) async fn confirm_revoke(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(raw): Path<String>,
) -> Result<Response, Response> {
    answer(&viewer, async {
        let id = parse_token_id(&raw)?;
        let token = find_token(&state, id).await?;
        let body = html! {
            section.narrow {
                nav.crumbs aria-label="Breadcrumb" { a href="/admin/tokens" { "Tokens" } " / " span aria-current="page" { "Revoke" } }
                h1 { "Revoke " (token.name) "?" }
                @if token.revoked.is_some() {
                    p.notice role="status" { "This token is already revoked." }
                    p { a.button href="/admin/tokens" { "Back to the tokens" } }
                } @else {
                    p { "The token " strong { (token.name) } " (" (scopes_text(&token)) ") will fail from its next request on, and every console session signed in with it ends. This cannot be undone." }
                    @if token.id == viewer.token.id {
                        p.error-message role="alert" { "This is the token of your own session: you will be signed out." }
                    }
                    form method="post" action=(format!("/admin/tokens/{id}/revoke")) {
                        (form_token(&viewer))
                        div.actions {
                            button.danger type="submit" { "Revoke " (token.name) }
                            a.button href="/admin/tokens" { "Cancel" }
                        }
                    }
                }
            }
        };
        Ok(page(
            &viewer,
            &format!("Revoke {}", token.name),
            Section::Tokens,
            &body,
        ))
    })
    .await
}

pub(super) async fn revoke(Path(raw): Path<String>, write: ConsoleWrite) -> Response {
    let target = format!("/api/tokens/{raw}");
    admin_write(write, "POST /admin/tokens/{id}/revoke", target, move |state, viewer, _| async move {
        let id = parse_token_id(&raw)?;
        let revoked = match state.store.revoke_token(id).await {
            Ok(t) => t,
            Err(StoreError::NotFound(_)) => {
                return Err(PageError::not_found("There is no such token."));
            }
            Err(e) => return Err(e.into()),
        };
        let ended = state.store.end_sessions_of_token(revoked.id).await?;
        tracing::info!(token_id = %revoked.id, sessions = ended, "token revoked from the console");
        let to = if revoked.id == viewer.token.id {
            "/sign-in?ended=1".to_owned()
        } else {
            format!("/admin/tokens?revoked={}", revoked.id)
        };
        Ok((
            Redirect::to(&to).into_response(),
            Some(format!("/api/tokens/{}", revoked.id)),
        ))
    })
    .await
}

#[cfg(test)]
mod unit {
    use super::super::form;
    use super::*;

    #[test]
    fn the_create_form_is_checked_field_by_field() {
        let ok = parse_create(&form(&[
            ("name", " ci "),
            ("scope", "read"),
            ("scope", "write"),
            ("expires_days", "30"),
        ]))
        .unwrap();
        assert_eq!(ok.name, "ci");
        assert_eq!(ok.scopes, BTreeSet::from([Scope::Read, Scope::Write]));
        assert!(ok.expires.is_some());

        let (_, errors) = parse_create(&form(&[
            ("name", ""),
            ("scope", "root"),
            ("expires_days", "0"),
        ]))
        .unwrap_err();
        assert!(errors.get("name").is_some());
        assert!(errors.get("scopes").unwrap().contains("only read"));
        assert!(errors.get("expires_days").is_some());

        let (_, errors) =
            parse_create(&form(&[("name", "x"), ("expires_days", "1e9")])).unwrap_err();
        assert!(errors.get("scopes").unwrap().contains("at least one"));
        assert!(errors.get("expires_days").is_some());

        // Grants, one per line.
        let ok = parse_create(&form(&[
            ("name", "etl"),
            ("scope", "read-secrets"),
            (
                "grants",
                "read-secrets:gcs-bucket/zoom-gcs\n\n  read-secrets:gcp-credentials/zoom-*  \n",
            ),
        ]))
        .unwrap();
        assert_eq!(ok.grants.len(), 2);
        let (draft, errors) = parse_create(&form(&[
            ("name", "etl"),
            ("scope", "read"),
            ("grants", "read:gcs-bucket/zoom-gcs\nzoom-gcs"),
        ]))
        .unwrap_err();
        assert!(
            errors.get("grants").unwrap().contains("line 2"),
            "{:?}",
            errors.get("grants")
        );
        assert!(
            draft.grants.contains("zoom-gcs"),
            "what was typed is shown again"
        );
        let (_, errors) = parse_create(&form(&[
            ("name", "boss"),
            ("scope", "admin"),
            ("grants", "read:*/*"),
        ]))
        .unwrap_err();
        assert!(
            errors
                .get("grants")
                .unwrap()
                .contains("admin token cannot be limited")
        );
        let (_, errors) = parse_create(&form(&[
            ("name", "reader"),
            ("scope", "read"),
            ("grants", "write:*/*"),
        ]))
        .unwrap_err();
        assert!(
            errors
                .get("grants")
                .unwrap()
                .contains("do not include write")
        );
    }
}
