//! The contract of a metadata backend, as tests any backend must pass. [`conformance_tests!`]
//! expands into one `#[tokio::test]` per case for a backend opened by a given expression over
//! a database directory (the SQLite backend runs them in `sqlite/mod.rs`); a second backend
//! adds one line to run them too.
//!
//! What is pinned: atomicity of a closure within a batch and its hooks, read-after-ack,
//! the commit clock, S3 key order, version and upload scans with their cursors, blob garbage,
//! and the replication tables' derived facts (per-key order, counters, delivery records).

use std::path::Path;

use crate::error::{Error, Result};
use crate::meta::{MetaStore, VersionCursor, WriteTx};
use crate::model::*;
use crate::replication::{Backfill, BackfillState, JobOp, JobOptions, JobState, NewJob, StatusFilter};

/// Expands into the conformance tests for a backend: `fixture` is made once per test (`None`:
/// the backend's server is not installed, the test is skipped), and `open(&fixture)` gives an
/// async closure from a database directory to the store (the same directory opens the same
/// database again).
macro_rules! conformance_tests {
    (fixture: $fixture:expr, open: $open:expr) => {
        $crate::meta::conformance::conformance_tests!(@cases $fixture, $open;
            a_failed_closure_rolls_back_alone, the_commit_clock_only_moves_forward, keys_sort_bytewise,
            versions_order_by_time_then_id, version_scans_resume_after_their_cursor, uploads_and_parts,
            released_blobs_become_garbage_when_due, jobs_of_a_key_run_one_at_a_time, job_counters_follow_their_states,
            a_live_job_promotes_waiting_backfill_jobs, deliveries_go_with_their_version, a_replica_keeps_its_status,
            a_transition_changes_only_the_class,
            backfill_counters_never_go_back, events_filter_by_rule_and_kind, bucket_usage_follows_its_versions,
            a_buckets_access_settings_are_kept, a_bucket_is_created_once);
    };
    (@cases $fixture:expr, $open:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let dir = tempfile::tempdir().unwrap();
                let Some(fixture) = $fixture else { return };
                let open = ($open)(&fixture);
                $crate::meta::conformance::$case(dir.path(), open).await;
            }
        )*
    };
}
pub(crate) use conformance_tests;

pub(crate) fn owner() -> Owner {
    Owner { id: "u".into(), display_name: "u".into() }
}

pub(crate) fn bucket(name: &str) -> BucketRecord {
    BucketRecord {
        name: name.into(),
        created_us: 1,
        owner: owner(),
        versioning: Versioning::Enabled,
        acl: Acl::private(&owner()),
        tagging: None,
        replication: None,
        replica_sources: Vec::new(),
        config: Default::default(),
    }
}

pub(crate) fn version(key: &str, version_id: &str, mtime_us: i64) -> VersionRecord {
    VersionRecord {
        bucket: "b".into(),
        key: key.into(),
        version_id: version_id.into(),
        mtime_us,
        is_latest: false,
        delete_marker: false,
        size: 3,
        etag: "e".into(),
        storage_class: None,
        owner: owner(),
        repl_status: None,
        layout: BodyLayout::Inline(b"abc".to_vec()),
        attrs: ObjectAttrs::default(),
    }
}

/// A stored replication configuration: one rule per destination bucket (all on peer `eu`),
/// replicating delete markers, and deletes when `deletes`.
pub(crate) fn replication_config(dests: &[&str], deletes: bool) -> String {
    use crate::replication::{ReplicationConfig, Rule, RuleDestination, RuleFilter};
    let rules = dests
        .iter()
        .zip(0..)
        .map(|(d, i)| Rule {
            id: format!("r{i}"),
            priority: i,
            enabled: true,
            v2: true,
            filter: RuleFilter::default(),
            delete_markers: true,
            deletes,
            existing_objects: false,
            replica_modifications: false,
            destination: RuleDestination {
                peer: "eu".into(),
                bucket: (*d).into(),
                storage_class: None,
                account: None,
                owner_override: false,
                rpo_minutes: None,
                metrics: false,
            },
        })
        .collect();
    ReplicationConfig { role: String::new(), rules }.to_stored().unwrap()
}

/// A one-byte object written by a client (not a replica).
pub(crate) fn new_object(key: &str) -> crate::objects::NewVersion {
    crate::objects::NewVersion {
        key: key.into(),
        size: 1,
        etag: "e".into(),
        storage_class: None,
        owner: owner(),
        layout: BodyLayout::Inline(vec![1]),
        attrs: ObjectAttrs::default(),
        repl_status: None,
        replica: None,
    }
}

