//! Block documents: create, update (merge, secret echoes, schema moves, optimistic
//! concurrency), delete, resolved reads, filters, history and rollback.

mod history;
mod list;
mod prepared;

pub use prepared::Answer;
mod create;
mod read;
mod update;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use block_types::model::{BlockDocument, BlockDocumentReference, BlockSchema};
use block_types::secret_fields::{SecretPath, secret_fields_of};
use block_types::{FieldError, references};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{
    Backend, Result, Rights, Store, StoreError, json_col, now_micros, parse_uuid, to_json, to_time,
    uuid_col,
};
use crate::crypto::SealedField;

/// How deep a reference tree is followed on read (as Prefect).
const MAX_DEPTH: i64 = 50;
/// What the tree query selects of each document of a tree.
const TREE_COLUMNS: &str = "tree.parent_id, tree.ref_name, d.id as d_id, d.created as d_created, d.updated as d_updated, \
     d.name as d_name, d.version as d_version, d.is_anonymous as d_is_anonymous, d.block_type_name as d_block_type_name, \
     v.data as v_data, v.secrets as v_secrets, d.block_schema_id as d_block_schema_id, \
     t.updated as t_updated";
/// Documents one [`Store::import_block_documents`] call writes at most.
pub const MAX_IMPORT: usize = 10_000;

/// What a write produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The document.
    pub id: Uuid,
    /// Its version after the write.
    pub version: i64,
    /// Whether anything was written (a merge update without data writes nothing).
    pub changed: bool,
}

/// The documents `documents` show, roots first and each once: each document, then the
/// documents it references, depth first in field order.
pub fn shown_documents<'a>(documents: impl IntoIterator<Item = &'a BlockDocument>) -> Vec<Uuid> {
    fn push(ids: &mut Vec<Uuid>, id: Uuid) {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    fn references(refs: &BTreeMap<String, BlockDocumentReference>, ids: &mut Vec<Uuid>) {
        for reference in refs.values() {
            let document = &reference.block_document;
            push(ids, document.id);
            references(&document.block_document_references, ids);
        }
    }
    let mut ids = Vec::new();
    for document in documents {
        push(&mut ids, document.id);
        references(&document.block_document_references, &mut ids);
    }
    ids
}

/// A resolved document with its entity tag.
#[derive(Debug, Clone)]
pub struct Tagged {
    /// The document, references resolved.
    pub document: BlockDocument,
    /// A strong entity tag (quoted) over the versions of every document in the tree and
    /// their types: it changes when the document or anything it references changes.
    pub etag: String,
    /// The document's own current version.
    pub version: i64,
}

/// The entity tag of the tree under `root`: a digest of (id, version, type change time) of
/// every document reachable from it.
fn tree_etag(tree: &Tree, root: Uuid) -> String {
    use sha2::{Digest as _, Sha256};
    let mut seen = std::collections::BTreeSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if seen.insert(id)
            && let Some(children) = tree.edges.get(&id)
        {
            stack.extend(children.iter().map(|(_, child)| *child));
        }
    }
    let mut hash = Sha256::new();
    hash.update(root.as_bytes());
    for id in seen {
        if let Some(doc) = tree.docs.get(&id) {
            hash.update(id.as_bytes());
            hash.update(doc.version.to_le_bytes());
            hash.update(doc.type_updated.to_le_bytes());
        }
    }
    format!("\"{}\"", &hex::encode(hash.finalize())[..32])
}

/// A document row of a resolved tree.
struct TreeDoc {
    id: Uuid,
    version: i64,
    type_updated: i64,
    created: i64,
    updated: i64,
    name: String,
    is_anonymous: bool,
    block_type_name: Option<String>,
    data: Map<String, Value>,
    secrets: Vec<SealedField>,
    schema: Arc<BlockSchema>,
    /// The stored size of its plain data, in bytes.
    plain_bytes: usize,
    /// The stored size of its sealed secrets, in bytes.
    sealed_bytes: usize,
}

