//! The wire model: block types, schemas and documents as Prefect's API sends and accepts
//! them, with Prefect's field names and shapes.
//!
//! Response objects (`BlockType`, `BlockSchema`, `BlockDocument`) tolerate unknown fields, so
//! newer servers can add some. Create and update bodies reject unknown fields. Filter objects
//! reject unknown fields, while the top level of a filter body ignores them (Prefect's CLI
//! sends `block_schema_type`), and an explicit `null` there means "the default".

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::FieldError;

/// The version a block schema gets when none is given.
pub const NON_VERSIONED: &str = "non-versioned";

/// The largest page a filter may ask for, and the default page size.
pub const MAX_LIMIT: i64 = 200;

/// Timestamps as Prefect writes them: RFC 3339, UTC, microseconds, `Z`.
pub mod timestamp {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes `2026-11-24T17:20:25.120785Z`.
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true))
    }

    /// Accepts any RFC 3339 timestamp and converts it to UTC.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A kind of block, such as `gcs-bucket`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockType {
    /// Identifier.
    pub id: Uuid,
    /// When it was created.
    #[serde(with = "timestamp")]
    pub created: DateTime<Utc>,
    /// When it was last changed.
    #[serde(with = "timestamp")]
    pub updated: DateTime<Utc>,
    /// Display name, e.g. `GCS Bucket`.
    pub name: String,
    /// Unique slug, e.g. `gcs-bucket`.
    pub slug: String,
    /// Logo URL.
    pub logo_url: Option<String>,
    /// Documentation URL.
    pub documentation_url: Option<String>,
    /// Markdown description.
    pub description: Option<String>,
    /// Markdown code example.
    pub code_example: Option<String>,
    /// Protected types cannot be deleted.
    #[serde(default)]
    pub is_protected: bool,
}

/// Body of `POST /block_types/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockTypeCreate {
    /// Display name.
    pub name: String,
    /// Unique slug (`^[a-z0-9-]+$`).
    pub slug: String,
    /// Logo URL.
    #[serde(default)]
    pub logo_url: Option<String>,
    /// Documentation URL.
    #[serde(default)]
    pub documentation_url: Option<String>,
    /// Markdown description.
    #[serde(default)]
    pub description: Option<String>,
    /// Markdown code example.
    #[serde(default)]
    pub code_example: Option<String>,
}

impl From<&BlockType> for BlockTypeCreate {
    /// The body that creates a copy of `ty` (in another registry).
    fn from(ty: &BlockType) -> Self {
        Self {
            name: ty.name.clone(),
            slug: ty.slug.clone(),
            logo_url: ty.logo_url.clone(),
            documentation_url: ty.documentation_url.clone(),
            description: ty.description.clone(),
            code_example: ty.code_example.clone(),
        }
    }
}

/// Body of `PATCH /block_types/{id}`. Each field: absent = unchanged, `null` = cleared.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockTypeUpdate {
    /// Logo URL.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub logo_url: Option<Option<String>>,
    /// Documentation URL.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub documentation_url: Option<Option<String>>,
    /// Markdown description.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub description: Option<Option<String>>,
    /// Markdown code example.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub code_example: Option<Option<String>>,
}

/// One version of a block type's JSON Schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockSchema {
    /// Identifier.
    pub id: Uuid,
    /// When it was created.
    #[serde(with = "timestamp")]
    pub created: DateTime<Utc>,
    /// When it was last changed.
    #[serde(with = "timestamp")]
    pub updated: DateTime<Utc>,
    /// `sha256:<hex>` of the canonical fields (see [`crate::schema_checksum`]).
    pub checksum: String,
    /// The JSON Schema, with `block_schema_references` and `definitions` rebuilt.
    pub fields: Value,
    /// The type this schema belongs to.
    pub block_type_id: Uuid,
    /// The type, embedded.
    #[serde(default)]
    pub block_type: Option<BlockType>,
    /// Capabilities such as `read-path`.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Version string; `non-versioned` by default.
    pub version: String,
}

fn non_versioned() -> String {
    NON_VERSIONED.to_owned()
}

/// Body of `POST /block_schemas/`. The server computes the checksum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockSchemaCreate {
    /// The JSON Schema.
    #[serde(default)]
    pub fields: Map<String, Value>,
    /// The type the schema belongs to.
    pub block_type_id: Uuid,
    /// Capabilities.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Version string.
    #[serde(default = "non_versioned")]
    pub version: String,
}

