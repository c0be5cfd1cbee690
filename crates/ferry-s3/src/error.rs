//! Store errors → S3 errors, in one place.
//!
//! Domain errors of the store map to their S3 codes; anything else is an InternalError, logged
//! here with its cause (the client only sees the code).

use s3s::{S3Error, S3ErrorCode, s3_error};

/// The message of every `412 PreconditionFailed`.
pub(crate) const PRECONDITION_FAILED: &str = "At least one of the pre-conditions you specified did not hold";

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
        E::PreconditionFailed => s3_error!(PreconditionFailed, "{PRECONDITION_FAILED}"),
        E::NoSuchBackfill(id) => crate::dto::custom_error(
            "NoSuchBackfill",
            http::StatusCode::NOT_FOUND,
            &format!("There is no backfill {id} in this bucket."),
        ),
        E::InvalidBucketState(m) => S3Error::with_message(S3ErrorCode::InvalidBucketState, m),
        E::InvalidArgument(m) => S3Error::with_message(S3ErrorCode::InvalidArgument, m),
        E::InvalidRequest(m) => S3Error::with_message(S3ErrorCode::InvalidRequest, m),
        E::AccessDenied(m) => S3Error::with_message(S3ErrorCode::AccessDenied, m),
        E::IncompleteBody => s3_error!(
            IncompleteBody,
            "You did not provide the number of bytes specified by the Content-Length HTTP header"
        ),
        E::EntityTooLarge => s3_error!(EntityTooLarge, "Your proposed upload exceeds the maximum allowed object size."),
        E::Body(source) => match source.downcast::<S3Error>() {
            Ok(s3) => *s3,
            Err(other) if other.to_string().contains("Sha256Mismatch") => sha256_mismatch(),
            // A stored body being copied failed authentication: the region's fault, not the request's.
            Err(other) if other.downcast_ref::<std::io::Error>().is_some_and(ferry_store::sse::is_corrupt) => {
                tracing::error!(error = %other, "a stored encrypted body fails authentication");
                s3_error!(InternalError, "The stored data of the copy source fails authentication")
            }
            Err(other) => {
                tracing::debug!(error = %other, "request body failed");
                s3_error!(IncompleteBody, "The request body could not be read: {other}")
            }
        },
        E::Unavailable(m) => {
            tracing::warn!(error = %m, "metadata database unavailable");
            s3_error!(
                ServiceUnavailable,
                "The region's metadata database cannot be reached from this node; please retry."
            )
        }
        E::Busy(m) => {
            tracing::info!(error = %m, "metadata transaction given up, client asked to retry");
            s3_error!(SlowDown, "The region is busy with this key; please retry.")
        }
        other if other.is_storage_full() => {
            tracing::error!(error = %other, "the disk is full");
            crate::dto::custom_error(
                "StorageFull",
                http::StatusCode::INSUFFICIENT_STORAGE,
                "The region's disk is full; nothing was stored. Free space (or add it) and retry.",
            )
        }
        other => internal(other),
    }
}

