//! The `blocks` commands other than `serve`: they talk to a running server through
//! `registry-client` (server and token from `BLOCKS_API_URL`/`BLOCKS_API_KEY`,
//! `PREFECT_API_*` or `$BLOCKS_HOME/profile.toml`).
//!
//! Output is a human table by default and JSON with `--json`. Exit codes: 0 done, 1 the
//! command failed, 2 the command line was wrong.

use anyhow::{anyhow, bail};
use registry_client::{Client, Method};
use serde_json::{Value, json};

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

fn enc(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Turns the server's 404 into "no WHAT"; other errors pass through.
fn or_missing(what: String) -> impl FnOnce(registry_client::Error) -> anyhow::Error {
    move |e| match e {
        registry_client::Error::Http { status: 404, .. } => anyhow!("no {what}"),
        other => other.into(),
    }
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
            .call::<_, Value>(Method::POST, path, Some(&page_body))
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
