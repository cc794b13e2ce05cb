//! Block schema checksums, computed exactly as Prefect computes them.
//!
//! Prefect identifies a block schema by `sha256:<hex>` of a canonical JSON dump of its
//! `fields`. Clients compute it locally (to look a schema up by checksum) and servers
//! recompute it on create, so both sides must agree bit for bit. The canonical form is:
//!
//! 1. every object key named `secret_fields` removed, at any depth of nested objects
//!    (not inside arrays);
//! 2. when `definitions` is non-empty, only the definitions reachable through `$ref`s that
//!    are non-empty and are not blocks (no `block_type_slug`) are kept, transitively; if none
//!    is kept the key is removed;
//! 3. the two-element array `[[fields], {}]` dumped the way Python's
//!    `json.dumps(..., sort_keys=True)` does: `", "` and `": "` separators, keys sorted by
//!    code point, ASCII-only output with `\uXXXX` escapes (surrogate pairs for astral
//!    characters), and Python's `repr` of floats (`1.0`, `1e-05`, `1e+16`).

use std::collections::HashSet;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

const SECRET_FIELDS: &str = "secret_fields";
const DEFINITIONS: &str = "definitions";
const DEFINITION_PREFIX: &str = "#/definitions/";

/// Computes the checksum (`sha256:<64 lowercase hex>`) of a block schema's `fields`.
///
/// ```
/// use serde_json::json;
/// let fields = json!({"title": "Plain", "type": "object", "properties": {}});
/// let checksum = block_types::schema_checksum(&fields);
/// assert!(checksum.starts_with("sha256:"));
/// assert_eq!(checksum.len(), "sha256:".len() + 64);
/// ```
pub fn schema_checksum(fields: &Value) -> String {
    let canonical = canonical_fields(fields);
    let dumped = python_json_dumps(&Value::Array(vec![
        Value::Array(vec![canonical]),
        Value::Object(Map::new()),
    ]));
    format!("sha256:{}", hex::encode(Sha256::digest(dumped.as_bytes())))
}

/// The form of `fields` that is hashed: secret fields removed, block definitions pruned.
fn canonical_fields(fields: &Value) -> Value {
    let mut f = remove_key_in_objects(fields, SECRET_FIELDS);
    let Value::Object(obj) = &mut f else {
        return f;
    };
    if !obj.get(DEFINITIONS).is_some_and(python_truthy) {
        return f;
    }
    let definitions = match obj.get(DEFINITIONS) {
        Some(Value::Object(defs)) => defs.clone(),
        // A truthy non-object `definitions` cannot be looked up; nothing is kept.
        _ => Map::new(),
    };
    let mut kept = Map::new();
    let mut visited = HashSet::new();
    collect_non_block_definitions(&f, &definitions, &mut kept, &mut visited);
    let Value::Object(obj) = &mut f else {
        unreachable!("checked above")
    };
    if kept.is_empty() {
        obj.remove(DEFINITIONS);
    } else {
        obj.insert(DEFINITIONS.to_owned(), Value::Object(kept));
    }
    f
}

/// Python truthiness of a JSON value, as used by `if fields.get("definitions")`.
fn python_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Copies `value`, dropping every object key equal to `key`. Like Prefect's
/// `remove_nested_keys`, it descends into objects only, never into arrays.
fn remove_key_in_objects(value: &Value, key: &str) -> Value {
    match value {
        Value::Object(obj) => Value::Object(
            obj.iter()
                .filter(|(k, _)| k.as_str() != key)
                .map(|(k, v)| (k.clone(), remove_key_in_objects(v, key)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Every `$ref` value found anywhere under `value` (objects and arrays).
fn collect_refs<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Object(obj) => {
            if let Some(r) = obj.get("$ref").filter(|r| python_truthy(r)) {
                out.push(r);
            }
            for v in obj.values() {
                collect_refs(v, out);
            }
        }
        Value::Array(items) => {
            for v in items {
                collect_refs(v, out);
            }
        }
        _ => {}
    }
}

/// Keeps the definitions referenced from `object` that are non-empty and not blocks,
/// following their own references transitively. `visited` guards against cycles.
fn collect_non_block_definitions(
    object: &Value,
    definitions: &Map<String, Value>,
    kept: &mut Map<String, Value>,
    visited: &mut HashSet<String>,
) {
    let mut refs = Vec::new();
    collect_refs(object, &mut refs);
    for reference in refs {
        let Value::String(reference) = reference else {
            continue;
        };
        let key = reference.replace(DEFINITION_PREFIX, "");
        let Some(definition) = definitions.get(&key) else {
            continue;
        };
        let is_block = definition
            .get("block_type_slug")
            .is_some_and(|slug| !slug.is_null());
        if !python_truthy(definition) || is_block {
            continue;
        }
        kept.insert(key.clone(), definition.clone());
        if visited.insert(key) {
            collect_non_block_definitions(definition, definitions, kept, visited);
        }
    }
}

/// Serializes a JSON value exactly as Python's `json.dumps(value, sort_keys=True)` does
/// with its default arguments.
pub fn python_json_dumps(value: &Value) -> String {
    let mut out = String::new();
    write_value(value, &mut out);
    out
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push_str(&i.to_string());
            } else if let Some(u) = n.as_u64() {
                out.push_str(&u.to_string());
            } else if let Some(f) = n.as_f64() {
                out.push_str(&python_float_repr(f));
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(item, out);
            }
            out.push(']');
        }
        Value::Object(obj) => {
            // Rust orders `str` by UTF-8 bytes, which is the same as code point order.
            let mut entries: Vec<(&String, &Value)> = obj.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_string(k, out);
                out.push_str(": ");
                write_value(v, out);
            }
            out.push('}');
        }
    }
}

