//! POST object: uploads from browser forms (`multipart/form-data` POSTs to a bucket URL).
//!
//! Ferry reads these forms itself instead of leaving them to s3s, which holds the whole file in
//! memory before anything checks it. Here the file is the streamed body of a PutObject.
//!
//! Invariants:
//! - Memory stays bounded whatever the file's size. The fields before the file are read into at
//!   most [`FIELDS_MAX`] bytes, and no more than [`PREAMBLE_MAX`] bytes of body come before the
//!   file's part (the parser buffers what it has not parsed). The file streams into the store;
//!   the fields after it are never read (S3 ignores them too).
//! - No byte of the file is read before the whole form is judged: its signature, then its policy
//!   (expiration, every condition but the length, and every field that no condition names),
//!   then the upload's access check. The access check is the one a PutObject of the key by the
//!   same principal gets: the bucket policy and Block Public Access on `s3:PutObject` of the
//!   object (with `s3:authType` `POST`), then the bucket's ACL.
//! - What the policy judges is what is stored: a field becomes a request header of the
//!   PutObject only if it is one ([`HEADER_FIELDS`]), `acl` and `tagging` become the headers
//!   their values are stored from, and fields that would say otherwise (`x-amz-acl`,
//!   `x-amz-tagging`) are refused. `Referer` and `User-Agent` are the request's own.
//! - The policy's `content-length-range` is enforced while the file streams; a file outside it
//!   is not stored.
//! - A form cannot carry Ferry's replication headers (`x-ferry-*` fields are refused), and a
//!   replication credential cannot post forms: replicas come only with header authentication.
//!
//! Answers follow S3. A stored upload gets 204, or the `success_action_status` asked (200, or
//! 201 with a `PostResponse` document), or a 303 to `success_action_redirect`. A malformed
//! form or policy gets 400; a bad signature, an expired policy, a failed condition or a field
//! the policy does not name gets 403.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use s3s::dto::*;
use s3s::post_policy::{PostPolicy, PostPolicyCondition};
use s3s::{S3Error, S3Request, S3Result, s3_error};

use crate::FerryS3;
use crate::auth::Host;

/// The most bytes the fields before the file may hold together (names and values). S3 bounds
/// a policy document to 20 KB; the rest is metadata (2 KB) and a few short fields.
pub(crate) const FIELDS_MAX: usize = 256 * 1024;

/// The most bytes of the body read before the file's part begins: the fields, the parts'
/// headers and boundaries, and whatever else a sender puts there (a body without boundaries,
/// endless part headers). One more read of the connection may come on top.
const PREAMBLE_MAX: usize = FIELDS_MAX + 768 * 1024;

/// Fields that say how the form is signed; no policy condition needs to name them.
const SIGNING_FIELDS: &[&str] = &["policy", "signature", "awsaccesskeyid", "x-amz-signature", "file"];

/// Fields that are request headers of the upload's PutObject, under the same name or a prefix
/// (`acl` is `x-amz-acl`, `tagging` is `x-amz-tagging`, both handled apart). No other field
/// becomes a header: what the policy judges is what is stored.
const HEADER_FIELDS: &[&str] = &[
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-md5",
    "content-type",
    "expires",
    "x-amz-expected-bucket-owner",
    "x-amz-sdk-checksum-algorithm",
    "x-amz-storage-class",
    "x-amz-website-redirect-location",
];
const HEADER_FIELD_PREFIXES: &[&str] =
    &["x-amz-meta-", "x-amz-grant-", "x-amz-checksum-", "x-amz-server-side-encryption", "x-amz-object-lock-"];

/// Headers of the request itself that policies read (`aws:Referer`, `aws:UserAgent`) or that
/// say how its body is framed; never taken from fields.
const REQUEST_HEADERS: &[http::HeaderName] =
    &[http::header::CONTENT_LENGTH, http::header::TRANSFER_ENCODING, http::header::REFERER, http::header::USER_AGENT];

/// What serves browser forms: the region's S3 implementation and its virtual hosts.
pub(crate) struct Forms {
    pub(crate) s3: FerryS3,
    pub(crate) host: Arc<Host>,
}

/// The fields of a form before its file, by lower-cased name, and the file.
struct Form {
    fields: BTreeMap<String, String>,
    file: multer::Field<'static>,
}

