//! Encryption at rest through aws-sdk-s3: SSE-S3, SSE-C and SSE-KMS on PUT, GET, HEAD, ranges,
//! multipart uploads and copies; bucket default encryption; what is on disk; and how encrypted
//! versions replicate.

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, ServerSideEncryption, ServerSideEncryptionByDefault,
    ServerSideEncryptionConfiguration, ServerSideEncryptionRule,
};
use base64::Engine as _;
use md5::Digest as _;

use crate::common::*;

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";

/// Writes a random master key file under `dir`; returns its path.
fn key_file(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let key: [u8; 32] = rand::random();
    let path = dir.join(name);
    std::fs::write(&path, hex::encode(key)).unwrap();
    path
}

/// Gives each region a master key of its own, and a KMS key `k1` (its default).
fn with_keys(opts: &mut ferry_server::server::ServerOptions, dir: &std::path::Path) {
    for r in &mut opts.regions {
        r.encryption.master_key_file = Some(key_file(dir, &format!("{}.master", r.name)));
        r.encryption.kms_keys.insert("k1".into(), key_file(dir, &format!("{}.k1", r.name)));
        r.encryption.default_kms_key = Some("k1".into());
    }
}

/// An SSE-C key: (key, its base64, the base64 of its MD5).
fn customer(seed: u8) -> (String, String) {
    let key = [seed; 32];
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    (b64(&key), b64(&md5::Md5::digest(key)))
}

/// The three SSE-C headers of a key from [`customer`] on any request that takes them (and those
/// of a copy's source on the requests that copy).
trait CustomerKey {
    fn customer_key(self, key: &(String, String)) -> Self;
}

trait CopySourceCustomerKey {
    fn copy_source_customer_key(self, key: &(String, String)) -> Self;
}

macro_rules! customer_key_on {
    ($($builder:ty),*) => {$(
        impl CustomerKey for $builder {
            fn customer_key(self, (key, md5): &(String, String)) -> Self {
                self.sse_customer_algorithm("AES256").sse_customer_key(key).sse_customer_key_md5(md5)
            }
        }
    )*};
}

macro_rules! copy_source_customer_key_on {
    ($($builder:ty),*) => {$(
        impl CopySourceCustomerKey for $builder {
            fn copy_source_customer_key(self, (key, md5): &(String, String)) -> Self {
                self.copy_source_sse_customer_algorithm("AES256")
                    .copy_source_sse_customer_key(key)
                    .copy_source_sse_customer_key_md5(md5)
            }
        }
    )*};
}

customer_key_on!(
    aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder,
    aws_sdk_s3::operation::get_object::builders::GetObjectFluentBuilder,
    aws_sdk_s3::operation::head_object::builders::HeadObjectFluentBuilder,
    aws_sdk_s3::operation::get_object_attributes::builders::GetObjectAttributesFluentBuilder,
    aws_sdk_s3::operation::copy_object::builders::CopyObjectFluentBuilder,
    aws_sdk_s3::operation::create_multipart_upload::builders::CreateMultipartUploadFluentBuilder,
    aws_sdk_s3::operation::upload_part::builders::UploadPartFluentBuilder,
    aws_sdk_s3::operation::upload_part_copy::builders::UploadPartCopyFluentBuilder,
    aws_sdk_s3::operation::complete_multipart_upload::builders::CompleteMultipartUploadFluentBuilder
);
copy_source_customer_key_on!(
    aws_sdk_s3::operation::copy_object::builders::CopyObjectFluentBuilder,
    aws_sdk_s3::operation::upload_part_copy::builders::UploadPartCopyFluentBuilder
);

fn body(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| u8::try_from((i * 13 + usize::from(seed)) % 251).unwrap_or(0)).collect()
}

async fn get_range(
    c: &Client,
    b: &str,
    k: &str,
    range: Option<String>,
    key: Option<&(String, String)>,
) -> Result<Vec<u8>, String> {
    let mut req = c.get_object().bucket(b).key(k).set_range(range);
    if let Some(key) = key {
        req = req.customer_key(key);
    }
    let out = req.send().await.map_err(|e| code(&e))?;
    Ok(out.body.collect().await.unwrap().into_bytes().to_vec())
}

