//! Object operations through aws-sdk-s3 (both checksum modes, path and virtual-host style).

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, Delete, MetadataDirective, ObjectCannedAcl, ObjectIdentifier, Tag, Tagging, TaggingDirective,
};
use std::time::Duration;

use crate::common::*;

async fn roundtrip(mode: Mode) {
    let s = TestServer::start().await;
    let c = s.client_with(mode);
    let b = bucket_name("rt");
    create_bucket(&c, &b).await;
    for (key, body) in [
        ("small.txt", b"hello ferry".to_vec()),
        ("empty", Vec::new()),
        ("dir/ünïcødé key with spaces+plus", vec![7u8; 1000]),
        ("large.bin", (0..3_000_000u32).map(|i| (i % 251) as u8).collect()),
    ] {
        let out = c
            .put_object()
            .bucket(&b)
            .key(key)
            .body(body.clone().into())
            .content_type("text/plain")
            .cache_control("max-age=60")
            .content_disposition("attachment")
            .content_encoding("identity")
            .content_language("en")
            .metadata("color", "blue")
            .metadata("Mixed-Case", "v")
            .send()
            .await
            .unwrap();
        assert_eq!(out.e_tag(), Some(format!("\"{}\"", md5_hex(&body)).as_str()), "{key}");
        let got = c.get_object().bucket(&b).key(key).send().await.unwrap();
        assert_eq!(got.content_type(), Some("text/plain"));
        assert_eq!(got.cache_control(), Some("max-age=60"));
        assert_eq!(got.content_disposition(), Some("attachment"));
        assert_eq!(got.content_language(), Some("en"));
        assert_eq!(got.content_length(), Some(body.len() as i64));
        let meta = got.metadata().unwrap();
        assert_eq!(meta.get("color").map(String::as_str), Some("blue"));
        assert_eq!(meta.get("mixed-case").map(String::as_str), Some("v"));
        let data = got.body.collect().await.unwrap().into_bytes();
        assert_eq!(data.as_ref(), body.as_slice(), "{key}");
        let head = c.head_object().bucket(&b).key(key).send().await.unwrap();
        assert_eq!(head.content_length(), Some(body.len() as i64));
        assert!(head.version_id().is_none(), "unversioned bucket: no version id");
    }
    c.delete_object().bucket(&b).key("small.txt").send().await.unwrap();
    let e = c.get_object().bucket(&b).key("small.txt").send().await.unwrap_err();
    assert_eq!(code(&e), "NoSuchKey");
    let e = c.head_object().bucket(&b).key("small.txt").send().await.unwrap_err();
    assert_eq!(status(&e), 404);
}

#[tokio::test]
async fn put_get_head_delete_with_sdk_default_checksums() {
    roundtrip(Mode::Default).await;
}

#[tokio::test]
async fn put_get_head_delete_with_checksums_when_required() {
    roundtrip(Mode::WhenRequired).await;
}

#[tokio::test]
async fn virtual_host_style_and_path_style_both_work() {
    let s = TestServer::start().await;
    let b = bucket_name("vh");
    let vh = s.client_with(Mode::VirtualHost);
    create_bucket(&vh, &b).await;
    put(&vh, &b, "a/b.txt", b"virtual").await;
    assert_eq!(get_bytes(&s.client(), &b, "a/b.txt").await, b"virtual");
    let list = vh.list_objects_v2().bucket(&b).send().await.unwrap();
    assert_eq!(list.key_count(), Some(1));
}

