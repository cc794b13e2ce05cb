//! What a `read` or `write` token must not learn or change, over the HTTP API, on SQLite
//! and PostgreSQL: secrets stay sealed whatever schemas a `write` token registers, a
//! schema move cannot probe a secret, protected types keep their metadata, every input
//! is bounded, and no error quotes the value it refuses.

use axum::http::StatusCode;
use block_types::Block;
use block_types::catalog::{Collection, GcpCredentials, GcsBucket, Secret};
use block_types::model::BlockSchema;
use block_types::references::reference_value;
use serde_json::{Value, json};

use super::test_app::{Ctx, Resp, get, lenient, secret_doc, send, setup, token};
use crate::store::tests::harness::{TestDb, on_both};
use crate::store::{Scope, Store};

const CANARY: &str = "canary-sec-7d3a90e2";

/// Prefect 3.9.1's own schema of `name` and its version.
fn prefect_schema(name: &str) -> (Value, String) {
    let fixtures: Value = serde_json::from_str(include_str!(
        "../../../block-types/tests/fixtures/block-schemas-prefect-3.9.1.json"
    ))
    .unwrap();
    (
        fixtures[name]["fields"].clone(),
        fixtures[name]["version"].as_str().unwrap().to_owned(),
    )
}

#[track_caller]
fn assert_status(resp: &Resp, status: StatusCode, needle: &str) {
    assert_eq!(resp.status, status, "{}", resp.text);
    assert!(resp.text.contains(needle), "{needle:?} in {}", resp.text);
}

async fn post(app: &axum::Router, uri: &str, token: &str, body: &Value) -> Resp {
    send(app, "POST", uri, Some(token), Some(body), &[]).await
}

/// The app with the GCP collection registered besides the core, and a `write` and a `read`
/// token: (app, writer, reader).
async fn with_gcp(db: &TestDb) -> (Ctx, String, String) {
    let ctx = setup(db, lenient()).await;
    let store = &ctx.state.store;
    store.register_collection(Collection::Gcp).await.unwrap();
    let (writer, _) = token(store, &[Scope::Write]).await;
    let (reader, _) = token(store, &[Scope::Read]).await;
    (ctx, writer, reader)
}

/// The stored schema of the built-in block `B`.
async fn builtin_schema<B: Block>(store: &Store) -> BlockSchema {
    store
        .read_block_schema_by_checksum(&B::spec().checksum(), None)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_write_token_cannot_make_secrets_land_unsealed_or_probe_them() {
    on_both(async |db| {
        let (ctx, writer, reader) = with_gcp(db).await;
        let store = &ctx.state.store;
        let secret_type = store.read_block_type_by_slug("secret").await.unwrap();
        let gcp_type = store.read_block_type_by_slug("gcp-credentials").await.unwrap();

        // Prefect's Secret schema without its secret_fields: refused for its marker.
        let (mut fields, version) = prefect_schema("Secret");
        fields["secret_fields"] = json!([]);
        let body = json!({"fields": fields, "block_type_id": secret_type.id, "capabilities": [], "version": version});
        let resp = post(&ctx.app, "/api/block_schemas/", &writer, &body).await;
        assert_status(&resp, StatusCode::UNPROCESSABLE_ENTITY, "fields.secret_fields");

        // GcpCredentials: the real one registers; the same (checksum, version) without
        // secrets is a 409, another version a 403 for `write` (an admin may).
        let (fields, version) = prefect_schema("GcpCredentials");
        let real = json!({"fields": fields, "block_type_id": gcp_type.id, "capabilities": [], "version": version});
        assert_eq!(post(&ctx.app, "/api/block_schemas/", &writer, &real).await.status, StatusCode::CREATED);
        let mut narrow = real.clone();
        narrow["fields"]["secret_fields"] = json!([]);
        let resp = post(&ctx.app, "/api/block_schemas/", &writer, &narrow).await;
        assert_status(&resp, StatusCode::CONFLICT, "secret_fields");
        narrow["version"] = json!("9.9.9");
        let resp = post(&ctx.app, "/api/block_schemas/", &writer, &narrow).await;
        assert_status(&resp, StatusCode::FORBIDDEN, "fields.secret_fields");
        let resp = post(&ctx.app, "/api/block_schemas/", &ctx.admin, &narrow).await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text);
        let narrow_id = resp.body["id"].clone();

        // A document written with the narrow schema is still sealed and masked.
        let doc = json!({"name": "zoom-gcp-creds", "block_schema_id": narrow_id, "block_type_id": gcp_type.id,
                         "data": {"service_account_info": {"private_key": CANARY}, "project": "p"}});
        let resp = post(&ctx.app, "/api/block_documents/", &writer, &doc).await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text);
        assert!(!resp.text.contains(CANARY));
        let id = resp.body["id"].as_str().unwrap().to_owned();
        let read = get(&ctx.app, &format!("/api/block_documents/{id}"), &reader).await;
        assert_eq!(read.body["data"]["service_account_info"], json!("********"), "{}", read.text);
        assert!(!read.text.contains(CANARY));

        // The side channel: a probe schema whose secret has a pattern, then a move.
        let secret_id = secret_doc(store, "api-token", CANARY).await;
        let (mut probe, _) = prefect_schema("Secret");
        probe["properties"]["value"] = json!({"type": "string", "pattern": "^canary", "writeOnly": true, "format": "password"});
        let body = json!({"fields": probe, "block_type_id": secret_type.id, "capabilities": [], "version": "probe"});
        let probe = post(&ctx.app, "/api/block_schemas/", &writer, &body).await;
        assert_eq!(probe.status, StatusCode::CREATED, "{}", probe.text);
        let resp = send(&ctx.app, "PATCH", &format!("/api/block_documents/{secret_id}"), Some(&writer),
                        Some(&json!({"block_schema_id": probe.body["id"], "data": {}})), &[]).await;
        assert_status(&resp, StatusCode::FORBIDDEN, "read-secrets");
        assert!(resp.text.contains("block_schema_id"), "{}", resp.text);
        // A mismatching pattern answers the same: nothing depends on the value.
        let (mut other, _) = prefect_schema("Secret");
        other["properties"]["value"] = json!({"type": "string", "pattern": "^nope", "writeOnly": true, "format": "password"});
        let body = json!({"fields": other, "block_type_id": secret_type.id, "capabilities": [], "version": "probe-2"});
        let other = post(&ctx.app, "/api/block_schemas/", &writer, &body).await;
        let again = send(&ctx.app, "PATCH", &format!("/api/block_documents/{secret_id}"), Some(&writer),
                         Some(&json!({"block_schema_id": other.body["id"], "data": {}})), &[]).await;
        assert_eq!((again.status, again.text.clone()), (resp.status, resp.text.clone()));
    })
    .await;
}

