//! Sign-in with a workload identity: `POST /api/auth/jwt {"role", "jwt"}` verifies a JWT
//! its platform gave the workload (a Kubernetes service-account token, a CI job's OIDC
//! token) against an issuer an admin trusts, matches the role's claims, and answers a
//! short-lived token with the role's scopes and grants. The admin routes configure issuers
//! and roles.
//!
//! Verification uses `jsonwebtoken`: RS256 and ES256 only (so `none` and HMAC signed with
//! a public key are refused before any key is looked at), the issuer's `iss` and this
//! server's `aud`, `exp` and `nbf` with 60 s of skew, an `iat` not in the future. Keys come
//! from the issuer's configuration only (a JWKS kept in the store, or its JWKS URL, fetched
//! with a timeout and a size cap, by one request at a time per issuer, cached for an hour
//! and fetched again when a token names an unknown `kid`, at most every two seconds; keys
//! not fetched successfully for a day are no longer used); never from a URL in the token.
//! A token lives as long as the role says, but never past the JWT's own `exp`. Refusals
//! count toward the per-address limit on failed authentications (429 past it). Every
//! exchange is audited with the role, issuer and subject, never the JWT.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::auth::{ClientIp, RequestId};
use super::extract::{Body, Id};
use super::routes::{Route, delete, get, post};
use super::{ApiError, ApiResult, AppState, St};
use crate::store::{
    Issuer, IssuerCreate, NewAuditRecord, Role, RoleConfig, TokenCreate, Ttl, public_keys,
};

/// Clock skew allowed on `exp`, `nbf` and `iat`.
const LEEWAY_SECONDS: u64 = 60;
/// The longest JWT accepted.
const MAX_JWT_BYTES: usize = 16 * 1024;
/// The largest JWKS document fetched.
const MAX_FETCHED_JWKS: usize = 256 * 1024;
/// How long fetched keys are used before they are fetched again.
const KEYS_FRESH_FOR: Duration = Duration::from_secs(3600);
/// The least time between two fetches of one issuer's keys (an unknown `kid` asks for
/// one; a flood of made-up kids cannot turn into a flood of fetches).
const MIN_REFETCH: Duration = Duration::from_secs(2);
/// How long a key fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys last fetched successfully longer ago than this are not used (an issuer whose keys
/// cannot be fetched cannot keep a withdrawn key trusted forever).
const KEYS_USABLE_FOR: Duration = Duration::from_secs(24 * 3600);

pub(super) fn routes() -> Vec<Route> {
    vec![
        post("/api/auth/jwt", exchange)
            .public()
            .unversioned()
            .tag("auth")
            .summary("Exchange a workload's identity token (JWT) for a short-lived token of a role; audited")
            .body("JwtLogin")
            .returns(200, Some("CreatedToken")),
        get("/api/auth/issuers", list_issuers)
            .admin()
            .tag("auth")
            .summary("Trusted JWT issuers")
            .returns(200, Some("Issuer[]")),
        post("/api/auth/issuers", create_issuer)
            .admin()
            .tag("auth")
            .summary("Trust a JWT issuer: its iss, the audience, and its keys (jwks_url or jwks)")
            .body("IssuerCreate")
            .returns(201, Some("Issuer")),
        delete("/api/auth/issuers/{id}", delete_issuer)
            .admin()
            .tag("auth")
            .summary("Stop trusting an issuer (refused while roles use it)")
            .returns(204, None),
        get("/api/auth/roles", list_roles)
            .admin()
            .tag("auth")
            .summary("Roles a workload identity may sign in to")
            .returns(200, Some("Role[]")),
        super::routes::put("/api/auth/roles/{name}", put_role)
            .admin()
            .tag("auth")
            .summary("Create or replace a role: the issuer, the claims to match, and the scopes, grants and lifetime of its tokens")
            .body("RoleConfig")
            .returns(200, Some("Role")),
        delete("/api/auth/roles/{name}", delete_role)
            .admin()
            .tag("auth")
            .summary("Delete a role (the tokens it issued run until they expire)")
            .returns(204, None),
    ]
}

/// Keys fetched from issuers' JWKS URLs, by issuer id.
#[derive(Debug)]
pub struct IdentityKeys {
    http: reqwest::Client,
    fetched: Mutex<HashMap<Uuid, Fetched>>,
    /// One fetch at a time per issuer.
    fetching: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Debug, Clone)]
struct Fetched {
    /// The keys of the last successful fetch, and when it was.
    keys: Option<(JwkSet, Instant)>,
    /// When a fetch was last tried.
    tried: Instant,
}

impl Default for IdentityKeys {
    fn default() -> Self {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            http,
            fetched: Mutex::default(),
            fetching: Mutex::default(),
        }
    }
}

