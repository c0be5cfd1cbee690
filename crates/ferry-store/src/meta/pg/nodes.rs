//! The nodes of a region on PostgreSQL: joining, fencing, and the closed timestamps that make
//! the region's committed clock exact across nodes.
//!
//! # Invariants
//! 1. A node commits only while its epoch is current: every write transaction locks its
//!    connection's `node_slots` row and checks the epoch (the store does it in the transaction's
//!    last statement, `seal` in `store.rs`; [`Node::check_slot`] is the same check for code that
//!    runs its own transaction). Fencing a node
//!    bumps those epochs with an UPDATE that waits for the node's open transactions, so once
//!    [`fence`] returns the node can commit nothing more, even if it wakes up from a pause.
//! 2. A node's published `closed_us` only grows, and no commit of that node is at or below it
//!    (it comes from [`ferry_core::time::NodeClock::closed`], published after the commits
//!    below it were acknowledged). A fenced node cannot publish: its row is gone and the
//!    publishing UPDATE checks its epoch.
//! 3. The region's committed clock ([`committed_clock`]) is the minimum `closed_us` over the
//!    nodes that have a row: a node that stopped heartbeating holds it back (late, never
//!    wrong) until it is fenced and its row removed.
//! 4. A joining node's times start above every closed timestamp published so far (the join
//!    locks the clock rows while it reads them), so no T already reported is undercut, and
//!    above every commit time an earlier life of the same node sealed (`node_slots.high_us`,
//!    written by the last statement of each of its write transactions), so a node's times
//!    keep increasing across a crash and restart.
//!
//! # Crash behaviour
//! A node that dies leaves its rows: its clock row holds the watermark back, its slots stay
//! at its epoch and its job leases stand, until another node fences it ([`fence`], once its
//! heartbeat is older than the timeout), which frees them all. A node restarted with the same
//! id joins with a new epoch, which fences its previous life; a node that finds itself fenced
//! while it runs (a pause, a cut link to the database) joins again the same way ([`Life`]).

use tokio_postgres::GenericClient;

use super::pg;
use crate::error::{Error, Result};

/// This process's membership of the region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    pub epoch: i64,
    /// Writer slots (connections) it joined with.
    pub slots: i32,
    /// The node's clock must hand out times above this.
    pub floor: i64,
}

/// This process's current life in the region: the [`Node`] its new transactions, leases and
/// intents use. Replaced by the heartbeat when the node, fenced by the others (after a pause,
/// or cut from the database), rejoins as a new epoch; a transaction keeps the life it started
/// with, so one begun before the fence is refused at its seal whatever happens meanwhile.
#[derive(Debug, Clone)]
pub struct Life(std::sync::Arc<std::sync::Mutex<std::sync::Arc<Node>>>);

impl Life {
    #[must_use]
    pub fn new(node: Node) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(std::sync::Arc::new(node))))
    }

    /// The node as of now.
    #[must_use]
    pub fn current(&self) -> std::sync::Arc<Node> {
        ferry_core::sync::lock(&self.0).clone()
    }

    /// The node rejoined: new transactions use `node`.
    pub(super) fn replace(&self, node: Node) {
        *ferry_core::sync::lock(&self.0) = std::sync::Arc::new(node);
    }
}

/// The answer to a node whose epoch is no longer current.
pub(super) fn fenced(id: &str) -> Error {
    Error::Unavailable(format!("node {id} was fenced by another node of the region: it must rejoin"))
}

/// A write or a beat refused because a newer build migrated the database while this node ran.
pub(super) fn newer_schema(id: &str) -> Error {
    Error::Unavailable(format!(
        "node {id} stops writing: the metadata schema is newer than this build's ({}); a newer build migrated it \
         while this node ran. Start this node with that build",
        super::SCHEMA_VERSION
    ))
}

/// Refuses (with [`newer_schema`]) when the database's schema is newer than this build's.
///
/// # Errors
/// That, or database errors.
pub async fn check_schema(client: &impl GenericClient, id: &str) -> Result<()> {
    if super::schema_of(client).await? > super::SCHEMA_VERSION {
        return Err(newer_schema(id));
    }
    Ok(())
}

