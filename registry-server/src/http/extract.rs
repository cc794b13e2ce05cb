//! Extractors that turn bad input into our 4xx bodies instead of axum's plain text.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use block_types::model::BlockDocument;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::error::ApiError;
use crate::store::TokenAccess as _;
use crate::store::{Rights, Scope, TokenInfo};

/// A JSON body. Malformed JSON, wrong types and unknown fields are a 422 naming the field;
/// an empty body reads as `{}` (Prefect's CLI posts filters without one).
#[derive(Debug)]
pub(super) struct Body<T>(pub(super) T);

impl<S, T> FromRequest<S> for Body<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| {
                if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::TooLarge("the request body is too large".into())
                } else {
                    ApiError::BadRequest(format!("could not read the request body: {e}"))
                }
            })?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        // JSON carries NUL only as an escape; no field of ours may hold one (PostgreSQL text
        // cannot store it).
        if text.windows(6).any(|w| w.eq_ignore_ascii_case(br"\u0000")) {
            return Err(ApiError::field(
                "",
                r"strings must not contain NUL characters (\u0000)",
            ));
        }
        let mut de = serde_json::Deserializer::from_slice(text);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." || path == "?" {
                String::new()
            } else {
                path
            };
            ApiError::field(field, describe(e.inner()))
        })?;
        de.end().map_err(|e| ApiError::field("", describe(&e)))?;
        Ok(Body(value))
    }
}

/// A serde error in words, never quoting the offending value (it may be a secret):
/// `invalid type: string "…", expected a map` becomes `invalid type: expected a map`.
fn describe(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof => {
            format!(
                "the body is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            )
        }
        Category::Data | Category::Io => {
            let text = e.to_string();
            without_value(text.split(" at line ").next().unwrap_or(&text))
        }
    }
}

/// A deserializer's message without the offending value: `unknown variant `x`, expected
/// one of …` keeps what was expected, a UUID's `… found `z` at 1` loses what was found.
pub(super) fn without_value(text: &str) -> String {
    for kind in [
        "invalid type",
        "invalid value",
        "invalid length",
        "unknown variant",
    ] {
        if text.starts_with(kind) {
            return match text.rsplit_once(", expected ") {
                Some((_, expected)) => format!("{kind}: expected {expected}"),
                None => kind.to_owned(),
            };
        }
    }
    // uuid's `invalid character: found `z` at 1`, and the like.
    match text.find("found `") {
        Some(at) => text[..at].trim_end_matches([' ', ':', ',']).to_owned(),
        None => text.to_owned(),
    }
}

/// A UUID path segment. Anything else is a 404 (as in Prefect 3) saying it is not a UUID.
#[derive(Debug, Clone, Copy)]
pub(super) struct Id(pub(super) Uuid);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::NotFound("Not Found".into()))?;
        Uuid::parse_str(&raw)
            .map(Id)
            .map_err(|_| ApiError::NotFound(format!("Not Found: '{raw}' is not a valid UUID")))
    }
}

/// Who is calling: the token the access check accepted (none on public routes), and
/// whether the request was let read secrets (so the audit log records it).
#[derive(Debug, Clone, Default)]
pub(crate) struct Caller {
    pub(crate) token: Option<Arc<TokenInfo>>,
    pub(crate) read_secrets: Arc<AtomicBool>,
    /// Set when the token's grants hid what the request named (answered 404): the audit
    /// log records the probe as a refusal.
    pub(crate) hidden: Arc<AtomicBool>,
}

impl Caller {
    /// Who writes (recorded on versions) and what the token allows beyond `write`, for the
    /// store's checks.
    pub(crate) fn rights(&self) -> Rights {
        self.token.as_ref().map_or(Rights::WRITE, |t| t.rights())
    }

    /// Lets the request return secret values, or refuses with a 403 when the token lacks
    /// `read-secrets` (never a silent downgrade to masked values).
    pub(crate) fn allow_secrets(&self) -> Result<(), ApiError> {
        if self
            .token
            .as_ref()
            .is_some_and(|t| t.grants(Scope::ReadSecrets))
        {
            self.read_secrets.store(true, Ordering::Relaxed);
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "include_secrets=true needs a token with the read-secrets scope".into(),
            ))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or_default())
    }
}

/// The documents an answer shows, roots first and each once: a handler answering with
/// documents puts it in the response's extensions, so the audit record of a secret read
/// names them without reading the answer back.
#[derive(Debug, Clone)]
pub(crate) struct Answered(pub(crate) Arc<[Uuid]>);

impl Answered {
    /// The documents `documents` show.
    pub(crate) fn of<'a>(documents: impl IntoIterator<Item = &'a BlockDocument>) -> Self {
        Self(crate::store::shown_documents(documents).into())
    }

    /// `response` carrying the documents it shows.
    pub(crate) fn attach(self, response: impl IntoResponse) -> Response {
        let mut response = response.into_response();
        response.extensions_mut().insert(self);
        response
    }
}

/// Query parameters into `T`; an unknown or malformed one is a 422 naming it.
#[derive(Debug)]
pub(super) struct QueryParams<T>(pub(super) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(QueryParams)
            .map_err(|e| {
                let field = e.path().to_string();
                let field = if field == "." || field == "?" {
                    "query".to_owned()
                } else {
                    field
                };
                let message = without_value(&e.inner().to_string());
                ApiError::Validation(vec![block_types::FieldError::new(field, message)])
            })
    }
}

/// `?include_secrets=…` (default false), read leniently like FastAPI's booleans. `true`
/// needs the caller's `read-secrets` scope (403 otherwise). The query is read with serde
/// as every other query is (so `include%5Fsecrets=true` asks for secrets too), and the
/// parameter given twice is a 422.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct IncludeSecrets(pub(super) bool);

/// The query parameters [`IncludeSecrets`] reads; others are left to their route.
#[derive(Debug, Default, serde::Deserialize)]
struct SecretsQuery {
    #[serde(default, deserialize_with = "lenient_bool")]
    include_secrets: bool,
}

/// `true`, `1`, `yes`, `on`, `t`, `y` and their `false` counterparts, any case.
fn lenient_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "t" | "y" => Ok(true),
        "false" | "0" | "no" | "off" | "f" | "n" => Ok(false),
        _ => Err(serde::de::Error::custom("Input should be a valid boolean")),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IncludeSecrets {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let QueryParams(query) =
            QueryParams::<SecretsQuery>::from_request_parts(parts, state).await?;
        if query.include_secrets {
            Caller::from_request_parts(parts, state)
                .await?
                .allow_secrets()?;
        }
        Ok(Self(query.include_secrets))
    }
}
