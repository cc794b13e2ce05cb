//! The admin pages without a browser, on SQLite and PostgreSQL: refused to sessions
//! without `admin` (a 403 naming the scope) and to forms without the form token, a new
//! token's secret shown once and nowhere else (not the list, the audit log or the log
//! output), revocation ending the token's console sessions, the audit log's filters,
//! cursor and downloads, key rotation audited and followed to its end, and the settings.
//!
//! Declared from `console/tests.rs`, whose in-process [`Browser`] these tests drive.

use std::time::Duration;

use chrono::{TimeZone as _, Utc};

use super::*;
use crate::http::test_app::LogBuffer;
use crate::store::{MasterKeyOrigin, NewAuditRecord, StoreConfig};

/// Signs a browser in with `token` and returns it with its form token.
async fn signed_in(app: &Router, token: &str) -> (Browser, String) {
    let mut browser = Browser::signed_in(app, token).await;
    let csrf = browser.form_token().await;
    (browser, csrf)
}

/// The posts of the admin pages, with a valid body each (given the form token).
fn admin_posts(csrf: &str, token_id: Uuid) -> Vec<(String, Vec<(&'static str, String)>)> {
    vec![
        (
            "/admin/tokens".to_owned(),
            vec![
                ("_csrf", csrf.to_owned()),
                ("name", "sneaky".to_owned()),
                ("scope", "admin".to_owned()),
            ],
        ),
        (
            format!("/admin/tokens/{token_id}/revoke"),
            vec![("_csrf", csrf.to_owned())],
        ),
        (
            "/admin/keys/rotate".to_owned(),
            vec![("_csrf", csrf.to_owned())],
        ),
        (
            "/admin/keys/resume".to_owned(),
            vec![("_csrf", csrf.to_owned())],
        ),
        (
            "/admin/settings".to_owned(),
            vec![
                ("_csrf", csrf.to_owned()),
                ("retention", "1".to_owned()),
                ("audit_retention_days", "1".to_owned()),
            ],
        ),
    ]
}

const ADMIN_PAGES: [&str; 9] = [
    "/admin",
    "/admin/tokens",
    "/admin/tokens/new",
    "/admin/audit",
    "/admin/audit/download?format=csv",
    "/admin/keys",
    "/admin/keys/rotate",
    "/admin/keys/progress",
    "/admin/settings",
];

/// What the admin posts could change: tokens, keys, settings.
async fn admin_state(store: &Store) -> (String, String, String) {
    let tokens: Vec<_> = store
        .list_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.id, t.revoked))
        .collect();
    let keys = store.key_status().await.unwrap();
    let settings = (
        store.retention().await.unwrap(),
        store.audit_retention_days().await.unwrap(),
    );
    (
        format!("{tokens:?}"),
        format!("{keys:?}"),
        format!("{settings:?}"),
    )
}

