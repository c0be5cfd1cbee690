//! The live replication dashboard: one server-sent event stream per open page, a bounded ring
//! of samples for the charts, verify runs and the peers' health.
//!
//! # Invariants
//! - One stream per open dashboard; at most [`MAX_STREAMS`] open in the process (more are
//!   answered 503). A stream ends when its session ends, or when the console stops.
//! - A stream reads the bucket's progress once per [`TICK`] (one read transaction, the same
//!   figures `ferry replication status` shows) and sends a fragment only when it changed.
//! - The charts' history is a ring of at most [`RING`] samples per bucket with replication,
//!   taken every [`SAMPLE_EVERY`] by one task for the whole process: an hour of history,
//!   whatever the number of open pages. Rings of buckets that lost their rules are dropped.
//! - What the dashboard shows is what the store says: "100 %" only for a finished backfill,
//!   "in sync" only from a verify that found no difference.
//!
//! # Crash behaviour
//! Everything here is memory: a restart loses the charts' last hour and the running verifies'
//! counts (a verify's result is recorded as an event by the region, and survives).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use ferry_store::replication::backfill::{Backfill, BackfillState};
use ferry_store::replication::progress::{BucketProgress, bucket_progress};
use futures::StreamExt as _;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{Console, ConsoleRegion, human, message, no_such_bucket, to_sign_in};

/// How often an open dashboard is refreshed.
pub const TICK: Duration = Duration::from_secs(1);
/// How often the charts get a sample.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Samples kept per bucket: one hour.
pub const RING: usize = 360;
/// Open dashboards in the process.
pub const MAX_STREAMS: usize = 64;
/// Failures listed on a dashboard.
const FAILURES_SHOWN: usize = 20;

/// The dashboard's shared state.
#[derive(Default)]
pub struct Live {
    /// (region, bucket) → samples, oldest first.
    rings: Mutex<HashMap<(String, String), VecDeque<Sample>>>,
    /// (region, bucket, rule) → the latest verify started from the console.
    verifies: Mutex<HashMap<(String, String, String), VerifyRun>>,
    /// Peer name → "up", "down" or "probing".
    health: Mutex<BTreeMap<String, &'static str>>,
    streams: AtomicUsize,
}

#[derive(Clone)]
struct Sample {
    /// Unix seconds.
    t: i64,
    rules: Vec<RuleSample>,
}

#[derive(Clone)]
struct RuleSample {
    rule: String,
    lag: f64,
    pending: u64,
    /// Bytes sent to the destination since the process started.
    sent: u64,
}

