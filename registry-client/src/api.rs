//! Typed calls of the API beyond loading and saving blocks: block types and schemas,
//! documents and their versions, tokens, workload-identity issuers and roles, webhooks,
//! the audit log, keys and settings. The `blocks` CLI is built on them. Every call goes
//! through one request path (`Client::call`): reads are retried like loads, writes only
//! while the connection never got through.

use std::collections::HashSet;

use block_types::access::{
    AuditPage, ChildTokenCreate, Grant, KeyStatus, Rotation, Settings, TokenCreate, TokenInfo,
};
use block_types::identity::{Issuer, IssuerCreate, Role, RoleConfig};
use block_types::model::{
    AnyOf, BlockDocument, BlockDocumentCreate, BlockDocumentFilterBody, BlockDocumentUpdate,
    BlockSchema, BlockSchemaCreate, BlockSchemaFilter, BlockSchemaFilterBody, BlockType,
    BlockTypeCreate, BlockTypeFilterBody, BlockTypeUpdate, MAX_LIMIT, VersionInfo,
};
use block_types::webhooks::{Delivery, Webhook, WebhookCreate, WebhookCreated, WebhookTest};
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

use crate::Client;
use crate::client::{Condition, retry_after};
use crate::encoding::encode;
use crate::error::Error;

/// The most items one listing reads (over all its pages) before it stops.
pub const MAX_LISTED_ITEMS: usize = 100_000;

/// A token just made: its listing and its value, which the server shows only this once.
/// `Debug` hides the value.
#[derive(Clone, serde::Deserialize)]
pub struct NewToken {
    /// The token as listed.
    #[serde(flatten)]
    pub info: TokenInfo,
    /// `blk_…`.
    #[serde(deserialize_with = "secret_string")]
    pub token: SecretString,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("info", &self.info)
            .field("token", &"********")
            .finish()
    }
}

fn secret_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    <String as serde::Deserialize>::deserialize(d).map(SecretString::from)
}

/// A webhook just registered. Its signing secret is shown only this once, so an answer of a
/// shape this client does not read (a newer server's) is kept whole rather than lost.
/// `Debug` hides the secret.
pub enum NewWebhook {
    /// The webhook and its signing secret.
    Created(WebhookCreated),
    /// An answer this client does not read: as it came (with the signing secret), and
    /// where it differs ([`Error::Decode`], which quotes no value).
    Unread {
        /// The answer as it came.
        answer: Value,
        /// Where it differs from what this client reads.
        problem: Error,
    },
}

impl std::fmt::Debug for NewWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Created(created) => f.debug_tuple("Created").field(created).finish(),
            Self::Unread { problem, .. } => f
                .debug_struct("Unread")
                .field("answer", &"********")
                .field("problem", problem)
                .finish(),
        }
    }
}

/// What `GET /api/audit` selects; unset fields select everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// At most this many records (the server's default is 100, its maximum 1,000).
    pub limit: Option<u32>,
    /// Only actions starting with this text (`POST`, `block.loaded`, …).
    pub action: Option<String>,
    /// Only this token's records.
    pub token_id: Option<Uuid>,
    /// `ok`, `denied`, `failed` or `error`.
    pub outcome: Option<String>,
    /// Only records older than this `seq` (the previous page's `next_before`).
    pub before: Option<i64>,
}

impl AuditFilter {
    fn query(&self) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if let Some(limit) = self.limit {
            query.append_pair("limit", &limit.to_string());
        }
        if let Some(action) = &self.action {
            query.append_pair("action", action);
        }
        if let Some(token) = self.token_id {
            query.append_pair("token_id", &token.to_string());
        }
        if let Some(outcome) = &self.outcome {
            query.append_pair("outcome", outcome);
        }
        if let Some(before) = self.before {
            query.append_pair("before", &before.to_string());
        }
        query.finish()
    }
}

