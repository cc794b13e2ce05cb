//! Webhooks on the wire: a webhook as the admin API takes and shows it, the answer that
//! shows its signing secret once, its deliveries, and the outcome of a test send.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::events::EventFilter;

/// A webhook as the API shows it (never its secret).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Webhook {
    /// Its id.
    pub id: Uuid,
    /// Where deliveries are POSTed.
    pub url: String,
    /// What it is for.
    pub description: String,
    /// Which events it receives.
    pub filter: EventFilter,
    /// When it was registered.
    #[serde(with = "crate::model::timestamp")]
    pub created: DateTime<Utc>,
    /// The token that registered it.
    pub token_id: Option<Uuid>,
}

/// What registering a webhook takes.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookCreate {
    /// Where deliveries are POSTed (checked by the caller: scheme and address rules).
    pub url: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// Which events it receives.
    #[serde(default)]
    pub filter: EventFilter,
}

/// The answer to registering a webhook: the webhook and its signing secret, shown once.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct WebhookCreated {
    /// The webhook.
    #[serde(flatten)]
    pub webhook: Webhook,
    /// The secret deliveries are signed with (`Blocks-Signature`).
    pub secret: String,
}

impl std::fmt::Debug for WebhookCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookCreated")
            .field("webhook", &self.webhook)
            .field("secret", &"[redacted]")
            .finish()
    }
}

/// One delivery as the API shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Delivery {
    /// Its id (the `Blocks-Delivery-Id` header; the same on every attempt).
    pub id: Uuid,
    /// The event's id.
    pub event_id: i64,
    /// The event's kind.
    pub kind: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    /// Attempts so far.
    pub attempts: i64,
    /// The last answer's status, if one came.
    pub last_status: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was queued.
    #[serde(with = "crate::model::timestamp")]
    pub created: DateTime<Utc>,
    /// When the next attempt is due (pending ones).
    #[serde(with = "crate::model::timestamp")]
    pub next_attempt: DateTime<Utc>,
    /// When it was delivered or given up.
    pub finished: Option<String>,
}

/// The answer to `POST /api/webhooks/{id}/test`: how one signed `webhook.test` event sent
/// now went (not retried).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WebhookTest {
    /// Whether the receiver answered 2xx.
    pub delivered: bool,
    /// The answer's status, if one came.
    pub status: Option<u16>,
    /// What went wrong, in words (never the receiver's body); none when delivered.
    pub error: Option<String>,
    /// How long the send took.
    pub elapsed_ms: u64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_created_webhooks_debug_hides_its_secret() {
        let created: WebhookCreated = serde_json::from_value(serde_json::json!({
            "id": Uuid::nil(),
            "url": "https://example.com/hook",
            "description": "",
            "filter": {"type": "gcp-*", "kinds": ["block-document.updated"]},
            "created": "2026-01-01T00:00:00.000000Z",
            "token_id": null,
            "secret": "whsec_canary-4f1e",
        }))
        .unwrap();
        assert!(!format!("{created:?}").contains("canary"));
        assert_eq!(created.webhook.filter.type_slug.as_deref(), Some("gcp-*"));
    }

    #[test]
    fn a_test_outcome_keeps_its_field_order_and_nulls() {
        let outcome = WebhookTest {
            delivered: true,
            status: Some(204),
            error: None,
            elapsed_ms: 12,
        };
        assert_eq!(
            serde_json::to_string(&outcome).unwrap(),
            r#"{"delivered":true,"status":204,"error":null,"elapsed_ms":12}"#
        );
    }
}
