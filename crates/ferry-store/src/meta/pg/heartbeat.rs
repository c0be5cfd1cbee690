//! A node's heartbeat in a region on PostgreSQL: a background worker that publishes the node's
//! closed timestamp every beat, moves the node's clock past the region's highest, and fences
//! the nodes that stopped beating.
//!
//! # Invariants
//! 1. What it publishes comes from [`NodeClock::closed`] read at the beat: no commit of this
//!    node is at or below it (the clock's in-flight set says so), so the region's committed
//!    clock never runs ahead of a commit still to come.
//! 2. A node is fenced only after its heartbeat is older than `dead_after` (and [`fence`]
//!    waits for its open transactions); until then it holds the region's clock back, which
//!    makes "replicated up to T" late, never wrong. Only a node whose own beats have all
//!    succeeded for `dead_after` fences others: when the database comes back from an outage,
//!    every node's last beat is old, and the first node back does not fence the others.
//! 3. Every beat renews the node's job leases ([`super::leases::renew`]) for
//!    [`super::JOB_LEASE_US`]: a lease outlives its node's last beat by that long, unless the
//!    node is fenced first (which frees them at once).
//! 4. A node whose build is older than the database's schema (a newer build migrated it while
//!    this node ran) does not beat: it publishes nothing and renews no lease, so the others
//!    fence it after `dead_after` and take its jobs, while its writes are refused at their
//!    seal. It beats again once the schema is its own.
//! 5. When its own publish is refused, the node has been fenced (it paused, or lost the
//!    database, for longer than `dead_after`): it rejoins at once as a new epoch
//!    ([`super::nodes::join`]), its clock moved above the new floor *before* the new life is
//!    installed ([`Life`]), so every time it hands out afterwards is above what the region
//!    reported meanwhile. Transactions begun in the old life keep it and are refused at their
//!    seal; its job leases were freed by the fence (a late completion of a job another node
//!    leased since changes nothing). [`Heartbeat::rejoins`] counts these.
//!
//! # Crash behaviour
//! Nothing lives only here: a node that dies stops beating, is fenced by the others after
//! `dead_after`, and its clock row goes with the fence.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::background::{Worker, WorkerError, WorkerState};
use ferry_core::sync::lock;
use ferry_core::time::{NodeClock, now_micros};
use tokio_util::sync::CancellationToken;

use super::PgMeta;
use super::nodes::{Life, check_schema, fence, join, list};

/// The heartbeat worker of one node.
pub struct Heartbeat {
    meta: Arc<PgMeta>,
    node: Life,
    clock: Arc<Mutex<NodeClock>>,
    every: Duration,
    dead_after: Duration,
    rejoins: Arc<AtomicU64>,
    /// Since when this node's beats have all succeeded (`None` after a failed one).
    healthy_since: Option<std::time::Instant>,
}

impl Heartbeat {
    /// Beats every `every` for `node`, whose commit times `clock` hands out; fences the nodes
    /// silent for longer than `dead_after`.
    #[must_use]
    pub fn new(meta: Arc<PgMeta>, node: Life, clock: Arc<Mutex<NodeClock>>, every: Duration, dead_after: Duration) -> Self {
        Self { meta, node, clock, every, dead_after, rejoins: Arc::new(AtomicU64::new(0)), healthy_since: None }
    }

    /// How many times this node found itself fenced and rejoined.
    #[must_use]
    pub fn rejoins(&self) -> Arc<AtomicU64> {
        self.rejoins.clone()
    }

    /// One beat: publish, observe, fence the silent. Returns false when this node found
    /// itself fenced (it has rejoined as a new epoch).
    ///
    /// # Errors
    /// Database errors (the next beat tries again).
    pub async fn beat(&mut self) -> crate::error::Result<bool> {
        let out = self.beat_once().await;
        if out.is_err() {
            self.healthy_since = None;
        }
        out
    }

