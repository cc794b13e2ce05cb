//! Golden vectors: the checksums a real Prefect 3.9.1 server computed for its own schemas,
//! and the data its Python client writes, checked against this crate.

use block_types::secret_fields::{get_path, secret_fields_of};
use block_types::{DataValidator, schema_checksum};
use serde_json::Value;

fn fixtures() -> serde_json::Map<String, Value> {
    let text = include_str!("fixtures/block-schemas-prefect-3.9.1.json");
    match serde_json::from_str::<Value>(text).expect("the fixture file is JSON") {
        Value::Object(map) => map,
        _ => panic!("the fixture file holds an object"),
    }
}

#[test]
fn every_fixture_checksum_is_reproduced_bit_for_bit() {
    let fixtures = fixtures();
    assert_eq!(fixtures.len(), 8, "the fixture file holds eight schemas");
    for (name, fixture) in &fixtures {
        let want = fixture["checksum"].as_str().unwrap();
        let got = schema_checksum(&fixture["fields"]);
        assert_eq!(got, want, "checksum of {name}");
    }
}

#[test]
fn a_nested_child_definition_does_not_change_the_parent_checksum() {
    // Prefect keeps only non-block definitions in the checksum: GcsBucket's checksum must
    // not move when the nested GcpCredentials definition changes, only when the reference
    // checksum in block_schema_references does.
    let fixtures = fixtures();
    let mut bucket = fixtures["GcsBucket"]["fields"].clone();
    let want = schema_checksum(&bucket);
    bucket["definitions"]["GcpCredentials"]["description"] = Value::from("changed");
    assert_eq!(schema_checksum(&bucket), want);
    bucket["block_schema_references"]["gcp_credentials"]["block_schema_checksum"] =
        Value::from("sha256:0");
    assert_ne!(schema_checksum(&bucket), want);
}

#[test]
fn prefect_schemas_compile_and_accept_the_data_prefect_writes() {
    let fixtures = fixtures();
    let data = |v: Value| v.as_object().unwrap().clone();
    let cases = [
        ("Secret", data(serde_json::json!({"value": "sk-123"}))),
        (
            "Secret",
            data(serde_json::json!({"value": {"username": "u", "password": "p"}})),
        ),
        (
            "Webhook",
            data(
                serde_json::json!({"method": "POST", "url": "https://hooks.example.com/x", "headers": {}, "allow_private_urls": true, "verify": true}),
            ),
        ),
        (
            "LocalFileSystem",
            data(serde_json::json!({"basepath": null})),
        ),
        (
            "SqlAlchemyConnector",
            data(
                serde_json::json!({"connection_info": {"driver": "postgresql+psycopg2", "database": "ny_taxi", "username": "root", "password": "root", "host": "localhost", "port": 5432, "query": null}, "connect_args": null, "fetch_size": 1}),
            ),
        ),
        (
            "SqlAlchemyConnector",
            data(
                serde_json::json!({"connection_info": "postgresql+psycopg2://root:root@localhost:5432/ny_taxi"}),
            ),
        ),
        (
            "GcpCredentials",
            data(
                serde_json::json!({"service_account_file": null, "service_account_info": {"type": "service_account"}, "project": "p"}),
            ),
        ),
        (
            "GcsBucket",
            data(
                serde_json::json!({"bucket": "b", "bucket_folder": "", "gcp_credentials": {"service_account_file": null, "service_account_info": {"type": "service_account"}, "project": "p2", "block_type_slug": "gcp-credentials"}}),
            ),
        ),
        (
            "DockerHost",
            data(
                serde_json::json!({"base_url": null, "version": "auto", "timeout": null, "max_pool_size": null, "client_kwargs": {}}),
            ),
        ),
        (
            "DockerRegistryCredentials",
            data(
                serde_json::json!({"username": "u", "password": "p", "registry_url": "index.docker.io", "reauth": true}),
            ),
        ),
    ];
    for (name, data) in cases {
        let fields = &fixtures[name]["fields"];
        let validator = DataValidator::new(fields).unwrap();
        validator
            .validate(&data, &[])
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    }
}

#[test]
fn prefect_secret_fields_point_into_prefect_data() {
    let fixtures = fixtures();
    let bucket = &fixtures["GcsBucket"]["fields"];
    let paths = secret_fields_of(bucket);
    assert_eq!(paths.len(), 1);
    let data =
        serde_json::json!({"gcp_credentials": {"service_account_info": {"private_key": "k"}}});
    assert!(get_path(data.as_object().unwrap(), &paths[0].segments).is_some());
}

#[test]
fn the_secret_markers_of_prefect_schemas_are_found_and_covered_by_their_secret_fields() {
    use block_types::secret_fields::{marked_secret_paths, uncovered};
    let fixtures = fixtures();
    let marked = |name: &str| -> Vec<String> {
        marked_secret_paths(&fixtures[name]["fields"])
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(marked("Secret"), ["value"]);
    assert_eq!(marked("Webhook"), ["url"]);
    assert_eq!(marked("SqlAlchemyConnector"), ["connection_info.password"]);
    assert_eq!(marked("DockerRegistryCredentials"), ["password"]);
    // SecretDict carries no marker in the JSON Schema: only secret_fields says it.
    assert!(marked("GcpCredentials").is_empty());
    for (name, fixture) in &fixtures {
        let fields = &fixture["fields"];
        let marked = marked_secret_paths(fields);
        let listed = secret_fields_of(fields);
        assert!(
            uncovered(&marked, &listed).is_empty(),
            "{name}: every marked path is in secret_fields"
        );
    }
}

#[test]
fn every_built_in_schema_lists_the_secrets_its_json_schema_marks() {
    use block_types::secret_fields::{marked_secret_paths, uncovered};
    for spec in block_types::catalog::all_specs() {
        let marked = marked_secret_paths(&spec.fields);
        let listed = spec.secret_fields();
        assert!(
            uncovered(&marked, &listed).is_empty(),
            "{}: marked {marked:?}, listed {listed:?}",
            spec.block_type.slug
        );
    }
}

#[test]
fn prefects_own_schemas_keep_every_secret_the_built_in_types_keep() {
    // A `write` token may register a schema only when it keeps at least the built-in
    // type's secrets: Prefect's own schemas must pass that check.
    use block_types::catalog::secret_floor;
    use block_types::secret_fields::uncovered;
    for (name, fixture) in &fixtures() {
        let slug = fixture["block_type"]["slug"].as_str().unwrap();
        let listed = secret_fields_of(&fixture["fields"]);
        let floor = secret_floor(slug);
        assert!(
            uncovered(floor, &listed).is_empty(),
            "{name} ({slug}): {floor:?} vs {listed:?}"
        );
    }
    assert!(!secret_floor("gcp-credentials").is_empty());
    assert!(secret_floor("no-such-type").is_empty());
}
