//! The web console: configure replication in a browser and watch it, served by `ferry serve`
//! itself on `[console] listen`, one per process, covering every region the process serves.
//!
//! # Design
//! - Server-rendered pages (askama templates in `templates/`, compiled into the binary; the
//!   stylesheet is embedded too), so the console works offline and its
//!   `Content-Security-Policy` allows only `'self'`.
//! - The console acts as the signed-in account through the same checks as the S3 API: it lists
//!   the buckets the account owns, and a bucket page answers only for its owner. It has no
//!   credential of its own and no side door: what a user cannot do with an S3 client, the
//!   console cannot do for them.
//! - Sessions, CSRF tokens and the sign-in limit: [`session`].
//!
//! # Routes
//! | route | what |
//! |---|---|
//! | `GET /sign-in`, `POST /sign-in` | the sign-in form (access key, secret key) |
//! | `POST /sign-out` | ends the session |
//! | `GET /` | the buckets of the signed-in account, in every region |
//! | `POST /buckets` | creates a bucket (name, region, versioning) |
//! | `GET /buckets/REGION/BUCKET` | a bucket: versioning, its replication rules and their progress |
//! | `POST /buckets/REGION/BUCKET/versioning`, `.../delete` | turns versioning on or off, deletes |
//! | `GET /buckets/REGION/BUCKET/objects?prefix=P&page=T` | one page of the objects under a prefix, with its folders |
//!
//! Actions (creating, changing, deleting) are S3 requests to the region's own endpoint, signed
//! as the signed-in account ([`Console::s3_as`]): they meet exactly the checks any S3 client
//! meets, and their errors are the S3 errors, shown on the page.
//! | `GET /assets/console.css` | the stylesheet (`/favicon.ico` is a plain 404, never a redirect) |
//!
//! Signed out, every page redirects to `/sign-in`. Every response carries
//! `Content-Security-Policy: default-src 'self'`, `X-Frame-Options: DENY`,
//! `X-Content-Type-Options: nosniff`, `Referrer-Policy: same-origin`; pages are not cached.

pub mod live;
mod objects;
pub use objects::PART;
mod replication;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::{ConnectInfo, Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use ferry_replication::client::ClientSettings;
use ferry_s3::Users;
use ferry_store::Store;
use ferry_store::model::{BucketRecord, Versioning};
use ferry_store::replication::ReplicationConfig;
use ferry_store::replication::progress::bucket_progress;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::session::{LOGIN_COOKIE, SESSION_COOKIE, Session, Sessions, cookie, same_secret, set_cookie, token};

/// A region the console shows.
pub struct ConsoleRegion {
    pub name: String,
    pub store: Arc<Store>,
    /// How to reach the region's S3 API (URL, trust); the console signs as the user.
    pub s3: ClientSettings,
    /// The region's metrics (the dashboard's throughput).
    pub metrics: Arc<ferry_core::metrics::RegionMetrics>,
}

/// A region the process replicates to (its own regions too): a wizard's destination choices,
/// and the health shown on the overview.
pub struct ConsolePeer {
    pub name: String,
    /// A Ferry region (the signed-in account's keys work there too); else another S3 service.
    pub ferry: bool,
    /// How the regions reach it, with the replication credentials (health probes only).
    pub s3: ClientSettings,
}

/// What the console's handlers share.
pub struct Console {
    regions: Vec<ConsoleRegion>,
    peers: Vec<ConsolePeer>,
    users: Arc<Users>,
    sessions: Sessions,
    live: live::Live,
    /// Cancelled when the console stops: its listener closes, open dashboards end their streams.
    stop: CancellationToken,
    /// Served over TLS: cookies are `Secure`.
    secure: bool,
}

impl Console {
    /// A console over `regions`, replicating to `peers`, signing in `users`' accounts, until
    /// `stop` is cancelled.
    #[must_use]
    pub fn new(regions: Vec<ConsoleRegion>, peers: Vec<ConsolePeer>, users: Arc<Users>, stop: CancellationToken) -> Self {
        Self { regions, peers, users, sessions: Sessions::default(), live: live::Live::default(), stop, secure: false }
    }

