//! The `gcp-credentials` and `gcs-bucket` capabilities of `registry-client`: service-account
//! checks (no network), the JWT-bearer token exchange against a local token endpoint that
//! verifies the signature, and every bucket operation against a `gcp-storage-emulator`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{Form, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD_INDIFFERENT};
use block_types::SecretMap;
use block_types::catalog::{GcpCredentials, GcsBucket};
use parking_lot::Mutex;
use registry_client::gcp::{
    Bucket, Endpoint, GcpCredentialsExt as _, GcpError, GcsBucketExt as _, STORAGE_SCOPE,
    ServiceAccount,
};
use ring::rand::SecureRandom as _;
use serde_json::{Map, Value, json};
use tests::GcsEmulator;

const KEY_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/test-service-account.json"
);
const PUBLIC_KEY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/test-service-account.pub.der"
);
const EMAIL: &str = "pipeline@blocks-test-project.iam.gserviceaccount.com";
const KEY_PROJECT: &str = "blocks-test-project";
const KEY_ID: &str = "0123456789abcdef0123456789abcdef01234567";
const CANARY: &str = "canary-gcs-5d1e";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The fixture key as a JSON object.
fn key_info() -> Map<String, Value> {
    let text = std::fs::read_to_string(KEY_FILE).unwrap();
    match serde_json::from_str(&text).unwrap() {
        Value::Object(map) => map,
        _ => panic!("the fixture is not a JSON object"),
    }
}

/// The base64 lines of the fixture's private key (the key material; not the markers).
fn key_lines() -> Vec<String> {
    let info = key_info();
    let pem = info["private_key"].as_str().unwrap();
    let lines: Vec<String> = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .map(str::to_owned)
        .collect();
    assert!(lines.len() > 10, "the fixture key has too few lines");
    lines
}

/// Fails when `text` holds any line of the private key or the canary.
#[track_caller]
fn assert_clean(text: &str) {
    assert!(!text.contains(CANARY), "the canary leaked: {text}");
    for line in key_lines() {
        assert!(
            !text.contains(&line),
            "a line of the private key leaked into: {text}"
        );
        // Also no sizeable piece of a line.
        if line.len() >= 40 {
            assert!(
                !text.contains(&line[8..40]),
                "part of the private key leaked into: {text}"
            );
        }
    }
}

fn with(mut info: Map<String, Value>, key: &str, value: Value) -> Map<String, Value> {
    info.insert(key.to_owned(), value);
    info
}

fn without(mut info: Map<String, Value>, key: &str) -> Map<String, Value> {
    info.remove(key);
    info
}

