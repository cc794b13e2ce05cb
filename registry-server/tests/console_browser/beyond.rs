//! Beyond Prefect's UI, in the browser: a block's history with a diff and a rollback,
//! revealing a secret (audited, hidden again) and replacing one without `read-secrets`,
//! duplicating a block and comparing the two, "Create and add another", the dashboard.

use reqwest::Method;
use serde_json::{Value, json};

use super::axe::Audit;
use super::support::{Browser, Server};
use super::{api_secret_block, assert_absent, save_edit, sign_in, sign_out};

/// The secret's first and second values.
const FIRST: &str = "canary-history-first-4b2e";
const SECOND: &str = "canary-history-second-90aa";
/// What a write-only token replaces it with.
const REPLACED: &str = "canary-history-replaced-1f3c";

/// The secret's value as stored, read with the admin token.
async fn stored_value(server: &Server, id: &str) -> Value {
    let stored = server
        .api(
            Method::GET,
            &format!("/api/block_documents/{id}?include_secrets=true"),
            None,
        )
        .await;
    stored["data"]["value"].clone()
}

/// The block's versions, newest first.
async fn versions_of(server: &Server, id: &str) -> Value {
    server
        .api(
            Method::GET,
            &format!("/api/block_documents/{id}/versions"),
            None,
        )
        .await
}

/// History: versions with their writers, a diff that says only "changed" for the secret,
/// then a rollback to version 1 after a confirmation that shows what it changes.
pub(crate) async fn history_diff_and_rollback(
    b: &Browser,
    server: &Server,
    audit: &mut Audit,
) -> String {
    let id = api_secret_block(server, "warehouse-password", FIRST).await;
    server
        .api(
            Method::PATCH,
            &format!("/api/block_documents/{id}"),
            Some(json!({"data": {"value": SECOND}})),
        )
        .await;
    b.goto(&format!("/blocks/{id}")).await;
    b.click_and_load(&format!("a[href=\"/blocks/{id}/history\"]"))
        .await;
    assert!(
        b.exists("table.versions").await,
        "history: the versions table"
    );
    b.select("#from", "1").await;
    b.select("#to", "2").await;
    b.click_and_load("form.search button[type=submit]").await;
    assert!(
        b.path().await.contains("from=1"),
        "history: the diff is a link"
    );
    let diff = b.text("table.diff").await;
    assert!(
        diff.contains("changed"),
        "history: the secret changed: {diff}"
    );
    audit.check(b, "history with a diff").await;
    b.screenshot("history").await;
    assert_absent(&b.source().await, &[FIRST, SECOND], "history");

    b.click_and_load(&format!("a[href=\"/blocks/{id}/history/1/rollback\"]"))
        .await;
    assert!(
        b.text("table.diff").await.contains("will change"),
        "rollback: the diff it applies"
    );
    audit.check(b, "rollback confirmation").await;
    assert_absent(&b.source().await, &[FIRST, SECOND], "rollback confirmation");
    b.click_and_load("form[action$=\"/rollback\"] button.primary")
        .await;
    b.wait_for_path(&format!("/blocks/{id}?saved=rolled-back"))
        .await;
    assert_eq!(
        stored_value(server, &id).await,
        json!(FIRST),
        "rollback: version 1's secret is back"
    );
    let versions = versions_of(server, &id).await;
    assert_eq!(versions[0]["version"], json!(3));
    assert!(
        versions[0]["token_id"].is_string(),
        "rollback: the writer is recorded"
    );

    // Destroying version 2 (admin), after a confirmation.
    b.goto(&format!("/blocks/{id}/history")).await;
    b.click_and_load(&format!("a[href=\"/blocks/{id}/history/2/destroy\"]"))
        .await;
    audit.check(b, "destroy a version").await;
    b.click_and_load("form[action$=\"/destroy\"] button.danger")
        .await;
    b.wait_for_path(&format!("/blocks/{id}/history?destroyed=2"))
        .await;
    assert!(b.main_text().await.contains("Version 2 was destroyed."));
    let versions = versions_of(server, &id).await;
    let left: Vec<i64> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(left, [3, 1], "destroy: version 2 is gone");
    id
}

