//! `ferry bench`: S3 load against any endpoint, with latency percentiles.
//!
//! Data-path modes (like MinIO's warp): `put` writes new objects; `get`, `stat` (HEAD), `delete`
//! and `list` first write `--objects` objects, then read, HEAD, delete or list them; `mixed`
//! runs warp's mix on them (45% GET, 30% HEAD, 15% PUT, 10% DELETE of what it put).
//! `--size` is one size (`4KiB`) or a range (`4KiB-4MiB`: log-uniform, so every order of
//! magnitude is equally common). `--concurrency` requests are kept in flight; the run lasts
//! `--duration` (or `--count` requests). Reports ops/s, MiB/s, errors and latency
//! p50/p90/p99/max, overall and per operation, as text or JSON.
//!
//! `replication` writes `--count` objects to the source at `--rate` PUT/s (open loop) and
//! measures, for each, the time from the PUT's response at the source to the first listing of
//! the destination that shows it. One watcher lists from the oldest object not yet seen, one
//! request at a time, 2 ms apart, so the instrument's load on the destination does not grow
//! with the rate. Reports the PUT rate achieved next to the rate asked (`--strict`: a run that
//! achieves less than 95 % of it fails), replication lag p50/p90/p99/max, and the catch-up time
//! from the last PUT's response until every object was seen.
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

use crate::cli::client::{Endpoint, s3_client};
use ferry_store::replication::BackfillState;
use ferry_store::replication::progress::BucketProgress;

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// PUT new objects.
    Put,
    /// GET existing objects (written first).
    Get,
    /// HEAD existing objects (written first).
    Stat,
    /// DELETE existing objects (written first), each once.
    Delete,
    /// List the bucket (objects written first), 1,000 keys a page.
    List,
    /// 45% GET, 30% HEAD, 15% PUT, 10% DELETE.
    Mixed,
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
    pub size: Sizes,
    pub concurrency: usize,
    pub duration: Duration,
    pub count: Option<u64>,
    pub objects: u64,
    /// Replication mode: the destination, its bucket, and the PUT rate.
    pub dest: Option<(Endpoint, String)>,
    pub rate: f64,
    /// Replication mode: create versioned buckets and the replication rule first.
    pub setup: bool,
    /// PUTs ask for SSE-S3.
    pub sse_s3: bool,
}

/// Results of a run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub mode: Mode,
    pub size: Sizes,
    pub concurrency: usize,
    pub ops: u64,
    pub errors: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub mib_per_sec: f64,
    pub latency_ms: Latency,
    /// Per operation (mixed mode: each of its operations).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub by_op: Vec<OpReport>,
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

/// One operation's share of a run.
#[derive(Debug, Clone, Serialize)]
pub struct OpReport {
    pub op: &'static str,
    pub ops: u64,
    pub errors: u64,
    pub ops_per_sec: f64,
    pub latency_ms: Latency,
}

/// Object sizes: one size, or a log-uniform range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sizes {
    pub min: u64,
    pub max: u64,
}

impl Sizes {
    /// A size drawn from the range (log-uniform).
    fn pick(&self, rng: &mut impl rand::Rng) -> u64 {
        if self.min >= self.max {
            return self.max;
        }
        #[allow(clippy::cast_precision_loss)] // sizes are far below 2^52
        let (lo, hi) = ((self.min.max(1) as f64).ln(), (self.max as f64).ln());
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // within [min, max]
        let v = rng.random_range(lo..=hi).exp().round() as u64;
        v.clamp(self.min, self.max)
    }

    /// A body of every size up to the largest (sliced per request, never copied).
    fn buffer(&self) -> bytes::Bytes {
        bytes::Bytes::from((0..self.max).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
    }
}

impl std::fmt::Display for Sizes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max { write!(f, "{} B", self.max) } else { write!(f, "{}-{} B", self.min, self.max) }
    }
}

