//! Rows into wire types: the columns a query selects for a block type or schema, and
//! the mapping of such a row.

use block_types::model::{BlockSchema, BlockType};
use serde_json::{Map, Value};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Result, json_col, to_time, uuid_col};

/// Columns of `block_type t`, aliased `t_*`.
pub(crate) const TYPE_COLUMNS: &str = "t.id as t_id, t.created as t_created, t.updated as t_updated, \
     t.name as t_name, t.slug as t_slug, t.logo_url as t_logo_url, \
     t.documentation_url as t_documentation_url, t.description as t_description, \
     t.code_example as t_code_example, t.is_protected as t_is_protected";

pub(crate) fn type_from_row(row: &AnyRow) -> Result<BlockType> {
    Ok(BlockType {
        id: uuid_col(row, "t_id")?,
        created: to_time(row.try_get("t_created")?),
        updated: to_time(row.try_get("t_updated")?),
        name: row.try_get("t_name")?,
        slug: row.try_get("t_slug")?,
        logo_url: row.try_get("t_logo_url")?,
        documentation_url: row.try_get("t_documentation_url")?,
        description: row.try_get("t_description")?,
        code_example: row.try_get("t_code_example")?,
        is_protected: row.try_get::<i64, _>("t_is_protected")? != 0,
    })
}

/// Columns of `block_schema s` joined with its `block_type t`.
pub(crate) const SCHEMA_COLUMNS: &str = "s.id as s_id, s.created as s_created, s.updated as s_updated, \
     s.checksum as s_checksum, s.fields as s_fields, s.capabilities as s_capabilities, \
     s.version as s_version, s.block_type_id as s_block_type_id";

pub(crate) fn schema_from_row(row: &AnyRow) -> Result<BlockSchema> {
    let mut fields: Value = json_col(row, "s_fields")?;
    if let Value::Object(map) = &mut fields {
        map.entry("block_schema_references")
            .or_insert_with(|| Value::Object(Map::new()));
    }
    Ok(BlockSchema {
        id: uuid_col(row, "s_id")?,
        created: to_time(row.try_get("s_created")?),
        updated: to_time(row.try_get("s_updated")?),
        checksum: row.try_get("s_checksum")?,
        fields,
        block_type_id: uuid_col(row, "s_block_type_id")?,
        block_type: Some(type_from_row(row)?),
        capabilities: json_col(row, "s_capabilities")?,
        version: row.try_get("s_version")?,
    })
}
