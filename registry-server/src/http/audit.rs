//! The audit log writer: group commit. Requests hand their record to one writer task and
//! wait; the writer takes every record waiting (and those that come while it lets the
//! requests already running go on, [`GATHER_TURNS`]), stores them in one transaction, and
//! then answers them all. While one group commits the next gathers, so a busy server commits
//! many records per fsync and an idle one commits each at once.
//!
//! Two kinds of record. A write's record (and a refusal's) is synced to disk with its group
//! before the request is answered, like the write itself. A read's record (a secret read)
//! is stored before the answer, so it survives the server process being killed, and is
//! synced within [`SYNC_WITHIN`] by a task of its own (so a writer waiting for a busy
//! connection never holds a sync back): a power loss can lose at most the read records of
//! that last moment, never a write's. On SQLite a read appends its record to the store's
//! journal itself (no writer task, no hand-off), and the sync moves the journal into the
//! audit log.
//!
//! A second task prunes records older than the audit retention setting: once at start,
//! then every hour.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::store::{NewAuditRecord, Store};

/// Records waiting beyond this make new requests wait for room (back-pressure).
const QUEUE: usize = 8192;
/// At most this many records per transaction.
const MAX_GROUP: usize = 1024;
/// Before a group goes, the writer lets the runtime run this many times (each a turn of
/// the tasks ready to run), so requests already being answered add their records to it:
/// larger groups, fewer round trips to the database per record. With nothing else to run a
/// turn ends at once, so an idle server's record waits for nothing.
const GATHER_TURNS: usize = 4;
/// How often records past the retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// A read's record, committed unsynced, is synced to disk within this (less the time the
/// sync takes; well inside the 100 ms ARCHITECTURE.md promises).
pub const SYNC_WITHIN: Duration = Duration::from_millis(50);

type Ack = oneshot::Sender<Result<(), String>>;

/// How soon a record must be on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Synced before the request is answered: writes and refusals.
    Synced,
    /// Stored before the request is answered (committed, or on SQLite journaled), synced
    /// within [`SYNC_WITHIN`]: reads.
    Deferred,
}

type Queued = (NewAuditRecord, Durability, Ack);

/// A handle to the writer; cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    queue: mpsc::Sender<Queued>,
    /// A store that journals reads' records ([`Store::journals_reads`]): a read appends its
    /// record itself, without the writer task.
    journal: Option<Weak<Store>>,
    stats: Arc<AuditStats>,
    /// Completed pruning passes.
    prunes: watch::Receiver<u64>,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct AuditStats {
    /// Records stored (by the writer, and by writes in their own transactions).
    pub records: AtomicU64,
    /// Transactions the writer committed.
    pub groups: AtomicU64,
    /// Groups that failed to commit.
    pub failures: AtomicU64,
    /// Syncs of read records committed unsynced.
    pub syncs: AtomicU64,
    /// Groups of read records committed unsynced so far, and how many of them a sync has
    /// covered: the syncer syncs while the first is ahead.
    deferred_groups: AtomicU64,
    synced_groups: AtomicU64,
    /// Records pruned for being older than the retention.
    pub pruned: AtomicU64,
}

impl AuditLog {
    /// Starts the writer and the pruning tasks on the current runtime.
    pub fn start(store: Arc<Store>) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(AuditStats::default());
        let (passes, prunes) = watch::channel(0);
        let journal = store.journals_reads().then(|| Arc::downgrade(&store));
        tokio::spawn(pruner(Arc::downgrade(&store), passes, stats.clone()));
        tokio::spawn(syncer(Arc::downgrade(&store), stats.clone()));
        tokio::spawn(writer(store, rx, stats.clone()));
        Self {
            queue,
            journal,
            stats,
            prunes,
        }
    }

    /// Stores `record` and returns once it is on disk (committed and synced with its
    /// group).
    pub async fn record(&self, record: NewAuditRecord) -> Result<(), String> {
        self.record_with(record, Durability::Synced).await
    }

    /// Stores a read's `record` and returns once it is committed; it is synced to disk
    /// within [`SYNC_WITHIN`].
    pub async fn record_read(&self, record: NewAuditRecord) -> Result<(), String> {
        if let Some(store) = self.journal.as_ref().and_then(Weak::upgrade) {
            let appended = store
                .append_audit_deferred(std::slice::from_ref(&record))
                .await;
            if appended.is_ok() {
                self.stats.records.fetch_add(1, Ordering::Relaxed);
                // Counted as a group the syncer has yet to cover (see `syncer`).
                self.stats.deferred_groups.fetch_add(1, Ordering::AcqRel);
            }
            return appended.map_err(|e| {
                tracing::error!(error = %e, "could not store an audit record");
                e.to_string()
            });
        }
        self.record_with(record, Durability::Deferred).await
    }

    async fn record_with(
        &self,
        record: NewAuditRecord,
        durability: Durability,
    ) -> Result<(), String> {
        let (ack, done) = oneshot::channel();
        self.queue
            .send((record, durability, ack))
            .await
            .map_err(|_| "the audit writer has stopped".to_owned())?;
        done.await
            .map_err(|_| "the audit writer has stopped".to_owned())?
    }

    /// Counts a record a write stored in its own transaction (see `auth::WriteRecord`).
    pub(crate) fn counted_with_write(&self) {
        self.stats.records.fetch_add(1, Ordering::Relaxed);
    }

    /// The writer's counters.
    pub fn stats(&self) -> &AuditStats {
        &self.stats
    }

    /// The number of pruning passes completed so far (one at start, then one an hour).
    pub fn prune_passes(&self) -> watch::Receiver<u64> {
        self.prunes.clone()
    }
}

