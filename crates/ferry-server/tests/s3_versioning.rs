//! Versioning semantics as AWS defines them.

use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};

use crate::common::*;

async fn set_versioning(c: &aws_sdk_s3::Client, b: &str, st: BucketVersioningStatus) {
    c.put_bucket_versioning()
        .bucket(b)
        .versioning_configuration(VersioningConfiguration::builder().status(st).build())
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn versions_delete_markers_and_get_by_version() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("vers");
    create_versioned_bucket(&c, &b).await;
    let v1 = put(&c, &b, "k", b"one").await.version_id().unwrap().to_owned();
    let v2 = put(&c, &b, "k", b"two").await.version_id().unwrap().to_owned();
    assert_ne!(v1, v2);
    assert_eq!(get_bytes(&c, &b, "k").await, b"two");
    let old = c.get_object().bucket(&b).key("k").version_id(&v1).send().await.unwrap();
    assert_eq!(old.version_id(), Some(v1.as_str()));
    assert_eq!(old.body.collect().await.unwrap().into_bytes().as_ref(), b"one");

    let del = c.delete_object().bucket(&b).key("k").send().await.unwrap();
    assert_eq!(del.delete_marker(), Some(true));
    let marker = del.version_id().unwrap().to_owned();

    // GET of a deleted key: 404 NoSuchKey with the marker headers.
    let r = raw_get(&s, &b, "k", None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.code(), Some("NoSuchKey"));
    assert_eq!(r.header("x-amz-delete-marker"), Some("true"));
    assert_eq!(r.header("x-amz-version-id"), Some(marker.as_str()));
    // GET of the marker's version id: 405.
    let e = c.get_object().bucket(&b).key("k").version_id(&marker).send().await.unwrap_err();
    assert_eq!(status(&e), 405);
    // HEAD of the marker version: 405 too.
    let e = c.head_object().bucket(&b).key("k").version_id(&marker).send().await.unwrap_err();
    assert_eq!(status(&e), 405);

    let list = c.list_object_versions().bucket(&b).send().await.unwrap();
    assert_eq!(list.versions().len(), 2);
    assert_eq!(list.delete_markers().len(), 1);
    assert_eq!(list.delete_markers()[0].is_latest(), Some(true));
    assert_eq!(list.versions()[0].version_id(), Some(v2.as_str()), "newest first");

    // Deleting the marker restores v2; deleting v2 for good makes v1 current.
    let d = c.delete_object().bucket(&b).key("k").version_id(&marker).send().await.unwrap();
    assert_eq!(d.delete_marker(), Some(true));
    assert_eq!(get_bytes(&c, &b, "k").await, b"two");
    c.delete_object().bucket(&b).key("k").version_id(&v2).send().await.unwrap();
    assert_eq!(get_bytes(&c, &b, "k").await, b"one");
    let e = c.get_object().bucket(&b).key("k").version_id(&v2).send().await.unwrap_err();
    assert_eq!(code(&e), "NoSuchVersion");
    let e = c.get_object().bucket(&b).key("k").version_id("not a valid id").send().await.unwrap_err();
    assert_eq!(code(&e), "InvalidArgument");
}

async fn raw_get(s: &TestServer, b: &str, k: &str, _v: Option<&str>) -> RawResponse {
    // Anonymous would be AccessDenied; use a presigned URL for a raw view of headers.
    let req = s
        .client()
        .get_object()
        .bucket(b)
        .key(k)
        .presigned(aws_sdk_s3::presigning::PresigningConfig::expires_in(std::time::Duration::from_secs(60)).unwrap())
        .await
        .unwrap();
    send_presigned(&req, b"").await
}

