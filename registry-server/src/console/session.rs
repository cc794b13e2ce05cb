//! Signing in and out, the session cookie, and the checks every state-changing request
//! passes: same origin (`Origin` or `Sec-Fetch-Site`) and the session's form token.
//!
//! A session is created from a token pasted once; the store keeps only its digest, so it is
//! valid on every replica and ends when the token is revoked or expires, after
//! [`SESSION_IDLE`](crate::store::SESSION_IDLE) idle and after
//! [`SESSION_MAX_AGE`](crate::store::SESSION_MAX_AGE) at most.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{
    ConnectInfo, FromRequest, FromRequestParts, OptionalFromRequestParts, Request, State,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use maud::html;
use secrecy::ExposeSecret as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

use super::PageError;
use super::layout::{self, Page};
use crate::http::AppState;
use crate::store::{NewAuditRecord, Scope, TokenInfo};

/// The session cookie: `__Host-` (Secure, no Domain, Path=/), HttpOnly, SameSite=Strict.
pub(crate) const COOKIE: &str = "__Host-blocks-session";
/// The form field carrying the session's form token.
pub(crate) const FORM_TOKEN_FIELD: &str = "_csrf";
/// Most fields a submitted form may have.
pub(crate) const MAX_FORM_FIELDS: usize = 5_000;
/// Longest token accepted on the sign-in form (tokens are 48 characters).
const MAX_TOKEN_BYTES: usize = 512;

/// The signed-in person: the session's token and the form token of the session.
#[derive(Clone)]
pub(crate) struct Viewer {
    pub(crate) token: Arc<TokenInfo>,
    form_token: String,
}

impl std::fmt::Debug for Viewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Viewer")
            .field("token_id", &self.token.id)
            .field("token_name", &self.token.name)
            .finish_non_exhaustive()
    }
}

impl Viewer {
    /// Whether the session's token grants `scope`.
    pub(crate) fn may(&self, scope: Scope) -> bool {
        self.token.grants(scope)
    }

    /// A 403 naming the scope an action needs, unless the token holds it.
    pub(crate) fn require(&self, scope: Scope, action: &str) -> Result<(), PageError> {
        if self.may(scope) {
            Ok(())
        } else {
            Err(PageError::forbidden(format!(
                "{action} needs a token with the {} scope; this session's token \"{}\" has {}.",
                scope.as_str(),
                self.token.name,
                scopes_text(&self.token),
            )))
        }
    }

    /// The session's form token, for the hidden `_csrf` field of every form.
    pub(crate) fn form_token(&self) -> &str {
        &self.form_token
    }

    /// Checks the form token a submitted form carries (403 when absent or wrong).
    pub(crate) fn check_form(&self, form: &FormPairs) -> Result<(), PageError> {
        let sent = form.get(FORM_TOKEN_FIELD).unwrap_or("");
        if bool::from(sent.as_bytes().ct_eq(self.form_token.as_bytes())) && !sent.is_empty() {
            Ok(())
        } else {
            Err(PageError::forbidden(
                "This form is out of date or did not come from this console (its form token does not match). Reload the page and try again.",
            ))
        }
    }
}

