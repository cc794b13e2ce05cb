//! Tests of the block form: snapshots of every known schema's form, round trips
//! (render → submitted pairs → decode) as properties, and decoding errors.

use std::collections::HashMap;

use block_types::FieldError;
use block_types::secret_fields::{obfuscate, secret_paths_of};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::model::{self, Node, Widget, lookup, submitted_pairs};
use super::schema::{JsonKind, Schema, Shape, TextKind, fits};
use super::{Action, FormInput, Mode, RefOption, decode, render, unmatched_errors};

const PREFECT_3: &str =
    include_str!("../../../../block-types/tests/fixtures/block-schemas-prefect-3.9.1.json");
const FIXTURES: [(&str, &str); 4] = [
    ("prefect-2.7.7", include_str!("fixtures/prefect-2.7.7.json")),
    (
        "prefect-gcp-0.6.22",
        include_str!("fixtures/prefect-gcp-0.6.22.json"),
    ),
    (
        "prefect-sqlalchemy-0.6.1",
        include_str!("fixtures/prefect-sqlalchemy-0.6.1.json"),
    ),
    (
        "prefect-docker-0.7.4",
        include_str!("fixtures/prefect-docker-0.7.4.json"),
    ),
];

/// Every schema the tests know: (name, fields).
fn all_schemas() -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = block_types::catalog::all_specs()
        .into_iter()
        .map(|spec| (format!("builtin-{}", spec.block_type.slug), spec.fields))
        .collect();
    let mut files = vec![("prefect-3.9.1", PREFECT_3)];
    files.extend(FIXTURES);
    for (file, text) in files {
        let parsed: Map<String, Value> = serde_json::from_str(text).unwrap();
        for (class, entry) in parsed {
            out.push((format!("{file}-{class}"), entry["fields"].clone()));
        }
    }
    out
}

fn empty() -> (HashMap<String, Vec<RefOption>>, HashMap<String, String>) {
    (HashMap::new(), HashMap::new())
}

fn input<'a>(
    schema: &'a Value,
    mode: Mode,
    data: Option<&'a Map<String, Value>>,
    original: Option<&'a Map<String, Value>>,
    refs: &'a HashMap<String, Vec<RefOption>>,
    names: &'a HashMap<String, String>,
    errors: &'a [FieldError],
) -> FormInput<'a> {
    FormInput {
        schema,
        mode,
        data,
        original,
        references: refs,
        type_names: names,
        errors,
    }
}

fn html_of(input: &FormInput<'_>) -> String {
    render(input).into_string()
}

/// The create form of `schema`: no data, references or errors.
fn create_html(schema: &Value) -> String {
    let (refs, names) = empty();
    html_of(&input(schema, Mode::Create, None, None, &refs, &names, &[]))
}

/// The edit form of `schema` over the stored (masked) `original`.
fn edit_html(
    schema: &Value,
    original: &Map<String, Value>,
    refs: &HashMap<String, Vec<RefOption>>,
    names: &HashMap<String, String>,
) -> String {
    html_of(&input(
        schema,
        Mode::Edit,
        None,
        Some(original),
        refs,
        names,
        &[],
    ))
}

#[test]
fn create_forms_of_every_known_schema() {
    let schemas = all_schemas();
    assert!(schemas.len() > 40, "{}", schemas.len());
    for (name, schema) in &schemas {
        let html = create_html(schema);
        insta::assert_snapshot!(format!("create-{name}"), html);
    }
}

fn gcs_refs() -> (
    HashMap<String, Vec<RefOption>>,
    HashMap<String, String>,
    Uuid,
) {
    let id = Uuid::from_u128(0x1234);
    let refs = HashMap::from([(
        "gcp-credentials".to_owned(),
        vec![
            RefOption {
                id,
                name: "zoom-gcp-creds".to_owned(),
            },
            RefOption {
                id: Uuid::from_u128(0x5678),
                name: "other <creds>".to_owned(),
            },
        ],
    )]);
    let names = HashMap::from([("gcp-credentials".to_owned(), "GCP Credentials".to_owned())]);
    (refs, names, id)
}

fn builtin(slug: &str) -> Value {
    block_types::catalog::spec_for_slug(slug).unwrap().fields
}

#[test]
fn edit_forms_of_gcp_credentials_and_gcs_bucket() {
    let (refs, names, id) = gcs_refs();
    let creds = builtin("gcp-credentials");
    let data = json!({
        "service_account_info": {"type": "********", "private_key": "********"},
        "project": "zoom",
    });
    let data = data.as_object().unwrap();
    let html = edit_html(&creds, data, &refs, &names);
    assert!(!html.contains("********"), "{html}");
    assert!(html.contains("Kept unless you type a new value."), "{html}");
    insta::assert_snapshot!("edit-gcp-credentials", html);

    let bucket = builtin("gcs-bucket");
    let data = json!({
        "bucket": "zoom-bucket",
        "gcp_credentials": {"$ref": {"block_document_id": id.to_string()}},
        "bucket_folder": "x/",
    });
    let data = data.as_object().unwrap();
    let html = edit_html(&bucket, data, &refs, &names);
    assert!(
        html.contains(&format!("<option value=\"{id}\" selected>zoom-gcp-creds")),
        "{html}"
    );
    assert!(html.contains("other &lt;creds&gt;"), "{html}");
    insta::assert_snapshot!("edit-gcs-bucket", html);
}

// ---- round trips -------------------------------------------------------------------

/// A generator of data the form represents, mirroring the form's classification.
struct Gen<'a> {
    schema: Schema<'a>,
}

type Strat = BoxedStrategy<Option<Value>>;

fn text(pattern: &str) -> BoxedStrategy<Value> {
    proptest::string::string_regex(pattern)
        .unwrap()
        .prop_map(Value::String)
        .boxed()
}

