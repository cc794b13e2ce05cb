//! `/block_documents`: create, filter, count, read, update, delete.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use block_types::model::{
    BlockDocument, BlockDocumentCountBody, BlockDocumentCreate, BlockDocumentFilterBody,
    BlockDocumentUpdate,
};

use super::extract::{Body, Id, IncludeSecrets};
use super::{ApiResult, AppState, St, created};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/block_documents/", post(create))
        .route("/block_documents", post(create))
        .route("/block_documents/filter", post(filter))
        .route("/block_documents/count", post(count))
        .route(
            "/block_documents/{id}",
            get(read).patch(update).delete(delete),
        )
}

/// 201 with the new document, secrets masked.
async fn create(State(state): St, Body(body): Body<BlockDocumentCreate>) -> ApiResult<Response> {
    Ok(created(state.store.create_block_document(body).await?))
}

async fn filter(
    State(state): St,
    Body(body): Body<BlockDocumentFilterBody>,
) -> ApiResult<Json<Vec<BlockDocument>>> {
    Ok(Json(state.store.filter_block_documents(&body).await?))
}

async fn count(State(state): St, Body(body): Body<BlockDocumentCountBody>) -> ApiResult<Json<i64>> {
    Ok(Json(state.store.count_block_documents(&body).await?))
}

async fn read(
    State(state): St,
    Id(id): Id,
    IncludeSecrets(include_secrets): IncludeSecrets,
) -> ApiResult<Json<BlockDocument>> {
    Ok(Json(
        state.store.read_block_document(id, include_secrets).await?,
    ))
}

async fn update(
    State(state): St,
    Id(id): Id,
    Body(body): Body<BlockDocumentUpdate>,
) -> ApiResult<StatusCode> {
    state.store.update_block_document(id, body, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete(State(state): St, Id(id): Id) -> ApiResult<StatusCode> {
    state.store.delete_block_document(id, None).await?;
    Ok(StatusCode::NO_CONTENT)
}
