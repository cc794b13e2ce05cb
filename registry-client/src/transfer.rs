//! Moving blocks between registries: a snapshot of every block type, schema and document of
//! one server (secrets in clear, anonymous documents included), and its restoration into
//! another, which keeps what is already there.

use std::collections::HashMap;

use block_types::model::{
    BlockDocument, BlockDocumentCreate, BlockDocumentFilter, BlockDocumentFilterBody,
    BlockDocumentSort, BlockSchema, BlockSchemaCreate, BlockSchemaFilterBody, BlockType,
    BlockTypeCreate,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::{Client, Error};

/// A document as a snapshot holds it: its own data, each reference a `$ref` to the source's
/// id of the referenced document. `Debug` shows the field names of its data only.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedDocument {
    /// Its id on the source.
    pub id: Uuid,
    /// Its name (none for an anonymous document).
    pub name: Option<String>,
    /// Whether it is anonymous (only reachable through a document that references it).
    pub is_anonymous: bool,
    /// Its type.
    pub block_type_slug: String,
    /// Its schema, by checksum and version.
    pub block_schema_checksum: String,
    /// See `block_schema_checksum`.
    pub block_schema_version: String,
    /// Its own data, secrets in clear.
    pub data: Map<String, Value>,
}

impl std::fmt::Debug for ExportedDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportedDocument")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("block_type_slug", &self.block_type_slug)
            .field("fields", &self.data.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl ExportedDocument {
    /// The document `doc` as read with its references resolved.
    pub fn of(doc: &BlockDocument) -> Self {
        let mut data = doc.data.clone();
        for (field, reference) in &doc.block_document_references {
            data.insert(
                field.clone(),
                json!({"$ref": {"block_document_id": reference.block_document.id}}),
            );
        }
        let schema = doc.block_schema.as_ref();
        Self {
            id: doc.id,
            name: doc.name.clone(),
            is_anonymous: doc.is_anonymous,
            block_type_slug: doc
                .block_type
                .as_ref()
                .map(|t| t.slug.clone())
                .unwrap_or_default(),
            block_schema_checksum: schema.map(|s| s.checksum.clone()).unwrap_or_default(),
            block_schema_version: schema.map(|s| s.version.clone()).unwrap_or_default(),
            data,
        }
    }

    /// The source ids of the documents it references.
    pub fn references(&self) -> Vec<Uuid> {
        self.data
            .values()
            .filter_map(|v| v.pointer("/$ref/block_document_id"))
            .filter_map(|id| id.as_str().and_then(|id| Uuid::parse_str(id).ok()))
            .collect()
    }

    fn label(&self) -> String {
        match (&self.name, self.is_anonymous) {
            (Some(name), false) => format!("{}/{name}", self.block_type_slug),
            _ => format!("an anonymous {} block", self.block_type_slug),
        }
    }
}

/// Every block type, schema and document of a registry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The block types.
    pub block_types: Vec<BlockType>,
    /// The schemas of those types.
    pub block_schemas: Vec<BlockSchema>,
    /// The documents, anonymous ones included.
    pub documents: Vec<ExportedDocument>,
}

/// What [`Client::restore`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Restored {
    /// Documents created.
    pub created: usize,
    /// Named documents that were already there, left as they are.
    pub kept: usize,
}

/// The documents of a snapshot in an order that creates every referenced document before
/// the documents referencing it, or an error when references form a cycle or point outside
/// the snapshot (found before any document is created). `known`: source ids already
/// present on the target.
fn creation_order(
    mut pending: Vec<ExportedDocument>,
    known: impl IntoIterator<Item = Uuid>,
) -> Result<Vec<ExportedDocument>, Error> {
    let mut ready: std::collections::HashSet<Uuid> = known.into_iter().collect();
    let mut order = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let before = pending.len();
        let (now, later): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .partition(|doc| doc.references().iter().all(|id| ready.contains(id)));
        for doc in now {
            ready.insert(doc.id);
            order.push(doc);
        }
        if later.len() == before {
            return Err(Error::Restore {
                doing: "ordering the source's documents".to_owned(),
                reason: "the source's references form a cycle or point outside it".to_owned(),
            });
        }
        pending = later;
    }
    Ok(order)
}

