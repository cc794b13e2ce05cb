//! API tokens: creation (the secret shown once), lookup by SHA-256 digest, revocation and
//! the first admin token of a new database.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use futures::FutureExt as _;
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};
use sqlx::Row;
use sqlx::any::AnyRow;
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

use block_types::access::{ChildTokenCreate, Grant, Scope, TokenCreate, TokenInfo, Ttl};

use super::grants::Reach;
use super::{Result, Store, StoreError, json_col, now_micros, to_json, to_time, uuid_col};

/// Every token starts with this, so a leaked one is recognisable (and scannable).
pub const TOKEN_PREFIX: &str = "blk_";

/// The `server_metadata` row that records which token was the database's first.
const FIRST_TOKEN: &str = "first_token";

/// What the store derives from a token: the rights of its writes and the documents it
/// reaches.
pub trait TokenAccess {
    /// What a write by this token may do beyond `write`, and who it is (for the versions
    /// it writes).
    fn rights(&self) -> super::Rights;
    /// Which documents the token may see at `needed` (the store filters lists by it).
    fn reach(&self, needed: Scope) -> Reach<'_>;
}

impl TokenAccess for TokenInfo {
    fn rights(&self) -> super::Rights {
        super::Rights {
            read_secrets: self.grants(Scope::ReadSecrets),
            admin: self.grants(Scope::Admin),
            token: Some(self.id),
        }
    }

    fn reach(&self, needed: Scope) -> Reach<'_> {
        if self.grants.is_empty() {
            Reach::All
        } else {
            Reach::Only(&self.grants, needed)
        }
    }
}

/// The longest lifetime a child token may have, whatever its parent's.
pub const MAX_CHILD_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// The longest lifetime `ttl` may give any token (about 100 years): beyond it, use none.
const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(100 * 366 * 24 * 3600);
/// Expired tokens are deleted this long after they expired (their audit records stay).
pub const EXPIRED_TOKENS_KEPT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A new token: its listing and the secret, which is never shown again.
#[derive(Debug)]
pub struct CreatedToken {
    /// The stored part.
    pub info: TokenInfo,
    /// `blk_…`: 256 random bits, URL-safe base64.
    pub token: SecretString,
}

/// Why a presented token does not authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRejection {
    /// No such token.
    Unknown,
    /// The token (this id) has expired.
    Expired(Uuid),
    /// The token (this id) was revoked.
    Revoked(Uuid),
}

/// The PostgreSQL channel on which a revocation is announced (payload: the token id).
const REVOKED_CHANNEL: &str = "blocks_token_revoked";

/// Tokens this process authenticated recently, by digest, so a request costs no token
/// query. Revocation must stop a token on the next request, so an entry is trusted only
/// while this process hears of every revocation: on SQLite (one process owns the embedded
/// store) revocations go through this store; on PostgreSQL a listener hears the other
/// replicas' revocations (LISTEN/NOTIFY, sent in the revoking transaction) and, while it
/// is disconnected, nothing is trusted from the cache.
#[derive(Debug)]
pub(crate) struct TokenCache {
    entries: parking_lot::RwLock<CacheEntries>,
    /// Whether revocations elsewhere are being heard.
    live: std::sync::atomic::AtomicBool,
    /// Bumped by every revocation heard: a lookup that began before one does not cache
    /// what it read (it may predate the revocation).
    generation: std::sync::atomic::AtomicU64,
}

/// Cached tokens by digest, with when each was read from the database.
type CacheEntries = std::collections::HashMap<String, (TokenInfo, std::time::Instant)>;

/// Tokens cached at most; the cache is emptied when full.
const MAX_CACHED_TOKENS: usize = 10_000;
/// An entry is checked in the database again after this long, whatever was heard: a
/// bound on how long any missed revocation can go unnoticed.
const CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(10);
/// How often the revocation listener proves its connection alive, and how long it waits.
const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
const HEARTBEAT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// The payload of a heartbeat (token ids are UUIDs, so it cannot be mistaken for one).
const HEARTBEAT: &str = "heartbeat";