/// A verify run started from the console.
#[derive(Clone, Default)]
pub struct VerifyRun {
    pub running: bool,
    pub checked: u64,
    pub differences: u64,
    /// The end: "in sync" or what differs, or why it could not run.
    pub result: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Live {
    /// Records the progress of a verify run.
    pub fn verify(&self, region: &str, bucket: &str, rule: &str, run: VerifyRun) {
        lock(&self.verifies).insert((region.to_owned(), bucket.to_owned(), rule.to_owned()), run);
    }

    /// Marks a verify of the rule as running; false when one already is.
    pub fn start_verify(&self, region: &str, bucket: &str, rule: &str) -> bool {
        let mut runs = lock(&self.verifies);
        let run = runs.entry((region.to_owned(), bucket.to_owned(), rule.to_owned())).or_default();
        if run.running {
            return false;
        }
        *run = VerifyRun { running: true, ..VerifyRun::default() };
        true
    }

    fn verify_of(&self, region: &str, bucket: &str, rule: &str) -> Option<VerifyRun> {
        lock(&self.verifies).get(&(region.to_owned(), bucket.to_owned(), rule.to_owned())).cloned()
    }

    /// The peers' health, by name.
    pub fn health(&self) -> Vec<(String, &'static str)> {
        lock(&self.health).iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// Takes the charts' samples and probes the peers, every [`SAMPLE_EVERY`], until `stop`.
pub async fn sampler(c: Arc<Console>, stop: CancellationToken) {
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let mut seen = Vec::new();
        for r in &c.regions {
            seen.extend(sample_region(&c, r).await);
        }
        lock(&c.live.rings).retain(|k, _| seen.contains(k));
        probe_peers(&c).await;
    }
}

async fn sample_region(c: &Console, r: &ConsoleRegion) -> Vec<(String, String)> {
    let Ok(buckets) = r.store.meta.read(|tx| tx.list_buckets()).await else { return Vec::new() };
    let mut seen = Vec::new();
    let t = ferry_core::time::now_micros() / 1_000_000;
    for b in buckets.into_iter().filter(|b| b.replication.is_some()) {
        let Ok(p) = bucket_progress(&r.store, &b.name, &r.name).await else { continue };
        let rules = p
            .rules
            .iter()
            .map(|rule| {
                let labels = ferry_core::metrics::RuleLabels {
                    bucket: b.name.clone(),
                    rule: rule.id.clone(),
                    destination: format!("{}/{}", rule.destination_region, rule.destination_bucket),
                };
                let sent = r.metrics.replication_sent_bytes.get(&labels).map_or(0, |c| c.get());
                RuleSample { rule: rule.id.clone(), lag: rule.lag_seconds, pending: rule.pending_ops, sent }
            })
            .collect();
        let key = (r.name.clone(), b.name.clone());
        let mut rings = lock(&c.live.rings);
        let ring = rings.entry(key.clone()).or_default();
        if ring.len() == RING {
            ring.pop_front();
        }
        ring.push_back(Sample { t, rules });
        seen.push(key);
    }
    seen
}

/// Marks each peer up (it accepts connections) or down (refused, or no answer in 5 s). A TCP
/// connection, not a request: a probe must not fill the peer's log with refused requests.
async fn probe_peers(c: &Console) {
    for p in &c.peers {
        lock(&c.live.health).entry(p.name.clone()).or_insert("probing");
        let Ok(uri) = p.s3.url.parse::<axum::http::Uri>() else { continue };
        let Some(host) = uri.host() else { continue };
        let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let connected = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect((host, port))).await;
        let state = if matches!(connected, Ok(Ok(_))) { "up" } else { "down" };
        lock(&c.live.health).insert(p.name.clone(), state);
    }
}

/// The charts' data of a bucket: times, and per rule lag (s), pending operations and
/// throughput (bytes/s between samples).
#[derive(Serialize, PartialEq)]
struct Charts {
    t: Vec<i64>,
    rules: Vec<RuleSeries>,
}

#[derive(Serialize, PartialEq)]
struct RuleSeries {
    rule: String,
    lag: Vec<Option<f64>>,
    pending: Vec<Option<u64>>,
    throughput: Vec<Option<f64>>,
}

fn charts(c: &Console, region: &str, bucket: &str) -> Charts {
    let rings = lock(&c.live.rings);
    let Some(ring) = rings.get(&(region.to_owned(), bucket.to_owned())) else {
        return Charts { t: Vec::new(), rules: Vec::new() };
    };
    let names: Vec<String> = ring.back().map(|s| s.rules.iter().map(|r| r.rule.clone()).collect()).unwrap_or_default();
    let t = ring.iter().map(|s| s.t).collect();
    let rules = names
        .into_iter()
        .map(|name| {
            let of = |s: &Sample| s.rules.iter().find(|r| r.rule == name).cloned();
            let mut prev: Option<(i64, u64)> = None;
            let mut series = RuleSeries { rule: name.clone(), lag: Vec::new(), pending: Vec::new(), throughput: Vec::new() };
            for s in ring {
                let r = of(s);
                series.lag.push(r.as_ref().map(|r| r.lag));
                series.pending.push(r.as_ref().map(|r| r.pending));
                #[allow(clippy::cast_precision_loss)] // a rate for a chart
                let rate = match (&r, prev) {
                    (Some(r), Some((t0, b0))) if s.t > t0 => Some(r.sent.saturating_sub(b0) as f64 / (s.t - t0) as f64),
                    _ => None,
                };
                series.throughput.push(rate);
                prev = r.map(|r| (s.t, r.sent));
            }
            series
        })
        .collect();
    Charts { t, rules }
}

/// A rule as the dashboard shows it.
pub struct RuleView {
    pub id: String,
    pub destination: String,
    pub state: &'static str,
    pub replicated_up_to: String,
    pub lag: String,
    pub pending: String,
    pub failed: u64,
    pub last_error: Option<String>,
    /// The historical migration: percent done (100 only when finished) and what to say.
    pub migration: Option<(u32, String)>,
    pub verify: String,
}

/// A failed operation.
pub struct FailureView {
    pub job: i64,
    pub key: String,
    pub version: String,
    pub destination: String,
    pub attempts: u32,
    pub reason: String,
}

/// An RPO event.
pub struct EventView {
    pub time: String,
    pub rule: String,
    pub kind: String,
    pub detail: String,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
pub struct Dashboard {
    pub region: String,
    pub name: String,
    pub csrf: String,
    pub rules: Vec<RuleView>,
    pub events: Vec<EventView>,
}

#[derive(Template)]
#[template(path = "failures.html")]
pub struct Failures {
    pub region: String,
    pub name: String,
    pub csrf: String,
    pub failures: Vec<FailureView>,
}

/// "3 min 20 s" for an ETA.
fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min {} s", secs / 60, secs % 60),
        _ => format!("{} h {} min", secs / 3600, (secs % 3600) / 60),
    }
}

