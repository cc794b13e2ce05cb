//! The audit log's storage: records are appended in groups (one transaction, one commit
//! for many requests), listed newest first with filters and a cursor, and pruned after the
//! retention setting's number of days.

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use sqlx::Executor as _;

use block_types::access::AuditRecord;

use super::audit_journal::{Journal, Taken};
use super::batch::{Batch, Statement};
use super::{Backend, Result, Store, StoreError, parse_uuid, to_time};

/// A record to append; `seq` is assigned by the database.
#[derive(Debug, Clone)]
pub struct NewAuditRecord {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// See [`AuditRecord::request_id`].
    pub request_id: String,
    /// See [`AuditRecord::token_id`].
    pub token_id: Option<Uuid>,
    /// See [`AuditRecord::action`].
    pub action: String,
    /// See [`AuditRecord::target`].
    pub target: String,
    /// See [`AuditRecord::outcome`].
    pub outcome: &'static str,
    /// See [`AuditRecord::status`].
    pub status: u16,
}

/// Filters of `GET /api/audit`. Every field narrows the result.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this token's records.
    pub token_id: Option<Uuid>,
    /// Only actions starting with this text (`DELETE`, `block.loaded`).
    pub action: Option<String>,
    /// Only this outcome.
    pub outcome: Option<String>,
    /// Only targets containing this text (an id, a path).
    pub target: Option<String>,
    /// Only this request.
    pub request_id: Option<String>,
    /// Records at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Records before this time.
    pub until: Option<DateTime<Utc>>,
    /// Records older than this position (the previous page's last `seq`).
    pub before: Option<i64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<i64>,
}

/// The longest text field stored; longer ones are cut (at a character boundary).
const MAX_FIELD: usize = 512;
/// The longest target stored: a path of [`MAX_FIELD`] bytes and the ids of up to a hundred
/// documents a secret read showed.
pub(crate) const MAX_TARGET: usize = 4608;

/// Audit text as stored: control characters (NUL included, which PostgreSQL text cannot
/// hold) become `?`, and the text is cut to `max` bytes, so no caller-chosen text can fail
/// a group or bloat the log.
fn clean(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(if c.is_control() { '?' } else { c });
    }
    out
}

/// One stored record as the insert reads it from its JSON array.
#[derive(serde::Serialize)]
struct StoredRecord<'a> {
    at: i64,
    request_id: String,
    token_id: Option<String>,
    action: String,
    target: String,
    outcome: &'a str,
    status: i64,
}

impl<'a> StoredRecord<'a> {
    fn of(r: &'a NewAuditRecord) -> Self {
        StoredRecord {
            at: r.at.timestamp_micros(),
            request_id: clean(&r.request_id, MAX_FIELD),
            token_id: r.token_id.map(|t| t.to_string()),
            action: clean(&r.action, MAX_FIELD),
            target: clean(&r.target, MAX_TARGET),
            outcome: r.outcome,
            status: i64::from(r.status),
        }
    }
}

/// `value` (records, or one) as the JSON the insert reads.
fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Config(format!("audit records could not be written: {e}")))
}

/// `records` as the JSON array the insert reads.
fn rows_json(records: &[NewAuditRecord]) -> Result<String> {
    to_json(&records.iter().map(StoredRecord::of).collect::<Vec<_>>())
}

/// SQLite's insert of the records in a JSON array (`$1`), in their order.
const SQLITE_INSERT: &str = "insert into audit_event (at, request_id, token_id, action, target, outcome, status) \
     select json_extract(value, '$.at'), json_extract(value, '$.request_id'), \
     json_extract(value, '$.token_id'), json_extract(value, '$.action'), \
     json_extract(value, '$.target'), json_extract(value, '$.outcome'), \
     json_extract(value, '$.status') from json_each($1) order by key";

/// How long [`Store::sync_audit`] waits for a journal's move (its records are synced
/// before it): the syncer then syncs the records that came meanwhile.
const JOURNAL_MOVE_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// The moves of the audit journal (see [`Store::sync_audit`]), one at a time.
#[derive(Debug, Default)]
pub(crate) struct JournalMoves {
    /// Journals taken whose move failed: moved first next time, in order.
    failed: Vec<Taken>,
    /// The last journal moved (its file deleted): the next move deletes its row.
    forget: Option<Uuid>,
}

