//! The blocks: the list (searched, filtered and paged on the server), a block's page
//! (values with secrets masked, the code that loads it, what it uses and what uses it),
//! and deleting one.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use block_types::model::{BlockDocument, BlockType};
use maud::{Markup, html};
use serde_json::Value;
use uuid::Uuid;

use super::history::holds_mask;
use super::layout::{self, Nav, Page, form_token};
use super::session::{ConsoleWrite, FormPairs};
use super::{PageError, Viewer, catalog, snippets};
use crate::http::AppState;
use crate::store::{DocumentQuery, Scope, StoreError, Tagged};

/// Referencing blocks a page names at most (then says there are more).
const MAX_REFERRERS: u32 = 100;

/// Blocks per page of the list.
pub(crate) const PAGE_SIZE: u32 = 50;

/// A document id from the path; anything else is a 404.
pub(crate) fn parse_id(raw: &str) -> Result<Uuid, PageError> {
    Uuid::parse_str(raw).map_err(|_| PageError::not_found("There is no block with that id."))
}

/// A path's document id as audit targets name it: canonical (lowercase, hyphenated) when it
/// is a UUID in any of the forms the id parser takes, so a search by id finds every record.
pub(crate) fn target_id(raw: &str) -> String {
    Uuid::parse_str(raw).map_or_else(|_| raw.to_owned(), |id| id.to_string())
}

/// Reads a document (secrets masked), as a page error when it is missing.
pub(crate) async fn read_masked(state: &AppState, id: Uuid) -> Result<Tagged, PageError> {
    match state.store.read_block_document_tagged(id, false).await {
        Ok(tagged) => Ok(tagged),
        Err(StoreError::NotFound(_)) => Err(PageError::not_found(
            "There is no block with that id (it may have been deleted).",
        )),
        Err(e) => Err(e.into()),
    }
}

/// A block a page shows or a write changes, read with its secrets masked.
pub(crate) struct Opened {
    pub(crate) id: Uuid,
    pub(crate) tagged: Tagged,
    /// Its name (empty for an anonymous block).
    pub(crate) name: String,
}

impl Opened {
    /// The block the path names: a 404 page for a bad id or a missing block.
    pub(crate) async fn read(state: &AppState, raw: &str) -> Result<Self, PageError> {
        Self::of(state, parse_id(raw)?).await
    }

    /// Block `id`: a 404 page when it is missing.
    pub(crate) async fn of(state: &AppState, id: Uuid) -> Result<Self, PageError> {
        let tagged = read_masked(state, id).await?;
        let name = tagged.document.name.clone().unwrap_or_default();
        Ok(Self { id, tagged, name })
    }

    /// The block the path names, for a page that leads to a change needing `scope`
    /// (`what`: the change, as the 403 names it). A bad id is a 404 before the scope is
    /// checked, and the scope is checked before the block is read.
    pub(crate) async fn to_change(
        state: &AppState,
        viewer: &Viewer,
        raw: &str,
        scope: Scope,
        what: &str,
    ) -> Result<Self, PageError> {
        let id = parse_id(raw)?;
        viewer.require(scope, what)?;
        Self::of(state, id).await
    }
}

/// A page of the blocks' part of the console.
pub(crate) fn blocks_page(viewer: &Viewer, title: impl Into<String>, body: &Markup) -> Response {
    super::html(layout::shell(
        &Page::titled(title).in_nav(Nav::Blocks),
        Some(viewer),
        body,
    ))
}

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct ListQuery {
    #[serde(default)]
    q: Option<String>,
    #[serde(default, rename = "type")]
    block_type: Option<String>,
    #[serde(default)]
    page: Option<String>,
    #[serde(default)]
    anonymous: Option<String>,
    #[serde(default)]
    deleted: Option<String>,
}