/// A named, stored value of a block type. Its `Debug` lists the data's field names only:
/// the data may hold secrets in clear.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockDocument {
    /// Identifier.
    pub id: Uuid,
    /// When it was created.
    #[serde(with = "timestamp")]
    pub created: DateTime<Utc>,
    /// When it was last changed.
    #[serde(with = "timestamp")]
    pub updated: DateTime<Utc>,
    /// Name; `anonymous-<uuid>` for anonymous documents.
    pub name: Option<String>,
    /// The data, references resolved; secrets obfuscated unless asked for.
    #[serde(default)]
    pub data: Map<String, Value>,
    /// The schema the data follows.
    pub block_schema_id: Uuid,
    /// The schema, embedded (Prefect's client requires it).
    #[serde(default)]
    pub block_schema: Option<BlockSchema>,
    /// The document's type.
    pub block_type_id: Uuid,
    /// The type's name when the document was created.
    #[serde(default)]
    pub block_type_name: Option<String>,
    /// The type, embedded.
    #[serde(default)]
    pub block_type: Option<BlockType>,
    /// The referenced documents, by field.
    #[serde(default)]
    pub block_document_references: BTreeMap<String, BlockDocumentReference>,
    /// Anonymous documents are hidden from listings by default.
    #[serde(default)]
    pub is_anonymous: bool,
    /// Set (and only then sent) on a listed document whose secrets the server cannot
    /// decrypt: its sealed values are shown as `"********"` and its references as `$ref`s.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unreadable: bool,
}

/// One entry of `block_document_references`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockDocumentReference {
    /// The referenced document.
    pub block_document: ReferencedBlockDocument,
}

/// A referenced document as it appears in `block_document_references`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferencedBlockDocument {
    /// Identifier.
    pub id: Uuid,
    /// Name.
    pub name: Option<String>,
    /// The referenced document's type.
    pub block_type: BlockType,
    /// Whether it is anonymous.
    #[serde(default)]
    pub is_anonymous: bool,
    /// Its own references, recursively.
    #[serde(default)]
    pub block_document_references: BTreeMap<String, BlockDocumentReference>,
}

/// One stored version of a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Version number, from 1.
    pub version: i64,
    /// When it was written.
    pub created: DateTime<Utc>,
    /// The schema its data follows.
    pub block_schema_id: Uuid,
    /// The data key its secrets are sealed under (none when it has no secret value).
    pub key_id: Option<Uuid>,
    /// Its references: field → document id.
    pub references: BTreeMap<String, Uuid>,
    /// The token that wrote it (none for versions written before authors were recorded,
    /// and for the server's own writes).
    pub token_id: Option<Uuid>,
}

/// Body of `POST /block_documents/`. Its `Debug` lists the data's field names only.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockDocumentCreate {
    /// Name; required unless `is_anonymous`.
    #[serde(default)]
    pub name: Option<String>,
    /// The data, with `$ref`s for referenced documents.
    #[serde(default)]
    pub data: Map<String, Value>,
    /// The schema the data follows.
    pub block_schema_id: Uuid,
    /// The document's type.
    pub block_type_id: Uuid,
    /// Anonymous documents may omit a name.
    #[serde(default)]
    pub is_anonymous: bool,
}

impl BlockDocumentCreate {
    /// Checks the name rules that do not need storage: a name is required unless the
    /// document is anonymous, and must be lowercase letters, digits and dashes.
    pub fn validate(&self) -> Result<(), FieldError> {
        match &self.name {
            Some(name) => crate::validate::block_document_name(name),
            None if self.is_anonymous => Ok(()),
            None => Err(FieldError::new(
                "name",
                "Names must be provided for block documents.",
            )),
        }
    }
}

/// A present field must not be `null` (an absent one stays `None` through `default`).
fn non_null<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    T::deserialize(d).map(Some)
}

fn default_true() -> bool {
    true
}

/// Body of `PATCH /block_documents/{id}`. Its `Debug` lists the data's field names only.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockDocumentUpdate {
    /// Move the document to this schema (of the same type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_schema_id: Option<Uuid>,
    /// New data; with `merge_existing_data` a shallow merge over the current data.
    /// Absent means "no new data"; an explicit `null` is refused, as Prefect does.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub data: Option<Map<String, Value>>,
    /// Merge (the default) or replace.
    #[serde(default = "default_true")]
    pub merge_existing_data: bool,
}

impl Default for BlockDocumentUpdate {
    fn default() -> Self {
        Self {
            block_schema_id: None,
            data: None,
            merge_existing_data: true,
        }
    }
}

/// Shows a data object as its field names, never its values.
struct FieldNames<'a>(&'a Map<String, Value>);

