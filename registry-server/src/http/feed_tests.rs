//! `GET /api/events/stream` over a real listener, on SQLite and PostgreSQL: what each
//! token is sent, filters, resumption with `Last-Event-ID`, the reset event, key events,
//! a revoked token's stream, bad input, and (PostgreSQL) delivery across replicas. A canary
//! secret never reaches a stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use block_types::catalog::{GcpCredentials, GcsBucket};
use block_types::model::{BlockDocumentCreate, BlockDocumentUpdate};
use block_types::references::reference_value;
use serde_json::{Value, json};
use uuid::Uuid;

use super::test_app::{Ctx, lenient, setup};
use crate::store::tests::harness::{TestDb, create, obj, on_both, register};
use crate::store::{Backend, Rights, Scope};

const CANARY: &str = "canary-feed-http-2d7c91e4";

async fn serve_app(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await.ok() });
    addr
}

/// One received server-sent event.
#[derive(Debug, Clone)]
struct Received {
    id: Option<String>,
    event: String,
    data: Value,
    text: String,
}

/// A subscriber reading a stream.
struct Stream {
    response: reqwest::Response,
    buffer: String,
    /// Whether the `ready` event (everything missed was sent) came.
    ready: bool,
}

impl Stream {
    async fn open(addr: SocketAddr, token: &str, query: &str, last: Option<&str>) -> Self {
        let mut request = reqwest::Client::new()
            .get(format!("http://{addr}/api/events/stream{query}"))
            .bearer_auth(token);
        if let Some(last) = last {
            request = request.header("last-event-id", last);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Self {
            response,
            buffer: String::new(),
            ready: false,
        }
    }

    /// The next event (comments and heartbeats skipped), or `None` after `wait`.
    async fn next_within(&mut self, wait: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if event == "ready" && !self.ready {
                    self.ready = true;
                    continue;
                }
                if !data.is_empty() {
                    return Some(Received {
                        id,
                        event,
                        data: serde_json::from_str(&data).unwrap(),
                        text: block,
                    });
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk()).await;
            match chunk {
                Ok(Ok(Some(bytes))) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(Ok(None)) | Ok(Err(_)) => return None,
                Err(_) => return None,
            }
        }
    }

    async fn next(&mut self) -> Received {
        self.next_within(Duration::from_secs(5))
            .await
            .expect("an event within 5 s")
    }

    /// Whether the stream ended (the server closed it) within `wait`.
    async fn ended_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None) | Err(_)) => return true,
                Err(_) => return false,
            }
        }
    }
}

fn key(project: &str) -> Value {
    json!({"service_account_info": {"private_key": CANARY}, "project": project})
}

fn bucket(name: &str, creds: Uuid) -> Value {
    json!({"bucket": name, "bucket_folder": "", "gcp_credentials": reference_value(creds)})
}

