//! SQLite: the audit records of secret reads, appended to a journal file before the answer
//! leaves and moved into the audit log in one synced transaction moments later.
//!
//! A secret read's record must be stored before its answer (so killing the server loses
//! none) but need not wait for the disk (a power loss may lose the last 100 ms of them). A
//! `write(2)` to a file of this process does exactly that: once it returns, the record is
//! in the operating system's cache and outlives the process. It costs a few microseconds on
//! the request's own thread, where committing the record through SQLite's single writer
//! cost a hand-off to the connection's thread and a commit (pages of the table and its
//! indexes written to the log) per handful of reads.
//!
//! Each open store appends to a journal of its own, `<database>.audit-<uuid>`, holding an
//! exclusive lock on it ([`std::fs::File::try_lock`]) for as long as it writes there.
//! [`Journal::take`] hands back the current file (the next record starts a new one); the
//! store inserts its
//! records and the file's id (`audit_journal_moved`) in one transaction, synced, and then
//! deletes the file. A journal nobody holds locked (its process died) is recovered when a
//! store opens the database: moved if its id is not yet recorded, and deleted either way,
//! so a crash between the commit and the deletion stores no record twice.
//!
//! A line is one record as the audit log's insert reads it (a JSON object). A line cut
//! short by a power loss (never one whose read was answered after a sync) is skipped.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use uuid::Uuid;

use super::{Result, StoreError};

/// A journal refuses records past this size (each is a few hundred bytes; the journal is
/// moved every 25 ms, and no new one is taken while a taken one waits to be moved): a
/// store that cannot move its journal answers secret reads 503 rather than fill the disk.
pub(crate) const MAX_JOURNAL_BYTES: u64 = 64 << 20;

/// The journal of one open store.
#[derive(Debug)]
pub(crate) struct Journal {
    /// `<database file>.audit-`: every journal's path starts so.
    prefix: String,
    /// The file records go to; made by the first record after a move.
    current: Mutex<Option<Current>>,
    max_bytes: u64,
}

#[derive(Debug)]
struct Current {
    file: File,
    id: Uuid,
    bytes: u64,
    /// A write failed part-way and the part could not be cut off: the next record starts
    /// on a line of its own (the part is skipped as a line cut short).
    torn: bool,
    /// The folder's entry for the file is not yet synced.
    new: bool,
}

/// A journal taken for moving: the file (still locked) and its id; its records are read
/// by [`Taken::records`] when it is moved.
#[derive(Debug)]
pub(crate) struct Taken {
    /// The journal's id, recorded with its records.
    pub(crate) id: Uuid,
    path: PathBuf,
    file: Arc<File>,
    /// A move of it was tried: its outcome may be unknown (cancelled, or a commit that
    /// failed to answer), so the next try first asks whether its id is recorded.
    pub(crate) tried: bool,
}

/// A journal's records as one JSON array, in the order they were appended.
#[derive(Debug)]
pub(crate) struct Records {
    pub(crate) json: String,
    /// How many records (lines) it held, and how many were cut short and skipped.
    pub(crate) count: usize,
    pub(crate) skipped: usize,
}

impl Taken {
    /// Reads the records, through a handle of its own: a read cut short by its caller runs
    /// on to its end, and must not move the offset of the next read of the same journal.
    pub(crate) async fn records(&self) -> Result<Records> {
        let path = self.path.clone();
        off_runtime(move || {
            let text = std::fs::read(&path).map_err(|e| io("reading a journal", &e))?;
            Ok(parse(&text))
        })
        .await
    }

    /// Puts the file's records on disk.
    pub(crate) async fn sync(&self) -> Result<()> {
        let file = Arc::clone(&self.file);
        off_runtime(move || file.sync_data().map_err(|e| io("syncing a journal", &e))).await
    }

    /// Deletes the moved journal's file, and syncs the folder so that a power loss cannot
    /// bring the file back once its id is forgotten. (Cut short by its caller, it still
    /// runs to its end: the id stays recorded, and the next open forgets it.)
    pub(crate) async fn remove(self) -> Result<()> {
        off_runtime(move || {
            std::fs::remove_file(&self.path).map_err(|e| io("deleting a moved journal", &e))?;
            sync_folder(&self.path)
        })
        .await
    }
}

