//! Administration over the API (all `admin`): tokens, the audit log, data keys and the
//! retention settings (versions per document, days of audit records).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};

use super::extract::{Body, Caller, Id, QueryParams};
use super::routes::{Route, delete, get, patch, post};
use super::{ApiResult, St};
use crate::store::{
    AuditQuery, AuditRecord, ChildTokenCreate, Grant, KeyStatus, MAX_CHILD_TTL, TokenCreate,
    TokenInfo,
};

/// Records re-encrypted per transaction by the background re-encryption after a rotation.
const REENCRYPT_BATCH: u32 = 200;

pub(super) fn routes() -> Vec<Route> {
    vec![
        post("/api/tokens", create_token)
            .admin()
            .tag("tokens")
            .summary("Create a token; the response holds the token, shown only this once")
            .body("TokenCreate")
            .returns(201, Some("CreatedToken")),
        post("/api/tokens/child", create_child_token)
            .reads()
            .tag("tokens")
            .summary("Mint a token for a subprocess (any token): scopes and grants within the caller's, a lifetime within the caller's remaining one and at most a day; revoked with the caller")
            .body("ChildTokenCreate")
            .returns(201, Some("CreatedToken"))
            .audited(),
        patch("/api/tokens/{id}", update_token)
            .admin()
            .tag("tokens")
            .summary("Change a token's grants (every replica applies them from its next request)")
            .body("TokenUpdate")
            .returns(200, Some("Token")),
        get("/api/tokens", list_tokens)
            .admin()
            .tag("tokens")
            .summary("List tokens (never their values)")
            .returns(200, Some("Token[]")),
        delete("/api/tokens/{id}", revoke_token)
            .admin()
            .tag("tokens")
            .summary("Revoke a token; it fails from the next request on")
            .returns(200, Some("Token")),
        get("/api/audit", audit)
            .admin()
            .tag("audit")
            .summary("Audit records, newest first; page with `before` = the last `seq` seen")
            .query(&[
                ("token_id", "string", "Only this token's records"),
                ("action", "string", "Only actions starting with this text"),
                ("outcome", "string", "ok, denied, failed or error"),
                ("target", "string", "Only targets containing this text"),
                ("request_id", "string", "Only this request"),
                ("since", "string", "At or after this time (RFC 3339)"),
                ("until", "string", "Before this time (RFC 3339)"),
                ("before", "integer", "Only records older than this seq"),
                (
                    "limit",
                    "integer",
                    "At most this many (default 100, at most 1000)",
                ),
            ])
            .returns(200, Some("AuditPage")),
        get("/api/keys", keys)
            .admin()
            .tag("keys")
            .summary("The active data key and, per key, the documents and versions it seals")
            .returns(200, Some("KeyStatus")),
        post("/api/keys/rotate", rotate)
            .admin()
            .tag("keys")
            .summary("Rotate the data key; existing secrets are re-encrypted in the background")
            .returns(202, Some("Rotation")),
        get("/api/settings", settings)
            .admin()
            .tag("settings")
            .summary("Server settings shared by every replica")
            .returns(200, Some("Settings")),
        patch("/api/settings", update_settings)
            .admin()
            .tag("settings")
            .summary(
                "Change settings; a lower retention prunes old versions (or audit records) at once",
            )
            .body("Settings")
            .returns(200, Some("Settings")),
    ]
}

async fn create_token(State(state): St, Body(body): Body<TokenCreate>) -> ApiResult<Response> {
    let created = state.store.create_token(body).await?;
    Ok(created_token(&created, StatusCode::CREATED))
}

async fn create_child_token(
    State(state): St,
    caller: Caller,
    Body(body): Body<ChildTokenCreate>,
) -> ApiResult<Response> {
    let Some(parent) = caller.token.as_deref() else {
        return Err(super::ApiError::Unauthorized(
            "this route needs a token".into(),
        ));
    };
    let created = state
        .store
        .create_child_token(parent, body, MAX_CHILD_TTL)
        .await?;
    Ok(created_token(&created, StatusCode::CREATED))
}

/// The body of `PATCH /api/tokens/{id}`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenUpdate {
    /// The new grants (empty: every block).
    grants: Vec<Grant>,
}

async fn update_token(
    State(state): St,
    Id(id): Id,
    Body(body): Body<TokenUpdate>,
) -> ApiResult<Json<TokenInfo>> {
    Ok(Json(state.store.set_token_grants(id, body.grants).await?))
}

