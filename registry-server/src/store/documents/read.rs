//! Resolved reads: the tree query, the read cache, secrets opened or masked, ETags.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use block_types::model::{
    BlockDocument, BlockDocumentReference, BlockSchema, BlockType, ReferencedBlockDocument,
};
use block_types::references;
use block_types::secret_fields::obfuscate;
use serde_json::{Map, Value};
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::Answer;
use super::CachedTree;
use super::MAX_DEPTH;
use super::MAX_RESOLVED_BYTES;
use super::MAX_RESPONSE_BYTES;
use super::MAX_TREE_DOCUMENTS;
use super::TREE_COLUMNS;
use super::Tagged;
use super::Tree;
use super::TreeDoc;
use super::mask_paths;
use super::not_found;
use super::tree_etag;
use super::tree_too_large;
use super::{Backend, Result, Store, StoreError, json_col, parse_uuid, uuid_col};
use crate::crypto::{DataKey, open_secrets};
use crate::store::sql::Sql;
use crate::store::tree_cache::{self, TreeKey};

impl Store {
    /// A document by id with its references resolved, in one query.
    pub async fn read_block_document(
        &self,
        id: Uuid,
        include_secrets: bool,
    ) -> Result<BlockDocument> {
        Ok(self
            .read_block_document_tagged(id, include_secrets)
            .await?
            .document)
    }

    /// [`Store::read_block_document`] with the tree's entity tag and the root's version.
    pub async fn read_block_document_tagged(
        &self,
        id: Uuid,
        include_secrets: bool,
    ) -> Result<Tagged> {
        self.read_one(
            TreeKey::Id(id),
            root_by_id(id),
            |_| Some(id),
            include_secrets,
        )
        .await
    }

    /// A document by type slug and name with its references resolved, in one query.
    pub async fn read_block_document_by_name(
        &self,
        slug: &str,
        name: &str,
        include_secrets: bool,
    ) -> Result<BlockDocument> {
        Ok(self
            .read_block_document_by_name_tagged(slug, name, include_secrets)
            .await?
            .document)
    }

    /// [`Store::read_block_document_by_name`] with the tree's entity tag and the root's
    /// version.
    pub async fn read_block_document_by_name_tagged(
        &self,
        slug: &str,
        name: &str,
        include_secrets: bool,
    ) -> Result<Tagged> {
        self.read_one(
            TreeKey::Name(slug.into(), name.into()),
            root_by_name(slug, name),
            |tree| pick_by_name(tree, slug, name),
            include_secrets,
        )
        .await
    }

    /// The entity tag and version of document `id`, from the read cache or one tree query,
    /// without resolving the tree: what a conditional write (`If-Match`) compares.
    pub async fn document_tag(&self, id: Uuid) -> Result<(String, i64)> {
        let entry = self
            .tree_entry(
                &TreeKey::Id(id),
                &root_by_id(id),
                &|tree: &Tree| tree.docs.contains_key(&id).then_some(id),
                true,
            )
            .await?;
        // A missing document's empty tree may be kept by a read of it: not found either way.
        let cached = &*entry.tree;
        let root = cached.tree.docs.get(&cached.root).ok_or_else(not_found)?;
        Ok((cached.etag.clone(), root.version))
    }

    /// The cached tree under `key` (when `use_cache`), else the tree selected by `root`,
    /// loaded, tagged and kept; `pick` finds its root document.
    async fn tree_entry(
        &self,
        key: &TreeKey,
        root: &impl Fn(&mut Sql),
        pick: &impl Fn(&Tree) -> Option<Uuid>,
        use_cache: bool,
    ) -> Result<tree_cache::Entry<CachedTree>> {
        if use_cache && let Some(entry) = self.trees.get(key) {
            return Ok(entry);
        }
        let generation = self.trees.generation();
        let tree = self.load_tree(root).await?;
        let Some(id) = pick(&tree) else {
            return Err(not_found());
        };
        let entry = tree_cache::Entry {
            documents: tree.docs.keys().copied().collect(),
            bytes: tree
                .docs
                .values()
                .map(|d| d.plain_bytes + d.sealed_bytes + 512)
                .sum(),
            tree: Arc::new(CachedTree {
                etag: tree_etag(&tree, id),
                root: id,
                tree,
                answers: Default::default(),
            }),
        };
        self.trees.insert(key.clone(), entry.clone(), generation);
        Ok(entry)
    }

