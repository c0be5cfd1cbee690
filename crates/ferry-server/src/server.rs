//! Region start-up, serving and shutdown.
//!
//! Start: every region opens its store (lock, database, staging recovery) and binds its
//! listener first, so that the regions of one process know each other's real addresses
//! (ports may be 0). Then each region gets its own peer set (the other regions, the
//! `[[peer]]` entries and itself), its replication workers and blob collector, the
//! `[[bucket]]` sections are created if missing, and the listeners start accepting. Any failure
//! aborts start-up with a one-line error naming the region and the key or path.
//!
//! Shutdown (SIGTERM / SIGINT, or [`Server::shutdown`]): stop accepting, let in-flight requests
//! finish until the deadline, stop the background workers, then stop the metadata writer after
//! it has committed what it holds. Acknowledged writes and recorded replication jobs are
//! already durable; shutdown only avoids cutting requests short.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ferry_core::background::BackgroundRunner;
use ferry_core::config::{BucketConfig, PeerConfig, PeerKind, RegionConfig, ReplicationSettings};
use ferry_replication::client::{ClientSettings, read_ca};
use ferry_replication::peers::{PeerSet, PeerSpec};
use ferry_s3::{EndpointConfig, Users};
use ferry_store::{GcWorker, Store};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What to serve.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The regions.
    pub regions: Vec<RegionConfig>,
    /// The accepted credentials: accounts, and replication credentials for peers in other
    /// processes. The regions of this process write replicas into each other with a
    /// replication credential generated at start (known to this process only).
    pub users: Vec<ferry_s3::User>,
    /// Peers outside this process.
    pub peers: Vec<PeerConfig>,
    /// Buckets to create at first start.
    pub buckets: Vec<BucketConfig>,
    /// Replication engine settings.
    pub replication: ReplicationSettings,
    /// Lifecycle worker settings.
    pub lifecycle: ferry_core::config::LifecycleSettings,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_timeout: Duration,
    /// `IP:PORT` of the web console, if it is served.
    pub console: Option<String>,
    /// The console's certificate chain and key (PEM files): HTTPS instead of HTTP.
    pub console_tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// When the console's address cannot be bound: fail start-up (an explicit `[console]`), or
    /// go on without a console (`ferry serve`'s default address, which another process may hold).
    pub console_required: bool,
}

impl ServerOptions {
    /// Options for `regions` with `users`, no other peers, default settings.
    #[must_use]
    pub fn new(regions: Vec<RegionConfig>, users: Vec<ferry_s3::User>) -> Self {
        Self {
            regions,
            users,
            peers: Vec::new(),
            buckets: Vec::new(),
            replication: ReplicationSettings::default(),
            lifecycle: ferry_core::config::LifecycleSettings::default(),
            shutdown_timeout: Duration::from_secs(30),
            console: None,
            console_tls: None,
            console_required: true,
        }
    }
}

/// A region being served.
pub struct RegionHandle {
    /// Region name.
    pub name: String,
    /// The address the listener is bound to (with the real port when 0 was asked).
    pub addr: SocketAddr,
    /// `http://ADDR` or `https://ADDR`.
    pub url: String,
    /// The region's storage.
    pub store: Arc<Store>,
    /// The region's background workers (replication, garbage collection).
    pub runner: Arc<BackgroundRunner>,
    /// The region's metrics.
    pub metrics: Arc<ferry_core::metrics::RegionMetrics>,
    /// The admin listener's address, if one is configured.
    pub admin_addr: Option<SocketAddr>,
    task: JoinHandle<()>,
}

/// All regions of this process.
pub struct Server {
    regions: Vec<RegionHandle>,
    stop: CancellationToken,
    /// The console's address, whether it is served over TLS, and its task, if it is served.
    console: Option<(SocketAddr, bool, JoinHandle<()>)>,
}

/// A region after phase 1: store open, listeners bound.
struct Opened {
    cfg: RegionConfig,
    store: Arc<Store>,
    listener: TcpListener,
    addr: SocketAddr,
    url: String,
    admin: Option<TcpListener>,
}

