//! `blocks export`, `import` and `import-prefect`: moving blocks between stores.

use super::all_pages;
use super::client;
use super::documents::block_path;
use super::enc;
use super::output::text;
use super::output::{Format, print};
use anyhow::{Context, anyhow, bail};
use registry_client::{Client, Method};
use serde_json::{Map, Value, json};

/// Writes `path` readable by its owner only, replacing any file there (written beside it
/// under a fresh name, then renamed: an existing file's mode or owner is never kept).
pub(super) fn write_new_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
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
pub(super) fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut file = crate::serve::create_private_file(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// The format tag of export files.
pub(super) const EXPORT_FORMAT: &str = "blocks-export/1";

/// What the sealed documents are bound to: the format and the file's types and schemas,
/// so a schema edited in the file (say, its secret fields removed) fails the import.
pub(super) fn export_aad(types: &Value, schemas: &Value) -> anyhow::Result<Vec<u8>> {
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
pub(super) const MAX_IMPORT_M_COST_KIB: u32 = 1024 * 1024;

/// The passphrase of `export`/`import`: `BLOCKS_EXPORT_PASSPHRASE`.
pub(super) fn export_passphrase() -> anyhow::Result<secrecy::SecretString> {
    match std::env::var("BLOCKS_EXPORT_PASSPHRASE") {
        Ok(p) if p.chars().count() >= 8 => Ok(secrecy::SecretString::from(p)),
        Ok(_) => bail!("BLOCKS_EXPORT_PASSPHRASE must be at least 8 characters"),
        Err(_) => bail!(
            "set BLOCKS_EXPORT_PASSPHRASE: the exported secrets are encrypted under it (argon2id + AES-256-GCM)"
        ),
    }
}

pub(super) async fn derive(
    passphrase: secrecy::SecretString,
    params: crate::crypto::KdfParams,
) -> anyhow::Result<crate::crypto::MasterKey> {
    tokio::task::spawn_blocking(move || crate::crypto::MasterKey::derive(&passphrase, &params))
        .await
        .map_err(|e| anyhow!("key derivation did not finish: {e}"))?
        .map_err(|e| anyhow!("{e}"))
}

/// A document's own data: references as `$ref`s to the (exported) ids.
pub(super) fn own_data(doc: &Value) -> Map<String, Value> {
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

/// The documents of `client`'s server in export form (own data, references as `$ref`s to
/// the source ids), anonymous ones included.
pub(super) async fn documents_of(client: &Client) -> anyhow::Result<Vec<Value>> {
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
pub(super) async fn import_records(
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
            .call::<(), Value>(
                Method::GET,
                &format!("block_types/slug/{}", enc(&slug)),
                None,
            )
            .await;
        let id = match existing {
            Ok(found) => found["id"].clone(),
            Err(registry_client::Error::Http { status: 404, .. }) => {
                let body = json!({"name": ty["name"], "slug": slug, "logo_url": ty["logo_url"],
                    "documentation_url": ty["documentation_url"], "description": ty["description"],
                    "code_example": ty["code_example"]});
                client
                    .call::<_, Value>(Method::POST, "block_types/", Some(&body))
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
            .call::<_, Value>(Method::POST, "block_schemas/", Some(&body))
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
        match client
            .call::<(), Value>(Method::GET, &block_path(&slug, &name), None)
            .await
        {
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
                .call::<_, Value>(Method::POST, "block_documents/", Some(&body))
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
pub(super) fn references_of(doc: &Value) -> Vec<String> {
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
