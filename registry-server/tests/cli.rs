//! The `blocks` command as a user drives it: a server on a free port with a temporary
//! `$BLOCKS_HOME`, then `register`, `create`, `inspect`, `ls`, tokens, keys, the audit log,
//! and the error paths with their exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::Server;
use serde_json::Value;

const CANARY: &str = "canary-cli-4e1a";

/// What of the caller's environment a `blocks` run must not see besides
/// [`common::SERVER_ENV`]: an editor, the keys of export and rotation, a CA.
const CLI_ENV: [&str; 6] = [
    "VISUAL",
    "EDITOR",
    "BLOCKS_EXPORT_PASSPHRASE",
    "BLOCKS_NEW_MASTER_KEY",
    "BLOCKS_NEW_PASSPHRASE",
    "BLOCKS_CA_CERT",
];

/// Clears what the caller's environment could change: another database, key, editor.
fn isolate(cmd: &mut Command) {
    for var in common::SERVER_ENV.iter().chain(&CLI_ENV) {
        cmd.env_remove(var);
    }
}

fn serve(home: &Path) -> Server {
    Server::start(home, &CLI_ENV, &[], |_| {})
}

/// `blocks ARGS` with `$BLOCKS_HOME` (and extra environment), ready to run.
fn blocks_command(home: &Path, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_blocks"));
    cmd.args(args);
    environment(&mut cmd, home, env);
    cmd
}

/// The environment of a `blocks` run: `$BLOCKS_HOME`, nothing of the caller's, `env`.
fn environment(cmd: &mut Command, home: &Path, env: &[(&str, &str)]) {
    cmd.env("BLOCKS_HOME", home)
        .env("BLOCKS_LOG", "warn")
        .env_remove("BLOCKS_API_URL")
        .env_remove("BLOCKS_API_KEY")
        .env_remove("PREFECT_API_URL")
        .env_remove("PREFECT_API_KEY")
        .env_remove("BLOCKS_IDENTITY_TOKEN_FILE")
        .env_remove("BLOCKS_ROLE");
    isolate(cmd);
    for (k, v) in env {
        cmd.env(k, v);
    }
}

/// Runs `blocks ARGS` with `$BLOCKS_HOME` (and extra environment); returns the output.
fn blocks(home: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    blocks_command(home, env, args).output().unwrap()
}

/// Runs `blocks ARGS` with `input` on its standard input.
fn blocks_with_stdin(home: &Path, args: &[&str], input: &str) -> Output {
    use std::io::Write as _;
    let mut child = blocks_command(home, &[], args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Writes an executable shell script.
fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
fn fails(out: &Output, code: i32, needle: &str) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(code), "{text}");
    assert!(text.contains(needle), "expected {needle:?} in: {text}");
    assert!(!text.contains(CANARY), "a secret in an error: {text}");
}

/// A temporary directory and `blocks serve` with `$BLOCKS_HOME` at its `home`.
fn serve_in_tempdir() -> (tempfile::TempDir, PathBuf, Server) {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let server = serve(&home);
    (dir, home, server)
}

/// Writes `text` to the file `name` in `dir`; its path.
fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The environment of a client of `api` (`http://…/api`) signing in with `token`.
fn signed_in<'a>(api: &'a str, token: &'a str) -> [(&'a str, &'a str); 2] {
    [("BLOCKS_API_URL", api), ("BLOCKS_API_KEY", token)]
}

/// `blocks --json ARGS` (with extra environment), which must succeed; its output.
#[track_caller]
fn json_ok(home: &Path, env: &[(&str, &str)], args: &[&str]) -> Value {
    let args = [&["--json"][..], args].concat();
    serde_json::from_str(&ok(&blocks(home, env, &args))).unwrap()
}

/// `blocks inspect ADDRESS --show-secrets` (with extra environment), which must succeed.
#[track_caller]
fn show_secrets(home: &Path, env: &[(&str, &str)], address: &str) -> String {
    ok(&blocks(home, env, &["inspect", address, "--show-secrets"]))
}

/// `blocks create ADDRESS --data value=VALUE`, which must succeed.
#[track_caller]
fn create_secret(home: &Path, address: &str, value: &str) {
    ok(&blocks(
        home,
        &[],
        &["create", address, "--data", &format!("value={value}")],
    ));
}

/// The course's bucket, `gcs-bucket/zoom-gcs`, using `gcp-credentials/zoom-gcp-creds`.
#[track_caller]
fn create_zoom_bucket(home: &Path) {
    ok(&blocks(
        home,
        &[],
        &[
            "create",
            "gcs-bucket/zoom-gcs",
            "--data",
            "bucket=dtc-data-lake",
            "--ref",
            "gcp_credentials=gcp-credentials/zoom-gcp-creds",
        ],
    ));
}

/// `blocks token create --offline --name NAME --scope SCOPE`: a token made in the store
/// itself.
fn offline_token(home: &Path, name: &str, scope: &str) -> Output {
    blocks(
        home,
        &[],
        &[
            "token",
            "create",
            "--offline",
            "--name",
            name,
            "--scope",
            scope,
        ],
    )
}

