//! Secret field paths: finding, obfuscating and restoring secret values in block data.
//!
//! A block schema lists its secrets in `secret_fields` as dotted paths: `password` (one
//! field), `connection_info.password` (a field of a nested object) or `headers.*` (everything
//! below `headers`). On read, secrets are replaced by [`OBFUSCATED`] unless the caller asked
//! for them; on update, a client that echoes `"********"` back keeps the stored value.
//!
//! Unlike Prefect, a secret at a plain path whose value is an object or an array is masked
//! as a whole, so a JSON-valued `Secret` never leaks.

use serde_json::{Map, Value};

use crate::secret::OBFUSCATED;

/// One entry of a schema's `secret_fields`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretPath {
    /// The object keys leading to the secret (the part before any `*`).
    pub segments: Vec<String>,
    /// `true` for `prefix.*`: every value below the prefix is secret.
    pub wildcard: bool,
}

impl SecretPath {
    /// Parses a dotted path. As in Prefect, everything after the first `*` segment is
    /// ignored: `a.*.b` covers everything below `a`.
    pub fn parse(path: &str) -> Self {
        let mut segments = Vec::new();
        let mut wildcard = false;
        for segment in path.split('.') {
            if segment == "*" {
                wildcard = true;
                break;
            }
            segments.push(segment.to_owned());
        }
        Self { segments, wildcard }
    }

    /// Parses every path of a `secret_fields` list.
    pub fn parse_all<S: AsRef<str>>(paths: &[S]) -> Vec<Self> {
        paths.iter().map(|p| Self::parse(p.as_ref())).collect()
    }

    /// Whether this path is `other` or lies below it.
    fn is_within(&self, other: &SecretPath) -> bool {
        self.segments.starts_with(&other.segments)
    }
}

impl std::fmt::Display for SecretPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.segments.join("."))?;
        if self.wildcard {
            f.write_str(if self.segments.is_empty() { "*" } else { ".*" })?;
        }
        Ok(())
    }
}

/// Reads `secret_fields` from a block schema's `fields` (missing or malformed: none).
pub fn secret_fields_of(fields: &Value) -> Vec<SecretPath> {
    fields
        .get("secret_fields")
        .and_then(Value::as_array)
        .map(|paths| {
            paths
                .iter()
                .filter_map(Value::as_str)
                .map(SecretPath::parse)
                .collect()
        })
        .unwrap_or_default()
}

/// The minimal set of locations whose whole values are secret: a plain path is its own
/// root, `a.*` has root `a`. Duplicates and locations below another root are dropped.
/// Storage encrypts each root's value as one unit.
pub fn secret_roots(paths: &[SecretPath]) -> Vec<Vec<String>> {
    let mut roots: Vec<SecretPath> = Vec::new();
    for path in paths {
        if roots.iter().any(|root| path.is_within(root)) {
            continue;
        }
        roots.retain(|root| !root.is_within(path));
        roots.push(path.clone());
    }
    roots.into_iter().map(|root| root.segments).collect()
}

/// The value at `segments` in `data`, following object keys only.
pub fn get_path<'a>(data: &'a Map<String, Value>, segments: &[String]) -> Option<&'a Value> {
    let (first, rest) = segments.split_first()?;
    let mut current = data.get(first)?;
    for segment in rest {
        current = current.as_object()?.get(segment)?;
    }
    Some(current)
}

/// The mutable value at `segments` in `data`, following object keys only.
pub fn get_path_mut<'a>(
    data: &'a mut Map<String, Value>,
    segments: &[String],
) -> Option<&'a mut Value> {
    let (first, rest) = segments.split_first()?;
    let mut current = data.get_mut(first)?;
    for segment in rest {
        current = current.as_object_mut()?.get_mut(segment)?;
    }
    Some(current)
}

fn obfuscated() -> Value {
    Value::String(OBFUSCATED.to_owned())
}

/// Replaces every leaf below `value` (non-object values and empty objects) that is not
/// null by [`OBFUSCATED`].
fn mask_leaves(value: &mut Value) {
    match value {
        Value::Null => {}
        Value::Object(map) if !map.is_empty() => map.values_mut().for_each(mask_leaves),
        other => *other = obfuscated(),
    }
}

