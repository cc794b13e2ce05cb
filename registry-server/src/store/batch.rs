//! Statements a write runs together, in order: on SQLite as one multi-statement query, so
//! they cost one hand-off to the connection's thread instead of one each (a document create
//! runs its document, version, references, event and audit record as one). On PostgreSQL
//! they run one after another, unless the batch was made [`Batch::independent`]: then they
//! are one statement, each but the last a data-modifying `with` query, one round trip.
//! PostgreSQL runs those on one snapshot (no statement sees another's rows), which is why
//! only statements that do not read each other's rows may be joined so; foreign keys are
//! checked at the end of the whole statement.
//!
//! Each statement numbers its parameters from `$1`; the batch renumbers them when it joins
//! the statements (both databases bind `$N` by absolute position in the joined text).

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Backend, Result, Store, StoreError};

/// A value bound to a statement of a [`Batch`].
#[derive(Debug, Clone)]
pub(crate) enum Param {
    Text(Option<String>),
    Int(i64),
}

impl From<String> for Param {
    fn from(value: String) -> Self {
        Self::Text(Some(value))
    }
}

impl From<&str> for Param {
    fn from(value: &str) -> Self {
        Self::Text(Some(value.to_owned()))
    }
}

impl From<Option<String>> for Param {
    fn from(value: Option<String>) -> Self {
        Self::Text(value)
    }
}

impl From<i64> for Param {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}

/// One statement and its parameters.
#[derive(Debug, Clone)]
pub(crate) struct Statement {
    pub(crate) sql: String,
    pub(crate) params: Vec<Param>,
}

/// Statements waiting to run (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct Batch {
    statements: Vec<Statement>,
    /// What a unique violation means for this batch, when one of its statements names it.
    unique: Option<String>,
    /// No statement reads rows another one writes: PostgreSQL may run them as one.
    independent: bool,
}

impl Batch {
    /// A batch whose statements only write, none reading rows another writes (inserts of
    /// new rows with their values given): one round trip on PostgreSQL too.
    pub(crate) fn independent() -> Self {
        Self {
            independent: true,
            ..Self::default()
        }
    }

    /// Adds `statement`, to run after those already added.
    pub(crate) fn push(&mut self, statement: Statement) {
        self.statements.push(statement);
    }

    /// Adds `statement`, to run before those already added.
    pub(crate) fn push_front(&mut self, statement: Statement) {
        self.statements.insert(0, statement);
    }

    /// Adds `statement`, whose unique violation is [`StoreError::AlreadyExists`] with
    /// `message` (a document's name taken). A unique violation of any statement of the
    /// same run reads so: the others insert rows with new keys.
    pub(crate) fn push_unique(&mut self, statement: Statement, message: &str) {
        self.unique = Some(message.to_owned());
        self.push(statement);
    }

    /// Adds the failing statement of `point` when a test armed it
    /// ([`Store::failing_statement`]).
    pub(crate) fn push_failpoint(&mut self, store: &Store, point: &'static str) {
        if let Some(statement) = store.failing_statement(point) {
            self.push(statement);
        }
    }

    /// Whether `other` runs the same statements as this one (the same texts, other values):
    /// batches of the same statements joined make the same text every time, which the
    /// connection keeps prepared.
    pub(crate) fn same_statements(&self, other: &Batch) -> bool {
        self.statements.len() == other.statements.len()
            && self
                .statements
                .iter()
                .zip(&other.statements)
                .all(|(a, b)| a.sql == b.sql)
    }

