//! Ferry's own API beside S3, on the same endpoint and signed the same way (SigV4, checked by
//! s3s before a route runs). Used by the `ferry replication ...` commands. Only the bucket's
//! owner may call these.
//!
//! | request | answer |
//! |---|---|
//! | `GET /BUCKET?replicationProgress[&rule-id=ID]` | OSS-shaped XML: per rule, historical fraction and "replicated up to" time |
//! | `GET /BUCKET?ferry-replication-status` | JSON: per rule state, T, lag, pending, failures, backfills, events |
//! | `GET /BUCKET?ferry-replication-explain&key=K[&version-id=V]` | JSON: which rules match and why, jobs per destination |
//! | `POST /BUCKET?ferry-replication-retry` | JSON `{"retried": N}`: failed jobs become pending |
//! | `POST /BUCKET?ferry-backfill` + JSON `{rule, prefix, status, older_than_secs}` | JSON `{"id": N}`: starts a backfill |
//! | `POST /BUCKET?ferry-backfill-control&id=N&action=pause\|resume\|cancel` | JSON: the backfill |
//! | `GET /BUCKET?ferry-replication-verify[&rule-id=ID]` | JSON lines, streamed: see `verify` |
//! | `GET /BUCKET?ferry-replication-sources` | JSON `{"sources": [...]}`: the other accounts this bucket accepts replicas from |
//! | `PUT /BUCKET?ferry-replication-sources` + JSON `{"sources": [{account, region?, bucket?}]}` | replaces that list |

use std::collections::HashMap;
use std::sync::Arc;

use ferry_store::Store;
use ferry_store::model::ReplicaSourceGrant;
use ferry_store::replication::backfill::{self, BackfillAction, BackfillRequest};
use ferry_store::replication::{JobOp, ReplicationConfig, retry_failed};

use crate::replication_config::JOB_BATCH;
use http::{HeaderMap, Method, Uri};
use s3s::route::S3Route;
use s3s::{Body, S3Request, S3Response, S3Result, s3_error};

use crate::Users;
use crate::error::StoreResultExt;
use crate::progress::{bucket_progress, progress_xml, rfc3339_us};
use crate::util::access_denied;

/// Most replica-source grants on one bucket.
const MAX_SOURCES: usize = 100;

/// The admin routes of one region.
pub(crate) struct AdminRoute {
    pub(crate) store: Arc<Store>,
    pub(crate) users: Arc<Users>,
    pub(crate) region: String,
    pub(crate) peers: Option<Arc<dyn ferry_store::replication::PeerDirectory>>,
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
];

/// A channel receiver as a byte stream (for streamed answers).
struct Lines(tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>);

impl futures::Stream for Lines {
    type Item = Result<bytes::Bytes, std::io::Error>;
    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
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

    async fn explain(
        &self,
        bucket: &ferry_store::model::BucketRecord,
        q: &HashMap<String, String>,
    ) -> S3Result<serde_json::Value> {
        let key = q.get("key").cloned().ok_or_else(|| s3_error!(InvalidArgument, "key= is required"))?;
        let vid = q.get("version-id").cloned().filter(|v| !v.is_empty());
        let (b, k) = (bucket.name.clone(), key.clone());
        let (version, jobs, delivered) = self
            .store
            .meta
            .read(move |r| {
                let v = match &vid {
                    Some(v) => r.get_version(&b, &k, v)?,
                    None => r.get_latest(&b, &k)?,
                };
                let (jobs, delivered) = match &v {
                    Some(v) => (r.jobs_for_version(&b, &k, &v.version_id)?, r.delivered_to(&b, &k, &v.version_id)?),
                    None => (Vec::new(), Vec::new()),
                };
                Ok((v, jobs, delivered))
            })
            .await
            .s3()?;
        let cfg = match &bucket.replication {
            Some(s) => ReplicationConfig::from_stored(s).s3()?,
            None => ReplicationConfig::default(),
        };
        let (tags, dm) = version.as_ref().map_or((Vec::new(), false), |v| (v.attrs.tags.clone(), v.delete_marker));
        let op = if dm { JobOp::DeleteMarker } else { JobOp::Put };
        let selected: Vec<String> = cfg.select(&key, &tags, op).iter().map(|r| r.id.clone()).collect();
        let rules: Vec<serde_json::Value> = cfg
            .rules
            .iter()
            .map(|r| {
                let why = if !r.enabled {
                    "the rule is disabled".to_owned()
                } else if !key.starts_with(&r.filter.prefix) {
                    format!("the key does not start with the rule's prefix `{}`", r.filter.prefix)
                } else if let Some((tk, tv)) = r.filter.tags.iter().find(|t| !tags.contains(t)) {
                    format!("the object lacks the tag {tk}={tv}")
                } else if dm && !r.delete_markers {
                    "the rule does not replicate delete markers".to_owned()
                } else if dm && !r.filter.tags.is_empty() {
                    "rules with tag filters do not replicate delete markers".to_owned()
                } else if !selected.contains(&r.id) {
                    "another matching rule for the same destination has a higher priority".to_owned()
                } else {
                    "matches".to_owned()
                };
                serde_json::json!({
                    "rule": r.id, "matches": selected.contains(&r.id), "why": why,
                    "destination": format!("{}/{}", r.destination.peer, r.destination.bucket),
                })
            })
            .collect();
        let jobs: Vec<serde_json::Value> = jobs
            .iter()
            .map(|j| {
                serde_json::json!({
                    "destination": format!("{}/{}", j.peer, j.dest_bucket), "rule": j.rule_id, "op": j.op.name(),
                    "state": match j.state { ferry_store::replication::JobState::Pending => "pending", ferry_store::replication::JobState::Failed => "failed" },
                    "attempts": j.attempts, "last_error": j.last_error, "recorded": rfc3339_us(j.created_us),
                    "next_attempt": (j.next_attempt_us > 0).then(|| rfc3339_us(j.next_attempt_us)),
                    "backfill": j.backfill_id,
                })
            })
            .collect();
        let note = match (&version, bucket.replication.is_some()) {
            (None, _) => "no such key or version",
            (Some(_), false) => "the bucket has no replication configuration",
            (Some(v), true) if v.repl_status == Some(ferry_store::model::ReplStatus::Replica) => {
                "this version is a replica: it arrived by replication and is not replicated further"
            }
            (Some(_), true) if jobs.is_empty() && selected.is_empty() => "no rule selects this version",
            (Some(_), true) if jobs.is_empty() => "delivered to every destination (no job left)",
            _ => "jobs pending or failed: see jobs",
        };
        Ok(serde_json::json!({
            "bucket": bucket.name, "key": key,
            "version_id": version.as_ref().map(|v| v.version_id.clone()),
            "delete_marker": dm,
            "status": version.as_ref().and_then(|v| v.repl_status).map(|s| s.as_str()),
            "summary": note, "rules": rules, "jobs": jobs, "delivered_to": delivered,
        }))
    }

