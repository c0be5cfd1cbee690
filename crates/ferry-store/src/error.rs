//! Store errors. Domain errors (no such bucket, precondition failed...) are variants of their own
//! so the S3 layer can map each to its S3 code in one place; everything else is internal.

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the bucket does not exist")]
    NoSuchBucket,
    #[error("the bucket already exists")]
    BucketAlreadyExists,
    #[error("the bucket is not empty")]
    BucketNotEmpty,
    #[error("the key does not exist")]
    NoSuchKey,
    #[error("the version does not exist")]
    NoSuchVersion,
    #[error("the multipart upload does not exist")]
    NoSuchUpload,
    #[error("no backfill {0} in this bucket")]
    NoSuchBackfill(i64),
    #[error("precondition failed")]
    PreconditionFailed,
    /// A request that makes no sense whatever the state (an unknown action or value).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A request this bucket cannot take as it is configured (a lock on a bucket without
    /// Object Lock).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("invalid bucket state: {0}")]
    InvalidBucketState(String),
    /// A replica tried to change something its source has no right to (a version another
    /// source or the bucket's owner wrote).
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// Reading the request body failed (client went away, bad chunk signature...).
    #[error("reading the request body failed: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
    /// The body ended before its declared length.
    #[error("the body is shorter than its declared length")]
    IncompleteBody,
    /// The body is longer than allowed or than its declared length.
    #[error("the body is too large")]
    EntityTooLarge,
    /// A stored or received value this build does not know (a record format, an enum code):
    /// written by a newer build. Refused, never guessed.
    #[error("{what} {value} is unknown to this build (written by a newer one?)")]
    UnknownFormat { what: &'static str, value: String },
    #[error("metadata store is shut down")]
    Closed,
    /// The metadata database gave up a transaction that may succeed if tried again (a
    /// deadlock or a serialization failure between nodes of a region).
    #[error("busy, try again: {0}")]
    Busy(String),
    /// The metadata database cannot be reached (or this node was fenced by the others): the
    /// request may succeed later, or on another node of the region.
    #[error("the metadata database is unavailable: {0}")]
    Unavailable(String),
    /// No space left for the database or a blob (the cause, as text: a failed commit is
    /// reported to every transaction of its batch).
    #[error("no space left on the disk: {0}")]
    StorageFull(String),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("encoding: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Other(String),
}

/// Result with the store [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// [`Error::UnknownFormat`] for `what` with `value`.
    pub fn unknown(what: &'static str, value: impl std::fmt::Display) -> Self {
        Self::UnknownFormat { what, value: value.to_string() }
    }

    /// True when the disk (blob files or the database) has no space left.
    #[must_use]
    pub fn is_storage_full(&self) -> bool {
        match self {
            Self::StorageFull(_) => true,
            Self::Io(e) => e.kind() == std::io::ErrorKind::StorageFull,
            Self::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => f.code == rusqlite::ErrorCode::DiskFull,
            _ => false,
        }
    }
}
