//! Grants over the HTTP API, on SQLite and PostgreSQL: each block route with the grant and
//! without it, the nested load whose child is not granted, lists and counts that hide what
//! is not granted, the by-name 404, laundering writes, types and schemas, the token routes
//! (create, PATCH, child) and the audit of refusals. A canary secret never leaves in a
//! refusal.

use axum::Router;
use block_types::catalog::{GcpCredentials, GcsBucket, Secret};
use block_types::references::reference_value;
use serde_json::{Value, json};
use uuid::Uuid;

use super::test_app::{Ctx, Resp, all_audit, get, lenient, send, setup};
use super::tests::{limited, post_document, send_expecting};
use crate::store::Scope;
use crate::store::tests::harness::{create, on_both, register};

const CANARY: &str = "canary-grants-71d3e0b2";

/// The course's two blocks and another team's pair, plus a secret.
struct World {
    ctx: Ctx,
    zoom_creds: Uuid,
    zoom_gcs: Uuid,
    other_creds: Uuid,
    other_gcs: Uuid,
    bucket_schema: Uuid,
    bucket_type: Uuid,
    creds_schema: Uuid,
    creds_type: Uuid,
}

async fn world(db: &crate::store::tests::harness::TestDb) -> World {
    let ctx = setup(db, lenient()).await;
    let store = &ctx.state.store;
    let (creds_ty, creds) = register::<GcpCredentials>(store).await;
    let (bucket_ty, bucket) = register::<GcsBucket>(store).await;
    let (_, secret) = register::<Secret>(store).await;
    let key = |p: &str| json!({"service_account_info": {"private_key": CANARY}, "project": p});
    let zoom_creds = create(store, &creds, "zoom-gcp-creds", key("zoom")).await;
    let other_creds = create(store, &creds, "other-gcp-creds", key("other")).await;
    let zoom_gcs = create(
        store,
        &bucket,
        "zoom-gcs",
        bucket_data("zoom", zoom_creds.id),
    )
    .await;
    let other_gcs = create(
        store,
        &bucket,
        "other-gcs",
        bucket_data("other", other_creds.id),
    )
    .await;
    create(store, &secret, "prod-password", json!({"value": CANARY})).await;
    World {
        ctx,
        zoom_creds: zoom_creds.id,
        zoom_gcs: zoom_gcs.id,
        other_creds: other_creds.id,
        other_gcs: other_gcs.id,
        bucket_schema: bucket.id,
        bucket_type: bucket_ty.id,
        creds_schema: creds.id,
        creds_type: creds_ty.id,
    }
}

const ZOOM_GCS: &str = "/api/block_types/slug/gcs-bucket/block_documents/name/zoom-gcs";
const OTHER_GCS: &str = "/api/block_types/slug/gcs-bucket/block_documents/name/other-gcs";

#[track_caller]
fn no_canary(r: &Resp) {
    assert!(
        !r.text.contains(CANARY),
        "a refusal carried the secret: {}",
        r.text
    );
}

/// Asserts the refusal's detail names each of `names`, and that it carries no secret.
#[track_caller]
fn names_in_refusal(r: &Resp, names: &[&str]) {
    for name in names {
        assert!(r.detail().contains(name), "{name:?} in {}", r.text);
    }
    no_canary(r);
}

/// `GET uri` as `token`, asserting the status (see [`send_expecting`]).
async fn get_expecting(app: &Router, uri: &str, token: &str, status: u16) -> Resp {
    send_expecting(app, "GET", uri, token, None, status).await
}

/// The id in a created document's or token's answer.
#[track_caller]
fn id_of(r: &Resp) -> Uuid {
    r.body["id"].as_str().unwrap().parse().unwrap()
}

