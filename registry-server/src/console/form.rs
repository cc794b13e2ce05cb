//! The block form: HTML fields generated from a block schema, and the decoder that turns
//! the submitted form back into document data.
//!
//! # Use
//!
//! ```text
//! let html = form::render(&FormInput { schema, mode, data, original, references, type_names, errors });
//! let top = form::unmatched_errors(&input);           // show these in the error summary
//! let decoded = form::decode(schema, mode, original, &pairs);
//! match decoded.action { Action::Save => { /* validate, store */ }
//!     _ => { /* not a real submit: re-render with decoded.data (row added/removed) */ } }
//! ```
//!
//! [`render`] gives the form's inner fields only: the page adds the `<form>`, the name
//! input, the CSRF token and the submit buttons. Pairs whose names start with `_` belong to
//! the page; the decoder reads only `_action`, and the form's own names never start with `_`.
//!
//! # Input names
//!
//! Every value has a form path that starts at `data`:
//!
//! - an object property: `<parent>.<key>`, the key with `%`, `.`, `#`, `/` and `:`
//!   percent-encoded (`data.connection_info.port`);
//! - an array item: `<array>.<row>` (`data.command.0`), with a hidden `<array>.<row>#row`
//!   marker so that a row whose value submits nothing (an empty nested list) still counts;
//!   rows are read in row-number order, gaps allowed (a script may remove rows);
//! - a dictionary row: the key is the VALUE of `<dict>#k<row>` and the value is named
//!   `<dict>#v<row>` (`data.labels#k0`, `data.labels#v0`), so keys may hold any character;
//! - a choice (`anyOf`, `oneOf`, `type: [..]`): `<path>#choice` is a `<select>` whose value
//!   is `none` or the alternative's index `i` in the schema (after nested unions are
//!   spliced in); alternative `i`'s own inputs live below `<path>#a<i>` (all shown ones are
//!   rendered; the choice decides which is read). A choice that is really one input (an
//!   optional scalar, see below) has no `#choice`/`#a<i>`: its input is named `<path>`;
//! - a date-time: `<path>` (`datetime-local`) plus its UTC offset in `<path>#tz`;
//! - a boolean: a hidden `<path>=false` followed by the checkbox `<path>=true`; the last
//!   value wins. A boolean that may be null is a `<select>` `<path>` of `""`/`true`/`false`.
//!
//! Element ids are `field-` followed by the path with `.` as `-`, letters and digits kept,
//! and every other byte as `_XX` (hex): unique, and within `[A-Za-z0-9_-]`. An input's error
//! is `<id>-error`, its hint `<id>-hint`.
//!
//! Error paths are the API's (`data.bucket`, `data.service_account_info.project_id`, dictionary
//! keys as they are); an error is shown at the deepest field whose path is a prefix of it.
//!
//! # What each schema construct renders as
//!
//! - string: text (`format: uri`… `url`, `email`, `date`); `date-time`: `datetime-local`
//!   with seconds plus a UTC offset box (`Z` or `±HH:MM`, `Z` when left empty); the decoded
//!   value is `<local>[:00 if the browser sent no seconds]<offset>`, so a stored RFC 3339
//!   string comes back unchanged. integer/number: `type=number` (`step=1`/`any`);
//! - boolean: a switch; enum, `const`, `allOf: [$ref enum]`: a `<select>`;
//! - object with properties: `<fieldset class="group">`; an open dictionary whose values
//!   are scalars (or a choice of scalars and null): key/value rows; any other open object,
//!   `{}`, an array without `items`, a `$ref` cycle or anything deeper than
//!   [`schema::MAX_DEPTH`]: a JSON `<textarea>` (pre-filled with pretty JSON);
//! - array: rows (at most [`schema::MAX_ROWS`]); add and remove are submit buttons
//!   (`_action=add:<path>`, `remove:<path>/<row>`) so they work without script;
//! - an optional scalar: a choice of null and ONE plain scalar (`Optional[str]` of any
//!   `format`, `Optional[int]`, `Optional[float]`, an optional enum, `Optional[bool]`) is
//!   one input of the scalar's kind named `<path>`, labelled "(optional)"; left empty it
//!   decodes to `null` (always, on create and on edit, as Prefect stores unset optionals),
//!   so such a field cannot hold `""`. An enum becomes a `<select>` with a `— none —`
//!   option (value empty; not done when an enum value is itself `""`), a boolean a
//!   `<select>` none/yes/no (`""`/`true`/`false`), since a switch cannot say none.
//!   Alternatives that would show the same widget count as one (`anyOf: [string, string
//!   with format path]`), and a choice of one scalar without null is just that scalar
//!   (empty → absent when optional). The same holds for array items and dictionary values
//!   (`Dict[str, Optional[str]]`: an empty value is `null`);
//! - a choice (two or more different non-null alternatives, or an object, array, JSON or
//!   nested-choice alternative): a `<select>` plus each alternative in
//!   `<div data-choice-for data-choice-index>`; `none` is offered for null alternatives and
//!   optional fields (none = `null` when the schema allows null, else absent). Nested
//!   unions (`anyOf: [anyOf: [number, string], null]`) are spliced into one choice. An
//!   alternative that would show the same widget as an earlier one (a secret `str` next to
//!   a `SecretStr`, two plain strings) is left out: the earlier one takes all its values,
//!   and its index is simply never offered. Option labels: the alternative's `title` (a
//!   `$ref`'s definition title; `CamelCase` spaced), unless it only names a JSON type
//!   (`string`, `JSON`, …); else what it accepts: "Text", "Whole number", "Number",
//!   "Date and time", "Date", "URL", "Email address", "Yes/no", "One of: A, B, C, …", a
//!   `const`'s value, "List", "Key/value pairs", "Fields: A, B, …", "JSON" (object/list),
//!   "Secret text", "Secret JSON", "Stored <type>"; labels that still collide get
//!   " (option n)". Each alternative's input carries its option label, except that a lone
//!   alternative besides none, or a nested choice, carries the field's own label. The
//!   selected alternative on render is the first one the value fits (by JSON type, enum
//!   membership, object keys, or reference options);
//! - a nested block (`block_type_slug` on the definition, or a top-level
//!   `block_schema_references` entry): a `<select>` of stored documents plus a
//!   "Create new …" button (`_action=new-ref:<path>:<slug>`); decodes to
//!   `{"$ref": {"block_document_id": …}}`; `anyOf: [block, null]` is the same picker with
//!   a none option (`null`). A stored id missing from the options stays selectable;
//! - a secret (covered by `secret_fields`, or `writeOnly`/`format: password`): a password
//!   input for strings, else a JSON textarea; never pre-filled. Left empty on edit it decodes
//!   to the original (masked) value, which the API restores; on create empty means absent.
//!   An optional secret (`Optional[SecretStr]`) is the one secret input, empty as above.
//!   A secret choice keeps its alternatives, each secret: Prefect's `Secret.value`
//!   (`SecretStr | str | Json`) shows "Secret text" (`#a0`, password) and "Secret JSON"
//!   (`#a2`, a JSON textarea), the plain `str` (`#a1`) being left out as a duplicate.
//!
//! Optional (not required) scalars that do not allow null decode to absent when left empty,
//! so an optional string cannot be set to `""`; ones that allow null decode to `null`. An
//! optional array or dictionary with no rows, or an optional nested object with nothing
//! filled in, is absent. A non-nullable boolean (a switch) always has a value.

