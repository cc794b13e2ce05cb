//! `/block_schemas`: create, read, read by checksum, filter, delete.

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use block_types::model::{BlockSchema, BlockSchemaCreate, BlockSchemaFilterBody};
use serde::Deserialize;

use super::extract::{Body, Id};
use super::{ApiResult, AppState, St, created};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/block_schemas/", post(create))
        .route("/block_schemas", post(create))
        .route("/block_schemas/filter", post(filter))
        .route("/block_schemas/checksum/{checksum}", get(read_by_checksum))
        .route("/block_schemas/{id}", get(read).delete(delete))
}

/// 201 for a new schema, 200 with the existing one for a known (checksum, version).
async fn create(State(state): St, Body(body): Body<BlockSchemaCreate>) -> ApiResult<Response> {
    let (schema, is_new) = state.store.create_block_schema(body).await?;
    Ok(if is_new {
        created(schema)
    } else {
        Json(schema).into_response()
    })
}

async fn read(State(state): St, Id(id): Id) -> ApiResult<Json<BlockSchema>> {
    Ok(Json(state.store.read_block_schema(id).await?))
}

#[derive(Debug, Deserialize)]
struct VersionQuery {
    version: Option<String>,
}

async fn read_by_checksum(
    State(state): St,
    Path(checksum): Path<String>,
    Query(query): Query<VersionQuery>,
) -> ApiResult<Json<BlockSchema>> {
    Ok(Json(
        state
            .store
            .read_block_schema_by_checksum(&checksum, query.version.as_deref())
            .await?,
    ))
}

async fn filter(
    State(state): St,
    Body(body): Body<BlockSchemaFilterBody>,
) -> ApiResult<Json<Vec<BlockSchema>>> {
    Ok(Json(state.store.filter_block_schemas(&body).await?))
}

async fn delete(State(state): St, Id(id): Id) -> ApiResult<StatusCode> {
    state.store.delete_block_schema(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
