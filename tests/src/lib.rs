//! End-to-end tests across the workspace: server, client and CLI together, and interop
//! with the Prefect Python client. Test helpers live here; the tests live in `tests/`.
//!
//! Services a test needs (PostgreSQL, MySQL/MariaDB, a GCS emulator) are found through
//! environment variables with local defaults. When one is missing the test says so and
//! skips, except under `CI`, where it fails.

#![allow(clippy::print_stderr, clippy::unwrap_used, clippy::expect_used)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection as _;
use sqlx::Executor as _;

/// A `blocks serve` on a free loopback port over a new embedded store in a temporary
/// `$BLOCKS_HOME`, with the admin token its first start created.
pub struct TestServer {
    /// The running server.
    pub running: registry_server::serve::Running,
    /// The first admin token.
    pub admin: String,
    /// The temporary directory holding `$BLOCKS_HOME` (`home/`).
    pub dir: tempfile::TempDir,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("api", &self.api())
            .field("admin", &"********")
            .finish_non_exhaustive()
    }
}

impl TestServer {
    /// Starts one over HTTP.
    pub async fn start() -> Self {
        Self::start_with_tls(None).await
    }

    /// Starts one, over HTTPS when given a certificate and key (PEM files).
    pub async fn start_with_tls(tls: Option<(PathBuf, PathBuf)>) -> Self {
        use secrecy::ExposeSecret as _;
        let dir = tempfile::tempdir().unwrap();
        let (tls_cert, tls_key) = tls.unzip();
        let running = registry_server::serve::start(&registry_server::serve::ServeArgs {
            tls_cert,
            tls_key,
            ..registry_server::serve::ServeArgs::embedded(dir.path().join("home"))
        })
        .await
        .unwrap();
        let admin = running
            .first_token
            .as_ref()
            .expect("a new store creates its first token")
            .expose_secret()
            .to_owned();
        Self {
            running,
            admin,
            dir,
        }
    }

    /// The API's base URL (`http://127.0.0.1:<port>/api`).
    pub fn api(&self) -> String {
        self.running.api_url()
    }
}

/// Where tests create their PostgreSQL databases.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The MySQL/MariaDB database tests use.
pub const DEFAULT_MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";

/// A URL without its password, for messages.
pub fn shown(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                parsed.set_password(Some("********")).ok();
            }
            parsed.to_string()
        }
        Err(_) => "(a URL that does not parse)".to_owned(),
    }
}

/// Skips (returns `None`) with a message, or fails under `CI`.
pub fn unavailable<T>(what: &str, why: &str) -> Option<T> {
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} is unavailable under CI: {why}"
    );
    eprintln!("SKIPPED: {what} is unavailable ({why})");
    None
}

/// A fresh PostgreSQL database, dropped by [`PostgresDb::drop_database`] or, when a test
/// fails before that, on drop. `Debug` hides passwords.
pub struct PostgresDb {
    /// Its URL.
    pub url: url::Url,
    /// Its name.
    pub name: String,
    admin_url: String,
    dropped: bool,
}

impl std::fmt::Debug for PostgresDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresDb")
            .field("url", &shown(self.url.as_str()))
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // Possibly inside a runtime that is unwinding: drop it from a thread of its own.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(drop_database(&admin_url, &name));
            }
        })
        .join()
        .ok();
    }
}

async fn drop_database(admin_url: &str, name: &str) {
    if let Ok(mut admin) = sqlx::PgConnection::connect(admin_url).await {
        admin
            .execute(format!("drop database if exists {name} with (force)").as_str())
            .await
            .ok();
        admin.close().await.ok();
    }
}

impl PostgresDb {
    /// Creates a database under `BLOCKS_TEST_POSTGRES_URL`.
    pub async fn create() -> Option<Self> {
        let admin_url = std::env::var("BLOCKS_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
        let mut admin = match sqlx::PgConnection::connect(&admin_url).await {
            Ok(conn) => conn,
            Err(e) => {
                return unavailable(
                    &format!("PostgreSQL at {}", shown(&admin_url)),
                    &e.to_string(),
                );
            }
        };
        let name = format!("blocks_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .execute(format!("create database {name}").as_str())
            .await
            .unwrap();
        admin.close().await.ok();
        let mut url = url::Url::parse(&admin_url).unwrap();
        url.set_path(&name);
        Some(Self {
            url,
            name,
            admin_url,
            dropped: false,
        })
    }

    /// Drops the database.
    pub async fn drop_database(mut self) {
        drop_database(&self.admin_url, &self.name).await;
        self.dropped = true;
    }
}

/// The MySQL/MariaDB URL of `BLOCKS_TEST_MYSQL_URL`, once it answers.
pub async fn mysql_url() -> Option<url::Url> {
    let url =
        std::env::var("BLOCKS_TEST_MYSQL_URL").unwrap_or_else(|_| DEFAULT_MYSQL_URL.to_owned());
    match sqlx::MySqlConnection::connect(&url).await {
        Ok(conn) => {
            conn.close().await.ok();
            Some(url::Url::parse(&url).unwrap())
        }
        Err(e) => unavailable(&format!("MySQL at {}", shown(&url)), &e.to_string()),
    }
}

/// A `gcp-storage-emulator` on a free loopback port, killed on drop. Found through
/// `BLOCKS_TEST_GCS_EMULATOR` (the executable), then `PATH`, then the interop virtual
/// environment (`~/.cache/blocks-interop-venv`, which `scripts/test` prepares).
#[derive(Debug)]
pub struct GcsEmulator {
    /// `http://127.0.0.1:<port>`, the value for `STORAGE_EMULATOR_HOST`.
    pub url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl GcsEmulator {
    /// Starts an in-memory emulator holding the empty bucket `bucket`.
    pub fn start(bucket: &str) -> Option<Self> {
        let Some(program) = emulator_program() else {
            return unavailable(
                "gcp-storage-emulator",
                "not found; set BLOCKS_TEST_GCS_EMULATOR or run scripts/test, which installs it",
            );
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("emulator.log")).unwrap();
        let child = Command::new(&program)
            .args(["start", "--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--in-memory", "--default-bucket", bucket])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let mut emulator = Self {
            url: format!("http://127.0.0.1:{port}"),
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(emulator);
            }
            if let Ok(Some(status)) = emulator.child.try_wait() {
                let log = std::fs::read_to_string(emulator._dir.path().join("emulator.log"))
                    .unwrap_or_default();
                panic!("the GCS emulator exited ({status}): {log}");
            }
            assert!(
                Instant::now() < deadline,
                "the GCS emulator did not start in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for GcsEmulator {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn emulator_program() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("BLOCKS_TEST_GCS_EMULATOR") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("gcp-storage-emulator"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let home = std::env::var_os("HOME")?;
        let venv = std::env::var_os("BLOCKS_INTEROP_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(home).join(".cache/blocks-interop-venv"));
        Some(venv.join("bin/gcp-storage-emulator")).filter(|p| p.is_file())
    })
}
