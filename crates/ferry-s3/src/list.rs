//! Listings: ListObjects (v1, v2), ListObjectVersions, ListMultipartUploads.
//!
//! All of them are the same walk over a key range in S3 order (bytewise): items under `prefix`,
//! starting after a marker, with keys that contain the delimiter after the prefix rolled up into
//! common prefixes (one entry each, and the scan skips past the rest of the prefix at once), up
//! to `max` entries. [`walk`] does that once for any kind of item; each operation supplies how
//! to fetch a page from a given position.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ferry_store::meta::VersionCursor;
use ferry_store::model::{ListEntry, UploadRecord};
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

use crate::FerryS3;
use crate::dto::{etag, owner_dto, prefix_end, ts, url_encode};
use crate::error::StoreResultExt;
use crate::perm::Perm;

/// Default and largest page size.
const MAX_PAGE: usize = 1000;

/// Something listed, with its key.
pub(crate) trait Keyed: Clone {
    fn key(&self) -> &str;
}

impl Keyed for ListEntry {
    fn key(&self) -> &str {
        &self.key
    }
}

impl Keyed for UploadRecord {
    fn key(&self) -> &str {
        &self.key
    }
}

/// Where the next page starts.
pub(crate) enum Pos<T> {
    /// At the operation's starting marker.
    Start,
    /// Strictly after this item.
    After(T),
    /// At this key or later (used to skip past a common prefix).
    From(Vec<u8>),
}

/// The result of a walk.
pub(crate) struct Walk<T> {
    pub items: Vec<T>,
    pub prefixes: Vec<String>,
    pub truncated: bool,
    /// The last thing returned: an item, or a common prefix.
    pub last: Option<Last<T>>,
}

pub(crate) enum Last<T> {
    Item(T),
    Prefix(String),
}

/// The common prefix `key` rolls up into, if the delimiter occurs after `prefix`.
fn common_prefix(key: &str, prefix: &str, delimiter: Option<&str>) -> Option<String> {
    let d = delimiter.filter(|d| !d.is_empty())?;
    let rest = key.get(prefix.len()..)?;
    rest.find(d).map(|i| key[..prefix.len() + i + d.len()].to_owned())
}

/// Walks a listing: see the module doc. `fetch(pos, limit)` returns up to `limit` items from
/// `pos` in order, within the prefix.
pub(crate) async fn walk<T, F, Fut>(prefix: &str, delimiter: Option<&str>, max: usize, mut fetch: F) -> S3Result<Walk<T>>
where
    T: Keyed,
    F: FnMut(Pos<T>, usize) -> Fut,
    Fut: std::future::Future<Output = S3Result<Vec<T>>>,
{
    let mut out = Walk { items: Vec::new(), prefixes: Vec::new(), truncated: false, last: None };
    if max == 0 {
        return Ok(out);
    }
    let mut count = 0;
    let mut pos = Pos::Start;
    'pages: loop {
        let want = (max - count).min(MAX_PAGE) + 1;
        let batch = fetch(pos, want).await?;
        let got = batch.len();
        let mut last_item: Option<T> = None;
        for item in batch {
            if count == max {
                out.truncated = true;
                break 'pages;
            }
            if let Some(cp) = common_prefix(item.key(), prefix, delimiter) {
                out.prefixes.push(cp.clone());
                count += 1;
                out.last = Some(Last::Prefix(cp.clone()));
                match prefix_end(cp.as_bytes()) {
                    Some(next) => {
                        pos = Pos::From(next);
                        continue 'pages;
                    }
                    None => break 'pages,
                }
            }
            out.items.push(item.clone());
            out.last = Some(Last::Item(item.clone()));
            last_item = Some(item);
            count += 1;
        }
        match last_item {
            Some(item) if got >= want => pos = Pos::After(item),
            _ => break,
        }
    }
    Ok(out)
}

/// `allow-unordered=true` (an RGW extension) cannot be combined with a delimiter.
fn check_unordered(uri: &http::Uri, delimiter: Option<&str>) -> S3Result<()> {
    let unordered = uri.query().is_some_and(|q| q.split('&').any(|p| p.eq_ignore_ascii_case("allow-unordered=true")));
    if unordered && delimiter.is_some_and(|d| !d.is_empty()) {
        return Err(s3_error!(InvalidArgument, "allow-unordered cannot be used with a delimiter"));
    }
    Ok(())
}

