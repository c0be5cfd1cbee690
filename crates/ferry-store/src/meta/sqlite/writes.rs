//! The object writes ([`WriteTx`]) of the write transaction, plus the clock and the hooks.

use rusqlite::params;

use super::reads::HasConn;
use super::rows::{self, BUCKET_COLS, PART_COLS, UPLOAD_COLS, VERSION_COLS, first, stored_status, to_i64};
use super::writer::SqliteWriteTx;
use crate::checksum::Algorithm;
use crate::error::Result;
use crate::meta::{ReadTx as _, Signals, WriteTx};
use crate::model::*;

impl HasConn for SqliteWriteTx<'_> {
    fn conn(&self) -> &rusqlite::Connection {
        self.conn
    }
}

impl SqliteWriteTx<'_> {
    /// Writes bucket `b` with `verb` (`INSERT OR ...`); returns the rows written.
    fn write_bucket(&self, verb: &str, b: &BucketRecord) -> Result<usize> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "{verb} INTO buckets ({BUCKET_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ))?
            .execute(params![
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
            ])?)
    }
}

impl WriteTx for SqliteWriteTx<'_> {
    fn now(&mut self) -> i64 {
        self.clock.tick()
    }

    fn observe_time(&mut self, us: i64) {
        self.clock.observe(us);
    }

    fn lock_key(&mut self, _bucket: &str, _key: &str) -> Result<()> {
        // The single writer thread already orders every write.
        Ok(())
    }

    fn insert_bucket(&mut self, b: &BucketRecord) -> Result<bool> {
        Ok(self.write_bucket("INSERT OR IGNORE", b)? == 1)
    }

    fn lock_bucket(&mut self, name: &str) -> Result<Option<BucketRecord>> {
        // The single writer thread already orders every write.
        self.get_bucket(name)
    }

    fn put_bucket(&mut self, b: &BucketRecord) -> Result<()> {
        self.write_bucket("INSERT OR REPLACE", b).map(drop)
    }

    fn delete_bucket(&mut self, name: &str) -> Result<()> {
        self.conn.prepare_cached("DELETE FROM buckets WHERE name = ?1")?.execute([name])?;
        self.conn.prepare_cached("DELETE FROM bucket_usage WHERE bucket = ?1")?.execute([name])?;
        Ok(())
    }

    fn put_version(&mut self, v: &VersionRecord) -> Result<()> {
        let (parts, multipart, inline) = match &v.layout {
            BodyLayout::Inline(data) => (None, false, Some(data.as_slice())),
            BodyLayout::Parts { parts, multipart } => (Some(serde_json::to_string(parts)?), *multipart, None),
        };
        self.conn
            .prepare_cached(&format!(
                "INSERT OR REPLACE INTO versions ({VERSION_COLS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
            ))?
            .execute(params![
                v.bucket,
                v.key.as_bytes(),
                v.version_id,
                FORMAT_VERSION,
                v.mtime_us,
                i64::from(v.is_latest),
                i64::from(v.delete_marker),
                to_i64(v.size),
                v.etag,
                v.storage_class,
                serde_json::to_string(&v.owner)?,
                stored_status(v.repl_status),
                parts,
                i64::from(multipart),
                serde_json::to_string(&v.attrs)?,
                inline,
            ])?;
        if !v.delete_marker {
            self.conn
                .prepare_cached(
                    "INSERT INTO bucket_usage (bucket, versions, bytes) VALUES (?1, 1, ?2) \
                     ON CONFLICT (bucket) DO UPDATE SET versions = versions + 1, bytes = bytes + excluded.bytes",
                )?
                .execute(params![v.bucket, to_i64(v.size)])?;
        }
        Ok(())
    }

    fn remove_version(&mut self, bucket: &str, key: &str, version_id: &str) -> Result<Option<VersionRecord>> {
        let existing = self.get_version(bucket, key, version_id)?;
        if existing.is_some() {
            // Cascade: the version's delivery records go with its row.
            self.conn
                .prepare_cached(
                    "DELETE FROM repl_delivered WHERE vrow IN \
                     (SELECT id FROM versions WHERE bucket = ?1 AND key = ?2 AND version_id = ?3)",
                )?
                .execute(params![bucket, key.as_bytes(), version_id])?;
            self.conn
                .prepare_cached("DELETE FROM versions WHERE bucket = ?1 AND key = ?2 AND version_id = ?3")?
                .execute(params![bucket, key.as_bytes(), version_id])?;
        }
        if let Some(v) = existing.as_ref().filter(|v| !v.delete_marker) {
            self.conn
                .prepare_cached("UPDATE bucket_usage SET versions = versions - 1, bytes = bytes - ?2 WHERE bucket = ?1")?
                .execute(params![bucket, to_i64(v.size)])?;
        }
        Ok(existing)
    }

    fn refresh_latest(&mut self, bucket: &str, key: &str) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE versions SET is_latest = 0 WHERE bucket = ?1 AND key = ?2 AND is_latest = 1")?
            .execute(params![bucket, key.as_bytes()])?;
        self.conn
            .prepare_cached(
                "UPDATE versions SET is_latest = 1 WHERE id = (SELECT id FROM versions WHERE bucket = ?1 AND key = ?2 \
                 ORDER BY mtime_us DESC, version_id DESC LIMIT 1)",
            )?
            .execute(params![bucket, key.as_bytes()])?;
        Ok(())
    }

    fn set_version_attrs(&mut self, bucket: &str, key: &str, version_id: &str, attrs: &ObjectAttrs) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE versions SET attrs = ?4 WHERE bucket = ?1 AND key = ?2 AND version_id = ?3")?
            .execute(params![bucket, key.as_bytes(), version_id, serde_json::to_string(attrs)?])?;
        Ok(())
    }

    fn set_storage_class(&mut self, bucket: &str, key: &str, version_id: &str, class: &str) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE versions SET storage_class = ?4 WHERE bucket = ?1 AND key = ?2 AND version_id = ?3")?
            .execute(params![bucket, key.as_bytes(), version_id, class])?;
        Ok(())
    }

    fn set_repl_status(&mut self, bucket: &str, key: &str, version_id: &str, status: Option<ReplStatus>) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE versions SET repl_status = ?4 WHERE bucket = ?1 AND key = ?2 AND version_id = ?3 \
                 AND repl_status IS NOT ?4 AND rtrim(repl_status) IS NOT 'REPLICA'",
            )?
            .execute(params![bucket, key.as_bytes(), version_id, stored_status(status)])?;
        Ok(())
    }

    fn put_upload(&mut self, u: &UploadRecord) -> Result<()> {
        self.conn
            .prepare_cached(&format!(
                "INSERT OR REPLACE INTO uploads ({UPLOAD_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ))?
            .execute(params![
                u.upload_id,
                FORMAT_VERSION,
                u.bucket,
                u.key.as_bytes(),
                u.initiated_us,
                serde_json::to_string(&u.owner)?,
                u.storage_class,
                u.checksum_algorithm.map(Algorithm::name),
                serde_json::to_string(&u.attrs)?,
            ])?;
        Ok(())
    }

    fn delete_upload(&mut self, upload_id: &str) -> Result<()> {
        self.conn.prepare_cached("DELETE FROM uploads WHERE upload_id = ?1")?.execute([upload_id])?;
        Ok(())
    }

    fn put_part(&mut self, p: &PartRecord) -> Result<Option<PartRecord>> {
        let old = first(
            self.conn,
            &format!("SELECT {PART_COLS} FROM parts WHERE upload_id = ?1 AND part_number = ?2"),
            &[&p.upload_id, &i64::from(p.part_number)],
            rows::part,
        )?;
        self.conn.prepare_cached(&format!("INSERT OR REPLACE INTO parts ({PART_COLS}) VALUES (?1, ?2, ?3, ?4, ?5)"))?.execute(
            params![p.upload_id, i64::from(p.part_number), FORMAT_VERSION, p.mtime_us, serde_json::to_string(&p.part)?],
        )?;
        Ok(old)
    }

    fn take_parts(&mut self, upload_id: &str) -> Result<Vec<PartRecord>> {
        let parts = self.list_parts(upload_id, 0, usize::MAX >> 1)?;
        self.conn.prepare_cached("DELETE FROM parts WHERE upload_id = ?1")?.execute([upload_id])?;
        Ok(parts)
    }

    fn add_blob(&mut self, blob: &str) -> Result<()> {
        self.new_blobs = true;
        self.conn.prepare_cached("INSERT OR IGNORE INTO blobs (id) VALUES (?1)")?.execute([blob])?;
        Ok(())
    }

    fn release_blob(&mut self, blob: &str, due_us: i64) -> Result<()> {
        self.conn.prepare_cached("DELETE FROM blobs WHERE id = ?1")?.execute([blob])?;
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO garbage (id, due_us) VALUES (?1, ?2)")?
            .execute(params![blob, due_us])?;
        Ok(())
    }

    fn forget_garbage(&mut self, blobs: &[String]) -> Result<()> {
        let mut stmt = self.conn.prepare_cached("DELETE FROM garbage WHERE id = ?1")?;
        for b in blobs {
            stmt.execute([b])?;
        }
        Ok(())
    }

    fn set_setting(&mut self, key: &str, value: &str) -> Result<()> {
        self.conn.prepare_cached("INSERT OR REPLACE INTO settings (k, v) VALUES (?1, ?2)")?.execute([key, value])?;
        Ok(())
    }

    fn on_commit(&mut self, hook: Box<dyn FnOnce() + Send>) {
        self.hooks.push(hook);
    }

    fn on_commit_once(&mut self, key: &'static str, hook: Box<dyn FnOnce() + Send>) {
        if !self.once.contains(&key) {
            self.once.push(key);
            self.hooks.push(hook);
        }
    }

    fn signals(&self) -> &Signals {
        self.signals
    }
}
