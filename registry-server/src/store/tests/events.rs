//! The change feed's table, on both databases.

use block_types::catalog::{GcpCredentials, GcsBucket};
use block_types::model::{BlockDocumentCreate, BlockDocumentUpdate};
use block_types::references::reference_value;
use block_types::{ChangeEvent, EventKind};
use serde_json::json;
use uuid::Uuid;

use super::harness::{
    create, create_body, custom_schema, custom_type, obj, on_both, register, schema_body, type_body,
};
use crate::store::{Backend, FeedEvent, Position, Resume, Rights, Store};

const CANARY: &str = "canary-feed-5b1f0e2a";

/// The events after `after` once at least `n` are readable: on PostgreSQL a transaction
/// still running elsewhere in the cluster may hold the feed back for a moment.
async fn settled(store: &Store, after: Position, n: usize) -> Vec<FeedEvent> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let events = store.events_after(after, 10_000).await.unwrap();
        if events.len() >= n || std::time::Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn all_events(store: &Store, n: usize) -> Vec<ChangeEvent> {
    settled(store, Position::START, n)
        .await
        .into_iter()
        .map(|e| e.event)
        .collect()
}

fn kinds(events: &[ChangeEvent]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind).collect()
}

#[tokio::test]
async fn every_change_is_one_event_naming_it_and_its_writer_never_a_value() {
    on_both(async |db| {
        let store = db.open().await;
        let writer = Uuid::new_v4();
        let ty = store
            .create_block_type_by(type_body("Thing", "thing"), Some(writer))
            .await
            .unwrap();
        let schema_for = async |props: serde_json::Value| {
            let fields = obj(json!({"type": "object", "properties": props,
                "secret_fields": ["password"]}));
            store
                .create_block_schema(schema_body(fields, ty.id, "1"), Rights::ADMIN.by(writer))
                .await
                .unwrap()
                .0
        };
        let props = json!({"a": {"type": "string"}, "password": {"type": "string", "format": "password", "writeOnly": true}});
        let v1 = schema_for(props.clone()).await;
        let mut props2 = props.clone();
        props2["b"] = json!({"type": "string"});
        let v2 = schema_for(props2).await;
        let doc = store
            .create_block_document_by(
                BlockDocumentCreate {
                    name: Some("zoom-thing".into()),
                    data: obj(json!({"a": "1", "password": CANARY})),
                    block_schema_id: v1.id,
                    block_type_id: ty.id,
                    is_anonymous: false,
                },
                Some(writer),
            )
            .await
            .unwrap();
        let rights = Rights::ADMIN.by(writer);
        let data = |a: &str| Some(obj(json!({"a": a, "password": CANARY})));
        store
            .update_block_document(
                doc.id,
                BlockDocumentUpdate {
                    data: data("2"),
                    ..BlockDocumentUpdate::default()
                },
                None,
                rights,
            )
            .await
            .unwrap();
        store
            .update_block_document(
                doc.id,
                BlockDocumentUpdate {
                    data: data("3"),
                    block_schema_id: Some(v2.id),
                    merge_existing_data: false,
                },
                None,
                rights,
            )
            .await
            .unwrap();
        store
            .rollback_block_document(doc.id, 1, None, Some(writer))
            .await
            .unwrap();
        store
            .delete_block_document_by(doc.id, None, Some(writer))
            .await
            .unwrap();
        let rotated = store.rotate_data_key_by(Some(writer)).await.unwrap();
        store.reencrypt_all(100).await.unwrap();

        let events = all_events(&store, 10).await;
        assert_eq!(
            kinds(&events),
            [
                EventKind::TypeCreated,
                EventKind::SchemaCreated,
                EventKind::SchemaCreated,
                EventKind::DocumentCreated,
                EventKind::DocumentUpdated,
                EventKind::DocumentSchemaChanged,
                EventKind::DocumentRolledBack,
                EventKind::DocumentDeleted,
                EventKind::KeyRotationStarted,
                EventKind::KeyRotationFinished,
            ]
        );
        let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        for event in &events[3..8] {
            assert_eq!(event.block_document_id, Some(doc.id));
            assert_eq!(event.block_type_slug.as_deref(), Some("thing"));
            assert_eq!(event.block_document_name.as_deref(), Some("zoom-thing"));
        }
        // The version after each change (the deleted one for a delete), and the schema.
        let versions: Vec<Option<i64>> = events[3..8].iter().map(|e| e.version).collect();
        assert_eq!(versions, [Some(1), Some(2), Some(3), Some(4), Some(4)]);
        assert_eq!(events[5].block_schema_id, Some(v2.id));
        assert_eq!(events[6].block_schema_id, Some(v1.id));
        assert_eq!(events[1].block_schema_id, Some(v1.id));
        assert_eq!(events[0].block_type_slug.as_deref(), Some("thing"));
        assert_eq!(events[8].key_id, Some(rotated));
        assert!(events[9].key_id.is_some_and(|k| k != rotated));
        // Written by the token, except the re-encryption's end (the server's own).
        assert!(events[..9].iter().all(|e| e.token_id == Some(writer)));
        assert_eq!(events[9].token_id, None);
        let text = serde_json::to_string(&events).unwrap();
        assert!(!text.contains(CANARY), "a value reached the feed");
        assert!(!text.contains("********"), "a mask reached the feed");
        assert!(!text.contains("\"a\""), "a field reached the feed");
    })
    .await;
}

