//! SQL of the replication tables (jobs, delivery records, per-destination counters,
//! backfills, events), used by the SQLite read and write transactions.
//!
//! The job rows keep three derived facts up to date as they change, in the same statement
//! sequence (so in the same transaction):
//! - `blocked`: per (peer, dest_bucket, bucket, key) exactly one pending job is unblocked (the
//!   head); the rest wait. A job that leaves the pending set (delivered, dropped, failed)
//!   unblocks the oldest waiting one.
//! - `repl_dests`: pending operations and bytes and failed operations per (source bucket,
//!   destination), plus the last error seen there.
//! - priority: a live job recorded behind waiting backfill jobs of its key promotes them.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::sqlite::{check_fmt, collect, first, key_string, limit_i64, to_i64, to_u64};
use crate::error::Result;
use crate::model::FORMAT_VERSION;
use crate::replication::{Backfill, DestStats, Event, Job, JobOp, JobOptions, JobState, NewJob};

pub(super) const SCHEMA: &str = r"
CREATE TABLE IF NOT EXISTS backfills (
    id INTEGER PRIMARY KEY AUTOINCREMENT, fmt INTEGER NOT NULL, bucket TEXT NOT NULL, rule_id TEXT,
    prefix TEXT NOT NULL, status_filter TEXT NOT NULL, older_than_us INTEGER, state TEXT NOT NULL,
    cursor_key BLOB, cursor_mtime INTEGER, cursor_vid TEXT,
    total_versions INTEGER NOT NULL, total_bytes INTEGER NOT NULL,
    scanned_versions INTEGER NOT NULL, scanned_bytes INTEGER NOT NULL, enqueued_versions INTEGER NOT NULL,
    done_versions INTEGER NOT NULL, done_bytes INTEGER NOT NULL, failed_versions INTEGER NOT NULL,
    created_us INTEGER NOT NULL, updated_us INTEGER NOT NULL, finished_us INTEGER
);
CREATE INDEX IF NOT EXISTS backfills_bucket ON backfills (bucket, id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, fmt INTEGER NOT NULL, time_us INTEGER NOT NULL,
    bucket TEXT NOT NULL, rule_id TEXT NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_bucket ON events (bucket, id);
CREATE INDEX IF NOT EXISTS repl_jobs_backfill ON repl_jobs (backfill_id, state);
";

/// Schema version 2: delivery per (version, destination), per-destination counters and the
/// outbox columns that make dispatch and status independent of the backlog. Run once, in one
/// transaction, on a version-1 database (new databases are created at version 1 and migrated).
pub(super) const MIGRATE_TO_2: &str = r"
ALTER TABLE repl_jobs ADD COLUMN blocked INTEGER NOT NULL DEFAULT 0;
ALTER TABLE repl_jobs ADD COLUMN live INTEGER NOT NULL DEFAULT 1;
ALTER TABLE repl_jobs ADD COLUMN since_us INTEGER;
ALTER TABLE repl_jobs ADD COLUMN opts TEXT;
ALTER TABLE buckets ADD COLUMN replica_sources TEXT;
UPDATE repl_jobs SET live = (backfill_id IS NULL);
UPDATE repl_jobs SET blocked = EXISTS (
    SELECT 1 FROM repl_jobs e WHERE e.peer = repl_jobs.peer AND e.dest_bucket = repl_jobs.dest_bucket
    AND e.bucket = repl_jobs.bucket AND e.key = repl_jobs.key AND e.state = 0 AND e.id < repl_jobs.id
) WHERE state = 0;
CREATE TABLE repl_delivered (vrow INTEGER NOT NULL, dest TEXT NOT NULL, PRIMARY KEY (vrow, dest)) WITHOUT ROWID;
CREATE TABLE repl_dests (
    bucket TEXT NOT NULL, peer TEXT NOT NULL, dest_bucket TEXT NOT NULL,
    pending_ops INTEGER NOT NULL, pending_bytes INTEGER NOT NULL, failed_ops INTEGER NOT NULL, last_error TEXT,
    PRIMARY KEY (bucket, peer, dest_bucket)
) WITHOUT ROWID;
INSERT INTO repl_dests (bucket, peer, dest_bucket, pending_ops, pending_bytes, failed_ops, last_error)
    SELECT bucket, peer, dest_bucket, sum(state = 0), coalesce(sum(CASE WHEN state = 0 THEN size ELSE 0 END), 0),
           sum(state = 1), NULL
    FROM repl_jobs GROUP BY bucket, peer, dest_bucket;
DROP INDEX IF EXISTS repl_jobs_peer;
DROP INDEX IF EXISTS repl_jobs_key;
DROP INDEX IF EXISTS repl_jobs_rule;
";

/// Indexes of schema version 2 (created after the migration).
pub(super) const INDEXES: &str = r"
CREATE INDEX IF NOT EXISTS repl_jobs_run ON repl_jobs (peer, dest_bucket, state, blocked, priority, next_attempt_us, id);
CREATE INDEX IF NOT EXISTS repl_jobs_key2 ON repl_jobs (peer, dest_bucket, bucket, key, state, id);
CREATE INDEX IF NOT EXISTS repl_jobs_live ON repl_jobs (bucket, peer, dest_bucket, live, created_us);
";

const JOB_COLS: &str = "id, fmt, bucket, key, version_id, op, peer, dest_bucket, rule_id, created_us, size, state, attempts, \
                        next_attempt_us, last_error, progress, backfill_id, live, since_us, opts";

fn job_from_row(r: &Row<'_>) -> Result<Job> {
    check_fmt(r.get(1)?)?;
    let opts: Option<String> = r.get(19)?;
    Ok(Job {
        id: r.get(0)?,
        bucket: r.get(2)?,
        key: key_string(r.get(3)?),
        version_id: r.get(4)?,
        op: JobOp::from_i64(r.get(5)?),
        peer: r.get(6)?,
        dest_bucket: r.get(7)?,
        rule_id: r.get(8)?,
        created_us: r.get(9)?,
        size: to_u64(r.get(10)?),
        state: if r.get::<_, i64>(11)? == 1 { JobState::Failed } else { JobState::Pending },
        attempts: u32::try_from(r.get::<_, i64>(12)?).unwrap_or(u32::MAX),
        next_attempt_us: r.get(13)?,
        last_error: r.get(14)?,
        progress: r.get(15)?,
        backfill_id: r.get(16)?,
        live: r.get::<_, i64>(17)? != 0,
        since_us: r.get(18)?,
        opts: opts.map(|o| serde_json::from_str(&o)).transpose()?.unwrap_or_default(),
    })
}

fn state_i64(s: JobState) -> i64 {
    match s {
        JobState::Pending => 0,
        JobState::Failed => 1,
    }
}

pub(super) fn runnable_jobs(
    conn: &Connection,
    peer: &str,
    dest_bucket: &str,
    priority: i64,
    now_us: i64,
    exclude: &[i64],
    limit: usize,
) -> Result<Vec<Job>> {
    // In-flight jobs are due too and come first: over-fetch by their number, then drop them
    // here (keeps the statement cacheable). The index walks due jobs only, in due order.
    let want = limit_i64(limit.saturating_add(exclude.len()));
    let jobs = collect(
        conn,
        &format!(
            "SELECT {JOB_COLS} FROM repl_jobs WHERE peer = ?1 AND dest_bucket = ?2 AND state = 0 AND blocked = 0 \
             AND priority = ?3 AND next_attempt_us <= ?4 ORDER BY next_attempt_us, id LIMIT ?5"
        ),
        &[&peer, &dest_bucket, &priority, &now_us, &want],
        job_from_row,
    )?;
    Ok(jobs.into_iter().filter(|j| !exclude.contains(&j.id)).take(limit).collect())
}

pub(super) fn due_destinations(conn: &Connection, peer: &str) -> Result<Vec<String>> {
    let mut stmt = conn
        .prepare_cached("SELECT DISTINCT dest_bucket FROM repl_dests WHERE peer = ?1 AND pending_ops > 0 ORDER BY dest_bucket")?;
    let rows = stmt.query_map([peer], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub(super) fn peers_with_jobs(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT DISTINCT peer FROM repl_dests WHERE pending_ops > 0 ORDER BY peer")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub(super) fn pending_jobs_of_peer(conn: &Connection, peer: &str, limit: usize) -> Result<Vec<Job>> {
    collect(
        conn,
        &format!("SELECT {JOB_COLS} FROM repl_jobs WHERE peer = ?1 AND state = 0 ORDER BY id LIMIT ?2"),
        &[&peer, &limit_i64(limit)],
        job_from_row,
    )
}

pub(super) fn jobs_for_version(conn: &Connection, bucket: &str, key: &str, version_id: &str) -> Result<Vec<Job>> {
    collect(
        conn,
        &format!("SELECT {JOB_COLS} FROM repl_jobs WHERE bucket = ?1 AND key = ?2 AND version_id = ?3 ORDER BY id"),
        &[&bucket, &key.as_bytes(), &version_id],
        job_from_row,
    )
}

pub(super) fn get_job(conn: &Connection, id: i64) -> Result<Option<Job>> {
    first(conn, &format!("SELECT {JOB_COLS} FROM repl_jobs WHERE id = ?1"), &[&id], job_from_row)
}

pub(super) fn bucket_jobs(conn: &Connection, bucket: &str, after_id: i64, limit: usize) -> Result<Vec<Job>> {
    collect(
        conn,
        &format!("SELECT {JOB_COLS} FROM repl_jobs WHERE bucket = ?1 AND id > ?2 ORDER BY id LIMIT ?3"),
        &[&bucket, &after_id, &limit_i64(limit)],
        job_from_row,
    )
}

pub(super) fn failed_jobs(conn: &Connection, bucket: &str, limit: usize) -> Result<Vec<Job>> {
    collect(
        conn,
        &format!("SELECT {JOB_COLS} FROM repl_jobs WHERE bucket = ?1 AND state = 1 ORDER BY id LIMIT ?2"),
        &[&bucket, &limit_i64(limit)],
        job_from_row,
    )
}

pub(super) fn max_job_id(conn: &Connection) -> Result<i64> {
    Ok(conn.prepare_cached("SELECT coalesce(max(id), 0) FROM repl_jobs")?.query_row([], |r| r.get(0))?)
}

pub(super) fn dest_stats(conn: &Connection, bucket: &str) -> Result<Vec<DestStats>> {
    let mut stmt = conn.prepare_cached(
        "SELECT peer, dest_bucket, pending_ops, pending_bytes, failed_ops, last_error FROM repl_dests WHERE bucket = ?1 \
         ORDER BY peer, dest_bucket",
    )?;
    let mut rows = stmt.query([bucket])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(DestStats {
            peer: r.get(0)?,
            dest_bucket: r.get(1)?,
            pending_ops: to_u64(r.get(2)?),
            pending_bytes: to_u64(r.get(3)?),
            failed_ops: to_u64(r.get(4)?),
            oldest_undelivered_us: None,
            last_error: r.get(5)?,
        });
    }
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

pub(super) fn delivered_to(conn: &Connection, bucket: &str, key: &str, version_id: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.dest FROM repl_delivered d JOIN versions v ON d.vrow = v.id \
         WHERE v.bucket = ?1 AND v.key = ?2 AND v.version_id = ?3 ORDER BY d.dest",
    )?;
    let rows = stmt.query_map(params![bucket, key.as_bytes(), version_id], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub(super) fn newer_delivered(
    conn: &Connection,
    bucket: &str,
    key: &str,
    mtime_us: i64,
    version_id: &str,
    dest: &str,
) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM versions v JOIN repl_delivered d ON d.vrow = v.id WHERE v.bucket = ?1 AND v.key = ?2 \
             AND (v.mtime_us > ?3 OR (v.mtime_us = ?3 AND v.version_id > ?4)) AND d.dest = ?5 LIMIT 1",
        )?
        .query_row(params![bucket, key.as_bytes(), mtime_us, version_id, dest], |_| Ok(()))
        .optional()?
        .is_some())
}

pub(super) fn mark_delivered(conn: &Connection, bucket: &str, key: &str, version_id: &str, dest: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO repl_delivered (vrow, dest) SELECT id, ?4 FROM versions WHERE bucket = ?1 AND key = ?2 AND version_id = ?3",
    )?
    .execute(params![bucket, key.as_bytes(), version_id, dest])?;
    Ok(())
}

