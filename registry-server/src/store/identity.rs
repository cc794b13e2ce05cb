//! Workload identity: the issuers whose JWTs the server trusts and the roles that turn a
//! verified JWT into a short-lived token. Verification itself (signatures, keys) lives in
//! `http::identity`; the store keeps the configuration, shared by every replica.

use block_types::FieldError;
use sqlx::Row as _;
use sqlx::any::AnyRow;
use uuid::Uuid;

use block_types::identity::{Issuer, IssuerCreate, Role, RoleConfig};

use super::{Result, Scope, Store, StoreError, json_col, now_micros, to_json, to_time, uuid_col};

/// The longest lifetime a role may give its tokens.
pub const MAX_ROLE_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// The lifetime of a role's tokens unless it says otherwise.
const DEFAULT_ROLE_TTL: std::time::Duration = std::time::Duration::from_secs(3600);
/// The largest JWKS document kept in the store.
pub(crate) const MAX_JWKS_BYTES: usize = 64 * 1024;
/// Claims a role may match at most, and the longest pattern.
const MAX_CLAIMS: usize = 32;
const MAX_CLAIM_BYTES: usize = 1024;

/// The signing keys of a JWKS document the server can use: RSA, and EC on P-256, each
/// parsed on its own (one odd key does not hide the others), without private parts, not
/// marked for encryption.
pub fn public_keys(document: &serde_json::Value) -> jsonwebtoken::jwk::JwkSet {
    let keys = document
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter(|k| k.get("use").is_none_or(|u| u == "sig"))
        .filter(|k| match k.get("kty").and_then(serde_json::Value::as_str) {
            Some("RSA") => true,
            Some("EC") => k.get("crv").and_then(serde_json::Value::as_str) == Some("P-256"),
            _ => false,
        })
        .filter_map(|k| {
            let mut public = k.clone();
            if let Some(map) = public.as_object_mut() {
                for private in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
                    map.remove(private);
                }
            }
            serde_json::from_value::<jsonwebtoken::jwk::Jwk>(public).ok()
        })
        .collect();
    jsonwebtoken::jwk::JwkSet { keys }
}

/// An `https` URL (or `http` on a loopback host), at most 2,048 bytes.
fn check_url(field: &str, url: &str, errors: &mut Vec<FieldError>) {
    match url::Url::parse(url) {
        Ok(u)
            if url.len() <= 2048
                && (u.scheme() == "https"
                    || (u.scheme() == "http"
                        && matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]")))) => {}
        _ => errors.push(FieldError::new(
            field,
            "must be an https:// URL (http:// only on a loopback address) of at most 2048 bytes",
        )),
    }
}

fn issuer_from_row(row: &AnyRow) -> Result<Issuer> {
    let jwks: Option<String> = row.try_get("jwks")?;
    Ok(Issuer {
        id: uuid_col(row, "id")?,
        issuer: row.try_get("issuer")?,
        audience: row.try_get("audience")?,
        jwks_url: row.try_get("jwks_url")?,
        jwks: jwks
            .map(|j| serde_json::from_str(&j))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("an issuer's JWKS is not JSON: {e}")))?,
        created: to_time(row.try_get("created")?),
    })
}

fn role_from_row(row: &AnyRow) -> Result<Role> {
    Ok(Role {
        name: row.try_get("name")?,
        issuer: row.try_get("issuer")?,
        claims: json_col(row, "claims")?,
        scopes: json_col(row, "scopes")?,
        grants: json_col(row, "grants")?,
        ttl: u64::try_from(row.try_get::<i64, _>("ttl")?).unwrap_or_default(),
        created: to_time(row.try_get("created")?),
    })
}

const ROLE_COLUMNS: &str = "r.name, i.issuer, r.claims, r.scopes, r.grants, r.ttl, r.created";

