//! A block's history: its versions with who wrote them, what changed between any two, and
//! rolling back to or destroying a version. The comparison is made on the server from the
//! opened versions; a field holding a secret is never shown, whatever the session's scopes,
//! and is said to be "changed" or "unchanged" only to a session with `read-secrets`
//! ([`for_viewer`]).

use std::collections::{BTreeSet, HashMap};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::blocks::{Opened, blocks_page, document_type, field_order, target_id};
use super::layout::form_token;
use super::session::{ConsoleWrite, FormPairs};
use super::{PageError, Viewer};
use crate::http::AppState;
use crate::store::{Scope, StoreError, VersionInfo};

/// Versions a history page lists at most (the newest).
const MAX_VERSIONS: usize = 200;

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct HistoryQuery {
    /// The older side of a comparison (`compare` is the same, from the version list).
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    compare: Option<String>,
    /// The newer side (the current version when absent).
    #[serde(default)]
    to: Option<String>,
    /// A version just destroyed, for the notice.
    #[serde(default)]
    destroyed: Option<String>,
}

/// One field's change between two versions (or its values in two blocks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// A plain value: old → new, as text (`None`: absent).
    Plain(Option<String>, Option<String>),
    /// A field holding a secret: only whether it changed.
    Secret { changed: bool },
    /// A field holding a secret, not compared: the session's token lacks `read-secrets`.
    /// (Whether a secret equals another is itself a secret: a writer could set a guess and
    /// compare it with the stored value.)
    SecretNotCompared,
}

impl Change {
    /// Whether the two sides differ.
    pub(crate) fn differs(&self) -> bool {
        match self {
            Self::Plain(old, new) => old != new,
            Self::Secret { changed } => *changed,
            Self::SecretNotCompared => false,
        }
    }
}

/// The changes as `viewer` may see them: whether a secret changed only for a session whose
/// token could read it anyway.
pub(crate) fn for_viewer(changes: Vec<(String, Change)>, viewer: &Viewer) -> Vec<(String, Change)> {
    if viewer.may(Scope::ReadSecrets) {
        return changes;
    }
    changes
        .into_iter()
        .map(|(key, change)| match change {
            Change::Secret { .. } => (key, Change::SecretNotCompared),
            other => (key, other),
        })
        .collect()
}

/// Whether a masked value hides a secret anywhere inside.
pub(crate) fn holds_mask(value: &Value) -> bool {
    match value {
        Value::String(s) => s == block_types::OBFUSCATED,
        Value::Object(map) => map.values().any(holds_mask),
        Value::Array(list) => list.iter().any(holds_mask),
        _ => false,
    }
}

/// One side of a comparison: a version's own data as a masked read gives it (which says
/// where secrets are) and with secrets in clear (only compared, never shown or returned).
pub(crate) struct Side {
    masked: Map<String, Value>,
    open: Map<String, Value>,
}

impl std::fmt::Debug for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Side")
            .field("masked", &self.masked)
            .finish_non_exhaustive()
    }
}

impl Side {
    #[cfg(test)]
    pub(crate) fn new(masked: Map<String, Value>, open: Map<String, Value>) -> Self {
        Self { masked, open }
    }

    /// Version `version` of document `id`.
    pub(crate) async fn of(state: &AppState, id: Uuid, version: i64) -> Result<Self, PageError> {
        let masked = state.store.read_version(id, version, false).await?;
        let open = state.store.read_version(id, version, true).await?;
        Ok(Self { masked, open })
    }
}

/// The changes from `old` to `new` by top-level field: plain fields that differ, and every
/// field holding a secret (whether it changed is worth knowing either way).
pub(crate) fn diff(old: &Side, new: &Side) -> Vec<(String, Change)> {
    fields(old, new)
        .into_iter()
        .filter(|(_, change)| !matches!(change, Change::Plain(..)) || change.differs())
        .collect()
}

/// Every top-level field of either side, with its values (plain) or whether it differs
/// (a field holding a secret on either side).
pub(crate) fn fields(old: &Side, new: &Side) -> Vec<(String, Change)> {
    let keys: BTreeSet<&String> = old.masked.keys().chain(new.masked.keys()).collect();
    let text = |v: Option<&Value>| v.map(|v| serde_json::to_string(v).unwrap_or_default());
    keys.into_iter()
        .map(|key| {
            let secret = old.masked.get(key).is_some_and(holds_mask)
                || new.masked.get(key).is_some_and(holds_mask);
            let change = if secret {
                Change::Secret {
                    changed: old.open.get(key) != new.open.get(key),
                }
            } else {
                Change::Plain(text(old.masked.get(key)), text(new.masked.get(key)))
            };
            (key.clone(), change)
        })
        .collect()
}

