//! Keys: the master key check at open, the data keys, rotation, re-encryption and
//! changing the master key.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sqlx::{AnyPool, Row};
use uuid::Uuid;

use block_types::EventKind;
use block_types::access::{KeyInfo, KeyStatus};

use super::events::Subject;
use super::{Keyring, MasterKeySource, Result, Store, StoreError, now_micros, parse_uuid, to_json};
use crate::crypto::{CryptoError, DataKey, KdfParams, MasterKey, SealedField, open_secrets};

const KEY_CHECK: &str = "key_check";
const KDF_PARAMS: &str = "kdf_params";

async fn metadata(pool: &AnyPool, key: &str) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("select value from server_metadata where key = $1")
            .bind(key)
            .fetch_optional(pool)
            .await?,
    )
}

/// Turns the configured source into the master key and checks it against the store,
/// recording the key-check value (and passphrase parameters) on a new store. When several
/// replicas open a new store at once, the first record wins and the others verify it.
pub(super) async fn resolve_master_key(
    pool: &AnyPool,
    source: MasterKeySource,
) -> Result<MasterKey> {
    let master = match source {
        MasterKeySource::Key(key) => {
            if metadata(pool, KDF_PARAMS).await?.is_some() {
                return Err(StoreError::Config(
                    "this store's master key comes from a passphrase; give the passphrase (BLOCKS_PASSPHRASE), not a key".to_owned(),
                ));
            }
            key
        }
        MasterKeySource::Passphrase(passphrase) => {
            let stored = metadata(pool, KDF_PARAMS).await?;
            let params = match stored {
                Some(text) => serde_json::from_str::<KdfParams>(&text)
                    .map_err(|e| StoreError::Corrupt(format!("kdf parameters: {e}")))?,
                None => {
                    if metadata(pool, KEY_CHECK).await?.is_some() {
                        return Err(StoreError::Config(
                            "this store's master key is a key file or BLOCKS_MASTER_KEY, not a passphrase".to_owned(),
                        ));
                    }
                    let params = KdfParams::generate()?;
                    sqlx::query("insert into server_metadata (key, value) values ($1, $2) on conflict do nothing")
                        .bind(KDF_PARAMS)
                        .bind(to_json(&params))
                        .execute(pool)
                        .await?;
                    let text = metadata(pool, KDF_PARAMS).await?.unwrap_or_default();
                    serde_json::from_str(&text)
                        .map_err(|e| StoreError::Corrupt(format!("kdf parameters: {e}")))?
                }
            };
            tokio::task::spawn_blocking(move || MasterKey::derive(&passphrase, &params))
                .await
                .map_err(|e| StoreError::Config(format!("key derivation did not finish: {e}")))??
        }
    };
    if metadata(pool, KEY_CHECK).await?.is_none() {
        sqlx::query(
            "insert into server_metadata (key, value) values ($1, $2) on conflict do nothing",
        )
        .bind(KEY_CHECK)
        .bind(STANDARD.encode(master.key_check()?))
        .execute(pool)
        .await?;
    }
    let check = metadata(pool, KEY_CHECK).await?.unwrap_or_default();
    let check = STANDARD
        .decode(check)
        .map_err(|_| StoreError::Corrupt("the key-check value is not base64".to_owned()))?;
    master.verify(&check)?;
    Ok(master)
}

impl Store {
    /// Loads every data key that can still decrypt, creating the first one on a new store.
    pub(super) async fn init_keys(&self) -> Result<()> {
        self.count_query();
        let active: Option<String> =
            sqlx::query_scalar("select id from data_key where state = 'active'")
                .fetch_optional(&self.write)
                .await?;
        if active.is_none() {
            self.insert_active_key(None, None).await?;
        }
        self.reload_keys().await
    }