impl Store {
    /// Trusts an issuer. Its keys come from `jwks_url` or `jwks` (one of them).
    pub async fn create_issuer(&self, body: IssuerCreate) -> Result<Issuer> {
        let mut errors = Vec::new();
        check_url("issuer", &body.issuer, &mut errors);
        if body.audience.trim().is_empty() || body.audience.len() > 255 {
            errors.push(FieldError::new("audience", "must be 1 to 255 bytes"));
        }
        match (&body.jwks_url, &body.jwks) {
            (Some(url), None) => check_url("jwks_url", url, &mut errors),
            (None, Some(jwks)) => {
                if public_keys(jwks).keys.is_empty() {
                    errors.push(FieldError::new(
                        "jwks",
                        "must be a JWKS document ({\"keys\": [...]}) with at least one RSA or P-256 signing key",
                    ));
                } else if jwks.to_string().len() > MAX_JWKS_BYTES {
                    errors.push(FieldError::new(
                        "jwks",
                        format!("must be at most {} KiB", MAX_JWKS_BYTES >> 10),
                    ));
                }
            }
            _ => errors.push(FieldError::new(
                "jwks_url",
                "give the issuer's keys as jwks_url or jwks (one of them)",
            )),
        }
        if !errors.is_empty() {
            return Err(StoreError::Invalid(errors));
        }
        let issuer = Issuer {
            id: Uuid::new_v4(),
            issuer: body.issuer,
            audience: body.audience,
            jwks_url: body.jwks_url,
            // Only the public signing keys are kept (and shown): never a private part or
            // a shared secret someone pasted by mistake.
            jwks: body
                .jwks
                .map(|j| serde_json::to_value(public_keys(&j)).unwrap_or_default()),
            created: to_time(now_micros()),
        };
        self.count_query();
        let inserted = sqlx::query(
            "insert into identity_issuer (id, issuer, audience, jwks_url, jwks, created) \
             values ($1, $2, $3, $4, $5, $6)",
        )
        .bind(issuer.id.to_string())
        .bind(&issuer.issuer)
        .bind(&issuer.audience)
        .bind(issuer.jwks_url.clone())
        .bind(issuer.jwks.as_ref().map(ToString::to_string))
        .bind(issuer.created.timestamp_micros())
        .execute(&self.write)
        .await;
        match inserted {
            Ok(_) => Ok(issuer),
            Err(e) if StoreError::is_unique_violation(&e) => Err(StoreError::AlreadyExists(
                "an issuer with this iss is already trusted; delete it first to change it".into(),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Every trusted issuer.
    pub async fn list_issuers(&self) -> Result<Vec<Issuer>> {
        self.count_query();
        sqlx::query("select * from identity_issuer order by issuer")
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(issuer_from_row)
            .collect()
    }

    /// The trusted issuer with this `iss`, if any.
    pub async fn issuer(&self, iss: &str) -> Result<Option<Issuer>> {
        self.count_query();
        sqlx::query("select * from identity_issuer where issuer = $1")
            .bind(iss)
            .fetch_optional(&self.read)
            .await?
            .as_ref()
            .map(issuer_from_row)
            .transpose()
    }

    /// Stops trusting an issuer; refused (409) while roles use it.
    pub async fn delete_issuer(&self, id: Uuid) -> Result<()> {
        let mut tx = self.write.begin().await?;
        self.count_query();
        let users: Vec<String> =
            sqlx::query_scalar("select name from identity_role where issuer_id = $1 order by name")
                .bind(id.to_string())
                .fetch_all(&mut *tx)
                .await?;
        if !users.is_empty() {
            return Err(StoreError::InUse {
                message: "roles still sign in through this issuer".into(),
                referrers: users,
            });
        }
        self.count_query();
        let deleted = sqlx::query("delete from identity_issuer where id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound("Issuer not found".into()));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Creates or replaces the role `name`.
    pub async fn put_role(&self, name: &str, body: RoleConfig) -> Result<Role> {
        let mut errors = Vec::new();
        if let Err(mut e) = block_types::validate::block_document_name(name) {
            e.field = "name".into();
            e.message =
                "a role name must be lowercase letters, digits and dashes (1 to 255 bytes)".into();
            errors.push(e);
        }
        if body.claims.is_empty() {
            errors.push(FieldError::new(
                "claims",
                "must name at least one claim to match (for example sub), or every workload of the issuer could sign in",
            ));
        }
        if body.claims.len() > MAX_CLAIMS
            || body.claims.iter().any(|(k, v)| {
                k.is_empty() || k.len() > 255 || v.is_empty() || v.len() > MAX_CLAIM_BYTES
            })
        {
            errors.push(FieldError::new(
                "claims",
                format!("at most {MAX_CLAIMS} claims, names of 1 to 255 bytes, values of 1 to {MAX_CLAIM_BYTES}"),
            ));
        }
        if body.claims.values().any(|v| v.bytes().all(|b| b == b'*')) {
            errors.push(FieldError::new(
                "claims",
                "a value of only * matches any token of the issuer: name what the token must carry",
            ));
        }
        if body.scopes.is_empty() {
            errors.push(FieldError::new(
                "scopes",
                "must name at least one of read, read-secrets, write",
            ));
        }
        if body.scopes.contains(&Scope::Admin) {
            errors.push(FieldError::new(
                "scopes",
                "a workload identity cannot sign in as admin: give the role read, read-secrets or write",
            ));
        }
        errors.extend(block_types::access::check_grants(
            &body.scopes,
            &body.grants,
        ));
        let ttl = body.ttl.map_or(DEFAULT_ROLE_TTL, |t| t.0);
        if ttl < std::time::Duration::from_secs(1) || ttl > MAX_ROLE_TTL {
            errors.push(FieldError::new(
                "ttl",
                format!("must be 1 s to {} s", MAX_ROLE_TTL.as_secs()),
            ));
        }
        if !errors.is_empty() {
            return Err(StoreError::Invalid(errors));
        }
        let Some(issuer) = self.issuer(&body.issuer).await? else {
            return Err(StoreError::invalid(
                "issuer",
                "is not a trusted issuer: add it first (POST /api/auth/issuers)",
            ));
        };
        let mut tx = self.write.begin().await?;
        self.count_query();
        sqlx::query("delete from identity_role where name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        self.count_query();
        sqlx::query(
            "insert into identity_role (name, issuer_id, claims, scopes, grants, ttl, created) \
             values ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(name)
        .bind(issuer.id.to_string())
        .bind(to_json(&body.claims))
        .bind(to_json(&body.scopes))
        .bind(to_json(&body.grants))
        .bind(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX))
        .bind(now_micros())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.role(name)
            .await?
            .ok_or_else(|| StoreError::NotFound("Role not found".into()))
    }

    /// The role `name`, if any.
    pub async fn role(&self, name: &str) -> Result<Option<Role>> {
        self.count_query();
        sqlx::query(&format!(
            "select {ROLE_COLUMNS} from identity_role r join identity_issuer i on i.id = r.issuer_id where r.name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.read)
        .await?
        .as_ref()
        .map(role_from_row)
        .transpose()
    }

    /// Every role.
    pub async fn list_roles(&self) -> Result<Vec<Role>> {
        self.count_query();
        sqlx::query(&format!(
            "select {ROLE_COLUMNS} from identity_role r join identity_issuer i on i.id = r.issuer_id order by r.name"
        ))
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(role_from_row)
        .collect()
    }

    /// Deletes a role (tokens it issued run until they expire).
    pub async fn delete_role(&self, name: &str) -> Result<()> {
        self.count_query();
        let deleted = sqlx::query("delete from identity_role where name = $1")
            .bind(name)
            .execute(&self.write)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound("Role not found".into()));
        }
        Ok(())
    }
}
