//! Two blocks of one type side by side (`zoom-postgres` and `zoom-postgres-staging`), with
//! the history's rule for secrets: a field holding one is never shown, whatever the
//! session's scopes, and is said to be the same or different only to a session whose token
//! could read it anyway (`read-secrets`).

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::html;

use super::blocks::{Opened, blocks_page, document_type};
use super::history::{
    Labels, Side, audit_secret_comparison, changes_table, fields, for_viewer, nothing_differs,
    titles_of, uncompared,
};
use super::{PageError, Viewer};
use crate::http::AppState;
use crate::store::{DocumentQuery, MAX_PAGE};

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct CompareQuery {
    /// The other block's id.
    #[serde(default)]
    with: Option<String>,
}

pub(super) async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(raw): Path<String>,
    Query(query): Query<CompareQuery>,
    headers: HeaderMap,
) -> Result<Response, Response> {
    render(&state, &viewer, &raw, query, &headers)
        .await
        .map_err(|e| e.render(Some(&viewer)))
}

async fn render(
    state: &AppState,
    viewer: &Viewer,
    raw: &str,
    query: CompareQuery,
    headers: &HeaderMap,
) -> Result<Response, PageError> {
    let Opened { id, tagged, name } = Opened::read(state, raw).await?;
    let doc = &tagged.document;
    let ty = document_type(doc)?;
    // The blocks it can be compared with: the type's named blocks (the first page of them).
    let others = state
        .store
        .browse_documents(&DocumentQuery {
            block_type_id: Some(ty.id),
            limit: MAX_PAGE,
            ..DocumentQuery::default()
        })
        .await?;
    let with = match query.with.as_deref().filter(|w| !w.is_empty()) {
        None => None,
        Some(other) => {
            let other = Opened::read(state, other).await?.tagged;
            let other_ty = document_type(&other.document)?;
            if other_ty.id != ty.id {
                return Err(PageError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "with: only blocks of one type can be compared; {} is a {} block and {} a {} block.",
                        name,
                        ty.name,
                        other.document.name.clone().unwrap_or_default(),
                        other_ty.name
                    ),
                ));
            }
            Some(other)
        }
    };
    let table = match &with {
        None => None,
        Some(other) => {
            let rows = for_viewer(
                fields(
                    &Side::of(state, id, tagged.version).await?,
                    &Side::of(state, other.document.id, other.version).await?,
                ),
                viewer,
            );
            audit_secret_comparison(
                state,
                headers,
                viewer,
                &rows,
                "GET /blocks/{id}/compare",
                format!("/api/block_documents/{id} compared={}", other.document.id),
            )
            .await?;
            let mut titles = titles_of(doc);
            for (key, title) in titles_of(&other.document) {
                titles.entry(key).or_insert(title);
            }
            let other_name = other.document.name.clone().unwrap_or_default();
            let labels = Labels {
                left: &name,
                right: &other_name,
                changed: "different",
                unchanged: "the same",
                mark: true,
            };
            let differing = rows.iter().filter(|(_, c)| c.differs()).count();
            Some((
                other_name.clone(),
                differing,
                uncompared(&rows),
                changes_table(state, &rows, &titles, &labels).await?,
            ))
        }
    };
    let selected = with.as_ref().map(|w| w.document.id);
    let body = html! {
        nav.crumbs aria-label="Breadcrumb" {
            a href="/blocks" { "Blocks" } " / "
            a href=(format!("/blocks/{id}")) { (name) } " / "
            span aria-current="page" { "Compare" }
        }
        h1 { "Compare " (name) }
        form.search method="get" action=(format!("/blocks/{id}/compare")) {
            div.field {
                label for="with" { "With the " (ty.name) " block" }
                select #with name="with" {
                    @for other in others.items.iter().filter(|o| o.id != id) {
                        option value=(other.id) selected[selected == Some(other.id)] { (other.name) }
                    }
                }
            }
            button type="submit" { "Compare" }
        }
        @if others.items.iter().all(|o| o.id == id) {
            p.empty { "There is no other " (ty.name) " block to compare it with." }
        }
        @if let Some((other_name, differing, uncompared_secrets, table)) = &table {
            section aria-labelledby="compare-h" {
                h2 #compare-h { (name) " and " (other_name) }
                p aria-live="polite" {
                    @if *differing == 0 { (nothing_differs(*uncompared_secrets)) }
                    @else if *differing == 1 { "1 field differs (marked)." }
                    @else { (differing) " fields differ (marked)." }
                }
                (table)
            }
        }
    };
    Ok(blocks_page(viewer, format!("Compare {name}"), &body))
}
