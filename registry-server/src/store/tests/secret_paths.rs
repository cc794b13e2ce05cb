//! Secret fields are the type's, not the caller's: no schema a `write` token registers and
//! no schema move it makes can leave a value unsealed, or tell it anything about one.

use block_types::Block;
use block_types::catalog::{GcpCredentials, Secret};
use block_types::model::BlockDocumentUpdate;
use serde_json::{Map, Value, json};

use super::harness::{create, custom_type, obj, on_both, register, schema_body};
use super::keys::{contains, dump};
use crate::store::{Rights, Store, StoreError};

const CANARY: &str = "canary-5e4b71c9";

/// Prefect 3.9.1's own schema of `name` (as its client registers it).
fn prefect_schema(name: &str) -> (Map<String, Value>, String) {
    let fixtures: Value = serde_json::from_str(include_str!(
        "../../../../block-types/tests/fixtures/block-schemas-prefect-3.9.1.json"
    ))
    .unwrap();
    let fixture = &fixtures[name];
    (
        obj(fixture["fields"].clone()),
        fixture["version"].as_str().unwrap().to_owned(),
    )
}

fn without_secret_fields(mut fields: Map<String, Value>) -> Map<String, Value> {
    fields.insert("secret_fields".into(), json!([]));
    fields
}

#[track_caller]
fn assert_field_error(result: &Result<impl std::fmt::Debug, StoreError>, field: &str) {
    match result {
        Err(StoreError::Invalid(errors)) => {
            assert!(errors.iter().any(|e| e.field == field), "{errors:?}");
        }
        Err(StoreError::Forbidden(e)) => assert_eq!(e.field, field, "{e:?}"),
        other => panic!("expected an error naming {field}, got {other:?}"),
    }
}

/// The value a `read`-scoped reader sees, and whether the canary is anywhere in the
/// database files or rows.
async fn masked_and_sealed(
    db: &super::harness::TestDb,
    store: &Store,
    id: uuid::Uuid,
) -> (Value, bool) {
    let read = store.read_block_document(id, false).await.unwrap();
    let sealed = !contains(&dump(db, store).await, CANARY.as_bytes());
    (Value::Object(read.data), sealed)
}

#[tokio::test]
async fn prefects_secret_schema_without_its_secret_fields_is_refused_even_for_an_admin() {
    on_both(async |db| {
        let store = db.open().await;
        let (secret, _) = register::<Secret>(&store).await;
        let (fields, version) = prefect_schema("Secret");
        let refused = store
            .create_block_schema(
                schema_body(without_secret_fields(fields.clone()), secret.id, &version),
                Rights::ADMIN,
            )
            .await;
        assert_field_error(&refused, "fields.secret_fields");
        let message = format!("{:?}", refused.unwrap_err());
        assert!(
            message.contains("'value'"),
            "names the marked property: {message}"
        );
        // With its secret_fields, the same schema registers.
        let (schema, created) = store
            .create_block_schema(schema_body(fields, secret.id, &version), Rights::WRITE)
            .await
            .unwrap();
        assert!(created);
        let doc = create(&store, &schema, "api-token", json!({"value": CANARY})).await;
        let (read, sealed) = masked_and_sealed(db, &store, doc.id).await;
        assert_eq!(read["value"], "********");
        assert!(sealed, "the Secret value is sealed");
    })
    .await;
}

#[tokio::test]
async fn a_known_checksum_and_version_with_other_secret_fields_is_a_conflict_not_the_existing_row()
{
    on_both(async |db| {
        let store = db.open().await;
        let (ty, _) = register::<GcpCredentials>(&store).await;
        let (fields, version) = prefect_schema("GcpCredentials");
        let (real, created) = store
            .create_block_schema(schema_body(fields.clone(), ty.id, &version), Rights::WRITE)
            .await
            .unwrap();
        assert!(created);
        // Same checksum (it ignores secret_fields), same version, no secrets: a 409, for
        // every caller.
        for rights in [Rights::WRITE, Rights::ADMIN] {
            let again = store
                .create_block_schema(
                    schema_body(without_secret_fields(fields.clone()), ty.id, &version),
                    rights,
                )
                .await;
            assert!(
                matches!(&again, Err(StoreError::Conflict(m)) if m.contains("other secret_fields")),
                "{again:?}"
            );
        }
        // The same secret_fields (duplicates and order aside) find the existing row.
        let mut same = fields.clone();
        same.insert(
            "secret_fields".into(),
            json!(["service_account_info.*", "service_account_info.*"]),
        );
        let (found, created) = store
            .create_block_schema(schema_body(same, ty.id, &version), Rights::WRITE)
            .await
            .unwrap();
        assert!(!created);
        assert_eq!(found.id, real.id);
    })
    .await;
}

