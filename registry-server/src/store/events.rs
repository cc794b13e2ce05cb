//! The change feed's table: every change of a document, type or schema and every key
//! rotation step is written as an event in the change's own transaction (so no change is
//! without its event, and no event without its change), read in a gap-free order, and kept
//! for a retention period.
//!
//! The order. On SQLite one transaction writes at a time, so `seq` order is commit order.
//! On PostgreSQL concurrent writers take `seq` numbers in one order and commit in another:
//! a reader that saw seq 8 might later see seq 7 commit. So each event also holds its
//! transaction's id, the feed is read in `(xid, seq)` order, and only events of
//! transactions older than the oldest one of this database still running are read: that
//! part of the feed never changes again, and everything after it sorts after it. A long
//! write transaction holds delivery back (never loses an event) until it ends.

use block_types::events::{ChangeEvent, EventKind};
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::batch::{Batch, Statement};
use super::{Backend, Result, Store, StoreError, now_micros, parse_uuid, to_time};

/// The insert of a document's event, before its values.
const DOCUMENT_EVENT: &str = "insert into block_event (xid, occurred, kind, block_document_id, \
     block_type_slug, name, is_anonymous, block_schema_id, version, token_id)";

/// What the event of a new document records about it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CreatedDocument<'a> {
    pub(crate) id: Uuid,
    pub(crate) type_slug: &'a str,
    pub(crate) name: &'a str,
    pub(crate) is_anonymous: bool,
    pub(crate) schema_id: Uuid,
}

/// Events are kept this many hours unless the setting says otherwise.
pub const DEFAULT_EVENT_RETENTION_HOURS: u32 = 24 * 7;
/// The longest retention the setting takes (a year).
const MAX_EVENT_RETENTION_HOURS: u32 = 24 * 366;
const EVENT_RETENTION: &str = "event_retention_hours";
/// The named owners of an anonymous document looked at, at most (a tree holds at most
/// 1000 documents).
const MAX_OWNERS: i64 = 1000;
/// Expired events deleted per statement, so pruning never holds a long lock.
const PRUNE_BATCH: i64 = 5_000;

/// One batch of [`Store::prune_events`]: the oldest events before `$1`, found through the
/// index by time (`order by seq` would walk the whole feed from its first event, holding
/// SQLite's writer all the while, to find none past the retention).
pub(crate) const PRUNE_EVENTS: &str = "delete from block_event where seq in \
     (select seq from block_event where occurred < $1 order by occurred, seq limit $2)";

/// A place in the feed: events are read strictly after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    xid: i64,
    seq: i64,
}

impl Position {
    /// Before every event.
    pub const START: Position = Position { xid: 0, seq: 0 };

    /// The position as stored in a setting (`[xid, seq]`).
    pub(crate) fn to_pair(self) -> [i64; 2] {
        [self.xid, self.seq]
    }

    pub(crate) fn from_pair([xid, seq]: [i64; 2]) -> Self {
        Self { xid, seq }
    }
}

/// An event read from the feed, with its place in it.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedEvent {
    /// Where it is in the feed.
    pub position: Position,
    /// The event.
    pub event: ChangeEvent,
}

/// Where a subscriber that gave a `Last-Event-ID` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Right after that event: every later one is still kept.
    After(Position),
    /// That event is not kept (past retention, or never ours): the subscriber may have
    /// missed events and starts again from the current end of the feed.
    Reset(Position),
}

/// What a write tells the feed about the object it changed.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Subject<'a> {
    pub(crate) slug: Option<&'a str>,
    pub(crate) schema: Option<Uuid>,
    pub(crate) key: Option<Uuid>,
}

