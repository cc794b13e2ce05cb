//! What the console's dashboard shows of the whole store: the latest changes, documents on
//! an older schema than their type's newest, and references to a block of a type the field
//! does not take. Each answer is bounded and read from indexes, so it stays quick with a
//! million documents.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row;
use uuid::Uuid;

use super::sql::Sql;
use super::{Result, Store, json_col, to_time, uuid_col};

/// A document's latest write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentChange {
    /// The document's id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// Its type's slug.
    pub type_slug: String,
    /// Its type's display name.
    pub type_name: String,
    /// Its current version.
    pub version: i64,
    /// When that version was written.
    pub updated: DateTime<Utc>,
    /// The token that wrote the current version, when recorded.
    pub token_id: Option<Uuid>,
}

/// A document on an older schema than its type's newest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outdated {
    /// The document's id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// Its type's slug.
    pub type_slug: String,
    /// Its type's display name.
    pub type_name: String,
    /// The version of the schema it uses.
    pub schema_version: String,
    /// The version of its type's newest schema.
    pub newest_version: String,
}

/// A reference to a block of another type than the field takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MistypedReference {
    /// The referencing document's id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// The referencing field.
    pub field: String,
    /// The type slugs the field takes.
    pub expected: Vec<String>,
    /// The type slug of the block it references.
    pub found: String,
}

/// Schema id → (type id, version), and each type's newest schema.
struct Schemas {
    version: HashMap<Uuid, String>,
    newest: HashMap<Uuid, Uuid>,
    of_type: HashMap<Uuid, Uuid>,
}

/// The type slugs a schema's field may reference (`block_schema_references`: one or a list).
fn field_types(fields: &Value, field: &str) -> Vec<String> {
    let one = |v: &Value| {
        v.get("block_type_slug")
            .and_then(Value::as_str)
            .map(ToOwned::to_owned)
    };
    match fields
        .get("block_schema_references")
        .and_then(|r| r.get(field))
    {
        Some(Value::Array(list)) => list.iter().filter_map(one).collect(),
        Some(v) => one(v).into_iter().collect(),
        None => Vec::new(),
    }
}