impl Server {
    /// Opens and starts every region.
    ///
    /// # Errors
    /// A one-line description of the first region that cannot start.
    pub async fn start(opts: ServerOptions) -> anyhow::Result<Self> {
        let mut opened = Vec::new();
        for cfg in &opts.regions {
            opened.push(open_region(cfg).await.with_context(|| format!("region `{}`", cfg.name))?);
        }
        let internal = internal_replicator();
        let specs = peer_specs(&opts, &opened, &internal)?;
        let stop = CancellationToken::new();
        let users = Arc::new(Users::new(opts.users.iter().cloned().chain([internal])));
        let console_listener = match &opts.console {
            Some(l) => {
                let addr: SocketAddr =
                    l.parse().with_context(|| format!("[console] key `listen`: `{l}` is not an IP:PORT address"))?;
                match TcpListener::bind(addr).await {
                    Ok(listener) => Some(listener),
                    Err(e) if !opts.console_required => {
                        tracing::warn!(%addr, error = %e, "console: cannot listen on its default address; serving without a console");
                        None
                    }
                    Err(e) => return Err(e).with_context(|| format!("[console] key `listen`: cannot listen on {addr}")),
                }
            }
            None => None,
        };
        let mut regions = Vec::new();
        for o in opened {
            let name = o.cfg.name.clone();
            let peers =
                Arc::new(PeerSet::new(&name, &specs).map_err(anyhow::Error::msg).with_context(|| format!("region `{name}`"))?);
            bootstrap_buckets(&o.store, &name, &opts).await.with_context(|| format!("region `{name}`: [[bucket]]"))?;
            regions.push(serve_region(o, users.clone(), peers, &opts, stop.clone()));
        }
        let console = match console_listener {
            Some(listener) => {
                let addr = listener.local_addr()?;
                // The console reaches each region's S3 API as the signed-in user, over the same
                // URL and trust the regions use for each other.
                let shown = regions
                    .iter()
                    .filter_map(|r| {
                        let s3 = specs.iter().find(|s| s.name == r.name && s.kind == PeerKind::Ferry)?.settings.clone();
                        Some(crate::console::ConsoleRegion {
                            name: r.name.clone(),
                            store: r.store.clone(),
                            s3,
                            metrics: r.metrics.clone(),
                        })
                    })
                    .collect();
                let peers = specs
                    .iter()
                    .map(|s| crate::console::ConsolePeer {
                        name: s.name.clone(),
                        ferry: s.kind == PeerKind::Ferry,
                        s3: s.settings.clone(),
                    })
                    .collect();
                let tls = match &opts.console_tls {
                    Some((cert, key)) => Some(crate::tls::acceptor(cert, key).context("[console] keys `tls_cert`, `tls_key`")?),
                    None => None,
                };
                let console =
                    Arc::new(crate::console::Console::new(shown, peers, users.clone(), stop.clone()).with_tls(tls.is_some()));
                Some((addr, tls.is_some(), tokio::spawn(console.serve(listener, tls))))
            }
            None => None,
        };
        Ok(Self { regions, stop, console })
    }

    /// The console's address, when it is served.
    #[must_use]
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console.as_ref().map(|(a, _, _)| *a)
    }

    /// The console's URL (`https://` when it is served over TLS), when it is served.
    #[must_use]
    pub fn console_url(&self) -> Option<String> {
        self.console.as_ref().map(|(a, tls, _)| format!("{}://{a}/", if *tls { "https" } else { "http" }))
    }

    /// The running regions.
    #[must_use]
    pub fn regions(&self) -> &[RegionHandle] {
        &self.regions
    }

    /// The address of region `name`.
    #[must_use]
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.regions.iter().find(|r| r.name == name).map(|r| r.addr)
    }

    /// A region by name.
    #[must_use]
    pub fn region(&self, name: &str) -> Option<&RegionHandle> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// A token that stops the server when cancelled.
    #[must_use]
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Waits until the server has stopped (after the stop token is cancelled).
    pub async fn wait(self) {
        if let Some((_, _, task)) = self.console
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "console task failed");
        }
        for r in self.regions {
            if let Err(e) = r.task.await {
                tracing::error!(region = %r.name, error = %e, "region task failed");
            }
        }
    }

    /// Stops every region and waits for it.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.wait().await;
    }
}

