//! Metrics: a small registry of counters, gauges and histograms with fixed label sets,
//! rendered in the Prometheus text format 0.0.4 (`GET /metrics`).
//!
//! One [`Metrics`] is created per started service (`app::start`) and shared by `Arc` with
//! the receiver, the workers, the reconciler and the Puhuri Core client; nothing is
//! global, so several services in one process keep separate numbers.
//!
//! INVARIANT: every exported name is in [`METRIC_NAMES`]; the deployment artifacts
//! (dashboard, alert rules) are checked against that list by the tests.
//! INVARIANT: label values are bounded and never secret: configured source names (or
//! `unknown`), refusal causes, policy rule names, Puhuri Core operation names, HTTP
//! status codes, tier numbers. A user-supplied path segment never becomes a label.
//! INVARIANT: hot paths take one short mutex per observation (a map lookup and an add);
//! queue depths and broker state are read at scrape time, not on the hot path.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use puhuri_queue::Broker;

/// Notifications answered by the receiver: `source`, `outcome` (`accepted`, `ignored`,
/// `duplicate`, `rejected`, `unavailable`) and `cause` (the problem type for refusals,
/// empty otherwise).
pub const NOTIFICATIONS: &str = "puhuri_approver_notifications_total";
/// Seconds from publish to the broker's confirm (or the embedded queue's commit).
pub const CONFIRM_SECONDS: &str = "puhuri_approver_confirm_duration_seconds";
/// Messages waiting in the work queue (read at scrape time).
pub const QUEUE_DEPTH: &str = "puhuri_approver_queue_depth";
/// Age of the oldest pending message, see `docs/operations.md` for what it means per backend.
pub const QUEUE_OLDEST_AGE: &str = "puhuri_approver_queue_oldest_age_seconds";
/// Messages in the dead-letter queue (read at scrape time).
pub const DEAD_LETTER_DEPTH: &str = "puhuri_approver_dead_letter_depth";
/// Decisions by `action` (approved, rejected, erred, held, already-handled, not-waiting)
/// and the policy `rule` that decided (`-` when none).
pub const DECISIONS: &str = "puhuri_approver_decisions_total";
/// Deliveries settled by the workers, by `disposition`.
pub const DELIVERIES: &str = "puhuri_approver_deliveries_total";
/// Puhuri Core calls by `endpoint` (the operation) and `status` (HTTP code or `error`).
pub const PUHURI_REQUESTS: &str = "puhuri_approver_puhuri_requests_total";
/// Latency of Puhuri Core calls by `endpoint`.
pub const PUHURI_SECONDS: &str = "puhuri_approver_puhuri_request_duration_seconds";
/// Unix time of the last Puhuri Core call that got an answer other than 5xx.
pub const PUHURI_LAST_SUCCESS: &str = "puhuri_approver_puhuri_last_success_timestamp_seconds";
/// Retries scheduled, by delay `tier` (1 = the first tier).
pub const RETRIES: &str = "puhuri_approver_retries_total";
/// Reconcile cycles by `result` (`ok`, `error`).
pub const RECONCILE_CYCLES: &str = "puhuri_approver_reconcile_cycles_total";
/// Puhuri Core list calls made by the reconciler.
pub const RECONCILE_CALLS: &str = "puhuri_approver_reconcile_calls_total";
/// Allocations the reconciler enqueued.
pub const RECONCILE_ENQUEUED: &str = "puhuri_approver_reconcile_enqueued_total";
/// Policies reloaded after start.
pub const POLICY_RELOADS: &str = "puhuri_approver_policy_reloads_total";
/// Policy files refused (the running policy stayed).
pub const POLICY_RELOAD_FAILURES: &str = "puhuri_approver_policy_reload_failures_total";
/// `1` while a policy is loaded by this process's workers.
pub const POLICY_LOADED: &str = "puhuri_approver_policy_loaded";
/// `1` while the broker connection is up (the embedded queue is always up).
pub const BROKER_CONNECTED: &str = "puhuri_approver_broker_connected";
/// Usage records settled by the workers, by `outcome` (`reported`, `unchanged`, `stale`,
/// `dead-lettered`, `retried`).
pub const USAGE_RECORDS: &str = "puhuri_approver_usage_records_total";
/// `set_usage` calls that reported at least one changed component.
pub const USAGE_REPORTS: &str = "puhuri_approver_usage_reports_total";
/// Team events published, by `type` (`team.snapshot`, `team.changed`).
pub const TEAM_EVENTS: &str = "puhuri_approver_team_events_total";