/// Who signed a form, and how.
struct Signer {
    user: crate::User,
    /// `s3:signatureversion`: `AWS` (SigV2) or `AWS4-HMAC-SHA256`.
    version: &'static str,
}

/// How far the body has been read before the file's part: read by the body's bound
/// ([`bounded_preamble`]), set by [`read_form`].
#[derive(Default)]
struct Preamble {
    file_reached: AtomicBool,
    too_long: AtomicBool,
}

impl Form {
    fn get(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

impl Forms {
    /// The bucket a request posts a form to; `None` when it is not a form upload to a bucket
    /// (s3s answers it).
    pub(crate) fn bucket_of<B>(&self, req: &http::Request<B>) -> Option<String> {
        if !is_form_post(req.method(), req.headers()) {
            return None;
        }
        match self.host.path_of(req) {
            Some(s3s::path::S3Path::Bucket { bucket }) => Some(bucket.into()),
            _ => None,
        }
    }

    /// Stores the file of the form `req` posts to `bucket`, and answers as S3 does.
    pub(crate) async fn upload(&self, req: http::Request<hyper::body::Incoming>, bucket: String) -> crate::HttpResponse {
        match self.try_upload(req, bucket).await {
            Ok(resp) => resp,
            Err(e) => e.to_http_response().unwrap_or_else(|_| {
                let mut resp = http::Response::new(s3s::Body::empty());
                *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                resp
            }),
        }
    }

    async fn try_upload(&self, req: http::Request<hyper::body::Incoming>, bucket: String) -> S3Result<crate::HttpResponse> {
        let (parts, body) = req.into_parts();
        let content_type = parts.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let boundary = multer::parse_boundary(content_type)
            .map_err(|_| s3_error!(MalformedPOSTRequest, "The multipart/form-data Content-Type has no boundary"))?;
        let preamble = Arc::new(Preamble::default());
        let body = bounded_preamble(s3s::Body::from(body), preamble.clone());
        let form = read_form(multer::Multipart::new(body, boundary), &preamble).await?;
        let key = object_key(&form)?;
        let signer = self.authenticate(&form)?;
        let range = match &signer {
            Some(_) => check_policy(&form, &bucket, &key)?,
            None => None,
        };
        let headers = request_headers(&form, &parts.headers)?;
        let form_signature = signer.as_ref().map(|s| s.version);
        let location = self.object_url(&parts, &bucket, &key);
        let mut req = S3Request {
            input: put_input(&form, bucket.clone(), key.clone())?,
            method: http::Method::PUT,
            uri: parts.uri,
            headers,
            extensions: http::Extensions::new(),
            credentials: signer.map(|s| s3s::auth::Credentials {
                access_key: s.user.access_key.clone(),
                secret_key: s.user.secret_key.clone().into(),
            }),
            region: s3s::region::Region::new(self.s3.region.clone().into()).ok(),
            service: Some("s3".to_owned()),
            trailing_headers: None,
        };
        if let Some(client) = parts.extensions.get::<crate::ClientInfo>() {
            req.extensions.insert(*client);
        }
        self.check_access(&mut req, form_signature).await?;
        let answer = Answer::of(&form)?;
        let violation = Arc::new(Mutex::new(None));
        req.input.body = Some(StreamingBlob::wrap(file_stream(form.file, range, violation.clone())));
        let out = match self.s3.put_object(req).await {
            Ok(out) => out.output,
            Err(e) => return Err(violation.lock().map(|mut v| v.take()).ok().flatten().unwrap_or(e)),
        };
        answer.response(&bucket, &key, &location, &out)
    }

    /// The URL of `key` in `bucket` as the form's request addressed the bucket.
    fn object_url(&self, parts: &http::request::Parts, bucket: &str, key: &str) -> String {
        let scheme = match parts.extensions.get::<crate::ClientInfo>() {
            Some(c) if c.secure => "https",
            _ => "http",
        };
        let host = parts.headers.get(http::header::HOST).and_then(|v| v.to_str().ok()).or_else(|| parts.uri.host());
        let base = host.map(|h| format!("{scheme}://{h}")).unwrap_or_default();
        let key = crate::dto::url_encode(key);
        if self.host.virtual_bucket_of(&parts.headers, &parts.uri).is_some() {
            format!("{base}/{key}")
        } else {
            format!("{base}/{bucket}/{key}")
        }
    }

    /// Who signed the form (`None`: an anonymous upload), its signature checked.
    fn authenticate(&self, form: &Form) -> S3Result<Option<Signer>> {
        let policy = form.get("policy");
        let (user, verified, version) = match (form.get("x-amz-signature"), form.get("signature"), policy) {
            (Some(signature), _, Some(policy)) => {
                let (user, verified) = self.verify_v4(form, signature, policy)?;
                (user, verified, "AWS4-HMAC-SHA256")
            }
            (None, Some(signature), Some(policy)) => {
                let user = self.user(form.get("awsaccesskeyid").unwrap_or(""))?;
                let signature = base64::engine::general_purpose::STANDARD.decode(signature).unwrap_or_default();
                (
                    user,
                    verify::<hmac::Hmac<sha1::Sha1>>(user.secret_key.as_bytes(), policy, &signature),
                    "AWS",
                )
            }
            (Some(_), _, None) | (None, Some(_), None) => {
                return Err(s3_error!(
                    InvalidArgument,
                    "Bucket POST must contain a field named 'policy' when it is signed"
                ));
            }
            (None, None, _)
                if policy.is_some() || form.get("awsaccesskeyid").is_some() || form.get("x-amz-credential").is_some() =>
            {
                return Err(s3_error!(InvalidArgument, "Bucket POST with a policy or a credential must be signed"));
            }
            (None, None, _) => return Ok(None),
        };
        if !verified {
            return Err(s3_error!(
                SignatureDoesNotMatch,
                "The request signature we calculated does not match the signature you provided"
            ));
        }
        // Replication credentials are not accounts, and write replicas only with header
        // authentication. (Said only to whoever holds the credential's secret.)
        if user.replication {
            return Err(s3_error!(AccessDenied, "A replication credential may only write replicas"));
        }
        Ok(Some(Signer { user: user.clone(), version }))
    }

    /// The credential of a SigV4-signed form, and whether `signature` is its signature of
    /// `policy`.
    fn verify_v4(&self, form: &Form, signature: &str, policy: &str) -> S3Result<(&crate::User, bool)> {
        if form.get("x-amz-algorithm") != Some("AWS4-HMAC-SHA256") {
            return Err(s3_error!(InvalidArgument, "x-amz-algorithm must be AWS4-HMAC-SHA256"));
        }
        let credential = form.get("x-amz-credential").unwrap_or("");
        let scope: Vec<&str> = credential.split('/').collect();
        let &[access_key, date, region, "s3", "aws4_request"] = scope.as_slice() else {
            return Err(s3_error!(
                InvalidArgument,
                "x-amz-credential is not <key>/<date>/<region>/s3/aws4_request"
            ));
        };
        if !form.get("x-amz-date").is_some_and(|d| d.starts_with(date)) {
            return Err(s3_error!(InvalidArgument, "x-amz-credential's date is not x-amz-date's"));
        }
        if region != self.s3.region && region != "us-east-1" {
            return Err(s3_error!(
                AuthorizationHeaderMalformed,
                "the region '{region}' is wrong; expecting '{}'",
                self.s3.region
            ));
        }
        let user = self.user(access_key)?;
        let day = time::Date::parse(date, time::macros::format_description!("[year][month][day]"))
            .map_err(|_| s3_error!(InvalidArgument, "x-amz-credential's date is not YYYYMMDD"))?;
        let key = aws_sigv4::sign::v4::generate_signing_key(&user.secret_key, day.midnight().assume_utc().into(), region, "s3");
        let signature = hex::decode(signature).unwrap_or_default();
        Ok((user, verify::<hmac::Hmac<sha2::Sha256>>(key.as_ref(), policy, &signature)))
    }

    /// The credential of an access key.
    fn user(&self, access_key: &str) -> S3Result<&crate::User> {
        self.s3
            .users
            .get(access_key)
            .ok_or_else(|| s3_error!(InvalidAccessKeyId, "The AWS Access Key Id you provided does not exist in our records."))
    }

    /// The access check of a PutObject of the form's key (what s3s runs before an operation).
    async fn check_access(&self, req: &mut S3Request<PutObjectInput>, form_signature: Option<&'static str>) -> S3Result<()> {
        crate::replication::replica::check_request(false, "PutObject", &req.method, &req.uri, &req.headers)?;
        let asked = crate::bucket_access::Asked {
            form_signature,
            ..crate::bucket_access::asked_of(req, "PutObject", &req.input.bucket, Some(&req.input.key), None)
        };
        let grants = crate::bucket_access::check(&self.s3.store, &self.s3.users, &asked).await?;
        grants.record(&mut req.extensions);
        Ok(())
    }
}

/// Whether a request is a browser form upload: a `multipart/form-data` POST.
pub(crate) fn is_form_post(method: &http::Method, headers: &http::HeaderMap) -> bool {
    *method == http::Method::POST
        && headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("multipart/form-data"))
}

/// The MAC `M` of `policy` under `key` equals `signature` (compared in constant time).
fn verify<M: hmac::Mac + hmac::KeyInit>(key: &[u8], policy: &str, signature: &[u8]) -> bool {
    let Ok(mut mac) = <M as hmac::KeyInit>::new_from_slice(key) else { return false };
    mac.update(policy.as_bytes());
    mac.verify_slice(signature).is_ok()
}

/// `body`, failing once more than [`PREAMBLE_MAX`] bytes come before the file's part begins
/// (multer buffers what it has not parsed without bound).
fn bounded_preamble(
    body: s3s::Body,
    preamble: Arc<Preamble>,
) -> impl futures::Stream<Item = Result<Bytes, s3s::StdError>> + Send + 'static {
    let mut seen = 0usize;
    futures::StreamExt::map(body, move |chunk| {
        let chunk = chunk?;
        if !preamble.file_reached.load(Ordering::Acquire) {
            if seen > PREAMBLE_MAX {
                preamble.too_long.store(true, Ordering::Release);
                return Err("the fields before the file are too large".into());
            }
            seen = seen.saturating_add(chunk.len());
        }
        Ok(chunk)
    })
}

