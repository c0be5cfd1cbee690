//! `ferry bench`: S3 load against any endpoint, with latency percentiles.
//!
//! Modes: `put` writes objects of `--size` bytes; `get` first writes `--objects` objects, then
//! reads them at random. `--concurrency` requests are kept in flight; the run lasts `--duration`
//! (or `--count` requests). Reports ops/s, MiB/s and latency p50/p90/p99/max, as text or JSON.
//!
//! `replication` writes `--count` objects to the source at `--rate` PUT/s and measures, for each,
//! the time from the PUT's response at the source to the first successful HEAD of the same
//! version at the destination (polled every 2 ms): replication lag p50/p90/p99/max, and the
//! catch-up time from the last PUT's response until every object was seen.
//!
//! `backfill` writes `--objects` objects of `--size` bytes to a fresh source bucket with no
//! rule, then puts a rule with `ExistingObjectReplication` to the destination and measures the
//! historical migration that starts: from the backfill's creation to its end (every version
//! delivered), as the source region records them. Reports versions/s and MiB/s.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use aws_sdk_s3::primitives::ByteStream;
use hdrhistogram::Histogram;
use rand::Rng as _;
use serde::Serialize;

use crate::client::{Endpoint, s3_client};

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// PUT new objects.
    Put,
    /// GET existing objects (written first).
    Get,
    /// Replication lag from a source to a destination endpoint.
    Replication,
    /// Historical migration (backfill) throughput from a source to a destination endpoint.
    Backfill,
}

/// Bench options.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub endpoint: Endpoint,
    pub bucket: String,
    pub mode: Mode,
    pub size: u64,
    pub concurrency: usize,
    pub duration: Duration,
    pub count: Option<u64>,
    pub objects: u64,
    /// Replication mode: the destination, its bucket, and the PUT rate.
    pub dest: Option<(Endpoint, String)>,
    pub rate: f64,
    /// Replication mode: create versioned buckets and the replication rule first.
    pub setup: bool,
}

/// Results of a run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub mode: Mode,
    pub size_bytes: u64,
    pub concurrency: usize,
    pub ops: u64,
    pub errors: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub mib_per_sec: f64,
    pub latency_ms: Latency,
    /// Replication mode only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationLag>,
    /// Backfill mode only: the load phase (PUT latency above is of that phase).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backfill: Option<BackfillRun>,
}

/// Backfill results, as recorded by the source region.
#[derive(Debug, Clone, Serialize)]
pub struct BackfillRun {
    pub versions: u64,
    pub bytes: u64,
    /// Seconds to write the objects first.
    pub load_seconds: f64,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000, 3).context("histogram")
}