fn arb_json(kind: JsonKind) -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(Value::from),
        "[^\r\n]{0,8}".prop_map(Value::String),
    ];
    let any = leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_. ]{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    match kind {
        JsonKind::Any => any.boxed(),
        JsonKind::Object => prop::collection::btree_map("[a-z_. ]{0,6}", any, 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
            .boxed(),
        JsonKind::Array => prop::collection::vec(any, 0..4)
            .prop_map(Value::Array)
            .boxed(),
    }
}

/// Values of a one-line input; `pattern` for plain text.
fn text_value(kind: TextKind, pattern: &str) -> BoxedStrategy<Value> {
    match kind {
        TextKind::Text => text(pattern),
        TextKind::Url => text("https://example\\.com/[a-z0-9]{0,6}"),
        TextKind::Email => text("[a-z]{1,5}@example\\.com"),
        TextKind::Date => text("20[0-9]{2}-0[1-9]-1[0-9]"),
        TextKind::DateTime => text(
            "20[0-9]{2}-0[1-9]-1[0-9]T1[0-9]:[0-5][0-9]:[0-5][0-9](\\.[0-9]{3})?(Z|[+-]0[0-9]:[03]0)",
        ),
        TextKind::Integer => any::<i64>().prop_map(Value::from).boxed(),
        TextKind::Number => prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
        ]
        .boxed(),
    }
}

/// `required`: always a value; else maybe absent (`None`).
fn maybe(value: BoxedStrategy<Value>, required: bool) -> Strat {
    if required {
        value.prop_map(Some).boxed()
    } else {
        prop::option::of(value).boxed()
    }
}

impl Gen<'_> {
    fn object(
        &self,
        schema: &Value,
        api: &[String],
        depth: usize,
        stack: &[String],
    ) -> BoxedStrategy<Map<String, Value>> {
        let resolved = self.schema.resolve(schema, stack);
        let props = super::schema::properties(&resolved.schema);
        let mut strategy: BoxedStrategy<Map<String, Value>> = Just(Map::new()).boxed();
        for p in props {
            let child_api = [api, std::slice::from_ref(&p.key)].concat();
            let value = self.value(&p.schema, &child_api, p.required, depth, &resolved.stack);
            let key = p.key.clone();
            strategy = (strategy, value)
                .prop_map(move |(mut map, v)| {
                    if let Some(v) = v {
                        map.insert(key.clone(), v);
                    }
                    map
                })
                .boxed();
        }
        strategy
    }

    fn value(
        &self,
        schema: &Value,
        api: &[String],
        required: bool,
        depth: usize,
        outer: &[String],
    ) -> Strat {
        let resolved = self.schema.resolve(schema, outer);
        let shape = self.schema.shape(&resolved, api, depth);
        let stack = resolved.stack.clone();
        let pick = |opt: &str| {
            if required {
                format!("[^\r\n]{{0,{opt}}}")
            } else {
                format!("[^\r\n]{{1,{opt}}}")
            }
        };
        match shape {
            Shape::Null => Just(Some(Value::Null)).boxed(),
            Shape::Text(kind) => maybe(text_value(kind, &pick("10")), required),
            Shape::OrNull(scalar, _) => {
                // Empty means null: a value is never empty text.
                let value = match *scalar {
                    Shape::Text(kind) => text_value(kind, "[^\r\n]{1,10}"),
                    Shape::Boolean => any::<bool>().prop_map(Value::Bool).boxed(),
                    Shape::Enum(values) => proptest::sample::select(values).boxed(),
                    other => unreachable!("{other:?}"),
                };
                prop_oneof![Just(Value::Null), value].prop_map(Some).boxed()
            }
            Shape::Password => maybe(text("[^\r\n]{1,10}"), required),
            Shape::SecretJson(kind) | Shape::Json(kind) => maybe(arb_json(kind), required),
            Shape::Boolean => any::<bool>().prop_map(|b| Some(Value::Bool(b))).boxed(),
            Shape::Enum(values) => maybe(proptest::sample::select(values).boxed(), required),
            Shape::Reference(_, nullable) => {
                let reference = any::<u128>()
                    .prop_map(
                        |n| json!({"$ref": {"block_document_id": Uuid::from_u128(n).to_string()}}),
                    )
                    .boxed();
                if nullable {
                    prop_oneof![Just(Value::Null), reference]
                        .prop_map(Some)
                        .boxed()
                } else {
                    maybe(reference, required)
                }
            }
            Shape::Object(_) => {
                let object = self.object(schema, api, depth + 1, outer);
                object
                    .prop_map(move |m| (required || !m.is_empty()).then_some(Value::Object(m)))
                    .boxed()
            }
            Shape::Array(items) => {
                let item = self.value(
                    &items,
                    &[api, &["0".to_owned()]].concat(),
                    true,
                    depth + 1,
                    &stack,
                );
                prop::collection::vec(item, 0..3)
                    .prop_map(move |v| {
                        let v: Vec<Value> =
                            v.into_iter().map(|x| x.unwrap_or(Value::Null)).collect();
                        (required || !v.is_empty()).then_some(Value::Array(v))
                    })
                    .boxed()
            }
            Shape::Dict(values) => {
                let value = self.value(
                    &values,
                    &[api, &["k".to_owned()]].concat(),
                    true,
                    depth + 1,
                    &stack,
                );
                prop::collection::btree_map("[a-zA-Z0-9 ._#%/:<>-]{1,6}", value, 0..3)
                    .prop_map(move |m| {
                        let m: Map<String, Value> = m
                            .into_iter()
                            .map(|(k, v)| (k, v.unwrap_or(Value::Null)))
                            .collect();
                        (required || !m.is_empty()).then_some(Value::Object(m))
                    })
                    .boxed()
            }
            Shape::Choice(alternatives, nullable) => {
                let shapes: Vec<(Shape, Value)> = alternatives
                    .iter()
                    .map(|a| {
                        let r = self.schema.resolve(a, &stack);
                        (self.schema.shape(&r, api, depth + 1), r.schema)
                    })
                    .collect();
                let mut options: Vec<Strat> = Vec::new();
                for (i, alternative) in alternatives.iter().enumerate() {
                    // An alternative an earlier one of the same kind shadows (`string` after
                    // a secret string) is never picked for a value: the form shows the first.
                    if shapes[..i]
                        .iter()
                        .any(|(earlier, _)| shadows(earlier, &shapes[i].0))
                    {
                        continue;
                    }
                    let shapes = shapes.clone();
                    options.push(
                        self.value(alternative, api, true, depth + 1, &stack)
                            .prop_filter("the form picks this alternative", move |v| {
                                let Some(v) = v else { return false };
                                shapes.iter().position(|(s, r)| fits(s, v, r)) == Some(i)
                            })
                            .boxed(),
                    );
                }
                if nullable {
                    options.push(Just(Some(Value::Null)).boxed());
                } else if !required {
                    options.push(Just(None).boxed());
                }
                proptest::strategy::Union::new(options).boxed()
            }
        }
    }
}

