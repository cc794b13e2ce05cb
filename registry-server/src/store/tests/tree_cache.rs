//! The read cache of resolved trees: a hot read costs no query, and every write that
//! changes what a read returns is seen by the next read — on one store, and (PostgreSQL)
//! through another replica within the notification delay.

use std::time::Duration;

use block_types::catalog::{GcpCredentials, GcsBucket};
use block_types::model::{BlockDocumentUpdate, BlockTypeUpdate};
use block_types::references::reference_value;
use serde_json::{Value, json};

use super::harness::{create, obj, on_both, register};
use crate::store::{Backend, Rights, Store};

const CANARY: &str = "canary-tree-51e0";

fn key(value: &str) -> Value {
    json!({"service_account_info": {"type": "service_account", "private_key": value}, "project": "dtc-de"})
}

fn update(data: Value) -> BlockDocumentUpdate {
    BlockDocumentUpdate {
        data: Some(obj(data)),
        ..BlockDocumentUpdate::default()
    }
}

/// The private key the bucket's tree answers, read by name with secrets, built from the
/// tree and as the answer kept pre-serialized (the two must agree byte for byte).
async fn served_key(store: &Store) -> Value {
    let bucket = store
        .read_block_document_by_name("gcs-bucket", "zoom-gcs", true)
        .await
        .unwrap();
    let answer = store
        .read_answer_by_name("gcs-bucket", "zoom-gcs", true)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&answer.body),
        serde_json::to_string(&bucket).unwrap(),
        "the kept answer is the answer built from the tree"
    );
    bucket.data["gcp_credentials"]["service_account_info"]["private_key"].clone()
}

