//! `/block_documents`: create, filter, count, read, update, delete, and history: versions,
//! one version, rollback, destroying one version.
//!
//! Reads carry an `ETag` over the resolved tree; `If-None-Match` answers 304, and
//! `If-Match` on PATCH, DELETE and rollback makes the write conditional (412 on mismatch).
//! Writes without `If-Match` (what Prefect clients send) stay unconditional.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use block_types::model::{
    BlockDocumentCountBody, BlockDocumentCreate, BlockDocumentFilterBody, BlockDocumentUpdate,
};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::auth::WriteRecord;
use super::extract::{Answered, Body, Caller, Id, IncludeSecrets};
use super::grants::{self, check_document, check_references, read_scope};
use super::routes::{INCLUDE_SECRETS, Route, delete, get, patch, post};
use super::{ApiError, ApiResult, St, created};
use crate::store::{Answer, Scope, Tagged, VersionInfo};

pub(super) fn routes() -> Vec<Route> {
    let routes = vec![
        post("/api/block_documents/", create)
            .summary("Create a document")
            .body("BlockDocumentCreate")
            .returns(201, Some("BlockDocument")),
        post("/api/block_documents", create)
            .summary("Create a document (without the trailing slash)")
            .body("BlockDocumentCreate")
            .returns(201, Some("BlockDocument")),
        post("/api/block_documents/filter", filter)
            .reads()
            .summary("List documents matching a filter (include_secrets needs read-secrets)")
            .body("BlockDocumentFilter")
            .returns(200, Some("BlockDocument[]")),
        post("/api/block_documents/count", count)
            .reads()
            .summary("Count documents matching a filter")
            .body("BlockDocumentCount")
            .returns(200, Some("Integer")),
        get("/api/block_documents/{id}", read)
            .summary("Read a document, references resolved; ETag covers the whole tree")
            .query(INCLUDE_SECRETS)
            .returns(200, Some("BlockDocument")),
        patch("/api/block_documents/{id}", update)
            .summary("Update a document (If-Match makes it conditional)")
            .body("BlockDocumentUpdate")
            .returns(204, None),
        delete("/api/block_documents/{id}", delete_document)
            .summary(
                "Delete a document no other document references (If-Match makes it conditional)",
            )
            .returns(204, None),
        get("/api/block_documents/{id}/versions", versions)
            .summary("List a document's stored versions, newest first")
            .returns(200, Some("VersionInfo[]")),
        get("/api/block_documents/{id}/versions/{version}", read_version)
            .summary("Read one version's own data (references as $ref)")
            .query(INCLUDE_SECRETS)
            .returns(200, Some("VersionData")),
        delete(
            "/api/block_documents/{id}/versions/{version}",
            destroy_version,
        )
        .admin()
        .summary("Destroy an old version's data and secrets (not the current version); admin only")
        .returns(204, None),
        post(
            "/api/block_documents/{id}/versions/{version}/rollback",
            rollback,
        )
        .summary("Write a new version equal to an older one, secrets included")
        .returns(200, Some("WriteOutcome")),
    ];
    routes
        .into_iter()
        .map(|r| r.tag("block documents"))
        .collect()
}

/// 201 with the new document, secrets masked.
async fn create(
    State(state): St,
    caller: Caller,
    record: Option<WriteRecord>,
    Body(body): Body<BlockDocumentCreate>,
) -> ApiResult<Response> {
    grants::check_create(&state, &caller, body.block_type_id, body.name.as_deref()).await?;
    check_references(&state, &caller, &body.data).await?;
    let author = caller.rights().token;
    // The create's audit record commits with it (one sync for both, not two in a row).
    let stored = record.as_ref().map(|r| r.answering(StatusCode::CREATED));
    let document = state
        .store
        .create_block_document_recorded(body, author, stored)
        .await?;
    let response = created(document);
    Ok(match record {
        Some(_) => WriteRecord::recorded(StatusCode::CREATED, response),
        None => response,
    })
}

async fn filter(
    State(state): St,
    caller: Caller,
    Body(body): Body<BlockDocumentFilterBody>,
) -> ApiResult<Response> {
    let include_secrets = body.include_secrets == Some(true);
    if include_secrets {
        caller.allow_secrets()?;
    }
    let scope = read_scope(include_secrets);
    let documents = state
        .store
        .filter_block_documents_within(&body, caller.reach(scope))
        .await?;
    grants::check_trees(&caller, scope, &documents)?;
    Ok(Answered::of(&documents).attach(Json(documents)))
}

async fn count(
    State(state): St,
    caller: Caller,
    Body(body): Body<BlockDocumentCountBody>,
) -> ApiResult<Json<i64>> {
    Ok(Json(
        state
            .store
            .count_block_documents_within(&body, caller.reach(Scope::Read))
            .await?,
    ))
}

async fn read(
    State(state): St,
    Id(id): Id,
    caller: Caller,
    IncludeSecrets(include_secrets): IncludeSecrets,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if caller.limited().is_none() {
        let answer = state.store.read_answer(id, include_secrets).await?;
        return Ok(answer_response(&headers, answer));
    }
    let scope = read_scope(include_secrets);
    // Before the read: a hidden document answers as a missing one, whatever state it is in.
    check_document(&state, &caller, id, scope).await?;
    let tagged = state
        .store
        .read_block_document_tagged(id, include_secrets)
        .await?;
    grants::check_children(&caller, scope, &tagged.document)?;
    Ok(tagged_response(&headers, tagged))
}

