//! ETags, conditional writes, history, rollback, destroyed versions and retention over the
//! API, on SQLite and PostgreSQL.

use axum::http::{StatusCode, header};
use block_types::catalog::{GcpCredentials, GcsBucket};
use block_types::references::reference_value;
use serde_json::json;

use super::AuthGuard;
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
        let id = secret_doc(store, "history", "secret-v1").await;
        let doc = format!("/api/block_documents/{id}");
        for value in ["secret-v2", "secret-v3"] {
            let resp = send(
                &ctx.app,
                "PATCH",
                &doc,
                Some(admin),
                Some(&json!({"data": {"value": value}})),
                &[],
            )
            .await;
            assert_eq!(resp.status, StatusCode::NO_CONTENT, "{}", resp.text);
        }
        let versions = get(&ctx.app, &format!("{doc}/versions"), admin).await;
        assert_eq!(versions.status, StatusCode::OK, "{}", versions.text);
        let numbers: Vec<i64> = versions
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].as_i64().unwrap())
            .collect();
        assert_eq!(numbers, [3, 2, 1], "newest first");
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

        let rolled = send(
            &ctx.app,
            "POST",
            &format!("{doc}/versions/1/rollback"),
            Some(admin),
            None,
            &[],
        )
        .await;
        assert_eq!(rolled.status, StatusCode::OK, "{}", rolled.text);
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

/// A document holding a secret with four versions: `secret-v1`, `-v2`, `-v3`, then a
/// rollback to version 1 (version 4). Returns its path.
async fn four_versions(ctx: &Ctx) -> String {
    let admin = ctx.admin.as_str();
    let id = secret_doc(&ctx.state.store, "history", "secret-v1").await;
    let doc = format!("/api/block_documents/{id}");
    for value in ["secret-v2", "secret-v3"] {
        let resp = send(
            &ctx.app,
            "PATCH",
            &doc,
            Some(admin),
            Some(&json!({"data": {"value": value}})),
            &[],
        )
        .await;
        assert_eq!(resp.status, StatusCode::NO_CONTENT, "{}", resp.text);
    }
    let rolled = send(
        &ctx.app,
        "POST",
        &format!("{doc}/versions/1/rollback"),
        Some(admin),
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
        let store = &ctx.state.store;
        let admin = ctx.admin.as_str();
        let doc = four_versions(&ctx).await;
        // Destroying history needs admin: a write token may roll back but not destroy.
        let (writer, _) = token(store, &[Scope::Write]).await;
        let resp = send(
            &ctx.app,
            "DELETE",
            &format!("{doc}/versions/2"),
            Some(&writer),
            None,
            &[],
        )
        .await;
        assert_eq!(resp.status, StatusCode::FORBIDDEN, "{}", resp.text);
        assert!(resp.text.contains("admin"), "{}", resp.text);
        let resp = send(
            &ctx.app,
            "DELETE",
            &format!("{doc}/versions/2"),
            Some(admin),
            None,
            &[],
        )
        .await;
        assert_eq!(resp.status, StatusCode::NO_CONTENT, "{}", resp.text);
        assert_eq!(
            get(&ctx.app, &format!("{doc}/versions/2"), admin)
                .await
                .status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get(
                &ctx.app,
                &format!("{doc}/versions/2?include_secrets=true"),
                admin
            )
            .await
            .status,
            StatusCode::NOT_FOUND
        );
        let resp = send(
            &ctx.app,
            "DELETE",
            &format!("{doc}/versions/4"),
            Some(admin),
            None,
            &[],
        )
        .await;
        assert_eq!(resp.status, StatusCode::CONFLICT, "{}", resp.text);
        for bad in ["abc", "0", "-1", "1.5"] {
            let resp = get(&ctx.app, &format!("{doc}/versions/{bad}"), admin).await;
            assert_eq!(
                resp.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{bad}: {}",
                resp.text
            );
            assert!(resp.text.contains("version"), "{}", resp.text);
            let resp = send(
                &ctx.app,
                "DELETE",
                &format!("{doc}/versions/{bad}"),
                Some(admin),
                None,
                &[],
            )
            .await;
            assert_eq!(
                resp.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{bad}: {}",
                resp.text
            );
        }
        let numbers: Vec<i64> = get(&ctx.app, &format!("{doc}/versions"), admin)
            .await
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].as_i64().unwrap())
            .collect();
        assert_eq!(numbers, [4, 3, 1]);
    })
    .await;
}

#[tokio::test]
async fn retention_prunes_old_versions_now_and_on_later_writes() {
    on_both(async |db| {
        let ctx = setup(db, AuthGuard::default()).await;
        let store = &ctx.state.store;
        let admin = ctx.admin.as_str();
        let doc = four_versions(&ctx).await;
        let (read, _) = token(store, &[Scope::Read]).await;
        // Retention.
        let resp = send(
            &ctx.app,
            "PATCH",
            "/api/settings",
            Some(admin),
            Some(&json!({"retention": 2})),
            &[],
        )
        .await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
        assert_eq!(
            resp.body,
            json!({"retention": 2, "audit_retention_days": 400, "event_retention_hours": 168})
        );
        let kept = get(&ctx.app, &format!("{doc}/versions"), admin)
            .await
            .body
            .as_array()
            .unwrap()
            .len();
        assert!(kept <= 2, "{kept} versions kept under retention 2");
        assert!(kept >= 1);
        let resp = send(
            &ctx.app,
            "PATCH",
            "/api/settings",
            Some(admin),
            Some(&json!({"retention": 0})),
            &[],
        )
        .await;
        assert_eq!(
            resp.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            resp.text
        );
        assert!(resp.text.contains("retention"), "{}", resp.text);
        let resp = send(
            &ctx.app,
            "PATCH",
            "/api/settings",
            Some(admin),
            Some(&json!({"keep": 3})),
            &[],
        )
        .await;
        assert_eq!(
            resp.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            resp.text
        );
        let settings = get(&ctx.app, "/api/settings", admin).await;
        assert_eq!(settings.status, StatusCode::OK);
        assert_eq!(
            settings.body,
            json!({"retention": 2, "audit_retention_days": 400, "event_retention_hours": 168})
        );
        assert_eq!(
            get(&ctx.app, "/api/settings", &read).await.status,
            StatusCode::FORBIDDEN
        );
        // Further writes keep the limit.
        let resp = send(
            &ctx.app,
            "PATCH",
            &doc,
            Some(admin),
            Some(&json!({"data": {"value": "secret-v5"}})),
            &[],
        )
        .await;
        assert_eq!(resp.status, StatusCode::NO_CONTENT);
        let numbers: Vec<i64> = get(&ctx.app, &format!("{doc}/versions"), admin)
            .await
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].as_i64().unwrap())
            .collect();
        assert_eq!(numbers, [5, 4]);
    })
    .await;
}
