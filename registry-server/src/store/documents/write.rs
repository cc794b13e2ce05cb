//! Document writes: create, import, duplicate, update (merge, secret echoes, schema
//! moves, optimistic concurrency) and delete.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use block_types::model::{BlockDocument, BlockDocumentCreate, BlockDocumentUpdate, BlockSchema};
use block_types::secret_fields::{
    SecretPath, normalized, restore, secret_locations, secret_paths_of,
};
use block_types::{EventKind, FieldError};
use serde_json::{Map, Value};
use sqlx::Row;
use uuid::Uuid;

use super::MAX_IMPORT;
use super::MAX_SEALED_VALUES;
use super::MAX_SECRET_BYTES;
use super::MAX_TREE_DOCUMENTS;
use super::NewDocument;
use super::NewVersion;
use super::OpenedVersion;
use super::Tree;
use super::TreeDoc;
use super::WriteOutcome;
use super::check_document_size;
use super::check_expected;
use super::not_found;
use super::split_data_references;
use super::surviving_secrets;
use super::tree_too_large;
use super::unknown_schema_is_invalid;
use super::within_document;
use super::{
    Backend, Result, Rights, Store, StoreError, json_col, now_micros, parse_uuid, to_json, uuid_col,
};
use crate::crypto::{DataKey, SealedField, open_secrets, seal_secrets};
use crate::store::batch::{Batch, Statement};
use crate::store::events::CreatedDocument;
use crate::store::sql::Sql;

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

    /// Runs a create [`Self::prepare_create`] made, as one savepoint of the open write
    /// group: one hand-off to the write connection. `false`: nothing was written, because
    /// the key it sealed under is no longer the active one (another process rotated it);
    /// the create takes the general path, which refills under the new key.
    async fn create_prepared(
        &self,
        groups: &super::super::group::WriteGroups,
        id: Uuid,
        batch: Batch,
    ) -> Result<bool> {
        let mut slot = groups.write().await?;
        // Before the batch rather than between its statements: a failure here leaves what a
        // failure before the commit leaves, nothing.
        self.check_failpoint("create_before_commit")?;
        match slot.run_batch(self, batch).await {
            Ok(()) => {}
            Err(e) if e.is_inactive_key_guard() => {
                self.forget_reserved();
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        self.commit_changing(&[id], slot.commit()).await?;
        Ok(true)
    }

    pub(super) fn validate_data(
        &self,
        schema: &BlockSchema,
        data: &Map<String, Value>,
        refs: &[(String, Uuid)],
    ) -> Result<()> {
        self.validate_data_without(schema, data, refs, &[])
    }

    /// [`Self::validate_data`] without the values at `kept` (stored secrets the write keeps,
    /// validated when they were written): no answer depends on a secret's value.
    pub(super) fn validate_data_without(
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
    /// `guard`: when this process holds encryptions of a data key, the version's insert
    /// confirms that key is still active (saving a statement); a key retired meanwhile
    /// fails the write with [`StoreError::is_inactive_key_guard`], for the caller to run
    /// it again without the guard.
    async fn write_version(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id: Uuid,
        number: i64,
        version: NewVersion<'_>,
        batch: &mut Batch,
        guard: bool,
    ) -> Result<WrittenVersion> {
        let NewVersion {
            mut data,
            refs,
            schema,
            kept,
            paths,
            author,
        } = version;
        self.check_references(tx, id, &refs).await?;
        let paths = match paths {
            Some(paths) => paths,
            None => self.secret_paths(tx, schema).await?,
        };
        let locations = locations_to_seal(&data, paths, &kept)?;
        // The key the secrets are sealed under, and (when this write reserved a new block)
        // the key's encryption total for the rotation check.
        let reserved = match guard {
            true if !locations.is_empty() => self
                .take_reserved(locations.len() as i64)
                .and_then(|id| self.cached_key(id)),
            _ => None,
        };
        let guarded = reserved.is_some();
        let (sealed, key_id, worn) = if locations.is_empty() {
            (Vec::new(), None, None)
        } else {
            let (key, total) = match reserved {
                // Confirmed active by the version's insert ([`VersionRow::insert`]).
                Some(key) => (key, None),
                None => self.reserve_active_key(tx, locations.len()).await?,
            };
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
        if number > 1 {
            // A new document has no reference rows yet.
            batch.push(Statement {
                sql: "delete from block_document_reference where parent_block_document_id = $1"
                    .to_owned(),
                params: vec![id.to_string().into()],
            });
        }
        batch.push(
            VersionRow {
                id,
                number,
                schema_id: schema.id,
                data: &data,
                sealed: &sealed,
                key_id,
                refs: &refs,
                author,
            }
            .insert(guarded.then(|| self.for_share())),
        );
        batch.push_failpoint(self, "after_version");
        for (field, child) in &refs {
            batch.push(Statement {
                sql: "insert into block_document_reference (parent_block_document_id, name, reference_block_document_id) values ($1, $2, $3)"
                    .to_owned(),
                params: vec![
                    id.to_string().into(),
                    field.as_str().into(),
                    child.to_string().into(),
                ],
            });
        }
        batch.push_failpoint(self, "after_references");
        if !refs.is_empty() {
            // The size check reads the new reference rows.
            batch.run(self, tx).await?;
            self.check_tree_size(tx, id).await?;
        }
        // A first version leaves nothing to prune, whatever the retention.
        if number > 1
            && let Some(keep) = self.retention_in(tx).await?
        {
            batch.push(Statement {
                sql: "delete from block_document_version where block_document_id = $1 and version <= $2"
                    .to_owned(),
                params: vec![
                    id.to_string().into(),
                    (number - i64::from(keep.max(1))).into(),
                ],
            });
        }
        Ok(WrittenVersion { data, sealed, worn })
    }

    /// Refuses a write after which the document's resolved tree would expand beyond
    /// [`MAX_TREE_DOCUMENTS`] (shared children count once per path, as a read expands them).
    pub(super) async fn check_tree_size(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id: Uuid,
    ) -> Result<()> {
        self.count_query();
        let rows = sqlx::query(&self.tree_edges_sql())
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
    pub(super) async fn check_references(
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
        sql.push(&format!(
            " union select r.reference_block_document_id from {}) select 1 from reach where id = ",
            self.references_of("reach.id")
        ));
        sql.bind_text(id.to_string());
        self.count_query();
        if sql.query().fetch_optional(&mut **tx).await?.is_some() {
            return Err(StoreError::Cycle(
                "Cannot create block document reference: it would introduce a cycle".to_owned(),
            ));
        }
        Ok(())
    }

    /// Every reference edge below the document `$1`, as `parent, child`.
    pub(crate) fn tree_edges_sql(&self) -> String {
        format!(
            "with recursive e(parent, name, child) as (\
             select parent_block_document_id, name, reference_block_document_id from block_document_reference \
             where parent_block_document_id = $1 \
             union select r.parent_block_document_id, r.name, r.reference_block_document_id \
             from {}) \
             select parent, child from e",
            self.references_of("e.child")
        )
    }

    /// The recursive step of a walk down the reference graph: the reference rows `r` whose
    /// parent is `parent` (a column of the walk's working table, named in the `from` clause
    /// this returns). On PostgreSQL each step looks its rows up by key as a lateral
    /// subquery that `offset 0` keeps from being flattened, as the tree query does: with a
    /// new store's statistics (before its first analyze) the planner otherwise merged the
    /// whole reference index on every step, a cost that grew with the store (12 ms a create
    /// with references at 290,000 documents, 140 ms more with JIT).
    fn references_of(&self, parent: &str) -> String {
        let walk = parent.split('.').next().unwrap_or(parent);
        match self.backend {
            Backend::Sqlite => format!(
                "block_document_reference r join {walk} on r.parent_block_document_id = {parent}"
            ),
            Backend::Postgres => format!(
                "{walk} cross join lateral (select * from block_document_reference r \
                 where r.parent_block_document_id = {parent} offset 0) r"
            ),
        }
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

    /// What a write of `schema` seals ([`Store::schema_secret_paths`]), with every schema
    /// of its type.
    pub(super) async fn secret_paths(
        &self,
        conn: &mut sqlx::AnyConnection,
        schema: &BlockSchema,
    ) -> Result<Vec<SecretPath>> {
        let ids = self.type_schema_ids(conn, schema.block_type_id).await?;
        self.schema_secret_paths(conn, schema, &ids).await
    }

    /// The plain data (secrets opened) and references of a stored version.
    pub(super) async fn open_version(
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
    pub(super) async fn commit_next_version(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Any>,
        id: Uuid,
        current_version: i64,
        version: NewVersion<'_>,
        kind: EventKind,
    ) -> Result<WriteOutcome> {
        let next = current_version + 1;
        let author = version.author;
        // The document, its version, references and event run as one batch.
        let mut batch = Batch::default();
        batch.push(Statement {
            sql: "update block_document set version = $1, updated = $2, block_schema_id = $3 where id = $4 and version = $5"
                .to_owned(),
            params: vec![
                next.into(),
                now_micros().into(),
                version.schema.id.to_string().into(),
                id.to_string().into(),
                current_version.into(),
            ],
        });
        let worn = self
            .write_version(&mut tx, id, next, version, &mut batch, false)
            .await?
            .worn;
        batch.push(self.document_event(kind, id, author));
        batch.run(self, &mut tx).await?;
        self.announce_change(&mut tx, &[id]).await?;
        self.check_failpoint("update_before_commit")?;
        self.commit_changing(&[id], tx.commit()).await?;
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
        self.commit_changing(&[id], tx.commit()).await?;
        Ok(())
    }
}

/// The places in `data` a version seals: the schema's secret `paths` and the `kept` values
/// (once sealed, a kept value stays sealed: a schema deleted since cannot unseal it),
/// bounded in number and, for new values, in size.
fn locations_to_seal(
    data: &Map<String, Value>,
    mut paths: Vec<SecretPath>,
    kept: &[Vec<String>],
) -> Result<Vec<Vec<String>>> {
    paths.extend(kept.iter().map(|segments| SecretPath {
        segments: segments.clone(),
        wildcard: false,
    }));
    let locations = secret_locations(data, &paths);
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
        let size = block_types::secret_fields::get_path(data, location)
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
    Ok(locations)
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

/// A version row about to be inserted.
struct VersionRow<'a> {
    id: Uuid,
    number: i64,
    schema_id: Uuid,
    /// The data with its secrets taken out.
    data: &'a Map<String, Value>,
    sealed: &'a [SealedField],
    key_id: Option<Uuid>,
    refs: &'a [(String, Uuid)],
    author: Option<Uuid>,
}

impl VersionRow<'_> {
    /// The insert. With a `guard` (the lock clause, ` for share` on PostgreSQL), it also
    /// confirms that `key_id` is the active data key as it runs, and keeps it so until the
    /// commit: SQLite's write transaction holds the database, PostgreSQL's share lock holds
    /// the key's row against a rotation. When the key is not active the data is null and
    /// the insert fails (the column is not null), which
    /// [`StoreError::is_inactive_key_guard`] recognises.
    fn insert(&self, guard: Option<&str>) -> Statement {
        let ref_map: BTreeMap<&str, String> = self
            .refs
            .iter()
            .map(|(f, id)| (f.as_str(), id.to_string()))
            .collect();
        let data = match guard {
            Some(lock) => format!(
                "(select $5 where exists (select 1 from data_key where id = $7 and state = 'active'{lock}))"
            ),
            None => "$5".to_owned(),
        };
        Statement {
            sql: format!(
                "insert into block_document_version (block_document_id, version, created, block_schema_id, data, secrets, key_id, refs, token_id) \
                 values ($1, $2, $3, $4, {data}, $6, $7, $8, $9)"
            ),
            params: vec![
                self.id.to_string().into(),
                self.number.into(),
                now_micros().into(),
                self.schema_id.to_string().into(),
                to_json(self.data).into(),
                to_json(&self.sealed).into(),
                self.key_id.map(|k| k.to_string()).into(),
                to_json(&ref_map).into(),
                self.author.map(|a| a.to_string()).into(),
            ],
        }
    }
}

/// What [`Store::write_version`] wrote: the version's plain data and sealed values, and
/// the data key it refilled with that key's encryption count (for the rotation check).
struct WrittenVersion {
    data: Map<String, Value>,
    sealed: Vec<SealedField>,
    worn: Option<(Uuid, i64)>,
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