    /// Unwraps every stored data key that is not destroyed into the keyring.
    pub(super) async fn reload_keys(&self) -> Result<()> {
        self.count_query();
        let rows = sqlx::query("select id, wrapped from data_key where state <> 'destroyed'")
            .fetch_all(&self.write)
            .await?;
        let master = self.master_key();
        let mut ring = Keyring::default();
        for row in rows {
            let id = parse_uuid(&row.try_get::<String, _>("id")?)?;
            let wrapped: Vec<u8> = row.try_get("wrapped")?;
            ring.keys
                .insert(id, Arc::new(master.unwrap_key(id, &wrapped)?));
        }
        *self.write_lock(&self.keyring) = ring;
        Ok(())
    }

    pub(crate) fn master_key(&self) -> Arc<MasterKey> {
        self.read_lock(&self.master).clone()
    }

    /// Makes a new active data key, retiring `retire` (the key believed active). Returns
    /// `false` when another writer rotated first.
    /// Makes a new data key the active one, retiring `retire` (a rotation by `author`, in
    /// the change feed) when given.
    async fn insert_active_key(&self, retire: Option<Uuid>, author: Option<Uuid>) -> Result<bool> {
        let key = DataKey::generate()?;
        let mut tx = self.write.begin().await?;
        // Wrap under the master key the store holds now: another process may have changed
        // it since this one opened the store.
        let master = self.master_key();
        master
            .verify(&self.lock_key_check(&mut tx).await?)
            .map_err(|_| {
                StoreError::Config(
                    "the master key was changed by another process; restart with the new key"
                        .to_owned(),
                )
            })?;
        let wrapped = master.wrap(&key)?;
        if let Some(old) = retire {
            self.count_query();
            let retired = sqlx::query(
                "update data_key set state = 'retired' where id = $1 and state = 'active'",
            )
            .bind(old.to_string())
            .execute(&mut *tx)
            .await?;
            if retired.rows_affected() == 0 {
                return Ok(false);
            }
        }
        self.count_query();
        let inserted = sqlx::query("insert into data_key (id, created, wrapped, state, encryptions) values ($1, $2, $3, 'active', 0)")
            .bind(key.id().to_string())
            .bind(now_micros())
            .bind(wrapped)
            .execute(&mut *tx)
            .await;
        match inserted {
            Ok(_) => {}
            // Another replica created the first key at the same moment.
            Err(e) if StoreError::is_unique_violation(&e) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        if retire.is_some() {
            let subject = Subject {
                key: Some(key.id()),
                ..Subject::default()
            };
            self.record_event(&mut tx, EventKind::KeyRotationStarted, subject, author)
                .await?;
        }
        tx.commit().await?;
        if retire.is_some() {
            self.feed_committed();
        }
        self.write_lock(&self.keyring)
            .keys
            .insert(key.id(), Arc::new(key));
        Ok(true)
    }

    /// Reads and locks (PostgreSQL) the key-check value inside a transaction.
    pub(crate) async fn lock_key_check(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ) -> Result<Vec<u8>> {
        self.count_query();
        let check: String = sqlx::query_scalar(&format!(
            "select value from server_metadata where key = $1{}",
            self.for_update()
        ))
        .bind(KEY_CHECK)
        .fetch_one(&mut **tx)
        .await?;
        STANDARD
            .decode(check)
            .map_err(|_| StoreError::Corrupt("the key-check value is not base64".to_owned()))
    }

    /// Inside a write: the active data key, and `count` encryptions taken from it.
    ///
    /// Encryptions are counted in the database in blocks reserved ahead (so a key is
    /// retired before it reaches the threshold, never after). A write that can take its
    /// count from this process's block only reads the active key `for share` (PostgreSQL):
    /// writers do not queue on a counter row, and a rotation waits until the writes that
    /// use the old key have committed. A write that needs a new block takes it with one
    /// `update … returning`; it returns the key's new total for the rotation check.
    pub(crate) async fn reserve_active_key(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        count: usize,
    ) -> Result<(Arc<DataKey>, Option<i64>)> {
        let count = count as i64;
        let block = self.block_size();
        let mut attempts = 0;
        loop {
            // Take from this process's block first, then confirm (and share-lock) that its
            // key is still the active one. A rotated key returns no row and locks nothing, so
            // the refill below never upgrades a lock this transaction already holds.
            if let Some(expected) = self.take_reserved(count) {
                self.count_query();
                let still_active: Option<String> = sqlx::query_scalar(&format!(
                    "select id from data_key where id = $1 and state = 'active'{}",
                    self.for_share()
                ))
                .bind(expected.to_string())
                .fetch_optional(&mut **tx)
                .await?;
                if still_active.is_some() {
                    return Ok((self.key(tx, expected).await?, None));
                }
            }
            // A new block; on PostgreSQL a rotation committing while this waits leaves it
            // matching nothing, and the next attempt sees the new active key.
            self.count_query();
            let row = sqlx::query(
                "update data_key set encryptions = encryptions + $1 where state = 'active' returning id, encryptions",
            )
            .bind(block + count)
            .fetch_optional(&mut **tx)
            .await?;
            let Some(row) = row else {
                attempts += 1;
                if attempts > 5 {
                    return Err(StoreError::Corrupt("no active data key".to_owned()));
                }
                continue;
            };
            let id = parse_uuid(&row.try_get::<String, _>("id")?)?;
            let total: i64 = row.try_get("encryptions")?;
            // The block becomes usable by other writes only once this one commits (see
            // `after_refill`): a rolled-back refill was never counted.
            return Ok((self.key(tx, id).await?, Some(total)));
        }
    }

    /// Encryptions reserved per refill: small against the rotation threshold.
    fn block_size(&self) -> i64 {
        (self.config.key_rotation_threshold / 64).clamp(1, 4096)
    }

    /// Takes `count` encryptions from this process's block, if it has enough; returns the
    /// block's key.
    pub(crate) fn take_reserved(&self, count: i64) -> Option<Uuid> {
        let mut reservation = self.reservation.lock();
        if reservation.1 >= count {
            reservation.1 -= count;
            Some(reservation.0)
        } else {
            None
        }
    }

    /// Forgets this process's block of encryptions after a write found its key retired:
    /// the next write refills under the active key instead of trying the old one again.
    /// (A block another write refilled meanwhile is forgotten too; that costs one refill.)
    pub(crate) fn forget_reserved(&self) {
        self.reservation.lock().1 = 0;
    }

    /// The data key with this id, unwrapping it when this process has not seen it yet.
    pub(crate) async fn key(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id: Uuid,
    ) -> Result<Arc<DataKey>> {
        if let Some(key) = self.read_lock(&self.keyring).keys.get(&id) {
            return Ok(key.clone());
        }
        self.count_query();
        let wrapped: Option<Vec<u8>> = sqlx::query_scalar(
            "select wrapped from data_key where id = $1 and state <> 'destroyed'",
        )
        .bind(id.to_string())
        .fetch_optional(&mut **tx)
        .await?
        .flatten();
        let wrapped = wrapped.ok_or(StoreError::Crypto(CryptoError::Tampered))?;
        let key = Arc::new(self.master_key().unwrap_key(id, &wrapped)?);
        self.write_lock(&self.keyring).keys.insert(id, key.clone());
        Ok(key)
    }

    /// A data key already in the keyring (used on the read path, which never writes).
    pub(crate) fn cached_key(&self, id: Uuid) -> Option<Arc<DataKey>> {
        self.read_lock(&self.keyring).keys.get(&id).cloned()
    }

    /// After a write that reserved a new block has committed: makes the block available
    /// to this process's next writes, and retires the key if the write pushed it past the
    /// rotation threshold. Failures are logged, not returned: the write succeeded, and the
    /// next refill tries the rotation again.
    pub(crate) async fn after_refill(&self, key_id: Uuid, total: i64) {
        if total < self.config.key_rotation_threshold {
            *self.reservation.lock() = (key_id, self.block_size());
        } else {
            // No block of a key about to be retired: the next write refills under the new one.
            tracing::info!(%key_id, total, "data key reached its encryption limit; rotating");
            if let Err(e) = self.insert_active_key(Some(key_id), None).await {
                tracing::error!(%key_id, error = %e, "rotating a worn data key failed");
            }
        }
    }

    /// Starts using a new data key for new writes and retires the current one. Old values
    /// stay readable; [`Self::reencrypt_batch`] moves them to the new key.
    pub async fn rotate_data_key(&self) -> Result<Uuid> {
        self.rotate_data_key_by(None).await
    }

    /// [`Store::rotate_data_key`] by `author` (a token id), for the change feed.
    pub async fn rotate_data_key_by(&self, author: Option<Uuid>) -> Result<Uuid> {
        loop {
            self.count_query();
            let active: String =
                sqlx::query_scalar("select id from data_key where state = 'active'")
                    .fetch_one(&self.write)
                    .await?;
            if self
                .insert_active_key(Some(parse_uuid(&active)?), author)
                .await?
            {
                break;
            }
        }
        self.count_query();
        let active: String = sqlx::query_scalar("select id from data_key where state = 'active'")
            .fetch_one(&self.write)
            .await?;
        parse_uuid(&active)
    }

    /// Re-encrypts up to `batch` document versions sealed under a non-active key. Returns
    /// how many it moved; 0 means none is left. Each version moves in its own short
    /// transaction, so readers and writers keep going, and an interrupted run resumes
    /// where it stopped.
    pub async fn reencrypt_batch(&self, batch: u32) -> Result<u32> {
        self.count_query();
        let rows = sqlx::query(
            "select v.block_document_id, v.version, v.key_id from block_document_version v \
             join data_key k on k.id = v.key_id where k.state <> 'active' limit $1",
        )
        .bind(i64::from(batch))
        .fetch_all(&self.read)
        .await?;
        let mut moved = 0;
        for row in rows {
            let doc = parse_uuid(&row.try_get::<String, _>("block_document_id")?)?;
            let version: i64 = row.try_get("version")?;
            let old_key = parse_uuid(&row.try_get::<String, _>("key_id")?)?;
            if self.reencrypt_version(doc, version, old_key).await? {
                moved += 1;
            }
        }
        Ok(moved)
    }

    async fn reencrypt_version(&self, doc: Uuid, version: i64, old_key: Uuid) -> Result<bool> {
        let mut tx = self.write.begin().await?;
        // Writers lock the document, then the key, then version rows; so does this.
        match self.lock_document(&mut tx, doc).await {
            Ok(_) => {}
            Err(StoreError::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        }
        self.count_query();
        let secrets: Option<String> = sqlx::query_scalar(&format!(
            "select secrets from block_document_version where block_document_id = $1 and version = $2 and key_id = $3{}",
            self.for_update()
        ))
        .bind(doc.to_string())
        .bind(version)
        .bind(old_key.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(secrets) = secrets else {
            return Ok(false);
        };
        let sealed: Vec<SealedField> = serde_json::from_str(&secrets)
            .map_err(|e| StoreError::Corrupt(format!("sealed secrets: {e}")))?;
        let old = self.key(&mut tx, old_key).await?;
        let mut plain = serde_json::Map::new();
        open_secrets(&mut plain, &sealed, doc, |id| {
            (id == old_key).then_some(&*old)
        })?;
        let roots: Vec<Vec<String>> = sealed.iter().map(|s| s.path.clone()).collect();
        let (new_key, total) = self.reserve_active_key(&mut tx, roots.len()).await?;
        let resealed = crate::crypto::seal_secrets(&mut plain, &roots, doc, &new_key)?;
        self.count_query();
        sqlx::query("update block_document_version set secrets = $1, key_id = $2 where block_document_id = $3 and version = $4")
            .bind(to_json(&resealed))
            .bind(new_key.id().to_string())
            .bind(doc.to_string())
            .bind(version)
            .execute(&mut *tx)
            .await?;
        self.announce_change(&mut tx, &[doc]).await?;
        let change = self.changing(&[doc]);
        let committed = tx.commit().await;
        drop(change);
        committed?;
        if let Some(total) = total {
            self.after_refill(new_key.id(), total).await;
        }
        Ok(true)
    }

    /// Re-encrypts every version under a retired key, then destroys the retired keys that
    /// no longer seal anything. Returns the number of versions moved.
    pub async fn reencrypt_all(&self, batch: u32) -> Result<u64> {
        let mut total = 0u64;
        loop {
            let moved = self.reencrypt_batch(batch).await?;
            total += u64::from(moved);
            if moved == 0 {
                break;
            }
        }
        self.destroy_retired_keys().await?;
        Ok(total)
    }

    /// Runs [`Self::reencrypt_all`] as a background task; reads and writes go on meanwhile.
    /// If the process stops, calling it again resumes where it stopped.
    pub fn spawn_reencryption(
        self: &Arc<Self>,
        batch: u32,
    ) -> tokio::task::JoinHandle<Result<u64>> {
        let store = Arc::clone(self);
        tokio::spawn(async move { store.reencrypt_all(batch).await })
    }

    /// Destroys (forgets the wrapped bytes of) retired keys that seal no version.
    pub async fn destroy_retired_keys(&self) -> Result<Vec<Uuid>> {
        let mut tx = self.write.begin().await?;
        self.count_query();
        let ids: Vec<String> = sqlx::query_scalar(
            "update data_key set state = 'destroyed', wrapped = null where state = 'retired' \
             and not exists (select 1 from block_document_version v where v.key_id = data_key.id) returning id",
        )
        .fetch_all(&mut *tx)
        .await?;
        let ids: Vec<Uuid> = ids.iter().map(|s| parse_uuid(s)).collect::<Result<_>>()?;
        for id in &ids {
            let subject = Subject {
                key: Some(*id),
                ..Subject::default()
            };
            self.record_event(&mut tx, EventKind::KeyRotationFinished, subject, None)
                .await?;
        }
        tx.commit().await?;
        if !ids.is_empty() {
            self.feed_committed();
            // Every version was moved off these keys (each move dropped its trees), so
            // this only tells a replica that missed a move to start afresh.
            self.forget_trees(&[]);
            let mut conn = self.write.acquire().await?;
            if let Err(e) = self.announce_change(&mut conn, &[]).await {
                tracing::warn!(error = %e, "could not tell the other replicas that retired keys were destroyed; a tree they kept that no longer opens is read again");
            }
        }
        let mut ring = self.write_lock(&self.keyring);
        for id in &ids {
            ring.keys.remove(id);
        }
        Ok(ids)
    }

    /// How far a re-encryption is: (the active key, versions sealed under it, versions
    /// still sealed under a retired key). One pass over the versions' key index, much
    /// lighter than [`Self::key_status`], for a page that polls it while the re-encryption
    /// runs.
    pub async fn reencryption_progress(&self) -> Result<(Uuid, i64, i64)> {
        self.count_query();
        let active: String = sqlx::query_scalar("select id from data_key where state = 'active'")
            .fetch_one(&self.read)
            .await?;
        self.count_query();
        let rows = sqlx::query(
            "select k.state, count(*) as versions from block_document_version v \
             join data_key k on k.id = v.key_id group by k.state",
        )
        .fetch_all(&self.read)
        .await?;
        let (mut active_versions, mut retired) = (0, 0);
        for row in rows {
            let state: String = row.try_get("state")?;
            let versions: i64 = row.try_get("versions")?;
            if state == "active" {
                active_versions += versions;
            } else {
                retired += versions;
            }
        }
        Ok((parse_uuid(&active)?, active_versions, retired))
    }

    /// The active key and, per key, its use.
    pub async fn key_status(&self) -> Result<KeyStatus> {
        self.count_query();
        let rows = sqlx::query(
            "select k.id, k.state, k.encryptions, \
             (select count(*) from block_document_version v where v.key_id = k.id) as versions, \
             (select count(*) from block_document d join block_document_version v \
                on v.block_document_id = d.id and v.version = d.version where v.key_id = k.id) as documents \
             from data_key k order by k.created, k.id",
        )
        .fetch_all(&self.read)
        .await?;
        let mut keys = Vec::new();
        let mut active = None;
        for row in rows {
            let info = KeyInfo {
                id: parse_uuid(&row.try_get::<String, _>("id")?)?,
                state: row.try_get("state")?,
                encryptions: row.try_get("encryptions")?,
                versions: row.try_get("versions")?,
                documents: row.try_get("documents")?,
            };
            if info.state == "active" {
                active = Some(info.id);
            }
            keys.push(info);
        }
        let passphrase = metadata(&self.read, KDF_PARAMS).await?.is_some();
        Ok(KeyStatus {
            active: active.ok_or_else(|| StoreError::Corrupt("no active data key".to_owned()))?,
            keys,
            passphrase,
        })
    }

    /// Re-wraps every data key under a new master key (or passphrase) and replaces the
    /// key-check value, in one transaction: an interruption leaves the old key valid.
    pub async fn change_master_key(&self, new: MasterKeySource) -> Result<()> {
        let (new_master, params) = match new {
            MasterKeySource::Key(key) => (key, None),
            MasterKeySource::Passphrase(passphrase) => {
                let params = KdfParams::generate()?;
                let p = params.clone();
                let key = tokio::task::spawn_blocking(move || MasterKey::derive(&passphrase, &p))
                    .await
                    .map_err(|e| {
                        StoreError::Config(format!("key derivation did not finish: {e}"))
                    })??;
                (key, Some(params))
            }
        };
        let old = self.master_key();
        let mut tx = self.write.begin().await?;
        // Serializes with rotations (which wrap new data keys) and other master changes.
        old.verify(&self.lock_key_check(&mut tx).await?)?;
        self.count_query();
        let rows = sqlx::query(&format!(
            "select id, wrapped from data_key where state <> 'destroyed'{}",
            self.for_update()
        ))
        .fetch_all(&mut *tx)
        .await?;
        for row in rows {
            let id = parse_uuid(&row.try_get::<String, _>("id")?)?;
            let wrapped: Vec<u8> = row.try_get("wrapped")?;
            let key = old.unwrap_key(id, &wrapped)?;
            self.count_query();
            sqlx::query("update data_key set wrapped = $1 where id = $2")
                .bind(new_master.wrap(&key)?)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        self.count_query();
        sqlx::query("update server_metadata set value = $1 where key = $2")
            .bind(STANDARD.encode(new_master.key_check()?))
            .bind(KEY_CHECK)
            .execute(&mut *tx)
            .await?;
        self.count_query();
        sqlx::query("delete from server_metadata where key = $1")
            .bind(KDF_PARAMS)
            .execute(&mut *tx)
            .await?;
        if let Some(params) = params {
            self.count_query();
            sqlx::query("insert into server_metadata (key, value) values ($1, $2)")
                .bind(KDF_PARAMS)
                .bind(to_json(&params))
                .execute(&mut *tx)
                .await?;
        }
        self.reseal_webhook_secrets(&mut tx, &old, &new_master)
            .await?;
        self.check_failpoint("change_master_before_commit")?;
        tx.commit().await?;
        *self.write_lock(&self.master) = Arc::new(new_master);
        Ok(())
    }
}