#[test]
fn a_user_registers_creates_inspects_and_manages_tokens() {
    let (dir, home, server) = serve_in_tempdir();
    let home = home.as_path();

    let out = ok(&blocks(home, &[], &["register", "gcp"]));
    assert!(
        out.contains("gcs-bucket") && out.contains("gcp-credentials"),
        "{out}"
    );
    let types = ok(&blocks(home, &[], &["type", "ls"]));
    assert!(
        types.contains("gcs-bucket") && types.contains("secret"),
        "{types}"
    );

    let creds = write_file(
        dir.path(),
        "creds.json",
        &format!(
            r#"{{"service_account_info": {{"type": "service_account", "private_key": "{CANARY}"}}, "project": "dtc-de"}}"#
        ),
    );
    let created = json_ok(
        home,
        &[],
        &[
            "create",
            "gcp-credentials/zoom-gcp-creds",
            "--data",
            &format!("@{}", creds.display()),
        ],
    );
    assert!(created["id"].is_string());
    create_zoom_bucket(home);

    let shown = ok(&blocks(home, &[], &["inspect", "gcs-bucket/zoom-gcs"]));
    assert!(
        shown.contains("dtc-data-lake") && shown.contains("dtc-de"),
        "{shown}"
    );
    assert!(
        !shown.contains(CANARY),
        "secrets are masked by default: {shown}"
    );
    let secrets = show_secrets(home, &[], "gcs-bucket/zoom-gcs");
    assert!(secrets.contains(CANARY), "{secrets}");

    let listed = json_ok(home, &[], &["ls"]);
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert!(
        names.contains(&"zoom-gcs") && names.contains(&"zoom-gcp-creds"),
        "{names:?}"
    );
    assert!(!listed.to_string().contains(CANARY));
    let only = ok(&blocks(home, &[], &["ls", "--type", "gcs-bucket"]));
    assert!(
        only.contains("zoom-gcs") && !only.contains("zoom-gcp-creds"),
        "{only}"
    );

    // Tokens: a read-only one cannot create, and is refused once revoked.
    let token = json_ok(
        home,
        &[],
        &["token", "create", "--name", "dashboard", "--scope", "read"],
    );
    let read_token = token["token"].as_str().unwrap().to_owned();
    let api = format!("http://{}/api", server.addr);
    let as_reader = signed_in(&api, &read_token);
    ok(&blocks(home, &as_reader, &["ls"]));
    fails(
        &blocks(
            home,
            &as_reader,
            &["create", "secret/x", "--data", "value=v"],
        ),
        1,
        "write",
    );
    fails(
        &blocks(
            home,
            &as_reader,
            &["inspect", "gcs-bucket/zoom-gcs", "--show-secrets"],
        ),
        1,
        "read-secrets",
    );
    let tokens = ok(&blocks(home, &[], &["token", "ls"]));
    assert!(
        tokens.contains("dashboard") && !tokens.contains(&read_token),
        "{tokens}"
    );
    ok(&blocks(
        home,
        &[],
        &["token", "revoke", token["id"].as_str().unwrap()],
    ));
    fails(&blocks(home, &as_reader, &["ls"]), 1, "revoked");

    // Keys and the audit log.
    let status = ok(&blocks(home, &[], &["key", "status"]));
    assert!(status.contains("active"), "{status}");
    let rotated = json_ok(home, &[], &["key", "rotate"]);
    assert!(rotated["active"].is_string());
    // The command waited for re-encryption: nothing is left on the old key.
    let status = json_ok(home, &[], &["key", "status"]);
    for key in status["keys"].as_array().unwrap() {
        if key["id"] != rotated["active"] {
            assert_eq!(key["versions"], 0, "{status}");
        }
    }
    let audit = ok(&blocks(home, &[], &["audit", "--action", "POST"]));
    assert!(audit.contains("/api/block_documents/"), "{audit}");
    assert!(!audit.contains(CANARY));

    // Edit in $EDITOR: the secret stays, the reference stays, the change lands.
    let edit_with = |editor: &str| {
        blocks(
            home,
            &[("EDITOR", editor)],
            &["edit", "gcs-bucket/zoom-gcs"],
        )
    };
    let edit = ok(&edit_with("sed -i s/dtc-data-lake/edited-lake/"));
    assert!(edit.contains("UPDATED"), "{edit}");
    let shown = show_secrets(home, &[], "gcs-bucket/zoom-gcs");
    assert!(
        shown.contains("edited-lake") && shown.contains(CANARY),
        "{shown}"
    );
    // An editor that changes nothing changes nothing.
    let same = ok(&edit_with("true"));
    assert!(same.contains("UNCHANGED"), "{same}");
    // Someone else's change while the editor is open: refused, theirs kept.
    let racer = dir.path().join("racer.sh");
    script(
        &racer,
        &format!(
            "sed -i s/edited-lake/mine/ \"$1\"\nBLOCKS_HOME='{}' '{}' rollback gcs-bucket/zoom-gcs 1 >/dev/null\n",
            home.display(),
            env!("CARGO_BIN_EXE_blocks")
        ),
    );
    fails(
        &edit_with(racer.to_str().unwrap()),
        1,
        "changed by someone else",
    );
    let shown = ok(&blocks(home, &[], &["inspect", "gcs-bucket/zoom-gcs"]));
    assert!(
        shown.contains("dtc-data-lake") && !shown.contains("mine"),
        "{shown}"
    );
    let history = ok(&blocks(home, &[], &["history", "gcs-bucket/zoom-gcs"]));
    assert_eq!(history.lines().count(), 1 + 3, "{history}");

    ok(&blocks(home, &[], &["delete", "gcs-bucket/zoom-gcs"]));
    fails(
        &blocks(home, &[], &["inspect", "gcs-bucket/zoom-gcs"]),
        1,
        "no block gcs-bucket/zoom-gcs",
    );
    drop(server);
}

