//! The SQLite schema, and its migrations. Format version [`SCHEMA_VERSION`].
//!
//! # Tables
//! Objects:
//! - `settings(k, v)`: store-wide values: schema version, the commit clock's high-water mark.
//! - `buckets(name, fmt, created_us, owner, versioning, acl, tagging, replication,
//!   replica_sources, config)`; `config` is the JSON of the access settings (schema 4).
//! - `versions(id, bucket, key, version_id, fmt, mtime_us, is_latest, is_dm, size, etag,
//!   storage_class, owner, repl_status, parts, multipart, attrs, inline_data)`: one row per
//!   version or delete marker; `key` is a BLOB compared bytewise (S3 order); `inline_data` is
//!   last so scans that do not select it never read its overflow pages; `repl_status` is
//!   padded to one length so a status change rewrites the row in place (schema 6).
//! - `uploads(upload_id, ...)` and `parts(upload_id, part_number, ...)`: multipart uploads.
//! - `blobs(id)`: every blob file a committed record references.
//! - `garbage(id, due_us)`: released blob files, unlinked once due.
//! - `bucket_usage(bucket, versions, bytes)`: what each bucket holds (not delete markers),
//!   kept by the writes that add and remove versions (schema 3).
//!
//! Replication (what the rows mean: [`crate::replication`]):
//! - `repl_jobs`: the outbox, one row per (change, destination); `blocked` and `priority`
//!   order each destination's keys.
//! - `repl_delivered(vrow, dest)`: which destinations have a version (by `versions.id`).
//! - `repl_dests(bucket, peer, dest_bucket, ...)`: per-destination counters.
//! - `backfills`: scans with their cursor and counters.
//! - `events`: what operators are shown (RPO misses, verify results).
//!
//! JSON columns (`owner`, `acl`, `attrs`, `parts`, ...) hold the serde form of the model types;
//! the row's `fmt` says which format they are in.
//!
//! # Migrations
//! A database is created at version 1 and migrated step by step, each step in one
//! transaction: a crash in between leaves the previous version, migrated again at the next
//! start.

use rusqlite::{Connection, OptionalExtension};

use crate::error::{Error, Result};

