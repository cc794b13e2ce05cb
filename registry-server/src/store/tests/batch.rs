//! Statements run as one batch: one query on both databases when they are independent, in
//! order, atomic with their transaction, a unique violation named as the caller asked.

use sqlx::Row as _;

use super::harness::on_both;
use crate::store::StoreError;
use crate::store::batch::{Batch, Statement};

fn insert(key: &str, n: i64) -> Statement {
    Statement {
        sql: "insert into batch_probe (k, n) values ($1, $2)".to_owned(),
        params: vec![key.into(), n.into()],
    }
}

#[tokio::test]
async fn an_independent_batch_is_one_query_and_a_failing_one_leaves_nothing() {
    on_both(async |db| {
        let store = db.open().await;
        sqlx::query("create table batch_probe (k text primary key, n bigint not null)")
            .execute(&store.write)
            .await
            .unwrap();
        let mut tx = store.write.begin().await.unwrap();
        let mut batch = Batch::independent();
        for (k, n) in [("a", 1), ("b", 2), ("c", 3)] {
            batch.push(insert(k, n));
        }
        let queries = store.query_count();
        assert!(batch.run(&store, &mut tx).await.unwrap() > 0);
        assert_eq!(store.query_count(), queries + 1, "three inserts, one query");
        tx.commit().await.unwrap();
        let rows = sqlx::query("select k, n from batch_probe order by k")
            .fetch_all(&store.read)
            .await
            .unwrap();
        let got: Vec<(String, i64)> = rows
            .iter()
            .map(|r| (r.try_get("k").unwrap(), r.try_get("n").unwrap()))
            .collect();
        assert_eq!(got, [("a".into(), 1), ("b".into(), 2), ("c".into(), 3)]);

        // A taken key in the middle: the caller's meaning, and nothing of the batch stays.
        let mut tx = store.write.begin().await.unwrap();
        let mut batch = Batch::independent();
        batch.push(insert("d", 4));
        batch.push_unique(insert("b", 5), "Probe already exists");
        batch.push(insert("e", 6));
        let failed = batch.run(&store, &mut tx).await;
        assert!(
            matches!(&failed, Err(StoreError::AlreadyExists(m)) if m == "Probe already exists"),
            "{failed:?}"
        );
        drop(tx);
        let n: i64 = sqlx::query_scalar("select count(*) from batch_probe")
            .fetch_one(&store.read)
            .await
            .unwrap();
        assert_eq!(n, 3);
    })
    .await;
}
