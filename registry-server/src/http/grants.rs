//! The checks a token limited by grants meets on the block routes. A token without grants
//! passes every one of them at no cost (its scope was checked by `guard`).
//!
//! - A read needs the scope on every document of the answered tree: the root unseen is a
//!   404 (what a missing document answers, so no existence oracle; recorded in the audit
//!   log as a refusal), a nested one a 403 naming the scope and the block.
//! - Anonymous documents (Prefect saves a nested block as one) have made-up names that no
//!   grant matches: inside a tree one is part of the document that references it and is
//!   covered by that one's grant; on its own, a limited token sees it only while it is its
//!   own (written by the token and referenced by nothing yet), which is what a nested save
//!   needs between its two writes. So no grant, and no reference, reaches into another
//!   tree's anonymous document.
//! - Lists and counts are filtered in the store (`Reach`), so paging and totals only
//!   concern what the token may see.
//! - A write needs `write` on its document (404 when the token cannot even read it), and
//!   every document its data references must be readable by the token: no block can be
//!   made to carry a value from outside the token's grants.
//! - Types and schemas: read by anyone; registered or changed with `write` on every
//!   document of the type (`gcs-bucket/*`).

use block_types::FieldError;
use block_types::model::{BlockDocument, BlockDocumentReference};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use uuid::Uuid;

use std::sync::atomic::Ordering;

use super::extract::Caller;
use super::{ApiError, ApiResult, AppState};
use crate::store::TokenAccess as _;
use crate::store::{Identity, Reach, Rights, Scope, StoreError, TokenInfo};

const NOT_FOUND: &str = "Block document not found";

impl Caller {
    /// The token, when grants limit it (`None`: every check passes).
    pub(crate) fn limited(&self) -> Option<&TokenInfo> {
        self.token.as_deref().filter(|t| t.limited())
    }

    /// Which documents a list may show at `scope`.
    pub(crate) fn reach(&self, scope: Scope) -> Reach<'_> {
        self.limited().map_or(Reach::All, |t| t.reach(scope))
    }

    /// The 404 of a document the grants hide, marked for the audit log.
    fn hidden(&self) -> ApiError {
        self.hidden.store(true, Ordering::Relaxed);
        ApiError::NotFound(NOT_FOUND.into())
    }

    /// What a write to the document `doc` may do beyond `write`: with grants, reading
    /// secrets (which decides whether a schema move may check stored secrets) is judged on
    /// this document, not on the token's scopes anywhere.
    pub(crate) fn rights_on(&self, doc: Option<&Identity>) -> Rights {
        let mut rights = self.rights();
        if let (Some(token), Some(doc)) = (self.limited(), doc) {
            rights.read_secrets =
                !doc.anonymous && token.may(Scope::ReadSecrets, &doc.slug, &doc.name);
        }
        rights
    }
}

/// The scope a read needs on each document it shows.
pub(super) fn read_scope(include_secrets: bool) -> Scope {
    if include_secrets {
        Scope::ReadSecrets
    } else {
        Scope::Read
    }
}

fn refusal(scope: Scope, slug: &str, name: &str) -> ApiError {
    ApiError::Forbidden(format!(
        "this needs the {} scope on the block {slug}/{name}, which the token's grants do not cover",
        scope.as_str()
    ))
}

/// Checks an answered tree: the root (404 when unseen; an anonymous root too, which only
/// [`check_document`] may let through), then every nested document (403 naming it).
pub(super) fn check_tree(caller: &Caller, scope: Scope, doc: &BlockDocument) -> ApiResult<()> {
    let Some(token) = caller.limited() else {
        return Ok(());
    };
    if doc.is_anonymous {
        return Err(caller.hidden());
    }
    let slug = doc.block_type.as_ref().map_or("", |t| t.slug.as_str());
    let name = doc.name.as_deref().unwrap_or_default();
    check_root(caller, token, scope, slug, name)?;
    check_nested(token, scope, &doc.block_document_references)
}

/// Checks the nested documents of a tree whose root [`check_document`] let through.
pub(super) fn check_children(caller: &Caller, scope: Scope, doc: &BlockDocument) -> ApiResult<()> {
    match caller.limited() {
        Some(token) => check_nested(token, scope, &doc.block_document_references),
        None => Ok(()),
    }
}

/// The document `slug/name` itself: a 404 when the token may not even read it (as if it
/// did not exist), a 403 naming it when it may read it but not with `scope`.
pub(super) fn check_root(
    caller: &Caller,
    token: &TokenInfo,
    scope: Scope,
    slug: &str,
    name: &str,
) -> ApiResult<()> {
    if !token.may(Scope::Read, slug, name) {
        return Err(caller.hidden());
    }
    if !token.may(scope, slug, name) {
        return Err(refusal(scope, slug, name));
    }
    Ok(())
}

/// Checks every tree of a list (its roots were chosen within the token's reach).
pub(super) fn check_trees(caller: &Caller, scope: Scope, docs: &[BlockDocument]) -> ApiResult<()> {
    docs.iter().try_for_each(|d| check_tree(caller, scope, d))
}

fn check_nested(
    token: &TokenInfo,
    scope: Scope,
    refs: &BTreeMap<String, BlockDocumentReference>,
) -> ApiResult<()> {
    for reference in refs.values() {
        let doc = &reference.block_document;
        let name = doc.name.as_deref().unwrap_or_default();
        if !doc.is_anonymous && !token.may(scope, &doc.block_type.slug, name) {
            return Err(refusal(scope, &doc.block_type.slug, name));
        }
        check_nested(token, scope, &doc.block_document_references)?;
    }
    Ok(())
}

