//! Batches of small replicas (`POST /BUCKET?ferry-replicas`), sent as a source region sends
//! them (Ferry's lean client, SigV4 with the payload's hash): each entry is applied as the
//! replica PutObject it stands for, with its own result; only a replication credential may send
//! one; a bucket that does not accept the source refuses every entry; sending a batch twice
//! changes nothing.

use bytes::Bytes;
use ferry_replication::lean::{Failure, LeanClient};
use ferry_store::replication::wire::batch::{BATCH_MAGIC, BatchAnswer, BatchEntryHead, push_entry};
use serde_json::json;

use crate::common::*;

const US: &str = "us-east-1";

fn client(c: &TestCluster, ak: &str, sk: &str) -> LeanClient {
    let settings = ferry_replication::client::ClientSettings {
        url: c.url(US),
        access_key: ak.into(),
        secret_key: sk.into(),
        region: US.into(),
        ca_pem: None,
    };
    LeanClient::new(&settings).unwrap()
}

/// An entry: the replica of version `vid` of `key`, with `extra` headers.
fn entry(key: &str, vid: &str, body: &[u8], extra: &[(&str, &str)]) -> (BatchEntryHead, Vec<u8>) {
    let meta = replica_header(&json!({"format": 1, "source_region": "elsewhere", "version_id": vid, "mtime_us": now_us()}));
    let mut headers = vec![("content-length".to_owned(), body.len().to_string()), ("x-ferry-replica".to_owned(), meta)];
    headers.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    (BatchEntryHead { key: key.to_owned(), headers }, body.to_vec())
}

fn batch_body(entries: &[(BatchEntryHead, Vec<u8>)]) -> Bytes {
    let mut out = BATCH_MAGIC.to_vec();
    for (head, body) in entries {
        push_entry(&mut out, head, body).unwrap();
    }
    Bytes::from(out)
}

/// Posts a batch from `source` (an encoded `x-ferry-source`, or none).
async fn post(lean: &LeanClient, bucket: &str, source: Option<&str>, body: Bytes) -> Result<Vec<(u16, String)>, Failure> {
    let mut headers = vec![("content-length".to_owned(), body.len().to_string())];
    if let Some(s) = source {
        headers.push(("x-ferry-source".to_owned(), s.to_owned()));
    }
    let text = lean.post_batch(bucket, &headers, body).await?;
    let answer: BatchAnswer = serde_json::from_slice(&text).unwrap();
    Ok(answer.results.into_iter().map(|r| (r.status, r.code)).collect())
}

#[tokio::test]
async fn each_entry_of_a_batch_is_its_own_put_with_its_own_result() {
    let c = TestCluster::start(&[US], |_, _| {}).await;
    let us = c.client(US);
    create_versioned_bucket(&us, "dst").await;
    let repl = client(&c, REPL_AK, REPL_SK);
    let source = source_header("elsewhere", "src", MAIN_AK);
    let entries = [
        entry(
            "a/ünï.txt",
            "v-a",
            b"alpha",
            &[("content-type", "text/x-a"), ("x-amz-meta-team", "storage"), ("x-amz-tagging", "env=prod")],
        ),
        // A body that does not match its Content-MD5.
        entry("corrupt", "v-c", b"gamma", &[("content-md5", "AAAAAAAAAAAAAAAAAAAAAA==")]),
        entry("b", "v-b", b"beta", &[]),
        // Ferry headers other than the replica's are the batch's to send, not an entry's.
        entry("forged", "v-f", b"delta", &[("x-ferry-source", &source)]),
        // Nor does an entry carry what a replica PUT never does.
        entry("odd", "v-o", b"epsilon", &[("x-amz-acl", "public-read")]),
    ];
    let body = batch_body(&entries);
    let results = post(&repl, "dst", Some(&source), body.clone()).await.unwrap();
    let codes: Vec<(u16, &str)> = results.iter().map(|(s, c)| (*s, c.as_str())).collect();
    assert_eq!(
        codes,
        [(200, ""), (400, "BadDigest"), (200, ""), (400, "InvalidArgument"), (400, "InvalidArgument")]
    );
    let listed = |v: Vec<Listed>| v.into_iter().map(|l| (l.key, l.version_id)).collect::<Vec<_>>();
    let expected = vec![("a/ünï.txt".to_owned(), "v-a".to_owned()), ("b".to_owned(), "v-b".to_owned())];
    assert_eq!(listed(all_versions(&us, "dst").await), expected);
    let head = us.head_object().bucket("dst").key("a/ünï.txt").send().await.unwrap();
    assert_eq!(head.content_type(), Some("text/x-a"));
    assert_eq!(head.metadata().and_then(|m| m.get("team")).map(String::as_str), Some("storage"));
    assert_eq!(head.tag_count(), Some(1));
    assert_eq!(get_bytes(&us, "dst", "b").await, b"beta");
    // Delivered again (the source did not hear the answer): the same results, nothing doubled.
    assert_eq!(post(&repl, "dst", Some(&source), body).await.unwrap(), results);
    assert_eq!(listed(all_versions(&us, "dst").await), expected);
}