fn names(r: &Resp) -> Vec<String> {
    let mut names: Vec<String> = r
        .body
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {}", r.text))
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// A `gcs-bucket` document's data: `bucket`, no folder, the credentials `creds`.
fn bucket_data(bucket: &str, creds: Uuid) -> Value {
    json!({"bucket": bucket, "bucket_folder": "", "gcp_credentials": reference_value(creds)})
}

/// A body creating the `gcs-bucket` document `name` holding [`bucket_data`].
fn bucket_doc(w: &World, name: &str, bucket: &str, creds: Uuid) -> Value {
    json!({
        "name": name,
        "block_schema_id": w.bucket_schema,
        "block_type_id": w.bucket_type,
        "data": bucket_data(bucket, creds),
    })
}

/// A body creating an anonymous `gcp-credentials` document with `private_key` in `project`.
fn anonymous_creds(w: &World, private_key: &str, project: &str) -> Value {
    json!({
        "is_anonymous": true,
        "block_schema_id": w.creds_schema,
        "block_type_id": w.creds_type,
        "data": {"service_account_info": {"private_key": private_key}, "project": project},
    })
}

impl World {
    /// A token of `scopes` limited by `grants` (see [`limited`]).
    async fn limited(&self, scopes: &[Scope], grants: &[&str]) -> (String, Uuid) {
        limited(&self.ctx.state.store, scopes, grants).await
    }

    /// The `gcs-bucket` schema's URI.
    fn bucket_schema_uri(&self) -> String {
        format!("/api/block_schemas/{}", self.bucket_schema)
    }
}

/// The count of documents `token` sees (`POST /api/block_documents/count`, no filter).
async fn count(app: &Router, token: &str) -> Value {
    let all = json!({});
    send(
        app,
        "POST",
        "/api/block_documents/count",
        Some(token),
        Some(&all),
        &[],
    )
    .await
    .body
}

#[tokio::test]
async fn a_nested_load_needs_the_grant_on_every_document_of_the_tree() {
    on_both(async |db| {
        let w = world(db).await;
        let app = &w.ctx.app;
        let with_secrets = format!("{ZOOM_GCS}?include_secrets=true");
        let private_key = |r: &Resp| {
            r.body["data"]["gcp_credentials"]["service_account_info"]["private_key"].clone()
        };
        let (etl, _) = w
            .limited(
                &[Scope::ReadSecrets],
                &[
                    "read-secrets:gcs-bucket/zoom-gcs",
                    "read-secrets:gcp-credentials/zoom-gcp-creds",
                ],
            )
            .await;
        let r = get_expecting(app, &with_secrets, &etl, 200).await;
        assert_eq!(private_key(&r), CANARY);

        // The bucket alone: the nested credentials are refused by name.
        let (half, half_id) = w
            .limited(&[Scope::ReadSecrets], &["read-secrets:gcs-bucket/zoom-gcs"])
            .await;
        for uri in [
            with_secrets.clone(),
            ZOOM_GCS.to_owned(),
            format!("/api/block_documents/{}?include_secrets=true", w.zoom_gcs),
        ] {
            let r = get_expecting(app, &uri, &half, 403).await;
            names_in_refusal(&r, &["gcp-credentials/zoom-gcp-creds", "scope"]);
        }
        // Read alone on both: masked reads work, secrets are a 403 naming the scope.
        let grants = ["read:gcs-bucket/zoom-gcs", "read:gcp-credentials/*"];
        let (reader, _) = w.limited(&[Scope::ReadSecrets], &grants).await;
        let r = get_expecting(app, ZOOM_GCS, &reader, 200).await;
        assert_eq!(private_key(&r), "********");
        let r = get_expecting(app, &with_secrets, &reader, 403).await;
        names_in_refusal(&r, &["read-secrets", "gcs-bucket/zoom-gcs"]);

        // The refusals are audited as denied under the token.
        let records = all_audit(&w.ctx.state.store).await;
        assert!(
            records
                .iter()
                .any(|r| r.token_id == Some(half_id) && r.outcome == "denied" && r.status == 403),
            "no denied record for the refused load"
        );
        assert!(records.iter().all(|r| !r.target.contains(CANARY)));
    })
    .await;
}

#[tokio::test]
async fn what_a_token_may_not_see_is_a_404_and_absent_from_lists_and_counts() {
    on_both(async |db| {
        let w = world(db).await;
        let app = &w.ctx.app;
        let grants = [
            "read-secrets:gcs-bucket/zoom-*",
            "read-secrets:gcp-credentials/zoom-*",
        ];
        let (etl, _) = w.limited(&[Scope::ReadSecrets], &grants).await;
        // By name and by id: the same 404 as a block that does not exist.
        let nope = "/api/block_types/slug/gcs-bucket/block_documents/name/nope";
        let missing = get_expecting(app, nope, &etl, 404).await;
        for uri in [
            OTHER_GCS.to_owned(),
            format!("{OTHER_GCS}?include_secrets=true"),
            format!("/api/block_documents/{}", w.other_gcs),
            format!("/api/block_documents/{}", w.other_creds),
            format!("/api/block_documents/{}/versions", w.other_gcs),
            format!("/api/block_documents/{}/versions/1", w.other_gcs),
        ] {
            let r = get_expecting(app, &uri, &etl, 404).await;
            assert_eq!(r.detail(), missing.detail(), "{uri}");
            no_canary(&r);
        }
        let random = format!("/api/block_documents/{}", Uuid::new_v4());
        let random = get(app, &random, &etl).await;
        assert_eq!(random.detail(), missing.detail());

        // Lists and counts hold what is granted only.
        for filter in [json!({}), json!({"include_secrets": true})] {
            let uri = "/api/block_documents/filter";
            let r = send(app, "POST", uri, Some(&etl), Some(&filter), &[]).await;
            assert_eq!(names(&r), ["zoom-gcp-creds", "zoom-gcs"], "{filter}");
        }
        assert_eq!(count(app, &etl).await, json!(2));
        let buckets = "/api/block_types/slug/gcs-bucket/block_documents";
        assert_eq!(names(&get(app, buckets, &etl).await), ["zoom-gcs"]);
        let r = get(app, "/api/block_types/slug/secret/block_documents", &etl).await;
        assert_eq!(names(&r), Vec::<String>::new());
        // The admin sees everything.
        assert_eq!(count(app, &w.ctx.admin).await, json!(5));

        // A list whose tree holds a block the token cannot read is refused, naming it.
        let (half, _) = w.limited(&[Scope::Read], &["read:gcs-bucket/*"]).await;
        let r = get_expecting(app, buckets, &half, 403).await;
        names_in_refusal(&r, &["gcp-credentials/"]);

        // The metrics count the whole store: not for a limited token.
        get_expecting(app, "/metrics", &half, 403).await;
        get_expecting(app, "/metrics", &w.ctx.admin, 200).await;

        // Types and schemas stay readable to a limited token.
        for uri in ["/api/block_types/slug/secret", &w.bucket_schema_uri()] {
            get_expecting(app, uri, &half, 200).await;
        }
    })
    .await;
}

#[tokio::test]
async fn writes_need_the_grant_and_cannot_launder_a_block_from_outside_it() {
    on_both(async |db| {
        let w = world(db).await;
        let app = &w.ctx.app;
        let grants = ["write:gcs-bucket/zoom-*", "write:gcp-credentials/zoom-*"];
        let (writer, _) = w.limited(&[Scope::Write], &grants).await;
        let create_as = async |token: &str, body: &Value, status: u16| {
            let documents = "/api/block_documents/";
            send_expecting(app, "POST", documents, token, Some(body), status).await
        };
        // Inside the grants: fine.
        create_as(&writer, &bucket_doc(&w, "zoom-new", "b", w.zoom_creds), 201).await;
        // A name outside them: 403 naming the block.
        let r = create_as(&writer, &bucket_doc(&w, "prod-gcs", "b", w.zoom_creds), 403).await;
        names_in_refusal(&r, &["write", "gcs-bucket/prod-gcs"]);
        // Referencing a block the token cannot read: as if it did not exist.
        let launder = bucket_doc(&w, "zoom-launder", "b", w.other_creds);
        let r = create_as(&writer, &launder, 400).await;
        names_in_refusal(&r, &["does not exist"]);
        let zoom_gcs = format!("/api/block_documents/{}", w.zoom_gcs);
        let other_gcs = format!("/api/block_documents/{}", w.other_gcs);
        let laundering = json!({"data": bucket_data("b", w.other_creds)});
        send_expecting(app, "PATCH", &zoom_gcs, &writer, Some(&laundering), 400).await;
        let renamed = json!({"data": bucket_data("renamed", w.zoom_creds)});
        send_expecting(app, "PATCH", &zoom_gcs, &writer, Some(&renamed), 204).await;
        // Other blocks: 404 for update, delete and rollback.
        for (method, uri, body) in [
            (
                "PATCH",
                other_gcs.clone(),
                Some(json!({"data": {"bucket": "x"}})),
            ),
            ("DELETE", other_gcs.clone(), None),
            ("POST", format!("{other_gcs}/versions/1/rollback"), None),
        ] {
            send_expecting(app, method, &uri, &writer, body.as_ref(), 404).await;
        }
        // A token that may read a block but not write it: 403 naming the scope.
        let grants = ["read:gcs-bucket/other-gcs"];
        let (reader_writer, _) = w.limited(&[Scope::Write], &grants).await;
        let r = send_expecting(app, "DELETE", &other_gcs, &reader_writer, None, 403).await;
        names_in_refusal(&r, &["write", "gcs-bucket/other-gcs"]);

        // A rollback may not bring back a reference to a block outside the grants.
        let admin = &w.ctx.admin;
        for creds in [w.other_creds, w.zoom_creds] {
            let data = json!({"data": bucket_data("b", creds)});
            send_expecting(app, "PATCH", &zoom_gcs, admin, Some(&data), 204).await;
        }
        let versions = get(app, &format!("{zoom_gcs}/versions"), admin).await;
        let with_other = versions
            .body
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["references"]["gcp_credentials"] == json!(w.other_creds.to_string()));
        let version = with_other.expect("a version referencing other-gcp-creds")["version"]
            .as_i64()
            .unwrap();
        let rollback = |version: i64| format!("{zoom_gcs}/versions/{version}/rollback");
        send_expecting(app, "POST", &rollback(version), &writer, None, 400).await;
        send_expecting(app, "POST", &rollback(1), &writer, None, 200).await;

        // Prefect's nested save: an anonymous document first, then the block referencing
        // it. Another tree's anonymous document cannot be adopted.
        let anon = create_as(&writer, &anonymous_creds(&w, "mine", "p"), 201).await;
        let anon_id = id_of(&anon);
        create_as(&writer, &bucket_doc(&w, "zoom-anon", "b", anon_id), 201).await;
        // The anonymous child is part of its parent.
        let zoom_anon = "/api/block_types/slug/gcs-bucket/block_documents/name/zoom-anon";
        get_expecting(app, zoom_anon, &writer, 200).await;
        // An anonymous document already held by a tree.
        create_as(&writer, &bucket_doc(&w, "zoom-anon-2", "b", anon_id), 400).await;
        let grants = ["write:gcs-bucket/zoom-*"];
        let (other_writer, _) = w.limited(&[Scope::Write], &grants).await;
        let theirs = id_of(&post_document(app, admin, &anonymous_creds(&w, CANARY, "p")).await);
        // Someone else's orphan.
        create_as(
            &other_writer,
            &bucket_doc(&w, "zoom-steal", "b", theirs),
            400,
        )
        .await;
        // Creating an anonymous document of a type with no write grant: 403.
        create_as(&other_writer, &anonymous_creds(&w, "x", "p"), 403).await;
    })
    .await;
}

