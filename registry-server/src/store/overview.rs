//! What the console's dashboard shows of the whole store: the latest changes, documents on
//! an older schema than their type's newest, and references to a block of a type the field
//! does not take. Each answer is bounded (rows returned, rows counted, references looked
//! at) and read through indexes, so the page stays quick with a million documents.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row;
use uuid::Uuid;

use super::sql::Sql;
use super::{Result, Store, json_col, to_time, uuid_col};

/// Counts of documents needing a look stop here (the page says "at least").
pub const COUNT_CAP: i64 = 10_000;

/// References looked at per schema field when looking for mistyped ones.
pub const SCAN_CAP: i64 = 100_000;

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
             where d.is_anonymous = 0 order by d.updated desc, d.id desc limit $1",
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

    /// Named documents on an older schema than their type's newest (at most `limit`, by
    /// name), and how many there are, counted up to [`COUNT_CAP`] (a count at the cap means
    /// "at least"). Only documents on an older schema are read, through the index by schema.
    pub async fn outdated_documents(&self, limit: u32) -> Result<(Vec<Outdated>, i64)> {
        // A schema is older when its type has one registered later (or at the same instant
        // with a smaller id: the one the console's forms choose as newest).
        const OLDER: &str = "select s.id from block_schema s where exists (\
             select 1 from block_schema n where n.block_type_id = s.block_type_id \
             and (n.created > s.created or (n.created = s.created and n.id < s.id)))";
        self.count_query();
        let rows = sqlx::query(&format!(
            "select d.id, d.name, t.slug, t.name as type_name, s.version as schema_version, \
             (select n.version from block_schema n where n.block_type_id = d.block_type_id \
              order by n.created desc, n.id limit 1) as newest_version \
             from block_document d join block_type t on t.id = d.block_type_id \
             join block_schema s on s.id = d.block_schema_id \
             where d.is_anonymous = 0 and d.block_schema_id in ({OLDER}) limit $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        let mut items = rows
            .iter()
            .map(|row| {
                Ok(Outdated {
                    id: uuid_col(row, "id")?,
                    name: row.try_get("name")?,
                    type_slug: row.try_get("slug")?,
                    type_name: row.try_get("type_name")?,
                    schema_version: row.try_get("schema_version")?,
                    newest_version: row
                        .try_get::<Option<String>, _>("newest_version")?
                        .unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        items.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        let total = if items.len() < limit as usize {
            items.len() as i64
        } else {
            self.count_query();
            sqlx::query(&format!(
                "select count(*) as n from (select 1 from block_document d \
                 where d.is_anonymous = 0 and d.block_schema_id in ({OLDER}) limit $1) c"
            ))
            .bind(COUNT_CAP)
            .fetch_one(&self.read)
            .await?
            .try_get("n")?
        };
        Ok((items, total))
    }

    /// References from a field to a block of a type the field's schema does not take (the
    /// store accepts any block in a reference, as Prefect does): at most `limit`, looking
    /// at no more than [`SCAN_CAP`] references of each schema field that names its types.
    pub async fn mistyped_references(&self, limit: u32) -> Result<Vec<MistypedReference>> {
        // The schemas that say which types a field takes: few, whatever the number of
        // documents.
        self.count_query();
        let schemas = sqlx::query(
            "select id, fields from block_schema where fields like '%block_type_slug%'",
        )
        .fetch_all(&self.read)
        .await?;
        let mut out = Vec::new();
        for row in &schemas {
            let schema = uuid_col(row, "id")?;
            let fields: Value = json_col(row, "fields")?;
            let Some(Value::Object(refs)) = fields.get("block_schema_references") else {
                continue;
            };
            for field in refs.keys() {
                let expected = field_types(&fields, field);
                let left = (limit as usize).saturating_sub(out.len());
                if expected.is_empty() || left == 0 {
                    continue;
                }
                let mut sql = Sql::new(
                    "select p.id, p.name, t.slug from (select r.parent_block_document_id, r.reference_block_document_id \
                     from block_document_reference r join block_document d on d.id = r.parent_block_document_id \
                     where d.block_schema_id = ",
                );
                sql.bind_text(schema.to_string())
                    .push(" and r.name = ")
                    .bind_text(field.clone())
                    .push(" limit ")
                    .bind_int(SCAN_CAP)
                    .push(
                        ") x join block_document p on p.id = x.parent_block_document_id \
                         join block_document c on c.id = x.reference_block_document_id \
                         join block_type t on t.id = c.block_type_id where t.slug not in ",
                    );
                sql.bind_list(expected.iter().cloned());
                sql.push(" limit ").bind_int(left as i64);
                self.count_query();
                for doc in sql.query().fetch_all(&self.read).await? {
                    out.push(MistypedReference {
                        id: uuid_col(&doc, "id")?,
                        name: doc.try_get("name")?,
                        field: field.clone(),
                        expected: expected.clone(),
                        found: doc.try_get("slug")?,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.field.cmp(&b.field)));
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
