//! Checksums on the S3 surface: what a request claims or asks for (`Content-MD5`, the flexible
//! checksum headers and trailers) and its check against the body's digest, and the five
//! checksum fields of S3 inputs and outputs ([`checksum_values!`], [`with_checksums!`]).

use ferry_store::checksum::{Algorithm, DigestResult, is_valid_checksum_value};
use ferry_store::model::{ChecksumKind, Checksums};
use s3s::dto::ChecksumAlgorithm;
use s3s::{S3Result, s3_error};

/// The checksums a request carries or asks for.
#[derive(Debug, Default)]
pub(crate) struct ChecksumRequest {
    /// Values given in headers.
    pub given: Vec<(Algorithm, String)>,
    /// Algorithms to compute (given ones, the SDK's declared algorithm, trailer ones).
    pub algorithms: Vec<Algorithm>,
    /// Content-MD5, raw.
    pub content_md5: Option<Vec<u8>>,
}

impl ChecksumRequest {
    /// Collects checksum headers; `default_full` adds CRC64NVME when nothing else is asked for
    /// (AWS's default for new objects).
    pub(crate) fn new(
        headers: &http::HeaderMap,
        declared: Option<&ChecksumAlgorithm>,
        values: [Option<&String>; 5],
        content_md5: Option<&str>,
        default_full: bool,
    ) -> S3Result<Self> {
        let mut r = Self::default();
        for (a, v) in ALGORITHMS.into_iter().zip(values) {
            if let Some(v) = v {
                if !is_valid_checksum_value(a, v) {
                    return Err(s3_error!(
                        InvalidRequest,
                        "Value for x-amz-checksum-{} header is invalid.",
                        a.name().to_ascii_lowercase()
                    ));
                }
                r.given.push((a, v.clone()));
                r.algorithms.push(a);
            }
        }
        if let Some(d) = declared {
            let a = Algorithm::parse(d.as_str())
                .ok_or_else(|| s3_error!(InvalidRequest, "Checksum algorithm {} is not supported", d.as_str()))?;
            r.algorithms.push(a);
        }
        if let Some(trailer) = headers.get("x-amz-trailer").and_then(|v| v.to_str().ok()) {
            for name in trailer.split(',').map(str::trim) {
                if let Some(a) = name.strip_prefix("x-amz-checksum-").and_then(Algorithm::parse) {
                    r.algorithms.push(a);
                }
            }
        }
        if r.algorithms.is_empty() && default_full {
            r.algorithms.push(Algorithm::Crc64Nvme);
        }
        let content_md5 = content_md5.or_else(|| headers.get("content-md5").and_then(|v| v.to_str().ok()));
        if let Some(md5) = content_md5 {
            r.content_md5 = Some(
                ferry_store::checksum::decode_content_md5(md5)
                    .ok_or_else(|| s3_error!(InvalidDigest, "The Content-MD5 you specified was invalid."))?,
            );
        }
        Ok(r)
    }

    /// Checks the computed digest against everything the request claimed (headers and, once the
    /// body is read, trailers). Returns how many claims it checked (Content-MD5 included).
    pub(crate) fn verify(&self, digest: &DigestResult, trailers: Option<&http::HeaderMap>) -> S3Result<usize> {
        if let Some(md5) = &self.content_md5
            && *md5 != digest.md5
        {
            return Err(s3_error!(BadDigest, "The Content-MD5 you specified did not match what we received."));
        }
        let mut claims = self.given.clone();
        if let Some(t) = trailers {
            for a in Algorithm::ALL {
                if let Some(v) = t.get(a.header()).and_then(|v| v.to_str().ok()) {
                    claims.push((a, v.to_owned()));
                }
            }
        }
        for (a, v) in &claims {
            if digest.checksum(*a) != Some(v.as_str()) {
                return Err(s3_error!(
                    BadDigest,
                    "The {} you specified did not match the calculated checksum.",
                    a.name()
                ));
            }
        }
        Ok(claims.len() + usize::from(self.content_md5.is_some()))
    }

    /// Whether the body will be checked against a checksum (a header value, or a declared
    /// trailer, which [`ChecksumRequest::verify`] must then find).
    pub(crate) fn has_checksum(&self, headers: &http::HeaderMap) -> bool {
        !self.given.is_empty() || headers.contains_key("x-amz-trailer")
    }
}

/// The stored checksums of a body.
pub(crate) fn stored_checksums(digest: &DigestResult) -> Checksums {
    Checksums {
        values: digest.checksums.iter().map(|(a, v)| (*a, v.clone())).collect(),
        kind: (!digest.checksums.is_empty()).then_some(ChecksumKind::FullObject),
    }
}

/// The five checksum values of an S3 output, from stored checksums.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ChecksumFields {
    pub crc32: Option<String>,
    pub crc32c: Option<String>,
    pub crc64nvme: Option<String>,
    pub sha1: Option<String>,
    pub sha256: Option<String>,
}

impl ChecksumFields {
    /// The fields of `c`.
    pub(crate) fn of(c: &Checksums) -> Self {
        let get = |a: Algorithm| c.values.get(&a).cloned();
        Self {
            crc32: get(Algorithm::Crc32),
            crc32c: get(Algorithm::Crc32c),
            crc64nvme: get(Algorithm::Crc64Nvme),
            sha1: get(Algorithm::Sha1),
            sha256: get(Algorithm::Sha256),
        }
    }

    /// True when any value is set.
    pub(crate) fn any(&self) -> bool {
        [&self.crc32, &self.crc32c, &self.crc64nvme, &self.sha1, &self.sha256].iter().any(|c| c.is_some())
    }
}

/// The five checksum header values of an s3s input, in [`ChecksumRequest::new`]'s order.
/// The five algorithms, in the order of [`checksum_values!`].
const ALGORITHMS: [Algorithm; 5] =
    [Algorithm::Crc32, Algorithm::Crc32c, Algorithm::Crc64Nvme, Algorithm::Sha1, Algorithm::Sha256];

/// The checksum values an input gives ([`checksum_values!`]), by algorithm.
pub(crate) fn given_values(values: [Option<&String>; 5]) -> Vec<(Algorithm, String)> {
    ALGORITHMS.into_iter().zip(values).filter_map(|(a, v)| v.map(|v| (a, v.clone()))).collect()
}

macro_rules! checksum_values {
    ($i:expr) => {
        [
            $i.checksum_crc32.as_ref(),
            $i.checksum_crc32c.as_ref(),
            $i.checksum_crc64nvme.as_ref(),
            $i.checksum_sha1.as_ref(),
            $i.checksum_sha256.as_ref(),
        ]
    };
}
pub(crate) use checksum_values;

/// An s3s output struct with its five checksum fields set from a [`ChecksumFields`]:
/// `with_checksums!(Part { part_number: n }, fields)`, optionally with `..Default::default()`.
macro_rules! with_checksums {
    ($ty:ident { $($field:ident: $value:expr),* $(,)? }, $fields:expr $(, ..$rest:expr)?) => {{
        let c: $crate::checksums::ChecksumFields = $fields;
        $ty {
            $($field: $value,)*
            checksum_crc32: c.crc32,
            checksum_crc32c: c.crc32c,
            checksum_crc64nvme: c.crc64nvme,
            checksum_sha1: c.sha1,
            checksum_sha256: c.sha256,
            $(..$rest)?
        }
    }};
}
pub(crate) use with_checksums;