/// Reads the fields up to the file.
async fn read_form(mut multipart: multer::Multipart<'static>, preamble: &Preamble) -> S3Result<Form> {
    let too_large = || {
        s3_error!(
            MaxPostPreDataLengthExceededError,
            "Your POST request fields preceding the upload file were too large."
        )
    };
    let malformed = |e: multer::Error| {
        if preamble.too_long.load(Ordering::Acquire) {
            return too_large();
        }
        s3_error!(
            MalformedPOSTRequest,
            "The body of your POST request is not well-formed multipart/form-data: {e}"
        )
    };
    let mut fields = BTreeMap::new();
    let mut size = 0usize;
    loop {
        let Some(mut field) = multipart.next_field().await.map_err(malformed)? else {
            return Err(s3_error!(
                IncorrectNumberOfFilesInPostRequest,
                "POST requires exactly one file upload per request."
            ));
        };
        let name = field.name().unwrap_or("").to_ascii_lowercase();
        if name == "file" {
            preamble.file_reached.store(true, Ordering::Release);
            return Ok(Form { fields, file: field });
        }
        size += name.len();
        let mut value = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(malformed)? {
            size += chunk.len();
            if size > FIELDS_MAX {
                return Err(too_large());
            }
            value.extend_from_slice(&chunk);
        }
        let value = String::from_utf8(value).map_err(|_| s3_error!(InvalidArgument, "The form field {name} is not UTF-8"))?;
        if fields.insert(name.clone(), value).is_some() {
            return Err(s3_error!(InvalidArgument, "The form field {name} is given more than once"));
        }
    }
}