#[tokio::test]
async fn registering_types_and_schemas_needs_a_grant_on_the_whole_type() {
    on_both(async |db| {
        let w = world(db).await;
        let app = &w.ctx.app;
        let schema = get(app, &w.bucket_schema_uri(), &w.ctx.admin).await.body;
        let body = json!({
            "fields": schema["fields"],
            "block_type_id": w.bucket_type,
            "capabilities": schema["capabilities"],
            "version": "grants-test",
        });
        let (narrow, _) = w
            .limited(&[Scope::Write], &["write:gcs-bucket/zoom-*"])
            .await;
        let schemas = "/api/block_schemas/";
        let r = send_expecting(app, "POST", schemas, &narrow, Some(&body), 403).await;
        names_in_refusal(&r, &["gcs-bucket/*"]);
        let mine = json!({"name": "Mine", "slug": "mine"});
        let bucket_type = format!("/api/block_types/{}", w.bucket_type);
        for (method, uri, body) in [
            ("POST", "/api/block_types/install_system_block_types", None),
            ("POST", "/api/block_types/", Some(&mine)),
            ("PATCH", &bucket_type, Some(&json!({"description": "x"}))),
        ] {
            send_expecting(app, method, uri, &narrow, body, 403).await;
        }

        let (whole, _) = w.limited(&[Scope::Write], &["write:gcs-bucket/*"]).await;
        send_expecting(app, "POST", schemas, &whole, Some(&body), 201).await;
        // Another type.
        send_expecting(app, "POST", "/api/block_types/", &whole, Some(&mine), 403).await;
    })
    .await;
}

