//! Ferry's replication engine.
//!
//! The S3 layer records a replication job in the same metadata transaction as every change a
//! rule matches (the outbox, see `ferry_store::replication`). This crate only consumes: one
//! [`worker::PeerWorker`] per peer drains that peer's jobs and delivers them
//! ([`transfer`]), recording each result in the store. Nothing here is the source of truth:
//! a crash or restart at any point leaves every undelivered job pending on disk, and
//! re-delivering is harmless (replicas are applied idempotently by version id).
//!
//! - [`peers`]: the peer set of a region, and listings of a peer's versions.
//! - [`engine`]: the answers to the S3 layer's questions through the store's
//!   `ReplicationEngine` port: where is this bucket, can it take replicas, cycles, and verify
//!   (`verify.rs`: both listings walked key by key, bounded memory).
//! - [`client`]: aws-sdk-s3 clients for peers (TLS with private CAs, SDK retries off).
//! - [`lean`]: hyper and SigV4 for the PutObject of a small (inline) version to a Ferry peer,
//!   the request that dominates replication of small objects; everything else uses the SDK.
//! - [`batch`]: several such PutObjects in one request when they wait for one (no timer): one
//!   HTTP exchange and signature at the source, one request and shared commits at the peer.

pub mod backfill;
pub mod batch;
pub mod client;
pub mod engine;
pub mod error;
pub mod lean;
pub mod monitor;
pub mod peers;
pub mod transfer;
mod verify;
pub mod worker;

pub use crate::engine::Engine;
pub use crate::error::{Error, Result};

use std::sync::Arc;

use ferry_core::background::BackgroundRunner;
use ferry_core::config::ReplicationSettings;
use ferry_store::Store;

use crate::peers::PeerSet;
use crate::transfer::Ctx;
use crate::worker::PeerWorker;

/// Starts a region's replication workers on `runner`: one per peer, the backfill worker and the
/// progress monitor (metrics, RPO events).
pub fn start(
    runner: &BackgroundRunner,
    store: Arc<Store>,
    peers: Arc<PeerSet>,
    settings: &ReplicationSettings,
    metrics: Arc<ferry_core::metrics::RegionMetrics>,
) {
    let ctx = Arc::new(Ctx { store: store.clone(), peers: peers.clone(), settings: settings.clone(), metrics: metrics.clone() });
    for p in peers.all() {
        runner.spawn(PeerWorker::new(&p.name, ctx.clone(), settings.concurrency));
    }
    runner.spawn(backfill::BackfillWorker::new(store.clone(), settings.backfill_rate));
    runner.spawn(monitor::Monitor::new(store, peers, metrics));
}