fn put(tx: &mut dyn WriteTx, v: &VersionRecord) -> Result<()> {
    tx.put_version(v)?;
    tx.refresh_latest(&v.bucket, &v.key)
}

fn job<'a>(key: &'a str, version_id: &'a str, opts: &'a JobOptions, backfill_id: Option<i64>) -> NewJob<'a> {
    NewJob {
        bucket: "b",
        key,
        version_id,
        op: JobOp::Put,
        peer: "eu",
        dest_bucket: "d",
        rule_id: "r",
        opts,
        created_us: 10,
        size: 5,
        backfill_id,
    }
}

async fn with_bucket<M: MetaStore>(meta: &M) {
    meta.write(|tx| tx.put_bucket(&bucket("b"))).await.unwrap();
}

/// Creating a bucket that exists creates nothing and leaves it as it was; a bucket read to be
/// changed is the bucket as stored.
pub(crate) async fn a_bucket_is_created_once<M: MetaStore>(dir: &Path, open: impl AsyncFn(&Path) -> M) {
    let meta = open(dir).await;
    assert!(meta.write(|tx| tx.insert_bucket(&bucket("b"))).await.unwrap());
    let mut other = bucket("b");
    other.owner = Owner { id: "someone-else".into(), display_name: "x".into() };
    assert!(!meta.write(move |tx| tx.insert_bucket(&other)).await.unwrap());
    assert_eq!(meta.read(|r| r.get_bucket("b")).await.unwrap(), Some(bucket("b")));
    assert_eq!(meta.write(|tx| tx.lock_bucket("b")).await.unwrap(), Some(bucket("b")));
    assert_eq!(meta.write(|tx| tx.lock_bucket("none")).await.unwrap(), None);
}

