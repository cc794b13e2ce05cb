//! `blocks serve`: configuration, the master key's source, and the server's life.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use block_types::catalog::Collection;
use secrecy::{ExposeSecret, SecretString};

mod connections;

pub use connections::ConnectionArgs;

use crate::crypto::MasterKey;
use crate::http::{self, AppState};
use crate::store::{MasterKeyOrigin, MasterKeySource, Store, StoreConfig};

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
    /// Database URL: sqlite://PATH or postgres://…  [default: SQLite at $BLOCKS_HOME/blocks.db]
    #[arg(long, env = "BLOCKS_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Where the embedded store, its master key and the profile live [default: ~/.blocks]
    #[arg(long, env = "BLOCKS_HOME")]
    pub home: Option<PathBuf>,
    /// File holding the master key (32 bytes, standard base64, one line).
    #[arg(long, env = "BLOCKS_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
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

impl std::fmt::Debug for ServeArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeArgs")
            .field("host", &self.host)
            .field("port", &self.port)
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .field("home", &self.home)
            .field("master_key_file", &self.master_key_file)
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

/// `$BLOCKS_HOME`, or `~/.blocks`.
fn home_dir(args: &ServeArgs) -> anyhow::Result<PathBuf> {
    if let Some(home) = &args.home {
        return Ok(home.clone());
    }
    let user_home =
        std::env::home_dir().context("cannot find the home directory; set BLOCKS_HOME")?;
    Ok(user_home.join(".blocks"))
}

/// Reads a key file, warning when others may read it.
fn read_key_file(path: &Path) -> anyhow::Result<MasterKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the master key file {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), "the master key file can be read by other users; chmod 600 it");
        }
    }
    MasterKey::from_base64(&text)
        .with_context(|| format!("the master key file {} is not usable", path.display()))
}

