//! A block's history: its versions with who wrote them, and what a version changed against
//! the current one. The comparison is made on the server from the opened versions; a field
//! holding a secret is only ever said to be "changed" or "unchanged", never shown, whatever
//! the session's scopes.

use std::collections::{BTreeSet, HashMap};

use axum::extract::{Path, Query, State};
use axum::response::Response;
use maud::{Markup, html};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::blocks::{document_type, field_order, parse_id, read_masked};
use super::layout::{self, Nav, Page};
use super::{PageError, Viewer};
use crate::http::AppState;
use crate::store::Scope;

/// Versions a history page lists at most (the newest).
const MAX_VERSIONS: usize = 200;

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct HistoryQuery {
    /// The version to compare with the current one.
    #[serde(default)]
    compare: Option<String>,
}

/// One field's change between two versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// A plain value: old → new, as text (`None`: absent).
    Plain(Option<String>, Option<String>),
    /// A field holding a secret: only whether it changed.
    Secret { changed: bool },
}

/// Whether a masked value hides a secret anywhere inside.
fn holds_mask(value: &Value) -> bool {
    match value {
        Value::String(s) => s == block_types::OBFUSCATED,
        Value::Object(map) => map.values().any(holds_mask),
        Value::Array(list) => list.iter().any(holds_mask),
        _ => false,
    }
}

