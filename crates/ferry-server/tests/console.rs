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
        let body = form.map(|f| f.iter().map(|(k, v)| format!("{}={}", percent(k), percent(v))).collect::<Vec<_>>().join("&"));
        let headers: &[(&str, &str)] =
            if body.is_some() { &[("content-type", "application/x-www-form-urlencoded")] } else { &[] };
        self.send(method, path, headers, body.as_deref().map(str::as_bytes)).await
    }

    /// Sends `method path` with `headers`, the jar's cookies and `body` (with its length).
    async fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> RawResponse {
        let mut text = format!("{method} {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n", self.addr);
        let cookie = self.cookie();
        if !cookie.is_empty() {
            text.push_str(&format!("cookie: {cookie}\r\n"));
        }
        for (k, v) in headers {
            text.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            text.push_str(&format!("content-length: {}\r\n", b.len()));
        }
        text.push_str("\r\n");
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        let resp = raw_http(self.addr, &bytes).await;
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

    fn cookie(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
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
    console_cluster_with(|_, _| {}).await
}

/// [`console_cluster`], with the options changed by `tweak` (given the cluster's directory).
async fn console_cluster_with(
    tweak: impl FnOnce(&mut ServerOptions, &std::path::Path),
) -> (Server, SocketAddr, tempfile::TempDir) {
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
    let mut opts = opts;
    tweak(&mut opts, dir.path());
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

/// Reads the dashboard's event stream until each of `events` has come (or 15 s pass); returns
/// what was read.
async fn read_events(b: &Browser, path: &str, events: &[&str]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: {}\r\ncookie: {}\r\naccept: text/event-stream\r\n\r\n",
        b.addr,
        b.cookie()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut buf = [0u8; 8192];
    while !events.iter().all(|e| String::from_utf8_lossy(&seen).contains(&format!("event: {e}\n"))) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// Every state change added with the replication view and the object browser refuses a
/// request without the session's token, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_and_object_actions_need_the_csrf_token() {
    let (server, console, _dir) = console_cluster().await;
    let (us, eu) = (main_client(&server, 0), main_client(&server, 1));
    enable_versioning(&us, "main-a").await;
    enable_versioning(&eu, "main-b").await;
    put(&us, "main-a", "keep.txt", b"keep").await;
    let mut b = Browser::new(console);
    assert_eq!(b.sign_in(MAIN_AK, MAIN_SK).await.status, 303);
    let rule = [("id", "r"), ("dest_region", "eu-west-1"), ("dest_bucket", "main-b"), ("enabled", "on")];
    for (path, form) in [
        ("/buckets/us-east-1/main-a/replication/rules", &rule[..]),
        ("/buckets/us-east-1/main-a/replication/preview", &rule[..]),
        (
            "/buckets/us-east-1/main-a/replication/rule-action",
            &[("rule", "r"), ("action", "delete")][..],
        ),
        ("/buckets/us-east-1/main-a/replication/retry", &[][..]),
        ("/buckets/us-east-1/main-a/replication/verify", &[("rule", "r")][..]),
        ("/buckets/us-east-1/main-a/delete-object", &[("key", "keep.txt")][..]),
    ] {
        for csrf in [None, Some("not-the-token")] {
            let mut f = form.to_vec();
            if let Some(t) = csrf {
                f.push(("csrf", t));
            }
            let r = b.post(path, &f).await;
            assert_eq!(r.status, 403, "POST {path} with {csrf:?}: {}", r.body);
        }
    }
    let upload = b
        .send(
            "POST",
            "/buckets/us-east-1/main-a/upload?key=x.txt",
            &[("x-ferry-csrf", "nope")],
            Some(b"x"),
        )
        .await;
    assert_eq!(upload.status, 403, "an upload without the token");
    assert!(us.get_bucket_replication().bucket("main-a").send().await.is_err(), "no rule was saved");
    assert_eq!(get_bytes(&us, "main-a", "keep.txt").await, b"keep", "nothing deleted");
    assert!(us.head_object().bucket("main-a").key("x.txt").send().await.is_err(), "nothing uploaded");
    server.shutdown().await;
}

/// The wizard: pre-flight failures shown in place, the XML it will send, a rule saved through
/// PutBucketReplication as the account, a rule of several prefixes and "any" tags stored as
/// S3 rules and re-opened whole, enable/disable/delete; another account sees none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wizard_saves_rules_as_the_account() {
    let (server, console, _dir) = console_cluster().await;
    let (us, eu) = (main_client(&server, 0), main_client(&server, 1));
    enable_versioning(&us, "main-a").await;
    let mut b = Browser::new(console);
    assert_eq!(b.sign_in(MAIN_AK, MAIN_SK).await.status, 303);
    let wizard = b.get("/buckets/us-east-1/main-a/replication/rule").await;
    assert_eq!(wizard.status, 200, "{}", wizard.body);
    for label in [">Destination bucket</label>", "Replicate existing objects</label>", ">Save</button>", "<pre class=\"xml\">"] {
        assert!(wizard.body.contains(label), "{label} in {}", wizard.body);
    }
    let csrf = hidden(&wizard.body, "csrf");
    let form = |extra: &[(&'static str, &'static str)]| {
        let mut f = vec![
            ("id", "to-eu"),
            ("enabled", "on"),
            ("dest_region", "eu-west-1"),
            ("dest_bucket", "main-b"),
            ("deletes", "add-delete-change"),
            ("priority", "1"),
        ];
        f.extend_from_slice(extra);
        f
    };
    // main-b is not versioned: the check says so, and Save refuses in place.
    let mut f = form(&[("existing", "on")]);
    f.push(("csrf", &csrf));
    let preview = b.post("/buckets/us-east-1/main-a/replication/preview", &f).await;
    assert_eq!(preview.status, 200, "{}", preview.body);
    assert!(
        preview.body.contains("&#60;Bucket&#62;arn:aws:s3:eu-west-1::main-b&#60;/Bucket&#62;"),
        "{}",
        preview.body
    );
    assert!(
        preview.body.contains("class=\"failed\"") && preview.body.contains("Versioning on eu-west-1 / main-b"),
        "{}",
        preview.body
    );
    let refused = b.post("/buckets/us-east-1/main-a/replication/rules", &f).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.body.contains("A pre-flight check failed") && refused.body.contains("value=\"main-b\""),
        "fields kept: {}",
        refused.body
    );
    assert!(us.get_bucket_replication().bucket("main-a").send().await.is_err());
    enable_versioning(&eu, "main-b").await;
    let preview = b.post("/buckets/us-east-1/main-a/replication/preview", &f).await;
    assert!(
        preview.body.contains("the region accepts this configuration") && !preview.body.contains("class=\"failed\""),
        "{}",
        preview.body
    );
    assert!(
        us.get_bucket_replication().bucket("main-a").send().await.is_err(),
        "a preview stores nothing"
    );
    // Another account's versioned bucket: the region's dry run says it does not take these
    // replicas, before anything is saved.
    let alt = client_for(
        &format!("http://{}", server.regions()[0].addr),
        ALT_AK,
        ALT_SK,
        "us-east-1",
        Mode::WhenRequired,
    );
    enable_versioning(&alt, "alt-a").await;
    let mut to_alt = f.clone();
    to_alt[2] = ("dest_region", "us-east-1");
    to_alt[3] = ("dest_bucket", "alt-a");
    let preview = b.post("/buckets/us-east-1/main-a/replication/preview", &to_alt).await;
    let refused = preview.body.split("Replication allowed").nth(1).unwrap_or_else(|| panic!("no dry run: {}", preview.body));
    assert!(
        preview.body.contains("<li class=\"failed\">✗ <strong>Replication allowed"),
        "{}",
        preview.body
    );
    assert!(refused.contains("alt-a"), "the reason names the bucket: {refused}");
    let saved = b.post("/buckets/us-east-1/main-a/replication/rules", &f).await;
    assert_eq!(
        (saved.status, saved.header("location")),
        (303, Some("/buckets/us-east-1/main-a/replication")),
        "{}",
        saved.body
    );
    let cfg = us.get_bucket_replication().bucket("main-a").send().await.unwrap().replication_configuration.unwrap();
    let r = &cfg.rules()[0];
    assert_eq!((r.id(), r.priority()), (Some("to-eu"), Some(1)));
    assert_eq!(r.destination().unwrap().bucket(), "arn:aws:s3:eu-west-1::main-b");
    assert!(r.existing_object_replication().is_some(), "replicate existing objects");
    // Several prefixes and "any" of two tags: four S3 rules, shown and edited as one.
    let mut f = form(&[
        ("prefixes", "x/\ny/"),
        ("tags", "a=1\nb=2"),
        ("tag_match", "any"),
        ("storage_class", "STANDARD_IA"),
        ("rpo_minutes", "15"),
        ("owner_override", "on"),
    ]);
    f[0] = ("id", "tagged");
    f[5] = ("priority", "10");
    f.push(("csrf", &csrf));
    let saved = b.post("/buckets/us-east-1/main-a/replication/rules", &f).await;
    assert_eq!(saved.status, 303, "{}", saved.body);
    let cfg = us.get_bucket_replication().bucket("main-a").send().await.unwrap().replication_configuration.unwrap();
    let ids: Vec<&str> = cfg.rules().iter().filter_map(|r| r.id()).collect();
    assert_eq!(ids, ["to-eu", "tagged", "tagged~2", "tagged~3", "tagged~4"]);
    let edit = b.get("/buckets/us-east-1/main-a/replication/rule?rule=tagged").await;
    for kept in [
        ">x/\ny/</textarea>",
        ">a=1\nb=2</textarea>",
        "<option value=\"any\" selected>",
        "<option value=\"STANDARD_IA\" selected>",
        "name=\"rpo_minutes\" value=\"15\"",
        "id=\"owner_override\" name=\"owner_override\" checked",
        "name=\"original\" value=\"tagged\"",
    ] {
        assert!(edit.body.contains(kept), "{kept} kept in {}", edit.body);
    }
    let view = b.get("/buckets/us-east-1/main-a/replication").await;
    assert_eq!(
        view.body.matches("aria-label=\"Edit tagged\"").count(),
        1,
        "one row for the group: {}",
        view.body
    );
    let r = b
        .post(
            "/buckets/us-east-1/main-a/replication/rule-action",
            &[("csrf", &csrf), ("rule", "tagged"), ("action", "disable")],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let cfg = us.get_bucket_replication().bucket("main-a").send().await.unwrap().replication_configuration.unwrap();
    let disabled: Vec<bool> = cfg.rules().iter().map(|r| r.status().as_str() == "Disabled").collect();
    assert_eq!(disabled, [false, true, true, true, true]);
    // Another account: no replication view, no stream, no save.
    let mut alt = Browser::new(console);
    assert_eq!(alt.sign_in(ALT_AK, ALT_SK).await.status, 303);
    for path in
        ["/buckets/us-east-1/main-a/replication", "/buckets/us-east-1/main-a/live", "/buckets/us-east-1/main-a/replication/rule"]
    {
        assert_eq!(alt.get(path).await.status, 404, "{path}");
    }
    let alt_csrf = hidden(&alt.get("/").await.body, "csrf");
    let r = alt
        .post(
            "/buckets/us-east-1/main-a/replication/rule-action",
            &[("csrf", &alt_csrf), ("rule", "to-eu"), ("action", "delete")],
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = b
        .post(
            "/buckets/us-east-1/main-a/replication/rule-action",
            &[("csrf", &csrf), ("rule", "tagged"), ("action", "delete")],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let cfg = us.get_bucket_replication().bucket("main-a").send().await.unwrap().replication_configuration.unwrap();
    assert_eq!(cfg.rules().iter().filter_map(|r| r.id()).collect::<Vec<_>>(), ["to-eu"]);
    // The dashboard's stream sends the progress, the failures and the charts.
    let events = read_events(&b, "/buckets/us-east-1/main-a/live", &["progress", "failures", "charts"]).await;
    assert!(events.contains("text/event-stream"), "{events}");
    assert!(events.contains("event: progress\n") && events.contains("to-eu"), "{events}");
    server.shutdown().await;
}

/// An upload larger than a part goes up as a multipart upload, streamed; a small one as one
/// PutObject; both download back byte for byte; a delete from the browser leaves a delete
/// marker, listed with the versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_stream_to_s3_and_download_back() {
    let (server, console, _dir) = console_cluster().await;
    let us = main_client(&server, 0);
    enable_versioning(&us, "main-a").await;
    let mut b = Browser::new(console);
    assert_eq!(b.sign_in(MAIN_AK, MAIN_SK).await.status, 303);
    let csrf = hidden(&b.get("/buckets/us-east-1/main-a").await.body, "csrf");
    let big: Vec<u8> = (0..(2 * ferry_server::console::PART + 12_345)).map(|i| b"0123456789abcdef"[i % 16]).collect();
    for (key, body) in [("dir/big.bin", &big[..]), ("small.txt", &b"small"[..])] {
        let path = format!("/buckets/us-east-1/main-a/upload?key={}", key.replace('/', "%2F"));
        let r = b
            .send(
                "POST",
                &path,
                &[("x-ferry-csrf", &csrf), ("content-type", "application/octet-stream")],
                Some(body),
            )
            .await;
        assert_eq!(r.status, 201, "{key}: {}", r.body);
        assert_eq!(get_bytes(&us, "main-a", key).await, body, "{key} stored whole");
        let d = b.get(&format!("/buckets/us-east-1/main-a/download?key={}", key.replace('/', "%2F"))).await;
        assert_eq!(d.status, 200);
        assert_eq!(d.body.as_bytes(), body, "{key} downloads back");
    }
    let etag = us.head_object().bucket("main-a").key("dir/big.bin").send().await.unwrap().e_tag.unwrap();
    assert!(etag.ends_with("-3\""), "three parts: {etag}");
    let etag = us.head_object().bucket("main-a").key("small.txt").send().await.unwrap().e_tag.unwrap();
    assert!(!etag.contains('-'), "one PutObject: {etag}");
    let r = b.post("/buckets/us-east-1/main-a/delete-object", &[("csrf", &csrf), ("key", "small.txt")]).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let list = b.get("/").await;
    assert!(
        list.body.contains("<td>2</td>\n    <td>16.0 MiB</td>"),
        "two versions (the delete marker is not one), their size: {}",
        list.body
    );
    let versions = b.get("/buckets/us-east-1/main-a/versions?key=small.txt").await;
    assert!(
        versions.body.contains("delete marker") && versions.body.contains("small.txt"),
        "{}",
        versions.body
    );
    assert_eq!(
        versions.body.matches("aria-label=\"Delete version").count(),
        2,
        "the object and its delete marker"
    );
    server.shutdown().await;
}

/// One HTTP/1.1 exchange over TLS (trusting `ca`), read until the server closes.
async fn tls_http(addr: SocketAddr, ca: &std::path::Path, request: &str) -> RawResponse {
    use rustls::pki_types::pem::PemObject as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("a TLS handshake with the console");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut buf)).await;
    RawResponse::parse_bytes(&buf)
}

