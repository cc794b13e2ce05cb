//! The admin pages in a real browser: an administrator makes a token and sees its secret
//! once, revokes it (its session in a second browser ends), filters and downloads the
//! audit log, rotates the data key and follows the re-encryption to its end, and changes
//! the version retention. Every page is checked with axe-core.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use super::axe::Audit;
use super::support::{Browser, Driver, Server};

/// The value of the secret blocks re-encrypted by the rotation: never on a page.
const ROTATED: &str = "canary-admin-rotated-93be";

/// The submit buttons of the create-token form, the audit log's filters and the settings.
const CREATE_TOKEN: &str = "form[action=\"/admin/tokens\"] button.primary[type=submit]";
const FILTER: &str = "form.filters button.primary[type=submit]";
const SAVE_SETTINGS: &str = "form[action=\"/admin/settings\"] button.primary[type=submit]";

/// Every admin step, in order.
pub(crate) async fn run(driver: &Driver, b: &Browser, server: &Server, audit: &mut Audit) {
    for i in 0..25 {
        super::api_secret_block(server, &format!("rotated-{i:02}"), ROTATED).await;
    }
    super::sign_in(b, &server.admin, "/admin/tokens").await;
    let (token_id, token) = create_token(b, audit).await;
    revoke_token(driver, b, server, &token_id, &token, audit).await;
    audit_filters_and_download(b, &token_id, audit).await;
    rotate_keys(b, server, audit).await;
    retention(b, server, audit).await;
}

/// Tokens: the list, the create form, the secret shown once with a copy button.
async fn create_token(b: &Browser, audit: &mut Audit) -> (String, String) {
    b.goto("/admin/tokens").await;
    audit.check(b, "admin: tokens").await;
    assert_eq!(
        b.attr("header nav a[href=\"/admin/tokens\"]", "aria-current")
            .await
            .as_deref(),
        Some("page"),
        "tokens: the Admin entry of the main navigation is current"
    );
    b.click_and_load("a[href=\"/admin/tokens/new\"]").await;
    b.wait_for_path("/admin/tokens/new").await;
    audit.check(b, "admin: create token").await;

    // Nothing chosen: the messages at the fields.
    b.click("#scope-read").await;
    b.click_and_load(CREATE_TOKEN).await;
    assert!(
        b.invalid("#name").await,
        "create token: an empty name is marked at its field"
    );
    assert!(
        b.text("#scopes-error").await.contains("at least one"),
        "create token: no scope is said at the scopes"
    );
    audit.check(b, "admin: create token (errors)").await;

    b.fill("#name", "course-ci").await;
    b.click("#scope-write").await;
    b.fill("#expires_days", "30").await;
    b.click_and_load(CREATE_TOKEN).await;
    let token = b.text("#new-token").await;
    assert!(
        token.starts_with("blk_"),
        "create token: the new token is shown, got {token}"
    );
    assert!(
        b.displayed("button[data-copy=\"new-token\"]").await,
        "create token: the copy button shows with JavaScript"
    );
    assert!(
        b.main_text().await.contains("only time it is shown"),
        "create token: the page warns the secret is shown once"
    );
    audit.check(b, "admin: token created").await;
    let token_id = b.text("dl.values dd code").await.trim().to_owned();

    b.goto("/admin/tokens").await;
    let source = b.source().await;
    assert!(
        source.contains("course-ci"),
        "tokens: the new token is listed"
    );
    assert!(
        !source.contains(&token),
        "tokens: the list never holds a secret"
    );
    (token_id, token)
}

/// Tokens: revoking with a confirmation ends the token's session in another browser.
async fn revoke_token(
    driver: &Driver,
    b: &Browser,
    server: &Server,
    token_id: &str,
    token: &str,
    audit: &mut Audit,
) {
    let other = driver.browser(&server.base, true).await;
    super::sign_in(&other, token, "/blocks").await;

    b.click_and_load(&format!("a[href=\"/admin/tokens/{token_id}/revoke\"]"))
        .await;
    audit.check(b, "admin: revoke token").await;
    b.click_and_load("form[action$=\"/revoke\"] button.danger[type=submit]")
        .await;
    b.wait_for_path("/admin/tokens?revoked=").await;
    assert!(
        b.main_text().await.contains("is revoked"),
        "revoke: the list says the token is revoked"
    );
    assert_eq!(
        b.text(&format!("#t-{token_id} .badge.revoked")).await,
        "revoked",
        "revoke: the token is marked revoked"
    );

    other.goto("/blocks").await;
    let at = other.wait_for_path("/sign-in").await;
    assert!(
        at.contains("ended=1"),
        "revoke: the revoked token's console session ends, got {at}"
    );
    assert!(
        other.main_text().await.contains("session has ended"),
        "revoke: the other browser is told its session ended"
    );
    other.close().await;
    let answer = server
        .call_as(token, Method::GET, "/api/block_types", None)
        .await;
    assert_eq!(
        answer.status, 401,
        "revoke: the token no longer opens the API"
    );
}