fn page_size(max_keys: Option<i32>) -> S3Result<usize> {
    match max_keys {
        None => Ok(MAX_PAGE),
        Some(n) if n < 0 => Err(s3_error!(InvalidArgument, "max-keys must be a non-negative integer")),
        Some(n) => Ok(usize::try_from(n).unwrap_or(MAX_PAGE).min(MAX_PAGE)),
    }
}

fn wants_url(e: Option<&EncodingType>) -> S3Result<bool> {
    match e.map(EncodingType::as_str) {
        None => Ok(false),
        Some(s) if s.eq_ignore_ascii_case("url") => Ok(true),
        Some(_) => Err(s3_error!(InvalidArgument, "Invalid Encoding Method specified in Request")),
    }
}

/// The first key to list: after `start_after`, within `prefix`. If `start_after` is itself a
/// common prefix (it ends with the delimiter), everything under it is skipped.
fn start_bound(prefix: &str, start_after: &str, delimiter: Option<&str>) -> (Vec<u8>, bool) {
    if start_after.as_bytes() < prefix.as_bytes() {
        return (prefix.as_bytes().to_vec(), false);
    }
    if let Some(d) = delimiter.filter(|d| !d.is_empty())
        && start_after.ends_with(d)
        && start_after.len() > prefix.len()
        && let Some(end) = prefix_end(start_after.as_bytes())
    {
        return (end, false);
    }
    (start_after.as_bytes().to_vec(), true)
}

fn object_dto(e: &ListEntry, with_owner: bool, url: bool) -> Object {
    Object {
        key: Some(if url { url_encode(&e.key) } else { e.key.clone() }),
        e_tag: Some(etag(&e.etag)),
        last_modified: Some(ts(e.mtime_us)),
        size: i64::try_from(e.size).ok(),
        storage_class: Some(ObjectStorageClass::from(e.storage_class.clone().unwrap_or_else(|| "STANDARD".to_owned()))),
        owner: with_owner.then(|| owner_dto(&e.owner)),
        checksum_algorithm: (!e.checksum_algorithms.is_empty())
            .then(|| e.checksum_algorithms.iter().map(|a| ChecksumAlgorithm::from(a.name().to_owned())).collect()),
        ..Default::default()
    }
}

impl FerryS3 {
    /// Current objects under `prefix` after `start_after`.
    async fn walk_objects(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        start_after: &str,
        max: usize,
    ) -> S3Result<Walk<ListEntry>> {
        let (start, start_exclusive) = start_bound(prefix, start_after, delimiter);
        let end = prefix_end(prefix.as_bytes());
        walk(prefix, delimiter, max, |pos: Pos<ListEntry>, limit| {
            let (from, exclusive) = match pos {
                Pos::Start => (start.clone(), start_exclusive),
                Pos::After(e) => (e.key.into_bytes(), true),
                Pos::From(k) => (k, false),
            };
            let (b, end) = (bucket.to_owned(), end.clone());
            async move { self.store.meta.read(move |r| r.scan_latest(&b, &from, exclusive, end.as_deref(), limit)).await.s3() }
        })
        .await
    }

