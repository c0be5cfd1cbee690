//! A throwaway PostgreSQL cluster for tests: `initdb` into a temporary directory (as the
//! `postgres` user when the tests run as root, since PostgreSQL refuses to run as root), a
//! server on a free loopback port with its socket in that directory, stopped (`pg_ctl stop -m
//! immediate` on that data directory: only the server this cluster started) when dropped.
//!
//! Debian's `postgresql` package provides the binaries (`.ci/run` installs it). Without them a
//! test says it is skipped, unless `FERRY_REQUIRE_POSTGRES` is set (CI sets it): then a missing
//! PostgreSQL is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct TestCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    /// The server's options (`pg_ctl -o`), to start it again the same way.
    options: String,
}

/// The newest installed server's `bin` directory.
fn server_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// A free loopback port (also the SeaweedFS rig's), below the kernel's ephemeral range (32768+
/// by default, where every outgoing connection takes its port) and below the range the server
/// tests give their processes (20000+), never the same twice in one test binary: a server
/// started a moment later still finds it free.
pub(crate) fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let seed = u64::from(std::process::id()) ^ u64::try_from(given.len()).unwrap_or(0).wrapping_mul(0x9e37_79b9);
    let mut x = seed
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()) ^ d.as_secs());
    loop {
        // xorshift: good enough to spread the choices.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 10_000 + u16::try_from(x % 10_000).unwrap_or(0);
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

impl TestCluster {
    /// Starts a cluster with `settings` (`-c name=value`) on top of durable defaults; `None`
    /// when PostgreSQL is not installed and CI does not require it.
    pub fn start(settings: &[(&str, &str)]) -> Option<Self> {
        let Some(bin) = server_bin() else {
            assert!(
                std::env::var_os("FERRY_REQUIRE_POSTGRES").is_none(),
                "PostgreSQL is not installed (apt-get install postgresql; .ci/run does)"
            );
            eprintln!("SKIPPED: PostgreSQL is not installed (apt-get install postgresql)");
            return None;
        };
        let dir = tempfile::tempdir().expect("a temporary directory");
        let as_postgres = is_root();
        if as_postgres {
            let ok = Command::new("chown").arg("postgres:").arg(dir.path()).status().is_ok_and(|s| s.success());
            assert!(ok, "chown postgres {}", dir.path().display());
        }
        let mut cluster = Self { dir, bin, port: free_port(), as_postgres, options: String::new() };
        let data = cluster.data();
        cluster.run("initdb", &["-D", &data, "-A", "trust", "-U", "ferry", "--no-sync"]);
        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=on -c synchronous_commit=on -c full_page_writes=on",
            cluster.port,
            cluster.dir.path().display()
        );
        for (k, v) in settings {
            options.push_str(&format!(" -c {k}={v}"));
        }
        cluster.options = options;
        cluster.start_server();
        Some(cluster)
    }

    fn start_server(&self) {
        let out = self.pg_ctl_start();
        assert!(out.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn pg_ctl_start(&self) -> std::process::Output {
        let log = self.dir.path().join("server.log").display().to_string();
        let data = self.data();
        let args = ["-D", data.as_str(), "-l", log.as_str(), "-w", "-o", self.options.as_str(), "start"];
        let exe = self.bin.join("pg_ctl");
        if self.as_postgres {
            Command::new("runuser").arg("-u").arg("postgres").arg("--").arg(&exe).args(args).output()
        } else {
            Command::new(&exe).args(args).output()
        }
        .expect("pg_ctl")
    }

    /// SIGKILL of the postmaster (by the PID in its data directory: the server this cluster
    /// started); its backends end when they notice. Returns once it is gone.
    pub fn kill9(&self) {
        let pid_file = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid")).expect("postmaster.pid");
        let pid: i32 = pid_file.lines().next().and_then(|l| l.trim().parse().ok()).expect("a PID");
        let status = Command::new("kill").arg("-9").arg(pid.to_string()).status().expect("kill");
        assert!(status.success(), "kill -9 {pid}");
        while std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Starts the server again after [`kill9`](Self::kill9) (crash recovery runs first).
    pub fn restart(&self) {
        // The backends of the killed postmaster may still hold the shared memory a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let out = self.pg_ctl_start();
            if out.status.success() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "PostgreSQL did not restart: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let out = if self.as_postgres {
            Command::new("runuser").arg("-u").arg("postgres").arg("--").arg(&exe).args(args).output()
        } else {
            Command::new(&exe).args(args).output()
        }
        .unwrap_or_else(|e| panic!("{}: {e}", exe.display()));
        assert!(
            out.status.success(),
            "{tool} failed: {}{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
    }

    /// The connection URL (user `ferry`, trusted on loopback).
    pub fn url(&self) -> String {
        format!("postgres://ferry@127.0.0.1:{}/postgres", self.port)
    }

    #[allow(dead_code)] // for tests that look at the server's files
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let data = self.data();
        let exe = self.bin.join("pg_ctl");
        let args = ["-D", data.as_str(), "-m", "immediate", "-w", "stop"];
        let _ = if self.as_postgres {
            Command::new("runuser").arg("-u").arg("postgres").arg("--").arg(&exe).args(args).output()
        } else {
            Command::new(&exe).args(args).output()
        };
    }
}
