//! Sign-in with a workload identity: the client reads the identity token its platform
//! gives the workload (a Kubernetes projected service-account token, a CI job's OIDC
//! token) from a file, exchanges it at `POST /api/auth/jwt` for a short-lived token of a
//! role, and exchanges it again (reading the file afresh, as platforms rotate it) when two
//! thirds of that token's life have passed. No secret needs to be configured.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use secrecy::{ExposeSecret as _, SecretString};

use crate::Error;

/// The longest a signed-in token is kept, whatever the server says.
const MAX_LIFE: Duration = Duration::from_secs(24 * 3600);

/// The longest identity token read from the file.
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// Where the identity token is and which role to ask for: `BLOCKS_IDENTITY_TOKEN_FILE` and
/// `BLOCKS_ROLE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The file holding the identity token (a JWT).
    pub token_file: PathBuf,
    /// The role to sign in to.
    pub role: String,
}

impl Identity {
    /// Where a refusal's token came from, for error messages.
    pub(crate) fn describe(&self) -> String {
        format!(
            "the identity token in {} exchanged for the role {}",
            self.token_file.display(),
            self.role
        )
    }
}

/// The token an exchange answered, and when to exchange again.
struct Session {
    token: SecretString,
    renew_at: Instant,
    expires_at: Instant,
}

/// Exchanges an identity for tokens, one exchange at a time.
pub(crate) struct Signer {
    identity: Identity,
    /// Follows no redirect.
    http: reqwest::Client,
    session: Mutex<Option<Session>>,
    exchanging: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
struct Exchanged {
    token: String,
    expires_in: u64,
}

impl Signer {
    pub(crate) fn new(identity: Identity, http: reqwest::Client) -> Self {
        Self {
            identity,
            http,
            session: Mutex::default(),
            exchanging: tokio::sync::Mutex::default(),
        }
    }

    pub(crate) fn identity(&self) -> &Identity {
        &self.identity
    }

    fn current(&self, fresh: bool) -> Option<SecretString> {
        let session = self.session.lock();
        session
            .as_ref()
            .filter(|s| {
                let now = Instant::now();
                if fresh {
                    now < s.renew_at
                } else {
                    now < s.expires_at
                }
            })
            .map(|s| s.token.clone())
    }

    /// Forgets the token (the server refused it): the next request exchanges again.
    pub(crate) fn forget(&self) {
        *self.session.lock() = None;
    }

    /// A token to send: the current one while it is fresh, else a new exchange (and, if
    /// that fails while the current one has not expired, the current one).
    pub(crate) async fn token(
        &self,
        api_url: &url::Url,
        source: &crate::ConfigSource,
    ) -> Result<SecretString, Error> {
        if let Some(token) = self.current(true) {
            return Ok(token);
        }
        let _one_at_a_time = self.exchanging.lock().await;
        if let Some(token) = self.current(true) {
            return Ok(token);
        }
        match self.exchange(api_url, source).await {
            Ok(token) => Ok(token),
            Err(e) => self.current(false).ok_or(e),
        }
    }

    async fn exchange(
        &self,
        api_url: &url::Url,
        source: &crate::ConfigSource,
    ) -> Result<SecretString, Error> {
        let path = &self.identity.token_file;
        let read = std::fs::File::open(path).and_then(|f| {
            use std::io::Read as _;
            let mut text = String::new();
            f.take(MAX_TOKEN_FILE_BYTES).read_to_string(&mut text)?;
            Ok(text)
        });
        let jwt = SecretString::from(
            read.map_err(|e| {
                Error::Config(format!(
                    "cannot read the identity token {} (BLOCKS_IDENTITY_TOKEN_FILE): {e}",
                    path.display()
                ))
            })?
            .trim()
            .to_owned(),
        );
        let url = api_url
            .join("auth/jwt")
            .map_err(|e| Error::Config(format!("bad API URL: {e}")))?;
        let started = Instant::now();
        let response = self
            .http
            .post(url)
            .json(&serde_json::json!({"role": self.identity.role, "jwt": jwt.expose_secret()}))
            .send()
            .await
            .map_err(|e| Error::Unreachable {
                url: api_url.to_string(),
                source_of_url: source.clone(),
                reason: e.to_string(),
            })?;
        let status = response.status();
        if !status.is_success() {
            let detail = response
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_owned))
                .unwrap_or_else(|| status.to_string());
            return Err(if status == reqwest::StatusCode::UNAUTHORIZED {
                Error::Unauthorized {
                    detail,
                    key_from: self.identity.describe(),
                }
            } else {
                Error::Http {
                    status: status.as_u16(),
                    detail,
                }
            });
        }
        let exchanged: Exchanged = response.json().await.map_err(|e| Error::Http {
            status: status.as_u16(),
            detail: format!("the sign-in answer is not a token: {e}"),
        })?;
        // A server's answer, bounded: no token is kept for more than a day.
        let life = Duration::from_secs(exchanged.expires_in.min(MAX_LIFE.as_secs()));
        let token = SecretString::from(exchanged.token);
        *self.session.lock() = Some(Session {
            token: token.clone(),
            renew_at: started + life * 2 / 3,
            expires_at: started + life,
        });
        Ok(token)
    }
}