/// Whether every value of `later` fits `earlier` (so the form never picks `later`).
fn shadows(earlier: &Shape, later: &Shape) -> bool {
    let stringy = |s: &Shape| {
        matches!(s, Shape::Password)
            || matches!(s, Shape::Text(k) if !matches!(k, TextKind::Integer | TextKind::Number))
    };
    (stringy(earlier) && stringy(later))
        || matches!((earlier, later), (Shape::Boolean, Shape::Boolean))
        || matches!(
            (earlier, later),
            (
                Shape::Text(TextKind::Number),
                Shape::Text(TextKind::Integer | TextKind::Number)
            )
        )
}

/// The pairs with secrets typed in as a user would (their values from `data`).
fn fill_secrets(nodes: &[Node], data: &Map<String, Value>, pairs: &mut [(String, String)]) {
    fn walk(node: &Node, data: &Map<String, Value>, pairs: &mut [(String, String)]) {
        match &node.widget {
            Widget::Password { .. } | Widget::Json { secret: true, .. } => {
                if let Some(v) = lookup(Some(data), &node.api) {
                    let typed = match v {
                        Value::String(s) if matches!(node.widget, Widget::Password { .. }) => {
                            s.clone()
                        }
                        other => other.to_string(),
                    };
                    for pair in pairs.iter_mut().filter(|p| p.0 == node.name) {
                        pair.1 = typed.clone();
                    }
                }
            }
            Widget::Group { children } => children.iter().for_each(|c| walk(c, data, pairs)),
            Widget::Choice {
                options,
                alternatives,
            } => {
                let selected = options.iter().find(|o| o.selected).map(|o| o.value.clone());
                for (i, alternative) in alternatives {
                    if selected.as_deref() == Some(i.to_string().as_str()) {
                        walk(alternative, data, pairs);
                    }
                }
            }
            Widget::Rows { rows, .. } => rows.iter().for_each(|r| walk(&r.value, data, pairs)),
            _ => {}
        }
    }
    nodes.iter().for_each(|n| walk(n, data, pairs));
}

fn round_trip(schema: &Value, data: &Map<String, Value>) -> Result<(), TestCaseError> {
    let (refs, names) = empty();
    // Create: secrets typed in.
    let form = input(schema, Mode::Create, Some(data), None, &refs, &names, &[]);
    let (nodes, _) = model::build(&form);
    let html = render(&form).into_string();
    let mut pairs = submitted_pairs(&nodes);
    // The HTML has every control the model submits.
    for (name, _) in &pairs {
        let escaped = name
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;");
        prop_assert!(
            html.contains(&format!("name=\"{escaped}\"")),
            "{name} not in {html}"
        );
    }
    fill_secrets(&nodes, data, &mut pairs);
    let decoded = decode(schema, Mode::Create, None, &pairs);
    prop_assert!(decoded.errors.is_empty(), "{:?}\n{pairs:?}", decoded.errors);
    prop_assert_eq!(&decoded.action, &Action::Save);
    prop_assert_eq!(
        &Value::Object(decoded.data),
        &Value::Object(data.clone()),
        "pairs: {:?}\nhtml: {}",
        pairs,
        html
    );

    // Edit: secrets masked, left empty, kept.
    let mut masked = data.clone();
    obfuscate(&mut masked, &secret_paths_of(schema));
    let form = input(schema, Mode::Edit, None, Some(&masked), &refs, &names, &[]);
    let (nodes, _) = model::build(&form);
    let pairs = submitted_pairs(&nodes);
    let decoded = decode(schema, Mode::Edit, Some(&masked), &pairs);
    prop_assert!(decoded.errors.is_empty(), "{:?}", decoded.errors);
    prop_assert_eq!(
        &Value::Object(decoded.data),
        &Value::Object(masked.clone()),
        "pairs: {:?}",
        pairs
    );
    Ok(())
}

fn check_round_trips(name: &str, schema: &Value, cases: u32) {
    let generator = Gen {
        schema: Schema::new(schema),
    };
    let strategy = generator.object(schema, &[], 1, &[]);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(e) = runner.run(&strategy, |data| round_trip(schema, &data)) {
        panic!("{name}: {e}");
    }
}

/// Cases per schema (`PROPTEST_CASES` raises it).
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(24)
}

#[test]
fn every_known_schema_round_trips() {
    for (name, schema) in all_schemas() {
        check_round_trips(&name, &schema, cases());
    }
}

