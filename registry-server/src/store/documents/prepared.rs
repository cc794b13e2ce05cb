//! Answers kept pre-serialized beside their cached tree, so a hot read neither clones nor
//! serializes the documents, their schemas and their types again.
//!
//! A masked answer is kept whole. An answer with secrets is kept as the JSON text around
//! its secret values: each is opened per request from the sealed value the cache holds and
//! written in its place, so no plaintext secret is kept. The text is what the answer built
//! from the tree serializes to, byte for byte (a sealed value's plaintext is its compact
//! JSON text, as the answer writes it).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::read::{Opener, resolve};
use super::{CachedTree, Result, Store, StoreError, TreeDoc};
use crate::crypto::{CryptoError, DataKey, SealedField, place_sealed, sealed_key_id};
use crate::store::tree_cache::TreeKey;

/// A document's answer as JSON text: `texts[0]`, sealed value `slots[0]`, `texts[1]`, …
pub(crate) struct Prepared {
    texts: Vec<Bytes>,
    slots: Vec<usize>,
    /// The sealed values the slots name, each with its document.
    sealed: Vec<(Uuid, SealedField)>,
    /// The documents the answer shows, roots first, each once.
    documents: Arc<[Uuid]>,
    /// The bytes of text kept.
    bytes: usize,
}

/// A document's answer, ready to send.
#[derive(Clone)]
pub struct Answer {
    /// The answer (JSON).
    pub body: Bytes,
    /// The tree's entity tag (see [`super::Tagged::etag`]).
    pub etag: String,
    /// The document's own current version.
    pub version: i64,
    /// The documents the answer shows, roots first, each once.
    pub documents: Arc<[Uuid]>,
}

impl std::fmt::Debug for Answer {
    /// The tag and the documents: never the body, which may hold secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("etag", &self.etag)
            .field("version", &self.version)
            .field("documents", &self.documents)
            .finish_non_exhaustive()
    }
}

/// The places of sealed values in a document being resolved for a pre-serialized answer:
/// each gets a marker string no stored value can hold (it carries a random nonce drawn for
/// this answer), found again in the serialized text.
pub(crate) struct Marks {
    prefix: String,
    sealed: Vec<(Uuid, SealedField)>,
}

impl Marks {
    fn new() -> Result<Self> {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce)
            .map_err(|e| StoreError::Crypto(CryptoError::Random(e.to_string())))?;
        let mut prefix = String::from("blocks-sealed-");
        for b in nonce {
            let _ = write!(prefix, "{b:02x}");
        }
        prefix.push('-');
        Ok(Self {
            prefix,
            sealed: Vec::new(),
        })
    }

    /// Marks where `doc`'s sealed values go in `data`.
    pub(super) fn place(&mut self, data: &mut Map<String, Value>, doc: &TreeDoc) {
        let first = self.sealed.len();
        place_sealed(data, &doc.secrets, |i| {
            Value::String(format!("{}{}", self.prefix, first + i))
        });
        self.sealed
            .extend(doc.secrets.iter().map(|field| (doc.id, field.clone())));
    }

    /// Splits the serialized answer at its markers.
    fn split(self, text: &str, documents: Arc<[Uuid]>) -> Result<Prepared> {
        let marker = format!("\"{}", self.prefix);
        let mut texts = Vec::new();
        let mut slots = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find(&marker) {
            texts.push(Bytes::copy_from_slice(&rest.as_bytes()[..at]));
            let after = &rest[at + marker.len()..];
            let end = after
                .find('"')
                .ok_or_else(|| StoreError::Corrupt("a secret marker without its end".into()))?;
            let slot: usize = after[..end]
                .parse()
                .ok()
                .filter(|slot| *slot < self.sealed.len())
                .ok_or_else(|| StoreError::Corrupt("a secret marker naming no value".into()))?;
            slots.push(slot);
            rest = &after[end + 1..];
        }
        texts.push(Bytes::copy_from_slice(rest.as_bytes()));
        Ok(Prepared {
            bytes: text.len(),
            texts,
            slots,
            sealed: self.sealed,
            documents,
        })
    }
}