    /// Marks the console as served over TLS: its cookies are `Secure`.
    #[must_use]
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.secure = tls;
        self
    }

    /// Serves the console on `listener` (over TLS with `tls`) until its stop token is cancelled.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
        let stop = self.stop.clone();
        tokio::spawn(live::sampler(self.clone(), stop.clone()));
        let app = router(self);
        let grace = std::time::Duration::from_secs(5);
        crate::listen::serve(listener, tls, stop, grace, |peer| {
            let app = app.clone();
            // The client's address, for the sign-in limit (axum's `ConnectInfo`).
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                tower::ServiceExt::oneshot(app.clone(), req)
            })
        })
        .await;
    }

    /// The signed-in session of a request, if any.
    fn session(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let s = self.sessions.get(&id)?;
        Some((id, s))
    }

    fn region(&self, name: &str) -> Option<&ConsoleRegion> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// The owner id of an account's access key.
    fn owner_id(&self, access_key: &str) -> Option<String> {
        self.users.account(access_key).map(|u| u.owner.id.clone())
    }

    /// An S3 client of `region` signing as the account `access_key`: the console's actions go
    /// through the S3 API's own authentication, permission and validation, like any client's.
    fn s3_as(&self, region: &ConsoleRegion, access_key: &str) -> Option<aws_sdk_s3::Client> {
        self.client_as(&region.s3, access_key)
    }

    /// An S3 client of the endpoint `s` (its URL and trust) signing as the account `access_key`.
    fn client_as(&self, s: &ClientSettings, access_key: &str) -> Option<aws_sdk_s3::Client> {
        let user = self.users.account(access_key)?;
        let settings = ClientSettings { access_key: user.access_key.clone(), secret_key: user.secret_key.clone(), ..s.clone() };
        ferry_replication::client::config(&settings).ok().map(|c| aws_sdk_s3::Client::from_conf(c.build()))
    }
}

/// The console's routes, with the security headers on every response.
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(buckets))
        .route("/sign-in", get(sign_in_form).post(sign_in))
        .route("/sign-out", post(sign_out))
        .route("/buckets", post(create_bucket))
        .route("/buckets/{region}/{bucket}", get(bucket))
        .route("/buckets/{region}/{bucket}/objects", get(objects_page))
        .route("/buckets/{region}/{bucket}/versions", get(objects::versions))
        .route("/buckets/{region}/{bucket}/download", get(objects::download))
        .route("/buckets/{region}/{bucket}/upload", post(objects::upload))
        .route("/buckets/{region}/{bucket}/delete-object", post(objects::delete))
        .route("/buckets/{region}/{bucket}/versioning", post(set_versioning))
        .route("/buckets/{region}/{bucket}/delete", post(delete_bucket))
        .route("/buckets/{region}/{bucket}/replication", get(replication::view))
        .route("/buckets/{region}/{bucket}/replication/rule", get(replication::wizard))
        .route("/buckets/{region}/{bucket}/replication/preview", post(replication::preview))
        .route("/buckets/{region}/{bucket}/replication/rules", post(replication::save))
        .route("/buckets/{region}/{bucket}/replication/rule-action", post(replication::rule_action))
        .route("/buckets/{region}/{bucket}/replication/retry", post(replication::retry))
        .route("/buckets/{region}/{bucket}/replication/verify", post(replication::verify))
        .route("/buckets/{region}/{bucket}/live", get(live::stream))
        .route("/assets/{file}", get(asset))
        .route("/favicon.ico", get(|| async { StatusCode::NOT_FOUND }))
        .fallback(not_found)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(console)
}

async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'self'"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// A rendered template, or a plain 500 when it cannot render.
fn page(t: &impl Template, status: StatusCode) -> Response {
    match t.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "console template failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page could not be rendered").into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct Message<'a> {
    title: &'a str,
    text: &'a str,
}

fn message(status: StatusCode, title: &str, text: &str) -> Response {
    page(&Message { title, text }, status)
}