#[tokio::test]
async fn flexible_checksums_are_stored_verified_and_returned() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("ck");
    create_bucket(&c, &b).await;
    let body = b"checksum me".to_vec();
    for algo in [
        ChecksumAlgorithm::Crc32,
        ChecksumAlgorithm::Crc32C,
        ChecksumAlgorithm::Sha1,
        ChecksumAlgorithm::Sha256,
        ChecksumAlgorithm::Crc64Nvme,
    ] {
        let key = format!("k-{}", algo.as_str());
        let out =
            c.put_object().bucket(&b).key(&key).body(body.clone().into()).checksum_algorithm(algo.clone()).send().await.unwrap();
        let head = c.head_object().bucket(&b).key(&key).checksum_mode(ChecksumMode::Enabled).send().await.unwrap();
        let (sent, got) = match algo {
            ChecksumAlgorithm::Crc32 => (out.checksum_crc32(), head.checksum_crc32()),
            ChecksumAlgorithm::Crc32C => (out.checksum_crc32_c(), head.checksum_crc32_c()),
            ChecksumAlgorithm::Sha1 => (out.checksum_sha1(), head.checksum_sha1()),
            ChecksumAlgorithm::Sha256 => (out.checksum_sha256(), head.checksum_sha256()),
            _ => (out.checksum_crc64_nvme(), head.checksum_crc64_nvme()),
        };
        assert!(sent.is_some(), "{algo:?} returned on PUT");
        assert_eq!(sent, got, "{algo:?}");
        // GET validates the returned checksum in the SDK.
        let g = c.get_object().bucket(&b).key(&key).checksum_mode(ChecksumMode::Enabled).send().await.unwrap();
        assert_eq!(g.body.collect().await.unwrap().into_bytes().as_ref(), body.as_slice());
    }
    // A wrong checksum is refused and nothing is written.
    let plain = s.client_with(Mode::WhenRequired);
    let e = plain
        .put_object()
        .bucket(&b)
        .key("bad")
        .body(body.clone().into())
        .checksum_sha256("n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "BadDigest");
    assert_eq!(code(&c.head_object().bucket(&b).key("bad").send().await.unwrap_err()), "NotFound");
    let e = plain
        .put_object()
        .bucket(&b)
        .key("bad")
        .body(body.clone().into())
        .content_md5("1B2M2Y8AsgTpgAmY7PhCfg==")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "BadDigest");
}

#[tokio::test]
async fn ranges_and_part_numbers() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("rng");
    create_bucket(&c, &b).await;
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 256) as u8).collect();
    put(&c, &b, "obj", &body).await;
    for (range, expect) in [
        ("bytes=0-9", 0..10),
        ("bytes=99990-", 99_990..100_000),
        ("bytes=-5", 99_995..100_000),
        ("bytes=50-99999999", 50..100_000),
    ] {
        let out = c.get_object().bucket(&b).key("obj").range(range).send().await.unwrap();
        assert_eq!(
            out.content_range(),
            Some(format!("bytes {}-{}/100000", expect.start, expect.end - 1).as_str())
        );
        let data = out.body.collect().await.unwrap().into_bytes();
        assert_eq!(data.as_ref(), &body[expect.clone()], "{range}");
    }
    let e = c.get_object().bucket(&b).key("obj").range("bytes=100000-").send().await.unwrap_err();
    assert_eq!(code(&e), "InvalidRange");
    assert_eq!(status(&e), 416);
    // A non-multipart object has one part.
    let p1 = c.get_object().bucket(&b).key("obj").part_number(1).send().await.unwrap();
    assert_eq!(p1.content_length(), Some(100_000));
    let e = c.get_object().bucket(&b).key("obj").part_number(2).send().await.unwrap_err();
    assert_eq!((status(&e), code(&e).as_str()), (400, "InvalidPart"));
}

#[tokio::test]
async fn conditional_gets() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("cond");
    create_bucket(&c, &b).await;
    let etag = put(&c, &b, "k", b"v1").await.e_tag().unwrap().to_owned();
    c.get_object().bucket(&b).key("k").if_match(&etag).send().await.unwrap();
    let e = c.get_object().bucket(&b).key("k").if_match("\"nope\"").send().await.unwrap_err();
    assert_eq!(status(&e), 412);
    let e = c.get_object().bucket(&b).key("k").if_none_match(&etag).send().await.unwrap_err();
    assert_eq!(status(&e), 304);
    c.get_object().bucket(&b).key("k").if_none_match("\"other\"").send().await.unwrap();
    let past = DateTime::from_secs(1_000_000_000);
    let future = DateTime::from_secs(4_000_000_000);
    c.get_object().bucket(&b).key("k").if_modified_since(past).send().await.unwrap();
    assert_eq!(
        status(&c.get_object().bucket(&b).key("k").if_modified_since(future).send().await.unwrap_err()),
        304
    );
    c.get_object().bucket(&b).key("k").if_unmodified_since(future).send().await.unwrap();
    assert_eq!(
        status(&c.get_object().bucket(&b).key("k").if_unmodified_since(past).send().await.unwrap_err()),
        412
    );
    // If-Match wins over a failing If-Unmodified-Since (RFC 9110).
    c.get_object().bucket(&b).key("k").if_match(&etag).if_unmodified_since(past).send().await.unwrap();
    // Conditional PUT: If-None-Match * refuses to overwrite.
    let e = c.put_object().bucket(&b).key("k").if_none_match("*").body(b"v2".to_vec().into()).send().await.unwrap_err();
    assert_eq!(status(&e), 412);
    assert_eq!(get_bytes(&c, &b, "k").await, b"v1");
}