/// `named` and the anonymous documents they reach, directly or through each other, and
/// how many anonymous documents nothing of them reaches (left out).
fn with_reached_anonymous(
    named: Vec<ExportedDocument>,
    mut anonymous: HashMap<Uuid, &ExportedDocument>,
) -> (Vec<ExportedDocument>, usize) {
    let mut pending = named;
    let mut stack: Vec<Uuid> = pending
        .iter()
        .flat_map(ExportedDocument::references)
        .collect();
    while let Some(id) = stack.pop() {
        if let Some(doc) = anonymous.remove(&id) {
            stack.extend(doc.references());
            pending.push(doc.clone());
        }
    }
    (pending, anonymous.len())
}

/// `data` with each `$ref` to a source id that `new_ids` maps pointing to the new id.
fn following(data: &Map<String, Value>, new_ids: &HashMap<Uuid, Uuid>) -> Map<String, Value> {
    let mut data = data.clone();
    for value in data.values_mut() {
        let old = value
            .pointer("/$ref/block_document_id")
            .and_then(Value::as_str)
            .and_then(|id| Uuid::parse_str(id).ok());
        if let Some(new) = old.and_then(|old| new_ids.get(&old)) {
            *value = json!({"$ref": {"block_document_id": new}});
        }
    }
    data
}

impl Client {
    /// Every block type, schema and document of this client's server, secrets in clear
    /// (needs `read-secrets`).
    pub async fn snapshot(&self) -> Result<Snapshot, Error> {
        let block_types = self.block_types().await?;
        let block_schemas = self
            .all_pages("block_schemas/filter", &BlockSchemaFilterBody::default())
            .await?;
        let every_document = BlockDocumentFilterBody {
            block_documents: Some(BlockDocumentFilter {
                is_anonymous: None,
                ..BlockDocumentFilter::default()
            }),
            include_secrets: Some(true),
            // Prefect's default, sent as it: its filter route does not take a null sort.
            sort: Some(BlockDocumentSort::NameAsc),
            ..BlockDocumentFilterBody::default()
        };
        let documents = self
            .block_documents(&every_document)
            .await?
            .iter()
            .map(ExportedDocument::of)
            .collect();
        Ok(Snapshot {
            block_types,
            block_schemas,
            documents,
        })
    }