    /// The statements of `batches`, in order, as one batch (on SQLite, one hand-off). A
    /// failure of it says nothing of which batch failed: a unique violation is the
    /// database's error, not a batch's message.
    pub(crate) fn joined<'a>(batches: impl IntoIterator<Item = &'a Batch>) -> Self {
        Self {
            statements: batches
                .into_iter()
                .flat_map(|batch| batch.statements.iter().cloned())
                .collect(),
            ..Self::default()
        }
    }

    /// Runs the waiting statements on `conn`, in order, and empties the batch. Returns the
    /// rows they changed: all together on SQLite and when run one by one, the last
    /// statement's when PostgreSQL ran them joined. A failure leaves what the statements
    /// before it did to the caller's transaction or savepoint, which every caller rolls
    /// back.
    pub(crate) async fn run(
        &mut self,
        store: &Store,
        conn: &mut sqlx::AnyConnection,
    ) -> Result<u64> {
        self.run_counted(store.backend, &store.queries, conn).await
    }

    /// [`Batch::run`] on `backend`, counting the statements sent in `queries`.
    pub(crate) async fn run_counted(
        &mut self,
        backend: Backend,
        queries: &AtomicU64,
        conn: &mut sqlx::AnyConnection,
    ) -> Result<u64> {
        let count = || {
            queries.fetch_add(1, Ordering::Relaxed);
        };
        let statements = std::mem::take(&mut self.statements);
        let unique = self.unique.take();
        let joined = match backend {
            _ if statements.len() < 2 => None,
            Backend::Sqlite => Some(join(&statements)),
            Backend::Postgres if self.independent => Some(join_with(&statements)),
            Backend::Postgres => None,
        };
        let outcome = match joined {
            Some(joined) => {
                count();
                bind(sqlx::query(&joined.sql), joined.params)
                    .execute(&mut *conn)
                    .await
                    .map(|done| done.rows_affected())
            }
            _ => {
                let mut changed = 0;
                let mut failed = None;
                for statement in statements {
                    count();
                    match bind(sqlx::query(&statement.sql), statement.params)
                        .execute(&mut *conn)
                        .await
                    {
                        Ok(done) => changed += done.rows_affected(),
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                failed.map_or(Ok(changed), Err)
            }
        };
        outcome.map_err(|e| match unique {
            Some(message) if StoreError::is_unique_violation(&e) => {
                StoreError::AlreadyExists(message)
            }
            _ => e.into(),
        })
    }
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

fn bind(mut query: AnyQuery<'_>, params: Vec<Param>) -> AnyQuery<'_> {
    for param in params {
        query = match param {
            Param::Text(text) => query.bind(text),
            Param::Int(n) => query.bind(n),
        };
    }
    query
}

/// The highest `$N` in `sql` (0 without parameters).
fn highest_parameter(sql: &str) -> usize {
    sql.split('$')
        .skip(1)
        .filter_map(|rest| {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            rest[..digits].parse().ok()
        })
        .max()
        .unwrap_or(0)
}

/// Each statement's parameters are exactly its own: a `$N` beyond them would bind the next
/// statement's values once joined.
fn debug_check(statements: &[Statement]) {
    for statement in statements {
        debug_assert_eq!(
            highest_parameter(&statement.sql),
            statement.params.len(),
            "a batched statement's parameters: {}",
            statement.sql
        );
    }
}

/// The statements as one, their parameters renumbered to follow each other.
fn join(statements: &[Statement]) -> Statement {
    debug_check(statements);
    let mut sql = String::new();
    let mut params = Vec::new();
    for statement in statements {
        if !sql.is_empty() {
            sql.push_str(";\n");
        }
        sql.push_str(&renumber(&statement.sql, params.len()));
        params.extend(statement.params.iter().cloned());
    }
    Statement { sql, params }
}

/// The statements as one for PostgreSQL: all but the last as `with` queries, in order.
fn join_with(statements: &[Statement]) -> Statement {
    debug_check(statements);
    let (last, before) = statements
        .split_last()
        .expect("a batch of two statements or more");
    let mut sql = String::from("with ");
    let mut params = Vec::new();
    for (i, statement) in before.iter().enumerate() {
        if i > 0 {
            sql.push_str(",\n");
        }
        sql.push_str(&format!("batch_{i} as ("));
        sql.push_str(&renumber(&statement.sql, params.len()));
        sql.push(')');
        params.extend(statement.params.iter().cloned());
    }
    sql.push('\n');
    sql.push_str(&renumber(&last.sql, params.len()));
    params.extend(last.params.iter().cloned());
    Statement { sql, params }
}

/// `sql` with each parameter `$N` written `$(N + offset)`. The store's statements hold no
/// `$` followed by a digit other than their parameters (JSON paths are `'$.name'`).
fn renumber(sql: &str, offset: usize) -> String {
    if offset == 0 {
        return sql.to_owned();
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            let n: usize = rest[..digits].parse().unwrap_or(0);
            out.push_str(&(n + offset).to_string());
            rest = &rest[digits..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_renumbered_after_the_statements_before_them() {
        assert_eq!(renumber("values ($1, $2, $10)", 0), "values ($1, $2, $10)");
        assert_eq!(
            renumber("select json_extract(value, '$.at') from json_each($1)", 3),
            "select json_extract(value, '$.at') from json_each($4)"
        );
        assert_eq!(renumber("a = $9 and b = $10$", 2), "a = $11 and b = $12$");
        assert_eq!(highest_parameter("a = $9 and b = $10 and c = '$.x'"), 10);
        assert_eq!(highest_parameter("select 1"), 0);
        let joined = join(&[
            Statement {
                sql: "insert into a values ($1, $2)".into(),
                params: vec![Param::Int(1), Param::from("x")],
            },
            Statement {
                sql: "insert into b values ($2, $1)".into(),
                params: vec![Param::Int(2), Param::Text(None)],
            },
        ]);
        assert_eq!(
            joined.sql,
            "insert into a values ($1, $2);\ninsert into b values ($4, $3)"
        );
        assert_eq!(joined.params.len(), 4);
        let with = join_with(&[
            Statement {
                sql: "insert into a values ($1)".into(),
                params: vec![Param::Int(1)],
            },
            Statement {
                sql: "insert into b values ($1)".into(),
                params: vec![Param::Int(2)],
            },
            Statement {
                sql: "insert into c values ($2, $1)".into(),
                params: vec![Param::Int(3), Param::Int(4)],
            },
        ]);
        assert_eq!(
            with.sql,
            "with batch_0 as (insert into a values ($1)),\nbatch_1 as (insert into b values ($2))\ninsert into c values ($4, $3)"
        );
        assert_eq!(with.params.len(), 4);
    }
}
