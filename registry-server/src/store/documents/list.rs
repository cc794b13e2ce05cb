//! Filtered, paged and counted listings of documents.

use std::collections::HashMap;

use block_types::model::{
    BlockDocument, BlockDocumentCountBody, BlockDocumentFilter, BlockDocumentFilterBody,
    BlockDocumentSort, BlockSchemaFilter, BlockTypeFilter, EqBool, Page,
};
use sqlx::Row;
use uuid::Uuid;

use super::MAX_RESPONSE_BYTES;
use super::Tree;
use super::read::resolved_bytes;
use super::read::unreadable_document;
use super::{Backend, Result, Store, StoreError, uuid_col};
use crate::store::filter::{
    check_filter_lists, document_filter_lists, schema_filter_lists, type_filter_lists,
};
use crate::store::filter::{like_pattern, push_type_filter};
use crate::store::filter::{push_combined, push_schema_filter};
use crate::store::grants::Reach;
use crate::store::sql::{Condition, Sql};

pub(super) fn check_document_body_lists(
    documents: Option<&BlockDocumentFilter>,
    types: Option<&BlockTypeFilter>,
    schemas: Option<&BlockSchemaFilter>,
) -> Result<()> {
    let mut lists = document_filter_lists(documents);
    lists.extend(type_filter_lists(types));
    lists.extend(schema_filter_lists(schemas));
    check_filter_lists(&lists)
}

/// Appends `lower(d.name) like '%…%'`: the name holds `like` (a `like_` filter), the
/// expression PostgreSQL's trigram index is on.
/// On SQLite the names holding the pattern's literal runs of three characters or more
/// are first found through the trigram index of names (as the console's search does), a
/// superset the `like` then checks; a pattern without such a run reads every name.
fn push_name_like(sql: &mut Sql, like: &str, backend: Backend) {
    if backend == Backend::Sqlite
        && let Some(runs) = trigram_runs(like)
    {
        sql.push(
            "d.id in (select k.id from block_document_key k where k.key in \
             (select rowid from block_document_name where block_document_name match ",
        )
        .bind_text(runs)
        .push(")) and ");
    }
    sql.push("lower(d.name) like '%' || lower(")
        .bind_text(like_pattern(like, backend))
        .push(") || '%'");
}

/// The FTS5 query for the names containing every literal run (between `%` and `_`
/// wildcards, and NULs) of `like` at least a trigram long: each run one quoted phrase, lowercased
/// as the `like` is. None when no run is that long.
fn trigram_runs(like: &str) -> Option<String> {
    let runs: Vec<String> = like
        // A NUL (never in a name) would end FTS5's query text mid-phrase.
        .split(['%', '_', '\0'])
        .filter(|run| run.chars().count() >= 3)
        .map(|run| format!("\"{}\"", run.to_lowercase().replace('"', "\"\"")))
        .collect();
    (!runs.is_empty()).then(|| runs.join(" AND "))
}

/// Appends the conditions of a document filter on `block_document d` (with its type
/// `block_type t`), the type filter and the schema filter.
pub(super) fn push_document_filters(
    backend: Backend,
    sql: &mut Sql,
    documents: &BlockDocumentFilter,
    types: Option<&BlockTypeFilter>,
    schemas: Option<&BlockSchemaFilter>,
) {
    let mut groups: Vec<Condition> = Vec::new();
    if let Some(ids) = documents.id.as_ref().and_then(|f| f.any_.clone()) {
        groups.push(Box::new(move |sql| {
            sql.push("d.id in ")
                .bind_list(ids.iter().map(ToString::to_string));
        }));
    }
    if let Some(EqBool {
        eq_: Some(anonymous),
    }) = documents.is_anonymous
    {
        groups.push(Box::new(move |sql| {
            sql.push("d.is_anonymous = ").bind_int(i64::from(anonymous));
        }));
    }
    if let Some(ids) = documents
        .block_type_id
        .as_ref()
        .and_then(|f| f.any_.clone())
    {
        groups.push(Box::new(move |sql| {
            sql.push("d.block_type_id in ")
                .bind_list(ids.iter().map(ToString::to_string));
        }));
    }
    if let Some(name) = documents.name.clone()
        && (name.any_.is_some() || name.like_.is_some())
    {
        groups.push(Box::new(move |sql| {
            sql.push("(1 = 1");
            if let Some(names) = &name.any_ {
                sql.push(" and d.name in ").bind_list(names.iter().cloned());
            }
            if let Some(like) = &name.like_ {
                sql.push(" and ");
                push_name_like(sql, like, backend);
            }
            sql.push(")");
        }));
    }
    push_combined(sql, &groups, documents.operator);
    if let Some(types) = types {
        push_type_filter(sql, types, "t", backend);
    }
    if let Some(schemas) = schemas {
        sql.push(" and exists (select 1 from block_schema s where s.id = d.block_schema_id");
        push_schema_filter(sql, schemas, "s");
        sql.push(")");
    }
}

