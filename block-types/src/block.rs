//! The [`Block`] trait: a Rust type that is a block type, with its schema and metadata.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::checksum::schema_checksum;
use crate::error::FieldError;
use crate::model::{BlockSchemaCreate, BlockTypeCreate};
use crate::secret_fields::{SecretPath, secret_fields_of};

/// A block type's metadata, as registered with the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockTypeInfo {
    /// Display name (`GCS Bucket`).
    pub name: String,
    /// Slug (`gcs-bucket`).
    pub slug: String,
    /// Logo URL.
    pub logo_url: Option<String>,
    /// Documentation URL.
    pub documentation_url: Option<String>,
    /// Markdown description.
    pub description: Option<String>,
    /// Markdown code example.
    pub code_example: Option<String>,
    /// Whether the server protects the type from deletion.
    #[serde(skip)]
    pub protected: bool,
}

impl BlockTypeInfo {
    /// The body that creates this type.
    pub fn to_create(&self) -> BlockTypeCreate {
        BlockTypeCreate {
            name: self.name.clone(),
            slug: self.slug.clone(),
            logo_url: self.logo_url.clone(),
            documentation_url: self.documentation_url.clone(),
            description: self.description.clone(),
            code_example: self.code_example.clone(),
        }
    }
}

impl From<BlockTypeCreate> for BlockTypeInfo {
    /// A type defined by its creation body (a custom type): not protected.
    fn from(body: BlockTypeCreate) -> Self {
        let BlockTypeCreate { name, slug, .. } = body;
        Self {
            name,
            slug,
            logo_url: body.logo_url,
            documentation_url: body.documentation_url,
            description: body.description,
            code_example: body.code_example,
            protected: false,
        }
    }
}

/// A block type together with one schema of it: everything registration needs.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockSpec {
    /// The type's metadata.
    pub block_type: BlockTypeInfo,
    /// The full JSON Schema as a client sends it: nested block definitions,
    /// `block_schema_references`, `secret_fields` and `block_type_slug` included.
    pub fields: Value,
    /// Capabilities (`read-path`, …).
    pub capabilities: Vec<String>,
    /// Schema version string.
    pub version: String,
}

impl BlockSpec {
    /// The schema checksum, as Prefect computes it.
    pub fn checksum(&self) -> String {
        schema_checksum(&self.fields)
    }

    /// The parsed `secret_fields`.
    pub fn secret_fields(&self) -> Vec<SecretPath> {
        secret_fields_of(&self.fields)
    }

    /// The body that creates this schema under the type with id `block_type_id`.
    pub fn to_schema_create(&self, block_type_id: Uuid) -> BlockSchemaCreate {
        BlockSchemaCreate {
            fields: self.fields.as_object().cloned().unwrap_or_default(),
            block_type_id,
            capabilities: self.capabilities.clone(),
            version: self.version.clone(),
        }
    }

    /// The fields that hold nested blocks, with the nested type's slug.
    pub fn block_fields(&self) -> Vec<(String, String)> {
        let Some(refs) = self
            .fields
            .get("block_schema_references")
            .and_then(Value::as_object)
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (field, reference) in refs {
            let entries = match reference {
                Value::Array(items) => items.iter().collect(),
                other => vec![other],
            };
            for entry in entries {
                if let Some(slug) = entry.get("block_type_slug").and_then(Value::as_str) {
                    out.push((field.clone(), slug.to_owned()));
                }
            }
        }
        out
    }

    /// Nests `child` under `field`: adds its definition (keyed by its title, with the
    /// child's own definitions flattened beside it), its `block_schema_references` entry
    /// and its secret fields prefixed with `field`. The property itself (a `$ref` to
    /// `#/definitions/<title>`) is part of the parent's hand-written schema.
    #[must_use]
    pub fn nest(mut self, field: &str, child: &BlockSpec) -> Self {
        let checksum = child.checksum();
        let mut child_fields = child.fields.clone();
        let child_definitions = child_fields
            .as_object_mut()
            .and_then(|f| f.remove("definitions"));
        let title = child_fields
            .get("title")
            .and_then(Value::as_str)
            .unwrap_or(&child.block_type.slug)
            .to_owned();
        let Some(fields) = self.fields.as_object_mut() else {
            return self;
        };
        let definitions = object_entry(fields, "definitions");
        if let Some(Value::Object(child_definitions)) = child_definitions {
            for (k, v) in child_definitions {
                definitions.entry(k).or_insert(v);
            }
        }
        definitions.insert(title, child_fields);
        object_entry(fields, "block_schema_references").insert(
            field.to_owned(),
            json!({"block_schema_checksum": checksum, "block_type_slug": child.block_type.slug}),
        );
        let secret_fields = fields
            .entry("secret_fields")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(list) = secret_fields {
            for path in child.secret_fields() {
                list.push(Value::String(format!("{field}.{path}")));
            }
        }
        self
    }
}

fn object_entry<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let entry = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    match entry {
        Value::Object(map) => map,
        _ => unreachable!("just made an object"),
    }
}

/// A Rust type that is a block type: it knows its slug, schema and metadata, and converts
/// to and from document data. `registry-client` adds `load` and `save` on top.
///
/// ```
/// use block_types::{Block, catalog::GcsBucket};
/// assert_eq!(GcsBucket::SLUG, "gcs-bucket");
/// let spec = GcsBucket::spec();
/// assert_eq!(spec.block_fields(), [("gcp_credentials".to_owned(), "gcp-credentials".to_owned())]);
/// ```
pub trait Block: Serialize + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static {
    /// The block type's slug.
    const SLUG: &'static str;

    /// The block type and its current schema.
    fn spec() -> BlockSpec;

    /// The specs of the nested block types, each before any block that nests it. Register
    /// these before [`Block::spec`].
    fn nested_specs() -> Vec<BlockSpec> {
        Vec::new()
    }

    /// Rules the schema cannot express (e.g. "only one of these two fields"); checked
    /// before a block is turned into data.
    fn check(&self) -> Result<(), FieldError> {
        Ok(())
    }

    /// The block's document data (nested blocks inline, secrets in clear).
    fn to_data(&self) -> Result<Map<String, Value>, FieldError> {
        self.check()?;
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(FieldError::new(
                "",
                "a block must serialize to a JSON object",
            )),
            Err(e) => Err(FieldError::new("", e.to_string())),
        }
    }

    /// Builds the block from document data (nested references already resolved). The error
    /// names the field that does not fit.
    fn from_data(data: Map<String, Value>) -> Result<Self, FieldError> {
        let value = Value::Object(data);
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            FieldError::new(field, e.into_inner().to_string())
        })
    }
}