    pub(crate) async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
        self.bucket_for(&req, &req.input.bucket, Perm::Read).await?;
        check_unordered(&req.uri, req.input.delimiter.as_deref())?;
        let mut i = req.input;
        i.delimiter = i.delimiter.filter(|d| !d.is_empty());
        let url = wants_url(i.encoding_type.as_ref())?;
        let max = page_size(i.max_keys)?;
        let prefix = i.prefix.clone().unwrap_or_default();
        let marker = i.marker.clone().unwrap_or_default();
        let w = self.walk_objects(&i.bucket, &prefix, i.delimiter.as_deref(), &marker, max).await?;
        let enc = |s: String| if url { url_encode(&s) } else { s };
        let next_marker = match (&w.last, w.truncated && i.delimiter.is_some()) {
            (Some(Last::Item(e)), true) => Some(enc(e.key.clone())),
            (Some(Last::Prefix(p)), true) => Some(enc(p.clone())),
            _ => None,
        };
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(i.bucket),
            // Not encoded in v1: clients (botocore) do not decode it there.
            prefix: Some(prefix),
            marker: Some(enc(marker)),
            max_keys: i32::try_from(max).ok(),
            is_truncated: Some(w.truncated),
            contents: Some(w.items.iter().map(|e| object_dto(e, true, url)).collect()),
            common_prefixes: Some(w.prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(enc(p)) }).collect()),
            delimiter: i.delimiter.map(enc),
            next_marker,
            encoding_type: i.encoding_type,
            ..Default::default()
        }))
    }

    pub(crate) async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.bucket_for(&req, &req.input.bucket, Perm::Read).await?;
        check_unordered(&req.uri, req.input.delimiter.as_deref())?;
        let mut i = req.input;
        i.delimiter = i.delimiter.filter(|d| !d.is_empty());
        let url = wants_url(i.encoding_type.as_ref())?;
        let max = page_size(i.max_keys)?;
        let prefix = i.prefix.clone().unwrap_or_default();
        let start = match i.continuation_token.as_ref().filter(|t| !t.is_empty()) {
            Some(t) => decode_token(t)?,
            None => i.start_after.clone().unwrap_or_default(),
        };
        let w = self.walk_objects(&i.bucket, &prefix, i.delimiter.as_deref(), &start, max).await?;
        let enc = |s: String| if url { url_encode(&s) } else { s };
        let next = match (&w.last, w.truncated) {
            (Some(Last::Item(e)), true) => Some(encode_token(&e.key)),
            (Some(Last::Prefix(p)), true) => Some(encode_token(p)),
            _ => None,
        };
        let with_owner = i.fetch_owner == Some(true);
        let key_count = w.items.len() + w.prefixes.len();
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(i.bucket),
            prefix: Some(enc(prefix)),
            max_keys: i32::try_from(max).ok(),
            key_count: i32::try_from(key_count).ok(),
            continuation_token: i.continuation_token,
            is_truncated: Some(w.truncated),
            next_continuation_token: next,
            contents: Some(w.items.iter().map(|e| object_dto(e, with_owner, url)).collect()),
            common_prefixes: Some(w.prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(enc(p)) }).collect()),
            delimiter: i.delimiter.map(enc),
            encoding_type: i.encoding_type,
            start_after: i.start_after.map(enc),
            ..Default::default()
        }))
    }

    pub(crate) async fn list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        self.bucket_for(&req, &req.input.bucket, Perm::Read).await?;
        let mut i = req.input;
        i.delimiter = i.delimiter.filter(|d| !d.is_empty());
        let url = wants_url(i.encoding_type.as_ref())?;
        let max = page_size(i.max_keys)?;
        let prefix = i.prefix.clone().unwrap_or_default();
        let key_marker = i.key_marker.clone().filter(|k| !k.is_empty());
        let vid_marker = i.version_id_marker.clone().filter(|v| !v.is_empty());
        if vid_marker.is_some() && key_marker.is_none() {
            return Err(s3_error!(
                InvalidArgument,
                "A version-id marker cannot be specified without a key marker."
            ));
        }
        let bucket = i.bucket.clone();
        // Resolve the version-id marker to its position in the key's history.
        // Where the first page starts: a cursor inside or after the marker key, or (when the
        // marker is a common prefix, or sorts before the prefix) a plain lower bound.
        let (start_cursor, start_from): (VersionCursor, Option<Vec<u8>>) = match (&key_marker, &vid_marker) {
            (Some(k), Some(v)) => {
                let (b, k2, v2) = (bucket.clone(), k.clone(), v.clone());
                let marker = self.store.meta.read(move |r| r.get_version(&b, &k2, &v2)).await.s3()?;
                match marker {
                    Some(m) => (
                        VersionCursor { after_key: Some(k.clone()), after_version: Some((m.mtime_us, m.version_id)) },
                        None,
                    ),
                    // The marker version is gone (deleted between pages, as clients emptying a
                    // bucket do): start again at the marker key, so nothing after it is missed.
                    None => (VersionCursor::default(), Some(k.as_bytes().to_vec())),
                }
            }
            (Some(k), None) => match start_bound(&prefix, k, i.delimiter.as_deref()) {
                (from, true) => (
                    VersionCursor { after_key: Some(String::from_utf8_lossy(&from).into_owned()), after_version: None },
                    None,
                ),
                (from, false) => (VersionCursor::default(), Some(from)),
            },
            _ => (VersionCursor::default(), None),
        };
        let end = prefix_end(prefix.as_bytes());
        let w = walk(&prefix, i.delimiter.as_deref(), max, |pos: Pos<ListEntry>, limit| {
            let (from, cursor) = match pos {
                Pos::Start => (start_from.clone().unwrap_or_else(|| prefix.as_bytes().to_vec()), start_cursor.clone()),
                Pos::After(e) => (
                    prefix.as_bytes().to_vec(),
                    VersionCursor { after_key: Some(e.key), after_version: Some((e.mtime_us, e.version_id)) },
                ),
                Pos::From(k) => (k, VersionCursor::default()),
            };
            let (b, end) = (bucket.clone(), end.clone());
            async move { self.store.meta.read(move |r| r.scan_versions(&b, &from, &cursor, end.as_deref(), limit)).await.s3() }
        })
        .await?;
        let enc = |s: String| if url { url_encode(&s) } else { s };
        let (next_key, next_vid) = match (&w.last, w.truncated) {
            (Some(Last::Item(e)), true) => (Some(enc(e.key.clone())), Some(e.version_id.clone())),
            (Some(Last::Prefix(p)), true) => (Some(enc(p.clone())), None),
            _ => (None, None),
        };
        let mut versions = Vec::new();
        let mut markers = Vec::new();
        for e in &w.items {
            let key = Some(enc(e.key.clone()));
            if e.delete_marker {
                markers.push(DeleteMarkerEntry {
                    is_latest: Some(e.is_latest),
                    key,
                    last_modified: Some(ts(e.mtime_us)),
                    owner: Some(owner_dto(&e.owner)),
                    version_id: Some(e.version_id.clone()),
                });
            } else {
                versions.push(ObjectVersion {
                    e_tag: Some(etag(&e.etag)),
                    is_latest: Some(e.is_latest),
                    key,
                    last_modified: Some(ts(e.mtime_us)),
                    owner: Some(owner_dto(&e.owner)),
                    size: i64::try_from(e.size).ok(),
                    storage_class: Some(ObjectVersionStorageClass::from(
                        e.storage_class.clone().unwrap_or_else(|| "STANDARD".to_owned()),
                    )),
                    version_id: Some(e.version_id.clone()),
                    checksum_algorithm: (!e.checksum_algorithms.is_empty())
                        .then(|| e.checksum_algorithms.iter().map(|a| ChecksumAlgorithm::from(a.name().to_owned())).collect()),
                    ..Default::default()
                });
            }
        }
        Ok(S3Response::new(ListObjectVersionsOutput {
            name: Some(i.bucket),
            prefix: Some(enc(prefix)),
            key_marker: Some(enc(i.key_marker.unwrap_or_default())),
            version_id_marker: Some(i.version_id_marker.unwrap_or_default()),
            max_keys: i32::try_from(max).ok(),
            is_truncated: Some(w.truncated),
            next_key_marker: next_key,
            next_version_id_marker: next_vid,
            versions: Some(versions),
            delete_markers: Some(markers),
            common_prefixes: Some(w.prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(enc(p)) }).collect()),
            delimiter: i.delimiter.map(enc),
            encoding_type: i.encoding_type,
            ..Default::default()
        }))
    }

    pub(crate) async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        self.bucket_for(&req, &req.input.bucket, Perm::Read).await?;
        let mut i = req.input;
        i.delimiter = i.delimiter.filter(|d| !d.is_empty());
        let url = wants_url(i.encoding_type.as_ref())?;
        let max = page_size(i.max_uploads)?;
        let prefix = i.prefix.clone().unwrap_or_default();
        let key_marker = i.key_marker.clone().unwrap_or_default();
        let upload_marker = i.upload_id_marker.clone().filter(|_| !key_marker.is_empty());
        let end = prefix_end(prefix.as_bytes());
        let bucket = i.bucket.clone();
        let w = walk(&prefix, i.delimiter.as_deref(), max, |pos: Pos<UploadRecord>, limit| {
            let (from, after): (Vec<u8>, Option<(String, Option<String>)>) = match pos {
                Pos::Start if key_marker.is_empty() => (prefix.as_bytes().to_vec(), None),
                Pos::Start => (prefix.as_bytes().to_vec(), Some((key_marker.clone(), upload_marker.clone()))),
                Pos::After(u) => (prefix.as_bytes().to_vec(), Some((u.key, Some(u.upload_id)))),
                Pos::From(k) => (k, None),
            };
            let (b, end) = (bucket.clone(), end.clone());
            async move {
                self.store
                    .meta
                    .read(move |r| {
                        let after = after.as_ref().map(|(k, u)| (k.as_str(), u.as_deref()));
                        r.scan_uploads(&b, &from, after, end.as_deref(), limit)
                    })
                    .await
                    .s3()
            }
        })
        .await?;
        let enc = |s: String| if url { url_encode(&s) } else { s };
        let (next_key, next_upload) = match (&w.last, w.truncated) {
            (Some(Last::Item(u)), true) => (Some(enc(u.key.clone())), Some(u.upload_id.clone())),
            (Some(Last::Prefix(p)), true) => (Some(enc(p.clone())), None),
            _ => (None, None),
        };
        let uploads = w
            .items
            .iter()
            .map(|u| MultipartUpload {
                key: Some(enc(u.key.clone())),
                upload_id: Some(u.upload_id.clone()),
                initiated: Some(ts(u.initiated_us)),
                initiator: Some(Initiator { id: Some(u.owner.id.clone()), display_name: Some(u.owner.display_name.clone()) }),
                owner: Some(owner_dto(&u.owner)),
                storage_class: Some(StorageClass::from(u.storage_class.clone().unwrap_or_else(|| "STANDARD".to_owned()))),
                checksum_algorithm: u.checksum_algorithm.map(|a| ChecksumAlgorithm::from(a.name().to_owned())),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(i.bucket),
            prefix: Some(enc(prefix)),
            key_marker: Some(enc(key_marker)),
            upload_id_marker: Some(i.upload_id_marker.unwrap_or_default()),
            max_uploads: i32::try_from(max).ok(),
            is_truncated: Some(w.truncated),
            next_key_marker: next_key,
            next_upload_id_marker: next_upload,
            uploads: Some(uploads),
            common_prefixes: Some(w.prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(enc(p)) }).collect()),
            delimiter: i.delimiter.map(enc),
            encoding_type: i.encoding_type,
            ..Default::default()
        }))
    }
}

