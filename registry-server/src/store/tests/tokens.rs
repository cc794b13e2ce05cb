//! Tokens and the audit log's storage (appends, listing, caps, retention), on both
//! databases.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use secrecy::ExposeSecret as _;

use super::harness::on_both;
use crate::store::{
    AuditQuery, NewAuditRecord, Scope, Store, TOKEN_PREFIX, TokenCreate, TokenRejection,
    token_digest,
};

/// Waits until `b` hears changes from other replicas (its token cache is used).
pub(super) async fn listening(b: &Store) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !b.token_cache_live() {
        assert!(
            std::time::Instant::now() < deadline,
            "B never started listening"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn body(scopes: &[Scope]) -> TokenCreate {
    TokenCreate {
        name: "ci".into(),
        scopes: scopes.iter().copied().collect(),
        expires: None,
        ..Default::default()
    }
}

#[test]
fn scopes_nest_as_the_design_says() {
    use Scope::*;
    let grants = |held: Scope| -> BTreeSet<Scope> {
        Scope::ALL.into_iter().filter(|s| held.grants(*s)).collect()
    };
    assert_eq!(grants(Admin), Scope::ALL.into_iter().collect());
    assert_eq!(grants(Write), [Read, Write].into());
    assert_eq!(grants(ReadSecrets), [Read, ReadSecrets].into());
    assert_eq!(grants(Read), [Read].into());
    let json = serde_json::to_string(&[Read, ReadSecrets, Write, Admin]).unwrap();
    assert_eq!(json, r#"["read","read-secrets","write","admin"]"#);
}

#[tokio::test]
async fn a_token_is_stored_as_a_digest_and_authenticates_until_revoked() {
    on_both(async |db| {
        let store = db.open().await;
        let created = store.create_token(body(&[Scope::Write])).await.unwrap();
        let token = created.token.expose_secret().to_owned();
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(
            token.len(),
            TOKEN_PREFIX.len() + 43,
            "256 bits in base64url"
        );
        let stored: Vec<String> = sqlx::query_scalar("select token_hash from api_token")
            .fetch_all(&store.read)
            .await
            .unwrap();
        assert_eq!(
            stored,
            vec![token_digest(&token)],
            "only the digest is stored"
        );

        let info = store.authenticate(&token).await.unwrap().unwrap();
        assert_eq!(info.id, created.info.id);
        assert!(info.grants(Scope::Read) && !info.grants(Scope::ReadSecrets));
        assert_eq!(
            store.authenticate("blk_nope").await.unwrap(),
            Err(TokenRejection::Unknown)
        );
        // Cached now; a revocation still stops it on the next call.
        store.authenticate(&token).await.unwrap().unwrap();
        let revoked = store.revoke_token(info.id).await.unwrap();
        assert!(revoked.revoked.is_some());
        assert_eq!(
            store.authenticate(&token).await.unwrap(),
            Err(TokenRejection::Revoked(info.id))
        );
        assert!(matches!(
            store.revoke_token(uuid::Uuid::new_v4()).await,
            Err(crate::store::StoreError::NotFound(_))
        ));
    })
    .await;
}

#[tokio::test]
async fn a_revocation_on_one_replica_stops_the_token_on_another() {
    on_both(async |db| {
        if db.backend == crate::store::Backend::Sqlite {
            // The embedded store has one server process; nothing to show here.
            return;
        }
        let a = db.open().await;
        let b = db.open().await;
        let created = a.create_token(body(&[Scope::Read])).await.unwrap();
        let token = created.token.expose_secret().to_owned();
        // Once B hears revocations, it answers from memory…
        listening(&b).await;
        b.authenticate(&token).await.unwrap().unwrap();
        let queries = b.query_count();
        b.authenticate(&token).await.unwrap().unwrap();
        assert_eq!(b.query_count(), queries, "a cached token costs no query");
        // …and still refuses the token soon after A revokes it.
        a.revoke_token(created.info.id).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match b.authenticate(&token).await.unwrap() {
                Err(TokenRejection::Revoked(_)) => break,
                Ok(_) => assert!(
                    std::time::Instant::now() < deadline,
                    "replica B still accepts a token revoked on A"
                ),
                Err(other) => panic!("{other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn an_expired_token_is_refused_and_bad_bodies_name_the_field() {
    on_both(async |db| {
        let store = db.open().await;
        let created = store
            .create_token(TokenCreate {
                expires: Some(Utc::now() + chrono::Duration::milliseconds(300)),
                ..body(&[Scope::Read])
            })
            .await
            .unwrap();
        let token = created.token.expose_secret().to_owned();
        store.authenticate(&token).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            store.authenticate(&token).await.unwrap(),
            Err(TokenRejection::Expired(created.info.id))
        );
        for (bad, field) in [
            (
                TokenCreate {
                    name: " ".into(),
                    ..body(&[Scope::Read])
                },
                "name",
            ),
            (body(&[]), "scopes"),
            (
                TokenCreate {
                    expires: Some(Utc::now() - chrono::Duration::seconds(1)),
                    ..body(&[Scope::Read])
                },
                "expires",
            ),
        ] {
            match store.create_token(bad).await {
                Err(crate::store::StoreError::Invalid(errors)) => {
                    assert_eq!(errors[0].field, field);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(store.list_tokens().await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn the_first_admin_token_is_created_once() {
    on_both(async |db| {
        let store = db.open().await;
        let first = store.bootstrap_admin_token().await.unwrap().unwrap();
        assert_eq!(first.info.scopes, [Scope::Admin].into());
        assert!(store.bootstrap_admin_token().await.unwrap().is_none());
        // The last valid admin token cannot be revoked; once another exists, it can.
        let refused = store.revoke_token(first.info.id).await;
        assert!(matches!(&refused, Err(crate::store::StoreError::Conflict(m)) if m.contains("last valid admin token")), "{refused:?}");
        assert!(store.authenticate(first.token.expose_secret()).await.unwrap().is_ok());
        let second = store
            .create_token(crate::store::TokenCreate { name: "second".into(), scopes: [Scope::Admin].into(), expires: None, ..Default::default() })
            .await
            .unwrap();
        // An expired admin token does not count as the one left.
        let expired = store
            .create_token(crate::store::TokenCreate { name: "old".into(), scopes: [Scope::Admin].into(), expires: None, ..Default::default() })
            .await
            .unwrap();
        sqlx::query("update api_token set expires = 1 where id = $1")
            .bind(expired.info.id.to_string())
            .execute(&store.write)
            .await
            .unwrap();
        store.revoke_token(first.info.id).await.unwrap();
        let refused = store.revoke_token(second.info.id).await;
        assert!(matches!(refused, Err(crate::store::StoreError::Conflict(_))), "{refused:?}");
        // Even after the first one is revoked: a restart never mints another.
        drop(store);
        let store = db.open().await;
        assert!(store.bootstrap_admin_token().await.unwrap().is_none());
    })
    .await;
}

fn record(i: usize, token: Option<uuid::Uuid>, action: &str) -> NewAuditRecord {
    NewAuditRecord {
        at: Utc::now(),
        request_id: format!("req-{i}"),
        token_id: token,
        action: action.to_owned(),
        target: format!("/api/block_documents/{i}"),
        outcome: if i.is_multiple_of(3) { "denied" } else { "ok" },
        status: if i.is_multiple_of(3) { 403 } else { 200 },
    }
}

/// The request ids of every record, newest first.
async fn left(store: &Store) -> Vec<String> {
    store
        .list_audit(&AuditQuery::default())
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.request_id)
        .collect()
}

async fn seqs(store: &Store, query: AuditQuery) -> Vec<i64> {
    store
        .list_audit(&query)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect()
}

#[tokio::test]
async fn audit_records_are_appended_in_groups_and_listed_with_filters_and_pages() {
    on_both(async |db| {
        let store = db.open().await;
        let token = uuid::Uuid::new_v4();
        // 250 records in one group: one statement, reading them from a JSON array.
        let group: Vec<_> = (0..250)
            .map(|i| {
                record(
                    i,
                    (i % 2 == 0).then_some(token),
                    if i % 5 == 0 {
                        "block.loaded"
                    } else {
                        "PATCH /api/block_documents/{id}"
                    },
                )
            })
            .collect();
        store.append_audit(&group).await.unwrap();
        let all = store
            .list_audit(&AuditQuery {
                limit: Some(1000),
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 250);
        assert!(all.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
        assert_eq!(all.last().unwrap().request_id, "req-0");

        let mine = seqs(
            &store,
            AuditQuery {
                token_id: Some(token),
                limit: Some(1000),
                ..AuditQuery::default()
            },
        )
        .await;
        assert_eq!(mine.len(), 125);
        let loads = seqs(
            &store,
            AuditQuery {
                action: Some("block.".into()),
                limit: Some(1000),
                ..AuditQuery::default()
            },
        )
        .await;
        assert_eq!(loads.len(), 50);
        let denied = seqs(
            &store,
            AuditQuery {
                outcome: Some("denied".into()),
                limit: Some(1000),
                ..AuditQuery::default()
            },
        )
        .await;
        assert_eq!(denied.len(), 84);
        let target = seqs(
            &store,
            AuditQuery {
                target: Some("/249".into()),
                ..AuditQuery::default()
            },
        )
        .await;
        assert_eq!(target.len(), 1);
        let none = seqs(
            &store,
            AuditQuery {
                until: Some(Utc::now() - chrono::Duration::hours(1)),
                ..AuditQuery::default()
            },
        )
        .await;
        assert!(none.is_empty());

        // Pages by cursor cover everything once.
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = seqs(
                &store,
                AuditQuery {
                    before,
                    limit: Some(100),
                    ..AuditQuery::default()
                },
            )
            .await;
            if page.is_empty() {
                break;
            }
            before = page.last().copied();
            seen.extend(page);
        }
        assert_eq!(seen, all.iter().map(|r| r.seq).collect::<Vec<_>>());
        assert!(matches!(
            store
                .list_audit(&AuditQuery {
                    limit: Some(0),
                    ..AuditQuery::default()
                })
                .await,
            Err(crate::store::StoreError::Invalid(_))
        ));
    })
    .await;
}

#[tokio::test]
async fn audit_text_is_cleaned_and_capped_so_no_caller_text_can_fail_a_group() {
    on_both(async |db| {
        let store = db.open().await;
        let mut poisoned = record(1, None, "GET /x\u{0}y");
        poisoned.target = format!("/a\u{0}b{}", "é".repeat(5000));
        store
            .append_audit(&[record(0, None, "ok"), poisoned, record(2, None, "ok")])
            .await
            .unwrap();
        let all = store.list_audit(&AuditQuery::default()).await.unwrap();
        assert_eq!(all.len(), 3);
        let stored = all.iter().find(|r| r.request_id == "req-1").unwrap();
        assert_eq!(stored.action, "GET /x?y");
        assert!(stored.target.starts_with("/a?b"));
        let max = crate::store::audit::MAX_TARGET;
        assert!(stored.target.len() <= max, "{}", stored.target.len());
        assert!(stored.target.len() > max - 2, "cut at the cap, not before");
        assert!(stored.action.len() <= 512);
    })
    .await;
}

#[tokio::test]
async fn a_secret_read_target_is_stored_whole() {
    on_both(async |db| {
        let store = db.open().await;
        // The longest target the access check builds: a long path and more documents than
        // it names.
        let ids: Vec<uuid::Uuid> = (0..150).map(|_| uuid::Uuid::new_v4()).collect();
        let path = format!("/api/block_types/slug/{}/block_documents", "s".repeat(600));
        let target = crate::http::auth::secret_read_target(&path, &ids);
        let mut r = record(7, None, "POST /api/block_documents/filter");
        r.target = target.clone();
        store.append_audit(&[r]).await.unwrap();
        let stored = store.list_audit(&AuditQuery::default()).await.unwrap();
        assert_eq!(stored[0].target, target, "no document id is cut off");
        let last = ids[crate::http::auth::MAX_TARGET_DOCUMENTS - 1];
        let found = store
            .list_audit(&AuditQuery {
                target: Some(last.to_string()),
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(found.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn pruning_finds_old_records_through_the_time_index_on_sqlite() {
    on_both(async |db| {
        if db.backend != crate::store::Backend::Sqlite {
            return;
        }
        // A prune holds SQLite's only writer while it runs: walking the whole log (or feed)
        // in sequence order to find nothing past the retention stalled every write and
        // audited read of a store holding a million events for most of a second.
        let store = db.open().await;
        for (statement, index) in [
            (crate::store::audit::PRUNE_AUDIT, "audit_event_by_time"),
            (crate::store::events::PRUNE_EVENTS, "block_event_by_time"),
        ] {
            assert_sqlite_plan_uses(&store, statement, &[0, 10], index).await;
        }
    })
    .await;
}

/// Asserts that SQLite's plan for `statement` (with `binds`) scans no table and has a
/// step naming `step` (an index, or an index with its search terms).
async fn assert_sqlite_plan_uses(store: &Store, statement: &str, binds: &[i64], step: &str) {
    let sql = format!("explain query plan {statement}");
    let mut query = sqlx::query(&sql);
    for bind in binds {
        query = query.bind(*bind);
    }
    let plan: Vec<String> = query
        .fetch_all(&store.read)
        .await
        .unwrap()
        .iter()
        .map(|row| sqlx::Row::try_get::<String, _>(row, "detail").unwrap())
        .collect();
    assert!(
        !plan.iter().any(|line| line.starts_with("SCAN")),
        "{statement}: {plan:#?}"
    );
    assert!(
        plan.iter().any(|line| line.contains(step)),
        "{statement}: {plan:#?}"
    );
}

#[tokio::test]
async fn reading_the_feed_after_a_position_is_one_index_range_on_sqlite() {
    on_both(async |db| {
        if db.backend != crate::store::Backend::Sqlite {
            return;
        }
        // Every reader of the feed asks for what follows its position: a walk of the
        // whole feed to find nothing new took 70-100 ms at a million events.
        let store = db.open().await;
        let statement = store.events_after_sql();
        let step = "block_event_position (xid=? AND seq>?)";
        assert_sqlite_plan_uses(&store, &statement, &[0, 10, 100], step).await;
    })
    .await;
}

#[tokio::test]
async fn audit_records_past_the_retention_are_pruned_in_batches() {
    on_both(async |db| {
        let store = db.open().await;
        let now = Utc::now();
        let aged = |i: usize, days: i64| NewAuditRecord {
            at: now - chrono::Duration::days(days),
            ..record(i, None, "GET /api/block_documents/{id}")
        };
        assert_eq!(
            store.audit_retention_days().await.unwrap(),
            Some(crate::store::audit::DEFAULT_AUDIT_RETENTION_DAYS),
            "400 days unless set"
        );
        // More old records than one delete statement takes.
        let old: Vec<_> = (0..5200).map(|i| aged(i, 401)).collect();
        for chunk in old.chunks(1000) {
            store.append_audit(chunk).await.unwrap();
        }
        store
            .append_audit(&[aged(9001, 399), aged(9002, 40), aged(9003, 0)])
            .await
            .unwrap();
        assert_eq!(store.prune_audit(now).await.unwrap(), 5200);
        assert_eq!(left(&store).await, ["req-9003", "req-9002", "req-9001"]);
        assert_eq!(
            store.prune_audit(now).await.unwrap(),
            0,
            "nothing left to prune"
        );

        // A lower retention prunes at once; every replica reads the same setting.
        assert_eq!(store.set_audit_retention_days(Some(30)).await.unwrap(), 2);
        let other = db.open().await;
        assert_eq!(other.audit_retention_days().await.unwrap(), Some(30));
        assert_eq!(left(&store).await, ["req-9003"]);

        // null keeps every record.
        store.set_audit_retention_days(None).await.unwrap();
        store.append_audit(&[aged(9004, 10_000)]).await.unwrap();
        assert_eq!(store.prune_audit(now).await.unwrap(), 0);
        assert_eq!(other.audit_retention_days().await.unwrap(), None);
        assert_eq!(left(&store).await.len(), 2);

        for bad in [Some(0), Some(36_501)] {
            assert!(matches!(
                store.set_audit_retention_days(bad).await,
                Err(crate::store::StoreError::Invalid(_))
            ));
        }
        assert_eq!(
            store.audit_retention_days().await.unwrap(),
            None,
            "unchanged"
        );
    })
    .await;
}

#[tokio::test]
async fn a_documents_identity_is_looked_up_by_id() {
    on_both(async |db| {
        let store = db.open().await;
        let (_, schema) = super::harness::register::<block_types::catalog::Secret>(&store).await;
        let doc = super::harness::create(
            &store,
            &schema,
            "slugged",
            serde_json::json!({"value": "v"}),
        )
        .await;
        assert_eq!(
            store.document_identity(doc.id).await.unwrap(),
            Some(crate::store::Identity {
                slug: "secret".into(),
                name: "slugged".into(),
                anonymous: false
            })
        );
        assert_eq!(
            store.document_identity(uuid::Uuid::new_v4()).await.unwrap(),
            None
        );
        store.delete_block_document(doc.id, None).await.unwrap();
        assert_eq!(store.document_identity(doc.id).await.unwrap(), None);
    })
    .await;
}