#[tokio::test]
async fn response_header_overrides() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("ovr");
    create_bucket(&c, &b).await;
    put(&c, &b, "k", b"v").await;
    let out = c
        .get_object()
        .bucket(&b)
        .key("k")
        .response_content_type("application/json")
        .response_content_disposition("inline; filename=\"x.json\"")
        .response_cache_control("no-cache")
        .send()
        .await
        .unwrap();
    assert_eq!(out.content_type(), Some("application/json"));
    assert_eq!(out.content_disposition(), Some("inline; filename=\"x.json\""));
    assert_eq!(out.cache_control(), Some("no-cache"));
}

#[tokio::test]
async fn copy_object_directives_and_conditions() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("cp");
    create_bucket(&c, &b).await;
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    c.put_object()
        .bucket(&b)
        .key("src")
        .body(big.clone().into())
        .content_type("image/png")
        .metadata("a", "1")
        .tagging("t=1")
        .send()
        .await
        .unwrap();
    let out = c.copy_object().bucket(&b).key("copy").copy_source(format!("{b}/src")).send().await.unwrap();
    assert_eq!(
        out.copy_object_result().and_then(|r| r.e_tag()),
        Some(format!("\"{}\"", md5_hex(&big)).as_str())
    );
    let h = c.head_object().bucket(&b).key("copy").send().await.unwrap();
    assert_eq!(h.content_type(), Some("image/png"));
    assert_eq!(h.metadata().and_then(|m| m.get("a")).map(String::as_str), Some("1"));
    assert_eq!(get_bytes(&c, &b, "copy").await, big);
    let tags = c.get_object_tagging().bucket(&b).key("copy").send().await.unwrap();
    assert_eq!(tags.tag_set().len(), 1);

    c.copy_object()
        .bucket(&b)
        .key("replaced")
        .copy_source(format!("{b}/src"))
        .metadata_directive(MetadataDirective::Replace)
        .content_type("text/csv")
        .metadata("b", "2")
        .tagging_directive(TaggingDirective::Replace)
        .tagging("x=y&z=w")
        .send()
        .await
        .unwrap();
    let h = c.head_object().bucket(&b).key("replaced").send().await.unwrap();
    assert_eq!(h.content_type(), Some("text/csv"));
    assert!(h.metadata().unwrap().get("a").is_none());
    assert_eq!(c.get_object_tagging().bucket(&b).key("replaced").send().await.unwrap().tag_set().len(), 2);

    let e = c
        .copy_object()
        .bucket(&b)
        .key("no")
        .copy_source(format!("{b}/src"))
        .copy_source_if_match("\"zzz\"")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), 412);
    let e = c.copy_object().bucket(&b).key("src").copy_source(format!("{b}/src")).send().await.unwrap_err();
    assert_eq!(code(&e), "InvalidRequest", "copying onto itself without changes");
    let e = c.copy_object().bucket(&b).key("no").copy_source(format!("{b}/missing")).send().await.unwrap_err();
    assert_eq!(code(&e), "NoSuchKey");
}

