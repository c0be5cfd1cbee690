//! Replica writes: requests from a Ferry peer carrying [`REPLICA_HEADER`]. They keep the
//! source's version id, last-modified, ETag, owner and ACL, are marked REPLICA, and record no
//! replication jobs (so nothing loops back). Applying one twice changes nothing: the version id
//! is the identity. Only the destination bucket's owner may send them.

use ferry_store::model::BucketRecord;
use ferry_store::replication::{REPLICA_HEADER, REPLICA_PART_HEADER, ReplicaMeta};
use s3s::{S3Request, S3Result, s3_error};

use crate::FerryS3;
use crate::util::access_denied;

impl FerryS3 {
    /// The replica metadata of a request, or `None` for an ordinary request. Refuses replica
    /// headers from anyone but the bucket's owner.
    pub(crate) fn replica_of<T>(&self, req: &S3Request<T>, bucket: &BucketRecord) -> S3Result<Option<ReplicaMeta>> {
        let Some(value) = req.headers.get(REPLICA_HEADER) else { return Ok(None) };
        let user = self.user(req).ok_or_else(access_denied)?;
        if user.owner.id != bucket.owner.id {
            return Err(s3_error!(AccessDenied, "Only the bucket owner may write replicas"));
        }
        let text = value.to_str().map_err(|_| s3_error!(InvalidArgument, "The {REPLICA_HEADER} header is not valid"))?;
        ReplicaMeta::decode(text).map(Some).map_err(|e| s3_error!(InvalidArgument, "{e}"))
    }

    /// The [`REPLICA_PART_HEADER`] of an UploadPart: `Some("")` when the source does not know
    /// the part's MD5, `Some(md5_hex)` when it does, `None` for an ordinary upload. Only the
    /// bucket's owner may send it.
    pub(crate) fn replica_part_of<T>(&self, req: &S3Request<T>, bucket: &BucketRecord) -> S3Result<Option<String>> {
        let Some(value) = req.headers.get(REPLICA_PART_HEADER) else { return Ok(None) };
        let user = self.user(req).ok_or_else(access_denied)?;
        if user.owner.id != bucket.owner.id {
            return Err(s3_error!(AccessDenied, "Only the bucket owner may write replicas"));
        }
        let text = value.to_str().unwrap_or("?");
        if !(text.is_empty() || (text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit()))) {
            return Err(s3_error!(
                InvalidArgument,
                "The {REPLICA_PART_HEADER} header must be empty or an MD5 in hex"
            ));
        }
        Ok(Some(text.to_ascii_lowercase()))
    }
}
