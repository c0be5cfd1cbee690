//! Multipart uploads.

use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

use crate::common::*;

const MIB: usize = 1024 * 1024;

fn part_data(n: usize, size: usize) -> Vec<u8> {
    (0..size).map(|i| ((i * 31 + n * 7) % 251) as u8).collect()
}

async fn upload_parts(c: &aws_sdk_s3::Client, b: &str, k: &str, sizes: &[usize]) -> (String, Vec<CompletedPart>, Vec<u8>) {
    let up = c.create_multipart_upload().bucket(b).key(k).content_type("video/mp4").metadata("m", "1").send().await.unwrap();
    let id = up.upload_id().unwrap().to_owned();
    let mut parts = Vec::new();
    let mut all = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let n = i as i32 + 1;
        let data = part_data(i, *size);
        let out = c.upload_part().bucket(b).key(k).upload_id(&id).part_number(n).body(data.clone().into()).send().await.unwrap();
        assert_eq!(out.e_tag(), Some(format!("\"{}\"", md5_hex(&data)).as_str()));
        parts.push(CompletedPart::builder().part_number(n).e_tag(out.e_tag().unwrap()).build());
        all.extend_from_slice(&data);
    }
    (id, parts, all)
}

#[tokio::test]
async fn complete_read_back_and_etag() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("mp");
    create_bucket(&c, &b).await;
    let (id, parts, all) = upload_parts(&c, &b, "video", &[5 * MIB, 5 * MIB, 1234]).await;
    let listed = c.list_parts().bucket(&b).key("video").upload_id(&id).send().await.unwrap();
    assert_eq!(listed.parts().len(), 3);
    assert_eq!(listed.parts()[2].size(), Some(1234));
    let ups = c.list_multipart_uploads().bucket(&b).send().await.unwrap();
    assert_eq!(ups.uploads().len(), 1);
    let out = c
        .complete_multipart_upload()
        .bucket(&b)
        .key("video")
        .upload_id(&id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .unwrap();
    let etag = out.e_tag().unwrap().trim_matches('"').to_owned();
    assert!(etag.ends_with("-3"), "{etag}");
    assert_eq!(get_bytes(&c, &b, "video").await, all);
    let h = c.head_object().bucket(&b).key("video").send().await.unwrap();
    assert_eq!(h.content_type(), Some("video/mp4"));
    assert_eq!(h.metadata().and_then(|m| m.get("m")).map(String::as_str), Some("1"));
    // GET by part number returns that part and the part count.
    let p2 = c.get_object().bucket(&b).key("video").part_number(2).send().await.unwrap();
    assert_eq!(p2.parts_count(), Some(3));
    assert_eq!(p2.content_length(), Some(5 * MIB as i64));
    assert_eq!(p2.body.collect().await.unwrap().into_bytes().as_ref(), &all[5 * MIB..10 * MIB]);
    // Ranges across part boundaries.
    let r =
        c.get_object().bucket(&b).key("video").range(format!("bytes={}-{}", 5 * MIB - 10, 10 * MIB + 10)).send().await.unwrap();
    assert_eq!(r.body.collect().await.unwrap().into_bytes().as_ref(), &all[5 * MIB - 10..=10 * MIB + 10]);
    assert!(c.list_multipart_uploads().bucket(&b).send().await.unwrap().uploads().is_empty());

    // Completing did not copy: the version's body is the uploaded part files themselves.
    let store = s.store();
    let (bb, _) = (b.clone(), ());
    let v = store.meta.read(move |r| r.get_latest(&bb, "video")).await.unwrap().unwrap();
    match v.layout {
        ferry_store::model::BodyLayout::Parts { parts, multipart } => {
            assert!(multipart);
            assert_eq!(parts.len(), 3);
        }
        other => panic!("expected parts, got {other:?}"),
    }
}