/// Joins node `id` with `slots` writer connections at wall time `now_us`: a new epoch (fencing
/// any earlier life of the same id), its slot rows, and its clock row with a floor above every
/// closed timestamp published so far. A node fenced while it runs joins again the same way.
///
/// # Errors
/// Database errors.
pub async fn join(client: &mut tokio_postgres::Client, id: &str, slots: i32, now_us: i64) -> Result<Node> {
    let tx = client.transaction().await.map_err(pg)?;
    // No node may advance its closed time while the floor is read (invariant 4).
    tx.query("SELECT node_id FROM node_clocks FOR UPDATE", &[]).await.map_err(pg)?;
    let max_closed: Option<i64> = tx.query_one("SELECT max(closed_us) FROM node_clocks", &[]).await.map_err(pg)?.get(0);
    // And above every time an earlier life of this node handed out (sealed with its commits).
    let own_high: Option<i64> =
        tx.query_one("SELECT max(high_us) FROM node_slots WHERE node_id = $1", &[&id]).await.map_err(pg)?.get(0);
    let floor = max_closed.map_or(now_us, |m| m.saturating_add(2).max(now_us)).max(own_high.map_or(0, |h| h.saturating_add(1)));
    let epoch: i64 = tx
        .query_one(
            "INSERT INTO nodes (node_id, epoch, state, joined_us) VALUES ($1, 1, 'live', $2)
             ON CONFLICT (node_id) DO UPDATE SET epoch = nodes.epoch + 1, state = 'live', joined_us = $2
             RETURNING epoch",
            &[&id, &now_us],
        )
        .await
        .map_err(pg)?
        .get(0);
    // Waits for the previous life's open transactions, as fencing does.
    tx.execute("DELETE FROM node_slots WHERE node_id = $1 AND slot >= $2", &[&id, &slots]).await.map_err(pg)?;
    for slot in 0..slots {
        tx.execute(
            "INSERT INTO node_slots (node_id, slot, epoch) VALUES ($1, $2, $3)
             ON CONFLICT (node_id, slot) DO UPDATE SET epoch = $3",
            &[&id, &slot, &epoch],
        )
        .await
        .map_err(pg)?;
    }
    tx.execute(
        "INSERT INTO node_clocks (node_id, closed_us, heartbeat_us) VALUES ($1, $2, $3)
         ON CONFLICT (node_id) DO UPDATE SET closed_us = $2, heartbeat_us = $3",
        &[&id, &(floor - 1), &now_us],
    )
    .await
    .map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    Ok(Node { id: id.to_owned(), epoch, slots, floor })
}

impl Node {
    /// Locks the slot's row of connection `slot` until the transaction ends, and refuses to go
    /// on if the node was fenced: the fencing check for code that runs its own transaction (the
    /// store's write transactions make it in their last statement instead, with the slot's
    /// high-water time).
    ///
    /// # Errors
    /// The node was fenced; database errors.
    pub async fn check_slot(&self, tx: &impl GenericClient, slot: i32) -> Result<()> {
        let row = tx
            .query_opt(
                "SELECT epoch FROM node_slots WHERE node_id = $1 AND slot = $2 FOR UPDATE",
                &[&self.id, &slot],
            )
            .await
            .map_err(pg)?;
        match row.map(|r| r.get::<_, i64>(0)) {
            Some(e) if e == self.epoch => Ok(()),
            _ => Err(fenced(&self.id)),
        }
    }

    /// Publishes the node's closed timestamp and heartbeat in one statement, and returns the
    /// highest closed timestamp of the region (for the node's clock to observe).
    ///
    /// # Errors
    /// The node was fenced; database errors.
    pub async fn publish(&self, client: &impl GenericClient, closed_us: i64, heartbeat_us: i64) -> Result<i64> {
        let row = client
            .query_opt(
                "WITH me AS (
                     UPDATE node_clocks SET closed_us = GREATEST(closed_us, $2), heartbeat_us = $3
                     WHERE node_id = $1 AND EXISTS (SELECT 1 FROM nodes WHERE node_id = $1 AND epoch = $4 AND state = 'live')
                     RETURNING closed_us)
                 SELECT GREATEST((SELECT max(closed_us) FROM node_clocks), (SELECT closed_us FROM me)) FROM me",
                &[&self.id, &closed_us, &heartbeat_us, &self.epoch],
            )
            .await
            .map_err(pg)?;
        row.map(|r| r.get::<_, i64>(0)).ok_or_else(|| fenced(&self.id))
    }
}

/// The region's committed clock: every commit at or below it is visible to a snapshot that
/// reads it, and every later commit gets a larger time (the minimum closed timestamp over the
/// nodes with a clock row). `None` before any node joined.
///
/// # Errors
/// Database errors.
pub async fn committed_clock(client: &impl GenericClient) -> Result<Option<i64>> {
    Ok(client.query_one("SELECT min(closed_us) FROM node_clocks", &[]).await.map_err(pg)?.get(0))
}

