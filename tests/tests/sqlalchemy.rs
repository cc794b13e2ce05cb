//! `registry_client::sqlalchemy` against real databases: SQLAlchemy URLs built from parts
//! and parsed from text, the dialect → sqlx backend mapping for every catalog driver,
//! SQLite files and memory, PostgreSQL and MySQL/MariaDB servers, and errors that never
//! leak the password.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::str::FromStr as _;
use std::time::Duration;

use block_types::SecretString;
use block_types::catalog::{
    ASYNC_DRIVERS, AsyncSqlAlchemyConnector, ConnectionComponents, ConnectionInfo, SYNC_DRIVERS,
    SqlAlchemyConnector,
};
use registry_client::sqlalchemy::{Backend, Connect as _, DatabaseUrl, SqlError, SqlPool};
use serde_json::{Map, Value, json};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{Connection as _, Executor as _};

const CANARY: &str = "canary-sql-7f3a";
/// Every character SQLAlchemy must percent-encode in a password, and the canary.
const PASSWORD: &str = "p@ss:w/rd%?#&canary-sql-7f3a";
/// `PASSWORD` as RFC 3986 percent-encodes it.
const PASSWORD_ENCODED: &str = "p%40ss%3Aw%2Frd%25%3F%23%26canary-sql-7f3a";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Decodes `%XX` escapes (as `url::Url` leaves them in user names and passwords).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn parts(driver: &str) -> ConnectionComponents {
    ConnectionComponents {
        driver: driver.to_owned(),
        database: None,
        username: None,
        password: None,
        host: None,
        port: None,
        query: None,
    }
}

/// The `etl user@corp` login (with `PASSWORD`) on `db.example.com:6543`, database
/// `sales db/eu`, with a query: every part that needs percent-encoding.
fn etl_components(driver: &str) -> ConnectionComponents {
    ConnectionComponents {
        username: Some("etl user@corp".to_owned()),
        password: Some(SecretString::from(PASSWORD)),
        host: Some("db.example.com".to_owned()),
        port: Some(6543),
        database: Some("sales db/eu".to_owned()),
        query: query(&[("sslmode", "require"), ("application_name", "blocks test")]),
        ..parts(driver)
    }
}

fn url_info(url: &str) -> ConnectionInfo {
    ConnectionInfo::Url(SecretString::from(url))
}

fn sync_connector(info: ConnectionInfo, args: Option<Value>) -> SqlAlchemyConnector {
    SqlAlchemyConnector {
        connection_info: info,
        connect_args: args.map(as_map),
        fetch_size: 1,
    }
}

fn async_connector(info: ConnectionInfo, args: Option<Value>) -> AsyncSqlAlchemyConnector {
    AsyncSqlAlchemyConnector {
        connection_info: info,
        connect_args: args.map(as_map),
        fetch_size: 1,
    }
}

fn as_map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn resolve(info: &ConnectionInfo) -> DatabaseUrl {
    DatabaseUrl::new(info, None).unwrap_or_else(|e| panic!("{info:?}: {e}"))
}

fn refused(info: &ConnectionInfo, args: Option<Value>) -> SqlError {
    match DatabaseUrl::new(info, args.map(as_map).as_ref()) {
        Ok(url) => panic!("{info:?} was accepted as {url:?}"),
        Err(e) => e,
    }
}

fn sqlalchemy(url: &DatabaseUrl) -> String {
    url.sqlalchemy_url().expose_secret().to_owned()
}

fn sqlx_url(url: &DatabaseUrl) -> String {
    url.sqlx_url().expose_secret().to_owned()
}

