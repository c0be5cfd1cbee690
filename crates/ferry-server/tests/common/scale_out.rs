//! A region of several nodes, as docs/SCALE-OUT.md runs it: [`ScaleOut`] starts a throwaway
//! PostgreSQL server, a SeaweedFS cluster (three volume servers, replication 001, S3 gateway),
//! N `ferry serve` processes of region `us-east-1` on them, and region `eu-west-1` as one more
//! process (SQLite) that the region replicates to. Everything on loopback; every process is
//! ended by PID when the rig is dropped.

use std::path::PathBuf;

use aws_sdk_s3::Client;
use ferry_store::meta::pg::test_cluster::TestCluster;
use ferry_store::s3_blobs::seaweed::{self, Seaweed};

use super::{FerryProcess, LinkSpec, MAIN_AK, MAIN_SK, Mode, Netem, REPL_AK, REPL_SK, client_for, free_port, process_config};

pub const US: &str = "us-east-1";
pub const EU: &str = "eu-west-1";
/// The SeaweedFS bucket the region's blobs go to.
const BLOBS: &str = "ferry-blobs";

/// One rig at a time: each runs a dozen processes, more than two cores keep up with side by side.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct ScaleOut {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    /// Held for the life of the rig (configs, data directories; the servers below).
    _dir: tempfile::TempDir,
    pub pg: TestCluster,
    _weed: Seaweed,
    /// The region's nodes (`None`: stopped or killed), their ports and config files.
    pub nodes: Vec<Option<FerryProcess>>,
    pub ports: Vec<u16>,
    configs: Vec<PathBuf>,
    /// Each node's extra environment (a skewed clock).
    envs: Vec<Vec<(String, String)>>,
    _eu: FerryProcess,
    pub eu_port: u16,
    /// The emulated WAN link from the nodes to EU, when asked for.
    pub link: Option<Netem>,
    /// The link from one node to PostgreSQL, when asked for ([`ScaleOut::start_with`]).
    pub pg_link: Option<Netem>,
}

impl ScaleOut {
    /// Starts the rig with `n` nodes, reaching EU through `link` when given; `None` when
    /// PostgreSQL or SeaweedFS is not installed (and CI does not require them).
    pub async fn start(n: usize, link: Option<LinkSpec>) -> Option<Self> {
        Self::start_with(n, link, None).await
    }

    /// [`start`](Self::start), with node `cut` (if any) reaching PostgreSQL through a link of
    /// its own ([`Self::pg_link`]), which a test can blackhole.
    pub async fn start_with(n: usize, link: Option<LinkSpec>, cut: Option<usize>) -> Option<Self> {
        Self::start_full(n, link, cut, vec![Vec::new(); n]).await
    }

    /// Nodes whose wall clocks are off by `skews` (libfaketime offsets such as `+5s`, `-5s`;
    /// empty: none): `None` when libfaketime is not installed (and CI does not require it).
    pub async fn start_skewed(skews: &[&str]) -> Option<Self> {
        let Some(lib) = faketime() else {
            assert!(
                std::env::var_os("FERRY_REQUIRE_FAKETIME").is_none(),
                "libfaketime is missing (apt-get install faketime)"
            );
            eprintln!("SKIPPED: libfaketime is not installed (apt-get install faketime)");
            return None;
        };
        let envs = skews
            .iter()
            .map(|s| {
                if s.is_empty() {
                    Vec::new()
                } else {
                    vec![
                        ("LD_PRELOAD".to_owned(), lib.clone()),
                        ("FAKETIME".to_owned(), (*s).to_owned()),
                        // Timers and timeouts keep the real monotonic clock.
                        ("FAKETIME_DONT_FAKE_MONOTONIC".to_owned(), "1".to_owned()),
                    ]
                }
            })
            .collect();
        Self::start_full(skews.len(), None, None, envs).await
    }

