//! The audit log: the records with the API's filters (token, action, outcome, target,
//! request id, time range), newest first, paged by cursor (`before` = the last `seq`
//! shown), each linked to the block its target names and to its token; and a download of
//! the filtered records as CSV or JSON lines, streamed page by page from the store.
//!
//! Filter input is checked here, field by field: a bad time, outcome or id is a 422 with
//! the message at its field, never a 500.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use maud::{Markup, html};
use uuid::Uuid;

use super::{FieldErrors, Section, answer, column_heads, page_with_status};
use crate::console::{PageError, Viewer};
use crate::http::AppState;
use crate::store::{AuditQuery, AuditRecord, Store, TokenInfo};

/// Records per page.
const PAGE: i64 = 100;
/// Records per store read while downloading (the store's largest page; smaller in tests,
/// so a download of a few hundred records spans several reads).
const DOWNLOAD_PAGE: i64 = if cfg!(test) { 64 } else { 1000 };
/// Records one download holds at most.
pub(crate) const MAX_DOWNLOAD: u64 = 1_000_000;
/// The longest text filter.
const MAX_FILTER: usize = 512;
/// Characters of a target shown in the table (the download has all of it).
const TARGET_SHOWN: usize = 300;
const OUTCOMES: [&str; 4] = ["ok", "denied", "failed", "error"];

/// The filters as typed, to show them again.
#[derive(Debug, Default, Clone)]
pub(crate) struct Filters {
    token: String,
    action: String,
    outcome: String,
    target: String,
    request_id: String,
    since: String,
    until: String,
    before: String,
    format: String,
}

impl Filters {
    /// The query string of these filters (without `before` unless asked).
    fn query(&self, before: Option<i64>) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (name, value) in [
            ("token", &self.token),
            ("action", &self.action),
            ("outcome", &self.outcome),
            ("target", &self.target),
            ("request_id", &self.request_id),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if !value.is_empty() {
                s.append_pair(name, value);
            }
        }
        if let Some(before) = before {
            s.append_pair("before", &before.to_string());
        }
        s.finish()
    }

    fn any(&self) -> bool {
        !self.query(None).is_empty()
    }
}

/// A time filter: RFC 3339, or `YYYY-MM-DD[ T]HH:MM[:SS]` or `YYYY-MM-DD` in UTC.
fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    let text = text.strip_suffix(" UTC").unwrap_or(text);
    for format in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// Reads the filters of a query string into the store's query, with each problem at its
/// field.
pub(crate) fn parse_filters(raw: Option<&str>) -> (Filters, AuditQuery, FieldErrors) {
    let mut filters = Filters::default();
    let mut errors = FieldErrors::default();
    for (name, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()).take(64) {
        let value = value.trim();
        let slot = match name.as_ref() {
            "token" => &mut filters.token,
            "action" => &mut filters.action,
            "outcome" => &mut filters.outcome,
            "target" => &mut filters.target,
            "request_id" => &mut filters.request_id,
            "since" => &mut filters.since,
            "until" => &mut filters.until,
            "before" => &mut filters.before,
            "format" => &mut filters.format,
            _ => continue,
        };
        *slot = value.chars().take(MAX_FILTER + 1).collect();
    }
    let mut query = AuditQuery::default();
    for (field, label, value) in [
        ("action", "Action", &mut filters.action),
        ("target", "Target", &mut filters.target),
        ("request_id", "Request id", &mut filters.request_id),
    ] {
        if value.len() > MAX_FILTER {
            errors.add(field, format!("{label}: at most {MAX_FILTER} bytes."));
            value.clear();
        }
    }
    let text = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    query.action = text(&filters.action);
    query.target = text(&filters.target);
    query.request_id = text(&filters.request_id);
    if !filters.token.is_empty() {
        match Uuid::parse_str(&filters.token) {
            Ok(id) => query.token_id = Some(id),
            Err(_) => {
                errors.add("token", "Token: not a token id (a UUID).");
                filters.token.truncate(0);
            }
        }
    }
    if !filters.outcome.is_empty() {
        if OUTCOMES.contains(&filters.outcome.as_str()) {
            query.outcome = Some(filters.outcome.clone());
        } else {
            errors.add("outcome", "Outcome: one of ok, denied, failed, error.");
            filters.outcome.clear();
        }
    }
    for (field, label, value, slot) in [
        ("since", "Since", &filters.since, &mut query.since),
        ("until", "Until", &filters.until, &mut query.until),
    ] {
        if value.is_empty() {
            continue;
        }
        match parse_time(value) {
            Some(t) => *slot = Some(t),
            None => errors.add(
                field,
                format!("{label}: not a time; write it as 2025-01-31T14:00:00Z, 2025-01-31 14:00 (UTC) or 2025-01-31."),
            ),
        }
    }
    if let (Some(since), Some(until)) = (query.since, query.until)
        && until <= since
    {
        errors.add("until", "Until: must be later than Since.");
    }
    if !filters.before.is_empty() {
        match filters.before.parse::<i64>() {
            Ok(n) if n > 0 => query.before = Some(n),
            _ => errors.add(
                "before",
                "The page cursor is not a record number; start from the newest records.",
            ),
        }
    }
    if !filters.format.is_empty() && !["csv", "jsonl"].contains(&filters.format.as_str()) {
        errors.add("format", "Format: csv or jsonl.");
    }
    (filters, query, errors)
}

