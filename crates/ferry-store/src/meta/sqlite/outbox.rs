//! The replication tables' SQL ([`OutboxReads`], [`OutboxWrites`]). What the rows mean is
//! [`crate::replication`]'s; this file keeps the two derived facts the trait contract names,
//! in the statements that change the jobs (so in the same transaction):
//! - `blocked`: per (peer, dest_bucket, bucket, key) exactly one pending job is unblocked (the
//!   head); the rest wait. A job that leaves the pending set (delivered, dropped, failed)
//!   unblocks the oldest waiting one.
//! - `repl_dests`: pending operations and bytes and failed operations per (source bucket,
//!   destination), plus the last error seen there.
//!
//! And one ordering rule of the same kind: a live job recorded behind waiting backfill jobs
//! of its key promotes them to live priority (they would otherwise hold it back).

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params};

use super::reads::HasConn;
use super::rows::{self, BACKFILL_COLS, DEST_COLS, EVENT_COLS, JOB_COLS, collect, first, limit_i64, to_i64, to_u64};
use super::writer::SqliteWriteTx;
use crate::error::{Error, Result};
use crate::meta::{OutboxReads, OutboxWrites};
use crate::model::FORMAT_VERSION;
use crate::replication::outbox::{Bookkeeping, blocked_after_update};
use crate::replication::{Backfill, BackfillState, DestStats, Event, Job, JobState, NewJob};

/// Where `blocked` is in a row of `RETURNING {JOB_COLS}, blocked` (computed at build time:
/// completing a job is on every delivery's path).
const BLOCKED_AFTER_JOB_COLS: usize = rows::col_count(JOB_COLS);

