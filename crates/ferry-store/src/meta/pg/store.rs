//! [`PgStore`]: the [`MetaStore`] of a node of a region on PostgreSQL.
//!
//! # How a closure runs
//! The store's traits run closures synchronously. Each closure runs on a blocking thread,
//! with a pooled tokio-postgres connection driven from that thread through the runtime's
//! handle ([`SyncConn`]): one PostgreSQL transaction per closure (no savepoints), every
//! statement prepared once per connection.
//!
//! A write transaction (READ COMMITTED):
//! 1. reading or writing a key's versions or jobs first takes the key's `key_heads` row
//!    ([`super::keys`]): writers of a key, on any node, take turns, and commit times handed
//!    out after it follow the key's latest version whatever the nodes' clock skew;
//! 2. commit times come from the node's [`NodeClock`], registered as in flight until the
//!    transaction's outcome is known;
//! 3. the last statement before `COMMIT` seals the node's writer slot
//!    ([`super::nodes::Node::seal`]): it refuses a fenced node, and records the highest time
//!    handed out, so a node restarted after a crash starts above it;
//! 4. counters (bucket usage, per-destination figures) are appended as deltas, never updated
//!    in place: two writers never wait for each other on a shared counter row (which would
//!    also let them deadlock with the key rows). Reads sum them; [`PgStore::compact`] folds
//!    them into their base rows now and then.
//!
//! A read runs in a REPEATABLE READ, read-only transaction (one snapshot). Its committed
//! clock is the minimum of this node's closed timestamp, taken *before* the snapshot, and the
//! other nodes' published ones, read in it: every commit at or below it is in the snapshot.
//!
//! # Crash behaviour
//! A closure that fails rolls its transaction back, and its hooks are dropped. When the
//! outcome of a `COMMIT` is unknown (the connection broke), the node waits for that
//! transaction to end (it holds its slot's row lock) before its time leaves the in-flight
//! set: the closed timestamp never passes a commit that could still appear. Deadlocks and
//! serialization failures come back as [`Error::Busy`] (S3 clients retry a 503).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ferry_core::sync::lock;
use ferry_core::time::{NodeClock, now_micros};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::conn::{Committed, SyncConn, db, values};
use super::nodes::{self, Life, Node};
use super::{PgMeta, pg};
use crate::error::{Error, Result};
use crate::meta::rows::Cells;
use crate::meta::{MetaStore, ReadTx, Signals, WriteTx};

/// Deltas appended between two compactions of the counters (by one node).
const COMPACT_EVERY: u64 = 512;

/// A node's metadata store on PostgreSQL.
pub struct PgStore {
    meta: Arc<PgMeta>,
    node: Life,
    clock: Arc<Mutex<NodeClock>>,
    /// Writer slots free (each a `node_slots` row); a write takes one for its transaction.
    slots: Mutex<Vec<i32>>,
    writers: tokio::sync::Semaphore,
    readers: tokio::sync::Semaphore,
    signals: Signals,
    commits: std::sync::atomic::AtomicU64,
    /// Waits for the server by transactions so far (a figure for tests and benchmarks).
    round_trips: Arc<std::sync::atomic::AtomicU64>,
    staging_dir: Option<Arc<std::path::Path>>,
    blob_intents: bool,
    closed: std::sync::atomic::AtomicBool,
}

/// Settings of a [`PgStore`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// This node's name in the region (unique per running node).
    pub node_id: String,
    /// Write transactions at once (each holds a connection and a writer slot).
    pub writers: usize,
    /// Read transactions at once.
    pub readers: usize,
    /// Open even when the server's durability settings can lose acknowledged commits.
    pub allow_unsafe: bool,
    /// The node's blob staging directory, fsynced before a commit that references a new blob
    /// (as the SQLite writer does).
    pub staging_dir: Option<std::path::PathBuf>,
    /// Blobs are uploaded to a store the region's nodes share, each under an intent
    /// (`meta::pg::intents`) that the transaction referencing it must find.
    pub blob_intents: bool,
}

