//! `blocks token …` and `blocks auth …`: API tokens, issuers and roles.

use super::UsageError;
use super::client;
use super::documents::say_deleted;
use super::output::cell;
use super::output::emit;
use super::output::table;
use super::output::{Format, print};
use anyhow::Context;
use block_types::access::{ChildTokenCreate, Grant, Scope, TokenCreate, TokenInfo, Ttl};
use block_types::identity::{Issuer, IssuerCreate, Role, RoleConfig};
use registry_client::NewToken;
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use std::collections::BTreeSet;

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

/// `blocks auth …`.
pub async fn auth(command: &AuthCommand, format: Format) -> anyhow::Result<()> {
    let client = client()?;
    let issuer_row = |i: &Issuer| {
        vec![
            i.id.to_string(),
            i.issuer.clone(),
            i.audience.clone(),
            i.jwks_url
                .clone()
                .unwrap_or_else(|| "(kept on the server)".to_owned()),
        ]
    };
    let issuer_headers = ["ID", "ISSUER", "AUDIENCE", "KEYS"];
    let role_row = |r: &Role| {
        let words = |items: Vec<String>| items.join(" ");
        vec![
            r.name.clone(),
            r.issuer.clone(),
            words(r.claims.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            words(r.scopes.iter().map(|s| s.as_str().to_owned()).collect()),
            words(r.grants.iter().map(ToString::to_string).collect()),
            format!("{} s", r.ttl),
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
            let jwks = match jwks_file {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    Some(serde_json::from_str::<Value>(&text).map_err(|e| {
                        UsageError(format!("{} is not a JWKS document: {e}", path.display()))
                    })?)
                }
                None => None,
            };
            let body = IssuerCreate {
                issuer: issuer.clone(),
                audience: audience.clone(),
                jwks_url: jwks_url.clone(),
                jwks,
            };
            let created = client.create_issuer(&body).await?;
            print(format, &created, &issuer_headers, &[issuer_row(&created)]);
        }
        AuthCommand::Issuer(IssuerCommand::Ls) => {
            let all = client.issuers().await?;
            let rows: Vec<_> = all.iter().map(issuer_row).collect();
            print(format, &all, &issuer_headers, &rows);
        }
        AuthCommand::Issuer(IssuerCommand::Rm { id }) => {
            client.delete_issuer(id).await?;
            say_deleted(id, format);
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
                        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                        .ok_or_else(|| UsageError(format!("--claim {c}: expected name=value")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut seen = std::collections::BTreeSet::new();
            if let Some((dup, _)) = claims.iter().find(|(k, _)| !seen.insert(k.clone())) {
                return Err(UsageError(format!("--claim {dup} is given twice")).into());
            }
            let body = RoleConfig {
                issuer: issuer.clone(),
                claims: claims.into_iter().collect(),
                scopes: parse_scopes(scopes)?,
                grants: parse_grants(grants)?,
                ttl: ttl.as_deref().map(parse_ttl).transpose()?,
            };
            let role = client.set_role(name, &body).await?;
            print(format, &role, &role_headers, &[role_row(&role)]);
        }
        AuthCommand::Role(RoleCommand::Ls) => {
            let all = client.roles().await?;
            let rows: Vec<_> = all.iter().map(role_row).collect();
            print(format, &all, &role_headers, &rows);
        }
        AuthCommand::Role(RoleCommand::Rm { name }) => {
            client.delete_role(name).await?;
            say_deleted(name, format);
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
    let headers = [
        "ID",
        "NAME",
        "SCOPES",
        "GRANTS",
        "EXPIRES",
        "LAST USED",
        "REVOKED",
    ];
    let show_created = |created: &NewToken| {
        let mut listed = serde_json::to_value(&created.info).unwrap_or(Value::Null);
        listed["token"] = json!(created.token.expose_secret());
        match format {
            Format::Json => print(format, &listed, &[], &[]),
            Format::Table => emit(&format!(
                "{}\n\nThe token (shown only this once):\n\n    {}",
                table(&headers, &[token_row(&created.info)]),
                created.token.expose_secret()
            )),
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
            let created = client
                .create_token(&TokenCreate {
                    name: name.clone(),
                    scopes: parse_scopes(scopes)?,
                    expires,
                    ttl,
                    grants: parse_grants(grants)?,
                })
                .await?;
            show_created(&created);
        }
        TokenCommand::Child {
            name,
            scopes,
            grants,
            ttl,
        } => {
            let created = client
                .create_child_token(&ChildTokenCreate {
                    name: name.clone(),
                    scopes: (!scopes.is_empty())
                        .then(|| parse_scopes(scopes))
                        .transpose()?,
                    grants: (!grants.is_empty())
                        .then(|| parse_grants(grants))
                        .transpose()?,
                    ttl: ttl.as_deref().map(parse_ttl).transpose()?,
                })
                .await?;
            show_created(&created);
        }
        TokenCommand::Grants { id, grants, .. } => {
            let changed = client.set_token_grants(id, &parse_grants(grants)?).await?;
            print(format, &changed, &headers, &[token_row(&changed)]);
        }
        TokenCommand::Ls => {
            let tokens = client.tokens().await?;
            let rows: Vec<Vec<String>> = tokens.iter().map(token_row).collect();
            print(format, &tokens, &headers, &rows);
        }
        TokenCommand::Revoke { id } => {
            let revoked = client.revoke_token(id).await?;
            print(format, &revoked, &headers, &[token_row(&revoked)]);
        }
    }
    Ok(())
}

/// A token's table row.
fn token_row(t: &TokenInfo) -> Vec<String> {
    let grants = t
        .grants
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    vec![
        t.id.to_string(),
        t.name.clone(),
        t.scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(","),
        if grants.is_empty() {
            "all blocks".to_owned()
        } else {
            grants
        },
        cell(&t.expires),
        cell(&t.last_used),
        cell(&t.revoked),
    ]
}

/// `--scope`, each (comma-separated or repeated).
fn parse_scopes(scopes: &[String]) -> Result<BTreeSet<Scope>, UsageError> {
    scopes
        .iter()
        .map(|s| {
            Scope::ALL
                .into_iter()
                .find(|scope| scope.as_str() == s.trim())
                .ok_or_else(|| {
                    UsageError("--scope must be read, read-secrets, write or admin".to_owned())
                })
        })
        .collect()
}

/// `--expires` (a time, or a lifetime such as `90d`) and `--ttl` as the API takes them.
pub(super) fn lifetime(
    expires: Option<&str>,
    ttl: Option<&str>,
) -> Result<(Option<chrono::DateTime<chrono::Utc>>, Option<Ttl>), UsageError> {
    if let Some(ttl) = ttl {
        return Ok((None, Some(parse_ttl(ttl)?)));
    }
    let Some(expires) = expires else {
        return Ok((None, None));
    };
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(expires) {
        return Ok((Some(time.with_timezone(&chrono::Utc)), None));
    }
    Ttl::parse(expires)
        .map(|ttl| (None, Some(ttl)))
        .map_err(|_| {
            UsageError(
                "--expires must be an RFC 3339 time (2027-01-01T00:00:00Z) or a lifetime (90d, 12h)"
                    .to_owned(),
            )
        })
}

pub(super) fn parse_ttl(ttl: &str) -> Result<Ttl, UsageError> {
    Ttl::parse(ttl).map_err(|e| UsageError(format!("--ttl: {e}")))
}

/// `--grant scope:type-slug/name`, each.
pub(super) fn parse_grants(grants: &[String]) -> Result<Vec<Grant>, UsageError> {
    grants
        .iter()
        .map(|g| Grant::parse(g.trim()).map_err(|e| UsageError(format!("--grant {g}: {e}"))))
        .collect()
}

/// `blocks token create --offline`: a token made in the store itself, for recovery when
/// no admin token is left. Shown once, like one made over the API; the audit log records
/// its creation (without a caller token).
pub(super) async fn offline_token(
    name: &str,
    scopes: &[String],
    expires: Option<chrono::DateTime<chrono::Utc>>,
    ttl: Option<Ttl>,
    grants: &[Grant],
    store: &crate::serve::StoreArgs,
    format: Format,
) -> anyhow::Result<()> {
    use secrecy::ExposeSecret as _;
    let scopes = parse_scopes(scopes)?;
    let (opened, _lock) = crate::serve::open_existing(store).await?;
    let created = opened
        .create_token(TokenCreate {
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