/// The token's scopes, comma-separated.
pub(crate) fn scopes_text(token: &TokenInfo) -> String {
    token
        .scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A token's grants, `scope:type-slug/name` each, or "all blocks".
pub(crate) fn grants_text(token: &TokenInfo) -> String {
    if token.grants.is_empty() {
        return "all blocks".to_owned();
    }
    token
        .grants
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The form token of a session: a digest of its secret under a label of its own, so it
/// proves the page came from this session without the cookie being readable by scripts.
fn form_token_of(secret: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(b"blocks console form token\0");
    hash.update(secret.as_bytes());
    hex::encode(&hash.finalize()[..20])
}

/// The session cookie's value, if the request carries one.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// What the session lookup found, kept in the request so it runs once.
#[derive(Clone)]
enum Lookup {
    None,
    Ended,
    Active(Viewer),
}

async fn lookup(parts: &mut Parts, state: &AppState) -> Result<Lookup, PageError> {
    if let Some(found) = parts.extensions.get::<Lookup>() {
        return Ok(found.clone());
    }
    let found = match session_cookie(&parts.headers) {
        None => Lookup::None,
        Some(secret) => match state.store.session(secret).await? {
            // A token limited by grants does not open the console (its pages read the
            // whole store); one whose grants were set after sign-in ends its sessions.
            Some(session) if session.token.limited() => Lookup::Ended,
            Some(session) => Lookup::Active(Viewer {
                token: Arc::new(session.token),
                form_token: form_token_of(secret),
            }),
            None => Lookup::Ended,
        },
    };
    parts.extensions.insert(found.clone());
    Ok(found)
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match lookup(parts, state).await {
            Ok(Lookup::Active(viewer)) => Ok(viewer),
            Ok(found) => {
                let next = parts
                    .uri
                    .path_and_query()
                    .map_or("/", |pq| pq.as_str())
                    .to_owned();
                let next = if parts.method == Method::GET {
                    next
                } else {
                    parts.uri.path().to_owned()
                };
                let ended = matches!(found, Lookup::Ended);
                let target = format!(
                    "/sign-in?next={}{}",
                    percent_encoding::utf8_percent_encode(
                        &next,
                        percent_encoding::NON_ALPHANUMERIC
                    ),
                    if ended { "&ended=1" } else { "" }
                );
                let mut response = Redirect::to(&target).into_response();
                if ended {
                    clear_cookie(&mut response);
                }
                Err(response)
            }
            Err(e) => Err(e.render(None)),
        }
    }
}

impl OptionalFromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, Response> {
        match lookup(parts, state).await {
            Ok(Lookup::Active(viewer)) => Ok(Some(viewer)),
            Ok(_) => Ok(None),
            Err(e) => Err(e.render(None)),
        }
    }
}

/// A submitted `application/x-www-form-urlencoded` body, as name/value pairs in order.
#[derive(Debug, Default)]
pub(crate) struct FormPairs(pub(crate) Vec<(String, String)>);

impl FormPairs {
    /// The `_version` an edit or delete form was read at (422 when it lacks one).
    pub(crate) fn version(&self) -> Result<i64, PageError> {
        self.get("_version")
            .and_then(|v| v.parse::<i64>().ok())
            .ok_or_else(|| {
                PageError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "_version: the form lacks the version it was read at; reload it",
                )
            })
    }

    /// The first value of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl<S: Send + Sync> FromRequest<S> for FormPairs {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|_| {
                PageError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The form is too large to be taken (1 MiB at most).",
                )
                .render(None)
            })?;
        let pairs: Vec<(String, String)> = form_urlencoded::parse(&bytes)
            .take(MAX_FORM_FIELDS + 1)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if pairs.len() > MAX_FORM_FIELDS {
            return Err(PageError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("The form has too many fields to be taken ({MAX_FORM_FIELDS} at most)."),
            )
            .render(None));
        }
        Ok(Self(pairs))
    }
}

/// Refuses a state-changing request that a browser did not send from one of our own pages:
/// it must say so with `Sec-Fetch-Site: same-origin` or an `Origin` equal to ours. Checked
/// before any handler runs; the form token is checked by the handler.
pub(super) async fn same_origin_writes(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    let headers = req.headers();
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let ours = own_origin(&state, headers);
    // Browsers that send `Sec-Fetch-Site` say exactly where a request came from; under our
    // `Referrer-Policy: no-referrer` their `Origin` on a form post is `null`, so it cannot
    // decide. Without `Sec-Fetch-Site`, the `Origin` must be ours.
    let same_site = match (fetch_site, origin) {
        (Some(site), _) => site == "same-origin",
        (None, Some(origin)) => ours.as_deref() == Some(origin),
        (None, None) => false,
    };
    if !same_site {
        tracing::info!(
            path = %req.uri().path(),
            "refused a console write that did not come from the console's own origin"
        );
        return PageError::forbidden(
            "This request did not come from a page of this console (cross-site requests change nothing).",
        )
        .render(None);
    }
    next.run(req).await
}

