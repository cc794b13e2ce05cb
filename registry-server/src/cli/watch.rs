//! `blocks watch`: the change feed, printed as it happens (one line per event, or one JSON
//! object per line with `--json`). It reconnects by itself and resumes where it stopped.

use std::io::Write as _;

use block_types::ChangeEvent;
use futures::StreamExt as _;
use registry_client::{Watch, WatchEvent};

use super::output::Format;

/// `blocks watch [--type SLUG] [--name GLOB] [--json]`: runs until interrupted, or until
/// the server refuses the stream for good (a revoked token, a bad filter).
pub async fn watch(
    type_slug: Option<&str>,
    name: Option<&str>,
    format: Format,
) -> anyhow::Result<()> {
    let client = super::client()?;
    let mut filter = Watch::all();
    if let Some(slug) = type_slug {
        filter = filter.of_type(slug);
    }
    if let Some(name) = name {
        filter = filter.named(name);
    }
    let mut changes = std::pin::pin!(client.watch(filter));
    while let Some(event) = changes.next().await {
        let line = match (event?, format) {
            (WatchEvent::Change(change), Format::Json) => serde_json::to_string(&change)?,
            (WatchEvent::Change(change), Format::Table) => describe(&change),
            (WatchEvent::Reset(reset), Format::Json) => {
                serde_json::to_string(&serde_json::json!({"kind": "reset", "reset": reset}))?
            }
            (WatchEvent::Reset(reset), Format::Table) => {
                format!("(events were missed: {})", reset.reason)
            }
            (_, _) => continue,
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(())
}

/// `2026-12-06T15:04:05.123456Z  block-document.updated  gcs-bucket/zoom-gcs  v3  by <token id>`.
fn describe(change: &ChangeEvent) -> String {
    let at = change
        .occurred
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let what = match (
        &change.block_type_slug,
        &change.block_document_name,
        change.key_id,
        change.block_schema_id,
    ) {
        (Some(slug), Some(name), _, _) => format!("{slug}/{name}"),
        (Some(slug), None, _, Some(schema)) => format!("{slug} schema {schema}"),
        (Some(slug), None, _, None) => slug.clone(),
        (None, _, Some(key), _) => format!("key {key}"),
        _ => String::new(),
    };
    let mut line = format!("{at}  {:<30}  {what}", change.kind.as_str());
    if let Some(version) = change.version {
        line.push_str(&format!("  v{version}"));
    }
    match change.token_id {
        Some(token) => line.push_str(&format!("  by {token}")),
        None => line.push_str("  by the server"),
    }
    line
}