#[test]
fn errors_have_clear_messages_and_exit_codes() {
    let (dir, home, server) = serve_in_tempdir();
    let home = home.as_path();
    ok(&blocks(home, &[], &["register", "--all"]));

    for (args, code, needle) in [
        (&["frobnicate"][..], 2, "unrecognized subcommand"),
        (&["inspect"][..], 2, "ADDRESS"),
        (&["inspect", "no-slash"][..], 2, "SLUG/NAME"),
        (&["inspect", "secret/nope"][..], 1, "no block secret/nope"),
        (
            &["create", "gcs-bucket/bad", "--data", "bucket:=5"][..],
            1,
            "does not fit gcs-bucket",
        ),
        (
            &["create", "nope/x", "--data", "a=1"][..],
            1,
            "no block type nope",
        ),
        (
            &["create", "secret/x", "--data", "not-a-pair"][..],
            2,
            "key=value",
        ),
        (&["create", "secret/x"][..], 2, "no data"),
    ] {
        fails(&blocks(home, &[], args), code, needle);
    }
    // key=value is text even when it looks like a number; key:=json is JSON.
    create_secret(home, "secret/digits", "12345678901234567890123");
    let digits = show_secrets(home, &[], "secret/digits");
    assert!(digits.contains("12345678901234567890123"), "{digits}");
    ok(&blocks(
        home,
        &[],
        &["create", "json/j", "--data", "value:={\"a\": [1, 2]}"],
    ));
    let j = json_ok(home, &[], &["inspect", "json/j"]);
    assert_eq!(j["data"]["value"], serde_json::json!({"a": [1, 2]}));
    fails(
        &blocks(home, &[], &["create", "json/k", "--data", "value:={oops"]),
        2,
        "not JSON",
    );
    // Help never shows the values of the environment variables it reads.
    for args in [&["import-prefect", "--help"][..], &["serve", "--help"][..]] {
        let out = blocks(
            home,
            &[
                ("PREFECT_SOURCE_API_KEY", CANARY),
                ("BLOCKS_DATABASE_URL", CANARY),
            ],
            args,
        );
        assert!(out.status.success());
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains(CANARY),
            "{args:?}"
        );
    }
    fails(
        &blocks(
            home,
            &[],
            &[
                "create",
                "gcs-bucket/x",
                "--ref",
                "gcp_credentials=gcp-credentials/missing",
            ],
        ),
        1,
        "no block on the server for --ref gcp_credentials",
    );
    // A conflict names itself.
    create_secret(home, "secret/once", CANARY);
    fails(
        &blocks(
            home,
            &[],
            &["create", "secret/once", "--data", "value=again"],
        ),
        1,
        "already exists",
    );
    // A custom block type from a file, checked before it is sent.
    let custom = write_file(
        dir.path(),
        "custom.json",
        r#"{"block_type": {"name": "Snowflake Login", "slug": "snowflake-login", "description": "A warehouse login"},
            "fields": {"title": "SnowflakeLogin", "type": "object",
                       "properties": {"account": {"type": "string"}, "password": {"type": "string", "format": "password", "writeOnly": true}},
                       "required": ["account", "password"], "secret_fields": ["password"]},
            "version": "1.0"}"#,
    );
    let file = custom.to_str().unwrap();
    let registered = ok(&blocks(home, &[], &["register", "--file", file]));
    assert!(registered.contains("snowflake-login"), "{registered}");
    ok(&blocks(
        home,
        &[],
        &[
            "create",
            "snowflake-login/prod",
            "--data",
            "account=acme",
            &format!("password={CANARY}"),
        ],
    ));
    let shown = ok(&blocks(home, &[], &["inspect", "snowflake-login/prod"]));
    assert!(shown.contains("acme") && !shown.contains(CANARY), "{shown}");
    fails(
        &blocks(
            home,
            &[],
            &["create", "snowflake-login/bad", "--data", "account=acme"],
        ),
        1,
        "password",
    );
    for (bad, needle) in [
        (
            r#"{"block_type": {"name": "X", "slug": "Bad Slug"}, "fields": {"type": "object"}}"#,
            "slug",
        ),
        (
            r#"{"block_type": {"name": "X", "slug": "x"}, "fields": {"type": "object", "properties": {"a": {}}, "secret_fields": ["nope"]}}"#,
            "not a property",
        ),
        (
            r#"{"block_type": {"name": "X", "slug": "x"}, "fields": {"type": 5}}"#,
            "not a valid JSON Schema",
        ),
        (
            r#"{"block_type": {"name": "X", "slug": "x"}}"#,
            "not a block type definition",
        ),
    ] {
        std::fs::write(&custom, bad).unwrap();
        fails(&blocks(home, &[], &["register", "--file", file]), 1, needle);
    }
    fails(&blocks(home, &[], &["register"]), 2, "required");
    // Metadata of an existing type changes only when asked.
    let changed = r#"{"block_type": {"name": "Snowflake Login", "slug": "snowflake-login", "description": "Updated"},
        "fields": {"title": "SnowflakeLogin", "type": "object",
                   "properties": {"account": {"type": "string"}, "password": {"type": "string", "format": "password", "writeOnly": true}},
                   "required": ["account", "password"], "secret_fields": ["password"]},
        "version": "1.0"}"#;
    std::fs::write(&custom, changed).unwrap();
    let described = |home: &Path| -> String {
        let ty = json_ok(home, &[], &["type", "inspect", "snowflake-login"]);
        ty["block_type"]["description"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    ok(&blocks(home, &[], &["register", "--file", file]));
    assert_eq!(described(home), "A warehouse login");
    ok(&blocks(
        home,
        &[],
        &["register", "--file", file, "--update-metadata"],
    ));
    assert_eq!(described(home), "Updated");
    // A type in use cannot be deleted; once unused it can.
    fails(
        &blocks(home, &[], &["type", "delete", "snowflake-login"]),
        1,
        "snowflake-login/prod",
    );
    ok(&blocks(home, &[], &["delete", "snowflake-login/prod"]));
    ok(&blocks(home, &[], &["type", "delete", "snowflake-login"]));
    fails(
        &blocks(home, &[], &["type", "inspect", "snowflake-login"]),
        1,
        "no block type snowflake-login",
    );

    let key = json_ok(home, &[], &["key", "generate"]);
    assert_eq!(
        key["master_key"].as_str().unwrap().len(),
        44,
        "32 bytes in base64"
    );
    let script = ok(&blocks(home, &[], &["completions", "bash"]));
    assert!(script.contains("blocks"), "{script}");

    // The server gone: the URL and where it came from.
    drop(server);
    fails(
        &blocks(home, &[], &["ls"]),
        1,
        "cannot reach the blocks server",
    );
    // No configuration at all.
    let empty = dir.path().join("empty");
    fails(&blocks(&empty, &[], &["ls"]), 1, "BLOCKS_API_URL");
}

#[test]
fn the_master_key_changes_offline_and_the_store_stays_readable() {
    let (dir, home, server) = serve_in_tempdir();
    let home = home.as_path();
    create_secret(home, "secret/s", CANARY);
    // While a server serves the embedded store: refused.
    let key = json_ok(home, &[], &["key", "generate"]);
    let new_key = key["master_key"].as_str().unwrap().to_owned();
    let new_master = [("BLOCKS_NEW_MASTER_KEY", new_key.as_str())];
    fails(
        &blocks(home, &new_master, &["key", "change-master"]),
        1,
        "another blocks server",
    );
    drop(server);
    // A database that is not a blocks store is refused, and left as it was.
    let elsewhere = dir.path().join("elsewhere.db");
    let url = format!("sqlite://{}", elsewhere.display());
    fails(
        &blocks(
            home,
            &new_master,
            &["key", "change-master", "--database-url", &url],
        ),
        1,
        "not a blocks store",
    );
    assert!(!elsewhere.exists());
    // No new key given: says how to give one.
    fails(
        &blocks(home, &[], &["key", "change-master"]),
        1,
        "BLOCKS_NEW_MASTER_KEY",
    );
    ok(&blocks(home, &new_master, &["key", "change-master"]));
    // The old key file no longer opens the store; the new key does, secrets intact.
    let old = Command::new(env!("CARGO_BIN_EXE_blocks"))
        .args(["serve", "--port", "0"])
        .env("BLOCKS_HOME", home)
        .output()
        .unwrap();
    assert_eq!(old.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&old.stderr).contains("does not match"));
    std::fs::write(home.join("master.key"), format!("{new_key}\n")).unwrap();
    let _server = serve(home);
    let shown = show_secrets(home, &[], "secret/s");
    assert!(shown.contains(CANARY), "{shown}");
}

