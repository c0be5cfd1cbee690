//! Ferry's own API beside S3, on the same endpoint and signed the same way (SigV4, checked by
//! s3s before a route runs). Used by the `ferry replication ...` commands. Only the bucket's
//! owner may call these. This file is the HTTP adapter only: the answers are the types of
//! `ferry_store::replication::api`, computed in the store (explain, backfills, retry) and by
//! the engine (verify).
//!
//! | request | answer |
//! |---|---|
//! | `GET /BUCKET?replicationProgress[&rule-id=ID]` | OSS-shaped XML: per rule, historical fraction and "replicated up to" time |
//! | `GET /BUCKET?ferry-replication-status` | JSON: per rule state, T, lag, pending, failures, backfills, events |
//! | `GET /BUCKET?ferry-replication-explain&key=K[&version-id=V]` | JSON: which rules match and why, jobs per destination |
//! | `POST /BUCKET?ferry-replication-retry[&job=ID]` | JSON `{"retried": N}`: failed jobs (or that one) become pending |
//! | `POST /BUCKET?ferry-backfill` + JSON `{rule, prefix, status, older_than_secs}` | JSON `{"id": N}`: starts a backfill |
//! | `POST /BUCKET?ferry-backfill-control&id=N&action=pause\|resume\|cancel` | JSON: the backfill |
//! | `GET /BUCKET?ferry-replication-verify[&rule-id=ID]` | JSON lines, streamed: see `ferry_store::replication::api::VerifyLine` |
//! | `GET /BUCKET?ferry-replication-sources` | JSON `{"sources": [...]}`: the other accounts this bucket accepts replicas from |
//! | `PUT /BUCKET?ferry-replication-sources` + JSON `{"sources": [{account, region?, bucket?}]}` | replaces that list |
//! | `GET /BUCKET?ferry-lifecycle-status` | JSON: where the lifecycle worker's pass is for the bucket (`ferry_store::lifecycle::BucketLifecycleStatus`) |

use std::collections::HashMap;
use std::sync::Arc;

use ferry_store::Store;
use ferry_store::replication::api::{self, BackfillStarted, Retried, Sources, VerifyLine};
use ferry_store::replication::backfill::{self, BackfillAction, BackfillRequest};
use ferry_store::replication::{ReplicationEngine, retry_failed, retry_job};
use http::{HeaderMap, Method, Uri};
use s3s::route::S3Route;
use s3s::{Body, S3Request, S3Response, S3Result, s3_error};
use serde::Serialize;

use crate::Users;
use crate::error::StoreResultExt;
use crate::perm::access_denied;
use crate::replication::config::JOB_BATCH;
use crate::replication::progress::{bucket_progress, progress_xml};

/// Most replica-source grants on one bucket.
const MAX_SOURCES: usize = 100;

/// The admin routes of one region.
pub(crate) struct AdminRoute {
    pub(crate) store: Arc<Store>,
    pub(crate) users: Arc<Users>,
    pub(crate) region: String,
    pub(crate) engine: Option<Arc<dyn ReplicationEngine>>,
}

/// The routes, by (method, marker query parameter).
const ROUTES: &[(&str, &str)] = &[
    ("GET", "replicationProgress"),
    ("GET", "ferry-replication-status"),
    ("GET", "ferry-replication-explain"),
    ("POST", "ferry-replication-retry"),
    ("POST", "ferry-backfill"),
    ("POST", "ferry-backfill-control"),
    ("GET", "ferry-replication-verify"),
    ("GET", "ferry-replication-sources"),
    ("PUT", "ferry-replication-sources"),
    ("GET", "ferry-lifecycle-status"),
];

/// Verify's lines as a byte stream of JSON lines.
struct Lines(tokio::sync::mpsc::Receiver<VerifyLine>);

impl futures::Stream for Lines {
    type Item = Result<bytes::Bytes, std::io::Error>;
    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|line| {
            line.map(|l| {
                let mut text = serde_json::to_vec(&l).map_err(std::io::Error::other)?;
                text.push(b'\n');
                Ok(bytes::Bytes::from(text))
            })
        })
    }
}