impl TokenCache {
    pub(crate) fn new(backend: super::Backend) -> Self {
        Self {
            entries: parking_lot::RwLock::default(),
            live: std::sync::atomic::AtomicBool::new(backend == super::Backend::Sqlite),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn get(&self, digest: &str) -> Option<TokenInfo> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        self.entries
            .read()
            .get(digest)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(info, _)| info.clone())
    }

    /// Caches what a lookup that began at `generation` read, unless a revocation was heard
    /// since.
    fn insert(&self, digest: String, info: TokenInfo, generation: u64) {
        let mut entries = self.entries.write();
        if !self.live.load(Ordering::Acquire) || self.generation() != generation {
            return;
        }
        if entries.len() >= MAX_CACHED_TOKENS {
            entries.clear();
        }
        entries.insert(digest, (info, std::time::Instant::now()));
    }

    /// The entries, locked for a change that lookups already under way must not undo:
    /// bumps the generation.
    fn change(&self) -> parking_lot::RwLockWriteGuard<'_, CacheEntries> {
        let entries = self.entries.write();
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries
    }

    fn forget(&self, id: Uuid) {
        self.change().retain(|_, (info, _)| info.id != id);
    }

    fn set_live(&self, live: bool) {
        if !live {
            self.live.store(false, Ordering::Release);
        }
        // Revocations may have been missed while not listening: start afresh.
        self.change().clear();
        if live {
            self.live.store(true, Ordering::Release);
        }
    }
}

/// The PostgreSQL channel on which a committed document change is announced (payload:
/// the changed documents' ids, comma-separated, `*` for "anything", or [`CREATED`]).
pub(crate) const CHANGED_CHANNEL: &str = "blocks_documents_changed";
/// Ids named at most in one change notification (PostgreSQL caps a payload at 8,000
/// bytes); more become `*`.
const MAX_CHANGED_IDS: usize = 100;

