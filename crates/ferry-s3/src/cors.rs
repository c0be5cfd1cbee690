//! CORS: Put/Get/DeleteBucketCors, and the answers browsers get (preflight `OPTIONS`, and the
//! `Access-Control-*` headers of the requests themselves).
//!
//! # Invariants
//! 1. CORS never grants access: it only tells a browser which cross-origin answers its page
//!    may read. Every request is authorized as without it (a denied request stays denied,
//!    with the CORS headers so the page can read the error).
//! 2. A rule answers a request when one of its origins matches the `Origin` header (at most
//!    one `*` wildcard per origin), one of its methods is the method asked for
//!    (`Access-Control-Request-Method`, else the request's), and every header a preflight asks
//!    for (`Access-Control-Request-Headers`) matches one of its allowed headers
//!    (case-insensitive, `*` wildcards). The first rule that matches answers.
//! 3. A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered
//!    here, unauthenticated, as S3 does: 200 with the rule's headers, or 403 when no rule
//!    matches; without `Origin` or the method, 400.
//! 4. Only requests carrying `Origin` cost a read of the bucket's rules.

use std::sync::Arc;

use ferry_store::Store;
use ferry_store::model::CorsRule;
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

use crate::FerryS3;
use crate::auth::Host;
use crate::perm::Perm;

/// Methods a CORS rule may allow.
const METHODS: &[&str] = &["GET", "PUT", "HEAD", "POST", "DELETE"];
/// Rules per configuration, as S3 allows.
const MAX_RULES: usize = 100;

/// What the service needs to answer CORS: the store (the bucket's rules) and how virtual-host
/// requests name their bucket.
pub(crate) struct Cors {
    pub(crate) store: std::sync::Arc<Store>,
    pub(crate) host: Arc<Host>,
}

/// A request's origin, the method it asks about, and its bucket.
#[derive(Debug)]
pub(crate) struct Asked {
    origin: String,
    method: String,
    bucket: String,
}

/// What a CORS answer adds to a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Allowed {
    origin: String,
    methods: String,
    headers: Option<String>,
    expose: Option<String>,
    max_age: Option<i32>,
}

impl Allowed {
    fn of(rule: &CorsRule, origin: &str, requested_headers: &[String]) -> Self {
        let wildcard = rule.allowed_origins.iter().any(|o| o == "*");
        Self {
            origin: if wildcard { "*".to_owned() } else { origin.to_owned() },
            methods: rule.allowed_methods.join(", "),
            headers: (!requested_headers.is_empty()).then(|| requested_headers.join(", ")),
            expose: (!rule.expose_headers.is_empty()).then(|| rule.expose_headers.join(", ")),
            max_age: rule.max_age_seconds,
        }
    }

    /// Adds the `Access-Control-*` headers.
    pub(crate) fn apply(&self, headers: &mut http::HeaderMap) {
        let mut set = |name: &'static str, value: &str| {
            if let Ok(v) = http::HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        };
        set("access-control-allow-origin", &self.origin);
        set("access-control-allow-methods", &self.methods);
        if let Some(h) = &self.headers {
            set("access-control-allow-headers", h);
        }
        if let Some(e) = &self.expose {
            set("access-control-expose-headers", e);
        }
        if let Some(age) = self.max_age {
            set("access-control-max-age", &age.to_string());
        }
        if self.origin != "*" {
            set("vary", "Origin, Access-Control-Request-Headers, Access-Control-Request-Method");
        }
    }
}

/// `pattern` (at most one `*`) against `text`.
fn matches_one_star(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => text.len() >= head.len() + tail.len() && text.starts_with(head) && text.ends_with(tail),
    }
}

/// The first rule that answers (`origin`, `method`, requested headers).
pub(crate) fn rule_for<'a>(rules: &'a [CorsRule], origin: &str, method: &str, headers: &[String]) -> Option<&'a CorsRule> {
    rules.iter().find(|r| {
        r.allowed_origins.iter().any(|o| matches_one_star(o, origin))
            && r.allowed_methods.iter().any(|m| m == method)
            && headers.iter().all(|h| {
                let h = h.to_ascii_lowercase();
                r.allowed_headers.iter().any(|a| matches_one_star(&a.to_ascii_lowercase(), &h))
            })
    })
}

