//! SQL of the replication tables (jobs, backfills, events), used by the SQLite read and write
//! transactions.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::sqlite::{check_fmt, collect, first, key_string, limit_i64, to_i64, to_u64};
use crate::error::Result;
use crate::model::FORMAT_VERSION;
use crate::replication::{Backfill, Event, RuleStats};

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
CREATE INDEX IF NOT EXISTS repl_jobs_rule ON repl_jobs (bucket, rule_id, peer, dest_bucket, state, created_us);
CREATE INDEX IF NOT EXISTS repl_jobs_backfill ON repl_jobs (backfill_id, state);
";

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

pub(super) fn rule_stats(conn: &Connection, bucket: &str) -> Result<Vec<RuleStats>> {
    let mut stmt = conn.prepare_cached(
        "SELECT rule_id, peer, dest_bucket, \
                sum(state = 0), coalesce(sum(CASE WHEN state = 0 THEN size ELSE 0 END), 0), sum(state = 1), \
                min(CASE WHEN backfill_id IS NULL THEN created_us END) \
         FROM repl_jobs WHERE bucket = ?1 GROUP BY rule_id, peer, dest_bucket ORDER BY rule_id, peer, dest_bucket",
    )?;
    let mut rows = stmt.query([bucket])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(RuleStats {
            rule_id: r.get(0)?,
            peer: r.get(1)?,
            dest_bucket: r.get(2)?,
            pending_ops: to_u64(r.get(3)?),
            pending_bytes: to_u64(r.get(4)?),
            failed_ops: to_u64(r.get(5)?),
            oldest_undelivered_us: r.get(6)?,
            last_error: None,
        });
    }
    for s in &mut out {
        s.last_error = conn
            .prepare_cached(
                "SELECT last_error FROM repl_jobs WHERE bucket = ?1 AND rule_id = ?2 AND peer = ?3 AND dest_bucket = ?4 \
                 AND last_error IS NOT NULL ORDER BY state DESC, id DESC LIMIT 1",
            )?
            .query_row(params![bucket, s.rule_id, s.peer, s.dest_bucket], |r| r.get(0))
            .optional()?;
    }
    Ok(out)
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