/// A JSON string with `ensure_ascii=True`: everything outside `' '..='~'` is escaped.
fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest round-tripping digits, in positional notation when
/// the decimal exponent is in `-4..16`, otherwise `d[.ddd]e±XX`; integral values keep `.0`.
fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    // Rust's `{:e}` prints the shortest round-tripping digits: "-1.2345e-7", "0e0".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if x.is_sign_negative() { "-" } else { "" };
    // Position of the decimal point relative to the start of `digits`.
    let decpt = exponent + 1;
    let body = if decpt <= -4 || decpt > 16 {
        let (first, rest) = digits.split_at(1);
        let mantissa = if rest.is_empty() {
            first.to_owned()
        } else {
            format!("{first}.{rest}")
        };
        let exp = decpt - 1;
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{exp_sign}{:02}", exp.abs())
    } else if decpt <= 0 {
        format!("0.{}{digits}", "0".repeat(decpt.unsigned_abs() as usize))
    } else {
        let decpt = decpt as usize;
        if digits.len() <= decpt {
            format!("{digits}{}.0", "0".repeat(decpt - digits.len()))
        } else {
            format!("{}.{}", &digits[..decpt], &digits[decpt..])
        }
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn float_repr_matches_python() {
        // Each right-hand side is what CPython's repr() prints.
        let cases: &[(f64, &str)] = &[
            (1.0, "1.0"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (0.1, "0.1"),
            (1.5, "1.5"),
            (-2.25, "-2.25"),
            (100.0, "100.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (0.000123, "0.000123"),
            (0.0000123, "1.23e-05"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1234567890123456.7, "1234567890123456.8"),
            (12345678901234567.0, "1.2345678901234568e+16"),
            (1e22, "1e+22"),
            (1e100, "1e+100"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (0.30000000000000004, "0.30000000000000004"),
            (123.456, "123.456"),
        ];
        for (x, want) in cases {
            assert_eq!(python_float_repr(*x), *want, "repr({x:?})");
        }
    }

    #[test]
    fn dumps_matches_python_separators_sorting_and_escapes() {
        let value = json!({"b": [1, 2.0, null, true], "a": {"z": "x", "y": false}, "é": "ü"});
        assert_eq!(
            python_json_dumps(&value),
            r#"{"a": {"y": false, "z": "x"}, "b": [1, 2.0, null, true], "\u00e9": "\u00fc"}"#
        );
    }

    #[test]
    fn astral_characters_become_surrogate_pairs() {
        // json.dumps("😀") == '"\\ud83d\\ude00"'
        assert_eq!(python_json_dumps(&json!("😀")), r#""\ud83d\ude00""#);
        // json.dumps("a\x7fb\x01/") == '"a\\u007fb\\u0001/"' — DEL is escaped, '/' is not.
        assert_eq!(
            python_json_dumps(&json!("a\u{7f}b\u{1}/")),
            r#""a\u007fb\u0001/""#
        );
        assert_eq!(
            python_json_dumps(&json!("q\"b\\n\nr\rt\tb\u{8}f\u{c}")),
            r#""q\"b\\n\nr\rt\tb\bf\f""#
        );
    }

    #[test]
    fn keys_sort_by_code_point() {
        // Python sorts 'Z' < '_' < 'a' < 'é' < '😀'.
        let value = json!({"😀": 1, "é": 2, "a": 3, "_": 4, "Z": 5});
        assert_eq!(
            python_json_dumps(&value),
            r#"{"Z": 5, "_": 4, "a": 3, "\u00e9": 2, "\ud83d\ude00": 1}"#
        );
    }

    #[test]
    fn secret_fields_removed_in_objects_but_not_in_arrays() {
        let fields = json!({
            "secret_fields": ["a"],
            "nested": {"secret_fields": ["b"], "keep": 1},
            "list": [{"secret_fields": ["c"]}]
        });
        assert_eq!(
            canonical_fields(&fields),
            json!({"nested": {"keep": 1}, "list": [{"secret_fields": ["c"]}]})
        );
    }

    #[test]
    fn block_definitions_are_pruned_and_plain_ones_kept_transitively() {
        let fields = json!({
            "properties": {
                "creds": {"$ref": "#/definitions/Creds"},
                "conn": {"anyOf": [{"$ref": "#/definitions/Conn"}, {"type": "string"}]}
            },
            "definitions": {
                "Creds": {"block_type_slug": "creds", "properties": {"x": {"$ref": "#/definitions/Inner"}}},
                "Conn": {"properties": {"driver": {"$ref": "#/definitions/Driver"}}},
                "Driver": {"enum": ["a"]},
                "Inner": {"type": "string"},
                "Unused": {"type": "string"},
                "Empty": {}
            }
        });
        let canonical = canonical_fields(&fields);
        let kept: Vec<&String> = canonical["definitions"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        // `Inner` is reachable only from inside the block definition `Creds`, but Prefect
        // collects `$ref`s from the whole document, so it is kept too.
        let mut kept: Vec<&str> = kept.into_iter().map(String::as_str).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["Conn", "Driver", "Inner"]);
    }

    #[test]
    fn definitions_removed_when_only_blocks_or_empty_ones_are_referenced() {
        let fields = json!({
            "properties": {
                "creds": {"$ref": "#/definitions/Creds"},
                "value": {"$ref": "#/definitions/JsonValue"}
            },
            "definitions": {"Creds": {"block_type_slug": "creds"}, "JsonValue": {}}
        });
        assert!(canonical_fields(&fields).get("definitions").is_none());
        // An empty `definitions` object is falsy in Python and therefore kept as it is.
        let empty = json!({"definitions": {}, "title": "T"});
        assert_eq!(canonical_fields(&empty), empty);
        // A definition whose `block_type_slug` is null is not a block.
        let null_slug = json!({
            "properties": {"a": {"$ref": "#/definitions/A"}},
            "definitions": {"A": {"block_type_slug": null, "type": "string"}}
        });
        assert!(
            canonical_fields(&null_slug)["definitions"]
                .get("A")
                .is_some()
        );
    }

    #[test]
    fn cyclic_definitions_terminate() {
        let fields = json!({
            "properties": {"a": {"$ref": "#/definitions/A"}},
            "definitions": {
                "A": {"properties": {"b": {"$ref": "#/definitions/B"}}},
                "B": {"properties": {"a": {"$ref": "#/definitions/A"}}}
            }
        });
        let canonical = canonical_fields(&fields);
        assert_eq!(canonical["definitions"].as_object().unwrap().len(), 2);
    }

    #[test]
    fn a_schema_checksum_is_stable_and_sensitive() {
        let a = json!({"title": "A", "type": "object", "properties": {"x": {"type": "string"}}});
        let b = json!({"type": "object", "properties": {"x": {"type": "string"}}, "title": "A"});
        let c = json!({"title": "A", "type": "object", "properties": {"x": {"type": "integer"}}});
        assert_eq!(
            schema_checksum(&a),
            schema_checksum(&b),
            "key order must not matter"
        );
        assert_ne!(schema_checksum(&a), schema_checksum(&c));
        // secret_fields never influence the checksum.
        let mut d = a.clone();
        d["secret_fields"] = json!(["x"]);
        assert_eq!(schema_checksum(&a), schema_checksum(&d));
    }

    #[test]
    fn hand_checked_digest() {
        // hashlib.sha256(json.dumps([[{}], {}], sort_keys=True).encode()).hexdigest()
        // over the text `[[{}], {}]`.
        let want = hex::encode(Sha256::digest(b"[[{}], {}]"));
        assert_eq!(schema_checksum(&json!({})), format!("sha256:{want}"));
    }
}
