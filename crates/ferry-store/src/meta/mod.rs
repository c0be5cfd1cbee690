//! The metadata store: buckets, versions, multipart uploads, blob references and the
//! replication tables, all in one transactional database.
//!
//! # Writes
//! Every write is a closure run inside a transaction by a single writer thread
//! ([`sqlite::SqliteMeta::write`]). The writer batches the closures that arrive together into one
//! database transaction (group commit): each closure runs inside its own savepoint, so one
//! closure's error rolls back only its own changes, then the batch commits with one fsync and only
//! then is each caller answered. A caller that got `Ok` has a durable change.
//!
//! The closure receives a [`WriteTx`]: the domain modules ([`crate::objects`],
//! [`crate::replication`]) add their rows to it (an object version and its replication jobs),
//! and they commit or roll back together. Hooks registered with [`WriteTx::on_commit`] run
//! after the commit (cache promotion of blob files, waking replication workers).
//!
//! Each closure gets commit timestamps from the region's [`CommitClock`](ferry_core::time::CommitClock)
//! via [`WriteTx::now`]: strictly increasing in commit order, persisted with every batch.
//!
//! # Reads
//! Read closures run on a small pool of read-only connections in WAL mode, each in its own
//! snapshot ([`ReadTx`]); a read started after a write was acknowledged sees that write.
//!
//! # Backends
//! SQLite ([`sqlite`]) is the embedded backend; PostgreSQL ([`pg`]) is for regions of several
//! nodes (one transaction per closure, no group commit: concurrency comes from several
//! connections and nodes). Row readers are shared (`rows.rs`). The traits hold no SQLite types and backends
//! hold no domain decisions (when to wake workers, what a status becomes, which clock an event
//! takes, how long garbage waits): those live in the domain modules, so a second backend
//! implements storage only. The conformance suite (`conformance.rs`) pins the contract.

#[cfg(test)]
pub(crate) mod conformance;
pub mod pg;
mod rows;
pub(crate) use rows::to_i64;
pub mod sqlite;

use crate::error::Result;
use crate::model::{BucketRecord, BucketUsage, ListEntry, ObjectAttrs, PartRecord, ReplStatus, UploadRecord, VersionRecord};
use crate::replication::{Backfill, BackfillState, DestStats, Event, Job, NewJob};

/// Where a version scan starts.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct VersionCursor {
    /// Start strictly after this key (all its versions skipped)...
    pub after_key: Option<String>,
    /// ...or, with this set too, strictly after this version of `after_key` (the rest of that key's
    /// versions come first). Given as the marker's (mtime_us, version_id).
    pub after_version: Option<(i64, String)>,
}

/// Signals the domain modules fire from on-commit hooks. A store holds one set and hands it to
/// every write transaction; the backend never decides when they fire.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    /// Replication workers wait on it ([`crate::replication::outbox::Wakeup`]).
    pub outbox: crate::replication::outbox::Wakeup,
    /// Runnable live jobs, from their commit to their peer's worker
    /// ([`crate::replication::outbox::Handoff`]).
    pub handoff: crate::replication::outbox::Handoff,
    /// Moves on with every change a handed job's snapshot would not show
    /// ([`crate::replication::outbox::Snapshot`]).
    pub snapshots: crate::replication::outbox::SnapshotEpoch,
}

/// A metadata backend: write closures committed in groups, read closures on snapshots. Every
/// backend passes the conformance suite (`meta::conformance`, run by `cargo test`).
pub trait MetaStore: Send + Sync + 'static {
    /// Runs `f` in a write transaction; returns its result once the transaction is durably
    /// committed. If `f` fails, its changes (and its on-commit hooks) are dropped.
    fn write<T, F>(&self, f: F) -> impl std::future::Future<Output = Result<T>> + Send
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn WriteTx) -> Result<T> + Send + 'static;
    /// Runs `f` on a consistent snapshot that includes every write acknowledged before.
    fn read<T, F>(&self, f: F) -> impl std::future::Future<Output = Result<T>> + Send
    where
        T: Send + 'static,
        F: FnOnce(&dyn ReadTx) -> Result<T> + Send + 'static;
    /// The signals on-commit hooks fire.
    fn signals(&self) -> &Signals;
}