#[tokio::test]
async fn a_write_token_cannot_change_a_protected_type() {
    on_both(async |db| {
        let ctx = setup(db, lenient()).await;
        let (writer, _) = token(&ctx.state.store, &[Scope::Write]).await;
        let secret = get(&ctx.app, "/api/block_types/slug/secret", &writer).await;
        let id = secret.body["id"].as_str().unwrap().to_owned();
        let change = json!({"description": "Paste it at https://evil.example", "documentation_url": "https://evil.example"});
        let resp = send(&ctx.app, "PATCH", &format!("/api/block_types/{id}"), Some(&writer), Some(&change), &[]).await;
        assert_eq!(resp.status, StatusCode::NO_CONTENT);
        let after = get(&ctx.app, "/api/block_types/slug/secret", &writer).await;
        assert_eq!(after.body["description"], secret.body["description"]);
        assert_eq!(after.body["documentation_url"], secret.body["documentation_url"]);
        let resp = send(&ctx.app, "PATCH", &format!("/api/block_types/{id}"), Some(&ctx.admin), Some(&change), &[]).await;
        assert_eq!(resp.status, StatusCode::NO_CONTENT);
        let after = get(&ctx.app, "/api/block_types/slug/secret", &writer).await;
        assert_eq!(after.body["documentation_url"], "https://evil.example");
    })
    .await;
}

