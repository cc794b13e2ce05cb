//! References between block documents in document data.
//!
//! A top-level field of a document's data may point at another document:
//! `"gcp_credentials": {"$ref": {"block_document_id": "<uuid>"}}`. Storage keeps the
//! reference apart from the data and resolves it on every read. Only top-level fields are
//! references; a `$ref` deeper down is plain data, as in Prefect.

use serde_json::{Map, Value};
use uuid::Uuid;

/// The key that marks a reference object.
pub const REF_KEY: &str = "$ref";
/// The key inside a reference that holds the referenced document's id.
pub const BLOCK_DOCUMENT_ID: &str = "block_document_id";

/// A malformed reference in document data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceError {
    /// `{"$ref": {...}}` without a `block_document_id`.
    #[error("Received block reference without a block_document_id in key {field}")]
    MissingId {
        /// The top-level field holding the reference.
        field: String,
    },
    /// `block_document_id` is not a UUID string.
    #[error("block reference in key {field} has a block_document_id that is not a UUID")]
    InvalidId {
        /// The top-level field holding the reference.
        field: String,
    },
    /// `$ref` is not an object, or it or its holder carries keys other than the id.
    #[error(
        "block reference in key {field} must be exactly {{\"$ref\": {{\"block_document_id\": \"<uuid>\"}}}}"
    )]
    Malformed {
        /// The top-level field holding the reference.
        field: String,
    },
}

impl ReferenceError {
    /// The top-level field the error is about.
    pub fn field(&self) -> &str {
        match self {
            Self::MissingId { field } | Self::InvalidId { field } | Self::Malformed { field } => {
                field
            }
        }
    }
}

/// A reference from a top-level field to another block document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FieldReference<'a> {
    /// The field of the parent document.
    pub field: &'a str,
    /// The referenced document.
    pub block_document_id: Uuid,
}

/// Whether `value` is a reference object (an object with a `$ref` key).
pub fn is_reference(value: &Value) -> bool {
    value
        .as_object()
        .is_some_and(|obj| obj.contains_key(REF_KEY))
}

/// The references among the top-level fields of `data`, in field order.
///
/// ```
/// use serde_json::json;
/// let data = json!({
///     "bucket": "zoom",
///     "gcp_credentials": {"$ref": {"block_document_id": "6f1e7b3c-9b0d-4c5e-8a43-2f3b8d1c0a11"}}
/// });
/// let refs = block_types::extract_references(data.as_object().unwrap()).unwrap();
/// assert_eq!(refs.len(), 1);
/// assert_eq!(refs[0].field, "gcp_credentials");
/// ```
pub fn extract_references(
    data: &Map<String, Value>,
) -> Result<Vec<FieldReference<'_>>, ReferenceError> {
    let mut refs = Vec::new();
    for (field, value) in data {
        let Some(holder) = value.as_object().filter(|obj| obj.contains_key(REF_KEY)) else {
            continue;
        };
        let malformed = || ReferenceError::Malformed {
            field: field.clone(),
        };
        if holder.len() != 1 {
            return Err(malformed());
        }
        let Some(inner) = holder.get(REF_KEY).and_then(Value::as_object) else {
            return Err(malformed());
        };
        let Some(id) = inner.get(BLOCK_DOCUMENT_ID) else {
            return Err(ReferenceError::MissingId {
                field: field.clone(),
            });
        };
        if inner.len() != 1 {
            return Err(malformed());
        }
        let block_document_id = id
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| ReferenceError::InvalidId {
                field: field.clone(),
            })?;
        refs.push(FieldReference {
            field,
            block_document_id,
        });
    }
    Ok(refs)
}

/// The references of a document: (field name, referenced document id), in field order.
pub type References = Vec<(String, Uuid)>;

/// Splits `data` into its plain fields and its references.
pub fn split_references(
    mut data: Map<String, Value>,
) -> Result<(Map<String, Value>, References), ReferenceError> {
    let refs: References = extract_references(&data)?
        .into_iter()
        .map(|r| (r.field.to_owned(), r.block_document_id))
        .collect();
    for (field, _) in &refs {
        data.shift_remove(field);
    }
    Ok((data, refs))
}

/// The reference object for a document id: `{"$ref": {"block_document_id": "<id>"}}`.
pub fn reference_value(block_document_id: Uuid) -> Value {
    let mut inner = Map::new();
    inner.insert(
        BLOCK_DOCUMENT_ID.to_owned(),
        Value::String(block_document_id.to_string()),
    );
    let mut holder = Map::new();
    holder.insert(REF_KEY.to_owned(), Value::Object(inner));
    Value::Object(holder)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ID: &str = "6f1e7b3c-9b0d-4c5e-8a43-2f3b8d1c0a11";

    fn refs_of(v: Value) -> Result<References, ReferenceError> {
        let Value::Object(map) = v else {
            panic!("not an object")
        };
        split_references(map).map(|(_, r)| r)
    }

    #[test]
    fn splits_top_level_references_only() {
        let data = json!({
            "bucket": "b",
            "gcp_credentials": {"$ref": {"block_document_id": ID}},
            "deep": {"x": {"$ref": {"block_document_id": ID}}},
            "list": [{"$ref": {"block_document_id": ID}}]
        });
        let (plain, refs) = split_references(data.as_object().unwrap().clone()).unwrap();
        assert_eq!(
            refs,
            vec![("gcp_credentials".to_owned(), Uuid::parse_str(ID).unwrap())]
        );
        assert_eq!(
            Value::Object(plain),
            json!({"bucket": "b", "deep": {"x": {"$ref": {"block_document_id": ID}}},
                   "list": [{"$ref": {"block_document_id": ID}}]})
        );
    }

    #[test]
    fn malformed_references_name_the_field() {
        let missing = refs_of(json!({"child": {"$ref": {}}})).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "Received block reference without a block_document_id in key child"
        );
        let bad_id =
            refs_of(json!({"child": {"$ref": {"block_document_id": "nope"}}})).unwrap_err();
        assert!(matches!(bad_id, ReferenceError::InvalidId { .. }));
        assert_eq!(bad_id.field(), "child");
        let not_obj = refs_of(json!({"child": {"$ref": "#/definitions/X"}})).unwrap_err();
        assert!(matches!(not_obj, ReferenceError::Malformed { .. }));
        let extra =
            refs_of(json!({"child": {"$ref": {"block_document_id": ID}, "x": 1}})).unwrap_err();
        assert!(matches!(extra, ReferenceError::Malformed { .. }));
        let extra_inner =
            refs_of(json!({"child": {"$ref": {"block_document_id": ID, "x": 1}}})).unwrap_err();
        assert!(matches!(extra_inner, ReferenceError::Malformed { .. }));
        let numeric = refs_of(json!({"child": {"$ref": {"block_document_id": 5}}})).unwrap_err();
        assert!(matches!(numeric, ReferenceError::InvalidId { .. }));
    }

    #[test]
    fn reference_value_round_trips() {
        let id = Uuid::new_v4();
        let data = json!({"c": reference_value(id)});
        assert_eq!(refs_of(data).unwrap(), vec![("c".to_owned(), id)]);
        assert!(is_reference(&reference_value(id)));
        assert!(!is_reference(&json!({"a": 1})));
    }
}