fn synthetic() -> Value {
    json!({
        "title": "Synthetic",
        "type": "object",
        "block_type_slug": "synthetic",
        "secret_fields": ["token", "auth.password", "extra.*", "nested.inner.key"],
        "block_schema_references": {"creds": {"block_type_slug": "gcp-credentials", "block_schema_checksum": "x"}},
        "properties": {
            "name": {"type": "string", "title": "Name"},
            "count": {"type": "integer"},
            "ratio": {"type": "number", "default": 0.5},
            "enabled": {"type": "boolean", "default": true},
            "when": {"type": "string", "format": "date-time"},
            "site": {"type": "string", "format": "uri"},
            "mode": {"allOf": [{"$ref": "#/$defs/Mode"}], "default": "fast"},
            "kind": {"const": "synthetic"},
            "either": {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]},
            "typed": {"type": ["string", "integer"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "matrix": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
            "points": {"type": "array", "items": {"$ref": "#/$defs/Point"}},
            "env": {"type": "object", "additionalProperties": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
            "limits": {"type": "object", "additionalProperties": {"type": "integer"}},
            "meta": {"type": "object"},
            "anything": {},
            "token": {"type": "string"},
            "auth": {"$ref": "#/$defs/Auth"},
            "extra": {"type": "object", "additionalProperties": {"type": "string"}},
            "nested": {"type": "object", "properties": {"inner": {"type": "object", "properties": {
                "key": {"type": "string"}, "note": {"type": "string"}}, "required": ["key"]}}},
            "pw": {"type": "string", "format": "password", "writeOnly": true},
            "creds": {"$ref": "#/$defs/Creds"},
            "maybe_creds": {"anyOf": [{"$ref": "#/$defs/Creds"}, {"type": "null"}], "default": null},
            "shape": {"oneOf": [{"$ref": "#/$defs/Point"}, {"$ref": "#/$defs/Auth"}]},
            "tree": {"$ref": "#/$defs/Tree"}
        },
        "required": ["name", "enabled", "mode", "kind", "auth", "creds", "shape"],
        "$defs": {
            "Mode": {"enum": ["fast", "slow", 3], "title": "Mode"},
            "Point": {"type": "object", "title": "Point", "properties": {
                "x": {"type": "integer"}, "y": {"type": "number"}}, "required": ["x", "y"]},
            "Auth": {"type": "object", "title": "Auth", "properties": {
                "user": {"type": "string"}, "password": {"type": "string"}}, "required": ["user"]},
            "Creds": {"type": "object", "title": "GcpCredentials", "block_type_slug": "gcp-credentials",
                "properties": {"project": {"type": "string"}}},
            "Tree": {"type": "object", "title": "Tree", "properties": {
                "label": {"type": "string"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/Tree"}}}, "required": ["label"]}
        }
    })
}

#[test]
fn synthetic_schema_round_trips() {
    check_round_trips("synthetic", &synthetic(), cases() * 8);
}

#[test]
fn synthetic_create_form() {
    let schema = synthetic();
    let html = create_html(&schema);
    insta::assert_snapshot!("create-synthetic", html);
}

// ---- unit tests ----------------------------------------------------------------------

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

/// `list` submitted to the create form of `schema`, decoded.
fn decode_create(schema: &Value, list: &[(&str, &str)]) -> super::Decoded {
    decode(schema, Mode::Create, None, &pairs(list))
}

#[track_caller]
fn error_at(errors: &[FieldError], field: &str) -> String {
    errors
        .iter()
        .find(|e| e.field == field)
        .unwrap_or_else(|| panic!("no error at {field}: {errors:?}"))
        .message
        .clone()
}

#[test]
fn decode_errors_name_the_field_and_never_the_value() {
    let schema = synthetic();
    let submitted = pairs(&[
        ("data.name", "n"),
        ("data.count", "twelve-secret"),
        ("data.ratio", "x1"),
        ("data.when", "yesterday"),
        ("data.when#tz", "Z"),
        ("data.meta", "{not json secret"),
        ("data.extra", "[1, 2]"),
        ("data.typed#choice", "1"),
        ("data.typed#a1", "1.5"),
        ("data.creds", "not-a-uuid"),
        ("data.shape#choice", "0"),
        ("data.shape#a0.x", ""),
        ("data.shape#a0.y", "2"),
    ]);
    let decoded = decode(&schema, Mode::Create, None, &submitted);
    let errors = &decoded.errors;
    assert_eq!(error_at(errors, "data.count"), "must be an integer");
    assert_eq!(error_at(errors, "data.ratio"), "must be a number");
    assert!(error_at(errors, "data.when").starts_with("must be a date and time"));
    let meta = error_at(errors, "data.meta");
    assert!(meta.starts_with("must be a JSON object: "), "{meta}");
    assert_eq!(error_at(errors, "data.extra"), "must be a JSON object");
    assert_eq!(error_at(errors, "data.typed"), "must be an integer");
    assert_eq!(error_at(errors, "data.creds"), "is not a block document id");
    assert_eq!(error_at(errors, "data.shape.x"), "is required");
    assert_eq!(error_at(errors, "data.mode"), "choose one of the options");
    for e in errors {
        assert!(
            !e.message.contains("secret") && !e.message.contains("twelve"),
            "{e:?}"
        );
    }
    // Secret JSON on GCP credentials.
    let creds = builtin("gcp-credentials");
    let decoded = decode_create(
        &creds,
        &[("data.service_account_info", "{\"private_key\": \"abc")],
    );
    let message = error_at(&decoded.errors, "data.service_account_info");
    assert!(message.starts_with("must be a JSON object: "), "{message}");
    assert!(
        !message.contains("abc") && !message.contains("private_key"),
        "{message}"
    );
    // Bad offset, and a required field left empty.
    let date = builtin("date-time");
    let decoded = decode_create(
        &date,
        &[("data.value", "2024-01-02T03:04"), ("data.value#tz", "+5")],
    );
    assert!(error_at(&decoded.errors, "data.value").contains("UTC offset"));
    let decoded = decode_create(&date, &[("data.value", ""), ("data.value#tz", "Z")]);
    assert_eq!(error_at(&decoded.errors, "data.value"), "is required");
    let decoded = decode_create(
        &date,
        &[("data.value", "2024-01-02T03:04"), ("data.value#tz", "")],
    );
    assert_eq!(decoded.data["value"], "2024-01-02T03:04:00Z");
    let decoded = decode_create(&schema, &[("data.creds", "")]);
    assert_eq!(
        error_at(&decoded.errors, "data.creds"),
        "choose a block document"
    );
}

#[test]
fn secrets_are_never_rendered_back() {
    let (refs, names) = empty();
    let creds = builtin("gcp-credentials");
    let data = json!({"service_account_info": {"private_key": "TOPSECRET-1"}, "project": "p"});
    let data = data.as_object().unwrap();
    let errors = [FieldError::new(
        "data.service_account_info.private_key",
        "is wrong",
    )];
    for mode in [Mode::Create, Mode::Edit] {
        let html = html_of(&input(
            &creds,
            mode,
            Some(data),
            Some(data),
            &refs,
            &names,
            &errors,
        ));
        assert!(!html.contains("TOPSECRET"), "{html}");
        // The deeper error lands on the textarea.
        assert!(html.contains("aria-invalid=\"true\""), "{html}");
        assert!(
            html.contains("id=\"field-data-service_5Faccount_5Finfo-error\""),
            "{html}"
        );
    }
    let schema = synthetic();
    let data = json!({"name": "n", "token": "TOPSECRET-2", "pw": "TOPSECRET-3",
        "auth": {"user": "u", "password": "TOPSECRET-4"}, "extra": {"a": "TOPSECRET-5"},
        "nested": {"inner": {"key": "TOPSECRET-6", "note": "visible"}}});
    let data = data.as_object().unwrap();
    let html = html_of(&input(
        &schema,
        Mode::Create,
        Some(data),
        None,
        &refs,
        &names,
        &[],
    ));
    assert!(!html.contains("TOPSECRET"), "{html}");
    assert!(html.contains("visible"));
    assert_eq!(html.matches("type=\"password\"").count(), 4, "{html}");
}

#[test]
fn errors_are_placed_at_the_nearest_field_or_returned() {
    let (refs, names) = empty();
    let bucket = builtin("gcs-bucket");
    let errors = [
        FieldError::new("data.bucket", "must not be <empty>"),
        FieldError::new("data.gcp_credentials", "missing"),
        FieldError::new("data", "missing required field 'x'"),
        FieldError::new("data.nope", "unknown"),
        FieldError::new("name", "taken"),
    ];
    let form = input(&bucket, Mode::Create, None, None, &refs, &names, &errors);
    let html = html_of(&form);
    assert!(html.contains(
        "aria-invalid=\"true\" aria-describedby=\"field-data-bucket-error field-data-bucket-hint\""
    ), "{html}");
    assert!(
        html.contains(
            "<p class=\"error\" id=\"field-data-bucket-error\">must not be &lt;empty&gt;</p>"
        ),
        "{html}"
    );
    assert!(
        html.contains("id=\"field-data-gcp_5Fcredentials-error\""),
        "{html}"
    );
    let unmatched: Vec<String> = unmatched_errors(&form)
        .into_iter()
        .map(|e| e.field)
        .collect();
    assert_eq!(unmatched, ["data", "data.nope", "name"]);
}

#[test]
fn hostile_text_is_inert() {
    let schema = json!({
        "title": "<script>alert(1)</script>",
        "type": "object",
        "properties": {
            "a\"onerror=x": {"type": "string", "title": "<script>alert(1)</script>",
                "description": "\"onerror=x <img src=x onerror=alert(1)>", "default": "\"><script>x</script>"},
            "b": {"enum": ["<b>", "\"onerror=x"], "title": "\"onerror=x"},
            "c": {"type": "object", "additionalProperties": {"type": "string"},
                "default": {"<k>\"": "<v>\""}}
        }
    });
    let html = create_html(&schema);
    assert!(!html.contains("<script"), "{html}");
    assert!(!html.contains("<img"), "{html}");
    assert!(!html.contains("<b>"), "{html}");
    assert!(!html.contains("\"onerror"), "{html}");
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    assert!(html.contains("&quot;onerror=x"), "{html}");
}

#[test]
fn cycles_and_depth_are_bounded() {
    // A required self-reference, and a 40-deep chain of required objects.
    let mut deep = json!({"type": "string"});
    for _ in 0..40 {
        deep = json!({"type": "object", "properties": {"n": deep}, "required": ["n"]});
    }
    let schema = json!({
        "type": "object",
        "properties": {"node": {"$ref": "#/definitions/Node"}, "deep": deep},
        "required": ["node", "deep"],
        "definitions": {"Node": {"type": "object", "properties": {
            "self": {"$ref": "#/definitions/Node"}}, "required": ["self"]}}
    });
    let html = create_html(&schema);
    assert!(html.contains("JSON value."), "{html}");
    assert!(html.matches("<fieldset").count() < 40, "{html}");
    let decoded = decode_create(&schema, &[("data.node.self", "{\"self\": {}}")]);
    assert_eq!(decoded.data["node"], json!({"self": {"self": {}}}));
}

#[test]
fn rows_are_bounded() {
    let schema = json!({"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string"}},
        "env": {"type": "object", "additionalProperties": {"type": "string"}}}});
    let mut many = Vec::new();
    for i in 0..=1000 {
        many.push((format!("data.tags.{i}"), "t".to_owned()));
        many.push((format!("data.env#k{i}"), format!("k{i}")));
        many.push((format!("data.env#v{i}"), "v".to_owned()));
    }
    let decoded = decode(&schema, Mode::Create, None, &many);
    assert_eq!(
        error_at(&decoded.errors, "data.tags"),
        "has more than 1000 items"
    );
    assert_eq!(
        error_at(&decoded.errors, "data.env"),
        "has more than 1000 entries"
    );
    assert!(decoded.data.is_empty());
}

#[test]
fn actions_add_and_remove_rows_and_ask_for_new_references() {
    let schema = synthetic();
    let base = [
        ("_csrf", "token"),
        ("_name", "my-doc"),
        ("data.name", "n"),
        ("data.tags.0", "a"),
        ("data.tags.2", "c"),
        ("data.tags.5", "f"),
        ("data.env#k0", "PATH"),
        ("data.env#v0", "/bin"),
        ("data.env#k1", "HOME"),
        ("data.env#v1", ""),
    ];
    let mut submitted = pairs(&base);
    let decoded = decode(&schema, Mode::Create, None, &submitted);
    assert_eq!(decoded.action, Action::Save);
    assert_eq!(decoded.data["tags"], json!(["a", "c", "f"]));
    assert_eq!(decoded.data["env"], json!({"PATH": "/bin", "HOME": null}));
    assert!(!decoded.data.contains_key("_csrf"));

    submitted.push(("_action".to_owned(), "remove:data.tags/2".to_owned()));
    let decoded = decode(&schema, Mode::Create, None, &submitted);
    assert_eq!(decoded.action, Action::Remove("data.tags".to_owned(), 2));
    assert_eq!(decoded.data["tags"], json!(["a", "f"]));

    let mut submitted = pairs(&base);
    submitted.push(("_action".to_owned(), "add:data.env".to_owned()));
    let decoded = decode(&schema, Mode::Create, None, &submitted);
    assert_eq!(
        decoded.data["env"],
        json!({"PATH": "/bin", "HOME": null, "": null})
    );
    // The re-rendered form has the blank row, and submitting it untouched drops it.
    let (refs, names) = empty();
    let form = input(
        &schema,
        Mode::Create,
        Some(&decoded.data),
        None,
        &refs,
        &names,
        &[],
    );
    let (nodes, _) = model::build(&form);
    let again = decode(&schema, Mode::Create, None, &submitted_pairs(&nodes));
    assert_eq!(again.data["env"], json!({"PATH": "/bin", "HOME": null}));

    let mut submitted = pairs(&base);
    submitted.push(("_action".to_owned(), "add:data.tags".to_owned()));
    let decoded = decode(&schema, Mode::Create, None, &submitted);
    assert_eq!(decoded.data["tags"], json!(["a", "c", "f", null]));

    let mut submitted = pairs(&base);
    submitted.push((
        "_action".to_owned(),
        "new-ref:data.creds:gcp-credentials".to_owned(),
    ));
    let decoded = decode(&schema, Mode::Create, None, &submitted);
    assert_eq!(
        decoded.action,
        Action::NewReference {
            path: "data.creds".to_owned(),
            slug: "gcp-credentials".to_owned()
        }
    );
}

#[test]
fn names_ids_and_buttons() {
    let schema = json!({"type": "object", "properties": {
        "a.b#c/d:e%": {"type": "array", "items": {"type": "boolean"}, "default": [true]}}});
    let html = create_html(&schema);
    let name = "data.a%2Eb%23c%2Fd%3Ae%25";
    assert!(
        html.contains(&format!("name=\"{name}.0\" value=\"false\"")),
        "{html}"
    );
    assert!(html.contains(&format!("value=\"add:{name}\"")), "{html}");
    assert!(
        html.contains(&format!("value=\"remove:{name}/0\"")),
        "{html}"
    );
    for id in html.split("id=\"").skip(1) {
        let id = &id[..id.find('"').unwrap()];
        assert!(
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{id}"
        );
    }
    assert_eq!(model::field_id("data.x_y"), "field-data-x_5Fy");
    assert_ne!(model::field_id("data.a-b"), model::field_id("data.a.b"));
    let decoded = decode_create(
        &schema,
        &[
            (&format!("{name}.0"), "false"),
            (&format!("{name}.0"), "true"),
            (&format!("{name}.1"), "false"),
        ],
    );
    assert_eq!(decoded.data["a.b#c/d:e%"], json!([true, false]));
}

#[test]
fn edit_keeps_empty_secrets_and_replaces_typed_ones() {
    let creds = builtin("gcp-credentials");
    let masked = json!({"service_account_info": {"type": "********", "private_key": "********"}, "project": "p"});
    let masked = masked.as_object().unwrap();
    let kept = decode(
        &creds,
        Mode::Edit,
        Some(masked),
        &pairs(&[
            ("data.service_account_info", ""),
            ("data.service_account_file", ""),
            ("data.project", "p"),
        ]),
    );
    assert!(kept.errors.is_empty(), "{:?}", kept.errors);
    assert_eq!(
        kept.data["service_account_info"],
        masked["service_account_info"]
    );
    assert_eq!(kept.data["service_account_file"], Value::Null);
    let replaced = decode(
        &creds,
        Mode::Edit,
        Some(masked),
        &pairs(&[(
            "data.service_account_info",
            "{\"type\": \"service_account\"}",
        )]),
    );
    assert_eq!(
        replaced.data["service_account_info"],
        json!({"type": "service_account"})
    );
    let created = decode_create(&creds, &[("data.service_account_info", "")]);
    assert!(!created.data.contains_key("service_account_info"));
}

#[test]
fn defaults_are_prefilled_on_create() {
    let schema = builtin("docker-container");
    let html = create_html(&schema);
    assert!(
        html.contains("value=\"prefecthq/prefect:2-latest\""),
        "{html}"
    );
    assert!(
        html.contains("<span class=\"optional\">(optional)</span>"),
        "{html}"
    );
    assert!(html.contains("<p class=\"hint\""), "{html}");
    assert!(html.contains("role=\"switch\""), "{html}");
}

// ---- optional scalars, alternative labels, duplicate alternatives ------------------

fn optional_scalars() -> Value {
    json!({
        "type": "object",
        "properties": {
            "project": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null, "title": "Project"},
            "port": {"anyOf": [{"type": "integer", "maximum": 65535}, {"type": "null"}], "title": "Port"},
            "ratio": {"anyOf": [{"type": "number"}, {"type": "null"}]},
            "site": {"anyOf": [{"type": "string", "format": "uri"}, {"type": "null"}]},
            "when": {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]},
            "flag": {"anyOf": [{"type": "boolean"}, {"type": "null"}], "default": null},
            "policy": {"anyOf": [{"$ref": "#/definitions/Policy"}, {"type": "null"}]},
            "limit": {"anyOf": [{"anyOf": [{"type": "number"}, {"type": "string"}]}, {"type": "null"}],
                "title": "Memory Limit"},
            "dir": {"anyOf": [{"type": "string"}, {"type": "string", "format": "path"}]}
        },
        "required": ["port"],
        "definitions": {"Policy": {"title": "Policy", "enum": ["ALWAYS", "NEVER"]}}
    })
}

