//! The encrypted block store: block types, schemas and documents on SQLite or PostgreSQL.
//!
//! One implementation serves both databases through sqlx's `Any` driver: the two schemas in
//! `migrations/` use the same column shapes (uuid text, microsecond integers, JSON text), so
//! every query is written once, with `$N` placeholders that both drivers accept. The few
//! places where the dialects differ (row locks, advisory locks) branch on [`Backend`].
//!
//! Writes are transactions. Each write of a document appends an immutable version holding
//! the plain data, the sealed secrets (see [`crate::crypto`]), the references and the schema.
//! A read resolves the document's whole reference tree in one recursive query.

mod audit;
mod audit_journal;
mod batch;
mod browse;
mod documents;
mod events;
mod filter;
mod grants;
mod group;
mod identity;
mod keys;
mod overview;
mod rows;
mod schemas;
pub(crate) mod sessions;
mod sql;
mod tokens;
mod tree_cache;
mod types;
mod webhooks;

#[cfg(test)]
pub(crate) mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use block_types::{DataValidator, FieldError};
use chrono::{DateTime, Utc};
use parking_lot::RwLock;
use secrecy::SecretString;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use uuid::Uuid;

use crate::crypto::{CryptoError, DataKey, MasterKey};

pub use audit::{AuditQuery, NewAuditRecord};
pub(crate) use block_types::access::check_grants;
pub use block_types::access::{
    AuditRecord, ChildTokenCreate, Grant, KeyInfo, KeyStatus, MAX_GRANTS, Scope, Selector,
    TokenCreate, TokenInfo, Ttl,
};
pub use block_types::events::{EventFilter, MAX_FILTER_GLOB};
pub use block_types::identity::{Issuer, IssuerCreate, Role, RoleConfig};
pub use block_types::model::VersionInfo;
pub use block_types::webhooks::{Delivery, Webhook, WebhookCreate, WebhookCreated};
pub use browse::{
    DocumentPage, DocumentQuery, DocumentSummary, MAX_PAGE, MAX_SEARCH_BYTES, Referrer,
};
pub use documents::{Answer, MAX_IMPORT, Tagged, WriteOutcome, shown_documents};
pub use events::{DEFAULT_EVENT_RETENTION_HOURS, FeedEvent, Position, Resume};
pub use grants::{Identity, Reach};
pub use identity::{MAX_ROLE_TTL, public_keys};
pub use overview::{COUNT_CAP, MistypedReference, Outdated, RecentChange, SCAN_CAP};
pub use sessions::{NewSession, SESSION_IDLE, SESSION_MAX_AGE, Session};
pub use tokens::{
    CreatedToken, EXPIRED_TOKENS_KEPT, MAX_CHILD_TTL, TOKEN_PREFIX, TokenAccess, TokenRejection,
    token_digest,
};
pub use tree_cache::TreeCacheStats;
pub use webhooks::{Attempt, Claimed, MAX_WEBHOOKS, RETRY_FOR, backoff};

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, the embedded default.
    Sqlite,
    /// PostgreSQL, for several replicas on one database.
    Postgres,
}

impl Backend {
    /// The backend a database URL names.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Self::Postgres)
        } else {
            Err(StoreError::Config(
                "the database URL must start with sqlite: or postgres://".to_owned(),
            ))
        }
    }
}

/// Where the master key comes from.
#[derive(Debug)]
pub enum MasterKeySource {
    /// A key read from a key file or the environment.
    Key(MasterKey),
    /// A passphrase, stretched with argon2id using the salt and parameters stored in the
    /// database (created on first use).
    Passphrase(SecretString),
}

/// Settings of a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Keep at most this many versions of each document (the current one always stays)
    /// unless the database holds a retention setting ([`Store::set_retention`]). `None`
    /// keeps every version.
    pub retention: Option<u32>,
    /// A data key is retired after this many encryptions, far below AES-GCM's 2^32 limit
    /// for random nonces.
    pub key_rotation_threshold: i64,
    /// Connections in the pool (readers, for SQLite). `None`: 16 on SQLite, 8 on
    /// PostgreSQL, whose server processes share the machine's cores with this one.
    pub max_connections: Option<u32>,
    /// Where the master key came from, for the console's keys page (never the key).
    pub master_key_origin: MasterKeyOrigin,
}

