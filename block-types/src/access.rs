//! Who may do what, as the API and its clients see it: scopes, grants of scopes on
//! selected blocks, tokens as listed, and the admin views of keys and the audit log.
//! Shared by the server, which enforces them, and the client, which reads them.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::FieldError;

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

/// The most grants one token may carry.
pub const MAX_GRANTS: usize = 100;

/// Block documents by type slug and name, each part a `*` glob.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    slug: String,
    name: String,
}

/// What a selector must look like, for error messages.
const SELECTOR_SHAPE: &str = "a selector is `type-slug/name` (for example `gcs-bucket/zoom-*`): two globs of lowercase letters, digits, dashes and `*`";

impl Selector {
    /// Parses `slug/name`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (slug, name) = text.split_once('/').ok_or(SELECTOR_SHAPE)?;
        let part = |p: &str| {
            !p.is_empty()
                && p.len() <= crate::validate::MAX_NAME_BYTES
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'*')
        };
        if !part(slug) || !part(name) {
            return Err(SELECTOR_SHAPE.to_owned());
        }
        Ok(Self {
            slug: slug.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The type-slug glob.
    pub fn slug(&self) -> &str {
        &self.slug
    }

    /// The name glob.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the document `slug/name` is selected.
    pub fn matches(&self, slug: &str, name: &str) -> bool {
        glob(&self.slug, slug) && glob(&self.name, name)
    }

    /// Whether every document `other` selects is selected by `self` too. Sound, not
    /// complete: `other`'s globs are matched as text, where a `*` of `other` can only
    /// fall inside a `*` of `self` (which then also takes whatever `other`'s stands for).
    pub fn covers(&self, other: &Selector) -> bool {
        glob(&self.slug, &other.slug) && glob(&self.name, &other.name)
    }

    /// Whether it selects every document of the type `slug` (what registering the type's
    /// schemas needs).
    pub fn covers_type(&self, slug: &str) -> bool {
        glob(&self.slug, slug) && self.name.bytes().all(|b| b == b'*')
    }

    /// Whether it selects some documents of the type `slug` (what creating an anonymous
    /// document of the type needs: its name is made up by the server).
    pub fn matches_type(&self, slug: &str) -> bool {
        glob(&self.slug, slug)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.slug, self.name)
    }
}

impl serde::Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Selector::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// `*` globs over bytes: `*` matches any run (also none), everything else itself:
/// whether `text` matches the `*` glob `pattern`.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and where in `text` it began to match.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            // Let the last `*` take one more character and try again after it.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// One grant: `scope` on the documents `selector` names.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// `read`, `read-secrets` or `write` (each implying what the scope implies).
    pub scope: Scope,
    /// The documents it covers.
    pub selector: Selector,
}

impl Grant {
    /// Parses the CLI's `scope:type-slug/name`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (scope, selector) = text.split_once(':').ok_or(
            "a grant is `scope:type-slug/name`, for example `read-secrets:gcs-bucket/zoom-gcs`",
        )?;
        let scope = Scope::ALL
            .into_iter()
            .find(|s| s.as_str() == scope)
            .ok_or_else(|| format!("`{scope}` is not a scope: read, read-secrets or write"))?;
        Ok(Self {
            scope,
            selector: Selector::parse(selector)?,
        })
    }

    /// Whether it lets its holder do what `needed` allows to the document `slug/name`.
    pub fn allows(&self, needed: Scope, slug: &str, name: &str) -> bool {
        self.scope.grants(needed) && self.selector.matches(slug, name)
    }

    /// Whether it allows everything `other` allows.
    pub fn covers(&self, other: &Grant) -> bool {
        self.scope.grants(other.scope) && self.selector.covers(&other.selector)
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.scope.as_str(), self.selector)
    }
}

/// The problems with giving `grants` to a token holding `scopes`, by field: too many, an
/// admin token (never narrowed), `admin` granted per block, a scope the token lacks.
pub fn check_grants(scopes: &BTreeSet<Scope>, grants: &[Grant]) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if grants.len() > MAX_GRANTS {
        errors.push(FieldError::new(
            "grants",
            format!("may list at most {MAX_GRANTS} grants"),
        ));
    }
    if !grants.is_empty() && scopes.contains(&Scope::Admin) {
        errors.push(FieldError::new(
            "grants",
            "an admin token cannot be limited by grants (admin covers every block, token, key and setting); give a limited token read, read-secrets or write",
        ));
        return errors;
    }
    for (i, grant) in grants.iter().enumerate() {
        if grant.scope == Scope::Admin {
            errors.push(FieldError::new(
                format!("grants[{i}].scope"),
                "admin cannot be granted on blocks: grant read, read-secrets or write",
            ));
        } else if !scopes.iter().any(|s| s.grants(grant.scope)) {
            errors.push(FieldError::new(
                format!("grants[{i}].scope"),
                format!(
                    "the token's scopes do not include {}; add it to scopes or grant a scope the token holds",
                    grant.scope.as_str()
                ),
            ));
        }
    }
    errors
}

