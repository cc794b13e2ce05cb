//! How commands print: aligned tables for people, JSON with `--json`.

use serde_json::Value;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts.
    Json,
}

/// Prints `rows` under `headers` as aligned columns, or `json` as JSON.
pub(super) fn print<T: serde::Serialize + ?Sized>(
    format: Format,
    json: &T,
    headers: &[&str],
    rows: &[Vec<String>],
) {
    let out = match format {
        Format::Json => serde_json::to_string_pretty(json).unwrap_or_default(),
        Format::Table => table(headers, rows),
    };
    emit(&out);
}

/// Writes a line to standard output; a reader that went away (`blocks ls | head`) is not
/// an error.
pub(super) fn emit(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
}

pub(super) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(headers.iter().map(|h| (*h).to_owned()).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

pub(super) fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A table cell: what `value` serializes to, as [`text`] shows it (times as the API
/// writes them, `None` as an empty cell).
pub(super) fn cell<T: serde::Serialize + ?Sized>(value: &T) -> String {
    text(&serde_json::to_value(value).unwrap_or(Value::Null))
}
