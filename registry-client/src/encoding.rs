//! Percent-encoding of path segments and URL parts, shared by the API calls and the
//! capability features.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

/// Everything but RFC 3986's unreserved characters (`A–Z a–z 0–9 - . _ ~`) is encoded:
/// right for a URL's user name, password or database, a path segment (an object name's
/// `/` included, as the GCS JSON API wants) and a query value.
pub(crate) const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `text` with everything but unreserved characters percent-encoded: a path segment of an
/// API path, a query value, a URL's user name.
pub(crate) fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, UNRESERVED).to_string()
}