/// Checks that `result` is `GcpError::Credentials` on `field`, that its message is free of
/// key material and canary, and returns the message.
#[track_caller]
fn expect_credentials<T: std::fmt::Debug>(result: Result<T, GcpError>, field: &str) -> String {
    let error = match result {
        Ok(value) => panic!("expected a credentials error on {field}, got {value:?}"),
        Err(e) => e,
    };
    match &error {
        GcpError::Credentials {
            field: got,
            message,
        } => {
            assert_eq!(got, field, "wrong field; message: {message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected GcpError::Credentials on {field}, got {other:?}"),
    }
    let text = error.to_string();
    assert!(text.contains(field), "{text}");
    assert_clean(&text);
    assert_clean(&format!("{error:?}"));
    text
}

/// Checks that the fixture key with `key` set to `value` (removed when `None`) is refused on
/// `service_account_info.<key>` as [`expect_credentials`] does, and returns the message.
#[track_caller]
fn refused_info(key: &str, value: Option<Value>) -> String {
    let info = match value {
        Some(value) => with(key_info(), key, value),
        None => without(key_info(), key),
    };
    expect_credentials(
        ServiceAccount::from_info(&info),
        &format!("service_account_info.{key}"),
    )
}

#[track_caller]
fn expect_path<T: std::fmt::Debug>(result: Result<T, GcpError>, what: &str) {
    match result {
        Err(GcpError::Path { .. }) => {}
        other => panic!("{what}: expected GcpError::Path, got {other:?}"),
    }
}

fn credentials_with_info(info: Map<String, Value>) -> GcpCredentials {
    GcpCredentials {
        service_account_info: Some(SecretMap::new(info)),
        ..GcpCredentials::default()
    }
}

fn bucket_block(bucket: &str, folder: &str, credentials: GcpCredentials) -> GcsBucket {
    GcsBucket {
        bucket: bucket.to_owned(),
        gcp_credentials: credentials,
        bucket_folder: folder.to_owned(),
    }
}

/// A unique bucket name, with the `-` real bucket names have.
fn unique_bucket() -> String {
    format!("blocks-test-{}", uuid::Uuid::new_v4().simple())
}

/// A fresh emulator with an empty bucket, and a client for it (no credentials).
async fn emulator_bucket(folder: &str) -> Option<(GcsEmulator, Bucket)> {
    emulator_bucket_named(&unique_bucket(), folder).await
}

async fn emulator_bucket_named(name: &str, folder: &str) -> Option<(GcsEmulator, Bucket)> {
    let emulator = GcsEmulator::start(name)?;
    let bucket = bucket_block(name, folder, GcpCredentials::default())
        .storage_at(Endpoint::Emulator(emulator.url.clone()))
        .await
        .unwrap();
    Some((emulator, bucket))
}

/// Another client for the same bucket, with another folder.
async fn sibling(emulator: &GcsEmulator, bucket: &Bucket, folder: &str) -> Bucket {
    bucket_block(bucket.name(), folder, GcpCredentials::default())
        .storage_at(Endpoint::Emulator(emulator.url.clone()))
        .await
        .unwrap()
}

async fn names(bucket: &Bucket, folder: Option<&str>) -> BTreeSet<String> {
    bucket
        .list_blobs(folder)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Every file under `root`, by relative path (with `/`), with its bytes.
fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn visit(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                visit(root, &path, out);
            } else {
                let relative: Vec<String> = path
                    .strip_prefix(root)
                    .unwrap()
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.insert(relative.join("/"), std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    if root.exists() {
        visit(root, root, &mut out);
    }
    out
}

/// Where a download that escapes its target would land: a temporary directory, the target
/// in it (`inner`, not yet created), a unique file name, and the spots where a `..` or
/// absolute name ending in that file name would write.
fn escape_target() -> (tempfile::TempDir, PathBuf, String, [PathBuf; 3]) {
    let outer = tempfile::tempdir().unwrap();
    let dir = outer.path().join("inner");
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let escape = format!("escape-{tag}.txt");
    let landing_spots = [
        outer.path().join(&escape),
        outer.path().parent().unwrap().join(&escape),
        PathBuf::from("/").join(&escape),
    ];
    (outer, dir, escape, landing_spots)
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    ring::rand::SystemRandom::new().fill(&mut bytes).unwrap();
    bytes
}

// ---------------------------------------------------------------------------------------
// 1. Service-account checks (no network)
// ---------------------------------------------------------------------------------------

#[test]
fn the_fixture_key_is_accepted() {
    let account = ServiceAccount::from_info(&key_info()).unwrap();
    assert_eq!(account.client_email(), EMAIL);
    assert_eq!(account.project_id(), Some(KEY_PROJECT));
    assert_eq!(account.private_key_id(), Some(KEY_ID));
    // The key JSON handed to the signer is the whole key, unchanged.
    let back: Value = serde_json::from_str(account.key_json().expose_secret()).unwrap();
    assert_eq!(back, Value::Object(key_info()));
    let _provider: std::sync::Arc<dyn registry_client::gcp::TokenProvider> =
        account.token_provider();

    // Optional fields may be absent or null.
    let bare = without(without(key_info(), "project_id"), "private_key_id");
    let account = ServiceAccount::from_info(&bare).unwrap();
    assert_eq!(account.project_id(), None);
    assert_eq!(account.private_key_id(), None);
    let nulls = with(key_info(), "project_id", Value::Null);
    assert_eq!(
        ServiceAccount::from_info(&nulls).unwrap().project_id(),
        None
    );
}

#[tokio::test]
async fn debug_output_never_shows_the_key() {
    let account = ServiceAccount::from_info(&key_info()).unwrap();
    let debug = format!("{account:?} {account:#?}");
    assert!(debug.contains(EMAIL), "{debug}");
    // The key's id is part of the secret key file, as Prefect holds it: not shown either.
    assert!(!debug.contains(KEY_ID), "{debug}");
    assert_clean(&debug);

    let credentials = credentials_with_info(key_info());
    let debug = format!("{credentials:?} {credentials:#?}");
    assert_clean(&debug);
    assert!(!debug.contains("BEGIN PRIVATE KEY"), "{debug}");

    let block = bucket_block("some-bucket", "flows", credentials);
    assert_clean(&format!("{block:?}"));
    for endpoint in [
        Endpoint::Emulator("http://127.0.0.1:9".to_owned()),
        Endpoint::Authenticated("http://127.0.0.1:9".to_owned()),
    ] {
        let bucket = block.storage_at(endpoint.clone()).await.unwrap();
        let debug = format!("{bucket:?} {bucket:#?}");
        assert!(debug.contains("some-bucket"), "{debug}");
        assert!(
            debug.contains(&format!(
                "authenticated: {}",
                matches!(endpoint, Endpoint::Authenticated(_))
            )),
            "{debug}"
        );
        assert_clean(&debug);
        assert!(!debug.contains("BEGIN PRIVATE KEY"), "{debug}");
    }
}

#[test]
fn a_bad_type_is_refused() {
    refused_info("type", None);
    let text = refused_info("type", Some(json!("authorized_user")));
    assert!(text.contains("authorized_user"), "{text}");
    refused_info("type", Some(json!(7)));
}

#[test]
fn a_bad_client_email_is_refused() {
    refused_info("client_email", None);
    refused_info("client_email", Some(json!("   ")));
    refused_info("client_email", Some(json!("not-an-address")));
    refused_info("client_email", Some(json!(["a@b"])));
}

#[test]
fn a_bad_private_key_is_refused_without_quoting_it() {
    let pem_around =
        |body: &str| format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n");
    refused_info("private_key", None);
    // Not PEM at all.
    refused_info(
        "private_key",
        Some(json!(format!("{CANARY} this is no key"))),
    );
    // PEM markers around text that is not base64.
    refused_info("private_key", Some(json!(pem_around(CANARY))));
    // PEM markers around valid base64 that is not a PKCS#8 RSA key.
    let garbage = STANDARD.encode(format!("{CANARY} garbage inside a PEM, not a DER key"));
    let text = refused_info("private_key", Some(json!(pem_around(&garbage))));
    assert!(!text.contains(&garbage), "{text}");
    // A real key with its body cut short.
    let pem = key_info()["private_key"].as_str().unwrap().to_owned();
    let lines: Vec<&str> = pem.lines().collect();
    let truncated = format!(
        "{}\n{}\n{}\n",
        lines[0],
        lines[1..6].join("\n"),
        lines.last().unwrap()
    );
    refused_info("private_key", Some(json!(truncated)));
}

#[test]
fn a_missing_token_uri_is_refused() {
    refused_info("token_uri", None);
    refused_info("token_uri", Some(json!("")));
}

#[test]
fn from_file_checks_the_file() {
    let dir = tempfile::tempdir().unwrap();

    // Missing file.
    let missing = dir.path().join("nope.json");
    let text = expect_credentials(ServiceAccount::from_file(&missing), "service_account_file");
    assert!(text.contains("nope.json"), "{text}");

    // Not JSON; the parse error must not quote the content.
    let broken = dir.path().join("broken.json");
    std::fs::write(
        &broken,
        format!(
            "{{\"type\": \"service_account\",\n \"private_key\": {CANARY} {}\n",
            key_lines()[3]
        ),
    )
    .unwrap();
    let text = expect_credentials(ServiceAccount::from_file(&broken), "service_account_file");
    assert!(text.contains("broken.json"), "{text}");

    // JSON, but not an object.
    let array = dir.path().join("array.json");
    std::fs::write(&array, format!("[\"{CANARY}\"]")).unwrap();
    expect_credentials(ServiceAccount::from_file(&array), "service_account_file");

    // An object with a broken key: the field is named under service_account_file.
    let bad_key = dir.path().join("bad-key.json");
    let info = with(key_info(), "private_key", json!(format!("{CANARY} no pem")));
    std::fs::write(&bad_key, serde_json::to_string(&info).unwrap()).unwrap();
    expect_credentials(
        ServiceAccount::from_file(&bad_key),
        "service_account_file.private_key",
    );

    // The fixture itself.
    let account = ServiceAccount::from_file(Path::new(KEY_FILE)).unwrap();
    assert_eq!(account.client_email(), EMAIL);
    assert_eq!(account.project_id(), Some(KEY_PROJECT));
    assert_eq!(account.private_key_id(), Some(KEY_ID));
}

#[tokio::test]
async fn gcp_credentials_pick_their_key_and_project() {
    // Both forms at once: refused.
    let both = GcpCredentials {
        service_account_info: Some(SecretMap::new(key_info())),
        service_account_file: Some(PathBuf::from(KEY_FILE)),
        project: None,
    };
    expect_credentials(both.service_account(), "service_account_info");
    expect_credentials(both.project_id(), "service_account_info");
    expect_credentials(
        both.token_provider().await.map(|_| ()),
        "service_account_info",
    );

    // Inline key.
    let inline = credentials_with_info(key_info());
    let account = inline.service_account().unwrap().unwrap();
    assert_eq!(account.client_email(), EMAIL);
    assert_eq!(inline.project_id().unwrap().as_deref(), Some(KEY_PROJECT));
    assert!(inline.token_provider().await.is_ok());

    // Key file.
    let file = GcpCredentials {
        service_account_file: Some(PathBuf::from(KEY_FILE)),
        ..GcpCredentials::default()
    };
    assert_eq!(
        file.service_account().unwrap().unwrap().client_email(),
        EMAIL
    );
    assert_eq!(file.project_id().unwrap().as_deref(), Some(KEY_PROJECT));

    // The block's project wins over the key's; an empty one does not count.
    let mut own = credentials_with_info(key_info());
    own.project = Some("block-project".to_owned());
    assert_eq!(own.project_id().unwrap().as_deref(), Some("block-project"));
    let mut empty = file.clone();
    empty.project = Some(String::new());
    assert_eq!(empty.project_id().unwrap().as_deref(), Some(KEY_PROJECT));

    // No key: no account; the project is the block's alone.
    let none = GcpCredentials::default();
    assert!(none.service_account().unwrap().is_none());
    assert_eq!(none.project_id().unwrap(), None);
    let only_project = GcpCredentials {
        project: Some("p".to_owned()),
        ..GcpCredentials::default()
    };
    assert_eq!(only_project.project_id().unwrap().as_deref(), Some("p"));

    // A broken inline key is reported with its field, whatever is asked.
    let broken = credentials_with_info(without(key_info(), "client_email"));
    expect_credentials(
        broken.service_account(),
        "service_account_info.client_email",
    );
    expect_credentials(broken.project_id(), "service_account_info.client_email");
    // ... unless the block names its own project, which needs no key.
    let mut broken_with_project = broken.clone();
    broken_with_project.project = Some("mine".to_owned());
    assert_eq!(
        broken_with_project.project_id().unwrap().as_deref(),
        Some("mine")
    );
}

// ---------------------------------------------------------------------------------------
// 2. Token exchange against a local token endpoint
// ---------------------------------------------------------------------------------------

const OBJECT_BYTES: &[u8] = b"col_a,col_b\n1,2\n\xff\x00binary tail";
const OBJECT_NAME: &str = "flows/report 1.csv";

struct FakeGoogle {
    token_uri: String,
    bucket: String,
    public_key: Vec<u8>,
    refuse: bool,
    token_calls: AtomicUsize,
    storage_calls: AtomicUsize,
    problems: Mutex<Vec<String>>,
    last_assertion: Mutex<Option<String>>,
}

fn b64url(part: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD_INDIFFERENT
        .decode(part)
        .map_err(|e| format!("not base64url: {e}"))
}

fn verify_signature(public_key: &[u8], jwt: &str) -> Result<(), String> {
    let (signed, signature) = jwt.rsplit_once('.').ok_or("no signature part")?;
    let signature = b64url(signature)?;
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        public_key,
    )
    .verify(signed.as_bytes(), &signature)
    .map_err(|_| "the RS256 signature does not verify".to_owned())
}

impl FakeGoogle {
    fn check_form(&self, form: &HashMap<String, String>) -> Result<(), String> {
        let grant = form.get("grant_type").map(String::as_str);
        if grant != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
            return Err(format!("grant_type is {grant:?}"));
        }
        let jwt = form.get("assertion").ok_or("no assertion")?;
        *self.last_assertion.lock() = Some(jwt.clone());
        let parts: Vec<&str> = jwt.split('.').collect();
        if parts.len() != 3 {
            return Err(format!("the JWT has {} parts", parts.len()));
        }
        let head: Value = serde_json::from_slice(&b64url(parts[0])?).map_err(|e| e.to_string())?;
        if head["alg"] != "RS256" {
            return Err(format!("alg is {}", head["alg"]));
        }
        verify_signature(&self.public_key, jwt)?;
        let claims: Value =
            serde_json::from_slice(&b64url(parts[1])?).map_err(|e| e.to_string())?;
        if claims["iss"] != EMAIL {
            return Err(format!("iss is {}", claims["iss"]));
        }
        if claims["aud"] != self.token_uri.as_str() {
            return Err(format!("aud is {}", claims["aud"]));
        }
        let scope = claims["scope"].as_str().unwrap_or_default();
        if !scope.split(' ').any(|s| s == STORAGE_SCOPE) || !scope.contains("devstorage.read_write")
        {
            return Err(format!("scope is {scope:?}"));
        }
        let (Some(iat), Some(exp)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
            return Err("iat or exp is missing".to_owned());
        };
        if exp <= iat {
            return Err(format!("exp {exp} is not after iat {iat}"));
        }
        let now = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap();
        if (iat - now).abs() > 300 {
            return Err(format!("iat {iat} is far from now {now}"));
        }
        Ok(())
    }
}

async fn token_endpoint(
    State(state): State<Arc<FakeGoogle>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let n = state.token_calls.fetch_add(1, Ordering::SeqCst) + 1;
    if let Err(problem) = state.check_form(&form) {
        state.problems.lock().push(problem.clone());
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant", "error_description": problem})),
        )
            .into_response();
    }
    if state.refuse {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."})),
        )
            .into_response();
    }
    Json(json!({"access_token": format!("tok-{n}"), "expires_in": 3600, "token_type": "Bearer"}))
        .into_response()
}