/// Parses `4KiB` or `4KiB-4MiB`.
///
/// # Errors
/// On anything else, or a range whose end is below its start.
pub fn parse_sizes(s: &str) -> Result<Sizes, String> {
    match s.split_once('-') {
        None => parse_size(s).map(|n| Sizes { min: n, max: n }),
        Some((a, b)) => {
            let (min, max) = (parse_size(a)?, parse_size(b)?);
            if min > max {
                return Err(format!("`{s}`: the range ends below its start"));
            }
            Ok(Sizes { min, max })
        }
    }
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
    let client = s3_client(&opts.endpoint)?;
    if opts.mode == Mode::Replication {
        return replication(&client, &opts).await;
    }
    if opts.mode == Mode::Backfill {
        return backfill(&client, &opts).await;
    }
    ensure_bucket(&client, &opts.bucket, false).await?;
    let body = opts.size.buffer();
    if opts.mode != Mode::Put {
        let pre = Options { count: Some(opts.objects), duration: Duration::from_secs(24 * 3600), ..Options::from(&opts) };
        let loaded = drive(&client, &pre, Mode::Put, body.clone()).await?;
        anyhow::ensure!(loaded.errors == 0, "{} PUTs failed while writing the objects to read", loaded.errors);
    }
    let mut o = Options::from(&opts);
    if opts.mode == Mode::Delete {
        // Each object is deleted once.
        o.count = Some(o.count.unwrap_or(opts.objects).min(opts.objects));
    }
    drive(&client, &o, opts.mode, body).await
}

#[derive(Clone)]
struct Options {
    bucket: String,
    size: Sizes,
    concurrency: usize,
    duration: Duration,
    count: Option<u64>,
    objects: u64,
    sse_s3: bool,
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
            sse_s3: o.sse_s3,
        }
    }
}

/// Operations of a data-path run, in the order of [`OpReport`]s.
const OPS: [&str; 5] = ["PUT", "GET", "HEAD", "DELETE", "LIST"];

/// Per-task tallies: a histogram, error count and bytes per operation.
struct Tally {
    hist: Vec<Histogram<u64>>,
    errors: [u64; 5],
    bytes: u64,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Self { hist: (0..OPS.len()).map(|_| histogram()).collect::<anyhow::Result<_>>()?, errors: [0; 5], bytes: 0 })
    }

    fn merge(&mut self, other: Self) -> anyhow::Result<()> {
        for (a, b) in self.hist.iter_mut().zip(other.hist) {
            a.add(b).context("merge histograms")?;
        }
        for (a, b) in self.errors.iter_mut().zip(other.errors) {
            *a += b;
        }
        self.bytes += other.bytes;
        Ok(())
    }
}

/// Keys the mixed mode put and has not deleted yet: (next to put, next to delete).
type MixedKeys = std::sync::Arc<std::sync::Mutex<(u64, u64)>>;