/// Continuation tokens are the base64 of the last key or prefix returned, behind a format byte.
fn encode_token(key: &str) -> String {
    B64.encode([b"1".as_slice(), key.as_bytes()].concat())
}

fn decode_token(t: &str) -> S3Result<String> {
    let raw = B64.decode(t).map_err(|_| s3_error!(InvalidArgument, "The continuation token provided is incorrect"))?;
    match raw.split_first() {
        Some((b'1', rest)) => String::from_utf8(rest.to_vec())
            .map_err(|_| s3_error!(InvalidArgument, "The continuation token provided is incorrect")),
        _ => Err(s3_error!(InvalidArgument, "The continuation token provided is incorrect")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefixes() {
        assert_eq!(common_prefix("a/b/c", "", Some("/")).as_deref(), Some("a/"));
        assert_eq!(common_prefix("a/b/c", "a/", Some("/")).as_deref(), Some("a/b/"));
        assert_eq!(common_prefix("a/b", "a/", Some("/")), None);
        assert_eq!(common_prefix("abcxd", "ab", Some("x")).as_deref(), Some("abcx"));
        assert_eq!(common_prefix("a/b", "", None), None);
    }

    #[test]
    fn tokens_roundtrip() {
        assert_eq!(decode_token(&encode_token("ключ/β")).unwrap(), "ключ/β");
        assert!(decode_token("!!").is_err());
    }

    #[derive(Clone, Debug, PartialEq)]
    struct K(String);
    impl Keyed for K {
        fn key(&self) -> &str {
            &self.0
        }
    }

    async fn run(keys: &[&str], prefix: &str, delim: Option<&str>, max: usize) -> (Vec<String>, Vec<String>, bool) {
        let all: Vec<K> = keys.iter().map(|k| K((*k).to_owned())).collect();
        let w = walk(prefix, delim, max, |pos: Pos<K>, limit| {
            let items: Vec<K> = all
                .iter()
                .filter(|k| k.0.starts_with(prefix))
                .filter(|k| match &pos {
                    Pos::Start => true,
                    Pos::After(a) => k.0 > a.0,
                    Pos::From(f) => k.0.as_bytes() >= f.as_slice(),
                })
                .take(limit)
                .cloned()
                .collect();
            async move { Ok(items) }
        })
        .await
        .unwrap();
        (w.items.into_iter().map(|k| k.0).collect(), w.prefixes, w.truncated)
    }

    #[tokio::test]
    async fn walk_rolls_up_and_truncates() {
        let keys = ["a", "b/1", "b/2", "c/x/1", "d"];
        assert_eq!(
            run(&keys, "", Some("/"), 10).await,
            (vec!["a".into(), "d".into()], vec!["b/".into(), "c/".into()], false)
        );
        assert_eq!(run(&keys, "", Some("/"), 2).await, (vec!["a".into()], vec!["b/".into()], true));
        assert_eq!(
            run(&keys, "", Some("/"), 4).await,
            (vec!["a".into(), "d".into()], vec!["b/".into(), "c/".into()], false)
        );
        assert!(run(&keys, "", None, 3).await.2);
        assert!(!run(&keys, "", None, 5).await.2);
        assert_eq!(run(&keys, "c/", Some("/"), 10).await, (vec![], vec!["c/x/".into()], false));
        assert_eq!(run(&keys, "", Some("/"), 0).await, (vec![], vec![], false));
    }
}
