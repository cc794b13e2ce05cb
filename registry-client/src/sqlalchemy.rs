//! What a `sqlalchemy-connector` block does: its connection URL and an sqlx pool.
//!
//! ```no_run
//! use block_types::catalog::SqlAlchemyConnector;
//! use registry_client::BlockExt as _;
//! use registry_client::sqlalchemy::Connect as _;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let connector = SqlAlchemyConnector::load("postgres-connector").await?;
//! let pool = connector.connect().await?; // postgresql+psycopg2 → an sqlx PgPool
//! let pool = pool.postgres()?;
//! let one: i32 = sqlx::query_scalar("select 1").fetch_one(pool).await?;
//! # Ok(())
//! # }
//! ```
//!
//! SQLAlchemy names a database by `dialect+driver`; the dialect decides the sqlx backend
//! (`postgresql+psycopg2`, `postgresql+asyncpg` → PostgreSQL; `mysql+pymysql`,
//! `mariadb+mariadbconnector` → MySQL; `sqlite+aiosqlite` → SQLite). Oracle, SQL Server and
//! encrypted SQLite (`sqlite+pysqlcipher`) have no sqlx backend and are refused by name.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use block_types::catalog::{
    AsyncSqlAlchemyConnector, ConnectionComponents, ConnectionInfo, SqlAlchemyConnector,
};
use block_types::secret::SecretString;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde_json::{Map, Value};
use sqlx::Connection as _;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

/// Everything but RFC 3986's unreserved characters is percent-encoded in a user name,
/// password or database name.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The SQLite settings a connector may give (in its URL's query or its `connect_args`):
/// `mode` (`ro`, `rw`, `rwc`, `memory`), `timeout` (seconds to wait on a lock) and
/// `check_same_thread` (Python's; no meaning here, accepted and ignored).
const SQLITE_SETTINGS: [&str; 3] = ["mode", "timeout", "check_same_thread"];

/// How long a pool waits for a connection before giving up.
const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The sqlx backend a SQLAlchemy dialect maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `postgresql` (psycopg2, psycopg, asyncpg, pg8000, …).
    Postgres,
    /// `mysql` and `mariadb` (pymysql, mysqldb, asyncmy, aiomysql, …).
    MySql,
    /// `sqlite` (pysqlite, aiosqlite).
    Sqlite,
}

impl Backend {
    /// Maps a SQLAlchemy `dialect[+driver]` name to a backend.
    ///
    /// # Errors
    /// [`SqlError`] naming the driver when sqlx cannot serve it.
    pub fn for_driver(driver: &str) -> Result<Self, SqlError> {
        let lower = driver.trim().to_ascii_lowercase();
        let (dialect, dbapi) = lower.split_once('+').unwrap_or((lower.as_str(), ""));
        let backend = match dialect {
            "postgresql" | "postgres" | "psql" => Self::Postgres,
            "mysql" | "mariadb" => Self::MySql,
            "sqlite" if dbapi != "pysqlcipher" => Self::Sqlite,
            _ => {
                return Err(SqlError::new(
                    "driver",
                    format!(
                        "{driver:?} has no Rust backend here; the PostgreSQL (postgresql+…), MySQL/MariaDB (mysql+…, mariadb+…) and SQLite (sqlite, sqlite+pysqlite, sqlite+aiosqlite) drivers are served"
                    ),
                ));
            }
        };
        Ok(backend)
    }

    fn sqlx_scheme(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::MySql => "mysql",
            Self::Sqlite => "sqlite",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Postgres => "PostgreSQL",
            Self::MySql => "MySQL",
            Self::Sqlite => "SQLite",
        })
    }
}

/// Why a connector cannot be used: the field at fault and the problem. Never holds a
/// password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sqlalchemy-connector: {field}: {message}")]
pub struct SqlError {
    /// The field at fault (`connection_info.driver`, `connect_args.sslmode`, …), or
    /// `connection` for a failure to connect.
    pub field: String,
    /// What is wrong, in words that say what to do.
    pub message: String,
}

