//! ETags, conditional writes, history, rollback, destroyed versions and retention over the
//! API, on SQLite and PostgreSQL.

use axum::http::{StatusCode, header};
use block_types::catalog::{GcpCredentials, GcsBucket};
use block_types::references::reference_value;
use serde_json::json;

use super::AuthGuard;
use super::tests::send_expecting;
use crate::store::Scope;
use crate::store::tests::harness::{create, on_both, register};

use super::test_app::*;

#[tokio::test]
async fn etags_cover_the_tree_and_if_match_makes_writes_conditional() {
    on_both(async |db| {
        let ctx = setup(db, AuthGuard::default()).await;
        let store = &ctx.state.store;
        let admin = ctx.admin.as_str();
        let (_, creds_schema) = register::<GcpCredentials>(store).await;
        let (_, bucket_schema) = register::<GcsBucket>(store).await;
        let child = create(store, &creds_schema, "etag-creds",
            json!({"service_account_info": {"private_key": CANARY}, "project": "p1"})).await;
        let parent = create(store, &bucket_schema, "etag-bucket",
            json!({"bucket": "lake", "bucket_folder": "", "gcp_credentials": reference_value(child.id)})).await;
        let parent_uri = format!("/api/block_documents/{}", parent.id);
        let child_uri = format!("/api/block_documents/{}", child.id);

        let first = get(&ctx.app, &parent_uri, admin).await;
        assert_eq!(first.status, StatusCode::OK);
        assert!(!first.text.contains(CANARY), "a masked read masks the referenced document's secrets too");
        assert_eq!(first.body["data"]["gcp_credentials"]["service_account_info"]["private_key"], json!("********"));
        let etag1 = first.header(header::ETAG).expect("an ETag").to_owned();
        assert!(etag1.starts_with('"') && etag1.ends_with('"'), "{etag1}");
        let by_name = get(&ctx.app, "/api/block_types/slug/gcs-bucket/block_documents/name/etag-bucket", admin).await;
        assert_eq!(by_name.header(header::ETAG), Some(etag1.as_str()), "the same tree, the same tag");
        let not_modified = send(&ctx.app, "GET", &parent_uri, Some(admin), None, &[("if-none-match", &etag1)]).await;
        assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
        assert_eq!(not_modified.header(header::ETAG), Some(etag1.as_str()));
        assert!(not_modified.text.is_empty());
        let other = send(&ctx.app, "GET", &parent_uri, Some(admin), None, &[("if-none-match", "\"other\"")]).await;
        assert_eq!(other.status, StatusCode::OK);

        // Changing the child changes the parent's tag.
        let resp = send(&ctx.app, "PATCH", &child_uri, Some(admin), Some(&json!({"data": {"project": "p2"}})), &[]).await;
        assert_eq!(resp.status, StatusCode::NO_CONTENT, "{}", resp.text);
        let etag2 = get(&ctx.app, &parent_uri, admin).await.header(header::ETAG).unwrap().to_owned();
        assert_ne!(etag1, etag2, "a child's change changes the parent's ETag");
        let stale = send(&ctx.app, "GET", &parent_uri, Some(admin), None, &[("if-none-match", &etag1)]).await;
        assert_eq!(stale.status, StatusCode::OK);

        // A stale If-Match: 412, nothing changed.
        let version = store.document_version(parent.id).await.unwrap();
        let resp = send(&ctx.app, "PATCH", &parent_uri, Some(admin),
            Some(&json!({"data": {"bucket": "stale"}})), &[("if-match", &etag1)]).await;
        assert_eq!(resp.status, StatusCode::PRECONDITION_FAILED, "{}", resp.text);
        assert!(!resp.detail().is_empty());
        assert_eq!(store.document_version(parent.id).await.unwrap(), version);
        let now = get(&ctx.app, &parent_uri, admin).await;
        assert_eq!(now.body["data"]["bucket"], json!("lake"));
        assert_eq!(now.header(header::ETAG), Some(etag2.as_str()));

        // The current tag as a weak one: If-Match compares strongly, so 412.
        let weak = format!("W/{etag2}");
        let resp = send(&ctx.app, "PATCH", &parent_uri, Some(admin),
            Some(&json!({"data": {"bucket": "weak"}})), &[("if-match", &weak)]).await;
        assert_eq!(resp.status, StatusCode::PRECONDITION_FAILED, "{}", resp.text);
        // …while If-None-Match compares weakly.
        let cached = send(&ctx.app, "GET", &parent_uri, Some(admin), None, &[("if-none-match", &weak)]).await;
        assert_eq!(cached.status, StatusCode::NOT_MODIFIED);

        // The current tag: 204.
        let resp = send(&ctx.app, "PATCH", &parent_uri, Some(admin),
            Some(&json!({"data": {"bucket": "lake-2"}})), &[("if-match", &etag2)]).await;
        assert_eq!(resp.status, StatusCode::NO_CONTENT, "{}", resp.text);
        assert_eq!(store.document_version(parent.id).await.unwrap(), version + 1);
        let current = get(&ctx.app, &parent_uri, admin).await;
        assert_eq!(current.body["data"]["bucket"], json!("lake-2"));
        assert_eq!(current.body["data"]["gcp_credentials"]["project"], json!("p2"), "the reference survives a merge");
        let etag3 = current.header(header::ETAG).unwrap().to_owned();
        assert_ne!(etag3, etag2);

        // Without If-Match (Prefect clients): unconditional.
        let resp = send(&ctx.app, "PATCH", &parent_uri, Some(admin), Some(&json!({"data": {"bucket": "lake-3"}})), &[]).await;
        assert_eq!(resp.status, StatusCode::NO_CONTENT, "{}", resp.text);
        assert_eq!(store.document_version(parent.id).await.unwrap(), version + 2);

        // Stale rollback and delete: 412, the document stays.
        let resp = send(&ctx.app, "POST", &format!("{parent_uri}/versions/1/rollback"), Some(admin), None, &[("if-match", &etag3)]).await;
        assert_eq!(resp.status, StatusCode::PRECONDITION_FAILED, "{}", resp.text);
        let resp = send(&ctx.app, "DELETE", &parent_uri, Some(admin), None, &[("if-match", &etag3)]).await;
        assert_eq!(resp.status, StatusCode::PRECONDITION_FAILED, "{}", resp.text);
        let still = get(&ctx.app, &parent_uri, admin).await;
        assert_eq!(still.status, StatusCode::OK);
        assert_eq!(still.body["data"]["bucket"], json!("lake-3"));
        let etag4 = still.header(header::ETAG).unwrap().to_owned();
        let resp = send(&ctx.app, "DELETE", &parent_uri, Some(admin), None, &[("if-match", &etag4)]).await;
        assert_eq!(resp.status, StatusCode::NO_CONTENT, "{}", resp.text);
        assert_eq!(get(&ctx.app, &parent_uri, admin).await.status, StatusCode::NOT_FOUND);
    })
    .await;
}

