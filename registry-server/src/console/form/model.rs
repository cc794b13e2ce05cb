//! The widget model: the form as a tree of fields built from the schema and the data to
//! show. The HTML is generated from it alone, and so are (in tests) the pairs a browser
//! would submit.

use block_types::FieldError;
use serde_json::{Map, Value};

use super::schema::{
    JsonKind, Prop, Schema, Shape, TextKind, alternative_label, fits, humanize, same_widget,
};
use super::{FormInput, Mode};

/// One field of the form.
#[derive(Debug, Clone)]
pub(super) struct Node {
    /// Pre-order number (error assignment).
    seq: usize,
    /// The form path (see the module docs); the base of every input name and id here.
    pub(super) name: String,
    /// The data path, keys from the top (errors, secrets).
    pub(super) api: Vec<String>,
    pub(super) label: String,
    pub(super) hint: Option<String>,
    pub(super) optional: bool,
    pub(super) errors: Vec<String>,
    pub(super) widget: Widget,
}

/// An option of a `<select>`.
#[derive(Debug, Clone)]
pub(super) struct Opt {
    pub(super) value: String,
    pub(super) label: String,
    pub(super) selected: bool,
}

/// One row of an array or dictionary.
#[derive(Debug, Clone)]
pub(super) struct Row {
    pub(super) index: usize,
    pub(super) key: Option<Node>,
    pub(super) value: Node,
}

#[derive(Debug, Clone)]
pub(super) enum Widget {
    Input {
        kind: TextKind,
        value: String,
        min_length: Option<u64>,
        max_length: Option<u64>,
        min: Option<String>,
        max: Option<String>,
    },
    DateTime {
        local: String,
        offset: String,
    },
    Password {
        kept: bool,
    },
    Json {
        kind: JsonKind,
        value: String,
        secret: bool,
        kept: bool,
    },
    Switch {
        checked: bool,
    },
    Select {
        options: Vec<Opt>,
    },
    Reference {
        options: Vec<Opt>,
        slug: String,
        type_name: String,
    },
    Group {
        children: Vec<Node>,
    },
    Choice {
        options: Vec<Opt>,
        alternatives: Vec<(usize, Node)>,
    },
    Rows {
        rows: Vec<Row>,
        dict: bool,
    },
    Null,
}

/// `%`, `.`, `#`, `/` and `:` percent-encoded: a property key as one step of a form path.
pub(super) fn escape_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        match c {
            '%' => out.push_str("%25"),
            '.' => out.push_str("%2E"),
            '#' => out.push_str("%23"),
            '/' => out.push_str("%2F"),
            ':' => out.push_str("%3A"),
            c => out.push(c),
        }
    }
    out
}

/// A form path as an element id (see the module docs).
pub(super) fn field_id(name: &str) -> String {
    let mut out = String::from("field-");
    for byte in name.bytes() {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => out.push(char::from(byte)),
            b'.' => out.push('-'),
            other => out.push_str(&format!("_{other:02X}")),
        }
    }
    out
}

/// The API's form of a data path: `data.a.b`.
pub(super) fn api_path(api: &[String]) -> String {
    let mut out = String::from("data");
    for segment in api {
        out.push('.');
        out.push_str(segment);
    }
    out
}