/// Every metric name this service exports (histograms add `_bucket`, `_sum`, `_count`).
pub const METRIC_NAMES: &[&str] = &[
    NOTIFICATIONS,
    CONFIRM_SECONDS,
    QUEUE_DEPTH,
    QUEUE_OLDEST_AGE,
    DEAD_LETTER_DEPTH,
    DECISIONS,
    DELIVERIES,
    PUHURI_REQUESTS,
    PUHURI_SECONDS,
    PUHURI_LAST_SUCCESS,
    RETRIES,
    RECONCILE_CYCLES,
    RECONCILE_CALLS,
    RECONCILE_ENQUEUED,
    POLICY_RELOADS,
    POLICY_RELOAD_FAILURES,
    POLICY_LOADED,
    BROKER_CONNECTED,
    USAGE_RECORDS,
    USAGE_REPORTS,
    TEAM_EVENTS,
];

/// Whether `name` is exported, directly or as a histogram's series.
pub fn is_exported(name: &str) -> bool {
    METRIC_NAMES.contains(&name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| HISTOGRAMS.contains(&base))
        })
}

const HISTOGRAMS: &[&str] = &[CONFIRM_SECONDS, PUHURI_SECONDS];

/// Upper bounds of the latency histograms, in seconds.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How long Puhuri Core may go without a good answer after a failure before `/readyz`
/// reports it unreachable.
pub const PUHURI_RECENT: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, value: f64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; BUCKETS.len()];
        }
        for (bound, n) in BUCKETS.iter().zip(self.buckets.iter_mut()) {
            if value <= *bound {
                *n += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }
}

type Labels = Vec<String>;

