//! moto's S3 server as a third-party S3 replication target.

use std::path::PathBuf;
use std::time::Duration;

use super::{MAIN_AK, free_port};

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