/// True when `needle` (64 bytes of a body) is in any file under `dir`.
fn on_disk(dir: &std::path::Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if on_disk(&p, needle) {
                return true;
            }
        } else if std::fs::read(&p).is_ok_and(|data| data.windows(needle.len()).any(|w| w == needle)) {
            return true;
        }
    }
    false
}

/// Uploads `parts` as a multipart upload (SSE-C key on every part when given).
async fn multipart(
    c: &Client,
    b: &str,
    k: &str,
    parts: &[Vec<u8>],
    sse: Option<ServerSideEncryption>,
    key: Option<&(String, String)>,
) {
    let mut create = c.create_multipart_upload().bucket(b).key(k).set_server_side_encryption(sse);
    if let Some(key) = key {
        create = create.customer_key(key);
    }
    let up = create.send().await.unwrap();
    let id = up.upload_id().unwrap();
    let mut done = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let n = i32::try_from(i + 1).unwrap();
        let mut req = c.upload_part().bucket(b).key(k).upload_id(id).part_number(n).body(ByteStream::from(p.clone()));
        if let Some(key) = key {
            req = req.customer_key(key);
        }
        let out = req.send().await.unwrap();
        done.push(CompletedPart::builder().part_number(n).e_tag(out.e_tag().unwrap()).build());
    }
    c.complete_multipart_upload()
        .bucket(b)
        .key(k)
        .upload_id(id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(done)).build())
        .send()
        .await
        .unwrap();
}

/// SSE-S3 bodies (inline, one blob, multipart) read back whole and by range, answer their
/// encryption, and are not on disk in plaintext.
#[tokio::test]
async fn sse_s3_bodies_read_back_and_are_not_on_disk_in_plaintext() {
    let cl = TestCluster::start(&[US], with_keys).await;
    let c = cl.client(US);
    create_versioned_bucket(&c, "bkt").await;
    let small = body(1000, 1);
    let large = body(300_000, 2);
    for (k, data) in [("small", &small), ("large", &large)] {
        let out = c
            .put_object()
            .bucket("bkt")
            .key(k)
            .server_side_encryption(ServerSideEncryption::Aes256)
            .body(ByteStream::from(data.clone()))
            .send()
            .await
            .unwrap();
        assert_eq!(out.server_side_encryption(), Some(&ServerSideEncryption::Aes256));
        let head = c.head_object().bucket("bkt").key(k).send().await.unwrap();
        assert_eq!(head.server_side_encryption(), Some(&ServerSideEncryption::Aes256));
        assert_eq!(head.content_length(), Some(i64::try_from(data.len()).unwrap()));
        assert_eq!(&get_range(&c, "bkt", k, None, None).await.unwrap(), data);
    }
    let n = large.len();
    for (s, e) in [(0, 1), (65_535, 65_537), (65_536, 131_072), (n - 10, n - 1), (100, 250_000)] {
        let got = get_range(&c, "bkt", "large", Some(format!("bytes={s}-{e}")), None).await.unwrap();
        assert_eq!(got, &large[s..=e], "range {s}-{e}");
    }
    // Multipart: two parts, read across their boundary.
    let parts = [body(5 << 20, 3), body(100_000, 4)];
    multipart(&c, "bkt", "mp", &parts, Some(ServerSideEncryption::Aes256), None).await;
    let whole = parts.concat();
    assert_eq!(get_range(&c, "bkt", "mp", None, None).await.unwrap(), whole);
    let (s, e) = ((5 << 20) - 70_000, (5 << 20) + 70_000);
    assert_eq!(
        get_range(&c, "bkt", "mp", Some(format!("bytes={s}-{e}")), None).await.unwrap(),
        &whole[s..=e]
    );
    let head = c.head_object().bucket("bkt").key("mp").send().await.unwrap();
    assert_eq!(head.server_side_encryption(), Some(&ServerSideEncryption::Aes256));

    // Nothing of the plaintext is on disk: not in blob files, not in the database.
    let data = cl.dir.path().join(US);
    for (what, data_of) in [("small", &small), ("large", &large), ("mp part 2", &parts[1])] {
        assert!(!on_disk(&data, &data_of[200..264]), "{what} is on disk in plaintext");
    }
    // A copy onto itself that changes nothing is refused, encryption included; asking for
    // another encryption is a change.
    let e = c.copy_object().bucket("bkt").key("large").copy_source("bkt/large").send().await.unwrap_err();
    assert_eq!(code(&e), "InvalidRequest");
    c.copy_object()
        .bucket("bkt")
        .key("large")
        .copy_source("bkt/large")
        .server_side_encryption(ServerSideEncryption::AwsKms)
        .send()
        .await
        .unwrap();
    let head = c.head_object().bucket("bkt").key("large").send().await.unwrap();
    assert_eq!(head.server_side_encryption(), Some(&ServerSideEncryption::AwsKms));
    assert_eq!(get_range(&c, "bkt", "large", None, None).await.unwrap(), large);
    // A read asks for no encryption: the header is refused, not ignored.
    let e = c
        .get_object()
        .bucket("bkt")
        .key("large")
        .customize()
        .mutate_request(|r| {
            r.headers_mut().insert("x-amz-server-side-encryption", "AES256");
        })
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidArgument");
    // The same bytes unencrypted are found by the same scan (the scan can fail).
    c.put_object().bucket("bkt").key("plain").body(ByteStream::from(large.clone())).send().await.unwrap();
    assert!(on_disk(&data, &large[200..264]));
}

