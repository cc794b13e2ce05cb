//! Resolved trees of recently read documents, so a hot read costs no query.
//!
//! An entry is the tree a read loaded (every document reachable from the root, with its
//! plain data, its secrets **still sealed**, its schema and type) under the key the read
//! named the root by: its id, or its type slug and name. A read opens the sealed values it
//! answers with each time; no plaintext secret is kept here.
//!
//! The documents per type (the console's list) are kept beside the trees, valid until the
//! next change of any kind (a create names its new document as a change for this; on
//! PostgreSQL another replica's create arrives as a notice after its commit, and the counts
//! are kept [`COUNTS_MAX_AGE`] at most).
//!
//! Exactness: every committed write that changes what a tree read would return names the
//! documents it changed ([`TreeCache::changed`]) or, for a type, a schema or a key change,
//! empties the cache ([`TreeCache::clear`]); each entry is indexed by every document in its
//! tree, so a write to a referenced document drops every tree holding it. A read that
//! started before a change is not cached (generation counter), so it cannot put back what
//! the change removed. On PostgreSQL the other replicas' writes arrive through the
//! listener (`NOTIFY blocks_documents_changed`, sent in the writing transaction, or after
//! it for creates, which change no tree); while it
//! is not connected the cache is not used, and it starts empty on every reconnect.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Trees kept at most.
const MAX_ENTRIES: usize = 10_000;
/// Stored bytes (plain data and sealed values) the kept trees may hold together.
const MAX_BYTES: usize = 32 << 20;

/// How a read named its root.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum TreeKey {
    Id(Uuid),
    Name(Box<str>, Box<str>),
}

/// A cached tree: what the read path keeps of a loaded tree, shared by every reader.
#[derive(Debug)]
pub(crate) struct Entry<T> {
    pub(crate) tree: Arc<T>,
    /// Every document of the tree.
    pub(crate) documents: Vec<Uuid>,
    /// About how many bytes it holds.
    pub(crate) bytes: usize,
}

impl<T> Clone for Entry<T> {
    fn clone(&self) -> Self {
        Self {
            tree: self.tree.clone(),
            documents: self.documents.clone(),
            bytes: self.bytes,
        }
    }
}

/// A change being committed (see `Store::changing`): its documents' trees are dropped
/// and then neither served nor kept until it is dropped, which drops them again.
pub(crate) struct Changing<'a, T> {
    cache: &'a TreeCache<T>,
    documents: Vec<Uuid>,
}

impl<'a, T> Changing<'a, T> {
    pub(crate) fn new(cache: &'a TreeCache<T>, documents: &[Uuid]) -> Self {
        let mut inner = cache.lock();
        if documents.is_empty() {
            inner.changing_all += 1;
            cache.drop_all(&mut inner);
        } else {
            for id in documents {
                *inner.changing.entry(*id).or_default() += 1;
            }
            cache.drop_holding(&mut inner, documents);
        }
        drop(inner);
        Self {
            cache,
            documents: documents.to_vec(),
        }
    }
}

impl<T> Drop for Changing<'_, T> {
    fn drop(&mut self) {
        let mut inner = self.cache.lock();
        if self.documents.is_empty() {
            inner.changing_all -= 1;
            self.cache.drop_all(&mut inner);
        } else {
            for id in &self.documents {
                if let Some(n) = inner.changing.get_mut(id) {
                    *n -= 1;
                    if *n == 0 {
                        inner.changing.remove(id);
                    }
                }
            }
            self.cache.drop_holding(&mut inner, &self.documents);
        }
    }
}

/// Hits, misses and size, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeCacheStats {
    /// Reads answered from the cache.
    pub hits: u64,
    /// Reads that loaded their tree from the database.
    pub misses: u64,
    /// Trees dropped to stay within the bounds.
    pub evictions: u64,
    /// Trees dropped because a document of theirs changed (or everything was dropped).
    pub invalidations: u64,
    /// Trees kept now.
    pub entries: u64,
    /// Their stored bytes.
    pub bytes: u64,
}