impl SqlError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        let field = if field == "connection" || field.starts_with("connect_args") {
            field.to_owned()
        } else if field.is_empty() {
            "connection_info".to_owned()
        } else {
            format!("connection_info.{field}")
        };
        Self {
            field,
            message: message.into(),
        }
    }
}

/// A connector's database, resolved: the backend and the parts of its URL.
#[derive(Clone, PartialEq)]
pub struct DatabaseUrl {
    backend: Backend,
    driver: String,
    username: Option<String>,
    password: Option<SecretString>,
    host: Option<String>,
    port: Option<u16>,
    database: Option<String>,
    query: BTreeMap<String, String>,
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseUrl")
            .field("backend", &self.backend)
            .field("driver", &self.driver)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "********"))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("query", &self.query)
            .finish()
    }
}

impl DatabaseUrl {
    /// Resolves a connector's `connection_info` and `connect_args`.
    ///
    /// # Errors
    /// [`SqlError`] for an unserved driver, a malformed URL or an unusable argument.
    pub fn new(
        info: &ConnectionInfo,
        connect_args: Option<&Map<String, Value>>,
    ) -> Result<Self, SqlError> {
        let mut url = match info {
            ConnectionInfo::Components(parts) => Self::from_components(parts)?,
            ConnectionInfo::Url(url) => Self::parse(url.expose_secret())?,
        };
        for (key, value) in connect_args.into_iter().flatten() {
            if url.backend == Backend::Sqlite && !SQLITE_SETTINGS.contains(&key.as_str()) {
                return Err(SqlError::new(
                    &format!("connect_args.{key}"),
                    "is not a SQLite setting served here (mode, timeout, check_same_thread are)",
                ));
            }
            let value = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => {
                    return Err(SqlError::new(
                        &format!("connect_args.{key}"),
                        "only text, number and boolean arguments can be passed to the database; give this one in the URL's query instead",
                    ));
                }
            };
            url.query.insert(key.clone(), value);
        }
        if url.backend == Backend::Sqlite {
            url.check_sqlite()?;
        }
        Ok(url)
    }

    fn from_components(parts: &ConnectionComponents) -> Result<Self, SqlError> {
        let backend = Backend::for_driver(&parts.driver)?;
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        Ok(Self {
            backend,
            driver: parts.driver.trim().to_owned(),
            username: non_empty(&parts.username),
            password: parts.password.clone(),
            host: non_empty(&parts.host),
            port: parts.port,
            database: non_empty(&parts.database),
            query: parts.query.clone().unwrap_or_default(),
        })
    }

    /// Parses a SQLAlchemy URL, `dialect[+driver]://[user[:password]@][host][:port][/database][?query]`.
    fn parse(text: &str) -> Result<Self, SqlError> {
        let text = text.trim();
        let Some((driver, rest)) = text.split_once("://") else {
            return Err(SqlError::new(
                "",
                "a URL must look like dialect+driver://user:password@host:port/database",
            ));
        };
        let backend = Backend::for_driver(driver)?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, database) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((user, host)) => (Some(user), host),
            None => (None, authority),
        };
        let decode = |field: &str, s: &str| {
            percent_decode_str(s)
                .decode_utf8()
                .map(|d| d.into_owned())
                .map_err(|_| SqlError::new(field, "is not valid percent-encoded UTF-8"))
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((user, pass)) => (
                    Some(decode("username", user)?),
                    Some(SecretString::new(decode("password", pass)?)),
                ),
                None => (Some(decode("username", info)?), None),
            },
        };
        let (host, port) = split_host_port(hostport)?;
        let mut query_map = BTreeMap::new();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            query_map.insert(key.into_owned(), value.into_owned());
        }
        Ok(Self {
            backend,
            driver: driver.to_owned(),
            username: username.filter(|u| !u.is_empty()),
            password,
            host: (!host.is_empty()).then(|| host.to_owned()),
            port,
            database: Some(decode("database", database)?).filter(|d| !d.is_empty()),
            query: query_map,
        })
    }

    fn check_sqlite(&self) -> Result<(), SqlError> {
        if self.host.is_some() || self.username.is_some() || self.password.is_some() {
            return Err(SqlError::new(
                "",
                "a SQLite database is a file: give its path as the database, without host, user or password",
            ));
        }
        for key in self.query.keys() {
            if !SQLITE_SETTINGS.contains(&key.as_str()) {
                return Err(SqlError::new(
                    &format!("query.{key}"),
                    "is not a SQLite setting served here (mode, timeout, check_same_thread are)",
                ));
            }
        }
        Ok(())
    }

    /// The sqlx backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// SQLAlchemy's `dialect+driver` as the block names it.
    pub fn driver(&self) -> &str {
        &self.driver
    }

    /// The URL as SQLAlchemy writes it (`postgresql+psycopg2://user:p%40ss@host:5432/db?…`):
    /// user name, password and database percent-encoded, the query appended. Secret, since
    /// it holds the password.
    pub fn sqlalchemy_url(&self) -> SecretString {
        SecretString::new(self.render(&self.driver))
    }

    /// The URL sqlx connects to (`postgres://…`, `mysql://…`, `sqlite://…`). Secret, since it
    /// holds the password.
    pub fn sqlx_url(&self) -> SecretString {
        if self.backend == Backend::Sqlite {
            // sqlx takes the path as it is after `sqlite://`.
            let mut url = match self.sqlite_path() {
                Some(path) => format!("sqlite://{path}"),
                None => "sqlite::memory:".to_owned(),
            };
            // sqlx reads `mode` from the URL; the lock timeout is set on connect.
            if let Some(mode) = self.query.get("mode") {
                url.push_str("?mode=");
                url.extend(utf8_percent_encode(mode, COMPONENT));
            }
            return SecretString::new(url);
        }
        SecretString::new(self.render(self.backend.sqlx_scheme()))
    }

    /// The SQLite file, or `None` for an in-memory database.
    pub fn sqlite_path(&self) -> Option<&str> {
        self.database.as_deref().filter(|d| *d != ":memory:")
    }

    fn render(&self, scheme: &str) -> String {
        let mut url = format!("{scheme}://");
        if let Some(user) = &self.username {
            url.extend(utf8_percent_encode(user, COMPONENT));
            if let Some(password) = &self.password {
                url.push(':');
                url.extend(utf8_percent_encode(password.expose_secret(), COMPONENT));
            }
            url.push('@');
        }
        if let Some(host) = &self.host {
            if host.contains(':') && !host.starts_with('[') {
                url.push_str(&format!("[{host}]"));
            } else {
                url.push_str(host);
            }
        }
        if let Some(port) = self.port {
            url.push_str(&format!(":{port}"));
        }
        if let Some(database) = &self.database {
            url.push('/');
            if self.backend == Backend::Sqlite {
                // A path: its slashes are the path's own.
                url.push_str(database);
            } else {
                url.extend(utf8_percent_encode(database, COMPONENT));
            }
        }
        if !self.query.is_empty() {
            url.push('?');
            url.push_str(
                &form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(&self.query)
                    .finish(),
            );
        }
        url
    }

    /// Opens a pool of connections of the right backend. A failure to connect names the
    /// backend and host, never the password.
    ///
    /// # Errors
    /// [`SqlError`] with field `connection` when the database cannot be reached or refuses.
    pub async fn connect(&self) -> Result<SqlPool, SqlError> {
        let scrub = |e: sqlx::Error| self.connect_error(&e);
        Ok(match self.backend {
            // One connection first, so a refusal is reported at once with its cause
            // rather than as a pool timeout.
            Backend::Postgres => {
                let options =
                    PgConnectOptions::from_str(self.sqlx_url().expose_secret()).map_err(scrub)?;
                PgConnection::connect_with(&options)
                    .await
                    .map_err(scrub)?
                    .close()
                    .await
                    .ok();
                SqlPool::Postgres(
                    PgPoolOptions::new()
                        .acquire_timeout(ACQUIRE_TIMEOUT)
                        .connect_with(options)
                        .await
                        .map_err(scrub)?,
                )
            }
            Backend::MySql => {
                let options = MySqlConnectOptions::from_str(self.sqlx_url().expose_secret())
                    .map_err(scrub)?;
                MySqlConnection::connect_with(&options)
                    .await
                    .map_err(scrub)?
                    .close()
                    .await
                    .ok();
                SqlPool::MySql(
                    MySqlPoolOptions::new()
                        .acquire_timeout(ACQUIRE_TIMEOUT)
                        .connect_with(options)
                        .await
                        .map_err(scrub)?,
                )
            }
            Backend::Sqlite => {
                let (options, pool) = match self.sqlite_path() {
                    // Each connection to `:memory:` is a database of its own: one connection, kept.
                    None => (
                        SqliteConnectOptions::from_str("sqlite::memory:").map_err(scrub)?,
                        SqlitePoolOptions::new()
                            .max_connections(1)
                            .min_connections(1)
                            .idle_timeout(None)
                            .max_lifetime(None),
                    ),
                    Some(path) => (
                        SqliteConnectOptions::new()
                            .filename(path)
                            .create_if_missing(true),
                        SqlitePoolOptions::new(),
                    ),
                };
                let options = self.sqlite_settings(options)?;
                SqlPool::Sqlite(pool.connect_with(options).await.map_err(scrub)?)
            }
        })
    }

    fn sqlite_settings(
        &self,
        mut options: SqliteConnectOptions,
    ) -> Result<SqliteConnectOptions, SqlError> {
        if let Some(mode) = self.query.get("mode") {
            options = match mode.as_str() {
                "ro" => options.read_only(true).create_if_missing(false),
                "rw" => options.create_if_missing(false),
                "rwc" => options.create_if_missing(true),
                "memory" => options.in_memory(true),
                _ => return Err(SqlError::new("query.mode", "must be ro, rw, rwc or memory")),
            };
        }
        if let Some(timeout) = self.query.get("timeout") {
            let seconds: f64 = timeout
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                .ok_or_else(|| SqlError::new("query.timeout", "must be a number of seconds"))?;
            options = options.busy_timeout(std::time::Duration::from_secs_f64(seconds));
        }
        Ok(options)
    }

    fn connect_error(&self, error: &sqlx::Error) -> SqlError {
        let mut text = error.to_string();
        if let Some(password) = &self.password {
            let password = password.expose_secret();
            if !password.is_empty() {
                text = text.replace(password, "********");
                let encoded: String = utf8_percent_encode(password, COMPONENT).collect();
                text = text.replace(&encoded, "********");
            }
        }
        let place = match (&self.host, self.sqlite_path()) {
            (Some(host), _) if host.contains(':') => format!(
                " at [{host}]{}",
                self.port.map(|p| format!(":{p}")).unwrap_or_default()
            ),
            (Some(host), _) => format!(
                " at {host}{}",
                self.port.map(|p| format!(":{p}")).unwrap_or_default()
            ),
            (None, Some(path)) => format!(" at {path}"),
            (None, None) => String::new(),
        };
        SqlError::new(
            "connection",
            format!("cannot connect to {}{place}: {text}", self.backend),
        )
    }
}

