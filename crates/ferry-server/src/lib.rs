//! The `ferry` binary's library: configuration loading, region start-up, serving and shutdown.
//!
//! [`server::Server::start`] brings up every configured region in this process. Regions share
//! nothing but the process: each has its own listener, data directory, metadata writer and
//! background workers, exactly as if it ran alone.

pub mod admin_client;
pub mod admin_http;
pub mod bench;
pub mod cli_replication;
pub mod client;
pub mod credentials;
pub mod netem_cli;
pub mod server;
pub mod tls;