#[tokio::test]
async fn tokens_take_grants_over_the_api_and_children_stay_within_their_parent() {
    on_both(async |db| {
        let w = world(db).await;
        let (app, admin) = (&w.ctx.app, &w.ctx.admin);
        // Create with grants and a ttl; the listing shows them.
        let r = send_expecting(app, "POST", "/api/tokens", admin, Some(&json!({
            "name": "etl",
            "scopes": ["read-secrets"],
            "grants": [{"scope": "read-secrets", "selector": "gcs-bucket/zoom-gcs"}],
            "ttl": "1h",
        })), 201).await;
        let etl = r.body["token"].as_str().unwrap().to_owned();
        let etl_id = r.body["id"].as_str().unwrap().to_owned();
        assert_eq!(r.body["grants"], json!([{"scope": "read-secrets", "selector": "gcs-bucket/zoom-gcs"}]));
        assert!(r.body["expires"].is_string());
        let listed = get(app, "/api/tokens", admin).await;
        let mine = listed.body.as_array().unwrap().iter().find(|t| t["id"] == json!(etl_id)).unwrap().clone();
        assert_eq!(mine["grants"], r.body["grants"]);

        // Bad bodies name the field.
        for (body, field) in [
            (json!({"name": "a", "scopes": ["admin"], "grants": [{"scope": "read", "selector": "*/*"}]}), "grants"),
            (json!({"name": "a", "scopes": ["read"], "grants": [{"scope": "write", "selector": "*/*"}]}), "grants[0].scope"),
            (json!({"name": "a", "scopes": ["read"], "grants": [{"scope": "read", "selector": "no-slash"}]}), "grants[0].selector"),
            (json!({"name": "a", "scopes": ["read"], "ttl": "soon"}), "ttl"),
        ] {
            let r = send_expecting(app, "POST", "/api/tokens", admin, Some(&body), 422).await;
            assert!(r.text.contains(field), "{field}: {}", r.text);
        }

        // The nested credentials are not granted yet; an admin PATCH adds them, at once.
        let with_secrets = format!("{ZOOM_GCS}?include_secrets=true");
        get_expecting(app, &with_secrets, &etl, 403).await;
        let grants = json!({"grants": [
            {"scope": "read-secrets", "selector": "gcs-bucket/zoom-gcs"},
            {"scope": "read-secrets", "selector": "gcp-credentials/zoom-gcp-creds"},
        ]});
        let etl_uri = format!("/api/tokens/{etl_id}");
        // Only an admin changes grants.
        send_expecting(app, "PATCH", &etl_uri, &etl, Some(&grants), 403).await;
        send_expecting(app, "PATCH", &etl_uri, admin, Some(&grants), 200).await;
        get_expecting(app, &with_secrets, &etl, 200).await;
        let admin_id = get(app, "/api/tokens", admin).await.body.as_array().unwrap().iter()
            .find(|t| t["scopes"] == json!(["admin"])).unwrap()["id"].as_str().unwrap().to_owned();
        let any = json!({"grants": [{"scope": "read", "selector": "*/*"}]});
        let r = send_expecting(app, "PATCH", &format!("/api/tokens/{admin_id}"), admin, Some(&any), 422).await;
        assert!(r.text.contains("admin token cannot be limited"), "{}", r.text);

        // A child for a subprocess: narrower, shorter, revoked with its parent.
        let r = send_expecting(app, "POST", "/api/tokens/child", &etl, Some(&json!({
            "grants": [{"scope": "read", "selector": "gcs-bucket/zoom-gcs"}], "ttl": 300,
        })), 201).await;
        let child = r.body["token"].as_str().unwrap().to_owned();
        assert_eq!(r.body["parent_id"], json!(etl_id));
        get_expecting(app, OTHER_GCS, &child, 404).await;
        get_expecting(app, &with_secrets, &child, 403).await;
        for body in [
            json!({"grants": [{"scope": "read", "selector": "gcs-bucket/*"}]}),
            json!({"scopes": ["write"]}),
            json!({"ttl": "2h"}),
            json!({"grants": []}),
        ] {
            send_expecting(app, "POST", "/api/tokens/child", &etl, Some(&body), 422).await;
        }
        send_expecting(app, "DELETE", &etl_uri, admin, None, 200).await;
        // A child does not outlive its parent.
        get_expecting(app, ZOOM_GCS, &child, 401).await;

        // Minting is audited under the parent.
        let records = all_audit(&w.ctx.state.store).await;
        assert!(records.iter().any(|r| r.action == "POST /api/tokens/child" && r.status == 201));
        assert!(records.iter().any(|r| r.action == "PATCH /api/tokens/{id}" && r.status == 200));
    })
    .await;
}