/// Where the master key came from, as the keys page tells an administrator: a description
/// of the source, never the key or the passphrase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MasterKeyOrigin {
    /// Not said (a store opened by a library caller or a test).
    #[default]
    Unspecified,
    /// A key file: `--master-key-file` or `$BLOCKS_HOME/master.key`.
    File(std::path::PathBuf),
    /// The `BLOCKS_MASTER_KEY` environment variable.
    Environment,
    /// A passphrase (`BLOCKS_PASSPHRASE`), stretched with argon2id.
    Passphrase,
}

impl std::fmt::Display for MasterKeyOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unspecified => f.write_str("not recorded by this server"),
            Self::File(path) => write!(f, "the key file {}", path.display()),
            Self::Environment => f.write_str("the BLOCKS_MASTER_KEY environment variable"),
            Self::Passphrase => {
                f.write_str("a passphrase (BLOCKS_PASSPHRASE), stretched with argon2id")
            }
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            retention: None,
            key_rotation_threshold: 1 << 30,
            max_connections: None,
            master_key_origin: MasterKeyOrigin::Unspecified,
        }
    }
}

/// Who is writing and what they may do beyond `write`, for the store's checks that depend
/// on it and for the versions it records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rights {
    /// Holds `read-secrets`: may move a document that holds secrets to another schema
    /// (the move validates the secrets against the new schema, which would otherwise tell a
    /// `write` token something about them).
    pub read_secrets: bool,
    /// Holds `admin`: may register a schema that keeps fewer values secret than the
    /// other schemas of its type.
    pub admin: bool,
    /// The token writing: recorded on each version it writes (none for the server's own
    /// writes).
    pub token: Option<Uuid>,
}

impl Rights {
    /// Everything (the server's own registrations, tests).
    pub const ADMIN: Rights = Rights {
        read_secrets: true,
        admin: true,
        token: None,
    };
    /// `write` alone.
    pub const WRITE: Rights = Rights {
        read_secrets: false,
        admin: false,
        token: None,
    };

    /// The same rights, writing as `token`.
    #[must_use]
    pub fn by(self, token: Uuid) -> Self {
        Self {
            token: Some(token),
            ..self
        }
    }
}

/// Why a store operation failed. Messages name the object and the problem and never carry
/// a secret value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The object does not exist (`"Block document not found"`).
    #[error("{0}")]
    NotFound(String),
    /// An object with the same unique key exists (`"Block already exists"`).
    #[error("{0}")]
    AlreadyExists(String),
    /// The write expected another version of the document.
    #[error("the document is at version {actual}, not the expected version {expected}")]
    VersionConflict {
        /// The version the caller expected.
        expected: i64,
        /// The current version.
        actual: i64,
    },
    /// The object is still used or referenced; nothing was deleted.
    #[error("{message}: {}", referrers.join(", "))]
    InUse {
        /// What cannot be done.
        message: String,
        /// Who still uses it (`gcs-bucket/zoom-gcs`, `schema sha256:…`).
        referrers: Vec<String>,
    },
    /// The request conflicts with the object's current state.
    #[error("{0}")]
    Conflict(String),
    /// The references would form a cycle.
    #[error("{0}")]
    Cycle(String),
    /// A request that is well-formed but cannot be applied (e.g. a move to another type's
    /// schema).
    #[error("{}", .0)]
    BadRequest(FieldError),
    /// A reference in the data is malformed or points nowhere.
    #[error("{}", .0)]
    BadReference(FieldError),
    /// The input is invalid; each error names a field.
    #[error("invalid input: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    /// The object is protected.
    #[error("{0}")]
    Protected(String),
    /// A stored document cannot be decrypted (a data key is missing or a ciphertext was
    /// altered); the message names the document, never a value.
    #[error("{0}")]
    Unreadable(String),
    /// An answer would be larger than the server serves in one response.
    #[error("{0}")]
    TooLarge(String),
    /// The caller's token does not allow this change (the field says which part).
    #[error("{}", .0)]
    Forbidden(FieldError),
    /// A nested block's type is not registered.
    #[error("{0}")]
    MissingBlockType(String),
    /// Encryption failed, or a key is wrong or missing.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The store's configuration is unusable.
    #[error("{0}")]
    Config(String),
    /// Stored data is not what this version of the store wrote.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// A failure a retry can clear: SQLite busy, a PostgreSQL deadlock, serialization
    /// failure or lock not granted, a lost connection, an exhausted or closed pool.
    #[error("the database is busy: {0}")]
    Busy(sqlx::Error),
    /// A write raced another on a unique key or on a row being deleted: the request is
    /// sound but conflicts with what was just committed.
    #[error("the write raced a concurrent change: {0}")]
    Raced(sqlx::Error),
    /// The database failed.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Database errors are classified here, once: SQLSTATEs and SQLite's result codes are the
