//! `blocks serve`: configuration, the master key's source, and the server's life.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use block_types::catalog::Collection;
use secrecy::SecretString;

mod connections;
mod master_key;
mod profile;
mod store_files;
mod tls;

pub use connections::ConnectionArgs;
pub use master_key::new_master_source;
pub(crate) use store_files::create_private_file;
pub use store_files::{StoreArgs, open_existing};

use master_key::master_key_source;
use profile::{first_token, refresh_profile};
use store_files::{create_home, create_private_sqlite_file, home_dir, lock_sqlite_store};
use tls::tls_config;

use crate::http::{self, AppState};
use crate::store::{Store, StoreConfig};

/// Settings of `blocks serve`. Every flag can also be set through the environment; the
/// master key itself (`BLOCKS_MASTER_KEY`) and a passphrase (`BLOCKS_PASSPHRASE`) only
/// through the environment, so they never show in a process list.
#[derive(Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "BLOCKS_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; 0 picks a free one (the bound address is logged).
    #[arg(long, env = "BLOCKS_PORT", default_value_t = 4200)]
    pub port: u16,
    /// Where the store is and its master key.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Keep at most this many versions of each document (all when unset), unless the
    /// setting was changed over the API (`PATCH /api/settings`), which every replica shares.
    #[arg(long, env = "BLOCKS_RETENTION")]
    pub retention: Option<u32>,
    /// Database connections in the pool [default: 16 on SQLite, 8 on PostgreSQL]
    #[arg(long, env = "BLOCKS_MAX_CONNECTIONS")]
    pub max_connections: Option<u32>,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "BLOCKS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "BLOCKS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Let webhooks reach private, link-local and other reserved addresses (a receiver on
    /// the internal network). Off by default: a webhook URL is a server-side request the
    /// server makes, and those addresses hold internal services and cloud metadata.
    #[arg(long, env = "BLOCKS_WEBHOOKS_ALLOW_PRIVATE")]
    pub webhooks_allow_private: bool,
    /// Connection limits and timeouts.
    #[command(flatten)]
    pub connections: ConnectionArgs,
}

impl ServeArgs {
    /// An embedded store in `home` served on a free loopback port, every other setting as
    /// `blocks serve` has it by default (for embedding the server and for tests).
    pub fn embedded(home: impl Into<PathBuf>) -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 0,
            store: StoreArgs {
                home: Some(home.into()),
                ..StoreArgs::default()
            },
            retention: None,
            max_connections: None,
            tls_cert: None,
            tls_key: None,
            webhooks_allow_private: false,
            connections: ConnectionArgs::default(),
        }
    }
}

impl std::fmt::Debug for ServeArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeArgs")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("store", &self.store)
            .field("retention", &self.retention)
            .field("max_connections", &self.max_connections)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("webhooks_allow_private", &self.webhooks_allow_private)
            .field("connections", &self.connections)
            .finish()
    }
}

/// A database URL with its password replaced by `********`, in the user-info part and in
/// query parameters that carry one (`?password=`, `sslpassword`, …). A URL that does not
/// parse loses everything between `://` and `@`, where a password would be, and its query.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("********"));
            }
            if parsed.query().is_some() {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(k, v)| {
                        let secret = k.to_ascii_lowercase().contains("pass")
                            || k.eq_ignore_ascii_case("pwd");
                        let v = if secret {
                            "********".into()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string()
        }
        Err(_) => {
            let url = url.split('?').next().unwrap_or_default();
            match (url.find("://"), url.rfind('@')) {
                (Some(start), Some(at)) if at > start => {
                    format!("{}://********{}", &url[..start], &url[at..])
                }
                _ => url.to_owned(),
            }
        }
    }
}