#[tokio::test]
async fn a_failed_write_leaves_no_event_and_imports_write_one_each() {
    on_both(async |db| {
        let store = db.open().await;
        let (_, creds) = register::<GcpCredentials>(&store).await;
        let (_, bucket) = register::<GcsBucket>(&store).await;
        let end = store.feed_end().await.unwrap();
        let child = create(
            &store,
            &creds,
            "c",
            json!({"service_account_info": {"k": CANARY}}),
        )
        .await;
        let bucket_data = json!({"bucket": "x", "gcp_credentials": reference_value(child.id)});
        store.fail_at(Some("create_before_commit"));
        let failed = store
            .create_block_document(create_body(&bucket, "b", bucket_data.clone()))
            .await;
        assert!(failed.is_err());
        store.fail_at(Some("update_before_commit"));
        let failed = store
            .update_block_document(
                child.id,
                BlockDocumentUpdate {
                    data: Some(obj(json!({"service_account_info": {"k": "x"}}))),
                    ..BlockDocumentUpdate::default()
                },
                None,
                Rights::ADMIN,
            )
            .await;
        assert!(failed.is_err());
        store.fail_at(None);
        // A refused delete (still referenced) leaves none either.
        let parent = create(&store, &bucket, "b", bucket_data).await;
        assert!(store.delete_block_document(child.id, None).await.is_err());
        let after = settled(&store, end, 2).await;
        let named: Vec<(EventKind, Option<Uuid>)> = after
            .iter()
            .map(|e| (e.event.kind, e.event.block_document_id))
            .collect();
        assert_eq!(
            named,
            [
                (EventKind::DocumentCreated, Some(child.id)),
                (EventKind::DocumentCreated, Some(parent.id)),
            ]
        );
        let bodies = (0..3)
            .map(|i| BlockDocumentCreate {
                name: Some(format!("imported-{i}")),
                data: obj(json!({"service_account_info": {"k": CANARY}})),
                block_schema_id: creds.id,
                block_type_id: creds.block_type_id,
                is_anonymous: false,
            })
            .collect();
        let ids = store.import_block_documents(bodies, None).await.unwrap();
        let imported = settled(&store, after[1].position, 3).await;
        assert_eq!(
            imported
                .iter()
                .map(|e| e.event.block_document_id.unwrap())
                .collect::<Vec<_>>(),
            ids
        );
        // The anonymous child of a tree is part of the documents that reference it.
        let owners = store.named_referrers(child.id).await.unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(
            (owners[0].slug.as_str(), owners[0].name.as_str()),
            ("gcs-bucket", "b")
        );
    })
    .await;
}

#[tokio::test]
async fn resuming_finds_the_event_and_past_retention_is_a_reset() {
    on_both(async |db| {
        let store = db.open().await;
        let (_, creds) = register::<GcpCredentials>(&store).await;
        let first = create(
            &store,
            &creds,
            "first",
            json!({"service_account_info": {"k": "v"}}),
        )
        .await;
        let events = settled(&store, Position::START, 2).await;
        let created = events
            .iter()
            .find(|e| e.event.block_document_id == Some(first.id))
            .unwrap()
            .clone();
        let second = create(
            &store,
            &creds,
            "second",
            json!({"service_account_info": {"k": "v"}}),
        )
        .await;
        let Resume::After(at) = store.resume_after(created.event.id).await.unwrap() else {
            panic!("a kept event must resume");
        };
        let rest = settled(&store, at, 1).await;
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].event.block_document_id, Some(second.id));
        assert_eq!(store.feed_end().await.unwrap(), rest[0].position);

        // Age the first event past a one-hour retention: pruned, and resuming after it
        // is a reset at the end of the feed.
        sqlx::query("update block_event set occurred = occurred - 7200000000 where seq <= $1")
            .bind(created.event.id)
            .execute(&store.write)
            .await
            .unwrap();
        assert_eq!(store.event_retention_hours().await.unwrap(), Some(168));
        assert!(store.set_event_retention_hours(Some(0)).await.is_err());
        assert!(store.set_event_retention_hours(Some(10_000)).await.is_err());
        let pruned = store.set_event_retention_hours(Some(1)).await.unwrap();
        assert!(pruned >= 1, "{pruned}");
        assert_eq!(
            store.resume_after(created.event.id).await.unwrap(),
            Resume::Reset(rest[0].position)
        );
        assert_eq!(
            store.resume_after(i64::MAX).await.unwrap(),
            Resume::Reset(rest[0].position)
        );
        assert_eq!(
            store
                .events_after(Position::START, 100)
                .await
                .unwrap()
                .len(),
            1
        );
    })
    .await;
}