async fn open_region(cfg: &RegionConfig) -> anyhow::Result<Opened> {
    let addr = cfg.listen_addr()?;
    if let (Some(c), Some(k)) = (&cfg.tls_cert, &cfg.tls_key) {
        crate::tls::acceptor(c, k)?;
    }
    let data_dir = cfg.data_dir.clone();
    let threshold = cfg.inline_threshold;
    let pg = match &cfg.meta {
        Some(url) => {
            let options = ferry_store::meta::pg::PgOptions {
                node_id: cfg.node_id.clone().unwrap_or_else(|| format!("{}@{}", cfg.name, cfg.listen)),
                writers: 16,
                readers: 16,
                allow_unsafe: cfg.meta_allow_unsafe,
                staging_dir: Some(data_dir.join("staging")),
                blob_intents: cfg.blobs.is_some(),
            };
            let pg = ferry_store::meta::pg::PgStore::open(url, &options)
                .await
                .with_context(|| format!("region `{}`: key `meta`: PostgreSQL at {}", cfg.name, redact_url(url)))?;
            Some(pg)
        }
        None => None,
    };
    let remote = match (&cfg.blobs, &pg) {
        (Some(b), Some(pg)) => Some(shared_blobs(&cfg.name, b, pg)?),
        _ => None,
    };
    let keys = keyring(cfg)?;
    let store = tokio::task::spawn_blocking(move || Store::open_with(&data_dir, threshold, pg, remote, keys)).await??;
    let listener = TcpListener::bind(addr).await.with_context(|| format!("key `listen`: cannot listen on {addr}"))?;
    let addr = listener.local_addr()?;
    let admin = match cfg.admin_addr()? {
        Some(a) => Some(TcpListener::bind(a).await.with_context(|| format!("key `admin_listen`: cannot listen on {a}"))?),
        None => None,
    };
    Ok(Opened { url: cfg.url_for(addr), cfg: cfg.clone(), store, listener, addr, admin })
}

/// The region's key-encryption keys (`[region.encryption]`, else `FERRY_MASTER_KEY` for the
/// master key). A key that cannot be read or parsed stops the start: serving without it would
/// refuse (or fail to read) every encrypted object.
fn keyring(cfg: &RegionConfig) -> anyhow::Result<ferry_store::sse::Keyring> {
    use ferry_store::sse::MasterKey;
    let e = &cfg.encryption;
    let read = |key: &str, p: &std::path::Path| -> anyhow::Result<MasterKey> {
        let text =
            zeroize::Zeroizing::new(std::fs::read_to_string(p).with_context(|| {
                format!("region `{}`: [region.encryption] key `{key}`: cannot read {}", cfg.name, p.display())
            })?);
        MasterKey::from_text(&text)
            .with_context(|| format!("region `{}`: [region.encryption] key `{key}`: {}", cfg.name, p.display()))
    };
    let master = match &e.master_key_file {
        Some(p) => Some(read("master_key_file", p)?),
        None => match std::env::var("FERRY_MASTER_KEY") {
            Ok(text) => {
                let text = zeroize::Zeroizing::new(text);
                Some(MasterKey::from_text(&text).context("environment variable FERRY_MASTER_KEY")?)
            }
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(_)) => anyhow::bail!("environment variable FERRY_MASTER_KEY is not text"),
        },
    };
    let mut keys = ferry_store::sse::Keyring { master, ..Default::default() };
    for p in &e.old_master_key_files {
        keys.old_masters.push(read("old_master_key_files", p)?);
    }
    if keys.master.is_none() && !keys.old_masters.is_empty() {
        // Old keys only open what they wrapped; new SSE-S3 writes are refused until a current
        // key is back. Said at start, so a lost setting does not go unnoticed.
        tracing::warn!(region = %cfg.name, "[region.encryption]: old_master_key_files without a current master key: SSE-S3 writes are refused");
    }
    for (id, p) in &e.kms_keys {
        keys.kms.insert(id.clone(), read(&format!("kms_keys.{id}"), p)?);
    }
    keys.default_kms.clone_from(&e.default_kms_key);
    Ok(keys)
}

