//! The `blocks` commands other than `serve`: they talk to a running server through
//! `registry-client` (server and token from `BLOCKS_API_URL`/`BLOCKS_API_KEY`,
//! `PREFECT_API_*` or `$BLOCKS_HOME/profile.toml`).
//!
//! Output is a human table by default and JSON with `--json`. Exit codes: 0 done, 1 the
//! command failed, 2 the command line was wrong.

use anyhow::anyhow;
use registry_client::Client;

mod audit;
mod documents;
mod edit;
mod keys;
mod output;
mod tokens;
mod transfer;
mod types;
mod watch;
mod webhooks;

pub use audit::audit;
pub use documents::{create, delete, history, inspect, ls, parse_data, rollback};
pub use edit::edit;
pub use keys::{KeyCommand, key};
pub use output::Format;
pub use tokens::{AuthCommand, IssuerCommand, RoleCommand, TokenCommand, auth, token};
pub use transfer::{export, import, import_prefect};
pub use types::{RegisterArgs, TypeCommand, register, types};
pub use watch::watch;
pub use webhooks::{WebhookCommand, webhook};

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

/// Turns the server's 404 into "no WHAT"; other errors pass through.
fn or_missing(what: String) -> impl FnOnce(registry_client::Error) -> anyhow::Error {
    move |e| match e {
        registry_client::Error::Http { status: 404, .. } => anyhow!("no {what}"),
        other => other.into(),
    }
}