/// The token's listing and, this once, the token itself.
pub(super) fn created_token(created: &crate::store::CreatedToken, status: StatusCode) -> Response {
    (status, Json(created_value(created))).into_response()
}

/// A new token as JSON: its listing and the token.
pub(super) fn created_value(created: &crate::store::CreatedToken) -> Value {
    let mut value = serde_json::to_value(&created.info).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert(
            "token".to_owned(),
            Value::String(created.token.expose_secret().to_owned()),
        );
    }
    value
}

async fn list_tokens(State(state): St) -> ApiResult<Json<Vec<TokenInfo>>> {
    Ok(Json(state.store.list_tokens().await?))
}

async fn revoke_token(State(state): St, Id(id): Id) -> ApiResult<Json<TokenInfo>> {
    Ok(Json(state.store.revoke_token(id).await?))
}

async fn audit(
    State(state): St,
    QueryParams(query): QueryParams<AuditQuery>,
) -> ApiResult<Json<Value>> {
    let records: Vec<AuditRecord> = state.store.list_audit(&query).await?;
    let limit = query.limit.unwrap_or(100);
    let next = (records.len() as i64 == limit)
        .then(|| records.last().map(|r| r.seq))
        .flatten();
    Ok(Json(json!({"records": records, "next_before": next})))
}

async fn keys(State(state): St) -> ApiResult<Json<KeyStatus>> {
    Ok(Json(state.store.key_status().await?))
}

/// Re-encrypts, in the background, what older keys seal (after a rotation, or to resume
/// one a restart interrupted); the outcome is logged.
pub(crate) fn start_reencryption(store: &std::sync::Arc<crate::store::Store>) {
    let handle = store.spawn_reencryption(REENCRYPT_BATCH);
    tokio::spawn(async move {
        match handle.await {
            Ok(Ok(n)) => tracing::info!(versions = n, "re-encryption after key rotation finished"),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "re-encryption after key rotation failed; it resumes on the next rotation, or from the console's keys page")
            }
            Err(e) => tracing::error!(error = %e, "re-encryption after key rotation stopped"),
        }
    });
}

/// 202: the new key is active for every write from now on; documents sealed under older
/// keys are re-encrypted by a background task, while reads and writes go on.
async fn rotate(State(state): St, caller: Caller) -> ApiResult<Response> {
    let active = state
        .store
        .rotate_data_key_by(caller.rights().token)
        .await?;
    start_reencryption(&state.store);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"active": active, "reencryption": "started"})),
    )
        .into_response())
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsUpdate {
    /// Versions kept per document (`null`: all). Absent: unchanged.
    #[serde(default, with = "double_option")]
    retention: Option<Option<u32>>,
    /// Days audit records are kept (`null`: for ever). Absent: unchanged.
    #[serde(default, with = "double_option")]
    audit_retention_days: Option<Option<u32>>,
    /// Hours change-feed events are kept (`null`: for ever). Absent: unchanged.
    #[serde(default, with = "double_option")]
    event_retention_hours: Option<Option<u32>>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
mod double_option {
    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<u32>>, D::Error> {
        Option::<u32>::deserialize(d).map(Some)
    }
}

async fn settings(State(state): St) -> ApiResult<Json<Value>> {
    Ok(Json(json!({
        "retention": state.store.retention().await?,
        "audit_retention_days": state.store.audit_retention_days().await?,
        "event_retention_hours": state.store.event_retention_hours().await?,
    })))
}

async fn update_settings(
    State(state): St,
    Body(body): Body<SettingsUpdate>,
) -> ApiResult<Json<Value>> {
    if let Some(days) = body.audit_retention_days {
        // Checked first, so a bad value changes neither setting.
        crate::store::Store::check_audit_retention_days(days)?;
    }
    if let Some(hours) = body.event_retention_hours {
        crate::store::Store::check_event_retention_hours(hours)?;
    }
    if let Some(retention) = body.retention {
        state.store.set_retention(retention).await?;
    }
    if let Some(days) = body.audit_retention_days {
        let pruned = state.store.set_audit_retention_days(days).await?;
        if pruned > 0 {
            tracing::info!(
                records = pruned,
                "pruned audit records past the new retention"
            );
        }
    }
    if let Some(hours) = body.event_retention_hours {
        let pruned = state.store.set_event_retention_hours(hours).await?;
        if pruned > 0 {
            tracing::info!(
                events = pruned,
                "pruned change-feed events past the new retention"
            );
        }
    }
    settings(State(state)).await
}