/// `/blocks?…` with these parameters (empty ones left out).
fn list_url(q: Option<&str>, slug: Option<&str>, anonymous: bool, page: u64) -> String {
    let mut url = form_urlencoded::Serializer::new(String::new());
    if let Some(q) = q {
        url.append_pair("q", q);
    }
    if let Some(slug) = slug {
        url.append_pair("type", slug);
    }
    if anonymous {
        url.append_pair("anonymous", "1");
    }
    if page > 1 {
        url.append_pair("page", &page.to_string());
    }
    let query = url.finish();
    if query.is_empty() {
        "/blocks".to_owned()
    } else {
        format!("/blocks?{query}")
    }
}

pub(super) async fn list(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(query): Query<ListQuery>,
) -> Result<Response, Response> {
    list_page(&state, &viewer, query)
        .await
        .map_err(|e| e.render(Some(&viewer)))
}

async fn list_page(
    state: &AppState,
    viewer: &Viewer,
    query: ListQuery,
) -> Result<Response, PageError> {
    let q = query.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    let slug = query.block_type.as_deref().filter(|s| !s.is_empty());
    let anonymous = query
        .anonymous
        .as_deref()
        .is_some_and(|a| a == "1" || a == "on");
    let page: u64 = match query.page.as_deref().filter(|p| !p.is_empty()) {
        None => 1,
        Some(p) => p
            .parse()
            .ok()
            .filter(|p| (1..=1_000_000).contains(p))
            .ok_or_else(|| {
                PageError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "page: must be a whole number from 1 to 1000000",
                )
            })?,
    };
    let types = catalog::all_types(&state.store).await?;
    let selected =
        match slug {
            None => None,
            Some(slug) => Some(types.iter().find(|t| t.slug == slug).ok_or_else(|| {
                PageError::not_found(format!("There is no block type \"{slug}\"."))
            })?),
        };
    let counts: HashMap<Uuid, i64> = state
        .store
        .document_counts_by_type(anonymous)
        .await?
        .into_iter()
        .collect();
    let found = state
        .store
        .browse_documents(&DocumentQuery {
            search: q.map(ToOwned::to_owned),
            block_type_id: selected.map(|t| t.id),
            include_anonymous: anonymous,
            limit: PAGE_SIZE,
            offset: (page - 1) * u64::from(PAGE_SIZE),
            // Without a search, the counts per type already say how many match.
            known_total: q.is_none().then(|| match selected {
                Some(ty) => counts.get(&ty.id).copied().unwrap_or(0),
                None => counts.values().sum(),
            }),
        })
        .await
        .map_err(|e| match e {
            StoreError::Invalid(errors) => PageError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            other => other.into(),
        })?;
    let all: i64 = counts.values().sum();
    let first = (page - 1) * u64::from(PAGE_SIZE) + 1;
    let last = first + found.items.len() as u64 - 1;
    let pages = (found.total.max(0) as u64)
        .div_ceil(u64::from(PAGE_SIZE))
        .max(1);
    let body = html! {
        div.title-row {
            h1 { "Blocks" }
            @if viewer.may(Scope::Write) {
                a.button.primary href="/blocks/new" { "Add block" }
            }
        }
        @if let Some(name) = query.deleted.as_deref() {
            p.notice role="status" { "Deleted " strong { (name) } "." }
        }
        form.search.filters method="get" action="/blocks" role="search" {
            div.field {
                label for="q" { "Name contains" }
                input #q type="search" name="q" value=[q] maxlength="256";
            }
            div.field {
                label for="type" { "Type" }
                select #type name="type" {
                    option value="" selected[selected.is_none()] { "All types (" (all) ")" }
                    @for ty in &types {
                        option value=(ty.slug) selected[selected.is_some_and(|s| s.id == ty.id)] {
                            (ty.name) " (" (counts.get(&ty.id).copied().unwrap_or(0)) ")"
                        }
                    }
                }
            }
            div.field.check {
                input #anonymous type="checkbox" name="anonymous" value="1" checked[anonymous];
                label for="anonymous" { "Show anonymous blocks" }
            }
            button type="submit" { "Filter" }
        }
        @if found.items.is_empty() {
            p.empty {
                @if q.is_some() || selected.is_some() { "No block matches." }
                @else { "No blocks yet. " a href="/blocks/new" { "Add the first one" } "." }
            }
        } @else {
            p.count aria-live="polite" { (first) "–" (last) " of " (found.total) }
            div.table-wrap {
                table.list {
                    thead { tr { th scope="col" { "Name" } th scope="col" { "Type" } th scope="col" { "Updated" } th scope="col" { "Version" } } }
                    tbody {
                        @for item in &found.items {
                            tr {
                                td {
                                    a href=(format!("/blocks/{}", item.id)) { (item.name) }
                                    @if item.is_anonymous { " " span.badge { "anonymous" } }
                                }
                                td {
                                    a.type-link href=(list_url(None, Some(&item.type_slug), anonymous, 1)) {
                                        img src=(catalog::icon(&item.type_slug)) alt="" width="16" height="16";
                                        (item.type_name)
                                    }
                                }
                                td { time datetime=(item.updated.to_rfc3339()) { (item.updated.format("%Y-%m-%d %H:%M UTC")) } }
                                td { (item.version) }
                            }
                        }
                    }
                }
            }
            @if pages > 1 {
                nav.pager aria-label="Pages" {
                    @if page > 1 {
                        a rel="prev" href=(list_url(q, slug, anonymous, page - 1)) { "← Previous" }
                    }
                    span { "Page " (page) " of " (pages) }
                    @if page < pages {
                        a rel="next" href=(list_url(q, slug, anonymous, page + 1)) { "Next →" }
                    }
                }
            }
        }
    };
    Ok(blocks_page(viewer, "Blocks", &body))
}