async fn object_endpoint(
    State(state): State<Arc<FakeGoogle>>,
    UrlPath((bucket, name)): UrlPath<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    state.storage_calls.fetch_add(1, Ordering::SeqCst);
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if auth != Some("Bearer tok-1") {
        state
            .problems
            .lock()
            .push(format!("storage saw Authorization {auth:?}"));
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"code": 401, "message": "Invalid Credentials"}})),
        )
            .into_response();
    }
    if query.get("alt").map(String::as_str) != Some("media") {
        state
            .problems
            .lock()
            .push(format!("storage saw query {query:?}"));
        return StatusCode::BAD_REQUEST.into_response();
    }
    if bucket != state.bucket || name != OBJECT_NAME {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"code": 404, "message": format!("no {bucket}/{name}")}})),
        )
            .into_response();
    }
    OBJECT_BYTES.to_vec().into_response()
}

/// Starts the fake Google; returns its state and base URL.
async fn fake_google(refuse: bool) -> (Arc<FakeGoogle>, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = Arc::new(FakeGoogle {
        token_uri: format!("{base}/token"),
        // A realistic name: the local server decodes the percent-encoded path.
        bucket: format!("dtc_data-lake.{}", uuid::Uuid::new_v4().simple()),
        public_key: std::fs::read(PUBLIC_KEY).unwrap(),
        refuse,
        token_calls: AtomicUsize::new(0),
        storage_calls: AtomicUsize::new(0),
        problems: Mutex::new(Vec::new()),
        last_assertion: Mutex::new(None),
    });
    let router = Router::new()
        .route("/token", post(token_endpoint))
        .route("/storage/v1/b/{bucket}/o/{name}", get(object_endpoint))
        .with_state(Arc::clone(&state));
    tokio::spawn(async move { axum::serve(listener, router).await });
    (state, base)
}

fn problems(state: &FakeGoogle) -> Vec<String> {
    state.problems.lock().clone()
}

/// A client for the fake's bucket (folder `flows`) at `endpoint`, signing in with the fixture
/// key against the fake's token endpoint.
async fn fake_google_bucket(state: &FakeGoogle, endpoint: String) -> Bucket {
    let info = with(key_info(), "token_uri", json!(state.token_uri.clone()));
    bucket_block(&state.bucket, "flows", credentials_with_info(info))
        .storage_at(Endpoint::Authenticated(endpoint))
        .await
        .unwrap()
}

#[tokio::test]
async fn the_key_signs_a_jwt_and_the_token_is_cached() {
    let (state, base) = fake_google(false).await;
    let bucket = fake_google_bucket(&state, format!("{base}/")).await;
    assert_eq!(bucket.endpoint().base(), base);

    let first = bucket.read_path("report 1.csv").await.unwrap();
    assert_eq!(first, OBJECT_BYTES, "problems: {:?}", problems(&state));
    let second = bucket.read_path("report 1.csv").await.unwrap();
    assert_eq!(second, OBJECT_BYTES);
    assert_eq!(problems(&state), Vec::<String>::new());
    assert_eq!(state.token_calls.load(Ordering::SeqCst), 1, "not cached");
    assert_eq!(state.storage_calls.load(Ordering::SeqCst), 2);

    // A missing object on an authenticated endpoint is still NotFound.
    match bucket.read_path("missing.csv").await {
        Err(GcpError::NotFound { bucket: b, name }) => {
            assert_eq!(b, state.bucket);
            assert_eq!(name, "flows/missing.csv");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(state.token_calls.load(Ordering::SeqCst), 1);

    // The verification above is real: a tampered payload does not verify.
    let jwt = state.last_assertion.lock().clone().unwrap();
    assert!(verify_signature(&std::fs::read(PUBLIC_KEY).unwrap(), &jwt).is_ok());
    let parts: Vec<&str> = jwt.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&b64url(parts[1]).unwrap()).unwrap();
    claims["iss"] = json!("attacker@example.com");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD_INDIFFERENT.encode(claims.to_string()),
        parts[2]
    );
    assert!(verify_signature(&std::fs::read(PUBLIC_KEY).unwrap(), &forged).is_err());
}