/// Over TLS (`[console] tls_cert`, `tls_key`), the console's cookies are `Secure`, and a
/// plain-HTTP request gets no page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_cookies_are_secure() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tls_files(certs.path());
    let (server, console, _dir) = console_cluster_with(|o, _| o.console_tls = Some((cert, key))).await;
    assert_eq!(server.console_url(), Some(format!("https://{console}/")));
    let head = |cookie: &str| format!("host: localhost\r\nconnection: close\r\ncookie: {cookie}\r\n");
    let form = tls_http(console, &ca, &format!("GET /sign-in HTTP/1.1\r\n{}\r\n", head(""))).await;
    assert_eq!(form.status, 200, "{}", form.body);
    let login = form.header("set-cookie").unwrap().to_owned();
    assert!(
        login.contains("; Secure") && login.contains("HttpOnly") && login.contains("SameSite=Strict"),
        "{login}"
    );
    let token = login.split(';').next().unwrap().split_once('=').unwrap().1.to_owned();
    let body = format!("csrf={token}&access_key={MAIN_AK}&secret_key={}", percent(MAIN_SK));
    let signed = tls_http(
        console,
        &ca,
        &format!(
            "POST /sign-in HTTP/1.1\r\n{}content-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{body}",
            head(&format!("ferry_login={token}")),
            body.len()
        ),
    )
    .await;
    assert_eq!(signed.status, 303, "{}", signed.body);
    let session = signed.headers.iter().find(|(k, v)| k == "set-cookie" && v.starts_with("ferry_session=")).unwrap().1.clone();
    assert!(session.contains("; Secure") && session.contains("HttpOnly"), "{session}");
    let cookie = session.split(';').next().unwrap().to_owned();
    let page = tls_http(console, &ca, &format!("GET / HTTP/1.1\r\n{}\r\n", head(&cookie))).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("main-a"), "{}", page.body);
    let plain = raw_http(console, b"GET /sign-in HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    assert_ne!(plain.status, 200, "no page over plain HTTP");
    server.shutdown().await;
}

