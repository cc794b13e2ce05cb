//! `/block_schemas`: create, read, read by checksum, filter, delete.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use block_types::model::{BlockSchema, BlockSchemaCreate, BlockSchemaFilterBody};
use serde::Deserialize;

use super::extract::{Body, Caller, Id};
use super::routes::{Route, delete, get, post};
use super::{ApiResult, St, created};

pub(super) fn routes() -> Vec<Route> {
    let routes = vec![
        post("/api/block_schemas/", create)
            .summary("Create a block schema (200 with the existing one for a known checksum)")
            .body("BlockSchemaCreate")
            .returns(201, Some("BlockSchema")),
        post("/api/block_schemas", create)
            .summary("Create a block schema (without the trailing slash)")
            .body("BlockSchemaCreate")
            .returns(201, Some("BlockSchema")),
        post("/api/block_schemas/filter", filter)
            .reads()
            .summary("List block schemas matching a filter")
            .body("BlockSchemaFilter")
            .returns(200, Some("BlockSchema[]")),
        get("/api/block_schemas/checksum/{checksum}", read_by_checksum)
            .summary("Read a block schema by checksum")
            .query(&[("version", "string", "The schema version")])
            .returns(200, Some("BlockSchema")),
        get("/api/block_schemas/{id}", read)
            .summary("Read a block schema")
            .returns(200, Some("BlockSchema")),
        delete("/api/block_schemas/{id}", delete_schema)
            .summary("Delete a block schema no document uses")
            .returns(204, None),
    ];
    routes.into_iter().map(|r| r.tag("block schemas")).collect()
}

/// 201 for a new schema, 200 with the existing one for a known (checksum, version).
async fn create(
    State(state): St,
    caller: Caller,
    Body(body): Body<BlockSchemaCreate>,
) -> ApiResult<Response> {
    super::grants::check_schema(&state, &caller, body.block_type_id, &body.fields).await?;
    let (schema, is_new) = state
        .store
        .create_block_schema(body, caller.rights())
        .await?;
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

async fn delete_schema(State(state): St, Id(id): Id, caller: Caller) -> ApiResult<StatusCode> {
    if caller.limited().is_some() {
        let schema = state.store.read_block_schema(id).await?;
        let ty = state.store.read_block_type(schema.block_type_id).await?;
        super::grants::check_type(&caller, &ty.slug)?;
    }
    state
        .store
        .delete_block_schema_by(id, caller.rights().token)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
