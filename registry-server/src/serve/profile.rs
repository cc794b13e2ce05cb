//! The profile the CLI and client read: the first admin token and the API URL.

use super::store_files::create_home;
use super::store_files::create_private_file;
use crate::http::AppState;
use crate::store::Store;
use anyhow::Context;
use registry_client::Profile;
use secrecy::{ExposeSecret, SecretString};
use std::path::Path;

/// On a database that never had one, creates the first admin token and writes it with the
/// API URL to `$BLOCKS_HOME/profile.toml` (mode 0600), then says where it is; the token
/// itself is never printed where a terminal log or a CI log would keep it. When a profile
/// of another store is already there, the token goes to a new owner-only file beside it.
pub(super) async fn first_token(
    state: &AppState,
    home: &Path,
    url: &str,
) -> anyhow::Result<Option<SecretString>> {
    let Some(created) = state
        .store
        .bootstrap_admin_token()
        .await
        .context("cannot create the first admin token")?
    else {
        return Ok(None);
    };
    let profile = home.join("profile.toml");
    let written = if profile.exists() {
        // It belongs to another store (or an earlier one): its token is not replaced.
        let path = home.join(format!("admin-token-{}", created.info.id));
        create_private_file(&path)
            .and_then(|mut file| {
                use std::io::Write as _;
                writeln!(file, "{}", created.token.expose_secret())
            })
            .map(|()| path)
            .with_context(|| format!("cannot write {}", home.display()))
    } else {
        create_home(home)
            .and_then(|()| write_profile(&profile, url, &created.token))
            .map(|()| profile)
    };
    match written {
        Ok(path) => {
            #[allow(clippy::print_stdout)]
            {
                println!(
                    "Created the first admin token; it is in {} (readable by you only). Use it as `Authorization: Bearer <token>`, or as PREFECT_API_KEY for Prefect clients.",
                    path.display()
                );
            }
            tracing::info!(token_id = %created.info.id, file = %path.display(), "created the first admin token");
        }
        Err(e) => {
            // Nowhere to keep it: shown once rather than lost (an admin on this host can
            // also make a new one with `blocks token create --offline`).
            tracing::warn!(
                token_id = %created.info.id,
                error = %format!("{e:#}"),
                "created the first admin token but could not write it to a file; it is shown once on standard output"
            );
            #[allow(clippy::print_stdout)]
            {
                println!(
                    "Created the first admin token (shown only this once):\n\n    {}\n",
                    created.token.expose_secret()
                );
            }
        }
    }
    Ok(Some(created.token))
}

/// Points an existing profile at this server's address (a restart may listen elsewhere,
/// e.g. with `--port 0`), keeping its token — only when that token is one of this store's:
/// a profile of another store is left alone, as is one that does not parse.
pub(super) async fn refresh_profile(store: &Store, path: &Path, url: &str) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let Ok(Profile {
        api_url,
        api_key: Some(api_key),
    }) = Profile::parse(&text)
    else {
        return;
    };
    if api_url == url || !matches!(store.authenticate(&api_key).await, Ok(Ok(_))) {
        return;
    }
    let key = SecretString::from(api_key);
    if let Err(e) = write_profile(path, url, &key) {
        tracing::warn!(error = %format!("{e:#}"), profile = %path.display(), "could not update the profile's api_url");
    }
}

/// Writes the profile readable by its owner only, replacing any earlier one atomically.
pub(super) fn write_profile(path: &Path, url: &str, token: &SecretString) -> anyhow::Result<()> {
    use std::io::Write;
    let text = Profile {
        api_url: url.to_owned(),
        api_key: Some(token.expose_secret().to_owned()),
    }
    .to_toml()
    .context("cannot encode the profile")?;
    let tmp = path.with_extension("toml.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file =
        create_private_file(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