#[tokio::test]
async fn null_version_in_unversioned_and_suspended_buckets() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("null");
    create_bucket(&c, &b).await;
    put(&c, &b, "k", b"unversioned").await;
    set_versioning(&c, &b, BucketVersioningStatus::Enabled).await;
    let v = put(&c, &b, "k", b"versioned").await.version_id().unwrap().to_owned();
    // The pre-versioning object is the null version.
    let n = c.get_object().bucket(&b).key("k").version_id("null").send().await.unwrap();
    assert_eq!(n.body.collect().await.unwrap().into_bytes().as_ref(), b"unversioned");

    set_versioning(&c, &b, BucketVersioningStatus::Suspended).await;
    let o = put(&c, &b, "k", b"suspended-1").await;
    assert_eq!(o.version_id(), None, "writes to a suspended bucket report no version id");
    put(&c, &b, "k", b"suspended-2").await;
    let list = c.list_object_versions().bucket(&b).send().await.unwrap();
    let ids: Vec<_> = list.versions().iter().map(|x| x.version_id().unwrap().to_owned()).collect();
    assert_eq!(ids, vec!["null".to_owned(), v.clone()], "the null version was overwritten in place");
    assert_eq!(get_bytes(&c, &b, "k").await, b"suspended-2");

    // A delete in a suspended bucket makes a null delete marker, replacing the null version.
    let d = c.delete_object().bucket(&b).key("k").send().await.unwrap();
    assert_eq!(d.version_id(), Some("null"));
    assert_eq!(d.delete_marker(), Some(true));
    let list = c.list_object_versions().bucket(&b).send().await.unwrap();
    assert_eq!(list.versions().len(), 1);
    assert_eq!(list.delete_markers().len(), 1);
    assert_eq!(
        c.get_object().bucket(&b).key("k").version_id(&v).send().await.unwrap().content_length(),
        Some(9)
    );
}

#[tokio::test]
async fn version_listing_paginates_with_markers() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("vpage");
    create_versioned_bucket(&c, &b).await;
    let mut expected = Vec::new();
    for k in ["a", "b", "c"] {
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(put(&c, &b, k, format!("{k}{i}").as_bytes()).await.version_id().unwrap().to_owned());
        }
        ids.reverse();
        for id in ids {
            expected.push((k.to_owned(), id));
        }
    }
    let mut seen = Vec::new();
    let (mut km, mut vm): (Option<String>, Option<String>) = (None, None);
    loop {
        let out = c
            .list_object_versions()
            .bucket(&b)
            .max_keys(2)
            .set_key_marker(km.clone())
            .set_version_id_marker(vm.clone())
            .send()
            .await
            .unwrap();
        for v in out.versions() {
            seen.push((v.key().unwrap().to_owned(), v.version_id().unwrap().to_owned()));
        }
        if out.is_truncated() != Some(true) {
            break;
        }
        km = out.next_key_marker().map(str::to_owned);
        vm = out.next_version_id_marker().map(str::to_owned);
    }
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn version_listing_survives_deleting_the_marker_version() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("vdel");
    create_versioned_bucket(&c, &b).await;
    for i in 0..5 {
        put(&c, &b, "k", format!("{i}").as_bytes()).await;
    }
    // Empty the bucket page by page, deleting each page before asking for the next (the page's
    // last version, the next marker, no longer exists).
    let (mut km, mut vm): (Option<String>, Option<String>) = (None, None);
    for _ in 0..10 {
        let out = c
            .list_object_versions()
            .bucket(&b)
            .max_keys(2)
            .set_key_marker(km.clone())
            .set_version_id_marker(vm.clone())
            .send()
            .await
            .unwrap();
        for v in out.versions() {
            c.delete_object().bucket(&b).key(v.key().unwrap()).version_id(v.version_id().unwrap()).send().await.unwrap();
        }
        if out.is_truncated() != Some(true) {
            break;
        }
        km = out.next_key_marker().map(str::to_owned);
        vm = out.next_version_id_marker().map(str::to_owned);
    }
    assert!(c.list_object_versions().bucket(&b).send().await.unwrap().versions().is_empty());
    c.delete_bucket().bucket(&b).send().await.unwrap();
}