/// The value at `api` in `data` (object keys; array indices as numbers).
pub(super) fn lookup<'v>(
    data: Option<&'v Map<String, Value>>,
    api: &[String],
) -> Option<&'v Value> {
    let (first, rest) = api.split_first()?;
    let mut current = data?.get(first)?;
    for segment in rest {
        current = match current {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// An enum value as an option value: strings as they are, anything else as JSON.
pub(super) fn option_value(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Splits an RFC 3339 date-time into its local part (always with seconds) and its offset.
pub(super) fn split_date_time(value: &str) -> (String, String) {
    let (local, offset) = if let Some(local) = value.strip_suffix(['Z', 'z']) {
        (local, "Z")
    } else if value.len() > 6
        && value.is_char_boundary(value.len() - 6)
        && matches!(value.as_bytes()[value.len() - 6], b'+' | b'-')
        && value.as_bytes()[value.len() - 3] == b':'
    {
        value.split_at(value.len() - 6)
    } else {
        (value, "")
    };
    (local.to_owned(), offset.to_owned())
}

fn text_of(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn pretty(value: Option<&Value>) -> String {
    match value {
        None => String::new(),
        Some(v) => serde_json::to_string_pretty(v).unwrap_or_default(),
    }
}

fn string_of(schema: &Value, key: &str) -> Option<String> {
    schema.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// The widget of a plain scalar (`Text`, `Boolean` or `Enum`; `schema` has its bounds).
/// `optional`: an enum select offers none; `or_null`: the value may be `null`, shown as
/// empty (a boolean becomes a none/yes/no select, since a switch cannot say none).
fn scalar_widget(
    shape: &Shape,
    schema: &Value,
    current: Option<&Value>,
    optional: bool,
    or_null: bool,
) -> Widget {
    let none = |selected: bool| Opt {
        value: String::new(),
        label: "— none —".to_owned(),
        selected,
    };
    match shape {
        Shape::Text(TextKind::DateTime) => {
            let (local, offset) = match current {
                Some(Value::String(s)) => split_date_time(s),
                _ => (String::new(), String::new()),
            };
            Widget::DateTime { local, offset }
        }
        Shape::Text(kind) => {
            let number = |k: &str| {
                schema
                    .get(k)
                    .filter(|v| v.is_number())
                    .map(Value::to_string)
            };
            Widget::Input {
                kind: *kind,
                value: text_of(current),
                min_length: schema.get("minLength").and_then(Value::as_u64),
                max_length: schema.get("maxLength").and_then(Value::as_u64),
                min: number("minimum"),
                max: number("maximum"),
            }
        }
        Shape::Boolean if or_null => {
            let mut options = vec![none(!matches!(current, Some(Value::Bool(_))))];
            for (value, label) in [(true, "Yes"), (false, "No")] {
                options.push(Opt {
                    value: value.to_string(),
                    label: label.to_owned(),
                    selected: current == Some(&Value::Bool(value)),
                });
            }
            Widget::Select { options }
        }
        Shape::Boolean => Widget::Switch {
            checked: current == Some(&Value::Bool(true)),
        },
        Shape::Enum(values) => {
            let mut options = Vec::new();
            if optional || or_null {
                options.push(none(
                    current.is_none_or(Value::is_null)
                        || !values.iter().any(|v| current == Some(v)),
                ));
            }
            for v in values {
                options.push(Opt {
                    value: option_value(v),
                    label: option_value(v),
                    selected: current == Some(v),
                });
            }
            Widget::Select { options }
        }
        _ => Widget::Null,
    }
}

/// Where a choice is, for [`Builder::choice`].
struct ChoiceContext<'c> {
    name: &'c str,
    label: &'c str,
    api: &'c [String],
    has_none: bool,
    depth: usize,
    stack: &'c [String],
}

struct Builder<'a> {
    schema: Schema<'a>,
    input: &'a FormInput<'a>,
    use_defaults: bool,
    seq: usize,
}

/// Builds the form's fields for `input`, with its errors placed; also the errors that
/// match no field.
pub(super) fn build(input: &FormInput<'_>) -> (Vec<Node>, Vec<FieldError>) {
    let data = input.data.or(match input.mode {
        Mode::Edit => input.original,
        Mode::Create => None,
    });
    let mut builder = Builder {
        schema: Schema::new(input.schema),
        input,
        use_defaults: data.is_none(),
        seq: 0,
    };
    let mut nodes = Vec::new();
    for prop in builder.schema.top() {
        let value = data.and_then(|d| d.get(&prop.key));
        let node = builder.field(
            &prop,
            format!("data.{}", escape_key(&prop.key)),
            vec![prop.key.clone()],
            value,
            1,
            &[],
        );
        nodes.push(node);
    }
    let unmatched = place_errors(&mut nodes, input.errors);
    (nodes, unmatched)
}

impl Builder<'_> {
    fn next_seq(&mut self) -> usize {
        self.seq += 1;
        self.seq
    }

    /// The rows of a list or (`dict`) a dict at `name`/`api`: each entry (its index or key,
    /// its value) as a node of `items` one level down, and in a dict a text input for its key.
    #[allow(clippy::too_many_arguments)]
    fn rows(
        &mut self,
        items: &Value,
        entries: Vec<(String, &Value)>,
        dict: bool,
        name: &str,
        api: &[String],
        depth: usize,
        stack: &[String],
    ) -> Vec<Row> {
        entries
            .into_iter()
            .enumerate()
            .map(|(i, (k, v))| {
                let key = dict.then(|| Node {
                    seq: self.next_seq(),
                    name: format!("{name}#k{i}"),
                    api: api.to_vec(),
                    label: format!("Key {}", i + 1),
                    hint: None,
                    optional: false,
                    errors: Vec::new(),
                    widget: Widget::Input {
                        kind: TextKind::Text,
                        value: k.clone(),
                        min_length: None,
                        max_length: None,
                        min: None,
                        max: None,
                    },
                });
                let (label, row_name) = if dict {
                    (format!("Value {}", i + 1), format!("{name}#v{i}"))
                } else {
                    (format!("Item {}", i + 1), format!("{name}.{i}"))
                };
                let mut row_api = api.to_vec();
                row_api.push(k);
                let value = self.node(
                    items,
                    label,
                    row_name,
                    row_api,
                    false,
                    Some(v),
                    depth + 1,
                    stack,
                );
                Row {
                    index: i,
                    key,
                    value,
                }
            })
            .collect()
    }

    fn field(
        &mut self,
        prop: &Prop,
        name: String,
        api: Vec<String>,
        value: Option<&Value>,
        depth: usize,
        stack: &[String],
    ) -> Node {
        let label = string_of(&prop.schema, "title").unwrap_or_else(|| humanize(&prop.key));
        self.node(
            &prop.schema,
            label,
            name,
            api,
            !prop.required,
            value,
            depth,
            stack,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn node(
        &mut self,
        schema: &Value,
        label: String,
        name: String,
        api: Vec<String>,
        optional: bool,
        value: Option<&Value>,
        depth: usize,
        stack: &[String],
    ) -> Node {
        let seq = self.next_seq();
        let resolved = self.schema.resolve(schema, stack);
        let shape = self.schema.shape(&resolved, &api, depth);
        let mut hint = string_of(schema, "description");
        if hint.is_none() && !matches!(shape, Shape::Reference(..)) {
            hint = string_of(&resolved.schema, "description");
        }
        let current: Option<Value> = match value {
            Some(v) => Some(v.clone()),
            None if self.use_defaults => schema
                .get("default")
                .or_else(|| resolved.schema.get("default"))
                .cloned(),
            None => None,
        };
        let current = current.as_ref();
        let kept = || {
            self.input.mode == Mode::Edit
                && lookup(self.input.original, &api).is_some_and(|v| !v.is_null())
        };
        let optional = optional || matches!(shape, Shape::OrNull(..));
        let widget = match shape {
            scalar @ (Shape::Text(_) | Shape::Boolean | Shape::Enum(_)) => {
                scalar_widget(&scalar, &resolved.schema, current, optional, false)
            }
            Shape::OrNull(scalar, schema) => scalar_widget(&scalar, &schema, current, true, true),
            Shape::Password => Widget::Password { kept: kept() },
            Shape::SecretJson(kind) => Widget::Json {
                kind,
                value: String::new(),
                secret: true,
                kept: kept(),
            },
            Shape::Json(kind) => Widget::Json {
                kind,
                value: pretty(current),
                secret: false,
                kept: false,
            },
            Shape::Null => Widget::Null,
            Shape::Reference(slug, nullable) => self.reference(slug, optional || nullable, current),
            Shape::Object(props) => {
                let map = current.and_then(Value::as_object);
                let children = props
                    .iter()
                    .map(|p| {
                        let mut child_api = api.clone();
                        child_api.push(p.key.clone());
                        self.field(
                            p,
                            format!("{name}.{}", escape_key(&p.key)),
                            child_api,
                            map.and_then(|m| m.get(&p.key)),
                            depth + 1,
                            &resolved.stack,
                        )
                    })
                    .collect();
                Widget::Group { children }
            }
            Shape::Array(items) => {
                let entries = current
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .map(|(i, v)| (i.to_string(), v))
                    .collect();
                let rows = self.rows(&items, entries, false, &name, &api, depth, &resolved.stack);
                Widget::Rows { rows, dict: false }
            }
            Shape::Dict(values) => {
                let entries = current
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v))
                    .collect();
                let rows = self.rows(&values, entries, true, &name, &api, depth, &resolved.stack);
                Widget::Rows { rows, dict: true }
            }
            Shape::Choice(alternatives, nullable) => {
                let context = ChoiceContext {
                    name: &name,
                    label: &label,
                    api: &api,
                    has_none: nullable || optional,
                    depth,
                    stack: &resolved.stack,
                };
                self.choice(&context, &alternatives, current)
            }
        };
        Node {
            seq,
            name,
            api,
            label,
            hint,
            optional,
            errors: Vec::new(),
            widget,
        }
    }

    fn reference(&self, slug: String, optional: bool, current: Option<&Value>) -> Widget {
        let current_id = current
            .and_then(|v| v.get("$ref"))
            .and_then(|r| r.get("block_document_id"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut options = vec![Opt {
            value: String::new(),
            label: if optional {
                "— none —"
            } else {
                "— choose —"
            }
            .to_owned(),
            selected: current_id.is_none(),
        }];
        let mut found = false;
        for option in self.input.references.get(&slug).into_iter().flatten() {
            let id = option.id.to_string();
            let selected = current_id.as_deref() == Some(id.as_str());
            found |= selected;
            options.push(Opt {
                value: id,
                label: option.name.clone(),
                selected,
            });
        }
        if let (Some(id), false) = (&current_id, found) {
            options.push(Opt {
                value: id.clone(),
                label: format!("Unknown document {id}"),
                selected: true,
            });
        }
        let type_name = self
            .input
            .type_names
            .get(&slug)
            .cloned()
            .unwrap_or_else(|| humanize(&slug));
        Widget::Reference {
            options,
            slug,
            type_name,
        }
    }

    fn choice(
        &mut self,
        at: &ChoiceContext<'_>,
        alternatives: &[Value],
        current: Option<&Value>,
    ) -> Widget {
        let ChoiceContext {
            name,
            api,
            has_none,
            depth,
            stack,
            ..
        } = *at;
        let resolved: Vec<_> = alternatives
            .iter()
            .map(|a| {
                let r = self.schema.resolve(a, stack);
                let shape = self.schema.shape(&r, api, depth + 1);
                (r, shape)
            })
            .collect();
        let selected: Option<usize> = match current {
            None | Some(Value::Null) if has_none => None,
            None => Some(0),
            Some(v) => {
                let id = v
                    .get("$ref")
                    .and_then(|r| r.get("block_document_id"))
                    .and_then(Value::as_str);
                let by_reference = id.and_then(|id| {
                    resolved.iter().position(|(_, shape)| match shape {
                        Shape::Reference(slug, _) => self
                            .input
                            .references
                            .get(slug)
                            .is_some_and(|o| o.iter().any(|o| o.id.to_string() == id)),
                        _ => false,
                    })
                });
                Some(
                    by_reference
                        .or_else(|| {
                            resolved
                                .iter()
                                .position(|(r, shape)| fits(shape, v, &r.schema))
                        })
                        .unwrap_or(0),
                )
            }
        };
        let mut options = Vec::new();
        if has_none {
            options.push(Opt {
                value: "none".to_owned(),
                label: "— none —".to_owned(),
                selected: selected.is_none(),
            });
        }
        // An alternative showing the same widget as an earlier one is left out: its values
        // fit the earlier one, which is what the form picks for them.
        let shown: Vec<usize> = (0..alternatives.len())
            .filter(|&i| {
                !resolved[..i]
                    .iter()
                    .any(|(_, earlier)| same_widget(earlier, &resolved[i].1))
            })
            .collect();
        let mut labels: Vec<String> = shown
            .iter()
            .map(|&i| {
                let (r, shape) = &resolved[i];
                match shape {
                    Shape::Reference(slug, _)
                        if alternatives[i].get("title").is_none()
                            && r.schema.get("title").is_none() =>
                    {
                        match self.input.type_names.get(slug) {
                            Some(name) => format!("Stored {name}"),
                            None => alternative_label(&alternatives[i], &r.schema, shape),
                        }
                    }
                    _ => alternative_label(&alternatives[i], &r.schema, shape),
                }
            })
            .collect();
        // Labels that still collide (two untitled groups with the same fields) are numbered.
        let counts = labels.clone();
        for (n, label) in labels.iter_mut().enumerate() {
            if counts.iter().filter(|l| *l == label).count() > 1 {
                label.push_str(&format!(" (option {})", n + 1));
            }
        }
        let mut nodes = Vec::new();
        for (&i, label) in shown.iter().zip(labels) {
            let alternative = &alternatives[i];
            let shape = &resolved[i].1;
            options.push(Opt {
                value: i.to_string(),
                label: label.clone(),
                selected: selected == Some(i),
            });
            let value = if selected == Some(i) { current } else { None };
            // One alternative besides none, or a nested choice: its input is the field itself.
            let node_label = if shown.len() == 1 || matches!(shape, Shape::Choice(..)) {
                at.label.to_owned()
            } else {
                label
            };
            let mut node = self.node(
                alternative,
                node_label,
                format!("{name}#a{i}"),
                api.to_vec(),
                false,
                value,
                depth + 1,
                stack,
            );
            // A definition's own description (often a long docstring) is not repeated.
            if alternative.get("description").is_none() {
                node.hint = None;
            }
            nodes.push((i, node));
        }
        Widget::Choice {
            options,
            alternatives: nodes,
        }
    }
}

impl Node {
    /// This node and the nodes below it, in document order.
    fn walk_mut(&mut self, f: &mut dyn FnMut(&mut Node)) {
        f(self);
        match &mut self.widget {
            Widget::Group { children } => children.iter_mut().for_each(|c| c.walk_mut(f)),
            Widget::Choice { alternatives, .. } => {
                alternatives.iter_mut().for_each(|(_, c)| c.walk_mut(f));
            }
            Widget::Rows { rows, .. } => {
                for row in rows {
                    if let Some(key) = &mut row.key {
                        key.walk_mut(f);
                    }
                    row.value.walk_mut(f);
                }
            }
            _ => {}
        }
    }
}

/// Puts each error at the deepest field whose data path is its path or a prefix of it
/// (the first such field in document order); returns the errors no field takes.
fn place_errors(nodes: &mut [Node], errors: &[FieldError]) -> Vec<FieldError> {
    let mut paths: Vec<(usize, String)> = Vec::new();
    for node in nodes.iter_mut() {
        node.walk_mut(&mut |n| paths.push((n.seq, api_path(&n.api))));
    }
    let mut placed: Vec<(usize, String)> = Vec::new();
    let mut unmatched = Vec::new();
    for error in errors {
        let best = paths
            .iter()
            .filter(|(_, p)| {
                error.field == *p
                    || error
                        .field
                        .strip_prefix(p.as_str())
                        .is_some_and(|rest| rest.starts_with('.'))
            })
            .min_by_key(|(seq, p)| (std::cmp::Reverse(p.len()), *seq));
        match best {
            Some((seq, _)) => placed.push((*seq, error.message.clone())),
            None => unmatched.push(error.clone()),
        }
    }
    for node in nodes.iter_mut() {
        node.walk_mut(&mut |n| {
            n.errors.extend(
                placed
                    .iter()
                    .filter(|(seq, _)| *seq == n.seq)
                    .map(|(_, m)| m.clone()),
            );
        });
    }
    unmatched
}

/// The pairs a browser submits for these fields (no button pressed; passwords empty).
#[cfg(test)]
pub(super) fn submitted_pairs(nodes: &[Node]) -> Vec<(String, String)> {
    fn select(options: &[Opt]) -> String {
        options
            .iter()
            .find(|o| o.selected)
            .or_else(|| options.first())
            .map(|o| o.value.clone())
            .unwrap_or_default()
    }
    fn walk(node: &Node, out: &mut Vec<(String, String)>) {
        let name = node.name.clone();
        match &node.widget {
            Widget::Input { value, .. } => out.push((name, value.clone())),
            Widget::DateTime { local, offset } => {
                out.push((name.clone(), local.clone()));
                out.push((format!("{name}#tz"), offset.clone()));
            }
            Widget::Password { .. } => out.push((name, String::new())),
            Widget::Json { value, .. } => out.push((name, value.replace('\n', "\r\n"))),
            Widget::Switch { checked } => {
                out.push((name.clone(), "false".to_owned()));
                if *checked {
                    out.push((name, "true".to_owned()));
                }
            }
            Widget::Select { options } | Widget::Reference { options, .. } => {
                out.push((name, select(options)));
            }
            Widget::Group { children } => children.iter().for_each(|c| walk(c, out)),
            Widget::Choice {
                options,
                alternatives,
            } => {
                out.push((format!("{name}#choice"), select(options)));
                alternatives.iter().for_each(|(_, c)| walk(c, out));
            }
            Widget::Rows { rows, .. } => {
                for row in rows {
                    match &row.key {
                        Some(key) => walk(key, out),
                        None => out.push((format!("{name}.{}#row", row.index), String::new())),
                    }
                    walk(&row.value, out);
                }
            }
            Widget::Null => {}
        }
    }
    let mut out = Vec::new();
    nodes.iter().for_each(|n| walk(n, &mut out));
    out
}
