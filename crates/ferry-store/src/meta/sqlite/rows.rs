//! Rows to model types and back: the column list of each table next to the function that
//! reads a row of it, by column name, so a list and its reader cannot drift apart. A value a
//! reader does not know (a newer `fmt`, an unknown code, a negative size) is refused with
//! [`Error::UnknownFormat`], never guessed.

use rusqlite::{Connection, Row};

use crate::checksum::Algorithm;
use crate::error::{Error, Result};
use crate::model::*;
use crate::replication::{Backfill, DestStats, Event, Job, JobOp, JobState};

pub(super) const BUCKET_COLS: &str = "name, fmt, created_us, owner, versioning, acl, tagging, replication, replica_sources";
pub(super) const VERSION_COLS: &str = "bucket, key, version_id, fmt, mtime_us, is_latest, is_dm, size, etag, storage_class, \
                                       owner, repl_status, parts, multipart, attrs, inline_data";
/// What listings read of a version (never its inline body).
pub(super) const LIST_COLS: &str = "key, version_id, fmt, mtime_us, is_latest, is_dm, size, etag, storage_class, owner, attrs";
pub(super) const UPLOAD_COLS: &str = "upload_id, fmt, bucket, key, initiated_us, owner, storage_class, checksum_algorithm, attrs";
pub(super) const PART_COLS: &str = "upload_id, part_number, fmt, mtime_us, part";
pub(super) const JOB_COLS: &str = "id, fmt, bucket, key, version_id, op, peer, dest_bucket, rule_id, created_us, size, state, \
                                   attempts, next_attempt_us, last_error, progress, backfill_id, live, since_us, opts";
pub(super) const BACKFILL_COLS: &str = "id, fmt, bucket, rule_id, prefix, status_filter, older_than_us, state, cursor_key, \
     cursor_mtime, cursor_vid, total_versions, total_bytes, scanned_versions, scanned_bytes, enqueued_versions, done_versions, \
     done_bytes, failed_versions, created_us, updated_us, finished_us";
pub(super) const DEST_COLS: &str = "peer, dest_bucket, pending_ops, pending_bytes, failed_ops, last_error";
pub(super) const EVENT_COLS: &str = "id, fmt, time_us, bucket, rule_id, kind, detail";

/// Refuses a row written in a newer format.
fn check_fmt(r: &Row<'_>) -> Result<()> {
    let fmt: i64 = r.get("fmt")?;
    if fmt > FORMAT_VERSION { Err(Error::unknown("record format", fmt)) } else { Ok(()) }
}

fn json<T: serde::de::DeserializeOwned>(r: &Row<'_>, col: &str) -> Result<T> {
    Ok(serde_json::from_str(&r.get::<_, String>(col)?)?)
}

fn json_opt<T: serde::de::DeserializeOwned>(r: &Row<'_>, col: &str) -> Result<Option<T>> {
    r.get::<_, Option<String>>(col)?.map(|s| serde_json::from_str(&s)).transpose().map_err(Into::into)
}

fn flag(r: &Row<'_>, col: &str) -> Result<bool> {
    Ok(r.get::<_, i64>(col)? != 0)
}

/// A count or size column (never negative in a database Ferry wrote).
fn count(r: &Row<'_>, col: &str) -> Result<u64> {
    to_u64(r.get(col)?)
}

/// A count read back (never negative in a database Ferry wrote).
pub(super) fn to_u64(v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::unknown("negative count", v))
}

/// A key column: keys are stored as bytes (S3 order) and were valid UTF-8 when written.
pub(super) fn key_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A count to store (saturating: no count reaches `i64::MAX`).
pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Runs a cached query and maps every row.
pub(super) fn collect<T>(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
    f: fn(&Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(f(r)?);
    }
    Ok(out)
}

/// Runs a cached query and maps its first row.
pub(super) fn first<T>(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
    f: fn(&Row<'_>) -> Result<T>,
) -> Result<Option<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    rows.next()?.map(f).transpose()
}

pub(super) fn bucket(r: &Row<'_>) -> Result<BucketRecord> {
    check_fmt(r)?;
    Ok(BucketRecord {
        name: r.get("name")?,
        created_us: r.get("created_us")?,
        owner: json(r, "owner")?,
        versioning: Versioning::try_from(r.get::<_, i64>("versioning")?)?,
        acl: json(r, "acl")?,
        tagging: json_opt(r, "tagging")?,
        replication: r.get("replication")?,
        replica_sources: json_opt(r, "replica_sources")?.unwrap_or_default(),
    })
}

pub(super) fn version(r: &Row<'_>) -> Result<VersionRecord> {
    let attrs: ObjectAttrs = json(r, "attrs")?;
    let e = entry(r, &attrs)?;
    let layout = match json_opt(r, "parts")? {
        Some(parts) => BodyLayout::Parts { parts, multipart: flag(r, "multipart")? },
        None => BodyLayout::Inline(r.get::<_, Option<Vec<u8>>>("inline_data")?.unwrap_or_default()),
    };
    let repl_status = match r.get::<_, Option<String>>("repl_status")? {
        Some(s) => Some(ReplStatus::parse(&s).ok_or_else(|| Error::unknown("replication status", s))?),
        None => None,
    };
    Ok(VersionRecord {
        bucket: r.get("bucket")?,
        key: e.key,
        version_id: e.version_id,
        mtime_us: e.mtime_us,
        is_latest: e.is_latest,
        delete_marker: e.delete_marker,
        size: e.size,
        etag: e.etag,
        storage_class: e.storage_class,
        owner: e.owner,
        repl_status,
        layout,
        attrs,
    })
}

