//! The landing page after sign-in: how many blocks of each type, the latest changes, and
//! what needs a look (blocks on an older schema than their type's newest, with "Upgrade";
//! references to a block of a type the field does not take).

use std::collections::HashMap;

use axum::extract::State;
use axum::response::Response;
use maud::html;
use uuid::Uuid;

use super::history::{token_names, written_by};
use super::layout::{self, Nav, Page};
use super::{PageError, Viewer, catalog};
use crate::http::AppState;
use crate::store::{COUNT_CAP, Scope};

/// Latest changes shown.
const RECENT: u32 = 10;
/// Blocks needing a look shown per list.
const ATTENTION: u32 = 20;

pub(super) async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
) -> Result<Response, Response> {
    render(&state, &viewer)
        .await
        .map_err(|e| e.render(Some(&viewer)))
}

async fn render(state: &AppState, viewer: &Viewer) -> Result<Response, PageError> {
    let types = catalog::all_types(&state.store).await?;
    let counts: HashMap<Uuid, i64> = state
        .store
        .document_counts_by_type(false)
        .await?
        .into_iter()
        .collect();
    let total: i64 = counts.values().sum();
    let recent = state.store.recent_changes(RECENT).await?;
    let (outdated, outdated_total) = state.store.outdated_documents(ATTENTION).await?;
    let mistyped = state.store.mistyped_references(ATTENTION).await?;
    let token_names = token_names(state, viewer).await?;
    let may_write = viewer.may(Scope::Write);
    let body = html! {
        h1 { "Dashboard" }
        section aria-labelledby="counts-h" {
            h2 #counts-h { (total) " blocks" }
            @if total == 0 {
                p.empty { "No blocks yet. " a href="/blocks/new" { "Add the first one" } "." }
            } @else {
                ul.type-counts {
                    @for ty in types.iter().filter(|t| counts.contains_key(&t.id)) {
                        li {
                            a href=(format!("/blocks?type={}", ty.slug)) {
                                img src=(catalog::icon(&ty.slug)) alt="" width="20" height="20";
                                span.count { (counts[&ty.id]) } " " (ty.name)
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="recent-h" {
            h2 #recent-h { "Latest changes" }
            @if recent.is_empty() {
                p.muted { "Nothing written yet." }
            } @else {
                div.table-wrap {
                    table.list {
                        thead { tr { th scope="col" { "Block" } th scope="col" { "Type" } th scope="col" { "Version" } th scope="col" { "Written" } th scope="col" { "By" } } }
                        tbody {
                            @for change in &recent {
                                tr {
                                    td { a href=(format!("/blocks/{}", change.id)) { (change.name) } }
                                    td { (change.type_name) }
                                    td { a href=(format!("/blocks/{}/history", change.id)) aria-label=(format!("History of {}: version {}", change.name, change.version)) { (change.version) } }
                                    td { time datetime=(change.updated.to_rfc3339()) { (change.updated.format("%Y-%m-%d %H:%M UTC")) } }
                                    td { (written_by(change.token_id, &token_names)) }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="attention-h" {
            h2 #attention-h { "Needs a look" }
            @if outdated.is_empty() && mistyped.is_empty() {
                p.muted { "Every block uses its type's newest schema, and every reference points to a block of a type its field takes." }
            }
            @if !outdated.is_empty() {
                h3 #outdated-h {
                    (outdated_total) @if outdated_total >= COUNT_CAP { " or more" } " on an older schema"
                }
                ul aria-labelledby="outdated-h" {
                    @for doc in &outdated {
                        li {
                            a href=(format!("/blocks/{}", doc.id)) { (doc.name) }
                            " " span.muted { "(" (doc.type_name) ": schema " (doc.schema_version) ", newest " (doc.newest_version) ")" }
                            @if may_write {
                                " " a.button href=(format!("/blocks/{}/edit?schema=newest", doc.id)) aria-label=(format!("Upgrade {}", doc.name)) { "Upgrade" }
                            }
                        }
                    }
                    @if outdated_total > outdated.len() as i64 { li.muted { "and " (outdated_total - outdated.len() as i64) " more" } }
                }
            }
            @if !mistyped.is_empty() {
                h3 #mistyped-h { "Broken references" }
                ul aria-labelledby="mistyped-h" {
                    @for r in &mistyped {
                        li {
                            a href=(format!("/blocks/{}", r.id)) { (r.name) }
                            ": " code { (r.field) } " references a " code { (r.found) } " block; it takes " (r.expected.join(" or "))
                        }
                    }
                }
            }
        }
    };
    Ok(super::html(layout::shell(
        &Page::titled("Dashboard").in_nav(Nav::Dashboard),
        Some(viewer),
        &body,
    )))
}
