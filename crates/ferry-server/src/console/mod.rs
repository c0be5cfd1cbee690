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
//! | `GET /buckets/REGION/BUCKET` | a bucket: versioning, its replication rules and their progress |
//! | `GET /assets/console.css` | the stylesheet (`/favicon.ico` is a plain 404, never a redirect) |
//!
//! Signed out, every page redirects to `/sign-in`. Every response carries
//! `Content-Security-Policy: default-src 'self'`, `X-Frame-Options: DENY`,
//! `X-Content-Type-Options: nosniff`, `Referrer-Policy: same-origin`; pages are not cached.

pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::{ConnectInfo, Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
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
}

/// What the console's handlers share.
pub struct Console {
    regions: Vec<ConsoleRegion>,
    users: Arc<Users>,
    sessions: Sessions,
    /// Served over TLS: cookies are `Secure`.
    secure: bool,
}

impl Console {
    /// A console over `regions`, signing in `users`' accounts.
    #[must_use]
    pub fn new(regions: Vec<ConsoleRegion>, users: Arc<Users>) -> Self {
        Self { regions, users, sessions: Sessions::default(), secure: false }
    }

    /// Serves the console on `listener` until `stop` is cancelled.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        let app = router(self);
        let served = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "console stopped");
        }
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
}

/// The console's routes, with the security headers on every response.
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(buckets))
        .route("/sign-in", get(sign_in_form).post(sign_in))
        .route("/sign-out", post(sign_out))
        .route("/buckets/{region}/{bucket}", get(bucket))
        .route("/assets/console.css", get(stylesheet))
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

fn to_sign_in() -> Response {
    Redirect::to("/sign-in").into_response()
}

async fn not_found(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if c.session(&headers).is_none() {
        return to_sign_in();
    }
    message(StatusCode::NOT_FOUND, "Not found", "There is no such page.")
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "max-age=3600")],
        include_str!("../../assets/console.css"),
    )
        .into_response()
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
    let Some((id, s)) = c.session(&headers) else { return to_sign_in() };
    if !same_secret(&s.csrf, &f.csrf) {
        return message(StatusCode::FORBIDDEN, "Forbidden", "The request did not carry this session's token.");
    }
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
}

fn versioning(v: Versioning) -> &'static str {
    match v {
        Versioning::Unversioned => "Off",
        Versioning::Enabled => "Enabled",
        Versioning::Suspended => "Suspended",
    }
}

/// The replication role of a bucket as far as this region knows: a source (it has rules),
/// a destination (it holds replicas from accepted sources), both, or none.
fn role(b: &BucketRecord) -> String {
    let source =
        b.replication.as_deref().and_then(|s| ReplicationConfig::from_stored(s).ok()).is_some_and(|c| !c.rules.is_empty());
    let destination = !b.replica_sources.is_empty();
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
    let Some(owner) = c.owner_id(&s.access_key) else { return to_sign_in() };
    let mut rows = Vec::new();
    for r in &c.regions {
        let listed = r.store.meta.read(|tx| tx.list_buckets()).await;
        let Ok(list) = listed else {
            return message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                &format!("Region {} cannot be read now.", r.name),
            );
        };
        rows.extend(list.into_iter().filter(|b| b.owner.id == owner).map(|b| BucketRow {
            region: r.name.clone(),
            versioning: versioning(b.versioning),
            role: role(&b),
            created: ferry_core::time::rfc3339_us(b.created_us),
            name: b.name,
        }));
    }
    page(&Buckets { user: s.access_key, csrf: s.csrf, buckets: rows }, StatusCode::OK)
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
    rules: Vec<RuleRow>,
}

async fn bucket(State(c): State<Arc<Console>>, headers: HeaderMap, Path((region, name)): Path<(String, String)>) -> Response {
    let Some((_, s)) = c.session(&headers) else { return to_sign_in() };
    let Some(owner) = c.owner_id(&s.access_key) else { return to_sign_in() };
    let missing = || message(StatusCode::NOT_FOUND, "No such bucket", "There is no such bucket in this region.");
    let Some(r) = c.region(&region) else { return missing() };
    let n = name.clone();
    let Ok(Some(b)) = r.store.meta.read(move |tx| tx.get_bucket(&n)).await else { return missing() };
    // Only its owner sees a bucket here, as ListBuckets shows only one's own.
    if b.owner.id != owner {
        return missing();
    }
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
    page(
        &BucketPage { user: s.access_key, csrf: s.csrf, region, name, versioning: versioning(b.versioning), rules },
        StatusCode::OK,
    )
}
