//! The catalog: every registered block type (built-in and registered by clients), grouped
//! by collection, searchable, each with its description, documentation and "Add".

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::extract::{Query, State};
use axum::response::{IntoResponse as _, Response};
use block_types::catalog::Collection;
use block_types::model::{BlockType, BlockTypeFilterBody, MAX_LIMIT};
use maud::{Markup, html};

use super::layout::{self, Nav, Page};
use super::session::ConsoleWrite;
use super::{PageError, Viewer, markdown};
use crate::http::AppState;
use crate::store::{Scope, Store};

/// Most types listed (pages of the API's largest page).
const MAX_TYPES: usize = 10_000;
/// Longest search accepted (bytes).
const MAX_SEARCH: usize = 256;

/// Every registered block type, by name.
pub(crate) async fn all_types(store: &Store) -> Result<Vec<BlockType>, PageError> {
    let mut all = Vec::new();
    loop {
        let page = store
            .filter_block_types(&BlockTypeFilterBody {
                limit: Some(MAX_LIMIT),
                offset: Some(all.len() as i64),
                ..BlockTypeFilterBody::default()
            })
            .await?;
        let n = page.len();
        all.extend(page);
        if n < MAX_LIMIT as usize || all.len() >= MAX_TYPES {
            return Ok(all);
        }
    }
}

/// The collection of each built-in slug, made once: a collection's specs carry whole
/// schemas, and a page names every type (making them per type cost a list page of fifty
/// types ten milliseconds).
static COLLECTIONS: LazyLock<HashMap<String, Collection>> = LazyLock::new(|| {
    Collection::ALL
        .into_iter()
        .flat_map(|c| c.specs().into_iter().map(move |s| (s.block_type.slug, c)))
        .collect()
});

/// The collection a built-in slug belongs to.
pub(crate) fn collection_of(slug: &str) -> Option<Collection> {
    COLLECTIONS.get(slug).copied()
}

/// The icon of a type: its collection's, or the generic one. External logos are never
/// loaded (the page loads nothing from elsewhere).
pub(crate) fn icon(slug: &str) -> String {
    let name = collection_of(slug).map_or("blocks", Collection::name);
    format!("/assets/icons/{name}.svg")
}

fn collection_title(c: Option<Collection>) -> &'static str {
    match c {
        Some(Collection::Core) => "Core",
        Some(Collection::Sqlalchemy) => "SQLAlchemy",
        Some(Collection::Gcp) => "Google Cloud",
        Some(Collection::Docker) => "Docker",
        Some(_) => "Built in",
        None => "Registered by clients",
    }
}

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct CatalogQuery {
    #[serde(default)]
    q: Option<String>,
}

fn matches(ty: &BlockType, q: &str) -> bool {
    let q = q.to_lowercase();
    ty.name.to_lowercase().contains(&q)
        || ty.slug.contains(&q)
        || ty
            .description
            .as_deref()
            .is_some_and(|d| d.to_lowercase().contains(&q))
}

/// A safe documentation link (http or https only).
pub(crate) fn doc_link(ty: &BlockType) -> Option<&str> {
    ty.documentation_url
        .as_deref()
        .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
}