impl TreeDoc {
    /// The document as answered, with `data` and `refs` already resolved.
    fn document(
        &self,
        data: Map<String, Value>,
        refs: BTreeMap<String, BlockDocumentReference>,
        unreadable: bool,
    ) -> BlockDocument {
        BlockDocument {
            id: self.id,
            created: to_time(self.created),
            updated: to_time(self.updated),
            name: Some(self.name.clone()),
            data,
            block_schema_id: self.schema.id,
            block_schema: Some((*self.schema).clone()),
            block_type_id: self.schema.block_type_id,
            block_type_name: self.block_type_name.clone(),
            block_type: self.schema.block_type.clone(),
            block_document_references: refs,
            is_anonymous: self.is_anonymous,
            unreadable,
        }
    }

    /// About how many bytes it adds to an answer: a masked secret costs the mask, so what
    /// a `read` token is refused never depends on a secret's size.
    fn cost(&self, include_secrets: bool) -> usize {
        self.plain_bytes
            + if include_secrets {
                self.sealed_bytes
            } else {
                16 * self.secrets.len()
            }
    }
}

/// The documents and reference edges of one or more trees, from one query.
pub(crate) struct Tree {
    docs: HashMap<Uuid, TreeDoc>,
    /// parent → [(field, child)], in field order.
    edges: HashMap<Uuid, Vec<(String, Uuid)>>,
}

/// A loaded tree as the read cache keeps it: with the document a read named and its
/// entity tag.
pub(crate) struct CachedTree {
    tree: Tree,
    root: Uuid,
    etag: String,
    /// The root's answer kept pre-serialized, masked (`[0]`) and with secrets (`[1]`),
    /// made by the first read that needs it.
    answers: [std::sync::OnceLock<Arc<prepared::Prepared>>; 2],
}