/// Audit log: filters, a field error, the cursor, and a CSV download of the filter.
async fn audit_filters_and_download(b: &Browser, token_id: &str, audit: &mut Audit) {
    b.goto("/admin/audit").await;
    audit.check(b, "admin: audit log").await;
    b.screenshot("audit").await;

    b.select("#token", token_id).await;
    b.click_and_load(FILTER).await;
    let at = b.wait_for_path("/admin/audit?").await;
    assert!(at.contains(&format!("token={token_id}")), "audit: {at}");
    let text = b.text("#audit-records tbody").await;
    assert!(
        text.contains("console POST /sign-in"),
        "audit: the revoked token's sign-in is listed: {text}"
    );
    let tokens = b
        .script("return [...document.querySelectorAll('#audit-records tbody tr td:nth-child(3)')].map(td => td.textContent.trim())")
        .await;
    let tokens: Vec<&str> = tokens
        .as_array()
        .expect("the token cells")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        !tokens.is_empty() && tokens.iter().all(|t| *t == "course-ci"),
        "audit: only that token's records: {tokens:?}"
    );
    audit.check(b, "admin: audit log (filtered)").await;

    // The filtered download, fetched as the link would.
    let csv = b
        .script(
            "return fetch(document.querySelector('a[href^=\"/admin/audit/download?format=csv\"]').href).then(r => r.text())",
        )
        .await;
    let csv = csv.as_str().expect("the CSV text");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("seq,at,token_id,token_name,action,target,outcome,status,request_id"),
        "download: a CSV header"
    );
    assert_eq!(
        lines.len(),
        tokens.len() + 1,
        "download: the filtered records, as listed: {csv}"
    );
    assert!(lines[1].contains(token_id) && lines[1].contains("\"course-ci\""));

    b.fill("#since", "last tuesday").await;
    b.click_and_load(FILTER).await;
    assert!(
        b.invalid("#since").await,
        "audit: a bad time is marked at its field"
    );
    assert!(b.text("#since-error").await.contains("not a time"));
    audit.check(b, "admin: audit log (bad filter)").await;
}

/// Keys: the master key's origin, rotation with a confirmation, the progress to the end.
async fn rotate_keys(b: &Browser, server: &Server, audit: &mut Audit) {
    b.goto("/admin/keys").await;
    audit.check(b, "admin: keys").await;
    let main = b.main_text().await;
    assert!(
        main.contains("master.key"),
        "keys: the page says the master key came from the key file: {main}"
    );
    let before = server.api(Method::GET, "/api/keys", None).await;
    b.click_and_load("a[href=\"/admin/keys/rotate\"]").await;
    audit.check(b, "admin: rotate keys").await;
    b.click_and_load("form[action=\"/admin/keys/rotate\"] button.danger[type=submit]")
        .await;
    b.wait_for_path("/admin/keys/progress").await;
    audit.check(b, "admin: re-encryption").await;
    // The page's script follows the progress until it is done, without a reload.
    let started = Instant::now();
    while b.attr("#reencryption", "data-done").await.as_deref() != Some("true") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "keys: the progress did not reach done: {}",
            b.main_text().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = b.text("#reencryption-text").await;
    assert!(text.starts_with("Done"), "keys: {text}");
    let bar = b
        .script("const p = document.getElementById('reencryption-bar'); return [p.value, p.max]")
        .await;
    assert_eq!(bar, json!([25, 25]), "keys: the bar is full");
    assert!(!b.source().await.contains(ROTATED));
    let after = server.api(Method::GET, "/api/keys", None).await;
    assert_ne!(
        before["active"], after["active"],
        "keys: a new key is active"
    );
    b.goto("/admin/keys").await;
    assert!(
        b.exists("#keys .badge.key-destroyed").await,
        "keys: the old key is destroyed once nothing needs it"
    );
    let value = server
        .document("secret", "rotated-07")
        .await
        .expect("a rotated block");
    assert_eq!(
        value["data"]["value"],
        json!(ROTATED),
        "keys: secrets still read"
    );
}

/// Settings: a bad retention at its field, then a good one saved.
async fn retention(b: &Browser, server: &Server, audit: &mut Audit) {
    b.goto("/admin/settings").await;
    audit.check(b, "admin: settings").await;
    b.fill("#retention", "0").await;
    b.click_and_load(SAVE_SETTINGS).await;
    assert!(
        b.invalid("#retention").await,
        "settings: a retention of 0 is refused at its field"
    );
    audit.check(b, "admin: settings (errors)").await;
    b.fill("#retention", "5").await;
    b.click_and_load(SAVE_SETTINGS).await;
    b.wait_for_path("/admin/settings?saved=1").await;
    assert!(b.main_text().await.contains("settings are saved"));
    let settings = server.api(Method::GET, "/api/settings", None).await;
    assert_eq!(
        settings["retention"],
        json!(5),
        "settings: the retention is stored"
    );
}
