//! The events socket `ws://…/api/events/in` that Prefect clients open after `Block.load`:
//! Prefect's auth handshake (`{"type": "auth", "token": …}`, the token being
//! `PREFECT_API_AUTH_STRING` = `<name>:<token>` or a bare token; an `Authorization` header
//! on the upgrade also counts), then the events. A block-load event is a claim by the
//! client, so it is checked before it is kept in memory and written to the audit log under
//! the token that sent it: the document must exist and be of the type the event names, the
//! token must still be valid and may read it, and each token reports at most
//! [`super::auth::DEFAULT_MAX_EVENTS`] per minute (the first event over that is audited, the
//! rest of the minute's are dropped).

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::AppState;
use super::auth::{
    ClientIp, EventAdmission, RequestId, authenticate, presented_token, token_of_auth_string,
};
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
    ws.protocols(["prefect"])
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| {
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

/// Events are small JSON documents; a larger message (or frame) closes the socket.
const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// A connection that has not authenticated by then is closed.
const AUTH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// The block-load event's slug and document id, when `value` is one
/// (`prefect.block.<slug>.loaded` about `prefect.block-document.<uuid>`).
fn block_load(value: &Value) -> Option<(&str, uuid::Uuid)> {
    let event = value.get("event")?.as_str()?;
    let slug = event
        .strip_prefix("prefect.block.")?
        .strip_suffix(".loaded")?;
    block_types::validate::block_type_slug(slug).ok()?;
    if slug.len() > 200 {
        return None;
    }
    let resource = value
        .get("resource")?
        .get("prefect.resource.id")?
        .as_str()?
        .strip_prefix("prefect.block-document.")?;
    Some((slug, uuid::Uuid::parse_str(resource).ok()?))
}

/// What the upgrade request told about the connection.
struct Connection {
    request_id: String,
    ip: std::net::IpAddr,
    header_token: Option<String>,
}

/// Stores an audit record; false when it could not be stored.
async fn audit(
    state: &AppState,
    conn: &Connection,
    token_id: Option<uuid::Uuid>,
    action: &str,
    target: String,
    status: u16,
) -> bool {
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
    match state.audit.record(record).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "could not store an events-socket audit record; closing the socket");
            false
        }
    }
}

async fn serve(state: AppState, mut socket: WebSocket, conn: Connection) {
    let mut token_id = None;
    let mut token: Option<String> = None;
    loop {
        let next = if token_id.is_none() {
            match tokio::time::timeout(AUTH_DEADLINE, socket.recv()).await {
                Ok(next) => next,
                Err(_) => break,
            }
        } else {
            socket.recv().await
        };
        let Some(Ok(message)) = next else { break };
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
            let presented = value
                .get("token")
                .and_then(Value::as_str)
                .map(|t| token_of_auth_string(t).to_owned())
                .or_else(|| conn.header_token.clone());
            if presented.is_none() {
                // Prefect's events client sends PREFECT_API_AUTH_STRING here, never
                // PREFECT_API_KEY: no credential at all is not a guess, so it does not count
                // towards the client's failed attempts.
                audit(
                    &state,
                    &conn,
                    None,
                    "GET /api/events/in",
                    "/api/events/in".to_owned(),
                    401,
                )
                .await;
                let reason = "the events socket needs a token in its auth message: set PREFECT_API_AUTH_STRING=<any name>:<token> (Prefect sends PREFECT_API_KEY only over HTTP)";
                let reply = json!({"type": "auth_failure", "reason": reason}).to_string();
                socket.send(Message::Text(reply.into())).await.ok();
                break;
            }
            match authenticate(&state, conn.ip, presented.as_deref(), Scope::Read).await {
                Ok(info) => {
                    token_id = Some(info.id);
                    token = presented;
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
                    let reason = if error.status().is_server_error() {
                        "the server could not check the token; try again later".to_owned()
                    } else {
                        error.to_string()
                    };
                    let reply = json!({"type": "auth_failure", "reason": reason}).to_string();
                    socket.send(Message::Text(reply.into())).await.ok();
                    break;
                }
            }
            continue;
        }
        let Some(id) = token_id else {
            // Events before a successful handshake are not accepted.
            break;
        };
        let Some((slug, document)) = block_load(&value) else {
            continue;
        };
        // Over the token's budget: dropped from memory, at no cost to the database.
        let admission = state.auth.admit_event(id);
        if admission == (EventAdmission::Excess { first: false }) {
            continue;
        }
        // A token revoked (or expired) while the socket is open stops it here.
        let info = match state
            .store
            .authenticate(token.as_deref().unwrap_or_default())
            .await
        {
            Ok(Ok(info)) => info,
            _ => break,
        };
        if admission != EventAdmission::Admitted {
            let (max, window) = state.auth.event_limit();
            let target = format!(
                "/api/events/in: over {max} block-load events in {} s; the rest of the window's are dropped",
                window.as_secs()
            );
            if !audit(&state, &conn, Some(id), "block.loaded", target, 429).await {
                break;
            }
            continue;
        }
        // The claim must name a document this token may read (its grants, if any, cover
        // it), of the type it names; anything else is dropped unrecorded, so the socket
        // tells nothing of documents the token cannot see.
        match state.store.document_identity(document).await {
            Ok(Some(doc)) if doc.slug == slug && info.may(Scope::Read, &doc.slug, &doc.name) => {}
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "could not check a block-load event; dropping it");
                continue;
            }
        }
        let event = format!("prefect.block.{slug}.loaded");
        let resource = format!("prefect.block-document.{document}");
        tracing::info!(event, resource = %resource, "block loaded");
        if !audit(
            &state,
            &conn,
            Some(id),
            "block.loaded",
            format!("{event} {resource}"),
            101,
        )
        .await
        {
            break;
        }
        state.record_event(BlockLoadEvent {
            event,
            resource,
            received: Utc::now(),
        });
    }
}