#[tokio::test]
async fn names_slugs_versions_and_patterns_are_bounded() {
    on_both(async |db| {
        let ctx = setup(db, lenient()).await;
        let (writer, _) = token(&ctx.state.store, &[Scope::Write]).await;
        // 3,000 bytes used to be a 500 on PostgreSQL (btree row size).
        for n in [256, 3000] {
            let long = "a".repeat(n);
            let resp = post(&ctx.app, "/api/block_types/", &writer,
                            &json!({"name": long, "slug": "ok-slug"})).await;
            assert_status(&resp, StatusCode::UNPROCESSABLE_ENTITY, "255 bytes");
            assert!(resp.text.contains("name"));
            let resp = post(&ctx.app, "/api/block_types/", &writer,
                            &json!({"name": "Fine", "slug": long})).await;
            assert_status(&resp, StatusCode::UNPROCESSABLE_ENTITY, "slug");
            let secret_type = ctx.state.store.read_block_type_by_slug("secret").await.unwrap();
            let resp = post(&ctx.app, "/api/block_schemas/", &writer,
                            &json!({"fields": {"properties": {}}, "block_type_id": secret_type.id, "version": long})).await;
            assert_status(&resp, StatusCode::UNPROCESSABLE_ENTITY, "version");
            let schema = builtin_schema::<Secret>(&ctx.state.store).await;
            let resp = post(&ctx.app, "/api/block_documents/", &writer,
                            &json!({"name": long, "block_schema_id": schema.id, "block_type_id": secret_type.id, "data": {"value": "x"}})).await;
            assert_status(&resp, StatusCode::UNPROCESSABLE_ENTITY, "name");
        }
        let pattern = "a_".repeat(150);
        for (uri, body) in [
            ("/api/block_types/filter", json!({"block_types": {"name": {"like_": pattern}}})),
            ("/api/block_documents/filter", json!({"block_documents": {"name": {"like_": pattern}}})),
            ("/api/block_documents/count", json!({"block_documents": {"name": {"like_": pattern}}})),
        ] {
            let resp = post(&ctx.app, uri, &writer, &body).await;
            assert_status(&resp, StatusCode::UNPROCESSABLE_ENTITY, "256 bytes");
            assert!(resp.text.contains("like_"), "{uri}: {}", resp.text);
        }
        // A NUL (which would end SQLite's FTS5 query text) is refused with the body.
        let resp = post(&ctx.app, "/api/block_documents/filter", &writer,
                        &json!({"block_documents": {"name": {"like_": "abc\u{0}def"}}})).await;
        assert_status(&resp, StatusCode::UNPROCESSABLE_ENTITY, "NUL");
        // 256 bytes are fine.
        let resp = post(&ctx.app, "/api/block_documents/filter", &writer,
                        &json!({"block_documents": {"name": {"like_": "a".repeat(256)}}})).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    })
    .await;
}

#[tokio::test]
async fn document_data_and_answers_are_bounded_in_bytes() {
    on_both(async |db| {
        let (ctx, writer, reader) = with_gcp(db).await;
        let store = &ctx.state.store;
        let gcp_schema = builtin_schema::<GcpCredentials>(store).await;
        let create = |name: String, project: String| {
            json!({"name": name, "block_schema_id": gcp_schema.id, "block_type_id": gcp_schema.block_type_id, "data": {"project": project}})
        };
        let resp = post(&ctx.app, "/api/block_documents/", &writer, &create("huge".into(), "x".repeat(600 * 1024))).await;
        assert_status(&resp, StatusCode::UNPROCESSABLE_ENTITY, "512 KiB");
        assert!(resp.text.contains("\"data\""), "{}", resp.text);
        // Merges cannot grow a document past the limit either.
        let resp = post(&ctx.app, "/api/block_documents/", &writer, &create("grows".into(), "x".repeat(300 * 1024))).await;
        let grows = resp.body["id"].as_str().unwrap().to_owned();
        let resp = send(&ctx.app, "PATCH", &format!("/api/block_documents/{grows}"), Some(&writer),
                        Some(&json!({"data": {"service_account_file": "y".repeat(300 * 1024)}})), &[]).await;
        assert_status(&resp, StatusCode::UNPROCESSABLE_ENTITY, "512 KiB");

        // Five children of 400 kB, each referenced by ten buckets: 20 MB expanded.
        let bucket_schema = builtin_schema::<GcsBucket>(store).await;
        for c in 0..5 {
            let resp = post(&ctx.app, "/api/block_documents/", &writer, &create(format!("child-{c}"), "x".repeat(400 * 1000))).await;
            let child = resp.body["id"].as_str().unwrap().parse().unwrap();
            for p in 0..10 {
                let body = json!({"name": format!("bucket-{c}-{p}"), "block_schema_id": bucket_schema.id, "block_type_id": bucket_schema.block_type_id,
                                  "data": {"bucket": "b", "gcp_credentials": reference_value(child)}});
                assert_eq!(post(&ctx.app, "/api/block_documents/", &writer, &body).await.status, StatusCode::CREATED);
            }
        }
        let all = json!({"block_types": {"slug": {"any_": ["gcs-bucket"]}}});
        let resp = post(&ctx.app, "/api/block_documents/filter", &reader, &all).await;
        assert_status(&resp, StatusCode::UNPROCESSABLE_ENTITY, "16 MiB");
        assert!(resp.text.contains("limit"), "{}", resp.text);
        let mut some = all.clone();
        some["limit"] = json!(10);
        let resp = post(&ctx.app, "/api/block_documents/filter", &reader, &some).await;
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.body.as_array().unwrap().len(), 10);
        // The type's listing is bounded the same way.
        let resp = get(&ctx.app, "/api/block_types/slug/gcs-bucket/block_documents", &reader).await;
        assert_status(&resp, StatusCode::UNPROCESSABLE_ENTITY, "16 MiB");
    })
    .await;
}