#[tokio::test]
async fn a_write_token_cannot_register_a_schema_that_keeps_fewer_secrets_than_its_type() {
    on_both(async |db| {
        let store = db.open().await;
        let (ty, _) = register::<GcpCredentials>(&store).await;
        // Prefect's GcpCredentials schema under another version, its secret_fields emptied:
        // a new (checksum, version), so only the type's other schemas can refuse it.
        let (fields, _) = prefect_schema("GcpCredentials");
        let narrow = without_secret_fields(fields);
        let refused = store
            .create_block_schema(schema_body(narrow.clone(), ty.id, "9.9.9"), Rights::WRITE)
            .await;
        assert_field_error(&refused, "fields.secret_fields");
        assert!(format!("{:?}", refused.unwrap_err()).contains("'service_account_info"));
        // An admin may register it; documents of it still seal what the type keeps secret.
        let (schema, _) = store
            .create_block_schema(schema_body(narrow, ty.id, "9.9.9"), Rights::ADMIN)
            .await
            .unwrap();
        let doc = create(
            &store,
            &schema,
            "zoom-gcp-creds",
            json!({"service_account_info": {"private_key": CANARY}, "project": "p"}),
        )
        .await;
        let (read, sealed) = masked_and_sealed(db, &store, doc.id).await;
        assert_eq!(read["service_account_info"], json!("********"));
        assert_eq!(read["project"], "p");
        assert!(
            sealed,
            "the key is sealed although the schema lists no secret"
        );
        let full = store.read_block_document(doc.id, true).await.unwrap();
        assert_eq!(full.data["service_account_info"]["private_key"], CANARY);
    })
    .await;
}

