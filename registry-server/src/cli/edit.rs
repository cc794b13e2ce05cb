//! `blocks edit`: a block's data in `$EDITOR`, through a private temporary directory that
//! is removed however the command ends (the editor exits, or SIGINT/SIGTERM/SIGHUP stop it).

use anyhow::{Context, bail};
use block_types::model::BlockDocumentUpdate;
use serde_json::{Value, json};

use super::output::{Format, print};
use super::transfer::write_private;
use super::{client, or_missing, split_address};

/// `blocks edit SLUG/NAME`: opens `$EDITOR` (else `vi`) on the block's data as JSON, secrets
/// shown as `"********"` and kept unless changed; the write is conditional on the version
/// read (`If-Match`), so someone else's change meanwhile is reported, not overwritten.
///
/// The data is written to a file (0600) in a directory of its own (0700), removed when the
/// editor exits and also when the command is interrupted (SIGINT, SIGTERM, SIGHUP): the
/// editor is then killed, the directory removed, and nothing is changed.
pub async fn edit(address: &str, format: Format) -> anyhow::Result<()> {
    let client = client()?;
    let (slug, name) = split_address(address)?;
    let (doc, etag) = client
        .block_document_tagged(slug, name)
        .await
        .map_err(or_missing(format!("block {slug}/{name} on the server")))?;
    // Referenced blocks are edited on their own: show their references, not their data.
    let mut data = doc.data;
    for (field, reference) in doc.block_document_references {
        data.insert(
            field,
            json!({"$ref": {"block_document_id": reference.block_document.id}}),
        );
    }
    let original = zeroize::Zeroizing::new(serde_json::to_string_pretty(&Value::Object(data))?);
    // From here on an interruption is caught, so it unwinds through the drops below (which
    // remove the temporary directory) instead of ending the process where it stands.
    let mut interruption = Interruption::listen()?;
    let dir = private_dir()?;
    let file = dir.path().join(tempfile_name(slug, name));
    write_private(&file, &original)?;
    let editor = ["VISUAL", "EDITOR"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "vi".to_owned());
    // `exec`: the child is the editor itself, so killing it on an interruption reaches it
    // (not for `VAR=value editor`, which `exec` would take for the command).
    let exec = match editor.split_whitespace().next() {
        Some(word) if word.contains('=') => "",
        _ => "exec ",
    };
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{exec}{editor} \"$1\""))
        .arg("sh")
        .arg(&file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start the editor {editor:?}"))?;
    let status = tokio::select! {
        status = child.wait() => status.context("cannot wait for the editor")?,
        signal = interruption.recv() => {
            let _ = child.kill().await;
            drop(dir);
            bail!(
                "interrupted by {signal} while the editor was open: nothing was changed, and the temporary copy was removed"
            );
        }
    };
    let edited = std::fs::read_to_string(&file).map(zeroize::Zeroizing::new);
    drop(dir);
    if !status.success() {
        bail!("the editor exited with {status}; nothing was changed");
    }
    let edited = edited.context("cannot read the edited file")?;
    if edited.trim() == original.trim() {
        print(
            format,
            &json!({"changed": false}),
            &["UNCHANGED"],
            &[vec![address.to_owned()]],
        );
        return Ok(());
    }
    let data: Value = serde_json::from_str(&edited)
        .context("the edited text is not JSON; nothing was changed")?;
    let Value::Object(data) = data else {
        bail!("the edited data must be a JSON object; nothing was changed");
    };
    let update = BlockDocumentUpdate {
        block_schema_id: None,
        data: Some(data),
        merge_existing_data: false,
    };
    let outcome = tokio::select! {
        outcome = client.update_block_document(doc.id, &update, etag.as_deref()) => outcome,
        signal = interruption.recv() => bail!(
            "interrupted by {signal} while saving: the change may or may not have been written (see blocks history {address})"
        ),
    };
    match outcome {
        Ok(_) => {}
        Err(registry_client::Error::Http { status: 412, .. }) => bail!(
            "{address} was changed by someone else while you edited it; nothing was written (run blocks edit again)"
        ),
        Err(e) => return Err(e.into()),
    }
    print(
        format,
        &json!({"changed": true}),
        &["UPDATED"],
        &[vec![address.to_owned()]],
    );
    Ok(())
}

/// A new directory only its owner can enter (0700, set at creation, before anything is
/// written in it): the file, and any swap or backup file the editor makes beside it, stay
/// unreadable to others whatever their own modes.
fn private_dir() -> anyhow::Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("blocks-edit-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        builder.permissions(std::fs::Permissions::from_mode(0o700));
    }
    let dir = builder
        .tempdir()
        .context("cannot make a private temporary directory")?;
    // The mode given at creation passes through the umask; make it exactly 0700.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .context("cannot make the temporary directory private")?;
    }
    Ok(dir)
}

fn tempfile_name(slug: &str, name: &str) -> String {
    let safe: String = format!("{slug}-{name}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.json")
}

/// The signals that end the command early. Once listened for, they no longer end the
/// process by themselves: the command notices them and returns, so every drop runs.
#[derive(Debug)]
struct Interruption {
    #[cfg(unix)]
    signals: [(tokio::signal::unix::Signal, &'static str); 3],
}

impl Interruption {
    #[cfg(unix)]
    fn listen() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &'static str| {
            signal(kind)
                .map(|s| (s, name))
                .with_context(|| format!("cannot listen for {name}"))
        };
        Ok(Self {
            signals: [
                listen(SignalKind::interrupt(), "SIGINT")?,
                listen(SignalKind::terminate(), "SIGTERM")?,
                listen(SignalKind::hangup(), "SIGHUP")?,
            ],
        })
    }

    #[cfg(not(unix))]
    fn listen() -> anyhow::Result<Self> {
        Ok(Self {})
    }

    /// Waits for the first of the signals; returns its name.
    #[cfg(unix)]
    async fn recv(&mut self) -> &'static str {
        let [(int, a), (term, b), (hup, c)] = &mut self.signals;
        tokio::select! {
            _ = int.recv() => a,
            _ = term.recv() => b,
            _ = hup.recv() => c,
        }
    }

    #[cfg(not(unix))]
    async fn recv(&mut self) -> &'static str {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "Ctrl-C",
            Err(_) => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_file_name_keeps_only_safe_characters() {
        assert_eq!(
            tempfile_name("gcs-bucket", "a b/../c"),
            "gcs-bucket-a_b____c.json"
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_temporary_directory_is_private_and_removed_on_drop() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = private_dir().unwrap();
        let path = dir.path().to_owned();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        drop(dir);
        assert!(!path.exists());
    }
}
