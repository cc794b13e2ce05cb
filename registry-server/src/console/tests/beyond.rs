//! History actions, reveal, duplicate, compare, "Create and add another" and the dashboard,
//! on SQLite and PostgreSQL: who may do each, that each is audited with the session's token,
//! and that no secret reaches a page except through a permitted reveal.

use axum::http::{StatusCode, header};
use block_types::catalog::{GcpCredentials, GcsBucket, Secret};
use block_types::model::BlockSchemaCreate;
use block_types::references::reference_value;
use serde_json::json;

use super::{Browser, CANARY, console_audit, secret_block, setup, token};
use crate::store::tests::harness::{create, obj, on_both, register};
use crate::store::{Rights, Scope};

const SECOND: &str = "second-canary-77d0";

/// A secret block at version 2 (v1 holds the canary, v2 another value).
async fn two_versions(store: &crate::store::Store, name: &str) -> uuid::Uuid {
    let id = secret_block(store, name).await;
    store
        .update_block_document(
            id,
            serde_json::from_value(json!({"data": {"value": SECOND}})).unwrap(),
            None,
            Rights::WRITE,
        )
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn rollback_applies_the_diff_it_showed_and_destroying_a_version_needs_admin() {
    on_both(async |db| {
        let ctx = setup(db).await;
        let store = &ctx.state.store;
        let id = two_versions(store, "db-password").await;
        let (writer, writer_id) = token(store, &[Scope::Write]).await;
        let mut browser = Browser::new(&ctx.app);
        browser.sign_in(&writer).await;

        // Any two versions compare; the history offers rollback but not destroy to a writer.
        let history = browser
            .get(&format!("/blocks/{id}/history?from=1&to=2"))
            .await;
        assert_eq!(history.status, StatusCode::OK, "{}", history.text);
        // Whether a secret changed is told only to a token that could read it: else a
        // writer could set a guess and compare it with the stored value.
        assert!(!history.text.contains("<strong>changed</strong>"));
        assert!(history.text.contains("not compared"), "{}", history.text);
        assert!(
            history
                .text
                .contains(&format!("/blocks/{id}/history/1/rollback"))
        );
        assert!(
            !history
                .text
                .contains(&format!("/blocks/{id}/history/1/destroy"))
        );

        let confirm = browser
            .get(&format!("/blocks/{id}/history/1/rollback"))
            .await;
        assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.text);
        assert!(
            confirm.text.contains("not compared") && !confirm.text.contains("will change"),
            "{}",
            confirm.text
        );
        for page in [&history, &confirm] {
            assert!(!page.text.contains(CANARY) && !page.text.contains(SECOND));
        }
        let csrf = confirm.form_token();
        let url = format!("/blocks/{id}/history/1/rollback");
        // Without the form token, or read at an older version: nothing changes.
        let forged = browser.post(&url, &[("_version", "2")]).await;
        assert_eq!(forged.status, StatusCode::FORBIDDEN);
        let stale = browser
            .post(&url, &[("_csrf", &csrf), ("_version", "1")])
            .await;
        assert_eq!(stale.status, StatusCode::CONFLICT, "{}", stale.text);
        assert_eq!(store.document_version(id).await.unwrap(), 2);

        let done = browser
            .post(&url, &[("_csrf", &csrf), ("_version", "2")])
            .await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text);
        assert_eq!(done.location(), format!("/blocks/{id}?saved=rolled-back"));
        let now = store.read_block_document(id, true).await.unwrap();
        assert_eq!(now.data["value"], json!(CANARY));
        let versions = store.list_versions(id).await.unwrap();
        assert_eq!(
            (versions[0].version, versions[0].token_id),
            (3, Some(writer_id))
        );

        // Destroying needs admin, page and post alike.
        let refused = browser
            .get(&format!("/blocks/{id}/history/2/destroy"))
            .await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(refused.text.contains("admin"), "{}", refused.text);
        let refused = browser
            .post(
                &format!("/blocks/{id}/history/2/destroy"),
                &[("_csrf", &csrf)],
            )
            .await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert_eq!(store.list_versions(id).await.unwrap().len(), 3);

        let mut admin = Browser::new(&ctx.app);
        admin.sign_in(&ctx.admin).await;
        let confirm = admin.get(&format!("/blocks/{id}/history/2/destroy")).await;
        assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.text);
        let admin_csrf = confirm.form_token();
        let done = admin
            .post(
                &format!("/blocks/{id}/history/2/destroy"),
                &[("_csrf", &admin_csrf)],
            )
            .await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text);
        let left: Vec<i64> = store
            .list_versions(id)
            .await
            .unwrap()
            .iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(left, [3, 1]);
        // The current version cannot be destroyed; a destroyed one is gone from the history.
        let current = admin
            .post(
                &format!("/blocks/{id}/history/3/destroy"),
                &[("_csrf", &admin_csrf)],
            )
            .await;
        assert_eq!(current.status, StatusCode::CONFLICT, "{}", current.text);
        let gone = admin.get(&format!("/blocks/{id}/history?from=2")).await;
        assert_eq!(gone.status, StatusCode::NOT_FOUND);
        let junk = admin.get(&format!("/blocks/{id}/history/x/rollback")).await;
        assert_eq!(junk.status, StatusCode::NOT_FOUND);

        let audit = console_audit(store).await;
        let actions: Vec<(&str, u16, Option<uuid::Uuid>)> = audit
            .iter()
            .map(|r| (r.action.as_str(), r.status, r.token_id))
            .collect();
        for expected in [
            (
                "console POST /blocks/{id}/history/{version}/rollback",
                303,
                Some(writer_id),
            ),
            (
                "console POST /blocks/{id}/history/{version}/rollback",
                409,
                Some(writer_id),
            ),
            (
                "console POST /blocks/{id}/history/{version}/destroy",
                403,
                Some(writer_id),
            ),
            (
                "console POST /blocks/{id}/history/{version}/destroy",
                303,
                Some(ctx.admin_id),
            ),
            (
                "console POST /blocks/{id}/history/{version}/destroy",
                409,
                Some(ctx.admin_id),
            ),
        ] {
            assert!(actions.contains(&expected), "{expected:?} in {actions:?}");
        }
        assert!(!format!("{audit:?}").contains(CANARY));
    })
    .await;
}