/// Creates a new file only its owner can read or write (mode 0600 on Unix); never
/// overwrites an existing one.
pub(crate) fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Writes a new key file readable by its owner only; never overwrites.
fn create_key_file(path: &Path, key: &MasterKey) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = create_private_file(path)
        .with_context(|| format!("cannot create the master key file {}", path.display()))?;
    writeln!(file, "{}", key.to_base64().expose_secret())?;
    file.sync_all()?;
    // Make the new directory entry durable too: the store records the key's check value
    // next, and a store whose key file vanished in a crash would lose every secret.
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Where the master key comes from, in order: `--master-key-file`, `BLOCKS_MASTER_KEY`,
/// `BLOCKS_PASSPHRASE`, then `$BLOCKS_HOME/master.key`. A key file is created only for a
/// new embedded store; an existing store never gets a new key.
fn master_key_source(
    args: &ServeArgs,
    home: &Path,
    embedded_db: Option<&Path>,
) -> anyhow::Result<(MasterKeySource, MasterKeyOrigin)> {
    if let Some(path) = &args.master_key_file {
        return Ok((
            MasterKeySource::Key(read_key_file(path)?),
            MasterKeyOrigin::File(path.clone()),
        ));
    }
    if let Ok(text) = std::env::var("BLOCKS_MASTER_KEY") {
        let key = MasterKey::from_base64(&text).context("BLOCKS_MASTER_KEY is not usable")?;
        return Ok((MasterKeySource::Key(key), MasterKeyOrigin::Environment));
    }
    if let Ok(passphrase) = std::env::var("BLOCKS_PASSPHRASE") {
        if passphrase.is_empty() {
            bail!("BLOCKS_PASSPHRASE is empty");
        }
        return Ok((
            MasterKeySource::Passphrase(SecretString::from(passphrase)),
            MasterKeyOrigin::Passphrase,
        ));
    }
    let default = home.join("master.key");
    if default.exists() {
        return Ok((
            MasterKeySource::Key(read_key_file(&default)?),
            MasterKeyOrigin::File(default),
        ));
    }
    match embedded_db {
        Some(db) if !db.exists() => {
            let key = MasterKey::generate()?;
            create_key_file(&default, &key)?;
            tracing::warn!(
                path = %default.display(),
                "created a new master key for this new store; back it up: without it the secrets in the store cannot be read"
            );
            Ok((MasterKeySource::Key(key), MasterKeyOrigin::File(default)))
        }
        Some(db) => bail!(
            "the store {} exists but its master key {} is missing; give the key with --master-key-file, BLOCKS_MASTER_KEY or BLOCKS_PASSPHRASE",
            db.display(),
            default.display()
        ),
        None => bail!(
            "a database given by URL needs an explicit master key: --master-key-file, BLOCKS_MASTER_KEY or BLOCKS_PASSPHRASE"
        ),
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
    let home = home_dir(args)?;
    let (database_url, embedded_db) = match &args.database_url {
        Some(url) => (url.clone(), None),
        None => {
            create_home(&home)?;
            let db = home.join("blocks.db");
            (format!("sqlite://{}", db.display()), Some(db))
        }
    };
    let lock = lock_sqlite_store(&database_url)?;
    let (source, master_key_origin) = master_key_source(args, &home, embedded_db.as_deref())?;
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
    http::register_collection(&store, Collection::Core)
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

/// Where an existing store is and how to open it, for maintenance commands
/// (`blocks key change-master`): the same flags and environment as `serve`.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// Database URL [default: SQLite at $BLOCKS_HOME/blocks.db]
    #[arg(long, env = "BLOCKS_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Where the embedded store and its master key live [default: ~/.blocks]
    #[arg(long, env = "BLOCKS_HOME")]
    pub home: Option<PathBuf>,
    /// File holding the current master key.
    #[arg(long, env = "BLOCKS_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
}

/// Opens an existing store (never creates one or a key), holding the SQLite lock: no
/// server may be serving an embedded store meanwhile.
pub async fn open_existing(args: &StoreArgs) -> anyhow::Result<(Store, Option<std::fs::File>)> {
    let serve = ServeArgs {
        host: String::new(),
        port: 0,
        database_url: args.database_url.clone(),
        home: args.home.clone(),
        master_key_file: args.master_key_file.clone(),
        retention: None,
        max_connections: Some(2),
        tls_cert: None,
        tls_key: None,
        webhooks_allow_private: false,
        connections: ConnectionArgs::default(),
    };
    let home = home_dir(&serve)?;
    let (database_url, embedded_db) = match &args.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let db = home.join("blocks.db");
            if !db.exists() {
                bail!("there is no store at {}", db.display());
            }
            (format!("sqlite://{}", db.display()), Some(db))
        }
    };
    if !is_blocks_store(&database_url).await {
        bail!(
            "{} is not a blocks store (no key check found); nothing was changed",
            redact_url(&database_url)
        );
    }
    let lock = lock_sqlite_store(&database_url)?;
    let (source, _) = master_key_source(&serve, &home, embedded_db.as_deref())?;
    let store = Store::open(
        &database_url,
        source,
        StoreConfig {
            max_connections: Some(2),
            ..StoreConfig::default()
        },
    )
    .await
    .with_context(|| format!("cannot open the store at {}", redact_url(&database_url)))?;
    Ok((store, lock))
}

/// Whether `database_url` holds a blocks store (its key-check value), read without
/// creating or migrating anything.
async fn is_blocks_store(database_url: &str) -> bool {
    use sqlx::Connection as _;
    sqlx::any::install_default_drivers();
    let url = if database_url.starts_with("sqlite:") && !database_url.contains('?') {
        format!("{database_url}?mode=ro")
    } else {
        database_url.to_owned()
    };
    let Ok(mut conn) = sqlx::AnyConnection::connect(&url).await else {
        return false;
    };
    let found: Result<Option<String>, _> =
        sqlx::query_scalar("select value from server_metadata where key = 'key_check'")
            .fetch_optional(&mut conn)
            .await;
    conn.close().await.ok();
    matches!(found, Ok(Some(_)))
}

