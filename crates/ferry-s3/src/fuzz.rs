//! Entry points of the S3 front end's fuzz targets (`fuzz/`, run with `cargo fuzz`): each takes
//! arbitrary bytes from a client and must never panic. They also run in unit tests on a small
//! corpus, so they stay compiled and meaningful without the fuzzer. The `config` target's entry
//! point is `ferry_core::fuzz::config`.

use ferry_store::model::{BodyLayout, ObjectAttrs, Owner, PartRef, VersionRecord};
use ferry_store::replication::Rule;
use s3s::dto::{ETagCondition, Range, ReplicationConfiguration, Timestamp};
use s3s::xml::Deserialize as _;

use crate::get::{Conditions, ReadPlan};
use crate::replication::config::{parse_arn, rule_from_dto, rule_to_dto};

/// A `PutBucketReplication` body: parsed as s3s parses it, then turned into Ferry's rules. A
/// rule Ferry accepts must survive its own XML form (`GetBucketReplication`) unchanged.
pub fn replication_xml(data: &[u8]) {
    let mut d = s3s::xml::Deserializer::new(data);
    let Ok(cfg) = ReplicationConfiguration::deserialize(&mut d) else { return };
    // What PutBucketReplication does after parsing: the destination ARN becomes a peer and a
    // bucket name (here the ARN's region, or a stand-in for the region that holds the bucket).
    let resolve = |mut rule: Rule| -> Option<Rule> {
        let (region, name) = parse_arn(&rule.destination.bucket).ok()?;
        rule.destination.peer = region.unwrap_or_else(|| "found-region".to_owned());
        rule.destination.bucket = name;
        Some(rule)
    };
    for (i, r) in cfg.rules.into_iter().enumerate() {
        if let Some(rule) = rule_from_dto(r, i).ok().and_then(|(rule, _)| resolve(rule)) {
            let again = rule_from_dto(rule_to_dto(&rule), i).map(|(r, _)| resolve(r));
            let again = again.unwrap_or_else(|e| panic!("{rule:?} refused back: {e:?}"));
            assert_eq!(Some(&rule), again.as_ref(), "a rule changed through its own XML form");
        }
    }
}

/// A `PutBucketLifecycleConfiguration` body: parsed as s3s parses it, then checked and turned
/// into Ferry's rules. Rules Ferry accepts must survive their own XML form
/// (`GetBucketLifecycleConfiguration`) unchanged.
pub fn lifecycle_xml(data: &[u8]) {
    let mut d = s3s::xml::Deserializer::new(data);
    let Ok(cfg) = s3s::dto::BucketLifecycleConfiguration::deserialize(&mut d) else { return };
    let Ok(rules) = crate::lifecycle::rules_from(cfg.rules) else { return };
    let again = crate::lifecycle::rules_from(rules.iter().map(crate::lifecycle::rule_dto).collect());
    let again = again.unwrap_or_else(|e| panic!("{rules:?} refused back: {e:?}"));
    assert_eq!(rules, again, "rules changed through their own XML form");
}

/// Object Lock input: the first three lines are a write's `x-amz-object-lock-mode`,
/// `-retain-until-date` and `-legal-hold` headers, the fourth an `x-ferry-replica` header value,
/// the rest a `PutObjectLockConfiguration` body. Nothing may panic; a lock a write is granted
/// has a date in the future; a configuration Ferry accepts survives its own XML form, and a
/// replica header that decodes survives its own encoding.
pub fn object_lock(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(5, '\n');
    let mut next = || lines.next().filter(|l| !l.is_empty());
    let mode = next().map(|m| s3s::dto::ObjectLockMode::from(m.to_owned()));
    let until = next().and_then(|d| Timestamp::parse(s3s::dto::TimestampFormat::DateTime, d).ok());
    let hold = next().map(|h| s3s::dto::ObjectLockLegalHoldStatus::from(h.to_owned()));
    let replica = next();
    let body = lines.next().unwrap_or_default();
    let locked = ferry_store::model::BucketRecord {
        name: "b".into(),
        created_us: 0,
        owner: Owner::default(),
        versioning: ferry_store::model::Versioning::Enabled,
        acl: ferry_store::model::Acl::default(),
        tagging: None,
        replication: None,
        replica_sources: Vec::new(),
        config: ferry_store::model::BucketConfig {
            object_lock: Some(ferry_store::lock::ObjectLockConfig::default()),
            ..Default::default()
        },
    };
    let before = ferry_core::time::now_micros();
    if let Ok(ferry_store::lock::LockAttrs { retention: Some(r), .. }) =
        crate::object_lock::requested(&locked, mode.as_ref(), until.as_ref(), hold.as_ref())
    {
        assert!(r.until_us > before, "a retention granted with a date in the past: {r:?}");
    }
    if let Some(value) = replica
        && let Ok(meta) = ferry_store::replication::ReplicaMeta::decode(value)
    {
        let again = meta.encode().and_then(|e| ferry_store::replication::ReplicaMeta::decode(&e));
        assert_eq!(again.ok().as_ref(), Some(&meta), "a replica header changed through its own encoding");
    }
    let mut d = s3s::xml::Deserializer::new(body.as_bytes());
    let Ok(cfg) = s3s::dto::ObjectLockConfiguration::deserialize(&mut d) else { return };
    if let Ok(parsed) = crate::object_lock::parse_config(Some(cfg)) {
        let again = crate::object_lock::parse_config(Some(crate::object_lock::config_dto(&parsed)));
        assert_eq!(again.ok(), Some(parsed), "a configuration changed through its own XML form");
    }
}

