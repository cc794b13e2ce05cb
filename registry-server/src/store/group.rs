//! Group commit for SQLite's writes: writes that arrive while a commit is being synced to
//! disk run one after another in the next transaction, each in a savepoint of its own, and
//! one commit (one sync) makes them all durable. A write is answered only after the commit
//! of its group; a write that fails rolls back its savepoint and leaves the others whole.
//!
//! SQLite has one writer at a time (the store's single write connection), so the cost of a
//! write is mostly its sync: with a group per sync, many writers share one. PostgreSQL
//! commits concurrent transactions on connections of their own and groups their WAL
//! flushes itself, so this is used on SQLite only.
//!
//! The protocol: a write locks the open group (beginning a transaction when none is open),
//! runs its statements in a savepoint, releases it, joins the group and unlocks; the
//! committer task takes the open group as soon as it has a member (waiting for the write
//! holding the lock to finish), commits it and tells its members. Writes arriving during
//! that commit wait for the connection, and form the next group.
//!
//! A write that only runs statements prepared beforehand (a document's create) queues them
//! for a runner task instead ([`WriteGroups::run`]): the runner takes every write queued,
//! and runs consecutive ones of the same statements together (up to [`MAX_JOINED`]) in one
//! savepoint, one hand-off to the connection's thread for all of them, where each write
//! would have waited for its own hand-off and its turn at the lock. When such a joined run fails, nothing of it is kept
//! and its writes run again one by one, each in its own savepoint, so a failing write fails
//! alone with its own error. The runner is a task of its own, so a request that goes away
//! never cuts another request's write short.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::FutureExt as _;
use sqlx::{Any, AnyPool, Transaction};
use tokio::sync::{Mutex, Notify, OwnedMutexGuard, mpsc, oneshot, watch};

use super::batch::{Batch, Statement};
use super::{Backend, Result, Store, StoreError};

/// Writes in one group, about: a write finding this many waits for the next group (the
/// runner may add up to [`TAKEN`] in one turn).
const MAX_MEMBERS: usize = 256;
/// Queued writes of the same statements run together, this many at most: each number of
/// them is one more text the connection keeps prepared (a group rarely holds more).
const MAX_JOINED: usize = 8;
/// Queued writes the runner takes in one turn, holding the group's lock.
const TAKEN: usize = 4 * MAX_JOINED;
/// Writes waiting for the runner beyond this make new ones wait for room.
const QUEUE: usize = 1024;

/// A write queued for the runner ([`WriteGroups::run`]), and where it hears how its
/// statements went: the group to wait for, or its failure.
struct Queued {
    batch: Batch,
    reply: oneshot::Sender<Result<watch::Receiver<Outcome>>>,
}

/// The outcome of a group's commit, told to its members.
type Outcome = Option<std::result::Result<(), String>>;

/// The open group: its transaction, its members, and where its outcome will be told.
struct Open {
    tx: Option<Transaction<'static, Any>>,
    members: usize,
    outcome: watch::Sender<Outcome>,
    /// A write's own savepoint ([`GroupWrite::run_batch`]) may be open in `tx`: its write
    /// ended (cancelled) before it knew how its batch went. Whoever holds the group next
    /// rolls it back before anything else ([`settle`]).
    unsettled: bool,
}

/// The savepoint [`GroupWrite::run_batch`] writes in.
const SAVEPOINT: &str = "group_write";

/// How many groups were committed and how many writes they held, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct GroupStats {
    /// Groups whose commit succeeded.
    pub(crate) commits: AtomicU64,
    /// Writes those groups held.
    pub(crate) writes: AtomicU64,
}

/// The shared write transaction and its committer (see the module documentation).
pub(crate) struct WriteGroups {
    pool: AnyPool,
    open: Arc<Mutex<Open>>,
    stats: Arc<GroupStats>,
    /// Writes for the runner.
    queue: mpsc::Sender<Queued>,
    runner: tokio::task::AbortHandle,
    /// Woken when a group gains a member.
    joined: Arc<Notify>,
    committer: tokio::task::AbortHandle,
}

impl std::fmt::Debug for WriteGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteGroups").finish_non_exhaustive()
    }
}

impl Drop for WriteGroups {
    fn drop(&mut self) {
        self.committer.abort();
        self.runner.abort();
    }
}