#[test]
fn export_and_import_move_blocks_with_their_secrets_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let a_home = dir.path().join("a");
    let b_home = dir.path().join("b");
    let _a = serve(&a_home);
    let _b = serve(&b_home);
    let a = a_home.as_path();
    let b = b_home.as_path();
    ok(&blocks(a, &[], &["register", "gcp"]));
    let creds = write_file(
        dir.path(),
        "creds.json",
        &format!(
            r#"{{"service_account_info": {{"private_key": "{CANARY}"}}, "project": "dtc-de"}}"#
        ),
    );
    create_from_file(a, "gcp-credentials/zoom-gcp-creds", &creds);
    create_zoom_bucket(a);
    create_secret(a, "secret/api-token", CANARY);
    // A bucket whose credentials were never saved on their own: an anonymous child.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client_for = |home: &Path| {
        let profile = std::fs::read_to_string(home.join("profile.toml")).unwrap();
        let table: toml::Table = toml::from_str(&profile).unwrap();
        registry_client::Client::new(
            registry_client::Config::new(
                table["api_url"].as_str().unwrap(),
                table["api_key"].as_str(),
            )
            .unwrap(),
        )
        .unwrap()
    };
    runtime.block_on(async {
        let creds = block_types::catalog::GcpCredentials {
            service_account_file: None,
            service_account_info: None,
            project: Some("inline".into()),
        };
        let bucket = block_types::catalog::GcsBucket {
            bucket: "inline-bucket".into(),
            gcp_credentials: creds,
            bucket_folder: String::new(),
        };
        client_for(a).save(&bucket, "inline-gcs").await.unwrap();
    });
    let anonymous = |home: &Path| -> usize {
        runtime.block_on(async {
            let filter: block_types::model::BlockDocumentFilterBody = serde_json::from_value(
                serde_json::json!({"block_documents": {"is_anonymous": {"eq_": true}}}),
            )
            .unwrap();
            client_for(home)
                .block_documents(&filter)
                .await
                .unwrap()
                .len()
        })
    };
    assert_eq!(anonymous(a), 1);

    let file = dir.path().join("blocks-export.json");
    let file_arg = file.to_str().unwrap();
    fails(
        &blocks(a, &[], &["export", file_arg]),
        1,
        "BLOCKS_EXPORT_PASSPHRASE",
    );
    let pass = [("BLOCKS_EXPORT_PASSPHRASE", "correct horse battery")];
    ok(&blocks(a, &pass, &["export", file_arg]));
    let exported = std::fs::read_to_string(&file).unwrap();
    assert!(!exported.contains(CANARY), "secrets are sealed in the file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    // A wrong passphrase imports nothing.
    let count = |home: &Path| -> usize { json_ok(home, &[], &["ls"]).as_array().unwrap().len() };
    let before = count(b);
    fails(
        &blocks(
            b,
            &[("BLOCKS_EXPORT_PASSPHRASE", "wrong horse battery")],
            &["import", file_arg],
        ),
        1,
        "wrong passphrase",
    );
    assert_eq!(count(b), before);

    let done = json_ok(b, &pass, &["import", file_arg]);
    assert_eq!(
        done["created"], 5,
        "four named blocks and the anonymous child: {done}"
    );
    assert_eq!(anonymous(b), 1);
    let inline = ok(&blocks(b, &[], &["inspect", "gcs-bucket/inline-gcs"]));
    assert!(
        inline.contains("inline-bucket") && inline.contains("\"inline\""),
        "{inline}"
    );
    let shown = show_secrets(b, &[], "gcs-bucket/zoom-gcs");
    assert!(
        shown.contains("dtc-data-lake") && shown.contains(CANARY),
        "{shown}"
    );
    let secret = show_secrets(b, &[], "secret/api-token");
    assert!(secret.contains(CANARY), "{secret}");

    // Again (or after an interruption): what is there is kept, nothing is doubled.
    let again = json_ok(b, &pass, &["import", file_arg]);
    assert_eq!(again["created"], 0, "{again}");
    assert_eq!(again["kept"], 4, "{again}");
    assert_eq!(count(b), before + 4);
    assert_eq!(anonymous(b), 1, "no anonymous block is doubled");
    // An import cut short (here: one block missing) is completed by running it again.
    ok(&blocks(b, &[], &["delete", "secret/api-token"]));
    let resumed = json_ok(b, &pass, &["import", file_arg]);
    assert_eq!(
        (resumed["created"].as_u64(), resumed["kept"].as_u64()),
        (Some(1), Some(3)),
        "{resumed}"
    );
    assert!(show_secrets(b, &[], "secret/api-token").contains(CANARY));
}

