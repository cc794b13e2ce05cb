//! `blocks serve`: configuration, the master key's source, and the server's life.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use block_types::catalog::Collection;
use secrecy::{ExposeSecret, SecretString};

use crate::crypto::MasterKey;
use crate::http::{self, AppState};
use crate::store::{MasterKeySource, Store, StoreConfig};

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
    #[arg(long, env = "BLOCKS_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where the embedded store, its master key and the profile live [default: ~/.blocks]
    #[arg(long, env = "BLOCKS_HOME")]
    pub home: Option<PathBuf>,
    /// File holding the master key (32 bytes, standard base64, one line).
    #[arg(long, env = "BLOCKS_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Keep at most this many versions of each document (all when unset).
    #[arg(long, env = "BLOCKS_RETENTION")]
    pub retention: Option<u32>,
    /// Database connections in the pool [default: 16 on SQLite, 8 on PostgreSQL]
    #[arg(long, env = "BLOCKS_MAX_CONNECTIONS")]
    pub max_connections: Option<u32>,
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
            .finish()
    }
}

/// A database URL with its password replaced by `********`. A URL that does not parse
/// loses everything between `://` and `@`, where a password would be.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("********"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => match (url.find("://"), url.rfind('@')) {
            (Some(start), Some(at)) if at > start => {
                format!("{}://********{}", &url[..start], &url[at..])
            }
            _ => url.to_owned(),
        },
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

/// Writes a new key file readable by its owner only; never overwrites.
fn create_key_file(path: &Path, key: &MasterKey) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
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
) -> anyhow::Result<MasterKeySource> {
    if let Some(path) = &args.master_key_file {
        return Ok(MasterKeySource::Key(read_key_file(path)?));
    }
    if let Ok(text) = std::env::var("BLOCKS_MASTER_KEY") {
        let key = MasterKey::from_base64(&text).context("BLOCKS_MASTER_KEY is not usable")?;
        return Ok(MasterKeySource::Key(key));
    }
    if let Ok(passphrase) = std::env::var("BLOCKS_PASSPHRASE") {
        if passphrase.is_empty() {
            bail!("BLOCKS_PASSPHRASE is empty");
        }
        return Ok(MasterKeySource::Passphrase(SecretString::from(passphrase)));
    }
    let default = home.join("master.key");
    if default.exists() {
        return Ok(MasterKeySource::Key(read_key_file(&default)?));
    }
    match embedded_db {
        Some(db) if !db.exists() => {
            let key = MasterKey::generate()?;
            create_key_file(&default, &key)?;
            tracing::warn!(
                path = %default.display(),
                "created a new master key for this new store; back it up: without it the secrets in the store cannot be read"
            );
            Ok(MasterKeySource::Key(key))
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
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// The API base URL, `http://ADDR/api`.
    pub fn api_url(&self) -> String {
        format!("http://{}/api", self.addr)
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
    let home = home_dir(args)?;
    let (database_url, embedded_db) = match &args.database_url {
        Some(url) => (url.clone(), None),
        None => {
            create_home(&home)?;
            let db = home.join("blocks.db");
            (format!("sqlite://{}", db.display()), Some(db))
        }
    };
    let source = master_key_source(args, &home, embedded_db.as_deref())?;
    let config = StoreConfig {
        retention: args.retention,
        max_connections: args.max_connections,
        ..StoreConfig::default()
    };
    let store = Store::open(&database_url, source, config)
        .await
        .with_context(|| format!("cannot open the store at {}", redact_url(&database_url)))?;
    let store = Arc::new(store);
    http::register_collection(&store, Collection::Core)
        .await
        .context("cannot register the core blocks")?;
    let state = AppState::new(store);
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, api = %format!("http://{addr}/api"), "blocks registry listening");
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = http::app(state.clone());
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    _ = stopped => {}
                    () = terminate_signal() => tracing::info!("shutting down: finishing in-flight requests"),
                }
            })
            .await
    });
    Ok(Running {
        addr,
        state,
        shutdown,
        task,
    })
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
        socket
            .send(Message::text(r#"{"type": "auth", "token": null}"#))
            .await
            .unwrap();
        let reply = socket.next().await.unwrap().unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(reply.to_text().unwrap()).unwrap(),
            serde_json::json!({"type": "auth_success"})
        );
        let id = uuid::Uuid::new_v4();
        let event = serde_json::json!({"event": "prefect.block.gcs-bucket.loaded", "resource": {"prefect.resource.id": format!("prefect.block-document.{id}")}, "payload": {}, "id": uuid::Uuid::new_v4()});
        socket.send(Message::text(event.to_string())).await.unwrap();
        socket
            .send(Message::text(r#"{"event": "prefect.flow-run.Running"}"#))
            .await
            .unwrap();
        // The server handles frames in order: once a second handshake is answered, the
        // events before it have been handled.
        socket
            .send(Message::text(r#"{"type": "auth", "token": null}"#))
            .await
            .unwrap();
        socket.next().await.unwrap().unwrap();
        socket.close(None).await.unwrap();
        let events = server.state.block_load_events();
        assert_eq!(events.len(), 1, "only block-load events are kept");
        assert_eq!(events[0].event, "prefect.block.gcs-bucket.loaded");
        assert_eq!(events[0].resource, format!("prefect.block-document.{id}"));
        server.stop().await.unwrap();
    }
}