async fn post_pairs(browser: &mut Browser, uri: &str, pairs: &[(&'static str, String)]) -> Page {
    let form: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    browser.post(uri, &form).await
}

#[tokio::test]
async fn a_session_without_admin_gets_a_403_naming_the_scope_on_every_admin_page_and_post() {
    on_both(async |db| {
        let ctx = setup(db).await;
        let store = &ctx.state.store;
        let (_, victim_id) = token(store, &[Scope::Read]).await;
        // Signed out: the usual way to the sign-in page.
        let mut anonymous = Browser::new(&ctx.app);
        for path in ADMIN_PAGES {
            let page = anonymous.get(path).await;
            assert_eq!(page.status, StatusCode::SEE_OTHER, "{path}");
            assert!(page.location().starts_with("/sign-in?next="), "{path}");
        }

        for scopes in [&[Scope::Read][..], &[Scope::Write, Scope::ReadSecrets][..]] {
            let (secret, _) = token(store, scopes).await;
            let (mut browser, csrf) = signed_in(&ctx.app, &secret).await;
            let blocks = browser.get("/blocks").await;
            assert!(
                !blocks.text.contains("href=\"/admin/tokens\""),
                "the Admin entry is shown to admin sessions only"
            );
            for path in ADMIN_PAGES {
                let page = browser.get(path).await;
                assert_eq!(page.status, StatusCode::FORBIDDEN, "{path}: {}", page.text);
                assert!(
                    page.text.contains("the admin scope"),
                    "{path} names the scope: {}",
                    page.text
                );
            }
            let page = browser.get("/admin/keys/progress.json").await;
            assert_eq!(page.status, StatusCode::FORBIDDEN);
            let before = admin_state(store).await;
            for (uri, pairs) in admin_posts(&csrf, victim_id) {
                let page = post_pairs(&mut browser, &uri, &pairs).await;
                assert_eq!(page.status, StatusCode::FORBIDDEN, "{uri}: {}", page.text);
                assert!(
                    page.text.contains("the admin scope"),
                    "{uri}: {}",
                    page.text
                );
            }
            assert_eq!(
                admin_state(store).await,
                before,
                "a refused post changes nothing"
            );
        }
        // Each refusal is in the audit log, as the API's would be.
        let denied = console_audit(store)
            .await
            .into_iter()
            .filter(|r| r.action.contains("/admin/") && r.outcome == "denied")
            .count();
        assert_eq!(denied, 2 * 5, "every refused admin post is recorded");

        // An admin session sees the Admin entry, marked current on the admin pages.
        let (mut admin, _) = signed_in(&ctx.app, &ctx.admin).await;
        assert!(
            admin
                .get("/blocks")
                .await
                .text
                .contains("href=\"/admin/tokens\"")
        );
        for path in ADMIN_PAGES {
            let page = admin.get(path).await;
            assert!(
                page.status == StatusCode::OK || page.status == StatusCode::SEE_OTHER,
                "{path}: {} {}",
                page.status,
                page.text
            );
        }
        let page = admin.get("/admin/audit").await;
        assert!(
            page.text
                .contains("href=\"/admin/tokens\" aria-current=\"page\">Admin"),
            "{}",
            page.text
        );
        assert!(
            page.text
                .contains("href=\"/admin/audit\" aria-current=\"page\">Audit log")
        );
    })
    .await;
}

#[tokio::test]
async fn admin_posts_without_the_form_token_change_nothing() {
    on_both(async |db| {
        let ctx = setup(db).await;
        let store = &ctx.state.store;
        let (_, other) = token(store, &[Scope::Write]).await;
        let (mut browser, csrf) = signed_in(&ctx.app, &ctx.admin).await;
        let before = admin_state(store).await;
        for (uri, pairs) in admin_posts(&csrf, other) {
            let without: Vec<_> = pairs
                .iter()
                .filter(|(k, _)| *k != "_csrf")
                .cloned()
                .collect();
            let page = post_pairs(&mut browser, &uri, &without).await;
            assert_eq!(page.status, StatusCode::FORBIDDEN, "{uri}: {}", page.text);
            assert!(page.text.contains("form token"), "{uri}");
            let mut wrong = without.clone();
            wrong.push(("_csrf", "0".repeat(40)));
            let page = post_pairs(&mut browser, &uri, &wrong).await;
            assert_eq!(page.status, StatusCode::FORBIDDEN, "{uri}");
            // From another site, even with the right form token.
            let form: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let page = browser
                .request(
                    "POST",
                    &uri,
                    Some(&form),
                    &[("origin", "https://evil.example")],
                )
                .await;
            assert_eq!(page.status, StatusCode::FORBIDDEN, "{uri}");
        }
        assert_eq!(admin_state(store).await, before);
    })
    .await;
}

#[tokio::test]
async fn a_new_token_is_shown_once_and_never_in_the_list_the_audit_log_or_the_logs() {
    let (logs, _guard) = LogBuffer::capture();
    on_both(async |db| {
        let ctx = setup(db).await;
        let store = &ctx.state.store;
        let (mut browser, csrf) = signed_in(&ctx.app, &ctx.admin).await;
        let form = browser.get("/admin/tokens/new").await;
        assert_eq!(form.status, StatusCode::OK);
        assert!(form.text.contains("<label for=\"name\">"));

        // Bad input: the message at each field, nothing created.
        let count = store.list_tokens().await.unwrap().len();
        let page = browser
            .post(
                "/admin/tokens",
                &[("_csrf", &csrf), ("name", ""), ("expires_days", "0")],
            )
            .await
            .expect(StatusCode::UNPROCESSABLE_ENTITY);
        for field in ["name", "expires_days"] {
            assert!(
                page.text.contains(&format!("id=\"{field}-error\"")),
                "{field}"
            );
        }
        assert!(page.text.contains("id=\"scopes-error\""));
        assert!(page.text.contains("aria-invalid=\"true\""));
        assert_eq!(store.list_tokens().await.unwrap().len(), count);

        let page = browser
            .post(
                "/admin/tokens",
                &[
                    ("_csrf", &csrf),
                    ("name", "ci-deploy"),
                    ("scope", "write"),
                    ("scope", "read-secrets"),
                    ("expires_days", "30"),
                ],
            )
            .await
            .expect(StatusCode::CREATED);
        assert_eq!(page.header(header::CACHE_CONTROL), "no-store");
        let at = page.text.find("id=\"new-token\">").expect("the new token") + 15;
        let secret = page.text[at..at + page.text[at..].find('<').unwrap()].to_owned();
        assert!(secret.starts_with("blk_"), "{secret}");
        assert!(page.text.contains("only time it is shown"));
        assert!(page.text.contains("data-copy=\"new-token\""));
        let info = store
            .authenticate(&secret)
            .await
            .unwrap()
            .expect("the new token works");
        assert_eq!(info.name, "ci-deploy");
        assert_eq!(
            info.scopes,
            [Scope::ReadSecrets, Scope::Write].into_iter().collect()
        );
        assert!(
            info.expires
                .is_some_and(|e| e > Utc::now() + chrono::Duration::days(29))
        );

        let list = browser.get("/admin/tokens").await;
        assert_eq!(list.status, StatusCode::OK);
        assert!(list.text.contains("ci-deploy"));
        assert!(list.text.contains(&info.id.to_string()));
        assert!(
            !list.text.contains(&secret),
            "the list never shows a secret"
        );
        assert!(!list.text.contains(&ctx.admin));

        let records = console_audit(store).await;
        let created = record_of(&records, "console POST /admin/tokens", "ok");
        assert_eq!(created.target, format!("/api/tokens/{}", info.id));
        assert_eq!(created.token_id, Some(ctx.admin_id));
        let text = format!("{:?}", all_audit(store).await);
        assert!(!text.contains(&secret), "no audit record holds the secret");
        // The audit page and its download neither.
        for uri in [
            "/admin/audit",
            "/admin/audit/download?format=csv",
            "/admin/audit/download?format=jsonl",
        ] {
            let page = browser.get(uri).await;
            assert!(!page.text.contains(&secret), "{uri}");
        }
        assert!(
            !logs.contents().contains(&secret),
            "the log never holds the secret"
        );
        assert!(!logs.contents().contains(&ctx.admin));
    })
    .await;
}

#[tokio::test]
async fn revoking_a_token_ends_its_console_sessions() {
    on_both(async |db| {
        let ctx = setup(db).await;
        let store = &ctx.state.store;
        let (writer, writer_id) = token(store, &[Scope::Write]).await;
        let (mut theirs, _) = signed_in(&ctx.app, &writer).await;
        assert_eq!(theirs.get("/blocks").await.status, StatusCode::OK);

        let (mut admin, csrf) = signed_in(&ctx.app, &ctx.admin).await;
        let confirm = admin
            .get(&format!("/admin/tokens/{writer_id}/revoke"))
            .await
            .expect(StatusCode::OK);
        assert!(
            confirm
                .text
                .contains("console session signed in with it ends")
        );
        assert_eq!(
            admin.get("/admin/tokens/not-a-uuid/revoke").await.status,
            StatusCode::NOT_FOUND
        );
        let revoke = async |browser: &mut Browser, id: Uuid| {
            let form = [("_csrf", csrf.as_str())];
            browser
                .post(&format!("/admin/tokens/{id}/revoke"), &form)
                .await
        };
        let done = revoke(&mut admin, writer_id)
            .await
            .expect_redirect(&format!("/admin/tokens?revoked={writer_id}"));
        let list = admin.get(done.location()).await;
        assert!(list.text.contains("is revoked"), "{}", list.text);

        // Their next page: the session has ended.
        let page = theirs.get("/blocks").await;
        assert_eq!(page.status, StatusCode::SEE_OTHER);
        assert!(page.location().contains("ended=1"), "{}", page.location());
        assert!(
            theirs.cookie.is_none(),
            "the ended session's cookie is cleared"
        );
        assert_eq!(
            ctx.state
                .store
                .end_sessions_of_token(writer_id)
                .await
                .unwrap(),
            0,
            "the session rows are gone too"
        );
        let records = console_audit(store).await;
        let revoked = record_of(&records, "console POST /admin/tokens/{id}/revoke", "ok");
        assert_eq!(revoked.target, format!("/api/tokens/{writer_id}"));

        // The last admin token cannot be revoked; the page says why.
        let page = revoke(&mut admin, ctx.admin_id)
            .await
            .expect(StatusCode::CONFLICT);
        assert!(page.text.contains("last valid admin token"));
        // Revoking one's own token (with another admin left) signs one out.
        token(store, &[Scope::Admin]).await;
        revoke(&mut admin, ctx.admin_id)
            .await
            .expect_redirect("/sign-in?ended=1");
        assert_eq!(
            admin.get("/admin/tokens").await.status,
            StatusCode::SEE_OTHER
        );
    })
    .await;
}

fn record(
    at_s: i64,
    token: Option<Uuid>,
    action: &str,
    target: &str,
    outcome: &'static str,
    request: &str,
) -> NewAuditRecord {
    NewAuditRecord {
        at: Utc.timestamp_opt(at_s, 0).unwrap(),
        request_id: request.to_owned(),
        token_id: token,
        action: action.to_owned(),
        target: target.to_owned(),
        outcome,
        status: match outcome {
            "ok" => 200,
            "denied" => 403,
            "failed" => 422,
            _ => 500,
        },
    }
}

/// 2025-01-01T00:00:00Z.
const T0: i64 = 1_735_689_600;
const FORMULA: &str = "=HYPERLINK(\"http://evil.example\")";

/// 150 reads by `reader` an hour apart from T0, then a delete of `doc` denied to `writer`,
/// one whose target is a formula, and one with a hostile request id.
async fn seed_audit(state: &AppState, reader: Uuid, writer: Uuid, doc: Uuid) {
    let store = &state.store;
    // The records are older than the default retention: keep every record, and let the
    // pruning pass the app starts in the background finish first (it may have read the
    // default retention already), so it cannot delete them under the test.
    store.set_audit_retention_days(None).await.unwrap();
    state
        .audit
        .prune_passes()
        .wait_for(|passes| *passes >= 1)
        .await
        .unwrap();
    let mut records: Vec<NewAuditRecord> = (0..150)
        .map(|i| {
            record(
                T0 + i * 3600,
                Some(reader),
                "GET /api/block_documents/{id}",
                &format!("/api/block_documents/{doc}"),
                "ok",
                &format!("req-{i}"),
            )
        })
        .collect();
    records.push(record(
        T0 + 200 * 3600,
        Some(writer),
        "DELETE /api/block_documents/{id}",
        &format!("/api/block_documents/{doc}"),
        "denied",
        "req-delete",
    ));
    records.push(record(
        T0 + 201 * 3600,
        None,
        "POST /api/block_types/",
        FORMULA,
        "failed",
        "-2+3",
    ));
    store.append_audit(&records).await.unwrap();
}

/// An admin's browser over the audit log [`seed_audit`] wrote, with the ids it used:
/// (browser, reader, writer, doc).
async fn seeded(db: &TestDb) -> (Browser, Uuid, Uuid, Uuid) {
    let ctx = setup(db).await;
    let store = &ctx.state.store;
    let (_, reader) = token(store, &[Scope::Read]).await;
    let (_, writer) = token(store, &[Scope::Write]).await;
    let doc = Uuid::new_v4();
    seed_audit(&ctx.state, reader, writer, doc).await;
    let (browser, _) = signed_in(&ctx.app, &ctx.admin).await;
    (browser, reader, writer, doc)
}

/// The `seq` numbers in the audit table of a page.
fn rows(page: &Page) -> usize {
    page.text.matches("<tr><th scope=\"row\">").count()
}

#[tokio::test]
async fn the_audit_log_filters_pages_and_refuses_bad_input_at_the_field() {
    on_both(async |db| {
        let (mut browser, reader, writer, doc) = seeded(db).await;

        let page = browser
            .get(&format!("/admin/audit?token={writer}"))
            .await
            .expect(StatusCode::OK);
        assert_eq!(rows(&page), 1);
        assert!(page.text.contains("DELETE /api/block_documents/{id}"));
        assert!(
            page.text.contains(&format!("href=\"/blocks/{doc}\"")),
            "linked to its block"
        );
        assert!(
            page.text
                .contains(&format!("href=\"/admin/tokens#t-{writer}\"")),
            "linked to its token"
        );
        assert!(
            page.text.contains("test [Write]"),
            "named by its token's name"
        );

        let page = browser
            .get("/admin/audit?outcome=denied&action=DELETE")
            .await;
        assert_eq!(rows(&page), 1);
        let page = browser.get("/admin/audit?request_id=req-7").await;
        assert_eq!(rows(&page), 1);
        let page = browser.get("/admin/audit?target=HYPERLINK").await;
        assert_eq!(rows(&page), 1);
        assert!(
            !page.text.contains("<a href=\"http://evil"),
            "a target is text"
        );
        // Time range: [T0 + 10 h, T0 + 20 h) holds ten reads.
        let page = browser
            .get(&format!(
                "/admin/audit?token={reader}&since=2025-01-01T10:00:00Z&until=2025-01-01+20:00"
            ))
            .await
            .expect(StatusCode::OK);
        assert_eq!(rows(&page), 10);

        // Paged by cursor: 100, then the other 50 of the reader's.
        let first = browser.get(&format!("/admin/audit?token={reader}")).await;
        assert_eq!(rows(&first), 100);
        let at = first.text.find("rel=\"next\"").expect("a next page");
        let href_at = first.text[..at].rfind("href=\"").unwrap() + 6;
        let href = first.text[href_at..at]
            .trim_end()
            .trim_end_matches('"')
            .replace("&amp;", "&");
        assert!(href.contains("before="), "{href}");
        let second = browser.get(&href).await;
        assert_eq!(second.status, StatusCode::OK);
        assert_eq!(rows(&second), 50);
        assert!(!second.text.contains("rel=\"next\""));
        assert!(
            second.text.contains("req-0\""),
            "the oldest record is on the last page"
        );

        // Bad input: 422, the message at the field, never a 500.
        for (query, field) in [
            ("token=not-a-uuid", "token"),
            ("outcome=maybe", "outcome"),
            ("since=yesterday", "since"),
            ("until=2025-13-45", "until"),
            ("since=2025-02-01&until=2025-01-01", "until"),
            ("before=-4", "before"),
            ("format=xlsx", "format"),
        ] {
            let page = browser.get(&format!("/admin/audit?{query}")).await;
            assert_eq!(
                page.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{query}: {}",
                page.text
            );
            assert!(
                page.text.contains(&format!("id=\"{field}-error\"")) || field == "format",
                "{query}"
            );
            assert!(
                page.text.contains("href=\"#"),
                "{query}: an error summary links to the field"
            );
            let download = browser.get(&format!("/admin/audit/download?{query}")).await;
            assert_eq!(download.status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        }
        let page = browser
            .get(&format!("/admin/audit?target={}", "x".repeat(600)))
            .await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
        let page = browser.get("/admin/audit?since=%ZZ&outcome=%00").await;
        assert!(page.status.is_client_error(), "{}", page.status);
    })
    .await;
}

#[tokio::test]
async fn downloads_honour_the_filters_and_neutralise_formula_cells() {
    on_both(async |db| {
        let (mut browser, reader, writer, doc) = seeded(db).await;

        let csv = browser
            .get(&format!("/admin/audit/download?format=csv&token={reader}"))
            .await;
        assert_eq!(csv.status, StatusCode::OK);
        assert_eq!(csv.header(header::CONTENT_TYPE), "text/csv; charset=utf-8");
        let disposition = csv.header(header::CONTENT_DISPOSITION);
        assert!(
            disposition.starts_with("attachment; filename=\"audit-")
                && disposition.ends_with(".csv\""),
            "{disposition}"
        );
        assert_eq!(csv.header(header::CACHE_CONTROL), "no-store");
        let lines: Vec<&str> = csv.text.lines().collect();
        assert_eq!(
            lines[0],
            "seq,at,token_id,token_name,action,target,outcome,status,request_id"
        );
        assert_eq!(
            lines.len(),
            151,
            "a header and the reader's 150 records, read from the store in pages"
        );
        assert!(lines[1..].iter().all(|l| l.contains(&reader.to_string())));
        assert!(
            lines[1].contains("\"req-149\""),
            "newest first: {}",
            lines[1]
        );

        let all = browser
            .get("/admin/audit/download?format=csv&action=POST+%2Fapi%2Fblock_types")
            .await;
        let lines: Vec<&str> = all.text.lines().collect();
        assert_eq!(lines.len(), 2, "{}", all.text);
        assert!(
            lines[1].contains("\"'=HYPERLINK(\"\"http://evil.example\"\")\""),
            "{}",
            lines[1]
        );
        assert!(lines[1].ends_with(",\"'-2+3\""), "{}", lines[1]);
        assert!(
            !lines[1].contains(",\"=") && !lines[1].contains(",="),
            "no cell starts a formula"
        );

        let jsonl = browser
            .get("/admin/audit/download?format=jsonl&outcome=denied")
            .await;
        assert_eq!(jsonl.status, StatusCode::OK);
        assert!(
            jsonl
                .header(header::CONTENT_DISPOSITION)
                .ends_with(".jsonl\"")
        );
        let records: Vec<serde_json::Value> = jsonl
            .text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0]["token_id"], json!(writer.to_string()));
        assert_eq!(records[0]["token_name"], json!("test [Write]"));
        assert_eq!(
            records[0]["target"],
            json!(format!("/api/block_documents/{doc}"))
        );

        // Empty results are a header only (CSV) or nothing (JSON lines).
        let none = browser
            .get("/admin/audit/download?format=csv&request_id=nobody")
            .await;
        assert_eq!(none.text.lines().count(), 1);
        let none = browser
            .get("/admin/audit/download?format=jsonl&request_id=nobody")
            .await;
        assert_eq!(none.text, "");
        // No format: CSV.
        let default = browser.get("/admin/audit/download?outcome=failed").await;
        assert_eq!(
            default.header(header::CONTENT_TYPE),
            "text/csv; charset=utf-8"
        );
        assert_eq!(default.text.lines().count(), 2);
    })
    .await;
}

#[tokio::test]
async fn rotation_is_audited_and_its_progress_reaches_done() {
    on_both(async |db| {
        let config = StoreConfig {
            master_key_origin: MasterKeyOrigin::File("/etc/blocks/master.key".into()),
            ..StoreConfig::default()
        };
        let ctx = setup_on(db.open_with(config).await, lenient()).await;
        let store = &ctx.state.store;
        let mut ids = Vec::new();
        for i in 0..12 {
            ids.push(secret_block(store, &format!("secret-{i}")).await);
        }
        let (mut browser, csrf) = signed_in(&ctx.app, &ctx.admin).await;
        let keys = browser.get("/admin/keys").await.expect(StatusCode::OK);
        assert!(
            keys.text.contains("the key file /etc/blocks/master.key"),
            "{}",
            keys.text
        );
        assert!(!keys.text.contains(CANARY));
        let old = store.key_status().await.unwrap().active;
        assert!(keys.text.contains(&old.to_string()));

        let confirm = browser.get("/admin/keys/rotate").await;
        assert!(confirm.text.contains("action=\"/admin/keys/rotate\""));
        browser
            .post("/admin/keys/rotate", &[("_csrf", &csrf)])
            .await
            .expect_redirect("/admin/keys/progress");
        let progress = browser.get("/admin/keys/progress").await;
        assert_eq!(progress.status, StatusCode::OK);
        assert!(
            progress
                .text
                .contains("data-progress-url=\"/admin/keys/progress.json\"")
        );
        assert!(
            progress.text.contains("href=\"/admin/keys/progress\""),
            "a Refresh link without script"
        );
        assert!(!progress.text.contains("http-equiv"));

        let started = std::time::Instant::now();
        let last = loop {
            let page = browser.get("/admin/keys/progress.json").await;
            assert_eq!(page.status, StatusCode::OK);
            assert!(
                page.header(header::CONTENT_TYPE)
                    .starts_with("application/json")
            );
            let p: serde_json::Value = serde_json::from_str(&page.text).unwrap();
            assert_ne!(
                p["active"],
                json!(old.to_string()),
                "the new key is active at once"
            );
            assert_eq!(p["total"], json!(12));
            if p["done"] == json!(true) {
                break p;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "re-encryption did not finish: {p}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(last["moved"], json!(12));
        assert_eq!(last["remaining"], json!(0));
        let page = browser.get("/admin/keys/progress").await;
        assert!(
            page.text.contains("Done: every version (12)"),
            "{}",
            page.text
        );
        // The secrets still read back.
        for id in &ids {
            let doc = store.read_block_document(*id, true).await.unwrap();
            assert_eq!(doc.data["value"], json!(CANARY));
        }
        let records = console_audit(store).await;
        let rotated = record_of(&records, "console POST /admin/keys/rotate", "ok");
        assert_eq!(rotated.target, "/api/keys/rotate");
    })
    .await;
}

/// Posts the settings form: `retention` versions, `days` of audit log.
async fn save_settings(browser: &mut Browser, csrf: &str, retention: &str, days: &str) -> Page {
    let form = [
        ("_csrf", csrf),
        ("retention", retention),
        ("audit_retention_days", days),
    ];
    browser.post("/admin/settings", &form).await
}

#[tokio::test]
async fn settings_are_checked_at_their_fields_and_persist() {
    on_both(async |db| {
        let ctx = setup(db).await;
        let store = &ctx.state.store;
        let (mut browser, csrf) = signed_in(&ctx.app, &ctx.admin).await;
        let page = browser.get("/admin/settings").await.expect(StatusCode::OK);
        assert!(page.text.contains("<label for=\"retention\">"));
        assert!(
            page.text.contains("value=\"400\""),
            "the default audit retention is shown"
        );

        for (retention, days, field) in [
            ("0", "30", "retention"),
            ("lots", "30", "retention"),
            ("5", "0", "audit_retention_days"),
            ("5", "36501", "audit_retention_days"),
        ] {
            let page = save_settings(&mut browser, &csrf, retention, days).await;
            assert_eq!(
                page.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{retention} {days}"
            );
            assert!(
                page.text.contains(&format!("id=\"{field}-error\"")),
                "{retention} {days}"
            );
            assert!(
                page.text.contains(&format!("value=\"{retention}\"")),
                "what was typed is kept"
            );
        }
        assert_eq!(store.retention().await.unwrap(), None);
        assert_eq!(store.audit_retention_days().await.unwrap(), Some(400));

        let page = save_settings(&mut browser, &csrf, "3", "90")
            .await
            .expect(StatusCode::SEE_OTHER);
        assert_eq!(store.retention().await.unwrap(), Some(3));
        assert_eq!(store.audit_retention_days().await.unwrap(), Some(90));
        let page = browser.get(page.location()).await;
        assert!(page.text.contains("The settings are saved"));
        assert!(page.text.contains("value=\"3\"") && page.text.contains("value=\"90\""));

        // Empty: keep everything.
        save_settings(&mut browser, &csrf, "", "")
            .await
            .expect(StatusCode::SEE_OTHER);
        assert_eq!(store.retention().await.unwrap(), None);
        assert_eq!(store.audit_retention_days().await.unwrap(), None);
        let records = console_audit(store).await;
        assert_eq!(
            records
                .iter()
                .filter(|r| r.action == "console POST /admin/settings")
                .count(),
            6,
            "refused and accepted changes alike are audited"
        );
    })
    .await;
}

#[tokio::test]
async fn a_token_limited_to_blocks_is_created_from_the_form_and_listed_with_its_grants() {
    on_both(async |db| {
        let ctx = setup(db).await;
        let (mut browser, csrf) = signed_in(&ctx.app, &ctx.admin).await;
        let page = post_pairs(
            &mut browser,
            "/admin/tokens",
            &[
                ("_csrf", csrf.clone()),
                ("name", "etl".to_owned()),
                ("scope", "read-secrets".to_owned()),
                (
                    "grants",
                    "read-secrets:gcs-bucket/zoom-gcs\nread-secrets:gcp-credentials/zoom-gcp-creds"
                        .to_owned(),
                ),
            ],
        )
        .await;
        assert_eq!(page.status, StatusCode::CREATED, "{}", page.text);
        assert!(
            page.text
                .contains("read-secrets:gcp-credentials/zoom-gcp-creds"),
            "{}",
            page.text
        );
        let listed = browser.get("/admin/tokens").await;
        assert!(
            listed.text.contains("read-secrets:gcs-bucket/zoom-gcs"),
            "{}",
            listed.text
        );
        assert!(
            listed.text.contains("all blocks"),
            "the admin token reaches every block"
        );
        let stored = ctx.state.store.list_tokens().await.unwrap();
        let etl = stored.iter().find(|t| t.name == "etl").unwrap();
        assert_eq!(etl.grants.len(), 2);

        // A bad line is shown at the field, with what was typed.
        let page = post_pairs(
            &mut browser,
            "/admin/tokens",
            &[
                ("_csrf", csrf),
                ("name", "bad".to_owned()),
                ("scope", "read".to_owned()),
                ("grants", "read:gcs-bucket/zoom-gcs\nzoom-gcs".to_owned()),
            ],
        )
        .await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(page.text.contains("line 2"), "{}", page.text);
        assert!(
            page.text.contains("read:gcs-bucket/zoom-gcs"),
            "{}",
            page.text
        );
    })
    .await;
}
