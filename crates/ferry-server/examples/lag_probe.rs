//! A second instrument for replication lag, written apart from `ferry bench` so that each checks
//! the other (BENCHMARKS.md, "Replication lag at 500 PUT/s"). It shares no code with Ferry: the
//! SDK is configured here as any user would, and the delay proxy is not `ferry netem`.
//!
//! ```text
//! lag_probe put   --endpoint URL --dest-endpoint URL --bucket B --dest-bucket D --rate 500 --count 3000
//! lag_probe proxy --listen 127.0.0.1:P --upstream 127.0.0.1:Q --delay 25ms
//! ```
//!
//! - `put`: open-loop PUTs of `--size` bytes at `--rate` per second (a PUT is sent at its tick
//!   whether or not earlier ones have been answered), and one watcher that lists the destination
//!   from the oldest key not yet seen, every 2 ms. Lag of an object: its first listing at the
//!   destination minus its PUT's answer. Prints one JSON line: the rate achieved and the lag
//!   quantiles. Keys are `probe/RUN/NNNNNNNN`, RUN a random id, so runs never meet.
//! - `proxy`: a TCP proxy that holds every chunk it reads for `--delay` before writing it on,
//!   in order, each direction on its own; no rate cap, no buffer cap.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use aws_credential_types::Credentials;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Region};
use aws_sdk_s3::primitives::ByteStream;
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::time::Instant;

#[derive(Parser)]
#[command(about = "Replication lag, measured independently of `ferry bench`")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open-loop PUTs at a fixed rate, one LIST watcher at the destination.
    Put {
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        dest_endpoint: String,
        #[arg(long)]
        bucket: String,
        #[arg(long)]
        dest_bucket: String,
        #[arg(long, default_value_t = 500)]
        rate: u32,
        #[arg(long, default_value_t = 3000)]
        count: usize,
        #[arg(long, default_value_t = 4096)]
        size: usize,
        #[arg(long, default_value = "us-east-1")]
        region: String,
        #[arg(long, default_value = "eu-west-1")]
        dest_region: String,
        /// Only the PUTs, no watcher (to measure what replication costs the regions alone).
        #[arg(long)]
        no_watch: bool,
    },
    /// A TCP proxy delaying every chunk, each way.
    Proxy {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        upstream: String,
        #[arg(long, value_parser = humantime::parse_duration)]
        delay: Duration,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Put { endpoint, dest_endpoint, bucket, dest_bucket, rate, count, size, region, dest_region, no_watch } => {
            let src = client(&endpoint, &region)?;
            let dst = (!no_watch).then(|| client(&dest_endpoint, &dest_region)).transpose()?;
            probe(src, dst, bucket, dest_bucket, Load { rate, count, size }).await
        }
        Command::Proxy { listen, upstream, delay } => proxy(&listen, &upstream, delay).await,
    }
}

/// A client as a user configures one: keys from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
/// path-style addressing, the SDK's default HTTP client settings.
fn client(endpoint: &str, region: &str) -> anyhow::Result<Client> {
    let ak = std::env::var("AWS_ACCESS_KEY_ID").context("AWS_ACCESS_KEY_ID")?;
    let sk = std::env::var("AWS_SECRET_ACCESS_KEY").context("AWS_SECRET_ACCESS_KEY")?;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(region.to_owned()))
        .credentials_provider(Credentials::new(ak, sk, None, None, "lag_probe"))
        .force_path_style(true)
        .http_client(http)
        .build();
    Ok(Client::from_conf(conf))
}

/// When each object was acknowledged and when it was first listed at the destination.
#[derive(Default, Clone, Copy)]
struct Times {
    acked: Option<Instant>,
    seen: Option<Instant>,
}

/// What to write: `count` objects of `size` bytes at `rate` per second.
struct Load {
    rate: u32,
    count: usize,
    size: usize,
}

