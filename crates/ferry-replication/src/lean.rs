//! A lean client for the requests that dominate the replication of small objects: the
//! PutObject of a version held inline (at most `inline_threshold`, 32 KiB by default), to a
//! Ferry peer, and the batches of them ([`crate::batch`]). The SDK's orchestrator (configuration bags, interceptors, endpoint resolution
//! per request) costs several hundred µs of CPU per request, more than the rest of a small
//! replica's journey; this is hyper's pooled client plus SigV4, nothing else.
//!
//! # Invariants
//! 1. Every request is signed with SigV4 (the payload's SHA-256 included) with the peer's
//!    credentials, exactly as the SDK signs: the destination checks it like any request.
//! 2. What is sent is what the SDK path sends for the same version (the headers are built
//!    from the same attributes, by the caller); anything this client cannot carry (a header
//!    value that is not visible ASCII) is left to the SDK path, never dropped.
//! 3. An answer is reported as the SDK's would be: the status and the S3 code, or a transport
//!    failure; the caller classifies it with the same rules.
//! 4. Bounded: the body is in memory already (inline), and an error answer is read up to
//!    [`MAX_ERROR_BODY`] bytes.
//!
//! Timeouts are the SDK path's: 5 s to connect, 120 s for the whole answer.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings, UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::client::ClientSettings;
use crate::error::{Error, Result};

/// The most of an error answer read (S3 error documents are a few hundred bytes).
const MAX_ERROR_BODY: usize = 64 * 1024;
/// The most of a batch's answer read (a result per entry, each a status, a code and a message).
const MAX_BATCH_ANSWER: usize = 1 << 20;
/// As the SDK path's.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// Bytes kept unescaped in a key in the path: S3's unreserved characters and `/`.
const KEY: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/');

/// A signed-request client for one peer.
pub struct LeanClient {
    /// `scheme://host:port`, without a trailing slash.
    base: String,
    host: String,
    credentials: Credentials,
    region: String,
    http: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// Why a request did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The peer answered with an error status.
    Answer { status: u16, code: String, message: String },
    /// No connection could be made (refused, timed out, no route, TLS handshake failed): the
    /// request never reached the peer.
    Unreachable(String),
    /// No answer on a connection made: reset, closed, or timed out.
    Transport(String),
    /// The request could not be made (a header this client does not carry): use the SDK.
    Unsendable(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Answer { code, message, status } if code.is_empty() => write!(f, "HTTP {status}: {message}"),
            Self::Answer { code, message, .. } if message.is_empty() => f.write_str(code),
            Self::Answer { code, message, .. } => write!(f, "{code}: {message}"),
            Self::Unreachable(why) | Self::Transport(why) | Self::Unsendable(why) => f.write_str(why),
        }
    }
}

