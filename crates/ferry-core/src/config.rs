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
use std::time::Duration;

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
    /// Replication targets outside this process: other Ferry regions or any S3 service.
    /// Regions of this file are peers of each other without being listed.
    #[serde(default)]
    pub peer: Vec<PeerConfig>,
    /// Buckets created at first start (demo setups, declarative bootstrapping).
    #[serde(default)]
    pub bucket: Vec<BucketConfig>,
    /// Replication engine settings (apply to every region of this process).
    #[serde(default)]
    pub replication: ReplicationSettings,
    /// The web console (off unless `listen` is set).
    #[serde(default)]
    pub console: ConsoleConfig,
    /// Lifecycle worker settings (apply to every region of this process).
    #[serde(default)]
    pub lifecycle: LifecycleSettings,
}

/// `[lifecycle]`: how the lifecycle worker goes through the buckets' rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleSettings {
    /// Time between the starts of two passes over every bucket with rules. Default `1h`.
    #[serde(default = "default_lifecycle_interval", with = "duration_text")]
    pub interval: Duration,
    /// Versions read per step of a pass (each step is one read and one write per action).
    /// Default 1000.
    #[serde(default = "default_lifecycle_batch")]
    pub batch: usize,
    /// How long a rule's "day" is. Default `24h`; shorter only to test rules (Ceph calls this
    /// `rgw_lc_debug_interval`): with `10s`, a 1-day rule expires objects within 20 s.
    #[serde(default = "default_lifecycle_day", with = "duration_text")]
    pub day: Duration,
}

fn default_lifecycle_interval() -> Duration {
    Duration::from_secs(3600)
}

fn default_lifecycle_batch() -> usize {
    1000
}

fn default_lifecycle_day() -> Duration {
    Duration::from_secs(86_400)
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        Self { interval: default_lifecycle_interval(), batch: default_lifecycle_batch(), day: default_lifecycle_day() }
    }
}

/// `[console]`: the web console, one per process, covering every region it serves.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// `IP:PORT` to serve the console on. Default: off; `ferry serve` without a configuration
    /// file serves it on 127.0.0.1:9001.
    pub listen: Option<String>,
    /// PEM certificate chain: serve the console over HTTPS (its cookies are then `Secure`).
    /// Without it the console speaks plain HTTP: keep it on loopback or a private interface.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

/// Where `ferry serve` without a configuration file serves the console.
pub const DEFAULT_CONSOLE_LISTEN: &str = "127.0.0.1:9001";

/// A replication peer served by another process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's region name (for a Ferry peer: the name its own config gives it).
    pub name: String,
    /// `http://HOST:PORT` or `https://HOST:PORT`.
    pub endpoint: String,
    /// Credentials used to write replicas there.
    pub access_key: String,
    pub secret_key: String,
    /// PEM file of a private CA to trust for this peer (besides the system roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `ferry` (full fidelity: version ids, times, ACLs kept) or `s3` (any S3 service).
    #[serde(default)]
    pub kind: PeerKind,
    /// Region to sign requests for. Default: the peer's name for a Ferry peer, `us-east-1`
    /// for an S3 peer.
    #[serde(default)]
    pub region: Option<String>,
    /// `kind = "s3"` only: the accounts (access keys or user ids of `[[credential]]`s) whose
    /// buckets may replicate to this service. The service sees one credential, the one above,
    /// so Ferry decides who may use it; default: nobody.
    #[serde(default)]
    pub accounts: Vec<String>,
}

impl PeerConfig {
    /// The region requests to this peer are signed for.
    #[must_use]
    pub fn signing_region(&self) -> String {
        self.region.clone().unwrap_or_else(|| match self.kind {
            PeerKind::Ferry => self.name.clone(),
            PeerKind::S3 => "us-east-1".to_owned(),
        })
    }
}

/// What a peer is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerKind {
    /// Another Ferry region.
    #[default]
    Ferry,
    /// Any S3-compatible service.
    S3,
}

/// A bucket to create at first start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    /// Bucket name.
    pub name: String,
    /// Region (of this file) that holds it.
    pub region: String,
    /// `Enabled` or `Suspended`; default: versioning off (`Enabled` is needed for replication).
    #[serde(default)]
    pub versioning: Option<String>,
    /// Replicate to these destinations (`arn:aws:s3:::NAME` or `arn:aws:s3:REGION::NAME`), one
    /// rule each, all objects, delete markers included.
    #[serde(default)]
    pub replicate_to: Vec<String>,
    /// Owner (access key of a `[[credential]]`); default: the first credential.
    #[serde(default)]
    pub owner: Option<String>,
}