fn query(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
            (dec(k), dec(v))
        })
        .collect()
}

fn route_of(method: &Method, uri: &Uri) -> Option<&'static str> {
    let q = query(uri);
    ROUTES.iter().find(|(m, name)| method.as_str() == *m && q.contains_key(*name)).map(|(_, name)| *name)
}

/// The bucket of a path-style request path `/BUCKET`.
pub(crate) fn bucket_of(uri: &Uri) -> S3Result<String> {
    let b = uri.path().trim_start_matches('/').trim_end_matches('/');
    if b.is_empty() || b.contains('/') {
        return Err(s3_error!(InvalidRequest, "expected /BUCKET"));
    }
    Ok(b.to_owned())
}

fn json_response<T: Serialize>(value: &T) -> S3Result<S3Response<Body>> {
    let text = serde_json::to_string(value).map_err(|e| s3_error!(InternalError, "encoding the answer: {e}"))?;
    let mut resp = S3Response::new(Body::from(text));
    resp.headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    Ok(resp)
}

impl AdminRoute {
    /// The bucket named in the request, checked to be owned by the caller.
    async fn owned_bucket(&self, req: &S3Request<Body>) -> S3Result<ferry_store::model::BucketRecord> {
        let name = bucket_of(&req.uri)?;
        let user = req.credentials.as_ref().and_then(|c| self.users.account(&c.access_key)).ok_or_else(access_denied)?;
        let bucket = self.store.meta.read(move |r| r.get_bucket(&name)).await.s3()?;
        let bucket = bucket.ok_or_else(|| s3_error!(NoSuchBucket, "The specified bucket does not exist"))?;
        if bucket.owner.id != user.owner.id {
            return Err(access_denied());
        }
        Ok(bucket)
    }

    async fn start_backfill(&self, bucket: &str, body: &[u8]) -> S3Result<BackfillStarted> {
        let params: serde_json::Value = if body.is_empty() {
            serde_json::json!({})
        } else {
            serde_json::from_slice(body).map_err(|e| s3_error!(MalformedPOSTRequest, "the body must be JSON: {e}"))?
        };
        let req: BackfillRequest =
            serde_json::from_value(params).map_err(|e| s3_error!(InvalidArgument, "bad backfill request: {e}"))?;
        let name = bucket.to_owned();
        let id = self.store.meta.write(move |tx| backfill::request(tx, &name, &req)).await.s3()?;
        Ok(BackfillStarted { id })
    }

    /// Replaces the list of other accounts the bucket accepts replicas from. An entry names an
    /// account by user id (or the access key of an account configured here), optionally only
    /// its buckets in one region, or one bucket.
    async fn put_sources(&self, bucket: &str, body: &[u8]) -> S3Result<Sources> {
        let parsed: Sources = serde_json::from_slice(body)
            .map_err(|e| s3_error!(MalformedPOSTRequest, "the body must be JSON {{\"sources\": [...]}}: {e}"))?;
        if parsed.sources.len() > MAX_SOURCES {
            return Err(s3_error!(InvalidArgument, "at most {MAX_SOURCES} replica sources"));
        }
        let mut sources = Vec::with_capacity(parsed.sources.len());
        for mut g in parsed.sources {
            if g.account.is_empty() || g.region.as_deref() == Some("") || g.bucket.as_deref() == Some("") {
                return Err(s3_error!(
                    InvalidArgument,
                    "a replica source names an account, and optionally a region and a bucket"
                ));
            }
            if let Some(id) = self.users.account_id(&g.account) {
                g.account = id;
            }
            sources.push(g);
        }
        let name = bucket.to_owned();
        let stored = sources.clone();
        self.store
            .meta
            .write(move |tx| {
                let mut b = tx.lock_bucket(&name)?.ok_or(ferry_store::Error::NoSuchBucket)?;
                b.replica_sources = stored;
                tx.put_bucket(&b)
            })
            .await
            .s3()?;
        Ok(Sources { sources })
    }

