//! Helpers that write built-in schemas in Prefect's shape.

use serde_json::{Map, Value, json};

use crate::block::BlockTypeInfo;

/// Where the built-in blocks are documented.
const DOCS_BASE: &str = "https://docs.rs/block-types/latest/block_types/catalog";

/// Metadata of a built-in block type whose Rust type is `rust_name`.
pub(super) fn type_info(
    name: &str,
    slug: &str,
    rust_name: &str,
    description: &str,
    code_example: &str,
) -> BlockTypeInfo {
    BlockTypeInfo {
        name: name.to_owned(),
        slug: slug.to_owned(),
        logo_url: None,
        documentation_url: Some(format!("{DOCS_BASE}/struct.{rust_name}.html")),
        description: Some(description.to_owned()),
        code_example: Some(code_example.trim().to_owned()),
        protected: false,
    }
}

/// A property: its title and description added to the given schema parts.
pub(super) fn prop(title: &str, description: &str, parts: Value) -> Value {
    let mut map = match parts {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    map.insert("title".into(), json!(title));
    map.insert("description".into(), json!(description));
    Value::Object(map)
}

/// `{"anyOf": [schema, {"type": "null"}]}`.
pub(super) fn nullable(schema: Value) -> Value {
    let mut map = Map::new();
    map.insert(
        "anyOf".into(),
        Value::Array(vec![schema, json!({"type": "null"})]),
    );
    Value::Object(map)
}

/// A secret string's schema.
pub(super) fn secret_string() -> Value {
    json!({"type": "string", "format": "password", "writeOnly": true})
}

/// A block schema: properties get their declaration `position`; `block_type_slug`,
/// `secret_fields` and an empty `block_schema_references` are added.
pub(super) fn block_schema(
    title: &str,
    slug: &str,
    description: &str,
    properties: Vec<(&str, Value)>,
    required: &[&str],
    secret_fields: &[&str],
) -> Value {
    let mut props = Map::new();
    for (position, (name, mut schema)) in properties.into_iter().enumerate() {
        if let Value::Object(map) = &mut schema {
            map.insert("position".into(), json!(position));
        }
        props.insert(name.to_owned(), schema);
    }
    let mut fields = Map::new();
    fields.insert("title".into(), json!(title));
    fields.insert("description".into(), json!(description));
    fields.insert("type".into(), json!("object"));
    fields.insert("properties".into(), Value::Object(props));
    if !required.is_empty() {
        fields.insert("required".into(), json!(required));
    }
    fields.insert("block_type_slug".into(), json!(slug));
    fields.insert("secret_fields".into(), json!(secret_fields));
    fields.insert("block_schema_references".into(), json!({}));
    Value::Object(fields)
}

/// An optional property: `anyOf [schema, null]` with a `null` default.
pub(super) fn optional(title: &str, description: &str, schema: Value) -> Value {
    let mut p = prop(title, description, nullable(schema));
    p["default"] = Value::Null;
    p
}
