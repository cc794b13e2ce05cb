//! The events socket `ws://…/api/events/in` that Prefect clients open after `Block.load`:
//! Prefect's auth handshake (`{"type": "auth", "token": …}`, the token being
//! `PREFECT_API_AUTH_STRING` = `<name>:<token>` or a bare token; an `Authorization` header
//! on the upgrade also counts), then the events. Each block-load event is kept in memory and
//! written to the audit log under the token that sent it.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::AppState;
use super::auth::{ClientIp, RequestId, authenticate, presented_token, token_of_auth_string};
use super::routes::{Route, get};
use crate::store::{NewAuditRecord, Scope};

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

pub(super) fn routes() -> Vec<Route> {
    vec![
        get("/api/events/in", upgrade)
            .socket()
            .unversioned()
            .tag("events")
            .summary("Prefect's events socket (websocket, subprotocol `prefect`); the token comes in the auth message")
            .returns(101, None),
    ]
}

async fn upgrade(
    State(state): State<AppState>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let header_token = presented_token(&headers);
    ws.protocols(["prefect"]).on_upgrade(move |socket| {
        serve(
            state,
            socket,
            Connection {
                request_id,
                ip,
                header_token,
            },
        )
    })
}

/// What the upgrade request told about the connection.
struct Connection {
    request_id: String,
    ip: std::net::IpAddr,
    header_token: Option<String>,
}

async fn audit(
    state: &AppState,
    conn: &Connection,
    token_id: Option<uuid::Uuid>,
    action: &str,
    target: String,
    status: u16,
) {
    let record = NewAuditRecord {
        at: Utc::now(),
        request_id: conn.request_id.clone(),
        token_id,
        action: action.to_owned(),
        target,
        outcome: super::auth::outcome(
            axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::OK),
        ),
        status,
    };
    if let Err(e) = state.audit.record(record).await {
        tracing::error!(error = %e, "could not store an events-socket audit record");
    }
}

async fn serve(state: AppState, mut socket: WebSocket, conn: Connection) {
    let mut token_id = None;
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
            let token = value
                .get("token")
                .and_then(Value::as_str)
                .map(|t| token_of_auth_string(t).to_owned())
                .or_else(|| conn.header_token.clone());
            match authenticate(&state, conn.ip, token.as_deref(), Scope::Read).await {
                Ok(info) => {
                    token_id = Some(info.id);
                    let reply = json!({"type": "auth_success"}).to_string();
                    if socket.send(Message::Text(reply.into())).await.is_err() {
                        break;
                    }
                }
                Err((error, denied_id, record)) => {
                    if record {
                        audit(
                            &state,
                            &conn,
                            denied_id,
                            "GET /api/events/in",
                            "/api/events/in".to_owned(),
                            error.status().as_u16(),
                        )
                        .await;
                    }
                    let reply =
                        json!({"type": "auth_failure", "reason": error.to_string()}).to_string();
                    socket.send(Message::Text(reply.into())).await.ok();
                    break;
                }
            }
            continue;
        }
        let Some(token_id) = token_id else {
            // Events before a successful handshake are not accepted.
            break;
        };
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
            audit(
                &state,
                &conn,
                Some(token_id),
                "block.loaded",
                format!("{event} {resource}"),
                101,
            )
            .await;
            state.record_event(BlockLoadEvent {
                event: event.to_owned(),
                resource,
                received: Utc::now(),
            });
        }
    }
}
