//! What registry-client's cache saves a pipeline that loads the same block in a loop:
//! `cargo bench -p tests --bench client_cache`. Starts `blocks serve` (SQLite, in this
//! process) with the course's `zoom-gcs` → `zoom-gcp-creds` pair and loads `zoom-gcs`
//! one request after another: without a cache, with a cache whose entries are always
//! revalidated (TTL 0: a 304 per load), and with a fresh cache (TTL 60 s).

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use block_types::SecretMap;
use block_types::catalog::{GcpCredentials, GcsBucket};
use registry_client::{Client, Config};
use serde_json::json;

const LOADS: u32 = 3000;

async fn measure(client: &Client) -> (f64, f64) {
    let _: GcsBucket = client.load("zoom-gcs").await.unwrap();
    let started = Instant::now();
    for _ in 0..LOADS {
        let bucket: GcsBucket = client.load("zoom-gcs").await.unwrap();
        assert_eq!(bucket.bucket, "dtc-data-lake");
    }
    let elapsed = started.elapsed().as_secs_f64();
    (f64::from(LOADS) / elapsed, elapsed * 1e6 / f64::from(LOADS))
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let started = tests::TestServer::start().await;
    let (server, admin) = (&started.running, started.admin.clone());
    let config = || Config::new(&server.api_url(), Some(&admin)).unwrap();
    let writer = Client::new(config()).unwrap();
    let credentials = GcpCredentials {
        service_account_file: None,
        service_account_info: Some(SecretMap::new(
            json!({"type": "service_account", "private_key": "k"})
                .as_object()
                .unwrap()
                .clone(),
        )),
        project: Some("dtc-de".into()),
    };
    writer.save(&credentials, "zoom-gcp-creds").await.unwrap();
    let bucket = GcsBucket {
        bucket: "dtc-data-lake".into(),
        gcp_credentials: credentials,
        bucket_folder: String::new(),
    };
    writer.save(&bucket, "zoom-gcs").await.unwrap();

    println!("| client                         | loads/s | µs per load |");
    println!("|--------------------------------|---------|-------------|");
    for (label, client) in [
        ("no cache", Client::new(config()).unwrap()),
        (
            "cache, revalidated (TTL 0)",
            Client::new(config()).unwrap().with_cache(Duration::ZERO),
        ),
        (
            "cache, fresh (TTL 60 s)",
            Client::new(config())
                .unwrap()
                .with_cache(Duration::from_secs(60)),
        ),
    ] {
        let (rate, micros) = measure(&client).await;
        println!("| {label:<30} | {rate:>7.0} | {micros:>11.1} |");
        let stats = client.cache_stats();
        if stats != registry_client::CacheStats::default() {
            println!(
                "|   fresh hits / 304s / reads    | {} / {} / {} |",
                stats.fresh_hits, stats.revalidated, stats.misses
            );
        }
    }
    started.running.stop().await.unwrap();
}