    async fn start_full(n: usize, link: Option<LinkSpec>, cut: Option<usize>, envs: Vec<Vec<(String, String)>>) -> Option<Self> {
        let turn = ONE_AT_A_TIME.lock().await;
        let pg = TestCluster::start(&[])?;
        let weed = Seaweed::start().await?;
        weed.bucket(BLOBS).await;
        let dir = tempfile::tempdir().unwrap();
        let eu_port = free_port();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let eu_cfg = process_config(dir.path(), EU, eu_port, &[(US, format!("http://127.0.0.1:{}", ports[0]), "ferry")], "");
        let eu = FerryProcess::spawn(&["serve", "--config", eu_cfg.to_str().unwrap()], &[], 1);
        let link = match link {
            Some(spec) => Some(
                Netem::start("127.0.0.1:0".parse().unwrap(), format!("127.0.0.1:{eu_port}").parse().unwrap(), spec)
                    .await
                    .unwrap(),
            ),
            None => None,
        };
        let eu_for_nodes = link.as_ref().map_or(eu_port, |l| l.addr().port());
        let pg_link = match cut {
            Some(_) => {
                let port: u16 = pg.url().rsplit_once(':').and_then(|(_, rest)| rest.split('/').next()?.parse().ok()).unwrap();
                let upstream = format!("127.0.0.1:{port}").parse().unwrap();
                Some(Netem::start("127.0.0.1:0".parse().unwrap(), upstream, LinkSpec::default()).await.unwrap())
            }
            None => None,
        };
        let configs: Vec<PathBuf> = ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let meta = match (&pg_link, cut) {
                    (Some(l), Some(c)) if c == i => {
                        let (head, tail) = pg.url().rsplit_once(':').map(|(h, t)| (h.to_owned(), t.to_owned())).unwrap();
                        let db = tail.split_once('/').map_or(String::new(), |(_, d)| d.to_owned());
                        format!("{head}:{}/{db}", l.addr().port())
                    }
                    _ => pg.url(),
                };
                node_config(&dir, &meta, &weed, i, *port, eu_for_nodes)
            })
            .collect();
        let nodes = configs.iter().zip(&envs).map(|(c, e)| Some(spawn(c, e))).collect();
        Some(Self { _turn: turn, _dir: dir, pg, _weed: weed, nodes, ports, configs, envs, _eu: eu, eu_port, link, pg_link })
    }

    /// A client of node `i`.
    pub fn node(&self, i: usize) -> Client {
        client_for(&format!("http://127.0.0.1:{}", self.ports[i]), MAIN_AK, MAIN_SK, US, Mode::WhenRequired)
    }

    /// A client of the EU region.
    pub fn eu(&self) -> Client {
        client_for(&format!("http://127.0.0.1:{}", self.eu_port), MAIN_AK, MAIN_SK, EU, Mode::WhenRequired)
    }

    /// SIGKILL of node `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(p) = self.nodes[i].take() {
            p.kill9();
        }
    }

    /// SIGKILL of SeaweedFS's extra volume server `i` (0 or 1), by its PID.
    pub fn kill_volume_server(&mut self, i: usize) {
        let (_, child) = &mut self._weed.volumes[i];
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Sends `signal` (`STOP`, `CONT`) to node `i` (by its PID).
    pub fn signal(&self, i: usize, signal: &str) {
        let pid = self.nodes[i].as_ref().expect("running").child.id().to_string();
        let ok = std::process::Command::new("kill").args([&format!("-{signal}"), &pid]).status().is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {pid}");
    }

    /// Starts node `i` again (same id, same port: a new life that fences the previous one).
    pub fn restart(&mut self, i: usize) {
        self.kill9(i);
        self.nodes[i] = Some(spawn(&self.configs[i], &self.envs[i]));
    }

    /// `ferry region nodes --meta URL --json`.
    pub async fn region_nodes(&self) -> serde_json::Value {
        let (code, out) = super::run_ferry_async(&["region", "nodes", "--meta", &self.pg.url(), "--json"]).await;
        assert_eq!(code, 0, "{out}");
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// The PostgreSQL URL of the region's metadata.
    pub fn meta_url(&self) -> String {
        self.pg.url()
    }
}

fn spawn(cfg: &std::path::Path, envs: &[(String, String)]) -> FerryProcess {
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    FerryProcess::spawn(&["serve", "--config", cfg.to_str().unwrap()], &envs, 1)
}

/// Debian's libfaketime (package `faketime`), the thread-safe build.
fn faketime() -> Option<String> {
    let dirs = std::fs::read_dir("/usr/lib").ok()?;
    dirs.filter_map(Result::ok)
        .map(|d| d.path().join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.exists())
        .map(|p| p.display().to_string())
}

/// Node `i` of the US region: its own data directory (staging), the region's PostgreSQL and
/// SeaweedFS, EU as a peer; a short heartbeat so failover is quick in tests.
fn node_config(dir: &tempfile::TempDir, meta: &str, weed: &Seaweed, i: usize, port: u16, eu_port: u16) -> PathBuf {
    let text = format!(
        "[[credential]]\naccess_key = \"{MAIN_AK}\"\nsecret_key = \"{MAIN_SK}\"\ndisplay_name = \"main\"\n\n\
         [[credential]]\naccess_key = \"{REPL_AK}\"\nsecret_key = \"{REPL_SK}\"\nreplication = true\n\n\
         [[region]]\nname = \"{US}\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"node{i}\"\n\
         meta = \"{meta}\"\nnode_id = \"node{i}\"\nheartbeat_ms = 200\ndead_after_ms = 3000\n\n\
         [region.blobs]\nbackend = \"s3\"\nendpoint = \"{weed_url}\"\nbucket = \"{BLOBS}\"\nprefix = \"us/\"\n\
         access_key = \"{wak}\"\nsecret_key = \"{wsk}\"\n\n\
         [[peer]]\nname = \"{EU}\"\nendpoint = \"http://127.0.0.1:{eu_port}\"\naccess_key = \"{REPL_AK}\"\n\
         secret_key = \"{REPL_SK}\"\nkind = \"ferry\"\n",
        weed_url = weed.url(),
        wak = seaweed::ACCESS_KEY,
        wsk = seaweed::SECRET_KEY,
    );
    let path = dir.path().join(format!("node{i}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}