/// Replication engine settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationSettings {
    /// Transfers in flight per destination peer. Default 128: over a long round trip a peer's
    /// throughput is about `concurrency / RTT` objects per second (128 / 50 ms = 2,560/s).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Objects larger than this replicate as multipart uploads. Default 64 MiB.
    #[serde(default = "default_multipart_threshold")]
    pub multipart_threshold: u64,
    /// Part size for objects that were not uploaded in parts. Default 16 MiB.
    #[serde(default = "default_part_size")]
    pub part_size: u64,
    /// Parts of one object uploaded in parallel. Default 4.
    #[serde(default = "default_part_concurrency")]
    pub part_concurrency: usize,
    /// Versions a backfill scans per second, at most. Default 20000.
    #[serde(default = "default_backfill_rate")]
    pub backfill_rate: u64,
    /// A replica whose time is further ahead of this region's clock is refused (a transient
    /// error for its source, with the reason in its status). Default `5m`, at most `15m`.
    #[serde(default = "default_max_clock_skew", with = "duration_text")]
    pub max_clock_skew: Duration,
    /// A job that has failed with transient errors (peer unreachable, 5xx) for this long
    /// becomes FAILED with its last error, until `ferry replication retry`. Default `24h`.
    #[serde(default = "default_give_up_after", with = "duration_text")]
    pub give_up_after: Duration,
    /// A multipart upload a peer opened here and left without a new part for this long is
    /// aborted (its parts released): a transfer that will not come back. Default `24h`.
    #[serde(default = "default_give_up_after", with = "duration_text")]
    pub abandoned_upload_after: Duration,
    /// Small versions (held inline, at most `inline_threshold`) go to Ferry peers through
    /// Ferry's own lean client (hyper and SigV4) rather than the AWS SDK, which costs several
    /// hundred µs of CPU more per request (docs/BENCHMARKS.md). `false`: every request goes
    /// through the SDK. Default true.
    #[serde(default = "default_true")]
    pub lean_client: bool,
    /// With the lean client: small replicas to a Ferry peer go in batches, one request and one
    /// commit at the peer for several; at most this many batches are on the way to a peer at
    /// once, and replicas that arrive while they are wait for the next (never for a timer).
    /// `0`: one request per replica. Default 8.
    #[serde(default = "default_batches_in_flight")]
    pub batches_in_flight: usize,
}

fn default_batches_in_flight() -> usize {
    8
}

fn default_max_clock_skew() -> Duration {
    Duration::from_secs(5 * 60)
}

fn default_give_up_after() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// Durations written as text: `90s`, `5m`, `24h`, `7d`.
mod duration_text {
    use std::time::Duration;

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("`{s}` is not a duration like 90s, 5m or 24h: {e}")))
    }
}

fn default_backfill_rate() -> u64 {
    20_000
}

fn default_concurrency() -> usize {
    128
}
fn default_multipart_threshold() -> u64 {
    64 << 20
}
fn default_part_size() -> u64 {
    16 << 20
}
fn default_part_concurrency() -> usize {
    4
}

impl Default for ReplicationSettings {
    fn default() -> Self {
        Self {
            concurrency: default_concurrency(),
            multipart_threshold: default_multipart_threshold(),
            part_size: default_part_size(),
            part_concurrency: default_part_concurrency(),
            backfill_rate: default_backfill_rate(),
            max_clock_skew: default_max_clock_skew(),
            give_up_after: default_give_up_after(),
            abandoned_upload_after: default_give_up_after(),
            lean_client: true,
            batches_in_flight: default_batches_in_flight(),
        }
    }
}

fn default_true() -> bool {
    true
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
    /// A replication credential: what other Ferry regions sign replica writes with (the
    /// `access_key`/`secret_key` of their `[[peer]]` entry for this region). It is not an
    /// account: it owns nothing and may only write replicas into buckets that accept the
    /// account each replica comes from (see docs/REPLICATION.md, "Security model").
    #[serde(default)]
    pub replication: bool,
    /// The account's Block Public Access, as AWS's account-level switches: each switch that is
    /// on here applies to every bucket the account owns, whatever the bucket's own says.
    #[serde(default)]
    pub public_access_block: Option<PublicAccessBlockConfig>,
}

