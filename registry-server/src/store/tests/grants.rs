//! Grants and child tokens in the store, on both databases: validation, children never
//! wider or longer-lived than their parent, revocation of a family, changed grants and
//! expiry seen by a second PostgreSQL replica, lists filtered by reach, expired tokens
//! deleted.

use std::collections::BTreeSet;
use std::time::Duration;

use block_types::catalog::Secret;
use block_types::model::{BlockDocumentCountBody, BlockDocumentFilterBody};
use chrono::Utc;
use secrecy::ExposeSecret as _;

use super::harness::{create, on_both, register};
use super::tokens::listening;
use crate::store::TokenAccess as _;
use crate::store::{
    ChildTokenCreate, CreatedToken, Grant, Reach, Scope, Store, StoreError, TokenCreate, TokenInfo,
    TokenRejection, Ttl,
};

fn grants(list: &[&str]) -> Vec<Grant> {
    list.iter().map(|g| Grant::parse(g).unwrap()).collect()
}

async fn token(store: &Store, scopes: &[Scope], granted: &[&str]) -> CreatedToken {
    store
        .create_token(TokenCreate {
            name: "limited".into(),
            scopes: scopes.iter().copied().collect(),
            grants: grants(granted),
            ..Default::default()
        })
        .await
        .unwrap()
}

fn fields(e: StoreError) -> Vec<String> {
    match e {
        StoreError::Invalid(errors) => errors.into_iter().map(|e| e.field).collect(),
        other => panic!("expected a 422, got {other:?}"),
    }
}

