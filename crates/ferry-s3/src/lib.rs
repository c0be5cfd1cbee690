//! Ferry's S3 front end: the [`s3s::S3`] trait implemented on [`ferry_store`].
//!
//! s3s parses requests, verifies SigV4 (header, presigned, streaming chunks with trailers) and
//! serializes responses; this crate implements the semantics. One file per operation family:
//! [`bucket`], [`put`] (PutObject, CopyObject), [`get`] (GetObject, HeadObject), [`delete`],
//! [`list`], [`multipart`], [`tagging`], [`acl`], [`lifecycle`] and [`object_lock`]; browser form uploads, which Ferry reads
//! itself so that their files stream, in [`post_object`]; everything about replication is in
//! the [`replication`] folder. S3 error codes for store errors are chosen in one place, [`error`].
//! s3s types stay inside this crate.
//!
//! Authorization: requests are signed by a configured credential, each acting as an owner
//! (canonical id + display name). A bucket's policy is evaluated first ([`bucket_access`],
//! [`policy`]): its Deny refuses, its Allow grants; otherwise bucket and object ACLs decide
//! what other credentials and anonymous requests may do; the owner may do everything. Replication credentials are not
//! accounts: what they may do, and where, is decided in `replication/replica.rs` (the access
//! check confines them and Ferry's replication headers before any operation runs).

mod acl;
mod attributes;
mod auth;
mod bucket;
mod bucket_access;
mod checksums;
mod cors;
mod delete;
mod dto;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
mod get;
mod lifecycle;
mod list;
mod multipart;
mod object_lock;
mod perm;
pub mod policy;
mod post_object;
mod put;
pub mod replication;
mod sse;
mod tagging;

use std::sync::Arc;

use ferry_store::Store;
use ferry_store::replication::ReplicationEngine;
use s3s::dto::*;
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{S3, S3Request, S3Response, S3Result};

pub use crate::auth::{User, Users};
pub use crate::bucket_access::ClientInfo;

/// The S3 implementation of one region.
#[derive(Clone)]
pub struct FerryS3 {
    pub(crate) store: Arc<Store>,
    pub(crate) region: String,
    pub(crate) users: Arc<Users>,
    /// Validates replication configurations against the peers; `None`: replication off.
    pub(crate) engine: Option<Arc<dyn ReplicationEngine>>,
    /// Replicas further ahead of this region's clock are refused.
    pub(crate) max_clock_skew: std::time::Duration,
    /// A lifecycle rule's day (µs), for the expiry dates answered in `x-amz-expiration`.
    pub(crate) lifecycle_day_us: i64,
    /// SSE-C keys are accepted on plain-HTTP requests.
    pub(crate) sse_c_over_http: bool,
}

/// Settings of one region's S3 endpoint.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Region name (GetBucketLocation, LocationConstraint checks, signing region).
    pub region: String,
    /// Base domains of virtual-host-style requests.
    pub domains: Vec<String>,
    /// Replicas whose times are further ahead of this region's clock are refused.
    pub max_clock_skew: std::time::Duration,
    /// A lifecycle rule's day (µs): 24 hours but in tests.
    pub lifecycle_day_us: i64,
    /// Accept SSE-C keys on plain-HTTP requests (refused by default, as S3 does).
    pub sse_c_over_http: bool,
}

/// s3s's bound on the file of a browser form upload it would read into memory. Ferry streams
/// every form posted to a bucket itself ([`post_object`]); this only bounds what s3s could
/// still be handed if the two ever disagreed on what a form upload is.
const S3S_POST_OBJECT_MAX_SIZE: u64 = 64 * 1024 * 1024;

/// Builds the S3 service of one region.
#[must_use]
pub fn service(
    store: Arc<Store>,
    users: Arc<Users>,
    cfg: &EndpointConfig,
    engine: Option<Arc<dyn ReplicationEngine>>,
    metrics: Arc<ferry_core::metrics::RegionMetrics>,
) -> FerryService {
    let s3 = FerryS3 {
        store: store.clone(),
        region: cfg.region.clone(),
        users: users.clone(),
        engine: engine.clone(),
        max_clock_skew: cfg.max_clock_skew,
        lifecycle_day_us: cfg.lifecycle_day_us,
        sse_c_over_http: cfg.sse_c_over_http,
    };
    let host = Arc::new(auth::Host::new(cfg.domains.clone()));
    let forms = Arc::new(post_object::Forms { s3: s3.clone(), host: host.clone() });
    let batch = replication::batch::BatchRoute { s3: s3.clone() };
    let mut b = S3ServiceBuilder::new(s3);
    let mut limits = s3s::config::S3Config::default();
    limits.post_object_max_file_size = S3S_POST_OBJECT_MAX_SIZE;
    b.set_config(Arc::new(s3s::config::StaticConfigProvider::new(Arc::new(limits))));
    b.set_auth(auth::Auth { users: users.clone() });
    b.set_access(auth::Access { region: cfg.region.clone(), users: users.clone(), store: store.clone() });
    b.set_host(auth::Host::new(cfg.domains.clone()));
    let cors = Arc::new(cors::Cors { store: store.clone(), host: host.clone() });
    b.set_validation(auth::BucketNames);
    let admin = replication::admin::AdminRoute { store, users, region: cfg.region.clone(), engine };
    b.set_route(replication::batch::Routes { admin, batch });
    FerryService { inner: b.build(), metrics, client: None, cors, forms, host }
}

