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

impl SecretPath {
    /// Whether sealing `self` seals `other` too: a secret path seals the whole value it
    /// lands on, so any path that is a prefix of `other` covers it (`a` and `a.*` both
    /// cover `a.b`; the root wildcard covers everything).
    pub fn covers(&self, other: &SecretPath) -> bool {
        if self.segments.is_empty() {
            return self.wildcard;
        }
        other.segments.starts_with(&self.segments)
    }
}

/// The paths of `wanted` that no path of `listed` covers.
pub fn uncovered<'a>(wanted: &'a [SecretPath], listed: &[SecretPath]) -> Vec<&'a SecretPath> {
    wanted
        .iter()
        .filter(|w| !listed.iter().any(|l| l.covers(w)))
        .collect()
}

/// `paths` without duplicates and without paths another one covers, sorted: two lists
/// that seal the same values normalize to the same list.
pub fn normalized(paths: &[SecretPath]) -> Vec<SecretPath> {
    let mut out: Vec<SecretPath> = Vec::new();
    for path in paths {
        if out.iter().any(|o| o.covers(path)) {
            continue;
        }
        out.retain(|o| !path.covers(o));
        out.push(path.clone());
    }
    out.sort_by_key(ToString::to_string);
    out
}

/// The paths a JSON Schema itself marks secret, whatever its `secret_fields` says: a
/// property that is `writeOnly: true` or `format: password` (Pydantic's `SecretStr`,
/// `SecretBytes`, `Secret[T]`), directly or in one of its `anyOf`/`oneOf`/`allOf` choices,
/// gives its path; one below `additionalProperties` gives `prefix.*`; one below `items`
/// makes the whole list secret. `$ref`s to `#/definitions/…` are followed (plain models
/// such as `ConnectionComponents` and nested blocks alike), each definition once; a nested
/// block's definition adds its own `secret_fields` and what its built-in type keeps secret.
pub fn marked_secret_paths(fields: &Value) -> Vec<SecretPath> {
    marked_paths(fields, true)
}

/// [`marked_secret_paths`]; without `floors`, nested blocks add only their listed
/// `secret_fields` (what the schema itself says; the catalog's own floors are built this
/// way).
pub fn marked_paths(fields: &Value, floors: bool) -> Vec<SecretPath> {
    let mut marks = Marks {
        definitions: fields.get("definitions").and_then(Value::as_object),
        dollar_defs: fields.get("$defs").and_then(Value::as_object),
        done: std::collections::HashMap::new(),
        floors,
    };
    let mut out = Vec::new();
    if let Some(Value::Object(properties)) = fields.get("properties") {
        for (name, property) in properties {
            out.extend(marks.of(property).into_iter().map(|p| p.under(name)));
        }
    }
    normalized(&out)
}

impl SecretPath {
    /// The value itself (a relative path with no step).
    fn here() -> Self {
        Self {
            segments: Vec::new(),
            wildcard: false,
        }
    }

    /// `self` one step further down, below `name`.
    fn under(mut self, name: &str) -> Self {
        self.segments.insert(0, name.to_owned());
        self
    }
}

/// The marked paths of schema nodes, relative to each node; each definition is walked once
/// (one that nests itself contributes nothing more the second time).
struct Marks<'a> {
    /// Pydantic v1's `definitions`.
    definitions: Option<&'a Map<String, Value>>,
    /// Pydantic v2's (and JSON Schema 2019's) `$defs`.
    dollar_defs: Option<&'a Map<String, Value>>,
    done: std::collections::HashMap<&'a str, Vec<SecretPath>>,
    floors: bool,
}