/// The S3-compatible store a region's nodes share their blobs in (`[region.blobs]`), with the
/// SDK's own retries on (a blob upload or read is worth retrying; nothing above retries it).
fn shared_blobs(
    region: &str,
    b: &ferry_core::config::BlobsConfig,
    pg: &ferry_store::meta::pg::PgStore,
) -> anyhow::Result<ferry_store::blobs::Remote> {
    let ca_pem = match &b.ca_file {
        Some(p) => Some(
            read_ca(p)
                .with_context(|| format!("region `{region}`: [region.blobs] key `ca_file`: cannot read {}", p.display()))?,
        ),
        None => None,
    };
    let settings = ClientSettings {
        url: b.endpoint.clone(),
        access_key: b.access_key.clone(),
        secret_key: b.secret_key.clone(),
        region: b.region.clone(),
        ca_pem,
    };
    let conf = ferry_replication::client::config(&settings)?
        .timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(Duration::from_secs(60))
                .build(),
        )
        .build();
    Ok(ferry_store::blobs::Remote {
        s3: ferry_store::s3_blobs::S3Blobs::new(aws_sdk_s3::Client::from_conf(conf), &b.bucket, &b.prefix),
        meta: pg.meta().clone(),
        node: pg.node().clone(),
    })
}

/// A database URL without its password (for messages).
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// The replication credential the regions of this process write replicas into each other
/// with: random, never stored, accepted by these regions only.
fn internal_replicator() -> ferry_s3::User {
    use rand::Rng as _;
    let mut rng = rand::rng();
    let mut text = |n: usize| -> String {
        (0..n).map(|_| char::from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[rng.random_range(0..36)])).collect()
    };
    let (ak, sk) = (format!("FERRYREPL{}", text(11)), text(40));
    ferry_s3::User::new(&ak, &sk, Some("ferry-replication"), None).replicator()
}

/// The peers every region of this process knows: the regions themselves (written to with the
/// process's own replication credential) and the `[[peer]]` entries.
fn peer_specs(opts: &ServerOptions, opened: &[Opened], internal: &ferry_s3::User) -> anyhow::Result<Vec<PeerSpec>> {
    let mut specs = Vec::new();
    {
        let u = internal;
        for o in opened {
            let ca_pem = match &o.cfg.tls_ca {
                Some(p) => Some(
                    read_ca(p).with_context(|| format!("region `{}`: key `tls_ca`: cannot read {}", o.cfg.name, p.display()))?,
                ),
                None => None,
            };
            specs.push(PeerSpec {
                name: o.cfg.name.clone(),
                kind: PeerKind::Ferry,
                settings: ClientSettings {
                    url: o.url.clone(),
                    access_key: u.access_key.clone(),
                    secret_key: u.secret_key.clone(),
                    region: o.cfg.name.clone(),
                    ca_pem,
                },
                accounts: Vec::new(),
            });
        }
    }
    for p in &opts.peers {
        let ca_pem = match &p.ca_file {
            Some(f) => {
                Some(read_ca(f).with_context(|| format!("peer `{}`: key `ca_file`: cannot read {}", p.name, f.display()))?)
            }
            None => None,
        };
        if p.endpoint.starts_with("http://") && !is_loopback_url(&p.endpoint) {
            tracing::warn!(peer = %p.name, endpoint = %p.endpoint, "replication to this peer is not encrypted (plain http outside loopback)");
        }
        specs.push(PeerSpec {
            name: p.name.clone(),
            kind: p.kind,
            settings: ClientSettings {
                url: p.endpoint.clone(),
                access_key: p.access_key.clone(),
                secret_key: p.secret_key.clone(),
                region: p.signing_region(),
                ca_pem,
            },
            accounts: p.accounts.iter().map(|a| account_id(&opts.users, a)).collect(),
        });
    }
    Ok(specs)
}

