//! Block documents: create, update (merge, secret echoes, schema moves, optimistic
//! concurrency), delete, resolved reads, filters, history and rollback.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use block_types::model::{
    BlockDocument, BlockDocumentCountBody, BlockDocumentCreate, BlockDocumentFilter,
    BlockDocumentFilterBody, BlockDocumentReference, BlockDocumentSort, BlockDocumentUpdate,
    BlockSchema, BlockSchemaFilter, BlockType, BlockTypeFilter, EqBool, Page,
    ReferencedBlockDocument,
};
use block_types::secret_fields::{
    SecretPath, normalized, obfuscate, restore, secret_fields_of, secret_locations, secret_paths_of,
};
use block_types::{EventKind, FieldError, references};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::grants::Reach;
use super::schemas::{push_combined, push_schema_filter};
use super::sql::{
    Condition, Sql, check_filter_lists, document_filter_lists, schema_filter_lists,
    type_filter_lists,
};
use super::tree_cache::{self, TreeKey};
use super::types::{like_pattern, push_type_filter};
use super::{
    Backend, Result, Rights, Store, StoreError, json_col, now_micros, parse_uuid, to_json, to_time,
    uuid_col,
};
use crate::crypto::{DataKey, SealedField, open_secrets, seal_secrets};

/// How deep a reference tree is followed on read (as Prefect).
const MAX_DEPTH: i64 = 50;
/// What the tree query selects of each document of a tree.
const TREE_COLUMNS: &str = ") select tree.parent_id, tree.ref_name, d.id as d_id, d.created as d_created, d.updated as d_updated, \
     d.name as d_name, d.version as d_version, d.is_anonymous as d_is_anonymous, d.block_type_name as d_block_type_name, \
     v.data as v_data, v.secrets as v_secrets, d.block_schema_id as d_block_schema_id, \
     t.updated as t_updated";
/// Documents one [`Store::import_block_documents`] call writes at most.
pub const MAX_IMPORT: usize = 10_000;

/// One stored version of a document.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VersionInfo {
    /// Version number, from 1.
    pub version: i64,
    /// When it was written.
    pub created: DateTime<Utc>,
    /// The schema its data follows.
    pub block_schema_id: Uuid,
    /// The data key its secrets are sealed under (none when it has no secret value).
    pub key_id: Option<Uuid>,
    /// Its references: field → document id.
    pub references: BTreeMap<String, Uuid>,
    /// The token that wrote it (none for versions written before authors were recorded,
    /// and for the server's own writes).
    pub token_id: Option<Uuid>,
}

/// What a write produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The document.
    pub id: Uuid,
    /// Its version after the write.
    pub version: i64,
    /// Whether anything was written (a merge update without data writes nothing).
    pub changed: bool,
}

/// A resolved document with its entity tag.
#[derive(Debug, Clone)]
pub struct Tagged {
    /// The document, references resolved.
    pub document: BlockDocument,
    /// A strong entity tag (quoted) over the versions of every document in the tree and
    /// their types: it changes when the document or anything it references changes.
    pub etag: String,
    /// The document's own current version.
    pub version: i64,
}

/// The entity tag of the tree under `root`: a digest of (id, version, type change time) of
/// every document reachable from it.
fn tree_etag(tree: &Tree, root: Uuid) -> String {
    use sha2::{Digest as _, Sha256};
    let mut seen = std::collections::BTreeSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if seen.insert(id)
            && let Some(children) = tree.edges.get(&id)
        {
            stack.extend(children.iter().map(|(_, child)| *child));
        }
    }
    let mut hash = Sha256::new();
    hash.update(root.as_bytes());
    for id in seen {
        if let Some(doc) = tree.docs.get(&id) {
            hash.update(id.as_bytes());
            hash.update(doc.version.to_le_bytes());
            hash.update(doc.type_updated.to_le_bytes());
        }
    }
    format!("\"{}\"", &hex::encode(hash.finalize())[..32])
}

/// A document row of a resolved tree.
struct TreeDoc {
    id: Uuid,
    version: i64,
    type_updated: i64,
    created: i64,
    updated: i64,
    name: String,
    is_anonymous: bool,
    block_type_name: Option<String>,
    data: Map<String, Value>,
    secrets: Vec<SealedField>,
    schema: Arc<BlockSchema>,
    /// The stored size of its plain data, in bytes.
    plain_bytes: usize,
    /// The stored size of its sealed secrets, in bytes.
    sealed_bytes: usize,
}

impl TreeDoc {
    /// The document as answered, with `data` and `refs` already resolved.
    fn document(
        &self,
        data: Map<String, Value>,
        refs: BTreeMap<String, BlockDocumentReference>,
        unreadable: bool,
    ) -> BlockDocument {
        BlockDocument {
            id: self.id,
            created: to_time(self.created),
            updated: to_time(self.updated),
            name: Some(self.name.clone()),
            data,
            block_schema_id: self.schema.id,
            block_schema: Some((*self.schema).clone()),
            block_type_id: self.schema.block_type_id,
            block_type_name: self.block_type_name.clone(),
            block_type: self.schema.block_type.clone(),
            block_document_references: refs,
            is_anonymous: self.is_anonymous,
            unreadable,
        }
    }

    /// About how many bytes it adds to an answer: a masked secret costs the mask, so what
    /// a `read` token is refused never depends on a secret's size.
    fn cost(&self, include_secrets: bool) -> usize {
        self.plain_bytes
            + if include_secrets {
                self.sealed_bytes
            } else {
                16 * self.secrets.len()
            }
    }
}

/// The documents and reference edges of one or more trees, from one query.
pub(crate) struct Tree {
    docs: HashMap<Uuid, TreeDoc>,
    /// parent → [(field, child)], in field order.
    edges: HashMap<Uuid, Vec<(String, Uuid)>>,
}

/// A loaded tree as the read cache keeps it: with the document a read named and its
/// entity tag.
pub(crate) struct CachedTree {
    tree: Tree,
    root: Uuid,
    etag: String,
}

impl std::fmt::Debug for CachedTree {
    /// The root and the documents' ids: never their data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedTree")
            .field("root", &self.root)
            .field("documents", &self.tree.docs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What a version write needs: the plain data (secrets in clear, no references), the
/// references, and the schema.
struct NewVersion<'a> {
    data: Map<String, Value>,
    refs: Vec<(String, Uuid)>,
    schema: &'a BlockSchema,
    /// Sealed values of an earlier version this one keeps: they stay sealed whatever the
    /// type's schemas say now, and were bounded when they were written.
    kept: Vec<Vec<String>>,
    /// What the schema's type keeps secret ([`Store::secret_paths`]), when the caller has
    /// it already; else it is read inside the write.
    paths: Option<Vec<SecretPath>>,
    /// The token writing it.
    author: Option<Uuid>,
}

/// A document row about to be inserted with its first version.
struct NewDocument {
    id: Uuid,
    name: String,
    is_anonymous: bool,
    type_name: String,
}

/// A stored version, opened: plain data with secrets in clear, references, schema, and
/// where the sealed values sat.
struct OpenedVersion {
    data: Map<String, Value>,
    refs: Vec<(String, Uuid)>,
    schema_id: Uuid,
    sealed: Vec<Vec<String>>,
}

/// The sealed locations of the current version that an update keeps without the writer
/// sending their values: under a top-level field a merge leaves out, or echoed back as
/// `"********"` (at the location, above it, or anywhere below it).
fn surviving_secrets(
    request: &Map<String, Value>,
    merge: bool,
    sealed: &[Vec<String>],
) -> Vec<Vec<String>> {
    fn has_echo(value: &Value) -> bool {
        match value {
            Value::String(s) => s == block_types::OBFUSCATED,
            Value::Object(map) => map.values().any(has_echo),
            Value::Array(items) => items.iter().any(has_echo),
            _ => false,
        }
    }
    sealed
        .iter()
        .filter(|path| {
            let Some(first) = path.first() else {
                return false;
            };
            let Some(mut value) = request.get(first) else {
                return merge;
            };
            for key in &path[1..] {
                if value.as_str() == Some(block_types::OBFUSCATED) {
                    return true;
                }
                match value.get(key) {
                    Some(next) => value = next,
                    // Sent without this part: a replace of the field drops it.
                    None => return false,
                }
            }
            has_echo(value)
        })
        .cloned()
        .collect()
}

/// What a read masks: the schema's secret paths, plus every value that was sealed (a value
/// the type keeps secret beyond this schema's own list stays masked too).
fn mask_paths(fields: &Value, sealed: impl IntoIterator<Item = Vec<String>>) -> Vec<SecretPath> {
    let mut paths = secret_fields_of(fields);
    for segments in sealed {
        let path = SecretPath {
            segments,
            wildcard: false,
        };
        if !paths.iter().any(|p| p.covers(&path)) {
            paths.push(path);
        }
    }
    paths
}

/// Splits `$ref`s out of request data; a malformed one is a bad reference naming its field.
fn split_data_references(
    data: Map<String, Value>,
) -> Result<(Map<String, Value>, references::References)> {
    references::split_references(data).map_err(|e| {
        let field = e.field().to_owned();
        StoreError::BadReference(FieldError::new(format!("data.{field}"), e.to_string()))
    })
}

/// A `block_schema_id` that names no schema is bad input, not a missing resource.
fn unknown_schema_is_invalid(e: StoreError) -> StoreError {
    match e {
        StoreError::NotFound(_) => {
            StoreError::invalid("block_schema_id", "no block schema has this id")
        }
        other => other,
    }
}

/// A conflict when the caller expected another version.
fn check_expected(expected: Option<i64>, actual: i64) -> Result<()> {
    match expected {
        Some(expected) if expected != actual => {
            Err(StoreError::VersionConflict { expected, actual })
        }
        _ => Ok(()),
    }
}

/// An error about the `i`th document of an import, its field named as `documents[i].…`.
fn within_document(i: usize, e: StoreError) -> StoreError {
    let name = |f: FieldError| FieldError::new(format!("documents[{i}].{}", f.field), f.message);
    match e {
        StoreError::Invalid(errors) => StoreError::Invalid(errors.into_iter().map(name).collect()),
        StoreError::BadReference(f) => StoreError::BadReference(name(f)),
        StoreError::AlreadyExists(m) => StoreError::AlreadyExists(format!("documents[{i}]: {m}")),
        StoreError::Cycle(m) => StoreError::Cycle(format!("documents[{i}]: {m}")),
        other => other,
    }
}

fn not_found() -> StoreError {
    StoreError::NotFound("Block document not found".to_owned())
}

impl Store {
    /// Creates a document. The data is validated against its schema, `$ref`s must point to
    /// existing documents, secrets are sealed. Returns the document with secrets masked.
    pub async fn create_block_document(&self, body: BlockDocumentCreate) -> Result<BlockDocument> {
        self.create_block_document_by(body, None).await
    }

