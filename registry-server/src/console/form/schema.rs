//! Reading a block schema for the form: `$ref`/`allOf` resolution with cycle and depth
//! bounds, and the one classification ([`Shape`]) that rendering and decoding share.

use std::collections::HashMap;

use block_types::SecretPath;
use block_types::secret_fields::secret_paths_of;
use serde_json::{Map, Value};

/// How deep the form follows nested objects, arrays and choices before it falls back to a
/// JSON textarea.
pub(super) const MAX_DEPTH: usize = 16;

/// The most rows an array or dictionary may submit.
pub(super) const MAX_ROWS: usize = 1000;

/// What kind of JSON a JSON textarea wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JsonKind {
    Any,
    Object,
    Array,
}

impl JsonKind {
    pub(super) fn describe(self) -> &'static str {
        match self {
            Self::Any => "JSON value",
            Self::Object => "JSON object",
            Self::Array => "JSON array",
        }
    }
}

/// Plain one-line inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TextKind {
    Text,
    Url,
    Email,
    Date,
    DateTime,
    Integer,
    Number,
}

/// A property of an object, in display order.
#[derive(Debug, Clone)]
pub(super) struct Prop {
    pub(super) key: String,
    pub(super) schema: Value,
    pub(super) required: bool,
}

/// What a value of a (resolved) schema is shown as; rendering and decoding both match on
/// it, so they cannot disagree.
#[derive(Debug, Clone)]
pub(super) enum Shape {
    Text(TextKind),
    Boolean,
    Enum(Vec<Value>),
    /// A stored document of the type with this slug; whether `null` may be chosen.
    Reference(String, bool),
    Object(Vec<Prop>),
    /// Key/value rows; the schema of the values (always row-friendly).
    Dict(Value),
    /// Rows; the schema of the items.
    Array(Value),
    Json(JsonKind),
    /// Non-null alternatives, and whether `null` is one of the choices.
    Choice(Vec<Value>, bool),
    Null,
    /// A secret string: a password input.
    Password,
    /// A secret anything else: one JSON textarea.
    SecretJson(JsonKind),
}

/// A schema resolved at one place of the form.
#[derive(Debug, Clone)]
pub(super) struct Resolved {
    /// The schema with `$ref`s and single `allOf`s merged in.
    pub(super) schema: Value,
    /// `$ref`s followed from the root to here (cycle guard).
    pub(super) stack: Vec<String>,
    /// A `$ref` led back to one of its ancestors.
    pub(super) cyclic: bool,
}

/// A block schema's `fields` as the form reads it.
pub(super) struct Schema<'a> {
    pub(super) root: &'a Value,
    secrets: Vec<SecretPath>,
    top_refs: HashMap<String, String>,
}

impl<'a> Schema<'a> {
    pub(super) fn new(root: &'a Value) -> Self {
        let mut top_refs = HashMap::new();
        if let Some(refs) = root
            .get("block_schema_references")
            .and_then(Value::as_object)
        {
            for (field, entry) in refs {
                let slug = match entry {
                    Value::Array(items) => items
                        .first()
                        .and_then(|e| e.get("block_type_slug"))
                        .and_then(Value::as_str),
                    other => other.get("block_type_slug").and_then(Value::as_str),
                };
                if let Some(slug) = slug {
                    top_refs.insert(field.clone(), slug.to_owned());
                }
            }
        }
        Self {
            root,
            secrets: secret_paths_of(root),
            top_refs,
        }
    }

    /// The top-level properties in display order.
    pub(super) fn top(&self) -> Vec<Prop> {
        properties(self.root)
    }