/// Runs `work`, file I/O that may wait for the disk (a sync, a read, a deletion), on the
/// blocking pool: the runtime's few workers keep answering requests meanwhile. Under a
/// busy disk a sync takes milliseconds, and a worker held that long stalls every request
/// it runs (the nested load's p99 rose several-fold so).
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Config(format!("audit journal: a file task failed: {e}")))?
}

fn io(doing: &str, e: &std::io::Error) -> StoreError {
    StoreError::Config(format!("audit journal: {doing}: {e}"))
}

fn folder_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn sync_folder(path: &Path) -> Result<()> {
    File::open(folder_of(path))
        .and_then(|dir| dir.sync_all())
        .map_err(|e| io("syncing the journal's folder", &e))
}

impl Journal {
    /// The journal prefix of the database file `database`.
    pub(crate) fn prefix_of(database: &Path) -> String {
        format!("{}.audit-", database.display())
    }

    /// A journal beside the database file `database` (its first file is made by the first
    /// record).
    pub(crate) fn new(database: &Path, max_bytes: u64) -> Self {
        Self {
            prefix: Self::prefix_of(database),
            current: Mutex::new(None),
            max_bytes,
        }
    }

    /// Appends `line` (one record, without its newline). When this returns the record
    /// survives this process being killed.
    pub(crate) fn append(&self, line: &str) -> Result<()> {
        let mut bytes = Vec::with_capacity(line.len() + 2);
        let mut current = self.current.lock();
        let current = match &mut *current {
            Some(current) => current,
            None => current.insert(Current::create(&self.prefix)?),
        };
        if current.torn {
            bytes.push(b'\n');
        }
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        if current.bytes + bytes.len() as u64 > self.max_bytes {
            return Err(StoreError::Config(format!(
                "audit journal: {} bytes wait to be moved into the audit log, the most it holds",
                current.bytes
            )));
        }
        // One write of the whole line (`write_all` loops only on a short write).
        if let Err(e) = current.file.write_all(&bytes) {
            // Cut off what part of the line was written, so the next record is not glued
            // to it; failing that, the next record starts a line of its own.
            current.torn = current.file.set_len(current.bytes).is_err();
            return Err(io("appending a record", &e));
        }
        current.bytes += bytes.len() as u64;
        current.torn = false;
        Ok(())
    }

    /// Takes the current file, or `None` when no record waits; the next record starts a
    /// new file.
    pub(crate) fn take(&self) -> Option<Taken> {
        let full = self.current.lock().take()?;
        Some(Taken {
            id: full.id,
            path: path_of(&self.prefix, full.id),
            file: Arc::new(full.file),
            tried: false,
        })
    }

    /// Puts the current file's records on disk (and, for a new file, its folder entry),
    /// without holding appends back: a duplicate of the handle is synced (off the
    /// runtime's workers).
    pub(crate) async fn sync(&self) -> Result<()> {
        let (file, new) = {
            let mut current = self.current.lock();
            let Some(current) = current.as_mut() else {
                return Ok(());
            };
            let file = current
                .file
                .try_clone()
                .map_err(|e| io("syncing a journal", &e))?;
            (file, std::mem::replace(&mut current.new, false))
        };
        let folder = new.then(|| PathBuf::from(&self.prefix));
        off_runtime(move || {
            file.sync_data().map_err(|e| io("syncing a journal", &e))?;
            match folder {
                Some(folder) => sync_folder(&folder),
                None => Ok(()),
            }
        })
        .await
    }

    /// Whether the journal `id` of the database file `database` still has its file.
    pub(crate) fn exists(database: &Path, id: Uuid) -> bool {
        path_of(&Self::prefix_of(database), id).exists()
    }

