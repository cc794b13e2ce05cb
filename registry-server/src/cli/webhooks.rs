//! `blocks webhook ls|create|delete|deliveries|test`: webhooks on a running server (admin).

use serde::Deserialize;
use serde_json::{Value, json};

use super::client;
use super::output::{Format, emit, print, text};
use registry_client::Method;

/// `blocks webhook …`.
#[derive(Debug, clap::Subcommand)]
pub enum WebhookCommand {
    /// Every webhook.
    Ls,
    /// Register a webhook; prints its signing secret once.
    Create {
        /// Where deliveries are POSTed (https; http only to loopback).
        url: String,
        /// Only events of block types whose slug matches this glob.
        #[arg(long = "type")]
        block_type: Option<String>,
        /// Only events of blocks whose name matches this glob.
        #[arg(long)]
        name: Option<String>,
        /// Only this kind (repeatable), e.g. block-document.updated.
        #[arg(long = "kind")]
        kinds: Vec<String>,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete a webhook (its pending deliveries are not sent).
    Delete {
        /// The webhook's id.
        id: String,
    },
    /// A webhook's deliveries, newest first.
    Deliveries {
        /// The webhook's id.
        id: String,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Send a signed test event now and say how it went.
    Test {
        /// The webhook's id.
        id: String,
    },
}

#[derive(Debug, Deserialize)]
struct Webhook {
    id: String,
    url: String,
    description: String,
    filter: Value,
    created: String,
}

#[derive(Debug, Deserialize)]
struct Delivery {
    event_id: i64,
    kind: String,
    state: String,
    attempts: i64,
    last_status: Option<i64>,
    last_error: Option<String>,
    created: String,
}

/// A webhook's filter as one short word list (`type=gcp-* kinds=…`).
fn filter_text(filter: &Value) -> String {
    let mut parts = Vec::new();
    for key in ["type", "name"] {
        if let Some(glob) = filter[key].as_str() {
            parts.push(format!("{key}={glob}"));
        }
    }
    if let Some(kinds) = filter["kinds"].as_array().filter(|k| !k.is_empty()) {
        let kinds: Vec<String> = kinds.iter().map(text).collect();
        parts.push(format!("kinds={}", kinds.join(",")));
    }
    if parts.is_empty() {
        "everything".to_owned()
    } else {
        parts.join(" ")
    }
}

fn id_path(id: &str, rest: &str) -> anyhow::Result<String> {
    let id: uuid::Uuid = id
        .parse()
        .map_err(|_| super::usage(format!("{id:?} is not a webhook id (a UUID)")))?;
    Ok(format!("webhooks/{id}{rest}"))
}

/// Runs a `blocks webhook` command.
pub async fn webhook(command: &WebhookCommand, format: Format) -> anyhow::Result<()> {
    let client = client()?;
    match command {
        WebhookCommand::Ls => {
            let all = client
                .call::<(), Value>(Method::GET, "webhooks", None)
                .await?;
            let hooks: Vec<Webhook> = serde_json::from_value(all.clone())?;
            let rows: Vec<Vec<String>> = hooks
                .iter()
                .map(|h| {
                    vec![
                        h.id.clone(),
                        h.url.clone(),
                        filter_text(&h.filter),
                        h.description.clone(),
                        h.created.clone(),
                    ]
                })
                .collect();
            print(
                format,
                &all,
                &["ID", "URL", "EVENTS", "DESCRIPTION", "CREATED"],
                &rows,
            );
        }
        WebhookCommand::Create {
            url,
            block_type,
            name,
            kinds,
            description,
        } => {
            let body = json!({
                "url": url,
                "description": description,
                "filter": {"type": block_type, "name": name, "kinds": kinds},
            });
            let created = client
                .call::<_, Value>(Method::POST, "webhooks", Some(&body))
                .await?;
            match format {
                Format::Json => emit(&serde_json::to_string_pretty(&created)?),
                Format::Table => {
                    emit(&format!("webhook {} created", text(&created["id"])));
                    emit(
                        "signing secret (shown once; the receiver verifies Blocks-Signature with it):",
                    );
                    emit(&text(&created["secret"]));
                }
            }
        }
        WebhookCommand::Delete { id } => {
            client
                .call::<(), Value>(Method::DELETE, &id_path(id, "")?, None)
                .await?;
            if format == Format::Table {
                emit(&format!("webhook {id} deleted"));
            } else {
                emit(&json!({"deleted": id}).to_string());
            }
        }
        WebhookCommand::Deliveries { id, limit } => {
            let all = client
                .call::<(), Value>(
                    Method::GET,
                    &id_path(id, &format!("/deliveries?limit={limit}"))?,
                    None,
                )
                .await?;
            let deliveries: Vec<Delivery> = serde_json::from_value(all.clone())?;
            let rows: Vec<Vec<String>> = deliveries
                .iter()
                .map(|d| {
                    vec![
                        d.created.clone(),
                        d.event_id.to_string(),
                        d.kind.clone(),
                        d.state.clone(),
                        d.attempts.to_string(),
                        d.last_status.map(|s| s.to_string()).unwrap_or_default(),
                        d.last_error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print(
                format,
                &all,
                &[
                    "QUEUED",
                    "EVENT",
                    "KIND",
                    "STATE",
                    "ATTEMPTS",
                    "STATUS",
                    "LAST ERROR",
                ],
                &rows,
            );
        }
        WebhookCommand::Test { id } => {
            let result = client
                .call::<(), Value>(Method::POST, &id_path(id, "/test")?, None)
                .await?;
            match format {
                Format::Json => emit(&serde_json::to_string_pretty(&result)?),
                Format::Table if result["delivered"] == true => emit(&format!(
                    "delivered: {} in {} ms",
                    text(&result["status"]),
                    text(&result["elapsed_ms"])
                )),
                Format::Table => anyhow::bail!(
                    "not delivered: {}",
                    result["error"]
                        .as_str()
                        .unwrap_or("the receiver refused it")
                ),
            }
        }
    }
    Ok(())
}