/// Read operations, available in read snapshots and inside write transactions. The
/// replication tables' reads are [`OutboxReads`], a supertrait.
pub trait ReadTx: OutboxReads {
    fn get_bucket(&self, name: &str) -> Result<Option<BucketRecord>>;
    fn list_buckets(&self) -> Result<Vec<BucketRecord>>;
    /// The bucket's versions (not delete markers) and their bytes, kept as versions come and go.
    fn bucket_usage(&self, bucket: &str) -> Result<BucketUsage>;
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
}

/// Reads of the replication tables (jobs, deliveries, per-destination counters, backfills,
/// events). What the rows mean is [`crate::replication`]'s; a backend only stores them.
pub trait OutboxReads {
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
    /// Whether a pending job other than `job` waits for `job`'s destination and key.
    fn key_has_pending_job(&self, job: &Job) -> Result<bool>;
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

/// Write operations; all of them are part of the enclosing transaction. The replication
/// tables' writes are [`OutboxWrites`], a supertrait.
pub trait WriteTx: ReadTx + OutboxWrites {
    /// A commit timestamp, strictly greater than every one handed out before (µs since epoch).
    fn now(&mut self) -> i64;
    /// Moves the clock past a timestamp seen elsewhere (a replica's last-modified).
    fn observe_time(&mut self, us: i64);
    /// Takes `key` of `bucket` for the rest of the transaction, before the domain reads its
    /// state or takes a commit time for a change of it: on a backend several nodes write
    /// (PostgreSQL), the key's writers take turns and later commit times follow the key's
    /// latest version whatever the nodes' clocks. A single writer (SQLite) has nothing to do.
    fn lock_key(&mut self, bucket: &str, key: &str) -> Result<()>;
    /// Creates a bucket unless one of that name exists (committed, or being created by a
    /// transaction it then waits for); returns whether it created it.
    fn insert_bucket(&mut self, bucket: &BucketRecord) -> Result<bool>;
    /// Reads a bucket to change it: no other change of it (through this method) commits
    /// between this read and this transaction's end, so writing it back with
    /// [`WriteTx::put_bucket`] loses nobody's change. Object writes, which only read the
    /// bucket, are not held up.
    fn lock_bucket(&mut self, name: &str) -> Result<Option<BucketRecord>>;
    /// Writes a bucket whole (created if missing). To change one, read it with
    /// [`WriteTx::lock_bucket`]; to create one, [`WriteTx::insert_bucket`].
    fn put_bucket(&mut self, bucket: &BucketRecord) -> Result<()>;
    fn delete_bucket(&mut self, name: &str) -> Result<()>;
    /// Inserts a version row as given (`is_latest` is recomputed by [`Self::refresh_latest`]). A
    /// row with the same identity must have been removed first ([`Self::remove_version`]).
    fn put_version(&mut self, version: &VersionRecord) -> Result<()>;
    /// Removes a version row, returning it; its delivery records go with it (a version written
    /// again with the same identity is sent again).
    fn remove_version(&mut self, bucket: &str, key: &str, version_id: &str) -> Result<Option<VersionRecord>>;
    /// Recomputes which version of the key is the latest.
    fn refresh_latest(&mut self, bucket: &str, key: &str) -> Result<()>;
    fn set_version_attrs(&mut self, bucket: &str, key: &str, version_id: &str, attrs: &ObjectAttrs) -> Result<()>;
    /// Sets a version's storage class (a lifecycle transition).
    fn set_storage_class(&mut self, bucket: &str, key: &str, version_id: &str, class: &str) -> Result<()>;
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
    /// Records that nothing references `blob` any more; it may be unlinked from `due_us` on
    /// (wall clock; [`crate::gc::release_blob`] chooses the grace period).
    fn release_blob(&mut self, blob: &str, due_us: i64) -> Result<()>;
    /// Forgets collected blobs.
    fn forget_garbage(&mut self, blobs: &[String]) -> Result<()>;
    fn set_setting(&mut self, key: &str, value: &str) -> Result<()>;
    /// Runs `hook` after the transaction commits (not if it rolls back, nor if the closure
    /// that registered it fails), before the writer answers the callers of the batch.
    fn on_commit(&mut self, hook: Box<dyn FnOnce() + Send>);
    /// [`Self::on_commit`] once per transaction and `key`: while a hook registered under `key`
    /// stands (its closure did not fail), further registrations under `key` are dropped.
    fn on_commit_once(&mut self, key: &'static str, hook: Box<dyn FnOnce() + Send>);
    /// The signals of this store, for hooks to fire ([`Signals`]).
    fn signals(&self) -> &Signals;
}

/// Writes of the replication tables. The backend keeps two derived facts in the same
/// transaction, as indexes a query could compute: per (destination, source bucket, key) only
/// the oldest pending job is runnable (see [`OutboxReads::runnable_jobs`]), and the counters
/// [`OutboxReads::dest_stats`] returns. Which jobs exist, their states and times, and when
/// workers wake are decided by [`crate::replication`].
pub trait OutboxWrites {
    /// Records a replication job, pending, runnable only once the earlier pending jobs of its
    /// destination and key are gone; a live job promotes those waiting at backfill priority
    /// to live priority.
    fn insert_job(&mut self, job: &NewJob<'_>) -> Result<i64>;
    /// [`Self::insert_job`] without its id back (a backend may send it with a later statement).
    fn record_job(&mut self, job: &NewJob<'_>) -> Result<()> {
        self.insert_job(job).map(drop)
    }
    /// [`Self::record_job`], and the job's id when the backend knows at once that it is
    /// runnable (no earlier pending job of its destination and key), so that the worker can be
    /// handed it after the commit; `None` when it waits, or when the backend cannot tell without
    /// another round trip (the workers then find it in the outbox).
    fn record_runnable_job(&mut self, job: &NewJob<'_>) -> Result<Option<i64>> {
        self.record_job(job).map(|()| None)
    }
    /// Removes a job (unblocking the next one of its destination and key); returns it as it was.
    fn delete_job(&mut self, id: i64) -> Result<Option<Job>>;
    /// Rewrites a job's state, attempts, due time, failure time, error, transfer progress and
    /// backfill as given.
    fn update_job(&mut self, job: &Job) -> Result<()>;
    /// Records that a version reached a destination (`peer/bucket`).
    fn mark_delivered(&mut self, bucket: &str, key: &str, version_id: &str, dest: &str) -> Result<()>;
    /// Inserts a new backfill (its `id` is not read); returns its id.
    fn insert_backfill(&mut self, b: &Backfill) -> Result<i64>;
    /// Rewrites backfill `b.id` as given if its stored state is still `was`, the state the
    /// caller read (an operator on another node may have paused or cancelled it since); returns
    /// whether it did. Counters that completions add to concurrently (done, failed) never go
    /// back.
    fn update_backfill(&mut self, b: &Backfill, was: BackfillState) -> Result<bool>;
    /// Sets backfill `id`'s state to `to`, its update time to `now_us` (and its end time, when
    /// `to` ends it) if its state is one of `from`; returns whether it did. Nothing else of
    /// the row is written, so a step committed meanwhile keeps its cursor and counters.
    fn set_backfill_state(&mut self, id: i64, from: &[BackfillState], to: BackfillState, now_us: i64) -> Result<bool>;
    /// Adds to a backfill's done / failed counters.
    fn backfill_progress(&mut self, id: i64, done: u64, bytes: u64, failed: u64) -> Result<()>;
    /// Records an event at `time_us`; returns its id.
    fn add_event(&mut self, time_us: i64, bucket: &str, rule_id: &str, kind: &str, detail: &str) -> Result<i64>;
}

/// The two steps of a version scan after a cursor, for every backend: the rest of the cursor's
/// key (versions older than its marker: `rest_of_key(key, mtime_us, version_id, limit)`), then
/// the keys after it, or from `from` (`keys_from(lower, exclusive, limit)`), up to `limit` in all.
pub(crate) fn scan_after_cursor(
    from: &[u8],
    cursor: &VersionCursor,
    limit: usize,
    rest_of_key: impl FnOnce(&str, i64, &str, usize) -> Result<Vec<ListEntry>>,
    keys_from: impl FnOnce(&[u8], bool, usize) -> Result<Vec<ListEntry>>,
) -> Result<Vec<ListEntry>> {
    let mut out = Vec::new();
    if let (Some(k), Some((m, v))) = (&cursor.after_key, &cursor.after_version) {
        out = rest_of_key(k, *m, v, limit)?;
        if out.len() >= limit {
            return Ok(out);
        }
    }
    let (lower, exclusive): (&[u8], bool) = match &cursor.after_key {
        Some(k) if k.as_bytes() >= from => (k.as_bytes(), true),
        _ => (from, false),
    };
    out.extend(keys_from(lower, exclusive, limit - out.len())?);
    Ok(out)
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