/// The changes from `old` to `new` by top-level field. `*_masked` are the versions as a
/// masked read gives them (they say where secrets are), `*_open` with secrets in clear
/// (only compared, never returned).
pub(crate) fn diff(
    old_masked: &Map<String, Value>,
    old_open: &Map<String, Value>,
    new_masked: &Map<String, Value>,
    new_open: &Map<String, Value>,
) -> Vec<(String, Change)> {
    let keys: BTreeSet<&String> = old_masked.keys().chain(new_masked.keys()).collect();
    let mut out = Vec::new();
    for key in keys {
        let secret = old_masked.get(key).is_some_and(holds_mask)
            || new_masked.get(key).is_some_and(holds_mask);
        if secret {
            let changed = old_open.get(key) != new_open.get(key);
            out.push((key.clone(), Change::Secret { changed }));
            continue;
        }
        let (old, new) = (old_masked.get(key), new_masked.get(key));
        if old != new {
            let text = |v: Option<&Value>| v.map(|v| serde_json::to_string(v).unwrap_or_default());
            out.push((key.clone(), Change::Plain(text(old), text(new))));
        }
    }
    out
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

pub(super) async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(raw): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> Result<Response, Response> {
    render(&state, &viewer, &raw, query)
        .await
        .map_err(|e| e.render(Some(&viewer)))
}

async fn render(
    state: &AppState,
    viewer: &Viewer,
    raw: &str,
    query: HistoryQuery,
) -> Result<Response, PageError> {
    let id = parse_id(raw)?;
    let tagged = read_masked(state, id).await?;
    let doc = &tagged.document;
    let ty = document_type(doc)?;
    let name = doc.name.clone().unwrap_or_default();
    let mut versions = state.store.list_versions(id).await?;
    versions.truncate(MAX_VERSIONS);
    // Who wrote each version, by token name (an admin sees every token; others see ids).
    let token_names: HashMap<Uuid, String> = if viewer.may(Scope::Admin) {
        state
            .store
            .list_tokens()
            .await?
            .into_iter()
            .map(|t| (t.id, t.name))
            .collect()
    } else {
        HashMap::from([(viewer.token.id, viewer.token.name.clone())])
    };
    let compare = match query.compare.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(text) => Some(
            text.parse::<i64>()
                .ok()
                .filter(|n| versions.iter().any(|v| v.version == *n))
                .ok_or_else(|| PageError::not_found("There is no such version of this block (it may have been pruned or destroyed)."))?,
        ),
    };
    let changes = match compare {
        None => None,
        Some(n) => {
            let old_masked = state.store.read_version(id, n, false).await?;
            let old_open = state.store.read_version(id, n, true).await?;
            let new_masked = state.store.read_version(id, tagged.version, false).await?;
            let new_open = state.store.read_version(id, tagged.version, true).await?;
            Some(diff(&old_masked, &old_open, &new_masked, &new_open))
        }
    };
    // Referenced documents by name, for changes of references.
    let mut names: HashMap<Uuid, String> = HashMap::new();
    if let Some(changes) = &changes {
        for (_, change) in changes {
            if let Change::Plain(old, new) = change {
                for text in [old, new].into_iter().flatten() {
                    if let Some(child) = reference_id(text)
                        && !names.contains_key(&child)
                    {
                        let shown = match state.store.read_block_document(child, false).await {
                            Ok(d) => d.name.unwrap_or_else(|| child.to_string()),
                            Err(_) => format!("{child} (deleted)"),
                        };
                        names.insert(child, shown);
                    }
                }
            }
        }
    }
    let titles: HashMap<String, String> = field_order(
        doc.block_schema
            .as_ref()
            .map_or(&Value::Null, |s| &s.fields),
        &doc.data,
    )
    .into_iter()
    .collect();
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
    let body = html! {
        nav.crumbs aria-label="Breadcrumb" {
            a href="/blocks" { "Blocks" } " / "
            a href=(format!("/blocks/{id}")) { (name) } " / "
            span aria-current="page" { "History" }
        }
        h1 { "History of " (name) }
        p.meta { (ty.name) " · current version " (tagged.version) }
        @if let (Some(n), Some(changes)) = (compare, &changes) {
            section aria-labelledby="diff-h" {
                h2 #diff-h { "Version " (n) " → current (" (tagged.version) ")" }
                @if changes.is_empty() {
                    p { "No field differs." }
                } @else {
                    div.table-wrap {
                        table.list.diff {
                            thead { tr { th scope="col" { "Field" } th scope="col" { "Version " (n) } th scope="col" { "Current" } } }
                            tbody {
                                @for (key, change) in changes {
                                    tr {
                                        th scope="row" { (titles.get(key).cloned().unwrap_or_else(|| key.clone())) }
                                        @match change {
                                            Change::Secret { changed } => {
                                                td colspan="2" {
                                                    span.badge { "secret" } " "
                                                    @if *changed { strong { "changed" } } @else { "unchanged" }
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
                }
            }
        }
        section aria-labelledby="versions-h" {
            h2 #versions-h { "Versions" }
            div.table-wrap {
                table.list {
                    thead { tr { th scope="col" { "Version" } th scope="col" { "Written" } th scope="col" { "By" } th scope="col" { "Compare" } } }
                    tbody {
                        @for v in &versions {
                            tr {
                                td { (v.version) @if v.version == tagged.version { " " span.badge { "current" } } }
                                td { time datetime=(v.created.to_rfc3339()) { (v.created.format("%Y-%m-%d %H:%M:%S UTC")) } }
                                td {
                                    @match v.token_id {
                                        Some(token) => {
                                            @if let Some(token_name) = token_names.get(&token) { (token_name) " " }
                                            code.muted title="token id" { (token.to_string()[..8]) }
                                        }
                                        None => span.muted { "not recorded" },
                                    }
                                }
                                td {
                                    @if v.version != tagged.version {
                                        a href=(format!("/blocks/{id}/history?compare={}", v.version)) { "with current" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(super::html(layout::shell(
        &Page::titled(format!("History of {name}")).in_nav(Nav::Blocks),
        Some(viewer),
        &body,
    )))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{Change, diff};

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
        let changes = diff(&old_masked, &old_open, &new_masked, &same);
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
        let changes = diff(&old_masked, &old_open, &new_masked, &other);
        assert_eq!(
            changes[2],
            ("value".to_owned(), Change::Secret { changed: true })
        );
        assert!(!format!("{changes:?}").contains("s1") && !format!("{changes:?}").contains("s2"));
    }
}
