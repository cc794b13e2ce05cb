//! The web console in a real browser (headless Chromium over chromedriver) against the real
//! `blocks serve`: a data engineer sets up the blocks of the DE Zoomcamp course as in
//! Prefect's UI (sign in, register collections, create, reference, edit, validation, a
//! concurrent edit), the sessions and scopes (a read-only token, signing out, a revoked
//! token, a cross-site post, hostile text), the console with JavaScript turned off, what
//! goes beyond Prefect's UI (history, diff and rollback, revealing a secret, replacing one
//! without `read-secrets`, duplicate and compare, the dashboard; `console_browser/beyond.rs`)
//! and an administrator's pages (tokens, audit log, key rotation, retention;
//! `console_browser/admin.rs`).
//! Every flow page is checked with axe-core; `BLOCKS_SCREENSHOTS=1` saves pictures of some
//! pages into `docs/console/`.
//!
//! Without chromedriver and chromium the tests say they are skipped and pass, except under
//! `CI`, where they fail. `TEST_LOG=1` shows the server's log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "console_browser/admin.rs"]
mod admin;
#[path = "console_browser/axe.rs"]
mod axe;
#[path = "console_browser/beyond.rs"]
mod beyond;
#[path = "console_browser/support.rs"]
mod support;

use reqwest::Method;
use serde_json::{Value, json};

use axe::Audit;
use support::{Browser, Console, Server};

/// In the service-account key's `private_key_id`: must never reach a page.
const KEY_ID_CANARY: &str = "canary-console-key-id-7d31c9";
/// The connector's password, and the one it is changed to.
const DB_PASSWORD: &str = "canary-console-pw-root-51f0";
const DB_PASSWORD_2: &str = "canary-console-pw-rotated-a2c4";
const PROJECT: &str = "dtc-de-course-4821";
const BUCKET: &str = "dtc_data_lake_dtc-de-course-4821";

/// The submit button of a block form (not a row or "Create new …" button).
const SAVE: &str = "form.form-panel .actions button.primary[type=submit]";