#[derive(Debug)]
struct Inner<T> {
    entries: hashlink::LruCache<TreeKey, Entry<T>>,
    /// document → the keys of the trees holding it.
    holding: HashMap<Uuid, HashSet<TreeKey>>,
    bytes: usize,
    /// Documents whose change is being committed (with how many changes each): trees
    /// holding one are neither served nor kept.
    changing: HashMap<Uuid, usize>,
    /// Changes of everything being committed.
    changing_all: usize,
}

impl<T> Inner<T> {
    fn unindex(&mut self, key: &TreeKey, entry: &Entry<T>) {
        self.bytes -= entry.bytes;
        for id in &entry.documents {
            if let Some(keys) = self.holding.get_mut(id) {
                keys.remove(key);
                if keys.is_empty() {
                    self.holding.remove(id);
                }
            }
        }
    }
}

/// Documents per type, with the generation they were counted at and when.
type KeptCounts = (u64, Instant, Arc<Vec<(Uuid, i64)>>);

/// How long documents per type are kept where creates are heard only after the fact
/// (PostgreSQL replicas): a replica that missed a notice recounts after this.
pub(crate) const COUNTS_MAX_AGE: Duration = Duration::from_secs(5);

/// The cache of resolved trees (see the module documentation).
#[derive(Debug)]
pub(crate) struct TreeCache<T> {
    inner: parking_lot::Mutex<Inner<T>>,
    /// Whether every change is being heard (always on SQLite; the listener's state on
    /// PostgreSQL).
    live: AtomicBool,
    /// Bumped by every change: a load that began before one is not cached.
    generation: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    invalidations: AtomicU64,
    /// Documents per type (with and without anonymous ones), for the console's list:
    /// dropped with every change, as the trees are.
    counts: parking_lot::Mutex<[Option<KeptCounts>; 2]>,
    /// How long counts are kept at most (none: until the next change).
    counts_max_age: Option<Duration>,
}

impl<T> TreeCache<T> {
    pub(crate) fn new(live: bool) -> Self {
        Self {
            inner: parking_lot::Mutex::new(Inner {
                entries: hashlink::LruCache::new_unbounded(),
                holding: HashMap::new(),
                bytes: 0,
                changing: HashMap::new(),
                changing_all: 0,
            }),
            live: AtomicBool::new(live),
            generation: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            counts: parking_lot::Mutex::new([None, None]),
            counts_max_age: None,
        }
    }

    /// Keeps documents per type for `max_age` at most.
    pub(crate) fn counts_kept_for(mut self, max_age: Duration) -> Self {
        self.counts_max_age = Some(max_age);
        self
    }

    /// Documents were created (by another replica): no tree changed, the counts did.
    pub(crate) fn created(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The cached documents per type, if no change was committed since they were counted.
    pub(crate) fn counts(&self, include_anonymous: bool) -> Option<Arc<Vec<(Uuid, i64)>>> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let counts = self.counts.lock();
        counts[usize::from(include_anonymous)]
            .as_ref()
            .filter(|(generation, at, _)| {
                *generation == self.generation()
                    && self.counts_max_age.is_none_or(|age| at.elapsed() < age)
            })
            .map(|(_, _, counts)| counts.clone())
    }

