//! Conversions between store records and s3s DTOs, request validation (keys, metadata, tags),
//! and the attributes and conditions of a write taken from its request.

use std::collections::BTreeMap;

use ferry_core::time::micros_to_datetime;
use ferry_store::model::Owner;
use ferry_store::objects::WriteConditions;
use s3s::dto::{ETag, ETagCondition, Timestamp, TimestampFormat};
use s3s::{S3Error, S3ErrorCode, S3Request, S3Result, s3_error};

use crate::error::internal;

/// The raw value of a header that s3s does not model for an operation.
pub fn raw_header<'a, T>(req: &'a S3Request<T>, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Longest object key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// Largest total size of user metadata (keys + values), in bytes.
pub const MAX_METADATA_SIZE: usize = 2048;
/// Largest single PUT (5 GiB).
pub const MAX_PUT_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// Most tags on an object.
pub const MAX_OBJECT_TAGS: usize = 10;

/// Microseconds since the epoch → s3s timestamp.
pub fn ts(us: i64) -> Timestamp {
    Timestamp::from(micros_to_datetime(us))
}

/// Microseconds → whole seconds (the precision of HTTP dates).
pub fn secs(us: i64) -> i64 {
    us.div_euclid(1_000_000)
}

/// s3s timestamp → whole seconds since the epoch.
pub fn ts_secs(t: &Timestamp) -> i64 {
    time::OffsetDateTime::from(t.clone()).unix_timestamp()
}

/// A stored ETag (no quotes) → s3s ETag.
pub fn etag(s: &str) -> ETag {
    ETag::Strong(s.to_owned())
}

/// A store owner → s3s owner.
pub fn owner_dto(o: &Owner) -> s3s::dto::Owner {
    s3s::dto::Owner { display_name: Some(o.display_name.clone()), id: Some(o.id.clone()) }
}

/// Validates an object key.
pub fn check_key(key: &str) -> S3Result<()> {
    if key.is_empty() {
        return Err(s3_error!(InvalidArgument, "The object key must not be empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(s3_error!(KeyTooLongError, "Your key is too long"));
    }
    Ok(())
}

/// Validates user metadata and normalizes keys to lowercase.
pub fn user_metadata(meta: Option<s3s::dto::Metadata>) -> S3Result<BTreeMap<String, String>> {
    let meta: BTreeMap<String, String> = meta.unwrap_or_default().into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
    let size: usize = meta.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_METADATA_SIZE {
        return Err(s3_error!(
            MetadataTooLarge,
            "Your metadata headers exceed the maximum allowed metadata size"
        ));
    }
    Ok(meta)
}

/// Parses and validates a tag set given as a URL-encoded query string (`x-amz-tagging`).
pub fn parse_tagging_header(s: &str) -> S3Result<Vec<(String, String)>> {
    let mut tags = Vec::new();
    for pair in s.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |x: &str| {
            percent_encoding::percent_decode_str(&x.replace('+', " "))
                .decode_utf8()
                .map(std::borrow::Cow::into_owned)
                .map_err(|_| s3_error!(InvalidArgument, "The tagging header is not valid UTF-8"))
        };
        tags.push((dec(k)?, dec(v)?));
    }
    validate_tags(&tags, MAX_OBJECT_TAGS)?;
    tags.sort();
    Ok(tags)
}

/// Validates a tag set: count, lengths, unique keys.
pub fn validate_tags(tags: &[(String, String)], max: usize) -> S3Result<()> {
    if tags.len() > max {
        return Err(s3_error!(InvalidTag, "Object tags cannot be greater than {max}"));
    }
    let mut seen = std::collections::HashSet::new();
    for (k, v) in tags {
        if k.is_empty() || k.chars().count() > 128 {
            return Err(s3_error!(InvalidTag, "The TagKey you have provided is invalid"));
        }
        if v.chars().count() > 256 {
            return Err(s3_error!(InvalidTag, "The TagValue you have provided is invalid"));
        }
        if !seen.insert(k) {
            return Err(s3_error!(InvalidTag, "Cannot provide multiple Tags with the same key"));
        }
    }
    Ok(())
}

/// The s3s tag list → (key, value) pairs, sorted by key (tags are a set; stored sorted).
pub fn tags_from_dto(set: Vec<s3s::dto::Tag>) -> Vec<(String, String)> {
    let mut tags: Vec<_> = set.into_iter().map(|t| (t.key.unwrap_or_default(), t.value.unwrap_or_default())).collect();
    tags.sort();
    tags
}

/// (key, value) pairs → s3s tag list.
pub fn tags_to_dto(tags: &[(String, String)]) -> Vec<s3s::dto::Tag> {
    tags.iter().map(|(k, v)| s3s::dto::Tag { key: Some(k.clone()), value: Some(v.clone()) }).collect()
}

/// Everything but URLs' unreserved characters.
const RESERVED: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// URL-encodes a key or prefix for `encoding-type=url` listings (everything but unreserved
/// characters and `/`).
pub fn url_encode(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &RESERVED.remove(b'/');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

/// URL-encodes a query parameter's value (everything but unreserved characters).
pub(crate) fn query_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, RESERVED).to_string()
}