/// The four Block Public Access switches (each `false` unless given).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicAccessBlockConfig {
    /// Requests that set a public ACL are refused.
    #[serde(default)]
    pub block_public_acls: bool,
    /// Public ACLs grant nothing.
    #[serde(default)]
    pub ignore_public_acls: bool,
    /// A public bucket policy is refused.
    #[serde(default)]
    pub block_public_policy: bool,
    /// A public policy grants only to the bucket owner's account.
    #[serde(default)]
    pub restrict_public_buckets: bool,
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
    /// PEM certificate chain: serve HTTPS instead of HTTP.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// PEM of the CA that signed `tls_cert`, trusted by the other regions of this file when
    /// they connect to this one (a private CA); default: the system roots.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Address of the admin listener (`/metrics` for Prometheus, `/health`). Off unless set.
    #[serde(default)]
    pub admin_listen: Option<String>,
    /// The region's metadata in PostgreSQL (`postgres://USER@HOST:PORT/DATABASE`): this process
    /// is then one node of a region of several, which share the metadata and the replication
    /// outbox (docs/SCALE-OUT.md). Default: SQLite in `data_dir`, the region is this process.
    #[serde(default)]
    pub meta: Option<String>,
    /// This node's name among the region's nodes (with `meta`); unique per running node.
    /// Default: the region's name and `listen` address.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Start even when the PostgreSQL server's settings can lose acknowledged commits
    /// (`fsync`, `synchronous_commit` or `full_page_writes` off). Default: refuse.
    #[serde(default)]
    pub meta_allow_unsafe: bool,
    /// How often a node publishes its closed timestamp and renews its job leases, ms (with
    /// `meta`). Default: 1000.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A node silent for this long is fenced by the others, which take over its jobs, ms (with
    /// `meta`). Default: 10000.
    #[serde(default = "default_dead_after_ms")]
    pub dead_after_ms: u64,
    /// Where object bodies live (`[region.blobs]`): the data directory (default), or a bucket
    /// of an S3-compatible store the region's nodes share (with `meta`).
    #[serde(default)]
    pub blobs: Option<BlobsConfig>,
    /// Keys of encryption at rest (`[region.encryption]`): SSE-S3's master key, the key-file
    /// KMS of SSE-KMS. Without it SSE-S3 and SSE-KMS are refused; SSE-C needs no key here.
    #[serde(default)]
    pub encryption: EncryptionConfig,
}

/// `[region.encryption]`: where the region's key-encryption keys are. Each file holds one key:
/// 64 hex digits or the base64 of 32 bytes. Ferry never writes a
/// key; keep the files off the data disk (a stolen data directory must not carry its keys).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// SSE-S3's master key. Default: the `FERRY_MASTER_KEY` environment variable, if set.
    #[serde(default)]
    pub master_key_file: Option<PathBuf>,
    /// Master keys of before a rotation: versions written under them stay readable (new
    /// writes use `master_key_file`).
    #[serde(default)]
    pub old_master_key_files: Vec<PathBuf>,
    /// The key-file KMS of SSE-KMS: key id → key file. `aws:kms` names a key by its id (or an
    /// ARN ending in `:key/ID`).
    #[serde(default)]
    pub kms_keys: std::collections::BTreeMap<String, PathBuf>,
    /// The KMS key of `aws:kms` requests that name none.
    #[serde(default)]
    pub default_kms_key: Option<String>,
    /// Accept SSE-C keys on plain-HTTP requests (they travel in the headers). Default: refused,
    /// as S3 does; only for tests on loopback.
    #[serde(default)]
    pub sse_c_over_http: bool,
}

/// `[region.blobs]`: object bodies in a bucket of an S3-compatible store (AWS S3, Ceph RGW,
/// SeaweedFS, Garage, MinIO...), shared by the nodes of a region, so any node serves any GET.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobsConfig {
    /// `"s3"` (the only value; without `[region.blobs]` bodies stay in the data directory).
    pub backend: String,
    /// `http://HOST:PORT` or `https://HOST:PORT` of the store.
    pub endpoint: String,
    /// The bucket (created beforehand, versioning off: Ferry writes each blob once).
    pub bucket: String,
    /// A key prefix inside the bucket (empty, or ending in `/`). Default: empty.
    #[serde(default)]
    pub prefix: String,
    /// Region to sign requests for. Default: `us-east-1`.
    #[serde(default = "default_blobs_region")]
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    /// PEM of a CA to trust for the endpoint (besides the system roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_blobs_region() -> String {
    "us-east-1".to_owned()
}

fn default_heartbeat_ms() -> u64 {
    1000
}