/// The new master key of `blocks key change-master`: `--new-master-key-file`, else
/// `BLOCKS_NEW_MASTER_KEY`, else `BLOCKS_NEW_PASSPHRASE`.
pub fn new_master_source(file: Option<&Path>) -> anyhow::Result<MasterKeySource> {
    if let Some(path) = file {
        return Ok(MasterKeySource::Key(read_key_file(path)?));
    }
    if let Ok(text) = std::env::var("BLOCKS_NEW_MASTER_KEY") {
        let key = MasterKey::from_base64(&text).context("BLOCKS_NEW_MASTER_KEY is not usable")?;
        return Ok(MasterKeySource::Key(key));
    }
    if let Ok(passphrase) = std::env::var("BLOCKS_NEW_PASSPHRASE") {
        if passphrase.chars().count() < 8 {
            bail!("BLOCKS_NEW_PASSPHRASE must be at least 8 characters");
        }
        return Ok(MasterKeySource::Passphrase(SecretString::from(passphrase)));
    }
    bail!(
        "give the new master key: --new-master-key-file, BLOCKS_NEW_MASTER_KEY or BLOCKS_NEW_PASSPHRASE (blocks key generate makes one)"
    )
}

/// An SQLite store is served by one process (its token cache and write queue are
/// in-process): an exclusive lock on `<db>.lock`, held until the server stops, refuses a
/// second `blocks serve` on the same file.
fn lock_sqlite_store(database_url: &str) -> anyhow::Result<Option<std::fs::File>> {
    let Some(path) = sqlite_path(database_url) else {
        return Ok(None);
    };
    let lock_path = PathBuf::from(format!("{path}.lock"));
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options
        .open(&lock_path)
        .with_context(|| format!("cannot open the store lock {}", lock_path.display()))?;
    make_store_files_private(Path::new(path), &lock_path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another blocks server is using the store {path}; an SQLite store is served by one process (use PostgreSQL for several replicas)"
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", lock_path.display()))
        }
    }
}

/// The path of an SQLite database URL (none for other databases and in-memory ones).
fn sqlite_path(database_url: &str) -> Option<&str> {
    let rest = database_url.strip_prefix("sqlite:")?;
    let path = rest.trim_start_matches("//");
    let path = path.split('?').next().unwrap_or(path);
    (!path.is_empty() && path != ":memory:").then_some(path)
}

/// A new SQLite database file is created 0600 before SQLite opens it: SQLite gives its
/// `-wal` and `-shm` files the database file's mode, so none of them is readable by
/// others whatever the umask or the directory.
fn create_private_sqlite_file(database_url: &str) -> anyhow::Result<()> {
    let Some(db) = sqlite_path(database_url) else {
        return Ok(());
    };
    match create_private_file(Path::new(db)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot create the store {db}")),
    }
}

/// The SQLite database, its `-wal` and `-shm` files and the lock hold token digests, the
/// audit log and ciphertexts: existing ones readable by others are made owner-only.
fn make_store_files_private(db: &Path, lock: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let wal = PathBuf::from(format!("{}-wal", db.display()));
        let shm = PathBuf::from(format!("{}-shm", db.display()));
        for file in [db, lock, &wal, &shm] {
            let Ok(meta) = std::fs::metadata(file) else {
                continue;
            };
            if meta.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("cannot make {} private", file.display()))?;
                tracing::warn!(file = %file.display(), "store file was readable by others; made it owner-only (0600)");
            }
        }
    }
    Ok(())
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

/// Loads the certificate chain and key for HTTPS.
async fn tls_config(
    cert: &Path,
    key: &Path,
) -> anyhow::Result<axum_server::tls_rustls::RustlsConfig> {
    // sqlx brings rustls with ring; make it the process's provider (a second call fails
    // harmlessly when one is installed).
    let _ = rustls::crypto::ring::default_provider().install_default();
    axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .with_context(|| {
            format!(
                "cannot use the TLS certificate {} and key {}",
                cert.display(),
                key.display()
            )
        })
}

