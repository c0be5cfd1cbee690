//! Test harness: real servers on 127.0.0.1 ephemeral ports in temp dirs, real aws-sdk-s3
//! clients, and a raw HTTP helper for requests the SDK will not send (bad input).

#![allow(dead_code)] // each test module uses a different part of the harness

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_smithy_http_client::tls;
use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns};
use ferry_core::config::RegionConfig;
pub use ferry_netem::{LinkSpec, Netem, Partition};
use ferry_server::server::{Server, ServerOptions};

pub const MAIN_AK: &str = "AKIAMAINTESTKEY";
pub const MAIN_SK: &str = "main-secret-key";
pub const ALT_AK: &str = "AKIAALTTESTKEY00";
pub const ALT_SK: &str = "alt-secret-key";
/// A replication credential (what peers in other processes sign replicas with).
pub const REPL_AK: &str = "AKIAREPLTESTKEY0";
pub const REPL_SK: &str = "repl-secret-key";

/// Resolves every name to 127.0.0.1 (virtual-host-style requests to `BUCKET.localhost`).
#[derive(Debug, Clone)]
struct Loopback;

impl ResolveDns for Loopback {
    fn resolve_dns<'a>(&'a self, _name: &'a str) -> DnsFuture<'a> {
        DnsFuture::ready(Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]))
    }
}

pub fn users() -> Vec<ferry_s3::User> {
    vec![
        ferry_s3::User::new(MAIN_AK, MAIN_SK, Some("main"), None).with_email(Some("main@example.com")),
        ferry_s3::User::new(ALT_AK, ALT_SK, Some("alt"), None).with_email(Some("alt@example.com")),
        ferry_s3::User::new(REPL_AK, REPL_SK, Some("replication"), None).replicator(),
    ]
}

/// The account (user id) of an access key of [`users`].
pub fn account_of(access_key: &str) -> String {
    users().into_iter().find(|u| u.access_key == access_key).expect("a test user").owner.id
}

/// The `x-ferry-source` header of a replication request from `bucket` in `region`, owned by
/// the account of `owner_ak`.
pub fn source_header(region: &str, bucket: &str, owner_ak: &str) -> String {
    ferry_store::replication::SourceRef::new(region, bucket, &account_of(owner_ak)).encode().unwrap()
}

/// A request mutation that adds the `x-ferry-source` header `src` (what a source region sends
/// with every replica request).
pub fn with_source(src: String) -> impl Fn(&mut aws_sdk_s3::config::http::HttpRequest) + Send + Sync + 'static {
    move |r| {
        r.headers_mut().insert("x-ferry-source", src.clone());
    }
}

/// Server logs in test output, filtered by RUST_LOG (default: warnings).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// One region served in-process from a temp dir.
pub struct TestServer {
    pub server: Option<Server>,
    pub addr: SocketAddr,
    pub region: String,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_named("us-east-1").await
    }

    pub async fn start_named(region: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        Self::start_in(region, dir, data, ferry_core::config::DEFAULT_INLINE_THRESHOLD).await
    }

    pub async fn start_in(region: &str, dir: tempfile::TempDir, data: PathBuf, inline_threshold: u64) -> Self {
        init_logs();
        let mut cfg = RegionConfig::single("127.0.0.1:0", data);
        cfg.name = region.to_owned();
        cfg.inline_threshold = inline_threshold;
        let opts = ServerOptions { shutdown_timeout: Duration::from_secs(5), ..ServerOptions::new(vec![cfg], users()) };
        let server = Server::start(opts).await.expect("server starts");
        let addr = server.regions()[0].addr;
        Self { server: Some(server), addr, region: region.to_owned(), dir }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn store(&self) -> std::sync::Arc<ferry_store::Store> {
        self.server.as_ref().expect("running").regions()[0].store.clone()
    }

    /// A client signing as the main user, with the SDK's default checksum behaviour
    /// (aws-chunked bodies with CRC trailers).
    pub fn client(&self) -> Client {
        client_for(&self.endpoint(), MAIN_AK, MAIN_SK, &self.region, Mode::Default)
    }

    pub fn alt_client(&self) -> Client {
        client_for(&self.endpoint(), ALT_AK, ALT_SK, &self.region, Mode::Default)
    }

    pub fn client_with(&self, mode: Mode) -> Client {
        client_for(&self.endpoint(), MAIN_AK, MAIN_SK, &self.region, mode)
    }

    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        self.dir
    }
}

