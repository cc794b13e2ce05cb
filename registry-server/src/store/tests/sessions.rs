//! Console sessions: lookup by digest, the idle and absolute limits, the token's validity,
//! sign-out and pruning, on both databases.

use chrono::{DateTime, Duration, Utc};
use secrecy::ExposeSecret as _;
use uuid::Uuid;

use super::harness::on_both;
use crate::store::{
    SESSION_IDLE, SESSION_MAX_AGE, Scope, Store, StoreError, TokenCreate, TokenInfo, token_digest,
};

async fn token(store: &Store, scope: Scope, expires: Option<DateTime<Utc>>) -> TokenInfo {
    store
        .create_token(TokenCreate {
            name: "console".into(),
            scopes: [scope].into(),
            expires,
            ..Default::default()
        })
        .await
        .unwrap()
        .info
}

/// A new session of `token`: its secret and when it was created.
async fn sign_in(store: &Store, token: &TokenInfo) -> (String, DateTime<Utc>) {
    let new = store.create_session(token.id).await.unwrap();
    (new.secret.expose_secret().to_owned(), new.created)
}

async fn stored_digests(store: &Store) -> Vec<String> {
    sqlx::query_scalar("select secret_hash from console_session order by secret_hash")
        .fetch_all(&store.read)
        .await
        .unwrap()
}

/// Moves a session's `column` back in time by `by`, as if it had been written earlier.
async fn move_back(store: &Store, column: &str, by: Duration, secret: &str) {
    sqlx::query(&format!(
        "update console_session set {column} = {column} - $1 where secret_hash = $2"
    ))
    .bind(by.num_microseconds().unwrap())
    .bind(token_digest(secret))
    .execute(&store.write)
    .await
    .unwrap();
}

fn minutes(n: i64) -> Duration {
    Duration::minutes(n)
}

#[test]
fn the_limits_are_thirty_minutes_idle_and_twelve_hours_in_all() {
    assert_eq!(SESSION_IDLE, std::time::Duration::from_secs(30 * 60));
    assert_eq!(SESSION_MAX_AGE, std::time::Duration::from_secs(12 * 3600));
}

#[tokio::test]
async fn a_session_is_stored_as_a_digest_and_found_by_its_secret() {
    on_both(async |db| {
        let store = db.open().await;
        let admin = token(&store, Scope::Admin, None).await;
        let new = store.create_session(admin.id).await.unwrap();
        let secret = new.secret.expose_secret().to_owned();
        assert!(secret.starts_with("bks_"));
        assert_eq!(secret.len(), 4 + 43, "256 bits in base64url");
        assert!(
            !format!("{new:?}").contains(&secret),
            "Debug never shows the secret"
        );
        assert_eq!(stored_digests(&store).await, vec![token_digest(&secret)]);
        let row_text: String = sqlx::query_scalar(
            "select secret_hash || token_id || created || last_seen from console_session",
        )
        .fetch_one(&store.read)
        .await
        .unwrap();
        assert!(
            !row_text.contains(&secret[4..]),
            "only the digest is stored"
        );

        let session = store.session(&secret).await.unwrap().unwrap();
        assert_eq!(session.token, admin);
        assert_eq!(session.created, new.created);
        assert_eq!(
            session.last_seen, new.created,
            "not touched within a minute"
        );
        assert!(!format!("{session:?}").contains(&secret));

        assert_eq!(store.session("bks_nope").await.unwrap(), None);
        assert_eq!(store.session("").await.unwrap(), None);
        let token_secret = "blk_not-a-session";
        assert_eq!(store.session(token_secret).await.unwrap(), None);
        // Another replica reads the same database, with nothing cached.
        let other = db.open().await;
        assert_eq!(other.session(&secret).await.unwrap(), Some(session));
    })
    .await;
}

#[tokio::test]
async fn a_session_ends_after_thirty_idle_minutes_and_each_lookup_extends_it() {
    on_both(async |db| {
        let store = db.open().await;
        let admin = token(&store, Scope::Admin, None).await;

        let (idle, t0) = sign_in(&store, &admin).await;
        assert!(
            store
                .session_at(&idle, t0 + minutes(29))
                .await
                .unwrap()
                .is_some()
        );
        let (idle2, t0) = sign_in(&store, &admin).await;
        assert_eq!(
            store.session_at(&idle2, t0 + minutes(31)).await.unwrap(),
            None
        );
        assert!(
            !stored_digests(&store).await.contains(&token_digest(&idle2)),
            "an expired session found by a lookup is deleted"
        );

        let (busy, t0) = sign_in(&store, &admin).await;
        let seen = store
            .session_at(&busy, t0 + minutes(20))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            seen.last_seen,
            t0 + minutes(20),
            "touched: older than a minute"
        );
        let again = store
            .session_at(&busy, t0 + minutes(20) + Duration::seconds(30))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            again.last_seen,
            t0 + minutes(20),
            "not touched within a minute"
        );
        assert!(
            store
                .session_at(&busy, t0 + minutes(45))
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            store
                .session_at(&busy, t0 + minutes(45 + 31))
                .await
                .unwrap(),
            None
        );
    })
    .await;
}