/// The answer for a bucket that is missing or not the account's: the same, so a page does not
/// tell which buckets exist.
fn no_such_bucket() -> Response {
    message(StatusCode::NOT_FOUND, "No such bucket", "There is no such bucket in this region.")
}

fn to_sign_in() -> Response {
    Redirect::to("/sign-in").into_response()
}

async fn not_found(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if c.session(&headers).is_none() {
        return to_sign_in();
    }
    message(StatusCode::NOT_FOUND, "Not found", "There is no such page.")
}

/// The embedded files: the stylesheet, the console's script, and the vendored htmx (with its
/// SSE extension) and uPlot (their licences are in `assets/vendor/`).
const ASSETS: &[(&str, &str, &str)] = &[
    ("console.css", "text/css; charset=utf-8", include_str!("../../assets/console.css")),
    ("console.js", "text/javascript; charset=utf-8", include_str!("../../assets/console.js")),
    (
        "htmx.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/vendor/htmx.min.js"),
    ),
    (
        "sse.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/vendor/sse.min.js"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/vendor/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/vendor/uPlot.min.css"),
    ),
];

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, mime, body)) => {
            ([(header::CONTENT_TYPE, *mime), (header::CACHE_CONTROL, "max-age=3600")], *body).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignIn<'a> {
    csrf: &'a str,
    error: Option<&'a str>,
}

/// The form, with its double-submit token in the form and in a cookie. A token the browser
/// already holds is kept: another request of the same browser (a second tab, a favicon that
/// led here) must not invalidate the form on screen.
fn sign_in_page(c: &Console, headers: &HeaderMap, status: StatusCode, error: Option<&str>) -> Response {
    let held = cookie(headers, LOGIN_COOKIE).filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()));
    let csrf = held.unwrap_or_else(token);
    let mut resp = page(&SignIn { csrf: &csrf, error }, status);
    if let Ok(v) = HeaderValue::from_str(&set_cookie(LOGIN_COOKIE, &csrf, c.secure, Some(3600))) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

async fn sign_in_form(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if c.session(&headers).is_some() {
        return Redirect::to("/").into_response();
    }
    sign_in_page(&c, &headers, StatusCode::OK, None)
}

#[derive(Deserialize)]
struct SignInForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    access_key: String,
    #[serde(default)]
    secret_key: String,
}