#[tokio::test]
async fn no_grant_or_reference_reaches_another_trees_anonymous_document() {
    on_both(async |db| {
        let w = world(db).await;
        let (app, store) = (&w.ctx.app, &w.ctx.state.store);
        let admin = &w.ctx.admin;
        // Another team's bucket holding its credentials as an anonymous document.
        let documents = "/api/block_documents/";
        let anon = id_of(&post_document(app, admin, &anonymous_creds(&w, CANARY, "team")).await);
        let team_gcs = bucket_doc(&w, "team-gcs", "t", anon);
        send_expecting(app, "POST", documents, admin, Some(&team_gcs), 201).await;
        // A token that reads every named block and reads and writes its own bucket.
        let grants = ["read:*/*", "read-secrets:gcs-bucket/mine", "write:gcs-bucket/mine"];
        let (wide, wide_id) = w.limited(&[Scope::ReadSecrets, Scope::Write], &grants).await;
        let mine = bucket_doc(&w, "mine", "m", w.zoom_creds);
        let mine = id_of(&send_expecting(app, "POST", documents, &wide, Some(&mine), 201).await);
        // The anonymous document is in no list, not readable by id, not referenceable.
        let r = send_expecting(app, "POST", "/api/block_documents/filter", &wide,
            Some(&json!({"block_documents": {"is_anonymous": {"eq_": true}}})), 200).await;
        assert!(r.body.as_array().unwrap().iter().all(|d| d["is_anonymous"] == false), "{}", r.text);
        get_expecting(app, &format!("/api/block_documents/{anon}"), &wide, 404).await;
        let adopting = json!({"data": bucket_data("m", anon)});
        send_expecting(app, "PATCH", &format!("/api/block_documents/{mine}"), &wide, Some(&adopting), 400).await;
        // The zoom credentials are read-only to this token.
        let r = get_expecting(app, &format!("/api/block_documents/{mine}?include_secrets=true"), &wide, 403).await;
        no_canary(&r);
        // Probing a hidden document is recorded as a refusal.
        let records = all_audit(store).await;
        assert!(
            records.iter().any(|r| r.token_id == Some(wide_id)
                && r.status == 404
                && r.outcome == "denied"
                && r.target.contains(&anon.to_string())),
            "no denied record for the probe"
        );

        // A refused delete names only the referrers the token may see.
        let (deleter, _) = w.limited(&[Scope::Write], &["write:gcp-credentials/*"]).await;
        let zoom_creds = format!("/api/block_documents/{}", w.zoom_creds);
        let r = send_expecting(app, "DELETE", &zoom_creds, &deleter, None, 409).await;
        assert!(!r.text.contains("zoom-gcs") && !r.text.contains("mine"), "{}", r.text);
        assert!(r.text.contains("you cannot see"), "{}", r.text);

        // A schema for one type cannot bring a new schema for another along.
        let (typer, _) = w.limited(&[Scope::Write], &["write:gcs-bucket/*"]).await;
        let mut fields = get(app, &w.bucket_schema_uri(), admin).await.body["fields"].clone();
        fields["block_schema_references"]["gcp_credentials"]["block_schema_checksum"] =
            json!(format!("sha256:{}", "0".repeat(64)));
        let r = send_expecting(app, "POST", "/api/block_schemas/", &typer, Some(&json!({
            "fields": fields, "block_type_id": w.bucket_type, "capabilities": [], "version": "nested",
        })), 403).await;
        names_in_refusal(&r, &["gcp-credentials/*"]);
    })
    .await;
}
