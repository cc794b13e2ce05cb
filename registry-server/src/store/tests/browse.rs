//! The console's light listings: pages of summaries by name search and type, totals,
//! counts per type, and referrers.

use block_types::catalog::{GcpCredentials, GcsBucket, StringBlock};
use block_types::references::reference_value;
use serde_json::json;

use super::harness::{create, on_both, register};
use crate::store::{DocumentQuery, StoreError};

#[tokio::test]
async fn pages_searches_counts_and_referrers() {
    on_both(async |db| {
        let store = db.open().await;
        let (string_type, string) = register::<StringBlock>(&store).await;
        let (_, creds) = register::<GcpCredentials>(&store).await;
        let (bucket_type, bucket) = register::<GcsBucket>(&store).await;
        for i in 0..7 {
            create(&store, &string, &format!("zoom-{i}"), json!({"value": "v"})).await;
        }
        create(&store, &string, "other-50", json!({"value": "v"})).await;
        let key = create(
            &store,
            &creds,
            "zoom-gcp-creds",
            json!({"service_account_info": {"private_key": "k"}}),
        )
        .await;
        for name in ["zoom-gcs", "zoom-gcs-staging"] {
            create(
                &store,
                &bucket,
                name,
                json!({"bucket": "b", "gcp_credentials": reference_value(key.id)}),
            )
            .await;
        }
        let page = |search: Option<&str>, type_id, limit, offset| DocumentQuery {
            search: search.map(ToOwned::to_owned),
            block_type_id: type_id,
            limit,
            offset,
            ..DocumentQuery::default()
        };

        // Pages by name, with the total of all pages.
        let first = store
            .browse_documents(&page(None, None, 4, 0))
            .await
            .unwrap();
        let names: Vec<&str> = first.items.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["other-50", "zoom-0", "zoom-1", "zoom-2"]);
        assert_eq!(first.total, 11);
        let last = store
            .browse_documents(&page(None, None, 4, 8))
            .await
            .unwrap();
        assert_eq!(last.items.len(), 3);
        assert_eq!(last.total, 11);
        // Search: case-insensitive, `%` and `_` literal.
        let found = store
            .browse_documents(&page(Some("GCS"), None, 50, 0))
            .await
            .unwrap();
        assert_eq!(
            found
                .items
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>(),
            ["zoom-gcs", "zoom-gcs-staging"]
        );
        assert_eq!(found.items[0].type_slug, "gcs-bucket");
        // `%` and `_` match themselves only (no name holds them), not any text.
        for wildcard in ["%", "_", "r-5_"] {
            let found = store
                .browse_documents(&page(Some(wildcard), None, 50, 0))
                .await
                .unwrap();
            assert_eq!(found.total, 0, "{wildcard}");
        }
        assert_eq!(
            store
                .browse_documents(&page(Some("R-5"), None, 50, 0))
                .await
                .unwrap()
                .total,
            1
        );
        // By type, searched and paged.
        let strings = store
            .browse_documents(&page(Some("zoom"), Some(string_type.id), 2, 2))
            .await
            .unwrap();
        assert_eq!(
            strings
                .items
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>(),
            ["zoom-2", "zoom-3"]
        );
        assert_eq!(strings.total, 7);
        // A search's total: counted by its page's own query, and by a second one past its
        // last page.
        for (offset, queries) in [(0, 1), (8, 1), (50, 2)] {
            let before = store.query_count();
            let zoom = store
                .browse_documents(&page(Some("zoom"), None, 4, offset))
                .await
                .unwrap();
            assert_eq!(zoom.total, 10, "offset {offset}");
            assert_eq!(store.query_count() - before, queries, "offset {offset}");
        }
        // Bounds.
        for bad in [
            page(None, None, 0, 0),
            page(None, None, 201, 0),
            page(Some(&"x".repeat(300)), None, 10, 0),
        ] {
            assert!(matches!(
                store.browse_documents(&bad).await,
                Err(StoreError::Invalid(_))
            ));
        }

        let mut counts = store.document_counts_by_type(false).await.unwrap();
        counts.sort();
        let mut expected = vec![
            (string_type.id, 8),
            (key.block_type_id, 1),
            (bucket_type.id, 2),
        ];
        expected.sort();
        assert_eq!(counts, expected);

        let referrers = store.referrers(key.id, 10).await.unwrap();
        assert_eq!(
            referrers
                .iter()
                .map(|r| (r.name.as_str(), r.field.as_str()))
                .collect::<Vec<_>>(),
            [
                ("zoom-gcs", "gcp_credentials"),
                ("zoom-gcs-staging", "gcp_credentials")
            ]
        );
        assert_eq!(store.referrers(key.id, 1).await.unwrap().len(), 1);
        assert!(
            store
                .referrers(uuid::Uuid::new_v4(), 10)
                .await
                .unwrap()
                .is_empty()
        );
    })
    .await;
}