async fn wait_live(store: &Store) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !store.tree_cache_live() {
        assert!(
            std::time::Instant::now() < deadline,
            "the listener never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn every_write_to_a_tree_is_seen_by_the_next_read_with_the_cache_on() {
    on_both(async |db| {
        let store = db.open().await;
        wait_live(&store).await;
        let (_, creds_schema) = register::<GcpCredentials>(&store).await;
        let (bucket_type, bucket_schema) = register::<GcsBucket>(&store).await;
        let creds = create(&store, &creds_schema, "zoom-gcp-creds", key(&format!("{CANARY}-1"))).await;
        let bucket = create(&store, &bucket_schema, "zoom-gcs", json!({"bucket": "dtc-lake", "bucket_folder": "", "gcp_credentials": reference_value(creds.id)})).await;

        assert_eq!(served_key(&store).await, json!(format!("{CANARY}-1")));
        let queries = store.query_count();
        let hits = store.tree_cache_stats().hits;
        assert_eq!(served_key(&store).await, json!(format!("{CANARY}-1")));
        assert_eq!(store.query_count(), queries, "a cached tree costs no query");
        assert_eq!(store.tree_cache_stats().hits, hits + 2, "both reads of the tree hit");
        // Masked from the same cached tree: the cache holds sealed values, not plaintext.
        let masked = store.read_block_document_by_name("gcs-bucket", "zoom-gcs", false).await.unwrap();
        assert_eq!(masked.data["gcp_credentials"]["service_account_info"]["private_key"], json!("********"));
        assert!(!format!("{:?}", store.trees).contains(CANARY), "the cache's Debug shows no value");

        // A write to the referenced document.
        store.update_block_document(creds.id, update(key(&format!("{CANARY}-2"))), None, Rights::WRITE).await.unwrap();
        assert_eq!(served_key(&store).await, json!(format!("{CANARY}-2")));
        // A rollback.
        store.rollback_block_document(creds.id, 1, None, None).await.unwrap();
        assert_eq!(served_key(&store).await, json!(format!("{CANARY}-1")));
        // The by-id read of the root, cached separately, follows too.
        let by_id = store.read_block_document(bucket.id, true).await.unwrap();
        assert_eq!(by_id.data["gcp_credentials"]["service_account_info"]["private_key"], json!(format!("{CANARY}-1")));
        store.update_block_document(creds.id, update(key(&format!("{CANARY}-3"))), None, Rights::WRITE).await.unwrap();
        let by_id = store.read_block_document(bucket.id, true).await.unwrap();
        assert_eq!(by_id.data["gcp_credentials"]["service_account_info"]["private_key"], json!(format!("{CANARY}-3")));
        // The type's metadata is part of the answer.
        store.update_block_type(bucket_type.id, BlockTypeUpdate { description: Some(Some("changed".into())), ..Default::default() }, Rights::WRITE).await.unwrap();
        let read = store.read_block_document_by_name("gcs-bucket", "zoom-gcs", false).await.unwrap();
        assert_eq!(read.block_type.unwrap().description.as_deref(), Some("changed"));
        // A key rotation re-encrypts and destroys the old key: the tree still opens.
        store.rotate_data_key().await.unwrap();
        store.reencrypt_all(10).await.unwrap();
        assert_eq!(served_key(&store).await, json!(format!("{CANARY}-3")));
        // A deleted root is gone, and a new document of the same name is the one served.
        store.delete_block_document(bucket.id, None).await.unwrap();
        assert!(store.read_block_document_by_name("gcs-bucket", "zoom-gcs", true).await.is_err());
        let other = create(&store, &creds_schema, "other-creds", key(&format!("{CANARY}-4"))).await;
        create(&store, &bucket_schema, "zoom-gcs", json!({"bucket": "dtc-lake", "bucket_folder": "", "gcp_credentials": reference_value(other.id)})).await;
        assert_eq!(served_key(&store).await, json!(format!("{CANARY}-4")));
        let stats = store.tree_cache_stats();
        assert!(stats.invalidations > 0 && stats.entries > 0 && stats.bytes > 0, "{stats:?}");
    })
    .await;
}

#[tokio::test]
async fn a_kept_answer_is_the_built_answer_byte_for_byte_and_keeps_no_secret() {
    on_both(async |db| {
        let store = db.open().await;
        wait_live(&store).await;
        let (_, creds_schema) = register::<GcpCredentials>(&store).await;
        let (_, bucket_schema) = register::<GcsBucket>(&store).await;
        let creds = create(&store, &creds_schema, "zoom-gcp-creds", key(CANARY)).await;
        // Plain text shaped like a marker of a kept answer is left as it is.
        let decoy = "blocks-sealed-00000000000000000000000000000000-0";
        let bucket = create(&store, &bucket_schema, "zoom-gcs", json!({"bucket": decoy, "bucket_folder": "\"quoted\" ünïcode", "gcp_credentials": reference_value(creds.id)})).await;

        for round in 0..2 {
            for include_secrets in [true, false] {
                let built = store.read_block_document_tagged(bucket.id, include_secrets).await.unwrap();
                let by_id = store.read_answer(bucket.id, include_secrets).await.unwrap();
                let by_name = store.read_answer_by_name("gcs-bucket", "zoom-gcs", include_secrets).await.unwrap();
                let expected = serde_json::to_string(&built.document).unwrap();
                for answer in [&by_id, &by_name] {
                    assert_eq!(String::from_utf8_lossy(&answer.body), expected, "round {round}, secrets {include_secrets}");
                    assert_eq!((answer.etag.as_str(), answer.version), (built.etag.as_str(), built.version));
                    assert_eq!(&*answer.documents, [bucket.id, creds.id]);
                }
                assert_eq!(expected.contains(CANARY), include_secrets);
                assert!(expected.contains(decoy));
            }
        }
        // Kept: the masked answers whole, and the text around the secret values.
        let kept = store.kept_answer_text();
        assert!(kept.contains("********") && kept.contains(decoy), "the answers were kept");
        assert!(!kept.contains(CANARY), "no secret value is kept in plaintext");

        // Served new at once after a write to the referenced document.
        store.update_block_document(creds.id, update(key(&format!("{CANARY}-new"))), None, Rights::WRITE).await.unwrap();
        assert_eq!(served_key(&store).await, json!(format!("{CANARY}-new")));
        // A missing document is a 404 either way.
        assert!(matches!(
            store.read_answer_by_name("gcs-bucket", "nope", true).await,
            Err(crate::store::StoreError::NotFound(_))
        ));
    })
    .await;
}

#[tokio::test]
async fn a_write_through_one_replica_reaches_the_other_replicas_cache() {
    on_both(async |db| {
        if db.backend == Backend::Sqlite {
            // The embedded store has one server process; nothing to show here.
            return;
        }
        let a = db.open().await;
        let b = db.open().await;
        wait_live(&b).await;
        let (_, creds_schema) = register::<GcpCredentials>(&a).await;
        let (_, bucket_schema) = register::<GcsBucket>(&a).await;
        let creds = create(&a, &creds_schema, "zoom-gcp-creds", key(&format!("{CANARY}-1"))).await;
        create(&a, &bucket_schema, "zoom-gcs", json!({"bucket": "dtc-lake", "bucket_folder": "", "gcp_credentials": reference_value(creds.id)})).await;
        // Once the notifications of A's creates have reached B (they may drop what B read
        // before they arrived), B answers from its cache.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            assert_eq!(served_key(&b).await, json!(format!("{CANARY}-1")));
            let queries = b.query_count();
            assert_eq!(served_key(&b).await, json!(format!("{CANARY}-1")));
            if b.query_count() == queries {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "B never answers from its cache");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        a.update_block_document(creds.id, update(key(&format!("{CANARY}-2"))), None, Rights::WRITE).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while served_key(&b).await != json!(format!("{CANARY}-2")) {
            assert!(std::time::Instant::now() < deadline, "replica B still serves the old credential");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// The tree query's plan for the root `root` selects: SQLite's `explain query plan`
/// details, or PostgreSQL's `explain` lines.
async fn tree_plan(store: &Store, root: impl Fn(&mut crate::store::sql::Sql)) -> Vec<String> {
    let mut sql = store.tree_sql(root);
    let (explain, column) = match store.backend() {
        Backend::Sqlite => ("explain query plan", "detail"),
        Backend::Postgres => ("explain", "QUERY PLAN"),
    };
    sql.text = format!("{explain} {}", sql.text);
    sql.query()
        .fetch_all(&store.read)
        .await
        .unwrap()
        .iter()
        .map(|row| sqlx::Row::try_get::<String, _>(row, column).unwrap())
        .collect()
}

#[tokio::test]
async fn the_tree_query_seeks_each_document_by_id_never_scans_them() {
    on_both(async |db| {
        if db.backend != Backend::Sqlite {
            return;
        }
        let store = db.open().await;
        let plan = tree_plan(&store, |sql| {
            sql.push("d.block_type_id = (select id from block_type where slug = ")
                .bind_text("gcs-bucket")
                .push(") and d.name = ")
                .bind_text("zoom-gcs");
        })
        .await;
        // A scan of the documents (or of their versions) per read grows with the store: a
        // million documents made one read take a minute.
        for line in &plan {
            assert!(
                !(line.starts_with("SCAN d")
                    || line.starts_with("SCAN v")
                    || line.contains("AUTOMATIC")),
                "the tree query scans: {plan:#?}"
            );
        }
        assert!(
            plan.iter().any(|l| l.starts_with("SEARCH d USING INDEX")),
            "{plan:#?}"
        );
    })
    .await;
}

/// No analyze of the document tables while a test fills them (PostgreSQL): the planner
/// keeps the statistics of a new, empty store.
async fn without_autovacuum(store: &Store) {
    for table in [
        "block_document",
        "block_document_version",
        "block_document_reference",
    ] {
        sqlx::query(&format!(
            "alter table {table} set (autovacuum_enabled = false)"
        ))
        .execute(&store.write)
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn the_tree_query_looks_documents_up_by_key_before_postgresql_has_statistics() {
    on_both(async |db| {
        if db.backend != Backend::Postgres {
            return;
        }
        // A store filling up before its first analyze: the planner still believes the
        // tables are small, and a plain join would hash every document and version.
        let store = db.open().await;
        // Nor does an analyze run meanwhile.
        without_autovacuum(&store).await;
        let (_, schema) = register::<GcpCredentials>(&store).await;
        let bodies = (0..3000)
            .map(|i| block_types::model::BlockDocumentCreate {
                name: Some(format!("doc-{i}")),
                data: obj(json!({"project": "dtc-de"})),
                block_schema_id: schema.id,
                block_type_id: schema.block_type_id,
                is_anonymous: false,
            })
            .collect();
        let ids = store.import_block_documents(bodies, None).await.unwrap();
        let plan = tree_plan(&store, |sql| {
            sql.push("d.id = ").bind_text(ids[1500].to_string());
        })
        .await;
        for line in &plan {
            assert!(
                !line.contains("Seq Scan"),
                "the tree query scans: {plan:#?}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_writes_reference_walk_looks_rows_up_by_key_before_postgresql_has_statistics() {
    on_both(async |db| {
        if db.backend != Backend::Postgres {
            return;
        }
        let store = db.open().await;
        without_autovacuum(&store).await;
        let (_, creds) = register::<GcpCredentials>(&store).await;
        let (_, bucket) = register::<GcsBucket>(&store).await;
        let body = |schema: &block_types::model::BlockSchema, name: String, data: Value| {
            block_types::model::BlockDocumentCreate {
                name: Some(name),
                data: obj(data),
                block_schema_id: schema.id,
                block_type_id: schema.block_type_id,
                is_anonymous: false,
            }
        };
        let credentials = store
            .import_block_documents(
                (0..1500)
                    .map(|i| body(&creds, format!("creds-{i}"), json!({"project": "p"})))
                    .collect(),
                None,
            )
            .await
            .unwrap();
        let buckets = store
            .import_block_documents(
                credentials
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        body(
                            &bucket,
                            format!("bucket-{i}"),
                            json!({"bucket": "b", "gcp_credentials": reference_value(*c)}),
                        )
                    })
                    .collect(),
                None,
            )
            .await
            .unwrap();
        let plan: Vec<String> = sqlx::query_scalar(&format!("explain {}", store.tree_edges_sql()))
            .bind(buckets[700].to_string())
            .fetch_all(&store.read)
            .await
            .unwrap();
        for line in &plan {
            for whole in ["Seq Scan", "Merge Join", "Hash Join"] {
                assert!(
                    !line.contains(whole),
                    "the walk reads whole tables: {plan:#?}"
                );
            }
        }
    })
    .await;
}

#[tokio::test]
async fn counts_per_type_are_kept_until_the_next_create_or_delete() {
    on_both(async |db| {
        let store = db.open().await;
        wait_live(&store).await;
        let (creds_type, creds_schema) = register::<GcpCredentials>(&store).await;
        let count = async |store: &Store| {
            store
                .document_counts_by_type(false)
                .await
                .unwrap()
                .into_iter()
                .find(|(t, _)| *t == creds_type.id)
                .map_or(0, |(_, n)| n)
        };
        let first = create(&store, &creds_schema, "one", key("k")).await;
        assert_eq!(count(&store).await, 1);
        let queries = store.query_count();
        assert_eq!(count(&store).await, 1);
        assert_eq!(store.query_count(), queries, "kept counts cost no query");
        create(&store, &creds_schema, "two", key("k")).await;
        assert_eq!(count(&store).await, 2, "a create is counted at once");
        store.delete_block_document(first.id, None).await.unwrap();
        assert_eq!(count(&store).await, 1, "a delete is counted at once");
        if db.backend == Backend::Postgres {
            // Another replica's create reaches this one's counts through the listener.
            let other = db.open().await;
            wait_live(&other).await;
            assert_eq!(count(&store).await, 1);
            create(&other, &creds_schema, "three", key("k")).await;
            // Sooner than the counts' age limit: the notice of the create, not their age.
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while count(&store).await != 2 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the other replica's create is never counted"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_documents_tag_is_its_tagged_reads_and_follows_every_write_to_its_tree() {
    on_both(async |db| {
        let store = db.open().await;
        wait_live(&store).await;
        let (_, creds_schema) = register::<GcpCredentials>(&store).await;
        let (_, bucket_schema) = register::<GcsBucket>(&store).await;
        let creds = create(&store, &creds_schema, "tag-creds", key(&format!("{CANARY}-1"))).await;
        let bucket = create(&store, &bucket_schema, "tag-gcs", json!({"bucket": "dtc-lake", "bucket_folder": "", "gcp_credentials": reference_value(creds.id)})).await;

        let tagged = store.read_block_document_tagged(bucket.id, false).await.unwrap();
        let (etag, version) = store.document_tag(bucket.id).await.unwrap();
        assert_eq!((etag.as_str(), version), (tagged.etag.as_str(), tagged.version));
        // A write to the referenced document changes the root's tag, not its version.
        store.update_block_document(creds.id, update(key(&format!("{CANARY}-2"))), None, Rights::WRITE).await.unwrap();
        let (after, same_version) = store.document_tag(bucket.id).await.unwrap();
        assert_ne!(after, etag, "a change anywhere in the tree changes the tag");
        assert_eq!(same_version, version);
        assert_eq!(after, store.read_block_document_tagged(bucket.id, true).await.unwrap().etag);
        // Its own write moves both.
        store.update_block_document(bucket.id, update(json!({"bucket": "other"})), None, Rights::WRITE).await.unwrap();
        let (latest, newer) = store.document_tag(bucket.id).await.unwrap();
        assert_ne!(latest, after);
        assert_eq!(newer, version + 1);
        // A missing document is not found, as a read of it is.
        assert!(matches!(
            store.document_tag(uuid::Uuid::new_v4()).await,
            Err(crate::store::StoreError::NotFound(_))
        ));
    })
    .await;
}
