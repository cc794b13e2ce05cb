//! What document writes share: the data checked against its schema, references and the
//! tree's bounds, the document locked, and a version written with its secrets sealed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use block_types::FieldError;
use block_types::model::BlockSchema;
use block_types::secret_fields::{SecretPath, secret_locations};
use serde_json::{Map, Value};
use sqlx::Row;
use uuid::Uuid;

use super::MAX_SEALED_VALUES;
use super::MAX_SECRET_BYTES;
use super::MAX_TREE_DOCUMENTS;
use super::NewVersion;
use super::OpenedVersion;
use super::check_document_size;
use super::not_found;
use super::tree_too_large;
use super::{
    Backend, Result, Store, StoreError, json_col, now_micros, parse_uuid, to_json, uuid_col,
};
use crate::crypto::{DataKey, SealedField, open_secrets, seal_secrets};
use crate::store::batch::{Batch, Statement};
use crate::store::sql::Sql;

impl Store {
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
    pub(super) async fn write_version(
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
}

/// The places in `data` a version seals: the schema's secret `paths` and the `kept` values
/// (once sealed, a kept value stays sealed: a schema deleted since cannot unseal it),
/// bounded in number and, for new values, in size.
pub(super) fn locations_to_seal(
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

/// A version row about to be inserted.
pub(super) struct VersionRow<'a> {
    pub(super) id: Uuid,
    pub(super) number: i64,
    pub(super) schema_id: Uuid,
    /// The data with its secrets taken out.
    pub(super) data: &'a Map<String, Value>,
    pub(super) sealed: &'a [SealedField],
    pub(super) key_id: Option<Uuid>,
    pub(super) refs: &'a [(String, Uuid)],
    pub(super) author: Option<Uuid>,
}

impl VersionRow<'_> {
    /// The insert. With a `guard` (the lock clause, ` for share` on PostgreSQL), it also
    /// confirms that `key_id` is the active data key as it runs, and keeps it so until the
    /// commit: SQLite's write transaction holds the database, PostgreSQL's share lock holds
    /// the key's row against a rotation. When the key is not active the data is null and
    /// the insert fails (the column is not null), which
    /// [`StoreError::is_inactive_key_guard`] recognises.
    pub(super) fn insert(&self, guard: Option<&str>) -> Statement {
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
pub(super) struct WrittenVersion {
    pub(super) data: Map<String, Value>,
    pub(super) sealed: Vec<SealedField>,
    pub(super) worn: Option<(Uuid, i64)>,
}
