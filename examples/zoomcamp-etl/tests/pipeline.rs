//! The pipeline end to end: a `blocks serve` holding the course's blocks, a GCS emulator
//! on loopback, the local PostgreSQL, and two small generated months of trips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use block_types::catalog::{
    ConnectionComponents, ConnectionInfo, GcpCredentials, GcsBucket, SqlAlchemyConnector,
};
use block_types::secret::SecretMap;
use registry_client::gcp::{Endpoint, GcsBucketExt as _};
use registry_client::{Client, Config};
use sqlx::Connection as _;

const ROWS: usize = 1500;

/// The sources directory over HTTP; the first request is answered 503.
struct Web {
    url: String,
    requests: Arc<AtomicUsize>,
}

async fn serve_sources(dir: &Path) -> Web {
    let requests = Arc::new(AtomicUsize::new(0));
    let (dir, counter) = (dir.to_owned(), requests.clone());
    let app = axum::Router::new().route(
        "/{file}",
        axum::routing::get(
            move |axum::extract::Path(file): axum::extract::Path<String>| {
                let (dir, counter) = (dir.clone(), counter.clone());
                async move {
                    if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, Vec::new());
                    }
                    match std::fs::read(dir.join(file)) {
                        Ok(bytes) => (axum::http::StatusCode::OK, bytes),
                        Err(_) => (axum::http::StatusCode::NOT_FOUND, Vec::new()),
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    Web { url, requests }
}
const QUOTED: &str = r#""Y, ""held"" in
memory""#;
const HEADER: &str = "VendorID,tpep_pickup_datetime,tpep_dropoff_datetime,passenger_count,trip_distance,RatecodeID,store_and_fwd_flag,PULocationID,DOLocationID,payment_type,fare_amount,total_amount";

/// What a generated month adds up to.
#[derive(Debug, Default, PartialEq)]
struct Month {
    rows: i64,
    missing_passengers: i64,
    passengers: i64,
    fare_cents: i64,
}

/// Writes a month of trips in the TLC layout, gzip-compressed; about one in nine rows has
/// no passenger count.
fn generate(path: &Path, month: u32, seed: u64) -> Month {
    let mut state = seed;
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % n
    };
    let mut csv = format!("{HEADER}\n");
    let mut month_total = Month::default();
    for i in 0..ROWS {
        let day = 1 + next(28);
        let minute = next(60);
        let passengers = (next(9) != 0).then(|| 1 + next(4));
        let fare_cents = 250 + next(5000);
        month_total.rows += 1;
        match passengers {
            Some(p) => month_total.passengers += i64::try_from(p).unwrap(),
            None => month_total.missing_passengers += 1,
        }
        month_total.fare_cents += i64::try_from(fare_cents).unwrap();
        csv.push_str(&format!(
            "{},2021-{month:02}-{day:02} 08:{minute:02}:00,2021-{month:02}-{day:02} 09:{minute:02}:30,{},{}.{},1,{},{},{},1,{}.{:02},{}.{:02}\n",
            1 + i % 2,
            passengers.map(|p| p.to_string()).unwrap_or_default(),
            next(20),
            next(10),
            // One value that CSV must quote, to follow it through Parquet and COPY.
            if i == 0 { QUOTED } else { "N" },
            1 + next(265),
            1 + next(265),
            fare_cents / 100,
            fare_cents % 100,
            fare_cents / 100 + 3,
            fare_cents % 100,
        ));
    }
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::default(),
    );
    gz.write_all(csv.as_bytes()).unwrap();
    gz.finish().unwrap();
    month_total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_to_gcs_to_postgres() {
    let Some(emulator) = tests::GcsEmulator::start("dtc-data-lake") else {
        return;
    };
    let Some(db) = tests::PostgresDb::create().await else {
        return;
    };
    let server = tests::TestServer::start().await;
    let (dir, token) = (&server.dir, server.admin.clone());
    let api = server.api();

    // The course's blocks: zoom-gcs referencing zoom-gcp-creds, and a connector.
    let client = Client::new(Config::new(&api, Some(&token)).unwrap()).unwrap();
    let key: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/test-service-account.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let credentials = GcpCredentials {
        service_account_file: None,
        service_account_info: Some(SecretMap::new(key)),
        project: Some("blocks-test-project".into()),
    };
    client.save(&credentials, "zoom-gcp-creds").await.unwrap();
    let credentials: GcpCredentials = client.load("zoom-gcp-creds").await.unwrap();
    let bucket = GcsBucket {
        bucket: "dtc-data-lake".into(),
        gcp_credentials: credentials,
        bucket_folder: "prefect".into(),
    };
    client.save(&bucket, "zoom-gcs").await.unwrap();
    let connector = SqlAlchemyConnector {
        connection_info: ConnectionInfo::Components(ConnectionComponents {
            driver: "postgresql+psycopg2".into(),
            database: Some(db.name.clone()),
            username: Some(db.url.username().to_owned()).filter(|u| !u.is_empty()),
            password: db.url.password().map(Into::into),
            host: db.url.host_str().map(str::to_owned),
            port: db.url.port(),
            query: None,
        }),
        connect_args: None,
        fetch_size: 1,
    };
    client.save(&connector, "zoom-postgres").await.unwrap();

    let sources = dir.path().join("sources");
    std::fs::create_dir_all(&sources).unwrap();
    let january = generate(&sources.join("yellow_tripdata_2021-01.csv.gz"), 1, 7);
    let february = generate(&sources.join("yellow_tripdata_2021-02.csv.gz"), 2, 11);
    assert!(january.missing_passengers > 0 && february.missing_passengers > 0);

    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let run = |extra: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_zoomcamp-etl"));
        command.args(["--color", "yellow", "--year", "2021"]);
        if !extra.contains(&"--source") {
            command
                .arg("--source")
                .arg(sources.join("{color}_tripdata_{year}-{month}.csv.gz"));
        }
        let output = command
            .args(extra)
            .current_dir(&work)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("BLOCKS_HOME", dir.path().join("nowhere"))
            .env("BLOCKS_API_URL", &api)
            .env("BLOCKS_API_KEY", &token)
            .env("STORAGE_EMULATOR_HOST", &emulator.url)
            .output()
            .unwrap();
        (
            output.status,
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (status, stdout, stderr) = run(&["--months", "1,2"]);
    assert!(status.success(), "{stdout}\n{stderr}");
    for line in [
        "[1/2] yellow_tripdata_2021-01",
        "[2/2] yellow_tripdata_2021-02",
        &format!(
            "pre: missing passenger count: {}; post: 0",
            january.missing_passengers
        ),
        &format!(
            "pre: missing passenger count: {}; post: 0",
            february.missing_passengers
        ),
        "2 datetime column(s)",
        "upload     gs://dtc-data-lake/prefect/data/yellow/yellow_tripdata_2021-01.parquet",
        &format!("load       {ROWS} rows appended to rides"),
        "done: 2 month(s)",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    // The key never reaches the output.
    assert!(!stdout.contains("PRIVATE KEY") && !stderr.contains("PRIVATE KEY"));

    // The Parquet files are in the bucket, under the block's folder.
    let storage = bucket
        .storage_at(Endpoint::Emulator(emulator.url.clone()))
        .await
        .unwrap();
    let names: Vec<String> = storage
        .list_blobs(Some("data/yellow"))
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(
        names,
        [
            "prefect/data/yellow/yellow_tripdata_2021-01.parquet",
            "prefect/data/yellow/yellow_tripdata_2021-02.parquet"
        ]
    );
    let local = std::fs::read(work.join("data/yellow/yellow_tripdata_2021-01.parquet")).unwrap();
    assert_eq!(&local[..4], b"PAR1");
    assert_eq!(
        storage
            .read_path("data/yellow/yellow_tripdata_2021-01.parquet")
            .await
            .unwrap(),
        local
    );
    assert!(
        work.join("data/from-gcs/yellow/yellow_tripdata_2021-02.parquet")
            .is_file()
    );

    // Every row is in PostgreSQL, typed, with no missing passenger count.
    let mut conn = sqlx::PgConnection::connect(db.url.as_str()).await.unwrap();
    let (rows, missing, passengers, fare_cents): (i64, i64, i64, i64) = sqlx::query_as(
        r#"select count(*), count(*) filter (where passenger_count is null),
                  sum(passenger_count)::bigint, round(sum(fare_amount) * 100)::bigint from rides"#,
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(rows, january.rows + february.rows);
    assert_eq!(missing, 0);
    assert_eq!(passengers, january.passengers + february.passengers);
    assert_eq!(fare_cents, january.fare_cents + february.fare_cents);
    let (pickup_type, first_month): (String, i32) = sqlx::query_as(
        r#"select (select data_type from information_schema.columns
                   where table_name = 'rides' and column_name = 'tpep_pickup_datetime')::text,
                  (select count(distinct extract(month from tpep_pickup_datetime))::int from rides)"#,
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(pickup_type, "timestamp without time zone");
    assert_eq!(first_month, 2);
    let quoted: i64 =
        sqlx::query_scalar("select count(*) from rides where store_and_fwd_flag = $1")
            .bind("Y, \"held\" in\nmemory")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(quoted, 2);

    // A second run appends, as the course's if_exists="append"; this time the month comes
    // from a URL whose first answer is a 503 (fetched again, as the course's retries=3).
    let web = serve_sources(&sources).await;
    let template = format!("{}/{{color}}_tripdata_{{year}}-{{month}}.csv.gz", web.url);
    let (status, stdout, stderr) = run(&["--months", "1", "--source", &template]);
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "fetch      {}/yellow_tripdata_2021-01.csv.gz: {ROWS} rows",
            web.url
        )),
        "{stdout}"
    );
    assert_eq!(web.requests.load(Ordering::SeqCst), 2);
    // A missing file is named, not retried.
    let (status, _, stderr) = run(&["--months", "3", "--source", &template]);
    assert!(!status.success());
    assert!(
        stderr.contains("yellow_tripdata_2021-03.csv.gz") && stderr.contains("404"),
        "{stderr}"
    );
    assert_eq!(web.requests.load(Ordering::SeqCst), 3);
    let rows: i64 = sqlx::query_scalar("select count(*) from rides")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, 2 * january.rows + february.rows);

    // Mistakes are named, and nothing is half-loaded.
    let (status, _, stderr) = run(&["--months", "1", "--gcs-block", "no-such-bucket"]);
    assert!(!status.success());
    assert!(stderr.contains("no-such-bucket"), "{stderr}");
    let (status, _, stderr) = run(&["--months", "1", "--table", "rides; drop table rides"]);
    assert!(!status.success());
    assert!(stderr.contains("--table"), "{stderr}");
    let after: i64 = sqlx::query_scalar("select count(*) from rides")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(after, rows);

    conn.close().await.ok();
    server.running.stop().await.ok();
    db.drop_database().await;
}
