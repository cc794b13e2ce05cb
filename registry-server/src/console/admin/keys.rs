//! Keys: where the master key came from (never the key), the data keys and what each
//! seals, rotation (a confirmation, then a post that starts the background re-encryption)
//! and the re-encryption's progress: a page with a "Refresh" link, kept up to date by the
//! console's script from a small JSON answer.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse as _, Redirect, Response};
use maud::{Markup, html};
use uuid::Uuid;

use super::{Section, admin_write, answer, column_heads, page as frame, require_admin};
use crate::console::layout::form_token;
use crate::console::session::ConsoleWrite;
use crate::console::{PageError, Viewer};
use crate::http::AppState;
use crate::store::{KeyStatus, MasterKeyOrigin};

/// How far the re-encryption is: versions sealed under the active key, and those still
/// sealed under a retired one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Progress {
    /// The key new writes use.
    pub(crate) active: Uuid,
    /// Versions sealed under the active key.
    pub(crate) moved: i64,
    /// Versions still sealed under a retired key.
    pub(crate) remaining: i64,
    /// Every version that holds a secret.
    pub(crate) total: i64,
    /// No version is left under a retired key.
    pub(crate) done: bool,
}

impl Progress {
    fn of(status: &KeyStatus) -> Self {
        let (mut moved, mut remaining) = (0, 0);
        for key in &status.keys {
            if key.id == status.active {
                moved += key.versions;
            } else {
                remaining += key.versions;
            }
        }
        Self {
            active: status.active,
            moved,
            remaining,
            total: moved + remaining,
            done: remaining == 0,
        }
    }

    fn percent(&self) -> i64 {
        if self.total == 0 {
            100
        } else {
            self.moved * 100 / self.total
        }
    }
}

/// The re-encryption's progress, as the JSON answer and the page give it.
pub(crate) async fn progress(state: &AppState) -> Result<Progress, PageError> {
    let (active, moved, remaining) = state.store.reencryption_progress().await?;
    Ok(Progress {
        active,
        moved,
        remaining,
        total: moved + remaining,
        done: remaining == 0,
    })
}

fn progress_block(p: &Progress) -> Markup {
    html! {
        div.progress #reencryption data-progress-url="/admin/keys/progress.json" {
            label for="reencryption-bar" { "Re-encryption" }
            progress #reencryption-bar max=(p.total.max(1)) value=(if p.total == 0 { 1 } else { p.moved }) {
                (p.percent()) "%"
            }
            p #reencryption-text role="status" aria-live="polite" {
                @if p.done {
                    "Done: every version (" (p.total) ") is sealed under the active key."
                } @else {
                    (p.moved) " of " (p.total) " versions sealed under the active key; " (p.remaining) " to go."
                }
            }
        }
    }
}

pub(super) async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
) -> Result<Response, Response> {
    answer(&viewer, render(&state, &viewer)).await
}

async fn render(state: &AppState, viewer: &Viewer) -> Result<Response, PageError> {
    let status = state.store.key_status().await?;
    let p = Progress::of(&status);
    let origin = &state.store.config().master_key_origin;
    let body = html! {
        div.title-row {
            h1 { "Keys" }
            div.actions { a.button.primary href="/admin/keys/rotate" { "Rotate the data key" } }
        }
        section aria-labelledby="master-h" {
            h2 #master-h { "Master key" }
            p {
                "The master key wraps the data keys. "
                @if *origin == MasterKeyOrigin::Unspecified {
                    "This server was not told where its master key came from (it was started by a program embedding the store)."
                } @else {
                    "This server took it from " strong { (origin.to_string()) } "."
                }
                @if status.passphrase { " The store derives it from a passphrase." }
                " It is never stored in the database or shown here; back it up: without it no secret can be read."
            }
        }
        section aria-labelledby="data-h" {
            h2 #data-h { "Data keys" }
            div.table-wrap {
                table.list #keys {
                    caption.visually-hidden { "Data keys, oldest first" }
                    thead { tr { (column_heads(&["Key", "State", "Documents", "Versions", "Encryptions"])) } }
                    tbody {
                        @for k in &status.keys {
                            tr {
                                th scope="row" { code { (k.id) } }
                                td { span class=(format!("badge key-{}", k.state)) { (k.state) } }
                                td { (k.documents) }
                                td { (k.versions) }
                                td { (k.encryptions) }
                            }
                        }
                    }
                }
            }
            p.hint { "Documents: those whose current version a key seals. Versions: every stored version it seals. A retired key is destroyed once no version needs it." }
        }
        @if !p.done {
            section aria-labelledby="progress-h" {
                h2 #progress-h { "Re-encryption" }
                (progress_block(&p))
                p { a href="/admin/keys/progress" { "Follow the re-encryption" } }
            }
        }
    };
    Ok(frame(viewer, "Keys", Section::Keys, &body))
}

