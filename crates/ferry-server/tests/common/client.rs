//! aws-sdk-s3 clients for a test endpoint, built on Ferry's one SDK configuration: path-style
//! or virtual-host style (every name resolves to 127.0.0.1), with the SDK's default checksums
//! or only the required ones, and a variant that trusts a private CA for https endpoints.

use std::net::{IpAddr, Ipv4Addr};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_smithy_http_client::tls;
use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns};
use ferry_replication::client::{ClientSettings, config};

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

/// The settings of a test client with the main account's keys unless given others.
fn settings(endpoint: &str, ak: &str, sk: &str, region: &str, ca_pem: Option<&[u8]>) -> ClientSettings {
    ClientSettings {
        url: endpoint.to_owned(),
        access_key: ak.to_owned(),
        secret_key: sk.to_owned(),
        region: region.to_owned(),
        ca_pem: ca_pem.map(<[u8]>::to_vec),
    }
}

/// A client built on Ferry's own SDK configuration (`ferry_replication::client::config`), with
/// the mode's addressing and checksums, resolving every name to 127.0.0.1.
pub fn client_for(endpoint: &str, ak: &str, sk: &str, region: &str, mode: Mode) -> Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_with_resolver(Loopback);
    let endpoint = if mode == Mode::VirtualHost { endpoint.replace("127.0.0.1", "localhost") } else { endpoint.to_owned() };
    let mut b =
        config(&settings(&endpoint, ak, sk, region, None)).unwrap().http_client(http).force_path_style(mode != Mode::VirtualHost);
    if mode != Mode::WhenRequired {
        // The SDK's defaults: checksums whenever the operation supports them.
        b = b
            .request_checksum_calculation(RequestChecksumCalculation::WhenSupported)
            .response_checksum_validation(ResponseChecksumValidation::WhenSupported);
    }
    Client::from_conf(b.build())
}

/// A client that trusts `ca_pem` (for https endpoints with a private CA).
pub fn client_with_ca(endpoint: &str, region: &str, ca_pem: &[u8]) -> Client {
    Client::from_conf(config(&settings(endpoint, MAIN_AK, MAIN_SK, region, Some(ca_pem))).unwrap().build())
}