#[tokio::test]
async fn completion_rules() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("mprules");
    create_bucket(&c, &b).await;
    let (id, parts, _) = upload_parts(&c, &b, "k", &[100, 100]).await;
    let complete = |ps: Vec<CompletedPart>| {
        c.complete_multipart_upload()
            .bucket(&b)
            .key("k")
            .upload_id(&id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(ps)).build())
            .send()
    };
    let e = complete(parts.clone()).await.unwrap_err();
    assert_eq!(code(&e), "EntityTooSmall");
    let e = complete(vec![parts[1].clone(), parts[0].clone()]).await.unwrap_err();
    assert_eq!(code(&e), "InvalidPartOrder");
    let wrong = CompletedPart::builder().part_number(1).e_tag("\"00000000000000000000000000000000\"").build();
    assert_eq!(code(&complete(vec![wrong]).await.unwrap_err()), "InvalidPart");
    let missing = CompletedPart::builder().part_number(7).e_tag(parts[0].e_tag().unwrap()).build();
    assert_eq!(code(&complete(vec![missing]).await.unwrap_err()), "InvalidPart");
    // A single small part is fine (the last part has no minimum).
    let done = complete(vec![parts[0].clone()]).await.unwrap();
    assert_eq!(get_bytes(&c, &b, "k").await, part_data(0, 100));
    // The upload is gone now; completing it again (a retry) is answered as the first time.
    let again = complete(vec![parts[0].clone()]).await.unwrap();
    assert_eq!(again.e_tag(), done.e_tag());
    let listed = c.list_object_versions().bucket(&b).send().await.unwrap();
    assert_eq!(listed.versions().len(), 1, "a retried completion writes nothing");
    assert_eq!(
        code(&c.list_parts().bucket(&b).key("k").upload_id(&id).send().await.unwrap_err()),
        "NoSuchUpload"
    );
    // An upload of another key, or one that never was, does not exist.
    let e = c
        .complete_multipart_upload()
        .bucket(&b)
        .key("other")
        .upload_id(&id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(vec![parts[0].clone()])).build())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NoSuchUpload");
}

#[tokio::test]
async fn abort_and_part_replacement() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("mpabort");
    create_bucket(&c, &b).await;
    let up = c.create_multipart_upload().bucket(&b).key("k").send().await.unwrap();
    let id = up.upload_id().unwrap();
    c.upload_part().bucket(&b).key("k").upload_id(id).part_number(1).body(b"first".to_vec().into()).send().await.unwrap();
    let second =
        c.upload_part().bucket(&b).key("k").upload_id(id).part_number(1).body(b"second!".to_vec().into()).send().await.unwrap();
    let parts = c.list_parts().bucket(&b).key("k").upload_id(id).send().await.unwrap();
    assert_eq!(parts.parts().len(), 1);
    assert_eq!(parts.parts()[0].e_tag(), second.e_tag());
    c.abort_multipart_upload().bucket(&b).key("k").upload_id(id).send().await.unwrap();
    let e = c.list_parts().bucket(&b).key("k").upload_id(id).send().await.unwrap_err();
    assert_eq!(code(&e), "NoSuchUpload");
    let e = c
        .upload_part()
        .bucket(&b)
        .key("k")
        .upload_id("nonexistent")
        .part_number(1)
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NoSuchUpload");
    let e = c
        .upload_part()
        .bucket(&b)
        .key("k")
        .upload_id(id)
        .part_number(10_001)
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap_err();
    assert!(matches!(code(&e).as_str(), "InvalidArgument" | "NoSuchUpload"));
}

#[tokio::test]
async fn upload_part_copy_with_ranges() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("mpcopy");
    create_bucket(&c, &b).await;
    let src: Vec<u8> = part_data(3, 6 * MIB);
    put(&c, &b, "src", &src).await;
    let up = c.create_multipart_upload().bucket(&b).key("dst").send().await.unwrap();
    let id = up.upload_id().unwrap();
    let p1 = c
        .upload_part_copy()
        .bucket(&b)
        .key("dst")
        .upload_id(id)
        .part_number(1)
        .copy_source(format!("{b}/src"))
        .copy_source_range(format!("bytes=0-{}", 5 * MIB - 1))
        .send()
        .await
        .unwrap();
    let p2 = c
        .upload_part_copy()
        .bucket(&b)
        .key("dst")
        .upload_id(id)
        .part_number(2)
        .copy_source(format!("{b}/src"))
        .copy_source_range("bytes=100-199")
        .send()
        .await
        .unwrap();
    let e = c
        .upload_part_copy()
        .bucket(&b)
        .key("dst")
        .upload_id(id)
        .part_number(3)
        .copy_source(format!("{b}/src"))
        .copy_source_range(format!("bytes=0-{}", 6 * MIB))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidRange");
    let parts = vec![
        CompletedPart::builder().part_number(1).e_tag(p1.copy_part_result().unwrap().e_tag().unwrap()).build(),
        CompletedPart::builder().part_number(2).e_tag(p2.copy_part_result().unwrap().e_tag().unwrap()).build(),
    ];
    c.complete_multipart_upload()
        .bucket(&b)
        .key("dst")
        .upload_id(id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .unwrap();
    let mut expect = src[..5 * MIB].to_vec();
    expect.extend_from_slice(&src[100..200]);
    assert_eq!(get_bytes(&c, &b, "dst").await, expect);
}

