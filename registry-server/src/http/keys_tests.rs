//! Key rotation over the API while reads and writes go on, on SQLite and PostgreSQL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AuthGuard;
use crate::store::tests::harness::on_both;

use super::test_app::*;

/// The key entry with `id` from a `GET /api/keys` body.
fn key_entry(status: &Value, id: &Value) -> Value {
    status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| &k["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("key {id} in {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_reencrypts_while_reads_and_writes_go_on() {
    const TASKS: usize = 8;
    const REQUESTS: usize = 25;
    const DOCS: usize = 60;
    on_both(async |db| {
        let ctx = setup(db, AuthGuard::default()).await;
        let store = &ctx.state.store;
        let admin = ctx.admin.clone();
        let mut docs = Vec::new();
        for i in 0..DOCS {
            let value = format!("original-{i}");
            docs.push((secret_doc(store, &format!("doc-{i}"), &value).await, value));
        }
        // A second version of each, so there is more to re-encrypt.
        for (i, (id, value)) in docs.iter_mut().enumerate() {
            *value = format!("second-{i}");
            let resp = send(
                &ctx.app,
                "PATCH",
                &format!("/api/block_documents/{id}"),
                Some(&admin),
                Some(&json!({"data": {"value": value.clone()}})),
                &[],
            )
            .await;
            assert_eq!(resp.status, StatusCode::NO_CONTENT, "{}", resp.text);
        }

        let keys = get(&ctx.app, "/api/keys", &admin).await;
        assert_eq!(keys.status, StatusCode::OK, "{}", keys.text);
        let old = keys.body["active"].clone();
        let old_entry = key_entry(&keys.body, &old);
        assert_eq!(old_entry["state"], json!("active"));
        assert_eq!(old_entry["documents"], json!(DOCS));

        let rotated = send(
            &ctx.app,
            "POST",
            "/api/keys/rotate",
            Some(&admin),
            None,
            &[],
        )
        .await;
        assert_eq!(rotated.status, StatusCode::ACCEPTED, "{}", rotated.text);
        let new = rotated.body["active"].clone();
        assert!(new.is_string() && new != old, "{}", rotated.text);
        let during = get(&ctx.app, "/api/keys", &admin).await;
        assert!(
            key_entry(&during.body, &old)["versions"].as_i64().unwrap() > 0,
            "the burst should start while re-encryption runs: {}",
            during.text
        );

        let docs = Arc::new(docs);
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let app = ctx.app.clone();
            let admin = admin.clone();
            let docs = docs.clone();
            tasks.push(tokio::spawn(async move {
                let mut errors = Vec::new();
                let (own, _) = docs[t];
                let mut own_value = docs[t].1.clone();
                for i in 0..REQUESTS {
                    match i % 3 {
                        0 => {
                            own_value = format!("task-{t}-write-{i}");
                            let resp = send(
                                &app,
                                "PATCH",
                                &format!("/api/block_documents/{own}"),
                                Some(&admin),
                                Some(&json!({"data": {"value": own_value.clone()}})),
                                &[],
                            )
                            .await;
                            if resp.status != StatusCode::NO_CONTENT {
                                errors.push(format!("PATCH {own}: {} {}", resp.status, resp.text));
                            }
                        }
                        1 => {
                            let resp = get(
                                &app,
                                &format!("/api/block_documents/{own}?include_secrets=true"),
                                &admin,
                            )
                            .await;
                            if resp.status != StatusCode::OK
                                || resp.body["data"]["value"] != json!(own_value)
                            {
                                errors.push(format!(
                                    "read own {own}: {} {} (want {own_value})",
                                    resp.status, resp.text
                                ));
                            }
                        }
                        _ => {
                            let (other, value) =
                                &docs[TASKS + (t * REQUESTS + i) % (docs.len() - TASKS)];
                            let resp = get(
                                &app,
                                &format!("/api/block_documents/{other}?include_secrets=true"),
                                &admin,
                            )
                            .await;
                            if resp.status != StatusCode::OK
                                || resp.body["data"]["value"] != json!(value)
                            {
                                errors.push(format!(
                                    "read {other}: {} {} (want {value})",
                                    resp.status, resp.text
                                ));
                            }
                        }
                    }
                }
                (own, own_value, errors)
            }));
        }
        let mut finals = Vec::new();
        let mut errors = Vec::new();
        for task in tasks {
            let (own, value, errs) = task.await.unwrap();
            finals.push((own, value));
            errors.extend(errs);
        }
        assert!(
            errors.is_empty(),
            "{} failed requests during re-encryption:\n{}",
            errors.len(),
            errors.join("\n")
        );

        let deadline = Instant::now() + Duration::from_secs(10);
        let last = loop {
            let status = get(&ctx.app, "/api/keys", &admin).await.body;
            let entry = key_entry(&status, &old);
            if entry["documents"] == json!(0) && entry["versions"] == json!(0) {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the old key still seals data after 10 s: {status}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(last["active"], new);
        assert_eq!(key_entry(&last, &new)["documents"], json!(DOCS));
        for (id, value) in finals.iter().chain(docs[TASKS..].iter()) {
            let resp = get(
                &ctx.app,
                &format!("/api/block_documents/{id}?include_secrets=true"),
                &admin,
            )
            .await;
            assert_eq!(
                resp.body["data"]["value"],
                json!(value),
                "{id} after re-encryption"
            );
        }
    })
    .await;
}
