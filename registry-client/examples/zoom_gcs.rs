//! The course's flow in Rust: load the `zoom-gcs` bucket block (or the one named on the
//! command line), whose GCP credentials are resolved from their reference, and print what a
//! pipeline needs (never the key).
//!
//! ```sh
//! cargo run -p registry-client --example zoom_gcs [NAME]
//! ```
//!
//! The server and token come from `BLOCKS_API_URL`/`BLOCKS_API_KEY`,
//! `PREFECT_API_URL`/`PREFECT_API_KEY`, or `$BLOCKS_HOME/profile.toml`.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use block_types::catalog::GcsBucket;
use registry_client::BlockExt as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "zoom-gcs".to_owned());
    match GcsBucket::load(&name).await {
        Ok(bucket) => {
            println!("bucket:  {}", bucket.bucket);
            println!(
                "project: {}",
                bucket
                    .gcp_credentials
                    .project
                    .as_deref()
                    .unwrap_or("(none)")
            );
            // Secrets stay redacted even in Debug output.
            println!("credentials: {:?}", bucket.gcp_credentials);
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