/// The names of the tokens a page may show by writer: every token's for an admin, else only
/// the session's own (others are shown by id prefix).
pub(crate) async fn token_names(
    state: &AppState,
    viewer: &Viewer,
) -> Result<HashMap<Uuid, String>, PageError> {
    Ok(if viewer.may(Scope::Admin) {
        state
            .store
            .list_tokens()
            .await?
            .into_iter()
            .map(|t| (t.id, t.name))
            .collect()
    } else {
        HashMap::from([(viewer.token.id, viewer.token.name.clone())])
    })
}

/// Who wrote a version: the token's name where `names` has it, and its id's prefix.
pub(crate) fn written_by(token_id: Option<Uuid>, names: &HashMap<Uuid, String>) -> Markup {
    html! {
        @match token_id {
            Some(token) => {
                @if let Some(name) = names.get(&token) { (name) " " }
                code.muted title="token id" { (token.to_string()[..8]) }
            }
            None => span.muted { "not recorded" },
        }
    }
}

/// Records in the audit log that a page told a session whether secrets are equal (only a
/// `read-secrets` session is told, and what it learns about a secret is recorded as a read
/// of it would be).
pub(crate) async fn audit_secret_comparison(
    state: &AppState,
    headers: &HeaderMap,
    viewer: &Viewer,
    changes: &[(String, Change)],
    action: &str,
    target: String,
) -> Result<(), PageError> {
    if changes
        .iter()
        .any(|(_, c)| matches!(c, Change::Secret { .. }))
    {
        super::session::audit(
            state,
            headers,
            Some(viewer.token.id),
            action,
            target,
            StatusCode::OK,
        )
        .await?;
    }
    Ok(())
}

/// The changes from version `from` to version `to` of block `id` as `viewer` may see them,
/// recorded in the audit log (as `action`) when they tell whether secrets are equal.
async fn version_changes(
    state: &AppState,
    headers: &HeaderMap,
    viewer: &Viewer,
    id: Uuid,
    (from, to): (i64, i64),
    action: &str,
) -> Result<Vec<(String, Change)>, PageError> {
    let changes = for_viewer(
        diff(
            &Side::of(state, id, from).await?,
            &Side::of(state, id, to).await?,
        ),
        viewer,
    );
    audit_secret_comparison(
        state,
        headers,
        viewer,
        &changes,
        action,
        format!("/api/block_documents/{id} versions={from},{to}"),
    )
    .await?;
    Ok(changes)
}

/// Whether some secret was not compared for this session.
pub(crate) fn uncompared(changes: &[(String, Change)]) -> bool {
    changes
        .iter()
        .any(|(_, c)| matches!(c, Change::SecretNotCompared))
}

/// What a comparison without a difference says.
pub(crate) fn nothing_differs(uncompared: bool) -> &'static str {
    if uncompared {
        "No plain field differs; secrets are not compared without the read-secrets scope."
    } else {
        "No field differs."
    }
}

/// A `$ref` value's document id.
fn reference_id(text: &str) -> Option<Uuid> {
    let value: Value = serde_json::from_str(text).ok()?;
    value
        .get("$ref")?
        .get("block_document_id")?
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
}

/// How a comparison table names its sides and says a secret differs.
pub(crate) struct Labels<'a> {
    pub(crate) left: &'a str,
    pub(crate) right: &'a str,
    pub(crate) changed: &'a str,
    pub(crate) unchanged: &'a str,
    /// Whether rows that differ say so (a comparison that lists every field).
    pub(crate) mark: bool,
}