const SCHEMA: &str = r"
CREATE TABLE IF NOT EXISTS settings (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS buckets (
    name TEXT PRIMARY KEY, fmt INTEGER NOT NULL, created_us INTEGER NOT NULL, owner TEXT NOT NULL,
    versioning INTEGER NOT NULL, acl TEXT NOT NULL, tagging TEXT, replication TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS versions (
    id INTEGER PRIMARY KEY,
    bucket TEXT NOT NULL, key BLOB NOT NULL, version_id TEXT NOT NULL,
    fmt INTEGER NOT NULL, mtime_us INTEGER NOT NULL, is_latest INTEGER NOT NULL, is_dm INTEGER NOT NULL,
    size INTEGER NOT NULL, etag TEXT NOT NULL, storage_class TEXT, owner TEXT NOT NULL, repl_status TEXT,
    parts TEXT, multipart INTEGER NOT NULL, attrs TEXT NOT NULL, inline_data BLOB
);
CREATE UNIQUE INDEX IF NOT EXISTS versions_id ON versions (bucket, key, version_id);
CREATE INDEX IF NOT EXISTS versions_by_age ON versions (bucket, key, mtime_us DESC, version_id DESC);
CREATE INDEX IF NOT EXISTS versions_current ON versions (bucket, key) WHERE is_latest = 1 AND is_dm = 0;
CREATE TABLE IF NOT EXISTS uploads (
    upload_id TEXT PRIMARY KEY, fmt INTEGER NOT NULL, bucket TEXT NOT NULL, key BLOB NOT NULL,
    initiated_us INTEGER NOT NULL, owner TEXT NOT NULL, storage_class TEXT, checksum_algorithm TEXT,
    attrs TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS uploads_by_key ON uploads (bucket, key, initiated_us, upload_id);
CREATE TABLE IF NOT EXISTS parts (
    upload_id TEXT NOT NULL, part_number INTEGER NOT NULL, fmt INTEGER NOT NULL, mtime_us INTEGER NOT NULL,
    part TEXT NOT NULL, PRIMARY KEY (upload_id, part_number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blobs (id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS garbage (id TEXT PRIMARY KEY, due_us INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS garbage_due ON garbage (due_us);
CREATE TABLE IF NOT EXISTS repl_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, fmt INTEGER NOT NULL,
    bucket TEXT NOT NULL, key BLOB NOT NULL, version_id TEXT NOT NULL, op INTEGER NOT NULL,
    peer TEXT NOT NULL, dest_bucket TEXT NOT NULL, rule_id TEXT NOT NULL, created_us INTEGER NOT NULL,
    size INTEGER NOT NULL, state INTEGER NOT NULL, attempts INTEGER NOT NULL, next_attempt_us INTEGER NOT NULL,
    last_error TEXT, progress TEXT, backfill_id INTEGER, priority INTEGER NOT NULL
);
";

const REPL_SCHEMA: &str = r"
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
";

/// Schema version 2: delivery per (version, destination), per-destination counters and the
/// outbox columns that make dispatch and status independent of the backlog. Run once, in one
/// transaction, on a version-1 database (new databases are created at version 1 and migrated).
const MIGRATE_TO_2: &str = r"
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

/// Schema version 3: per-bucket usage (versions that are not delete markers, and their bytes),
/// kept by the writes that add and remove versions; counted once here from the versions held.
const MIGRATE_TO_3: &str = r"
CREATE TABLE bucket_usage (bucket TEXT PRIMARY KEY, versions INTEGER NOT NULL, bytes INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO bucket_usage (bucket, versions, bytes)
    SELECT bucket, count(*), coalesce(sum(size), 0) FROM versions WHERE is_dm = 0 GROUP BY bucket;
";

/// Schema version 4: the bucket's access settings (policy, Block Public Access), one JSON
/// document; NULL when none is set.
const MIGRATE_TO_4: &str = r"
ALTER TABLE buckets ADD COLUMN config TEXT;
";

/// Schema version 5: no change of tables. Versions and buckets may now carry encryption at
/// rest (a wrapped data key; a default encryption) and Object Lock settings in their JSON
/// columns; a build that predates them would serve ciphertext as the object, and drop the
/// wrapped key (losing the body) when it rewrites a version's attributes. The bump makes such
/// a build refuse the database.
const MIGRATE_TO_5: &str = "";

/// Schema version 6: no change of tables. `versions.repl_status` is now stored padded to one
/// length (`rows::stored_status`); a build that predates it cannot read the padded names. Rows
/// written before keep their bare names until their status next changes.
const MIGRATE_TO_6: &str = "";

/// The outbox's indexes, made (and those they replace dropped) at every open, after the
/// migrations. Every index here is written by every job's insert and removal (but the partial
/// one, by backfill jobs only), so there are as few as the queries need:
/// - `repl_jobs_run`: a destination's runnable jobs, in order (dispatch);
/// - `repl_jobs_key3`: a key's jobs per destination (per-key order) and a version's jobs
///   (its status), by the `(bucket, key)` prefix;
/// - `repl_jobs_live`: the oldest live job per destination (the watermark);
/// - `repl_jobs_backfill2`: a backfill's pending jobs.
///
/// Dropped: `repl_jobs_peer` and `repl_jobs_key` (schema 1; until this build, made again at
/// every open after migration 2 had dropped them), `repl_jobs_version` and `repl_jobs_key2`
/// (one index, `repl_jobs_key3`, serves both), and the full `repl_jobs_backfill`.
const INDEXES: &str = r"
CREATE INDEX IF NOT EXISTS repl_jobs_run ON repl_jobs (peer, dest_bucket, state, blocked, priority, next_attempt_us, id);
CREATE INDEX IF NOT EXISTS repl_jobs_key3 ON repl_jobs (bucket, key, peer, dest_bucket, state, id);
CREATE INDEX IF NOT EXISTS repl_jobs_live ON repl_jobs (bucket, peer, dest_bucket, live, created_us);
CREATE INDEX IF NOT EXISTS repl_jobs_backfill2 ON repl_jobs (backfill_id, state) WHERE backfill_id IS NOT NULL;
DROP INDEX IF EXISTS repl_jobs_peer;
DROP INDEX IF EXISTS repl_jobs_key;
DROP INDEX IF EXISTS repl_jobs_key2;
DROP INDEX IF EXISTS repl_jobs_version;
DROP INDEX IF EXISTS repl_jobs_backfill;
";

/// The schema this build writes.
pub const SCHEMA_VERSION: i64 = 6;

/// Creates the tables of a new database, or migrates an older one to [`SCHEMA_VERSION`].
///
/// # Errors
/// Database errors, or a database written by a newer build.
pub(super) fn migrate(conn: &Connection) -> Result<()> {
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch(REPL_SCHEMA)?;
    let schema: Option<String> = conn.query_row("SELECT v FROM settings WHERE k = 'schema'", [], |r| r.get(0)).optional()?;
    let mut version = match schema.as_deref().map(str::parse::<i64>) {
        None => {
            conn.execute("INSERT INTO settings (k, v) VALUES ('schema', '1')", [])?;
            1
        }
        Some(Ok(v)) if v <= SCHEMA_VERSION => v,
        Some(Ok(v)) => return Err(Error::unknown("metadata schema", v)),
        Some(Err(_)) => return Err(Error::Other("settings.schema is not a number".into())),
    };
    while version < SCHEMA_VERSION {
        let step = match version {
            1 => MIGRATE_TO_2,
            2 => MIGRATE_TO_3,
            3 => MIGRATE_TO_4,
            4 => MIGRATE_TO_5,
            5 => MIGRATE_TO_6,
            _ => return Err(Error::Other(format!("no migration from schema {version}"))),
        };
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {step} UPDATE settings SET v = '{next}' WHERE k = 'schema'; COMMIT;",
            next = version + 1
        ))
        .inspect_err(|_| {
            let _ = conn.execute_batch("ROLLBACK");
        })?;
        version += 1;
        tracing::info!(schema = version, "metadata database migrated");
    }
    conn.execute_batch(INDEXES)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::{REPL_SCHEMA, SCHEMA};
    use crate::meta::sqlite::SqliteMeta;
    use crate::model::BucketUsage;

    /// A version-1 database with jobs is migrated in place: per-key order, counters and the
    /// live flag are derived from the jobs it holds, and each bucket's usage from its versions.
    #[tokio::test]
    async fn a_schema_1_database_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.execute_batch(REPL_SCHEMA).unwrap();
            conn.execute_batch(
                "INSERT INTO settings (k, v) VALUES ('schema', '1');
                 INSERT INTO buckets (name, fmt, created_us, owner, versioning, acl)
                 VALUES ('b', 1, 1, '{\"id\": \"u\", \"display_name\": \"u\"}', 1, '{\"grants\": []}');
                 INSERT INTO repl_jobs (fmt, bucket, key, version_id, op, peer, dest_bucket, rule_id, created_us, size, state,
                     attempts, next_attempt_us, last_error, progress, backfill_id, priority) VALUES
                 (1, 'b', X'6b', 'v1', 0, 'eu', 'd', 'r', 10, 100, 0, 0, 0, NULL, NULL, NULL, 0),
                 (1, 'b', X'6b', 'v2', 0, 'eu', 'd', 'r', 20, 50, 0, 0, 0, NULL, NULL, 3, 1),
                 (1, 'b', X'6c', 'v3', 0, 'eu', 'd', 'r', 30, 7, 1, 2, 0, 'AccessDenied', NULL, NULL, 0);
                 INSERT INTO versions (bucket, key, version_id, fmt, mtime_us, is_latest, is_dm, size, etag, owner, multipart, attrs)
                 VALUES ('b', X'6b', 'v1', 1, 10, 0, 0, 100, 'e', '{}', 0, '{}'),
                        ('b', X'6b', 'v2', 1, 20, 0, 0, 50, 'e', '{}', 0, '{}'),
                        ('b', X'6b', 'dm', 1, 25, 1, 1, 0, '', '{}', 0, '{}'),
                        ('c', X'6b', 'v1', 1, 10, 1, 0, 7, 'e', '{}', 0, '{}');",
            )
            .unwrap();
        }
        let meta = SqliteMeta::open(&path, None).unwrap();
        let runnable = meta.read(|r| r.runnable_jobs("eu", "d", 0, i64::MAX, &[], 10)).await.unwrap();
        assert_eq!(
            runnable.iter().map(|j| j.version_id.as_str()).collect::<Vec<_>>(),
            vec!["v1"],
            "v2 waits behind v1"
        );
        let all = meta.read(|r| r.bucket_jobs("b", 0, 10)).await.unwrap();
        assert_eq!(all.iter().map(|j| j.live).collect::<Vec<_>>(), vec![true, false, true]);
        let stats = meta.read(|r| r.dest_stats("b")).await.unwrap();
        assert_eq!((stats[0].pending_ops, stats[0].pending_bytes, stats[0].failed_ops), (2, 150, 1));
        assert_eq!(stats[0].oldest_undelivered_us, Some(10));
        let usage = meta.read(|r| Ok((r.bucket_usage("b")?, r.bucket_usage("c")?))).await.unwrap();
        assert_eq!(
            usage,
            (BucketUsage { versions: 2, bytes: 150 }, BucketUsage { versions: 1, bytes: 7 }),
            "counted once, delete markers aside"
        );
        let schema = meta.read(|r| r.get_setting("schema")).await.unwrap();
        assert_eq!(schema, Some(super::SCHEMA_VERSION.to_string()));
        let b = meta.read(|r| r.get_bucket("b")).await.unwrap().expect("the bucket of schema 1");
        assert!(b.replica_sources.is_empty() && b.config.is_empty(), "{b:?}");
    }

    fn job_indexes(conn: &Connection) -> Vec<String> {
        let mut stmt =
            conn.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'repl_jobs' ORDER BY name").unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    }

    /// The outbox has the indexes its queries need and no more, however often the database is
    /// opened: the schema-1 indexes migration 2 dropped were made again at every open, and
    /// cost every job's insert and removal two more index writes; a database that has them
    /// loses them at its next open.
    #[test]
    fn reopening_keeps_the_outbox_indexes_it_needs_and_drops_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let want = ["repl_jobs_backfill2", "repl_jobs_key3", "repl_jobs_live", "repl_jobs_run"];
        for _ in 0..2 {
            drop(SqliteMeta::open(&path, None).unwrap());
            assert_eq!(job_indexes(&Connection::open(&path).unwrap()), want);
        }
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE INDEX repl_jobs_peer ON repl_jobs (peer, state, priority, id);
                 CREATE INDEX repl_jobs_key ON repl_jobs (peer, bucket, key, state, id);
                 CREATE INDEX repl_jobs_key2 ON repl_jobs (peer, dest_bucket, bucket, key, state, id);
                 CREATE INDEX repl_jobs_version ON repl_jobs (bucket, key, version_id);
                 CREATE INDEX repl_jobs_backfill ON repl_jobs (backfill_id, state);",
            )
            .unwrap();
        drop(SqliteMeta::open(&path, None).unwrap());
        assert_eq!(job_indexes(&Connection::open(&path).unwrap()), want);
    }

    /// The outbox's statements on the write path and in dispatch (as in `outbox.rs`) search an
    /// index, never scan the jobs: with a backlog, a scan per job would be a scan per write.
    #[test]
    fn outbox_statements_search_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        drop(SqliteMeta::open(&path, None).unwrap());
        let conn = Connection::open(&path).unwrap();
        let statements = [
            // runnable_jobs
            (
                "SELECT * FROM repl_jobs WHERE peer = ?1 AND dest_bucket = ?2 AND state = 0 AND blocked = 0 \
              AND priority = ?3 AND next_attempt_us <= ?4 ORDER BY next_attempt_us, id LIMIT ?5",
                "repl_jobs_run",
            ),
            // jobs_for_version
            (
                "SELECT * FROM repl_jobs WHERE bucket = ?1 AND key = ?2 AND version_id = ?3 ORDER BY id",
                "repl_jobs_key3",
            ),
            // key_has_pending
            (
                "SELECT 1 FROM repl_jobs WHERE peer = ?1 AND dest_bucket = ?2 AND bucket = ?3 AND key = ?4 AND state = 0 \
              AND id != ?5 LIMIT 1",
                "repl_jobs_key3",
            ),
            // unblock_next
            (
                "UPDATE repl_jobs SET blocked = 0 WHERE id = (SELECT id FROM repl_jobs WHERE peer = ?1 AND dest_bucket = ?2 \
              AND bucket = ?3 AND key = ?4 AND state = 0 ORDER BY id LIMIT 1) AND blocked = 1",
                "repl_jobs_key3",
            ),
            // insert: a live job's key stops waiting behind backfill jobs
            (
                "UPDATE repl_jobs SET priority = 0 WHERE peer = ?1 AND dest_bucket = ?2 AND bucket = ?3 AND key = ?4 \
              AND state = 0 AND priority = 1",
                "repl_jobs_key3",
            ),
            // dest_stats: the watermark
            (
                "SELECT created_us FROM repl_jobs WHERE bucket = ?1 AND peer = ?2 AND dest_bucket = ?3 AND live = 1 \
              ORDER BY created_us LIMIT 1",
                "repl_jobs_live",
            ),
            // backfill_pending
            (
                "SELECT count(*) FROM repl_jobs WHERE backfill_id = ?1 AND state = 0",
                "repl_jobs_backfill2",
            ),
        ];
        for (sql, index) in statements {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            // Parameters left unbound (NULL): the plan does not depend on them.
            let mut rows = stmt.raw_query();
            let mut plan: Vec<String> = Vec::new();
            while let Some(r) = rows.next().unwrap() {
                plan.push(r.get(3).unwrap());
            }
            let jobs: Vec<&String> = plan.iter().filter(|l| l.contains("repl_jobs")).collect();
            assert!(!jobs.is_empty(), "{sql}: {plan:?}");
            for line in &jobs {
                let searched = line.starts_with("SEARCH repl_jobs USING") && !line.contains("AUTOMATIC");
                assert!(searched, "{sql}: {plan:?}");
            }
            assert!(jobs.iter().any(|l| l.contains(index)), "{sql}: {index} not used: {plan:?}");
        }
    }

    /// A database written by a newer build is refused, not guessed at.
    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        drop(SqliteMeta::open(&path, None).unwrap());
        Connection::open(&path).unwrap().execute("UPDATE settings SET v = '99' WHERE k = 'schema'", []).unwrap();
        let err = SqliteMeta::open(&path, None).err().expect("refused");
        assert!(matches!(err, crate::Error::UnknownFormat { .. }), "{err}");
    }
}
