//! `/metrics`, on SQLite and PostgreSQL: who may read it and how routes are labelled.

use axum::http::StatusCode;

use super::AuthGuard;
use crate::store::Scope;
use crate::store::tests::harness::on_both;

use super::test_app::*;

#[tokio::test]
async fn metrics_need_a_token_and_label_by_route_template() {
    on_both(async |db| {
        let ctx = setup(db, AuthGuard::default()).await;
        let store = &ctx.state.store;
        let (read, _) = token(store, &[Scope::Read]).await;
        let id = secret_doc(store, "metrics-doc-name", "value").await;
        assert_eq!(
            get(&ctx.app, &format!("/api/block_documents/{id}"), &read)
                .await
                .status,
            StatusCode::OK
        );
        assert_eq!(
            get(
                &ctx.app,
                "/api/block_types/slug/secret/block_documents/name/metrics-doc-name",
                &read
            )
            .await
            .status,
            StatusCode::OK
        );
        assert_eq!(
            get(&ctx.app, "/api/nowhere-xyzzy", &read).await.status,
            StatusCode::NOT_FOUND
        );

        let anonymous = send(&ctx.app, "GET", "/metrics", None, None, &[]).await;
        assert_unauthorized(&anonymous, "/metrics without a token");
        let resp = get(&ctx.app, "/metrics", &read).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
        let text = &resp.text;
        assert!(text.contains("blocks_http_requests_total"), "{text}");
        assert!(
            text.contains(r#"route="/api/block_documents/{id}""#),
            "{text}"
        );
        assert!(
            text.contains(r#"route="/api/block_types/slug/{slug}/block_documents/name/{name}""#),
            "{text}"
        );
        assert!(text.contains(r#"route="unmatched""#), "{text}");
        assert!(
            !text.contains(&id.to_string()),
            "a concrete id in the metrics"
        );
        assert!(
            !text.contains("metrics-doc-name"),
            "a block name in the metrics"
        );
        assert!(
            !text.contains("nowhere-xyzzy"),
            "a concrete path in the metrics"
        );
        let audit_line = text
            .lines()
            .find(|l| l.starts_with("blocks_audit_records_total"))
            .unwrap_or_else(|| panic!("blocks_audit_records_total: {text}"));
        let audited: f64 = audit_line
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert!(audited >= 1.0, "the 401 above was audited: {audit_line}");
        // SQLite commits writes in groups (the document above was one); PostgreSQL's writes
        // commit one by one and count none.
        let counter = |name: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name}: {text}"));
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        let groups = counter("blocks_write_group_commits_total");
        let writes = counter("blocks_write_group_writes_total");
        match store.backend() {
            crate::store::Backend::Sqlite => {
                assert!(groups >= 1.0, "the create's group: {groups}");
                assert!(writes >= groups, "{writes} writes in {groups} groups");
            }
            crate::store::Backend::Postgres => assert_eq!((groups, writes), (0.0, 0.0)),
        }
    })
    .await;
}