    /// Copies a snapshot into this client's server: types that exist (by slug) are kept,
    /// schemas are registered (found again by checksum), a named document that exists is
    /// kept, and the others are created children first, their references following the
    /// new ids. An anonymous document is created only when a document created now
    /// references it, so restoring twice creates nothing the second time. `progress` is
    /// called with how many documents were handled since its last call.
    pub async fn restore(
        &self,
        snapshot: &Snapshot,
        mut progress: impl FnMut(u64),
    ) -> Result<Restored, Error> {
        let mut type_ids: HashMap<Uuid, Uuid> = HashMap::new();
        for ty in &snapshot.block_types {
            let id = match self.block_type(&ty.slug).await {
                Ok(found) => found.id,
                Err(Error::Http { status: 404, .. }) => {
                    self.create_block_type(&BlockTypeCreate::from(ty)).await?.id
                }
                Err(e) => return Err(e),
            };
            type_ids.insert(ty.id, id);
        }
        let mut schema_ids: HashMap<(String, String), (Uuid, Uuid)> = HashMap::new();
        for schema in &snapshot.block_schemas {
            let Some(type_id) = type_ids.get(&schema.block_type_id) else {
                continue;
            };
            let create = BlockSchemaCreate {
                fields: schema.fields.as_object().cloned().unwrap_or_default(),
                block_type_id: *type_id,
                capabilities: schema.capabilities.clone(),
                version: schema.version.clone(),
            };
            let created = self.create_block_schema(&create).await?;
            schema_ids.insert(
                (schema.checksum.clone(), schema.version.clone()),
                (created.id, *type_id),
            );
        }

        let mut new_ids: HashMap<Uuid, Uuid> = HashMap::new();
        let mut restored = Restored::default();
        let mut anonymous: HashMap<Uuid, &ExportedDocument> = HashMap::new();
        let mut named = Vec::new();
        for doc in &snapshot.documents {
            if doc.is_anonymous {
                anonymous.insert(doc.id, doc);
                continue;
            }
            let name = doc.name.as_deref().unwrap_or_default();
            match self.block_document_tagged(&doc.block_type_slug, name).await {
                Ok((found, _)) => {
                    new_ids.insert(doc.id, found.id);
                    restored.kept += 1;
                    progress(1);
                }
                Err(Error::Http { status: 404, .. }) => named.push(doc.clone()),
                Err(e) => return Err(e),
            }
        }
        // The anonymous documents the documents to create reach; the others are passed over.
        let (pending, passed_over) = with_reached_anonymous(named, anonymous);
        progress(passed_over as u64);
        for doc in creation_order(pending, new_ids.keys().copied())? {
            let label = doc.label();
            let (schema_id, type_id) = schema_ids
                .get(&(
                    doc.block_schema_checksum.clone(),
                    doc.block_schema_version.clone(),
                ))
                .copied()
                .ok_or_else(|| Error::Restore {
                    doing: format!("importing {label} into this registry"),
                    reason: format!(
                        "no schema {} for {} in the source",
                        doc.block_schema_checksum, doc.block_type_slug
                    ),
                })?;
            let data = following(&doc.data, &new_ids);
            let create = BlockDocumentCreate {
                name: if doc.is_anonymous {
                    None
                } else {
                    doc.name.clone()
                },
                data,
                block_schema_id: schema_id,
                block_type_id: type_id,
                is_anonymous: doc.is_anonymous,
            };
            let made = self
                .create_block_document(&create)
                .await
                .map_err(|e| Error::Restore {
                    doing: format!("importing {label} into this registry"),
                    reason: e.to_string(),
                })?;
            new_ids.insert(doc.id, made.id);
            restored.created += 1;
            progress(1);
        }
        Ok(restored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: u128, refs: &[u128]) -> ExportedDocument {
        ExportedDocument {
            id: Uuid::from_u128(id),
            name: Some(format!("d{id}")),
            is_anonymous: false,
            block_type_slug: "json".into(),
            block_schema_checksum: "sha256:x".into(),
            block_schema_version: "1".into(),
            data: refs
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    (
                        format!("f{i}"),
                        json!({"$ref": {"block_document_id": Uuid::from_u128(*r)}}),
                    )
                })
                .chain([("value".to_owned(), json!("canary-transfer-3b1f"))])
                .collect(),
        }
    }

    #[test]
    fn references_come_before_the_documents_that_use_them() {
        let order = creation_order(vec![doc(1, &[2, 3]), doc(3, &[2]), doc(2, &[])], [])
            .unwrap()
            .iter()
            .map(|d| d.id.as_u128())
            .collect::<Vec<_>>();
        assert_eq!(order, [2, 3, 1]);
    }

    #[test]
    fn a_reference_to_a_document_already_there_is_satisfied() {
        let order = creation_order(vec![doc(1, &[9])], [Uuid::from_u128(9)]).unwrap();
        assert_eq!(order.len(), 1);
    }

    #[test]
    fn cycles_and_dangling_references_are_refused() {
        let cycle = creation_order(vec![doc(1, &[2]), doc(2, &[1])], []).unwrap_err();
        assert!(cycle.to_string().contains("cycle"), "{cycle}");
        let dangling = creation_order(vec![doc(1, &[7])], []).unwrap_err();
        assert!(dangling.to_string().contains("point outside"), "{dangling}");
    }

    #[test]
    fn an_exported_document_holds_its_references_as_refs_to_source_ids() {
        let parent = Uuid::from_u128(1);
        let child = Uuid::from_u128(2);
        let block_type: BlockType = serde_json::from_value(json!({
            "id": Uuid::from_u128(10), "created": "2026-01-01T00:00:00.000000Z",
            "updated": "2026-01-01T00:00:00.000000Z", "name": "GCS Bucket", "slug": "gcs-bucket",
            "logo_url": null, "documentation_url": null, "description": null,
            "code_example": null, "is_protected": false,
        }))
        .unwrap();
        let read: BlockDocument = serde_json::from_value(json!({
            "id": parent, "created": "2026-01-01T00:00:00.000000Z",
            "updated": "2026-01-01T00:00:00.000000Z", "name": "zoom-gcs",
            "data": {"bucket": "b", "gcp_credentials": {"project": "resolved"}},
            "block_schema_id": Uuid::from_u128(11),
            "block_schema": {"id": Uuid::from_u128(11), "created": "2026-01-01T00:00:00.000000Z",
                "updated": "2026-01-01T00:00:00.000000Z", "checksum": "sha256:abc",
                "fields": {}, "block_type_id": Uuid::from_u128(10), "block_type": null,
                "capabilities": [], "version": "3.0.0"},
            "block_type_id": Uuid::from_u128(10), "block_type": block_type,
            "block_document_references": {"gcp_credentials": {"block_document": {
                "id": child, "name": "zoom-gcp-creds", "block_type": block_type,
                "is_anonymous": false, "block_document_references": {}}}},
            "is_anonymous": false,
        }))
        .unwrap();
        let exported = ExportedDocument::of(&read);
        assert_eq!(exported.id, parent);
        assert_eq!(exported.label(), "gcs-bucket/zoom-gcs");
        assert_eq!(
            (
                exported.block_schema_checksum.as_str(),
                exported.block_schema_version.as_str()
            ),
            ("sha256:abc", "3.0.0")
        );
        assert_eq!(exported.data["bucket"], "b");
        assert_eq!(
            exported.data["gcp_credentials"],
            json!({"$ref": {"block_document_id": child}})
        );
        assert_eq!(exported.references(), [child]);
        // It is kept and read back as the same JSON.
        let text = serde_json::to_string(&exported).unwrap();
        assert_eq!(
            serde_json::from_str::<ExportedDocument>(&text).unwrap(),
            exported
        );
    }

    #[test]
    fn a_restore_takes_only_the_anonymous_documents_its_creations_reach() {
        let anonymous = |id: u128, refs: &[u128]| ExportedDocument {
            name: None,
            is_anonymous: true,
            ..doc(id, refs)
        };
        // 1 → 5 → 6 (a chain of anonymous ones); 7 is reached by nothing created.
        let (a5, a6, a7) = (anonymous(5, &[6]), anonymous(6, &[]), anonymous(7, &[]));
        let pool: HashMap<Uuid, &ExportedDocument> =
            [&a5, &a6, &a7].into_iter().map(|d| (d.id, d)).collect();
        let (pending, passed_over) = with_reached_anonymous(vec![doc(1, &[5]), doc(2, &[])], pool);
        let mut ids: Vec<u128> = pending.iter().map(|d| d.id.as_u128()).collect();
        ids.sort_unstable();
        assert_eq!(ids, [1, 2, 5, 6]);
        assert_eq!(passed_over, 1);
        assert_eq!(a7.label(), "an anonymous json block");
        // Nothing named to create: no anonymous document is either.
        let pool: HashMap<Uuid, &ExportedDocument> = [(a5.id, &a5)].into_iter().collect();
        assert_eq!(with_reached_anonymous(Vec::new(), pool), (Vec::new(), 1));
    }

    #[test]
    fn references_follow_the_new_ids_and_nothing_else_changes() {
        let source = doc(1, &[2, 3]);
        let new_ids: HashMap<Uuid, Uuid> = [(Uuid::from_u128(2), Uuid::from_u128(20))].into();
        let data = following(&source.data, &new_ids);
        assert_eq!(
            data["f0"],
            json!({"$ref": {"block_document_id": Uuid::from_u128(20)}})
        );
        // Not mapped (not created here): left pointing at the source id.
        assert_eq!(data["f1"], source.data["f1"]);
        assert_eq!(data["value"], "canary-transfer-3b1f");
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            source.data.keys().collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_exported_documents_debug_shows_field_names_only() {
        let d = doc(1, &[2]);
        let debug = format!("{d:?}");
        assert!(!debug.contains("canary"), "{debug}");
        assert!(debug.contains("value"), "{debug}");
        assert_eq!(d.references(), [Uuid::from_u128(2)]);
    }
}
