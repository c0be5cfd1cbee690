//! Regions served in-process: [`TestServer`] (one region) and [`TestCluster`] (several
//! regions of one server, which replicate to each other over HTTP like separate processes).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_s3::Client;
use ferry_core::config::RegionConfig;
use ferry_server::server::{Server, ServerOptions};

use super::{ALT_AK, ALT_SK, MAIN_AK, MAIN_SK, Mode, client_for, ferry_cli, run_ferry_async, users};

/// Server logs in test output, filtered by RUST_LOG (default: warnings).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// The metadata backend the in-process regions use: SQLite by default; with
/// `FERRY_TEST_META=postgres`, one PostgreSQL database per region on a throwaway server the
/// test owns (so the same tests run against both backends).
pub struct MetaBackend {
    pg: Option<ferry_store::meta::pg::test_cluster::TestCluster>,
}

impl MetaBackend {
    pub fn from_env() -> Self {
        let pg = (std::env::var("FERRY_TEST_META").as_deref() == Ok("postgres")).then(|| {
            ferry_store::meta::pg::test_cluster::TestCluster::start(&[]).expect("FERRY_TEST_META=postgres needs PostgreSQL")
        });
        Self { pg }
    }

    /// Points `cfg` at a new database of its own (nothing on SQLite).
    pub async fn configure(&self, cfg: &mut RegionConfig) {
        let Some(pg) = &self.pg else { return };
        let db = format!("region_{}", cfg.name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
        let admin = ferry_store::meta::pg::connect(&pg.url()).await.expect("connect");
        admin.batch_execute(&format!("CREATE DATABASE {db}")).await.expect("create database");
        cfg.meta = Some(pg.url().replace("/postgres", &format!("/{db}")));
        cfg.node_id = Some(format!("{}-node", cfg.name));
    }
}

/// One region served in-process from a temp dir.
pub struct TestServer {
    pub server: Option<Server>,
    pub addr: SocketAddr,
    pub region: String,
    /// Holds the data directory; removed when the server is dropped.
    _dir: tempfile::TempDir,
    _meta: MetaBackend,
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
        Self::start_configured(region, dir, data, inline_threshold, |_| {}).await
    }

    /// A region whose options `configure` changes first.
    pub async fn start_with(configure: impl FnOnce(&mut ServerOptions)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        Self::start_configured("us-east-1", dir, data, ferry_core::config::DEFAULT_INLINE_THRESHOLD, configure).await
    }

    async fn start_configured(
        region: &str,
        dir: tempfile::TempDir,
        data: PathBuf,
        inline_threshold: u64,
        configure: impl FnOnce(&mut ServerOptions),
    ) -> Self {
        init_logs();
        let mut cfg = RegionConfig::single("127.0.0.1:0", data);
        cfg.name = region.to_owned();
        cfg.inline_threshold = inline_threshold;
        let meta = MetaBackend::from_env();
        meta.configure(&mut cfg).await;
        let mut opts = ServerOptions { shutdown_timeout: Duration::from_secs(5), ..ServerOptions::new(vec![cfg], users()) };
        configure(&mut opts);
        let server = Server::start(opts).await.expect("server starts");
        let addr = server.regions()[0].addr;
        Self { server: Some(server), addr, region: region.to_owned(), _dir: dir, _meta: meta }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn store(&self) -> std::sync::Arc<ferry_store::Store> {
        self.server.as_ref().expect("running").regions()[0].store.clone()
    }

    /// The region's metrics, as `/metrics` serves them.
    pub fn metrics(&self) -> String {
        self.server.as_ref().expect("running").regions()[0].metrics.encode()
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
}

/// Several regions served by one in-process server, each in its own temp data dir.
pub struct TestCluster {
    pub server: Option<Server>,
    pub dir: tempfile::TempDir,
    opts: ServerOptions,
    meta: MetaBackend,
}

impl TestCluster {
    /// Regions named `names` on 127.0.0.1:0; `tweak` adjusts the options (peers, TLS...).
    pub async fn start(names: &[&str], tweak: impl FnOnce(&mut ServerOptions, &std::path::Path)) -> Self {
        init_logs();
        let dir = tempfile::tempdir().expect("temp dir");
        let meta = MetaBackend::from_env();
        let mut regions = Vec::new();
        for n in names {
            let mut cfg = RegionConfig::single("127.0.0.1:0", dir.path().join(n));
            cfg.name = (*n).to_owned();
            meta.configure(&mut cfg).await;
            regions.push(cfg);
        }
        let mut opts = ServerOptions { shutdown_timeout: Duration::from_secs(5), ..ServerOptions::new(regions, users()) };
        tweak(&mut opts, dir.path());
        let server = Server::start(opts.clone()).await.expect("cluster starts");
        Self { server: Some(server), dir, opts, meta }
    }

    /// Stops every region and starts them again on the same data directories (new ports).
    pub async fn restart(mut self) -> Self {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        let server = Server::start(self.opts.clone()).await.expect("cluster restarts");
        Self { server: Some(server), dir: self.dir, opts: self.opts, meta: self.meta }
    }

    pub fn url(&self, region: &str) -> String {
        self.server.as_ref().and_then(|s| s.region(region)).map(|r| r.url.clone()).expect("region")
    }

    pub fn client(&self, region: &str) -> Client {
        client_for(&self.url(region), MAIN_AK, MAIN_SK, region, Mode::Default)
    }

    /// Runs `ferry replication SUBCOMMAND` against `region` for `bucket`, then `extra`, as the
    /// main user: (exit code, output).
    pub async fn ferry_replication(&self, region: &str, subcommand: &str, bucket: &str, extra: &[&str]) -> (i32, String) {
        run_ferry_async(&ferry_cli(&["replication", subcommand], &self.url(region), bucket, extra)).await
    }

    /// The replication figures of each destination of a source bucket.
    pub async fn dest_stats(&self, region: &str, bucket: &str) -> Vec<ferry_store::replication::DestStats> {
        let b = bucket.to_owned();
        self.store(region).meta.read(move |r| r.dest_stats(&b)).await.unwrap()
    }

    /// How many live changes `region` has delivered for rule `rule` of `bucket` to `destination`
    /// (`peer/bucket`): the count of its replication latency histogram.
    pub fn delivered(&self, region: &str, bucket: &str, rule: &str, destination: &str) -> u64 {
        let metrics = self.server.as_ref().and_then(|s| s.region(region)).map(|r| r.metrics.encode()).expect("region");
        let series = format!(
            "ferry_replication_latency_seconds_count{{region=\"{region}\",bucket=\"{bucket}\",rule=\"{rule}\",destination=\"{destination}\"}} "
        );
        metrics.lines().find_map(|l| l.strip_prefix(&series)).map_or(0, |n| n.trim().parse().expect("a count"))
    }

    /// A client signing as the second user (another account).
    pub fn client_alt(&self, region: &str) -> Client {
        client_for(&self.url(region), ALT_AK, ALT_SK, region, Mode::Default)
    }

    pub fn store(&self, region: &str) -> std::sync::Arc<ferry_store::Store> {
        self.server.as_ref().and_then(|s| s.region(region)).map(|r| r.store.clone()).expect("region")
    }
}
