//! Registry credentials and the `X-Registry-Auth` header.

use super::DockerError;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE;
use block_types::catalog::DockerRegistry;
use secrecy::zeroize::Zeroize as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Serialize;

/// Registry credentials, resolved: who logs in where, and the secrets to do it with.
#[derive(Debug, Clone)]
pub struct RegistryLogin {
    /// The user that logs in.
    pub username: String,
    /// The registry's address, as the block gives it.
    pub server_address: String,
    /// Whether to log in again on every use.
    pub reauth: bool,
    password: SecretString,
    auth_header: SecretString,
}

impl RegistryLogin {
    pub(super) fn new(registry: &DockerRegistry) -> Result<Self, DockerError> {
        let username = registry.username.trim();
        let server_address = registry.registry_url.trim();
        if username.is_empty() {
            return Err(DockerError::new("image_registry.username", "is empty"));
        }
        if server_address.is_empty() {
            return Err(DockerError::new(
                "image_registry.registry_url",
                "is empty; give the registry's address, e.g. index.docker.io",
            ));
        }
        let password = registry.password.expose_secret();
        if password.is_empty() {
            return Err(DockerError::new("image_registry.password", "is empty"));
        }
        Ok(Self {
            username: username.to_owned(),
            server_address: server_address.to_owned(),
            reauth: registry.reauth,
            password: SecretString::from(password),
            auth_header: auth_header(username, password, server_address),
        })
    }

    /// The password or access token.
    pub fn password(&self) -> &SecretString {
        &self.password
    }

    /// The `X-Registry-Auth` header value.
    pub fn auth_header(&self) -> &SecretString {
        &self.auth_header
    }

    /// `login --username U --password-stdin REGISTRY`.
    pub fn docker_login_args(&self) -> Vec<String> {
        vec![
            "login".to_owned(),
            "--username".to_owned(),
            self.username.clone(),
            "--password-stdin".to_owned(),
            self.server_address.clone(),
        ]
    }
}

impl PartialEq for RegistryLogin {
    fn eq(&self, other: &Self) -> bool {
        self.username == other.username
            && self.server_address == other.server_address
            && self.reauth == other.reauth
            && self.password.expose_secret() == other.password.expose_secret()
    }
}

/// URL-safe base64 of the auth JSON; the plaintext buffer is zeroed.
pub(super) fn auth_header(username: &str, password: &str, server_address: &str) -> SecretString {
    #[derive(Serialize)]
    pub(super) struct AuthConfig<'a> {
        username: &'a str,
        password: &'a str,
        serveraddress: &'a str,
    }
    // Sized for the worst escaping (\u00XX per byte) so that the buffer never reallocates
    // and leaves an unzeroed copy behind.
    let capacity = 64 + 6 * (username.len() + password.len() + server_address.len());
    let mut plain = Vec::with_capacity(capacity);
    serde_json::to_writer(
        &mut plain,
        &AuthConfig {
            username,
            password,
            serveraddress: server_address,
        },
    )
    .expect("writing strings as JSON to memory cannot fail");
    let mut encoded = String::with_capacity(base64::encoded_len(plain.len(), true).unwrap_or(0));
    URL_SAFE.encode_string(&plain, &mut encoded);
    plain.zeroize();
    SecretString::from(encoded)
}