/// store's knowledge, and the layers above see `Busy`, `Raced` or `Database`.
impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        if is_busy(&err) {
            Self::Busy(err)
        } else if is_race(&err) {
            Self::Raced(err)
        } else {
            Self::Database(err)
        }
    }
}

/// SQLite busy or locked; PostgreSQL deadlock (40P01), serialization failure (40001),
/// lock not available (55P03); a lost connection; a pool timed out or closed.
fn is_busy(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            let message = db.message();
            matches!(db.code().as_deref(), Some("40P01" | "40001" | "55P03"))
                || message.contains("database is locked")
                || message.contains("busy")
        }
        sqlx::Error::Io(_) | sqlx::Error::PoolClosed | sqlx::Error::PoolTimedOut => true,
        _ => false,
    }
}

/// A unique or foreign-key violation: PostgreSQL 23505 and 23503, SQLite's
/// SQLITE_CONSTRAINT_UNIQUE (2067), _PRIMARYKEY (1555) and _FOREIGNKEY (787).
fn is_race(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if matches!(db.code().as_deref(), Some("23505" | "23503" | "2067" | "787" | "1555")))
}

impl StoreError {
    /// The store was closed (the server is shutting down): background work ends rather
    /// than trying again.
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::Busy(sqlx::Error::PoolClosed))
    }

    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError::new(field, message)])
    }

    /// The guard of a version insert found its data key no longer active: a not-null
    /// violation (SQLite's SQLITE_CONSTRAINT_NOTNULL, 1299; PostgreSQL's 23502) on the
    /// version's data, which the guarded insert makes null then (and only then; see
    /// `VersionRow::insert`).
    pub(crate) fn is_inactive_key_guard(&self) -> bool {
        let Self::Database(sqlx::Error::Database(db)) = self else {
            return false;
        };
        match db.code().as_deref() {
            Some("1299") => db
                .message()
                .contains("NOT NULL constraint failed: block_document_version.data"),
            Some("23502") => db
                .message()
                .contains("column \"data\" of relation \"block_document_version\""),
            _ => false,
        }
    }

    /// Whether the database reported a unique-constraint violation.
    pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
        match err {
            sqlx::Error::Database(db) => {
                db.is_unique_violation()
                    || db
                        .code()
                        .is_some_and(|c| c == "23505" || c == "2067" || c == "1555")
            }
            _ => false,
        }
    }
}

/// Turns PostgreSQL's JIT compilation off for a connection of the store. Its queries are
/// short lookups, but the planner's estimate for a recursive reference query grows with
/// the table (a million documents: millions of rows estimated, one returned) past the
/// JIT threshold, and compiling the plan took about 140 ms of a query that runs in
/// milliseconds without it.
async fn no_jit(conn: &mut sqlx::AnyConnection) -> std::result::Result<(), sqlx::Error> {
    conn.execute("set jit = off").await?;
    Ok(())
}

/// How long a PostgreSQL connection may sit idle before it is pinged as it is handed out.
pub(crate) const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(1);

/// A PostgreSQL pool's check before handing a connection out: a ping when the connection
/// sat idle for [`PING_WHEN_IDLE_FOR`] (the server may have closed it meanwhile); one in
/// steady use was answering a moment ago, and a ping would cost a round trip per use.
fn ping_when_idle(
    conn: &mut sqlx::AnyConnection,
    idle_for: Duration,
) -> futures::future::BoxFuture<'_, std::result::Result<bool, sqlx::Error>> {
    Box::pin(async move {
        if idle_for >= PING_WHEN_IDLE_FOR {
            sqlx::Connection::ping(conn).await?;
        }
        Ok(true)
    })
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// In-memory data keys, unwrapped at open and when a new one is seen.
#[derive(Debug, Default)]
pub(crate) struct Keyring {
    keys: HashMap<Uuid, Arc<DataKey>>,
}