/// The document with its `ETag`, or 304 when `If-None-Match` names that tag.
pub(super) fn tagged_response(headers: &HeaderMap, tagged: Tagged) -> Response {
    with_tag(headers, &tagged.etag, || {
        Answered::of([&tagged.document]).attach(Json(tagged.document))
    })
}

/// A pre-serialized answer with its `ETag`, or 304 when `If-None-Match` names that tag.
pub(super) fn answer_response(headers: &HeaderMap, answer: Answer) -> Response {
    with_tag(headers, &answer.etag, || {
        Answered(answer.documents).attach((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            answer.body,
        ))
    })
}

/// `answer()` with `etag`, or 304 when `If-None-Match` names that tag.
fn with_tag(headers: &HeaderMap, etag: &str, answer: impl FnOnce() -> Response) -> Response {
    let value = HeaderValue::from_str(etag).ok();
    let mut response = if matches_tag(headers, &header::IF_NONE_MATCH, etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        answer()
    };
    if let Some(value) = value {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

/// Whether a conditional header lists `etag` (or `*`). `If-None-Match` compares weakly
/// (a `W/` tag matches its strong twin); `If-Match` strongly, so a weak tag never matches
/// (RFC 9110 §13.1).
fn matches_tag(headers: &HeaderMap, name: &header::HeaderName, etag: &str) -> bool {
    let weak = *name == header::IF_NONE_MATCH;
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t == etag || (weak && t.strip_prefix("W/").is_some_and(|t| t == etag)))
}

/// With `If-Match`: the document's version if the header matches its current tag, else a
/// 412. Without: `None` (an unconditional write).
async fn precondition(
    state: &super::AppState,
    id: Uuid,
    headers: &HeaderMap,
) -> ApiResult<Option<i64>> {
    if !headers.contains_key(header::IF_MATCH) {
        return Ok(None);
    }
    let (etag, version) = state.store.document_tag(id).await?;
    if matches_tag(headers, &header::IF_MATCH, &etag) {
        Ok(Some(version))
    } else {
        Err(ApiError::PreconditionFailed(format!(
            "If-Match does not match the document's current ETag {etag}; read it again and retry"
        )))
    }
}

async fn update(
    State(state): St,
    Id(id): Id,
    caller: Caller,
    headers: HeaderMap,
    Body(body): Body<BlockDocumentUpdate>,
) -> ApiResult<StatusCode> {
    let doc = check_document(&state, &caller, id, Scope::Write).await?;
    if let Some(data) = &body.data {
        check_references(&state, &caller, data).await?;
    }
    let expected = precondition(&state, id, &headers).await?;
    state
        .store
        .update_block_document(id, body, expected, caller.rights_on(doc.as_ref()))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_document(
    State(state): St,
    Id(id): Id,
    caller: Caller,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    check_document(&state, &caller, id, Scope::Write).await?;
    let expected = precondition(&state, id, &headers).await?;
    state
        .store
        .delete_block_document_by(id, expected, caller.rights().token)
        .await
        .map_err(|e| grants::visible_referrers(&caller, e))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn versions(
    State(state): St,
    Id(id): Id,
    caller: Caller,
) -> ApiResult<Json<Vec<VersionInfo>>> {
    check_document(&state, &caller, id, Scope::Read).await?;
    Ok(Json(state.store.list_versions(id).await?))
}

/// `{id}/versions/{version}`: the id must be a UUID (404 otherwise) and the version a
/// positive integer (422 otherwise).
fn version_path(id: &str, version: &str) -> ApiResult<(Uuid, i64)> {
    let id = Uuid::parse_str(id)
        .map_err(|_| ApiError::NotFound(format!("Not Found: '{id}' is not a valid UUID")))?;
    let version = version
        .parse::<i64>()
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| {
            ApiError::Validation(vec![block_types::FieldError::new(
                "version",
                "must be a positive integer",
            )])
        })?;
    Ok((id, version))
}

async fn read_version(
    State(state): St,
    Path((id, version)): Path<(String, String)>,
    caller: Caller,
    IncludeSecrets(include_secrets): IncludeSecrets,
) -> ApiResult<Json<Value>> {
    let (id, version) = version_path(&id, &version)?;
    check_document(&state, &caller, id, read_scope(include_secrets)).await?;
    let data: Map<String, Value> = state
        .store
        .read_version(id, version, include_secrets)
        .await?;
    Ok(Json(
        json!({"block_document_id": id, "version": version, "data": data}),
    ))
}

async fn destroy_version(
    State(state): St,
    Path((id, version)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let (id, version) = version_path(&id, &version)?;
    state.store.destroy_version(id, version).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn rollback(
    State(state): St,
    caller: Caller,
    Path((id, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let (id, version) = version_path(&id, &version)?;
    check_document(&state, &caller, id, Scope::Write).await?;
    if caller.limited().is_some() {
        // What the rollback would bring back must be readable by the token too.
        let old: Map<String, Value> = state.store.read_version(id, version, false).await?;
        check_references(&state, &caller, &old).await?;
    }
    let expected = precondition(&state, id, &headers).await?;
    let outcome = state
        .store
        .rollback_block_document(id, version, expected, caller.rights().token)
        .await?;
    Ok(Json(json!({"id": outcome.id, "version": outcome.version})))
}
