//! Rows to model types, for every backend: the column list of each table next to the function
//! that reads a row of it, by column name ([`col!`] finds a name's position in the list when
//! the crate is built, so a list and its reader cannot drift apart, and reading costs no
//! lookup). A backend's row type gives typed cells ([`Cells`]); the columns have the same names
//! and order in every backend. A value a reader does not know (a newer `fmt`, an unknown code,
//! a negative size) is refused with [`Error::UnknownFormat`], never guessed.

use crate::checksum::Algorithm;
use crate::error::{Error, Result};
use crate::model::*;
use crate::replication::{Backfill, DestStats, Event, Job, JobOp, JobState};

pub(crate) const BUCKET_COLS: &str =
    "name, fmt, created_us, owner, versioning, acl, tagging, replication, replica_sources, config";
pub(crate) const VERSION_COLS: &str = "bucket, key, version_id, fmt, mtime_us, is_latest, is_dm, size, etag, storage_class, \
                                       owner, repl_status, parts, multipart, attrs, inline_data";
/// What listings read of a version (never its inline body).
pub(crate) const LIST_COLS: &str = "key, version_id, fmt, mtime_us, is_latest, is_dm, size, etag, storage_class, owner, attrs";
pub(crate) const UPLOAD_COLS: &str = "upload_id, fmt, bucket, key, initiated_us, owner, storage_class, checksum_algorithm, attrs";
pub(crate) const PART_COLS: &str = "upload_id, part_number, fmt, mtime_us, part";
pub(crate) const JOB_COLS: &str = "id, fmt, bucket, key, version_id, op, peer, dest_bucket, rule_id, created_us, size, state, \
                                   attempts, next_attempt_us, last_error, progress, backfill_id, live, since_us, opts";
pub(crate) const BACKFILL_COLS: &str = "id, fmt, bucket, rule_id, prefix, status_filter, older_than_us, state, cursor_key, \
     cursor_mtime, cursor_vid, total_versions, total_bytes, scanned_versions, scanned_bytes, enqueued_versions, done_versions, \
     done_bytes, failed_versions, created_us, updated_us, finished_us";
pub(crate) const DEST_COLS: &str = "peer, dest_bucket, pending_ops, pending_bytes, failed_ops, last_error";
pub(crate) const EVENT_COLS: &str = "id, fmt, time_us, bucket, rule_id, kind, detail";

/// The position of column `name` in the column list `cols`, for [`col!`]: evaluated when
/// the crate is built, so a name missing from its list fails the build.
pub(crate) const fn col(cols: &str, name: &str) -> usize {
    let (c, n) = (cols.as_bytes(), name.as_bytes());
    let (mut i, mut index) = (0, 0);
    loop {
        while i < c.len() && c[i] == b' ' {
            i += 1;
        }
        let start = i;
        while i < c.len() && c[i] != b',' && c[i] != b' ' {
            i += 1;
        }
        if i - start == n.len() {
            let mut j = 0;
            while j < n.len() && c[start + j] == n[j] {
                j += 1;
            }
            if j == n.len() {
                return index;
            }
        }
        while i < c.len() && c[i] == b' ' {
            i += 1;
        }
        assert!(i < c.len(), "no such column in the list");
        i += 1;
        index += 1;
    }
}

/// How many columns a column list has.
pub(crate) const fn col_count(cols: &str) -> usize {
    let c = cols.as_bytes();
    let (mut i, mut n) = (0, 1);
    while i < c.len() {
        if c[i] == b',' {
            n += 1;
        }
        i += 1;
    }
    n
}

/// The index of column `$name` in the list `$cols`, computed at build time.
macro_rules! col {
    ($cols:expr, $name:literal) => {{
        const I: usize = col($cols, $name);
        I
    }};
}

/// Where a version's listing fields are in a row of [`VERSION_COLS`] or [`LIST_COLS`].
struct EntryCols {
    fmt: usize,
    key: usize,
    version_id: usize,
    mtime_us: usize,
    is_latest: usize,
    is_dm: usize,
    size: usize,
    etag: usize,
    storage_class: usize,
    owner: usize,
}

const fn entry_cols(cols: &str) -> EntryCols {
    EntryCols {
        fmt: col(cols, "fmt"),
        key: col(cols, "key"),
        version_id: col(cols, "version_id"),
        mtime_us: col(cols, "mtime_us"),
        is_latest: col(cols, "is_latest"),
        is_dm: col(cols, "is_dm"),
        size: col(cols, "size"),
        etag: col(cols, "etag"),
        storage_class: col(cols, "storage_class"),
        owner: col(cols, "owner"),
    }
}

const VERSION_ENTRY: EntryCols = entry_cols(VERSION_COLS);
const LIST_ENTRY: EntryCols = entry_cols(LIST_COLS);

/// A row's cells by position, typed: what a backend's row type gives the readers here. Counts,
/// times and codes are 64-bit integers in every backend; flags are the backend's booleans.
pub(crate) trait Cells {
    fn int(&self, i: usize) -> Result<i64>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>>;
    fn text(&self, i: usize) -> Result<String>;
    fn opt_text(&self, i: usize) -> Result<Option<String>>;
    fn bytes(&self, i: usize) -> Result<Vec<u8>>;
    fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>>;
    fn flag(&self, i: usize) -> Result<bool>;
}

