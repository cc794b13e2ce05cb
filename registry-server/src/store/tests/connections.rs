//! How the store's connections are set up: durability on the write path, a small page cache
//! on SQLite's read connections.

use block_types::catalog::Secret;
use serde_json::json;
use std::time::Duration;

use sqlx::Row as _;

use super::harness::{create, on_both, register};
use crate::store::Backend;

#[tokio::test]
async fn writes_sync_fully_sqlite_read_connections_keep_a_small_page_cache_and_postgresql_has_no_jit()
 {
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
                let automatic: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
                    .fetch_one(&store.write)
                    .await
                    .unwrap();
                assert_eq!(automatic, 0, "no checkpoint inside a commit");
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
                // No JIT on any of the store's connections, the deferred audit one included.
                let mut held = Vec::new();
                for _ in 0..3 {
                    let mut conn = store.read.acquire().await.unwrap();
                    let jit: String = sqlx::query_scalar("show jit")
                        .fetch_one(&mut *conn)
                        .await
                        .unwrap();
                    assert_eq!(jit, "off");
                    held.push(conn);
                }
                let deferred = store.deferred.as_ref().expect("PostgreSQL's deferred pool");
                let jit: String = sqlx::query_scalar("show jit")
                    .fetch_one(deferred)
                    .await
                    .unwrap();
                assert_eq!(jit, "off");
            }
        }
    })
    .await;
}

#[tokio::test]
async fn sqlites_log_is_checkpointed_in_the_background_and_postgresql_has_none() {
    on_both(async |db| {
        let store = db.open().await;
        let (_, schema) = register::<Secret>(&store).await;
        for i in 0..20 {
            create(&store, &schema, &format!("s{i}"), json!({"value": "x"})).await;
        }
        match db.backend {
            Backend::Sqlite => {
                assert!(store.checkpointer.is_some());
                // The database file holds every page of the store once a checkpoint copied
                // them from the log; nothing but the background task checkpoints (the
                // write connection's automatic checkpoint is off, and the store is open).
                let file = db.dir().unwrap().join("blocks.db");
                let mut copied = false;
                for _ in 0..40 {
                    tokio::time::sleep(super::super::CHECKPOINT_EVERY).await;
                    let row = sqlx::query(
                        "select page_count * page_size as size from pragma_page_count(), pragma_page_size()",
                    )
                    .fetch_one(&store.read)
                    .await
                    .unwrap();
                    let size: i64 = row.try_get("size").unwrap();
                    let on_disk = std::fs::metadata(&file).unwrap().len();
                    if on_disk == u64::try_from(size).unwrap() {
                        copied = true;
                        break;
                    }
                }
                assert!(copied, "the log was checkpointed into the database file");
            }
            Backend::Postgres => assert!(store.checkpointer.is_none()),
        }
    })
    .await;
}

#[tokio::test]
async fn a_connection_the_server_closed_while_it_sat_idle_is_replaced_not_handed_out() {
    on_both(async |db| {
        let store = db.open().await;
        let (_, schema) = register::<Secret>(&store).await;
        let doc = create(&store, &schema, "kept", json!({"value": "v"})).await;
        // Several connections open in the pool.
        let reads = (0..4).map(|_| store.read_block_document(doc.id, false));
        for read in futures::future::join_all(reads).await {
            read.unwrap();
        }
        if db.backend == Backend::Postgres {
            // The server ends every connection to this database but this one.
            let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&db.url)
                .await
                .unwrap();
            let ended: Vec<bool> = sqlx::query_scalar(
                "select pg_terminate_backend(pid) from pg_stat_activity \
                 where datname = current_database() and pid <> pg_backend_pid()",
            )
            .fetch_all(&mut admin)
            .await
            .unwrap();
            assert!(ended.len() >= 4, "{} connections ended", ended.len());
            tokio::time::sleep(crate::store::PING_WHEN_IDLE_FOR + Duration::from_millis(200)).await;
        }
        // Each idle connection is checked before it is handed out: no read fails.
        let reads = (0..4).map(|_| store.read_block_document(doc.id, false));
        for read in futures::future::join_all(reads).await {
            assert_eq!(read.unwrap().id, doc.id);
        }
        let again = create(&store, &schema, "after", json!({"value": "v"})).await;
        assert_eq!(again.name.as_deref(), Some("after"));
    })
    .await;
}

#[tokio::test]
async fn a_closed_store_says_so_and_background_work_can_tell() {
    on_both(async |db| {
        let store = db.open().await;
        assert!(store.feed_end().await.is_ok());
        store.close().await;
        // The feed's pump and the webhook worker end on this instead of warning, every
        // second, that they will try again.
        for failed in [
            store.feed_end().await.err(),
            store
                .claim_deliveries(4, chrono::Duration::seconds(30))
                .await
                .err(),
        ] {
            let e = failed.expect("a closed store answers nothing");
            assert!(e.is_closed(), "{e:?}");
        }
        assert!(!crate::store::StoreError::invalid("f", "bad").is_closed());
    })
    .await;
}