/// Checks that the caller may do what `scope` allows to the document `id`: 404 when it may
/// not even read it, 403 naming the block when it may read but not this. An anonymous
/// document only while it is the token's own. A missing document is left to the store
/// (which answers 404 itself). Returns what it looked up (with grants).
pub(super) async fn check_document(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    scope: Scope,
) -> ApiResult<Option<Identity>> {
    let Some(token) = caller.limited() else {
        return Ok(None);
    };
    let Some(doc) = state.store.document_identity(id).await? else {
        return Ok(None);
    };
    if doc.anonymous {
        if !state.store.adoptable_by(id, token.id).await? {
            return Err(caller.hidden());
        }
        if !token.grants(scope) {
            return Err(refusal(scope, &doc.slug, &doc.name));
        }
    } else {
        check_root(caller, token, scope, &doc.slug, &doc.name)?;
    }
    Ok(Some(doc))
}

/// A delete refused because other documents reference this one names them; a limited
/// token learns only the names it may read, and how many others there are.
pub(super) fn visible_referrers(caller: &Caller, error: StoreError) -> StoreError {
    let (Some(token), StoreError::InUse { message, referrers }) = (caller.limited(), &error) else {
        return error;
    };
    let (seen, unseen): (Vec<&String>, Vec<&String>) = referrers.iter().partition(|r| {
        r.split_once('/').is_some_and(|(slug, name)| {
            !name.starts_with("anonymous-") && token.may(Scope::Read, slug, name)
        })
    });
    let mut shown: Vec<String> = seen.into_iter().cloned().collect();
    if !unseen.is_empty() {
        shown.push(format!("{} you cannot see", unseen.len()));
    }
    StoreError::InUse {
        message: message.clone(),
        referrers: shown,
    }
}

/// Checks a new document of the type `type_id` named `name` (none: anonymous).
pub(super) async fn check_create(
    state: &AppState,
    caller: &Caller,
    type_id: Uuid,
    name: Option<&str>,
) -> ApiResult<()> {
    let Some(token) = caller.limited() else {
        return Ok(());
    };
    let slug = match state.store.read_block_type(type_id).await {
        Ok(ty) => ty.slug,
        // The store names the missing type itself.
        Err(StoreError::NotFound(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let allowed = match name {
        Some(name) => token.may(Scope::Write, &slug, name),
        None => token.may_create_anonymous(&slug),
    };
    if allowed {
        Ok(())
    } else {
        Err(refusal(Scope::Write, &slug, name.unwrap_or("<anonymous>")))
    }
}

/// Checks that every document `data` references (top-level `$ref`s) and everything those
/// reference is readable by the caller, so a write cannot pull a block from outside the
/// token's grants into one inside them. A referenced document the token cannot see is
/// refused as a missing one would be; a nested one it cannot read with a 403 naming it.
pub(super) async fn check_references(
    state: &AppState,
    caller: &Caller,
    data: &Map<String, Value>,
) -> ApiResult<()> {
    let Some(token) = caller.limited() else {
        return Ok(());
    };
    // Malformed references are the store's to report.
    let Ok(refs) = block_types::extract_references(data) else {
        return Ok(());
    };
    for reference in refs {
        let id = reference.block_document_id;
        let Some(root) = state.store.document_identity(id).await? else {
            continue;
        };
        let visible = if root.anonymous {
            state.store.adoptable_by(id, token.id).await?
        } else {
            token.may(Scope::Read, &root.slug, &root.name)
        };
        if !visible {
            return Err(StoreError::BadReference(FieldError::new(
                format!("data.{}", reference.field),
                format!("references block document {id}, which does not exist"),
            ))
            .into());
        }
        let tree = match state.store.read_block_document_tagged(id, false).await {
            Ok(tree) => tree,
            Err(StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        check_nested(token, Scope::Read, &tree.document.block_document_references)?;
    }
    Ok(())
}

/// Checks a new schema: its own type, and the type of every nested block schema it would
/// register along with it (one not registered yet, by checksum), so a grant on one type
/// cannot add schemas to another.
pub(super) async fn check_schema(
    state: &AppState,
    caller: &Caller,
    type_id: Uuid,
    fields: &Map<String, Value>,
) -> ApiResult<()> {
    if caller.limited().is_none() {
        return Ok(());
    }
    let ty = state.store.read_block_type(type_id).await?;
    check_type(caller, &ty.slug)?;
    let mut nested = Vec::new();
    collect_children(&Value::Object(fields.clone()), &mut nested);
    for (slug, checksum) in nested {
        match state
            .store
            .read_block_schema_by_checksum(&checksum, None)
            .await
        {
            Ok(_) => {}
            Err(StoreError::NotFound(_)) => check_type(caller, &slug)?,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Every `{block_type_slug, block_schema_checksum}` in a schema, at any depth (bounded by
/// the request body's size).
fn collect_children(value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            if let (Some(Value::String(slug)), Some(Value::String(checksum))) =
                (map.get("block_type_slug"), map.get("block_schema_checksum"))
            {
                out.push((slug.clone(), checksum.clone()));
            }
            map.values().for_each(|v| collect_children(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_children(v, out)),
        _ => {}
    }
}

/// Checks that the caller may register or change the type `slug` and its schemas.
pub(super) fn check_type(caller: &Caller, slug: &str) -> ApiResult<()> {
    match caller.limited() {
        Some(token) if !token.may_register(slug) => Err(ApiError::Forbidden(format!(
            "registering or changing the block type {slug} needs a write grant on all its blocks ({slug}/*)"
        ))),
        _ => Ok(()),
    }
}