    /// Journals of this database that no open store holds (their process ended before
    /// they were moved), locked now by the caller. A file that vanished meanwhile (moved
    /// by its owner) or cannot be opened is passed over, said so in the log.
    pub(crate) fn orphans(database: &Path) -> Result<Vec<Taken>> {
        let prefix = Self::prefix_of(database);
        let Some(stem) = Path::new(&prefix).file_name().and_then(|n| n.to_str()) else {
            return Ok(Vec::new());
        };
        let mut orphans = Vec::new();
        let entries =
            std::fs::read_dir(folder_of(database)).map_err(|e| io("listing journals", &e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(stem)) else {
                continue;
            };
            if rest.starts_with("new-") {
                // A new journal a store died before naming holds no record.
                if let Ok(file) = File::open(entry.path())
                    && file.try_lock().is_ok()
                {
                    std::fs::remove_file(entry.path()).ok();
                }
                continue;
            }
            let Ok(id) = Uuid::try_parse(rest) else {
                continue;
            };
            let path = entry.path();
            let file = match OpenOptions::new().read(true).append(true).open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::warn!(error = %e, journal = %path.display(), "an audit journal could not be opened; it is left for a later start");
                    continue;
                }
            };
            if file.try_lock().is_err() {
                // An open store's journal.
                continue;
            }
            // Deleted by its owner between the listing and the lock: nothing to move.
            if !path.exists() {
                continue;
            }
            orphans.push(Taken {
                id,
                path,
                file: Arc::new(file),
                tried: true,
            });
        }
        Ok(orphans)
    }
}

impl Drop for Journal {
    /// A file whose one record could not be written holds nothing to move.
    fn drop(&mut self) {
        if let Some(current) = self.current.get_mut()
            && current.bytes == 0
        {
            std::fs::remove_file(path_of(&self.prefix, current.id)).ok();
        }
    }
}

impl Current {
    /// A new file, locked before it takes its journal name, so that no other store can
    /// take it for an orphan in between.
    fn create(prefix: &str) -> Result<Self> {
        let id = Uuid::new_v4();
        let unnamed = PathBuf::from(format!("{prefix}new-{}", id.simple()));
        let mut options = OpenOptions::new();
        options.read(true).append(true).create_new(true);
        // Owner-only, as the database file is: it holds token ids and request targets.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options
            .open(&unnamed)
            .map_err(|e| io("creating a journal", &e))?;
        let named = file
            .try_lock()
            .map_err(|e| StoreError::Config(format!("audit journal: locking a new journal: {e}")))
            .and_then(|()| {
                std::fs::rename(&unnamed, path_of(prefix, id))
                    .map_err(|e| io("naming a new journal", &e))
            });
        if let Err(e) = named {
            std::fs::remove_file(&unnamed).ok();
            return Err(e);
        }
        Ok(Self {
            file,
            id,
            bytes: 0,
            torn: false,
            new: true,
        })
    }
}

fn path_of(prefix: &str, id: Uuid) -> PathBuf {
    PathBuf::from(format!("{prefix}{}", id.simple()))
}

