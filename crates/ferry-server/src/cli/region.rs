//! `ferry region nodes`: the nodes of a region that runs as several nodes on PostgreSQL
//! metadata (docs/SCALE-OUT.md): each node's epoch, state, closed timestamp, heartbeat and the
//! replication leases it holds, and the region's committed clock (the minimum closed
//! timestamp, below which "replicated up to" may go). Reads only; safe on a live region.

use anyhow::Context as _;
use clap::{Args, Subcommand};
use ferry_core::time::{now_micros, rfc3339_us};
use ferry_store::meta::pg::nodes;

/// `ferry region ...`.
#[derive(Subcommand, Debug)]
pub enum RegionCommand {
    /// List the nodes of a region on PostgreSQL: epoch, state, closed timestamp, heartbeat age,
    /// replication leases held, and the region's committed clock.
    ///
    /// Example:
    ///   ferry region nodes --meta postgres://ferry@127.0.0.1:5432/ferry
    #[command(verbatim_doc_comment)]
    Nodes(NodesArgs),
}

#[derive(Args, Debug)]
pub struct NodesArgs {
    /// The region's metadata database, `postgres://USER@HOST:PORT/DB`.
    #[arg(long, env = "FERRY_META", value_name = "URL")]
    meta: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs a `ferry region` command.
///
/// # Errors
/// The database cannot be reached or read.
pub async fn run(cmd: RegionCommand) -> anyhow::Result<()> {
    match cmd {
        RegionCommand::Nodes(a) => list(a).await,
    }
}

async fn list(a: NodesArgs) -> anyhow::Result<()> {
    let client = ferry_store::meta::pg::connect(&a.meta).await.context("connecting to the metadata database")?;
    let now = now_micros();
    let listed = nodes::list(&client, now).await?;
    let committed = nodes::committed_clock(&client).await?;
    if a.json {
        let nodes: Vec<serde_json::Value> = listed
            .iter()
            .map(|n| {
                serde_json::json!({
                    "node": n.id, "epoch": n.epoch, "state": n.state,
                    "closed": n.closed_us.map(rfc3339_us), "closed_us": n.closed_us,
                    "heartbeat_us": n.heartbeat_us, "leases": n.leases,
                })
            })
            .collect();
        let out =
            serde_json::json!({ "nodes": nodes, "committed_clock_us": committed, "committed_clock": committed.map(rfc3339_us) });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:<20} {:>6} {:<6} {:<28} {:>12} {:>7}",
        "NODE", "EPOCH", "STATE", "CLOSED", "HEARTBEAT", "LEASES"
    );
    for n in &listed {
        #[allow(clippy::cast_precision_loss)] // seconds for display
        let age = n.heartbeat_us.map_or("-".to_owned(), |h| format!("{:.1} s ago", (now - h).max(0) as f64 / 1e6));
        let closed = n.closed_us.map_or("-".to_owned(), rfc3339_us);
        println!("{:<20} {:>6} {:<6} {:<28} {:>12} {:>7}", n.id, n.epoch, n.state, closed, age, n.leases);
    }
    match committed {
        Some(t) => println!(
            "region committed clock: {} (the oldest closed timestamp of the live nodes)",
            rfc3339_us(t)
        ),
        None => println!("region committed clock: none (no node has joined)"),
    }
    Ok(())
}