/// Days audit records are kept when the setting was never changed.
pub(crate) const DEFAULT_AUDIT_RETENTION_DAYS: u32 = 400;
/// The longest retention that may be set (a hundred years).
const MAX_AUDIT_RETENTION_DAYS: u32 = 36_500;
/// The `server_metadata` row holding the audit retention (JSON: days, or null for ever).
const AUDIT_RETENTION: &str = "audit_retention_days";
/// Records deleted per statement when pruning, so a large backlog never holds the writer
/// (SQLite's single connection) for long.
const PRUNE_BATCH: i64 = 5000;

/// One batch of [`Store::prune_audit`]: the oldest records before `$1`, found through the
/// index by time (`order by seq` would walk the whole log from its first record, holding
/// SQLite's writer all the while, to find none past the retention).
pub(crate) const PRUNE_AUDIT: &str = "delete from audit_event where seq in \
     (select seq from audit_event where at < $1 order by at, seq limit $2)";
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Records per page by default, and at most.
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

impl Store {
    /// Appends records in one transaction: they are on disk (synced) when this returns.
    pub async fn append_audit(&self, records: &[NewAuditRecord]) -> Result<()> {
        if let Some(groups) = &self.groups {
            // SQLite: in the group commit, so writes and their records share a sync.
            let mut slot = groups.write().await?;
            let mut tx = slot.savepoint().await?;
            self.append_audit_on(&mut tx, records).await?;
            tx.commit().await?;
            return slot.commit().await;
        }
        let mut conn = self.write.acquire().await?;
        self.append_audit_on(&mut conn, records).await
    }

    /// Appends records in one transaction without waiting for the disk: when this returns
    /// they are committed, so they survive the server process being killed, and
    /// [`Store::sync_audit`] (or the next synced commit) puts them on disk. For the records
    /// of reads, whose volume would otherwise wait on a sync each.
    ///
    /// SQLite: the write connection commits this one transaction with `synchronous =
    /// NORMAL` (the WAL is written, not synced). PostgreSQL: a connection of its own with
    /// `synchronous_commit = off`.
    ///
    /// SQLite with a database file: appended to the journal ([`super::audit_journal`]),
    /// without a hand-off to another thread.
    pub async fn append_audit_deferred(&self, records: &[NewAuditRecord]) -> Result<()> {
        if let Some(journal) = &self.journal {
            for record in records {
                journal.append(&to_json(&StoredRecord::of(record))?)?;
            }
            return Ok(());
        }
        match (&self.backend, &self.deferred) {
            (Backend::Postgres, Some(pool)) => {
                let mut conn = pool.acquire().await?;
                self.append_audit_on(&mut conn, records).await
            }
            (Backend::Sqlite, _) => {
                let mut conn = self.write.acquire().await?;
                if let Err(e) = conn.execute("PRAGMA synchronous = NORMAL").await {
                    drop(conn.detach());
                    return Err(e.into());
                }
                let appended = self.append_audit_on(&mut conn, records).await;
                if let Err(e) = conn.execute("PRAGMA synchronous = FULL").await {
                    // Never hand back a connection that would commit writes unsynced.
                    tracing::error!(error = %e, "closing the write connection: it could not be set back to synchronous = FULL");
                    drop(conn.detach());
                }
                appended
            }
            (Backend::Postgres, None) => self.append_audit(records).await,
        }
    }

    /// Whether [`Store::append_audit_deferred`] appends to a journal on the caller's own
    /// thread (SQLite with a database file), so its caller need not queue records for a
    /// writer task.
    pub fn journals_reads(&self) -> bool {
        self.journal.is_some()
    }