/// Stopping the server ends the open dashboards' streams cleanly (the last chunk of the
/// response, then the connection closes), so a shutdown does not wait on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_dashboards() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (server, console, _dir) = console_cluster().await;
    let mut b = Browser::new(console);
    assert_eq!(b.sign_in(MAIN_AK, MAIN_SK).await.status, 303);
    let mut s = tokio::net::TcpStream::connect(console).await.unwrap();
    let req = format!("GET /buckets/us-east-1/main-a/live HTTP/1.1\r\nhost: x\r\ncookie: {}\r\n\r\n", b.cookie());
    s.write_all(req.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // The stream is open: its first event has come.
    while !String::from_utf8_lossy(&seen).contains("event: progress") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the first event");
        seen.extend_from_slice(&buf[..n]);
    }
    tokio::time::timeout(Duration::from_secs(60), server.shutdown()).await.expect("shutdown finishes");
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection stays open after shutdown");
    assert!(
        String::from_utf8_lossy(&seen).ends_with("0\r\n\r\n"),
        "the stream ended cleanly: {}",
        String::from_utf8_lossy(&seen)
    );
}

/// A stored replication configuration this build cannot read is shown as such, and the
/// console's Save and rule actions refuse to touch it (409): built on the empty configuration
/// the console would show, saving one rule would have dropped every stored one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_stored_configuration_is_never_overwritten() {
    let (server, console, _dir) = console_cluster().await;
    let store = server.regions()[0].store.clone();
    store
        .meta
        .write(|tx| {
            let mut b = tx.get_bucket("main-a")?.ok_or(ferry_store::Error::NoSuchBucket)?;
            b.replication = Some("not a configuration this build knows".into());
            tx.put_bucket(&b)
        })
        .await
        .unwrap();
    let mut b = Browser::new(console);
    assert_eq!(b.sign_in(MAIN_AK, MAIN_SK).await.status, 303);
    let view = b.get("/buckets/us-east-1/main-a/replication").await;
    assert!(view.body.contains("cannot be read by this build"), "{}", view.body);
    let csrf = hidden(&b.get("/").await.body, "csrf");
    let save = b
        .post(
            "/buckets/us-east-1/main-a/replication/rules",
            &[("csrf", &csrf), ("id", "r"), ("dest_region", "eu-west-1"), ("dest_bucket", "main-b"), ("enabled", "on")],
        )
        .await;
    assert_eq!(save.status, 409, "{}", save.body);
    let action = b
        .post(
            "/buckets/us-east-1/main-a/replication/rule-action",
            &[("csrf", &csrf), ("rule", "r"), ("action", "delete")],
        )
        .await;
    assert_eq!(action.status, 409, "{}", action.body);
    let stored = store.meta.read(|r| Ok(r.get_bucket("main-a")?.and_then(|b| b.replication))).await.unwrap();
    assert_eq!(stored.as_deref(), Some("not a configuration this build knows"), "left as it was");
}