impl Store {
    /// The `limit` named documents written last, newest first.
    pub async fn recent_changes(&self, limit: u32) -> Result<Vec<RecentChange>> {
        self.count_query();
        let rows = sqlx::query(
            "select d.id, d.name, t.slug, t.name as type_name, d.version, d.updated, v.token_id \
             from block_document d join block_type t on t.id = d.block_type_id \
             left join block_document_version v on v.block_document_id = d.id and v.version = d.version \
             where d.is_anonymous = 0 order by d.updated desc, d.id limit $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(RecentChange {
                    id: uuid_col(row, "id")?,
                    name: row.try_get("name")?,
                    type_slug: row.try_get("slug")?,
                    type_name: row.try_get("type_name")?,
                    version: row.try_get("version")?,
                    updated: to_time(row.try_get("updated")?),
                    token_id: row
                        .try_get::<Option<String>, _>("token_id")?
                        .map(|t| super::parse_uuid(&t))
                        .transpose()?,
                })
            })
            .collect()
    }

    async fn schema_versions(&self) -> Result<Schemas> {
        self.count_query();
        let rows =
            sqlx::query("select id, block_type_id, version from block_schema order by created, id")
                .fetch_all(&self.read)
                .await?;
        let mut schemas = Schemas {
            version: HashMap::new(),
            newest: HashMap::new(),
            of_type: HashMap::new(),
        };
        // Oldest first, so the last schema seen of a type is its newest (as the console's
        // forms choose it: latest `created`).
        for row in &rows {
            let id = uuid_col(row, "id")?;
            let ty = uuid_col(row, "block_type_id")?;
            schemas.version.insert(id, row.try_get("version")?);
            schemas.newest.insert(ty, id);
            schemas.of_type.insert(id, ty);
        }
        Ok(schemas)
    }

    /// Named documents on an older schema than their type's newest (the first `limit` by
    /// name), and how many there are.
    pub async fn outdated_documents(&self, limit: u32) -> Result<(Vec<Outdated>, i64)> {
        let schemas = self.schema_versions().await?;
        let older: Vec<String> = schemas
            .of_type
            .iter()
            .filter(|(id, ty)| schemas.newest.get(*ty) != Some(*id))
            .map(|(id, _)| id.to_string())
            .collect();
        if older.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let filter = |select: &str| {
            let mut sql = Sql::new(select);
            sql.push(
                " from block_document d join block_type t on t.id = d.block_type_id \
                 where d.is_anonymous = 0 and d.block_schema_id in ",
            );
            sql.bind_list(older.iter().cloned());
            sql
        };
        let c = self.collate();
        let mut page = filter(
            "select d.id, d.name, d.block_schema_id, d.block_type_id, t.slug, t.name as type_name",
        );
        page.push(&format!(" order by d.name{c}, d.id limit "))
            .bind_int(limit.into());
        self.count_query();
        let rows = page.query().fetch_all(&self.read).await?;
        self.count_query();
        let total: i64 = filter("select count(*) as n")
            .query()
            .fetch_one(&self.read)
            .await?
            .try_get("n")?;
        let items = rows
            .iter()
            .map(|row| {
                let schema = uuid_col(row, "block_schema_id")?;
                let ty = uuid_col(row, "block_type_id")?;
                let newest = schemas.newest.get(&ty).copied().unwrap_or(schema);
                Ok(Outdated {
                    id: uuid_col(row, "id")?,
                    name: row.try_get("name")?,
                    type_slug: row.try_get("slug")?,
                    type_name: row.try_get("type_name")?,
                    schema_version: schemas.version.get(&schema).cloned().unwrap_or_default(),
                    newest_version: schemas.version.get(&newest).cloned().unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((items, total))
    }

    /// References from a field to a block of a type the field's schema does not take (the
    /// store accepts any block in a reference, as Prefect does): at most `limit` of them.
    pub async fn mistyped_references(&self, limit: u32) -> Result<Vec<MistypedReference>> {
        // The distinct (schema, field, referenced type) combinations: few, whatever the
        // number of documents.
        self.count_query();
        let combos = sqlx::query(
            "select distinct d.block_schema_id, r.name as field, t.slug \
             from block_document_reference r \
             join block_document d on d.id = r.parent_block_document_id \
             join block_document c on c.id = r.reference_block_document_id \
             join block_type t on t.id = c.block_type_id",
        )
        .fetch_all(&self.read)
        .await?;
        let mut fields_of: HashMap<Uuid, Value> = HashMap::new();
        let mut out = Vec::new();
        for row in &combos {
            let schema = uuid_col(row, "block_schema_id")?;
            let field: String = row.try_get("field")?;
            let found: String = row.try_get("slug")?;
            if !fields_of.contains_key(&schema) {
                self.count_query();
                let fields: Value =
                    match sqlx::query("select fields from block_schema where id = $1")
                        .bind(schema.to_string())
                        .fetch_optional(&self.read)
                        .await?
                    {
                        Some(row) => json_col(&row, "fields")?,
                        None => Value::Null,
                    };
                fields_of.insert(schema, fields);
            }
            let expected = field_types(&fields_of[&schema], &field);
            if expected.is_empty() || expected.contains(&found) {
                continue;
            }
            let left = (limit as usize).saturating_sub(out.len());
            if left == 0 {
                break;
            }
            self.count_query();
            let c = self.collate();
            let docs = sqlx::query(&format!(
                "select d.id, d.name from block_document d \
                 join block_document_reference r on r.parent_block_document_id = d.id and r.name = $2 \
                 join block_document c on c.id = r.reference_block_document_id \
                 join block_type t on t.id = c.block_type_id \
                 where d.block_schema_id = $1 and t.slug = $3 order by d.name{c} limit $4"
            ))
            .bind(schema.to_string())
            .bind(&field)
            .bind(&found)
            .bind(left as i64)
            .fetch_all(&self.read)
            .await?;
            for doc in &docs {
                out.push(MistypedReference {
                    id: uuid_col(doc, "id")?,
                    name: doc.try_get("name")?,
                    field: field.clone(),
                    expected: expected.clone(),
                    found: found.clone(),
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::field_types;

    #[test]
    fn a_field_takes_one_type_or_a_list_of_them() {
        let fields = json!({"block_schema_references": {
            "gcp_credentials": {"block_type_slug": "gcp-credentials", "block_schema_checksum": "sha256:x"},
            "either": [{"block_type_slug": "a"}, {"block_type_slug": "b"}],
        }});
        assert_eq!(field_types(&fields, "gcp_credentials"), ["gcp-credentials"]);
        assert_eq!(field_types(&fields, "either"), ["a", "b"]);
        assert!(field_types(&fields, "other").is_empty());
    }
}