/// `http(s)://host[:port]` as the browser addressed us.
fn own_origin(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let scheme = if state.tls { "https" } else { "http" };
    Some(format!("{scheme}://{host}"))
}

/// The peer's address, when the server was given it.
fn peer(parts_ext: &axum::http::Extensions) -> Option<IpAddr> {
    parts_ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

/// Where to go after signing in: a path of ours, never another site.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.starts_with("/\\")
                && !n.starts_with("/sign-")
                && n.len() <= 2048
                && !n.chars().any(char::is_control) =>
        {
            n.to_owned()
        }
        _ => "/blocks".to_owned(),
    }
}

/// Query of the sign-in page.
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct SignInQuery {
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    ended: Option<String>,
    #[serde(default)]
    signed_out: Option<String>,
}

pub(super) async fn sign_in_page(
    viewer: Option<Viewer>,
    axum::extract::Query(query): axum::extract::Query<SignInQuery>,
) -> Response {
    if viewer.is_some() {
        return Redirect::to(&safe_next(query.next.as_deref())).into_response();
    }
    let notice = if query.ended.is_some() {
        Some(
            "Your session has ended (signed out elsewhere, idle for 30 minutes, 12 hours old, or its token was revoked). Sign in again.",
        )
    } else if query.signed_out.is_some() {
        Some("You are signed out.")
    } else {
        None
    };
    sign_in_form(StatusCode::OK, query.next.as_deref(), notice, None)
}

fn sign_in_form(
    status: StatusCode,
    next: Option<&str>,
    notice: Option<&str>,
    error: Option<&str>,
) -> Response {
    let body = html! {
        section.narrow {
            h1 { "Sign in" }
            @if let Some(notice) = notice {
                p.notice role="status" { (notice) }
            }
            p {
                "Paste an API token of this server. The first start wrote an admin token to "
                code { "~/.blocks/profile.toml" }
                " (" code { "api_key" } "); " code { "blocks token create" } " makes narrower ones. "
                "The console remembers you for this browser session only, never the token."
            }
            form method="post" action="/sign-in" {
                input type="hidden" name="next" value=(safe_next(next));
                div.field {
                    label for="token" { "Token" }
                    input #token type="password" name="token" required autocomplete="new-password"
                        spellcheck="false" autofocus
                        aria-invalid=[error.map(|_| "true")]
                        aria-describedby=[error.map(|_| "token-error")];
                    @if let Some(error) = error {
                        p.error #token-error { (error) }
                    }
                }
                div.actions { button.primary type="submit" { "Sign in" } }
            }
        }
    };
    let mut response = super::html(layout::shell(&Page::titled("Sign in"), None, &body));
    *response.status_mut() = status;
    response
}

/// A record in the audit log for a console action, with the session's token id.
pub(crate) async fn audit(
    state: &AppState,
    headers: &HeaderMap,
    token_id: Option<Uuid>,
    action: &str,
    target: String,
    status: StatusCode,
) -> Result<(), PageError> {
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let record = NewAuditRecord {
        at: Utc::now(),
        request_id,
        token_id,
        action: format!("console {action}"),
        target,
        outcome: crate::http::auth::outcome(status),
        status: status.as_u16(),
    };
    state.audit.record(record).await.map_err(|e| {
        tracing::error!(error = %e, "the audit record of a console action could not be stored");
        PageError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The audit log is unavailable: the change may have been made but could not be recorded. Look at the block before trying again.",
        )
    })
}

