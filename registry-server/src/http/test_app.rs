//! What the HTTP tests share: an app over a fresh store with an admin token (`setup`),
//! one request helper (`send`, `get`) and its `Resp`, tokens of given scopes, the audit
//! log as stored, a document holding a secret, and a log buffer.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use block_types::catalog::{Collection, Secret};
use parking_lot::Mutex;
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;
use uuid::Uuid;

use super::{AppState, AuthGuard, app};
use crate::store::tests::harness::{TestDb, create, register};
use crate::store::{AuditQuery, AuditRecord, Scope, Store, TokenCreate};

pub(crate) const CANARY: &str = "canary-auth-5f0c2a91";

/// A response: status, headers, the body as JSON (a JSON string when it is not JSON,
/// `null` when empty) and as text.
#[derive(Debug)]
pub(crate) struct Resp {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Value,
    pub(crate) text: String,
}

impl Resp {
    pub(crate) fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn detail(&self) -> String {
        self.body["detail"].as_str().unwrap_or_default().to_owned()
    }
}

/// Sends one request, with `Authorization: Bearer <token>` when a token is given and `body`
/// as JSON.
pub(crate) async fn send(
    app: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Resp {
    let body = body.map(Value::to_string);
    send_raw(app, method, uri, token, body.as_deref(), headers).await
}

/// [`send`] with the body as text, sent as `application/json` whatever it holds (for
/// malformed bodies).
pub(crate) async fn send_raw(
    app: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Resp {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = match body {
        Some(body) => builder
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap(),
        None => builder.body(Body::empty()).unwrap(),
    };
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(text))
    };
    Resp {
        status,
        headers,
        body,
        text,
    }
}

pub(crate) async fn get(app: &Router, uri: &str, token: &str) -> Resp {
    send(app, "GET", uri, Some(token), None, &[]).await
}

/// A token holding exactly `scopes`: (the secret, its id).
pub(crate) async fn token(store: &Store, scopes: &[Scope]) -> (String, Uuid) {
    let created = store
        .create_token(TokenCreate {
            name: format!("test {scopes:?}"),
            scopes: scopes.iter().copied().collect(),
            expires: None,
            ..Default::default()
        })
        .await
        .unwrap();
    (created.token.expose_secret().to_owned(), created.info.id)
}

/// The app over a fresh store with the core types, and an admin token.
pub(crate) struct Ctx {
    pub(crate) app: Router,
    pub(crate) state: AppState,
    pub(crate) admin: String,
}

pub(crate) async fn setup(db: &TestDb, guard: AuthGuard) -> Ctx {
    let store = Arc::new(db.open().await);
    store.register_collection(Collection::Core).await.unwrap();
    let (admin, _) = token(&store, &[Scope::Admin]).await;
    let state = AppState::with_guard(store, guard);
    Ctx {
        app: app(state.clone()),
        state,
        admin,
    }
}

/// A guard that never refuses (the matrix makes many failed authentications on purpose).
pub(crate) fn lenient() -> AuthGuard {
    AuthGuard::new(u32::MAX, Duration::from_secs(60))
}

/// Every audit record, newest first.
pub(crate) async fn all_audit(store: &Store) -> Vec<AuditRecord> {
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .list_audit(&AuditQuery {
                before,
                limit: Some(1000),
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        before = Some(last.seq);
        all.extend(page);
    }
    all
}

/// A `secret` document holding `value`; returns its id.
pub(crate) async fn secret_doc(store: &Store, name: &str, value: &str) -> Uuid {
    let (_, schema) = register::<Secret>(store).await;
    create(store, &schema, name, json!({"value": value}))
        .await
        .id
}

/// A writer into a shared buffer, for capturing logs.
#[derive(Debug, Clone, Default)]
pub(crate) struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    /// Captures every event at every level on this thread until the guard is dropped.
    pub(crate) fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Self::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (logs, guard)
    }

    pub(crate) fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[track_caller]
pub(crate) fn assert_unauthorized(resp: &Resp, what: &str) {
    assert_eq!(
        resp.status,
        StatusCode::UNAUTHORIZED,
        "{what}: {}",
        resp.text
    );
    assert_eq!(
        resp.header(header::WWW_AUTHENTICATE),
        Some("Bearer"),
        "{what}: WWW-Authenticate"
    );
    assert!(
        !resp.detail().is_empty(),
        "{what}: a JSON detail: {}",
        resp.text
    );
}