    /// [`Store::create_block_document`], recording `author` (a token id) as the writer of
    /// its first version.
    pub async fn create_block_document_by(
        &self,
        body: BlockDocumentCreate,
        author: Option<Uuid>,
    ) -> Result<BlockDocument> {
        body.validate().map_err(|e| StoreError::Invalid(vec![e]))?;
        let id = Uuid::new_v4();
        let name = match &body.name {
            Some(name) => name.clone(),
            None => format!("anonymous-{}", Uuid::new_v4()),
        };
        let (data, refs) = split_data_references(body.data)?;
        let schema = self
            .read_block_schema(body.block_schema_id)
            .await
            .map_err(unknown_schema_is_invalid)?;
        if schema.block_type_id != body.block_type_id {
            return Err(StoreError::invalid(
                "block_schema_id",
                "the block schema belongs to another block type than block_type_id",
            ));
        }
        let block_type = schema
            .block_type
            .clone()
            .ok_or_else(|| StoreError::Corrupt("schema without type".into()))?;
        self.validate_data(&schema, &data, &refs)?;
        let document = NewDocument {
            id,
            name,
            is_anonymous: body.is_anonymous,
            type_name: block_type.name,
        };
        let version = NewVersion {
            data,
            refs,
            schema: &schema,
            kept: Vec::new(),
            paths: None,
            author,
        };
        self.insert_document(document, version).await?;
        self.read_block_document(id, false).await
    }

    /// Creates many documents in one transaction, all or none: each is checked, validated
    /// and sealed as [`Store::create_block_document`] does it, and may reference documents
    /// written earlier in the same call. For imports and for building a large store
    /// quickly; at most [`MAX_IMPORT`] documents a call. Returns their ids, in order.
    pub async fn import_block_documents(
        &self,
        bodies: Vec<BlockDocumentCreate>,
        author: Option<Uuid>,
    ) -> Result<Vec<Uuid>> {
        if bodies.len() > MAX_IMPORT {
            return Err(StoreError::invalid(
                "documents",
                format!("at most {MAX_IMPORT} documents may be imported at once"),
            ));
        }
        if bodies.is_empty() {
            return Ok(Vec::new());
        }
        let mut schemas: HashMap<Uuid, BlockSchema> = HashMap::new();
        let mut prepared = Vec::with_capacity(bodies.len());
        for (i, body) in bodies.into_iter().enumerate() {
            let at = |e: FieldError| {
                StoreError::Invalid(vec![FieldError::new(
                    format!("documents[{i}].{}", e.field),
                    e.message,
                )])
            };
            let within = |e: StoreError| within_document(i, e);
            body.validate().map_err(at)?;
            let (data, refs) = split_data_references(body.data).map_err(within)?;
            if !schemas.contains_key(&body.block_schema_id) {
                let schema = self
                    .read_block_schema(body.block_schema_id)
                    .await
                    .map_err(unknown_schema_is_invalid)?;
                schemas.insert(schema.id, schema);
            }
            let schema = &schemas[&body.block_schema_id];
            if schema.block_type_id != body.block_type_id {
                return Err(at(FieldError::new(
                    "block_schema_id",
                    "the block schema belongs to another block type than block_type_id",
                )));
            }
            self.validate_data(schema, &data, &refs).map_err(within)?;
            let type_name = schema
                .block_type
                .as_ref()
                .map(|t| t.name.clone())
                .ok_or_else(|| StoreError::Corrupt("schema without type".into()))?;
            let id = Uuid::new_v4();
            let document = NewDocument {
                id,
                name: body
                    .name
                    .unwrap_or_else(|| format!("anonymous-{}", Uuid::new_v4())),
                is_anonymous: body.is_anonymous,
                type_name,
            };
            prepared.push((document, data, refs, body.block_schema_id));
        }
        let mut ids = Vec::with_capacity(prepared.len());
        let mut worn = Vec::new();
        let mut tx = self.write.begin().await?;
        // A create takes the reference-graph lock before the data key; with many documents
        // in one transaction a later one would take it (or upgrade its share lock on the
        // key to refill it) after an earlier one's, so an import takes it first, whatever
        // it holds: imports run one at a time, in the order creates use.
        self.lock_reference_graph(&mut tx).await?;
        for (i, (document, data, refs, schema_id)) in prepared.into_iter().enumerate() {
            ids.push(document.id);
            let version = NewVersion {
                data,
                refs,
                schema: &schemas[&schema_id],
                kept: Vec::new(),
                paths: None,
                author,
            };
            worn.extend(
                self.insert_document_in(&mut tx, document, version)
                    .await
                    .map_err(|e| within_document(i, e))?,
            );
        }
        self.announce_change(&mut tx, &ids).await?;
        let change = self.changing(&ids);
        let committed = tx.commit().await;
        drop(change);
        committed?;
        self.feed_committed();
        for (key, used) in worn {
            self.after_refill(key, used).await;
        }
        Ok(ids)
    }

    /// A new document `name` equal to `id`'s current version: data, references, schema and
    /// secrets, which are copied sealed-to-sealed on the server (a value sealed in the
    /// original stays sealed in the copy, whatever the type's schemas say now). Written by
    /// `author`.
    pub async fn duplicate_block_document(
        &self,
        id: Uuid,
        name: &str,
        author: Option<Uuid>,
    ) -> Result<BlockDocument> {
        let check = BlockDocumentCreate {
            name: Some(name.to_owned()),
            data: Map::new(),
            block_schema_id: Uuid::nil(),
            block_type_id: Uuid::nil(),
            is_anonymous: false,
        };
        check.validate().map_err(|e| StoreError::Invalid(vec![e]))?;
        let opened = {
            let mut tx = self.read.begin().await?;
            self.count_query();
            let current: i64 =
                sqlx::query_scalar("select version from block_document where id = $1")
                    .bind(id.to_string())
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(not_found)?;
            self.open_version(&mut tx, id, current).await?
        };
        let OpenedVersion {
            data,
            refs,
            schema_id,
            sealed,
        } = opened;
        let schema = self.read_block_schema(schema_id).await?;
        let block_type = schema
            .block_type
            .clone()
            .ok_or_else(|| StoreError::Corrupt("schema without type".into()))?;
        self.validate_data_without(&schema, &data, &refs, &sealed)?;
        let copy = Uuid::new_v4();
        let document = NewDocument {
            id: copy,
            name: name.to_owned(),
            is_anonymous: false,
            type_name: block_type.name,
        };
        let version = NewVersion {
            data,
            refs,
            schema: &schema,
            kept: sealed,
            paths: None,
            author,
        };
        self.insert_document(document, version).await?;
        self.read_block_document(copy, false).await
    }

