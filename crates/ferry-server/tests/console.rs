//! The web console over HTTP: sign-in, sessions, CSRF, and what each account sees. (The
//! browser tests of the console drive the same pages with a real browser.)

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use ferry_core::config::RegionConfig;
use ferry_server::server::{Server, ServerOptions};

use crate::common::*;

/// A console user agent: raw HTTP/1.1 with a cookie jar.
struct Browser {
    addr: SocketAddr,
    cookies: BTreeMap<String, String>,
}

impl Browser {
    fn new(addr: SocketAddr) -> Self {
        Self { addr, cookies: BTreeMap::new() }
    }

    async fn request(&mut self, method: &str, path: &str, form: Option<&[(&str, &str)]>) -> RawResponse {
        let cookie = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
        let body = form.map(|f| f.iter().map(|(k, v)| format!("{}={}", percent(k), percent(v))).collect::<Vec<_>>().join("&"));
        let mut text = format!("{method} {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n", self.addr);
        if !cookie.is_empty() {
            text.push_str(&format!("cookie: {cookie}\r\n"));
        }
        if let Some(b) = &body {
            text.push_str(&format!(
                "content-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n",
                b.len()
            ));
        }
        text.push_str("\r\n");
        text.push_str(body.as_deref().unwrap_or(""));
        let resp = raw_http(self.addr, text.as_bytes()).await;
        for (k, v) in &resp.headers {
            if k == "set-cookie"
                && let Some((name, rest)) = v.split_once('=')
            {
                let value = rest.split(';').next().unwrap_or("");
                if value.is_empty() || v.contains("Max-Age=0") {
                    self.cookies.remove(name);
                } else {
                    self.cookies.insert(name.to_owned(), value.to_owned());
                }
            }
        }
        resp
    }

