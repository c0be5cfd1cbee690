//! The writes ([`WriteTx`], [`OutboxWrites`]) on PostgreSQL, and the compaction of counter
//! deltas. The derived facts of the outbox (`blocked`: one runnable job per destination and
//! key; the per-destination counters) are kept as the SQLite backend keeps them, under the
//! key's row ([`PgTx::hold_key`]): every statement that changes a key's jobs runs with the key
//! held, so two nodes cannot both see "no job pending" for one key.
//!
//! # Bucket rows
//! In a write transaction [`ReadTx::get_bucket`] takes the bucket's row `FOR KEY SHARE`: a
//! bucket cannot be deleted under a write that found it, and [`WriteTx::delete_bucket`] checks
//! for versions again once it holds the row (a version committed meanwhile makes it
//! `BucketNotEmpty`). A change of the bucket's settings reads it with [`WriteTx::lock_bucket`]
//! (`FOR NO KEY UPDATE`): two changes take turns, the second one changing what the first wrote,
//! and object writes are not held up. A creation is an insert that does nothing when the name
//! is taken ([`WriteTx::insert_bucket`]): two nodes creating one name at once make one bucket,
//! the first creator's.

use ferry_core::sync::lock;

use super::conn::{SyncConn, Value, borrowed, values};
use super::keys::SET_LATEST_SQL;
use super::store::{PgTx, WriteState};
use crate::checksum::Algorithm;
use crate::error::{Error, Result};
use crate::meta::rows::{self, BACKFILL_COLS, BUCKET_COLS, JOB_COLS, PART_COLS, UPLOAD_COLS, VERSION_COLS, col_count, to_i64};
use crate::meta::{OutboxReads as _, OutboxWrites, ReadTx as _, Signals, WriteTx};
use crate::model::*;
use crate::replication::outbox::{Bookkeeping, blocked_after_update};
use crate::replication::{Backfill, BackfillState, Job, JobState, NewJob};

/// Where the trailing column is in a row of `RETURNING {VERSION_COLS}, id`.
const ID_AFTER_VERSION_COLS: usize = col_count(VERSION_COLS);
/// Where `blocked` is in a row of `RETURNING {JOB_COLS}, blocked`.
const BLOCKED_AFTER_JOB_COLS: usize = col_count(JOB_COLS);
/// The parameters of [`bucket_values`], in [`BUCKET_COLS`] order.
const BUCKET_PARAMS: &str = "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10";
/// Deltas folded per compaction statement.
const COMPACT_BATCH: i64 = 10_000;