    /// Loads the tree selected by `root` and resolves the document `pick` finds in it. A
    /// read that raced a re-encryption (its version moved to a new key and the old key was
    /// destroyed between the query and the decryption) is read again once.
    pub(super) async fn read_one(
        &self,
        key: TreeKey,
        root: impl Fn(&mut Sql),
        pick: impl Fn(&Tree) -> Option<Uuid>,
        include_secrets: bool,
    ) -> Result<Tagged> {
        let mut retried = false;
        loop {
            // After a failure to open a cached tree, read it afresh (its version may have
            // been re-encrypted and the old key destroyed since it was kept).
            let entry = self.tree_entry(&key, &root, &pick, !retried).await?;
            let cached = &*entry.tree;
            let id = cached.root;
            match self.resolve_root(&cached.tree, id, include_secrets).await {
                Err(StoreError::Crypto(_)) if !retried => retried = true,
                Err(StoreError::Crypto(error)) => return Err(undecryptable(id, &error)),
                other => {
                    let document = other?.ok_or_else(not_found)?;
                    let version = cached.tree.docs.get(&id).map_or(0, |d| d.version);
                    return Ok(Tagged {
                        etag: cached.etag.clone(),
                        version,
                        document,
                    });
                }
            }
        }
    }

    /// The answer to a read of document `id` (see [`Store::read_block_document_tagged`])
    /// as JSON text, kept pre-serialized with the cached tree: what the API sends to a
    /// caller whose token is not limited by grants.
    pub async fn read_answer(&self, id: Uuid, include_secrets: bool) -> Result<Answer> {
        self.answer_one(
            TreeKey::Id(id),
            root_by_id(id),
            |_| Some(id),
            include_secrets,
        )
        .await
    }

    /// [`Store::read_answer`] by type slug and name.
    pub async fn read_answer_by_name(
        &self,
        slug: &str,
        name: &str,
        include_secrets: bool,
    ) -> Result<Answer> {
        self.answer_one(
            TreeKey::Name(slug.into(), name.into()),
            root_by_name(slug, name),
            |tree| pick_by_name(tree, slug, name),
            include_secrets,
        )
        .await
    }

    /// [`Store::read_one`] as a pre-serialized answer.
    async fn answer_one(
        &self,
        key: TreeKey,
        root: impl Fn(&mut Sql),
        pick: impl Fn(&Tree) -> Option<Uuid>,
        include_secrets: bool,
    ) -> Result<Answer> {
        let mut retried = false;
        loop {
            let entry = self.tree_entry(&key, &root, &pick, !retried).await?;
            match self.answer_of(&key, &entry, include_secrets).await {
                Err(StoreError::Crypto(_)) if !retried => retried = true,
                Err(StoreError::Crypto(error)) => {
                    return Err(undecryptable(entry.tree.root, &error));
                }
                other => return other,
            }
        }
    }

