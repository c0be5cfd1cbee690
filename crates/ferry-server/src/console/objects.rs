//! The object browser: one page of a bucket's objects under a prefix, upload, download,
//! delete, and a key's versions with their replication status.
//!
//! - Listing is one ListObjectsV2 page (`/` as delimiter, 100 keys, its continuation token)
//!   sent as the signed-in account: a bucket of a million objects opens as fast as one of ten,
//!   and no listing is ever held whole.
//! - Upload streams the browser's request body to S3 as the account: a body up to [`PART`]
//!   is one PutObject; a longer one becomes a multipart upload of [`PART`]-sized parts, so a
//!   console upload holds at most one part in memory whatever the file's size. A failed
//!   multipart upload is aborted.
//! - Download streams GetObject's body to the browser.
//! - The versions of a key come from ListObjectVersions as the account; their replication
//!   status (and, for the bucket's owner, why a version FAILED) is read from the region's
//!   store in one snapshot.

use std::sync::Arc;

use askama::Template;
use axum::body::Body;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use bytes::{Bytes, BytesMut};
use ferry_store::model::ReplStatus;
use futures::StreamExt as _;
use serde::Deserialize;

use super::{Console, enc, human, message, no_such_bucket, page, s3_error, to_sign_in};

/// Objects listed per page.
const OBJECTS_PAGE: i32 = 100;
/// Versions of a key listed per page.
const VERSIONS_PAGE: i32 = 100;
/// Upload part size (and the largest body sent as one PutObject).
pub const PART: usize = 8 * 1024 * 1024;
/// Parts of one upload, at most (S3's limit): a console upload holds up to 78 GiB.
const MAX_PARTS: i32 = 10_000;

/// How an upload is cut: part size, and most parts.
#[derive(Clone, Copy)]
struct Cut {
    part: usize,
    max_parts: i32,
}

const CUT: Cut = Cut { part: PART, max_parts: MAX_PARTS };

/// A folder (common prefix).
pub(super) struct FolderRow {
    pub(super) name: String,
    pub(super) prefix: String,
}

/// An object.
pub(super) struct ObjectRow {
    pub(super) name: String,
    pub(super) key: String,
    pub(super) size: String,
    pub(super) modified: String,
}

