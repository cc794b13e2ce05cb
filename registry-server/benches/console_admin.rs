//! Admin console benchmark, in-process (the console's router, a signed-in admin session):
//!
//! 1. the audit page's server time over an audit log of 1,000,000 records (bulk-inserted
//!    with SQL): the first page, filtered pages, a deep cursor, and a full CSV download;
//! 2. key rotation over a store of 100,000 secret documents (written through the store):
//!    how long the progress endpoint the page polls takes to answer while the
//!    re-encryption runs, and how long the re-encryption takes.
//!
//! `cargo bench -p registry-server --bench console_admin`. Settings: `BENCH_AUDIT` records
//! (default 1000000), `BENCH_SECRETS` documents (default 100000), `BENCH_REQUESTS` per page
//! (default 50), `BENCH_BACKENDS` (`sqlite,postgres`), `BENCH_WHAT` (`audit,rotation`),
//! `BENCH_WRITERS` (see [`writers`]), `BLOCKS_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`; a scratch database is created and dropped).

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use block_types::Block;
use block_types::catalog::{Collection, Secret};
use block_types::model::BlockDocumentCreate;
use registry_server::http::AppState;
use registry_server::store::{Scope, TokenCreate};
use serde_json::{Value, json};

mod common;
use common::{Session, env_number, open, percentile, schema_of};

/// A signed-in admin and the form token its posts carry.
struct Admin {
    session: Session,
    csrf: String,
}

impl Admin {
    async fn new(state: &AppState) -> Self {
        let session = Session::sign_in(state, "bench admin").await;
        let (_, page) = session.get("/admin/settings").await;
        let page = String::from_utf8(page).unwrap();
        let at = page.find("name=\"_csrf\" value=\"").unwrap() + 20;
        let csrf = page[at..at + page[at..].find('"').unwrap()].to_owned();
        Self { session, csrf }
    }

    async fn get(&self, uri: &str) -> (StatusCode, Vec<u8>) {
        self.session.get(uri).await
    }

    async fn post(&self, uri: &str) -> StatusCode {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("_csrf", &self.csrf)
            .finish();
        self.session.post(uri, body).await
    }
}

