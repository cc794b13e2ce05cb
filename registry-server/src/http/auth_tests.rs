//! Access control over the HTTP API, on SQLite and PostgreSQL: the route × scope matrix,
//! secret reads, the token lifecycle, rate limiting, secrets kept out of the audit log,
//! metrics and logs, HEAD requests, and refusals that spare known tokens.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use block_types::catalog::Secret;
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;
use uuid::Uuid;

use super::routes::{Access, Kind, RouteMeta};
use super::{AppState, AuthGuard, all_routes, app};
use crate::store::tests::harness::{TestDb, on_both, register};
use crate::store::{AuditQuery, AuditRecord, Scope, TokenCreate};

use super::test_app::*;
use super::tests::{hello_status, send_expecting};

/// Whether a token holding `held` may call a route needing `needed` (admin implies all;
/// write and read-secrets each imply read).
fn expect_grant(held: Scope, needed: Scope) -> bool {
    match held {
        Scope::Admin => true,
        Scope::Write => matches!(needed, Scope::Write | Scope::Read),
        Scope::ReadSecrets => matches!(needed, Scope::ReadSecrets | Scope::Read),
        Scope::Read => needed == Scope::Read,
    }
}

/// An audit record as the matrix expects it: (token, action, target, outcome, status).
type Expected = (Option<Uuid>, String, String, String, u16);

/// One request of the route × scope matrix: a route with its parameters filled in.
struct Probe {
    method: Method,
    path: &'static str,
    meta: RouteMeta,
    /// The request's URI.
    uri: String,
    /// The audit record's target (the path, without the query).
    target: String,
    /// The audit record's action, `METHOD /route/{param}`.
    action: String,
    body: Option<Value>,
}

impl Probe {
    /// Every route of the table, with `doc` as the document ids and names it takes.
    fn all(doc: Uuid) -> Vec<Self> {
        let routes = all_routes();
        assert!(routes.len() > 30, "the table lists every route");
        routes
            .into_iter()
            .map(|route| {
                let uri = route
                    .path
                    .replace(
                        "{id}",
                        &if route.path.starts_with("/api/block_documents/") {
                            doc.to_string()
                        } else {
                            Uuid::new_v4().to_string()
                        },
                    )
                    .replace("{slug}", "secret")
                    .replace("{name}", "matrix-doc")
                    .replace("{checksum}", "sha256:0123abcd")
                    .replace("{version}", "1");
                assert!(!uri.contains('{'), "every parameter replaced in {uri}");
                // The audit log records the path. The event stream never ends; a bad
                // filter makes a held scope answer at once (422, after the scope check).
                let target = uri.clone();
                let uri = if route.path == "/api/events/stream" {
                    format!("{uri}?kind=none")
                } else {
                    uri
                };
                let body = (route.method != Method::GET && route.method != Method::DELETE)
                    .then(|| json!({}));
                Self {
                    action: format!("{} {}", route.method, route.path),
                    method: route.method,
                    path: route.path,
                    meta: route.meta,
                    uri,
                    target,
                    body,
                }
            })
            .collect()
    }

    /// The routes a token opens, with the scope each needs.
    fn token_routes(doc: Uuid) -> Vec<(Self, Scope)> {
        let probes: Vec<(Self, Scope)> = Self::all(doc)
            .into_iter()
            .filter_map(|p| match p.meta.access {
                Access::Token(needed) => Some((p, needed)),
                _ => None,
            })
            .collect();
        assert!(probes.len() > 30, "most routes need a token");
        probes
    }

    async fn send(&self, app: &axum::Router, token: Option<&str>) -> Resp {
        send(
            app,
            self.method.as_str(),
            &self.uri,
            token,
            self.body.as_ref(),
            &[],
        )
        .await
    }

    /// Names the request and who made it, for assertion messages.
    fn what(&self, who: &str) -> String {
        format!("{} ({}) with {who}", self.action, self.uri)
    }

    fn expected(&self, token: Option<Uuid>, status: StatusCode) -> Expected {
        let outcome = super::auth::outcome(status);
        let (action, target) = (self.action.clone(), self.target.clone());
        (token, action, target, outcome.into(), status.as_u16())
    }
}