    fn definition(&self, reference: &str) -> Option<&'a Value> {
        let rest = reference.strip_prefix("#/")?;
        let mut current = self.root;
        for segment in rest.split('/') {
            let segment = segment.replace("~1", "/").replace("~0", "~");
            current = current.get(segment.as_str())?;
        }
        Some(current)
    }

    /// Follows `$ref`s and single-element `allOf`s; keys next to a `$ref` (title,
    /// description, default) win over the definition's.
    pub(super) fn resolve(&self, schema: &Value, stack: &[String]) -> Resolved {
        let mut stack = stack.to_vec();
        let mut current = schema.clone();
        for _ in 0..MAX_DEPTH {
            let Some(object) = current.as_object() else {
                break;
            };
            if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
                if stack.iter().any(|s| s == reference) {
                    return Resolved {
                        schema: current,
                        stack,
                        cyclic: true,
                    };
                }
                let Some(target) = self.definition(reference) else {
                    break;
                };
                stack.push(reference.to_owned());
                let mut merged = target.as_object().cloned().unwrap_or_default();
                for (k, v) in object {
                    if k != "$ref" {
                        merged.insert(k.clone(), v.clone());
                    }
                }
                current = Value::Object(merged);
                continue;
            }
            if let Some(Value::Array(all)) = object.get("allOf") {
                let mut merged = Map::new();
                for part in all {
                    let part = self.resolve(part, &stack);
                    if part.cyclic {
                        return part;
                    }
                    stack = part.stack;
                    merge_into(&mut merged, part.schema);
                }
                for (k, v) in object {
                    if k != "allOf" {
                        merged.insert(k.clone(), v.clone());
                    }
                }
                current = Value::Object(merged);
                continue;
            }
            break;
        }
        Resolved {
            schema: current,
            stack,
            cyclic: false,
        }
    }

    /// Whether the value at `api` (data keys from the top) is secret.
    pub(super) fn is_secret(&self, api: &[String], resolved: &Value) -> bool {
        let here = SecretPath {
            segments: api.to_vec(),
            wildcard: false,
        };
        self.secrets.iter().any(|s| s.covers(&here)) || marked(resolved)
    }

    /// The shape of the value at `api`, whose schema resolved to `resolved`.
    pub(super) fn shape(&self, resolved: &Resolved, api: &[String], depth: usize) -> Shape {
        let secret = self.is_secret(api, &resolved.schema);
        let base = if resolved.cyclic || depth > MAX_DEPTH {
            Shape::Json(JsonKind::Any)
        } else {
            self.base_shape(&resolved.schema, api)
        };
        if !secret {
            if let Shape::Choice(alternatives, nullable) = &base
                && let [only] = alternatives.as_slice()
                && let Shape::Reference(slug, _) =
                    self.shape(&self.resolve(only, &resolved.stack), api, depth)
            {
                return Shape::Reference(slug, *nullable);
            }
            return base;
        }
        match base {
            Shape::Text(_) | Shape::Enum(_) | Shape::Password => Shape::Password,
            Shape::Choice(alternatives, _) if alternatives.len() == 1 => {
                // `X | None` kept secret: one secret input, empty meaning "no value".
                let inner = self.resolve(&alternatives[0], &resolved.stack);
                self.shape(&inner, api, depth)
            }
            Shape::Choice(alternatives, nullable) => Shape::Choice(alternatives, nullable),
            Shape::Null => Shape::Null,
            Shape::Object(_) | Shape::Dict(_) | Shape::Json(JsonKind::Object) => {
                Shape::SecretJson(JsonKind::Object)
            }
            Shape::Array(_) | Shape::Json(JsonKind::Array) => Shape::SecretJson(JsonKind::Array),
            Shape::SecretJson(kind) => Shape::SecretJson(kind),
            Shape::Boolean | Shape::Reference(..) | Shape::Json(JsonKind::Any) => {
                Shape::SecretJson(JsonKind::Any)
            }
        }
    }

    fn base_shape(&self, schema: &Value, api: &[String]) -> Shape {
        let Some(object) = schema.as_object() else {
            // `true` / anything-goes.
            return Shape::Json(JsonKind::Any);
        };
        if !api.is_empty() {
            if let Some(slug) = object.get("block_type_slug").and_then(Value::as_str) {
                return Shape::Reference(slug.to_owned(), false);
            }
            if api.len() == 1
                && object.get("$ref").is_some()
                && let Some(slug) = self.top_refs.get(&api[0])
            {
                return Shape::Reference(slug.clone(), false);
            }
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(Value::Array(alternatives)) = object.get(key) {
                return choice(alternatives.clone());
            }
        }
        if let Some(Value::Array(types)) = object.get("type") {
            let alternatives = types
                .iter()
                .map(|t| {
                    let mut one = object.clone();
                    one.insert("type".to_owned(), t.clone());
                    for k in ["title", "description", "default"] {
                        one.remove(k);
                    }
                    Value::Object(one)
                })
                .collect();
            return choice(alternatives);
        }
        if let Some(constant) = object.get("const") {
            return Shape::Enum(vec![constant.clone()]);
        }
        if let Some(Value::Array(options)) = object.get("enum") {
            if options.iter().all(Value::is_null) {
                return Shape::Null;
            }
            return Shape::Enum(options.clone());
        }
        match object.get("type").and_then(Value::as_str) {
            Some("string") => Shape::Text(match object.get("format").and_then(Value::as_str) {
                Some("date-time") => TextKind::DateTime,
                Some("date") => TextKind::Date,
                Some("uri" | "url" | "uri-reference" | "iri" | "iri-reference") => TextKind::Url,
                Some("email" | "idn-email") => TextKind::Email,
                _ => TextKind::Text,
            }),
            Some("integer") => Shape::Text(TextKind::Integer),
            Some("number") => Shape::Text(TextKind::Number),
            Some("boolean") => Shape::Boolean,
            Some("null") => Shape::Null,
            Some("array") => match object.get("items") {
                Some(items @ Value::Object(_)) if !object.contains_key("prefixItems") => {
                    Shape::Array(items.clone())
                }
                _ => Shape::Json(JsonKind::Array),
            },
            Some("object") => {
                if object
                    .get("properties")
                    .and_then(Value::as_object)
                    .is_some_and(|p| !p.is_empty())
                {
                    return Shape::Object(properties(schema));
                }
                match object.get("additionalProperties") {
                    Some(values) if self.row_friendly(values) => Shape::Dict(values.clone()),
                    _ => Shape::Json(JsonKind::Object),
                }
            }
            _ => {
                if object.get("properties").is_some() {
                    Shape::Object(properties(schema))
                } else {
                    Shape::Json(JsonKind::Any)
                }
            }
        }
    }

    /// Whether dictionary values of this schema fit in a row: scalars, enums, or a choice
    /// of those (with null).
    fn row_friendly(&self, values: &Value) -> bool {
        let resolved = self.resolve(values, &[]);
        if resolved.cyclic {
            return false;
        }
        match self.base_shape(&resolved.schema, &[]) {
            Shape::Text(_) | Shape::Boolean | Shape::Enum(_) => true,
            Shape::Choice(alternatives, _) => alternatives.iter().all(|a| {
                let a = self.resolve(a, &[]);
                !a.cyclic
                    && matches!(
                        self.base_shape(&a.schema, &[]),
                        Shape::Text(_) | Shape::Boolean | Shape::Enum(_)
                    )
            }),
            _ => false,
        }
    }
}