impl<T: HasConn> OutboxReads for T {
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
        // In-flight jobs are due too and come first: over-fetch by their number, then skip them
        // here (keeps the statement cacheable). The index walks due jobs only, in due order, and
        // holds the id: a skipped row is neither read from the table nor decoded.
        let want = limit_i64(limit.saturating_add(exclude.len()));
        let mut stmt = self.conn().prepare_cached(&format!(
            "SELECT {JOB_COLS} FROM repl_jobs WHERE peer = ?1 AND dest_bucket = ?2 AND state = 0 AND blocked = 0 \
             AND priority = ?3 AND next_attempt_us <= ?4 ORDER BY next_attempt_us, id LIMIT ?5"
        ))?;
        let mut rows = stmt.query(params![peer, dest_bucket, priority, now_us, want])?;
        let mut jobs = Vec::new();
        while jobs.len() < limit
            && let Some(r) = rows.next()?
        {
            if !exclude.contains(&r.get::<_, i64>(0)?) {
                jobs.push(rows::job(r)?);
            }
        }
        Ok(jobs)
    }

    fn due_destinations(&self, peer: &str) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT DISTINCT dest_bucket FROM repl_dests WHERE peer = ?1 AND pending_ops > 0 ORDER BY dest_bucket",
        )?;
        let rows = stmt.query_map([peer], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn peers_with_jobs(&self) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT DISTINCT peer FROM repl_dests WHERE pending_ops > 0 ORDER BY peer")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn pending_jobs_of_peer(&self, peer: &str, limit: usize) -> Result<Vec<Job>> {
        let conn = self.conn();
        collect(
            conn,
            &format!("SELECT {JOB_COLS} FROM repl_jobs WHERE peer = ?1 AND state = 0 ORDER BY id LIMIT ?2"),
            &[&peer, &limit_i64(limit)],
            rows::job,
        )
    }

    fn jobs_for_version(&self, bucket: &str, key: &str, version_id: &str) -> Result<Vec<Job>> {
        let conn = self.conn();
        collect(
            conn,
            &format!("SELECT {JOB_COLS} FROM repl_jobs WHERE bucket = ?1 AND key = ?2 AND version_id = ?3 ORDER BY id"),
            &[&bucket, &key.as_bytes(), &version_id],
            rows::job,
        )
    }

    fn key_has_pending_job(&self, job: &Job) -> Result<bool> {
        key_has_pending(self.conn(), job, job.id)
    }

    fn get_job(&self, id: i64) -> Result<Option<Job>> {
        let conn = self.conn();
        first(conn, &format!("SELECT {JOB_COLS} FROM repl_jobs WHERE id = ?1"), &[&id], rows::job)
    }

    fn bucket_jobs(&self, bucket: &str, after_id: i64, limit: usize) -> Result<Vec<Job>> {
        let conn = self.conn();
        collect(
            conn,
            &format!("SELECT {JOB_COLS} FROM repl_jobs WHERE bucket = ?1 AND id > ?2 ORDER BY id LIMIT ?3"),
            &[&bucket, &after_id, &limit_i64(limit)],
            rows::job,
        )
    }

    fn failed_jobs(&self, bucket: &str, limit: usize) -> Result<Vec<Job>> {
        let conn = self.conn();
        collect(
            conn,
            &format!("SELECT {JOB_COLS} FROM repl_jobs WHERE bucket = ?1 AND state = 1 ORDER BY id LIMIT ?2"),
            &[&bucket, &limit_i64(limit)],
            rows::job,
        )
    }

    fn max_job_id(&self) -> Result<i64> {
        let conn = self.conn();
        Ok(conn.prepare_cached("SELECT coalesce(max(id), 0) FROM repl_jobs")?.query_row([], |r| r.get(0))?)
    }

    fn dest_stats(&self, bucket: &str) -> Result<Vec<DestStats>> {
        let conn = self.conn();
        let mut out = collect(
            conn,
            &format!("SELECT {DEST_COLS} FROM repl_dests WHERE bucket = ?1 ORDER BY peer, dest_bucket"),
            &[&bucket],
            rows::dest_stats,
        )?;
        for s in &mut out {
            s.oldest_undelivered_us = conn
                .prepare_cached(
                    "SELECT created_us FROM repl_jobs WHERE bucket = ?1 AND peer = ?2 AND dest_bucket = ?3 AND live = 1 \
                     ORDER BY created_us LIMIT 1",
                )?
                .query_row(params![bucket, s.peer, s.dest_bucket], |r| r.get(0))
                .optional()?;
            if s.pending_ops == 0 && s.failed_ops == 0 {
                s.last_error = None;
            }
        }
        Ok(out)
    }

    fn delivered_to(&self, bucket: &str, key: &str, version_id: &str) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT d.dest FROM repl_delivered d JOIN versions v ON d.vrow = v.id \
             WHERE v.bucket = ?1 AND v.key = ?2 AND v.version_id = ?3 ORDER BY d.dest",
        )?;
        let rows = stmt.query_map(params![bucket, key.as_bytes(), version_id], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn newer_delivered(&self, bucket: &str, key: &str, mtime_us: i64, version_id: &str, dest: &str) -> Result<bool> {
        let conn = self.conn();
        Ok(conn
            .prepare_cached(
                "SELECT 1 FROM versions v JOIN repl_delivered d ON d.vrow = v.id WHERE v.bucket = ?1 AND v.key = ?2 \
                 AND (v.mtime_us > ?3 OR (v.mtime_us = ?3 AND v.version_id > ?4)) AND d.dest = ?5 LIMIT 1",
            )?
            .query_row(params![bucket, key.as_bytes(), mtime_us, version_id, dest], |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn committed_clock(&self) -> Result<i64> {
        let conn = self.conn();
        let v: Option<String> =
            conn.prepare_cached("SELECT v FROM settings WHERE k = 'clock'")?.query_row([], |r| r.get(0)).optional()?;
        v.map_or(Ok(0), |s| s.parse().map_err(|_| Error::unknown("commit clock setting", s)))
    }

    fn count_versions(&self, bucket: &str, from: &[u8], to: Option<&[u8]>) -> Result<(u64, u64)> {
        let conn = self.conn();
        let to = to.unwrap_or(&[0xff; 1100]);
        let (n, bytes): (i64, i64) = conn
            .prepare_cached("SELECT count(*), coalesce(sum(size), 0) FROM versions WHERE bucket = ?1 AND key >= ?2 AND key < ?3")?
            .query_row(params![bucket, from, to], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok((to_u64(n)?, to_u64(bytes)?))
    }

    fn get_backfill(&self, id: i64) -> Result<Option<Backfill>> {
        let conn = self.conn();
        first(
            conn,
            &format!("SELECT {BACKFILL_COLS} FROM backfills WHERE id = ?1"),
            &[&id],
            rows::backfill,
        )
    }

    fn list_backfills(&self, bucket: Option<&str>) -> Result<Vec<Backfill>> {
        let conn = self.conn();
        match bucket {
            Some(b) => collect(
                conn,
                &format!("SELECT {BACKFILL_COLS} FROM backfills WHERE bucket = ?1 ORDER BY id DESC"),
                &[&b],
                rows::backfill,
            ),
            None => collect(
                conn,
                &format!("SELECT {BACKFILL_COLS} FROM backfills ORDER BY id DESC"),
                &[],
                rows::backfill,
            ),
        }
    }

    fn active_backfills(&self) -> Result<Vec<Backfill>> {
        let conn = self.conn();
        collect(
            conn,
            &format!("SELECT {BACKFILL_COLS} FROM backfills WHERE state IN ('counting', 'running') ORDER BY id"),
            &[],
            rows::backfill,
        )
    }

    fn backfill_pending(&self, id: i64) -> Result<u64> {
        let conn = self.conn();
        let n: i64 = conn
            .prepare_cached("SELECT count(*) FROM repl_jobs WHERE backfill_id = ?1 AND state = 0")?
            .query_row([id], |r| r.get(0))?;
        to_u64(n)
    }

    fn events(&self, bucket: &str, after_id: i64, limit: usize) -> Result<Vec<Event>> {
        let conn = self.conn();
        collect(
            conn,
            &format!("SELECT {EVENT_COLS} FROM events WHERE bucket = ?1 AND id > ?2 ORDER BY id LIMIT ?3"),
            &[&bucket, &after_id, &limit_i64(limit)],
            rows::event,
        )
    }

    fn latest_events(&self, bucket: &str, rule_id: Option<&str>, kind_prefix: Option<&str>, limit: usize) -> Result<Vec<Event>> {
        let conn = self.conn();
        let like = kind_prefix.map(|p| format!("{}%", p.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
        collect(
            conn,
            &format!(
                "SELECT {EVENT_COLS} FROM events WHERE bucket = ?1 AND (?2 IS NULL OR rule_id = ?2) \
                 AND (?3 IS NULL OR kind LIKE ?3 ESCAPE '\\') ORDER BY id DESC LIMIT ?4"
            ),
            &[&bucket, &rule_id, &like, &limit_i64(limit)],
            rows::event,
        )
    }
}

/// A backfill's columns in [`BACKFILL_COLS`] order, its id left out (`?1`..`?21`).
fn backfill_values(b: &Backfill) -> Vec<Value> {
    let (cm, cv) = match &b.cursor_version {
        Some((m, v)) => (Some(*m), Some(v.clone())),
        None => (None, None),
    };
    vec![
        Value::from(FORMAT_VERSION),
        Value::from(b.bucket.clone()),
        Value::from(b.rule_id.clone()),
        Value::from(b.prefix.clone()),
        Value::from(b.status_filter.as_str().to_owned()),
        Value::from(b.older_than_us),
        Value::from(b.state.as_str().to_owned()),
        Value::from(b.cursor_key.as_ref().map(|k| k.as_bytes().to_vec())),
        Value::from(cm),
        Value::from(cv),
        Value::from(to_i64(b.total_versions)),
        Value::from(to_i64(b.total_bytes)),
        Value::from(to_i64(b.scanned_versions)),
        Value::from(to_i64(b.scanned_bytes)),
        Value::from(to_i64(b.enqueued_versions)),
        Value::from(to_i64(b.done_versions)),
        Value::from(to_i64(b.done_bytes)),
        Value::from(to_i64(b.failed_versions)),
        Value::from(b.created_us),
        Value::from(b.updated_us),
        Value::from(b.finished_us),
    ]
}

impl OutboxWrites for SqliteWriteTx<'_> {
    fn mark_delivered(&mut self, bucket: &str, key: &str, version_id: &str, dest: &str) -> Result<()> {
        let conn = self.conn();
        conn.prepare_cached(
            "INSERT OR IGNORE INTO repl_delivered (vrow, dest) SELECT id, ?4 FROM versions WHERE bucket = ?1 AND key = ?2 AND version_id = ?3",
        )?
        .execute(params![bucket, key.as_bytes(), version_id, dest])?;
        Ok(())
    }

    fn insert_job(&mut self, n: &NewJob<'_>) -> Result<i64> {
        self.insert(n).map(|(id, _)| id)
    }

    fn record_runnable_job(&mut self, n: &NewJob<'_>) -> Result<Option<i64>> {
        self.insert(n).map(|(id, blocked)| (!blocked).then_some(id))
    }

    fn delete_job(&mut self, id: i64) -> Result<Option<Job>> {
        let conn = self.conn();
        let deleted = first(
            conn,
            &format!("DELETE FROM repl_jobs WHERE id = ?1 RETURNING {JOB_COLS}, blocked"),
            &[&id],
            |r| Ok((rows::job(r)?, r.flag(BLOCKED_AFTER_JOB_COLS)?)),
        )?;
        let Some((j, blocked)) = deleted else { return Ok(None) };
        keep_books(conn, &j, Bookkeeping::of_removal(&j, blocked))?;
        Ok(Some(j))
    }

    fn update_job(&mut self, j: &Job) -> Result<()> {
        let conn = self.conn();
        let Some(old) = self.get_job(j.id)? else { return Ok(()) };
        let was_head = old.state == JobState::Pending && !blocked_of(conn, j.id)?;
        let blocked = blocked_after_update(old.state, was_head, j.state, || key_has_pending(conn, j, j.id))?;
        conn.prepare_cached(
            "UPDATE repl_jobs SET state = ?2, attempts = ?3, next_attempt_us = ?4, last_error = ?5, progress = ?6, \
             since_us = ?7, backfill_id = ?8, blocked = ?9 WHERE id = ?1",
        )?
        .execute(params![
            j.id,
            j.state.code(),
            i64::from(j.attempts),
            j.next_attempt_us,
            j.last_error,
            j.progress,
            j.since_us,
            j.backfill_id,
            i64::from(blocked),
        ])?;
        keep_books(conn, &old, Bookkeeping::of_update(&old, was_head, j))
    }

    fn insert_backfill(&mut self, b: &Backfill) -> Result<i64> {
        let conn = self.conn();
        conn.prepare_cached(
            "INSERT INTO backfills (fmt, bucket, rule_id, prefix, status_filter, older_than_us, state, cursor_key, cursor_mtime, \
             cursor_vid, total_versions, total_bytes, scanned_versions, scanned_bytes, enqueued_versions, done_versions, done_bytes, \
             failed_versions, created_us, updated_us, finished_us) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
        )?
        .execute(rusqlite::params_from_iter(backfill_values(b)))?;
        Ok(conn.last_insert_rowid())
    }

    fn update_backfill(&mut self, b: &Backfill, was: BackfillState) -> Result<bool> {
        let mut values = backfill_values(b);
        values.extend([Value::from(b.id), Value::from(was.as_str().to_owned())]);
        let n = self
            .conn()
            .prepare_cached(
                "UPDATE backfills SET fmt = ?1, bucket = ?2, rule_id = ?3, prefix = ?4, status_filter = ?5, \
                 older_than_us = ?6, state = ?7, cursor_key = ?8, cursor_mtime = ?9, cursor_vid = ?10, total_versions = ?11, \
                 total_bytes = ?12, scanned_versions = ?13, scanned_bytes = ?14, enqueued_versions = ?15, \
                 done_versions = max(done_versions, ?16), done_bytes = max(done_bytes, ?17), failed_versions = max(failed_versions, ?18), \
                 created_us = ?19, updated_us = ?20, finished_us = ?21 WHERE id = ?22 AND state = ?23",
            )?
            .execute(rusqlite::params_from_iter(values))?;
        Ok(n == 1)
    }

    fn set_backfill_state(&mut self, id: i64, from: &[BackfillState], to: BackfillState, now_us: i64) -> Result<bool> {
        // The names are this build's own constants, not input.
        let from = from.iter().map(|s| format!("'{}'", s.as_str())).collect::<Vec<_>>().join(", ");
        let n = self
            .conn()
            .prepare_cached(&format!(
                "UPDATE backfills SET state = ?2, updated_us = ?3, finished_us = CASE WHEN ?4 THEN ?3 ELSE finished_us END \
                 WHERE id = ?1 AND state IN ({from})"
            ))?
            .execute(params![id, to.as_str(), now_us, to.ends()])?;
        Ok(n == 1)
    }

    fn backfill_progress(&mut self, id: i64, done: u64, bytes: u64, failed: u64) -> Result<()> {
        let conn = self.conn();
        conn.prepare_cached(
            "UPDATE backfills SET done_versions = done_versions + ?2, done_bytes = done_bytes + ?3, failed_versions = failed_versions + ?4 WHERE id = ?1",
        )?
        .execute(params![id, to_i64(done), to_i64(bytes), to_i64(failed)])?;
        Ok(())
    }

    fn add_event(&mut self, time_us: i64, bucket: &str, rule_id: &str, kind: &str, detail: &str) -> Result<i64> {
        let conn = self.conn();
        conn.prepare_cached("INSERT INTO events (fmt, time_us, bucket, rule_id, kind, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?
            .execute(params![FORMAT_VERSION, time_us, bucket, rule_id, kind, detail])?;
        Ok(conn.last_insert_rowid())
    }
}

impl SqliteWriteTx<'_> {
    /// Inserts a job (see [`OutboxWrites::insert_job`]); returns its id and whether it waits
    /// behind an earlier pending job of its destination and key.
    fn insert(&mut self, n: &NewJob<'_>) -> Result<(i64, bool)> {
        let conn = self.conn();
        let live = n.backfill_id.is_none();
        let job = n.recorded(0);
        let blocked = key_has_pending(conn, &job, 0)?;
        if blocked && live {
            // A live change must not wait behind backfill jobs that only run after every live one.
            conn.prepare_cached(
                "UPDATE repl_jobs SET priority = 0 WHERE peer = ?1 AND dest_bucket = ?2 AND bucket = ?3 AND key = ?4 \
                 AND state = 0 AND priority = 1",
            )?
            .execute(params![n.peer, n.dest_bucket, n.bucket, n.key.as_bytes()])?;
        }
        let opts = n.stored_opts()?;
        conn.prepare_cached(
            "INSERT INTO repl_jobs (fmt, bucket, key, version_id, op, peer, dest_bucket, rule_id, created_us, size, state, \
             attempts, next_attempt_us, last_error, progress, backfill_id, priority, blocked, live, since_us, opts) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, 0, 0, NULL, NULL, ?11, ?12, ?13, ?14, NULL, ?15)",
        )?
        .execute(params![
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
            i64::from(blocked),
            i64::from(live),
            opts,
        ])?;
        let id = conn.last_insert_rowid();
        keep_books(conn, &job, Bookkeeping::of_insert(n))?;
        Ok((id, blocked))
    }
}

/// Applies what a change of job `j`'s row does to its destination's counters (creating their
/// row) and to its key's order.
fn keep_books(conn: &Connection, j: &Job, b: Bookkeeping<'_>) -> Result<()> {
    if b.counts() {
        conn.prepare_cached(
            "INSERT INTO repl_dests (bucket, peer, dest_bucket, pending_ops, pending_bytes, failed_ops, last_error) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (bucket, peer, dest_bucket) DO UPDATE SET \
             pending_ops = pending_ops + ?4, pending_bytes = pending_bytes + ?5, failed_ops = failed_ops + ?6, \
             last_error = coalesce(?7, last_error)",
        )?
        .execute(params![j.bucket, j.peer, j.dest_bucket, b.pending, b.bytes, b.failed, b.error])?;
    }
    if b.unblock_next {
        unblock_next(conn, j)?;
    }
    Ok(())
}

/// True when a pending job other than `except` is queued for `j`'s destination and key.
fn key_has_pending(conn: &Connection, j: &Job, except: i64) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM repl_jobs WHERE peer = ?1 AND dest_bucket = ?2 AND bucket = ?3 AND key = ?4 AND state = 0 \
             AND id != ?5 LIMIT 1",
        )?
        .query_row(params![j.peer, j.dest_bucket, j.bucket, j.key.as_bytes(), except], |_| Ok(()))
        .optional()?
        .is_some())
}

/// The head of `j`'s destination and key left the pending set: the oldest waiting job runs next.
fn unblock_next(conn: &Connection, j: &Job) -> Result<()> {
    conn.prepare_cached(
        "UPDATE repl_jobs SET blocked = 0 WHERE id = (SELECT id FROM repl_jobs WHERE peer = ?1 AND dest_bucket = ?2 \
         AND bucket = ?3 AND key = ?4 AND state = 0 ORDER BY id LIMIT 1) AND blocked = 1",
    )?
    .execute(params![j.peer, j.dest_bucket, j.bucket, j.key.as_bytes()])?;
    Ok(())
}

fn blocked_of(conn: &Connection, id: i64) -> Result<bool> {
    Ok(conn.prepare_cached("SELECT blocked FROM repl_jobs WHERE id = ?1")?.query_row([id], |r| r.get::<_, i64>(0))? != 0)
}
