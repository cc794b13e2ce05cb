//! Light listings for people browsing the store (the console): a page of document
//! summaries with the total that matches, counts per type, and the documents that reference
//! a document. No data, no secrets, no tree resolution: a page of 50 names out of a million
//! documents costs two indexed queries.

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::sql::Sql;
use super::{Backend, Result, Store, StoreError, to_time, uuid_col};

/// Longest name search accepted (bytes), as for the API's `like_`.
pub const MAX_SEARCH_BYTES: usize = 256;
/// Most summaries one page may hold.
pub const MAX_PAGE: u32 = 200;

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct DocumentQuery {
    /// Names containing this text, case-insensitively (`%` and `_` are literal).
    pub search: Option<String>,
    /// Only documents of this type.
    pub block_type_id: Option<Uuid>,
    /// Anonymous documents too.
    pub include_anonymous: bool,
    /// Page size (1 to [`MAX_PAGE`]).
    pub limit: u32,
    /// Summaries to skip.
    pub offset: u64,
    /// How many documents match, when the caller knows it already (from
    /// [`Store::document_counts_by_type`], for a query without a search): not counted again.
    pub known_total: Option<i64>,
}

/// One listed document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentSummary {
    /// The document's id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// Whether it is anonymous (a nested value saved without a name of its own).
    pub is_anonymous: bool,
    /// Its type's slug and name.
    pub type_slug: String,
    /// Its type's display name.
    pub type_name: String,
    /// When it was last written.
    pub updated: DateTime<Utc>,
    /// Its current version.
    pub version: i64,
}

/// A page of summaries and how many documents match in all.
#[derive(Debug, Clone)]
pub struct DocumentPage {
    /// The page, by name.
    pub items: Vec<DocumentSummary>,
    /// Documents matching the query (all pages).
    pub total: i64,
}

/// A document that references another, by the field that holds the reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referrer {
    /// The referencing document's id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// Its type's slug.
    pub type_slug: String,
    /// The field that holds the reference.
    pub field: String,
}