#[test]
fn data_errors_name_the_argument_never_its_text() {
    let (_dir, home, _server) = serve_in_tempdir();
    let home = home.as_path();
    ok(&blocks(home, &[], &["register", "core"]));

    // Typos of `value=S`: the secret S is never repeated, the argument is named.
    for (data, needle) in [
        (format!("value:{CANARY}"), "--data argument 1"),
        (format!("value:{CANARY}=="), "--data argument 1"),
        (CANARY.to_owned(), "--data argument 1"),
        (format!("value {CANARY}=x"), "not a field name"),
        (
            format!("value:={{\"{CANARY}\""),
            "--data value:= is not JSON",
        ),
    ] {
        fails(
            &blocks(home, &[], &["create", "secret/typo", "--data", &data]),
            2,
            needle,
        );
    }
    fails(
        &blocks(
            home,
            &[],
            &[
                "create",
                "secret/typo",
                "--data",
                "a=1",
                &format!("b:{CANARY}"),
            ],
        ),
        2,
        "--data argument 2",
    );
    // `--ref` given what was meant for `--data`: named by its field.
    for (reference, needle) in [
        (CANARY.to_owned(), "--ref argument 1"),
        (
            format!("value={CANARY}"),
            "--ref value=: the target is not SLUG/NAME",
        ),
        (
            format!("value={CANARY}/{CANARY}"),
            "no block on the server for --ref value",
        ),
    ] {
        let out = blocks(home, &[], &["create", "secret/typo", "--ref", &reference]);
        let code = if needle.starts_with("no block") { 1 } else { 2 };
        fails(&out, code, needle);
    }
    // Secrets go in a file or on standard input, never on the command line.
    let created = blocks_with_stdin(
        home,
        &["create", "secret/from-stdin", "--data", "-"],
        &format!(r#"{{"value": "{CANARY}"}}"#),
    );
    ok(&created);
    let shown = show_secrets(home, &[], "secret/from-stdin");
    assert!(shown.contains(CANARY), "{shown}");
    for (input, needle) in [
        (
            format!(r#"{{"value": {CANARY}}}"#),
            "standard input is not JSON",
        ),
        (format!(r#"["{CANARY}"]"#), "must be a JSON object"),
    ] {
        fails(
            &blocks_with_stdin(home, &["create", "secret/bad-stdin", "--data", "-"], &input),
            1,
            needle,
        );
    }
}

#[cfg(unix)]
#[test]
fn edit_keeps_its_copy_private_and_removes_it_when_interrupted() {
    let (dir, home, _server) = serve_in_tempdir();
    let home = home.as_path();
    ok(&blocks(home, &[], &["register", "core"]));
    ok(&blocks_with_stdin(
        home,
        &["create", "secret/s", "--data", "-"],
        &format!(r#"{{"value": "{CANARY}"}}"#),
    ));
    // The temporary copies go under a directory of this test's own.
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let record = dir.path().join("record");
    let edit = |editor: &Path| -> Output {
        // Under the common umask 022, which would make a directory 0755.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "umask 022 && exec \"$0\" \"$@\""])
            .arg(env!("CARGO_BIN_EXE_blocks"))
            .args(["edit", "secret/s"]);
        environment(
            &mut cmd,
            home,
            &[
                ("EDITOR", editor.to_str().unwrap()),
                ("TMPDIR", tmp.to_str().unwrap()),
            ],
        );
        cmd.output().unwrap()
    };

    // The directory is 0700 and the file 0600 while the editor has them; both go after.
    let recorder = dir.path().join("recorder.sh");
    script(
        &recorder,
        &format!(
            "{{ stat -c %a \"$1\"; stat -c %a \"$(dirname \"$1\")\"; dirname \"$1\"; }} > '{}'\n",
            record.display()
        ),
    );
    let unchanged = ok(&edit(&recorder));
    assert!(unchanged.contains("UNCHANGED"), "{unchanged}");
    let seen = std::fs::read_to_string(&record).unwrap();
    let seen: Vec<&str> = seen.lines().collect();
    assert_eq!(seen[..2], ["600", "700"], "file and directory modes");
    assert!(Path::new(seen[2]).starts_with(&tmp), "{seen:?}");
    assert!(!Path::new(seen[2]).exists(), "the directory is removed");

    // A signal to the blocks command while the editor is open: the editor is stopped, the
    // copy removed, nothing changed. (The fake editor changes the copy, signals its nearest
    // ancestor named blocks, then waits to be stopped.)
    for signal in ["INT", "TERM"] {
        std::fs::remove_file(&record).unwrap();
        let interrupter = dir.path().join(format!("interrupter-{signal}.sh"));
        script(
            &interrupter,
            &format!(
                r#"dirname "$1" > '{record}'
echo '{{}}' > "$1"
pid=$PPID
while [ "$pid" -gt 1 ] && [ "$(cat /proc/$pid/comm)" != blocks ]; do
    pid=$(cut -d ' ' -f 4 /proc/$pid/stat)
done
kill -{signal} "$pid"
exec sleep 60 </dev/null >/dev/null 2>&1
"#,
                record = record.display()
            ),
        );
        let out = edit(&interrupter);
        fails(&out, 1, &format!("interrupted by SIG{signal}"));
        let copy = std::fs::read_to_string(&record).unwrap();
        let copy = Path::new(copy.trim());
        assert!(copy.starts_with(&tmp), "{copy:?}");
        assert!(!copy.exists(), "the directory is removed after SIG{signal}");
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    }
    let shown = show_secrets(home, &[], "secret/s");
    assert!(shown.contains(CANARY), "nothing was changed: {shown}");
}

/// How a fake Prefect source pages.
#[derive(Debug, Clone, Copy)]
enum Paging {
    /// Every page holds the same full page of items.
    Repeats,
    /// Every page is full of items never sent before.
    Endless,
    /// Every page repeats all but one item.
    Trickles,
}

/// A fake Prefect API whose filter endpoints answer every page full, as `paging` says.
/// After 5,000 requests it answers 410, so a client that would page forever ends anyway.
fn fake_prefect(paging: Paging) -> (tokio::runtime::Runtime, String) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().fallback(move || {
        let n = served.fetch_add(1, Ordering::SeqCst);
        async move {
            if n >= 5_000 {
                let gone = serde_json::json!({"detail": "the fake source gave up"});
                return (axum::http::StatusCode::GONE, axum::Json(gone));
            }
            let items: Vec<Value> = (0..200)
                .map(|i| {
                    let (n, i) = (n as u128, i as u128);
                    let id = uuid::Uuid::from_u128(match paging {
                        Paging::Repeats => i,
                        Paging::Endless => (n << 32) | i,
                        Paging::Trickles if i == 0 => (1 << 64) | n,
                        Paging::Trickles => i,
                    });
                    let slug = format!("type-{}", id.simple());
                    serde_json::json!({"id": id, "name": slug, "slug": slug,
                        "created": "2026-01-01T00:00:00Z", "updated": "2026-01-01T00:00:00Z"})
                })
                .collect();
            (axum::http::StatusCode::OK, axum::Json(Value::Array(items)))
        }
    });
    runtime.spawn(async move { axum::serve(listener, app).await });
    (runtime, format!("http://{addr}/api"))
}

#[test]
fn import_prefect_stops_on_a_source_whose_pages_never_end() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    // The target is never reached: the source is refused first.
    let target = [("BLOCKS_API_URL", "http://127.0.0.1:9/api")];
    for (paging, needle) in [
        (
            Paging::Repeats,
            "sent again block types it had already sent",
        ),
        (Paging::Endless, "more than 100000 block types"),
        (Paging::Trickles, "more than 1000 pages"),
    ] {
        let (_runtime, url) = fake_prefect(paging);
        let out = blocks(&home, &target, &["import-prefect", "--url", &url]);
        fails(&out, 1, needle);
        fails(
            &out,
            1,
            "reading the Prefect server (--url); nothing was imported",
        );
    }
}

#[test]
fn the_first_token_is_never_printed_and_an_offline_token_restores_admin_access() {
    use std::io::Read as _;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    // The first start: its standard output says where the token is, never the token.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_blocks"));
    isolate(&mut cmd);
    let mut child = cmd
        .args(["serve", "--port", "0"])
        .env("BLOCKS_HOME", &home)
        .env("BLOCKS_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        log.push_str(&line);
        if line.contains("addr=") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    for line in lines {
        log.push_str(&line.unwrap_or_default());
    }
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let profile = std::fs::read_to_string(home.join("profile.toml")).unwrap();
    let first: toml::Table = toml::from_str(&profile).unwrap();
    let first = first["api_key"].as_str().unwrap().to_owned();
    assert!(stdout.contains("profile.toml"), "{stdout}");
    assert!(!stdout.contains(&first), "the token was printed: {stdout}");
    assert!(!log.contains(&first), "the token was logged");

    // No server: a token made in the store itself.
    let out = ok(&offline_token(&home, "rescue", "admin"));
    let rescue = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("blk_"))
        .expect("the new token is shown once")
        .to_owned();
    fails(&offline_token(&home, "x", "root"), 2, "--scope");

    let server = serve(&home);
    // While a server holds the SQLite store, the offline path is refused.
    fails(
        &offline_token(&home, "y", "read"),
        1,
        "another blocks server",
    );
    let url = format!("http://{}/api", server.addr);
    let as_rescue = signed_in(&url, &rescue);
    let tokens = json_ok(&home, &as_rescue, &["token", "ls"]);
    let ids: Vec<(String, String)> = tokens
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(ids.iter().any(|(n, _)| n == "rescue"), "{ids:?}");
    let audit = ok(&blocks(&home, &as_rescue, &["audit"]));
    assert!(audit.contains("token create --offline"), "{audit}");
    // Two admin tokens: the first may go; then the rescue token is the last and stays.
    let first_id = &ids.iter().find(|(n, _)| n != "rescue").unwrap().1;
    ok(&blocks(&home, &as_rescue, &["token", "revoke", first_id]));
    let rescue_id = &ids.iter().find(|(n, _)| n == "rescue").unwrap().1;
    let last = blocks(&home, &as_rescue, &["token", "revoke", rescue_id]);
    fails(&last, 1, "last valid admin token");
    drop(server);
}

/// A P-256 key pair: the signing key and a JWKS document of its public half.
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
        serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
            "x": b64(&point[1..33]), "y": b64(&point[33..65])}]}),
    )
}