impl Store {
    /// Documents matching the filter (anonymous ones hidden unless asked), sorted and
    /// paged, each with its references resolved.
    pub async fn filter_block_documents(
        &self,
        body: &BlockDocumentFilterBody,
    ) -> Result<Vec<BlockDocument>> {
        self.filter_block_documents_within(body, Reach::All).await
    }

    /// [`Self::filter_block_documents`] over the documents in `reach` only (what a token
    /// limited by grants may see): paging and sorting apply to those.
    pub async fn filter_block_documents_within(
        &self,
        body: &BlockDocumentFilterBody,
        reach: Reach<'_>,
    ) -> Result<Vec<BlockDocument>> {
        let page =
            Page::resolve(body.limit, body.offset).map_err(|e| StoreError::Invalid(vec![e]))?;
        let mut sql = self.document_query(
            "select d.id",
            body.block_documents.as_ref(),
            body.block_types.as_ref(),
            body.block_schemas.as_ref(),
        )?;
        reach.push_condition(&mut sql);
        let c = self.collate();
        let order = match body.sort.unwrap_or_default() {
            BlockDocumentSort::NameAsc => format!(" order by d.name{c} asc, d.id"),
            BlockDocumentSort::NameDesc => format!(" order by d.name{c} desc, d.id"),
            BlockDocumentSort::BlockTypeAndNameAsc => {
                format!(" order by d.block_type_name{c} asc, d.name{c} asc, d.id")
            }
        };
        sql.push(&order).push(" limit ").bind_int(page.limit.into());
        sql.push(" offset ").bind_int(page.offset.into());
        self.count_query();
        let ids: Vec<Uuid> = sql
            .query()
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(|r| uuid_col(r, "id"))
            .collect::<Result<_>>()?;
        self.read_many(&ids, body.include_secrets.unwrap_or(false))
            .await
    }

    /// `select …` over the documents matching the filters (anonymous ones hidden unless
    /// asked), with the filter lists checked; sorting and paging are left to the caller.
    pub(super) fn document_query(
        &self,
        select: &str,
        documents: Option<&BlockDocumentFilter>,
        types: Option<&BlockTypeFilter>,
        schemas: Option<&BlockSchemaFilter>,
    ) -> Result<Sql> {
        check_document_body_lists(documents, types, schemas)?;
        let documents = documents.cloned().unwrap_or_default();
        // PostgreSQL: a name filter's matches are found first, on their own (a materialized
        // `with` named as the table is), then joined, filtered further, ordered and paged.
        // In one statement the planner may walk the name index in page order and filter
        // every document whenever its estimate of the matches comes out high (it comes
        // from `analyze`'s sample of names), as the console's search did at a million
        // documents. Only when the filter's conditions all hold (`and_`): with `or_` a
        // document may match without its name.
        let like = documents
            .name
            .as_ref()
            .and_then(|name| name.like_.as_deref())
            .filter(|_| {
                self.backend == Backend::Postgres
                    && documents.operator == block_types::model::Operator::And
            });
        let mut sql = match like {
            Some(like) => {
                let mut sql =
                    Sql::new("with d as materialized (select * from block_document d where ");
                push_name_like(&mut sql, like, self.backend);
                sql.push(") ").push(select).push(" from d");
                sql
            }
            None => {
                let mut sql = Sql::new(select);
                sql.push(" from block_document");
                sql
            }
        };
        sql.push(" d join block_type t on t.id = d.block_type_id where 1 = 1");
        push_document_filters(self.backend, &mut sql, &documents, types, schemas);
        Ok(sql)
    }

