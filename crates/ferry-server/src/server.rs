//! Region start-up, serving and shutdown.
//!
//! Start: for each region, open its store (lock, database, staging recovery), bind its listener,
//! start its background workers, then accept connections. Any failure aborts start-up with a
//! one-line error naming the region and the key or path.
//!
//! Shutdown (SIGTERM / SIGINT, or [`Server::shutdown`]): stop accepting, let in-flight requests
//! finish until the deadline, stop the background workers, then stop the metadata writer after
//! it has committed what it holds. Acknowledged writes are already durable; shutdown only
//! avoids cutting requests short.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ferry_core::background::BackgroundRunner;
use ferry_core::config::RegionConfig;
use ferry_s3::{EndpointConfig, Users};
use ferry_store::{GcWorker, Store};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What to serve.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The regions.
    pub regions: Vec<RegionConfig>,
    /// The accepted credentials.
    pub users: Vec<ferry_s3::User>,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_timeout: Duration,
}

/// A region being served.
pub struct RegionHandle {
    /// Region name.
    pub name: String,
    /// The address the listener is bound to (with the real port when 0 was asked).
    pub addr: SocketAddr,
    /// The region's storage.
    pub store: Arc<Store>,
    task: JoinHandle<()>,
}

/// All regions of this process.
pub struct Server {
    regions: Vec<RegionHandle>,
    stop: CancellationToken,
}

impl Server {
    /// Opens and starts every region.
    ///
    /// # Errors
    /// A one-line description of the first region that cannot start.
    pub async fn start(opts: ServerOptions) -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        let users = Arc::new(Users::new(opts.users.clone()));
        let mut regions = Vec::new();
        for cfg in &opts.regions {
            let region = start_region(cfg, users.clone(), stop.clone(), opts.shutdown_timeout)
                .await
                .with_context(|| format!("region `{}`", cfg.name));
            match region {
                Ok(r) => regions.push(r),
                Err(e) => {
                    // Release what already started (locks, listeners) before failing.
                    stop.cancel();
                    for r in regions {
                        let _ = r.task.await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(Self { regions, stop })
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

    /// A token that stops the server when cancelled.
    #[must_use]
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Waits until the server has stopped (after the stop token is cancelled).
    pub async fn wait(self) {
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

async fn start_region(
    cfg: &RegionConfig,
    users: Arc<Users>,
    stop: CancellationToken,
    grace: Duration,
) -> anyhow::Result<RegionHandle> {
    let addr = cfg.listen_addr()?;
    let data_dir = cfg.data_dir.clone();
    let threshold = cfg.inline_threshold;
    let store = tokio::task::spawn_blocking(move || Store::open(&data_dir, threshold)).await??;
    let listener = TcpListener::bind(addr).await.with_context(|| format!("key `listen`: cannot listen on {addr}"))?;
    let addr = listener.local_addr()?;
    let service = ferry_s3::service(
        store.clone(),
        users,
        &EndpointConfig { region: cfg.name.clone(), domains: cfg.domains.clone() },
    );
    let runner = BackgroundRunner::new(stop.child_token());
    runner.spawn(GcWorker::new(store.clone()));
    let name = cfg.name.clone();
    tracing::info!(region = %name, %addr, data_dir = %cfg.data_dir.display(), "region serving S3");
    let task_store = store.clone();
    let task = tokio::spawn(async move {
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = stop.cancelled() => break,
            };
            let _ = stream.set_nodelay(true);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service.clone()).into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
        drop(listener);
        if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
            tracing::warn!(region = %name, "in-flight requests did not finish before the shutdown deadline");
        }
        runner.shutdown(Duration::from_secs(10)).await;
        let s = task_store.clone();
        let _ = tokio::task::spawn_blocking(move || s.shutdown()).await;
        tracing::info!(region = %name, "region stopped");
    });
    Ok(RegionHandle { name: cfg.name.clone(), addr, store, task })
}