/// `text` as a `like` pattern matching it literally anywhere (`escape '\'`).
fn contains_pattern(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('%');
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

impl Store {
    /// The FTS5 query finding names that contain `search` through SQLite's trigram index
    /// of names: `search` as one quoted phrase. None on PostgreSQL (its trigram index
    /// serves the `like` itself) and for text shorter than a trigram.
    fn trigram_phrase(&self, search: &str) -> Option<String> {
        // Lowercased as the `like` pattern is, so the index finds at least what it matches.
        let search = search.to_lowercase();
        (self.backend == Backend::Sqlite && search.chars().count() >= 3)
            .then(|| format!("\"{}\"", search.replace('"', "\"\"")))
    }

    /// A page of document summaries, by name, and the number of documents matching.
    pub async fn browse_documents(&self, query: &DocumentQuery) -> Result<DocumentPage> {
        if query.limit == 0 || query.limit > MAX_PAGE {
            return Err(StoreError::Invalid(vec![block_types::FieldError::new(
                "limit",
                format!("must be between 1 and {MAX_PAGE}"),
            )]));
        }
        if query
            .search
            .as_ref()
            .is_some_and(|s| s.len() > MAX_SEARCH_BYTES)
        {
            return Err(StoreError::Invalid(vec![block_types::FieldError::new(
                "search",
                format!("must be at most {MAX_SEARCH_BYTES} bytes"),
            )]));
        }
        let offset = i64::try_from(query.offset).map_err(|_| {
            StoreError::Invalid(vec![block_types::FieldError::new("offset", "is too large")])
        })?;
        let searched = query.search.as_deref().is_some_and(|s| !s.is_empty());
        // PostgreSQL: a search's matches are found first, on their own (a materialized
        // `with`), then joined, counted and paged. In one statement the planner may walk the
        // name index in page order, filtering every document (half a second at a million),
        // whenever its estimate of the matches is high: the estimate comes from a sample
        // of names, and the trigram index finds a thousand matches in milliseconds.
        let fenced = searched && self.backend == Backend::Postgres;
        let filter = |select: &str| {
            let mut sql = if fenced {
                Sql::new("with d as materialized (select * from block_document d where 1 = 1")
            } else {
                let mut sql = Sql::new(select);
                sql.push(
                    " from block_document d join block_type t on t.id = d.block_type_id where 1 = 1",
                );
                sql
            };
            if !query.include_anonymous {
                sql.push(" and d.is_anonymous = 0");
            }
            if let Some(type_id) = query.block_type_id {
                sql.push(" and d.block_type_id = ")
                    .bind_text(type_id.to_string());
            }
            if let Some(search) = query.search.as_deref().filter(|s| !s.is_empty()) {
                if let Some(phrase) = self.trigram_phrase(search) {
                    // The candidates from the trigram index (a superset: it folds case as
                    // widely as the condition below), then the condition itself.
                    sql.push(
                        " and d.id in (select k.id from block_document_key k where k.key in \
                         (select rowid from block_document_name where block_document_name match ",
                    )
                    .bind_text(phrase)
                    .push("))");
                }
                sql.push(" and lower(d.name) like ")
                    .bind_text(contains_pattern(search))
                    .push(" escape '\\'");
            }
            if fenced {
                sql.push(") ")
                    .push(select)
                    .push(" from d join block_type t on t.id = d.block_type_id where 1 = 1");
            }
            sql
        };
        let c = self.collate();
        // A search counts its matches in the same statement: the trigram index is read
        // once, not once for the page and again for the total.
        let mut page = filter(if searched {
            "select d.id, d.name, d.is_anonymous, d.updated, d.version, t.slug, \
             t.name as type_name, count(*) over () as matching"
        } else {
            "select d.id, d.name, d.is_anonymous, d.updated, d.version, t.slug, t.name as type_name"
        });
        page.push(&format!(" order by d.name{c}, d.id limit "))
            .bind_int(query.limit.into())
            .push(" offset ")
            .bind_int(offset);
        // A search is planned for its text each time (not kept prepared): a plan made for
        // any text (PostgreSQL's generic plan) cannot tell that the trigram index finds few.
        self.count_query();
        let rows = page
            .query()
            .persistent(!searched)
            .fetch_all(&self.read)
            .await?;
        let items = rows
            .iter()
            .map(|row| {
                Ok(DocumentSummary {
                    id: uuid_col(row, "id")?,
                    name: row.try_get("name")?,
                    is_anonymous: row.try_get::<i64, _>("is_anonymous")? != 0,
                    type_slug: row.try_get("slug")?,
                    type_name: row.try_get("type_name")?,
                    updated: to_time(row.try_get("updated")?),
                    version: row.try_get("version")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let matching = match rows.first() {
            Some(row) if searched => Some(row.try_get::<i64, _>("matching")?),
            _ => None,
        };
        let total = if let Some(matching) = matching {
            matching
        } else if offset == 0 && items.len() < query.limit as usize {
            items.len() as i64
        } else if let Some(total) = query.known_total {
            total
        } else if !searched {
            // Without a search the total is a count per type, kept until the next change
            // (a count of a million documents reads a million index entries).
            let counts = self
                .document_counts_by_type(query.include_anonymous)
                .await?;
            counts
                .iter()
                .filter(|(type_id, _)| query.block_type_id.is_none_or(|t| t == *type_id))
                .map(|(_, n)| n)
                .sum()
        } else {
            // A search's page past its last match.
            self.count_query();
            filter("select count(*) as n")
                .query()
                .persistent(false)
                .fetch_one(&self.read)
                .await?
                .try_get("n")?
        };
        Ok(DocumentPage { items, total })
    }

    /// How many documents each type has, by type id (types without documents left out).
    pub async fn document_counts_by_type(
        &self,
        include_anonymous: bool,
    ) -> Result<Vec<(Uuid, i64)>> {
        // A count over a million documents reads a million index entries: it is kept
        // until the next create, delete or other change.
        if let Some(counts) = self.trees.counts(include_anonymous) {
            return Ok((*counts).clone());
        }
        let generation = self.trees.generation();
        let filter = if include_anonymous {
            ""
        } else {
            " where is_anonymous = 0"
        };
        self.count_query();
        let rows = sqlx::query(&format!(
            "select block_type_id, count(*) as n from block_document{filter} group by block_type_id"
        ))
        .fetch_all(&self.read)
        .await?;
        let counts = rows
            .iter()
            .map(|row| Ok((uuid_col(row, "block_type_id")?, row.try_get("n")?)))
            .collect::<Result<Vec<_>>>()?;
        self.trees.keep_counts(
            include_anonymous,
            std::sync::Arc::new(counts.clone()),
            generation,
        );
        Ok(counts)
    }

    /// The documents whose fields reference document `id`, by type and name: the first
    /// `limit` of them.
    pub async fn referrers(&self, id: Uuid, limit: u32) -> Result<Vec<Referrer>> {
        let c = self.collate();
        self.count_query();
        let rows = sqlx::query(&format!(
            "select d.id, d.name, t.slug, r.name as field from block_document_reference r \
             join block_document d on d.id = r.parent_block_document_id \
             join block_type t on t.id = d.block_type_id \
             where r.reference_block_document_id = $1 order by t.slug{c}, d.name{c}, r.name{c} limit $2"
        ))
        .bind(id.to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Referrer {
                    id: uuid_col(row, "id")?,
                    name: row.try_get("name")?,
                    type_slug: row.try_get("slug")?,
                    field: row.try_get("field")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::contains_pattern;

    #[test]
    fn a_search_is_literal_and_case_insensitive() {
        assert_eq!(contains_pattern("Zoom_50%"), r"%zoom\_50\%%");
        assert_eq!(contains_pattern(r"a\b"), r"%a\\b%");
    }
}
