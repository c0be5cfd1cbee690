//! Replication helpers: configurations (SDK-built and raw XML), replicated bucket pairs, the
//! replication status of a version, waiting for a version to arrive, the headers a source
//! region sends with replica requests (to forge them), and a version-by-version comparison of
//! two buckets.

use aws_sdk_s3::Client;

use super::{account_of, all_versions, code, create_versioned_bucket, wait_until};

/// The `x-ferry-source` header of a replication request from `bucket` in `region`, owned by
/// the account of `owner_ak`.
pub fn source_header(region: &str, bucket: &str, owner_ak: &str) -> String {
    ferry_store::replication::SourceRef::new(region, bucket, &account_of(owner_ak)).encode().unwrap()
}

/// A request mutation that adds the `x-ferry-source` header `src` (what a source region sends
/// with every replica request).
pub fn with_source(src: String) -> impl Fn(&mut aws_sdk_s3::config::http::HttpRequest) + Send + Sync + 'static {
    move |r| {
        r.headers_mut().insert("x-ferry-source", src.clone());
    }
}

/// Versioned `sb` (at `src`) and `db` (at `dst`), and one rule replicating everything of `sb`,
/// delete markers included, to `db`.
pub async fn replicated_pair(src: &Client, sb: &str, dst: &Client, db: &str) {
    create_versioned_bucket(src, sb).await;
    create_versioned_bucket(dst, db).await;
    src.put_bucket_replication()
        .bucket(sb)
        .replication_configuration(simple_rules(&[&format!("arn:aws:s3:::{db}")]))
        .send()
        .await
        .expect("put replication");
}

/// Waits (up to `secs`) until `version` of `key` is in `bucket` at `c`.
pub async fn wait_for_version(what: &str, secs: u64, c: &Client, bucket: &str, key: &str, version: &str) {
    wait_until(what, secs, || async {
        c.head_object().bucket(bucket).key(key).version_id(version).send().await.is_ok()
    })
    .await;
}

/// A barrier for checks that something was *not* replicated: writes a new version of `key` in
/// `bucket` at `src` (tagged `tagging`, if given, to choose the rules that carry it) and waits
/// until it has arrived in each of `dests`; returns its version id.
///
/// Ferry delivers the jobs of one destination and key in the order they were recorded: a later
/// job waits until the earlier ones are delivered or failed. Once the barrier is at a
/// destination, every change of `key` recorded for that destination before it has been carried
/// out there, so a check made then cannot pass merely because a bug is slow. The barrier proves
/// this only for the destinations it was sent to, through a rule of the same source bucket.
pub async fn barrier(src: &Client, bucket: &str, key: &str, tagging: Option<&str>, dests: &[(&Client, &str)]) -> String {
    let out = src
        .put_object()
        .bucket(bucket)
        .key(key)
        .set_tagging(tagging.map(str::to_owned))
        .body(b"barrier".to_vec().into())
        .send()
        .await
        .expect("put the barrier");
    let vid = out.version_id().expect("a versioned bucket").to_owned();
    for (c, b) in dests {
        wait_for_version(&format!("the barrier {key} {vid} in {b}"), 30, c, b, key, &vid).await;
    }
    vid
}

