//! S3 clients for the CLI's own requests (`ferry bench`): the engine's client configuration
//! (`ferry_replication::client::config`) with the SDK's default retries.

use aws_sdk_s3::Client;
use ferry_replication::client::{ClientSettings, config};

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
///
/// # Errors
/// When the client cannot be set up.
pub fn s3_client(ep: &Endpoint) -> anyhow::Result<Client> {
    let settings = ClientSettings {
        url: ep.url.clone(),
        access_key: ep.access_key.clone(),
        secret_key: ep.secret_key.clone(),
        region: ep.region.clone(),
        ca_pem: None,
    };
    Ok(Client::from_conf(config(&settings)?.build()))
}