impl PgTx<'_> {
    fn w(&mut self) -> Result<&mut WriteState> {
        self.write.as_mut().ok_or_else(|| Error::Other("a write in a read snapshot".into()))
    }

    fn exec(&self, sql: &str, params: super::conn::Params<'_>) -> Result<u64> {
        self.conn.execute(sql, params)
    }

    /// A statement whose answer is not needed: sent with the next one that waits (its error,
    /// if any, comes from there).
    fn queue(&self, sql: impl Into<String>, params: Vec<Value>) {
        self.conn.queue(sql, params);
    }

    /// Applies what a change of job `j`'s row does to its destination's counters (a delta row:
    /// nobody waits on a shared row) and to its key's order.
    fn keep_books(&self, j: &Job, b: Bookkeeping<'_>) {
        if b.counts() {
            self.queue(
                "INSERT INTO repl_dest_deltas (bucket, peer, dest_bucket, pending_ops, pending_bytes, failed_ops, last_error) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                values![j.bucket, j.peer, j.dest_bucket, b.pending, b.bytes, b.failed, b.error],
            );
        }
        if b.unblock_next {
            self.unblock_next(j);
        }
    }

    fn usage(&self, bucket: &str, versions: i64, bytes: i64) {
        self.queue(
            "INSERT INTO bucket_usage_deltas (bucket, versions, bytes) VALUES ($1, $2, $3)",
            values![bucket, versions, bytes],
        );
    }

    /// The head of `j`'s destination and key left the pending set: the oldest waiting job runs next.
    fn unblock_next(&self, j: &Job) {
        self.queue(
            "UPDATE repl_jobs SET blocked = false WHERE id = (SELECT id FROM repl_jobs WHERE peer = $1 AND dest_bucket = $2 \
             AND bucket = $3 AND key = $4 AND state = 0 ORDER BY id LIMIT 1) AND blocked",
            values![j.peer, j.dest_bucket, j.bucket, j.key.as_bytes()],
        );
    }

    /// The insert of a new job (the statement and its parameters), once the key is held and
    /// the statements that go with it (waiting backfill jobs promoted, its counter) are queued:
    /// see [`OutboxWrites::insert_job`].
    fn job_insert(&mut self, n: &NewJob<'_>) -> Result<(&'static str, Vec<Value>)> {
        let head = self.hold_key(n.bucket, n.key)?;
        let live = n.backfill_id.is_none();
        if live {
            // A live change must not wait behind backfill jobs (of its key and destination) that
            // only run after every live one.
            self.queue(
                "UPDATE repl_jobs SET priority = 0 WHERE peer = $1 AND dest_bucket = $2 AND bucket = $3 AND key = $4 \
                 AND state = 0 AND priority = 1",
                values![n.peer, n.dest_bucket, n.bucket, n.key.as_bytes()],
            );
        }
        let opts = n.stored_opts()?;
        self.keep_books(&n.recorded(0), Bookkeeping::of_insert(n));
        let sql = "INSERT INTO repl_jobs (fmt, bucket, key, version_id, op, peer, dest_bucket, rule_id, created_us, size, \
                   state, attempts, next_attempt_us, last_error, progress, backfill_id, priority, blocked, live, since_us, \
                   opts, key_seq) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, 0, 0, NULL, NULL, $11, $12, \
                   EXISTS (SELECT 1 FROM repl_jobs WHERE peer = $6 AND dest_bucket = $7 AND bucket = $2 AND key = $3 \
                   AND state = 0), $13, NULL, $14, $15)";
        let params = values![
            FORMAT_VERSION,
            n.bucket,
            n.key.as_bytes(),
            n.version_id,
            n.op.code(),
            n.peer,
            n.dest_bucket,
            n.rule_id,
            n.created_us,
            to_i64(n.size),
            n.backfill_id,
            i64::from(!live),
            live,
            opts,
            head.map_or(0, |h| h.seq),
        ];
        Ok((sql, params))
    }

    /// Holds the key of job `id` (its bucket and key never change); false when there is no such job.
    fn hold_job_key(&self, id: i64) -> Result<bool> {
        let Some(row) = self.conn.query_opt("SELECT bucket, key FROM repl_jobs WHERE id = $1", &[&id])? else {
            return Ok(false);
        };
        let (bucket, key): (String, Vec<u8>) = (row.text(0)?, row.bytes(1)?);
        self.hold_key(&bucket, &rows::key_string(key))?;
        Ok(true)
    }
}

use crate::meta::rows::Cells as _;