fn query(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

/// The number `sql` selects on a SQLite pool.
async fn sqlite_number(pool: &sqlx::SqlitePool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// A pool on the SQLite database at `path`, through a sync connector's URL form.
async fn open_sqlite_file(path: &str) -> SqlPool {
    sync_connector(url_info(&format!("sqlite:///{path}")), None)
        .connect()
        .await
        .unwrap()
}

/// Asserts that no rendering of `text` holds the password, raw or encoded.
#[track_caller]
fn assert_no_password(what: &str, text: &str) {
    for secret in [CANARY, PASSWORD, PASSWORD_ENCODED] {
        assert!(!text.contains(secret), "{what} leaks {secret:?}: {text}");
    }
}

/// Awaits a spawned test body, then re-raises its panic (after the caller cleaned up).
fn rethrow(outcome: Result<(), tokio::task::JoinError>) {
    if let Err(e) = outcome {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("test body did not finish: {e}");
    }
}

// ---------------------------------------------------------------------------------------
// 1. URL building
// ---------------------------------------------------------------------------------------

#[test]
fn password_constants_agree() {
    assert!(PASSWORD.contains(CANARY));
    assert_eq!(encode(PASSWORD), PASSWORD_ENCODED);
    assert_eq!(decode(PASSWORD_ENCODED), PASSWORD);
}

#[test]
fn components_percent_encode_credentials_and_append_the_sorted_query() {
    let info = ConnectionInfo::Components(etl_components("postgresql+psycopg2"));
    let url = resolve(&info);
    assert_eq!(url.backend(), Backend::Postgres);
    assert_eq!(url.driver(), "postgresql+psycopg2");
    let tail = format!(
        "://etl%20user%40corp:{PASSWORD_ENCODED}@db.example.com:6543/sales%20db%2Feu?application_name=blocks+test&sslmode=require"
    );
    assert_eq!(sqlalchemy(&url), format!("postgresql+psycopg2{tail}"));
    assert_eq!(sqlx_url(&url), format!("postgres{tail}"));

    // sqlx reads back exactly the parts given.
    let options = PgConnectOptions::from_str(&sqlx_url(&url)).unwrap();
    assert_eq!(options.get_username(), "etl user@corp");
    assert_eq!(options.get_host(), "db.example.com");
    assert_eq!(options.get_port(), 6543);
    assert_eq!(options.get_database(), Some("sales db/eu"));
    assert_eq!(options.get_application_name(), Some("blocks test"));
    assert!(matches!(options.get_ssl_mode(), PgSslMode::Require));

    // MySQL gets its own scheme, the same encoding.
    let mysql = resolve(&ConnectionInfo::Components(ConnectionComponents {
        port: Some(3307),
        database: Some("sales".to_owned()),
        query: None,
        ..etl_components("mysql+pymysql")
    }));
    assert_eq!(mysql.backend(), Backend::MySql);
    assert_eq!(
        sqlx_url(&mysql),
        format!("mysql://etl%20user%40corp:{PASSWORD_ENCODED}@db.example.com:3307/sales")
    );
    assert_eq!(
        sqlalchemy(&mysql),
        format!("mysql+pymysql://etl%20user%40corp:{PASSWORD_ENCODED}@db.example.com:3307/sales")
    );
}

#[test]
fn url_form_parses_back_to_the_same_database() {
    let components = sync_connector(
        ConnectionInfo::Components(etl_components("postgresql+psycopg2")),
        None,
    );
    let from_parts = components.database_url().unwrap();

    let text = format!(
        "postgresql+psycopg2://etl%20user%40corp:{PASSWORD_ENCODED}@db.example.com:6543/sales%20db%2Feu?sslmode=require&application_name=blocks+test"
    );
    let from_url = sync_connector(url_info(&text), None)
        .database_url()
        .unwrap();
    assert_eq!(sqlx_url(&from_url), sqlx_url(&from_parts));
    assert_eq!(sqlalchemy(&from_url), sqlalchemy(&from_parts));
    assert_eq!(from_url, from_parts);
    assert_eq!(from_url.backend(), Backend::Postgres);
    assert_eq!(from_url.driver(), "postgresql+psycopg2");

    // The SQLAlchemy URL a connector renders is itself a URL form that resolves the same.
    let again = resolve(&url_info(from_parts.sqlalchemy_url().expose_secret()));
    assert_eq!(again, from_parts);

    // An async connector in URL form, without a port: the dialect's default port.
    let bare = async_connector(
        url_info("postgresql+asyncpg://reader@db.internal/warehouse"),
        None,
    )
    .database_url()
    .unwrap();
    assert_eq!(sqlx_url(&bare), "postgres://reader@db.internal/warehouse");
    assert_eq!(
        sqlalchemy(&bare),
        "postgresql+asyncpg://reader@db.internal/warehouse"
    );
    let options = PgConnectOptions::from_str(&sqlx_url(&bare)).unwrap();
    assert_eq!(options.get_username(), "reader");
    assert_eq!(options.get_port(), 5432);
    assert_eq!(options.get_database(), Some("warehouse"));
}

#[test]
fn ipv6_hosts_are_bracketed() {
    let info = ConnectionInfo::Components(ConnectionComponents {
        username: Some("u".to_owned()),
        host: Some("::1".to_owned()),
        port: Some(5432),
        database: Some("d".to_owned()),
        ..parts("postgresql+psycopg2")
    });
    let url = resolve(&info);
    assert_eq!(sqlalchemy(&url), "postgresql+psycopg2://u@[::1]:5432/d");
    assert_eq!(sqlx_url(&url), "postgres://u@[::1]:5432/d");
    let options = PgConnectOptions::from_str(&sqlx_url(&url)).unwrap();
    assert_eq!(options.get_port(), 5432);
    assert_eq!(options.get_database(), Some("d"));

    // The URL form with brackets parses to the same host.
    assert_eq!(
        resolve(&url_info("postgresql+psycopg2://u@[::1]:5432/d")),
        url
    );

    // A longer address, no port.
    let long = resolve(&ConnectionInfo::Components(ConnectionComponents {
        host: Some("2001:db8::5".to_owned()),
        database: Some("d".to_owned()),
        ..parts("mysql+asyncmy")
    }));
    assert_eq!(sqlx_url(&long), "mysql://[2001:db8::5]/d");
    assert_eq!(resolve(&url_info("mysql+asyncmy://[2001:db8::5]/d")), long);

    // An unclosed bracket is refused (as SQLAlchemy does, on its port).
    let err = refused(&url_info("postgresql+psycopg2://u@[::1:5432/d"), None);
    assert_eq!(err.field, "connection_info.port");
}

#[test]
fn connect_args_are_appended_to_the_query() {
    let info = ConnectionInfo::Components(ConnectionComponents {
        username: Some("u".to_owned()),
        host: Some("h".to_owned()),
        database: Some("d".to_owned()),
        query: query(&[("sslmode", "disable")]),
        ..parts("postgresql+psycopg2")
    });
    let connector = sync_connector(
        info.clone(),
        Some(json!({"application_name": "etl job", "connect_timeout": 10})),
    );
    let url = connector.database_url().unwrap();
    // connect_args are arguments of the driver's connect call, not part of SQLAlchemy's URL;
    // sqlx gets them as parameters, and connect_timeout bounds the connection.
    assert_eq!(
        sqlalchemy(&url),
        "postgresql+psycopg2://u@h/d?sslmode=disable"
    );
    assert_eq!(
        sqlx_url(&url),
        "postgres://u@h/d?application_name=etl+job&sslmode=disable"
    );
    assert_eq!(url.connect_timeout(), Some(Duration::from_secs(10)));
    let options = PgConnectOptions::from_str(&sqlx_url(&url)).unwrap();
    assert_eq!(options.get_application_name(), Some("etl job"));
    assert!(matches!(options.get_ssl_mode(), PgSslMode::Disable));

    // The same arguments on the URL form.
    let from_url = async_connector(
        url_info("postgresql+asyncpg://u@h/d?ssl=false"),
        Some(json!({"application_name": "etl job", "connect_timeout": 10})),
    )
    .database_url()
    .unwrap();
    assert_eq!(sqlx_url(&from_url), sqlx_url(&url));

    // Without arguments the query is the block's own.
    assert_eq!(
        sqlalchemy(&resolve(&info)),
        "postgresql+psycopg2://u@h/d?sslmode=disable"
    );

    // Objects and arrays have no URL form.
    let err = refused(&info, Some(json!({"ok": 1, "ssl": {"ca": "/etc/ca.pem"}})));
    assert_eq!(err.field, "connect_args.ssl");
    assert!(
        err.to_string()
            .starts_with("sqlalchemy-connector: connect_args.ssl: ")
    );
    let err = refused(&info, Some(json!({"hosts": ["a", "b"]})));
    assert_eq!(err.field, "connect_args.hosts");
}

#[test]
fn bad_port_in_url_form_is_refused() {
    for text in [
        "postgresql+psycopg2://u:pw@db.example.com:54x2/sales",
        "postgresql+psycopg2://u:pw@db.example.com:70000/sales",
        "postgresql+psycopg2://u@[::1]:port/sales",
    ] {
        let err = refused(&url_info(text), None);
        assert_eq!(err.field, "connection_info.port", "{text}");
    }
    // An empty port is no port, as in SQLAlchemy.
    assert_eq!(
        resolve(&url_info("mysql+pymysql://u@db.example.com:/sales"))
            .sqlx_url()
            .expose_secret(),
        "mysql://u@db.example.com/sales"
    );
    // No scheme separator at all.
    let err = refused(&url_info("postgresql+psycopg2:/u@h/d"), None);
    assert_eq!(err.field, "connection_info");
}

// ---------------------------------------------------------------------------------------
// 2. Driver mapping
// ---------------------------------------------------------------------------------------

/// What the brief promises for a catalog driver: a backend, or `None` for refused.
fn promised_backend(driver: &str) -> Option<Backend> {
    let (dialect, dbapi) = driver.split_once('+').unwrap();
    match (dialect, dbapi) {
        ("postgresql", _) => Some(Backend::Postgres),
        ("mysql", _) => Some(Backend::MySql),
        ("sqlite", "pysqlite" | "aiosqlite") => Some(Backend::Sqlite),
        ("sqlite", "pysqlcipher") | ("oracle" | "mssql", _) => None,
        _ => panic!("a catalog driver this test does not know: {driver}"),
    }
}

#[test]
fn every_catalog_driver_maps_to_its_backend_or_is_refused_by_name() {
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for driver in SYNC_DRIVERS.iter().chain(ASYNC_DRIVERS.iter()) {
        let promised = promised_backend(driver);
        *tally
            .entry(promised.map_or("refused".to_owned(), |b| b.to_string()))
            .or_default() += 1;
        let host = (promised != Some(Backend::Sqlite)).then(|| "db.example.com".to_owned());
        let components = ConnectionInfo::Components(ConnectionComponents {
            host: host.clone(),
            database: Some("d".to_owned()),
            ..parts(driver)
        });
        let url_form = url_info(&format!("{driver}://{}/d", host.unwrap_or_default()));
        match promised {
            Some(backend) => {
                assert_eq!(Backend::for_driver(driver), Ok(backend), "{driver}");
                for info in [&components, &url_form] {
                    let url = resolve(info);
                    assert_eq!(url.backend(), backend, "{driver}");
                    assert_eq!(url.driver(), *driver);
                    assert!(
                        sqlalchemy(&url).starts_with(&format!("{driver}://")),
                        "{driver}: {}",
                        sqlalchemy(&url)
                    );
                    let scheme = match backend {
                        Backend::Postgres => "postgres://",
                        Backend::MySql => "mysql://",
                        Backend::Sqlite => "sqlite://",
                    };
                    assert!(sqlx_url(&url).starts_with(scheme), "{driver}");
                }
            }
            None => {
                let err = Backend::for_driver(driver).unwrap_err();
                assert_eq!(err.field, "connection_info.driver", "{driver}");
                assert!(err.message.contains(driver), "{driver}: {}", err.message);
                for info in [&components, &url_form] {
                    let err = refused(info, None);
                    assert_eq!(err.field, "connection_info.driver", "{driver}");
                    assert!(err.message.contains(driver), "{driver}: {}", err.message);
                    assert!(err.to_string().contains(driver));
                }
            }
        }
    }
    let tally: Vec<(&str, usize)> = tally.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        tally,
        [
            ("MySQL", 8),
            ("PostgreSQL", 6),
            ("SQLite", 2),
            ("refused", 7)
        ]
    );
}

#[test]
fn bare_dialects_and_mariadb_map() {
    for (driver, backend) in [
        ("postgresql", Backend::Postgres),
        ("postgresql+psycopg", Backend::Postgres),
        ("PostgreSQL+Psycopg2", Backend::Postgres),
        ("mysql", Backend::MySql),
        ("mariadb", Backend::MySql),
        ("mariadb+mariadbconnector", Backend::MySql),
        ("mariadb+pymysql", Backend::MySql),
        ("sqlite", Backend::Sqlite),
    ] {
        assert_eq!(Backend::for_driver(driver), Ok(backend), "{driver}");
    }
    let url = resolve(&url_info("postgresql://u@h/d"));
    assert_eq!(url.backend(), Backend::Postgres);
    assert_eq!(sqlx_url(&url), "postgres://u@h/d");
    assert_eq!(sqlalchemy(&url), "postgresql://u@h/d");
    let url = resolve(&url_info("mariadb+mariadbconnector://u@h:3306/d"));
    assert_eq!(url.backend(), Backend::MySql);
    assert_eq!(sqlx_url(&url), "mysql://u@h:3306/d");

    for driver in ["", "mongodb", "snowflake+connector", "sqlite+pysqlcipher"] {
        let err = Backend::for_driver(driver).unwrap_err();
        assert_eq!(err.field, "connection_info.driver");
        assert!(err.message.contains(&format!("{driver:?}")), "{err}");
    }
    assert_eq!(Backend::Postgres.to_string(), "PostgreSQL");
    assert_eq!(Backend::MySql.to_string(), "MySQL");
    assert_eq!(Backend::Sqlite.to_string(), "SQLite");
}

// ---------------------------------------------------------------------------------------
// 3. SQLite
// ---------------------------------------------------------------------------------------

#[test]
fn sqlite_url_forms_give_the_right_path() {
    // (SQLAlchemy URL, path, sqlx URL, SQLAlchemy URL rendered back)
    for (text, path, sqlx, rendered) in [
        (
            "sqlite:///relative.db",
            Some("relative.db"),
            "sqlite://relative.db",
            "sqlite:///relative.db",
        ),
        (
            "sqlite+pysqlite:///data/nested/x.db",
            Some("data/nested/x.db"),
            "sqlite://data/nested/x.db",
            "sqlite+pysqlite:///data/nested/x.db",
        ),
        (
            "sqlite:////abs/path.db",
            Some("/abs/path.db"),
            "sqlite:///abs/path.db",
            "sqlite:////abs/path.db",
        ),
        (
            "sqlite+aiosqlite:////abs/path.db?mode=ro&uri=true",
            Some("/abs/path.db"),
            "sqlite:///abs/path.db",
            "sqlite+aiosqlite:////abs/path.db?mode=ro&uri=true",
        ),
        ("sqlite://", None, "sqlite::memory:", "sqlite://"),
        (
            "sqlite:///:memory:",
            None,
            "sqlite::memory:",
            "sqlite:///:memory:",
        ),
    ] {
        let url = resolve(&url_info(text));
        assert_eq!(url.backend(), Backend::Sqlite, "{text}");
        assert_eq!(url.sqlite_path(), path, "{text}");
        if text.contains('?') {
            // Whether sqlx_url() carries SQLite's query is not settled (see
            // `sqlite_sqlx_url_keeps_the_mode`); the path is.
            assert!(sqlx_url(&url).starts_with(sqlx), "{text}");
        } else {
            assert_eq!(sqlx_url(&url), sqlx, "{text}");
        }
        assert_eq!(sqlalchemy(&url), rendered, "{text}");
    }

    for (database, path) in [
        (Some("relative.db"), Some("relative.db")),
        (Some("/abs/path.db"), Some("/abs/path.db")),
        (Some(":memory:"), None),
        (Some(""), None),
        (None, None),
    ] {
        let url = resolve(&ConnectionInfo::Components(ConnectionComponents {
            database: database.map(str::to_owned),
            ..parts("sqlite+aiosqlite")
        }));
        assert_eq!(url.sqlite_path(), path, "{database:?}");
    }
    // Components with an absolute path render as SQLAlchemy's four slashes.
    let url = resolve(&ConnectionInfo::Components(ConnectionComponents {
        database: Some("/abs/path.db".to_owned()),
        ..parts("sqlite+aiosqlite")
    }));
    assert_eq!(sqlalchemy(&url), "sqlite+aiosqlite:////abs/path.db");
    assert_eq!(resolve(&url_info("sqlite+aiosqlite:////abs/path.db")), url);
}

#[tokio::test]
async fn sqlite_file_written_through_components_is_read_through_url_form() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("etl.db");
    let path_text = path.to_str().unwrap().to_owned();
    assert!(path_text.starts_with('/'));
    assert!(!path.exists());

    let writer = async_connector(
        ConnectionInfo::Components(ConnectionComponents {
            database: Some(path_text.clone()),
            ..parts("sqlite+aiosqlite")
        }),
        None,
    );
    let pool = writer.connect().await.unwrap();
    assert_eq!(pool.backend(), Backend::Sqlite);
    assert!(path.is_file(), "connecting did not create {path_text}");
    {
        let sqlite = pool.sqlite().unwrap();
        sqlx::query("create table notes (id integer primary key, body text not null)")
            .execute(sqlite)
            .await
            .unwrap();
        sqlx::query("insert into notes (body) values (?), (?)")
            .bind("first")
            .bind(CANARY)
            .execute(sqlite)
            .await
            .unwrap();
    }
    pool.close().await;

    let reader = sync_connector(url_info(&format!("sqlite:///{path_text}")), None);
    let url = reader.database_url().unwrap();
    assert_eq!(url.sqlite_path(), Some(path_text.as_str()));
    assert_eq!(sqlalchemy(&url), format!("sqlite:////{}", &path_text[1..]));
    let pool = reader.connect().await.unwrap();
    let bodies: Vec<String> = sqlx::query_scalar("select body from notes order by id")
        .fetch_all(pool.sqlite().unwrap())
        .await
        .unwrap();
    assert_eq!(bodies, ["first", CANARY]);
    let err = pool.postgres().unwrap_err();
    assert!(err.message.contains("SQLite") && err.message.contains("PostgreSQL"));
    pool.close().await;
}

