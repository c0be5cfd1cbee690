//! The `ferry` subcommands that talk to a running region (everything but `serve`):
//!
//! - [`replication`]: `ferry replication status | explain | retry | resync | verify | sources |
//!   pause | resume | cancel`, over the admin API ([`admin_client`]);
//! - [`lifecycle`]: `ferry lifecycle status`, the lifecycle worker's pass for a bucket;
//! - [`bench`]: `ferry bench`, load and replication benchmarks with an S3 client ([`client`]);
//! - [`netem`]: `ferry netem`, a WAN emulator in front of an endpoint;
//! - [`region`]: `ferry region nodes`, the nodes of a region on PostgreSQL metadata.

pub mod admin_client;
pub mod bench;
pub mod client;
pub mod lifecycle;
pub mod netem;
pub mod region;
pub mod replication;
