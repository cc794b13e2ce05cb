//! API tests on SQLite and PostgreSQL: Prefect's shapes and codes, and bad input answered
//! with the right 4xx, a body naming the field, and nothing stored changed.

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use block_types::catalog::Collection;
use serde_json::{Value, json};

use super::{AppState, app};
use crate::store::tests::harness::{TestDb, on_both};

const CANARY: &str = "canary-api-71b3e0";

/// The app as an admin token's holder sees it: every request carries that token unless it
/// sets its own `Authorization`.
async fn test_app(db: &TestDb) -> (Router, AppState) {
    let store = Arc::new(db.open().await);
    store.register_collection(Collection::Core).await.unwrap();
    let (token, _) = super::test_app::token(&store, &[crate::store::Scope::Admin]).await;
    let state = AppState::new(store);
    (with_token(app(state.clone()), token), state)
}

/// Adds `Authorization: Bearer <token>` to requests that have none.
pub(super) fn with_token(router: Router, token: String) -> Router {
    router.layer(axum::middleware::map_request(
        move |mut req: axum::extract::Request| {
            let token = token.clone();
            async move {
                if !req.headers().contains_key("authorization") {
                    req.headers_mut()
                        .insert("authorization", format!("Bearer {token}").parse().unwrap());
                }
                req
            }
        },
    ))
}

/// Sends a request as the app's admin (the token `test_app` adds); returns the status and
/// the JSON body (`null` when empty).
async fn call(app: &Router, method: &str, uri: &str, body: Option<&str>) -> (StatusCode, Value) {
    let json = [("content-type", "application/json")];
    let headers: &[(&str, &str)] = if body.is_none() { &json } else { &[] };
    let resp = super::test_app::send_raw(app, method, uri, None, body, headers).await;
    (resp.status, resp.body)
}

async fn json_call(app: &Router, method: &str, uri: &str, body: &Value) -> (StatusCode, Value) {
    call(app, method, uri, Some(&body.to_string())).await
}

/// `GET uri` as the app's admin with `X-Prefect-Api-Version: version`: the status and the
/// body as text.
async fn get_as_version(app: &Router, uri: &str, version: &str) -> (StatusCode, String) {
    let headers = [("x-prefect-api-version", version)];
    let resp = super::test_app::send_raw(app, "GET", uri, None, None, &headers).await;
    (resp.status, resp.text)
}

/// Sends `method uri` as `token` with `body` as JSON, asserts the answer's status (the
/// message names the request and carries the body) and returns the response. For the test
/// modules that build on `test_app`.
pub(super) async fn send_expecting<S>(
    app: &Router,
    method: &str,
    uri: &str,
    token: &str,
    body: Option<&Value>,
    status: S,
) -> super::test_app::Resp
where
    StatusCode: PartialEq<S>,
    S: std::fmt::Debug,
{
    let resp = super::test_app::send(app, method, uri, Some(token), body, &[]).await;
    assert_eq!(resp.status, status, "{method} {uri}: {}", resp.text);
    resp
}

/// The status `GET /api/hello` (open to any valid token) answers for `token`.
pub(super) async fn hello_status(app: &Router, token: &str) -> StatusCode {
    super::test_app::get(app, "/api/hello", token).await.status
}

