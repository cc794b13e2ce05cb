//! A million blocks: `blocks serve` (this build) on an empty store and on one holding
//! `BENCH_DOCUMENTS` documents (default 1,000,000), on SQLite and PostgreSQL, side by side.
//!
//! The store is built through the store's bulk path (`Store::import_block_documents`: the
//! documents validated and sealed as a create does, 5,000 a transaction) with a realistic
//! mix: 50 block types, 20 % of the documents referencing another (gcs-bucket →
//! gcp-credentials), 50 % holding secret values. Each state is measured on a freshly
//! started server: start to ready, resident memory idle and after the run, the course's
//! nested load with secrets (`wrk`, 16 connections, `BENCH_SECONDS`, default 10), the
//! console's list (first page, name search, type filter) and the API's name filter (p50/p99
//! of `BENCH_REQUESTS`, default 50, over HTTP with a signed-in session or the token). What
//! the build wrote is on disk before the built store is measured (the files synced,
//! PostgreSQL checkpointed), and the machine is left idle for `BENCH_SETTLE` seconds
//! (default 90) after a build before it measures again (see [`settle`]).
//!
//! `cargo bench -p registry-server --bench scale`. Settings: `BENCH_DOCUMENTS`,
//! `BENCH_BACKENDS` (`sqlite,postgres`), `BENCH_SECONDS`, `BENCH_REQUESTS`,
//! `BENCH_SETTLE`, `BLOCKS_TEST_POSTGRES_URL` (a scratch database is created and dropped), and
//! `BENCH_SERVER_LOG`: the server's log filter (its log goes to the bench's stderr).
//! `BENCH_ONLY_BUILD` builds a SQLite store and keeps it (with its master key and the admin
//! token printed) for a profiler, measuring nothing.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use block_types::catalog::Collection;
use block_types::model::{BlockDocumentCreate, BlockSchemaCreate, BlockTypeCreate};
use block_types::references::reference_value;
use registry_server::crypto::MasterKey;
use registry_server::store::{MasterKeySource, Rights, Store, StoreConfig};
use secrecy::ExposeSecret as _;
use serde_json::json;
use uuid::Uuid;

mod common;
use common::{Serve, create, env_number, percentile, wrk};

const BATCH: usize = 5_000;
const TYPES: usize = 50;

struct Server {
    process: Serve,
    base: String,
    ready_ms: f64,
}

impl Server {
    fn rss_mib(&self) -> f64 {
        self.process.rss_kib() as f64 / 1024.0
    }
}

fn start(home: &Path, url: &str, key: &Path) -> Server {
    let started = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_blocks"));
    cmd.args([
        "serve",
        "--port",
        "0",
        "--database-url",
        url,
        "--master-key-file",
    ])
    .arg(key)
    .env("BLOCKS_HOME", home)
    .env(
        "BLOCKS_LOG",
        std::env::var("BENCH_SERVER_LOG")
            .unwrap_or_else(|_| "warn,registry_server::serve=info".into()),
    );
    // The server's log (`BENCH_SERVER_LOG` sets its filter) goes to the bench's stderr.
    let (process, base) = Serve::start(cmd, true);
    eprintln!("server pid: {}", process.pid());
    Server {
        process,
        base,
        ready_ms: started.elapsed().as_secs_f64() * 1e3,
    }
}

/// A console session over HTTP: the cookie's value.
fn sign_in(base: &str, token: &str) -> String {
    let client = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client
        .post(format!("{base}/sign-in"))
        .header("sec-fetch-site", "same-origin")
        .form(&[("token", token)])
        .send()
        .unwrap();
    assert_eq!(response.status(), 303, "sign-in");
    let cookie = response.headers()["set-cookie"].to_str().unwrap();
    cookie.split(';').next().unwrap().to_owned()
}

/// p50 and p99 of `requests` GETs of a console page, in ms.
fn page(
    client: &reqwest::blocking::Client,
    base: &str,
    cookie: &str,
    uri: &str,
    requests: usize,
) -> (f64, f64) {
    timed(requests, || {
        let response = client
            .get(format!("{base}{uri}"))
            .header("cookie", cookie)
            .send()
            .unwrap();
        assert_eq!(response.status(), 200, "{uri}");
        response.bytes().unwrap();
    })
}

