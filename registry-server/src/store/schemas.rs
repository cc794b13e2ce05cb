//! Block schemas: create (with nested child schemas), read, filter, delete.

use std::sync::Arc;

use block_types::catalog::secret_floor;
use block_types::model::{BlockSchema, BlockSchemaCreate, BlockSchemaFilterBody, Page};
use block_types::secret_fields::{
    SecretPath, marked_paths, normalized, secret_fields_of, secret_paths_of, uncovered,
};
use block_types::{DataValidator, EventKind, FieldError, schema_checksum};
use serde_json::{Map, Value};
use sqlx::Row;
use uuid::Uuid;

use super::events::Subject;
use super::filter::push_schema_filter;
use super::rows::SCHEMA_COLUMNS;
use super::rows::TYPE_COLUMNS;
use super::rows::schema_from_row;
use super::sql::Sql;
use super::{Result, Rights, Store, StoreError, json_col, now_micros, to_json};

/// The most schemas one block type may have (every document write of the type reads what
/// they keep secret).
const MAX_SCHEMAS_PER_TYPE: i64 = 200;

/// How deep nested block schemas may go.
const MAX_NESTING: usize = 16;

/// One `{block_type_slug, block_schema_checksum}` entry of `block_schema_references`.
struct ChildReference {
    field: String,
    slug: String,
    checksum: String,
}