    /// Puts every record appended by [`Store::append_audit_deferred`] so far on disk.
    /// SQLite: moves the journal into the audit log (one synced transaction through the
    /// group commit), or, for a database without a file, syncs the write-ahead log file
    /// (any commit of this process went through it). PostgreSQL: commits a transaction
    /// that waits for the WAL to be flushed, which covers every commit before it.
    pub async fn sync_audit(&self) -> Result<()> {
        if let Some(journal) = &self.journal {
            // On disk first, so a move waiting for the writer holds no record back; the
            // move then runs a while at most (a move cut short is tried again next time).
            journal.sync().await?;
            return match tokio::time::timeout(JOURNAL_MOVE_WAIT, self.move_journal(journal)).await {
                Ok(moved) => moved,
                Err(_) => Ok(()),
            };
        }
        match self.backend {
            Backend::Sqlite => {
                let Some(wal) = self.wal.clone() else {
                    return Ok(());
                };
                let synced = tokio::task::spawn_blocking(move || {
                    match std::fs::File::open(&wal) {
                        Ok(file) => file.sync_data(),
                        // No log file: nothing written since the last checkpoint.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                        Err(e) => Err(e),
                    }
                })
                .await
                .map_err(|e| StoreError::Config(format!("syncing the write-ahead log: {e}")))?;
                synced.map_err(|e| StoreError::Config(format!("syncing the write-ahead log: {e}")))
            }
            Backend::Postgres => {
                // On the deferred connection (so a busy pool cannot hold the sync back),
                // committing this once with a wait for the flush.
                let pool = self.deferred.as_ref().unwrap_or(&self.write);
                let mut tx = pool.begin().await?;
                self.count_query();
                sqlx::query("set local synchronous_commit = on")
                    .execute(&mut *tx)
                    .await?;
                self.count_query();
                // A transaction id makes the commit a real one, flushed before it returns.
                sqlx::query("select cast(txid_current() as bigint)")
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }
        }
    }

    /// Moves the journal's records into the audit log: first a journal taken before whose
    /// move failed (no new one is taken while it waits, so the current one fills to its
    /// bound rather than files pile up), then the current one. Each in one transaction
    /// with its id (so a journal found again after a crash is not moved twice), synced,
    /// before its file is deleted. A move cut short (its caller cancelled) or failed is
    /// tried again; one whose commit landed unbeknown is recognised by its recorded id.
    pub(crate) async fn move_journal(&self, journal: &Journal) -> Result<()> {
        let mut guard = self.journal_moves.lock().await;
        let moves = &mut *guard;
        let mut took_current = false;
        loop {
            if moves.failed.is_empty() {
                // The current journal, once: records appended meanwhile wait for the next.
                if took_current {
                    break;
                }
                took_current = true;
                match journal.take() {
                    Some(taken) => moves.failed.push(taken),
                    None => break,
                }
            }
            let Some(taken) = moves.failed.first_mut() else {
                break;
            };
            let done = taken.tried && self.journal_recorded(taken.id).await?;
            taken.tried = true;
            if !done {
                taken.sync().await?;
                self.move_taken(taken, moves.forget).await?;
                // Under test: the commit landed but its caller heard a failure.
                self.check_failpoint("journal_after_commit")?;
            }
            // The previous journal's row went with that commit.
            moves.forget = None;
            let taken = moves.failed.remove(0);
            let id = taken.id;
            match taken.remove().await {
                Ok(()) => moves.forget = Some(id),
                // Its id stays recorded, so the journal found again is deleted, not moved.
                Err(e) => tracing::warn!(error = %e, "a moved audit journal could not be deleted"),
            }
        }
        Ok(())
    }

    /// Whether the journal `id`'s records are in the audit log.
    async fn journal_recorded(&self, id: Uuid) -> Result<bool> {
        self.count_query();
        Ok(
            sqlx::query("select 1 from audit_journal_moved where id = $1")
                .bind(id.to_string())
                .fetch_optional(&self.write)
                .await?
                .is_some(),
        )
    }

    /// One journal's records and id in one synced transaction (the group commit); `forget`:
    /// the previous journal's id, whose row is no longer needed.
    pub(crate) async fn move_taken(&self, taken: &Taken, forget: Option<Uuid>) -> Result<()> {
        let records = taken.records().await?;
        if records.skipped > 0 {
            tracing::warn!(
                records = records.skipped,
                "audit journal lines cut short (by a power loss or a failed write) were skipped"
            );
        }
        let groups = self
            .groups
            .as_ref()
            .ok_or_else(|| StoreError::Config("an audit journal needs SQLite's writer".into()))?;
        let mut batch = Batch::default();
        if let Some(forget) = forget {
            batch.push(Statement {
                sql: "delete from audit_journal_moved where id = $1".into(),
                params: vec![forget.to_string().into()],
            });
        }
        batch.push(Statement {
            sql: "insert into audit_journal_moved (id) values ($1)".into(),
            params: vec![taken.id.to_string().into()],
        });
        batch.push(Statement {
            sql: SQLITE_INSERT.into(),
            params: vec![records.json.into()],
        });
        batch.push_failpoint(self, "journal_before_commit");
        let mut slot = groups.write().await?;
        slot.run_batch(self, batch).await?;
        slot.commit().await
    }