#[test]
fn optional_scalars_are_one_input_where_empty_means_null() {
    let (refs, names) = empty();
    let schema = optional_scalars();
    let html = create_html(&schema);
    for name in ["project", "port", "ratio", "site", "when", "dir"] {
        assert!(
            html.contains(&format!(
                "<input type=\"{}\" name=\"data.{name}\"",
                match name {
                    "port" | "ratio" => "number",
                    "site" => "url",
                    "when" => "datetime-local\" step=\"1",
                    _ => "text",
                }
            )),
            "{name}: {html}"
        );
        assert!(
            !html.contains(&format!("data.{name}#")) || name == "when",
            "{html}"
        );
    }
    assert!(
        html.contains("Project <span class=\"optional\">(optional)</span>"),
        "{html}"
    );
    // Required but nullable: still "(optional)", since empty is allowed.
    assert!(
        html.contains("Port <span class=\"optional\">(optional)</span>"),
        "{html}"
    );
    assert!(html.contains("max=\"65535\""), "{html}");
    // A boolean that may be null: none/yes/no, not a switch.
    assert!(!html.contains("role=\"switch\""), "{html}");
    assert!(
        html.contains(
            "<select name=\"data.flag\" id=\"field-data-flag\"><option value=\"\" selected>— none —</option><option value=\"true\">Yes</option><option value=\"false\">No</option></select>"
        ),
        "{html}"
    );
    assert!(
        html.contains(
            "<select name=\"data.policy\" id=\"field-data-policy\"><option value=\"\" selected>— none —</option><option value=\"ALWAYS\">ALWAYS</option>"
        ),
        "{html}"
    );
    // A nested union is flattened into the field's own choice.
    assert!(
        html.contains("<option value=\"none\" selected>— none —</option><option value=\"0\">Number</option><option value=\"1\">Text</option>"),
        "{html}"
    );
    assert!(html.contains("name=\"data.limit#a1\""), "{html}");
    assert!(!html.contains(">Choice<"), "{html}");

    // Empty means null (the schema allows it); a non-nullable optional is absent.
    let blank = pairs(&[
        ("data.project", ""),
        ("data.port", " "),
        ("data.ratio", ""),
        ("data.site", ""),
        ("data.when", ""),
        ("data.when#tz", "Z"),
        ("data.flag", ""),
        ("data.policy", ""),
        ("data.limit#choice", "none"),
        ("data.dir", ""),
    ]);
    for mode in [Mode::Create, Mode::Edit] {
        let decoded = decode(&schema, mode, None, &blank);
        assert!(decoded.errors.is_empty(), "{:?}", decoded.errors);
        assert_eq!(
            Value::Object(decoded.data),
            json!({"project": null, "port": null, "ratio": null, "site": null, "when": null,
                "flag": null, "policy": null, "limit": null})
        );
    }
    let filled = pairs(&[
        ("data.project", " p "),
        ("data.port", "5432"),
        ("data.ratio", "0.5"),
        ("data.site", "https://x.test/"),
        ("data.when", "2024-01-02T03:04"),
        ("data.when#tz", ""),
        ("data.flag", "false"),
        ("data.policy", "NEVER"),
        ("data.limit#choice", "1"),
        ("data.limit#a1", "512m"),
        ("data.dir", "/tmp"),
    ]);
    let decoded = decode(&schema, Mode::Create, None, &filled);
    assert!(decoded.errors.is_empty(), "{:?}", decoded.errors);
    assert_eq!(
        Value::Object(decoded.data.clone()),
        json!({"project": " p ", "port": 5432, "ratio": 0.5, "site": "https://x.test/",
            "when": "2024-01-02T03:04:00Z", "flag": false, "policy": "NEVER", "limit": "512m",
            "dir": "/tmp"})
    );
    // Rendered back, the values are shown in the same single inputs.
    let html = edit_html(&schema, &decoded.data, &refs, &names);
    assert!(
        html.contains("name=\"data.port\" id=\"field-data-port\" value=\"5432\""),
        "{html}"
    );
    assert!(
        html.contains("<option value=\"false\" selected>No</option>"),
        "{html}"
    );
    assert!(
        html.contains("<option value=\"NEVER\" selected>NEVER</option>"),
        "{html}"
    );
    // Bad input is still an error at the field.
    let decoded = decode_create(&schema, &[("data.port", "x")]);
    assert_eq!(error_at(&decoded.errors, "data.port"), "must be an integer");
    let decoded = decode_create(&schema, &[("data.policy", "SOMETIMES")]);
    assert_eq!(
        error_at(&decoded.errors, "data.policy"),
        "is not one of the options"
    );
    check_round_trips("optional scalars", &schema, cases() * 8);
}

