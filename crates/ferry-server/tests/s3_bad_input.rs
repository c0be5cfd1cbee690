//! Bad input gets the right S3 error and status, never a 500, and writes nothing.

use crate::common::*;

#[tokio::test]
async fn invalid_bucket_names() {
    let s = TestServer::start().await;
    let c = s.client();
    for name in ["ab", "UpperCase", "under_score", "-start", "a..b", "192.168.1.1", "foo.-bar", "foo-.bar"] {
        let e = c.create_bucket().bucket(name).send().await.unwrap_err();
        let st = match &e {
            aws_sdk_s3::error::SdkError::ServiceError(x) => x.raw().status().as_u16(),
            _ => 0,
        };
        assert_eq!(st, 400, "{name}: {e:?}");
    }
}

#[tokio::test]
async fn key_and_metadata_limits() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("lim");
    create_bucket(&c, &b).await;
    let long = "k".repeat(1025);
    let e = c.put_object().bucket(&b).key(&long).body(b"x".to_vec().into()).send().await.unwrap_err();
    assert_eq!(code(&e), "KeyTooLongError");
    put(&c, &b, &"k".repeat(1024), b"ok").await;
    let e =
        c.put_object().bucket(&b).key("m").metadata("big", "v".repeat(2100)).body(b"x".to_vec().into()).send().await.unwrap_err();
    assert_eq!(code(&e), "MetadataTooLarge");
    assert_eq!(code(&c.head_object().bucket(&b).key("m").send().await.unwrap_err()), "NotFound");
}

#[tokio::test]
async fn bad_signatures_and_unknown_keys() {
    let s = TestServer::start().await;
    let bad = client_for(&s.endpoint(), MAIN_AK, "wrong-secret", "us-east-1", Mode::Default);
    let e = bad.list_buckets().send().await.unwrap_err();
    assert_eq!(code(&e), "SignatureDoesNotMatch");
    let unknown = client_for(&s.endpoint(), "AKIAUNKNOWN", "x", "us-east-1", Mode::Default);
    assert_eq!(code(&unknown.list_buckets().send().await.unwrap_err()), "InvalidAccessKeyId");
    // Signed for a region this server is not.
    let other = client_for(&s.endpoint(), MAIN_AK, MAIN_SK, "ap-south-1", Mode::Default);
    assert_eq!(code(&other.list_buckets().send().await.unwrap_err()), "AuthorizationHeaderMalformed");
    // Anonymous requests may not list buckets.
    let r = raw_http(s.addr, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn malformed_xml_is_400() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("xml");
    create_bucket(&c, &b).await;
    // A correctly signed request whose XML body is cut short (the body is replaced before signing).
    let e = s
        .client_with(Mode::WhenRequired)
        .put_bucket_versioning()
        .bucket(&b)
        .versioning_configuration(aws_sdk_s3::types::VersioningConfiguration::builder().build())
        .customize()
        .mutate_request(|req| {
            *req.body_mut() = aws_smithy_types::body::SdkBody::from("<VersioningConfiguration><Status>Enabled</Sta");
            req.headers_mut().remove("content-md5");
            req.headers_mut().insert("content-length", "45");
        })
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "MalformedXML", "{e:?}");
    assert_eq!(status(&e), 400);

    // A body that does not match its signed SHA-256 (one byte cut by a lying Content-Length).
    let e = s
        .client_with(Mode::WhenRequired)
        .put_bucket_versioning()
        .bucket(&b)
        .versioning_configuration(aws_sdk_s3::types::VersioningConfiguration::builder().build())
        .customize()
        .mutate_request(|req| {
            *req.body_mut() = aws_smithy_types::body::SdkBody::from("<VersioningConfiguration></VersioningConfiguration>");
            req.headers_mut().remove("content-md5");
            req.headers_mut().insert("content-length", "50");
        })
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), 400, "{e:?}");
    assert_eq!(code(&e), "XAmzContentSHA256Mismatch");
}

#[tokio::test]
async fn short_body_and_missing_length_write_nothing() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("short");
    create_bucket(&c, &b).await;
    // Presign a PUT, then send fewer bytes than Content-Length and close the connection.
    let req = c
        .put_object()
        .bucket(&b)
        .key("short")
        .presigned(aws_sdk_s3::presigning::PresigningConfig::expires_in(std::time::Duration::from_secs(60)).unwrap())
        .await
        .unwrap();
    let uri: http::Uri = req.uri().parse().unwrap();
    let head = format!(
        "PUT {} HTTP/1.1\r\nHost: {}\r\nContent-Length: 100\r\nConnection: close\r\n\r\n",
        uri.path_and_query().unwrap(),
        uri.authority().unwrap()
    );
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&[b'x'; 40]);
    // The server sees the connection end mid-body: it may answer 400 or just close; it must
    // not store anything.
    let r = raw_http_half_close(s.addr, &bytes).await;
    assert!(r.status == 400 || r.status == 0, "short body: {} {}", r.status, r.body);
    assert_eq!(code(&c.head_object().bucket(&b).key("short").send().await.unwrap_err()), "NotFound");

    // No Content-Length and no chunked encoding on a PUT: 411 MissingContentLength.
    let head = format!(
        "PUT {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        uri.path_and_query().unwrap(),
        uri.authority().unwrap()
    );
    let r = raw_http(s.addr, head.as_bytes()).await;
    assert!(r.status == 411 || r.status == 400, "{} {}", r.status, r.body);
    assert_ne!(r.status, 500);
}

#[tokio::test]
async fn invalid_ranges_and_versions_are_client_errors() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("inv");
    create_bucket(&c, &b).await;
    put(&c, &b, "k", b"0123456789").await;
    let e = c.get_object().bucket(&b).key("k").range("bytes=20-30").send().await.unwrap_err();
    assert_eq!(status(&e), 416);
    let e = c.get_object().bucket(&b).key("k").range("bytes=5-2").send().await;
    // An unsatisfiable or malformed range is ignored or refused, never a server error.
    if let Err(e) = e {
        assert!(status(&e) < 500);
    }
    let e = c.delete_object().bucket(&b).key("k").version_id("bad id with spaces").send().await.unwrap_err();
    assert_eq!(status(&e), 400);
    let e = c.get_object().bucket("no-such-bucket-here").key("k").send().await.unwrap_err();
    assert_eq!(code(&e), "NoSuchBucket");
}

#[tokio::test]
async fn unimplemented_operations_say_so() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("ni");
    create_bucket(&c, &b).await;
    let e = c.get_bucket_website().bucket(&b).send().await.unwrap_err();
    assert_eq!(code(&e), "NotImplemented");
    assert_eq!(status(&e), 501);
}