    async fn start_backfill(&self, bucket: &str, body: &[u8]) -> S3Result<serde_json::Value> {
        let params: serde_json::Value = if body.is_empty() {
            serde_json::json!({})
        } else {
            serde_json::from_slice(body).map_err(|e| s3_error!(MalformedPOSTRequest, "the body must be JSON: {e}"))?
        };
        let req: BackfillRequest =
            serde_json::from_value(params).map_err(|e| s3_error!(InvalidArgument, "bad backfill request: {e}"))?;
        let name = bucket.to_owned();
        let id = self.store.meta.write(move |tx| backfill::request(tx, &name, &req)).await.s3()?;
        Ok(serde_json::json!({ "id": id }))
    }

    /// Replaces the list of other accounts the bucket accepts replicas from. An entry names an
    /// account by user id (or the access key of an account configured here), optionally only
    /// its buckets in one region, or one bucket.
    async fn put_sources(&self, bucket: &str, body: &[u8]) -> S3Result<serde_json::Value> {
        #[derive(serde::Deserialize)]
        struct Body {
            sources: Vec<ReplicaSourceGrant>,
        }
        let parsed: Body = serde_json::from_slice(body)
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
                let mut b = tx.get_bucket(&name)?.ok_or(ferry_store::Error::NoSuchBucket)?;
                b.replica_sources = stored;
                tx.put_bucket(&b)
            })
            .await
            .s3()?;
        Ok(serde_json::json!({ "sources": sources }))
    }

    async fn control_backfill(&self, bucket: &str, q: &HashMap<String, String>) -> S3Result<serde_json::Value> {
        let id: i64 = q.get("id").and_then(|v| v.parse().ok()).ok_or_else(|| s3_error!(InvalidArgument, "id= is required"))?;
        let action: BackfillAction = q.get("action").map_or("", String::as_str).parse().s3()?;
        let name = bucket.to_owned();
        let b = self.store.meta.write(move |tx| backfill::control(tx, &name, id, action)).await.s3()?;
        Ok(serde_json::to_value(b).unwrap_or_default())
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
                let p = bucket_progress(&self.store, &bucket.name, &self.region).await.s3()?;
                Ok(json_response(&serde_json::to_value(p).unwrap_or_default()))
            }
            Some("ferry-replication-explain") => Ok(json_response(&self.explain(&bucket, &q).await?)),
            Some("ferry-replication-retry") => {
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
                Ok(json_response(&serde_json::json!({ "retried": n })))
            }
            Some("ferry-backfill") => {
                let body = req.input.store_all_limited(64 * 1024).await.map_err(|_| s3_error!(MaxMessageLengthExceeded))?;
                Ok(json_response(&self.start_backfill(&bucket.name, &body).await?))
            }
            Some("ferry-backfill-control") => Ok(json_response(&self.control_backfill(&bucket.name, &q).await?)),
            Some("ferry-replication-sources") if req.method == Method::GET => {
                Ok(json_response(&serde_json::json!({ "sources": bucket.replica_sources })))
            }
            Some("ferry-replication-sources") => {
                let body = req.input.store_all_limited(256 * 1024).await.map_err(|_| s3_error!(MaxMessageLengthExceeded))?;
                Ok(json_response(&self.put_sources(&bucket.name, &body).await?))
            }
            Some("ferry-replication-verify") => {
                let peers =
                    self.peers.clone().ok_or_else(|| s3_error!(NotImplemented, "Replication is not enabled on this server"))?;
                let rx = crate::verify::start(
                    self.store.clone(),
                    peers,
                    self.region.clone(),
                    bucket.name.clone(),
                    q.get("rule-id").cloned(),
                );
                let mut resp = S3Response::new(Body::from(s3s::dto::StreamingBlob::wrap(Lines(rx))));
                resp.headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-ndjson"));
                Ok(resp)
            }
            _ => Err(s3_error!(NotImplemented)),
        }
    }
}
