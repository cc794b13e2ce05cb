use futures::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::{ClientRequestBuilder, Message};

use std::path::{Path, PathBuf};

use secrecy::ExposeSecret as _;

use super::master_key::create_key_file;
use super::*;
use crate::crypto::MasterKey;
use crate::http::test_app::{secret_doc, token};
use crate::store::Scope;

fn args(home: &Path) -> ServeArgs {
    ServeArgs::embedded(home)
}

fn with_store(
    home: &Path,
    database_url: Option<String>,
    master_key_file: Option<PathBuf>,
) -> ServeArgs {
    let mut args = args(home);
    args.store.database_url = database_url;
    args.store.master_key_file = master_key_file;
    args
}

/// The admin token this start created (a new database).
fn first_token(server: &Running) -> String {
    server
        .first_token
        .as_ref()
        .expect("a first admin token")
        .expose_secret()
        .to_owned()
}

/// A file's permission bits.
#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The files a first start wrote its token to beside another store's profile.
fn admin_token_files(home: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(home)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("admin-token-")
        })
        .collect()
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
        assert_eq!(mode(&key_file), 0o600);
        assert_eq!(mode(&home), 0o700);
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
    let err = start(&with_store(&home, None, Some(other)))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("does not match"), "{err:#}");

    // The saved key given explicitly: accepted.
    let ok = start(&with_store(&home, None, Some(home.join("saved.key"))))
        .await
        .unwrap();
    ok.stop().await.unwrap();
}

/// Starts a server on `home` with these connection settings.
async fn start_with_connections(home: &Path, connections: ConnectionArgs) -> Running {
    start(&ServeArgs {
        connections,
        ..args(home)
    })
    .await
    .unwrap()
}

/// A connection that sent the start of a request and nothing more.
async fn half_sent_request(server: &Running) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt as _;
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /api/hea").await.unwrap();
    slow
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
    let server = start_with_connections(
        dir.path(),
        ConnectionArgs {
            header_read_timeout: 1,
            ..ConnectionArgs::default()
        },
    )
    .await;
    let mut slow = half_sent_request(&server).await;
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
    let server = start_with_connections(
        dir.path(),
        ConnectionArgs {
            connection_limit: 2,
            ..ConnectionArgs::default()
        },
    )
    .await;
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
    let second = half_sent_request(&server).await;
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
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_connections(
        dir.path(),
        ConnectionArgs {
            header_read_timeout: 600,
            shutdown_grace: 1,
            ..ConnectionArgs::default()
        },
    )
    .await;
    let _slow = half_sent_request(&server).await;
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
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
    let custom_dir = dir.path().join("data");
    std::fs::create_dir(&custom_dir).unwrap();
    std::fs::set_permissions(&custom_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let key = dir.path().join("custom.key");
    create_key_file(&key, &MasterKey::generate().unwrap()).unwrap();
    let custom = with_store(
        &dir.path().join("other-home"),
        Some(format!(
            "sqlite://{}",
            custom_dir.join("store.db").display()
        )),
        Some(key),
    );
    for (args, db) in [
        (args(&home), home.join("blocks.db")),
        (custom, custom_dir.join("store.db")),
    ] {
        let server = start(&args).await.unwrap();
        // A write, so the WAL and shared-memory files exist.
        let token = match &server.first_token {
            Some(t) => t.expose_secret().to_owned(),
            None => token(&server.state.store, &[Scope::Admin]).await.0,
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
    let err = start(&with_store(dir.path(), Some(url), None))
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
    let redacted =
        redact_url("postgres://u@db/blocks?sslmode=require&password=hunter2&SSLPASSWORD=hunter2");
    assert!(!redacted.contains("hunter2"), "{redacted}");
    assert!(redacted.contains("sslmode=require"), "{redacted}");
    assert!(!redact_url("postgres://u:hunter2@[bad/x?password=hunter2").contains("hunter2"));
    // The start-up error names the store without the password in its query.
    let err = start(&with_store(
        dir.path(),
        Some("postgres://u@127.0.0.1:1/x?password=hunter2".into()),
        Some({
            let path = dir.path().join("pg.key");
            create_key_file(&path, &MasterKey::generate().unwrap()).unwrap();
            path
        }),
    ))
    .await
    .unwrap_err();
    assert!(!format!("{err:#} {err:?}").contains("hunter2"), "{err:#}");
    let debug = format!(
        "{:?}",
        with_store(dir.path(), Some("postgres://u:hunter2@db/x".into()), None,)
    );
    assert!(!debug.contains("hunter2"), "{debug}");
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the events socket offering Prefect's subprotocol, as Prefect's client does.
async fn events_socket(
    server: &Running,
) -> (
    Socket,
    tokio_tungstenite::tungstenite::handshake::client::Response,
) {
    let uri = format!("ws://{}/api/events/in", server.addr);
    let request = ClientRequestBuilder::new(uri.parse().unwrap()).with_sub_protocol("prefect");
    tokio_tungstenite::connect_async(request).await.unwrap()
}

/// Sends an auth message carrying `token`; returns the server's reply.
async fn authenticate(socket: &mut Socket, token: &serde_json::Value) -> serde_json::Value {
    let auth = serde_json::json!({"type": "auth", "token": token});
    socket.send(Message::text(auth.to_string())).await.unwrap();
    let reply = socket.next().await.unwrap().unwrap();
    serde_json::from_str(reply.to_text().unwrap()).unwrap()
}

#[tokio::test]
async fn the_events_socket_accepts_auth_and_keeps_block_load_events() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&args(dir.path())).await.unwrap();
    let (mut socket, response) = events_socket(&server).await;
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "prefect"
    );
    let token = first_token(&server);
    // Prefect sends PREFECT_API_AUTH_STRING (`<name>:<token>`) as the token.
    let auth = serde_json::json!(format!("prefect:{token}"));
    assert_eq!(
        authenticate(&mut socket, &auth).await,
        serde_json::json!({"type": "auth_success"})
    );
    // A block-load event must name a document that exists, of the type it names.
    let id = secret_doc(&server.state.store, "loaded", "v").await;
    let event = serde_json::json!({"event": "prefect.block.secret.loaded", "resource": {"prefect.resource.id": format!("prefect.block-document.{id}")}, "payload": {}, "id": uuid::Uuid::new_v4()});
    socket.send(Message::text(event.to_string())).await.unwrap();
    socket
        .send(Message::text(r#"{"event": "prefect.flow-run.Running"}"#))
        .await
        .unwrap();
    // The server handles frames in order: once a second handshake is answered, the
    // events before it have been handled.
    authenticate(&mut socket, &auth).await;
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
        let (mut socket, _) = events_socket(&server).await;
        let reply = authenticate(&mut socket, &token).await;
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
    let token = first_token(&server);
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
    assert_eq!(mode(&profile), 0o600);
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
    let leftovers = admin_token_files(&home);
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let parsed: toml::Table = toml::from_str(&std::fs::read_to_string(&profile).unwrap()).unwrap();
    assert_eq!(parsed["api_url"].as_str().unwrap(), again.api_url());
    assert_eq!(parsed["api_key"].as_str().unwrap(), token);
    #[cfg(unix)]
    assert_eq!(mode(&profile), 0o600);
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
    let token = first_token(&server);
    let files = admin_token_files(&home);
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(std::fs::read_to_string(&files[0]).unwrap().trim(), token);
    #[cfg(unix)]
    assert_eq!(mode(&files[0]), 0o600);
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
    let token = first_token(&server);
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
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