/// Refuses a row written in a newer format.
fn check_fmt(r: &dyn Cells, fmt: usize) -> Result<()> {
    let fmt = r.int(fmt)?;
    if fmt > FORMAT_VERSION { Err(Error::unknown("record format", fmt)) } else { Ok(()) }
}

fn json<T: serde::de::DeserializeOwned>(r: &dyn Cells, col: usize) -> Result<T> {
    Ok(serde_json::from_str(&r.text(col)?)?)
}

fn json_opt<T: serde::de::DeserializeOwned>(r: &dyn Cells, col: usize) -> Result<Option<T>> {
    r.opt_text(col)?.map(|s| serde_json::from_str(&s)).transpose().map_err(Into::into)
}

/// A count or size column (never negative in a database Ferry wrote).
fn count(r: &dyn Cells, col: usize) -> Result<u64> {
    to_u64(r.int(col)?)
}

/// A count read back (never negative in a database Ferry wrote).
pub(crate) fn to_u64(v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::unknown("negative count", v))
}

/// A key column: keys are stored as bytes (S3 order) and were valid UTF-8 when written.
pub(crate) fn key_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A count to store (saturating: no count reaches `i64::MAX`).
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

pub(crate) fn bucket(r: &dyn Cells) -> Result<BucketRecord> {
    macro_rules! c {
        ($name:literal) => {
            col!(BUCKET_COLS, $name)
        };
    }
    check_fmt(r, c!("fmt"))?;
    Ok(BucketRecord {
        name: r.text(c!("name"))?,
        created_us: r.int(c!("created_us"))?,
        owner: json(r, c!("owner"))?,
        versioning: Versioning::try_from(r.int(c!("versioning"))?)?,
        acl: json(r, c!("acl"))?,
        tagging: json_opt(r, c!("tagging"))?,
        replication: r.opt_text(c!("replication"))?,
        replica_sources: json_opt(r, c!("replica_sources"))?.unwrap_or_default(),
        config: json_opt(r, c!("config"))?.unwrap_or_default(),
    })
}

