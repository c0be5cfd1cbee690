//! Who is asking, and from where: credentials, the signing-region check, and virtual hosts.

use std::collections::HashMap;

use ferry_store::model::{BucketRecord, Owner, PublicAccessBlock};
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::host::{S3Host, VirtualHost};
use s3s::{S3Result, s3_error};
use sha2::Digest as _;

/// One credential and the owner it acts as.
#[derive(Debug, Clone)]
pub struct User {
    /// Access key id.
    pub access_key: String,
    /// Secret key.
    pub secret_key: String,
    /// The owner this credential acts as.
    pub owner: Owner,
    /// E-mail address, for ACL grants by e-mail.
    pub email: Option<String>,
    /// A replication credential: writes replicas for peers, is not an account.
    pub replication: bool,
    /// The account's Block Public Access switches (config): on for every bucket it owns.
    pub public_access_block: PublicAccessBlock,
}

impl User {
    /// A user whose owner id is derived from the access key (stable across restarts and regions)
    /// unless given, and whose display name defaults to the access key.
    #[must_use]
    pub fn new(access_key: &str, secret_key: &str, display_name: Option<&str>, user_id: Option<&str>) -> Self {
        let id = user_id.map_or_else(|| hex::encode(sha2::Sha256::digest(access_key.as_bytes())), str::to_owned);
        Self {
            access_key: access_key.to_owned(),
            secret_key: secret_key.to_owned(),
            owner: Owner { id, display_name: display_name.unwrap_or(access_key).to_owned() },
            email: None,
            replication: false,
            public_access_block: PublicAccessBlock::default(),
        }
    }

    /// Sets the account's Block Public Access switches.
    #[must_use]
    pub fn with_public_access_block(mut self, block: PublicAccessBlock) -> Self {
        self.public_access_block = block;
        self
    }

    /// Makes this a replication credential (see `replica.rs`).
    #[must_use]
    pub fn replicator(mut self) -> Self {
        self.replication = true;
        self
    }

    /// Sets the e-mail address.
    #[must_use]
    pub fn with_email(mut self, email: Option<&str>) -> Self {
        self.email = email.map(str::to_owned);
        self
    }
}

/// The credentials a region accepts.
#[derive(Debug, Default)]
pub struct Users {
    by_key: HashMap<String, User>,
}

impl Users {
    /// A set of users.
    #[must_use]
    pub fn new(users: impl IntoIterator<Item = User>) -> Self {
        Self { by_key: users.into_iter().map(|u| (u.access_key.clone(), u)).collect() }
    }

    /// The user with this access key.
    #[must_use]
    pub fn get(&self, access_key: &str) -> Option<&User> {
        self.by_key.get(access_key)
    }

    /// The account signing with this access key: `None` for unknown keys and for replication
    /// credentials, which are not accounts.
    #[must_use]
    pub fn account(&self, access_key: &str) -> Option<&User> {
        self.get(access_key).filter(|u| !u.replication)
    }

    /// Finds an owner (an account) by canonical id.
    #[must_use]
    pub fn find_owner(&self, id: &str) -> Option<&Owner> {
        self.by_key.values().filter(|u| !u.replication).map(|u| &u.owner).find(|o| o.id == id)
    }

    /// Finds an owner by e-mail address.
    #[must_use]
    pub fn find_email(&self, email: &str) -> Option<&Owner> {
        self.by_key.values().find(|u| u.email.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(email))).map(|u| &u.owner)
    }

    /// The id of the account an access key or user id names, if it is an account here.
    #[must_use]
    pub fn account_id(&self, key_or_id: &str) -> Option<String> {
        self.account(key_or_id).map(|u| u.owner.id.clone()).or_else(|| self.find_owner(key_or_id).map(|o| o.id.clone()))
    }

    /// The Block Public Access switches that count for `bucket`: each one on when the bucket
    /// turns it on or its owner's account does (AWS's account and bucket levels combined).
    #[must_use]
    pub fn public_access_block(&self, bucket: &BucketRecord) -> PublicAccessBlock {
        bucket.config.public_access_block.unwrap_or_default().or(self.account_public_access_block(&bucket.owner.id))
    }

    /// The Block Public Access switches the account with canonical id `owner_id` turns on for
    /// all its buckets (config).
    #[must_use]
    pub fn account_public_access_block(&self, owner_id: &str) -> PublicAccessBlock {
        self.by_key
            .values()
            .filter(|u| !u.replication && u.owner.id == owner_id)
            .fold(PublicAccessBlock::default(), |a, u| a.or(u.public_access_block))
    }
}

pub(crate) struct Auth {
    pub(crate) users: std::sync::Arc<Users>,
}