impl WriteGroups {
    /// Groups the writes on `pool` (one connection), counting the statements it sends in
    /// `queries`; starts the committer and the runner tasks.
    pub(crate) fn new(pool: AnyPool, queries: Arc<AtomicU64>) -> Self {
        let open = Arc::new(Mutex::new(Open {
            tx: None,
            members: 0,
            outcome: watch::channel(None).0,
            unsettled: false,
        }));
        let joined = Arc::new(Notify::new());
        let stats = Arc::new(GroupStats::default());
        let committer =
            tokio::spawn(commit_groups(open.clone(), joined.clone(), stats.clone())).abort_handle();
        let (queue, queued) = mpsc::channel(QUEUE);
        let runner = tokio::spawn(run_queued(
            Lock {
                open: open.clone(),
                joined: joined.clone(),
                pool: pool.clone(),
            },
            queries,
            queued,
        ))
        .abort_handle();
        Self {
            pool,
            open,
            stats,
            queue,
            runner,
            joined,
            committer,
        }
    }

    /// The groups committed so far and the writes they held.
    pub(crate) fn stats(&self) -> &GroupStats {
        &self.stats
    }

    /// A place in the open group: the caller runs its statements in
    /// [`GroupWrite::savepoint`], then [`GroupWrite::commit`].
    pub(crate) async fn write(&self) -> Result<GroupWrite> {
        let lock = Lock {
            open: self.open.clone(),
            joined: self.joined.clone(),
            pool: self.pool.clone(),
        };
        Ok(GroupWrite {
            open: Some(lock.acquire().await?),
            joined: self.joined.clone(),
        })
    }

    /// Runs `batch` in the open group, in a savepoint of its own or joined with other
    /// queued writes of the same statements (see the module documentation), and waits for
    /// the group's commit: the write is durable when this returns `Ok`. A failure of the
    /// batch is its own: nothing of it is written, and the group's other writes stay.
    pub(crate) async fn run(&self, batch: Batch) -> Result<()> {
        let (reply, ran) = oneshot::channel();
        self.queue
            .send(Queued { batch, reply })
            .await
            .map_err(|_| StoreError::Config("the write group's runner stopped".into()))?;
        let group = ran.await.map_err(|_| {
            StoreError::Config(
                "the write's outcome is unknown: the write group's runner failed while it ran"
                    .into(),
            )
        })??;
        committed(group).await
    }
}

/// What a write needs to take its place in the open group.
struct Lock {
    open: Arc<Mutex<Open>>,
    joined: Arc<Notify>,
    pool: AnyPool,
}

impl Lock {
    /// Locks the open group: waits while it is full, begins its transaction when none is
    /// open, and rolls back what a cancelled write left in it.
    async fn acquire(&self) -> Result<OwnedMutexGuard<Open>> {
        loop {
            let mut open = self.open.clone().lock_owned().await;
            if open.members >= MAX_MEMBERS {
                // Let the committer take this one; join the next.
                drop(open);
                self.joined.notify_one();
                tokio::task::yield_now().await;
                continue;
            }
            if let Err(e) = self.ready(&mut open).await {
                if open.members == 0 {
                    open.tx = None;
                    open.unsettled = false;
                }
                return Err(e);
            }
            return Ok(open);
        }
    }

    /// Makes the locked group ready for a write: a cancelled write's savepoint rolled
    /// back, a transaction open.
    async fn ready(&self, open: &mut Open) -> Result<()> {
        if open.tx.is_none() {
            open.tx = Some(self.pool.begin().await?);
        }
        settle(open).await
    }
}

/// The runner: runs the queued writes, consecutive ones of the same statements together, in
/// the open group (see the module documentation). A write whose caller went away before it
/// ran is not run (as a write cancelled while it waited for the group's lock). A panic while
/// running some answers their callers with an error (the runner stopped) and the runner
/// goes on with the next.
async fn run_queued(lock: Lock, queries: Arc<AtomicU64>, mut queue: mpsc::Receiver<Queued>) {
    let mut taken = Vec::with_capacity(TAKEN);
    while queue.recv_many(&mut taken, TAKEN).await > 0 {
        let waiting: VecDeque<Queued> = taken
            .drain(..)
            .filter(|write| !write.reply.is_closed())
            .collect();
        if waiting.is_empty() {
            continue;
        }
        let ran = AssertUnwindSafe(run_taken(&lock, &queries, waiting))
            .catch_unwind()
            .await;
        if ran.is_err() {
            tracing::error!(
                "the write group's runner panicked; the writes it held were answered with an error"
            );
            // What joined is committed; an empty group's transaction ends, so the
            // connection goes back to the pool.
            let mut open = lock.open.lock().await;
            if open.members == 0 {
                open.tx = None;
                open.unsettled = false;
            } else {
                lock.joined.notify_one();
            }
        }
    }
}