/// Fences node `id` if its last heartbeat is older than `stale_before_us`: bumps its epoch and
/// its slots' (waiting for its open transactions to end), marks it gone, removes its clock row
/// and frees its job leases. Returns whether it was fenced.
///
/// # Errors
/// Database errors.
pub async fn fence(client: &mut tokio_postgres::Client, id: &str, stale_before_us: i64) -> Result<bool> {
    let tx = client.transaction().await.map_err(pg)?;
    let stale = tx
        .query_opt(
            "SELECT 1 FROM node_clocks WHERE node_id = $1 AND heartbeat_us < $2 FOR UPDATE",
            &[&id, &stale_before_us],
        )
        .await
        .map_err(pg)?;
    if stale.is_none() {
        return Ok(false);
    }
    tx.execute("UPDATE node_slots SET epoch = epoch + 1 WHERE node_id = $1", &[&id]).await.map_err(pg)?;
    tx.execute("UPDATE nodes SET epoch = epoch + 1, state = 'gone' WHERE node_id = $1", &[&id]).await.map_err(pg)?;
    tx.execute("DELETE FROM node_clocks WHERE node_id = $1", &[&id]).await.map_err(pg)?;
    // Its job leases are free at once (failover in one heartbeat timeout, not a lease TTL);
    // a late completion under its old tokens matches nothing.
    tx.execute(
        "UPDATE repl_jobs SET lease_owner = NULL, lease_token = NULL, lease_until_us = NULL WHERE lease_owner = $1",
        &[&id],
    )
    .await
    .map_err(pg)?;
    tx.execute(
        "UPDATE backfills SET lease_owner = NULL, lease_token = NULL, lease_until_us = NULL WHERE lease_owner = $1",
        &[&id],
    )
    .await
    .map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    Ok(true)
}

/// A node as `ferry region nodes` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: String,
    pub epoch: i64,
    pub state: String,
    pub closed_us: Option<i64>,
    pub heartbeat_us: Option<i64>,
    /// Replication jobs it holds a live lease on at the time asked.
    pub leases: i64,
}