/// Masks the secrets of `data` in place: each plain path with a non-null value becomes
/// `"********"` (whatever its type), and each non-null leaf below a wildcard prefix does.
/// Null values stay null: they hold no secret.
pub fn obfuscate(data: &mut Map<String, Value>, paths: &[SecretPath]) {
    for path in paths {
        let Some(value) = get_path_mut(data, &path.segments) else {
            continue;
        };
        if path.wildcard {
            mask_leaves(value);
        } else if !value.is_null() {
            *value = obfuscated();
        }
    }
}

/// Before an update is applied: every `"********"` the client echoed back at a secret
/// location is replaced by the value stored there, so a client that read obfuscated data
/// and sends it back does not overwrite its secrets with asterisks. An echo at a location
/// that holds nothing stays as it was sent.
pub fn restore(
    update: &mut Map<String, Value>,
    current: &Map<String, Value>,
    paths: &[SecretPath],
) {
    for path in paths {
        let Some(new_value) = get_path_mut(update, &path.segments) else {
            continue;
        };
        let Some(current_value) = get_path(current, &path.segments) else {
            continue;
        };
        if path.wildcard {
            restore_leaves(new_value, current_value);
        } else if is_obfuscated(new_value) && !current_value.is_null() {
            *new_value = current_value.clone();
        }
    }
}

fn is_obfuscated(value: &Value) -> bool {
    value.as_str() == Some(OBFUSCATED)
}

