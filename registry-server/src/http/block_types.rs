//! `/block_types`: create, read, filter, update, delete, and documents by type.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use block_types::catalog::Collection;
use block_types::model::{
    BlockDocument, BlockType, BlockTypeCreate, BlockTypeFilterBody, BlockTypeUpdate,
};
use block_types::validate;
use serde_json::Value;

use super::extract::{Body, Id, IncludeSecrets};
use super::{ApiError, ApiResult, AppState, St, created};
use crate::store::Store;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/block_types/", post(create))
        .route("/block_types", post(create))
        .route("/block_types/filter", post(filter))
        .route(
            "/block_types/install_system_block_types",
            post(install_system_block_types),
        )
        .route("/block_types/slug/{slug}", get(read_by_slug))
        .route(
            "/block_types/slug/{slug}/block_documents",
            get(documents_of_type),
        )
        .route(
            "/block_types/slug/{slug}/block_documents/name/{name}",
            get(document_by_name),
        )
        .route("/block_types/{id}", get(read).patch(update).delete(delete))
        .route("/block_capabilities/", get(capabilities))
        .route("/block_capabilities", get(capabilities))
}

async fn create(State(state): St, Body(body): Body<BlockTypeCreate>) -> ApiResult<Response> {
    if validate::is_reserved_block_type_name(&body.name) {
        return Err(ApiError::Forbidden(
            "Block type names beginning with 'Prefect' are reserved.".into(),
        ));
    }
    Ok(created(state.store.create_block_type(body).await?))
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
    Body(body): Body<BlockTypeUpdate>,
) -> ApiResult<StatusCode> {
    state.store.update_block_type(id, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete(State(state): St, Id(id): Id) -> ApiResult<StatusCode> {
    state.store.delete_block_type(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn documents_of_type(
    State(state): St,
    Path(slug): Path<String>,
    IncludeSecrets(include_secrets): IncludeSecrets,
) -> ApiResult<Json<Vec<BlockDocument>>> {
    Ok(Json(
        state
            .store
            .list_block_documents_of_type(&slug, include_secrets)
            .await?,
    ))
}

async fn document_by_name(
    State(state): St,
    Path((slug, name)): Path<(String, String)>,
    IncludeSecrets(include_secrets): IncludeSecrets,
) -> ApiResult<Json<BlockDocument>> {
    Ok(Json(
        state
            .store
            .read_block_document_by_name(&slug, &name, include_secrets)
            .await?,
    ))
}

async fn install_system_block_types(State(state): St) -> ApiResult<Json<Value>> {
    register_collection(&state.store, Collection::Core).await?;
    Ok(Json(Value::Null))
}

async fn capabilities(State(state): St) -> ApiResult<Json<Vec<String>>> {
    Ok(Json(state.store.block_capabilities().await?))
}

/// Registers a built-in collection: each type (leaving existing metadata alone) and its
/// current schema.
pub async fn register_collection(
    store: &Store,
    collection: Collection,
) -> Result<(), crate::store::StoreError> {
    for spec in collection.specs() {
        let ty = store.ensure_block_type(&spec.block_type, false).await?;
        store
            .create_block_schema(spec.to_schema_create(ty.id))
            .await?;
    }
    Ok(())
}
