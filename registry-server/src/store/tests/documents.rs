//! Documents: writes, reads, references, concurrency, rollback of failed writes, history.

use std::sync::Arc;

use block_types::catalog::{GcpCredentials, GcsBucket, Secret, SqlAlchemyConnector};
use block_types::model::{BlockDocumentCreate, BlockDocumentUpdate, BlockSchema};
use block_types::references::reference_value;
use serde_json::{Value, json};
use tokio::sync::Barrier;

use super::harness::{create, create_body, custom_schema, custom_type, obj, on_both, register};
use crate::store::{Rights, StoreConfig, StoreError};

const CANARY: &str = "canary-3c9e51d7";

fn update(data: Value) -> BlockDocumentUpdate {
    BlockDocumentUpdate {
        data: Some(obj(data)),
        ..BlockDocumentUpdate::default()
    }
}

/// A merge of `data` that also moves the document to `schema`.
fn move_to(schema: &BlockSchema, data: Value) -> BlockDocumentUpdate {
    BlockDocumentUpdate {
        block_schema_id: Some(schema.id),
        ..update(data)
    }
}

#[tokio::test]
async fn create_read_update_delete_round_trip_with_secrets_masked_or_shown() {
    on_both(async |db| {
        let store = db.open().await;
        let (_, schema) = register::<SqlAlchemyConnector>(&store).await;
        let data = json!({"connection_info": {"driver": "postgresql+psycopg2", "database": "ny_taxi", "username": "root",
            "password": CANARY, "host": "localhost", "port": 5432, "query": null}, "connect_args": null, "fetch_size": 1});
        let created = create(&store, &schema, "postgres-connector", data.clone()).await;
        assert_eq!(created.data["connection_info"]["password"], json!("********"), "create answers masked");
        assert_eq!(created.block_schema.as_ref().unwrap().id, schema.id);
        assert_eq!(created.block_type.as_ref().unwrap().slug, "sqlalchemy-connector");

        let shown = store.read_block_document(created.id, true).await.unwrap();
        assert_eq!(Value::Object(shown.data.clone()), data);
        let by_name = store.read_block_document_by_name("sqlalchemy-connector", "postgres-connector", true).await.unwrap();
        assert_eq!(by_name.id, created.id);
        assert!(matches!(
            store.read_block_document_by_name("secret", "postgres-connector", true).await,
            Err(StoreError::NotFound(_))
        ));

        // An echoed mask keeps the password; a merge keeps unmentioned fields.
        let mut echoed = store.read_block_document(created.id, false).await.unwrap().data;
        echoed.insert("fetch_size".into(), json!(50));
        let outcome = store.update_block_document(created.id, BlockDocumentUpdate { data: Some(echoed), ..Default::default() }, None, Rights::ADMIN).await.unwrap();
        assert_eq!(outcome.version, 2);
        let after = store.read_block_document(created.id, true).await.unwrap();
        assert_eq!(after.data["connection_info"]["password"], json!(CANARY));
        assert_eq!(after.data["fetch_size"], json!(50));
        assert!(after.updated >= created.updated);

        // A mask sent where nothing is stored is refused, not stored as asterisks.
        let nothing = store
            .update_block_document(created.id, update(json!({"connection_info": {"driver": "postgresql+psycopg2", "password": null}})), None, Rights::ADMIN)
            .await
            .unwrap();
        let refused = store
            .update_block_document(created.id, update(json!({"connection_info": {"driver": "postgresql+psycopg2", "password": "********"}})), None, Rights::ADMIN)
            .await;
        let Err(StoreError::Invalid(errors)) = refused else { panic!("{refused:?}") };
        assert_eq!(errors[0].field, "data.connection_info.password");
        assert_eq!(store.document_version(created.id).await.unwrap(), nothing.version);

        // Same name and type: refused.
        let dup = store
            .create_block_document(BlockDocumentCreate {
                name: Some("postgres-connector".into()),
                data: obj(data.clone()),
                block_schema_id: schema.id,
                block_type_id: schema.block_type_id,
                is_anonymous: false,
            })
            .await;
        assert!(matches!(dup, Err(StoreError::AlreadyExists(m)) if m == "Block already exists"));

        store.delete_block_document(created.id, None).await.unwrap();
        assert!(matches!(store.read_block_document(created.id, false).await, Err(StoreError::NotFound(_))));
        assert!(matches!(store.delete_block_document(created.id, None).await, Err(StoreError::NotFound(_))));
    })
    .await;
}

