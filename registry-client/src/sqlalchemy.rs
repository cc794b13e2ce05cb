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
use std::sync::OnceLock;
use std::time::Duration;

use regex::Regex;

use block_types::catalog::{
    AsyncSqlAlchemyConnector, ConnectionComponents, ConnectionInfo, SqlAlchemyConnector,
};
use block_types::secret::SecretString;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde_json::{Map, Value};
use sqlx::ConnectOptions as _;
use sqlx::Connection as _;
use sqlx::mysql::MySqlPool;
use sqlx::postgres::PgPool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

/// What is percent-encoded in a user name, password or database name.
use crate::encoding::UNRESERVED as COMPONENT;

/// The SQLite settings a connector may give (in its URL's query or its `connect_args`):
/// `mode` (`ro`, `rw`, `rwc`, `memory`), `timeout` (seconds to wait on a lock), `uri`
/// (the database is a `file:` URI) and `check_same_thread` (Python's; ignored).
const SQLITE_SETTINGS: [&str; 4] = ["mode", "timeout", "uri", "check_same_thread"];

/// How long a connection may take unless `connect_timeout` says otherwise.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// What is encoded in a SQLite path: `%`, `?`, `#` and controls; its slashes are its own.
const SQLITE_PATH: &AsciiSet = &CONTROLS.add(b'%').add(b'?').add(b'#');

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
    /// The URL's own query, as SQLAlchemy has it.
    query: BTreeMap<String, String>,
    /// What sqlx is given: the query and `connect_args`, in sqlx's names.
    params: BTreeMap<String, String>,
    connect_timeout: Option<Duration>,
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Query values may be secret (`sslpassword`, a token): keys only.
        f.debug_struct("DatabaseUrl")
            .field("backend", &self.backend)
            .field("driver", &self.driver)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "********"))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("query", &self.query.keys().collect::<Vec<_>>())
            .field("params", &self.params.keys().collect::<Vec<_>>())
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// What one query or `connect_args` entry means to sqlx.
enum Setting {
    /// A URL parameter of sqlx's.
    Param(&'static str, String),
    /// A switch resolved once every setting is known (TLS verification, SQLite's `uri`).
    Flag(Flag, bool),
    /// How long to wait for a connection.
    Timeout(Duration),
    /// Meaningful only to Python (`check_same_thread`, `uri`).
    Ignored,
}

/// The switches of [`Setting::Flag`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flag {
    /// pymysql's `ssl_verify_cert`.
    VerifyCert,
    /// pymysql's `ssl_verify_identity` / `ssl_check_hostname`.
    CheckHostname,
    /// SQLite's `uri`: the database is a `file:` URI, and `mode` applies.
    Uri,
}

const POSTGRES_SETTINGS: &str = "sslmode (or asyncpg's ssl), sslrootcert, sslcert, sslkey, application_name, options, host, port, statement-cache-capacity, connect_timeout";
const MYSQL_SETTINGS: &str = "ssl-mode (or ssl_mode), ssl-ca (ssl_ca), ssl-cert (ssl_cert), ssl-key (ssl_key), ssl_verify_cert, ssl_verify_identity (ssl_check_hostname), charset, collation, timezone, socket (unix_socket), statement-cache-capacity, connect_timeout";

/// With no connection time limit (`connect_timeout` of 0 or less, as libpq reads it).
const NO_LIMIT: Duration = Duration::from_secs(24 * 60 * 60);

/// A `connect_timeout`: seconds, where 0 or less means no limit.
fn connect_timeout(value: &str) -> Result<Duration, String> {
    match value.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s <= 0.0 => Ok(NO_LIMIT),
        _ => seconds(value),
    }
}

fn seconds(value: &str) -> Result<Duration, String> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| "must be a number of seconds".to_owned())
}

fn truthy(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("must be true or false".to_owned()),
    }
}

