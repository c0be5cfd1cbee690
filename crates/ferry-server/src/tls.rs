//! HTTPS for a region's listener (rustls on ring), HTTP/1.1 (see [`acceptor`]).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS acceptor from a PEM certificate chain and private key.
///
/// # Errors
/// A one-line description naming the file that cannot be used.
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("key `tls_cert`: cannot read {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("key `tls_cert`: {} is not a PEM certificate chain", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("key `tls_cert`: no certificate in {}", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("key `tls_key`: cannot read a PEM private key from {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("key `tls_key`: does not match the certificate")?;
    // HTTP/1.1 only, as S3 itself: clients then open one TCP connection per request in
    // flight. Over a WAN that is what fills the link: with HTTP/2 every request shares one
    // connection, whose flow-control window (1 MiB by default) and single TCP window cap the
    // whole peer link at window / round trip (about 20 MiB/s at 50 ms).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
