//! aws-sdk-s3 clients for a test endpoint: path-style or virtual-host style (every name
//! resolves to 127.0.0.1), with the SDK's default checksums or only the required ones, and a
//! variant that trusts a private CA for https endpoints.

use std::net::{IpAddr, Ipv4Addr};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_smithy_http_client::tls;
use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns};

use super::{MAIN_AK, MAIN_SK};

/// Resolves every name to 127.0.0.1 (virtual-host-style requests to `BUCKET.localhost`).
#[derive(Debug, Clone)]
struct Loopback;

impl ResolveDns for Loopback {
    fn resolve_dns<'a>(&'a self, _name: &'a str) -> DnsFuture<'a> {
        DnsFuture::ready(Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]))
    }
}

/// Client variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// SDK defaults: checksums when supported, path-style.
    Default,
    /// Checksums only when required (plain bodies, no trailers), path-style.
    WhenRequired,
    /// Virtual-host style against `localhost`.
    VirtualHost,
}

pub fn client_for(endpoint: &str, ak: &str, sk: &str, region: &str, mode: Mode) -> Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_with_resolver(Loopback);
    let endpoint = if mode == Mode::VirtualHost { endpoint.replace("127.0.0.1", "localhost") } else { endpoint.to_owned() };
    let mut b = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(ak, sk, None, None, "test"))
        .force_path_style(mode != Mode::VirtualHost)
        .http_client(http);
    if mode == Mode::WhenRequired {
        b = b
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    }
    Client::from_conf(b.build())
}

/// A client that trusts `ca_pem` (for https endpoints with a private CA).
pub fn client_with_ca(endpoint: &str, region: &str, ca_pem: &[u8]) -> Client {
    let trust = tls::TrustStore::empty().with_pem_certificate(ca_pem.to_vec());
    let ctx = tls::TlsContext::builder().with_trust_store(trust).build().unwrap();
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .tls_context(ctx)
        .build_https();
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(MAIN_AK, MAIN_SK, None, None, "test"))
        .force_path_style(true)
        .http_client(http)
        .build();
    Client::from_conf(conf)
}