/// A token with `scopes` limited by `grants` (`scope:slug/name`): (secret, id).
pub(super) async fn limited(
    store: &crate::store::Store,
    scopes: &[crate::store::Scope],
    grants: &[&str],
) -> (String, uuid::Uuid) {
    use secrecy::ExposeSecret as _;
    let created = store
        .create_token(crate::store::TokenCreate {
            name: "limited".into(),
            scopes: scopes.iter().copied().collect(),
            grants: grants
                .iter()
                .map(|g| crate::store::Grant::parse(g).unwrap())
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    (created.token.expose_secret().to_owned(), created.info.id)
}

/// `POST /api/block_documents/` with `body` as `token` (a create): the response, unchecked.
pub(super) async fn post_document(
    app: &Router,
    token: &str,
    body: &Value,
) -> super::test_app::Resp {
    super::test_app::send(
        app,
        "POST",
        "/api/block_documents/",
        Some(token),
        Some(body),
        &[],
    )
    .await
}

/// Registers a built-in type and schema through the API as Prefect's client does.
async fn register_via_api(app: &Router, spec: &block_types::BlockSpec) -> (String, String) {
    let (status, ty) = call(
        app,
        "GET",
        &format!("/api/block_types/slug/{}", spec.block_type.slug),
        None,
    )
    .await;
    let ty = if status == StatusCode::NOT_FOUND {
        let (status, ty) = json_call(
            app,
            "POST",
            "/api/block_types/",
            &serde_json::to_value(spec.block_type.to_create()).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{ty}");
        ty
    } else {
        ty
    };
    let type_id = ty["id"].as_str().unwrap().to_owned();
    let body = serde_json::to_value(spec.to_schema_create(type_id.parse().unwrap())).unwrap();
    let (status, schema) = json_call(app, "POST", "/api/block_schemas/", &body).await;
    assert!(
        status == StatusCode::CREATED || status == StatusCode::OK,
        "{status} {schema}"
    );
    (type_id, schema["id"].as_str().unwrap().to_owned())
}

async fn count_documents(app: &Router) -> i64 {
    let (status, n) = json_call(
        app,
        "POST",
        "/api/block_documents/count",
        &json!({"block_documents": {"is_anonymous": null}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    n.as_i64().unwrap()
}

#[tokio::test]
async fn root_endpoints_answer_as_prefect() {
    on_both(async |db| {
        let (app, _) = test_app(db).await;
        assert_eq!(
            call(&app, "GET", "/api/health", None).await,
            (StatusCode::OK, json!(true))
        );
        assert_eq!(
            call(&app, "GET", "/api/version", None).await,
            (StatusCode::OK, json!("0.8.4"))
        );
        let (status, version) = call(&app, "GET", "/api/admin/version", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(version.as_str().unwrap().starts_with("3."));
        assert_eq!(
            call(&app, "GET", "/api/ready", None).await,
            (StatusCode::OK, json!({"message": "OK"}))
        );
        let (status, body) = call(&app, "GET", "/api/csrf-token?client=abc", None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("CSRF protection is disabled.")
        );

        let (status, _) = get_as_version(&app, "/api/hello", "abc").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, text) = get_as_version(&app, "/api/block_types/slug/secret", "0.7.0").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(text.contains("requires version 0.8.0 or higher"), "{text}");
        // Health is outside the version check.
        let (status, _) = get_as_version(&app, "/api/health", "abc").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            call(&app, "GET", "/api/nowhere", None).await.0,
            StatusCode::NOT_FOUND
        );
    })
    .await;
}

#[tokio::test]
async fn the_prefect_block_flow_over_http() {
    on_both(async |db| {
        let (app, _) = test_app(db).await;
        // Core types are registered at start; protected ones cannot be deleted.
        let (_, types) = json_call(&app, "POST", "/api/block_types/filter", &json!({})).await;
        let slugs: Vec<&str> = types.as_array().unwrap().iter().map(|t| t["slug"].as_str().unwrap()).collect();
        assert_eq!(slugs, ["date-time", "json", "local-file-system", "secret", "string", "webhook"], "ordered by name");
        let (_, secret_type) = call(&app, "GET", "/api/block_types/slug/secret", None).await;
        assert_eq!(secret_type["is_protected"], json!(true));
        let (status, body) = call(&app, "DELETE", &format!("/api/block_types/{}", secret_type["id"].as_str().unwrap()), None).await;
        assert_eq!((status, body), (StatusCode::FORBIDDEN, json!({"detail": "protected block types cannot be deleted."})));

        for spec in Collection::Gcp.specs() {
            register_via_api(&app, &spec).await;
        }
        let creds_spec = block_types::catalog::spec_for_slug("gcp-credentials").unwrap();
        // Registering a known schema again answers 200 with the same schema.
        let (creds_type, creds_schema) = register_via_api(&app, &creds_spec).await;
        let (status, by_checksum) = call(&app, "GET", &format!("/api/block_schemas/checksum/{}?version={}", creds_spec.checksum(), creds_spec.version), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(by_checksum["id"], json!(creds_schema));
        assert_eq!(by_checksum["block_type"]["slug"], json!("gcp-credentials"));

        let body = json!({"name": "zoom-gcp-creds", "block_type_id": creds_type, "block_schema_id": creds_schema, "data": {"service_account_info": {"private_key": CANARY}, "project": "dtc"}});
        let (status, creds) = json_call(&app, "POST", "/api/block_documents/", &body).await;
        assert_eq!(status, StatusCode::CREATED, "{creds}");
        assert_eq!(creds["data"]["service_account_info"]["private_key"], json!("********"));
        assert!(creds["block_schema"]["block_type"]["slug"].is_string(), "the Python client needs block_schema.block_type");

        let bucket_spec = block_types::catalog::spec_for_slug("gcs-bucket").unwrap();
        let (bucket_type, bucket_schema) = register_via_api(&app, &bucket_spec).await;
        let body = json!({"name": "zoom-gcs", "block_type_id": bucket_type, "block_schema_id": bucket_schema,
            "data": {"bucket": "dtc-lake", "bucket_folder": "", "gcp_credentials": {"$ref": {"block_document_id": creds["id"]}}}});
        let (status, bucket) = json_call(&app, "POST", "/api/block_documents", &body).await;
        assert_eq!(status, StatusCode::CREATED, "{bucket}");

        let (status, loaded) = call(&app, "GET", "/api/block_types/slug/gcs-bucket/block_documents/name/zoom-gcs?include_secrets=true", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(loaded["data"]["gcp_credentials"]["service_account_info"]["private_key"], json!(CANARY));
        assert_eq!(loaded["block_document_references"]["gcp_credentials"]["block_document"]["id"], creds["id"]);
        let (_, masked) = call(&app, "GET", &format!("/api/block_documents/{}", bucket["id"].as_str().unwrap()), None).await;
        assert!(!masked.to_string().contains(CANARY));

        // PATCH echoing the masked value keeps the secret.
        let creds_id = creds["id"].as_str().unwrap();
        let (_, current) = call(&app, "GET", &format!("/api/block_documents/{creds_id}"), None).await;
        let mut data = current["data"].clone();
        data["project"] = json!("dtc-2");
        let (status, _) = json_call(&app, "PATCH", &format!("/api/block_documents/{creds_id}"), &json!({"data": data})).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (_, after) = call(&app, "GET", &format!("/api/block_documents/{creds_id}?include_secrets=true"), None).await;
        assert_eq!(after["data"]["service_account_info"]["private_key"], json!(CANARY));
        assert_eq!(after["data"]["project"], json!("dtc-2"));

        // Listing as `prefect block ls` does, and counting.
        let (status, listed) = json_call(&app, "POST", "/api/block_documents/filter", &json!({"block_schema_type": null, "offset": null, "limit": null, "include_secrets": true})).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(listed.as_array().unwrap().len(), 2);
        let (_, by_type) = call(&app, "GET", "/api/block_types/slug/gcp-credentials/block_documents", None).await;
        assert_eq!(by_type.as_array().unwrap().len(), 1);
        let (_, caps) = call(&app, "GET", "/api/block_capabilities/", None).await;
        assert!(caps.as_array().unwrap().contains(&json!("read-path")));

        // Deleting the referenced credentials is refused and names the bucket; top-down works.
        let (status, body) = call(&app, "DELETE", &format!("/api/block_documents/{creds_id}"), None).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(body["detail"].as_str().unwrap().contains("gcs-bucket/zoom-gcs"), "{body}");
        assert_eq!(call(&app, "DELETE", &format!("/api/block_documents/{}", bucket["id"].as_str().unwrap()), None).await.0, StatusCode::NO_CONTENT);
        assert_eq!(call(&app, "DELETE", &format!("/api/block_documents/{creds_id}"), None).await.0, StatusCode::NO_CONTENT);
        assert_eq!(call(&app, "GET", &format!("/api/block_documents/{creds_id}"), None).await, (StatusCode::NOT_FOUND, json!({"detail": "Block document not found"})));
    })
    .await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    on_both(async |db| {
        let (app, _) = test_app(db).await;
        let spec = block_types::catalog::spec_for_slug("sqlalchemy-connector").unwrap();
        let (type_id, schema_id) = register_via_api(&app, &spec).await;
        let good = json!({"name": "pg", "block_type_id": type_id, "block_schema_id": schema_id,
            "data": {"connection_info": {"driver": "postgresql+psycopg2", "password": CANARY}}});
        let (status, doc) = json_call(&app, "POST", "/api/block_documents/", &good).await;
        assert_eq!(status, StatusCode::CREATED);
        let doc_id = doc["id"].as_str().unwrap().to_owned();
        let no_password = json!({"name": "no-pw", "block_type_id": type_id, "block_schema_id": schema_id,
            "data": {"connection_info": {"driver": "postgresql+psycopg2", "password": null}}});
        let (status, no_pw) = json_call(&app, "POST", "/api/block_documents/", &no_password).await;
        assert_eq!(status, StatusCode::CREATED);
        let no_pw_id = no_pw["id"].as_str().unwrap().to_owned();
        let before = count_documents(&app).await;
        let (_, stored_before) = call(&app, "GET", &format!("/api/block_documents/{doc_id}?include_secrets=true"), None).await;

        let with = |patch: Value| {
            let mut body = good.clone();
            for (k, v) in patch.as_object().unwrap() {
                body[k] = v.clone();
            }
            body
        };
        type Case = (&'static str, &'static str, String, Option<String>, StatusCode, &'static str);
        let cases: Vec<Case> = vec![
            ("malformed json", "POST", "/api/block_documents/".into(), Some(format!("{{\"name\": \"x\", \"data\": {{\"p\": \"{CANARY}\"")), StatusCode::UNPROCESSABLE_ENTITY, "not valid JSON"),
            ("wrong type", "POST", "/api/block_documents/".into(), Some(with(json!({"is_anonymous": "maybe"})).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "is_anonymous"),
            ("unknown field", "POST", "/api/block_documents/".into(), Some(with(json!({"name": "other", "colour": "red"})).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "colour"),
            ("banned name", "POST", "/api/block_documents/".into(), Some(with(json!({"name": "Bad/Name"})).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "lowercase letters, numbers, and dashes"),
            ("missing name", "POST", "/api/block_documents/".into(), Some(with(json!({"name": null})).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "Names must be provided"),
            ("data fails schema", "POST", "/api/block_documents/".into(), Some(with(json!({"name": "bad-data", "data": {"connection_info": {"driver": "x", "password": CANARY}, "fetch_size": "lots"}})).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "data.fetch_size"),
            ("missing reference", "POST", "/api/block_documents/".into(), Some(with(json!({"name": "dangling", "data": {"connection_info": "sqlite:///x.db", "child": {"$ref": {"block_document_id": uuid::Uuid::new_v4()}}}})).to_string()), StatusCode::BAD_REQUEST, "data.child"),
            ("reference without id", "POST", "/api/block_documents/".into(), Some(with(json!({"name": "dangling", "data": {"connection_info": "sqlite:///x.db", "child": {"$ref": {}}}})).to_string()), StatusCode::BAD_REQUEST, "without a block_document_id in key child"),
            ("self cycle", "PATCH", format!("/api/block_documents/{doc_id}"), Some(json!({"data": {"me": {"$ref": {"block_document_id": doc_id}}}}).to_string()), StatusCode::BAD_REQUEST, "cycle"),
            ("patch unknown field", "PATCH", format!("/api/block_documents/{doc_id}"), Some(json!({"name": "renamed"}).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "name"),
            ("patch null data", "PATCH", format!("/api/block_documents/{doc_id}"), Some(json!({"data": null, "merge_existing_data": false}).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "data"),
            ("echo over nothing", "PATCH", format!("/api/block_documents/{no_pw_id}"), Some(json!({"data": {"connection_info": {"driver": "x", "password": "********"}}}).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "send the real value"),
            ("double-encoded data", "POST", "/api/block_documents/".into(), Some(with(json!({"name": "enc", "data": format!("{{\"password\": \"{CANARY}\"}}")})).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "invalid type"),
            ("nul character", "POST", "/api/block_types/".into(), Some(r#"{"name": "A\u0000B", "slug": "nul"}"#.to_owned()), StatusCode::UNPROCESSABLE_ENTITY, "NUL"),
            ("long filter list", "POST", "/api/block_documents/filter".into(), Some(json!({"block_documents": {"name": {"any_": (0..1001).map(|i| format!("n{i}")).collect::<Vec<_>>()}}}).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "at most 1000"),
            ("non-uuid id", "GET", "/api/block_documents/not-a-uuid".into(), None, StatusCode::NOT_FOUND, "not a valid UUID"),
            ("non-uuid delete", "DELETE", "/api/block_documents/123".into(), None, StatusCode::NOT_FOUND, "not a valid UUID"),
            ("unknown document", "GET", format!("/api/block_documents/{}", uuid::Uuid::new_v4()), None, StatusCode::NOT_FOUND, "Block document not found"),
            ("limit too large", "POST", "/api/block_documents/filter".into(), Some(json!({"limit": 500}).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "Invalid limit"),
            ("bad sort", "POST", "/api/block_documents/filter".into(), Some(json!({"sort": "SIDEWAYS"}).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "sort"),
            ("filter unknown sub-key", "POST", "/api/block_documents/filter".into(), Some(json!({"block_documents": {"colour": {}}}).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "colour"),
            ("reserved type name", "POST", "/api/block_types/".into(), Some(json!({"name": "PrefectThing", "slug": "prefect-thing"}).to_string()), StatusCode::FORBIDDEN, "reserved"),
            ("bad slug", "POST", "/api/block_types/".into(), Some(json!({"name": "Thing", "slug": "Thing Slug"}).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "slug"),
            ("bad url", "POST", "/api/block_types/".into(), Some(json!({"name": "Thing", "slug": "thing", "logo_url": "not a url"}).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "logo_url"),
            ("duplicate type", "POST", "/api/block_types/".into(), Some(json!({"name": "Secret", "slug": "secret"}).to_string()), StatusCode::CONFLICT, "already exists"),
            ("duplicate document", "POST", "/api/block_documents/".into(), Some(good.to_string()), StatusCode::CONFLICT, "Block already exists"),
            ("schema for unknown type", "POST", "/api/block_schemas/".into(), Some(json!({"block_type_id": uuid::Uuid::new_v4(), "fields": {}}).to_string()), StatusCode::NOT_FOUND, "not found"),
            ("schema with checksum", "POST", "/api/block_schemas/".into(), Some(json!({"block_type_id": type_id, "fields": {}, "checksum": "sha256:0"}).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "checksum"),
            ("invalid json schema", "POST", "/api/block_schemas/".into(), Some(json!({"block_type_id": type_id, "fields": {"type": "nonsense"}}).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "fields"),
        ];
        for (name, method, uri, body, want, mention) in cases {
            let (status, response) = call(&app, method, &uri, body.as_deref()).await;
            assert_eq!(status, want, "{name}: {response}");
            let text = response.to_string();
            assert!(text.contains(mention), "{name}: the body should mention {mention:?}: {text}");
            assert!(!text.contains(CANARY), "{name}: the body leaks the secret: {text}");
            assert!(response.is_object(), "{name}: a JSON object body");
        }
        // Oversized body: 413 with a JSON body.
        let huge = format!("{{\"name\": \"big\", \"data\": {{\"x\": \"{}\"}}}}", "a".repeat(super::MAX_BODY_BYTES + 10));
        let (status, body) = call(&app, "POST", "/api/block_documents/", Some(&huge)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert!(body["detail"].is_string(), "a JSON body even from the limit layer: {body}");
        // Unknown top-level keys of filter bodies are ignored, as Prefect does.
        assert_eq!(json_call(&app, "POST", "/api/block_documents/filter", &json!({"foo": 1})).await.0, StatusCode::OK);
        assert_eq!(call(&app, "POST", "/api/block_types/filter", None).await.0, StatusCode::OK, "an empty body is {{}}");

        assert_eq!(count_documents(&app).await, before, "nothing was added");
        let (_, stored_after) = call(&app, "GET", &format!("/api/block_documents/{doc_id}?include_secrets=true"), None).await;
        assert_eq!(stored_after["data"], stored_before["data"], "nothing stored changed");
        assert_eq!(stored_after["updated"], stored_before["updated"]);
    })
    .await;
}