/// The key the file is stored as: the `key` field, with `${filename}` replaced by the file's
/// name.
fn object_key(form: &Form) -> S3Result<String> {
    let key = form.get("key").ok_or_else(|| s3_error!(InvalidArgument, "Bucket POST must contain a field named 'key'."))?;
    // The file's name without the folders some browsers send with it.
    let file_name = form.file.file_name().unwrap_or("");
    let file_name = file_name.rsplit(['/', '\\']).next().unwrap_or(file_name);
    let key = key.replace("${filename}", file_name);
    crate::dto::check_key(&key)?;
    Ok(key)
}

/// Checks a signed form's policy: it parses, has not expired, and every condition but the
/// length holds; every field but the signing ones is named by a condition. Returns the
/// allowed file sizes, if the policy bounds them.
fn check_policy(form: &Form, bucket: &str, key: &str) -> S3Result<Option<(u64, u64)>> {
    let invalid = |why: &str| s3_error!(InvalidPolicyDocument, "Invalid Policy: {why}");
    let text = base64::engine::general_purpose::STANDARD
        .decode(form.get("policy").unwrap_or(""))
        .map_err(|_| invalid("the policy is not base64"))?;
    let text = std::str::from_utf8(&text).map_err(|_| invalid("the policy is not UTF-8"))?;
    let raw: serde_json::Value = serde_json::from_str(text).map_err(|_| invalid("the policy is not JSON"))?;
    let expiration = raw.get("expiration").and_then(serde_json::Value::as_str).ok_or_else(|| invalid("no expiration"))?;
    let expiration = time::OffsetDateTime::parse(expiration, &time::format_description::well_known::Iso8601::DEFAULT)
        .ok()
        .filter(|_| expiration.ends_with('Z') && expiration.contains('T'))
        .ok_or_else(|| invalid("the expiration is not an ISO 8601 UTC time (2026-01-31T12:00:00Z)"))?;
    let policy = PostPolicy::from_json(text).map_err(|e| invalid(&e.to_string()))?;
    if time::OffsetDateTime::now_utc() >= expiration {
        return Err(s3_error!(AccessDenied, "Invalid according to Policy: Policy expired."));
    }
    let value = |field: &str| match field {
        "bucket" => bucket,
        "key" => key,
        // A field the form does not send compares as empty, as S3 and Ceph do: so
        // `["starts-with", "$x-amz-server-side-encryption", ""]` allows leaving it out.
        _ => form.get(field).unwrap_or(""),
    };
    let mut range = None;
    for condition in &policy.conditions {
        let failed = |c: String| s3_error!(AccessDenied, "Invalid according to Policy: Policy Condition failed: {c}");
        match condition {
            PostPolicyCondition::Eq { field, value: want } => {
                if value(field) != want.as_str() {
                    return Err(failed(format!("[\"eq\", \"${field}\", \"{want}\"]")));
                }
            }
            PostPolicyCondition::StartsWith { field, prefix } => {
                if !value(field).starts_with(prefix.as_str()) {
                    return Err(failed(format!("[\"starts-with\", \"${field}\", \"{prefix}\"]")));
                }
            }
            PostPolicyCondition::ContentLengthRange { min, max } => {
                let (lo, hi) = range.unwrap_or((0, u64::MAX));
                range = Some((lo.max(*min), hi.min(*max)));
            }
        }
    }
    let named = |name: &str| {
        policy.conditions.iter().any(|c| match c {
            PostPolicyCondition::Eq { field, .. } | PostPolicyCondition::StartsWith { field, .. } => field == name,
            PostPolicyCondition::ContentLengthRange { .. } => false,
        })
    };
    let free =
        |name: &str| SIGNING_FIELDS.contains(&name) || name.starts_with("x-ignore-") || name.starts_with("x-amz-checksum-");
    if let Some(extra) = form.fields.keys().find(|n| !free(n) && !named(n)) {
        return Err(s3_error!(AccessDenied, "Invalid according to Policy: Extra input fields: {extra}"));
    }
    Ok(range)
}

