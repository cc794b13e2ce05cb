//! The console's rules without a browser, on SQLite and PostgreSQL: how a session is made
//! and ended, that its cookie never opens the API, that cross-site and stale forms change
//! nothing, what a `read` token sees, that secrets never reach a page, that hostile text is
//! inert, and that every console write is audited with the session's token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode, header};
use block_types::catalog::{Collection, Secret};
use secrecy::ExposeSecret as _;
use serde_json::json;
use tower::ServiceExt as _;
use uuid::Uuid;

use crate::http::test_app::{all_audit, lenient, token};
use crate::http::{AppState, AuthGuard, app};
use crate::store::tests::harness::{TestDb, create, on_both, register};
use crate::store::{AuditRecord, Scope, Store, TokenCreate};

#[path = "admin/tests.rs"]
mod admin;

const CANARY: &str = "canary-console-5e1f08";
const ORIGIN: &str = "http://console.test";
/// Where `/blocks` leads once the session has ended.
const ENDED: &str = "/sign-in?next=%2Fblocks&ended=1";

/// One answer: status, headers, body text.
struct Page {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Page {
    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn location(&self) -> &str {
        self.header(header::LOCATION)
    }

    /// The value of the page's field `name` (a hidden field such as `_schema`).
    #[track_caller]
    fn field(&self, name: &str) -> String {
        let start = format!("name=\"{name}\" value=\"");
        let at = self
            .text
            .find(&start)
            .unwrap_or_else(|| panic!("no field {name}: {}", self.text));
        let rest = &self.text[at + start.len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }

    /// The session's form token, read from a page's hidden `_csrf` field.
    #[track_caller]
    fn form_token(&self) -> String {
        self.field("_csrf")
    }

    /// Asserts the answer's status (the message carries the page) and returns the page.
    #[track_caller]
    fn expect(self, status: StatusCode) -> Self {
        assert_eq!(self.status, status, "{}", self.text);
        self
    }

    /// Asserts the answer is a redirect (303) to `location` and returns the page.
    #[track_caller]
    fn expect_redirect(self, location: &str) -> Self {
        let page = self.expect(StatusCode::SEE_OTHER);
        assert_eq!(page.location(), location);
        page
    }
}

/// A browser-like client of the console: loopback address, our origin, its cookie.
struct Browser {
    app: Router,
    peer: SocketAddr,
    cookie: Option<String>,
}

impl Browser {
    fn new(app: &Router) -> Self {
        Self {
            app: app.clone(),
            peer: "127.0.0.1:50000".parse().unwrap(),
            cookie: None,
        }
    }

    async fn request(
        &mut self,
        method: &str,
        uri: &str,
        form: Option<&[(&str, &str)]>,
        extra: &[(&str, &str)],
    ) -> Page {
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "console.test");
        if method != "GET" && !extra.iter().any(|(n, _)| n.eq_ignore_ascii_case("origin")) {
            builder = builder.header(header::ORIGIN, ORIGIN);
        }
        for (name, value) in extra {
            builder = builder.header(*name, *value);
        }
        if let Some(cookie) = &self.cookie {
            builder = builder.header(
                header::COOKIE,
                format!("{}={cookie}", super::session::COOKIE),
            );
        }
        let body = match form {
            Some(pairs) => {
                builder = builder.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                let mut s = form_urlencoded::Serializer::new(String::new());
                for (k, v) in pairs {
                    s.append_pair(k, v);
                }
                Body::from(s.finish())
            }
            None => Body::empty(),
        };
        let mut request = builder.body(body).unwrap();
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        for value in headers.get_all(header::SET_COOKIE) {
            let value = value.to_str().unwrap();
            let (pair, _) = value.split_once(';').unwrap();
            let (_, v) = pair.split_once('=').unwrap();
            self.cookie = (!v.is_empty()).then(|| v.to_owned());
        }
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        Page {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&mut self, uri: &str) -> Page {
        self.request("GET", uri, None, &[]).await
    }

    async fn post(&mut self, uri: &str, form: &[(&str, &str)]) -> Page {
        self.request("POST", uri, Some(form), &[]).await
    }

    async fn sign_in(&mut self, token: &str) -> Page {
        self.post("/sign-in", &[("token", token), ("next", "/blocks")])
            .await
    }