/// Forgets the delivery records of a version row that is being removed.
pub(super) fn forget_delivered(conn: &Connection, bucket: &str, key: &str, version_id: &str) -> Result<()> {
    conn.prepare_cached(
        "DELETE FROM repl_delivered WHERE vrow IN (SELECT id FROM versions WHERE bucket = ?1 AND key = ?2 AND version_id = ?3)",
    )?
    .execute(params![bucket, key.as_bytes(), version_id])?;
    Ok(())
}

/// Adds to a destination's counters (creating its row).
fn count(conn: &Connection, j: &Job, pending: i64, bytes: i64, failed: i64, error: Option<&str>) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO repl_dests (bucket, peer, dest_bucket, pending_ops, pending_bytes, failed_ops, last_error) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (bucket, peer, dest_bucket) DO UPDATE SET \
         pending_ops = pending_ops + ?4, pending_bytes = pending_bytes + ?5, failed_ops = failed_ops + ?6, \
         last_error = coalesce(?7, last_error)",
    )?
    .execute(params![j.bucket, j.peer, j.dest_bucket, pending, bytes, failed, error])?;
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

pub(super) fn insert_job(conn: &Connection, n: &NewJob<'_>) -> Result<i64> {
    let live = n.backfill_id.is_none();
    let probe = Job {
        bucket: n.bucket.to_owned(),
        key: n.key.to_owned(),
        peer: n.peer.to_owned(),
        dest_bucket: n.dest_bucket.to_owned(),
        ..blank_job()
    };
    let blocked = key_has_pending(conn, &probe, 0)?;
    if blocked && live {
        // A live change must not wait behind backfill jobs that only run after every live one.
        conn.prepare_cached(
            "UPDATE repl_jobs SET priority = 0 WHERE peer = ?1 AND dest_bucket = ?2 AND bucket = ?3 AND key = ?4 \
             AND state = 0 AND priority = 1",
        )?
        .execute(params![n.peer, n.dest_bucket, n.bucket, n.key.as_bytes()])?;
    }
    let opts = (*n.opts != JobOptions::default()).then(|| serde_json::to_string(n.opts)).transpose()?;
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
        n.op.to_i64(),
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
    count(conn, &probe, 1, to_i64(n.size), 0, None)?;
    Ok(id)
}

