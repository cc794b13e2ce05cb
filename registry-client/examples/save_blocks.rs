//! Saving from Rust: a `Secret`, and the course's `zoom-gcs` bucket whose credentials
//! (`zoom-gcp-creds`) are saved first and referenced, as the Prefect client saves them.
//! Existing blocks of those names are replaced. All load in Python unchanged.
//!
//! ```sh
//! BLOCKS_EXAMPLE_KEY_FILE=service-account.json cargo run -p registry-client --example save_blocks
//! ```
//!
//! The service-account key (the JSON file GCP lets you download) goes into the credentials
//! block as `service_account_info`; its entries are secret.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use block_types::catalog::{GcpCredentials, GcsBucket, Secret};
use registry_client::{BlockExt as _, Error};

async fn run() -> Result<(), Error> {
    let value = std::env::var("BLOCKS_EXAMPLE_SECRET").unwrap_or_else(|_| "s3cr3t".into());
    Secret::new(value).save_overwrite("rust-secret").await?;
    let info = match std::env::var("BLOCKS_EXAMPLE_KEY_FILE") {
        Ok(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| Error::Config(format!("cannot read {path}: {e}")))?;
            match serde_json::from_str(&text) {
                Ok(serde_json::Value::Object(map)) => Some(block_types::SecretMap::new(map)),
                _ => return Err(Error::Config(format!("{path} is not a JSON object"))),
            }
        }
        Err(_) => None,
    };
    let credentials = GcpCredentials {
        service_account_file: None,
        service_account_info: info,
        project: Some("dtc-de".into()),
    };
    credentials.save_overwrite("zoom-gcp-creds").await?;
    let bucket = GcsBucket {
        bucket: "dtc-data-lake".into(),
        gcp_credentials: credentials,
        bucket_folder: "from-rust".into(),
    };
    let id = bucket.save_overwrite("zoom-gcs").await?;
    println!(
        "saved secret/rust-secret, gcp-credentials/zoom-gcp-creds and gcs-bucket/zoom-gcs ({id})"
    );
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
