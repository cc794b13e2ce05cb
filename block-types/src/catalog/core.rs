//! The `core` collection: secret, webhook, local file system, JSON, string, date-time.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::SCHEMA_VERSION;
use super::schema::{block_schema, prop, secret_string, type_info};
use crate::block::{Block, BlockSpec};
use crate::secret::{SecretJson, SecretMap, SecretString};

/// A secret value: a string, or any JSON value such as `{"username": …, "password": …}`.
/// Always masked as a whole when read without secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Secret {
    /// The secret.
    pub value: SecretJson,
}

impl Secret {
    /// A secret holding a string.
    pub fn new(value: impl Into<String>) -> Self {
        Self {
            value: SecretJson::new(Value::String(value.into())),
        }
    }

    /// The value, JSON-decoded when it is a string holding JSON (as Prefect's `get()`).
    pub fn get(&self) -> Value {
        match self.value.expose_secret() {
            Value::String(s) => {
                serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone()))
            }
            other => other.clone(),
        }
    }
}

impl Block for Secret {
    const SLUG: &'static str = "secret";

    fn spec() -> BlockSpec {
        let mut fields = block_schema(
            "Secret",
            Self::SLUG,
            "A secret value: an API key, a password, or a JSON object of credentials. It is encrypted at rest and masked whenever it is read without the read-secrets scope.",
            vec![(
                "value",
                prop(
                    "Value",
                    "The secret: a string or any JSON value.",
                    json!({
                        "anyOf": [secret_string(), {"title": "string", "type": "string"}, {"$ref": "#/definitions/JsonValue", "title": "JSON"}],
                        "format": "password",
                        "writeOnly": true,
                        "examples": ["sk-1234567890", {"username": "johndoe", "password": "s3cr3t"}]
                    }),
                ),
            )],
            &["value"],
            &["value"],
        );
        fields["definitions"] = json!({"JsonValue": {}});
        protected_spec(
            ("Secret", "Secret", Self::SLUG),
            "Keeps one secret value, encrypted at rest and masked when listed.",
            "let token = Secret::load(\"api-token\").await?;\nlet value = token.get();",
            fields,
            &[],
        )
    }
}

/// HTTP method of a [`Webhook`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum WebhookMethod {
    /// GET
    Get,
    /// POST (the default)
    #[default]
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
}

fn yes() -> bool {
    true
}

/// A webhook to call: its URL and headers are secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    /// The request method.
    #[serde(default)]
    pub method: WebhookMethod,
    /// The URL, which often embeds a token.
    pub url: SecretString,
    /// Headers sent with each request; all secret.
    #[serde(default)]
    pub headers: SecretMap,
    /// Whether private (RFC 1918, loopback) addresses may be called.
    #[serde(default = "yes")]
    pub allow_private_urls: bool,
    /// Whether TLS certificates are verified.
    #[serde(default = "yes")]
    pub verify: bool,
}

impl Block for Webhook {
    const SLUG: &'static str = "webhook";

    fn spec() -> BlockSpec {
        let fields = block_schema(
            "Webhook",
            Self::SLUG,
            "An HTTP endpoint to call, such as a chat notification hook. The URL and the headers are secret.",
            vec![
                (
                    "method",
                    prop(
                        "Method",
                        "The HTTP method of the request.",
                        json!({"type": "string", "enum": ["GET", "POST", "PUT", "PATCH", "DELETE"], "default": "POST"}),
                    ),
                ),
                (
                    "url",
                    prop(
                        "Webhook URL",
                        "The URL to call; it often embeds a token, so it is secret.",
                        json!({"type": "string", "format": "password", "writeOnly": true, "examples": ["https://hooks.example.com/T000/B000/XXXX"]}),
                    ),
                ),
                (
                    "headers",
                    prop(
                        "Webhook Headers",
                        "Headers sent with every request; all of them are secret.",
                        json!({"type": "object"}),
                    ),
                ),
                (
                    "allow_private_urls",
                    prop(
                        "Allow Private URLs",
                        "Whether private and loopback addresses may be called.",
                        json!({"type": "boolean", "default": true}),
                    ),
                ),
                (
                    "verify",
                    prop(
                        "Verify",
                        "Whether the server's TLS certificate is verified.",
                        json!({"type": "boolean", "default": true}),
                    ),
                ),
            ],
            &["url"],
            &["url", "headers.*"],
        );
        protected_spec(
            ("Webhook", "Webhook", Self::SLUG),
            "An HTTP endpoint to call, with a secret URL and secret headers.",
            "let hook = Webhook::load(\"alerts\").await?;",
            fields,
            &[],
        )
    }
}

/// A directory on the local file system.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalFileSystem {
    /// The directory paths are relative to; the working directory when unset.
    #[serde(default)]
    pub basepath: Option<String>,
}

