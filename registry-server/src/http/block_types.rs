//! `/block_types`: create, read, filter, update, delete, and documents by type.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use block_types::catalog::Collection;
use block_types::model::{BlockType, BlockTypeCreate, BlockTypeFilterBody, BlockTypeUpdate};
use serde_json::Value;

use super::extract::{Answered, Body, Caller, Id, IncludeSecrets};
use super::routes::{INCLUDE_SECRETS, Route, delete, get, patch, post};
use super::{ApiResult, St, created};

pub(super) fn routes() -> Vec<Route> {
    let routes = vec![
        post("/api/block_types/", create)
            .summary("Create a block type")
            .body("BlockTypeCreate")
            .returns(201, Some("BlockType")),
        post("/api/block_types", create)
            .summary("Create a block type (without the trailing slash)")
            .body("BlockTypeCreate")
            .returns(201, Some("BlockType")),
        post("/api/block_types/filter", filter)
            .reads()
            .summary("List block types matching a filter")
            .body("BlockTypeFilter")
            .returns(200, Some("BlockType[]")),
        post(
            "/api/block_types/install_system_block_types",
            install_system_block_types,
        )
        .summary("Register the core block types")
        .returns(200, None),
        get("/api/block_types/slug/{slug}", read_by_slug)
            .summary("Read a block type by slug")
            .returns(200, Some("BlockType")),
        get(
            "/api/block_types/slug/{slug}/block_documents",
            documents_of_type,
        )
        .summary("List the documents of a block type")
        .query(INCLUDE_SECRETS)
        .returns(200, Some("BlockDocument[]")),
        get(
            "/api/block_types/slug/{slug}/block_documents/name/{name}",
            document_by_name,
        )
        .summary("Read a document by type slug and name, references resolved")
        .query(INCLUDE_SECRETS)
        .returns(200, Some("BlockDocument")),
        get("/api/block_types/{id}", read)
            .summary("Read a block type")
            .returns(200, Some("BlockType")),
        patch("/api/block_types/{id}", update)
            .summary("Update a block type's metadata (a protected type's only with an admin token; otherwise nothing changes)")
            .body("BlockTypeUpdate")
            .returns(204, None),
        delete("/api/block_types/{id}", delete_type)
            .summary("Delete a block type no document uses")
            .returns(204, None),
        get("/api/block_capabilities/", capabilities)
            .summary("List the capabilities of every schema")
            .returns(200, Some("String[]")),
        get("/api/block_capabilities", capabilities)
            .summary("List the capabilities of every schema (without the trailing slash)")
            .returns(200, Some("String[]")),
    ];
    routes.into_iter().map(|r| r.tag("block types")).collect()
}

async fn create(
    State(state): St,
    caller: Caller,
    Body(body): Body<BlockTypeCreate>,
) -> ApiResult<Response> {
    super::grants::check_type(&caller, &body.slug)?;
    Ok(created(
        state
            .store
            .create_block_type_by(body, caller.rights().token)
            .await?,
    ))
}

async fn read(State(state): St, Id(id): Id) -> ApiResult<Json<BlockType>> {
    Ok(Json(state.store.read_block_type(id).await?))
}

async fn read_by_slug(State(state): St, Path(slug): Path<String>) -> ApiResult<Json<BlockType>> {
    Ok(Json(state.store.read_block_type_by_slug(&slug).await?))
}

async fn filter(
    State(state): St,
    Body(body): Body<BlockTypeFilterBody>,
) -> ApiResult<Json<Vec<BlockType>>> {
    Ok(Json(state.store.filter_block_types(&body).await?))
}

async fn update(
    State(state): St,
    Id(id): Id,
    caller: Caller,
    Body(body): Body<BlockTypeUpdate>,
) -> ApiResult<StatusCode> {
    if caller.limited().is_some() {
        let ty = state.store.read_block_type(id).await?;
        super::grants::check_type(&caller, &ty.slug)?;
    }
    state
        .store
        .update_block_type(id, body, caller.rights())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_type(State(state): St, Id(id): Id, caller: Caller) -> ApiResult<StatusCode> {
    if caller.limited().is_some() {
        let ty = state.store.read_block_type(id).await?;
        super::grants::check_type(&caller, &ty.slug)?;
    }
    state
        .store
        .delete_block_type_by(id, caller.rights().token)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn documents_of_type(
    State(state): St,
    Path(slug): Path<String>,
    caller: Caller,
    IncludeSecrets(include_secrets): IncludeSecrets,
) -> ApiResult<Response> {
    let scope = super::grants::read_scope(include_secrets);
    let documents = state
        .store
        .list_block_documents_of_type_within(&slug, include_secrets, caller.reach(scope))
        .await?;
    super::grants::check_trees(&caller, scope, &documents)?;
    Ok(Answered::of(&documents).attach(Json(documents)))
}

async fn document_by_name(
    State(state): St,
    Path((slug, name)): Path<(String, String)>,
    caller: Caller,
    IncludeSecrets(include_secrets): IncludeSecrets,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    let scope = super::grants::read_scope(include_secrets);
    let Some(token) = caller.limited() else {
        let answer = state
            .store
            .read_answer_by_name(&slug, &name, include_secrets)
            .await?;
        return Ok(super::block_documents::answer_response(&headers, answer));
    };
    // Before the lookup: the answer cannot depend on whether it exists.
    super::grants::check_root(&caller, token, scope, &slug, &name)?;
    let tagged = state
        .store
        .read_block_document_by_name_tagged(&slug, &name, include_secrets)
        .await?;
    super::grants::check_tree(&caller, scope, &tagged.document)?;
    Ok(super::block_documents::tagged_response(&headers, tagged))
}

async fn install_system_block_types(State(state): St, caller: Caller) -> ApiResult<Json<Value>> {
    for spec in Collection::Core.specs() {
        super::grants::check_type(&caller, &spec.block_type.slug)?;
    }
    state.store.register_collection(Collection::Core).await?;
    Ok(Json(Value::Null))
}

async fn capabilities(State(state): St) -> ApiResult<Json<Vec<String>>> {
    Ok(Json(state.store.block_capabilities().await?))
}
