//! The OpenAPI document lists exactly the routes the router serves.

use std::collections::BTreeSet;

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::routes::Access;
use super::{AuthGuard, all_routes};
use crate::store::Scope;
use crate::store::tests::harness::on_both;

use super::test_app::*;

/// Every `"$ref"` string in `value`.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref"
                    && let Value::String(s) = v
                {
                    out.push(s.clone());
                }
                refs(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn openapi_lists_exactly_the_served_routes() {
    on_both(async |db| {
        let ctx = setup(db, AuthGuard::default()).await;
        let (read, _) = token(&ctx.state.store, &[Scope::Read]).await;
        assert_unauthorized(
            &send(&ctx.app, "GET", "/api/openapi.json", None, None, &[]).await,
            "openapi without a token",
        );
        let resp = get(&ctx.app, "/api/openapi.json", &read).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
        let doc = &resp.body;
        let paths = doc["paths"].as_object().expect("paths");
        let mut documented = BTreeSet::new();
        for (path, ops) in paths {
            for method in ops.as_object().expect("operations").keys() {
                documented.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
        let routes = all_routes();
        let served: BTreeSet<(String, String)> = routes
            .iter()
            .map(|r| (r.method.as_str().to_owned(), r.path.to_owned()))
            .collect();
        assert_eq!(documented, served);
        assert_eq!(served.len(), routes.len(), "no route is listed twice");

        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        for route in &routes {
            let op = &doc["paths"][route.path][route.method.as_str().to_ascii_lowercase()];
            let what = format!("{} {}", route.method, route.path);
            if let Access::Token(scope) = route.meta.access {
                let security = op["security"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{what}: security"));
                assert!(!security.is_empty(), "{what}: a security requirement");
                assert_eq!(security[0]["bearer"], json!([scope.as_str()]), "{what}");
            }
            if route.doc.request.is_some() {
                assert!(
                    op["requestBody"]["content"]["application/json"]["schema"].is_object(),
                    "{what}: requestBody"
                );
            } else {
                assert!(op.get("requestBody").is_none(), "{what}: no requestBody");
            }
            for param in route
                .path
                .split('/')
                .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            {
                let listed = op["parameters"].as_array().is_some_and(|ps| {
                    ps.iter()
                        .any(|p| p["name"] == json!(param) && p["in"] == json!("path"))
                });
                assert!(listed, "{what}: path parameter {param}");
            }
        }
        let mut operation_ids = BTreeSet::new();
        for ops in paths.values() {
            for op in ops.as_object().unwrap().values() {
                let id = op["operationId"]
                    .as_str()
                    .expect("an operationId")
                    .to_owned();
                assert!(
                    operation_ids.insert(id.clone()),
                    "operationId {id} is not unique"
                );
            }
        }
        let mut all_refs = Vec::new();
        refs(doc, &mut all_refs);
        assert!(!all_refs.is_empty());
        for r in &all_refs {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{r}: a local schema reference"));
            assert!(schemas.contains_key(name), "{r} does not resolve");
        }
    })
    .await;
}