impl WriteTx for PgTx<'_> {
    fn now(&mut self) -> i64 {
        let Some(clock) = self.clock.clone() else { return 0 };
        let Some(w) = self.write.as_mut() else { return 0 };
        let t = lock(&clock).start_commit(w.after.get());
        w.after.set(t);
        w.times.push(t);
        t
    }

    fn observe_time(&mut self, us: i64) {
        if let Some(clock) = &self.clock {
            lock(clock).observe(us);
        }
        if let Some(w) = self.write.as_mut() {
            w.after.set(w.after.get().max(us));
        }
    }

    fn lock_key(&mut self, bucket: &str, key: &str) -> Result<()> {
        self.hold_key(bucket, key).map(drop)
    }

    /// Waits for a transaction creating the same name, then does nothing if it committed.
    fn insert_bucket(&mut self, b: &BucketRecord) -> Result<bool> {
        let sql = format!("INSERT INTO buckets ({BUCKET_COLS}) VALUES ({BUCKET_PARAMS}) ON CONFLICT (name) DO NOTHING");
        Ok(self.exec(&sql, &borrowed(&bucket_values(b)?))? == 1)
    }

    /// Takes the row `FOR NO KEY UPDATE`: changes of the bucket take turns, while object
    /// writes (`FOR KEY SHARE`, [`ReadTx::get_bucket`]) go on beside them.
    fn lock_bucket(&mut self, name: &str) -> Result<Option<BucketRecord>> {
        self.one(
            &format!("SELECT {BUCKET_COLS} FROM buckets WHERE name = $1 FOR NO KEY UPDATE"),
            &[&name],
            rows::bucket,
        )
    }

    fn put_bucket(&mut self, b: &BucketRecord) -> Result<()> {
        self.queue(
            format!(
                "INSERT INTO buckets ({BUCKET_COLS}) VALUES ({BUCKET_PARAMS}) \
                 ON CONFLICT (name) DO UPDATE SET fmt = $2, created_us = $3, owner = $4, versioning = $5, acl = $6, \
                 tagging = $7, replication = $8, replica_sources = $9, config = $10"
            ),
            bucket_values(b)?,
        );
        Ok(())
    }

    fn delete_bucket(&mut self, name: &str) -> Result<()> {
        // Waits for the writes that found the bucket; then what they wrote is visible here.
        self.queue("DELETE FROM buckets WHERE name = $1", values![name]);
        if self.bucket_has_versions(name)? {
            return Err(Error::BucketNotEmpty);
        }
        self.queue("DELETE FROM bucket_usage WHERE bucket = $1", values![name]);
        self.queue("DELETE FROM bucket_usage_deltas WHERE bucket = $1", values![name]);
        Ok(())
    }

    fn put_version(&mut self, v: &VersionRecord) -> Result<()> {
        self.hold_key(&v.bucket, &v.key)?;
        let (parts, multipart, inline) = match &v.layout {
            BodyLayout::Inline(data) => (None, false, Some(data.as_slice())),
            BodyLayout::Parts { parts, multipart } => (Some(serde_json::to_string(parts)?), *multipart, None),
        };
        self.queue(
            format!(
                "INSERT INTO versions ({VERSION_COLS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
                 ON CONFLICT (bucket, key, version_id) DO UPDATE SET fmt = $4, mtime_us = $5, is_latest = $6, is_dm = $7, \
                 size = $8, etag = $9, storage_class = $10, owner = $11, repl_status = $12, parts = $13, multipart = $14, \
                 attrs = $15, inline_data = $16"
            ),
            values![
                v.bucket,
                v.key.as_bytes(),
                v.version_id,
                FORMAT_VERSION,
                v.mtime_us,
                v.is_latest,
                v.delete_marker,
                to_i64(v.size),
                v.etag,
                v.storage_class,
                serde_json::to_string(&v.owner)?,
                v.repl_status.map(ReplStatus::as_str),
                parts,
                multipart,
                serde_json::to_string(&v.attrs)?,
                inline,
            ],
        );
        self.queue(SET_LATEST_SQL, values![v.bucket, v.key.as_bytes(), v.mtime_us]);
        if !v.delete_marker {
            self.usage(&v.bucket, 1, to_i64(v.size));
        }
        Ok(())
    }

    fn remove_version(&mut self, bucket: &str, key: &str, version_id: &str) -> Result<Option<VersionRecord>> {
        self.hold_key(bucket, key)?;
        let removed = self.one(
            &format!("DELETE FROM versions WHERE bucket = $1 AND key = $2 AND version_id = $3 RETURNING {VERSION_COLS}, id"),
            &[&bucket, &key.as_bytes(), &version_id],
            |r| Ok((rows::version(r)?, r.int(ID_AFTER_VERSION_COLS)?)),
        )?;
        let Some((v, id)) = removed else { return Ok(None) };
        // Its delivery records go with the row.
        self.queue("DELETE FROM repl_delivered WHERE vrow = $1", values![id]);
        if !v.delete_marker {
            self.usage(bucket, -1, -to_i64(v.size));
        }
        Ok(Some(v))
    }

    fn refresh_latest(&mut self, bucket: &str, key: &str) -> Result<()> {
        self.hold_key(bucket, key)?;
        self.queue(
            "WITH top AS (SELECT id FROM versions WHERE bucket = $1 AND key = $2 ORDER BY mtime_us DESC, version_id DESC LIMIT 1) \
             UPDATE versions v SET is_latest = (v.id IS NOT DISTINCT FROM (SELECT id FROM top)) \
             WHERE v.bucket = $1 AND v.key = $2 AND v.is_latest IS DISTINCT FROM (v.id IS NOT DISTINCT FROM (SELECT id FROM top))",
            values![bucket, key.as_bytes()],
        );
        Ok(())
    }

    fn set_version_attrs(&mut self, bucket: &str, key: &str, version_id: &str, attrs: &ObjectAttrs) -> Result<()> {
        self.hold_key(bucket, key)?;
        self.queue(
            "UPDATE versions SET attrs = $4 WHERE bucket = $1 AND key = $2 AND version_id = $3",
            values![bucket, key.as_bytes(), version_id, serde_json::to_string(attrs)?],
        );
        Ok(())
    }

    fn set_storage_class(&mut self, bucket: &str, key: &str, version_id: &str, class: &str) -> Result<()> {
        self.hold_key(bucket, key)?;
        self.queue(
            "UPDATE versions SET storage_class = $4 WHERE bucket = $1 AND key = $2 AND version_id = $3",
            values![bucket, key.as_bytes(), version_id, class],
        );
        Ok(())
    }

    fn set_repl_status(&mut self, bucket: &str, key: &str, version_id: &str, status: Option<ReplStatus>) -> Result<()> {
        self.hold_key(bucket, key)?;
        self.queue(
            "UPDATE versions SET repl_status = $4 WHERE bucket = $1 AND key = $2 AND version_id = $3 \
             AND repl_status IS DISTINCT FROM $4 AND repl_status IS DISTINCT FROM 'REPLICA'",
            values![bucket, key.as_bytes(), version_id, status.map(ReplStatus::as_str)],
        );
        Ok(())
    }

    fn put_upload(&mut self, u: &UploadRecord) -> Result<()> {
        self.queue(
            format!(
                "INSERT INTO uploads ({UPLOAD_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (upload_id) DO UPDATE SET fmt = $2, bucket = $3, key = $4, initiated_us = $5, owner = $6, \
                 storage_class = $7, checksum_algorithm = $8, attrs = $9"
            ),
            values![
                u.upload_id,
                FORMAT_VERSION,
                u.bucket,
                u.key.as_bytes(),
                u.initiated_us,
                serde_json::to_string(&u.owner)?,
                u.storage_class,
                u.checksum_algorithm.map(Algorithm::name),
                serde_json::to_string(&u.attrs)?,
            ],
        );
        Ok(())
    }

    fn delete_upload(&mut self, upload_id: &str) -> Result<()> {
        self.queue("DELETE FROM uploads WHERE upload_id = $1", values![upload_id]);
        Ok(())
    }

    fn put_part(&mut self, p: &PartRecord) -> Result<Option<PartRecord>> {
        let number = i64::from(p.part_number);
        // Locks the part's row (if any) so two uploads of one part number take turns.
        let old = self.one(
            &format!("SELECT {PART_COLS} FROM parts WHERE upload_id = $1 AND part_number = $2 FOR UPDATE"),
            &[&p.upload_id, &number],
            rows::part,
        )?;
        self.queue(
            format!(
                "INSERT INTO parts ({PART_COLS}) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (upload_id, part_number) DO UPDATE SET fmt = $3, mtime_us = $4, part = $5"
            ),
            values![p.upload_id, number, FORMAT_VERSION, p.mtime_us, serde_json::to_string(&p.part)?],
        );
        Ok(old)
    }

    fn take_parts(&mut self, upload_id: &str) -> Result<Vec<PartRecord>> {
        let mut parts = self.all(
            &format!("DELETE FROM parts WHERE upload_id = $1 RETURNING {PART_COLS}"),
            &[&upload_id],
            rows::part,
        )?;
        parts.sort_by_key(|p| p.part_number);
        Ok(parts)
    }

    /// With shared blobs, the blob's intent becomes its row; a blob with neither (its intent
    /// was swept: the object may be gone) fails the transaction.
    fn add_blob(&mut self, blob: &str) -> Result<()> {
        self.w()?.new_blobs = true;
        if self.blob_intents {
            let added = self.exec(
                "WITH i AS (DELETE FROM blob_intents WHERE id = $1 RETURNING id) \
                 INSERT INTO blobs (id) SELECT id FROM i ON CONFLICT DO NOTHING",
                &[&blob],
            )?;
            if added == 0 && !self.blob_is_live(blob)? {
                return Err(Error::Other(format!("blob {blob} has no intent (swept after its node was fenced?)")));
            }
            return Ok(());
        }
        self.queue("INSERT INTO blobs (id) VALUES ($1) ON CONFLICT DO NOTHING", values![blob]);
        Ok(())
    }

    fn release_blob(&mut self, blob: &str, due_us: i64) -> Result<()> {
        self.queue("DELETE FROM blobs WHERE id = $1", values![blob]);
        self.queue(
            "INSERT INTO garbage (id, due_us) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET due_us = $2",
            values![blob, due_us],
        );
        Ok(())
    }

    fn forget_garbage(&mut self, blobs: &[String]) -> Result<()> {
        self.queue("DELETE FROM garbage WHERE id = ANY($1)", values![blobs.to_vec()]);
        Ok(())
    }

    fn set_setting(&mut self, key: &str, value: &str) -> Result<()> {
        self.queue(
            "INSERT INTO settings (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = $2",
            values![key, value],
        );
        Ok(())
    }

    fn on_commit(&mut self, hook: Box<dyn FnOnce() + Send>) {
        if let Ok(w) = self.w() {
            w.hooks.push(hook);
        }
    }

    fn on_commit_once(&mut self, key: &'static str, hook: Box<dyn FnOnce() + Send>) {
        if let Ok(w) = self.w()
            && !w.once.contains(&key)
        {
            w.once.push(key);
            w.hooks.push(hook);
        }
    }

    fn signals(&self) -> &Signals {
        &self.signals
    }
}