/// One turn of the runner: `waiting` run in the open group, holding its lock.
async fn run_taken(lock: &Lock, queries: &AtomicU64, mut waiting: VecDeque<Queued>) {
    let mut open = match lock.acquire().await {
        Ok(open) => open,
        Err(e) => {
            fail_all(waiting, e);
            return;
        }
    };
    // The lock may have taken a while (a commit syncing): callers gone meanwhile too.
    waiting.retain(|write| !write.reply.is_closed());
    while let Some(write) = waiting.pop_front() {
        let mut run = vec![write];
        while run.len() < MAX_JOINED
            && waiting
                .front()
                .is_some_and(|next| next.batch.same_statements(&run[0].batch))
        {
            run.extend(waiting.pop_front());
        }
        if run.len() > 1 && lock.ready(&mut open).await.is_ok() {
            let joined = Batch::joined(run.iter().map(|write| &write.batch));
            if run_in_savepoint(&mut open, queries, joined).await.is_ok() {
                for write in run {
                    open.members += 1;
                    write.reply.send(Ok(open.outcome.subscribe())).ok();
                }
                continue;
            }
            // Nothing of the run was kept: each write again on its own, so the one that
            // failed fails alone, with its own error.
        }
        let mut run = run.into_iter();
        while let Some(write) = run.next() {
            if let Err(e) = lock.ready(&mut open).await {
                // No transaction to write in: the rest of the turn fails with it, rather
                // than each waiting for the connection in turn.
                fail_all(
                    std::iter::once(write).chain(run).chain(waiting.drain(..)),
                    e,
                );
                break;
            }
            let reply = run_in_savepoint(&mut open, queries, write.batch)
                .await
                .map(|()| {
                    open.members += 1;
                    open.outcome.subscribe()
                });
            write.reply.send(reply).ok();
        }
    }
    let members = open.members;
    if members == 0 {
        // Nobody joined: end the transaction, so the connection goes back to the pool.
        open.tx = None;
        open.unsettled = false;
    }
    drop(open);
    if members > 0 {
        lock.joined.notify_one();
    }
}

/// Answers every write of `writes` with `e`, which they all met: the first with `e`
/// itself, the others with an error of the same kind, so each is answered the same way (a
/// busy database is still a 503 to try again).
fn fail_all(writes: impl IntoIterator<Item = Queued>, e: StoreError) {
    let again = match &e {
        StoreError::Busy(_) => None,
        other => Some(other.to_string()),
    };
    let mut first = Some(e);
    for write in writes {
        let e = first.take().unwrap_or_else(|| match &again {
            None => StoreError::Busy(sqlx::Error::PoolTimedOut),
            Some(message) => StoreError::Config(message.clone()),
        });
        write.reply.send(Err(e)).ok();
    }
}

/// Waits until `group` is committed (synced).
async fn committed(mut group: watch::Receiver<Outcome>) -> Result<()> {
    let told = group
        .wait_for(Option::is_some)
        .await
        .map_err(|_| StoreError::Config("the write group's committer stopped".into()))?;
    match told.clone() {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(StoreError::Config(format!(
            "the transaction holding this write could not be committed: {e}"
        ))),
        None => Err(StoreError::Config(
            "the write group was not committed".into(),
        )),
    }
}