    /// The current version of a document.
    pub async fn document_version(&self, id: Uuid) -> Result<i64> {
        self.count_query();
        sqlx::query_scalar("select version from block_document where id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(not_found)
    }

    /// Loads every document reachable from the roots selected by `root` (a condition on
    /// `block_document d` with `$N` placeholders), with data, schema and type, in one query.
    pub(super) async fn load_tree(&self, root: impl Fn(&mut Sql)) -> Result<Tree> {
        let sql = self.tree_sql(root);
        self.count_query();
        let rows = sql.query().fetch_all(&self.read).await?;
        self.tree_from_rows(&rows).await
    }

    /// The query of [`Store::load_tree`].
    pub(crate) fn tree_sql(&self, root: impl Fn(&mut Sql)) -> Sql {
        let mut sql = Sql::new(
            "with recursive tree(id, parent_id, ref_name, depth) as (\
             select d.id, cast(null as text), cast(null as text), 0 from block_document d where ",
        );
        root(&mut sql);
        // `union` (not `union all`) drops a row reached again at the same depth over the
        // same edge, so shared children do not multiply along every path; the depth bound
        // keeps the recursion (and the planner's estimate) small.
        //
        // Each step must look its rows up by key, whatever the planner believes of the
        // tables' sizes. SQLite's `cross join` keeps the written order (its planner may
        // otherwise scan a table whole and probe the tree through an automatic index).
        // PostgreSQL gets each step as a lateral subquery that `offset 0` keeps from being
        // flattened: a generic plan made while a table's statistics were still those of an
        // empty one (a new store filling up before its first analyze) otherwise hashes
        // every document and version for each read, and each create reads its document back.
        match self.backend {
            Backend::Sqlite => {
                sql.push(
                    " union select r.reference_block_document_id, r.parent_block_document_id, r.name, tree.depth + 1 \
                     from block_document_reference r join tree on r.parent_block_document_id = tree.id \
                     where tree.depth < ",
                );
                sql.bind_int(MAX_DEPTH);
                sql.push(&format!(
                    ") select {TREE_COLUMNS} from tree cross join block_document d on d.id = tree.id \
                     join block_document_version v on v.block_document_id = d.id and v.version = d.version \
                     join block_type t on t.id = d.block_type_id"
                ));
            }
            Backend::Postgres => {
                sql.push(
                    " union select r.reference_block_document_id, r.parent_block_document_id, r.name, tree.depth + 1 \
                     from tree cross join lateral (select * from block_document_reference r \
                     where r.parent_block_document_id = tree.id offset 0) r where tree.depth < ",
                );
                sql.bind_int(MAX_DEPTH);
                sql.push(&format!(
                    ") select x.* from tree cross join lateral (select {TREE_COLUMNS} from block_document d \
                     join block_document_version v on v.block_document_id = d.id and v.version = d.version \
                     join block_type t on t.id = d.block_type_id where d.id = tree.id offset 0) x"
                ));
            }
        }
        sql
    }

    /// A schema from the in-memory cache. Schemas never change; the embedded type can (its
    /// metadata), so an entry is used only while the type's `updated` matches the one the
    /// tree query saw, and is fetched again otherwise.
    pub(super) async fn cached_schema(
        &self,
        id: Uuid,
        type_updated: i64,
    ) -> Result<Arc<BlockSchema>> {
        if let Some(schema) = self.read_lock(&self.schemas).get(&id)
            && schema
                .block_type
                .as_ref()
                .is_some_and(|t| t.updated.timestamp_micros() == type_updated)
        {
            return Ok(schema.clone());
        }
        let schema = Arc::new(self.read_block_schema(id).await?);
        self.write_lock(&self.schemas).insert(id, schema.clone());
        Ok(schema)
    }

    pub(super) async fn tree_from_rows(&self, rows: &[AnyRow]) -> Result<Tree> {
        let mut docs = HashMap::new();
        let mut edges: HashMap<Uuid, Vec<(String, Uuid)>> = HashMap::new();
        for row in rows {
            let id = uuid_col(row, "d_id")?;
            if let (Some(parent), Some(field)) = (
                row.try_get::<Option<String>, _>("parent_id")?,
                row.try_get::<Option<String>, _>("ref_name")?,
            ) {
                let list = edges.entry(parse_uuid(&parent)?).or_default();
                if !list.iter().any(|(f, _)| *f == field) {
                    list.push((field, id));
                }
            }
            if docs.contains_key(&id) {
                continue;
            }
            docs.insert(
                id,
                TreeDoc {
                    id,
                    version: row.try_get("d_version")?,
                    type_updated: row.try_get("t_updated")?,
                    created: row.try_get("d_created")?,
                    updated: row.try_get("d_updated")?,
                    name: row.try_get("d_name")?,
                    is_anonymous: row.try_get::<i64, _>("d_is_anonymous")? != 0,
                    block_type_name: row.try_get("d_block_type_name")?,
                    plain_bytes: row.try_get::<String, _>("v_data")?.len(),
                    sealed_bytes: row.try_get::<String, _>("v_secrets")?.len(),
                    data: json_col(row, "v_data")?,
                    secrets: json_col(row, "v_secrets")?,
                    schema: self
                        .cached_schema(
                            uuid_col(row, "d_block_schema_id")?,
                            row.try_get("t_updated")?,
                        )
                        .await?,
                },
            );
        }
        for list in edges.values_mut() {
            list.sort_by(|a, b| a.0.cmp(&b.0));
        }
        Ok(Tree { docs, edges })
    }

    /// The data keys that open the secrets of every document of `tree`. With
    /// `skip_missing`, a key that cannot be had is left out (the documents needing it fail
    /// to open on their own) instead of failing them all.
    pub(super) async fn keys_for(
        &self,
        tree: &Tree,
        skip_missing: bool,
    ) -> Result<HashMap<Uuid, Arc<DataKey>>> {
        let mut keys = HashMap::new();
        let mut missing = HashSet::new();
        for doc in tree.docs.values() {
            for field in &doc.secrets {
                let id = match crate::crypto::sealed_key_id(&field.ciphertext) {
                    Ok(id) => id,
                    Err(_) if skip_missing => continue,
                    Err(e) => return Err(e.into()),
                };
                if keys.contains_key(&id) || missing.contains(&id) {
                    continue;
                }
                let key = match self.cached_key(id) {
                    Some(key) => Ok(key),
                    // A key another replica created since this one loaded its keys.
                    None => {
                        let mut tx = self.read.begin().await?;
                        self.key(&mut tx, id).await
                    }
                };
                match key {
                    Ok(key) => {
                        keys.insert(id, key);
                    }
                    Err(StoreError::Crypto(_)) if skip_missing => {
                        missing.insert(id);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(keys)
    }

    pub(super) async fn resolve_root(
        &self,
        tree: &Tree,
        id: Uuid,
        include_secrets: bool,
    ) -> Result<Option<BlockDocument>> {
        let keys = self.keys_for(tree, false).await?;
        self.resolve_root_with(tree, &keys, id, include_secrets)
    }

    pub(super) fn resolve_root_with(
        &self,
        tree: &Tree,
        keys: &HashMap<Uuid, Arc<DataKey>>,
        id: Uuid,
        include_secrets: bool,
    ) -> Result<Option<BlockDocument>> {
        let Some(doc) = tree.docs.get(&id) else {
            return Ok(None);
        };
        let (data, refs, _, _) = resolve(
            tree,
            &mut Opener::Keys(keys),
            id,
            include_secrets,
            0,
            &mut HashMap::new(),
        )?;
        Ok(Some(doc.document(data, refs, false)))
    }
}

/// The tree query's root condition: the document `id`.
fn root_by_id(id: Uuid) -> impl Fn(&mut Sql) {
    move |sql| {
        sql.push("d.id = ").bind_text(id.to_string());
    }
}

/// The tree query's root condition: the document of type `slug` named `name`.
fn root_by_name<'a>(slug: &'a str, name: &'a str) -> impl Fn(&mut Sql) + 'a {
    move |sql| {
        sql.push("d.block_type_id = (select id from block_type where slug = ")
            .bind_text(slug)
            .push(") and d.name = ")
            .bind_text(name);
    }
}

/// The document of type `slug` named `name` in `tree`.
fn pick_by_name(tree: &Tree, slug: &str, name: &str) -> Option<Uuid> {
    tree.docs
        .values()
        .find(|d| d.name == name && d.schema.block_type.as_ref().is_some_and(|t| t.slug == slug))
        .map(|d| d.id)
}

/// The error of a read whose secrets cannot be opened (after reading the tree afresh).
fn undecryptable(id: Uuid, error: &crate::crypto::CryptoError) -> StoreError {
    tracing::error!(document_id = %id, %error, "a block document cannot be decrypted");
    StoreError::Unreadable(format!(
        "block document {id} (or a document it references) cannot be decrypted: its data key is missing or its stored ciphertext was altered. Nothing was changed; an admin can overwrite it or restore it from a backup"
    ))
}

/// What a resolution does with sealed values.
pub(super) enum Opener<'a> {
    /// Opens them with these keys.
    Keys(&'a HashMap<Uuid, Arc<DataKey>>),
    /// Marks their places, for an answer kept pre-serialized (see [`super::prepared`]).
    Marks(&'a mut super::prepared::Marks),
}

/// A resolved document: its data, its references, how many documents its expanded tree
/// holds, and about how many bytes.
pub(super) type Resolved = (
    Map<String, Value>,
    BTreeMap<String, BlockDocumentReference>,
    usize,
    usize,
);

/// A listed document whose secrets cannot be opened: its plain data, each sealed value as
/// `"********"` (even for a caller allowed to see secrets), references as `$ref`s, and the
/// `unreadable` flag.
pub(super) fn unreadable_document(tree: &Tree, id: Uuid) -> Option<BlockDocument> {
    let doc = tree.docs.get(&id)?;
    let mut data = doc.data.clone();
    for field in &doc.secrets {
        let Some((last, parents)) = field.path.split_last() else {
            continue;
        };
        let parent = if parents.is_empty() {
            Some(&mut data)
        } else {
            block_types::secret_fields::get_path_mut(&mut data, parents)
                .and_then(Value::as_object_mut)
        };
        if let Some(parent) = parent {
            parent.insert(
                last.clone(),
                Value::String(block_types::OBFUSCATED.to_owned()),
            );
        }
    }
    for (field, child) in tree.edges.get(&id).map(Vec::as_slice).unwrap_or_default() {
        data.insert(field.clone(), references::reference_value(*child));
    }
    Some(doc.document(data, BTreeMap::new(), true))
}

/// About how many bytes document `id` expands to when resolved (saturating past the caps,
/// so a hostile graph costs no more than counting).
pub(super) fn resolved_bytes(
    tree: &Tree,
    id: Uuid,
    include_secrets: bool,
    depth: i64,
    memo: &mut HashMap<Uuid, usize>,
) -> usize {
    if let Some(done) = memo.get(&id) {
        return *done;
    }
    let own = tree.docs.get(&id).map_or(0, |d| d.cost(include_secrets));
    let mut bytes = own;
    if depth < MAX_DEPTH {
        for (_, child) in tree.edges.get(&id).map(Vec::as_slice).unwrap_or_default() {
            bytes = bytes.saturating_add(resolved_bytes(
                tree,
                *child,
                include_secrets,
                depth + 1,
                memo,
            ));
            if bytes > MAX_RESPONSE_BYTES {
                break;
            }
        }
    }
    memo.insert(id, bytes);
    bytes
}

/// A document's data with its secrets opened (or masked) and its references replaced by
/// the referenced documents' resolved data. Each document is resolved once (`memo`), and a
/// tree that would expand beyond [`MAX_TREE_DOCUMENTS`] documents is refused rather than
/// built.
pub(super) fn resolve(
    tree: &Tree,
    secrets: &mut Opener<'_>,
    id: Uuid,
    include_secrets: bool,
    depth: i64,
    memo: &mut HashMap<Uuid, Resolved>,
) -> Result<Resolved> {
    if let Some(done) = memo.get(&id) {
        return Ok(done.clone());
    }
    let doc = tree.docs.get(&id).ok_or_else(not_found)?;
    let mut data = doc.data.clone();
    if !doc.secrets.is_empty() {
        match secrets {
            Opener::Keys(keys) => open_secrets(&mut data, &doc.secrets, id, |key_id| {
                keys.get(&key_id).map(|k| &**k)
            })?,
            Opener::Marks(marks) => marks.place(&mut data, doc),
        }
    }
    let mut refs = BTreeMap::new();
    let mut size = 1usize;
    let mut bytes = doc.cost(include_secrets);
    if depth < MAX_DEPTH {
        for (field, child_id) in tree.edges.get(&id).map(Vec::as_slice).unwrap_or_default() {
            let Some(child) = tree.docs.get(child_id) else {
                continue;
            };
            let (child_data, child_refs, child_size, child_bytes) =
                resolve(tree, secrets, *child_id, include_secrets, depth + 1, memo)?;
            size += child_size;
            if size > MAX_TREE_DOCUMENTS {
                return Err(tree_too_large());
            }
            bytes += child_bytes;
            if bytes > MAX_RESOLVED_BYTES {
                return Err(StoreError::TooLarge(format!(
                    "the resolved reference tree would hold more than {} MiB of data",
                    MAX_RESOLVED_BYTES >> 20
                )));
            }
            data.insert(field.clone(), Value::Object(child_data));
            let block_type: BlockType = child
                .schema
                .block_type
                .clone()
                .ok_or_else(|| StoreError::Corrupt("schema without type".into()))?;
            refs.insert(
                field.clone(),
                BlockDocumentReference {
                    block_document: ReferencedBlockDocument {
                        id: *child_id,
                        name: Some(child.name.clone()),
                        block_type,
                        is_anonymous: child.is_anonymous,
                        block_document_references: child_refs,
                    },
                },
            );
        }
    }
    if !include_secrets {
        let sealed = doc.secrets.iter().map(|f| f.path.clone());
        obfuscate(&mut data, &mask_paths(&doc.schema.fields, sealed));
    }
    let resolved = (data, refs, size, bytes);
    memo.insert(id, resolved.clone());
    Ok(resolved)
}