pub(super) fn delete_job(conn: &Connection, id: i64) -> Result<Option<Job>> {
    let deleted = first(
        conn,
        &format!("DELETE FROM repl_jobs WHERE id = ?1 RETURNING {JOB_COLS}, blocked"),
        &[&id],
        |r| Ok((job_from_row(r)?, r.get::<_, i64>(20)? != 0)),
    )?;
    let Some((j, blocked)) = deleted else { return Ok(None) };
    match j.state {
        JobState::Pending => {
            count(conn, &j, -1, -to_i64(j.size), 0, None)?;
            if !blocked {
                unblock_next(conn, &j)?;
            }
        }
        JobState::Failed => count(conn, &j, 0, 0, -1, None)?,
    }
    Ok(Some(j))
}

fn blank_job() -> Job {
    Job {
        id: 0,
        bucket: String::new(),
        key: String::new(),
        version_id: String::new(),
        op: JobOp::Put,
        peer: String::new(),
        dest_bucket: String::new(),
        rule_id: String::new(),
        opts: JobOptions::default(),
        created_us: 0,
        size: 0,
        state: JobState::Pending,
        live: true,
        attempts: 0,
        next_attempt_us: 0,
        since_us: None,
        last_error: None,
        progress: None,
        backfill_id: None,
    }
}