/// A token as listed: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// The blocks its scopes are limited to; none: every block.
    pub grants: Vec<Grant>,
    /// The token that minted it (`POST /api/tokens/child`), if any: revoking that one
    /// revokes this one too.
    pub parent_id: Option<Uuid>,
}

impl TokenInfo {
    /// Whether the token grants `needed` (on some block, when it is limited by grants).
    pub fn grants(&self, needed: Scope) -> bool {
        self.scopes.iter().any(|s| s.grants(needed))
    }

    /// Whether grants limit the token to some blocks.
    pub fn limited(&self) -> bool {
        !self.grants.is_empty()
    }

    /// Whether the token may do what `needed` allows to the document `slug/name`.
    pub fn may(&self, needed: Scope, slug: &str, name: &str) -> bool {
        self.grants(needed)
            && (self.grants.is_empty() || self.grants.iter().any(|g| g.allows(needed, slug, name)))
    }

    /// Whether the token may create an anonymous document of the type `slug` (a write
    /// grant selecting some documents of the type: the server makes up the name).
    pub fn may_create_anonymous(&self, slug: &str) -> bool {
        self.grants(Scope::Write)
            && (self.grants.is_empty()
                || self
                    .grants
                    .iter()
                    .any(|g| g.scope.grants(Scope::Write) && g.selector.matches_type(slug)))
    }

    /// Whether the token may register or change the type `slug` and its schemas: `write`,
    /// on every document of the type when limited (`gcs-bucket/*`).
    pub fn may_register(&self, slug: &str) -> bool {
        self.grants(Scope::Write)
            && (self.grants.is_empty()
                || self
                    .grants
                    .iter()
                    .any(|g| g.scope.grants(Scope::Write) && g.selector.covers_type(slug)))
    }
}

/// One data key, as `GET /api/keys` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyInfo {
    /// The key's id.
    pub id: Uuid,
    /// `active`, `retired` or `destroyed`.
    pub state: String,
    /// Values encrypted under it so far.
    pub encryptions: i64,
    /// Document versions whose secrets are sealed under it.
    pub versions: i64,
    /// Documents whose current version is sealed under it.
    pub documents: i64,
}

/// The store's keys.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyStatus {
    /// The key new writes use.
    pub active: Uuid,
    /// Every key, oldest first.
    pub keys: Vec<KeyInfo>,
    /// Whether the master key is derived from a passphrase.
    pub passphrase: bool,
}

/// One audit record. It names who (token id), what (action and target), the request id,
/// how it ended and when; it never holds a value from a document.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditRecord {
    /// Position in the log; later records have larger numbers.
    pub seq: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The request's `x-request-id` (or the events connection's id).
    pub request_id: String,
    /// The token that made the request, when one was recognised.
    pub token_id: Option<Uuid>,
    /// What was done: `POST /api/block_documents/`, `block.loaded`, …
    pub action: String,
    /// What it was done to: the request path (document ids in canonical form; a secret
    /// read adds the ids of the documents it showed), or the loaded block's resource id.
    pub target: String,
    /// `ok`, `denied`, `failed` (the request was refused as bad input or a conflict) or
    /// `error` (the server failed).
    pub outcome: String,
    /// The HTTP status answered (101 for events over the socket).
    pub status: u16,
}

/// The body of `POST /api/tokens`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    /// A name saying what the token is for (1–100 characters).
    pub name: String,
    /// At least one scope.
    pub scopes: BTreeSet<Scope>,
    /// When it stops working; must be in the future.
    #[serde(default)]
    pub expires: Option<DateTime<Utc>>,
    /// Or how long it works from now (`"1h"`, `"90d"`, or seconds), instead of `expires`.
    #[serde(default)]
    pub ttl: Option<Ttl>,
    /// The blocks its scopes are limited to (none: every block; never for admin).
    #[serde(default)]
    pub grants: Vec<Grant>,
}

/// The body of `POST /api/tokens/child`: a token for a subprocess, never wider or longer
/// lived than the caller's.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildTokenCreate {
    /// A name (default: "child of <the caller's name>").
    #[serde(default)]
    pub name: Option<String>,
    /// Scopes the caller holds (default: the caller's).
    #[serde(default)]
    pub scopes: Option<BTreeSet<Scope>>,
    /// Grants each covered by one of the caller's (default: the caller's).
    #[serde(default)]
    pub grants: Option<Vec<Grant>>,
    /// Its lifetime (default and at most: the caller's remaining one, and the server's
    /// maximum).
    #[serde(default)]
    pub ttl: Option<Ttl>,
}

/// A lifetime: seconds, or text such as `"90s"`, `"15m"`, `"1h"`, `"90d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl(pub std::time::Duration);

impl Ttl {
    /// Parses `"1h"`, `"90d"`, `"1h 30m"` or a number of seconds.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let text = text.trim();
        if let Ok(seconds) = text.parse::<u64>() {
            return Ok(Self(std::time::Duration::from_secs(seconds)));
        }
        humantime::parse_duration(text).map(Self).map_err(|_| {
            "a lifetime is a number of seconds or a duration such as 15m, 1h or 90d".to_owned()
        })
    }
}