#[tokio::test]
async fn a_reveal_needs_read_secrets_is_audited_by_field_and_is_never_cached() {
    on_both(async |db| {
        let ctx = setup(db).await;
        let store = &ctx.state.store;
        let id = secret_block(store, "api-key").await;
        let (revealer, revealer_id) = token(store, &[Scope::ReadSecrets]).await;
        let mut browser = Browser::new(&ctx.app);
        browser.sign_in(&revealer).await;
        let detail = browser.get(&format!("/blocks/{id}")).await;
        assert!(
            detail
                .text
                .contains(&format!("action=\"/blocks/{id}/reveal\"")),
            "{}",
            detail.text
        );
        assert!(!detail.text.contains(CANARY));
        let csrf = detail.form_token();
        let url = format!("/blocks/{id}/reveal");

        // A GET reveals nothing; a POST without the form token neither.
        assert_ne!(browser.get(&url).await.status, StatusCode::OK);
        let forged = browser.post(&url, &[("field", "value")]).await;
        assert_eq!(forged.status, StatusCode::FORBIDDEN);
        assert!(!forged.text.contains(CANARY));

        let json = browser
            .request(
                "POST",
                &url,
                Some(&[("_csrf", &csrf), ("field", "value")]),
                &[("accept", "application/json")],
            )
            .await;
        assert_eq!(json.status, StatusCode::OK, "{}", json.text);
        assert_eq!(json.header(header::CACHE_CONTROL), "no-store");
        let answer: serde_json::Value = serde_json::from_str(&json.text).unwrap();
        assert_eq!(answer["value"], json!(CANARY));
        assert_eq!(answer["hide_after"], json!(30));
        let page = browser
            .post(&url, &[("_csrf", &csrf), ("field", "value")])
            .await;
        assert_eq!(page.status, StatusCode::OK);
        assert_eq!(page.header(header::CACHE_CONTROL), "no-store");
        assert!(page.text.contains(CANARY) && page.text.contains("data-hide-after=\"30\""));
        let missing = browser
            .post(&url, &[("_csrf", &csrf), ("field", "nope")])
            .await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        // Another spelling of the id reveals too, and is recorded under the canonical id.
        let upper = id.to_string().to_uppercase();
        let shouted = browser
            .post(
                &format!("/blocks/{upper}/reveal"),
                &[("_csrf", &csrf), ("field", "value")],
            )
            .await;
        assert_eq!(shouted.status, StatusCode::OK);
        // A GET reveals nothing: it goes back to the block.
        let get = browser.get(&url).await;
        assert_eq!(get.status, StatusCode::SEE_OTHER);
        assert_eq!(get.location(), format!("/blocks/{id}"));

        // Without read-secrets: no reveal button, the field says it can be replaced, and a
        // crafted reveal is refused with the scope named.
        let (writer, writer_id) = token(store, &[Scope::Write]).await;
        let mut writer_browser = Browser::new(&ctx.app);
        writer_browser.sign_in(&writer).await;
        let detail = writer_browser.get(&format!("/blocks/{id}")).await;
        assert!(
            !detail
                .text
                .contains(&format!("action=\"/blocks/{id}/reveal\""))
        );
        assert!(detail.text.contains("write-only") && detail.text.contains("replaced in Edit"));
        let writer_csrf = detail.form_token();
        let refused = writer_browser
            .post(&url, &[("_csrf", &writer_csrf), ("field", "value")])
            .await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(refused.text.contains("read-secrets"), "{}", refused.text);
        assert!(!refused.text.contains(CANARY));

        let audit = console_audit(store).await;
        let reveals: Vec<_> = audit
            .iter()
            .filter(|r| r.action == "console POST /blocks/{id}/reveal")
            .collect();
        let ok: Vec<_> = reveals.iter().filter(|r| r.status == 200).collect();
        assert_eq!(ok.len(), 3, "{reveals:?}");
        assert!(ok.iter().all(|r| r.token_id == Some(revealer_id)
            && r.target == format!("/api/block_documents/{id} field=value")));
        assert!(
            reveals
                .iter()
                .any(|r| r.status == 403 && r.token_id == Some(writer_id))
        );
        assert!(!format!("{audit:?}").contains(CANARY));
    })
    .await;
}