#[tokio::test]
async fn grants_are_checked_stored_and_listed() {
    on_both(async |db| {
        let store = db.open().await;
        let created = token(
            &store,
            &[Scope::ReadSecrets],
            &["read-secrets:gcs-bucket/zoom-*"],
        )
        .await;
        assert_eq!(
            created.info.grants,
            grants(&["read-secrets:gcs-bucket/zoom-*"])
        );
        let listed = store.list_tokens().await.unwrap();
        assert_eq!(listed[0].grants, created.info.grants);
        let seen = store
            .authenticate(created.token.expose_secret())
            .await
            .unwrap()
            .unwrap();
        assert!(seen.may(Scope::ReadSecrets, "gcs-bucket", "zoom-gcs"));
        assert!(!seen.may(Scope::ReadSecrets, "gcs-bucket", "prod-gcs"));
        assert!(!seen.may(Scope::Write, "gcs-bucket", "zoom-gcs"));

        // An admin token is never limited; a grant beyond the token's scopes is refused.
        let refused = store
            .create_token(TokenCreate {
                name: "admin".into(),
                scopes: [Scope::Admin].into(),
                grants: grants(&["read:*/*"]),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("admin token cannot be limited"),
            "{refused}"
        );
        let refused = store
            .create_token(TokenCreate {
                name: "x".into(),
                scopes: [Scope::Read].into(),
                grants: grants(&["read:*/*", "write:secret/*"]),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(fields(refused), ["grants[1].scope"]);
        let refused = store
            .set_token_grants(created.info.id, grants(&["write:*/*"]))
            .await
            .unwrap_err();
        assert_eq!(fields(refused), ["grants[0].scope"]);

        // ttl and expires: one or the other, and a ttl sets the expiry.
        let ttl = store
            .create_token(TokenCreate {
                name: "ttl".into(),
                scopes: [Scope::Read].into(),
                ttl: Some(Ttl::parse("1h").unwrap()),
                ..Default::default()
            })
            .await
            .unwrap();
        let left = ttl.info.expires.unwrap() - Utc::now();
        assert!(left > chrono::Duration::minutes(59) && left <= chrono::Duration::hours(1));
        let refused = store
            .create_token(TokenCreate {
                name: "both".into(),
                scopes: [Scope::Read].into(),
                ttl: Some(Ttl::parse("1h").unwrap()),
                expires: Some(Utc::now() + chrono::Duration::hours(1)),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(fields(refused), ["ttl"]);
    })
    .await;
}

#[tokio::test]
async fn a_child_token_is_never_wider_or_longer_lived_than_its_parent() {
    on_both(async |db| {
        let store = db.open().await;
        let parent = store
            .create_token(TokenCreate {
                name: "pipeline".into(),
                scopes: [Scope::ReadSecrets].into(),
                grants: grants(&["read-secrets:gcs-bucket/zoom-*", "read:secret/*"]),
                ttl: Some(Ttl(Duration::from_secs(600))),
                ..Default::default()
            })
            .await
            .unwrap();
        let info: TokenInfo = parent.info.clone();
        let max = Duration::from_secs(3600);

        // Defaults: the parent's scopes and grants, its remaining lifetime.
        let child = store
            .create_child_token(&info, ChildTokenCreate::default(), max)
            .await
            .unwrap();
        assert_eq!(child.info.name, "child of pipeline");
        assert_eq!(child.info.scopes, info.scopes);
        assert_eq!(child.info.grants, info.grants);
        assert_eq!(child.info.parent_id, Some(info.id));
        assert!(child.info.expires.unwrap() <= info.expires.unwrap());

        // Narrower is fine.
        let narrow = store
            .create_child_token(
                &info,
                ChildTokenCreate {
                    scopes: Some([Scope::Read].into()),
                    grants: Some(grants(&["read:gcs-bucket/zoom-gcs"])),
                    ttl: Some(Ttl(Duration::from_secs(60))),
                    ..Default::default()
                },
                max,
            )
            .await
            .unwrap();
        assert!(narrow.info.expires.unwrap() <= Utc::now() + chrono::Duration::seconds(60));

        // Wider is not: a scope, a grant, no grants at all, a longer life.
        for (body, field) in [
            (
                ChildTokenCreate {
                    scopes: Some([Scope::Write].into()),
                    ..Default::default()
                },
                "scopes",
            ),
            (
                ChildTokenCreate {
                    grants: Some(grants(&["read-secrets:gcs-bucket/*"])),
                    ..Default::default()
                },
                "grants[0]",
            ),
            (
                ChildTokenCreate {
                    grants: Some(grants(&["read-secrets:secret/*"])),
                    ..Default::default()
                },
                "grants[0]",
            ),
            (
                ChildTokenCreate {
                    grants: Some(Vec::new()),
                    ..Default::default()
                },
                "grants",
            ),
            (
                ChildTokenCreate {
                    ttl: Some(Ttl(Duration::from_secs(601))),
                    ..Default::default()
                },
                "ttl",
            ),
        ] {
            let refused = store
                .create_child_token(&info, body, max)
                .await
                .unwrap_err();
            assert!(fields(refused).contains(&field.to_owned()), "{field}");
        }

        // An unlimited parent without expiry: the server's maximum bounds the child.
        let root = store
            .create_token(TokenCreate {
                name: "root".into(),
                scopes: [Scope::Write].into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let short = Duration::from_secs(120);
        let child = store
            .create_child_token(&root.info, ChildTokenCreate::default(), short)
            .await
            .unwrap();
        assert!(child.info.expires.unwrap() <= Utc::now() + chrono::Duration::seconds(120));
        let refused = store
            .create_child_token(
                &root.info,
                ChildTokenCreate {
                    ttl: Some(Ttl(Duration::from_secs(121))),
                    ..Default::default()
                },
                short,
            )
            .await
            .unwrap_err();
        assert_eq!(fields(refused), ["ttl"]);

        // Revoking the parent revokes its children and theirs.
        let grandchild = store
            .create_child_token(&child.info, ChildTokenCreate::default(), short)
            .await
            .unwrap();
        store.revoke_token(root.info.id).await.unwrap();
        for t in [&root, &child, &grandchild] {
            assert!(matches!(
                store.authenticate(t.token.expose_secret()).await.unwrap(),
                Err(TokenRejection::Revoked(_))
            ));
        }
        // A revoked parent mints nothing.
        let refused = store
            .create_child_token(&root.info, ChildTokenCreate::default(), short)
            .await
            .unwrap_err();
        assert!(matches!(refused, StoreError::Conflict(_)), "{refused:?}");
    })
    .await;
}

#[tokio::test]
async fn a_child_never_holds_admin_and_narrowing_a_parent_revokes_its_children() {
    on_both(async |db| {
        let store = db.open().await;
        let admin = store
            .create_token(TokenCreate {
                name: "admin".into(),
                scopes: [Scope::Admin].into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let max = Duration::from_secs(60);
        let child = store
            .create_child_token(&admin.info, ChildTokenCreate::default(), max)
            .await
            .unwrap();
        assert_eq!(
            child.info.scopes,
            BTreeSet::from([Scope::ReadSecrets, Scope::Write])
        );
        let refused = store
            .create_child_token(
                &admin.info,
                ChildTokenCreate {
                    scopes: Some([Scope::Admin].into()),
                    ..Default::default()
                },
                max,
            )
            .await
            .unwrap_err();
        assert_eq!(fields(refused), ["scopes"]);

        // Children were bounded by their parent's grants: new grants revoke them.
        let parent = token(&store, &[Scope::Read], &["read:secret/*"]).await;
        let child = store
            .create_child_token(&parent.info, ChildTokenCreate::default(), max)
            .await
            .unwrap();
        let changed = store
            .set_token_grants(parent.info.id, grants(&["read:secret/zoom-*"]))
            .await
            .unwrap();
        assert_eq!(changed.grants, grants(&["read:secret/zoom-*"]));
        assert!(
            store
                .authenticate(parent.token.expose_secret())
                .await
                .unwrap()
                .is_ok()
        );
        assert!(matches!(
            store
                .authenticate(child.token.expose_secret())
                .await
                .unwrap(),
            Err(TokenRejection::Revoked(_))
        ));
        // A child is checked against its parent as stored, not as the caller last saw it.
        let stale = parent.info.clone();
        let refused = store
            .create_child_token(
                &stale,
                ChildTokenCreate {
                    grants: Some(grants(&["read:secret/prod-*"])),
                    ..Default::default()
                },
                max,
            )
            .await
            .unwrap_err();
        assert_eq!(fields(refused), ["grants[0]"]);
    })
    .await;
}

#[tokio::test]
async fn lists_and_counts_hold_only_what_a_reach_selects() {
    on_both(async |db| {
        let store = db.open().await;
        let (_, schema) = register::<Secret>(&store).await;
        for name in ["zoom-a", "zoom-b", "prod-a"] {
            create(&store, &schema, name, serde_json::json!({"value": "v"})).await;
        }
        let limited = token(
            &store,
            &[Scope::Read],
            &["read:secret/zoom-*", "read:other/*"],
        )
        .await;
        let reach = limited.info.reach(Scope::Read);
        let names = |docs: Vec<block_types::model::BlockDocument>| -> Vec<String> {
            docs.into_iter().filter_map(|d| d.name).collect()
        };
        let listed = store
            .filter_block_documents_within(&BlockDocumentFilterBody::default(), reach)
            .await
            .unwrap();
        assert_eq!(names(listed), ["zoom-a", "zoom-b"]);
        let count = store
            .count_block_documents_within(&BlockDocumentCountBody::default(), reach)
            .await
            .unwrap();
        assert_eq!(count, 2);
        // Paging runs over what is in reach.
        let second = store
            .filter_block_documents_within(
                &BlockDocumentFilterBody {
                    offset: Some(1),
                    ..Default::default()
                },
                reach,
            )
            .await
            .unwrap();
        assert_eq!(names(second), ["zoom-b"]);
        // read-secrets reaches nothing with read grants; All reaches everything.
        let secrets = store
            .list_block_documents_of_type_within(
                "secret",
                true,
                limited.info.reach(Scope::ReadSecrets),
            )
            .await
            .unwrap();
        assert!(secrets.is_empty());
        let all = store
            .count_block_documents_within(&BlockDocumentCountBody::default(), Reach::All)
            .await
            .unwrap();
        assert_eq!(all, 3);
    })
    .await;
}

#[tokio::test]
async fn expired_tokens_are_deleted_a_day_later() {
    on_both(async |db| {
        let store = db.open().await;
        let old = token(&store, &[Scope::Read], &[]).await;
        let recent = token(&store, &[Scope::Read], &[]).await;
        let day = 24 * 3600 * 1_000_000_i64;
        let now = Utc::now().timestamp_micros();
        for (t, expired_at) in [(&old, now - day - 60_000_000), (&recent, now - 60_000_000)] {
            sqlx::query("update api_token set expires = $1 where id = $2")
                .bind(expired_at)
                .bind(t.info.id.to_string())
                .execute(&store.write)
                .await
                .unwrap();
        }
        assert_eq!(store.prune_expired_tokens().await.unwrap(), 1);
        let left: Vec<_> = store
            .list_tokens()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert!(!left.contains(&old.info.id));
        assert!(left.contains(&recent.info.id));
    })
    .await;
}

#[tokio::test]
async fn changed_grants_and_expiry_are_seen_on_another_replica() {
    on_both(async |db| {
        if db.backend == crate::store::Backend::Sqlite {
            // The embedded store has one server process; nothing to show here.
            return;
        }
        let a = db.open().await;
        let b = db.open().await;
        listening(&b).await;
        let created = token(&a, &[Scope::Read], &["read:secret/zoom-*"]).await;
        let secret = created.token.expose_secret().to_owned();
        let seen = b.authenticate(&secret).await.unwrap().unwrap();
        assert!(!seen.may(Scope::Read, "secret", "prod-a"));
        a.set_token_grants(created.info.id, grants(&["read:secret/*"]))
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let seen = b.authenticate(&secret).await.unwrap().unwrap();
            if seen.may(Scope::Read, "secret", "prod-a") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "B kept the old grants"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        // A short-lived token stops on both replicas the moment it expires, cached or not.
        let short = a
            .create_child_token(
                &created.info,
                ChildTokenCreate {
                    ttl: Some(Ttl(Duration::from_secs(1))),
                    ..Default::default()
                },
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        let secret = short.token.expose_secret().to_owned();
        a.authenticate(&secret).await.unwrap().unwrap();
        b.authenticate(&secret).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        for store in [&a, &b] {
            assert!(matches!(
                store.authenticate(&secret).await.unwrap(),
                Err(TokenRejection::Expired(_))
            ));
        }
    })
    .await;
}
