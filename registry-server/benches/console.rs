//! Console benchmark: server time to render the console's pages over a store of 100,000
//! blocks (SQLite and PostgreSQL), and the weight of each page (HTML, stylesheet, script;
//! raw and gzip), printed as tables. The first 2,000 blocks are written through the store
//! API; the rest are bulk copies of their rows (what the list reads), since writing 100,000
//! blocks one durable commit at a time takes longer than the measurement.
//!
//! `cargo bench -p registry-server --bench console`. Settings: `BENCH_DOCUMENTS` (default
//! 100000), `BENCH_REQUESTS` per page (default 200), `BLOCKS_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`; a scratch database is created and dropped).

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::sync::Arc;
use std::time::Instant;

use block_types::Block;
use block_types::catalog::{Collection, GcpCredentials, GcsBucket, Json, Secret, StringBlock};
use block_types::references::reference_value;
use registry_server::http::{AppState, app};
use registry_server::store::{Rights, Store};
use serde_json::{Value, json};
use tower::ServiceExt as _;

mod common;
use common::{Session, env_number, open, request, schema_of};

const CONCURRENCY: usize = 16;

/// Documents written through the store API (a realistic mix of plain values, secrets, and
/// buckets that reference credentials); the rest of a large store is copied from them in
/// bulk (see [`bulk_copy`]).
const THROUGH_THE_API: usize = 2_000;

/// Fills the store up to `n` blocks. Returns the id of one bucket.
async fn seed(store: &Arc<Store>, url: &str, backend: &str, n: usize) -> uuid::Uuid {
    let string = schema_of(store, &StringBlock::spec()).await;
    let json_ = schema_of(store, &Json::spec()).await;
    let secret = schema_of(store, &Secret::spec()).await;
    let creds = schema_of(store, &GcpCredentials::spec()).await;
    let bucket = schema_of(store, &GcsBucket::spec()).await;
    let create = |store: Arc<Store>, ids: (uuid::Uuid, uuid::Uuid), name: String, data: Value| async move {
        common::create(&store, ids, &name, data).await
    };
    let shared_creds = create(
        store.clone(),
        creds,
        "zoom-gcp-creds".into(),
        json!({"service_account_info": {"private_key": "k", "client_email": "e@x"}}),
    )
    .await;
    let first_bucket = create(
        store.clone(),
        bucket,
        "zoom-gcs".into(),
        json!({"bucket": "b", "gcp_credentials": reference_value(shared_creds)}),
    )
    .await;
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(2));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let store = store.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n.min(THROUGH_THE_API) {
                    break;
                }
                let name = format!("block-{i:07}");
                match i % 10 {
                    0 | 1 => {
                        create(store.clone(), bucket, name, json!({"bucket": format!("b{i}"), "gcp_credentials": reference_value(shared_creds)})).await
                    }
                    2..=6 => create(store.clone(), secret, name, json!({"value": format!("s{i}")})).await,
                    7 | 8 => create(store.clone(), string, name, json!({"value": format!("v{i}")})).await,
                    _ => create(store.clone(), json_, name, json!({"value": {"i": i}})).await,
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    if n > THROUGH_THE_API {
        bulk_copy(url, backend, THROUGH_THE_API, n).await;
    }
    println!(
        "seeded {n} blocks on {backend} in {:.1} s ({} through the store API)",
        started.elapsed().as_secs_f64(),
        n.min(THROUGH_THE_API)
    );
    first_bucket
}

