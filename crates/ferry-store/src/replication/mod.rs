//! Replication in the store: the rules, the outbox of jobs, backfills, progress, and the replica
//! wire format. The engine that delivers jobs to peers is the `ferry-replication` crate; the
//! S3 API that configures it is `ferry-s3`'s `replication` folder. Both reach it only through
//! this module, so neither depends on the other.
//!
//! | file | what |
//! |---|---|
//! | [`rules`] | a bucket's configuration, rule selection, destination ARNs |
//! | [`outbox`] | jobs: recorded with the change, completed, failed, retried, dropped; the wake-up |
//! | [`backfill`] | replication of versions that existed before a rule, as a resumable scan |
//! | [`progress`] | "replicated up to T", backlog, lag per destination; operator events |
//! | [`wire`] | the headers a replica carries between Ferry regions |
//! | [`api`] | the admin API's answers, shared by the server, the CLI and the console |
//! | [`engine`] | the port through which the S3 layer asks the engine about peers |
//!
//! # Invariants
//! 1. **A committed change has its jobs; a job exists only for a committed change.** Every
//!    change a rule matches (a new version, a delete marker, a version deletion when the rule
//!    asks for it, a tag or ACL change) records one job per destination in the same transaction
//!    as the change ([`outbox::enqueue`]). Nothing is discovered by scanning.
//! 2. **A job row describes one change and is never re-pointed.** Completion deletes it by id
//!    ([`outbox::complete`]); a job that vanished meanwhile (its configuration was removed)
//!    makes completion a no-op. This is why no compare-and-delete is needed.
//! 3. **Delivery is at least once; applying is idempotent by version id.** A replica carries its
//!    source version id and time ([`wire::ReplicaMeta`]); applying it twice changes nothing.
//! 4. **Delivery is recorded per (version, destination)** in `repl_delivered`, in the
//!    transaction that deletes the job. Backfills, resyncs and the choice between a metadata job
//!    and a whole-version job read it.
//! 5. **Per destination and key, pending jobs are delivered in the order they were recorded:**
//!    exactly one is runnable (the head), the others wait. A FAILED job does not hold the key.
//!    A live job recorded behind a waiting backfill job promotes it to live priority.
//! 6. **No job waits for ever:** a job failing with transient errors for longer than
//!    `give_up_after` becomes FAILED with its last error ([`outbox::retry_later`]); a metadata
//!    change for a version a destination never received is sent as the whole version.
//! 7. **A job carries what its transfer needs from its rule** (owner override, storage class:
//!    [`outbox::JobOptions`]), fixed when it is recorded: editing rules later never changes how
//!    an acknowledged change is sent.
//! 8. **Status costs O(destinations), not O(backlog):** counters per (source bucket,
//!    destination) change in the same transactions as the jobs ([`progress`]).
//!
//! # Status of a version
//! A version's `x-amz-replication-status` is derived from its jobs: PENDING while any is
//! pending, FAILED if one failed permanently (and none is pending), COMPLETED when all are done.
//! Replicas are REPLICA and record jobs only to go back to where they came from (tag and ACL
//! changes under `ReplicaModifications`, version deletions under `DeleteReplication`).
//!
//! # Storage
//! Table `repl_jobs`: `id` (record order), the source version (`bucket`, `key`, `version_id`),
//! `op`, the destination (`peer`, `dest_bucket`), `rule_id` (a label), `opts`, `created_us`
//! (commit clock), `size`, `state` (pending / failed), `blocked`, `live` (a live change, which
//! "replicated up to T" waits for, or a backfill's), `priority`, `attempts`, `next_attempt_us`,
//! `since_us` (first transient failure), `last_error`, `progress` (JSON: a multipart transfer's
//! upload id and part plan, so a restart resumes it), `backfill_id`. The metadata backend keeps
//! the derived facts (which job of a key is the head, the per-destination counters) as the
//! [`crate::meta::WriteTx`] contract states; what a job is, and when, is decided here.
//!
//! # Crash behaviour
//! Jobs, deliveries, backfill cursors and counters live only in the metadata database and
//! change in the transactions of the changes they describe: a crash at any point leaves them
//! consistent with the data. A job whose transfer was under way is attempted again.

pub mod api;
pub mod backfill;
pub mod engine;
pub mod outbox;
pub mod progress;
pub mod rules;
pub mod wire;

pub use backfill::{Backfill, BackfillAction, BackfillRequest, BackfillState, BackfillStep, StatusFilter};
pub use engine::{DestinationRefused, ReplicationEngine};
pub use outbox::{
    DestStats, Job, JobOp, JobOptions, JobState, NewJob, Snapshot, SnapshotEpoch, complete, drop_jobs, enqueue, fail,
    retry_failed, retry_job, retry_later, snapshots_stale,
};
pub use progress::Event;
pub use rules::{DestinationArn, ReplicationConfig, Rule, RuleDestination, RuleFilter, dest_key};
pub use wire::{REPLICA_HEADER, REPLICA_PART_HEADER, ReplicaMeta, SOURCE_HEADER, SourceRef};
