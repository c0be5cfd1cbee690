//! Raw HTTP/1.1 exchanges, for requests the SDK will not send (bad input, truncated bodies)
//! and for presigned requests sent by a plain client.

use std::net::SocketAddr;
use std::time::Duration;

/// A raw HTTP/1.1 exchange: sends `request` as is, reads until the server closes.
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> RawResponse {
    raw_exchange(addr, request, false).await
}

/// Like [`raw_http`], then closes the sending side (the server sees the body end early).
pub async fn raw_http_half_close(addr: SocketAddr, request: &[u8]) -> RawResponse {
    raw_exchange(addr, request, true).await
}

async fn raw_exchange(addr: SocketAddr, request: &[u8], half_close: bool) -> RawResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    if half_close {
        s.shutdown().await.ok();
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    RawResponse::parse(&buf)
}

#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    /// Parses a whole HTTP/1.1 response (head and body, not chunked).
    pub fn parse_bytes(buf: &[u8]) -> Self {
        Self::parse(buf)
    }

    fn parse(buf: &[u8]) -> Self {
        let text = String::from_utf8_lossy(buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
        let headers =
            lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned())).collect();
        Self { status, headers, body: body.to_owned() }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The `<Code>` of an S3 error body.
    pub fn code(&self) -> Option<&str> {
        let start = self.body.find("<Code>")? + 6;
        let end = self.body[start..].find("</Code>")? + start;
        Some(&self.body[start..end])
    }
}

/// Sends a request presigned by the SDK with a raw client.
pub async fn send_presigned(req: &aws_sdk_s3::presigning::PresignedRequest, body: &[u8]) -> RawResponse {
    send_presigned_with(req, &[], body).await
}

/// [`send_presigned`] with extra headers that the signature does not cover (what the holder of a
/// presigned URL can add).
pub async fn send_presigned_with(
    req: &aws_sdk_s3::presigning::PresignedRequest,
    extra: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    let uri: http::Uri = req.uri().parse().expect("uri");
    let addr: SocketAddr = format!("{}:{}", "127.0.0.1", uri.port_u16().unwrap_or(80)).parse().expect("addr");
    let mut text = format!("{} {} HTTP/1.1\r\n", req.method(), uri.path_and_query().map_or("/", |p| p.as_str()));
    for (k, v) in req.headers() {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    for (k, v) in extra {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    if !req.headers().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        text.push_str(&format!("host: {}\r\n", uri.authority().map_or("", |a| a.as_str())));
    }
    text.push_str(&format!("content-length: {}\r\nconnection: close\r\n\r\n", body.len()));
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(body);
    raw_http(addr, &bytes).await
}
