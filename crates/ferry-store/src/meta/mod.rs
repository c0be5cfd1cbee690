//! The metadata store: buckets, versions, multipart uploads, blob references, and (later) the
//! replication outbox, all in one transactional database.
//!
//! # Writes
//! Every write is a closure run inside a transaction by a single writer thread
//! ([`sqlite::SqliteMeta::write`]). The writer batches the closures that arrive together into one
//! database transaction (group commit): each closure runs inside its own savepoint, so one
//! closure's error rolls back only its own changes, then the batch commits with one fsync and only
//! then is each caller answered. A caller that got `Ok` has a durable change.
//!
//! The closure receives a [`WriteTx`]: the caller can add rows of its own (e.g. a replication
//! job) next to the object version, and they commit or roll back together.
//!
//! Each closure gets commit timestamps from the region's [`CommitClock`](ferry_core::time::CommitClock)
//! via [`WriteTx::now`]: strictly increasing in commit order, persisted with every batch.
//!
//! # Reads
//! Read closures run on a small pool of read-only connections in WAL mode, each in its own
//! snapshot ([`ReadTx`]); a read started after a write was acknowledged sees that write.
//!
//! # Backends
//! SQLite is the embedded backend. The traits hold no SQLite types, so a PostgreSQL backend can
//! implement them with the same schema.

pub mod sqlite;
mod sqlite_repl;

use crate::error::Result;
use crate::model::{BucketRecord, ListEntry, ObjectAttrs, PartRecord, ReplStatus, UploadRecord, VersionRecord};
use crate::replication::{Backfill, DestStats, Event, Job, NewJob};

/// Where a version scan starts.
#[derive(Debug, Clone, Default)]
pub struct VersionCursor {
    /// Start strictly after this key (all its versions skipped)...
    pub after_key: Option<String>,
    /// ...or, with this set too, strictly after this version of `after_key` (the rest of that key's
    /// versions come first). Given as the marker's (mtime_us, version_id).
    pub after_version: Option<(i64, String)>,
}

