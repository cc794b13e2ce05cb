//! Where a client's blocks came from: keyed digests of each block it loaded or saved, by
//! document id, so a save can reference the named document a nested value came from. It
//! keeps digests, never data.

use std::collections::HashMap;

use block_types::Block;
use parking_lot::Mutex;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

/// How many loaded documents a client remembers (to save nested blocks as references).
const MAX_PROVENANCE: usize = 10_000;

#[derive(Default)]
struct ProvenanceMaps {
    /// Digest of (slug, data) → the named document holding it; `None` when two documents
    /// hold the same data (a nested value equal to both cannot tell which one it is).
    by_digest: HashMap<[u8; 32], Option<Uuid>>,
    /// Each document's digest, to forget it when the document is saved with other data.
    by_id: HashMap<Uuid, [u8; 32]>,
}

/// Where block values came from: a nested block equal to a named document this client
/// loaded (or saved) is saved as a reference to that document. Only keyed digests are
/// kept, never data; the key is random per client, so a digest says nothing outside it.
pub(crate) struct Provenance {
    key: [u8; 16],
    maps: Mutex<ProvenanceMaps>,
}

impl Default for Provenance {
    fn default() -> Self {
        Self {
            key: *Uuid::new_v4().as_bytes(),
            maps: Mutex::default(),
        }
    }
}

impl std::fmt::Debug for Provenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provenance")
            .field("documents", &self.maps.lock().by_id.len())
            .finish_non_exhaustive()
    }
}

impl Provenance {
    fn digest(&self, slug: &str, data: &Value) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(self.key);
        hash.update(slug.as_bytes());
        hash.update([0]);
        hash.update(serde_json::to_vec(data).unwrap_or_default());
        hash.finalize().into()
    }

    pub(crate) fn remember(&self, slug: &str, data: &Value, id: Uuid) {
        let digest = self.digest(slug, data);
        let mut maps = self.maps.lock();
        if maps.by_id.len() >= MAX_PROVENANCE {
            *maps = ProvenanceMaps::default();
        }
        if let Some(old) = maps.by_id.insert(id, digest)
            && old != digest
            && maps.by_digest.get(&old) == Some(&Some(id))
        {
            maps.by_digest.remove(&old);
        }
        let entry = maps.by_digest.entry(digest).or_insert(Some(id));
        if *entry != Some(id) {
            *entry = None;
        }
    }

    pub(crate) fn find(&self, slug: &str, data: &Value) -> Option<Uuid> {
        let digest = self.digest(slug, data);
        self.maps.lock().by_digest.get(&digest).copied().flatten()
    }

    /// Remembers a loaded document and the named documents its nested blocks came from.
    pub(crate) fn remember_loaded<T: Block>(
        &self,
        value: &T,
        document: &block_types::model::BlockDocument,
    ) {
        let Ok(data) = value.to_data() else { return };
        if !document.is_anonymous {
            self.remember(T::SLUG, &Value::Object(data.clone()), document.id);
        }
        for (field, slug) in T::spec().block_fields() {
            if let (Some(nested), Some(reference)) = (
                data.get(&field),
                document.block_document_references.get(&field),
            ) && !reference.block_document.is_anonymous
            {
                self.remember(&slug, nested, reference.block_document.id);
            }
        }
    }
}
