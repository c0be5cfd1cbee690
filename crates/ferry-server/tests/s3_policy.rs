//! Bucket policies and Block Public Access through aws-sdk-s3 (and raw anonymous HTTP).

use aws_sdk_s3::error::ProvideErrorMetadata as _;
use aws_sdk_s3::types::{BucketCannedAcl, Delete, ObjectCannedAcl, ObjectIdentifier, PublicAccessBlockConfiguration};

use crate::common::*;

async fn put_policy(c: &aws_sdk_s3::Client, bucket: &str, policy: &str) {
    c.put_bucket_policy().bucket(bucket).policy(policy).send().await.expect("put bucket policy");
}

/// An anonymous GET of `bucket/key`: its status.
async fn anonymous_get(s: &TestServer, bucket: &str, key: &str) -> u16 {
    let request = format!("GET /{bucket}/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    raw_http(s.addr, request.as_bytes()).await.status
}

#[tokio::test]
async fn a_policy_is_put_read_checked_and_deleted() {
    let s = TestServer::start().await;
    let (c, alt) = (s.client(), s.alt_client());
    let b = bucket_name("pol");
    create_bucket(&c, &b).await;
    let e = c.get_bucket_policy().bucket(&b).send().await.unwrap_err();
    assert_eq!(code(&e), "NoSuchBucketPolicy");

    let policy = format!(
        r#"{{"Version": "2012-10-17", "Statement": [{{"Sid": "read", "Effect": "Allow", "Principal": "*",
            "Action": "s3:GetObject", "Resource": "arn:aws:s3:::{b}/public/*"}}]}}"#
    );
    put_policy(&c, &b, &policy).await;
    assert_eq!(c.get_bucket_policy().bucket(&b).send().await.unwrap().policy(), Some(policy.as_str()));
    let status = c.get_bucket_policy_status().bucket(&b).send().await.unwrap();
    assert_eq!(status.policy_status().and_then(|p| p.is_public()), Some(true));

    // Refused with what is wrong: an action that does not exist, a resource of another bucket.
    for (bad, names) in [
        (policy.replace("s3:GetObject", "s3:GetObjekt"), "s3:GetObjekt"),
        (
            policy.replace(&format!("arn:aws:s3:::{b}/"), "arn:aws:s3:::other/"),
            "arn:aws:s3:::other/public/*",
        ),
        ("{not json".to_owned(), "JSON"),
        // A policy variable would be matched as written, which is not what S3 does with it.
        (policy.replace("/public/*", "/home/${aws:username}/*"), "${aws:username}"),
    ] {
        let e = c.put_bucket_policy().bucket(&b).policy(bad).send().await.unwrap_err();
        assert_eq!(code(&e), "MalformedPolicy");
        assert!(e.message().unwrap_or_default().contains(names), "{:?}", e.message());
    }
    // Another account may not read or change it.
    assert_eq!(code(&alt.get_bucket_policy().bucket(&b).send().await.unwrap_err()), "AccessDenied");
    assert_eq!(code(&alt.delete_bucket_policy().bucket(&b).send().await.unwrap_err()), "AccessDenied");

    c.delete_bucket_policy().bucket(&b).send().await.unwrap();
    assert_eq!(code(&c.get_bucket_policy().bucket(&b).send().await.unwrap_err()), "NoSuchBucketPolicy");
    assert_eq!(
        code(&c.get_bucket_policy_status().bucket(&b).send().await.unwrap_err()),
        "NoSuchBucketPolicy"
    );
}