/// One request of `mode`; the operation's index in [`OPS`], success, and body bytes moved.
async fn one_op(
    client: &aws_sdk_s3::Client,
    o: &Options,
    mode: Mode,
    n: u64,
    body: &bytes::Bytes,
    mixed: &MixedKeys,
) -> (usize, bool, u64) {
    // ThreadRng is not Send: draw everything before the first await.
    let (existing, roll, size) = {
        let mut rng = rand::rng();
        (
            format!("bench/{}", rng.random_range(0..o.objects.max(1))),
            rng.random_range(0..100),
            o.size.pick(&mut rng),
        )
    };
    let op = match mode {
        Mode::Mixed => match roll {
            0..45 => 1,
            45..75 => 2,
            75..90 => 0,
            _ => 3,
        },
        Mode::Put => 0,
        Mode::Get => 1,
        Mode::Stat => 2,
        Mode::Delete => 3,
        Mode::List | Mode::Replication | Mode::Backfill => 4,
    };
    let bucket = o.bucket.as_str();
    match (op, mode) {
        (0, _) => {
            let key = if mode == Mode::Mixed {
                let mut m = ferry_core::sync::lock(mixed);
                m.0 += 1;
                format!("mixed/{}", m.0)
            } else {
                format!("bench/{n}")
            };
            let body = body.slice(0..usize::try_from(size).unwrap_or(usize::MAX).min(body.len()));
            let sse = o.sse_s3.then_some(aws_sdk_s3::types::ServerSideEncryption::Aes256);
            let put = client.put_object().bucket(bucket).key(key).set_server_side_encryption(sse);
            let ok = put.body(ByteStream::from(body)).send().await.is_ok();
            (0, ok, if ok { size } else { 0 })
        }
        (1, _) => match client.get_object().bucket(bucket).key(existing).send().await {
            Ok(out) => match out.body.collect().await {
                Ok(b) => (1, true, b.into_bytes().len() as u64),
                Err(_) => (1, false, 0),
            },
            Err(_) => (1, false, 0),
        },
        (2, _) => (2, client.head_object().bucket(bucket).key(existing).send().await.is_ok(), 0),
        (3, Mode::Mixed) => {
            // Deletes what the mix put, never the objects the reads need.
            let key = {
                let mut m = ferry_core::sync::lock(mixed);
                if m.1 >= m.0 {
                    None
                } else {
                    m.1 += 1;
                    Some(format!("mixed/{}", m.1))
                }
            };
            match key {
                Some(k) => (3, client.delete_object().bucket(bucket).key(k).send().await.is_ok(), 0),
                None => (2, client.head_object().bucket(bucket).key(existing).send().await.is_ok(), 0),
            }
        }
        (3, _) => (3, client.delete_object().bucket(bucket).key(format!("bench/{n}")).send().await.is_ok(), 0),
        _ => (
            4,
            client.list_objects_v2().bucket(bucket).prefix("bench/").max_keys(1000).send().await.is_ok(),
            0,
        ),
    }
}

async fn drive(client: &aws_sdk_s3::Client, o: &Options, mode: Mode, body: bytes::Bytes) -> anyhow::Result<BenchReport> {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mixed: MixedKeys = std::sync::Arc::default();
    let start = Instant::now();
    let deadline = start + o.duration;
    let mut tasks = Vec::new();
    for _ in 0..o.concurrency.max(1) {
        let (client, o, body, next, mixed) = (client.clone(), o.clone(), body.clone(), next.clone(), mixed.clone());
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::new()?;
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if o.count.is_some_and(|c| n >= c) || Instant::now() >= deadline {
                    break;
                }
                let started = Instant::now();
                let (op, ok, bytes) = one_op(&client, &o, mode, n, &body, &mixed).await;
                if ok {
                    t.hist[op].saturating_record(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
                    t.bytes += bytes;
                } else {
                    t.errors[op] += 1;
                }
            }
            anyhow::Ok(t)
        }));
    }
    let mut all = Tally::new()?;
    for t in tasks {
        all.merge(t.await??)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut total = histogram()?;
    let mut by_op = Vec::new();
    for (i, h) in all.hist.iter().enumerate() {
        if h.is_empty() && all.errors[i] == 0 {
            continue;
        }
        total.add(h).context("merge histograms")?;
        by_op.push(OpReport {
            op: OPS[i],
            ops: h.len(),
            errors: all.errors[i],
            ops_per_sec: as_f64(h.len()) / seconds,
            latency_ms: latency(h),
        });
    }
    let ops = total.len();
    Ok(BenchReport {
        mode,
        size: o.size,
        concurrency: o.concurrency,
        ops,
        errors: all.errors.iter().sum(),
        seconds,
        ops_per_sec: as_f64(ops) / seconds,
        mib_per_sec: as_f64(all.bytes) / seconds / (1024.0 * 1024.0),
        latency_ms: latency(&total),
        by_op,
        replication: None,
        backfill: None,
    })
}

