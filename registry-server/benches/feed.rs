//! Change-feed benchmark, on SQLite and PostgreSQL, in one process (server and clients on
//! loopback): how soon an event reaches a server-sent-events subscriber (after the write's
//! answer; across two replicas on PostgreSQL), what subscribers cost creates, how fast
//! webhooks are delivered to a fast receiver, and what a receiver that never answers costs
//! creates and memory.
//!
//! `cargo bench -p registry-server --bench feed`. Settings: `BENCH_SECONDS` (default 5, per
//! create measurement), `BENCH_SUBSCRIBERS` (50), `BENCH_BACKENDS` (`sqlite,postgres`),
//! `BLOCKS_TEST_POSTGRES_URL`.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use block_types::catalog::GcpCredentials;
use block_types::{Block, BlockSpec};
use futures::StreamExt as _;
use registry_server::crypto::MasterKey;
use registry_server::http::{AppState, app};
use registry_server::store::{MasterKeySource, Rights, Scope, Store, StoreConfig, TokenCreate};
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};

struct Node {
    state: AppState,
    api: String,
}

async fn node(url: &str, key: &MasterKey) -> Node {
    let store = Arc::new(
        Store::open(
            url,
            MasterKeySource::Key(MasterKey::from_base64(key.to_base64().expose_secret()).unwrap()),
            StoreConfig::default(),
        )
        .await
        .unwrap(),
    );
    let state = AppState::new(store);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, router).await.ok() });
    Node {
        state,
        api: format!("http://{addr}/api"),
    }
}

