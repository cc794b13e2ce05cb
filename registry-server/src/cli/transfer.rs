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

/// An export file as it is on disk: the types and schemas in clear, the documents (a JSON
/// list of [`ExportedDocument`]s, secrets in clear) sealed under the passphrase.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct ExportFile {
    /// [`EXPORT_FORMAT`].
    pub(super) format: String,
    /// How the passphrase becomes the key.
    pub(super) kdf: crate::crypto::KdfParams,
    /// The block types, exactly as the file has them: the seal covers their JSON text.
    #[serde(default)]
    pub(super) block_types: Value,
    /// The block schemas, likewise.
    #[serde(default)]
    pub(super) block_schemas: Value,
    /// The sealed documents, base64.
    #[serde(default)]
    pub(super) documents: String,
    /// How many documents are sealed (for whoever looks at the file).
    #[serde(default)]
    pub(super) document_count: usize,
}

impl ExportFile {
    /// Reads an export file's text. A text that is not JSON, of another format, or without
    /// its key parameters is refused with a word on which.
    pub(super) fn parse(text: &str, file: &std::path::Path) -> anyhow::Result<Self> {
        let value: Value = serde_json::from_str(text)
            .with_context(|| format!("{} is not a blocks export", file.display()))?;
        if value.get("format").and_then(Value::as_str) != Some(EXPORT_FORMAT) {
            bail!("{} is not a {EXPORT_FORMAT} file", file.display());
        }
        serde_json::from_value(value).context("the export's key parameters are missing")
    }
}

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
    let out = ExportFile {
        format: EXPORT_FORMAT.to_owned(),
        kdf: params,
        block_types: types,
        block_schemas: schemas,
        documents: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, sealed),
        document_count: count,
    };
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
    let export = ExportFile::parse(&contents, file)?;
    let params = export.kdf;
    if params.m_cost_kib > MAX_IMPORT_M_COST_KIB || params.t_cost > 64 || params.p_cost > 16 {
        bail!("the export asks for an unreasonable key derivation cost; refusing");
    }
    let key = derive(passphrase, params).await?;
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(&export.documents)
        .context("the export's documents are not base64")?;
    // The seal covers the types and schemas exactly as the file has them.
    let plain = key
        .open_bytes(
            &export_aad(&export.block_types, &export.block_schemas)?,
            &sealed,
        )
        .map_err(|_| anyhow!("wrong passphrase (or a damaged file): nothing was imported"))?;
    let documents: Vec<ExportedDocument> =
        serde_json::from_slice(&plain).context("the export's documents do not parse")?;
    let block_types: Vec<BlockType> = serde_json::from_value(export.block_types)
        .context("the export's block types do not parse")?;
    let block_schemas: Vec<BlockSchema> = serde_json::from_value(export.block_schemas)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::crypto::{KdfParams, MasterKey};

    const TYPE_ID: &str = "0b7d8f3e-3c1a-4f57-9d61-0d2b1f9e2a10";

    /// An export as `blocks export` writes it (`blocks-export/1`), its fields spelled out as
    /// JSON, the documents sealed under `key`.
    fn written(key: &MasterKey) -> Value {
        let types = json!([{
            "id": TYPE_ID,
            "created": "2026-01-01T00:00:00.000000Z",
            "updated": "2026-01-01T00:00:00.000000Z",
            "name": "Secret",
            "slug": "secret",
            "logo_url": null,
            "documentation_url": null,
            "description": null,
            "code_example": null,
            "is_protected": false,
        }]);
        let schemas = json!([{
            "id": "5f0c2a8e-8f35-4f6b-a7a4-4c1c3e0f8d21",
            "created": "2026-01-01T00:00:00.000000Z",
            "updated": "2026-01-01T00:00:00.000000Z",
            "checksum": "sha256:x",
            "fields": {"title": "Secret", "type": "object"},
            "block_type_id": TYPE_ID,
            "block_type": null,
            "capabilities": [],
            "version": "1",
        }]);
        let documents = json!([{
            "id": "9a1b3c5d-7e9f-4a1b-8c3d-5e7f9a1b3c5d",
            "name": "api-token",
            "is_anonymous": false,
            "block_type_slug": "secret",
            "block_schema_checksum": "sha256:x",
            "block_schema_version": "1",
            "data": {"value": "canary-export-51c2"},
        }]);
        let sealed = key
            .seal_bytes(
                &export_aad(&types, &schemas).unwrap(),
                &serde_json::to_vec(&documents).unwrap(),
            )
            .unwrap();
        json!({
            "format": EXPORT_FORMAT,
            "kdf": {"salt": "c2FsdHNhbHRzYWx0c2FsdA==", "m_cost_kib": 19456, "t_cost": 2, "p_cost": 1},
            "block_types": types,
            "block_schemas": schemas,
            "documents": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, sealed),
            "document_count": 1,
        })
    }

    #[test]
    fn an_export_file_in_the_current_format_still_parses_and_opens() {
        let key = MasterKey::generate().unwrap();
        let on_disk = serde_json::to_string_pretty(&written(&key)).unwrap();
        let file = ExportFile::parse(&on_disk, std::path::Path::new("x.json")).unwrap();
        assert_eq!(file.document_count, 1);
        assert_eq!(file.kdf.m_cost_kib, KdfParams::MIN_M_COST_KIB);
        assert!(!format!("{file:?}").contains("canary"));
        // Written again, it is the same text: the layout on disk did not change.
        assert_eq!(serde_json::to_string_pretty(&file).unwrap(), on_disk);
        let sealed =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &file.documents)
                .unwrap();
        let plain = key
            .open_bytes(
                &export_aad(&file.block_types, &file.block_schemas).unwrap(),
                &sealed,
            )
            .unwrap();
        let documents: Vec<ExportedDocument> = serde_json::from_slice(&plain).unwrap();
        assert_eq!(documents[0].name.as_deref(), Some("api-token"));
        let types: Vec<BlockType> = serde_json::from_value(file.block_types).unwrap();
        let schemas: Vec<BlockSchema> = serde_json::from_value(file.block_schemas).unwrap();
        assert_eq!(schemas[0].block_type_id, types[0].id);
    }

    #[test]
    fn a_file_that_is_not_an_export_is_refused_naming_why() {
        let path = std::path::Path::new("x.json");
        let refused = |text: &str| format!("{:#}", ExportFile::parse(text, path).unwrap_err());
        assert!(refused("not json").contains("x.json is not a blocks export"));
        assert!(refused(r#"{"format": "blocks-export/0"}"#).contains("not a blocks-export/1 file"));
        let mut no_kdf = written(&MasterKey::generate().unwrap());
        no_kdf.as_object_mut().unwrap().remove("kdf");
        assert!(refused(&no_kdf.to_string()).contains("the export's key parameters are missing"));
    }
}