/// Client variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// SDK defaults: checksums when supported, path-style.
    Default,
    /// Checksums only when required (plain bodies, no trailers), path-style.
    WhenRequired,
    /// Virtual-host style against `localhost`.
    VirtualHost,
}

pub fn client_for(endpoint: &str, ak: &str, sk: &str, region: &str, mode: Mode) -> Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_with_resolver(Loopback);
    let endpoint = if mode == Mode::VirtualHost { endpoint.replace("127.0.0.1", "localhost") } else { endpoint.to_owned() };
    let mut b = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(ak, sk, None, None, "test"))
        .force_path_style(mode != Mode::VirtualHost)
        .http_client(http);
    if mode == Mode::WhenRequired {
        b = b
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    }
    Client::from_conf(b.build())
}

/// A unique bucket name.
pub fn bucket_name(tag: &str) -> String {
    format!("{tag}-{}", &uuid_like()[..12])
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}{n:04x}", t % (1 << 40))
}

pub async fn create_bucket(c: &Client, name: &str) {
    c.create_bucket().bucket(name).send().await.expect("create bucket");
}

pub async fn create_versioned_bucket(c: &Client, name: &str) {
    create_bucket(c, name).await;
    enable_versioning(c, name).await;
}

/// Turns versioning on for an existing bucket.
pub async fn enable_versioning(c: &Client, name: &str) {
    c.put_bucket_versioning()
        .bucket(name)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .expect("enable versioning");
}

/// Versioned `sb` (at `src`) and `db` (at `dst`), and one rule replicating everything of `sb`,
/// delete markers included, to `db`.
pub async fn replicated_pair(src: &Client, sb: &str, dst: &Client, db: &str) {
    create_versioned_bucket(src, sb).await;
    create_versioned_bucket(dst, db).await;
    src.put_bucket_replication()
        .bucket(sb)
        .replication_configuration(simple_rules(&[&format!("arn:aws:s3:::{db}")]))
        .send()
        .await
        .expect("put replication");
}

pub async fn put(c: &Client, bucket: &str, key: &str, body: &[u8]) -> aws_sdk_s3::operation::put_object::PutObjectOutput {
    c.put_object().bucket(bucket).key(key).body(body.to_vec().into()).send().await.expect("put")
}

pub async fn get_bytes(c: &Client, bucket: &str, key: &str) -> Vec<u8> {
    let out = c.get_object().bucket(bucket).key(key).send().await.expect("get");
    out.body.collect().await.expect("body").into_bytes().to_vec()
}

/// The S3 error code of an SDK error.
pub fn code<E, R>(e: &aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    match e {
        aws_sdk_s3::error::SdkError::ServiceError(s) => s.err().code().unwrap_or("").to_owned(),
        other => format!("not a service error: {other:?}"),
    }
}

/// The HTTP status of an SDK error.
pub fn status<E: std::fmt::Debug>(
    e: &aws_sdk_s3::error::SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
) -> u16 {
    match e {
        aws_sdk_s3::error::SdkError::ServiceError(s) => s.raw().status().as_u16(),
        other => panic!("not a service error: {other:?}"),
    }
}

pub fn md5_hex(data: &[u8]) -> String {
    use md5::Digest as _;
    hex::encode(md5::Md5::digest(data))
}

/// A raw HTTP/1.1 exchange: sends `request` as is, reads until the server closes.
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> RawResponse {
    raw_exchange(addr, request, false).await
}

/// Like [`raw_http`], then closes the sending side (the server sees the body end early).
pub async fn raw_http_half_close(addr: SocketAddr, request: &[u8]) -> RawResponse {
    raw_exchange(addr, request, true).await
}

async fn raw_exchange(addr: SocketAddr, request: &[u8], half_close: bool) -> RawResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    if half_close {
        s.shutdown().await.ok();
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    RawResponse::parse(&buf)
}