/// A table of field changes: plain values side by side (references as the names of the
/// blocks they point to), secrets only as changed or unchanged.
pub(crate) async fn changes_table(
    state: &AppState,
    changes: &[(String, Change)],
    titles: &HashMap<String, String>,
    labels: &Labels<'_>,
) -> Result<Markup, PageError> {
    let mut names: HashMap<Uuid, String> = HashMap::new();
    for (_, change) in changes {
        if let Change::Plain(old, new) = change {
            for text in [old, new].into_iter().flatten() {
                if let Some(child) = reference_id(text)
                    && !names.contains_key(&child)
                {
                    let shown = match state.store.read_block_document(child, false).await {
                        Ok(d) => d.name.unwrap_or_else(|| child.to_string()),
                        Err(crate::store::StoreError::NotFound(_)) => {
                            format!("{child} (deleted)")
                        }
                        Err(e) => return Err(e.into()),
                    };
                    names.insert(child, shown);
                }
            }
        }
    }
    let shown = |text: &Option<String>| -> Markup {
        match text {
            None => html! { span.muted { "absent" } },
            Some(t) => match reference_id(t) {
                Some(child) => {
                    html! { a href=(format!("/blocks/{child}")) { (names.get(&child).cloned().unwrap_or_default()) } }
                }
                None => html! { code { (t) } },
            },
        }
    };
    Ok(html! {
        div.table-wrap {
            table.list.diff {
                thead { tr { th scope="col" { "Field" } th scope="col" { (labels.left) } th scope="col" { (labels.right) } } }
                tbody {
                    @for (key, change) in changes {
                        tr.differs[change.differs()] {
                            th scope="row" {
                                (titles.get(key).cloned().unwrap_or_else(|| key.clone()))
                                @if labels.mark && change.differs() { " " span.badge.differs-badge { "differs" } }
                            }
                            @match change {
                                Change::Secret { changed } => {
                                    td colspan="2" {
                                        span.badge { "secret" } " "
                                        @if *changed { strong { (labels.changed) } } @else { (labels.unchanged) }
                                    }
                                }
                                Change::SecretNotCompared => {
                                    td colspan="2" {
                                        span.badge { "secret" } " "
                                        span.muted { "not compared: that needs the read-secrets scope" }
                                    }
                                }
                                Change::Plain(old, new) => {
                                    td { (shown(old)) }
                                    td { (shown(new)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    })
}

/// Field titles by property name, from a document's schema.
pub(crate) fn titles_of(doc: &block_types::model::BlockDocument) -> HashMap<String, String> {
    field_order(
        doc.block_schema
            .as_ref()
            .map_or(&Value::Null, |s| &s.fields),
        &doc.data,
    )
    .into_iter()
    .collect()
}

/// A version number from a path or query; anything else is a 404.
fn parse_version(text: &str) -> Result<i64, PageError> {
    text.parse::<i64>().map_err(|_| {
        PageError::not_found(
            "There is no such version of this block (it may have been pruned or destroyed).",
        )
    })
}

/// `version` must be one of `versions`.
fn known_version(versions: &[VersionInfo], version: i64) -> Result<i64, PageError> {
    if versions.iter().any(|v| v.version == version) {
        Ok(version)
    } else {
        Err(PageError::not_found(
            "There is no such version of this block (it may have been pruned or destroyed).",
        ))
    }
}

pub(super) async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(raw): Path<String>,
    Query(query): Query<HistoryQuery>,
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
    query: HistoryQuery,
    headers: &HeaderMap,
) -> Result<Response, PageError> {
    let Opened { id, tagged, name } = Opened::read(state, raw).await?;
    let doc = &tagged.document;
    let ty = document_type(doc)?;
    let mut versions = state.store.list_versions(id).await?;
    versions.truncate(MAX_VERSIONS);
    let token_names = token_names(state, viewer).await?;
    let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    let from = match nonempty(&query.from).or_else(|| nonempty(&query.compare)) {
        None => None,
        Some(text) => Some(known_version(&versions, parse_version(&text)?)?),
    };
    let to = match nonempty(&query.to) {
        None => tagged.version,
        Some(text) => known_version(&versions, parse_version(&text)?)?,
    };
    let titles = titles_of(doc);
    let comparison = match from {
        None => None,
        Some(from) => {
            let changes = version_changes(
                state,
                headers,
                viewer,
                id,
                (from, to),
                "GET /blocks/{id}/history",
            )
            .await?;
            let left = format!("Version {from}");
            let right = if to == tagged.version {
                format!("Version {to} (current)")
            } else {
                format!("Version {to}")
            };
            let labels = Labels {
                left: &left,
                right: &right,
                changed: "changed",
                unchanged: "unchanged",
                mark: false,
            };
            let table = changes_table(state, &changes, &titles, &labels).await?;
            let same = !changes.iter().any(|(_, c)| c.differs());
            Some((from, same, uncompared(&changes), changes.is_empty(), table))
        }
    };
    let destroyed = nonempty(&query.destroyed).and_then(|v| v.parse::<i64>().ok());
    let may_write = viewer.may(Scope::Write);
    let may_destroy = viewer.may(Scope::Admin);
    let version_options = |selected: i64| {
        html! {
            @for v in &versions {
                option value=(v.version) selected[v.version == selected] {
                    (v.version) @if v.version == tagged.version { " (current)" }
                }
            }
        }
    };
    let body = html! {
        nav.crumbs aria-label="Breadcrumb" {
            a href="/blocks" { "Blocks" } " / "
            a href=(format!("/blocks/{id}")) { (name) } " / "
            span aria-current="page" { "History" }
        }
        h1 { "History of " (name) }
        p.meta { (ty.name) " · current version " (tagged.version) }
        @if let Some(v) = destroyed {
            p.notice role="status" { "Version " (v) " was destroyed." }
        }
        @if versions.len() > 1 {
            form.search method="get" action=(format!("/blocks/{id}/history")) aria-label="Compare versions" {
                div.field {
                    label for="from" { "From version" }
                    select #from name="from" { (version_options(from.unwrap_or_else(|| versions.get(1).map_or(tagged.version, |v| v.version)))) }
                }
                div.field {
                    label for="to" { "To version" }
                    select #to name="to" { (version_options(to)) }
                }
                button type="submit" { "Compare" }
            }
        }
        @if let Some((from, same, changes_uncompared, empty, table)) = &comparison {
            section aria-labelledby="diff-h" {
                h2 #diff-h { "Version " (from) " → version " (to) @if to == tagged.version { " (current)" } }
                @if *same { p { (nothing_differs(*changes_uncompared)) } }
                @if !*empty { (table) }
            }
        }
        section aria-labelledby="versions-h" {
            h2 #versions-h { "Versions" }
            div.table-wrap {
                table.list.versions {
                    thead { tr {
                        th scope="col" { "Version" } th scope="col" { "Written" } th scope="col" { "By" }
                        th scope="col" { "Actions" }
                    } }
                    tbody {
                        @for v in &versions {
                            tr {
                                td { (v.version) @if v.version == tagged.version { " " span.badge { "current" } } }
                                td { time datetime=(v.created.to_rfc3339()) { (v.created.format("%Y-%m-%d %H:%M:%S UTC")) } }
                                td { (written_by(v.token_id, &token_names)) }
                                td.row-actions {
                                    @if v.version != tagged.version {
                                        a href=(format!("/blocks/{id}/history?from={}", v.version)) aria-label=(format!("Compare with current: version {}", v.version)) { "Compare with current" }
                                        @if may_write {
                                            " " a href=(format!("/blocks/{id}/history/{}/rollback", v.version)) aria-label=(format!("Roll back to this: version {}", v.version)) { "Roll back to this" }
                                        }
                                        @if may_destroy {
                                            " " a.danger href=(format!("/blocks/{id}/history/{}/destroy", v.version)) aria-label=(format!("Destroy version {}", v.version)) { "Destroy" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(blocks_page(viewer, format!("History of {name}"), &body))
}

/// What a version action needs: the block, its current version and the version acted on.
struct Target {
    id: Uuid,
    name: String,
    current: i64,
    version: i64,
    titles: HashMap<String, String>,
}

async fn acted_on(state: &AppState, raw: &str, raw_version: &str) -> Result<Target, PageError> {
    let Opened { id, tagged, name } = Opened::read(state, raw).await?;
    let versions = state.store.list_versions(id).await?;
    let version = known_version(&versions, parse_version(raw_version)?)?;
    Ok(Target {
        id,
        name,
        current: tagged.version,
        version,
        titles: titles_of(&tagged.document),
    })
}

/// What is done to a version: rolling the block back to it, or destroying it.
struct VersionAction {
    /// The console write's audit action.
    action: &'static str,
    /// The API path it stands for, after `/api/block_documents/{id}/versions/{version}`.
    api_suffix: &'static str,
    /// The scope it needs, and how a 403 names it.
    scope: Scope,
    what: &'static str,
    /// Why it cannot be done to the current version.
    not_current: &'static str,
}

const ROLLBACK: VersionAction = VersionAction {
    action: "POST /blocks/{id}/history/{version}/rollback",
    api_suffix: "/rollback",
    scope: Scope::Write,
    what: "Rolling a block back",
    not_current: "there is nothing to roll back",
};

const DESTROY: VersionAction = VersionAction {
    action: "POST /blocks/{id}/history/{version}/destroy",
    api_suffix: "",
    scope: Scope::Admin,
    what: "Destroying a version",
    not_current: "write a new version before destroying it",
};

/// The version a confirmation page offers to act on: the scope checked first, then the
/// version found, and it must not be the current one.
async fn to_confirm(
    state: &AppState,
    viewer: &Viewer,
    (raw, raw_version): &(String, String),
    act: &VersionAction,
) -> Result<Target, PageError> {
    viewer.require(act.scope, act.what)?;
    let t = acted_on(state, raw, raw_version).await?;
    if t.version == t.current {
        return Err(PageError::new(
            StatusCode::CONFLICT,
            format!(
                "Version {} is the current version of {}; {}.",
                t.version, t.name, act.not_current
            ),
        ));
    }
    Ok(t)
}

/// Runs `work`, `act` on version `raw_version` of the block `raw` names, as
/// [`ConsoleWrite::run`] does, once the form token and the scope are checked. `work` gets
/// the path's id and version as given.
async fn version_write<F>(
    write: ConsoleWrite,
    (raw, raw_version): (String, String),
    act: &'static VersionAction,
    work: impl FnOnce(AppState, Viewer, FormPairs, String, String) -> F + Send + 'static,
) -> Response
where
    F: Future<Output = Result<(Response, Option<String>), PageError>> + Send + 'static,
{
    let target = format!(
        "/api/block_documents/{}/versions/{raw_version}{}",
        target_id(&raw),
        act.api_suffix
    );
    write
        .run(act.action, target, move |state, viewer, form| async move {
            viewer.check_form(&form)?;
            viewer.require(act.scope, act.what)?;
            work(state, viewer, form, raw, raw_version).await
        })
        .await
}

pub(super) async fn confirm_rollback(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(path): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Response> {
    rollback_page(&state, &viewer, &path, &headers)
        .await
        .map_err(|e| e.render(Some(&viewer)))
}

/// The page that asks to confirm rolling back to the version the path names, with what
/// would change.
async fn rollback_page(
    state: &AppState,
    viewer: &Viewer,
    path: &(String, String),
    headers: &HeaderMap,
) -> Result<Response, PageError> {
    let t = to_confirm(state, viewer, path, &ROLLBACK).await?;
    let (id, name, version) = (t.id, &t.name, t.version);
    // What the rollback applies: from the current version to the old one.
    let changes = version_changes(
        state,
        headers,
        viewer,
        id,
        (t.current, version),
        "GET /blocks/{id}/history/{version}/rollback",
    )
    .await?;
    let left = format!("Now (version {})", t.current);
    let right = format!("After (as version {version})");
    let labels = Labels {
        left: &left,
        right: &right,
        changed: "will change",
        unchanged: "unchanged",
        mark: false,
    };
    let table = changes_table(state, &changes, &t.titles, &labels).await?;
    let body = html! {
        nav.crumbs aria-label="Breadcrumb" {
            a href="/blocks" { "Blocks" } " / "
            a href=(format!("/blocks/{id}")) { (name) } " / "
            a href=(format!("/blocks/{id}/history")) { "History" } " / "
            span aria-current="page" { "Roll back" }
        }
        h1 { "Roll " (name) " back to version " (version) "?" }
        p { "A new version " (t.current + 1) " will be written equal to version " (version) ", secrets included. Nothing is deleted: the current version stays in the history." }
        section aria-labelledby="apply-h" {
            h2 #apply-h { "What changes" }
            @if !changes.iter().any(|(_, c)| c.differs()) { p { (nothing_differs(uncompared(&changes))) } }
            @if !changes.is_empty() { (table) }
        }
        form method="post" action=(format!("/blocks/{id}/history/{version}/rollback")) {
            (form_token(viewer))
            input type="hidden" name="_version" value=(t.current);
            div.actions {
                button.primary type="submit" { "Roll back to version " (version) }
                a.button href=(format!("/blocks/{id}/history")) { "Cancel" }
            }
        }
    };
    Ok(blocks_page(viewer, format!("Roll back {name}"), &body))
}

pub(super) async fn rollback(Path(path): Path<(String, String)>, write: ConsoleWrite) -> Response {
    version_write(
        write,
        path,
        &ROLLBACK,
        |state, viewer, form, raw, raw_version| async move {
            let expected = form.version()?;
            let t = acted_on(&state, &raw, &raw_version).await?;
            match state
                .store
                .rollback_block_document(t.id, t.version, Some(expected), Some(viewer.token.id))
                .await
            {
                Ok(_) => Ok((
                    Redirect::to(&format!("/blocks/{}?saved=rolled-back", t.id)).into_response(),
                    None,
                )),
                Err(StoreError::VersionConflict { .. }) => Err(PageError::new(
                    StatusCode::CONFLICT,
                    format!("{} changed after this page was loaded; nothing was rolled back. Look at its history again.", t.name),
                )),
                Err(e) => Err(e.into()),
            }
        },
    )
    .await
}

pub(super) async fn confirm_destroy(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(path): Path<(String, String)>,
) -> Result<Response, Response> {
    match to_confirm(&state, &viewer, &path, &DESTROY).await {
        Ok(t) => Ok(destroy_page(&viewer, &t)),
        Err(e) => Err(e.render(Some(&viewer))),
    }
}

/// The page that asks to confirm destroying version `t`.
fn destroy_page(viewer: &Viewer, t: &Target) -> Response {
    let (id, name, version) = (t.id, &t.name, t.version);
    let body = html! {
        section.narrow {
            h1 { "Destroy version " (version) " of " (name) "?" }
            p { "Its values and sealed secrets are deleted for good: it can no longer be compared with or rolled back to. The other versions stay." }
            form method="post" action=(format!("/blocks/{id}/history/{version}/destroy")) {
                (form_token(viewer))
                div.actions {
                    button.danger type="submit" { "Destroy version " (version) }
                    a.button href=(format!("/blocks/{id}/history")) { "Cancel" }
                }
            }
        }
    };
    blocks_page(viewer, format!("Destroy a version of {name}"), &body)
}

pub(super) async fn destroy(Path(path): Path<(String, String)>, write: ConsoleWrite) -> Response {
    version_write(
        write,
        path,
        &DESTROY,
        |state, _, _, raw, raw_version| async move {
            let t = acted_on(&state, &raw, &raw_version).await?;
            match state.store.destroy_version(t.id, t.version).await {
                Ok(()) => Ok((
                    Redirect::to(&format!("/blocks/{}/history?destroyed={}", t.id, t.version))
                        .into_response(),
                    None,
                )),
                Err(StoreError::Conflict(_)) => Err(PageError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "Version {} is now the current version of {}; nothing was destroyed.",
                        t.version, t.name
                    ),
                )),
                Err(e) => Err(e.into()),
            }
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{Change, Side, diff};

    fn obj(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        match v {
            serde_json::Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn secrets_are_only_changed_or_unchanged() {
        let old_masked = obj(json!({"value": "********", "note": "a", "gone": 1}));
        let old_open = obj(json!({"value": "s1", "note": "a", "gone": 1}));
        let new_masked = obj(json!({"value": "********", "note": "b"}));
        let same = obj(json!({"value": "s1", "note": "b"}));
        let other = obj(json!({"value": "s2", "note": "b"}));
        let old = Side::new(old_masked.clone(), old_open.clone());
        let changes = diff(&old, &Side::new(new_masked.clone(), same));
        assert_eq!(
            changes,
            [
                ("gone".to_owned(), Change::Plain(Some("1".into()), None)),
                (
                    "note".to_owned(),
                    Change::Plain(Some("\"a\"".into()), Some("\"b\"".into()))
                ),
                ("value".to_owned(), Change::Secret { changed: false }),
            ]
        );
        let changes = diff(&old, &Side::new(new_masked, other));
        assert_eq!(
            changes[2],
            ("value".to_owned(), Change::Secret { changed: true })
        );
        assert!(!format!("{changes:?}").contains("s1") && !format!("{changes:?}").contains("s2"));
    }
}
