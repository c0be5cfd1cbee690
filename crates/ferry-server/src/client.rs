//! S3 clients to other endpoints (aws-sdk-s3 with rustls on ring), set up the way non-AWS
//! endpoints need: path-style addressing, checksums only when required, no stalled-stream
//! protection on uploads, static credentials, no AWS config files.

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation, StalledStreamProtectionConfig,
};
use aws_smithy_http_client::tls;

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `http://HOST:PORT` or `https://HOST:PORT`.
    pub url: String,
    pub access_key: String,
    pub secret_key: String,
    /// Signing region.
    pub region: String,
}

/// A client for `ep`.
#[must_use]
pub fn s3_client(ep: &Endpoint) -> Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https();
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(ep.region.clone()))
        .endpoint_url(&ep.url)
        .credentials_provider(Credentials::new(&ep.access_key, &ep.secret_key, None, None, "ferry"))
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .stalled_stream_protection(StalledStreamProtectionConfig::enabled().upload_enabled(false).build())
        .http_client(http)
        .build();
    Client::from_conf(conf)
}
