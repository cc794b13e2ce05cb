//! HTTPS.

use anyhow::Context;
use std::path::Path;

/// Loads the certificate chain and key for HTTPS.
pub(super) async fn tls_config(
    cert: &Path,
    key: &Path,
) -> anyhow::Result<axum_server::tls_rustls::RustlsConfig> {
    // sqlx brings rustls with ring; make it the process's provider (a second call fails
    // harmlessly when one is installed).
    let _ = rustls::crypto::ring::default_provider().install_default();
    axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .with_context(|| {
            format!(
                "cannot use the TLS certificate {} and key {}",
                cert.display(),
                key.display()
            )
        })
}
