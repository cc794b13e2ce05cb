//! Saving typed blocks: registration of the type and schema when the server lacks them,
//! nested blocks as `$ref`s (to the documents they were loaded from, or saved first as
//! anonymous documents), and conditional overwrites.

use std::collections::HashMap;
use std::sync::Mutex;

use block_types::model::{BlockDocument, BlockSchema, BlockType};
use block_types::{Block, BlockSpec};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::client::{Client, lock};
use crate::error::Error;

/// How many loaded documents a client remembers (to save nested blocks as references).
const MAX_PROVENANCE: usize = 10_000;

/// Where loaded block values came from: (slug, digest of their data) → document id. A
/// nested block equal to a loaded one is saved as a reference to that document.
#[derive(Debug, Default)]
pub(crate) struct Provenance(Mutex<HashMap<(String, [u8; 32]), Uuid>>);

/// The digest of a block's data (secrets included; only the digest is kept).
fn digest(data: &Value) -> [u8; 32] {
    Sha256::digest(serde_json::to_vec(data).unwrap_or_default()).into()
}

impl Provenance {
    pub(crate) fn remember(&self, slug: &str, data: &Value, id: Uuid) {
        let mut map = lock(&self.0);
        if map.len() >= MAX_PROVENANCE {
            map.clear();
        }
        map.insert((slug.to_owned(), digest(data)), id);
    }

    fn find(&self, slug: &str, data: &Value) -> Option<Uuid> {
        lock(&self.0).get(&(slug.to_owned(), digest(data))).copied()
    }

    /// Remembers a loaded document and the documents its nested blocks came from.
    pub(crate) fn remember_loaded<T: Block>(&self, value: &T, document: &BlockDocument) {
        let Ok(data) = value.to_data() else { return };
        self.remember(T::SLUG, &Value::Object(data.clone()), document.id);
        for (field, slug) in T::spec().block_fields() {
            if let (Some(nested), Some(reference)) = (
                data.get(&field),
                document.block_document_references.get(&field),
            ) {
                self.remember(&slug, nested, reference.block_document.id);
            }
        }
    }
}

impl Client {
    /// Saves `block` as `name`. A block with that name already existing is
    /// [`Error::NameConflict`]; use [`Client::save_overwrite`] to replace it.
    pub async fn save<T: Block>(&self, block: &T, name: &str) -> Result<Uuid, Error> {
        self.save_as(block, name, false).await
    }

    /// Saves `block` as `name`, replacing an existing one. The replacement is conditional
    /// on the version read just before (`If-Match`): if someone else changed the block in
    /// between, the answer is [`Error::ConcurrentEdit`], never a lost update.
    pub async fn save_overwrite<T: Block>(&self, block: &T, name: &str) -> Result<Uuid, Error> {
        self.save_as(block, name, true).await
    }

    async fn save_as<T: Block>(
        &self,
        block: &T,
        name: &str,
        overwrite: bool,
    ) -> Result<Uuid, Error> {
        let data = block.to_data().map_err(|e| Error::Data {
            slug: T::SLUG.to_owned(),
            name: name.to_owned(),
            field: e.field.clone(),
            message: e.message,
        })?;
        let mut schemas = HashMap::new();
        for spec in T::nested_specs().iter().chain(std::iter::once(&T::spec())) {
            let (ty, schema) = self.register(spec).await?;
            schemas.insert(spec.block_type.slug.clone(), (ty.id, schema.id));
        }
        let data = self.nested_as_references::<T>(data, &schemas).await?;
        let (type_id, schema_id) = schemas[T::SLUG];
        let body = json!({
            "name": name,
            "block_type_id": type_id,
            "block_schema_id": schema_id,
            "data": data,
            "is_anonymous": false,
        });
        let (status, value, _) = self
            .write(Method::POST, "block_documents/", Some(&body), None)
            .await?;
        if status.is_success() {
            return self.saved::<T>(block, &value);
        }
        if status != StatusCode::CONFLICT {
            return Err(self.error(status, &value, None));
        }
        if !overwrite {
            return Err(Error::NameConflict {
                slug: T::SLUG.to_owned(),
                name: name.to_owned(),
            });
        }
        // Replace, on the condition that the document is still what we read.
        let path = format!(
            "block_types/slug/{}/block_documents/name/{}",
            crate::client::encode(T::SLUG),
            crate::client::encode(name)
        );
        let (status, current, etag) = self.write(Method::GET, &path, None, None).await?;
        if !status.is_success() {
            return Err(self.error(status, &current, None));
        }
        let id = current["id"]
            .as_str()
            .and_then(|i| i.parse::<Uuid>().ok())
            .ok_or_else(|| Error::Http {
                status: 200,
                detail: "the answer holds no document id".into(),
            })?;
        let update =
            json!({"block_schema_id": schema_id, "data": data, "merge_existing_data": false});
        let (status, value, _) = self
            .write(
                Method::PATCH,
                &format!("block_documents/{id}"),
                Some(&update),
                etag.as_deref(),
            )
            .await?;
        match status {
            s if s.is_success() => {
                if let Ok(data) = block.to_data() {
                    self.provenance()
                        .remember(T::SLUG, &Value::Object(data), id);
                }
                Ok(id)
            }
            StatusCode::PRECONDITION_FAILED => Err(Error::ConcurrentEdit {
                slug: T::SLUG.to_owned(),
                name: name.to_owned(),
            }),
            other => Err(self.error(other, &value, None)),
        }
    }