/// The user id an `accounts` entry names: a configured account's access key, or a user id.
fn account_id(users: &[ferry_s3::User], entry: &str) -> String {
    users.iter().find(|u| !u.replication && u.access_key == entry).map_or_else(|| entry.to_owned(), |u| u.owner.id.clone())
}

fn is_loopback_url(url: &str) -> bool {
    let host = url.split("://").nth(1).unwrap_or("").split('/').next().unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h).trim_matches(['[', ']']);
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Creates the `[[bucket]]` sections of this region that do not exist yet, with their
/// versioning and replication rules (destinations are other `[[bucket]]`s or peers).
async fn bootstrap_buckets(store: &Arc<Store>, region: &str, opts: &ServerOptions) -> anyhow::Result<()> {
    use ferry_store::model::{Acl, BucketRecord, Versioning};
    use ferry_store::replication::{DestinationArn, ReplicationConfig, Rule, RuleDestination, RuleFilter};
    for b in opts.buckets.iter().filter(|b| b.region == region) {
        let mut accounts = opts.users.iter().filter(|u| !u.replication);
        let owner_user = match &b.owner {
            Some(k) => accounts.find(|u| &u.access_key == k),
            None => accounts.next(),
        };
        let Some(owner) = owner_user.map(|u| u.owner.clone()) else {
            anyhow::bail!("bucket `{}`: no credential to own it", b.name)
        };
        let mut rules = Vec::new();
        for (i, arn) in b.replicate_to.iter().enumerate() {
            let DestinationArn { region: pinned, bucket: dest } =
                DestinationArn::parse(arn).map_err(|why| anyhow::anyhow!("bucket `{}`: key `replicate_to`: {why}", b.name))?;
            let peer = if let Some(pinned) = pinned {
                pinned
            } else {
                let holders: Vec<_> = opts.buckets.iter().filter(|o| o.name == dest).collect();
                match holders.as_slice() {
                    [one] => one.region.clone(),
                    _ => anyhow::bail!(
                        "bucket `{}`: key `replicate_to`: pin the region of `{dest}` (arn:aws:s3:REGION::{dest})",
                        b.name
                    ),
                }
            };
            rules.push(Rule {
                id: format!("{}-to-{}", b.name, dest),
                priority: i32::try_from(i).unwrap_or(0),
                enabled: true,
                v2: true,
                filter: RuleFilter::default(),
                delete_markers: true,
                deletes: false,
                existing_objects: false,
                replica_modifications: false,
                destination: RuleDestination {
                    peer,
                    bucket: dest,
                    storage_class: None,
                    account: None,
                    owner_override: false,
                    rpo_minutes: None,
                    metrics: true,
                },
            });
        }
        let versioning = match b.versioning.as_deref() {
            Some("Enabled") => Versioning::Enabled,
            Some("Suspended") => Versioning::Suspended,
            _ => Versioning::Unversioned,
        };
        if !rules.is_empty() && versioning != Versioning::Enabled {
            anyhow::bail!("bucket `{}`: replication needs versioning = \"Enabled\"", b.name);
        }
        let replication =
            if rules.is_empty() { None } else { Some(ReplicationConfig { role: String::new(), rules }.to_stored()?) };
        let name = b.name.clone();
        let created = store
            .meta
            .write(move |tx| {
                let now = tx.now();
                tx.insert_bucket(&BucketRecord {
                    name,
                    created_us: now,
                    acl: Acl::private(&owner),
                    owner,
                    versioning,
                    tagging: None,
                    replication,
                    replica_sources: Vec::new(),
                    config: Default::default(),
                })
            })
            .await?;
        if created {
            tracing::info!(bucket = %b.name, %region, "created bucket from the configuration");
        }
    }
    Ok(())
}

