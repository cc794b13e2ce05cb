//! The inverse of the form: submitted pairs → document data, read by the same schema
//! classification the renderer uses.

use std::collections::{BTreeMap, BTreeSet};

use block_types::FieldError;
use serde_json::{Map, Number, Value, json};
use uuid::Uuid;

use super::model::{api_path, escape_key, lookup, option_value};
use super::schema::{JsonKind, MAX_ROWS, Prop, Schema, Shape, TextKind};
use super::{Action, Decoded, Mode};

struct Decoder<'a> {
    schema: Schema<'a>,
    mode: Mode,
    original: Option<&'a Map<String, Value>>,
    pairs: BTreeMap<&'a str, Vec<&'a str>>,
    action: Action,
    errors: Vec<FieldError>,
}

/// Decodes a submitted form (`application/x-www-form-urlencoded` pairs in document order)
/// into document data. Pairs named `_…` belong to the page; `_action` says which button
/// was pressed: for `Add`/`Remove` the returned data already has the row added (a `null`
/// item, or a `""` key) or removed, ready to render again.
pub(crate) fn decode(
    schema: &Value,
    mode: Mode,
    original: Option<&Map<String, Value>>,
    pairs: &[(String, String)],
) -> Decoded {
    let mut map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut action = Action::Save;
    for (name, value) in pairs {
        if name == "_action" {
            action = parse_action(value);
        } else if !name.starts_with('_') {
            map.entry(name.as_str()).or_default().push(value.as_str());
        }
    }
    let mut decoder = Decoder {
        schema: Schema::new(schema),
        mode,
        original,
        pairs: map,
        action,
        errors: Vec::new(),
    };
    let mut data = Map::new();
    for prop in decoder.schema.top() {
        let name = format!("data.{}", escape_key(&prop.key));
        if let Some(value) = decoder.field(&prop, &name, std::slice::from_ref(&prop.key), 1, &[]) {
            data.insert(prop.key.clone(), value);
        }
    }
    Decoded {
        data,
        action: decoder.action,
        errors: decoder.errors,
    }
}

fn parse_action(value: &str) -> Action {
    if let Some(path) = value.strip_prefix("add:") {
        return Action::Add(path.to_owned());
    }
    if let Some((path, index)) = value
        .strip_prefix("remove:")
        .and_then(|rest| rest.rsplit_once('/'))
        && let Ok(index) = index.parse()
    {
        return Action::Remove(path.to_owned(), index);
    }
    if let Some((path, slug)) = value
        .strip_prefix("new-ref:")
        .and_then(|rest| rest.rsplit_once(':'))
    {
        return Action::NewReference {
            path: path.to_owned(),
            slug: slug.to_owned(),
        };
    }
    Action::Save
}