/// Maps a SQLAlchemy/driver setting to sqlx's; an unknown one is refused rather than
/// silently dropped (a dropped TLS setting would weaken the connection).
fn setting(backend: Backend, key: &str, value: &str) -> Result<Setting, String> {
    let param = |name: &'static str| Ok(Setting::Param(name, value.to_owned()));
    match (backend, key) {
        (Backend::Postgres | Backend::MySql, "connect_timeout") => {
            connect_timeout(value).map(Setting::Timeout)
        }
        (Backend::Postgres, "sslmode" | "ssl-mode") => match value {
            "disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full" => {
                param("sslmode")
            }
            _ => {
                Err("must be disable, allow, prefer, require, verify-ca or verify-full".to_owned())
            }
        },
        (Backend::Postgres, "ssl") => {
            // asyncpg: `True` is a default TLS context (verify-full); `'require'` does not
            // verify.
            let mode = match value.trim().to_ascii_lowercase().as_str() {
                "true" => "verify-full",
                "require" => "require",
                "false" | "disable" => "disable",
                mode @ ("allow" | "prefer" | "verify-ca" | "verify-full") => {
                    return Ok(Setting::Param("sslmode", mode.to_owned()));
                }
                _ => return Err("must be true, false, disable, allow, prefer, require, verify-ca or verify-full".to_owned()),
            };
            Ok(Setting::Param("sslmode", mode.to_owned()))
        }
        (Backend::Postgres, "sslrootcert" | "ssl-root-cert") => param("sslrootcert"),
        (Backend::Postgres, "sslcert" | "ssl-cert") => param("sslcert"),
        (Backend::Postgres, "sslkey" | "ssl-key") => param("sslkey"),
        (Backend::Postgres, "application_name") => param("application_name"),
        (Backend::Postgres, "options") => param("options"),
        // A socket directory (`?host=/var/run/postgresql`) or a host given in the query.
        (Backend::Postgres, "host") => param("host"),
        (Backend::Postgres, "port") => value
            .trim()
            .parse::<u16>()
            .map(|_| Setting::Param("port", value.trim().to_owned()))
            .map_err(|_| "must be an integer from 0 to 65535".to_owned()),
        (Backend::Postgres | Backend::MySql, "statement-cache-capacity") => {
            param("statement-cache-capacity")
        }
        (Backend::MySql, "ssl-mode" | "ssl_mode" | "sslmode") => {
            let mode = value.trim().to_ascii_uppercase().replace('-', "_");
            match mode.as_str() {
                "DISABLED" | "PREFERRED" | "REQUIRED" | "VERIFY_CA" | "VERIFY_IDENTITY" => {
                    Ok(Setting::Param("ssl-mode", mode))
                }
                _ => Err(
                    "must be DISABLED, PREFERRED, REQUIRED, VERIFY_CA or VERIFY_IDENTITY"
                        .to_owned(),
                ),
            }
        }
        (Backend::MySql, "ssl-ca" | "ssl_ca") => param("ssl-ca"),
        (Backend::MySql, "ssl-cert" | "ssl_cert") => param("ssl-cert"),
        (Backend::MySql, "ssl-key" | "ssl_key") => param("ssl-key"),
        (Backend::MySql, "ssl_verify_cert") => Ok(Setting::Flag(Flag::VerifyCert, truthy(value)?)),
        (Backend::MySql, "ssl_verify_identity" | "ssl_check_hostname") => {
            Ok(Setting::Flag(Flag::CheckHostname, truthy(value)?))
        }
        (Backend::MySql, "charset") => param("charset"),
        (Backend::MySql, "collation") => param("collation"),
        (Backend::MySql, "timezone") => param("timezone"),
        (Backend::MySql, "socket" | "unix_socket") => param("socket"),
        (Backend::Sqlite, "mode") => match value {
            "ro" | "rw" | "rwc" | "memory" => param("mode"),
            _ => Err("must be ro, rw, rwc or memory".to_owned()),
        },
        (Backend::Sqlite, "timeout") => {
            seconds(value).map(|_| Setting::Param("timeout", value.to_owned()))
        }
        (Backend::Sqlite, "uri") => Ok(Setting::Flag(Flag::Uri, truthy(value)?)),
        (Backend::Sqlite, "check_same_thread") => Ok(Setting::Ignored),
        (Backend::Postgres, _) => Err(format!(
            "is not a PostgreSQL setting served here ({POSTGRES_SETTINGS} are)"
        )),
        (Backend::MySql, _) => Err(format!(
            "is not a MySQL setting served here ({MYSQL_SETTINGS} are)"
        )),
        (Backend::Sqlite, _) => Err(format!(
            "is not a SQLite setting served here ({} are)",
            SQLITE_SETTINGS.join(", ")
        )),
    }
}