/// Runs the benchmark.
///
/// # Errors
/// When the bucket cannot be created or prepared.
pub async fn run(opts: BenchOptions) -> anyhow::Result<BenchReport> {
    let client = s3_client(&opts.endpoint);
    if opts.mode == Mode::Replication {
        return replication(&client, &opts).await;
    }
    if opts.mode == Mode::Backfill {
        return backfill(&client, &opts).await;
    }
    match client.create_bucket().bucket(&opts.bucket).send().await {
        Ok(_) => {}
        Err(e) => {
            let code = aws_sdk_s3::error::ProvideErrorMetadata::code(&e).unwrap_or_default().to_owned();
            if code != "BucketAlreadyOwnedByYou" && code != "BucketAlreadyExists" {
                return Err(anyhow::anyhow!("cannot create bucket {}: {e:?}", opts.bucket));
            }
        }
    }
    let body = bytes::Bytes::from((0..opts.size).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    if opts.mode == Mode::Get {
        let pre = Options { count: Some(opts.objects), duration: Duration::from_secs(3600), ..Options::from(&opts) };
        drive(&client, &pre, Mode::Put, body.clone()).await?;
    }
    let o = Options::from(&opts);
    drive(&client, &o, opts.mode, body).await
}

#[derive(Clone)]
struct Options {
    bucket: String,
    size: u64,
    concurrency: usize,
    duration: Duration,
    count: Option<u64>,
    objects: u64,
}

impl From<&BenchOptions> for Options {
    fn from(o: &BenchOptions) -> Self {
        Self {
            bucket: o.bucket.clone(),
            size: o.size,
            concurrency: o.concurrency,
            duration: o.duration,
            count: o.count,
            objects: o.objects,
        }
    }
}

async fn drive(client: &aws_sdk_s3::Client, o: &Options, mode: Mode, body: bytes::Bytes) -> anyhow::Result<BenchReport> {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + o.duration;
    let mut tasks = Vec::new();
    for _ in 0..o.concurrency.max(1) {
        let (client, o, body, next) = (client.clone(), o.clone(), body.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram()?;
            let mut errors = 0u64;
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if o.count.is_some_and(|c| n >= c) || Instant::now() >= deadline {
                    break;
                }
                let t = Instant::now();
                let ok = match mode {
                    Mode::Put => {
                        let key = format!("bench/{n}");
                        client.put_object().bucket(&o.bucket).key(key).body(ByteStream::from(body.clone())).send().await.is_ok()
                    }
                    Mode::Get => {
                        let key = format!("bench/{}", rand::rng().random_range(0..o.objects.max(1)));
                        match client.get_object().bucket(&o.bucket).key(key).send().await {
                            Ok(out) => out.body.collect().await.is_ok(),
                            Err(_) => false,
                        }
                    }
                    // Handled by `replication` and `backfill`, never driven here.
                    Mode::Replication | Mode::Backfill => false,
                };
                if ok {
                    hist.saturating_record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                } else {
                    errors += 1;
                }
            }
            anyhow::Ok((hist, errors))
        }));
    }
    let mut hist = histogram()?;
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await??;
        hist.add(h).context("merge histograms")?;
        errors += e;
    }
    let seconds = start.elapsed().as_secs_f64();
    let ops = hist.len();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(BenchReport {
        mode,
        size_bytes: o.size,
        concurrency: o.concurrency,
        ops,
        errors,
        seconds,
        ops_per_sec: ops as f64 / seconds,
        mib_per_sec: (ops * o.size) as f64 / seconds / (1024.0 * 1024.0),
        latency_ms: Latency { p50: ms(0.5), p90: ms(0.9), p99: ms(0.99), max: hist.max() as f64 / 1000.0 },
        replication: None,
        backfill: None,
    })
}