#[async_trait::async_trait]
impl S3Auth for Auth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.users.get(access_key) {
            Some(u) => Ok(SecretKey::from(u.secret_key.clone())),
            None => Err(s3_error!(
                InvalidAccessKeyId,
                "The AWS access key Id you provided does not exist in our records."
            )),
        }
    }
}

/// Accepts requests signed for this region, or for `us-east-1` (the region S3 clients default to
/// and sign global operations with). Anonymous requests pass on to the handlers, which allow only
/// what ACLs grant to everyone. Requests with Ferry's replication headers, and requests from
/// replication credentials, are checked here first (`replica::check_request`).
pub(crate) struct Access {
    pub(crate) region: String,
    pub(crate) users: std::sync::Arc<Users>,
    pub(crate) store: std::sync::Arc<ferry_store::Store>,
}

/// The region of a SigV4 credential scope `AK/DATE/REGION/SERVICE/aws4_request`.
fn scope_region(credential: &str) -> Option<&str> {
    credential.split('/').nth(2)
}

/// The signing region of a request: from the Authorization header or the presigned query.
pub(crate) fn signed_region(headers: &http::HeaderMap, uri: &http::Uri) -> Option<String> {
    if let Some(auth) = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        && let Some(rest) = auth.strip_prefix("AWS4-HMAC-SHA256")
    {
        let cred = rest.split(',').map(str::trim).find_map(|p| p.strip_prefix("Credential="))?;
        return scope_region(cred).map(str::to_owned);
    }
    let query = uri.query()?;
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("X-Amz-Credential=") {
            let decoded = percent_encoding::percent_decode_str(v).decode_utf8().ok()?;
            return scope_region(&decoded).map(str::to_owned);
        }
    }
    None
}

/// Refuses a request signed for another region than `region` (or `us-east-1`, which S3
/// clients sign global operations with).
pub(crate) fn check_signed_region(region: &str, headers: &http::HeaderMap, uri: &http::Uri) -> S3Result<()> {
    match signed_region(headers, uri) {
        Some(signed) if signed != region && signed != "us-east-1" => Err(s3_error!(
            AuthorizationHeaderMalformed,
            "the region '{signed}' is wrong; expecting '{region}'"
        )),
        _ => Ok(()),
    }
}

/// True when a request is signed over its payload's SHA-256 (`x-amz-content-sha256` is a
/// hash, not UNSIGNED-PAYLOAD or a streaming mode).
pub(crate) fn signs_payload(headers: &http::HeaderMap) -> bool {
    headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Presigned URLs may last from 1 second to 7 days.
const MAX_PRESIGNED_EXPIRY_SECS: i64 = 7 * 24 * 3600;

/// `X-Amz-Expires` of a presigned SigV4 URL, if it is one.
fn presigned_expiry(uri: &http::Uri) -> Option<&str> {
    uri.query()?.split('&').find_map(|p| p.strip_prefix("X-Amz-Expires="))
}

/// Refuses presigned URLs whose lifetime is outside 1 s ..= 7 days (AccessDenied, as S3 does).
/// Checked before signature verification, which would answer 400 for a negative value.
pub(crate) fn check_presigned_expiry(uri: &http::Uri) -> S3Result<()> {
    match presigned_expiry(uri).map(str::parse::<i64>) {
        None => Ok(()),
        Some(Ok(secs)) if (1..=MAX_PRESIGNED_EXPIRY_SECS).contains(&secs) => Ok(()),
        Some(_) => Err(s3_error!(AccessDenied, "X-Amz-Expires must be between 1 and 604800 seconds")),
    }
}

/// How far a SigV2 request's date may be from this region's clock, as on S3 (and as s3s allows
/// SigV4 requests).
const MAX_SIGV2_SKEW: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Refuses a SigV2 header-signed request whose date (`x-amz-date`, else `Date`) is missing, not
/// an HTTP date (AccessDenied), or more than 15 minutes from this region's clock
/// (RequestTimeTooSkewed). s3s 0.14 checks neither, so a recorded SigV2 request could be
/// replayed for ever. Checked before the signature, as S3 does.
pub(crate) fn check_sigv2_date(headers: &http::HeaderMap) -> S3Result<()> {
    let v2 = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).is_some_and(|a| a.starts_with("AWS "));
    if !v2 {
        return Ok(());
    }
    let date = headers.get("x-amz-date").or_else(|| headers.get(http::header::DATE)).and_then(|v| v.to_str().ok());
    let Some(date) = date.and_then(http_date) else {
        return Err(s3_error!(AccessDenied, "AWS authentication requires a valid Date or x-amz-date header"));
    };
    let now = std::time::SystemTime::now();
    let skew = now.duration_since(date).or_else(|_| date.duration_since(now)).unwrap_or_default();
    if skew > MAX_SIGV2_SKEW {
        return Err(s3_error!(
            RequestTimeTooSkewed,
            "The difference between the request time and the current time is too large."
        ));
    }
    Ok(())
}