#[tokio::test]
async fn a_creates_answer_is_what_a_read_of_the_new_document_answers() {
    on_both(async |db| {
        let store = db.open().await;
        let (_, sql) = register::<SqlAlchemyConnector>(&store).await;
        let (_, gcp) = register::<GcpCredentials>(&store).await;
        let (_, bucket) = register::<GcsBucket>(&store).await;
        let (_, secret) = register::<Secret>(&store).await;
        let credentials = create(&store, &gcp, "creds", json!({"service_account_info": {"type": "service_account", "private_key": CANARY}, "project": "p"})).await;
        let cases = [
            (&sql, json!({"connection_info": {"driver": "postgresql+psycopg2", "database": "d", "username": "u",
                "password": CANARY, "host": "h", "port": 5432, "query": null}, "connect_args": {"timeout": 1.5, "n": 10000000000_i64}, "fetch_size": 1})),
            (&secret, json!({"value": CANARY})),
            (&bucket, json!({"bucket": "b", "gcp_credentials": reference_value(credentials.id)})),
            (&bucket, json!({"bucket": "no-credentials"})),
        ];
        for (i, (schema, data)) in cases.into_iter().enumerate() {
            for anonymous in [false, true] {
                let created = store
                    .create_block_document(BlockDocumentCreate {
                        name: (!anonymous).then(|| format!("answer-{i}")),
                        data: obj(data.clone()),
                        block_schema_id: schema.id,
                        block_type_id: schema.block_type_id,
                        is_anonymous: anonymous,
                    })
                    .await
                    .unwrap();
                let read = store.read_block_document(created.id, false).await.unwrap();
                assert_eq!(
                    serde_json::to_value(&created).unwrap(),
                    serde_json::to_value(&read).unwrap(),
                    "case {i}, anonymous {anonymous}"
                );
                assert!(!serde_json::to_string(&created).unwrap().contains(CANARY));
            }
        }
    })
    .await;
}

#[tokio::test]
async fn invalid_data_and_references_are_refused_and_nothing_is_stored() {
    on_both(async |db| {
        let store = db.open().await;
        let (_, schema) = register::<SqlAlchemyConnector>(&store).await;
        let bad = store
            .create_block_document(BlockDocumentCreate {
                name: Some("bad".into()),
                data: obj(json!({"connection_info": {"driver": "x", "port": "high"}, "fetch_size": "many"})),
                block_schema_id: schema.id,
                block_type_id: schema.block_type_id,
                is_anonymous: false,
            })
            .await;
        let Err(StoreError::Invalid(errors)) = bad else { panic!("{bad:?}") };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"data.fetch_size"), "{errors:?}");

        let missing = uuid::Uuid::new_v4();
        let dangling = store
            .create_block_document(BlockDocumentCreate {
                name: Some("dangling".into()),
                data: obj(json!({"connection_info": "sqlite:///x.db", "extra": reference_value(missing)})),
                block_schema_id: schema.id,
                block_type_id: schema.block_type_id,
                is_anonymous: false,
            })
            .await;
        assert!(matches!(&dangling, Err(StoreError::BadReference(e)) if e.field == "data.extra"), "{dangling:?}");
        let malformed = store
            .create_block_document(BlockDocumentCreate {
                name: Some("malformed".into()),
                data: obj(json!({"connection_info": "sqlite:///x.db", "extra": {"$ref": {}}})),
                block_schema_id: schema.id,
                block_type_id: schema.block_type_id,
                is_anonymous: false,
            })
            .await;
        assert!(matches!(malformed, Err(StoreError::BadReference(_))));
        let bad_name = store
            .create_block_document(BlockDocumentCreate {
                name: Some("Bad Name".into()),
                data: obj(json!({"connection_info": "sqlite:///x.db"})),
                block_schema_id: schema.id,
                block_type_id: schema.block_type_id,
                is_anonymous: false,
            })
            .await;
        assert!(matches!(bad_name, Err(StoreError::Invalid(e)) if e[0].field == "name"));
        assert_eq!(store.count_block_documents(&Default::default()).await.unwrap(), 0);
    })
    .await;
}