pub use ferry_store::meta::prefix_end;

/// An S3 error with a custom code and HTTP status.
pub fn custom_error(code: &str, status: http::StatusCode, msg: &str) -> S3Error {
    let mut e = S3Error::with_message(S3ErrorCode::Custom(code.to_owned().into()), msg.to_owned());
    e.set_status_code(status);
    e
}

/// `Expires` as stored (HTTP date text).
pub(crate) fn http_date(t: &Timestamp) -> S3Result<String> {
    let mut buf = Vec::new();
    t.format(TimestampFormat::HttpDate, &mut buf).map_err(internal)?;
    String::from_utf8(buf).map_err(internal)
}

/// The conditions of a write (`If-Match` / `If-None-Match`; `*` for any).
pub(crate) fn write_conditions(if_match: Option<&ETagCondition>, if_none_match: Option<&ETagCondition>) -> WriteConditions {
    WriteConditions { if_match: if_match.map(condition_text), if_none_match: if_none_match.map(condition_text) }
}

/// An `If-Match` / `If-None-Match` condition as text (`*` for any).
pub(crate) fn condition_text(c: &ETagCondition) -> String {
    c.as_etag().map_or_else(|| "*".to_owned(), |e| e.value().to_owned())
}

/// `Content-Encoding` as stored: without `aws-chunked`, which only says how the request body
/// was sent (S3 drops it too); `None` when nothing else is left. Otherwise kept as given.
pub(crate) fn stored_content_encoding(v: Option<&str>) -> Option<String> {
    let v = v?;
    let chunked = |t: &str| t.trim().eq_ignore_ascii_case("aws-chunked");
    if !v.split(',').any(chunked) {
        return Some(v.to_owned());
    }
    let kept: Vec<&str> = v.split(',').filter(|t| !chunked(t)).map(str::trim).filter(|t| !t.is_empty()).collect();
    (!kept.is_empty()).then(|| kept.join(", "))
}

/// The object attributes a write request gives (content headers, `Expires`, user metadata),
/// with the caller's tags and ACL; checksums are filled in once the body is read.
macro_rules! request_attrs {
    ($i:expr, $tags:expr, $acl:expr) => {
        ferry_store::model::ObjectAttrs {
            content_type: Some($i.content_type.clone().unwrap_or_else(|| "binary/octet-stream".to_owned())),
            content_encoding: $crate::dto::stored_content_encoding($i.content_encoding.as_deref()),
            content_disposition: $i.content_disposition.clone(),
            content_language: $i.content_language.clone(),
            cache_control: $i.cache_control.clone(),
            expires: $i.expires.as_ref().map($crate::dto::http_date).transpose()?,
            website_redirect: $i.website_redirect_location.clone(),
            user_metadata: $crate::dto::user_metadata($i.metadata.clone())?,
            checksums: ferry_store::model::Checksums::default(),
            tags: $tags,
            acl: $acl,
            ..ferry_store::model::ObjectAttrs::default()
        }
    };
}
pub(crate) use request_attrs;

/// `s` as XML text (or an attribute value).
pub(crate) fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_chunked_is_not_stored_as_a_content_encoding() {
        for (given, stored) in [
            (Some("gzip"), Some("gzip")),
            (Some("deflate,gzip"), Some("deflate,gzip")),
            (Some("gzip, aws-chunked"), Some("gzip")),
            (Some("aws-chunked, gzip"), Some("gzip")),
            (Some("AWS-Chunked"), None),
            (Some("aws-chunked, deflate ,gzip"), Some("deflate, gzip")),
            (None, None),
        ] {
            assert_eq!(stored_content_encoding(given).as_deref(), stored, "{given:?}");
        }
    }

    #[test]
    fn prefix_end_cases() {
        assert_eq!(prefix_end(b"abc"), Some(b"abd".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b""), None);
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }

    #[test]
    fn tagging_header() {
        let t = parse_tagging_header("a=1&b%20c=x+y&empty=").unwrap();
        assert_eq!(
            t,
            vec![("a".into(), "1".into()), ("b c".into(), "x y".into()), ("empty".into(), String::new())]
        );
        assert!(parse_tagging_header("a=1&a=2").is_err());
        assert_eq!(parse_tagging_header("z=1&a=2").unwrap()[0].0, "a", "sorted by key");
        let many: Vec<String> = (0..11).map(|i| format!("k{i}=v")).collect();
        assert!(parse_tagging_header(&many.join("&")).is_err());
    }

    #[test]
    fn url_encoding() {
        assert_eq!(url_encode("a b/c+d%"), "a%20b/c%2Bd%25");
    }

    #[test]
    fn metadata_limit() {
        let mut m = s3s::dto::Metadata::new();
        m.insert("K".into(), "v".repeat(2000));
        assert_eq!(user_metadata(Some(m.clone())).unwrap().keys().next().map(String::as_str), Some("k"));
        m.insert("k2".into(), "v".repeat(100));
        assert!(user_metadata(Some(m)).is_err());
    }
}