/// Runs `batch` in a savepoint of the group's transaction, the savepoint's statements
/// joined to the batch's: one hand-off to the connection's thread. A failure rolls the
/// savepoint back (a second hand-off, on failures only) and leaves the group's other
/// writes; a failure that ended the whole transaction loses the group ([`lose_group`]).
async fn run_in_savepoint(open: &mut Open, queries: &AtomicU64, mut batch: Batch) -> Result<()> {
    // Until the outcome is known, a cancellation leaves the savepoint to the group's next
    // holder.
    open.unsettled = true;
    let tx = open
        .tx
        .as_mut()
        .ok_or_else(|| StoreError::Config("the write group has no transaction".into()))?;
    batch.push_front(Statement {
        sql: format!("savepoint {SAVEPOINT}"),
        params: Vec::new(),
    });
    batch.push(Statement {
        sql: format!("release {SAVEPOINT}"),
        params: Vec::new(),
    });
    match batch.run_counted(Backend::Sqlite, queries, tx).await {
        Ok(_) => {
            open.unsettled = false;
            Ok(())
        }
        Err(e) => {
            match rollback_savepoint(open).await {
                Ok(true) => {}
                // The batch stopped before its release, yet its savepoint is gone: SQLite
                // ended the whole transaction (a full disk, an I/O error).
                Ok(false) => lose_group(open),
                Err(settling) => {
                    tracing::error!(error = %settling, "a failed write's savepoint could not be rolled back");
                    return Err(e);
                }
            }
            open.unsettled = false;
            Err(e)
        }
    }
}

/// SQLite ended the open group's transaction, and with it the writes that had joined it:
/// they are told so at once, and the group starts again empty, so that the transaction the
/// next write begins is never committed in their name.
fn lose_group(open: &mut Open) {
    open.tx = None;
    open.unsettled = false;
    open.members = 0;
    let (next, _) = watch::channel(None);
    std::mem::replace(&mut open.outcome, next).send_replace(Some(Err(
        "the database ended the group's transaction (a full disk or an I/O error)".to_owned(),
    )));
}

/// One write's turn in the open group, holding it locked.
pub(crate) struct GroupWrite {
    open: Option<OwnedMutexGuard<Open>>,
    joined: Arc<Notify>,
}

impl Drop for GroupWrite {
    /// A write that ends without joining (it failed, or its task was cancelled) has rolled
    /// its savepoint back; a transaction nobody joined is ended, so the connection goes
    /// back to the pool instead of waiting open for the next write.
    fn drop(&mut self) {
        if let Some(open) = &mut self.open
            && open.members == 0
        {
            open.tx = None;
            open.unsettled = false;
        }
    }
}

impl GroupWrite {
    /// The write's own savepoint inside the group's transaction: commit it when the write
    /// succeeded; dropping it rolls the write back and leaves the group's other writes.
    pub(crate) async fn savepoint(&mut self) -> Result<Transaction<'_, Any>> {
        let tx = self
            .open
            .as_mut()
            .and_then(|open| open.tx.as_mut())
            .ok_or_else(|| StoreError::Config("the write group has no transaction".into()))?;
        Ok(sqlx::Connection::begin(&mut **tx).await?)
    }

    /// Runs `batch` in a savepoint of the group's transaction ([`run_in_savepoint`]), then
    /// [`GroupWrite::commit`].
    pub(crate) async fn run_batch(&mut self, store: &Store, batch: Batch) -> Result<()> {
        let open = self
            .open
            .as_mut()
            .ok_or_else(|| StoreError::Config("the write already joined its group".into()))?;
        run_in_savepoint(open, &store.queries, batch).await
    }

    /// Joins the group with what the released savepoint wrote and waits until the group is
    /// committed (synced): the write is durable when this returns `Ok`.
    pub(crate) async fn commit(mut self) -> Result<()> {
        let Some(mut open) = self.open.take() else {
            return Err(StoreError::Config(
                "the write already joined its group".into(),
            ));
        };
        open.members += 1;
        let group = open.outcome.subscribe();
        drop(open);
        self.joined.notify_one();
        committed(group).await
    }
}