/// The properties of a schema in display order: by `position` where given, else as
/// written, then any data keys the schema does not list.
pub(crate) fn field_order(
    fields: &Value,
    data: &serde_json::Map<String, Value>,
) -> Vec<(String, String)> {
    let mut props: Vec<(usize, i64, String, String)> = fields
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| {
            p.iter()
                .enumerate()
                .map(|(i, (k, v))| {
                    let position = v
                        .get("position")
                        .and_then(Value::as_i64)
                        .unwrap_or(i64::MAX);
                    let title = v
                        .get("title")
                        .and_then(Value::as_str)
                        .map_or_else(|| humanize(k), ToOwned::to_owned);
                    (i, position, k.clone(), title)
                })
                .collect()
        })
        .unwrap_or_default();
    props.sort_by_key(|(i, position, _, _)| (*position, *i));
    let mut out: Vec<(String, String)> = props.into_iter().map(|(_, _, k, t)| (k, t)).collect();
    for key in data.keys() {
        if !out.iter().any(|(k, _)| k == key) {
            out.push((key.clone(), humanize(key)));
        }
    }
    out
}

/// A property name as a title, as Pydantic makes one: `gcp_credentials` → "Gcp Credentials".
fn humanize(key: &str) -> String {
    key.split('_')
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            chars
                .next()
                .map_or_else(String::new, |c| c.to_uppercase().chain(chars).collect())
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether a shown value is a mask (a secret the page does not show).
fn is_masked(value: &Value) -> bool {
    match value {
        Value::String(s) => s == block_types::OBFUSCATED,
        Value::Object(map) => !map.is_empty() && map.values().all(is_masked),
        _ => false,
    }
}

fn show_value(value: &Value) -> Markup {
    html! {
        @match value {
            Value::Null => span.muted { "none" },
            Value::Bool(b) => span { @if *b { "yes" } @else { "no" } },
            Value::String(s) if s.is_empty() => span.muted { "empty" },
            Value::String(s) => span.value { (s) },
            Value::Number(n) => span.value { (n) },
            other => pre.json { (serde_json::to_string_pretty(other).unwrap_or_default()) },
        }
    }
}

pub(super) async fn detail(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(raw): Path<String>,
    Query(query): Query<DetailQuery>,
) -> Result<Response, Response> {
    detail_page(&state, &viewer, &raw, query)
        .await
        .map_err(|e| e.render(Some(&viewer)))
}

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct DetailQuery {
    #[serde(default)]
    saved: Option<String>,
}

async fn detail_page(
    state: &AppState,
    viewer: &Viewer,
    raw: &str,
    query: DetailQuery,
) -> Result<Response, PageError> {
    let Opened { id, tagged, name } = Opened::read(state, raw).await?;
    let doc = &tagged.document;
    let ty = document_type(doc)?;
    let (referrers, more_referrers) = referrers(state, id).await?;
    let fields = doc.block_schema.as_ref().map(|s| &s.fields);
    let order = field_order(fields.unwrap_or(&Value::Null), &doc.data);
    let rust = snippets::rust(ty, &name);
    let python = snippets::python(ty, &name);
    let body = html! {
        nav.crumbs aria-label="Breadcrumb" {
            a href="/blocks" { "Blocks" } " / "
            a href=(list_url(None, Some(&ty.slug), false, 1)) { (ty.name) } " / "
            span aria-current="page" { (name) }
        }
        div.title-row {
            h1 {
                img src=(catalog::icon(&ty.slug)) alt="" width="28" height="28";
                (name)
            }
            div.actions {
                a.button href=(format!("/blocks/{id}/history")) { "History" }
                a.button href=(format!("/blocks/{id}/compare")) { "Compare" }
                @if viewer.may(Scope::Write) {
                    a.button href=(format!("/blocks/{id}/edit")) { "Edit" }
                    a.button href=(format!("/blocks/{id}/duplicate")) { "Duplicate" }
                    a.button.danger href=(format!("/blocks/{id}/delete")) { "Delete" }
                }
            }
        }
        @match query.saved.as_deref() {
            Some("created") => p.notice role="status" { "Created. Load it with the code below." },
            Some("duplicated") => p.notice role="status" { "Duplicated: this is the new block, with the original's values and secrets." },
            Some("rolled-back") => p.notice role="status" { "Rolled back: the current version now holds the older values." },
            Some(_) => p.notice role="status" { "Saved." },
            None => {},
        }
        p.meta {
            (ty.name) " · " code { (ty.slug) } " · version " (tagged.version)
            " · updated " time datetime=(doc.updated.to_rfc3339()) { (doc.updated.format("%Y-%m-%d %H:%M UTC")) }
            @if doc.is_anonymous { " · " span.badge { "anonymous" } }
        }
        @if doc.unreadable {
            p.error-message role="alert" { "This block's secrets cannot be decrypted (its data key is missing or the stored data was altered)." }
        }
        section aria-labelledby="values-h" {
            h2 #values-h { "Values" }
            @if viewer.may(Scope::ReadSecrets) {
                p.hint { "Secret values are masked; revealing one is recorded in the audit log." }
            } @else {
                p.hint { "Secret values are masked: this session's token lacks the read-secrets scope, so they cannot be revealed here." @if viewer.may(Scope::Write) { " They can still be replaced in Edit." } }
            }
            dl.values {
                @for (i, (key, title)) in order.iter().enumerate() {
                    @if let Some(reference) = doc.block_document_references.get(key) {
                        dt { (title) }
                        dd {
                            a href=(format!("/blocks/{}", reference.block_document.id)) {
                                (reference.block_document.name.as_deref().unwrap_or("(anonymous)"))
                            }
                            " " span.muted { "(" (reference.block_document.block_type.name) ")" }
                        }
                    } @else if let Some(value) = doc.data.get(key) {
                        dt { (title) }
                        dd {
                            @if is_masked(value) {
                                span.secret-mask { "••••••••" } " " span.badge { "secret" }
                            } @else {
                                (show_value(value))
                            }
                            @if holds_mask(value) {
                                @if viewer.may(Scope::ReadSecrets) {
                                    form.reveal method="post" action=(format!("/blocks/{id}/reveal")) data-slot=(format!("reveal-{i}")) {
                                        (form_token(viewer))
                                        input type="hidden" name="field" value=(key);
                                        button.link type="submit" aria-label=(format!("Reveal {title}")) { "Reveal" }
                                    }
                                    div.revealed id=(format!("reveal-{i}")) aria-live="polite" hidden {}
                                } @else if viewer.may(Scope::Write) {
                                    " " span.badge title="This token may replace this value but not read it" { "write-only" }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="code-h" {
            h2 #code-h { "Load it" }
            div.snippet {
                div.snippet-head {
                    h3 #rust-h { "Rust" }
                    button.copy type="button" data-copy="snippet-rust" hidden { "Copy" }
                }
                pre { code #snippet-rust aria-labelledby="rust-h" { (rust) } }
            }
            div.snippet {
                div.snippet-head {
                    h3 #python-h { "Python (Prefect)" }
                    button.copy type="button" data-copy="snippet-python" hidden { "Copy" }
                }
                pre { code #snippet-python aria-labelledby="python-h" { (python) } }
            }
        }
        section.relations aria-labelledby="uses-h" {
            h2 #uses-h { "Uses" }
            @if doc.block_document_references.is_empty() {
                p.muted { "No other blocks." }
            } @else {
                ul {
                    @for (field, reference) in &doc.block_document_references {
                        li {
                            a href=(format!("/blocks/{}", reference.block_document.id)) {
                                (reference.block_document.name.as_deref().unwrap_or("(anonymous)"))
                            }
                            " " span.muted { "(" (reference.block_document.block_type.name) ", as " (order.iter().find(|(k, _)| k == field).map_or(field.as_str(), |(_, t)| t.as_str())) ")" }
                        }
                    }
                }
            }
            h2 #used-by-h { "Used by" }
            @if referrers.is_empty() {
                p.muted { "No other blocks." }
            } @else {
                ul aria-labelledby="used-by-h" {
                    @for r in &referrers {
                        li {
                            a href=(format!("/blocks/{}", r.id)) { (r.name) }
                            " " span.muted { "(" (r.type_slug) ", in " code { (r.field) } ")" }
                        }
                    }
                    @if more_referrers { li.muted { "and more" } }
                }
            }
        }
        @if let Some(description) = &ty.description {
            section aria-labelledby="about-h" {
                h2 #about-h { "About " (ty.name) }
                div.description { (super::markdown::render(description)) }
                @if let Some(url) = catalog::doc_link(ty) {
                    p { a href=(url) rel="noopener noreferrer" { "Documentation" } }
                }
            }
        }
    };
    Ok(blocks_page(viewer, name.clone(), &body))
}

/// The blocks that reference block `id` (at most [`MAX_REFERRERS`]), and whether there are
/// more.
async fn referrers(
    state: &AppState,
    id: Uuid,
) -> Result<(Vec<crate::store::Referrer>, bool), PageError> {
    let mut referrers = state.store.referrers(id, MAX_REFERRERS + 1).await?;
    let more = referrers.len() > MAX_REFERRERS as usize;
    referrers.truncate(MAX_REFERRERS as usize);
    Ok((referrers, more))
}

/// The type of a read document (reads always carry it).
pub(crate) fn document_type(doc: &BlockDocument) -> Result<&BlockType, PageError> {
    doc.block_type
        .as_ref()
        .or_else(|| {
            doc.block_schema
                .as_ref()
                .and_then(|s| s.block_type.as_ref())
        })
        .ok_or_else(|| {
            PageError::from(crate::http::ApiError::Internal(
                "a read document came without its type".into(),
            ))
        })
}

pub(super) async fn confirm_delete(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(raw): Path<String>,
) -> Result<Response, Response> {
    confirm_delete_page(&state, &viewer, &raw)
        .await
        .map_err(|e| e.render(Some(&viewer)))
}

async fn confirm_delete_page(
    state: &AppState,
    viewer: &Viewer,
    raw: &str,
) -> Result<Response, PageError> {
    let Opened { id, tagged, name } =
        Opened::to_change(state, viewer, raw, Scope::Write, "Deleting a block").await?;
    let ty = document_type(&tagged.document)?;
    let (referrers, more_referrers) = referrers(state, id).await?;
    let body = html! {
        section.narrow {
            h1 { "Delete " (name) "?" }
            p { "The " (ty.name) " block " strong { (name) } " and all its versions will be deleted. This cannot be undone." }
            @if referrers.is_empty() {
                form method="post" action=(format!("/blocks/{id}/delete")) {
                    (form_token(viewer))
                    input type="hidden" name="_version" value=(tagged.version);
                    div.actions {
                        button.danger type="submit" { "Delete " (name) }
                        a.button href=(format!("/blocks/{id}")) { "Cancel" }
                    }
                }
            } @else {
                p.error-message role="alert" { "It cannot be deleted while other blocks use it:" }
                ul {
                    @for r in &referrers {
                        li { a href=(format!("/blocks/{}", r.id)) { (r.type_slug) "/" (r.name) } }
                    }
                    @if more_referrers { li.muted { "and more" } }
                }
                p { a.button href=(format!("/blocks/{id}")) { "Back" } }
            }
        }
    };
    Ok(blocks_page(viewer, format!("Delete {name}"), &body))
}

/// Runs `work`, a write to the block `raw` names, as [`ConsoleWrite::run`] does, with the
/// block as the record's target.
pub(super) async fn block_write<F>(
    write: ConsoleWrite,
    action: &'static str,
    raw: String,
    work: impl FnOnce(AppState, Viewer, FormPairs, String) -> F + Send + 'static,
) -> Response
where
    F: Future<Output = Result<Response, PageError>> + Send + 'static,
{
    let target = format!("/api/block_documents/{}", target_id(&raw));
    write
        .run(action, target, move |state, viewer, form| async move {
            work(state, viewer, form, raw).await.map(|r| (r, None))
        })
        .await
}

/// Runs `work`, a change to the block `raw` names, as [`block_write`] does, once the path's
/// id, the form token, the `write` scope (`what`: the change, as the 403 names it) and the
/// version the form was read at are checked, in that order, and the block is read. `work`
/// gets the block and that version.
pub(super) async fn change_block<F>(
    write: ConsoleWrite,
    action: &'static str,
    what: &'static str,
    raw: String,
    work: impl FnOnce(AppState, Viewer, FormPairs, Opened, i64) -> F + Send + 'static,
) -> Response
where
    F: Future<Output = Result<Response, PageError>> + Send + 'static,
{
    block_write(
        write,
        action,
        raw,
        move |state, viewer, form, raw| async move {
            let id = parse_id(&raw)?;
            viewer.check_form(&form)?;
            viewer.require(Scope::Write, what)?;
            let expected = form.version()?;
            let block = Opened::of(&state, id).await?;
            work(state, viewer, form, block, expected).await
        },
    )
    .await
}

pub(super) async fn delete(Path(raw): Path<String>, write: ConsoleWrite) -> Response {
    change_block(
        write,
        "POST /blocks/{id}/delete",
        "Deleting a block",
        raw,
        |state, viewer, _, block, expected| async move {
            delete_block(&state, &viewer, block, expected).await
        },
    )
    .await
}

async fn delete_block(
    state: &AppState,
    viewer: &Viewer,
    Opened { id, name, .. }: Opened,
    expected: i64,
) -> Result<Response, PageError> {
    let outcome = match state
        .store
        .delete_block_document_by(id, Some(expected), Some(viewer.token.id))
        .await
    {
        Ok(()) => Ok(()),
        Err(StoreError::VersionConflict { .. }) => Err(PageError::new(
            StatusCode::CONFLICT,
            format!(
                "{name} changed after this page was loaded; nothing was deleted. Look at it again before deleting it."
            ),
        )),
        Err(StoreError::InUse { referrers, .. }) => {
            let mut e = PageError::new(
                StatusCode::CONFLICT,
                format!("{name} cannot be deleted while other blocks use it:"),
            );
            e.names = referrers;
            Err(e)
        }
        Err(e) => Err(PageError::from(e)),
    };
    outcome?;
    Ok(Redirect::to(&format!(
        "/blocks?deleted={}",
        percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC)
    ))
    .into_response())
}
