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