/// What a policy allows goes beyond the ACLs (another account, anonymous requests, a key
/// prefix, a listing prefix); what it denies is denied even to the owner; and a policy never
/// locks its owner out of the policy itself.
#[tokio::test]
async fn a_policy_grants_and_denies_beyond_the_acls() {
    let s = TestServer::start().await;
    let (c, alt) = (s.client(), s.alt_client());
    let b = bucket_name("polg");
    create_bucket(&c, &b).await;
    for key in ["public/a", "private/a", "home/alt/x", "home/other/y", "keep/1", "keep/2", "drop/1"] {
        put(&c, &b, key, b"v").await;
    }
    assert_eq!(
        code(&alt.get_object().bucket(&b).key("public/a").send().await.unwrap_err()),
        "AccessDenied"
    );
    assert_eq!(anonymous_get(&s, &b, "public/a").await, 403);

    let alt_id = account_of(ALT_AK);
    put_policy(
        &c,
        &b,
        &format!(
            r#"{{"Version": "2012-10-17", "Statement": [
                {{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::{b}/public/*"}},
                {{"Effect": "Allow", "Principal": {{"AWS": "arn:aws:iam::{alt_id}:root"}}, "Action": "s3:ListBucket",
                  "Resource": "arn:aws:s3:::{b}", "Condition": {{"StringLike": {{"s3:prefix": "home/alt/*"}}}}}},
                {{"Effect": "Allow", "Principal": {{"AWS": "{ALT_AK}"}}, "Action": ["s3:PutObject", "s3:DeleteObject"],
                  "Resource": "arn:aws:s3:::{b}/*"}},
                {{"Effect": "Deny", "Principal": "*", "Action": "s3:DeleteObject", "Resource": "arn:aws:s3:::{b}/keep/*"}}
            ]}}"#
        ),
    )
    .await;

    // Anyone may read public/*, nothing else.
    assert_eq!(anonymous_get(&s, &b, "public/a").await, 200);
    assert_eq!(anonymous_get(&s, &b, "private/a").await, 403);
    assert_eq!(
        alt.get_object().bucket(&b).key("public/a").send().await.unwrap().content_length(),
        Some(1)
    );
    assert_eq!(
        code(&alt.get_object().bucket(&b).key("private/a").send().await.unwrap_err()),
        "AccessDenied"
    );
    // The other account lists its prefix only.
    let listed = alt.list_objects_v2().bucket(&b).prefix("home/alt/").send().await.unwrap();
    assert_eq!(listed.key_count(), Some(1));
    assert_eq!(code(&alt.list_objects_v2().bucket(&b).send().await.unwrap_err()), "AccessDenied");
    assert_eq!(
        code(&alt.list_objects_v2().bucket(&b).prefix("home/").send().await.unwrap_err()),
        "AccessDenied"
    );
    // It may write and delete, but not in keep/, and neither may the owner.
    alt.put_object().bucket(&b).key("from-alt").body(b"x".to_vec().into()).send().await.unwrap();
    alt.delete_object().bucket(&b).key("drop/1").send().await.unwrap();
    assert_eq!(
        code(&alt.delete_object().bucket(&b).key("keep/1").send().await.unwrap_err()),
        "AccessDenied"
    );
    assert_eq!(
        code(&c.delete_object().bucket(&b).key("keep/1").send().await.unwrap_err()),
        "AccessDenied"
    );
    // DeleteObjects is one s3:DeleteObject per key.
    let ids = ["keep/2", "from-alt"].map(|k| ObjectIdentifier::builder().key(k).build().unwrap());
    let out = c
        .delete_objects()
        .bucket(&b)
        .delete(Delete::builder().set_objects(Some(ids.to_vec())).build().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(out.deleted().iter().filter_map(|d| d.key()).collect::<Vec<_>>(), ["from-alt"]);
    assert_eq!(
        out.errors().iter().map(|e| (e.key(), e.code())).collect::<Vec<_>>(),
        [(Some("keep/2"), Some("AccessDenied"))]
    );
    assert!(c.head_object().bucket(&b).key("keep/2").send().await.is_ok());

    // A policy that denies everything still lets the owner manage the policy.
    put_policy(
        &c,
        &b,
        &format!(r#"{{"Statement": {{"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": ["arn:aws:s3:::{b}", "arn:aws:s3:::{b}/*"]}}}}"#),
    )
    .await;
    assert_eq!(code(&c.get_object().bucket(&b).key("public/a").send().await.unwrap_err()), "AccessDenied");
    assert_eq!(code(&c.list_objects_v2().bucket(&b).send().await.unwrap_err()), "AccessDenied");
    assert!(c.get_bucket_policy().bucket(&b).send().await.is_ok());
    c.delete_bucket_policy().bucket(&b).send().await.unwrap();
    assert!(c.get_object().bucket(&b).key("public/a").send().await.is_ok());
}

/// `aws:SecureTransport` and `aws:SourceIp` come from the connection (plain HTTP on
/// 127.0.0.1 here).
#[tokio::test]
async fn conditions_see_the_connection() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("polc");
    create_bucket(&c, &b).await;
    put(&c, &b, "k", b"v").await;
    let deny_unless = |condition: &str| {
        format!(
            r#"{{"Statement": {{"Effect": "Deny", "Principal": "*", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::{b}/*",
                "Condition": {condition}}}}}"#
        )
    };
    put_policy(&c, &b, &deny_unless(r#"{"Bool": {"aws:SecureTransport": "false"}}"#)).await;
    assert_eq!(code(&c.get_object().bucket(&b).key("k").send().await.unwrap_err()), "AccessDenied");
    put_policy(&c, &b, &deny_unless(r#"{"NotIpAddress": {"aws:SourceIp": "127.0.0.0/8"}}"#)).await;
    assert!(c.get_object().bucket(&b).key("k").send().await.is_ok(), "the client is on 127.0.0.1");
    put_policy(&c, &b, &deny_unless(r#"{"IpAddress": {"aws:SourceIp": "127.0.0.1/32"}}"#)).await;
    assert_eq!(code(&c.get_object().bucket(&b).key("k").send().await.unwrap_err()), "AccessDenied");
}

/// A copy reads its source with the source bucket's policy and ACLs, whatever the destination
/// bucket's policy grants.
#[tokio::test]
async fn a_copy_needs_the_right_to_read_its_source() {
    let s = TestServer::start().await;
    let (c, alt) = (s.client(), s.alt_client());
    let (src, dst) = (bucket_name("polsrc"), bucket_name("poldst"));
    create_bucket(&c, &src).await;
    create_bucket(&c, &dst).await;
    put(&c, &src, "secret", b"s").await;
    put(&c, &dst, "secret", b"d").await;
    put_policy(
        &c,
        &dst,
        &format!(r#"{{"Statement": {{"Effect": "Allow", "Principal": {{"AWS": "{ALT_AK}"}}, "Action": "s3:PutObject", "Resource": "arn:aws:s3:::{dst}/*"}}}}"#),
    )
    .await;
    let copy = |from: String| alt.copy_object().bucket(&dst).key("copied").copy_source(from).send();
    assert_eq!(code(&copy(format!("{src}/secret")).await.unwrap_err()), "AccessDenied");
    assert_eq!(
        code(&copy(format!("{dst}/secret")).await.unwrap_err()),
        "AccessDenied",
        "PutObject is not GetObject"
    );
    put_policy(
        &c,
        &src,
        &format!(r#"{{"Statement": {{"Effect": "Allow", "Principal": {{"AWS": "{ALT_AK}"}}, "Action": "s3:GetObject", "Resource": "arn:aws:s3:::{src}/*"}}}}"#),
    )
    .await;
    copy(format!("{src}/secret")).await.unwrap();
    // The copy is the other account's object (its writer owns it).
    let body = alt.get_object().bucket(&dst).key("copied").send().await.unwrap().body.collect().await.unwrap().into_bytes();
    assert_eq!(&body[..], b"s");
}

#[tokio::test]
async fn block_public_access_refuses_and_restricts_public_policies() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("pab");
    create_bucket(&c, &b).await;
    put(&c, &b, "k", b"v").await;
    assert_eq!(
        code(&c.get_public_access_block().bucket(&b).send().await.unwrap_err()),
        "NoSuchPublicAccessBlockConfiguration"
    );
    let public = format!(
        r#"{{"Statement": {{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::{b}/*"}}}}"#
    );
    let private = format!(
        r#"{{"Statement": {{"Effect": "Allow", "Principal": {{"AWS": "{ALT_AK}"}}, "Action": "s3:GetObject", "Resource": "arn:aws:s3:::{b}/*"}}}}"#
    );
    let block = |policy: bool, restrict: bool| {
        PublicAccessBlockConfiguration::builder().block_public_policy(policy).restrict_public_buckets(restrict).build()
    };

    c.put_public_access_block().bucket(&b).public_access_block_configuration(block(true, false)).send().await.unwrap();
    let got = c.get_public_access_block().bucket(&b).send().await.unwrap();
    let cfg = got.public_access_block_configuration().unwrap();
    assert_eq!(
        (
            cfg.block_public_acls(),
            cfg.ignore_public_acls(),
            cfg.block_public_policy(),
            cfg.restrict_public_buckets()
        ),
        (Some(false), Some(false), Some(true), Some(false))
    );
    let e = c.put_bucket_policy().bucket(&b).policy(&public).send().await.unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    put_policy(&c, &b, &private).await;

    // A public policy, then RestrictPublicBuckets: it no longer grants to anyone but the owner.
    c.put_public_access_block().bucket(&b).public_access_block_configuration(block(false, false)).send().await.unwrap();
    put_policy(&c, &b, &public).await;
    assert_eq!(anonymous_get(&s, &b, "k").await, 200);
    c.put_public_access_block().bucket(&b).public_access_block_configuration(block(false, true)).send().await.unwrap();
    assert_eq!(anonymous_get(&s, &b, "k").await, 403);
    assert!(c.get_object().bucket(&b).key("k").send().await.is_ok());

    c.delete_public_access_block().bucket(&b).send().await.unwrap();
    assert_eq!(anonymous_get(&s, &b, "k").await, 200);
    assert_eq!(
        code(&c.get_public_access_block().bucket(&b).send().await.unwrap_err()),
        "NoSuchPublicAccessBlockConfiguration"
    );
}

#[tokio::test]
async fn block_public_access_ignores_and_refuses_public_acls() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("pabacl");
    create_bucket(&c, &b).await;
    c.put_object().bucket(&b).key("k").acl(ObjectCannedAcl::PublicRead).body(b"v".to_vec().into()).send().await.unwrap();
    assert_eq!(anonymous_get(&s, &b, "k").await, 200);
    let block = |acls: bool, ignore: bool| {
        PublicAccessBlockConfiguration::builder().block_public_acls(acls).ignore_public_acls(ignore).build()
    };

    c.put_public_access_block().bucket(&b).public_access_block_configuration(block(false, true)).send().await.unwrap();
    assert_eq!(anonymous_get(&s, &b, "k").await, 403, "the public-read grant is ignored");
    assert!(c.get_object().bucket(&b).key("k").send().await.is_ok());

    c.put_public_access_block().bucket(&b).public_access_block_configuration(block(true, false)).send().await.unwrap();
    assert_eq!(anonymous_get(&s, &b, "k").await, 200, "an ACL set before stays, and counts again");
    let e = c.put_object_acl().bucket(&b).key("k").acl(ObjectCannedAcl::PublicReadWrite).send().await.unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    let e =
        c.put_object().bucket(&b).key("k2").acl(ObjectCannedAcl::PublicRead).body(b"v".to_vec().into()).send().await.unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    let e = c.put_bucket_acl().bucket(&b).acl(BucketCannedAcl::PublicRead).send().await.unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    c.put_object().bucket(&b).key("k2").acl(ObjectCannedAcl::Private).body(b"v".to_vec().into()).send().await.unwrap();
    c.put_object_acl().bucket(&b).key("k").acl(ObjectCannedAcl::Private).send().await.unwrap();
    assert_eq!(anonymous_get(&s, &b, "k").await, 403);
}

/// A policy allowing everything to everyone leaves the owner's multipart uploads working.
#[tokio::test]
async fn multipart_uploads_work_under_an_allow_all_policy() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("polmp");
    create_bucket(&c, &b).await;
    put_policy(
        &c,
        &b,
        &format!(r#"{{"Version": "2012-10-17", "Statement": [{{"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": ["arn:aws:s3:::{b}", "arn:aws:s3:::{b}/*"]}}]}}"#),
    )
    .await;
    let up = c.create_multipart_upload().bucket(&b).key("mp").send().await.unwrap();
    let id = up.upload_id().unwrap();
    let part =
        c.upload_part().bucket(&b).key("mp").upload_id(id).part_number(1).body(vec![1u8; 1024].into()).send().await.unwrap();
    let done = aws_sdk_s3::types::CompletedMultipartUpload::builder()
        .parts(aws_sdk_s3::types::CompletedPart::builder().part_number(1).e_tag(part.e_tag().unwrap()).build())
        .build();
    c.complete_multipart_upload().bucket(&b).key("mp").upload_id(id).multipart_upload(done).send().await.unwrap();
    assert_eq!(c.head_object().bucket(&b).key("mp").send().await.unwrap().content_length(), Some(1024));
}

/// Object Ownership: who owns what another account writes, and ACLs turned off.
#[tokio::test]
async fn object_ownership_decides_owners_and_can_turn_acls_off() {
    use aws_sdk_s3::types::{ObjectOwnership, OwnershipControls, OwnershipControlsRule};
    let s = TestServer::start().await;
    let (c, alt) = (s.client(), s.alt_client());
    let (main_id, alt_id) = (account_of(MAIN_AK), account_of(ALT_AK));
    let controls = |o: ObjectOwnership| {
        OwnershipControls::builder().rules(OwnershipControlsRule::builder().object_ownership(o).build().unwrap()).build().unwrap()
    };
    let owner_of = |b: String, k: &'static str| {
        let c = c.clone();
        async move { c.get_object_acl().bucket(b).key(k).send().await.unwrap().owner().and_then(|o| o.id()).unwrap().to_owned() }
    };
    let b = bucket_name("own");
    create_bucket(&c, &b).await;
    let e = c.get_bucket_ownership_controls().bucket(&b).send().await.unwrap_err();
    assert_eq!(code(&e), "OwnershipControlsNotFoundError");
    put_policy(
        &c,
        &b,
        &format!(r#"{{"Statement": {{"Effect": "Allow", "Principal": {{"AWS": "{ALT_AK}"}}, "Action": "s3:PutObject", "Resource": "arn:aws:s3:::{b}/*"}}}}"#),
    )
    .await;

    // ObjectWriter (the default): the writer owns it, and the bucket owner cannot read it.
    alt.put_object().bucket(&b).key("by-alt").body(b"a".to_vec().into()).send().await.unwrap();
    assert_eq!(code(&c.get_object().bucket(&b).key("by-alt").send().await.unwrap_err()), "AccessDenied");

    // BucketOwnerPreferred: the bucket owner owns what is written with bucket-owner-full-control.
    c.put_bucket_ownership_controls()
        .bucket(&b)
        .ownership_controls(controls(ObjectOwnership::BucketOwnerPreferred))
        .send()
        .await
        .unwrap();
    let got = c.get_bucket_ownership_controls().bucket(&b).send().await.unwrap();
    assert_eq!(
        got.ownership_controls().unwrap().rules()[0].object_ownership(),
        &ObjectOwnership::BucketOwnerPreferred
    );
    alt.put_object()
        .bucket(&b)
        .key("handed-over")
        .acl(ObjectCannedAcl::BucketOwnerFullControl)
        .body(b"h".to_vec().into())
        .send()
        .await
        .unwrap();
    assert_eq!(owner_of(b.clone(), "handed-over").await, main_id);

    // BucketOwnerEnforced: the bucket owner owns everything, old objects included; ACLs are refused.
    c.put_bucket_ownership_controls()
        .bucket(&b)
        .ownership_controls(controls(ObjectOwnership::BucketOwnerEnforced))
        .send()
        .await
        .unwrap();
    assert_eq!(owner_of(b.clone(), "by-alt").await, main_id);
    assert!(c.get_object().bucket(&b).key("by-alt").send().await.is_ok());
    alt.put_object().bucket(&b).key("enforced").body(b"e".to_vec().into()).send().await.unwrap();
    assert_eq!(owner_of(b.clone(), "enforced").await, main_id);
    let e = alt
        .put_object()
        .bucket(&b)
        .key("x")
        .acl(ObjectCannedAcl::PublicRead)
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessControlListNotSupported");
    alt.put_object()
        .bucket(&b)
        .key("x")
        .acl(ObjectCannedAcl::BucketOwnerFullControl)
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap();
    let e = c.put_object_acl().bucket(&b).key("enforced").acl(ObjectCannedAcl::PublicRead).send().await.unwrap_err();
    assert_eq!(code(&e), "AccessControlListNotSupported");
    let e = c.put_bucket_acl().bucket(&b).acl(BucketCannedAcl::PublicRead).send().await.unwrap_err();
    assert_eq!(code(&e), "AccessControlListNotSupported");
    assert_eq!(anonymous_get(&s, &b, "enforced").await, 403);

    // ACLs count again once the controls are gone; the writer of `by-alt` owns it again.
    c.delete_bucket_ownership_controls().bucket(&b).send().await.unwrap();
    assert_eq!(owner_of(b.clone(), "handed-over").await, main_id);
    let by_alt = alt.get_object_acl().bucket(&b).key("by-alt").send().await.unwrap();
    assert_eq!(by_alt.owner().and_then(|o| o.id()), Some(alt_id.as_str()));

    // Turning ACLs off is refused while the bucket's ACL grants to others; so is creating a
    // bucket that way.
    c.put_bucket_acl().bucket(&b).acl(BucketCannedAcl::PublicRead).send().await.unwrap();
    let e = c
        .put_bucket_ownership_controls()
        .bucket(&b)
        .ownership_controls(controls(ObjectOwnership::BucketOwnerEnforced))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidBucketAclWithObjectOwnership");
    let b2 = bucket_name("own2");
    let e = c
        .create_bucket()
        .bucket(&b2)
        .acl(BucketCannedAcl::PublicRead)
        .object_ownership(ObjectOwnership::BucketOwnerEnforced)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidBucketAclWithObjectOwnership");
    c.create_bucket().bucket(&b2).object_ownership(ObjectOwnership::BucketOwnerEnforced).send().await.unwrap();
    let got = c.get_bucket_ownership_controls().bucket(&b2).send().await.unwrap();
    assert_eq!(
        got.ownership_controls().unwrap().rules()[0].object_ownership(),
        &ObjectOwnership::BucketOwnerEnforced
    );
}

/// `x-amz-expected-bucket-owner` (and the copy source's) refuses a request to a bucket of
/// another account, whoever sends it.
#[tokio::test]
async fn a_request_naming_the_wrong_bucket_owner_is_refused() {
    let s = TestServer::start().await;
    let c = s.client();
    let (main_id, alt_id) = (account_of(MAIN_AK), account_of(ALT_AK));
    let b = bucket_name("expect");
    create_bucket(&c, &b).await;
    put(&c, &b, "k", b"v").await;
    assert_eq!(
        code(&c.list_objects_v2().bucket(&b).expected_bucket_owner(&alt_id).send().await.unwrap_err()),
        "AccessDenied"
    );
    assert!(c.list_objects_v2().bucket(&b).expected_bucket_owner(&main_id).send().await.is_ok());
    let e =
        c.put_object().bucket(&b).key("x").expected_bucket_owner(&alt_id).body(b"x".to_vec().into()).send().await.unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    assert!(c.head_object().bucket(&b).key("x").send().await.is_err(), "nothing was written");
    let copy = |owner: &str| {
        c.copy_object().bucket(&b).key("copy").copy_source(format!("{b}/k")).expected_source_bucket_owner(owner).send()
    };
    assert_eq!(code(&copy(&alt_id).await.unwrap_err()), "AccessDenied");
    copy(&main_id).await.unwrap();
}

/// A missing key of an unversioned bucket says it is not a delete marker.
#[tokio::test]
async fn a_missing_key_says_it_is_not_a_delete_marker() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("dmh");
    create_bucket(&c, &b).await;
    put(&c, &b, "k", b"v").await;
    c.delete_object().bucket(&b).key("k").send().await.unwrap();
    let e = c.head_object().bucket(&b).key("k").send().await.unwrap_err();
    let headers = e.raw_response().unwrap().headers();
    assert_eq!(headers.get("x-amz-delete-marker"), Some("false"));
}

/// A GET or HEAD of a missing key answers 404 only to a requester who may list the bucket:
/// READ in its ACL, or s3:ListBucket in its policy with the key inside the allowed prefix;
/// anyone else gets 403 and cannot tell a missing key from a forbidden one.
#[tokio::test]
async fn a_missing_key_is_reported_to_those_who_may_list_it() {
    let s = TestServer::start().await;
    let (c, alt) = (s.client(), s.alt_client());
    let b = bucket_name("miss");
    create_bucket(&c, &b).await;
    put(&c, &b, "public/gone", b"v").await;
    c.delete_object().bucket(&b).key("public/gone").send().await.unwrap();
    let head = |k: &'static str| {
        let alt = alt.clone();
        let b = b.clone();
        async move { status(&alt.head_object().bucket(&b).key(k).send().await.unwrap_err()) }
    };
    assert_eq!(head("public/missing").await, 403, "no policy: the ACL decides");
    put_policy(
        &c,
        &b,
        &format!(
            r#"{{"Version": "2012-10-17", "Statement": [{{"Effect": "Allow", "Principal": {{"AWS": "*"}},
                "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::{b}",
                "Condition": {{"StringLike": {{"s3:prefix": "public/*"}}}}}}]}}"#
        ),
    )
    .await;
    assert_eq!(head("public/missing").await, 404);
    assert_eq!(head("public/gone").await, 404, "a delete marker too");
    assert_eq!(head("private/missing").await, 403);
    // A `prefix` parameter on a HEAD is no listing's: it does not stand in for the key.
    let smuggled = format!("HEAD /{b}/private/missing?prefix=public/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    assert_eq!(raw_http(s.addr, smuggled.as_bytes()).await.status, 403);
    let plain = format!("HEAD /{b}/public/missing HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    assert_eq!(
        raw_http(s.addr, plain.as_bytes()).await.status,
        404,
        "anonymous requests are granted the listing too"
    );
    // Listing itself follows the same condition.
    alt.list_objects_v2().bucket(&b).prefix("public/").send().await.unwrap();
    let e = alt.list_objects_v2().bucket(&b).send().await.unwrap_err();
    assert_eq!(status(&e), 403);
}

/// Block Public Access at the account level (`public_access_block` of a `[[credential]]`):
/// each switch it turns on holds for every bucket the account owns, though the buckets have no
/// setting of their own; another account's buckets are not affected.
#[tokio::test]
async fn an_accounts_block_public_access_holds_for_all_its_buckets() {
    use ferry_store::model::PublicAccessBlock;
    let cluster = TestCluster::start(&["us-east-1"], |opts, _| {
        for u in &mut opts.users {
            if u.access_key == MAIN_AK {
                u.public_access_block =
                    PublicAccessBlock { ignore_public_acls: true, restrict_public_buckets: true, ..Default::default() };
            } else if u.access_key == ALT_AK {
                u.public_access_block =
                    PublicAccessBlock { block_public_acls: true, block_public_policy: true, ..Default::default() };
            }
        }
    })
    .await;
    let (main, alt) = (cluster.client("us-east-1"), cluster.client_alt("us-east-1"));
    let addr: std::net::SocketAddr = cluster.url("us-east-1").trim_start_matches("http://").parse().unwrap();
    let anonymous_get = |bucket: String, key: &'static str| async move {
        let request = format!("GET /{bucket}/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        raw_http(addr, request.as_bytes()).await.status
    };
    let public_policy = |b: &str| {
        format!(
            r#"{{"Version": "2012-10-17", "Statement": [{{"Effect": "Allow", "Principal": "*",
                "Action": "s3:GetObject", "Resource": "arn:aws:s3:::{b}/*"}}]}}"#
        )
    };

    // The main account ignores public ACLs and restricts public policies: both may be set,
    // and neither lets anyone in.
    let b = bucket_name("acctmain");
    create_bucket(&main, &b).await;
    let e = main.get_public_access_block().bucket(&b).send().await.unwrap_err();
    assert_eq!(code(&e), "NoSuchPublicAccessBlockConfiguration", "the bucket has no setting of its own");
    main.put_object().bucket(&b).key("acl").acl(ObjectCannedAcl::PublicRead).body(b"x".to_vec().into()).send().await.unwrap();
    put(&main, &b, "policy", b"x").await;
    assert_eq!(anonymous_get(b.clone(), "acl").await, 403, "a public ACL is ignored");
    put_policy(&main, &b, &public_policy(&b)).await;
    assert_eq!(
        anonymous_get(b.clone(), "policy").await,
        403,
        "a public policy grants no one outside the account"
    );
    assert_eq!(get_bytes(&main, &b, "policy").await, b"x");

    // The other account blocks public ACLs and public policies: setting them is refused.
    let b = bucket_name("acctalt");
    create_bucket(&alt, &b).await;
    let e = alt
        .put_object()
        .bucket(&b)
        .key("acl")
        .acl(ObjectCannedAcl::PublicRead)
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    let e = alt.put_bucket_acl().bucket(&b).acl(BucketCannedAcl::PublicRead).send().await.unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    let e = alt.put_bucket_policy().bucket(&b).policy(public_policy(&b)).send().await.unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    let e = alt.create_bucket().bucket(bucket_name("acctpub")).acl(BucketCannedAcl::PublicRead).send().await.unwrap_err();
    assert_eq!(code(&e), "AccessDenied", "a new bucket has no switches of its own: the account's hold");
    // What it does not block still works.
    put(&alt, &b, "k", b"v").await;
    assert_eq!(get_bytes(&alt, &b, "k").await, b"v");
}

/// `s3:RequestObjectTag/<key>` and `s3:RequestObjectTagKeys` on PutObjectTagging come from the
/// tags in its body (read before the policy decides), as they come from `x-amz-tagging` on a
/// PutObject.
#[tokio::test]
async fn put_object_tagging_is_judged_by_the_tags_it_sets() {
    use aws_sdk_s3::types::{Tag, Tagging};
    let s = TestServer::start().await;
    let (c, alt) = (s.client(), s.alt_client());
    let b = bucket_name("reqtag");
    create_bucket(&c, &b).await;
    put(&c, &b, "k", b"v").await;
    put_policy(
        &c,
        &b,
        &format!(
            r#"{{"Version": "2012-10-17", "Statement": [
                {{"Effect": "Allow", "Principal": {{"AWS": "{ALT_AK}"}}, "Action": "s3:PutObjectTagging",
                  "Resource": "arn:aws:s3:::{b}/*", "Condition": {{"StringEquals": {{"s3:RequestObjectTag/security": "public"}}}}}},
                {{"Effect": "Deny", "Principal": "*", "Action": "s3:PutObjectTagging", "Resource": "arn:aws:s3:::{b}/*",
                  "Condition": {{"ForAnyValue:StringEquals": {{"s3:RequestObjectTagKeys": "forbidden"}}}}}}]}}"#
        ),
    )
    .await;
    let tagging = |k: &str, v: &str| Tagging::builder().tag_set(Tag::builder().key(k).value(v).build().unwrap()).build().unwrap();
    alt.put_object_tagging().bucket(&b).key("k").tagging(tagging("security", "public")).send().await.unwrap();
    let e = alt.put_object_tagging().bucket(&b).key("k").tagging(tagging("security", "private")).send().await.unwrap_err();
    assert_eq!(
        code(&e),
        "AccessDenied",
        "no Allow for these tags, and the ACL gives the other account nothing"
    );
    let e = c.put_object_tagging().bucket(&b).key("k").tagging(tagging("forbidden", "x")).send().await.unwrap_err();
    assert_eq!(code(&e), "AccessDenied", "the Deny holds for the owner too");
    // Naming the bucket's owner, or claiming other tags in `x-amz-tagging` (which
    // PutObjectTagging does not take), changes nothing: the body's tags are judged.
    let owner = c.get_bucket_acl().bucket(&b).send().await.unwrap().owner().and_then(|o| o.id()).unwrap().to_owned();
    for (key, value) in [("forbidden", "x"), ("security", "private")] {
        let e = alt
            .put_object_tagging()
            .bucket(&b)
            .key("k")
            .expected_bucket_owner(&owner)
            .tagging(tagging(key, value))
            .customize()
            .mutate_request(|r| {
                r.headers_mut().insert("x-amz-tagging", "security=public");
            })
            .send()
            .await
            .unwrap_err();
        assert_eq!(code(&e), "AccessDenied", "{key}={value}");
    }
    let tags = c.get_object_tagging().bucket(&b).key("k").send().await.unwrap();
    assert_eq!(
        tags.tag_set().iter().map(|t| (t.key(), t.value())).collect::<Vec<_>>(),
        vec![("security", "public")]
    );
    c.put_object_tagging().bucket(&b).key("k").tagging(tagging("team", "a")).send().await.unwrap();
}

/// The policy judges the version a request acts on: `s3:VersionId` is the `versionId`
/// parameter decoded as the handler decodes it, so spelling the id with percent-escapes does
/// not slip past a Deny that names it.
#[tokio::test]
async fn a_percent_encoded_version_id_does_not_slip_past_a_deny() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("vid");
    create_versioned_bucket(&c, &b).await;
    let kept = c.put_object().bucket(&b).key("k").body(b"keep".to_vec().into()).send().await.unwrap();
    let kept = kept.version_id().unwrap().to_owned();
    let other = c.put_object().bucket(&b).key("k").body(b"other".to_vec().into()).send().await.unwrap();
    let other = other.version_id().unwrap().to_owned();
    put_policy(
        &c,
        &b,
        &format!(
            r#"{{"Version": "2012-10-17", "Statement": [
                {{"Effect": "Allow", "Principal": "*", "Action": "s3:DeleteObjectVersion", "Resource": "arn:aws:s3:::{b}/*"}},
                {{"Effect": "Deny", "Principal": "*", "Action": "s3:DeleteObjectVersion", "Resource": "arn:aws:s3:::{b}/*",
                  "Condition": {{"StringEquals": {{"s3:VersionId": "{kept}"}}}}}}]}}"#
        ),
    )
    .await;
    let addr = s.addr;
    let delete = |escaped: String| {
        let request = format!("DELETE /{b}/k?versionId={escaped} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        async move { raw_http(addr, request.as_bytes()).await.status }
    };
    // Every character escaped: the same id to the handler.
    let escape = |id: &str| id.bytes().map(|b| format!("%{b:02X}")).collect::<String>();
    assert_eq!(delete(escape(&kept)).await, 403);
    assert_eq!(delete(kept.clone()).await, 403);
    assert_eq!(delete(escape(&other)).await, 204, "the Allow still works, escaped or not");
    let left: Vec<_> = c
        .list_object_versions()
        .bucket(&b)
        .send()
        .await
        .unwrap()
        .versions()
        .iter()
        .filter_map(|v| v.version_id().map(str::to_owned))
        .collect();
    assert_eq!(left, vec![kept]);
}

/// A browser form upload (POST object) is judged as the PutObject of its key that it is: by the
/// bucket policy on `s3:PutObject` of that object, for the principal that signed the form.
#[tokio::test]
async fn a_browser_form_upload_is_judged_by_the_bucket_policy() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("polpost");
    create_bucket(&c, &b).await;
    let alt = account_of(ALT_AK);
    put_policy(
        &c,
        &b,
        &format!(
            r#"{{"Version": "2012-10-17", "Statement": [
                {{"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::{b}/locked/*"}},
                {{"Effect": "Allow", "Principal": {{"AWS": "{alt}"}}, "Action": "s3:PutObject", "Resource": "arn:aws:s3:::{b}/shared/*"}}]}}"#
        ),
    )
    .await;
    let form = |key: &str, ak: &str, sk: &str| {
        PostForm::new(key, b"form body").signed(
            ak,
            sk,
            &s.region,
            &[&format!(r#"{{"bucket": "{b}"}}"#), r#"["starts-with", "$key", ""]"#],
        )
    };
    // The owner's own upload, under a Deny of everyone.
    let r = form("locked/a", MAIN_AK, MAIN_SK).post(s.addr, &b).await;
    assert_eq!((r.status, r.code()), (403, Some("AccessDenied")), "{}", r.body);
    let r = form("open/a", MAIN_AK, MAIN_SK).post(s.addr, &b).await;
    assert_eq!(r.status, 204, "{}", r.body);
    // Another account: granted where the policy allows it, and nowhere else.
    let r = form("shared/a", ALT_AK, ALT_SK).post(s.addr, &b).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = form("open/b", ALT_AK, ALT_SK).post(s.addr, &b).await;
    assert_eq!((r.status, r.code()), (403, Some("AccessDenied")), "{}", r.body);
    let e = c.head_object().bucket(&b).key("locked/a").send().await.unwrap_err();
    assert_eq!(code(&e), "NotFound");
    // The writer owns what it uploaded, as with a PutObject.
    assert_eq!(get_bytes(&s.alt_client(), &b, "shared/a").await, b"form body");
}

/// Bucket policies govern the lifecycle and Object Lock configurations too: a Deny of
/// `s3:PutLifecycleConfiguration` or `s3:PutBucketObjectLockConfiguration` refuses even the
/// bucket's owner, as it refuses any other of the owner's requests it names.
#[tokio::test]
async fn a_policy_governs_lifecycle_and_object_lock_configurations() {
    use aws_sdk_s3::types::{
        BucketLifecycleConfiguration, ExpirationStatus, LifecycleExpiration, LifecycleRule, LifecycleRuleFilter,
        ObjectLockConfiguration, ObjectLockEnabled,
    };
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("pollc");
    create_versioned_bucket(&c, &b).await;
    let owner = account_of(MAIN_AK);
    put_policy(
        &c,
        &b,
        &format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Deny","Principal":{{"AWS":"{owner}"}},"Action":["s3:PutLifecycleConfiguration","s3:PutBucketObjectLockConfiguration"],"Resource":"arn:aws:s3:::{b}"}}]}}"#
        ),
    )
    .await;
    let rule = LifecycleRule::builder()
        .id("r")
        .status(ExpirationStatus::Enabled)
        .filter(LifecycleRuleFilter::builder().prefix("").build())
        .expiration(LifecycleExpiration::builder().days(1).build())
        .build()
        .unwrap();
    let e = c
        .put_bucket_lifecycle_configuration()
        .bucket(&b)
        .lifecycle_configuration(BucketLifecycleConfiguration::builder().rules(rule).build().unwrap())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    let e = c
        .put_object_lock_configuration()
        .bucket(&b)
        .object_lock_configuration(ObjectLockConfiguration::builder().object_lock_enabled(ObjectLockEnabled::Enabled).build())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    let e = c.delete_bucket_lifecycle().bucket(&b).send().await.unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    // What the policy does not name is still the owner's.
    assert_eq!(
        code(&c.get_bucket_lifecycle_configuration().bucket(&b).send().await.unwrap_err()),
        "NoSuchLifecycleConfiguration"
    );
}