    /// A browser signed in with `token` (the sign-in must succeed).
    async fn signed_in(app: &Router, token: &str) -> Self {
        let mut browser = Self::new(app);
        browser.sign_in(token).await.expect(StatusCode::SEE_OTHER);
        browser
    }

    /// The form token of the session, from the blocks page.
    async fn form_token(&mut self) -> String {
        self.get("/blocks").await.form_token()
    }
}

struct Ctx {
    app: Router,
    state: AppState,
    admin: String,
    admin_id: Uuid,
}

async fn setup(db: &TestDb) -> Ctx {
    setup_with(db, lenient()).await
}

async fn setup_with(db: &TestDb, guard: AuthGuard) -> Ctx {
    setup_on(db.open().await, guard).await
}

/// The app over `store` (the core types registered), with an admin token.
async fn setup_on(store: Store, guard: AuthGuard) -> Ctx {
    let store = Arc::new(store);
    store.register_collection(Collection::Core).await.unwrap();
    let (admin, admin_id) = token(&store, &[Scope::Admin]).await;
    let state = AppState::with_guard(store, guard);
    Ctx {
        app: app(state.clone()),
        state,
        admin,
        admin_id,
    }
}

/// A `secret` block holding the canary.
async fn secret_block(store: &Store, name: &str) -> Uuid {
    let (_, schema) = register::<Secret>(store).await;
    create(store, &schema, name, json!({"value": CANARY}))
        .await
        .id
}

/// The version a form about document `id` carries (`_version`).
async fn version_of(store: &Store, id: Uuid) -> String {
    store.document_version(id).await.unwrap().to_string()
}

/// The console's audit records, newest first.
async fn console_audit(store: &Store) -> Vec<AuditRecord> {
    all_audit(store)
        .await
        .into_iter()
        .filter(|r| r.action.starts_with("console "))
        .collect()
}

/// The newest of `records` for `action` with `outcome`; fails listing them all when there is
/// none.
#[track_caller]
fn record_of<'a>(records: &'a [AuditRecord], action: &str, outcome: &str) -> &'a AuditRecord {
    records
        .iter()
        .find(|r| r.action == action && r.outcome == outcome)
        .unwrap_or_else(|| panic!("no {outcome} record of {action}: {records:?}"))
}

#[tokio::test]
async fn signing_in_makes_a_strict_session_cookie_and_pages_carry_strict_headers() {
    on_both(async |db| {
        let ctx = setup(db).await;
        let mut browser = Browser::new(&ctx.app);
        // Signed out: every page leads to the sign-in page, which names where to go back.
        browser
            .get("/blocks?q=zoom")
            .await
            .expect_redirect("/sign-in?next=%2Fblocks%3Fq%3Dzoom");

        let page = browser.sign_in(&ctx.admin).await.expect_redirect("/blocks");
        let cookie = page.header(header::SET_COOKIE).to_owned();
        for attribute in [
            "__Host-blocks-session=",
            "; Path=/",
            "; Secure",
            "; HttpOnly",
            "; SameSite=Strict",
        ] {
            assert!(cookie.contains(attribute), "{attribute} in {cookie}");
        }
        assert!(!cookie.contains("Domain"), "{cookie}");
        assert!(
            !cookie.contains(&ctx.admin),
            "the cookie is a session id, not the token"
        );

        for path in ["/blocks", "/catalog", "/blocks/new", "/blocks/new/secret"] {
            let page = browser.get(path).await;
            assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.text);
            assert_eq!(
                page.header(header::CONTENT_SECURITY_POLICY),
                super::CSP,
                "{path}"
            );
            assert_eq!(page.header(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
            assert_eq!(page.header(header::REFERRER_POLICY), "no-referrer");
            assert_eq!(page.header(header::CACHE_CONTROL), "no-store");
            assert!(
                !page.text.contains("http://") || !page.text.contains("src=\"http"),
                "{path} loads nothing from elsewhere"
            );
        }
        // A path nobody serves: the console's page outside /api, the API's JSON inside.
        let page = browser.get("/nowhere").await;
        assert_eq!(page.status, StatusCode::NOT_FOUND);
        assert!(page.header(header::CONTENT_TYPE).starts_with("text/html"));
        assert_eq!(page.header(header::CONTENT_SECURITY_POLICY), super::CSP);
        let page = browser.get("/api/nowhere").await;
        assert_eq!(page.status, StatusCode::NOT_FOUND);
        assert!(
            page.header(header::CONTENT_TYPE)
                .starts_with("application/json")
        );

        let records = console_audit(&ctx.state.store).await;
        let sign_in = record_of(&records, "console POST /sign-in", "ok");
        assert_eq!(sign_in.token_id, Some(ctx.admin_id));
    })
    .await;
}

#[tokio::test]
async fn the_session_cookie_never_opens_the_api() {
    on_both(async |db| {
        let ctx = setup(db).await;
        let id = secret_block(&ctx.state.store, "db-password").await;
        let mut browser = Browser::signed_in(&ctx.app, &ctx.admin).await;
        assert!(browser.cookie.is_some());
        for uri in [
            format!("/api/block_documents/{id}?include_secrets=true"),
            format!("/api/block_documents/{id}"),
            "/api/tokens".to_owned(),
        ] {
            let page = browser.get(&uri).await;
            assert_eq!(
                page.status,
                StatusCode::UNAUTHORIZED,
                "{uri}: {}",
                page.text
            );
            assert!(!page.text.contains(CANARY));
        }
        let page = browser
            .request("DELETE", &format!("/api/block_documents/{id}"), None, &[])
            .await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED);
        assert!(ctx.state.store.read_block_document(id, false).await.is_ok());
    })
    .await;
}