#[tokio::test]
async fn versions_are_listed_newest_first_and_a_rollback_writes_the_old_data_again() {
    on_both(async |db| {
        let ctx = setup(db, AuthGuard::default()).await;
        let store = &ctx.state.store;
        let admin = ctx.admin.as_str();
        let doc = three_versions(&ctx).await;
        let versions = get(&ctx.app, &format!("{doc}/versions"), admin).await;
        assert_eq!(versions.status, StatusCode::OK, "{}", versions.text);
        assert_eq!(version_numbers(&versions), [3, 2, 1], "newest first");
        assert!(!versions.text.contains("secret-v"));

        let v1 = get(
            &ctx.app,
            &format!("{doc}/versions/1?include_secrets=true"),
            admin,
        )
        .await;
        assert_eq!(v1.status, StatusCode::OK, "{}", v1.text);
        assert_eq!(v1.body["version"], json!(1));
        assert_eq!(v1.body["data"]["value"], json!("secret-v1"));
        let v1_masked = get(&ctx.app, &format!("{doc}/versions/1"), admin).await;
        assert_eq!(v1_masked.body["data"]["value"], json!("********"));
        let (read, _) = token(store, &[Scope::Read]).await;
        assert_eq!(
            get(
                &ctx.app,
                &format!("{doc}/versions/1?include_secrets=true"),
                &read
            )
            .await
            .status,
            StatusCode::FORBIDDEN
        );

        let rolled = send_expecting(
            &ctx.app,
            "POST",
            &format!("{doc}/versions/1/rollback"),
            admin,
            None,
            StatusCode::OK,
        )
        .await;
        assert_eq!(rolled.body["version"], json!(4));
        let current = get(&ctx.app, &format!("{doc}?include_secrets=true"), admin).await;
        assert_eq!(
            current.body["data"], v1.body["data"],
            "version 4 equals version 1, secret included"
        );
        let v4 = get(
            &ctx.app,
            &format!("{doc}/versions/4?include_secrets=true"),
            admin,
        )
        .await;
        assert_eq!(v4.body["data"], v1.body["data"]);
    })
    .await;
}

/// The version numbers of a version list, in the order listed.
#[track_caller]
fn version_numbers(versions: &Resp) -> Vec<i64> {
    versions
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect()
}

