//! The reads ([`ReadTx`], [`OutboxReads`]) on PostgreSQL, for read snapshots and write
//! transactions alike. In a write transaction, reading a key's versions takes the key first
//! ([`PgTx::hold_key`]): what the closure then decides from them stays true until it commits.
//! Counters are their base row plus the deltas not yet folded in, summed in one statement.

use ferry_core::sync::lock;

use super::conn::Params;
use super::keys::{KeyHead, LOCK_KEY_SQL};
use super::store::PgTx;
use crate::error::{Error, Result};
use crate::meta::rows::{
    self, BACKFILL_COLS, BUCKET_COLS, Cells, DEST_COLS, EVENT_COLS, JOB_COLS, LIST_COLS, PART_COLS, UPLOAD_COLS, VERSION_COLS,
    limit_i64, to_u64,
};
use crate::meta::{OutboxReads, ReadTx, VersionCursor, scan_after_cursor};
use crate::model::{BucketRecord, BucketUsage, ListEntry, PartRecord, UploadRecord, VersionRecord};
use crate::replication::{Backfill, DestStats, Event, Job};

/// The end of every key (keys are at most 1024 bytes).
const KEY_END: [u8; 1100] = [0xff; 1100];

impl PgTx<'_> {
    /// Every row of a query, mapped.
    pub(super) fn all<T>(&self, sql: &str, params: Params<'_>, f: fn(&dyn Cells) -> Result<T>) -> Result<Vec<T>> {
        self.conn.query(sql, params)?.iter().map(|r| f(r)).collect()
    }

    /// The first row of a query, mapped.
    pub(super) fn one<T>(&self, sql: &str, params: Params<'_>, f: fn(&dyn Cells) -> Result<T>) -> Result<Option<T>> {
        self.conn.query_opt(sql, params)?.as_ref().map(|r| f(r)).transpose()
    }

    /// A single value.
    fn value<T: for<'r> tokio_postgres::types::FromSql<'r>>(&self, sql: &str, params: Params<'_>) -> Result<T> {
        let rows = self.conn.query(sql, params)?;
        let row = rows.first().ok_or_else(|| Error::Other(format!("no row from {sql}")))?;
        row.try_get(0).map_err(super::pg)
    }

    /// In a write transaction: takes `key`'s row in `key_heads` (once per transaction), which
    /// orders the key's writers across nodes; the commit times handed out afterwards follow
    /// the key's latest version. Nothing in a read snapshot.
    pub(super) fn hold_key(&self, bucket: &str, key: &str) -> Result<Option<KeyHead>> {
        let Some(w) = &self.write else { return Ok(None) };
        let id = (bucket.to_owned(), key.as_bytes().to_vec());
        if let Some(head) = w.keys.borrow().get(&id) {
            return Ok(Some(*head));
        }
        let row = self.conn.query_opt(LOCK_KEY_SQL, &[&bucket, &key.as_bytes()])?;
        let row = row.ok_or_else(|| Error::Other("locking a key returned nothing".into()))?;
        let head = KeyHead { seq: row.int(0)?, latest_mtime_us: row.int(1)? };
        w.after.set(w.after.get().max(head.latest_mtime_us));
        w.keys.borrow_mut().insert(id, head);
        Ok(Some(head))
    }
}