/// SSE-C: the key's MD5 is checked, the key is needed to read (400 without, 403 with another),
/// never stored, and required for copies from the object.
#[tokio::test]
async fn sse_c_needs_the_right_key_to_read_and_copy() {
    // Plain HTTP on loopback: SSE-C allowed explicitly (refused by default, see below).
    let cl = TestCluster::start(&[US], |o, _| o.regions[0].encryption.sse_c_over_http = true).await;
    let c = cl.client(US);
    create_versioned_bucket(&c, "bkt").await;
    let key = customer(7);
    let other = customer(8);
    let data = body(200_000, 5);
    let out = c.put_object().bucket("bkt").key("k").customer_key(&key).body(ByteStream::from(data.clone())).send().await.unwrap();
    assert_eq!(out.sse_customer_algorithm(), Some("AES256"));
    assert_eq!(out.sse_customer_key_md5(), Some(key.1.as_str()));
    // A key whose MD5 does not match is refused before anything is written.
    let bad = c
        .put_object()
        .bucket("bkt")
        .key("bad")
        .sse_customer_algorithm("AES256")
        .sse_customer_key(&key.0)
        .sse_customer_key_md5(&other.1)
        .body(ByteStream::from(b"x".to_vec()))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&bad), "InvalidArgument");

    assert_eq!(get_range(&c, "bkt", "k", None, None).await, Err("InvalidRequest".into()));
    assert_eq!(get_range(&c, "bkt", "k", None, Some(&other)).await, Err("AccessDenied".into()));
    assert_eq!(get_range(&c, "bkt", "k", None, Some(&key)).await.unwrap(), data);
    assert_eq!(
        get_range(&c, "bkt", "k", Some("bytes=70000-70100".into()), Some(&key)).await.unwrap(),
        &data[70_000..=70_100]
    );
    let head = c.head_object().bucket("bkt").key("k").send().await.unwrap_err();
    assert_eq!(head.raw_response().map(|r| r.status().as_u16()), Some(400), "HEAD without the key");
    // GetObjectAttributes too: nothing of the object without its key.
    let e = c
        .get_object_attributes()
        .bucket("bkt")
        .key("k")
        .object_attributes(aws_sdk_s3::types::ObjectAttributes::Etag)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidRequest");
    let attrs = c
        .get_object_attributes()
        .bucket("bkt")
        .key("k")
        .object_attributes(aws_sdk_s3::types::ObjectAttributes::ObjectSize)
        .customer_key(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(attrs.object_size(), Some(200_000));
    let head = c.head_object().bucket("bkt").key("k").customer_key(&key).send().await.unwrap();
    assert_eq!(head.sse_customer_key_md5(), Some(key.1.as_str()));

    // Copy: the source's key opens it; the copy is under what the request asks (here SSE-S3
    // is not configured on this region, so a plain copy and an SSE-C copy under another key).
    let e = c.copy_object().bucket("bkt").key("c1").copy_source("bkt/k").send().await.unwrap_err();
    assert_eq!(code(&e), "InvalidRequest");
    c.copy_object().bucket("bkt").key("plain").copy_source("bkt/k").copy_source_customer_key(&key).send().await.unwrap();
    assert_eq!(get_range(&c, "bkt", "plain", None, None).await.unwrap(), data);
    c.copy_object()
        .bucket("bkt")
        .key("rekeyed")
        .copy_source("bkt/k")
        .copy_source_customer_key(&key)
        .customer_key(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(get_range(&c, "bkt", "rekeyed", None, Some(&other)).await.unwrap(), data);
    assert_eq!(get_range(&c, "bkt", "rekeyed", None, Some(&key)).await, Err("AccessDenied".into()));
    // SSE-C headers on an object that is not SSE-C are refused.
    assert_eq!(get_range(&c, "bkt", "plain", None, Some(&key)).await, Err("InvalidRequest".into()));

    // Multipart under SSE-C: every part needs the key; UploadPartCopy from an SSE-C source.
    multipart(&c, "bkt", "mp", &[body(5 << 20, 1), body(10, 2)], None, Some(&key)).await;
    assert_eq!(
        get_range(&c, "bkt", "mp", None, Some(&key)).await.unwrap(),
        [body(5 << 20, 1), body(10, 2)].concat()
    );
    // A part the object does not have is answered as such, key or no key (the part count is
    // in the listed ETag anyway); a part it has needs the key.
    for (n, want) in [(3, "InvalidPart"), (1, "InvalidRequest")] {
        let e = c.get_object().bucket("bkt").key("mp").part_number(n).send().await.unwrap_err();
        assert_eq!(code(&e), want, "part {n} without the key");
    }
    let up = c.create_multipart_upload().bucket("bkt").key("mp2").customer_key(&other).send().await.unwrap();
    let id = up.upload_id().unwrap();
    let e =
        c.upload_part().bucket("bkt").key("mp2").upload_id(id).part_number(1).body(ByteStream::from(b"x".to_vec())).send().await;
    assert_eq!(code(&e.unwrap_err()), "InvalidRequest", "a part without the upload's key");
    let third = customer(9);
    let e = c
        .upload_part()
        .bucket("bkt")
        .key("mp2")
        .upload_id(id)
        .part_number(1)
        .customer_key(&third)
        .body(ByteStream::from(b"x".to_vec()))
        .send()
        .await;
    assert_eq!(code(&e.unwrap_err()), "InvalidRequest", "a part under another key than its upload's");
    let part = c
        .upload_part_copy()
        .bucket("bkt")
        .key("mp2")
        .upload_id(id)
        .part_number(1)
        .copy_source("bkt/k")
        .copy_source_range("bytes=1000-99999")
        .copy_source_customer_key(&key)
        .customer_key(&other)
        .send()
        .await
        .unwrap();
    let etag = part.copy_part_result().and_then(|r| r.e_tag()).unwrap();
    let complete = || {
        c.complete_multipart_upload().bucket("bkt").key("mp2").upload_id(id).multipart_upload(
            CompletedMultipartUpload::builder().parts(CompletedPart::builder().part_number(1).e_tag(etag).build()).build(),
        )
    };
    // Completing reads no body: the key is not needed, but one that is sent must be the upload's.
    let e = complete().customer_key(&key).send().await.unwrap_err();
    assert_eq!(code(&e), "InvalidRequest", "completing under another key than the upload's");
    complete().send().await.unwrap();
    assert_eq!(get_range(&c, "bkt", "mp2", None, Some(&other)).await.unwrap(), &data[1000..100_000]);

    // The key is nowhere on disk.
    let raw = base64::engine::general_purpose::STANDARD.decode(&key.0).unwrap();
    assert!(!on_disk(&cl.dir.path().join(US), &raw), "the customer key is on disk");
    // Without a master key, SSE-S3 is refused, not written in plaintext.
    let e = c
        .put_object()
        .bucket("bkt")
        .key("s3")
        .server_side_encryption(ServerSideEncryption::Aes256)
        .body(ByteStream::from(b"x".to_vec()))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NotImplemented");
}

/// A bucket policy can demand SSE-C: `s3:x-amz-server-side-encryption-customer-algorithm` is
/// the request's algorithm header (absent when the write sends no customer key).
#[tokio::test]
async fn a_policy_can_demand_customer_keys() {
    let cl = TestCluster::start(&[US], |o, _| o.regions[0].encryption.sse_c_over_http = true).await;
    let c = cl.client(US);
    create_versioned_bucket(&c, "bkt").await;
    let policy = r#"{"Version": "2012-10-17", "Statement": [
        {"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::bkt/*",
         "Condition": {"Null": {"s3:x-amz-server-side-encryption-customer-algorithm": "true"}}},
        {"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::bkt/*",
         "Condition": {"StringNotEqualsIfExists": {"s3:x-amz-server-side-encryption-customer-algorithm": "AES256"}}}]}"#;
    c.put_bucket_policy().bucket("bkt").policy(policy).send().await.unwrap();
    let e = c.put_object().bucket("bkt").key("plain").body(ByteStream::from(b"x".to_vec())).send().await.unwrap_err();
    assert_eq!(code(&e), "AccessDenied", "a write without a customer key");
    let key = customer(3);
    c.put_object().bucket("bkt").key("sse-c").customer_key(&key).body(ByteStream::from(b"secret".to_vec())).send().await.unwrap();
    assert_eq!(get_range(&c, "bkt", "sse-c", None, Some(&key)).await.unwrap(), b"secret");
}