/// Compares two buckets version by version: ids, latest flags, ETags, sizes, times, and for
/// each object version its content headers, user metadata and tags. Returns the differences.
pub async fn compare_buckets(src: &Client, sb: &str, dst: &Client, db: &str) -> Vec<String> {
    let (a, b) = (all_versions(src, sb).await, all_versions(dst, db).await);
    let mut diffs = Vec::new();
    for v in &a {
        match b.iter().find(|x| x.key == v.key && x.version_id == v.version_id) {
            None => diffs.push(format!("missing at destination: {} {}", v.key, v.version_id)),
            Some(w) if w != v => diffs.push(format!("differs: {v:?} vs {w:?}")),
            Some(_) if !v.delete_marker => {
                let h1 = src.head_object().bucket(sb).key(&v.key).version_id(&v.version_id).send().await;
                let h2 = dst.head_object().bucket(db).key(&v.key).version_id(&v.version_id).send().await;
                match (h1, h2) {
                    (Ok(h1), Ok(h2)) => {
                        if h1.content_type() != h2.content_type()
                            || h1.metadata() != h2.metadata()
                            || h1.cache_control() != h2.cache_control()
                        {
                            diffs.push(format!("headers differ for {} {}", v.key, v.version_id));
                        }
                    }
                    (x, y) => diffs.push(format!(
                        "head failed for {} {}: {:?} {:?}",
                        v.key,
                        v.version_id,
                        x.err().map(|e| code(&e)),
                        y.err().map(|e| code(&e))
                    )),
                }
                let t1 = src
                    .get_object_tagging()
                    .bucket(sb)
                    .key(&v.key)
                    .version_id(&v.version_id)
                    .send()
                    .await
                    .map(|t| t.tag_set().to_vec());
                let t2 = dst
                    .get_object_tagging()
                    .bucket(db)
                    .key(&v.key)
                    .version_id(&v.version_id)
                    .send()
                    .await
                    .map(|t| t.tag_set().to_vec());
                if t1.ok() != t2.ok() {
                    diffs.push(format!("tags differ for {} {}", v.key, v.version_id));
                }
            }
            Some(_) => {}
        }
    }
    for w in &b {
        if !a.iter().any(|v| v.key == w.key && v.version_id == w.version_id) {
            diffs.push(format!("extra at destination: {} {}", w.key, w.version_id));
        }
    }
    diffs
}

/// A `x-ferry-replica` header value as a peer would send it, built from JSON (base64url, no
/// padding), so tests can forge any field.
pub fn replica_header(json: &serde_json::Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string())
}

/// Microseconds since the epoch, now.
pub fn now_us() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros()).unwrap()
}

/// The replication status header of a version.
pub async fn repl_status(c: &Client, bucket: &str, key: &str, version: Option<&str>) -> Option<String> {
    c.head_object()
        .bucket(bucket)
        .key(key)
        .set_version_id(version.map(str::to_owned))
        .send()
        .await
        .ok()?
        .replication_status()
        .map(|s| s.as_str().to_owned())
}

/// Puts a replication configuration given as raw XML (for elements the SDK does not model).
pub async fn put_replication_xml(c: &Client, bucket: &str, xml: &str) -> Result<(), String> {
    let body = xml.to_owned();
    let len = body.len().to_string();
    let r = c
        .put_bucket_replication()
        .bucket(bucket)
        .replication_configuration(
            aws_sdk_s3::types::ReplicationConfiguration::builder()
                .role("")
                .rules(
                    aws_sdk_s3::types::ReplicationRule::builder()
                        .status(aws_sdk_s3::types::ReplicationRuleStatus::Enabled)
                        .destination(aws_sdk_s3::types::Destination::builder().bucket("x").build().unwrap())
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .customize()
        .mutate_request(move |req| {
            *req.body_mut() = aws_smithy_types::body::SdkBody::from(body.clone());
            req.headers_mut().remove("content-md5");
            req.headers_mut().insert("content-length", len.clone());
        })
        .send()
        .await;
    r.map(|_| ()).map_err(|e| code(&e))
}

/// A replication configuration with one rule per destination ARN, all objects, delete markers.
pub fn simple_rules(dests: &[&str]) -> aws_sdk_s3::types::ReplicationConfiguration {
    use aws_sdk_s3::types::*;
    let rules = dests
        .iter()
        .enumerate()
        .map(|(i, d)| {
            ReplicationRule::builder()
                .id(format!("rule-{i}"))
                .priority(i as i32)
                .status(ReplicationRuleStatus::Enabled)
                .filter(ReplicationRuleFilter::builder().prefix("").build())
                .delete_marker_replication(
                    DeleteMarkerReplication::builder().status(DeleteMarkerReplicationStatus::Enabled).build(),
                )
                .destination(Destination::builder().bucket(*d).build().unwrap())
                .build()
                .unwrap()
        })
        .collect();
    ReplicationConfiguration::builder().role("arn:aws:iam::000000000000:role/ferry").set_rules(Some(rules)).build().unwrap()
}