impl std::fmt::Debug for CachedTree {
    /// The root and the documents' ids: never their data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedTree")
            .field("root", &self.root)
            .field("documents", &self.tree.docs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What a version write needs: the plain data (secrets in clear, no references), the
/// references, and the schema.
#[derive(Clone)]
struct NewVersion<'a> {
    data: Map<String, Value>,
    refs: Vec<(String, Uuid)>,
    schema: &'a BlockSchema,
    /// Sealed values of an earlier version this one keeps: they stay sealed whatever the
    /// type's schemas say now, and were bounded when they were written.
    kept: Vec<Vec<String>>,
    /// What the schema's type keeps secret ([`Store::secret_paths`]), when the caller has
    /// it already; else it is read inside the write.
    paths: Option<Vec<SecretPath>>,
    /// The token writing it.
    author: Option<Uuid>,
}

/// A document row about to be inserted with its first version.
#[derive(Clone)]
struct NewDocument {
    id: Uuid,
    name: String,
    is_anonymous: bool,
    type_name: String,
}

/// A stored version, opened: plain data with secrets in clear, references, schema, and
/// where the sealed values sat.
struct OpenedVersion {
    data: Map<String, Value>,
    refs: Vec<(String, Uuid)>,
    schema_id: Uuid,
    sealed: Vec<Vec<String>>,
}

/// The sealed locations of the current version that an update keeps without the writer
/// sending their values: under a top-level field a merge leaves out, or echoed back as
/// `"********"` (at the location, above it, or anywhere below it).
fn surviving_secrets(
    request: &Map<String, Value>,
    merge: bool,
    sealed: &[Vec<String>],
) -> Vec<Vec<String>> {
    fn has_echo(value: &Value) -> bool {
        match value {
            Value::String(s) => s == block_types::OBFUSCATED,
            Value::Object(map) => map.values().any(has_echo),
            Value::Array(items) => items.iter().any(has_echo),
            _ => false,
        }
    }
    sealed
        .iter()
        .filter(|path| {
            let Some(first) = path.first() else {
                return false;
            };
            let Some(mut value) = request.get(first) else {
                return merge;
            };
            for key in &path[1..] {
                if value.as_str() == Some(block_types::OBFUSCATED) {
                    return true;
                }
                match value.get(key) {
                    Some(next) => value = next,
                    // Sent without this part: a replace of the field drops it.
                    None => return false,
                }
            }
            has_echo(value)
        })
        .cloned()
        .collect()
}

/// What a read masks: the schema's secret paths, plus every value that was sealed (a value
/// the type keeps secret beyond this schema's own list stays masked too).
fn mask_paths(fields: &Value, sealed: impl IntoIterator<Item = Vec<String>>) -> Vec<SecretPath> {
    let mut paths = secret_fields_of(fields);
    for segments in sealed {
        let path = SecretPath {
            segments,
            wildcard: false,
        };
        if !paths.iter().any(|p| p.covers(&path)) {
            paths.push(path);
        }
    }
    paths
}

/// Splits `$ref`s out of request data; a malformed one is a bad reference naming its field.
fn split_data_references(
    data: Map<String, Value>,
) -> Result<(Map<String, Value>, references::References)> {
    references::split_references(data).map_err(|e| {
        let field = e.field().to_owned();
        StoreError::BadReference(FieldError::new(format!("data.{field}"), e.to_string()))
    })
}

/// A `block_schema_id` that names no schema is bad input, not a missing resource.
fn unknown_schema_is_invalid(e: StoreError) -> StoreError {
    match e {
        StoreError::NotFound(_) => {
            StoreError::invalid("block_schema_id", "no block schema has this id")
        }
        other => other,
    }
}

/// A conflict when the caller expected another version.
fn check_expected(expected: Option<i64>, actual: i64) -> Result<()> {
    match expected {
        Some(expected) if expected != actual => {
            Err(StoreError::VersionConflict { expected, actual })
        }
        _ => Ok(()),
    }
}

/// An error about the `i`th document of an import, its field named as `documents[i].…`.
fn within_document(i: usize, e: StoreError) -> StoreError {
    let name = |f: FieldError| FieldError::new(format!("documents[{i}].{}", f.field), f.message);
    match e {
        StoreError::Invalid(errors) => StoreError::Invalid(errors.into_iter().map(name).collect()),
        StoreError::BadReference(f) => StoreError::BadReference(name(f)),
        StoreError::AlreadyExists(m) => StoreError::AlreadyExists(format!("documents[{i}]: {m}")),
        StoreError::Cycle(m) => StoreError::Cycle(format!("documents[{i}]: {m}")),
        other => other,
    }
}

fn not_found() -> StoreError {
    StoreError::NotFound("Block document not found".to_owned())
}

/// The most documents one resolved tree may hold (a document counts once per path to it).
const MAX_TREE_DOCUMENTS: usize = 1000;

/// The most secret values (sealed locations) one document may hold.
const MAX_SEALED_VALUES: usize = 64;

/// The most bytes one secret value may take as JSON when it is written.
const MAX_SECRET_BYTES: usize = 256 * 1024;

/// The most bytes of stored data one document may hold (its plain data as JSON, secrets
/// not counted).
const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

/// The most bytes of stored data one resolved tree may expand to.
const MAX_RESOLVED_BYTES: usize = 8 << 20;

/// The most bytes of stored data one listing may expand to.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// A document's data larger than [`MAX_DOCUMENT_BYTES`] is refused.
fn check_document_size(data: &Map<String, Value>) -> Result<()> {
    let bytes = serde_json::to_vec(data)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if bytes > MAX_DOCUMENT_BYTES {
        return Err(StoreError::invalid(
            "data",
            format!(
                "must be at most {} KiB as JSON (references not counted)",
                MAX_DOCUMENT_BYTES >> 10
            ),
        ));
    }
    Ok(())
}

fn tree_too_large() -> StoreError {
    StoreError::invalid(
        "data",
        format!("the resolved reference tree would hold more than {MAX_TREE_DOCUMENTS} documents"),
    )
}