/// The listing part of a bucket page.
pub(super) struct Listing {
    /// The prefix shown, and the prefixes above it as (label, prefix) links.
    pub(super) prefix: String,
    pub(super) crumbs: Vec<(String, String)>,
    pub(super) folders: Vec<FolderRow>,
    pub(super) objects: Vec<ObjectRow>,
    /// The next page's continuation token, when there is one.
    pub(super) next: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct ObjectsQuery {
    #[serde(default)]
    pub prefix: String,
    pub page: Option<String>,
}

/// One page of `bucket`'s objects under `q.prefix`, listed as the account, or the S3 error.
pub(super) async fn listing(client: &aws_sdk_s3::Client, bucket: &str, q: &ObjectsQuery) -> Result<Listing, String> {
    let out = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(&q.prefix)
        .delimiter("/")
        .max_keys(OBJECTS_PAGE)
        .set_continuation_token(q.page.clone())
        .send()
        .await
        .map_err(|e| s3_error(&e))?;
    let below = |full: &str| full.strip_prefix(q.prefix.as_str()).unwrap_or(full).to_owned();
    let folders = out
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .map(|p| FolderRow { name: below(p), prefix: p.to_owned() })
        .collect();
    let objects = out
        .contents()
        .iter()
        .map(|o| {
            let key = o.key().unwrap_or_default().to_owned();
            ObjectRow {
                name: below(&key),
                key,
                size: human(o.size().unwrap_or(0)),
                modified: o.last_modified().map(ToString::to_string).unwrap_or_default(),
            }
        })
        .collect();
    let next = out.next_continuation_token().filter(|_| out.is_truncated() == Some(true)).map(str::to_owned);
    let mut crumbs = Vec::new();
    let mut at = 0;
    for part in q.prefix.split_inclusive('/') {
        at += part.len();
        crumbs.push((part.to_owned(), q.prefix[..at].to_owned()));
    }
    Ok(Listing { prefix: q.prefix.clone(), crumbs, folders, objects, next })
}

#[derive(Deserialize)]
pub(super) struct KeyQuery {
    #[serde(default)]
    key: String,
    version: Option<String>,
}

/// Streams an object (or one version of it) to the browser as a download.
pub(super) async fn download(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path((region, name)): Path<(String, String)>,
    Query(q): Query<KeyQuery>,
) -> Response {
    let Some((_, s)) = c.session(&headers) else { return to_sign_in() };
    let Some(client) = c.region(&region).and_then(|r| c.s3_as(r, &s.access_key)) else {
        return no_such_bucket();
    };
    let got = client.get_object().bucket(&name).key(&q.key).set_version_id(q.version.clone()).send().await;
    let out = match got {
        Ok(o) => o,
        Err(e) => return message(StatusCode::BAD_REQUEST, "Not downloaded", &s3_error(&e)),
    };
    let file = q.key.rsplit('/').next().unwrap_or("download").replace(['"', '\\', '\r', '\n'], "_");
    let stream = tokio_util::io::ReaderStream::new(out.body.into_async_read());
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/octet-stream"));
    if let Ok(v) = header::HeaderValue::from_str(&format!("attachment; filename=\"{file}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Some(len) = out.content_length.and_then(|l| header::HeaderValue::from_str(&l.to_string()).ok()) {
        h.insert(header::CONTENT_LENGTH, len);
    }
    resp
}

#[derive(Deserialize)]
pub(super) struct DeleteForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    key: String,
    version: Option<String>,
}

/// Deletes an object (a delete marker on a versioned bucket) or one version of it.
pub(super) async fn delete(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path((region, name)): Path<(String, String)>,
    Form(f): Form<DeleteForm>,
) -> Response {
    let client = match super::acting_in(&c, &headers, &f.csrf, &region) {
        Ok(client) => client,
        Err(r) => return *r,
    };
    let version = f.version.filter(|v| !v.is_empty());
    let back = if version.is_some() {
        format!("/buckets/{}/{}/versions?key={}", enc(&region), enc(&name), enc(&f.key))
    } else {
        let parent = f.key.rfind('/').map_or("", |i| &f.key[..=i]);
        format!("/buckets/{}/{}/objects?prefix={}", enc(&region), enc(&name), enc(parent))
    };
    match client.delete_object().bucket(&name).key(&f.key).set_version_id(version).send().await {
        Ok(_) => Redirect::to(&back).into_response(),
        Err(e) => message(StatusCode::BAD_REQUEST, "Not deleted", &s3_error(&e)),
    }
}

#[derive(Deserialize)]
pub(super) struct UploadQuery {
    #[serde(default)]
    key: String,
}

/// The CSRF header of the console's script-sent requests.
pub const CSRF_HEADER: &str = "x-ferry-csrf";

/// Stores the request body as object `key`, as the account: one PutObject up to [`PART`],
/// a multipart upload beyond. Answers 201 with the version id, or the S3 error as text.
pub(super) async fn upload(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path((region, name)): Path<(String, String)>,
    Query(q): Query<UploadQuery>,
    body: Body,
) -> Response {
    let csrf = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    let client = match super::acting_in(&c, &headers, csrf, &region) {
        Ok(client) => client,
        Err(r) => return *r,
    };
    if q.key.is_empty() {
        return (StatusCode::BAD_REQUEST, "the object needs a name").into_response();
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    match store(&client, &name, &q.key, content_type, body, CUT).await {
        Ok(version) => (StatusCode::CREATED, version.unwrap_or_default()).into_response(),
        Err(why) => (StatusCode::BAD_REQUEST, why).into_response(),
    }
}

/// Reads `body` into `buf` until it holds `part` bytes or the body ends; true at the end.
async fn fill(stream: &mut axum::body::BodyDataStream, buf: &mut BytesMut, part: usize) -> Result<bool, String> {
    while buf.len() < part {
        match stream.next().await {
            Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
            Some(Err(e)) => return Err(format!("the upload was interrupted: {e}")),
            None => return Ok(true),
        }
    }
    Ok(false)
}

async fn store(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    content_type: Option<String>,
    body: Body,
    cut: Cut,
) -> Result<Option<String>, String> {
    use aws_sdk_s3::primitives::ByteStream;
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::with_capacity(cut.part);
    let ended = fill(&mut stream, &mut buf, cut.part).await?;
    if ended {
        let put = client.put_object().bucket(bucket).key(key).set_content_type(content_type);
        let out = put.body(ByteStream::from(buf.freeze())).send().await.map_err(|e| s3_error(&e))?;
        return Ok(out.version_id);
    }
    let created = client.create_multipart_upload().bucket(bucket).key(key).set_content_type(content_type).send().await;
    let upload_id = created.map_err(|e| s3_error(&e))?.upload_id.unwrap_or_default();
    let sent = parts(client, bucket, key, &upload_id, &mut stream, buf, cut).await;
    match sent {
        Ok(done) => {
            let completed = aws_sdk_s3::types::CompletedMultipartUpload::builder().set_parts(Some(done)).build();
            let out = client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(completed)
                .send()
                .await
                .map_err(|e| s3_error(&e))?;
            Ok(out.version_id)
        }
        Err(why) => {
            let _ = client.abort_multipart_upload().bucket(bucket).key(key).upload_id(&upload_id).send().await;
            Err(why)
        }
    }
}

/// Sends `first` and the rest of `stream` as parts.
async fn parts(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
    stream: &mut axum::body::BodyDataStream,
    first: BytesMut,
    cut: Cut,
) -> Result<Vec<aws_sdk_s3::types::CompletedPart>, String> {
    let mut done = Vec::new();
    let mut buf = first;
    let mut ended = false;
    for number in 1..=cut.max_parts {
        // Exactly `cut.part` bytes per part but the last.
        let rest = if buf.len() > cut.part { buf.split_off(cut.part) } else { BytesMut::new() };
        let part: Bytes = std::mem::replace(&mut buf, rest).freeze();
        if part.is_empty() && number > 1 {
            break;
        }
        let out = client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(part.into())
            .send()
            .await
            .map_err(|e| s3_error(&e))?;
        done.push(aws_sdk_s3::types::CompletedPart::builder().part_number(number).set_e_tag(out.e_tag).build());
        if ended && buf.is_empty() {
            break;
        }
        if !ended {
            ended = fill(stream, &mut buf, cut.part).await?;
            if ended && buf.is_empty() {
                break;
            }
        }
    }
    // 10,000 parts sent and bytes still coming: S3 takes no more parts, and completing would
    // store a truncated object.
    if !ended || !buf.is_empty() {
        return Err(format!("the file is larger than {} parts of {} MiB", cut.max_parts, cut.part >> 20));
    }
    Ok(done)
}

/// A version of a key.
struct VersionRow {
    version_id: String,
    latest: bool,
    delete_marker: bool,
    size: String,
    modified: String,
    /// PENDING, COMPLETED, FAILED, REPLICA, or empty when not replicated.
    status: &'static str,
    /// Why a FAILED (or retrying) version is not delivered, for the bucket's owner.
    reasons: Vec<String>,
}

#[derive(Template)]
#[template(path = "versions.html")]
struct VersionsPage {
    user: String,
    csrf: String,
    region: String,
    name: String,
    key: String,
    versions: Vec<VersionRow>,
    /// The next page's (key marker, version marker).
    next: Option<(String, String)>,
}

#[derive(Deserialize)]
pub(super) struct VersionsQuery {
    #[serde(default)]
    key: String,
    after: Option<String>,
}

/// The versions of a key, newest first, with their replication status.
pub(super) async fn versions(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path((region, name)): Path<(String, String)>,
    Query(q): Query<VersionsQuery>,
) -> Response {
    let Some((_, s)) = c.session(&headers) else { return to_sign_in() };
    let Some(r) = c.region(&region) else {
        return no_such_bucket();
    };
    let Some(client) = c.s3_as(r, &s.access_key) else { return to_sign_in() };
    let listed = client
        .list_object_versions()
        .bucket(&name)
        .prefix(&q.key)
        .max_keys(VERSIONS_PAGE)
        .set_key_marker(q.after.as_ref().map(|_| q.key.clone()))
        .set_version_id_marker(q.after.clone())
        .send()
        .await;
    let out = match listed {
        Ok(o) => o,
        Err(e) => return message(StatusCode::BAD_REQUEST, "Versions not listed", &s3_error(&e)),
    };
    // (version id, latest, delete marker, size, time); the SDK gives versions and delete
    // markers apart, each newest first: merged by time, newest first.
    type Row = (String, bool, bool, i64, Option<aws_sdk_s3::primitives::DateTime>);
    let mut rows: Vec<Row> = Vec::new();
    for v in out.versions().iter().filter(|v| v.key() == Some(q.key.as_str())) {
        let id = v.version_id().unwrap_or("null").to_owned();
        rows.push((id, v.is_latest() == Some(true), false, v.size().unwrap_or(0), v.last_modified().copied()));
    }
    for m in out.delete_markers().iter().filter(|m| m.key() == Some(q.key.as_str())) {
        rows.push((
            m.version_id().unwrap_or("null").to_owned(),
            m.is_latest() == Some(true),
            true,
            0,
            m.last_modified().copied(),
        ));
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.4.map(|t| (t.secs(), t.subsec_nanos()))));
    // Status and reasons from one snapshot; reasons only for the bucket's owner, as the admin
    // API gives them only to the owner.
    let owner = c.owner_id(&s.access_key).unwrap_or_default();
    let (bucket_name, key, ids) = (name.clone(), q.key.clone(), rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>());
    let read = r
        .store
        .meta
        .read(move |tx| {
            let is_owner = tx.get_bucket(&bucket_name)?.is_some_and(|b| b.owner.id == owner);
            let mut out = Vec::new();
            for id in &ids {
                let status = tx.get_version(&bucket_name, &key, id)?.and_then(|v| v.repl_status);
                let reasons = if is_owner && matches!(status, Some(ReplStatus::Failed | ReplStatus::Pending)) {
                    tx.jobs_for_version(&bucket_name, &key, id)?
                        .into_iter()
                        .filter_map(|j| j.last_error.clone().map(|e| format!("{}: {e} ({} attempts)", j.dest(), j.attempts)))
                        .collect()
                } else {
                    Vec::new()
                };
                out.push((status, reasons));
            }
            Ok(out)
        })
        .await;
    let states = read.unwrap_or_default();
    let next = (out.is_truncated() == Some(true) && out.next_key_marker() == Some(q.key.as_str()))
        .then(|| out.next_version_id_marker().map(|v| (q.key.clone(), v.to_owned())))
        .flatten();
    let versions = rows
        .into_iter()
        .enumerate()
        .map(|(i, (version_id, latest, delete_marker, size, time))| {
            let (status, reasons) = states.get(i).cloned().unwrap_or((None, Vec::new()));
            VersionRow {
                version_id,
                latest,
                delete_marker,
                size: if delete_marker { "delete marker".to_owned() } else { human(size) },
                modified: time.map(|t| t.to_string()).unwrap_or_default(),
                status: status.map_or("", ReplStatus::as_str),
                reasons,
            }
        })
        .collect();
    page(
        &VersionsPage { user: s.access_key, csrf: s.csrf, region, name, key: q.key, versions, next },
        StatusCode::OK,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upload that needs more parts than allowed is refused and aborted, never stored cut
    /// short; one that fits is stored whole. Against a real region.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upload_beyond_the_last_part_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let region = ferry_core::config::RegionConfig::single("127.0.0.1:0", dir.path().join("r"));
        let user = ferry_s3::User::new("AKIACONSOLETEST0", "console-test-secret", None, None);
        let opts = crate::server::ServerOptions::new(vec![region], vec![user]);
        let server = crate::server::Server::start(opts).await.unwrap();
        let r = &server.regions()[0];
        let settings = ferry_replication::client::ClientSettings {
            url: format!("http://{}", r.addr),
            access_key: "AKIACONSOLETEST0".into(),
            secret_key: "console-test-secret".into(),
            region: r.name.clone(),
            ca_pem: None,
        };
        let client = aws_sdk_s3::Client::from_conf(ferry_replication::client::config(&settings).unwrap().build());
        client.create_bucket().bucket("uploads").send().await.unwrap();
        let cut = Cut { part: 5 << 20, max_parts: 2 };
        let body = |n: usize| Body::from(vec![b'x'; n]);
        let fits = store(&client, "uploads", "fits", None, body((10 << 20) + 1), Cut { max_parts: 3, ..cut }).await;
        assert!(fits.is_ok(), "{fits:?}");
        let size = client.head_object().bucket("uploads").key("fits").send().await.unwrap().content_length;
        assert_eq!(size, Some((10 << 20) + 1));
        let refused = store(&client, "uploads", "too-big", None, body((10 << 20) + 1), cut).await;
        assert!(refused.unwrap_err().contains("larger than 2 parts"));
        assert!(
            client.head_object().bucket("uploads").key("too-big").send().await.is_err(),
            "nothing stored"
        );
        let uploads = client.list_multipart_uploads().bucket("uploads").send().await.unwrap();
        assert!(uploads.uploads().is_empty(), "the upload was aborted");
        server.shutdown().await;
    }
}