#[tokio::test]
async fn sqlite_in_memory_pool_keeps_its_table_across_queries() {
    let connector = async_connector(url_info("sqlite+aiosqlite://"), None);
    let url = connector.database_url().unwrap();
    assert_eq!(url.sqlite_path(), None);
    let pool = connector.connect().await.unwrap();
    let sqlite = pool.sqlite().unwrap();
    sqlx::query("create table seen (n integer not null)")
        .execute(sqlite)
        .await
        .unwrap();
    for n in 0..5_i64 {
        sqlx::query("insert into seen (n) values (?)")
            .bind(n)
            .execute(sqlite)
            .await
            .unwrap();
    }
    let counts = tokio::join!(
        sqlx::query_scalar::<_, i64>("select count(*) from seen").fetch_one(sqlite),
        sqlx::query_scalar::<_, i64>("select sum(n) from seen").fetch_one(sqlite),
        sqlx::query_scalar::<_, i64>("select max(n) from seen").fetch_one(sqlite),
    );
    assert_eq!(
        (counts.0.unwrap(), counts.1.unwrap(), counts.2.unwrap()),
        (5, 10, 4)
    );
    // After idling, still the same database.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sqlite_number(sqlite, "select count(*) from seen").await, 5);

    // A second in-memory pool is a database of its own.
    let other = sync_connector(
        ConnectionInfo::Components(ConnectionComponents {
            database: Some(":memory:".to_owned()),
            ..parts("sqlite+pysqlite")
        }),
        None,
    )
    .connect()
    .await
    .unwrap();
    let tables = sqlite_number(
        other.sqlite().unwrap(),
        "select count(*) from sqlite_master where name = 'seen'",
    )
    .await;
    assert_eq!(tables, 0);
    other.close().await;
    pool.close().await;
}