    /// Inserts a new document and its first version in one transaction (on SQLite, a
    /// savepoint in the group commit's transaction).
    async fn insert_document(&self, document: NewDocument, version: NewVersion<'_>) -> Result<()> {
        // A new document changes no tree, but the counts per type.
        let id = document.id;
        let worn = match &self.groups {
            Some(groups) => {
                let mut slot = groups.write().await?;
                let mut tx = slot.savepoint().await?;
                let worn = self.insert_document_in(&mut tx, document, version).await?;
                tx.commit().await?;
                let change = self.changing(&[id]);
                let committed = slot.commit().await;
                drop(change);
                committed?;
                self.feed_committed();
                worn
            }
            None => {
                let mut tx = self.write.begin().await?;
                let worn = self.insert_document_in(&mut tx, document, version).await?;
                self.announce_change(&mut tx, &[id]).await?;
                let change = self.changing(&[id]);
                let committed = tx.commit().await;
                drop(change);
                committed?;
                self.feed_committed();
                worn
            }
        };
        if let Some((key, used)) = worn {
            self.after_refill(key, used).await;
        }
        Ok(())
    }

    async fn insert_document_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        document: NewDocument,
        version: NewVersion<'_>,
    ) -> Result<Option<(Uuid, i64)>> {
        let NewDocument {
            id,
            name,
            is_anonymous,
            type_name,
        } = document;
        let schema = version.schema;
        let now = now_micros();
        self.count_query();
        let inserted = sqlx::query(
            "insert into block_document (id, created, updated, name, is_anonymous, block_type_id, block_type_name, block_schema_id, version) \
             values ($1, $2, $2, $3, $4, $5, $6, $7, 1)",
        )
        .bind(id.to_string())
        .bind(now)
        .bind(&name)
        .bind(i64::from(is_anonymous))
        .bind(schema.block_type_id.to_string())
        .bind(&type_name)
        .bind(schema.id.to_string())
        .execute(&mut **tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if StoreError::is_unique_violation(&e) => {
                return Err(StoreError::AlreadyExists("Block already exists".to_owned()));
            }
            Err(e) => return Err(e.into()),
        }
        self.check_failpoint("create_after_document")?;
        let author = version.author;
        let worn = self.write_version(tx, id, 1, version).await?;
        self.record_document_event(tx, EventKind::DocumentCreated, id, author)
            .await?;
        self.check_failpoint("create_before_commit")?;
        Ok(worn)
    }

    fn validate_data(
        &self,
        schema: &BlockSchema,
        data: &Map<String, Value>,
        refs: &[(String, Uuid)],
    ) -> Result<()> {
        self.validate_data_without(schema, data, refs, &[])
    }

    /// [`Self::validate_data`] without the values at `kept` (stored secrets the write keeps,
    /// validated when they were written): no answer depends on a secret's value.
    fn validate_data_without(
        &self,
        schema: &BlockSchema,
        data: &Map<String, Value>,
        refs: &[(String, Uuid)],
        kept: &[Vec<String>],
    ) -> Result<()> {
        let validator = self.validator(schema.id, &schema.fields)?;
        let ref_fields: Vec<&str> = refs.iter().map(|(f, _)| f.as_str()).collect();
        validator
            .validate_without(data, &ref_fields, kept)
            .map_err(|errors| {
                StoreError::Invalid(errors.into_iter().map(|e| e.prefixed("data")).collect())
            })
    }