async fn probe(src: Client, dst: Option<Client>, bucket: String, dest_bucket: String, load: Load) -> anyhow::Result<()> {
    let Load { rate, count, size } = load;
    if rate == 0 || count == 0 {
        bail!("--rate and --count must be above 0");
    }
    let run = format!("{:08x}", rand::random::<u32>());
    let prefix = format!("probe/{run}/");
    let key = {
        let prefix = prefix.clone();
        move |n: usize| format!("{prefix}{n:08}")
    };
    let times = Arc::new(Mutex::new(vec![Times::default(); count]));
    let body = bytes::Bytes::from(vec![b'p'; size]);

    // The watcher: lists from just before the oldest key not yet seen until all are seen.
    let watcher = dst.map(|dst| {
        let times = times.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let mut oldest = 0usize;
            let mut lists = 0u64;
            while oldest < count {
                let mut req = dst.list_objects_v2().bucket(&dest_bucket).prefix(&prefix);
                if oldest > 0 {
                    req = req.start_after(key(oldest - 1));
                }
                lists += 1;
                if let Ok(out) = req.send().await {
                    let now = Instant::now();
                    let mut t = times.lock().await;
                    for o in out.contents() {
                        let n = o.key().and_then(|k| k.strip_prefix(&prefix)).and_then(|n| n.parse::<usize>().ok());
                        if let Some(slot) = n.and_then(|n| t.get_mut(n)) {
                            slot.seen.get_or_insert(now);
                        }
                    }
                    while oldest < count && t[oldest].seen.is_some() {
                        oldest += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            lists
        })
    });

    // Open loop: one PUT per tick, each on its own task.
    let start = Instant::now();
    let period = Duration::from_secs(1) / rate;
    let mut puts = tokio::task::JoinSet::new();
    for n in 0..count {
        let due = start + period * u32::try_from(n).unwrap_or(u32::MAX);
        tokio::time::sleep_until(due).await;
        let (src, bucket, k, body, times) = (src.clone(), bucket.clone(), key(n), body.clone(), times.clone());
        puts.spawn(async move {
            let sent = src.put_object().bucket(bucket).key(k).body(ByteStream::from(body)).send().await;
            match sent {
                Ok(_) => {
                    times.lock().await[n].acked = Some(Instant::now());
                    true
                }
                Err(e) => {
                    eprintln!("PUT {n}: {e:?}");
                    false
                }
            }
        });
    }
    let mut failed = 0usize;
    while let Some(done) = puts.join_next().await {
        if !matches!(done, Ok(true)) {
            failed += 1;
        }
    }
    let put_seconds = start.elapsed().as_secs_f64();
    if failed > 0 {
        if let Some(w) = watcher {
            w.abort();
        }
        bail!("{failed} PUTs failed");
    }
    let lists = match watcher {
        Some(w) => tokio::time::timeout(Duration::from_secs(120), w).await.context("objects still missing after 120 s")??,
        None => 0,
    };
    let t = times.lock().await;
    let mut lags: Vec<f64> =
        t.iter().filter_map(|x| Some(x.seen?.saturating_duration_since(x.acked?).as_secs_f64() * 1000.0)).collect();
    lags.sort_by(f64::total_cmp);
    let q = |p: f64| {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let i = ((lags.len() as f64 - 1.0) * p).round() as usize;
        lags.get(i).copied().unwrap_or(f64::NAN)
    };
    #[allow(clippy::cast_precision_loss)]
    let achieved = count as f64 / put_seconds;
    println!(
        "{}",
        serde_json::json!({
            "client": "lag_probe",
            "count": count,
            "rate_asked": rate,
            "achieved_rate": achieved,
            "lists": lists,
            "lag_ms": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": q(1.0)},
        })
    );
    Ok(())
}

async fn proxy(listen: &str, upstream: &str, delay: Duration) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await.with_context(|| format!("listen on {listen}"))?;
    eprintln!("lag_probe proxy: {listen} -> {upstream}, {delay:?} each way");
    loop {
        let (inbound, _) = listener.accept().await?;
        let upstream = upstream.to_owned();
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(&upstream).await else { return };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            tokio::join!(delayed(ri, wo, delay), delayed(ro, wi, delay));
        });
    }
}

/// Copies `from` to `to`, each chunk written `delay` after it was read, in order.
async fn delayed(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 || tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