/// A document holding a secret with three versions: `secret-v1`, `-v2`, `-v3`. Returns its
/// path.
async fn three_versions(ctx: &Ctx) -> String {
    let id = secret_doc(&ctx.state.store, "history", "secret-v1").await;
    let doc = format!("/api/block_documents/{id}");
    for value in ["secret-v2", "secret-v3"] {
        let data = json!({"data": {"value": value}});
        send_expecting(
            &ctx.app,
            "PATCH",
            &doc,
            &ctx.admin,
            Some(&data),
            StatusCode::NO_CONTENT,
        )
        .await;
    }
    doc
}

/// A document holding a secret with four versions: `secret-v1`, `-v2`, `-v3`, then a
/// rollback to version 1 (version 4). Returns its path.
async fn four_versions(ctx: &Ctx) -> String {
    let doc = three_versions(ctx).await;
    let rolled = send(
        &ctx.app,
        "POST",
        &format!("{doc}/versions/1/rollback"),
        Some(&ctx.admin),
        None,
        &[],
    )
    .await;
    assert_eq!(rolled.body["version"], json!(4), "{}", rolled.text);
    doc
}

#[tokio::test]
async fn destroying_a_version_needs_admin_and_spares_the_current_one() {
    on_both(async |db| {
        let ctx = setup(db, AuthGuard::default()).await;
        let (app, store) = (&ctx.app, &ctx.state.store);
        let admin = ctx.admin.as_str();
        let doc = four_versions(&ctx).await;
        let v2 = format!("{doc}/versions/2");
        // Destroying history needs admin: a write token may roll back but not destroy.
        let (writer, _) = token(store, &[Scope::Write]).await;
        let resp = send_expecting(app, "DELETE", &v2, &writer, None, StatusCode::FORBIDDEN).await;
        assert!(resp.text.contains("admin"), "{}", resp.text);
        send_expecting(app, "DELETE", &v2, admin, None, StatusCode::NO_CONTENT).await;
        for uri in [v2.clone(), format!("{v2}?include_secrets=true")] {
            assert_eq!(get(app, &uri, admin).await.status, StatusCode::NOT_FOUND);
        }
        let v4 = format!("{doc}/versions/4");
        send_expecting(app, "DELETE", &v4, admin, None, StatusCode::CONFLICT).await;
        let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
        for bad in ["abc", "0", "-1", "1.5"] {
            let uri = format!("{doc}/versions/{bad}");
            let resp = send_expecting(app, "GET", &uri, admin, None, unprocessable).await;
            assert!(resp.text.contains("version"), "{}", resp.text);
            send_expecting(app, "DELETE", &uri, admin, None, unprocessable).await;
        }
        let versions = get(app, &format!("{doc}/versions"), admin).await;
        assert_eq!(version_numbers(&versions), [4, 3, 1]);
    })
    .await;
}

/// The settings as `/api/settings` answers them with the version retention `retention` and
/// the other retentions at their defaults.
fn settings_with_retention(retention: i64) -> serde_json::Value {
    json!({"retention": retention, "audit_retention_days": 400, "event_retention_hours": 168})
}

#[tokio::test]
async fn retention_prunes_old_versions_now_and_on_later_writes() {
    on_both(async |db| {
        let ctx = setup(db, AuthGuard::default()).await;
        let (app, store) = (&ctx.app, &ctx.state.store);
        let admin = ctx.admin.as_str();
        let doc = four_versions(&ctx).await;
        let (read, _) = token(store, &[Scope::Read]).await;
        // Retention.
        let settings = "/api/settings";
        let two = json!({"retention": 2});
        let resp = send_expecting(app, "PATCH", settings, admin, Some(&two), StatusCode::OK).await;
        assert_eq!(resp.body, settings_with_retention(2));
        let kept = get(app, &format!("{doc}/versions"), admin)
            .await
            .body
            .as_array()
            .unwrap()
            .len();
        assert!(kept <= 2, "{kept} versions kept under retention 2");
        assert!(kept >= 1);
        let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
        let zero = json!({"retention": 0});
        let resp = send_expecting(app, "PATCH", settings, admin, Some(&zero), unprocessable).await;
        assert!(resp.text.contains("retention"), "{}", resp.text);
        let unknown = json!({"keep": 3});
        send_expecting(app, "PATCH", settings, admin, Some(&unknown), unprocessable).await;
        let current = get(app, settings, admin).await;
        assert_eq!(current.status, StatusCode::OK);
        assert_eq!(current.body, settings_with_retention(2));
        assert_eq!(
            get(app, settings, &read).await.status,
            StatusCode::FORBIDDEN
        );
        // Further writes keep the limit.
        let v5 = json!({"data": {"value": "secret-v5"}});
        send_expecting(app, "PATCH", &doc, admin, Some(&v5), StatusCode::NO_CONTENT).await;
        let versions = get(app, &format!("{doc}/versions"), admin).await;
        assert_eq!(version_numbers(&versions), [5, 4]);
    })
    .await;
}