    /// Keeps what a count that began at `generation` found (it is used only while no
    /// change follows).
    pub(crate) fn keep_counts(
        &self,
        include_anonymous: bool,
        counts: Arc<Vec<(Uuid, i64)>>,
        generation: u64,
    ) {
        if self.live.load(Ordering::Acquire) && self.generation() == generation {
            self.counts.lock()[usize::from(include_anonymous)] =
                Some((generation, Instant::now(), counts));
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Inner<T>> {
        self.inner.lock()
    }

    /// The generation to hand back to [`TreeCache::insert`] with what a load reads.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The cached tree for `key`, counted as a hit or a miss.
    pub(crate) fn get(&self, key: &TreeKey) -> Option<Entry<T>> {
        let found = if self.live.load(Ordering::Acquire) {
            let mut inner = self.lock();
            let unsettled = inner.changing_all > 0;
            let changing = std::mem::take(&mut inner.changing);
            let found = inner
                .entries
                .get(key)
                .filter(|e| !unsettled && !e.documents.iter().any(|d| changing.contains_key(d)))
                .cloned();
            inner.changing = changing;
            found
        } else {
            None
        };
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keeps `entry` for `key`, unless a change was committed since `generation` was read
    /// (the entry may predate it) or changes are not being heard.
    pub(crate) fn insert(&self, key: TreeKey, entry: Entry<T>, generation: u64) {
        if entry.bytes > MAX_BYTES / 16 {
            return;
        }
        let mut inner = self.lock();
        if !self.live.load(Ordering::Acquire)
            || self.generation() != generation
            || inner.changing_all > 0
            || entry
                .documents
                .iter()
                .any(|d| inner.changing.contains_key(d))
        {
            return;
        }
        if let Some(old) = inner.entries.remove(&key) {
            inner.unindex(&key, &old);
        }
        while inner.entries.len() >= MAX_ENTRIES || inner.bytes + entry.bytes > MAX_BYTES {
            let Some((old_key, old)) = inner.entries.remove_lru() else {
                break;
            };
            inner.unindex(&old_key, &old);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        for id in &entry.documents {
            inner.holding.entry(*id).or_default().insert(key.clone());
        }
        inner.bytes += entry.bytes;
        inner.entries.insert(key, entry);
    }

    /// Counts `bytes` more for the entry under `key` if it still holds `tree` (an answer
    /// to keep with it), evicting the least recently used others past the bound. False
    /// (nothing counted) when the entry is gone or would pass the bound of one entry.
    pub(crate) fn grow(&self, key: &TreeKey, tree: &Arc<T>, bytes: usize) -> bool {
        let mut inner = self.lock();
        let Some(entry) = inner.entries.get_mut(key) else {
            return false;
        };
        if !Arc::ptr_eq(&entry.tree, tree) || entry.bytes + bytes > MAX_BYTES / 16 {
            return false;
        }
        entry.bytes += bytes;
        inner.bytes += bytes;
        while inner.bytes > MAX_BYTES && inner.entries.len() > 1 {
            let Some((old_key, old)) = inner.entries.remove_lru() else {
                break;
            };
            inner.unindex(&old_key, &old);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Takes back what [`TreeCache::grow`] counted for an answer that was not kept.
    pub(crate) fn shrink(&self, key: &TreeKey, tree: &Arc<T>, bytes: usize) {
        let mut inner = self.lock();
        let Some(entry) = inner.entries.peek_mut(key) else {
            return;
        };
        if Arc::ptr_eq(&entry.tree, tree) {
            entry.bytes -= bytes;
            inner.bytes -= bytes;
        }
    }

    /// Drops every tree holding one of `documents`: after another replica's write that
    /// changed them committed.
    pub(crate) fn changed(&self, documents: &[Uuid]) {
        let mut inner = self.lock();
        self.drop_holding(&mut inner, documents);
    }

    fn drop_holding(&self, inner: &mut Inner<T>, documents: &[Uuid]) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let keys: HashSet<TreeKey> = documents
            .iter()
            .filter_map(|id| inner.holding.get(id))
            .flatten()
            .cloned()
            .collect();
        for key in keys {
            if let Some(old) = inner.entries.remove(&key) {
                inner.unindex(&key, &old);
                self.invalidations.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Drops every tree: after a change to a type, a schema or the keys, or when changes
    /// may have been missed.
    pub(crate) fn clear(&self) {
        let mut inner = self.lock();
        self.drop_all(&mut inner);
    }

    fn drop_all(&self, inner: &mut Inner<T>) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let dropped = inner.entries.len() as u64;
        inner.entries.clear();
        inner.holding.clear();
        inner.bytes = 0;
        self.invalidations.fetch_add(dropped, Ordering::Relaxed);
    }

    /// Whether every change is heard; switching either way empties the cache.
    pub(crate) fn set_live(&self, live: bool) {
        if !live {
            self.live.store(false, Ordering::Release);
        }
        self.clear();
        if live {
            self.live.store(true, Ordering::Release);
        }
    }

    /// Whether the cache is in use (every change is heard).
    pub(crate) fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Every kept tree.
    #[cfg(test)]
    pub(crate) fn trees(&self) -> Vec<Arc<T>> {
        self.lock()
            .entries
            .iter()
            .map(|(_, entry)| entry.tree.clone())
            .collect()
    }

    pub(crate) fn stats(&self) -> TreeCacheStats {
        let inner = self.lock();
        TreeCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            entries: inner.entries.len() as u64,
            bytes: inner.bytes as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(documents: &[Uuid], bytes: usize) -> Entry<()> {
        Entry {
            tree: Arc::new(()),
            documents: documents.to_vec(),
            bytes,
        }
    }

    #[test]
    fn a_change_to_any_document_of_a_tree_drops_it_and_only_it() {
        let cache = TreeCache::new(true);
        let (bucket, creds, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let g = cache.generation();
        cache.insert(TreeKey::Id(bucket), entry(&[bucket, creds], 10), g);
        cache.insert(
            TreeKey::Name("gcs-bucket".into(), "zoom-gcs".into()),
            entry(&[bucket, creds], 10),
            g,
        );
        cache.insert(TreeKey::Id(other), entry(&[other], 10), g);
        assert_eq!(cache.stats().entries, 3);
        cache.changed(&[creds]);
        assert!(cache.get(&TreeKey::Id(bucket)).is_none());
        assert!(
            cache
                .get(&TreeKey::Name("gcs-bucket".into(), "zoom-gcs".into()))
                .is_none()
        );
        assert!(cache.get(&TreeKey::Id(other)).is_some());
        let stats = cache.stats();
        assert_eq!(
            (stats.entries, stats.bytes, stats.invalidations),
            (1, 10, 2)
        );
        assert_eq!((stats.hits, stats.misses), (1, 2));
    }

    #[test]
    fn a_load_that_began_before_a_change_is_not_kept() {
        let cache = TreeCache::new(true);
        let id = Uuid::new_v4();
        let before = cache.generation();
        cache.changed(&[Uuid::new_v4()]);
        cache.insert(TreeKey::Id(id), entry(&[id], 1), before);
        assert!(cache.get(&TreeKey::Id(id)).is_none());
        cache.insert(TreeKey::Id(id), entry(&[id], 1), cache.generation());
        assert!(cache.get(&TreeKey::Id(id)).is_some());
    }

    #[test]
    fn a_tree_is_neither_served_nor_kept_while_a_change_to_it_commits() {
        let cache = TreeCache::new(true);
        let (id, other) = (Uuid::new_v4(), Uuid::new_v4());
        cache.insert(TreeKey::Id(id), entry(&[id], 1), cache.generation());
        cache.insert(TreeKey::Id(other), entry(&[other], 1), cache.generation());
        let change = Changing::new(&cache, &[id]);
        assert!(cache.get(&TreeKey::Id(id)).is_none());
        assert!(cache.get(&TreeKey::Id(other)).is_some(), "other trees stay");
        // A load during the commit (it may read either side of it) is not kept.
        cache.insert(TreeKey::Id(id), entry(&[id], 1), cache.generation());
        assert!(cache.get(&TreeKey::Id(id)).is_none());
        let before_end = cache.generation();
        drop(change);
        cache.insert(TreeKey::Id(id), entry(&[id], 1), before_end);
        assert!(
            cache.get(&TreeKey::Id(id)).is_none(),
            "a load that began before the end is not kept"
        );
        cache.insert(TreeKey::Id(id), entry(&[id], 1), cache.generation());
        assert!(cache.get(&TreeKey::Id(id)).is_some());
        // A change of everything.
        let all = Changing::new(&cache, &[]);
        assert!(cache.get(&TreeKey::Id(other)).is_none());
        drop(all);
        assert_eq!(cache.stats().entries, 0);
    }

    #[test]
    fn counts_last_until_a_create_is_heard_and_no_longer_than_their_age_allows() {
        let counts = Arc::new(vec![(Uuid::new_v4(), 3)]);
        let exact = TreeCache::<()>::new(true);
        let id = Uuid::new_v4();
        exact.insert(TreeKey::Id(id), entry(&[id], 1), exact.generation());
        exact.keep_counts(false, counts.clone(), exact.generation());
        assert_eq!(exact.counts(false), Some(counts.clone()));
        assert_eq!(exact.counts(true), None, "kept per kind of count");
        exact.created();
        assert_eq!(
            exact.counts(false),
            None,
            "another replica created documents"
        );
        assert!(
            exact.get(&TreeKey::Id(id)).is_some(),
            "a create changes no tree"
        );

        let aging = TreeCache::<()>::new(true).counts_kept_for(Duration::from_millis(50));
        aging.keep_counts(false, counts.clone(), aging.generation());
        assert_eq!(aging.counts(false), Some(counts));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(aging.counts(false), None, "recounted once too old");
    }

    #[test]
    fn nothing_is_used_or_kept_while_changes_are_not_heard() {
        let cache = TreeCache::new(true);
        let id = Uuid::new_v4();
        cache.insert(TreeKey::Id(id), entry(&[id], 1), cache.generation());
        cache.set_live(false);
        assert!(cache.get(&TreeKey::Id(id)).is_none());
        cache.insert(TreeKey::Id(id), entry(&[id], 1), cache.generation());
        assert_eq!(cache.stats().entries, 0);
        cache.set_live(true);
        assert!(
            cache.get(&TreeKey::Id(id)).is_none(),
            "reconnecting starts empty"
        );
    }

    #[test]
    fn a_kept_answer_counts_against_the_bounds_and_never_passes_an_entrys_share() {
        let cache = TreeCache::new(true);
        let big = MAX_BYTES / 16;
        // Full: 32 entries of half a share each.
        let ids: Vec<Uuid> = (0..32).map(|_| Uuid::new_v4()).collect();
        for id in &ids {
            cache.insert(TreeKey::Id(*id), entry(&[*id], big / 2), cache.generation());
        }
        assert_eq!(cache.stats().evictions, 0);
        let key = TreeKey::Id(ids[31]);
        let tree = cache.get(&key).unwrap().tree;
        // Past the entry's share: not counted (the answer is not kept).
        assert!(!cache.grow(&key, &tree, big / 2 + 1));
        assert_eq!(cache.stats().bytes, MAX_BYTES as u64);
        // Another tree under the key (or none): not counted.
        assert!(!cache.grow(&key, &Arc::new(()), 1));
        assert!(!cache.grow(&TreeKey::Id(Uuid::new_v4()), &tree, 1));
        // Within it: counted, and the total bound evicts the least recently used.
        assert!(cache.grow(&key, &tree, big / 2));
        let stats = cache.stats();
        assert_eq!(stats.evictions, 1);
        assert!(stats.bytes <= MAX_BYTES as u64);
        assert!(cache.get(&TreeKey::Id(ids[0])).is_none());
        assert!(cache.get(&key).is_some());
        cache.shrink(&key, &tree, big / 2);
        assert_eq!(cache.stats().bytes, (31 * (big / 2)) as u64);
    }

    #[test]
    fn the_bounds_evict_the_least_recently_used() {
        let cache = TreeCache::new(true);
        let big = MAX_BYTES / 16;
        let ids: Vec<Uuid> = (0..17).map(|_| Uuid::new_v4()).collect();
        for id in &ids[..16] {
            cache.insert(TreeKey::Id(*id), entry(&[*id], big), cache.generation());
        }
        // Touch the first, so the second is the least recently used.
        assert!(cache.get(&TreeKey::Id(ids[0])).is_some());
        cache.insert(
            TreeKey::Id(ids[16]),
            entry(&[ids[16]], big),
            cache.generation(),
        );
        let stats = cache.stats();
        assert_eq!(stats.evictions, 1);
        assert!(stats.bytes <= MAX_BYTES as u64);
        assert!(cache.get(&TreeKey::Id(ids[0])).is_some());
        assert!(cache.get(&TreeKey::Id(ids[1])).is_none());
        // A tree too large for its share is never kept.
        cache.insert(
            TreeKey::Id(ids[1]),
            entry(&[ids[1]], big + 1),
            cache.generation(),
        );
        assert!(cache.get(&TreeKey::Id(ids[1])).is_none());
        // Clearing empties the index too.
        cache.clear();
        let stats = cache.stats();
        assert_eq!((stats.entries, stats.bytes), (0, 0));
    }
}