#[tokio::test]
async fn signing_in_over_plain_http_from_another_host_is_refused_and_guesses_are_limited() {
    on_both(async |db| {
        let ctx = setup_with(db, AuthGuard::new(3, Duration::from_secs(60))).await;
        let mut remote = Browser::new(&ctx.app);
        remote.peer = "192.0.2.10:40000".parse().unwrap();
        let page = remote
            .sign_in(&ctx.admin)
            .await
            .expect(StatusCode::FORBIDDEN);
        assert!(page.text.contains("plain HTTP"), "{}", page.text);
        assert!(remote.cookie.is_none());

        // Wrong tokens count toward the address's limit; then even the right one waits.
        let mut local = Browser::new(&ctx.app);
        for _ in 0..3 {
            let page = local
                .sign_in("blk_not-a-token")
                .await
                .expect(StatusCode::UNAUTHORIZED);
            assert!(
                page.text.contains("aria-invalid=\"true\""),
                "the error is at the field"
            );
            assert!(
                !page.text.contains("blk_not-a-token"),
                "the page never echoes a token"
            );
        }
        local
            .sign_in("blk_still-not-a-token")
            .await
            .expect(StatusCode::TOO_MANY_REQUESTS);
        assert!(local.cookie.is_none());
        let failed = console_audit(&ctx.state.store)
            .await
            .into_iter()
            .filter(|r| r.action == "console POST /sign-in" && r.outcome == "denied")
            .count();
        assert!(failed >= 3, "{failed} refused sign-ins recorded");
    })
    .await;
}