/// Percent done and its text: "42 % · 420 of 1000 versions · ETA 12 s". 100 % only when
/// the backfill finished with every version delivered (a failed version keeps it below).
fn migration(b: &Backfill) -> (u32, String) {
    if b.state == BackfillState::Done && b.failed_versions == 0 {
        return (100, format!("100 % · {} versions · done", b.total_versions));
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // 0..=99
    let pct = ((b.ratio() * 100.0).floor() as u32).min(99);
    let mut text = format!("{pct} % · {} of {} versions", b.done_versions, b.total_versions);
    if b.failed_versions > 0 {
        text.push_str(&format!(" · {} failed (see Failures)", b.failed_versions));
    }
    let elapsed = b.updated_us.saturating_sub(b.created_us);
    if b.state == BackfillState::Running && b.done_versions > 0 && elapsed > 0 {
        let left = b.total_versions.saturating_sub(b.done_versions);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let eta = (elapsed as f64 / 1e6 / b.done_versions as f64 * left as f64).ceil() as u64;
        text.push_str(&format!(" · ETA {}", duration(eta)));
    } else if b.state != BackfillState::Running {
        text.push_str(&format!(" · {}", b.state.as_str()));
    }
    (pct, text)
}

fn rule_views(c: &Console, region: &str, p: &BucketProgress) -> Vec<RuleView> {
    p.rules
        .iter()
        .map(|r| {
            let latest = p.backfills.iter().filter(|b| b.rule_id.as_deref().is_none_or(|id| id == r.id)).max_by_key(|b| b.id);
            let verify = match (c.live.verify_of(region, &p.bucket, &r.id), &r.last_verify) {
                (Some(v), _) if v.running => {
                    format!("verifying: {} checked, {} differences so far", v.checked, v.differences)
                }
                (Some(VerifyRun { result: Some(why), .. }), _) => why,
                (_, Some(e)) => format!("{} at {}", e.detail, ferry_core::time::rfc3339_us(e.time_us)),
                _ => "never verified".to_owned(),
            };
            RuleView {
                id: r.id.clone(),
                destination: format!("{} / {}", r.destination_region, r.destination_bucket),
                state: r.state.as_str(),
                replicated_up_to: r.replicated_up_to.clone(),
                lag: format!("{:.1} s", r.lag_seconds),
                pending: format!("{} ops, {}", r.pending_ops, human(i64::try_from(r.pending_bytes).unwrap_or(i64::MAX))),
                failed: r.failed_ops,
                last_error: r.last_error.clone(),
                migration: latest.map(migration),
                verify,
            }
        })
        .collect()
}

/// The dashboard's two fragments (progress, failures) and the charts, from one progress read.
pub async fn render(c: &Console, r: &ConsoleRegion, name: &str, csrf: &str) -> Option<(String, String, String)> {
    let p = bucket_progress(&r.store, name, &r.name).await.ok()?;
    let n = name.to_owned();
    let failed = r.store.meta.read(move |tx| tx.failed_jobs(&n, FAILURES_SHOWN)).await.ok()?;
    let events = p
        .events
        .iter()
        .filter(|e| e.kind.starts_with("Operation"))
        .take(10)
        .map(|e| EventView {
            time: ferry_core::time::rfc3339_us(e.time_us),
            rule: e.rule_id.clone(),
            kind: e.kind.clone(),
            detail: e.detail.clone(),
        })
        .collect();
    let dashboard = Dashboard {
        region: r.name.clone(),
        name: name.to_owned(),
        csrf: csrf.to_owned(),
        rules: rule_views(c, &r.name, &p),
        events,
    };
    let failures = Failures {
        region: r.name.clone(),
        name: name.to_owned(),
        csrf: csrf.to_owned(),
        failures: failed
            .into_iter()
            .map(|j| FailureView {
                job: j.id,
                destination: j.dest(),
                key: j.key,
                version: j.version_id,
                attempts: j.attempts,
                reason: j.last_error.unwrap_or_default(),
            })
            .collect(),
    };
    let charts = serde_json::to_string(&charts(c, &r.name, name)).ok()?;
    Some((dashboard.render().ok()?, failures.render().ok()?, charts))
}

/// Counts open streams; a stream holds one until it ends.
struct Open(Arc<Console>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.live.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a stream sent last.
struct Sent {
    open: Open,
    region: String,
    name: String,
    session: String,
    first: bool,
    last: (String, String, String),
}

/// `GET /buckets/REGION/BUCKET/live`: the dashboard's event stream (events `progress`,
/// `failures`, `charts`), for the bucket's owner.
pub async fn stream(State(c): State<Arc<Console>>, headers: HeaderMap, Path((region, name)): Path<(String, String)>) -> Response {
    let Some((id, s)) = c.session(&headers) else { return to_sign_in() };
    if super::replication::owned(&c, &s, &region, &name).await.is_none() {
        return no_such_bucket();
    }
    if c.live.streams.fetch_add(1, Ordering::Relaxed) >= MAX_STREAMS {
        c.live.streams.fetch_sub(1, Ordering::Relaxed);
        return message(StatusCode::SERVICE_UNAVAILABLE, "Busy", "Too many open dashboards: close one.");
    }
    let state = Sent { open: Open(c.clone()), region, name, session: id, first: true, last: Default::default() };
    let events = futures::stream::unfold(state, |mut st| async move {
        let c = st.open.0.clone();
        if !st.first {
            // A stopping console ends its streams, so its connections close at once.
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                () = c.stop.cancelled() => return None,
            }
        }
        st.first = false;
        // A stream lives as long as its session.
        let s = c.sessions.get(&st.session)?;
        let r = c.region(&st.region)?;
        let (progress, failures, charts) = render(&c, r, &st.name, &s.csrf).await.unwrap_or_default();
        let mut out = Vec::new();
        for (name, now, before) in
            [("progress", progress, &mut st.last.0), ("failures", failures, &mut st.last.1), ("charts", charts, &mut st.last.2)]
        {
            if now != *before {
                out.push(Ok::<_, Infallible>(Event::default().event(name).data(now.clone())));
                *before = now;
            }
        }
        Some((futures::stream::iter(out), st))
    })
    .flatten();
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backfill(state: BackfillState, total: u64, done: u64, failed: u64) -> Backfill {
        Backfill {
            id: 1,
            bucket: "b".into(),
            rule_id: None,
            prefix: String::new(),
            status_filter: ferry_store::replication::backfill::StatusFilter::default(),
            older_than_us: None,
            state,
            cursor_key: None,
            cursor_version: None,
            total_versions: total,
            total_bytes: 0,
            scanned_versions: total,
            scanned_bytes: 0,
            enqueued_versions: total,
            done_versions: done,
            done_bytes: 0,
            failed_versions: failed,
            created_us: 0,
            updated_us: 10_000_000,
            finished_us: None,
        }
    }

    #[test]
    fn one_verify_per_rule_at_a_time() {
        let live = Live::default();
        assert!(live.start_verify("r", "b", "rule"));
        assert!(!live.start_verify("r", "b", "rule"), "already running");
        assert!(live.start_verify("r", "b", "other"), "another rule's is its own");
        live.verify(
            "r",
            "b",
            "rule",
            VerifyRun { running: false, result: Some("in sync".into()), ..VerifyRun::default() },
        );
        assert!(live.start_verify("r", "b", "rule"), "finished: may run again");
    }

    #[test]
    fn a_hundred_percent_only_when_every_version_arrived() {
        assert_eq!(migration(&backfill(BackfillState::Done, 10, 10, 0)).0, 100);
        let (pct, text) = migration(&backfill(BackfillState::Done, 10, 9, 1));
        assert_eq!(pct, 90, "{text}");
        assert!(text.contains("1 failed"), "{text}");
        // All counted done but not finished yet: 99 at most.
        assert_eq!(migration(&backfill(BackfillState::Running, 10, 10, 0)).0, 99);
        let (pct, text) = migration(&backfill(BackfillState::Running, 100, 25, 0));
        assert_eq!(pct, 25);
        assert!(text.ends_with("ETA 30 s"), "25 done in 10 s, 75 left: {text}");
        assert!(migration(&backfill(BackfillState::Paused, 100, 25, 0)).1.ends_with("paused"));
    }
}
