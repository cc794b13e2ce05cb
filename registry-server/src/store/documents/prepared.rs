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
    /// The bytes kept (text and sealed values).
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
    /// A document had a sealed value inside another.
    nested: bool,
}

impl Marks {
    fn new() -> Result<Self> {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce)
            .map_err(|e| StoreError::Config(format!("drawing a marker nonce: {e}")))?;
        let mut prefix = String::from("blocks-sealed-");
        for b in nonce {
            let _ = write!(prefix, "{b:02x}");
        }
        prefix.push('-');
        Ok(Self {
            prefix,
            sealed: Vec::new(),
            nested: false,
        })
    }

    /// Marks where `doc`'s sealed values go in `data`. A document one of whose sealed
    /// values sits inside another (opened, the inner one merges into the outer object; a
    /// marker would replace the outer one) is noted, and its answer is not kept.
    pub(super) fn place(&mut self, data: &mut Map<String, Value>, doc: &TreeDoc) {
        let paths: Vec<&Vec<String>> = doc.secrets.iter().map(|f| &f.path).collect();
        if paths
            .iter()
            .any(|a| paths.iter().any(|b| a.len() < b.len() && b.starts_with(a)))
        {
            self.nested = true;
        }
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
            bytes: text.len()
                + self
                    .sealed
                    .iter()
                    .map(|(_, f)| f.ciphertext.len() + 64)
                    .sum::<usize>(),
            texts,
            slots,
            sealed: self.sealed,
            documents,
        })
    }
}

impl Prepared {
    /// The bytes kept (text and sealed values).
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
            // Written as it is: it must be one JSON value (as opening it for a built
            // answer requires).
            serde_json::from_slice::<Value>(&plaintext).map_err(|_| CryptoError::Tampered)?;
            opened.push(plaintext);
        }
        let mut out = Vec::with_capacity(
            self.texts.iter().map(Bytes::len).sum::<usize>()
                + opened.iter().map(|p| p.len()).sum::<usize>(),
        );
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
        let version = cached.tree.docs.get(&cached.root).map_or(0, |d| d.version);
        let prepared = match cell.get() {
            Some(prepared) => prepared.clone(),
            None => match prepare(cached, &keys, include_secrets)? {
                Some(prepared) => {
                    let prepared = Arc::new(prepared);
                    // Kept only while the entry stays within its bound (else it is used
                    // for this answer only).
                    if self.trees.grow(key, &entry.tree, prepared.bytes())
                        && cell.set(prepared.clone()).is_err()
                    {
                        // Another read kept its own first: count this one's bytes back.
                        self.trees.shrink(key, &entry.tree, prepared.bytes());
                    }
                    prepared
                }
                None => {
                    // Not keepable: built as an uncached read builds it.
                    let document = self
                        .resolve_root_with(&cached.tree, &keys, cached.root, include_secrets)?
                        .ok_or_else(super::not_found)?;
                    let body = serde_json::to_vec(&document).map_err(|e| {
                        StoreError::Corrupt(format!("an answer could not be written: {e}"))
                    })?;
                    return Ok(Answer {
                        documents: super::shown_documents([&document]).into(),
                        body: body.into(),
                        etag: cached.etag.clone(),
                        version,
                    });
                }
            },
        };
        Ok(Answer {
            body: prepared.render(&keys)?,
            etag: cached.etag.clone(),
            version,
            documents: prepared.documents.clone(),
        })
    }
}

/// The root's answer as kept text: masked values resolved as a masked read does; secret
/// values marked and split out. None when it cannot be kept (a sealed value inside
/// another).
fn prepare(
    cached: &CachedTree,
    keys: &HashMap<Uuid, Arc<DataKey>>,
    include_secrets: bool,
) -> Result<Option<Prepared>> {
    let tree = &cached.tree;
    let id = cached.root;
    let doc = tree.docs.get(&id).ok_or_else(super::not_found)?;
    let (data, refs, marks) = if include_secrets {
        let mut marks = Marks::new()?;
        let (data, refs, _, _) = resolve(
            tree,
            &mut Opener::Marks(&mut marks),
            id,
            true,
            0,
            &mut HashMap::new(),
        )?;
        if marks.nested {
            return Ok(None);
        }
        (data, refs, Some(marks))
    } else {
        let (data, refs, _, _) = resolve(
            tree,
            &mut Opener::Keys(keys),
            id,
            false,
            0,
            &mut HashMap::new(),
        )?;
        (data, refs, None)
    };
    let document = doc.document(data, refs, false);
    let documents: Arc<[Uuid]> = super::shown_documents([&document]).into();
    let text = serde_json::to_string(&document)
        .map_err(|e| StoreError::Corrupt(format!("an answer could not be written: {e}")))?;
    match marks {
        Some(marks) => marks.split(&text, documents).map(Some),
        None => Ok(Some(Prepared {
            bytes: text.len(),
            texts: vec![Bytes::from(text)],
            slots: Vec::new(),
            sealed: Vec::new(),
            documents,
        })),
    }
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