async fn sign_in(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<SignInForm>,
) -> Response {
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !same_secret(&expected, &f.csrf) {
        return message(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "The form expired or did not come from this console: sign in again.",
        );
    }
    if !c.sessions.may_try(peer.ip()) {
        return sign_in_page(
            &c,
            &headers,
            StatusCode::TOO_MANY_REQUESTS,
            Some("Too many failed sign-ins: wait a few minutes."),
        );
    }
    let ok = c.users.account(&f.access_key).is_some_and(|u| same_secret(&u.secret_key, &f.secret_key));
    if !ok {
        c.sessions.failed(peer.ip());
        return sign_in_page(&c, &headers, StatusCode::UNAUTHORIZED, Some("Unknown access key or wrong secret key."));
    }
    c.sessions.succeeded(peer.ip());
    let id = c.sessions.open(&f.access_key);
    let mut resp = Redirect::to("/").into_response();
    for v in [set_cookie(SESSION_COOKIE, &id, c.secure, None), set_cookie(LOGIN_COOKIE, "", c.secure, Some(0))] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn sign_out(State(c): State<Arc<Console>>, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    let id = match checked(&c, &headers, &f.csrf) {
        Ok((id, _)) => id,
        Err(r) => return *r,
    };
    c.sessions.close(&id);
    let mut resp = to_sign_in();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(SESSION_COOKIE, "", c.secure, Some(0))) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// A bucket row of the overview.
struct BucketRow {
    name: String,
    region: String,
    /// Versions held (not delete markers), and their bytes.
    objects: u64,
    size: String,
    versioning: &'static str,
    role: String,
    created: String,
}

#[derive(Template)]
#[template(path = "buckets.html")]
struct Buckets {
    user: String,
    csrf: String,
    buckets: Vec<BucketRow>,
    regions: Vec<String>,
    /// The regions replicated to, and their health.
    peers: Vec<(String, &'static str)>,
    error: Option<String>,
}

fn versioning(v: Versioning) -> &'static str {
    match v {
        Versioning::Unversioned => "Off",
        Versioning::Enabled => "Enabled",
        Versioning::Suspended => "Suspended",
    }
}

/// A bucket's stored replication configuration, for showing (empty when it has none or it does
/// not parse: [`editable_config`] says which).
fn stored_config(b: &BucketRecord) -> ReplicationConfig {
    b.replication.as_deref().and_then(|s| ReplicationConfig::from_stored(s).ok()).unwrap_or_default()
}

/// Why a bucket's stored replication configuration cannot be read by this build, if it cannot.
fn unreadable_config(b: &BucketRecord) -> Option<String> {
    let stored = b.replication.as_deref()?;
    ReplicationConfig::from_stored(stored).err().map(|e| {
        format!(
            "The stored replication configuration of this bucket cannot be read by this build ({e}). The console \
             changes nothing here: replace it with PutBucketReplication or remove it with DeleteBucketReplication."
        )
    })
}

/// The stored configuration a console change builds on. One this build cannot read is never
/// overwritten from the console (it would look empty, and saving one rule would drop the rest):
/// 409 Conflict.
fn editable_config(b: &BucketRecord) -> Result<ReplicationConfig, Box<Response>> {
    match unreadable_config(b) {
        Some(why) => Err(Box::new(message(StatusCode::CONFLICT, "Configuration not readable", &why))),
        None => Ok(stored_config(b)),
    }
}

/// The replication role of a bucket as far as this process knows: a source (it has rules), a
/// destination (a rule of a bucket served here sends to it, or it accepts other accounts'
/// replicas), both, or none. Sources in other processes are not known here.
fn role(b: &BucketRecord, targeted: bool) -> String {
    let source = !stored_config(b).rules.is_empty();
    let destination = targeted || !b.replica_sources.is_empty();
    match (source, destination) {
        (true, true) => "source and destination",
        (true, false) => "source",
        (false, true) => "destination",
        (false, false) => "-",
    }
    .to_owned()
}

async fn buckets(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some((_, s)) = c.session(&headers) else { return to_sign_in() };
    buckets_page(&c, s, StatusCode::OK, None).await
}

async fn buckets_page(c: &Console, s: Session, status: StatusCode, error: Option<String>) -> Response {
    let Some(owner) = c.owner_id(&s.access_key) else { return to_sign_in() };
    let mut all = Vec::new();
    for r in &c.regions {
        // Each bucket with its usage, from one snapshot (a counter per bucket: no scan).
        let listed = r
            .store
            .meta
            .read(|tx| {
                tx.list_buckets()?
                    .into_iter()
                    .map(|b| Ok((tx.bucket_usage(&b.name)?, b)))
                    .collect::<ferry_store::Result<Vec<_>>>()
            })
            .await;
        let Ok(list) = listed else {
            return message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                &format!("Region {} cannot be read now.", r.name),
            );
        };
        all.extend(list.into_iter().map(|(usage, b)| (r.name.clone(), usage, b)));
    }
    let targets: std::collections::HashSet<(String, String)> =
        all.iter().flat_map(|(_, _, b)| stored_config(b).rules).map(|r| (r.destination.peer, r.destination.bucket)).collect();
    let rows = all
        .into_iter()
        .filter(|(_, _, b)| b.owner.id == owner)
        .map(|(region, usage, b)| BucketRow {
            objects: usage.versions,
            size: human(i64::try_from(usage.bytes).unwrap_or(i64::MAX)),
            versioning: versioning(b.versioning),
            role: role(&b, targets.contains(&(region.clone(), b.name.clone()))),
            created: ferry_core::time::rfc3339_us(b.created_us),
            name: b.name,
            region,
        })
        .collect();
    let regions = c.regions.iter().map(|r| r.name.clone()).collect();
    let mut peers = c.live.health();
    for p in &c.peers {
        if !peers.iter().any(|(n, _)| *n == p.name) {
            peers.push((p.name.clone(), "probing"));
        }
    }
    page(
        &Buckets { user: s.access_key, csrf: s.csrf, buckets: rows, regions, peers, error },
        status,
    )
}