#[tokio::test]
async fn cross_site_and_stale_forms_change_nothing() {
    on_both(async |db| {
        let ctx = setup(db).await;
        let store = &ctx.state.store;
        let id = secret_block(store, "keep-me").await;
        let mut browser = Browser::signed_in(&ctx.app, &ctx.admin).await;
        let csrf = browser.form_token().await;
        let version = version_of(store, id).await;
        let uri = format!("/blocks/{id}/delete");
        let form = [("_csrf", csrf.as_str()), ("_version", version.as_str())];

        // Another origin, a cross-site fetch, or no origin at all: refused before anything.
        for headers in [
            vec![("origin", "https://evil.example")],
            vec![("origin", "null")],
            vec![("origin", ORIGIN), ("sec-fetch-site", "cross-site")],
            vec![("origin", ""), ("sec-fetch-site", "same-site")],
            vec![("origin", "null"), ("sec-fetch-site", "none")],
        ] {
            let page = browser.request("POST", &uri, Some(&form), &headers).await;
            assert_eq!(
                page.status,
                StatusCode::FORBIDDEN,
                "{headers:?}: {}",
                page.text
            );
        }
        // What Chromium sends from our own page under `Referrer-Policy: no-referrer`:
        // `Origin: null` with `Sec-Fetch-Site: same-origin`; without the form token it
        // still changes nothing.
        let page = browser
            .request(
                "POST",
                &uri,
                Some(&[("_version", version.as_str())]),
                &[("origin", "null"), ("sec-fetch-site", "same-origin")],
            )
            .await;
        assert_eq!(page.status, StatusCode::FORBIDDEN);
        assert!(page.text.contains("form token"), "{}", page.text);
        // Our origin without the session's form token, or with another session's.
        let another = "0123456789abcdef0123456789abcdef01234567";
        for form in [vec![], vec![("_csrf", another)]] {
            let form = [form, vec![("_version", version.as_str())]].concat();
            browser
                .post(&uri, &form)
                .await
                .expect(StatusCode::FORBIDDEN);
        }
        // A form read before someone else's change.
        store
            .update_block_document(
                id,
                serde_json::from_value(json!({"data": {"value": "changed"}})).unwrap(),
                None,
                crate::store::Rights::ADMIN,
            )
            .await
            .unwrap();
        let page = browser.post(&uri, &form).await.expect(StatusCode::CONFLICT);
        assert!(page.text.contains("changed after this page was loaded"));
        assert!(
            store.read_block_document(id, false).await.is_ok(),
            "still there"
        );

        // The real thing: the current version, our origin, the form token.
        let version = version_of(store, id).await;
        browser
            .post(&uri, &[("_csrf", &csrf), ("_version", &version)])
            .await
            .expect_redirect("/blocks?deleted=keep%2Dme");
        assert!(store.read_block_document(id, false).await.is_err());
        let records = console_audit(store).await;
        let delete = record_of(&records, "console POST /blocks/{id}/delete", "ok");
        assert_eq!(delete.token_id, Some(ctx.admin_id));
        assert_eq!(delete.target, format!("/api/block_documents/{id}"));
    })
    .await;
}

#[tokio::test]
async fn a_read_token_sees_masked_values_and_no_way_to_change_them() {
    on_both(async |db| {
        let ctx = setup(db).await;
        let store = &ctx.state.store;
        let id = secret_block(store, "db-password").await;
        let (reader, _) = token(store, &[Scope::Read]).await;
        let mut browser = Browser::signed_in(&ctx.app, &reader).await;
        let page = browser
            .get(&format!("/blocks/{id}"))
            .await
            .expect(StatusCode::OK);
        assert!(page.text.contains("db-password"));
        assert!(
            !page.text.contains(CANARY),
            "a secret never reaches the page"
        );
        assert!(page.text.contains("secret"));
        assert!(
            !page.text.contains(&format!("/blocks/{id}/edit")),
            "no edit button"
        );
        assert!(
            !page.text.contains(&format!("/blocks/{id}/delete")),
            "no delete button"
        );
        assert!(!browser.get("/blocks").await.text.contains("Add block"));

        for path in [
            format!("/blocks/{id}/edit"),
            format!("/blocks/{id}/delete"),
            "/blocks/new/secret".to_owned(),
        ] {
            let page = browser.get(&path).await;
            assert_eq!(page.status, StatusCode::FORBIDDEN, "{path}");
            assert!(
                page.text.contains("needs a token with the write scope"),
                "{path}: {}",
                page.text
            );
        }
        let csrf = browser.form_token().await;
        let sneaky = [
            ("_csrf", csrf.as_str()),
            ("_name", "sneaky"),
            ("data.value", "x"),
        ];
        browser
            .post("/blocks/new/secret", &sneaky)
            .await
            .expect(StatusCode::FORBIDDEN);
        assert!(!has_block(store, "secret", "sneaky").await);
    })
    .await;
}

/// The form of a new `secret` block as a signed-in browser read it: its form token and
/// schema, posted back with a secret typed as text.
struct SecretForm {
    csrf: String,
    schema: String,
}

impl SecretForm {
    async fn read(browser: &mut Browser) -> Self {
        let form = browser
            .get("/blocks/new/secret")
            .await
            .expect(StatusCode::OK);
        Self {
            csrf: form.form_token(),
            schema: form.field("_schema"),
        }
    }