impl Store {
    /// The writing transaction's id (PostgreSQL) or 0 (SQLite), as SQL.
    fn xid_sql(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "pg_current_xact_id()::text::bigint",
            Backend::Sqlite => "0",
        }
    }

    /// Inside a write: records `kind` for document `id` as its row stands now (its slug,
    /// name and version; call before deleting it), written by `token`.
    pub(crate) async fn record_document_event(
        &self,
        conn: &mut sqlx::AnyConnection,
        kind: EventKind,
        id: Uuid,
        token: Option<Uuid>,
    ) -> Result<()> {
        let mut batch = Batch::default();
        batch.push(self.document_event(kind, id, token));
        if batch.run(self, conn).await? != 1 {
            return Err(StoreError::Corrupt(format!(
                "no document {id} to record a {kind} event for"
            )));
        }
        Ok(())
    }

    /// The statement of [`Store::record_document_event`], for a [`Batch`]; it changes one
    /// row when document `id` exists.
    pub(crate) fn document_event(
        &self,
        kind: EventKind,
        id: Uuid,
        token: Option<Uuid>,
    ) -> Statement {
        Statement {
            sql: format!(
                "{DOCUMENT_EVENT} select {}, $1, $2, d.id, t.slug, d.name, d.is_anonymous, d.block_schema_id, d.version, $3 \
                 from block_document d join block_type t on t.id = d.block_type_id where d.id = $4",
                self.xid_sql()
            ),
            params: vec![
                now_micros().into(),
                kind.as_str().into(),
                token.map(|t| t.to_string()).into(),
                id.to_string().into(),
            ],
        }
    }

    /// The `document-created` event of document `id`, from the values it is being created
    /// with: it reads no row, so it may join an [`Batch::independent`] batch.
    pub(crate) fn created_event(
        &self,
        created: CreatedDocument<'_>,
        token: Option<Uuid>,
    ) -> Statement {
        Statement {
            sql: format!(
                "{DOCUMENT_EVENT} values ({}, $1, $2, $3, $4, $5, $6, $7, 1, $8)",
                self.xid_sql()
            ),
            params: vec![
                now_micros().into(),
                EventKind::DocumentCreated.as_str().into(),
                created.id.to_string().into(),
                created.type_slug.into(),
                created.name.into(),
                i64::from(created.is_anonymous).into(),
                created.schema_id.to_string().into(),
                token.map(|t| t.to_string()).into(),
            ],
        }
    }

    /// Inside a write: records `kind` about a type, a schema or a key, written by `token`.
    pub(crate) async fn record_event(
        &self,
        conn: &mut sqlx::AnyConnection,
        kind: EventKind,
        subject: Subject<'_>,
        token: Option<Uuid>,
    ) -> Result<()> {
        self.count_query();
        sqlx::query(&format!(
            "insert into block_event (xid, occurred, kind, block_type_slug, block_schema_id, key_id, token_id) \
             values ({}, $1, $2, $3, $4, $5, $6)",
            self.xid_sql()
        ))
        .bind(now_micros())
        .bind(kind.as_str())
        .bind(subject.slug)
        .bind(subject.schema.map(|s| s.to_string()))
        .bind(subject.key.map(|k| k.to_string()))
        .bind(token.map(|t| t.to_string()))
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Tells this process's feed readers that events were committed (they also look every
    /// so often, and on PostgreSQL when another replica announces a change).
    pub(crate) fn feed_committed(&self) {
        self.feed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that changes whenever this process committed events or heard another
    /// replica announce a change.
    pub fn feed_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.feed.subscribe()
    }

    /// ` and <stable>`: the part of the feed no running transaction can still add to.
    ///
    /// On PostgreSQL: the events of transactions older than every transaction the
    /// statement's snapshot sees running, except those running in another database of the
    /// cluster (they never write here; without this, any other application's long
    /// transaction would hold the feed back). A running transaction whose database cannot
    /// be told (it ended between the snapshot and the look at `pg_stat_activity`, or its
    /// session is another user's) counts as ours: the feed waits rather than skips.
    fn stable_condition(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => {
                " and xid < (select coalesce(min(r.x), pg_snapshot_xmax(pg_current_snapshot())::text::bigint) \
                   from (select x::text::bigint as x from pg_snapshot_xip(pg_current_snapshot()) as x) r \
                   where r.x % 4294967296 not in (select backend_xid::text::bigint from pg_stat_activity \
                     where backend_xid is not null and datname is distinct from current_database()))"
            }
            Backend::Sqlite => "",
        }
    }

    /// The statement of [`Store::events_after`] (`$1`, `$2`: the position; `$3`: the
    /// limit). SQLite writes `xid` 0 (one writer at a time: `seq` alone is the order), so
    /// it asks for that `xid` and a later `seq`: one range of the position index. Its
    /// planner reads a row-value comparison as `xid > $1` and walked every event of the
    /// feed to find none (70–100 ms at a million events, on the readers' thread each time
    /// the feed was read).
    pub(crate) fn events_after_sql(&self) -> String {
        let after = match self.backend {
            Backend::Postgres => "(xid, seq) > ($1, $2)",
            Backend::Sqlite => "xid = $1 and seq > $2",
        };
        format!(
            "select seq, xid, occurred, kind, block_document_id, block_type_slug, name, is_anonymous, \
               block_schema_id, key_id, version, token_id from block_event \
             where {after}{} order by xid, seq limit $3",
            self.stable_condition()
        )
    }

    /// Up to `limit` events after `after`, in feed order.
    pub async fn events_after(&self, after: Position, limit: u32) -> Result<Vec<FeedEvent>> {
        self.count_query();
        let rows = sqlx::query(&self.events_after_sql())
            .bind(after.xid)
            .bind(after.seq)
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(feed_event).collect()
    }

    /// Whether events after `after` are committed but held back behind a transaction
    /// still running (PostgreSQL): their changes are readable, their events not yet
    /// delivered. Always false on SQLite.
    pub async fn feed_held_back(&self, after: Position) -> Result<bool> {
        if self.backend != Backend::Postgres {
            return Ok(false);
        }
        self.count_query();
        let stable = self.stable_condition().trim_start_matches(" and ");
        let held: bool = sqlx::query_scalar(&format!(
            "select exists (select 1 from block_event where (xid, seq) > ($1, $2) and not ({stable}))"
        ))
        .bind(after.xid)
        .bind(after.seq)
        .fetch_one(&self.read)
        .await?;
        Ok(held)
    }

    /// The end of the feed now: a reader starting here gets every event committed later.
    pub async fn feed_end(&self) -> Result<Position> {
        self.count_query();
        let row = sqlx::query(&format!(
            "select xid, seq from block_event where 1 = 1{} order by xid desc, seq desc limit 1",
            self.stable_condition()
        ))
        .fetch_optional(&self.read)
        .await?;
        match row {
            Some(row) => Ok(Position {
                xid: row.try_get("xid")?,
                seq: row.try_get("seq")?,
            }),
            None => Ok(Position::START),
        }
    }

    /// Where a subscriber that last saw event `id` goes on.
    pub async fn resume_after(&self, id: i64) -> Result<Resume> {
        self.count_query();
        let row = sqlx::query("select xid, seq from block_event where seq = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        match row {
            Some(row) => Ok(Resume::After(Position {
                xid: row.try_get("xid")?,
                seq: row.try_get("seq")?,
            })),
            None => Ok(Resume::Reset(self.feed_end().await?)),
        }
    }

    /// The named documents whose trees hold the anonymous document `id`: those that
    /// reference it directly, or through a chain of anonymous documents (an anonymous
    /// document is part of the documents that reference it; a named one is a block of its
    /// own, which a grant must name). At most [`MAX_OWNERS`].
    pub async fn named_referrers(&self, id: Uuid) -> Result<Vec<super::Identity>> {
        self.count_query();
        let rows = sqlx::query(
            "with recursive up (id, anonymous, depth) as ( \
               select cast($1 as text), cast(1 as bigint), 0 \
               union select r.parent_block_document_id, p.is_anonymous, up.depth + 1 \
                 from block_document_reference r join up on r.reference_block_document_id = up.id \
                 join block_document p on p.id = r.parent_block_document_id \
                 where up.anonymous = 1 and up.depth < 32) \
             select distinct t.slug, d.name from up join block_document d on d.id = up.id \
               join block_type t on t.id = d.block_type_id where up.depth > 0 and d.is_anonymous = 0 limit $2",
        )
        .bind(id.to_string())
        .bind(MAX_OWNERS)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(super::Identity {
                    slug: row.try_get("slug")?,
                    name: row.try_get("name")?,
                    anonymous: false,
                })
            })
            .collect()
    }

    /// The token at the top of `token`'s family (itself when it has no parent): limits on
    /// what one token may hold open count its children's too.
    pub async fn token_family_root(&self, token: Uuid) -> Result<Uuid> {
        self.count_query();
        let root: Option<String> = sqlx::query_scalar(
            "with recursive up (id, parent_id, depth) as ( \
               select id, parent_id, 0 from api_token where id = $1 \
               union all select t.id, t.parent_id, up.depth + 1 from api_token t \
                 join up on t.id = up.parent_id where up.depth < 64) \
             select id from up where parent_id is null limit 1",
        )
        .bind(token.to_string())
        .fetch_optional(&self.read)
        .await?;
        root.map_or(Ok(token), |r| parse_uuid(&r))
    }

    /// How many hours events are kept (`None`: forever); shared by every replica.
    pub async fn event_retention_hours(&self) -> Result<Option<u32>> {
        let mut conn = self.read.acquire().await?;
        self.count_query();
        Ok(super::read_setting(&mut conn, EVENT_RETENTION)
            .await?
            .unwrap_or(Some(DEFAULT_EVENT_RETENTION_HOURS)))
    }

    /// Refuses a retention outside 1 hour to a year.
    pub fn check_event_retention_hours(hours: Option<u32>) -> Result<()> {
        match hours {
            Some(hours) if !(1..=MAX_EVENT_RETENTION_HOURS).contains(&hours) => {
                Err(StoreError::invalid(
                    "event_retention_hours",
                    format!(
                        "must be between 1 and {MAX_EVENT_RETENTION_HOURS} hours, or null to keep every event"
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Changes the retention and prunes what falls outside it now. Returns how many events
    /// were deleted.
    pub async fn set_event_retention_hours(&self, hours: Option<u32>) -> Result<u64> {
        Self::check_event_retention_hours(hours)?;
        {
            let mut conn = self.write.acquire().await?;
            self.count_query();
            super::write_setting(&mut conn, EVENT_RETENTION, &hours).await?;
        }
        self.prune_events(Utc::now()).await
    }

    /// Deletes the events older than the retention allows at `now`, in batches.
    pub async fn prune_events(&self, now: DateTime<Utc>) -> Result<u64> {
        let Some(hours) = self.event_retention_hours().await? else {
            return Ok(0);
        };
        let cutoff = (now - chrono::Duration::hours(i64::from(hours))).timestamp_micros();
        // Finished deliveries go with their events (pending ones stay until given up).
        self.prune_deliveries(cutoff).await?;
        self.delete_in_batches(PRUNE_EVENTS, cutoff, PRUNE_BATCH)
            .await
    }
}

fn optional_uuid(row: &AnyRow, col: &str) -> Result<Option<Uuid>> {
    row.try_get::<Option<String>, _>(col)?
        .map(|text| parse_uuid(&text))
        .transpose()
}

fn feed_event(row: &AnyRow) -> Result<FeedEvent> {
    let seq: i64 = row.try_get("seq")?;
    let kind: String = row.try_get("kind")?;
    let kind = kind
        .parse()
        .map_err(|e| StoreError::Corrupt(format!("event {seq}: {e}")))?;
    Ok(FeedEvent {
        position: Position {
            xid: row.try_get("xid")?,
            seq,
        },
        event: ChangeEvent {
            id: seq,
            occurred: to_time(row.try_get("occurred")?),
            kind,
            block_document_id: optional_uuid(row, "block_document_id")?,
            block_type_slug: row.try_get("block_type_slug")?,
            block_document_name: row.try_get("name")?,
            is_anonymous: row.try_get::<i64, _>("is_anonymous")? != 0,
            block_schema_id: optional_uuid(row, "block_schema_id")?,
            key_id: optional_uuid(row, "key_id")?,
            version: row.try_get("version")?,
            token_id: optional_uuid(row, "token_id")?,
        },
    })
}