/// Every node the region has known, with its clock when it has one and the job leases it
/// holds at `now_us`.
///
/// # Errors
/// Database errors.
pub async fn list(client: &impl GenericClient, now_us: i64) -> Result<Vec<NodeStatus>> {
    let rows = client
        .query(
            "SELECT n.node_id, n.epoch, n.state, c.closed_us, c.heartbeat_us,
                    (SELECT count(*) FROM repl_jobs j WHERE j.lease_owner = n.node_id AND j.lease_until_us >= $1)
             FROM nodes n LEFT JOIN node_clocks c USING (node_id) ORDER BY n.node_id",
            &[&now_us],
        )
        .await
        .map_err(pg)?;
    Ok(rows
        .iter()
        .map(|r| NodeStatus {
            id: r.get(0),
            epoch: r.get(1),
            state: r.get(2),
            closed_us: r.get(3),
            heartbeat_us: r.get(4),
            leases: r.get(5),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::super::PgMeta;
    use super::super::test_cluster::TestCluster;
    use super::*;

    /// The tokio-postgres client of a pooled connection.
    fn raw(o: &mut deadpool_postgres::Object) -> &mut tokio_postgres::Client {
        o
    }

    async fn open() -> Option<(TestCluster, PgMeta)> {
        let cluster = TestCluster::start(&[])?;
        let meta = PgMeta::open(&cluster.url(), 4, false).await.unwrap();
        Some((cluster, meta))
    }

    /// A node joins above every closed time published; the region's clock is the minimum; a
    /// node that joins again under the same id fences its earlier life.
    #[tokio::test]
    async fn joining_starts_above_every_closed_time_and_fences_an_earlier_life() {
        let Some((_pg, meta)) = open().await else { return };
        let mut pooled = meta.client().await.unwrap();
        let c = raw(&mut pooled);
        let a = join(c, "a", 2, 1_000).await.unwrap();
        assert_eq!((a.epoch, a.floor), (1, 1_000));
        assert_eq!(a.publish(&*c, 5_000, 1_100).await.unwrap(), 5_000);
        let b = join(c, "b", 1, 2_000).await.unwrap();
        assert_eq!(b.floor, 5_002, "above a's closed time, though b's wall clock is behind");
        assert_eq!(committed_clock(&*c).await.unwrap(), Some(5_000));
        assert_eq!(b.publish(&*c, 7_000, 2_100).await.unwrap(), 7_000);
        assert_eq!(
            a.publish(&*c, 4_000, 1_200).await.unwrap(),
            7_000,
            "a's closed time never goes back; b's is the max"
        );
        assert_eq!(committed_clock(&*c).await.unwrap(), Some(5_000));
        let a2 = join(c, "a", 2, 3_000).await.unwrap();
        assert_eq!(a2.epoch, 2);
        assert!(a2.floor > 7_000);
        let tx = c.transaction().await.unwrap();
        assert!(a.check_slot(&tx, 0).await.is_err(), "the earlier life is fenced");
        a2.check_slot(&tx, 1).await.unwrap();
        drop(tx);
        assert!(a.publish(&*c, 9_000, 3_100).await.is_err(), "and cannot publish");
        let listed = list(&*c, 0).await.unwrap();
        assert_eq!(listed.iter().map(|n| (n.id.as_str(), n.epoch)).collect::<Vec<_>>(), [("a", 2), ("b", 1)]);
    }

    /// Fencing waits for the node's open write transaction (its commit stands), then the node
    /// can neither write nor publish, and the region's clock no longer waits for it.
    #[tokio::test]
    async fn fencing_waits_for_the_open_transaction_then_shuts_the_node_out() {
        let Some((_pg, meta)) = open().await else { return };
        let mut pooled = meta.client().await.unwrap();
        let c = raw(&mut pooled);
        let a = join(c, "a", 1, 1_000).await.unwrap();
        let b = join(c, "b", 1, 1_000).await.unwrap();
        b.publish(&*c, 50_000, 50_000).await.unwrap();
        // a is writing: its slot is locked by its transaction.
        let mut writer_conn = meta.client().await.unwrap();
        let writer = raw(&mut writer_conn);
        let tx = writer.transaction().await.unwrap();
        a.check_slot(&tx, 0).await.unwrap();
        tx.execute("INSERT INTO settings (k, v) VALUES ('written-by-a', 'yes')", &[]).await.unwrap();
        // b fences a (its heartbeat, 1,000, is older than 10,000).
        let mut fencer = meta.client().await.unwrap();
        let fencing = tokio::spawn(async move { fence(raw(&mut fencer), "a", 10_000).await });
        // Barrier: the fence is waiting on a's lock.
        let watcher = meta.client().await.unwrap();
        loop {
            let waiting: i64 = watcher.query_one("SELECT count(*) FROM pg_locks WHERE NOT granted", &[]).await.unwrap().get(0);
            if waiting > 0 {
                break;
            }
            assert!(!fencing.is_finished(), "the fence did not wait for a's transaction");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(!fencing.is_finished());
        tx.commit().await.unwrap();
        assert!(fencing.await.unwrap().unwrap(), "fenced");
        let kept: Option<String> =
            c.query_opt("SELECT v FROM settings WHERE k = 'written-by-a'", &[]).await.unwrap().map(|r| r.get(0));
        assert_eq!(kept.as_deref(), Some("yes"), "a commit made before the fence stands");
        let tx = writer.transaction().await.unwrap();
        let refused = a.check_slot(&tx, 0).await.unwrap_err();
        assert!(refused.to_string().contains("fenced"), "{refused}");
        drop(tx);
        assert!(a.publish(&*c, 60_000, 60_000).await.is_err(), "a zombie cannot publish");
        assert_eq!(committed_clock(&*c).await.unwrap(), Some(50_000), "the clock no longer waits for a");
    }

    /// A node that stopped heartbeating holds the region's clock back until it is fenced; a
    /// live node is not fenced.
    #[tokio::test]
    async fn a_silent_node_holds_the_clock_back_until_fenced() {
        let Some((_pg, meta)) = open().await else { return };
        let mut pooled = meta.client().await.unwrap();
        let c = raw(&mut pooled);
        let _a = join(c, "a", 1, 1_000).await.unwrap();
        let b = join(c, "b", 1, 1_500).await.unwrap();
        b.publish(&*c, 9_000, 9_000).await.unwrap();
        assert_eq!(committed_clock(&*c).await.unwrap(), Some(999), "a's join floor, less one");
        assert!(!fence(c, "b", 5_000).await.unwrap(), "b is alive");
        assert!(fence(c, "a", 5_000).await.unwrap());
        assert_eq!(committed_clock(&*c).await.unwrap(), Some(9_000));
        let listed = list(&*c, 0).await.unwrap();
        assert_eq!(listed[0].state, "gone");
        assert_eq!(listed[0].closed_us, None);
    }
}