/// The headers the upload's PutObject is judged and stored with: the fields that are its
/// request headers ([`HEADER_FIELDS`]; `acl` as `x-amz-acl`, `tagging` as `x-amz-tagging`), and
/// the request's own [`REQUEST_HEADERS`]. A field that would say something else to the policy
/// than to the store (`x-amz-acl`, `x-amz-tagging`) is refused, and so are Ferry's replication
/// headers.
fn request_headers(form: &Form, sent: &http::HeaderMap) -> S3Result<http::HeaderMap> {
    let mut headers = http::HeaderMap::new();
    for h in REQUEST_HEADERS {
        if let Some(v) = sent.get(h) {
            headers.insert(h, v.clone());
        }
    }
    for (name, value) in &form.fields {
        let name = match name.as_str() {
            "acl" => "x-amz-acl",
            "x-amz-acl" | "x-amz-tagging" => {
                let field = name.trim_start_matches("x-amz-");
                return Err(s3_error!(
                    InvalidArgument,
                    "A form gives its {field} in the field '{field}', not '{name}'"
                ));
            }
            n if n.starts_with("x-ferry-") => {
                return Err(s3_error!(
                    AccessDenied,
                    "x-ferry-* fields are accepted only from a replication credential"
                ));
            }
            n if HEADER_FIELDS.contains(&n) || HEADER_FIELD_PREFIXES.iter().any(|p| n.starts_with(p)) => n,
            _ => continue,
        };
        let (Ok(name), Ok(value)) = (http::HeaderName::try_from(name), http::HeaderValue::try_from(value.as_str())) else {
            return Err(s3_error!(InvalidArgument, "The form field {name} is not a valid header value"));
        };
        headers.insert(name, value);
    }
    if let Some(tags) = tagging(form)? {
        let value =
            http::HeaderValue::try_from(tags).map_err(|_| s3_error!(InvalidArgument, "The tagging field is not valid"))?;
        headers.insert("x-amz-tagging", value);
    }
    Ok(headers)
}

