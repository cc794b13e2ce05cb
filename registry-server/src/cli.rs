//! The `blocks` commands other than `serve`: they talk to a running server through
//! `registry-client` (server and token from `BLOCKS_API_URL`/`BLOCKS_API_KEY`,
//! `PREFECT_API_*` or `$BLOCKS_HOME/profile.toml`).
//!
//! Output is a human table by default and JSON with `--json`. Exit codes: 0 done, 1 the
//! command failed, 2 the command line was wrong.

use std::io::Read as _;

use anyhow::{Context, anyhow, bail};
use block_types::DataValidator;
use block_types::catalog::Collection;
use registry_client::{Client, Method};
use serde_json::{Map, Value, json};

mod edit;
mod watch;
mod webhooks;

pub use watch::watch;
pub use webhooks::{WebhookCommand, webhook};

pub use edit::edit;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts.
    Json,
}

/// `blocks register`.
#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    /// Collections to register: core, sqlalchemy, gcp, docker.
    #[arg(value_parser = ["core", "sqlalchemy", "gcp", "docker"], required_unless_present_any = ["all", "file"])]
    pub collections: Vec<String>,
    /// Every built-in collection.
    #[arg(long)]
    pub all: bool,
    /// A custom block type: a JSON file `{"block_type": {"name", "slug", "description", …},
    /// "fields": <JSON Schema, with "secret_fields">, "capabilities": […], "version": "…"}`,
    /// checked before it is sent.
    #[arg(long, conflicts_with_all = ["collections", "all"])]
    pub file: Option<std::path::PathBuf>,
    /// Also update the metadata (description, logo, docs URL, example) of types that
    /// already exist.
    #[arg(long)]
    pub update_metadata: bool,
}

/// A custom block type from `blocks register --file`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomType {
    block_type: block_types::model::BlockTypeCreate,
    fields: Value,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    version: Option<String>,
}

/// Checks a custom type before anything is sent: names, the schema compiles, and every
/// secret field names a property.
fn custom_spec(path: &std::path::Path) -> anyhow::Result<block_types::BlockSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let custom: CustomType = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a block type definition", path.display()))?;
    let ty = &custom.block_type;
    block_types::validate::block_type_slug(&ty.slug).map_err(|e| anyhow!("block_type.{e}"))?;
    block_types::validate::block_type_name(&ty.name).map_err(|e| anyhow!("block_type.{e}"))?;
    if !custom.fields.is_object() {
        bail!("fields must be a JSON Schema object");
    }
    DataValidator::new(&custom.fields).map_err(|e| anyhow!("{e}"))?;
    let properties = custom.fields["properties"].as_object();
    for secret in block_types::secret_fields::secret_fields_of(&custom.fields) {
        let path = secret.to_string();
        let root = path.split('.').next().unwrap_or_default();
        if root != "*" && !properties.is_some_and(|p| p.contains_key(root)) {
            bail!("secret_fields names {path:?}, which is not a property of the schema");
        }
    }
    let mut fields = custom.fields.clone();
    fields["block_type_slug"] = json!(ty.slug);
    Ok(block_types::BlockSpec {
        block_type: block_types::BlockTypeInfo {
            name: ty.name.clone(),
            slug: ty.slug.clone(),
            logo_url: ty.logo_url.clone(),
            documentation_url: ty.documentation_url.clone(),
            description: ty.description.clone(),
            code_example: ty.code_example.clone(),
            protected: false,
        },
        fields,
        capabilities: custom.capabilities,
        version: custom.version.unwrap_or_else(|| "1".to_owned()),
    })
}

/// `blocks type …`.
#[derive(Debug, clap::Subcommand)]
pub enum TypeCommand {
    /// List block types.
    Ls,
    /// Show a block type and its schemas.
    Inspect {
        /// The type's slug.
        slug: String,
    },
    /// Delete a block type that no document uses.
    Delete {
        /// The type's slug.
        slug: String,
    },
}

/// `blocks token …`.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token; it is printed once.
    Create {
        /// What the token is for.
        #[arg(long)]
        name: String,
        /// Scopes: read, read-secrets, write, admin (repeat or comma-separate).
        #[arg(long = "scope", required = true, value_delimiter = ',')]
        scopes: Vec<String>,
        /// When it stops working: a time (RFC 3339, e.g. 2027-01-01T00:00:00Z) or a
        /// lifetime from now (90d, 12h).
        #[arg(long, conflicts_with = "ttl")]
        expires: Option<String>,
        /// How long it works from now (15m, 1h, 90d).
        #[arg(long)]
        ttl: Option<String>,
        /// Limit the token to some blocks: `scope:type-slug/name` with `*` globs, e.g.
        /// `read-secrets:gcs-bucket/zoom-gcs` (repeat; none: every block).
        #[arg(long = "grant")]
        grants: Vec<String>,
        /// Create it in the store directly, without a token: for recovery on the server's
        /// host when no admin token is left (an SQLite store's server must be stopped
        /// first). Recorded in the audit log.
        #[arg(long)]
        offline: bool,
        /// Where the store is, and its master key (with --offline).
        #[command(flatten)]
        store: crate::serve::StoreArgs,
    },
    /// Mint a short-lived token from the current one (for a subprocess): scopes and grants
    /// within its own, a lifetime within its remaining one (and at most a day).
    Child {
        /// What it is for (default: "child of <this token's name>").
        #[arg(long)]
        name: Option<String>,
        /// Scopes (default: this token's).
        #[arg(long = "scope", value_delimiter = ',')]
        scopes: Vec<String>,
        /// Grants, as for `token create` (default: this token's).
        #[arg(long = "grant")]
        grants: Vec<String>,
        /// Its lifetime (default: as long as allowed).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Replace a token's grants (admin).
    Grants {
        /// The token's id.
        id: String,
        /// The new grants (none, with --all: every block).
        #[arg(long = "grant", required_unless_present = "all")]
        grants: Vec<String>,
        /// Remove every grant: the token's scopes cover every block again.
        #[arg(long, conflicts_with = "grants")]
        all: bool,
    },
    /// List tokens (never their values).
    Ls,
    /// Revoke a token by id.
    Revoke {
        /// The token's id.
        id: String,
    },
}

/// `blocks auth …`.
#[derive(Debug, clap::Subcommand)]
pub enum AuthCommand {
    /// Trusted JWT issuers.
    #[command(subcommand)]
    Issuer(IssuerCommand),
    /// Roles a workload identity signs in to.
    #[command(subcommand)]
    Role(RoleCommand),
}

/// `blocks auth issuer …`.
#[derive(Debug, clap::Subcommand)]
pub enum IssuerCommand {
    /// Trust an issuer: its `iss`, the audience its tokens must carry for this server, and
    /// its public keys (a JWKS URL the server fetches, or a JWKS file uploaded once).
    Add {
        /// The `iss` of its tokens (https://kubernetes.default.svc, …).
        #[arg(long)]
        issuer: String,
        /// The `aud` its tokens must carry.
        #[arg(long)]
        audience: String,
        /// Where the issuer publishes its keys.
        #[arg(
            long,
            required_unless_present = "jwks_file",
            conflicts_with = "jwks_file"
        )]
        jwks_url: Option<String>,
        /// A JWKS document with its keys (air-gapped setups; `kubectl get --raw
        /// /openid/v1/jwks`).
        #[arg(long)]
        jwks_file: Option<std::path::PathBuf>,
    },
    /// List trusted issuers.
    Ls,
    /// Stop trusting an issuer (by id; refused while roles use it).
    Rm {
        /// The issuer's id.
        id: String,
    },
}