/// The registry of one service.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, Labels), u64>>,
    histograms: Mutex<BTreeMap<(&'static str, Labels), Histogram>>,
    policy_reloads: AtomicU64,
    policy_reload_failures: AtomicU64,
    policy_loaded: AtomicU64,
    runs_workers: AtomicU64,
    /// Oldest pending message's enqueue time as last seen on delivery (ms), RabbitMQ.
    last_delivered_received_ms: AtomicI64,
    /// Unix ms of the last Puhuri Core answer other than 5xx, and of the last failure.
    puhuri_ok_ms: AtomicI64,
    puhuri_failed_ms: AtomicI64,
    broker: Mutex<Option<Broker>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn labels(values: &[&str]) -> Labels {
    values.iter().map(|v| (*v).to_owned()).collect()
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// The queue whose depths are read at scrape time.
    pub fn attach_broker(&self, broker: Broker) {
        *self.broker.lock().unwrap_or_else(PoisonError::into_inner) = Some(broker);
    }

    fn add(&self, name: &'static str, values: &[&str], n: u64) {
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        *counters.entry((name, labels(values))).or_default() += n;
    }

    fn observe(&self, name: &'static str, values: &[&str], seconds: f64) {
        let mut histograms = self
            .histograms
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        histograms
            .entry((name, labels(values)))
            .or_default()
            .observe(seconds);
    }

    /// A notification answered: `outcome` and, for refusals, the problem cause.
    pub fn notification(&self, source: &str, outcome: &str, cause: &str) {
        self.add(NOTIFICATIONS, &[source, outcome, cause], 1);
    }

    /// The time a publish took to be confirmed.
    pub fn confirm(&self, elapsed: Duration) {
        self.observe(CONFIRM_SECONDS, &[], elapsed.as_secs_f64());
    }

    /// A delivery taken by a worker, with its notification's `received_at_ms`.
    pub fn delivered(&self, received_at_ms: i64) {
        self.last_delivered_received_ms
            .store(received_at_ms, Ordering::Relaxed);
    }

    /// A settled delivery: its disposition and, when decided, the action and rule.
    pub fn settled(&self, disposition: &str, decision: Option<(&str, &str)>) {
        self.add(DELIVERIES, &[disposition], 1);
        if let Some((action, rule)) = decision {
            self.add(DECISIONS, &[action, rule], 1);
        }
    }

    /// A retry scheduled into delay tier `tier` (1-based).
    pub fn retry(&self, tier: u32) {
        self.add(RETRIES, &[&tier.to_string()], 1);
    }

    /// One Puhuri Core call: the operation, its HTTP status (`None`: no answer) and time.
    pub fn puhuri_call(&self, endpoint: &str, status: Option<u16>, elapsed: Duration) {
        let status_label = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        self.add(PUHURI_REQUESTS, &[endpoint, &status_label], 1);
        self.observe(PUHURI_SECONDS, &[endpoint], elapsed.as_secs_f64());
        match status {
            Some(code) if code < 500 => self.puhuri_ok_ms.store(now_ms(), Ordering::Relaxed),
            _ => self.puhuri_failed_ms.store(now_ms(), Ordering::Relaxed),
        }
    }

    /// One reconcile cycle: whether it succeeded, its list calls and what it enqueued.
    pub fn reconcile_cycle(&self, ok: bool, calls: usize, enqueued: usize) {
        self.add(RECONCILE_CYCLES, &[if ok { "ok" } else { "error" }], 1);
        self.add(RECONCILE_CALLS, &[], calls as u64);
        self.add(RECONCILE_ENQUEUED, &[], enqueued as u64);
    }

    /// `n` usage records settled with `outcome`.
    pub fn usage_records(&self, outcome: &str, n: usize) {
        self.add(USAGE_RECORDS, &[outcome], n as u64);
    }

    /// One `set_usage` call that reported changed components.
    pub fn usage_report(&self) {
        self.add(USAGE_REPORTS, &[], 1);
    }

    /// A team event published.
    pub fn team_event(&self, event_type: &str) {
        self.add(TEAM_EVENTS, &[event_type], 1);
    }

    /// A policy reload attempt after start.
    pub fn policy_reload(&self, ok: bool) {
        let counter = if ok {
            &self.policy_reloads
        } else {
            &self.policy_reload_failures
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The workers of this process run a policy.
    pub fn policy_loaded(&self) {
        self.policy_loaded.store(1, Ordering::Relaxed);
    }

    /// This process runs workers: readiness checks the policy and Puhuri Core.
    pub fn expect_workers(&self) {
        self.runs_workers.store(1, Ordering::Relaxed);
    }

    pub fn runs_workers(&self) -> bool {
        self.runs_workers.load(Ordering::Relaxed) == 1
    }

    /// Whether the attached broker is connected (`false` when none is attached).
    pub fn broker_connected(&self) -> bool {
        self.broker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(Broker::is_connected)
    }

    pub fn is_policy_loaded(&self) -> bool {
        self.policy_loaded.load(Ordering::Relaxed) == 1
    }

    /// `false` when the last Puhuri Core call failed and no good answer came within
    /// [`PUHURI_RECENT`]; `true` before any call (nothing is known to be wrong).
    pub fn puhuri_reachable(&self) -> bool {
        let ok = self.puhuri_ok_ms.load(Ordering::Relaxed);
        let failed = self.puhuri_failed_ms.load(Ordering::Relaxed);
        failed == 0 || ok >= failed || now_ms() - ok <= PUHURI_RECENT.as_millis() as i64
    }

    /// Refreshes the scrape-time gauges from the queue, then renders everything.
    pub async fn scrape(&self) -> String {
        let broker = self
            .broker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut gauges: Vec<(&'static str, f64)> = Vec::new();
        if let Some(broker) = broker {
            let connected = broker.is_connected();
            gauges.push((BROKER_CONNECTED, if connected { 1.0 } else { 0.0 }));
            if connected {
                let work = broker.work_depth().await.ok();
                if let Some(depth) = work {
                    gauges.push((QUEUE_DEPTH, depth as f64));
                }
                if let Ok(depth) = broker.dead_depth().await {
                    gauges.push((DEAD_LETTER_DEPTH, depth as f64));
                }
                let oldest = match broker.oldest_pending_ms().await {
                    Ok(Some(at)) => Some(at),
                    // RabbitMQ: the last delivered message's age stands in while the
                    // queue is not empty.
                    Ok(None) if broker.is_embedded() => None,
                    _ => match self.last_delivered_received_ms.load(Ordering::Relaxed) {
                        0 => None,
                        _ if work == Some(0) => None,
                        at => Some(at),
                    },
                };
                let age = oldest.map_or(0.0, |at| ((now_ms() - at).max(0)) as f64 / 1000.0);
                gauges.push((QUEUE_OLDEST_AGE, age));
            }
        }
        self.render(&gauges)
    }

    fn render(&self, gauges: &[(&'static str, f64)]) -> String {
        let mut out = String::new();
        let counters = self
            .counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let histograms = self
            .histograms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let plain = [
            (
                POLICY_RELOADS,
                "counter",
                self.policy_reloads.load(Ordering::Relaxed) as f64,
            ),
            (
                POLICY_RELOAD_FAILURES,
                "counter",
                self.policy_reload_failures.load(Ordering::Relaxed) as f64,
            ),
            (
                POLICY_LOADED,
                "gauge",
                self.policy_loaded.load(Ordering::Relaxed) as f64,
            ),
            (
                PUHURI_LAST_SUCCESS,
                "gauge",
                self.puhuri_ok_ms.load(Ordering::Relaxed) as f64 / 1000.0,
            ),
        ];
        for name in METRIC_NAMES {
            let (kind, help, label_names) = describe(name);
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            if let Some((_, _, value)) = plain.iter().find(|(n, _, _)| n == name) {
                let _ = writeln!(out, "{name} {}", number(*value));
            }
            for (gauge, value) in gauges.iter().filter(|(n, _)| n == name) {
                let _ = writeln!(out, "{gauge} {}", number(*value));
            }
            for ((_, values), n) in counters.iter().filter(|((n, _), _)| n == name) {
                let _ = writeln!(out, "{name}{} {n}", label_set(label_names, values, None));
            }
            for ((_, values), h) in histograms.iter().filter(|((n, _), _)| n == name) {
                for (bound, n) in BUCKETS.iter().zip(&h.buckets) {
                    let le = number(*bound);
                    let set = label_set(label_names, values, Some(&le));
                    let _ = writeln!(out, "{name}_bucket{set} {n}");
                }
                let set = label_set(label_names, values, Some("+Inf"));
                let _ = writeln!(out, "{name}_bucket{set} {}", h.count);
                let set = label_set(label_names, values, None);
                let _ = writeln!(out, "{name}_sum{set} {}", number(h.sum));
                let _ = writeln!(out, "{name}_count{set} {}", h.count);
            }
        }
        out
    }
}

/// Type, help text and label names of each metric.
fn describe(name: &str) -> (&'static str, &'static str, &'static [&'static str]) {
    match name {
        NOTIFICATIONS => (
            "counter",
            "Notifications answered by source, outcome and refusal cause.",
            &["source", "outcome", "cause"],
        ),
        CONFIRM_SECONDS => ("histogram", "Seconds from publish to durable confirm.", &[]),
        QUEUE_DEPTH => ("gauge", "Messages waiting in the work queue.", &[]),
        QUEUE_OLDEST_AGE => (
            "gauge",
            "Age in seconds of the oldest pending message (RabbitMQ: of the last delivered one while the queue is not empty).",
            &[],
        ),
        DEAD_LETTER_DEPTH => ("gauge", "Messages in the dead-letter queue.", &[]),
        USAGE_RECORDS => ("counter", "Usage records settled by outcome.", &["outcome"]),
        USAGE_REPORTS => (
            "counter",
            "set_usage calls that reported changed components.",
            &[],
        ),
        TEAM_EVENTS => ("counter", "Team events published by type.", &["type"]),
        DECISIONS => (
            "counter",
            "Decisions by action and policy rule.",
            &["action", "rule"],
        ),
        DELIVERIES => (
            "counter",
            "Deliveries settled by disposition.",
            &["disposition"],
        ),
        PUHURI_REQUESTS => (
            "counter",
            "Puhuri Core calls by endpoint and HTTP status (error: no answer).",
            &["endpoint", "status"],
        ),
        PUHURI_SECONDS => (
            "histogram",
            "Latency of Puhuri Core calls by endpoint.",
            &["endpoint"],
        ),
        PUHURI_LAST_SUCCESS => (
            "gauge",
            "Unix time of the last Puhuri Core answer other than 5xx.",
            &[],
        ),
        RETRIES => ("counter", "Retries scheduled by delay tier.", &["tier"]),
        RECONCILE_CYCLES => ("counter", "Reconcile cycles by result.", &["result"]),
        RECONCILE_CALLS => ("counter", "Puhuri Core list calls of the reconciler.", &[]),
        RECONCILE_ENQUEUED => ("counter", "Allocations enqueued by the reconciler.", &[]),
        POLICY_RELOADS => ("counter", "Policies reloaded after start.", &[]),
        POLICY_RELOAD_FAILURES => (
            "counter",
            "Policy files refused; the running policy stayed.",
            &[],
        ),
        POLICY_LOADED => ("gauge", "1 while the workers run a policy.", &[]),
        BROKER_CONNECTED => ("gauge", "1 while the broker connection is up.", &[]),
        _ => ("untyped", "", &[]),
    }
}

fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn label_set(names: &[&str], values: &[String], le: Option<&str>) -> String {
    let mut pairs: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        pairs.push(format!("le=\"{le}\""));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

impl puhuri_client::CallObserver for Metrics {
    fn observe(&self, operation: &'static str, status: Option<u16>, elapsed: Duration) {
        self.puhuri_call(operation, status, elapsed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_escapes_labels() {
        let metrics = Metrics::new();
        metrics.notification("sim", "rejected", "bad-signature");
        metrics.notification("sim", "rejected", "bad-signature");
        metrics.notification("a\"b", "accepted", "");
        metrics.confirm(Duration::from_millis(3));
        let text = metrics.render(&[]);
        assert!(text.contains(
            "puhuri_approver_notifications_total{source=\"sim\",outcome=\"rejected\",cause=\"bad-signature\"} 2"
        ));
        assert!(text.contains("source=\"a\\\"b\""));
        assert!(text.contains("puhuri_approver_confirm_duration_seconds_bucket{le=\"0.0025\"} 0"));
        assert!(text.contains("puhuri_approver_confirm_duration_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("puhuri_approver_confirm_duration_seconds_bucket{le=\"+Inf\"} 1"));
        assert!(text.contains("puhuri_approver_confirm_duration_seconds_count 1"));
        for name in METRIC_NAMES {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
    }

    #[test]
    fn knows_histogram_series_names() {
        assert!(is_exported(
            "puhuri_approver_puhuri_request_duration_seconds_bucket"
        ));
        assert!(is_exported(DECISIONS));
        assert!(!is_exported("puhuri_approver_decisions_total_bucket"));
        assert!(!is_exported("puhuri_approver_nothing"));
    }

    #[test]
    fn puhuri_is_unreachable_only_after_a_failure_without_recent_success() {
        let metrics = Metrics::new();
        assert!(metrics.puhuri_reachable());
        metrics.puhuri_call("get order", None, Duration::from_millis(1));
        assert!(!metrics.puhuri_reachable());
        metrics.puhuri_call("get order", Some(404), Duration::from_millis(1));
        assert!(metrics.puhuri_reachable());
    }
}