/// A started server.
#[derive(Debug)]
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its state (store, events).
    pub state: AppState,
    /// Whether it serves HTTPS.
    pub tls: bool,
    /// The first admin token, when this start created it (a new database).
    pub first_token: Option<SecretString>,
    /// Held while serving an SQLite store: one server process per embedded store.
    _lock: Option<std::fs::File>,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// The API base URL, `http(s)://ADDR/api`.
    pub fn api_url(&self) -> String {
        api_url(self.addr, self.tls)
    }

    /// Stops accepting connections, lets in-flight requests finish, and waits.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(());
        self.task.await??;
        self.state.store.close().await;
        Ok(())
    }

    /// Waits until the server stops (after SIGTERM or Ctrl-C when started by `serve`).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await??;
        self.state.store.close().await;
        Ok(())
    }
}

/// Opens the store (creating `$BLOCKS_HOME` and a key for a new embedded store), registers
/// the core blocks and starts listening. `/api/ready` answers as soon as this returns.
pub async fn start(args: &ServeArgs) -> anyhow::Result<Running> {
    args.connections.check()?;
    let home = home_dir(&args.store)?;
    let (database_url, embedded_db) = match &args.store.database_url {
        Some(url) => (url.clone(), None),
        None => {
            create_home(&home)?;
            let db = home.join("blocks.db");
            (format!("sqlite://{}", db.display()), Some(db))
        }
    };
    let lock = lock_sqlite_store(&database_url)?;
    let (source, master_key_origin) =
        master_key_source(&args.store, &home, embedded_db.as_deref())?;
    let config = StoreConfig {
        retention: args.retention,
        max_connections: args.max_connections,
        master_key_origin,
        ..StoreConfig::default()
    };
    create_private_sqlite_file(&database_url)?;
    let store = Store::open(&database_url, source, config)
        .await
        .with_context(|| format!("cannot open the store at {}", redact_url(&database_url)))?;
    let store = Arc::new(store);
    store
        .register_collection(Collection::Core)
        .await
        .context("cannot register the core blocks")?;

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_config(cert, key).await?),
        _ => None,
    };
    let state = AppState::configured(
        store,
        http::AuthGuard::default(),
        args.connections.request_timeout(),
    );
    let state = if tls.is_some() {
        state.over_tls()
    } else {
        state
    };
    state.webhooks.allow_private(args.webhooks_allow_private);
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    let url = api_url(addr, tls.is_some());
    let first_token = first_token(&state, &home, &url).await?;
    if first_token.is_none() {
        refresh_profile(&state.store, &home.join("profile.toml"), &url).await;
    }
    let console = url.trim_end_matches("api");
    tracing::info!(%addr, api = %url, %console, "blocks registry listening; the console is at {console}");
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = http::app(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let signalled = async move {
        tokio::select! {
            _ = stopped => {}
            () = terminate_signal() => tracing::info!("shutting down: finishing in-flight requests"),
        }
    };
    // Plain HTTP and HTTPS alike: a place per connection, header-read and idle timeouts,
    // and a deadline for in-flight requests at shutdown.
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    let grace = args.connections.grace();
    let feed = Arc::clone(&state.feed);
    tokio::spawn(async move {
        signalled.await;
        // Event streams never finish by themselves: end them, so the shutdown waits only
        // for real requests (their clients reconnect, to another replica or after restart).
        feed.close();
        stopper.graceful_shutdown(Some(grace));
    });
    let listener = listener.into_std()?;
    let limit = args.connections.limit();
    let task = match tls.clone() {
        None => {
            let mut server = axum_server::from_tcp(listener)
                .acceptor(limit)
                .handle(handle);
            args.connections.configure(server.http_builder());
            tokio::spawn(async move { server.serve(app).await })
        }
        Some(config) => {
            let mut server = axum_server::from_tcp_rustls(listener, config)
                .map(|tls| tls.acceptor(limit))
                .handle(handle);
            args.connections.configure(server.http_builder());
            tokio::spawn(async move { server.serve(app).await })
        }
    };
    Ok(Running {
        addr,
        state,
        _lock: lock,
        tls: tls.is_some(),
        first_token,
        shutdown,
        task,
    })
}

/// `http(s)://ADDR/api`, with a wildcard listen address replaced by loopback.
fn api_url(addr: SocketAddr, tls: bool) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{addr}/api")
}

/// SIGTERM or Ctrl-C.
async fn terminate_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests;