    /// Posts the form to `uri` with `field` (`_name` or `_version`) and `secret` typed in.
    /// The built-in Secret holds a secret string or secret JSON: the form offers the choice.
    async fn post(
        &self,
        browser: &mut Browser,
        uri: &str,
        field: (&str, &str),
        secret: &str,
    ) -> Page {
        let form = [
            ("_csrf", self.csrf.as_str()),
            ("_schema", self.schema.as_str()),
            field,
            ("data.value#choice", "0"),
            ("data.value#a0", secret),
        ];
        browser.post(uri, &form).await
    }

    /// Creates the block `name` holding `secret`.
    async fn create(&self, browser: &mut Browser, name: &str, secret: &str) -> Page {
        self.post(browser, "/blocks/new/secret", ("_name", name), secret)
            .await
    }

    /// Edits block `id` as of `version`, typing `secret` (empty: keep the stored one).
    async fn edit(&self, browser: &mut Browser, id: Uuid, version: &str, secret: &str) -> Page {
        let uri = format!("/blocks/{id}/edit");
        self.post(browser, &uri, ("_version", version), secret)
            .await
    }
}

/// Whether the block `slug/name` exists.
async fn has_block(store: &Store, slug: &str, name: &str) -> bool {
    store
        .read_block_document_by_name(slug, name, false)
        .await
        .is_ok()
}

#[tokio::test]
async fn creating_and_editing_keeps_secrets_out_of_pages_and_audits_with_the_session_token() {
    on_both(async |db| {
        let ctx = setup(db).await;
        let store = &ctx.state.store;
        let (writer, writer_id) = token(store, &[Scope::Write]).await;
        let mut browser = Browser::signed_in(&ctx.app, &writer).await;
        let form = SecretForm::read(&mut browser).await;

        // A bad name: refused at its field, the secret typed is not sent back.
        let page = form
            .create(&mut browser, "Bad Name!", CANARY)
            .await
            .expect(StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            page.text.contains("block-name-error"),
            "the error is at the name field"
        );
        assert!(
            !page.text.contains(CANARY),
            "a typed secret is never sent back"
        );
        assert!(!has_block(store, "secret", "Bad Name!").await);

        // Created: the page of the new block, with the snippet.
        let page = form
            .create(&mut browser, "db-password", CANARY)
            .await
            .expect(StatusCode::SEE_OTHER);
        let doc = store
            .read_block_document_by_name("secret", "db-password", true)
            .await
            .unwrap();
        assert_eq!(doc.data["value"], json!(CANARY));
        assert_eq!(page.location(), format!("/blocks/{}?saved=created", doc.id));
        let detail = browser.get(page.location()).await;
        assert!(
            detail
                .text
                .contains("Secret::load(&quot;db-password&quot;)"),
            "{}",
            detail.text
        );
        assert!(!detail.text.contains(CANARY));

        // The same name again: at the name field.
        let page = form
            .create(&mut browser, "db-password", "x")
            .await
            .expect(StatusCode::CONFLICT);
        assert!(page.text.contains("already exists"));

        // Edit: the secret field is empty, and left empty it keeps the stored value.
        let edit = browser
            .get(&format!("/blocks/{}/edit", doc.id))
            .await
            .expect(StatusCode::OK);
        assert!(!edit.text.contains(CANARY));
        assert!(
            !edit.text.contains("********"),
            "not even the mask is pre-filled"
        );
        let secret_now =
            async || store.read_block_document(doc.id, true).await.unwrap().data["value"].clone();
        let version = version_of(store, doc.id).await;
        form.edit(&mut browser, doc.id, &version, "")
            .await
            .expect(StatusCode::SEE_OTHER);
        assert_eq!(secret_now().await, json!(CANARY));
        // Typed, it replaces the stored value.
        let version = version_of(store, doc.id).await;
        form.edit(&mut browser, doc.id, &version, "new-value")
            .await
            .expect(StatusCode::SEE_OTHER);
        assert_eq!(secret_now().await, json!("new-value"));
        // A stale form: 409, nothing overwritten.
        let page = form
            .edit(&mut browser, doc.id, &version, "stale")
            .await
            .expect(StatusCode::CONFLICT);
        assert!(page.text.contains("changed by someone else"));
        assert!(
            !page.text.contains("stale"),
            "the typed secret is not sent back"
        );
        assert_eq!(secret_now().await, json!("new-value"));

        // Every console write is recorded with the session's token; no value in any record.
        let records = console_audit(store).await;
        let writes: Vec<_> = records
            .iter()
            .filter(|r| r.action.contains("/blocks/"))
            .collect();
        assert!(writes.len() >= 5, "{writes:?}");
        for r in &records {
            assert_eq!(r.token_id, Some(writer_id), "{r:?}");
            let line = format!("{r:?}");
            assert!(
                !line.contains(CANARY) && !line.contains("new-value"),
                "{line}"
            );
        }
        assert!(
            writes.iter().any(
                |r| r.outcome == "ok" && r.target == format!("/api/block_documents/{}", doc.id)
            )
        );
        assert!(writes.iter().any(|r| r.status == 409));
    })
    .await;
}

