//! Store errors → S3 errors, in one place.
//!
//! Domain errors of the store map to their S3 codes; anything else is an InternalError, logged
//! here with its cause (the client only sees the code).

use s3s::{S3Error, S3ErrorCode, s3_error};

/// Maps a store error to the S3 error a client should see.
#[must_use]
pub fn to_s3(e: ferry_store::Error) -> S3Error {
    use ferry_store::Error as E;
    match e {
        E::NoSuchBucket => s3_error!(NoSuchBucket, "The specified bucket does not exist"),
        E::BucketAlreadyExists => s3_error!(BucketAlreadyExists),
        E::BucketNotEmpty => s3_error!(BucketNotEmpty, "The bucket you tried to delete is not empty"),
        E::NoSuchKey => s3_error!(NoSuchKey, "The specified key does not exist."),
        E::NoSuchVersion => s3_error!(NoSuchVersion, "The specified version does not exist."),
        E::NoSuchUpload => s3_error!(NoSuchUpload, "The specified multipart upload does not exist."),
        E::PreconditionFailed => s3_error!(PreconditionFailed, "At least one of the pre-conditions you specified did not hold"),
        E::InvalidBucketState(m) => S3Error::with_message(S3ErrorCode::InvalidBucketState, m),
        E::IncompleteBody => s3_error!(
            IncompleteBody,
            "You did not provide the number of bytes specified by the Content-Length HTTP header"
        ),
        E::EntityTooLarge => s3_error!(EntityTooLarge, "Your proposed upload exceeds the maximum allowed object size."),
        E::Body(source) => match source.downcast::<S3Error>() {
            Ok(s3) => *s3,
            Err(other) => {
                tracing::debug!(error = %other, "request body failed");
                s3_error!(IncompleteBody, "The request body could not be read: {other}")
            }
        },
        other => internal(other),
    }
}

/// An InternalError for `e`, logged.
#[track_caller]
pub fn internal(e: impl std::fmt::Display) -> S3Error {
    let at = std::panic::Location::caller();
    tracing::error!(error = %e, %at, "internal error");
    s3_error!(InternalError, "We encountered an internal error. Please try again.")
}

/// `.s3()` on store results.
pub trait StoreResultExt<T> {
    /// Maps the error with [`to_s3`].
    ///
    /// # Errors
    /// The mapped error.
    fn s3(self) -> s3s::S3Result<T>;
}

impl<T> StoreResultExt<T> for Result<T, ferry_store::Error> {
    fn s3(self) -> s3s::S3Result<T> {
        self.map_err(to_s3)
    }
}