fn serve_region(
    o: Opened,
    users: Arc<Users>,
    peers: Arc<PeerSet>,
    opts: &ServerOptions,
    stop: CancellationToken,
) -> RegionHandle {
    let Opened { cfg, store, listener, addr, url, admin } = o;
    let metrics = Arc::new(ferry_core::metrics::RegionMetrics::new(&cfg.name));
    let lifecycle = ferry_store::lifecycle::Settings {
        interval: opts.lifecycle.interval,
        batch: opts.lifecycle.batch,
        day_us: i64::try_from(opts.lifecycle.day.as_micros()).unwrap_or(ferry_store::lifecycle::DAY_US).max(1),
    };
    let endpoint = EndpointConfig {
        region: cfg.name.clone(),
        domains: cfg.domains.clone(),
        max_clock_skew: opts.replication.max_clock_skew,
        lifecycle_day_us: lifecycle.day_us,
        sse_c_over_http: cfg.encryption.sse_c_over_http,
    };
    let engine: Arc<dyn ferry_store::replication::ReplicationEngine> =
        Arc::new(ferry_replication::Engine::new(store.clone(), peers.clone()));
    let service = ferry_s3::service(store.clone(), users, &endpoint, Some(engine), metrics.clone());
    let runner = BackgroundRunner::new(stop.child_token());
    runner.spawn(GcWorker::new(store.clone(), opts.replication.abandoned_upload_after));
    runner.spawn(ferry_store::lifecycle::LifecycleWorker::new(store.clone(), lifecycle, metrics.clone()));
    if let ferry_store::Meta::Pg(pg) = &store.meta {
        runner.spawn(ferry_store::meta::pg::heartbeat::Heartbeat::new(
            pg.meta().clone(),
            pg.node().clone(),
            pg.clock().clone(),
            Duration::from_millis(cfg.heartbeat_ms.max(10)),
            Duration::from_millis(cfg.dead_after_ms.max(100)),
        ));
    }
    ferry_replication::start(&runner, store.clone(), peers, &opts.replication, metrics.clone());
    let admin_addr = admin.as_ref().and_then(|a| a.local_addr().ok());
    if let Some(admin) = admin {
        tokio::spawn(crate::metrics_listener::serve(admin, metrics.clone(), stop.clone()));
    }
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        // Checked in open_region; a failure here would be a file changed in between.
        (Some(c), Some(k)) => crate::tls::acceptor(c, k).map_err(|e| tracing::error!(error = %e, "TLS disabled")).ok(),
        _ => None,
    };
    let name = cfg.name.clone();
    tracing::info!(region = %name, %url, data_dir = %cfg.data_dir.display(), "region serving S3");
    let (task_store, task_runner, grace) = (store.clone(), runner.clone(), opts.shutdown_timeout);
    let task = tokio::spawn(async move {
        let secure = tls.is_some();
        if !crate::listen::serve(listener, tls, stop, grace, |peer| service.for_client(peer, secure)).await {
            tracing::warn!(region = %name, "in-flight requests did not finish before the shutdown deadline");
        }
        task_runner.shutdown(Duration::from_secs(10)).await;
        let s = task_store.clone();
        let _ = tokio::task::spawn_blocking(move || s.shutdown()).await;
        tracing::info!(region = %name, "region stopped");
    });
    RegionHandle { name: cfg.name.clone(), addr, url, store, runner, metrics, admin_addr, task }
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_urls() {
        assert!(super::is_loopback_url("http://127.0.0.1:9000"));
        assert!(super::is_loopback_url("http://localhost:9000/x"));
        assert!(super::is_loopback_url("http://[::1]:9000"));
        assert!(!super::is_loopback_url("http://10.0.0.1:9000"));
        assert!(!super::is_loopback_url("http://s3.example.com"));
    }
}