/// The headers a preflight asks for (`Access-Control-Request-Headers`, comma-separated).
fn requested_headers(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all("access-control-request-headers")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .collect()
}

impl Cors {
    /// The bucket a request names (virtual-host or path style).
    fn bucket_of<B>(&self, req: &http::Request<B>) -> Option<String> {
        if let Some(b) = self.host.virtual_bucket(req) {
            return Some(b);
        }
        let path = req.uri().path().trim_start_matches('/');
        let bucket = path.split('/').next().filter(|b| !b.is_empty())?;
        percent_encoding::percent_decode_str(bucket).decode_utf8().ok().map(|b| b.into_owned())
    }

    async fn rules(&self, bucket: &str) -> Option<Vec<CorsRule>> {
        let record = crate::bucket_access::read_bucket(&self.store, bucket).await.ok().flatten()?;
        record.config.cors
    }

    /// What a request that is not a preflight asks of CORS (`None`: no `Origin`, no bucket).
    pub(crate) fn asked<B>(&self, req: &http::Request<B>) -> Option<Asked> {
        let origin = req.headers().get(http::header::ORIGIN)?.to_str().ok()?.to_owned();
        let bucket = self.bucket_of(req)?;
        let method = req
            .headers()
            .get("access-control-request-method")
            .and_then(|v| v.to_str().ok())
            .unwrap_or(req.method().as_str())
            .to_owned();
        Some(Asked { origin, method, bucket })
    }

    /// The CORS headers for `asked` (`None`: no rule answers it).
    pub(crate) async fn answer(&self, asked: Asked) -> Option<Allowed> {
        let rules = self.rules(&asked.bucket).await?;
        rule_for(&rules, &asked.origin, &asked.method, &[]).map(|r| Allowed::of(r, &asked.origin, &[]))
    }

    /// The answer to a preflight `OPTIONS` request.
    pub(crate) async fn preflight<B>(&self, req: &http::Request<B>) -> http::Response<s3s::Body> {
        let answer = |status: http::StatusCode, code: &str, message: &str| {
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
            );
            let mut resp = http::Response::new(s3s::Body::from(body));
            *resp.status_mut() = status;
            resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/xml"));
            resp
        };
        let origin = req.headers().get(http::header::ORIGIN).and_then(|v| v.to_str().ok());
        let method = req.headers().get("access-control-request-method").and_then(|v| v.to_str().ok());
        let (Some(origin), Some(method)) = (origin, method) else {
            return answer(
                http::StatusCode::BAD_REQUEST,
                "BadRequest",
                "Insufficient information. Origin request header needed.",
            );
        };
        let Some(bucket) = self.bucket_of(req) else {
            return answer(http::StatusCode::BAD_REQUEST, "BadRequest", "A CORS request names a bucket");
        };
        let headers = requested_headers(req.headers());
        let rules = self.rules(&bucket).await.unwrap_or_default();
        match rule_for(&rules, origin, method, &headers) {
            Some(rule) => {
                let mut resp = http::Response::new(s3s::Body::empty());
                Allowed::of(rule, origin, &headers).apply(resp.headers_mut());
                resp
            }
            None => answer(
                http::StatusCode::FORBIDDEN,
                "AccessForbidden",
                "CORSResponse: This CORS request is not allowed.",
            ),
        }
    }
}

/// The rules of a PutBucketCors request, checked.
fn rules_from(config: CORSConfiguration) -> S3Result<Vec<CorsRule>> {
    if config.cors_rules.is_empty() || config.cors_rules.len() > MAX_RULES {
        return Err(s3_error!(MalformedXML, "A CORS configuration has 1 to {MAX_RULES} rules"));
    }
    config
        .cors_rules
        .into_iter()
        .map(|r| {
            if let Some(m) = r.allowed_methods.iter().find(|m| !METHODS.contains(&m.as_str())) {
                return Err(s3_error!(
                    InvalidRequest,
                    "Found unsupported HTTP method in CORS config. Unsupported method is {m}"
                ));
            }
            if r.allowed_methods.is_empty() || r.allowed_origins.is_empty() {
                return Err(s3_error!(MalformedXML, "A CORS rule needs an AllowedMethod and an AllowedOrigin"));
            }
            for o in r.allowed_origins.iter().chain(r.allowed_headers.iter().flatten()) {
                if o.matches('*').count() > 1 {
                    return Err(s3_error!(InvalidRequest, "{o} can not have more than one wildcard."));
                }
            }
            Ok(CorsRule {
                id: r.id,
                allowed_methods: r.allowed_methods,
                allowed_origins: r.allowed_origins,
                allowed_headers: r.allowed_headers.unwrap_or_default(),
                expose_headers: r.expose_headers.unwrap_or_default(),
                max_age_seconds: r.max_age_seconds,
            })
        })
        .collect()
}