impl IdentityKeys {
    fn cached(&self, issuer: Uuid) -> Option<Fetched> {
        self.fetched.lock().get(&issuer).cloned()
    }

    /// The issuer's keys: kept in the store, or fetched (again when stale, or when
    /// `refetch` and the last try is old enough).
    async fn keys(&self, issuer: &Issuer, refetch: bool) -> Result<JwkSet, Refusal> {
        if let Some(jwks) = &issuer.jwks {
            return Ok(public_keys(jwks));
        }
        let Some(url) = &issuer.jwks_url else {
            return Err(Refusal::unavailable("the issuer has no keys configured"));
        };
        let due = |cached: &Option<Fetched>| match cached {
            None => true,
            Some(f) => {
                let age = f.keys.as_ref().map(|(_, at)| at.elapsed());
                (age.is_none_or(|a| a > KEYS_FRESH_FOR) || refetch)
                    && f.tried.elapsed() >= MIN_REFETCH
            }
        };
        if due(&self.cached(issuer.id)) {
            let gate = self.fetching.lock().entry(issuer.id).or_default().clone();
            let _one = gate.lock().await;
            // Another request may have fetched while this one waited.
            if due(&self.cached(issuer.id)) {
                let fetched = self.fetch(url).await;
                if let Err(e) = &fetched {
                    tracing::warn!(issuer = %issuer.issuer, error = %e, "could not fetch an issuer's keys");
                }
                let mut map = self.fetched.lock();
                let previous = map.get(&issuer.id).and_then(|f| f.keys.clone());
                map.insert(
                    issuer.id,
                    Fetched {
                        keys: fetched.ok().map(|k| (k, Instant::now())).or(previous),
                        tried: Instant::now(),
                    },
                );
            }
        }
        self.cached(issuer.id)
            .and_then(|f| f.keys)
            .filter(|(_, at)| at.elapsed() < KEYS_USABLE_FOR)
            .map(|(keys, _)| keys)
            .ok_or_else(|| {
                Refusal::unavailable("the issuer's keys could not be fetched; try again shortly")
            })
    }

    async fn fetch(&self, url: &str) -> Result<JwkSet, String> {
        let mut response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("reading failed: {e}"))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_FETCHED_JWKS {
                return Err(format!("larger than {} KiB", MAX_FETCHED_JWKS >> 10));
            }
        }
        let document: Value =
            serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))?;
        let keys = public_keys(&document);
        if keys.keys.is_empty() {
            return Err("no RS256 or ES256 signing key in the document".to_owned());
        }
        Ok(keys)
    }
}

/// Why an exchange is refused: 401 (the token or role) or 503 (the issuer's keys).
struct Refusal {
    status: StatusCode,
    reason: String,
}

impl Refusal {
    fn denied(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            reason: reason.into(),
        }
    }

    fn unavailable(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: reason.into(),
        }
    }
}

/// The body of `POST /api/auth/jwt`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtLogin {
    role: String,
    jwt: String,
}

/// A claim of a token that has not been verified yet, for the audit record only.
fn unverified_claim(jwt: &str, name: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    claims
        .get(name)?
        .as_str()
        .map(|s| s.chars().take(200).collect())
}

async fn exchange(
    State(state): St,
    Extension(request_id): Extension<RequestId>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    Body(body): Body<JwtLogin>,
) -> Response {
    // The sign-in and its audit record run to their end even if the client goes away:
    // no token is left unrecorded.
    let task = tokio::spawn(async move { sign_in(&state, request_id, ip, body).await });
    task.await
        .unwrap_or_else(|e| ApiError::Internal(format!("the sign-in failed: {e}")).into_response())
}