/// The matrix's world: the app, a document holding a secret, and a token of each scope.
async fn matrix_world(db: &TestDb) -> (Ctx, Uuid, Vec<(Scope, String, Uuid)>) {
    let ctx = setup(db, lenient()).await;
    let doc = secret_doc(&ctx.state.store, "matrix-doc", "matrix-value").await;
    let mut holders = Vec::new();
    for scope in Scope::ALL {
        let (secret, id) = token(&ctx.state.store, &[scope]).await;
        holders.push((scope, secret, id));
    }
    (ctx, doc, holders)
}

/// Asserts that the audit log holds every record of `expected` (as many times as listed).
async fn assert_recorded(store: &crate::store::Store, expected: Vec<Expected>) {
    assert!(!expected.is_empty(), "the matrix expected records");
    let records = all_audit(store).await;
    let mut have: HashMap<Expected, usize> = HashMap::new();
    for r in &records {
        let key = (
            r.token_id,
            r.action.clone(),
            r.target.clone(),
            r.outcome.clone(),
            r.status,
        );
        *have.entry(key).or_default() += 1;
    }
    let mut want: HashMap<Expected, usize> = HashMap::new();
    for e in expected {
        *want.entry(e).or_default() += 1;
    }
    let mut missing: Vec<String> = want
        .iter()
        .filter_map(|(key, n)| {
            let got = have.get(key).copied().unwrap_or(0);
            (got < *n).then(|| format!("{key:?}: want {n}, have {got}"))
        })
        .collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "missing audit records:\n{}",
        missing.join("\n")
    );
}

#[tokio::test]
async fn public_routes_answer_without_a_token_and_the_events_socket_is_the_only_socket_route() {
    on_both(async |db| {
        let (ctx, doc, _) = matrix_world(db).await;
        let mut socket_routes = 0;
        for probe in Probe::all(doc) {
            match probe.meta.access {
                Access::Public if probe.path == "/api/auth/jwt" => {
                    // The sign-in itself: open to anyone, refusing what is not a valid
                    // identity token (its own tests cover the rest).
                    let resp = probe.send(&ctx.app, None).await;
                    let status = StatusCode::UNPROCESSABLE_ENTITY;
                    assert_eq!(resp.status, status, "{}", probe.what("no body"));
                    let login = json!({"role": "nobody", "jwt": "not-a-jwt"});
                    let method = probe.method.as_str();
                    let resp = send(&ctx.app, method, &probe.uri, None, Some(&login), &[]).await;
                    let what = probe.what("a bad JWT");
                    assert_eq!(resp.status, StatusCode::UNAUTHORIZED, "{what}");
                }
                Access::Public => {
                    let resp = probe.send(&ctx.app, None).await;
                    let what = probe.what("no token");
                    assert!(resp.status.is_success(), "{what}: {}", resp.text);
                }
                Access::Socket => {
                    assert_eq!((probe.path, probe.method), ("/api/events/in", Method::GET));
                    socket_routes += 1;
                }
                Access::Token(_) => {}
            }
        }
        assert_eq!(socket_routes, 1, "one events socket");
    })
    .await;
}

#[tokio::test]
async fn every_token_route_refuses_a_missing_or_unknown_token_with_401_and_records_it() {
    on_both(async |db| {
        let (ctx, doc, _) = matrix_world(db).await;
        let unknown = "blk_this-token-was-never-issued";
        let mut expected = Vec::new();
        for (probe, _) in Probe::token_routes(doc) {
            let none = probe.send(&ctx.app, None).await;
            assert_unauthorized(&none, &probe.what("no token"));
            expected.push(probe.expected(None, StatusCode::UNAUTHORIZED));
            let bad = probe.send(&ctx.app, Some(unknown)).await;
            assert_unauthorized(&bad, &probe.what("an unknown token"));
            assert!(bad.detail().contains("not known"), "{}", bad.text);
            expected.push(probe.expected(None, StatusCode::UNAUTHORIZED));
        }
        assert_recorded(&ctx.state.store, expected).await;
    })
    .await;
}

