//! Tests of the built-in catalog: schemas, metadata, Prefect data shapes, redaction.

use std::collections::HashSet;

use serde_json::{Map, Value, json};

use super::*;
use crate::secret_fields::{get_path, obfuscate};
use crate::validate::{self, DataValidator};
use crate::{OBFUSCATED, references};

const CANARY: &str = "canary-9d41c7e2";

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

#[test]
fn collections_hold_the_design_catalog() {
    let slugs = |c: Collection| -> Vec<String> {
        c.specs().into_iter().map(|s| s.block_type.slug).collect()
    };
    assert_eq!(
        slugs(Collection::Core),
        [
            "secret",
            "webhook",
            "local-file-system",
            "json",
            "string",
            "date-time"
        ]
    );
    assert_eq!(
        slugs(Collection::Sqlalchemy),
        ["sqlalchemy-connector", "async-sqlalchemy-connector"]
    );
    assert_eq!(slugs(Collection::Gcp), ["gcp-credentials", "gcs-bucket"]);
    assert_eq!(
        slugs(Collection::Docker),
        [
            "docker-registry",
            "docker-container",
            "docker-registry-credentials",
            "docker-host"
        ]
    );
    let protected: Vec<String> = all_specs()
        .into_iter()
        .filter(|s| s.block_type.protected)
        .map(|s| s.block_type.slug)
        .collect();
    assert_eq!(protected, ["secret", "webhook", "local-file-system"]);
    assert_eq!("gcp".parse::<Collection>().unwrap(), Collection::Gcp);
    assert!("aws".parse::<Collection>().is_err());
    assert!(spec_for_slug("gcs-bucket").is_some());
}

