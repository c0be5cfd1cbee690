//! `ferry` as a child process: [`FerryProcess`] (a running `ferry serve` or `ferry netem`),
//! [`run_ferry`] (a command run to completion), [`ferry_cli`] (the arguments of a command
//! against a region), configuration files for `ferry serve`, and [`TwoProcesses`]: two
//! regions as separate processes, optionally linked through an emulated WAN.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_s3::Client;
pub use ferry_netem::{LinkSpec, Netem, Partition};

use super::{MAIN_AK, MAIN_SK, Mode, REPL_AK, REPL_SK, client_for};

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

/// Runs `ferry ARGS` to completion: (exit code, stderr then stdout).
pub fn run_ferry<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (i32, String) {
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_ferry")).args(args).env("RUST_LOG", "warn").output().expect("run ferry");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned() + String::from_utf8_lossy(&out.stdout).as_ref(),
    )
}

/// [`run_ferry`] without blocking the async runtime (the child may talk to in-process servers).
pub async fn run_ferry_async<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (i32, String) {
    let args: Vec<std::ffi::OsString> = args.iter().map(|s| s.as_ref().to_owned()).collect();
    tokio::task::spawn_blocking(move || run_ferry(&args)).await.expect("join")
}

/// The arguments of `ferry COMMAND` against the region at `endpoint`, signed as the main user,
/// for `bucket`, then `extra`: `ferry_cli(&["replication", "status"], &url, "src", &["--json"])`.
pub fn ferry_cli(command: &[&str], endpoint: &str, bucket: &str, extra: &[&str]) -> Vec<String> {
    let common = ["--endpoint", endpoint, "--access-key", MAIN_AK, "--secret-key", MAIN_SK, "--bucket", bucket];
    command.iter().chain(&common).chain(extra).map(|s| (*s).to_owned()).collect()
}

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
/// `dir/region`, the main and replication credentials, and `peers` as `(name, url, kind)`.
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

    /// The URL of the EU region.
    pub fn eu_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.eu_port)
    }

    pub fn us(&self) -> Client {
        client_for(&self.us_url(), MAIN_AK, MAIN_SK, "us-east-1", Mode::WhenRequired)
    }

    pub fn eu(&self) -> Client {
        client_for(&self.eu_url(), MAIN_AK, MAIN_SK, "eu-west-1", Mode::WhenRequired)
    }

    /// The emulated link between the regions.
    pub fn link(&self) -> &Netem {
        self.link.as_ref().expect("configured with Link::Wan")
    }

    /// The emulated link from EU back to US.
    pub fn back(&self) -> &Netem {
        self.back.as_ref().expect("configured with a Link::Wan back")
    }

    /// Runs `ferry replication SUBCOMMAND` against `region` (`us-east-1` or `eu-west-1`) for
    /// `bucket`, then `extra`, as the main user: (exit code, output).
    pub async fn ferry_replication(&self, region: &str, subcommand: &str, bucket: &str, extra: &[&str]) -> (i32, String) {
        let url = if region == "us-east-1" { self.us_url() } else { self.eu_url() };
        run_ferry_async(&ferry_cli(&["replication", subcommand], &url, bucket, extra)).await
    }
}
