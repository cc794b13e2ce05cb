//! Block types and schemas: registration, checksums, nested schemas, protected and in-use
//! deletes.

use block_types::catalog::{Collection, GcpCredentials, GcsBucket, Secret};
use block_types::model::{
    BlockSchemaCreate, BlockSchemaFilterBody, BlockTypeCreate, BlockTypeUpdate,
};
use block_types::{Block, schema_checksum};
use serde_json::{Value, json};

use super::harness::{create, obj, on_both, register, register_spec};
use crate::store::{Rights, StoreError};

#[tokio::test]
async fn every_builtin_registers_with_the_client_checksum() {
    on_both(async |db| {
        let store = db.open().await;
        for collection in Collection::ALL {
            for spec in collection.specs() {
                let (ty, schema) = register_spec(&store, &spec).await;
                assert_eq!(schema.checksum, spec.checksum(), "{}", spec.block_type.slug);
                assert_eq!(ty.is_protected, spec.block_type.protected);
                let again = store
                    .read_block_schema_by_checksum(&spec.checksum(), Some(&spec.version))
                    .await
                    .unwrap();
                assert_eq!(again.id, schema.id);
                assert_eq!(again.fields, spec.fields, "fields come back as sent");
            }
        }
        let caps = store.block_capabilities().await.unwrap();
        assert_eq!(
            caps,
            [
                "docker-login",
                "get-directory",
                "put-directory",
                "read-path",
                "run-infrastructure",
                "write-path"
            ]
        );
        // Registering again changes nothing.
        let (_, created) = store
            .create_block_schema(
                Secret::spec()
                    .to_schema_create(store.read_block_type_by_slug("secret").await.unwrap().id),
                Rights::ADMIN,
            )
            .await
            .unwrap();
        assert!(!created);
    })
    .await;
}

#[tokio::test]
async fn nested_schemas_are_created_from_definitions() {
    on_both(async |db| {
        let store = db.open().await;
        // Only the types exist: the GcsBucket schema brings the GcpCredentials schema along.
        store.ensure_block_type(&GcpCredentials::spec().block_type, false).await.unwrap();
        let bucket_type = store.ensure_block_type(&GcsBucket::spec().block_type, false).await.unwrap();
        let (bucket, created) = store.create_block_schema(GcsBucket::spec().to_schema_create(bucket_type.id), Rights::ADMIN).await.unwrap();
        assert!(created);
        let child = store.read_block_schema_by_checksum(&GcpCredentials::spec().checksum(), None).await.unwrap();
        assert_eq!(child.version, "non-versioned");
        assert_eq!(child.block_type.unwrap().slug, "gcp-credentials");
        assert_eq!(bucket.checksum, GcsBucket::spec().checksum());

        // A nested type that is not registered: refused with Prefect's message.
        let (fresh, _) = (store.create_block_type(BlockTypeCreate { name: "Parent".into(), slug: "parent".into(), logo_url: None, documentation_url: None, description: None, code_example: None }).await.unwrap(), ());
        let fields = obj(json!({"properties": {"c": {"$ref": "#/definitions/C"}}, "block_schema_references": {"c": {"block_type_slug": "unknown-type", "block_schema_checksum": "sha256:00"}}, "definitions": {"C": {"block_type_slug": "unknown-type"}}}));
        let missing = store.create_block_schema(BlockSchemaCreate { fields, block_type_id: fresh.id, capabilities: vec![], version: "1".into() }, Rights::ADMIN).await;
        assert!(matches!(&missing, Err(StoreError::MissingBlockType(m)) if m.contains("'unknown-type' was not found")), "{missing:?}");
        assert!(store.filter_block_schemas(&BlockSchemaFilterBody::default()).await.unwrap().iter().all(|s| s.block_type_id != fresh.id));
    })
    .await;
}

