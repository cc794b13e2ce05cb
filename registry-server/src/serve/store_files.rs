//! Where a store lives and how its files are kept: the home directory, the SQLite
//! file and its lock, opening an existing store for maintenance.

use super::master_key::master_key_source;
use super::redact_url;
use crate::store::{Store, StoreConfig};
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};

/// Where an existing store is and how to open it, for maintenance commands
/// (`blocks key change-master`): the same flags and environment as `serve`.
#[derive(Clone, Default, clap::Args)]
pub struct StoreArgs {
    /// Database URL: sqlite://PATH or postgres://…  [default: SQLite at $BLOCKS_HOME/blocks.db]
    #[arg(long, env = "BLOCKS_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Where the embedded store, its master key and the profile live [default: ~/.blocks]
    #[arg(long, env = "BLOCKS_HOME")]
    pub home: Option<PathBuf>,
    /// File holding the store's current master key (32 bytes, standard base64, one line).
    #[arg(long, env = "BLOCKS_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
}

impl std::fmt::Debug for StoreArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreArgs")
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .field("home", &self.home)
            .field("master_key_file", &self.master_key_file)
            .finish()
    }
}

/// `$BLOCKS_HOME`, or `~/.blocks`.
pub(super) fn home_dir(args: &StoreArgs) -> anyhow::Result<PathBuf> {
    if let Some(home) = &args.home {
        return Ok(home.clone());
    }
    let user_home =
        std::env::home_dir().context("cannot find the home directory; set BLOCKS_HOME")?;
    Ok(user_home.join(".blocks"))
}

/// Opens an existing store (never creates one or a key), holding the SQLite lock: no
/// server may be serving an embedded store meanwhile.
pub async fn open_existing(args: &StoreArgs) -> anyhow::Result<(Store, Option<std::fs::File>)> {
    let home = home_dir(args)?;
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
    if !Store::exists_at(&database_url).await {
        bail!(
            "{} is not a blocks store (no key check found); nothing was changed",
            redact_url(&database_url)
        );
    }
    let lock = lock_sqlite_store(&database_url)?;
    let (source, _) = master_key_source(args, &home, embedded_db.as_deref())?;
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

/// An SQLite store is served by one process (its token cache and write queue are
/// in-process): an exclusive lock on `<db>.lock`, held until the server stops, refuses a
/// second `blocks serve` on the same file.
pub(super) fn lock_sqlite_store(database_url: &str) -> anyhow::Result<Option<std::fs::File>> {
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
pub(super) fn sqlite_path(database_url: &str) -> Option<&str> {
    let rest = database_url.strip_prefix("sqlite:")?;
    let path = rest.trim_start_matches("//");
    let path = path.split('?').next().unwrap_or(path);
    (!path.is_empty() && path != ":memory:").then_some(path)
}

/// A new SQLite database file is created 0600 before SQLite opens it: SQLite gives its
/// `-wal` and `-shm` files the database file's mode, so none of them is readable by
/// others whatever the umask or the directory.
pub(super) fn create_private_sqlite_file(database_url: &str) -> anyhow::Result<()> {
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
pub(super) fn make_store_files_private(db: &Path, lock: &Path) -> anyhow::Result<()> {
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

pub(super) fn create_home(home: &Path) -> anyhow::Result<()> {
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
