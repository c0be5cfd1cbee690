//! Ferry's base layer: the types every other crate shares.
//!
//! - [`ids`]: version ids, blob ids, upload ids (opaque, unique across regions).
//! - [`time`]: wall-clock helpers and the monotone per-region commit clock.
//! - [`config`]: the TOML configuration (`ferry serve --config`).
//! - [`background`]: the `Worker` trait and the runner that owns retries, status and shutdown.
//!
//! Nothing here does I/O beyond reading the configuration file.

pub mod background;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod ids;
pub mod metrics;
pub mod sync;
pub mod time;

pub use error::{Error, Result};
