//! S3 clients (aws-sdk-s3 with rustls on ring), set up for non-AWS endpoints: path-style,
//! checksums only when required, no stalled-stream protection on uploads, static credentials,
//! no AWS config files. Peers get the SDK's own retries off: the engine owns retries, backoff
//! and failure classification. The one place Ferry builds an SDK client (`ferry bench` too).

use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation, StalledStreamProtectionConfig,
};
use aws_smithy_http_client::tls;

use crate::error::{Error, Result};

/// How to reach an S3 endpoint.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// `http://HOST:PORT` or `https://HOST:PORT`.
    pub url: String,
    pub access_key: String,
    pub secret_key: String,
    /// Region to sign for.
    pub region: String,
    /// PEM of an extra CA to trust (besides the system roots).
    pub ca_pem: Option<Vec<u8>>,
}

/// Reads a CA file for [`ClientSettings::ca_pem`].
///
/// # Errors
/// When the file cannot be read.
pub fn read_ca(path: &Path) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
}

/// The SDK configuration every Ferry client starts from: `s`'s endpoint, credentials and trust
/// store, path-style addressing, checksums only when required, no stalled-stream protection on
/// uploads. [`build`] adds what the engine needs; `ferry bench` keeps the SDK's retries.
///
/// # Errors
/// When the TLS trust store cannot be built from `ca_pem`.
pub fn config(s: &ClientSettings) -> Result<aws_sdk_s3::config::Builder> {
    let mut trust = tls::TrustStore::default();
    if let Some(pem) = &s.ca_pem {
        trust = trust.with_pem_certificate(pem.clone());
    }
    let ctx = tls::TlsContext::builder().with_trust_store(trust).build().map_err(|e| Error::Client(format!("TLS setup: {e}")))?;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .tls_context(ctx)
        .build_https();
    Ok(aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(s.region.clone()))
        .endpoint_url(&s.url)
        .credentials_provider(Credentials::new(&s.access_key, &s.secret_key, None, None, "ferry"))
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .stalled_stream_protection(StalledStreamProtectionConfig::enabled().upload_enabled(false).build())
        .http_client(http))
}

/// A client for a peer: [`config`] with the SDK's retries off (the engine owns retries, backoff
/// and failure classification) and connect and read timeouts.
///
/// # Errors
/// When the TLS trust store cannot be built from `ca_pem`.
pub fn build(s: &ClientSettings) -> Result<Client> {
    let conf = config(s)?
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder().connect_timeout(Duration::from_secs(5)).read_timeout(Duration::from_secs(120)).build(),
        )
        .build();
    Ok(Client::from_conf(conf))
}
