//! The failed-authentication limiter, what the audit log records (canonical ids, the
//! documents a secret read showed, checked block-load events), its retention, and tokens
//! kept out of trace logs; on SQLite and PostgreSQL.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::http::{StatusCode, header};
use block_types::catalog::{GcpCredentials, GcsBucket};
use block_types::references::reference_value;
use chrono::Utc;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tracing_subscriber::layer::SubscriberExt as _;
use uuid::Uuid;

use super::auth::{MAX_TARGET_DOCUMENTS, secret_read_target, wire_log_cap};
use super::test_app::{Ctx, LogBuffer, all_audit, get, lenient, secret_doc, send, setup, token};
use super::tests::{hello_status, limited, post_document, send_expecting};
use super::{AppState, AuthGuard, app};
use crate::store::tests::harness::{create, on_both, register};
use crate::store::{AuditQuery, AuditRecord, NewAuditRecord, Scope, Store};

/// Records whose target contains `text`, through the store's own filter.
async fn audit_with_target(store: &Store, text: &str) -> Vec<AuditRecord> {
    store
        .list_audit(&AuditQuery {
            target: Some(text.to_owned()),
            limit: Some(1000),
            ..AuditQuery::default()
        })
        .await
        .unwrap()
}

/// Records of `action`, through the store's own filter.
async fn audit_with_action(store: &Store, action: &str) -> Vec<AuditRecord> {
    store
        .list_audit(&AuditQuery {
            action: Some(action.to_owned()),
            ..AuditQuery::default()
        })
        .await
        .unwrap()
}

// ---- (4) the limiter never refuses a valid token, and token-less requests do not count ----

