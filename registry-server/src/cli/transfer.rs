//! `blocks export`, `import` and `import-prefect`: moving blocks between stores, through
//! [`Client::snapshot`] and [`Client::restore`]; an export file seals the documents under a
//! passphrase.

use anyhow::{Context, anyhow, bail};
use block_types::model::{BlockSchema, BlockType};
use registry_client::{Client, ExportedDocument, Snapshot};
use serde_json::{Value, json};

use super::client;
use super::output::{Format, print};

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

/// `blocks export FILE`: every block type, schema and document (anonymous ones included)
/// to a file whose documents are sealed under `BLOCKS_EXPORT_PASSPHRASE`.
pub async fn export(file: &std::path::Path, format: Format) -> anyhow::Result<()> {
    let passphrase = export_passphrase()?;
    let snapshot = client()?.snapshot().await?;
    let params = crate::crypto::KdfParams::generate()?;
    let key = derive(passphrase, params.clone()).await?;
    let plain = zeroize::Zeroizing::new(serde_json::to_vec(&snapshot.documents)?);
    let types = serde_json::to_value(&snapshot.block_types)?;
    let schemas = serde_json::to_value(&snapshot.block_schemas)?;
    let sealed = key.seal_bytes(&export_aad(&types, &schemas)?, &plain)?;
    let count = snapshot.documents.len();
    let out = json!({
        "format": EXPORT_FORMAT,
        "kdf": params,
        "block_types": types,
        "block_schemas": schemas,
        "documents": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, sealed),
        "document_count": count,
    });
    write_new_private(file, &serde_json::to_string_pretty(&out)?)?;
    print(
        format,
        &json!({"file": file.display().to_string(), "documents": count}),
        &["EXPORTED", "DOCUMENTS"],
        &[vec![file.display().to_string(), count.to_string()]],
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
    // The seal covers the types and schemas exactly as the file has them.
    let plain = key
        .open_bytes(
            &export_aad(&export["block_types"], &export["block_schemas"])?,
            &sealed,
        )
        .map_err(|_| anyhow!("wrong passphrase (or a damaged file): nothing was imported"))?;
    let documents: Vec<ExportedDocument> =
        serde_json::from_slice(&plain).context("the export's documents do not parse")?;
    let block_types: Vec<BlockType> = serde_json::from_value(export["block_types"].clone())
        .context("the export's block types do not parse")?;
    let block_schemas: Vec<BlockSchema> = serde_json::from_value(export["block_schemas"].clone())
        .context("the export's block schemas do not parse")?;
    let snapshot = Snapshot {
        block_types,
        block_schemas,
        documents,
    };
    let restored = client()?.restore(&snapshot, |_| {}).await?;
    print(
        format,
        &restored,
        &["CREATED", "ALREADY THERE"],
        &[vec![
            restored.created.to_string(),
            restored.kept.to_string(),
        ]],
    );
    Ok(())
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
    let snapshot = source
        .snapshot()
        .await
        .context("reading the Prefect server (--url); nothing was imported")?;
    let bar = indicatif::ProgressBar::new(snapshot.documents.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} blocks")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let outcome = target.restore(&snapshot, |n| bar.inc(n)).await;
    bar.finish_and_clear();
    let restored = outcome?;
    let (types, schemas) = (snapshot.block_types.len(), snapshot.block_schemas.len());
    print(
        format,
        &json!({"block_types": types, "block_schemas": schemas, "created": restored.created, "kept": restored.kept}),
        &["TYPES", "SCHEMAS", "BLOCKS CREATED", "ALREADY THERE"],
        &[vec![
            types.to_string(),
            schemas.to_string(),
            restored.created.to_string(),
            restored.kept.to_string(),
        ]],
    );
    Ok(())
}
