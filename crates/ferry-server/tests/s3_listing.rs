//! ListObjects v1/v2: prefixes, delimiters, pagination, URL encoding, owners.

use aws_sdk_s3::types::EncodingType;

use crate::common::*;

async fn bucket_with(s: &TestServer, keys: &[&str]) -> String {
    let c = s.client();
    let b = bucket_name("ls");
    create_bucket(&c, &b).await;
    for k in keys {
        put(&c, &b, k, k.as_bytes()).await;
    }
    b
}

const KEYS: &[&str] = &["a", "b/1", "b/2", "b/c/3", "c", "d/x", "e%20f", "é"];

#[tokio::test]
async fn v2_prefix_delimiter_and_pages() {
    let s = TestServer::start().await;
    let b = bucket_with(&s, KEYS).await;
    let c = s.client();
    let out = c.list_objects_v2().bucket(&b).delimiter("/").send().await.unwrap();
    let keys: Vec<_> = out.contents().iter().filter_map(|o| o.key()).collect();
    let prefixes: Vec<_> = out.common_prefixes().iter().filter_map(|p| p.prefix()).collect();
    assert_eq!(keys, vec!["a", "c", "e%20f", "é"]);
    assert_eq!(prefixes, vec!["b/", "d/"]);
    assert_eq!(out.key_count(), Some(6));

    let out = c.list_objects_v2().bucket(&b).prefix("b/").delimiter("/").send().await.unwrap();
    assert_eq!(out.contents().iter().filter_map(|o| o.key()).collect::<Vec<_>>(), vec!["b/1", "b/2"]);
    assert_eq!(out.common_prefixes().iter().filter_map(|p| p.prefix()).collect::<Vec<_>>(), vec!["b/c/"]);

    // Pages of 2 with a delimiter visit every entry exactly once.
    let mut token = None;
    let mut seen = Vec::new();
    loop {
        let out =
            c.list_objects_v2().bucket(&b).delimiter("/").max_keys(2).set_continuation_token(token.clone()).send().await.unwrap();
        seen.extend(out.contents().iter().filter_map(|o| o.key().map(str::to_owned)));
        seen.extend(out.common_prefixes().iter().filter_map(|p| p.prefix().map(str::to_owned)));
        if out.is_truncated() != Some(true) {
            break;
        }
        token = out.next_continuation_token().map(str::to_owned);
    }
    seen.sort();
    assert_eq!(seen, vec!["a", "b/", "c", "d/", "e%20f", "é"]);

    let out = c.list_objects_v2().bucket(&b).start_after("b/2").send().await.unwrap();
    assert_eq!(out.contents().first().and_then(|o| o.key()), Some("b/c/3"));
    // Owners only with fetch-owner.
    assert!(out.contents()[0].owner().is_none());
    let out = c.list_objects_v2().bucket(&b).fetch_owner(true).send().await.unwrap();
    assert_eq!(out.contents()[0].owner().and_then(|o| o.display_name()), Some("main"));
    let out = c.list_objects_v2().bucket(&b).max_keys(0).send().await.unwrap();
    assert!(out.contents().is_empty());
}

#[tokio::test]
async fn v1_markers() {
    let s = TestServer::start().await;
    let b = bucket_with(&s, KEYS).await;
    let c = s.client();
    let mut marker: Option<String> = None;
    let mut seen = Vec::new();
    loop {
        let out = c.list_objects().bucket(&b).max_keys(3).set_marker(marker.clone()).send().await.unwrap();
        let keys: Vec<String> = out.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect();
        seen.extend(keys.clone());
        if out.is_truncated() != Some(true) {
            break;
        }
        marker = out.next_marker().map(str::to_owned).or_else(|| keys.last().cloned());
    }
    assert_eq!(seen, KEYS.iter().map(|k| (*k).to_owned()).collect::<Vec<_>>());
    let out = c.list_objects().bucket(&b).delimiter("/").max_keys(2).send().await.unwrap();
    assert_eq!(out.is_truncated(), Some(true));
    assert_eq!(out.next_marker(), Some("b/"));
    let next = c.list_objects().bucket(&b).delimiter("/").marker("b/").send().await.unwrap();
    assert_eq!(
        next.contents().first().and_then(|o| o.key()),
        Some("c"),
        "a marker that is a common prefix skips it"
    );
}

#[tokio::test]
async fn url_encoding_type() {
    let s = TestServer::start().await;
    let b = bucket_with(&s, &["sp ace/x", "plus+"]).await;
    let c = s.client();
    let out = c.list_objects_v2().bucket(&b).encoding_type(EncodingType::Url).delimiter("/").send().await.unwrap();
    // Keys and prefixes come back percent-encoded (the Rust SDK does not decode them).
    let keys: Vec<_> = out.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, vec!["plus%2B"]);
    assert_eq!(out.common_prefixes()[0].prefix(), Some("sp%20ace/"));
    assert_eq!(out.encoding_type(), Some(&EncodingType::Url));
    // Without it, keys are returned as stored.
    let out = c.list_objects_v2().bucket(&b).send().await.unwrap();
    assert_eq!(
        out.contents().iter().filter_map(|o| o.key()).collect::<Vec<_>>(),
        vec!["plus+", "sp ace/x"]
    );
}

#[tokio::test]
async fn listing_many_keys_in_pages() {
    let s = TestServer::start().await;
    let c = s.client_with(Mode::WhenRequired);
    let b = bucket_name("many");
    create_bucket(&c, &b).await;
    let mut handles = Vec::new();
    for i in 0..1500 {
        let c = c.clone();
        let b = b.clone();
        handles.push(tokio::spawn(async move { put(&c, &b, &format!("k{i:05}"), b"x").await }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let first = c.list_objects_v2().bucket(&b).send().await.unwrap();
    assert_eq!(first.key_count(), Some(1000));
    assert_eq!(first.is_truncated(), Some(true));
    let second =
        c.list_objects_v2().bucket(&b).continuation_token(first.next_continuation_token().unwrap()).send().await.unwrap();
    assert_eq!(second.key_count(), Some(500));
    assert_eq!(second.contents()[0].key(), Some("k01000"));
}