/// Below a wildcard prefix: each echoed leaf takes the current value at the same place.
fn restore_leaves(new_value: &mut Value, current: &Value) {
    if is_obfuscated(new_value) {
        *new_value = current.clone();
        return;
    }
    if let (Value::Object(new_map), Value::Object(current_map)) = (new_value, current) {
        for (key, value) in new_map.iter_mut() {
            if let Some(current_child) = current_map.get(key) {
                restore_leaves(value, current_child);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn paths(p: &[&str]) -> Vec<SecretPath> {
        SecretPath::parse_all(p)
    }

    #[test]
    fn parse_and_display() {
        let p = SecretPath::parse("gcp_credentials.service_account_info.*");
        assert_eq!(p.segments, ["gcp_credentials", "service_account_info"]);
        assert!(p.wildcard);
        assert_eq!(p.to_string(), "gcp_credentials.service_account_info.*");
        assert_eq!(SecretPath::parse("a.*.b"), SecretPath::parse("a.*"));
        assert!(!SecretPath::parse("a.b").wildcard);
    }

    #[test]
    fn plain_paths_mask_leaves_and_keep_nulls() {
        let mut data = obj(json!({
            "connection_info": {"driver": "postgresql+psycopg2", "password": "pw"},
            "url": null
        }));
        obfuscate(
            &mut data,
            &paths(&["connection_info.password", "url", "missing.path"]),
        );
        assert_eq!(
            Value::Object(data),
            json!({"connection_info": {"driver": "postgresql+psycopg2", "password": "********"}, "url": null})
        );
    }

    #[test]
    fn json_valued_secrets_are_masked_whole() {
        // Prefect returns this object in clear; we mask it.
        let mut data = obj(json!({"value": {"username": "u", "password": "p"}}));
        obfuscate(&mut data, &paths(&["value", "value"]));
        assert_eq!(Value::Object(data), json!({"value": "********"}));
        let mut data = obj(json!({"value": ["a", "b"]}));
        obfuscate(&mut data, &paths(&["value"]));
        assert_eq!(Value::Object(data), json!({"value": "********"}));
    }

    #[test]
    fn wildcards_mask_every_leaf_below() {
        let mut data = obj(json!({
            "headers": {"Authorization": "x", "n": 5, "deep": {"b": true, "e": {}}, "nil": null},
            "empty": {},
            "gcp": {"info": {"private_key": "k"}, "project": "p"}
        }));
        obfuscate(&mut data, &paths(&["headers.*", "empty.*", "gcp.info.*"]));
        assert_eq!(
            Value::Object(data),
            json!({
                "headers": {"Authorization": "********", "n": "********",
                            "deep": {"b": "********", "e": "********"}, "nil": null},
                "empty": "********",
                "gcp": {"info": {"private_key": "********"}, "project": "p"}
            })
        );
    }

    #[test]
    fn restore_keeps_stored_values_for_echoed_asterisks() {
        let current = obj(json!({
            "url": "https://hooks.example/secret",
            "headers": {"a": "1", "nested": {"b": "2"}},
            "value": {"k": "v"}
        }));
        let mut update = obj(json!({
            "url": "********",
            "headers": {"a": "********", "nested": {"b": "changed"}, "new": "********"},
            "value": "********"
        }));
        restore(
            &mut update,
            &current,
            &paths(&["url", "headers.*", "value"]),
        );
        assert_eq!(
            Value::Object(update),
            json!({
                "url": "https://hooks.example/secret",
                "headers": {"a": "1", "nested": {"b": "changed"}, "new": "********"},
                "value": {"k": "v"}
            })
        );
    }

    #[test]
    fn restore_leaves_an_echo_over_nothing_alone() {
        let current = obj(json!({"password": null}));
        let mut update = obj(json!({"password": "********"}));
        restore(&mut update, &current, &paths(&["password"]));
        assert_eq!(update["password"], json!("********"));
    }

    #[test]
    fn roots_are_minimal() {
        let roots = secret_roots(&paths(&["value", "value", "a.b", "a.*", "c.d.*", "c.d.e"]));
        assert_eq!(
            roots,
            vec![
                vec!["value".to_owned()],
                vec!["a".to_owned()],
                vec!["c".to_owned(), "d".to_owned()]
            ]
        );
    }

    /// Arbitrary JSON objects a few levels deep with small key alphabets, so that secret
    /// paths drawn from the same alphabet often hit.
    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            "[a-z*]{0,6}".prop_map(Value::from),
            Just(json!(OBFUSCATED)),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[abc]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_object() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::btree_map("[abc]", arb_json(), 0..4).prop_map(|m| m.into_iter().collect())
    }

    fn arb_paths() -> impl Strategy<Value = Vec<SecretPath>> {
        prop::collection::vec(
            (prop::collection::vec("[abc]", 1..4), any::<bool>())
                .prop_map(|(segments, wildcard)| SecretPath { segments, wildcard }),
            0..4,
        )
    }

    /// Every leaf value (including empty objects) at or below `value`.
    fn leaves(value: &Value, out: &mut Vec<Value>) {
        match value {
            Value::Object(map) if !map.is_empty() => map.values().for_each(|v| leaves(v, out)),
            other => out.push(other.clone()),
        }
    }

    proptest! {
        #[test]
        fn no_secret_leaf_survives_obfuscation(data in arb_object(), secret in arb_paths()) {
            let mut masked = data.clone();
            obfuscate(&mut masked, &secret);
            for path in &secret {
                if let Some(value) = get_path(&masked, &path.segments) {
                    let mut found = Vec::new();
                    leaves(value, &mut found);
                    for leaf in found {
                        prop_assert!(
                            leaf.is_null() || leaf == json!(OBFUSCATED),
                            "{path} still holds {leaf}"
                        );
                    }
                }
            }
        }

        #[test]
        fn obfuscate_then_restore_gives_back_the_stored_value(data in arb_object(), secret in arb_paths()) {
            let mut echoed = data.clone();
            obfuscate(&mut echoed, &secret);
            restore(&mut echoed, &data, &secret);
            prop_assert_eq!(echoed, data);
        }

        #[test]
        fn obfuscation_only_touches_secret_locations(data in arb_object(), secret in arb_paths()) {
            let mut masked = data.clone();
            obfuscate(&mut masked, &secret);
            // Blank out the secret roots in both; what is left must be identical.
            let roots = secret_roots(&secret);
            let (mut a, mut b) = (data.clone(), masked);
            for root in &roots {
                if let Some(v) = get_path_mut(&mut a, root) { *v = Value::Null; }
                if let Some(v) = get_path_mut(&mut b, root) { *v = Value::Null; }
            }
            prop_assert_eq!(a, b);
        }
    }
}