// ---------------------------------------------------------------------------------------
// The flows
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_engineer_sets_up_the_course_blocks() {
    let Some(console) = Console::start(true).await else {
        return;
    };
    let (b, server) = (&console.b, &console.server);
    let mut audit = Audit::default();

    b.goto("/sign-in").await;
    audit.check(b, "sign in").await;
    sign_in(b, &server.admin, "/blocks").await;
    session_cookie_is_strict(b).await;
    register_collections(b, server, &mut audit).await;
    let (creds_id, key) = create_gcp_credentials(b, server, &mut audit).await;
    create_gcs_bucket(b, server, &creds_id, &mut audit).await;
    create_credentials_from_the_bucket_form(b, server).await;
    create_connector_and_container(b, server, &mut audit).await;
    edit_keeps_untouched_secrets(b, server, &creds_id, &key, &mut audit).await;
    validation_errors_show_at_their_fields(b, server, &mut audit).await;
    concurrent_edit_is_refused(b, server, &mut audit).await;
    list_page_and_small_screens(b, &mut audit).await;

    console.close().await;
    audit.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_reveal_duplicate_and_compare() {
    let Some(console) = Console::start(true).await else {
        return;
    };
    let (b, server) = (&console.b, &console.server);
    let mut audit = Audit::default();

    sign_in(b, &server.admin, "/blocks").await;
    let id = beyond::history_diff_and_rollback(b, server, &mut audit).await;
    beyond::reveal_and_hide(b, server, &id, &mut audit).await;
    beyond::create_and_add_another(b, &mut audit).await;
    beyond::dashboard(b, &mut audit).await;
    beyond::replace_without_read_secrets(b, server, &id, &mut audit).await;
    beyond::duplicate_and_compare(b, server, &id, &mut audit).await;

    console.close().await;
    audit.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_scopes_and_hostile_input() {
    let Some(console) = Console::start(true).await else {
        return;
    };
    let (b, server) = (&console.b, &console.server);
    let secret_id = api_secret_block(server, "course-api-key", DB_PASSWORD).await;

    sign_in(b, &server.admin, "/blocks").await;
    sign_out(b).await;
    read_token_sees_but_cannot_change(b, server, &secret_id).await;
    sign_in(b, &server.admin, "/blocks").await;
    cross_site_posts_change_nothing(b, server, &secret_id).await;
    hostile_text_renders_inert(b, server).await;

    console.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_without_javascript() {
    let Some(console) = Console::start(false).await else {
        return;
    };
    let (b, server) = (&console.b, &console.server);

    sign_in(b, &server.admin, "/blocks").await;
    create_secret_without_javascript(b, server).await;
    create_connector_without_javascript(b, server).await;

    console.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_runs_the_server() {
    let Some(console) = Console::start(true).await else {
        return;
    };
    let mut audit = Audit::default();

    admin::run(&console.driver, &console.b, &console.server, &mut audit).await;

    console.close().await;
    audit.finish();
}

// ---------------------------------------------------------------------------------------
// Steps
// ---------------------------------------------------------------------------------------

/// Step 1: sign in by pasting a token; land where the sign-in was asked from.
async fn sign_in(b: &Browser, token: &str, from: &str) {
    b.goto(from).await;
    let at = b.wait_for_path("/sign-in").await;
    assert!(
        at.contains("next="),
        "sign in: an anonymous visit to {from} goes to the sign-in page with next=, got {at}"
    );
    b.fill("#token", token).await;
    b.click_and_load("form[action=\"/sign-in\"] button.primary[type=submit]")
        .await;
    let at = b.path().await;
    assert!(
        at.starts_with(from),
        "sign in: the sign-in form leads to {from}; the browser is at {at} and the page says: {}",
        b.main_text().await
    );
    assert!(
        b.exists("form[action=\"/sign-out\"]").await,
        "sign in: the page after signing in shows who is signed in and Sign out"
    );
}

/// Step 1 (cont.): Chromium accepted the `__Host-` cookie on http://127.0.0.1 and keeps it
/// away from scripts.
async fn session_cookie_is_strict(b: &Browser) {
    let cookies = b.client.get_all_cookies().await.expect("the cookies");
    let session = cookies
        .iter()
        .find(|c| c.name() == "__Host-blocks-session")
        .expect("sign in: the session cookie is set on loopback http");
    assert_eq!(
        session.http_only(),
        Some(true),
        "sign in: the cookie is HttpOnly"
    );
    assert_eq!(
        session.secure(),
        Some(true),
        "sign in: the cookie is Secure"
    );
    assert_eq!(
        format!("{:?}", session.same_site()),
        "Some(Strict)",
        "sign in: the cookie is SameSite=Strict"
    );
    assert_eq!(
        b.script("return document.cookie").await,
        json!(""),
        "sign in: page scripts cannot read the session cookie"
    );
}

/// Step 2: register the gcp, sqlalchemy and docker collections with the catalog's buttons.
async fn register_collections(b: &Browser, server: &Server, audit: &mut Audit) {
    b.goto("/catalog").await;
    audit.check(b, "catalog (unregistered)").await;
    for (collection, heading) in [
        ("gcp", "Google Cloud"),
        ("sqlalchemy", "SQLAlchemy"),
        ("docker", "Docker"),
    ] {
        let button = format!(
            "form[action=\"/catalog/register\"]:has(input[name=collection][value={collection}]) button[type=submit]"
        );
        assert_eq!(
            b.text(&button).await,
            format!("Register {heading}"),
            "register {collection}: the button names the collection"
        );
        b.click_and_load(&button).await;
        b.wait_for_path("/catalog").await;
        assert!(
            !b.exists(&button).await,
            "register {collection}: the Register button is gone after registering"
        );
        assert_eq!(
            b.text(&format!("#c-{collection}")).await,
            heading,
            "register {collection}: the catalog lists the collection's types"
        );
    }
    assert!(
        !b.exists("#c-unregistered").await,
        "register: no built-in collection is left unregistered"
    );
    for slug in [
        "gcp-credentials",
        "gcs-bucket",
        "sqlalchemy-connector",
        "docker-container",
    ] {
        server
            .api(Method::GET, &format!("/api/block_types/slug/{slug}"), None)
            .await;
        assert!(
            b.exists(&format!("a[href=\"/blocks/new/{slug}\"]")).await,
            "register: the catalog offers Add for {slug}"
        );
    }
    audit.check(b, "catalog").await;
}

/// A service-account key as Google hands it out, with a throwaway ECDSA key (ring makes no
/// RSA keys; the console does not look at the key type).
fn service_account_key(project: &str, key_id: &str) -> Value {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key");
    json!({
        "type": "service_account",
        "project_id": project,
        "private_key_id": key_id,
        "private_key": key.serialize_pem(),
        "client_email": format!("zoom-sa@{project}.iam.gserviceaccount.com"),
        "client_id": "104017316286139410522",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
    })
}

/// A line of the PEM body: random, so finding it anywhere means the key leaked.
fn key_fragment(key: &Value) -> String {
    key["private_key"]
        .as_str()
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_owned()
}

/// The id in `/blocks/<id>…`.
fn id_in(path: &str) -> String {
    path.trim_start_matches("/blocks/")
        .split(['?', '/'])
        .next()
        .unwrap()
        .to_owned()
}

/// An object without its `null` members (an optional field left at "none": Prefect's
/// models read `null` and absent alike).
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Asserts a page's HTML holds none of these strings.
#[track_caller]
fn assert_absent(source: &str, secrets: &[&str], step: &str) {
    for secret in secrets {
        assert!(
            !source.contains(secret),
            "{step}: the page source contains the secret {secret:?}"
        );
    }
}

/// Saves a new block's form and waits for the new block's page
/// (`/blocks/<id>?saved=created`); its path. `step` says what is saved, for the message.
async fn save_new(b: &Browser, step: &str) -> String {
    b.click_and_load(SAVE).await;
    let at = b.wait_for_path("/blocks/").await;
    assert!(
        at.ends_with("?saved=created"),
        "{step}, got {at}: {}",
        b.main_text().await
    );
    at
}

/// Saves an edit of the block `id` and waits for its page (`/blocks/<id>?saved…`); its path.
async fn save_edit(b: &Browser, id: &str) -> String {
    b.click_and_load(SAVE).await;
    b.wait_for_path(&format!("/blocks/{id}?saved")).await
}

/// Step 3: GCP Credentials from a pasted service-account key; the page shows the code that
/// loads it and none of the key.
async fn create_gcp_credentials(
    b: &Browser,
    server: &Server,
    audit: &mut Audit,
) -> (String, Value) {
    let key = service_account_key(PROJECT, KEY_ID_CANARY);
    b.goto("/catalog").await;
    b.click_and_load("a[aria-label=\"Add GCP Credentials\"]")
        .await;
    b.wait_for_path("/blocks/new/gcp-credentials").await;
    audit.check(b, "create gcp-credentials").await;
    b.fill("#block-name", "zoom-gcp-creds").await;
    b.fill(
        "textarea[name=\"data.service_account_info\"]",
        &serde_json::to_string_pretty(&key).unwrap(),
    )
    .await;
    let id = id_in(&save_new(b, "create gcp-credentials: lands on the new block's page").await);
    assert!(
        b.text("#snippet-rust")
            .await
            .contains("GcpCredentials::load(\"zoom-gcp-creds\")"),
        "create gcp-credentials: the page shows the Rust code that loads it"
    );
    assert!(
        b.exists(".secret-mask").await,
        "create gcp-credentials: the key is shown masked"
    );
    let source = b.source().await;
    assert_absent(
        &source,
        &[
            KEY_ID_CANARY,
            &key_fragment(&key),
            key["client_email"].as_str().unwrap(),
        ],
        "create gcp-credentials: block page",
    );
    let stored = server
        .document("gcp-credentials", "zoom-gcp-creds")
        .await
        .expect("create gcp-credentials: stored");
    assert_eq!(
        stored["data"]["service_account_info"], key,
        "create gcp-credentials: the stored key is the pasted JSON object"
    );
    assert_eq!(stored["id"], json!(id));
    (id, key)
}

/// Step 4: a GCS Bucket using the credentials; its page links to them and they to it.
async fn create_gcs_bucket(b: &Browser, server: &Server, creds_id: &str, audit: &mut Audit) {
    b.goto("/blocks/new").await;
    b.click_and_load("a[aria-label=\"Add GCS Bucket\"]").await;
    b.wait_for_path("/blocks/new/gcs-bucket").await;
    audit.check(b, "create gcs-bucket").await;
    b.fill("#block-name", "zoom-gcs").await;
    b.fill("input[name=\"data.bucket\"]", BUCKET).await;
    b.select("select[name=\"data.gcp_credentials\"]", creds_id)
        .await;
    b.screenshot("create-gcs-bucket").await;
    let bucket_id = id_in(&save_new(b, "create gcs-bucket: lands on the new block's page").await);
    assert!(
        b.text("#snippet-rust")
            .await
            .contains("GcsBucket::load(\"zoom-gcs\")"),
        "create gcs-bucket: the Rust snippet loads zoom-gcs"
    );
    let python = b.text("#snippet-python").await;
    // Prefect's own class when the type's example names one, else `Block.load("slug/name")`.
    assert!(
        python.contains("GcsBucket.load(\"zoom-gcs\")")
            || python.contains("Block.load(\"gcs-bucket/zoom-gcs\")"),
        "create gcs-bucket: the Python snippet loads zoom-gcs, got {python}"
    );
    let uses = b.text("section.relations ul li a").await;
    assert_eq!(
        uses, "zoom-gcp-creds",
        "create gcs-bucket: Uses names the credentials"
    );
    assert_eq!(
        b.attr("section.relations ul li a", "href").await.as_deref(),
        Some(format!("/blocks/{creds_id}").as_str()),
        "create gcs-bucket: Uses links to the credentials' page"
    );
    b.screenshot("block").await;
    audit.check(b, "block detail (gcs-bucket)").await;

    b.click_and_load("section.relations ul li a").await;
    b.wait_for_path(&format!("/blocks/{creds_id}")).await;
    let used_by = b.text("ul[aria-labelledby=used-by-h] li").await;
    assert!(
        used_by.starts_with("zoom-gcs"),
        "create gcs-bucket: the credentials' page lists zoom-gcs under Used by, got {used_by}"
    );
    assert_eq!(
        b.attr("ul[aria-labelledby=used-by-h] li a", "href")
            .await
            .as_deref(),
        Some(format!("/blocks/{bucket_id}").as_str()),
        "create gcs-bucket: Used by links to the bucket"
    );
    audit.check(b, "block detail (gcp-credentials)").await;

    let stored = server
        .document("gcs-bucket", "zoom-gcs")
        .await
        .expect("create gcs-bucket: stored");
    assert_eq!(
        stored["data"]["bucket"],
        json!(BUCKET),
        "create gcs-bucket: bucket"
    );
    assert_eq!(
        stored["block_document_references"]["gcp_credentials"]["block_document"]["id"],
        json!(creds_id),
        "create gcs-bucket: the stored bucket references zoom-gcp-creds: {stored}"
    );
}

/// Step 4 (cont.): "Create new GCP Credentials" from the bucket form, and back to the bucket
/// form with what was typed there kept and the new credentials chosen.
async fn create_credentials_from_the_bucket_form(b: &Browser, server: &Server) {
    let key = service_account_key("dtc-staging-1903", "canary-console-staging-key-99e0");
    b.goto("/blocks/new/gcs-bucket").await;
    b.fill("#block-name", "zoom-gcs-staging").await;
    b.fill("input[name=\"data.bucket\"]", "dtc_data_lake_staging")
        .await;
    b.click_and_load(
        "button[data-new-ref][value=\"new-ref:data.gcp_credentials:gcp-credentials\"]",
    )
    .await;
    let h1 = b.text("main h1").await;
    assert_eq!(
        h1, "Add GCP Credentials",
        "create new from a picker: the credentials form opens"
    );
    assert!(
        b.main_text()
            .await
            .contains("the form you came from comes back"),
        "create new from a picker: the form says it returns to the bucket form"
    );
    assert_absent(
        &b.source().await,
        &["canary-console-pw"],
        "create new from a picker",
    );
    b.fill("#block-name", "zoom-gcp-creds-staging").await;
    b.fill(
        "textarea[name=\"data.service_account_info\"]",
        &key.to_string(),
    )
    .await;
    b.click_and_load(SAVE).await;
    b.wait_for_path("/blocks/new/").await;
    assert_eq!(
        b.text("main h1").await,
        "Add GCS Bucket",
        "create new from a picker: back on the bucket form after creating the credentials: {}",
        b.main_text().await
    );
    let new_creds = server
        .document("gcp-credentials", "zoom-gcp-creds-staging")
        .await
        .expect("create new from a picker: the credentials are stored");
    assert_eq!(
        b.value("#block-name").await.as_deref(),
        Some("zoom-gcs-staging"),
        "create new from a picker: the bucket's name is kept"
    );
    assert_eq!(
        b.value("input[name=\"data.bucket\"]").await.as_deref(),
        Some("dtc_data_lake_staging"),
        "create new from a picker: the bucket field is kept"
    );
    assert_eq!(
        b.value("select[name=\"data.gcp_credentials\"]")
            .await
            .as_deref(),
        new_creds["id"].as_str(),
        "create new from a picker: the new credentials are chosen"
    );
    save_new(b, "create new from a picker: the bucket is created").await;
    assert_eq!(
        b.text("section.relations ul li a").await,
        "zoom-gcp-creds-staging",
        "create new from a picker: the bucket uses the new credentials"
    );
}

/// Step 5: the course's SQLAlchemy connector (choices, a secret, a port) and Docker
/// container (an enum choice, a switch), stored as a Prefect user would have them.
async fn create_connector_and_container(b: &Browser, server: &Server, audit: &mut Audit) {
    b.goto("/blocks/new/sqlalchemy-connector").await;
    audit.check(b, "create sqlalchemy-connector").await;
    b.fill("#block-name", "zoom-postgres").await;
    let info = "data.connection_info#a0";
    assert_eq!(
        b.value("select[name=\"data.connection_info#choice\"]")
            .await
            .as_deref(),
        Some("0"),
        "create connector: connection components are the default"
    );
    b.select(&format!("select[name=\"{info}.driver#choice\"]"), "1")
        .await;
    assert!(
        b.displayed(&format!("select[name=\"{info}.driver#a1\"]"))
            .await,
        "create connector: choosing SyncDriver shows its list"
    );
    assert!(
        !b.displayed(&format!("select[name=\"{info}.driver#a0\"]"))
            .await,
        "create connector: the AsyncDriver list is hidden once SyncDriver is chosen"
    );
    b.select(
        &format!("select[name=\"{info}.driver#a1\"]"),
        "postgresql+psycopg2",
    )
    .await;
    for (field, value) in [
        ("database", "ny_taxi"),
        ("username", "root"),
        ("host", "localhost"),
        ("port", "5432"),
    ] {
        b.fill(&format!("input[name=\"{info}.{field}\"]"), value)
            .await;
    }
    b.fill(&format!("input[name=\"{info}.password\"]"), DB_PASSWORD)
        .await;
    save_new(b, "create connector: created").await;
    assert_absent(
        &b.source().await,
        &[DB_PASSWORD],
        "create connector: block page",
    );
    let stored = server
        .document("sqlalchemy-connector", "zoom-postgres")
        .await
        .expect("create connector: stored");
    assert_eq!(
        without_nulls(&stored["data"]["connection_info"]),
        json!({
            "driver": "postgresql+psycopg2",
            "database": "ny_taxi",
            "username": "root",
            "password": DB_PASSWORD,
            "host": "localhost",
            "port": 5432,
        }),
        "create connector: connection info as Prefect stores it (port an integer)"
    );
    assert_eq!(
        stored["data"]["fetch_size"],
        json!(1),
        "create connector: default fetch size"
    );

    b.goto("/blocks/new/docker-container").await;
    b.fill("#block-name", "zoom-docker").await;
    b.fill("input[name=\"data.image\"]", "pencilboy99/prefect:zoom")
        .await;
    b.select("select[name=\"data.image_pull_policy\"]", "ALWAYS")
        .await;
    b.click("#field-data-auto_5Fremove").await;
    assert_eq!(
        b.prop("#field-data-auto_5Fremove", "checked")
            .await
            .as_deref(),
        Some("true"),
        "create container: the auto-remove switch is on after a click"
    );
    save_new(b, "create container: created").await;
    let stored = server
        .document("docker-container", "zoom-docker")
        .await
        .expect("create container: stored");
    for (field, value, what) in [
        ("image", json!("pencilboy99/prefect:zoom"), "image"),
        ("image_pull_policy", json!("ALWAYS"), "pull policy"),
        ("auto_remove", json!(true), "auto_remove"),
        ("stream_output", json!(true), "default stream_output"),
        ("privileged", json!(false), "default privileged"),
    ] {
        assert_eq!(stored["data"][field], value, "create container: {what}");
    }
}

/// Step 6: an edit that leaves a secret empty keeps it; typing a new one replaces it.
async fn edit_keeps_untouched_secrets(
    b: &Browser,
    server: &Server,
    creds_id: &str,
    key: &Value,
    audit: &mut Audit,
) {
    // The credentials: change the (non-secret) project, leave the key alone.
    b.goto(&format!("/blocks/{creds_id}/edit")).await;
    audit.check(b, "edit gcp-credentials").await;
    assert_absent(
        &b.source().await,
        &[KEY_ID_CANARY, &key_fragment(key)],
        "edit credentials: the form",
    );
    assert_eq!(
        b.value("textarea[name=\"data.service_account_info\"]")
            .await
            .as_deref(),
        Some(""),
        "edit credentials: the secret is never pre-filled"
    );
    b.fill("input[name=\"data.project\"]", PROJECT).await;
    let at = save_edit(b, creds_id).await;
    assert!(
        b.main_text().await.contains("Saved."),
        "edit credentials: saved ({at})"
    );
    let stored = server
        .document("gcp-credentials", "zoom-gcp-creds")
        .await
        .unwrap();
    assert_eq!(
        stored["data"]["project"],
        json!(PROJECT),
        "edit credentials: project set"
    );
    assert_eq!(
        &stored["data"]["service_account_info"], key,
        "edit credentials: the key left empty in the form is kept"
    );

    // The connector: change the port with the password empty, then type a new password.
    let id = server
        .document("sqlalchemy-connector", "zoom-postgres")
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let info = "data.connection_info#a0";
    b.goto(&format!("/blocks/{id}/edit")).await;
    assert_eq!(
        b.value(&format!("input[name=\"{info}.port\"]"))
            .await
            .as_deref(),
        Some("5432"),
        "edit connector: the form shows the stored port"
    );
    assert_eq!(
        b.value(&format!("input[name=\"{info}.password\"]"))
            .await
            .as_deref(),
        Some(""),
        "edit connector: the password is never pre-filled"
    );
    assert_absent(
        &b.source().await,
        &[DB_PASSWORD],
        "edit connector: the form",
    );
    b.fill(&format!("input[name=\"{info}.port\"]"), "5433")
        .await;
    save_edit(b, &id).await;
    let info_of = |doc: Value| doc["data"]["connection_info"].clone();
    let stored = info_of(
        server
            .document("sqlalchemy-connector", "zoom-postgres")
            .await
            .unwrap(),
    );
    assert_eq!(stored["port"], json!(5433), "edit connector: port changed");
    assert_eq!(
        stored["password"],
        json!(DB_PASSWORD),
        "edit connector: the password left empty is kept"
    );
    assert_eq!(
        stored["username"],
        json!("root"),
        "edit connector: username kept"
    );

    b.goto(&format!("/blocks/{id}/edit")).await;
    b.fill(&format!("input[name=\"{info}.password\"]"), DB_PASSWORD_2)
        .await;
    save_edit(b, &id).await;
    let stored = info_of(
        server
            .document("sqlalchemy-connector", "zoom-postgres")
            .await
            .unwrap(),
    );
    assert_eq!(
        stored["password"],
        json!(DB_PASSWORD_2),
        "edit connector: a typed password replaces the old one"
    );
    assert_eq!(stored["port"], json!(5433), "edit connector: port kept");
}

/// Step 7: a value that is not JSON is refused at its field; the rest stays typed and
/// nothing is stored.
async fn validation_errors_show_at_their_fields(b: &Browser, server: &Server, audit: &mut Audit) {
    let before = server.count("gcp-credentials").await;
    b.goto("/blocks/new/gcp-credentials").await;
    b.fill("#block-name", "broken-creds").await;
    b.fill("input[name=\"data.project\"]", "kept-project").await;
    let info = "textarea[name=\"data.service_account_info\"]";
    b.fill(info, "{\"type\": \"service_account\", not json")
        .await;
    b.click_and_load(SAVE).await;
    b.find("div.error-message[role=alert]").await;
    audit.check(b, "create gcp-credentials (errors)").await;
    assert!(
        b.invalid(info).await,
        "validation: the field is marked invalid: {}",
        b.main_text().await
    );
    let error_at = "div.field:has(> textarea[name=\"data.service_account_info\"]) .error";
    let error = b.text(error_at).await;
    assert!(
        !error.is_empty(),
        "validation: the error is shown at the field"
    );
    let described = b.attr(info, "aria-describedby").await.unwrap_or_default();
    let error_id = b.attr(error_at, "id").await.unwrap_or_default();
    assert!(
        !error_id.is_empty() && described.split(' ').any(|d| d == error_id),
        "validation: the field's aria-describedby ({described}) names its error ({error_id})"
    );
    assert!(
        !b.source().await.contains("not json"),
        "validation: the refused secret text is not sent back"
    );
    assert_eq!(
        b.value("#block-name").await.as_deref(),
        Some("broken-creds"),
        "validation: the name is kept"
    );
    assert_eq!(
        b.value("input[name=\"data.project\"]").await.as_deref(),
        Some("kept-project"),
        "validation: the project is kept"
    );
    assert!(
        server
            .document("gcp-credentials", "broken-creds")
            .await
            .is_none(),
        "validation: nothing is stored"
    );
    assert_eq!(
        server.count("gcp-credentials").await,
        before,
        "validation: count unchanged"
    );

    // A name that is not a block name: the error is at the name.
    b.fill("#block-name", "Broken Creds").await;
    b.fill(info, "{}").await;
    b.click_and_load(SAVE).await;
    b.find("div.error-message[role=alert]").await;
    assert!(
        b.invalid("#block-name").await,
        "validation: a bad name is marked at the name field: {}",
        b.main_text().await
    );
    assert!(
        !b.text("#block-name-error").await.is_empty(),
        "validation: the name's error is shown"
    );
    assert_eq!(
        server.count("gcp-credentials").await,
        before,
        "validation: count unchanged"
    );
}

/// Step 8: an edit of a block changed since the form was opened is refused; the other
/// change stays.
async fn concurrent_edit_is_refused(b: &Browser, server: &Server, audit: &mut Audit) {
    let doc = server
        .document("docker-container", "zoom-docker")
        .await
        .unwrap();
    let id = doc["id"].as_str().unwrap().to_owned();
    b.goto(&format!("/blocks/{id}/edit")).await;
    b.fill(
        "input[name=\"data.image\"]",
        "pencilboy99/prefect:from-browser",
    )
    .await;
    server
        .api(
            Method::PATCH,
            &format!("/api/block_documents/{id}"),
            Some(json!({
                "data": {"image": "pencilboy99/prefect:from-api"},
                "merge_existing_data": true,
            })),
        )
        .await;
    b.click_and_load(SAVE).await;
    b.find("div.error-message[role=alert]").await;
    let text = b.main_text().await;
    assert!(
        text.contains("was changed by someone else") && text.contains("Nothing was saved"),
        "concurrent edit: the page says the block changed: {text}"
    );
    audit.check(b, "edit docker-container (409)").await;
    assert_eq!(
        b.value("input[name=\"data.image\"]").await.as_deref(),
        Some("pencilboy99/prefect:from-browser"),
        "concurrent edit: the form keeps what was typed"
    );
    let stored = server
        .document("docker-container", "zoom-docker")
        .await
        .unwrap();
    assert_eq!(
        stored["data"]["image"],
        json!("pencilboy99/prefect:from-api"),
        "concurrent edit: the API's change stays"
    );
    assert_eq!(
        stored["data"]["auto_remove"],
        json!(true),
        "concurrent edit: the rest is untouched"
    );
}

/// Step 14: the blocks list, also at phone width.
async fn list_page_and_small_screens(b: &Browser, audit: &mut Audit) {
    b.goto("/blocks").await;
    let count = b.text("p.count").await;
    assert!(
        count.ends_with("of 6"),
        "blocks list: six blocks listed, got {count}"
    );
    let names = b
        .script("return [...document.querySelectorAll('table.list tbody tr td:first-child a')].map(a => a.textContent)")
        .await;
    for name in [
        "zoom-gcs",
        "zoom-gcs-staging",
        "zoom-gcp-creds",
        "zoom-gcp-creds-staging",
        "zoom-postgres",
        "zoom-docker",
    ] {
        assert!(
            names.as_array().unwrap().contains(&json!(name)),
            "blocks list: {name} is listed, got {names}"
        );
    }
    audit.check(b, "blocks list").await;
    b.screenshot("blocks").await;
    b.client
        .set_window_size(390, 844)
        .await
        .expect("a phone-sized window");
    b.goto("/blocks").await;
    b.screenshot("blocks-mobile").await;
    let overflow = b
        .script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
        )
        .await;
    assert!(
        overflow.as_i64().is_some_and(|o| o <= 0),
        "blocks list at 390px: the page does not scroll sideways (overflow {overflow}px)"
    );
    audit.check(b, "blocks list (390px)").await;
    b.client
        .set_window_size(1280, 900)
        .await
        .expect("a wide window");
}

/// A `secret` block created through the API; its id.
async fn api_secret_block(server: &Server, name: &str, value: &str) -> String {
    let ty = server
        .api(Method::GET, "/api/block_types/slug/secret", None)
        .await;
    let schema = first_schema(server, ty["id"].as_str().unwrap()).await;
    let doc = api_document(server, name, &ty, &schema, &json!({"value": value})).await;
    doc["id"].as_str().unwrap().to_owned()
}

/// A block document of this type and schema created through the API; the API's answer.
async fn api_document(
    server: &Server,
    name: &str,
    ty: &Value,
    schema: &Value,
    data: &Value,
) -> Value {
    server
        .api(
            Method::POST,
            "/api/block_documents/",
            Some(json!({
                "name": name,
                "block_type_id": ty["id"],
                "block_schema_id": schema["id"],
                "data": data,
            })),
        )
        .await
}

async fn first_schema(server: &Server, type_id: &str) -> Value {
    let schemas = server
        .api(
            Method::POST,
            "/api/block_schemas/filter",
            Some(json!({"block_schemas": {"block_type_id": {"any_": [type_id]}}})),
        )
        .await;
    schemas[0].clone()
}

/// Step 10: signing out ends the session.
async fn sign_out(b: &Browser) {
    b.click_and_load("form[action=\"/sign-out\"] button[type=submit]")
        .await;
    b.wait_for_path("/sign-in").await;
    assert!(
        b.main_text().await.contains("You are signed out."),
        "sign out: the sign-in page says so"
    );
    b.goto("/blocks").await;
    let at = b.wait_for_path("/sign-in").await;
    assert!(
        at.contains("next=%2Fblocks"),
        "sign out: /blocks now asks to sign in, got {at}"
    );
}

/// Steps 9 and 10: a `read` token sees blocks (secrets masked) and no way to change them;
/// revoking its token ends the session.
async fn read_token_sees_but_cannot_change(b: &Browser, server: &Server, secret_id: &str) {
    let (token_id, token) = server.token("course-viewer", &["read"]).await;
    sign_in(b, &token, "/blocks").await;
    assert!(
        b.main_text().await.contains("course-api-key"),
        "read token: the list shows the blocks"
    );
    assert!(
        !b.exists("a[href=\"/blocks/new\"]").await,
        "read token: no Add block"
    );
    b.goto(&format!("/blocks/{secret_id}")).await;
    assert!(
        b.exists(".secret-mask").await,
        "read token: the secret is masked"
    );
    assert!(
        !b.exists("a[href$=\"/edit\"]").await && !b.exists("a[href$=\"/delete\"]").await,
        "read token: no Edit or Delete on the block page"
    );
    assert_absent(&b.source().await, &[DB_PASSWORD], "read token: block page");
    b.goto("/catalog").await;
    assert!(
        !b.exists("form[action=\"/catalog/register\"]").await
            && !b.exists("a[href^=\"/blocks/new/\"]").await,
        "read token: the catalog offers no Register or Add"
    );
    for path in [
        format!("/blocks/{secret_id}/edit"),
        format!("/blocks/{secret_id}/delete"),
        "/blocks/new/secret".to_owned(),
    ] {
        b.goto(&path).await;
        let text = b.main_text().await;
        assert!(
            text.contains("needs a token with the write scope"),
            "read token: {path} says it needs the write scope, got: {text}"
        );
    }

    server
        .api(Method::DELETE, &format!("/api/tokens/{token_id}"), None)
        .await;
    b.goto("/blocks").await;
    let at = b.wait_for_path("/sign-in").await;
    assert!(
        at.contains("ended=1"),
        "revoked token: back at sign-in, got {at}"
    );
    assert!(
        b.main_text().await.contains("Your session has ended"),
        "revoked token: the sign-in page says the session ended"
    );
    b.goto("/blocks").await;
    let at = b.wait_for_path("/sign-in").await;
    assert!(
        !at.contains("ended=1"),
        "revoked token: the ended session's cookie was cleared ({at})"
    );
}

/// Step 11: a page on another origin posts a delete to the console; nothing is deleted.
async fn cross_site_posts_change_nothing(b: &Browser, server: &Server, secret_id: &str) {
    let port = server.base.rsplit(':').next().unwrap().to_owned();
    let target = format!("http://127.0.0.1:{port}/blocks/{secret_id}/delete");
    let page = format!(
        "<!doctype html><html lang=en><title>Free GPUs</title><body>\
         <form id=f method=post action=\"{target}\">\
         <input name=_csrf value=0123456789abcdef0123456789abcdef01234567>\
         <input name=_version value=1></form>\
         <script>document.getElementById('f').submit()</script></body></html>"
    );
    let attacker = StaticSite::start(page).await;
    // 127.0.0.1 on another port: same site (the cookie goes along), another origin; and
    // localhost: another site (SameSite=Strict keeps the cookie home).
    for host in ["127.0.0.1", "localhost"] {
        b.client
            .goto(&format!("http://{host}:{}/", attacker.port))
            .await
            .expect("the other site");
        let at = b.wait_for_path(&format!("/blocks/{secret_id}")).await;
        let text = b.main_text().await;
        assert!(
            !text.is_empty(),
            "cross-site post from {host}: the console answered ({at})"
        );
        let still = server
            .call_as(
                &server.admin,
                Method::GET,
                &format!("/api/block_documents/{secret_id}"),
                None,
            )
            .await;
        assert_eq!(
            still.status, 200,
            "cross-site post from {host}: the block still exists (the page said: {text})"
        );
        if host == "127.0.0.1" {
            assert!(
                text.contains("did not come from a page of this console"),
                "cross-site post from {host}: refused by the origin check: {text}"
            );
        }
    }
}

/// Step 12: markup in a block type's name, description, schema and data shows as text.
async fn hostile_text_renders_inert(b: &Browser, server: &Server) {
    let name = "Tricky\" autofocus onfocus=\"window.__pwned=7";
    let description = "<script>window.__pwned=2</script>\n\n\
        Notes <img src=x onerror=\"window.__pwned=1\"> and [a link](javascript:window.__pwned=3).";
    let ty = server
        .api(
            Method::POST,
            "/api/block_types/",
            Some(json!({
                "name": name,
                "slug": "tricky-type",
                "description": description,
                "code_example": "```python\nfrom x import Y\nY.load(\"BLOCK_NAME\")</script><script>window.__pwned=8</script>\n```",
            })),
        )
        .await;
    let fields = json!({
        "title": "Tricky",
        "type": "object",
        "properties": {
            "note": {
                "title": "<img src=x onerror=window.__pwned=4>",
                "description": "<script>window.__pwned=5</script>",
                "type": "string",
            },
        },
        "required": ["note"],
        "block_type_slug": "tricky-type",
        "secret_fields": [],
        "block_schema_references": {},
    });
    let schema = server
        .api(
            Method::POST,
            "/api/block_schemas/",
            Some(json!({
                "block_type_id": ty["id"],
                "fields": fields,
                "capabilities": [],
                "version": "1.0.0",
            })),
        )
        .await;
    let doc = api_document(
        server,
        "hostile-doc",
        &ty,
        &schema,
        &json!({"note": "<img src=x onerror=window.__pwned=6>"}),
    )
    .await;
    let id = doc["id"].as_str().unwrap();
    for (path, visible) in [
        (
            "/catalog".to_owned(),
            vec!["<script>window.__pwned=2</script>", name],
        ),
        ("/blocks".to_owned(), vec!["hostile-doc", name]),
        (
            format!("/blocks/{id}"),
            vec![
                "<img src=x onerror=window.__pwned=6>",
                "<script>window.__pwned=2</script>",
            ],
        ),
        (
            format!("/blocks/{id}/edit"),
            vec![
                "<img src=x onerror=window.__pwned=4>",
                "<script>window.__pwned=5</script>",
            ],
        ),
        (
            "/blocks/new/tricky-type".to_owned(),
            vec!["<img src=x onerror=window.__pwned=4>"],
        ),
    ] {
        b.goto(&path).await;
        let verdict = b
            .script(
                "return {
                    pwned: window.__pwned === undefined,
                    images: document.querySelectorAll('img[src=\"x\"]').length,
                    scripts: document.querySelectorAll('body script').length,
                    handlers: document.querySelectorAll('[onfocus], [onerror]').length,
                    js_links: document.querySelectorAll('a[href^=\"javascript\" i]').length,
                }",
            )
            .await;
        assert_eq!(
            verdict,
            json!({"pwned": true, "images": 0, "scripts": 0, "handlers": 0, "js_links": 0}),
            "hostile text on {path}: nothing of it became markup"
        );
        let text = b.main_text().await;
        for v in visible {
            assert!(
                text.contains(v),
                "hostile text on {path}: {v:?} is shown as text; the page shows: {text}"
            );
        }
    }
}

/// Step 15: sign-in, create and the block page work with scripts off.
async fn create_secret_without_javascript(b: &Browser, server: &Server) {
    b.goto("/catalog").await;
    b.click_and_load("a[aria-label=\"Add Secret\"]").await;
    b.wait_for_path("/blocks/new/secret").await;
    b.fill("#block-name", "course-db-password").await;
    assert_eq!(
        b.value("select[name=\"data.value#choice\"]")
            .await
            .as_deref(),
        Some("0"),
        "no script: secret text is the default kind of secret"
    );
    b.fill("input[name=\"data.value#a0\"]", DB_PASSWORD).await;
    save_new(b, "no script: the secret is created").await;
    assert_eq!(
        b.script("return document.querySelector('button.copy').hidden")
            .await,
        json!(true),
        "no script: console.js did not run (it unhides the Copy buttons), so scripts are off"
    );
    assert!(
        b.text("#snippet-rust")
            .await
            .contains("Secret::load(\"course-db-password\")"),
        "no script: the page shows the code"
    );
    let stored = server
        .document("secret", "course-db-password")
        .await
        .unwrap();
    assert_eq!(
        stored["data"]["value"],
        json!(DB_PASSWORD),
        "no script: value stored"
    );
}

/// Step 15 (cont.): registering a collection and a form with choices and rows, scripts off:
/// every alternative is shown, the choice decides which is read.
async fn create_connector_without_javascript(b: &Browser, server: &Server) {
    b.goto("/catalog").await;
    b.click_and_load("form[action=\"/catalog/register\"]:has(input[value=sqlalchemy]) button")
        .await;
    b.wait_for_path("/catalog").await;
    b.goto("/blocks/new/sqlalchemy-connector").await;
    let info = "data.connection_info#a0";
    assert!(
        b.displayed(&format!("select[name=\"{info}.driver#a1\"]"))
            .await,
        "no script: every alternative is shown"
    );
    b.fill("#block-name", "nojs-postgres").await;
    b.select(&format!("select[name=\"{info}.driver#choice\"]"), "1")
        .await;
    b.select(
        &format!("select[name=\"{info}.driver#a1\"]"),
        "postgresql+psycopg2",
    )
    .await;
    // Typed into an alternative that is not chosen: ignored.
    b.fill(&format!("input[name=\"{info}.driver#a2\"]"), "not-chosen")
        .await;
    for (field, value) in [("host", "localhost"), ("port", "5432")] {
        b.fill(&format!("input[name=\"{info}.{field}\"]"), value)
            .await;
    }
    // A dictionary row, added with the form's own button.
    b.select(&format!("select[name=\"{info}.query#choice\"]"), "0")
        .await;
    b.click_and_load(&format!("button[value=\"add:{info}.query#a0\"]"))
        .await;
    b.fill(&format!("input[name=\"{info}.query#a0#k0\"]"), "sslmode")
        .await;
    b.fill(&format!("input[name=\"{info}.query#a0#v0\"]"), "disable")
        .await;
    assert_eq!(
        b.value("#block-name").await.as_deref(),
        Some("nojs-postgres"),
        "no script: adding a row keeps what was typed"
    );
    save_new(b, "no script: the connector is created").await;
    let stored = server
        .document("sqlalchemy-connector", "nojs-postgres")
        .await
        .unwrap();
    assert_eq!(
        without_nulls(&stored["data"]["connection_info"]),
        json!({
            "driver": "postgresql+psycopg2",
            "host": "localhost",
            "port": 5432,
            "query": {"sslmode": "disable"},
        }),
        "no script: the chosen alternatives are stored, the others ignored"
    );

    // The Copy buttons need the script; without it they must not show.
    b.goto(&format!("/blocks/{}", stored["id"].as_str().unwrap()))
        .await;
    assert!(
        !b.displayed("button.copy").await,
        "no script: a block page shows no Copy button that cannot work (button.copy[hidden] is displayed)"
    );
}

// ---------------------------------------------------------------------------------------
// Another origin
// ---------------------------------------------------------------------------------------

/// A tiny site on another port answering every request with one HTML page.
struct StaticSite {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StaticSite {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StaticSite {
    async fn start(page: String) -> Self {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let page = page.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                        page.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self { port, task }
    }
}