/// PostgreSQL: a transaction that took an earlier `seq` but commits later must not be
/// skipped by a reader that already read the later one.
#[tokio::test]
async fn a_slow_writer_holds_the_feed_back_instead_of_leaving_a_gap() {
    on_both(async |db| {
        if db.backend != Backend::Postgres {
            return;
        }
        let store = db.open().await;
        let (_, creds) = register::<GcpCredentials>(&store).await;
        let start = store.feed_end().await.unwrap();
        let mut slow = store.write.begin().await.unwrap();
        store
            .record_event(
                &mut slow,
                EventKind::TypeUpdated,
                crate::store::events::Subject {
                    slug: Some("gcp-credentials"),
                    ..Default::default()
                },
                None,
            )
            .await
            .unwrap();
        let fast = create(
            &store,
            &creds,
            "fast",
            json!({"service_account_info": {"k": "v"}}),
        )
        .await;
        assert!(
            store.events_after(start, 100).await.unwrap().is_empty(),
            "an event was readable while an older writer was still running"
        );
        slow.commit().await.unwrap();
        let events = settled(&store, start, 2).await;
        assert_eq!(
            kinds(&events.iter().map(|e| e.event.clone()).collect::<Vec<_>>()),
            [EventKind::TypeUpdated, EventKind::DocumentCreated]
        );
        assert_eq!(events[1].event.block_document_id, Some(fast.id));
        assert!(events[0].event.id < events[1].event.id);
    })
    .await;
}

#[tokio::test]
async fn webhook_secrets_survive_a_master_key_change_and_dispatch_queues_each_event_once() {
    use crate::crypto::MasterKey;
    use crate::store::{MasterKeySource, WebhookCreate};
    use secrecy::ExposeSecret as _;

    on_both(async |db| {
        let store = db.open().await;
        let (_, creds) = register::<GcpCredentials>(&store).await;
        // Before any webhook: nothing to dispatch, and no cursor.
        create(
            &store,
            &creds,
            "before",
            json!({"service_account_info": {"k": "v"}}),
        )
        .await;
        assert_eq!(store.dispatch_webhooks().await.unwrap(), 0);
        let (hook, secret) = store
            .create_webhook(
                WebhookCreate {
                    url: "https://hooks.example.com/blocks".into(),
                    description: "alerts".into(),
                    filter: crate::store::EventFilter {
                        type_slug: Some("gcp-*".into()),
                        ..Default::default()
                    },
                },
                None,
            )
            .await
            .unwrap();
        store
            .change_master_key(MasterKeySource::Key(MasterKey::generate().unwrap()))
            .await
            .unwrap();
        assert_eq!(
            store.webhook_secret(hook.id).await.unwrap().expose_secret(),
            secret.expose_secret()
        );
        // Dispatch starts at the end of the feed when the first webhook came: only later
        // events are queued, each once.
        create(
            &store,
            &creds,
            "after",
            json!({"service_account_info": {"k": CANARY}}),
        )
        .await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut queued = 0;
        while queued == 0 && std::time::Instant::now() < deadline {
            queued = store.dispatch_webhooks().await.unwrap();
        }
        assert_eq!(queued, 1);
        assert_eq!(store.dispatch_webhooks().await.unwrap(), 0);
        let claimed = store
            .claim_deliveries(10, chrono::Duration::seconds(60))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert!(!claimed[0].body.contains(CANARY));
        assert_eq!(claimed[0].attempt, 1);
        // Leased: not claimed again meanwhile.
        assert!(
            store
                .claim_deliveries(10, chrono::Duration::seconds(60))
                .await
                .unwrap()
                .is_empty()
        );
        store
            .finish_delivery(
                &claimed[0],
                crate::store::Attempt::Failed {
                    status: Some(503),
                    error: "the receiver answered 503".into(),
                },
            )
            .await
            .unwrap();
        let log = store.list_deliveries(hook.id, 10).await.unwrap();
        assert_eq!(log[0].state, "pending");
        assert_eq!(log[0].last_status, Some(503));
        assert!(log[0].next_attempt > chrono::Utc::now());
        assert_eq!(crate::store::backoff(1), chrono::Duration::seconds(2));
        assert_eq!(crate::store::backoff(3), chrono::Duration::seconds(8));
        assert_eq!(crate::store::backoff(40), chrono::Duration::hours(1));
        store.delete_webhook(hook.id).await.unwrap();
        assert!(store.list_deliveries(hook.id, 10).await.is_err());
    })
    .await;
}

