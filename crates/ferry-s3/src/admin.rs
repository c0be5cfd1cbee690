//! Ferry's own API beside S3, on the same endpoint and signed the same way (SigV4, checked by
//! s3s before a route runs). Used by the `ferry replication ...` commands.
//!
//! - `POST /BUCKET?ferry-replication-retry`: failed replication jobs of the bucket become
//!   pending again. Answer: `{"retried": N}`.
//!
//! Only the bucket's owner may call these.

use std::sync::Arc;

use ferry_store::Store;
use http::{HeaderMap, Method, Uri};
use s3s::route::S3Route;
use s3s::{Body, S3Request, S3Response, S3Result, s3_error};

use crate::Users;
use crate::error::StoreResultExt;
use crate::util::access_denied;

/// The admin routes of one region.
pub(crate) struct AdminRoute {
    pub(crate) store: Arc<Store>,
    pub(crate) users: Arc<Users>,
}

fn query_has(uri: &Uri, name: &str) -> bool {
    uri.query().is_some_and(|q| q.split('&').any(|p| p == name || p.starts_with(&format!("{name}="))))
}

/// The bucket of a path-style request path `/BUCKET`.
fn bucket_of(uri: &Uri) -> S3Result<String> {
    let b = uri.path().trim_start_matches('/').trim_end_matches('/');
    if b.is_empty() || b.contains('/') {
        return Err(s3_error!(InvalidRequest, "expected /BUCKET"));
    }
    Ok(b.to_owned())
}

fn json_response(value: &serde_json::Value) -> S3Response<Body> {
    let mut resp = S3Response::new(Body::from(value.to_string()));
    resp.headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

impl AdminRoute {
    /// The bucket named in the request, checked to be owned by the caller.
    async fn owned_bucket(&self, req: &S3Request<Body>) -> S3Result<String> {
        let name = bucket_of(&req.uri)?;
        let user = req.credentials.as_ref().and_then(|c| self.users.get(&c.access_key)).ok_or_else(access_denied)?;
        let n = name.clone();
        let bucket = self.store.meta.read(move |r| r.get_bucket(&n)).await.s3()?;
        let bucket = bucket.ok_or_else(|| s3_error!(NoSuchBucket, "The specified bucket does not exist"))?;
        if bucket.owner.id != user.owner.id {
            return Err(access_denied());
        }
        Ok(name)
    }
}

#[async_trait::async_trait]
impl S3Route for AdminRoute {
    fn is_match(&self, method: &Method, uri: &Uri, _headers: &HeaderMap, _extensions: &mut http::Extensions) -> bool {
        method == Method::POST && query_has(uri, "ferry-replication-retry")
    }

    async fn call(&self, req: S3Request<Body>) -> S3Result<S3Response<Body>> {
        let bucket = self.owned_bucket(&req).await?;
        let n = self.store.meta.write(move |tx| tx.retry_failed_jobs(&bucket)).await.s3()?;
        Ok(json_response(&serde_json::json!({ "retried": n })))
    }
}
