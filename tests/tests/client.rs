//! `registry-client` against a real `blocks serve` on a free port with a temporary
//! `$BLOCKS_HOME`: typed and dynamic loads, nested resolution, the cache, configuration
//! fallbacks, and every error a user can meet.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use block_types::Block;
use block_types::catalog::{GcpCredentials, GcsBucket, Secret};
use registry_client::{Client, Config, ConfigSource, Error};
use registry_server::serve::Running;
use serde_json::{Value, json};

const CANARY: &str = "canary-client-9c2e";

struct Server {
    running: Running,
    admin: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn api(&self) -> String {
        self.running.api_url()
    }

    fn home(&self) -> std::path::PathBuf {
        self._dir.path().join("home")
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}/{path}", self.api()))
            .bearer_auth(&self.admin);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {value}");
        value
    }

    /// Registers a built-in block type and schema over the API, as a client would.
    async fn register<B: Block>(&self) -> (String, String) {
        for nested in B::nested_specs() {
            self.register_spec(&nested).await;
        }
        self.register_spec(&B::spec()).await
    }

    async fn register_spec(&self, spec: &block_types::BlockSpec) -> (String, String) {
        let ty = reqwest::Client::new()
            .get(format!(
                "{}/block_types/slug/{}",
                self.api(),
                spec.block_type.slug
            ))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        let ty: Value = if ty.status() == 404 {
            self.call(
                reqwest::Method::POST,
                "block_types/",
                Some(serde_json::to_value(spec.block_type.to_create()).unwrap()),
            )
            .await
        } else {
            ty.json().await.unwrap()
        };
        let type_id = ty["id"].as_str().unwrap().to_owned();
        let schema = self
            .call(
                reqwest::Method::POST,
                "block_schemas/",
                Some(
                    serde_json::to_value(spec.to_schema_create(type_id.parse().unwrap())).unwrap(),
                ),
            )
            .await;
        (type_id, schema["id"].as_str().unwrap().to_owned())
    }

    async fn create(
        &self,
        (type_id, schema_id): &(String, String),
        name: &str,
        data: Value,
    ) -> String {
        let doc = self
            .call(
                reqwest::Method::POST,
                "block_documents/",
                Some(json!({"name": name, "block_type_id": type_id, "block_schema_id": schema_id, "data": data})),
            )
            .await;
        doc["id"].as_str().unwrap().to_owned()
    }

    async fn token(&self, scopes: &[&str]) -> String {
        let created = self
            .call(
                reqwest::Method::POST,
                "tokens",
                Some(json!({"name": "client test", "scopes": scopes})),
            )
            .await;
        created["token"].as_str().unwrap().to_owned()
    }

    fn client(&self, token: &str) -> Client {
        Client::new(Config::new(&self.api(), Some(token)).unwrap()).unwrap()
    }
}

async fn server() -> Server {
    let started = tests::TestServer::start().await;
    Server {
        running: started.running,
        admin: started.admin,
        _dir: started.dir,
    }
}

/// The course's pair: `zoom-gcs` referencing `zoom-gcp-creds`.
async fn seed(server: &Server) -> (String, String) {
    let creds = server.register::<GcpCredentials>().await;
    let bucket = server.register::<GcsBucket>().await;
    let creds_id = server
        .create(
            &creds,
            "zoom-gcp-creds",
            json!({"service_account_info": {"type": "service_account", "private_key": CANARY}, "project": "dtc-de"}),
        )
        .await;
    let bucket_id = server
        .create(
            &bucket,
            "zoom-gcs",
            json!({"bucket": "dtc-data-lake", "bucket_folder": "", "gcp_credentials": {"$ref": {"block_document_id": creds_id}}}),
        )
        .await;
    (creds_id, bucket_id)
}

#[tokio::test]
async fn a_nested_block_loads_typed_in_one_request() {
    let server = server().await;
    let (creds_id, bucket_id) = seed(&server).await;
    let client = server.client(&server.token(&["read-secrets"]).await);

    let bucket: GcsBucket = client.load("zoom-gcs").await.unwrap();
    assert_eq!(bucket.bucket, "dtc-data-lake");
    assert_eq!(bucket.gcp_credentials.project.as_deref(), Some("dtc-de"));
    let info = bucket
        .gcp_credentials
        .service_account_info
        .as_ref()
        .unwrap();
    assert_eq!(info.expose_secret()["private_key"], json!(CANARY));
    assert!(
        !format!("{bucket:?}").contains(CANARY),
        "Debug redacts secrets"
    );

    let by_id: GcsBucket = client.load_by_id(bucket_id.parse().unwrap()).await.unwrap();
    assert_eq!(by_id.bucket, "dtc-data-lake");
    let json = client.load_json("gcs-bucket/zoom-gcs").await.unwrap();
    assert_eq!(json.id.to_string(), bucket_id);
    assert_eq!(
        json.data.expose_secret()["gcp_credentials"]["project"],
        json!("dtc-de")
    );
    assert!(!format!("{json:?}").contains(CANARY));

    // A document of another type asked for by id.
    match client
        .load_by_id::<GcsBucket>(creds_id.parse().unwrap())
        .await
    {
        Err(Error::WrongType {
            expected, found, ..
        }) => {
            assert_eq!(
                (expected.as_str(), found.as_str()),
                ("gcs-bucket", "gcp-credentials")
            );
        }
        other => panic!("{other:?}"),
    }
    server.running.stop().await.unwrap();
}