/// The committer: commits each group as soon as it has a member.
async fn commit_groups(open: Arc<Mutex<Open>>, joined: Arc<Notify>, stats: Arc<GroupStats>) {
    loop {
        joined.notified().await;
        let (tx, outcome, members) = {
            let mut open = open.lock().await;
            if open.members == 0 {
                continue;
            }
            if let Err(e) = settle(&mut open).await {
                // What the savepoint holds is unknown: the group is rolled back whole
                // rather than committed with half a write.
                tracing::error!(error = %e, "a cancelled write could not be rolled back; its group is rolled back");
                open.tx = None;
                open.unsettled = false;
            }
            tracing::debug!(writes = open.members, "committing a group of writes");
            let members = std::mem::take(&mut open.members);
            let (next, _) = watch::channel(None);
            (
                open.tx.take(),
                std::mem::replace(&mut open.outcome, next),
                members,
            )
        };
        let committed = match tx {
            Some(tx) => tx.commit().await.map_err(|e| e.to_string()),
            None => Err("the group's transaction was lost before its commit".to_owned()),
        };
        match &committed {
            Ok(()) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats.writes.fetch_add(members as u64, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(error = %e, "a group of writes could not be committed; each is answered as failed")
            }
        }
        outcome.send_replace(Some(committed));
    }
}

/// Rolls back the savepoint a cancelled [`GroupWrite::run_batch`] may have left open. The
/// write's batch may have run whole (its savepoint released, nothing to roll back: its
/// write stays, as a write whose answer was lost) or stopped part-way (rolled back here).
async fn settle(open: &mut Open) -> Result<()> {
    if !open.unsettled {
        return Ok(());
    }
    rollback_savepoint(open).await?;
    open.unsettled = false;
    Ok(())
}