#[tokio::test]
async fn duplicate_copies_secrets_on_the_server_and_compare_says_only_whether_they_differ() {
    on_both(async |db| {
        let ctx = setup(db).await;
        let store = &ctx.state.store;
        let id = secret_block(store, "zoom-postgres-password").await;
        let (writer, writer_id) = token(store, &[Scope::Write]).await;
        let mut browser = Browser::new(&ctx.app);
        browser.sign_in(&writer).await;
        let form = browser.get(&format!("/blocks/{id}/duplicate")).await;
        assert_eq!(form.status, StatusCode::OK, "{}", form.text);
        assert!(form.text.contains("zoom-postgres-password-copy"));
        let csrf = form.form_token();
        let url = format!("/blocks/{id}/duplicate");
        let bad = browser
            .post(&url, &[("_csrf", &csrf), ("_name", "Bad Name")])
            .await;
        assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(bad.text.contains("block-name-error"), "{}", bad.text);
        let taken = browser
            .post(
                &url,
                &[("_csrf", &csrf), ("_name", "zoom-postgres-password")],
            )
            .await;
        assert_eq!(taken.status, StatusCode::CONFLICT);
        assert!(taken.text.contains("exists already"));
        let done = browser
            .post(
                &url,
                &[
                    ("_csrf", &csrf),
                    ("_name", "zoom-postgres-password-staging"),
                ],
            )
            .await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text);
        let copy = store
            .read_block_document_by_name("secret", "zoom-postgres-password-staging", true)
            .await
            .unwrap();
        assert_eq!(copy.data["value"], json!(CANARY));
        assert_eq!(
            done.location(),
            format!("/blocks/{}?saved=duplicated", copy.id)
        );
        for page in [&form, &bad, &taken, &done] {
            assert!(!page.text.contains(CANARY));
        }

        // Compare: a writer without read-secrets is not told whether the secrets are equal;
        // an admin is: the same secret, then a different one.
        let unread = browser
            .get(&format!("/blocks/{id}/compare?with={}", copy.id))
            .await;
        assert_eq!(unread.status, StatusCode::OK, "{}", unread.text);
        assert!(
            unread.text.contains("not compared") && !unread.text.contains("the same"),
            "{}",
            unread.text
        );
        let mut admin = Browser::new(&ctx.app);
        admin.sign_in(&ctx.admin).await;
        let same = admin
            .get(&format!("/blocks/{id}/compare?with={}", copy.id))
            .await;
        assert_eq!(same.status, StatusCode::OK, "{}", same.text);
        assert!(
            same.text.contains("the same") && same.text.contains("No field differs"),
            "{}",
            same.text
        );
        store
            .update_block_document(
                copy.id,
                serde_json::from_value(json!({"data": {"value": SECOND}})).unwrap(),
                None,
                Rights::WRITE,
            )
            .await
            .unwrap();
        let different = admin
            .get(&format!("/blocks/{id}/compare?with={}", copy.id))
            .await;
        assert!(
            different.text.contains("<strong>different</strong>"),
            "{}",
            different.text
        );
        assert!(different.text.contains("1 field differs"));
        for page in [&unread, &same, &different] {
            assert!(!page.text.contains(CANARY) && !page.text.contains(SECOND));
        }
        // Only blocks of one type compare.
        let (_, gcp) = register::<GcpCredentials>(store).await;
        let other = create(store, &gcp, "zoom-gcp-creds", json!({"project": "p"})).await;
        let mixed = browser
            .get(&format!("/blocks/{id}/compare?with={}", other.id))
            .await;
        assert_eq!(mixed.status, StatusCode::UNPROCESSABLE_ENTITY);
        let junk = browser
            .get(&format!("/blocks/{id}/compare?with=nope"))
            .await;
        assert_eq!(junk.status, StatusCode::NOT_FOUND);

        // A read token may compare but not duplicate.
        let (reader, _) = token(store, &[Scope::Read]).await;
        let mut reader_browser = Browser::new(&ctx.app);
        reader_browser.sign_in(&reader).await;
        assert_eq!(reader_browser.get(&url).await.status, StatusCode::FORBIDDEN);
        let reader_csrf = reader_browser.form_token().await;
        let refused = reader_browser
            .post(&url, &[("_csrf", &reader_csrf), ("_name", "by-a-reader")])
            .await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(
            store
                .read_block_document_by_name("secret", "by-a-reader", false)
                .await
                .is_err()
        );

        let audit = console_audit(store).await;
        assert!(
            audit
                .iter()
                .any(|r| r.action == "console POST /blocks/{id}/duplicate"
                    && r.status == 303
                    && r.token_id == Some(writer_id)
                    && r.target == format!("/api/block_documents/{id} copy={}", copy.id))
        );
        // The admin's comparisons told it whether the secrets are equal: recorded.
        let compared: Vec<_> = audit
            .iter()
            .filter(|r| r.action == "console GET /blocks/{id}/compare")
            .collect();
        assert_eq!(compared.len(), 2, "{compared:?}");
        assert!(compared.iter().all(|r| r.token_id == Some(ctx.admin_id)
            && r.target == format!("/api/block_documents/{id} compared={}", copy.id)));
        assert!(!format!("{audit:?}").contains(CANARY));
    })
    .await;
}

