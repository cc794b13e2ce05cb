//! Document updates (merge, secret echoes, schema moves, optimistic concurrency) and
//! deletes.

use block_types::model::BlockDocumentUpdate;
use block_types::secret_fields::{normalized, restore, secret_paths_of};
use block_types::{EventKind, FieldError};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::NewVersion;
use super::OpenedVersion;
use super::WriteOutcome;
use super::check_expected;
use super::split_data_references;
use super::surviving_secrets;
use super::unknown_schema_is_invalid;
use super::{Result, Rights, Store, StoreError, now_micros};
use crate::store::batch::{Batch, Statement};

impl Store {
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