pub(super) async fn confirm_rotate(viewer: Viewer) -> Response {
    if let Err(e) = require_admin(&viewer) {
        return e.render(Some(&viewer));
    }
    let body = html! {
        section.narrow {
            nav.crumbs aria-label="Breadcrumb" { a href="/admin/keys" { "Keys" } " / " span aria-current="page" { "Rotate" } }
            h1 { "Rotate the data key?" }
            p { "A new data key seals every secret written from now on. The secrets sealed under the current key are re-encrypted in the background while the server keeps answering; once none is left, the old key is destroyed." }
            form method="post" action="/admin/keys/rotate" {
                (form_token(&viewer))
                div.actions {
                    button.danger type="submit" { "Rotate the data key" }
                    a.button href="/admin/keys" { "Cancel" }
                }
            }
        }
    };
    frame(&viewer, "Rotate the data key", Section::Keys, &body)
}

pub(super) async fn rotate(write: ConsoleWrite) -> Response {
    admin_write(
        write,
        "POST /admin/keys/rotate",
        "/api/keys/rotate",
        |state, viewer, _| async move {
            let active = state
                .store
                .rotate_data_key_by(Some(viewer.token.id))
                .await?;
            tracing::info!(%active, "data key rotated from the console");
            crate::http::admin::start_reencryption(&state.store);
            Ok((Redirect::to("/admin/keys/progress").into_response(), None))
        },
    )
    .await
}

/// Starts the re-encryption again, for a run a restart interrupted.
pub(super) async fn resume(write: ConsoleWrite) -> Response {
    admin_write(
        write,
        "POST /admin/keys/resume",
        "/api/keys",
        |state, _, _| async move {
            crate::http::admin::start_reencryption(&state.store);
            Ok((Redirect::to("/admin/keys/progress").into_response(), None))
        },
    )
    .await
}

pub(super) async fn progress_page(
    State(state): State<AppState>,
    viewer: Viewer,
) -> Result<Response, Response> {
    answer(&viewer, async {
        let p = progress(&state).await?;
        let body = html! {
            nav.crumbs aria-label="Breadcrumb" { a href="/admin/keys" { "Keys" } " / " span aria-current="page" { "Re-encryption" } }
            h1 { "Re-encryption" }
            p { "Every stored version holding a secret moves to the active data key " code { (p.active) } ". Reads and writes go on meanwhile." }
            (progress_block(&p))
            div.actions {
                a.button #progress-refresh href="/admin/keys/progress" { "Refresh" }
                a.button href="/admin/keys" { "Back to the keys" }
            }
            @if !p.done {
                form.resume method="post" action="/admin/keys/resume" {
                    (form_token(&viewer))
                    p.hint { "If the count stops moving (the server restarted during the re-encryption), resume it: " }
                    button type="submit" { "Resume the re-encryption" }
                }
            }
        };
        Ok(frame(&viewer, "Re-encryption", Section::Keys, &body))
    })
    .await
}

/// The progress as JSON, polled by the progress page's script.
pub(super) async fn progress_json(
    State(state): State<AppState>,
    viewer: Viewer,
) -> Result<Json<Progress>, Response> {
    answer(&viewer, progress(&state)).await.map(Json)
}