#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    fn parse(buf: &[u8]) -> Self {
        let text = String::from_utf8_lossy(buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
        let headers =
            lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned())).collect();
        Self { status, headers, body: body.to_owned() }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The `<Code>` of an S3 error body.
    pub fn code(&self) -> Option<&str> {
        let start = self.body.find("<Code>")? + 6;
        let end = self.body[start..].find("</Code>")? + start;
        Some(&self.body[start..end])
    }
}

/// Sends a request presigned by the SDK with a raw client.
pub async fn send_presigned(req: &aws_sdk_s3::presigning::PresignedRequest, body: &[u8]) -> RawResponse {
    send_presigned_with(req, &[], body).await
}

/// [`send_presigned`] with extra headers that the signature does not cover (what the holder of a
/// presigned URL can add).
pub async fn send_presigned_with(
    req: &aws_sdk_s3::presigning::PresignedRequest,
    extra: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    let uri: http::Uri = req.uri().parse().expect("uri");
    let addr: SocketAddr = format!("{}:{}", "127.0.0.1", uri.port_u16().unwrap_or(80)).parse().expect("addr");
    let mut text = format!("{} {} HTTP/1.1\r\n", req.method(), uri.path_and_query().map_or("/", |p| p.as_str()));
    for (k, v) in req.headers() {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    for (k, v) in extra {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    if !req.headers().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        text.push_str(&format!("host: {}\r\n", uri.authority().map_or("", |a| a.as_str())));
    }
    text.push_str(&format!("content-length: {}\r\nconnection: close\r\n\r\n", body.len()));
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(body);
    raw_http(addr, &bytes).await
}

/// A `ferry` child process.
pub struct FerryProcess {
    pub child: std::process::Child,
    /// Region name → address, as printed at start.
    pub addrs: Vec<(String, SocketAddr)>,
    pub stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FerryProcess {
    /// Spawns `ferry ARGS` and waits until every region printed its address.
    pub fn spawn(args: &[&str], envs: &[(&str, &str)], regions: usize) -> Self {
        use std::io::BufRead as _;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
        let log = std::env::var("FERRY_CHILD_LOG").unwrap_or_else(|_| "warn".to_owned());
        cmd.args(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).env("RUST_LOG", log);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn ferry");
        let stderr = child.stderr.take().expect("stderr");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<(String, SocketAddr)>();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("ferry: region ")
                    && let Some((name, url)) = rest.split_once(" serving S3 on http://")
                    && let Ok(addr) = url.trim().parse()
                {
                    let _ = tx.send((name.to_owned(), addr));
                }
                sink.lock().expect("lock").push(line);
            }
        });
        let mut addrs = Vec::new();
        while addrs.len() < regions {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(a) => addrs.push(a),
                Err(_) => {
                    let _ = child.kill();
                    panic!("ferry did not start: {:?}", lines.lock().expect("lock"));
                }
            }
        }
        Self { child, addrs, stderr: lines }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0].1
    }

    /// SIGKILL, then reap.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM to this child (by its PID) and waits for it to exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            assert!(std::time::Instant::now() < deadline, "ferry did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FerryProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `ferry ARGS` to completion: (exit code, stderr).