/// Bucket default encryption: writes that ask for nothing get it; SSE-KMS by key id.
#[tokio::test]
async fn bucket_default_encryption_and_kms_keys() {
    let cl = TestCluster::start(&[US], with_keys).await;
    let c = cl.client(US);
    create_versioned_bucket(&c, "bkt").await;
    let e = c.get_bucket_encryption().bucket("bkt").send().await.unwrap_err();
    assert_eq!(code(&e), "ServerSideEncryptionConfigurationNotFoundError");
    // SSE-C keys over plain HTTP are refused unless the region allows it.
    let key = customer(1);
    let e =
        c.put_object().bucket("bkt").key("c").customer_key(&key).body(ByteStream::from(b"x".to_vec())).send().await.unwrap_err();
    assert_eq!(code(&e), "InvalidRequest");
    let config = |alg: ServerSideEncryption, kms: Option<&str>| {
        ServerSideEncryptionConfiguration::builder()
            .rules(
                ServerSideEncryptionRule::builder()
                    .apply_server_side_encryption_by_default(
                        ServerSideEncryptionByDefault::builder()
                            .sse_algorithm(alg)
                            .set_kms_master_key_id(kms.map(str::to_owned))
                            .build()
                            .unwrap(),
                    )
                    .build(),
            )
            .build()
            .unwrap()
    };
    c.put_bucket_encryption()
        .bucket("bkt")
        .server_side_encryption_configuration(config(ServerSideEncryption::Aes256, None))
        .send()
        .await
        .unwrap();
    let got = c.get_bucket_encryption().bucket("bkt").send().await.unwrap();
    let rule = &got.server_side_encryption_configuration().unwrap().rules()[0];
    assert_eq!(
        rule.apply_server_side_encryption_by_default().unwrap().sse_algorithm(),
        &ServerSideEncryption::Aes256
    );
    let out = put(&c, "bkt", "d", b"default").await;
    assert_eq!(out.server_side_encryption(), Some(&ServerSideEncryption::Aes256));
    let v = cl.store(US).meta.read(|r| r.get_latest("bkt", "d")).await.unwrap().unwrap();
    assert_eq!(v.attrs.sse.as_ref().map(|e| e.kind), Some(ferry_store::sse::SseKind::S3));
    // A browser form gets the default too. Its policy may allow an encryption field it does not
    // send: a condition on a field left out compares with the empty string, as on S3.
    let addr = cl.server.as_ref().and_then(|s| s.region(US)).map(|r| r.addr).unwrap();
    let form = |conditions: &[&str]| {
        let mut all = vec![r#"{"bucket": "bkt"}"#, r#"["starts-with", "$key", "form"]"#];
        all.extend_from_slice(conditions);
        PostForm::new("form", b"posted").signed(MAIN_AK, MAIN_SK, US, &all)
    };
    let r = form(&[r#"["starts-with", "$x-amz-server-side-encryption", ""]"#]).post(addr, "bkt").await;
    assert_eq!(r.status, 204, "{}", r.body);
    let head = c.head_object().bucket("bkt").key("form").send().await.unwrap();
    assert_eq!(head.server_side_encryption(), Some(&ServerSideEncryption::Aes256));
    assert_eq!(get_range(&c, "bkt", "form", None, None).await.unwrap(), b"posted");
    for refused in [r#"["starts-with", "$x-amz-server-side-encryption", "A"]"#, r#"{"x-amz-meta-m": "v"}"#] {
        let r = form(&[refused]).post(addr, "bkt").await;
        assert_eq!((r.status, r.code()), (403, Some("AccessDenied")), "{refused}: {}", r.body);
    }

    // SSE-KMS by id; an unknown key is refused, at PUT and in the default.
    let out = c
        .put_object()
        .bucket("bkt")
        .key("kms")
        .server_side_encryption(ServerSideEncryption::AwsKms)
        .ssekms_key_id("k1")
        .body(ByteStream::from(body(100_000, 9)))
        .send()
        .await
        .unwrap();
    assert_eq!(out.ssekms_key_id(), Some("k1"));
    let head = c.head_object().bucket("bkt").key("kms").send().await.unwrap();
    assert_eq!(head.server_side_encryption(), Some(&ServerSideEncryption::AwsKms));
    assert_eq!(head.ssekms_key_id(), Some("k1"));
    assert_eq!(get_range(&c, "bkt", "kms", None, None).await.unwrap(), body(100_000, 9));
    let e = c
        .put_object()
        .bucket("bkt")
        .key("nokey")
        .server_side_encryption(ServerSideEncryption::AwsKms)
        .ssekms_key_id("missing")
        .body(ByteStream::from(b"x".to_vec()))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidArgument");
    let e = c
        .put_bucket_encryption()
        .bucket("bkt")
        .server_side_encryption_configuration(config(ServerSideEncryption::AwsKms, Some("missing")))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidArgument");
    c.put_bucket_encryption()
        .bucket("bkt")
        .server_side_encryption_configuration(config(ServerSideEncryption::AwsKms, None))
        .send()
        .await
        .unwrap();
    let out = put(&c, "bkt", "d2", b"default kms").await;
    assert_eq!(out.server_side_encryption(), Some(&ServerSideEncryption::AwsKms));
    // A copy takes the destination's default, not its source's key.
    c.delete_bucket_encryption().bucket("bkt").send().await.unwrap();
    c.copy_object().bucket("bkt").key("copy").copy_source("bkt/kms").send().await.unwrap();
    let head = c.head_object().bucket("bkt").key("copy").send().await.unwrap();
    assert_eq!(head.server_side_encryption(), None);
    assert_eq!(get_range(&c, "bkt", "copy", None, None).await.unwrap(), body(100_000, 9));
    let e = c.get_bucket_encryption().bucket("bkt").send().await.unwrap_err();
    assert_eq!(code(&e), "ServerSideEncryptionConfigurationNotFoundError");
}

/// SSE-S3 and SSE-KMS versions replicate: decrypted at the source, encrypted again under the
/// destination's own keys (single PUT and multipart). An SSE-C version cannot be read without
/// its key, which Ferry does not keep: its job fails with that reason.
#[tokio::test]
async fn encrypted_versions_replicate_under_the_destination_keys() {
    let cl = TestCluster::start(&[US, EU], |opts, dir| {
        with_keys(opts, dir);
        opts.regions[0].encryption.sse_c_over_http = true;
        opts.replication.multipart_threshold = 8 << 20;
        opts.replication.part_size = 5 << 20;
    })
    .await;
    let (us, eu) = (cl.client(US), cl.client(EU));
    replicated_pair(&us, "src", &eu, "dst").await;
    let large = body(9 << 20, 6);
    let mut versions = Vec::new();
    for (k, data, sse) in [
        ("s3", body(2000, 1), ServerSideEncryption::Aes256),
        ("kms", body(200_000, 2), ServerSideEncryption::AwsKms),
        ("large", large.clone(), ServerSideEncryption::Aes256),
    ] {
        let out = us
            .put_object()
            .bucket("src")
            .key(k)
            .server_side_encryption(sse.clone())
            .body(ByteStream::from(data.clone()))
            .send()
            .await
            .unwrap();
        versions.push((k, data, sse, out.version_id().unwrap().to_owned()));
    }
    for (k, data, sse, v) in &versions {
        wait_for_version(k, 60, &eu, "dst", k, v).await;
        let head = eu.head_object().bucket("dst").key(*k).version_id(v).send().await.unwrap();
        assert_eq!(head.server_side_encryption(), Some(sse), "{k}");
        assert_eq!(&get_range(&eu, "dst", k, None, None).await.unwrap(), data, "{k}");
        // Wrapped under the destination's key, not the source's.
        let (b, key) = ("dst".to_owned(), (*k).to_owned());
        let there = cl.store(EU).meta.read(move |r| r.get_latest(&b, &key)).await.unwrap().unwrap();
        let here = cl.store(US).meta.read(|r| r.get_latest("src", k)).await.unwrap().unwrap();
        let (there, here) = (there.attrs.sse.unwrap(), here.attrs.sse.unwrap());
        assert_eq!(there.kind, here.kind);
        // Each region's own key: the master key ids differ, and the KMS key of the same id is
        // another key there (its fingerprint).
        if here.kind == ferry_store::sse::SseKind::S3 {
            assert_ne!(there.kek, here.kek, "{k}: the same master key id in both regions");
        } else {
            assert_eq!(there.kek, here.kek, "{k}");
            assert_ne!(there.kek_fingerprint, here.kek_fingerprint, "{k}: the same KMS key in both regions");
        }
    }
    assert!(
        !on_disk(&cl.dir.path().join(EU), &large[1000..1064]),
        "the replica is on disk in plaintext"
    );

    let key = customer(3);
    us.put_object().bucket("src").key("c").customer_key(&key).body(ByteStream::from(b"customer".to_vec())).send().await.unwrap();
    wait_until("the SSE-C version's job fails", 30, || async {
        cl.dest_stats(US, "src").await.iter().any(|s| s.failed_ops == 1)
    })
    .await;
    let s = cl.dest_stats(US, "src").await;
    assert!(s[0].last_error.as_deref().is_some_and(|e| e.contains("customer-provided key")), "{s:?}");
}

/// An encrypted source body whose bytes changed on disk cannot be sent: its job fails with
/// that reason instead of sending other bytes or retrying for ever.
#[tokio::test]
async fn a_corrupt_encrypted_source_fails_with_a_reason() {
    let cl = TestCluster::start(&[US, EU], with_keys).await;
    let (us, eu) = (cl.client(US), cl.client(EU));
    create_versioned_bucket(&us, "src").await;
    create_versioned_bucket(&eu, "dst").await;
    us.put_object()
        .bucket("src")
        .key("k")
        .server_side_encryption(ServerSideEncryption::Aes256)
        .body(ByteStream::from(body(300_000, 1)))
        .send()
        .await
        .unwrap();
    let v = cl.store(US).meta.read(|r| r.get_latest("src", "k")).await.unwrap().unwrap();
    let blob = v.layout.blobs().pop().expect("a blob");
    let path = crate::outbox::find_file(&cl.dir.path().join(US).join("blobs"), &blob).expect("the blob file");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100_000] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let history = "<ExistingObjectReplication><Status>Enabled</Status></ExistingObjectReplication>";
    put_replication_xml(&us, "src", &crate::outbox::rules_xml(&[(Some("h"), 1, "", "arn:aws:s3:::dst", history)])).await.unwrap();
    wait_until("the job fails", 30, || async {
        cl.dest_stats(US, "src").await.iter().any(|s| s.failed_ops == 1)
    })
    .await;
    let s = cl.dest_stats(US, "src").await;
    assert!(s[0].last_error.as_deref().is_some_and(|e| e.contains("fails to decrypt")), "{s:?}");
    assert!(
        eu.head_object().bucket("dst").key("k").send().await.is_err(),
        "other bytes reached the destination"
    );
}
