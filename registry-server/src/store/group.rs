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

use sqlx::{Any, AnyPool, Transaction};
use tokio::sync::{Mutex, Notify, OwnedMutexGuard, watch};

use super::{Result, StoreError};

/// Writes in one group at most: a later one waits for the next group.
const MAX_MEMBERS: usize = 256;

/// The outcome of a group's commit, told to its members.
type Outcome = Option<std::result::Result<(), String>>;

/// The open group: its transaction, its members, and where its outcome will be told.
struct Open {
    tx: Option<Transaction<'static, Any>>,
    members: usize,
    outcome: watch::Sender<Outcome>,
}

/// The shared write transaction and its committer (see the module documentation).
pub(crate) struct WriteGroups {
    pool: AnyPool,
    open: Arc<Mutex<Open>>,
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
        }));
        let joined = Arc::new(Notify::new());
        let committer = tokio::spawn(commit_groups(open.clone(), joined.clone())).abort_handle();
        Self {
            pool,
            open,
            joined,
            committer,
        }
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
async fn commit_groups(open: Arc<Mutex<Open>>, joined: Arc<Notify>) {
    loop {
        joined.notified().await;
        let (tx, outcome) = {
            let mut open = open.lock().await;
            if open.members == 0 {
                continue;
            }
            tracing::debug!(writes = open.members, "committing a group of writes");
            open.members = 0;
            let (next, _) = watch::channel(None);
            (open.tx.take(), std::mem::replace(&mut open.outcome, next))
        };
        let committed = match tx {
            Some(tx) => tx.commit().await.map_err(|e| e.to_string()),
            None => Err("no transaction was open".to_owned()),
        };
        if let Err(e) = &committed {
            tracing::error!(error = %e, "a group of writes could not be committed; each is answered as failed");
        }
        outcome.send_replace(Some(committed));
    }
}
