//! Replication jobs claimed by lease, for a region of several nodes on PostgreSQL.
//!
//! # Invariants
//! 1. A claim is one short autocommit statement: it picks runnable jobs with
//!    `FOR UPDATE SKIP LOCKED` (a job another node is claiming is skipped, never waited for)
//!    and writes owner, a fresh token and an expiry. No transaction stays open during a
//!    transfer.
//! 2. Per-key order across nodes: a job is claimable only when no earlier job of the same key
//!    to the same destination is pending (leased or not: a leased job is still pending), by
//!    the key's sequence number (`key_seq`, taken under the key's row lock when the change was
//!    written).
//! 3. Progress, completion and failure change a job only `WHERE lease_token = mine`: a node
//!    that lost its lease (paused, partitioned, then woken) changes nothing; its late
//!    delivery is a duplicate the destination ignores (applying a replica is idempotent).
//! 4. A node renews every lease it holds in one statement per heartbeat; a lease not renewed
//!    expires and the job is claimable again. Neither a claim nor a renewal waits for a job
//!    row another transaction holds (`SKIP LOCKED`): it is skipped, and taken or renewed next
//!    time.
//!
//! Lease columns are not indexed, so claims and renewals are HOT updates of `repl_jobs`.

use tokio_postgres::GenericClient;

use super::pg;
use crate::error::Result;

/// A job as a claim returns it: what to send, and the lease that guards its completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub id: i64,
    pub bucket: String,
    pub key: Vec<u8>,
    pub version_id: String,
    pub token: i64,
    pub until_us: i64,
}

/// Claims up to `limit` runnable jobs to `(peer, dest_bucket)` for `node` at `now_us`, for
/// `ttl_us`: pending, due, not leased (or their lease expired), first of their key, by
/// priority then age.
///
/// # Errors
/// Database errors.
#[allow(clippy::too_many_arguments)] // one statement's parameters
pub async fn claim(
    client: &impl GenericClient,
    peer: &str,
    dest_bucket: &str,
    node: &str,
    now_us: i64,
    ttl_us: i64,
    limit: i64,
) -> Result<Vec<Claimed>> {
    let rows = client
        .query(
            "WITH c AS (
                 SELECT j.id FROM repl_jobs j
                 WHERE j.peer = $1 AND j.dest_bucket = $2 AND j.state = 0 AND j.next_attempt_us <= $4
                   AND (j.lease_until_us IS NULL OR j.lease_until_us < $4)
                   AND NOT EXISTS (
                       SELECT 1 FROM repl_jobs e
                       WHERE e.peer = j.peer AND e.dest_bucket = j.dest_bucket AND e.bucket = j.bucket
                         AND e.key = j.key AND e.state = 0 AND e.key_seq < j.key_seq)
                 ORDER BY j.priority, j.id
                 LIMIT $6
                 FOR UPDATE OF j SKIP LOCKED)
             UPDATE repl_jobs r
             SET lease_owner = $3, lease_token = nextval('lease_tokens'), lease_until_us = $4 + $5
             FROM c WHERE r.id = c.id
             RETURNING r.id, r.bucket, r.key, r.version_id, r.lease_token, r.lease_until_us",
            &[&peer, &dest_bucket, &node, &now_us, &ttl_us, &limit],
        )
        .await
        .map_err(pg)?;
    let mut out: Vec<Claimed> = rows
        .iter()
        .map(|r| Claimed {
            id: r.get(0),
            bucket: r.get(1),
            key: r.get(2),
            version_id: r.get(3),
            token: r.get(4),
            until_us: r.get(5),
        })
        .collect();
    out.sort_by_key(|c| c.id);
    Ok(out)
}

/// Extends every lease `node` still holds to `now_us + ttl_us`; returns how many. A job row
/// another transaction holds (the node completing it, say) is skipped this beat rather than
/// waited for: the next beat renews it, long before the lease runs out.
///
/// # Errors
/// Database errors.
pub async fn renew(client: &impl GenericClient, node: &str, now_us: i64, ttl_us: i64) -> Result<u64> {
    client
        .execute(
            "WITH c AS (SELECT id FROM repl_jobs WHERE lease_owner = $1 AND lease_until_us >= $2 FOR UPDATE SKIP LOCKED)
             UPDATE repl_jobs r SET lease_until_us = $2 + $3 FROM c WHERE r.id = c.id",
            &[&node, &now_us, &ttl_us],
        )
        .await
        .map_err(pg)
}

/// Records a transfer's progress (a multipart upload's state) under the lease; false when the
/// lease was lost.
///
/// # Errors
/// Database errors.
pub async fn save_progress(client: &impl GenericClient, id: i64, token: i64, progress: &str) -> Result<bool> {
    let n = client
        .execute(
            "UPDATE repl_jobs SET progress = $3 WHERE id = $1 AND lease_token = $2",
            &[&id, &token, &progress],
        )
        .await
        .map_err(pg)?;
    Ok(n == 1)
}