/// The ids part of a notification that documents were created: no tree changed, only the
/// documents per type (and the feed). Sent after the creating commits, by the listener's
/// connection (see [`Store::announce_created`](super::Store::announce_created)). The nil
/// id: a server that does not know this notice drops the trees holding it (none) and its
/// counts, which is what it means.
const CREATED: &str = "00000000-0000-0000-0000-000000000000";
/// How long the listener gathers creates into one notice.
const CREATED_GATHER: std::time::Duration = std::time::Duration::from_millis(20);
/// How long sending that notice may take before the connection counts as lost.
const CREATED_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// The notification payload for a change to `documents` (none: anything) by the store
/// `origin`: `<origin> <ids or *>`. A store skips its own (it dropped those trees itself).
pub(crate) fn change_payload(origin: Uuid, documents: &[Uuid]) -> String {
    let ids = if documents.is_empty() || documents.len() > MAX_CHANGED_IDS {
        "*".to_owned()
    } else {
        documents
            .iter()
            .map(|id| id.hyphenated().to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    format!("{} {ids}", origin.simple())
}

/// The read cache the listener keeps exact.
type Trees = std::sync::Weak<super::tree_cache::TreeCache<super::documents::CachedTree>>;

/// Listens for revocations and document changes by any replica, drops those tokens from
/// `cache` and those documents' trees from `trees`; reconnects after a failure (neither
/// cache is used meanwhile). Ends when the store is gone.
pub(crate) fn listen_for_revocations(
    url: String,
    cache: std::sync::Weak<TokenCache>,
    trees: Trees,
    feed: FeedSignal,
    origin: Uuid,
    created: std::sync::Arc<tokio::sync::Notify>,
) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        let mut backoff = std::time::Duration::from_millis(100);
        loop {
            let listener = async {
                let mut listener = sqlx::postgres::PgListener::connect(&url).await?;
                listener
                    .listen_all([REVOKED_CHANNEL, CHANGED_CHANNEL])
                    .await?;
                // Its notifications of creates are sent after the fact: they need not
                // wait for a WAL flush while holding the server's notification lock.
                sqlx::query("set synchronous_commit = off")
                    .execute(&mut listener)
                    .await?;
                Ok::<_, sqlx::Error>(listener)
            }
            .await;
            match listener {
                Ok(mut listener) => {
                    let Some(c) = cache.upgrade() else { return };
                    c.set_live(true);
                    drop(c);
                    if let Some(t) = trees.upgrade() {
                        t.set_live(true);
                    }
                    backoff = std::time::Duration::from_millis(100);
                    // Events committed while nobody listened are read from the table.
                    bump(&feed);
                    if !listen(&mut listener, &cache, &trees, &feed, origin, &created).await {
                        return;
                    }
                }
                Err(e) => {
                    if cache.upgrade().is_none() {
                        return;
                    }
                    tracing::warn!(error = %e, "cannot listen for token revocations; tokens are checked in the database meanwhile");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
        }
    })
    .abort_handle()
}

/// Serves one listener connection: forgets revoked tokens, and proves the connection
/// alive with a heartbeat notification every few seconds. Returns when the connection is
/// lost or silent (the cache is then not used), or false when the store is gone.
async fn listen(
    listener: &mut sqlx::postgres::PgListener,
    cache: &std::sync::Weak<TokenCache>,
    trees: &Trees,
    feed: &FeedSignal,
    origin: Uuid,
    created: &tokio::sync::Notify,
) -> bool {
    let own = origin.simple().to_string();
    let created_payload = format!("{own} {CREATED}");
    let lost = |c: &TokenCache| {
        c.set_live(false);
        if let Some(t) = trees.upgrade() {
            t.set_live(false);
        }
    };
    let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
    let mut awaiting: Option<tokio::time::Instant> = None;
    // When the creates gathered so far are announced (none gathered: never); meanwhile
    // revocations and changes are heard as ever.
    let mut announce: Option<tokio::time::Instant> = None;
    loop {
        let due = announce.unwrap_or_else(|| tokio::time::Instant::now() + HEARTBEAT_EVERY);
        tokio::select! {
            notification = listener.try_recv() => {
                let Some(c) = cache.upgrade() else { return false };
                match notification {
                    Ok(Some(n)) if n.payload() == HEARTBEAT => awaiting = None,
                    Ok(Some(n)) if n.channel() == CHANGED_CHANNEL => {
                        bump(feed);
                        let (from, ids) = n.payload().split_once(' ').unwrap_or(("", n.payload()));
                        if from != own && let Some(t) = trees.upgrade() {
                            if ids == CREATED {
                                t.created();
                                continue;
                            }
                            let ids: Option<Vec<Uuid>> =
                                ids.split(',').map(|id| Uuid::parse_str(id).ok()).collect();
                            match ids {
                                Some(ids) => t.changed(&ids),
                                None => t.clear(),
                            }
                        }
                    }
                    Ok(Some(n)) => {
                        if let Ok(id) = Uuid::parse_str(n.payload()) {
                            c.forget(id);
                        }
                    }
                    // The connection dropped; notifications may be lost.
                    Ok(None) | Err(_) => {
                        lost(&c);
                        return true;
                    }
                }
            }
            // Every create of the next moment in one notice (see `CREATED`): a busy writer
            // sends a few a second, not one per create.
            () = created.notified(), if announce.is_none() => {
                announce = Some(tokio::time::Instant::now() + CREATED_GATHER);
            }
            () = tokio::time::sleep_until(due), if announce.is_some() => {
                announce = None;
                // Creates signalled while gathering are in this notice.
                created.notified().now_or_never();
                let Some(c) = cache.upgrade() else { return false };
                let sent = tokio::time::timeout(
                    CREATED_SEND_TIMEOUT,
                    sqlx::query("select pg_notify($1, $2)")
                        .bind(CHANGED_CHANNEL)
                        .bind(&created_payload)
                        .execute(&mut *listener),
                )
                .await;
                if !matches!(sent, Ok(Ok(_))) {
                    // Sent by the next connection, once it listens.
                    created.notify_one();
                    lost(&c);
                    return true;
                }
            }
            _ = beat.tick() => {
                let Some(c) = cache.upgrade() else { return false };
                if awaiting.is_some_and(|since| since.elapsed() > HEARTBEAT_TIMEOUT) {
                    tracing::warn!("the token revocation listener went silent; reconnecting");
                    lost(&c);
                    return true;
                }
                let sent = tokio::time::timeout(
                    HEARTBEAT_TIMEOUT,
                    sqlx::query("select pg_notify($1, $2)")
                        .bind(REVOKED_CHANNEL)
                        .bind(HEARTBEAT)
                        .execute(&mut *listener),
                )
                .await;
                if !matches!(sent, Ok(Ok(_))) {
                    lost(&c);
                    return true;
                }
                awaiting.get_or_insert_with(tokio::time::Instant::now);
            }
        }
    }
}

/// The change feed's signal (see `Store::feed_signal`), held weakly by the listener.
pub(crate) type FeedSignal = std::sync::Weak<tokio::sync::watch::Sender<u64>>;

fn bump(feed: &FeedSignal) {
    if let Some(feed) = feed.upgrade() {
        feed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// The SHA-256 digest of a token, hex.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// `prefix` and 256 random bits, URL-safe base64: a token's or a console session's secret.
pub(super) fn new_secret(prefix: &str) -> Result<SecretString> {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(bytes.as_mut())
        .map_err(|e| StoreError::Config(format!("no randomness for a secret: {e}")))?;
    Ok(SecretString::from(format!(
        "{prefix}{}",
        URL_SAFE_NO_PAD.encode(bytes.as_ref())
    )))
}

/// A token's name: 1 to 100 characters.
fn check_name(name: &str, errors: &mut Vec<block_types::FieldError>) {
    if name.is_empty() || name.chars().count() > 100 {
        errors.push(block_types::FieldError::new(
            "name",
            "must be 1 to 100 characters",
        ));
    }
}

/// Now plus `ttl` (at least a second, at most `longest`), or an error at `field`.
fn expiry_after(
    ttl: Ttl,
    longest: std::time::Duration,
    field: &str,
    errors: &mut Vec<block_types::FieldError>,
) -> Option<DateTime<Utc>> {
    if ttl.0 < std::time::Duration::from_secs(1) {
        errors.push(block_types::FieldError::new(field, "must be at least 1 s"));
        return None;
    }
    if ttl.0 > longest {
        errors.push(block_types::FieldError::new(
            field,
            format!("may be at most {} s", longest.as_secs()),
        ));
        return None;
    }
    let ttl = chrono::Duration::from_std(ttl.0).ok()?;
    Some(Utc::now() + ttl)
}

fn check_validity(info: TokenInfo) -> std::result::Result<TokenInfo, TokenRejection> {
    if info.revoked.is_some() {
        return Err(TokenRejection::Revoked(info.id));
    }
    if info.expires.is_some_and(|e| e <= Utc::now()) {
        return Err(TokenRejection::Expired(info.id));
    }
    Ok(info)
}

const COLUMNS: &str = "id, name, scopes, created, expires, last_used, revoked, grants, parent_id";

pub(super) fn token_from_row(row: &AnyRow) -> Result<TokenInfo> {
    let time = |col: &str| -> Result<Option<DateTime<Utc>>> {
        Ok(row.try_get::<Option<i64>, _>(col)?.map(to_time))
    };
    Ok(TokenInfo {
        id: uuid_col(row, "id")?,
        name: row.try_get("name")?,
        scopes: json_col(row, "scopes")?,
        created: to_time(row.try_get("created")?),
        expires: time("expires")?,
        last_used: time("last_used")?,
        revoked: time("revoked")?,
        grants: json_col(row, "grants")?,
        parent_id: row
            .try_get::<Option<String>, _>("parent_id")?
            .map(|id| Uuid::parse_str(&id))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("a token's parent id is not a UUID: {e}")))?,
    })
}

impl Store {
    /// Creates a token. The secret is returned once; only its digest is stored.
    pub async fn create_token(&self, body: TokenCreate) -> Result<CreatedToken> {
        let mut errors = Vec::new();
        let name = body.name.trim();
        check_name(name, &mut errors);
        if body.scopes.is_empty() {
            errors.push(block_types::FieldError::new(
                "scopes",
                "must name at least one of read, read-secrets, write, admin",
            ));
        }
        if body.expires.is_some_and(|e| e <= Utc::now()) {
            errors.push(block_types::FieldError::new(
                "expires",
                "must be in the future",
            ));
        }
        let expires = match (body.expires, body.ttl) {
            (Some(_), Some(_)) => {
                errors.push(block_types::FieldError::new(
                    "ttl",
                    "give expires or ttl, not both",
                ));
                None
            }
            (expires, None) => expires,
            (None, Some(ttl)) => expiry_after(ttl, MAX_TTL, "ttl", &mut errors),
        };
        errors.extend(block_types::access::check_grants(
            &body.scopes,
            &body.grants,
        ));
        if !errors.is_empty() {
            return Err(StoreError::Invalid(errors));
        }
        let mut tx = self.write.begin().await?;
        let created = self
            .insert_token(&mut tx, name, &body.scopes, expires, &body.grants, None)
            .await?;
        tx.commit().await?;
        Ok(created)
    }

    /// Mints a token for `parent` to hand on: scopes it holds, grants each covered by one
    /// of its own (a limited parent cannot mint an unlimited child), a lifetime ending no
    /// later than the parent's and at most `max_ttl` from now. Revoking the parent revokes
    /// the child.
    pub async fn create_child_token(
        &self,
        parent: &TokenInfo,
        body: ChildTokenCreate,
        max_ttl: std::time::Duration,
    ) -> Result<CreatedToken> {
        // Checked against the parent as it is now, under the lock revocations and grant
        // changes take: a child cannot be minted from a parent being revoked or narrowed.
        let mut tx = self.write.begin().await?;
        self.lock_token_families(&mut tx).await?;
        let gone = || StoreError::Conflict("the caller's token is no longer valid".to_owned());
        let parent = self.token_in(&mut tx, parent.id).await?.ok_or_else(gone)?;
        let parent = check_validity(parent).map_err(|_| gone())?;
        let parent = &parent;
        let mut errors = Vec::new();
        let name = body
            .name
            .unwrap_or_else(|| format!("child of {}", parent.name));
        let name: String = name.trim().chars().take(100).collect();
        check_name(&name, &mut errors);
        // By default the parent's scopes, but never admin (an admin parent's child reads
        // secrets and writes).
        let scopes = body.scopes.unwrap_or_else(|| {
            let mut scopes = parent.scopes.clone();
            if scopes.remove(&Scope::Admin) && scopes.is_empty() {
                scopes.extend([Scope::ReadSecrets, Scope::Write]);
            }
            scopes
        });
        if scopes.is_empty() {
            errors.push(block_types::FieldError::new(
                "scopes",
                "must name at least one scope the caller holds",
            ));
        }
        if scopes.contains(&Scope::Admin) {
            errors.push(block_types::FieldError::new(
                "scopes",
                "a child token cannot hold admin (it could mint tokens outliving it); create an admin token with POST /api/tokens",
            ));
        }
        for scope in &scopes {
            if !parent.grants(*scope) {
                errors.push(block_types::FieldError::new(
                    "scopes",
                    format!(
                        "the caller's token does not hold {}; a child token holds at most its parent's scopes",
                        scope.as_str()
                    ),
                ));
            }
        }
        let grants = body.grants.unwrap_or_else(|| parent.grants.clone());
        if parent.limited() {
            if grants.is_empty() {
                errors.push(block_types::FieldError::new(
                    "grants",
                    "the caller's token is limited by grants, so its child must be too",
                ));
            }
            for (i, grant) in grants.iter().enumerate() {
                if !parent.grants.iter().any(|g| g.covers(grant)) {
                    errors.push(block_types::FieldError::new(
                        format!("grants[{i}]"),
                        format!("{grant} is not covered by a grant of the caller's token"),
                    ));
                }
            }
        }
        errors.extend(block_types::access::check_grants(&scopes, &grants));
        let now = Utc::now();
        let remaining = parent
            .expires
            .map(|e| (e - now).to_std().unwrap_or_default());
        let longest = remaining.map_or(max_ttl, |r| r.min(max_ttl));
        let expires = match body.ttl {
            Some(ttl) if ttl.0 > longest => {
                errors.push(block_types::FieldError::new(
                    "ttl",
                    format!(
                        "may be at most {} s: the caller's remaining lifetime and the server's maximum ({} s) bound it",
                        longest.as_secs(),
                        max_ttl.as_secs()
                    ),
                ));
                None
            }
            Some(ttl) => expiry_after(ttl, longest, "ttl", &mut errors),
            None => expiry_after(Ttl(longest), longest, "ttl", &mut errors),
        };
        // Never past the parent's end (the clock moved on since `remaining`).
        let expires = expires.map(|e| parent.expires.map_or(e, |p| e.min(p)));
        if !errors.is_empty() {
            return Err(StoreError::Invalid(errors));
        }
        let created = self
            .insert_token(&mut tx, &name, &scopes, expires, &grants, Some(parent.id))
            .await?;
        tx.commit().await?;
        Ok(created)
    }

    /// Replaces a token's grants (admin). Every replica sees the change on the token's next
    /// request (as a revocation is heard). The tokens minted from it are revoked: they
    /// were bounded by the grants being replaced.
    pub async fn set_token_grants(&self, id: Uuid, grants: Vec<Grant>) -> Result<TokenInfo> {
        let (mut tx, mut info) = self.lock_token(id).await?;
        let errors = block_types::access::check_grants(&info.scopes, &grants);
        if !errors.is_empty() {
            return Err(StoreError::Invalid(errors));
        }
        self.count_query();
        sqlx::query("update api_token set grants = $1 where id = $2")
            .bind(to_json(&grants))
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        let family = self.family(&mut tx, id).await?;
        let children: Vec<Uuid> = family.iter().copied().filter(|m| *m != id).collect();
        self.commit_family_change(tx, &family, &children, now_micros())
            .await?;
        info.grants = grants;
        Ok(info)
    }

    /// Deletes tokens that expired more than [`EXPIRED_TOKENS_KEPT`] ago (their console
    /// sessions go with them; audit records keep their ids). Returns how many.
    pub async fn prune_expired_tokens(&self) -> Result<u64> {
        let cutoff =
            now_micros() - i64::try_from(EXPIRED_TOKENS_KEPT.as_micros()).unwrap_or(i64::MAX);
        self.count_query();
        Ok(
            sqlx::query("delete from api_token where expires is not null and expires < $1")
                .bind(cutoff)
                .execute(&self.write)
                .await?
                .rows_affected(),
        )
    }

    /// Serializes what changes a family of tokens (minting a child, revoking, changing
    /// grants), so no child is minted from a parent while it is being revoked or narrowed:
    /// an advisory lock on PostgreSQL (SQLite's one writer serializes them anyway).
    async fn lock_token_families(&self, tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<()> {
        if self.backend == super::Backend::Postgres {
            self.count_query();
            sqlx::query("select pg_advisory_xact_lock(7317244)")
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Opens a write transaction holding the family lock ([`Self::lock_token_families`])
    /// and reads the token `id` in it (404 when there is none).
    async fn lock_token(
        &self,
        id: Uuid,
    ) -> Result<(sqlx::Transaction<'static, sqlx::Any>, TokenInfo)> {
        let mut tx = self.write.begin().await?;
        self.lock_token_families(&mut tx).await?;
        let info = self
            .token_in(&mut tx, id)
            .await?
            .ok_or_else(|| StoreError::NotFound("Token not found".to_owned()))?;
        Ok((tx, info))
    }

    /// Ends a change to the family `family`: marks `revoked` revoked at `now`, tells every
    /// replica to forget the family, commits, and forgets it here.
    async fn commit_family_change(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Any>,
        family: &[Uuid],
        revoked: &[Uuid],
        now: i64,
    ) -> Result<()> {
        self.mark_revoked(&mut tx, revoked, now).await?;
        self.announce_token_change(&mut tx, family).await?;
        tx.commit().await?;
        for member in family {
            self.tokens.forget(*member);
        }
        Ok(())
    }

    /// The token `id` as `tx` sees it.
    async fn token_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id: Uuid,
    ) -> Result<Option<TokenInfo>> {
        self.count_query();
        sqlx::query(&format!("select {COLUMNS} from api_token where id = $1"))
            .bind(id.to_string())
            .fetch_optional(&mut **tx)
            .await?
            .as_ref()
            .map(token_from_row)
            .transpose()
    }

    /// Marks `tokens` revoked at `now` (those not revoked already).
    async fn mark_revoked(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        tokens: &[Uuid],
        now: i64,
    ) -> Result<()> {
        let sql = "update api_token set revoked = $1 where id = $2 and revoked is null";
        self.execute_per_id(tx, sql, now, tokens).await
    }

    /// Runs `sql` in `tx` once for each of `ids`, with `first` as `$1` and the id as `$2`.
    async fn execute_per_id<'q, T>(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        sql: &'q str,
        first: T,
        ids: &[Uuid],
    ) -> Result<()>
    where
        T: 'q + Copy + sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any>,
    {
        for id in ids {
            self.count_query();
            sqlx::query(sql)
                .bind(first)
                .bind(id.to_string())
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// The token `id` and every token minted from it, at any depth.
    async fn family(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id: Uuid,
    ) -> Result<Vec<Uuid>> {
        self.count_query();
        sqlx::query(
            "with recursive family(id) as ( \
                 select id from api_token where id = $1 \
                 union select t.id from api_token t join family f on t.parent_id = f.id) \
             select id from family",
        )
        .bind(id.to_string())
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| uuid_col(r, "id"))
        .collect()
    }

    /// On PostgreSQL, tells every replica (in `tx`, so on commit) to forget these tokens.
    async fn announce_token_change(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        ids: &[Uuid],
    ) -> Result<()> {
        if self.backend != super::Backend::Postgres {
            return Ok(());
        }
        self.execute_per_id(tx, "select pg_notify($1, $2)", REVOKED_CHANNEL, ids)
            .await
    }

    async fn insert_token(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        name: &str,
        scopes: &BTreeSet<Scope>,
        expires: Option<DateTime<Utc>>,
        grants: &[Grant],
        parent_id: Option<Uuid>,
    ) -> Result<CreatedToken> {
        let token = new_secret(TOKEN_PREFIX)?;
        let info = TokenInfo {
            id: Uuid::new_v4(),
            name: name.to_owned(),
            scopes: scopes.clone(),
            created: to_time(now_micros()),
            expires,
            last_used: None,
            revoked: None,
            grants: grants.to_vec(),
            parent_id,
        };
        self.count_query();
        sqlx::query(
            "insert into api_token (id, name, token_hash, scopes, created, expires, grants, parent_id) \
             values ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(info.id.to_string())
        .bind(&info.name)
        .bind(token_digest(token.expose_secret()))
        .bind(to_json(&info.scopes))
        .bind(info.created.timestamp_micros())
        .bind(expires.map(|e| e.timestamp_micros()))
        .bind(to_json(&info.grants))
        .bind(parent_id.map(|p| p.to_string()))
        .execute(&mut **tx)
        .await?;
        Ok(CreatedToken { info, token })
    }

    /// On a database that never had a first token, creates one admin token and returns it;
    /// otherwise `None`. Replicas starting together race on one metadata row, so exactly
    /// one of them creates it.
    pub async fn bootstrap_admin_token(&self) -> Result<Option<CreatedToken>> {
        let mut tx = self.write.begin().await?;
        let id = Uuid::new_v4();
        self.count_query();
        let claimed = sqlx::query(
            "insert into server_metadata (key, value) values ($1, $2) on conflict do nothing",
        )
        .bind(FIRST_TOKEN)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed == 0 {
            return Ok(None);
        }
        let created = self
            .insert_token(
                &mut tx,
                "first admin token",
                &BTreeSet::from([Scope::Admin]),
                None,
                &[],
                None,
            )
            .await?;
        self.count_query();
        sqlx::query("update server_metadata set value = $1 where key = $2")
            .bind(created.info.id.to_string())
            .bind(FIRST_TOKEN)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(created))
    }

    /// Every token, newest first (revoked ones included, marked).
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>> {
        self.count_query();
        let rows = sqlx::query(&format!(
            "select {COLUMNS} from api_token order by created desc, id"
        ))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Revokes a token and every token minted from it (children, their children…); they
    /// fail from the next request on, on every replica. Revoking twice is harmless.
    pub async fn revoke_token(&self, id: Uuid) -> Result<TokenInfo> {
        let (mut tx, mut info) = self.lock_token(id).await?;
        let family = self.family(&mut tx, id).await?;
        self.refuse_revoking_the_last_admin(&mut tx, &family)
            .await?;
        let now = now_micros();
        self.commit_family_change(tx, &family, &family, now).await?;
        info.revoked.get_or_insert(to_time(now));
        Ok(info)
    }

    /// Revoking the last valid admin token would leave nobody able to make tokens, read
    /// the audit log or rotate keys: refused (409). Valid tokens are locked on PostgreSQL,
    /// so two revocations at once cannot each see the other as the one left; SQLite's one
    /// writer orders them anyway.
    async fn refuse_revoking_the_last_admin(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        family: &[Uuid],
    ) -> Result<()> {
        let lock = if self.backend == super::Backend::Postgres {
            " for update"
        } else {
            ""
        };
        self.count_query();
        let rows = sqlx::query(&format!(
            "select {COLUMNS} from api_token where revoked is null and (expires is null or expires > $1) order by id{lock}"
        ))
        .bind(now_micros())
        .fetch_all(&mut **tx)
        .await?;
        let valid = rows
            .iter()
            .map(token_from_row)
            .collect::<Result<Vec<_>>>()?;
        let is_admin = |t: &TokenInfo| t.scopes.contains(&Scope::Admin);
        let revoked = |t: &TokenInfo| family.contains(&t.id);
        let an_admin_goes = valid.iter().any(|t| revoked(t) && is_admin(t));
        if an_admin_goes && !valid.iter().any(|t| !revoked(t) && is_admin(t)) {
            return Err(StoreError::Conflict(
                "this is the last valid admin token: create another admin token before revoking it (on the server's host, `blocks token create --offline --scope admin` makes one without a token)".to_owned(),
            ));
        }
        Ok(())
    }

    /// The token, if it is valid and in the token cache; never asks the database.
    pub fn authenticate_cached(&self, token: &str) -> Option<TokenInfo> {
        self.tokens
            .get(&token_digest(token))
            .and_then(|info| check_validity(info).ok())
    }

    /// The token a caller presents, if it is known, unexpired and not revoked. The lookup
    /// is by SHA-256 digest, and the stored digest is compared in constant time.
    pub async fn authenticate(
        &self,
        token: &str,
    ) -> Result<std::result::Result<TokenInfo, TokenRejection>> {
        let digest = token_digest(token);
        if let Some(info) = self.tokens.get(&digest) {
            return Ok(check_validity(info));
        }
        let generation = self.tokens.generation();
        self.count_query();
        let row = sqlx::query(&format!(
            "select {COLUMNS}, token_hash from api_token where token_hash = $1"
        ))
        .bind(&digest)
        .fetch_optional(&self.read)
        .await?;
        let Some(row) = row else {
            return Ok(Err(TokenRejection::Unknown));
        };
        let stored: String = row.try_get("token_hash")?;
        if !bool::from(stored.as_bytes().ct_eq(digest.as_bytes())) {
            return Ok(Err(TokenRejection::Unknown));
        }
        let info = token_from_row(&row)?;
        if info.revoked.is_none() {
            self.tokens.insert(digest, info.clone(), generation);
        }
        Ok(check_validity(info))
    }

    /// Whether token lookups may be served from memory (see [`TokenCache`]).
    #[cfg(test)]
    pub(crate) fn token_cache_live(&self) -> bool {
        self.tokens.live.load(Ordering::Acquire)
    }

    /// Records that a token was used now.
    pub async fn touch_token(&self, id: Uuid) -> Result<()> {
        self.count_query();
        sqlx::query("update api_token set last_used = $1 where id = $2")
            .bind(now_micros())
            .bind(id.to_string())
            .execute(&self.write)
            .await?;
        Ok(())
    }
}