#[test]
fn builtin_optional_scalars_are_plain_inputs() {
    let cases = [
        ("gcp-credentials", &["data.project"][..]),
        (
            "sqlalchemy-connector",
            &[
                "data.connection_info#a0.database",
                "data.connection_info#a0.username",
                "data.connection_info#a0.host",
                "data.connection_info#a0.port",
            ][..],
        ),
        (
            "docker-container",
            &["data.name", "data.image_pull_policy", "data.network_mode"][..],
        ),
    ];
    for (slug, names_expected) in cases {
        let schema = builtin(slug);
        let html = create_html(&schema);
        for name in names_expected {
            assert!(
                html.contains(&format!("name=\"{name}\"")),
                "{slug} {name}: {html}"
            );
            assert!(
                !html.contains(&format!("name=\"{name}#")),
                "{slug} {name}: {html}"
            );
        }
    }
    let creds = builtin("gcp-credentials");
    let decoded = decode_create(
        &creds,
        &[("data.service_account_info", "{}"), ("data.project", "")],
    );
    assert_eq!(decoded.data["project"], Value::Null);
}

#[test]
fn alternatives_have_meaningful_labels() {
    let schema = json!({
        "type": "object",
        "properties": {
            "x": {"anyOf": [
                {"enum": ["alpha", "beta", "gamma", "delta"]},
                {"enum": ["a", "b"]},
                {"const": "fixed"},
                {"$ref": "#/definitions/ConnectionComponents"},
                {"type": "integer", "title": "integer"},
                {"type": "string", "format": "date-time"},
                {"type": "string", "format": "uri"},
                {"type": "boolean"},
                {"type": "array", "items": {"type": "string"}},
                {"type": "object", "additionalProperties": {"type": "string"}},
                {"type": "object", "properties": {"p": {"type": "string"}, "q": {"type": "string"}}},
                {}
            ], "title": "X"}
        },
        "required": ["x"],
        "definitions": {"ConnectionComponents": {"title": "ConnectionComponents", "type": "object",
            "properties": {"driver": {"type": "string"}}}}
    });
    let html = create_html(&schema);
    let labels: Vec<&str> = html
        .split("<option value=\"")
        .skip(1)
        .filter(|o| o.starts_with(|c: char| c.is_ascii_digit()))
        .take(12)
        .map(|o| &o[o.find('>').unwrap() + 1..o.find('<').unwrap()])
        .collect();
    assert_eq!(
        labels,
        [
            "One of: alpha, beta, gamma, …",
            "One of: a, b",
            "fixed",
            "Connection Components",
            "Whole number",
            "Date and time",
            "URL",
            "Yes/no",
            "List",
            "Key/value pairs",
            "Fields: P, Q",
            "JSON",
        ],
        "{html}"
    );
    // Same labels twice are told apart.
    let twice = json!({"type": "object", "properties": {"y": {"anyOf": [
        {"type": "object", "title": "Same", "properties": {"a": {"type": "string"}}},
        {"type": "object", "title": "Same", "properties": {"b": {"type": "string"}}}]}},
        "required": ["y"]});
    let html = create_html(&twice);
    assert!(
        html.contains(">Same (option 1)</option><option value=\"1\">Same (option 2)</option>"),
        "{html}"
    );
}