async fn render(
    state: &AppState,
    viewer: &Viewer,
    query: CatalogQuery,
    choosing: bool,
) -> Result<Response, PageError> {
    let q = query.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    if q.is_some_and(|q| q.len() > MAX_SEARCH) {
        return Err(PageError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            format!("The search must be at most {MAX_SEARCH} bytes."),
        ));
    }
    let types = all_types(&state.store).await?;
    let counts: HashMap<uuid::Uuid, i64> = state
        .store
        .document_counts_by_type(false)
        .await?
        .into_iter()
        .collect();
    let mut groups: Vec<(Option<Collection>, Vec<&BlockType>)> = Collection::ALL
        .into_iter()
        .map(Some)
        .chain([None])
        .map(|c| (c, Vec::new()))
        .collect();
    for ty in types.iter().filter(|t| q.is_none_or(|q| matches(t, q))) {
        let c = collection_of(&ty.slug);
        if let Some((_, list)) = groups.iter_mut().find(|(g, _)| *g == c) {
            list.push(ty);
        }
    }
    let may_write = viewer.may(Scope::Write);
    let missing: Vec<Collection> = Collection::ALL
        .into_iter()
        .filter(|c| {
            c.specs()
                .iter()
                .any(|s| !types.iter().any(|t| t.slug == s.block_type.slug))
        })
        .collect();
    let shown: usize = groups.iter().map(|(_, l)| l.len()).sum();
    let title = if choosing { "Add a block" } else { "Catalog" };
    let action = if choosing { "/blocks/new" } else { "/catalog" };
    let body = html! {
        h1 { (title) }
        @if choosing {
            p { "Choose the type of the block to add." }
        }
        @if !may_write {
            p.notice role="note" { "This session's token cannot create blocks (that needs the write scope)." }
        }
        form.search method="get" action=(action) role="search" {
            label for="q" { "Search block types" }
            input #q type="search" name="q" value=[q] maxlength="256" placeholder="gcs, postgres, docker…";
            button type="submit" { "Search" }
        }
        p.count { (shown) " of " (types.len()) " block types" }
        @if !missing.is_empty() {
            section.collection aria-labelledby="c-unregistered" {
                h2 #c-unregistered { "Built in, not registered yet" }
                ul.cards {
                    @for c in &missing {
                        li.card {
                            div.card-head {
                                img src=(format!("/assets/icons/{}.svg", c.name())) alt="" width="32" height="32";
                                div {
                                    h3 { (collection_title(Some(*c))) }
                                    code.slug { (c.specs().iter().map(|s| s.block_type.slug.as_str()).collect::<Vec<_>>().join(", ")) }
                                }
                            }
                            @if may_write {
                                form.card-actions method="post" action="/catalog/register" {
                                    (layout::form_token(viewer))
                                    input type="hidden" name="collection" value=(c.name());
                                    button.primary type="submit" { "Register " (collection_title(Some(*c))) }
                                }
                            } @else {
                                p.muted { "Registering needs the write scope (or " code { "blocks register " (c.name()) } ")." }
                            }
                        }
                    }
                }
            }
        }
        @for (collection, list) in &groups {
            @if !list.is_empty() {
                section.collection aria-labelledby=(format!("c-{}", collection.map_or("other", Collection::name))) {
                    h2 id=(format!("c-{}", collection.map_or("other", Collection::name))) { (collection_title(*collection)) }
                    ul.cards {
                        @for ty in list {
                            li.card { (card(ty, counts.get(&ty.id).copied().unwrap_or(0), may_write)) }
                        }
                    }
                }
            }
        }
    };
    Ok(super::html(layout::shell(
        &Page::titled(title).in_nav(Nav::Catalog),
        Some(viewer),
        &body,
    )))
}

fn card(ty: &BlockType, count: i64, may_write: bool) -> Markup {
    html! {
        div.card-head {
            img src=(icon(&ty.slug)) alt="" width="32" height="32";
            div {
                h3 { (ty.name) }
                code.slug { (ty.slug) }
            }
        }
        @if let Some(description) = &ty.description {
            div.description { (markdown::render(description)) }
        }
        div.card-actions {
            a href=(format!("/blocks?type={}", ty.slug)) { (count) @if count == 1 { " block" } @else { " blocks" } }
            @if let Some(url) = doc_link(ty) {
                a href=(url) rel="noopener noreferrer" { "Documentation" }
            }
            @if may_write {
                a.button.primary href=(format!("/blocks/new/{}", ty.slug)) aria-label=(format!("Add {}", ty.name)) { "Add" }
            }
        }
    }
}

pub(super) async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(query): Query<CatalogQuery>,
) -> Result<Response, Response> {
    render(&state, &viewer, query, false)
        .await
        .map_err(|e| e.render(Some(&viewer)))
}

pub(super) async fn choose(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(query): Query<CatalogQuery>,
) -> Result<Response, Response> {
    render(&state, &viewer, query, true)
        .await
        .map_err(|e| e.render(Some(&viewer)))
}

/// Registers a built-in collection's types and schemas (what `blocks register` does).
pub(super) async fn register(write: ConsoleWrite) -> Response {
    let name = write.form().get("collection").unwrap_or("").to_owned();
    let target = format!("/catalog/register?collection={}", name.escape_default());
    write
        .run(
            "POST /catalog/register",
            target,
            move |state, viewer, form| async move {
                viewer.check_form(&form)?;
                viewer.require(Scope::Write, "Registering block types")?;
                let collection: Collection = name.parse().map_err(|_| {
                    PageError::new(
                        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                        format!("collection: there is no built-in collection \"{name}\""),
                    )
                })?;
                state.store.register_collection(collection).await?;
                Ok((
                    axum::response::Redirect::to("/catalog").into_response(),
                    None,
                ))
            },
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_built_in_slug_belongs_to_one_collection() {
        let mut seen = HashMap::new();
        for c in Collection::ALL {
            for spec in c.specs() {
                let slug = spec.block_type.slug;
                assert_eq!(collection_of(&slug), Some(c), "{slug}");
                assert!(
                    seen.insert(slug.clone(), c).is_none(),
                    "{slug} is in two collections"
                );
            }
        }
        assert_eq!(collection_of("registered-by-a-client"), None);
    }
}