/// An HTTP date, from 1970 on. As S3 does, a wrong day of the week is not held against it
/// (`Tue, 07 Jul 2010 ...`, a Wednesday).
fn http_date(text: &str) -> Option<std::time::SystemTime> {
    if let Ok(t) = httpdate::parse_http_date(text) {
        return Some(t);
    }
    let (_, rest) = text.split_once(", ")?;
    let format = time::macros::format_description!("[day] [month repr:short] [year] [hour]:[minute]:[second] GMT");
    let t = time::PrimitiveDateTime::parse(rest, &format).ok()?.assume_utc();
    (t.unix_timestamp() >= 0).then(|| t.into())
}

#[async_trait::async_trait]
impl S3Access for Access {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        check_signed_region(&self.region, cx.headers(), cx.uri())?;
        let replicator = cx.credentials().and_then(|c| self.users.get(&c.access_key)).is_some_and(|u| u.replication);
        let op = cx.s3_op().name().to_owned();
        let op = op.as_str();
        if let Some(r) = crate::replication::replica::check_request(replicator, op, cx.method(), cx.uri(), cx.headers())? {
            cx.extensions_mut().insert(r);
        }
        // Replication credentials are not accounts: their rights come from the destination's
        // replica sources (`replica.rs`), not from bucket policies.
        if replicator {
            return Ok(());
        }
        let client = cx.extensions_mut().get::<crate::ClientInfo>().copied();
        let (bucket, key) = match cx.s3_path() {
            s3s::path::S3Path::Bucket { bucket } => (bucket.as_ref(), None),
            s3s::path::S3Path::Object { bucket, key } => (bucket.as_ref(), Some(key.as_ref())),
            s3s::path::S3Path::Root => return Ok(()),
        };
        // Decoded as the handler decodes it: the policy must judge the version the request acts on.
        let version_id = crate::bucket_access::query_param(cx.uri(), "versionId");
        let asked = crate::bucket_access::Asked {
            op,
            bucket,
            key,
            version_id: version_id.as_deref(),
            access_key: cx.credentials().map(|c| c.access_key.as_str()),
            uri: cx.uri(),
            headers: cx.headers(),
            client,
            listed_prefix: None,
            request_tags: None,
            form_signature: None,
        };
        let grants = crate::bucket_access::check(&self.store, &self.users, &asked).await?;
        grants.record(cx.extensions_mut());
        Ok(())
    }
}

/// AWS bucket naming rules, plus: a label may not end with a dash (`foo-.bar`), as in DNS.
pub(crate) struct BucketNames;

impl s3s::validation::NameValidation for BucketNames {
    fn validate_bucket_name(&self, name: &str) -> bool {
        s3s::path::check_bucket_name(name) && !name.contains("-.")
    }
}

/// Virtual-host parsing that never breaks path-style requests: only `BUCKET.<domain>` for one of
/// the configured base domains is virtual-host style; every other host name is path-style.
pub(crate) struct Host {
    domains: Vec<String>,
}

impl Host {
    pub(crate) fn new(mut domains: Vec<String>) -> Self {
        // Longest first, so `a.b.example` wins over `example` for `bucket.a.b.example`.
        domains.sort_by_key(|d| std::cmp::Reverse(d.len()));
        Self { domains }
    }

    /// The bucket a request's host names (virtual-host style), if it names one.
    pub(crate) fn virtual_bucket<B>(&self, req: &http::Request<B>) -> Option<String> {
        self.virtual_bucket_of(req.headers(), req.uri())
    }

    /// [`Self::virtual_bucket`] of a request's headers and URI.
    pub(crate) fn virtual_bucket_of(&self, headers: &http::HeaderMap, uri: &http::Uri) -> Option<String> {
        let host = headers.get(http::header::HOST).and_then(|v| v.to_str().ok()).or_else(|| uri.host())?;
        self.parse_host_header(host).ok()?.bucket().map(str::to_owned)
    }

    /// What a request addresses: the bucket (and key) of its host and path.
    pub(crate) fn path_of<B>(&self, req: &http::Request<B>) -> Option<s3s::path::S3Path> {
        let path = req.uri().path();
        match self.virtual_bucket(req) {
            Some(b) => s3s::path::parse_virtual_hosted_style_with_validation(Some(&b), path, &BucketNames).ok(),
            None => s3s::path::parse_path_style_with_validation(path, &BucketNames).ok(),
        }
    }