pub(super) fn update_job(conn: &Connection, j: &Job) -> Result<()> {
    let Some(old) = get_job(conn, j.id)? else { return Ok(()) };
    let was_head = old.state == JobState::Pending && !blocked_of(conn, j.id)?;
    let blocked = match (old.state, j.state) {
        (JobState::Pending, JobState::Pending) => !was_head,
        (_, JobState::Failed) => false,
        (JobState::Failed, JobState::Pending) => key_has_pending(conn, j, j.id)?,
    };
    conn.prepare_cached(
        "UPDATE repl_jobs SET state = ?2, attempts = ?3, next_attempt_us = ?4, last_error = ?5, progress = ?6, \
         since_us = ?7, backfill_id = ?8, blocked = ?9 WHERE id = ?1",
    )?
    .execute(params![
        j.id,
        state_i64(j.state),
        i64::from(j.attempts),
        j.next_attempt_us,
        j.last_error,
        j.progress,
        j.since_us,
        j.backfill_id,
        i64::from(blocked),
    ])?;
    let size = to_i64(old.size);
    let error = if j.last_error != old.last_error { j.last_error.as_deref() } else { None };
    match (old.state, j.state) {
        (JobState::Pending, JobState::Failed) => count(conn, &old, -1, -size, 1, error)?,
        (JobState::Failed, JobState::Pending) => count(conn, &old, 1, size, -1, error)?,
        _ if error.is_some() => count(conn, &old, 0, 0, 0, error)?,
        _ => {}
    }
    if was_head && j.state == JobState::Failed {
        unblock_next(conn, &old)?;
    }
    Ok(())
}