/// A bucket's access settings (policy, Block Public Access) are stored and read back whole,
/// survive a reopen, and an empty set reads back empty.
pub(crate) async fn a_buckets_access_settings_are_kept<M: MetaStore>(dir: &Path, open: impl AsyncFn(&Path) -> M) {
    let meta = open(dir).await;
    let mut b = bucket("b");
    b.config.policy = Some(r#"{"Statement": []}"#.into());
    b.config.public_access_block = Some(PublicAccessBlock { block_public_policy: true, ..Default::default() });
    let stored = b.clone();
    meta.write(move |tx| tx.put_bucket(&stored)).await.unwrap();
    meta.write(|tx| tx.put_bucket(&bucket("plain"))).await.unwrap();
    drop(meta);
    let meta = open(dir).await;
    assert_eq!(meta.read(|r| r.get_bucket("b")).await.unwrap(), Some(b));
    let plain = meta.read(|r| r.get_bucket("plain")).await.unwrap().unwrap();
    assert!(plain.config.is_empty());
}

/// Closures queued together commit together, but one that fails leaves no trace: neither its
/// rows nor its on-commit hooks. A write acknowledged is visible to every later read.
pub(crate) async fn a_failed_closure_rolls_back_alone<M: MetaStore>(dir: &Path, open: impl AsyncFn(&Path) -> M) {
    let meta = open(dir).await;
    with_bucket(&meta).await;
    let fired = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (f1, f2) = (fired.clone(), fired.clone());
    let good = meta.write(move |tx| {
        put(tx, &version("good", "v1", 10))?;
        tx.on_commit(Box::new(move || {
            f1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        Ok(())
    });
    let bad = meta.write(move |tx| -> Result<()> {
        put(tx, &version("bad", "v1", 10))?;
        tx.on_commit(Box::new(move || {
            f2.fetch_add(100, std::sync::atomic::Ordering::SeqCst);
        }));
        Err(Error::PreconditionFailed)
    });
    let (good, bad) = tokio::join!(good, bad);
    good.unwrap();
    assert!(matches!(bad, Err(Error::PreconditionFailed)), "{bad:?}");
    assert_eq!(
        fired.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the committed closure's hook ran"
    );
    let (g, b) = meta.read(|r| Ok((r.get_latest("b", "good")?, r.get_latest("b", "bad")?))).await.unwrap();
    assert!(g.is_some_and(|v| v.is_latest), "an acknowledged write is visible");
    assert!(b.is_none(), "the failed closure's row is gone");

    // A once-hook fires once per transaction; one dropped with its failed closure does not
    // keep a later closure's from being registered.
    fired.store(0, std::sync::atomic::Ordering::SeqCst);
    let hook = |f: &std::sync::Arc<std::sync::atomic::AtomicUsize>| -> Box<dyn FnOnce() + Send> {
        let f = f.clone();
        Box::new(move || {
            f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let (h1, h2, h3) = (hook(&fired), hook(&fired), hook(&fired));
    let failed = meta.write(move |tx| -> Result<()> {
        tx.on_commit_once("k", h1);
        Err(Error::PreconditionFailed)
    });
    let twice = meta.write(move |tx| {
        tx.on_commit_once("k", h2);
        tx.on_commit_once("k", h3);
        Ok(())
    });
    let (failed, twice) = tokio::join!(failed, twice);
    assert!(failed.is_err());
    twice.unwrap();
    assert_eq!(
        fired.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "once per transaction, after a failed closure too"
    );
}

/// Commit times increase strictly, across batches and across a reopen; observing a later time
/// moves the clock past it; the committed clock a snapshot reports covers every commit it sees.
pub(crate) async fn the_commit_clock_only_moves_forward<M: MetaStore>(dir: &Path, open: impl AsyncFn(&Path) -> M) {
    let meta = open(dir).await;
    let a = meta.write(|tx| Ok((tx.now(), tx.now()))).await.unwrap();
    assert!(a.1 > a.0);
    let far = a.1 + 60_000_000;
    let b = meta
        .write(move |tx| {
            tx.observe_time(far);
            Ok(tx.now())
        })
        .await
        .unwrap();
    assert!(b > far, "observed times are passed");
    assert!(meta.read(|r| r.committed_clock()).await.unwrap() >= b);
    drop(meta);
    let meta = open(dir).await;
    let c = meta.write(|tx| Ok(tx.now())).await.unwrap();
    assert!(c > b, "the clock survives a reopen");
}

/// Keys compare as bytes (S3 order), not as text in some collation.
pub(crate) async fn keys_sort_bytewise<M: MetaStore>(dir: &Path, open: impl AsyncFn(&Path) -> M) {
    let meta = open(dir).await;
    with_bucket(&meta).await;
    let keys = ["a", "a/b", "a0", "B", "é", "z", "a\u{1}", "\u{10000}"];
    meta.write(move |tx| {
        for (i, k) in keys.iter().enumerate() {
            put(tx, &version(k, "v", 10 + i64::try_from(i).unwrap_or(0)))?;
        }
        Ok(())
    })
    .await
    .unwrap();
    let listed = meta.read(|r| r.scan_latest("b", b"", false, None, 100)).await.unwrap();
    let mut want: Vec<&str> = keys.to_vec();
    want.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));
    assert_eq!(listed.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), want);
    let bounded = meta.read(|r| r.scan_latest("b", b"a", true, Some(b"a1"), 100)).await.unwrap();
    assert_eq!(bounded.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), vec!["a\u{1}", "a/b", "a0"]);
}

/// The latest version of a key is the newest by (time, version id); delete markers count.
pub(crate) async fn versions_order_by_time_then_id<M: MetaStore>(dir: &Path, open: impl AsyncFn(&Path) -> M) {
    let meta = open(dir).await;
    with_bucket(&meta).await;
    meta.write(|tx| {
        put(tx, &version("k", "v2", 20))?;
        put(tx, &version("k", "v1", 10))?;
        put(tx, &version("k", "v3", 20))
    })
    .await
    .unwrap();
    let latest = meta.read(|r| r.get_latest("b", "k")).await.unwrap().unwrap();
    assert_eq!(
        (latest.version_id.as_str(), latest.is_latest),
        ("v3", true),
        "a tie on time goes to the larger id"
    );
    let v2 = meta.read(|r| r.get_version("b", "k", "v2")).await.unwrap().unwrap();
    assert!(!v2.is_latest);
    meta.write(|tx| {
        let mut dm = version("k", "v4", 30);
        dm.delete_marker = true;
        dm.size = 0;
        put(tx, &dm)
    })
    .await
    .unwrap();
    assert!(
        meta.read(|r| r.scan_latest("b", b"", false, None, 10)).await.unwrap().is_empty(),
        "a marker hides the key"
    );
    let removed = meta.write(|tx| tx.remove_version("b", "k", "v4")).await.unwrap();
    assert!(removed.is_some_and(|v| v.delete_marker));
    meta.write(|tx| tx.refresh_latest("b", "k")).await.unwrap();
    let back = meta.read(|r| r.scan_latest("b", b"", false, None, 10)).await.unwrap();
    assert_eq!(back.iter().map(|e| e.version_id.as_str()).collect::<Vec<_>>(), vec!["v3"]);
    assert!(meta.read(|r| r.bucket_has_versions("b")).await.unwrap());
}

/// A version scan lists (key, newest first) and resumes strictly after its cursor, within a
/// key or after it.
pub(crate) async fn version_scans_resume_after_their_cursor<M: MetaStore>(dir: &Path, open: impl AsyncFn(&Path) -> M) {
    let meta = open(dir).await;
    with_bucket(&meta).await;
    meta.write(|tx| {
        for (k, v, t) in [("a", "v1", 1), ("a", "v2", 2), ("a", "v3", 3), ("b", "v1", 1), ("c", "v1", 1)] {
            put(tx, &version(k, v, t))?;
        }
        Ok(())
    })
    .await
    .unwrap();
    let scan = |cursor: VersionCursor, limit| meta.read(move |r| r.scan_versions("b", b"", &cursor, None, limit));
    let ids = |v: Vec<ListEntry>| v.into_iter().map(|e| format!("{}:{}", e.key, e.version_id)).collect::<Vec<_>>();
    assert_eq!(ids(scan(VersionCursor::default(), 2).await.unwrap()), vec!["a:v3", "a:v2"]);
    let mid = VersionCursor { after_key: Some("a".into()), after_version: Some((2, "v2".into())) };
    assert_eq!(ids(scan(mid, 3).await.unwrap()), vec!["a:v1", "b:v1", "c:v1"]);
    let after_a = VersionCursor { after_key: Some("a".into()), after_version: None };
    assert_eq!(ids(scan(after_a, 10).await.unwrap()), vec!["b:v1", "c:v1"]);
    assert_eq!(meta.read(|r| r.count_versions("b", b"a", Some(b"b"))).await.unwrap(), (3, 9));
}

/// Uploads list by (key, initiation); a part put again returns the part it replaced; taking
/// an upload's parts removes them.
pub(crate) async fn uploads_and_parts<M: MetaStore>(dir: &Path, open: impl AsyncFn(&Path) -> M) {
    let meta = open(dir).await;
    with_bucket(&meta).await;
    let upload = |id: &str, key: &str, t: i64| UploadRecord {
        upload_id: id.into(),
        bucket: "b".into(),
        key: key.into(),
        initiated_us: t,
        owner: owner(),
        storage_class: None,
        attrs: ObjectAttrs::default(),
        checksum_algorithm: None,
    };
    let part = |n: u32, blob: &str| PartRecord {
        upload_id: "u2".into(),
        part_number: n,
        mtime_us: 5,
        part: PartRef { blob: blob.into(), size: 1, etag: "e".into(), checksums: None },
    };
    let (p1, p1b, p2) = (part(1, "x"), part(1, "y"), part(2, "z"));
    let replaced = meta
        .write(move |tx| {
            tx.put_upload(&upload("u2", "k", 2))?;
            tx.put_upload(&upload("u1", "k", 1))?;
            tx.put_upload(&upload("u3", "j", 3))?;
            assert!(tx.put_part(&p1)?.is_none());
            tx.put_part(&p2)?;
            tx.put_part(&p1b)
        })
        .await
        .unwrap();
    assert_eq!(replaced.map(|p| p.part.blob), Some("x".to_owned()));
    let ids = meta.read(|r| r.scan_uploads("b", b"", None, None, 10)).await.unwrap();
    assert_eq!(ids.iter().map(|u| u.upload_id.as_str()).collect::<Vec<_>>(), vec!["u3", "u1", "u2"]);
    let after = meta.read(|r| r.scan_uploads("b", b"", Some(("k", Some("u1"))), None, 10)).await.unwrap();
    assert_eq!(after.iter().map(|u| u.upload_id.as_str()).collect::<Vec<_>>(), vec!["u2"]);
    let parts = meta.read(|r| r.list_parts("u2", 1, 10)).await.unwrap();
    assert_eq!(parts.iter().map(|p| p.part_number).collect::<Vec<_>>(), vec![2]);
    let taken = meta.write(|tx| tx.take_parts("u2")).await.unwrap();
    assert_eq!(taken.iter().map(|p| p.part.blob.as_str()).collect::<Vec<_>>(), vec!["y", "z"]);
    assert!(meta.read(|r| r.list_parts("u2", 0, 10)).await.unwrap().is_empty());
}

/// A referenced blob is live; released, it is garbage from its due time on, until forgotten.
pub(crate) async fn released_blobs_become_garbage_when_due<M: MetaStore>(dir: &Path, open: impl AsyncFn(&Path) -> M) {
    let meta = open(dir).await;
    meta.write(|tx| tx.add_blob("b1")).await.unwrap();
    assert!(meta.read(|r| r.blob_is_live("b1")).await.unwrap());
    meta.write(|tx| tx.release_blob("b1", 1_000)).await.unwrap();
    assert!(!meta.read(|r| r.blob_is_live("b1")).await.unwrap());
    assert!(meta.read(|r| r.due_garbage(999, 10)).await.unwrap().is_empty());
    assert_eq!(meta.read(|r| r.due_garbage(1_000, 10)).await.unwrap(), vec!["b1".to_owned()]);
    meta.write(|tx| tx.forget_garbage(&["b1".to_owned()])).await.unwrap();
    assert!(meta.read(|r| r.due_garbage(i64::MAX, 10)).await.unwrap().is_empty());
}

/// Per destination and key, only the oldest pending job is runnable; deleting or failing it
/// lets the next one run; a failed job does not hold the key; other keys are independent.
pub(crate) async fn jobs_of_a_key_run_one_at_a_time<M: MetaStore>(dir: &Path, open: impl AsyncFn(&Path) -> M) {
    let meta = open(dir).await;
    let opts = JobOptions::default();
    let (j1, j2, j3, other) = meta
        .write(move |tx| {
            Ok((
                tx.insert_job(&job("k", "v1", &opts, None))?,
                tx.insert_job(&job("k", "v2", &opts, None))?,
                tx.insert_job(&job("k", "v3", &opts, None))?,
                tx.insert_job(&job("x", "v1", &opts, None))?,
            ))
        })
        .await
        .unwrap();
    let runnable =
        || meta.read(|r| Ok(r.runnable_jobs("eu", "d", 0, i64::MAX, &[], 10)?.into_iter().map(|j| j.id).collect::<Vec<_>>()));
    assert_eq!(runnable().await.unwrap(), vec![j1, other]);
    let excluded = meta.read(move |r| r.runnable_jobs("eu", "d", 0, i64::MAX, &[j1], 10)).await.unwrap();
    assert_eq!(
        excluded.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![other],
        "in-flight jobs are skipped"
    );
    let gone = meta.write(move |tx| tx.delete_job(j1)).await.unwrap();
    assert_eq!(gone.map(|j| j.version_id), Some("v1".to_owned()));
    assert_eq!(runnable().await.unwrap(), vec![j2, other]);
    meta.write(move |tx| {
        let mut j = tx.get_job(j2)?.unwrap();
        j.state = JobState::Failed;
        tx.update_job(&j)
    })
    .await
    .unwrap();
    assert_eq!(runnable().await.unwrap(), vec![j3, other], "a failed job does not hold its key");
    meta.write(move |tx| {
        let mut j = tx.get_job(j2)?.unwrap();
        j.state = JobState::Pending;
        tx.update_job(&j)
    })
    .await
    .unwrap();
    assert_eq!(
        runnable().await.unwrap(),
        vec![j3, other],
        "a job made pending again waits behind the head"
    );
    meta.write(move |tx| {
        let mut j = tx.get_job(j3)?.unwrap();
        j.next_attempt_us = 1_000;
        tx.update_job(&j)
    })
    .await
    .unwrap();
    let due_early = meta.read(|r| r.runnable_jobs("eu", "d", 0, 999, &[], 10)).await.unwrap();
    assert_eq!(due_early.iter().map(|j| j.id).collect::<Vec<_>>(), vec![other], "not before its due time");
    assert_eq!(meta.read(|r| r.max_job_id()).await.unwrap(), other);
    assert_eq!(meta.read(|r| r.peers_with_jobs()).await.unwrap(), vec!["eu".to_owned()]);
    assert_eq!(meta.read(|r| r.due_destinations("eu")).await.unwrap(), vec!["d".to_owned()]);
}

/// Per-destination counters follow every state change, and keep the last error while there
/// is something pending or failed.
pub(crate) async fn job_counters_follow_their_states<M: MetaStore>(dir: &Path, open: impl AsyncFn(&Path) -> M) {
    let meta = open(dir).await;
    let opts = JobOptions::default();
    let (a, b) = meta
        .write(move |tx| Ok((tx.insert_job(&job("k", "v1", &opts, None))?, tx.insert_job(&job("j", "v1", &opts, None))?)))
        .await
        .unwrap();
    let stats = || {
        meta.read(|r| {
            Ok(r.dest_stats("b")?
                .into_iter()
                .map(|s| (s.pending_ops, s.pending_bytes, s.failed_ops, s.last_error))
                .collect::<Vec<_>>())
        })
    };
    assert_eq!(stats().await.unwrap(), vec![(2, 10, 0, None)]);
    meta.write(move |tx| {
        let mut j = tx.get_job(a)?.unwrap();
        j.state = JobState::Failed;
        j.last_error = Some("AccessDenied".into());
        tx.update_job(&j)
    })
    .await
    .unwrap();
    assert_eq!(stats().await.unwrap(), vec![(1, 5, 1, Some("AccessDenied".into()))]);
    meta.write(move |tx| {
        tx.delete_job(a)?;
        tx.delete_job(b)
    })
    .await
    .unwrap();
    assert_eq!(stats().await.unwrap(), vec![(0, 0, 0, None)], "no error is shown when nothing is left");
    assert_eq!(meta.read(|r| r.dest_stats("b")).await.unwrap()[0].oldest_undelivered_us, None);
}

/// A live job recorded behind backfill jobs of its key lifts them to live priority, so it is
/// not held back until every other live job has run.
pub(crate) async fn a_live_job_promotes_waiting_backfill_jobs<M: MetaStore>(dir: &Path, open: impl AsyncFn(&Path) -> M) {
    let meta = open(dir).await;
    let backfill = meta.write(|tx| tx.insert_job(&job("k", "v1", &JobOptions::default(), Some(7)))).await.unwrap();
    let at = |priority| meta.read(move |r| Ok(r.runnable_jobs("eu", "d", priority, i64::MAX, &[], 10)?.len()));
    assert_eq!((at(0).await.unwrap(), at(1).await.unwrap()), (0, 1));
    assert_eq!(meta.read(|r| r.backfill_pending(7)).await.unwrap(), 1);
    meta.write(|tx| tx.insert_job(&job("k", "v2", &JobOptions::default(), None))).await.unwrap();
    let live = meta.read(|r| r.runnable_jobs("eu", "d", 0, i64::MAX, &[], 10)).await.unwrap();
    assert_eq!(live.iter().map(|j| j.id).collect::<Vec<_>>(), vec![backfill]);
    let all = meta.read(|r| r.bucket_jobs("b", 0, 10)).await.unwrap();
    assert_eq!(
        all.iter().map(|j| (j.live, j.backfill_id)).collect::<Vec<_>>(),
        vec![(false, Some(7)), (true, None)]
    );
    let oldest = meta.read(|r| r.dest_stats("b")).await.unwrap()[0].oldest_undelivered_us;
    assert_eq!(oldest, Some(10), "only live jobs hold \"replicated up to\" back");
}

/// Delivery records are per (version, destination) and go when the version's row goes.
pub(crate) async fn deliveries_go_with_their_version<M: MetaStore>(dir: &Path, open: impl AsyncFn(&Path) -> M) {
    let meta = open(dir).await;
    with_bucket(&meta).await;
    meta.write(|tx| {
        put(tx, &version("k", "v1", 10))?;
        put(tx, &version("k", "v2", 20))?;
        tx.mark_delivered("b", "k", "v1", "eu/d")?;
        tx.mark_delivered("b", "k", "v1", "eu/d")?;
        tx.mark_delivered("b", "k", "v2", "us/d")
    })
    .await
    .unwrap();
    assert_eq!(meta.read(|r| r.delivered_to("b", "k", "v1")).await.unwrap(), vec!["eu/d".to_owned()]);
    assert!(!meta.read(|r| r.newer_delivered("b", "k", 10, "v1", "eu/d")).await.unwrap());
    assert!(meta.read(|r| r.newer_delivered("b", "k", 10, "v1", "us/d")).await.unwrap());
    meta.write(|tx| {
        tx.remove_version("b", "k", "v1")?;
        put(tx, &version("k", "v1", 10))
    })
    .await
    .unwrap();
    assert!(
        meta.read(|r| r.delivered_to("b", "k", "v1")).await.unwrap().is_empty(),
        "written again, sent again"
    );
}

/// Setting a status never overwrites REPLICA.
pub(crate) async fn a_replica_keeps_its_status<M: MetaStore>(dir: &Path, open: impl AsyncFn(&Path) -> M) {
    let meta = open(dir).await;
    with_bucket(&meta).await;
    meta.write(|tx| {
        let mut v = version("k", "v1", 10);
        v.repl_status = Some(ReplStatus::Replica);
        put(tx, &v)?;
        put(tx, &version("k", "v2", 20))?;
        tx.set_repl_status("b", "k", "v1", Some(ReplStatus::Completed))?;
        tx.set_repl_status("b", "k", "v2", Some(ReplStatus::Pending))
    })
    .await
    .unwrap();
    let status = |v: &'static str| meta.read(move |r| Ok(r.get_version("b", "k", v)?.and_then(|v| v.repl_status)));
    assert_eq!(status("v1").await.unwrap(), Some(ReplStatus::Replica));
    assert_eq!(status("v2").await.unwrap(), Some(ReplStatus::Pending));
}

/// A storage class change touches that version's class and nothing else.
pub(crate) async fn a_transition_changes_only_the_class<M: MetaStore>(dir: &Path, open: impl AsyncFn(&Path) -> M) {
    let meta = open(dir).await;
    with_bucket(&meta).await;
    meta.write(|tx| {
        put(tx, &version("k", "v1", 10))?;
        put(tx, &version("k", "v2", 20))?;
        tx.set_storage_class("b", "k", "v1", "GLACIER")
    })
    .await
    .unwrap();
    let get = |v: &'static str| meta.read(move |r| r.get_version("b", "k", v));
    let (v1, v2) = (get("v1").await.unwrap().unwrap(), get("v2").await.unwrap().unwrap());
    assert_eq!(v1.storage_class.as_deref(), Some("GLACIER"));
    assert_eq!(v2.storage_class, None);
    let want = version("k", "v1", 10);
    assert_eq!(
        (v1.etag, v1.size, v1.mtime_us, v1.attrs),
        (want.etag, want.size, want.mtime_us, want.attrs)
    );
}

/// A backfill is stored as given, except that its done and failed counters (which
/// completions add to concurrently) never go back; it is rewritten only in the state its
/// writer read, and a change of state writes nothing else.
pub(crate) async fn backfill_counters_never_go_back<M: MetaStore>(dir: &Path, open: impl AsyncFn(&Path) -> M) {
    let meta = open(dir).await;
    let mut b = Backfill {
        id: 0,
        bucket: "b".into(),
        rule_id: Some("r".into()),
        prefix: "p/".into(),
        status_filter: StatusFilter::Failed,
        older_than_us: Some(5),
        state: BackfillState::Counting,
        cursor_key: None,
        cursor_version: None,
        total_versions: 0,
        total_bytes: 0,
        scanned_versions: 0,
        scanned_bytes: 0,
        enqueued_versions: 0,
        done_versions: 0,
        done_bytes: 0,
        failed_versions: 0,
        created_us: 1,
        updated_us: 1,
        finished_us: None,
    };
    let stored = b.clone();
    let id = meta.write(move |tx| tx.insert_backfill(&stored)).await.unwrap();
    b.id = id;
    assert_eq!(meta.read(move |r| r.get_backfill(id)).await.unwrap(), Some(b.clone()));
    meta.write(move |tx| tx.backfill_progress(id, 3, 30, 1)).await.unwrap();
    let mut stale = b.clone();
    stale.state = BackfillState::Running;
    stale.cursor_key = Some("p/x".into());
    stale.cursor_version = Some((4, "v".into()));
    let written = stale.clone();
    let wrong = meta.write(move |tx| tx.update_backfill(&written, BackfillState::Running)).await.unwrap();
    assert!(!wrong, "stored as counting, not running: not written");
    assert_eq!(
        meta.read(move |r| r.get_backfill(id)).await.unwrap().unwrap().state,
        BackfillState::Counting
    );
    let written = stale.clone();
    assert!(meta.write(move |tx| tx.update_backfill(&written, BackfillState::Counting)).await.unwrap());
    let now = meta.read(move |r| r.get_backfill(id)).await.unwrap().unwrap();
    assert_eq!((now.done_versions, now.done_bytes, now.failed_versions), (3, 30, 1));
    assert_eq!(
        (now.state, now.cursor_key.clone(), now.cursor_version.clone()),
        (BackfillState::Running, stale.cursor_key.clone(), stale.cursor_version.clone())
    );
    // A change of state: only from the states named; the end time set when it ends.
    use BackfillState::{Cancelled, Counting, Paused, Running};
    let set = |from: &'static [BackfillState], to, at| meta.write(move |tx| tx.set_backfill_state(id, from, to, at));
    assert!(!set(&[Counting, Paused], Cancelled, 7).await.unwrap(), "running is not among them");
    assert!(set(&[Running], Paused, 8).await.unwrap());
    let paused = meta.read(move |r| r.get_backfill(id)).await.unwrap().unwrap();
    assert_eq!((paused.state, paused.updated_us, paused.finished_us), (Paused, 8, None));
    assert_eq!((paused.cursor_key, paused.done_versions), (now.cursor_key, 3), "nothing else written");
    assert!(set(&[Counting, Running, Paused], Cancelled, 9).await.unwrap());
    let ended = meta.read(move |r| r.get_backfill(id)).await.unwrap().unwrap();
    assert_eq!((ended.state, ended.updated_us, ended.finished_us), (Cancelled, 9, Some(9)));
    let written = stale.clone();
    assert!(
        !meta.write(move |tx| tx.update_backfill(&written, Running)).await.unwrap(),
        "cancelled stays"
    );
    assert_eq!(meta.read(|r| r.active_backfills()).await.unwrap().len(), 0);
    assert_eq!(meta.read(|r| r.list_backfills(Some("b"))).await.unwrap().len(), 1);
    assert_eq!(meta.read(|r| r.list_backfills(Some("other"))).await.unwrap(), Vec::new());
}

/// Events list newest first, by rule and by kind prefix (taken literally, not as a pattern).
pub(crate) async fn events_filter_by_rule_and_kind<M: MetaStore>(dir: &Path, open: impl AsyncFn(&Path) -> M) {
    let meta = open(dir).await;
    meta.write(|tx| {
        tx.add_event(1, "b", "r1", "VerifyClean", "")?;
        tx.add_event(2, "b", "r2", "Verify_Found", "")?;
        tx.add_event(3, "b", "r1", "OperationMissedThreshold", "late")?;
        tx.add_event(4, "other", "r1", "VerifyClean", "")
    })
    .await
    .unwrap();
    let kinds = |rule: Option<&'static str>, prefix: Option<&'static str>| {
        meta.read(move |r| Ok(r.latest_events("b", rule, prefix, 10)?.into_iter().map(|e| e.kind).collect::<Vec<_>>()))
    };
    assert_eq!(
        kinds(None, None).await.unwrap(),
        vec!["OperationMissedThreshold", "Verify_Found", "VerifyClean"]
    );
    assert_eq!(kinds(Some("r1"), Some("Verify")).await.unwrap(), vec!["VerifyClean"]);
    assert_eq!(kinds(None, Some("Verify_")).await.unwrap(), vec!["Verify_Found"], "`_` is not a wildcard");
    let after = meta.read(|r| r.events("b", 1, 10)).await.unwrap();
    assert_eq!(after.iter().map(|e| e.time_us).collect::<Vec<_>>(), vec![2, 3]);
}

/// A bucket's usage counts its versions that are not delete markers, and their bytes, as they
/// are added and removed (and a rolled-back write changes nothing); a deleted bucket's goes.
pub(crate) async fn bucket_usage_follows_its_versions<M: MetaStore>(dir: &Path, open: impl AsyncFn(&Path) -> M) {
    let meta = open(dir).await;
    with_bucket(&meta).await;
    assert_eq!(meta.read(|r| r.bucket_usage("b")).await.unwrap(), BucketUsage::default());
    meta.write(|tx| {
        put(tx, &version("k", "v1", 10))?;
        put(tx, &VersionRecord { size: 1000, ..version("k", "v2", 20) })?;
        put(tx, &VersionRecord { delete_marker: true, size: 0, ..version("k", "dm", 30) })?;
        put(tx, &version("other", "v1", 10))
    })
    .await
    .unwrap();
    assert_eq!(
        meta.read(|r| r.bucket_usage("b")).await.unwrap(),
        BucketUsage { versions: 3, bytes: 1006 }
    );
    let failed = meta
        .write(|tx| {
            put(tx, &version("k", "v3", 40))?;
            Err::<(), _>(Error::Other("rolled back".into()))
        })
        .await;
    assert!(failed.is_err());
    meta.write(|tx| {
        tx.remove_version("b", "k", "v2")?;
        tx.remove_version("b", "k", "dm")?;
        tx.remove_version("b", "k", "no-such-version").map(|_| ())
    })
    .await
    .unwrap();
    assert_eq!(meta.read(|r| r.bucket_usage("b")).await.unwrap(), BucketUsage { versions: 2, bytes: 6 });
    meta.write(|tx| {
        tx.remove_version("b", "k", "v1")?;
        tx.remove_version("b", "other", "v1")?;
        tx.delete_bucket("b")
    })
    .await
    .unwrap();
    assert_eq!(
        meta.read(|r| r.bucket_usage("b")).await.unwrap(),
        BucketUsage::default(),
        "gone with its bucket"
    );
}