#[tokio::test]
async fn create_and_add_another_returns_to_an_empty_form() {
    on_both(async |db| {
        let ctx = setup(db).await;
        let store = &ctx.state.store;
        register::<Secret>(store).await;
        let mut browser = Browser::new(&ctx.app);
        browser.sign_in(&ctx.admin).await;
        let form = browser.get("/blocks/new/secret").await;
        assert!(form.text.contains("Create and add another"));
        let schema = {
            let at = form.text.find("name=\"_schema\" value=\"").unwrap() + 22;
            form.text[at..at + 36].to_owned()
        };
        let csrf = form.form_token();
        let done = browser
            .post(
                "/blocks/new/secret",
                &[
                    ("_csrf", &csrf),
                    ("_schema", &schema),
                    ("_name", "first-key"),
                    ("_then", "another"),
                    ("data.value#choice", "0"),
                    ("data.value#a0", "v"),
                ],
            )
            .await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text);
        let created = store
            .read_block_document_by_name("secret", "first-key", false)
            .await
            .unwrap();
        assert_eq!(
            done.location(),
            format!("/blocks/new/secret?added={}", created.id)
        );
        let again = browser.get(done.location()).await;
        assert!(again.text.contains("Created first-key."), "{}", again.text);
        assert!(again.text.contains("value=\"\""), "an empty name field");
        // The notice names a stored block of the type, nothing a link makes up.
        for bogus in [
            "Send%20your%20token%20to%20evil",
            &uuid::Uuid::new_v4().to_string(),
        ] {
            let page = browser
                .get(&format!("/blocks/new/secret?added={bogus}"))
                .await;
            assert_eq!(page.status, StatusCode::OK);
            assert!(!page.text.contains("Created ") && !page.text.contains("evil"));
        }
    })
    .await;
}

