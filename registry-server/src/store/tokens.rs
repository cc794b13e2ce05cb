//! API tokens: creation (the secret shown once), lookup by SHA-256 digest, revocation and
//! the first admin token of a new database.

use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};
use sqlx::Row;
use sqlx::any::AnyRow;
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

use super::{Result, Store, StoreError, json_col, now_micros, to_json, to_time, uuid_col};

/// Every token starts with this, so a leaked one is recognisable (and scannable).
pub const TOKEN_PREFIX: &str = "blk_";

/// The `server_metadata` row that records which token was the database's first.
const FIRST_TOKEN: &str = "first_token";

/// What a token may do. `admin` implies every scope; `write` and `read-secrets` each imply
/// `read`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Read types, schemas and documents with secrets masked.
    Read,
    /// Read documents with their secrets (`include_secrets=true`).
    ReadSecrets,
    /// Create, update and delete types, schemas and documents.
    Write,
    /// Tokens, the audit log, keys and settings.
    Admin,
}

impl Scope {
    /// Every scope, weakest first.
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::ReadSecrets, Scope::Write, Scope::Admin];

    /// The scope's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::ReadSecrets => "read-secrets",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    /// Whether holding `self` grants `needed`.
    pub fn grants(self, needed: Scope) -> bool {
        self == needed
            || self == Scope::Admin
            || (needed == Scope::Read && matches!(self, Scope::Write | Scope::ReadSecrets))
    }
}

/// A token as listed: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    /// The token's id (what the audit log records).
    pub id: Uuid,
    /// A name saying what the token is for.
    pub name: String,
    /// What it may do.
    pub scopes: BTreeSet<Scope>,
    /// When it was created.
    pub created: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires: Option<DateTime<Utc>>,
    /// When it was last used (updated at most once a minute).
    pub last_used: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked: Option<DateTime<Utc>>,
}

impl TokenInfo {
    /// Whether the token grants `needed`.
    pub fn grants(&self, needed: Scope) -> bool {
        self.scopes.iter().any(|s| s.grants(needed))
    }
}

/// The body of `POST /api/tokens`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    /// A name saying what the token is for (1–100 characters).
    pub name: String,
    /// At least one scope.
    pub scopes: BTreeSet<Scope>,
    /// When it stops working; must be in the future.
    #[serde(default)]
    pub expires: Option<DateTime<Utc>>,
}

/// A new token: its listing and the secret, which is never shown again.
#[derive(Debug)]
pub struct CreatedToken {
    /// The stored part.
    pub info: TokenInfo,
    /// `blk_…`: 256 random bits, URL-safe base64.
    pub token: SecretString,
}

/// Why a presented token does not authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRejection {
    /// No such token.
    Unknown,
    /// The token (this id) has expired.
    Expired(Uuid),
    /// The token (this id) was revoked.
    Revoked(Uuid),
}

/// The SHA-256 digest of a token, hex.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn new_secret() -> Result<SecretString> {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(bytes.as_mut())
        .map_err(|e| StoreError::Config(format!("no randomness for a token: {e}")))?;
    Ok(SecretString::from(format!(
        "{TOKEN_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(bytes.as_ref())
    )))
}

const COLUMNS: &str = "id, name, scopes, created, expires, last_used, revoked";

fn token_from_row(row: &AnyRow) -> Result<TokenInfo> {
    let time = |col: &str| -> Result<Option<DateTime<Utc>>> {
        Ok(row.try_get::<Option<i64>, _>(col)?.map(to_time))
    };
    Ok(TokenInfo {
        id: uuid_col(row, "id")?,
        name: row.try_get("name")?,
        scopes: json_col(row, "scopes")?,
        created: to_time(row.try_get("created")?),
        expires: time("expires")?,
        last_used: time("last_used")?,
        revoked: time("revoked")?,
    })
}