impl Block for LocalFileSystem {
    const SLUG: &'static str = "local-file-system";

    fn spec() -> BlockSpec {
        let fields = block_schema(
            "LocalFileSystem",
            Self::SLUG,
            "A directory on the local file system to read files from and write files to.",
            vec![(
                "basepath",
                prop(
                    "Basepath",
                    "The directory that paths are relative to.",
                    json!({"anyOf": [{"type": "string"}, {"type": "null"}], "default": null}),
                ),
            )],
            &[],
            &[],
        );
        protected_spec(
            ("Local File System", "LocalFileSystem", Self::SLUG),
            "A directory on the local file system.",
            "let fs = LocalFileSystem::load(\"scratch\").await?;",
            fields,
            &["get-directory", "put-directory", "read-path", "write-path"],
        )
    }
}

/// Any JSON value, for plain settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Json {
    /// The value.
    pub value: Value,
}

impl Block for Json {
    const SLUG: &'static str = "json";

    fn spec() -> BlockSpec {
        plain_spec(
            ("JSON", "Json", Self::SLUG),
            "Any JSON value, for settings that are not secret.",
            prop("Value", "A JSON-compatible value.", json!({})),
            "Any JSON value, for plain settings.",
        )
    }
}

/// A string, for plain settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StringBlock {
    /// The value.
    pub value: String,
}

impl Block for StringBlock {
    const SLUG: &'static str = "string";

    fn spec() -> BlockSpec {
        plain_spec(
            ("String", "StringBlock", Self::SLUG),
            "A string, for settings that are not secret.",
            prop("Value", "A string value.", json!({"type": "string"})),
            "A string, for plain settings.",
        )
    }
}

/// A point in time with its UTC offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DateTime {
    /// The value, as RFC 3339 on the wire. A value without an offset (as Python writes
    /// naive date-times) is read as UTC.
    #[serde(deserialize_with = "lenient_datetime")]
    pub value: chrono::DateTime<chrono::FixedOffset>,
}

fn lenient_datetime<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<chrono::DateTime<chrono::FixedOffset>, D::Error> {
    let text = String::deserialize(d)?;
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&text) {
        return Ok(t);
    }
    chrono::NaiveDateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S%.f")
        .map(|naive| naive.and_utc().fixed_offset())
        .map_err(|_| {
            serde::de::Error::custom("expected an RFC 3339 date-time such as 2024-01-01T00:00:00Z")
        })
}

impl Block for DateTime {
    const SLUG: &'static str = "date-time";

    fn spec() -> BlockSpec {
        plain_spec(
            ("Date Time", "DateTime", Self::SLUG),
            "A point in time with its UTC offset, such as a backfill start.",
            prop(
                "Value",
                "An RFC 3339 date and time.",
                json!({"type": "string", "format": "date-time"}),
            ),
            "A point in time, for plain settings.",
        )
    }
}

/// A block with one required `value` field: `(display name, Rust name, slug)`, the schema
/// description, the `value` property and the type's description. The schema title is the
/// display name without spaces (`Date Time` → `DateTime`).
fn plain_spec(
    names: (&str, &str, &str),
    schema_description: &str,
    value: Value,
    description: &str,
) -> BlockSpec {
    let (name, rust_name, slug) = names;
    let fields = block_schema(
        &name.replace(' ', ""),
        slug,
        schema_description,
        vec![("value", value)],
        &["value"],
        &[],
    );
    let example = code_example(
        rust_name,
        &format!("let setting = {rust_name}::load(\"my-setting\").await?;"),
    );
    BlockSpec {
        block_type: type_info(name, slug, rust_name, description, &example),
        fields,
        capabilities: Vec::new(),
        version: SCHEMA_VERSION.to_owned(),
    }
}

/// A protected built-in type (the server refuses to delete it): `(display name, Rust name,
/// slug)`, the type's description, the lines of its code example after the imports, its
/// schema and capabilities.
fn protected_spec(
    names: (&str, &str, &str),
    description: &str,
    example: &str,
    fields: Value,
    capabilities: &[&str],
) -> BlockSpec {
    let (name, rust_name, slug) = names;
    let mut block_type = type_info(
        name,
        slug,
        rust_name,
        description,
        &code_example(rust_name, example),
    );
    block_type.protected = true;
    BlockSpec {
        block_type,
        fields,
        capabilities: capabilities.iter().copied().map(String::from).collect(),
        version: SCHEMA_VERSION.to_owned(),
    }
}

/// A type's code example: `body` after the imports of `rust_name` and `BlockExt`.
fn code_example(rust_name: &str, body: &str) -> String {
    format!(
        "```rust\nuse block_types::catalog::{rust_name};\nuse registry_client::BlockExt;\n\n{body}\n```"
    )
}