impl ReadTx for PgTx<'_> {
    /// In a write transaction the row is taken `FOR KEY SHARE`: the bucket cannot be deleted
    /// before the transaction ends (its configuration can change; the writes that read the old
    /// one commit first or see the new one).
    fn get_bucket(&self, name: &str) -> Result<Option<BucketRecord>> {
        if self.write.is_some() {
            return self.one(
                &format!("SELECT {BUCKET_COLS} FROM buckets WHERE name = $1 FOR KEY SHARE"),
                &[&name],
                rows::bucket,
            );
        }
        self.one(&format!("SELECT {BUCKET_COLS} FROM buckets WHERE name = $1"), &[&name], rows::bucket)
    }

    fn list_buckets(&self) -> Result<Vec<BucketRecord>> {
        self.all(&format!("SELECT {BUCKET_COLS} FROM buckets ORDER BY name"), &[], rows::bucket)
    }

    fn bucket_usage(&self, bucket: &str) -> Result<BucketUsage> {
        let rows = self.conn.query(
            "SELECT coalesce(sum(versions), 0)::bigint, coalesce(sum(bytes), 0)::bigint FROM \
             (SELECT versions, bytes FROM bucket_usage WHERE bucket = $1 \
              UNION ALL SELECT versions, bytes FROM bucket_usage_deltas WHERE bucket = $1) u",
            &[&bucket],
        )?;
        let (versions, bytes) = match rows.first() {
            Some(r) => (r.int(0)?, r.int(1)?),
            None => (0, 0),
        };
        Ok(BucketUsage { versions: u64::try_from(versions).unwrap_or(0), bytes: u64::try_from(bytes).unwrap_or(0) })
    }

    fn get_version(&self, bucket: &str, key: &str, version_id: &str) -> Result<Option<VersionRecord>> {
        self.hold_key(bucket, key)?;
        self.one(
            &format!("SELECT {VERSION_COLS} FROM versions WHERE bucket = $1 AND key = $2 AND version_id = $3"),
            &[&bucket, &key.as_bytes(), &version_id],
            rows::version,
        )
    }

    fn get_latest(&self, bucket: &str, key: &str) -> Result<Option<VersionRecord>> {
        self.hold_key(bucket, key)?;
        self.one(
            &format!(
                "SELECT {VERSION_COLS} FROM versions WHERE bucket = $1 AND key = $2 \
                 ORDER BY mtime_us DESC, version_id DESC LIMIT 1"
            ),
            &[&bucket, &key.as_bytes()],
            rows::version,
        )
    }

    fn scan_latest(&self, bucket: &str, from: &[u8], exclusive: bool, to: Option<&[u8]>, limit: usize) -> Result<Vec<ListEntry>> {
        let op = if exclusive { ">" } else { ">=" };
        let lim = limit_i64(limit);
        let to = to.unwrap_or(&KEY_END);
        self.all(
            &format!(
                "SELECT {LIST_COLS} FROM versions WHERE bucket = $1 AND is_latest AND NOT is_dm \
                 AND key {op} $2 AND key < $3 ORDER BY key LIMIT $4"
            ),
            &[&bucket, &from, &to, &lim],
            rows::list_entry,
        )
    }

    fn scan_versions(
        &self,
        bucket: &str,
        from: &[u8],
        cursor: &VersionCursor,
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<ListEntry>> {
        let to = to.unwrap_or(&KEY_END);
        scan_after_cursor(
            from,
            cursor,
            limit,
            |k, m, v, lim| {
                self.all(
                    &format!(
                        "SELECT {LIST_COLS} FROM versions WHERE bucket = $1 AND key = $2 \
                         AND (mtime_us < $3 OR (mtime_us = $3 AND version_id < $4)) \
                         ORDER BY mtime_us DESC, version_id DESC LIMIT $5"
                    ),
                    &[&bucket, &k.as_bytes(), &m, &v, &limit_i64(lim)],
                    rows::list_entry,
                )
            },
            |lower, exclusive, lim| {
                let op = if exclusive { ">" } else { ">=" };
                self.all(
                    &format!(
                        "SELECT {LIST_COLS} FROM versions WHERE bucket = $1 AND key {op} $2 AND key < $3 \
                         ORDER BY key, mtime_us DESC, version_id DESC LIMIT $4"
                    ),
                    &[&bucket, &lower, &to, &limit_i64(lim)],
                    rows::list_entry,
                )
            },
        )
    }

    fn bucket_has_versions(&self, bucket: &str) -> Result<bool> {
        Ok(self.conn.query_opt("SELECT 1 FROM versions WHERE bucket = $1 LIMIT 1", &[&bucket])?.is_some())
    }

    fn get_upload(&self, upload_id: &str) -> Result<Option<UploadRecord>> {
        self.one(
            &format!("SELECT {UPLOAD_COLS} FROM uploads WHERE upload_id = $1"),
            &[&upload_id],
            rows::upload,
        )
    }

    fn scan_uploads(
        &self,
        bucket: &str,
        from: &[u8],
        after: Option<(&str, Option<&str>)>,
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<UploadRecord>> {
        let to = to.unwrap_or(&KEY_END);
        let mut out = Vec::new();
        let mut lower: &[u8] = from;
        let mut exclusive = false;
        if let Some((k, up)) = after {
            if let Some(up) = up
                && let Some(m) = self.get_upload(up)?.filter(|m| m.bucket == bucket && m.key == k)
            {
                // The rest of key `k`, after the marker upload.
                out = self.all(
                    &format!(
                        "SELECT {UPLOAD_COLS} FROM uploads WHERE bucket = $1 AND key = $2 \
                         AND (initiated_us > $3 OR (initiated_us = $3 AND upload_id > $4)) \
                         ORDER BY initiated_us, upload_id LIMIT $5"
                    ),
                    &[&bucket, &k.as_bytes(), &m.initiated_us, &up, &limit_i64(limit)],
                    rows::upload,
                )?;
            }
            if k.as_bytes() >= from {
                lower = k.as_bytes();
                exclusive = true;
            }
        }
        if out.len() >= limit {
            return Ok(out);
        }
        let op = if exclusive { ">" } else { ">=" };
        out.extend(self.all(
            &format!(
                "SELECT {UPLOAD_COLS} FROM uploads WHERE bucket = $1 AND key {op} $2 AND key < $3 \
                 ORDER BY key, initiated_us, upload_id LIMIT $4"
            ),
            &[&bucket, &lower, &to, &limit_i64(limit - out.len())],
            rows::upload,
        )?);
        Ok(out)
    }

    fn idle_uploads(&self, before_us: i64, limit: usize) -> Result<Vec<UploadRecord>> {
        self.all(
            &format!(
                "SELECT {UPLOAD_COLS} FROM uploads u WHERE initiated_us < $1 AND \
                 coalesce((SELECT max(mtime_us) FROM parts p WHERE p.upload_id = u.upload_id), 0) < $1 \
                 ORDER BY initiated_us LIMIT $2"
            ),
            &[&before_us, &limit_i64(limit)],
            rows::upload,
        )
    }

    fn list_parts(&self, upload_id: &str, after: u32, limit: usize) -> Result<Vec<PartRecord>> {
        self.all(
            &format!("SELECT {PART_COLS} FROM parts WHERE upload_id = $1 AND part_number > $2 ORDER BY part_number LIMIT $3"),
            &[&upload_id, &i64::from(after), &limit_i64(limit)],
            rows::part,
        )
    }

    fn blob_is_live(&self, blob: &str) -> Result<bool> {
        Ok(self.conn.query_opt("SELECT 1 FROM blobs WHERE id = $1", &[&blob])?.is_some())
    }

    fn due_garbage(&self, now_us: i64, limit: usize) -> Result<Vec<String>> {
        self.all(
            "SELECT id FROM garbage WHERE due_us <= $1 ORDER BY due_us LIMIT $2",
            &[&now_us, &limit_i64(limit)],
            |r| r.text(0),
        )
    }

    fn get_setting(&self, key: &str) -> Result<Option<String>> {
        self.one("SELECT v FROM settings WHERE k = $1", &[&key], |r| r.text(0))
    }
}

impl OutboxReads for PgTx<'_> {
    fn runnable_jobs(
        &self,
        peer: &str,
        dest_bucket: &str,
        priority: i64,
        now_us: i64,
        exclude: &[i64],
        limit: usize,
    ) -> Result<Vec<Job>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let want = limit_i64(limit.saturating_add(exclude.len()));
        let jobs = self.all(
            &format!(
                "SELECT {JOB_COLS} FROM repl_jobs WHERE peer = $1 AND dest_bucket = $2 AND state = 0 AND NOT blocked \
                 AND priority = $3 AND next_attempt_us <= $4 \
                 AND (lease_owner IS NULL OR lease_owner = $6 OR lease_until_us < $4) ORDER BY next_attempt_us, id LIMIT $5"
            ),
            &[&peer, &dest_bucket, &priority, &now_us, &want, &self.node_id],
            rows::job,
        )?;
        Ok(jobs.into_iter().filter(|j| !exclude.contains(&j.id)).take(limit).collect())
    }

    fn due_destinations(&self, peer: &str) -> Result<Vec<String>> {
        self.all(
            "SELECT dest_bucket FROM (SELECT bucket, dest_bucket, pending_ops FROM repl_dests WHERE peer = $1 \
             UNION ALL SELECT bucket, dest_bucket, pending_ops FROM repl_dest_deltas WHERE peer = $1) d \
             GROUP BY dest_bucket HAVING sum(pending_ops) > 0 ORDER BY dest_bucket",
            &[&peer],
            |r| r.text(0),
        )
    }

    fn peers_with_jobs(&self) -> Result<Vec<String>> {
        self.all(
            "SELECT peer FROM (SELECT peer, pending_ops FROM repl_dests UNION ALL SELECT peer, pending_ops FROM repl_dest_deltas) d \
             GROUP BY peer HAVING sum(pending_ops) > 0 ORDER BY peer",
            &[],
            |r| r.text(0),
        )
    }

    fn pending_jobs_of_peer(&self, peer: &str, limit: usize) -> Result<Vec<Job>> {
        self.all(
            &format!("SELECT {JOB_COLS} FROM repl_jobs WHERE peer = $1 AND state = 0 ORDER BY id LIMIT $2"),
            &[&peer, &limit_i64(limit)],
            rows::job,
        )
    }

    fn jobs_for_version(&self, bucket: &str, key: &str, version_id: &str) -> Result<Vec<Job>> {
        self.all(
            &format!("SELECT {JOB_COLS} FROM repl_jobs WHERE bucket = $1 AND key = $2 AND version_id = $3 ORDER BY id"),
            &[&bucket, &key.as_bytes(), &version_id],
            rows::job,
        )
    }

    fn key_has_pending_job(&self, job: &Job) -> Result<bool> {
        Ok(self
            .conn
            .query_opt(
                "SELECT 1 FROM repl_jobs WHERE peer = $1 AND dest_bucket = $2 AND bucket = $3 AND key = $4 AND state = 0 \
                 AND id <> $5 LIMIT 1",
                &[&job.peer, &job.dest_bucket, &job.bucket, &job.key.as_bytes(), &job.id],
            )?
            .is_some())
    }

    fn get_job(&self, id: i64) -> Result<Option<Job>> {
        self.one(&format!("SELECT {JOB_COLS} FROM repl_jobs WHERE id = $1"), &[&id], rows::job)
    }

    fn bucket_jobs(&self, bucket: &str, after_id: i64, limit: usize) -> Result<Vec<Job>> {
        self.all(
            &format!("SELECT {JOB_COLS} FROM repl_jobs WHERE bucket = $1 AND id > $2 ORDER BY id LIMIT $3"),
            &[&bucket, &after_id, &limit_i64(limit)],
            rows::job,
        )
    }

    fn failed_jobs(&self, bucket: &str, limit: usize) -> Result<Vec<Job>> {
        self.all(
            &format!("SELECT {JOB_COLS} FROM repl_jobs WHERE bucket = $1 AND state = 1 ORDER BY id LIMIT $2"),
            &[&bucket, &limit_i64(limit)],
            rows::job,
        )
    }

    fn max_job_id(&self) -> Result<i64> {
        self.value("SELECT coalesce(max(id), 0)::bigint FROM repl_jobs", &[])
    }

    fn dest_stats(&self, bucket: &str) -> Result<Vec<DestStats>> {
        let mut out = self.all(
            &format!(
                "SELECT {DEST_COLS} FROM (SELECT peer, dest_bucket, sum(pending_ops)::bigint AS pending_ops, \
                 sum(pending_bytes)::bigint AS pending_bytes, sum(failed_ops)::bigint AS failed_ops, \
                 (array_agg(last_error ORDER BY ord DESC) FILTER (WHERE last_error IS NOT NULL))[1] AS last_error \
                 FROM (SELECT peer, dest_bucket, pending_ops, pending_bytes, failed_ops, last_error, 0::bigint AS ord \
                       FROM repl_dests WHERE bucket = $1 \
                       UNION ALL SELECT peer, dest_bucket, pending_ops, pending_bytes, failed_ops, last_error, id \
                       FROM repl_dest_deltas WHERE bucket = $1) d \
                 GROUP BY peer, dest_bucket) s ORDER BY peer, dest_bucket"
            ),
            &[&bucket],
            rows::dest_stats,
        )?;
        for s in &mut out {
            s.oldest_undelivered_us = self
                .conn
                .query_opt(
                    "SELECT created_us FROM repl_jobs WHERE bucket = $1 AND peer = $2 AND dest_bucket = $3 AND live \
                     ORDER BY created_us LIMIT 1",
                    &[&bucket, &s.peer, &s.dest_bucket],
                )?
                .map(|r| r.int(0))
                .transpose()?;
            if s.pending_ops == 0 && s.failed_ops == 0 {
                s.last_error = None;
            }
        }
        Ok(out)
    }

    fn delivered_to(&self, bucket: &str, key: &str, version_id: &str) -> Result<Vec<String>> {
        self.all(
            "SELECT d.dest FROM repl_delivered d JOIN versions v ON d.vrow = v.id \
             WHERE v.bucket = $1 AND v.key = $2 AND v.version_id = $3 ORDER BY d.dest",
            &[&bucket, &key.as_bytes(), &version_id],
            |r| r.text(0),
        )
    }

    fn newer_delivered(&self, bucket: &str, key: &str, mtime_us: i64, version_id: &str, dest: &str) -> Result<bool> {
        Ok(self
            .conn
            .query_opt(
                "SELECT 1 FROM versions v JOIN repl_delivered d ON d.vrow = v.id WHERE v.bucket = $1 AND v.key = $2 \
                 AND (v.mtime_us > $3 OR (v.mtime_us = $3 AND v.version_id > $4)) AND d.dest = $5 LIMIT 1",
                &[&bucket, &key.as_bytes(), &mtime_us, &version_id, &dest],
            )?
            .is_some())
    }

    /// This node's closed timestamp (taken before a read snapshot began; now, in a write
    /// transaction, whose statements each see every commit ended before them), and the other
    /// nodes' as published: the minimum is the region's committed clock.
    fn committed_clock(&self) -> Result<i64> {
        let own = match (self.closed_before, &self.clock) {
            (Some(c), _) => c,
            (None, Some(clock)) => lock(clock).closed(),
            (None, None) => 0,
        };
        let others: Option<i64> = self.value("SELECT min(closed_us) FROM node_clocks WHERE node_id <> $1", &[&self.node_id])?;
        Ok(others.map_or(own, |o| o.min(own)))
    }

    fn count_versions(&self, bucket: &str, from: &[u8], to: Option<&[u8]>) -> Result<(u64, u64)> {
        let to = to.unwrap_or(&KEY_END);
        let rows = self.conn.query(
            "SELECT count(*), coalesce(sum(size), 0)::bigint FROM versions WHERE bucket = $1 AND key >= $2 AND key < $3",
            &[&bucket, &from, &to],
        )?;
        let r = rows.first().ok_or_else(|| Error::Other("count returned no row".into()))?;
        Ok((to_u64(r.int(0)?)?, to_u64(r.int(1)?)?))
    }

    fn get_backfill(&self, id: i64) -> Result<Option<Backfill>> {
        self.one(&format!("SELECT {BACKFILL_COLS} FROM backfills WHERE id = $1"), &[&id], rows::backfill)
    }

    fn list_backfills(&self, bucket: Option<&str>) -> Result<Vec<Backfill>> {
        self.all(
            &format!("SELECT {BACKFILL_COLS} FROM backfills WHERE $1::text IS NULL OR bucket = $1 ORDER BY id DESC"),
            &[&bucket],
            rows::backfill,
        )
    }

    fn active_backfills(&self) -> Result<Vec<Backfill>> {
        self.all(
            &format!("SELECT {BACKFILL_COLS} FROM backfills WHERE state IN ('counting', 'running') ORDER BY id"),
            &[],
            rows::backfill,
        )
    }

    fn backfill_pending(&self, id: i64) -> Result<u64> {
        to_u64(self.value("SELECT count(*) FROM repl_jobs WHERE backfill_id = $1 AND state = 0", &[&id])?)
    }

    fn events(&self, bucket: &str, after_id: i64, limit: usize) -> Result<Vec<Event>> {
        self.all(
            &format!("SELECT {EVENT_COLS} FROM events WHERE bucket = $1 AND id > $2 ORDER BY id LIMIT $3"),
            &[&bucket, &after_id, &limit_i64(limit)],
            rows::event,
        )
    }

    fn latest_events(&self, bucket: &str, rule_id: Option<&str>, kind_prefix: Option<&str>, limit: usize) -> Result<Vec<Event>> {
        let like = kind_prefix.map(|p| format!("{}%", p.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
        self.all(
            &format!(
                "SELECT {EVENT_COLS} FROM events WHERE bucket = $1 AND ($2::text IS NULL OR rule_id = $2) \
                 AND ($3::text IS NULL OR kind LIKE $3 ESCAPE '\\') ORDER BY id DESC LIMIT $4"
            ),
            &[&bucket, &rule_id, &like, &limit_i64(limit)],
            rows::event,
        )
    }
}
