//! Filters, sorts, paging and counts over a few hundred documents.

use block_types::catalog::{LocalFileSystem, Secret};
use block_types::model::{
    AllOf, AnyOf, BlockDocumentCountBody, BlockDocumentCreate, BlockDocumentFilter,
    BlockDocumentFilterBody, BlockDocumentSort, BlockSchemaFilter, BlockTypeFilter,
    BlockTypeFilterBody, EqBool, Like, NameFilter, Operator,
};
use serde_json::json;

use super::harness::{obj, on_both, register};
use crate::store::StoreError;

fn names(docs: &[block_types::model::BlockDocument]) -> Vec<String> {
    docs.iter().map(|d| d.name.clone().unwrap()).collect()
}

#[tokio::test]
async fn filters_sorts_paging_and_counts_match_prefect() {
    on_both(async |db| {
        let store = db.open().await;
        let (secret_type, secret_schema) = register::<Secret>(&store).await;
        let (fs_type, fs_schema) = register::<LocalFileSystem>(&store).await;
        // 240 secrets, 60 file systems, 20 anonymous secrets.
        let mut secret_names = Vec::new();
        for i in 0..240 {
            let name = format!("secret-{i:03}");
            let schema = &secret_schema;
            store
                .create_block_document(BlockDocumentCreate { name: Some(name.clone()), data: obj(json!({"value": "v"})), block_schema_id: schema.id, block_type_id: schema.block_type_id, is_anonymous: false })
                .await
                .unwrap();
            secret_names.push(name);
        }
        for i in 0..60 {
            store
                .create_block_document(BlockDocumentCreate { name: Some(format!("fs-{i:02}")), data: obj(json!({"basepath": "/tmp"})), block_schema_id: fs_schema.id, block_type_id: fs_schema.block_type_id, is_anonymous: false })
                .await
                .unwrap();
        }
        for _ in 0..20 {
            store
                .create_block_document(BlockDocumentCreate { name: None, data: obj(json!({"value": "anon"})), block_schema_id: secret_schema.id, block_type_id: secret_schema.block_type_id, is_anonymous: true })
                .await
                .unwrap();
        }
        let count = async |body: BlockDocumentCountBody| store.count_block_documents(&body).await.unwrap();
        assert_eq!(count(BlockDocumentCountBody::default()).await, 300, "anonymous documents are hidden by default");
        let all = BlockDocumentFilter { is_anonymous: None, ..Default::default() };
        assert_eq!(count(BlockDocumentCountBody { block_documents: Some(all.clone()), ..Default::default() }).await, 320);
        let anon_only = BlockDocumentFilter { is_anonymous: Some(EqBool { eq_: Some(true) }), ..Default::default() };
        assert_eq!(count(BlockDocumentCountBody { block_documents: Some(anon_only), ..Default::default() }).await, 20);

        // Default page: 200, name ascending.
        let page = store.filter_block_documents(&BlockDocumentFilterBody::default()).await.unwrap();
        assert_eq!(page.len(), 200);
        let mut expected: Vec<String> = (0..60).map(|i| format!("fs-{i:02}")).chain(secret_names.iter().cloned()).collect();
        expected.sort();
        assert_eq!(names(&page), expected[..200]);
        assert!(page.iter().all(|d| d.data.get("value").is_none_or(|v| v == "********")), "secrets masked by default");

        // Paging and descending order.
        let body = BlockDocumentFilterBody { sort: Some(BlockDocumentSort::NameDesc), limit: Some(25), offset: Some(10), ..Default::default() };
        let mut desc = expected.clone();
        desc.reverse();
        assert_eq!(names(&store.filter_block_documents(&body).await.unwrap()), desc[10..35]);
        let body = BlockDocumentFilterBody { offset: Some(290), ..Default::default() };
        assert_eq!(store.filter_block_documents(&body).await.unwrap().len(), 10);

        // Type, then name: "Local File System" sorts before "Secret".
        let body = BlockDocumentFilterBody { sort: Some(BlockDocumentSort::BlockTypeAndNameAsc), limit: Some(61), ..Default::default() };
        let got = names(&store.filter_block_documents(&body).await.unwrap());
        assert_eq!(got[59], "fs-59");
        assert_eq!(got[60], "secret-000");

        // name like_ (case-insensitive substring) and any_.
        let like = BlockDocumentFilter { name: Some(NameFilter { any_: None, like_: Some("CRET-01".into()) }), ..Default::default() };
        let body = BlockDocumentFilterBody { block_documents: Some(like), ..Default::default() };
        assert_eq!(names(&store.filter_block_documents(&body).await.unwrap()), (10..20).map(|i| format!("secret-{i:03}")).collect::<Vec<_>>());
        let any = BlockDocumentFilter { name: Some(NameFilter { any_: Some(vec!["fs-03".into(), "secret-007".into(), "nope".into()]), like_: None }), ..Default::default() };
        let body = BlockDocumentFilterBody { block_documents: Some(any), ..Default::default() };
        assert_eq!(names(&store.filter_block_documents(&body).await.unwrap()), ["fs-03", "secret-007"]);
        // A name like_ with more conditions (PostgreSQL finds its matches first): with a
        // type filter, sorted and paged; with any_; counted; and with or_, where a document
        // may match without its name.
        let like = |pattern: &str| Some(NameFilter { any_: None, like_: Some(pattern.into()) });
        let secrets = BlockTypeFilter { slug: Some(AnyOf { any_: Some(vec!["secret".into()]) }), name: None };
        let body = BlockDocumentFilterBody { block_documents: Some(BlockDocumentFilter { name: like("-0"), ..Default::default() }), block_types: Some(secrets.clone()), sort: Some(BlockDocumentSort::NameDesc), limit: Some(5), offset: Some(2), ..Default::default() };
        assert_eq!(names(&store.filter_block_documents(&body).await.unwrap()), (93..98).rev().map(|i| format!("secret-{i:03}")).collect::<Vec<_>>());
        let count_of = |documents: BlockDocumentFilter, types: Option<BlockTypeFilter>| BlockDocumentCountBody { block_documents: Some(documents), block_types: types, ..Default::default() };
        assert_eq!(count(count_of(BlockDocumentFilter { name: like("-0"), ..Default::default() }, None)).await, 110, "secret-0xx and fs-0x");
        assert_eq!(count(count_of(BlockDocumentFilter { name: like("-0"), ..Default::default() }, Some(secrets))).await, 100);
        // Wildcards in like_: `_` one character, `%` any run (SQLite reads the trigram index
        // for the literal runs, then checks the pattern).
        assert_eq!(count(count_of(BlockDocumentFilter { name: like("CRET_0_1"), ..Default::default() }, None)).await, 10, "secret-0x1");
        assert_eq!(count(count_of(BlockDocumentFilter { name: like("cret%01"), ..Default::default() }, None)).await, 13, "secret-001, -010 to -019, -101, -201");
        assert_eq!(count(count_of(BlockDocumentFilter { name: like("-0_"), ..Default::default() }, None)).await, 110, "no run of three: every name read");
        assert_eq!(count(count_of(BlockDocumentFilter { name: like("t-1\"0"), ..Default::default() }, None)).await, 0, "a quote is text");
        let both = BlockDocumentFilter { name: Some(NameFilter { any_: Some(vec!["fs-03".into(), "secret-010".into()]), like_: Some("CRET".into()) }), ..Default::default() };
        let body = BlockDocumentFilterBody { block_documents: Some(both), ..Default::default() };
        assert_eq!(names(&store.filter_block_documents(&body).await.unwrap()), ["secret-010"]);
        let either = BlockDocumentFilter { operator: Operator::Or, is_anonymous: Some(EqBool { eq_: Some(true) }), name: like("fs-05"), ..Default::default() };
        assert_eq!(count(count_of(either.clone(), None)).await, 21, "fs-05 or anonymous");
        let body = BlockDocumentFilterBody { block_documents: Some(either), ..Default::default() };
        let page = store.filter_block_documents(&body).await.unwrap();
        assert_eq!(page.len(), 21);
        assert_eq!(page.iter().filter(|d| !d.is_anonymous).map(|d| d.name.as_deref()).collect::<Vec<_>>(), [Some("fs-05")]);

        // By type id, by type slug, by schema capability.
        let by_type = BlockDocumentFilter { block_type_id: Some(AnyOf { any_: Some(vec![fs_type.id]) }), ..Default::default() };
        assert_eq!(count(BlockDocumentCountBody { block_documents: Some(by_type), ..Default::default() }).await, 60);
        let slug = BlockTypeFilter { slug: Some(AnyOf { any_: Some(vec!["secret".into()]) }), name: None };
        assert_eq!(count(BlockDocumentCountBody { block_types: Some(slug), ..Default::default() }).await, 240);
        let caps = BlockSchemaFilter { block_capabilities: Some(AllOf { all_: Some(vec!["read-path".into(), "write-path".into()]) }), ..Default::default() };
        assert_eq!(count(BlockDocumentCountBody { block_schemas: Some(caps), ..Default::default() }).await, 60);
        let impossible = BlockSchemaFilter { block_capabilities: Some(AllOf { all_: Some(vec!["read-path".into(), "notify".into()]) }), ..Default::default() };
        assert_eq!(count(BlockDocumentCountBody { block_schemas: Some(impossible), ..Default::default() }).await, 0);

        // or_: anonymous OR named fs-00.
        let either = BlockDocumentFilter {
            operator: Operator::Or,
            is_anonymous: Some(EqBool { eq_: Some(true) }),
            name: Some(NameFilter { any_: Some(vec!["fs-00".into()]), like_: None }),
            ..Default::default()
        };
        assert_eq!(count(BlockDocumentCountBody { block_documents: Some(either), ..Default::default() }).await, 21);

        // Limits as Prefect: at most 200.
        let too_many = store.filter_block_documents(&BlockDocumentFilterBody { limit: Some(201), ..Default::default() }).await;
        assert!(matches!(too_many, Err(StoreError::Invalid(e)) if e[0].message == "Invalid limit: must be less than or equal to 200."));

        // The per-type listing, and block types by name.
        assert_eq!(store.list_block_documents_of_type("secret", false).await.unwrap().len(), 240);
        assert!(matches!(store.list_block_documents_of_type("nope", false).await, Err(StoreError::NotFound(_))));
        let types = store.filter_block_types(&BlockTypeFilterBody::default()).await.unwrap();
        assert_eq!(types.iter().map(|t| t.slug.as_str()).collect::<Vec<_>>(), ["local-file-system", "secret"]);
        let like = BlockTypeFilterBody { block_types: Some(BlockTypeFilter { name: Some(Like { like_: Some("FILE".into()) }), slug: None }), ..Default::default() };
        assert_eq!(store.filter_block_types(&like).await.unwrap()[0].id, fs_type.id);
        let with_caps = BlockTypeFilterBody { block_schemas: Some(BlockSchemaFilter { block_capabilities: Some(AllOf { all_: Some(vec!["get-directory".into()]) }), ..Default::default() }), ..Default::default() };
        assert_eq!(store.filter_block_types(&with_caps).await.unwrap().len(), 1);
        assert_ne!(secret_type.id, fs_type.id);
    })
    .await;
}