async fn token(store: &Store, scopes: &[Scope]) -> String {
    store
        .create_token(TokenCreate {
            name: "bench".into(),
            scopes: scopes.iter().copied().collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .token
        .expose_secret()
        .to_owned()
}

async fn register(store: &Store, spec: &BlockSpec) -> (String, String) {
    let ty = store
        .ensure_block_type(&spec.block_type, false)
        .await
        .unwrap();
    let (schema, _) = store
        .create_block_schema(spec.to_schema_create(ty.id), Rights::ADMIN)
        .await
        .unwrap();
    (ty.id.to_string(), schema.id.to_string())
}

static NAMES: AtomicU64 = AtomicU64::new(0);

fn create_body(ids: &(String, String)) -> Value {
    let n = NAMES.fetch_add(1, Ordering::Relaxed);
    json!({"name": format!("doc-{n}"), "block_type_id": ids.0, "block_schema_id": ids.1,
        "data": {"service_account_info": {"private_key": "bench-secret"}, "project": "bench"}})
}

async fn create(http: &reqwest::Client, api: &str, token: &str, ids: &(String, String)) {
    let response = http
        .post(format!("{api}/block_documents/"))
        .bearer_auth(token)
        .json(&create_body(ids))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
}

/// Creates per second by 16 writers for `seconds`.
async fn creates_per_second(api: &str, token: &str, ids: &(String, String), seconds: u64) -> f64 {
    let done = Arc::new(AtomicUsize::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let writers: Vec<_> = (0..16)
        .map(|_| {
            let (api, token, ids, done) =
                (api.to_owned(), token.to_owned(), ids.clone(), done.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                while Instant::now() < until {
                    create(&http, &api, &token, &ids).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// A subscriber: counts events; sends each arrival time on `arrivals` when given.
async fn subscribe(
    api: &str,
    token: &str,
    arrivals: Option<tokio::sync::mpsc::UnboundedSender<Instant>>,
    count: Arc<AtomicUsize>,
) -> tokio::task::AbortHandle {
    let response = reqwest::Client::new()
        .get(format!("{api}/events/stream?kind=block-document.created"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let task = tokio::spawn(async move {
        let mut body = response.bytes_stream();
        let mut buffer = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                // Change events carry an id; `ready` and heartbeats do not.
                if block.starts_with("id:") || block.contains("\nid:") {
                    count.fetch_add(1, Ordering::Relaxed);
                    if let Some(tx) = &arrivals {
                        let _ = tx.send(Instant::now());
                    }
                }
            }
        }
    });
    task.abort_handle()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// From sending each create (through `from`) to its event's arrival at a subscriber of
/// `to`, and to the create's answer, for comparison: (event p50, p99, answer p50, p99) ms.
async fn delivery_latency(
    from: &Node,
    to: &Node,
    token: &str,
    ids: &(String, String),
) -> (f64, f64, f64, f64) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    subscribe(&to.api, token, Some(tx), Arc::default()).await;
    let http = reqwest::Client::new();
    let (mut events, mut answers) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        let sent = Instant::now();
        create(&http, &from.api, token, ids).await;
        answers.push(sent.elapsed().as_secs_f64() * 1e3);
        let arrived = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the event within 5 s")
            .unwrap();
        events.push(arrived.saturating_duration_since(sent).as_secs_f64() * 1e3);
    }
    events.sort_by(f64::total_cmp);
    answers.sort_by(f64::total_cmp);
    (
        percentile(&events, 0.5),
        percentile(&events, 0.99),
        percentile(&answers, 0.5),
        percentile(&answers, 0.99),
    )
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(f64::NAN)
        / 1024.0
}

/// A receiver answering 200 at once, counting requests.
async fn fast_receiver() -> (String, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::Relaxed);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.ok() });
    (format!("http://{addr}/hook"), count)
}

/// A receiver that accepts connections and never answers.
async fn dead_receiver() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    format!("http://{addr}/hook")
}

async fn add_webhook(node: &Node, admin: &str, url: &str) -> String {
    let response: Value = reqwest::Client::new()
        .post(format!("{}/webhooks", node.api))
        .bearer_auth(admin)
        .json(&json!({"url": url, "filter": {"kinds": ["block-document.created"]}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    response["id"].as_str().unwrap().to_owned()
}

async fn run(backend: &str, url: &str, replica_url: Option<&str>) {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let subscribers: usize = std::env::var("BENCH_SUBSCRIBERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let key = MasterKey::generate().unwrap();
    let a = node(url, &key).await;
    a.state
        .store
        .register_collection(block_types::catalog::Collection::Core)
        .await
        .unwrap();
    let ids = register(&a.state.store, &GcpCredentials::spec()).await;
    let writer = token(&a.state.store, &[Scope::Write]).await;
    let admin = token(&a.state.store, &[Scope::Admin]).await;
    let row = |what: &str, value: String| println!("| {backend:<10} | {what:<52} | {value:>16} |");

    let (p50, p99, a50, a99) = delivery_latency(&a, &a, &writer, &ids).await;
    row(
        "create sent -> its answer, p50 / p99 ms",
        format!("{a50:.2} / {a99:.2}"),
    );
    row(
        "create sent -> its event at a subscriber, p50 / p99 ms",
        format!("{p50:.2} / {p99:.2}"),
    );
    if let Some(replica_url) = replica_url {
        let b = node(replica_url, &key).await;
        let (p50, p99, _, _) = delivery_latency(&a, &b, &writer, &ids).await;
        row(
            "same, subscriber on another replica, p50 / p99 ms",
            format!("{p50:.2} / {p99:.2}"),
        );
    }

    let none = creates_per_second(&a.api, &writer, &ids, seconds).await;
    let again = creates_per_second(&a.api, &writer, &ids, seconds).await;
    let received = Arc::new(AtomicUsize::new(0));
    let mut streams = Vec::new();
    for _ in 0..subscribers {
        let reader = token(&a.state.store, &[Scope::Read]).await;
        streams.push(subscribe(&a.api, &reader, None, received.clone()).await);
    }
    let with = creates_per_second(&a.api, &writer, &ids, seconds).await;
    row(
        "creates/s, no subscriber (twice: the store grows)",
        format!("{none:.0} / {again:.0}"),
    );
    row(
        &format!("creates/s, {subscribers} subscribers"),
        format!("{with:.0}"),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    row(
        "events received by the subscribers",
        received.load(Ordering::Relaxed).to_string(),
    );
    for stream in streams {
        stream.abort();
    }

    // Webhooks: a fast receiver, then a dead one.
    let (fast, delivered) = fast_receiver().await;
    let hook = add_webhook(&a, &admin, &fast).await;
    let bodies: Vec<_> = (0..2000)
        .map(|_| serde_json::from_value(create_body(&ids)).unwrap())
        .collect();
    let started = Instant::now();
    a.state
        .store
        .import_block_documents(bodies, None)
        .await
        .unwrap();
    while delivered.load(Ordering::Relaxed) < 2000 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "deliveries stalled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    row(
        "webhook deliveries/s to a fast receiver (2,000 events)",
        format!("{:.0}", 2000.0 / started.elapsed().as_secs_f64()),
    );
    let _ = reqwest::Client::new()
        .delete(format!("{}/webhooks/{hook}", a.api))
        .bearer_auth(&admin)
        .send()
        .await;
    let before = rss_mib();
    let base = creates_per_second(&a.api, &writer, &ids, seconds).await;
    let dead = dead_receiver().await;
    add_webhook(&a, &admin, &dead).await;
    let slowed = creates_per_second(&a.api, &writer, &ids, seconds).await;
    let slowed_again = creates_per_second(&a.api, &writer, &ids, seconds).await;
    row("creates/s, no webhook", format!("{base:.0}"));
    row(
        "creates/s, a webhook that never answers",
        format!("{slowed:.0} / {slowed_again:.0}"),
    );
    row(
        "process RSS before / after the dead webhook, MiB",
        format!("{before:.1} / {:.1}", rss_mib()),
    );
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!(
        "| backend    | measure                                              |            value |"
    );
    println!(
        "|------------|------------------------------------------------------|------------------|"
    );
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    if backends.contains("sqlite") {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        run("sqlite", &url, None).await;
    }
    if backends.contains("postgres") {
        let Some(db) = tests::PostgresDb::create().await else {
            return;
        };
        run("postgres", db.url.as_str(), Some(db.url.as_str())).await;
        db.drop_database().await;
    }
}