/// Adds `n` audit records in one statement: four tokens, a mix of actions and outcomes
/// (one in fifty denied), targets naming documents, one record a minute back from now.
async fn bulk_audit(url: &str, backend: &str, n: usize, tokens: &[uuid::Uuid; 4]) {
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let now = chrono::Utc::now().timestamp_micros();
    let token = |i: &str| {
        format!(
            "case {i} % 4 when 0 then '{}' when 1 then '{}' when 2 then '{}' else '{}' end",
            tokens[0], tokens[1], tokens[2], tokens[3]
        )
    };
    let columns = |i: &str, pad: &str| {
        format!(
            "{now} - ({n} - {i}) * 60000000, 'req-' || {i}, {tok}, \
             case {i} % 10 when 0 then 'PATCH /api/block_documents/{{id}}' when 1 then 'DELETE /api/block_documents/{{id}}' \
               when 2 then 'POST /api/block_documents/' else 'GET /api/block_documents/{{id}}' end, \
             '/api/block_documents/00000000-0000-4000-8000-' || {pad}, \
             case when {i} % 50 = 0 then 'denied' else 'ok' end, \
             case when {i} % 50 = 0 then 403 else 200 end",
            tok = token(i)
        )
    };
    let sql = if backend == "SQLite" {
        format!(
            "with recursive seq(i) as (select 1 union all select i + 1 from seq where i < {n}) \
             insert into audit_event (at, request_id, token_id, action, target, outcome, status) \
             select {} from seq",
            columns("i", "printf('%012d', i % 5000)")
        )
    } else {
        format!(
            "insert into audit_event (at, request_id, token_id, action, target, outcome, status) \
             select {} from generate_series(1, {n}::bigint) as seq(i)",
            columns("i", "lpad((i % 5000)::text, 12, '0')")
        )
    };
    let started = Instant::now();
    let done = sqlx::query(&sql).execute(&pool).await.unwrap();
    assert_eq!(done.rows_affected() as usize, n);
    if backend == "PostgreSQL" {
        sqlx::query("vacuum analyze audit_event")
            .execute(&pool)
            .await
            .unwrap();
    } else {
        sqlx::query("analyze").execute(&pool).await.unwrap();
    }
    println!(
        "inserted {n} audit records on {backend} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    pool.close().await;
}

async fn audit_bench(backend: &str, url: &str, records: usize, requests: usize) {
    let store = open(url).await;
    let state = AppState::new(store.clone());
    let session = Admin::new(&state).await;
    let mut tokens = [uuid::Uuid::nil(); 4];
    for (i, slot) in tokens.iter_mut().enumerate() {
        *slot = store
            .create_token(TokenCreate {
                name: format!("bench token {i}"),
                scopes: [Scope::Read].into_iter().collect(),
                expires: None,
                ..Default::default()
            })
            .await
            .unwrap()
            .info
            .id;
    }
    bulk_audit(url, backend, records, &tokens).await;
    let day_ago = (chrono::Utc::now() - chrono::Duration::days(1))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let pages = [
        ("first page", "/admin/audit".to_owned()),
        ("token filter", format!("/admin/audit?token={}", tokens[2])),
        ("outcome=denied", "/admin/audit?outcome=denied".to_owned()),
        ("action=DELETE", "/admin/audit?action=DELETE".to_owned()),
        (
            "target (one document)",
            "/admin/audit?target=000000004321".to_owned(),
        ),
        ("since a day ago", format!("/admin/audit?since={day_ago}")),
        (
            "cursor half-way back",
            format!("/admin/audit?before={}", records / 2),
        ),
        (
            "token + denied, half-way",
            format!(
                "/admin/audit?token={}&outcome=denied&before={}",
                tokens[0],
                records / 2
            ),
        ),
    ];
    for (name, uri) in &pages {
        let (body, (p50, p99)) = session.session.timed(uri, requests).await;
        let rows = String::from_utf8_lossy(&body)
            .matches("<tr><th scope=\"row\">")
            .count();
        println!(
            "| {backend:<10} | {records:>9} | audit: {name:<26} | {rows:>4} | {p50:>8.2} | {p99:>8.2} |"
        );
    }
    for (name, uri) in [
        (
            "CSV, outcome=denied",
            "/admin/audit/download?format=csv&outcome=denied",
        ),
        ("CSV, every record", "/admin/audit/download?format=csv"),
    ] {
        let started = Instant::now();
        let (status, body) = session.get(uri).await;
        assert_eq!(status, StatusCode::OK);
        let lines = body.iter().filter(|b| **b == b'\n').count() - 1;
        println!(
            "| {backend:<10} | {records:>9} | download: {name:<23} | {lines} records, {:.1} MB in {:.2} s |",
            body.len() as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
    }
    store.close().await;
}

/// Concurrent imports seeding the rotation bench (`BENCH_WRITERS`, default 1; more only
/// help on PostgreSQL, where each has a connection of its own).
fn writers() -> usize {
    env_number("BENCH_WRITERS", 1).max(1)
}

async fn rotation_bench(backend: &str, url: &str, documents: usize) {
    let store = open(url).await;
    store.register_collection(Collection::Core).await.unwrap();
    let (ty, schema) = schema_of(&store, &Secret::spec()).await;
    let started = Instant::now();
    // Written through the store's import (validated and sealed as creates are), 5,000 a
    // transaction: one durable commit per create would take longer than the measurement.
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..writers() {
        let store = store.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let from = next.fetch_add(5_000, Ordering::Relaxed);
                if from >= documents {
                    break;
                }
                let bodies = (from..(from + 5_000).min(documents))
                    .map(|i| BlockDocumentCreate {
                        name: Some(format!("secret-{i:07}")),
                        data: json!({"value": format!("s3cret-{i}")})
                            .as_object()
                            .cloned()
                            .unwrap(),
                        block_schema_id: schema,
                        block_type_id: ty,
                        is_anonymous: false,
                    })
                    .collect();
                store.import_block_documents(bodies, None).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "wrote {documents} secret documents on {backend} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let state = AppState::new(store.clone());
    let session = Admin::new(&state).await;

    let mut idle = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let (status, _) = session.get("/admin/keys/progress.json").await;
        idle.push(started.elapsed());
        assert_eq!(status, StatusCode::OK);
    }
    idle.sort();

    let started = Instant::now();
    assert_eq!(
        session.post("/admin/keys/rotate").await,
        StatusCode::SEE_OTHER
    );
    let mut polls = Vec::new();
    let mut pages = Vec::new();
    let last: Value = loop {
        let t = Instant::now();
        let (status, body) = session.get("/admin/keys/progress.json").await;
        polls.push(t.elapsed());
        assert_eq!(status, StatusCode::OK);
        let p: Value = serde_json::from_slice(&body).unwrap();
        if p["done"] == json!(true) {
            break p;
        }
        if polls.len() % 10 == 0 {
            let t = Instant::now();
            let (status, _) = session.get("/admin/keys/progress").await;
            pages.push(t.elapsed());
            assert_eq!(status, StatusCode::OK);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = started.elapsed();
    assert_eq!(last["moved"], json!(documents));
    polls.sort();
    pages.sort();
    println!(
        "| {backend:<10} | {documents:>7} | progress.json idle (before rotating) | p50 {:>7.2} ms | p99 {:>7.2} ms |",
        percentile(&idle, 0.5),
        percentile(&idle, 0.99)
    );
    println!(
        "| {backend:<10} | {documents:>7} | progress.json during re-encryption ({} polls) | p50 {:>7.2} ms | p99 {:>7.2} ms |",
        polls.len(),
        percentile(&polls, 0.5),
        percentile(&polls, 0.99)
    );
    if !pages.is_empty() {
        println!(
            "| {backend:<10} | {documents:>7} | progress page during re-encryption ({} loads) | p50 {:>7.2} ms | p99 {:>7.2} ms |",
            pages.len(),
            percentile(&pages, 0.5),
            percentile(&pages, 0.99)
        );
    }
    println!(
        "| {backend:<10} | {documents:>7} | re-encryption of every version, rotate to done | {:.1} s ({:.0} versions/s) |",
        took.as_secs_f64(),
        documents as f64 / took.as_secs_f64()
    );
    store.close().await;
}

async fn on_postgres(run: impl AsyncFnOnce(&str)) {
    let Some(db) = tests::PostgresDb::create().await else {
        return;
    };
    run(db.url.as_str()).await;
    db.drop_database().await;
}

#[tokio::main]
async fn main() {
    sqlx::any::install_default_drivers();
    let records = env_number("BENCH_AUDIT", 1_000_000);
    let documents = env_number("BENCH_SECRETS", 100_000);
    let requests = env_number("BENCH_REQUESTS", 50);
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let what = std::env::var("BENCH_WHAT").unwrap_or_else(|_| "audit,rotation".into());
    println!(
        "| backend    | records   | page                               | rows | p50 (ms) | p99 (ms) |"
    );
    println!(
        "|------------|-----------|------------------------------------|------|----------|----------|"
    );
    if backends.contains("sqlite") {
        let dir = tempfile::tempdir().unwrap();
        if what.contains("audit") {
            let url = format!("sqlite://{}", dir.path().join("audit.db").display());
            audit_bench("SQLite", &url, records, requests).await;
        }
        if what.contains("rotation") {
            let url = format!("sqlite://{}", dir.path().join("keys.db").display());
            rotation_bench("SQLite", &url, documents).await;
        }
    }
    if backends.contains("postgres") {
        if what.contains("audit") {
            on_postgres(async |url| audit_bench("PostgreSQL", url, records, requests).await).await;
        }
        if what.contains("rotation") {
            on_postgres(async |url| rotation_bench("PostgreSQL", url, documents).await).await;
        }
    }
}
