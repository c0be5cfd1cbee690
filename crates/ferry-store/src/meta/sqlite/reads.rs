//! The object reads ([`ReadTx`]), for read snapshots and the write transaction alike: both
//! read through one connection ([`HasConn`]), so each query is written once.

use rusqlite::{Connection, OptionalExtension, params};

use super::rows::{self, BUCKET_COLS, LIST_COLS, PART_COLS, UPLOAD_COLS, VERSION_COLS, collect, first, limit_i64};
use crate::error::Result;
use crate::meta::{ReadTx, VersionCursor, scan_after_cursor};
use crate::model::{BucketRecord, BucketUsage, ListEntry, PartRecord, UploadRecord, VersionRecord};

/// A transaction that reads through one connection: a read snapshot, or the write transaction
/// (which sees its own uncommitted changes). Every such transaction gets the read queries.
pub(super) trait HasConn {
    fn conn(&self) -> &Connection;
}

impl<T: HasConn> ReadTx for T {
    fn get_bucket(&self, name: &str) -> Result<Option<BucketRecord>> {
        first(
            self.conn(),
            &format!("SELECT {BUCKET_COLS} FROM buckets WHERE name = ?1"),
            &[&name],
            rows::bucket,
        )
    }

    fn list_buckets(&self) -> Result<Vec<BucketRecord>> {
        collect(
            self.conn(),
            &format!("SELECT {BUCKET_COLS} FROM buckets ORDER BY name"),
            &[],
            rows::bucket,
        )
    }