#[tokio::test]
async fn a_late_outcome_of_an_expired_claim_is_not_recorded() {
    use crate::store::{Attempt, WebhookCreate};

    on_both(async |db| {
        let store = db.open().await;
        let (_, creds) = register::<GcpCredentials>(&store).await;
        let (hook, _) = store
            .create_webhook(
                WebhookCreate {
                    url: "https://hooks.example.com/blocks".into(),
                    ..Default::default()
                },
                None,
            )
            .await
            .unwrap();
        create(
            &store,
            &creds,
            "c",
            json!({"service_account_info": {"k": "v"}}),
        )
        .await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.dispatch_webhooks().await.unwrap() == 0 {
            assert!(std::time::Instant::now() < deadline);
        }
        let lease = chrono::Duration::seconds(60);
        let first = store.claim_deliveries(10, lease).await.unwrap();
        assert_eq!(first.len(), 1);
        // The first claimer stalls past its lease; another replica claims and delivers.
        sqlx::query("update webhook_delivery set lease_until = lease_until - 120000000")
            .execute(&store.write)
            .await
            .unwrap();
        let second = store.claim_deliveries(10, lease).await.unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].attempt, 2);
        store
            .finish_delivery(&second[0], Attempt::Delivered(200))
            .await
            .unwrap();
        store
            .finish_delivery(
                &first[0],
                Attempt::Failed {
                    status: Some(500),
                    error: "late".into(),
                },
            )
            .await
            .unwrap();
        let log = store.list_deliveries(hook.id, 10).await.unwrap();
        assert_eq!(
            log[0].state, "delivered",
            "the late failure did not undo the delivery"
        );
        assert_eq!(log[0].last_status, Some(200));
        assert!(store.claim_deliveries(10, lease).await.unwrap().is_empty());
    })
    .await;
}

/// An anonymous document belongs to the named documents that reference it directly or
/// through other anonymous documents, never to one further up past a named block (which a
/// grant must name on its own).
#[tokio::test]
async fn an_anonymous_documents_owners_stop_at_the_first_named_block() {
    on_both(async |db| {
        let store = db.open().await;
        let (_, creds) = register::<GcpCredentials>(&store).await;
        let (_, bucket) = register::<GcsBucket>(&store).await;
        let app_type = custom_type(&store, "App", "app").await;
        let fields = json!({"type": "object", "properties": {"bucket": {}}});
        let (app, _) = custom_schema(&store, &app_type, fields, "1").await;
        let anonymous = async |schema: &block_types::model::BlockSchema, data| {
            store
                .create_block_document(BlockDocumentCreate {
                    name: None,
                    data: obj(data),
                    block_schema_id: schema.id,
                    block_type_id: schema.block_type_id,
                    is_anonymous: true,
                })
                .await
                .unwrap()
        };
        let owners = async |id| -> Vec<(String, String)> {
            let owners = store.named_referrers(id).await.unwrap();
            owners.into_iter().map(|o| (o.slug, o.name)).collect()
        };
        let owner = |slug: &str, name: &str| vec![(slug.to_owned(), name.to_owned())];
        // anonymous credentials ← named bucket ← named app
        let a = anonymous(&creds, json!({"service_account_info": {"k": "v"}})).await;
        let data = json!({"bucket": "x", "gcp_credentials": reference_value(a.id)});
        let b = create(&store, &bucket, "prod-bucket", data).await;
        create(
            &store,
            &app,
            "zoom-app",
            json!({"bucket": reference_value(b.id)}),
        )
        .await;
        assert_eq!(owners(a.id).await, owner("gcs-bucket", "prod-bucket"));
        // anonymous credentials ← anonymous bucket ← named app
        let c = anonymous(&creds, json!({"service_account_info": {"k": "v"}})).await;
        let data = json!({"bucket": "y", "gcp_credentials": reference_value(c.id)});
        let d = anonymous(&bucket, data).await;
        create(
            &store,
            &app,
            "other-app",
            json!({"bucket": reference_value(d.id)}),
        )
        .await;
        assert_eq!(owners(c.id).await, owner("app", "other-app"));
    })
    .await;
}
