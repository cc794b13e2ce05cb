//! What the benchmarks share: settings from the environment, percentiles, block schemas, a
//! `blocks serve` process, wrk loads, and a signed-in console session on the router in
//! process. Each benchmark includes this module and uses a part of it.

#![allow(dead_code, clippy::print_stderr)]

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use block_types::BlockSpec;
use block_types::model::BlockDocumentCreate;
use registry_server::crypto::MasterKey;
use registry_server::http::{AppState, app};
use registry_server::store::{MasterKeySource, Rights, Scope, Store, StoreConfig, TokenCreate};
use secrecy::ExposeSecret as _;
use serde_json::Value;
use tower::ServiceExt as _;
use uuid::Uuid;

/// The whole number in environment variable `name`, or `default`.
pub(crate) fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p` quantile (0 to 1) of `sorted`, in milliseconds.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// The store at `url` under a new master key.
pub(crate) async fn open(url: &str) -> Arc<Store> {
    Arc::new(
        Store::open(
            url,
            MasterKeySource::Key(MasterKey::generate().unwrap()),
            StoreConfig::default(),
        )
        .await
        .unwrap(),
    )
}

/// Registers `spec`'s type and schema: their ids.
pub(crate) async fn schema_of(store: &Store, spec: &BlockSpec) -> (Uuid, Uuid) {
    let ty = store
        .ensure_block_type(&spec.block_type, false)
        .await
        .unwrap();
    let schema = store
        .create_block_schema(spec.to_schema_create(ty.id), Rights::ADMIN)
        .await
        .unwrap()
        .0;
    (ty.id, schema.id)
}

/// Creates a document named `name` of `(type, schema)` through the store: its id.
pub(crate) async fn create(
    store: &Store,
    (ty, schema): (Uuid, Uuid),
    name: &str,
    data: Value,
) -> Uuid {
    store
        .create_block_document(BlockDocumentCreate {
            name: Some(name.into()),
            data: data.as_object().cloned().unwrap(),
            block_schema_id: schema,
            block_type_id: ty,
            is_anonymous: false,
        })
        .await
        .unwrap()
        .id
}

/// A `blocks serve` process, stopped (TERM, then waited for) when dropped.
pub(crate) struct Serve {
    child: Child,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Serve {
    /// Starts `cmd` (a `blocks serve --port 0 …`) and waits until it answers
    /// `/api/ready`. Returns the process and its base URL (`http://addr`). Its log after
    /// the address goes to this process's stderr when `forward_log`, else nowhere.
    pub(crate) fn start(mut cmd: Command, forward_log: bool) -> (Self, String) {
        let mut child = cmd
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let serve = Self { child };
        let addr = loop {
            let line = lines.next().expect("the server exited").unwrap();
            if let Some(rest) = line.split("addr=").nth(1) {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if forward_log {
                    eprintln!("server: {line}");
                }
            }
        });
        let base = format!("http://{addr}");
        let client = reqwest::blocking::Client::new();
        while client
            .get(format!("{base}/api/ready"))
            .send()
            .map(|r| r.status().is_success())
            .ok()
            != Some(true)
        {}
        (serve, base)
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The CPU time the server has used so far (user and system), in milliseconds (0 when
    /// unknown): what a load cost the server, apart from the load generator sharing the
    /// machine.
    pub(crate) fn cpu_ms(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // The fields after the command's closing parenthesis; utime and stime are the
        // 14th and 15th of the line, in clock ticks (100 a second on Linux).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|t| t.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (ticks(11) + ticks(12)) * 10.0
    }

    /// Resident memory, in KiB (0 when unknown).
    pub(crate) fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

/// A fresh PostgreSQL database under `BLOCKS_TEST_POSTGRES_URL` (the tests' own
/// `tests::PostgresDb`, dropped with it), for a bench outside any runtime; `None`, said so,
/// when PostgreSQL is unreachable.
pub(crate) fn postgres_db() -> Option<tests::PostgresDb> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(tests::PostgresDb::create())
}

/// What a wrk run measured.
pub(crate) struct Load {
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// Answers other than 2xx and 3xx.
    pub(crate) errors: u64,
    /// Requests answered.
    pub(crate) requests: u64,
    /// The server's CPU time per request, in microseconds, when the caller measured it.
    pub(crate) cpu_us: f64,
}

impl Load {
    /// A load that was not run.
    pub(crate) fn skipped() -> Self {
        Self {
            rps: f64::NAN,
            p50_ms: f64::NAN,
            p99_ms: f64::NAN,
            errors: 0,
            requests: 0,
            cpu_us: f64::NAN,
        }
    }
}

/// A wrk latency (`812.00us`, `1.20ms`, `2.00s`) in milliseconds.
fn parse_ms(text: &str) -> f64 {
    let (num, unit): (String, String) = text.chars().partition(|c| c.is_ascii_digit() || *c == '.');
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit.as_str() {
        "us" => n / 1e3,
        "ms" => n,
        "s" => n * 1e3,
        _ => f64::NAN,
    }
}

