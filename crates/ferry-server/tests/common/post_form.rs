//! Browser form uploads (POST object) as a web page builds them: `multipart/form-data` with a
//! policy signed by SigV4 in the page's back end, sent by a plain HTTP client.

use std::net::SocketAddr;

use base64::Engine as _;
use hmac::{KeyInit as _, Mac as _};

use super::RawResponse;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// A browser form: its fields in order, then its file.
pub struct PostForm {
    pub fields: Vec<(String, String)>,
    pub file_name: String,
    pub file: Vec<u8>,
}

impl PostForm {
    /// An unsigned form (an anonymous upload) of `file` to `key`.
    pub fn new(key: &str, file: &[u8]) -> Self {
        Self { fields: vec![("key".into(), key.into())], file_name: "upload.bin".into(), file: file.to_vec() }
    }

    /// Adds a field.
    #[must_use]
    pub fn field(mut self, name: &str, value: &str) -> Self {
        self.fields.push((name.into(), value.into()));
        self
    }

    /// Signs the form with SigV4 as `access_key`: a policy valid for an hour whose conditions are
    /// `conditions` (JSON array items) plus those of the signing fields, as AWS SDKs write it.
    #[must_use]
    pub fn signed(mut self, access_key: &str, secret_key: &str, region: &str, conditions: &[&str]) -> Self {
        let now = time::OffsetDateTime::now_utc();
        let date = format!("{:04}{:02}{:02}", now.year(), u8::from(now.month()), now.day());
        let amz_date = format!("{date}T{:02}{:02}{:02}Z", now.hour(), now.minute(), now.second());
        let credential = format!("{access_key}/{date}/{region}/s3/aws4_request");
        let expires = now + time::Duration::hours(1);
        let expiration = expires.format(&time::format_description::well_known::Rfc3339).expect("format");
        let mut all: Vec<String> = conditions.iter().map(|c| (*c).to_owned()).collect();
        all.push(r#"{"x-amz-algorithm": "AWS4-HMAC-SHA256"}"#.into());
        all.push(format!(r#"{{"x-amz-credential": "{credential}"}}"#));
        all.push(format!(r#"{{"x-amz-date": "{amz_date}"}}"#));
        let policy = format!(r#"{{"expiration": "{expiration}", "conditions": [{}]}}"#, all.join(", "));
        let policy = base64::engine::general_purpose::STANDARD.encode(policy);
        let mut key = format!("AWS4{secret_key}").into_bytes();
        for part in [date.as_str(), region, "s3", "aws4_request"] {
            key = hmac(&key, part.as_bytes());
        }
        let signature = hex::encode(hmac(&key, policy.as_bytes()));
        for (name, value) in [
            ("x-amz-algorithm", "AWS4-HMAC-SHA256".to_owned()),
            ("x-amz-credential", credential),
            ("x-amz-date", amz_date),
            ("policy", policy),
            ("x-amz-signature", signature),
        ] {
            self.fields.push((name.into(), value));
        }
        self
    }

    /// The request body and its boundary.
    pub fn body(&self) -> (String, Vec<u8>) {
        let boundary = "ferry-form-boundary-7d2f".to_owned();
        let mut body = Vec::new();
        for (name, value) in &self.fields {
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
            );
        }
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n",
                self.file_name
            )
            .as_bytes(),
        );
        body.extend_from_slice(&self.file);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        (boundary, body)
    }

    /// Posts the form to `bucket` (path style) and reads the answer.
    pub async fn post(&self, addr: SocketAddr, bucket: &str) -> RawResponse {
        let (boundary, body) = self.body();
        let mut request = format!(
            "POST /{bucket} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        super::raw_http(addr, &request).await
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}
