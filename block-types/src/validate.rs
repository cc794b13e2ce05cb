//! Checks on names, slugs, URLs and block data.
//!
//! Block data is validated against its schema's `fields` with the `jsonschema` crate
//! (draft 7, as Prefect's schemas use `definitions`). Error messages name the field path
//! and the problem, and never quote the offending value: it may be a secret.

use jsonschema::error::ValidationErrorKind;
use jsonschema::{Draft, Validator};
use serde_json::{Map, Value};

use crate::error::FieldError;

/// Characters Prefect bans from names.
pub const BANNED_CHARACTERS: [char; 5] = ['/', '%', '&', '>', '<'];

/// The longest name, slug or schema version, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// `value` is at most [`MAX_NAME_BYTES`] long.
pub fn bounded(field: &str, what: &str, value: &str) -> Result<(), FieldError> {
    if value.len() > MAX_NAME_BYTES {
        return Err(FieldError::new(
            field,
            format!("{what} must be at most {MAX_NAME_BYTES} bytes."),
        ));
    }
    Ok(())
}

fn lowercase_dashes(field: &str, what: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(field, format!("{what} must not be empty.")));
    }
    bounded(field, what, value)?;
    if !value
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(FieldError::new(
            field,
            format!("{what} must only contain lowercase letters, numbers, and dashes."),
        ));
    }
    Ok(())
}

/// A block document name: non-empty, lowercase letters, digits and dashes (`zoom-gcs`).
pub fn block_document_name(name: &str) -> Result<(), FieldError> {
    lowercase_dashes("name", "Block document name", name)
}

/// A block type slug: non-empty, lowercase letters, digits and dashes (`gcs-bucket`).
pub fn block_type_slug(slug: &str) -> Result<(), FieldError> {
    lowercase_dashes("slug", "Block type slug", slug)
}

/// A block type name: not blank, none of `/ % & > <`, and not starting with "prefect"
/// (reserved, as in Prefect).
pub fn block_type_name(name: &str) -> Result<(), FieldError> {
    if name.trim().is_empty() {
        return Err(FieldError::new(
            "name",
            "Block type name must not be empty.",
        ));
    }
    if name.contains(BANNED_CHARACTERS) {
        return Err(FieldError::new(
            "name",
            "Block type name must not contain any of: '/', '%', '&', '>', '<'.",
        ));
    }
    bounded("name", "Block type name", name)
}

/// Whether a block type name is reserved (it starts with "prefect", in any case).
pub fn is_reserved_block_type_name(name: &str) -> bool {
    name.to_lowercase().starts_with("prefect")
}