/// Maps the store error of a copy (CopyObject, UploadPartCopy), whose body is read from a stored
/// version: a read that fails is the region's fault, never the request's. Data not found, or
/// shorter than its record, is lost or damaged (500, as a GET of it answers); any other read
/// error is answered 503, to be retried (the disk or the blob store failing now), as a lookup
/// error is.
#[must_use]
pub fn copy_error(e: ferry_store::Error) -> S3Error {
    let source = match e {
        ferry_store::Error::Body(source) => source,
        ferry_store::Error::IncompleteBody => return copy_source_short(&"the read ended early"),
        other => return to_s3(other),
    };
    match source.downcast::<std::io::Error>() {
        Ok(io) if ferry_store::sse::is_corrupt(&io) => to_s3(ferry_store::Error::Body(io)),
        Ok(io) if io.kind() == std::io::ErrorKind::NotFound => {
            tracing::error!(error = %io, "copy source data file missing");
            s3_error!(InternalError, "The data of the copy source is missing from storage")
        }
        Ok(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => copy_source_short(&io),
        Ok(io) => {
            tracing::error!(error = %io, "copy source data cannot be read");
            s3_error!(
                ServiceUnavailable,
                "The data of the copy source cannot be read from storage now; please retry."
            )
        }
        Err(other) => to_s3(ferry_store::Error::Body(other)),
    }
}

/// The stored data of a copy source is shorter than its record: damaged, not to be retried.
fn copy_source_short(why: &dyn std::fmt::Display) -> S3Error {
    tracing::error!(error = %why, "copy source data shorter than its record");
    s3_error!(InternalError, "The stored data of the copy source is shorter than its record")
}

pub(crate) fn sha256_mismatch() -> S3Error {
    let mut e = S3Error::with_message(
        S3ErrorCode::Custom("XAmzContentSHA256Mismatch".into()),
        "The provided 'x-amz-content-sha256' header does not match what was computed.",
    );
    e.set_status_code(http::StatusCode::BAD_REQUEST);
    e
}

/// The bare error body s3s writes when reading a request body fails before an operation runs.
const S3S_BODY_READ_FAILURE: &[u8] = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code></Error>";

/// s3s 0.14 answers 500 InternalError (without a message) when it cannot read a request body
/// it needs whole (XML documents): a payload that does not match its signed SHA-256, a
/// truncated body, a client that went away. Those are the client's mistakes; Ferry's own
/// internal errors always carry a message, so the bare body identifies this case exactly.
pub(crate) fn fix_body_read_errors(resp: crate::HttpResponse, signed_payload: bool) -> crate::HttpResponse {
    if resp.status() != http::StatusCode::INTERNAL_SERVER_ERROR || resp.body().bytes().as_deref() != Some(S3S_BODY_READ_FAILURE) {
        return resp;
    }
    let err = if signed_payload {
        sha256_mismatch()
    } else {
        s3_error!(IncompleteBody, "The request body could not be read completely.")
    };
    match err.to_http_response() {
        Ok(r) => r,
        Err(_) => resp,
    }
}

/// GetObjectAttributes answers the ETag without quotes (AWS's documented form, which clients
/// compare as is); s3s 0.14 writes every XML ETag quoted.
pub(crate) fn unquote_attributes_etag(mut resp: crate::HttpResponse) -> crate::HttpResponse {
    if resp.status() != http::StatusCode::OK {
        return resp;
    }
    let body = resp.body().bytes();
    if let Some(text) = body.as_deref().and_then(|b| std::str::from_utf8(b).ok())
        && text.contains("<ETag>\"")
    {
        let new = text.replacen("<ETag>\"", "<ETag>", 1).replacen("\"</ETag>", "</ETag>", 1);
        resp.headers_mut().insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(new.len()));
        *resp.body_mut() = s3s::Body::from(new);
    }
    resp
}

/// A new request id (16 hex characters), returned in `x-amz-request-id` and error bodies.
pub(crate) fn new_request_id() -> String {
    format!("{:016X}", rand_u64())
}

fn rand_u64() -> u64 {
    let id = uuid::Uuid::new_v4();
    let b = id.as_bytes();
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Adds the request id: the `x-amz-request-id` header on every response, and `<RequestId>` in
/// error bodies (clients correlate the two).
pub(crate) fn finish_response(mut resp: crate::HttpResponse, request_id: &str) -> crate::HttpResponse {
    if let Ok(v) = http::HeaderValue::from_str(request_id) {
        resp.headers_mut().insert("x-amz-request-id", v);
    }
    if resp.status() == http::StatusCode::NOT_MODIFIED {
        // A 304 has no body, so no Content-Length describing one.
        resp.headers_mut().remove(http::header::CONTENT_LENGTH);
        *resp.body_mut() = s3s::Body::empty();
        return resp;
    }
    if resp.status().as_u16() >= 300 {
        let body = resp.body().bytes();
        if let Some(text) = body.as_deref().and_then(|b| std::str::from_utf8(b).ok())
            && let Some(at) = text.rfind("</Error>")
            && !text.contains("<RequestId>")
        {
            let new = format!("{}<RequestId>{request_id}</RequestId>{}", &text[..at], &text[at..]);
            resp.headers_mut().insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(new.len()));
            *resp.body_mut() = s3s::Body::from(new);
        }
    }
    resp
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