/// A console write as its handler takes it: the signed-in viewer, the submitted form, and
/// the request's headers for its audit record. Extracted in that order, so a request
/// without a session is sent to sign in before its body is read.
pub(crate) struct ConsoleWrite {
    state: AppState,
    headers: HeaderMap,
    viewer: Viewer,
    form: FormPairs,
}

impl FromRequest<AppState> for ConsoleWrite {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let viewer =
            <Viewer as FromRequestParts<AppState>>::from_request_parts(&mut parts, state).await?;
        let headers = parts.headers.clone();
        let form = FormPairs::from_request(Request::from_parts(parts, body), state).await?;
        Ok(Self {
            state: state.clone(),
            headers,
            viewer,
            form,
        })
    }
}

impl ConsoleWrite {
    /// The submitted form.
    pub(crate) fn form(&self) -> &FormPairs {
        &self.form
    }

    /// The request's headers.
    pub(crate) fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Runs `work` as [`audited`] does, handing it the form.
    pub(crate) async fn run<F>(
        self,
        action: &'static str,
        target: String,
        work: impl FnOnce(AppState, Viewer, FormPairs) -> F + Send + 'static,
    ) -> Response
    where
        F: Future<Output = Result<(Response, Option<String>), PageError>> + Send + 'static,
    {
        let Self {
            state,
            headers,
            viewer,
            form,
        } = self;
        audited(
            state,
            headers,
            viewer,
            action,
            target,
            move |state, viewer| work(state, viewer, form),
        )
        .await
    }
}

/// Runs a console write to its end in a task of its own (a browser that goes away
/// mid-write cannot part a write from its audit record) and records it with its outcome,
/// whatever it is, as the API records every write. `work` answers and, when it learned one,
/// names a better target (the id of what it created).
async fn audited<F>(
    state: AppState,
    headers: HeaderMap,
    viewer: Viewer,
    action: &'static str,
    target: String,
    work: impl FnOnce(AppState, Viewer) -> F + Send + 'static,
) -> Response
where
    F: Future<Output = Result<(Response, Option<String>), PageError>> + Send + 'static,
{
    let (failed_state, failed_headers, failed_viewer, failed_target) = (
        state.clone(),
        headers.clone(),
        viewer.clone(),
        target.clone(),
    );
    let task = tokio::spawn(async move {
        let (response, target) = match work(state.clone(), viewer.clone()).await {
            Ok((response, better)) => (response, better.unwrap_or(target)),
            Err(e) => (e.render(Some(&viewer)), target),
        };
        match audit(
            &state,
            &headers,
            Some(viewer.token.id),
            action,
            target,
            response.status(),
        )
        .await
        {
            Ok(()) => response,
            Err(e) => e.render(Some(&viewer)),
        }
    });
    match task.await {
        Ok(response) => response,
        Err(e) => {
            // Recorded all the same: the write may have happened before the failure.
            let status = StatusCode::INTERNAL_SERVER_ERROR;
            let recorded = audit(
                &failed_state,
                &failed_headers,
                Some(failed_viewer.token.id),
                action,
                failed_target,
                status,
            )
            .await;
            let page = PageError::from(crate::http::ApiError::Internal(format!(
                "a console write failed: {e}"
            )));
            match recorded {
                Ok(()) => page.render(Some(&failed_viewer)),
                Err(e) => e.render(Some(&failed_viewer)),
            }
        }
    }
}

