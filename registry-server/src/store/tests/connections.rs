//! How the store's connections are set up: durability on the write path, a small page cache
//! on SQLite's read connections.

use super::harness::on_both;
use crate::store::Backend;

#[tokio::test]
async fn writes_sync_fully_and_sqlite_read_connections_keep_a_small_page_cache() {
    on_both(async |db| {
        let store = db.open().await;
        match db.backend {
            Backend::Sqlite => {
                // 2 is FULL: an acknowledged write is on disk.
                let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
                    .fetch_one(&store.write)
                    .await
                    .unwrap();
                assert_eq!(synchronous, 2);
                let write_cache: i64 = sqlx::query_scalar("PRAGMA cache_size")
                    .fetch_one(&store.write)
                    .await
                    .unwrap();
                assert_eq!(
                    write_cache, -2000,
                    "the write connection keeps SQLite's default"
                );
                // Every read connection, not only the first one opened.
                let mut held = Vec::new();
                for _ in 0..3 {
                    let mut conn = store.read.acquire().await.unwrap();
                    let cache: i64 = sqlx::query_scalar("PRAGMA cache_size")
                        .fetch_one(&mut *conn)
                        .await
                        .unwrap();
                    assert_eq!(cache, -i64::from(super::super::SQLITE_READ_CACHE_KIB));
                    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
                        .fetch_one(&mut *conn)
                        .await
                        .unwrap();
                    assert_eq!(synchronous, 2);
                    held.push(conn);
                }
            }
            Backend::Postgres => {
                let commit: String = sqlx::query_scalar("show synchronous_commit")
                    .fetch_one(&store.write)
                    .await
                    .unwrap();
                assert_eq!(commit, "on", "document writes commit durably");
            }
        }
    })
    .await;
}
