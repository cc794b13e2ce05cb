//! `blocks ls`, `inspect`, `create`, `delete`, `history` and `rollback`: block documents.

use super::client;
use super::or_missing;
use super::output::cell;
use super::output::text;
use super::output::{Format, print};
use super::split_address;
use super::usage;
use anyhow::{Context, anyhow, bail};
use block_types::DataValidator;
use block_types::model::{BlockDocumentCreate, BlockDocumentFilterBody};
use registry_client::Client;
use serde_json::{Map, Value, json};
use std::io::Read as _;
use uuid::Uuid;

/// `blocks ls`.
pub async fn ls(block_type: Option<&str>, format: Format) -> anyhow::Result<()> {
    let client = client()?;
    let docs = match block_type {
        Some(slug) => client.block_documents_of_type(slug).await?,
        None => {
            client
                .block_documents(&BlockDocumentFilterBody::default())
                .await?
        }
    };
    let rows: Vec<Vec<String>> = docs
        .iter()
        .map(|d| {
            vec![
                d.block_type
                    .as_ref()
                    .map(|t| t.slug.clone())
                    .unwrap_or_default(),
                d.name.clone().unwrap_or_default(),
                d.id.to_string(),
                cell(&d.updated),
            ]
        })
        .collect();
    // Listings are masked: no secret is printed, even with --json.
    print(format, &docs, &["TYPE", "NAME", "ID", "UPDATED"], &rows);
    Ok(())
}

/// `blocks inspect SLUG/NAME`.
pub async fn inspect(address: &str, show_secrets: bool, format: Format) -> anyhow::Result<()> {
    let (slug, name) = split_address(address)?;
    let client = client()?;
    let doc = client
        .block_document(slug, name, show_secrets)
        .await
        .map_err(or_missing(format!("block {slug}/{name} on the server")))?;
    let rows: Vec<Vec<String>> = doc
        .data
        .iter()
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
pub(super) fn is_field_name(key: &str) -> bool {
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
            .block_document(slug, name, false)
            .await
            .map_err(or_missing(format!("block on the server for --ref {field}")))?;
        let id = doc.id;
        data.insert(field.to_owned(), json!({"$ref": {"block_document_id": id}}));
    }
    if data.is_empty() {
        return Err(usage(
            "no data: give --data (@file.json, -, or key=value pairs) and/or --ref",
        ));
    }
    let ty = client.block_type(slug).await.map_err(or_missing(format!(
        "block type {slug} on the server; register it first (blocks register …)"
    )))?;
    let schemas = client.block_schemas_of(ty.id).await?;
    // A built-in type's own schema (by checksum and version: the checksum alone ignores
    // secret_fields) when the server has it, else the newest one.
    let ours =
        block_types::catalog::spec_for_slug(slug).map(|spec| (spec.checksum(), spec.version));
    let schema = schemas
        .iter()
        .find(|s| {
            ours.as_ref()
                .is_some_and(|(checksum, version)| s.checksum == *checksum && s.version == *version)
        })
        .or_else(|| schemas.first())
        .ok_or_else(|| anyhow!("the block type {slug} has no schema on the server"))?;
    let validator = DataValidator::new(&schema.fields).map_err(|e| anyhow!("{e}"))?;
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
        .create_block_document(&BlockDocumentCreate {
            name: Some(name.to_owned()),
            data: plain,
            block_schema_id: schema.id,
            block_type_id: ty.id,
            is_anonymous: false,
        })
        .await?;
    let id = created.id.to_string();
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
    let id = document_id(&client, address).await?;
    client.delete_block_document(id).await?;
    say_deleted(address, format);
    Ok(())
}

/// Says that `what` was deleted.
pub(super) fn say_deleted(what: &str, format: Format) {
    print(
        format,
        &json!({"deleted": what}),
        &["DELETED"],
        &[vec![what.to_owned()]],
    );
}

/// The id of the document at `SLUG/NAME` (a clear error when there is none).
async fn document_id(client: &Client, address: &str) -> anyhow::Result<Uuid> {
    let (slug, name) = split_address(address)?;
    let doc = client
        .block_document(slug, name, false)
        .await
        .map_err(or_missing(format!("block {slug}/{name} on the server")))?;
    Ok(doc.id)
}

/// `blocks history SLUG/NAME`: the stored versions, newest first.
pub async fn history(address: &str, format: Format) -> anyhow::Result<()> {
    let client = client()?;
    let id = document_id(&client, address).await?;
    let versions = client.versions(id).await?;
    let rows: Vec<Vec<String>> = versions
        .iter()
        .map(|v| {
            vec![
                v.version.to_string(),
                cell(&v.created),
                v.block_schema_id.to_string(),
            ]
        })
        .collect();
    print(format, &versions, &["VERSION", "CREATED", "SCHEMA"], &rows);
    Ok(())
}

/// `blocks rollback SLUG/NAME VERSION`: a new version equal to an older one.
pub async fn rollback(address: &str, version: u32, format: Format) -> anyhow::Result<()> {
    let client = client()?;
    let id = document_id(&client, address).await?;
    let new = client.rollback(id, i64::from(version)).await?;
    print(
        format,
        &json!({"id": id, "version": new}),
        &["BLOCK", "NEW VERSION"],
        &[vec![address.to_owned(), new.to_string()]],
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::cli::UsageError;

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