#[tokio::test]
async fn registering_a_built_in_slug_first_cannot_drop_its_secrets() {
    on_both(async |db| {
        let store = db.open().await;
        // gcp is not registered yet: a `write` token creates the type itself, then a schema
        // without secrets, before anyone registers the real one.
        let ty = custom_type(&store, "GCP Credentials", "gcp-credentials").await;
        let (fields, version) = prefect_schema("GcpCredentials");
        let refused = store
            .create_block_schema(schema_body(without_secret_fields(fields), ty.id, &version), Rights::WRITE)
            .await;
        assert_field_error(&refused, "fields.secret_fields");
        // A custom type of the attacker's own is theirs to define.
        let custom = custom_type(&store, "Mine", "mine").await;
        let fields = obj(json!({"title": "Mine", "type": "object", "properties": {"note": {"type": "string"}}, "secret_fields": []}));
        store.create_block_schema(schema_body(fields, custom.id, "1"), Rights::WRITE).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_custom_types_secrets_stay_sealed_under_a_later_schema_that_omits_them() {
    on_both(async |db| {
        let store = db.open().await;
        let ty = custom_type(&store, "Api", "api").await;
        let first = obj(json!({"title": "Api", "type": "object", "properties": {"token": {"type": "string"}, "url": {"type": "string"}}, "secret_fields": ["token"]}));
        store.create_block_schema(schema_body(first, ty.id, "1"), Rights::WRITE).await.unwrap();
        let second = obj(json!({"title": "Api", "description": "v2", "type": "object", "properties": {"token": {"type": "string"}, "url": {"type": "string"}}, "secret_fields": []}));
        let refused = store.create_block_schema(schema_body(second.clone(), ty.id, "2"), Rights::WRITE).await;
        assert_field_error(&refused, "fields.secret_fields");
        let (schema, _) = store.create_block_schema(schema_body(second, ty.id, "2"), Rights::ADMIN).await.unwrap();
        let doc = create(&store, &schema, "svc", json!({"token": CANARY, "url": "https://x"})).await;
        let (read, sealed) = masked_and_sealed(db, &store, doc.id).await;
        assert_eq!(read, json!({"token": "********", "url": "https://x"}));
        assert!(sealed);
        // The version listing's masked read agrees.
        let version = store.read_version(doc.id, 1, false).await.unwrap();
        assert_eq!(version["token"], "********");
        // An update echoing the mask keeps the stored secret.
        store
            .update_block_document(doc.id, BlockDocumentUpdate { data: Some(obj(json!({"token": "********", "url": "https://y"}))), ..Default::default() }, None, Rights::WRITE)
            .await
            .unwrap();
        let full = store.read_block_document(doc.id, true).await.unwrap();
        assert_eq!(full.data["token"], CANARY);
    })
    .await;
}

#[tokio::test]
async fn moving_a_document_that_holds_secrets_to_another_schema_needs_read_secrets() {
    on_both(async |db| {
        let store = db.open().await;
        let (ty, schema) = register::<Secret>(&store).await;
        let doc = create(&store, &schema, "api-token", json!({"value": CANARY})).await;
        // The probe: the same type, its secret constrained by a pattern. A 204 or a 422 for
        // the move would tell whether the stored value matches.
        let mut probe = Secret::spec().fields.as_object().unwrap().clone();
        probe.insert("properties".into(), json!({"value": {"type": "string", "pattern": "^canary", "writeOnly": true, "format": "password"}}));
        let (probe, _) = store.create_block_schema(schema_body(probe, ty.id, "probe"), Rights::WRITE).await.unwrap();
        let mv = |rights| {
            let store = &store;
            async move {
                store
                    .update_block_document(doc.id, BlockDocumentUpdate { block_schema_id: Some(probe.id), data: Some(Map::new()), ..Default::default() }, None, rights)
                    .await
            }
        };
        let refused = mv(Rights::WRITE).await;
        assert_field_error(&refused, "block_schema_id");
        assert!(!format!("{:?}", refused).contains(CANARY));
        let unchanged = store.read_block_document(doc.id, true).await.unwrap();
        assert_eq!(unchanged.block_schema_id, schema.id, "nothing moved");
        // With read-secrets the move is allowed (the caller could read the value anyway).
        let moved = mv(Rights { read_secrets: true, admin: false, token: None }).await.unwrap();
        assert!(moved.changed);
    })
    .await;
}

#[tokio::test]
async fn a_sealed_value_stays_masked_whatever_schema_the_database_points_at() {
    on_both(async |db| {
        let store = db.open().await;
        let (ty, schema) = register::<Secret>(&store).await;
        let doc = create(&store, &schema, "api-token", json!({"value": CANARY})).await;
        // Someone with write access to the database points the document (and its version)
        // at a schema that lists no secret: the value was sealed, so it stays masked.
        let clear = obj(json!({"title": "Clear", "type": "object", "properties": {"value": {"type": "string"}}, "secret_fields": []}));
        let (clear, _) = store
            .create_block_schema(schema_body(clear, ty.id, "clear"), Rights::ADMIN)
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        for table in ["block_document", "block_document_version"] {
            let column = if table == "block_document" { "id" } else { "block_document_id" };
            sqlx::query(&format!("update {table} set block_schema_id = $1 where {column} = $2"))
                .bind(clear.id.to_string())
                .bind(doc.id.to_string())
                .execute(&store.write)
                .await
                .unwrap();
        }
        // A change behind the store's back: its read cache cannot have heard of it.
        store.forget_trees(&[doc.id]);
        let read = store.read_block_document(doc.id, false).await.unwrap();
        assert_eq!(read.block_schema_id, clear.id);
        assert_eq!(read.data["value"], "********");
        assert_eq!(store.read_version(doc.id, 1, false).await.unwrap()["value"], "********");
    })
    .await;
}

/// A custom type whose one schema makes validation depend on the secret's value (as a
/// hostile `write` token could register it before anyone else).
async fn oracle_schema(store: &Store) -> block_types::model::BlockSchema {
    let ty = custom_type(store, "Probe", "probe").await;
    let fields = obj(json!({
        "title": "Probe", "type": "object",
        "properties": {"token": {"type": "string", "writeOnly": true}, "note": {"type": "string"}, "zz": {}},
        "if": {"properties": {"token": {"pattern": "^canary"}}},
        "then": {"not": {"required": ["zz"]}},
        "secret_fields": ["token"]
    }));
    store
        .create_block_schema(schema_body(fields, ty.id, "1"), Rights::WRITE)
        .await
        .unwrap()
        .0
}

#[tokio::test]
async fn no_answer_to_a_write_depends_on_a_kept_secret() {
    on_both(async |db| {
        let store = db.open().await;
        let schema = oracle_schema(&store).await;
        let matching = create(&store, &schema, "matching", json!({"token": CANARY})).await;
        let other = create(
            &store,
            &schema,
            "other",
            json!({"token": "x".repeat(60 * 1024)}),
        )
        .await;
        // The same writes to both documents: echo, merge, and a large plain field. The
        // answers must not tell the two secrets apart (pattern, length).
        let writes = [
            json!({"token": "********", "zz": 1}),
            json!({"zz": 1}),
            json!({"note": "n".repeat(480 * 1024)}),
        ];
        for data in writes {
            let outcome = |id| {
                let store = &store;
                let data = data.clone();
                async move {
                    let body = BlockDocumentUpdate {
                        data: Some(obj(data)),
                        ..Default::default()
                    };
                    match store
                        .update_block_document(id, body, None, Rights::WRITE)
                        .await
                    {
                        Ok(_) => "ok".to_owned(),
                        Err(e) => format!("{e}"),
                    }
                }
            };
            let a = outcome(matching.id).await;
            let b = outcome(other.id).await;
            assert_eq!(a, b, "the answers differ for {data}");
            assert!(!a.contains(CANARY));
        }
        // Both secrets are still there.
        let read = store.read_block_document(matching.id, true).await.unwrap();
        assert_eq!(read.data["token"], CANARY);
    })
    .await;
}

#[tokio::test]
async fn a_move_that_sends_every_secret_needs_only_write() {
    on_both(async |db| {
        let store = db.open().await;
        let (ty, schema) = register::<Secret>(&store).await;
        let (fields, version) = prefect_schema("Secret");
        let (prefect, _) = store
            .create_block_schema(schema_body(fields, ty.id, &version), Rights::WRITE)
            .await
            .unwrap();
        let doc = create(&store, &schema, "api-token", json!({"value": CANARY})).await;
        // Prefect's save(overwrite=True): the whole data, its schema id, no merge.
        let body = BlockDocumentUpdate {
            block_schema_id: Some(prefect.id),
            data: Some(obj(json!({"value": "rotated"}))),
            merge_existing_data: false,
        };
        store
            .update_block_document(doc.id, body, None, Rights::WRITE)
            .await
            .unwrap();
        let read = store.read_block_document(doc.id, true).await.unwrap();
        assert_eq!(
            (read.block_schema_id, read.data["value"].clone()),
            (prefect.id, json!("rotated"))
        );
        // Moving back while keeping the stored value (an echo) still needs read-secrets.
        let body = BlockDocumentUpdate {
            block_schema_id: Some(schema.id),
            data: Some(obj(json!({"value": "********"}))),
            merge_existing_data: false,
        };
        let refused = store
            .update_block_document(doc.id, body, None, Rights::WRITE)
            .await;
        assert_field_error(&refused, "block_schema_id");
    })
    .await;
}

#[tokio::test]
async fn a_type_has_a_bounded_number_of_schemas() {
    on_both(async |db| {
        let store = db.open().await;
        let ty = custom_type(&store, "Many", "many").await;
        let fields = obj(json!({"title": "Many", "type": "object", "properties": {"a": {"type": "string"}}, "secret_fields": []}));
        for i in 0..200 {
            store.create_block_schema(schema_body(fields.clone(), ty.id, &format!("{i}")), Rights::WRITE).await.unwrap();
        }
        let refused = store.create_block_schema(schema_body(fields.clone(), ty.id, "200"), Rights::WRITE).await;
        match refused {
            Err(StoreError::Invalid(e)) => assert_eq!(e[0].field, "block_type_id"),
            other => panic!("{other:?}"),
        }
        // An admin (the server registering its catalog) is not held to it.
        store.create_block_schema(schema_body(fields.clone(), ty.id, "admin"), Rights::ADMIN).await.unwrap();
        // A schema that exists is still found.
        let (_, created) = store.create_block_schema(schema_body(fields, ty.id, "7"), Rights::WRITE).await.unwrap();
        assert!(!created);
    })
    .await;
}

#[tokio::test]
async fn a_schema_cannot_be_registered_under_another_type_than_it_names() {
    on_both(async |db| {
        let store = db.open().await;
        register::<Secret>(&store).await;
        let throwaway = custom_type(&store, "Squat", "squat").await;
        // Prefect's Secret schema (its checksum is what Prefect clients look up) under a
        // throwaway type: refused, so a client's lookup never finds it there.
        let (fields, version) = prefect_schema("Secret");
        let refused = store
            .create_block_schema(schema_body(fields, throwaway.id, &version), Rights::WRITE)
            .await;
        match refused {
            Err(StoreError::Invalid(e)) => assert_eq!(e[0].field, "fields.block_type_slug"),
            other => panic!("{other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn a_sealed_value_stays_sealed_after_the_schema_that_made_it_secret_is_deleted() {
    on_both(async |db| {
        let store = db.open().await;
        let ty = custom_type(&store, "Api", "api").await;
        let plain = obj(json!({"title": "Api", "type": "object", "properties": {"x": {"type": "string"}, "y": {}}, "secret_fields": []}));
        let (s1, _) = store.create_block_schema(schema_body(plain, ty.id, "1"), Rights::WRITE).await.unwrap();
        let secret = obj(json!({"title": "Api", "description": "x is secret", "type": "object", "properties": {"x": {"type": "string"}, "y": {}}, "secret_fields": ["x"]}));
        let (s2, _) = store.create_block_schema(schema_body(secret, ty.id, "2"), Rights::WRITE).await.unwrap();
        let doc = create(&store, &s1, "d", json!({"x": CANARY})).await;
        // The schema that made `x` secret goes (nothing uses it); a merge keeps `x`.
        store.delete_block_schema(s2.id).await.unwrap();
        let body = BlockDocumentUpdate { data: Some(obj(json!({"y": 1}))), ..Default::default() };
        store.update_block_document(doc.id, body, None, Rights::WRITE).await.unwrap();
        let (read, sealed) = masked_and_sealed(db, &store, doc.id).await;
        assert_eq!(read["x"], "********");
        assert!(sealed, "the kept value is still sealed");
    })
    .await;
}

#[tokio::test]
async fn each_secret_value_is_bounded_when_written() {
    on_both(async |db| {
        let store = db.open().await;
        let (_, schema) = register::<Secret>(&store).await;
        let big = "s".repeat(300 * 1024);
        let refused = store
            .create_block_document(block_types::model::BlockDocumentCreate {
                name: Some("big".into()),
                data: obj(json!({"value": big})),
                block_schema_id: schema.id,
                block_type_id: schema.block_type_id,
                is_anonymous: false,
            })
            .await;
        assert_field_error(&refused, "data.value");
        let doc = create(&store, &schema, "small", json!({"value": "s"})).await;
        let body = BlockDocumentUpdate {
            data: Some(obj(json!({"value": big}))),
            ..Default::default()
        };
        let refused = store
            .update_block_document(doc.id, body, None, Rights::WRITE)
            .await;
        assert_field_error(&refused, "data.value");
    })
    .await;
}