fn split_host_port(hostport: &str) -> Result<(&str, Option<u16>), SqlError> {
    let bad_port = || SqlError::new("port", "must be an integer from 0 to 65535");
    if let Some(rest) = hostport.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(SqlError::new("host", "an IPv6 address needs its closing ]"));
        };
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().map_err(|_| bad_port())?),
            None if after.is_empty() => None,
            None => {
                return Err(SqlError::new(
                    "host",
                    "unexpected text after the IPv6 address",
                ));
            }
        };
        return Ok((host, port));
    }
    match hostport.rsplit_once(':') {
        Some((host, port)) => Ok((host, Some(port.parse().map_err(|_| bad_port())?))),
        None => Ok((hostport, None)),
    }
}

/// An open pool of the connector's backend.
#[derive(Debug, Clone)]
pub enum SqlPool {
    /// PostgreSQL.
    Postgres(PgPool),
    /// MySQL or MariaDB.
    MySql(MySqlPool),
    /// SQLite.
    Sqlite(SqlitePool),
}

impl SqlPool {
    /// The backend.
    pub fn backend(&self) -> Backend {
        match self {
            Self::Postgres(_) => Backend::Postgres,
            Self::MySql(_) => Backend::MySql,
            Self::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// The PostgreSQL pool.
    ///
    /// # Errors
    /// [`SqlError`] naming the backend the connector has instead.
    pub fn postgres(&self) -> Result<&PgPool, SqlError> {
        match self {
            Self::Postgres(pool) => Ok(pool),
            other => Err(other.wrong_backend(Backend::Postgres)),
        }
    }

    /// The MySQL pool.
    ///
    /// # Errors
    /// [`SqlError`] naming the backend the connector has instead.
    pub fn mysql(&self) -> Result<&MySqlPool, SqlError> {
        match self {
            Self::MySql(pool) => Ok(pool),
            other => Err(other.wrong_backend(Backend::MySql)),
        }
    }

    /// The SQLite pool.
    ///
    /// # Errors
    /// [`SqlError`] naming the backend the connector has instead.
    pub fn sqlite(&self) -> Result<&SqlitePool, SqlError> {
        match self {
            Self::Sqlite(pool) => Ok(pool),
            other => Err(other.wrong_backend(Backend::Sqlite)),
        }
    }

    fn wrong_backend(&self, wanted: Backend) -> SqlError {
        SqlError::new(
            "driver",
            format!("the connector is for {}, not {wanted}", self.backend()),
        )
    }

    /// Closes every connection.
    pub async fn close(&self) {
        match self {
            Self::Postgres(pool) => pool.close().await,
            Self::MySql(pool) => pool.close().await,
            Self::Sqlite(pool) => pool.close().await,
        }
    }
}

/// The capabilities of both connector blocks.
pub trait Connect {
    /// The block's `connection_info`.
    fn connection_info(&self) -> &ConnectionInfo;

    /// The block's `connect_args`.
    fn connect_args(&self) -> Option<&Map<String, Value>>;

    /// The resolved URL: backend, SQLAlchemy and sqlx forms.
    ///
    /// # Errors
    /// [`SqlError`] for an unserved driver, a malformed URL or an unusable argument.
    fn database_url(&self) -> Result<DatabaseUrl, SqlError> {
        DatabaseUrl::new(self.connection_info(), self.connect_args())
    }

    /// Opens an sqlx pool for the block's database.
    ///
    /// # Errors
    /// [`SqlError`] for a connector that cannot be served or a database that cannot be
    /// reached.
    fn connect(&self) -> impl Future<Output = Result<SqlPool, SqlError>> + Send
    where
        Self: Sync,
    {
        async move { self.database_url()?.connect().await }
    }
}

impl Connect for SqlAlchemyConnector {
    fn connection_info(&self) -> &ConnectionInfo {
        &self.connection_info
    }

    fn connect_args(&self) -> Option<&Map<String, Value>> {
        self.connect_args.as_ref()
    }
}

impl Connect for AsyncSqlAlchemyConnector {
    fn connection_info(&self) -> &ConnectionInfo {
        &self.connection_info
    }

    fn connect_args(&self) -> Option<&Map<String, Value>> {
        self.connect_args.as_ref()
    }
}