/// The API path of the block `slug/name`.
pub(crate) fn block_path(slug: &str, name: &str) -> String {
    format!(
        "block_types/slug/{}/block_documents/name/{}",
        encode(slug),
        encode(name)
    )
}

/// What a filter body needs to be paged by [`Client::all_pages`].
pub(crate) trait Paged: Serialize + Clone {
    fn page(&mut self, limit: i64, offset: i64);
}

macro_rules! paged {
    ($($body:ty),*) => {$(
        impl Paged for $body {
            fn page(&mut self, limit: i64, offset: i64) {
                self.limit = Some(limit);
                self.offset = Some(offset);
            }
        }
    )*};
}
paged!(
    BlockTypeFilterBody,
    BlockSchemaFilterBody,
    BlockDocumentFilterBody
);

/// Something a listing holds, told apart by its id.
pub(crate) trait Listed: DeserializeOwned {
    fn id(&self) -> Uuid;
}

impl Listed for BlockType {
    fn id(&self) -> Uuid {
        self.id
    }
}

impl Listed for BlockSchema {
    fn id(&self) -> Uuid {
        self.id
    }
}

impl Listed for BlockDocument {
    fn id(&self) -> Uuid {
        self.id
    }
}

impl Client {
    /// Sends `method` to an API path (relative to the API URL, e.g. `tokens`) with an
    /// optional JSON body and decodes the answer. A GET is retried like a load; any other
    /// method only while the connection never got through, so a write that may have
    /// landed is not sent twice. An error answer becomes an [`Error`] (a 404 is
    /// [`Error::Http`] with the server's words), an answer of another shape
    /// [`Error::Decode`].
    pub(crate) async fn call<B, R>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<R, Error>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.call_tagged(method, path, body, None)
            .await
            .map(|(answer, _)| answer)
    }

    /// [`Client::call`] that returns the answer's `ETag` too, and makes a write
    /// conditional on `if_match` (a 412 is [`Error::Http`] with status 412).
    pub(crate) async fn call_tagged<B, R>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        if_match: Option<&str>,
    ) -> Result<(R, Option<String>), Error>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let body = body
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| Error::Config(format!("cannot encode the request to {path}: {e}")))?;
        let url = self.url(path)?;
        let response = self
            .request(
                &method,
                &url,
                body.as_ref(),
                if_match.map(Condition::IfMatch),
            )
            .await?;
        let status = response.status();
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(ToOwned::to_owned);
        let retry = retry_after(&response);
        // An empty answer (a 204) reads as `null`.
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(self.error(status, &value, retry));
        }
        if method != Method::GET {
            self.after_write();
        }
        if !status.is_success() {
            return Err(self.error(status, &value, None));
        }
        let answer = crate::error::decode(value, &format!("{method} {path}"))?;
        Ok((answer, etag))
    }

    async fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R, Error> {
        self.call::<(), R>(Method::GET, path, None).await
    }

    async fn delete(&self, path: &str) -> Result<(), Error> {
        self.call::<(), serde::de::IgnoredAny>(Method::DELETE, path, None)
            .await
            .map(drop)
    }

    /// Every item of a filter route, page by page, each once. Stops with
    /// [`Error::Paging`] past [`MAX_LISTED_ITEMS`] items or twice the pages they need, or
    /// when a page brings nothing new (a server that ignores `offset`).
    pub(crate) async fn all_pages<B: Paged, R: Listed>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<Vec<R>, Error> {
        let page_size = MAX_LIMIT;
        let max_pages = 2 * MAX_LISTED_ITEMS / page_size as usize;
        let what = path.split('/').next().unwrap_or(path).replace('_', " ");
        let stop = |reason: String| Error::Paging {
            path: path.to_owned(),
            reason,
        };
        let mut all: Vec<R> = Vec::new();
        let mut seen = HashSet::new();
        let mut offset = 0;
        for pages in 1.. {
            if pages > max_pages {
                return Err(stop(format!(
                    "the server's {what} took more than {max_pages} pages (the limit of one listing)"
                )));
            }
            let mut body = body.clone();
            body.page(page_size, offset);
            let page: Vec<R> = self.call(Method::POST, path, Some(&body)).await?;
            let n = page.len();
            let before = all.len();
            all.extend(page.into_iter().filter(|item| seen.insert(item.id())));
            if n > 0 && all.len() == before {
                return Err(stop(format!(
                    "the server sent again {what} it had already sent (at offset {offset}, after {before} of them): its paging does not move on"
                )));
            }
            if all.len() > MAX_LISTED_ITEMS {
                return Err(stop(format!(
                    "the server lists more than {MAX_LISTED_ITEMS} {what} (the limit of one listing)"
                )));
            }
            if (n as i64) < page_size {
                break;
            }
            offset += n as i64;
        }
        Ok(all)
    }

    /// Every block type.
    pub async fn block_types(&self) -> Result<Vec<BlockType>, Error> {
        self.all_pages("block_types/filter", &BlockTypeFilterBody::default())
            .await
    }

    /// The block type `slug`.
    pub async fn block_type(&self, slug: &str) -> Result<BlockType, Error> {
        self.get(&format!("block_types/slug/{}", encode(slug)))
            .await
    }

    /// Registers a block type ([`Error::Http`] with status 409 when its slug is taken).
    pub async fn create_block_type(&self, create: &BlockTypeCreate) -> Result<BlockType, Error> {
        self.call(Method::POST, "block_types/", Some(create)).await
    }

    /// Changes a type's metadata (fields left `None` stay as they are).
    pub async fn update_block_type(&self, id: Uuid, update: &BlockTypeUpdate) -> Result<(), Error> {
        self.call::<_, serde::de::IgnoredAny>(
            Method::PATCH,
            &format!("block_types/{id}"),
            Some(update),
        )
        .await
        .map(drop)
    }

    /// Deletes a block type (refused while documents of it exist).
    pub async fn delete_block_type(&self, id: Uuid) -> Result<(), Error> {
        self.delete(&format!("block_types/{id}")).await
    }

    /// Registers a schema; a schema the server already has (by checksum and version) is
    /// answered as it is.
    pub async fn create_block_schema(
        &self,
        create: &BlockSchemaCreate,
    ) -> Result<BlockSchema, Error> {
        self.call(Method::POST, "block_schemas/", Some(create))
            .await
    }

    /// The schemas of the type `type_id`.
    pub async fn block_schemas_of(&self, type_id: Uuid) -> Result<Vec<BlockSchema>, Error> {
        let body = BlockSchemaFilterBody {
            block_schemas: Some(BlockSchemaFilter {
                block_type_id: Some(AnyOf {
                    any_: Some(vec![type_id]),
                }),
                ..BlockSchemaFilter::default()
            }),
            ..BlockSchemaFilterBody::default()
        };
        self.all_pages("block_schemas/filter", &body).await
    }

    /// The documents a filter selects (anonymous ones only when it asks for them), with
    /// their secrets masked unless it asks for them.
    pub async fn block_documents(
        &self,
        filter: &BlockDocumentFilterBody,
    ) -> Result<Vec<BlockDocument>, Error> {
        self.all_pages("block_documents/filter", filter).await
    }

    /// The named documents of the type `slug`, secrets masked.
    pub async fn block_documents_of_type(&self, slug: &str) -> Result<Vec<BlockDocument>, Error> {
        self.get(&format!(
            "block_types/slug/{}/block_documents",
            encode(slug)
        ))
        .await
    }

    /// The document `slug/name`, references resolved; secrets masked unless
    /// `include_secrets` (which needs `read-secrets`).
    pub async fn block_document(
        &self,
        slug: &str,
        name: &str,
        include_secrets: bool,
    ) -> Result<BlockDocument, Error> {
        self.get(&format!(
            "{}?include_secrets={include_secrets}",
            block_path(slug, name)
        ))
        .await
    }

    /// The document `slug/name`, references resolved and secrets masked, with its `ETag`:
    /// the version a conditional [`Client::update_block_document`] names.
    pub async fn block_document_tagged(
        &self,
        slug: &str,
        name: &str,
    ) -> Result<(BlockDocument, Option<String>), Error> {
        self.call_tagged::<(), _>(Method::GET, &block_path(slug, name), None, None)
            .await
    }

    /// Creates a document; the answer has its secrets masked.
    pub async fn create_block_document(
        &self,
        create: &BlockDocumentCreate,
    ) -> Result<BlockDocument, Error> {
        self.call(Method::POST, "block_documents/", Some(create))
            .await
    }

    /// Changes a document (a new version), on the condition that it is still at the
    /// `ETag` `if_match` when one is given (else [`Error::Http`] with status 412).
    pub async fn update_block_document(
        &self,
        id: Uuid,
        update: &BlockDocumentUpdate,
        if_match: Option<&str>,
    ) -> Result<(), Error> {
        self.call_tagged::<_, serde::de::IgnoredAny>(
            Method::PATCH,
            &format!("block_documents/{id}"),
            Some(update),
            if_match,
        )
        .await
        .map(drop)
    }

    /// Deletes a document and its history (refused while others reference it).
    pub async fn delete_block_document(&self, id: Uuid) -> Result<(), Error> {
        self.delete(&format!("block_documents/{id}")).await
    }

    /// The stored versions of a document, newest first.
    pub async fn versions(&self, id: Uuid) -> Result<Vec<VersionInfo>, Error> {
        self.get(&format!("block_documents/{id}/versions")).await
    }

    /// Writes a new version of a document equal to its version `version`; returns the new
    /// version's number.
    pub async fn rollback(&self, id: Uuid, version: i64) -> Result<i64, Error> {
        #[derive(serde::Deserialize)]
        struct Outcome {
            version: i64,
        }
        let outcome: Outcome = self
            .call::<(), _>(
                Method::POST,
                &format!("block_documents/{id}/versions/{version}/rollback"),
                None,
            )
            .await?;
        Ok(outcome.version)
    }

    /// Every token (never their values).
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, Error> {
        self.get("tokens").await
    }

    /// Makes a token (`admin`).
    pub async fn create_token(&self, create: &TokenCreate) -> Result<NewToken, Error> {
        self.call(Method::POST, "tokens", Some(create)).await
    }

    /// Makes a token for a subprocess, within this client's token (any token).
    pub async fn create_child_token(&self, create: &ChildTokenCreate) -> Result<NewToken, Error> {
        self.call(Method::POST, "tokens/child", Some(create)).await
    }

    /// Replaces a token's grants (empty: every block).
    pub async fn set_token_grants(&self, id: &str, grants: &[Grant]) -> Result<TokenInfo, Error> {
        #[derive(Serialize)]
        struct Update<'a> {
            grants: &'a [Grant],
        }
        self.call(
            Method::PATCH,
            &format!("tokens/{}", encode(id)),
            Some(&Update { grants }),
        )
        .await
    }

    /// Revokes a token.
    pub async fn revoke_token(&self, id: &str) -> Result<TokenInfo, Error> {
        self.call::<(), _>(Method::DELETE, &format!("tokens/{}", encode(id)), None)
            .await
    }

    /// Every trusted issuer of workload identities.
    pub async fn issuers(&self) -> Result<Vec<Issuer>, Error> {
        self.get("auth/issuers").await
    }

    /// Trusts an issuer's JWTs (`admin`).
    pub async fn create_issuer(&self, create: &IssuerCreate) -> Result<Issuer, Error> {
        self.call(Method::POST, "auth/issuers", Some(create)).await
    }

    /// Stops trusting an issuer (refused while a role names it).
    pub async fn delete_issuer(&self, id: &str) -> Result<(), Error> {
        self.delete(&format!("auth/issuers/{}", encode(id))).await
    }

    /// Every role a workload identity may sign in to.
    pub async fn roles(&self) -> Result<Vec<Role>, Error> {
        self.get("auth/roles").await
    }

    /// Creates or replaces the role `name`.
    pub async fn set_role(&self, name: &str, config: &RoleConfig) -> Result<Role, Error> {
        self.call(
            Method::PUT,
            &format!("auth/roles/{}", encode(name)),
            Some(config),
        )
        .await
    }

    /// Deletes the role `name`.
    pub async fn delete_role(&self, name: &str) -> Result<(), Error> {
        self.delete(&format!("auth/roles/{}", encode(name))).await
    }

    /// Every webhook (never their signing secrets).
    pub async fn webhooks(&self) -> Result<Vec<Webhook>, Error> {
        self.get("webhooks").await
    }

    /// Registers a webhook; the answer shows its signing secret, this once.
    pub async fn create_webhook(&self, create: &WebhookCreate) -> Result<NewWebhook, Error> {
        let request = "POST webhooks";
        let answer: Value = self.call(Method::POST, "webhooks", Some(create)).await?;
        Ok(
            match crate::error::decode::<WebhookCreated>(answer.clone(), request) {
                Ok(created) => NewWebhook::Created(created),
                Err(problem) => NewWebhook::Unread { answer, problem },
            },
        )
    }

    /// Deletes a webhook (its pending deliveries are not sent).
    pub async fn delete_webhook(&self, id: Uuid) -> Result<(), Error> {
        self.delete(&format!("webhooks/{id}")).await
    }

    /// A webhook's deliveries, newest first, at most `limit`.
    pub async fn webhook_deliveries(&self, id: Uuid, limit: u32) -> Result<Vec<Delivery>, Error> {
        self.get(&format!("webhooks/{id}/deliveries?limit={limit}"))
            .await
    }

    /// Sends a signed test event to a webhook now and says how it went (not retried).
    pub async fn test_webhook(&self, id: Uuid) -> Result<WebhookTest, Error> {
        self.call::<(), _>(Method::POST, &format!("webhooks/{id}/test"), None)
            .await
    }

    /// One page of the audit log, newest first.
    pub async fn audit(&self, filter: &AuditFilter) -> Result<AuditPage, Error> {
        self.get(&format!("audit?{}", filter.query())).await
    }

    /// The data keys and what each seals.
    pub async fn key_status(&self) -> Result<KeyStatus, Error> {
        self.get("keys").await
    }

    /// Rotates the data key; the server re-encrypts older secrets in the background.
    pub async fn rotate_key(&self) -> Result<Rotation, Error> {
        self.call::<(), _>(Method::POST, "keys/rotate", None).await
    }

    /// The settings every replica shares.
    pub async fn settings(&self) -> Result<Settings, Error> {
        self.get("settings").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_queries_encode_their_values() {
        let filter = AuditFilter {
            limit: Some(5),
            action: Some("POST /api/block documents&x=1".into()),
            ..AuditFilter::default()
        };
        assert_eq!(
            filter.query(),
            "limit=5&action=POST+%2Fapi%2Fblock+documents%26x%3D1"
        );
        assert_eq!(AuditFilter::default().query(), "");
    }

    #[test]
    fn a_new_tokens_debug_hides_its_value() {
        let token: NewToken = serde_json::from_value(serde_json::json!({
            "id": Uuid::nil(),
            "name": "ci",
            "scopes": ["read"],
            "created": "2026-01-01T00:00:00Z",
            "expires": null,
            "last_used": null,
            "revoked": null,
            "grants": [],
            "parent_id": null,
            "token": "blk_canary-token-77e1",
        }))
        .unwrap();
        assert!(!format!("{token:?}").contains("canary"));
        assert_eq!(token.info.name, "ci");
    }
}