/// The `tagging` field (a `Tagging` XML document) as the query string of `x-amz-tagging`.
fn tagging(form: &Form) -> S3Result<Option<String>> {
    let Some(xml) = form.get("tagging") else { return Ok(None) };
    let mut d = s3s::xml::Deserializer::new(xml.as_bytes());
    let tagging = <Tagging as s3s::xml::Deserialize>::deserialize(&mut d)
        .map_err(|_| s3_error!(MalformedXML, "The tagging field is not a Tagging document"))?;
    let enc = crate::dto::query_encode;
    let pairs: Vec<String> = tagging
        .tag_set
        .iter()
        .map(|t| format!("{}={}", enc(t.key.as_deref().unwrap_or("")), enc(t.value.as_deref().unwrap_or(""))))
        .collect();
    Ok(Some(pairs.join("&")))
}

/// The PutObject the form asks for (all but its body).
fn put_input(form: &Form, bucket: String, key: String) -> S3Result<PutObjectInput> {
    let f = |name: &str| form.get(name).map(str::to_owned);
    let expires = match form.get("expires") {
        Some(v) => Some(
            Timestamp::parse(TimestampFormat::HttpDate, v)
                .map_err(|_| s3_error!(InvalidArgument, "The Expires field is not an HTTP date"))?,
        ),
        None => None,
    };
    let metadata: Metadata = form
        .fields
        .iter()
        .filter_map(|(n, v)| n.strip_prefix("x-amz-meta-").filter(|k| !k.is_empty()).map(|k| (k.to_owned(), v.clone())))
        .collect();
    Ok(PutObjectInput {
        bucket,
        key,
        acl: f("acl").map(ObjectCannedACL::from),
        cache_control: f("cache-control"),
        content_disposition: f("content-disposition"),
        content_encoding: f("content-encoding"),
        content_language: f("content-language"),
        content_md5: f("content-md5"),
        content_type: f("content-type"),
        expires,
        metadata: (!metadata.is_empty()).then_some(metadata),
        storage_class: f("x-amz-storage-class").map(StorageClass::from),
        tagging: tagging(form)?,
        website_redirect_location: f("x-amz-website-redirect-location"),
        checksum_algorithm: f("x-amz-sdk-checksum-algorithm").map(ChecksumAlgorithm::from),
        checksum_crc32: f("x-amz-checksum-crc32"),
        checksum_crc32c: f("x-amz-checksum-crc32c"),
        checksum_crc64nvme: f("x-amz-checksum-crc64nvme"),
        checksum_sha1: f("x-amz-checksum-sha1"),
        checksum_sha256: f("x-amz-checksum-sha256"),
        grant_full_control: f("x-amz-grant-full-control"),
        grant_read: f("x-amz-grant-read"),
        grant_read_acp: f("x-amz-grant-read-acp"),
        grant_write_acp: f("x-amz-grant-write-acp"),
        expected_bucket_owner: f("x-amz-expected-bucket-owner"),
        server_side_encryption: f("x-amz-server-side-encryption").map(ServerSideEncryption::from),
        ssekms_key_id: f("x-amz-server-side-encryption-aws-kms-key-id"),
        sse_customer_algorithm: f("x-amz-server-side-encryption-customer-algorithm"),
        sse_customer_key: f("x-amz-server-side-encryption-customer-key"),
        sse_customer_key_md5: f("x-amz-server-side-encryption-customer-key-md5"),
        object_lock_mode: f("x-amz-object-lock-mode").map(ObjectLockMode::from),
        object_lock_legal_hold_status: f("x-amz-object-lock-legal-hold").map(ObjectLockLegalHoldStatus::from),
        object_lock_retain_until_date: f("x-amz-object-lock-retain-until-date")
            .map(|d| {
                Timestamp::parse(TimestampFormat::DateTime, &d)
                    .map_err(|_| s3_error!(InvalidArgument, "x-amz-object-lock-retain-until-date is not an ISO 8601 date"))
            })
            .transpose()?,
        ..PutObjectInput::default()
    })
}

