//! A small builder for dynamic SQL with `$N` placeholders (which both backends accept
//! through the `Any` driver, unlike the `?` that sqlx's own builder writes for it).

use sqlx::Any;
use sqlx::any::AnyArguments;
use sqlx::query::Query;

/// A piece of a `where` clause, written when the query is built.
pub(crate) type Condition = Box<dyn Fn(&mut Sql)>;

/// A bound value.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Text(String),
    Int(i64),
}

/// SQL text plus its arguments, numbered as they are pushed.
#[derive(Debug, Default)]
pub(crate) struct Sql {
    pub(crate) text: String,
    args: Vec<Arg>,
}

impl Sql {
    pub(crate) fn new(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            args: Vec::new(),
        }
    }

    /// Appends raw SQL.
    pub(crate) fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder bound to `arg`.
    pub(crate) fn bind(&mut self, arg: Arg) -> &mut Self {
        self.args.push(arg);
        self.text.push_str(&format!("${}", self.args.len()));
        self
    }

    pub(crate) fn bind_text(&mut self, text: impl Into<String>) -> &mut Self {
        self.bind(Arg::Text(text.into()))
    }

    pub(crate) fn bind_int(&mut self, value: i64) -> &mut Self {
        self.bind(Arg::Int(value))
    }

    /// Appends `(p1, p2, …)` bound to `items`; `(NULL)` when empty, which matches nothing.
    pub(crate) fn bind_list<I, S>(&mut self, items: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.push("(");
        let mut any = false;
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.bind_text(item);
            any = true;
        }
        if !any {
            self.push("NULL");
        }
        self.push(")")
    }

    /// The query, ready to run.
    pub(crate) fn query(&self) -> Query<'_, Any, AnyArguments<'_>> {
        let mut q = sqlx::query(&self.text);
        for arg in &self.args {
            q = match arg {
                Arg::Text(s) => q.bind(s.as_str()),
                Arg::Int(i) => q.bind(*i),
            };
        }
        q
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

use block_types::model::{BlockDocumentFilter, BlockSchemaFilter, BlockTypeFilter};

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
