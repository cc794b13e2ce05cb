//! Saving typed blocks: registration of the type and schema when the server lacks them,
//! nested blocks as `$ref`s (to the documents they were loaded from, or saved first as
//! anonymous documents), and conditional overwrites.

use std::collections::{HashMap, HashSet};

use block_types::model::{BlockSchema, BlockType};
use block_types::{Block, BlockSpec};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::client::{Client, without_values};

/// What the server says when a name is taken.
const NAME_TAKEN: &str = "Block already exists";
use crate::encoding::encode;
use crate::error::Error;

/// What a save created before it failed: removed again, best effort.
struct Created(Vec<Uuid>);

impl Client {
    /// Saves `block` as `name`. A block with that name already existing is
    /// [`Error::NameConflict`]; use [`Client::save_overwrite`] to replace it.
    pub async fn save<T: Block>(&self, block: &T, name: &str) -> Result<Uuid, Error> {
        self.save_as(block, name, false).await
    }

    /// Saves `block` as `name`, replacing an existing one, on the condition that it is
    /// unchanged since this client last read it (`If-Match` with the `ETag` of that read;
    /// if this client never read it, of a read just before the write). A change by someone
    /// else in between, to the block or to a block it references, is
    /// [`Error::ConcurrentEdit`] and nothing is written. (A server that sends no `ETag`,
    /// such as Prefect's own, gets an unconditional write.)
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
            message: without_values(&e.message),
        })?;
        // Is the name taken? Known before anything is written.
        let path = format!(
            "block_types/slug/{}/block_documents/name/{}",
            encode(T::SLUG),
            encode(name)
        );
        let (status, current, read_etag) = self.read_json(&path).await?;
        let existing = match status {
            s if s.is_success() => {
                if !overwrite {
                    return Err(Error::NameConflict {
                        slug: T::SLUG.to_owned(),
                        name: name.to_owned(),
                    });
                }
                current["id"].as_str().and_then(|i| i.parse::<Uuid>().ok())
            }
            StatusCode::NOT_FOUND => None,
            other => return Err(self.error(other, &current, None)),
        };
        let mut schemas = HashMap::new();
        for spec in T::nested_specs().iter().chain(std::iter::once(&T::spec())) {
            let (ty, schema) = self.register(spec).await?;
            schemas.insert(spec.block_type.slug.clone(), (ty.id, schema.id));
        }
        let (type_id, schema_id) = *schemas.get(T::SLUG).ok_or_else(|| {
            Error::Config(format!(
                "the Rust type's SLUG {} differs from its spec's slug",
                T::SLUG
            ))
        })?;
        let mut created = Created(Vec::new());
        let outcome = async {
            let data = self
                .nested_as_references::<T>(data, &schemas, &mut created)
                .await?;
            match existing {
                None => self.create(T::SLUG, name, type_id, schema_id, &data).await,
                Some(id) => {
                    let etag = self.known_etag(id).or(read_etag);
                    self.replace(T::SLUG, name, id, schema_id, &data, etag.as_deref())
                        .await
                }
            }
        }
        .await;
        self.after_write();
        match outcome {
            Ok(id) => {
                // Our own write changed it: a later overwrite reads it afresh.
                self.forget_etag(id);
                if let Ok(data) = block.to_data() {
                    self.provenance()
                        .remember(T::SLUG, &Value::Object(data), id);
                }
                Ok(id)
            }
            Err(e) => {
                for id in created.0 {
                    let _ = self
                        .send(Method::DELETE, &format!("block_documents/{id}"), None, None)
                        .await;
                }
                Err(e)
            }
        }
    }

    async fn create(
        &self,
        slug: &str,
        name: &str,
        type_id: Uuid,
        schema_id: Uuid,
        data: &Map<String, Value>,
    ) -> Result<Uuid, Error> {
        let body = json!({
            "name": name,
            "block_type_id": type_id,
            "block_schema_id": schema_id,
            "data": data,
            "is_anonymous": false,
        });
        let (status, value, _) = self
            .send(Method::POST, "block_documents/", Some(&body), None)
            .await?;
        if status.is_success() {
            return document_id(&value, status);
        }
        if status == StatusCode::CONFLICT && value["detail"].as_str() == Some(NAME_TAKEN) {
            // Taken since we looked.
            return Err(Error::NameConflict {
                slug: slug.to_owned(),
                name: name.to_owned(),
            });
        }
        Err(self.error(status, &value, None))
    }

    async fn replace(
        &self,
        slug: &str,
        name: &str,
        id: Uuid,
        schema_id: Uuid,
        data: &Map<String, Value>,
        etag: Option<&str>,
    ) -> Result<Uuid, Error> {
        let update =
            json!({"block_schema_id": schema_id, "data": data, "merge_existing_data": false});
        let (status, value, _) = self
            .send(
                Method::PATCH,
                &format!("block_documents/{id}"),
                Some(&update),
                etag,
            )
            .await?;
        match status {
            s if s.is_success() => Ok(id),
            StatusCode::PRECONDITION_FAILED | StatusCode::NOT_FOUND => Err(Error::ConcurrentEdit {
                slug: slug.to_owned(),
                name: name.to_owned(),
            }),
            other => Err(self.error(other, &value, None)),
        }
    }

    /// Replaces each nested block by a `$ref`: to the named document it was loaded from
    /// (or saved as) when this client knows exactly one, else to a new anonymous document
    /// saved first (recorded in `created`).
    async fn nested_as_references<T: Block>(
        &self,
        mut data: Map<String, Value>,
        schemas: &HashMap<String, (Uuid, Uuid)>,
        created: &mut Created,
    ) -> Result<Map<String, Value>, Error> {
        let mut done = HashSet::new();
        for (field, slug) in T::spec().block_fields() {
            // A field that may hold one of several types is listed once per type.
            if !done.insert(field.clone()) {
                continue;
            }
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
                        .send(Method::POST, "block_documents/", Some(&body), None)
                        .await?;
                    if !status.is_success() {
                        return Err(self.error(status, &value, None));
                    }
                    let id = document_id(&value, status)?;
                    created.0.push(id);
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
    pub async fn register(&self, spec: &BlockSpec) -> Result<(BlockType, BlockSchema), Error> {
        let path = format!("block_types/slug/{}", encode(&spec.block_type.slug));
        let (status, value, _) = self.read_json(&path).await?;
        let value = match status {
            s if s.is_success() => value,
            StatusCode::NOT_FOUND => {
                let body = serde_json::to_value(spec.block_type.to_create()).unwrap_or(Value::Null);
                let (status, value, _) = self
                    .send(Method::POST, "block_types/", Some(&body), None)
                    .await?;
                if status == StatusCode::CONFLICT {
                    // Another client registered it meanwhile.
                    let (status, value, _) = self.read_json(&path).await?;
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
            .send(Method::POST, "block_schemas/", Some(&body), None)
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

fn document_id(value: &Value, status: StatusCode) -> Result<Uuid, Error> {
    value["id"]
        .as_str()
        .and_then(|i| i.parse().ok())
        .ok_or_else(|| Error::Http {
            status: status.as_u16(),
            detail: "the answer holds no document id".into(),
        })
}