async fn ensure_bucket(client: &aws_sdk_s3::Client, bucket: &str, versioned: bool) -> anyhow::Result<()> {
    if let Err(e) = client.create_bucket().bucket(bucket).send().await {
        let code = aws_sdk_s3::error::ProvideErrorMetadata::code(&e).unwrap_or_default().to_owned();
        if code != "BucketAlreadyOwnedByYou" && code != "BucketAlreadyExists" {
            return Err(anyhow::anyhow!("cannot create bucket {bucket}: {e:?}"));
        }
    }
    if versioned {
        client
            .put_bucket_versioning()
            .bucket(bucket)
            .versioning_configuration(
                aws_sdk_s3::types::VersioningConfiguration::builder()
                    .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .with_context(|| format!("enabling versioning on {bucket}"))?;
    }
    Ok(())
}

async fn replication(src: &aws_sdk_s3::Client, opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    use aws_sdk_s3::types::*;
    let (dest_ep, dest_bucket) = opts.dest.clone().context("--mode replication needs --dest-endpoint")?;
    let dst = s3_client(&dest_ep);
    if opts.setup {
        ensure_bucket(src, &opts.bucket, true).await?;
        ensure_bucket(&dst, &dest_bucket, true).await?;
        let rule = ReplicationRule::builder()
            .id("bench")
            .priority(1)
            .status(ReplicationRuleStatus::Enabled)
            .filter(ReplicationRuleFilter::builder().prefix("").build())
            .delete_marker_replication(DeleteMarkerReplication::builder().status(DeleteMarkerReplicationStatus::Enabled).build())
            .destination(Destination::builder().bucket(format!("arn:aws:s3:::{dest_bucket}")).build()?)
            .build()?;
        src.put_bucket_replication()
            .bucket(&opts.bucket)
            .replication_configuration(ReplicationConfiguration::builder().role("bench").rules(rule).build()?)
            .send()
            .await
            .context("configuring replication")?;
    }
    let count = opts.count.unwrap_or(1000);
    let body = bytes::Bytes::from((0..opts.size).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let run_id = format!("{:x}", rand::random::<u32>());
    let interval = Duration::from_secs_f64(1.0 / opts.rate.max(0.001));
    let start = Instant::now();
    let mut watchers = tokio::task::JoinSet::new();
    let mut put_hist = histogram()?;
    let mut errors = 0u64;
    let mut last_ack = start;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<anyhow::Result<u64>>();
    for n in 0..count {
        tick.tick().await;
        let (src, dst, body, tx) = (src.clone(), dst.clone(), body.clone(), tx.clone());
        let (bucket, dest_bucket, key) = (opts.bucket.clone(), dest_bucket.clone(), format!("lag/{run_id}/{n:06}"));
        // Each PUT runs in its own task so a slow one does not hold back the rate.
        watchers.spawn(async move {
            let t0 = Instant::now();
            let out = match src.put_object().bucket(&bucket).key(&key).body(ByteStream::from(body)).send().await {
                Ok(o) => o,
                Err(e) => return Err(anyhow::anyhow!("PUT {key}: {e:?}")),
            };
            let acked = Instant::now();
            let _ = tx.send(Ok(u64::try_from((acked - t0).as_micros()).unwrap_or(u64::MAX)));
            let version = out.version_id().map(str::to_owned);
            loop {
                let head = dst.head_object().bucket(&dest_bucket).key(&key).set_version_id(version.clone()).send().await;
                if head.is_ok() {
                    return Ok((acked, Instant::now()));
                }
                if acked.elapsed() > Duration::from_secs(600) {
                    return Err(anyhow::anyhow!("{key} not replicated after 10 minutes"));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
    }
    drop(tx);
    while let Some(r) = rx.recv().await {
        match r {
            Ok(us) => put_hist.saturating_record(us),
            Err(_) => errors += 1,
        }
    }
    let mut lag = histogram()?;
    let mut last_seen = start;
    while let Some(r) = watchers.join_next().await {
        match r? {
            Ok((acked, seen)) => {
                lag.saturating_record(u64::try_from((seen - acked).as_micros()).unwrap_or(u64::MAX));
                last_ack = last_ack.max(acked);
                last_seen = last_seen.max(seen);
            }
            Err(e) => {
                tracing::warn!(error = %e, "replication bench object failed");
                errors += 1;
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(BenchReport {
        mode: Mode::Replication,
        size_bytes: opts.size,
        concurrency: 0,
        ops: lag.len(),
        errors,
        seconds,
        ops_per_sec: put_hist.len() as f64 / seconds,
        mib_per_sec: (lag.len() * opts.size) as f64 / seconds / (1024.0 * 1024.0),
        latency_ms: Latency {
            p50: ms(&put_hist, 0.5),
            p90: ms(&put_hist, 0.9),
            p99: ms(&put_hist, 0.99),
            max: put_hist.max() as f64 / 1000.0,
        },
        replication: Some(ReplicationLag {
            lag_ms: Latency { p50: ms(&lag, 0.5), p90: ms(&lag, 0.9), p99: ms(&lag, 0.99), max: lag.max() as f64 / 1000.0 },
            catch_up_ms: last_seen.saturating_duration_since(last_ack).as_secs_f64() * 1000.0,
            target_rate: opts.rate,
        }),
        backfill: None,
    })
}

async fn backfill(src: &aws_sdk_s3::Client, opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    use aws_sdk_s3::types::*;
    let (dest_ep, dest_bucket) = opts.dest.clone().context("--mode backfill needs --dest-endpoint")?;
    let dst = s3_client(&dest_ep);
    // A fresh source bucket: the backfill then covers exactly the objects written here.
    if src.head_bucket().bucket(&opts.bucket).send().await.is_ok() {
        anyhow::bail!("bucket {} exists: --mode backfill needs a new source bucket (use --bucket)", opts.bucket);
    }
    ensure_bucket(src, &opts.bucket, true).await?;
    ensure_bucket(&dst, &dest_bucket, true).await?;
    let body = bytes::Bytes::from((0..opts.size).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let load = Options { count: Some(opts.objects), duration: Duration::from_secs(24 * 3600), ..Options::from(opts) };
    eprintln!("writing {} objects of {} B...", opts.objects, opts.size);
    let loaded = drive(src, &load, Mode::Put, body).await?;
    if loaded.errors > 0 {
        anyhow::bail!("{} PUTs failed while loading", loaded.errors);
    }
    let rule = ReplicationRule::builder()
        .id("bench-backfill")
        .priority(1)
        .status(ReplicationRuleStatus::Enabled)
        .filter(ReplicationRuleFilter::builder().prefix("").build())
        .delete_marker_replication(DeleteMarkerReplication::builder().status(DeleteMarkerReplicationStatus::Enabled).build())
        .existing_object_replication(
            ExistingObjectReplication::builder().status(ExistingObjectReplicationStatus::Enabled).build()?,
        )
        .destination(Destination::builder().bucket(format!("arn:aws:s3:::{dest_bucket}")).build()?)
        .build()?;
    src.put_bucket_replication()
        .bucket(&opts.bucket)
        .replication_configuration(ReplicationConfiguration::builder().role("bench").rules(rule).build()?)
        .send()
        .await
        .context("configuring replication")?;
    let admin = crate::admin_client::AdminClient::new(opts.endpoint.clone(), None)?;
    let bar = indicatif::ProgressBar::new(opts.objects);
    bar.set_style(
        indicatif::ProgressStyle::with_template("backfill {bar:40} {pos}/{len} versions {per_sec} ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let b = loop {
        let resp = admin.request("GET", &format!("/{}?ferry-replication-status", opts.bucket), bytes::Bytes::new()).await?;
        anyhow::ensure!(
            resp.status.is_success(),
            "status: {} {}",
            resp.status,
            String::from_utf8_lossy(&resp.body)
        );
        let v: serde_json::Value = serde_json::from_slice(&resp.body).context("status JSON")?;
        if let Some(b) = v["backfills"].as_array().and_then(|a| a.first()) {
            bar.set_position(b["done_versions"].as_u64().unwrap_or(0));
            match b["state"].as_str() {
                Some("done") => break b.clone(),
                Some("cancelled") => anyhow::bail!("the backfill was cancelled"),
                _ => {}
            }
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(24 * 3600), "no end after a day");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    bar.finish_and_clear();
    let (versions, bytes) = (b["done_versions"].as_u64().unwrap_or(0), b["done_bytes"].as_u64().unwrap_or(0));
    let us = b["finished_us"].as_i64().unwrap_or(0) - b["created_us"].as_i64().unwrap_or(0);
    let seconds = (us as f64 / 1e6).max(1e-6);
    Ok(BenchReport {
        mode: Mode::Backfill,
        size_bytes: opts.size,
        concurrency: opts.concurrency,
        ops: versions,
        errors: b["failed_versions"].as_u64().unwrap_or(0),
        seconds,
        ops_per_sec: versions as f64 / seconds,
        mib_per_sec: bytes as f64 / seconds / (1024.0 * 1024.0),
        latency_ms: loaded.latency_ms,
        replication: None,
        backfill: Some(BackfillRun { versions, bytes, load_seconds: loaded.seconds }),
    })
}

/// Replication lag results.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicationLag {
    /// From the PUT's response at the source to the first successful read at the destination.
    pub lag_ms: Latency,
    /// From the last PUT's response to the moment every object had been seen.
    pub catch_up_ms: f64,
    /// Requested PUT rate.
    pub target_rate: f64,
}

/// Parses sizes like `4096`, `4KiB`, `4k`, `64MiB`, `1G`.
///
/// # Errors
/// On anything else.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size (examples: 4096, 4KiB, 64MiB)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}` (use KiB, MiB or GiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("`{s}` is too large"))
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:?} {} B x {} in flight: {} ops in {:.1} s, {} errors",
            self.mode, self.size_bytes, self.concurrency, self.ops, self.seconds, self.errors
        )?;
        writeln!(f, "  {:.0} ops/s, {:.1} MiB/s", self.ops_per_sec, self.mib_per_sec)?;
        write!(
            f,
            "  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            self.latency_ms.p50, self.latency_ms.p90, self.latency_ms.p99, self.latency_ms.max
        )?;
        if let Some(b) = &self.backfill {
            write!(
                f,
                "  (PUTs of the load phase)\n  backfill: {} versions, {:.1} MiB in {:.2} s after {:.1} s of loading",
                b.versions,
                b.bytes as f64 / (1024.0 * 1024.0),
                self.seconds,
                b.load_seconds
            )?;
        }
        if let Some(r) = &self.replication {
            write!(
                f,
                "\n  replication lag ms (PUT answered -> readable at destination): p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}\n  catch-up after the last PUT: {:.1} ms (target rate {} PUT/s)",
                r.lag_ms.p50, r.lag_ms.p90, r.lag_ms.p99, r.lag_ms.max, r.catch_up_ms, r.target_rate
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("4XB").is_err());
        assert!(parse_size("big").is_err());
    }
}