impl<'de> serde::Deserialize<'de> for Ttl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Text(String),
        }
        match Raw::deserialize(d) {
            Ok(Raw::Seconds(s)) => Ok(Self(std::time::Duration::from_secs(s))),
            Ok(Raw::Text(t)) => Self::parse(&t).map_err(serde::de::Error::custom),
            Err(_) => Err(serde::de::Error::custom(
                "a lifetime is a number of seconds or a duration such as 15m, 1h or 90d",
            )),
        }
    }
}

impl serde::Serialize for Ttl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0.as_secs())
    }
}

/// The answer of `POST /api/keys/rotate`: the new active key; re-encryption goes on in the
/// background.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rotation {
    /// The key new writes use from now on.
    pub active: Uuid,
    /// `started`.
    pub reencryption: String,
}

/// One page of `GET /api/audit`, newest first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditPage {
    /// The records.
    pub records: Vec<AuditRecord>,
    /// The `before` of the next page, when there may be one.
    pub next_before: Option<i64>,
}

/// The settings every replica shares (`GET`/`PATCH /api/settings`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    /// Versions kept per document (`None`: all).
    pub retention: Option<u32>,
    /// Days audit records are kept (`None`: for ever).
    pub audit_retention_days: Option<u32>,
    /// Hours change-feed events are kept (`None`: for ever).
    pub event_retention_hours: Option<u32>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("zoom-*", "zoom-gcs"));
        assert!(glob("zoom-*", "zoom-"));
        assert!(!glob("zoom-*", "zoom"));
        assert!(glob("*", ""));
        assert!(glob("*-gcs", "zoom-gcs"));
        assert!(glob("a*b*c", "aXXbYYbc"));
        assert!(!glob("a*b*c", "aXXbYYb"));
        assert!(glob("zoom-gcs", "zoom-gcs"));
        assert!(!glob("zoom-gcs", "zoom-gcs2"));
        assert!(!glob("zoom-gcs", "zoom-gc"));
        assert!(glob("**", "x"));
    }

    #[test]
    fn selectors_parse_match_and_cover() {
        let s = Selector::parse("gcs-bucket/zoom-*").unwrap();
        assert!(s.matches("gcs-bucket", "zoom-gcs"));
        assert!(!s.matches("gcs-bucket", "prod-gcs"));
        assert!(!s.matches("gcp-credentials", "zoom-gcs"));
        assert_eq!(s.to_string(), "gcs-bucket/zoom-*");
        for bad in [
            "",
            "gcs-bucket",
            "/x",
            "x/",
            "GCS/x",
            "a/b/c",
            "a/b_c",
            "a/%",
            "a/ b",
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
        let wide = Selector::parse("*/zoom-*").unwrap();
        assert!(wide.covers(&s));
        assert!(!s.covers(&wide));
        assert!(s.covers(&Selector::parse("gcs-bucket/zoom-a*").unwrap()));
        assert!(!s.covers(&Selector::parse("gcs-bucket/*").unwrap()));
        assert!(Selector::parse("*/*").unwrap().covers_type("gcs-bucket"));
        assert!(
            Selector::parse("gcs-*/*")
                .unwrap()
                .covers_type("gcs-bucket")
        );
        assert!(
            !Selector::parse("gcs-bucket/zoom-*")
                .unwrap()
                .covers_type("gcs-bucket")
        );
    }

    #[test]
    fn grants_parse_allow_and_are_checked() {
        let g = Grant::parse("read-secrets:gcs-bucket/zoom-gcs").unwrap();
        assert!(g.allows(Scope::Read, "gcs-bucket", "zoom-gcs"));
        assert!(g.allows(Scope::ReadSecrets, "gcs-bucket", "zoom-gcs"));
        assert!(!g.allows(Scope::Write, "gcs-bucket", "zoom-gcs"));
        assert!(!g.allows(Scope::Read, "gcs-bucket", "other"));
        assert!(Grant::parse("gcs-bucket/zoom-gcs").is_err());
        assert!(Grant::parse("root:gcs-bucket/zoom-gcs").is_err());
        let read: BTreeSet<Scope> = [Scope::Read].into();
        assert!(check_grants(&read, &[Grant::parse("read:*/*").unwrap()]).is_empty());
        let errors = check_grants(&read, &[Grant::parse("write:*/*").unwrap()]);
        assert_eq!(errors[0].field, "grants[0].scope");
        let admin: BTreeSet<Scope> = [Scope::Admin].into();
        let errors = check_grants(&admin, &[Grant::parse("read:*/*").unwrap()]);
        assert_eq!(errors[0].field, "grants");
        assert!(errors[0].message.contains("admin token cannot be limited"));
        let many = vec![Grant::parse("read:*/*").unwrap(); MAX_GRANTS + 1];
        assert_eq!(check_grants(&read, &many)[0].field, "grants");
    }
}