/// Rolls back and releases [`SAVEPOINT`]: `false` when there was none (its batch released
/// it, or never opened it, or SQLite ended the transaction).
async fn rollback_savepoint(open: &mut Open) -> Result<bool> {
    let Some(tx) = open.tx.as_mut() else {
        return Ok(false);
    };
    let rollback = format!("rollback to {SAVEPOINT}; release {SAVEPOINT}");
    match sqlx::query(&rollback).execute(&mut **tx).await {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.message().contains("no such savepoint") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn one_connection() -> AnyPool {
        sqlx::any::install_default_drivers();
        let pool: AnyPool = sqlx::pool::PoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        sqlx::raw_sql("create table t (n integer primary key)")
            .execute(&pool)
            .await
            .unwrap();
        pool
    }

    fn insert(n: i64) -> Batch {
        let mut batch = Batch::default();
        batch.push_unique(
            Statement {
                sql: "insert into t (n) values ($1)".into(),
                params: vec![n.into()],
            },
            "Row already exists",
        );
        batch
    }

    async fn stored(pool: &AnyPool) -> Vec<i64> {
        sqlx::query_scalar("select n from t order by n")
            .fetch_all(pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn queued_writes_of_the_same_statements_run_in_one_hand_off() {
        let pool = one_connection().await;
        let queries = Arc::new(AtomicU64::new(0));
        let groups = WriteGroups::new(pool.clone(), queries.clone());
        // Polled together, all twelve are queued before the runner takes them: joined
        // eight and four.
        let outcomes = futures::future::join_all((1..=12).map(|n| groups.run(insert(n)))).await;
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        assert_eq!(stored(&pool).await, (1..=12).collect::<Vec<_>>());
        assert_eq!(queries.load(Ordering::Relaxed), 2, "two joined statements");
        assert_eq!(groups.stats().writes.load(Ordering::Relaxed), 12);
    }

    #[tokio::test]
    async fn every_write_of_a_failed_turn_gets_an_error_of_the_same_kind() {
        for (e, busy) in [
            (StoreError::Busy(sqlx::Error::PoolTimedOut), true),
            (StoreError::Config("no transaction".into()), false),
        ] {
            let (writes, answers): (Vec<_>, Vec<_>) = (1..=3)
                .map(|n| {
                    let (reply, answer) = oneshot::channel();
                    (
                        Queued {
                            batch: insert(n),
                            reply,
                        },
                        answer,
                    )
                })
                .unzip();
            fail_all(writes, e);
            for answer in answers {
                match answer.await.unwrap() {
                    Err(StoreError::Busy(_)) => assert!(busy),
                    Err(StoreError::Config(m)) => assert!(!busy && m == "no transaction"),
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[tokio::test]
    async fn a_write_whose_caller_went_away_before_it_ran_is_not_run() {
        let pool = one_connection().await;
        let groups = WriteGroups::new(pool.clone(), Arc::new(AtomicU64::new(0)));
        let mut gone = Box::pin(groups.run(insert(1)));
        // Queued (the runner has not run yet on this thread), then dropped.
        assert!(futures::poll!(gone.as_mut()).is_pending());
        drop(gone);
        groups.run(insert(2)).await.unwrap();
        assert_eq!(stored(&pool).await, [2]);
    }

    #[tokio::test]
    async fn a_failing_write_of_a_joined_run_fails_alone_and_the_others_are_kept() {
        let pool = one_connection().await;
        let queries = Arc::new(AtomicU64::new(0));
        let groups = WriteGroups::new(pool.clone(), queries.clone());
        groups.run(insert(4)).await.unwrap();
        queries.store(0, Ordering::Relaxed);
        // The fourth inserts a key already taken.
        let outcomes = futures::future::join_all((1..=8).map(|n| groups.run(insert(n)))).await;
        for (n, outcome) in (1..=8).zip(&outcomes) {
            assert_eq!(outcome.is_err(), n == 4, "write {n}: {outcome:?}");
        }
        assert!(
            matches!(&outcomes[3], Err(StoreError::AlreadyExists(m)) if m == "Row already exists"),
            "the failing write's own error: {:?}",
            outcomes[3]
        );
        assert_eq!(stored(&pool).await, (1..=8).collect::<Vec<_>>());
        // The joined run, then each write on its own.
        assert_eq!(queries.load(Ordering::Relaxed), 9);
    }

    #[tokio::test]
    async fn a_transaction_the_database_ended_fails_the_writes_that_joined_it() {
        let pool = one_connection().await;
        let queries = AtomicU64::new(0);
        let (outcome, mut joined) = watch::channel(None);
        let mut open = Open {
            tx: Some(pool.begin().await.unwrap()),
            members: 1,
            outcome,
            unsettled: false,
        };
        // The member that joined wrote 1; the next write's batch ends the transaction.
        let tx = open.tx.as_mut().unwrap();
        sqlx::query("insert into t (n) values (1)")
            .execute(&mut **tx)
            .await
            .unwrap();
        let mut ending = insert(2);
        ending.push(Statement {
            sql: "rollback".into(),
            params: Vec::new(),
        });
        assert!(run_in_savepoint(&mut open, &queries, ending).await.is_err());
        assert!(open.tx.is_none());
        assert_eq!(
            open.members, 0,
            "the next transaction starts with no member"
        );
        let told = joined.wait_for(Option::is_some).await.unwrap().clone();
        assert!(matches!(told, Some(Err(_))), "the member is told: {told:?}");
        assert_eq!(stored(&pool).await, Vec::<i64>::new());
    }

    #[tokio::test]
    async fn a_savepoint_left_open_is_rolled_back_and_a_released_one_kept() {
        let pool = one_connection().await;
        let mut open = Open {
            tx: Some(pool.begin().await.unwrap()),
            members: 1,
            outcome: watch::channel(None).0,
            unsettled: true,
        };
        // A write whose batch ran whole, released, before it was cancelled: it stays.
        let tx = open.tx.as_mut().unwrap();
        sqlx::raw_sql(&format!(
            "insert into t values (1); savepoint {SAVEPOINT}; insert into t values (2); release {SAVEPOINT}"
        ))
        .execute(&mut **tx)
        .await
        .unwrap();
        settle(&mut open).await.unwrap();
        assert!(!open.unsettled);
        // A write cancelled part-way: its savepoint is open, and rolled back.
        open.unsettled = true;
        let tx = open.tx.as_mut().unwrap();
        sqlx::raw_sql(&format!("savepoint {SAVEPOINT}; insert into t values (3)"))
            .execute(&mut **tx)
            .await
            .unwrap();
        settle(&mut open).await.unwrap();
        assert!(!open.unsettled);
        open.tx.take().unwrap().commit().await.unwrap();
        assert_eq!(stored(&pool).await, [1, 2]);
        // A transaction SQLite ended under a savepoint: there is nothing to roll back to,
        // which tells a failed write its group is lost.
        open.tx = Some(pool.begin().await.unwrap());
        let tx = open.tx.as_mut().unwrap();
        sqlx::raw_sql(&format!(
            "savepoint {SAVEPOINT}; insert into t values (4); rollback"
        ))
        .execute(&mut **tx)
        .await
        .unwrap();
        assert!(!rollback_savepoint(&mut open).await.unwrap());
    }
}
