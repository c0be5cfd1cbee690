//! Errors of the replication engine. A failed delivery attempt is not an error here: it is an
//! [`Outcome`](crate::transfer::Outcome) recorded with its job.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

/// Errors of the replication engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A peer's client could not be set up (its CA file).
    #[error("client setup: {0}")]
    Client(String),
    /// A peer that this region does not know.
    #[error("unknown peer {0}")]
    UnknownPeer(String),
    /// A peer answered with an error, or could not be reached.
    #[error("{peer}: {message}")]
    Peer { peer: String, message: String },
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] ferry_store::Error),
    /// What was asked cannot be done (no configuration, no such rule).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// A peer's SDK error, described.
    pub fn peer<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(peer: &str, e: &SdkError<E, R>) -> Self {
        Self::Peer { peer: peer.to_owned(), message: crate::peers::describe(e) }
    }
}

/// Result with the replication [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