/// The session of a state-changing request whose form carries its CSRF token.
/// Returns the session's id with it.
fn checked(c: &Console, headers: &HeaderMap, csrf: &str) -> Result<(String, Session), Box<Response>> {
    let Some((id, s)) = c.session(headers) else { return Err(Box::new(to_sign_in())) };
    if !same_secret(&s.csrf, csrf) {
        let refused = message(StatusCode::FORBIDDEN, "Forbidden", "The request did not carry this session's token.");
        return Err(Box::new(refused));
    }
    Ok((id, s))
}

/// For an action on a bucket of `region`: the checked session's S3 client of that region,
/// signing as its account.
fn acting_in(c: &Console, headers: &HeaderMap, csrf: &str, region: &str) -> Result<aws_sdk_s3::Client, Box<Response>> {
    let (_, s) = checked(c, headers, csrf)?;
    c.region(region).and_then(|r| c.s3_as(r, &s.access_key)).ok_or_else(|| Box::new(no_such_bucket()))
}

/// An S3 error as the console shows it: its code and message.
fn s3_error<E: aws_sdk_s3::error::ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    e: &aws_sdk_s3::error::SdkError<E, R>,
) -> String {
    ferry_replication::peers::describe(e)
}

#[derive(Deserialize)]
struct NewBucketForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    region: String,
    /// A checkbox: present ("on") when checked.
    versioning: Option<String>,
}

async fn create_bucket(State(c): State<Arc<Console>>, headers: HeaderMap, Form(f): Form<NewBucketForm>) -> Response {
    let s = match checked(&c, &headers, &f.csrf) {
        Ok((_, s)) => s,
        Err(r) => return *r,
    };
    let Some(r) = c.region(&f.region) else {
        return buckets_page(&c, s, StatusCode::BAD_REQUEST, Some(format!("There is no region {}.", f.region))).await;
    };
    let Some(client) = c.s3_as(r, &s.access_key) else { return to_sign_in() };
    let constraint = aws_sdk_s3::types::CreateBucketConfiguration::builder()
        .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(r.name.as_str()))
        .build();
    if let Err(e) = client.create_bucket().bucket(&f.name).create_bucket_configuration(constraint).send().await {
        return buckets_page(
            &c,
            s,
            StatusCode::BAD_REQUEST,
            Some(format!("Bucket {} not created: {}", f.name, s3_error(&e))),
        )
        .await;
    }
    if f.versioning.is_some()
        && let Err(e) = put_versioning(&client, &f.name, true).await
    {
        let why = format!("Bucket {} created, but versioning not enabled: {}", f.name, s3_error(&e));
        return buckets_page(&c, s, StatusCode::BAD_REQUEST, Some(why)).await;
    }
    Redirect::to(&format!("/buckets/{}/{}", enc(&r.name), enc(&f.name))).into_response()
}

async fn put_versioning(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    enabled: bool,
) -> Result<(), aws_sdk_s3::error::SdkError<aws_sdk_s3::operation::put_bucket_versioning::PutBucketVersioningError>> {
    use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
    let status = if enabled { BucketVersioningStatus::Enabled } else { BucketVersioningStatus::Suspended };
    let cfg = VersioningConfiguration::builder().status(status).build();
    client.put_bucket_versioning().bucket(bucket).versioning_configuration(cfg).send().await.map(|_| ())
}

/// A path segment, percent-encoded (unreserved characters kept).
fn enc(s: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

#[derive(Deserialize)]
struct VersioningForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    status: String,
}

