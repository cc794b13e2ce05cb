//! `blocks webhook ls|create|delete|deliveries|test`: webhooks on a running server (admin).

use serde_json::json;

use super::client;
use super::output::{Format, emit, print};
use block_types::EventKind;
use block_types::events::EventFilter;
use block_types::webhooks::WebhookCreate;
use registry_client::NewWebhook;

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

/// A webhook's filter as one short word list (`type=gcp-* kinds=…`).
fn filter_text(filter: &EventFilter) -> String {
    let mut parts = Vec::new();
    for (key, glob) in [("type", &filter.type_slug), ("name", &filter.name)] {
        if let Some(glob) = glob {
            parts.push(format!("{key}={glob}"));
        }
    }
    if !filter.kinds.is_empty() {
        let kinds: Vec<&str> = filter.kinds.iter().map(|k| k.as_str()).collect();
        parts.push(format!("kinds={}", kinds.join(",")));
    }
    if parts.is_empty() {
        "everything".to_owned()
    } else {
        parts.join(" ")
    }
}

/// A time as the API writes it.
fn timestamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn webhook_id(id: &str) -> anyhow::Result<uuid::Uuid> {
    id.parse()
        .map_err(|_| super::usage(format!("{id:?} is not a webhook id (a UUID)")))
}

/// Runs a `blocks webhook` command.
pub async fn webhook(command: &WebhookCommand, format: Format) -> anyhow::Result<()> {
    let client = client()?;
    match command {
        WebhookCommand::Ls => {
            let hooks = client.webhooks().await?;
            let rows: Vec<Vec<String>> = hooks
                .iter()
                .map(|h| {
                    vec![
                        h.id.to_string(),
                        h.url.clone(),
                        filter_text(&h.filter),
                        h.description.clone(),
                        timestamp(h.created),
                    ]
                })
                .collect();
            print(
                format,
                &hooks,
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
            let kinds = kinds
                .iter()
                .map(|kind| {
                    kind.parse::<EventKind>()
                        .map_err(|e| super::usage(format!("--kind {kind}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let body = WebhookCreate {
                url: url.clone(),
                description: description.clone(),
                filter: EventFilter {
                    type_slug: block_type.clone(),
                    name: name.clone(),
                    kinds,
                },
            };
            // The signing secret is shown once: an answer this build cannot read (a newer
            // server's) is printed as it came rather than lost.
            let created = match client.create_webhook(&body).await? {
                NewWebhook::Created(created) => created,
                NewWebhook::Unread { answer, problem } => {
                    emit(&serde_json::to_string_pretty(&answer)?);
                    anyhow::bail!(
                        "the webhook was created, but its answer (printed above, with its signing secret) has a shape this blocks does not know: {problem}"
                    );
                }
            };
            match format {
                Format::Json => emit(&serde_json::to_string_pretty(&created)?),
                Format::Table => {
                    emit(&format!("webhook {} created", created.webhook.id));
                    emit(
                        "signing secret (shown once; the receiver verifies Blocks-Signature with it):",
                    );
                    emit(&created.secret);
                }
            }
        }
        WebhookCommand::Delete { id } => {
            client.delete_webhook(webhook_id(id)?).await?;
            if format == Format::Table {
                emit(&format!("webhook {id} deleted"));
            } else {
                emit(&json!({"deleted": id}).to_string());
            }
        }
        WebhookCommand::Deliveries { id, limit } => {
            let deliveries = client.webhook_deliveries(webhook_id(id)?, *limit).await?;
            let rows: Vec<Vec<String>> = deliveries
                .iter()
                .map(|d| {
                    vec![
                        timestamp(d.created),
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
                &deliveries,
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
            let result = client.test_webhook(webhook_id(id)?).await?;
            match format {
                Format::Json => emit(&serde_json::to_string_pretty(&result)?),
                Format::Table if result.delivered => emit(&format!(
                    "delivered: {} in {} ms",
                    result.status.map(|s| s.to_string()).unwrap_or_default(),
                    result.elapsed_ms
                )),
                Format::Table => anyhow::bail!(
                    "not delivered: {}",
                    result.error.as_deref().unwrap_or("the receiver refused it")
                ),
            }
        }
    }
    Ok(())
}