    /// Moves the journals of stores that ended before moving them (a killed server), when
    /// the store opens, one at a time: a journal whose id is recorded was moved already and
    /// is only deleted. Then forgets the ids of journals whose files are gone.
    pub(crate) async fn recover_audit_journals(&self, database: &std::path::Path) -> Result<()> {
        for orphan in Journal::orphans(database)? {
            if !self.journal_recorded(orphan.id).await? {
                let count = match orphan.records().await {
                    Ok(records) => records.count,
                    Err(e) => {
                        tracing::warn!(error = %e, "an audit journal could not be read; it is left for a later start");
                        continue;
                    }
                };
                self.move_taken(&orphan, None).await?;
                tracing::info!(
                    records = count,
                    "moved the audit records of reads a previous server journaled"
                );
            }
            orphan.remove().await?;
        }
        self.count_query();
        let ids: Vec<String> = sqlx::query_scalar("select id from audit_journal_moved")
            .fetch_all(&self.write)
            .await?;
        for id in ids {
            let gone = Uuid::parse_str(&id).is_ok_and(|id| !Journal::exists(database, id));
            if gone {
                self.count_query();
                sqlx::query("delete from audit_journal_moved where id = $1")
                    .bind(id)
                    .execute(&self.write)
                    .await?;
            }
        }
        Ok(())
    }

    /// Forgets the last moved journal's id (its file is gone), when the store closes.
    pub(crate) async fn forget_moved_journal(&self) -> Result<()> {
        let forget = self.journal_moves.lock().await.forget.take();
        if let Some(id) = forget {
            self.count_query();
            sqlx::query("delete from audit_journal_moved where id = $1")
                .bind(id.to_string())
                .execute(&self.write)
                .await?;
        }
        Ok(())
    }