mod decode;
mod html;
mod model;
mod schema;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use block_types::FieldError;
use maud::Markup;
use serde_json::{Map, Value};
use uuid::Uuid;

pub(crate) use decode::decode;

/// Whether the form creates a new document or edits a stored one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Create,
    Edit,
}

/// A stored document a reference field may point to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RefOption {
    pub(crate) id: Uuid,
    pub(crate) name: String,
}

/// Everything [`render`] needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FormInput<'a> {
    /// The block schema's `fields`.
    pub(crate) schema: &'a Value,
    pub(crate) mode: Mode,
    /// What to show: `None` shows the schema's defaults (create) or `original` (edit);
    /// after a failed submit, the decoded data. Secrets in it are never shown.
    pub(crate) data: Option<&'a Map<String, Value>>,
    /// The stored, masked data (edit): which secrets already have a value.
    pub(crate) original: Option<&'a Map<String, Value>>,
    /// Stored documents by block type slug, for reference fields.
    pub(crate) references: &'a HashMap<String, Vec<RefOption>>,
    /// Block type display names by slug ("Create new GCP Credentials").
    pub(crate) type_names: &'a HashMap<String, String>,
    /// Errors to show at their fields (API paths: `data.bucket`).
    pub(crate) errors: &'a [FieldError],
}

/// What the submit asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Save the document (no `_action`, or one the form does not know).
    Save,
    /// Add a row to the array or dictionary at this form path.
    Add(String),
    /// Remove row `n` of the array or dictionary at this form path.
    Remove(String, usize),
    /// The user wants to create a new document of type `slug` for the reference field at
    /// form path `path`.
    NewReference { path: String, slug: String },
}

/// The result of [`decode`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Decoded {
    /// The document data; for `Add`/`Remove` with the row already added or removed.
    pub(crate) data: Map<String, Value>,
    pub(crate) action: Action,
    /// Values the form could not decode (never quoting the value).
    pub(crate) errors: Vec<FieldError>,
}

/// The form's inner fields.
pub(crate) fn render(input: &FormInput<'_>) -> Markup {
    let (nodes, _) = model::build(input);
    html::fields(&nodes)
}

/// The errors of `input` that match no field of the form (show them at the top).
pub(crate) fn unmatched_errors(input: &FormInput<'_>) -> Vec<FieldError> {
    model::build(input).1
}