#[tokio::test]
async fn sqlite_read_only_mode_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro.db");
    let path_text = path.to_str().unwrap().to_owned();

    // A read-only open of a missing file fails and creates nothing.
    let missing = sync_connector(
        url_info(&format!("sqlite:///{path_text}?mode=ro&uri=true")),
        None,
    );
    let err = missing.connect().await.unwrap_err();
    assert_eq!(err.field, "connection");
    assert!(err.message.contains("SQLite"), "{err}");
    assert!(err.message.contains(&path_text), "{err}");
    assert!(!path.exists());

    let rw = open_sqlite_file(&path_text).await;
    sqlx::query("create table t (v text)")
        .execute(rw.sqlite().unwrap())
        .await
        .unwrap();
    sqlx::query("insert into t values ('kept')")
        .execute(rw.sqlite().unwrap())
        .await
        .unwrap();
    rw.close().await;

    for info in [
        url_info(&format!("sqlite+pysqlite:///{path_text}?mode=ro&uri=true")),
        ConnectionInfo::Components(ConnectionComponents {
            database: Some(path_text.clone()),
            query: query(&[("mode", "ro"), ("timeout", "2.5"), ("uri", "true")]),
            ..parts("sqlite+aiosqlite")
        }),
    ] {
        let ro = sync_connector(info, None).connect().await.unwrap();
        let pool = ro.sqlite().unwrap();
        let v: String = sqlx::query_scalar("select v from t")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(v, "kept");
        let write = sqlx::query("insert into t values ('nope')")
            .execute(pool)
            .await
            .unwrap_err();
        assert!(
            write.to_string().contains("readonly"),
            "unexpected error: {write}"
        );
        let ddl = sqlx::query("create table u (x integer)")
            .execute(pool)
            .await;
        assert!(ddl.is_err());
        ro.close().await;
    }

    // Nothing was written.
    let check = open_sqlite_file(&path_text).await;
    let rows = sqlite_number(check.sqlite().unwrap(), "select count(*) from t").await;
    assert_eq!(rows, 1);
    check.close().await;
}