impl std::fmt::Debug for FieldNames<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl std::fmt::Debug for BlockDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockDocument")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("data", &FieldNames(&self.data))
            .field("block_schema_id", &self.block_schema_id)
            .field("block_type_id", &self.block_type_id)
            .field("is_anonymous", &self.is_anonymous)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for BlockDocumentCreate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockDocumentCreate")
            .field("name", &self.name)
            .field("data", &FieldNames(&self.data))
            .field("block_schema_id", &self.block_schema_id)
            .field("block_type_id", &self.block_type_id)
            .field("is_anonymous", &self.is_anonymous)
            .finish()
    }
}

impl std::fmt::Debug for BlockDocumentUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockDocumentUpdate")
            .field("block_schema_id", &self.block_schema_id)
            .field("data", &self.data.as_ref().map(FieldNames))
            .field("merge_existing_data", &self.merge_existing_data)
            .finish()
    }
}

/// How filter sub-objects combine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operator {
    /// All must match.
    #[default]
    #[serde(rename = "and_")]
    And,
    /// Any may match.
    #[serde(rename = "or_")]
    Or,
}

/// `{"any_": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnyOf<T> {
    /// Matches when the value is one of these.
    #[serde(default)]
    pub any_: Option<Vec<T>>,
}

/// `{"all_": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllOf<T> {
    /// Matches when the value has all of these.
    #[serde(default)]
    pub all_: Option<Vec<T>>,
}

/// The longest `like_` pattern, in bytes: patterns cost time on every row they are matched
/// against.
pub const MAX_PATTERN_BYTES: usize = 256;

fn bounded_pattern<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let pattern = Option::<String>::deserialize(d)?;
    if pattern
        .as_ref()
        .is_some_and(|p| p.len() > MAX_PATTERN_BYTES)
    {
        return Err(serde::de::Error::custom(format!(
            "must be at most {MAX_PATTERN_BYTES} bytes"
        )));
    }
    Ok(pattern)
}

/// `{"like_": "..."}`: case-insensitive substring match (`%` and `_` are wildcards).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Like {
    /// The pattern.
    #[serde(default, deserialize_with = "bounded_pattern")]
    pub like_: Option<String>,
}

/// `{"any_": [...], "like_": "..."}` for document names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameFilter {
    /// Exact names.
    #[serde(default)]
    pub any_: Option<Vec<String>>,
    /// Case-insensitive substring.
    #[serde(default, deserialize_with = "bounded_pattern")]
    pub like_: Option<String>,
}

/// `{"eq_": bool|null}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EqBool {
    /// The value to match; `null` matches everything.
    #[serde(default)]
    pub eq_: Option<bool>,
}

/// Filter on block types.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlockTypeFilter {
    /// Name substring.
    pub name: Option<Like>,
    /// Slugs.
    pub slug: Option<AnyOf<String>>,
}

/// Filter on block schemas.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlockSchemaFilter {
    /// How the sub-filters combine.
    pub operator: Operator,
    /// Types.
    pub block_type_id: Option<AnyOf<Uuid>>,
    /// Capabilities the schema must all have.
    pub block_capabilities: Option<AllOf<String>>,
    /// Ids.
    pub id: Option<AnyOf<Uuid>>,
    /// Versions.
    pub version: Option<AnyOf<String>>,
}

fn default_is_anonymous() -> Option<EqBool> {
    Some(EqBool { eq_: Some(false) })
}

/// Filter on block documents. `is_anonymous` defaults to `{"eq_": false}` (see the `Default`
/// impl, which fills absent fields); send `null` to include anonymous documents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlockDocumentFilter {
    /// How the sub-filters combine.
    pub operator: Operator,
    /// Ids.
    pub id: Option<AnyOf<Uuid>>,
    /// Anonymity.
    pub is_anonymous: Option<EqBool>,
    /// Types.
    pub block_type_id: Option<AnyOf<Uuid>>,
    /// Names.
    pub name: Option<NameFilter>,
}

impl Default for BlockDocumentFilter {
    fn default() -> Self {
        Self {
            operator: Operator::And,
            id: None,
            is_anonymous: default_is_anonymous(),
            block_type_id: None,
            name: None,
        }
    }
}

/// Sort order of document listings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BlockDocumentSort {
    /// By name, ascending (the default).
    #[default]
    NameAsc,
    /// By name, descending.
    NameDesc,
    /// By type name, then name.
    BlockTypeAndNameAsc,
}

/// A validated page: `limit` in `0..=200` (default 200), `offset` ≥ 0 (default 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Rows to return.
    pub limit: u32,
    /// Rows to skip.
    pub offset: u32,
}

impl Default for Page {
    fn default() -> Self {
        Self {
            limit: MAX_LIMIT as u32,
            offset: 0,
        }
    }
}