impl PgStore {
    /// Connects, checks durability, creates the schema, and joins the region as
    /// `options.node_id` (fencing an earlier life of that node).
    ///
    /// # Errors
    /// See [`PgMeta::open`] and [`nodes::join`].
    pub async fn open(url: &str, options: &PgOptions) -> Result<Self> {
        let writers = options.writers.clamp(1, 64);
        let readers = options.readers.max(1);
        let meta = Arc::new(PgMeta::open(url, writers + readers + 2, options.allow_unsafe).await?);
        let mut client = meta.client().await?;
        let slots = i32::try_from(writers).unwrap_or(64);
        let node = nodes::join(&mut client, &options.node_id, slots, now_micros()).await?;
        drop(client);
        Ok(Self {
            clock: Arc::new(Mutex::new(NodeClock::new(node.floor))),
            meta,
            node: Life::new(node),
            slots: Mutex::new((0..slots).rev().collect()),
            writers: tokio::sync::Semaphore::new(writers),
            readers: tokio::sync::Semaphore::new(readers),
            signals: Signals::default(),
            commits: std::sync::atomic::AtomicU64::new(0),
            round_trips: Arc::default(),
            staging_dir: options.staging_dir.as_deref().map(Arc::from),
            blob_intents: options.blob_intents,
            closed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Refuses further writes (those under way finish).
    pub fn shutdown(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.writers.close();
    }

    /// Whether a committed record references `blob`, from a blocking thread inside the runtime
    /// (start-up recovery of the staging directory).
    ///
    /// # Errors
    /// Database errors.
    pub fn blob_is_live_blocking(&self, blob: &str) -> Result<bool> {
        let blob = blob.to_owned();
        tokio::runtime::Handle::current().block_on(self.read(move |r| r.blob_is_live(&blob)))
    }

    /// Leases the jobs `ids` to this node until `now_us + lease_us`, unless another node holds
    /// a lease on them that has not expired or this node was fenced; returns those leased (one
    /// statement). The
    /// heartbeat renews them; completing, retrying or failing a job ends its lease; fencing the
    /// node frees them all.
    ///
    /// # Errors
    /// Database errors.
    pub async fn take_jobs(&self, ids: Vec<i64>, now_us: i64, lease_us: i64) -> Result<Vec<i64>> {
        if ids.is_empty() {
            return Ok(ids);
        }
        // A job row another transaction holds (its completion, another node's claim) is
        // skipped, not waited for: lock waits between nodes stay near zero.
        self.lease(
            "WITH c AS (SELECT id FROM repl_jobs \
             WHERE id = ANY($1) AND state = 0 AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until_us < $4) \
             AND EXISTS (SELECT 1 FROM nodes WHERE node_id = $2 AND epoch = $5 AND state = 'live') \
             FOR UPDATE SKIP LOCKED) \
             UPDATE repl_jobs r SET lease_owner = $2, lease_until_us = $3, lease_token = nextval('lease_tokens') \
             FROM c WHERE r.id = c.id RETURNING r.id",
            &ids,
            now_us,
            lease_us,
        )
        .await
    }

    /// Whether this node is the one of the region that does what must be done once, not once
    /// per node (recording RPO events, failing the jobs of removed peers): the live node with
    /// the smallest id. When it dies, the next one takes over once it is fenced.
    ///
    /// # Errors
    /// Database errors.
    pub async fn leads(&self) -> Result<bool> {
        let client = self.meta.client().await?;
        let me = self.node.current();
        let row = client
            .query_one(
                "SELECT coalesce(min(node_id) = $1, false) AND bool_or(node_id = $1 AND epoch = $2) \
                 FROM nodes WHERE state = 'live'",
                &[&me.id, &me.epoch],
            )
            .await
            .map_err(db)?;
        Ok(row.get::<_, Option<bool>>(0).unwrap_or(false))
    }

    /// Takes the released blobs `ids` (found due) for this node's garbage collector: each is
    /// made due again only at `now_us + lease_us`, so the other nodes' collectors pass it by
    /// meanwhile, and a node that dies before collecting it leaves it to them after that. A
    /// row another node is taking is skipped. Returns those taken.
    ///
    /// # Errors
    /// Database errors.
    pub async fn take_garbage(&self, ids: Vec<String>, now_us: i64, lease_us: i64) -> Result<Vec<String>> {
        if ids.is_empty() {
            return Ok(ids);
        }
        let until = now_us.saturating_add(lease_us);
        let rows = self
            .bounded(
                "a garbage claim",
                "WITH c AS (SELECT id FROM garbage WHERE id = ANY($1) AND due_us <= $2 FOR UPDATE SKIP LOCKED) \
                 UPDATE garbage g SET due_us = $3 FROM c WHERE g.id = c.id RETURNING g.id",
                &[&ids, &now_us, &until],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Runs one lease statement (`$1` ids, `$2` this node, `$3` the new expiry, `$4` now, `$5`
    /// this node's epoch: a fenced node, paused then woken, takes nothing, since it could
    /// complete nothing) within [`super::STATEMENT_TIMEOUT`]; the ids it leased.
    async fn lease(&self, sql: &str, ids: &[i64], now_us: i64, lease_us: i64) -> Result<Vec<i64>> {
        let until = now_us.saturating_add(lease_us);
        let node = self.node.current();
        let rows = self.bounded("a lease", sql, &[&ids, &node.id, &until, &now_us, &node.epoch]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Runs one autocommit statement on a pooled connection within
    /// [`super::STATEMENT_TIMEOUT`]: a node cut off from the server gives `what` up as
    /// [`Error::Unavailable`] instead of waiting for ever.
    async fn bounded(&self, what: &str, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let client = self.meta.client().await?;
        tokio::time::timeout(super::STATEMENT_TIMEOUT, client.query(sql, params))
            .await
            .map_err(|_| Error::Unavailable(format!("postgresql: no answer to {what}")))?
            .map_err(db)
    }

    /// The connection pool and durability settings.
    #[must_use]
    pub fn meta(&self) -> &Arc<PgMeta> {
        &self.meta
    }

    /// This node's membership (id, epoch), replaced when it rejoins after a fence.
    #[must_use]
    pub fn node(&self) -> &Life {
        &self.node
    }

    /// This node's clock (the heartbeat publishes its closed timestamp).
    #[must_use]
    pub fn clock(&self) -> &Arc<Mutex<NodeClock>> {
        &self.clock
    }

    /// Leases backfill `id` to this node until `now_us + lease_us`, unless another live node
    /// holds an unexpired lease on it or this node was fenced: one node steps a backfill at a
    /// time (two would enqueue the same batch). Each step renews it; fencing frees it.
    ///
    /// # Errors
    /// Database errors.
    pub async fn take_backfill(&self, id: i64, now_us: i64, lease_us: i64) -> Result<bool> {
        let leased = self
            .lease(
                "UPDATE backfills SET lease_owner = $2, lease_until_us = $3, lease_token = nextval('lease_tokens') \
                 WHERE id = ANY($1) AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until_us < $4) \
                 AND EXISTS (SELECT 1 FROM nodes WHERE node_id = $2 AND epoch = $5 AND state = 'live') \
                 RETURNING id",
                &[id],
                now_us,
                lease_us,
            )
            .await?;
        Ok(!leased.is_empty())
    }

    /// Runs `f` in a write transaction; its result once the transaction committed.
    ///
    /// # Errors
    /// `f`'s error; a fenced node; database errors ([`Error::Busy`] for a deadlock or a
    /// serialization failure).
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn WriteTx) -> Result<T> + Send + 'static,
    {
        let _permit = self.writers.acquire().await.map_err(|_| Error::Closed)?;
        let slot = lock(&self.slots).pop().ok_or(Error::Closed)?;
        let staging = self.staging_dir.clone();
        let intents = self.blob_intents;
        let conn = SyncConn::new(self.meta.client().await?, self.meta.config.clone());
        // The life this transaction seals with: if the node is fenced meanwhile, and rejoins,
        // the seal still refuses it (its times may be below what the region reported since).
        let (node, clock, signals) = (self.node.current(), self.clock.clone(), self.signals.clone());
        let trips = self.round_trips.clone();
        let out = tokio::task::spawn_blocking(move || {
            let out = run_write(&conn, &node, slot, &clock, (signals, intents), staging.as_deref(), f);
            trips.fetch_add(conn.round_trips(), std::sync::atomic::Ordering::Relaxed);
            (out, conn)
        })
        .await;
        lock(&self.slots).push(slot);
        let (out, conn) = out.map_err(|e| Error::Other(format!("write task failed: {e}")))?;
        let n = self.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if out.is_ok() && n % COMPACT_EVERY == COMPACT_EVERY - 1 {
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = super::writes::compact(&conn) {
                    tracing::warn!(error = %e, "compacting counters failed (tried again later)");
                }
            })
            .await;
        }
        out
    }

    /// Runs `f` on one snapshot.
    ///
    /// # Errors
    /// `f`'s error or a database error.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn ReadTx) -> Result<T> + Send + 'static,
    {
        let _permit = self.readers.acquire().await.map_err(|_| Error::Closed)?;
        let conn = SyncConn::new(self.meta.client().await?, self.meta.config.clone());
        let (node, clock) = (self.node.current().id.clone(), self.clock.clone());
        let trips = self.round_trips.clone();
        tokio::task::spawn_blocking(move || {
            // Before the snapshot: every commit of this node at or below it has ended.
            let closed = lock(&clock).closed();
            // Sent with the first statement (a snapshot is taken by the first statement).
            conn.queue_batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
            let tx = PgTx::reader(&conn, &node, closed);
            let out = f(&tx);
            if !conn.discard() {
                conn.batch("COMMIT")?;
            }
            trips.fetch_add(conn.round_trips(), std::sync::atomic::Ordering::Relaxed);
            out
        })
        .await
        .map_err(|e| Error::Other(format!("read task failed: {e}")))?
    }

    /// How many times this node's transactions waited for the server (each wait is a round
    /// trip; statements whose answer is not needed travel with the next one that is).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Folds the counter deltas into their rows (also done every few hundred writes).
    ///
    /// # Errors
    /// Database errors.
    pub async fn compact(&self) -> Result<()> {
        let conn = SyncConn::new(self.meta.client().await?, self.meta.config.clone());
        tokio::task::spawn_blocking(move || super::writes::compact(&conn))
            .await
            .map_err(|e| Error::Other(format!("compaction task failed: {e}")))?
    }
}

/// One write transaction, start to end, on a blocking thread.
fn run_write<T>(
    conn: &SyncConn,
    node: &Node,
    slot: i32,
    clock: &Arc<Mutex<NodeClock>>,
    (signals, intents): (Signals, bool),
    staging: Option<&std::path::Path>,
    f: impl FnOnce(&mut dyn WriteTx) -> Result<T>,
) -> Result<T> {
    // Sent with the first statement that waits for an answer.
    conn.queue_batch("BEGIN");
    let mut tx = PgTx::writer(conn, &node.id, clock.clone(), signals);
    tx.blob_intents = intents;
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut tx)))
        .unwrap_or_else(|_| Err(Error::Other("metadata transaction panicked".into())));
    let w = tx.write.take().unwrap_or_default();
    let high = w.times.iter().copied().max().unwrap_or(0);
    // Whether the transaction is known to have ended (its times may leave the in-flight set).
    let mut ended = true;
    // A new blob's directory entry is durable before any committed row points at it.
    let synced = |v: T| -> Result<T> {
        if w.new_blobs
            && let Some(dir) = staging
        {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(v)
    };
    let outcome = match out.and_then(synced) {
        Ok(v) => {
            seal(conn, node, slot, high);
            match conn.commit() {
                Committed::Yes => Ok(v),
                Committed::RolledBack(e) => Err(sealed(e, node)),
                Committed::Unknown(e) => {
                    // Wait for the transaction to end (it holds its slot's row lock) before
                    // its times leave the in-flight set. If even that fails, they stay: this
                    // node's closed timestamp stops until it restarts.
                    ended = wait_for_slot(conn, node, slot)
                        .inspect_err(|w| {
                            tracing::error!(error = %w, "could not wait for a commit of unknown outcome");
                        })
                        .is_ok();
                    Err(e)
                }
            }
        }
        Err(e) => {
            if !conn.discard() {
                let _ = conn.batch("ROLLBACK");
            }
            Err(e)
        }
    };
    if ended {
        let mut c = lock(clock);
        for t in &w.times {
            c.end_commit(*t);
        }
    }
    if outcome.is_ok() {
        for hook in w.hooks {
            hook();
        }
    }
    outcome
}

/// The last statement of a write transaction, sent with its `COMMIT`: locks the node's
/// writer slot, refuses a fenced node (its epoch moved on), refuses a node of a build older
/// than the database's schema, and records the highest commit time handed out. A fenced node's
/// seal matches no row and divides by zero; a newer schema fails the cast of a text to a
/// number. Either error aborts the transaction, so the `COMMIT` behind it rolls back
/// ([`sealed`] names it). So a node that kept running while a newer build migrated the
/// database commits nothing from then on (opening such a database is refused already).
fn seal(conn: &SyncConn, node: &Node, slot: i32, high_us: i64) {
    conn.queue(
        "WITH sealed AS (UPDATE node_slots SET high_us = GREATEST(high_us, $4) \
         WHERE node_id = $1 AND slot = $2 AND epoch = $3 RETURNING 1) \
         SELECT 1 / (SELECT count(*)::integer FROM sealed), \
         (SELECT ('newer schema ' || v)::bigint FROM settings WHERE k = 'schema' AND v::bigint > $5)",
        values![node.id, slot, node.epoch, high_us, super::SCHEMA_VERSION],
    );
}

/// The error of a rolled-back commit: a seal that matched no row means the node was fenced; a
/// seal that failed its cast, that the database's schema is newer than this build's.
fn sealed(e: tokio_postgres::Error, node: &Node) -> Error {
    use tokio_postgres::error::SqlState;
    match e.code() {
        Some(c) if *c == SqlState::DIVISION_BY_ZERO => nodes::fenced(&node.id),
        Some(c) if *c == SqlState::INVALID_TEXT_REPRESENTATION => nodes::newer_schema(&node.id),
        _ => super::conn::db(e),
    }
}

/// Waits until no transaction holds the slot's row lock (on a fresh connection: the one whose
/// commit failed may be broken).
fn wait_for_slot(conn: &SyncConn, node: &Node, slot: i32) -> Result<()> {
    conn.rt.block_on(async {
        let (client, connection) = conn.config.connect(tokio_postgres::NoTls).await.map_err(pg)?;
        tokio::spawn(connection);
        client
            .execute("SELECT 1 FROM node_slots WHERE node_id = $1 AND slot = $2 FOR UPDATE", &[&node.id, &slot])
            .await
            .map_err(pg)?;
        Ok(())
    })
}

impl Cells for Row {
    fn int(&self, i: usize) -> Result<i64> {
        self.try_get(i).map_err(pg)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        self.try_get(i).map_err(pg)
    }
    fn text(&self, i: usize) -> Result<String> {
        self.try_get(i).map_err(pg)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>> {
        self.try_get(i).map_err(pg)
    }
    fn bytes(&self, i: usize) -> Result<Vec<u8>> {
        self.try_get(i).map_err(pg)
    }
    fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>> {
        self.try_get(i).map_err(pg)
    }
    fn flag(&self, i: usize) -> Result<bool> {
        self.try_get(i).map_err(pg)
    }
}

/// What a write transaction keeps besides its connection.
#[derive(Default)]
pub(super) struct WriteState {
    /// Commit times handed out (in flight until the transaction ends).
    pub(super) times: Vec<i64>,
    pub(super) hooks: Vec<Box<dyn FnOnce() + Send>>,
    pub(super) once: Vec<&'static str>,
    /// Keys whose `key_heads` row this transaction holds: their sequence number, and the
    /// latest version time read when it was taken.
    pub(super) keys: RefCell<HashMap<(String, Vec<u8>), super::keys::KeyHead>>,
    /// Commit times must follow this (the latest time of every key held, and times observed).
    pub(super) after: Cell<i64>,
    /// A blob was referenced: fsync the staging directory before committing.
    pub(super) new_blobs: bool,
}

/// A transaction: a read snapshot (`write` is `None`) or a write transaction.
pub(super) struct PgTx<'a> {
    pub(super) conn: &'a SyncConn,
    pub(super) node_id: &'a str,
    /// A read snapshot's own closed timestamp, taken before the snapshot.
    pub(super) closed_before: Option<i64>,
    pub(super) clock: Option<Arc<Mutex<NodeClock>>>,
    pub(super) write: Option<WriteState>,
    pub(super) signals: Signals,
    /// New blobs must have an intent ([`PgOptions::blob_intents`]).
    pub(super) blob_intents: bool,
}

impl<'a> PgTx<'a> {
    fn reader(conn: &'a SyncConn, node_id: &'a str, closed: i64) -> Self {
        Self {
            conn,
            node_id,
            closed_before: Some(closed),
            clock: None,
            write: None,
            signals: Signals::default(),
            blob_intents: false,
        }
    }

    fn writer(conn: &'a SyncConn, node_id: &'a str, clock: Arc<Mutex<NodeClock>>, signals: Signals) -> Self {
        Self {
            conn,
            node_id,
            closed_before: None,
            clock: Some(clock),
            write: Some(WriteState::default()),
            signals,
            blob_intents: false,
        }
    }
}

impl MetaStore for PgStore {
    fn write<T, F>(&self, f: F) -> impl std::future::Future<Output = Result<T>> + Send
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn WriteTx) -> Result<T> + Send + 'static,
    {
        PgStore::write(self, f)
    }

    fn read<T, F>(&self, f: F) -> impl std::future::Future<Output = Result<T>> + Send
    where
        T: Send + 'static,
        F: FnOnce(&dyn ReadTx) -> Result<T> + Send + 'static,
    {
        PgStore::read(self, f)
    }

    fn signals(&self) -> &Signals {
        &self.signals
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::nodes;
    use super::super::test_cluster::TestCluster;
    use super::*;
    use crate::meta::conformance::{bucket, version};
    use crate::model::*;
    use crate::replication::{JobOp, JobOptions, NewJob};

    fn options(node: &str) -> PgOptions {
        PgOptions { node_id: node.into(), writers: 4, readers: 4, allow_unsafe: false, staging_dir: None, blob_intents: false }
    }

    /// Two nodes of one region on one database.
    async fn two_nodes() -> Option<(TestCluster, Arc<PgStore>, Arc<PgStore>)> {
        let pg = TestCluster::start(&[])?;
        let a = PgStore::open(&pg.url(), &options("a")).await.unwrap();
        let b = PgStore::open(&pg.url(), &options("b")).await.unwrap();
        a.write(|tx| tx.put_bucket(&bucket("b"))).await.unwrap();
        Some((pg, Arc::new(a), Arc::new(b)))
    }

    /// Writes a new version of `key` the way the object layer does: the key's latest first,
    /// then a commit time.
    async fn put_new(store: &PgStore, key: &'static str, vid: &'static str) -> i64 {
        store
            .write(move |tx| {
                tx.get_latest("b", key)?;
                let t = tx.now();
                tx.put_version(&version(key, vid, t))?;
                tx.refresh_latest("b", key)?;
                Ok(t)
            })
            .await
            .unwrap()
    }

    /// A node that keeps running while a newer build migrates the database commits nothing
    /// from then on (it would write what that build no longer reads as it should): its writes
    /// are refused at their seal, with the reason, until the schema is its own again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_of_an_older_build_writes_nothing_after_a_migration() {
        let Some((_pg, a, _b)) = two_nodes().await else { return };
        let set_schema = |v: i64| {
            let a = a.clone();
            async move {
                let c = a.meta.pool.get().await.unwrap();
                c.execute("UPDATE settings SET v = $1 WHERE k = 'schema'", &[&v.to_string()]).await.unwrap();
            }
        };
        put_new(&a, "before", "v1").await;
        set_schema(super::super::SCHEMA_VERSION + 1).await;
        let err = a.write(|tx| tx.put_bucket(&bucket("c"))).await.expect_err("refused at the seal");
        assert!(matches!(&err, Error::Unavailable(m) if m.contains("schema is newer")), "{err}");
        assert!(a.read(|r| r.get_bucket("c")).await.unwrap().is_none(), "nothing committed");
        set_schema(super::super::SCHEMA_VERSION).await;
        a.write(|tx| tx.put_bucket(&bucket("c"))).await.unwrap();
    }

    /// A PUT of a new version to a bucket replicating to two destinations, as the object layer
    /// writes it (bucket, key, version, latest, usage, two jobs and their counters, the stored
    /// the seal, in one transaction): three round trips (the bucket, the key, the commit). One
    /// statement per round trip would be seventeen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_put_waits_for_the_server_three_times() {
        let Some(pg) = TestCluster::start(&[]) else { return };
        let a = PgStore::open(&pg.url(), &options("a")).await.unwrap();
        let mut b = bucket("b");
        b.replication = Some(crate::meta::conformance::replication_config(&["d1", "d2"], true));
        a.write(move |tx| tx.put_bucket(&b)).await.unwrap();
        let put = |key: &'static str| {
            a.write(move |tx| {
                crate::objects::put_version(
                    tx,
                    "b",
                    crate::meta::conformance::new_object(key),
                    &crate::objects::WriteConditions::default(),
                )
            })
        };
        // Statements are prepared on a connection's first use of them: warm every connection.
        for key in ["w1", "w2", "w3", "w4", "w5", "w6"] {
            put(key).await.unwrap();
        }
        let trips = a.round_trips();
        let v = put("k").await.unwrap();
        assert_eq!(a.round_trips() - trips, 3);
        assert!(v.is_latest && v.repl_status == Some(ReplStatus::Pending), "{v:?}");
        let vid = v.version_id.clone();
        let stored = a.read(move |r| r.get_version("b", "k", &vid)).await.unwrap();
        assert_eq!(stored.as_ref(), Some(&v));
        let jobs = a.read(|r| r.pending_jobs_of_peer("eu", 100)).await.unwrap();
        let mut dests: Vec<_> =
            jobs.iter().filter(|j| j.key == "k" && j.version_id == v.version_id).map(|j| j.dest_bucket.as_str()).collect();
        dests.sort_unstable();
        assert_eq!(dests, ["d1", "d2"], "{jobs:?}");
    }