/// The hyper service of one region: s3s plus Ferry's fix-ups of s3s's own answers.
#[derive(Clone)]
pub struct FerryService {
    inner: S3Service,
    metrics: Arc<ferry_core::metrics::RegionMetrics>,
    /// The connection's client, given to each request (bucket policy conditions).
    client: Option<ClientInfo>,
    cors: Arc<cors::Cors>,
    /// Browser form uploads, which Ferry streams itself.
    forms: Arc<post_object::Forms>,
    /// The region's virtual hosts.
    host: Arc<auth::Host>,
}

impl FerryService {
    /// This service for the requests of one connection from `peer`.
    #[must_use]
    pub fn for_client(&self, peer: std::net::SocketAddr, secure: bool) -> Self {
        Self { client: Some(ClientInfo::new(peer, secure)), ..self.clone() }
    }
}

/// The HTTP response type of [`FerryService`].
pub type HttpResponse = http::Response<s3s::Body>;

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for FerryService {
    type Response = HttpResponse;
    type Error = s3s::HttpError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<HttpResponse, s3s::HttpError>> + Send>>;

    fn call(&self, mut req: http::Request<hyper::body::Incoming>) -> Self::Future {
        if let Some(client) = self.client {
            req.extensions_mut().insert(client);
        }
        let request_id = error::new_request_id();
        if req.method() == http::Method::OPTIONS {
            let cors = self.cors.clone();
            return Box::pin(async move { Ok(error::finish_response(cors.preflight(&req).await, &request_id)) });
        }
        if let Some(uri) = self.host.sigv2_bucket_root(&req) {
            *req.uri_mut() = uri;
        }
        let cors_asked = self.cors.asked(&req).map(|a| (self.cors.clone(), a));
        if let Err(e) = auth::check_presigned_expiry(req.uri()).and_then(|()| auth::check_sigv2_date(req.headers())) {
            let resp = e.to_http_response().map(|r| error::finish_response(r, &request_id));
            return Box::pin(async move { resp.map_err(|e| s3s::HttpError::new(Box::new(e))) });
        }
        let signed_payload = auth::signs_payload(req.headers());
        let method = req.method().as_str().to_owned();
        let form_bucket = self.forms.bucket_of(&req);
        let attributes = req.method() == http::Method::GET
            && req.uri().query().is_some_and(|q| q.split('&').any(|p| p == "attributes" || p.starts_with("attributes=")));
        let started = std::time::Instant::now();
        let metrics = self.metrics.clone();
        let fut: Self::Future = match form_bucket {
            Some(bucket) => {
                let forms = self.forms.clone();
                Box::pin(async move { Ok(forms.upload(req, bucket).await) })
            }
            None => Box::pin(hyper::service::Service::call(&self.inner, req)),
        };
        Box::pin(async move {
            let resp = error::fix_body_read_errors(fut.await?, signed_payload);
            let mut resp = error::finish_response(resp, &request_id);
            if attributes {
                resp = error::unquote_attributes_etag(resp);
            }
            if let Some((cors, asked)) = cors_asked
                && let Some(allowed) = cors.answer(asked).await
            {
                allowed.apply(resp.headers_mut());
            }
            let labels =
                ferry_core::metrics::RequestLabels { method: method.clone(), status: resp.status().as_u16().to_string() };
            metrics.s3_requests.get_or_create(&labels).inc();
            metrics
                .s3_request_duration
                .get_or_create(&ferry_core::metrics::MethodLabels { method })
                .observe(started.elapsed().as_secs_f64());
            Ok(resp)
        })
    }
}

macro_rules! ops {
    ($($name:ident($input:ident) -> $output:ident;)*) => {
        #[async_trait::async_trait]
        impl S3 for FerryS3 {
            $(
                async fn $name(&self, req: S3Request<$input>) -> S3Result<S3Response<$output>> {
                    self.$name(req).await
                }
            )*
        }
    };
}