/// `blocks auth role …`.
#[derive(Debug, clap::Subcommand)]
pub enum RoleCommand {
    /// Create or replace a role.
    Set {
        /// The role's name.
        name: String,
        /// The issuer (its `iss`) whose tokens sign in to it.
        #[arg(long)]
        issuer: String,
        /// A claim the token must carry, `name=value` (`*` matches any run; repeat).
        #[arg(long = "claim", required = true)]
        claims: Vec<String>,
        /// Scopes of the token issued: read, read-secrets, write (repeat or comma-separate).
        #[arg(long = "scope", required = true, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Grants of the token issued, `scope:type-slug/name` (repeat).
        #[arg(long = "grant")]
        grants: Vec<String>,
        /// Lifetime of the token issued (default 1h, at most 24h).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// List roles.
    Ls,
    /// Delete a role.
    Rm {
        /// The role's name.
        name: String,
    },
}

/// `blocks key …`.
#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// The active data key and what each key seals.
    Status,
    /// Rotate the data key; stored secrets are re-encrypted in the background while a
    /// progress bar follows them (reads and writes go on meanwhile).
    Rotate {
        /// Return at once instead of following the re-encryption.
        #[arg(long)]
        no_wait: bool,
    },
    /// Print a new master key (32 random bytes, base64) for a new store.
    Generate,
    /// Re-wrap the data keys under a new master key or passphrase (offline: stop the
    /// servers of this store first). One transaction: an interruption leaves the store
    /// readable with the old key.
    ChangeMaster {
        /// Where the store is, and its current key.
        #[command(flatten)]
        store: crate::serve::StoreArgs,
        /// File holding the new master key (else BLOCKS_NEW_MASTER_KEY or
        /// BLOCKS_NEW_PASSPHRASE).
        #[arg(long)]
        new_master_key_file: Option<std::path::PathBuf>,
    },
}

/// A mistake in the command line found after parsing (exit code 2, as clap's own).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// The client for commands that talk to a server.
pub fn client() -> anyhow::Result<Client> {
    Ok(Client::from_env()?)
}

/// `SLUG/NAME` → (slug, name); a usage error otherwise.
pub fn split_address(address: &str) -> anyhow::Result<(&str, &str)> {
    address
        .split_once('/')
        .filter(|(s, n)| !s.is_empty() && !n.is_empty())
        .ok_or_else(|| {
            usage(format!(
                "{address:?} is not SLUG/NAME, e.g. gcs-bucket/zoom-gcs"
            ))
        })
}

fn enc(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Prints `rows` under `headers` as aligned columns, or `json` as JSON.
fn print(format: Format, json: &Value, headers: &[&str], rows: &[Vec<String>]) {
    let out = match format {
        Format::Json => serde_json::to_string_pretty(json).unwrap_or_default(),
        Format::Table => table(headers, rows),
    };
    emit(&out);
}

/// Writes a line to standard output; a reader that went away (`blocks ls | head`) is not
/// an error.
fn emit(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
}

fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(headers.iter().map(|h| (*h).to_owned()).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

/// One row per item of the array `items`, one cell per JSON pointer in `columns`.
fn rows(items: &Value, columns: &[&str]) -> Vec<Vec<String>> {
    items
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| {
            columns
                .iter()
                .map(|c| item.pointer(c).map(text).unwrap_or_default())
                .collect()
        })
        .collect()
}

/// The API path of the block `slug/name`.
fn block_path(slug: &str, name: &str) -> String {
    format!(
        "block_types/slug/{}/block_documents/name/{}",
        enc(slug),
        enc(name)
    )
}

/// Turns the server's 404 into "no WHAT"; other errors pass through.
fn or_missing(what: String) -> impl FnOnce(registry_client::Error) -> anyhow::Error {
    move |e| match e {
        registry_client::Error::Http { status: 404, .. } => anyhow!("no {what}"),
        other => other.into(),
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn collections(args: &RegisterArgs) -> Vec<Collection> {
    if args.all {
        return Collection::ALL.to_vec();
    }
    args.collections
        .iter()
        .filter_map(|c| match c.as_str() {
            "core" => Some(Collection::Core),
            "sqlalchemy" => Some(Collection::Sqlalchemy),
            "gcp" => Some(Collection::Gcp),
            "docker" => Some(Collection::Docker),
            _ => None,
        })
        .collect()
}

/// `blocks register`: each type of the collections (existing metadata left alone) and its
/// current schema.
pub async fn register(args: &RegisterArgs, format: Format) -> anyhow::Result<()> {
    let specs: Vec<block_types::BlockSpec> = match &args.file {
        Some(path) => vec![custom_spec(path)?],
        None => collections(args)
            .into_iter()
            .flat_map(|c| c.specs())
            .collect(),
    };
    let client = client()?;
    if args.file.is_some() {
        for spec in &specs {
            let slug = &spec.block_type.slug;
            if let Ok(existing) = client
                .get_json(&format!("block_types/slug/{}", enc(slug)))
                .await
                && existing["is_protected"] == json!(true)
            {
                bail!("{slug} is a protected built-in type; a custom type needs its own slug");
            }
        }
    }
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for spec in specs {
        let (ty, schema) = client.register(&spec).await?;
        if args.update_metadata && !ty.is_protected {
            let info = &spec.block_type;
            client
                .send_json(
                    Method::PATCH,
                    &format!("block_types/{}", ty.id),
                    Some(&Value::Object(
                        [
                            ("logo_url", &info.logo_url),
                            ("documentation_url", &info.documentation_url),
                            ("description", &info.description),
                            ("code_example", &info.code_example),
                        ]
                        .into_iter()
                        .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_owned(), json!(v))))
                        .collect(),
                    )),
                )
                .await?;
        }
        rows.push(vec![ty.slug.clone(), schema.checksum.clone()]);
        out.push(json!({"slug": ty.slug, "block_type_id": ty.id, "block_schema_id": schema.id, "checksum": schema.checksum}));
    }
    print(format, &Value::Array(out), &["TYPE", "SCHEMA"], &rows);
    Ok(())
}

/// The block type `slug` (a clear error when there is none).
async fn type_by_slug(client: &Client, slug: &str) -> anyhow::Result<Value> {
    client
        .get_json(&format!("block_types/slug/{}", enc(slug)))
        .await
        .map_err(or_missing(format!("block type {slug} on the server")))
}

/// `blocks type …`.
pub async fn types(command: &TypeCommand, format: Format) -> anyhow::Result<()> {
    let client = client()?;
    match command {
        TypeCommand::Ls => {
            let types = Value::Array(all_pages(&client, "block_types/filter", json!({})).await?);
            let rows = rows(&types, &["/slug", "/name", "/is_protected"]);
            print(format, &types, &["SLUG", "NAME", "PROTECTED"], &rows);
        }
        TypeCommand::Inspect { slug } => {
            let ty = type_by_slug(&client, slug).await?;
            let schemas = client
                .send_json(
                    Method::POST,
                    "block_schemas/filter",
                    Some(&json!({"block_schemas": {"block_type_id": {"any_": [ty["id"]]}}})),
                )
                .await?;
            let both = json!({"block_type": ty, "block_schemas": schemas});
            let rows = rows(
                &schemas,
                &["/checksum", "/version", "/fields/secret_fields"],
            );
            print(
                format,
                &both,
                &["SCHEMA", "VERSION", "SECRET FIELDS"],
                &rows,
            );
        }
        TypeCommand::Delete { slug } => {
            let ty = type_by_slug(&client, slug).await?;
            let id = text(&ty["id"]);
            delete_and_say(&client, &format!("block_types/{id}"), slug, format).await?;
        }
    }
    Ok(())
}