    /// Resolved documents for `ids`, in that order, with one tree query for all of them.
    pub(super) async fn read_many(
        &self,
        ids: &[Uuid],
        include_secrets: bool,
    ) -> Result<Vec<BlockDocument>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut retried = false;
        loop {
            let tree = self
                .load_tree(|sql| {
                    sql.push("d.id in ")
                        .bind_list(ids.iter().map(ToString::to_string));
                })
                .await?;
            // As in `read_one`: a version that re-encryption moved between the query and
            // the decryption is read again once; the second time, a document that still
            // cannot be decrypted is listed as unreadable instead of failing the list.
            match self.resolve_all(&tree, ids, include_secrets, retried).await {
                Err(StoreError::Crypto(_)) if !retried => retried = true,
                other => return other,
            }
        }
    }

    pub(super) async fn resolve_all(
        &self,
        tree: &Tree,
        ids: &[Uuid],
        include_secrets: bool,
        list_unreadable: bool,
    ) -> Result<Vec<BlockDocument>> {
        let keys = self.keys_for(tree, list_unreadable).await?;
        let mut out = Vec::with_capacity(ids.len());
        // The stored bytes the answer expands to, counted before anything is built.
        let mut total = 0usize;
        let mut memo = HashMap::new();
        for id in ids {
            if tree.docs.contains_key(id) {
                total += resolved_bytes(tree, *id, include_secrets, 0, &mut memo);
            }
            if total > MAX_RESPONSE_BYTES {
                return Err(StoreError::TooLarge(format!(
                    "the answer would hold more than {} MiB of data; ask for fewer documents with limit",
                    MAX_RESPONSE_BYTES >> 20
                )));
            }
        }
        for id in ids {
            match self.resolve_root_with(tree, &keys, *id, include_secrets) {
                Ok(Some(doc)) => out.push(doc),
                Ok(None) => {}
                Err(StoreError::Crypto(error)) if list_unreadable => {
                    tracing::error!(document_id = %id, %error, "a listed block document cannot be decrypted (its data key is missing or its ciphertext was altered); listed as unreadable");
                    out.extend(unreadable_document(tree, *id));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// How many documents match the filter.
    pub async fn count_block_documents(&self, body: &BlockDocumentCountBody) -> Result<i64> {
        self.count_block_documents_within(body, Reach::All).await
    }

    /// How many documents in `reach` match the filter (a count never tells of others).
    pub async fn count_block_documents_within(
        &self,
        body: &BlockDocumentCountBody,
        reach: Reach<'_>,
    ) -> Result<i64> {
        let mut sql = self.document_query(
            "select count(*) as n",
            body.block_documents.as_ref(),
            body.block_types.as_ref(),
            body.block_schemas.as_ref(),
        )?;
        reach.push_condition(&mut sql);
        self.count_query();
        Ok(sql.query().fetch_one(&self.read).await?.try_get("n")?)
    }

    /// The named (non-anonymous) documents of a type, by name.
    pub async fn list_block_documents_of_type(
        &self,
        slug: &str,
        include_secrets: bool,
    ) -> Result<Vec<BlockDocument>> {
        self.list_block_documents_of_type_within(slug, include_secrets, Reach::All)
            .await
    }

    /// [`Self::list_block_documents_of_type`], of the documents in `reach` only.
    pub async fn list_block_documents_of_type_within(
        &self,
        slug: &str,
        include_secrets: bool,
        reach: Reach<'_>,
    ) -> Result<Vec<BlockDocument>> {
        let ty = self.read_block_type_by_slug(slug).await?;
        let body = BlockDocumentFilterBody {
            block_documents: Some(BlockDocumentFilter {
                block_type_id: Some(block_types::model::AnyOf {
                    any_: Some(vec![ty.id]),
                }),
                ..BlockDocumentFilter::default()
            }),
            include_secrets: Some(include_secrets),
            ..BlockDocumentFilterBody::default()
        };
        let mut all = Vec::new();
        let mut offset = 0;
        loop {
            let page = self
                .filter_block_documents_within(
                    &BlockDocumentFilterBody {
                        offset: Some(offset),
                        ..body.clone()
                    },
                    reach,
                )
                .await?;
            let n = page.len() as i64;
            all.extend(page);
            if n < block_types::model::MAX_LIMIT {
                break;
            }
            offset += n;
        }
        Ok(all)
    }
}