impl OutboxWrites for PgTx<'_> {
    fn insert_job(&mut self, n: &NewJob<'_>) -> Result<i64> {
        let (sql, params) = self.job_insert(n)?;
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params.iter().map(|p| &**p as _).collect();
        self.conn
            .query_opt(&format!("{sql} RETURNING id"), &params)?
            .ok_or_else(|| Error::Other("inserting a job returned no id".into()))?
            .int(0)
    }

    fn record_job(&mut self, n: &NewJob<'_>) -> Result<()> {
        let (sql, params) = self.job_insert(n)?;
        self.queue(sql, params);
        Ok(())
    }

    /// A job leased by another node (this node's lease expired and it was taken over) is not
    /// this node's to remove: `None`, as if already gone.
    fn delete_job(&mut self, id: i64) -> Result<Option<Job>> {
        if !self.hold_job_key(id)? {
            return Ok(None);
        }
        let deleted = self.one(
            &format!(
                "DELETE FROM repl_jobs WHERE id = $1 AND (lease_owner IS NULL OR lease_owner = $2) RETURNING {JOB_COLS}, blocked"
            ),
            &[&id, &self.node_id],
            |r| Ok((rows::job(r)?, r.flag(BLOCKED_AFTER_JOB_COLS)?)),
        )?;
        let Some((j, blocked)) = deleted else { return Ok(None) };
        self.keep_books(&j, Bookkeeping::of_removal(&j, blocked));
        Ok(Some(j))
    }

    fn update_job(&mut self, j: &Job) -> Result<()> {
        if !self.hold_job_key(j.id)? {
            return Ok(());
        }
        // A job another node leased is that node's to update.
        let Some((old, old_blocked)) = self.one(
            &format!("SELECT {JOB_COLS}, blocked FROM repl_jobs WHERE id = $1 AND (lease_owner IS NULL OR lease_owner = $2)"),
            &[&j.id, &self.node_id],
            |r| Ok((rows::job(r)?, r.flag(BLOCKED_AFTER_JOB_COLS)?)),
        )?
        else {
            return Ok(());
        };
        let was_head = old.state == JobState::Pending && !old_blocked;
        let blocked = blocked_after_update(old.state, was_head, j.state, || self.key_has_pending_job(j))?;
        // A transfer saving its progress keeps its lease (another node would resume the same
        // upload beside it); any other change (a retry scheduled, a failure, a re-arm) ends it.
        let progress_only = old.state == j.state
            && old.attempts == j.attempts
            && old.next_attempt_us == j.next_attempt_us
            && old.last_error == j.last_error
            && old.since_us == j.since_us
            && old.backfill_id == j.backfill_id;
        self.queue(
            "UPDATE repl_jobs SET state = $2, attempts = $3, next_attempt_us = $4, last_error = $5, progress = $6, \
             since_us = $7, backfill_id = $8, blocked = $9, \
             lease_owner = CASE WHEN $10 THEN lease_owner END, lease_token = CASE WHEN $10 THEN lease_token END, \
             lease_until_us = CASE WHEN $10 THEN lease_until_us END \
             WHERE id = $1",
            values![
                j.id,
                j.state.code(),
                i64::from(j.attempts),
                j.next_attempt_us,
                j.last_error,
                j.progress,
                j.since_us,
                j.backfill_id,
                blocked,
                progress_only,
            ],
        );
        self.keep_books(&old, Bookkeeping::of_update(&old, was_head, j));
        Ok(())
    }

    fn mark_delivered(&mut self, bucket: &str, key: &str, version_id: &str, dest: &str) -> Result<()> {
        self.queue(
            "INSERT INTO repl_delivered (vrow, dest) SELECT id, $4 FROM versions WHERE bucket = $1 AND key = $2 \
             AND version_id = $3 ON CONFLICT DO NOTHING",
            values![bucket, key.as_bytes(), version_id, dest],
        );
        Ok(())
    }

    fn insert_backfill(&mut self, b: &Backfill) -> Result<i64> {
        let values = backfill_values(b);
        let row = self.conn.query_opt(
            &format!(
                "INSERT INTO backfills ({cols}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
                 $16, $17, $18, $19, $20, $21) RETURNING id",
                cols = BACKFILL_COLS.trim_start_matches("id, ")
            ),
            &borrowed(&values),
        )?;
        row.ok_or_else(|| Error::Other("inserting a backfill returned no id".into()))?.int(0)
    }

    fn update_backfill(&mut self, b: &Backfill, was: BackfillState) -> Result<bool> {
        let mut values = backfill_values(b);
        values.extend([Box::new(b.id) as Value, Box::new(was.as_str())]);
        let n = self.exec(
            "UPDATE backfills SET fmt = $1, bucket = $2, rule_id = $3, prefix = $4, status_filter = $5, older_than_us = $6, \
             state = $7, cursor_key = $8, cursor_mtime = $9, cursor_vid = $10, total_versions = $11, total_bytes = $12, \
             scanned_versions = $13, scanned_bytes = $14, enqueued_versions = $15, \
             done_versions = GREATEST(done_versions, $16), done_bytes = GREATEST(done_bytes, $17), \
             failed_versions = GREATEST(failed_versions, $18), created_us = $19, updated_us = $20, finished_us = $21 \
             WHERE id = $22 AND state = $23",
            &borrowed(&values),
        )?;
        Ok(n == 1)
    }

    fn set_backfill_state(&mut self, id: i64, from: &[BackfillState], to: BackfillState, now_us: i64) -> Result<bool> {
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let n = self.exec(
            "UPDATE backfills SET state = $2, updated_us = $3, finished_us = CASE WHEN $4 THEN $3 ELSE finished_us END \
             WHERE id = $1 AND state = ANY($5)",
            &[&id, &to.as_str(), &now_us, &to.ends(), &from],
        )?;
        Ok(n == 1)
    }

    fn backfill_progress(&mut self, id: i64, done: u64, bytes: u64, failed: u64) -> Result<()> {
        self.queue(
            "UPDATE backfills SET done_versions = done_versions + $2, done_bytes = done_bytes + $3, \
             failed_versions = failed_versions + $4 WHERE id = $1",
            values![id, to_i64(done), to_i64(bytes), to_i64(failed)],
        );
        Ok(())
    }

    fn add_event(&mut self, time_us: i64, bucket: &str, rule_id: &str, kind: &str, detail: &str) -> Result<i64> {
        self.conn
            .query_opt(
                "INSERT INTO events (fmt, time_us, bucket, rule_id, kind, detail) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[&FORMAT_VERSION, &time_us, &bucket, &rule_id, &kind, &detail],
            )?
            .ok_or_else(|| Error::Other("inserting an event returned no id".into()))?
            .int(0)
    }
}

