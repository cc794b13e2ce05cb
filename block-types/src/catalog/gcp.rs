//! The `gcp` collection: Google Cloud credentials and Cloud Storage buckets.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::SCHEMA_VERSION;
use super::schema::{block_schema, optional, prop, type_info};
use crate::block::{Block, BlockSpec};
use crate::error::FieldError;
use crate::secret::SecretMap;

/// Google Cloud credentials: a service-account key given inline or as a file path (not
/// both, as Prefect requires), and a default project. With neither key, Application
/// Default Credentials apply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawGcpCredentials")]
pub struct GcpCredentials {
    /// Path to a service-account JSON key file.
    #[serde(default)]
    pub service_account_file: Option<PathBuf>,
    /// The service-account key itself; every entry is secret.
    #[serde(default)]
    pub service_account_info: Option<SecretMap>,
    /// The default project.
    #[serde(default)]
    pub project: Option<String>,
}

/// The wire form, checked before it becomes a [`GcpCredentials`].
#[derive(Deserialize)]
struct RawGcpCredentials {
    #[serde(default)]
    service_account_file: Option<PathBuf>,
    #[serde(default)]
    service_account_info: Option<SecretMap>,
    #[serde(default)]
    project: Option<String>,
}

impl TryFrom<RawGcpCredentials> for GcpCredentials {
    type Error = String;

    fn try_from(raw: RawGcpCredentials) -> Result<Self, Self::Error> {
        let credentials = Self {
            service_account_file: raw.service_account_file,
            service_account_info: raw.service_account_info,
            project: raw.project,
        };
        credentials.check().map_err(|e| e.message)?;
        Ok(credentials)
    }
}

impl Block for GcpCredentials {
    const SLUG: &'static str = "gcp-credentials";

    fn check(&self) -> Result<(), FieldError> {
        if self.service_account_file.is_some() && self.service_account_info.is_some() {
            return Err(FieldError::new(
                "",
                "Only one of service_account_info or service_account_file can be specified at once",
            ));
        }
        Ok(())
    }

    fn spec() -> BlockSpec {
        let fields = block_schema(
            "GcpCredentials",
            Self::SLUG,
            "Credentials for Google Cloud: a service-account key, inline or as a file path, and a default project. The inline key is secret.",
            vec![
                (
                    "service_account_file",
                    optional(
                        "Service Account File",
                        "Path to a service-account JSON key file.",
                        json!({"type": "string", "format": "path"}),
                    ),
                ),
                (
                    "service_account_info",
                    optional(
                        "Service Account Info",
                        "The contents of a service-account JSON key file.",
                        json!({"type": "object", "additionalProperties": true}),
                    ),
                ),
                (
                    "project",
                    optional(
                        "Project",
                        "The default Google Cloud project.",
                        json!({"type": "string"}),
                    ),
                ),
            ],
            &[],
            &["service_account_info.*"],
        );
        BlockSpec {
            block_type: type_info(
                "GCP Credentials",
                Self::SLUG,
                "GcpCredentials",
                "Credentials for Google Cloud, with a secret service-account key.",
                r#"
```rust
use block_types::catalog::GcpCredentials;
use registry_client::BlockExt;

let credentials = GcpCredentials::load("zoom-gcp-creds").await?;
```"#,
            ),
            fields,
            capabilities: Vec::new(),
            version: SCHEMA_VERSION.to_owned(),
        }
    }
}

/// A Cloud Storage bucket, with the credentials that reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GcsBucket {
    /// The bucket's name.
    pub bucket: String,
    /// The credentials; usually a reference to a saved `gcp-credentials` block.
    #[serde(default)]
    pub gcp_credentials: GcpCredentials,
    /// A folder inside the bucket that paths are relative to.
    #[serde(default)]
    pub bucket_folder: String,
}

impl Block for GcsBucket {
    const SLUG: &'static str = "gcs-bucket";

    fn check(&self) -> Result<(), FieldError> {
        self.gcp_credentials
            .check()
            .map_err(|e| e.prefixed("gcp_credentials"))
    }

    fn spec() -> BlockSpec {
        let fields = block_schema(
            "GcsBucket",
            Self::SLUG,
            "A Google Cloud Storage bucket and the credentials to reach it; paths are relative to an optional folder.",
            vec![
                (
                    "bucket",
                    prop("Bucket", "The bucket's name.", json!({"type": "string"})),
                ),
                (
                    "gcp_credentials",
                    json!({"$ref": "#/definitions/GcpCredentials", "description": "The credentials that reach the bucket."}),
                ),
                (
                    "bucket_folder",
                    prop(
                        "Bucket Folder",
                        "A folder inside the bucket that paths are relative to.",
                        json!({"type": "string", "default": ""}),
                    ),
                ),
            ],
            &["bucket"],
            &[],
        );
        BlockSpec {
            block_type: type_info(
                "GCS Bucket",
                Self::SLUG,
                "GcsBucket",
                "A Google Cloud Storage bucket and the credentials that reach it.",
                r#"
```rust
use block_types::catalog::GcsBucket;
use registry_client::BlockExt;

let bucket = GcsBucket::load("zoom-gcs").await?;
println!("{}", bucket.bucket);
```"#,
            ),
            fields,
            capabilities: ["get-directory", "put-directory", "read-path", "write-path"]
                .map(String::from)
                .to_vec(),
            version: SCHEMA_VERSION.to_owned(),
        }
        .nest("gcp_credentials", &GcpCredentials::spec())
    }

    fn nested_specs() -> Vec<BlockSpec> {
        vec![GcpCredentials::spec()]
    }
}
