//! Settings shared by every replica: versions kept per document and days audit records are
//! kept, each checked at its field before either is stored.

use axum::extract::{Query, State};
use axum::response::{IntoResponse as _, Redirect, Response};
use maud::{Markup, html};

use super::{FieldErrors, Section, admin_write, answer, page as frame, refused};
use crate::console::Viewer;
use crate::console::layout::form_token;
use crate::console::session::{ConsoleWrite, FormPairs};
use crate::http::AppState;
use crate::store::Store;

/// The longest audit retention (as the store allows).
const MAX_AUDIT_DAYS: u32 = 36_500;

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct SettingsQuery {
    #[serde(default)]
    saved: Option<String>,
}

/// The form's values as typed.
#[derive(Debug, Default)]
struct Draft {
    retention: String,
    audit_retention_days: String,
}

fn shown(value: Option<u32>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

fn render_form(viewer: &Viewer, draft: &Draft, errors: &FieldErrors, saved: bool) -> Markup {
    html! {
        h1 { "Settings" }
        @if saved {
            p.notice role="status" { "The settings are saved; every replica uses them from now on." }
        }
        (errors.summary("The settings were not saved:"))
        form.form-panel method="post" action="/admin/settings" novalidate {
            (form_token(viewer))
            div.field {
                label for="retention" { "Versions kept per document " span.optional { "(empty: all)" } }
                input #retention type="number" name="retention" value=(draft.retention) min="1" inputmode="numeric"
                    aria-invalid=[errors.invalid("retention")]
                    aria-describedby=[errors.described_by("retention", true)];
                p.hint #retention-hint { "The current version always stays. Lowering it deletes older versions at once." }
                (errors.at("retention"))
            }
            div.field {
                label for="audit_retention_days" { "Days audit records are kept " span.optional { "(empty: for ever)" } }
                input #audit_retention_days type="number" name="audit_retention_days" value=(draft.audit_retention_days)
                    min="1" max=(MAX_AUDIT_DAYS) inputmode="numeric"
                    aria-invalid=[errors.invalid("audit_retention_days")]
                    aria-describedby=[errors.described_by("audit_retention_days", true)];
                p.hint #audit_retention_days-hint { "1 to " (MAX_AUDIT_DAYS) " days. Lowering it deletes older records at once." }
                (errors.at("audit_retention_days"))
            }
            div.actions { button.primary type="submit" { "Save settings" } }
        }
    }
}

pub(super) async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(query): Query<SettingsQuery>,
) -> Result<Response, Response> {
    answer(&viewer, async {
        let draft = Draft {
            retention: shown(state.store.retention().await?),
            audit_retention_days: shown(state.store.audit_retention_days().await?),
        };
        Ok(page_of(
            &viewer,
            &render_form(
                &viewer,
                &draft,
                &FieldErrors::default(),
                query.saved.is_some(),
            ),
        ))
    })
    .await
}

fn page_of(viewer: &Viewer, body: &Markup) -> Response {
    frame(viewer, "Settings", Section::Settings, body)
}

/// A field: empty is `None`; otherwise a whole number in `range`.
fn number(
    text: &str,
    field: &'static str,
    message: &str,
    range: std::ops::RangeInclusive<u32>,
    errors: &mut FieldErrors,
) -> Option<u32> {
    if text.is_empty() {
        return None;
    }
    match text.parse::<u32>() {
        Ok(n) if range.contains(&n) => Some(n),
        _ => {
            errors.add(field, message);
            None
        }
    }
}

/// The two settings, or the draft with its problems.
fn parse(form: &FormPairs) -> Result<(Option<u32>, Option<u32>), (Draft, FieldErrors)> {
    let draft = Draft {
        retention: form
            .get("retention")
            .unwrap_or("")
            .trim()
            .chars()
            .take(20)
            .collect(),
        audit_retention_days: form
            .get("audit_retention_days")
            .unwrap_or("")
            .trim()
            .chars()
            .take(20)
            .collect(),
    };
    let mut errors = FieldErrors::default();
    let retention = number(
        &draft.retention,
        "retention",
        "Versions kept per document: a whole number of at least 1 (the current version), or empty to keep every version.",
        1..=u32::MAX,
        &mut errors,
    );
    let days = number(
        &draft.audit_retention_days,
        "audit_retention_days",
        &format!(
            "Days audit records are kept: a whole number from 1 to {MAX_AUDIT_DAYS}, or empty to keep every record."
        ),
        1..=MAX_AUDIT_DAYS,
        &mut errors,
    );
    if errors.is_empty() && Store::check_audit_retention_days(days).is_err() {
        errors.add(
            "audit_retention_days",
            "Days audit records are kept: out of range.",
        );
    }
    if errors.is_empty() {
        Ok((retention, days))
    } else {
        Err((draft, errors))
    }
}

pub(super) async fn update(write: ConsoleWrite) -> Response {
    admin_write(
        write,
        "POST /admin/settings",
        "/api/settings",
        |state, viewer, form| async move {
            let (retention, days) = match parse(&form) {
                Ok(values) => values,
                Err((draft, errors)) => {
                    let form = render_form(&viewer, &draft, &errors, false);
                    return Ok(refused(&viewer, "Settings", Section::Settings, &form));
                }
            };
            state.store.set_retention(retention).await?;
            let pruned = state.store.set_audit_retention_days(days).await?;
            if pruned > 0 {
                tracing::info!(
                    records = pruned,
                    "pruned audit records past the new retention"
                );
            }
            Ok((
                Redirect::to("/admin/settings?saved=1").into_response(),
                None,
            ))
        },
    )
    .await
}

#[cfg(test)]
mod unit {
    use super::super::form;
    use super::*;

    #[test]
    fn settings_are_checked_at_their_fields() {
        assert_eq!(
            parse(&form(&[("retention", "5"), ("audit_retention_days", "")])).unwrap(),
            (Some(5), None)
        );
        assert_eq!(parse(&form(&[])).unwrap(), (None, None));
        for (retention, days, bad) in [
            ("0", "30", "retention"),
            ("-1", "30", "retention"),
            ("many", "30", "retention"),
            ("3", "0", "audit_retention_days"),
            ("3", "36501", "audit_retention_days"),
            ("3", "99999999999999999999999", "audit_retention_days"),
        ] {
            let (_, errors) = parse(&form(&[
                ("retention", retention),
                ("audit_retention_days", days),
            ]))
            .unwrap_err();
            assert!(errors.get(bad).is_some(), "{retention} {days}");
        }
    }
}
