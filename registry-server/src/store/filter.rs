//! Filters as SQL: the conditions of Prefect's type, schema and document filter objects,
//! their combination by `operator`, name patterns, and the bound on the lists they hold.

use block_types::model::{BlockDocumentFilter, BlockSchemaFilter, BlockTypeFilter, Operator};

use super::sql::{Condition, Sql};
use super::{Backend, Result};

/// Appends ` and (c1 and/or c2 …)`; nothing when there are no conditions.
pub(crate) fn push_combined(sql: &mut Sql, conditions: &[Condition], operator: Operator) {
    if conditions.is_empty() {
        return;
    }
    let joiner = match operator {
        Operator::And => " and ",
        Operator::Or => " or ",
    };
    sql.push(" and (");
    for (i, condition) in conditions.iter().enumerate() {
        if i > 0 {
            sql.push(joiner);
        }
        condition(sql);
    }
    sql.push(")");
}

/// Appends ` and …` conditions of a schema filter on the schema table aliased `alias`.
pub(crate) fn push_schema_filter(sql: &mut Sql, filter: &BlockSchemaFilter, alias: &str) {
    let mut conditions: Vec<Condition> = Vec::new();
    let alias = alias.to_owned();
    if let Some(ids) = filter.block_type_id.as_ref().and_then(|f| f.any_.clone()) {
        let a = alias.clone();
        conditions.push(Box::new(move |sql| {
            sql.push(&format!("{a}.block_type_id in "))
                .bind_list(ids.iter().map(ToString::to_string));
        }));
    }
    if let Some(caps) = filter
        .block_capabilities
        .as_ref()
        .and_then(|f| f.all_.clone())
    {
        let a = alias.clone();
        conditions.push(Box::new(move |sql| {
            let mut caps = caps.clone();
            caps.sort();
            caps.dedup();
            let n = caps.len() as i64;
            sql.push(&format!(
                "(select count(*) from block_schema_capability c where c.block_schema_id = {a}.id and c.capability in "
            ))
            .bind_list(caps)
            .push(") = ")
            .bind_int(n);
        }));
    }
    if let Some(ids) = filter.id.as_ref().and_then(|f| f.any_.clone()) {
        let a = alias.clone();
        conditions.push(Box::new(move |sql| {
            sql.push(&format!("{a}.id in "))
                .bind_list(ids.iter().map(ToString::to_string));
        }));
    }
    if let Some(versions) = filter.version.as_ref().and_then(|f| f.any_.clone()) {
        let a = alias.clone();
        conditions.push(Box::new(move |sql| {
            sql.push(&format!("{a}.version in "))
                .bind_list(versions.clone());
        }));
    }
    push_combined(sql, &conditions, filter.operator);
}

/// Appends ` and …` conditions of a type filter on the type table aliased `alias`.
pub(crate) fn push_type_filter(
    sql: &mut Sql,
    filter: &BlockTypeFilter,
    alias: &str,
    backend: Backend,
) {
    if let Some(like) = filter.name.as_ref().and_then(|n| n.like_.as_ref()) {
        sql.push(&format!(" and lower({alias}.name) like '%' || lower("))
            .bind_text(like_pattern(like, backend))
            .push(") || '%'");
    }
    if let Some(slugs) = filter.slug.as_ref().and_then(|s| s.any_.as_ref()) {
        sql.push(&format!(" and {alias}.slug in "))
            .bind_list(slugs.iter().cloned());
    }
}

/// A `like_` value as a pattern that means the same on both backends: `%` and `_` are
/// wildcards (as in Prefect), and a backslash is literal (PostgreSQL would read it as an
/// escape, SQLite does not).
pub(crate) fn like_pattern(value: &str, backend: Backend) -> String {
    match backend {
        Backend::Postgres => value.replace('\\', "\\\\"),
        Backend::Sqlite => value.to_owned(),
    }
}

/// The most values one `any_`/`all_` filter list may hold (each is a bind parameter, and
/// both databases cap those).
pub(crate) const MAX_FILTER_LIST: usize = 1000;

/// Refuses filter lists longer than [`MAX_FILTER_LIST`], naming the field.
pub(crate) fn check_filter_lists(
    lists: &[(&str, Option<usize>)],
) -> Result<(), crate::store::StoreError> {
    for (field, len) in lists {
        if len.is_some_and(|n| n > MAX_FILTER_LIST) {
            return Err(crate::store::StoreError::invalid(
                *field,
                format!("may list at most {MAX_FILTER_LIST} values"),
            ));
        }
    }
    Ok(())
}

/// The list lengths of a type filter, by field.
pub(crate) fn type_filter_lists(f: Option<&BlockTypeFilter>) -> Vec<(&'static str, Option<usize>)> {
    vec![(
        "block_types.slug.any_",
        f.and_then(|f| f.slug.as_ref()?.any_.as_ref().map(Vec::len)),
    )]
}

/// The list lengths of a schema filter, by field.
pub(crate) fn schema_filter_lists(
    f: Option<&BlockSchemaFilter>,
) -> Vec<(&'static str, Option<usize>)> {
    vec![
        (
            "block_schemas.block_type_id.any_",
            f.and_then(|f| f.block_type_id.as_ref()?.any_.as_ref().map(Vec::len)),
        ),
        (
            "block_schemas.block_capabilities.all_",
            f.and_then(|f| f.block_capabilities.as_ref()?.all_.as_ref().map(Vec::len)),
        ),
        (
            "block_schemas.id.any_",
            f.and_then(|f| f.id.as_ref()?.any_.as_ref().map(Vec::len)),
        ),
        (
            "block_schemas.version.any_",
            f.and_then(|f| f.version.as_ref()?.any_.as_ref().map(Vec::len)),
        ),
    ]
}

/// The list lengths of a document filter, by field.
pub(crate) fn document_filter_lists(
    f: Option<&BlockDocumentFilter>,
) -> Vec<(&'static str, Option<usize>)> {
    vec![
        (
            "block_documents.id.any_",
            f.and_then(|f| f.id.as_ref()?.any_.as_ref().map(Vec::len)),
        ),
        (
            "block_documents.block_type_id.any_",
            f.and_then(|f| f.block_type_id.as_ref()?.any_.as_ref().map(Vec::len)),
        ),
        (
            "block_documents.name.any_",
            f.and_then(|f| f.name.as_ref()?.any_.as_ref().map(Vec::len)),
        ),
    ]
}