/// Folds counter deltas into their rows, a batch per statement (each statement is atomic, so a
/// snapshot sees the sums before or after, never half). Deltas another node is folding are
/// skipped, and the rows are upserted in key order: two nodes compacting never deadlock.
pub(super) fn compact(conn: &SyncConn) -> Result<()> {
    conn.execute(
        "WITH moved AS (DELETE FROM repl_dest_deltas WHERE id IN \
             (SELECT id FROM repl_dest_deltas ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) \
             RETURNING id, bucket, peer, dest_bucket, pending_ops, pending_bytes, failed_ops, last_error), \
         sums AS (SELECT bucket, peer, dest_bucket, sum(pending_ops)::bigint AS p, sum(pending_bytes)::bigint AS b, \
             sum(failed_ops)::bigint AS f, \
             (array_agg(last_error ORDER BY id DESC) FILTER (WHERE last_error IS NOT NULL))[1] AS e \
             FROM moved GROUP BY bucket, peer, dest_bucket) \
         INSERT INTO repl_dests AS r (bucket, peer, dest_bucket, pending_ops, pending_bytes, failed_ops, last_error) \
         SELECT bucket, peer, dest_bucket, p, b, f, e FROM sums ORDER BY bucket, peer, dest_bucket \
         ON CONFLICT (bucket, peer, dest_bucket) DO UPDATE SET pending_ops = r.pending_ops + excluded.pending_ops, \
         pending_bytes = r.pending_bytes + excluded.pending_bytes, failed_ops = r.failed_ops + excluded.failed_ops, \
         last_error = coalesce(excluded.last_error, r.last_error)",
        &[&COMPACT_BATCH],
    )?;
    conn.execute(
        "WITH moved AS (DELETE FROM bucket_usage_deltas WHERE id IN \
             (SELECT id FROM bucket_usage_deltas ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) \
             RETURNING bucket, versions, bytes), \
         sums AS (SELECT bucket, sum(versions)::bigint AS v, sum(bytes)::bigint AS b FROM moved GROUP BY bucket) \
         INSERT INTO bucket_usage AS u (bucket, versions, bytes) SELECT bucket, v, b FROM sums ORDER BY bucket \
         ON CONFLICT (bucket) DO UPDATE SET versions = u.versions + excluded.versions, bytes = u.bytes + excluded.bytes",
        &[&COMPACT_BATCH],
    )?;
    Ok(())
}