#[test]
fn a_pipeline_token_limited_to_its_blocks_and_a_pod_signing_in_with_its_identity() {
    let (dir, home, server) = serve_in_tempdir();
    let home = home.as_path();
    let api = format!("http://{}/api", server.addr);
    ok(&blocks(home, &[], &["register", "gcp"]));
    let creds = write_file(
        dir.path(),
        "creds.json",
        &format!(
            r#"{{"service_account_info": {{"type": "service_account", "private_key": "{CANARY}"}}, "project": "dtc-de"}}"#
        ),
    );
    create_from_file(home, "gcp-credentials/zoom-gcp-creds", &creds);
    create_zoom_bucket(home);
    create_secret(home, "secret/prod-password", CANARY);
    // What the pipeline's blocks open to: the bucket with its secrets, not the password.
    let limited_to_the_bucket = |env: &[(&str, &str)]| {
        let shown = show_secrets(home, env, "gcs-bucket/zoom-gcs");
        assert!(shown.contains(CANARY), "{shown}");
        fails(
            &blocks(home, env, &["inspect", "secret/prod-password"]),
            1,
            "prod-password",
        );
    };

    // The README's pipeline token: the secrets of the bucket and its credentials.
    let pipeline_access = [
        "--scope",
        "read-secrets",
        "--grant",
        "read-secrets:gcs-bucket/zoom-gcs",
        "--grant",
        "read-secrets:gcp-credentials/zoom-gcp-creds",
    ];
    let etl = json_ok(
        home,
        &[],
        &[
            &["token", "create", "--name", "etl"][..],
            &pipeline_access,
            &["--expires", "90d"],
        ]
        .concat(),
    );
    assert_eq!(etl["grants"].as_array().unwrap().len(), 2, "{etl}");
    assert!(etl["expires"].is_string());
    let secret = etl["token"].as_str().unwrap().to_owned();
    let as_etl = signed_in(&api, &secret);
    limited_to_the_bucket(&as_etl);
    let listed = ok(&blocks(home, &as_etl, &["ls"]));
    assert!(
        listed.contains("zoom-gcs") && !listed.contains("prod-password"),
        "{listed}"
    );
    let tokens = ok(&blocks(home, &[], &["token", "ls"]));
    assert!(
        tokens.contains("read-secrets:gcs-bucket/zoom-gcs"),
        "{tokens}"
    );
    // A child for a subprocess: narrower and shorter.
    let child = json_ok(
        home,
        &as_etl,
        &[
            "token",
            "child",
            "--ttl",
            "10m",
            "--scope",
            "read",
            "--grant",
            "read:gcs-bucket/zoom-gcs",
        ],
    );
    let child_secret = child["token"].as_str().unwrap().to_owned();
    let as_child = signed_in(&api, &child_secret);
    fails(
        &blocks(home, &as_child, &["inspect", "gcs-bucket/zoom-gcs"]),
        1,
        "gcp-credentials/zoom-gcp-creds",
    );
    fails(
        &blocks(
            home,
            &as_etl,
            &["token", "child", "--grant", "read:secret/*"],
        ),
        1,
        "not covered",
    );
    // Bad grants are usage errors.
    fails(
        &blocks(
            home,
            &[],
            &[
                "token",
                "create",
                "--name",
                "x",
                "--scope",
                "read",
                "--grant",
                "gcs-bucket",
            ],
        ),
        2,
        "--grant",
    );

    // A pod: the server trusts the cluster's issuer (keys uploaded from a file), a role
    // maps the service account to the same blocks, and the CLI signs in with nothing but
    // the projected token.
    let (key, jwks) = issuer_key("cluster");
    let jwks_file = write_file(dir.path(), "jwks.json", &jwks.to_string());
    ok(&blocks(
        home,
        &[],
        &[
            "auth",
            "issuer",
            "add",
            "--issuer",
            "https://kubernetes.default.svc",
            "--audience",
            "blocks",
            "--jwks-file",
            &jwks_file.display().to_string(),
        ],
    ));
    let role = [
        &[
            "auth",
            "role",
            "set",
            "etl-loader",
            "--issuer",
            "https://kubernetes.default.svc",
            "--claim",
            "sub=system:serviceaccount:etl:loader",
        ][..],
        &pipeline_access,
        &["--ttl", "1h"],
    ]
    .concat();
    ok(&blocks(home, &[], &role));
    let roles = ok(&blocks(home, &[], &["auth", "role", "ls"]));
    assert!(
        roles.contains("etl-loader") && roles.contains("sub=system:serviceaccount:etl:loader"),
        "{roles}"
    );
    assert!(
        roles.contains("read-secrets:gcs-bucket/zoom-gcs")
            && roles.contains("read-secrets:gcp-credentials/zoom-gcp-creds")
            && roles.contains("3600 s"),
        "{roles}"
    );
    let issuers = ok(&blocks(home, &[], &["auth", "issuer", "ls"]));
    assert!(issuers.contains("kept on the server"), "{issuers}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("cluster".into());
    let claims = serde_json::json!({"iss": "https://kubernetes.default.svc", "aud": ["blocks"],
        "sub": "system:serviceaccount:etl:loader", "iat": now, "exp": now + 600});
    let token_file = write_file(
        dir.path(),
        "token",
        &jsonwebtoken::encode(&header, &claims, &key).unwrap(),
    );
    let token_path = token_file.display().to_string();
    let as_role = |role: &'static str| {
        [
            ("BLOCKS_API_URL", api.as_str()),
            ("BLOCKS_IDENTITY_TOKEN_FILE", token_path.as_str()),
            ("BLOCKS_ROLE", role),
        ]
    };
    limited_to_the_bucket(&as_role("etl-loader"));
    fails(&blocks(home, &as_role("web"), &["ls"]), 1, "no role");
    let audit = ok(&blocks(
        home,
        &[],
        &["audit", "--action", "POST /api/auth/jwt"],
    ));
    assert!(
        audit.contains("system:serviceaccount:etl:loader"),
        "{audit}"
    );
    // An issuer in use stays.
    let issuers = json_ok(home, &[], &["auth", "issuer", "ls"]);
    let id = issuers[0]["id"].as_str().unwrap().to_owned();
    fails(
        &blocks(home, &[], &["auth", "issuer", "rm", &id]),
        1,
        "etl-loader",
    );
    ok(&blocks(home, &[], &["auth", "role", "rm", "etl-loader"]));
    ok(&blocks(home, &[], &["auth", "issuer", "rm", &id]));
}