/// On a database that never had one, creates the first admin token and writes it with the
/// API URL to `$BLOCKS_HOME/profile.toml` (mode 0600), then says where it is; the token
/// itself is never printed where a terminal log or a CI log would keep it. When a profile
/// of another store is already there, the token goes to a new owner-only file beside it.
async fn first_token(
    state: &AppState,
    home: &Path,
    url: &str,
) -> anyhow::Result<Option<SecretString>> {
    let Some(created) = state
        .store
        .bootstrap_admin_token()
        .await
        .context("cannot create the first admin token")?
    else {
        return Ok(None);
    };
    let profile = home.join("profile.toml");
    let written = if profile.exists() {
        // It belongs to another store (or an earlier one): its token is not replaced.
        let path = home.join(format!("admin-token-{}", created.info.id));
        create_private_file(&path)
            .and_then(|mut file| {
                use std::io::Write as _;
                writeln!(file, "{}", created.token.expose_secret())
            })
            .map(|()| path)
            .with_context(|| format!("cannot write {}", home.display()))
    } else {
        create_home(home)
            .and_then(|()| write_profile(&profile, url, &created.token))
            .map(|()| profile)
    };
    match written {
        Ok(path) => {
            #[allow(clippy::print_stdout)]
            {
                println!(
                    "Created the first admin token; it is in {} (readable by you only). Use it as `Authorization: Bearer <token>`, or as PREFECT_API_KEY for Prefect clients.",
                    path.display()
                );
            }
            tracing::info!(token_id = %created.info.id, file = %path.display(), "created the first admin token");
        }
        Err(e) => {
            // Nowhere to keep it: shown once rather than lost (an admin on this host can
            // also make a new one with `blocks token create --offline`).
            tracing::warn!(
                token_id = %created.info.id,
                error = %format!("{e:#}"),
                "created the first admin token but could not write it to a file; it is shown once on standard output"
            );
            #[allow(clippy::print_stdout)]
            {
                println!(
                    "Created the first admin token (shown only this once):\n\n    {}\n",
                    created.token.expose_secret()
                );
            }
        }
    }
    Ok(Some(created.token))
}

/// Points an existing profile at this server's address (a restart may listen elsewhere,
/// e.g. with `--port 0`), keeping its token — only when that token is one of this store's:
/// a profile of another store is left alone, as is one that does not parse.
async fn refresh_profile(store: &Store, path: &Path, url: &str) {
    #[derive(serde::Deserialize)]
    struct Stored {
        api_url: String,
        api_key: String,
    }
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let Ok(stored) = toml::from_str::<Stored>(&text) else {
        return;
    };
    if stored.api_url == url || !matches!(store.authenticate(&stored.api_key).await, Ok(Ok(_))) {
        return;
    }
    let key = SecretString::from(stored.api_key);
    if let Err(e) = write_profile(path, url, &key) {
        tracing::warn!(error = %format!("{e:#}"), profile = %path.display(), "could not update the profile's api_url");
    }
}

/// The profile the CLI and client read: `api_url` and `api_key`.
#[derive(serde::Serialize)]
struct Profile<'a> {
    api_url: &'a str,
    api_key: &'a str,
}