#[tokio::test]
async fn the_dashboard_counts_blocks_and_names_outdated_and_broken_ones() {
    on_both(async |db| {
        let ctx = setup(db).await;
        let store = &ctx.state.store;
        let (secret_type, old) = register::<Secret>(store).await;
        let old_doc = create(store, &old, "old-shape", json!({"value": CANARY})).await;
        let (_, bucket) = register::<GcsBucket>(store).await;
        // A gcs-bucket whose credentials field references a secret block instead.
        create(
            store,
            &bucket,
            "wrong-creds",
            json!({"bucket": "b", "gcp_credentials": reference_value(old_doc.id)}),
        )
        .await;
        // A newer schema of `secret`: the existing block is now on an older one.
        let mut fields = old.fields.clone();
        fields["description"] = json!("A newer shape of the secret block.");
        store
            .create_block_schema(
                BlockSchemaCreate {
                    fields: obj(fields),
                    block_type_id: secret_type.id,
                    capabilities: vec![],
                    version: "9.9.9".into(),
                },
                Rights::ADMIN,
            )
            .await
            .unwrap();
        let (writer, _) = token(store, &[Scope::Write]).await;
        let mut browser = Browser::new(&ctx.app);
        browser.sign_in(&writer).await;
        let home = browser.get("/").await;
        assert_eq!(home.status, StatusCode::OK, "{}", home.text);
        assert!(home.text.contains("2 blocks"), "{}", home.text);
        assert!(home.text.contains("Latest changes") && home.text.contains("wrong-creds"));
        assert!(home.text.contains("1 on an older schema"), "{}", home.text);
        assert!(
            home.text
                .contains(&format!("/blocks/{}/edit?schema=newest", old_doc.id))
        );
        assert!(
            home.text.contains("references a <code>secret</code> block"),
            "{}",
            home.text
        );
        assert!(!home.text.contains(CANARY));
        let upgrade = browser
            .get(&format!("/blocks/{}/edit?schema=newest", old_doc.id))
            .await;
        assert_eq!(upgrade.status, StatusCode::OK, "{}", upgrade.text);
        assert!(
            upgrade.text.contains("newest schema (version 9.9.9)"),
            "{}",
            upgrade.text
        );
        assert!(!upgrade.text.contains(CANARY));
        // Signed out, the landing page is the sign-in.
        let mut stranger = Browser::new(&ctx.app);
        assert_eq!(stranger.get("/").await.location(), "/sign-in");
    })
    .await;
}