/// `blocks watch` prints each change as it happens, one line each (or JSON), filtered by
/// type and name, never a value.
#[test]
fn watch_prints_changes_as_they_happen() {
    let (dir, home, _server) = serve_in_tempdir();
    let home = home.as_path();
    ok(&blocks(home, &[], &["register", "gcp"]));
    let spawn = |args: &[&str]| {
        let mut child = blocks_command(home, &[], args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    };
    let (mut table, table_lines) = spawn(&["watch", "--type", "gcp-*", "--name", "zoom-*"]);
    let (mut json, json_lines) = spawn(&["--json", "watch"]);
    // Both are subscribed once the server counts their streams; a change made before
    // would not be printed (a watch starts at the end of the feed).
    let creds = write_file(
        dir.path(),
        "creds.json",
        &format!(r#"{{"service_account_info": {{"private_key": "{CANARY}"}}, "project": "p"}}"#),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut made = 0;
    let (mut table_first, mut json_first) = (None, None);
    let line = loop {
        // Creates until the watcher prints one (it may have connected after the first).
        made += 1;
        create_from_file(home, &format!("gcp-credentials/zoom-{made}"), &creds);
        create_from_file(home, &format!("gcp-credentials/other-{made}"), &creds);
        if table_first.is_none() {
            table_first = table_lines.recv_timeout(Duration::from_secs(1)).ok();
        }
        if json_first.is_none() {
            json_first = json_lines.recv_timeout(Duration::from_secs(1)).ok();
        }
        if let (Some(table), Some(json)) = (&table_first, &json_first) {
            break (table.clone(), json.clone());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "blocks watch printed nothing"
        );
    };
    let (line, json_line) = line;
    assert!(line.contains("block-document.created"), "{line}");
    assert!(line.contains("gcp-credentials/zoom-"), "{line}");
    assert!(line.contains("v1"), "{line}");
    assert!(!line.contains(CANARY));
    // The filter: no other-* line follows.
    while let Ok(line) = table_lines.recv_timeout(Duration::from_millis(500)) {
        assert!(line.contains("/zoom-"), "{line}");
    }
    let first: Value = serde_json::from_str(&json_line).unwrap();
    assert_eq!(first["kind"], "block-document.created");
    assert!(first["id"].is_i64());
    while let Ok(line) = json_lines.recv_timeout(Duration::from_millis(500)) {
        assert!(!line.contains(CANARY), "{line}");
    }
    let _ = table.kill();
    let _ = json.kill();
    let _ = table.wait();
    let _ = json.wait();
}

/// `blocks create ADDRESS --data @FILE`, which must succeed.
fn create_from_file(home: &Path, address: &str, file: &Path) -> String {
    ok(&blocks(
        home,
        &[],
        &["create", address, "--data", &format!("@{}", file.display())],
    ))
}

/// A receiver on loopback answering every request 200 (reading each request whole).
fn ok_receiver() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut chunk) else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buffer).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length: usize = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buffer.len() >= end + 4 + length {
                            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let _ =
                                stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                            buffer.drain(..end + 4 + length);
                        }
                    }
                }
            });
        }
    });
    (format!("http://{addr}/hook"), count)
}