impl Page {
    /// Resolves optional `limit`/`offset` as Prefect does, with its messages.
    pub fn resolve(limit: Option<i64>, offset: Option<i64>) -> Result<Self, FieldError> {
        let limit = limit.unwrap_or(MAX_LIMIT);
        if limit < 0 {
            return Err(FieldError::new(
                "limit",
                "Invalid limit: must be greater than or equal to 0.",
            ));
        }
        if limit > MAX_LIMIT {
            return Err(FieldError::new(
                "limit",
                format!("Invalid limit: must be less than or equal to {MAX_LIMIT}."),
            ));
        }
        let offset = offset.unwrap_or(0);
        let offset = u32::try_from(offset)
            .map_err(|_| FieldError::new("offset", "Input should be greater than or equal to 0"))?;
        Ok(Self {
            limit: limit as u32,
            offset,
        })
    }
}

/// Body of `POST /block_types/filter`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlockTypeFilterBody {
    /// Filter on the types.
    pub block_types: Option<BlockTypeFilter>,
    /// Types that have a schema matching this filter.
    pub block_schemas: Option<BlockSchemaFilter>,
    /// Page size.
    pub limit: Option<i64>,
    /// Rows to skip.
    pub offset: Option<i64>,
}

/// Body of `POST /block_schemas/filter`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlockSchemaFilterBody {
    /// Filter on the schemas.
    pub block_schemas: Option<BlockSchemaFilter>,
    /// Page size.
    pub limit: Option<i64>,
    /// Rows to skip.
    pub offset: Option<i64>,
}

/// Body of `POST /block_documents/filter`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlockDocumentFilterBody {
    /// Filter on the documents (anonymous ones hidden unless asked).
    pub block_documents: Option<BlockDocumentFilter>,
    /// Documents whose type matches.
    pub block_types: Option<BlockTypeFilter>,
    /// Documents whose schema matches.
    pub block_schemas: Option<BlockSchemaFilter>,
    /// Return secrets in clear.
    pub include_secrets: Option<bool>,
    /// Order.
    pub sort: Option<BlockDocumentSort>,
    /// Page size.
    pub limit: Option<i64>,
    /// Rows to skip.
    pub offset: Option<i64>,
}

