//! Store benchmark: nested reads and writes on SQLite and PostgreSQL, printed as a table.
//!
//! `cargo bench -p registry-server --bench store` (PostgreSQL from
//! `BLOCKS_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`; a
//! scratch database is created and dropped).

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use block_types::catalog::{GcpCredentials, GcsBucket};
use block_types::model::{BlockDocumentCreate, BlockDocumentUpdate};
use block_types::references::reference_value;
use block_types::{Block, BlockSpec};
use registry_server::store::{Rights, Store};
use serde_json::{Value, json};

mod common;

const READS: usize = 4_000;
const WRITES: usize = 1_000;
const CONCURRENCY: usize = 16;

fn obj(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

async fn register(store: &Store, spec: &BlockSpec) -> uuid::Uuid {
    common::schema_of(store, spec).await.1
}
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

struct Row {
    op: &'static str,
    n: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    queries: f64,
}

fn print(backend: &str, rows: &[Row]) {
    for r in rows {
        let mut l = r.latencies.clone();
        l.sort();
        println!(
            "| {backend:<8} | {:<34} | {:>6} | {:>9.0} | {:>8.0} | {:>8.0} | {:>6.1} |",
            r.op,
            r.n,
            r.n as f64 / r.elapsed.as_secs_f64(),
            percentile(&l, 0.5),
            percentile(&l, 0.99),
            r.queries
        );
    }
}

/// Runs `op` `n` times over `concurrency` tasks.
async fn measure<F, Fut>(
    store: &Arc<Store>,
    op_name: &'static str,
    n: usize,
    concurrency: usize,
    op: F,
) -> Row
where
    F: Fn(Arc<Store>, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let q0 = store.query_count();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let (store, op) = (store.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for i in (t..n).step_by(concurrency) {
                let s = Instant::now();
                op(store.clone(), i).await;
                lat.push(s.elapsed());
            }
            lat
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    Row {
        op: op_name,
        n,
        elapsed,
        latencies,
        queries: (store.query_count() - q0) as f64 / n as f64,
    }
}

async fn bench(url: &str, backend: &str) {
    let store = common::open(url).await;
    let creds = register(&store, &GcpCredentials::spec()).await;
    let bucket = register(&store, &GcsBucket::spec()).await;
    let creds_type = store
        .read_block_type_by_slug("gcp-credentials")
        .await
        .unwrap()
        .id;
    let bucket_type = store
        .read_block_type_by_slug("gcs-bucket")
        .await
        .unwrap()
        .id;
    let key = json!({"type": "service_account", "project_id": "dtc", "private_key_id": "abc", "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEv...\n-----END PRIVATE KEY-----\n", "client_email": "svc@dtc.iam.gserviceaccount.com"});
    let child = store
        .create_block_document(BlockDocumentCreate {
            name: Some("zoom-gcp-creds".into()),
            data: obj(json!({"service_account_info": key, "project": "dtc"})),
            block_schema_id: creds,
            block_type_id: creds_type,
            is_anonymous: false,
        })
        .await
        .unwrap();
    store
        .create_block_document(BlockDocumentCreate { name: Some("zoom-gcs".into()), data: obj(json!({"bucket": "dtc-data-lake", "bucket_folder": "", "gcp_credentials": reference_value(child.id)})), block_schema_id: bucket, block_type_id: bucket_type, is_anonymous: false })
        .await
        .unwrap();

    let mut rows = Vec::new();
    let read = |store: Arc<Store>, _i: usize| async move {
        let doc = store
            .read_block_document_by_name("gcs-bucket", "zoom-gcs", true)
            .await
            .unwrap();
        assert_eq!(doc.data["gcp_credentials"]["project"], "dtc");
    };
    rows.push(measure(&store, "nested read, secrets (1 task)", READS / 4, 1, read).await);
    rows.push(
        measure(
            &store,
            "nested read, secrets (16 tasks)",
            READS,
            CONCURRENCY,
            read,
        )
        .await,
    );
    let create = move |store: Arc<Store>, i: usize| async move {
        store
            .create_block_document(BlockDocumentCreate { name: Some(format!("creds-{i}")), data: obj(json!({"service_account_info": {"private_key": format!("k{i}")}, "project": "p"})), block_schema_id: creds, block_type_id: creds_type, is_anonymous: false })
            .await
            .unwrap();
    };
    rows.push(measure(&store, "create with secret (1 task)", WRITES / 4, 1, create).await);
    let create16 = move |store: Arc<Store>, i: usize| create(store, i + WRITES);
    rows.push(
        measure(
            &store,
            "create with secret (16 tasks)",
            WRITES,
            CONCURRENCY,
            create16,
        )
        .await,
    );
    let id = child.id;
    let update = move |store: Arc<Store>, i: usize| async move {
        let body = BlockDocumentUpdate {
            data: Some(obj(json!({"project": format!("p{i}")}))),
            ..Default::default()
        };
        store
            .update_block_document(id, body, None, Rights::ADMIN)
            .await
            .unwrap();
    };
    rows.push(measure(&store, "merge update (1 task)", WRITES / 4, 1, update).await);
    print(backend, &rows);
    store.close().await;
}

#[tokio::main]
async fn main() {
    println!(
        "| backend  | operation                          |      n |    ops/s | p50 µs   | p99 µs   | q/op   |"
    );
    println!(
        "|----------|------------------------------------|--------|----------|----------|----------|--------|"
    );
    let dir = tempfile::tempdir().unwrap();
    bench(
        &format!("sqlite://{}", dir.path().join("bench.db").display()),
        "sqlite",
    )
    .await;

    sqlx::any::install_default_drivers();
    if let Some(db) = tests::PostgresDb::create().await {
        bench(db.url.as_str(), "postgres").await;
        db.drop_database().await;
    }
}
