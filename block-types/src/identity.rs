//! Workload identity on the wire: the issuers whose JWTs a server trusts and the roles that
//! turn a verified JWT into a short-lived token, as the admin API takes and shows them, and
//! the claim match a role makes. Verification (signatures, keys) is the server's.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::access::{Grant, Scope, Ttl, glob};

/// The body of `POST /api/auth/issuers`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerCreate {
    /// The `iss` its tokens carry (`https://kubernetes.default.svc`,
    /// `https://token.actions.githubusercontent.com`).
    pub issuer: String,
    /// The `aud` its tokens must carry for this server.
    pub audience: String,
    /// Where its public keys are published (fetched by the server, never from a URL a
    /// caller supplies in a request).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Or the keys themselves, a JWKS document (for air-gapped setups: `--jwks-file`).
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
}

/// A trusted issuer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Issuer {
    /// Its id.
    pub id: Uuid,
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// The `aud` they must carry.
    pub audience: String,
    /// Where its keys are fetched from, if so.
    pub jwks_url: Option<String>,
    /// Its keys, if kept here.
    pub jwks: Option<serde_json::Value>,
    /// When it was added.
    pub created: DateTime<Utc>,
}

/// The body of `PUT /api/auth/roles/{name}`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// The issuer (its `iss`) whose tokens may sign in to this role.
    pub issuer: String,
    /// Claims the token must match: name → value, `*` matching any run of characters
    /// (`sub` → `system:serviceaccount:etl:loader`). At least one.
    pub claims: BTreeMap<String, String>,
    /// The scopes of the token issued (not admin).
    pub scopes: BTreeSet<Scope>,
    /// Its grants (none: every block).
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// Its lifetime (default 1 h, at most 24 h).
    #[serde(default)]
    pub ttl: Option<Ttl>,
}

/// A role.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Role {
    /// Its name, what a workload asks for.
    pub name: String,
    /// The issuer's `iss`.
    pub issuer: String,
    /// The claims a token must match.
    pub claims: BTreeMap<String, String>,
    /// The scopes of the tokens it issues.
    pub scopes: BTreeSet<Scope>,
    /// Their grants.
    pub grants: Vec<Grant>,
    /// Their lifetime, in seconds.
    pub ttl: u64,
    /// When it was last set.
    pub created: DateTime<Utc>,
}

impl Role {
    /// Whether a JWT's (verified) claims match: every claim the role names is present and
    /// matches its pattern (a string; a number or boolean as its JSON text; a list when
    /// any element does).
    pub fn matches(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), String> {
        for (name, pattern) in &self.claims {
            let matched = match claims.get(name) {
                Some(serde_json::Value::Array(items)) => {
                    items.iter().any(|v| claim_matches(pattern, v))
                }
                Some(value) => claim_matches(pattern, value),
                None => false,
            };
            if !matched {
                return Err(format!("the token's {name} claim does not match the role"));
            }
        }
        Ok(())
    }
}

fn claim_matches(pattern: &str, value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => glob(pattern, s),
        serde_json::Value::Number(_) | serde_json::Value::Bool(_) => {
            glob(pattern, &value.to_string())
        }
        _ => false,
    }
}