ops! {
    create_bucket(CreateBucketInput) -> CreateBucketOutput;
    delete_bucket(DeleteBucketInput) -> DeleteBucketOutput;
    head_bucket(HeadBucketInput) -> HeadBucketOutput;
    list_buckets(ListBucketsInput) -> ListBucketsOutput;
    get_bucket_location(GetBucketLocationInput) -> GetBucketLocationOutput;
    get_bucket_versioning(GetBucketVersioningInput) -> GetBucketVersioningOutput;
    put_bucket_versioning(PutBucketVersioningInput) -> PutBucketVersioningOutput;
    get_bucket_tagging(GetBucketTaggingInput) -> GetBucketTaggingOutput;
    put_bucket_tagging(PutBucketTaggingInput) -> PutBucketTaggingOutput;
    delete_bucket_tagging(DeleteBucketTaggingInput) -> DeleteBucketTaggingOutput;
    get_bucket_acl(GetBucketAclInput) -> GetBucketAclOutput;
    put_bucket_acl(PutBucketAclInput) -> PutBucketAclOutput;
    put_object(PutObjectInput) -> PutObjectOutput;
    copy_object(CopyObjectInput) -> CopyObjectOutput;
    get_object(GetObjectInput) -> GetObjectOutput;
    head_object(HeadObjectInput) -> HeadObjectOutput;
    delete_object(DeleteObjectInput) -> DeleteObjectOutput;
    delete_objects(DeleteObjectsInput) -> DeleteObjectsOutput;
    list_objects(ListObjectsInput) -> ListObjectsOutput;
    list_objects_v2(ListObjectsV2Input) -> ListObjectsV2Output;
    list_object_versions(ListObjectVersionsInput) -> ListObjectVersionsOutput;
    create_multipart_upload(CreateMultipartUploadInput) -> CreateMultipartUploadOutput;
    upload_part(UploadPartInput) -> UploadPartOutput;
    upload_part_copy(UploadPartCopyInput) -> UploadPartCopyOutput;
    complete_multipart_upload(CompleteMultipartUploadInput) -> CompleteMultipartUploadOutput;
    abort_multipart_upload(AbortMultipartUploadInput) -> AbortMultipartUploadOutput;
    list_multipart_uploads(ListMultipartUploadsInput) -> ListMultipartUploadsOutput;
    list_parts(ListPartsInput) -> ListPartsOutput;
    get_object_tagging(GetObjectTaggingInput) -> GetObjectTaggingOutput;
    put_object_tagging(PutObjectTaggingInput) -> PutObjectTaggingOutput;
    delete_object_tagging(DeleteObjectTaggingInput) -> DeleteObjectTaggingOutput;
    get_object_acl(GetObjectAclInput) -> GetObjectAclOutput;
    put_object_acl(PutObjectAclInput) -> PutObjectAclOutput;
    put_bucket_replication(PutBucketReplicationInput) -> PutBucketReplicationOutput;
    get_bucket_replication(GetBucketReplicationInput) -> GetBucketReplicationOutput;
    delete_bucket_replication(DeleteBucketReplicationInput) -> DeleteBucketReplicationOutput;
    put_bucket_policy(PutBucketPolicyInput) -> PutBucketPolicyOutput;
    get_bucket_policy(GetBucketPolicyInput) -> GetBucketPolicyOutput;
    delete_bucket_policy(DeleteBucketPolicyInput) -> DeleteBucketPolicyOutput;
    get_bucket_policy_status(GetBucketPolicyStatusInput) -> GetBucketPolicyStatusOutput;
    put_public_access_block(PutPublicAccessBlockInput) -> PutPublicAccessBlockOutput;
    get_public_access_block(GetPublicAccessBlockInput) -> GetPublicAccessBlockOutput;
    delete_public_access_block(DeletePublicAccessBlockInput) -> DeletePublicAccessBlockOutput;
    put_bucket_cors(PutBucketCorsInput) -> PutBucketCorsOutput;
    get_bucket_cors(GetBucketCorsInput) -> GetBucketCorsOutput;
    delete_bucket_cors(DeleteBucketCorsInput) -> DeleteBucketCorsOutput;
    put_bucket_ownership_controls(PutBucketOwnershipControlsInput) -> PutBucketOwnershipControlsOutput;
    get_bucket_ownership_controls(GetBucketOwnershipControlsInput) -> GetBucketOwnershipControlsOutput;
    delete_bucket_ownership_controls(DeleteBucketOwnershipControlsInput) -> DeleteBucketOwnershipControlsOutput;
    get_object_attributes(GetObjectAttributesInput) -> GetObjectAttributesOutput;
    put_bucket_lifecycle_configuration(PutBucketLifecycleConfigurationInput) -> PutBucketLifecycleConfigurationOutput;
    get_bucket_lifecycle_configuration(GetBucketLifecycleConfigurationInput) -> GetBucketLifecycleConfigurationOutput;
    delete_bucket_lifecycle(DeleteBucketLifecycleInput) -> DeleteBucketLifecycleOutput;
    put_object_lock_configuration(PutObjectLockConfigurationInput) -> PutObjectLockConfigurationOutput;
    get_object_lock_configuration(GetObjectLockConfigurationInput) -> GetObjectLockConfigurationOutput;
    put_object_retention(PutObjectRetentionInput) -> PutObjectRetentionOutput;
    get_object_retention(GetObjectRetentionInput) -> GetObjectRetentionOutput;
    put_object_legal_hold(PutObjectLegalHoldInput) -> PutObjectLegalHoldOutput;
    get_object_legal_hold(GetObjectLegalHoldInput) -> GetObjectLegalHoldOutput;
    put_bucket_encryption(PutBucketEncryptionInput) -> PutBucketEncryptionOutput;
    get_bucket_encryption(GetBucketEncryptionInput) -> GetBucketEncryptionOutput;
    delete_bucket_encryption(DeleteBucketEncryptionInput) -> DeleteBucketEncryptionOutput;
}