#[tokio::test]
async fn a_limited_address_still_serves_valid_tokens_even_new_ones() {
    on_both(async |db| {
        let ctx = setup(db, AuthGuard::new(3, Duration::from_secs(60))).await;
        let store = &ctx.state.store;
        for _ in 0..3 {
            let resp = get(&ctx.app, "/api/hello", "blk_wrong").await;
            assert_eq!(resp.status, StatusCode::UNAUTHORIZED, "{}", resp.text);
        }
        let refused = get(&ctx.app, "/api/hello", "blk_wrong").await;
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.header(header::RETRY_AFTER).is_some());

        // A token created after the address was limited, never presented before (so not in
        // the token cache): its first request is answered.
        let (fresh, _) = token(store, &[Scope::Read]).await;
        assert!(store.authenticate_cached(&fresh).is_none(), "not cached");
        let resp = get(&ctx.app, "/api/hello", &fresh).await;
        assert_eq!(
            resp.status,
            StatusCode::OK,
            "a new valid token: {}",
            resp.text
        );
        assert_eq!(hello_status(&ctx.app, &ctx.admin).await, StatusCode::OK);
        // A valid token without the scope gets its 403, not a 429.
        let resp = get(&ctx.app, "/api/tokens", &fresh).await;
        assert_eq!(resp.status, StatusCode::FORBIDDEN, "{}", resp.text);

        // Guesses stay refused: the same bad token (from memory, no query) and new ones.
        let queries = store.query_count();
        for _ in 0..5 {
            let resp = get(&ctx.app, "/api/hello", "blk_wrong").await;
            assert_eq!(resp.status, StatusCode::TOO_MANY_REQUESTS);
        }
        assert_eq!(
            store.query_count(),
            queries,
            "a repeated bad token costs no query"
        );
        for i in 0..5 {
            let resp = get(&ctx.app, "/api/hello", &format!("blk_guess-{i}")).await;
            assert_eq!(resp.status, StatusCode::TOO_MANY_REQUESTS, "{}", resp.text);
        }
        // A revoked token is refused too.
        let (revoked, revoked_id) = token(store, &[Scope::Read]).await;
        store.revoke_token(revoked_id).await.unwrap();
        assert_eq!(
            hello_status(&ctx.app, &revoked).await,
            StatusCode::TOO_MANY_REQUESTS
        );

        let records = all_audit(store).await;
        let refusals = records.iter().filter(|r| r.status == 429).count();
        assert_eq!(
            refusals, 1,
            "only the window's first 429 is audited: {records:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn requests_without_a_token_never_count_as_failed_authentications() {
    on_both(async |db| {
        let ctx = setup(db, AuthGuard::new(3, Duration::from_secs(60))).await;
        let store = &ctx.state.store;
        for _ in 0..10 {
            // A browser's CORS preflight sends no credentials.
            let preflight = send(
                &ctx.app,
                "OPTIONS",
                "/api/block_documents/filter",
                None,
                None,
                &[
                    ("origin", "https://ui.example"),
                    ("access-control-request-method", "POST"),
                ],
            )
            .await;
            assert_eq!(
                preflight.status,
                StatusCode::UNAUTHORIZED,
                "{}",
                preflight.text
            );
            let anonymous = send(&ctx.app, "GET", "/api/hello", None, None, &[]).await;
            assert_eq!(
                anonymous.status,
                StatusCode::UNAUTHORIZED,
                "{}",
                anonymous.text
            );
        }
        // No limit was reached: a bad token is a plain 401, and a new token works.
        let bad = get(&ctx.app, "/api/hello", "blk_wrong").await;
        assert_eq!(bad.status, StatusCode::UNAUTHORIZED, "{}", bad.text);
        let (fresh, _) = token(store, &[Scope::Read]).await;
        assert_eq!(hello_status(&ctx.app, &fresh).await, StatusCode::OK);

        let records = all_audit(store).await;
        assert!(records.iter().all(|r| r.status != 429), "{records:?}");
        // Anonymous denials are audited, the first `max_failures` of a window only, so
        // they cannot flood the log either.
        let anonymous = records
            .iter()
            .filter(|r| r.status == 401 && r.token_id.is_none())
            .count();
        assert_eq!(
            anonymous,
            3 + 1,
            "three anonymous and the bad token: {records:?}"
        );
    })
    .await;
}

// ---- (9) what the audit log records ----

#[tokio::test]
async fn secret_reads_are_found_by_canonical_id_whatever_the_spelling_or_route() {
    on_both(async |db| {
        let ctx = setup(db, lenient()).await;
        let store = &ctx.state.store;
        let (secrets, secrets_id) = token(store, &[Scope::ReadSecrets]).await;
        let id = secret_doc(store, "spelled", "v1").await;
        let canonical = id.hyphenated().to_string();
        let upper = id.simple().to_string().to_uppercase();
        let braced = format!("%7B{}%7D", id.hyphenated().to_string().to_uppercase());

        for (n, spelling) in [&upper, &braced].into_iter().enumerate() {
            let uri = format!("/api/block_documents/{spelling}?include_secrets=true");
            let resp = get(&ctx.app, &uri, &secrets).await;
            assert_eq!(resp.status, StatusCode::OK, "{uri}: {}", resp.text);
            let found = audit_with_target(store, &canonical).await;
            assert_eq!(found.len(), n + 1, "{uri}: {found:?}");
            assert_eq!(
                found[0].target,
                format!("/api/block_documents/{canonical}?include_secrets=true")
            );
            assert_eq!(found[0].token_id, Some(secrets_id));
        }
        // Through the API too.
        let listed = get(
            &ctx.app,
            &format!("/api/audit?target={canonical}"),
            &ctx.admin,
        )
        .await;
        assert_eq!(
            listed.body["records"].as_array().unwrap().len(),
            2,
            "{}",
            listed.text
        );
        // A write by a non-canonical id is recorded canonically as well.
        send_expecting(
            &ctx.app,
            "PATCH",
            &format!("/api/block_documents/{upper}"),
            &ctx.admin,
            Some(&json!({"data": {"value": "v2"}})),
            StatusCode::NO_CONTENT,
        )
        .await;
        let writes = store
            .list_audit(&AuditQuery {
                action: Some("PATCH".into()),
                target: Some(canonical.clone()),
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(writes.len(), 1, "{writes:?}");
        // A name that merely looks like an id is not rewritten.
        let name = Uuid::new_v4().simple().to_string();
        let named = secret_doc(store, &name, "v").await;
        let by_name = format!("/api/block_types/slug/secret/block_documents/name/{name}");
        let resp = get(
            &ctx.app,
            &format!("{by_name}?include_secrets=true"),
            &secrets,
        )
        .await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
        let found = audit_with_target(store, &named.to_string()).await;
        assert_eq!(
            found.len(),
            1,
            "the by-name read names the document: {found:?}"
        );
        assert!(found[0].target.starts_with(&by_name), "{}", found[0].target);
    })
    .await;
}

#[tokio::test]
async fn filter_and_tree_reads_with_secrets_record_the_documents_they_showed() {
    on_both(async |db| {
        let ctx = setup(db, lenient()).await;
        let store = &ctx.state.store;
        let (secrets, secrets_id) = token(store, &[Scope::ReadSecrets]).await;
        let docs = [
            secret_doc(store, "filtered-a", "a").await,
            secret_doc(store, "filtered-b", "b").await,
            secret_doc(store, "filtered-c", "c").await,
        ];
        let (_, creds_schema) = register::<GcpCredentials>(store).await;
        let (_, bucket_schema) = register::<GcsBucket>(store).await;
        let child = create(
            store,
            &creds_schema,
            "tree-creds",
            json!({"service_account_info": {"private_key": "k"}, "project": "p"}),
        )
        .await;
        let parent = create(
            store,
            &bucket_schema,
            "tree-bucket",
            json!({
                "bucket": "b",
                "bucket_folder": "",
                "gcp_credentials": reference_value(child.id),
            }),
        )
        .await;

        let filter = "/api/block_documents/filter";
        let with_secrets = json!({"include_secrets": true});
        let resp = send_expecting(
            &ctx.app,
            "POST",
            filter,
            &secrets,
            Some(&with_secrets),
            StatusCode::OK,
        )
        .await;
        let shown = resp.body.as_array().unwrap().len();
        let records = store
            .list_audit(&AuditQuery {
                token_id: Some(secrets_id),
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(records.len(), 1, "one record per secret read: {records:?}");
        let target = &records[0].target;
        let head = format!("{filter}?include_secrets=true documents=");
        assert!(target.starts_with(&head), "{target}");
        for id in docs.iter().chain([&parent.id, &child.id]) {
            assert!(
                target.contains(&id.hyphenated().to_string()),
                "{id} in {target}"
            );
            assert_eq!(audit_with_target(store, &id.to_string()).await.len(), 1);
        }
        assert_eq!(
            target.matches(',').count() + 1,
            shown,
            "each document once: {target}"
        );

        // Reading the parent with its secrets shows the child's secrets too.
        let uri = format!("/api/block_documents/{}?include_secrets=true", parent.id);
        assert_eq!(get(&ctx.app, &uri, &secrets).await.status, StatusCode::OK);
        let of_child = audit_with_target(store, &child.id.to_string()).await;
        assert_eq!(of_child.len(), 2, "{of_child:?}");
        assert!(
            of_child[0].target.starts_with(&uri),
            "{}",
            of_child[0].target
        );

        // A masked filter read records nothing.
        send_expecting(
            &ctx.app,
            "POST",
            filter,
            &secrets,
            Some(&json!({})),
            StatusCode::OK,
        )
        .await;
        assert_eq!(
            audit_with_target(store, &child.id.to_string()).await.len(),
            2
        );
    })
    .await;
}

#[test]
fn a_secret_read_target_names_a_bounded_number_of_documents_and_counts_the_rest() {
    let ids: Vec<Uuid> = (0..MAX_TARGET_DOCUMENTS + 37)
        .map(|_| Uuid::new_v4())
        .collect();
    let target = secret_read_target("/api/block_documents/filter", &ids);
    assert!(target.ends_with(" (+37 more)"), "{target}");
    assert_eq!(target.matches(',').count() + 1, MAX_TARGET_DOCUMENTS);
    assert!(target.contains(&ids[MAX_TARGET_DOCUMENTS - 1].to_string()));
    assert!(!target.contains(&ids[MAX_TARGET_DOCUMENTS].to_string()));
    // Even after a very long path (the store keeps such a target whole: see
    // `a_secret_read_target_is_stored_whole` in the store's tests).
    let long = format!("/api/block_types/slug/{}/block_documents", "x".repeat(5000));
    let target = secret_read_target(&long, &ids);
    assert!(target.len() < 5000, "{}", target.len());
    assert!(target.ends_with(" (+37 more)"));
    // The one document the path names is not repeated.
    let one = ids[0];
    assert_eq!(
        secret_read_target(&format!("/api/block_documents/{one}"), &[one]),
        format!("/api/block_documents/{one}?include_secrets=true")
    );
}

/// Serves `ctx`'s app on a local port (with client addresses, as `blocks serve` does).
async fn serve(ctx: &Ctx) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = ctx
        .app
        .clone()
        .into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await.ok() });
    addr
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the events socket and authenticates as Prefect does (`<name>:<token>`).
async fn events_socket(addr: SocketAddr, token: &str) -> Socket {
    let mut request = format!("ws://{addr}/api/events/in")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "prefect".parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    handshake(&mut socket, token).await;
    socket
}

/// Sends the auth message and expects success. The server handles frames in order, so
/// once this is answered every event sent before it has been handled.
async fn handshake(socket: &mut Socket, token: &str) {
    let auth = json!({"type": "auth", "token": format!("prefect:{token}")});
    socket.send(Message::text(auth.to_string())).await.unwrap();
    let reply = socket.next().await.unwrap().unwrap();
    let reply: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(reply, json!({"type": "auth_success"}));
}

fn load_event(slug: &str, document: &str) -> Message {
    let event = json!({
        "event": format!("prefect.block.{slug}.loaded"),
        "resource": {"prefect.resource.id": format!("prefect.block-document.{document}")},
        "payload": {},
        "id": Uuid::new_v4(),
    });
    Message::text(event.to_string())
}

#[tokio::test]
async fn block_load_events_must_name_a_real_document_and_stay_within_a_budget() {
    on_both(async |db| {
        let guard = lenient().with_event_limit(4, Duration::from_secs(60));
        let ctx = setup(db, guard).await;
        let store = &ctx.state.store;
        let (read, read_id) = token(store, &[Scope::Read]).await;
        let real = secret_doc(store, "loaded", "v").await;
        let addr = serve(&ctx).await;
        let mut socket = events_socket(addr, &read).await;
        let upper = real.simple().to_string().to_uppercase();
        for message in [
            load_event("secret", &Uuid::new_v4().to_string()), // no such document
            load_event("json", &real.to_string()),             // not its type
            load_event("secret", &upper),                      // recorded, canonically
            load_event("secret", &real.to_string()),           // recorded
            load_event("secret", &real.to_string()),           // over the budget: audited once
            load_event("secret", &real.to_string()),           // dropped
            load_event("secret", &real.to_string()),           // dropped
        ] {
            socket.send(message).await.unwrap();
        }
        handshake(&mut socket, &read).await;

        let loads = audit_with_action(store, "block.loaded").await;
        let recorded: Vec<_> = loads.iter().filter(|r| r.status == 101).collect();
        assert_eq!(recorded.len(), 2, "{loads:?}");
        for r in &recorded {
            assert_eq!(
                r.target,
                format!("prefect.block.secret.loaded prefect.block-document.{real}")
            );
            assert_eq!(r.token_id, Some(read_id));
        }
        let excess: Vec<_> = loads.iter().filter(|r| r.status == 429).collect();
        assert_eq!(excess.len(), 1, "the excess is recorded once: {loads:?}");
        assert_eq!(excess[0].outcome, "denied");
        assert_eq!(ctx.state.block_load_events().len(), 2);

        // Another connection of the same token shares the budget.
        let mut again = events_socket(addr, &read).await;
        again
            .send(load_event("secret", &real.to_string()))
            .await
            .unwrap();
        handshake(&mut again, &read).await;
        assert_eq!(ctx.state.block_load_events().len(), 2);
        let loads = audit_with_target(store, "/api/events/in: over").await;
        assert_eq!(loads.len(), 1, "{loads:?}");
    })
    .await;
}

#[tokio::test]
async fn old_audit_records_are_pruned_at_start_and_when_the_retention_is_lowered() {
    on_both(async |db| {
        let store = Arc::new(db.open().await);
        let days_ago = |days: i64| NewAuditRecord {
            at: Utc::now() - chrono::Duration::days(days),
            request_id: format!("aged-{days}"),
            token_id: None,
            action: "GET /api/block_documents/{id}".into(),
            target: format!("/api/block_documents/{days}"),
            outcome: "ok",
            status: 200,
        };
        store
            .append_audit(&[days_ago(500), days_ago(100), days_ago(0)])
            .await
            .unwrap();
        // The writer's pruning task runs once at start: past the default 400 days goes.
        let state = AppState::with_guard(store.clone(), AuthGuard::default());
        let mut passes = state.audit.prune_passes();
        passes.wait_for(|n| *n >= 1).await.unwrap();
        let kept: Vec<String> = all_audit(&store)
            .await
            .into_iter()
            .map(|r| r.request_id)
            .collect();
        assert_eq!(kept, ["aged-0", "aged-100"]);
        assert_eq!(
            state
                .audit
                .stats()
                .pruned
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );

        let (admin, _) = token(&store, &[Scope::Admin]).await;
        let app = app(state.clone());
        let settings = get(&app, "/api/settings", &admin).await;
        assert_eq!(
            settings.body["audit_retention_days"],
            json!(400),
            "{}",
            settings.text
        );
        for bad in [json!(0), json!(36_501), json!("soon")] {
            let resp = send(
                &app,
                "PATCH",
                "/api/settings",
                Some(&admin),
                Some(&json!({"audit_retention_days": bad, "retention": 3})),
                &[],
            )
            .await;
            assert_eq!(
                resp.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{bad}: {}",
                resp.text
            );
            assert!(resp.text.contains("audit_retention_days"), "{}", resp.text);
        }
        let retention = store.retention().await.unwrap();
        assert_ne!(
            retention,
            Some(3),
            "a refused PATCH changes neither setting"
        );
        let thirty = json!({"audit_retention_days": 30});
        let resp = send_expecting(
            &app,
            "PATCH",
            "/api/settings",
            &admin,
            Some(&thirty),
            StatusCode::OK,
        )
        .await;
        assert_eq!(resp.body["audit_retention_days"], json!(30));
        let kept = all_audit(&store).await;
        assert!(kept.iter().all(|r| r.request_id != "aged-100"), "{kept:?}");
        assert!(kept.iter().any(|r| r.request_id == "aged-0"), "{kept:?}");
    })
    .await;
}

// ---- (12) no token in trace logs ----

/// tungstenite logs through the `log` crate: bridge it to tracing once for the whole test
/// binary, with a global subscriber that keeps nothing (each test captures on its own
/// thread). Called while a capturing subscriber is the thread's default, so the bridge
/// passes every level on.
fn bridge_log_records() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let quiet = tracing_subscriber::fmt()
            .with_max_level(tracing::level_filters::LevelFilter::OFF)
            .with_writer(std::io::sink)
            .finish();
        tracing_subscriber::util::SubscriberInitExt::try_init(quiet)
            .expect("the log bridge is installed once");
    });
}

/// What a `BLOCKS_LOG=trace` server logs while a client authenticates over the events
/// socket, with or without the wire cap.
async fn socket_auth_logs(
    db: &crate::store::tests::harness::TestDb,
    cap: bool,
) -> (String, String) {
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_ansi(false)
        .finish();
    let _guard = if cap {
        tracing::subscriber::set_default(subscriber.with(wire_log_cap()))
    } else {
        tracing::subscriber::set_default(subscriber)
    };
    bridge_log_records();
    let ctx = setup(db, AuthGuard::default()).await;
    let (read, _) = token(&ctx.state.store, &[Scope::Read]).await;
    let addr = serve(&ctx).await;
    let mut socket = events_socket(addr, &read).await;
    socket.close(None).await.ok();
    (logs.contents(), read)
}

#[tokio::test]
async fn the_events_socket_token_never_reaches_trace_logs() {
    on_both(async |db| {
        // Without the cap, tungstenite's trace output holds the auth message: the capture
        // sees what a `BLOCKS_LOG=trace` server would print.
        let (uncapped, token) = socket_auth_logs(db, false).await;
        assert!(
            uncapped.contains(&token),
            "the capture sees tungstenite's trace output"
        );

        let (logs, token) = socket_auth_logs(db, true).await;
        assert!(
            logs.contains("handshake"),
            "tungstenite's debug output still shows: {logs}"
        );
        let hex: String = token.bytes().map(|b| format!("{b:02x}")).collect();
        assert!(!logs.contains(&token), "the token reached the logs: {logs}");
        assert!(
            !logs.contains(&hex),
            "the token reached the logs in hex: {logs}"
        );
        assert!(
            !logs.contains(&token[4..]),
            "the token's random part reached the logs"
        );
    })
    .await;
}

#[tokio::test]
async fn a_read_record_is_committed_at_once_and_synced_soon_after() {
    on_both(async |db| {
        let store = Arc::new(db.open().await);
        let log = super::audit::AuditLog::start(store.clone());
        let record = NewAuditRecord {
            at: Utc::now(),
            request_id: "deferred-1".into(),
            token_id: None,
            action: "GET /api/block_documents/{id}".into(),
            target: "/api/block_documents/x?include_secrets=true".into(),
            outcome: "ok",
            status: 200,
        };
        log.record_read(record).await.unwrap();
        // Committed when the request would be answered: visible to any reader.
        let query = AuditQuery {
            request_id: Some("deferred-1".into()),
            ..AuditQuery::default()
        };
        assert_eq!(store.list_audit(&query).await.unwrap().len(), 1);
        // And synced by the syncer within its period.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while log.stats().syncs.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the read record was never synced"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn the_events_socket_drops_loads_of_blocks_outside_a_tokens_grants() {
    on_both(async |db| {
        let ctx = setup(db, lenient()).await;
        let store = &ctx.state.store;
        let granted = secret_doc(store, "zoom-key", "v").await;
        let hidden = secret_doc(store, "prod-key", "v").await;
        let (secret, _) = limited(store, &[Scope::Read], &["read:secret/zoom-*"]).await;
        let addr = serve(&ctx).await;
        let mut socket = events_socket(addr, &secret).await;
        for document in [hidden, granted] {
            socket
                .send(load_event("secret", &document.to_string()))
                .await
                .unwrap();
        }
        handshake(&mut socket, &secret).await;
        let loads = audit_with_action(store, "block.loaded").await;
        assert_eq!(loads.len(), 1, "{loads:?}");
        assert!(loads[0].target.ends_with(&granted.to_string()));
        assert_eq!(ctx.state.block_load_events().len(), 1);
    })
    .await;
}

// ---- a create's record commits with the create ----

#[tokio::test]
async fn a_creates_record_commits_with_it_once_and_a_failed_or_panicking_create_leaves_only_the_guards()
 {
    on_both(async |db| {
        let ctx = setup(db, lenient()).await;
        let store = &ctx.state.store;
        let (writer, writer_id) = token(store, &[Scope::Write]).await;
        let (_, schema) = register::<GcpCredentials>(store).await;
        let create = async |name: &str| {
            let body = json!({
                "name": name,
                "block_type_id": schema.block_type_id,
                "block_schema_id": schema.id,
                "data": {"project": "dtc-de"},
            });
            post_document(&ctx.app, &writer, &body).await
        };
        let of_request = async |resp: &super::test_app::Resp| -> Vec<AuditRecord> {
            let id = resp
                .header(header::HeaderName::from_static("x-request-id"))
                .unwrap();
            all_audit(store)
                .await
                .into_iter()
                .filter(|r| r.request_id == id)
                .collect()
        };
        let stats = ctx.state.audit.stats();
        let stored_before = stats.records.load(Relaxed);
        let groups_before = stats.groups.load(Relaxed);
        let resp = create("rec-1").await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text);
        let records = of_request(&resp).await;
        assert_eq!(records.len(), 1, "one record per create: {records:#?}");
        let record = &records[0];
        assert_eq!(
            (
                record.status,
                record.outcome.as_str(),
                record.token_id,
                record.action.as_str()
            ),
            (201, "ok", Some(writer_id), "POST /api/block_documents/")
        );
        assert_eq!(
            stats.records.load(Relaxed),
            stored_before + 1,
            "counted in /metrics like the writer's records"
        );
        assert_eq!(
            stats.groups.load(Relaxed),
            groups_before,
            "stored by the create's own transaction, not by the audit writer"
        );

        // Refused by the store: the guard records the answer, as for any failed write.
        let resp = create("rec-1").await;
        assert_eq!(resp.status, StatusCode::CONFLICT, "{}", resp.text);
        let records = of_request(&resp).await;
        assert_eq!(records.len(), 1, "{records:#?}");
        assert_eq!(
            (records[0].status, records[0].outcome.as_str()),
            (409, "failed")
        );

        // A create that fails before its commit leaves neither the block nor its record:
        // only the guard's record of the failure.
        store.fail_at(Some("create_before_commit"));
        let resp = create("rec-2").await;
        store.fail_at(None);
        assert!(
            resp.status.is_server_error(),
            "{} {}",
            resp.status,
            resp.text
        );
        let records = of_request(&resp).await;
        assert_eq!(records.len(), 1, "{records:#?}");
        assert_eq!(records[0].status, resp.status.as_u16());
        assert!(
            store
                .read_block_document_by_name("gcp-credentials", "rec-2", false)
                .await
                .is_err(),
            "the failed create left no block"
        );

        // A create whose handler panics is answered 500 and recorded so; it left no block.
        store.fail_at(Some("panic:create_before_commit"));
        let resp = create("rec-3").await;
        store.fail_at(None);
        assert_eq!(
            resp.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{}",
            resp.text
        );
        let records = of_request(&resp).await;
        assert_eq!(records.len(), 1, "{records:#?}");
        assert_eq!(
            (records[0].status, records[0].outcome.as_str()),
            (500, "error")
        );
        assert!(
            store
                .read_block_document_by_name("gcp-credentials", "rec-3", false)
                .await
                .is_err(),
            "the panicking create left no block"
        );
        // The store goes on serving writes.
        assert_eq!(create("rec-4").await.status, StatusCode::CREATED);
    })
    .await;
}