async fn sign_in(
    state: &AppState,
    request_id: RequestId,
    ip: std::net::IpAddr,
    body: JwtLogin,
) -> Response {
    let role_name: String = body.role.chars().take(255).collect();
    if let Some((wait, first)) = state.auth.sign_in_refused(ip) {
        if first {
            let record = NewAuditRecord {
                at: chrono::Utc::now(),
                request_id: request_id.0,
                token_id: None,
                action: "POST /api/auth/jwt".to_owned(),
                target: format!(
                    "/api/auth/jwt role={role_name:?} refused: too many failed sign-ins from this address"
                ),
                outcome: "denied",
                status: 429,
            };
            if state.audit.record(record).await.is_err() {
                return ApiError::Unavailable("the refusal could not be recorded".into())
                    .into_response();
            }
        }
        return ApiError::TooManyRequests(wait).into_response();
    }
    let outcome = if body.jwt.len() > MAX_JWT_BYTES {
        Err(Refusal::denied(format!(
            "the identity token is longer than {} KiB",
            MAX_JWT_BYTES >> 10
        )))
    } else {
        verify(state, &body).await
    };
    let (token_id, status, issuer, subject) = match &outcome {
        Ok((created, claims)) => (
            Some(created.info.id),
            StatusCode::OK,
            claims.get("iss").and_then(Value::as_str).map(str::to_owned),
            claims.get("sub").and_then(Value::as_str).map(str::to_owned),
        ),
        Err(refusal) => {
            let claimed = |name| {
                (body.jwt.len() <= MAX_JWT_BYTES)
                    .then(|| unverified_claim(&body.jwt, name))
                    .flatten()
                    .map(|v| format!("{v} (unverified)"))
            };
            (None, refusal.status, claimed("iss"), claimed("sub"))
        }
    };
    if status == StatusCode::UNAUTHORIZED {
        use sha2::Digest as _;
        state
            .auth
            .sign_in_failed(ip, hex::encode(sha2::Sha256::digest(body.jwt.as_bytes())));
    }
    let mut target = format!(
        "/api/auth/jwt role={role_name:?} issuer={:?} subject={:?}",
        issuer.as_deref().unwrap_or("-"),
        subject.as_deref().unwrap_or("-"),
    );
    if let Err(refusal) = &outcome {
        target.push_str(&format!(" refused: {}", refusal.reason));
    }
    let record = NewAuditRecord {
        at: chrono::Utc::now(),
        request_id: request_id.0,
        token_id,
        action: "POST /api/auth/jwt".to_owned(),
        target,
        outcome: super::auth::outcome(status),
        status: status.as_u16(),
    };
    if let Err(e) = state.audit.record(record).await {
        tracing::error!(error = %e, "answering 503: a sign-in could not be recorded");
        if let Ok((created, _)) = &outcome {
            // Not answered, so never used: take it back.
            let _ = state.store.revoke_token(created.info.id).await;
        }
        return ApiError::Unavailable("the sign-in could not be recorded; try again".into())
            .into_response();
    }
    match outcome {
        Ok((created, _)) => {
            let mut value = super::admin::created_value(&created);
            // Seconds left, as OAuth answers: what a client schedules its renewal by.
            let left = created
                .info
                .expires
                .map_or(0, |e| (e - chrono::Utc::now()).num_seconds().max(0));
            value["expires_in"] = Value::from(left);
            let mut response = Json(value).into_response();
            response.headers_mut().insert(
                axum::http::header::CACHE_CONTROL,
                axum::http::HeaderValue::from_static("no-store"),
            );
            response
        }
        Err(refusal) if refusal.status == StatusCode::UNAUTHORIZED => {
            ApiError::Unauthorized(refusal.reason).into_response()
        }
        Err(refusal) => ApiError::Unavailable(refusal.reason).into_response(),
    }
}

/// Verifies the JWT for the role and mints its token.
async fn verify(
    state: &AppState,
    body: &JwtLogin,
) -> Result<(crate::store::CreatedToken, Map<String, Value>), Refusal> {
    let role: Role = match state.store.role(&body.role).await {
        Ok(Some(role)) => role,
        Ok(None) => {
            return Err(Refusal::denied(format!(
                "there is no role named {:?}",
                body.role.chars().take(255).collect::<String>()
            )));
        }
        Err(e) => {
            tracing::error!(error = %e, "could not read a role");
            return Err(Refusal::unavailable(
                "the server could not read the role; try again",
            ));
        }
    };
    let issuer = match state.store.issuer(&role.issuer).await {
        Ok(Some(issuer)) => issuer,
        Ok(None) => return Err(Refusal::denied("the role's issuer is no longer trusted")),
        Err(e) => {
            tracing::error!(error = %e, "could not read an issuer");
            return Err(Refusal::unavailable(
                "the server could not read the issuer; try again",
            ));
        }
    };
    let header = jsonwebtoken::decode_header(&body.jwt).map_err(|_| {
        Refusal::denied(
            "the identity token is not a JWT signed with RS256 or ES256 (alg none and HMAC are refused)",
        )
    })?;
    if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
        return Err(Refusal::denied(format!(
            "the identity token is signed with {:?}; only RS256 and ES256 are accepted",
            header.alg
        )));
    }
    let mut keys = state.identity.keys(&issuer, false).await?;
    let mut jwk = pick_key(&keys, header.kid.as_deref(), header.alg);
    if jwk.is_none() && issuer.jwks_url.is_some() {
        // The issuer may have rotated its keys since they were fetched.
        keys = state.identity.keys(&issuer, true).await?;
        jwk = pick_key(&keys, header.kid.as_deref(), header.alg);
    }
    let Some(jwk) = jwk else {
        return Err(Refusal::denied(match &header.kid {
            Some(kid) => format!(
                "no key of the issuer has kid {:?} for {:?}",
                kid.chars().take(100).collect::<String>(),
                header.alg
            ),
            None => "the identity token names no kid and the issuer has several keys".to_owned(),
        }));
    };
    let key = DecodingKey::from_jwk(jwk)
        .map_err(|_| Refusal::denied("the issuer's key for this kid cannot verify signatures"))?;
    let mut validation = Validation::new(header.alg);
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_nbf = true;
    validation.set_issuer(&[&issuer.issuer]);
    validation.set_audience(&[&issuer.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    let claims = jsonwebtoken::decode::<Map<String, Value>>(&body.jwt, &key, &validation)
        .map_err(|e| Refusal::denied(describe(&e)))?
        .claims;
    let now = chrono::Utc::now().timestamp();
    if claims
        .get("iat")
        .and_then(Value::as_f64)
        .is_some_and(|iat| iat > (now + LEEWAY_SECONDS as i64) as f64)
    {
        return Err(Refusal::denied(
            "the identity token was issued in the future (iat)",
        ));
    }
    role.matches(&claims).map_err(Refusal::denied)?;
    // Never past the identity token's own end: a workload whose identity expires (a
    // deleted pod's projected token) loses the token with it.
    let exp = claims.get("exp").and_then(Value::as_f64).unwrap_or(0.0);
    let jwt_left = u64::try_from((exp as i64).saturating_sub(now))
        .unwrap_or(0)
        .max(1);
    let ttl = role.ttl.min(jwt_left);
    let subject = claims.get("sub").and_then(Value::as_str).unwrap_or("-");
    let name: String = format!("{} ({subject})", role.name)
        .chars()
        .take(100)
        .collect();
    let created = state
        .store
        .create_token(TokenCreate {
            name,
            scopes: role.scopes.clone(),
            ttl: Some(Ttl(Duration::from_secs(ttl))),
            grants: role.grants.clone(),
            ..TokenCreate::default()
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "could not create a role's token");
            Refusal::unavailable("the server could not issue the token; try again")
        })?;
    Ok((created, claims))
}