impl Prepared {
    /// The text kept, in bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The answer, its sealed values opened with `keys`.
    fn render(&self, keys: &HashMap<Uuid, Arc<DataKey>>) -> Result<Bytes> {
        if let [whole] = self.texts.as_slice() {
            return Ok(whole.clone());
        }
        let mut opened = Vec::with_capacity(self.sealed.len());
        for (document, field) in &self.sealed {
            let key = keys
                .get(&sealed_key_id(&field.ciphertext)?)
                .ok_or(CryptoError::Tampered)?;
            let plaintext = key.decrypt_field(*document, &field.path, &field.ciphertext)?;
            // Written as it is: it must be one JSON value.
            serde_json::from_slice::<serde::de::IgnoredAny>(&plaintext)
                .map_err(|_| CryptoError::Tampered)?;
            opened.push(plaintext);
        }
        let mut out =
            Vec::with_capacity(self.bytes + opened.iter().map(|p| p.len()).sum::<usize>());
        for (i, text) in self.texts.iter().enumerate() {
            out.extend_from_slice(text);
            if let Some(slot) = self.slots.get(i) {
                out.extend_from_slice(&opened[*slot]);
            }
        }
        Ok(out.into())
    }
}

impl Store {
    /// The answer of `cached`'s root (masked, or with its secrets opened), from the text
    /// kept with the tree or made now and kept.
    pub(super) async fn answer_of(
        &self,
        key: &TreeKey,
        entry: &crate::store::tree_cache::Entry<CachedTree>,
        include_secrets: bool,
    ) -> Result<Answer> {
        let cached = &*entry.tree;
        let cell = &cached.answers[usize::from(include_secrets)];
        let needs_keys = include_secrets || cell.get().is_none();
        let keys = if needs_keys {
            self.keys_for(&cached.tree, false).await?
        } else {
            HashMap::new()
        };
        let prepared = match cell.get() {
            Some(prepared) => prepared.clone(),
            None => {
                let prepared = Arc::new(prepare(cached, &keys, include_secrets)?);
                if cell.set(prepared.clone()).is_ok() {
                    self.trees.grow(key, &entry.tree, prepared.bytes());
                }
                prepared
            }
        };
        let version = cached.tree.docs.get(&cached.root).map_or(0, |d| d.version);
        Ok(Answer {
            body: prepared.render(&keys)?,
            etag: cached.etag.clone(),
            version,
            documents: prepared.documents.clone(),
        })
    }
}

/// The root's answer as kept text: masked values resolved as a masked read does; secret
/// values marked and split out.
fn prepare(
    cached: &CachedTree,
    keys: &HashMap<Uuid, Arc<DataKey>>,
    include_secrets: bool,
) -> Result<Prepared> {
    let tree = &cached.tree;
    let id = cached.root;
    let doc = tree.docs.get(&id).ok_or_else(super::not_found)?;
    let mut marks = Marks::new()?;
    let (data, refs, _, _) = if include_secrets {
        resolve(
            tree,
            &mut Opener::Marks(&mut marks),
            id,
            true,
            0,
            &mut HashMap::new(),
        )?
    } else {
        resolve(
            tree,
            &mut Opener::Keys(keys),
            id,
            false,
            0,
            &mut HashMap::new(),
        )?
    };
    let document = doc.document(data, refs, false);
    let documents: Arc<[Uuid]> = super::shown_documents([&document]).into();
    let text = serde_json::to_string(&document)
        .map_err(|e| StoreError::Corrupt(format!("an answer could not be written: {e}")))?;
    marks.split(&text, documents)
}

#[cfg(test)]
impl Store {
    /// The text of every answer kept pre-serialized, for tests that look for values in it.
    pub(crate) fn kept_answer_text(&self) -> String {
        let mut text = String::new();
        for tree in self.trees.trees() {
            for answer in tree.answers.iter().filter_map(|a| a.get()) {
                for part in &answer.texts {
                    text.push_str(&String::from_utf8_lossy(part));
                }
            }
        }
        text
    }
}
