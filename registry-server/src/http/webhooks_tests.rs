//! Webhooks over the API against receivers the tests run on loopback, on SQLite and
//! PostgreSQL: signatures, a retry after a 500 delivered once, the delivery log, the test
//! send, the address rules, and (PostgreSQL) two replicas delivering each event once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use block_types::catalog::{GcpCredentials, Secret};
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::AppState;
use super::test_app::{Ctx, get, lenient, send, setup, token};
use super::webhooks::{reachable, signature};
use crate::store::tests::harness::{TestDb, create, on_both, register};
use crate::store::{Backend, Scope};

const CANARY: &str = "canary-webhook-6a0d3f11";

/// What a receiver got: headers and body of each request.
type Received = Arc<Mutex<Vec<(HeaderMap, String)>>>;

/// A receiver on loopback answering each request with the next status of `script` (the
/// last one after that).
async fn receiver(script: Vec<u16>) -> (String, Received) {
    let received: Received = Arc::default();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (log, count) = (received.clone(), calls.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let (log, count, script) = (log.clone(), count.clone(), script.clone());
            async move {
                log.lock().push((headers, body));
                let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                StatusCode::from_u16(script[n.min(script.len() - 1)]).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    (format!("http://{addr}/hook"), received)
}

async fn wait_for(received: &Received, n: usize, within: Duration) -> Vec<(HeaderMap, String)> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let now = received.lock().clone();
        if now.len() >= n || tokio::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn verify(secret: &str, headers: &HeaderMap, body: &str) {
    let header = headers["blocks-signature"].to_str().unwrap();
    let (t, v1) = header.split_once(',').unwrap();
    let t: i64 = t.strip_prefix("t=").unwrap().parse().unwrap();
    let v1 = v1.strip_prefix("v1=").unwrap();
    assert_eq!(v1, signature(secret, t, body), "the signature verifies");
    assert!((chrono::Utc::now().timestamp() - t).abs() < 300);
    assert_ne!(v1, signature("whsec_other", t, body));
}

async fn register_hook(ctx: &Ctx, url: &str, filter: Value) -> (String, String) {
    let resp = send(
        &ctx.app,
        "POST",
        "/api/webhooks",
        Some(&ctx.admin),
        Some(&json!({"url": url, "description": "etl alerts", "filter": filter})),
        &[],
    )
    .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text);
    let secret = resp.body["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    (resp.body["id"].as_str().unwrap().to_owned(), secret)
}

#[tokio::test]
async fn a_delivery_is_signed_retried_after_a_500_and_delivered_once() {
    on_both(async |db| {
        let ctx = setup(db, lenient()).await;
        let store = ctx.state.store.clone();
        let (_, creds) = register::<GcpCredentials>(&store).await;
        let (_, secret_type) = register::<Secret>(&store).await;
        let (url, received) = receiver(vec![500, 200]).await;
        let (id, secret) = register_hook(&ctx, &url, json!({"type": "gcp-*"})).await;
        let doc = create(
            &store,
            &creds,
            "zoom-creds",
            json!({"service_account_info": {"k": CANARY}}),
        )
        .await;
        create(
            &store,
            &secret_type,
            "not-for-this-hook",
            json!({"value": CANARY}),
        )
        .await;

        let got = wait_for(&received, 2, Duration::from_secs(15)).await;
        assert_eq!(got.len(), 2, "a 500 is retried");
        for (headers, body) in &got {
            verify(&secret, headers, body);
            assert!(!body.contains(CANARY));
            assert_eq!(headers["blocks-webhook-id"].to_str().unwrap(), id);
        }
        assert_eq!(got[0].1, got[1].1, "the same event again");
        assert_eq!(
            got[0].0["blocks-delivery-id"],
            got[1].0["blocks-delivery-id"]
        );
        let event: Value = serde_json::from_str(&got[0].1).unwrap();
        assert_eq!(event["kind"], "block-document.created");
        assert_eq!(event["block_document_id"], json!(doc.id));
        assert_eq!(
            got[0].0["blocks-event-id"].to_str().unwrap(),
            event["id"].to_string()
        );
        // Delivered once: nothing more comes.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(received.lock().len(), 2);

        let log = get(
            &ctx.app,
            &format!("/api/webhooks/{id}/deliveries"),
            &ctx.admin,
        )
        .await;
        assert_eq!(log.status, StatusCode::OK, "{}", log.text);
        let entries = log.body.as_array().unwrap();
        assert_eq!(entries.len(), 1, "{}", log.text);
        assert_eq!(entries[0]["state"], "delivered");
        assert_eq!(entries[0]["attempts"], 2);
        assert_eq!(entries[0]["last_status"], 200);
        assert_eq!(entries[0]["kind"], "block-document.created");

        // The list never shows the secret; the test send is signed and answered.
        let list = get(&ctx.app, "/api/webhooks", &ctx.admin).await;
        assert!(
            !list.text.contains(&secret) && !list.text.contains("secret"),
            "{}",
            list.text
        );
        assert_eq!(
            list.body[0]["filter"],
            json!({"type": "gcp-*", "name": null, "kinds": []})
        );
        let tested = send(
            &ctx.app,
            "POST",
            &format!("/api/webhooks/{id}/test"),
            Some(&ctx.admin),
            None,
            &[],
        )
        .await;
        assert_eq!(tested.status, StatusCode::OK, "{}", tested.text);
        assert_eq!(tested.body["delivered"], true);
        let got = wait_for(&received, 3, Duration::from_secs(5)).await;
        verify(&secret, &got[2].0, &got[2].1);
        assert!(got[2].1.contains("webhook.test"));

        // Deleted: nothing more is delivered.
        let deleted = send(
            &ctx.app,
            "DELETE",
            &format!("/api/webhooks/{id}"),
            Some(&ctx.admin),
            None,
            &[],
        )
        .await;
        assert_eq!(deleted.status, StatusCode::NO_CONTENT);
        create(
            &store,
            &creds,
            "after-delete",
            json!({"service_account_info": {"k": "v"}}),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(received.lock().len(), 3);
    })
    .await;
}

#[tokio::test]
async fn webhook_urls_are_checked_and_only_admins_register_them() {
    on_both(async |db| {
        let ctx = setup(db, lenient()).await;
        for (url, why) in [
            ("http://example.com/hook", "https"),
            ("ftp://example.com/hook", "https"),
            ("https://10.0.0.1/hook", "private"),
            ("https://192.168.1.20/hook", "private"),
            ("http://169.254.169.254/latest/meta-data", "https"),
            ("https://169.254.169.254/latest/meta-data", "private"),
            ("https://[fd00::1]/hook", "private"),
            ("https://[::ffff:10.1.2.3]/hook", "private"),
            ("https://user:pw@example.com/hook", "credentials"),
            ("not a url", "not a URL"),
        ] {
            let resp = send(&ctx.app, "POST", "/api/webhooks", Some(&ctx.admin), Some(&json!({"url": url})), &[]).await;
            assert_eq!(resp.status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {}", resp.text);
            assert!(resp.text.contains("url") && resp.text.contains(why), "{url}: {}", resp.text);
        }
        let bad_filter = send(&ctx.app, "POST", "/api/webhooks", Some(&ctx.admin),
            Some(&json!({"url": "https://hooks.example.com/x", "filter": {"kinds": ["block-document.eaten"]}})), &[]).await;
        assert_eq!(bad_filter.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad_filter.text);
        let (writer, _) = token(&ctx.state.store, &[Scope::Write]).await;
        let refused = send(&ctx.app, "POST", "/api/webhooks", Some(&writer), Some(&json!({"url": "https://hooks.example.com/x"})), &[]).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        let refused = get(&ctx.app, "/api/webhooks", &writer).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        // Allowed by the server: a private receiver.
        ctx.state.webhooks.allow_private(true);
        let ok = send(&ctx.app, "POST", "/api/webhooks", Some(&ctx.admin), Some(&json!({"url": "https://10.0.0.1/hook"})), &[]).await;
        assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.text);
        ctx.state.webhooks.allow_private(false);
        assert!(reachable("127.0.0.1".parse().unwrap()));
        assert!(reachable("8.8.8.8".parse().unwrap()));
        assert!(reachable("2001:4860::8888".parse().unwrap()));
        for ip in [
            "10.1.1.1", "172.16.0.1", "192.168.0.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
            "224.0.0.1", "192.0.0.192", "198.18.0.1", "fe80::1", "fc00::1", "fec0::1", "::",
            "::ffff:192.168.0.1", "::10.0.0.1", "64:ff9b::a9fe:a9fe", "2002:a00:1::1",
            "2001::1", "2001:db8::1",
        ] {
            assert!(!reachable(ip.parse().unwrap()), "{ip}");
        }
    })
    .await;
}

/// PostgreSQL: two replicas on one database deliver each event once between them.
#[tokio::test]
async fn two_replicas_deliver_each_event_once() {
    on_both(async |db: &TestDb| {
        if db.backend != Backend::Postgres {
            return;
        }
        let ctx = setup(db, lenient()).await;
        let other = AppState::new(Arc::new(db.open().await));
        let (_, creds) = register::<GcpCredentials>(&ctx.state.store).await;
        let (url, received) = receiver(vec![200]).await;
        register_hook(&ctx, &url, json!({"kinds": ["block-document.created"]})).await;
        for i in 0..30 {
            let store = if i % 2 == 0 {
                &ctx.state.store
            } else {
                &other.store
            };
            create(
                store,
                &creds,
                &format!("doc-{i}"),
                json!({"service_account_info": {"k": "v"}}),
            )
            .await;
        }
        let got = wait_for(&received, 30, Duration::from_secs(20)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let got_after = received.lock().clone();
        assert_eq!(got.len(), 30);
        assert_eq!(got_after.len(), 30, "an event was delivered twice");
        let mut ids: Vec<String> = got_after
            .iter()
            .map(|(h, _)| h["blocks-event-id"].to_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 30);
    })
    .await;
}

/// A receiver that never answers holds at most a few of the server's sends: another
/// webhook's deliveries go on at once.
#[tokio::test]
async fn a_dead_receiver_does_not_hold_back_another_webhook() {
    on_both(async |db| {
        let ctx = setup(db, lenient()).await;
        let store = ctx.state.store.clone();
        let (_, creds) = register::<GcpCredentials>(&store).await;
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_url = format!("http://{}/hook", dead.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = dead.accept().await {
                held.push(socket);
            }
        });
        register_hook(&ctx, &dead_url, json!({})).await;
        let (url, received) = receiver(vec![200]).await;
        register_hook(&ctx, &url, json!({"kinds": ["block-document.created"]})).await;
        for i in 0..20 {
            create(
                &store,
                &creds,
                &format!("doc-{i}"),
                json!({"service_account_info": {"k": "v"}}),
            )
            .await;
        }
        let got = wait_for(&received, 20, Duration::from_secs(8)).await;
        // Before a send ended, each batch of 16 waited 10 s for the dead receiver.
        assert_eq!(got.len(), 20, "the healthy webhook waited for the dead one");
    })
    .await;
}