pub(crate) fn version(r: &dyn Cells) -> Result<VersionRecord> {
    macro_rules! c {
        ($name:literal) => {
            col!(VERSION_COLS, $name)
        };
    }
    let attrs: ObjectAttrs = json(r, c!("attrs"))?;
    let e = entry(r, None, &VERSION_ENTRY)?;
    let layout = match json_opt(r, c!("parts"))? {
        Some(parts) => BodyLayout::Parts { parts, multipart: r.flag(c!("multipart"))? },
        None => BodyLayout::Inline(r.opt_bytes(c!("inline_data"))?.unwrap_or_default()),
    };
    let repl_status = match r.opt_text(c!("repl_status"))? {
        // SQLite pads it (`sqlite::rows::stored_status`).
        Some(s) => Some(ReplStatus::parse(s.trim_end()).ok_or_else(|| Error::unknown("replication status", s))?),
        None => None,
    };
    Ok(VersionRecord {
        bucket: r.text(c!("bucket"))?,
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
pub(crate) fn list_entry(r: &dyn Cells) -> Result<ListEntry> {
    entry(r, Some(&json(r, col!(LIST_COLS, "attrs"))?), &LIST_ENTRY)
}

/// The listing fields of a version row; the checksum algorithms only when `attrs` is given (a
/// whole version record does without them).
fn entry(r: &dyn Cells, attrs: Option<&ObjectAttrs>, c: &EntryCols) -> Result<ListEntry> {
    check_fmt(r, c.fmt)?;
    Ok(ListEntry {
        key: key_string(r.bytes(c.key)?),
        version_id: r.text(c.version_id)?,
        mtime_us: r.int(c.mtime_us)?,
        is_latest: r.flag(c.is_latest)?,
        delete_marker: r.flag(c.is_dm)?,
        size: count(r, c.size)?,
        etag: r.text(c.etag)?,
        storage_class: r.opt_text(c.storage_class)?,
        owner: json(r, c.owner)?,
        checksum_algorithms: attrs.map(|a| a.checksums.values.keys().copied().collect()).unwrap_or_default(),
    })
}

pub(crate) fn upload(r: &dyn Cells) -> Result<UploadRecord> {
    macro_rules! c {
        ($name:literal) => {
            col!(UPLOAD_COLS, $name)
        };
    }
    check_fmt(r, c!("fmt"))?;
    Ok(UploadRecord {
        upload_id: r.text(c!("upload_id"))?,
        bucket: r.text(c!("bucket"))?,
        key: key_string(r.bytes(c!("key"))?),
        initiated_us: r.int(c!("initiated_us"))?,
        owner: json(r, c!("owner"))?,
        storage_class: r.opt_text(c!("storage_class"))?,
        checksum_algorithm: match r.opt_text(c!("checksum_algorithm"))? {
            Some(a) => Some(Algorithm::parse(&a).ok_or_else(|| Error::unknown("checksum algorithm", a))?),
            None => None,
        },
        attrs: json(r, c!("attrs"))?,
    })
}

pub(crate) fn part(r: &dyn Cells) -> Result<PartRecord> {
    macro_rules! c {
        ($name:literal) => {
            col!(PART_COLS, $name)
        };
    }
    check_fmt(r, c!("fmt"))?;
    let number = r.int(c!("part_number"))?;
    Ok(PartRecord {
        upload_id: r.text(c!("upload_id"))?,
        part_number: u32::try_from(number).map_err(|_| Error::unknown("part number", number))?,
        mtime_us: r.int(c!("mtime_us"))?,
        part: json(r, c!("part"))?,
    })
}

pub(crate) fn job(r: &dyn Cells) -> Result<Job> {
    macro_rules! c {
        ($name:literal) => {
            col!(JOB_COLS, $name)
        };
    }
    check_fmt(r, c!("fmt"))?;
    Ok(Job {
        id: r.int(c!("id"))?,
        bucket: r.text(c!("bucket"))?,
        key: key_string(r.bytes(c!("key"))?),
        version_id: r.text(c!("version_id"))?,
        op: JobOp::try_from(r.int(c!("op"))?)?,
        peer: r.text(c!("peer"))?,
        dest_bucket: r.text(c!("dest_bucket"))?,
        rule_id: r.text(c!("rule_id"))?,
        created_us: r.int(c!("created_us"))?,
        size: count(r, c!("size"))?,
        state: JobState::try_from(r.int(c!("state"))?)?,
        attempts: u32::try_from(r.int(c!("attempts"))?).unwrap_or(u32::MAX),
        next_attempt_us: r.int(c!("next_attempt_us"))?,
        last_error: r.opt_text(c!("last_error"))?,
        progress: r.opt_text(c!("progress"))?,
        backfill_id: r.opt_int(c!("backfill_id"))?,
        live: r.flag(c!("live"))?,
        since_us: r.opt_int(c!("since_us"))?,
        opts: json_opt(r, c!("opts"))?.unwrap_or_default(),
        snapshot: None,
    })
}

pub(crate) fn backfill(r: &dyn Cells) -> Result<Backfill> {
    macro_rules! c {
        ($name:literal) => {
            col!(BACKFILL_COLS, $name)
        };
    }
    check_fmt(r, c!("fmt"))?;
    let cursor_mtime = r.opt_int(c!("cursor_mtime"))?;
    let cursor_vid = r.opt_text(c!("cursor_vid"))?;
    Ok(Backfill {
        id: r.int(c!("id"))?,
        bucket: r.text(c!("bucket"))?,
        rule_id: r.opt_text(c!("rule_id"))?,
        prefix: r.text(c!("prefix"))?,
        status_filter: r.text(c!("status_filter"))?.parse()?,
        older_than_us: r.opt_int(c!("older_than_us"))?,
        state: r.text(c!("state"))?.parse()?,
        cursor_key: r.opt_bytes(c!("cursor_key"))?.map(key_string),
        cursor_version: cursor_mtime.zip(cursor_vid),
        total_versions: count(r, c!("total_versions"))?,
        total_bytes: count(r, c!("total_bytes"))?,
        scanned_versions: count(r, c!("scanned_versions"))?,
        scanned_bytes: count(r, c!("scanned_bytes"))?,
        enqueued_versions: count(r, c!("enqueued_versions"))?,
        done_versions: count(r, c!("done_versions"))?,
        done_bytes: count(r, c!("done_bytes"))?,
        failed_versions: count(r, c!("failed_versions"))?,
        created_us: r.int(c!("created_us"))?,
        updated_us: r.int(c!("updated_us"))?,
        finished_us: r.opt_int(c!("finished_us"))?,
    })
}

pub(crate) fn event(r: &dyn Cells) -> Result<Event> {
    macro_rules! c {
        ($name:literal) => {
            col!(EVENT_COLS, $name)
        };
    }
    check_fmt(r, c!("fmt"))?;
    Ok(Event {
        id: r.int(c!("id"))?,
        time_us: r.int(c!("time_us"))?,
        bucket: r.text(c!("bucket"))?,
        rule_id: r.text(c!("rule_id"))?,
        kind: r.text(c!("kind"))?,
        detail: r.text(c!("detail"))?,
    })
}

/// A destination's counters (its oldest undelivered job is looked up separately).
pub(crate) fn dest_stats(r: &dyn Cells) -> Result<DestStats> {
    macro_rules! c {
        ($name:literal) => {
            col!(DEST_COLS, $name)
        };
    }
    Ok(DestStats {
        peer: r.text(c!("peer"))?,
        dest_bucket: r.text(c!("dest_bucket"))?,
        pending_ops: count(r, c!("pending_ops"))?,
        pending_bytes: count(r, c!("pending_bytes"))?,
        failed_ops: count(r, c!("failed_ops"))?,
        oldest_undelivered_us: None,
        last_error: r.opt_text(c!("last_error"))?,
    })
}