/// Whether a schema marks itself secret (Pydantic's `SecretStr` and friends).
fn marked(schema: &Value) -> bool {
    schema.get("writeOnly").and_then(Value::as_bool) == Some(true)
        || schema.get("format").and_then(Value::as_str) == Some("password")
}

fn choice(alternatives: Vec<Value>) -> Shape {
    let mut nullable = false;
    let mut rest = Vec::new();
    for alternative in alternatives {
        let is_null = alternative.get("type").and_then(Value::as_str) == Some("null")
            || alternative.get("const").is_some_and(Value::is_null)
            || alternative
                .get("enum")
                .and_then(Value::as_array)
                .is_some_and(|e| !e.is_empty() && e.iter().all(Value::is_null));
        if is_null {
            nullable = true;
        } else {
            rest.push(alternative);
        }
    }
    if rest.is_empty() {
        return Shape::Null;
    }
    Shape::Choice(rest, nullable)
}

fn merge_into(merged: &mut Map<String, Value>, part: Value) {
    let Value::Object(part) = part else {
        return;
    };
    for (k, v) in part {
        match (k.as_str(), merged.get_mut(&k), v) {
            ("properties", Some(Value::Object(existing)), Value::Object(more)) => {
                existing.extend(more);
            }
            ("required", Some(Value::Array(existing)), Value::Array(more)) => {
                existing.extend(more);
            }
            (_, _, v) => {
                merged.insert(k, v);
            }
        }
    }
}