/// A journal's text as one JSON array; lines that are not a JSON object (cut short by a
/// power loss or a failed write) are skipped.
fn parse(text: &[u8]) -> Records {
    let mut json = String::with_capacity(text.len() + 2);
    json.push('[');
    let (mut count, mut skipped) = (0, 0);
    for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let whole = std::str::from_utf8(line).ok().filter(|l| {
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(l).is_ok()
        });
        match whole {
            Some(line) => {
                if count > 0 {
                    json.push(',');
                }
                json.push_str(line);
                count += 1;
            }
            None => skipped += 1,
        }
    }
    json.push(']');
    Records {
        json,
        count,
        skipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("blocks.db")
    }

    #[tokio::test]
    async fn records_come_back_in_order_and_a_new_file_takes_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(&database(&dir), MAX_JOURNAL_BYTES);
        assert!(
            journal.take().is_none(),
            "an empty journal has nothing to move"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no file before a record"
        );
        journal.append(r#"{"n":1}"#).unwrap();
        journal.append(r#"{"n":2}"#).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let id = journal.current.lock().as_ref().unwrap().id;
            let meta = std::fs::metadata(path_of(&journal.prefix, id)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "owner-only");
        }
        let taken = journal.take().unwrap();
        let taken_id = taken.id;
        let records = taken.records().await.unwrap();
        assert_eq!(records.json, r#"[{"n":1},{"n":2}]"#);
        assert_eq!((records.count, records.skipped), (2, 0));
        journal.append(r#"{"n":3}"#).unwrap();
        let path = taken.path.clone();
        taken.remove().await.unwrap();
        assert!(!path.exists());
        let next = journal.take().unwrap();
        assert_eq!(next.records().await.unwrap().json, r#"[{"n":3}]"#);
        assert_ne!(next.id, taken_id, "each file has an id of its own");
        assert!(journal.take().is_none());
    }

    #[tokio::test]
    async fn a_held_journal_is_no_orphan_and_a_released_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(&dir);
        let journal = Journal::new(&db, MAX_JOURNAL_BYTES);
        journal.append(r#"{"n":1}"#).unwrap();
        assert!(Journal::orphans(&db).unwrap().is_empty());
        drop(journal);
        let orphans = Journal::orphans(&db).unwrap();
        assert_eq!(orphans.len(), 1);
        assert_eq!(orphans[0].records().await.unwrap().json, r#"[{"n":1}]"#);
        // Another database's journals in the same folder are not this one's.
        assert!(
            Journal::orphans(&dir.path().join("other.db"))
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_line_cut_short_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(&dir);
        let journal = Journal::new(&db, MAX_JOURNAL_BYTES);
        journal.append(r#"{"n":1}"#).unwrap();
        let id = journal.current.lock().as_ref().unwrap().id;
        drop(journal);
        let path = path_of(&Journal::prefix_of(&db), id);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"n":2,"tar"#).unwrap();
        let orphans = Journal::orphans(&db).unwrap();
        let records = orphans[0].records().await.unwrap();
        assert_eq!(records.json, r#"[{"n":1}]"#);
        assert_eq!((records.count, records.skipped), (1, 1));
    }

    #[tokio::test]
    async fn a_full_journal_refuses_records_until_it_is_moved() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(&database(&dir), 12);
        journal.append(r#"{"n":1}"#).unwrap();
        let refused = journal.append(r#"{"n":2}"#).unwrap_err().to_string();
        assert!(refused.contains("wait to be moved"), "{refused}");
        journal.take().unwrap().remove().await.unwrap();
        journal.append(r#"{"n":2}"#).unwrap();
    }
}

#[cfg(test)]
mod store_tests {
    //! The journal through the store, on SQLite (PostgreSQL commits reads' records on a
    //! connection of its own and has no journal).

    use chrono::Utc;

    use crate::store::tests::harness::{TestDb, on_both};
    use crate::store::{AuditQuery, Backend, NewAuditRecord, Store};

    fn read(id: &str) -> NewAuditRecord {
        NewAuditRecord {
            at: Utc::now(),
            request_id: id.into(),
            token_id: None,
            action: "GET /api/block_documents/{id}".into(),
            target: "/api/block_documents/x?include_secrets=true".into(),
            outcome: "ok",
            status: 200,
        }
    }

    async fn request_ids(store: &Store) -> Vec<String> {
        let mut ids: Vec<String> = store
            .list_audit(&AuditQuery::default())
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.request_id)
            .collect();
        ids.sort();
        ids
    }

    fn journals(db: &TestDb) -> usize {
        std::fs::read_dir(db.dir().unwrap())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".audit-")
            })
            .count()
    }

    /// A store that journaled the reads `r1` and `r2`.
    async fn journaled_two(db: &TestDb) -> Store {
        let store = db.open().await;
        assert!(store.journals_reads());
        store
            .append_audit_deferred(&[read("r1"), read("r2")])
            .await
            .unwrap();
        store
    }

    async fn sqlite_only(test: impl AsyncFn(&TestDb)) {
        on_both(async |db| {
            if db.backend == Backend::Sqlite {
                test(db).await;
            }
        })
        .await;
    }

    #[tokio::test]
    async fn a_journaled_read_is_listed_at_once_and_moved_once() {
        sqlite_only(async |db| {
            let store = journaled_two(db).await;
            assert_eq!(journals(db), 1, "the records wait in a journal file");
            assert_eq!(request_ids(&store).await, ["r1", "r2"]);
            assert_eq!(journals(db), 0, "moved, the journal is deleted");
            store.append_audit_deferred(&[read("r3")]).await.unwrap();
            store.sync_audit().await.unwrap();
            assert_eq!(journals(db), 0);
            assert_eq!(request_ids(&store).await, ["r1", "r2", "r3"]);
        })
        .await;
    }

    #[tokio::test]
    async fn a_journal_left_by_a_store_that_ended_is_moved_when_the_database_opens() {
        sqlite_only(async |db| {
            let store = journaled_two(db).await;
            // Dropped without closing, as a killed server leaves it.
            drop(store);
            assert_eq!(journals(db), 1);
            let store = db.open().await;
            assert_eq!(journals(db), 0);
            assert_eq!(request_ids(&store).await, ["r1", "r2"]);
        })
        .await;
    }

    #[tokio::test]
    async fn a_journal_moved_before_a_crash_but_not_deleted_is_not_moved_again() {
        sqlite_only(async |db| {
            let store = journaled_two(db).await;
            // Moved and committed; the process ends before deleting the file.
            let taken = store.journal.as_ref().unwrap().take().unwrap();
            store.move_taken(&taken, None).await.unwrap();
            drop(taken);
            drop(store);
            assert_eq!(journals(db), 1);
            let store = db.open().await;
            assert_eq!(journals(db), 0);
            assert_eq!(request_ids(&store).await, ["r1", "r2"], "each record once");
            let left: i64 = sqlx::query_scalar("select count(*) from audit_journal_moved")
                .fetch_one(&store.read)
                .await
                .unwrap();
            assert_eq!(left, 0, "the recovered journal's id is forgotten");
        })
        .await;
    }

    #[tokio::test]
    async fn a_move_cut_short_at_any_point_is_finished_by_the_next_and_stores_each_record_once() {
        sqlite_only(async |db| {
            let store = journaled_two(db).await;
            let journal = store.journal.as_ref().unwrap();
            // Cancelled after its first step, then after a little more each time.
            for polls in 1..=6 {
                let cut = tokio::time::timeout(
                    std::time::Duration::from_micros(polls * 200),
                    store.move_journal(journal),
                );
                cut.await.ok();
            }
            store.append_audit_deferred(&[read("r3")]).await.unwrap();
            assert_eq!(request_ids(&store).await, ["r1", "r2", "r3"]);
            assert_eq!(journals(db), 0);
        })
        .await;
    }

    #[tokio::test]
    async fn a_move_that_failed_before_or_after_its_commit_is_finished_by_the_next_once() {
        sqlite_only(async |db| {
            let store = journaled_two(db).await;
            let journal = store.journal.as_ref().unwrap();
            // Rolled back: the next move moves it.
            store.fail_at(Some("journal_before_commit"));
            store.move_journal(journal).await.unwrap_err();
            store.fail_at(None);
            store.append_audit_deferred(&[read("r3")]).await.unwrap();
            assert_eq!(
                journals(db),
                2,
                "the failed journal waits beside the current one"
            );
            store.move_journal(journal).await.unwrap();
            assert_eq!(journals(db), 0);
            // Committed, but the caller heard a failure: the next move finds its id
            // recorded and only deletes it.
            store.append_audit_deferred(&[read("r4")]).await.unwrap();
            store.fail_at(Some("journal_after_commit"));
            store.move_journal(journal).await.unwrap_err();
            store.fail_at(None);
            assert_eq!(journals(db), 1, "the journal whose move failed is kept");
            store.append_audit_deferred(&[read("r5")]).await.unwrap();
            assert_eq!(request_ids(&store).await, ["r1", "r2", "r3", "r4", "r5"]);
            assert_eq!(journals(db), 0);
        })
        .await;
    }

    #[tokio::test]
    async fn a_store_open_on_the_same_database_leaves_another_stores_journal_alone() {
        sqlite_only(async |db| {
            let first = db.open().await;
            first.append_audit_deferred(&[read("r1")]).await.unwrap();
            let second = db.open().await;
            assert_eq!(
                journals(db),
                1,
                "the first store's journal is still its own"
            );
            first.append_audit_deferred(&[read("r2")]).await.unwrap();
            first.sync_audit().await.unwrap();
            assert_eq!(request_ids(&second).await, ["r1", "r2"]);
        })
        .await;
    }
}