/// Removes a delivered job under its lease; false when the lease was lost (another node holds
/// the job now, and its delivery counts).
///
/// # Errors
/// Database errors.
pub async fn complete(client: &impl GenericClient, id: i64, token: i64) -> Result<bool> {
    let n = client.execute("DELETE FROM repl_jobs WHERE id = $1 AND lease_token = $2", &[&id, &token]).await.map_err(pg)?;
    Ok(n == 1)
}

/// Gives a job back after a transient failure: due again at `next_attempt_us`, with the error
/// and one more attempt; false when the lease was lost.
///
/// # Errors
/// Database errors.
pub async fn retry_later(client: &impl GenericClient, id: i64, token: i64, next_attempt_us: i64, error: &str) -> Result<bool> {
    let n = client
        .execute(
            "UPDATE repl_jobs SET lease_owner = NULL, lease_token = NULL, lease_until_us = NULL,
                 next_attempt_us = $3, last_error = $4, attempts = attempts + 1
             WHERE id = $1 AND lease_token = $2",
            &[&id, &token, &next_attempt_us, &error],
        )
        .await
        .map_err(pg)?;
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    use super::super::PgMeta;
    use super::super::test_cluster::TestCluster;
    use super::*;

    async fn open() -> Option<(TestCluster, PgMeta)> {
        let cluster = TestCluster::start(&[])?;
        let meta = PgMeta::open(&cluster.url(), 4, false).await.unwrap();
        Some((cluster, meta))
    }

    /// Inserts a pending job of `key` (sequence `seq`) to eu/d; returns its id.
    async fn job(c: &impl GenericClient, key: &str, seq: i64) -> i64 {
        c.query_one(
            "INSERT INTO repl_jobs (fmt, bucket, key, version_id, op, peer, dest_bucket, rule_id, created_us, size, state,
                                    attempts, next_attempt_us, priority, key_seq)
             VALUES (1, 'b', $1, $2, 0, 'eu', 'd', 'r', 10, 5, 0, 0, 0, 0, $3) RETURNING id",
            &[&key.as_bytes(), &format!("v{seq}"), &seq],
        )
        .await
        .unwrap()
        .get(0)
    }

    fn ids(claimed: &[Claimed]) -> Vec<i64> {
        claimed.iter().map(|c| c.id).collect()
    }

    /// A claim skips the jobs another node is claiming instead of waiting for them, and two
    /// nodes never hold the same job.
    #[tokio::test]
    async fn claims_skip_locked_jobs_and_never_overlap() {
        let Some((_pg, meta)) = open().await else { return };
        let mut a = meta.client().await.unwrap();
        let mut all = Vec::new();
        for i in 0..10 {
            all.push(job(&**a, &format!("k{i}"), 1).await);
        }
        // Another node is in the middle of claiming the first five.
        let a: &mut tokio_postgres::Client = &mut a;
        let held = a.transaction().await.unwrap();
        held.query("SELECT id FROM repl_jobs WHERE id = ANY($1) FOR UPDATE", &[&all[..5].to_vec()]).await.unwrap();
        let b = meta.client().await.unwrap();
        let claiming = claim(&**b, "eu", "d", "node-b", 100, 1_000, 10);
        let got = tokio::time::timeout(std::time::Duration::from_secs(30), claiming)
            .await
            .expect("a claim does not wait for jobs another node has locked")
            .unwrap();
        assert_eq!(ids(&got), all[5..], "the locked five skipped, without waiting");
        // Rolled back and waited for (dropping it would send the ROLLBACK without waiting, and
        // the next claim could still find the five locked).
        held.rollback().await.unwrap();
        let again = claim(&**b, "eu", "d", "node-a", 100, 1_000, 10).await.unwrap();
        assert_eq!(ids(&again), all[..5], "the leased five are not claimed twice");
        assert!(got.iter().chain(&again).all(|c| c.until_us == 1_100));
    }

    /// A key's later job waits for its earlier one, leased or not; completing the earlier one
    /// (under its lease) frees the later.
    #[tokio::test]
    async fn a_keys_jobs_run_in_order_across_nodes() {
        let Some((_pg, meta)) = open().await else { return };
        let c = meta.client().await.unwrap();
        let first = job(&**c, "k", 1).await;
        let second = job(&**c, "k", 2).await;
        let other = job(&**c, "z", 1).await;
        let got = claim(&**c, "eu", "d", "a", 100, 1_000, 10).await.unwrap();
        assert_eq!(ids(&got), [first, other]);
        assert!(
            claim(&**c, "eu", "d", "b", 200, 1_000, 10).await.unwrap().is_empty(),
            "k's second waits for its first"
        );
        assert!(complete(&**c, first, got[0].token).await.unwrap());
        let next = claim(&**c, "eu", "d", "b", 300, 1_000, 10).await.unwrap();
        assert_eq!(ids(&next), [second]);
    }

    /// A node that lost its lease (it expired, another node claimed the job) changes nothing
    /// with its old token; the new holder completes.
    #[tokio::test]
    async fn a_late_completion_with_a_lost_lease_changes_nothing() {
        let Some((_pg, meta)) = open().await else { return };
        let c = meta.client().await.unwrap();
        let id = job(&**c, "k", 1).await;
        let zombie = claim(&**c, "eu", "d", "a", 100, 1_000, 1).await.unwrap().remove(0);
        assert!(claim(&**c, "eu", "d", "b", 1_000, 1_000, 1).await.unwrap().is_empty(), "still leased");
        let holder = claim(&**c, "eu", "d", "b", 1_101, 1_000, 1).await.unwrap().remove(0);
        assert_eq!(holder.id, id);
        assert_ne!(holder.token, zombie.token);
        assert!(!save_progress(&**c, id, zombie.token, "{}").await.unwrap());
        assert!(!retry_later(&**c, id, zombie.token, 5_000, "late").await.unwrap());
        assert!(!complete(&**c, id, zombie.token).await.unwrap(), "the zombie's completion is refused");
        assert_eq!(renew(&**c, "a", 1_200, 1_000).await.unwrap(), 0, "nor can it renew what it lost");
        assert!(save_progress(&**c, id, holder.token, "{\"upload\":\"x\"}").await.unwrap());
        assert!(complete(&**c, id, holder.token).await.unwrap());
    }

    /// A node holding a hundred leases stops; once another node fences it, its jobs are
    /// claimable at once (not after the lease time), and its late completions change nothing.
    #[tokio::test]
    async fn a_fenced_nodes_leases_are_taken_over_at_once() {
        let Some((_pg, meta)) = open().await else { return };
        let mut pooled = meta.client().await.unwrap();
        let c: &mut tokio_postgres::Client = &mut pooled;
        super::super::nodes::join(c, "a", 1, 1_000).await.unwrap();
        super::super::nodes::join(c, "b", 1, 1_000).await.unwrap();
        for i in 0..100 {
            job(&*c, &format!("k{i:03}"), 1).await;
        }
        let held = claim(&*c, "eu", "d", "a", 2_000, 600_000_000, 1_000).await.unwrap();
        assert_eq!(held.len(), 100);
        assert!(
            claim(&*c, "eu", "d", "b", 3_000, 600_000_000, 1_000).await.unwrap().is_empty(),
            "a holds them"
        );
        assert!(super::super::nodes::fence(c, "a", 5_000).await.unwrap());
        let taken = claim(&*c, "eu", "d", "b", 6_000, 600_000_000, 1_000).await.unwrap();
        assert_eq!(ids(&taken), ids(&held), "every job taken over, long before a's leases would have expired");
        for j in &held {
            assert!(
                !complete(&*c, j.id, j.token).await.unwrap(),
                "a's late completion of {} changes nothing",
                j.id
            );
        }
        for j in &taken {
            assert!(complete(&*c, j.id, j.token).await.unwrap());
        }
    }

    /// Renewal keeps a lease past its first expiry; a failure gives the job back, due later.
    #[tokio::test]
    async fn renewed_leases_hold_and_failed_jobs_come_back_when_due() {
        let Some((_pg, meta)) = open().await else { return };
        let c = meta.client().await.unwrap();
        let id = job(&**c, "k", 1).await;
        let got = claim(&**c, "eu", "d", "a", 100, 1_000, 1).await.unwrap().remove(0);
        assert_eq!(renew(&**c, "a", 900, 1_000).await.unwrap(), 1);
        assert!(claim(&**c, "eu", "d", "b", 1_500, 1_000, 1).await.unwrap().is_empty(), "renewed to 1,900");
        assert!(retry_later(&**c, id, got.token, 3_000, "peer unreachable").await.unwrap());
        assert!(claim(&**c, "eu", "d", "b", 2_000, 1_000, 1).await.unwrap().is_empty(), "not due yet");
        let again = claim(&**c, "eu", "d", "b", 3_000, 1_000, 1).await.unwrap();
        assert_eq!(ids(&again), [id]);
        let (attempts, error): (i64, Option<String>) = {
            let r = c.query_one("SELECT attempts, last_error FROM repl_jobs WHERE id = $1", &[&id]).await.unwrap();
            (r.get(0), r.get(1))
        };
        assert_eq!((attempts, error.as_deref()), (1, Some("peer unreachable")));
    }
}
