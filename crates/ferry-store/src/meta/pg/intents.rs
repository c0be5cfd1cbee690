//! Blob intents: the bodies a node is writing to the blob store, so that a crash leaves no
//! orphan forever and no row pointing at a missing blob (the protocol is in
//! [`crate::s3_blobs`]).
//!
//! # Invariants
//! 1. An intent is recorded (autocommit) before its body is uploaded, tagged with the node and
//!    its epoch.
//! 2. The transaction that makes a record reference the blob turns the intent into a `blobs`
//!    row ([`commit`]); it fails if the intent is gone (swept), so a committed record never
//!    points at a blob that may have been deleted.
//! 3. [`sweepable`] lists only intents whose node can no longer commit them: fenced or gone,
//!    or living a later epoch (restarted), and older than the given time.

use tokio_postgres::GenericClient;

use super::nodes::Node;
use super::pg;
use crate::error::{Error, Result};

/// Records that `node` is about to upload blob `id`.
///
/// # Errors
/// Database errors.
pub async fn record(client: &impl GenericClient, node: &Node, id: &str, now_us: i64) -> Result<()> {
    client
        .execute(
            "INSERT INTO blob_intents (id, node_id, epoch, created_us) VALUES ($1, $2, $3, $4)",
            &[&id, &node.id, &node.epoch, &now_us],
        )
        .await
        .map_err(pg)?;
    Ok(())
}

/// In the transaction of the record that references blob `id`: the intent becomes a `blobs`
/// row.
///
/// # Errors
/// The intent was swept (the blob may be gone: the write must fail); database errors.
pub async fn commit(tx: &impl GenericClient, id: &str) -> Result<()> {
    let n = tx.execute("DELETE FROM blob_intents WHERE id = $1", &[&id]).await.map_err(pg)?;
    if n != 1 {
        return Err(Error::Other(format!("blob {id} has no intent (swept after its node was fenced?)")));
    }
    tx.execute("INSERT INTO blobs (id) VALUES ($1)", &[&id]).await.map_err(pg)?;
    Ok(())
}

/// Intents older than `before_us` whose node can no longer commit them, oldest first.
///
/// # Errors
/// Database errors.
pub async fn sweepable(client: &impl GenericClient, before_us: i64, limit: i64) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT i.id FROM blob_intents i LEFT JOIN nodes n USING (node_id)
             WHERE i.created_us < $1 AND (n.node_id IS NULL OR n.state <> 'live' OR n.epoch > i.epoch)
             ORDER BY i.created_us LIMIT $2",
            &[&before_us, &limit],
        )
        .await
        .map_err(pg)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Forgets a swept intent (after its backend object was deleted).
///
/// # Errors
/// Database errors.
pub async fn forget(client: &impl GenericClient, id: &str) -> Result<()> {
    client.execute("DELETE FROM blob_intents WHERE id = $1", &[&id]).await.map_err(pg)?;
    Ok(())
}