#[tokio::test]
async fn errors_say_what_to_do() {
    let server = server().await;
    seed(&server).await;
    let reader = server.client(&server.token(&["read-secrets"]).await);

    match reader.load::<GcsBucket>("nope").await {
        Err(e @ Error::NotFound { .. }) => {
            assert_eq!(e.to_string(), "no block gcs-bucket/nope on the server");
        }
        other => panic!("{other:?}"),
    }
    // Data that does not fit the Rust type names the field, never the value.
    let secret = server.register::<Secret>().await;
    server
        .create(&secret, "api-token", json!({"value": CANARY}))
        .await;
    // A block without secret fields loads with a read-only token.
    let string = server.register::<block_types::catalog::StringBlock>().await;
    server.create(&string, "plain", json!({"value": "s"})).await;
    let read_only = server.client(&server.token(&["read"]).await);
    let plain: block_types::catalog::StringBlock = read_only.load("plain").await.unwrap();
    assert_eq!(plain.value, "s");
    match read_only.load::<Secret>("api-token").await {
        Err(e @ Error::Forbidden { .. }) => assert!(e.to_string().contains("read-secrets"), "{e}"),
        other => panic!("{other:?}"),
    }
    match server
        .client("blk_not-a-token")
        .load::<Secret>("api-token")
        .await
    {
        Err(e @ Error::Unauthorized { .. }) => {
            assert!(e.to_string().contains("not known"), "{e}");
            assert!(e.to_string().contains("client's configuration"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // The server gone: the URL and where it came from.
    let api = server.api();
    server.running.stop().await.unwrap();
    match reader.load::<Secret>("api-token").await {
        Err(e @ Error::Unreachable { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&api), "{text}");
            assert!(!text.contains("include_secrets"), "{text}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn data_that_does_not_fit_names_the_field() {
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Strict {
        value: u16,
    }
    impl Block for Strict {
        const SLUG: &'static str = "secret";
        fn spec() -> block_types::BlockSpec {
            Secret::spec()
        }
    }
    let server = server().await;
    let secret = server.register::<Secret>().await;
    server
        .create(&secret, "not-a-number", json!({"value": CANARY}))
        .await;
    let client = server.client(&server.admin);
    match client.load::<Strict>("not-a-number").await {
        Err(e @ Error::Data { .. }) => {
            let text = e.to_string();
            assert!(
                matches!(&e, Error::Data { field, .. } if field == "value"),
                "{text}"
            );
            assert!(!text.contains(CANARY), "{text}");
        }
        other => panic!("{other:?}"),
    }
    server.running.stop().await.unwrap();
}

#[tokio::test]
async fn the_cache_serves_fresh_hits_revalidates_and_sees_a_changed_child() {
    let server = server().await;
    let (creds_id, _) = seed(&server).await;
    let client = server
        .client(&server.token(&["read-secrets"]).await)
        .with_cache(Duration::from_millis(300));
    let first: GcsBucket = client.load("zoom-gcs").await.unwrap();
    let again: GcsBucket = client.load("zoom-gcs").await.unwrap();
    assert_eq!(first.bucket, again.bucket);
    assert_eq!(client.cache_stats().misses, 1);
    assert_eq!(client.cache_stats().fresh_hits, 1);

    tokio::time::sleep(Duration::from_millis(350)).await;
    let _: GcsBucket = client.load("zoom-gcs").await.unwrap();
    assert_eq!(client.cache_stats().revalidated, 1, "unchanged: a 304");

    // A change of the referenced credentials changes the bucket's ETag.
    server
        .call(
            reqwest::Method::PATCH,
            &format!("block_documents/{creds_id}"),
            Some(json!({"data": {"project": "dtc-de-2"}})),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    let changed: GcsBucket = client.load("zoom-gcs").await.unwrap();
    assert_eq!(changed.gcp_credentials.project.as_deref(), Some("dtc-de-2"));
    assert_eq!(client.cache_stats().misses, 2);
    server.running.stop().await.unwrap();
}

fn lookup<'a>(vars: &'a [(&'a str, String)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    }
}

#[tokio::test]
async fn configuration_falls_back_from_blocks_to_prefect_to_the_profile() {
    let server = server().await;
    seed(&server).await;
    let home = server.home();
    let api = server.api();

    // Only the profile `blocks serve` wrote.
    let vars = [("BLOCKS_HOME", home.display().to_string())];
    let config = Config::from_lookup(lookup(&vars)).unwrap();
    assert_eq!(
        config.source,
        ConfigSource::Profile(home.join("profile.toml"))
    );
    let bucket: GcsBucket = Client::new(config).unwrap().load("zoom-gcs").await.unwrap();
    assert_eq!(bucket.bucket, "dtc-data-lake");

    // PREFECT_* over the profile, BLOCKS_* over both.
    let vars = [
        ("BLOCKS_HOME", home.display().to_string()),
        ("PREFECT_API_URL", "http://127.0.0.1:9/api".to_owned()),
        ("PREFECT_API_KEY", "blk_prefect".to_owned()),
    ];
    let config = Config::from_lookup(lookup(&vars)).unwrap();
    assert_eq!(config.source, ConfigSource::PrefectEnv);
    assert_eq!(config.api_url.as_str(), "http://127.0.0.1:9/api/");
    let vars = [
        ("PREFECT_API_URL", "http://127.0.0.1:9/api".to_owned()),
        ("BLOCKS_API_URL", api.clone()),
        ("BLOCKS_API_KEY", server.admin.clone()),
    ];
    let config = Config::from_lookup(lookup(&vars)).unwrap();
    assert_eq!(config.source, ConfigSource::BlocksEnv);
    assert!(
        !format!("{config:?}").contains(&server.admin),
        "Debug hides the key"
    );

    // An unreachable PREFECT_API_URL is named with where it came from.
    let vars = [("PREFECT_API_URL", "http://127.0.0.1:9/api".to_owned())];
    let client = Client::new(Config::from_lookup(lookup(&vars)).unwrap()).unwrap();
    match client.load::<GcsBucket>("zoom-gcs").await {
        Err(e @ Error::Unreachable { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("127.0.0.1:9") && text.contains("PREFECT_API_URL"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }

    // Nothing at all: says what to set.
    let empty = tempfile::tempdir().unwrap();
    let vars = [("BLOCKS_HOME", empty.path().display().to_string())];
    match Config::from_lookup(lookup(&vars)) {
        Err(e @ Error::Config(_)) => {
            let text = e.to_string();
            assert!(
                text.contains("BLOCKS_API_URL") && text.contains("profile.toml"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    let bad = [("BLOCKS_API_URL", "ftp://x".to_owned())];
    assert!(matches!(
        Config::from_lookup(lookup(&bad)),
        Err(Error::Config(_))
    ));
    server.running.stop().await.unwrap();
}

#[tokio::test]
async fn a_refused_client_gets_an_error_naming_the_wait() {
    let server = server().await;
    seed(&server).await;
    let good = server.token(&["read-secrets"]).await;
    // Fail authentication until the guard refuses this client (20 a minute by default).
    let bad = server.client("blk_wrong");
    let mut refused = false;
    for _ in 0..25 {
        if let Err(Error::RateLimited { retry_after_s }) = bad.load::<GcsBucket>("zoom-gcs").await {
            assert!(retry_after_s > 0);
            refused = true;
            break;
        }
    }
    assert!(refused, "the server never refused the failing client");
    // A valid token from the same address is still served, even one never seen before;
    // the failing one keeps waiting.
    let client = server.client(&good);
    let loaded = client.load::<GcsBucket>("zoom-gcs").await;
    assert!(loaded.is_ok(), "a valid token is served: {loaded:?}");
    assert!(matches!(
        bad.load::<GcsBucket>("zoom-gcs").await,
        Err(Error::RateLimited { .. })
    ));
    server.running.stop().await.unwrap();
}

fn creds(project: &str) -> GcpCredentials {
    GcpCredentials {
        service_account_file: None,
        service_account_info: Some(block_types::SecretMap::new(
            json!({"type": "service_account", "private_key": CANARY})
                .as_object()
                .unwrap()
                .clone(),
        )),
        project: Some(project.to_owned()),
    }
}

#[tokio::test]
async fn saves_register_types_and_round_trip() {
    let server = server().await;
    let client = server.client(&server.token(&["write", "read-secrets"]).await);
    // Nothing registered yet but the core types: saving registers gcp-credentials.
    let saved = creds("dtc-de");
    client.save(&saved, "zoom-gcp-creds").await.unwrap();
    let loaded: GcpCredentials = client.load("zoom-gcp-creds").await.unwrap();
    assert_eq!(loaded.to_data().unwrap(), saved.to_data().unwrap());

    client
        .save(&Secret::new(CANARY), "api-token")
        .await
        .unwrap();
    let secret: Secret = client.load("api-token").await.unwrap();
    assert_eq!(secret.value.expose_str(), Some(CANARY));

    // Saving twice without overwrite: a distinct error; with it, replaced.
    match client.save(&Secret::new("other"), "api-token").await {
        Err(e @ Error::NameConflict { .. }) => {
            assert!(e.to_string().contains("secret/api-token"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    client
        .save_overwrite(&Secret::new("rotated"), "api-token")
        .await
        .unwrap();
    let secret: Secret = client.load("api-token").await.unwrap();
    assert_eq!(secret.value.expose_str(), Some("rotated"));

    // A read-only token cannot save: the scope is named.
    let reader = server.client(&server.token(&["read-secrets"]).await);
    match reader.save(&Secret::new("x"), "nope").await {
        Err(e @ Error::Forbidden { .. }) => assert!(e.to_string().contains("write"), "{e}"),
        other => panic!("{other:?}"),
    }
    server.running.stop().await.unwrap();
}

#[tokio::test]
async fn nested_blocks_are_saved_as_references() {
    let server = server().await;
    let client = server.client(&server.token(&["write", "read-secrets"]).await);
    let creds_id = client
        .save(&creds("dtc-de"), "zoom-gcp-creds")
        .await
        .unwrap();

    // Credentials loaded (or saved) through this client: the bucket references them.
    let loaded: GcpCredentials = client.load("zoom-gcp-creds").await.unwrap();
    let bucket = GcsBucket {
        bucket: "dtc-data-lake".into(),
        gcp_credentials: loaded,
        bucket_folder: String::new(),
    };
    let bucket_id = client.save(&bucket, "zoom-gcs").await.unwrap();
    let doc = server
        .call(
            reqwest::Method::GET,
            &format!("block_documents/{bucket_id}"),
            None,
        )
        .await;
    assert_eq!(
        doc["block_document_references"]["gcp_credentials"]["block_document"]["id"],
        json!(creds_id.to_string())
    );

    // Credentials never saved: saved first as an anonymous document, then referenced.
    let fresh = GcsBucket {
        bucket: "other".into(),
        gcp_credentials: creds("elsewhere"),
        bucket_folder: String::new(),
    };
    let fresh_id = client.save(&fresh, "other-gcs").await.unwrap();
    let doc = server
        .call(
            reqwest::Method::GET,
            &format!("block_documents/{fresh_id}"),
            None,
        )
        .await;
    let reference = &doc["block_document_references"]["gcp_credentials"]["block_document"];
    assert_eq!(reference["is_anonymous"], json!(true));
    assert_ne!(reference["id"], json!(creds_id.to_string()));
    let back: GcsBucket = client.load("other-gcs").await.unwrap();
    assert_eq!(back.gcp_credentials.project.as_deref(), Some("elsewhere"));

    // Two named documents with the same data: which one is meant cannot be told, so the
    // nested block is saved on its own rather than tied to either.
    client.save(&creds("twin"), "twin-a").await.unwrap();
    client.save(&creds("twin"), "twin-b").await.unwrap();
    let twin = GcsBucket {
        bucket: "twin".into(),
        gcp_credentials: creds("twin"),
        bucket_folder: String::new(),
    };
    let twin_id = client.save(&twin, "twin-gcs").await.unwrap();
    let doc = server
        .call(
            reqwest::Method::GET,
            &format!("block_documents/{twin_id}"),
            None,
        )
        .await;
    assert_eq!(
        doc["block_document_references"]["gcp_credentials"]["block_document"]["is_anonymous"],
        json!(true)
    );
    server.running.stop().await.unwrap();
}

#[tokio::test]
async fn an_overwrite_after_someone_elses_change_is_a_concurrent_edit() {
    let server = server().await;
    let client = server
        .client(&server.token(&["write", "read-secrets"]).await)
        .with_cache(Duration::from_secs(60));
    let id = client.save(&Secret::new("v0"), "contended").await.unwrap();
    // Our own writes in a row are fine.
    client
        .save_overwrite(&Secret::new("v1"), "contended")
        .await
        .unwrap();
    let loaded: Secret = client.load("contended").await.unwrap();
    assert_eq!(loaded.value.expose_str(), Some("v1"));

    // Someone else changes it after our read: our overwrite is refused, theirs kept.
    server
        .call(
            reqwest::Method::PATCH,
            &format!("block_documents/{id}"),
            Some(json!({"data": {"value": "theirs"}})),
        )
        .await;
    match client
        .save_overwrite(&Secret::new("ours"), "contended")
        .await
    {
        Err(e @ Error::ConcurrentEdit { .. }) => {
            assert!(e.to_string().contains("load it again"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    let reader = server.client(&server.admin);
    let now: Secret = reader.load("contended").await.unwrap();
    assert_eq!(now.value.expose_str(), Some("theirs"));

    // Having read it again, the overwrite goes through, and the cache (which held the old
    // value) serves the new one.
    let _: Secret = client.load("contended").await.unwrap();
    client
        .save_overwrite(&Secret::new("ours"), "contended")
        .await
        .unwrap();
    let mine: Secret = client.load("contended").await.unwrap();
    assert_eq!(mine.value.expose_str(), Some("ours"));
    assert!(
        !format!("{client:?}").contains("blk_"),
        "Debug hides the token"
    );
    server.running.stop().await.unwrap();
}

/// A canned reply: status, headers, JSON body.
type Reply = (u16, Vec<(&'static str, String)>, Value);

/// A stand-in server that answers each request with the next canned reply, and counts.
async fn scripted(replies: Vec<Reply>) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    let replies = Arc::new(replies);
    let counter = calls.clone();
    let app = axum::Router::new().fallback(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let replies = replies.clone();
        async move {
            let (status, headers, body) = replies[n.min(replies.len() - 1)].clone();
            let mut response = axum::response::IntoResponse::into_response((
                axum::http::StatusCode::from_u16(status).unwrap(),
                axum::Json(body),
            ));
            for (name, value) in headers {
                response.headers_mut().insert(name, value.parse().unwrap());
            }
            response
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/api"), calls)
}

#[tokio::test]
async fn reads_retry_503_and_429_but_writes_that_may_have_landed_are_not_resent() {
    use std::sync::atomic::Ordering;
    // A real document to replay.
    let server = server().await;
    let secret = server.register::<Secret>().await;
    let id = server
        .create(&secret, "api-token", json!({"value": "v"}))
        .await;
    let document = server
        .call(
            reqwest::Method::GET,
            &format!("block_documents/{id}?include_secrets=true"),
            None,
        )
        .await;
    server.running.stop().await.unwrap();

    let busy = json!({"exception_message": "Service Unavailable"});
    let (api, calls) = scripted(vec![
        (503, vec![], busy.clone()),
        (
            429,
            vec![("retry-after", "1".to_owned())],
            json!({"detail": "slow down"}),
        ),
        (200, vec![], document.clone()),
    ])
    .await;
    let client = Client::new(Config::new(&api, Some("blk_x")).unwrap()).unwrap();
    let started = std::time::Instant::now();
    let secret: Secret = client.load("api-token").await.unwrap();
    assert_eq!(secret.value.expose_str(), Some("v"));
    assert_eq!(calls.load(Ordering::SeqCst), 3, "503 and 429 were retried");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was honoured"
    );

    // A create answered 503 may have landed: it is reported, not sent again.
    let (api, calls) = scripted(vec![
        (404, vec![], json!({"detail": "Block document not found"})),
        (200, vec![], json!({"id": uuid::Uuid::new_v4(), "name": "Secret", "slug": "secret", "created": "2026-01-01T00:00:00Z", "updated": "2026-01-01T00:00:00Z", "logo_url": null, "documentation_url": null, "description": null, "code_example": null, "is_protected": true})),
        (201, vec![], json!({"id": uuid::Uuid::new_v4(), "created": "2026-01-01T00:00:00Z", "updated": "2026-01-01T00:00:00Z", "checksum": "sha256:x", "fields": {}, "block_type_id": uuid::Uuid::new_v4(), "block_type": null, "capabilities": [], "version": "1"})),
        (503, vec![], busy),
        (201, vec![], document),
    ])
    .await;
    let client = Client::new(Config::new(&api, Some("blk_x")).unwrap()).unwrap();
    match client.save(&Secret::new("x"), "maybe").await {
        Err(Error::Http { status: 503, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "name check, type, schema, one create"
    );
}

/// Saves `data` as a `B` named `name`, loads it back, and returns both data forms.
async fn save_and_load<B: Block>(client: &Client, name: &str, data: Value) -> (Value, Value) {
    let Value::Object(map) = data else {
        panic!("not an object")
    };
    let block = B::from_data(map).unwrap_or_else(|e| panic!("{}: {e}", B::SLUG));
    client
        .save(&block, name)
        .await
        .unwrap_or_else(|e| panic!("save {}: {e}", B::SLUG));
    let loaded: B = client
        .load(name)
        .await
        .unwrap_or_else(|e| panic!("load {}: {e}", B::SLUG));
    assert!(!format!("{loaded:?}").contains(CANARY), "{} Debug", B::SLUG);
    (
        Value::Object(block.to_data().unwrap()),
        Value::Object(loaded.to_data().unwrap()),
    )
}

#[tokio::test]
async fn every_built_in_round_trips_through_save_and_load() {
    use block_types::catalog::*;
    let server = server().await;
    let client = server.client(&server.token(&["write", "read-secrets"]).await);
    let cases = block_types::catalog::samples(CANARY);
    let mut slugs = std::collections::BTreeSet::new();
    for (i, (slug, data)) in cases.into_iter().enumerate() {
        let name = format!("{slug}-{i}");
        let (saved, loaded) = match slug {
            "secret" => save_and_load::<Secret>(&client, &name, data).await,
            "webhook" => save_and_load::<Webhook>(&client, &name, data).await,
            "local-file-system" => save_and_load::<LocalFileSystem>(&client, &name, data).await,
            "json" => save_and_load::<Json>(&client, &name, data).await,
            "string" => save_and_load::<StringBlock>(&client, &name, data).await,
            "date-time" => save_and_load::<DateTime>(&client, &name, data).await,
            "sqlalchemy-connector" => {
                save_and_load::<SqlAlchemyConnector>(&client, &name, data).await
            }
            "async-sqlalchemy-connector" => {
                save_and_load::<AsyncSqlAlchemyConnector>(&client, &name, data).await
            }
            "gcp-credentials" => save_and_load::<GcpCredentials>(&client, &name, data).await,
            "gcs-bucket" => save_and_load::<GcsBucket>(&client, &name, data).await,
            "docker-registry" => save_and_load::<DockerRegistry>(&client, &name, data).await,
            "docker-container" => save_and_load::<DockerContainer>(&client, &name, data).await,
            "docker-registry-credentials" => {
                save_and_load::<DockerRegistryCredentials>(&client, &name, data).await
            }
            "docker-host" => save_and_load::<DockerHost>(&client, &name, data).await,
            other => panic!("no Rust type for {other}"),
        };
        assert_eq!(saved, loaded, "{slug}");
        slugs.insert(slug);
    }
    let every: std::collections::BTreeSet<String> = block_types::catalog::all_specs()
        .into_iter()
        .map(|s| s.block_type.slug)
        .collect();
    for slug in &every {
        assert!(slugs.contains(slug.as_str()), "{slug} not covered");
    }
    server.running.stop().await.unwrap();
}

#[tokio::test]
async fn https_with_a_private_ca_works_through_blocks_ca_cert() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let server = tests::TestServer::start_with_tls(Some((cert_path.clone(), key_path))).await;
    let token = server.admin.clone();
    let url = format!("https://localhost:{}/api", server.running.addr.port());
    let with_ca = [
        ("BLOCKS_API_URL", url.clone()),
        ("BLOCKS_API_KEY", token.clone()),
        ("BLOCKS_CA_CERT", cert_path.display().to_string()),
    ];
    let client = Client::new(Config::from_lookup(lookup(&with_ca)).unwrap()).unwrap();
    client.save(&Secret::new(CANARY), "over-tls").await.unwrap();
    let secret: Secret = client.load("over-tls").await.unwrap();
    assert_eq!(secret.value.expose_str(), Some(CANARY));

    // Without the CA the certificate is refused: unreachable, naming the URL.
    let without = [("BLOCKS_API_URL", url.clone()), ("BLOCKS_API_KEY", token)];
    let client = Client::new(Config::from_lookup(lookup(&without)).unwrap()).unwrap();
    match client.load::<Secret>("over-tls").await {
        Err(e @ Error::Unreachable { .. }) => {
            let text = e.to_string();
            assert!(text.contains("localhost"), "{text}");
            assert!(text.contains("BLOCKS_CA_CERT"), "the hint: {text}");
        }
        other => panic!("{other:?}"),
    }
    server.running.stop().await.unwrap();
}

/// A P-256 signing key (the test issuer's) and its public JWK.
fn issuer_key(kid: &str) -> (jsonwebtoken::EncodingKey, Value) {
    use base64::Engine as _;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    (
        jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
        json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&point[1..33]), "y": b64(&point[33..65])}),
    )
}

/// What a Kubernetes projected service-account token for `etl/loader` carries.
fn pod_token(key: &jsonwebtoken::EncodingKey, kid: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    let claims = json!({
        "iss": "https://kubernetes.default.svc", "aud": ["blocks"],
        "sub": "system:serviceaccount:etl:loader", "iat": now, "nbf": now, "exp": now + 600,
    });
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

#[tokio::test]
async fn a_pod_signs_in_with_its_identity_token_and_renews_before_expiry() {
    let server = server().await;
    seed(&server).await;
    let (key, jwk) = issuer_key("pod-key");
    server
        .call(
            reqwest::Method::POST,
            "auth/issuers",
            Some(json!({"issuer": "https://kubernetes.default.svc", "audience": "blocks", "jwks": {"keys": [jwk]}})),
        )
        .await;
    server
        .call(
            reqwest::Method::PUT,
            "auth/roles/etl-loader",
            Some(json!({
                "issuer": "https://kubernetes.default.svc",
                "claims": {"sub": "system:serviceaccount:etl:loader"},
                "scopes": ["read-secrets"],
                "grants": [
                    {"scope": "read-secrets", "selector": "gcs-bucket/zoom-gcs"},
                    {"scope": "read-secrets", "selector": "gcp-credentials/zoom-gcp-creds"},
                ],
                "ttl": 3,
            })),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, pod_token(&key, "pod-key")).unwrap();
    // No token configured anywhere: the identity is all the pod has.
    let config = Config::from_lookup(|name| match name {
        "BLOCKS_API_URL" => Some(server.api()),
        "BLOCKS_IDENTITY_TOKEN_FILE" => Some(file.display().to_string()),
        "BLOCKS_ROLE" => Some("etl-loader".to_owned()),
        _ => None,
    })
    .unwrap();
    assert!(config.api_key.is_none());
    let client = Client::new(config).unwrap();
    let bucket: GcsBucket = client.load("zoom-gcs").await.unwrap();
    assert_eq!(bucket.bucket, "dtc-data-lake");
    // Outside the role's grants: as absent as a block that does not exist.
    let other = client.load::<Secret>("anything").await.unwrap_err();
    assert!(matches!(other, Error::NotFound { .. }), "{other:?}");

    // The role's tokens live 3 s; the client renews after two thirds of that, reading the
    // file again (the platform rotates it), and keeps loading across several lifetimes.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        std::fs::write(&file, pod_token(&key, "pod-key")).unwrap();
        let bucket: GcsBucket = client.load("zoom-gcs").await.unwrap();
        assert_eq!(bucket.gcp_credentials.project.as_deref(), Some("dtc-de"));
    }
    let audit = server
        .call(
            reqwest::Method::GET,
            "audit?action=POST%20/api/auth/jwt",
            None,
        )
        .await;
    let exchanges = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == 200)
        .count();
    assert!(
        exchanges >= 3,
        "the client did not renew: {exchanges} exchanges"
    );

    // A role the identity does not match: the error says where the token came from.
    let wrong = Client::new(
        Config::new(&server.api(), None)
            .unwrap()
            .with_identity(&file, "nobody"),
    )
    .unwrap();
    match wrong.load::<GcsBucket>("zoom-gcs").await.unwrap_err() {
        Error::Unauthorized { detail, key_from } => {
            assert!(detail.contains("no role"), "{detail}");
            assert!(
                key_from.contains("identity token") && key_from.contains("nobody"),
                "{key_from}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Half the identity configured: a clear configuration error.
    let half = Config::from_lookup(|name| match name {
        "BLOCKS_API_URL" => Some(server.api()),
        "BLOCKS_ROLE" => Some("etl-loader".to_owned()),
        _ => None,
    })
    .unwrap_err();
    assert!(
        half.to_string().contains("BLOCKS_IDENTITY_TOKEN_FILE"),
        "{half}"
    );
}

/// Waits until `done`, failing with `what` after 10 s.
async fn within_10s(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A watching cache drops a block the moment a block it references changes: the rotated
/// credential is loaded fresh within the TTL, where a plain cache still serves the old one.
#[tokio::test]
async fn a_watching_cache_sees_a_rotated_child_credential_within_its_ttl() {
    let server = server().await;
    let (creds_id, _) = seed(&server).await;
    let token = server.token(&["read-secrets"]).await;
    let watching = server
        .client(&token)
        .with_cache(Duration::from_secs(600))
        .watching();
    let plain = server.client(&token).with_cache(Duration::from_secs(600));
    let first: GcsBucket = watching.load("zoom-gcs").await.unwrap();
    let _: GcsBucket = plain.load("zoom-gcs").await.unwrap();
    assert_eq!(first.gcp_credentials.project.as_deref(), Some("dtc-de"));
    within_10s("the feed never connected", || watching.watching_connected()).await;
    // Connected: loads are served from memory.
    let _: GcsBucket = watching.load("zoom-gcs").await.unwrap();
    let before = watching.cache_stats();
    let _: GcsBucket = watching.load("zoom-gcs").await.unwrap();
    assert_eq!(watching.cache_stats().fresh_hits, before.fresh_hits + 1);

    server
        .call(
            reqwest::Method::PATCH,
            &format!("block_documents/{creds_id}"),
            Some(json!({"data": {"project": "rotated"}})),
        )
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now: GcsBucket = watching.load("zoom-gcs").await.unwrap();
        if now.gcp_credentials.project.as_deref() == Some("rotated") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the watching cache kept the old credential"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stale: GcsBucket = plain.load("zoom-gcs").await.unwrap();
    assert_eq!(
        stale.gcp_credentials.project.as_deref(),
        Some("dtc-de"),
        "the plain cache serves its copy until the TTL (what watching is for)"
    );
    server.running.stop().await.unwrap();
}

/// `Client::watch` yields changes and, across a server restart, reconnects and resumes
/// after the last event it gave; a watching cache revalidates while disconnected.
#[tokio::test]
async fn a_watch_resumes_after_a_server_restart() {
    use futures::StreamExt as _;
    use registry_client::{Watch, WatchEvent};

    let server = server().await;
    let creds = server.register::<GcpCredentials>().await;
    let token = server.token(&["read"]).await;
    let client = server.client(&token);
    let watching = server
        .client(&token)
        .with_cache(Duration::from_secs(600))
        .watching();
    let mut changes = std::pin::pin!(client.watch(Watch::all().of_type("gcp-credentials")));
    // The stream is open once the first request is answered: make changes until one
    // arrives (a watch starts at the end of the feed).
    let mut made = 0;
    let first = loop {
        made += 1;
        server
            .create(
                &creds,
                &format!("before-{made}"),
                json!({"service_account_info": {"k": CANARY}}),
            )
            .await;
        if let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(1), changes.next()).await
        {
            break event.unwrap();
        }
        assert!(made < 10, "no event arrived");
    };
    let WatchEvent::Change(first) = first else {
        panic!("{first:?}")
    };
    assert_eq!(first.kind, block_types::EventKind::DocumentCreated);
    // Drain what the loop made after the first.
    let mut last = first.id;
    while let Ok(Some(Ok(WatchEvent::Change(c)))) =
        tokio::time::timeout(Duration::from_millis(300), changes.next()).await
    {
        last = c.id;
    }
    // The watching cache connects on its first load.
    let _ = watching
        .load_json(&format!("gcp-credentials/before-{made}"))
        .await;
    within_10s("the feed never connected", || watching.watching_connected()).await;

    let port = server.running.addr.port();
    let home = server.home();
    let dir = server._dir;
    server.running.stop().await.unwrap();
    within_10s("the cache still trusts a lost feed", || {
        !watching.watching_connected()
    })
    .await;
    let restarted = registry_server::serve::start(&registry_server::serve::ServeArgs {
        port,
        ..registry_server::serve::ServeArgs::embedded(home)
    })
    .await
    .unwrap();
    let after = Server {
        running: restarted,
        admin: token.clone(),
        _dir: dir,
    };
    let (type_id, schema_id) = creds;
    // Written through the new server (with an admin token read from the old one's state).
    let admin_store = &after.running.state.store;
    let schema = admin_store
        .read_block_schema(schema_id.parse().unwrap())
        .await
        .unwrap();
    let doc = admin_store
        .create_block_document(block_types::model::BlockDocumentCreate {
            name: Some("after-restart".into()),
            data: serde_json::from_value(json!({"service_account_info": {"k": CANARY}})).unwrap(),
            block_schema_id: schema.id,
            block_type_id: type_id.parse().unwrap(),
            is_anonymous: false,
        })
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(15), changes.next())
        .await
        .expect("the watch reconnected")
        .unwrap()
        .unwrap();
    let WatchEvent::Change(next) = next else {
        panic!("{next:?}")
    };
    assert_eq!(next.block_document_id, Some(doc.id));
    assert!(
        next.id > last,
        "resumed after {last}, not from the start: {}",
        next.id
    );
    within_10s("the cache's feed never came back", || {
        watching.watching_connected()
    })
    .await;
    after.running.stop().await.unwrap();
}