pub fn run_ferry(args: &[&str]) -> (i32, String) {
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_ferry")).args(args).env("RUST_LOG", "warn").output().expect("run ferry");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

/// Several regions served by one in-process server, each in its own temp data dir.
pub struct TestCluster {
    pub server: Option<Server>,
    pub dir: tempfile::TempDir,
    opts: ServerOptions,
}

impl TestCluster {
    /// Regions named `names` on 127.0.0.1:0; `tweak` adjusts the options (peers, TLS...).
    pub async fn start(names: &[&str], tweak: impl FnOnce(&mut ServerOptions, &std::path::Path)) -> Self {
        init_logs();
        let dir = tempfile::tempdir().expect("temp dir");
        let regions = names
            .iter()
            .map(|n| {
                let mut cfg = RegionConfig::single("127.0.0.1:0", dir.path().join(n));
                cfg.name = (*n).to_owned();
                cfg
            })
            .collect();
        let mut opts = ServerOptions { shutdown_timeout: Duration::from_secs(5), ..ServerOptions::new(regions, users()) };
        tweak(&mut opts, dir.path());
        let server = Server::start(opts.clone()).await.expect("cluster starts");
        Self { server: Some(server), dir, opts }
    }

    /// Stops every region and starts them again on the same data directories (new ports).
    pub async fn restart(mut self) -> Self {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        let server = Server::start(self.opts.clone()).await.expect("cluster restarts");
        Self { server: Some(server), dir: self.dir, opts: self.opts }
    }

    pub fn url(&self, region: &str) -> String {
        self.server.as_ref().and_then(|s| s.region(region)).map(|r| r.url.clone()).expect("region")
    }

    pub fn client(&self, region: &str) -> Client {
        client_for(&self.url(region), MAIN_AK, MAIN_SK, region, Mode::Default)
    }

    /// Runs `ferry replication COMMAND --endpoint <region> ... ARGS` as the main user.
    pub async fn ferry_replication(&self, region: &str, args: &[&str]) -> (i32, String) {
        let url = self.url(region);
        let mut all = vec!["replication"];
        all.extend_from_slice(&args[..1]);
        all.extend_from_slice(&["--endpoint", &url, "--access-key", MAIN_AK, "--secret-key", MAIN_SK]);
        all.extend_from_slice(&args[1..]);
        run_ferry_async(&all).await
    }

    /// The replication figures of each destination of a source bucket.
    pub async fn dest_stats(&self, region: &str, bucket: &str) -> Vec<ferry_store::replication::DestStats> {
        let b = bucket.to_owned();
        self.store(region).meta.read(move |r| r.dest_stats(&b)).await.unwrap()
    }

    /// A client signing as the second user (another account).
    pub fn client_alt(&self, region: &str) -> Client {
        client_for(&self.url(region), ALT_AK, ALT_SK, region, Mode::Default)
    }

    pub fn store(&self, region: &str) -> std::sync::Arc<ferry_store::Store> {
        self.server.as_ref().and_then(|s| s.region(region)).map(|r| r.store.clone()).expect("region")
    }

    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        self.dir
    }
}