#[tokio::test]
async fn types_validate_input_and_update_metadata() {
    on_both(async |db| {
        let store = db.open().await;
        let bad = store.create_block_type(BlockTypeCreate { name: "a/b".into(), slug: "Bad Slug".into(), logo_url: Some("not a url".into()), documentation_url: None, description: None, code_example: None }).await;
        let Err(StoreError::Invalid(errors)) = bad else { panic!("{bad:?}") };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["name", "slug", "logo_url"]);
        // A name like Prefect's own is reserved, before any other check, on every path.
        for name in ["PrefectThing", "prefect/x"] {
            let reserved = store.create_block_type(BlockTypeCreate { name: name.into(), slug: "prefect-thing".into(), logo_url: None, documentation_url: None, description: None, code_example: None }).await;
            assert!(matches!(&reserved, Err(StoreError::Protected(m)) if m == "Block type names beginning with 'Prefect' are reserved."), "{reserved:?}");
        }
        let ty = store.create_block_type(BlockTypeCreate { name: "Thing".into(), slug: "thing".into(), logo_url: None, documentation_url: None, description: Some("d".into()), code_example: None }).await.unwrap();
        let dup = store.create_block_type(BlockTypeCreate { name: "Thing".into(), slug: "thing".into(), logo_url: None, documentation_url: None, description: None, code_example: None }).await;
        assert!(matches!(dup, Err(StoreError::AlreadyExists(m)) if m == "Block type with name \"Thing\" already exists"));
        store.update_block_type(ty.id, BlockTypeUpdate { description: Some(None), logo_url: Some(Some("https://x.io/l.png".into())), ..Default::default() }, Rights::WRITE).await.unwrap();
        let after = store.read_block_type(ty.id).await.unwrap();
        assert_eq!(after.description, None);
        assert_eq!(after.logo_url.as_deref(), Some("https://x.io/l.png"));
        assert!(matches!(store.update_block_type(ty.id, BlockTypeUpdate { documentation_url: Some(Some("ftp://x".into())), ..Default::default() }, Rights::WRITE).await, Err(StoreError::Invalid(_))));
        // A backslash in like_ is literal on both backends; % stays a wildcard.
        store.create_block_type(BlockTypeCreate { name: r"Back\Slash".into(), slug: "back-slash".into(), logo_url: None, documentation_url: None, description: None, code_example: None }).await.unwrap();
        let like = |pattern: &str| block_types::model::BlockTypeFilterBody {
            block_types: Some(block_types::model::BlockTypeFilter { name: Some(block_types::model::Like { like_: Some(pattern.to_owned()) }), slug: None }),
            ..Default::default()
        };
        assert_eq!(store.filter_block_types(&like(r"k\s")).await.unwrap().len(), 1);
        assert_eq!(store.filter_block_types(&like("b%sl")).await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn deletes_in_use_or_protected_are_refused_and_name_the_users() {
    on_both(async |db| {
        let store = db.open().await;
        let (secret_type, secret_schema) = register::<Secret>(&store).await;
        assert!(matches!(store.delete_block_type(secret_type.id).await, Err(StoreError::Protected(_))));
        assert!(matches!(store.delete_block_schema(secret_schema.id).await, Err(StoreError::Protected(_))));

        let (creds_type, creds_schema) = register::<GcpCredentials>(&store).await;
        let (bucket_type, bucket_schema) = register::<GcsBucket>(&store).await;
        // The credentials schema is nested in the bucket schema.
        let nested = store.delete_block_schema(creds_schema.id).await;
        assert!(matches!(&nested, Err(StoreError::InUse { referrers, .. }) if referrers[0].starts_with("gcs-bucket ")), "{nested:?}");
        let nested_type = store.delete_block_type(creds_type.id).await;
        assert!(matches!(&nested_type, Err(StoreError::InUse { referrers, .. }) if referrers == &["gcs-bucket"]), "{nested_type:?}");

        let doc = create(&store, &bucket_schema, "zoom-gcs", json!({"bucket": "b"})).await;
        let used = store.delete_block_schema(bucket_schema.id).await;
        assert!(matches!(&used, Err(StoreError::InUse { referrers, .. }) if referrers == &["gcs-bucket/zoom-gcs"]), "{used:?}");
        let used_type = store.delete_block_type(bucket_type.id).await;
        assert!(matches!(&used_type, Err(StoreError::InUse { referrers, .. }) if referrers == &["gcs-bucket/zoom-gcs"]), "{used_type:?}");

        store.delete_block_document(doc.id, None).await.unwrap();
        store.delete_block_type(bucket_type.id).await.unwrap();
        assert!(matches!(store.read_block_schema(bucket_schema.id).await, Err(StoreError::NotFound(_))));
        store.delete_block_type(creds_type.id).await.unwrap();
        let checksum = schema_checksum(&Value::Object(obj(json!({}))));
        assert!(matches!(store.read_block_schema_by_checksum(&checksum, None).await, Err(StoreError::NotFound(_))));
    })
    .await;
}

#[tokio::test]
async fn replicas_registering_the_same_schema_at_once_all_succeed() {
    on_both(async |db| {
        let store = std::sync::Arc::new(db.open().await);
        let spec = GcsBucket::spec();
        store
            .ensure_block_type(&GcpCredentials::spec().block_type, false)
            .await
            .unwrap();
        let ty = store
            .ensure_block_type(&spec.block_type, false)
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (store, body) = (store.clone(), spec.to_schema_create(ty.id));
            tasks.push(tokio::spawn(async move {
                store
                    .create_block_schema(body, Rights::ADMIN)
                    .await
                    .map(|(s, _)| s.id)
            }));
        }
        let mut ids = std::collections::HashSet::new();
        for task in tasks {
            ids.insert(task.await.unwrap().expect("every registration succeeds"));
        }
        assert_eq!(ids.len(), 1, "one schema row");
    })
    .await;
}

#[tokio::test]
async fn a_self_nesting_definition_is_refused_not_recursed_forever() {
    on_both(async |db| {
        let store = db.open().await;
        let ty = store.create_block_type(BlockTypeCreate { name: "Loop".into(), slug: "loop".into(), logo_url: None, documentation_url: None, description: None, code_example: None }).await.unwrap();
        let fields = obj(json!({
            "properties": {"me": {"$ref": "#/definitions/Loop"}},
            "block_schema_references": {"me": {"block_type_slug": "loop", "block_schema_checksum": "sha256:not-registered"}},
            "definitions": {"Loop": {"block_type_slug": "loop", "properties": {"me": {"$ref": "#/definitions/Loop"}},
                "block_schema_references": {"me": {"block_type_slug": "loop", "block_schema_checksum": "sha256:not-registered"}}}}
        }));
        let refused = store.create_block_schema(BlockSchemaCreate { fields, block_type_id: ty.id, capabilities: vec![], version: "1".into() }, Rights::ADMIN).await;
        assert!(matches!(refused, Err(StoreError::Invalid(ref e)) if e[0].field == "fields.block_schema_references"), "{refused:?}");
    })
    .await;
}

#[tokio::test]
async fn a_protected_types_metadata_changes_only_for_an_admin() {
    on_both(async |db| {
        let store = db.open().await;
        let (ty, _) = register::<Secret>(&store).await;
        let phishing = BlockTypeUpdate {
            description: Some(Some("Paste your secret at https://evil.example".into())),
            documentation_url: Some(Some("https://evil.example/docs".into())),
            ..Default::default()
        };
        store
            .update_block_type(ty.id, phishing.clone(), Rights::WRITE)
            .await
            .unwrap();
        let unchanged = store.read_block_type(ty.id).await.unwrap();
        assert_eq!(unchanged.description, ty.description);
        assert_eq!(unchanged.documentation_url, ty.documentation_url);
        store
            .update_block_type(ty.id, phishing, Rights::ADMIN)
            .await
            .unwrap();
        let changed = store.read_block_type(ty.id).await.unwrap();
        assert_eq!(
            changed.documentation_url.as_deref(),
            Some("https://evil.example/docs")
        );
    })
    .await;
}