    pub(crate) async fn append_audit_on(
        &self,
        conn: &mut sqlx::AnyConnection,
        records: &[NewAuditRecord],
    ) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::default();
        batch.push(self.audit_insert(records)?);
        batch.run(self, conn).await?;
        Ok(())
    }

    /// The statement of [`Store::append_audit_on`], for a [`Batch`]: one statement for any
    /// number of records (atomic on its own), its text always the same, so it stays
    /// prepared on the connection.
    pub(crate) fn audit_insert(&self, records: &[NewAuditRecord]) -> Result<Statement> {
        let sql = match self.backend {
            Backend::Sqlite => SQLITE_INSERT,
            Backend::Postgres => {
                "insert into audit_event (at, request_id, token_id, action, target, outcome, status) \
                 select r.at, r.request_id, r.token_id, r.action, r.target, r.outcome, r.status \
                 from rows from (json_to_recordset(cast($1 as json)) as (at bigint, request_id text, \
                 token_id text, action text, target text, outcome text, status bigint)) \
                 with ordinality as r(at, request_id, token_id, action, target, outcome, status, n) \
                 order by r.n"
            }
        };
        Ok(Statement {
            sql: sql.to_owned(),
            params: vec![rows_json(records)?.into()],
        })
    }

    /// Records matching `query`, newest first.
    pub async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>> {
        if let Some(journal) = &self.journal
            && let Err(e) = self.move_journal(journal).await
        {
            // The log as it stands is still worth listing (a full disk is when it is
            // needed most); the records waiting are moved later.
            tracing::warn!(error = %e, "listing the audit log without the records of reads still journaled");
        }
        let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
        if let Some(outcome) = &query.outcome
            && !["ok", "denied", "failed", "error"].contains(&outcome.as_str())
        {
            return Err(StoreError::invalid(
                "outcome",
                "must be one of ok, denied, failed, error",
            ));
        }
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(StoreError::invalid(
                "limit",
                format!("limit must be between 1 and {MAX_LIMIT}"),
            ));
        }
        let mut sql = super::sql::Sql::new(
            "select seq, at, request_id, token_id, action, target, outcome, status from audit_event where 1 = 1",
        );
        if let Some(token) = query.token_id {
            sql.push(" and token_id = ").bind_text(token.to_string());
        }
        if let Some(action) = &query.action {
            sql.push(" and substr(action, 1, cast(")
                .bind_int(action.chars().count() as i64)
                .push(" as integer)) = ")
                .bind_text(action.clone());
        }
        if let Some(outcome) = &query.outcome {
            sql.push(" and outcome = ").bind_text(outcome.clone());
        }
        if let Some(target) = &query.target {
            let find = match self.backend {
                super::Backend::Sqlite => " and instr(target, ",
                super::Backend::Postgres => " and strpos(target, ",
            };
            sql.push(find).bind_text(target.clone()).push(") > 0");
        }
        if let Some(request_id) = &query.request_id {
            sql.push(" and request_id = ").bind_text(request_id.clone());
        }
        if let Some(since) = query.since {
            sql.push(" and at >= ").bind_int(since.timestamp_micros());
        }
        if let Some(until) = query.until {
            sql.push(" and at < ").bind_int(until.timestamp_micros());
        }
        if let Some(before) = query.before {
            sql.push(" and seq < ").bind_int(before);
        }
        sql.push(" order by seq desc limit ").bind_int(limit);
        self.count_query();
        let rows = sql.query().fetch_all(&self.read).await?;
        rows.iter()
            .map(|row| {
                Ok(AuditRecord {
                    seq: row.try_get("seq")?,
                    at: to_time(row.try_get("at")?),
                    request_id: row.try_get("request_id")?,
                    token_id: row
                        .try_get::<Option<String>, _>("token_id")?
                        .map(|t| parse_uuid(&t))
                        .transpose()?,
                    action: row.try_get("action")?,
                    target: row.try_get("target")?,
                    outcome: row.try_get("outcome")?,
                    status: u16::try_from(row.try_get::<i64, _>("status")?).unwrap_or(0),
                })
            })
            .collect()
    }
}

impl Store {
    /// Days audit records are kept (`None`: for ever): the stored setting, else
    /// [`DEFAULT_AUDIT_RETENTION_DAYS`]. Shared by every replica.
    pub async fn audit_retention_days(&self) -> Result<Option<u32>> {
        self.count_query();
        let mut conn = self.read.acquire().await?;
        Ok(super::read_setting(&mut conn, AUDIT_RETENTION)
            .await?
            .unwrap_or(Some(DEFAULT_AUDIT_RETENTION_DAYS)))
    }

    /// Checks an audit retention before it is stored: 1 to 36,500 days, or `None`.
    pub fn check_audit_retention_days(days: Option<u32>) -> Result<()> {
        match days {
            Some(days) if !(1..=MAX_AUDIT_RETENTION_DAYS).contains(&days) => {
                Err(StoreError::invalid(
                    "audit_retention_days",
                    format!(
                        "must be between 1 and {MAX_AUDIT_RETENTION_DAYS} days, or null to keep every record"
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Stores the audit retention (`None`: keep every record) and prunes older records now.
    /// Returns how many were pruned.
    pub async fn set_audit_retention_days(&self, days: Option<u32>) -> Result<u64> {
        Self::check_audit_retention_days(days)?;
        self.count_query();
        let mut conn = self.write.acquire().await?;
        super::write_setting(&mut conn, AUDIT_RETENTION, &days).await?;
        drop(conn);
        self.prune_audit(Utc::now()).await
    }

    /// Deletes the records older than the retention allows, as of `now`, in batches.
    /// Returns how many were deleted.
    pub async fn prune_audit(&self, now: DateTime<Utc>) -> Result<u64> {
        let Some(days) = self.audit_retention_days().await? else {
            return Ok(0);
        };
        let cutoff = now
            .timestamp_micros()
            .saturating_sub(i64::from(days).saturating_mul(MICROS_PER_DAY));
        self.delete_in_batches(PRUNE_AUDIT, cutoff, PRUNE_BATCH)
            .await
    }
}
