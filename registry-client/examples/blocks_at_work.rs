//! The capabilities on blocks saved by anyone (the Prefect client, the UI, Rust): loads
//! `zoom-gcs` and `postgres-connector`, checks the bucket's service-account key, resolves
//! the connector's database, and prints what a pipeline would use (never a secret).
//!
//! ```sh
//! cargo run -p registry-client --features gcp,sqlalchemy --example blocks_at_work
//! ```

#![allow(clippy::print_stdout, clippy::print_stderr)]

use block_types::catalog::{GcsBucket, SqlAlchemyConnector};
use registry_client::BlockExt as _;
use registry_client::gcp::{Endpoint, GcpCredentialsExt as _, GcsBucketExt as _};
use registry_client::sqlalchemy::Connect as _;

type Error = Box<dyn std::error::Error>;

async fn run() -> Result<(), Error> {
    let block = GcsBucket::load("zoom-gcs").await?;
    let account = block
        .gcp_credentials
        .service_account()?
        .ok_or("zoom-gcs has no service-account key")?;
    println!("service account: {}", account.client_email());
    println!(
        "project: {}",
        block.gcp_credentials.project_id()?.unwrap_or_default()
    );
    // A client for the bucket (no request is made here).
    let bucket = block.storage_at(Endpoint::Google).await?;
    println!("bucket: {bucket:?}");

    let connector = SqlAlchemyConnector::load("postgres-connector").await?;
    let url = connector.database_url()?;
    println!("backend: {} ({})", url.backend(), url.driver());
    println!("database: {url:?}");
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
