//! HTTP load benchmark: `blocks serve` (this build) under `wrk`, on SQLite and PostgreSQL.
//!
//! `cargo bench -p registry-server --bench http` — needs `wrk` on the PATH. Seeds the course's
//! `zoom-gcs` → `zoom-gcp-creds` pair, then measures side by side at 16 connections the
//! nested load with secrets (each one audited, with a pipeline token holding `write` and
//! `read-secrets`), the same load masked, and `/api/health`, creates per second with 16
//! writers, the server's CPU time per request under each load (read from `/proc`, so apart
//! from wrk's share of the machine), and its resident memory idle and under load. Settings: `BENCH_SECONDS` (default 10),
//! `BENCH_CONNECTIONS` (16), `BLOCKS_TEST_POSTGRES_URL`, `BENCH_BACKENDS` (`sqlite,postgres`),
//! and `BENCH_BEFORE`: the path of another `blocks` binary (an earlier build) to measure
//! side by side with this one in the same run, each row then naming its build.
//! The nested load is also measured with a token limited by grants to the tree's two blocks
//! (`granted`). `BENCH_ONLY` (e.g. `create` or `nested,masked`) runs only those loads (for a profiler
//! attached to the server).

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::process::Command;
use std::time::Instant;

use block_types::Block;
use block_types::catalog::{GcpCredentials, GcsBucket};
use serde_json::{Value, json};

mod common;
use common::{Load, Serve, wrk_on};

struct Server {
    process: Serve,
    api: String,
    /// A token with the write and read-secrets scopes, as a pipeline would hold.
    token: String,
    /// The first admin token.
    admin: String,
    _dir: tempfile::TempDir,
}