/// An optional URL field (`logo_url`, `documentation_url`): absent, or an absolute
/// `http`/`https` URL with a host (Prefect's client parses these as `HttpUrl`).
pub fn http_url(field: &str, value: Option<&str>) -> Result<(), FieldError> {
    let Some(value) = value else {
        return Ok(());
    };
    let url = url::Url::parse(value)
        .map_err(|e| FieldError::new(field, format!("must be an absolute http(s) URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(FieldError::new(field, "must be an absolute http(s) URL"));
    }
    Ok(())
}

/// A block schema compiled for validating document data. Compile once, validate often.
#[derive(Debug)]
pub struct DataValidator {
    validator: Validator,
}

impl DataValidator {
    /// Compiles a block schema's `fields`. Fails when the schema itself is not a valid
    /// JSON Schema.
    ///
    /// Two leniencies keep every Prefect client's data valid, as Prefect's own server (which
    /// does not validate data at all) would take it:
    /// - a property that is not `required` also accepts `null`: Prefect 2 clients describe
    ///   `Optional[X] = None` as plain `X` but send explicit nulls;
    /// - `format` is an annotation, not an assertion (as draft 7 allows): Python writes
    ///   naive date-times and its own regex syntax, which strict checks would refuse;
    /// - a `#/definitions/X` reference whose definition is missing accepts anything: the
    ///   Prefect server drops empty definitions (Secret's `"JsonValue": {}`) when it stores a
    ///   schema, so schemas read back from it reference a definition they no longer hold.
    pub fn new(fields: &Value) -> Result<Self, FieldError> {
        let mut lenient = fields.clone();
        allow_null_when_optional(&mut lenient);
        define_missing_references(&mut lenient);
        let validator = jsonschema::options()
            .with_draft(Draft::Draft7)
            .should_validate_formats(false)
            .build(&lenient)
            .map_err(|e| {
                FieldError::new(
                    "fields",
                    format!(
                        "is not a valid JSON Schema at {}: {}",
                        pointer_to_path(e.schema_path().as_str()),
                        describe(e.kind())
                    ),
                )
            })?;
        Ok(Self { validator })
    }

    /// Validates document data. `reference_fields` are top-level fields that hold
    /// references to other documents: they are validated by their own schemas, so here
    /// they are neither checked nor required. Returns every problem found.
    pub fn validate(
        &self,
        data: &Map<String, Value>,
        reference_fields: &[&str],
    ) -> Result<(), Vec<FieldError>> {
        self.validate_without(data, reference_fields, &[])
    }

    /// [`Self::validate`] without the values at `skipped` (each a list of object keys):
    /// they are left out, and their absence is no error. A secret kept from an earlier
    /// version is skipped, so no answer to a write depends on a value the writer cannot
    /// read (it was validated when it was written).
    pub fn validate_without(
        &self,
        data: &Map<String, Value>,
        reference_fields: &[&str],
        skipped: &[Vec<String>],
    ) -> Result<(), Vec<FieldError>> {
        let mut instance: Map<String, Value> = data
            .iter()
            .filter(|(k, _)| !reference_fields.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for path in skipped {
            remove_path(&mut instance, path);
        }
        let instance = Value::Object(instance);
        let errors: Vec<FieldError> = self
            .validator
            .iter_errors(&instance)
            .filter(|e| {
                let ValidationErrorKind::Required { property } = e.kind() else {
                    return true;
                };
                let Some(property) = property.as_str() else {
                    return true;
                };
                let at = e.instance_path().as_str();
                let is_root = at.is_empty();
                if is_root && reference_fields.contains(&property) {
                    return false;
                }
                let mut missing: Vec<String> = at
                    .split('/')
                    .skip(1)
                    .map(|s| s.replace("~1", "/").replace("~0", "~"))
                    .collect();
                missing.push(property.to_owned());
                !skipped.contains(&missing)
            })
            .map(|e| {
                FieldError::new(
                    pointer_to_path(e.instance_path().as_str()),
                    describe(e.kind()),
                )
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// Removes the value at `path` (object keys) from `data`, if it is there.
fn remove_path(data: &mut Map<String, Value>, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = data;
    for key in parents {
        match current.get_mut(key) {
            Some(Value::Object(next)) => current = next,
            _ => return,
        }
    }
    current.shift_remove(last);
}

/// Wraps every property that its object schema does not require as
/// `{"anyOf": [property, {"type": "null"}]}`, at every depth (definitions included).
fn allow_null_when_optional(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            for value in map.values_mut() {
                allow_null_when_optional(value);
            }
            let required: Vec<String> = map
                .get("required")
                .and_then(Value::as_array)
                .map(|r| {
                    r.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            if let Some(Value::Object(properties)) = map.get_mut("properties") {
                for (name, property) in properties.iter_mut() {
                    if !required.contains(name) && property.is_object() {
                        let original = std::mem::take(property);
                        *property = serde_json::json!({"anyOf": [original, {"type": "null"}]});
                    }
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(allow_null_when_optional),
        _ => {}
    }
}

/// `/a/b~1c` → `a.b/c`.
fn pointer_to_path(pointer: &str) -> String {
    pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect::<Vec<_>>()
        .join(".")
}

/// A description of a validation failure that never quotes the instance value.
fn describe(kind: &ValidationErrorKind) -> String {
    use ValidationErrorKind as K;
    match kind {
        K::Required { property } => match property.as_str() {
            Some(p) => format!("missing required field '{p}'"),
            None => "a required field is missing".to_owned(),
        },
        K::Type { kind } => {
            let expected: Vec<String> = match kind {
                jsonschema::error::TypeKind::Single(t) => vec![t.to_string()],
                jsonschema::error::TypeKind::Multiple(set) => {
                    set.iter().map(|t| t.to_string()).collect()
                }
            };
            format!("must be of type {}", expected.join(" or "))
        }
        K::Enum { options } => format!("must be one of {options}"),
        K::Constant { expected_value } => format!("must be {expected_value}"),
        K::AnyOf { context } => {
            // `X or null` (optional properties): describe the X branch's own problem.
            let is_null_branch = |errors: &Vec<jsonschema::ValidationError<'static>>| {
                errors.len() == 1
                    && matches!(errors[0].kind(), K::Type { kind: jsonschema::error::TypeKind::Single(t) } if t.to_string() == "null")
            };
            let real: Vec<_> = context
                .iter()
                .filter(|errors| !is_null_branch(errors))
                .collect();
            match real.as_slice() {
                [errors] if !errors.is_empty() => describe(errors[0].kind()),
                _ => "does not match any of the allowed shapes (anyOf)".to_owned(),
            }
        }
        K::OneOfNotValid { .. } => "does not match any of the allowed shapes (oneOf)".to_owned(),
        K::OneOfMultipleValid { .. } => "matches more than one of the shapes of oneOf".to_owned(),
        K::Format { format } => format!("is not a valid {format}"),
        K::AdditionalProperties { unexpected } => {
            format!("has unexpected properties: {}", unexpected.join(", "))
        }
        K::Minimum { limit } => format!("must be at least {limit}"),
        K::Maximum { limit } => format!("must be at most {limit}"),
        K::ExclusiveMinimum { limit } => format!("must be greater than {limit}"),
        K::ExclusiveMaximum { limit } => format!("must be less than {limit}"),
        K::MinLength { limit } => format!("must be at least {limit} characters long"),
        K::MaxLength { limit } => format!("must be at most {limit} characters long"),
        K::MinItems { limit } => format!("must have at least {limit} items"),
        K::MaxItems { limit } => format!("must have at most {limit} items"),
        K::MinProperties { limit } => format!("must have at least {limit} properties"),
        K::MaxProperties { limit } => format!("must have at most {limit} properties"),
        K::Pattern { pattern } => format!("must match the pattern {pattern}"),
        K::UniqueItems => "must not contain duplicate items".to_owned(),
        K::FalseSchema => "is not allowed here".to_owned(),
        K::Custom { message, .. } => message.clone(),
        K::Referencing(e) => format!("the schema has an unresolvable reference: {e}"),
        _ => "does not match its schema".to_owned(),
    }
}

/// Fills absent top-level fields that have a `default` in the schema's `properties`.
pub fn apply_defaults(fields: &Value, data: &mut Map<String, Value>) {
    let Some(properties) = fields.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (name, property) in properties {
        if let Some(default) = property.get("default") {
            data.entry(name.clone()).or_insert_with(|| default.clone());
        }
    }
}

/// Adds an empty (accept-anything) definition for every `#/definitions/X` that `schema`
/// references but does not define.
fn define_missing_references(schema: &mut Value) {
    fn collect(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(target)) = map.get("$ref")
                    && let Some(name) = target.strip_prefix("#/definitions/")
                {
                    out.push(name.to_owned());
                }
                map.values().for_each(|v| collect(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    let mut referenced = Vec::new();
    collect(schema, &mut referenced);
    let Value::Object(root) = schema else { return };
    for name in referenced {
        // A JSON pointer segment: `~1` is `/`, `~0` is `~`.
        let name = name.replace("~1", "/").replace("~0", "~");
        if name.contains('/') {
            continue;
        }
        let definitions = root
            .entry("definitions")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(definitions) = definitions {
            definitions
                .entry(name)
                .or_insert_with(|| Value::Object(Map::new()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::secret_fields::obj;

    #[test]
    fn a_reference_to_a_dropped_empty_definition_accepts_anything() {
        // Secret's schema as the Prefect 3.9.1 server returns it: "JsonValue" is referenced
        // but its (empty) definition was dropped when the server stored the schema.
        let fields = json!({"type": "object", "properties": {"value": {"anyOf": [
            {"type": "string", "format": "password", "writeOnly": true},
            {"title": "string", "type": "string"},
            {"$ref": "#/definitions/JsonValue", "title": "JSON"}]}}, "required": ["value"]});
        let validator = DataValidator::new(&fields).unwrap();
        validator
            .validate(
                &obj(json!({"value": {"username": "u", "password": "p"}})),
                &[],
            )
            .unwrap();
        validator
            .validate(&obj(json!({"value": "s"})), &[])
            .unwrap();
        assert!(validator.validate(&obj(json!({})), &[]).is_err());
        // A reference into another document is still refused.
        let remote = json!({"properties": {"a": {"$ref": "https://example.com/schema.json"}}});
        assert!(DataValidator::new(&remote).is_err());
    }

    #[test]
    fn names_and_slugs() {
        assert!(block_document_name("zoom-gcs-2").is_ok());
        for bad in ["Zoom", "zoom_gcs", "zoom gcs", "zoom/gcs", "", "zöom"] {
            let err = block_document_name(bad).unwrap_err();
            assert_eq!(err.field, "name", "{bad}");
        }
        assert!(block_type_slug("gcs-bucket").is_ok());
        assert!(block_type_slug("GCS").is_err());
        assert!(block_type_name("GCS Bucket").is_ok());
        for bad in ["a/b", "50%", "a & b", "<x>", "  "] {
            assert!(block_type_name(bad).is_err(), "{bad}");
        }
        assert!(is_reserved_block_type_name("PrefectThing"));
        assert!(!is_reserved_block_type_name("Perfect"));
    }

    #[test]
    fn urls() {
        assert!(http_url("logo_url", None).is_ok());
        assert!(http_url("logo_url", Some("https://example.com/logo.png")).is_ok());
        for bad in [
            "not a url",
            "ftp://x.io/a",
            "https://",
            "file:///etc/passwd",
            "/relative",
        ] {
            assert_eq!(
                http_url("logo_url", Some(bad)).unwrap_err().field,
                "logo_url",
                "{bad}"
            );
        }
    }

    fn connector_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "connection_info": {"anyOf": [{"$ref": "#/definitions/ConnectionComponents"}, {"type": "string"}]},
                "fetch_size": {"type": "integer", "default": 1},
                "child": {"$ref": "#/definitions/Child"}
            },
            "required": ["connection_info", "child"],
            "definitions": {
                "ConnectionComponents": {
                    "type": "object",
                    "properties": {
                        "driver": {"type": "string"},
                        "port": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": null},
                        "password": {"anyOf": [{"type": "string", "format": "password", "writeOnly": true}, {"type": "null"}]}
                    },
                    "required": ["driver"]
                },
                "Child": {"block_type_slug": "child", "type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}
            }
        })
    }

    #[test]
    fn data_validation_names_paths_and_follows_definitions() {
        let v = DataValidator::new(&connector_schema()).unwrap();
        let ok = obj(
            json!({"connection_info": {"driver": "postgresql+psycopg2", "port": 5432}, "child": {"x": "y"}}),
        );
        assert!(v.validate(&ok, &[]).is_ok());
        let url_form = obj(json!({"connection_info": "postgresql://u@h/db", "child": {"x": "y"}}));
        assert!(v.validate(&url_form, &[]).is_ok());

        let errors = v
            .validate(&obj(json!({"connection_info": {"port": 5432}, "fetch_size": "x", "child": {"x": "y"}})), &[])
            .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"connection_info"), "{errors:?}");
        assert!(fields.contains(&"fetch_size"), "{errors:?}");
        let fetch = errors.iter().find(|e| e.field == "fetch_size").unwrap();
        assert_eq!(fetch.message, "must be of type integer");

        let missing = v
            .validate(&obj(json!({"child": {"x": "y"}})), &[])
            .unwrap_err();
        assert_eq!(missing[0].field, "");
        assert_eq!(
            missing[0].message,
            "missing required field 'connection_info'"
        );
    }

    #[test]
    fn reference_fields_are_neither_checked_nor_required() {
        let v = DataValidator::new(&connector_schema()).unwrap();
        let data = obj(json!({"connection_info": "x://"}));
        assert!(v.validate(&data, &[]).is_err());
        assert!(v.validate(&data, &["child"]).is_ok());
        let with_ref = obj(
            json!({"connection_info": "x://", "child": {"$ref": {"block_document_id": "00000000-0000-0000-0000-000000000000"}}}),
        );
        assert!(v.validate(&with_ref, &["child"]).is_ok());
    }

    #[test]
    fn errors_never_quote_values() {
        let canary = "canary-secret-81d2";
        let v = DataValidator::new(&json!({
            "type": "object",
            "properties": {"password": {"type": "integer"}, "mode": {"enum": ["a", "b"]}, "when": {"type": "string", "pattern": "^[0-9]+$"}}
        }))
        .unwrap();
        let errors = v
            .validate(
                &obj(json!({"password": canary, "mode": canary, "when": canary})),
                &[],
            )
            .unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        for e in errors {
            assert!(!e.to_string().contains(canary), "{e}");
        }
    }

    #[test]
    fn optional_properties_accept_null_and_formats_are_annotations() {
        // A Prefect 2 (pydantic v1) schema: Optional[str] = None is written as a plain string.
        let v = DataValidator::new(&json!({
            "type": "object",
            "properties": {
                "basepath": {"type": "string"},
                "when": {"type": "string", "format": "date-time"},
                "nested": {"$ref": "#/definitions/N"}
            },
            "required": ["when"],
            "definitions": {"N": {"type": "object", "properties": {"port": {"type": "integer"}}}}
        }))
        .unwrap();
        assert!(v.validate(&obj(json!({"basepath": null, "when": "2024-01-01T00:00:00", "nested": {"port": null}})), &[]).is_ok());
        let errors = v.validate(&obj(json!({"when": null})), &[]).unwrap_err();
        assert_eq!(
            errors[0].field, "when",
            "a required property still refuses null"
        );
    }

    #[test]
    fn invalid_schemas_are_reported() {
        let err = DataValidator::new(&json!({"type": "nonsense"})).unwrap_err();
        assert_eq!(err.field, "fields");
    }

    #[test]
    fn defaults_fill_absent_fields_only() {
        let schema = connector_schema();
        let mut data = obj(json!({"connection_info": "x"}));
        apply_defaults(&schema, &mut data);
        assert_eq!(data["fetch_size"], json!(1));
        let mut data = obj(json!({"fetch_size": 7}));
        apply_defaults(&schema, &mut data);
        assert_eq!(data["fetch_size"], json!(7));
    }

    #[test]
    fn pointer_paths() {
        assert_eq!(pointer_to_path(""), "");
        assert_eq!(pointer_to_path("/a/b~1c/0"), "a.b/c.0");
    }
}