#[test]
fn secret_alternatives_say_what_they_accept() {
    let (refs, names) = empty();
    let parsed: Map<String, Value> = serde_json::from_str(PREFECT_3).unwrap();
    for schema in [builtin("secret"), parsed["Secret"]["fields"].clone()] {
        let html = create_html(&schema);
        // A secret string next to a plain string kept secret: one password input.
        assert_eq!(html.matches("type=\"password\"").count(), 1, "{html}");
        assert!(
            html.contains("<option value=\"0\" selected>Secret text</option><option value=\"2\">Secret JSON</option></select>"),
            "{html}"
        );
        assert!(
            html.contains("<textarea class=\"json\" name=\"data.value#a2\""),
            "{html}"
        );
        assert!(!html.contains("name=\"data.value#a1\""), "{html}");

        let decoded = decode_create(
            &schema,
            &[
                ("data.value#choice", "2"),
                ("data.value#a0", ""),
                (
                    "data.value#a2",
                    "{\"username\": \"u\", \"password\": \"p\"}",
                ),
            ],
        );
        assert!(decoded.errors.is_empty(), "{:?}", decoded.errors);
        assert_eq!(
            decoded.data["value"],
            json!({"username": "u", "password": "p"})
        );
        let decoded = decode_create(
            &schema,
            &[("data.value#choice", "0"), ("data.value#a0", "sk-1")],
        );
        assert_eq!(decoded.data["value"], "sk-1");

        // Edit: never pre-filled; left empty, the stored (masked) value is kept.
        let stored = json!({"value": "********"});
        let stored = stored.as_object().unwrap();
        let form = input(&schema, Mode::Edit, None, Some(stored), &refs, &names, &[]);
        let html = html_of(&form);
        assert!(!html.contains("********"), "{html}");
        let (nodes, _) = model::build(&form);
        let decoded = decode(&schema, Mode::Edit, Some(stored), &submitted_pairs(&nodes));
        assert!(decoded.errors.is_empty(), "{:?}", decoded.errors);
        assert_eq!(&decoded.data, stored);
        let decoded = decode(
            &schema,
            Mode::Edit,
            Some(stored),
            &pairs(&[("data.value#choice", "2"), ("data.value#a2", "")]),
        );
        assert_eq!(&decoded.data, stored);
    }
}

#[test]
fn a_union_of_very_many_alternatives_is_edited_as_json() {
    let alternatives: Vec<Value> = (0..30_000).map(|n| json!({"const": n})).collect();
    let schema = json!({"type": "object", "properties": {"pick": {"anyOf": alternatives}}});
    let references = HashMap::new();
    let type_names = HashMap::new();
    let html = render(&FormInput {
        schema: &schema,
        mode: Mode::Create,
        data: None,
        original: None,
        references: &references,
        type_names: &type_names,
        errors: &[],
    })
    .into_string();
    assert!(html.contains("<textarea"), "{html}");
    assert!(!html.contains("data.pick#choice"));
}