#[tokio::test]
async fn a_revoked_token_ends_its_console_sessions_and_signing_out_ends_the_session() {
    on_both(async |db| {
        let ctx = setup(db).await;
        let (writer, writer_id) = token(&ctx.state.store, &[Scope::Write]).await;
        let mut browser = Browser::signed_in(&ctx.app, &writer).await;
        assert_eq!(browser.get("/blocks").await.status, StatusCode::OK);
        ctx.state.store.revoke_token(writer_id).await.unwrap();
        let page = browser.get("/blocks").await.expect_redirect(ENDED);
        assert!(
            page.header(header::SET_COOKIE).contains("Max-Age=0"),
            "the dead cookie is cleared"
        );
        assert!(
            browser
                .get("/sign-in?ended=1")
                .await
                .text
                .contains("Your session has ended")
        );

        let mut browser = Browser::signed_in(&ctx.app, &ctx.admin).await;
        let old_cookie = browser.cookie.clone();
        let csrf = browser.form_token().await;
        let page = browser.post("/sign-out", &[("_csrf", &csrf)]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER);
        assert!(browser.cookie.is_none());
        // The old cookie, replayed, opens nothing.
        browser.cookie = old_cookie;
        assert_eq!(browser.get("/blocks").await.status, StatusCode::SEE_OTHER);
    })
    .await;
}

