//! CORS: the configuration through aws-sdk-s3, and what a browser sees (raw preflights and
//! requests with `Origin`, presigned URLs).

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::types::{CorsConfiguration, CorsRule};
use std::time::Duration;

use crate::common::*;

fn rule(origins: &[&str], methods: &[&str], headers: &[&str]) -> CorsRule {
    let mut r = CorsRule::builder().max_age_seconds(600).expose_headers("ETag");
    for o in origins {
        r = r.allowed_origins(*o);
    }
    for m in methods {
        r = r.allowed_methods(*m);
    }
    for h in headers {
        r = r.allowed_headers(*h);
    }
    r.build().unwrap()
}

/// A raw request to `bucket/key` with `headers`.
async fn send(s: &TestServer, method: &str, bucket: &str, key: &str, headers: &[(&str, &str)]) -> RawResponse {
    let mut text = format!("{method} /{bucket}/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("\r\n");
    raw_http(s.addr, text.as_bytes()).await
}

#[tokio::test]
async fn a_cors_configuration_is_put_read_checked_and_deleted() {
    let s = TestServer::start().await;
    let (c, alt) = (s.client(), s.alt_client());
    let b = bucket_name("cors");
    create_bucket(&c, &b).await;
    assert_eq!(code(&c.get_bucket_cors().bucket(&b).send().await.unwrap_err()), "NoSuchCORSConfiguration");
    let cfg = CorsConfiguration::builder()
        .cors_rules(rule(&["https://app.example"], &["GET", "PUT"], &["*"]))
        .cors_rules(rule(&["*"], &["GET"], &[]))
        .build()
        .unwrap();
    c.put_bucket_cors().bucket(&b).cors_configuration(cfg).send().await.unwrap();
    let got = c.get_bucket_cors().bucket(&b).send().await.unwrap();
    let rules = got.cors_rules();
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].allowed_origins(), ["https://app.example"]);
    assert_eq!(rules[0].allowed_methods(), ["GET", "PUT"]);
    assert_eq!(rules[0].allowed_headers(), ["*"]);
    assert_eq!(rules[0].max_age_seconds(), Some(600));
    assert_eq!(code(&alt.get_bucket_cors().bucket(&b).send().await.unwrap_err()), "AccessDenied");

    let bad = CorsConfiguration::builder().cors_rules(rule(&["*"], &["PATCH"], &[])).build().unwrap();
    let e = c.put_bucket_cors().bucket(&b).cors_configuration(bad).send().await.unwrap_err();
    assert_eq!(code(&e), "InvalidRequest");
    let bad = CorsConfiguration::builder().cors_rules(rule(&["https://*.*.example"], &["GET"], &[])).build().unwrap();
    assert_eq!(
        code(&c.put_bucket_cors().bucket(&b).cors_configuration(bad).send().await.unwrap_err()),
        "InvalidRequest"
    );

    c.delete_bucket_cors().bucket(&b).send().await.unwrap();
    assert_eq!(code(&c.get_bucket_cors().bucket(&b).send().await.unwrap_err()), "NoSuchCORSConfiguration");
}

/// Preflights are answered without credentials; requests with `Origin` get the matching
/// rule's headers, whether they succeed or are refused; CORS grants nothing.
#[tokio::test]
async fn browsers_get_cors_answers_and_no_access() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("corsb");
    create_bucket(&c, &b).await;
    put(&c, &b, "k", b"v").await;
    let app = "https://app.example";
    let cfg = CorsConfiguration::builder()
        .cors_rules(rule(&["https://*.example"], &["GET", "PUT"], &["content-type", "x-amz-*"]))
        .build()
        .unwrap();
    c.put_bucket_cors().bucket(&b).cors_configuration(cfg).send().await.unwrap();

    // Preflight: allowed, then refused for a method, a header, an origin; malformed without a method.
    let ok = send(
        &s,
        "OPTIONS",
        &b,
        "k",
        &[
            ("Origin", app),
            ("Access-Control-Request-Method", "PUT"),
            ("Access-Control-Request-Headers", "Content-Type, X-Amz-Meta-A"),
        ],
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.header("access-control-allow-origin"), Some(app));
    assert_eq!(ok.header("access-control-allow-methods"), Some("GET, PUT"));
    assert_eq!(ok.header("access-control-allow-headers"), Some("Content-Type, X-Amz-Meta-A"));
    assert_eq!(ok.header("access-control-max-age"), Some("600"));
    assert_eq!(ok.header("access-control-expose-headers"), Some("ETag"));
    for refused in [
        vec![("Origin", app), ("Access-Control-Request-Method", "DELETE")],
        vec![("Origin", app), ("Access-Control-Request-Method", "PUT"), ("Access-Control-Request-Headers", "authorization")],
        vec![("Origin", "https://evil.test"), ("Access-Control-Request-Method", "GET")],
    ] {
        let r = send(&s, "OPTIONS", &b, "k", &refused).await;
        assert_eq!(r.status, 403, "{refused:?}");
        assert_eq!(r.header("access-control-allow-origin"), None);
    }
    assert_eq!(send(&s, "OPTIONS", &b, "k", &[("Origin", app)]).await.status, 400);
    assert_eq!(send(&s, "OPTIONS", &b, "k", &[]).await.status, 400);

    // An anonymous GET with Origin is still refused (private object), with CORS headers.
    let r = send(&s, "GET", &b, "k", &[("Origin", app)]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("access-control-allow-origin"), Some(app));
    // Without Origin, or from an origin no rule names: no CORS headers.
    assert_eq!(send(&s, "GET", &b, "k", &[]).await.header("access-control-allow-origin"), None);
    assert_eq!(
        send(&s, "GET", &b, "k", &[("Origin", "https://evil.test")]).await.header("access-control-allow-origin"),
        None
    );

    // A presigned GET from the page: the body and the CORS headers.
    let get = c
        .get_object()
        .bucket(&b)
        .key("k")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300)).unwrap())
        .await
        .unwrap();
    let r = send_presigned_with(&get, &[("Origin", app)], b"").await;
    assert_eq!((r.status, r.body.as_str()), (200, "v"));
    assert_eq!(r.header("access-control-allow-origin"), Some(app));
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, PUT"));
}
