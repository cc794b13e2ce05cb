//! Console sessions: a browser signs in once with an API token and then presents a random
//! session secret (its cookie), of which only the SHA-256 digest is stored.
//!
//! A session acts as its token: every lookup reads the database (no cache, so every
//! replica sees a sign-out at once) and joins the token, so a revoked or expired token ends
//! its sessions everywhere without anyone deleting them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret as _, SecretString};
use sqlx::Row as _;
use sqlx::any::AnyRow;
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

use super::tokens::{new_secret, token_from_row};
use super::{Result, Store, StoreError, TokenInfo, to_time, token_digest};

/// A session ends after this long without a lookup.
pub const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after it was created, however busy.
pub const SESSION_MAX_AGE: Duration = Duration::from_secs(12 * 60 * 60);

/// Every session secret starts with this, so a leaked cookie is recognisable and never
/// mistaken for an API token.
const SESSION_PREFIX: &str = "bks_";
/// A lookup moves `last_seen` only when it is older than this, so a busy console does not
/// write on every request.
const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// Expired sessions deleted at most by one `create_session`.
const PRUNE_BATCH: i64 = 100;
/// Live sessions one token may hold; signing in beyond that ends its oldest.
pub(crate) const MAX_SESSIONS_PER_TOKEN: i64 = 20;

/// A new session: the secret for the browser's cookie, never shown again.
#[derive(Debug)]
pub struct NewSession {
    /// `bks_…`: 256 random bits, URL-safe base64 (redacted in `Debug`).
    pub secret: SecretString,
    /// When it was created.
    pub created: DateTime<Utc>,
}

/// A valid session and the token it acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The token the browser signed in with (valid: not revoked, not expired).
    pub token: TokenInfo,
    /// When the session was created.
    pub created: DateTime<Utc>,
    /// When it was last seen (this lookup, if it moved it).
    pub last_seen: DateTime<Utc>,
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The session and its token, as `session_at` selects them.
const LOOKUP: &str = "select s.secret_hash, s.created as session_created, s.last_seen, \
     t.id, t.name, t.scopes, t.created, t.expires, t.last_used, t.revoked, t.grants, \
     t.parent_id from console_session s join api_token t on t.id = s.token_id \
     where s.secret_hash = $1";

fn session_from_row(row: &AnyRow) -> Result<Session> {
    Ok(Session {
        token: token_from_row(row)?,
        created: to_time(row.try_get("session_created")?),
        last_seen: to_time(row.try_get("last_seen")?),
    })
}

impl Store {
    /// Signs a browser in as the token `token_id`: a new session, whose secret is returned
    /// once. Refused (`NotFound`) unless the token exists, unrevoked and unexpired. Prunes a
    /// batch of sessions past their limits on the way.
    /// A token holds at most [`MAX_SESSIONS_PER_TOKEN`] sessions; a new one ends the
    /// oldest beyond that.
    pub async fn create_session(&self, token_id: Uuid) -> Result<NewSession> {
        let now = Utc::now().timestamp_micros();
        self.count_query();
        sqlx::query(
            "delete from console_session where secret_hash in (select secret_hash \
             from console_session where last_seen < $1 or created < $2 limit $3)",
        )
        .bind(now - micros(SESSION_IDLE))
        .bind(now - micros(SESSION_MAX_AGE))
        .bind(PRUNE_BATCH)
        .execute(&self.write)
        .await?;
        let secret = new_secret(SESSION_PREFIX)?;
        self.count_query();
        let inserted = sqlx::query(
            "insert into console_session (secret_hash, token_id, created, last_seen) \
             select $1, id, $2, $2 from api_token \
             where id = $3 and revoked is null and (expires is null or expires > $2)",
        )
        .bind(token_digest(secret.expose_secret()))
        .bind(now)
        .bind(token_id.to_string())
        .execute(&self.write)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::NotFound("Token not found".to_owned()));
        }
        // A token keeps at most its newest sessions: signing in again and again cannot
        // fill the table.
        self.count_query();
        sqlx::query(
            "delete from console_session where token_id = $1 and secret_hash not in \
             (select secret_hash from console_session where token_id = $1 order by created desc, secret_hash limit $2)",
        )
        .bind(token_id.to_string())
        .bind(MAX_SESSIONS_PER_TOKEN)
        .execute(&self.write)
        .await?;
        Ok(NewSession {
            secret,
            created: to_time(now),
        })
    }

    /// The session a browser presents, if it is valid now (see [`Store::session_at`]).
    pub async fn session(&self, secret: &str) -> Result<Option<Session>> {
        self.session_at(secret, Utc::now()).await
    }

    /// The session a browser presents, if it is valid at `now`: known, seen within
    /// [`SESSION_IDLE`], younger than [`SESSION_MAX_AGE`], and its token neither revoked nor
    /// expired. A valid session's `last_seen` moves to `now` when it is more than a minute
    /// old; an invalid one is deleted. The stored digest is compared in constant time.
    pub async fn session_at(&self, secret: &str, now: DateTime<Utc>) -> Result<Option<Session>> {
        let digest = token_digest(secret);
        self.count_query();
        let Some(row) = sqlx::query(LOOKUP)
            .bind(&digest)
            .fetch_optional(&self.read)
            .await?
        else {
            return Ok(None);
        };
        let stored: String = row.try_get("secret_hash")?;
        if !bool::from(stored.as_bytes().ct_eq(digest.as_bytes())) {
            return Ok(None);
        }
        let mut session = session_from_row(&row)?;
        let now_us = now.timestamp_micros();
        let idle = now_us - session.last_seen.timestamp_micros();
        let age = now_us - session.created.timestamp_micros();
        let valid = idle <= micros(SESSION_IDLE)
            && age <= micros(SESSION_MAX_AGE)
            && session.token.revoked.is_none()
            && session.token.expires.is_none_or(|e| e > now);
        if !valid {
            self.count_query();
            sqlx::query("delete from console_session where secret_hash = $1")
                .bind(&digest)
                .execute(&self.write)
                .await?;
            return Ok(None);
        }
        if idle > micros(TOUCH_EVERY) {
            self.count_query();
            sqlx::query(
                "update console_session set last_seen = $1 \
                 where secret_hash = $2 and last_seen < $1",
            )
            .bind(now_us)
            .bind(&digest)
            .execute(&self.write)
            .await?;
            session.last_seen = to_time(now_us);
        }
        Ok(Some(session))
    }

    /// Signs a browser out: its session ends. Harmless when the session is unknown.
    pub async fn end_session(&self, secret: &str) -> Result<()> {
        self.count_query();
        sqlx::query("delete from console_session where secret_hash = $1")
            .bind(token_digest(secret))
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Ends every session of a token; returns how many there were. Lookups already refuse
    /// a revoked token's sessions, so this only tidies up.
    pub async fn end_sessions_of_token(&self, token_id: Uuid) -> Result<u64> {
        self.count_query();
        Ok(
            sqlx::query("delete from console_session where token_id = $1")
                .bind(token_id.to_string())
                .execute(&self.write)
                .await?
                .rows_affected(),
        )
    }
}
