//! The `ferry` binary's library: configuration loading, region start-up, serving and shutdown.
//!
//! [`server::Server::start`] brings up every configured region in this process. Regions share
//! nothing but the process: each has its own listener, data directory, metadata writer and
//! background workers, exactly as if it ran alone.
//!
//! - [`server`]: configuration to running regions (S3 listener, replication engine, workers);
//! - [`metrics_listener`]: `/metrics` and `/health` on their own listener;
//! - [`credentials`], [`tls`]: loading keys and certificates; [`listen`]: the accept loop;
//! - [`console`]: the web console, one per process;
//! - [`cli`]: the subcommands that talk to a running region.

pub mod cli;
pub mod console;
pub mod credentials;
pub mod listen;
pub mod metrics_listener;
pub mod server;
pub mod tls;