/// Polls `check` until it returns true or `secs` pass; panics with `what` on timeout.
pub async fn wait_until<F, Fut>(what: &str, secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if check().await {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "timed out after {secs}s waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One version as listed, for comparisons.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listed {
    pub key: String,
    pub version_id: String,
    pub delete_marker: bool,
    pub is_latest: bool,
    pub etag: String,
    pub size: i64,
    pub last_modified: String,
}

/// Waits (up to `secs`) until `version` of `key` is in `bucket` at `c`.
pub async fn wait_for_version(what: &str, secs: u64, c: &Client, bucket: &str, key: &str, version: &str) {
    wait_until(what, secs, || async {
        c.head_object().bucket(bucket).key(key).version_id(version).send().await.is_ok()
    })
    .await;
}

/// Every version and delete marker of a bucket.
pub async fn all_versions(c: &Client, bucket: &str) -> Vec<Listed> {
    let mut out = Vec::new();
    let (mut km, mut vm): (Option<String>, Option<String>) = (None, None);
    loop {
        let page = c
            .list_object_versions()
            .bucket(bucket)
            .set_key_marker(km.clone())
            .set_version_id_marker(vm.clone())
            .send()
            .await
            .expect("list versions");
        for v in page.versions() {
            out.push(Listed {
                key: v.key().unwrap_or_default().to_owned(),
                version_id: v.version_id().unwrap_or_default().to_owned(),
                delete_marker: false,
                is_latest: v.is_latest().unwrap_or(false),
                etag: v.e_tag().unwrap_or_default().to_owned(),
                size: v.size().unwrap_or(0),
                last_modified: v.last_modified().map(|t| t.to_string()).unwrap_or_default(),
            });
        }
        for d in page.delete_markers() {
            out.push(Listed {
                key: d.key().unwrap_or_default().to_owned(),
                version_id: d.version_id().unwrap_or_default().to_owned(),
                delete_marker: true,
                is_latest: d.is_latest().unwrap_or(false),
                etag: String::new(),
                size: 0,
                last_modified: d.last_modified().map(|t| t.to_string()).unwrap_or_default(),
            });
        }
        if page.is_truncated() != Some(true) {
            break;
        }
        km = page.next_key_marker().map(str::to_owned);
        vm = page.next_version_id_marker().map(str::to_owned);
    }
    out.sort();
    out
}

/// Compares two buckets version by version: ids, latest flags, ETags, sizes, times, and for
/// each object version its content headers, user metadata and tags. Returns the differences.
pub async fn compare_buckets(src: &Client, sb: &str, dst: &Client, db: &str) -> Vec<String> {
    let (a, b) = (all_versions(src, sb).await, all_versions(dst, db).await);
    let mut diffs = Vec::new();
    for v in &a {
        match b.iter().find(|x| x.key == v.key && x.version_id == v.version_id) {
            None => diffs.push(format!("missing at destination: {} {}", v.key, v.version_id)),
            Some(w) if w != v => diffs.push(format!("differs: {v:?} vs {w:?}")),
            Some(_) if !v.delete_marker => {
                let h1 = src.head_object().bucket(sb).key(&v.key).version_id(&v.version_id).send().await;
                let h2 = dst.head_object().bucket(db).key(&v.key).version_id(&v.version_id).send().await;
                match (h1, h2) {
                    (Ok(h1), Ok(h2)) => {
                        if h1.content_type() != h2.content_type()
                            || h1.metadata() != h2.metadata()
                            || h1.cache_control() != h2.cache_control()
                        {
                            diffs.push(format!("headers differ for {} {}", v.key, v.version_id));
                        }
                    }
                    (x, y) => diffs.push(format!(
                        "head failed for {} {}: {:?} {:?}",
                        v.key,
                        v.version_id,
                        x.err().map(|e| code(&e)),
                        y.err().map(|e| code(&e))
                    )),
                }
                let t1 = src
                    .get_object_tagging()
                    .bucket(sb)
                    .key(&v.key)
                    .version_id(&v.version_id)
                    .send()
                    .await
                    .map(|t| t.tag_set().to_vec());
                let t2 = dst
                    .get_object_tagging()
                    .bucket(db)
                    .key(&v.key)
                    .version_id(&v.version_id)
                    .send()
                    .await
                    .map(|t| t.tag_set().to_vec());
                if t1.ok() != t2.ok() {
                    diffs.push(format!("tags differ for {} {}", v.key, v.version_id));
                }
            }
            Some(_) => {}
        }
    }
    for w in &b {
        if !a.iter().any(|v| v.key == w.key && v.version_id == w.version_id) {
            diffs.push(format!("extra at destination: {} {}", w.key, w.version_id));
        }
    }
    diffs
}

/// A `x-ferry-replica` header value as a peer would send it, built from JSON (base64url, no
/// padding), so tests can forge any field.
pub fn replica_header(json: &serde_json::Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string())
}

/// Microseconds since the epoch, now.
pub fn now_us() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros()).unwrap()
}

/// The replication status header of a version.
pub async fn repl_status(c: &Client, bucket: &str, key: &str, version: Option<&str>) -> Option<String> {
    c.head_object()
        .bucket(bucket)
        .key(key)
        .set_version_id(version.map(str::to_owned))
        .send()
        .await
        .ok()?
        .replication_status()
        .map(|s| s.as_str().to_owned())
}