/// The block store.
#[derive(Debug)]
pub struct Store {
    backend: Backend,
    /// Readers (and, on PostgreSQL, writers).
    read: AnyPool,
    /// Writers: one connection on SQLite, so writes queue in-process instead of failing
    /// with a busy database; the same pool as `read` on PostgreSQL.
    write: AnyPool,
    /// SQLite: the group commit of document creates and audit appends (see [`group`]).
    groups: Option<group::WriteGroups>,
    /// PostgreSQL: a connection committing with `synchronous_commit = off`, for the audit
    /// records of reads ([`Store::append_audit_deferred`]).
    deferred: Option<AnyPool>,
    /// SQLite: the write-ahead log file, synced by [`Store::sync_audit`].
    wal: Option<std::path::PathBuf>,
    /// SQLite (a database file): the journal the records of secret reads are appended to,
    /// moved into the audit log by [`Store::sync_audit`] (see [`audit_journal`]).
    journal: Option<audit_journal::Journal>,
    /// Moves of the journal, one at a time: journals whose move failed (tried again
    /// first), and the id of the last one moved, whose row the next move deletes.
    journal_moves: tokio::sync::Mutex<audit::JournalMoves>,
    master: RwLock<Arc<MasterKey>>,
    keyring: RwLock<Keyring>,
    config: StoreConfig,
    validators: RwLock<HashMap<Uuid, Arc<DataValidator>>>,
    /// What each schema keeps secret (listed or marked), by schema id: schemas never
    /// change, so a write parses each one once, not once per write.
    schema_secrets: RwLock<HashMap<Uuid, Arc<Vec<block_types::SecretPath>>>>,
    /// Schemas by id (with their type), for the read path.
    schemas: RwLock<HashMap<Uuid, Arc<block_types::model::BlockSchema>>>,
    queries: Arc<AtomicU64>,
    /// Encryptions this process reserved on a data key and has not used yet.
    reservation: parking_lot::Mutex<(Uuid, i64)>,
    /// Tokens recently authenticated, by digest (see [`tokens::TokenCache`]).
    tokens: Arc<tokens::TokenCache>,
    /// This store's name in change notifications (it skips its own).
    origin: Uuid,
    /// Resolved trees of recently read documents (see [`tree_cache`]).
    trees: Arc<tree_cache::TreeCache<documents::CachedTree>>,
    /// The PostgreSQL listener that drops revoked tokens from `tokens` and changed
    /// documents from `trees`.
    token_listener: Option<tokio::task::AbortHandle>,
    /// SQLite: the task that checkpoints the log (see [`checkpoint_in_background`]).
    checkpointer: Option<tokio::task::AbortHandle>,
    /// Bumped when this process commits events, and when the listener hears another
    /// replica's change (see [`events`]).
    feed: Arc<tokio::sync::watch::Sender<u64>>,
    /// PostgreSQL: woken after a commit that created documents; the listener then tells
    /// the other replicas (see [`Store::announce_created`]).
    created: Arc<tokio::sync::Notify>,
    #[cfg(test)]
    failpoint: parking_lot::Mutex<Option<&'static str>>,
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some(listener) = &self.token_listener {
            listener.abort();
        }
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.abort();
        }
    }
}

const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
     PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;";

/// The write connection's pragmas beyond [`SQLITE_PRAGMAS`]: no automatic checkpoint (see
/// [`checkpoint_in_background`]).
const SQLITE_WRITE_PRAGMAS: &str = "PRAGMA wal_autocheckpoint = 0;";

/// How often the background checkpoint runs: about SQLite's automatic one (1,000 pages)
/// at a thousand writes a second.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Copies SQLite's log into the database file every [`CHECKPOINT_EVERY`], on a read
/// connection: a passive checkpoint, which waits for no reader or writer. SQLite's own
/// automatic checkpoint is off on the write connection, where it ran inside the commit that
/// crossed its threshold: that commit, and every write and audited read waiting on it,
/// paid for writing pages all over a large database file. Commits still sync the log
/// (`synchronous = FULL`), so durability does not depend on this task.
fn checkpoint_in_background(pool: AnyPool) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(CHECKPOINT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            every.tick().await;
            if let Err(e) = checkpoint_log(&pool).await {
                tracing::warn!(error = %e, "checkpointing the SQLite log failed; trying again");
            }
        }
    })
    .abort_handle()
}

/// One passive checkpoint of SQLite's log: the log's frames and how many are now in the
/// database file.
async fn checkpoint_log(pool: &AnyPool) -> std::result::Result<(i64, i64), sqlx::Error> {
    let row = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(pool)
        .await?;
    Ok((row.try_get(1)?, row.try_get(2)?))
}

/// The page cache of each SQLite read connection, in KiB (SQLite's default is 2 MiB). With
/// up to 16 read connections the default alone could hold 32 MiB of a large store's pages;
/// the operating system caches the file too, so a read that misses costs one `pread`.
const SQLITE_READ_CACHE_KIB: u32 = 512;