    /// SigV2 signs a path-style request for a bucket's root (`PUT /bucket`: CreateBucket) with
    /// the resource `/bucket/`: the bucket, then the empty key. botocore signs it so, and S3
    /// accepts it; s3s 0.14 signs the path as sent, so such a request never verified. Returns
    /// the request's URI with the path `/bucket/` (the same bucket, for s3s's routing too) when
    /// `req` is such a request.
    pub(crate) fn sigv2_bucket_root<B>(&self, req: &http::Request<B>) -> Option<http::Uri> {
        let header_v2 =
            req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).is_some_and(|a| a.starts_with("AWS "));
        let query = req.uri().query();
        let presigned_v2 = query.is_some_and(|q| q.split('&').any(|p| p.starts_with("AWSAccessKeyId=")));
        let bucket = req.uri().path().strip_prefix('/').filter(|b| !b.is_empty() && !b.contains('/'))?;
        if !(header_v2 || presigned_v2) || self.virtual_bucket(req).is_some() {
            return None;
        }
        let path = match query {
            Some(q) => format!("/{bucket}/?{q}"),
            None => format!("/{bucket}/"),
        };
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = Some(path.parse().ok()?);
        http::Uri::from_parts(parts).ok()
    }
}

impl S3Host for Host {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        let name = strip_port(host);
        for d in &self.domains {
            if name.eq_ignore_ascii_case(d) {
                return Ok(VirtualHost::new(d.as_str()));
            }
            if name.len() > d.len() + 1
                && name.is_char_boundary(name.len() - d.len() - 1)
                && name[name.len() - d.len()..].eq_ignore_ascii_case(d)
                && name.as_bytes()[name.len() - d.len() - 1] == b'.'
            {
                return Ok(VirtualHost::new(d.as_str()).with_bucket(&name[..name.len() - d.len() - 1]));
            }
        }
        Ok(VirtualHost::new(name))
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &host[..=h.len()]);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_are_read_whatever_their_day_of_the_week() {
        let at = |s: &str| http_date(s).and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs());
        assert_eq!(at("Wed, 07 Jul 2010 21:53:04 GMT"), Some(1_278_539_584));
        assert_eq!(at("Tue, 07 Jul 2010 21:53:04 GMT"), Some(1_278_539_584));
        assert_eq!(at("Wednesday, 07-Jul-10 21:53:04 GMT"), Some(1_278_539_584));
        assert_eq!(at("Tue, 07 Jul 1950 21:53:04 GMT"), None);
        assert_eq!(at("Bad Date"), None);
        assert_eq!(at(""), None);
    }

    #[test]
    fn host_parsing_keeps_path_style() {
        let h = Host::new(vec!["localhost".into(), "s3.example.com".into()]);
        use s3s::validation::NameValidation as _;
        assert!(BucketNames.validate_bucket_name("a.b-c"));
        assert!(!BucketNames.validate_bucket_name("a-.b"));
        let cases: &[(&str, Option<&str>)] = &[
            ("localhost:9000", None),
            ("bucket.localhost:9000", Some("bucket")),
            ("my.dotted.bucket.localhost", Some("my.dotted.bucket")),
            ("s3.example.com", None),
            ("b.s3.example.com:443", Some("b")),
            ("other-host:9000", None),
            ("notlocalhost", None),
            ("[::1]:9000", None),
        ];
        for (host, bucket) in cases {
            let vh = h.parse_host_header(host).unwrap();
            assert_eq!(vh.bucket(), *bucket, "{host}");
        }
    }

    #[test]
    fn signing_region_is_found_in_header_and_query() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            "AWS4-HMAC-SHA256 Credential=AK/20250101/eu-west-1/s3/aws4_request, SignedHeaders=host, Signature=x".parse().unwrap(),
        );
        let uri: http::Uri = "/b/k".parse().unwrap();
        assert_eq!(signed_region(&headers, &uri).as_deref(), Some("eu-west-1"));
        let uri: http::Uri = "/b/k?X-Amz-Credential=AK%2F20250101%2Fap-south-1%2Fs3%2Faws4_request&X-Amz-Date=1".parse().unwrap();
        assert_eq!(signed_region(&http::HeaderMap::new(), &uri).as_deref(), Some("ap-south-1"));
        assert_eq!(signed_region(&http::HeaderMap::new(), &"/b".parse().unwrap()), None);
    }

    #[test]
    fn owner_ids_are_stable() {
        let a = User::new("AK", "SK", None, None);
        let b = User::new("AK", "other", None, None);
        assert_eq!(a.owner, b.owner);
        assert_eq!(a.owner.id.len(), 64);
        assert_eq!(a.owner.display_name, "AK");
    }
}