async fn set_versioning(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path((region, name)): Path<(String, String)>,
    Form(f): Form<VersioningForm>,
) -> Response {
    let client = match acting_in(&c, &headers, &f.csrf, &region) {
        Ok(client) => client,
        Err(r) => return *r,
    };
    match put_versioning(&client, &name, f.status == "Enabled").await {
        Ok(()) => Redirect::to(&format!("/buckets/{}/{}", enc(&region), enc(&name))).into_response(),
        Err(e) => message(StatusCode::BAD_REQUEST, "Versioning not changed", &s3_error(&e)),
    }
}

async fn delete_bucket(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path((region, name)): Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let client = match acting_in(&c, &headers, &f.csrf, &region) {
        Ok(client) => client,
        Err(r) => return *r,
    };
    match client.delete_bucket().bucket(&name).send().await {
        Ok(_) => Redirect::to("/").into_response(),
        Err(e) => message(StatusCode::BAD_REQUEST, "Bucket not deleted", &s3_error(&e)),
    }
}

/// A rule row of a bucket page.
struct RuleRow {
    id: String,
    destination: String,
    state: &'static str,
    replicated_up_to: String,
    pending: String,
    failed: u64,
    last_error: Option<String>,
}

#[derive(Template)]
#[template(path = "bucket.html")]
struct BucketPage {
    user: String,
    csrf: String,
    region: String,
    name: String,
    versioning: &'static str,
    versioned: bool,
    rules: Vec<RuleRow>,
    listing: Result<objects::Listing, String>,
}

async fn bucket(State(c): State<Arc<Console>>, headers: HeaderMap, Path((region, name)): Path<(String, String)>) -> Response {
    let Some((_, s)) = c.session(&headers) else { return to_sign_in() };
    // Only its owner sees a bucket here, as ListBuckets shows only one's own.
    let Some((r, b)) = replication::owned(&c, &s, &region, &name).await else {
        return no_such_bucket();
    };
    let rules = match bucket_progress(&r.store, &name, &region).await {
        Ok(p) => p
            .rules
            .into_iter()
            .map(|r| RuleRow {
                destination: format!("{} / {}", r.destination_region, r.destination_bucket),
                state: r.state.as_str(),
                replicated_up_to: r.replicated_up_to,
                pending: format!("{} ops", r.pending_ops),
                failed: r.failed_ops,
                last_error: r.last_error,
                id: r.id,
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, bucket = %name, "console: progress unavailable");
            Vec::new()
        }
    };
    let listing = match c.s3_as(r, &s.access_key) {
        Some(client) => objects::listing(&client, &name, &objects::ObjectsQuery { prefix: String::new(), page: None }).await,
        None => Err("the account is gone".to_owned()),
    };
    page(
        &BucketPage {
            user: s.access_key,
            csrf: s.csrf,
            region,
            name,
            versioning: versioning(b.versioning),
            versioned: b.versioning == Versioning::Enabled,
            rules,
            listing,
        },
        StatusCode::OK,
    )
}

#[derive(Template)]
#[template(path = "objects.html")]
struct ObjectsPage {
    user: String,
    csrf: String,
    region: String,
    name: String,
    listing: objects::Listing,
}

/// A size for people: bytes, KiB, MiB, GiB.
#[allow(clippy::cast_precision_loss)] // one decimal for display
fn human(n: i64) -> String {
    let n = u64::try_from(n).unwrap_or(0);
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", n as f64 / 1_048_576.0),
        _ => format!("{:.1} GiB", n as f64 / 1_073_741_824.0),
    }
}

/// One page of a bucket's objects under a prefix ([`objects::listing`]).
async fn objects_page(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path((region, name)): Path<(String, String)>,
    axum::extract::Query(q): axum::extract::Query<objects::ObjectsQuery>,
) -> Response {
    let Some((_, s)) = c.session(&headers) else { return to_sign_in() };
    let Some(client) = c.region(&region).and_then(|r| c.s3_as(r, &s.access_key)) else {
        return no_such_bucket();
    };
    match objects::listing(&client, &name, &q).await {
        Ok(listing) => page(&ObjectsPage { user: s.access_key, csrf: s.csrf, region, name, listing }, StatusCode::OK),
        Err(why) => message(StatusCode::BAD_REQUEST, "Objects not listed", &why),
    }
}
