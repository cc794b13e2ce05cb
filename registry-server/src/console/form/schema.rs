//! Reading a block schema for the form: `$ref`/`allOf` resolution with cycle and depth
//! bounds, and the one classification ([`Shape`]) that rendering and decoding share.

use std::collections::HashMap;

use block_types::SecretPath;
use block_types::secret_fields::secret_paths_of;
use serde_json::{Map, Value};

use super::model::option_value;

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
    /// A plain scalar or `null` (`Optional[str]`, `Optional[int]`, an optional enum or
    /// boolean): one input where empty means `null`. The scalar's shape (`Text`, `Enum` or
    /// `Boolean`) and its resolved schema.
    OrNull(Box<Shape>, Value),
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
                && let Some(collapsed) =
                    self.collapse(alternatives, *nullable, resolved, api, depth)
            {
                return collapsed;
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
            Shape::OrNull(..) => Shape::Password,
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

    /// A choice that is really one input: one stored-block picker, or one plain scalar
    /// (alternatives that would show the same widget count as one), with or without null.
    fn collapse(
        &self,
        alternatives: &[Value],
        nullable: bool,
        resolved: &Resolved,
        api: &[String],
        depth: usize,
    ) -> Option<Shape> {
        let mut shapes = alternatives.iter().map(|a| {
            let r = self.resolve(a, &resolved.stack);
            let shape = self.shape(&r, api, depth);
            (r, shape)
        });
        let (first, shape) = shapes.next()?;
        if let Shape::Reference(slug, _) = &shape {
            return (alternatives.len() == 1).then(|| Shape::Reference(slug.clone(), nullable));
        }
        if !shapes.all(|(_, other)| same_widget(&shape, &other)) {
            return None;
        }
        match shape {
            Shape::Text(_) | Shape::Boolean if nullable => {
                Some(Shape::OrNull(Box::new(shape), first.schema))
            }
            // `""` as an option would be the same as none.
            Shape::Enum(values)
                if nullable && !values.iter().any(|v| option_value(v).is_empty()) =>
            {
                Some(Shape::OrNull(Box::new(Shape::Enum(values)), first.schema))
            }
            Shape::Text(_) | Shape::Boolean | Shape::Enum(_) if !nullable => Some(shape),
            _ => None,
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
    for alternative in flatten(alternatives, 0) {
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
    if rest.len() > MAX_ALTERNATIVES {
        // Beyond what a person picks from (and what the form should spend time on): JSON.
        return Shape::Json(JsonKind::Any);
    }
    Shape::Choice(rest, nullable)
}

/// Alternatives a choice offers at most; a union of more is edited as JSON.
pub(crate) const MAX_ALTERNATIVES: usize = 64;

/// The alternatives with directly nested unions spliced in (`anyOf: [anyOf: [a, b], null]`,
/// as an optional union is often written, is the choice of `a`, `b` and null).
fn flatten(alternatives: Vec<Value>, depth: usize) -> Vec<Value> {
    let mut out = Vec::new();
    for alternative in alternatives {
        let nested = alternative.as_object().and_then(|o| {
            if o.contains_key("$ref") || o.contains_key("allOf") || o.contains_key("type") {
                return None;
            }
            ["anyOf", "oneOf"]
                .iter()
                .find_map(|k| o.get(*k).and_then(Value::as_array))
        });
        match nested {
            Some(inner) if depth < MAX_DEPTH => out.extend(flatten(inner.clone(), depth + 1)),
            _ => out.push(alternative),
        }
    }
    out
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

/// Titles that only repeat a JSON type (Pydantic writes `"title": "string"`) and say
/// nothing to a person.
const GENERIC_TITLES: [&str; 8] = [
    "string", "integer", "number", "boolean", "object", "array", "null", "json",
];

/// A short name for an alternative of a choice: its title (or its definition's), unless
/// that only names a JSON type; else what the shape accepts, in words.
pub(super) fn alternative_label(original: &Value, resolved: &Value, shape: &Shape) -> String {
    let title = original
        .get("title")
        .or_else(|| resolved.get("title"))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|t| !t.is_empty() && !GENERIC_TITLES.contains(&t.to_ascii_lowercase().as_str()));
    match title {
        Some(title) => spaced(title),
        None => shape_label(shape),
    }
}

/// `ConnectionComponents` → `Connection Components`; titles with spaces stay as they are.
fn spaced(title: &str) -> String {
    if title.contains(char::is_whitespace) {
        return title.to_owned();
    }
    let mut out = String::with_capacity(title.len() + 4);
    let mut previous_lower = false;
    for c in title.chars() {
        if c.is_uppercase() && previous_lower {
            out.push(' ');
        }
        previous_lower = c.is_lowercase() || c.is_ascii_digit();
        out.push(c);
    }
    out
}

/// At most `max` items joined by `, `, with `…` when some were left off.
fn some_of(items: impl Iterator<Item = String>, max: usize) -> String {
    let items: Vec<String> = items.collect();
    let mut out = items
        .iter()
        .take(max)
        .map(|s| {
            if s.chars().count() > 24 {
                format!("{}…", s.chars().take(23).collect::<String>())
            } else {
                s.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > max {
        out.push_str(", …");
    }
    out
}

/// What a shape accepts, in words.
pub(super) fn shape_label(shape: &Shape) -> String {
    match shape {
        Shape::Text(TextKind::Text) => "Text".to_owned(),
        Shape::Text(TextKind::Integer) => "Whole number".to_owned(),
        Shape::Text(TextKind::Number) => "Number".to_owned(),
        Shape::Text(TextKind::DateTime) => "Date and time".to_owned(),
        Shape::Text(TextKind::Date) => "Date".to_owned(),
        Shape::Text(TextKind::Url) => "URL".to_owned(),
        Shape::Text(TextKind::Email) => "Email address".to_owned(),
        Shape::Password => "Secret text".to_owned(),
        Shape::Boolean => "Yes/no".to_owned(),
        Shape::Enum(values) => match values.as_slice() {
            [only] => option_value(only),
            _ => format!("One of: {}", some_of(values.iter().map(option_value), 3)),
        },
        Shape::Reference(slug, _) => format!("Stored {}", humanize(slug)),
        Shape::Object(props) => format!(
            "Fields: {}",
            some_of(
                props.iter().map(|p| {
                    p.schema
                        .get("title")
                        .and_then(Value::as_str)
                        .map_or_else(|| humanize(&p.key), str::to_owned)
                }),
                3
            )
        ),
        Shape::Dict(_) => "Key/value pairs".to_owned(),
        Shape::Array(_) => "List".to_owned(),
        Shape::Json(JsonKind::Any) => "JSON".to_owned(),
        Shape::Json(JsonKind::Object) => "JSON object".to_owned(),
        Shape::Json(JsonKind::Array) => "JSON list".to_owned(),
        Shape::SecretJson(JsonKind::Any) => "Secret JSON".to_owned(),
        Shape::SecretJson(JsonKind::Object) => "Secret JSON object".to_owned(),
        Shape::SecretJson(JsonKind::Array) => "Secret JSON list".to_owned(),
        Shape::OrNull(inner, _) => shape_label(inner),
        Shape::Choice(..) => "One of several kinds".to_owned(),
        Shape::Null => "None".to_owned(),
    }
}

/// Whether two alternatives would show the same widget accepting the same values (a
/// `SecretStr` next to a `str` kept secret): the form shows only the first.
pub(super) fn same_widget(a: &Shape, b: &Shape) -> bool {
    match (a, b) {
        (Shape::Password, Shape::Password) | (Shape::Boolean, Shape::Boolean) => true,
        (Shape::Text(x), Shape::Text(y)) => x == y,
        (Shape::Json(x), Shape::Json(y)) | (Shape::SecretJson(x), Shape::SecretJson(y)) => x == y,
        (Shape::Enum(x), Shape::Enum(y)) => x == y,
        (Shape::Array(x), Shape::Array(y)) | (Shape::Dict(x), Shape::Dict(y)) => x == y,
        (Shape::OrNull(x, _), Shape::OrNull(y, _)) => same_widget(x, y),
        _ => false,
    }
}

/// Whether `value` fits an alternative of this shape (the renderer's pick of the
/// selected alternative; the decoder never needs it).
pub(super) fn fits(shape: &Shape, value: &Value, resolved: &Value) -> bool {
    match (shape, value) {
        (Shape::Json(JsonKind::Any) | Shape::SecretJson(JsonKind::Any), _) => true,
        (Shape::OrNull(inner, schema), v) => v.is_null() || fits(inner, v, schema),
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