impl LeanClient {
    /// A client for the peer of `s`, trusting the system roots and its extra CA.
    ///
    /// # Errors
    /// A bad URL, or a CA that is not a usable PEM certificate.
    pub fn new(s: &ClientSettings) -> Result<Self> {
        let base = s.url.trim_end_matches('/').to_owned();
        let uri: http::Uri = base.parse().map_err(|e| Error::Client(format!("bad peer URL {base}: {e}")))?;
        let host = uri.authority().map(ToString::to_string).ok_or_else(|| Error::Client(format!("no host in {base}")))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            // An unusable system certificate is skipped, as the SDK's trust store does.
            let _ = roots.add(cert);
        }
        if let Some(pem) = &s.ca_pem {
            use rustls::pki_types::pem::PemObject as _;
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| Error::Client(format!("CA file: not a PEM certificate: {e}")))?;
                roots.add(cert).map_err(|e| Error::Client(format!("CA file: unusable certificate: {e}")))?;
            }
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Client(format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        tcp.set_nodelay(true);
        let https =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().wrap_connector(tcp);
        Ok(Self {
            base,
            host,
            credentials: Credentials::new(&s.access_key, &s.secret_key, None, None, "ferry"),
            region: s.region.clone(),
            http: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    /// PUTs `body` as `key` in `bucket` with `headers` (lowercase names), signed.
    ///
    /// # Errors
    /// The peer's error answer, a transport failure, or a header that cannot be sent.
    pub async fn put_object(&self, bucket: &str, key: &str, headers: &[(String, String)], body: Bytes) -> Result<(), Failure> {
        let url = format!("{}/{}/{}", self.base, percent_encoding::utf8_percent_encode(bucket, KEY), key_path(key));
        self.exchange(http::Method::PUT, &url, headers, body, MAX_ERROR_BODY).await.map(drop)
    }

    /// POSTs a batch of replicas to `bucket` (`ferry_store::replication::wire::batch`), signed;
    /// returns the peer's answer (read up to [`MAX_BATCH_ANSWER`] bytes).
    ///
    /// # Errors
    /// The peer's error answer, a transport failure, or a header that cannot be sent.
    pub async fn post_batch(&self, bucket: &str, headers: &[(String, String)], body: Bytes) -> Result<Bytes, Failure> {
        use ferry_store::replication::wire::batch::BATCH_QUERY;
        let url = format!("{}/{}?{BATCH_QUERY}", self.base, percent_encoding::utf8_percent_encode(bucket, KEY));
        self.exchange(http::Method::POST, &url, headers, body, MAX_BATCH_ANSWER).await
    }

    /// One signed request; the answer's body when it succeeds.
    async fn exchange(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(String, String)],
        body: Bytes,
        answer_limit: usize,
    ) -> Result<Bytes, Failure> {
        sendable(headers)?;
        let mut req = http::Request::builder().method(&method).uri(url).header(http::header::HOST, &self.host);
        for (name, value) in headers {
            req = req.header(name.as_str(), value.as_str());
        }
        let mut req = req.body(Full::new(body.clone())).map_err(|e| Failure::Unsendable(format!("request: {e}")))?;
        self.sign(&mut req, method.as_str(), url, &body)?;
        let exchange = async {
            let answer = self.http.request(req).await.map_err(|e| {
                if e.is_connect() {
                    Failure::Unreachable(format!("could not connect: {e}"))
                } else {
                    Failure::Transport(format!("connection failed: {e}"))
                }
            })?;
            let status = answer.status();
            // Read to the end either way, so the connection goes back to the pool.
            let text = Limited::new(answer.into_body(), answer_limit)
                .collect()
                .await
                .map_err(|e| Failure::Transport(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, Failure>((status, text))
        };
        let (status, text) =
            tokio::time::timeout(ANSWER_TIMEOUT, exchange).await.map_err(|_| Failure::Transport("timeout".to_owned()))??;
        if status.is_success() {
            return Ok(text);
        }
        let (code, message) = error_fields(&text);
        Err(Failure::Answer { status: status.as_u16(), code, message })
    }

    fn sign(&self, req: &mut http::Request<Full<Bytes>>, method: &str, url: &str, body: &[u8]) -> Result<(), Failure> {
        let unsignable = |e: &dyn std::fmt::Display| Failure::Unsendable(format!("signing: {e}"));
        // As the SDK signs for S3: the path as sent (not encoded twice, not normalized), and
        // the payload's hash in x-amz-content-sha256.
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let identity = self.credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| unsignable(&e))?
            .into();
        let headers = req.headers().iter().filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)));
        let signable = SignableRequest::new(method, url, headers, SignableBody::Bytes(body)).map_err(|e| unsignable(&e))?;
        let (instructions, _) = sign(signable, &params).map_err(|e| unsignable(&e))?.into_parts();
        instructions.apply_to_request_http1x(req);
        Ok(())
    }
}

/// Refuses headers this client does not send (a value that is not visible ASCII): the SDK
/// path sends those requests (invariant 2).
///
/// # Errors
/// [`Failure::Unsendable`], naming the header.
pub fn sendable(headers: &[(String, String)]) -> Result<(), Failure> {
    match headers.iter().find(|(_, value)| !value.bytes().all(|b| (b' '..=b'~').contains(&b) || b == b'\t')) {
        Some((name, _)) => Err(Failure::Unsendable(format!("header {name} is not visible ASCII"))),
        None => Ok(()),
    }
}

/// A key as it goes in the path: each byte but S3's unreserved ones and `/` escaped.
fn key_path(key: &str) -> String {
    percent_encoding::utf8_percent_encode(key, KEY).to_string()
}

/// The `Code` and `Message` of an S3 error document (empty when absent or not XML).
fn error_fields(xml: &[u8]) -> (String, String) {
    #[derive(serde::Deserialize, Default)]
    #[serde(rename_all = "PascalCase", default)]
    struct ErrorDocument {
        code: String,
        message: String,
    }
    let doc: ErrorDocument =
        std::str::from_utf8(xml).ok().and_then(|text| quick_xml::de::from_str(text).ok()).unwrap_or_default();
    (doc.code, doc.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_escaped_as_s3_signs_them() {
        assert_eq!(key_path("a/b c/ü~_.-+="), "a/b%20c/%C3%BC~_.-%2B%3D");
    }

    /// A header value the signature cannot carry is handed back before anything is sent.
    #[tokio::test]
    async fn a_header_it_cannot_sign_is_left_to_the_sdk() {
        let settings = ClientSettings {
            // Nothing listens there: the request must not get that far.
            url: "http://127.0.0.1:9".into(),
            access_key: "a".into(),
            secret_key: "s".into(),
            region: "r".into(),
            ca_pem: None,
        };
        let c = LeanClient::new(&settings).expect("client");
        let headers = [("x-amz-meta-name".to_owned(), "Zoë".to_owned())];
        let out = c.put_object("b", "k", &headers, Bytes::from_static(b"x")).await;
        assert!(matches!(out, Err(Failure::Unsendable(_))), "{out:?}");
    }

    #[test]
    fn error_documents_give_their_code_and_message() {
        let xml = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>No &amp; no</Message><RequestId>1</RequestId></Error>";
        assert_eq!(error_fields(xml), ("AccessDenied".to_owned(), "No & no".to_owned()));
        assert_eq!(error_fields(b"not xml <"), (String::new(), String::new()));
        assert_eq!(error_fields(b""), (String::new(), String::new()));
    }
}