#[tokio::test]
async fn a_session_ends_twelve_hours_after_sign_in_however_busy() {
    on_both(async |db| {
        let store = db.open().await;
        let admin = token(&store, Scope::Admin, None).await;
        let (secret, t0) = sign_in(&store, &admin).await;
        for step in 1..=36 {
            let at = t0 + minutes(20 * step);
            let session = store.session_at(&secret, at).await.unwrap();
            assert!(session.is_some(), "valid {step} steps in");
        }
        // Last seen at +12 h; a second more is past the absolute limit.
        assert_eq!(
            store
                .session_at(&secret, t0 + Duration::hours(12) + Duration::seconds(1))
                .await
                .unwrap(),
            None
        );
    })
    .await;
}

#[tokio::test]
async fn a_revoked_or_expired_token_ends_its_sessions() {
    on_both(async |db| {
        let store = db.open().await;
        // Revoking the last admin token is refused; this one keeps that from mattering.
        let _keeper = token(&store, Scope::Admin, None).await;
        let admin = token(&store, Scope::Admin, None).await;
        let (secret, _) = sign_in(&store, &admin).await;
        let other = db.open().await;
        assert!(other.session(&secret).await.unwrap().is_some());
        store.revoke_token(admin.id).await.unwrap();
        assert_eq!(
            other.session(&secret).await.unwrap(),
            None,
            "the revocation on one replica ends the session on another"
        );
        assert!(matches!(
            store.create_session(admin.id).await,
            Err(StoreError::NotFound(_))
        ));

        let now = Utc::now();
        let brief = token(&store, Scope::Read, Some(now + minutes(10))).await;
        let (secret, t0) = sign_in(&store, &brief).await;
        assert!(
            store
                .session_at(&secret, t0 + minutes(5))
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            store.session_at(&secret, now + minutes(11)).await.unwrap(),
            None
        );
    })
    .await;
}

#[tokio::test]
async fn signing_out_ends_a_session_and_ending_a_tokens_sessions_ends_them_all() {
    on_both(async |db| {
        let store = db.open().await;
        let admin = token(&store, Scope::Admin, None).await;
        let reader = token(&store, Scope::Read, None).await;
        let (a, _) = sign_in(&store, &admin).await;
        let (b, _) = sign_in(&store, &admin).await;
        let (c, _) = sign_in(&store, &reader).await;

        store.end_session(&a).await.unwrap();
        assert_eq!(store.session(&a).await.unwrap(), None);
        store.end_session(&a).await.unwrap();
        store.end_session("bks_unknown").await.unwrap();
        assert!(store.session(&b).await.unwrap().is_some());

        assert_eq!(store.end_sessions_of_token(admin.id).await.unwrap(), 1);
        assert_eq!(store.session(&b).await.unwrap(), None);
        assert_eq!(store.session(&c).await.unwrap().unwrap().token, reader);
        assert_eq!(
            store.end_sessions_of_token(Uuid::new_v4()).await.unwrap(),
            0
        );
    })
    .await;
}

#[tokio::test]
async fn a_session_needs_an_existing_token() {
    on_both(async |db| {
        let store = db.open().await;
        assert!(matches!(
            store.create_session(Uuid::new_v4()).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(stored_digests(&store).await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn creating_a_session_prunes_expired_ones() {
    on_both(async |db| {
        let store = db.open().await;
        let admin = token(&store, Scope::Admin, None).await;
        let (idle, _) = sign_in(&store, &admin).await;
        let (old, _) = sign_in(&store, &admin).await;
        let (live, _) = sign_in(&store, &admin).await;
        move_back(&store, "last_seen", minutes(31), &idle).await;
        // Seen just now, but signed in more than twelve hours ago.
        move_back(&store, "created", Duration::hours(13), &old).await;

        let (new, _) = sign_in(&store, &admin).await;
        let mut kept = vec![token_digest(&live), token_digest(&new)];
        kept.sort();
        assert_eq!(stored_digests(&store).await, kept);
    })
    .await;
}

#[tokio::test]
async fn a_token_keeps_at_most_its_newest_sessions() {
    on_both(async |db| {
        let store = db.open().await;
        let token_id = token(&store, Scope::Read, None).await.id;
        let mut secrets = Vec::new();
        for _ in 0..crate::store::sessions::MAX_SESSIONS_PER_TOKEN + 5 {
            secrets.push(store.create_session(token_id).await.unwrap().secret);
            // Distinct creation times, so "newest" is well defined.
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let live = {
            let mut n = 0;
            for s in &secrets {
                if store.session(s.expose_secret()).await.unwrap().is_some() {
                    n += 1;
                }
            }
            n
        };
        assert_eq!(live, crate::store::sessions::MAX_SESSIONS_PER_TOKEN);
        assert!(
            store
                .session(secrets[0].expose_secret())
                .await
                .unwrap()
                .is_none(),
            "the oldest ended"
        );
        assert!(
            store
                .session(secrets.last().unwrap().expose_secret())
                .await
                .unwrap()
                .is_some()
        );
    })
    .await;
}