    /// Inside a write: checks the references, seals the secrets and appends version
    /// `number`, then replaces the document's reference rows and prunes old versions.
    /// Returns the data key used and its encryption count, for the rotation check.
    async fn write_version(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id: Uuid,
        number: i64,
        version: NewVersion<'_>,
    ) -> Result<Option<(Uuid, i64)>> {
        let NewVersion {
            mut data,
            refs,
            schema,
            kept,
            paths,
            author,
        } = version;
        let schema_id = schema.id;
        self.check_references(tx, id, &refs).await?;
        let mut paths = match paths {
            Some(paths) => paths,
            None => self.secret_paths(tx, schema).await?,
        };
        // Once sealed, a kept value stays sealed (a schema deleted since cannot unseal it).
        paths.extend(kept.iter().map(|segments| SecretPath {
            segments: segments.clone(),
            wildcard: false,
        }));
        let locations = secret_locations(&data, &paths);
        if locations.len() > MAX_SEALED_VALUES {
            return Err(StoreError::invalid(
                "data",
                format!("may hold at most {MAX_SEALED_VALUES} secret values"),
            ));
        }
        // Each new secret value is bounded (kept ones were when they were written), so the
        // sealed part of a document is bounded without measuring what the writer cannot read.
        for location in &locations {
            if kept.iter().any(|k| location.starts_with(k)) {
                continue;
            }
            let size = block_types::secret_fields::get_path(&data, location)
                .map_or(0, |v| serde_json::to_vec(v).map_or(usize::MAX, |b| b.len()));
            if size > MAX_SECRET_BYTES {
                return Err(StoreError::invalid(
                    format!("data.{}", location.join(".")),
                    format!(
                        "a secret value may be at most {} KiB as JSON",
                        MAX_SECRET_BYTES >> 10
                    ),
                ));
            }
        }
        // The key the secrets are sealed under, and (when this write reserved a new block)
        // the key's encryption total for the rotation check.
        let (sealed, key_id, worn) = if locations.is_empty() {
            (Vec::new(), None, None)
        } else {
            let (key, total) = self.reserve_active_key(tx, locations.len()).await?;
            (
                seal_secrets(&mut data, &locations, id, &key)?,
                Some(key.id()),
                total.map(|t| (key.id(), t)),
            )
        };
        // Measured without the sealed values, so the answer never depends on the size of a
        // secret the writer may not know (each secret is bounded by the body limit, and
        // their number by MAX_SEALED_VALUES).
        check_document_size(&data)?;
        let ref_map: BTreeMap<&str, String> = refs
            .iter()
            .map(|(f, id)| (f.as_str(), id.to_string()))
            .collect();
        self.count_query();
        sqlx::query(
            "insert into block_document_version (block_document_id, version, created, block_schema_id, data, secrets, key_id, refs, token_id) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id.to_string())
        .bind(number)
        .bind(now_micros())
        .bind(schema_id.to_string())
        .bind(to_json(&data))
        .bind(to_json(&sealed))
        .bind(key_id.map(|k| k.to_string()))
        .bind(to_json(&ref_map))
        .bind(author.map(|a| a.to_string()))
        .execute(&mut **tx)
        .await?;
        self.check_failpoint("after_version")?;
        if number > 1 {
            // A new document has no reference rows yet.
            self.count_query();
            sqlx::query("delete from block_document_reference where parent_block_document_id = $1")
                .bind(id.to_string())
                .execute(&mut **tx)
                .await?;
        }
        for (field, child) in &refs {
            self.count_query();
            sqlx::query(
                "insert into block_document_reference (parent_block_document_id, name, reference_block_document_id) values ($1, $2, $3)",
            )
            .bind(id.to_string())
            .bind(field)
            .bind(child.to_string())
            .execute(&mut **tx)
            .await?;
        }
        self.check_failpoint("after_references")?;
        if !refs.is_empty() {
            self.check_tree_size(tx, id).await?;
        }
        if let Some(keep) = self.retention_in(tx).await? {
            self.count_query();
            sqlx::query(
                "delete from block_document_version where block_document_id = $1 and version <= $2",
            )
            .bind(id.to_string())
            .bind(number - i64::from(keep.max(1)))
            .execute(&mut **tx)
            .await?;
        }
        Ok(worn)
    }

    /// Refuses a write after which the document's resolved tree would expand beyond
    /// [`MAX_TREE_DOCUMENTS`] (shared children count once per path, as a read expands them).
    async fn check_tree_size(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id: Uuid,
    ) -> Result<()> {
        self.count_query();
        let rows = sqlx::query(
            "with recursive e(parent, name, child) as (\
             select parent_block_document_id, name, reference_block_document_id from block_document_reference \
             where parent_block_document_id = $1 \
             union select r.parent_block_document_id, r.name, r.reference_block_document_id \
             from block_document_reference r join e on r.parent_block_document_id = e.child) \
             select parent, child from e",
        )
        .bind(id.to_string())
        .fetch_all(&mut **tx)
        .await?;
        let mut children: HashMap<String, Vec<String>> = HashMap::new();
        for row in rows {
            children
                .entry(row.try_get("parent")?)
                .or_default()
                .push(row.try_get("child")?);
        }
        fn expanded(
            id: &str,
            children: &HashMap<String, Vec<String>>,
            memo: &mut HashMap<String, usize>,
        ) -> usize {
            if let Some(n) = memo.get(id) {
                return *n;
            }
            let mut n = 1usize;
            for child in children.get(id).map(Vec::as_slice).unwrap_or_default() {
                n = n
                    .saturating_add(expanded(child, children, memo))
                    .min(MAX_TREE_DOCUMENTS + 1);
            }
            memo.insert(id.to_owned(), n);
            n
        }
        if expanded(&id.to_string(), &children, &mut HashMap::new()) > MAX_TREE_DOCUMENTS {
            return Err(tree_too_large());
        }
        Ok(())
    }

    /// References must point to existing documents and must not make `id` reachable from
    /// itself.
    async fn check_references(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id: Uuid,
        refs: &[(String, Uuid)],
    ) -> Result<()> {
        if refs.is_empty() {
            return Ok(());
        }
        self.lock_reference_graph(tx).await?;
        let mut sql = Sql::new("select id from block_document where id in ");
        sql.bind_list(refs.iter().map(|(_, c)| c.to_string()));
        self.count_query();
        let found: HashSet<String> = sql
            .query()
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .filter_map(|r| r.try_get("id").ok())
            .collect();
        for (field, child) in refs {
            if *child == id {
                return Err(StoreError::Cycle(format!(
                    "Cannot create block document reference: it would introduce a cycle (field '{field}' references the document itself)"
                )));
            }
            if !found.contains(&child.to_string()) {
                return Err(StoreError::BadReference(FieldError::new(
                    format!("data.{field}"),
                    format!("references block document {child}, which does not exist"),
                )));
            }
        }
        let mut sql =
            Sql::new("with recursive reach(id) as (select id from block_document where id in ");
        sql.bind_list(refs.iter().map(|(_, c)| c.to_string()));
        sql.push(
            " union select r.reference_block_document_id from block_document_reference r \
             join reach on r.parent_block_document_id = reach.id) select 1 from reach where id = ",
        );
        sql.bind_text(id.to_string());
        self.count_query();
        if sql.query().fetch_optional(&mut **tx).await?.is_some() {
            return Err(StoreError::Cycle(
                "Cannot create block document reference: it would introduce a cycle".to_owned(),
            ));
        }
        Ok(())
    }

    /// Locks the document row (PostgreSQL) and returns its current version and schema.
    pub(crate) async fn lock_document(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id: Uuid,
    ) -> Result<(i64, Uuid)> {
        self.count_query();
        let row = sqlx::query(&format!(
            "select version, block_schema_id from block_document where id = $1{}",
            self.for_no_key_update()
        ))
        .bind(id.to_string())
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(not_found)?;
        Ok((row.try_get("version")?, uuid_col(&row, "block_schema_id")?))
    }

    /// Every path a document of `schema` keeps sealed: the schema's `secret_fields`, the
    /// properties its JSON Schema marks secret (`writeOnly`, `format: password`), and the
    /// same of every other schema of its type and of the built-in type with its slug.
    /// Secret fields are the type's, not the schema's: a schema registered with fewer of
    /// them cannot make a value land unsealed.
    async fn secret_paths(
        &self,
        conn: &mut sqlx::AnyConnection,
        schema: &BlockSchema,
    ) -> Result<Vec<SecretPath>> {
        let slug = schema
            .block_type
            .as_ref()
            .map(|t| t.slug.as_str())
            .ok_or_else(|| StoreError::Corrupt("schema without type".into()))?;
        // The schema's own list first, so its shape (`a.*` masks leaf by leaf) is kept.
        let mut paths = secret_paths_of(&schema.fields);
        paths.extend(
            self.type_secret_paths(conn, schema.block_type_id, slug, true)
                .await?,
        );
        Ok(normalized(&paths))
    }

    /// The plain data (secrets opened) and references of a stored version.
    async fn open_version(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id: Uuid,
        version: i64,
    ) -> Result<OpenedVersion> {
        self.count_query();
        let row = sqlx::query(
            "select data, secrets, refs, block_schema_id from block_document_version where block_document_id = $1 and version = $2",
        )
        .bind(id.to_string())
        .bind(version)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("Block document version {version} not found")))?;
        let mut data: Map<String, Value> = json_col(&row, "data")?;
        let sealed: Vec<SealedField> = json_col(&row, "secrets")?;
        let refs: BTreeMap<String, String> = json_col(&row, "refs")?;
        let mut keys: HashMap<Uuid, Arc<DataKey>> = HashMap::new();
        for field in &sealed {
            let key_id = crate::crypto::sealed_key_id(&field.ciphertext)?;
            if let std::collections::hash_map::Entry::Vacant(slot) = keys.entry(key_id) {
                slot.insert(self.key(tx, key_id).await?);
            }
        }
        open_secrets(&mut data, &sealed, id, |k| keys.get(&k).map(|a| &**a))?;
        let refs = refs
            .into_iter()
            .map(|(f, c)| Ok((f, parse_uuid(&c)?)))
            .collect::<Result<_>>()?;
        Ok(OpenedVersion {
            data,
            refs,
            schema_id: uuid_col(&row, "block_schema_id")?,
            sealed: sealed.into_iter().map(|f| f.path).collect(),
        })
    }

    /// Updates a document as Prefect's PATCH does, with our fixes:
    ///
    /// - `merge_existing_data` (the default) merges the new data over the current data
    ///   (top-level keys); `false` replaces it. A merge without `data` changes nothing.
    /// - `"********"` sent back at a secret location keeps the stored secret.
    /// - A merge keeps the references it does not mention; a replace keeps only the
    ///   references it sends.
    /// - Moving to another schema (same type only) drops fields the new schema does not
    ///   define. Moving a document that holds secrets needs [`Rights::read_secrets`]:
    ///   validating them against the new schema would otherwise tell a `write` token
    ///   something about them.
    /// - With `expected_version`, a document at another version is a
    ///   [`StoreError::VersionConflict`] and nothing changes.
    pub async fn update_block_document(
        &self,
        id: Uuid,
        body: BlockDocumentUpdate,
        expected_version: Option<i64>,
        rights: Rights,
    ) -> Result<WriteOutcome> {
        let mut tx = self.write.begin().await?;
        let (current_version, current_schema_id) = self.lock_document(&mut tx, id).await?;
        check_expected(expected_version, current_version)?;
        let new_data = match (body.data, body.merge_existing_data) {
            (Some(data), _) => data,
            (None, true) => {
                return Ok(WriteOutcome {
                    id,
                    version: current_version,
                    changed: false,
                });
            }
            (None, false) => Map::new(),
        };
        let OpenedVersion {
            data: current_data,
            refs: current_refs,
            sealed: current_sealed,
            ..
        } = self.open_version(&mut tx, id, current_version).await?;
        // The stored secrets this write keeps (echoed back, or merged in untouched): the
        // writer may not know them, so nothing it is answered may depend on them.
        let surviving = surviving_secrets(&new_data, body.merge_existing_data, &current_sealed);
        let stored_values: Vec<Option<Value>> = surviving
            .iter()
            .map(|path| block_types::secret_fields::get_path(&current_data, path).cloned())
            .collect();
        let current_schema = self.schema_by_id(&mut *tx, current_schema_id).await?;
        let target_schema = match body.block_schema_id {
            Some(schema_id) if schema_id != current_schema_id => {
                let target = self
                    .schema_by_id(&mut *tx, schema_id)
                    .await
                    .map_err(unknown_schema_is_invalid)?;
                if target.block_type_id != current_schema.block_type_id {
                    return Err(StoreError::BadRequest(FieldError::new(
                        "block_schema_id",
                        "Must migrate block document to a block schema of the same block type.",
                    )));
                }
                if !surviving.is_empty() && !rights.read_secrets {
                    return Err(StoreError::Forbidden(FieldError::new(
                        "block_schema_id",
                        "moving a document that keeps stored secrets to another schema needs a token with the read-secrets scope (or send every secret value)",
                    )));
                }
                target
            }
            _ => current_schema.clone(),
        };

        // Echoed "********" keep the stored secret, but only where the target schema keeps it
        // secret too: restoring a value that the new schema stores in clear would unseal it.
        let mut new_data = new_data;
        let current_paths = self.secret_paths(&mut tx, &current_schema).await?;
        // Both schemas are of one type, whose union `current_paths` already holds: the
        // target's own list goes first only for its shape.
        let target_paths = if target_schema.id == current_schema.id {
            current_paths.clone()
        } else {
            let mut paths = secret_paths_of(&target_schema.fields);
            paths.extend(current_paths.iter().cloned());
            normalized(&paths)
        };
        let (kept, dropped): (Vec<_>, Vec<_>) = current_paths
            .into_iter()
            .partition(|p| target_paths.iter().any(|t| t.covers(p)));
        let mut unrestored = restore(&mut new_data, &current_data, &kept);
        if !dropped.is_empty() {
            let mut probe = new_data.clone();
            restore(&mut probe, &current_data, &dropped);
            if probe != new_data {
                unrestored.extend(dropped.iter().map(ToString::to_string));
            }
        }
        if !unrestored.is_empty() {
            return Err(StoreError::Invalid(
                unrestored
                    .into_iter()
                    .map(|path| {
                        FieldError::new(
                            format!("data.{path}"),
                            "\"********\" was sent for a secret that has no stored value here (or is not secret in the target schema); send the real value",
                        )
                    })
                    .collect(),
            ));
        }
        let (new_plain, new_refs) = split_data_references(new_data)?;
        // A merge must not carry a stored secret into a schema that keeps it in clear: that
        // would let a `write` token make it readable by every `read` token. The caller sends
        // the value explicitly (or null) to move it.
        if body.merge_existing_data {
            let carried: Vec<FieldError> = dropped
                .iter()
                .map(ToString::to_string)
                .filter_map(|path| {
                    let root = path.split('.').next().unwrap_or_default().to_owned();
                    let stored = current_data.get(&root).is_some_and(|v| !v.is_null());
                    (stored && !new_plain.contains_key(&root)).then(|| {
                        FieldError::new(
                            format!("data.{root}"),
                            "this secret is not secret in the target schema; send its value (or null) explicitly to move the document",
                        )
                    })
                })
                .collect();
            if !carried.is_empty() {
                return Err(StoreError::Invalid(carried));
            }
        }
        let (mut data, mut refs) = if body.merge_existing_data {
            let mut merged = current_data;
            let mut refs: Vec<(String, Uuid)> = current_refs
                .into_iter()
                .filter(|(field, _)| {
                    !new_plain.contains_key(field) && !new_refs.iter().any(|(f, _)| f == field)
                })
                .collect();
            for (k, v) in new_plain {
                merged.insert(k, v);
            }
            refs.extend(new_refs);
            for (field, _) in &refs {
                merged.shift_remove(field);
            }
            (merged, refs)
        } else {
            (new_plain, new_refs)
        };
        if target_schema.id != current_schema_id
            && let Some(props) = target_schema
                .fields
                .get("properties")
                .and_then(Value::as_object)
        {
            data.retain(|k, _| props.contains_key(k));
            refs.retain(|(k, _)| props.contains_key(k));
        }
        // Only what the write really keeps: a value that changed (an echo below a secret
        // that was not restored, say) is new and validated like any other.
        let surviving: Vec<Vec<String>> = surviving
            .into_iter()
            .zip(stored_values)
            .filter(|(path, stored)| {
                let now = block_types::secret_fields::get_path(&data, path);
                now.is_some() && now == stored.as_ref()
            })
            .map(|(path, _)| path)
            .collect();
        self.validate_data_without(&target_schema, &data, &refs, &surviving)?;

        let version = NewVersion {
            data,
            refs,
            schema: &target_schema,
            kept: surviving,
            paths: Some(target_paths),
            author: rights.token,
        };
        let kind = if target_schema.id == current_schema_id {
            EventKind::DocumentUpdated
        } else {
            EventKind::DocumentSchemaChanged
        };
        self.commit_next_version(tx, id, current_version, version, kind)
            .await
    }

    /// Inside a write that locked document `id` at `current_version`: makes `version` the
    /// next one, commits, and hands a newly reserved key block to this process.
    async fn commit_next_version(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Any>,
        id: Uuid,
        current_version: i64,
        version: NewVersion<'_>,
        kind: EventKind,
    ) -> Result<WriteOutcome> {
        let next = current_version + 1;
        let author = version.author;
        self.count_query();
        sqlx::query("update block_document set version = $1, updated = $2, block_schema_id = $3 where id = $4 and version = $5")
            .bind(next)
            .bind(now_micros())
            .bind(version.schema.id.to_string())
            .bind(id.to_string())
            .bind(current_version)
            .execute(&mut *tx)
            .await?;
        let worn = self.write_version(&mut tx, id, next, version).await?;
        self.record_document_event(&mut tx, kind, id, author)
            .await?;
        self.announce_change(&mut tx, &[id]).await?;
        self.check_failpoint("update_before_commit")?;
        let change = self.changing(&[id]);
        let committed = tx.commit().await;
        drop(change);
        committed?;
        self.feed_committed();
        if let Some((key, used)) = worn {
            self.after_refill(key, used).await;
        }
        Ok(WriteOutcome {
            id,
            version: next,
            changed: true,
        })
    }

    /// Deletes a document and its history. Refused while other documents reference it
    /// (the error names them), or when `expected_version` does not match.
    pub async fn delete_block_document(
        &self,
        id: Uuid,
        expected_version: Option<i64>,
    ) -> Result<()> {
        self.delete_block_document_by(id, expected_version, None)
            .await
    }

    /// [`Store::delete_block_document`] by `author` (a token id), for the change feed.
    pub async fn delete_block_document_by(
        &self,
        id: Uuid,
        expected_version: Option<i64>,
        author: Option<Uuid>,
    ) -> Result<()> {
        let mut tx = self.write.begin().await?;
        // The same lock order as updates: the document row, then the reference graph.
        let (current_version, _) = self.lock_document(&mut tx, id).await?;
        self.lock_reference_graph(&mut tx).await?;
        check_expected(expected_version, current_version)?;
        self.refuse_if_used(
            &mut tx,
            "select t.slug || '/' || d.name from block_document_reference r \
             join block_document d on d.id = r.parent_block_document_id join block_type t on t.id = d.block_type_id \
             where r.reference_block_document_id = $1 order by 1",
            id,
            "the block document is referenced by other block documents",
        )
        .await?;
        self.record_document_event(&mut tx, EventKind::DocumentDeleted, id, author)
            .await?;
        self.count_query();
        sqlx::query("delete from block_document where id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        self.announce_change(&mut tx, &[id]).await?;
        let change = self.changing(&[id]);
        let committed = tx.commit().await;
        drop(change);
        committed?;
        self.feed_committed();
        Ok(())
    }

    /// A document by id with its references resolved, in one query.
    pub async fn read_block_document(
        &self,
        id: Uuid,
        include_secrets: bool,
    ) -> Result<BlockDocument> {
        Ok(self
            .read_block_document_tagged(id, include_secrets)
            .await?
            .document)
    }

    /// [`Store::read_block_document`] with the tree's entity tag and the root's version.
    pub async fn read_block_document_tagged(
        &self,
        id: Uuid,
        include_secrets: bool,
    ) -> Result<Tagged> {
        self.read_one(
            TreeKey::Id(id),
            |sql| {
                sql.push("d.id = ").bind_text(id.to_string());
            },
            |_| Some(id),
            include_secrets,
        )
        .await
    }

    /// A document by type slug and name with its references resolved, in one query.
    pub async fn read_block_document_by_name(
        &self,
        slug: &str,
        name: &str,
        include_secrets: bool,
    ) -> Result<BlockDocument> {
        Ok(self
            .read_block_document_by_name_tagged(slug, name, include_secrets)
            .await?
            .document)
    }

    /// [`Store::read_block_document_by_name`] with the tree's entity tag and the root's
    /// version.
    pub async fn read_block_document_by_name_tagged(
        &self,
        slug: &str,
        name: &str,
        include_secrets: bool,
    ) -> Result<Tagged> {
        self.read_one(
            TreeKey::Name(slug.into(), name.into()),
            |sql| {
                sql.push("d.block_type_id = (select id from block_type where slug = ")
                    .bind_text(slug)
                    .push(") and d.name = ")
                    .bind_text(name);
            },
            |tree| {
                tree.docs
                    .values()
                    .find(|d| {
                        d.name == name
                            && d.schema.block_type.as_ref().is_some_and(|t| t.slug == slug)
                    })
                    .map(|d| d.id)
            },
            include_secrets,
        )
        .await
    }

    /// Loads the tree selected by `root` and resolves the document `pick` finds in it. A
    /// read that raced a re-encryption (its version moved to a new key and the old key was
    /// destroyed between the query and the decryption) is read again once.
    async fn read_one(
        &self,
        key: TreeKey,
        root: impl Fn(&mut Sql),
        pick: impl Fn(&Tree) -> Option<Uuid>,
        include_secrets: bool,
    ) -> Result<Tagged> {
        let mut retried = false;
        loop {
            // After a failure to open a cached tree, read it afresh (its version may have
            // been re-encrypted and the old key destroyed since it was kept).
            let cached = if retried { None } else { self.trees.get(&key) };
            let entry = match cached {
                Some(entry) => entry,
                None => {
                    let generation = self.trees.generation();
                    let tree = self.load_tree(&root).await?;
                    let Some(id) = pick(&tree) else {
                        return Err(not_found());
                    };
                    let entry = tree_cache::Entry {
                        documents: tree.docs.keys().copied().collect(),
                        bytes: tree
                            .docs
                            .values()
                            .map(|d| d.plain_bytes + d.sealed_bytes + 512)
                            .sum(),
                        tree: Arc::new(CachedTree {
                            etag: tree_etag(&tree, id),
                            root: id,
                            tree,
                        }),
                    };
                    self.trees.insert(key.clone(), entry.clone(), generation);
                    entry
                }
            };
            let cached = &*entry.tree;
            let id = cached.root;
            match self.resolve_root(&cached.tree, id, include_secrets).await {
                Err(StoreError::Crypto(_)) if !retried => retried = true,
                Err(StoreError::Crypto(error)) => {
                    tracing::error!(document_id = %id, %error, "a block document cannot be decrypted");
                    return Err(StoreError::Unreadable(format!(
                        "block document {id} (or a document it references) cannot be decrypted: its data key is missing or its stored ciphertext was altered. Nothing was changed; an admin can overwrite it or restore it from a backup"
                    )));
                }
                other => {
                    let document = other?.ok_or_else(not_found)?;
                    let version = cached.tree.docs.get(&id).map_or(0, |d| d.version);
                    return Ok(Tagged {
                        etag: cached.etag.clone(),
                        version,
                        document,
                    });
                }
            }
        }
    }

    /// The current version of a document.
    pub async fn document_version(&self, id: Uuid) -> Result<i64> {
        self.count_query();
        sqlx::query_scalar("select version from block_document where id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(not_found)
    }

    /// Loads every document reachable from the roots selected by `root` (a condition on
    /// `block_document d` with `$N` placeholders), with data, schema and type, in one query.
    async fn load_tree(&self, root: impl Fn(&mut Sql)) -> Result<Tree> {
        let sql = self.tree_sql(root);
        self.count_query();
        let rows = sql.query().fetch_all(&self.read).await?;
        self.tree_from_rows(&rows).await
    }

    /// The query of [`Store::load_tree`].
    pub(crate) fn tree_sql(&self, root: impl Fn(&mut Sql)) -> Sql {
        let mut sql = Sql::new(
            "with recursive tree(id, parent_id, ref_name, depth) as (\
             select d.id, cast(null as text), cast(null as text), 0 from block_document d where ",
        );
        root(&mut sql);
        // `union` (not `union all`) drops a row reached again at the same depth over the
        // same edge, so shared children do not multiply along every path; the depth bound
        // keeps the recursion (and the planner's estimate) small.
        sql.push(
            " union select r.reference_block_document_id, r.parent_block_document_id, r.name, tree.depth + 1 \
             from block_document_reference r join tree on r.parent_block_document_id = tree.id where tree.depth < ",
        );
        sql.bind_int(MAX_DEPTH);
        sql.push(&format!(
            "{TREE_COLUMNS} from tree {} block_document d on d.id = tree.id \
             join block_document_version v on v.block_document_id = d.id and v.version = d.version \
             join block_type t on t.id = d.block_type_id",
            self.driving_join()
        ));
        sql
    }

    /// A schema from the in-memory cache. Schemas never change; the embedded type can (its
    /// metadata), so an entry is used only while the type's `updated` matches the one the
    /// tree query saw, and is fetched again otherwise.
    async fn cached_schema(&self, id: Uuid, type_updated: i64) -> Result<Arc<BlockSchema>> {
        if let Some(schema) = self.read_lock(&self.schemas).get(&id)
            && schema
                .block_type
                .as_ref()
                .is_some_and(|t| t.updated.timestamp_micros() == type_updated)
        {
            return Ok(schema.clone());
        }
        let schema = Arc::new(self.read_block_schema(id).await?);
        self.write_lock(&self.schemas).insert(id, schema.clone());
        Ok(schema)
    }

    async fn tree_from_rows(&self, rows: &[AnyRow]) -> Result<Tree> {
        let mut docs = HashMap::new();
        let mut edges: HashMap<Uuid, Vec<(String, Uuid)>> = HashMap::new();
        for row in rows {
            let id = uuid_col(row, "d_id")?;
            if let (Some(parent), Some(field)) = (
                row.try_get::<Option<String>, _>("parent_id")?,
                row.try_get::<Option<String>, _>("ref_name")?,
            ) {
                let list = edges.entry(parse_uuid(&parent)?).or_default();
                if !list.iter().any(|(f, _)| *f == field) {
                    list.push((field, id));
                }
            }
            if docs.contains_key(&id) {
                continue;
            }
            docs.insert(
                id,
                TreeDoc {
                    id,
                    version: row.try_get("d_version")?,
                    type_updated: row.try_get("t_updated")?,
                    created: row.try_get("d_created")?,
                    updated: row.try_get("d_updated")?,
                    name: row.try_get("d_name")?,
                    is_anonymous: row.try_get::<i64, _>("d_is_anonymous")? != 0,
                    block_type_name: row.try_get("d_block_type_name")?,
                    plain_bytes: row.try_get::<String, _>("v_data")?.len(),
                    sealed_bytes: row.try_get::<String, _>("v_secrets")?.len(),
                    data: json_col(row, "v_data")?,
                    secrets: json_col(row, "v_secrets")?,
                    schema: self
                        .cached_schema(
                            uuid_col(row, "d_block_schema_id")?,
                            row.try_get("t_updated")?,
                        )
                        .await?,
                },
            );
        }
        for list in edges.values_mut() {
            list.sort_by(|a, b| a.0.cmp(&b.0));
        }
        Ok(Tree { docs, edges })
    }

    /// The data keys that open the secrets of every document of `tree`. With
    /// `skip_missing`, a key that cannot be had is left out (the documents needing it fail
    /// to open on their own) instead of failing them all.
    async fn keys_for(
        &self,
        tree: &Tree,
        skip_missing: bool,
    ) -> Result<HashMap<Uuid, Arc<DataKey>>> {
        let mut keys = HashMap::new();
        let mut missing = HashSet::new();
        for doc in tree.docs.values() {
            for field in &doc.secrets {
                let id = match crate::crypto::sealed_key_id(&field.ciphertext) {
                    Ok(id) => id,
                    Err(_) if skip_missing => continue,
                    Err(e) => return Err(e.into()),
                };
                if keys.contains_key(&id) || missing.contains(&id) {
                    continue;
                }
                let key = match self.cached_key(id) {
                    Some(key) => Ok(key),
                    // A key another replica created since this one loaded its keys.
                    None => {
                        let mut tx = self.read.begin().await?;
                        self.key(&mut tx, id).await
                    }
                };
                match key {
                    Ok(key) => {
                        keys.insert(id, key);
                    }
                    Err(StoreError::Crypto(_)) if skip_missing => {
                        missing.insert(id);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(keys)
    }

    async fn resolve_root(
        &self,
        tree: &Tree,
        id: Uuid,
        include_secrets: bool,
    ) -> Result<Option<BlockDocument>> {
        let keys = self.keys_for(tree, false).await?;
        self.resolve_root_with(tree, &keys, id, include_secrets)
    }

    fn resolve_root_with(
        &self,
        tree: &Tree,
        keys: &HashMap<Uuid, Arc<DataKey>>,
        id: Uuid,
        include_secrets: bool,
    ) -> Result<Option<BlockDocument>> {
        let Some(doc) = tree.docs.get(&id) else {
            return Ok(None);
        };
        let (data, refs, _, _) = resolve(tree, keys, id, include_secrets, 0, &mut HashMap::new())?;
        Ok(Some(doc.document(data, refs, false)))
    }
}

/// A resolved document: its data, its references, how many documents its expanded tree
/// holds, and about how many bytes.
type Resolved = (
    Map<String, Value>,
    BTreeMap<String, BlockDocumentReference>,
    usize,
    usize,
);

/// A listed document whose secrets cannot be opened: its plain data, each sealed value as
/// `"********"` (even for a caller allowed to see secrets), references as `$ref`s, and the
/// `unreadable` flag.
fn unreadable_document(tree: &Tree, id: Uuid) -> Option<BlockDocument> {
    let doc = tree.docs.get(&id)?;
    let mut data = doc.data.clone();
    for field in &doc.secrets {
        let Some((last, parents)) = field.path.split_last() else {
            continue;
        };
        let parent = if parents.is_empty() {
            Some(&mut data)
        } else {
            block_types::secret_fields::get_path_mut(&mut data, parents)
                .and_then(Value::as_object_mut)
        };
        if let Some(parent) = parent {
            parent.insert(
                last.clone(),
                Value::String(block_types::OBFUSCATED.to_owned()),
            );
        }
    }
    for (field, child) in tree.edges.get(&id).map(Vec::as_slice).unwrap_or_default() {
        data.insert(field.clone(), references::reference_value(*child));
    }
    Some(doc.document(data, BTreeMap::new(), true))
}

/// About how many bytes document `id` expands to when resolved (saturating past the caps,
/// so a hostile graph costs no more than counting).
fn resolved_bytes(
    tree: &Tree,
    id: Uuid,
    include_secrets: bool,
    depth: i64,
    memo: &mut HashMap<Uuid, usize>,
) -> usize {
    if let Some(done) = memo.get(&id) {
        return *done;
    }
    let own = tree.docs.get(&id).map_or(0, |d| d.cost(include_secrets));
    let mut bytes = own;
    if depth < MAX_DEPTH {
        for (_, child) in tree.edges.get(&id).map(Vec::as_slice).unwrap_or_default() {
            bytes = bytes.saturating_add(resolved_bytes(
                tree,
                *child,
                include_secrets,
                depth + 1,
                memo,
            ));
            if bytes > MAX_RESPONSE_BYTES {
                break;
            }
        }
    }
    memo.insert(id, bytes);
    bytes
}

/// A document's data with its secrets opened (or masked) and its references replaced by
/// the referenced documents' resolved data. Each document is resolved once (`memo`), and a
/// tree that would expand beyond [`MAX_TREE_DOCUMENTS`] documents is refused rather than
/// built.
fn resolve(
    tree: &Tree,
    keys: &HashMap<Uuid, Arc<DataKey>>,
    id: Uuid,
    include_secrets: bool,
    depth: i64,
    memo: &mut HashMap<Uuid, Resolved>,
) -> Result<Resolved> {
    if let Some(done) = memo.get(&id) {
        return Ok(done.clone());
    }
    let doc = tree.docs.get(&id).ok_or_else(not_found)?;
    let mut data = doc.data.clone();
    if !doc.secrets.is_empty() {
        open_secrets(&mut data, &doc.secrets, id, |key_id| {
            keys.get(&key_id).map(|k| &**k)
        })?;
    }
    let mut refs = BTreeMap::new();
    let mut size = 1usize;
    let mut bytes = doc.cost(include_secrets);
    if depth < MAX_DEPTH {
        for (field, child_id) in tree.edges.get(&id).map(Vec::as_slice).unwrap_or_default() {
            let Some(child) = tree.docs.get(child_id) else {
                continue;
            };
            let (child_data, child_refs, child_size, child_bytes) =
                resolve(tree, keys, *child_id, include_secrets, depth + 1, memo)?;
            size += child_size;
            if size > MAX_TREE_DOCUMENTS {
                return Err(tree_too_large());
            }
            bytes += child_bytes;
            if bytes > MAX_RESOLVED_BYTES {
                return Err(StoreError::TooLarge(format!(
                    "the resolved reference tree would hold more than {} MiB of data",
                    MAX_RESOLVED_BYTES >> 20
                )));
            }
            data.insert(field.clone(), Value::Object(child_data));
            let block_type: BlockType = child
                .schema
                .block_type
                .clone()
                .ok_or_else(|| StoreError::Corrupt("schema without type".into()))?;
            refs.insert(
                field.clone(),
                BlockDocumentReference {
                    block_document: ReferencedBlockDocument {
                        id: *child_id,
                        name: Some(child.name.clone()),
                        block_type,
                        is_anonymous: child.is_anonymous,
                        block_document_references: child_refs,
                    },
                },
            );
        }
    }
    if !include_secrets {
        let sealed = doc.secrets.iter().map(|f| f.path.clone());
        obfuscate(&mut data, &mask_paths(&doc.schema.fields, sealed));
    }
    let resolved = (data, refs, size, bytes);
    memo.insert(id, resolved.clone());
    Ok(resolved)
}

/// The most documents one resolved tree may hold (a document counts once per path to it).
const MAX_TREE_DOCUMENTS: usize = 1000;

/// The most secret values (sealed locations) one document may hold.
const MAX_SEALED_VALUES: usize = 64;

/// The most bytes one secret value may take as JSON when it is written.
const MAX_SECRET_BYTES: usize = 256 * 1024;

/// The most bytes of stored data one document may hold (its plain data as JSON, secrets
/// not counted).
const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

/// The most bytes of stored data one resolved tree may expand to.
const MAX_RESOLVED_BYTES: usize = 8 << 20;

/// The most bytes of stored data one listing may expand to.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// A document's data larger than [`MAX_DOCUMENT_BYTES`] is refused.
fn check_document_size(data: &Map<String, Value>) -> Result<()> {
    let bytes = serde_json::to_vec(data)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if bytes > MAX_DOCUMENT_BYTES {
        return Err(StoreError::invalid(
            "data",
            format!(
                "must be at most {} KiB as JSON (references not counted)",
                MAX_DOCUMENT_BYTES >> 10
            ),
        ));
    }
    Ok(())
}

fn tree_too_large() -> StoreError {
    StoreError::invalid(
        "data",
        format!("the resolved reference tree would hold more than {MAX_TREE_DOCUMENTS} documents"),
    )
}

fn check_document_body_lists(
    documents: Option<&BlockDocumentFilter>,
    types: Option<&BlockTypeFilter>,
    schemas: Option<&BlockSchemaFilter>,
) -> Result<()> {
    let mut lists = document_filter_lists(documents);
    lists.extend(type_filter_lists(types));
    lists.extend(schema_filter_lists(schemas));
    check_filter_lists(&lists)
}

/// Appends the conditions of a document filter on `block_document d` (with its type
/// `block_type t`), the type filter and the schema filter.
fn push_document_filters(
    backend: Backend,
    sql: &mut Sql,
    documents: &BlockDocumentFilter,
    types: Option<&BlockTypeFilter>,
    schemas: Option<&BlockSchemaFilter>,
) {
    let mut groups: Vec<Condition> = Vec::new();
    if let Some(ids) = documents.id.as_ref().and_then(|f| f.any_.clone()) {
        groups.push(Box::new(move |sql| {
            sql.push("d.id in ")
                .bind_list(ids.iter().map(ToString::to_string));
        }));
    }
    if let Some(EqBool {
        eq_: Some(anonymous),
    }) = documents.is_anonymous
    {
        groups.push(Box::new(move |sql| {
            sql.push("d.is_anonymous = ").bind_int(i64::from(anonymous));
        }));
    }
    if let Some(ids) = documents
        .block_type_id
        .as_ref()
        .and_then(|f| f.any_.clone())
    {
        groups.push(Box::new(move |sql| {
            sql.push("d.block_type_id in ")
                .bind_list(ids.iter().map(ToString::to_string));
        }));
    }
    if let Some(name) = documents.name.clone()
        && (name.any_.is_some() || name.like_.is_some())
    {
        groups.push(Box::new(move |sql| {
            sql.push("(1 = 1");
            if let Some(names) = &name.any_ {
                sql.push(" and d.name in ").bind_list(names.iter().cloned());
            }
            if let Some(like) = &name.like_ {
                sql.push(" and lower(d.name) like '%' || lower(")
                    .bind_text(like_pattern(like, backend))
                    .push(") || '%'");
            }
            sql.push(")");
        }));
    }
    push_combined(sql, &groups, documents.operator);
    if let Some(types) = types {
        push_type_filter(sql, types, "t", backend);
    }
    if let Some(schemas) = schemas {
        sql.push(" and exists (select 1 from block_schema s where s.id = d.block_schema_id");
        push_schema_filter(sql, schemas, "s");
        sql.push(")");
    }
}

impl Store {
    /// Documents matching the filter (anonymous ones hidden unless asked), sorted and
    /// paged, each with its references resolved.
    pub async fn filter_block_documents(
        &self,
        body: &BlockDocumentFilterBody,
    ) -> Result<Vec<BlockDocument>> {
        self.filter_block_documents_within(body, Reach::All).await
    }

    /// [`Self::filter_block_documents`] over the documents in `reach` only (what a token
    /// limited by grants may see): paging and sorting apply to those.
    pub async fn filter_block_documents_within(
        &self,
        body: &BlockDocumentFilterBody,
        reach: Reach<'_>,
    ) -> Result<Vec<BlockDocument>> {
        let page =
            Page::resolve(body.limit, body.offset).map_err(|e| StoreError::Invalid(vec![e]))?;
        let mut sql = self.document_query(
            "select d.id",
            body.block_documents.as_ref(),
            body.block_types.as_ref(),
            body.block_schemas.as_ref(),
        )?;
        reach.push_condition(&mut sql);
        let c = self.collate();
        let order = match body.sort.unwrap_or_default() {
            BlockDocumentSort::NameAsc => format!(" order by d.name{c} asc, d.id"),
            BlockDocumentSort::NameDesc => format!(" order by d.name{c} desc, d.id"),
            BlockDocumentSort::BlockTypeAndNameAsc => {
                format!(" order by d.block_type_name{c} asc, d.name{c} asc, d.id")
            }
        };
        sql.push(&order).push(" limit ").bind_int(page.limit.into());
        sql.push(" offset ").bind_int(page.offset.into());
        self.count_query();
        let ids: Vec<Uuid> = sql
            .query()
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(|r| uuid_col(r, "id"))
            .collect::<Result<_>>()?;
        self.read_many(&ids, body.include_secrets.unwrap_or(false))
            .await
    }

    /// `select …` over the documents matching the filters (anonymous ones hidden unless
    /// asked), with the filter lists checked; sorting and paging are left to the caller.
    fn document_query(
        &self,
        select: &str,
        documents: Option<&BlockDocumentFilter>,
        types: Option<&BlockTypeFilter>,
        schemas: Option<&BlockSchemaFilter>,
    ) -> Result<Sql> {
        check_document_body_lists(documents, types, schemas)?;
        let mut sql = Sql::new(select);
        sql.push(" from block_document d join block_type t on t.id = d.block_type_id where 1 = 1");
        let documents = documents.cloned().unwrap_or_default();
        push_document_filters(self.backend, &mut sql, &documents, types, schemas);
        Ok(sql)
    }

    /// Resolved documents for `ids`, in that order, with one tree query for all of them.
    async fn read_many(&self, ids: &[Uuid], include_secrets: bool) -> Result<Vec<BlockDocument>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut retried = false;
        loop {
            let tree = self
                .load_tree(|sql| {
                    sql.push("d.id in ")
                        .bind_list(ids.iter().map(ToString::to_string));
                })
                .await?;
            // As in `read_one`: a version that re-encryption moved between the query and
            // the decryption is read again once; the second time, a document that still
            // cannot be decrypted is listed as unreadable instead of failing the list.
            match self.resolve_all(&tree, ids, include_secrets, retried).await {
                Err(StoreError::Crypto(_)) if !retried => retried = true,
                other => return other,
            }
        }
    }

    async fn resolve_all(
        &self,
        tree: &Tree,
        ids: &[Uuid],
        include_secrets: bool,
        list_unreadable: bool,
    ) -> Result<Vec<BlockDocument>> {
        let keys = self.keys_for(tree, list_unreadable).await?;
        let mut out = Vec::with_capacity(ids.len());
        // The stored bytes the answer expands to, counted before anything is built.
        let mut total = 0usize;
        let mut memo = HashMap::new();
        for id in ids {
            if tree.docs.contains_key(id) {
                total += resolved_bytes(tree, *id, include_secrets, 0, &mut memo);
            }
            if total > MAX_RESPONSE_BYTES {
                return Err(StoreError::TooLarge(format!(
                    "the answer would hold more than {} MiB of data; ask for fewer documents with limit",
                    MAX_RESPONSE_BYTES >> 20
                )));
            }
        }
        for id in ids {
            match self.resolve_root_with(tree, &keys, *id, include_secrets) {
                Ok(Some(doc)) => out.push(doc),
                Ok(None) => {}
                Err(StoreError::Crypto(error)) if list_unreadable => {
                    tracing::error!(document_id = %id, %error, "a listed block document cannot be decrypted (its data key is missing or its ciphertext was altered); listed as unreadable");
                    out.extend(unreadable_document(tree, *id));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// How many documents match the filter.
    pub async fn count_block_documents(&self, body: &BlockDocumentCountBody) -> Result<i64> {
        self.count_block_documents_within(body, Reach::All).await
    }

    /// How many documents in `reach` match the filter (a count never tells of others).
    pub async fn count_block_documents_within(
        &self,
        body: &BlockDocumentCountBody,
        reach: Reach<'_>,
    ) -> Result<i64> {
        let mut sql = self.document_query(
            "select count(*) as n",
            body.block_documents.as_ref(),
            body.block_types.as_ref(),
            body.block_schemas.as_ref(),
        )?;
        reach.push_condition(&mut sql);
        self.count_query();
        Ok(sql.query().fetch_one(&self.read).await?.try_get("n")?)
    }

    /// The named (non-anonymous) documents of a type, by name.
    pub async fn list_block_documents_of_type(
        &self,
        slug: &str,
        include_secrets: bool,
    ) -> Result<Vec<BlockDocument>> {
        self.list_block_documents_of_type_within(slug, include_secrets, Reach::All)
            .await
    }

    /// [`Self::list_block_documents_of_type`], of the documents in `reach` only.
    pub async fn list_block_documents_of_type_within(
        &self,
        slug: &str,
        include_secrets: bool,
        reach: Reach<'_>,
    ) -> Result<Vec<BlockDocument>> {
        let ty = self.read_block_type_by_slug(slug).await?;
        let body = BlockDocumentFilterBody {
            block_documents: Some(BlockDocumentFilter {
                block_type_id: Some(block_types::model::AnyOf {
                    any_: Some(vec![ty.id]),
                }),
                ..BlockDocumentFilter::default()
            }),
            include_secrets: Some(include_secrets),
            ..BlockDocumentFilterBody::default()
        };
        let mut all = Vec::new();
        let mut offset = 0;
        loop {
            let page = self
                .filter_block_documents_within(
                    &BlockDocumentFilterBody {
                        offset: Some(offset),
                        ..body.clone()
                    },
                    reach,
                )
                .await?;
            let n = page.len() as i64;
            all.extend(page);
            if n < block_types::model::MAX_LIMIT {
                break;
            }
            offset += n;
        }
        Ok(all)
    }

    /// The stored versions of a document, newest first.
    pub async fn list_versions(&self, id: Uuid) -> Result<Vec<VersionInfo>> {
        self.document_version(id).await?;
        self.count_query();
        let rows = sqlx::query(
            "select version, created, block_schema_id, key_id, refs, token_id from block_document_version \
             where block_document_id = $1 order by version desc",
        )
        .bind(id.to_string())
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                let refs: BTreeMap<String, String> = json_col(row, "refs")?;
                Ok(VersionInfo {
                    version: row.try_get("version")?,
                    created: to_time(row.try_get("created")?),
                    block_schema_id: uuid_col(row, "block_schema_id")?,
                    key_id: row
                        .try_get::<Option<String>, _>("key_id")?
                        .map(|k| parse_uuid(&k))
                        .transpose()?,
                    references: refs
                        .into_iter()
                        .map(|(f, c)| Ok((f, parse_uuid(&c)?)))
                        .collect::<Result<_>>()?,
                    token_id: row
                        .try_get::<Option<String>, _>("token_id")?
                        .map(|t| parse_uuid(&t))
                        .transpose()?,
                })
            })
            .collect()
    }

    /// One version's own data, with its references as `$ref`s and secrets masked unless
    /// asked for.
    pub async fn read_version(
        &self,
        id: Uuid,
        version: i64,
        include_secrets: bool,
    ) -> Result<Map<String, Value>> {
        // A read that raced a re-encryption (the version moved to a new key and the old key
        // was destroyed in between) is read again once, as current reads are.
        let mut retried = false;
        let OpenedVersion {
            mut data,
            refs,
            schema_id,
            sealed,
        } = loop {
            let mut tx = self.read.begin().await?;
            match self.open_version(&mut tx, id, version).await {
                Err(StoreError::Crypto(_)) if !retried => retried = true,
                other => break other?,
            }
        };
        if !include_secrets {
            let schema = self.read_block_schema(schema_id).await?;
            obfuscate(&mut data, &mask_paths(&schema.fields, sealed));
        }
        for (field, child) in refs {
            data.insert(field, references::reference_value(child));
        }
        Ok(data)
    }

    /// Makes a new version equal to an older one (data, secrets, references and schema),
    /// written by `author` (a token id).
    pub async fn rollback_block_document(
        &self,
        id: Uuid,
        version: i64,
        expected_version: Option<i64>,
        author: Option<Uuid>,
    ) -> Result<WriteOutcome> {
        let mut tx = self.write.begin().await?;
        let (current_version, _) = self.lock_document(&mut tx, id).await?;
        check_expected(expected_version, current_version)?;
        let OpenedVersion {
            data,
            refs,
            schema_id,
            sealed,
        } = self.open_version(&mut tx, id, version).await?;
        let schema = self.schema_by_id(&mut *tx, schema_id).await?;
        let version = NewVersion {
            data,
            refs,
            schema: &schema,
            kept: sealed,
            paths: None,
            author,
        };
        self.commit_next_version(
            tx,
            id,
            current_version,
            version,
            EventKind::DocumentRolledBack,
        )
        .await
    }

    /// Destroys one old version: its data, sealed secrets and references are deleted. The
    /// current version cannot be destroyed (409).
    pub async fn destroy_version(&self, id: Uuid, version: i64) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let (current_version, _) = self.lock_document(&mut tx, id).await?;
        if version == current_version {
            return Err(StoreError::Conflict(format!(
                "version {version} is the document's current version; write a new version before destroying it"
            )));
        }
        self.count_query();
        let deleted = sqlx::query(
            "delete from block_document_version where block_document_id = $1 and version = $2",
        )
        .bind(id.to_string())
        .bind(version)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound(
                "Block document version not found".to_owned(),
            ));
        }
        tx.commit().await?;
        Ok(())
    }

    /// How many versions each document keeps (`None`: all): the stored setting, else the
    /// store's configured default.
    pub async fn retention(&self) -> Result<Option<u32>> {
        let mut conn = self.read.acquire().await?;
        self.retention_on(&mut conn).await
    }

    async fn retention_in(&self, tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<Option<u32>> {
        self.retention_on(tx).await
    }

    async fn retention_on(&self, conn: &mut sqlx::AnyConnection) -> Result<Option<u32>> {
        self.count_query();
        Ok(super::read_setting(conn, RETENTION)
            .await?
            .unwrap_or(self.config.retention))
    }

    /// Stores the retention setting (for every replica) and prunes versions beyond it now.
    pub async fn set_retention(&self, keep: Option<u32>) -> Result<()> {
        if keep == Some(0) {
            return Err(StoreError::invalid(
                "retention",
                "must be at least 1 (the current version), or null to keep every version",
            ));
        }
        let mut tx = self.write.begin().await?;
        self.count_query();
        super::write_setting(&mut tx, RETENTION, &keep).await?;
        if let Some(keep) = keep {
            self.count_query();
            sqlx::query(
                "delete from block_document_version where version <= \
                 (select d.version from block_document d where d.id = block_document_version.block_document_id) - $1",
            )
            .bind(i64::from(keep))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// The `server_metadata` row holding the retention setting (JSON: a number or null).
const RETENTION: &str = "retention";