/// The key the token names (by `kid`), or the only key for its algorithm when it names
/// none. A key that says which algorithm it is for must say this one.
fn pick_key<'a>(keys: &'a JwkSet, kid: Option<&str>, alg: Algorithm) -> Option<&'a Jwk> {
    let fits = |k: &&Jwk| {
        let family = matches!(
            (&k.algorithm, alg),
            (
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_),
                Algorithm::RS256
            ) | (
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_),
                Algorithm::ES256
            )
        );
        family
            && k.common
                .key_algorithm
                .is_none_or(|a| format!("{a:?}") == format!("{alg:?}"))
    };
    match kid {
        Some(kid) => keys
            .keys
            .iter()
            .filter(fits)
            .find(|k| k.common.key_id.as_deref() == Some(kid)),
        None => {
            let mut candidates = keys.keys.iter().filter(fits);
            let first = candidates.next();
            if candidates.next().is_some() {
                None
            } else {
                first
            }
        }
    }
}

/// A verification failure in words (never quoting the token).
fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "the identity token has expired (exp)".to_owned(),
        K::ImmatureSignature => "the identity token is not valid yet (nbf)".to_owned(),
        K::InvalidAudience => "the identity token is not for this server (aud)".to_owned(),
        K::InvalidIssuer => {
            "the identity token is from another issuer than the role's (iss)".to_owned()
        }
        K::InvalidSignature => "the identity token's signature does not verify".to_owned(),
        K::MissingRequiredClaim(claim) => format!("the identity token has no {claim} claim"),
        K::InvalidAlgorithm | K::InvalidAlgorithmName => {
            "the identity token's algorithm does not fit the issuer's key".to_owned()
        }
        _ => "the identity token is malformed".to_owned(),
    }
}

async fn list_issuers(State(state): St) -> ApiResult<Json<Vec<Issuer>>> {
    Ok(Json(state.store.list_issuers().await?))
}

async fn create_issuer(State(state): St, Body(body): Body<IssuerCreate>) -> ApiResult<Response> {
    let issuer = state.store.create_issuer(body).await?;
    Ok((StatusCode::CREATED, Json(issuer)).into_response())
}

async fn delete_issuer(State(state): St, Id(id): Id) -> ApiResult<StatusCode> {
    state.store.delete_issuer(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_roles(State(state): St) -> ApiResult<Json<Vec<Role>>> {
    Ok(Json(state.store.list_roles().await?))
}

async fn put_role(
    State(state): St,
    Path(name): Path<String>,
    Body(body): Body<RoleConfig>,
) -> ApiResult<Json<Role>> {
    Ok(Json(state.store.put_role(&name, body).await?))
}

async fn delete_role(State(state): St, Path(name): Path<String>) -> ApiResult<StatusCode> {
    state.store.delete_role(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