    fn bucket_usage(&self, bucket: &str) -> Result<BucketUsage> {
        let row = self
            .conn()
            .prepare_cached("SELECT versions, bytes FROM bucket_usage WHERE bucket = ?1")?
            .query_row([bucket], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .optional()?;
        let (versions, bytes) = row.unwrap_or((0, 0));
        Ok(BucketUsage { versions: u64::try_from(versions).unwrap_or(0), bytes: u64::try_from(bytes).unwrap_or(0) })
    }

    fn get_version(&self, bucket: &str, key: &str, version_id: &str) -> Result<Option<VersionRecord>> {
        first(
            self.conn(),
            &format!("SELECT {VERSION_COLS} FROM versions WHERE bucket = ?1 AND key = ?2 AND version_id = ?3"),
            &[&bucket, &key.as_bytes(), &version_id],
            rows::version,
        )
    }

    fn get_latest(&self, bucket: &str, key: &str) -> Result<Option<VersionRecord>> {
        first(
            self.conn(),
            &format!(
                "SELECT {VERSION_COLS} FROM versions WHERE bucket = ?1 AND key = ?2 \
                 ORDER BY mtime_us DESC, version_id DESC LIMIT 1"
            ),
            &[&bucket, &key.as_bytes()],
            rows::version,
        )
    }

    fn scan_latest(&self, bucket: &str, from: &[u8], exclusive: bool, to: Option<&[u8]>, limit: usize) -> Result<Vec<ListEntry>> {
        let op = if exclusive { ">" } else { ">=" };
        let lim = limit_i64(limit);
        match to {
            Some(to) => collect(
                self.conn(),
                &format!(
                    "SELECT {LIST_COLS} FROM versions WHERE bucket = ?1 AND is_latest = 1 AND is_dm = 0 \
                     AND key {op} ?2 AND key < ?3 ORDER BY key LIMIT ?4"
                ),
                &[&bucket, &from, &to, &lim],
                rows::list_entry,
            ),
            None => collect(
                self.conn(),
                &format!(
                    "SELECT {LIST_COLS} FROM versions WHERE bucket = ?1 AND is_latest = 1 AND is_dm = 0 \
                     AND key {op} ?2 ORDER BY key LIMIT ?3"
                ),
                &[&bucket, &from, &lim],
                rows::list_entry,
            ),
        }
    }

    fn scan_versions(
        &self,
        bucket: &str,
        from: &[u8],
        cursor: &VersionCursor,
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<ListEntry>> {
        scan_after_cursor(
            from,
            cursor,
            limit,
            |k, m, v, lim| {
                collect(
                    self.conn(),
                    &format!(
                        "SELECT {LIST_COLS} FROM versions WHERE bucket = ?1 AND key = ?2 \
                         AND (mtime_us < ?3 OR (mtime_us = ?3 AND version_id < ?4)) \
                         ORDER BY mtime_us DESC, version_id DESC LIMIT ?5"
                    ),
                    &[&bucket, &k.as_bytes(), &m, &v, &limit_i64(lim)],
                    rows::list_entry,
                )
            },
            |lower, exclusive, lim| {
                let op = if exclusive { ">" } else { ">=" };
                let lim = limit_i64(lim);
                match to {
                    Some(to) => collect(
                        self.conn(),
                        &format!(
                            "SELECT {LIST_COLS} FROM versions WHERE bucket = ?1 AND key {op} ?2 AND key < ?3 \
                             ORDER BY key, mtime_us DESC, version_id DESC LIMIT ?4"
                        ),
                        &[&bucket, &lower, &to, &lim],
                        rows::list_entry,
                    ),
                    None => collect(
                        self.conn(),
                        &format!(
                            "SELECT {LIST_COLS} FROM versions WHERE bucket = ?1 AND key {op} ?2 \
                             ORDER BY key, mtime_us DESC, version_id DESC LIMIT ?3"
                        ),
                        &[&bucket, &lower, &lim],
                        rows::list_entry,
                    ),
                }
            },
        )
    }

    fn bucket_has_versions(&self, bucket: &str) -> Result<bool> {
        Ok(self
            .conn()
            .prepare_cached("SELECT 1 FROM versions WHERE bucket = ?1 LIMIT 1")?
            .query_row([bucket], |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn get_upload(&self, upload_id: &str) -> Result<Option<UploadRecord>> {
        first(
            self.conn(),
            &format!("SELECT {UPLOAD_COLS} FROM uploads WHERE upload_id = ?1"),
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
        let to = to.unwrap_or(&[0xff; 1100]);
        let lim = limit_i64(limit);
        let mut out = Vec::new();
        let mut lower: &[u8] = from;
        let mut exclusive = false;
        if let Some((k, up)) = after {
            if let Some(up) = up {
                // The rest of key `k`, after the marker upload.
                let marker = self.get_upload(up)?;
                if let Some(m) = marker.filter(|m| m.bucket == bucket && m.key == k) {
                    out = collect(
                        self.conn(),
                        &format!(
                            "SELECT {UPLOAD_COLS} FROM uploads WHERE bucket = ?1 AND key = ?2 \
                             AND (initiated_us > ?3 OR (initiated_us = ?3 AND upload_id > ?4)) \
                             ORDER BY initiated_us, upload_id LIMIT ?5"
                        ),
                        &[&bucket, &k.as_bytes(), &m.initiated_us, &up, &lim],
                        rows::upload,
                    )?;
                }
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
        let rest = limit_i64(limit - out.len());
        out.extend(collect(
            self.conn(),
            &format!(
                "SELECT {UPLOAD_COLS} FROM uploads WHERE bucket = ?1 AND key {op} ?2 AND key < ?3 \
                 ORDER BY key, initiated_us, upload_id LIMIT ?4"
            ),
            &[&bucket, &lower, &to, &rest],
            rows::upload,
        )?);
        Ok(out)
    }

    fn idle_uploads(&self, before_us: i64, limit: usize) -> Result<Vec<UploadRecord>> {
        collect(
            self.conn(),
            &format!(
                "SELECT {UPLOAD_COLS} FROM uploads u WHERE initiated_us < ?1 AND \
                 coalesce((SELECT max(mtime_us) FROM parts p WHERE p.upload_id = u.upload_id), 0) < ?1 \
                 ORDER BY initiated_us LIMIT ?2"
            ),
            &[&before_us, &limit_i64(limit)],
            rows::upload,
        )
    }

    fn list_parts(&self, upload_id: &str, after: u32, limit: usize) -> Result<Vec<PartRecord>> {
        collect(
            self.conn(),
            &format!("SELECT {PART_COLS} FROM parts WHERE upload_id = ?1 AND part_number > ?2 ORDER BY part_number LIMIT ?3"),
            &[&upload_id, &i64::from(after), &limit_i64(limit)],
            rows::part,
        )
    }

    fn blob_is_live(&self, blob: &str) -> Result<bool> {
        Ok(self.conn().prepare_cached("SELECT 1 FROM blobs WHERE id = ?1")?.query_row([blob], |_| Ok(())).optional()?.is_some())
    }

    fn due_garbage(&self, now_us: i64, limit: usize) -> Result<Vec<String>> {
        let mut stmt = self.conn().prepare_cached("SELECT id FROM garbage WHERE due_us <= ?1 ORDER BY due_us LIMIT ?2")?;
        let rows = stmt.query_map(params![now_us, limit_i64(limit)], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn get_setting(&self, key: &str) -> Result<Option<String>> {
        Ok(self.conn().prepare_cached("SELECT v FROM settings WHERE k = ?1")?.query_row([key], |r| r.get(0)).optional()?)
    }
}