/// A backfill's columns in [`BACKFILL_COLS`] order, its id left out (`$1`..`$21`).
fn backfill_values(b: &Backfill) -> Vec<Value> {
    let (cm, cv) = match &b.cursor_version {
        Some((m, v)) => (Some(*m), Some(v.clone())),
        None => (None, None),
    };
    values![
        FORMAT_VERSION,
        b.bucket,
        b.rule_id,
        b.prefix,
        b.status_filter.as_str(),
        b.older_than_us,
        b.state.as_str(),
        b.cursor_key.as_ref().map(|k| k.as_bytes().to_vec()),
        cm,
        cv,
        to_i64(b.total_versions),
        to_i64(b.total_bytes),
        to_i64(b.scanned_versions),
        to_i64(b.scanned_bytes),
        to_i64(b.enqueued_versions),
        to_i64(b.done_versions),
        to_i64(b.done_bytes),
        to_i64(b.failed_versions),
        b.created_us,
        b.updated_us,
        b.finished_us
    ]
}

/// A bucket's columns in [`BUCKET_COLS`] order.
fn bucket_values(b: &BucketRecord) -> Result<Vec<Value>> {
    Ok(values![
        b.name,
        FORMAT_VERSION,
        b.created_us,
        serde_json::to_string(&b.owner)?,
        b.versioning.code(),
        serde_json::to_string(&b.acl)?,
        b.tagging.as_ref().map(serde_json::to_string).transpose()?,
        b.replication,
        (!b.replica_sources.is_empty()).then(|| serde_json::to_string(&b.replica_sources)).transpose()?,
        (!b.config.is_empty()).then(|| serde_json::to_string(&b.config)).transpose()?,
    ])
}