    fn saved<T: Block>(&self, block: &T, value: &Value) -> Result<Uuid, Error> {
        let id = value["id"]
            .as_str()
            .and_then(|i| i.parse::<Uuid>().ok())
            .ok_or_else(|| Error::Http {
                status: 201,
                detail: "the answer holds no document id".into(),
            })?;
        if let Ok(data) = block.to_data() {
            self.provenance()
                .remember(T::SLUG, &Value::Object(data), id);
        }
        Ok(id)
    }

    /// Replaces each nested block by a `$ref`: to the document it was loaded from (or
    /// saved as) when this client knows it, else to a new anonymous document saved first.
    async fn nested_as_references<T: Block>(
        &self,
        mut data: Map<String, Value>,
        schemas: &HashMap<String, (Uuid, Uuid)>,
    ) -> Result<Map<String, Value>, Error> {
        for (field, slug) in T::spec().block_fields() {
            let Some(nested) = data.get(&field).filter(|v| v.is_object()).cloned() else {
                continue;
            };
            let id = match self.provenance().find(&slug, &nested) {
                Some(id) => id,
                None => {
                    let Some((type_id, schema_id)) = schemas.get(&slug) else {
                        continue;
                    };
                    let body = json!({
                        "block_type_id": type_id,
                        "block_schema_id": schema_id,
                        "data": nested,
                        "is_anonymous": true,
                    });
                    let (status, value, _) = self
                        .write(Method::POST, "block_documents/", Some(&body), None)
                        .await?;
                    if !status.is_success() {
                        return Err(self.error(status, &value, None));
                    }
                    let id = value["id"]
                        .as_str()
                        .and_then(|i| i.parse().ok())
                        .ok_or_else(|| Error::Http {
                            status: 201,
                            detail: "the answer holds no document id".into(),
                        })?;
                    self.provenance().remember(&slug, &nested, id);
                    id
                }
            };
            data.insert(field, json!({"$ref": {"block_document_id": id}}));
        }
        Ok(data)
    }

    /// Makes sure the server has the block type and this schema of it: the type is created
    /// when missing (an existing type's metadata is left alone), the schema is created or
    /// found by checksum.
    async fn register(&self, spec: &BlockSpec) -> Result<(BlockType, BlockSchema), Error> {
        let path = format!(
            "block_types/slug/{}",
            crate::client::encode(&spec.block_type.slug)
        );
        let (status, value, _) = self.write(Method::GET, &path, None, None).await?;
        let value = match status {
            s if s.is_success() => value,
            StatusCode::NOT_FOUND => {
                let body = serde_json::to_value(spec.block_type.to_create()).unwrap_or(Value::Null);
                let (status, value, _) = self
                    .write(Method::POST, "block_types/", Some(&body), None)
                    .await?;
                if status == StatusCode::CONFLICT {
                    // Another client registered it meanwhile.
                    let (status, value, _) = self.write(Method::GET, &path, None, None).await?;
                    if !status.is_success() {
                        return Err(self.error(status, &value, None));
                    }
                    value
                } else if status.is_success() {
                    value
                } else {
                    return Err(self.error(status, &value, None));
                }
            }
            other => return Err(self.error(other, &value, None)),
        };
        let ty: BlockType = serde_json::from_value(value).map_err(|e| Error::Http {
            status: 200,
            detail: format!("the answer is not a block type: {e}"),
        })?;
        let body = serde_json::to_value(spec.to_schema_create(ty.id)).unwrap_or(Value::Null);
        let (status, value, _) = self
            .write(Method::POST, "block_schemas/", Some(&body), None)
            .await?;
        if !status.is_success() {
            return Err(self.error(status, &value, None));
        }
        let schema: BlockSchema = serde_json::from_value(value).map_err(|e| Error::Http {
            status: 200,
            detail: format!("the answer is not a block schema: {e}"),
        })?;
        Ok((ty, schema))
    }
}
