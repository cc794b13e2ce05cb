//! Saving typed blocks: registration of the type and schema when the server lacks them,
//! nested blocks as `$ref`s (to the documents they were loaded from, or saved first as
//! anonymous documents), and conditional overwrites.

use std::collections::{HashMap, HashSet};

use block_types::model::{BlockDocumentCreate, BlockDocumentUpdate, BlockSchema, BlockType};
use block_types::{Block, BlockSpec};
use reqwest::Method;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::client::{Client, without_values};
use crate::error::Error;

/// What the server says when a name is taken.
const NAME_TAKEN: &str = "Block already exists";

/// Of a create's answer, what a save needs: the new document's id. Read alone, so an
/// answer with more or other fields than the model's still tells the save what it created
/// (to name it, or to remove it again when a later step fails).
#[derive(serde::Deserialize)]
struct Made {
    id: Uuid,
}

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
        let (existing, read_etag) = match self.block_document_tagged(T::SLUG, name).await {
            Ok(_) if !overwrite => {
                return Err(Error::NameConflict {
                    slug: T::SLUG.to_owned(),
                    name: name.to_owned(),
                });
            }
            Ok((current, etag)) => (Some(current.id), etag),
            Err(Error::Http { status: 404, .. }) => (None, None),
            Err(e) => return Err(e),
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
                None => self.create(T::SLUG, name, type_id, schema_id, data).await,
                Some(id) => {
                    let etag = self.known_etag(id).or(read_etag);
                    self.replace(T::SLUG, name, id, schema_id, data, etag.as_deref())
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
                    let _ = self.delete_block_document(id).await;
                }
                Err(e)
            }
        }
    }

    /// Creates a document: its id.
    async fn create_for_id(&self, create: &BlockDocumentCreate) -> Result<Uuid, Error> {
        self.call::<_, Made>(Method::POST, "block_documents/", Some(create))
            .await
            .map(|made| made.id)
    }

    async fn create(
        &self,
        slug: &str,
        name: &str,
        type_id: Uuid,
        schema_id: Uuid,
        data: Map<String, Value>,
    ) -> Result<Uuid, Error> {
        let create = BlockDocumentCreate {
            name: Some(name.to_owned()),
            data,
            block_schema_id: schema_id,
            block_type_id: type_id,
            is_anonymous: false,
        };
        match self.create_for_id(&create).await {
            Ok(id) => Ok(id),
            // Taken since we looked.
            Err(Error::Http {
                status: 409,
                detail,
            }) if detail == NAME_TAKEN => Err(Error::NameConflict {
                slug: slug.to_owned(),
                name: name.to_owned(),
            }),
            Err(e) => Err(e),
        }
    }

    async fn replace(
        &self,
        slug: &str,
        name: &str,
        id: Uuid,
        schema_id: Uuid,
        data: Map<String, Value>,
        etag: Option<&str>,
    ) -> Result<Uuid, Error> {
        let update = BlockDocumentUpdate {
            block_schema_id: Some(schema_id),
            data: Some(data),
            merge_existing_data: false,
        };
        match self.update_block_document(id, &update, etag).await {
            Ok(()) => Ok(id),
            Err(Error::Http {
                status: 412 | 404, ..
            }) => Err(Error::ConcurrentEdit {
                slug: slug.to_owned(),
                name: name.to_owned(),
            }),
            Err(e) => Err(e),
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
            let Some(nested) = data.get(&field).filter(|v| v.is_object()) else {
                continue;
            };
            let id = match self.provenance().find(&slug, nested) {
                Some(id) => id,
                None => {
                    let (Some((type_id, schema_id)), Some(nested)) =
                        (schemas.get(&slug), nested.as_object())
                    else {
                        continue;
                    };
                    let create = BlockDocumentCreate {
                        name: None,
                        data: nested.clone(),
                        block_schema_id: *schema_id,
                        block_type_id: *type_id,
                        is_anonymous: true,
                    };
                    let id = self.create_for_id(&create).await?;
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
        let ty = match self.block_type(&spec.block_type.slug).await {
            Ok(ty) => ty,
            Err(Error::Http { status: 404, .. }) => {
                match self.create_block_type(&spec.block_type.to_create()).await {
                    Ok(ty) => ty,
                    // Another client registered it meanwhile.
                    Err(Error::Http { status: 409, .. }) => {
                        self.block_type(&spec.block_type.slug).await?
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        let schema = self
            .create_block_schema(&spec.to_schema_create(ty.id))
            .await?;
        Ok((ty, schema))
    }
}