/// A read's `Range`, `If-Match`, `If-None-Match`, `If-Modified-Since`, `partNumber` and SSE-C
/// headers (algorithm, key, MD5), one per line, against versions of several sizes and layouts:
/// the plan must stay within the object, and within its sealed form when encrypted.
pub fn read_headers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let mut next = || lines.next().filter(|l| !l.is_empty());
    let range = next().and_then(|h| Range::parse(h).ok());
    let if_match = next().and_then(|h| ETagCondition::parse_http_header(h.as_bytes()).ok());
    let if_none_match = next().and_then(|h| ETagCondition::parse_http_header(h.as_bytes()).ok());
    let since = next().and_then(|h| Timestamp::parse(s3s::dto::TimestampFormat::HttpDate, h).ok());
    let part_number = next().and_then(|h| h.trim().parse::<i32>().ok());
    // The SSE-C headers: algorithm, key, key MD5 (refused or accepted, never a panic).
    let (alg, key, md5) = (next(), next(), next());
    if let Ok(Some(_)) = crate::sse::customer_key(alg, key, md5) {
        use base64::Engine as _;
        use md5::Digest as _;
        let raw = base64::engine::general_purpose::STANDARD.decode(key.unwrap_or_default()).unwrap_or_default();
        assert_eq!(raw.len(), 32, "an SSE-C key accepted that is not 256 bits");
        let digest = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&raw));
        assert_eq!(Some(digest.as_str()), md5, "an SSE-C key accepted under another key's MD5");
    }
    let cond = Conditions {
        if_match: if_match.as_ref(),
        if_none_match: if_none_match.as_ref(),
        if_modified_since: since.as_ref(),
        if_unmodified_since: since.as_ref(),
    };
    for (size, parts) in [
        (0u64, vec![]),
        (1, vec![1]),
        (1000, vec![1000]),
        (15 << 20, vec![5 << 20, 5 << 20, 5 << 20]),
        (u64::MAX / 2, vec![u64::MAX / 2]),
    ] {
        let v = version(size, &parts);
        let _ = cond.evaluate(&v);
        if let Ok(plan) = ReadPlan::new(&v, range.as_ref(), part_number) {
            assert!(plan.range.start <= plan.range.end && plan.range.end <= size, "{plan:?} outside 0..{size}");
            // Encrypted, the same range opens whole chunks of the body that cover it.
            if let Ok(span) = ferry_store::sse::span(size, plan.range.start, plan.range.end) {
                use ferry_store::sse::{CHUNK, TAG, chunks};
                let (c, sealed) = (CHUNK as u64, (CHUNK + TAG) as u64);
                assert!(span.skip < c && span.offset == span.first * sealed, "{span:?}");
                assert_eq!(span.first * c + span.skip, plan.range.start, "{span:?} does not start at the range");
                assert!(span.end() <= chunks(size), "{span:?} past the body's chunks");
                assert!(plan.range.end <= span.end().saturating_mul(c).min(size), "{span:?} ends before the range");
            }
        }
    }
}

fn version(size: u64, parts: &[u64]) -> VersionRecord {
    let layout = if parts.len() > 1 {
        BodyLayout::Parts {
            parts: parts.iter().map(|s| PartRef { blob: "b".into(), size: *s, etag: "e".into(), checksums: None }).collect(),
            multipart: true,
        }
    } else {
        BodyLayout::Inline(Vec::new())
    };
    VersionRecord {
        bucket: "b".into(),
        key: "k".into(),
        version_id: "v".into(),
        mtime_us: 1_700_000_000_000_000,
        is_latest: true,
        delete_marker: false,
        size,
        etag: "0123456789abcdef0123456789abcdef".into(),
        storage_class: None,
        owner: Owner { id: "o".into(), display_name: "o".into() },
        repl_status: None,
        layout,
        attrs: ObjectAttrs::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed corpus, and some hostile inputs, through every entry point.
    #[test]
    fn entry_points_survive_their_corpus() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
        let mut n = 0;
        for (target, f) in [
            ("replication_xml", replication_xml as fn(&[u8])),
            ("read_headers", read_headers),
            ("lifecycle_xml", lifecycle_xml),
            ("object_lock", object_lock),
        ] {
            for e in std::fs::read_dir(dir.join(target)).expect("fuzz/corpus/TARGET") {
                let data = std::fs::read(e.expect("entry").path()).expect("read");
                f(&data);
                for cut in [1, data.len() / 2, data.len().saturating_sub(1)] {
                    f(&data[..cut.min(data.len())]);
                }
                n += 1;
            }
        }
        assert!(n >= 5, "{n} corpus files");
        read_headers(b"bytes=-0\n\"x\"\n*\nWed, 21 Oct 2015 07:28:00 GMT\n0");
        read_headers(b"bytes=18446744073709551615-\n\n\n\n10001");
        read_headers(b"bytes=5-1\n\n\n\n-3");
    }
}
