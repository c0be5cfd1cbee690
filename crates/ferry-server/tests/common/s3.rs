//! S3 one-liners over an SDK client: unique bucket names, bucket creation with or without
//! versioning, put and get, the error code and HTTP status of an SDK error, and every version
//! of a bucket as a sorted list.

use aws_sdk_s3::Client;

/// A unique bucket name.
pub fn bucket_name(tag: &str) -> String {
    format!("{tag}-{}", &uuid_like()[..12])
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}{n:04x}", t % (1 << 40))
}

pub async fn create_bucket(c: &Client, name: &str) {
    c.create_bucket().bucket(name).send().await.expect("create bucket");
}

pub async fn create_versioned_bucket(c: &Client, name: &str) {
    create_bucket(c, name).await;
    enable_versioning(c, name).await;
}

/// Turns versioning on for an existing bucket.
pub async fn enable_versioning(c: &Client, name: &str) {
    c.put_bucket_versioning()
        .bucket(name)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .expect("enable versioning");
}

pub async fn put(c: &Client, bucket: &str, key: &str, body: &[u8]) -> aws_sdk_s3::operation::put_object::PutObjectOutput {
    c.put_object().bucket(bucket).key(key).body(body.to_vec().into()).send().await.expect("put")
}

pub async fn get_bytes(c: &Client, bucket: &str, key: &str) -> Vec<u8> {
    let out = c.get_object().bucket(bucket).key(key).send().await.expect("get");
    out.body.collect().await.expect("body").into_bytes().to_vec()
}

/// The S3 error code of an SDK error.
pub fn code<E, R>(e: &aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    match e {
        aws_sdk_s3::error::SdkError::ServiceError(s) => s.err().code().unwrap_or("").to_owned(),
        other => format!("not a service error: {other:?}"),
    }
}

/// The HTTP status of an SDK error.
pub fn status<E: std::fmt::Debug>(
    e: &aws_sdk_s3::error::SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
) -> u16 {
    match e {
        aws_sdk_s3::error::SdkError::ServiceError(s) => s.raw().status().as_u16(),
        other => panic!("not a service error: {other:?}"),
    }
}

pub fn md5_hex(data: &[u8]) -> String {
    use md5::Digest as _;
    hex::encode(md5::Md5::digest(data))
}
/// One version as listed, for comparisons.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listed {
    pub key: String,
    pub version_id: String,
    pub delete_marker: bool,
    pub is_latest: bool,
    pub etag: String,
    pub size: i64,
    pub last_modified: String,
    /// As listed (`STANDARD` when the listing gives none); empty for a delete marker.
    pub storage_class: String,
}

/// Every version and delete marker of a bucket.
pub async fn all_versions(c: &Client, bucket: &str) -> Vec<Listed> {
    let mut out = Vec::new();
    let (mut km, mut vm): (Option<String>, Option<String>) = (None, None);
    loop {
        let page = c
            .list_object_versions()
            .bucket(bucket)
            .set_key_marker(km.clone())
            .set_version_id_marker(vm.clone())
            .send()
            .await
            .expect("list versions");
        for v in page.versions() {
            out.push(Listed {
                key: v.key().unwrap_or_default().to_owned(),
                version_id: v.version_id().unwrap_or_default().to_owned(),
                delete_marker: false,
                is_latest: v.is_latest().unwrap_or(false),
                etag: v.e_tag().unwrap_or_default().to_owned(),
                size: v.size().unwrap_or(0),
                last_modified: v.last_modified().map(|t| t.to_string()).unwrap_or_default(),
                storage_class: v.storage_class().map_or("STANDARD", |c| c.as_str()).to_owned(),
            });
        }
        for d in page.delete_markers() {
            out.push(Listed {
                key: d.key().unwrap_or_default().to_owned(),
                version_id: d.version_id().unwrap_or_default().to_owned(),
                delete_marker: true,
                is_latest: d.is_latest().unwrap_or(false),
                etag: String::new(),
                size: 0,
                storage_class: String::new(),
                last_modified: d.last_modified().map(|t| t.to_string()).unwrap_or_default(),
            });
        }
        if page.is_truncated() != Some(true) {
            break;
        }
        km = page.next_key_marker().map(str::to_owned);
        vm = page.next_version_id_marker().map(str::to_owned);
    }
    out.sort();
    out
}