/// Puts a replication configuration given as raw XML (for elements the SDK does not model).
pub async fn put_replication_xml(c: &Client, bucket: &str, xml: &str) -> Result<(), String> {
    let body = xml.to_owned();
    let len = body.len().to_string();
    let r = c
        .put_bucket_replication()
        .bucket(bucket)
        .replication_configuration(
            aws_sdk_s3::types::ReplicationConfiguration::builder()
                .role("")
                .rules(
                    aws_sdk_s3::types::ReplicationRule::builder()
                        .status(aws_sdk_s3::types::ReplicationRuleStatus::Enabled)
                        .destination(aws_sdk_s3::types::Destination::builder().bucket("x").build().unwrap())
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .customize()
        .mutate_request(move |req| {
            *req.body_mut() = aws_smithy_types::body::SdkBody::from(body.clone());
            req.headers_mut().remove("content-md5");
            req.headers_mut().insert("content-length", len.clone());
        })
        .send()
        .await;
    r.map(|_| ()).map_err(|e| code(&e))
}

/// A replication configuration with one rule per destination ARN, all objects, delete markers.
pub fn simple_rules(dests: &[&str]) -> aws_sdk_s3::types::ReplicationConfiguration {
    use aws_sdk_s3::types::*;
    let rules = dests
        .iter()
        .enumerate()
        .map(|(i, d)| {
            ReplicationRule::builder()
                .id(format!("rule-{i}"))
                .priority(i as i32)
                .status(ReplicationRuleStatus::Enabled)
                .filter(ReplicationRuleFilter::builder().prefix("").build())
                .delete_marker_replication(
                    DeleteMarkerReplication::builder().status(DeleteMarkerReplicationStatus::Enabled).build(),
                )
                .destination(Destination::builder().bucket(*d).build().unwrap())
                .build()
                .unwrap()
        })
        .collect();
    ReplicationConfiguration::builder().role("arn:aws:iam::000000000000:role/ferry").set_rules(Some(rules)).build().unwrap()
}

/// [`run_ferry`] without blocking the async runtime (the child may talk to in-process servers).
pub async fn run_ferry_async(args: &[&str]) -> (i32, String) {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || run_ferry(&args.iter().map(String::as_str).collect::<Vec<_>>())).await.expect("join")
}

/// A private CA and a certificate for 127.0.0.1 / localhost signed by it, as PEM files in
/// `dir`: (ca.pem, cert.pem, key.pem).
pub fn tls_files(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "Ferry test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let (ca_path, cert_path, key_path) = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    std::fs::write(&cert_path, format!("{}{}", leaf_cert.pem(), ca_cert.pem())).unwrap();
    std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();
    (ca_path, cert_path, key_path)
}

/// A client that trusts `ca_pem` (for https endpoints with a private CA).
pub fn client_with_ca(endpoint: &str, region: &str, ca_pem: &[u8]) -> Client {
    let trust = tls::TrustStore::empty().with_pem_certificate(ca_pem.to_vec());
    let ctx = tls::TlsContext::builder().with_trust_store(trust).build().unwrap();
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .tls_context(ctx)
        .build_https();
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(MAIN_AK, MAIN_SK, None, None, "test"))
        .force_path_style(true)
        .http_client(http)
        .build();
    Client::from_conf(conf)
}