fn latency(h: &Histogram<u64>) -> Latency {
    let ms = |q: f64| as_f64(h.value_at_quantile(q)) / 1000.0;
    Latency { p50: ms(0.5), p90: ms(0.9), p99: ms(0.99), max: as_f64(h.max()) / 1000.0 }
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

/// One rule replicating all of `bucket`, delete markers included, to `dest_bucket`; with
/// `existing`, also the objects already there (a backfill starts).
async fn put_rule(src: &aws_sdk_s3::Client, bucket: &str, dest_bucket: &str, existing: bool) -> anyhow::Result<()> {
    use aws_sdk_s3::types::*;
    let mut rule = ReplicationRule::builder()
        .id("bench")
        .priority(1)
        .status(ReplicationRuleStatus::Enabled)
        .filter(ReplicationRuleFilter::builder().prefix("").build())
        .delete_marker_replication(DeleteMarkerReplication::builder().status(DeleteMarkerReplicationStatus::Enabled).build())
        .destination(Destination::builder().bucket(format!("arn:aws:s3:::{dest_bucket}")).build()?);
    if existing {
        rule = rule.existing_object_replication(
            ExistingObjectReplication::builder().status(ExistingObjectReplicationStatus::Enabled).build()?,
        );
    }
    src.put_bucket_replication()
        .bucket(bucket)
        .replication_configuration(ReplicationConfiguration::builder().role("bench").rules(rule.build()?).build()?)
        .send()
        .await
        .context("configuring replication")?;
    Ok(())
}

/// One object of a replication run: when its PUT was answered (or that it failed), and when
/// the destination's listing first showed it.
#[derive(Clone, Copy, Default)]
struct Arrival {
    acked: Option<Instant>,
    failed: bool,
    seen: Option<Instant>,
}

type Arrivals = std::sync::Arc<std::sync::Mutex<Vec<Arrival>>>;

/// The key of object `n` of run `run_id` (zero-padded: listing order is PUT order).
fn lag_key(run_id: &str, n: u64) -> String {
    format!("lag/{run_id}/{n:08}")
}

async fn replication(src: &aws_sdk_s3::Client, opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    let (dest_ep, dest_bucket) = opts.dest.clone().context("--mode replication needs --dest-endpoint")?;
    let dst = s3_client(&dest_ep)?;
    if opts.setup {
        ensure_bucket(src, &opts.bucket, true).await?;
        ensure_bucket(&dst, &dest_bucket, true).await?;
        put_rule(src, &opts.bucket, &dest_bucket, false).await?;
    }
    let count = opts.count.unwrap_or(1000);
    let buffer = opts.size.buffer();
    let mut sent_bytes = 0u64;
    let run_id = format!("{:x}", rand::random::<u32>());
    let interval = Duration::from_secs_f64(1.0 / opts.rate.max(0.001));
    let arrivals: Arrivals = std::sync::Arc::new(std::sync::Mutex::new(vec![Arrival::default(); usize::try_from(count)?]));
    let mut watcher = tokio::spawn(watch(dst.clone(), dest_bucket.clone(), run_id.clone(), arrivals.clone()));
    let start = Instant::now();
    let mut puts = tokio::task::JoinSet::new();
    let mut put_hist = histogram()?;
    let mut errors = 0u64;
    // Open loop: PUT n is due at start + n x interval, whatever the answers. A late tick is
    // made up at once (Burst), so a slow client shows as PUTs issued late, which the report
    // gives as the achieved rate, instead of a schedule that quietly stretches.
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for n in 0..count {
        tick.tick().await;
        let size = opts.size.pick(&mut rand::rng());
        sent_bytes += size;
        let body = buffer.slice(0..usize::try_from(size).unwrap_or(usize::MAX).min(buffer.len()));
        let (src, bucket, key, arrivals) = (src.clone(), opts.bucket.clone(), lag_key(&run_id, n), arrivals.clone());
        // Each PUT runs in its own task so a slow one does not hold back the rate.
        puts.spawn(async move {
            let t0 = Instant::now();
            let out = src.put_object().bucket(&bucket).key(&key).body(ByteStream::from(body)).send().await;
            let acked = Instant::now();
            let i = usize::try_from(n).unwrap_or(usize::MAX);
            if let Some(a) = ferry_core::sync::lock(&arrivals).get_mut(i) {
                match &out {
                    Ok(_) => a.acked = Some(acked),
                    Err(_) => a.failed = true,
                }
            }
            out.map(|_| u64::try_from((acked - t0).as_micros()).unwrap_or(u64::MAX))
                .map_err(|e| anyhow::anyhow!("PUT {key}: {e:?}"))
        });
    }
    let issued = start.elapsed();
    while let Some(r) = puts.join_next().await {
        match r? {
            Ok(us) => put_hist.saturating_record(us),
            Err(e) => {
                tracing::warn!(error = %e, "replication bench PUT failed");
                errors += 1;
            }
        }
    }
    let put_phase = start.elapsed();
    // Objects not listed 10 minutes after the last PUT's answer count as errors.
    let list_requests = match tokio::time::timeout(Duration::from_secs(600), &mut watcher).await {
        Ok(lists) => lists?,
        Err(_) => {
            watcher.abort();
            tracing::warn!("objects not replicated 10 minutes after the last PUT");
            0
        }
    };
    let arrivals = ferry_core::sync::lock(&arrivals).clone();
    let mut lag = histogram()?;
    let (mut last_ack, mut last_seen) = (start, start);
    for a in &arrivals {
        match (a.acked, a.seen) {
            (Some(acked), Some(seen)) => {
                // The listing may show a replica before the client has read its PUT's answer.
                lag.saturating_record(u64::try_from(seen.saturating_duration_since(acked).as_micros()).unwrap_or(u64::MAX));
                last_ack = last_ack.max(acked);
                last_seen = last_seen.max(seen);
            }
            (Some(_), None) => errors += 1,
            _ => {}
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let ms = |h: &Histogram<u64>, q: f64| as_f64(h.value_at_quantile(q)) / 1000.0;
    let achieved_rate = as_f64(put_hist.len()) / put_phase.as_secs_f64().max(1e-9);
    Ok(BenchReport {
        mode: Mode::Replication,
        size: opts.size,
        concurrency: 0,
        ops: lag.len(),
        errors,
        seconds,
        ops_per_sec: as_f64(put_hist.len()) / seconds,
        mib_per_sec: as_f64(sent_bytes) / seconds / (1024.0 * 1024.0),
        latency_ms: latency(&put_hist),
        by_op: Vec::new(),
        replication: Some(ReplicationLag {
            lag_ms: Latency { p50: ms(&lag, 0.5), p90: ms(&lag, 0.9), p99: ms(&lag, 0.99), max: as_f64(lag.max()) / 1000.0 },
            catch_up_ms: last_seen.saturating_duration_since(last_ack).as_secs_f64() * 1000.0,
            target_rate: opts.rate,
            achieved_rate,
            issue_seconds: issued.as_secs_f64(),
            list_requests,
        }),
        backfill: None,
    })
}

/// The one watcher of a replication run: lists the destination from the oldest object not yet
/// seen, one request at a time with 2 ms between them, and stamps each object the first time a
/// listing shows it. Its load on the destination is one LIST at a time whatever the rate (a
/// HEAD per object in flight would grow with it). Returns the number of LISTs made once every
/// object whose PUT succeeded has been seen (the caller bounds how long it waits).
async fn watch(dst: aws_sdk_s3::Client, bucket: String, run_id: String, arrivals: Arrivals) -> u64 {
    let prefix = format!("lag/{run_id}/");
    let mut lists = 0u64;
    // Every object before `cursor` has been seen or failed.
    let mut cursor = 0usize;
    loop {
        {
            let a = ferry_core::sync::lock(&arrivals);
            while a.get(cursor).is_some_and(|x| x.seen.is_some() || x.failed) {
                cursor += 1;
            }
            if cursor >= a.len() {
                return lists;
            }
        }
        let start_after = cursor.checked_sub(1).map(|i| lag_key(&run_id, i as u64));
        let mut token: Option<String> = None;
        loop {
            let page = dst
                .list_objects_v2()
                .bucket(&bucket)
                .prefix(&prefix)
                .set_start_after(if token.is_none() { start_after.clone() } else { None })
                .set_continuation_token(token.clone())
                .send()
                .await;
            lists += 1;
            let now = Instant::now();
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(error = ?e, "watcher LIST failed");
                    break;
                }
            };
            {
                let mut a = ferry_core::sync::lock(&arrivals);
                for o in page.contents() {
                    let n = o.key().and_then(|k| k.strip_prefix(&prefix)).and_then(|k| k.parse::<usize>().ok());
                    if let Some(x) = n.and_then(|n| a.get_mut(n))
                        && x.seen.is_none()
                    {
                        x.seen = Some(now);
                    }
                }
            }
            token = page.next_continuation_token().map(str::to_owned).filter(|_| page.is_truncated() == Some(true));
            if token.is_none() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn backfill(src: &aws_sdk_s3::Client, opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    let (dest_ep, dest_bucket) = opts.dest.clone().context("--mode backfill needs --dest-endpoint")?;
    let dst = s3_client(&dest_ep)?;
    // A fresh source bucket: the backfill then covers exactly the objects written here.
    if src.head_bucket().bucket(&opts.bucket).send().await.is_ok() {
        anyhow::bail!("bucket {} exists: --mode backfill needs a new source bucket (use --bucket)", opts.bucket);
    }
    ensure_bucket(src, &opts.bucket, true).await?;
    ensure_bucket(&dst, &dest_bucket, true).await?;
    let body = opts.size.buffer();
    let load = Options { count: Some(opts.objects), duration: Duration::from_secs(24 * 3600), ..Options::from(opts) };
    eprintln!("writing {} objects of {}...", opts.objects, opts.size);
    let loaded = drive(src, &load, Mode::Put, body).await?;
    if loaded.errors > 0 {
        anyhow::bail!("{} PUTs failed while loading", loaded.errors);
    }
    put_rule(src, &opts.bucket, &dest_bucket, true).await?;
    let admin = crate::cli::admin_client::AdminClient::new(opts.endpoint.clone(), None)?;
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
        let v: BucketProgress = serde_json::from_slice(&resp.body).context("status JSON")?;
        if let Some(b) = v.backfills.into_iter().next() {
            bar.set_position(b.done_versions);
            match b.state {
                BackfillState::Done => break b,
                BackfillState::Cancelled => anyhow::bail!("the backfill was cancelled"),
                _ => {}
            }
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(24 * 3600), "no end after a day");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    bar.finish_and_clear();
    let (versions, bytes) = (b.done_versions, b.done_bytes);
    let us = b.finished_us.unwrap_or(b.created_us) - b.created_us;
    let seconds = (as_f64(u64::try_from(us).unwrap_or(0)) / 1e6).max(1e-6);
    Ok(BenchReport {
        mode: Mode::Backfill,
        size: opts.size,
        concurrency: opts.concurrency,
        ops: versions,
        errors: b.failed_versions,
        seconds,
        ops_per_sec: as_f64(versions) / seconds,
        mib_per_sec: as_f64(bytes) / seconds / (1024.0 * 1024.0),
        latency_ms: loaded.latency_ms,
        by_op: Vec::new(),
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
    /// PUTs answered per second over the PUT phase (first PUT sent to last answer): below the
    /// requested rate, the client or the source could not keep up, and the lag figures are not
    /// those of the requested rate.
    pub achieved_rate: f64,
    /// How long issuing the PUTs took (the schedule's length is count / rate).
    pub issue_seconds: f64,
    /// LIST requests the watcher made at the destination (its whole load there).
    pub list_requests: u64,
}

impl BenchReport {
    /// Why a replication run's figures are not those of the rate asked for: the PUTs achieved
    /// less than 95 % of it.
    #[must_use]
    pub fn fell_behind(&self) -> Option<String> {
        let r = self.replication.as_ref()?;
        (r.achieved_rate < 0.95 * r.target_rate).then(|| {
            format!(
                "achieved {:.0} PUT/s of the {} asked ({:.0} %): the lag figures are those of the achieved rate",
                r.achieved_rate,
                r.target_rate,
                100.0 * r.achieved_rate / r.target_rate.max(1e-9)
            )
        })
    }
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
            "{:?} {} x {} in flight: {} ops in {:.1} s, {} errors",
            self.mode, self.size, self.concurrency, self.ops, self.seconds, self.errors
        )?;
        writeln!(f, "  {:.0} ops/s, {:.1} MiB/s", self.ops_per_sec, self.mib_per_sec)?;
        write!(
            f,
            "  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            self.latency_ms.p50, self.latency_ms.p90, self.latency_ms.p99, self.latency_ms.max
        )?;
        if self.by_op.len() > 1 {
            for o in &self.by_op {
                write!(
                    f,
                    "\n  {:<6} {:>8} ops {:>9.0} ops/s  p50 {:.2}  p99 {:.2} ms  {} errors",
                    o.op, o.ops, o.ops_per_sec, o.latency_ms.p50, o.latency_ms.p99, o.errors
                )?;
            }
        }
        if let Some(b) = &self.backfill {
            write!(
                f,
                "  (PUTs of the load phase)\n  backfill: {} versions, {:.1} MiB in {:.2} s after {:.1} s of loading",
                b.versions,
                as_f64(b.bytes) / (1024.0 * 1024.0),
                self.seconds,
                b.load_seconds
            )?;
        }
        if let Some(r) = &self.replication {
            write!(
                f,
                "\n  PUT rate: {:.0}/s achieved of {}/s asked (PUTs issued in {:.1} s)\n  replication lag ms (PUT answered -> listed at destination): p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}\n  catch-up after the last PUT: {:.1} ms; {} LISTs at the destination",
                r.achieved_rate,
                r.target_rate,
                r.issue_seconds,
                r.lag_ms.p50,
                r.lag_ms.p90,
                r.lag_ms.p99,
                r.lag_ms.max,
                r.catch_up_ms,
                r.list_requests
            )?;
        }
        Ok(())
    }
}

/// A count, byte total or duration as a float for reports (all far below 2^52, where `f64`
/// is exact).
#[allow(clippy::cast_precision_loss)] // see above
fn as_f64(n: u64) -> f64 {
    n as f64
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
        assert_eq!(parse_sizes("4KiB"), Ok(Sizes { min: 4096, max: 4096 }));
        assert_eq!(parse_sizes("4KiB-4MiB"), Ok(Sizes { min: 4096, max: 4 << 20 }));
        assert!(parse_sizes("4MiB-4KiB").is_err());
        let r = Sizes { min: 4096, max: 4 << 20 };
        let mut rng = rand::rng();
        let picks: Vec<u64> = (0..2000).map(|_| r.pick(&mut rng)).collect();
        assert!(picks.iter().all(|p| (4096..=4 << 20).contains(p)));
        // Log-uniform: about a third below 64 KiB (the range spans 2^12..2^22).
        let small = picks.iter().filter(|p| **p < 64 << 10).count();
        assert!((400..1000).contains(&small), "{small} of 2000 below 64 KiB");
    }
}
