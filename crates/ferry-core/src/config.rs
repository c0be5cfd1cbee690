//! The configuration file of `ferry serve --config FILE` (TOML).
//!
//! ```toml
//! [[credential]]
//! access_key = "AKIAFERRYEXAMPLE"
//! secret_key = "example-secret-key"
//!
//! [[region]]
//! name = "us-east-1"
//! listen = "127.0.0.1:9000"
//! data_dir = "data/us-east-1"     # relative paths are relative to the config file
//! ```
//!
//! Unknown keys are errors (the message names the key and line). Every `[[region]]` is served by
//! the same process but shares no state with the others: its own listener, data directory and
//! metadata database.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Default listen address of the single-region mode (`ferry serve` without `--config`).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9000";
/// Region name of the single-region mode.
pub const DEFAULT_REGION: &str = "local";
/// Default size at or below which object bodies are stored inside the metadata database.
pub const DEFAULT_INLINE_THRESHOLD: u64 = 32 * 1024;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Access keys accepted by every region of this process.
    #[serde(default)]
    pub credential: Vec<CredentialConfig>,
    /// The regions served by this process (at least one).
    #[serde(default)]
    pub region: Vec<RegionConfig>,
}

/// One access key / secret key pair.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// The access key id clients sign with.
    pub access_key: String,
    /// The secret key.
    pub secret_key: String,
    /// Display name of the owner these keys act as. Default: the access key.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Canonical user id of the owner. Default: derived from the access key.
    #[serde(default)]
    pub user_id: Option<String>,
    /// E-mail address of the owner (for ACL grants by e-mail).
    #[serde(default)]
    pub email: Option<String>,
}

/// One region served by this process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// Region name, as clients sign it and as GetBucketLocation answers (e.g. `eu-west-1`).
    pub name: String,
    /// Address of the S3 listener, e.g. `127.0.0.1:9000`.
    pub listen: String,
    /// Data directory (metadata database and blobs). Relative to the config file.
    pub data_dir: PathBuf,
    /// Base domains for virtual-host-style requests (`BUCKET.domain`). Requests to any other host
    /// name are path-style. Default: `["localhost"]`.
    #[serde(default = "default_domains")]
    pub domains: Vec<String>,
    /// Bodies up to this many bytes are stored in the metadata database instead of a blob file
    /// (one fsync instead of three per PUT). Default: 32 KiB. 0 turns inlining off.
    #[serde(default = "default_inline_threshold")]
    pub inline_threshold: u64,
}

fn default_domains() -> Vec<String> {
    vec!["localhost".to_owned()]
}

fn default_inline_threshold() -> u64 {
    DEFAULT_INLINE_THRESHOLD
}

impl RegionConfig {
    /// The single region of `ferry serve` without a config file.
    #[must_use]
    pub fn single(listen: &str, data_dir: PathBuf) -> Self {
        Self {
            name: DEFAULT_REGION.to_owned(),
            listen: listen.to_owned(),
            data_dir,
            domains: default_domains(),
            inline_threshold: DEFAULT_INLINE_THRESHOLD,
        }
    }

    /// The parsed listen address.
    ///
    /// # Errors
    /// When `listen` is not `IP:PORT`.
    pub fn listen_addr(&self) -> Result<SocketAddr> {
        self.listen.parse().map_err(|_| {
            Error::Config(format!(
                "region `{}`: key `listen`: `{}` is not an address of the form IP:PORT",
                self.name, self.listen
            ))
        })
    }
}

impl Config {
    /// Reads, parses and validates a config file. Relative `data_dir`s are resolved against the
    /// file's directory.
    ///
    /// # Errors
    /// A one-line message naming the file and the offending key.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.display().to_string(), source })?;
        let mut cfg = Self::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        for r in &mut cfg.region {
            if r.data_dir.is_relative() {
                r.data_dir = base.join(&r.data_dir);
            }
        }
        Ok(cfg)
    }

    /// Parses and validates config text (paths are left as written).
    ///
    /// # Errors
    /// A one-line message naming the offending key.
    pub fn parse(text: &str) -> Result<Self> {
        let cfg: Self = toml::from_str(text).map_err(|e| Error::Config(one_line(&e.to_string())))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        if self.region.is_empty() {
            return Err(Error::Config("no [[region]] section: at least one region is required".into()));
        }
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        let mut dirs = HashSet::new();
        for r in &self.region {
            if !is_valid_region_name(&r.name) {
                return Err(Error::Config(format!(
                    "region `{}`: key `name`: use 1-63 lowercase letters, digits and hyphens",
                    r.name
                )));
            }
            if !names.insert(r.name.clone()) {
                return Err(Error::Config(format!("region `{}`: key `name`: declared twice", r.name)));
            }
            let addr = r.listen_addr()?;
            if addr.port() != 0 && !addrs.insert(addr) {
                return Err(Error::Config(format!(
                    "region `{}`: key `listen`: {addr} is used by another region",
                    r.name
                )));
            }
            if !dirs.insert(r.data_dir.clone()) {
                return Err(Error::Config(format!(
                    "region `{}`: key `data_dir`: {} is used by another region",
                    r.name,
                    r.data_dir.display()
                )));
            }
        }
        let mut keys = HashSet::new();
        for c in &self.credential {
            if c.access_key.is_empty() || c.secret_key.is_empty() {
                return Err(Error::Config("[[credential]]: `access_key` and `secret_key` must not be empty".into()));
            }
            if !keys.insert(c.access_key.clone()) {
                return Err(Error::Config(format!("[[credential]]: access_key `{}` declared twice", c.access_key)));
            }
        }
        Ok(())
    }
}

/// Region names: 1-63 characters of `[a-z0-9-]`, not starting or ending with `-`.
#[must_use]
pub fn is_valid_region_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn one_line(s: &str) -> String {
    s.split('\n').map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('|')).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"
[[credential]]
access_key = "AK"
secret_key = "SK"

[[region]]
name = "us-east-1"
listen = "127.0.0.1:9000"
data_dir = "data/us-east-1"

[[region]]
name = "eu-west-1"
listen = "127.0.0.1:9100"
data_dir = "data/eu-west-1"
"#;

    #[test]
    fn parses_two_regions() {
        let c = Config::parse(TWO).unwrap();
        assert_eq!(c.region.len(), 2);
        assert_eq!(c.region[1].name, "eu-west-1");
        assert_eq!(c.region[0].domains, vec!["localhost".to_owned()]);
        assert_eq!(c.credential[0].access_key, "AK");
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("[[region]]\nname='a'\nlisten='127.0.0.1:1'\ndata_dir='d'\nbogus=1\n", "bogus"),
            ("[[region]]\nname='a'\nlisten='nowhere'\ndata_dir='d'\n", "listen"),
            ("[[region]]\nname='A_B'\nlisten='127.0.0.1:1'\ndata_dir='d'\n", "name"),
            ("[[region]]\nname='a'\nlisten='127.0.0.1:1'\n", "data_dir"),
            ("", "region"),
            (
                "[[region]]\nname='a'\nlisten='127.0.0.1:1'\ndata_dir='d'\n[[region]]\nname='b'\nlisten='127.0.0.1:1'\ndata_dir='e'\n",
                "listen",
            ),
        ];
        for (text, key) in cases {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "error for {text:?} should name `{key}`: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn relative_data_dir_is_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        std::fs::write(&path, TWO).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.region[0].data_dir, dir.path().join("data/us-east-1"));
    }
}
