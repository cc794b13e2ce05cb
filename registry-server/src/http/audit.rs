//! The audit log writer: group commit. Requests hand their record to one writer task and
//! wait; the writer takes every record waiting, stores them in one transaction, and then
//! answers them all. While one group commits the next gathers, so a busy server commits
//! many records per fsync and an idle one commits each at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::store::{NewAuditRecord, Store};

/// Records waiting beyond this make new requests wait for room (back-pressure).
const QUEUE: usize = 8192;
/// At most this many records per transaction.
const MAX_GROUP: usize = 1024;

type Ack = oneshot::Sender<Result<(), String>>;

/// A handle to the writer; cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    queue: mpsc::Sender<(NewAuditRecord, Ack)>,
    stats: Arc<AuditStats>,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct AuditStats {
    /// Records stored.
    pub records: AtomicU64,
    /// Transactions committed.
    pub groups: AtomicU64,
    /// Groups that failed to commit.
    pub failures: AtomicU64,
}

impl AuditLog {
    /// Starts the writer task on the current runtime.
    pub fn start(store: Arc<Store>) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(AuditStats::default());
        tokio::spawn(writer(store, rx, stats.clone()));
        Self { queue, stats }
    }

    /// Stores `record` and returns once it is durable (committed with its group).
    pub async fn record(&self, record: NewAuditRecord) -> Result<(), String> {
        let (ack, done) = oneshot::channel();
        self.queue
            .send((record, ack))
            .await
            .map_err(|_| "the audit writer has stopped".to_owned())?;
        done.await
            .map_err(|_| "the audit writer has stopped".to_owned())?
    }

    /// The writer's counters.
    pub fn stats(&self) -> &AuditStats {
        &self.stats
    }
}

async fn writer(
    store: Arc<Store>,
    mut rx: mpsc::Receiver<(NewAuditRecord, Ack)>,
    stats: Arc<AuditStats>,
) {
    let mut group = Vec::with_capacity(64);
    while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
        let (records, acks): (Vec<_>, Vec<_>) = group.drain(..).unzip();
        match store.append_audit(&records).await {
            Ok(()) => {
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
                    let one = store.append_audit(std::slice::from_ref(&record)).await;
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