fn child_references(fields: &Map<String, Value>) -> Result<Vec<ChildReference>> {
    let mut out = Vec::new();
    let Some(refs) = fields.get("block_schema_references") else {
        return Ok(out);
    };
    let Value::Object(refs) = refs else {
        return Err(StoreError::invalid(
            "fields.block_schema_references",
            "must be an object",
        ));
    };
    for (field, entry) in refs {
        let entries: Vec<&Value> = match entry {
            Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        for e in entries {
            let text = |key: &str| e.get(key).and_then(Value::as_str).map(str::to_owned);
            match (text("block_type_slug"), text("block_schema_checksum")) {
                (Some(slug), Some(checksum)) => out.push(ChildReference {
                    field: field.clone(),
                    slug,
                    checksum,
                }),
                _ => {
                    return Err(StoreError::invalid(
                        format!("fields.block_schema_references.{field}"),
                        "must have block_type_slug and block_schema_checksum strings",
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// The definition that describes the child block of `field` (Prefect's
/// `_get_fields_for_child_schema`): the only `$ref` of the property, or the one whose
/// definition has the child's slug.
fn child_definition(
    fields: &Map<String, Value>,
    field: &str,
    slug: &str,
) -> Option<Map<String, Value>> {
    let definitions = fields.get("definitions")?.as_object()?;
    let property = fields.get("properties")?.get(field)?;
    let mut refs = Vec::new();
    collect_refs(property, &mut refs);
    let pick = |r: &str| {
        definitions
            .get(r.trim_start_matches("#/definitions/"))
            .and_then(Value::as_object)
    };
    if refs.len() == 1 {
        return pick(&refs[0]).cloned();
    }
    refs.iter()
        .filter_map(|r| pick(r))
        .find(|d| d.get("block_type_slug").and_then(Value::as_str) == Some(slug))
        .cloned()
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                out.push(r.clone());
            }
            map.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

impl Store {
    /// Creates a schema, or returns the existing one with the same checksum and version
    /// (`false` = it existed). Nested block schemas named in `block_schema_references` are
    /// created from `definitions` when missing; their block types must exist.
    ///
    /// The checksum ignores `secret_fields` (Prefect's rule), so secrets are checked on
    /// their own: a schema whose `secret_fields` omits a property its JSON Schema marks
    /// secret is invalid; a known (checksum, version) with other `secret_fields` is a
    /// conflict, never the existing row; and only [`Rights::admin`] may register a schema
    /// that keeps fewer values secret than its type's other schemas (or the built-in type
    /// of that slug).
    pub async fn create_block_schema(
        &self,
        body: BlockSchemaCreate,
        rights: Rights,
    ) -> Result<(BlockSchema, bool)> {
        block_types::validate::bounded("version", "Block schema version", &body.version)
            .map_err(|e| StoreError::Invalid(vec![e]))?;
        let fields = Value::Object(body.fields.clone());
        DataValidator::new(&fields).map_err(|e| StoreError::Invalid(vec![e]))?;
        let mut tx = self.write.begin().await?;
        let (id, created) = Box::pin(self.insert_schema(&mut tx, &body, None, 0, rights)).await?;
        tx.commit().await?;
        if created {
            self.feed_committed();
        }
        Ok((self.read_block_schema(id).await?, created))
    }

    /// Inserts a schema inside `tx`, recursing into nested block schemas. `definitions` are
    /// the root schema's, used when a child schema is built from them.
    async fn insert_schema(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        body: &BlockSchemaCreate,
        definitions: Option<&Value>,
        depth: usize,
        rights: Rights,
    ) -> Result<(Uuid, bool)> {
        // Nested schemas are created from `definitions`; a definition that (directly or
        // not) nests itself would recurse forever.
        if depth > MAX_NESTING {
            return Err(StoreError::invalid(
                "fields.block_schema_references",
                format!(
                    "nested block schemas go deeper than {MAX_NESTING} levels (a definition that nests itself?)"
                ),
            ));
        }
        let mut for_checksum = body.fields.clone();
        if let Some(defs) = definitions {
            for_checksum.insert("definitions".into(), defs.clone());
        }
        let checksum = schema_checksum(&Value::Object(for_checksum.clone()));
        self.count_query();
        let slug: Option<String> = sqlx::query_scalar("select slug from block_type where id = $1")
            .bind(body.block_type_id.to_string())
            .fetch_optional(&mut **tx)
            .await?;
        let Some(slug) = slug else {
            return Err(StoreError::NotFound(format!(
                "Block type {} not found.",
                body.block_type_id
            )));
        };
        // The checksum covers the slug the fields name: a schema of one type cannot be
        // registered under another (where a client looking it up by checksum would adopt it).
        if let Some(named) = body.fields.get("block_type_slug").and_then(Value::as_str)
            && named != slug
        {
            return Err(StoreError::invalid(
                "fields.block_type_slug",
                format!(
                    "names the block type '{named}', but block_type_id is the block type '{slug}'"
                ),
            ));
        }
        let listed = secret_fields_of(&Value::Object(body.fields.clone()));
        check_marked_secrets(&for_checksum, &listed)?;
        if let Some(existing) = self
            .same_schema(tx, &checksum, &body.version, &listed)
            .await?
        {
            return Ok((existing, false));
        }
        self.count_query();
        let schemas: i64 =
            sqlx::query_scalar("select count(*) from block_schema where block_type_id = $1")
                .bind(body.block_type_id.to_string())
                .fetch_one(&mut **tx)
                .await?;
        // An admin (and the server registering its catalog) is not held to it, so a `write`
        // token filling a protected type cannot stop a new built-in schema.
        if schemas >= MAX_SCHEMAS_PER_TYPE && !rights.admin {
            return Err(StoreError::invalid(
                "block_type_id",
                format!(
                    "the block type '{slug}' has {MAX_SCHEMAS_PER_TYPE} schemas, the most it may have; delete unused ones first"
                ),
            ));
        }
        if !rights.admin {
            let kept = self
                .type_secret_paths(tx, body.block_type_id, &slug, false)
                .await?;
            let dropped = uncovered(&kept, &listed);
            if !dropped.is_empty() {
                return Err(StoreError::Forbidden(FieldError::new(
                    "fields.secret_fields",
                    format!(
                        "omits {}, which the block type '{slug}' keeps secret; only an admin token may register a schema with fewer secret fields",
                        quoted_list(&dropped)
                    ),
                )));
            }
        }
        let root_definitions = definitions
            .cloned()
            .or_else(|| body.fields.get("definitions").cloned());
        let children = child_references(&body.fields)?;
        let mut child_ids = Vec::new();
        for child in &children {
            self.count_query();
            let child_type: Option<String> =
                sqlx::query_scalar("select id from block_type where slug = $1")
                    .bind(&child.slug)
                    .fetch_optional(&mut **tx)
                    .await?;
            let Some(child_type) = child_type else {
                return Err(StoreError::MissingBlockType(format!(
                    "Cannot create block schema because block type '{}' was not found.Did you forget to register the block type?",
                    child.slug
                )));
            };
            self.count_query();
            let existing: Option<String> = sqlx::query_scalar(
                "select id from block_schema where checksum = $1 order by created desc limit 1",
            )
            .bind(&child.checksum)
            .fetch_optional(&mut **tx)
            .await?;
            let child_id = match existing {
                Some(id) => super::parse_uuid(&id)?,
                None => {
                    let mut child_fields = child_definition(&for_checksum, &child.field, &child.slug)
                        .ok_or_else(|| {
                            StoreError::invalid(
                                format!("fields.block_schema_references.{}", child.field),
                                "names a nested block schema that is neither registered nor defined in definitions",
                            )
                        })?;
                    child_fields.remove("definitions");
                    let child_body = BlockSchemaCreate {
                        fields: child_fields,
                        block_type_id: super::parse_uuid(&child_type)?,
                        capabilities: Vec::new(),
                        version: block_types::model::NON_VERSIONED.to_owned(),
                    };
                    Box::pin(self.insert_schema(
                        tx,
                        &child_body,
                        root_definitions.as_ref(),
                        depth + 1,
                        rights,
                    ))
                    .await?
                    .0
                }
            };
            child_ids.push((child.field.clone(), child_id));
        }
        // Keep the fields as submitted, plus the non-block definitions a child needs.
        let mut stored = body.fields.clone();
        if definitions.is_some()
            && let Some(Value::Object(kept)) = non_block_definitions(&for_checksum)
        {
            stored.insert("definitions".into(), Value::Object(kept));
        }
        let id = Uuid::new_v4();
        let now = now_micros();
        self.count_query();
        // Replicas registering the same schema at once: the first insert wins, the others
        // find its row.
        let inserted = sqlx::query(
            "insert into block_schema (id, created, updated, checksum, fields, capabilities, version, block_type_id) \
             values ($1, $2, $2, $3, $4, $5, $6, $7) on conflict (checksum, version) do nothing",
        )
        .bind(id.to_string())
        .bind(now)
        .bind(&checksum)
        .bind(to_json(&stored))
        .bind(to_json(&body.capabilities))
        .bind(&body.version)
        .bind(body.block_type_id.to_string())
        .execute(&mut **tx)
        .await?;
        if inserted.rows_affected() == 0 {
            let existing = self
                .same_schema(tx, &checksum, &body.version, &listed)
                .await?
                .ok_or_else(|| {
                    StoreError::Conflict(
                        "a concurrent change removed the block schema being registered; retry"
                            .into(),
                    )
                })?;
            return Ok((existing, false));
        }
        let mut capabilities = body.capabilities.clone();
        capabilities.sort();
        capabilities.dedup();
        for capability in capabilities {
            self.count_query();
            sqlx::query(
                "insert into block_schema_capability (block_schema_id, capability) values ($1, $2)",
            )
            .bind(id.to_string())
            .bind(capability)
            .execute(&mut **tx)
            .await?;
        }
        for (field, child_id) in child_ids {
            self.count_query();
            sqlx::query(
                "insert into block_schema_reference (parent_block_schema_id, name, reference_block_schema_id) \
                 values ($1, $2, $3) on conflict do nothing",
            )
            .bind(id.to_string())
            .bind(field)
            .bind(child_id.to_string())
            .execute(&mut **tx)
            .await?;
        }
        let subject = Subject {
            slug: Some(&slug),
            schema: Some(id),
            key: None,
        };
        self.record_event(tx, EventKind::SchemaCreated, subject, rights.token)
            .await?;
        Ok((id, true))
    }

    /// The schema with this checksum and version, if one exists and lists the same secret
    /// fields; one that lists others is a conflict (returning it would let a schema
    /// registered with fewer secrets stand in for this one).
    async fn same_schema(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        checksum: &str,
        version: &str,
        listed: &[SecretPath],
    ) -> Result<Option<Uuid>> {
        self.count_query();
        let existing =
            sqlx::query("select id, fields from block_schema where checksum = $1 and version = $2")
                .bind(checksum)
                .bind(version)
                .fetch_optional(&mut **tx)
                .await?;
        let Some(row) = existing else {
            return Ok(None);
        };
        let fields: Value = json_col(&row, "fields")?;
        let stored = normalized(&secret_fields_of(&fields));
        if stored != normalized(listed) {
            return Err(StoreError::Conflict(format!(
                "a block schema with checksum {checksum} and version {version} exists with other secret_fields ({}); register this one under another version",
                quoted_list(&stored.iter().collect::<Vec<_>>())
            )));
        }
        Ok(Some(super::parse_uuid(&row.try_get::<String, _>("id")?)?))
    }

    /// What the block type keeps secret: the secret paths (listed or marked) of every schema
    /// it has, and of the built-in type with its slug. One query for the schemas' ids; each
    /// schema's paths are computed once and kept (schemas never change).
    ///
    /// `remember` keeps what was computed for later calls; a schema registration does not,
    /// as its transaction may still roll back schemas it created.
    pub(crate) async fn type_secret_paths(
        &self,
        conn: &mut sqlx::AnyConnection,
        block_type_id: Uuid,
        slug: &str,
        remember: bool,
    ) -> Result<Vec<SecretPath>> {
        let ids = self.type_schema_ids(conn, block_type_id).await?;
        self.secret_paths_of_schemas(conn, &ids, slug, remember)
            .await
    }

    /// The ids of the type's schemas.
    pub(crate) async fn type_schema_ids(
        &self,
        conn: &mut sqlx::AnyConnection,
        block_type_id: Uuid,
    ) -> Result<Vec<String>> {
        self.count_query();
        Ok(
            sqlx::query_scalar("select id from block_schema where block_type_id = $1")
                .bind(block_type_id.to_string())
                .fetch_all(&mut *conn)
                .await?,
        )
    }

    /// Every path a document of `schema` keeps sealed: the schema's `secret_fields`, the
    /// properties its JSON Schema marks secret (`writeOnly`, `format: password`), and the
    /// same of its type's other schemas (`ids`, every schema of the type) and of the
    /// built-in type with its slug. Secret fields are the
    /// type's, not the schema's: a schema registered with fewer of them cannot make a
    /// value land unsealed.
    pub(crate) async fn schema_secret_paths(
        &self,
        conn: &mut sqlx::AnyConnection,
        schema: &BlockSchema,
        ids: &[String],
    ) -> Result<Vec<SecretPath>> {
        let slug = schema
            .block_type
            .as_ref()
            .map(|t| t.slug.as_str())
            .ok_or_else(|| StoreError::Corrupt("schema without type".into()))?;
        // The schema's own list first, so its shape (`a.*` masks leaf by leaf) is kept.
        let mut paths = secret_paths_of(&schema.fields);
        paths.extend(self.secret_paths_of_schemas(conn, ids, slug, true).await?);
        Ok(normalized(&paths))
    }

    /// The schema with this id and what its type keeps secret
    /// ([`Store::type_secret_paths`]), read in one query: a create's reads before it
    /// writes.
    pub(crate) async fn schema_and_secret_paths(
        &self,
        id: Uuid,
    ) -> Result<(BlockSchema, Vec<SecretPath>)> {
        let mut conn = self.read.acquire().await?;
        self.count_query();
        // One row for each schema of the type, each carrying the schema asked for.
        let rows = sqlx::query(&format!(
            "select {SCHEMA_COLUMNS}, {TYPE_COLUMNS}, o.id as o_id from block_schema s \
             join block_type t on t.id = s.block_type_id \
             join block_schema o on o.block_type_id = s.block_type_id where s.id = $1"
        ))
        .bind(id.to_string())
        .fetch_all(&mut *conn)
        .await?;
        let first = rows
            .first()
            .ok_or_else(|| StoreError::NotFound("Block schema not found".to_owned()))?;
        let schema = schema_from_row(first)?;
        let siblings = rows
            .iter()
            .map(|row| row.try_get::<String, _>("o_id"))
            .collect::<Result<Vec<_>, _>>()?;
        let paths = self
            .schema_secret_paths(&mut conn, &schema, &siblings)
            .await?;
        Ok((schema, paths))
    }

    /// What the type `slug`'s schemas `ids` keep secret, with the type's floor.
    async fn secret_paths_of_schemas(
        &self,
        conn: &mut sqlx::AnyConnection,
        ids: &[String],
        slug: &str,
        remember: bool,
    ) -> Result<Vec<SecretPath>> {
        let mut paths: Vec<SecretPath> = secret_floor(slug).to_vec();
        let mut missing = Vec::new();
        {
            let known = self.read_lock(&self.schema_secrets);
            for id in ids {
                match known.get(&super::parse_uuid(id)?) {
                    Some(found) => paths.extend(found.iter().cloned()),
                    None => missing.push(id.clone()),
                }
            }
        }
        // Each schema not seen yet, read through the same connection (inside a write, the
        // transaction's): a write never waits for a second connection.
        for id in missing {
            self.count_query();
            let fields: String =
                sqlx::query_scalar("select fields from block_schema where id = $1")
                    .bind(&id)
                    .fetch_one(&mut *conn)
                    .await?;
            let fields: Value = serde_json::from_str(&fields)
                .map_err(|e| StoreError::Corrupt(format!("block schema fields: {e}")))?;
            let found = normalized(&secret_paths_of(&fields));
            paths.extend(found.iter().cloned());
            if remember {
                self.write_lock(&self.schema_secrets)
                    .insert(super::parse_uuid(&id)?, Arc::new(found));
            }
        }
        Ok(normalized(&paths))
    }

    /// The schema with this id.
    pub async fn read_block_schema(&self, id: Uuid) -> Result<BlockSchema> {
        self.schema_by_id(&self.read, id).await
    }

    /// The schema with this id, read through `executor` (a pool, or a transaction that
    /// must not wait for a second connection).
    pub(crate) async fn schema_by_id<'e, E>(&self, executor: E, id: Uuid) -> Result<BlockSchema>
    where
        E: sqlx::Executor<'e, Database = sqlx::Any>,
    {
        self.count_query();
        let row = sqlx::query(&format!(
            "select {SCHEMA_COLUMNS}, {TYPE_COLUMNS} from block_schema s join block_type t on t.id = s.block_type_id where s.id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(executor)
        .await?
        .ok_or_else(|| StoreError::NotFound("Block schema not found".to_owned()))?;
        schema_from_row(&row)
    }

    /// The schema with this checksum and version; without a version, the newest one.
    pub async fn read_block_schema_by_checksum(
        &self,
        checksum: &str,
        version: Option<&str>,
    ) -> Result<BlockSchema> {
        let mut sql = Sql::new(&format!(
            "select {SCHEMA_COLUMNS}, {TYPE_COLUMNS} from block_schema s join block_type t on t.id = s.block_type_id where s.checksum = "
        ));
        sql.bind_text(checksum);
        if let Some(version) = version {
            sql.push(" and s.version = ").bind_text(version);
        }
        sql.push(" order by s.created desc limit 1");
        self.count_query();
        let row = sql
            .query()
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| StoreError::NotFound("Block schema not found".to_owned()))?;
        schema_from_row(&row)
    }

    /// Schemas matching the filter, newest first.
    pub async fn filter_block_schemas(
        &self,
        body: &BlockSchemaFilterBody,
    ) -> Result<Vec<BlockSchema>> {
        super::filter::check_filter_lists(&super::filter::schema_filter_lists(
            body.block_schemas.as_ref(),
        ))?;
        let page =
            Page::resolve(body.limit, body.offset).map_err(|e| StoreError::Invalid(vec![e]))?;
        let mut sql = Sql::new(&format!(
            "select {SCHEMA_COLUMNS}, {TYPE_COLUMNS} from block_schema s join block_type t on t.id = s.block_type_id where 1 = 1"
        ));
        if let Some(filter) = &body.block_schemas {
            push_schema_filter(&mut sql, filter, "s");
        }
        sql.push(" order by s.created desc, s.id limit ")
            .bind_int(page.limit.into());
        sql.push(" offset ").bind_int(page.offset.into());
        self.count_query();
        let rows = sql.query().fetch_all(&self.read).await?;
        rows.iter().map(schema_from_row).collect()
    }

    /// Every capability of every schema, each once.
    pub async fn block_capabilities(&self) -> Result<Vec<String>> {
        self.count_query();
        Ok(sqlx::query_scalar(&format!(
            "select capability from block_schema_capability group by capability order by capability{}",
            self.collate()
        ))
        .fetch_all(&self.read)
        .await?)
    }

    /// Deletes a schema. Refused for protected types' schemas, while documents or their
    /// versions use it, and while another schema nests it.
    pub async fn delete_block_schema(&self, id: Uuid) -> Result<()> {
        self.delete_block_schema_by(id, None).await
    }

    /// [`Store::delete_block_schema`] by `author` (a token id), for the change feed.
    pub async fn delete_block_schema_by(&self, id: Uuid, author: Option<Uuid>) -> Result<()> {
        let schema = self.read_block_schema(id).await?;
        if schema.block_type.as_ref().is_some_and(|t| t.is_protected) {
            return Err(StoreError::Protected(
                "Block schemas for protected block types cannot be deleted.".to_owned(),
            ));
        }
        let mut tx = self.write.begin().await?;
        self.refuse_if_used(
            &mut tx,
            "select distinct t.slug || '/' || d.name from block_document d join block_type t on t.id = d.block_type_id \
             where d.block_schema_id = $1 or d.id in (select block_document_id from block_document_version where block_schema_id = $1) \
             order by 1 limit 20",
            id,
            "the block schema is used by block documents",
        )
        .await?;
        self.refuse_if_used(
            &mut tx,
            "select distinct t.slug || ' ' || p.checksum from block_schema_reference r join block_schema p on p.id = r.parent_block_schema_id \
             join block_type t on t.id = p.block_type_id where r.reference_block_schema_id = $1 order by 1",
            id,
            "the block schema is nested in other block schemas",
        )
        .await?;
        self.count_query();
        sqlx::query("delete from block_schema where id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        let subject = Subject {
            slug: schema.block_type.as_ref().map(|t| t.slug.as_str()),
            schema: Some(id),
            key: None,
        };
        self.record_event(&mut tx, EventKind::SchemaDeleted, subject, author)
            .await?;
        tx.commit().await?;
        self.feed_committed();
        self.write_lock(&self.validators).remove(&id);
        self.write_lock(&self.schemas).remove(&id);
        self.write_lock(&self.schema_secrets).remove(&id);
        Ok(())
    }
}

/// A schema whose `secret_fields` omits a property its own JSON Schema marks secret would
/// store that value in clear: refused, naming the property.
fn check_marked_secrets(fields: &Map<String, Value>, listed: &[SecretPath]) -> Result<()> {
    // What the schema itself marks (and its nested blocks list); not the catalog's floors
    // for nested built-in blocks, which older collection versions may not list: those are
    // sealed anyway, as the type's.
    let marked = marked_paths(&Value::Object(fields.clone()), false);
    let missing = uncovered(&marked, listed);
    if missing.is_empty() {
        return Ok(());
    }
    Err(StoreError::invalid(
        "fields.secret_fields",
        format!(
            "must list {}: the schema marks it secret (writeOnly or format password)",
            quoted_list(&missing)
        ),
    ))
}

/// `'a', 'b.*'` (paths are schema text, never values).
fn quoted_list(paths: &[&SecretPath]) -> String {
    let quoted: Vec<String> = paths.iter().map(|p| format!("'{p}'")).collect();
    if quoted.is_empty() {
        "none".to_owned()
    } else {
        quoted.join(", ")
    }
}

/// The non-block definitions that `fields` reaches (as the checksum keeps them).
fn non_block_definitions(fields: &Map<String, Value>) -> Option<Value> {
    let canonical_defs = fields.get("definitions")?.as_object()?;
    let mut refs = Vec::new();
    collect_refs(&Value::Object(fields.clone()), &mut refs);
    let mut kept = Map::new();
    let mut queue = refs;
    while let Some(r) = queue.pop() {
        let key = r.trim_start_matches("#/definitions/").to_owned();
        if kept.contains_key(&key) {
            continue;
        }
        if let Some(def) = canonical_defs.get(&key) {
            let is_block = def.get("block_type_slug").is_some_and(|s| !s.is_null());
            if !is_block && def.as_object().is_some_and(|d| !d.is_empty()) {
                collect_refs(def, &mut queue);
                kept.insert(key, def.clone());
            }
        }
    }
    (!kept.is_empty()).then_some(Value::Object(kept))
}
