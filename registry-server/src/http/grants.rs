//! The checks a token limited by grants meets on the block routes. A token without grants
//! passes every one of them at no cost (its scope was checked by `guard`).
//!
//! - A read needs the scope on every document of the answered tree: the root unseen is a
//!   404 (what a missing document answers, so no existence oracle), a nested one a 403
//!   naming the scope and the block. An anonymous document inside a tree is part of the
//!   document that references it and is covered by that one's grant.
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

use super::extract::Caller;
use super::{ApiError, ApiResult, AppState};
use crate::store::{Reach, Scope, StoreError, TokenInfo};

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

/// Checks an answered tree: the root (404 when unseen), then every nested document (403
/// naming it).
pub(super) fn check_tree(caller: &Caller, scope: Scope, doc: &BlockDocument) -> ApiResult<()> {
    let Some(token) = caller.limited() else {
        return Ok(());
    };
    let slug = doc.block_type.as_ref().map_or("", |t| t.slug.as_str());
    let name = doc.name.as_deref().unwrap_or_default();
    check_root(token, scope, slug, name)?;
    check_nested(token, scope, &doc.block_document_references)
}

/// The document `slug/name` itself: a 404 when the token may not even read it (as if it
/// did not exist), a 403 naming it when it may read it but not with `scope`.
pub(super) fn check_root(token: &TokenInfo, scope: Scope, slug: &str, name: &str) -> ApiResult<()> {
    if !token.may(Scope::Read, slug, name) {
        return Err(ApiError::NotFound(NOT_FOUND.into()));
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
/// not even read it, 403 naming the block when it may read but not this. A missing
/// document is left to the store (which answers 404 itself).
pub(super) async fn check_document(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    scope: Scope,
) -> ApiResult<()> {
    let Some(token) = caller.limited() else {
        return Ok(());
    };
    let Some(doc) = state.store.document_identity(id).await? else {
        return Ok(());
    };
    check_root(token, scope, &doc.slug, &doc.name)
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
        let visible = token.may(Scope::Read, &root.slug, &root.name)
            || (root.anonymous && state.store.adoptable_by(id, token.id).await?);
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

/// Checks that the caller may register or change the type `slug` and its schemas.
pub(super) fn check_type(caller: &Caller, slug: &str) -> ApiResult<()> {
    match caller.limited() {
        Some(token) if !token.may_register(slug) => Err(ApiError::Forbidden(format!(
            "registering or changing the block type {slug} needs a write grant on all its blocks ({slug}/*)"
        ))),
        _ => Ok(()),
    }
}