/// An object schema's properties, by `position` when the schema has positions, else in
/// schema order.
pub(super) fn properties(schema: &Value) -> Vec<Prop> {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut props: Vec<Prop> = schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| {
            p.iter()
                .map(|(key, schema)| Prop {
                    key: key.clone(),
                    schema: schema.clone(),
                    required: required.contains(&key.as_str()),
                })
                .collect()
        })
        .unwrap_or_default();
    props.sort_by_key(|p| {
        p.schema
            .get("position")
            .and_then(Value::as_i64)
            .unwrap_or(i64::MAX)
    });
    props
}

/// `service_account_info` → `Service Account Info`.
pub(super) fn humanize(key: &str) -> String {
    key.split(['_', '-'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect::<String>(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A short name for an alternative of a choice.
pub(super) fn alternative_label(original: &Value, resolved: &Value, shape: &Shape) -> String {
    if let Some(title) = original
        .get("title")
        .or_else(|| resolved.get("title"))
        .and_then(Value::as_str)
    {
        return title.to_owned();
    }
    match shape {
        Shape::Text(TextKind::Integer) => "Integer",
        Shape::Text(TextKind::Number) => "Number",
        Shape::Text(TextKind::DateTime) => "Date and time",
        Shape::Text(TextKind::Url) => "URL",
        Shape::Text(_) => "Text",
        Shape::Password => "Secret text",
        Shape::Boolean => "Yes/no",
        Shape::Enum(_) => "One of the options",
        Shape::Reference(..) => "Stored block",
        Shape::Object(_) => "Object",
        Shape::Dict(_) => "Dictionary",
        Shape::Array(_) => "List",
        Shape::Json(kind) | Shape::SecretJson(kind) => kind.describe(),
        Shape::Choice(..) => "Choice",
        Shape::Null => "None",
    }
    .to_owned()
}

/// Whether `value` fits an alternative of this shape (the renderer's pick of the
/// selected alternative; the decoder never needs it).
pub(super) fn fits(shape: &Shape, value: &Value, resolved: &Value) -> bool {
    match (shape, value) {
        (Shape::Json(JsonKind::Any) | Shape::SecretJson(JsonKind::Any), _) => true,
        (_, Value::Null) => matches!(shape, Shape::Null),
        (Shape::Text(TextKind::Integer), Value::Number(n)) => n.is_i64() || n.is_u64(),
        (Shape::Text(TextKind::Number), Value::Number(_)) => true,
        (Shape::Text(TextKind::Integer | TextKind::Number), _) => false,
        (Shape::Text(_) | Shape::Password, Value::String(_)) => true,
        (Shape::Boolean, Value::Bool(_)) => true,
        (Shape::Enum(options), v) => options.contains(v),
        (Shape::Reference(..), Value::Object(o)) => o.contains_key("$ref"),
        (Shape::Object(props), Value::Object(o)) => {
            !o.contains_key("$ref")
                && o.keys().all(|k| props.iter().any(|p| &p.key == k))
                && props
                    .iter()
                    .filter(|p| p.required)
                    .all(|p| o.contains_key(&p.key))
                && resolved.get("type").and_then(Value::as_str) != Some("array")
        }
        (
            Shape::Dict(_) | Shape::Json(JsonKind::Object) | Shape::SecretJson(JsonKind::Object),
            Value::Object(o),
        ) => !o.contains_key("$ref"),
        (
            Shape::Array(_) | Shape::Json(JsonKind::Array) | Shape::SecretJson(JsonKind::Array),
            Value::Array(_),
        ) => true,
        (Shape::Choice(..), _) => true,
        _ => false,
    }
}