/// What listings read of a version ([`LIST_COLS`]).
pub(super) fn list_entry(r: &Row<'_>) -> Result<ListEntry> {
    entry(r, &json(r, "attrs")?)
}

fn entry(r: &Row<'_>, attrs: &ObjectAttrs) -> Result<ListEntry> {
    check_fmt(r)?;
    Ok(ListEntry {
        key: key_string(r.get("key")?),
        version_id: r.get("version_id")?,
        mtime_us: r.get("mtime_us")?,
        is_latest: flag(r, "is_latest")?,
        delete_marker: flag(r, "is_dm")?,
        size: count(r, "size")?,
        etag: r.get("etag")?,
        storage_class: r.get("storage_class")?,
        owner: json(r, "owner")?,
        checksum_algorithms: attrs.checksums.values.keys().copied().collect(),
    })
}

pub(super) fn upload(r: &Row<'_>) -> Result<UploadRecord> {
    check_fmt(r)?;
    Ok(UploadRecord {
        upload_id: r.get("upload_id")?,
        bucket: r.get("bucket")?,
        key: key_string(r.get("key")?),
        initiated_us: r.get("initiated_us")?,
        owner: json(r, "owner")?,
        storage_class: r.get("storage_class")?,
        checksum_algorithm: match r.get::<_, Option<String>>("checksum_algorithm")? {
            Some(a) => Some(Algorithm::parse(&a).ok_or_else(|| Error::unknown("checksum algorithm", a))?),
            None => None,
        },
        attrs: json(r, "attrs")?,
    })
}

pub(super) fn part(r: &Row<'_>) -> Result<PartRecord> {
    check_fmt(r)?;
    let number: i64 = r.get("part_number")?;
    Ok(PartRecord {
        upload_id: r.get("upload_id")?,
        part_number: u32::try_from(number).map_err(|_| Error::unknown("part number", number))?,
        mtime_us: r.get("mtime_us")?,
        part: json(r, "part")?,
    })
}

pub(super) fn job(r: &Row<'_>) -> Result<Job> {
    check_fmt(r)?;
    Ok(Job {
        id: r.get("id")?,
        bucket: r.get("bucket")?,
        key: key_string(r.get("key")?),
        version_id: r.get("version_id")?,
        op: JobOp::try_from(r.get::<_, i64>("op")?)?,
        peer: r.get("peer")?,
        dest_bucket: r.get("dest_bucket")?,
        rule_id: r.get("rule_id")?,
        created_us: r.get("created_us")?,
        size: count(r, "size")?,
        state: JobState::try_from(r.get::<_, i64>("state")?)?,
        attempts: u32::try_from(r.get::<_, i64>("attempts")?).unwrap_or(u32::MAX),
        next_attempt_us: r.get("next_attempt_us")?,
        last_error: r.get("last_error")?,
        progress: r.get("progress")?,
        backfill_id: r.get("backfill_id")?,
        live: flag(r, "live")?,
        since_us: r.get("since_us")?,
        opts: json_opt(r, "opts")?.unwrap_or_default(),
    })
}

pub(super) fn backfill(r: &Row<'_>) -> Result<Backfill> {
    check_fmt(r)?;
    let cursor_mtime: Option<i64> = r.get("cursor_mtime")?;
    let cursor_vid: Option<String> = r.get("cursor_vid")?;
    Ok(Backfill {
        id: r.get("id")?,
        bucket: r.get("bucket")?,
        rule_id: r.get("rule_id")?,
        prefix: r.get("prefix")?,
        status_filter: r.get::<_, String>("status_filter")?.parse()?,
        older_than_us: r.get("older_than_us")?,
        state: r.get::<_, String>("state")?.parse()?,
        cursor_key: r.get::<_, Option<Vec<u8>>>("cursor_key")?.map(key_string),
        cursor_version: cursor_mtime.zip(cursor_vid),
        total_versions: count(r, "total_versions")?,
        total_bytes: count(r, "total_bytes")?,
        scanned_versions: count(r, "scanned_versions")?,
        scanned_bytes: count(r, "scanned_bytes")?,
        enqueued_versions: count(r, "enqueued_versions")?,
        done_versions: count(r, "done_versions")?,
        done_bytes: count(r, "done_bytes")?,
        failed_versions: count(r, "failed_versions")?,
        created_us: r.get("created_us")?,
        updated_us: r.get("updated_us")?,
        finished_us: r.get("finished_us")?,
    })
}

pub(super) fn event(r: &Row<'_>) -> Result<Event> {
    check_fmt(r)?;
    Ok(Event {
        id: r.get("id")?,
        time_us: r.get("time_us")?,
        bucket: r.get("bucket")?,
        rule_id: r.get("rule_id")?,
        kind: r.get("kind")?,
        detail: r.get("detail")?,
    })
}

/// A destination's counters (its oldest undelivered job is looked up separately).
pub(super) fn dest_stats(r: &Row<'_>) -> Result<DestStats> {
    Ok(DestStats {
        peer: r.get("peer")?,
        dest_bucket: r.get("dest_bucket")?,
        pending_ops: count(r, "pending_ops")?,
        pending_bytes: count(r, "pending_bytes")?,
        failed_ops: count(r, "failed_ops")?,
        oldest_undelivered_us: None,
        last_error: r.get("last_error")?,
    })
}