impl Store {
    /// Whether `database_url` holds a blocks store (its key-check value), read without
    /// creating or migrating anything.
    pub async fn exists_at(database_url: &str) -> bool {
        use sqlx::Connection as _;
        sqlx::any::install_default_drivers();
        let url = if database_url.starts_with("sqlite:") && !database_url.contains('?') {
            format!("{database_url}?mode=ro")
        } else {
            database_url.to_owned()
        };
        let Ok(mut conn) = sqlx::AnyConnection::connect(&url).await else {
            return false;
        };
        let found: Result<Option<String>, _> =
            sqlx::query_scalar("select value from server_metadata where key = 'key_check'")
                .fetch_optional(&mut conn)
                .await;
        conn.close().await.ok();
        matches!(found, Ok(Some(_)))
    }

    /// Opens (creating if needed) the store at `database_url`, applies migrations and
    /// checks the master key against the stored key-check value. A new store records the
    /// key's check value and creates its first data key; an existing one refuses a key that
    /// does not match.
    pub async fn open(
        database_url: &str,
        master: MasterKeySource,
        config: StoreConfig,
    ) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(database_url)?;
        let (read, write, deferred) = match backend {
            Backend::Sqlite => {
                let url = if database_url.contains('?') {
                    database_url.to_owned()
                } else {
                    format!("{database_url}?mode=rwc")
                };
                // No ping before handing a connection out (sqlx's default): a connection to a
                // file does not go stale, and the ping is one more hand-off to the
                // connection's thread on every read and every write group.
                let options = |pragmas: String| {
                    AnyPoolOptions::new()
                        .test_before_acquire(false)
                        .acquire_timeout(Duration::from_secs(30))
                        .after_connect(move |conn, _| {
                            let pragmas = pragmas.clone();
                            Box::pin(async move {
                                conn.execute(pragmas.as_str()).await?;
                                Ok(())
                            })
                        })
                };
                let write = options(format!("{SQLITE_PRAGMAS} {SQLITE_WRITE_PRAGMAS}"))
                    .max_connections(1)
                    .connect(&url)
                    .await?;
                let read = options(format!(
                    "{SQLITE_PRAGMAS} PRAGMA cache_size = -{SQLITE_READ_CACHE_KIB};"
                ))
                .max_connections(config.max_connections.unwrap_or(16).max(1))
                .connect(&url)
                .await?;
                (read, write, None)
            }
            Backend::Postgres => {
                // A connection is pinged before it is handed out only when it sat idle for
                // a while (the server may have closed it meanwhile); one in steady use was
                // answering a moment ago, and a ping would cost a round trip per read.
                let pool = AnyPoolOptions::new()
                    .max_connections(config.max_connections.unwrap_or(8).max(1))
                    .acquire_timeout(Duration::from_secs(30))
                    .after_connect(|conn, _| Box::pin(async move { no_jit(conn).await }))
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| ping_when_idle(conn, meta.idle_for))
                    .connect(database_url)
                    .await?;
                // The audit writer's connection, acquired once per group of read records:
                // pinged, like the pool's, only after sitting idle (a ping on every acquire
                // was a second round trip per group).
                let deferred = AnyPoolOptions::new()
                    .max_connections(1)
                    .min_connections(0)
                    .acquire_timeout(Duration::from_secs(30))
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute("set synchronous_commit = off").await?;
                            no_jit(conn).await
                        })
                    })
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| ping_when_idle(conn, meta.idle_for))
                    .connect_lazy(database_url)?;
                (pool.clone(), pool, Some(deferred))
            }
        };
        let file = match backend {
            Backend::Sqlite => {
                let rows = sqlx::query("select file from pragma_database_list where name = 'main'")
                    .fetch_all(&write)
                    .await?;
                rows.first()
                    .and_then(|row| row.try_get::<String, _>(0).ok())
                    .filter(|file| !file.is_empty())
                    .map(std::path::PathBuf::from)
            }
            Backend::Postgres => None,
        };
        let wal = file
            .as_ref()
            .map(|file| std::path::PathBuf::from(format!("{}-wal", file.display())));
        let journal = file
            .as_deref()
            .map(|file| audit_journal::Journal::new(file, audit_journal::MAX_JOURNAL_BYTES));
        match backend {
            Backend::Sqlite => sqlx::migrate!("../migrations/sqlite").run(&write).await?,
            Backend::Postgres => sqlx::migrate!("../migrations/postgres").run(&write).await?,
        }
        let master = keys::resolve_master_key(&write, master).await?;
        let tokens = Arc::new(tokens::TokenCache::new(backend));
        let trees = Arc::new(match backend {
            Backend::Sqlite => tree_cache::TreeCache::new(true),
            // Hears creates only after the fact (see `announce_created`).
            Backend::Postgres => {
                tree_cache::TreeCache::new(false).counts_kept_for(tree_cache::COUNTS_MAX_AGE)
            }
        });
        let origin = Uuid::new_v4();
        let queries = Arc::new(AtomicU64::new(0));
        let feed = Arc::new(tokio::sync::watch::Sender::new(0));
        let created = Arc::new(tokio::sync::Notify::new());
        let token_listener = match backend {
            Backend::Postgres => Some(tokens::listen_for_revocations(
                database_url.to_owned(),
                Arc::downgrade(&tokens),
                Arc::downgrade(&trees),
                Arc::downgrade(&feed),
                origin,
                created.clone(),
            )),
            Backend::Sqlite => None,
        };
        let checkpointer = wal
            .is_some()
            .then(|| checkpoint_in_background(read.clone()));
        let store = Self {
            backend,
            groups: (backend == Backend::Sqlite)
                .then(|| group::WriteGroups::new(write.clone(), queries.clone())),
            read,
            write,
            deferred,
            wal,
            journal,
            journal_moves: tokio::sync::Mutex::new(audit::JournalMoves::default()),
            master: RwLock::new(Arc::new(master)),
            keyring: RwLock::new(Keyring::default()),
            config,
            validators: RwLock::new(HashMap::new()),
            schema_secrets: RwLock::new(HashMap::new()),
            schemas: RwLock::new(HashMap::new()),
            queries,
            reservation: parking_lot::Mutex::new((Uuid::nil(), 0)),
            tokens,
            trees,
            origin,
            token_listener,
            checkpointer,
            feed,
            created,
            #[cfg(test)]
            failpoint: parking_lot::Mutex::new(None),
        };
        store.init_keys().await?;
        if let Some(file) = &file {
            store.recover_audit_journals(file).await?;
        }
        Ok(store)
    }

    /// Which database this store runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The store's settings.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Statements this store has sent to the database so far (for measurements).
    pub fn query_count(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// SQLite's group commit: the groups of writes committed so far and how many writes
    /// they held (`None` on PostgreSQL, whose writes commit one by one).
    pub fn write_group_stats(&self) -> Option<(u64, u64)> {
        self.groups.as_ref().map(|groups| {
            let stats = groups.stats();
            (
                stats.commits.load(std::sync::atomic::Ordering::Relaxed),
                stats.writes.load(std::sync::atomic::Ordering::Relaxed),
            )
        })
    }

    /// The read cache's hits, misses and size.
    pub fn tree_cache_stats(&self) -> TreeCacheStats {
        self.trees.stats()
    }

    /// Whether the read cache is in use (on PostgreSQL: while the listener hears changes).
    pub fn tree_cache_live(&self) -> bool {
        self.trees.is_live()
    }

    /// Tells the other replicas, from inside the writing transaction (so they hear it when
    /// it commits, and only if it does), that `documents` changed; an empty list means
    /// "anything may have changed" (a type, a schema, the keys). Nothing to do on SQLite,
    /// where this process is the only writer.
    pub(crate) async fn announce_change(
        &self,
        conn: &mut sqlx::AnyConnection,
        documents: &[Uuid],
    ) -> Result<()> {
        if self.backend != Backend::Postgres {
            return Ok(());
        }
        let payload = tokens::change_payload(self.origin, documents);
        self.count_query();
        sqlx::query("select pg_notify($1, $2)")
            .bind(tokens::CHANGED_CHANNEL)
            .bind(payload)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Tells the other replicas, after a commit that only created documents, that documents
    /// were created. A create changes no resolved tree, only the documents per type (kept
    /// for the console's list) and the change feed, so unlike [`Store::announce_change`]
    /// it is not sent from inside the transaction: a notifying transaction holds
    /// PostgreSQL's notification lock from its commit until its WAL is flushed, which
    /// would make concurrent creates commit one after another instead of sharing flushes.
    /// Creates in quick succession share one notification. Should this process stop
    /// between the commit and the notice, the other replicas recount within
    /// [`tree_cache::COUNTS_MAX_AGE`] and their feed readers look on their own schedule.
    pub(crate) fn announce_created(&self) {
        if self.backend == Backend::Postgres {
            self.created.notify_one();
        }
    }

    /// Marks `documents` (everything when empty) as changing until the guard is dropped:
    /// taken just before the commit that changes them and dropped after it (whatever its
    /// outcome). Meanwhile no tree holding one is served from the cache or kept in it, and
    /// the drop empties them again, so no reader of this process sees the old tree once the
    /// database may hold the new one.
    pub(crate) fn changing(
        &self,
        documents: &[Uuid],
    ) -> tree_cache::Changing<'_, documents::CachedTree> {
        tree_cache::Changing::new(&self.trees, documents)
    }

    /// Commits a write that changed `documents` (none: a type or schema change) with
    /// `commit` (its transaction's or its write group's): no tree holding them is cached
    /// while it commits ([`Store::changing`]), and the feed looks for its event once it is
    /// committed.
    pub(crate) async fn commit_changing<E>(
        &self,
        documents: &[Uuid],
        commit: impl Future<Output = std::result::Result<(), E>>,
    ) -> Result<()>
    where
        StoreError: From<E>,
    {
        let change = self.changing(documents);
        let committed = commit.await;
        drop(change);
        committed?;
        self.feed_committed();
        Ok(())
    }

    /// Runs `statement` (a delete of at most `$2` rows older than `$1`) with `cutoff` and
    /// `batch` until it deletes fewer than `batch`: each batch its own short transaction,
    /// so SQLite's writer is never held for a whole prune. Returns how many were deleted.
    pub(crate) async fn delete_in_batches(
        &self,
        statement: &str,
        cutoff: i64,
        batch: i64,
    ) -> Result<u64> {
        let mut total = 0;
        loop {
            self.count_query();
            let deleted = sqlx::query(statement)
                .bind(cutoff)
                .bind(batch)
                .execute(&self.write)
                .await?
                .rows_affected();
            total += deleted;
            if deleted < batch as u64 {
                return Ok(total);
            }
        }
    }

    /// Drops the cached trees holding `documents` (all of them when empty): for changes
    /// made behind the store's back.
    pub(crate) fn forget_trees(&self, documents: &[Uuid]) {
        if documents.is_empty() {
            self.trees.clear();
        } else {
            self.trees.changed(documents);
        }
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        self.count_query();
        sqlx::query("select 1").execute(&self.read).await?;
        Ok(())
    }

    /// Closes the pools.
    pub async fn close(&self) {
        if let Some(listener) = &self.token_listener {
            listener.abort();
        }
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.abort();
        }
        if let Some(journal) = &self.journal {
            let closed = match self.move_journal(journal).await {
                Ok(()) => self.forget_moved_journal().await,
                Err(e) => Err(e),
            };
            if let Err(e) = closed {
                // Kept on disk: the next store to open the database moves it.
                tracing::warn!(error = %e, "the audit journal could not be moved at close");
            }
        }
        self.read.close().await;
        self.write.close().await;
        if let Some(deferred) = &self.deferred {
            deferred.close().await;
        }
    }

    pub(crate) fn count_query(&self) {
        self.queries.fetch_add(1, Ordering::Relaxed);
    }

    /// ` for update` on PostgreSQL (row lock inside a transaction); nothing on SQLite,
    /// where the single writer connection already serializes writes.
    pub(crate) fn for_update(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => " for update",
            Backend::Sqlite => "",
        }
    }

    /// ` for no key update` on PostgreSQL: locks a document against other writers while
    /// still letting another transaction reference it (a foreign key takes `key share`),
    /// so a parent and its child can be updated at the same time without a deadlock.
    pub(crate) fn for_no_key_update(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => " for no key update",
            Backend::Sqlite => "",
        }
    }

    /// ` collate "C"` on PostgreSQL, so text sorts by bytes as on SQLite, whatever the
    /// database's locale.
    pub(crate) fn collate(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => " collate \"C\"",
            Backend::Sqlite => "",
        }
    }

    /// ` for share` on PostgreSQL; nothing on SQLite.
    pub(crate) fn for_share(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => " for share",
            Backend::Sqlite => "",
        }
    }

    /// Serializes changes to the document reference graph across PostgreSQL sessions, so
    /// two concurrent writes cannot each pass the cycle check and form a cycle together.
    pub(crate) async fn lock_reference_graph(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ) -> Result<()> {
        if self.backend == Backend::Postgres {
            self.count_query();
            sqlx::query("select pg_advisory_xact_lock(7317243)")
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Refuses to delete when `users_sql` (with `$1` = `id`) lists anyone who still uses the
    /// object: the error carries `message` and their names.
    pub(crate) async fn refuse_if_used(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        users_sql: &str,
        id: Uuid,
        message: impl Into<String>,
    ) -> Result<()> {
        self.count_query();
        let referrers: Vec<String> = sqlx::query_scalar(users_sql)
            .bind(id.to_string())
            .fetch_all(&mut **tx)
            .await?;
        if referrers.is_empty() {
            Ok(())
        } else {
            Err(StoreError::InUse {
                message: message.into(),
                referrers,
            })
        }
    }

    /// The compiled validator of a schema (schemas never change, so it is cached).
    pub(crate) fn validator(
        &self,
        schema_id: Uuid,
        fields: &serde_json::Value,
    ) -> Result<Arc<DataValidator>> {
        if let Some(v) = self.read_lock(&self.validators).get(&schema_id) {
            return Ok(v.clone());
        }
        let compiled =
            Arc::new(DataValidator::new(fields).map_err(|e| StoreError::Invalid(vec![e]))?);
        self.write_lock(&self.validators)
            .insert(schema_id, compiled.clone());
        Ok(compiled)
    }

    pub(crate) fn read_lock<'a, T>(
        &self,
        lock: &'a RwLock<T>,
    ) -> parking_lot::RwLockReadGuard<'a, T> {
        lock.read()
    }

    pub(crate) fn write_lock<'a, T>(
        &self,
        lock: &'a RwLock<T>,
    ) -> parking_lot::RwLockWriteGuard<'a, T> {
        lock.write()
    }

    /// Fails the current write at a named point, for tests that prove rollback.
    #[cfg(test)]
    pub(crate) fn fail_at(&self, point: Option<&'static str>) {
        *self.failpoint.lock() = point;
    }

    #[cfg(test)]
    pub(crate) fn check_failpoint(&self, point: &'static str) -> Result<()> {
        let armed = *self.failpoint.lock();
        if armed == Some(point) {
            return Err(StoreError::Corrupt(format!("injected failure at {point}")));
        }
        // `panic:<point>` panics there instead, for tests of what a panicking write leaves.
        if armed.and_then(|a| a.strip_prefix("panic:")) == Some(point) {
            panic!("injected panic at {point}");
        }
        Ok(())
    }

    #[cfg(not(test))]
    #[inline]
    pub(crate) fn check_failpoint(&self, _point: &'static str) -> Result<()> {
        Ok(())
    }

    /// Under test, when `point` is armed: a statement that fails when a batch reaches it (it
    /// names a table that does not exist), so the failure lands between a batch's
    /// statements, after those before it ran.
    #[cfg(test)]
    pub(crate) fn failing_statement(&self, point: &'static str) -> Option<batch::Statement> {
        (*self.failpoint.lock() == Some(point)).then(|| batch::Statement {
            sql: "insert into injected_failure (point) values ($1)".to_owned(),
            params: vec![point.into()],
        })
    }

    #[cfg(not(test))]
    #[inline]
    pub(crate) fn failing_statement(&self, _point: &'static str) -> Option<batch::Statement> {
        None
    }
}

