//! The course's taxi-trips pipeline, with blocks from a blocks registry:
//!
//! - `etl_web_to_gcs`: fetch a month of trips (CSV or CSV.gz, from a URL or a local path),
//!   clean it (datetimes parsed, missing `passenger_count` set to 0), write it as Parquet
//!   and upload it through the `zoom-gcs` bucket block;
//! - `etl_gcs_to_pg`: download it again through the same block, check it, and append its
//!   rows to a PostgreSQL table through a `sqlalchemy-connector` block (the course loads
//!   BigQuery; this machine's warehouse is PostgreSQL).
//!
//! The registry is found as every client finds it (`BLOCKS_API_URL`/`BLOCKS_API_KEY`,
//! `PREFECT_API_URL`/`PREFECT_API_KEY`, or the profile `blocks serve` writes);
//! `STORAGE_EMULATOR_HOST` sends storage calls to an emulator.

// A command-line program reports its progress to its user on stdout.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod frame;
mod warehouse;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use block_types::catalog::{GcsBucket, SqlAlchemyConnector};
use clap::Parser;
use registry_client::Client;
use registry_client::gcp::GcsBucketExt as _;
use registry_client::sqlalchemy::Connect as _;

/// The course's default source: the DataTalksClub mirror of the NYC TLC trip records.
const DEFAULT_SOURCE: &str = "https://github.com/DataTalksClub/nyc-tlc-data/releases/download/{color}/{color}_tripdata_{year}-{month}.csv.gz";

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Taxi trips from the web (or disk) to a GCS bucket, and from the bucket into PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "zoomcamp-etl", version)]
struct Args {
    /// Taxi colour: yellow, green, fhv, …
    #[arg(long, default_value = "yellow")]
    color: String,
    /// Year of the trips.
    #[arg(long, default_value_t = 2021)]
    year: u16,
    /// Months to process, e.g. 1,2,3.
    #[arg(long, value_delimiter = ',', default_values_t = [1u8], value_parser = clap::value_parser!(u8).range(1..=12))]
    months: Vec<u8>,
    /// Where each month's CSV(.gz) is: a URL or a local path, with {color}, {year} and
    /// {month} (two digits) filled in.
    #[arg(long, default_value = DEFAULT_SOURCE)]
    source: String,
    /// The gcs-bucket block to upload through.
    #[arg(long, default_value = "zoom-gcs")]
    gcs_block: String,
    /// The sqlalchemy-connector block of the PostgreSQL database to load into.
    #[arg(long, default_value = "zoom-postgres")]
    sql_block: String,
    /// The table rows are appended to (created when missing).
    #[arg(long, default_value = "rides")]
    table: String,
    /// Local working directory for Parquet files.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<(), Error> {
    warehouse::check_table_name(&args.table)?;
    let client = Client::from_env()?;
    let bucket_block: GcsBucket = client
        .load(&args.gcs_block)
        .await
        .map_err(|e| format!("loading the bucket block: {e}"))?;
    let bucket = bucket_block.storage().await?;
    let connector: SqlAlchemyConnector = client
        .load(&args.sql_block)
        .await
        .map_err(|e| format!("loading the database block: {e}"))?;
    let url = connector.database_url()?;
    println!(
        "blocks: {} → gs://{}/{} ({:?}); {} → {} database {}",
        args.gcs_block,
        bucket.name(),
        bucket.folder(),
        bucket.endpoint(),
        args.sql_block,
        url.backend(),
        url.driver(),
    );
    let pool = url.connect().await?;
    let pg = pool.postgres()?;

    let total = args.months.len();
    for (i, month) in args.months.iter().enumerate() {
        let dataset = format!("{}_tripdata_{}-{month:02}", args.color, args.year);
        println!("[{}/{total}] {dataset}", i + 1);

        // etl_web_to_gcs
        let source = source_for(&args.source, &args.color, args.year, *month);
        let started = Instant::now();
        let raw = frame::fetch(&source).await?;
        let trips = frame::read_csv(&raw)?;
        println!(
            "  fetch      {source}: {} rows, {} columns in {:.1} s",
            trips.rows(),
            trips.schema.fields().len(),
            started.elapsed().as_secs_f64()
        );
        if trips.rows() == 0 {
            return Err(format!("{source} holds no trips; nothing was written").into());
        }
        let (trips, fixed) = frame::clean(&trips)?;
        println!(
            "  clean      pre: missing passenger count: {}; post: 0; {} datetime column(s)",
            fixed.missing_passenger_count, fixed.datetime_columns
        );
        let local = args
            .data_dir
            .join(&args.color)
            .join(format!("{dataset}.parquet"));
        let bytes = frame::write_parquet(&trips, &local)?;
        println!("  write      {} ({bytes} bytes, gzip)", local.display());
        let gcs_path = format!("data/{}/{dataset}.parquet", args.color);
        let object = bucket.upload_from_path(&local, &gcs_path).await?;
        println!("  upload     gs://{}/{object}", bucket.name());

        // etl_gcs_to_pg
        let landing = args.data_dir.join("from-gcs").join(&args.color);
        let files = bucket.get_directory(Some(&gcs_path), &landing).await?;
        let downloaded = files
            .first()
            .ok_or_else(|| format!("gs://{}/{object} was not found after upload", bucket.name()))?;
        println!("  extract    {}", downloaded.display());
        let trips = frame::read_parquet(downloaded)?;
        let (trips, fixed) = frame::clean(&trips)?;
        println!(
            "  transform  pre: missing passenger count: {}; post: 0",
            fixed.missing_passenger_count
        );
        let started = Instant::now();
        let loaded = warehouse::append(pg, &args.table, &trips).await?;
        println!(
            "  load       {loaded} rows appended to {} in {:.1} s",
            args.table,
            started.elapsed().as_secs_f64()
        );
    }
    pool.close().await;
    println!("done: {total} month(s)");
    Ok(())
}

fn source_for(template: &str, color: &str, year: u16, month: u8) -> String {
    template
        .replace("{color}", color)
        .replace("{year}", &year.to_string())
        .replace("{month}", &format!("{month:02}"))
}