/// p50 and p99 of `requests` calls of `call` (after one untimed), in ms.
fn timed(requests: usize, call: impl Fn()) -> (f64, f64) {
    call();
    let mut times = Vec::with_capacity(requests);
    for _ in 0..requests {
        let started = Instant::now();
        call();
        times.push(started.elapsed());
    }
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

/// Waits `BENCH_SETTLE` seconds (default 90) after a build, before the next measure.
///
/// Synced is not settled: on this kind of virtual machine, a server started right after a
/// build that wrote a few gigabytes (with an fsync every few milliseconds) answered the
/// nested load with a p99 of 16–17 ms (three runs), and the same store, served again 75 s
/// later, 4.1 ms (and 3.6 ms after that); a 2 GB `dd` with `conv=fsync` before a measure of
/// any store raises its p99 the same way, less. The store does nothing different in that
/// minute: what settles is below it (the host's writeback of the guest's disk). The wait is
/// printed with the figures, so a run can be read for what it is.
fn settle(backend: &str) {
    let seconds = env_number("BENCH_SETTLE", 90);
    SETTLED.store(true, std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(seconds as u64));
    println!(
        "| {backend:<8} | {:<12} | {:<40} | {seconds:>22} |",
        "settle", "idle after a build, before measuring (s)"
    );
}

/// Whether a build ran in this process: the measure after it (the next backend's empty
/// store too) waits for the machine to settle.
static SETTLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// One state of the store, measured on a fresh server.
fn measure(backend: &str, state: &str, home: &Path, url: &str, key: &Path, token: &str) {
    let requests = env_number("BENCH_REQUESTS", 50);
    let server = start(home, url, key);
    let idle = server.rss_mib();
    let nested = wrk(
        &format!(
            "{}/api/block_types/slug/gcs-bucket/block_documents/name/zoom-gcs?include_secrets=true",
            server.base
        ),
        Some(token),
        None,
    );
    let cookie = sign_in(&server.base, token);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let first = page(&client, &server.base, &cookie, "/blocks", requests);
    let search = page(
        &client,
        &server.base,
        &cookie,
        "/blocks?q=doc-0099",
        requests,
    );
    let by_type = page(
        &client,
        &server.base,
        &cookie,
        "/blocks?type=gcs-bucket",
        requests,
    );
    let api_search = timed(requests, || {
        let response = client
            .post(format!("{}/api/block_documents/filter", server.base))
            .bearer_auth(token)
            .json(&json!({"block_documents": {"name": {"like_": "doc-0099"}}, "limit": 10}))
            .send()
            .unwrap();
        assert_eq!(response.status(), 200, "API name filter");
        response.bytes().unwrap();
    });
    let after = server.rss_mib();
    let row = |what: &str, value: String| {
        println!("| {backend:<8} | {state:<12} | {what:<40} | {value:>22} |")
    };
    row("start to ready (ms)", format!("{:.0}", server.ready_ms));
    row(
        "nested load, secrets: req/s, p50, p99",
        format!(
            "{:.0} / {:.2} / {:.2}",
            nested.rps, nested.p50_ms, nested.p99_ms
        ),
    );
    row("nested load non-2xx", nested.errors.to_string());
    row(
        "console list, first page: p50 / p99 ms",
        format!("{:.1} / {:.1}", first.0, first.1),
    );
    row(
        "console name search: p50 / p99 ms",
        format!("{:.1} / {:.1}", search.0, search.1),
    );
    row(
        "console type filter: p50 / p99 ms",
        format!("{:.1} / {:.1}", by_type.0, by_type.1),
    );
    row(
        "API name filter (10 of them): p50 / p99 ms",
        format!("{:.1} / {:.1}", api_search.0, api_search.1),
    );
    row(
        "RSS idle / after the run (MiB)",
        format!("{idle:.1} / {after:.1}"),
    );
}

async fn open(url: &str, key: &MasterKey) -> Arc<Store> {
    let key = MasterKey::from_base64(key.to_base64().expose_secret()).unwrap();
    Arc::new(
        Store::open(url, MasterKeySource::Key(key), StoreConfig::default())
            .await
            .unwrap(),
    )
}

/// The course's pair, the admin token, and the 50 types; returns the token.
async fn prepare(store: &Store) -> String {
    store.register_collection(Collection::Core).await.unwrap();
    store.register_collection(Collection::Gcp).await.unwrap();
    let creds = schema_of(store, "gcp-credentials").await;
    let bucket = schema_of(store, "gcs-bucket").await;
    let key = create(
        store,
        creds,
        "zoom-gcp-creds",
        json!({"service_account_info": {"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg...\n-----END PRIVATE KEY-----\n", "client_email": "svc@dtc-de.iam.gserviceaccount.com"}, "project": "dtc-de"}),
    )
    .await;
    create(
        store,
        bucket,
        "zoom-gcs",
        json!({"bucket": "dtc-data-lake", "bucket_folder": "", "gcp_credentials": reference_value(key)}),
    )
    .await;
    let token = store
        .create_token(registry_server::store::TokenCreate {
            name: "bench".into(),
            scopes: [registry_server::store::Scope::Admin].into_iter().collect(),
            expires: None,
            ..Default::default()
        })
        .await
        .unwrap();
    token.token.expose_secret().to_owned()
}

async fn schema_of(store: &Store, slug: &str) -> (Uuid, Uuid) {
    let ty = store.read_block_type_by_slug(slug).await.unwrap();
    let body =
        serde_json::from_value(json!({"block_schemas": {"block_type_id": {"any_": [ty.id]}}}))
            .unwrap();
    let schemas = store.filter_block_schemas(&body).await.unwrap();
    (ty.id, schemas[0].id)
}

/// Types of the bench's own beside the built-ins, up to [`TYPES`]: each with a host, a
/// port and a `token` kept secret.
async fn bench_types(store: &Store, have: usize) -> Vec<(Uuid, Uuid)> {
    let mut out = Vec::new();
    for n in have..TYPES {
        let ty = store
            .create_block_type(BlockTypeCreate {
                name: format!("Bench Type {n}"),
                slug: format!("bench-type-{n}"),
                logo_url: None,
                documentation_url: None,
                description: Some(format!("A service the pipelines of team {n} use.")),
                code_example: None,
            })
            .await
            .unwrap();
        let fields = json!({"title": format!("BenchType{n}"), "type": "object", "properties": {
            "host": {"title": "Host", "type": "string"},
            "port": {"title": "Port", "type": "integer"},
            "token": {"title": "Token", "type": "string", "format": "password", "writeOnly": true}},
            "required": ["host"], "secret_fields": ["token"], "block_type_slug": format!("bench-type-{n}")});
        let (schema, _) = store
            .create_block_schema(
                BlockSchemaCreate {
                    fields: fields.as_object().cloned().unwrap(),
                    block_type_id: ty.id,
                    capabilities: vec![],
                    version: "1".into(),
                },
                Rights::ADMIN,
            )
            .await
            .unwrap();
        out.push((ty.id, schema.id));
    }
    out
}

/// Fills the store to `documents`: per ten, three gcp-credentials (secret), two
/// gcs-buckets referencing a credential, two bench documents with a token (secret), three
/// without.
async fn build(store: Arc<Store>, documents: usize, writers: usize) -> f64 {
    let creds = schema_of(&store, "gcp-credentials").await;
    let bucket = schema_of(&store, "gcs-bucket").await;
    let builtin = 8; // Core (6) and Gcp (2)
    let types = Arc::new(bench_types(&store, builtin).await);
    let started = Instant::now();
    // The credentials the buckets reference: the first batch's.
    let targets: Vec<BlockDocumentCreate> = (0..1000)
        .map(|i| BlockDocumentCreate {
            name: Some(format!("target-{i:04}")),
            data:
                json!({"service_account_info": {"private_key": format!("pk-{i}")}, "project": "p"})
                    .as_object()
                    .cloned()
                    .unwrap(),
            block_schema_id: creds.1,
            block_type_id: creds.0,
            is_anonymous: false,
        })
        .collect();
    let targets = Arc::new(store.import_block_documents(targets, None).await.unwrap());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(1000));
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (store, next, types, targets) =
            (store.clone(), next.clone(), types.clone(), targets.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let from = next.fetch_add(BATCH, std::sync::atomic::Ordering::Relaxed);
                if from >= documents {
                    break;
                }
                let bodies = (from..(from + BATCH).min(documents))
                    .map(|i| {
                        let ((ty, schema), data) = match i % 10 {
                            0..=2 => (creds, json!({"service_account_info": {"private_key": format!("pk-{i}"), "client_email": format!("svc-{i}@x.iam")}, "project": "p"})),
                            3 | 4 => (bucket, json!({"bucket": format!("lake-{i}"), "bucket_folder": "", "gcp_credentials": reference_value(targets[i % targets.len()])})),
                            5 | 6 => (types[i % types.len()], json!({"host": format!("h{i}.internal"), "port": 5432, "token": format!("t-{i}")})),
                            _ => (types[i % types.len()], json!({"host": format!("h{i}.internal"), "port": 443})),
                        };
                        BlockDocumentCreate {
                            name: Some(format!("doc-{i:07}")),
                            data: data.as_object().cloned().unwrap(),
                            block_schema_id: schema,
                            block_type_id: ty,
                            is_anonymous: false,
                        }
                    })
                    .collect();
                store.import_block_documents(bodies, None).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    started.elapsed().as_secs_f64()
}

/// The store's phases run on `rt`; the measurements (wrk, reqwest's blocking client) on
/// this thread, outside any runtime.
fn run(rt: &tokio::runtime::Runtime, backend: &str, url: &str, documents: usize, dir: &Path) {
    let master = MasterKey::generate().unwrap();
    let key: PathBuf = dir.join("master.key");
    std::fs::write(&key, master.to_base64().expose_secret()).unwrap();
    let home = dir.join("home");
    let token = rt.block_on(async {
        let store = open(url, &master).await;
        let token = prepare(&store).await;
        store.close().await;
        token
    });
    // After the previous backend's build (and the removal of its store).
    if SETTLED.load(std::sync::atomic::Ordering::Relaxed) {
        settle(backend);
    }
    measure(backend, "empty", &home, url, &key, &token);

    let seconds = rt.block_on(async {
        let store = open(url, &master).await;
        let writers = if backend == "postgres" { 4 } else { 1 };
        let seconds = build(store.clone(), documents, writers).await;
        if backend == "postgres" {
            let pool = sqlx::AnyPool::connect(url).await.unwrap();
            sqlx::query("vacuum analyze").execute(&pool).await.unwrap();
            // What the build wrote, on disk before the measure (as below for SQLite).
            sqlx::query("checkpoint").execute(&pool).await.unwrap();
            pool.close().await;
        }
        store.close().await;
        seconds
    });
    if backend == "sqlite" {
        // The build leaves about a gigabyte of the store's file for the kernel to write
        // back; synced here, so the measure that follows is the store's, not the build's
        // write-back competing for the disk and the 2 cores.
        for file in ["blocks.db", "blocks.db-wal"] {
            if let Ok(file) = std::fs::File::open(dir.join(file)) {
                file.sync_all().unwrap();
            }
        }
    }
    println!(
        "| {backend:<8} | {:<12} | {:<40} | {:>22} |",
        "build",
        format!("{documents} documents written (s, per s)"),
        format!("{seconds:.0} / {:.0}", documents as f64 / seconds)
    );
    settle(backend);
    measure(
        backend,
        &format!("{}k docs", documents / 1000),
        &home,
        url,
        &key,
        &token,
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    sqlx::any::install_default_drivers();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let documents = env_number("BENCH_DOCUMENTS", 1_000_000);
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    println!(
        "| backend  | store        | measure                                  |                  value |"
    );
    println!(
        "|----------|--------------|------------------------------------------|------------------------|"
    );
    if backends.contains("sqlite") {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("blocks.db").display());
        if std::env::var_os("BENCH_ONLY_BUILD").is_some() {
            // The store kept for a profiler: serve it with the key in `master.key` and the
            // admin token printed.
            let dir = dir.keep();
            let master = MasterKey::generate().unwrap();
            std::fs::write(dir.join("master.key"), master.to_base64().expose_secret()).unwrap();
            let token = rt.block_on(async {
                let store = open(&url, &master).await;
                let token = prepare(&store).await;
                build(store.clone(), documents, 1).await;
                store.close().await;
                token
            });
            println!("built {} (admin token {token})", dir.display());
            return;
        }
        run(&rt, "sqlite", &url, documents, dir.path());
    }
    if backends.contains("postgres")
        && let Some(db) = rt.block_on(tests::PostgresDb::create())
    {
        println!("  database {}", db.name);
        let dir = tempfile::tempdir().unwrap();
        run(&rt, "postgres", db.url.as_str(), documents, dir.path());
        rt.block_on(db.drop_database());
    }
}