impl DatabaseUrl {
    /// Resolves a connector's `connection_info` and `connect_args`.
    ///
    /// # Errors
    /// [`SqlError`] for an unserved driver, a malformed URL or an unusable or unknown
    /// setting (naming `connection_info.query.<key>` or `connect_args.<key>`).
    pub fn new(
        info: &ConnectionInfo,
        connect_args: Option<&Map<String, Value>>,
    ) -> Result<Self, SqlError> {
        let mut url = match info {
            ConnectionInfo::Components(parts) => Self::from_components(parts)?,
            ConnectionInfo::Url(url) => Self::parse(url.expose_secret())?,
        };
        if url.backend != Backend::Sqlite
            && let Some(password) = url.query.remove("password")
        {
            if url.password.is_some() {
                return Err(SqlError::new(
                    "query.password",
                    "the URL gives a password twice; keep the one before the @",
                ));
            }
            url.password = Some(SecretString::new(password));
        }
        // (field to blame, key, value), from the URL's query and from connect_args.
        let mut given: Vec<(String, String, String)> = url
            .query
            .iter()
            .map(|(k, v)| (format!("query.{k}"), k.clone(), v.clone()))
            .collect();
        for (key, value) in connect_args.into_iter().flatten() {
            let value = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => {
                    return Err(SqlError::new(
                        &format!("connect_args.{key}"),
                        "only text, number and boolean arguments can be passed to the database",
                    ));
                }
            };
            given.push((format!("connect_args.{key}"), key.clone(), value));
        }
        let mut flags: Vec<(Flag, bool)> = Vec::new();
        let mut mode_field = None;
        for (field, key, value) in given {
            match setting(url.backend, &key, &value)
                .map_err(|message| SqlError::new(&field, message))?
            {
                Setting::Param(name, value) => {
                    if url.backend == Backend::Sqlite && name == "mode" {
                        mode_field = Some(field.clone());
                    }
                    url.params.insert(name.to_owned(), value);
                }
                Setting::Flag(flag, on) => flags.push((flag, on)),
                Setting::Timeout(timeout) => url.connect_timeout = Some(timeout),
                Setting::Ignored => {}
            }
        }
        let flag = |wanted: Flag| {
            flags
                .iter()
                .rev()
                .find(|(f, _)| *f == wanted)
                .map(|(_, on)| *on)
        };
        match url.backend {
            Backend::Postgres => {
                // libpq verifies the CA when `require` comes with a root certificate.
                if url.params.get("sslmode").is_some_and(|m| m == "require")
                    && url.params.contains_key("sslrootcert")
                {
                    url.params
                        .insert("sslmode".to_owned(), "verify-ca".to_owned());
                }
            }
            Backend::MySql => {
                // As pymysql: a CA means the certificate is verified, and the host name
                // too unless switched off; an explicit mode wins.
                let check_hostname = flag(Flag::CheckHostname);
                let mode = if url.params.contains_key("ssl-mode") {
                    None
                } else if flag(Flag::VerifyCert) == Some(false) {
                    // Asked for no verification: encrypted when a CA or key is given.
                    ["ssl-ca", "ssl-cert", "ssl-key"]
                        .iter()
                        .any(|k| url.params.contains_key(*k))
                        .then_some("REQUIRED")
                } else if url.params.contains_key("ssl-ca") || flag(Flag::VerifyCert) == Some(true)
                {
                    Some(
                        if check_hostname == Some(false)
                            || (!url.params.contains_key("ssl-ca") && check_hostname.is_none())
                        {
                            "VERIFY_CA"
                        } else {
                            "VERIFY_IDENTITY"
                        },
                    )
                } else if check_hostname == Some(true) {
                    Some("VERIFY_IDENTITY")
                } else {
                    None
                };
                if let Some(mode) = mode {
                    url.params.insert("ssl-mode".to_owned(), mode.to_owned());
                }
            }
            Backend::Sqlite => {
                let uri = flag(Flag::Uri).unwrap_or(false);
                if let Some(field) = mode_field.filter(|_| !uri) {
                    return Err(SqlError::new(
                        &field,
                        "takes effect only with uri=true, as in SQLAlchemy; add uri=true (and write the database as file:path) or drop mode",
                    ));
                }
                url.check_sqlite(uri)?;
            }
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
            params: BTreeMap::new(),
            connect_timeout: None,
        })
    }

    /// Parses a SQLAlchemy URL with SQLAlchemy's own pattern
    /// (`dialect[+driver]://[user[:password]@][host][:port][/database][?query]`): the
    /// password runs to the last character before the `@` that ends the user part, so it
    /// may hold `/`, `?` or `#` unencoded; user name, password and database are
    /// percent-decoded.
    fn parse(text: &str) -> Result<Self, SqlError> {
        static PATTERN: OnceLock<Regex> = OnceLock::new();
        let pattern = PATTERN.get_or_init(|| {
            Regex::new(
                r"(?sx)
                ^(?P<name>[\w\+]+)://
                (?:(?P<username>[^:/]*)(?::(?P<password>[^@]*))?@)?
                (?:(?:\[(?P<ipv6host>[^/\?]+)\]|(?P<ipv4host>[^/:\?]+))?(?::(?P<port>[^/\?]*))?)?
                (?:/(?P<database>[^\?]*))?
                (?:\?(?P<query>.*))?$",
            )
            .expect("SQLAlchemy's URL pattern compiles")
        });
        let text = text.trim();
        let Some(parts) = pattern.captures(text) else {
            return Err(SqlError::new(
                "",
                "a URL must look like dialect+driver://user:password@host:port/database",
            ));
        };
        let part = |name: &str| parts.name(name).map(|m| m.as_str());
        let driver = part("name").unwrap_or_default();
        let backend = Backend::for_driver(driver)?;
        let decode = |field: &str, s: &str| {
            percent_decode_str(s)
                .decode_utf8()
                .map(|d| d.into_owned())
                .map_err(|_| SqlError::new(field, "is not valid percent-encoded UTF-8"))
        };
        let port = match part("port").filter(|p| !p.is_empty()) {
            None => None,
            Some(p) => Some(
                p.parse()
                    .map_err(|_| SqlError::new("port", "must be an integer from 0 to 65535"))?,
            ),
        };
        let mut query = BTreeMap::new();
        for (key, value) in form_urlencoded::parse(part("query").unwrap_or_default().as_bytes()) {
            query.insert(key.into_owned(), value.into_owned());
        }
        Ok(Self {
            backend,
            driver: driver.to_owned(),
            username: part("username")
                .map(|u| decode("username", u))
                .transpose()?
                .filter(|u| !u.is_empty()),
            password: part("password")
                .map(|p| decode("password", p).map(SecretString::new))
                .transpose()?,
            host: part("ipv6host")
                .or(part("ipv4host"))
                .filter(|h| !h.is_empty())
                .map(str::to_owned),
            port,
            database: part("database")
                .map(|d| decode("database", d))
                .transpose()?
                .filter(|d| !d.is_empty()),
            query,
            params: BTreeMap::new(),
            connect_timeout: None,
        })
    }

    fn check_sqlite(&mut self, uri: bool) -> Result<(), SqlError> {
        if self.host.is_some() || self.username.is_some() || self.password.is_some() {
            return Err(SqlError::new(
                "",
                "a SQLite database is a file: give its path as the database, without host, user or password",
            ));
        }
        // `uri=true`: the database is a `file:` URI; its path is what sqlx opens.
        if uri
            && let Some(path) = self
                .database
                .as_deref()
                .and_then(|d| d.strip_prefix("file:"))
        {
            let path = path.split('?').next().unwrap_or(path).to_owned();
            self.database = Some(path).filter(|p| !p.is_empty());
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

    /// The URL as SQLAlchemy has it (`postgresql+psycopg2://user:p%40ss@host:5432/db?…`):
    /// user name, password and database percent-encoded, the URL's own query appended
    /// (`connect_args` are not part of it, as in SQLAlchemy). Secret, since it holds the
    /// password.
    pub fn sqlalchemy_url(&self) -> SecretString {
        SecretString::new(self.render(&self.driver, &self.query))
    }

    /// The URL sqlx connects to (`postgres://…`, `mysql://…`, `sqlite://…`), with the query
    /// and `connect_args` in sqlx's names. Secret, since it holds the password.
    pub fn sqlx_url(&self) -> SecretString {
        if self.backend == Backend::Sqlite {
            // sqlx percent-decodes what follows `sqlite://`.
            let mut url = match self.sqlite_path() {
                Some(path) => format!("sqlite://{}", utf8_percent_encode(path, SQLITE_PATH)),
                None => "sqlite::memory:".to_owned(),
            };
            // sqlx reads `mode` from the URL; the lock timeout is set on connect.
            if let Some(mode) = self.params.get("mode") {
                url.push_str("?mode=");
                url.extend(utf8_percent_encode(mode, COMPONENT));
            }
            return SecretString::new(url);
        }
        SecretString::new(self.render(self.backend.sqlx_scheme(), &self.params))
    }

    /// The SQLite file, or `None` for an in-memory database.
    pub fn sqlite_path(&self) -> Option<&str> {
        self.database.as_deref().filter(|d| *d != ":memory:")
    }

    /// How long a connection may take (`connect_timeout`), when given.
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout
    }

    fn render(&self, scheme: &str, query: &BTreeMap<String, String>) -> String {
        let mut url = format!("{scheme}://");
        let userinfo = self.username.is_some() || self.password.is_some();
        if userinfo {
            url.extend(utf8_percent_encode(
                self.username.as_deref().unwrap_or_default(),
                COMPONENT,
            ));
            if let Some(password) = &self.password {
                url.push(':');
                url.extend(utf8_percent_encode(password.expose_secret(), COMPONENT));
            }
            url.push('@');
        }
        if self.host.is_none() && userinfo && scheme == self.backend.sqlx_scheme() {
            // A URL with a user needs a host; the socket or host parameter (`?host=/run/…`,
            // `?socket=…`) still decides where sqlx connects.
            url.push_str("localhost");
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
                url.extend(utf8_percent_encode(database, SQLITE_PATH));
            } else {
                url.extend(utf8_percent_encode(database, COMPONENT));
            }
        }
        if !query.is_empty() {
            url.push('?');
            url.push_str(
                &form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(query)
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
        let timeout = self.connect_timeout.unwrap_or(ACQUIRE_TIMEOUT);
        Ok(match self.backend {
            Backend::Postgres => SqlPool::Postgres(
                open_pool::<sqlx::Postgres>(self.sqlx_url().expose_secret(), timeout)
                    .await
                    .map_err(scrub)?,
            ),
            Backend::MySql => SqlPool::MySql(
                open_pool::<sqlx::MySql>(self.sqlx_url().expose_secret(), timeout)
                    .await
                    .map_err(scrub)?,
            ),
            Backend::Sqlite => {
                let memory = self.params.get("mode").is_some_and(|m| m == "memory");
                let options = match self.sqlite_path() {
                    None => SqliteConnectOptions::from_str("sqlite::memory:").map_err(scrub)?,
                    Some(path) => SqliteConnectOptions::new()
                        .filename(path)
                        .create_if_missing(true),
                };
                let pool = if memory || self.sqlite_path().is_none() {
                    // Each connection to a memory database is a database of its own: one
                    // connection, kept.
                    SqlitePoolOptions::new()
                        .max_connections(1)
                        .min_connections(1)
                        .idle_timeout(None)
                        .max_lifetime(None)
                } else {
                    SqlitePoolOptions::new()
                };
                let options = self.sqlite_settings(options);
                SqlPool::Sqlite(pool.connect_with(options).await.map_err(scrub)?)
            }
        })
    }

    fn sqlite_settings(&self, mut options: SqliteConnectOptions) -> SqliteConnectOptions {
        // Both values were checked by `setting`.
        options = match self.params.get("mode").map(String::as_str) {
            Some("ro") => options.read_only(true).create_if_missing(false),
            Some("rw") => options.create_if_missing(false),
            Some("memory") => options.in_memory(true),
            _ => options,
        };
        if let Some(timeout) = self.params.get("timeout").and_then(|t| seconds(t).ok()) {
            options = options.busy_timeout(timeout);
        }
        options
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

/// A pool for a PostgreSQL or MySQL URL. One connection is opened first, so a refusal is
/// reported at once with its cause rather than as a pool timeout.
async fn open_pool<DB: sqlx::Database>(
    url: &str,
    timeout: Duration,
) -> Result<sqlx::Pool<DB>, sqlx::Error>
where
    <DB::Connection as sqlx::Connection>::Options: FromStr<Err = sqlx::Error>,
{
    let options = <DB::Connection as sqlx::Connection>::Options::from_str(url)?;
    within(timeout, options.connect()).await?.close().await.ok();
    sqlx::pool::PoolOptions::<DB>::new()
        .acquire_timeout(timeout)
        .connect_with(options)
        .await
}

/// `future`, or a timeout error after `timeout`.
async fn within<T>(
    timeout: Duration,
    future: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(timeout, future)
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut))
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