#[tokio::test]
async fn only_a_replication_credential_sends_batches_and_only_where_its_source_is_accepted() {
    let c = TestCluster::start(&[US], |_, _| {}).await;
    let us = c.client(US);
    create_versioned_bucket(&us, "dst").await;
    let source = source_header("elsewhere", "src", MAIN_AK);
    let body = batch_body(&[entry("k", "v-1", b"x", &[])]);
    let denied = |r: Result<Vec<(u16, String)>, Failure>| match r {
        Err(Failure::Answer { status, code, .. }) => (status, code),
        other => panic!("{other:?}"),
    };
    // The bucket's owner is an account, not a replication principal.
    let owner = client(&c, MAIN_AK, MAIN_SK);
    assert_eq!(
        denied(post(&owner, "dst", Some(&source), body.clone()).await),
        (403, "AccessDenied".into())
    );
    // The replication credential's key with another secret: the signature is checked.
    let forged = client(&c, REPL_AK, "not-the-secret");
    assert_eq!(
        denied(post(&forged, "dst", Some(&source), body.clone()).await),
        (403, "SignatureDoesNotMatch".into())
    );
    // A batch names its source.
    let repl = client(&c, REPL_AK, REPL_SK);
    assert_eq!(denied(post(&repl, "dst", None, body.clone()).await), (403, "AccessDenied".into()));
    // A source of another account, which the bucket does not accept: every entry refused.
    let stranger = source_header("elsewhere", "src", ALT_AK);
    let two = batch_body(&[entry("k", "v-1", b"x", &[]), entry("l", "v-2", b"y", &[])]);
    let results = post(&repl, "dst", Some(&stranger), two).await.unwrap();
    assert_eq!(results, [(403, "AccessDenied".to_owned()), (403, "AccessDenied".to_owned())]);
    // Not a batch at all.
    let junk = Bytes::from_static(b"FERRYB1\n\x00\x00\x00\x09{\"key\":1}");
    assert_eq!(denied(post(&repl, "dst", Some(&source), junk).await), (400, "InvalidRequest".into()));
    // A bucket that is not there.
    assert_eq!(denied(post(&repl, "nowhere", Some(&source), body).await), (404, "NoSuchBucket".into()));
    assert!(all_versions(&us, "dst").await.is_empty());
}

/// A raw batch request to `addr`: signed (SigV4, the replication credential) over
/// `signed_body` (or as UNSIGNED-PAYLOAD when `None`), sending `sent_body`.
fn raw_batch(addr: std::net::SocketAddr, source: &str, signed_body: Option<&[u8]>, sent_body: &[u8]) -> Vec<u8> {
    use aws_sigv4::http_request::{PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings, sign};
    let host = addr.to_string();
    let url = format!("http://{host}/dst?ferry-replicas");
    let length = sent_body.len().to_string();
    let headers = [("host", host.as_str()), ("content-length", length.as_str()), ("x-ferry-source", source)];
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let identity = aws_credential_types::Credentials::new(REPL_AK, REPL_SK, None, None, "test").into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(US)
        .name("s3")
        .time(std::time::SystemTime::now())
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let body = signed_body.map_or(SignableBody::UnsignedPayload, SignableBody::Bytes);
    let signable = SignableRequest::new("POST", &url, headers.iter().copied(), body).unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut req = "POST /dst?ferry-replicas HTTP/1.1\r\n".to_owned();
    for (name, value) in headers.iter().copied().chain(instructions.headers()) {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("connection: close\r\n\r\n");
    let mut out = req.into_bytes();
    out.extend_from_slice(sent_body);
    out
}

/// The signature covers every entry: a body other than the one signed, or a batch signed
/// without its payload's hash, writes nothing.
#[tokio::test]
async fn a_batch_is_applied_only_as_signed() {
    let c = TestCluster::start(&[US], |_, _| {}).await;
    let us = c.client(US);
    create_versioned_bucket(&us, "dst").await;
    let addr: std::net::SocketAddr = c.url(US).trim_start_matches("http://").parse().unwrap();
    let source = source_header("elsewhere", "src", MAIN_AK);
    let signed = batch_body(&[entry("k", "v-1", b"signed", &[])]);
    let swapped = batch_body(&[entry("k", "v-1", b"forged", &[])]);
    assert_eq!(signed.len(), swapped.len());
    let r = raw_http(addr, &raw_batch(addr, &source, Some(&signed), &swapped)).await;
    assert_eq!((r.status, r.code()), (400, Some("XAmzContentSHA256Mismatch")), "{r:?}");
    let r = raw_http(addr, &raw_batch(addr, &source, None, &signed)).await;
    assert_eq!((r.status, r.code()), (403, Some("AccessDenied")), "{r:?}");
    assert!(all_versions(&us, "dst").await.is_empty());
    // The same request, signed over what it sends, is applied.
    let r = raw_http(addr, &raw_batch(addr, &source, Some(&signed), &signed)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(get_bytes(&us, "dst", "k").await, b"signed");
}