/// GetObjectAttributes: a plain object's size, ETag, storage class and checksum; a multipart
/// object's parts, a page at a time; a version by id; a key that is gone.
#[tokio::test]
async fn object_attributes_describe_a_version_without_its_body() {
    use aws_sdk_s3::types::{ChecksumAlgorithm, ObjectAttributes as A};
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("attrs");
    create_bucket(&c, &b).await;
    enable_versioning(&c, &b).await;
    let all = [A::Etag, A::Checksum, A::ObjectParts, A::StorageClass, A::ObjectSize];
    let put = c
        .put_object()
        .bucket(&b)
        .key("plain")
        .body(b"foo".to_vec().into())
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .send()
        .await
        .unwrap();
    let got = c.get_object_attributes().bucket(&b).key("plain").set_object_attributes(Some(all.to_vec())).send().await.unwrap();
    assert_eq!(got.object_size(), Some(3));
    assert_eq!(
        got.e_tag(),
        put.e_tag().map(|e| e.trim_matches('"')),
        "GetObjectAttributes answers the ETag unquoted"
    );
    assert_eq!(got.storage_class().map(|s| s.as_str()), Some("STANDARD"));
    assert_eq!(got.checksum().and_then(|c| c.checksum_sha256()), put.checksum_sha256());
    assert!(got.object_parts().is_none(), "not a multipart object");
    assert_eq!(got.version_id(), put.version_id());
    // Only what is asked for.
    let size_only = c.get_object_attributes().bucket(&b).key("plain").object_attributes(A::ObjectSize).send().await.unwrap();
    assert_eq!((size_only.object_size(), size_only.e_tag()), (Some(3), None));

    let (id, parts, data) = upload_parts(&c, &b, "mp", &[5 * MIB, 5 * MIB, 5 * MIB, 1024]).await;
    let done = CompletedMultipartUpload::builder().set_parts(Some(parts)).build();
    c.complete_multipart_upload().bucket(&b).key("mp").upload_id(&id).multipart_upload(done).send().await.unwrap();
    let page = |marker: i32, max: i32| {
        c.get_object_attributes()
            .bucket(&b)
            .key("mp")
            .set_object_attributes(Some(all.to_vec()))
            .part_number_marker(marker.to_string())
            .max_parts(max)
            .send()
    };
    let first = page(0, 2).await.unwrap();
    assert_eq!(first.object_size(), Some(data.len() as i64));
    let p = first.object_parts().unwrap();
    assert_eq!(
        (p.total_parts_count(), p.is_truncated(), p.next_part_number_marker(), p.max_parts()),
        (Some(4), Some(true), Some("2"), Some(2))
    );
    assert_eq!(
        p.parts().iter().map(|x| (x.part_number(), x.size())).collect::<Vec<_>>(),
        [(Some(1), Some(5 * MIB as i64)), (Some(2), Some(5 * MIB as i64))]
    );
    let rest = page(2, 10).await.unwrap();
    let p = rest.object_parts().unwrap();
    assert_eq!((p.is_truncated(), p.next_part_number_marker()), (Some(false), None));
    assert_eq!(
        p.parts().iter().map(|x| (x.part_number(), x.size())).collect::<Vec<_>>(),
        [(Some(3), Some(5 * MIB as i64)), (Some(4), Some(1024))]
    );

    // An older version by id; a key whose latest is a delete marker.
    let v1 = put.version_id().unwrap();
    c.put_object().bucket(&b).key("plain").body(b"longer".to_vec().into()).send().await.unwrap();
    let old =
        c.get_object_attributes().bucket(&b).key("plain").version_id(v1).object_attributes(A::ObjectSize).send().await.unwrap();
    assert_eq!(old.object_size(), Some(3));
    c.delete_object().bucket(&b).key("plain").send().await.unwrap();
    let e = c.get_object_attributes().bucket(&b).key("plain").object_attributes(A::ObjectSize).send().await.unwrap_err();
    assert_eq!(code(&e), "NoSuchKey");
}

/// A checksum value of an output, by algorithm.
macro_rules! checksum_of {
    ($out:expr, $alg:expr) => {
        match $alg {
            ChecksumAlgorithm::Crc32 => $out.checksum_crc32(),
            ChecksumAlgorithm::Crc64Nvme => $out.checksum_crc64_nvme(),
            ChecksumAlgorithm::Sha256 => $out.checksum_sha256(),
            _ => unreachable!("not used here"),
        }
    };
}