/// The id of the block document an audit target names (`…/block_documents/<id>…` or
/// `prefect.block-document.<id>`).
pub(crate) fn block_of(target: &str) -> Option<Uuid> {
    for marker in ["/block_documents/", "prefect.block-document."] {
        if let Some(at) = target.find(marker) {
            let rest = &target[at + marker.len()..];
            if let Some(id) = rest.get(..36).and_then(|s| Uuid::parse_str(s).ok()) {
                return Some(id);
            }
        }
    }
    None
}

async fn token_names(state: &AppState) -> Result<HashMap<Uuid, String>, PageError> {
    Ok(state
        .store
        .list_tokens()
        .await?
        .into_iter()
        .map(|t: TokenInfo| (t.id, t.name))
        .collect())
}

fn filter_form(filters: &Filters, errors: &FieldErrors, tokens: &HashMap<Uuid, String>) -> Markup {
    let mut named: Vec<(&Uuid, &String)> = tokens.iter().collect();
    named.sort_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)));
    let known = Uuid::parse_str(&filters.token)
        .ok()
        .is_some_and(|id| tokens.contains_key(&id));
    let text_field = |id: &'static str, label: &str, value: &str, hint: Option<&str>| {
        html! {
            div.field {
                label for=(id) { (label) }
                input id=(id) type="text" name=(id) value=(value) maxlength=(MAX_FILTER)
                    autocomplete="off" spellcheck="false"
                    aria-invalid=[errors.invalid(id)]
                    aria-describedby=[errors.described_by(id, hint.is_some())];
                @if let Some(hint) = hint { p.hint id=(format!("{id}-hint")) { (hint) } }
                (errors.at(id))
            }
        }
    };
    html! {
        form.filters.form-panel method="get" action="/admin/audit" aria-label="Filter the audit log" novalidate {
            div.filter-grid {
                div.field {
                    label for="token" { "Token" }
                    select #token name="token" aria-invalid=[errors.invalid("token")]
                        aria-describedby=[errors.described_by("token", false)] {
                        option value="" { "Any token" }
                        @if !filters.token.is_empty() && !known {
                            option value=(filters.token) selected { (filters.token) }
                        }
                        @for (id, name) in &named {
                            option value=(id.to_string()) selected[filters.token == id.to_string()] { (name) " (" (id.to_string()[..8]) "…)" }
                        }
                    }
                    (errors.at("token"))
                }
                (text_field("action", "Action", &filters.action, Some("Starts with, e.g. DELETE or console POST")))
                div.field {
                    label for="outcome" { "Outcome" }
                    select #outcome name="outcome" aria-invalid=[errors.invalid("outcome")]
                        aria-describedby=[errors.described_by("outcome", false)] {
                        option value="" { "Any outcome" }
                        @for o in OUTCOMES {
                            option value=(o) selected[filters.outcome == o] { (o) }
                        }
                    }
                    (errors.at("outcome"))
                }
                (text_field("target", "Target", &filters.target, Some("Contains, e.g. a block id")))
                (text_field("request_id", "Request id", &filters.request_id, None))
                (text_field("since", "Since (UTC)", &filters.since, Some("At or after, e.g. 2025-01-31 14:00")))
                (text_field("until", "Until (UTC)", &filters.until, Some("Before, e.g. 2025-02-01")))
            }
            @if errors.get("before").is_some() {
                (errors.at("before"))
            }
            div.actions {
                button.primary type="submit" { "Filter" }
                @if filters.any() { a.button href="/admin/audit" { "Clear filters" } }
            }
        }
    }
}

