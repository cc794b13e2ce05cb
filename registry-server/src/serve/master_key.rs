//! The master key: where it comes from, key files.

use super::store_files::StoreArgs;
use super::store_files::create_private_file;
use crate::crypto::MasterKey;
use crate::store::{MasterKeyOrigin, MasterKeySource};
use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};
use std::path::Path;

/// Reads a key file, warning when others may read it.
pub(super) fn read_key_file(path: &Path) -> anyhow::Result<MasterKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the master key file {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), "the master key file can be read by other users; chmod 600 it");
        }
    }
    MasterKey::from_base64(&text)
        .with_context(|| format!("the master key file {} is not usable", path.display()))
}

/// Writes a new key file readable by its owner only; never overwrites.
pub(super) fn create_key_file(path: &Path, key: &MasterKey) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = create_private_file(path)
        .with_context(|| format!("cannot create the master key file {}", path.display()))?;
    writeln!(file, "{}", key.to_base64().expose_secret())?;
    file.sync_all()?;
    // Make the new directory entry durable too: the store records the key's check value
    // next, and a store whose key file vanished in a crash would lose every secret.
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Where the master key comes from, in order: `--master-key-file`, `BLOCKS_MASTER_KEY`,
/// `BLOCKS_PASSPHRASE`, then `$BLOCKS_HOME/master.key`. A key file is created only for a
/// new embedded store; an existing store never gets a new key.
pub(super) fn master_key_source(
    args: &StoreArgs,
    home: &Path,
    embedded_db: Option<&Path>,
) -> anyhow::Result<(MasterKeySource, MasterKeyOrigin)> {
    if let Some(path) = &args.master_key_file {
        return Ok((
            MasterKeySource::Key(read_key_file(path)?),
            MasterKeyOrigin::File(path.clone()),
        ));
    }
    if let Ok(text) = std::env::var("BLOCKS_MASTER_KEY") {
        let key = MasterKey::from_base64(&text).context("BLOCKS_MASTER_KEY is not usable")?;
        return Ok((MasterKeySource::Key(key), MasterKeyOrigin::Environment));
    }
    if let Ok(passphrase) = std::env::var("BLOCKS_PASSPHRASE") {
        if passphrase.is_empty() {
            bail!("BLOCKS_PASSPHRASE is empty");
        }
        return Ok((
            MasterKeySource::Passphrase(SecretString::from(passphrase)),
            MasterKeyOrigin::Passphrase,
        ));
    }
    let default = home.join("master.key");
    if default.exists() {
        return Ok((
            MasterKeySource::Key(read_key_file(&default)?),
            MasterKeyOrigin::File(default),
        ));
    }
    match embedded_db {
        Some(db) if !db.exists() => {
            let key = MasterKey::generate()?;
            create_key_file(&default, &key)?;
            tracing::warn!(
                path = %default.display(),
                "created a new master key for this new store; back it up: without it the secrets in the store cannot be read"
            );
            Ok((MasterKeySource::Key(key), MasterKeyOrigin::File(default)))
        }
        Some(db) => bail!(
            "the store {} exists but its master key {} is missing; give the key with --master-key-file, BLOCKS_MASTER_KEY or BLOCKS_PASSPHRASE",
            db.display(),
            default.display()
        ),
        None => bail!(
            "a database given by URL needs an explicit master key: --master-key-file, BLOCKS_MASTER_KEY or BLOCKS_PASSPHRASE"
        ),
    }
}

/// The new master key of `blocks key change-master`: `--new-master-key-file`, else
/// `BLOCKS_NEW_MASTER_KEY`, else `BLOCKS_NEW_PASSPHRASE`.
pub fn new_master_source(file: Option<&Path>) -> anyhow::Result<MasterKeySource> {
    if let Some(path) = file {
        return Ok(MasterKeySource::Key(read_key_file(path)?));
    }
    if let Ok(text) = std::env::var("BLOCKS_NEW_MASTER_KEY") {
        let key = MasterKey::from_base64(&text).context("BLOCKS_NEW_MASTER_KEY is not usable")?;
        return Ok(MasterKeySource::Key(key));
    }
    if let Ok(passphrase) = std::env::var("BLOCKS_NEW_PASSPHRASE") {
        if passphrase.chars().count() < 8 {
            bail!("BLOCKS_NEW_PASSPHRASE must be at least 8 characters");
        }
        return Ok(MasterKeySource::Passphrase(SecretString::from(passphrase)));
    }
    bail!(
        "give the new master key: --new-master-key-file, BLOCKS_NEW_MASTER_KEY or BLOCKS_NEW_PASSPHRASE (blocks key generate makes one)"
    )
}