    async fn get(&mut self, path: &str) -> RawResponse {
        self.request("GET", path, None).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> RawResponse {
        self.request("POST", path, Some(form)).await
    }

    /// Signs in through the form; returns the answer to the form's POST.
    async fn sign_in(&mut self, ak: &str, sk: &str) -> RawResponse {
        let form = self.get("/sign-in").await;
        let csrf = hidden(&form.body, "csrf");
        self.post("/sign-in", &[("csrf", &csrf), ("access_key", ak), ("secret_key", sk)]).await
    }
}

fn percent(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// The value of the hidden input `name` in a page.
fn hidden(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page.find(&marker).unwrap_or_else(|| panic!("no hidden {name} in {page}")) + marker.len();
    page[start..].split('"').next().unwrap_or("").to_owned()
}

/// Two regions in one process with the console on an ephemeral port; `main` owns `main-a` (us)
/// and `main-b` (eu), `alt` owns `alt-a` (us).
pub async fn console_cluster() -> (Server, SocketAddr, tempfile::TempDir) {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let regions = ["us-east-1", "eu-west-1"]
        .iter()
        .map(|n| {
            let mut c = RegionConfig::single("127.0.0.1:0", dir.path().join(n));
            c.name = (*n).to_owned();
            c
        })
        .collect();
    let opts = ServerOptions {
        shutdown_timeout: Duration::from_secs(5),
        console: Some("127.0.0.1:0".into()),
        ..ServerOptions::new(regions, users())
    };
    let server = Server::start(opts).await.unwrap();
    let url = |i: usize| format!("http://{}", server.regions()[i].addr);
    let (us, eu) = (url(0), url(1));
    for (ep, region, ak, sk, bucket) in [
        (&us, "us-east-1", MAIN_AK, MAIN_SK, "main-a"),
        (&eu, "eu-west-1", MAIN_AK, MAIN_SK, "main-b"),
        (&us, "us-east-1", ALT_AK, ALT_SK, "alt-a"),
    ] {
        let c = client_for(ep, ak, sk, region, Mode::WhenRequired);
        c.create_bucket()
            .bucket(bucket)
            .create_bucket_configuration(
                aws_sdk_s3::types::CreateBucketConfiguration::builder()
                    .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(region))
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }
    let console = server.console_addr().expect("the console is served");
    (server, console, dir)
}

/// An S3 client of region `i` of the cluster, signing as the main account.
pub fn main_client(server: &Server, i: usize) -> aws_sdk_s3::Client {
    let r = &server.regions()[i];
    client_for(&format!("http://{}", r.addr), MAIN_AK, MAIN_SK, &r.name, Mode::WhenRequired)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_out_every_console_page_redirects_to_sign_in() {
    let (server, console, _dir) = console_cluster().await;
    let mut b = Browser::new(console);
    for path in ["/", "/buckets/us-east-1/main-a", "/no/such/page"] {
        let r = b.get(path).await;
        assert_eq!((r.status, r.header("location")), (303, Some("/sign-in")), "GET {path}");
    }
    let r = b.post("/sign-out", &[("csrf", "x")]).await;
    assert_eq!((r.status, r.header("location")), (303, Some("/sign-in")));
    let form = b.get("/sign-in").await;
    assert_eq!(form.status, 200);
    for label in
        ["<label for=\"access_key\">Access key</label>", "<label for=\"secret_key\">Secret key</label>", ">Sign in</button>"]
    {
        assert!(form.body.contains(label), "{label} in {}", form.body);
    }
    assert_eq!(form.header("content-security-policy"), Some("default-src 'self'"));
    assert_eq!(form.header("x-frame-options"), Some("DENY"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_account_sees_only_its_own_buckets() {
    let (server, console, _dir) = console_cluster().await;
    let mut main = Browser::new(console);
    let r = main.sign_in(MAIN_AK, MAIN_SK).await;
    assert_eq!((r.status, r.header("location")), (303, Some("/")), "{}", r.body);
    let session = r.headers.iter().find(|(k, v)| k == "set-cookie" && v.starts_with("ferry_session=")).map(|(_, v)| v.clone());
    let session = session.expect("a session cookie");
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Strict"), "{session}");
    let page = main.get("/").await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains(">main-a</a>") && page.body.contains(">main-b</a>"),
        "both regions: {}",
        page.body
    );
    assert!(!page.body.contains("alt-a"), "another account's bucket: {}", page.body);
    assert_eq!(main.get("/buckets/eu-west-1/main-b").await.status, 200);
    let other = main.get("/buckets/us-east-1/alt-a").await;
    assert_eq!(other.status, 404, "another account's bucket page: {}", other.body);

    let mut alt = Browser::new(console);
    assert_eq!(alt.sign_in(ALT_AK, ALT_SK).await.status, 303);
    let page = alt.get("/").await;
    assert!(page.body.contains(">alt-a</a>") && !page.body.contains("main-"), "{}", page.body);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_need_the_csrf_token() {
    let (server, console, _dir) = console_cluster().await;
    let mut b = Browser::new(console);
    // The sign-in form's token must match its cookie.
    let forged = b.post("/sign-in", &[("csrf", "x"), ("access_key", MAIN_AK), ("secret_key", MAIN_SK)]).await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert_eq!(b.sign_in(MAIN_AK, MAIN_SK).await.status, 303);
    let page = b.get("/").await;
    let csrf = hidden(&page.body, "csrf");
    for form in [vec![], vec![("csrf", "not-the-token")]] {
        let r = b.post("/sign-out", &form).await;
        assert_eq!(r.status, 403, "sign-out with {form:?}: {}", r.body);
        assert_eq!(b.get("/").await.status, 200, "still signed in");
    }
    let r = b.post("/sign-out", &[("csrf", &csrf)]).await;
    assert_eq!((r.status, r.header("location")), (303, Some("/sign-in")));
    assert_eq!(b.get("/").await.status, 303, "signed out");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_are_limited() {
    let (server, console, _dir) = console_cluster().await;
    let mut b = Browser::new(console);
    assert_eq!(b.sign_in(MAIN_AK, "wrong").await.status, 401);
    assert_eq!(b.sign_in("AKIANOSUCHKEY000", MAIN_SK).await.status, 401);
    assert_eq!(
        b.sign_in(REPL_AK, REPL_SK).await.status,
        401,
        "a replication credential is not an account"
    );
    for _ in 3..ferry_server::console::session::MAX_FAILURES {
        assert_eq!(b.sign_in(MAIN_AK, "wrong").await.status, 401);
    }
    let limited = b.sign_in(MAIN_AK, MAIN_SK).await;
    assert_eq!(limited.status, 429, "even the right secret waits: {}", limited.body);
    assert!(!b.cookies.contains_key("ferry_session"));
    server.shutdown().await;
}

/// `ferry serve` says where its console is, and serves it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_prints_where_the_console_is() {
    let dir = tempfile::tempdir().unwrap();
    let (s3, console) = (free_port(), free_port());
    let (listen, console_listen) = (format!("127.0.0.1:{s3}"), format!("127.0.0.1:{console}"));
    let data = dir.path().join("data");
    let p = FerryProcess::spawn(
        &["serve", "--listen", &listen, "--data-dir", data.to_str().unwrap(), "--console", &console_listen],
        &[("FERRY_ACCESS_KEY", MAIN_AK), ("FERRY_SECRET_KEY", MAIN_SK)],
        1,
    );
    let expected = format!("ferry: console: http://{console_listen}/");
    wait_until("the console line", 10, || {
        let found = p.stderr.lock().unwrap().contains(&expected);
        async move { found }
    })
    .await;
    let mut b = Browser::new(console_listen.parse().unwrap());
    assert_eq!(b.get("/sign-in").await.status, 200);
    assert_eq!(b.sign_in(MAIN_AK, MAIN_SK).await.status, 303);
    p.terminate();
}

/// Other requests of the same browser (a favicon, a second tab) do not expire the sign-in form
/// on screen: browsers fetch `/favicon.ico` after every page, and a redirect of it to a new
/// sign-in form used to replace the form's token, so the first sign-in in a browser failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_requests_keep_the_sign_in_form_valid() {
    let (server, console, _dir) = console_cluster().await;
    let mut b = Browser::new(console);
    let first = hidden(&b.get("/sign-in").await.body, "csrf");
    let icon = b.get("/favicon.ico").await;
    assert_eq!((icon.status, icon.header("location")), (404, None), "no redirect to a new form");
    let second = hidden(&b.get("/sign-in").await.body, "csrf");
    assert_eq!(first, second, "a second tab shows the same form token");
    let r = b.post("/sign-in", &[("csrf", &first), ("access_key", MAIN_AK), ("secret_key", MAIN_SK)]).await;
    assert_eq!((r.status, r.header("location")), (303, Some("/")), "{}", r.body);
    server.shutdown().await;
}

/// Buckets are created, versioned and deleted from the console through the region's S3 API,
/// signed as the account: the S3 errors are shown, another account's bucket stays out of
/// reach, and a request without the session's token changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_are_managed_as_the_account_through_s3() {
    let (server, console, _dir) = console_cluster().await;
    let eu = main_client(&server, 1);
    let mut b = Browser::new(console);
    assert_eq!(b.sign_in(MAIN_AK, MAIN_SK).await.status, 303);
    let csrf = hidden(&b.get("/").await.body, "csrf");

    let forged = b.post("/buckets", &[("csrf", "x"), ("name", "made-here"), ("region", "eu-west-1")]).await;
    assert_eq!(forged.status, 403);
    let r = b
        .post(
            "/buckets",
            &[("csrf", &csrf), ("name", "made-here"), ("region", "eu-west-1"), ("versioning", "on")],
        )
        .await;
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some("/buckets/eu-west-1/made-here")),
        "{}",
        r.body
    );
    let v = eu.get_bucket_versioning().bucket("made-here").send().await.unwrap();
    assert_eq!(
        v.status().map(|s| s.as_str().to_owned()),
        Some("Enabled".to_owned()),
        "created in eu-west-1, versioned"
    );
    let page = b.get("/buckets/eu-west-1/made-here").await;
    assert!(page.body.contains("Suspend versioning"), "{}", page.body);

    let bad = b.post("/buckets", &[("csrf", &csrf), ("name", "Not_A_Bucket"), ("region", "eu-west-1")]).await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("InvalidBucketName"), "the S3 error is shown: {}", bad.body);
    let taken = b.post("/buckets", &[("csrf", &csrf), ("name", "alt-a"), ("region", "us-east-1")]).await;
    assert!(taken.body.contains("BucketAlreadyExists"), "{}", taken.body);

    let r = b.post("/buckets/eu-west-1/made-here/versioning", &[("csrf", &csrf), ("status", "Suspended")]).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let v = eu.get_bucket_versioning().bucket("made-here").send().await.unwrap();
    assert_eq!(v.status().map(|s| s.as_str().to_owned()), Some("Suspended".to_owned()));

    let other = b.post("/buckets/us-east-1/alt-a/delete", &[("csrf", &csrf)]).await;
    assert!(other.body.contains("AccessDenied"), "another account's bucket: {}", other.body);
    let kept = b.post("/buckets/eu-west-1/made-here/delete", &[]).await;
    assert_eq!(kept.status, 403, "no token, no deletion");
    let r = b.post("/buckets/eu-west-1/made-here/delete", &[("csrf", &csrf)]).await;
    assert_eq!((r.status, r.header("location")), (303, Some("/")), "{}", r.body);
    assert!(eu.head_bucket().bucket("made-here").send().await.is_err(), "deleted");
    assert!(!b.get("/").await.body.contains("made-here"));
    server.shutdown().await;
}

/// The object browser lists through S3 as the account, one page at a time: folders by `/`,
/// a next-page link with S3's continuation token, and nothing for another account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_are_browsed_a_page_at_a_time() {
    let (server, console, _dir) = console_cluster().await;
    let us = main_client(&server, 0);
    for i in 0..230 {
        put(&us, "main-a", &format!("logs/{i:04}.txt"), b"x").await;
    }
    put(&us, "main-a", "readme.md", b"hello").await;
    let mut b = Browser::new(console);
    assert_eq!(b.sign_in(MAIN_AK, MAIN_SK).await.status, 303);
    let root = b.get("/buckets/us-east-1/main-a/objects").await;
    assert_eq!(root.status, 200, "{}", root.body);
    assert!(
        root.body.contains(">logs/</a>") && root.body.contains("<td>readme.md</td>"),
        "{}",
        root.body
    );
    assert!(!root.body.contains("Next page"), "one page");
    let mut path = "/buckets/us-east-1/main-a/objects?prefix=logs%2F".to_owned();
    let mut seen = Vec::new();
    for page in 0.. {
        let r = b.get(&path).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let names: Vec<String> = r.body.match_indices("<td>0").map(|(i, _)| r.body[i + 4..i + 12].to_owned()).collect();
        assert!(names.len() <= 100, "a page holds at most 100: {}", names.len());
        seen.extend(names);
        let Some(at) = r.body.find("\">Next page</a>") else { break };
        let start = r.body[..at].rfind("href=\"").unwrap() + 6;
        path = r.body[start..at].replace("&amp;", "&");
        assert!(page < 5, "too many pages: {path}");
    }
    let want: Vec<String> = (0..230).map(|i| format!("{i:04}.txt")).collect();
    assert_eq!(seen, want, "every object once, in order, over three pages");
    let mut alt = Browser::new(console);
    assert_eq!(alt.sign_in(ALT_AK, ALT_SK).await.status, 303);
    let denied = alt.get("/buckets/us-east-1/main-a/objects").await;
    assert!(denied.body.contains("AccessDenied"), "another account's objects: {}", denied.body);
    server.shutdown().await;
}
