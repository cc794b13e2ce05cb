//! What can go wrong, each in words that say what to do.

use crate::config::ConfigSource;

/// A client error. Messages never carry a secret value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No usable configuration.
    #[error("{0}")]
    Config(String),
    /// The server could not be reached.
    #[error("cannot reach the blocks server at {url} (from {source_of_url}): {reason}")]
    Unreachable {
        /// The URL tried.
        url: String,
        /// Where that URL came from.
        source_of_url: ConfigSource,
        /// What failed.
        reason: String,
    },
    /// No such block.
    #[error("no block {slug}/{name} on the server")]
    NotFound {
        /// The block type's slug.
        slug: String,
        /// The document's name (or id).
        name: String,
    },
    /// The document is of another type than asked for.
    #[error("the block {name} is a {found}, not a {expected}")]
    WrongType {
        /// The slug asked for.
        expected: String,
        /// The document's slug.
        found: String,
        /// The document's name (or id).
        name: String,
    },
    /// The stored data does not fit the Rust type.
    #[error("the block {slug}/{name} does not fit the Rust type: {field}: {message}")]
    Data {
        /// The block type's slug.
        slug: String,
        /// The document's name.
        name: String,
        /// The field that does not fit (`gcp_credentials.project`).
        field: String,
        /// Why.
        message: String,
    },
    /// A block with this name exists; save with overwrite to replace it.
    #[error("a block {slug}/{name} already exists; use save_overwrite to replace it")]
    NameConflict {
        /// The block type's slug.
        slug: String,
        /// The name.
        name: String,
    },
    /// Someone else changed the block between our read and our write; nothing was written.
    #[error(
        "the block {slug}/{name} was changed by someone else while it was being saved; load it again and retry"
    )]
    ConcurrentEdit {
        /// The block type's slug.
        slug: String,
        /// The name.
        name: String,
    },
    /// The token is missing, unknown, expired or revoked.
    #[error("the server refused the token (from {key_from}): {detail}")]
    Unauthorized {
        /// The server's words.
        detail: String,
        /// Where the token came from (`BLOCKS_API_KEY`, …).
        key_from: String,
    },
    /// The token may not do this (a missing scope, named by the server) or the server
    /// forbids it.
    #[error("the server refused this request: {detail}")]
    Forbidden {
        /// The server's words (they name the scope).
        detail: String,
    },
    /// Too many failed attempts; the server asks to wait.
    #[error("the server refuses for now (too many failed attempts); retry after {retry_after_s} s")]
    RateLimited {
        /// Seconds to wait.
        retry_after_s: u64,
    },
    /// Any other answer.
    #[error("the server answered {status}: {detail}")]
    Http {
        /// The status code.
        status: u16,
        /// The server's words.
        detail: String,
    },
    /// A successful answer this client cannot read: another version of the API, or not a
    /// blocks server. Names where the answer differs, never a value from it.
    #[error(
        "the answer to {request} is not what this client reads (at {at}: {problem}); is the server a blocks registry of a matching version?"
    )]
    Decode {
        /// The request, `GET block_types/slug/…`.
        request: String,
        /// Where in the answer (`.` for the whole, `[3].scopes`, …).
        at: String,
        /// What kind of difference.
        problem: String,
    },
    /// A restore stopped; what it created before stays, and running it again goes on
    /// from there.
    #[error("{doing}: {reason}")]
    Restore {
        /// What it was doing (`importing gcs-bucket/zoom-gcs into this registry`).
        doing: String,
        /// Why it stopped.
        reason: String,
    },
    /// A listing that would not end: more items than one listing reads, or pages that
    /// repeat themselves.
    #[error("stopped reading the listing {path}: {reason}")]
    Paging {
        /// The route listed.
        path: String,
        /// Why it stopped.
        reason: String,
    },
}

/// Decodes an answer's JSON into `T`. The error names the place and the kind of problem
/// only: serde's own messages quote the offending value, which may be a secret.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    request: &str,
) -> Result<T, Error> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let problem = match e.inner().classify() {
            serde_json::error::Category::Data => "a missing field or a value of another type",
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "not JSON",
            serde_json::error::Category::Io => "unreadable",
        };
        Error::Decode {
            request: request.to_owned(),
            at: e.path().to_string(),
            problem: problem.to_owned(),
        }
    })
}