#[tokio::test]
async fn every_token_route_refuses_a_scope_short_of_its_own_with_403_naming_it_and_records_it() {
    on_both(async |db| {
        let (ctx, doc, holders) = matrix_world(db).await;
        let mut expected = Vec::new();
        for (probe, needed) in Probe::token_routes(doc) {
            for (held, secret, id) in &holders {
                if expect_grant(*held, needed) {
                    continue;
                }
                let what = probe.what(&format!("a {} token", held.as_str()));
                let resp = probe.send(&ctx.app, Some(secret)).await;
                assert_eq!(resp.status, StatusCode::FORBIDDEN, "{what}: {}", resp.text);
                let detail = resp.detail();
                let names = format!("needs the {} scope", needed.as_str());
                assert!(
                    detail.contains(&names),
                    "{what}: the detail names the scope: {detail}"
                );
                expected.push(probe.expected(Some(*id), StatusCode::FORBIDDEN));
            }
        }
        assert_recorded(&ctx.state.store, expected).await;
    })
    .await;
}

#[tokio::test]
async fn every_token_route_lets_each_covering_scope_through_records_writes_and_not_masked_reads() {
    on_both(async |db| {
        let (ctx, doc, holders) = matrix_world(db).await;
        let store = &ctx.state.store;
        let mut expected = Vec::new();
        let mut read_actions = BTreeSet::new();
        for (probe, needed) in Probe::token_routes(doc) {
            if probe.meta.kind == Kind::Read {
                read_actions.insert(probe.action.clone());
            }
            for (held, secret, id) in &holders {
                if !expect_grant(*held, needed) {
                    continue;
                }
                let what = probe.what(&format!("a {} token", held.as_str()));
                let resp = probe.send(&ctx.app, Some(secret)).await;
                let refused = [
                    StatusCode::UNAUTHORIZED,
                    StatusCode::FORBIDDEN,
                    StatusCode::TOO_MANY_REQUESTS,
                ];
                let status = resp.status;
                assert!(!refused.contains(&status), "{what}: {status} {}", resp.text);
                assert!(!status.is_server_error(), "{what}: {status} {}", resp.text);
                if probe.meta.kind == Kind::Write {
                    expected.push(probe.expected(Some(*id), status));
                }
            }
        }
        let outcomes: BTreeSet<&str> = expected.iter().map(|e| e.3.as_str()).collect();
        assert!(
            outcomes.contains("ok"),
            "some allowed writes succeeded: {outcomes:?}"
        );
        assert_recorded(store, expected).await;
        // Reads that return no secrets are not audited when allowed.
        let records = all_audit(store).await;
        let audited_reads: Vec<&AuditRecord> = records
            .iter()
            .filter(|r| r.outcome != "denied" && read_actions.contains(&r.action))
            .collect();
        assert!(
            audited_reads.is_empty(),
            "allowed reads without secrets audited: {audited_reads:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn include_secrets_needs_read_secrets_and_is_audited() {
    on_both(async |db| {
        let ctx = setup(db, AuthGuard::default()).await;
        let store = &ctx.state.store;
        let id = secret_doc(store, "s2-doc", CANARY).await;
        let (read, read_id) = token(store, &[Scope::Read]).await;
        let (write, write_id) = token(store, &[Scope::Write]).await;
        let (secrets, secrets_id) = token(store, &[Scope::ReadSecrets]).await;

        let by_id = format!("/api/block_documents/{id}");
        let by_name = "/api/block_types/slug/secret/block_documents/name/s2-doc".to_owned();
        let of_type = "/api/block_types/slug/secret/block_documents".to_owned();
        let filter = "/api/block_documents/filter".to_owned();

        // Masked reads work with read.
        for path in [&by_id, &by_name] {
            let resp = get(&ctx.app, path, &read).await;
            assert_eq!(resp.status, StatusCode::OK, "{path}: {}", resp.text);
            assert_eq!(resp.body["data"]["value"], json!("********"));
            assert!(!resp.text.contains(CANARY));
        }

        // (method, path, body, action template).
        let cases: Vec<(&str, String, Option<Value>, &str)> = vec![
            (
                "GET",
                format!("{by_id}?include_secrets=true"),
                None,
                "GET /api/block_documents/{id}",
            ),
            (
                "GET",
                format!("{by_name}?include_secrets=true"),
                None,
                "GET /api/block_types/slug/{slug}/block_documents/name/{name}",
            ),
            (
                "GET",
                format!("{of_type}?include_secrets=true"),
                None,
                "GET /api/block_types/slug/{slug}/block_documents",
            ),
            (
                "POST",
                filter.clone(),
                Some(json!({"include_secrets": true})),
                "POST /api/block_documents/filter",
            ),
        ];
        for (method, uri, body, action) in &cases {
            for (who, t) in [("read", &read), ("write", &write)] {
                let resp = send(&ctx.app, method, uri, Some(t), body.as_ref(), &[]).await;
                assert_eq!(
                    resp.status,
                    StatusCode::FORBIDDEN,
                    "{method} {uri} with {who}: {}",
                    resp.text
                );
                assert!(resp.detail().contains("read-secrets"), "{}", resp.text);
                assert!(!resp.text.contains(CANARY), "a 403 carries no secret");
            }
            let resp = send(&ctx.app, method, uri, Some(&secrets), body.as_ref(), &[]).await;
            assert_eq!(resp.status, StatusCode::OK, "{method} {uri}: {}", resp.text);
            let docs = match &resp.body {
                Value::Array(items) => items.clone(),
                one => vec![one.clone()],
            };
            let ours = docs
                .iter()
                .find(|d| d["id"] == json!(id))
                .unwrap_or_else(|| panic!("{method} {uri}: the document is listed: {}", resp.text));
            assert_eq!(ours["data"]["value"], json!(CANARY), "{method} {uri}");

            let path = uri.split('?').next().unwrap();
            let target = format!("{path}?include_secrets=true");
            let id_text = id.to_string();
            let records = store
                .list_audit(&AuditQuery {
                    action: Some((*action).to_owned()),
                    limit: Some(1000),
                    ..AuditQuery::default()
                })
                .await
                .unwrap();
            let read_record = records
                .iter()
                .find(|r| {
                    r.token_id == Some(secrets_id)
                        && r.target.starts_with(&target)
                        && r.target.contains(&id_text)
                })
                .unwrap_or_else(|| panic!("no secret-read record for {uri}: {records:?}"));
            assert!(read_record.target.contains("include_secrets=true"));
            assert_eq!(
                (read_record.outcome.as_str(), read_record.status),
                ("ok", 200)
            );
            for denied_id in [read_id, write_id] {
                assert!(
                    records.iter().any(|r| r.token_id == Some(denied_id)
                        && r.outcome == "denied"
                        && r.status == 403
                        && r.action == *action),
                    "the 403 of {uri} is audited: {records:?}"
                );
            }
        }
        // Without include_secrets, a read is not a secret read.
        let plain = send_expecting(
            &ctx.app,
            "POST",
            &filter,
            &secrets,
            Some(&json!({})),
            StatusCode::OK,
        )
        .await;
        assert!(!plain.text.contains(CANARY));
        let secret_reads = store
            .list_audit(&AuditQuery {
                token_id: Some(secrets_id),
                limit: Some(1000),
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(
            secret_reads.len(),
            cases.len(),
            "one record per secret read: {secret_reads:?}"
        );
    })
    .await;
}

/// Creates a `read`+`write` token named "ci" over the API, checking the answer shows it
/// once: (the token, its id).
async fn ci_token(ctx: &Ctx) -> (String, Uuid) {
    let body = json!({"name": "ci", "scopes": ["read", "write"]});
    let created = send_expecting(
        &ctx.app,
        "POST",
        "/api/tokens",
        &ctx.admin,
        Some(&body),
        StatusCode::CREATED,
    )
    .await;
    let secret = created.body["token"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("blk_") && secret.len() > 20, "{secret}");
    let id: Uuid = created.body["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(created.body["scopes"], json!(["read", "write"]));
    (secret, id)
}

/// `GET /api/hello` with Basic auth `credentials` (`user:password`) and no bearer token.
async fn hello_with_basic(ctx: &Ctx, credentials: &str) -> Resp {
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(credentials);
    let authorization = format!("Basic {basic}");
    let headers = [("authorization", authorization.as_str())];
    send(&ctx.app, "GET", "/api/hello", None, None, &headers).await
}

/// Asserts that `records` hold a 401 denial under the token `id`; `what` names the refusal.
#[track_caller]
fn assert_refusal_audited(records: &[AuditRecord], id: Uuid, what: &str) {
    assert!(
        records
            .iter()
            .any(|r| r.token_id == Some(id) && r.outcome == "denied" && r.status == 401),
        "{what} is audited: {records:?}"
    );
}

#[tokio::test]
async fn a_token_is_shown_once_at_creation_and_never_listed() {
    on_both(async |db| {
        let ctx = setup(db, AuthGuard::default()).await;
        let (secret, id) = ci_token(&ctx).await;
        assert_eq!(hello_status(&ctx.app, &secret).await, StatusCode::OK);
        assert_eq!(
            get(&ctx.app, "/api/tokens", &secret).await.status,
            StatusCode::FORBIDDEN
        );
        // Basic auth with the token as password (PREFECT_API_AUTH_STRING) works too.
        let resp = hello_with_basic(&ctx, &format!("ci:{secret}")).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
        let resp = hello_with_basic(&ctx, "ci:blk_wrong").await;
        assert_unauthorized(&resp, "a wrong Basic password");

        let listed = get(&ctx.app, "/api/tokens", &ctx.admin).await;
        assert_eq!(listed.status, StatusCode::OK);
        assert!(
            !listed.text.contains(&secret),
            "the list never holds a token"
        );
        assert!(
            !listed.text.contains(&ctx.admin),
            "the list never holds a token"
        );
        let items = listed.body.as_array().unwrap();
        assert!(
            items
                .iter()
                .any(|t| t["id"] == json!(id) && t["name"] == json!("ci"))
        );
        assert!(
            items.iter().all(|t| t.get("token").is_none()),
            "{}",
            listed.text
        );
    })
    .await;
}

#[tokio::test]
async fn an_expired_token_is_refused_and_its_refusal_audited() {
    on_both(async |db| {
        let ctx = setup(db, AuthGuard::default()).await;
        let store = &ctx.state.store;
        // Expiry.
        let expires = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
        let expiring = store
            .create_token(TokenCreate {
                name: "short-lived".into(),
                scopes: [Scope::Read].into(),
                expires: Some(expires),
                ..Default::default()
            })
            .await
            .unwrap();
        let expiring_secret = expiring.token.expose_secret().to_owned();
        assert_eq!(
            hello_status(&ctx.app, &expiring_secret).await,
            StatusCode::OK
        );
        let wait = (expires - chrono::Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait + Duration::from_millis(100)).await;
        let resp = get(&ctx.app, "/api/hello", &expiring_secret).await;
        assert_unauthorized(&resp, "an expired token");
        assert!(resp.detail().contains("expired"), "{}", resp.text);

        let records = all_audit(store).await;
        assert_refusal_audited(&records, expiring.info.id, "the expired token's refusal");
    })
    .await;
}

#[tokio::test]
async fn a_revoked_token_is_refused_and_its_refusal_audited() {
    on_both(async |db| {
        let ctx = setup(db, AuthGuard::default()).await;
        let store = &ctx.state.store;
        let (secret, id) = ci_token(&ctx).await;
        // Revocation.
        let tokens = "/api/tokens";
        let revoked = send_expecting(
            &ctx.app,
            "DELETE",
            &format!("{tokens}/{id}"),
            &ctx.admin,
            None,
            StatusCode::OK,
        )
        .await;
        assert!(revoked.body["revoked"].is_string(), "{}", revoked.text);
        assert!(!revoked.text.contains(&secret));
        let resp = get(&ctx.app, "/api/hello", &secret).await;
        assert_unauthorized(&resp, "a revoked token");
        assert!(resp.detail().contains("revoked"), "{}", resp.text);
        let unknown = format!("{tokens}/{}", Uuid::new_v4());
        send_expecting(
            &ctx.app,
            "DELETE",
            &unknown,
            &ctx.admin,
            None,
            StatusCode::NOT_FOUND,
        )
        .await;

        let records = all_audit(store).await;
        assert_refusal_audited(&records, id, "the revoked token's refusal");
    })
    .await;
}

#[tokio::test]
async fn bad_token_bodies_are_422_naming_the_field_and_create_nothing() {
    on_both(async |db| {
        let ctx = setup(db, AuthGuard::default()).await;
        let store = &ctx.state.store;
        // Bad bodies: 422 naming the field, nothing created.
        let before = store.list_tokens().await.unwrap().len();
        let cases = [
            (json!({"name": "", "scopes": ["read"]}), "name"),
            (json!({"name": "   ", "scopes": ["read"]}), "name"),
            (json!({"name": "x", "scopes": []}), "scopes"),
            (json!({"name": "x", "scopes": ["root"]}), "scopes"),
            (
                json!({"name": "x", "scopes": ["read"], "expires": "2020-01-01T00:00:00Z"}),
                "expires",
            ),
            (
                json!({"name": "x", "scopes": ["read"], "colour": "red"}),
                "colour",
            ),
            (json!({"scopes": ["read"]}), "name"),
        ];
        for (body, field) in cases {
            let resp = send(
                &ctx.app,
                "POST",
                "/api/tokens",
                Some(&ctx.admin),
                Some(&body),
                &[],
            )
            .await;
            assert_eq!(
                resp.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{body}: {}",
                resp.text
            );
            assert!(
                resp.text.contains(field),
                "{body}: the answer names {field}: {}",
                resp.text
            );
            assert!(resp.body.get("token").is_none());
        }
        assert_eq!(
            store.list_tokens().await.unwrap().len(),
            before,
            "no token was created"
        );
    })
    .await;
}

#[tokio::test]
async fn repeated_failures_are_refused_with_retry_after_and_audited_once() {
    on_both(async |db| {
        let ctx = setup(db, AuthGuard::new(3, Duration::from_secs(60))).await;
        let store = &ctx.state.store;
        let bad = "blk_wrong";
        for _ in 0..3 {
            let resp = get(&ctx.app, "/api/hello", bad).await;
            assert_unauthorized(&resp, "a bad token");
        }
        let refused = get(&ctx.app, "/api/hello", bad).await;
        assert_eq!(
            refused.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{}",
            refused.text
        );
        let retry: u64 = refused
            .header(header::RETRY_AFTER)
            .expect("Retry-After")
            .parse()
            .expect("Retry-After in whole seconds");
        assert!(retry > 0 && retry <= 60, "{retry}");
        assert!(!refused.detail().is_empty());
        // A valid token is never refused by the limiter; public routes still answer.
        let valid = get(&ctx.app, "/api/hello", &ctx.admin).await;
        assert_eq!(valid.status, StatusCode::OK, "{}", valid.text);
        for _ in 0..5 {
            assert_eq!(
                hello_status(&ctx.app, bad).await,
                StatusCode::TOO_MANY_REQUESTS
            );
        }
        let none = send(
            &ctx.app,
            "GET",
            "/api/block_types/slug/secret",
            None,
            None,
            &[],
        )
        .await;
        assert_eq!(none.status, StatusCode::TOO_MANY_REQUESTS, "{}", none.text);
        assert_eq!(
            send(&ctx.app, "GET", "/api/health", None, None, &[])
                .await
                .status,
            StatusCode::OK
        );

        let records = all_audit(store).await;
        let refusals = records.iter().filter(|r| r.status == 429).count();
        assert_eq!(refusals, 1, "one 429 record per window: {records:?}");
        let failures = records
            .iter()
            .filter(|r| r.status == 401 && r.outcome == "denied")
            .count();
        assert_eq!(failures, 3, "{records:?}");
    })
    .await;
}

#[tokio::test]
async fn a_secret_never_reaches_the_audit_log_metrics_or_logs() {
    let (logs, _guard) = LogBuffer::capture();
    on_both(async |db| {
        let ctx = setup(db, AuthGuard::default()).await;
        let store = &ctx.state.store;
        let (read, _) = token(store, &[Scope::Read]).await;
        let (_, schema) = register::<Secret>(store).await;
        let body = json!({"name": "canary", "block_type_id": schema.block_type_id,
            "block_schema_id": schema.id, "data": {"value": CANARY}});
        let created = send(&ctx.app, "POST", "/api/block_documents/", Some(&ctx.admin), Some(&body), &[]).await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
        assert!(!created.text.contains(CANARY));
        let id = created.body["id"].as_str().unwrap().to_owned();
        let doc = format!("/api/block_documents/{id}");

        let shown = get(&ctx.app, &format!("{doc}?include_secrets=true"), &ctx.admin).await;
        assert_eq!(shown.body["data"]["value"], json!(CANARY));
        let masked = get(&ctx.app, &doc, &read).await;
        assert_eq!(masked.status, StatusCode::OK);
        assert!(!masked.text.contains(CANARY));
        let by_name = get(&ctx.app, "/api/block_types/slug/secret/block_documents/name/canary?include_secrets=true", &ctx.admin).await;
        assert_eq!(by_name.body["data"]["value"], json!(CANARY));
        let listed = send(&ctx.app, "POST", "/api/block_documents/filter", Some(&ctx.admin),
            Some(&json!({"include_secrets": true})), &[]).await;
        assert!(listed.text.contains(CANARY));

        let patched = send(&ctx.app, "PATCH", &doc, Some(&ctx.admin),
            Some(&json!({"data": {"value": format!("{CANARY}-v2")}})), &[]).await;
        assert_eq!(patched.status, StatusCode::NO_CONTENT, "{}", patched.text);
        let version = get(&ctx.app, &format!("{doc}/versions/1?include_secrets=true"), &ctx.admin).await;
        assert_eq!(version.body["data"]["value"], json!(CANARY));

        // Denials and failures, several carrying the canary in their bodies.
        let refusals = [
            send(&ctx.app, "GET", &format!("{doc}?include_secrets=true"), Some(&read), None, &[]).await,
            send(&ctx.app, "GET", &format!("{doc}?include_secrets=true"), None, None, &[]).await,
            send(&ctx.app, "PATCH", &doc, Some(&read), Some(&json!({"data": {"value": CANARY}})), &[]).await,
            send(&ctx.app, "PATCH", &doc, Some("blk_unknown"), Some(&json!({"data": {"value": CANARY}})), &[]).await,
            send(&ctx.app, "POST", "/api/block_documents/filter", Some(&read), Some(&json!({"include_secrets": true})), &[]).await,
        ];
        for resp in &refusals {
            assert!(resp.status == StatusCode::UNAUTHORIZED || resp.status == StatusCode::FORBIDDEN, "{resp:?}");
            assert!(!resp.text.contains(CANARY));
        }
        let malformed = format!("{{\"data\": {{\"value\": \"{CANARY}\"");
        let request = Request::builder()
            .method("PATCH")
            .uri(&doc)
            .header("authorization", format!("Bearer {}", ctx.admin))
            .header("content-type", "application/json")
            .body(Body::from(malformed))
            .unwrap();
        let response = ctx.app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains(CANARY));
        let failures = [
            send(&ctx.app, "PATCH", &doc, Some(&ctx.admin), Some(&json!({"data": CANARY})), &[]).await,
            send(&ctx.app, "PATCH", &doc, Some(&ctx.admin), Some(&json!({"data": {"value": CANARY}, "colour": CANARY})), &[]).await,
            send(&ctx.app, "POST", "/api/block_documents/", Some(&ctx.admin), Some(&body), &[]).await,
            send(&ctx.app, "POST", "/api/block_documents/", Some(&ctx.admin),
                Some(&json!({"name": "other", "block_type_id": schema.block_type_id, "block_schema_id": Uuid::new_v4(), "data": {"value": CANARY}})), &[]).await,
        ];
        for resp in &failures {
            assert!(resp.status.is_client_error(), "{resp:?}");
            assert!(!resp.text.contains(CANARY), "{}", resp.text);
        }
        let after = get(&ctx.app, &format!("{doc}?include_secrets=true"), &ctx.admin).await;
        assert_eq!(after.body["data"]["value"], json!(format!("{CANARY}-v2")), "failed writes changed nothing");

        let records = all_audit(store).await;
        assert!(records.len() >= 10, "the requests were audited: {records:?}");
        let audit_text = serde_json::to_string(&records).unwrap();
        assert!(!audit_text.contains(CANARY), "the audit log holds the secret: {audit_text}");
        let metrics = get(&ctx.app, "/metrics", &read).await;
        assert_eq!(metrics.status, StatusCode::OK);
        assert!(!metrics.text.contains(CANARY), "the metrics hold the secret");
    })
    .await;
    let logs = logs.contents();
    assert!(!logs.is_empty(), "the app logged something");
    assert!(
        logs.contains(r#"route="/api/block_documents/{id}""#),
        "the request span with its route template is logged: {logs}"
    );
    assert!(!logs.contains(CANARY), "the logs hold the secret: {logs}");
}

/// HEAD is answered by the GET handler (axum), so it must need the GET route's scope.
#[tokio::test]
async fn head_requests_need_the_scope_of_their_get_route() {
    on_both(async |db| {
        let ctx = setup(db, AuthGuard::default()).await;
        let (read, _) = token(&ctx.state.store, &[Scope::Read]).await;
        for route in all_routes() {
            let Access::Token(needed) = route.meta.access else {
                continue;
            };
            if route.method != Method::GET || needed == Scope::Read || route.path.contains('{') {
                continue;
            }
            let resp = send(&ctx.app, "HEAD", route.path, Some(&read), None, &[]).await;
            assert_eq!(
                resp.status,
                StatusCode::FORBIDDEN,
                "HEAD {} with a read token",
                route.path
            );
        }
    })
    .await;
}

/// While a client is refused, a token this server already knows to be good still works
/// (from memory); bad URLs and audit queries are 4xx naming the problem, never 500.
#[tokio::test]
async fn refusal_spares_known_tokens_and_bad_urls_and_queries_are_4xx() {
    on_both(async |db| {
        let ctx = setup(db, AuthGuard::new(2, Duration::from_secs(60))).await;
        let (known, _) = token(&ctx.state.store, &[Scope::Read]).await;
        assert_eq!(hello_status(&ctx.app, &known).await, StatusCode::OK);
        for _ in 0..2 {
            get(&ctx.app, "/api/hello", "blk_wrong").await;
        }
        assert_eq!(
            hello_status(&ctx.app, "blk_wrong").await,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(hello_status(&ctx.app, &known).await, StatusCode::OK);
        let (fresh, _) = token(&ctx.state.store, &[Scope::Read]).await;
        assert_eq!(
            hello_status(&ctx.app, &fresh).await,
            StatusCode::OK,
            "a valid token not yet known is checked and served all the same"
        );

        let ctx = Ctx {
            state: AppState::with_guard(ctx.state.store.clone(), lenient()),
            ..ctx
        };
        let ctx = Ctx {
            app: app(ctx.state.clone()),
            ..ctx
        };
        for uri in [
            "/api/block_types/slug/a%00b",
            "/api/audit?action=%00",
            "/api/block_types/slug/secret/block_documents/name/x%00",
        ] {
            let resp = get(&ctx.app, uri, &ctx.admin).await;
            assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{uri}: {}", resp.text);
            assert!(resp.detail().contains("NUL"), "{}", resp.text);
        }
        for (uri, field) in [
            ("/api/audit?before=x", "before"),
            ("/api/audit?since=yesterday", "since"),
            ("/api/audit?bogus=1", "bogus"),
            ("/api/audit?limit=0", "limit"),
            ("/api/audit?outcome=maybe", "outcome"),
        ] {
            let resp = get(&ctx.app, uri, &ctx.admin).await;
            assert_eq!(
                resp.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{uri}: {}",
                resp.text
            );
            assert!(resp.text.contains(field), "{uri}: {}", resp.text);
        }

        // Secret answers must not be cached on the way.
        let id = secret_doc(&ctx.state.store, "cache-me-not", "v").await;
        let with = get(
            &ctx.app,
            &format!("/api/block_documents/{id}?include_secrets=true"),
            &ctx.admin,
        )
        .await;
        assert_eq!(with.header(header::CACHE_CONTROL), Some("no-store"));
        let without = get(&ctx.app, &format!("/api/block_documents/{id}"), &ctx.admin).await;
        assert_eq!(without.header(header::CACHE_CONTROL), None);
    })
    .await;
}
