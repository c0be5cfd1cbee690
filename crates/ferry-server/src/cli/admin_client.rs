//! A client for Ferry's admin API (served by `ferry-s3`'s `replication/admin.rs`; the answers
//! are the types of `ferry_store::replication::api`): requests signed with SigV4 like any
//! S3 request, over HTTP or HTTPS (system roots plus an optional private CA).

use std::time::SystemTime;

use anyhow::Context as _;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::cli::client::Endpoint;

/// A signed-request client for one endpoint.
pub struct AdminClient {
    endpoint: Endpoint,
    http: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// A response.
#[derive(Debug)]
pub struct Response {
    pub status: http::StatusCode,
    pub body: Bytes,
}

impl Response {
    /// The body decoded from JSON (an admin API answer type, or any JSON value), or an error
    /// carrying the S3 error text.
    ///
    /// # Errors
    /// On a non-2xx status or a body that is not the expected JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        if !self.status.is_success() {
            let text = String::from_utf8_lossy(&self.body);
            let code = between(&text, "<Code>", "</Code>").unwrap_or("");
            let msg = between(&text, "<Message>", "</Message>").unwrap_or("");
            anyhow::bail!("{} {code} {msg}", self.status);
        }
        serde_json::from_slice(&self.body).context("the server's answer is not the expected JSON")
    }
}

fn between<'a>(s: &'a str, a: &str, b: &str) -> Option<&'a str> {
    let start = s.find(a)? + a.len();
    let end = s[start..].find(b)? + start;
    Some(&s[start..end])
}

impl AdminClient {
    /// A client for `endpoint`, trusting the system roots and `ca_pem` if given.
    ///
    /// # Errors
    /// When the TLS configuration cannot be built.
    pub fn new(endpoint: Endpoint, ca_pem: Option<&[u8]>) -> anyhow::Result<Self> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs_load() {
            let _ = roots.add(cert);
        }
        if let Some(pem) = ca_pem {
            use rustls::pki_types::pem::PemObject as _;
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
                roots.add(cert.context("CA file: not a PEM certificate")?).context("CA file: unusable certificate")?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
        Ok(Self { endpoint, http: Client::builder(TokioExecutor::new()).build(https) })
    }

    /// Sends `method PATH_AND_QUERY` with `body`, signed.
    ///
    /// # Errors
    /// Signing or transport failures (not HTTP error statuses: see [`Response::json`]).
    pub async fn request(&self, method: &str, path_and_query: &str, body: Bytes) -> anyhow::Result<Response> {
        let resp = self.send(method, path_and_query, body).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await.context("reading the answer")?.to_bytes();
        Ok(Response { status, body })
    }

    /// Sends a signed GET and calls `line` for each line of the answer as it arrives.
    ///
    /// # Errors
    /// Transport failures, a non-2xx answer (with the server's message), or `line`'s error.
    pub async fn lines(&self, path_and_query: &str, mut line: impl FnMut(&str) -> anyhow::Result<()>) -> anyhow::Result<()> {
        let resp = self.send("GET", path_and_query, Bytes::new()).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body.collect().await.context("reading the answer")?.to_bytes();
            Response { status, body: bytes }.json::<serde_json::Value>()?;
            anyhow::bail!("{status}");
        }
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.context("reading the answer")?;
            if let Some(data) = frame.data_ref() {
                pending.extend_from_slice(data);
                while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
                    let text = String::from_utf8_lossy(&pending[..pos]).into_owned();
                    pending.drain(..=pos);
                    line(&text)?;
                }
            }
        }
        if !pending.is_empty() {
            line(&String::from_utf8_lossy(&pending))?;
        }
        Ok(())
    }

    async fn send(
        &self,
        method: &str,
        path_and_query: &str,
        body: Bytes,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let url = format!("{}{}", self.endpoint.url.trim_end_matches('/'), path_and_query);
        let uri: http::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
        let host = uri.authority().map(ToString::to_string).context("URL without a host")?;
        let mut req =
            http::Request::builder().method(method).uri(uri).header(http::header::HOST, host).body(Full::new(body.clone()))?;
        let identity = Credentials::new(&self.endpoint.access_key, &self.endpoint.secret_key, None, None, "ferry-cli").into();
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.endpoint.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .context("signing parameters")?
            .into();
        let headers: Vec<(String, String)> =
            req.headers().iter().filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_owned(), v.to_owned()))).collect();
        let signable = SignableRequest::new(
            method,
            url.clone(),
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            SignableBody::Bytes(&body),
        )
        .context("signable request")?;
        let (instructions, _) = sign(signable, &params).context("signing")?.into_parts();
        instructions.apply_to_request_http1x(&mut req);
        self.http.request(req).await.with_context(|| format!("cannot reach {}", self.endpoint.url))
    }
}

fn rustls_native_certs_load() -> Vec<rustls::pki_types::CertificateDer<'static>> {
    rustls_native_certs::load_native_certs().certs
}