#[tokio::test]
async fn hostile_type_text_renders_inert() {
    on_both(async |db| {
        let ctx = setup(db).await;
        let store = &ctx.state.store;
        let hostile = "<script>alert(1)</script>\"onerror=alert(2) <img src=x onerror=alert(3)>";
        let ty = store
            .create_block_type(
                serde_json::from_value(json!({
                    "name": "Evil \"onerror=alert(4) x",
                    "slug": "evil",
                    "description": format!("{hostile}\n\n[docs](javascript:alert(5)) ![logo](https://evil.example/x.png)"),
                    "logo_url": "https://evil.example/logo.png",
                }))
                .unwrap(),
            )
            .await
            .unwrap();
        let (schema, _) = store
            .create_block_schema(
                serde_json::from_value(json!({
                    "block_type_id": ty.id,
                    "capabilities": [],
                    "version": "1",
                    "fields": {"title": "Evil", "type": "object", "properties": {
                        "x": {"title": "<script>alert(6)</script>", "description": hostile, "type": "string", "default": "\"><script>alert(7)</script>"}
                    }},
                }))
                .unwrap(),
                crate::store::Rights::ADMIN,
            )
            .await
            .unwrap();
        let doc = create(store, &schema, "evil-doc", json!({"x": "</dd><script>alert(8)</script>"})).await;
        let mut browser = Browser::signed_in(&ctx.app, &ctx.admin).await;
        for path in ["/catalog".to_owned(), "/blocks".to_owned(), format!("/blocks/{}", doc.id), "/blocks/new/evil".to_owned(), format!("/blocks/{}/edit", doc.id)] {
            let page = browser.get(&path).await;
            assert_eq!(page.status, StatusCode::OK, "{path}");
            for needle in ["<script>alert", "<img src=x", "href=\"javascript", "src=\"https://evil.example"] {
                assert!(!page.text.contains(needle), "{needle} on {path}");
            }
            // No tag carries an event handler (the text may show one, escaped).
            for tag in page.text.split('<').skip(1) {
                let tag = &tag[..tag.find('>').unwrap_or(tag.len())];
                // Attribute names only: quoted values (where escaped text may say anything)
                // are dropped.
                let names: String = tag.split('"').step_by(2).collect();
                assert!(!names.to_lowercase().contains("onerror"), "<{tag}> on {path}");
            }
            // The only script is our own module.
            assert_eq!(page.text.matches("<script").count(), 1, "{path}");
        }
        let catalog = browser.get("/catalog").await.text;
        assert!(catalog.contains("Evil &quot;onerror=alert(4) x"), "{catalog}");
        assert!(catalog.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{catalog}");
    })
    .await;
}

#[tokio::test]
async fn a_crafted_draft_or_form_is_refused_without_harm() {
    on_both(async |db| {
        let ctx = setup(db).await;
        let store = &ctx.state.store;
        let mut browser = Browser::signed_in(&ctx.app, &ctx.admin).await;
        let form = browser.get("/blocks/new/string").await;
        let csrf = form.form_token();
        let schema = form.field("_schema");
        let string_block = |name, parent| {
            [
                ("_csrf", csrf.as_str()),
                ("_schema", schema.as_str()),
                ("_name", name),
                ("data.value", "x"),
                ("_parent", parent),
            ]
        };
        // A draft whose path would nest 100,000 levels deep: refused before anything.
        let deep = format!(
            "{{\"target\":\"new:string\",\"path\":\"data.{}\",\"data\":{{}}}}",
            ".".repeat(100_000)
        );
        browser
            .post("/blocks/new/string", &string_block("deep", deep.as_str()))
            .await
            .expect(StatusCode::UNPROCESSABLE_ENTITY);
        assert!(!has_block(store, "string", "deep").await);
        // A draft pointing at a type that does not exist: the block is created and said so,
        // and the audit record names it.
        let odd = "{\"target\":\"new:no-such-type\",\"path\":\"data.x\",\"data\":{}}";
        let page = browser
            .post("/blocks/new/string", &string_block("made", odd))
            .await
            .expect(StatusCode::SEE_OTHER);
        let made = store
            .read_block_document_by_name("string", "made", false)
            .await
            .unwrap();
        assert_eq!(
            page.location(),
            format!("/blocks/{}?saved=created", made.id)
        );
        let records = console_audit(store).await;
        assert!(
            records
                .iter()
                .any(|r| r.target == format!("/api/block_documents/{}", made.id)
                    && r.outcome == "ok")
        );
        // Too many fields.
        let many: Vec<(String, String)> = (0..6_000)
            .map(|i| (format!("data.x{i}"), String::new()))
            .collect();
        let mut pairs: Vec<(&str, &str)> =
            vec![("_csrf", &csrf), ("_schema", &schema), ("_name", "many")];
        pairs.extend(many.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let page = browser
            .post("/blocks/new/string", &pairs)
            .await
            .expect(StatusCode::PAYLOAD_TOO_LARGE);
        assert!(page.header(header::CONTENT_TYPE).starts_with("text/html"));
    })
    .await;
}

#[tokio::test]
async fn history_names_the_writers_and_says_only_whether_a_secret_changed() {
    on_both(async |db| {
        let ctx = setup(db).await;
        let store = &ctx.state.store;
        let (_, writer_id) = token(store, &[Scope::Write]).await;
        let id = secret_block(store, "db-password").await;
        let rights = crate::store::Rights::WRITE.by(writer_id);
        for value in ["second-canary-0b1c", CANARY] {
            store
                .update_block_document(
                    id,
                    serde_json::from_value(json!({"data": {"value": value}})).unwrap(),
                    None,
                    rights,
                )
                .await
                .unwrap();
        }
        let mut browser = Browser::signed_in(&ctx.app, &ctx.admin).await;
        let page = browser
            .get(&format!("/blocks/{id}/history"))
            .await
            .expect(StatusCode::OK);
        assert!(
            page.text.contains("test [Write]"),
            "the writer's token name: {}",
            page.text
        );
        assert!(page.text.contains(&writer_id.to_string()[..8]));
        assert!(
            page.text.contains("not recorded"),
            "the first version's writer was not recorded"
        );
        // v1 and v3 hold the same secret; v2 another.
        let same = browser
            .get(&format!("/blocks/{id}/history?compare=1"))
            .await;
        assert!(same.text.contains("unchanged"), "{}", same.text);
        let changed = browser
            .get(&format!("/blocks/{id}/history?compare=2"))
            .await;
        assert!(
            changed.text.contains("<strong>changed</strong>"),
            "{}",
            changed.text
        );
        for page in [&page, &same, &changed] {
            assert!(
                !page.text.contains(CANARY) && !page.text.contains("second-canary"),
                "no secret on the page"
            );
            assert_eq!(page.header(header::CACHE_CONTROL), "no-store");
        }
        assert_eq!(
            browser
                .get(&format!("/blocks/{id}/history?compare=99"))
                .await
                .status,
            StatusCode::NOT_FOUND
        );
        // A read token sees the history too, still without values.
        let (reader, _) = token(store, &[Scope::Read]).await;
        let mut reader_browser = Browser::signed_in(&ctx.app, &reader).await;
        let page = reader_browser
            .get(&format!("/blocks/{id}/history?compare=2"))
            .await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(!page.text.contains(CANARY) && !page.text.contains("second-canary"));
        assert!(
            page.text.contains("not compared") && !page.text.contains("<strong>changed</strong>"),
            "a read token is not told whether a secret changed"
        );
        // Telling the admin whether the secret changed is recorded; the reader was told
        // nothing, and nothing is recorded for it.
        let compared: Vec<_> = console_audit(store)
            .await
            .into_iter()
            .filter(|r| r.action == "console GET /blocks/{id}/history")
            .collect();
        assert_eq!(compared.len(), 2, "{compared:?}");
        assert!(compared.iter().all(|r| r.token_id == Some(ctx.admin_id)));
        assert!(
            compared
                .iter()
                .any(|r| r.target == format!("/api/block_documents/{id} versions=2,3"))
        );
    })
    .await;
}

#[tokio::test]
async fn registering_a_collection_needs_write_and_a_known_name() {
    on_both(async |db| {
        let ctx = setup(db).await;
        let store = &ctx.state.store;
        let (reader, _) = token(store, &[Scope::Read]).await;
        let register = async |token: &str, collection: &str| {
            let mut browser = Browser::signed_in(&ctx.app, token).await;
            let csrf = browser.form_token().await;
            let form = [("_csrf", csrf.as_str()), ("collection", collection)];
            browser.post("/catalog/register", &form).await
        };
        let page = register(&reader, "gcp").await.expect(StatusCode::FORBIDDEN);
        assert!(page.text.contains("write scope"));
        assert!(store.read_block_type_by_slug("gcs-bucket").await.is_err());

        let page = register(&ctx.admin, "<nope>")
            .await
            .expect(StatusCode::UNPROCESSABLE_ENTITY);
        assert!(page.text.contains("&lt;nope&gt;") && !page.text.contains("<nope>"));
        register(&ctx.admin, "gcp")
            .await
            .expect(StatusCode::SEE_OTHER);
        assert!(store.read_block_type_by_slug("gcs-bucket").await.is_ok());
        let records = console_audit(store).await;
        assert!(
            records
                .iter()
                .any(|r| r.action == "console POST /catalog/register" && r.status == 403)
        );
    })
    .await;
}

mod beyond;

#[tokio::test]
async fn a_token_limited_by_grants_does_not_open_the_console() {
    on_both(async |db| {
        let ctx = setup(db).await;
        let store = &ctx.state.store;
        let limited = store
            .create_token(TokenCreate {
                name: "limited".into(),
                scopes: [Scope::ReadSecrets].into(),
                grants: vec![crate::store::Grant::parse("read-secrets:secret/zoom-*").unwrap()],
                ..Default::default()
            })
            .await
            .unwrap();
        let mut browser = Browser::new(&ctx.app);
        let page = browser
            .sign_in(limited.token.expose_secret())
            .await
            .expect(StatusCode::FORBIDDEN);
        assert!(page.text.contains("limited by grants"), "{}", page.text);
        assert!(browser.cookie.is_none(), "no session for a limited token");

        // Grants set on a token after it signed in end its sessions.
        let (reader, reader_id) = token(store, &[Scope::Read]).await;
        let mut browser = Browser::signed_in(&ctx.app, &reader).await;
        assert_eq!(browser.get("/blocks").await.status, StatusCode::OK);
        store
            .set_token_grants(
                reader_id,
                vec![crate::store::Grant::parse("read:secret/*").unwrap()],
            )
            .await
            .unwrap();
        browser.get("/blocks").await.expect_redirect(ENDED);
    })
    .await;
}