/// wrk against `url` for `BENCH_SECONDS` (default 10) over `BENCH_CONNECTIONS` (default 16)
/// connections and two threads, with `token` as a bearer token (and as `BENCH_TOKEN` for
/// `script`).
pub(crate) fn wrk(url: &str, token: Option<&str>, script: Option<&Path>) -> Load {
    let seconds = std::env::var("BENCH_SECONDS").unwrap_or_else(|_| "10".into());
    let connections = std::env::var("BENCH_CONNECTIONS").unwrap_or_else(|_| "16".into());
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t",
        "2",
        "-c",
        &connections,
        "-d",
        &format!("{seconds}s"),
        "--latency",
    ]);
    if let Some(token) = token {
        cmd.arg("-H")
            .arg(format!("Authorization: Bearer {token}"))
            .env("BENCH_TOKEN", token);
    }
    if let Some(script) = script {
        cmd.arg("-s").arg(script);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("wrk must be installed (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned()))
    };
    Load {
        rps: field("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
        p50_ms: field("50%").map_or(f64::NAN, |v| parse_ms(&v)),
        p99_ms: field("99%").map_or(f64::NAN, |v| parse_ms(&v)),
        errors: text
            .lines()
            .find(|l| l.contains("Non-2xx or 3xx responses"))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0),
        requests: text
            .lines()
            .find(|l| l.contains(" requests in "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
        cpu_us: f64::NAN,
    }
}

/// [`wrk`] against `server`, with the server's CPU time per request.
pub(crate) fn wrk_on(
    server: &Serve,
    url: &str,
    token: Option<&str>,
    script: Option<&Path>,
) -> Load {
    let before = server.cpu_ms();
    let mut load = wrk(url, token, script);
    load.cpu_us = (server.cpu_ms() - before) * 1e3 / load.requests.max(1) as f64;
    load
}

/// A console request as a browser on the same origin sends it, with the session `cookie`
/// and a form `body` when given.
pub(crate) fn request(
    method: &str,
    uri: &str,
    cookie: Option<&str>,
    body: Option<String>,
) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "127.0.0.1")
        .header(header::ORIGIN, "http://127.0.0.1");
    if let Some(cookie) = cookie {
        builder = builder.header(header::COOKIE, format!("__Host-blocks-session={cookie}"));
    }
    let mut req = match body {
        Some(body) => builder
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap(),
        None => builder.body(Body::empty()).unwrap(),
    };
    req.extensions_mut().insert(ConnectInfo(
        "127.0.0.1:40000".parse::<SocketAddr>().unwrap(),
    ));
    req
}

/// An admin signed in to the console on the router in process.
pub(crate) struct Session {
    pub(crate) app: Router,
    /// The session cookie's value.
    pub(crate) cookie: String,
}

impl Session {
    /// Signs in with a new admin token named `name`.
    pub(crate) async fn sign_in(state: &AppState, name: &str) -> Self {
        let created = state
            .store
            .create_token(TokenCreate {
                name: name.into(),
                scopes: [Scope::Admin].into_iter().collect(),
                expires: None,
                ..Default::default()
            })
            .await
            .unwrap();
        let app = app(state.clone());
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", created.token.expose_secret())
            .finish();
        let response = app
            .clone()
            .oneshot(request("POST", "/sign-in", None, Some(body)))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        let cookie = response.headers()[header::SET_COOKIE].to_str().unwrap();
        let cookie = cookie
            .split(';')
            .next()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
            .to_owned();
        Self { app, cookie }
    }

    /// A page: its status and body.
    pub(crate) async fn get(&self, uri: &str) -> (StatusCode, Vec<u8>) {
        let response = self
            .app
            .clone()
            .oneshot(request("GET", uri, Some(&self.cookie), None))
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, bytes.to_vec())
    }

    /// `uri` once (its body), then `requests` more times: the p50 and p99 of those, in ms.
    /// Every answer must be 200.
    pub(crate) async fn timed(&self, uri: &str, requests: usize) -> (Vec<u8>, (f64, f64)) {
        let (status, body) = self.get(uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        let mut latencies = Vec::with_capacity(requests);
        for _ in 0..requests {
            let started = Instant::now();
            let (status, _) = self.get(uri).await;
            latencies.push(started.elapsed());
            assert_eq!(status, StatusCode::OK, "{uri}");
        }
        latencies.sort();
        (
            body,
            (percentile(&latencies, 0.5), percentile(&latencies, 0.99)),
        )
    }

    /// A form post of `body` (url-encoded): its status.
    pub(crate) async fn post(&self, uri: &str, body: String) -> StatusCode {
        self.app
            .clone()
            .oneshot(request("POST", uri, Some(&self.cookie), Some(body)))
            .await
            .unwrap()
            .status()
    }
}
