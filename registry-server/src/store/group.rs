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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::{Any, AnyPool, Transaction};
use tokio::sync::{Mutex, Notify, OwnedMutexGuard, watch};

use super::batch::{Batch, Statement};
use super::{Result, Store, StoreError};

/// Writes in one group at most: a later one waits for the next group.
const MAX_MEMBERS: usize = 256;

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
    }
}

impl WriteGroups {
    /// Groups the writes on `pool` (one connection); starts the committer task.
    pub(crate) fn new(pool: AnyPool) -> Self {
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
        Self {
            pool,
            open,
            stats,
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
        loop {
            let mut open = self.open.clone().lock_owned().await;
            if open.members >= MAX_MEMBERS {
                // Let the committer take this one; join the next.
                drop(open);
                self.joined.notify_one();
                tokio::task::yield_now().await;
                continue;
            }
            if open.tx.is_none() {
                open.tx = Some(self.pool.begin().await?);
            }
            if let Err(e) = settle(&mut open).await {
                if open.members == 0 {
                    open.tx = None;
                    open.unsettled = false;
                }
                return Err(e);
            }
            return Ok(GroupWrite {
                open: Some(open),
                joined: self.joined.clone(),
            });
        }
    }
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

    /// Runs `batch` in a savepoint of the group's transaction, the savepoint's statements
    /// joined to the batch's: one hand-off to the connection's thread for the whole write.
    /// A failure rolls the savepoint back (a second hand-off, on failures only) and leaves
    /// the group's other writes. Then [`GroupWrite::commit`].
    pub(crate) async fn run_batch(&mut self, store: &Store, mut batch: Batch) -> Result<()> {
        let open = self
            .open
            .as_mut()
            .ok_or_else(|| StoreError::Config("the write already joined its group".into()))?;
        // Until this write knows the outcome, a cancellation leaves the savepoint to the
        // group's next holder.
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
        match batch.run(store, tx).await {
            Ok(_) => {
                open.unsettled = false;
                Ok(())
            }
            Err(e) => {
                match rollback_savepoint(open).await {
                    Ok(true) => {}
                    // The batch stopped before its release, yet its savepoint is gone:
                    // SQLite ended the whole transaction (a full disk, an I/O error). The
                    // group is lost: its members are told so, and the next write begins
                    // a transaction of its own rather than write outside any.
                    Ok(false) => open.tx = None,
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

    /// Joins the group with what the released savepoint wrote and waits until the group is
    /// committed (synced): the write is durable when this returns `Ok`.
    pub(crate) async fn commit(mut self) -> Result<()> {
        let Some(mut open) = self.open.take() else {
            return Err(StoreError::Config(
                "the write already joined its group".into(),
            ));
        };
        open.members += 1;
        let mut outcome = open.outcome.subscribe();
        drop(open);
        self.joined.notify_one();
        let told = outcome
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

    #[tokio::test]
    async fn a_savepoint_left_open_is_rolled_back_and_a_released_one_kept() {
        sqlx::any::install_default_drivers();
        let pool: AnyPool = sqlx::pool::PoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        sqlx::raw_sql("create table t (n integer)")
            .execute(&pool)
            .await
            .unwrap();
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
        let kept: Vec<i64> = sqlx::query_scalar("select n from t order by n")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(kept, [1, 2]);
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