/// Adds document rows `block-{from}` … `block-{to - 1}`, each a copy of the row of one of
/// the documents written through the API (same type, schema and version number), in one
/// statement. The console's list, search, filters and counts read only these rows; the
/// copies have no versions of their own, so the bench never opens one.
async fn bulk_copy(url: &str, backend: &str, from: usize, to: usize) {
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let count: i64 =
        sqlx::query_scalar("select count(*) from block_document where name like 'block-%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let templates = "(select d.*, row_number() over (order by d.name) - 1 as k from block_document d where d.name like 'block-%') t";
    let sql = if backend == "SQLite" {
        format!(
            "with recursive seq(i, h) as (select {from}, hex(randomblob(16)) union all select i + 1, hex(randomblob(16)) from seq where i < {last}) \
             insert into block_document (id, created, updated, name, is_anonymous, block_type_id, block_type_name, block_schema_id, version) \
             select lower(substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-' || substr(h, 13, 4) || '-' || substr(h, 17, 4) || '-' || substr(h, 21, 12)), \
             t.created, t.updated, printf('block-%07d', seq.i), 0, t.block_type_id, t.block_type_name, t.block_schema_id, t.version \
             from seq join {templates} on t.k = seq.i % {count}",
            last = to - 1
        )
    } else {
        format!(
            "insert into block_document (id, created, updated, name, is_anonymous, block_type_id, block_type_name, block_schema_id, version) \
             select gen_random_uuid()::text, t.created, t.updated, 'block-' || lpad(seq.i::text, 7, '0'), 0, t.block_type_id, t.block_type_name, t.block_schema_id, t.version \
             from generate_series({from}, {last}) as seq(i) join {templates} on t.k = seq.i % {count}",
            last = to - 1
        )
    };
    let done = sqlx::query(&sql).execute(&pool).await.unwrap();
    assert_eq!(done.rows_affected() as usize, to - from);
    if backend == "PostgreSQL" {
        sqlx::query("vacuum analyze block_document")
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
}

fn gzip(bytes: &[u8]) -> usize {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap().len()
}

async fn run(
    backend: &str,
    url: &str,
    store: Arc<Store>,
    documents: usize,
    requests: usize,
    weights: bool,
) {
    store.register_collection(Collection::Core).await.unwrap();
    let bucket = seed(&store, url, backend, documents).await;
    let state = AppState::new(store.clone());
    let session = Session::sign_in(&state, "bench").await;
    let pages = [
        ("blocks list, first page", "/blocks".to_owned()),
        ("name search", "/blocks?q=block-00999".to_owned()),
        ("type filter", "/blocks?type=secret".to_owned()),
        ("deep page (offset 49,950)", "/blocks?page=1000".to_owned()),
        ("block page (bucket + creds)", format!("/blocks/{bucket}")),
        ("catalog", "/catalog".to_owned()),
        (
            "create form (gcs-bucket)",
            "/blocks/new/gcs-bucket".to_owned(),
        ),
        ("dashboard", "/".to_owned()),
        ("history (bucket)", format!("/blocks/{bucket}/history")),
        (
            "compare (bucket, bucket)",
            format!("/blocks/{bucket}/compare?with={bucket}"),
        ),
    ];
    let measure = async |name: &str, uri: &str| {
        let (_, (p50, p99)) = session.timed(uri, requests).await;
        println!("| {backend:<10} | {documents:>7} | {name:<28} | {p50:>8.2} | {p99:>8.2} |");
    };
    for (name, uri) in &pages {
        measure(name, uri).await;
    }
    // A newer schema of `secret`: half the blocks are now on an older one, and the
    // dashboard lists (and counts, up to its cap) them.
    let secret_type = store.read_block_type_by_slug("secret").await.unwrap();
    let mut newer = Secret::spec().to_schema_create(secret_type.id);
    newer.fields.insert(
        "description".into(),
        json!("A newer shape of the secret block."),
    );
    newer.version = "9.9.9".into();
    store
        .create_block_schema(newer, Rights::ADMIN)
        .await
        .unwrap();
    measure("dashboard, 50 % outdated", "/").await;
    if weights {
        println!();
        println!("| page | HTML bytes | HTML gzip | + CSS | + JS | total gzip (HTML+CSS+JS) |");
        println!("|---|---|---|---|---|---|");
        let (_, css) = session.get("/assets/console.css").await;
        let (_, js) = session.get("/assets/console.js").await;
        let mut signed_out = session.get("/sign-in").await.1;
        if signed_out.is_empty() {
            // Signed in, the sign-in page redirects: weigh it from a fresh app.
            let response = app(state.clone())
                .oneshot(request("GET", "/sign-in", None, None))
                .await
                .unwrap();
            signed_out = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap()
                .to_vec();
        }
        let edit = format!("/blocks/{bucket}/edit");
        let mut rows: Vec<(&str, Vec<u8>)> = vec![("sign-in", signed_out)];
        for (name, uri) in [
            ("catalog", "/catalog"),
            ("blocks list", "/blocks"),
            ("block page", pages[4].1.as_str()),
            ("create gcs-bucket", "/blocks/new/gcs-bucket"),
            ("create gcp-credentials", "/blocks/new/gcp-credentials"),
            ("edit gcs-bucket", edit.as_str()),
        ] {
            rows.push((name, session.get(uri).await.1));
        }
        for (name, html) in rows {
            println!(
                "| {name} | {} | {} | {} | {} | {} |",
                html.len(),
                gzip(&html),
                css.len(),
                js.len(),
                gzip(&html) + gzip(&css) + gzip(&js)
            );
        }
        println!(
            "(CSS gzip {} bytes, JS gzip {} bytes)",
            gzip(&css),
            gzip(&js)
        );
    }
    store.close().await;
}

#[tokio::main]
async fn main() {
    sqlx::any::install_default_drivers();
    let documents = env_number("BENCH_DOCUMENTS", 100_000);
    let requests = env_number("BENCH_REQUESTS", 200);
    println!("| backend    | blocks  | page                         | p50 (ms) | p99 (ms) |");
    println!("|------------|---------|------------------------------|----------|----------|");
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    run("SQLite", &url, open(&url).await, documents, requests, true).await;

    let Some(db) = tests::PostgresDb::create().await else {
        return;
    };
    let url = db.url.to_string();
    let store = open(&url).await;
    run("PostgreSQL", &url, store, documents, requests, false).await;
    db.drop_database().await;
}
