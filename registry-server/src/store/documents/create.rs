//! Document creates: one document (on SQLite in the group commit, on PostgreSQL in one
//! statement when it can), an import of many, and a duplicate.

use std::collections::HashMap;
use std::sync::Arc;

use block_types::FieldError;
use block_types::model::{BlockDocument, BlockDocumentCreate, BlockSchema};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::MAX_IMPORT;
use super::NewDocument;
use super::NewVersion;
use super::Tree;
use super::TreeDoc;
use super::check_document_size;
use super::not_found;
use super::split_data_references;
use super::unknown_schema_is_invalid;
use super::within_document;
use super::write::{VersionRow, locations_to_seal};
use super::{Backend, Result, Store, StoreError, now_micros, to_json};
use crate::crypto::{SealedField, seal_secrets};
use crate::store::batch::{Batch, Statement};
use crate::store::events::CreatedDocument;

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
        self.create_block_document_recorded(body, author, None)
            .await
    }

    /// [`Store::create_block_document_by`], storing `record` (the request's audit record)
    /// in the same transaction: one commit makes both durable, and a create that fails
    /// leaves neither.
    pub async fn create_block_document_recorded(
        &self,
        body: BlockDocumentCreate,
        author: Option<Uuid>,
        record: Option<crate::store::NewAuditRecord>,
    ) -> Result<BlockDocument> {
        body.validate().map_err(|e| StoreError::Invalid(vec![e]))?;
        let id = Uuid::new_v4();
        let name = match &body.name {
            Some(name) => name.clone(),
            None => format!("anonymous-{}", Uuid::new_v4()),
        };
        let (data, refs) = split_data_references(body.data)?;
        // The schema and the paths to seal, read before the write takes the writer (one
        // statement less while it holds it). As if the create had come a moment earlier: a
        // schema of the type registered after this read seals no value written before it
        // either.
        let (schema, paths) = self
            .schema_and_secret_paths(body.block_schema_id)
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
            paths: Some(paths),
            author,
        };
        match self
            .insert_document(document, version, record.as_ref())
            .await?
        {
            // The answer from what the create wrote, as a read of it would resolve it.
            Some(written) => {
                let tree = Tree {
                    docs: HashMap::from([(id, written)]),
                    edges: HashMap::new(),
                };
                self.resolve_root(&tree, id, false)
                    .await?
                    .ok_or_else(not_found)
            }
            None => self.read_block_document(id, false).await,
        }
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
            let (refilled, _) = self
                .insert_document_in(&mut tx, document, version, None, Create::Import)
                .await
                .map_err(|e| within_document(i, e))?;
            worn.extend(refilled);
        }
        self.commit_changing(&ids, tx.commit()).await?;
        self.announce_created();
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
        let schema = self.read_block_schema(opened.schema_id).await?;
        let block_type = schema
            .block_type
            .clone()
            .ok_or_else(|| StoreError::Corrupt("schema without type".into()))?;
        self.validate_data_without(&schema, &opened.data, &opened.refs, &opened.sealed)?;
        let copy = Uuid::new_v4();
        let document = NewDocument {
            id: copy,
            name: name.to_owned(),
            is_anonymous: false,
            type_name: block_type.name,
        };
        let version = opened.restored(&schema, author);
        self.insert_document(document, version, None).await?;
        self.read_block_document(copy, false).await
    }

    /// Inserts a new document and its first version in one transaction (on SQLite, a
    /// savepoint in the group commit's transaction), with `record` (an audit record) when
    /// given. Returns the document as written (the row a read of it would load) when it
    /// has no references; with references, a caller reads it back to resolve them.
    pub(super) async fn insert_document(
        &self,
        document: NewDocument,
        version: NewVersion<'_>,
        record: Option<&crate::store::NewAuditRecord>,
    ) -> Result<Option<TreeDoc>> {
        // A new document changes no tree, but the counts per type.
        let id = document.id;
        if let Some((batch, written)) = self.prepare_create(&document, &version, record)? {
            let done = match &self.groups {
                Some(groups) => self.create_prepared(groups, id, batch).await?,
                None => self.create_in_one_statement(id, batch).await?,
            };
            if done {
                return Ok(Some(written));
            }
        }
        let (worn, answer) = match &self.groups {
            Some(groups) => {
                let mut slot = groups.write().await?;
                let mut tx = slot.savepoint().await?;
                let written = self
                    .insert_document_in(&mut tx, document, version, record, Create::Checked)
                    .await?;
                tx.commit().await?;
                self.commit_changing(&[id], slot.commit()).await?;
                written
            }
            None => {
                // With the key confirmed by the version's insert; once more with the key
                // checked first when another process retired it meanwhile (the failed
                // statement ended the first transaction, rolled back here).
                let mut tx = self.write.begin().await?;
                let written = match self
                    .insert_document_in(
                        &mut tx,
                        document.clone(),
                        version.clone(),
                        record,
                        Create::Guarded,
                    )
                    .await
                {
                    Err(e) if e.is_inactive_key_guard() => {
                        self.forget_reserved();
                        tx.rollback().await?;
                        tx = self.write.begin().await?;
                        self.insert_document_in(&mut tx, document, version, record, Create::Checked)
                            .await?
                    }
                    written => written?,
                };
                self.commit_changing(&[id], tx.commit()).await?;
                self.announce_created();
                written
            }
        };
        if let Some((key, used)) = worn {
            self.after_refill(key, used).await;
        }
        Ok(answer)
    }

    /// Inside a write: the document, its first version, its event and (when given) the
    /// request's audit record. Returns the data key refilled and its encryption count (for
    /// the rotation check), and the document as written when it has no references (not
    /// for an import).
    pub(super) async fn insert_document_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        document: NewDocument,
        version: NewVersion<'_>,
        record: Option<&crate::store::NewAuditRecord>,
        mode: Create,
    ) -> Result<(Option<(Uuid, i64)>, Option<TreeDoc>)> {
        let id = document.id;
        let schema = version.schema;
        let answer = mode != Create::Import && version.refs.is_empty();
        let now = now_micros();
        let event = created(&document, schema)?;
        // The document, its version, references, event and audit record run as one batch:
        // new rows with their values, none read by another (PostgreSQL's foreign keys are
        // checked at the end of the joined statement).
        let mut batch = Batch::independent();
        let event = self.created_event(event, version.author);
        batch.push_unique(
            document_statement(&document, schema, now),
            "Block already exists",
        );
        if self.backend == Backend::Postgres {
            // The name first, as its own statement, before the data key's share lock: a
            // create waiting for an import's uncommitted name holds no lock that import
            // may need next (a refill of the key's block).
            batch.run(self, tx).await?;
        }
        batch.push_failpoint(self, "create_after_document");
        let written = self
            .write_version(tx, id, 1, version, &mut batch, mode == Create::Guarded)
            .await?;
        batch.push(event);
        if let Some(record) = record {
            batch.push(self.audit_insert(std::slice::from_ref(record))?);
        }
        batch.run(self, tx).await?;
        self.check_failpoint("create_before_commit")?;
        let answer =
            answer.then(|| written_doc(&document, schema, now, written.data, written.sealed));
        Ok((written.worn, answer))
    }

    /// A create prepared whole before it writes, when it has no references (their checks
    /// read the store) and its secrets can be sealed under the key this process holds a
    /// block of encryptions of. The key is confirmed active by the version's insert itself
    /// ([`VersionRow::insert`]). `None`: the create takes the general path
    /// ([`Self::insert_document_in`]). On SQLite it runs as one savepoint of the write
    /// group ([`Self::create_prepared`]); on PostgreSQL as one statement
    /// ([`Self::create_in_one_statement`]).
    fn prepare_create(
        &self,
        document: &NewDocument,
        version: &NewVersion<'_>,
        record: Option<&crate::store::NewAuditRecord>,
    ) -> Result<Option<(Batch, TreeDoc)>> {
        let Some(paths) = version.paths.clone() else {
            return Ok(None);
        };
        if !version.refs.is_empty() || !version.kept.is_empty() {
            return Ok(None);
        }
        let schema = version.schema;
        let mut data = version.data.clone();
        let locations = locations_to_seal(&data, paths, &[])?;
        let (sealed, key_id) = if locations.is_empty() {
            (Vec::new(), None)
        } else {
            let Some(key) = self
                .take_reserved(locations.len() as i64)
                .and_then(|id| self.cached_key(id))
            else {
                return Ok(None);
            };
            (
                seal_secrets(&mut data, &locations, document.id, &key)?,
                Some(key.id()),
            )
        };
        check_document_size(&data)?;
        let now = now_micros();
        let mut batch = Batch::independent();
        let document_row = document_statement(document, schema, now);
        let document_row = match self.backend {
            // SQLite checks each foreign key as its statement runs: the document first.
            Backend::Sqlite => {
                batch.push_unique(document_row, "Block already exists");
                None
            }
            Backend::Postgres => Some(document_row),
        };
        batch.push_failpoint(self, "create_after_document");
        batch.push(
            VersionRow {
                id: document.id,
                number: 1,
                schema_id: schema.id,
                data: &data,
                sealed: &sealed,
                key_id,
                refs: &[],
                author: version.author,
            }
            .insert(key_id.map(|_| self.for_share())),
        );
        batch.push_failpoint(self, "after_version");
        batch.push_failpoint(self, "after_references");
        batch.push(self.created_event(created(document, schema)?, version.author));
        if let Some(record) = record {
            batch.push(self.audit_insert(std::slice::from_ref(record))?);
        }
        if let Some(document_row) = document_row {
            // Last, as the joined statement's main query, which PostgreSQL runs before its
            // `with` queries (checking foreign keys at the end): the name is taken before
            // the key's share lock, as the general path takes it (see
            // [`Self::insert_document_in`]).
            batch.push_unique(document_row, "Block already exists");
        }
        Ok(Some((
            batch,
            written_doc(document, schema, now, data, sealed),
        )))
    }

    /// On PostgreSQL, runs a create [`Self::prepare_create`] made as one statement: its own
    /// transaction, one round trip. `false`: nothing was written, because the key it
    /// sealed under is no longer the active one; the create takes the general path.
    async fn create_in_one_statement(&self, id: Uuid, mut batch: Batch) -> Result<bool> {
        self.check_failpoint("create_before_commit")?;
        let mut conn = self.write.acquire().await?;
        let statement = async { batch.run(self, &mut conn).await.map(drop) };
        match self.commit_changing(&[id], statement).await {
            Ok(()) => {
                self.announce_created();
                Ok(true)
            }
            Err(e) if e.is_inactive_key_guard() => {
                self.forget_reserved();
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Runs a create [`Self::prepare_create`] made in the open write group: queued for the
    /// group's runner, which joins it with other creates waiting (one hand-off to the write
    /// connection for them all). `false`: nothing was written, because the key it sealed
    /// under is no longer the active one (another process rotated it); the create takes the
    /// general path, which refills under the new key.
    async fn create_prepared(
        &self,
        groups: &super::super::group::WriteGroups,
        id: Uuid,
        batch: Batch,
    ) -> Result<bool> {
        // Before the batch rather than between its statements: a failure here leaves what a
        // failure before the commit leaves, nothing.
        self.check_failpoint("create_before_commit")?;
        match self.commit_changing(&[id], groups.run(batch)).await {
            Ok(()) => Ok(true),
            Err(e) if e.is_inactive_key_guard() => {
                self.forget_reserved();
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

/// The insert of a new document's row (its first version's number, 1), created `now`.
fn document_statement(document: &NewDocument, schema: &BlockSchema, now: i64) -> Statement {
    Statement {
        sql: "insert into block_document (id, created, updated, name, is_anonymous, block_type_id, block_type_name, block_schema_id, version) \
              values ($1, $2, $2, $3, $4, $5, $6, $7, 1)"
            .to_owned(),
        params: vec![
            document.id.to_string().into(),
            now.into(),
            document.name.as_str().into(),
            i64::from(document.is_anonymous).into(),
            schema.block_type_id.to_string().into(),
            document.type_name.as_str().into(),
            schema.id.to_string().into(),
        ],
    }
}

/// The event of `document`'s creation.
fn created<'a>(document: &'a NewDocument, schema: &'a BlockSchema) -> Result<CreatedDocument<'a>> {
    let type_slug = schema
        .block_type
        .as_ref()
        .map(|t| t.slug.as_str())
        .ok_or_else(|| StoreError::Corrupt("schema without type".into()))?;
    Ok(CreatedDocument {
        id: document.id,
        type_slug,
        name: &document.name,
        is_anonymous: document.is_anonymous,
        schema_id: schema.id,
    })
}

/// The row a read of a document just created without references would load: its answer
/// is resolved from it rather than read back.
fn written_doc(
    document: &NewDocument,
    schema: &BlockSchema,
    now: i64,
    data: Map<String, Value>,
    sealed: Vec<SealedField>,
) -> TreeDoc {
    TreeDoc {
        id: document.id,
        version: 1,
        type_updated: schema
            .block_type
            .as_ref()
            .map_or(0, |t| t.updated.timestamp_micros()),
        created: now,
        updated: now,
        name: document.name.clone(),
        is_anonymous: document.is_anonymous,
        block_type_name: Some(document.type_name.clone()),
        plain_bytes: to_json(&data).len(),
        sealed_bytes: to_json(&sealed).len(),
        data,
        secrets: sealed,
        schema: Arc::new(schema.clone()),
    }
}

/// How [`Store::insert_document_in`] writes a create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Create {
    /// The data key checked before the version is written; the document as written is
    /// returned for the answer.
    Checked,
    /// [`Create::Checked`], with the key confirmed by the version's insert instead (see
    /// [`Store::write_version`]).
    Guarded,
    /// One document of an import: the key checked first, nothing kept for an answer.
    Import,
}
