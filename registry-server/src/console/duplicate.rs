//! Duplicating a block as a new one under another name. The copy is made by the store from
//! the sealed current version: secrets go from one sealed row to another and never through
//! the browser, so a token without `read-secrets` may duplicate a block it may write.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::blocks::{document_type, parse_id, read_masked, target_id};
use super::layout::{self, Nav, Page, form_token};
use super::session::ConsoleWrite;
use super::{PageError, Viewer};
use crate::http::AppState;
use crate::store::{Scope, StoreError};

/// The duplicate form, with the name asked for and a problem with it.
fn form_page(
    viewer: &Viewer,
    id: uuid::Uuid,
    original: &str,
    slug: &str,
    name: &str,
    problem: Option<&str>,
) -> Markup {
    html! {
        nav.crumbs aria-label="Breadcrumb" {
            a href="/blocks" { "Blocks" } " / "
            a href=(format!("/blocks/{id}")) { (original) } " / "
            span aria-current="page" { "Duplicate" }
        }
        section.narrow {
            h1 { "Duplicate " (original) }
            p { "A new block with the same values, references and secrets. Secrets are copied on the server; they are not sent to this page." }
            form.form-panel method="post" action=(format!("/blocks/{id}/duplicate")) novalidate {
                (form_token(viewer))
                div.field {
                    label for="block-name" { "Name of the new block" }
                    input #block-name type="text" name="_name" value=(name) required maxlength="255"
                        autocomplete="off" spellcheck="false" data-name-check=(slug)
                        aria-invalid=[problem.map(|_| "true")]
                        aria-describedby=(if problem.is_some() { "block-name-hint block-name-error block-name-taken" } else { "block-name-hint block-name-taken" });
                    p.hint #block-name-hint { "Letters, digits and dashes, e.g. zoom-postgres-staging." }
                    @if let Some(problem) = problem {
                        p.error #block-name-error { (problem) }
                    }
                    p.error #block-name-taken aria-live="polite" {}
                }
                div.actions {
                    button.primary type="submit" { "Duplicate" }
                    a.button href=(format!("/blocks/{id}")) { "Cancel" }
                }
            }
        }
    }
}

pub(super) async fn form(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(raw): Path<String>,
) -> Result<Response, Response> {
    async {
        viewer.require(Scope::Write, "Duplicating a block")?;
        let id = parse_id(&raw)?;
        let tagged = read_masked(&state, id).await?;
        let ty = document_type(&tagged.document)?;
        let original = tagged.document.name.clone().unwrap_or_default();
        let suggested = format!("{original}-copy");
        let body = form_page(&viewer, id, &original, &ty.slug, &suggested, None);
        Ok::<_, PageError>(super::html(layout::shell(
            &Page::titled(format!("Duplicate {original}")).in_nav(Nav::Blocks),
            Some(&viewer),
            &body,
        )))
    }
    .await
    .map_err(|e| e.render(Some(&viewer)))
}

pub(super) async fn duplicate(Path(raw): Path<String>, write: ConsoleWrite) -> Response {
    let target = format!("/api/block_documents/{}", target_id(&raw));
    write
        .run(
            "POST /blocks/{id}/duplicate",
            target,
            move |state, viewer, form| async move {
                viewer.check_form(&form)?;
                viewer.require(Scope::Write, "Duplicating a block")?;
                let id = parse_id(&raw)?;
                let tagged = read_masked(&state, id).await?;
                let ty = document_type(&tagged.document)?;
                let original = tagged.document.name.clone().unwrap_or_default();
                let name = form.get("_name").unwrap_or("").trim().to_owned();
                let again = |status: StatusCode, problem: String| {
                    let body = form_page(&viewer, id, &original, &ty.slug, &name, Some(&problem));
                    let mut page = super::html(layout::shell(
                        &Page::titled(format!("Duplicate {original}")).in_nav(Nav::Blocks),
                        Some(&viewer),
                        &body,
                    ));
                    *page.status_mut() = status;
                    Ok((page, None))
                };
                match state
                    .store
                    .duplicate_block_document(id, &name, Some(viewer.token.id))
                    .await
                {
                    Ok(copy) => Ok((
                        Redirect::to(&format!("/blocks/{}?saved=duplicated", copy.id))
                            .into_response(),
                        Some(format!("/api/block_documents/{id} copy={}", copy.id)),
                    )),
                    Err(StoreError::AlreadyExists(_)) => again(
                        StatusCode::CONFLICT,
                        format!("A {} block named {name} exists already.", ty.name),
                    ),
                    Err(StoreError::Invalid(errors)) => again(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        errors
                            .iter()
                            .map(|e| e.message.clone())
                            .collect::<Vec<_>>()
                            .join("; "),
                    ),
                    Err(e) => Err(e.into()),
                }
            },
        )
        .await
}