fn records_table(records: &[AuditRecord], tokens: &HashMap<Uuid, String>) -> Markup {
    html! {
        div.table-wrap {
            table.list.audit #audit-records {
                caption.visually-hidden { "Audit records, newest first" }
                thead { tr { (column_heads(&["#", "Time (UTC)", "Token", "Action", "Target", "Outcome", "Request"])) } }
                tbody {
                    @for r in records {
                        tr {
                            th scope="row" { (r.seq) }
                            td { time datetime=(r.at.to_rfc3339()) { (r.at.format("%Y-%m-%d %H:%M:%S")) } }
                            td {
                                @match r.token_id {
                                    Some(id) => {
                                        a href=(format!("/admin/tokens#t-{id}")) title=(format!("token id {id}")) {
                                            (tokens.get(&id).map_or_else(|| id.to_string(), Clone::clone))
                                        }
                                    }
                                    None => { span.muted { "none" } }
                                }
                            }
                            td { code { (r.action) } }
                            td.target {
                                @let shown: String = r.target.chars().take(TARGET_SHOWN).collect();
                                code { (shown) @if shown.len() < r.target.len() { "…" } }
                                @if let Some(id) = block_of(&r.target) {
                                    " " a href=(format!("/blocks/{id}")) { "block" span.visually-hidden { " " (id) } }
                                }
                            }
                            td { span class=(format!("badge outcome-{}", r.outcome)) { (r.outcome) } " " span.muted { (r.status) } }
                            td {
                                @if r.request_id.is_empty() { span.muted { "–" } } @else {
                                    // Ids are `<prefix of the process>-<counter>`: the end tells them apart.
                                    @let n = r.request_id.chars().count();
                                    @let short: String = if n > 10 {
                                        format!("…{}", r.request_id.chars().skip(n - 8).collect::<String>())
                                    } else {
                                        r.request_id.clone()
                                    };
                                    a href=(format!("/admin/audit?{}", form_urlencoded::Serializer::new(String::new()).append_pair("request_id", &r.request_id).finish()))
                                        title=(r.request_id) { code { (short) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub(super) async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    RawQuery(raw): RawQuery,
) -> Result<Response, Response> {
    answer(&viewer, render(&state, &viewer, raw.as_deref())).await
}

/// The audit page for a query string (a session's `admin` is checked by the caller).
async fn render(
    state: &AppState,
    viewer: &Viewer,
    raw: Option<&str>,
) -> Result<Response, PageError> {
    let (filters, mut query, errors) = parse_filters(raw);
    let tokens = token_names(state).await?;
    let (records, next) = if errors.is_empty() {
        query.limit = Some(PAGE + 1);
        let mut records = state.store.list_audit(&query).await?;
        let more = records.len() as i64 > PAGE;
        records.truncate(PAGE as usize);
        let next = more.then(|| records.last().map(|r| r.seq)).flatten();
        (records, next)
    } else {
        (Vec::new(), None)
    };
    let download = |format: &str| {
        let q = filters.query(None);
        if q.is_empty() {
            format!("/admin/audit/download?format={format}")
        } else {
            format!("/admin/audit/download?format={format}&{q}")
        }
    };
    let body = html! {
        div.title-row {
            h1 { "Audit log" }
            @if errors.is_empty() {
                div.actions {
                    a.button href=(download("csv")) download { "Download CSV" }
                    a.button href=(download("jsonl")) download { "Download JSON lines" }
                }
            }
        }
        (errors.summary("The filters were not applied:"))
        @if let Some(message) = errors.get("format") {
            p.error #format { (message) }
        }
        (filter_form(&filters, &errors, &tokens))
        @if errors.is_empty() {
            @if records.is_empty() {
                p.notice role="status" { "No record matches." }
            } @else {
                p.count {
                    @if query.before.is_some() { "Older records" } @else { "Newest records" }
                    @if filters.any() { " matching the filters" }
                    " (" (records.len()) " shown). A download holds up to 1,000,000 records matching the filters."
                }
                (records_table(&records, &tokens))
            }
            nav.pager aria-label="Pages" {
                @if query.before.is_some() {
                    a href=(format!("/admin/audit?{}", filters.query(None))) { "Newest" }
                }
                @if let Some(next) = next {
                    a href=(format!("/admin/audit?{}", filters.query(Some(next)))) rel="next" { "Older records" }
                }
            }
        }
    };
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    Ok(page_with_status(
        status,
        viewer,
        "Audit log",
        Section::Audit,
        &body,
    ))
}

/// A CSV cell: quoted, with quotes doubled; text a spreadsheet would take as a formula
/// (starting with `=`, `+`, `-`, `@`, a tab or a carriage return) gets a leading `'`.
pub(crate) fn csv_cell(text: &str, out: &mut String) {
    out.push('"');
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        out.push('\'');
    }
    for c in text.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
}

const CSV_HEADER: &str = "seq,at,token_id,token_name,action,target,outcome,status,request_id\r\n";

fn csv_row(r: &AuditRecord, tokens: &HashMap<Uuid, String>, out: &mut String) {
    out.push_str(&r.seq.to_string());
    out.push(',');
    out.push_str(&r.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    out.push(',');
    csv_cell(&r.token_id.map(|t| t.to_string()).unwrap_or_default(), out);
    out.push(',');
    csv_cell(
        r.token_id
            .and_then(|t| tokens.get(&t))
            .map_or("", String::as_str),
        out,
    );
    for text in [&r.action, &r.target, &r.outcome] {
        out.push(',');
        csv_cell(text, out);
    }
    out.push(',');
    out.push_str(&r.status.to_string());
    out.push(',');
    csv_cell(&r.request_id, out);
    out.push_str("\r\n");
}

#[derive(serde::Serialize)]
struct JsonRecord<'a> {
    #[serde(flatten)]
    record: &'a AuditRecord,
    token_name: Option<&'a str>,
}

fn jsonl_row(r: &AuditRecord, tokens: &HashMap<Uuid, String>, out: &mut String) {
    let row = JsonRecord {
        record: r,
        token_name: r.token_id.and_then(|t| tokens.get(&t)).map(String::as_str),
    };
    if let Ok(line) = serde_json::to_string(&row) {
        out.push_str(&line);
        out.push('\n');
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Jsonl,
}

/// Where a download stands between two reads.
struct Cursor {
    store: Arc<Store>,
    query: AuditQuery,
    tokens: Arc<HashMap<Uuid, String>>,
    format: Format,
    sent: u64,
    /// The first page, read before the answer started (so a failure is a proper page).
    first: Option<Vec<AuditRecord>>,
    done: bool,
}

fn chunk(records: &[AuditRecord], cursor: &Cursor, header: bool) -> Bytes {
    let mut out = String::with_capacity(records.len() * 200 + 100);
    if header && cursor.format == Format::Csv {
        out.push_str(CSV_HEADER);
    }
    for r in records {
        match cursor.format {
            Format::Csv => csv_row(r, &cursor.tokens, &mut out),
            Format::Jsonl => jsonl_row(r, &cursor.tokens, &mut out),
        }
    }
    Bytes::from(out)
}

async fn next_chunk(mut cursor: Cursor) -> Option<(Result<Bytes, std::io::Error>, Cursor)> {
    if cursor.done {
        return None;
    }
    let header = cursor.first.is_some();
    let records = match cursor.first.take() {
        Some(first) => first,
        None => {
            let left = MAX_DOWNLOAD - cursor.sent;
            cursor.query.limit = Some(DOWNLOAD_PAGE.min(left as i64));
            match cursor.store.list_audit(&cursor.query).await {
                Ok(records) => records,
                Err(e) => {
                    tracing::error!(error = %e, "an audit download failed part way; the file is cut short");
                    cursor.done = true;
                    return Some((
                        Err(std::io::Error::other("the audit log could not be read")),
                        cursor,
                    ));
                }
            }
        }
    };
    cursor.sent += records.len() as u64;
    let full = records.len() as i64 == cursor.query.limit.unwrap_or(DOWNLOAD_PAGE);
    cursor.done = !full || cursor.sent >= MAX_DOWNLOAD;
    cursor.query.before = records.last().map(|r| r.seq).or(cursor.query.before);
    let bytes = chunk(&records, &cursor, header);
    Some((Ok(bytes), cursor))
}

pub(super) async fn download(
    State(state): State<AppState>,
    viewer: Viewer,
    RawQuery(raw): RawQuery,
) -> Result<Response, Response> {
    answer(&viewer, start_download(&state, &viewer, raw.as_deref())).await
}

/// The filtered records as a file, or the page with the filters' problems (a session's
/// `admin` is checked by the caller).
async fn start_download(
    state: &AppState,
    viewer: &Viewer,
    raw: Option<&str>,
) -> Result<Response, PageError> {
    let (filters, mut query, errors) = parse_filters(raw);
    if !errors.is_empty() {
        return render(state, viewer, raw).await;
    }
    let format = match filters.format.as_str() {
        "jsonl" => Format::Jsonl,
        _ => Format::Csv,
    };
    let tokens = Arc::new(token_names(state).await?);
    query.limit = Some(DOWNLOAD_PAGE);
    let first = state.store.list_audit(&query).await?;
    let cursor = Cursor {
        store: state.store.clone(),
        query,
        tokens,
        format,
        sent: 0,
        first: Some(first),
        done: false,
    };
    let stream = futures::stream::unfold(cursor, next_chunk);
    let (content_type, extension) = match format {
        Format::Csv => ("text/csv; charset=utf-8", "csv"),
        Format::Jsonl => ("application/x-ndjson; charset=utf-8", "jsonl"),
    };
    let name = format!(
        "attachment; filename=\"audit-{}.{extension}\"",
        Utc::now().format("%Y%m%dT%H%M%SZ")
    );
    let mut response = Body::from_stream(stream).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(&name) {
        h.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn formula_cells_are_neutralised_and_quotes_doubled() {
        for (text, cell) in [
            ("=HYPERLINK(\"x\")", "\"'=HYPERLINK(\"\"x\"\")\""),
            ("+1", "\"'+1\""),
            ("-2+3", "\"'-2+3\""),
            ("@SUM(A1)", "\"'@SUM(A1)\""),
            ("\tx", "\"'\tx\""),
            ("plain, text", "\"plain, text\""),
            ("", "\"\""),
        ] {
            let mut out = String::new();
            csv_cell(text, &mut out);
            assert_eq!(out, cell, "{text}");
        }
    }

    #[test]
    fn filters_are_checked_at_their_fields() {
        let (_, query, errors) = parse_filters(Some(
            "token=not-a-uuid&outcome=maybe&since=yesterday&until=2025-01-01&before=x",
        ));
        for field in ["token", "outcome", "since", "before"] {
            assert!(errors.get(field).is_some(), "{field}");
        }
        assert!(errors.get("until").is_none());
        assert_eq!(
            query.until,
            Some("2025-01-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap())
        );

        let (filters, query, errors) = parse_filters(Some(
            "outcome=denied&since=2025-01-01+10%3A00&until=2025-01-01T09:00:00Z&action=DELETE",
        ));
        assert_eq!(
            errors.get("until"),
            Some("Until: must be later than Since.")
        );
        assert_eq!(query.outcome.as_deref(), Some("denied"));
        assert_eq!(query.action.as_deref(), Some("DELETE"));
        assert!(filters.query(Some(7)).ends_with("before=7"));

        let long = "a".repeat(600);
        let (_, _, errors) = parse_filters(Some(&format!("target={long}")));
        assert!(errors.get("target").is_some());
    }

    #[test]
    fn targets_name_their_blocks() {
        let id = Uuid::new_v4();
        assert_eq!(block_of(&format!("/api/block_documents/{id}")), Some(id));
        assert_eq!(
            block_of(&format!("/api/block_documents/{id}?include_secrets=true")),
            Some(id)
        );
        assert_eq!(block_of(&format!("prefect.block-document.{id}")), Some(id));
        assert_eq!(block_of("/api/block_documents/filter"), None);
        assert_eq!(block_of("/api/tokens"), None);
    }
}
