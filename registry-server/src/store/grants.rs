//! Grants: a token's scopes narrowed to the blocks a selector names.
//!
//! A selector is `type-slug/name`, each part a glob where `*` stands for any run of
//! characters (`gcs-bucket/zoom-*`, `*/staging-*`). Slugs and names hold only lowercase
//! letters, digits and dashes, and so do selectors (plus `*`), so a glob becomes a SQL
//! `like` pattern by turning `*` into `%` with nothing to escape, and matches the same on
//! both databases (SQLite's case-insensitive `like` meets no letter of another case).

use std::collections::BTreeSet;

use sqlx::Row as _;
use uuid::Uuid;

use super::sql::Sql;
use block_types::access::{Grant, Scope, Selector};

use super::{Result, Store};

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
                .bind_text(selector.slug().replace('*', "%"))
                .push(" and d.name like ")
                .bind_text(selector.name().replace('*', "%"))
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
