//! Bucket operations through aws-sdk-s3.

use aws_sdk_s3::types::{
    BucketCannedAcl, BucketLocationConstraint, BucketVersioningStatus, CreateBucketConfiguration, Tag, Tagging,
    VersioningConfiguration,
};

use crate::common::*;

#[tokio::test]
async fn create_head_list_location_delete() {
    let s = TestServer::start_named("eu-west-1").await;
    let c = s.client();
    let b = bucket_name("bk");
    c.create_bucket()
        .bucket(&b)
        .create_bucket_configuration(
            CreateBucketConfiguration::builder().location_constraint(BucketLocationConstraint::EuWest1).build(),
        )
        .send()
        .await
        .unwrap();
    c.head_bucket().bucket(&b).send().await.unwrap();
    let loc = c.get_bucket_location().bucket(&b).send().await.unwrap();
    assert_eq!(loc.location_constraint().map(|l| l.as_str()), Some("eu-west-1"));
    let list = c.list_buckets().send().await.unwrap();
    assert!(list.buckets().iter().any(|x| x.name() == Some(b.as_str())));
    assert_eq!(list.owner().and_then(|o| o.display_name()), Some("main"));
    // The alt user does not see main's buckets.
    let alt = s.alt_client().list_buckets().send().await.unwrap();
    assert!(!alt.buckets().iter().any(|x| x.name() == Some(b.as_str())));

    // Same name again: owned by you (outside us-east-1, which answers 200); by someone else:
    // already exists.
    let e = c.create_bucket().bucket(&b).send().await.unwrap_err();
    assert_eq!(code(&e), "BucketAlreadyOwnedByYou");
    let e = s.alt_client().create_bucket().bucket(&b).send().await.unwrap_err();
    assert_eq!(code(&e), "BucketAlreadyExists");

    put(&c, &b, "k", b"x").await;
    let e = c.delete_bucket().bucket(&b).send().await.unwrap_err();
    assert_eq!(code(&e), "BucketNotEmpty");
    c.delete_object().bucket(&b).key("k").send().await.unwrap();
    c.delete_bucket().bucket(&b).send().await.unwrap();
    let e = c.head_bucket().bucket(&b).send().await.unwrap_err();
    assert_eq!(status(&e), 404);
}

#[tokio::test]
async fn us_east_1_recreate_is_a_no_op() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("again");
    create_bucket(&c, &b).await;
    put(&c, &b, "k", b"kept").await;
    c.create_bucket().bucket(&b).send().await.unwrap();
    assert_eq!(get_bytes(&c, &b, "k").await, b"kept");
    assert_eq!(
        code(&s.alt_client().create_bucket().bucket(&b).send().await.unwrap_err()),
        "BucketAlreadyExists"
    );
}

#[tokio::test]
async fn location_constraint_must_match_the_region() {
    let s = TestServer::start_named("eu-west-1").await;
    let c = s.client();
    let e = c
        .create_bucket()
        .bucket(bucket_name("wrong"))
        .create_bucket_configuration(
            CreateBucketConfiguration::builder().location_constraint(BucketLocationConstraint::ApSouth1).build(),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "IllegalLocationConstraintException");
}

#[tokio::test]
async fn versioned_bucket_with_versions_is_not_empty() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("vne");
    create_versioned_bucket(&c, &b).await;
    put(&c, &b, "k", b"x").await;
    c.delete_object().bucket(&b).key("k").send().await.unwrap();
    // Only a delete marker and an old version remain: still not empty.
    let e = c.delete_bucket().bucket(&b).send().await.unwrap_err();
    assert_eq!(code(&e), "BucketNotEmpty");
}

#[tokio::test]
async fn versioning_states() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("ver");
    create_bucket(&c, &b).await;
    assert!(c.get_bucket_versioning().bucket(&b).send().await.unwrap().status().is_none());
    for st in [BucketVersioningStatus::Enabled, BucketVersioningStatus::Suspended, BucketVersioningStatus::Enabled] {
        c.put_bucket_versioning()
            .bucket(&b)
            .versioning_configuration(VersioningConfiguration::builder().status(st.clone()).build())
            .send()
            .await
            .unwrap();
        assert_eq!(c.get_bucket_versioning().bucket(&b).send().await.unwrap().status(), Some(&st));
    }
    // Only the owner may change it.
    let e = s
        .alt_client()
        .put_bucket_versioning()
        .bucket(&b)
        .versioning_configuration(VersioningConfiguration::builder().status(BucketVersioningStatus::Suspended).build())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
}