const BACKFILL_COLS: &str = "id, fmt, bucket, rule_id, prefix, status_filter, older_than_us, state, cursor_key, cursor_mtime, \
     cursor_vid, total_versions, total_bytes, scanned_versions, scanned_bytes, enqueued_versions, done_versions, done_bytes, \
     failed_versions, created_us, updated_us, finished_us";

fn backfill_from_row(r: &Row<'_>) -> Result<Backfill> {
    check_fmt(r.get(1)?)?;
    let cursor_mtime: Option<i64> = r.get(9)?;
    let cursor_vid: Option<String> = r.get(10)?;
    Ok(Backfill {
        id: r.get(0)?,
        bucket: r.get(2)?,
        rule_id: r.get(3)?,
        prefix: r.get(4)?,
        status_filter: r.get(5)?,
        older_than_us: r.get(6)?,
        state: r.get(7)?,
        cursor_key: r.get::<_, Option<Vec<u8>>>(8)?.map(key_string),
        cursor_version: cursor_mtime.zip(cursor_vid),
        total_versions: to_u64(r.get(11)?),
        total_bytes: to_u64(r.get(12)?),
        scanned_versions: to_u64(r.get(13)?),
        scanned_bytes: to_u64(r.get(14)?),
        enqueued_versions: to_u64(r.get(15)?),
        done_versions: to_u64(r.get(16)?),
        done_bytes: to_u64(r.get(17)?),
        failed_versions: to_u64(r.get(18)?),
        created_us: r.get(19)?,
        updated_us: r.get(20)?,
        finished_us: r.get(21)?,
    })
}

fn event_from_row(r: &Row<'_>) -> Result<Event> {
    check_fmt(r.get(1)?)?;
    Ok(Event { id: r.get(0)?, time_us: r.get(2)?, bucket: r.get(3)?, rule_id: r.get(4)?, kind: r.get(5)?, detail: r.get(6)? })
}

pub(super) fn committed_clock(conn: &Connection) -> Result<i64> {
    let v: Option<String> =
        conn.prepare_cached("SELECT v FROM settings WHERE k = 'clock'")?.query_row([], |r| r.get(0)).optional()?;
    Ok(v.and_then(|s| s.parse().ok()).unwrap_or(0))
}