#[tokio::test]
async fn the_name_search_follows_creates_deletes_and_reopening() {
    on_both(async |db| {
        let store = db.open().await;
        let (_, string) = register::<StringBlock>(&store).await;
        let names = ["zoom-gcs", "zoom-gcs-staging", "say-hi-there", "ab-x"];
        let mut ids = Vec::new();
        for name in names {
            ids.push(
                create(&store, &string, name, json!({"value": "v"}))
                    .await
                    .id,
            );
        }
        let search = async |store: &crate::store::Store, text: &str| {
            let query = DocumentQuery {
                search: Some(text.to_owned()),
                limit: 50,
                ..DocumentQuery::default()
            };
            let page = store.browse_documents(&query).await.unwrap();
            let mut found: Vec<String> = page.items.into_iter().map(|d| d.name).collect();
            found.sort();
            found
        };
        // Trigram-sized and longer, any case; shorter ones too; quotes and query syntax
        // are text.
        assert_eq!(
            search(&store, "ZOOM-gcs").await,
            ["zoom-gcs", "zoom-gcs-staging"]
        );
        assert_eq!(search(&store, "s-stag").await, ["zoom-gcs-staging"]);
        assert_eq!(search(&store, "hi-th").await, ["say-hi-there"]);
        assert_eq!(search(&store, "ab").await, ["ab-x"]);
        assert!(search(&store, "\"hi\"").await.is_empty());
        assert!(search(&store, "hi\" OR \"zoom").await.is_empty());
        assert!(search(&store, "gcs-prod").await.is_empty());
        assert!(
            search(&store, "OR zoom").await.is_empty(),
            "the text is never a query"
        );

        store.delete_block_document(ids[0], None).await.unwrap();
        assert_eq!(search(&store, "zoom-gcs").await, ["zoom-gcs-staging"]);
        create(&store, &string, "zoom-gcs", json!({"value": "again"})).await;
        assert_eq!(
            search(&store, "zoom-gcs").await,
            ["zoom-gcs", "zoom-gcs-staging"]
        );

        // The index itself: SQLite's holds each name once (the deleted one left it);
        // PostgreSQL's trigram index exists (pg_trgm is available here), with its short
        // pending list.
        let (count, expected) = match store.backend {
            crate::store::Backend::Sqlite => (
                "select count(*) from block_document_name where block_document_name match '\"zoom-gcs\"'",
                2,
            ),
            crate::store::Backend::Postgres => (
                "select count(*) from pg_class where relname = 'block_document_name_trigrams' \
                 and 'gin_pending_list_limit=128' = any(reloptions)",
                1,
            ),
        };
        let found: i64 = sqlx::query_scalar(count)
            .fetch_one(&store.read)
            .await
            .unwrap();
        assert_eq!(found, expected, "{count}");

        drop(store);
        let store = db.open().await;
        assert_eq!(
            search(&store, "zoom-gcs").await,
            ["zoom-gcs", "zoom-gcs-staging"]
        );
    })
    .await;
}
