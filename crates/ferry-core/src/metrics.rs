//! Prometheus metrics of one region (one registry per region, so several regions in one
//! process, or in one test, never mix their figures). Served as text by the region's admin
//! listener at `/metrics`.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of per-rule replication metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub bucket: String,
    pub rule: String,
    /// `REGION/BUCKET`.
    pub destination: String,
}

/// Labels of S3 request metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// HTTP status code.
    pub status: String,
}

/// Labels of request latencies.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

/// Labels of lifecycle actions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// `expire_current`, `remove_noncurrent`, `remove_delete_marker` or `abort_upload`.
    pub action: String,
}

/// Labels of replica PUTs sent.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SenderLabels {
    /// `lean` (the lean client, small versions to Ferry peers) or `sdk`.
    pub sender: String,
}

type GaugeF64 = Gauge<f64, AtomicU64>;

fn latency_histogram() -> Histogram {
    // 1 ms .. ~9 h.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 25))
}

/// Every metric of a region.
pub struct RegionMetrics {
    registry: Mutex<Registry>,
    pub s3_requests: Family<RequestLabels, Counter>,
    pub s3_request_duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
    pub replication_pending_operations: Family<RuleLabels, Gauge>,
    pub replication_pending_bytes: Family<RuleLabels, Gauge>,
    pub replication_latency: Family<RuleLabels, Histogram, fn() -> Histogram>,
    pub replication_failed_operations: Family<RuleLabels, Counter>,
    pub replication_sent_bytes: Family<RuleLabels, Counter>,
    pub replication_object_puts: Family<SenderLabels, Counter>,
    pub replication_lag: Family<RuleLabels, GaugeF64>,
    pub replication_rpo_missed: Family<RuleLabels, Counter>,
    pub backfill_progress: Family<RuleLabels, GaugeF64>,
    pub lifecycle_actions: Family<ActionLabels, Counter>,
    pub lifecycle_versions_scanned: Counter,
    pub lifecycle_last_pass_end: GaugeF64,
}

impl RegionMetrics {
    /// A fresh registry for region `region` (added as a constant label).
    #[must_use]
    pub fn new(region: &str) -> Self {
        let mut registry = Registry::with_prefix_and_labels("ferry", [("region".into(), region.to_owned().into())].into_iter());
        let m = Self {
            registry: Mutex::new(Registry::default()),
            s3_requests: Family::default(),
            s3_request_duration: Family::new_with_constructor(latency_histogram),
            replication_pending_operations: Family::default(),
            replication_pending_bytes: Family::default(),
            replication_latency: Family::new_with_constructor(latency_histogram),
            replication_failed_operations: Family::default(),
            replication_sent_bytes: Family::default(),
            replication_object_puts: Family::default(),
            replication_lag: Family::default(),
            replication_rpo_missed: Family::default(),
            backfill_progress: Family::default(),
            lifecycle_actions: Family::default(),
            lifecycle_versions_scanned: Counter::default(),
            lifecycle_last_pass_end: GaugeF64::default(),
        };
        registry.register("s3_requests", "S3 requests answered, by method and status", m.s3_requests.clone());
        registry.register("s3_request_duration_seconds", "Time to answer S3 requests", m.s3_request_duration.clone());
        registry.register(
            "replication_pending_operations",
            "Replication jobs waiting to be delivered",
            m.replication_pending_operations.clone(),
        );
        registry.register(
            "replication_pending_bytes",
            "Bytes of the replication jobs waiting",
            m.replication_pending_bytes.clone(),
        );
        registry.register(
            "replication_latency_seconds",
            "Time from a change's commit to its delivery at the destination",
            m.replication_latency.clone(),
        );
        registry.register(
            "replication_failed_operations",
            "Replication jobs that failed permanently",
            m.replication_failed_operations.clone(),
        );
        registry.register(
            "replication_sent_bytes",
            "Object bytes delivered to destinations",
            m.replication_sent_bytes.clone(),
        );
        registry.register(
            "replication_object_puts",
            "Single-request replica PUTs sent (each attempt), by the client that sent them",
            m.replication_object_puts.clone(),
        );
        registry.register(
            "replication_lag_seconds",
            "Now minus the time up to which every change is replicated",
            m.replication_lag.clone(),
        );
        registry.register(
            "replication_rpo_missed",
            "Times the lag went over the rule's recovery point objective",
            m.replication_rpo_missed.clone(),
        );
        registry.register(
            "backfill_progress_ratio",
            "Fraction of the latest backfill done",
            m.backfill_progress.clone(),
        );
        registry.register("lifecycle_actions", "What lifecycle rules did, by action", m.lifecycle_actions.clone());
        registry.register(
            "lifecycle_versions_scanned",
            "Versions the lifecycle worker went through",
            m.lifecycle_versions_scanned.clone(),
        );
        registry.register(
            "lifecycle_last_pass_end_seconds",
            "When the lifecycle worker last finished a pass over every bucket (Unix time)",
            m.lifecycle_last_pass_end.clone(),
        );
        *crate::sync::lock(&m.registry) = registry;
        m
    }

    /// The metrics in Prometheus text format.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let reg = crate::sync::lock(&self.registry);
        if prometheus_client::encoding::text::encode(&mut out, &reg).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_region_label_and_names() {
        let m = RegionMetrics::new("eu-west-1");
        let l = RuleLabels { bucket: "b".into(), rule: "r".into(), destination: "us/d".into() };
        m.replication_pending_operations.get_or_create(&l).set(3);
        m.replication_latency.get_or_create(&l).observe(0.02);
        m.replication_sent_bytes.get_or_create(&l).inc_by(10);
        let text = m.encode();
        assert!(
            text.contains(
                "ferry_replication_pending_operations{region=\"eu-west-1\",bucket=\"b\",rule=\"r\",destination=\"us/d\"} 3"
            ),
            "{text}"
        );
        assert!(text.contains("ferry_replication_latency_seconds_bucket"), "{text}");
        assert!(text.contains("ferry_replication_sent_bytes_total"), "{text}");
    }

    /// Every series the example Grafana dashboard queries is one Ferry exports.
    #[test]
    fn the_grafana_dashboard_queries_exported_metrics() {
        let m = RegionMetrics::new("r");
        let l = RuleLabels { bucket: "b".into(), rule: "r".into(), destination: "us/d".into() };
        m.s3_requests.get_or_create(&RequestLabels { method: "GET".into(), status: "200".into() }).inc();
        m.s3_request_duration.get_or_create(&MethodLabels { method: "GET".into() }).observe(0.1);
        m.replication_pending_operations.get_or_create(&l).set(1);
        m.replication_pending_bytes.get_or_create(&l).set(1);
        m.replication_latency.get_or_create(&l).observe(0.1);
        m.replication_failed_operations.get_or_create(&l).inc();
        m.replication_sent_bytes.get_or_create(&l).inc();
        m.replication_lag.get_or_create(&l).set(1.0);
        m.replication_rpo_missed.get_or_create(&l).inc();
        m.backfill_progress.get_or_create(&l).set(0.5);
        let exported: std::collections::HashSet<String> = m
            .encode()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned))
            .collect();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/grafana-dashboard.json");
        let dashboard = std::fs::read_to_string(&path).expect("docs/grafana-dashboard.json");
        let mut queried = 0;
        for (i, _) in dashboard.match_indices("ferry_") {
            let name: String = dashboard[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            assert!(
                exported.contains(&name),
                "the dashboard queries {name}, which is not exported: {exported:?}"
            );
            queried += 1;
        }
        assert!(queried >= 10, "{queried}");
    }
}