    async fn control_backfill(&self, bucket: &str, q: &HashMap<String, String>) -> S3Result<backfill::Backfill> {
        let id: i64 = q.get("id").and_then(|v| v.parse().ok()).ok_or_else(|| s3_error!(InvalidArgument, "id= is required"))?;
        let action: BackfillAction = q.get("action").map_or("", String::as_str).parse().s3()?;
        let name = bucket.to_owned();
        self.store.meta.write(move |tx| backfill::control(tx, &name, id, action)).await.s3()
    }
}

#[async_trait::async_trait]
impl S3Route for AdminRoute {
    fn is_match(&self, method: &Method, uri: &Uri, _headers: &HeaderMap, _extensions: &mut http::Extensions) -> bool {
        route_of(method, uri).is_some()
    }

    async fn call(&self, mut req: S3Request<Body>) -> S3Result<S3Response<Body>> {
        let bucket = self.owned_bucket(&req).await?;
        let q = query(&req.uri);
        match route_of(&req.method, &req.uri) {
            Some("replicationProgress") => {
                let p = bucket_progress(&self.store, &bucket.name, &self.region).await.s3()?;
                let mut resp = S3Response::new(Body::from(progress_xml(&p, q.get("rule-id").map(String::as_str))));
                resp.headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/xml"));
                Ok(resp)
            }
            Some("ferry-replication-status") => {
                json_response(&bucket_progress(&self.store, &bucket.name, &self.region).await.s3()?)
            }
            Some("ferry-replication-explain") => {
                let key = q.get("key").cloned().ok_or_else(|| s3_error!(InvalidArgument, "key= is required"))?;
                let vid = q.get("version-id").cloned().filter(|v| !v.is_empty());
                json_response(&self.store.meta.read(move |r| api::explain(r, &bucket, &key, vid.as_deref())).await.s3()?)
            }
            Some("ferry-replication-retry") => {
                if let Some(job) = q.get("job") {
                    let id: i64 = job.parse().map_err(|_| s3_error!(InvalidArgument, "job must be a job id"))?;
                    let name = bucket.name.clone();
                    let retried = self.store.meta.write(move |tx| retry_job(tx, &name, id)).await.s3()?;
                    return json_response(&Retried { retried: u64::from(retried) });
                }
                // A batch per transaction, so a large backlog never holds the writer.
                let mut n = 0;
                loop {
                    let name = bucket.name.clone();
                    let batch = JOB_BATCH;
                    let retried = self.store.meta.write(move |tx| retry_failed(tx, &name, batch)).await.s3()?;
                    n += retried;
                    if retried < batch as u64 {
                        break;
                    }
                }
                json_response(&Retried { retried: n })
            }
            Some("ferry-backfill") => {
                let body = req.input.store_all_limited(64 * 1024).await.map_err(|_| s3_error!(MaxMessageLengthExceeded))?;
                json_response(&self.start_backfill(&bucket.name, &body).await?)
            }
            Some("ferry-backfill-control") => json_response(&self.control_backfill(&bucket.name, &q).await?),
            Some("ferry-replication-sources") if req.method == Method::GET => {
                json_response(&Sources { sources: bucket.replica_sources })
            }
            Some("ferry-replication-sources") => {
                let body = req.input.store_all_limited(256 * 1024).await.map_err(|_| s3_error!(MaxMessageLengthExceeded))?;
                json_response(&self.put_sources(&bucket.name, &body).await?)
            }
            Some("ferry-lifecycle-status") => {
                let name = bucket.name.clone();
                json_response(&self.store.meta.read(move |r| ferry_store::lifecycle::status(r, &name)).await.s3()?)
            }
            Some("ferry-replication-verify") => {
                let engine =
                    self.engine.as_ref().ok_or_else(|| s3_error!(NotImplemented, "Replication is not enabled on this server"))?;
                let rx = engine.verify(&bucket.name, q.get("rule-id").map(String::as_str));
                let mut resp = S3Response::new(Body::from(s3s::dto::StreamingBlob::wrap(Lines(rx))));
                resp.headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-ndjson"));
                Ok(resp)
            }
            _ => Err(s3_error!(NotImplemented)),
        }
    }
}
