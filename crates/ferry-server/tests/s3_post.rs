//! Browser form uploads (POST object), sent as a web page sends them (raw HTTP), checked with
//! aws-sdk-s3.

use md5::Digest as _;

use crate::common::*;

/// The conditions every signed form of these tests carries: its bucket, any key.
fn open_conditions(bucket: &str) -> Vec<String> {
    vec![format!(r#"{{"bucket": "{bucket}"}}"#), r#"["starts-with", "$key", ""]"#.to_owned()]
}

fn signed(form: PostForm, s: &TestServer, conditions: &[String]) -> PostForm {
    let conditions: Vec<&str> = conditions.iter().map(String::as_str).collect();
    form.signed(MAIN_AK, MAIN_SK, &s.region, &conditions)
}

/// A form upload is judged before its file is read: an anonymous form to a private bucket,
/// and a signed form whose policy refuses it, are answered while most of their declared body
/// is still owed. (Without this, anyone could make the server read a large upload.)
///
/// The client sends a little of the file, not the whole declared body, and waits: the answer
/// coming at all is the proof, since nothing else ends the exchange.
#[tokio::test]
async fn a_form_upload_is_judged_before_its_file_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("postfirst");
    create_bucket(&c, &b).await;
    let mut refused_policy = open_conditions(&b);
    refused_policy.push(r#"["starts-with", "$key", "uploads/"]"#.to_owned());
    for (form, want) in [
        (PostForm::new("big", b""), (403, "AccessDenied")),
        (signed(PostForm::new("big", b""), &s, &refused_policy), (403, "AccessDenied")),
    ] {
        let (boundary, body) = form.body();
        // The form as built, but for its file's bytes and closing boundary.
        let head_len = body.len() - format!("\r\n--{boundary}--\r\n").len();
        let declared = 256 * 1024 * 1024;
        let request = format!(
            "POST /{b} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len() + declared
        );
        let mut stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        stream.write_all(&body[..head_len]).await.unwrap();
        stream.write_all(&vec![b'x'; 1 << 20]).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(60), stream.read_to_end(&mut answer)).await;
        assert!(
            read.is_ok(),
            "no answer while the file is still owed: it was read before the form was judged"
        );
        let r = RawResponse::parse_bytes(&answer);
        assert_eq!((r.status, r.code()), (want.0, Some(want.1)), "{}", r.body);
    }
    let e = c.head_object().bucket(&b).key("big").send().await.unwrap_err();
    assert_eq!(code(&e), "NotFound");
}

/// A file larger than anything held in memory (80 MiB) streams into the bucket whole; the
/// policy's `content-length-range` refuses files outside it, and stores nothing of them.
#[tokio::test]
async fn a_form_upload_streams_and_is_held_to_its_length_range() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("postbig");
    create_bucket(&c, &b).await;
    let big: Vec<u8> = (0..80 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let r = signed(PostForm::new("big", &big), &s, &open_conditions(&b)).post(s.addr, &b).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let head = c.head_object().bucket(&b).key("big").send().await.unwrap();
    assert_eq!(head.content_length(), Some(big.len() as i64));
    assert_eq!(head.e_tag(), Some(format!("\"{}\"", md5_hex(&big)).as_str()));
    assert_eq!(r.header("etag"), head.e_tag());
    let got = get_bytes(&c, &b, "big").await;
    assert!(md5::Md5::digest(&got) == md5::Md5::digest(&big), "the stored file differs");

    let mut bounded = open_conditions(&b);
    bounded.push(r#"["content-length-range", 10, 1024]"#.to_owned());
    for (key, size, want) in [("too-big", 4096, "EntityTooLarge"), ("too-small", 3, "EntityTooSmall")] {
        let r = signed(PostForm::new(key, &vec![b'y'; size]), &s, &bounded).post(s.addr, &b).await;
        assert_eq!((r.status, r.code()), (400, Some(want)), "{}", r.body);
        let e = c.head_object().bucket(&b).key(key).send().await.unwrap_err();
        assert_eq!(code(&e), "NotFound", "{key} was stored");
    }
    let r = signed(PostForm::new("fits", &[b'z'; 10]), &s, &bounded).post(s.addr, &b).await;
    assert_eq!(r.status, 204, "{}", r.body);
}

/// The form's fields become the object's: `${filename}` in the key, content headers, user
/// metadata, the `tagging` document, a checksum; and the answer is the one asked for (201 with a
/// `PostResponse`, or a 303 to the page with the quoted ETag).
#[tokio::test]
async fn a_form_upload_stores_what_its_fields_say_and_answers_as_asked() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("postfields");
    create_bucket(&c, &b).await;
    let mut conditions = open_conditions(&b);
    for field in ["Content-Type", "x-amz-meta-color", "tagging", "success_action_status", "x-amz-checksum-sha256"] {
        conditions.push(format!(r#"["starts-with", "${field}", ""]"#));
    }
    let mut form = PostForm::new("photos/${filename}", b"hello form")
        .field("Content-Type", "text/plain")
        .field("x-amz-meta-color", "blue")
        .field(
            "tagging",
            "<Tagging><TagSet><Tag><Key>team</Key><Value>web &amp; mobile</Value></Tag></TagSet></Tagging>",
        )
        .field("success_action_status", "201")
        // SHA-256 of "hello form", base64.
        .field("x-amz-checksum-sha256", "1cfPq3OuvelZzOKMaXGe6Tf0/JPsZ6TGMNDN+ztN6KU=");
    // Some browsers send the file's path; only its name counts.
    form.file_name = "C:\\Users\\me\\cat.txt".into();
    let r = signed(form, &s, &conditions).post(s.addr, &b).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.body.contains("<Key>photos/cat.txt</Key>"), "{}", r.body);
    let url = format!("http://127.0.0.1/{b}/photos/cat.txt");
    assert!(r.body.contains(&format!("<Location>{url}</Location>")), "{}", r.body);
    assert_eq!(r.header("location"), Some(url.as_str()));
    assert!(r.body.contains(&format!("<ETag>\"{}\"</ETag>", md5_hex(b"hello form"))), "{}", r.body);
    let got = c.get_object().bucket(&b).key("photos/cat.txt").send().await.unwrap();
    assert_eq!(got.content_type(), Some("text/plain"));
    assert_eq!(got.metadata().and_then(|m| m.get("color")).map(String::as_str), Some("blue"));
    let tags = c.get_object_tagging().bucket(&b).key("photos/cat.txt").send().await.unwrap();
    let tags: Vec<(&str, &str)> = tags.tag_set().iter().map(|t| (t.key(), t.value())).collect();
    assert_eq!(tags, [("team", "web & mobile")]);

    // A wrong checksum stores nothing. (Checksum fields need no condition, as on S3.)
    let bad =
        PostForm::new("photos/bad", b"hello form").field("x-amz-checksum-sha256", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    let r = signed(bad, &s, &open_conditions(&b)).post(s.addr, &b).await;
    assert_eq!((r.status, r.code()), (400, Some("BadDigest")), "{}", r.body);

    // The redirect carries the bucket, the key and the quoted ETag.
    let mut conditions = open_conditions(&b);
    conditions.push(r#"["eq", "$success_action_redirect", "https://app.example/done?from=form"]"#.to_owned());
    let form = PostForm::new("r/1", b"redirected").field("success_action_redirect", "https://app.example/done?from=form");
    let r = signed(form, &s, &conditions).post(s.addr, &b).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let etag = md5_hex(b"redirected");
    assert_eq!(
        r.header("location"),
        Some(format!("https://app.example/done?from=form&bucket={b}&key=r%2F1&etag=%22{etag}%22").as_str())
    );
}

/// What a signed form may not do: carry a field its policy does not name, outlive its policy,
/// break a condition, name another bucket, be signed with a wrong secret, carry Ferry's
/// replication headers, or come from a replication credential.
#[tokio::test]
async fn a_form_upload_is_refused_what_its_policy_does_not_allow() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("postrefuse");
    let other = bucket_name("postother");
    create_bucket(&c, &b).await;
    create_bucket(&c, &other).await;
    let open = open_conditions(&b);
    let cases: Vec<(&str, PostForm, u16, &str)> = vec![
        (
            "a field no condition names",
            signed(PostForm::new("k", b"x").field("x-amz-meta-extra", "1"), &s, &open),
            403,
            "AccessDenied",
        ),
        (
            "a broken condition",
            signed(
                PostForm::new("k", b"x"),
                &s,
                &[open[0].clone(), r#"["starts-with", "$key", "in/"]"#.into()],
            ),
            403,
            "AccessDenied",
        ),
        (
            "another bucket's policy",
            signed(PostForm::new("k", b"x"), &s, &open_conditions(&other)),
            403,
            "AccessDenied",
        ),
        (
            "a wrong secret",
            PostForm::new("k", b"x").signed(
                MAIN_AK,
                "not-the-secret",
                &s.region,
                &["[\"starts-with\", \"$key\", \"\"]", &open[0]],
            ),
            403,
            "SignatureDoesNotMatch",
        ),
        (
            "a replication header",
            signed(
                PostForm::new("k", b"x").field("x-ferry-source", "us-east-1/b"),
                &s,
                &[open[0].clone(), open[1].clone(), r#"["starts-with", "$x-ferry-source", ""]"#.into()],
            ),
            403,
            "AccessDenied",
        ),
        (
            "a replication credential",
            PostForm::new("k", b"x").signed(REPL_AK, REPL_SK, &s.region, &["[\"starts-with\", \"$key\", \"\"]", &open[0]]),
            403,
            "AccessDenied",
        ),
        // Which keys are replication credentials is not told to whoever lacks the secret.
        (
            "a replication credential's key without its secret",
            PostForm::new("k", b"x").signed(REPL_AK, "guess", &s.region, &["[\"starts-with\", \"$key\", \"\"]", &open[0]]),
            403,
            "SignatureDoesNotMatch",
        ),
        (
            "an x-amz-acl field (the ACL field is acl)",
            signed(
                PostForm::new("k", b"x").field("x-amz-acl", "public-read"),
                &s,
                &[open[0].clone(), open[1].clone(), r#"{"x-amz-acl": "public-read"}"#.into()],
            ),
            400,
            "InvalidArgument",
        ),
        (
            "an x-amz-tagging field (the tags field is tagging)",
            signed(
                PostForm::new("k", b"x").field("x-amz-tagging", "a=b"),
                &s,
                &[open[0].clone(), open[1].clone(), r#"{"x-amz-tagging": "a=b"}"#.into()],
            ),
            400,
            "InvalidArgument",
        ),
        (
            "a policy without a signature",
            PostForm::new("k", b"x").field("policy", "e30="),
            400,
            "InvalidArgument",
        ),
    ];
    for (what, form, status, want) in cases {
        let r = form.post(s.addr, &b).await;
        assert_eq!((r.status, r.code()), (status, Some(want)), "{what}: {}", r.body);
    }
    let e = c.head_object().bucket(&b).key("k").send().await.unwrap_err();
    assert_eq!(code(&e), "NotFound");
}

/// Anything but a well-formed form ends before the server has read much of it: a body without
/// its boundary, and a part whose headers never end, are refused while most of their declared
/// body is still owed (the parser would otherwise buffer all of it, before any check).
#[tokio::test]
async fn a_form_that_never_reaches_its_file_is_cut_short() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start().await;
    let b = bucket_name("postcut");
    create_bucket(&s.client(), &b).await;
    for (what, start) in
        [("no boundary", ""), ("endless part headers", "--cut\r\nContent-Disposition: form-data; name=\"key\"\r\nX-Pad: ")]
    {
        let declared = 256 * 1024 * 1024;
        let request = format!(
            "POST /{b} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=cut\r\n\
             Content-Length: {declared}\r\nConnection: close\r\n\r\n{start}"
        );
        let mut stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let filler = vec![b'x'; 1 << 20];
        // Four times the bound; a refused request may stop reading before all of it is sent.
        for _ in 0..4 {
            if stream.write_all(&filler).await.is_err() {
                break;
            }
        }
        let mut answer = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(60), stream.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "{what}: no answer while the body is still owed: it is being buffered");
        let r = RawResponse::parse_bytes(&answer);
        assert_eq!(
            (r.status, r.code()),
            (400, Some("MaxPostPreDataLengthExceededError")),
            "{what}: {}",
            r.body
        );
    }
}

/// A bucket policy sees a form upload as what it is: `s3:authType` POST with its signature
/// version, the browser's own `Referer`, and `s3:x-amz-acl` from the ACL actually stored.
#[tokio::test]
async fn a_form_upload_is_judged_on_what_it_is() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("postctx");
    create_bucket(&c, &b).await;
    let alt = account_of(ALT_AK);
    let policy = format!(
        r#"{{"Version": "2012-10-17", "Statement": [
            {{"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::{b}/no-forms/*",
              "Condition": {{"StringEquals": {{"s3:authType": "POST"}}}}}},
            {{"Effect": "Allow", "Principal": "*", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::{b}/from-app/*",
              "Condition": {{"StringLike": {{"aws:Referer": "https://app.example/*"}}}}}},
            {{"Effect": "Allow", "Principal": {{"AWS": "{alt}"}}, "Action": "s3:PutObject", "Resource": "arn:aws:s3:::{b}/drop/*",
              "Condition": {{"StringEquals": {{"s3:x-amz-acl": "bucket-owner-full-control"}}}}}}]}}"#
    );
    c.put_bucket_policy().bucket(&b).policy(policy).send().await.unwrap();
    let open = open_conditions(&b);
    let r = signed(PostForm::new("no-forms/a", b"x"), &s, &open).post(s.addr, &b).await;
    assert_eq!((r.status, r.code()), (403, Some("AccessDenied")), "{}", r.body);
    put(&c, &b, "no-forms/b", b"a PUT is not a form").await;

    // An anonymous form from the page the policy names, and from elsewhere.
    let (boundary, body) = PostForm::new("from-app/a", b"from the app").body();
    for (referer, want) in [("https://app.example/upload", 204), ("https://evil.example/", 403)] {
        let mut request = format!(
            "POST /{b} HTTP/1.1\r\nHost: 127.0.0.1\r\nReferer: {referer}\r\n\
             Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        let r = raw_http(s.addr, &request).await;
        assert_eq!(r.status, want, "{referer}: {}", r.body);
    }

    // The ACL the policy asks for is the one stored: the bucket owner can read what alt dropped.
    let conditions = [open[0].as_str(), open[1].as_str(), r#"{"acl": "bucket-owner-full-control"}"#];
    let form = PostForm::new("drop/a", b"dropped").field("acl", "bucket-owner-full-control");
    let r = form.signed(ALT_AK, ALT_SK, &s.region, &conditions).post(s.addr, &b).await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(get_bytes(&c, &b, "drop/a").await, b"dropped");
    let r = PostForm::new("drop/b", b"x").signed(ALT_AK, ALT_SK, &s.region, &[&open[0], &open[1]]).post(s.addr, &b).await;
    assert_eq!((r.status, r.code()), (403, Some("AccessDenied")), "{}", r.body);
}