#[tokio::test]
async fn a_refused_token_gives_a_token_error_without_key_material() {
    let (state, base) = fake_google(true).await;
    let bucket = fake_google_bucket(&state, base).await;
    let started = std::time::Instant::now();
    let error = bucket.read_path("report 1.csv").await.unwrap_err();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    match &error {
        GcpError::Token(message) => assert!(!message.is_empty()),
        other => panic!("expected GcpError::Token, got {other:?}"),
    }
    assert_clean(&error.to_string());
    assert_clean(&format!("{error:?}"));
    // The JWTs were fine; the endpoint refused them, and storage was never asked.
    assert_eq!(problems(&state), Vec::<String>::new());
    assert!(state.token_calls.load(Ordering::SeqCst) >= 1);
    assert_eq!(state.storage_calls.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------------------------------
// 3. Bucket capabilities against the emulator
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn write_and_read_round_trip_with_odd_names() {
    let Some((_emulator, bucket)) = emulator_bucket("").await else {
        return;
    };
    let names_and_bytes: Vec<(&str, Vec<u8>)> = vec![
        ("plain.txt", b"plain".to_vec()),
        ("with space/file name.txt", b"spaces".to_vec()),
        ("unicode/été ✓ 日本語.txt", "ünïcödé".as_bytes().to_vec()),
        ("symbols/a+b=c&d;e,f@g$h!.txt", b"symbols".to_vec()),
        ("percent/100% sure?#x.txt", b"percent".to_vec()),
        // No empty object: gcp-storage-emulator crashes on an empty media upload.
        ("binary.bin", random_bytes(4096)),
    ];
    for (name, bytes) in &names_and_bytes {
        let written = bucket.write_path(name, bytes.clone()).await.unwrap();
        assert_eq!(written, *name);
    }
    for (name, bytes) in &names_and_bytes {
        assert_eq!(&bucket.read_path(name).await.unwrap(), bytes, "{name}");
    }
    let listed = names(&bucket, None).await;
    let expected: BTreeSet<String> = names_and_bytes
        .iter()
        .map(|(n, _)| (*n).to_owned())
        .collect();
    assert_eq!(listed, expected);
    let blobs = bucket.list_blobs(None).await.unwrap();
    let binary = blobs.iter().find(|b| b.name == "binary.bin").unwrap();
    assert_eq!(binary.size, 4096);

    // Writing again replaces the object.
    bucket
        .write_path("plain.txt", b"replaced".to_vec())
        .await
        .unwrap();
    assert_eq!(bucket.read_path("plain.txt").await.unwrap(), b"replaced");
    // A leading slash is the same object.
    assert_eq!(bucket.read_path("/plain.txt").await.unwrap(), b"replaced");
}

#[tokio::test]
async fn the_bucket_folder_is_honoured() {
    let Some((emulator, flows)) = emulator_bucket("/flows/").await else {
        return;
    };
    assert_eq!(flows.folder(), "flows/");
    let root = sibling(&emulator, &flows, "").await;
    assert_eq!(root.folder(), "");

    assert_eq!(
        flows.write_path("a.txt", b"A".to_vec()).await.unwrap(),
        "flows/a.txt"
    );
    // Already under the folder: not doubled.
    assert_eq!(
        flows
            .write_path("flows/b.txt", b"B".to_vec())
            .await
            .unwrap(),
        "flows/b.txt"
    );
    // Merely starting with the folder's name is not being under it.
    assert_eq!(
        flows
            .write_path("flowsheet.txt", b"S".to_vec())
            .await
            .unwrap(),
        "flows/flowsheet.txt"
    );
    root.write_path("outside.txt", b"O".to_vec()).await.unwrap();

    assert_eq!(root.read_path("flows/a.txt").await.unwrap(), b"A");
    assert_eq!(root.read_path("flows/b.txt").await.unwrap(), b"B");
    assert_eq!(flows.read_path("b.txt").await.unwrap(), b"B");
    assert_eq!(
        names(&root, None).await,
        set(&[
            "flows/a.txt",
            "flows/b.txt",
            "flows/flowsheet.txt",
            "outside.txt"
        ])
    );
    // The folder's listing stays inside it.
    assert_eq!(
        names(&flows, None).await,
        set(&["flows/a.txt", "flows/b.txt", "flows/flowsheet.txt"])
    );
    // Reading outside the folder is relative to it, hence missing.
    assert!(matches!(
        flows.read_path("outside.txt").await,
        Err(GcpError::NotFound { .. })
    ));

    // get_directory(None) downloads the folder, relative to it.
    let dir = tempfile::tempdir().unwrap();
    let written = flows.get_directory(None, dir.path()).await.unwrap();
    assert_eq!(written.len(), 3);
    let got = tree(dir.path());
    assert_eq!(
        got.keys().cloned().collect::<BTreeSet<_>>(),
        set(&["a.txt", "b.txt", "flowsheet.txt"])
    );
    assert_eq!(got["a.txt"], b"A");
}

#[tokio::test]
async fn list_blobs_lists_everything_or_a_subfolder() {
    let Some((_emulator, bucket)) = emulator_bucket("").await else {
        return;
    };
    assert!(bucket.list_blobs(None).await.unwrap().is_empty());
    for (name, len) in [
        ("a.txt", 1),
        ("sub/b.txt", 22),
        ("sub/c/d.txt", 333),
        ("subx/e.txt", 4),
    ] {
        bucket.write_path(name, vec![b'x'; len]).await.unwrap();
    }
    assert_eq!(
        names(&bucket, None).await,
        set(&["a.txt", "sub/b.txt", "sub/c/d.txt", "subx/e.txt"])
    );
    let sub = bucket.list_blobs(Some("sub")).await.unwrap();
    let sizes: BTreeMap<String, u64> = sub.into_iter().map(|b| (b.name, b.size)).collect();
    assert_eq!(
        sizes,
        BTreeMap::from([
            ("sub/b.txt".to_owned(), 22),
            ("sub/c/d.txt".to_owned(), 333)
        ])
    );
    assert_eq!(
        names(&bucket, Some("sub/")).await,
        set(&["sub/b.txt", "sub/c/d.txt"])
    );
    assert_eq!(names(&bucket, Some("sub/c")).await, set(&["sub/c/d.txt"]));
    assert!(names(&bucket, Some("nothing")).await.is_empty());
}

#[tokio::test]
async fn delete_then_read_is_not_found() {
    let Some((_emulator, bucket)) = emulator_bucket("flows").await else {
        return;
    };
    bucket.write_path("gone.txt", b"x".to_vec()).await.unwrap();
    bucket.write_path("kept.txt", b"y".to_vec()).await.unwrap();
    bucket.delete_path("gone.txt").await.unwrap();
    match bucket.read_path("gone.txt").await {
        Err(GcpError::NotFound { bucket: b, name }) => {
            assert_eq!(b, bucket.name());
            assert_eq!(name, "flows/gone.txt");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(matches!(
        bucket.delete_path("gone.txt").await,
        Err(GcpError::NotFound { .. })
    ));
    assert_eq!(names(&bucket, None).await, set(&["flows/kept.txt"]));

    // Downloading a missing object leaves nothing behind.
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out/gone.txt");
    assert!(matches!(
        bucket.download_object_to_path("gone.txt", &target).await,
        Err(GcpError::NotFound { .. })
    ));
    assert!(!target.exists());
    assert!(tree(dir.path()).is_empty());
}

#[tokio::test]
async fn dot_segments_and_empty_paths_are_refused() {
    // No request is made for these, so no emulator is needed.
    let block = bucket_block("some-bucket", "flows", GcpCredentials::default());
    let bucket = block
        .storage_at(Endpoint::Emulator("http://127.0.0.1:9".to_owned()))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local.txt");
    std::fs::write(&local, b"x").unwrap();
    for path in [
        "", "/", "//", "..", "../x", "a/../b", "a/..", ".", "./a", "a/./b", "a/.",
    ] {
        expect_path(bucket.resolve(path), path);
        expect_path(bucket.write_path(path, b"x".to_vec()).await, path);
        expect_path(bucket.read_path(path).await, path);
        expect_path(bucket.delete_path(path).await, path);
        expect_path(
            bucket
                .download_object_to_path(path, dir.path().join("d"))
                .await,
            path,
        );
        expect_path(bucket.upload_from_path(&local, path).await, path);
        if !path.trim_matches('/').is_empty() {
            expect_path(bucket.list_blobs(Some(path)).await, path);
            expect_path(bucket.put_directory(dir.path(), Some(path)).await, path);
            expect_path(bucket.get_directory(Some(path), dir.path()).await, path);
        }
    }
    assert!(!dir.path().join("d").exists());

    // Plain names resolve under the folder.
    assert_eq!(bucket.resolve("a.txt").unwrap(), "flows/a.txt");
    assert_eq!(bucket.resolve("/a.txt").unwrap(), "flows/a.txt");
    assert_eq!(bucket.resolve("flows/a.txt").unwrap(), "flows/a.txt");
    assert_eq!(bucket.resolve("a..b/c.d").unwrap(), "flows/a..b/c.d");

    // A bucket block without a bucket name is refused.
    let nameless = bucket_block("  ", "", GcpCredentials::default());
    expect_path(
        nameless
            .storage_at(Endpoint::Emulator("http://127.0.0.1:9".to_owned()))
            .await,
        "no bucket",
    );
}

#[tokio::test]
async fn upload_and_download_a_large_file() {
    let Some((_emulator, bucket)) = emulator_bucket("").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.bin");
    let bytes = random_bytes(5 * 1024 * 1024 + 17);
    std::fs::write(&source, &bytes).unwrap();

    let name = bucket
        .upload_from_path(&source, "data/big/file.bin")
        .await
        .unwrap();
    assert_eq!(name, "data/big/file.bin");
    let blobs = bucket.list_blobs(Some("data")).await.unwrap();
    assert_eq!(blobs.len(), 1);
    assert_eq!(blobs[0].size, bytes.len() as u64);

    let target = dir.path().join("nested/deeper/copy.bin");
    let written = bucket
        .download_object_to_path("data/big/file.bin", &target)
        .await
        .unwrap();
    assert_eq!(written, target);
    assert!(std::fs::read(&target).unwrap() == bytes, "bytes differ");
    let siblings: Vec<String> = std::fs::read_dir(target.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(siblings, vec!["copy.bin".to_owned()], "a .partial was left");

    // Downloading again replaces the file.
    std::fs::write(&target, b"stale").unwrap();
    bucket
        .download_object_to_path("data/big/file.bin", &target)
        .await
        .unwrap();
    assert!(std::fs::read(&target).unwrap() == bytes, "not replaced");

    // A missing local file is an Io error naming it.
    match bucket
        .upload_from_path(dir.path().join("absent.bin"), "x.bin")
        .await
    {
        Err(GcpError::Io { path, .. }) => assert!(path.ends_with("absent.bin")),
        other => panic!("expected Io, got {other:?}"),
    }
}

#[tokio::test]
async fn put_and_get_a_directory_tree() {
    let Some((_emulator, bucket)) = emulator_bucket("").await else {
        return;
    };
    let source = tempfile::tempdir().unwrap();
    let files: BTreeMap<&str, Vec<u8>> = BTreeMap::from([
        ("top.txt", b"top".to_vec()),
        ("a/one.txt", b"one".to_vec()),
        ("a/b/two.bin", random_bytes(10_000)),
        ("a/b/three et demi.txt", "trois ½".as_bytes().to_vec()),
    ]);
    for (relative, bytes) in &files {
        let path = source.path().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    std::fs::create_dir_all(source.path().join("empty/dir")).unwrap();

    let count = bucket
        .put_directory(source.path(), Some("site"))
        .await
        .unwrap();
    assert_eq!(count, files.len());
    let expected: BTreeSet<String> = files.keys().map(|r| format!("site/{r}")).collect();
    assert_eq!(names(&bucket, None).await, expected);

    // A sibling prefix must not come along.
    bucket
        .write_path("site2/x.txt", b"sibling".to_vec())
        .await
        .unwrap();
    bucket
        .write_path("sitemap.xml", b"sibling".to_vec())
        .await
        .unwrap();

    let copy = tempfile::tempdir().unwrap();
    let written = bucket
        .get_directory(Some("site"), copy.path())
        .await
        .unwrap();
    let written: BTreeSet<PathBuf> = written.into_iter().collect();
    let expected_paths: BTreeSet<PathBuf> = files.keys().map(|r| copy.path().join(r)).collect();
    assert_eq!(written, expected_paths);
    let got = tree(copy.path());
    let want: BTreeMap<String, Vec<u8>> = files
        .iter()
        .map(|(r, b)| ((*r).to_owned(), b.clone()))
        .collect();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    assert!(got == want, "the downloaded bytes differ");

    // A trailing slash means the same folder.
    let again = tempfile::tempdir().unwrap();
    assert_eq!(
        bucket
            .get_directory(Some("site/"), again.path())
            .await
            .unwrap()
            .len(),
        files.len()
    );

    // put_directory without a target writes at the folder's root.
    let flows_source = tempfile::tempdir().unwrap();
    std::fs::write(flows_source.path().join("f.txt"), b"f").unwrap();
    assert_eq!(
        bucket
            .put_directory(flows_source.path(), None)
            .await
            .unwrap(),
        1
    );
    assert_eq!(bucket.read_path("f.txt").await.unwrap(), b"f");
}

#[tokio::test]
async fn get_directory_of_an_exact_object_writes_its_file_name() {
    let Some((_emulator, bucket)) = emulator_bucket("").await else {
        return;
    };
    let object = "data/yellow/yellow_tripdata_2021-01.parquet";
    let bytes = random_bytes(50_000);
    bucket.write_path(object, bytes.clone()).await.unwrap();
    // Objects whose names merely start with the exact name stay behind.
    bucket
        .write_path(
            "data/yellow/yellow_tripdata_2021-01.parquet.bak",
            b"bak".to_vec(),
        )
        .await
        .unwrap();
    bucket
        .write_path(
            "data/yellow/yellow_tripdata_2021-02.parquet",
            b"feb".to_vec(),
        )
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let written = bucket
        .get_directory(Some(object), dir.path())
        .await
        .unwrap();
    let target = dir.path().join("yellow_tripdata_2021-01.parquet");
    assert_eq!(written, vec![target.clone()]);
    let got = tree(dir.path());
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        vec!["yellow_tripdata_2021-01.parquet".to_owned()]
    );
    assert!(std::fs::read(&target).unwrap() == bytes);

    // The folder form downloads all of it, relative to the folder.
    let all = tempfile::tempdir().unwrap();
    let written = bucket
        .get_directory(Some("data/yellow"), all.path())
        .await
        .unwrap();
    assert_eq!(written.len(), 3);
    assert_eq!(
        tree(all.path()).keys().cloned().collect::<BTreeSet<_>>(),
        set(&[
            "yellow_tripdata_2021-01.parquet",
            "yellow_tripdata_2021-01.parquet.bak",
            "yellow_tripdata_2021-02.parquet"
        ])
    );
}

#[tokio::test]
async fn a_bucket_name_with_dashes_underscores_and_dots_reaches_the_emulator() {
    // Bucket names keep `-`, `_` and `.` unencoded in URLs: gcp-storage-emulator does not
    // decode a percent-encoded bucket name. The course's bucket is
    // `dtc_data_lake_<project>`.
    let name = format!("dtc_data_lake-{}.test", uuid::Uuid::new_v4().simple());
    let Some((_emulator, bucket)) = emulator_bucket_named(&name, "").await else {
        return;
    };
    bucket.write_path("a.txt", b"A".to_vec()).await.unwrap();
    assert_eq!(bucket.read_path("a.txt").await.unwrap(), b"A");
    assert_eq!(names(&bucket, None).await, set(&["a.txt"]));
    bucket.delete_path("a.txt").await.unwrap();
    assert!(names(&bucket, None).await.is_empty());
}

/// Uploads an object by its raw name, as another client could.
async fn upload_raw(emulator: &GcsEmulator, bucket: &str, name: &str) -> Result<u16, String> {
    reqwest::Client::new()
        .post(format!("{}/upload/storage/v1/b/{bucket}/o", emulator.url))
        .query(&[("uploadType", "media"), ("name", name)])
        .header(header::CONTENT_TYPE.as_str(), "application/octet-stream")
        .body("escaped!")
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn get_directory_never_writes_outside_the_target() {
    let Some((emulator, bucket)) = emulator_bucket("").await else {
        return;
    };
    let (outer, dir, escape, landing_spots) = escape_target();
    let nothing_escaped = || {
        for spot in &landing_spots {
            let escaped = spot.exists();
            if escaped {
                std::fs::remove_file(spot).ok();
            }
            assert!(!escaped, "{} was written", spot.display());
        }
        let entries: Vec<_> = std::fs::read_dir(outer.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            entries.is_empty() || entries == vec![std::ffi::OsString::from("inner")],
            "{entries:?}"
        );
    };

    // `..` segments: resolve refuses them. gcp-storage-emulator drops the connection for
    // such a name, so `get_directory_refuses_listed_names_that_leave_the_target` serves
    // them from a fake listing.
    expect_path(bucket.resolve(&format!("evil/../../{escape}")), "dotdot");

    // An empty segment makes the rest an absolute path: `evil//escape-….txt`.
    let absolute = format!("evil//{escape}");
    let status = upload_raw(&emulator, bucket.name(), &absolute)
        .await
        .unwrap();
    assert!(
        (200..300).contains(&status),
        "the emulator answered {status}"
    );
    assert!(names(&bucket, None).await.contains(&absolute));
    expect_path(bucket.get_directory(Some("evil"), &dir).await, "absolute");
    nothing_escaped();
    // From the bucket's root the same name is relative (`evil//x` reads as `evil/x`): it
    // lands inside the target.
    let written = bucket.get_directory(None, &dir).await.unwrap();
    assert_eq!(written.len(), 1);
    assert!(written[0].starts_with(&dir), "{}", written[0].display());
    assert_eq!(
        tree(&dir).keys().cloned().collect::<Vec<_>>(),
        vec![format!("evil/{escape}")]
    );
    nothing_escaped();
}

// ---------------------------------------------------------------------------------------
// 4. STORAGE_EMULATOR_HOST
// ---------------------------------------------------------------------------------------

#[test]
fn emulator_host_values() {
    assert_eq!(
        Endpoint::from_emulator_host(Some("127.0.0.1:9023")),
        Endpoint::Emulator("http://127.0.0.1:9023".to_owned())
    );
    assert_eq!(
        Endpoint::from_emulator_host(Some("localhost:9023/")),
        Endpoint::Emulator("http://localhost:9023".to_owned())
    );
    assert_eq!(
        Endpoint::from_emulator_host(Some("http://127.0.0.1:9023/")),
        Endpoint::Emulator("http://127.0.0.1:9023".to_owned())
    );
    assert_eq!(
        Endpoint::from_emulator_host(Some("https://gcs.internal:4443")),
        Endpoint::Emulator("https://gcs.internal:4443".to_owned())
    );
    assert_eq!(
        Endpoint::from_emulator_host(Some(" http://h:1 ")),
        Endpoint::Emulator("http://h:1".to_owned())
    );
    assert_eq!(Endpoint::from_emulator_host(Some("")), Endpoint::Google);
    assert_eq!(Endpoint::from_emulator_host(Some("   ")), Endpoint::Google);
    assert_eq!(Endpoint::from_emulator_host(None), Endpoint::Google);

    assert_eq!(Endpoint::Google.base(), "https://storage.googleapis.com");
    assert_eq!(
        Endpoint::Authenticated("http://proxy:8080/".to_owned()).base(),
        "http://proxy:8080"
    );
    assert_eq!(
        Endpoint::Emulator("http://e:1".to_owned()).base(),
        "http://e:1"
    );
}

// ---------------------------------------------------------------------------------------
// 5. Keys are checked even for an emulator
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_broken_key_fails_even_for_an_emulator() {
    let garbage = STANDARD.encode(format!("{CANARY} not a key"));
    let broken = with(
        key_info(),
        "private_key",
        json!(format!(
            "-----BEGIN PRIVATE KEY-----\n{garbage}\n-----END PRIVATE KEY-----\n"
        )),
    );
    let block = bucket_block("some-bucket", "", credentials_with_info(broken));
    for endpoint in [
        Endpoint::Emulator("http://127.0.0.1:9".to_owned()),
        Endpoint::Authenticated("http://127.0.0.1:9".to_owned()),
        Endpoint::Google,
    ] {
        let text = expect_credentials(
            block.storage_at(endpoint).await,
            "service_account_info.private_key",
        );
        assert!(!text.contains(&garbage), "{text}");
    }

    let missing_email = bucket_block(
        "some-bucket",
        "",
        credentials_with_info(without(key_info(), "client_email")),
    );
    expect_credentials(
        missing_email
            .storage_at(Endpoint::Emulator("http://127.0.0.1:9".to_owned()))
            .await,
        "service_account_info.client_email",
    );

    let both = GcpCredentials {
        service_account_info: Some(SecretMap::new(key_info())),
        service_account_file: Some(PathBuf::from(KEY_FILE)),
        project: None,
    };
    expect_credentials(
        bucket_block("some-bucket", "", both)
            .storage_at(Endpoint::Emulator("http://127.0.0.1:9".to_owned()))
            .await,
        "service_account_info",
    );

    // A good key with an emulator: no token is needed.
    let good = bucket_block("some-bucket", "", credentials_with_info(key_info()))
        .storage_at(Endpoint::Emulator("http://127.0.0.1:9".to_owned()))
        .await
        .unwrap();
    assert!(format!("{good:?}").contains("authenticated: false"));
}

// ---------------------------------------------------------------------------------------
// 6. Retries, interrupted downloads and hostile listings, against a fake storage
// ---------------------------------------------------------------------------------------

/// A storage service (emulator-style, no token) with scripted failures.
#[derive(Default)]
struct FakeStorage {
    /// The objects, in listing order.
    objects: Mutex<Vec<(String, Vec<u8>)>>,
    /// Statuses to answer before the real answer, per `"METHOD name"`, first first.
    script: Mutex<HashMap<String, VecDeque<u16>>>,
    /// Requests seen, per `"METHOD name"` (`"LIST prefix"` for listings).
    calls: Mutex<HashMap<String, usize>>,
}

impl FakeStorage {
    fn put(&self, name: &str, bytes: &[u8]) {
        self.objects.lock().push((name.to_owned(), bytes.to_vec()));
    }

    fn fail(&self, request: &str, statuses: &[u16]) {
        self.script
            .lock()
            .insert(request.to_owned(), statuses.iter().copied().collect());
    }

    fn calls(&self, request: &str) -> usize {
        self.calls.lock().get(request).copied().unwrap_or(0)
    }

    fn object_calls(&self) -> usize {
        self.calls
            .lock()
            .iter()
            .filter(|(request, _)| !request.starts_with("LIST "))
            .map(|(_, n)| n)
            .sum()
    }

    /// Counts the request; the scripted status for it, if one is left.
    fn seen(&self, request: &str) -> Option<Response> {
        *self.calls.lock().entry(request.to_owned()).or_default() += 1;
        let status = self
            .script
            .lock()
            .get_mut(request)
            .and_then(VecDeque::pop_front)?;
        let status = StatusCode::from_u16(status).unwrap();
        Some(
            (
                status,
                Json(json!({"error": {"code": status.as_u16(), "message": "scripted"}})),
            )
                .into_response(),
        )
    }
}

fn no_such_object(name: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": {"code": 404, "message": format!("No such object: {name}")}})),
    )
        .into_response()
}

async fn fake_list(
    State(state): State<Arc<FakeStorage>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let prefix = query.get("prefix").cloned().unwrap_or_default();
    if let Some(scripted) = state.seen(&format!("LIST {prefix}")) {
        return scripted;
    }
    let items: Vec<Value> = state
        .objects
        .lock()
        .iter()
        .filter(|(name, _)| name.starts_with(&prefix))
        .map(|(name, bytes)| json!({"name": name, "size": bytes.len().to_string()}))
        .collect();
    Json(json!({"kind": "storage#objects", "items": items})).into_response()
}

async fn fake_download(
    State(state): State<Arc<FakeStorage>>,
    UrlPath((_bucket, name)): UrlPath<(String, String)>,
) -> Response {
    if let Some(scripted) = state.seen(&format!("GET {name}")) {
        return scripted;
    }
    let objects = state.objects.lock();
    match objects.iter().find(|(n, _)| *n == name) {
        Some((_, bytes)) => bytes.clone().into_response(),
        None => no_such_object(&name),
    }
}

async fn fake_delete(
    State(state): State<Arc<FakeStorage>>,
    UrlPath((bucket, name)): UrlPath<(String, String)>,
) -> Response {
    if let Some(scripted) = state.seen(&format!("DELETE {name}")) {
        return scripted;
    }
    if bucket != "fake-bucket" {
        return (
            StatusCode::NOT_FOUND,
            Json(
                json!({"error": {"code": 404, "message": "The specified bucket does not exist."}}),
            ),
        )
            .into_response();
    }
    let mut objects = state.objects.lock();
    let before = objects.len();
    objects.retain(|(n, _)| *n != name);
    if objects.len() == before {
        no_such_object(&name)
    } else {
        StatusCode::NO_CONTENT.into_response()
    }
}

/// Starts a fake storage; returns its state and a client for its bucket (no folder).
async fn fake_storage() -> (Arc<FakeStorage>, Bucket) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = Arc::new(FakeStorage::default());
    let router = Router::new()
        .route("/storage/v1/b/{bucket}/o", get(fake_list))
        .route(
            "/storage/v1/b/{bucket}/o/{name}",
            get(fake_download).delete(fake_delete),
        )
        .with_state(Arc::clone(&state));
    tokio::spawn(async move { axum::serve(listener, router).await });
    let bucket = bucket_block("fake-bucket", "", GcpCredentials::default())
        .storage_at(Endpoint::Emulator(base))
        .await
        .unwrap();
    (state, bucket)
}

/// The names in `dir` (none when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = read
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn server_errors_are_retried_and_client_errors_are_not() {
    let (state, bucket) = fake_storage().await;
    state.put("flaky.txt", b"at last");
    state.put("refused.txt", b"never");
    state.put("down.txt", b"never");
    state.put("busy.txt", b"after a while");

    // 503, 503, then the object.
    state.fail("GET flaky.txt", &[503, 503]);
    assert_eq!(bucket.read_path("flaky.txt").await.unwrap(), b"at last");
    assert_eq!(state.calls("GET flaky.txt"), 3);

    // A 429 is retried too.
    state.fail("GET busy.txt", &[429]);
    assert_eq!(
        bucket.read_path("busy.txt").await.unwrap(),
        b"after a while"
    );
    assert_eq!(state.calls("GET busy.txt"), 2);

    // A 400 is final.
    state.fail("GET refused.txt", &[400]);
    match bucket.read_path("refused.txt").await {
        Err(GcpError::Http { status: 400, .. }) => {}
        other => panic!("expected Http 400, got {other:?}"),
    }
    assert_eq!(state.calls("GET refused.txt"), 1);

    // Three server errors: the last one is reported.
    state.fail("GET down.txt", &[503, 502, 500]);
    match bucket.read_path("down.txt").await {
        Err(GcpError::Http { status: 500, .. }) => {}
        other => panic!("expected Http 500, got {other:?}"),
    }
    assert_eq!(state.calls("GET down.txt"), 3);

    // A download to a file is retried the same way.
    state.fail("GET flaky.txt", &[503]);
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("flaky.txt");
    bucket
        .download_object_to_path("flaky.txt", &target)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"at last");
    assert_eq!(entries(dir.path()), vec!["flaky.txt".to_owned()]);
}

#[tokio::test]
async fn a_retried_delete_that_finds_nothing_is_done() {
    let (state, bucket) = fake_storage().await;

    // Nothing there, first attempt: NotFound.
    match bucket.delete_path("absent.txt").await {
        Err(GcpError::NotFound { bucket: b, name }) => {
            assert_eq!(b, "fake-bucket");
            assert_eq!(name, "absent.txt");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(state.calls("DELETE absent.txt"), 1);

    // The first attempt deleted the object but its answer was lost (here: a 503, and no
    // object left); the retry finds nothing: the delete is done.
    state.fail("DELETE lost.txt", &[503]);
    bucket.delete_path("lost.txt").await.unwrap();
    assert_eq!(state.calls("DELETE lost.txt"), 2);

    // A 503, then the delete succeeds.
    state.put("slow.txt", b"x");
    state.fail("DELETE slow.txt", &[503]);
    bucket.delete_path("slow.txt").await.unwrap();
    assert_eq!(state.calls("DELETE slow.txt"), 2);
    assert!(state.objects.lock().is_empty());

    // A 429 means the service did nothing: a 404 after it is still NotFound.
    state.fail("DELETE throttled.txt", &[429]);
    assert!(matches!(
        bucket.delete_path("throttled.txt").await,
        Err(GcpError::NotFound { .. })
    ));
    assert_eq!(state.calls("DELETE throttled.txt"), 2);

    // A retry that finds no bucket is no delete that worked.
    let elsewhere = GcsBucket {
        bucket: "no-such-bucket".into(),
        gcp_credentials: GcpCredentials::default(),
        bucket_folder: String::new(),
    }
    .storage_at(bucket.endpoint().clone())
    .await
    .unwrap();
    state.fail("DELETE gone-bucket.txt", &[503]);
    assert!(matches!(
        elsewhere.delete_path("gone-bucket.txt").await,
        Err(GcpError::Http { status: 404, .. })
    ));

    // A client error is not retried.
    state.fail("DELETE forbidden.txt", &[403]);
    assert!(matches!(
        bucket.delete_path("forbidden.txt").await,
        Err(GcpError::Http { status: 403, .. })
    ));
    assert_eq!(state.calls("DELETE forbidden.txt"), 1);
}

#[tokio::test]
async fn get_directory_refuses_listed_names_that_leave_the_target() {
    let (state, bucket) = fake_storage().await;
    let (outer, dir, escape, landing_spots) = escape_target();
    // Each hostile name comes after a harmless one, which must not be written either.
    let cases = [
        (Some("evil"), format!("evil/../../{escape}")),
        (Some("evil"), format!("evil/a/../../../{escape}")),
        (Some("evil"), format!("evil//{escape}")),
        (Some("evil"), format!("evil/./{escape}")),
        (Some("evil"), "evil/..".to_owned()),
        (Some("evil"), "evil/.".to_owned()),
        (None, format!("/{escape}")),
        (None, format!("../{escape}")),
        (None, format!("./{escape}")),
    ];
    for (from, hostile) in &cases {
        *state.objects.lock() = vec![
            ("evil/harmless.txt".to_owned(), b"harmless".to_vec()),
            (hostile.clone(), b"escaped!".to_vec()),
        ];
        match bucket.get_directory(*from, &dir).await {
            Err(GcpError::Path { path, message }) => {
                assert_eq!(&path, hostile);
                assert!(message.contains("outside"), "{message}");
            }
            other => panic!("{hostile} from {from:?}: expected GcpError::Path, got {other:?}"),
        }
        assert_eq!(
            state.object_calls(),
            0,
            "{hostile}: an object was downloaded"
        );
        assert!(!dir.exists(), "{hostile}: {:?}", entries(&dir));
        assert!(entries(outer.path()).is_empty(), "{hostile}");
        for spot in &landing_spots {
            assert!(!spot.exists(), "{hostile}: {} was written", spot.display());
        }
    }

    // The same listing without the hostile name downloads as usual.
    *state.objects.lock() = vec![("evil/harmless.txt".to_owned(), b"harmless".to_vec())];
    let written = bucket.get_directory(Some("evil"), &dir).await.unwrap();
    assert_eq!(written, vec![dir.join("harmless.txt")]);
    assert_eq!(
        std::fs::read(dir.join("harmless.txt")).unwrap(),
        b"harmless"
    );
}

/// A server that answers every request with a 200 whose body stops short of its
/// `Content-Length`: `sent` bytes of `claimed`, then it closes the connection or, with
/// `hang`, keeps it open until the client goes away.
fn short_body_server(claimed: usize, sent: usize, hang: bool) -> String {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else {
                return;
            };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {claimed}\r\n\r\n"
                );
                stream.write_all(answer.as_bytes()).ok();
                stream.write_all(&vec![b'x'; sent]).ok();
                stream.flush().ok();
                if hang {
                    // Until the client closes its end.
                    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
                }
            });
        }
    });
    base
}