#[tokio::test]
async fn object_tagging_and_acl() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("otag");
    create_bucket(&c, &b).await;
    put(&c, &b, "k", b"v").await;
    let tagging = Tagging::builder().tag_set(Tag::builder().key("k1").value("v1").build().unwrap()).build().unwrap();
    c.put_object_tagging().bucket(&b).key("k").tagging(tagging).send().await.unwrap();
    let got = c.get_object_tagging().bucket(&b).key("k").send().await.unwrap();
    assert_eq!(got.tag_set()[0].key(), "k1");
    let g = c.get_object().bucket(&b).key("k").send().await.unwrap();
    assert_eq!(g.tag_count(), Some(1));
    c.delete_object_tagging().bucket(&b).key("k").send().await.unwrap();
    assert!(c.get_object_tagging().bucket(&b).key("k").send().await.unwrap().tag_set().is_empty());
    let too_many = (0..11).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join("&");
    let e = c.put_object().bucket(&b).key("t").tagging(too_many).body(b"x".to_vec().into()).send().await.unwrap_err();
    assert_eq!(code(&e), "InvalidTag");

    // Object ACLs: private by default; public-read lets anyone GET.
    let alt = s.alt_client();
    assert_eq!(code(&alt.get_object().bucket(&b).key("k").send().await.unwrap_err()), "AccessDenied");
    c.put_object_acl().bucket(&b).key("k").acl(ObjectCannedAcl::PublicRead).send().await.unwrap();
    assert_eq!(alt.get_object().bucket(&b).key("k").send().await.unwrap().content_length(), Some(1));
    let acl = c.get_object_acl().bucket(&b).key("k").send().await.unwrap();
    assert_eq!(acl.grants().len(), 2);
    let r = raw_http(
        s.addr,
        format!("GET /{b}/k HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "v");
}

#[tokio::test]
async fn delete_objects_reports_and_quiet_mode() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("dels");
    create_bucket(&c, &b).await;
    for i in 0..5 {
        put(&c, &b, &format!("k{i}"), b"x").await;
    }
    let ids = |keys: &[&str]| {
        Delete::builder().set_objects(Some(keys.iter().map(|k| ObjectIdentifier::builder().key(*k).build().unwrap()).collect()))
    };
    let out = c.delete_objects().bucket(&b).delete(ids(&["k0", "k1", "missing"]).build().unwrap()).send().await.unwrap();
    assert_eq!(out.deleted().len(), 3, "deleting a missing key succeeds");
    let out = c.delete_objects().bucket(&b).delete(ids(&["k2", "k3"]).quiet(true).build().unwrap()).send().await.unwrap();
    assert!(out.deleted().is_empty());
    assert!(out.errors().is_empty());
    let left = c.list_objects_v2().bucket(&b).send().await.unwrap();
    assert_eq!(left.contents().iter().filter_map(|o| o.key()).collect::<Vec<_>>(), vec!["k4"]);
}

/// DeleteObject and DeleteObjects with `If-Match`, a last-modified time or a size: checked
/// against the version the delete removes (or the key's newest, a delete marker too); a target
/// that does not exist passes, as deleting nothing always succeeds.
#[tokio::test]
async fn conditional_deletes() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("cdel");
    create_versioned_bucket(&c, &b).await;
    let put = c.put_object().bucket(&b).key("k").body(b"four".to_vec().into()).send().await.unwrap();
    let (etag, v1) = (put.e_tag().unwrap().to_owned(), put.version_id().unwrap().to_owned());
    let mtime = c.head_object().bucket(&b).key("k").send().await.unwrap().last_modified().copied().unwrap();
    let old = DateTime::from_secs(1_420_070_400);

    // The newest version: each condition refused when wrong, the delete done when right.
    let e = c.delete_object().bucket(&b).key("k").if_match("\"bad\"").send().await.unwrap_err();
    assert_eq!(code(&e), "PreconditionFailed");
    let e = c.delete_object().bucket(&b).key("k").if_match_size(5).send().await.unwrap_err();
    assert_eq!(code(&e), "PreconditionFailed");
    let e = c.delete_object().bucket(&b).key("k").if_match_last_modified_time(old).send().await.unwrap_err();
    assert_eq!(code(&e), "PreconditionFailed");
    let listed = c.list_object_versions().bucket(&b).send().await.unwrap();
    assert!(listed.delete_markers().is_empty(), "a refused delete wrote nothing");
    let out = c
        .delete_object()
        .bucket(&b)
        .key("k")
        .if_match(&etag)
        .if_match_size(4)
        .if_match_last_modified_time(mtime)
        .send()
        .await
        .unwrap();
    assert_eq!(out.delete_marker(), Some(true));

    // The newest is now a delete marker: it matches `*` and its own time, never an ETag or a size.
    let e = c.delete_object().bucket(&b).key("k").if_match(&etag).send().await.unwrap_err();
    assert_eq!(code(&e), "PreconditionFailed");
    let e = c.delete_object().bucket(&b).key("k").if_match_size(0).send().await.unwrap_err();
    assert_eq!(code(&e), "PreconditionFailed");
    c.delete_object().bucket(&b).key("k").if_match("*").send().await.unwrap();

    // A named version.
    let e = c.delete_object().bucket(&b).key("k").version_id(&v1).if_match("\"bad\"").send().await.unwrap_err();
    assert_eq!(code(&e), "PreconditionFailed");
    let out = c.delete_object().bucket(&b).key("k").version_id(&v1).if_match(&etag).send().await.unwrap();
    assert_eq!(out.delete_marker(), None);
    // Gone: any condition passes.
    c.delete_object().bucket(&b).key("k").version_id(&v1).if_match("\"bad\"").send().await.unwrap();

    // DeleteObjects: one element's refusal is that element's error; the others are deleted.
    let p1 = c.put_object().bucket(&b).key("a").body(b"aa".to_vec().into()).send().await.unwrap();
    c.put_object().bucket(&b).key("z").body(b"zz".to_vec().into()).send().await.unwrap();
    let id = |k: &str| ObjectIdentifier::builder().key(k);
    let delete = Delete::builder()
        .objects(id("a").e_tag("\"bad\"").build().unwrap())
        .objects(id("z").size(2).build().unwrap())
        .objects(id("a").version_id(p1.version_id().unwrap()).size(3).build().unwrap())
        .objects(id("missing").e_tag("\"bad\"").last_modified_time(old).build().unwrap())
        .build()
        .unwrap();
    let out = c.delete_objects().bucket(&b).delete(delete).send().await.unwrap();
    let mut refused: Vec<_> = out.errors().iter().map(|e| (e.key().unwrap(), e.code().unwrap())).collect();
    refused.sort_unstable();
    assert_eq!(refused, vec![("a", "PreconditionFailed"), ("a", "PreconditionFailed")]);
    let mut deleted: Vec<_> = out.deleted().iter().filter_map(|d| d.key()).collect();
    deleted.sort_unstable();
    assert_eq!(deleted, vec!["missing", "z"]);
    let missing = c.list_object_versions().bucket(&b).prefix("missing").send().await.unwrap();
    assert!(
        missing.delete_markers().is_empty(),
        "a conditional delete of nothing writes no delete marker"
    );
    let a = c.head_object().bucket(&b).key("a").send().await.unwrap();
    assert_eq!(a.version_id(), p1.version_id(), "the refused elements left `a` alone");
    let delete = Delete::builder()
        .objects(id("a").e_tag(p1.e_tag().unwrap()).last_modified_time(a.last_modified().copied().unwrap()).build().unwrap())
        .build()
        .unwrap();
    let out = c.delete_objects().bucket(&b).delete(delete).send().await.unwrap();
    assert!(out.errors().is_empty(), "{:?}", out.errors());
    assert_eq!(out.deleted()[0].delete_marker(), Some(true));
}