impl FerryS3 {
    pub(crate) async fn put_bucket_cors(&self, req: S3Request<PutBucketCorsInput>) -> S3Result<S3Response<PutBucketCorsOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        let rules = rules_from(req.input.cors_configuration)?;
        self.update_bucket(b.name, move |bucket| bucket.config.cors = Some(rules)).await?;
        Ok(S3Response::new(PutBucketCorsOutput::default()))
    }

    pub(crate) async fn get_bucket_cors(&self, req: S3Request<GetBucketCorsInput>) -> S3Result<S3Response<GetBucketCorsOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        let Some(rules) = b.config.cors else {
            return Err(s3_error!(NoSuchCORSConfiguration, "The CORS configuration does not exist"));
        };
        let rules = rules
            .into_iter()
            .map(|r| CORSRule {
                id: r.id,
                allowed_methods: r.allowed_methods,
                allowed_origins: r.allowed_origins,
                allowed_headers: (!r.allowed_headers.is_empty()).then_some(r.allowed_headers),
                expose_headers: (!r.expose_headers.is_empty()).then_some(r.expose_headers),
                max_age_seconds: r.max_age_seconds,
            })
            .collect();
        Ok(S3Response::new(GetBucketCorsOutput { cors_rules: Some(rules) }))
    }

    pub(crate) async fn delete_bucket_cors(
        &self,
        req: S3Request<DeleteBucketCorsInput>,
    ) -> S3Result<S3Response<DeleteBucketCorsOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        self.update_bucket(b.name, |bucket| bucket.config.cors = None).await?;
        Ok(S3Response::with_status(DeleteBucketCorsOutput::default(), http::StatusCode::NO_CONTENT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(origins: &[&str], methods: &[&str], headers: &[&str]) -> CorsRule {
        CorsRule {
            allowed_origins: origins.iter().map(|s| (*s).to_owned()).collect(),
            allowed_methods: methods.iter().map(|s| (*s).to_owned()).collect(),
            allowed_headers: headers.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn origins_match_with_one_wildcard() {
        for (p, t, m) in [
            ("*suffix", "foo.suffix", true),
            ("*suffix", "foo.suffix.get", false),
            ("start*end", "startend", true),
            ("start*end", "start12end", true),
            ("start*end", "0start12end", false),
            ("prefix*", "prefix", true),
            ("prefix*", "bla.prefix", false),
            ("https://a.example", "https://a.example", true),
            ("https://a.example", "https://b.example", false),
            ("*", "anything", true),
            ("ab*ba", "aba", false),
        ] {
            assert_eq!(matches_one_star(p, t), m, "{p} ~ {t}");
        }
    }

    #[test]
    fn the_first_rule_with_origin_method_and_headers_answers() {
        let rules = [
            rule(&["*.get"], &["GET"], &[]),
            rule(&["*.put"], &["PUT"], &["x-amz-*", "content-type"]),
            rule(&["*"], &["GET"], &["*"]),
        ];
        let h = |hs: &[&str]| hs.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(rule_for(&rules, "a.get", "GET", &[]), Some(&rules[0]));
        assert_eq!(rule_for(&rules, "a.put", "PUT", &h(&["X-Amz-Meta-A", "Content-Type"])), Some(&rules[1]));
        assert_eq!(rule_for(&rules, "a.put", "PUT", &h(&["authorization"])), None);
        assert_eq!(rule_for(&rules, "a.put", "DELETE", &[]), None);
        assert_eq!(rule_for(&rules, "other", "GET", &h(&["anything"])), Some(&rules[2]));
        let a = Allowed::of(&rules[2], "other", &h(&["anything"]));
        assert_eq!(
            (a.origin.as_str(), a.methods.as_str(), a.headers.as_deref()),
            ("*", "GET", Some("anything"))
        );
    }
}
