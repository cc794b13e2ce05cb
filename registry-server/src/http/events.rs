//! The events socket `ws://…/api/events/in` that Prefect clients open after `Block.load`:
//! it accepts the auth handshake and the events, and keeps each block-load event.

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::AppState;

/// A `prefect.block.<slug>.loaded` event: which document was loaded, and when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BlockLoadEvent {
    /// The event name, `prefect.block.<slug>.loaded`.
    pub event: String,
    /// The resource id, `prefect.block-document.<uuid>`.
    pub resource: String,
    /// When the server received it.
    pub received: DateTime<Utc>,
}

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/events/in", get(upgrade))
}

async fn upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    ws.protocols(["prefect"])
        .on_upgrade(move |socket| serve(state, socket))
}

async fn serve(state: AppState, mut socket: WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        let Message::Text(text) = message else {
            if matches!(message, Message::Close(_)) {
                break;
            }
            continue;
        };
        let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        if value.get("type").and_then(Value::as_str) == Some("auth") {
            // The token is not checked here yet; tokens and scopes come with the auth layer.
            let reply = json!({"type": "auth_success"}).to_string();
            if socket.send(Message::Text(reply.into())).await.is_err() {
                break;
            }
            continue;
        }
        let event = value
            .get("event")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if event.starts_with("prefect.block.") && event.ends_with(".loaded") {
            let resource = value
                .get("resource")
                .and_then(|r| r.get("prefect.resource.id"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            tracing::info!(event, resource = %resource, "block loaded");
            state.record_event(BlockLoadEvent {
                event: event.to_owned(),
                resource,
                received: Utc::now(),
            });
        }
    }
}
