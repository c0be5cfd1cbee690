//! SQLite rows as [`Cells`] for the shared row readers ([`crate::meta::rows`]), and the two
//! query helpers every SQLite read goes through (cached statements).

use rusqlite::{Connection, Row};

use crate::error::Result;
pub(super) use crate::meta::rows::*;
use crate::model::ReplStatus;

/// `repl_status` as stored here: every status padded with spaces to one length, so that a
/// status change overwrites the record where it is. SQLite writes a record whose length
/// changes anew, overflow pages included: before schema 6, every completed job rewrote the
/// inline body of the version it sent (a 4 KiB page, and a freelist page). Read back trimmed
/// ([`crate::meta::rows`]); statuses written before schema 6 are bare names, and read the same.
pub(super) fn stored_status(status: Option<ReplStatus>) -> Option<&'static str> {
    status.map(|s| match s {
        ReplStatus::Pending => "PENDING  ",
        ReplStatus::Completed => "COMPLETED",
        ReplStatus::Failed => "FAILED   ",
        ReplStatus::Replica => "REPLICA  ",
    })
}

impl Cells for Row<'_> {
    fn int(&self, i: usize) -> Result<i64> {
        Ok(self.get(i)?)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        Ok(self.get(i)?)
    }
    fn text(&self, i: usize) -> Result<String> {
        Ok(self.get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>> {
        Ok(self.get(i)?)
    }
    fn bytes(&self, i: usize) -> Result<Vec<u8>> {
        Ok(self.get(i)?)
    }
    fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>> {
        Ok(self.get(i)?)
    }
    /// SQLite has no booleans: flags are 0 or 1.
    fn flag(&self, i: usize) -> Result<bool> {
        Ok(self.get::<_, i64>(i)? != 0)
    }
}

/// Runs a cached query and maps every row.
pub(super) fn collect<T>(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
    f: fn(&dyn Cells) -> Result<T>,
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
    f: fn(&dyn Cells) -> Result<T>,
) -> Result<Option<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    rows.next()?.map(|r| f(r)).transpose()
}