/// Microseconds since the Unix epoch, now.
pub(crate) fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

pub(crate) fn to_time(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

pub(crate) fn parse_uuid(text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|_| StoreError::Corrupt(format!("bad uuid {text:?}")))
}

/// Reads a uuid column.
pub(crate) fn uuid_col(row: &AnyRow, col: &str) -> Result<Uuid> {
    parse_uuid(&row.try_get::<String, _>(col)?)
}

/// Reads a JSON text column.
pub(crate) fn json_col<T: serde::de::DeserializeOwned>(row: &AnyRow, col: &str) -> Result<T> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("column {col}: {e}")))
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// A setting every replica shares: `None` when it was never stored, else the stored JSON
/// value (which may itself be `null`).
pub(crate) async fn read_setting<T: serde::de::DeserializeOwned>(
    conn: &mut sqlx::AnyConnection,
    key: &str,
) -> Result<Option<T>> {
    let stored: Option<String> =
        sqlx::query_scalar("select value from server_metadata where key = $1")
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?;
    stored
        .map(|text| {
            serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("setting {key}: {e}")))
        })
        .transpose()
}

/// Stores a shared setting as JSON, replacing what was there.
pub(crate) async fn write_setting(
    conn: &mut sqlx::AnyConnection,
    key: &str,
    value: &impl serde::Serialize,
) -> Result<()> {
    sqlx::query(
        "insert into server_metadata (key, value) values ($1, $2) \
         on conflict (key) do update set value = excluded.value",
    )
    .bind(key)
    .bind(to_json(value))
    .execute(&mut *conn)
    .await?;
    Ok(())
}