#[tokio::test]
async fn presigned_urls_work_and_expire() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("pre");
    create_bucket(&c, &b).await;
    let put_req = c
        .put_object()
        .bucket(&b)
        .key("p")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300)).unwrap())
        .await
        .unwrap();
    let r = send_presigned(&put_req, b"presigned body").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let get_req = c
        .get_object()
        .bucket(&b)
        .key("p")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300)).unwrap())
        .await
        .unwrap();
    let r = send_presigned(&get_req, b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "presigned body");
    // Signed an hour ago, valid for one second.
    let cfg = PresigningConfig::builder()
        .start_time(std::time::SystemTime::now() - Duration::from_secs(3600))
        .expires_in(Duration::from_secs(1))
        .build()
        .unwrap();
    let old = c.get_object().bucket(&b).key("p").presigned(cfg).await.unwrap();
    let r = send_presigned(&old, b"").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.code(), Some("AccessDenied"), "{}", r.body);
}

#[tokio::test]
async fn storage_class_is_kept() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("sc");
    create_bucket(&c, &b).await;
    c.put_object()
        .bucket(&b)
        .key("k")
        .storage_class(aws_sdk_s3::types::StorageClass::StandardIa)
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap();
    let h = c.head_object().bucket(&b).key("k").send().await.unwrap();
    assert_eq!(h.storage_class().map(|s| s.as_str()), Some("STANDARD_IA"));
    let l = c.list_objects_v2().bucket(&b).send().await.unwrap();
    assert_eq!(l.contents()[0].storage_class().map(|s| s.as_str()), Some("STANDARD_IA"));
}

/// `aws-chunked` in `Content-Encoding` says how the request body was sent, not how the object
/// is encoded: it is not stored; the other codings are, as given.
#[tokio::test]
async fn aws_chunked_is_not_kept_as_a_content_encoding() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("enc");
    create_bucket(&c, &b).await;
    for (given, kept) in [
        ("gzip", Some("gzip")),
        ("deflate, gzip", Some("deflate, gzip")),
        ("gzip, aws-chunked", Some("gzip")),
        ("aws-chunked, gzip", Some("gzip")),
        ("aws-chunked", None),
    ] {
        c.put_object().bucket(&b).key("k").content_encoding(given).body(b"x".to_vec().into()).send().await.unwrap();
        let h = c.head_object().bucket(&b).key("k").send().await.unwrap();
        assert_eq!(h.content_encoding(), kept, "{given}");
    }
}
