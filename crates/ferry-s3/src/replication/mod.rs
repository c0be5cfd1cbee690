//! Replication in the S3 layer: what an S3 request does to replication, apart from the
//! outbox rows the store records with every change.
//!
//! - [`config`]: Put/Get/DeleteBucketReplication: the XML, validated against the peers through
//!   the store's `ReplicationEngine` port (destinations exist, are versioned and accept the
//!   source's account; no cycles), then stored; rules asking for existing objects start a
//!   backfill.
//! - [`replica`]: writes from peers: who may send Ferry's replica headers, and what they may
//!   change (checked before any operation runs).
//! - [`admin`]: the HTTP adapter of Ferry's replication admin API (status, explain, retry,
//!   backfills, verify, replica sources); the answers are `ferry_store::replication::api`
//!   types, the work is done in the store and the engine.
//! - [`progress`]: the OSS-shaped `?replicationProgress` XML.
//! - [`batch`]: batches of small replicas from a Ferry peer (`POST /BUCKET?ferry-replicas`),
//!   each entry applied as the replica PutObject it stands for; and the route that puts the
//!   admin API and batches beside S3.

pub(crate) mod admin;
pub(crate) mod batch;
pub mod config;
pub mod progress;
pub(crate) mod replica;