/// `blocks ls`.
pub async fn ls(block_type: Option<&str>, format: Format) -> anyhow::Result<()> {
    let client = client()?;
    let docs = match block_type {
        Some(slug) => {
            client
                .get_json(&format!("block_types/slug/{}/block_documents", enc(slug)))
                .await?
        }
        None => Value::Array(all_pages(&client, "block_documents/filter", json!({})).await?),
    };
    let rows = rows(&docs, &["/block_type/slug", "/name", "/id", "/updated"]);
    // Listings are masked: no secret is printed, even with --json.
    print(format, &docs, &["TYPE", "NAME", "ID", "UPDATED"], &rows);
    Ok(())
}

/// `blocks inspect SLUG/NAME`.
pub async fn inspect(address: &str, show_secrets: bool, format: Format) -> anyhow::Result<()> {
    let (slug, name) = split_address(address)?;
    let client = client()?;
    let doc = client
        .get_json(&format!(
            "{}?include_secrets={show_secrets}",
            block_path(slug, name)
        ))
        .await
        .map_err(or_missing(format!("block {slug}/{name} on the server")))?;
    let rows: Vec<Vec<String>> = doc["data"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| vec![k.clone(), text(v)])
        .collect();
    print(format, &doc, &["FIELD", "VALUE"], &rows);
    Ok(())
}

/// The data of `blocks create`: `@file.json`, `-` (a JSON object on standard input) or
/// `key=value` pairs (`key=text` is a string, `key:=json` is JSON).
///
/// No error quotes an argument: a malformed pair is named by its position and a bad JSON
/// value by its key (keys are field names: letters, digits, `_`, `-` and `.`), since the
/// text may be a secret (say `value:S` typed for `value=S`).
pub fn parse_data(data: &[String]) -> anyhow::Result<Map<String, Value>> {
    let value = match data {
        [one] if one == "-" => {
            let mut text = zeroize::Zeroizing::new(String::new());
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the data from standard input")?;
            serde_json::from_str(&text).context("standard input is not JSON")?
        }
        [one] if one.starts_with('@') => {
            let path = &one[1..];
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?,
            );
            serde_json::from_str(&text).with_context(|| format!("{path} is not JSON"))?
        }
        pairs => {
            let mut map = Map::new();
            for (i, pair) in pairs.iter().enumerate() {
                let nth = i + 1;
                let (key, value) = pair.split_once('=').ok_or_else(|| {
                    usage(format!(
                        "--data argument {nth} is not key=value or key:=json (its text is not shown: it may be a secret); give secrets with --data @file.json or --data - (stdin)"
                    ))
                })?;
                // `key=text` is always a string; `key:=json` is JSON (a number, a
                // boolean, an object…).
                let (key, is_json) = match key.strip_suffix(':') {
                    Some(key) => (key, true),
                    None => (key, false),
                };
                if !is_field_name(key) {
                    return Err(usage(format!(
                        "--data argument {nth}: the text before = is not a field name (letters, digits, _, - and .; the text is not shown: it may be a secret); other data goes in --data @file.json or --data -"
                    )));
                }
                let value = if is_json {
                    serde_json::from_str(value)
                        .map_err(|_| usage(format!("--data {key}:= is not JSON")))?
                } else {
                    Value::String(value.to_owned())
                };
                map.insert(key.to_owned(), value);
            }
            Value::Object(map)
        }
    };
    match value {
        Value::Object(map) => Ok(map),
        _ => bail!("the data must be a JSON object"),
    }
}