/// The file as the upload's body, held to the policy's sizes: a file outside them ends the
/// stream with an error, and `violation` says which.
fn file_stream(
    file: multer::Field<'static>,
    range: Option<(u64, u64)>,
    violation: Arc<Mutex<Option<S3Error>>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + 'static {
    let (min, max) = range.unwrap_or((0, u64::MAX));
    let refuse = move |e: S3Error| {
        let message = e.message().unwrap_or("").to_owned();
        if let Ok(mut v) = violation.lock() {
            *v = Some(e);
        }
        Err(std::io::Error::other(message))
    };
    futures::stream::unfold((file, 0u64, false), move |(mut file, seen, done)| {
        let refuse = refuse.clone();
        async move {
            if done {
                return None;
            }
            match file.chunk().await {
                Ok(Some(chunk)) => {
                    let seen = seen.saturating_add(chunk.len() as u64);
                    if seen > max {
                        let e = s3_error!(EntityTooLarge, "Your proposed upload exceeds the maximum allowed size");
                        return Some((refuse(e), (file, seen, true)));
                    }
                    Some((Ok(chunk), (file, seen, false)))
                }
                Ok(None) if seen < min => {
                    let e = s3_error!(EntityTooSmall, "Your proposed upload is smaller than the minimum allowed size");
                    Some((refuse(e), (file, seen, true)))
                }
                Ok(None) => None,
                Err(e) => Some((Err(std::io::Error::other(e)), (file, seen, true))),
            }
        }
    })
}

/// How a stored upload is answered.
enum Answer {
    Redirect(String),
    Status(u16),
}

impl Answer {
    fn of(form: &Form) -> S3Result<Self> {
        if let Some(url) = form.get("success_action_redirect").or_else(|| form.get("redirect")) {
            if url.chars().any(char::is_control) || http::Uri::try_from(url).is_err() {
                return Err(s3_error!(InvalidArgument, "success_action_redirect is not a URL"));
            }
            return Ok(Self::Redirect(url.to_owned()));
        }
        Ok(Self::Status(match form.get("success_action_status") {
            Some("200") => 200,
            Some("201") => 201,
            _ => 204,
        }))
    }

    /// The answer for `key` stored in `bucket` at the URL `location`.
    fn response(self, bucket: &str, key: &str, location: &str, out: &PutObjectOutput) -> S3Result<crate::HttpResponse> {
        let etag = out.e_tag.as_ref().map(|e| e.value().to_owned()).unwrap_or_default();
        let enc = crate::dto::query_encode;
        let (status, body, extra) = match self {
            Self::Redirect(url) => {
                let sep = if url.contains('?') { '&' } else { '?' };
                let to = format!("{url}{sep}bucket={}&key={}&etag={}", enc(bucket), enc(key), enc(&format!("\"{etag}\"")));
                (303, String::new(), Some(to))
            }
            Self::Status(201) => {
                let x = crate::dto::xml_escape;
                let body = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<PostResponse><Location>{}</Location><Bucket>{}</Bucket>\
                     <Key>{}</Key><ETag>\"{}\"</ETag></PostResponse>",
                    x(location),
                    x(bucket),
                    x(key),
                    x(&etag)
                );
                (201, body, None)
            }
            Self::Status(s) => (s, String::new(), None),
        };
        let mut resp = http::Response::builder()
            .status(status)
            .header(http::header::ETAG, format!("\"{etag}\""))
            .header(http::header::LOCATION, extra.as_deref().unwrap_or(location));
        if let Some(v) = &out.version_id {
            resp = resp.header("x-amz-version-id", v);
        }
        if status == 201 {
            resp = resp.header(http::header::CONTENT_TYPE, "application/xml");
        }
        resp.body(s3s::Body::from(body)).map_err(|e| s3_error!(e, InternalError, "the answer could not be built"))
    }
}