    /// A key written on a node whose clock runs a minute ahead, then on another: the second
    /// version still comes after the first (the key's row carries the latest time), and both
    /// nodes see the same latest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_orders_by_time_across_nodes_whatever_their_clocks() {
        let Some((_pg, a, b)) = two_nodes().await else { return };
        let ahead = now_micros() + 60_000_000;
        lock(a.clock()).observe(ahead);
        let t1 = put_new(&a, "k", "v1").await;
        assert!(t1 > ahead);
        let t2 = put_new(&b, "k", "v2").await;
        assert!(t2 > t1, "b's version follows a's though b's clock is a minute behind");
        for node in [&a, &b] {
            let latest = node.read(|r| r.get_latest("b", "k")).await.unwrap().unwrap();
            assert_eq!((latest.version_id.as_str(), latest.is_latest), ("v2", true));
        }
    }

    /// Once another node fenced it, a node's writes are refused at their last statement and
    /// leave nothing; the other node goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fenced_node_commits_nothing() {
        let Some((_pg, a, b)) = two_nodes().await else { return };
        let mut client = b.meta().client().await.unwrap();
        assert!(nodes::fence(&mut client, "a", i64::MAX).await.unwrap());
        let err = a.write(|tx| tx.put_version(&version("late", "v1", 5))).await.expect_err("refused");
        assert!(err.to_string().contains("fenced"), "{err}");
        assert!(
            b.read(|r| r.get_version("b", "late", "v1")).await.unwrap().is_none(),
            "nothing of it stands"
        );
        put_new(&b, "k", "v1").await;
    }

    fn job<'a>(version_id: &'a str, opts: &'a JobOptions) -> NewJob<'a> {
        NewJob {
            bucket: "b",
            key: "k",
            version_id,
            op: JobOp::Put,
            peer: "eu",
            dest_bucket: "d",
            rule_id: "r",
            opts,
            created_us: 10,
            size: 5,
            backfill_id: None,
        }
    }

    /// One node records jobs of a key while the other completes the runnable one, at the same
    /// time: whatever the interleaving, exactly one of the key's pending jobs stays runnable,
    /// so the completer drains them all (a job left blocked with no head would stay for ever).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_nodes_leave_one_runnable_job_per_key() {
        let Some((_pg, a, b)) = two_nodes().await else { return };
        const JOBS: usize = 60;
        let writer = {
            let a = a.clone();
            tokio::spawn(async move {
                for i in 0..JOBS {
                    a.write(move |tx| tx.insert_job(&job(&format!("v{i}"), &JobOptions::default()))).await.unwrap();
                }
            })
        };
        let mut done = 0;
        while done < JOBS {
            let runnable = b.read(|r| r.runnable_jobs("eu", "d", 0, i64::MAX, &[], 10)).await.unwrap();
            assert!(runnable.len() <= 1, "one runnable job per key: {runnable:?}");
            if let Some(j) = runnable.first() {
                let id = j.id;
                b.write(move |tx| tx.delete_job(id)).await.unwrap();
                done += 1;
            } else {
                assert!(!writer.is_finished() || done < JOBS, "jobs left with none runnable");
                if writer.is_finished() {
                    let left = b.read(|r| r.pending_jobs_of_peer("eu", 100)).await.unwrap();
                    panic!("{} jobs pending, none runnable: {left:?}", left.len());
                }
                tokio::task::yield_now().await;
            }
        }
        writer.await.unwrap();
        let stats = b.read(|r| r.dest_stats("b")).await.unwrap();
        assert_eq!((stats[0].pending_ops, stats[0].pending_bytes), (0, 0));
    }

    /// A job recorded on one node behind a key's runnable job, while another node completes
    /// that job: the completion waits for the recording transaction (the key's row), then
    /// finds the new job and makes it runnable. Without the key's row the recorder saw the old
    /// job pending and marked its job blocked, the completer saw nothing to unblock, and the
    /// new job waited for ever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_recorded_while_its_head_completes_becomes_runnable() {
        let Some((_pg, a, b)) = two_nodes().await else { return };
        let head = a.write(|tx| tx.insert_job(&job("v1", &JobOptions::default()))).await.unwrap();
        let (recorded_tx, recorded_rx) = tokio::sync::oneshot::channel::<()>();
        let recorder = {
            let a = a.clone();
            tokio::spawn(async move {
                a.write(move |tx| {
                    let id = tx.insert_job(&job("v2", &JobOptions::default()))?;
                    let _ = recorded_tx.send(());
                    // The completion below runs meanwhile (and must wait for this commit).
                    std::thread::sleep(std::time::Duration::from_millis(300));
                    Ok(id)
                })
                .await
            })
        };
        recorded_rx.await.unwrap();
        b.write(move |tx| tx.delete_job(head)).await.unwrap();
        let second = recorder.await.unwrap().unwrap();
        let runnable = b.read(|r| r.runnable_jobs("eu", "d", 0, i64::MAX, &[], 10)).await.unwrap();
        assert_eq!(runnable.iter().map(|j| j.id).collect::<Vec<_>>(), [second]);
    }

    /// One node steps a backfill at a time: the other is refused while the lease stands, the
    /// holder renews it, and it passes on once expired or once its holder is fenced.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backfill_is_stepped_by_one_node_at_a_time() {
        let Some((_pg, a, b)) = two_nodes().await else { return };
        let id = a
            .write(|tx| crate::replication::backfill::start(tx, "b", None, "", crate::replication::StatusFilter::All, None))
            .await
            .unwrap();
        assert!(a.take_backfill(id, 1_000, 500).await.unwrap());
        assert!(!b.take_backfill(id, 1_200, 500).await.unwrap(), "a holds it");
        assert!(a.take_backfill(id, 1_400, 500).await.unwrap(), "a renews it (to 1,900)");
        assert!(!b.take_backfill(id, 1_800, 500).await.unwrap());
        assert!(b.take_backfill(id, 2_000, 500).await.unwrap(), "expired: b takes it over");
        let mut client = a.meta().client().await.unwrap();
        assert!(nodes::fence(&mut client, "b", i64::MAX).await.unwrap());
        assert!(a.take_backfill(id, 2_100, 500).await.unwrap(), "freed when b was fenced");
        assert!(!b.take_backfill(id, 9_000, 500).await.unwrap(), "a fenced node takes nothing");
    }

    /// Taking and renewing leases never wait for a job row another transaction holds (a
    /// completion, another node's claim): the job is skipped this time, and taken or renewed
    /// once it is free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leases_skip_locked_jobs_instead_of_waiting() {
        let Some((pg, a, b)) = two_nodes().await else { return };
        let opts = JobOptions::default();
        let ids = a
            .write(move |tx| (0..3).map(|i| tx.insert_job(&job(&format!("v{i}"), &opts))).collect::<Result<Vec<_>>>())
            .await
            .unwrap();
        assert_eq!(a.take_jobs(ids[..2].to_vec(), 1_000, 500).await.unwrap(), ids[..2]);
        let (mut other, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let held = other.transaction().await.unwrap();
        held.query("SELECT id FROM repl_jobs WHERE id = ANY($1) FOR UPDATE", &[&ids[1..].to_vec()]).await.unwrap();
        let limit = std::time::Duration::from_secs(30);
        let taken = tokio::time::timeout(limit, b.take_jobs(vec![ids[2]], 1_100, 500))
            .await
            .expect("taking a job does not wait for its locked row")
            .unwrap();
        assert!(taken.is_empty(), "skipped while locked: {taken:?}");
        let client = a.meta().client().await.unwrap();
        let renewed = tokio::time::timeout(limit, super::super::leases::renew(&**client, "a", 1_100, 500))
            .await
            .expect("renewing does not wait for a locked row")
            .unwrap();
        assert_eq!(renewed, 1, "the unlocked lease renewed, the locked one skipped this beat");
        held.rollback().await.unwrap();
        assert_eq!(b.take_jobs(vec![ids[2]], 1_200, 500).await.unwrap(), [ids[2]]);
        assert_eq!(super::super::leases::renew(&**client, "a", 1_200, 500).await.unwrap(), 2);
    }

    /// A transfer saving its progress keeps its job's lease (the other node cannot take the
    /// job and resume the same upload beside it); scheduling a retry ends the lease.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_progress_save_keeps_the_lease_and_a_retry_ends_it() {
        let Some((_pg, a, b)) = two_nodes().await else { return };
        let opts = JobOptions::default();
        let id = a.write(move |tx| tx.insert_job(&job("v1", &opts))).await.unwrap();
        let now = ferry_core::time::now_micros();
        let lease = 60_000_000;
        assert_eq!(a.take_jobs(vec![id], now, lease).await.unwrap(), [id]);
        a.write(move |tx| crate::replication::outbox::save_progress(tx, id, Some("{\"upload\":\"u1\"}".into()))).await.unwrap();
        assert!(
            b.take_jobs(vec![id], now + 1, lease).await.unwrap().is_empty(),
            "still a's after its progress save"
        );
        let job = a.read(move |r| r.get_job(id)).await.unwrap().unwrap();
        a.write(move |tx| crate::replication::outbox::retry_later(tx, &job, "timeout", 0, now + 2, i64::MAX).map(drop))
            .await
            .unwrap();
        assert_eq!(b.take_jobs(vec![id], now + 3, lease).await.unwrap(), [id], "a retry ends the lease");
        let saved = b.read(move |r| r.get_job(id)).await.unwrap().unwrap();
        assert_eq!(
            saved.progress.as_deref(),
            Some("{\"upload\":\"u1\"}"),
            "the progress stays for the next attempt"
        );
    }

    /// One node of the region leads at a time: the live one with the smallest id; once it is
    /// fenced, the next.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_live_node_leads() {
        let Some((_pg, a, b)) = two_nodes().await else { return };
        assert_eq!((a.leads().await.unwrap(), b.leads().await.unwrap()), (true, false));
        let mut client = b.meta().client().await.unwrap();
        assert!(nodes::fence(&mut client, "a", i64::MAX).await.unwrap());
        assert_eq!((a.leads().await.unwrap(), b.leads().await.unwrap()), (false, true));
    }

    /// Two nodes' garbage collectors find the same released blob due: one takes it, the other
    /// passes it by until the taker's lease has run out (it died before collecting it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_node_collects_a_released_blob() {
        let Some((_pg, a, b)) = two_nodes().await else { return };
        a.write(|tx| tx.release_blob("blob-1", 100)).await.unwrap();
        let due = b.read(|r| r.due_garbage(1_000, 10)).await.unwrap();
        assert_eq!(due, ["blob-1"]);
        assert_eq!(a.take_garbage(due.clone(), 1_000, 500).await.unwrap(), ["blob-1"]);
        assert!(b.take_garbage(due.clone(), 1_000, 500).await.unwrap().is_empty(), "a has it");
        assert!(
            b.read(|r| r.due_garbage(1_400, 10)).await.unwrap().is_empty(),
            "not due for the others meanwhile"
        );
        assert_eq!(
            b.read(|r| r.due_garbage(1_600, 10)).await.unwrap(),
            ["blob-1"],
            "due again once a's lease ran out"
        );
        assert_eq!(b.take_garbage(due, 1_600, 500).await.unwrap(), ["blob-1"]);
    }

    /// Counters are deltas until compacted; compacting changes no figure a reader sees.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compacting_counters_changes_no_figure() {
        let Some((pg, a, b)) = two_nodes().await else { return };
        let opts = JobOptions::default();
        let ids = a
            .write(move |tx| {
                let ids = (0..3).map(|i| tx.insert_job(&job(&format!("v{i}"), &opts))).collect::<Result<Vec<_>>>()?;
                tx.put_version(&version("x", "v1", 5))?;
                tx.put_version(&version("y", "v1", 6))?;
                Ok(ids)
            })
            .await
            .unwrap();
        let first = ids[0];
        b.write(move |tx| {
            let mut j = tx.get_job(first)?.ok_or(Error::NoSuchKey)?;
            j.state = crate::replication::JobState::Failed;
            j.last_error = Some("AccessDenied".into());
            tx.update_job(&j)
        })
        .await
        .unwrap();
        b.write(|tx| tx.remove_version("b", "y", "v1").map(drop)).await.unwrap();
        let figures = |s: Arc<PgStore>| async move {
            s.read(|r| Ok((r.dest_stats("b")?, r.bucket_usage("b")?, r.due_destinations("eu")?, r.peers_with_jobs()?)))
                .await
                .unwrap()
        };
        let before = figures(a.clone()).await;
        assert_eq!((before.0[0].pending_ops, before.0[0].failed_ops), (2, 1));
        assert_eq!(before.0[0].last_error.as_deref(), Some("AccessDenied"));
        assert_eq!(before.1, BucketUsage { versions: 1, bytes: 3 });
        a.compact().await.unwrap();
        assert_eq!(figures(b.clone()).await, before);
        let client = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(client.1);
        let left: i64 = client.0.query_one("SELECT count(*) FROM repl_dest_deltas", &[]).await.unwrap().get(0);
        assert_eq!(left, 0, "folded");
    }

    /// Waits (at most 30 s) until a statement like `query` waits for a lock, or `over` holds;
    /// returns whether one waits.
    async fn waits_for_a_lock(pg: &TestCluster, query: &str, over: impl Fn() -> bool) -> bool {
        let (watch, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let sql = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1";
        for _ in 0..3_000 {
            if watch.query_one(sql, &[&query]).await.unwrap().get::<_, i64>(0) > 0 {
                return true;
            }
            if over() {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        false
    }

    /// An operator's pause on one node while the other node is in the middle of a step of the
    /// same backfill: the pause holds (the step, which read the backfill running, does not
    /// write it back running, or done) and the step's work is undone, to be done on resume.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pause_is_not_undone_by_a_step_in_flight() {
        use crate::replication::{BackfillAction, BackfillState, StatusFilter, backfill};
        let Some((pg, a, b)) = two_nodes().await else { return };
        let id = a.write(|tx| backfill::start(tx, "b", None, "", StatusFilter::All, None)).await.unwrap();
        a.write(move |tx| backfill::counted(tx, id, (0, 0))).await.unwrap();
        // The step reads the backfill, then waits for the bucket's row, held here.
        let (mut other, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let held = other.transaction().await.unwrap();
        held.query("SELECT name FROM buckets WHERE name = 'b' FOR UPDATE", &[]).await.unwrap();
        let step = {
            let a = a.clone();
            tokio::spawn(async move { a.write(move |tx| backfill::step(tx, id, 100, 1_000)).await })
        };
        assert!(waits_for_a_lock(&pg, "%FROM buckets%", || false).await, "the step waits for the bucket");
        let paused = b.write(move |tx| backfill::control(tx, "b", id, BackfillAction::Pause)).await.unwrap();
        assert_eq!(paused.state, BackfillState::Paused);
        held.rollback().await.unwrap();
        let stepped = step.await.unwrap();
        assert!(matches!(stepped, Err(Error::Busy(_))), "the step gives way: {stepped:?}");
        let now = a.read(move |r| r.get_backfill(id)).await.unwrap().unwrap();
        assert_eq!((now.state, now.finished_us), (BackfillState::Paused, None));
        let resumed = b.write(move |tx| backfill::control(tx, "b", id, BackfillAction::Resume)).await.unwrap();
        assert_eq!(resumed.state, BackfillState::Counting, "an empty count is taken again");
        a.write(move |tx| backfill::counted(tx, id, (0, 0))).await.unwrap();
        let stepped = a.write(move |tx| backfill::step(tx, id, 100, 1_000)).await.unwrap();
        assert_eq!(stepped, backfill::BackfillStep::Finished, "done once resumed");
    }

    /// Two changes of one bucket's configuration at once, on two nodes, each reading the
    /// bucket and writing it back: the second waits for the first and changes what the first
    /// wrote, so neither change is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_changes_of_a_bucket_are_both_kept() {
        let Some((pg, a, b)) = two_nodes().await else { return };
        let (read_tx, read_rx) = tokio::sync::oneshot::channel::<()>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let first = {
            let a = a.clone();
            tokio::spawn(async move {
                a.write(move |tx| {
                    let mut bk = tx.lock_bucket("b")?.ok_or(Error::NoSuchBucket)?;
                    let _ = read_tx.send(());
                    go_rx.recv().map_err(|e| Error::Other(e.to_string()))?;
                    bk.tagging = Some(vec![("team".into(), "a".into())]);
                    tx.put_bucket(&bk)
                })
                .await
            })
        };
        read_rx.await.unwrap();
        let second = {
            let b = b.clone();
            tokio::spawn(async move {
                b.write(|tx| {
                    let mut bk = tx.lock_bucket("b")?.ok_or(Error::NoSuchBucket)?;
                    bk.versioning = Versioning::Suspended;
                    tx.put_bucket(&bk)
                })
                .await
            })
        };
        // The second change either waits for the first (its row) or is already over.
        waits_for_a_lock(&pg, "%FROM buckets%", || second.is_finished()).await;
        go_tx.send(()).unwrap();
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        let bk = a.read(|r| r.get_bucket("b")).await.unwrap().unwrap();
        assert_eq!(
            (bk.tagging, bk.versioning),
            (Some(vec![("team".into(), "a".into())]), Versioning::Suspended),
            "both changes kept"
        );
    }

    /// One name created on two nodes at once: the second creation waits for the first, then
    /// creates nothing; the first creator keeps the bucket.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_name_created_on_two_nodes_at_once_has_one_owner() {
        let Some((pg, a, b)) = two_nodes().await else { return };
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (made_tx, made_rx) = tokio::sync::oneshot::channel::<()>();
        let owned_by = |id: &str| {
            let mut bk = bucket("c");
            bk.owner = Owner { id: id.into(), display_name: id.into() };
            bk
        };
        let (first_bucket, second_bucket) = (owned_by("alice"), owned_by("mallory"));
        let first = {
            let a = a.clone();
            tokio::spawn(async move {
                a.write(move |tx| {
                    let made = tx.insert_bucket(&first_bucket)?;
                    let _ = made_tx.send(());
                    go_rx.recv().map_err(|e| Error::Other(e.to_string()))?;
                    Ok(made)
                })
                .await
            })
        };
        made_rx.await.unwrap();
        let second = {
            let b = b.clone();
            tokio::spawn(async move { b.write(move |tx| tx.insert_bucket(&second_bucket)).await })
        };
        waits_for_a_lock(&pg, "%INTO buckets%", || second.is_finished()).await;
        go_tx.send(()).unwrap();
        assert!(first.await.unwrap().unwrap(), "the first creates it");
        assert!(!second.await.unwrap().unwrap(), "the second finds it taken");
        let bk = b.read(|r| r.get_bucket("c")).await.unwrap().unwrap();
        assert_eq!(bk.owner.id, "alice");
    }

    /// A bucket deleted on one node while a write on another has found it: the delete waits
    /// for that write, then finds its version and refuses.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bucket_is_not_deleted_under_a_write() {
        let Some((_pg, a, b)) = two_nodes().await else { return };
        let (found_tx, found_rx) = tokio::sync::oneshot::channel::<()>();
        let write = {
            let a = a.clone();
            tokio::spawn(async move {
                a.write(move |tx| {
                    tx.get_bucket("b")?.ok_or(Error::NoSuchBucket)?;
                    let _ = found_tx.send(());
                    // The delete below starts meanwhile (and must wait for this transaction).
                    std::thread::sleep(std::time::Duration::from_millis(300));
                    tx.put_version(&version("k", "v1", 5))
                })
                .await
            })
        };
        found_rx.await.unwrap();
        let deleted = b
            .write(|tx| {
                if tx.bucket_has_versions("b")? {
                    return Err(Error::BucketNotEmpty);
                }
                tx.delete_bucket("b")
            })
            .await;
        write.await.unwrap().unwrap();
        assert!(matches!(deleted, Err(Error::BucketNotEmpty)), "{deleted:?}");
        assert!(b.read(|r| r.get_bucket("b")).await.unwrap().is_some());
    }
}