/// Read operations, available in read snapshots and inside write transactions.
pub trait ReadTx {
    fn get_bucket(&self, name: &str) -> Result<Option<BucketRecord>>;
    fn list_buckets(&self) -> Result<Vec<BucketRecord>>;
    /// A specific version (including delete markers).
    fn get_version(&self, bucket: &str, key: &str, version_id: &str) -> Result<Option<VersionRecord>>;
    /// The key's newest version (possibly a delete marker).
    fn get_latest(&self, bucket: &str, key: &str) -> Result<Option<VersionRecord>>;
    /// Current, non-deleted objects with `from <= key` (or `from < key` when `exclusive`), and
    /// `key < to` when `to` is set, in key order.
    fn scan_latest(&self, bucket: &str, from: &[u8], exclusive: bool, to: Option<&[u8]>, limit: usize) -> Result<Vec<ListEntry>>;
    /// All versions and delete markers with `from <= key < to`, in (key, newest first) order,
    /// starting after `cursor`.
    fn scan_versions(
        &self,
        bucket: &str,
        from: &[u8],
        cursor: &VersionCursor,
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<ListEntry>>;
    /// True when the bucket holds any version or delete marker.
    fn bucket_has_versions(&self, bucket: &str) -> Result<bool>;
    fn get_upload(&self, upload_id: &str) -> Result<Option<UploadRecord>>;
    /// Uploads of the bucket with `from <= key < to`, ordered by (key, initiated, upload id),
    /// starting strictly after (`after_key`, `after_upload`) when given.
    fn scan_uploads(
        &self,
        bucket: &str,
        from: &[u8],
        after: Option<(&str, Option<&str>)>,
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<UploadRecord>>;
    /// Uploads with no activity (initiation or part) since `before_us`, oldest first.
    fn idle_uploads(&self, before_us: i64, limit: usize) -> Result<Vec<UploadRecord>>;
    /// Parts with number greater than `after`, in order.
    fn list_parts(&self, upload_id: &str, after: u32, limit: usize) -> Result<Vec<PartRecord>>;
    /// True when a committed record references the blob.
    fn blob_is_live(&self, blob: &str) -> Result<bool>;
    /// Blobs released more than their grace period ago (to be unlinked).
    fn due_garbage(&self, now_us: i64, limit: usize) -> Result<Vec<String>>;
    fn get_setting(&self, key: &str) -> Result<Option<String>>;
    /// Pending jobs to destination `peer`/`dest_bucket` at `priority` (0: live, 1: backfill)
    /// that are due at `now_us` and head of their key's queue (per-key order), in the order they
    /// became due, skipping ids in `exclude`. Costs O(`limit` + `exclude`), whatever the backlog.
    fn runnable_jobs(
        &self,
        peer: &str,
        dest_bucket: &str,
        priority: i64,
        now_us: i64,
        exclude: &[i64],
        limit: usize,
    ) -> Result<Vec<Job>>;
    /// Destination buckets on `peer` with pending jobs.
    fn due_destinations(&self, peer: &str) -> Result<Vec<String>>;
    /// Peers with pending jobs.
    fn peers_with_jobs(&self) -> Result<Vec<String>>;
    /// Up to `limit` pending jobs to `peer`, in enqueue order.
    fn pending_jobs_of_peer(&self, peer: &str, limit: usize) -> Result<Vec<Job>>;
    /// All jobs (pending or failed) of a version.
    fn jobs_for_version(&self, bucket: &str, key: &str, version_id: &str) -> Result<Vec<Job>>;
    /// A job by id.
    fn get_job(&self, id: i64) -> Result<Option<Job>>;
    /// Jobs of a source bucket, in enqueue order, after `after_id`.
    fn bucket_jobs(&self, bucket: &str, after_id: i64, limit: usize) -> Result<Vec<Job>>;
    /// Up to `limit` failed jobs of a source bucket.
    fn failed_jobs(&self, bucket: &str, limit: usize) -> Result<Vec<Job>>;
    /// The highest job id recorded so far (0 when none).
    fn max_job_id(&self) -> Result<i64>;
    /// Replication figures of a bucket, per destination that has had jobs. Costs
    /// O(destinations), whatever the backlog.
    fn dest_stats(&self, bucket: &str) -> Result<Vec<DestStats>>;
    /// The destinations (`peer/bucket`) a version has been delivered to.
    fn delivered_to(&self, bucket: &str, key: &str, version_id: &str) -> Result<Vec<String>>;
    /// True when a version of `key` newer than (`mtime_us`, `version_id`) has been delivered to
    /// `dest` (an S3 target's current object is then newer than this version).
    fn newer_delivered(&self, bucket: &str, key: &str, mtime_us: i64, version_id: &str, dest: &str) -> Result<bool>;
    /// The commit clock's value at the last committed transaction: every change with a time at
    /// or below it is visible in this snapshot, every later commit gets a larger time.
    fn committed_clock(&self) -> Result<i64>;
    /// Versions and bytes of a bucket with `from <= key < to`.
    fn count_versions(&self, bucket: &str, from: &[u8], to: Option<&[u8]>) -> Result<(u64, u64)>;
    fn get_backfill(&self, id: i64) -> Result<Option<Backfill>>;
    /// Backfills of a bucket (or of every bucket), newest first.
    fn list_backfills(&self, bucket: Option<&str>) -> Result<Vec<Backfill>>;
    /// Backfills counting or running, of every bucket, oldest first.
    fn active_backfills(&self) -> Result<Vec<Backfill>>;
    /// Pending jobs of a backfill.
    fn backfill_pending(&self, id: i64) -> Result<u64>;
    /// Events of a bucket after `after_id`, oldest first.
    fn events(&self, bucket: &str, after_id: i64, limit: usize) -> Result<Vec<Event>>;
    /// The latest `limit` events of a bucket, newest first, optionally of one rule and of kinds
    /// starting with `kind_prefix`.
    fn latest_events(&self, bucket: &str, rule_id: Option<&str>, kind_prefix: Option<&str>, limit: usize) -> Result<Vec<Event>>;
}

/// Write operations; all of them are part of the enclosing transaction.
pub trait WriteTx: ReadTx {
    /// A commit timestamp, strictly greater than every one handed out before (µs since epoch).
    fn now(&mut self) -> i64;
    /// Moves the clock past a timestamp seen elsewhere (a replica's last-modified).
    fn observe_time(&mut self, us: i64);
    fn put_bucket(&mut self, bucket: &BucketRecord) -> Result<()>;
    fn delete_bucket(&mut self, name: &str) -> Result<()>;
    /// Inserts a version row as given (`is_latest` is recomputed by [`Self::refresh_latest`]). A
    /// row with the same identity must have been removed first ([`Self::remove_version`]), which
    /// also forgets where it was delivered.
    fn put_version(&mut self, version: &VersionRecord) -> Result<()>;
    /// Removes a version row, returning it.
    fn remove_version(&mut self, bucket: &str, key: &str, version_id: &str) -> Result<Option<VersionRecord>>;
    /// Recomputes which version of the key is the latest.
    fn refresh_latest(&mut self, bucket: &str, key: &str) -> Result<()>;
    fn set_version_attrs(&mut self, bucket: &str, key: &str, version_id: &str, attrs: &ObjectAttrs) -> Result<()>;
    /// Sets a version's replication status; a replica keeps REPLICA (it says where the version
    /// came from), and a status that is already there is not written again.
    fn set_repl_status(&mut self, bucket: &str, key: &str, version_id: &str, status: Option<ReplStatus>) -> Result<()>;
    fn put_upload(&mut self, upload: &UploadRecord) -> Result<()>;
    fn delete_upload(&mut self, upload_id: &str) -> Result<()>;
    /// Inserts or replaces a part, returning the part it replaced.
    fn put_part(&mut self, part: &PartRecord) -> Result<Option<PartRecord>>;
    /// Removes all parts of an upload, returning them.
    fn take_parts(&mut self, upload_id: &str) -> Result<Vec<PartRecord>>;
    /// Records that a committed record now references `blob`. The blob file must already be
    /// written and fsynced; the writer fsyncs the blob staging directory before committing.
    fn add_blob(&mut self, blob: &str) -> Result<()>;
    /// Records that nothing references `blob` any more; it is unlinked after a grace period (so
    /// reads that already looked it up can finish).
    fn release_blob(&mut self, blob: &str) -> Result<()>;
    /// Forgets collected blobs.
    fn forget_garbage(&mut self, blobs: &[String]) -> Result<()>;
    fn set_setting(&mut self, key: &str, value: &str) -> Result<()>;
    /// Runs `hook` after the transaction commits (not if it rolls back).
    fn on_commit(&mut self, hook: Box<dyn FnOnce() + Send>);
    /// Records a replication job (blocked behind an earlier pending job of its destination and
    /// key, which it promotes to live priority if it is live); replication workers are woken
    /// when the transaction commits.
    fn insert_job(&mut self, job: &NewJob<'_>) -> Result<i64>;
    /// Removes a job (unblocking the next one of its destination and key); returns it as it was.
    fn delete_job(&mut self, id: i64) -> Result<Option<Job>>;
    /// Rewrites a job's state, attempts, due time, failure time, error, transfer progress and
    /// backfill as given.
    fn update_job(&mut self, job: &Job) -> Result<()>;
    /// Records that a version reached a destination (`peer/bucket`).
    fn mark_delivered(&mut self, bucket: &str, key: &str, version_id: &str, dest: &str) -> Result<()>;
    /// Inserts (id 0) or updates a backfill; returns its id.
    fn put_backfill(&mut self, b: &Backfill) -> Result<i64>;
    /// Adds to a backfill's done / failed counters.
    fn backfill_progress(&mut self, id: i64, done: u64, bytes: u64, failed: u64) -> Result<()>;
    fn add_event(&mut self, bucket: &str, rule_id: &str, kind: &str, detail: &str) -> Result<i64>;
}

/// The smallest byte string greater than every string starting with `prefix` (the end of a key
/// range scan); `None` when no such string exists (empty prefix or all 0xff).
#[must_use]
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