pub(super) fn count_versions(conn: &Connection, bucket: &str, from: &[u8], to: Option<&[u8]>) -> Result<(u64, u64)> {
    let to = to.unwrap_or(&[0xff; 1100]);
    let (n, bytes): (i64, i64) = conn
        .prepare_cached("SELECT count(*), coalesce(sum(size), 0) FROM versions WHERE bucket = ?1 AND key >= ?2 AND key < ?3")?
        .query_row(params![bucket, from, to], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok((to_u64(n), to_u64(bytes)))
}

pub(super) fn get_backfill(conn: &Connection, id: i64) -> Result<Option<Backfill>> {
    first(
        conn,
        &format!("SELECT {BACKFILL_COLS} FROM backfills WHERE id = ?1"),
        &[&id],
        backfill_from_row,
    )
}

pub(super) fn list_backfills(conn: &Connection, bucket: Option<&str>) -> Result<Vec<Backfill>> {
    match bucket {
        Some(b) => collect(
            conn,
            &format!("SELECT {BACKFILL_COLS} FROM backfills WHERE bucket = ?1 ORDER BY id DESC"),
            &[&b],
            backfill_from_row,
        ),
        None => collect(
            conn,
            &format!("SELECT {BACKFILL_COLS} FROM backfills ORDER BY id DESC"),
            &[],
            backfill_from_row,
        ),
    }
}

pub(super) fn active_backfills(conn: &Connection) -> Result<Vec<Backfill>> {
    collect(
        conn,
        &format!("SELECT {BACKFILL_COLS} FROM backfills WHERE state IN ('counting', 'running') ORDER BY id"),
        &[],
        backfill_from_row,
    )
}

pub(super) fn backfill_pending(conn: &Connection, id: i64) -> Result<u64> {
    let n: i64 = conn
        .prepare_cached("SELECT count(*) FROM repl_jobs WHERE backfill_id = ?1 AND state = 0")?
        .query_row([id], |r| r.get(0))?;
    Ok(to_u64(n))
}

pub(super) fn events(conn: &Connection, bucket: &str, after_id: i64, limit: usize) -> Result<Vec<Event>> {
    collect(
        conn,
        "SELECT id, fmt, time_us, bucket, rule_id, kind, detail FROM events WHERE bucket = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        &[&bucket, &after_id, &limit_i64(limit)],
        event_from_row,
    )
}

pub(super) fn latest_events(
    conn: &Connection,
    bucket: &str,
    rule_id: Option<&str>,
    kind_prefix: Option<&str>,
    limit: usize,
) -> Result<Vec<Event>> {
    let like = kind_prefix.map(|p| format!("{}%", p.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
    collect(
        conn,
        "SELECT id, fmt, time_us, bucket, rule_id, kind, detail FROM events WHERE bucket = ?1 AND (?2 IS NULL OR rule_id = ?2) \
         AND (?3 IS NULL OR kind LIKE ?3 ESCAPE '\\') ORDER BY id DESC LIMIT ?4",
        &[&bucket, &rule_id, &like, &limit_i64(limit)],
        event_from_row,
    )
}

pub(super) fn put_backfill(conn: &Connection, b: &Backfill) -> Result<i64> {
    let (cm, cv) = match &b.cursor_version {
        Some((m, v)) => (Some(*m), Some(v.as_str())),
        None => (None, None),
    };
    // One upsert for both cases (id 0: a new row). Counters that completions update
    // concurrently (done, failed) never go back.
    conn.prepare_cached(
        "INSERT INTO backfills (id, fmt, bucket, rule_id, prefix, status_filter, older_than_us, state, cursor_key, cursor_mtime, \
         cursor_vid, total_versions, total_bytes, scanned_versions, scanned_bytes, enqueued_versions, done_versions, done_bytes, \
         failed_versions, created_us, updated_us, finished_us) \
         VALUES (?22, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21) \
         ON CONFLICT (id) DO UPDATE SET fmt = ?1, bucket = ?2, rule_id = ?3, prefix = ?4, status_filter = ?5, \
         older_than_us = ?6, state = ?7, cursor_key = ?8, cursor_mtime = ?9, cursor_vid = ?10, total_versions = ?11, \
         total_bytes = ?12, scanned_versions = ?13, scanned_bytes = ?14, enqueued_versions = ?15, \
         done_versions = max(done_versions, ?16), done_bytes = max(done_bytes, ?17), failed_versions = max(failed_versions, ?18), \
         created_us = ?19, updated_us = ?20, finished_us = ?21",
    )?
    .execute(params![
        FORMAT_VERSION,
        b.bucket,
        b.rule_id,
        b.prefix,
        b.status_filter,
        b.older_than_us,
        b.state,
        b.cursor_key.as_deref().map(str::as_bytes),
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
        b.finished_us,
        (b.id != 0).then_some(b.id),
    ])?;
    Ok(if b.id == 0 { conn.last_insert_rowid() } else { b.id })
}

pub(super) fn backfill_progress(conn: &Connection, id: i64, done: u64, bytes: u64, failed: u64) -> Result<()> {
    conn.prepare_cached(
        "UPDATE backfills SET done_versions = done_versions + ?2, done_bytes = done_bytes + ?3, failed_versions = failed_versions + ?4 WHERE id = ?1",
    )?
    .execute(params![id, to_i64(done), to_i64(bytes), to_i64(failed)])?;
    Ok(())
}

pub(super) fn add_event(conn: &Connection, time_us: i64, bucket: &str, rule_id: &str, kind: &str, detail: &str) -> Result<i64> {
    conn.prepare_cached("INSERT INTO events (fmt, time_us, bucket, rule_id, kind, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?
        .execute(params![FORMAT_VERSION, time_us, bucket, rule_id, kind, detail])?;
    Ok(conn.last_insert_rowid())
}