/// Full-object CRCs (the parts' CRCs combined into the whole body's) and composite checksums
/// for multipart uploads, checked against a claimed value at completion, returned for the object
/// and for each part; and a retried completion answered as the first one was. The part bodies
/// and the expected values are the ones the ceph suite publishes (three 5 MiB parts of 'A', 'B', 'C').
#[tokio::test]
async fn multipart_checksums_full_object_and_composite() {
    use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode, ChecksumType};
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("mpck");
    create_bucket(&c, &b).await;
    let cases = [
        (
            ChecksumAlgorithm::Crc32,
            Some(ChecksumType::FullObject),
            ["JRTCyQ==", "QoZTGg==", "YAgjqw=="],
            "WgDhBQ==",
            "AAAAAA==",
        ),
        (
            ChecksumAlgorithm::Crc64Nvme,
            None,
            ["L/E4WYn8v98=", "xW1l19VobYM=", "cK5MnNaWrW4="],
            "i+6LR0y3eFo=",
            "AAAAAAAAAAA=",
        ),
        (
            ChecksumAlgorithm::Sha256,
            Some(ChecksumType::Composite),
            [
                "275VF5loJr1YYawit0XSHREhkFXYkkPKGuoK0x9VKxI=",
                "mrHwOfjTL5Zwfj74F05HOQGLdUb7E5szdCbxgUSq6NM=",
                "Vw7oB/nKQ5xWb3hNgbyfkvDiivl+U+/Dft48nfJfDow=",
            ],
            "uWBwpe1dxI4Vw8Gf0X9ynOdw/SS6VBzfWm9giiv1sf4=-3",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ),
    ];
    for (alg, asked, part_values, whole, wrong) in cases {
        let key = alg.as_str().to_owned();
        let kind = asked.clone().unwrap_or(ChecksumType::FullObject);
        let up = c
            .create_multipart_upload()
            .bucket(&b)
            .key(&key)
            .checksum_algorithm(alg.clone())
            .set_checksum_type(asked.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(up.checksum_type(), Some(&kind), "{key}");
        let id = up.upload_id().unwrap();
        let mut parts = Vec::new();
        for (i, fill) in [b'A', b'B', b'C'].into_iter().enumerate() {
            let n = i as i32 + 1;
            let out = c
                .upload_part()
                .bucket(&b)
                .key(&key)
                .upload_id(id)
                .part_number(n)
                .checksum_algorithm(alg.clone())
                .body(vec![fill; 5 * MIB].into())
                .send()
                .await
                .unwrap();
            assert_eq!(checksum_of!(out, alg), Some(part_values[i]), "{key} part {n}");
            parts.push(CompletedPart::builder().part_number(n).e_tag(out.e_tag().unwrap()).build());
        }
        let complete = |claim: &str| {
            let req = c
                .complete_multipart_upload()
                .bucket(&b)
                .key(&key)
                .upload_id(id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts.clone())).build());
            match alg {
                ChecksumAlgorithm::Crc32 => req.checksum_crc32(claim),
                ChecksumAlgorithm::Crc64Nvme => req.checksum_crc64_nvme(claim),
                _ => req.checksum_sha256(claim),
            }
        };
        let e = complete(wrong).send().await.unwrap_err();
        assert_eq!(code(&e), "BadDigest", "{key}");
        let first = complete(whole).send().await.unwrap();
        assert_eq!((first.checksum_type(), checksum_of!(first, alg)), (Some(&kind), Some(whole)), "{key}");
        // A client whose answer was lost completes again: the same answer.
        let again = complete(whole).send().await.unwrap();
        assert_eq!((again.e_tag(), again.version_id()), (first.e_tag(), first.version_id()), "{key}");
        assert_eq!(checksum_of!(again, alg), Some(whole), "{key}");

        let head = c.head_object().bucket(&b).key(&key).checksum_mode(ChecksumMode::Enabled).send().await.unwrap();
        assert_eq!((head.checksum_type(), checksum_of!(head, alg)), (Some(&kind), Some(whole)), "{key}");
        for (i, value) in part_values.iter().enumerate() {
            let n = i as i32 + 1;
            let p = c.get_object().bucket(&b).key(&key).part_number(n).checksum_mode(ChecksumMode::Enabled).send().await.unwrap();
            assert_eq!((p.checksum_type(), checksum_of!(p, alg)), (Some(&kind), Some(*value)), "{key} part {n}");
        }
        // The SDK checks a full-object CRC against the bytes it reads.
        let got = c.get_object().bucket(&b).key(&key).checksum_mode(ChecksumMode::Enabled).send().await.unwrap();
        assert_eq!(got.body.collect().await.unwrap().into_bytes().len(), 15 * MIB);

        // Once the key has a newer version, the upload is gone for good.
        put(&c, &b, &key, b"newer").await;
        let e = complete(whole).send().await.unwrap_err();
        assert_eq!(code(&e), "NoSuchUpload", "{key}");
    }

    // The combinations S3 refuses.
    for (alg, kind) in [
        (Some(ChecksumAlgorithm::Sha256), ChecksumType::FullObject),
        (Some(ChecksumAlgorithm::Crc64Nvme), ChecksumType::Composite),
        (None, ChecksumType::FullObject),
    ] {
        let e = c
            .create_multipart_upload()
            .bucket(&b)
            .key("refused")
            .set_checksum_algorithm(alg.clone())
            .checksum_type(kind.clone())
            .send()
            .await
            .unwrap_err();
        assert_eq!(code(&e), "InvalidRequest", "{alg:?} {kind:?}");
    }
}