/// A key of `--data key=value` or `--ref FIELD=…`: a plain field name, at most 128 bytes.
fn is_field_name(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 128
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// `blocks create SLUG/NAME`: the data is checked against the type's newest schema before
/// anything is sent.
pub async fn create(
    address: &str,
    data: &[String],
    refs: &[String],
    format: Format,
) -> anyhow::Result<()> {
    let (slug, name) = split_address(address)?;
    let mut data = if data.is_empty() {
        Map::new()
    } else {
        parse_data(data)?
    };
    let client = client()?;
    // `--ref field=SLUG/NAME`: the field references that saved block.
    for (i, reference) in refs.iter().enumerate() {
        let (field, target) = reference
            .split_once('=')
            .filter(|(field, _)| is_field_name(field))
            .ok_or_else(|| usage(format!("--ref argument {} is not FIELD=SLUG/NAME", i + 1)))?;
        // Named by its field, never quoted: a mistyped `--ref` may hold what was meant
        // for `--data`.
        let (slug, name) = target
            .split_once('/')
            .filter(|(s, n)| !s.is_empty() && !n.is_empty())
            .ok_or_else(|| usage(format!("--ref {field}=: the target is not SLUG/NAME")))?;
        let doc = client
            .get_json(&block_path(slug, name))
            .await
            .map_err(or_missing(format!("block on the server for --ref {field}")))?;
        let id = text(&doc["id"]);
        data.insert(field.to_owned(), json!({"$ref": {"block_document_id": id}}));
    }
    if data.is_empty() {
        return Err(usage(
            "no data: give --data (@file.json, -, or key=value pairs) and/or --ref",
        ));
    }
    let ty = client
        .get_json(&format!("block_types/slug/{}", enc(slug)))
        .await
        .map_err(or_missing(format!(
            "block type {slug} on the server; register it first (blocks register …)"
        )))?;
    let schemas = all_pages(
        &client,
        "block_schemas/filter",
        json!({"block_schemas": {"block_type_id": {"any_": [ty["id"]]}}}),
    )
    .await?;
    // A built-in type's own schema (by checksum and version: the checksum alone ignores
    // secret_fields) when the server has it, else the newest one.
    let ours =
        block_types::catalog::spec_for_slug(slug).map(|spec| (spec.checksum(), spec.version));
    let schema = schemas
        .iter()
        .find(|s| {
            ours.as_ref().is_some_and(|(checksum, version)| {
                s["checksum"].as_str() == Some(checksum) && s["version"].as_str() == Some(version)
            })
        })
        .or_else(|| schemas.first())
        .ok_or_else(|| anyhow!("the block type {slug} has no schema on the server"))?;
    let validator = DataValidator::new(&schema["fields"]).map_err(|e| anyhow!("{e}"))?;
    let mut refs = Map::new();
    let mut plain = Map::new();
    for (k, v) in data {
        if v.get("$ref").is_some() {
            refs.insert(k, v);
        } else {
            plain.insert(k, v);
        }
    }
    let ref_names: Vec<&str> = refs.keys().map(String::as_str).collect();
    if let Err(errors) = validator.validate(&plain, &ref_names) {
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        bail!("the data does not fit {slug}: {}", text.join("; "));
    }
    plain.extend(refs);
    let created = client
        .send_json(
            Method::POST,
            "block_documents/",
            Some(&json!({"name": name, "data": plain, "block_type_id": ty["id"], "block_schema_id": schema["id"]})),
        )
        .await?;
    let id = text(&created["id"]);
    print(
        format,
        &json!({"id": id, "slug": slug, "name": name}),
        &["CREATED", "ID"],
        &[vec![format!("{slug}/{name}"), id.clone()]],
    );
    Ok(())
}

/// `blocks delete SLUG/NAME`.
pub async fn delete(address: &str, format: Format) -> anyhow::Result<()> {
    let client = client()?;
    let (id, _) = document_id(&client, address).await?;
    delete_and_say(&client, &format!("block_documents/{id}"), address, format).await
}

/// Deletes `path` and says that `what` was deleted.
async fn delete_and_say(
    client: &Client,
    path: &str,
    what: &str,
    format: Format,
) -> anyhow::Result<()> {
    client.send_json(Method::DELETE, path, None).await?;
    print(
        format,
        &json!({"deleted": what}),
        &["DELETED"],
        &[vec![what.to_owned()]],
    );
    Ok(())
}

/// `blocks auth …`.
pub async fn auth(command: &AuthCommand, format: Format) -> anyhow::Result<()> {
    let client = client()?;
    let issuer_row = |i: &Value| {
        vec![
            text(&i["id"]),
            text(&i["issuer"]),
            text(&i["audience"]),
            if i["jwks_url"].is_string() {
                text(&i["jwks_url"])
            } else {
                "(kept on the server)".to_owned()
            },
        ]
    };
    let issuer_headers = ["ID", "ISSUER", "AUDIENCE", "KEYS"];
    let role_row = |r: &Value| {
        let list = |v: &Value, f: &dyn Fn(&Value) -> String| {
            v.as_array()
                .map(|a| a.iter().map(f).collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        vec![
            text(&r["name"]),
            text(&r["issuer"]),
            r["claims"]
                .as_object()
                .map(|c| {
                    c.iter()
                        .map(|(k, v)| format!("{k}={}", text(v)))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default(),
            list(&r["scopes"], &text),
            list(&r["grants"], &|g| {
                format!("{}:{}", text(&g["scope"]), text(&g["selector"]))
            }),
            format!("{} s", text(&r["ttl"])),
        ]
    };
    let role_headers = ["NAME", "ISSUER", "CLAIMS", "SCOPES", "GRANTS", "TTL"];
    match command {
        AuthCommand::Issuer(IssuerCommand::Add {
            issuer,
            audience,
            jwks_url,
            jwks_file,
        }) => {
            let mut body = json!({"issuer": issuer, "audience": audience});
            if let Some(url) = jwks_url {
                body["jwks_url"] = json!(url);
            }
            if let Some(path) = jwks_file {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let jwks: Value = serde_json::from_str(&text).map_err(|e| {
                    UsageError(format!("{} is not a JWKS document: {e}", path.display()))
                })?;
                body["jwks"] = jwks;
            }
            let created = client
                .send_json(Method::POST, "auth/issuers", Some(&body))
                .await?;
            print(format, &created, &issuer_headers, &[issuer_row(&created)]);
        }
        AuthCommand::Issuer(IssuerCommand::Ls) => {
            let all = client.get_json("auth/issuers").await?;
            let rows: Vec<_> = all
                .as_array()
                .into_iter()
                .flatten()
                .map(issuer_row)
                .collect();
            print(format, &all, &issuer_headers, &rows);
        }
        AuthCommand::Issuer(IssuerCommand::Rm { id }) => {
            delete_and_say(&client, &format!("auth/issuers/{}", enc(id)), id, format).await?;
        }
        AuthCommand::Role(RoleCommand::Set {
            name,
            issuer,
            claims,
            scopes,
            grants,
            ttl,
        }) => {
            let claims = claims
                .iter()
                .map(|c| {
                    c.split_once('=')
                        .map(|(k, v)| (k.trim().to_owned(), json!(v.trim())))
                        .ok_or_else(|| UsageError(format!("--claim {c}: expected name=value")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut seen = std::collections::BTreeSet::new();
            if let Some((dup, _)) = claims.iter().find(|(k, _)| !seen.insert(k.clone())) {
                return Err(UsageError(format!("--claim {dup} is given twice")).into());
            }
            let claims: serde_json::Map<_, _> = claims.into_iter().collect();
            let mut body = json!({
                "issuer": issuer,
                "claims": claims,
                "scopes": scopes,
                "grants": parse_grants(grants)?,
            });
            if let Some(ttl) = ttl {
                body["ttl"] = json!(parse_ttl(ttl)?.0.as_secs());
            }
            let role = client
                .send_json(
                    Method::PUT,
                    &format!("auth/roles/{}", enc(name)),
                    Some(&body),
                )
                .await?;
            print(format, &role, &role_headers, &[role_row(&role)]);
        }
        AuthCommand::Role(RoleCommand::Ls) => {
            let all = client.get_json("auth/roles").await?;
            let rows: Vec<_> = all.as_array().into_iter().flatten().map(role_row).collect();
            print(format, &all, &role_headers, &rows);
        }
        AuthCommand::Role(RoleCommand::Rm { name }) => {
            delete_and_say(&client, &format!("auth/roles/{}", enc(name)), name, format).await?;
        }
    }
    Ok(())
}

/// `blocks token …`.
pub async fn token(command: &TokenCommand, format: Format) -> anyhow::Result<()> {
    if let TokenCommand::Create {
        name,
        scopes,
        expires,
        ttl,
        grants,
        offline: true,
        store,
    } = command
    {
        let (expires, ttl) = lifetime(expires.as_deref(), ttl.as_deref())?;
        return offline_token(
            name,
            scopes,
            expires,
            ttl,
            &parse_grants(grants)?,
            store,
            format,
        )
        .await;
    }
    let client = client()?;
    let token_row = |t: &Value| {
        vec![
            text(&t["id"]),
            text(&t["name"]),
            t["scopes"]
                .as_array()
                .map(|s| s.iter().map(text).collect::<Vec<_>>().join(","))
                .unwrap_or_default(),
            t["grants"]
                .as_array()
                .map(|g| {
                    g.iter()
                        .map(|g| format!("{}:{}", text(&g["scope"]), text(&g["selector"])))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .filter(|g| !g.is_empty())
                .unwrap_or_else(|| "all blocks".to_owned()),
            text(&t["expires"]),
            text(&t["last_used"]),
            text(&t["revoked"]),
        ]
    };
    let headers = [
        "ID",
        "NAME",
        "SCOPES",
        "GRANTS",
        "EXPIRES",
        "LAST USED",
        "REVOKED",
    ];
    let show_created = |created: &Value| match format {
        Format::Json => print(format, created, &[], &[]),
        Format::Table => {
            let line = format!(
                "{}\n\nThe token (shown only this once):\n\n    {}",
                table(&headers, &[token_row(created)]),
                text(&created["token"])
            );
            emit(&line);
        }
    };
    match command {
        TokenCommand::Create {
            name,
            scopes,
            expires,
            ttl,
            grants,
            ..
        } => {
            let (expires, ttl) = lifetime(expires.as_deref(), ttl.as_deref())?;
            let grants = parse_grants(grants)?;
            let created = client
                .send_json(
                    Method::POST,
                    "tokens",
                    Some(&json!({
                        "name": name,
                        "scopes": scopes,
                        "expires": expires,
                        "ttl": ttl.map(|t| t.0.as_secs()),
                        "grants": grants,
                    })),
                )
                .await?;
            show_created(&created);
        }
        TokenCommand::Child {
            name,
            scopes,
            grants,
            ttl,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(name) = name {
                body.insert("name".into(), json!(name));
            }
            if !scopes.is_empty() {
                body.insert("scopes".into(), json!(scopes));
            }
            if !grants.is_empty() {
                body.insert("grants".into(), json!(parse_grants(grants)?));
            }
            if let Some(ttl) = ttl {
                body.insert("ttl".into(), json!(parse_ttl(ttl)?.0.as_secs()));
            }
            let created = client
                .send_json(Method::POST, "tokens/child", Some(&Value::Object(body)))
                .await?;
            show_created(&created);
        }
        TokenCommand::Grants { id, grants, .. } => {
            let grants = parse_grants(grants)?;
            let changed = client
                .send_json(
                    Method::PATCH,
                    &format!("tokens/{}", enc(id)),
                    Some(&json!({"grants": grants})),
                )
                .await?;
            print(format, &changed, &headers, &[token_row(&changed)]);
        }
        TokenCommand::Ls => {
            let tokens = client.get_json("tokens").await?;
            let rows: Vec<Vec<String>> = tokens
                .as_array()
                .into_iter()
                .flatten()
                .map(token_row)
                .collect();
            print(format, &tokens, &headers, &rows);
        }
        TokenCommand::Revoke { id } => {
            let revoked = client
                .send_json(Method::DELETE, &format!("tokens/{}", enc(id)), None)
                .await?;
            print(format, &revoked, &headers, &[token_row(&revoked)]);
        }
    }
    Ok(())
}

/// `--expires` (a time, or a lifetime such as `90d`) and `--ttl` as the API takes them.
fn lifetime(
    expires: Option<&str>,
    ttl: Option<&str>,
) -> Result<
    (
        Option<chrono::DateTime<chrono::Utc>>,
        Option<crate::store::Ttl>,
    ),
    UsageError,
> {
    if let Some(ttl) = ttl {
        return Ok((None, Some(parse_ttl(ttl)?)));
    }
    let Some(expires) = expires else {
        return Ok((None, None));
    };
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(expires) {
        return Ok((Some(time.with_timezone(&chrono::Utc)), None));
    }
    crate::store::Ttl::parse(expires)
        .map(|ttl| (None, Some(ttl)))
        .map_err(|_| {
            UsageError(
                "--expires must be an RFC 3339 time (2027-01-01T00:00:00Z) or a lifetime (90d, 12h)"
                    .to_owned(),
            )
        })
}

fn parse_ttl(ttl: &str) -> Result<crate::store::Ttl, UsageError> {
    crate::store::Ttl::parse(ttl).map_err(|e| UsageError(format!("--ttl: {e}")))
}

/// `--grant scope:type-slug/name`, each.
fn parse_grants(grants: &[String]) -> Result<Vec<crate::store::Grant>, UsageError> {
    grants
        .iter()
        .map(|g| {
            crate::store::Grant::parse(g.trim())
                .map_err(|e| UsageError(format!("--grant {g}: {e}")))
        })
        .collect()
}

/// `blocks token create --offline`: a token made in the store itself, for recovery when
/// no admin token is left. Shown once, like one made over the API; the audit log records
/// its creation (without a caller token).
async fn offline_token(
    name: &str,
    scopes: &[String],
    expires: Option<chrono::DateTime<chrono::Utc>>,
    ttl: Option<crate::store::Ttl>,
    grants: &[crate::store::Grant],
    store: &crate::serve::StoreArgs,
    format: Format,
) -> anyhow::Result<()> {
    use secrecy::ExposeSecret as _;
    let scopes = scopes
        .iter()
        .map(|s| {
            serde_json::from_value::<crate::store::Scope>(json!(s.trim())).map_err(|_| {
                UsageError("--scope must be read, read-secrets, write or admin".to_owned())
            })
        })
        .collect::<Result<_, _>>()?;
    let (opened, _lock) = crate::serve::open_existing(store).await?;
    let created = opened
        .create_token(crate::store::TokenCreate {
            name: name.to_owned(),
            scopes,
            expires,
            ttl,
            grants: grants.to_vec(),
        })
        .await
        .context("cannot create the token")?;
    opened
        .append_audit(&[crate::store::NewAuditRecord {
            at: chrono::Utc::now(),
            request_id: format!("offline-{}", created.info.id),
            token_id: None,
            action: "blocks token create --offline".to_owned(),
            target: format!("/api/tokens/{}", created.info.id),
            outcome: "ok",
            status: 201,
        }])
        .await
        .context("cannot record the token's creation in the audit log")?;
    opened.close().await;
    let mut listed = serde_json::to_value(&created.info)?;
    listed["token"] = json!(created.token.expose_secret());
    match format {
        Format::Json => print(format, &listed, &[], &[]),
        Format::Table => emit(&format!(
            "Created token {} ({}) in the store.\n\nThe token (shown only this once):\n\n    {}",
            created.info.id,
            created.info.name,
            created.token.expose_secret()
        )),
    }
    Ok(())
}

/// `blocks key …`.
pub async fn key(command: &KeyCommand, format: Format) -> anyhow::Result<()> {
    match command {
        KeyCommand::Generate => {
            let key = crate::crypto::MasterKey::generate()?;
            let text = secrecy::ExposeSecret::expose_secret(&key.to_base64()).to_owned();
            print(
                format,
                &json!({"master_key": text}),
                &["MASTER KEY"],
                &[vec![text.clone()]],
            );
            Ok(())
        }
        KeyCommand::ChangeMaster {
            store,
            new_master_key_file,
        } => {
            let new = crate::serve::new_master_source(new_master_key_file.as_deref())?;
            let (opened, _lock) = crate::serve::open_existing(store).await?;
            opened.change_master_key(new).await?;
            opened.close().await;
            print(
                format,
                &json!({"changed": true}),
                &["MASTER KEY CHANGED"],
                &[vec![
                    "start the servers with the new key (replace master.key, or set BLOCKS_MASTER_KEY / BLOCKS_PASSPHRASE)".to_owned(),
                ]],
            );
            Ok(())
        }
        KeyCommand::Status => {
            let status = client()?.get_json("keys").await?;
            let rows = rows(
                &status["keys"],
                &["/id", "/state", "/encryptions", "/documents", "/versions"],
            );
            print(
                format,
                &status,
                &["KEY", "STATE", "ENCRYPTIONS", "DOCUMENTS", "VERSIONS"],
                &rows,
            );
            Ok(())
        }
        KeyCommand::Rotate { no_wait } => {
            let client = client()?;
            let rotated = client.send_json(Method::POST, "keys/rotate", None).await?;
            if !no_wait {
                follow_reencryption(&client).await?;
            }
            print(
                format,
                &rotated,
                &["ACTIVE KEY", "RE-ENCRYPTION"],
                &[vec![
                    text(&rotated["active"]),
                    text(&rotated["reencryption"]),
                ]],
            );
            Ok(())
        }
    }
}

/// `blocks audit`.
pub async fn audit(limit: u32, action: Option<&str>, format: Format) -> anyhow::Result<()> {
    let mut query = format!("audit?limit={limit}");
    if let Some(action) = action {
        query.push_str(&format!("&action={}", enc(action)));
    }
    let page = client()?.get_json(&query).await?;
    let rows = rows(
        &page["records"],
        &["/at", "/token_id", "/action", "/target", "/outcome"],
    );
    print(
        format,
        &page,
        &["AT", "TOKEN", "ACTION", "TARGET", "OUTCOME"],
        &rows,
    );
    Ok(())
}

/// The id of the document at `SLUG/NAME` (a clear error when there is none).
async fn document_id(client: &Client, address: &str) -> anyhow::Result<(String, Value)> {
    let (slug, name) = split_address(address)?;
    let doc = client
        .get_json(&block_path(slug, name))
        .await
        .map_err(or_missing(format!("block {slug}/{name} on the server")))?;
    Ok((text(&doc["id"]), doc))
}

/// `blocks history SLUG/NAME`: the stored versions, newest first.
pub async fn history(address: &str, format: Format) -> anyhow::Result<()> {
    let client = client()?;
    let (id, _) = document_id(&client, address).await?;
    let versions = client
        .get_json(&format!("block_documents/{id}/versions"))
        .await?;
    let rows = rows(&versions, &["/version", "/created", "/block_schema_id"]);
    print(format, &versions, &["VERSION", "CREATED", "SCHEMA"], &rows);
    Ok(())
}

/// `blocks rollback SLUG/NAME VERSION`: a new version equal to an older one.
pub async fn rollback(address: &str, version: u32, format: Format) -> anyhow::Result<()> {
    let client = client()?;
    let (id, _) = document_id(&client, address).await?;
    let outcome = client
        .send_json(
            Method::POST,
            &format!("block_documents/{id}/versions/{version}/rollback"),
            None,
        )
        .await?;
    print(
        format,
        &outcome,
        &["BLOCK", "NEW VERSION"],
        &[vec![address.to_owned(), text(&outcome["version"])]],
    );
    Ok(())
}

/// Writes `path` readable by its owner only, replacing any file there (written beside it
/// under a fresh name, then renamed: an existing file's mode or owner is never kept).
fn write_new_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| std::path::Path::new("."));
    let mut file = tempfile::Builder::new()
        .prefix(".blocks-export-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    file.write_all(text.as_bytes())?;
    file.as_file().sync_all()?;
    file.persist(path)
        .map_err(|e| anyhow!("cannot write {}: {}", path.display(), e.error))?;
    Ok(())
}

/// Writes a file only its owner can read (it may hold secrets the user types in).
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut file = crate::serve::create_private_file(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// The format tag of export files.
const EXPORT_FORMAT: &str = "blocks-export/1";

/// What the sealed documents are bound to: the format and the file's types and schemas,
/// so a schema edited in the file (say, its secret fields removed) fails the import.
fn export_aad(types: &Value, schemas: &Value) -> anyhow::Result<Vec<u8>> {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    hash.update(serde_json::to_vec(types)?);
    hash.update([0]);
    hash.update(serde_json::to_vec(schemas)?);
    let mut aad = EXPORT_FORMAT.as_bytes().to_vec();
    aad.extend_from_slice(&hash.finalize());
    Ok(aad)
}

/// The largest argon2 memory cost an export file may ask for (1 GiB).
const MAX_IMPORT_M_COST_KIB: u32 = 1024 * 1024;

/// The passphrase of `export`/`import`: `BLOCKS_EXPORT_PASSPHRASE`.
fn export_passphrase() -> anyhow::Result<secrecy::SecretString> {
    match std::env::var("BLOCKS_EXPORT_PASSPHRASE") {
        Ok(p) if p.chars().count() >= 8 => Ok(secrecy::SecretString::from(p)),
        Ok(_) => bail!("BLOCKS_EXPORT_PASSPHRASE must be at least 8 characters"),
        Err(_) => bail!(
            "set BLOCKS_EXPORT_PASSPHRASE: the exported secrets are encrypted under it (argon2id + AES-256-GCM)"
        ),
    }
}

async fn derive(
    passphrase: secrecy::SecretString,
    params: crate::crypto::KdfParams,
) -> anyhow::Result<crate::crypto::MasterKey> {
    tokio::task::spawn_blocking(move || crate::crypto::MasterKey::derive(&passphrase, &params))
        .await
        .map_err(|e| anyhow!("key derivation did not finish: {e}"))?
        .map_err(|e| anyhow!("{e}"))
}

/// A document's own data: references as `$ref`s to the (exported) ids.
fn own_data(doc: &Value) -> Map<String, Value> {
    let mut data = doc["data"].as_object().cloned().unwrap_or_default();
    if let Some(refs) = doc["block_document_references"].as_object() {
        for (field, reference) in refs {
            data.insert(
                field.clone(),
                json!({"$ref": {"block_document_id": reference["block_document"]["id"]}}),
            );
        }
    }
    data
}

/// Items asked for per page of a filter endpoint.
const PAGE_SIZE: usize = 200;

/// The most items one listing may hold (a generous bound: a registry is not expected to
/// come near it). A source whose pages never end is refused at this point instead of
/// being read until memory runs out.
const MAX_LISTED_ITEMS: usize = 100_000;

/// The most pages one listing may take: twice what [`MAX_LISTED_ITEMS`] needs, which
/// bounds a source that adds one new item to each otherwise repeated page.
const MAX_LISTED_PAGES: usize = 2 * MAX_LISTED_ITEMS / PAGE_SIZE;

/// Every item of a Prefect-style filter endpoint, page by page ([`PAGE_SIZE`] at most per
/// page), each item once (by id). Refused with an error: a page whose items were all sent
/// already (a server that ignores `offset`), more than [`MAX_LISTED_ITEMS`] items or more
/// than [`MAX_LISTED_PAGES`] pages.
async fn all_pages(client: &Client, path: &str, body: Value) -> anyhow::Result<Vec<Value>> {
    let what = path.split('/').next().unwrap_or(path).replace('_', " ");
    let mut all = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut offset = 0;
    for pages in 1.. {
        if pages > MAX_LISTED_PAGES {
            bail!(
                "the server's {what} took more than {MAX_LISTED_PAGES} pages (the limit of one listing); stopped reading"
            );
        }
        let mut page_body = body.clone();
        page_body["limit"] = json!(PAGE_SIZE);
        page_body["offset"] = json!(offset);
        let page = client
            .send_json(Method::POST, path, Some(&page_body))
            .await?;
        let page = match page {
            Value::Array(items) => items,
            _ => Vec::new(),
        };
        let n = page.len();
        let before = all.len();
        for item in page {
            let identity = match item.get("id") {
                Some(Value::String(id)) => id.clone(),
                _ => item.to_string(),
            };
            if seen.insert(identity) {
                all.push(item);
            }
        }
        if n > 0 && all.len() == before {
            bail!(
                "the server sent again {what} it had already sent (at offset {offset}, after {before} of them): its paging does not move on; stopped reading"
            );
        }
        if all.len() > MAX_LISTED_ITEMS {
            bail!(
                "the server lists more than {MAX_LISTED_ITEMS} {what} (the limit of one listing); stopped reading"
            );
        }
        if n < PAGE_SIZE {
            break;
        }
        offset += n;
    }
    Ok(all)
}

/// The documents of `client`'s server in export form (own data, references as `$ref`s to
/// the source ids), anonymous ones included.
async fn documents_of(client: &Client) -> anyhow::Result<Vec<Value>> {
    let docs = all_pages(
        client,
        "block_documents/filter",
        json!({"include_secrets": true, "block_documents": {"is_anonymous": null}}),
    )
    .await?;
    Ok(docs
        .iter()
        .map(|doc| {
            json!({
                "id": doc["id"],
                "name": doc["name"],
                "is_anonymous": doc["is_anonymous"],
                "block_type_slug": doc["block_type"]["slug"],
                "block_schema_checksum": doc["block_schema"]["checksum"],
                "block_schema_version": doc["block_schema"]["version"],
                "data": own_data(doc),
            })
        })
        .collect())
}

/// `blocks export FILE`: every block type, schema and document (anonymous ones included)
/// to a file whose documents are sealed under `BLOCKS_EXPORT_PASSPHRASE`.
pub async fn export(file: &std::path::Path, format: Format) -> anyhow::Result<()> {
    let passphrase = export_passphrase()?;
    let client = client()?;
    let types = all_pages(&client, "block_types/filter", json!({})).await?;
    let schemas = all_pages(&client, "block_schemas/filter", json!({})).await?;
    let documents = documents_of(&client).await?;
    let params = crate::crypto::KdfParams::generate()?;
    let key = derive(passphrase, params.clone()).await?;
    let plain = zeroize::Zeroizing::new(serde_json::to_vec(&documents)?);
    let types = Value::Array(types);
    let schemas = Value::Array(schemas);
    let sealed = key.seal_bytes(&export_aad(&types, &schemas)?, &plain)?;
    let out = json!({
        "format": EXPORT_FORMAT,
        "kdf": params,
        "block_types": types,
        "block_schemas": schemas,
        "documents": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, sealed),
        "document_count": documents.len(),
    });
    write_new_private(file, &serde_json::to_string_pretty(&out)?)?;
    print(
        format,
        &json!({"file": file.display().to_string(), "documents": documents.len()}),
        &["EXPORTED", "DOCUMENTS"],
        &[vec![
            file.display().to_string(),
            documents.len().to_string(),
        ]],
    );
    Ok(())
}

/// `blocks import FILE`: types, schemas and documents from an export. Idempotent: what
/// exists (a type by slug, a schema by checksum, a named document by type and name) is
/// kept; a wrong passphrase is refused before anything is written.
pub async fn import(file: &std::path::Path, format: Format) -> anyhow::Result<()> {
    use base64::Engine as _;
    let passphrase = export_passphrase()?;
    let contents =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let export: Value = serde_json::from_str(&contents)
        .with_context(|| format!("{} is not a blocks export", file.display()))?;
    if export["format"] != EXPORT_FORMAT {
        bail!("{} is not a {EXPORT_FORMAT} file", file.display());
    }
    let params: crate::crypto::KdfParams = serde_json::from_value(export["kdf"].clone())
        .context("the export's key parameters are missing")?;
    if params.m_cost_kib > MAX_IMPORT_M_COST_KIB || params.t_cost > 64 || params.p_cost > 16 {
        bail!("the export asks for an unreasonable key derivation cost; refusing");
    }
    let key = derive(passphrase, params).await?;
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(export["documents"].as_str().unwrap_or_default())
        .context("the export's documents are not base64")?;
    let plain = key
        .open_bytes(
            &export_aad(&export["block_types"], &export["block_schemas"])?,
            &sealed,
        )
        .map_err(|_| anyhow!("wrong passphrase (or a damaged file): nothing was imported"))?;
    let documents: Vec<Value> =
        serde_json::from_slice(&plain).context("the export's documents do not parse")?;
    let client = client()?;
    let types = export["block_types"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let schemas = export["block_schemas"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let (created, kept) = import_records(&client, &types, &schemas, documents, None).await?;
    print(
        format,
        &json!({"created": created, "kept": kept}),
        &["CREATED", "ALREADY THERE"],
        &[vec![created.to_string(), kept.to_string()]],
    );
    Ok(())
}

/// Copies types (existing ones kept, by slug), schemas (found by checksum) and documents
/// (a named one that exists is kept; children before parents, references following the
/// new ids) to `client`'s server. Returns (created, kept).
async fn import_records(
    client: &Client,
    types: &[Value],
    schemas: &[Value],
    documents: Vec<Value>,
    progress: Option<&indicatif::ProgressBar>,
) -> anyhow::Result<(usize, usize)> {
    use std::collections::HashMap;
    let mut type_ids: HashMap<String, Value> = HashMap::new();
    for ty in types {
        let slug = text(&ty["slug"]);
        let existing = client
            .get_json(&format!("block_types/slug/{}", enc(&slug)))
            .await;
        let id = match existing {
            Ok(found) => found["id"].clone(),
            Err(registry_client::Error::Http { status: 404, .. }) => {
                let body = json!({"name": ty["name"], "slug": slug, "logo_url": ty["logo_url"],
                    "documentation_url": ty["documentation_url"], "description": ty["description"],
                    "code_example": ty["code_example"]});
                client
                    .send_json(Method::POST, "block_types/", Some(&body))
                    .await?["id"]
                    .clone()
            }
            Err(e) => return Err(e.into()),
        };
        type_ids.insert(text(&ty["id"]), id);
    }
    let mut schema_ids: HashMap<(String, String), (Value, Value)> = HashMap::new();
    for schema in schemas {
        let Some(type_id) = type_ids.get(&text(&schema["block_type_id"])) else {
            continue;
        };
        let body = json!({"fields": schema["fields"], "block_type_id": type_id,
            "capabilities": schema["capabilities"], "version": schema["version"]});
        let created = client
            .send_json(Method::POST, "block_schemas/", Some(&body))
            .await?;
        schema_ids.insert(
            (text(&schema["checksum"]), text(&schema["version"])),
            (created["id"].clone(), type_id.clone()),
        );
    }

    // Named documents that exist are kept. Anonymous ones have no identity to find them
    // by: each is created only when a document that references it is created, so a
    // second import creates nothing again (an anonymous document nothing created refers
    // to is left out).
    let mut new_ids: HashMap<String, Value> = HashMap::new();
    let (mut created, mut kept) = (0usize, 0usize);
    let mut anonymous: HashMap<String, Value> = HashMap::new();
    let mut named = Vec::new();
    for doc in documents {
        if doc["is_anonymous"].as_bool().unwrap_or(false) {
            anonymous.insert(text(&doc["id"]), doc);
            continue;
        }
        let slug = text(&doc["block_type_slug"]);
        let name = text(&doc["name"]);
        match client.get_json(&block_path(&slug, &name)).await {
            Ok(found) => {
                new_ids.insert(text(&doc["id"]), found["id"].clone());
                kept += 1;
                if let Some(bar) = progress {
                    bar.inc(1);
                }
            }
            Err(registry_client::Error::Http { status: 404, .. }) => named.push(doc),
            Err(e) => return Err(e.into()),
        }
    }
    // The anonymous documents the documents to create reach.
    let mut pending = named;
    let mut stack: Vec<String> = pending.iter().flat_map(references_of).collect();
    while let Some(id) = stack.pop() {
        if let Some(doc) = anonymous.remove(&id) {
            stack.extend(references_of(&doc));
            pending.push(doc);
        }
    }
    if let Some(bar) = progress {
        bar.inc(anonymous.len() as u64);
    }
    while !pending.is_empty() {
        let before = pending.len();
        let mut later = Vec::new();
        for doc in pending {
            let data = doc["data"].as_object().cloned().unwrap_or_default();
            let waiting = references_of(&doc)
                .iter()
                .any(|id| !new_ids.contains_key(id));
            if waiting {
                later.push(doc);
                continue;
            }
            let slug = text(&doc["block_type_slug"]);
            let anonymous = doc["is_anonymous"].as_bool().unwrap_or(false);
            let key = (
                text(&doc["block_schema_checksum"]),
                text(&doc["block_schema_version"]),
            );
            let (schema_id, type_id) = schema_ids
                .get(&key)
                .cloned()
                .ok_or_else(|| anyhow!("no schema {} for {slug} in the source", key.0))?;
            let mut data = data;
            for value in data.values_mut() {
                if let Some(old) = value.get("$ref").map(|r| text(&r["block_document_id"])) {
                    *value = json!({"$ref": {"block_document_id": new_ids[&old]}});
                }
            }
            let mut body = json!({"data": data, "block_schema_id": schema_id,
                "block_type_id": type_id, "is_anonymous": anonymous});
            if !anonymous {
                body["name"] = doc["name"].clone();
            }
            let label = if anonymous {
                format!("an anonymous {slug} block")
            } else {
                format!("{slug}/{}", text(&doc["name"]))
            };
            let made = client
                .send_json(Method::POST, "block_documents/", Some(&body))
                .await
                .with_context(|| format!("importing {label} into this registry"))?;
            new_ids.insert(text(&doc["id"]), made["id"].clone());
            created += 1;
            if let Some(bar) = progress {
                bar.inc(1);
            }
        }
        if later.len() == before {
            bail!("the source's references form a cycle or point outside it");
        }
        pending = later;
    }
    Ok((created, kept))
}

/// The source ids a document references.
fn references_of(doc: &Value) -> Vec<String> {
    doc["data"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, v)| v.get("$ref").map(|r| text(&r["block_document_id"])))
        .collect()
}

/// `blocks import-prefect --url …`: every block type, schema and document of a running
/// Prefect server, secrets and references included. Idempotent; a progress bar on a
/// terminal; a summary at the end.
pub async fn import_prefect(
    url: &str,
    api_key: Option<&str>,
    format: Format,
) -> anyhow::Result<()> {
    // The target is this registry: BLOCKS_API_* or the profile, never PREFECT_API_*
    // (which, for a Prefect user, may well name the source).
    let target_config = registry_client::Config::from_lookup(|name| {
        if name.starts_with("PREFECT_") {
            None
        } else {
            std::env::var(name).ok()
        }
    })?;
    let source = Client::new(registry_client::Config::new(
        url,
        api_key.filter(|k| !k.trim().is_empty()),
    )?)?;
    if source.config().api_url == target_config.api_url {
        bail!("--url names this registry itself; give the Prefect server's API URL");
    }
    let target = Client::new(target_config)?;
    let reading = "reading the Prefect server (--url); nothing was imported";
    let types = all_pages(&source, "block_types/filter", json!({}))
        .await
        .context(reading)?;
    let schemas = all_pages(&source, "block_schemas/filter", json!({}))
        .await
        .context(reading)?;
    let documents = documents_of(&source).await.context(reading)?;
    let bar = indicatif::ProgressBar::new(documents.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} blocks")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let outcome = import_records(&target, &types, &schemas, documents, Some(&bar)).await;
    bar.finish_and_clear();
    let (created, kept) = outcome?;
    print(
        format,
        &json!({"block_types": types.len(), "block_schemas": schemas.len(), "created": created, "kept": kept}),
        &["TYPES", "SCHEMAS", "BLOCKS CREATED", "ALREADY THERE"],
        &[vec![
            types.len().to_string(),
            schemas.len().to_string(),
            created.to_string(),
            kept.to_string(),
        ]],
    );
    Ok(())
}

/// Versions still sealed under keys other than the active one.
fn versions_on_old_keys(status: &Value) -> u64 {
    let active = &status["active"];
    status["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|k| &k["id"] != active)
        .filter_map(|k| k["versions"].as_u64())
        .sum()
}

/// Shows re-encryption progress until no version is left on an old key (or it stops
/// moving for a minute: it then goes on in the background).
async fn follow_reencryption(client: &Client) -> anyhow::Result<()> {
    let first = versions_on_old_keys(&client.get_json("keys").await?);
    let bar = indicatif::ProgressBar::new(first);
    bar.set_style(
        indicatif::ProgressStyle::with_template("re-encrypting {bar:40} {pos}/{len} versions")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut left = first;
    let mut last_move = std::time::Instant::now();
    while left > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let now = versions_on_old_keys(&client.get_json("keys").await?);
        if now < left {
            last_move = std::time::Instant::now();
        }
        left = now;
        bar.set_position(first.saturating_sub(left));
        if last_move.elapsed() > std::time::Duration::from_secs(60) {
            bar.abandon();
            #[allow(clippy::print_stderr)]
            {
                eprintln!("re-encryption goes on in the background; see blocks key status");
            }
            return Ok(());
        }
    }
    bar.finish_and_clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const CANARY: &str = "canary-parse-data-91c2";

    #[test]
    fn data_errors_never_quote_what_was_typed() {
        for args in [
            vec![format!("value:{CANARY}")],
            vec![format!("value:{CANARY}==")],
            vec!["a=1".to_owned(), CANARY.to_owned()],
            vec![format!("{CANARY} =x")],
            vec![format!("value:={CANARY}")],
            vec![format!("value:={{\"{CANARY}\": ")],
        ] {
            let error = parse_data(&args).unwrap_err();
            let text = format!("{error:#}");
            assert!(!text.contains(CANARY), "{text}");
            assert!(text.contains("--data"), "{text}");
            assert!(error.downcast_ref::<UsageError>().is_some(), "{text}");
        }
        let text = format!(
            "{:#}",
            parse_data(&["a=1".into(), "b:x".into()]).unwrap_err()
        );
        assert!(text.contains("--data argument 2"), "{text}");
        let text = format!("{:#}", parse_data(&["port:=80a".into()]).unwrap_err());
        assert!(text.contains("--data port:= is not JSON"), "{text}");
    }

    #[test]
    fn data_pairs_are_text_or_json() {
        let data = parse_data(&[
            "bucket=dtc=lake".into(),
            "port:=5432".into(),
            "empty=".into(),
        ])
        .unwrap();
        assert_eq!(
            Value::Object(data),
            json!({"bucket": "dtc=lake", "port": 5432, "empty": ""})
        );
    }

    #[test]
    fn field_names_are_plain() {
        for good in ["value", "service_account_info", "api-key", "a.b", "X9"] {
            assert!(is_field_name(good), "{good}");
        }
        for bad in ["", "value:secret", "a b", "x/y", "$ref", &"a".repeat(129)] {
            assert!(!is_field_name(bad), "{bad}");
        }
    }
}
