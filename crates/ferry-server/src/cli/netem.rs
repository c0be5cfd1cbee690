//! `ferry netem`: runs a [`ferry_netem::Netem`] link from the command line, with an optional
//! HTTP control listener to change it while traffic flows:
//!
//! ```text
//! GET  /                                  {"spec": ..., "partition": "none", "stats": ...}
//! POST /partition?mode=reset|blackhole|503|none
//! POST /stall?for=2s
//! POST /link?delay=25ms&jitter=2ms&rate=100MiB|none
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use ferry_netem::{LinkSpec, Netem, Partition};
use serde_json::{Value, json};

/// `ferry netem` arguments.
#[derive(clap::Args, Debug)]
pub struct NetemArgs {
    /// Address to accept connections on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "IP:PORT")]
    pub listen: SocketAddr,
    /// Where every connection is forwarded (e.g. the destination region's S3 listener).
    #[arg(long, value_name = "IP:PORT")]
    pub upstream: SocketAddr,
    /// One-way delay added in each direction (the round trip grows by twice this).
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub delay: Duration,
    /// Random extra delay per chunk, uniform in [-jitter, +jitter] (bytes stay in order).
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub jitter: Duration,
    /// Bandwidth cap per direction, shared by all connections (100MiB, 1GiB, 500k...).
    #[arg(long, value_parser = ferry_netem::parse_rate)]
    pub rate: Option<u64>,
    /// Bytes in flight inside the link per connection and direction (like a TCP window).
    #[arg(long, default_value_t = 6 << 20)]
    pub window: usize,
    /// Address of the HTTP control listener (off unless set).
    #[arg(long, value_name = "IP:PORT")]
    pub control: Option<SocketAddr>,
}

fn describe(n: &Netem) -> Value {
    let s = n.spec();
    json!({
        "listen": n.addr().to_string(),
        "spec": {
            "delay_ms": s.delay.as_secs_f64() * 1e3,
            "jitter_ms": s.jitter.as_secs_f64() * 1e3,
            "rate_bytes_per_sec": s.rate,
            "window": s.window,
        },
        "partition": match n.partition() {
            Partition::None => "none",
            Partition::Reset => "reset",
            Partition::Blackhole => "blackhole",
            Partition::ServiceUnavailable => "503",
        },
        "stats": n.stats(),
    })
}

type Answer = (StatusCode, String);

fn bad(msg: impl Into<String>) -> Answer {
    (StatusCode::BAD_REQUEST, format!("{}\n", msg.into()))
}

fn ok(n: &Netem) -> Answer {
    (StatusCode::OK, format!("{}\n", describe(n)))
}

async fn show(State(n): State<Arc<Netem>>) -> Answer {
    ok(&n)
}

async fn partition(State(n): State<Arc<Netem>>, Query(q): Query<std::collections::HashMap<String, String>>) -> Answer {
    let p = match q.get("mode").map(String::as_str) {
        Some("reset") => Partition::Reset,
        Some("blackhole") => Partition::Blackhole,
        Some("503") => Partition::ServiceUnavailable,
        Some("none") => Partition::None,
        _ => return bad("mode= must be reset, blackhole, 503 or none"),
    };
    n.set_partition(p);
    ok(&n)
}

async fn stall(State(n): State<Arc<Netem>>, Query(q): Query<std::collections::HashMap<String, String>>) -> Answer {
    match q.get("for").map(|v| humantime::parse_duration(v)) {
        Some(Ok(d)) => {
            n.stall(d);
            ok(&n)
        }
        _ => bad("for= must be a duration (500ms, 2s)"),
    }
}

async fn link(State(n): State<Arc<Netem>>, Query(q): Query<std::collections::HashMap<String, String>>) -> Answer {
    let mut spec = n.spec();
    for (k, v) in &q {
        match k.as_str() {
            "delay" | "jitter" => match humantime::parse_duration(v) {
                Ok(d) if k == "delay" => spec.delay = d,
                Ok(d) => spec.jitter = d,
                Err(e) => return bad(format!("{k}: {e}")),
            },
            "rate" if v == "none" => spec.rate = None,
            "rate" => match ferry_netem::parse_rate(v) {
                Ok(r) => spec.rate = Some(r),
                Err(e) => return bad(e),
            },
            other => return bad(format!("unknown parameter `{other}` (delay, jitter, rate)")),
        }
    }
    n.set_spec(spec);
    ok(&n)
}

/// Runs the link until SIGINT/SIGTERM.
///
/// # Errors
/// When a listener cannot be bound.
pub async fn run(a: NetemArgs, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let spec = LinkSpec { delay: a.delay, jitter: a.jitter, rate: a.rate, window: a.window };
    let n = Arc::new(Netem::start(a.listen, a.upstream, spec).await?);
    eprintln!("ferry netem: {} -> {} {}", n.addr(), a.upstream, describe(&n)["spec"]);
    if let Some(addr) = a.control {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        eprintln!("ferry netem: control on http://{}", listener.local_addr()?);
        let app = Router::new()
            .route("/", get(show))
            .route("/partition", post(partition))
            .route("/stall", post(stall))
            .route("/link", post(link))
            .with_state(n.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "netem control listener failed");
            }
        });
    }
    stop.await;
    eprintln!("ferry netem: stopping {}", describe(&n)["stats"]);
    Ok(())
}