pub(super) async fn sign_in(
    State(state): State<AppState>,
    req: Request,
) -> Result<Response, Response> {
    let ip = peer(req.extensions());
    let headers = req.headers().clone();
    let form = FormPairs::from_request(req, &()).await?;
    let next = form.get("next");
    let loopback = ip.is_some_and(|ip| ip.is_loopback());
    if !state.tls && !loopback {
        return Ok(sign_in_form(
            StatusCode::FORBIDDEN,
            next,
            None,
            Some(
                "Signing in over plain HTTP is allowed only from this machine (a loopback address): a token sent in clear could be read on the way. Serve HTTPS (blocks serve --tls-cert … --tls-key …) or put the console behind a TLS proxy on this host.",
            ),
        ));
    }
    let token = form.get("token").unwrap_or("").trim();
    if token.len() > MAX_TOKEN_BYTES {
        return Ok(sign_in_form(
            StatusCode::UNPROCESSABLE_ENTITY,
            next,
            None,
            Some("That is not a token of this server (too long)."),
        ));
    }
    let ip_for_limit = ip.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let info = match crate::http::auth::authenticate(&state, ip_for_limit, Some(token), Scope::Read)
        .await
    {
        Ok(info) => info,
        Err((error, token_id, record)) => {
            let status = error.status();
            if record {
                audit(
                    &state,
                    &headers,
                    token_id,
                    "POST /sign-in",
                    "/sign-in".into(),
                    status,
                )
                .await
                .map_err(|e| e.render(None))?;
            }
            let message = match status {
                StatusCode::TOO_MANY_REQUESTS => {
                    "Too many failed sign-ins from this address; wait a minute and try again."
                        .to_owned()
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    format!("{error}.")
                }
                _ => "The server could not check the token; try again.".to_owned(),
            };
            return Ok(sign_in_form(status, next, None, Some(&message)));
        }
    };
    if info.limited() {
        return Ok(sign_in_form(
            StatusCode::FORBIDDEN,
            next,
            None,
            Some(
                "This token is limited by grants to some blocks; the console needs a token without grants. Use this token with the API, the CLI or the client.",
            ),
        ));
    }
    let created = state
        .store
        .create_session(info.id)
        .await
        .map_err(|e| PageError::from(e).render(None))?;
    audit(
        &state,
        &headers,
        Some(info.id),
        "POST /sign-in",
        "/sign-in".into(),
        StatusCode::SEE_OTHER,
    )
    .await
    .map_err(|e| e.render(None))?;
    let mut response = Redirect::to(&safe_next(next)).into_response();
    let cookie = format!(
        "{COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        created.secret.expose_secret(),
        crate::store::SESSION_MAX_AGE.as_secs()
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

fn clear_cookie(response: &mut Response) {
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "__Host-blocks-session=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
}

pub(super) async fn sign_out(
    State(state): State<AppState>,
    viewer: Option<Viewer>,
    req: Request,
) -> Result<Response, Response> {
    let headers = req.headers().clone();
    let secret = session_cookie(&headers).map(ToOwned::to_owned);
    let form = FormPairs::from_request(req, &()).await?;
    if let Some(viewer) = &viewer {
        viewer
            .check_form(&form)
            .map_err(|e| e.render(Some(viewer)))?;
        if let Some(secret) = &secret {
            state
                .store
                .end_session(secret)
                .await
                .map_err(|e| PageError::from(e).render(Some(viewer)))?;
        }
        audit(
            &state,
            &headers,
            Some(viewer.token.id),
            "POST /sign-out",
            "/sign-out".into(),
            StatusCode::SEE_OTHER,
        )
        .await
        .map_err(|e| e.render(Some(viewer)))?;
    }
    let mut response = Redirect::to("/sign-in?signed_out=1").into_response();
    clear_cookie(&mut response);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_own_paths_are_followed_after_sign_in() {
        assert_eq!(safe_next(Some("/blocks?q=a")), "/blocks?q=a");
        for bad in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "/sign-out",
            "javascript:alert(1)",
            "",
        ] {
            assert_eq!(safe_next(Some(bad)), "/blocks", "{bad}");
        }
        assert_eq!(safe_next(None), "/blocks");
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-blocks-session=abc ; b=2"),
        );
        assert_eq!(session_cookie(&headers), Some("abc"));
        assert_ne!(form_token_of("abc"), form_token_of("abd"));
    }
}