/// `blocks webhook create|ls|test|deliveries|delete` against a receiver on loopback.
#[test]
fn webhooks_are_managed_from_the_command_line() {
    let (dir, home, _server) = serve_in_tempdir();
    let home = home.as_path();
    ok(&blocks(home, &[], &["register", "gcp"]));
    let (url, received) = ok_receiver();
    let created = ok(&blocks(
        home,
        &[],
        &[
            "webhook",
            "create",
            &url,
            "--type",
            "gcp-*",
            "--kind",
            "block-document.created",
            "--description",
            "etl alerts",
        ],
    ));
    assert!(created.contains("whsec_"), "{created}");
    let id = created.split_whitespace().nth(1).unwrap().to_owned();
    let listed = ok(&blocks(home, &[], &["webhook", "ls"]));
    assert!(
        listed.contains(&url) && listed.contains("type=gcp-*") && !listed.contains("whsec_"),
        "{listed}"
    );
    let tested = ok(&blocks(home, &[], &["webhook", "test", &id]));
    assert!(tested.contains("delivered: 200"), "{tested}");
    let creds = write_file(
        dir.path(),
        "creds.json",
        &format!(r#"{{"service_account_info": {{"private_key": "{CANARY}"}}}}"#),
    );
    create_from_file(home, "gcp-credentials/hooked", &creds);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let log = loop {
        let log = ok(&blocks(home, &[], &["webhook", "deliveries", &id]));
        if log.contains("delivered") || std::time::Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        log.contains("block-document.created") && log.contains("delivered") && log.contains("200"),
        "{log}"
    );
    assert_eq!(received.load(std::sync::atomic::Ordering::SeqCst), 2);
    for (args, code, needle) in [
        (
            &["webhook", "create", "http://example.com/hook"][..],
            1,
            "https",
        ),
        (&["webhook", "delete", "not-an-id"][..], 2, "UUID"),
        (
            &[
                "webhook",
                "create",
                url.as_str(),
                "--kind",
                "block-document.eaten",
            ][..],
            2,
            "--kind block-document.eaten",
        ),
    ] {
        fails(&blocks(home, &[], args), code, needle);
    }
    ok(&blocks(home, &[], &["webhook", "delete", &id]));
    assert!(!ok(&blocks(home, &[], &["webhook", "ls"])).contains(&url));
}
