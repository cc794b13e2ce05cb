//! Revealing one secret field of a block, for a session whose token holds `read-secrets`.
//!
//! A reveal is a POST (no link, prefetch or crawler can make one), answered with
//! `Cache-Control: no-store` like every console page, and recorded in the audit log with
//! the field's name, never its value. The script asks for JSON and shows the value in place
//! for 30 seconds (or until the page is left); without the script the answer is a page of
//! its own, which the script (when it runs) leaves after 30 seconds, and which is never
//! cached, so Back or a reload does not show the value again without a new, audited reveal.
//! A GET (a sign-in coming back, a typed address) is sent to the block's page.

use axum::Json;
use axum::extract::Path;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde_json::{Value, json};

use super::PageError;
use super::blocks::{document_type, parse_id, read_masked, target_id};
use super::history::holds_mask;
use super::layout::{self, Nav, Page};
use super::session::ConsoleWrite;
use crate::store::Scope;

/// Seconds a revealed value stays shown.
pub(crate) const SHOWN_FOR_SECONDS: u32 = 30;

/// The longest field name taken (longer ones name no field).
const MAX_FIELD: usize = 255;

/// Whether the caller (the console's script) asked for JSON.
fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// A value as text: a string as it is, anything else as indented JSON.
fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    }
}

/// `GET /blocks/{id}/reveal`: nothing is revealed by a GET; back to the block.
pub(super) async fn back(Path(raw): Path<String>) -> Response {
    match parse_id(&raw) {
        Ok(id) => axum::response::Redirect::to(&format!("/blocks/{id}")).into_response(),
        Err(e) => e.into_response(),
    }
}

pub(super) async fn reveal(Path(raw): Path<String>, write: ConsoleWrite) -> Response {
    let field: String = write
        .form()
        .get("field")
        .unwrap_or("")
        .chars()
        .take(MAX_FIELD + 1)
        .collect();
    let json = wants_json(write.headers());
    let target = format!("/api/block_documents/{} field={field}", target_id(&raw));
    write
        .run("POST /blocks/{id}/reveal", target, move |state, viewer, form| async move {
            viewer.check_form(&form)?;
            viewer.require(Scope::ReadSecrets, "Revealing a secret")?;
            let id = parse_id(&raw)?;
            let tagged = read_masked(&state, id).await?;
            let doc = &tagged.document;
            if field.len() > MAX_FIELD || !doc.data.get(&field).is_some_and(holds_mask) {
                return Err(PageError::not_found(
                    "field: this block has no secret field of that name.",
                ));
            }
            let open = state.store.read_version(id, tagged.version, true).await?;
            let value = as_text(open.get(&field).unwrap_or(&Value::Null));
            let name = doc.name.clone().unwrap_or_default();
            if json {
                let answer = json!({"field": field, "value": value, "hide_after": SHOWN_FOR_SECONDS});
                return Ok((Json(answer).into_response(), None));
            }
            let ty = document_type(doc)?;
            let title = super::history::titles_of(doc)
                .remove(&field)
                .unwrap_or_else(|| field.clone());
            let body = html! {
                nav.crumbs aria-label="Breadcrumb" {
                    a href="/blocks" { "Blocks" } " / "
                    a href=(format!("/blocks/{id}")) { (name) } " / "
                    span aria-current="page" { "Revealed secret" }
                }
                h1 { (title) " of " (name) }
                p.meta { (ty.name) " · version " (tagged.version) }
                div.revealed-page data-hide-after=(SHOWN_FOR_SECONDS) data-back=(format!("/blocks/{id}")) {
                    div.snippet {
                        div.snippet-head {
                            h2 #revealed-h { "Value" }
                            button.copy type="button" data-copy="revealed-value" hidden { "Copy" }
                        }
                        pre { code #revealed-value aria-labelledby="revealed-h" { (value) } }
                    }
                    p.hint { "This reveal was recorded in the audit log. The value is hidden again after " (SHOWN_FOR_SECONDS) " seconds or when you leave this page." }
                    p { a.button href=(format!("/blocks/{id}")) { "Hide" } }
                }
            };
            let page = super::html(layout::shell(
                &Page::titled(format!("{title} of {name}")).in_nav(Nav::Blocks),
                Some(&viewer),
                &body,
            ));
            Ok((page, None))
        })
        .await
}