impl<'a> Marks<'a> {
    fn of(&mut self, node: &'a Value) -> Vec<SecretPath> {
        let Value::Object(node) = node else {
            return Vec::new();
        };
        if node.get("writeOnly") == Some(&Value::Bool(true))
            || node.get("format").and_then(Value::as_str) == Some("password")
        {
            return vec![SecretPath::here()];
        }
        let mut out = Vec::new();
        if let Some(name) = node.get("$ref").and_then(Value::as_str).and_then(|r| {
            r.strip_prefix("#/definitions/")
                .or_else(|| r.strip_prefix("#/$defs/"))
        }) {
            out.extend(self.definition(name));
        }
        for combinator in ["anyOf", "oneOf", "allOf"] {
            if let Some(Value::Array(choices)) = node.get(combinator) {
                for choice in choices {
                    out.extend(self.of(choice));
                }
            }
        }
        if let Some(Value::Object(properties)) = node.get("properties") {
            for (name, property) in properties {
                out.extend(self.of(property).into_iter().map(|p| p.under(name)));
            }
        }
        if let Some(additional) = node.get("additionalProperties")
            && !self.of(additional).is_empty()
        {
            out.push(SecretPath {
                segments: Vec::new(),
                wildcard: true,
            });
        }
        let items = node.get("items").into_iter().chain(
            node.get("prefixItems")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        );
        for item in items {
            if !self.of(item).is_empty() {
                out.push(SecretPath::here());
            }
        }
        out
    }

    fn definition(&mut self, name: &'a str) -> Vec<SecretPath> {
        if let Some(done) = self.done.get(name) {
            return done.clone();
        }
        let Some(definition) = self
            .definitions
            .and_then(|d| d.get(name))
            .or_else(|| self.dollar_defs.and_then(|d| d.get(name)))
        else {
            return Vec::new();
        };
        // Marked as walked before the walk, so a definition that nests itself ends here.
        self.done.insert(name, Vec::new());
        let mut found = self.of(definition);
        // A nested block keeps its own secrets, listed or not marked in its JSON Schema
        // (Prefect's SecretDict has no marker).
        if let Some(slug) = definition.get("block_type_slug").and_then(Value::as_str) {
            found.extend(secret_fields_of(definition));
            if self.floors {
                found.extend(crate::catalog::secret_floor(slug).iter().cloned());
            }
        }
        let found = normalized(&found);
        self.done.insert(name, found.clone());
        found
    }
}

/// Everything a schema's `fields` keep secret: its `secret_fields` (first, so their shape
/// wins when [`normalized`]), then what its JSON Schema marks ([`marked_secret_paths`]).
pub fn secret_paths_of(fields: &Value) -> Vec<SecretPath> {
    let mut paths = secret_fields_of(fields);
    paths.extend(marked_secret_paths(fields));
    paths
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

/// Where each secret path lands in `data`, as the minimal set of locations whose whole
/// values are secret (storage seals each as one unit):
///
/// - a path whose every step is an object lands on its full path (`a.*` on `a`);
/// - a path that meets a non-object value on the way (a URL string where an object with a
///   `password` was expected, a list of objects) lands on that value, which is then secret
///   as a whole: nothing below a secret path is ever left in clear;
/// - the root wildcard `*` lands on every top-level field;
/// - null and absent values hold no secret and have no location.
pub fn secret_locations(data: &Map<String, Value>, paths: &[SecretPath]) -> Vec<Vec<String>> {
    let mut found: Vec<Vec<String>> = Vec::new();
    for path in paths {
        let candidates: Vec<Vec<String>> = if path.segments.is_empty() {
            if !path.wildcard {
                continue;
            }
            data.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, _)| vec![k.clone()])
                .collect()
        } else {
            locate(data, &path.segments).into_iter().collect()
        };
        for location in candidates {
            if found.iter().any(|f| location.starts_with(f)) {
                continue;
            }
            found.retain(|f| !f.starts_with(&location));
            found.push(location);
        }
    }
    found
}

