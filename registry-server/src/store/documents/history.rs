//! The stored versions of a document: history, rollback, retention.

use std::collections::BTreeMap;

use block_types::secret_fields::obfuscate;
use block_types::{EventKind, references};
use serde_json::{Map, Value};
use sqlx::Row;
use uuid::Uuid;

use super::NewVersion;
use super::OpenedVersion;
use super::WriteOutcome;
use super::check_expected;
use super::mask_paths;
use super::{Result, Store, StoreError, json_col, parse_uuid, to_time, uuid_col};
use block_types::model::{BlockSchema, VersionInfo};

impl OpenedVersion {
    /// A new version equal to this one (data, sealed secrets, references) under `schema`,
    /// written by `author`: what a rollback or a copy writes.
    pub(super) fn restored(self, schema: &BlockSchema, author: Option<Uuid>) -> NewVersion<'_> {
        NewVersion {
            data: self.data,
            refs: self.refs,
            schema,
            kept: self.sealed,
            paths: None,
            author,
        }
    }
}

impl Store {
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
        let opened = self.open_version(&mut tx, id, version).await?;
        let schema = self.schema_by_id(&mut *tx, opened.schema_id).await?;
        let version = opened.restored(&schema, author);
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

    pub(super) async fn retention_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ) -> Result<Option<u32>> {
        self.retention_on(tx).await
    }

    pub(super) async fn retention_on(&self, conn: &mut sqlx::AnyConnection) -> Result<Option<u32>> {
        self.count_query();
        Ok(crate::store::read_setting(conn, RETENTION)
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
        crate::store::write_setting(&mut tx, RETENTION, &keep).await?;
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
pub(super) const RETENTION: &str = "retention";