impl Decoder<'_> {
    fn last(&self, name: &str) -> Option<&str> {
        self.pairs.get(name).and_then(|v| v.last()).copied()
    }

    fn error(&mut self, api: &[String], message: impl Into<String>) {
        self.errors.push(FieldError::new(api_path(api), message));
    }

    /// The row numbers submitted under `prefix` (`<array>.` or `<dict>#k`), in order.
    fn rows(&self, prefix: &str, dict: bool) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        for (name, _) in self.pairs.range(prefix..) {
            let Some(rest) = name.strip_prefix(prefix) else {
                break;
            };
            let digits = rest.find(['.', '#']).map_or(rest, |end| &rest[..end]);
            if dict && digits.len() != rest.len() {
                continue;
            }
            if let Ok(index) = digits.parse::<usize>()
                && index.to_string() == digits
            {
                out.insert(index);
            }
        }
        out
    }

    fn field(
        &mut self,
        prop: &Prop,
        name: &str,
        api: &[String],
        depth: usize,
        stack: &[String],
    ) -> Option<Value> {
        self.node(&prop.schema, name, api, prop.required, depth, stack)
    }

    /// The value at `name`; `None` when absent.
    fn node(
        &mut self,
        schema: &Value,
        name: &str,
        api: &[String],
        required: bool,
        depth: usize,
        stack: &[String],
    ) -> Option<Value> {
        let resolved = self.schema.resolve(schema, stack);
        let shape = self.schema.shape(&resolved, api, depth);
        self.shaped(shape, &resolved.stack, name, api, required, depth)
    }

    /// The value at `name` of this shape (`stack`: the `$ref`s followed to here).
    fn shaped(
        &mut self,
        shape: Shape,
        stack: &[String],
        name: &str,
        api: &[String],
        required: bool,
        depth: usize,
    ) -> Option<Value> {
        match shape {
            Shape::Null => Some(Value::Null),
            Shape::OrNull(scalar, _) => {
                let raw = self.last(name).unwrap_or_default();
                // Text keeps its spaces; numbers, dates and selects are read trimmed.
                let empty = match *scalar {
                    Shape::Text(TextKind::Text | TextKind::Url | TextKind::Email) => raw.is_empty(),
                    _ => raw.trim().is_empty(),
                };
                if empty {
                    return Some(Value::Null);
                }
                self.shaped(*scalar, stack, name, api, true, depth)
            }
            Shape::Text(TextKind::DateTime) => self.date_time(name, api, required),
            Shape::Text(kind) => {
                let raw = self.last(name).unwrap_or_default().to_owned();
                match kind {
                    TextKind::Integer | TextKind::Number => {
                        let text = raw.trim();
                        if text.is_empty() {
                            if required {
                                self.error(api, "is required");
                            }
                            return None;
                        }
                        let number = text
                            .parse::<i64>()
                            .map(Number::from)
                            .ok()
                            .or_else(|| text.parse::<u64>().map(Number::from).ok())
                            .or_else(|| {
                                (kind == TextKind::Number)
                                    .then(|| text.parse::<f64>().ok().and_then(Number::from_f64))
                                    .flatten()
                            });
                        match number {
                            Some(n) => Some(Value::Number(n)),
                            None => {
                                self.error(
                                    api,
                                    if kind == TextKind::Integer {
                                        "must be an integer"
                                    } else {
                                        "must be a number"
                                    },
                                );
                                None
                            }
                        }
                    }
                    _ if raw.is_empty() && !required => None,
                    _ => Some(Value::String(raw)),
                }
            }
            Shape::Password => {
                let raw = self.last(name).unwrap_or_default();
                if raw.is_empty() {
                    self.kept_or_missing(api, required)
                } else {
                    Some(Value::String(raw.to_owned()))
                }
            }
            Shape::SecretJson(kind) => {
                let raw = self.last(name).unwrap_or_default();
                if raw.trim().is_empty() {
                    self.kept_or_missing(api, required)
                } else {
                    let raw = raw.to_owned();
                    self.json(&raw, kind, api)
                }
            }
            Shape::Json(kind) => {
                let raw = self.last(name).unwrap_or_default().to_owned();
                if raw.trim().is_empty() {
                    if required {
                        self.error(api, "is required");
                    }
                    None
                } else {
                    self.json(&raw, kind, api)
                }
            }
            Shape::Boolean => Some(Value::Bool(self.last(name) == Some("true"))),
            Shape::Enum(values) => {
                let raw = self.last(name).unwrap_or_default();
                if let Some(v) = values.iter().find(|v| option_value(v) == raw) {
                    return Some(v.clone());
                }
                if raw.is_empty() {
                    if required {
                        self.error(api, "choose one of the options");
                    }
                } else {
                    self.error(api, "is not one of the options");
                }
                None
            }
            Shape::Reference(_, nullable) => {
                let raw = self.last(name).unwrap_or_default().trim().to_owned();
                if raw.is_empty() {
                    if nullable {
                        return Some(Value::Null);
                    }
                    if required {
                        self.error(api, "choose a block document");
                    }
                    return None;
                }
                match Uuid::parse_str(&raw) {
                    Ok(id) => Some(json!({"$ref": {"block_document_id": id.to_string()}})),
                    Err(_) => {
                        self.error(api, "is not a block document id");
                        None
                    }
                }
            }
            Shape::Object(props) => {
                let mut object = Map::new();
                for p in &props {
                    let mut child_api = api.to_vec();
                    child_api.push(p.key.clone());
                    let child_name = format!("{name}.{}", escape_key(&p.key));
                    if let Some(v) = self.field(p, &child_name, &child_api, depth + 1, stack) {
                        object.insert(p.key.clone(), v);
                    }
                }
                (required || !object.is_empty()).then_some(Value::Object(object))
            }
            Shape::Array(items) => {
                let indices = self.rows(&format!("{name}."), false);
                if indices.len() > MAX_ROWS {
                    self.error(api, format!("has more than {MAX_ROWS} items"));
                    return None;
                }
                let mut out = Vec::new();
                for index in indices {
                    if self.action == Action::Remove(name.to_owned(), index) {
                        continue;
                    }
                    let mut item_api = api.to_vec();
                    item_api.push(out.len().to_string());
                    let item_name = format!("{name}.{index}");
                    let value = self.node(&items, &item_name, &item_api, true, depth + 1, stack);
                    out.push(value.unwrap_or(Value::Null));
                }
                if self.action == Action::Add(name.to_owned()) {
                    out.push(Value::Null);
                }
                (required || !out.is_empty()).then_some(Value::Array(out))
            }
            Shape::Dict(values) => self.dict(name, api, &values, required, depth, stack),
            Shape::Choice(alternatives, nullable) => {
                let choice = self.last(&format!("{name}#choice")).unwrap_or_default();
                let index = choice
                    .parse::<usize>()
                    .ok()
                    .filter(|i| *i < alternatives.len());
                match index {
                    Some(i) => {
                        let alt_name = format!("{name}#a{i}");
                        self.node(&alternatives[i], &alt_name, api, true, depth + 1, stack)
                    }
                    None if nullable => Some(Value::Null),
                    None => {
                        if required {
                            self.error(api, "choose one of the options");
                        }
                        None
                    }
                }
            }
        }
    }

    /// An empty secret: the stored (masked) value on edit, else absent.
    fn kept_or_missing(&mut self, api: &[String], required: bool) -> Option<Value> {
        if self.mode == Mode::Edit
            && let Some(original) = lookup(self.original, api)
        {
            return Some(original.clone());
        }
        if required {
            self.error(api, "is required");
        }
        None
    }

    fn json(&mut self, raw: &str, kind: JsonKind, api: &[String]) -> Option<Value> {
        match serde_json::from_str::<Value>(raw) {
            Ok(value) => {
                let fits = match kind {
                    JsonKind::Any => true,
                    JsonKind::Object => value.is_object(),
                    JsonKind::Array => value.is_array(),
                };
                if fits {
                    Some(value)
                } else {
                    self.error(api, format!("must be a {}", kind.describe()));
                    None
                }
            }
            Err(e) => {
                // serde_json's syntax errors name a line and column, never the text.
                self.error(api, format!("must be a {}: {e}", kind.describe()));
                None
            }
        }
    }

    fn date_time(&mut self, name: &str, api: &[String], required: bool) -> Option<Value> {
        let local = self.last(name).unwrap_or_default().trim().to_owned();
        let offset = self
            .last(&format!("{name}#tz"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        if local.is_empty() {
            if required {
                self.error(api, "is required");
            }
            return None;
        }
        let local = if chrono::NaiveDateTime::parse_from_str(&local, "%Y-%m-%dT%H:%M").is_ok() {
            format!("{local}:00")
        } else {
            local
        };
        if chrono::NaiveDateTime::parse_from_str(&local, "%Y-%m-%dT%H:%M:%S%.f").is_err() {
            self.error(api, "must be a date and time (YYYY-MM-DDTHH:MM:SS)");
            return None;
        }
        let offset = match offset.as_str() {
            "" | "z" => "Z".to_owned(),
            other => other.to_owned(),
        };
        let value = format!("{local}{offset}");
        if chrono::DateTime::parse_from_rfc3339(&value).is_err() {
            self.error(api, "has an invalid UTC offset (use Z or +HH:MM)");
            return None;
        }
        Some(Value::String(value))
    }

    fn dict(
        &mut self,
        name: &str,
        api: &[String],
        values: &Value,
        required: bool,
        depth: usize,
        stack: &[String],
    ) -> Option<Value> {
        let indices = self.rows(&format!("{name}#k"), true);
        if indices.len() > MAX_ROWS {
            self.error(api, format!("has more than {MAX_ROWS} entries"));
            return None;
        }
        let mut out = Map::new();
        for index in indices {
            if self.action == Action::Remove(name.to_owned(), index) {
                continue;
            }
            let key = self
                .last(&format!("{name}#k{index}"))
                .unwrap_or_default()
                .to_owned();
            let mut value_api = api.to_vec();
            value_api.push(key.clone());
            let value_name = format!("{name}#v{index}");
            if key.is_empty() {
                // A blank row (e.g. just added) is skipped; a value without a key is not.
                let before = self.errors.len();
                let value = self.node(values, &value_name, &value_api, false, depth + 1, stack);
                self.errors.truncate(before);
                let blank = matches!(&value, None | Some(Value::Null))
                    || value.as_ref().and_then(Value::as_str) == Some("");
                if !blank {
                    self.error(api, format!("row {} has a value but no key", index + 1));
                }
                continue;
            }
            if out.contains_key(&key) {
                self.error(api, format!("row {} repeats a key", index + 1));
                continue;
            }
            let value = self.node(values, &value_name, &value_api, true, depth + 1, stack);
            out.insert(key, value.unwrap_or(Value::Null));
        }
        if self.action == Action::Add(name.to_owned()) && !out.contains_key("") {
            out.insert(String::new(), Value::Null);
        }
        (required || !out.is_empty()).then_some(Value::Object(out))
    }
}