#[tokio::test]
async fn bucket_tagging() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("tags");
    create_bucket(&c, &b).await;
    let e = c.get_bucket_tagging().bucket(&b).send().await.unwrap_err();
    assert_eq!(code(&e), "NoSuchTagSet");
    let tagging = Tagging::builder()
        .tag_set(Tag::builder().key("team").value("storage").build().unwrap())
        .tag_set(Tag::builder().key("env").value("prod").build().unwrap())
        .build()
        .unwrap();
    c.put_bucket_tagging().bucket(&b).tagging(tagging).send().await.unwrap();
    let got = c.get_bucket_tagging().bucket(&b).send().await.unwrap();
    let pairs: Vec<_> = got.tag_set().iter().map(|t| (t.key().to_owned(), t.value().to_owned())).collect();
    assert_eq!(
        pairs,
        vec![("env".to_owned(), "prod".to_owned()), ("team".to_owned(), "storage".to_owned())],
        "stored sorted by key"
    );
    c.delete_bucket_tagging().bucket(&b).send().await.unwrap();
    assert_eq!(code(&c.get_bucket_tagging().bucket(&b).send().await.unwrap_err()), "NoSuchTagSet");
    // Duplicate keys are refused.
    let dup = Tagging::builder()
        .tag_set(Tag::builder().key("a").value("1").build().unwrap())
        .tag_set(Tag::builder().key("a").value("2").build().unwrap())
        .build()
        .unwrap();
    assert_eq!(
        code(&c.put_bucket_tagging().bucket(&b).tagging(dup).send().await.unwrap_err()),
        "InvalidTag"
    );
}

#[tokio::test]
async fn bucket_acl_controls_other_users() {
    let s = TestServer::start().await;
    let c = s.client();
    let alt = s.alt_client();
    let b = bucket_name("acl");
    create_bucket(&c, &b).await;
    put(&c, &b, "k", b"data").await;
    // Private by default.
    assert_eq!(code(&alt.list_objects_v2().bucket(&b).send().await.unwrap_err()), "AccessDenied");
    let acl = c.get_bucket_acl().bucket(&b).send().await.unwrap();
    assert_eq!(acl.owner().and_then(|o| o.display_name()), Some("main"));
    assert_eq!(acl.grants().len(), 1);
    assert_eq!(acl.grants()[0].permission().map(|p| p.as_str()), Some("FULL_CONTROL"));

    c.put_bucket_acl().bucket(&b).acl(BucketCannedAcl::PublicRead).send().await.unwrap();
    let acl = c.get_bucket_acl().bucket(&b).send().await.unwrap();
    assert_eq!(acl.grants().len(), 2);
    assert_eq!(alt.list_objects_v2().bucket(&b).send().await.unwrap().key_count(), Some(1));
    // READ on the bucket is not WRITE.
    let e = alt.put_object().bucket(&b).key("alt").body(b"x".to_vec().into()).send().await.unwrap_err();
    assert_eq!(code(&e), "AccessDenied");

    // Anonymous listing of a public-read bucket.
    let r = raw_http(
        s.addr,
        format!("GET /{b}?list-type=2 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("<Key>k</Key>"));
    c.put_bucket_acl().bucket(&b).acl(BucketCannedAcl::Private).send().await.unwrap();
    let r = raw_http(
        s.addr,
        format!("GET /{b}?list-type=2 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 403);
}

/// SigV2 (botocore's `s3` signature version, and older tools) signs a path-style request for a
/// bucket's root, `PUT /bucket` (CreateBucket) among them, with the resource `/bucket/`, as S3
/// verifies it. Such requests were all refused with SignatureDoesNotMatch. And a SigV2 request
/// is held to its date, as a SigV4 one is: one dated more than 15 minutes away is refused.
#[tokio::test]
async fn sigv2_requests_for_a_bucket_root_verify() {
    use base64::Engine as _;
    use hmac::{KeyInit as _, Mac as _};
    let s = TestServer::start().await;
    let b = bucket_name("sigvtwo");
    let format =
        time::macros::format_description!("[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT");
    let now = time::OffsetDateTime::now_utc();
    let request_at = |date: &str, method: &str, resource: &str| {
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(MAIN_SK.as_bytes()).unwrap();
        mac.update(format!("{method}\n\n\n{date}\n{resource}").as_bytes());
        let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        format!(
            "{method} /{b} HTTP/1.1\r\nHost: 127.0.0.1\r\nDate: {date}\r\nAuthorization: AWS {MAIN_AK}:{signature}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
    };
    let date = now.format(&format).unwrap();
    let request = |method: &str, resource: &str| request_at(&date, method, resource);
    // Signed well, but dated an hour ago (a recorded request, replayed), or not dated at all.
    let old = (now - time::Duration::hours(1)).format(&format).unwrap();
    let r = raw_http(s.addr, request_at(&old, "PUT", &format!("/{b}/")).as_bytes()).await;
    assert_eq!((r.status, r.code()), (403, Some("RequestTimeTooSkewed")), "{}", r.body);
    let r = raw_http(s.addr, request_at("yesterday", "PUT", &format!("/{b}/")).as_bytes()).await;
    assert_eq!((r.status, r.code()), (403, Some("AccessDenied")), "{}", r.body);
    // Signed for another bucket: still refused.
    let r = raw_http(s.addr, request("PUT", "/other/").as_bytes()).await;
    assert_eq!((r.status, r.code()), (403, Some("SignatureDoesNotMatch")), "{}", r.body);
    for (method, want) in [("PUT", 200), ("GET", 200), ("DELETE", 204)] {
        let r = raw_http(s.addr, request(method, &format!("/{b}/")).as_bytes()).await;
        assert_eq!(r.status, want, "{method}: {}", r.body);
        if method == "PUT" {
            s.client().head_bucket().bucket(&b).send().await.expect("the bucket was created");
        }
    }
}
