//! Grants: a token's scopes narrowed to the blocks a selector names.
//!
//! A selector is `type-slug/name`, each part a glob where `*` stands for any run of
//! characters (`gcs-bucket/zoom-*`, `*/staging-*`). Slugs and names hold only lowercase
//! letters, digits and dashes, and so do selectors (plus `*`), so a glob becomes a SQL
//! `like` pattern by turning `*` into `%` with nothing to escape, and matches the same on
//! both databases (SQLite's case-insensitive `like` meets no letter of another case).

use std::collections::BTreeSet;
use std::fmt;

use block_types::FieldError;

use sqlx::Row as _;
use uuid::Uuid;

use super::sql::Sql;
use super::{Result, Scope, Store};

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
                && p.len() <= block_types::validate::MAX_NAME_BYTES
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

/// `*` globs over bytes: `*` matches any run (also none), everything else itself.
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
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
pub(crate) fn check(scopes: &BTreeSet<Scope>, grants: &[Grant]) -> Vec<FieldError> {
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

/// Which documents a caller may see at some scope.
#[derive(Debug, Clone, Copy)]
pub enum Reach<'a> {
    /// Every document.
    All,
    /// Those a grant of the needed scope selects.
    Only(&'a [Grant], Scope),
}

impl Reach<'_> {
    /// Appends ` and …`, true for the documents in reach (never an anonymous one), to a
    /// query over documents `d` joined to their type `t`.
    pub(crate) fn push_condition(&self, sql: &mut Sql) {
        let Reach::Only(grants, scope) = *self else {
            return;
        };
        // No grant reaches an anonymous document by its made-up name.
        sql.push(" and d.is_anonymous = 0 and (1 = 0");
        let selectors: BTreeSet<&Selector> = grants
            .iter()
            .filter(|g| g.scope.grants(scope))
            .map(|g| &g.selector)
            .collect();
        for selector in selectors {
            sql.push(" or (t.slug like ")
                .bind_text(selector.slug.replace('*', "%"))
                .push(" and d.name like ")
                .bind_text(selector.name.replace('*', "%"))
                .push(")");
        }
        sql.push(")");
    }
}

/// A document as grants see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Its type's slug.
    pub slug: String,
    /// Its name (`anonymous-…` for an anonymous one).
    pub name: String,
    /// Whether it is anonymous (part of the document that references it).
    pub anonymous: bool,
}

impl Store {
    /// The type slug and name of a document, if it exists.
    pub async fn document_identity(&self, id: Uuid) -> Result<Option<Identity>> {
        self.count_query();
        let row = sqlx::query(
            "select t.slug, d.name, d.is_anonymous from block_document d \
             join block_type t on t.id = d.block_type_id where d.id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| {
            Ok(Identity {
                slug: r.try_get("slug")?,
                name: r.try_get("name")?,
                anonymous: r.try_get::<i64, _>("is_anonymous")? != 0,
            })
        })
        .transpose()
    }

    /// Whether `token` may make a document reference the anonymous document `id` though no
    /// grant names it: no document references it yet and its current version is the
    /// token's own (Prefect saves a nested block as an anonymous document first, then the
    /// block that references it). Another tree's anonymous document is never adopted.
    pub async fn adoptable_by(&self, id: Uuid, token: Uuid) -> Result<bool> {
        self.count_query();
        let n: i64 = sqlx::query_scalar(
            "select count(*) from block_document d join block_document_version v \
               on v.block_document_id = d.id and v.version = d.version \
             where d.id = $1 and d.is_anonymous = 1 and v.token_id = $2 \
               and not exists (select 1 from block_document_reference r \
                               where r.reference_block_document_id = d.id)",
        )
        .bind(id.to_string())
        .bind(token.to_string())
        .fetch_one(&self.read)
        .await?;
        Ok(n > 0)
    }
}

#[cfg(test)]
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
        assert!(check(&read, &[Grant::parse("read:*/*").unwrap()]).is_empty());
        let errors = check(&read, &[Grant::parse("write:*/*").unwrap()]);
        assert_eq!(errors[0].field, "grants[0].scope");
        let admin: BTreeSet<Scope> = [Scope::Admin].into();
        let errors = check(&admin, &[Grant::parse("read:*/*").unwrap()]);
        assert_eq!(errors[0].field, "grants");
        assert!(errors[0].message.contains("admin token cannot be limited"));
        let many = vec![Grant::parse("read:*/*").unwrap(); MAX_GRANTS + 1];
        assert_eq!(check(&read, &many)[0].field, "grants");
    }
}
