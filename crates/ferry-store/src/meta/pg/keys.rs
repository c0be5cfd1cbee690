//! Per-key order across nodes: the `key_heads` row each write transaction takes for its key.
//!
//! # Invariants
//! 1. [`lock_key`] is one statement (an upsert) that locks the key's row until the transaction
//!    ends and hands out the key's next sequence number: writers of one key, on any node,
//!    run one after the other, and their sequence numbers follow their commit order.
//! 2. It returns the time of the key's latest version; the writer's commit time is taken after
//!    it (`NodeClock::start_commit(after)`), so a key's versions order by time on every node
//!    whatever the nodes' clock skew.
//! 3. Writers of different keys never wait for each other here.

use tokio_postgres::GenericClient;

use super::pg;
use crate::error::Result;

/// The key's head as a writer holds it: its sequence number, and the latest version's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyHead {
    pub seq: i64,
    pub latest_mtime_us: i64,
}

/// Locks a key's row (`$1` bucket, `$2` key) and takes its next sequence number; returns the
/// number and the key's latest version time.
pub(super) const LOCK_KEY_SQL: &str = "INSERT INTO key_heads (bucket, key, seq, latest_mtime_us) VALUES ($1, $2, 1, 0) \
     ON CONFLICT (bucket, key) DO UPDATE SET seq = key_heads.seq + 1 RETURNING seq, latest_mtime_us";

/// Records the time (`$3`) of the key's new latest version.
pub(super) const SET_LATEST_SQL: &str =
    "UPDATE key_heads SET latest_mtime_us = GREATEST(latest_mtime_us, $3) WHERE bucket = $1 AND key = $2";

/// Locks `key` of `bucket` for the enclosing transaction and takes its next sequence number.
///
/// # Errors
/// Database errors.
pub async fn lock_key(tx: &impl GenericClient, bucket: &str, key: &[u8]) -> Result<KeyHead> {
    let row = tx.query_one(LOCK_KEY_SQL, &[&bucket, &key]).await.map_err(pg)?;
    Ok(KeyHead { seq: row.get(0), latest_mtime_us: row.get(1) })
}

/// Records the time of the key's new latest version (in the same transaction, after
/// [`lock_key`]).
///
/// # Errors
/// Database errors.
pub async fn set_latest(tx: &impl GenericClient, bucket: &str, key: &[u8], mtime_us: i64) -> Result<()> {
    tx.execute(SET_LATEST_SQL, &[&bucket, &key, &mtime_us]).await.map_err(pg)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ferry_core::time::NodeClock;

    use super::super::PgMeta;
    use super::super::test_cluster::TestCluster;
    use super::*;

    /// Two writers of one key (as on two nodes): the second waits for the first's commit, gets
    /// the next sequence number and the first's time, and takes its own time after it even
    /// with a clock far behind; a writer of another key does not wait.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_of_a_key_take_turns_and_order_by_time() {
        let Some(pg) = TestCluster::start(&[]) else { return };
        let meta = PgMeta::open(&pg.url(), 4, false).await.unwrap();
        let mut one = meta.client().await.unwrap();
        let one: &mut tokio_postgres::Client = &mut one;
        let first = one.transaction().await.unwrap();
        let head = lock_key(&first, "b", b"k").await.unwrap();
        assert_eq!(head, KeyHead { seq: 1, latest_mtime_us: 0 });
        // Node 1's clock is ahead: its version is at t1.
        let mut ahead = NodeClock::new(ferry_core::time::now_micros() + 10_000_000);
        let t1 = ahead.start_commit(head.latest_mtime_us);
        set_latest(&first, "b", b"k", t1).await.unwrap();
        // Node 2 writes the same key: it waits.
        let meta = std::sync::Arc::new(meta);
        let m2 = meta.clone();
        let second = tokio::spawn(async move {
            let mut two = m2.client().await.unwrap();
            let two: &mut tokio_postgres::Client = &mut two;
            let tx = two.transaction().await.unwrap();
            let head = lock_key(&tx, "b", b"k").await.unwrap();
            // Node 2's clock is behind: still after the key's latest time.
            let mut behind = NodeClock::new(0);
            let t2 = behind.start_commit(head.latest_mtime_us);
            set_latest(&tx, "b", b"k", t2).await.unwrap();
            tx.commit().await.unwrap();
            (head, t2)
        });
        let watcher = meta.client().await.unwrap();
        loop {
            let waiting: i64 = watcher.query_one("SELECT count(*) FROM pg_locks WHERE NOT granted", &[]).await.unwrap().get(0);
            if waiting > 0 {
                break;
            }
            assert!(!second.is_finished(), "the second writer of the key did not wait");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Another key's writer goes through meanwhile.
        let mut three = meta.client().await.unwrap();
        let three: &mut tokio_postgres::Client = &mut three;
        let other = three.transaction().await.unwrap();
        let z =
            tokio::time::timeout(Duration::from_secs(30), lock_key(&other, "b", b"z")).await.expect("another key does not wait");
        assert_eq!(z.unwrap().seq, 1);
        other.commit().await.unwrap();
        assert!(!second.is_finished());
        first.commit().await.unwrap();
        let (head, t2) = second.await.unwrap();
        assert_eq!(head, KeyHead { seq: 2, latest_mtime_us: t1 });
        assert!(t2 > t1, "the later write of the key is later in time, whatever the clocks");
    }
}