fn doc_event(r: &Received) -> (String, String) {
    (
        r.event.clone(),
        r.data["block_document_name"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
    )
}

#[tokio::test]
async fn each_token_is_sent_the_changes_it_may_read_and_nothing_of_their_values() {
    on_both(async |db| {
        let ctx: Ctx = setup(db, lenient()).await;
        let store = Arc::clone(&ctx.state.store);
        let (_, creds) = register::<GcpCredentials>(&store).await;
        let (_, buckets) = register::<GcsBucket>(&store).await;
        let addr = serve_app(ctx.app.clone()).await;
        let (limited, limited_id) = super::tests::limited(
            &store,
            &[Scope::Write],
            &["write:gcs-bucket/zoom-*", "read:gcp-credentials/zoom-creds"],
        )
        .await;
        let mut all = Stream::open(addr, &ctx.admin, "", None).await;
        let mut mine = Stream::open(addr, &limited, "", None).await;
        let mut filtered = Stream::open(
            addr,
            &ctx.admin,
            "?type=gcs-bucket&name=zoom-*&kind=block-document.updated",
            None,
        )
        .await;

        let zoom_creds = create(&store, &creds, "zoom-creds", key("zoom")).await;
        let zoom_gcs = create(&store, &buckets, "zoom-gcs", bucket("zoom", zoom_creds.id)).await;
        let other_creds = create(&store, &creds, "other-creds", key("other")).await;
        let other_gcs = create(
            &store,
            &buckets,
            "other-gcs",
            bucket("other", other_creds.id),
        )
        .await;
        // Anonymous credentials inside zoom-anon's tree, and inside other-anon's.
        let anonymous = |data: Value| BlockDocumentCreate {
            name: None,
            data: obj(data),
            block_schema_id: creds.id,
            block_type_id: creds.block_type_id,
            is_anonymous: true,
        };
        let zoom_child = store
            .create_block_document(anonymous(key("za")))
            .await
            .unwrap();
        let zoom_anon = create(&store, &buckets, "zoom-anon", bucket("za", zoom_child.id)).await;
        let other_child = store
            .create_block_document(anonymous(key("oa")))
            .await
            .unwrap();
        create(&store, &buckets, "other-anon", bucket("oa", other_child.id)).await;
        let update = |data: Value| BlockDocumentUpdate {
            data: Some(obj(data)),
            merge_existing_data: true,
            ..BlockDocumentUpdate::default()
        };
        for id in [other_child.id, zoom_child.id, other_gcs.id] {
            store
                .update_block_document(
                    id,
                    update(json!({"project": "rotated"})),
                    None,
                    Rights::ADMIN,
                )
                .await
                .unwrap();
        }
        store
            .update_block_document(
                zoom_gcs.id,
                update(json!({"bucket": "zoom2"})),
                None,
                Rights::ADMIN,
            )
            .await
            .unwrap();
        store.rotate_data_key().await.unwrap();
        // The limited token's own write: its id is in the event.
        let resp = reqwest::Client::new()
            .patch(format!("http://{addr}/api/block_documents/{}", zoom_gcs.id))
            .bearer_auth(&limited)
            .json(&json!({"data": {"bucket": "zoom3"}, "merge_existing_data": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);

        let mut seen = Vec::new();
        for _ in 0..13 {
            let r = all.next().await;
            assert!(
                !r.text.contains(CANARY) && !r.text.contains("********"),
                "{}",
                r.text
            );
            assert_eq!(r.id.as_deref(), Some(r.data["id"].to_string().as_str()));
            seen.push(r);
        }
        let kinds: Vec<&str> = seen.iter().map(|r| r.event.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "block-document.created",
                "block-document.created",
                "block-document.created",
                "block-document.created",
                "block-document.created",
                "block-document.created",
                "block-document.created",
                "block-document.created",
                "block-document.updated",
                "block-document.updated",
                "block-document.updated",
                "block-document.updated",
                "key.rotation-started",
            ]
        );
        let last = all.next().await;
        assert_eq!(
            doc_event(&last),
            ("block-document.updated".into(), "zoom-gcs".into())
        );
        assert_eq!(last.data["token_id"], json!(limited_id));
        assert_eq!(last.data["version"], json!(3));

        // The limited token: what its grants name, and the anonymous document inside
        // zoom-anon's tree; never the documents it cannot read, another tree's anonymous
        // document, nor the keys. (Whether the anonymous document's creation is sent
        // depends on whether zoom-anon referenced it yet when it was delivered: left out.)
        let mut limited_seen = Vec::new();
        while let Some(r) = mine.next_within(Duration::from_secs(2)).await {
            assert!(!r.text.contains(CANARY), "{}", r.text);
            let seen = (r.event.clone(), r.data["block_document_id"].clone());
            if seen != ("block-document.created".to_owned(), json!(zoom_child.id)) {
                limited_seen.push(seen);
            }
        }
        let created = "block-document.created".to_owned();
        let updated = "block-document.updated".to_owned();
        assert_eq!(
            limited_seen,
            [
                (created.clone(), json!(zoom_creds.id)),
                (created.clone(), json!(zoom_gcs.id)),
                (created, json!(zoom_anon.id)),
                (updated.clone(), json!(zoom_child.id)),
                (updated.clone(), json!(zoom_gcs.id)),
                (updated, json!(zoom_gcs.id)),
            ],
            "{limited_seen:#?}"
        );

        // Filters: zoom-* buckets' updates only.
        let f1 = filtered.next().await;
        let f2 = filtered.next().await;
        assert_eq!(
            doc_event(&f1),
            ("block-document.updated".into(), "zoom-gcs".into())
        );
        assert_eq!(
            doc_event(&f2),
            ("block-document.updated".into(), "zoom-gcs".into())
        );
        assert!(
            filtered
                .next_within(Duration::from_millis(500))
                .await
                .is_none()
        );
    })
    .await;
}

#[tokio::test]
async fn a_reconnect_gets_exactly_what_it_missed_or_a_reset() {
    on_both(async |db| {
        let ctx = setup(db, lenient()).await;
        let store = Arc::clone(&ctx.state.store);
        let (_, creds) = register::<GcpCredentials>(&store).await;
        let addr = serve_app(ctx.app.clone()).await;
        let mut first = Stream::open(addr, &ctx.admin, "", None).await;
        create(&store, &creds, "one", key("1")).await;
        let seen = first.next().await;
        let last_id = seen.id.clone().unwrap();
        drop(first);
        create(&store, &creds, "two", key("2")).await;
        create(&store, &creds, "three", key("3")).await;
        let mut again = Stream::open(addr, &ctx.admin, "", Some(&last_id)).await;
        assert_eq!(doc_event(&again.next().await).1, "two");
        assert!(!again.ready, "ready only once the missed events are sent");
        assert_eq!(doc_event(&again.next().await).1, "three");
        create(&store, &creds, "four", key("4")).await;
        assert_eq!(doc_event(&again.next().await).1, "four");
        assert!(again.ready, "ready after the missed events");
        assert!(
            again
                .next_within(Duration::from_millis(300))
                .await
                .is_none()
        );
        // The query parameter works as the header does.
        let mut by_query =
            Stream::open(addr, &ctx.admin, &format!("?last_event_id={last_id}"), None).await;
        assert_eq!(doc_event(&by_query.next().await).1, "two");

        // An id no longer kept (or never ours): a reset, then new events.
        let mut reset = Stream::open(addr, &ctx.admin, "", Some("987654321")).await;
        let r = reset.next().await;
        assert_eq!(r.event, "reset");
        assert_eq!(r.data["last_event_id"], json!(987_654_321));
        create(&store, &creds, "five", key("5")).await;
        assert_eq!(doc_event(&reset.next().await).1, "five");

        // Bad input: a 422 naming the field.
        let client = reqwest::Client::new();
        for (query, header, field) in [
            ("?kind=block-document.eaten", None, "kind"),
            ("?name=", None, "name"),
            ("", Some("-1"), "Last-Event-ID"),
            ("", Some("abc"), "Last-Event-ID"),
            ("?last_event_id=x", None, "last_event_id"),
            ("?colour=red", None, "colour"),
        ] {
            let mut request = client
                .get(format!("http://{addr}/api/events/stream{query}"))
                .bearer_auth(&ctx.admin);
            if let Some(header) = header {
                request = request.header("last-event-id", header);
            }
            let resp = request.send().await.unwrap();
            assert_eq!(resp.status(), 422, "{query} {header:?}");
            let body: Value = resp.json().await.unwrap();
            assert!(body.to_string().contains(field), "{query}: {body}");
        }
        let anonymous = client
            .get(format!("http://{addr}/api/events/stream"))
            .send()
            .await
            .unwrap();
        assert_eq!(anonymous.status(), 401);
    })
    .await;
}

#[tokio::test]
async fn a_revoked_tokens_stream_ends_and_streams_per_token_are_bounded() {
    on_both(async |db| {
        let ctx = setup(db, lenient()).await;
        let store = Arc::clone(&ctx.state.store);
        let addr = serve_app(ctx.app.clone()).await;
        let (reader, reader_id) = super::tests::limited(&store, &[Scope::Read], &[]).await;
        let mut stream = Stream::open(addr, &reader, "", None).await;
        let mut held = Vec::new();
        for _ in 1..super::feed::MAX_STREAMS_PER_TOKEN {
            held.push(Stream::open(addr, &reader, "", None).await);
        }
        let refused = reqwest::Client::new()
            .get(format!("http://{addr}/api/events/stream"))
            .bearer_auth(&reader)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 429);
        assert!(refused.headers().contains_key("retry-after"));
        drop(held);
        store.revoke_token(reader_id).await.unwrap();
        assert!(
            stream.ended_within(Duration::from_secs(15)).await,
            "a revoked token's stream went on"
        );
        // Slots are given back when streams end.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(ctx.state.feed.open_streams(), 0);
    })
    .await;
}

/// PostgreSQL: an event written through one replica reaches a subscriber of another.
#[tokio::test]
async fn an_event_written_on_one_replica_reaches_a_subscriber_of_another() {
    on_both(async |db: &TestDb| {
        if db.backend != Backend::Postgres {
            return;
        }
        let ctx = setup(db, lenient()).await;
        let other = Arc::new(db.open().await);
        let (_, creds) = register::<GcpCredentials>(&other).await;
        let addr = serve_app(ctx.app.clone()).await;
        let mut stream = Stream::open(addr, &ctx.admin, "?kind=block-document.created", None).await;
        let mut latencies = Vec::new();
        for i in 0..5 {
            let started = std::time::Instant::now();
            let doc = create(&other, &creds, &format!("replica-{i}"), key("r")).await;
            let r = stream
                .next_within(Duration::from_secs(1))
                .await
                .expect("within a second");
            latencies.push(started.elapsed());
            assert_eq!(r.data["block_document_id"], json!(doc.id));
        }
        eprintln!("cross-replica delivery: {latencies:?}");
    })
    .await;
}

/// PostgreSQL: while a long transaction holds committed events back, subscribers hear
/// `lagging` (a cache stops trusting itself), then the events and `ready` when it ends.
#[tokio::test]
async fn a_feed_held_back_by_a_long_transaction_says_it_lags() {
    on_both(async |db: &TestDb| {
        if db.backend != Backend::Postgres {
            return;
        }
        let ctx = setup(db, lenient()).await;
        let store = Arc::clone(&ctx.state.store);
        let (_, creds) = register::<GcpCredentials>(&store).await;
        let addr = serve_app(ctx.app.clone()).await;
        let mut stream = Stream::open(addr, &ctx.admin, "", None).await;
        // A write transaction that stays open (an import, another session's work).
        let mut long = sqlx::AnyConnection::connect(&db.url).await.unwrap();
        use sqlx::Connection as _;
        let mut tx = long.begin().await.unwrap();
        sqlx::query(
            "update server_metadata set value = value where key = 'audit_retention_days' or 1 = 1",
        )
        .execute(&mut *tx)
        .await
        .unwrap();
        let doc = create(&store, &creds, "behind", key("b")).await;
        let lag = stream
            .next_within(Duration::from_secs(5))
            .await
            .expect("a lagging event");
        assert_eq!(lag.event, "lagging", "{}", lag.text);
        tx.commit().await.unwrap();
        let event = stream.next().await;
        assert_eq!(event.data["block_document_id"], json!(doc.id));
        let ready = stream.next().await;
        assert_eq!(ready.event, "ready", "{}", ready.text);
    })
    .await;
}