#[tokio::test]
async fn sqlite_bad_settings_are_refused() {
    // Unknown query keys, in either form.
    let err = refused(&url_info("sqlite:///x.db?journal_mode=wal"), None);
    assert_eq!(err.field, "connection_info.query.journal_mode");
    let err = refused(
        &ConnectionInfo::Components(ConnectionComponents {
            database: Some("x.db".to_owned()),
            query: query(&[("mode", "ro"), ("cache", "shared")]),
            ..parts("sqlite+pysqlite")
        }),
        None,
    );
    assert_eq!(err.field, "connection_info.query.cache");
    // The served keys are accepted, in the URL or as connect_args (SQLAlchemy's usual
    // `connect_args={"check_same_thread": False}`).
    resolve(&url_info(
        "sqlite:///x.db?mode=rwc&uri=true&timeout=5&check_same_thread=false",
    ));
    // As in SQLAlchemy, mode needs uri=true (without it Python ignores mode; here it is
    // refused rather than silently ignored).
    let err = refused(&url_info("sqlite:///x.db?mode=ro"), None);
    assert_eq!(err.field, "connection_info.query.mode");
    let err = refused(&url_info("sqlite:///x.db"), Some(json!({"mode": "ro"})));
    assert_eq!(err.field, "connect_args.mode");
    resolve(&url_info("sqlite:///file:x.db?mode=ro&uri=true"));
    let url = sync_connector(
        url_info("sqlite:///x.db"),
        Some(json!({"check_same_thread": false, "timeout": 2})),
    )
    .database_url()
    .unwrap();
    assert_eq!(sqlalchemy(&url), "sqlite:///x.db");
    assert_eq!(sqlx_url(&url), "sqlite://x.db");

    // Host, user or password make no sense for a file.
    for info in [
        ConnectionInfo::Components(ConnectionComponents {
            host: Some("localhost".to_owned()),
            database: Some("x.db".to_owned()),
            ..parts("sqlite+pysqlite")
        }),
        ConnectionInfo::Components(ConnectionComponents {
            username: Some("me".to_owned()),
            database: Some("x.db".to_owned()),
            ..parts("sqlite+aiosqlite")
        }),
        ConnectionInfo::Components(ConnectionComponents {
            password: Some(SecretString::from(PASSWORD)),
            database: Some("x.db".to_owned()),
            ..parts("sqlite+aiosqlite")
        }),
        url_info("sqlite://localhost/x.db"),
        url_info("sqlite://me@/x.db"),
    ] {
        let err = refused(&info, None);
        assert_eq!(err.field, "connection_info", "{info:?}");
        assert!(err.message.contains("SQLite"), "{err}");
        assert_no_password("a SQLite refusal", &format!("{err} {err:?}"));
    }

    // Bad values of served keys fail when connecting, naming the key.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.db");
    for (key, value) in [("mode", "rw-ish"), ("timeout", "soon"), ("timeout", "-1")] {
        let connector = sync_connector(
            ConnectionInfo::Components(ConnectionComponents {
                database: Some(path.to_str().unwrap().to_owned()),
                query: query(&[(key, value)]),
                ..parts("sqlite+pysqlite")
            }),
            None,
        );
        let err = connector.connect().await.unwrap_err();
        assert_eq!(err.field, format!("connection_info.query.{key}"), "{value}");
    }
    assert!(!path.exists());
}

#[test]
fn sqlite_unknown_connect_arg_is_blamed_on_connect_args() {
    let err = refused(
        &url_info("sqlite:///x.db"),
        Some(json!({"isolation_level": "IMMEDIATE"})),
    );
    assert_eq!(err.field, "connect_args.isolation_level");
}