#[tokio::test]
async fn an_encoded_include_secrets_is_checked_like_the_plain_one_and_errors_never_echo_values() {
    on_both(async |db| {
        let ctx = setup(db, lenient()).await;
        let store = &ctx.state.store;
        let (reader, _) = token(store, &[Scope::Read]).await;
        let (secrets, _) = token(store, &[Scope::ReadSecrets]).await;
        let id = secret_doc(store, "api-token", CANARY).await;
        for key in ["include%5Fsecrets", "include_secret%73", "include_secrets"] {
            let uri = format!("/api/block_documents/{id}?{key}=true");
            let resp = get(&ctx.app, &uri, &reader).await;
            assert_status(&resp, StatusCode::FORBIDDEN, "read-secrets");
            let resp = get(&ctx.app, &uri, &secrets).await;
            assert_eq!(resp.body["data"]["value"], CANARY, "{key}");
        }

        // Values never come back in an error: enums, UUIDs, booleans.
        for (method, uri, body) in [
            ("POST", "/api/tokens", json!({"name": "t", "scopes": [CANARY]})),
            ("POST", "/api/block_documents/filter", json!({"sort": CANARY})),
            ("POST", "/api/block_documents/filter", json!({"block_documents": {"operator": CANARY}})),
            ("POST", "/api/block_documents/", json!({"name": "x", "block_schema_id": format!("{CANARY}"), "block_type_id": id, "data": {}})),
            ("POST", "/api/block_documents/filter", json!({"block_documents": {"id": {"any_": [format!("0000000{CANARY}")]}}})),
        ] {
            let resp = send(&ctx.app, method, uri, Some(&ctx.admin), Some(&body), &[]).await;
            assert_eq!(resp.status, StatusCode::UNPROCESSABLE_ENTITY, "{uri} {body}: {}", resp.text);
            assert!(!resp.text.contains(CANARY) && !resp.text.contains("canary"), "{uri}: {}", resp.text);
            assert!(!resp.text.contains("found `"), "{uri}: {}", resp.text);
        }
        let resp = get(&ctx.app, &format!("/api/block_documents/{id}?include_secrets={CANARY}"), &ctx.admin).await;
        assert_eq!(resp.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(!resp.text.contains(CANARY));

        // FastAPI's spellings of a boolean, any case; the parameter twice is refused rather
        // than read one way or the other.
        for (value, shown) in [("YES", true), ("on", true), ("1", true), ("Off", false), ("n", false)] {
            let resp = get(&ctx.app, &format!("/api/block_documents/{id}?include_secrets={value}"), &secrets).await;
            assert_eq!(resp.status, StatusCode::OK, "{value}: {}", resp.text);
            assert_eq!(resp.body["data"]["value"] == CANARY, shown, "{value}");
        }
        let resp = get(&ctx.app, &format!("/api/block_documents/{id}?include_secrets=false&include_secrets=true"), &secrets).await;
        assert_status(&resp, StatusCode::UNPROCESSABLE_ENTITY, "include_secrets");
        assert!(!resp.text.contains(CANARY));
    })
    .await;
}

#[tokio::test]
async fn answers_from_the_outer_layers_are_json_with_a_request_id() {
    use axum::body::Body;
    use tower::ServiceExt as _;
    on_both(async |db| {
        let ctx = setup(db, lenient()).await;
        // Over the body limit by its Content-Length: refused before anything is read.
        let request = axum::http::Request::post("/api/block_documents/filter")
            .header("authorization", format!("Bearer {}", ctx.admin))
            .header("content-type", "application/json")
            .header("content-length", "2000000")
            .body(Body::from("{}"))
            .unwrap();
        let response = ctx.app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(response.headers().contains_key("x-request-id"));
        let ct = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(ct.starts_with("application/json"), "{ct}");
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        assert!(serde_json::from_slice::<Value>(&body).unwrap()["detail"].is_string());

        // A body that never finishes: 408 after the request timeout, as JSON, with an id.
        let state = super::AppState::configured(
            ctx.state.store.clone(),
            lenient(),
            std::time::Duration::from_millis(300),
        );
        let app = super::app(state);
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(1);
        let stream = tokio_stream_of(rx);
        let request = axum::http::Request::post("/api/block_documents/filter")
            .header("authorization", format!("Bearer {}", ctx.admin))
            .header("content-type", "application/json")
            .header("x-request-id", "slow-client-1")
            .body(Body::from_stream(stream))
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(response.headers()["x-request-id"], "slow-client-1");
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        assert!(serde_json::from_slice::<Value>(&body).unwrap()["detail"].is_string());
    })
    .await;
}

/// A stream of the chunks sent on `rx` (none, while the sender is held).
fn tokio_stream_of(
    rx: tokio::sync::mpsc::Receiver<Result<axum::body::Bytes, std::io::Error>>,
) -> impl futures::Stream<Item = Result<axum::body::Bytes, std::io::Error>> {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}