fn default_dead_after_ms() -> u64 {
    10_000
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
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            admin_listen: None,
            meta: None,
            node_id: None,
            meta_allow_unsafe: false,
            heartbeat_ms: default_heartbeat_ms(),
            dead_after_ms: default_dead_after_ms(),
            blobs: None,
            encryption: EncryptionConfig::default(),
        }
    }

    /// The parsed admin listen address, if set.
    ///
    /// # Errors
    /// When `admin_listen` is not `IP:PORT`.
    pub fn admin_addr(&self) -> Result<Option<SocketAddr>> {
        self.admin_listen
            .as_deref()
            .map(|a| {
                a.parse().map_err(|_| {
                    Error::Config(format!(
                        "region `{}`: key `admin_listen`: `{a}` is not an address of the form IP:PORT",
                        self.name
                    ))
                })
            })
            .transpose()
    }

    /// The URL other regions use to reach this one (`https` when it serves TLS).
    #[must_use]
    pub fn url_for(&self, addr: SocketAddr) -> String {
        let scheme = if self.tls_cert.is_some() { "https" } else { "http" };
        let host = if addr.ip().is_unspecified() { std::net::IpAddr::from([127, 0, 0, 1]) } else { addr.ip() };
        format!("{scheme}://{}", SocketAddr::new(host, addr.port()))
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
        let rel = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for r in &mut cfg.region {
            rel(&mut r.data_dir);
            for p in [&mut r.tls_cert, &mut r.tls_key, &mut r.tls_ca].into_iter().flatten() {
                rel(p);
            }
            if let Some(ca) = r.blobs.as_mut().and_then(|b| b.ca_file.as_mut()) {
                rel(ca);
            }
            let e = &mut r.encryption;
            for p in e.master_key_file.iter_mut().chain(&mut e.old_master_key_files).chain(e.kms_keys.values_mut()) {
                rel(p);
            }
        }
        for p in &mut cfg.peer {
            if let Some(ca) = &mut p.ca_file {
                rel(ca);
            }
        }
        for p in [&mut cfg.console.tls_cert, &mut cfg.console.tls_key].into_iter().flatten() {
            rel(p);
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
        if self.lifecycle.interval < std::time::Duration::from_secs(1) || self.lifecycle.batch == 0 {
            return Err(Error::Config(
                "[lifecycle]: `interval` is at least 1s and `batch` at least 1 (each pass reads every bucket with rules)".into(),
            ));
        }
        if self.lifecycle.day.is_zero() {
            return Err(Error::Config("[lifecycle]: `day` must be longer than 0".into()));
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
            r.admin_addr()?;
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
        if self.console.tls_cert.is_some() != self.console.tls_key.is_some() {
            return Err(Error::Config("[console]: keys `tls_cert` and `tls_key` go together".into()));
        }
        for r in &self.region {
            if r.tls_cert.is_some() != r.tls_key.is_some() {
                return Err(Error::Config(format!("region `{}`: keys `tls_cert` and `tls_key` go together", r.name)));
            }
            if let Some(m) = &r.meta
                && !(m.starts_with("postgres://") || m.starts_with("postgresql://"))
            {
                return Err(Error::Config(format!(
                    "region `{}`: key `meta`: use a PostgreSQL URL, postgres://USER@HOST:PORT/DATABASE",
                    r.name
                )));
            }
            if let Some(d) = &r.encryption.default_kms_key
                && !r.encryption.kms_keys.contains_key(d)
            {
                return Err(Error::Config(format!(
                    "region `{}`: [region.encryption] key `default_kms_key`: `{d}` is not a key of `kms_keys`",
                    r.name
                )));
            }
            if let Some(b) = &r.blobs {
                if b.backend != "s3" {
                    return Err(Error::Config(format!(
                        "region `{}`: [region.blobs] key `backend`: `{}` is not known (use \"s3\")",
                        r.name, b.backend
                    )));
                }
                if r.meta.is_none() {
                    return Err(Error::Config(format!(
                        "region `{}`: [region.blobs] needs key `meta`: blobs shared by nodes need the region's metadata in PostgreSQL",
                        r.name
                    )));
                }
                if !(b.endpoint.starts_with("http://") || b.endpoint.starts_with("https://")) {
                    return Err(Error::Config(format!(
                        "region `{}`: [region.blobs] key `endpoint`: `{}` must start with http:// or https://",
                        r.name, b.endpoint
                    )));
                }
                if !(b.prefix.is_empty() || b.prefix.ends_with('/')) {
                    return Err(Error::Config(format!(
                        "region `{}`: [region.blobs] key `prefix`: end it with `/`",
                        r.name
                    )));
                }
            }
        }
        for p in &self.peer {
            if !is_valid_region_name(&p.name) {
                return Err(Error::Config(format!(
                    "peer `{}`: key `name`: use 1-63 lowercase letters, digits and hyphens",
                    p.name
                )));
            }
            if !names.insert(p.name.clone()) {
                return Err(Error::Config(format!("peer `{}`: key `name`: already used by a region or peer", p.name)));
            }
            if p.kind == PeerKind::Ferry && !p.accounts.is_empty() {
                return Err(Error::Config(format!(
                    "peer `{}`: key `accounts` is for kind = \"s3\" peers (a Ferry peer decides itself whom it accepts)",
                    p.name
                )));
            }
            if !(p.endpoint.starts_with("http://") || p.endpoint.starts_with("https://")) {
                return Err(Error::Config(format!(
                    "peer `{}`: key `endpoint`: `{}` must start with http:// or https://",
                    p.name, p.endpoint
                )));
            }
        }
        for b in &self.bucket {
            if !self.region.iter().any(|r| r.name == b.region) {
                return Err(Error::Config(format!(
                    "bucket `{}`: key `region`: `{}` is not a region of this file",
                    b.name, b.region
                )));
            }
            if let Some(v) = &b.versioning
                && v != "Enabled"
                && v != "Suspended"
            {
                return Err(Error::Config(format!(
                    "bucket `{}`: key `versioning`: use \"Enabled\" or \"Suspended\"",
                    b.name
                )));
            }
            if let Some(o) = &b.owner
                && !self.credential.iter().any(|c| &c.access_key == o && !c.replication)
            {
                return Err(Error::Config(format!(
                    "bucket `{}`: key `owner`: `{o}` is not the access_key of a [[credential]] that is an account",
                    b.name
                )));
            }
        }
        let r = &self.replication;
        if r.concurrency == 0 || r.part_concurrency == 0 {
            return Err(Error::Config(
                "[replication]: `concurrency` and `part_concurrency` must be at least 1".into(),
            ));
        }
        if r.part_size < 5 << 20 || r.part_size > 5 << 30 {
            return Err(Error::Config("[replication]: key `part_size` must be between 5 MiB and 5 GiB".into()));
        }
        let max_skew = Duration::from_micros(crate::time::MAX_OBSERVED_AHEAD_US.unsigned_abs());
        if r.max_clock_skew > max_skew {
            return Err(Error::Config("[replication]: key `max_clock_skew` must be at most 15m".into()));
        }
        if r.give_up_after < Duration::from_secs(1) || r.give_up_after > Duration::from_secs(30 * 24 * 3600) {
            return Err(Error::Config("[replication]: key `give_up_after` must be between 1s and 30d".into()));
        }
        let mut keys = HashSet::new();
        for c in &self.credential {
            if c.access_key.is_empty() || c.secret_key.is_empty() {
                return Err(Error::Config("[[credential]]: `access_key` and `secret_key` must not be empty".into()));
            }
            if !keys.insert(c.access_key.clone()) {
                return Err(Error::Config(format!("[[credential]]: access_key `{}` declared twice", c.access_key)));
            }
            if c.replication && (c.user_id.is_some() || c.email.is_some() || c.public_access_block.is_some()) {
                return Err(Error::Config(format!(
                    "[[credential]] `{}`: a replication credential is not an account: drop `user_id`, `email` and `public_access_block`",
                    c.access_key
                )));
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
            (
                "[[region]]\nname='a'\nlisten='127.0.0.1:1'\ndata_dir='d'\n[lifecycle]\ninterval='0s'\n",
                "interval",
            ),
            (
                "[[region]]\nname='a'\nlisten='127.0.0.1:1'\ndata_dir='d'\n[lifecycle]\nbatch=0\n",
                "batch",
            ),
            ("[[region]]\nname='a'\nlisten='127.0.0.1:1'\ndata_dir='d'\n[lifecycle]\nday='0s'\n", "day"),
        ];
        for (text, key) in cases {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "error for {text:?} should name `{key}`: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn an_account_may_block_public_access() {
        let text = format!(
            "{TWO}\n[[credential]]\naccess_key = \"B\"\nsecret_key = \"S\"\npublic_access_block = {{ block_public_acls = true, restrict_public_buckets = true }}\n"
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.credential[0].public_access_block, None);
        let block = c.credential[1].public_access_block.unwrap();
        assert!(block.block_public_acls && block.restrict_public_buckets);
        assert!(!block.ignore_public_acls && !block.block_public_policy);
        let typo = text.replace("restrict_public_buckets", "restrict_public_bucket");
        assert!(Config::parse(&typo).unwrap_err().to_string().contains("restrict_public_bucket"));
        let replicator = text.replace("secret_key = \"S\"\n", "secret_key = \"S\"\nreplication = true\n");
        assert!(Config::parse(&replicator).unwrap_err().to_string().contains("public_access_block"));
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