fn start(program: &str, database_url: Option<&str>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(program);
    cmd.args(["serve", "--port", "0"])
        .env("BLOCKS_HOME", dir.path().join("home"))
        .env("BLOCKS_LOG", "warn,registry_server::serve=info");
    if let Some(url) = database_url {
        let key = dir.path().join("master.key");
        let master = registry_server::crypto::MasterKey::generate().unwrap();
        std::fs::write(
            &key,
            secrecy::ExposeSecret::expose_secret(&master.to_base64()),
        )
        .unwrap();
        cmd.args(["--database-url", url, "--master-key-file"])
            .arg(&key);
    }
    let started = Instant::now();
    let (process, base) = Serve::start(cmd, false);
    let api = format!("{base}/api");
    let client = reqwest::blocking::Client::new();
    println!(
        "  start to ready: {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    // The first start wrote the admin token to the profile; make a pipeline token with it.
    let profile = std::fs::read_to_string(dir.path().join("home/profile.toml")).unwrap();
    let admin: toml::Table = toml::from_str(&profile).unwrap();
    let admin = admin["api_key"].as_str().unwrap().to_owned();
    let created = post(
        &client,
        &admin,
        &format!("{api}/tokens"),
        &json!({"name": "bench pipeline", "scopes": ["read-secrets", "write"]}),
    );
    Server {
        process,
        api,
        token: created["token"].as_str().unwrap().to_owned(),
        admin,
        _dir: dir,
    }
}

fn post(client: &reqwest::blocking::Client, token: &str, url: &str, body: &Value) -> Value {
    let response = client
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .unwrap();
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    response.json().unwrap()
}

fn seed(api: &str, token: &str) {
    let client = reqwest::blocking::Client::new();
    let mut ids = std::collections::HashMap::new();
    for spec in [GcpCredentials::spec(), GcsBucket::spec()] {
        let ty = post(
            &client,
            token,
            &format!("{api}/block_types/"),
            &serde_json::to_value(spec.block_type.to_create()).unwrap(),
        );
        let ty_id: uuid::Uuid = ty["id"].as_str().unwrap().parse().unwrap();
        let schema = post(
            &client,
            token,
            &format!("{api}/block_schemas/"),
            &serde_json::to_value(spec.to_schema_create(ty_id)).unwrap(),
        );
        ids.insert(
            spec.block_type.slug.clone(),
            (ty_id, schema["id"].as_str().unwrap().to_owned()),
        );
    }
    let (creds_type, creds_schema) = &ids["gcp-credentials"];
    let key = json!({"type": "service_account", "project_id": "dtc-de", "private_key_id": "abc", "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg...\n-----END PRIVATE KEY-----\n", "client_email": "svc@dtc-de.iam.gserviceaccount.com"});
    let creds = post(
        &client,
        token,
        &format!("{api}/block_documents/"),
        &json!({"name": "zoom-gcp-creds", "block_type_id": creds_type, "block_schema_id": creds_schema, "data": {"service_account_info": key, "project": "dtc-de"}}),
    );
    let (bucket_type, bucket_schema) = &ids["gcs-bucket"];
    post(
        &client,
        token,
        &format!("{api}/block_documents/"),
        &json!({"name": "zoom-gcs", "block_type_id": bucket_type, "block_schema_id": bucket_schema, "data": {"bucket": "dtc-data-lake", "bucket_folder": "", "gcp_credentials": {"$ref": {"block_document_id": creds["id"]}}}}),
    );
    // The create benchmark writes gcp-credentials documents with these ids.
    std::fs::write(
        std::env::temp_dir().join("blocks-bench-ids.json"),
        json!({"type": creds_type, "schema": creds_schema}).to_string(),
    )
    .unwrap();
}

/// Audit records stored, audit group commits, statements sent to the database, and
/// SQLite's write groups and the writes they held, so far, from `/metrics`.
struct Figures {
    records: f64,
    commits: f64,
    queries: f64,
    write_groups: f64,
    group_writes: f64,
}

fn figures(server: &Server) -> Figures {
    let text = reqwest::blocking::Client::new()
        .get(server.api.replace("/api", "/metrics"))
        .bearer_auth(&server.admin)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Figures {
        records: value("blocks_audit_records_total "),
        commits: value("blocks_audit_group_commits_total "),
        queries: value("blocks_store_queries_total "),
        write_groups: value("blocks_write_group_commits_total "),
        group_writes: value("blocks_write_group_writes_total "),
    }
}

const CREATE_LUA: &str = r#"
local counter = 0
local ids = nil
function setup(thread) thread:set("tid", tostring(math.random(1, 1e9))) end
function init(args)
  local f = io.open(os.getenv("BENCH_IDS"), "r"); local text = f:read("*a"); f:close()
  local t = text:match('"type":"([^"]+)"'); local s = text:match('"schema":"([^"]+)"')
  ids = {t, s}
end
function request()
  counter = counter + 1
  local body = string.format('{"name":"c-%s-%d","block_type_id":"%s","block_schema_id":"%s","data":{"service_account_info":{"private_key":"k%d"},"project":"p"}}', tid, counter, ids[1], ids[2], counter)
  return wrk.format("POST", nil, {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")}, body)
end
"#;

fn run(build: &str, program: &str, backend: &str, database_url: Option<&str>) {
    println!("{backend} ({build}):");
    let server = start(program, database_url);
    let backend = &format!("{backend} {build}");
    println!("  server pid: {}", server.process.pid());
    seed(&server.api, &server.token);
    let idle = server.process.rss_kib();
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let skip = |load: &str| !only.is_empty() && !only.split(',').any(|l| l == load);
    let skipped = Load::skipped;
    let wrk = |url: &str, token: Option<&str>, script: Option<&std::path::Path>| {
        wrk_on(&server.process, url, token, script)
    };
    let nested = if skip("nested") {
        skipped()
    } else {
        wrk(
            &format!(
                "{}/block_types/slug/gcs-bucket/block_documents/name/zoom-gcs?include_secrets=true",
                server.api
            ),
            Some(&server.token),
            None,
        )
    };
    // The same load with a token limited by grants to the two blocks of the tree (every
    // document of it checked against them): what grants cost.
    let granted = if skip("granted") {
        skipped()
    } else {
        // An earlier build (BENCH_BEFORE) may not know grants: then this row is empty.
        let limited: Option<Value> = reqwest::blocking::Client::new()
            .post(format!("{}/tokens", server.api))
            .bearer_auth(&server.admin)
            .json(
                &json!({"name": "bench limited", "scopes": ["read-secrets"], "grants": [
                    {"scope": "read-secrets", "selector": "gcs-bucket/zoom-*"},
                    {"scope": "read-secrets", "selector": "gcp-credentials/zoom-gcp-creds"},
                ]}),
            )
            .send()
            .ok()
            .filter(|r| r.status().is_success())
            .and_then(|r| r.json().ok());
        match limited.as_ref().and_then(|l| l["token"].as_str()) {
            Some(token) => wrk(
                &format!(
                    "{}/block_types/slug/gcs-bucket/block_documents/name/zoom-gcs?include_secrets=true",
                    server.api
                ),
                Some(token),
                None,
            ),
            None => skipped(),
        }
    };
    let masked = if skip("masked") {
        skipped()
    } else {
        wrk(
            &format!(
                "{}/block_types/slug/gcs-bucket/block_documents/name/zoom-gcs",
                server.api
            ),
            Some(&server.token),
            None,
        )
    };
    let loaded = server.process.rss_kib();
    let reads = figures(&server);
    let health = if skip("health") {
        skipped()
    } else {
        wrk(&format!("{}/health", server.api), None, None)
    };
    let script = tempfile::NamedTempFile::new().unwrap();
    script.as_file().write_all(CREATE_LUA.as_bytes()).unwrap();
    // wrk inherits BENCH_IDS (set by `main`) and reads the ids written by `seed`.
    let create = if skip("create") {
        skipped()
    } else {
        wrk(
            &format!("{}/block_documents/", server.api),
            Some(&server.token),
            Some(script.path()),
        )
    };
    let after = server.process.rss_kib();
    let writes = figures(&server);
    for (measure, load) in [
        ("nested load (zoom-gcs, secrets)", &nested),
        ("nested load, token with grants", &granted),
        ("nested load, secrets masked", &masked),
        ("GET /api/health", &health),
        ("create (16 writers)", &create),
    ] {
        println!(
            "| {backend:<15} | {measure:<31} | {:>9.0} | {:>7.2} | {:>7.2} | {:>6} | {:>8.1} |",
            load.rps, load.p50_ms, load.p99_ms, load.errors, load.cpu_us
        );
    }
    let ratio = |measure: &str, value: f64| {
        println!(
            "| {backend:<15} | {measure:<31} | {value:>9.2} |         |         |        |          |"
        );
    };
    ratio("nested / health (req/s)", nested.rps / health.rps);
    ratio("masked / health (req/s)", masked.rps / health.rps);
    ratio(
        "audit records per commit",
        reads.records / reads.commits.max(1.0),
    );
    // The reads above are all audited, so this is the database's share of a read.
    ratio(
        "statements per audited read",
        reads.queries / reads.records.max(1.0),
    );
    // Between the two readings: health (no statement) and the creates, each audited in
    // the transaction that writes it. On SQLite the last move of the reads' audit journal may fall in
    // between too (one group write, a few statements).
    let creates = (writes.records - reads.records).max(1.0);
    ratio(
        "statements per create",
        (writes.queries - reads.queries) / creates,
    );
    if writes.write_groups > reads.write_groups {
        ratio(
            "creates per group commit",
            (writes.group_writes - reads.group_writes) / (writes.write_groups - reads.write_groups),
        );
    }
    println!(
        "| {backend:<15} | RSS idle / after reads / after creates (MiB) | {:.1} / {:.1} / {:.1} |",
        idle as f64 / 1024.0,
        loaded as f64 / 1024.0,
        after as f64 / 1024.0
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if std::env::var_os("BENCH_IDS").is_none() {
        // Re-run this benchmark with BENCH_IDS set, so wrk (a child) inherits it without
        // mutating the environment of a running process.
        let ids = std::env::temp_dir().join("blocks-bench-ids.json");
        let status = Command::new(std::env::current_exe().unwrap())
            .args(std::env::args().skip(1))
            .env("BENCH_IDS", ids)
            .status()
            .unwrap();
        std::process::exit(status.code().unwrap_or(1));
    }
    println!(
        "| backend, build | measure                         |   req/s   | p50 ms  | p99 ms  | non-2xx | server CPU µs/req |"
    );
    println!(
        "|-----------------|---------------------------------|-----------|---------|---------|--------|----------|"
    );
    let mut builds = Vec::new();
    if let Ok(before) = std::env::var("BENCH_BEFORE") {
        builds.push(("before", before));
    }
    builds.push(("this", env!("CARGO_BIN_EXE_blocks").to_owned()));
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    if backends.contains("sqlite") {
        for (build, program) in &builds {
            run(build, program, "sqlite", None);
        }
    }
    if !backends.contains("postgres") {
        return;
    }
    for (build, program) in &builds {
        // Dropped with the database when it goes out of scope.
        let Some(db) = common::postgres_db() else {
            return;
        };
        run(build, program, "postgres", Some(db.url.as_str()));
    }
}