#[test]
fn sqlite_sqlx_url_keeps_the_mode() {
    let url = resolve(&url_info("sqlite:////abs/path.db?mode=ro&uri=true"));
    let sqlx = sqlx_url(&url);
    assert!(sqlx.contains("mode=ro"), "{sqlx}");
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(&sqlx).unwrap();
    assert!(
        format!("{options:?}").contains("read_only: true"),
        "{options:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 4. PostgreSQL
// ---------------------------------------------------------------------------------------

fn postgres_admin_url() -> String {
    std::env::var("BLOCKS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| tests::DEFAULT_POSTGRES_URL.to_owned())
}

#[tokio::test]
async fn postgres_role_with_special_characters_connects_through_both_forms() {
    let Some(db) = tests::PostgresDb::create().await else {
        return;
    };
    let role = format!("etl user@x-{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&postgres_admin_url())
        .await
        .unwrap();
    admin
        .execute(format!(r#"create role "{role}" with login password '{PASSWORD}'"#).as_str())
        .await
        .unwrap();
    admin
        .execute(format!(r#"grant connect on database {} to "{role}""#, db.name).as_str())
        .await
        .unwrap();

    let outcome = tokio::spawn(check_postgres_role(
        db.url.clone(),
        db.name.clone(),
        role.clone(),
    ))
    .await;

    db.drop_database().await;
    admin
        .execute(format!(r#"drop role if exists "{role}""#).as_str())
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar("select count(*) from pg_roles where rolname = $1")
        .bind(&role)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    admin.close().await.ok();
    rethrow(outcome);
    assert_eq!(left, 0, "the role {role:?} was not dropped");
}

async fn check_postgres_role(db_url: url::Url, db_name: String, role: String) {
    let host = db_url.host_str().unwrap().to_owned();
    let port = db_url.port().unwrap_or(5432);

    // Components, synchronous driver name.
    let by_parts = sync_connector(
        ConnectionInfo::Components(ConnectionComponents {
            username: Some(role.clone()),
            password: Some(SecretString::from(PASSWORD)),
            host: Some(host.clone()),
            port: Some(port),
            database: Some(db_name.clone()),
            ..parts("postgresql+psycopg2")
        }),
        None,
    );
    let url = by_parts.database_url().unwrap();
    assert_no_password("Debug of the DatabaseUrl", &format!("{url:?}"));
    assert_no_password("Debug of the connector", &format!("{by_parts:?}"));
    let pool = by_parts.connect().await.unwrap();
    assert_eq!(pool.backend(), Backend::Postgres);
    let (user, database): (String, String) =
        sqlx::query_as("select current_user::text, current_database()::text")
            .fetch_one(pool.postgres().unwrap())
            .await
            .unwrap();
    assert_eq!(user, role);
    assert_eq!(database, db_name);

    // A Postgres pool is not a MySQL or SQLite one.
    let err = pool.mysql().unwrap_err();
    assert_eq!(err.field, "connection_info.driver");
    assert!(
        err.message.contains("PostgreSQL") && err.message.contains("MySQL"),
        "{err}"
    );
    let err = pool.sqlite().unwrap_err();
    assert!(
        err.message.contains("PostgreSQL") && err.message.contains("SQLite"),
        "{err}"
    );
    pool.close().await;

    // URL form, asynchronous driver name, encoded by hand.
    let text = format!(
        "postgresql+asyncpg://{}:{}@{host}:{port}/{}",
        encode(&role),
        encode(PASSWORD),
        encode(&db_name)
    );
    let by_url = async_connector(url_info(&text), None);
    let from_url = by_url.database_url().unwrap();
    assert_eq!(sqlx_url(&from_url), sqlx_url(&url));
    assert_eq!(sqlalchemy(&from_url), text);
    let pool = by_url.connect().await.unwrap();
    let (user, database, session): (String, String, String) =
        sqlx::query_as("select current_user::text, current_database()::text, session_user::text")
            .fetch_one(pool.postgres().unwrap())
            .await
            .unwrap();
    assert_eq!(
        (user.as_str(), database.as_str()),
        (role.as_str(), db_name.as_str())
    );
    assert_eq!(session, role);
    pool.close().await;
}

// ---------------------------------------------------------------------------------------
// 5. MySQL / MariaDB
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn mysql_connects_through_components_and_url_form() {
    let Some(server) = tests::mysql_url().await else {
        return;
    };
    let database = decode(server.path().trim_start_matches('/'));
    let username = decode(server.username());
    let by_parts = sync_connector(
        ConnectionInfo::Components(ConnectionComponents {
            username: Some(username.clone()),
            password: server.password().map(|p| SecretString::new(decode(p))),
            host: server.host_str().map(str::to_owned),
            port: server.port(),
            database: Some(database.clone()),
            ..parts("mysql+pymysql")
        }),
        Some(json!({"charset": "utf8mb4"})),
    );
    let by_url = async_connector(
        url_info(&format!(
            "mariadb+mariadbconnector://{}",
            server.as_str().strip_prefix("mysql://").unwrap()
        )),
        None,
    );
    assert_eq!(by_url.database_url().unwrap().backend(), Backend::MySql);

    let parts_pool = by_parts.connect().await.unwrap();
    let url_pool = by_url.connect().await.unwrap();
    let table = format!("blocks_sqla_{}", uuid::Uuid::new_v4().simple());

    let outcome = {
        let (parts_pool, url_pool, table, database) = (
            parts_pool.clone(),
            url_pool.clone(),
            table.clone(),
            database.clone(),
        );
        tokio::spawn(async move {
            for pool in [&parts_pool, &url_pool] {
                assert_eq!(pool.backend(), Backend::MySql);
                let version: String = sqlx::query_scalar("select version()")
                    .fetch_one(pool.mysql().unwrap())
                    .await
                    .unwrap();
                assert!(
                    version.starts_with(|c: char| c.is_ascii_digit()),
                    "{version}"
                );
                let current: String = sqlx::query_scalar("select database()")
                    .fetch_one(pool.mysql().unwrap())
                    .await
                    .unwrap();
                assert_eq!(current, database);
            }
            let err = url_pool.postgres().unwrap_err();
            assert!(err.message.contains("MySQL") && err.message.contains("PostgreSQL"));

            // Written through one connector, read through the other.
            let writer = parts_pool.mysql().unwrap();
            let reader = url_pool.mysql().unwrap();
            sqlx::query(&format!(
                "create table {table} (id int primary key, body varchar(64) not null)"
            ))
            .execute(writer)
            .await
            .unwrap();
            sqlx::query(&format!("insert into {table} values (1, ?)"))
                .bind(CANARY)
                .execute(writer)
                .await
                .unwrap();
            let body: String =
                sqlx::query_scalar(&format!("select body from {table} where id = 1"))
                    .fetch_one(reader)
                    .await
                    .unwrap();
            assert_eq!(body, CANARY);
            sqlx::query(&format!("drop table {table}"))
                .execute(reader)
                .await
                .unwrap();
        })
        .await
    };

    // Cleanup whatever happened, then check the table is gone.
    let pool = parts_pool.mysql().unwrap();
    sqlx::query(&format!("drop table if exists {table}"))
        .execute(pool)
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar(
        "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
    )
    .bind(&database)
    .bind(&table)
    .fetch_one(pool)
    .await
    .unwrap();
    parts_pool.close().await;
    url_pool.close().await;
    rethrow(outcome);
    assert_eq!(left, 0);
}

// ---------------------------------------------------------------------------------------
// 6. Errors never leak the password
// ---------------------------------------------------------------------------------------

fn closed_port_connector(driver: &str, host: &str, port: u16) -> SqlAlchemyConnector {
    sync_connector(
        ConnectionInfo::Components(ConnectionComponents {
            username: Some("etl".to_owned()),
            password: Some(SecretString::from(PASSWORD)),
            host: Some(host.to_owned()),
            port: Some(port),
            database: Some("sales".to_owned()),
            ..parts(driver)
        }),
        None,
    )
}

#[track_caller]
fn assert_scrubbed_connection_error(err: &SqlError, backend: &str, host: &str, port: u16) {
    assert_eq!(err.field, "connection", "{err}");
    assert!(err.message.contains(backend), "{err}");
    assert!(err.message.contains(&format!("{host}:{port}")), "{err}");
    assert_no_password("Display of the error", &err.to_string());
    assert_no_password("Debug of the error", &format!("{err:?}"));
}

#[tokio::test]
async fn connection_failure_on_a_closed_port_never_shows_the_password() {
    let connector = closed_port_connector("postgresql+psycopg2", "127.0.0.1", 1);
    let url = connector.database_url().unwrap();
    let debug = format!("{url:?}");
    assert_no_password("Debug of the DatabaseUrl", &debug);
    assert!(debug.contains("********"), "{debug}");
    // The secret is there, just not shown.
    assert!(url.sqlx_url().expose_secret().contains(PASSWORD_ENCODED));

    let by_url = async_connector(
        url_info(&format!(
            "postgresql+asyncpg://etl:{PASSWORD_ENCODED}@127.0.0.1:1/sales"
        )),
        None,
    );
    assert_no_password(
        "Debug of the URL-form DatabaseUrl",
        &format!("{:?}", by_url.database_url().unwrap()),
    );
    assert_no_password("Debug of the URL-form connector", &format!("{by_url:?}"));

    // sqlx retries a refused connection until its acquire timeout (30 s): both forms at once.
    let (by_parts, by_url) = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::join!(connector.connect(), by_url.connect())
    })
    .await
    .expect("connect() did not give up");
    for result in [by_parts, by_url] {
        let err = result.unwrap_err();
        assert_scrubbed_connection_error(&err, "PostgreSQL", "127.0.0.1", 1);
    }
}

/// A server that accepts connections and hangs up at once: connecting fails fast.
async fn hang_up_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    port
}

#[tokio::test]
async fn connection_failure_from_a_hanging_up_server_never_shows_the_password() {
    let port = hang_up_server().await;
    for (driver, backend) in [
        ("postgresql+psycopg2", "PostgreSQL"),
        ("mysql+pymysql", "MySQL"),
    ] {
        let connector = closed_port_connector(driver, "127.0.0.1", port);
        let err = tokio::time::timeout(Duration::from_secs(60), connector.connect())
            .await
            .expect("connect() did not give up")
            .unwrap_err();
        assert_scrubbed_connection_error(&err, backend, "127.0.0.1", port);
    }
}

#[tokio::test]
async fn wrong_backend_errors_name_both_backends() {
    // The pool accessors' refusal, checked without a server: a lazily built pool.
    let pool = SqlPool::Sqlite(
        sqlx::sqlite::SqlitePoolOptions::new()
            .connect_lazy("sqlite::memory:")
            .unwrap(),
    );
    let err = pool.mysql().unwrap_err();
    assert_eq!(err.field, "connection_info.driver");
    assert_eq!(err.message, "the connector is for SQLite, not MySQL");
}

// ---------------------------------------------------------------------------------------
// SQLAlchemy's own renderings (SQLAlchemy 2, `URL.create(...).render_as_string(
// hide_password=False)`, from the pinned interop environment) mean the same parts to us,
// and ours parse back to them: the two spellings differ only in what they escape.
// ---------------------------------------------------------------------------------------

#[test]
fn sqlalchemy_renderings_parse_to_the_same_parts() {
    let mut tricky = parts("postgresql+psycopg2");
    tricky.username = Some("etl user@x".into());
    tricky.password = Some(SecretString::from("p@ss:w/rd%?#& +~"));
    tricky.host = Some("db.example.com".into());
    tricky.port = Some(5432);
    tricky.database = Some("ny taxi/2021".into());
    tricky.query = Some(BTreeMap::from([
        ("sslmode".to_owned(), "require".to_owned()),
        ("application_name".to_owned(), "etl job".to_owned()),
    ]));
    let mut ipv6 = parts("mysql+pymysql");
    ipv6.username = Some("root".into());
    ipv6.host = Some("::1".into());
    ipv6.port = Some(3306);
    ipv6.database = Some("test".into());
    let mut absolute = parts("sqlite+aiosqlite");
    absolute.database = Some("/abs/path.db".into());
    let mut relative = parts("sqlite");
    relative.database = Some("relative.db".into());
    let mut unicode = parts("postgresql+asyncpg");
    unicode.username = Some("ü".into());
    unicode.password = Some(SecretString::from("pä:ss"));
    unicode.host = Some("localhost".into());
    unicode.database = Some("db".into());
    let cases = [
        (
            tricky,
            "postgresql+psycopg2://etl user%40x:p%40ss%3Aw%2Frd%25%3F%23%26 +~@db.example.com:5432/ny taxi/2021?application_name=etl+job&sslmode=require",
        ),
        (ipv6, "mysql+pymysql://root@[::1]:3306/test"),
        (absolute, "sqlite+aiosqlite:////abs/path.db"),
        (relative, "sqlite:///relative.db"),
        (
            unicode,
            "postgresql+asyncpg://%C3%BC:p%C3%A4%3Ass@localhost/db",
        ),
    ];
    for (components, rendered_by_sqlalchemy) in cases {
        let ours = resolve(&ConnectionInfo::Components(components));
        let theirs = resolve(&url_info(rendered_by_sqlalchemy));
        assert_eq!(ours, theirs, "{rendered_by_sqlalchemy}");
        let again = resolve(&url_info(ours.sqlalchemy_url().expose_secret()));
        assert_eq!(again, ours, "{rendered_by_sqlalchemy}");
    }
}

// ---------------------------------------------------------------------------------------
// Settings that would be lost are refused, TLS settings keep their meaning, and query
// values stay out of Debug.
// ---------------------------------------------------------------------------------------

#[test]
fn unknown_settings_are_refused_and_driver_names_are_mapped() {
    for (text, args, field) in [
        (
            "postgresql+psycopg2://u@h/d?keepalives=1",
            None,
            "connection_info.query.keepalives",
        ),
        (
            "postgresql+asyncpg://u@h/d",
            Some(json!({"server_settings": "x"})),
            "connect_args.server_settings",
        ),
        (
            "mysql+pymysql://u@h/d?ssl_check_hostname=maybe",
            None,
            "connection_info.query.ssl_check_hostname",
        ),
        (
            "postgresql+asyncpg://u@h/d?ssl=maybe",
            None,
            "connection_info.query.ssl",
        ),
        (
            "mysql+pymysql://u@h/d?ssl_mode=sometimes",
            None,
            "connection_info.query.ssl_mode",
        ),
        (
            "postgresql://u@h/d?connect_timeout=soon",
            None,
            "connection_info.query.connect_timeout",
        ),
    ] {
        let err = refused(&url_info(text), args);
        assert_eq!(err.field, field, "{text}");
    }
    // asyncpg's ssl=require is sqlx's sslmode=require.
    let url = resolve(&url_info("postgresql+asyncpg://u@h/d?ssl=require"));
    let options = PgConnectOptions::from_str(&sqlx_url(&url)).unwrap();
    assert!(matches!(options.get_ssl_mode(), PgSslMode::Require));
    // pymysql's ssl_ca and ssl_verify_cert; an explicit mode wins over the flag.
    let url = DatabaseUrl::new(
        &url_info("mysql+pymysql://u@h/d?ssl_ca=/etc/ca.pem"),
        Some(&as_map(json!({"ssl_verify_cert": true}))),
    )
    .unwrap();
    assert_eq!(
        sqlx_url(&url),
        "mysql://u@h/d?ssl-ca=%2Fetc%2Fca.pem&ssl-mode=VERIFY_IDENTITY"
    );
    let url = DatabaseUrl::new(
        &url_info("mysql+pymysql://u@h/d?ssl_mode=required"),
        Some(&as_map(json!({"ssl_verify_cert": true}))),
    )
    .unwrap();
    assert_eq!(sqlx_url(&url), "mysql://u@h/d?ssl-mode=REQUIRED");
}

#[test]
fn a_password_in_the_query_is_a_password() {
    let url = resolve(&url_info(&format!(
        "postgresql+psycopg2://etl@db/wh?password={}&sslmode=require",
        encode(PASSWORD)
    )));
    let debug = format!("{url:?}");
    assert!(
        !debug.contains("canary") && !debug.contains(&encode(PASSWORD)),
        "{debug}"
    );
    let options = PgConnectOptions::from_str(&sqlx_url(&url)).unwrap();
    assert_eq!(options.get_username(), "etl");
    assert!(!sqlalchemy(&url).contains("password="));
    let err = refused(&url_info("postgresql://u:a@h/d?password=b"), None);
    assert_eq!(err.field, "connection_info.query.password");
}

#[test]
fn unencoded_slashes_and_question_marks_in_a_password_parse_as_sqlalchemy_does() {
    // SQLAlchemy's pattern lets a password run to the @ (`password [^@]*`).
    let url = resolve(&url_info(
        "postgresql://etl:ab/cd?e@db:5432/wh?sslmode=require",
    ));
    assert_eq!(
        sqlx_url(&url),
        "postgres://etl:ab%2Fcd%3Fe@db:5432/wh?sslmode=require"
    );
    let url = resolve(&url_info("postgresql://etl:5432/s3cret@db/wh"));
    let options = PgConnectOptions::from_str(&sqlx_url(&url)).unwrap();
    assert_eq!(options.get_host(), "db");
    assert_eq!(options.get_database(), Some("wh"));
    assert!(!format!("{url:?}").contains("s3cret"));
}

#[test]
fn sqlite_paths_with_url_characters_survive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("100%done #1?.db");
    let mut components = parts("sqlite");
    components.database = Some(path.display().to_string());
    let url = resolve(&ConnectionInfo::Components(components));
    let back = resolve(&url_info(url.sqlalchemy_url().expose_secret()));
    assert_eq!(back.sqlite_path(), url.sqlite_path());
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(&sqlx_url(&url)).unwrap();
    assert_eq!(options.get_filename(), path.as_path());
    // SQLAlchemy's `uri=true` form names a file: URI.
    let url = resolve(&url_info("sqlite:///file:etl.db?mode=ro&uri=true"));
    assert_eq!(url.sqlite_path(), Some("etl.db"));
}

#[test]
fn tls_settings_verify_as_the_python_drivers_do() {
    let pg_mode = |text: &str, args: Option<Value>| {
        let url = DatabaseUrl::new(&url_info(text), args.map(as_map).as_ref()).unwrap();
        format!(
            "{:?}",
            PgConnectOptions::from_str(&sqlx_url(&url))
                .unwrap()
                .get_ssl_mode()
        )
    };
    // asyncpg: ssl=True is a default context (verify-full); 'require' does not verify.
    assert_eq!(
        pg_mode("postgresql+asyncpg://u@h/d", Some(json!({"ssl": true}))),
        "VerifyFull"
    );
    assert_eq!(
        pg_mode("postgresql+asyncpg://u@h/d?ssl=require", None),
        "Require"
    );
    // libpq: require with a root certificate verifies the CA.
    assert_eq!(
        pg_mode(
            "postgresql+psycopg2://u@h/d?sslmode=require&sslrootcert=/ca.pem",
            None
        ),
        "VerifyCa"
    );
    // pymysql: a CA verifies the certificate and the host name unless told otherwise.
    let my = |text: &str, args: Value| {
        let url = DatabaseUrl::new(&url_info(text), Some(&as_map(args))).unwrap();
        sqlx_url(&url)
    };
    for (args, mode) in [
        (json!({}), "VERIFY_IDENTITY"),
        (json!({"ssl_check_hostname": false}), "VERIFY_CA"),
        (
            json!({"ssl_verify_cert": true, "ssl_verify_identity": true}),
            "VERIFY_IDENTITY",
        ),
        (json!({"ssl_verify_cert": false}), "REQUIRED"),
        (
            json!({"ssl_mode": "preferred", "ssl_verify_cert": true}),
            "PREFERRED",
        ),
    ] {
        let url = my("mysql+pymysql://u@h/d?ssl_ca=/ca.pem", args.clone());
        assert!(url.ends_with(&format!("ssl-mode={mode}")), "{args}: {url}");
    }
    let url = my("mysql+pymysql://u@h/d", json!({"ssl_verify_cert": true}));
    assert!(url.ends_with("ssl-mode=VERIFY_CA"), "{url}");
}

#[test]
fn sockets_passwords_without_users_and_unlimited_timeouts() {
    // SQLAlchemy's documented socket form for psycopg2.
    let url = resolve(&url_info(
        "postgresql+psycopg2://etl:pw@/wh?host=/var/run/postgresql",
    ));
    let options = PgConnectOptions::from_str(&sqlx_url(&url)).unwrap();
    assert_eq!(
        options.get_socket(),
        Some(&std::path::PathBuf::from("/var/run/postgresql"))
    );
    assert_eq!(options.get_database(), Some("wh"));
    // pymysql's unix_socket with a user and no host.
    let url = resolve(&url_info(
        "mysql+pymysql://u:pw@/db?unix_socket=/run/mysqld/mysqld.sock",
    ));
    sqlx::mysql::MySqlConnectOptions::from_str(&sqlx_url(&url)).unwrap();
    assert!(sqlx_url(&url).contains("socket=%2Frun%2Fmysqld%2Fmysqld.sock"));
    // A password given in the query with no user still reaches sqlx.
    let url = resolve(&url_info("postgresql://db/wh?password=s3cret"));
    assert!(
        sqlx_url(&url).starts_with("postgres://:s3cret@db/wh"),
        "{}",
        sqlx_url(&url)
    );
    // libpq reads connect_timeout=0 as no limit.
    let url = resolve(&url_info("postgresql://u@db/wh?connect_timeout=0"));
    assert!(url.connect_timeout().unwrap() >= Duration::from_secs(3600));
}
