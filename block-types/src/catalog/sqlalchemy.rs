//! The `sqlalchemy` collection: database connections described as SQLAlchemy does.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::SCHEMA_VERSION;
use super::schema::{block_schema, optional, prop, secret_string, type_info};
use crate::block::{Block, BlockSpec};
use crate::secret::SecretString;

/// SQLAlchemy's asynchronous dialect+driver names.
pub const ASYNC_DRIVERS: [&str; 5] = [
    "postgresql+asyncpg",
    "sqlite+aiosqlite",
    "mysql+asyncmy",
    "mysql+aiomysql",
    "oracle+oracledb_async",
];

/// SQLAlchemy's synchronous dialect+driver names.
pub const SYNC_DRIVERS: [&str; 18] = [
    "postgresql+psycopg2",
    "postgresql+pg8000",
    "postgresql+psycopg2cffi",
    "postgresql+pypostgresql",
    "postgresql+pygresql",
    "mysql+mysqldb",
    "mysql+pymysql",
    "mysql+mysqlconnector",
    "mysql+cymysql",
    "mysql+oursql",
    "mysql+pyodbc",
    "sqlite+pysqlite",
    "sqlite+pysqlcipher",
    "oracle+cx_oracle",
    "oracle+oracledb",
    "mssql+pyodbc",
    "mssql+mxodbc",
    "mssql+pymssql",
];

/// The parts of a database URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionComponents {
    /// Dialect and driver, e.g. `postgresql+psycopg2`.
    pub driver: String,
    /// Database name (a file path for SQLite).
    #[serde(default)]
    pub database: Option<String>,
    /// User name.
    #[serde(default)]
    pub username: Option<String>,
    /// Password.
    #[serde(default)]
    pub password: Option<SecretString>,
    /// Host.
    #[serde(default)]
    pub host: Option<String>,
    /// Port (an integer, or a numeric string as older schemas stored it).
    #[serde(default, deserialize_with = "lenient_port")]
    pub port: Option<u16>,
    /// Query parameters appended to the URL.
    #[serde(default)]
    pub query: Option<BTreeMap<String, String>>,
}

fn lenient_port<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    let invalid = || serde::de::Error::custom("port must be an integer from 0 to 65535");
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .map(Some)
            .ok_or_else(invalid),
        Some(Value::String(s)) => s.trim().parse::<u16>().map(Some).map_err(|_| invalid()),
        Some(_) => Err(invalid()),
    }
}

/// How a connector describes its database: URL parts, or a whole URL.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ConnectionInfo {
    /// URL parts; the password is secret.
    Components(ConnectionComponents),
    /// A whole URL, e.g. `postgresql+psycopg2://user:pass@host/db`. Held as a secret in
    /// Rust because it may embed a password.
    Url(SecretString),
}

impl<'de> Deserialize<'de> for ConnectionInfo {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(url) => Ok(Self::Url(SecretString::from(url))),
            Value::Object(parts) => serde_json::from_value(Value::Object(parts))
                .map(Self::Components)
                .map_err(|e| serde::de::Error::custom(format!("connection parts: {e}"))),
            _ => Err(serde::de::Error::custom(
                "expected a URL string or an object of URL parts (driver, host, port, …)",
            )),
        }
    }
}

macro_rules! connector {
    ($(#[$doc:meta])* $name:ident, $slug:literal, $display:literal, $summary:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub struct $name {
            /// The database to connect to.
            pub connection_info: ConnectionInfo,
            /// Extra arguments passed to the driver's connect call.
            #[serde(default)]
            pub connect_args: Option<Map<String, Value>>,
            /// Rows fetched per round trip.
            #[serde(default = "one")]
            pub fetch_size: i64,
        }

        impl Block for $name {
            const SLUG: &'static str = $slug;

            fn spec() -> BlockSpec {
                connector_spec(stringify!($name), $slug, $display, $summary)
            }
        }
    };
}

connector!(
    /// A database connection for synchronous drivers, as SQLAlchemy describes it.
    SqlAlchemyConnector,
    "sqlalchemy-connector",
    "SQLAlchemy Connector",
    "A database connection for synchronous drivers: a URL or its parts, with a secret password."
);

connector!(
    /// A database connection for asynchronous drivers, as SQLAlchemy describes it.
    AsyncSqlAlchemyConnector,
    "async-sqlalchemy-connector",
    "Async SQLAlchemy Connector",
    "A database connection for asynchronous drivers: a URL or its parts, with a secret password."
);

fn one() -> i64 {
    1
}

fn connector_spec(title: &str, slug: &str, display: &str, summary: &str) -> BlockSpec {
    let mut fields = block_schema(
        title,
        slug,
        summary,
        vec![
            (
                "connection_info",
                prop(
                    "Connection Info",
                    "The database: a SQLAlchemy URL, or the parts to build one from.",
                    json!({"anyOf": [{"$ref": "#/definitions/ConnectionComponents"}, {"type": "string"}]}),
                ),
            ),
            (
                "connect_args",
                optional(
                    "Additional Connection Arguments",
                    "Extra keyword arguments for the driver's connect call.",
                    json!({"type": "object", "additionalProperties": true}),
                ),
            ),
            (
                "fetch_size",
                prop(
                    "Fetch Size",
                    "How many rows to fetch per round trip.",
                    json!({"type": "integer", "default": 1}),
                ),
            ),
        ],
        &["connection_info"],
        &["connection_info.password"],
    );
    fields["definitions"] = json!({
        "AsyncDriver": {
            "title": "AsyncDriver",
            "description": "SQLAlchemy dialect+driver names for asynchronous drivers.",
            "type": "string",
            "enum": ASYNC_DRIVERS,
        },
        "SyncDriver": {
            "title": "SyncDriver",
            "description": "SQLAlchemy dialect+driver names for synchronous drivers.",
            "type": "string",
            "enum": SYNC_DRIVERS,
        },
        "ConnectionComponents": {
            "title": "ConnectionComponents",
            "description": "The parts of a SQLAlchemy database URL.",
            "type": "object",
            "properties": {
                "driver": prop("Driver", "Dialect and driver, e.g. postgresql+psycopg2.", json!({"anyOf": [{"$ref": "#/definitions/AsyncDriver"}, {"$ref": "#/definitions/SyncDriver"}, {"type": "string"}]})),
                "database": optional("Database", "The database name, or the file path for SQLite.", json!({"type": "string"})),
                "username": optional("Username", "The user to connect as.", json!({"type": "string"})),
                "password": optional("Password", "The user's password.", secret_string()),
                "host": optional("Host", "The database server's host name or address.", json!({"type": "string"})),
                "port": optional("Port", "The database server's port.", json!({"type": "integer", "minimum": 0, "maximum": 65535})),
                "query": optional("Query", "Query parameters for the dialect or driver, appended to the URL.", json!({"type": "object", "additionalProperties": {"type": "string"}})),
            },
            "required": ["driver"],
        },
    });
    let rust_name = title;
    let code_example = format!(
        "```rust\nuse block_types::catalog::{rust_name};\nuse registry_client::BlockExt;\n\nlet connector = {rust_name}::load(\"postgres-connector\").await?;\n```"
    );
    BlockSpec {
        block_type: type_info(display, slug, rust_name, summary, &code_example),
        fields,
        capabilities: Vec::new(),
        version: SCHEMA_VERSION.to_owned(),
    }
}