/// Body of `POST /block_documents/count`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlockDocumentCountBody {
    /// Filter on the documents (anonymous ones hidden unless asked).
    pub block_documents: Option<BlockDocumentFilter>,
    /// Documents whose type matches.
    pub block_types: Option<BlockTypeFilter>,
    /// Documents whose schema matches.
    pub block_schemas: Option<BlockSchemaFilter>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_use_microseconds_and_z() {
        let t: DateTime<Utc> = "2026-11-24T17:20:25.120785Z".parse().unwrap();
        let ty = BlockType {
            id: Uuid::nil(),
            created: t,
            updated: t,
            name: "Secret".into(),
            slug: "secret".into(),
            logo_url: None,
            documentation_url: None,
            description: None,
            code_example: None,
            is_protected: true,
        };
        let v = serde_json::to_value(&ty).unwrap();
        assert_eq!(v["created"], json!("2026-11-24T17:20:25.120785Z"));
        let back: BlockType = serde_json::from_value(v).unwrap();
        assert_eq!(back, ty);
        // Offsets from other servers are accepted and normalised.
        let other: DateTime<Utc> =
            timestamp::deserialize(json!("2026-11-24T18:20:25.120785+01:00")).unwrap();
        assert_eq!(other, t);
    }

    #[test]
    fn create_bodies_reject_unknown_fields() {
        let err = serde_json::from_value::<BlockTypeCreate>(
            json!({"name": "X", "slug": "x", "is_protected": true}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("is_protected"), "{err}");
        let id = Uuid::new_v4();
        assert!(
            serde_json::from_value::<BlockSchemaCreate>(
                json!({"block_type_id": id, "checksum": "sha256:0"})
            )
            .is_err()
        );
        assert!(serde_json::from_value::<BlockDocumentUpdate>(json!({"name": "x"})).is_err());
    }

    #[test]
    fn schema_create_defaults() {
        let id = Uuid::new_v4();
        let body: BlockSchemaCreate = serde_json::from_value(json!({"block_type_id": id})).unwrap();
        assert_eq!(body.version, NON_VERSIONED);
        assert!(body.fields.is_empty() && body.capabilities.is_empty());
    }

    #[test]
    fn type_update_tells_absent_from_null() {
        let u: BlockTypeUpdate =
            serde_json::from_value(json!({"description": null, "logo_url": "https://x.io/l.png"}))
                .unwrap();
        assert_eq!(u.description, Some(None));
        assert_eq!(u.logo_url, Some(Some("https://x.io/l.png".into())));
        assert_eq!(u.code_example, None);
        assert_eq!(
            serde_json::to_value(&u).unwrap(),
            json!({"logo_url": "https://x.io/l.png", "description": null})
        );
    }

    #[test]
    fn debug_of_documents_and_bodies_shows_field_names_only() {
        let canary = "canary-model-5521";
        let id = Uuid::new_v4();
        let data: Map<String, Value> = serde_json::from_value(json!({"password": canary})).unwrap();
        let create = BlockDocumentCreate {
            name: Some("x".into()),
            data: data.clone(),
            block_schema_id: id,
            block_type_id: id,
            is_anonymous: false,
        };
        let update = BlockDocumentUpdate {
            data: Some(data),
            ..BlockDocumentUpdate::default()
        };
        for text in [format!("{create:?}"), format!("{update:#?}")] {
            assert!(!text.contains(canary), "{text}");
            assert!(text.contains("password"), "{text}");
        }
    }

    #[test]
    fn document_update_defaults_to_merge() {
        let u: BlockDocumentUpdate = serde_json::from_value(json!({})).unwrap();
        assert!(u.merge_existing_data && u.data.is_none() && u.block_schema_id.is_none());
        // `"data": null` would wipe a document under merge_existing_data = false.
        assert!(
            serde_json::from_value::<BlockDocumentUpdate>(
                json!({"data": null, "merge_existing_data": false})
            )
            .is_err()
        );
    }

    #[test]
    fn document_filter_hides_anonymous_unless_null() {
        let body: BlockDocumentFilterBody = serde_json::from_value(json!({
            "block_schema_type": null, "offset": null, "limit": null, "include_secrets": true
        }))
        .unwrap();
        assert!(body.block_documents.is_none());
        let f: BlockDocumentFilter =
            serde_json::from_value(json!({"name": {"like_": "zoom"}})).unwrap();
        assert_eq!(f.is_anonymous, Some(EqBool { eq_: Some(false) }));
        let f: BlockDocumentFilter = serde_json::from_value(json!({"is_anonymous": null})).unwrap();
        assert_eq!(f.is_anonymous, None);
        assert!(serde_json::from_value::<BlockDocumentFilter>(json!({"nope": 1})).is_err());
        assert_eq!(
            BlockDocumentFilter::default().is_anonymous,
            default_is_anonymous()
        );
    }

    #[test]
    fn filters_parse_prefect_shapes() {
        let body: BlockDocumentFilterBody = serde_json::from_value(json!({
            "block_documents": {"operator": "or_", "name": {"any_": ["a"], "like_": "z"}},
            "block_schemas": {"block_capabilities": {"all_": ["read-path"]}},
            "block_types": {"slug": {"any_": ["gcs-bucket"]}},
            "sort": "BLOCK_TYPE_AND_NAME_ASC", "limit": 5, "offset": 10
        }))
        .unwrap();
        assert_eq!(body.block_documents.unwrap().operator, Operator::Or);
        assert_eq!(body.sort, Some(BlockDocumentSort::BlockTypeAndNameAsc));
        assert!(serde_json::from_value::<BlockDocumentFilterBody>(json!({"sort": "BAD"})).is_err());
    }

    #[test]
    fn page_limits_follow_prefect() {
        assert_eq!(
            Page::resolve(None, None).unwrap(),
            Page {
                limit: 200,
                offset: 0
            }
        );
        assert_eq!(
            Page::resolve(Some(5), Some(7)).unwrap(),
            Page {
                limit: 5,
                offset: 7
            }
        );
        assert_eq!(
            Page::resolve(Some(201), None).unwrap_err().message,
            "Invalid limit: must be less than or equal to 200."
        );
        assert_eq!(
            Page::resolve(Some(-1), None).unwrap_err().message,
            "Invalid limit: must be greater than or equal to 0."
        );
        assert_eq!(Page::resolve(None, Some(-1)).unwrap_err().field, "offset");
    }

    #[test]
    fn document_create_requires_a_valid_name_unless_anonymous() {
        let id = Uuid::new_v4();
        let mut body = BlockDocumentCreate {
            name: None,
            data: Map::new(),
            block_schema_id: id,
            block_type_id: id,
            is_anonymous: false,
        };
        assert_eq!(
            body.validate().unwrap_err().message,
            "Names must be provided for block documents."
        );
        body.is_anonymous = true;
        assert!(body.validate().is_ok());
        body.name = Some("Zoom GCS".into());
        assert_eq!(body.validate().unwrap_err().field, "name");
    }
}