/// Reveal: shown in place for an admin (read-secrets), audited by field, gone again when
/// hidden, after 30 seconds, and when the page is left.
pub(crate) async fn reveal_and_hide(b: &Browser, server: &Server, id: &str, audit: &mut Audit) {
    b.goto(&format!("/blocks/{id}")).await;
    assert!(!b.displayed(".revealed").await, "reveal: nothing shown yet");
    b.click("form.reveal button[type=submit]").await;
    let shown = b.text(".revealed code").await;
    assert_eq!(shown, FIRST, "reveal: the value in place");
    audit.check(b, "block with a revealed secret").await;
    b.click(".revealed button.link").await;
    assert!(
        !b.exists(".revealed code").await,
        "reveal: Hide removes the value"
    );
    // Revealed again, then left: the value is not kept for Back.
    b.click("form.reveal button[type=submit]").await;
    b.find(".revealed code").await;
    b.goto("/blocks").await;
    b.script("history.back(); return true;").await;
    b.wait_for_path(&format!("/blocks/{id}")).await;
    b.find("form.reveal").await;
    assert!(
        !b.source().await.contains(FIRST),
        "reveal: gone after leaving the page"
    );
    // And on its own after 30 seconds.
    b.click("form.reveal button[type=submit]").await;
    b.find(".revealed code").await;
    let started = std::time::Instant::now();
    while b.exists(".revealed code").await {
        assert!(
            started.elapsed().as_secs() < 40,
            "reveal: still shown after 40 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(started.elapsed().as_secs() >= 25, "reveal: hidden too soon");
    assert_absent(&b.source().await, &[FIRST], "reveal: after the timeout");

    let records = server
        .api(
            Method::GET,
            "/api/audit?action=console%20POST%20/blocks/%7Bid%7D/reveal",
            None,
        )
        .await;
    let records = records["records"].as_array().unwrap();
    assert_eq!(
        records.len(),
        3,
        "reveal: one record per reveal: {records:?}"
    );
    for r in records {
        assert_eq!(
            r["target"],
            json!(format!("/api/block_documents/{id} field=value"))
        );
        assert_eq!(r["outcome"], json!("ok"));
    }
    assert!(!serde_json::to_string(records).unwrap().contains(FIRST));
}

/// Without read-secrets: no reveal, the field says it is write-only, and Edit replaces it.
pub(crate) async fn replace_without_read_secrets(
    b: &Browser,
    server: &Server,
    id: &str,
    audit: &mut Audit,
) {
    sign_out(b).await;
    let (_, writer) = server.token("deployer", &["write"]).await;
    sign_in(b, &writer, &format!("/blocks/{id}")).await;
    assert!(
        !b.exists("form.reveal").await,
        "write-only: no reveal button"
    );
    assert!(
        b.main_text().await.contains("write-only"),
        "write-only: the field says so"
    );
    audit.check(b, "block for a write-only token").await;
    b.click_and_load(&format!("a[href=\"/blocks/{id}/edit\"]"))
        .await;
    b.fill("input[name=\"data.value#a0\"]", REPLACED).await;
    save_edit(b, id).await;
    assert_eq!(
        stored_value(server, id).await,
        json!(REPLACED),
        "write-only: replaced"
    );
    assert_absent(
        &b.source().await,
        &[FIRST, SECOND, REPLACED],
        "write-only: block page",
    );
}

/// Duplicate (secrets copied on the server), then compare the two side by side (as a token
/// without read-secrets: the secrets are not compared).
pub(crate) async fn duplicate_and_compare(
    b: &Browser,
    server: &Server,
    id: &str,
    audit: &mut Audit,
) {
    b.goto(&format!("/blocks/{id}")).await;
    b.click_and_load(&format!("a[href=\"/blocks/{id}/duplicate\"]"))
        .await;
    audit.check(b, "duplicate").await;
    b.fill("#block-name", "warehouse-password-staging").await;
    b.click_and_load("form.form-panel button.primary").await;
    let at = b.wait_for_path("/blocks/").await;
    assert!(
        at.ends_with("?saved=duplicated"),
        "duplicate: at the copy, got {at}"
    );
    let copy = server
        .document("secret", "warehouse-password-staging")
        .await
        .expect("the copy");
    assert_eq!(
        copy["data"]["value"],
        json!(REPLACED),
        "duplicate: the secret came along"
    );
    assert_absent(&b.source().await, &[REPLACED], "duplicate: the copy's page");

    b.goto(&format!("/blocks/{id}/compare")).await;
    b.select("#with", copy["id"].as_str().unwrap()).await;
    b.click_and_load("form.search button[type=submit]").await;
    let table = b.text("table.diff").await;
    assert!(
        table.contains("not compared") && !table.contains("the same"),
        "compare: a write-only token is not told whether the secrets are equal: {table}"
    );
    audit.check(b, "compare").await;
    assert_absent(&b.source().await, &[FIRST, SECOND, REPLACED], "compare");
}

/// "Create and add another": back at an empty form that names what was created.
pub(crate) async fn create_and_add_another(b: &Browser, audit: &mut Audit) {
    b.goto("/blocks/new/secret").await;
    b.fill("#block-name", "first-of-many").await;
    b.fill("input[name=\"data.value#a0\"]", "v").await;
    b.click_and_load("button[name=\"_then\"]").await;
    b.wait_for_path("/blocks/new/secret?added=").await;
    assert!(b.main_text().await.contains("Created first-of-many."));
    assert_eq!(b.value("#block-name").await.as_deref(), Some(""));
    audit.check(b, "new form after add another").await;
}

/// The dashboard: counts, the latest changes, nothing needing a look.
pub(crate) async fn dashboard(b: &Browser, audit: &mut Audit) {
    b.goto("/").await;
    b.wait_for_path("/").await;
    let text = b.main_text().await;
    assert!(
        text.contains("Latest changes") && text.contains("first-of-many"),
        "dashboard: {text}"
    );
    assert!(text.contains("Secret"), "dashboard: counts by type: {text}");
    audit.check(b, "dashboard").await;
}