/// Writes the profile readable by its owner only, replacing any earlier one atomically.
fn write_profile(path: &Path, url: &str, token: &SecretString) -> anyhow::Result<()> {
    use std::io::Write;
    let text = toml::to_string(&Profile {
        api_url: url,
        api_key: token.expose_secret(),
    })
    .context("cannot encode the profile")?;
    let tmp = path.with_extension("toml.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file =
        create_private_file(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn create_home(home: &Path) -> anyhow::Result<()> {
    if home.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(home).with_context(|| format!("cannot create {}", home.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
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
mod tests {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    use super::*;

    fn args(home: &Path) -> ServeArgs {
        ServeArgs {
            host: "127.0.0.1".into(),
            port: 0,
            database_url: None,
            home: Some(home.to_owned()),
            master_key_file: None,
            retention: None,
            max_connections: None,
            tls_cert: None,
            tls_key: None,
            webhooks_allow_private: false,
            connections: ConnectionArgs::default(),
        }
    }

    #[tokio::test]
    async fn a_new_embedded_store_gets_a_private_key_file_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("blocks-home");
        let started = std::time::Instant::now();
        let server = start(&args(&home)).await.unwrap();
        let ready = reqwest::get(format!("{}/ready", server.api_url()))
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
        // A generous bound for a debug build on a busy machine; the benchmark measures it.
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        assert_ne!(server.addr.port(), 0, "port 0 picks a free port");
        let key_file = home.join("master.key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
                0o600
            );
            assert_eq!(
                std::fs::metadata(&home).unwrap().permissions().mode() & 0o777,
                0o700
            );
        }
        let key = std::fs::read_to_string(&key_file).unwrap();
        server.stop().await.unwrap();

        // A restart reuses the key.
        let again = start(&args(&home)).await.unwrap();
        again.stop().await.unwrap();
        assert_eq!(std::fs::read_to_string(&key_file).unwrap(), key);

        // The key file gone: refused, never a new key for an existing store.
        std::fs::rename(&key_file, home.join("saved.key")).unwrap();
        let err = start(&args(&home)).await.unwrap_err();
        assert!(format!("{err:#}").contains("master key"), "{err:#}");
        assert!(!key_file.exists());

        // Another key: refused at open.
        let other = home.join("other.key");
        create_key_file(&other, &MasterKey::generate().unwrap()).unwrap();
        let err = start(&ServeArgs {
            master_key_file: Some(other),
            ..args(&home)
        })
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains("does not match"), "{err:#}");

        // The saved key given explicitly: accepted.
        let ok = start(&ServeArgs {
            master_key_file: Some(home.join("saved.key")),
            ..args(&home)
        })
        .await
        .unwrap();
        ok.stop().await.unwrap();
    }

    fn with_connections(home: &Path, connections: ConnectionArgs) -> ServeArgs {
        ServeArgs {
            connections,
            ..args(home)
        }
    }

    /// Reads until the server closes the connection; `None` if it is still open after
    /// 20 s (a bound on the test, not a measurement).
    async fn closed_by_server(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
        use tokio::io::AsyncReadExt as _;
        let mut seen = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            stream.read_to_end(&mut seen),
        )
        .await;
        match read {
            Ok(_) => Some(seen),
            Err(_) => None,
        }
    }

    #[tokio::test]
    async fn a_half_sent_request_is_closed_after_the_header_read_timeout() {
        use tokio::io::AsyncWriteExt as _;
        let dir = tempfile::tempdir().unwrap();
        let server = start(&with_connections(
            dir.path(),
            ConnectionArgs {
                header_read_timeout: 1,
                ..ConnectionArgs::default()
            },
        ))
        .await
        .unwrap();
        let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        slow.write_all(b"GET /api/hea").await.unwrap();
        assert!(closed_by_server(&mut slow).await.is_some(), "still open");
        // An idle keep-alive connection is closed the same way.
        let mut idle = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        idle.write_all(b"GET /api/health HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = closed_by_server(&mut idle)
            .await
            .expect("idle connection closed");
        assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn connections_over_the_limit_are_closed_at_accept_and_places_come_back() {
        use tokio::io::AsyncWriteExt as _;
        let dir = tempfile::tempdir().unwrap();
        let server = start(&with_connections(
            dir.path(),
            ConnectionArgs {
                connection_limit: 2,
                ..ConnectionArgs::default()
            },
        ))
        .await
        .unwrap();
        let health = b"GET /api/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
        let _held = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        // One place left: a request is answered, and its place comes back when it closes.
        let mut served = 0;
        for _ in 0..200 {
            let mut conn = tokio::net::TcpStream::connect(server.addr).await.unwrap();
            if conn.write_all(health).await.is_err() {
                continue;
            }
            let answer = closed_by_server(&mut conn).await.unwrap_or_default();
            if String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200") {
                served += 1;
                if served == 3 {
                    break;
                }
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(
            served, 3,
            "the free place serves one connection after another"
        );
        // Both places taken: the next connection is closed without an answer.
        let mut second = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        second.write_all(b"GET /api/hea").await.unwrap();
        let mut refused = None;
        for _ in 0..200 {
            let mut conn = tokio::net::TcpStream::connect(server.addr).await.unwrap();
            let _ = conn.write_all(health).await;
            let answer = closed_by_server(&mut conn).await.expect("closed");
            if answer.is_empty() {
                refused = Some(());
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(
            refused.is_some(),
            "a connection over the limit is closed at accept"
        );
        drop(second);
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_closes_a_stalled_connection_after_the_grace_period() {
        use tokio::io::AsyncWriteExt as _;
        let dir = tempfile::tempdir().unwrap();
        let server = start(&with_connections(
            dir.path(),
            ConnectionArgs {
                header_read_timeout: 600,
                shutdown_grace: 1,
                ..ConnectionArgs::default()
            },
        ))
        .await
        .unwrap();
        let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        slow.write_all(b"GET /api/hea").await.unwrap();
        // Without a deadline the stalled request would hold the shutdown for 600 s.
        tokio::time::timeout(std::time::Duration::from_secs(15), server.stop())
            .await
            .expect("stopped within the grace period")
            .unwrap();
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn store_files_are_private_in_an_open_home_and_at_a_custom_path() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
        let custom_dir = dir.path().join("data");
        std::fs::create_dir(&custom_dir).unwrap();
        std::fs::set_permissions(&custom_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let key = dir.path().join("custom.key");
        create_key_file(&key, &MasterKey::generate().unwrap()).unwrap();
        let custom = ServeArgs {
            database_url: Some(format!(
                "sqlite://{}",
                custom_dir.join("store.db").display()
            )),
            master_key_file: Some(key),
            ..args(&dir.path().join("other-home"))
        };
        for (args, db) in [
            (args(&home), home.join("blocks.db")),
            (custom, custom_dir.join("store.db")),
        ] {
            let server = start(&args).await.unwrap();
            // A write, so the WAL and shared-memory files exist.
            let token = server
                .first_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned());
            let token = match token {
                Some(t) => t,
                None => server
                    .state
                    .store
                    .create_token(crate::store::TokenCreate {
                        name: "t".into(),
                        scopes: [crate::store::Scope::Admin].into_iter().collect(),
                        expires: None,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .token
                    .expose_secret()
                    .to_owned(),
            };
            assert!(!token.is_empty());
            for suffix in ["", "-wal", "-shm", ".lock"] {
                let file = PathBuf::from(format!("{}{suffix}", db.display()));
                assert_eq!(mode(&file), 0o600, "{}", file.display());
            }
            server.stop().await.unwrap();
        }
        // A database left readable by others is tightened at the next start.
        std::fs::set_permissions(
            home.join("blocks.db"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let server = start(&args(&home)).await.unwrap();
        assert_eq!(mode(&home.join("blocks.db")), 0o600);
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn a_second_server_on_the_same_sqlite_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let first = start(&args(&home)).await.unwrap();
        let err = start(&args(&home)).await.unwrap_err();
        assert!(
            format!("{err:#}").contains("another blocks server"),
            "{err:#}"
        );
        first.stop().await.unwrap();
        let again = start(&args(&home)).await.unwrap();
        again.stop().await.unwrap();
    }

    #[tokio::test]
    async fn a_database_url_needs_an_explicit_key() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("x.db").display());
        let err = start(&ServeArgs {
            database_url: Some(url),
            ..args(dir.path())
        })
        .await
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("needs an explicit master key"),
            "{err:#}"
        );
        assert_eq!(
            redact_url("postgres://u:hunter2@db/blocks"),
            "postgres://u:********@db/blocks"
        );
        let redacted = redact_url(
            "postgres://u@db/blocks?sslmode=require&password=hunter2&SSLPASSWORD=hunter2",
        );
        assert!(!redacted.contains("hunter2"), "{redacted}");
        assert!(redacted.contains("sslmode=require"), "{redacted}");
        assert!(!redact_url("postgres://u:hunter2@[bad/x?password=hunter2").contains("hunter2"));
        // The start-up error names the store without the password in its query.
        let err = start(&ServeArgs {
            database_url: Some("postgres://u@127.0.0.1:1/x?password=hunter2".into()),
            master_key_file: Some({
                let path = dir.path().join("pg.key");
                create_key_file(&path, &MasterKey::generate().unwrap()).unwrap();
                path
            }),
            ..args(dir.path())
        })
        .await
        .unwrap_err();
        assert!(!format!("{err:#} {err:?}").contains("hunter2"), "{err:#}");
        let debug = format!(
            "{:?}",
            ServeArgs {
                database_url: Some("postgres://u:hunter2@db/x".into()),
                ..args(dir.path())
            }
        );
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[tokio::test]
    async fn the_events_socket_accepts_auth_and_keeps_block_load_events() {
        let dir = tempfile::tempdir().unwrap();
        let server = start(&args(dir.path())).await.unwrap();
        let mut request = format!("ws://{}/api/events/in", server.addr)
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "prefect".parse().unwrap());
        let (mut socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        assert_eq!(
            response.headers().get("sec-websocket-protocol").unwrap(),
            "prefect"
        );
        let token = server
            .first_token
            .as_ref()
            .unwrap()
            .expose_secret()
            .to_owned();
        // Prefect sends PREFECT_API_AUTH_STRING (`<name>:<token>`) as the token.
        let auth = serde_json::json!({"type": "auth", "token": format!("prefect:{token}")});
        socket.send(Message::text(auth.to_string())).await.unwrap();
        let reply = socket.next().await.unwrap().unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(reply.to_text().unwrap()).unwrap(),
            serde_json::json!({"type": "auth_success"})
        );
        // A block-load event must name a document that exists, of the type it names.
        let store = &server.state.store;
        let (_, schema) =
            crate::store::tests::harness::register::<block_types::catalog::Secret>(store).await;
        let id = crate::store::tests::harness::create(
            store,
            &schema,
            "loaded",
            serde_json::json!({"value": "v"}),
        )
        .await
        .id;
        let event = serde_json::json!({"event": "prefect.block.secret.loaded", "resource": {"prefect.resource.id": format!("prefect.block-document.{id}")}, "payload": {}, "id": uuid::Uuid::new_v4()});
        socket.send(Message::text(event.to_string())).await.unwrap();
        socket
            .send(Message::text(r#"{"event": "prefect.flow-run.Running"}"#))
            .await
            .unwrap();
        // The server handles frames in order: once a second handshake is answered, the
        // events before it have been handled.
        socket.send(Message::text(auth.to_string())).await.unwrap();
        socket.next().await.unwrap().unwrap();
        socket.close(None).await.unwrap();
        let events = server.state.block_load_events();
        assert_eq!(events.len(), 1, "only block-load events are kept");
        assert_eq!(events[0].event, "prefect.block.secret.loaded");
        assert_eq!(events[0].resource, format!("prefect.block-document.{id}"));
        // …and audited under the token that sent it.
        let loads = server
            .state
            .store
            .list_audit(&crate::store::AuditQuery {
                action: Some("block.loaded".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(loads.len(), 1);
        assert!(loads[0].target.ends_with(&id.to_string()));
        assert!(loads[0].token_id.is_some());

        // Without a token (or with a wrong one) the handshake fails and nothing is kept.
        for token in [
            serde_json::Value::Null,
            serde_json::json!("prefect:blk_wrong"),
        ] {
            let mut request = format!("ws://{}/api/events/in", server.addr)
                .into_client_request()
                .unwrap();
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", "prefect".parse().unwrap());
            let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
            let auth = serde_json::json!({"type": "auth", "token": token});
            socket.send(Message::text(auth.to_string())).await.unwrap();
            let reply = socket.next().await.unwrap().unwrap();
            let reply: serde_json::Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
            assert_eq!(reply["type"], "auth_failure", "{reply}");
            socket.send(Message::text(event.to_string())).await.ok();
        }
        assert_eq!(server.state.block_load_events().len(), 1);
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn the_first_start_creates_one_admin_token_and_a_private_profile() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let server = start(&args(&home)).await.unwrap();
        let token = server
            .first_token
            .as_ref()
            .unwrap()
            .expose_secret()
            .to_owned();
        assert!(
            token.starts_with("blk_") && token.len() >= 4 + 43,
            "256 bits, prefixed"
        );
        let profile = home.join("profile.toml");
        let text = std::fs::read_to_string(&profile).unwrap();
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(parsed["api_url"].as_str().unwrap(), server.api_url());
        assert_eq!(parsed["api_key"].as_str().unwrap(), token);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&profile).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let client = reqwest::Client::new();
        let tokens = client
            .get(format!("{}/tokens", server.api_url()))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(tokens.status(), 200);
        let tokens: serde_json::Value = tokens.json().await.unwrap();
        assert_eq!(tokens.as_array().unwrap().len(), 1);
        assert_eq!(tokens[0]["scopes"], serde_json::json!(["admin"]));
        assert!(
            !tokens.to_string().contains(&token),
            "a listing never shows the token"
        );
        server.stop().await.unwrap();

        // A restart creates no second token; the profile keeps the token and follows
        // the new address.
        let again = start(&args(&home)).await.unwrap();
        assert!(again.first_token.is_none());
        let leftovers: Vec<_> = std::fs::read_dir(&home)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("admin-token-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let parsed: toml::Table =
            toml::from_str(&std::fs::read_to_string(&profile).unwrap()).unwrap();
        assert_eq!(parsed["api_url"].as_str().unwrap(), again.api_url());
        assert_eq!(parsed["api_key"].as_str().unwrap(), token);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&profile).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        again.stop().await.unwrap();
    }

    #[tokio::test]
    async fn a_new_store_beside_another_stores_profile_keeps_its_token_in_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        std::fs::write(
            home.join("profile.toml"),
            "api_url = \"x\"\napi_key = \"other\"\n",
        )
        .unwrap();
        let server = start(&args(&home)).await.unwrap();
        let token = server
            .first_token
            .as_ref()
            .unwrap()
            .expose_secret()
            .to_owned();
        let files: Vec<PathBuf> = std::fs::read_dir(&home)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("admin-token-")
            })
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(std::fs::read_to_string(&files[0]).unwrap().trim(), token);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert!(
            std::fs::read_to_string(home.join("profile.toml"))
                .unwrap()
                .contains("other")
        );
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn replicas_starting_together_create_exactly_one_admin_token() {
        crate::store::tests::harness::on_both(async |db| {
            let mut stores = Vec::new();
            for _ in 0..4 {
                stores.push(Arc::new(db.open().await));
            }
            let created =
                futures::future::join_all(stores.iter().map(|s| s.bootstrap_admin_token())).await;
            let winners = created
                .into_iter()
                .map(|r| r.unwrap())
                .filter(Option::is_some)
                .count();
            assert_eq!(winners, 1);
            assert_eq!(stores[0].list_tokens().await.unwrap().len(), 1);
        })
        .await;
    }

    #[tokio::test]
    async fn tls_serves_https_with_the_given_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
        let server = start(&ServeArgs {
            tls_cert: Some(cert_path),
            tls_key: Some(key_path),
            ..args(&dir.path().join("home"))
        })
        .await
        .unwrap();
        assert!(server.api_url().starts_with("https://"));
        let token = server
            .first_token
            .as_ref()
            .unwrap()
            .expose_secret()
            .to_owned();
        let client = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap(),
            )
            .resolve("localhost", server.addr)
            .build()
            .unwrap();
        let url = format!("https://localhost:{}/api", server.addr.port());
        let ready = client.get(format!("{url}/ready")).send().await.unwrap();
        assert_eq!(ready.status(), 200);
        let hello = client
            .get(format!("{url}/hello"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(hello.status(), 200);
        // Plain HTTP to the TLS port does not get an answer from the API.
        let plain = reqwest::get(format!("http://{}/api/ready", server.addr)).await;
        assert!(plain.map(|r| r.status() != 200).unwrap_or(true));
        server.stop().await.unwrap();
    }
}