async fn bucket_at(base: String) -> Bucket {
    bucket_block("fake-bucket", "", GcpCredentials::default())
        .storage_at(Endpoint::Emulator(base))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_download_cut_short_leaves_nothing_and_keeps_the_old_file() {
    let bucket = bucket_at(short_body_server(1_000_000, 70_000, false)).await;
    let dir = tempfile::tempdir().unwrap();

    // A new file: nothing is left, not even a temporary file.
    let target = dir.path().join("out/cut.bin");
    match bucket.download_object_to_path("cut.bin", &target).await {
        Err(GcpError::Unreachable { action, .. }) => assert_eq!(action, "download cut.bin"),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(!target.exists());
    assert_eq!(entries(&dir.path().join("out")), Vec::<String>::new());

    // An existing file is left as it was.
    std::fs::write(&target, b"the old bytes").unwrap();
    assert!(
        bucket
            .download_object_to_path("cut.bin", &target)
            .await
            .is_err()
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"the old bytes");
    assert_eq!(entries(&dir.path().join("out")), vec!["cut.bin".to_owned()]);

    // Reading it into memory fails too.
    assert!(matches!(
        bucket.read_path("cut.bin").await,
        Err(GcpError::Unreachable { .. })
    ));
}

#[tokio::test]
async fn a_dropped_download_leaves_nothing() {
    let bucket = bucket_at(short_body_server(1_000_000, 70_000, true)).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let target = out.join("stalled.bin");

    // The download stalls mid-body; it is dropped by a timeout while its temporary file
    // exists.
    let (result, temporary) = tokio::join!(
        tokio::time::timeout(
            std::time::Duration::from_secs(3),
            bucket.download_object_to_path("stalled.bin", &target),
        ),
        async {
            for _ in 0..250 {
                if let Some(name) = entries(&out).into_iter().next() {
                    return Some(name);
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            None
        }
    );
    assert!(result.is_err(), "the download did not stall: {result:?}");
    let temporary = temporary.expect("no temporary file appeared");
    assert!(
        temporary.starts_with(".stalled.bin.") && temporary.ends_with(".partial"),
        "{temporary}"
    );
    assert_eq!(entries(&out), Vec::<String>::new(), "left behind");
}

#[tokio::test]
async fn downloads_keep_away_from_other_files() {
    let (state, bucket) = fake_storage().await;
    let bytes = random_bytes(300_000);
    state.put("same.bin", &bytes);
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("same.bin");

    // A file of the user's named like the old fixed temporary name is not touched.
    let users = dir.path().join("same.bin.partial");
    std::fs::write(&users, b"mine").unwrap();

    // Concurrent downloads to the same target each write their own temporary file.
    let (a, b, c) = tokio::join!(
        bucket.download_object_to_path("same.bin", &target),
        bucket.download_object_to_path("same.bin", &target),
        bucket.download_object_to_path("same.bin", &target),
    );
    for result in [a, b, c] {
        assert_eq!(result.unwrap(), target);
    }
    assert!(std::fs::read(&target).unwrap() == bytes, "bytes differ");
    assert_eq!(std::fs::read(&users).unwrap(), b"mine");
    assert_eq!(
        entries(dir.path()),
        vec!["same.bin".to_owned(), "same.bin.partial".to_owned()]
    );
    assert_eq!(state.calls("GET same.bin"), 3);

    // A target naming no file is refused.
    match bucket
        .download_object_to_path("same.bin", dir.path().join(".."))
        .await
    {
        Err(GcpError::Path { .. }) => {}
        other => panic!("expected GcpError::Path, got {other:?}"),
    }
}
