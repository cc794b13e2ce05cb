//! `blocks key …`: the data keys, rotation and the master key.

use block_types::access::KeyStatus;
use registry_client::Client;
use serde_json::json;

use super::client;
use super::output::{Format, print};

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
            let status = client()?.key_status().await?;
            let rows: Vec<Vec<String>> = status
                .keys
                .iter()
                .map(|k| {
                    vec![
                        k.id.to_string(),
                        k.state.clone(),
                        k.encryptions.to_string(),
                        k.documents.to_string(),
                        k.versions.to_string(),
                    ]
                })
                .collect();
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
            let rotated = client.rotate_key().await?;
            if !no_wait {
                follow_reencryption(&client).await?;
            }
            print(
                format,
                &rotated,
                &["ACTIVE KEY", "RE-ENCRYPTION"],
                &[vec![
                    rotated.active.to_string(),
                    rotated.reencryption.clone(),
                ]],
            );
            Ok(())
        }
    }
}

/// Versions still sealed under keys other than the active one.
fn versions_on_old_keys(status: &KeyStatus) -> u64 {
    status
        .keys
        .iter()
        .filter(|k| k.id != status.active)
        .map(|k| u64::try_from(k.versions).unwrap_or(0))
        .sum()
}

/// Shows re-encryption progress until no version is left on an old key (or it stops
/// moving for a minute: it then goes on in the background).
async fn follow_reencryption(client: &Client) -> anyhow::Result<()> {
    let first = versions_on_old_keys(&client.key_status().await?);
    let bar = indicatif::ProgressBar::new(first);
    bar.set_style(
        indicatif::ProgressStyle::with_template("re-encrypting {bar:40} {pos}/{len} versions")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut left = first;
    let mut last_move = std::time::Instant::now();
    while left > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let now = versions_on_old_keys(&client.key_status().await?);
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