/// Builds secret ← gcp-credentials ← gcs-bucket, plus a bucket-of-bucket third level via a
/// custom schema, and returns (top, middle, leaf) ids.
#[tokio::test]
async fn three_levels_resolve_in_one_query_and_cycles_and_dangling_deletes_are_refused() {
    on_both(async |db| {
        let store = db.open().await;
        let (_, creds_schema) = register::<GcpCredentials>(&store).await;
        let (_, bucket_schema) = register::<GcsBucket>(&store).await;
        // A third level: a "pipeline" type whose `bucket` field references a gcs-bucket.
        let pipeline_type = custom_type(&store, "Pipeline", "pipeline").await;
        let fields = json!({"title": "Pipeline", "type": "object", "properties": {"bucket": {"type": "object"}, "note": {"type": "string"}}, "secret_fields": ["note"]});
        let (pipeline_schema, created) = custom_schema(&store, &pipeline_type, fields, "1").await;
        assert!(created);

        let leaf = create(&store, &creds_schema, "zoom-gcp-creds", json!({"service_account_info": {"private_key": CANARY, "type": "service_account"}, "project": "dtc"})).await;
        let middle = create(&store, &bucket_schema, "zoom-gcs", json!({"bucket": "dtc-lake", "bucket_folder": "", "gcp_credentials": reference_value(leaf.id)})).await;
        let top = create(&store, &pipeline_schema, "etl", json!({"note": CANARY, "bucket": reference_value(middle.id)})).await;

        // The first read may fetch schemas it has not cached yet; from then on a nested read
        // not in the read cache is exactly one query, and a cached one none.
        store.read_block_document(top.id, true).await.unwrap();
        store.forget_trees(&[]);
        let before = store.query_count();
        store.read_block_document(top.id, true).await.unwrap();
        assert_eq!(store.query_count() - before, 1, "a nested read is one query");
        let before = store.query_count();
        let read = store.read_block_document(top.id, true).await.unwrap();
        assert_eq!(store.query_count() - before, 0, "a cached nested read is none");
        assert_eq!(read.data["bucket"]["gcp_credentials"]["service_account_info"]["private_key"], json!(CANARY));
        assert_eq!(read.data["bucket"]["bucket"], json!("dtc-lake"));
        let refs = &read.block_document_references["bucket"].block_document;
        assert_eq!(refs.id, middle.id);
        assert_eq!(refs.block_type.slug, "gcs-bucket");
        assert_eq!(refs.block_document_references["gcp_credentials"].block_document.id, leaf.id);

        // Masked: every level's secrets, including the parent's paths into the child.
        let masked = store.read_block_document(top.id, false).await.unwrap();
        assert!(!Value::Object(masked.data.clone()).to_string().contains(CANARY));
        assert_eq!(masked.data["bucket"]["gcp_credentials"]["service_account_info"]["private_key"], json!("********"));
        assert_eq!(masked.data["note"], json!("********"));
        // The resolved keys come after the parent's own keys, as in Prefect.
        let middle_data = store.read_block_document(middle.id, false).await.unwrap().data;
        assert_eq!(middle_data.keys().next_back().map(String::as_str), Some("gcp_credentials"));

        // A cycle: the leaf's type has no reference field, so point the middle at the top.
        let cycle = store.update_block_document(middle.id, update(json!({"gcp_credentials": reference_value(top.id)})), None, Rights::ADMIN).await;
        assert!(matches!(cycle, Err(StoreError::Cycle(_))), "{cycle:?}");
        let own = store.update_block_document(middle.id, update(json!({"gcp_credentials": reference_value(middle.id)})), None, Rights::ADMIN).await;
        assert!(matches!(own, Err(StoreError::Cycle(_))), "{own:?}");
        assert_eq!(store.document_version(middle.id).await.unwrap(), 1, "a refused write changes nothing");

        // Deleting a referenced child is refused and names the parent.
        let refused = store.delete_block_document(leaf.id, None).await;
        let Err(StoreError::InUse { referrers, .. }) = refused else { panic!("{refused:?}") };
        assert_eq!(referrers, ["gcs-bucket/zoom-gcs"]);
        // A merge that does not mention the reference keeps it.
        store.update_block_document(middle.id, update(json!({"bucket": "renamed"})), None, Rights::ADMIN).await.unwrap();
        let kept = store.read_block_document(middle.id, true).await.unwrap();
        assert_eq!(kept.data["bucket"], json!("renamed"));
        assert_eq!(kept.data["gcp_credentials"]["project"], json!("dtc"));
        // Deleting from the top down works.
        store.delete_block_document(top.id, None).await.unwrap();
        store.delete_block_document(middle.id, None).await.unwrap();
        store.delete_block_document(leaf.id, None).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_failed_write_leaves_no_trace() {
    on_both(async |db| {
        let store = db.open().await;
        let (_, creds) = register::<GcpCredentials>(&store).await;
        let (_, bucket) = register::<GcsBucket>(&store).await;
        let child = create(
            &store,
            &creds,
            "c",
            json!({"service_account_info": {"k": CANARY}}),
        )
        .await;
        let counts = async || {
            let mut out = Vec::new();
            for table in [
                "block_document",
                "block_document_version",
                "block_document_reference",
                "block_event",
            ] {
                let n: i64 = sqlx::query_scalar(&format!("select count(*) from {table}"))
                    .fetch_one(&store.read)
                    .await
                    .unwrap();
                out.push(n);
            }
            let enc: i64 =
                sqlx::query_scalar("select cast(sum(encryptions) as bigint) from data_key")
                    .fetch_one(&store.read)
                    .await
                    .unwrap();
            out.push(enc);
            out
        };
        let bucket_data = json!({"bucket": "x", "gcp_credentials": reference_value(child.id)});
        let before = counts().await;
        for point in [
            "create_after_document",
            "after_version",
            "after_references",
            "create_before_commit",
        ] {
            store.fail_at(Some(point));
            let body = create_body(&bucket, "b", bucket_data.clone());
            assert!(store.create_block_document(body).await.is_err(), "{point}");
            assert_eq!(counts().await, before, "after a failure at {point}");
            // A create without references, prepared whole (one statement on PostgreSQL).
            let plain = create_body(&creds, "d", json!({"service_account_info": {"k": CANARY}}));
            assert!(store.create_block_document(plain).await.is_err(), "{point}");
            assert_eq!(
                counts().await,
                before,
                "after a failure at {point}, without references"
            );
        }
        store.fail_at(None);
        let doc = create(&store, &bucket, "b", bucket_data).await;
        let before = counts().await;
        for point in ["after_version", "after_references", "update_before_commit"] {
            store.fail_at(Some(point));
            assert!(
                store
                    .update_block_document(
                        doc.id,
                        update(json!({"bucket": "y"})),
                        None,
                        Rights::ADMIN
                    )
                    .await
                    .is_err(),
                "{point}"
            );
            assert_eq!(counts().await, before, "after a failed update at {point}");
        }
        store.fail_at(None);
        let read = store.read_block_document(doc.id, true).await.unwrap();
        assert_eq!(read.data["bucket"], json!("x"));
        assert_eq!(store.document_version(doc.id).await.unwrap(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_create_without_references_writes_in_one_query_after_reading_its_schema() {
    on_both(async |db| {
        let store = db.open().await;
        let (_, creds) = register::<GcpCredentials>(&store).await;
        let secret = json!({"service_account_info": {"k": CANARY}});
        // The first create reserves a block of the data key's encryptions.
        create(&store, &creds, "first", secret.clone()).await;
        let queries = store.query_count();
        let doc = create(&store, &creds, "second", secret).await;
        // The schema and its secret paths, then the document, version, event and audit
        // record: one statement on PostgreSQL (its own transaction), one savepoint of the
        // open write group on SQLite (its commit is the group's).
        assert_eq!(store.query_count() - queries, 2);
        assert_eq!(store.read_block_document(doc.id, false).await.unwrap(), doc);
        let read = store.read_block_document(doc.id, true).await.unwrap();
        assert_eq!(read.data["service_account_info"]["k"], json!(CANARY));
    })
    .await;
}

#[tokio::test]
async fn a_create_waiting_for_a_taken_name_holds_no_lock_on_the_data_key() {
    on_both(async |db| {
        if db.backend != crate::store::Backend::Postgres {
            return;
        }
        // PostgreSQL runs a joined statement's main query (the document's insert) before
        // its `with` queries (the version's, which share-locks the key): the order is not
        // documented, so it is checked here. Were the key locked first, a create waiting
        // for an import's uncommitted name would hold the lock the import's refill of the
        // key's block needs: a deadlock.
        let store = Arc::new(db.open().await);
        let (_, creds) = register::<GcpCredentials>(&store).await;
        let secret = json!({"service_account_info": {"k": CANARY}});
        // Reserves a block of the key's encryptions: the next create is prepared whole.
        create(&store, &creds, "first", secret.clone()).await;
        let key: String = sqlx::query_scalar("select id from data_key where state = 'active'")
            .fetch_one(&store.read)
            .await
            .unwrap();
        // Another transaction holds the name, uncommitted.
        let mut holder = store.write.begin().await.unwrap();
        sqlx::query(
            "insert into block_document (id, created, updated, name, is_anonymous, \
             block_type_id, block_type_name, block_schema_id, version) \
             values ($1, 0, 0, 'taken', 0, $2, 'GCP Credentials', $3, 1)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(creds.block_type_id.to_string())
        .bind(creds.id.to_string())
        .execute(&mut *holder)
        .await
        .unwrap();
        let waiting = tokio::spawn({
            let store = store.clone();
            let body = BlockDocumentCreate {
                name: Some("taken".into()),
                data: obj(secret),
                block_schema_id: creds.id,
                block_type_id: creds.block_type_id,
                is_anonymous: false,
            };
            async move { store.create_block_document(body).await }
        });
        // Until the create waits on the name.
        let mut waited = false;
        for _ in 0..200 {
            let n: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity where wait_event_type = 'Lock' \
                 and datname = current_database()",
            )
            .fetch_one(&store.read)
            .await
            .unwrap();
            if n > 0 {
                waited = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(waited, "the create never waited for the taken name");
        // The key's row can be locked for update at once: the waiting create holds nothing
        // on it.
        let mut other = store.read.begin().await.unwrap();
        sqlx::query("select id from data_key where id = $1 for update nowait")
            .bind(&key)
            .execute(&mut *other)
            .await
            .expect("the data key's row is not locked by the waiting create");
        other.rollback().await.unwrap();
        // The name's holder gives up: the create goes through.
        holder.rollback().await.unwrap();
        let created = waiting.await.unwrap().unwrap();
        assert_eq!(created.name.as_deref(), Some("taken"));
    })
    .await;
}

#[tokio::test]
async fn sixteen_concurrent_writers_lose_no_update() {
    on_both(async |db| {
        let store = Arc::new(db.open().await);
        let (_, schema) = register::<Secret>(&store).await;
        let doc = create(
            &store,
            &schema,
            "counter",
            json!({"value": {"start": true}}),
        )
        .await;
        let barrier = Arc::new(Barrier::new(16));
        let mut tasks = Vec::new();
        for i in 0..16 {
            let (store, barrier) = (store.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                // Round one: everyone read version 1 before anyone writes.
                let seen = store.document_version(doc.id).await.unwrap();
                barrier.wait().await;
                let mut first = true;
                let mut version = seen;
                let mut conflicts = 0;
                loop {
                    // Version first, then data: if a write lands in between, the data is
                    // newer than the version and the write below conflicts (never loses).
                    if !first {
                        version = store.document_version(doc.id).await.unwrap();
                    }
                    let current = store.read_block_document(doc.id, true).await.unwrap();
                    let mut value = current.data["value"].clone();
                    value[format!("w{i}")] = json!(i);
                    let body = BlockDocumentUpdate {
                        data: Some(obj(json!({"value": value}))),
                        ..Default::default()
                    };
                    match store
                        .update_block_document(doc.id, body, Some(version), Rights::ADMIN)
                        .await
                    {
                        Ok(_) => return (first, conflicts),
                        Err(StoreError::VersionConflict { .. }) => conflicts += 1,
                        Err(e) => panic!("writer {i}: {e}"),
                    }
                    first = false;
                }
            }));
        }
        let mut first_round_wins = 0;
        let mut conflicts = 0;
        for task in tasks {
            let (won_first, c) = task.await.unwrap();
            first_round_wins += usize::from(won_first && c == 0);
            conflicts += c;
        }
        assert!(
            first_round_wins <= 1,
            "at most one writer can win with version 1"
        );
        assert!(
            conflicts >= 15,
            "the losers of round one got conflicts ({conflicts})"
        );
        let doc = store.read_block_document(doc.id, true).await.unwrap();
        for i in 0..16 {
            assert_eq!(
                doc.data["value"][format!("w{i}")],
                json!(i),
                "writer {i}'s update was lost"
            );
        }
        assert_eq!(store.document_version(doc.id).await.unwrap(), 17);
    })
    .await;
}

#[tokio::test]
async fn schema_moves_drop_stale_fields_and_replace_drops_unsent_references() {
    on_both(async |db| {
        let store = db.open().await;
        let ty = custom_type(&store, "Thing", "thing").await;
        let schema_for = async |props: Value| {
            let fields = json!({"type": "object", "properties": props});
            custom_schema(&store, &ty, fields, "1").await.0
        };
        let v1 = schema_for(json!({"a": {"type": "string"}, "old": {"type": "string"}})).await;
        let v2 = schema_for(json!({"a": {"type": "string"}, "new": {"type": "string"}})).await;
        let doc = create(&store, &v1, "t", json!({"a": "1", "old": "stale"})).await;
        let body = move_to(&v2, json!({"a": "2", "new": "n"}));
        store
            .update_block_document(doc.id, body, None, Rights::ADMIN)
            .await
            .unwrap();
        let moved = store.read_block_document(doc.id, false).await.unwrap();
        assert_eq!(moved.block_schema_id, v2.id);
        assert_eq!(Value::Object(moved.data), json!({"a": "2", "new": "n"}));

        let other = custom_type(&store, "Other", "other").await;
        let (foreign, _) = custom_schema(&store, &other, json!({"type": "object"}), "1").await;
        let wrong = store
            .update_block_document(doc.id, move_to(&foreign, json!({})), None, Rights::ADMIN)
            .await;
        assert!(
            matches!(wrong, Err(StoreError::BadRequest(e)) if e.message.contains("same block type"))
        );

        // Replace (merge_existing_data = false) keeps only what it sends.
        let body = BlockDocumentUpdate {
            block_schema_id: None,
            data: Some(obj(json!({"a": "only"}))),
            merge_existing_data: false,
        };
        store
            .update_block_document(doc.id, body, None, Rights::ADMIN)
            .await
            .unwrap();
        assert_eq!(
            Value::Object(store.read_block_document(doc.id, false).await.unwrap().data),
            json!({"a": "only"})
        );
        // A merge without data changes nothing.
        let none = store
            .update_block_document(doc.id, BlockDocumentUpdate::default(), None, Rights::ADMIN)
            .await
            .unwrap();
        assert!(!none.changed);
    })
    .await;
}

#[tokio::test]
async fn history_rollback_and_retention() {
    on_both(async |db| {
        let store = db
            .open_with(StoreConfig {
                retention: Some(3),
                ..StoreConfig::default()
            })
            .await;
        let (_, schema) = register::<Secret>(&store).await;
        let doc = create(&store, &schema, "token", json!({"value": "v1"})).await;
        for n in 2..=5 {
            store
                .update_block_document(
                    doc.id,
                    update(json!({"value": format!("v{n}")})),
                    None,
                    Rights::ADMIN,
                )
                .await
                .unwrap();
        }
        let versions = store.list_versions(doc.id).await.unwrap();
        let numbers: Vec<i64> = versions.iter().map(|v| v.version).collect();
        assert_eq!(numbers, [5, 4, 3], "retention keeps the three newest");
        assert_eq!(
            store.read_version(doc.id, 3, true).await.unwrap()["value"],
            json!("v3")
        );
        assert_eq!(
            store.read_version(doc.id, 3, false).await.unwrap()["value"],
            json!("********")
        );
        assert!(matches!(
            store.read_version(doc.id, 1, true).await,
            Err(StoreError::NotFound(_))
        ));

        let rolled = store
            .rollback_block_document(doc.id, 3, Some(5), None)
            .await
            .unwrap();
        assert_eq!(rolled.version, 6);
        assert_eq!(
            store.read_block_document(doc.id, true).await.unwrap().data["value"],
            json!("v3")
        );
        let stale = store
            .rollback_block_document(doc.id, 4, Some(5), None)
            .await;
        assert!(matches!(
            stale,
            Err(StoreError::VersionConflict {
                expected: 5,
                actual: 6
            })
        ));
        let stale_delete = store.delete_block_document(doc.id, Some(1)).await;
        assert!(matches!(
            stale_delete,
            Err(StoreError::VersionConflict { .. })
        ));
    })
    .await;
}

/// A type `thing` whose schema has a secret `password` and two reference fields.
async fn thing_schema(
    store: &crate::store::Store,
    secret: bool,
) -> block_types::model::BlockSchema {
    let ty = match store.read_block_type_by_slug("thing").await {
        Ok(ty) => ty,
        Err(_) => custom_type(store, "Thing", "thing").await,
    };
    let secret_fields: Vec<&str> = if secret { vec!["password"] } else { vec![] };
    let fields = json!({"type": "object", "properties": {"password": {"type": "string"}, "a": {"type": "object"}, "b": {"type": "object"}}, "secret_fields": secret_fields});
    custom_schema(store, &ty, fields, &format!("secret-{secret}"))
        .await
        .0
}

#[tokio::test]
async fn a_move_to_a_schema_that_omits_a_secret_keeps_it_sealed_for_the_type() {
    on_both(async |db| {
        let store = db.open().await;
        let sealed = thing_schema(&store, true).await;
        let clear = thing_schema(&store, false).await;
        let doc = create(&store, &sealed, "t", json!({"password": CANARY})).await;
        // Secret fields are the type's: the echo is restored (the other schema of the type
        // keeps `password` secret), and the value stays sealed and masked.
        let body = move_to(&clear, json!({"password": "********"}));
        store
            .update_block_document(doc.id, body, None, Rights::ADMIN)
            .await
            .unwrap();
        let masked = store.read_block_document(doc.id, false).await.unwrap();
        assert_eq!(masked.block_schema_id, clear.id);
        assert_eq!(masked.data["password"], json!("********"));
        let full = store.read_block_document(doc.id, true).await.unwrap();
        assert_eq!(full.data["password"], json!(CANARY));

        // A merge that sends nothing keeps it too; a value sent explicitly is sealed as well.
        let body = move_to(&clear, json!({"a": {}}));
        store
            .update_block_document(doc.id, body, None, Rights::ADMIN)
            .await
            .unwrap();
        let body = move_to(&clear, json!({"password": "still-secret"}));
        store
            .update_block_document(doc.id, body, None, Rights::ADMIN)
            .await
            .unwrap();
        let read = store.read_block_document(doc.id, false).await.unwrap();
        assert_eq!(read.data["password"], json!("********"));
        let full = store.read_block_document(doc.id, true).await.unwrap();
        assert_eq!(full.data["password"], json!("still-secret"));
    })
    .await;
}

#[tokio::test]
async fn shared_children_resolve_once_and_oversized_trees_are_refused() {
    on_both(async |db| {
        let store = db.open().await;
        let schema = thing_schema(&store, true).await;
        // d0 ← d1 ← … each d(k) references d(k-1) twice: d(k) expands to 2^(k+1) - 1 documents.
        let mut previous = create(&store, &schema, "d0", json!({"password": CANARY})).await.id;
        for k in 1..=8 {
            let data = json!({"a": reference_value(previous), "b": reference_value(previous)});
            previous = create(&store, &schema, &format!("d{k}"), data).await.id;
        }
        let started = std::time::Instant::now();
        let read = store.read_block_document(previous, true).await.unwrap();
        let mut leaf = &read.data["a"];
        for step in 1..8 {
            leaf = &leaf[if step % 2 == 0 { "a" } else { "b" }];
        }
        assert_eq!(leaf["password"], json!(CANARY), "d8 → … → d0 along mixed fields");
        // A generous bound: the point is linear, not exponential, work (2^9 paths).
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // d9 would expand to 1,023 documents: refused, and nothing is stored.
        let body = BlockDocumentCreate {
            name: Some("d9".into()),
            data: obj(json!({"a": reference_value(previous), "b": reference_value(previous)})),
            block_schema_id: schema.id,
            block_type_id: schema.block_type_id,
            is_anonymous: false,
        };
        let refused = store.create_block_document(body).await;
        assert!(matches!(refused, Err(StoreError::Invalid(ref e)) if e[0].message.contains("more than 1000")), "{refused:?}");
        assert!(store.read_block_document_by_name("thing", "d9", false).await.is_err());
    })
    .await;
}

#[tokio::test]
async fn concurrent_parent_and_child_writes_and_deletes_do_not_deadlock() {
    on_both(async |db| {
        let store = Arc::new(db.open().await);
        let schema = thing_schema(&store, true).await;
        let child = create(&store, &schema, "child", json!({"password": "p"})).await.id;
        let parent = create(&store, &schema, "parent", json!({"a": reference_value(child)})).await.id;
        let mut tasks = Vec::new();
        for t in 0..6 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..15 {
                    let result = match (t + i) % 3 {
                        0 => store.update_block_document(parent, update(json!({"a": reference_value(child), "password": format!("{t}-{i}")})), None, Rights::ADMIN).await.map(|_| ()),
                        1 => store.update_block_document(child, update(json!({"password": format!("{t}-{i}")})), None, Rights::ADMIN).await.map(|_| ()),
                        _ => store.delete_block_document(child, None).await,
                    };
                    match result {
                        Ok(()) | Err(StoreError::InUse { .. }) => {}
                        Err(e) => panic!("task {t} step {i}: {e}"),
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(store.read_block_document(parent, true).await.unwrap().data["a"]["password"].as_str().map(|p| p.contains('-')), Some(true));
    })
    .await;
}

#[tokio::test]
async fn each_version_records_the_token_that_wrote_it() {
    on_both(async |db| {
        let store = db.open().await;
        let (_, schema) = register::<Secret>(&store).await;
        let alice = uuid::Uuid::new_v4();
        let bob = uuid::Uuid::new_v4();
        let doc = store
            .create_block_document_by(
                BlockDocumentCreate {
                    name: Some("token".into()),
                    data: obj(json!({"value": "v1"})),
                    block_schema_id: schema.id,
                    block_type_id: schema.block_type_id,
                    is_anonymous: false,
                },
                Some(alice),
            )
            .await
            .unwrap();
        store
            .update_block_document(
                doc.id,
                update(json!({"value": "v2"})),
                None,
                Rights::WRITE.by(bob),
            )
            .await
            .unwrap();
        // The server's own writes (and versions from before authors were recorded) have none.
        store
            .update_block_document(doc.id, update(json!({"value": "v3"})), None, Rights::ADMIN)
            .await
            .unwrap();
        store
            .rollback_block_document(doc.id, 1, Some(3), Some(bob))
            .await
            .unwrap();
        let authors: Vec<(i64, Option<uuid::Uuid>)> = store
            .list_versions(doc.id)
            .await
            .unwrap()
            .iter()
            .map(|v| (v.version, v.token_id))
            .collect();
        assert_eq!(
            authors,
            [(4, Some(bob)), (3, None), (2, Some(bob)), (1, Some(alice))]
        );
        // A rollback copies the data of the version it returns to, not its author.
        assert_eq!(
            store.read_version(doc.id, 4, true).await.unwrap()["value"],
            json!("v1")
        );
    })
    .await;
}

/// A duplicate is a new document equal to the current version: plain data, references,
/// schema, and secrets copied sealed on the server; the original is untouched.
#[tokio::test]
async fn a_duplicate_copies_data_references_and_sealed_secrets() {
    on_both(async |db| {
        let store = db.open().await;
        let (_, creds_schema) = register::<GcpCredentials>(&store).await;
        let (_, bucket_schema) = register::<GcsBucket>(&store).await;
        let creds = create(&store, &creds_schema, "zoom-gcp-creds", json!({"service_account_info": {"private_key": CANARY, "type": "service_account"}, "project": "dtc"})).await;
        let bucket = create(&store, &bucket_schema, "zoom-gcs", json!({"bucket": "dtc-lake", "bucket_folder": "raw", "gcp_credentials": reference_value(creds.id)})).await;
        let author = uuid::Uuid::new_v4();

        let copy = store
            .duplicate_block_document(creds.id, "zoom-gcp-creds-staging", Some(author))
            .await
            .unwrap();
        assert_ne!(copy.id, creds.id);
        assert_eq!(copy.name.as_deref(), Some("zoom-gcp-creds-staging"));
        assert_eq!(copy.block_schema_id, creds.block_schema_id);
        assert_eq!(copy.data["service_account_info"]["private_key"], json!("********"));
        let open = store.read_block_document(copy.id, true).await.unwrap();
        assert_eq!(open.data["service_account_info"]["private_key"], json!(CANARY));
        assert_eq!(open.data["project"], json!("dtc"));
        let versions = store.list_versions(copy.id).await.unwrap();
        assert_eq!(versions.len(), 1);
        assert_eq!(versions[0].token_id, Some(author));
        // The copy's secret is its own: replacing it leaves the original alone.
        store
            .update_block_document(
                copy.id,
                update(json!({"service_account_info": {"private_key": "other", "type": "service_account"}})),
                None,
                Rights::WRITE,
            )
            .await
            .unwrap();
        let original = store.read_block_document(creds.id, true).await.unwrap();
        assert_eq!(original.data["service_account_info"]["private_key"], json!(CANARY));

        // References are copied as references to the same documents.
        let bucket_copy = store
            .duplicate_block_document(bucket.id, "zoom-gcs-staging", None)
            .await
            .unwrap();
        let own = store.read_version(bucket_copy.id, 1, false).await.unwrap();
        assert_eq!(own["gcp_credentials"], reference_value(creds.id));
        assert_eq!(own["bucket_folder"], json!("raw"));

        // A taken name, a bad name and a missing document change nothing.
        let taken = store
            .duplicate_block_document(bucket.id, "zoom-gcs-staging", None)
            .await
            .unwrap_err();
        assert!(matches!(taken, StoreError::AlreadyExists(_)), "{taken:?}");
        let bad = store
            .duplicate_block_document(creds.id, "Not A Name", None)
            .await
            .unwrap_err();
        assert!(matches!(bad, StoreError::Invalid(_)), "{bad:?}");
        let missing = store
            .duplicate_block_document(uuid::Uuid::new_v4(), "nobody", None)
            .await
            .unwrap_err();
        assert!(matches!(missing, StoreError::NotFound(_)), "{missing:?}");
        assert!(!format!("{taken:?}{bad:?}{missing:?}").contains(CANARY));
        let all = store
            .count_block_documents(&Default::default())
            .await
            .unwrap();
        assert_eq!(all, 4);
    })
    .await;
}

#[tokio::test]
async fn an_import_writes_all_or_none_and_may_reference_its_own_documents() {
    on_both(async |db| {
        let store = db.open().await;
        let (creds_type, creds_schema) = register::<GcpCredentials>(&store).await;
        let (bucket_type, bucket_schema) = register::<GcsBucket>(&store).await;
        let body = |name: &str,
                    ty: &block_types::model::BlockType,
                    schema: &block_types::model::BlockSchema,
                    data: Value| BlockDocumentCreate {
            name: Some(name.to_owned()),
            data: obj(data),
            block_schema_id: schema.id,
            block_type_id: ty.id,
            is_anonymous: false,
        };
        let ids = store
            .import_block_documents(
                vec![body(
                    "creds-1",
                    &creds_type,
                    &creds_schema,
                    json!({"service_account_info": {"private_key": CANARY}}),
                )],
                None,
            )
            .await
            .unwrap();
        // The second body references the first of the same call; the third is invalid.
        let bad = vec![
            body(
                "creds-2",
                &creds_type,
                &creds_schema,
                json!({"service_account_info": {"private_key": CANARY}}),
            ),
            body(
                "bucket-2",
                &bucket_type,
                &bucket_schema,
                json!({"bucket": "b", "gcp_credentials": reference_value(ids[0])}),
            ),
            body(
                "bucket-3",
                &bucket_type,
                &creds_schema,
                json!({"bucket": "b"}),
            ),
        ];
        match store.import_block_documents(bad.clone(), None).await {
            Err(StoreError::Invalid(errors)) => {
                assert_eq!(errors[0].field, "documents[2].block_schema_id")
            }
            other => panic!("{other:?}"),
        }
        assert!(
            store
                .read_block_document_by_name("gcp-credentials", "creds-2", false)
                .await
                .is_err(),
            "none of a failed import is written"
        );
        let mut good = bad;
        good.pop();
        let written = store.import_block_documents(good, None).await.unwrap();
        let bucket = store.read_block_document(written[1], true).await.unwrap();
        assert_eq!(
            bucket.data["gcp_credentials"]["service_account_info"]["private_key"],
            json!(CANARY)
        );
        let too_many =
            vec![body("x", &creds_type, &creds_schema, json!({})); crate::store::MAX_IMPORT + 1];
        assert!(matches!(
            store.import_block_documents(too_many, None).await,
            Err(StoreError::Invalid(_))
        ));
    })
    .await;
}