/// The location a non-empty path lands on (see [`secret_locations`]).
fn locate(data: &Map<String, Value>, segments: &[String]) -> Option<Vec<String>> {
    let mut current = data;
    for (i, segment) in segments.iter().enumerate() {
        match current.get(segment)? {
            Value::Null => return None,
            Value::Object(next) if i + 1 < segments.len() => current = next,
            _ => return Some(segments[..=i].to_vec()),
        }
    }
    None
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

/// Masks the secrets of `data` in place. Each location of [`secret_locations`] becomes
/// `"********"` as a whole, except that below a wildcard prefix reached through objects each
/// non-null leaf is masked on its own (Prefect's shape, which clients rely on). Null values
/// stay null: they hold no secret.
pub fn obfuscate(data: &mut Map<String, Value>, paths: &[SecretPath]) {
    for path in paths {
        if path.segments.is_empty() {
            if path.wildcard {
                data.values_mut().for_each(mask_leaves);
            }
            continue;
        }
        let Some(location) = locate(data, &path.segments) else {
            continue;
        };
        let whole = location.len() < path.segments.len() || !path.wildcard;
        let Some(value) = get_path_mut(data, &location) else {
            continue;
        };
        if whole {
            *value = obfuscated();
        } else {
            mask_leaves(value);
        }
    }
}

/// Before an update is applied: every `"********"` the client echoed back at a secret
/// location is replaced by the value stored there, so a client that read obfuscated data
/// and sends it back does not overwrite its secrets with asterisks.
///
/// Returns the paths of echoes that have no stored value to restore (the client sent a
/// mask where nothing is stored): storing the asterisks would silently lose a secret, so
/// callers should refuse the update and ask for the real value.
pub fn restore(
    update: &mut Map<String, Value>,
    current: &Map<String, Value>,
    paths: &[SecretPath],
) -> Vec<String> {
    let mut unrestored = Vec::new();
    for path in paths {
        let prefixes: Vec<Vec<String>> = if path.segments.is_empty() {
            if !path.wildcard {
                continue;
            }
            update.keys().map(|k| vec![k.clone()]).collect()
        } else {
            vec![path.segments.clone()]
        };
        for prefix in prefixes {
            // Walk the update along the path; an echo may sit at any step (a masked whole
            // value) or, below a wildcard prefix, at any leaf.
            for depth in 1..=prefix.len() {
                let at = &prefix[..depth];
                let Some(new_value) = get_path_mut(update, at) else {
                    break;
                };
                if is_obfuscated(new_value) {
                    match get_path(current, at).filter(|v| !v.is_null()) {
                        Some(stored) => *new_value = stored.clone(),
                        None => unrestored.push(at.join(".")),
                    }
                    break;
                }
                if depth == prefix.len() && path.wildcard {
                    let stored = get_path(current, at);
                    restore_leaves(new_value, stored, &mut at.join("."), &mut unrestored);
                }
                if !new_value.is_object() {
                    break;
                }
            }
        }
    }
    unrestored.sort();
    unrestored.dedup();
    unrestored
}

fn is_obfuscated(value: &Value) -> bool {
    value.as_str() == Some(OBFUSCATED)
}

/// Below a wildcard prefix: each echoed leaf takes the stored value at the same place.
fn restore_leaves(
    new_value: &mut Value,
    stored: Option<&Value>,
    path: &mut String,
    unrestored: &mut Vec<String>,
) {
    if is_obfuscated(new_value) {
        match stored.filter(|v| !v.is_null()) {
            Some(stored) => *new_value = stored.clone(),
            None => unrestored.push(path.clone()),
        }
        return;
    }
    if let Value::Object(new_map) = new_value {
        for (key, value) in new_map.iter_mut() {
            let child = stored.and_then(|s| s.get(key));
            let len = path.len();
            path.push('.');
            path.push_str(key);
            restore_leaves(value, child, path, unrestored);
            path.truncate(len);
        }
    }
}

/// The object `v` holds (tests write data with `json!`); panics on anything else.
#[cfg(test)]
pub(crate) fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn marked(fields: &Value) -> Vec<String> {
        marked_secret_paths(fields)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn markers_are_found_through_dollar_defs_too() {
        // Pydantic v2 puts definitions under `$defs`.
        let fields = json!({
            "properties": {"auth": {"$ref": "#/$defs/Auth"}},
            "$defs": {"Auth": {"properties": {"password": {"type": "string", "format": "password"}}}},
        });
        assert_eq!(marked(&fields), ["auth.password"]);
    }

    #[test]
    fn markers_are_found_through_choices_refs_maps_and_lists() {
        let fields = json!({
            "properties": {
                "plain": {"type": "string"},
                "token": {"anyOf": [{"type": "string", "format": "password", "writeOnly": true}, {"type": "null"}]},
                "conn": {"$ref": "#/definitions/Conn"},
                "env": {"type": "object", "additionalProperties": {"type": "string", "writeOnly": true}},
                "keys": {"type": "array", "items": {"type": "string", "format": "password"}},
                "deep": {"type": "object", "properties": {"inner": {"allOf": [{"$ref": "#/definitions/Conn"}]}}}
            },
            "definitions": {"Conn": {"properties": {"host": {"type": "string"}, "password": {"writeOnly": true}}}}
        });
        assert_eq!(
            marked(&fields),
            [
                "conn.password",
                "deep.inner.password",
                "env.*",
                "keys",
                "token"
            ]
        );
    }

    #[test]
    fn a_nested_blocks_own_secrets_count_as_marked() {
        // Prefect's SecretDict carries no marker: a nested block's secret_fields, and what
        // its built-in type keeps secret, mark the parent's paths.
        let fields = json!({
            "properties": {
                "hook": {"$ref": "#/definitions/Hook"},
                "creds": {"anyOf": [{"$ref": "#/definitions/GcpCredentials"}, {"type": "null"}]}
            },
            "definitions": {
                "Hook": {"block_type_slug": "custom-hook", "properties": {"secrets": {"type": "object"}}, "secret_fields": ["secrets.*"]},
                "GcpCredentials": {"block_type_slug": "gcp-credentials", "properties": {"service_account_info": {"type": "object"}}}
            }
        });
        assert_eq!(
            marked(&fields),
            ["creds.service_account_info.*", "hook.secrets.*"]
        );
    }

    #[test]
    fn a_definition_that_nests_itself_is_walked_once() {
        // Each definition refers to itself twice: a walk without memory would take 2^n steps.
        let mut definitions = Map::new();
        for i in 0..40 {
            definitions.insert(
                format!("D{i}"),
                json!({"anyOf": [{"$ref": format!("#/definitions/D{}", i + 1)}, {"$ref": format!("#/definitions/D{}", i + 1)}, {"$ref": format!("#/definitions/D{i}")}],
                       "properties": {"secret": {"writeOnly": true}}}),
            );
        }
        let fields = json!({"properties": {"root": {"$ref": "#/definitions/D0"}}, "definitions": definitions});
        assert_eq!(marked(&fields), ["root.secret"]);
    }

    #[test]
    fn a_prefix_covers_what_lies_below_it() {
        let p = |s: &str| SecretPath::parse(s);
        assert!(p("a").covers(&p("a.b")));
        assert!(p("a.*").covers(&p("a.b")));
        assert!(p("a.*").covers(&p("a")));
        assert!(p("*").covers(&p("x.y")));
        assert!(!p("a.b").covers(&p("a")));
        assert!(!p("ab").covers(&p("a")));
        let wanted = [p("x"), p("a.b")];
        assert_eq!(uncovered(&wanted, &[p("a")]), [&p("x")]);
        assert_eq!(
            normalized(&[p("a.b"), p("value"), p("a"), p("value")]),
            [p("a"), p("value")]
        );
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
    fn locations_are_minimal_and_follow_the_data() {
        let data = obj(json!({
            "value": "v", "a": {"b": 1, "c": 2}, "c": {"d": {"e": "x"}},
            "url_form": "postgresql://u:pw@h/db", "list": [{"password": "p"}], "nothing": null
        }));
        let found = secret_locations(
            &data,
            &paths(&[
                "value",
                "value",
                "a.b",
                "a.*",
                "c.d.*",
                "c.d.e",
                "url_form.password",
                "list.password",
                "nothing.x",
                "missing",
            ]),
        );
        let strings: Vec<String> = found.iter().map(|l| l.join(".")).collect();
        assert_eq!(strings, ["value", "a", "c.d", "url_form", "list"]);
        let everything = secret_locations(&data, &paths(&["*"]));
        assert_eq!(
            everything.len(),
            5,
            "the root wildcard covers every non-null field"
        );
    }

    #[test]
    fn a_secret_path_through_a_non_object_masks_that_value_whole() {
        // A SQLAlchemy connector in URL form: the password is inside the string.
        let mut data = obj(
            json!({"connection_info": "postgresql://u:pw@h/db", "list": [{"password": "p"}], "n": 1}),
        );
        obfuscate(
            &mut data,
            &paths(&["connection_info.password", "list.password"]),
        );
        assert_eq!(
            Value::Object(data.clone()),
            json!({"connection_info": "********", "list": "********", "n": 1})
        );
        let current = obj(
            json!({"connection_info": "postgresql://u:pw@h/db", "list": [{"password": "p"}], "n": 1}),
        );
        let unrestored = restore(
            &mut data,
            &current,
            &paths(&["connection_info.password", "list.password"]),
        );
        assert!(unrestored.is_empty());
        assert_eq!(data, current);
    }

    #[test]
    fn the_root_wildcard_masks_everything() {
        let mut data = obj(json!({"a": "x", "b": {"c": 1}, "n": null}));
        obfuscate(&mut data, &paths(&["*"]));
        assert_eq!(
            Value::Object(data),
            json!({"a": "********", "b": {"c": "********"}, "n": null})
        );
    }

    #[test]
    fn echoes_with_nothing_stored_are_reported() {
        let current = obj(json!({"password": null, "headers": {"a": "1"}}));
        let mut update =
            obj(json!({"password": "********", "headers": {"a": "********", "b": "********"}}));
        let unrestored = restore(&mut update, &current, &paths(&["password", "headers.*"]));
        assert_eq!(unrestored, ["headers.b", "password"]);
        assert_eq!(update["headers"]["a"], json!("1"));
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
            (prop::collection::vec("[abc]", 0..4), any::<bool>())
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
            for location in secret_locations(&data, &secret) {
                let value = get_path(&masked, &location).expect("obfuscation keeps every key");
                let mut found = Vec::new();
                leaves(value, &mut found);
                for leaf in found {
                    prop_assert!(
                        leaf.is_null() || leaf == json!(OBFUSCATED),
                        "{} still holds {leaf}", location.join(".")
                    );
                }
            }
        }

        #[test]
        fn obfuscate_then_restore_gives_back_the_stored_value(data in arb_object(), secret in arb_paths()) {
            let mut echoed = data.clone();
            obfuscate(&mut echoed, &secret);
            let unrestored = restore(&mut echoed, &data, &secret);
            prop_assert!(unrestored.is_empty(), "{unrestored:?}");
            prop_assert_eq!(echoed, data);
        }

        #[test]
        fn obfuscation_only_touches_secret_locations(data in arb_object(), secret in arb_paths()) {
            let mut masked = data.clone();
            obfuscate(&mut masked, &secret);
            // Blank out the secret locations in both; what is left must be identical.
            let (mut a, mut b) = (data.clone(), masked);
            for location in secret_locations(&data, &secret) {
                if let Some(v) = get_path_mut(&mut a, &location) { *v = Value::Null; }
                if let Some(v) = get_path_mut(&mut b, &location) { *v = Value::Null; }
            }
            prop_assert_eq!(a, b);
        }
    }
}