impl Store {
    /// Creates a token. The secret is returned once; only its digest is stored.
    pub async fn create_token(&self, body: TokenCreate) -> Result<CreatedToken> {
        let mut errors = Vec::new();
        let name = body.name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            errors.push(block_types::FieldError::new(
                "name",
                "must be 1 to 100 characters",
            ));
        }
        if body.scopes.is_empty() {
            errors.push(block_types::FieldError::new(
                "scopes",
                "must name at least one of read, read-secrets, write, admin",
            ));
        }
        if body.expires.is_some_and(|e| e <= Utc::now()) {
            errors.push(block_types::FieldError::new(
                "expires",
                "must be in the future",
            ));
        }
        if !errors.is_empty() {
            return Err(StoreError::Invalid(errors));
        }
        let mut tx = self.write.begin().await?;
        let created = self
            .insert_token(&mut tx, name, &body.scopes, body.expires)
            .await?;
        tx.commit().await?;
        Ok(created)
    }

    async fn insert_token(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        name: &str,
        scopes: &BTreeSet<Scope>,
        expires: Option<DateTime<Utc>>,
    ) -> Result<CreatedToken> {
        let token = new_secret()?;
        let info = TokenInfo {
            id: Uuid::new_v4(),
            name: name.to_owned(),
            scopes: scopes.clone(),
            created: to_time(now_micros()),
            expires,
            last_used: None,
            revoked: None,
        };
        self.count_query();
        sqlx::query(
            "insert into api_token (id, name, token_hash, scopes, created, expires) \
             values ($1, $2, $3, $4, $5, $6)",
        )
        .bind(info.id.to_string())
        .bind(&info.name)
        .bind(token_digest(token.expose_secret()))
        .bind(to_json(&info.scopes))
        .bind(info.created.timestamp_micros())
        .bind(expires.map(|e| e.timestamp_micros()))
        .execute(&mut **tx)
        .await?;
        Ok(CreatedToken { info, token })
    }

    /// On a database that never had a first token, creates one admin token and returns it;
    /// otherwise `None`. Replicas starting together race on one metadata row, so exactly
    /// one of them creates it.
    pub async fn bootstrap_admin_token(&self) -> Result<Option<CreatedToken>> {
        let mut tx = self.write.begin().await?;
        let id = Uuid::new_v4();
        self.count_query();
        let claimed = sqlx::query(
            "insert into server_metadata (key, value) values ($1, $2) on conflict do nothing",
        )
        .bind(FIRST_TOKEN)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed == 0 {
            return Ok(None);
        }
        let created = self
            .insert_token(&mut tx, "first admin token", &BTreeSet::from([Scope::Admin]), None)
            .await?;
        self.count_query();
        sqlx::query("update server_metadata set value = $1 where key = $2")
            .bind(created.info.id.to_string())
            .bind(FIRST_TOKEN)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(created))
    }

    /// Every token, newest first (revoked ones included, marked).
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>> {
        self.count_query();
        let rows = sqlx::query(&format!(
            "select {COLUMNS} from api_token order by created desc, id"
        ))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Revokes a token; it fails from the next request on. Revoking twice is harmless.
    pub async fn revoke_token(&self, id: Uuid) -> Result<TokenInfo> {
        let mut tx = self.write.begin().await?;
        self.count_query();
        sqlx::query("update api_token set revoked = $1 where id = $2 and revoked is null")
            .bind(now_micros())
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        self.count_query();
        let row = sqlx::query(&format!("select {COLUMNS} from api_token where id = $1"))
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound("Token not found".to_owned()))?;
        tx.commit().await?;
        token_from_row(&row)
    }

    /// The token a caller presents, if it is known, unexpired and not revoked. The lookup
    /// is by SHA-256 digest, and the stored digest is compared in constant time.
    pub async fn authenticate(
        &self,
        token: &str,
    ) -> Result<std::result::Result<TokenInfo, TokenRejection>> {
        let digest = token_digest(token);
        self.count_query();
        let row = sqlx::query(&format!(
            "select {COLUMNS}, token_hash from api_token where token_hash = $1"
        ))
        .bind(&digest)
        .fetch_optional(&self.read)
        .await?;
        let Some(row) = row else {
            return Ok(Err(TokenRejection::Unknown));
        };
        let stored: String = row.try_get("token_hash")?;
        if !bool::from(stored.as_bytes().ct_eq(digest.as_bytes())) {
            return Ok(Err(TokenRejection::Unknown));
        }
        let info = token_from_row(&row)?;
        if info.revoked.is_some() {
            return Ok(Err(TokenRejection::Revoked(info.id)));
        }
        if info.expires.is_some_and(|e| e <= Utc::now()) {
            return Ok(Err(TokenRejection::Expired(info.id)));
        }
        Ok(Ok(info))
    }

    /// Records that a token was used now.
    pub async fn touch_token(&self, id: Uuid) -> Result<()> {
        self.count_query();
        sqlx::query("update api_token set last_used = $1 where id = $2")
            .bind(now_micros())
            .bind(id.to_string())
            .execute(&self.write)
            .await?;
        Ok(())
    }
}