#[test]
fn every_spec_is_well_formed() {
    let mut checksums = HashSet::new();
    for spec in all_specs() {
        let slug = &spec.block_type.slug;
        validate::block_type_slug(slug).unwrap();
        validate::block_type_name(&spec.block_type.name).unwrap();
        assert!(!validate::is_reserved_block_type_name(
            &spec.block_type.name
        ));
        validate::http_url(
            "documentation_url",
            spec.block_type.documentation_url.as_deref(),
        )
        .unwrap();
        assert_eq!(spec.fields["block_type_slug"], json!(slug), "{slug}");
        assert_eq!(spec.fields["type"], json!("object"), "{slug}");
        assert!(
            spec.fields["description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{slug}"
        );
        assert!(
            spec.block_type
                .code_example
                .as_deref()
                .unwrap()
                .contains("::load("),
            "{slug}"
        );
        DataValidator::new(&spec.fields).unwrap_or_else(|e| panic!("{slug}: {e}"));
        // Every property has its declaration position, as Prefect 3.6.24+ writes them.
        let props = spec.fields["properties"].as_object().unwrap();
        for (i, (name, p)) in props.iter().enumerate() {
            assert_eq!(p["position"], json!(i), "{slug}.{name}");
        }
        // Every secret path names a declared property.
        for path in spec.secret_fields() {
            assert!(props.contains_key(&path.segments[0]), "{slug}: {path}");
        }
        assert!(
            checksums.insert(spec.checksum()),
            "{slug}: checksum not unique"
        );
    }
}

#[test]
fn nested_blocks_carry_definitions_references_and_prefixed_secrets() {
    let bucket = GcsBucket::spec();
    let creds = GcpCredentials::spec();
    assert_eq!(
        bucket.fields["block_schema_references"],
        json!({"gcp_credentials": {"block_schema_checksum": creds.checksum(), "block_type_slug": "gcp-credentials"}})
    );
    assert_eq!(
        bucket.fields["definitions"]["GcpCredentials"]["block_type_slug"],
        json!("gcp-credentials")
    );
    assert_eq!(
        bucket.fields["secret_fields"],
        json!(["gcp_credentials.service_account_info.*"])
    );
    assert_eq!(GcsBucket::nested_specs(), vec![creds]);

    let container = DockerContainer::spec();
    assert_eq!(
        container.fields["secret_fields"],
        json!(["image_registry.password"])
    );
    assert_eq!(
        container.block_fields(),
        [("image_registry".to_owned(), "docker-registry".to_owned())]
    );
    assert_eq!(
        DockerContainer::nested_specs(),
        vec![DockerRegistry::spec()]
    );
}

#[test]
fn schemas_are_snapshotted() {
    for spec in all_specs() {
        let snapshot = json!({
            "block_type": spec.block_type,
            "capabilities": spec.capabilities,
            "version": "<crate version>",
            "checksum": spec.checksum(),
            "fields": spec.fields,
        });
        insta::assert_json_snapshot!(spec.block_type.slug.clone(), snapshot);
    }
}

/// Data of every built-in, in the shapes Prefect's Python client writes, each holding the
/// canary in its secret fields.
fn prefect_shaped_data() -> Vec<(&'static str, Value)> {
    super::samples(CANARY)
}

/// Deserializes `data` into the Rust type of `slug`, serializes it back, and returns the
/// result together with its `Debug` renderings.
fn round_trip(slug: &str, data: Map<String, Value>) -> (Map<String, Value>, Vec<String>) {
    fn go<B: crate::Block>(data: Map<String, Value>) -> (Map<String, Value>, Vec<String>) {
        let block = B::from_data(data).unwrap_or_else(|e| panic!("{}: {e}", B::SLUG));
        let debug = vec![format!("{block:?}"), format!("{block:#?}")];
        (block.to_data().unwrap(), debug)
    }
    match slug {
        "secret" => go::<Secret>(data),
        "webhook" => go::<Webhook>(data),
        "local-file-system" => go::<LocalFileSystem>(data),
        "json" => go::<Json>(data),
        "string" => go::<StringBlock>(data),
        "date-time" => go::<DateTime>(data),
        "sqlalchemy-connector" => go::<SqlAlchemyConnector>(data),
        "async-sqlalchemy-connector" => go::<AsyncSqlAlchemyConnector>(data),
        "gcp-credentials" => go::<GcpCredentials>(data),
        "gcs-bucket" => go::<GcsBucket>(data),
        "docker-registry" => go::<DockerRegistry>(data),
        "docker-container" => go::<DockerContainer>(data),
        "docker-registry-credentials" => go::<DockerRegistryCredentials>(data),
        "docker-host" => go::<DockerHost>(data),
        other => panic!("no Rust type for {other}"),
    }
}

#[test]
fn every_builtin_has_prefect_shaped_data_in_these_tests() {
    let covered: HashSet<&str> = prefect_shaped_data().iter().map(|(s, _)| *s).collect();
    for spec in all_specs() {
        assert!(
            covered.contains(spec.block_type.slug.as_str()),
            "{}",
            spec.block_type.slug
        );
    }
}

#[test]
fn prefect_data_round_trips_through_rust_and_validates() {
    for (slug, data) in prefect_shaped_data() {
        let spec = spec_for_slug(slug).unwrap();
        let validator = DataValidator::new(&spec.fields).unwrap();
        validator
            .validate(&obj(data.clone()), &[])
            .unwrap_or_else(|e| panic!("{slug} input: {e:?}"));
        let (out, _) = round_trip(slug, obj(data.clone()));
        validator
            .validate(&out, &[])
            .unwrap_or_else(|e| panic!("{slug} output: {e:?}"));
        // Rust fills the defaults Prefect's client would fill; nothing else changes.
        let mut expected = obj(data);
        validate::apply_defaults(&spec.fields, &mut expected);
        assert_eq!(out, expected, "{slug}: serialization changed the data");
    }
}

#[test]
fn rust_output_is_accepted_by_prefects_own_schemas() {
    let fixtures: Value = serde_json::from_str(include_str!(
        "../../tests/fixtures/block-schemas-prefect-3.9.1.json"
    ))
    .unwrap();
    let prefect_name = |slug: &str| match slug {
        "secret" => Some("Secret"),
        "webhook" => Some("Webhook"),
        "local-file-system" => Some("LocalFileSystem"),
        "sqlalchemy-connector" => Some("SqlAlchemyConnector"),
        "gcp-credentials" => Some("GcpCredentials"),
        "gcs-bucket" => Some("GcsBucket"),
        "docker-host" => Some("DockerHost"),
        "docker-registry-credentials" => Some("DockerRegistryCredentials"),
        _ => None,
    };
    let mut checked = 0;
    for (slug, data) in prefect_shaped_data() {
        let Some(name) = prefect_name(slug) else {
            continue;
        };
        let fixture = &fixtures[name];
        // Same field names, and the same secret fields once Prefect's duplicates are dropped.
        let ours = spec_for_slug(slug).unwrap();
        let props = |f: &Value| -> Vec<String> {
            f["properties"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect()
        };
        assert_eq!(
            props(&ours.fields),
            props(&fixture["fields"]),
            "{slug}: field names"
        );
        let secrets = |f: &Value| -> HashSet<String> {
            f["secret_fields"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            secrets(&ours.fields),
            secrets(&fixture["fields"]),
            "{slug}: secret fields"
        );
        assert_eq!(
            ours.capabilities,
            serde_json::from_value::<Vec<String>>(fixture["capabilities"].clone()).unwrap(),
            "{slug}"
        );
        let (out, _) = round_trip(slug, obj(data));
        DataValidator::new(&fixture["fields"])
            .unwrap()
            .validate(&out, &[])
            .unwrap_or_else(|e| panic!("{slug}: {e:?}"));
        checked += 1;
    }
    assert_eq!(checked, 10);
}

#[test]
fn debug_of_every_builtin_hides_the_canary() {
    for (slug, data) in prefect_shaped_data() {
        let (_, debug) = round_trip(slug, obj(data));
        for text in debug {
            assert!(!text.contains(CANARY), "{slug} leaks its secret: {text}");
        }
    }
}

#[test]
fn obfuscation_with_builtin_schemas_hides_the_canary() {
    for (slug, data) in prefect_shaped_data() {
        let spec = spec_for_slug(slug).unwrap();
        let mut masked = obj(data);
        obfuscate(&mut masked, &spec.secret_fields());
        let text = Value::Object(masked.clone()).to_string();
        assert!(!text.contains(CANARY), "{slug}: {text}");
        assert!(
            text.contains(OBFUSCATED)
                || !spec
                    .secret_fields()
                    .iter()
                    .any(|p| get_path(&masked, &p.segments).is_some()),
            "{slug}"
        );
    }
}

#[test]
fn struct_errors_name_the_field() {
    let err = GcsBucket::from_data(obj(json!({"bucket": 5}))).unwrap_err();
    assert_eq!(err.field, "bucket");
    let err = SqlAlchemyConnector::from_data(obj(
        json!({"connection_info": {"driver": "x", "port": "high"}}),
    ))
    .unwrap_err();
    assert_eq!(err.field, "connection_info");
    let err = GcsBucket::from_data(obj(
        json!({"bucket": "b", "gcp_credentials": {"project": 1}}),
    ))
    .unwrap_err();
    assert_eq!(err.field, "gcp_credentials.project");
    let err = GcpCredentials::from_data(obj(json!({"service_account_info": CANARY}))).unwrap_err();
    assert!(!err.to_string().contains(CANARY), "{err}");
}

#[test]
fn defaults_match_prefect() {
    let bucket = GcsBucket::from_data(obj(json!({"bucket": "b"}))).unwrap();
    assert_eq!(bucket.bucket_folder, "");
    assert_eq!(bucket.gcp_credentials, GcpCredentials::default());
    let hook = Webhook::from_data(obj(json!({"url": "https://x.io"}))).unwrap();
    assert_eq!(hook.method, WebhookMethod::Post);
    assert!(hook.allow_private_urls && hook.verify && hook.headers.is_empty());
    let container = DockerContainer::from_data(Map::new()).unwrap();
    assert_eq!(container, DockerContainer::new(DEFAULT_IMAGE));
    assert!(container.stream_output && !container.auto_remove);
    let host = DockerHost::from_data(Map::new()).unwrap();
    assert_eq!(host.version, "auto");
    let conn =
        SqlAlchemyConnector::from_data(obj(json!({"connection_info": "sqlite:///x.db"}))).unwrap();
    assert_eq!(conn.fetch_size, 1);
    assert!(matches!(conn.connection_info, ConnectionInfo::Url(_)));
}

#[test]
fn lenient_inputs_prefect_accepts_are_accepted() {
    // Prefect 3.0–3.4 on recent Pythons writes naive date-times; they are read as UTC.
    let naive = DateTime::from_data(obj(json!({"value": "2024-01-01T00:00:00"}))).unwrap();
    assert_eq!(naive.value.to_rfc3339(), "2024-01-01T00:00:00+00:00");
    // Documents written under the 0.4.0 connector schema hold the port as a string.
    let conn = SqlAlchemyConnector::from_data(obj(
        json!({"connection_info": {"driver": "postgresql+psycopg2", "port": "5432"}}),
    ))
    .unwrap();
    let ConnectionInfo::Components(parts) = conn.connection_info else {
        panic!("components")
    };
    assert_eq!(parts.port, Some(5432));
    let err = SqlAlchemyConnector::from_data(obj(
        json!({"connection_info": {"driver": "x", "port": 70000}}),
    ))
    .unwrap_err();
    assert!(err.to_string().contains("port"), "{err}");
    let err = SqlAlchemyConnector::from_data(obj(json!({"connection_info": 5}))).unwrap_err();
    assert!(
        err.to_string()
            .contains("a URL string or an object of URL parts"),
        "{err}"
    );
}

#[test]
fn gcp_credentials_take_one_key_source() {
    let both =
        json!({"service_account_file": "/k.json", "service_account_info": {"private_key": CANARY}});
    let err = GcpCredentials::from_data(obj(both.clone())).unwrap_err();
    assert!(
        err.message
            .contains("Only one of service_account_info or service_account_file"),
        "{err}"
    );
    assert!(!err.to_string().contains(CANARY));
    let err =
        GcsBucket::from_data(obj(json!({"bucket": "b", "gcp_credentials": both}))).unwrap_err();
    assert_eq!(err.field, "gcp_credentials");
    let built = GcpCredentials {
        service_account_file: Some("/k.json".into()),
        service_account_info: Some(crate::SecretMap::default()),
        project: None,
    };
    assert!(
        built.to_data().is_err(),
        "a block Prefect cannot load is not saved"
    );
}

#[test]
fn secret_get_decodes_json_strings() {
    let s = Secret::new(r#"{"a": 1}"#);
    assert_eq!(s.get(), json!({"a": 1}));
    assert_eq!(Secret::new("plain").get(), json!("plain"));
}

#[test]
fn a_saved_reference_validates_in_place_of_the_nested_block() {
    let spec = GcsBucket::spec();
    let id = uuid::Uuid::new_v4();
    let data = obj(json!({"bucket": "b", "gcp_credentials": references::reference_value(id)}));
    let refs = references::extract_references(&data).unwrap();
    let fields: Vec<&str> = refs.iter().map(|r| r.field).collect();
    DataValidator::new(&spec.fields)
        .unwrap()
        .validate(&data, &fields)
        .unwrap();
}