    async fn beat_once(&mut self) -> crate::error::Result<bool> {
        let client = self.meta.client().await?;
        let node = self.node.current();
        check_schema(&**client, &node.id).await?;
        let closed = lock(&self.clock).closed();
        let now = now_micros();
        let highest = match node.publish(&**client, closed, now).await {
            Ok(h) => h,
            Err(e) if e.to_string().contains("fenced") => {
                drop(client);
                self.rejoin(node.slots).await?;
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        lock(&self.clock).observe(highest);
        let healthy_since = *self.healthy_since.get_or_insert_with(std::time::Instant::now);
        // The jobs this node is sending stay its own.
        super::leases::renew(&**client, &node.id, now, super::JOB_LEASE_US).await?;
        // Only a node that has itself been beating for `dead_after` judges others silent: after
        // an outage of the database every node's last beat is old, and the first one back
        // must not fence the rest.
        if healthy_since.elapsed() < self.dead_after {
            return Ok(true);
        }
        let dead_before = now - i64::try_from(self.dead_after.as_micros()).unwrap_or(i64::MAX);
        let silent: Vec<String> = list(&**client, now)
            .await?
            .into_iter()
            .filter(|n| n.id != node.id && n.state == "live" && n.heartbeat_us.is_some_and(|h| h < dead_before))
            .map(|n| n.id)
            .collect();
        drop(client);
        for id in silent {
            let mut pooled = self.meta.client().await?;
            let c: &mut tokio_postgres::Client = &mut pooled;
            if fence(c, &id, dead_before).await? {
                tracing::warn!(node = %node.id, fenced = %id, "fenced a node that stopped beating");
            }
        }
        Ok(true)
    }

    /// Joins the region again after a fence: a new epoch, the clock above its floor, then the
    /// new life for new transactions (invariant 5).
    async fn rejoin(&mut self, slots: i32) -> crate::error::Result<()> {
        let id = self.node.current().id.clone();
        tracing::error!(node = %id, "this node was fenced by another node (its writes under way are refused); rejoining");
        let mut pooled = self.meta.client().await?;
        let c: &mut tokio_postgres::Client = &mut pooled;
        let node = join(c, &id, slots, now_micros()).await?;
        lock(&self.clock).observe(node.floor);
        tracing::warn!(node = %id, epoch = node.epoch, "rejoined the region");
        self.node.replace(node);
        self.rejoins.fetch_add(1, Ordering::SeqCst);
        // It judges others only once its own beats have been healthy for `dead_after` again.
        self.healthy_since = None;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Worker for Heartbeat {
    fn name(&self) -> String {
        format!("heartbeat:{}", self.node.current().id)
    }

    async fn work(&mut self, _stop: &CancellationToken) -> Result<WorkerState, WorkerError> {
        // A beat that hangs (a cut link to the database) counts as a failed one.
        let limit = (self.every * 5).max(std::time::Duration::from_secs(2));
        let beat = match tokio::time::timeout(limit, self.beat()).await {
            Ok(b) => b?,
            Err(_) => {
                self.healthy_since = None;
                return Err(crate::Error::Unavailable(format!("heartbeat: no answer from the database in {limit:?}")).into());
            }
        };
        // A node that just rejoined beats again at once (publishing its new life's clock).
        if beat { Ok(WorkerState::Throttled(self.every)) } else { Ok(WorkerState::Busy) }
    }

    async fn wait_for_work(&mut self) -> WorkerState {
        tokio::time::sleep(self.every).await;
        WorkerState::Busy
    }
}

#[cfg(test)]
mod tests {
    use super::super::nodes::committed_clock;
    use super::super::test_cluster::TestCluster;
    use super::*;
    use ferry_core::background::BackgroundRunner;

    async fn clock_now(meta: &PgMeta) -> i64 {
        let c = meta.client().await.unwrap();
        committed_clock(&**c).await.unwrap().unwrap_or(0)
    }

    /// A node whose build is older than the database's schema does not beat (nothing
    /// published, no lease renewed), and says why; it beats again once the schema is its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_of_an_older_build_stops_beating_after_a_migration() {
        let Some(pg) = TestCluster::start(&[]) else { return };
        let meta = Arc::new(PgMeta::open(&pg.url(), 2, false).await.unwrap());
        let mut pooled = meta.client().await.unwrap();
        let c: &mut tokio_postgres::Client = &mut pooled;
        let a = join(c, "a", 1, now_micros()).await.unwrap();
        drop(pooled);
        let clock = Arc::new(Mutex::new(NodeClock::new(a.floor)));
        let mut beat = Heartbeat::new(meta.clone(), Life::new(a), clock, Duration::from_millis(20), Duration::from_secs(10));
        let heartbeat_of_a = async || {
            let c = meta.client().await.unwrap();
            list(&**c, now_micros()).await.unwrap().into_iter().find(|n| n.id == "a").unwrap().heartbeat_us
        };
        let set_schema = async |v: i64| {
            let c = meta.client().await.unwrap();
            c.execute("UPDATE settings SET v = $1 WHERE k = 'schema'", &[&v.to_string()]).await.unwrap();
        };
        assert!(beat.beat().await.unwrap());
        let beaten = heartbeat_of_a().await;
        set_schema(super::super::SCHEMA_VERSION + 1).await;
        let err = beat.beat().await.expect_err("no beat on a newer schema");
        assert!(err.to_string().contains("schema is newer"), "{err}");
        assert_eq!(heartbeat_of_a().await, beaten, "nothing published");
        set_schema(super::super::SCHEMA_VERSION).await;
        assert!(beat.beat().await.unwrap());
        assert!(heartbeat_of_a().await > beaten);
    }

    /// Two nodes beating: the region's clock waits for a commit in flight on one of them while
    /// the other moves on, passes it once it ends; a node that stops beating is fenced by the
    /// other, the clock moves on without it, and its own next beat finds it fenced and rejoins
    /// as a new epoch whose times are above everything the region reported meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_region_clock_waits_for_commits_in_flight_and_for_nothing_dead() {
        let Some(pg) = TestCluster::start(&[]) else { return };
        let meta = Arc::new(PgMeta::open(&pg.url(), 6, false).await.unwrap());
        let (every, dead_after) = (Duration::from_millis(20), Duration::from_millis(400));
        let mut pooled = meta.client().await.unwrap();
        let c: &mut tokio_postgres::Client = &mut pooled;
        let a = join(c, "a", 1, now_micros()).await.unwrap();
        let b = join(c, "b", 1, now_micros()).await.unwrap();
        drop(pooled);
        let (clock_a, clock_b) = (
            Arc::new(Mutex::new(NodeClock::new(a.floor))),
            Arc::new(Mutex::new(NodeClock::new(b.floor))),
        );
        let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
        let runner_a = BackgroundRunner::new(stop_a.clone());
        let life_a = Life::new(a.clone());
        let mut beat_a = Heartbeat::new(meta.clone(), life_a.clone(), clock_a.clone(), every, dead_after);
        let a_rejoins = beat_a.rejoins();
        runner_a.spawn(Heartbeat::new(meta.clone(), life_a.clone(), clock_a.clone(), every, dead_after));
        let runner_b = BackgroundRunner::new(stop_b.clone());
        runner_b.spawn(Heartbeat::new(meta.clone(), Life::new(b.clone()), clock_b.clone(), every, dead_after));
        // A commit in flight on a: the clock stays below it, however far b moves.
        let t = lock(&clock_a).start_commit(0);
        let past_t = lock(&clock_b).start_commit(t + 1_000);
        lock(&clock_b).end_commit(past_t);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            // Barrier: b has published past t.
            let c = meta.client().await.unwrap();
            let b_closed = list(&**c, now_micros()).await.unwrap().into_iter().find(|n| n.id == "b").and_then(|n| n.closed_us);
            if b_closed.is_some_and(|cl| cl > t) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "b never published past t");
            tokio::time::sleep(every).await;
        }
        assert!(clock_now(&meta).await < t, "the region's clock waits for a's commit in flight");
        lock(&clock_a).end_commit(t);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while clock_now(&meta).await < t {
            assert!(std::time::Instant::now() < deadline, "the clock never passed t");
            tokio::time::sleep(every).await;
        }
        // a stops beating: b fences it once its heartbeat is old enough.
        stop_a.cancel();
        runner_a.shutdown(Duration::from_secs(5)).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let c = meta.client().await.unwrap();
            let a_row = list(&**c, now_micros()).await.unwrap().into_iter().find(|n| n.id == "a").unwrap();
            if a_row.state == "gone" {
                assert_eq!((a_row.epoch, a_row.closed_us), (2, None));
                break;
            }
            assert!(std::time::Instant::now() < deadline, "a was never fenced");
            tokio::time::sleep(every).await;
        }
        // The clock moves on with b alone; a's next beat finds it fenced.
        let before = clock_now(&meta).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while clock_now(&meta).await <= before {
            assert!(std::time::Instant::now() < deadline, "the clock stopped with a gone");
            tokio::time::sleep(every).await;
        }
        let reported = clock_now(&meta).await;
        assert!(!beat_a.beat().await.unwrap(), "a's beat finds it fenced");
        assert_eq!(a_rejoins.load(Ordering::SeqCst), 1);
        let again = life_a.current();
        assert_eq!(again.epoch, 3, "joined, fenced (2), rejoined");
        let c = meta.client().await.unwrap();
        let row = list(&**c, now_micros()).await.unwrap().into_iter().find(|n| n.id == "a").unwrap();
        assert_eq!((row.epoch, row.state.as_str()), (3, "live"));
        drop(c);
        let t = lock(&clock_a).start_commit(0);
        assert!(t > reported, "a's new times are above what the region reported while it was out");
        lock(&clock_a).end_commit(t);
        // The old life is refused at its seal, the new one is not.
        let mut pooled = meta.client().await.unwrap();
        let c: &mut tokio_postgres::Client = &mut pooled;
        let tx = c.transaction().await.unwrap();
        assert!(a.check_slot(&tx, 0).await.is_err(), "a transaction of the fenced life is refused");
        assert!(again.check_slot(&tx, 0).await.is_ok(), "the new life commits");
        tx.rollback().await.unwrap();
        stop_b.cancel();
        runner_b.shutdown(Duration::from_secs(5)).await;
    }
}