/// Prunes records past the retention (and deletes tokens expired for over a day) at start
/// and then every [`PRUNE_EVERY`], until the
/// store or every [`AuditLog`] handle is gone. Replicas each prune; deleting what another
/// already deleted costs nothing.
async fn pruner(store: Weak<Store>, passes: watch::Sender<u64>, stats: Arc<AuditStats>) {
    loop {
        let Some(store) = store.upgrade() else { return };
        match store.prune_audit(chrono::Utc::now()).await {
            Ok(0) => {}
            Ok(n) => {
                stats.pruned.fetch_add(n, Ordering::Relaxed);
                tracing::info!(records = n, "pruned audit records past the retention");
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not prune the audit log; trying again later")
            }
        }
        match store.prune_events(chrono::Utc::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "pruned change-feed events past the retention"),
            Err(e) => {
                tracing::warn!(error = %e, "could not prune the change feed; trying again later")
            }
        }
        match store.prune_expired_tokens().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(tokens = n, "deleted tokens expired for over a day"),
            Err(e) => {
                tracing::warn!(error = %e, "could not delete expired tokens; trying again later")
            }
        }
        drop(store);
        passes.send_modify(|n| *n += 1);
        tokio::select! {
            () = tokio::time::sleep(PRUNE_EVERY) => {}
            () = passes.closed() => return,
        }
    }
}

/// Syncs the read records committed unsynced: every `SYNC_WITHIN / 2`, when there are
/// any, so each is on disk within [`SYNC_WITHIN`] and the sync time. A task of its own, so a
/// writer waiting for a busy connection never holds a sync back. Ends with the store.
async fn syncer(store: Weak<Store>, stats: Arc<AuditStats>) {
    let mut tick = tokio::time::interval(SYNC_WITHIN / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else { return };
        let committed = stats.deferred_groups.load(Ordering::Acquire);
        if committed > stats.synced_groups.load(Ordering::Acquire) {
            match store.sync_audit().await {
                Ok(()) => {
                    stats.syncs.fetch_add(1, Ordering::Relaxed);
                    if store.journals_reads() {
                        // The journal's move is the commit of the reads' records.
                        stats.groups.fetch_add(1, Ordering::Relaxed);
                    }
                    stats.synced_groups.store(committed, Ordering::Release);
                }
                // The records are committed (a crash of this process keeps them); the next
                // tick tries again.
                Err(e) => {
                    tracing::error!(error = %e, "could not sync the audit records of reads to disk")
                }
            }
        }
    }
}

async fn writer(store: Arc<Store>, mut rx: mpsc::Receiver<Queued>, stats: Arc<AuditStats>) {
    let mut group = Vec::with_capacity(64);
    while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
        for _ in 0..GATHER_TURNS {
            if group.len() >= MAX_GROUP {
                break;
            }
            tokio::task::yield_now().await;
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(queued) => group.push(queued),
                    Err(_) => break,
                }
            }
        }
        let deferred = group.iter().all(|(_, d, _)| *d == Durability::Deferred);
        let (records, acks): (Vec<_>, Vec<_>) = group
            .drain(..)
            .map(|(record, _, ack)| (record, ack))
            .unzip();
        let append = |records: &[NewAuditRecord]| {
            let store = store.clone();
            let records = records.to_vec();
            async move {
                if deferred {
                    store.append_audit_deferred(&records).await
                } else {
                    store.append_audit(&records).await
                }
            }
        };
        match append(&records).await {
            Ok(()) => {
                // Counted once committed and before the answers go out: a sync that reads
                // the count covers every group it counts (one counted while still
                // committing could be marked synced by a sync that ran before its commit).
                if deferred {
                    stats.deferred_groups.fetch_add(1, Ordering::AcqRel);
                }
                stats.groups.fetch_add(1, Ordering::Relaxed);
                stats
                    .records
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                for ack in acks {
                    ack.send(Ok(())).ok();
                }
            }
            // One bad record must not fail the others: store them one by one.
            Err(e) if records.len() > 1 => {
                tracing::warn!(error = %e, records = records.len(), "an audit group failed; storing its records one by one");
                for (record, ack) in records.into_iter().zip(acks) {
                    let one = append(std::slice::from_ref(&record)).await;
                    if deferred && one.is_ok() {
                        stats.deferred_groups.fetch_add(1, Ordering::AcqRel);
                    }
                    count(&stats, &one);
                    ack.send(one.map_err(|e| e.to_string())).ok();
                }
            }
            Err(e) => {
                let failed = Err(e);
                count(&stats, &failed);
                for ack in acks {
                    ack.send(failed.as_ref().map(|_| ()).map_err(ToString::to_string))
                        .ok();
                }
            }
        }
    }
}

fn count(stats: &AuditStats, outcome: &Result<(), crate::store::StoreError>) {
    match outcome {
        Ok(()) => {
            stats.groups.fetch_add(1, Ordering::Relaxed);
            stats.records.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "could not store an audit record");
        }
    }
}