/// A free TCP port on 127.0.0.1 (bound and released: a small race, fine for tests).
/// A port for a process a test starts (and may restart) on a fixed address. Taken below the
/// kernel's ephemeral range (32768+ by default), so no listener bound to port 0 and no outgoing
/// connection can take it between the choice and the (re)start; never the same twice in one
/// test binary.
pub fn free_port() -> u16 {
    use rand::Rng as _;
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = rand::rng().random_range(20_000..32_000);
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

/// Writes a one-region config for a `ferry serve` child: `region` on `port` with data in
/// `dir/region`, credentials main/alt, and `peers` as `(name, url, kind)`.
pub fn process_config(dir: &std::path::Path, region: &str, port: u16, peers: &[(&str, String, &str)], extra: &str) -> PathBuf {
    let mut text = format!(
        "[[credential]]\naccess_key = \"{MAIN_AK}\"\nsecret_key = \"{MAIN_SK}\"\ndisplay_name = \"main\"\n\n\
         [[credential]]\naccess_key = \"{REPL_AK}\"\nsecret_key = \"{REPL_SK}\"\nreplication = true\n\n\
         [[region]]\nname = \"{region}\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{region}\"\n\n"
    );
    for (name, url, kind) in peers {
        text.push_str(&format!(
            "[[peer]]\nname = \"{name}\"\nendpoint = \"{url}\"\naccess_key = \"{REPL_AK}\"\nsecret_key = \"{REPL_SK}\"\nkind = \"{kind}\"\n\n"
        ));
    }
    text.push_str(extra);
    let path = dir.join(format!("{region}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// moto's S3 server (PyPI), as a third-party S3 endpoint. `scripts/test` installs it into
/// `target/test-venv`; `FERRY_MOTO_SERVER` may point elsewhere.
pub struct Moto {
    child: std::process::Child,
    pub url: String,
}

impl Moto {
    pub fn start() -> Self {
        let bin = std::env::var("FERRY_MOTO_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-venv/bin/moto_server"));
        assert!(
            bin.exists(),
            "moto_server not found at {}: run scripts/test (it installs tests/moto/requirements.txt), or set FERRY_MOTO_SERVER",
            bin.display()
        );
        let port = free_port();
        let child = std::process::Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start moto_server");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, url: format!("http://127.0.0.1:{port}") }
    }
}

/// A `[[peer]]` of kind `s3` named `moto` for a moto server at `url`.
pub fn moto_peer(url: &str) -> ferry_core::config::PeerConfig {
    ferry_core::config::PeerConfig {
        name: "moto".into(),
        endpoint: url.to_owned(),
        access_key: "testing".into(),
        secret_key: "testing".into(),
        ca_file: None,
        kind: ferry_core::config::PeerKind::S3,
        region: None,
        accounts: vec![MAIN_AK.to_owned()],
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two regions, `us-east-1` and `eu-west-1`, as separate `ferry serve` processes that know each
/// other as peers. With a link, the US process reaches EU through a [`Netem`] (partitions,
/// bandwidth limits, delay).
pub struct TwoProcesses {
    pub dir: tempfile::TempDir,
    pub us_cfg: PathBuf,
    pub eu_cfg: PathBuf,
    pub us_port: u16,
    pub eu_port: u16,
    pub link: Option<Netem>,
    /// The link from EU back to US, when configured.
    pub back: Option<Netem>,
}

/// The link between the US and EU processes of [`TwoProcesses`].
pub enum Link {
    Direct,
    /// Through an emulated WAN link.
    Wan(LinkSpec),
}

impl TwoProcesses {
    /// Writes both configurations (`extra_us` is appended to the US one); starts nothing but the
    /// link.
    pub async fn configure(link: Link, extra_us: &str) -> Self {
        Self::configure_links(link, Link::Direct, extra_us, "").await
    }

    /// Like [`configure`](Self::configure), with a link from EU back to US too (mutual setups)
    /// and extra configuration for each side.
    pub async fn configure_links(link: Link, back: Link, extra_us: &str, extra_eu: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (us_port, eu_port) = (free_port(), free_port());
        let wan = |spec: LinkSpec, port: u16| async move {
            Netem::start("127.0.0.1:0".parse().unwrap(), format!("127.0.0.1:{port}").parse().unwrap(), spec).await.unwrap()
        };
        let link = match link {
            Link::Direct => None,
            Link::Wan(spec) => Some(wan(spec, eu_port).await),
        };
        let back = match back {
            Link::Direct => None,
            Link::Wan(spec) => Some(wan(spec, us_port).await),
        };
        let eu_port_for_us = link.as_ref().map_or(eu_port, |p| p.addr().port());
        let us_port_for_eu = back.as_ref().map_or(us_port, |p| p.addr().port());
        let us_cfg = process_config(
            dir.path(),
            "us-east-1",
            us_port,
            &[("eu-west-1", format!("http://127.0.0.1:{eu_port_for_us}"), "ferry")],
            extra_us,
        );
        let eu_cfg = process_config(
            dir.path(),
            "eu-west-1",
            eu_port,
            &[("us-east-1", format!("http://127.0.0.1:{us_port_for_eu}"), "ferry")],
            extra_eu,
        );
        Self { dir, us_cfg, eu_cfg, us_port, eu_port, link, back }
    }

    pub fn spawn_us(&self) -> FerryProcess {
        FerryProcess::spawn(&["serve", "--config", self.us_cfg.to_str().unwrap()], &[], 1)
    }

    pub fn spawn_eu(&self) -> FerryProcess {
        FerryProcess::spawn(&["serve", "--config", self.eu_cfg.to_str().unwrap()], &[], 1)
    }

    pub fn us_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.us_port)
    }

    pub fn us(&self) -> Client {
        client_for(&self.us_url(), MAIN_AK, MAIN_SK, "us-east-1", Mode::WhenRequired)
    }

    pub fn eu(&self) -> Client {
        client_for(
            &format!("http://127.0.0.1:{}", self.eu_port),
            MAIN_AK,
            MAIN_SK,
            "eu-west-1",
            Mode::WhenRequired,
        )
    }

    /// The emulated link between the regions.
    pub fn link(&self) -> &Netem {
        self.link.as_ref().expect("configured with Link::Wan")
    }

    /// The emulated link from EU back to US.
    pub fn back(&self) -> &Netem {
        self.back.as_ref().expect("configured with a Link::Wan back")
    }

    /// A client signing as the main user at the US region.
    pub fn us_client(&self) -> Client {
        self.us()
    }

    /// Runs `ferry replication ARGS --endpoint <region> --bucket BUCKET` as the main user.
    pub async fn ferry_replication(&self, region: &str, args: &[&str]) -> (i32, String) {
        let url = if region == "us-east-1" { self.us_url() } else { format!("http://127.0.0.1:{}", self.eu_port) };
        let mut all = vec!["replication"];
        all.extend_from_slice(&args[..1]);
        all.extend_from_slice(&["--endpoint", &url, "--access-key", MAIN_AK, "--secret-key", MAIN_SK]);
        all.extend_from_slice(&args[1..]);
        run_ferry_async(&all).await
    }
}

/// A tmpfs for a data directory (unmounted on drop) that a test can make full: remounted with
/// its size set to what it holds, then back. Needs root (`mount`); `mount` returns `None` without.
pub struct SmallDisk {
    dir: PathBuf,
}

/// The size of the tmpfs when it is not full (a limit, not memory taken).
const ROOMY: &str = "size=64g";

impl SmallDisk {
    pub fn mount(dir: &std::path::Path) -> Option<Self> {
        std::fs::create_dir_all(dir).ok()?;
        let d = Self { dir: dir.to_owned() };
        d.mount_cmd(&["-t", "tmpfs", "-o", ROOMY, "tmpfs"]).then_some(d)
    }

    fn mount_cmd(&self, args: &[&str]) -> bool {
        std::process::Command::new("mount")
            .args(args)
            .arg(&self.dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// No free space left: the size becomes what is used, plus a few pages.
    pub fn fill(&self) {
        let out = std::process::Command::new("df").args(["-B1", "--output=used"]).arg(&self.dir).output();
        let used: Option<u64> = out.ok().and_then(|o| String::from_utf8_lossy(&o.stdout).lines().nth(1)?.trim().parse().ok());
        if let Some(used) = used {
            self.mount_cmd(&["-o", &format!("remount,size={}", used + 16 * 1024)]);
        }
    }

    pub fn free(&self) {
        self.mount_cmd(&["-o", &format!("remount,{ROOMY}")]);
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

type ProxyError = Box<dyn std::error::Error + Send + Sync>;

/// An HTTP proxy in front of an S3 endpoint that answers `503 SlowDown` to every request for
/// the buckets in its refusal list, and forwards the rest unchanged (headers included, so
/// signatures stay valid): one destination bucket throttling while the others work.
pub struct SlowDownProxy {
    pub addr: SocketAddr,
    refused: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowDownProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        use http_body_util::BodyExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let refused: std::sync::Arc<std::sync::Mutex<Vec<String>>> = std::sync::Arc::default();
        let client: hyper_util::client::legacy::Client<_, hyper::body::Incoming> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        let r = refused.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (client, refused) = (client.clone(), r.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                        let (client, refused) = (client.clone(), refused.clone());
                        async move {
                            let bucket = req.uri().path().trim_start_matches('/').split('/').next().unwrap_or("").to_owned();
                            if refused.lock().unwrap().contains(&bucket) {
                                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                                let full = http_body_util::Full::new(bytes::Bytes::from(body));
                                let resp =
                                    http::Response::builder().status(503).body(full.map_err(|e| match e {}).boxed()).unwrap();
                                return Ok::<_, hyper_util::client::legacy::Error>(resp);
                            }
                            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
                            *req.uri_mut() = format!("http://{upstream}{pq}").parse().unwrap();
                            let resp = client.request(req).await?;
                            Ok(resp.map(|b| b.map_err(|e| -> ProxyError { Box::new(e) }).boxed()))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, refused, task }
    }

    /// Answers 503 SlowDown to every request for `bucket` from now on.
    pub fn refuse(&self, bucket: &str) {
        self.refused.lock().unwrap().push(bucket.to_owned());
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SlowDownProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
