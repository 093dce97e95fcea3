//! Metrics: counters, gauges and histograms of the `prometheus-client` crate with fixed
//! label sets, served in the Prometheus text format 0.0.4 (`GET /metrics`).
//!
//! One [`Metrics`] is created per started service (`app::start`) and shared by `Arc` with
//! the receiver, the workers, the reconciler and the Puhuri Core client; it owns its own
//! `Registry` and nothing is global, so several services in one process keep separate
//! numbers.
//!
//! INVARIANT: every exported name is in [`METRIC_NAMES`], registered under that name (a
//! counter without its `_total`, which the encoder appends); the deployment artifacts
//! (dashboard, alert rules) are checked against that list by the tests.
//! INVARIANT: every name is described (`# HELP`, `# TYPE`) on every scrape, also before
//! its first sample.
//! INVARIANT: label values are bounded and never secret: configured source names (or
//! `unknown`), refusal causes, policy rule names, Puhuri Core operation names, HTTP
//! status codes, tier numbers. A user-supplied path segment never becomes a label.
//! INVARIANT: hot paths take one family's read lock per observation (its write lock the
//! first time a label set is seen) and add atomically; queue depths and broker state are
//! read at scrape time, not on the hot path.

use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeGaugeValue, EncodeMetric, MetricEncoder, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};
use puhuri_queue::Broker;

/// The `Content-Type` of `/metrics`: the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

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
/// List pages the reconciler tried again within a pass after a transient failure.
pub const RECONCILE_PAGE_RETRIES: &str = "puhuri_approver_reconcile_page_retries_total";
/// Dead letters the reconciler removed because their allocation no longer waits.
pub const DEAD_LETTERS_RESOLVED: &str = "puhuri_approver_dead_letters_resolved_total";
/// Policies reloaded after start.
pub const POLICY_RELOADS: &str = "puhuri_approver_policy_reloads_total";
/// Policy files refused (the running policy stayed).
pub const POLICY_RELOAD_FAILURES: &str = "puhuri_approver_policy_reload_failures_total";
/// `1` while a policy is loaded by this process's workers.
pub const POLICY_LOADED: &str = "puhuri_approver_policy_loaded";
/// `1` while the broker connection is up (the embedded queue is always up).
pub const BROKER_CONNECTED: &str = "puhuri_approver_broker_connected";
/// Publishes RabbitMQ refused (nack), each published again while `amqp.confirm_timeout_ms`
/// allowed (a quorum queue refuses them for seconds after losing its leader's node).
pub const BROKER_NACKS: &str = "puhuri_approver_broker_nacks_total";
/// Usage records settled by the workers, by `outcome` (`reported`, `unchanged`, `stale`,
/// `dead-lettered`, `retried`).
pub const USAGE_RECORDS: &str = "puhuri_approver_usage_records_total";
/// `set_usage` calls that reported at least one changed component.
pub const USAGE_REPORTS: &str = "puhuri_approver_usage_reports_total";
/// Team events published, by `type` (`team.snapshot`, `team.changed`).
pub const TEAM_EVENTS: &str = "puhuri_approver_team_events_total";
/// Puhuri Core calls open now in this process (at most `puhuri.max_in_flight`).
pub const PUHURI_IN_FLIGHT: &str = "puhuri_approver_puhuri_in_flight";
/// Calls that found every `puhuri.max_in_flight` slot taken and waited for one.
pub const PUHURI_SLOT_WAITS: &str = "puhuri_approver_puhuri_slot_waits_total";
/// 1 while Puhuri Core accepts the token; 0 after a 401 until a re-probe succeeds.
pub const PUHURI_AUTH_OK: &str = "puhuri_approver_puhuri_auth_ok";
/// 1 while the circuit to Puhuri Core is open (a refused token, or sustained 5xx and
/// timeouts) and workers take no new deliveries.
pub const PUHURI_CIRCUIT_OPEN: &str = "puhuri_approver_puhuri_circuit_open";
/// Allocations held for a person, as the review queue's last listing or refresh found them.
pub const REVIEW_HELD: &str = "puhuri_approver_review_held";
/// Age in seconds of the oldest held allocation at the review queue's last listing or refresh.
pub const REVIEW_OLDEST_AGE: &str = "puhuri_approver_review_oldest_held_age_seconds";
/// Operators' decisions settled by the workers, by `action` (`approve`, `reject`) and
/// `outcome` (`approved`, `rejected`, `already-handled`, …).
pub const OPERATOR_DECISIONS: &str = "puhuri_approver_operator_decisions_total";
/// Requests to the review page by `route` (the matched route, never the path) and `status`.
pub const REVIEW_REQUESTS: &str = "puhuri_approver_review_requests_total";
/// Background refreshes of the review queue (`review.refresh_secs`) that failed.
pub const REVIEW_REFRESH_FAILURES: &str = "puhuri_approver_review_refresh_failures_total";

/// `1` while Waldur's event stream (`[events]`) is connected and subscribed.
pub const STOMP_CONNECTED: &str = "puhuri_approver_stomp_connected";
/// `MESSAGE` frames of the event stream by `outcome` (`queued`, `ignored`, `dead-lettered`).
pub const STOMP_FRAMES: &str = "puhuri_approver_stomp_frames_total";
/// Frames acknowledged to Waldur's broker (each only after it was durably queued).
pub const STOMP_ACKED: &str = "puhuri_approver_stomp_acked_total";
/// Frames Waldur's broker marked as redelivered (sent before, not acknowledged then).
pub const STOMP_REDELIVERED: &str = "puhuri_approver_stomp_redelivered_total";
/// Event stream sessions lost (each followed by a reconnect with backoff).
pub const STOMP_RECONNECTS: &str = "puhuri_approver_stomp_reconnects_total";
/// Seconds since the event stream's last frame (no sample before the first).
pub const STOMP_LAST_FRAME_AGE: &str = "puhuri_approver_stomp_last_frame_age_seconds";
/// How the event stream's state is read: whether it is connected, and the age of its last
/// frame in seconds (no frame yet: `None`).
pub type EventsReader = Arc<dyn Fn() -> (bool, Option<f64>) + Send + Sync>;

/// Every metric name this service exports (histograms add `_bucket`, `_sum`, `_count`),
/// in the order `/metrics` lists them.
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
    RECONCILE_PAGE_RETRIES,
    DEAD_LETTERS_RESOLVED,
    POLICY_RELOADS,
    POLICY_RELOAD_FAILURES,
    POLICY_LOADED,
    BROKER_CONNECTED,
    BROKER_NACKS,
    USAGE_RECORDS,
    USAGE_REPORTS,
    TEAM_EVENTS,
    PUHURI_IN_FLIGHT,
    PUHURI_SLOT_WAITS,
    PUHURI_AUTH_OK,
    PUHURI_CIRCUIT_OPEN,
    REVIEW_HELD,
    REVIEW_OLDEST_AGE,
    OPERATOR_DECISIONS,
    REVIEW_REQUESTS,
    STOMP_CONNECTED,
    STOMP_FRAMES,
    STOMP_ACKED,
    STOMP_REDELIVERED,
    STOMP_RECONNECTS,
    STOMP_LAST_FRAME_AGE,
    REVIEW_REFRESH_FAILURES,
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

/// Upper bounds of the latency histograms, in seconds (`+Inf` follows).
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS.iter().copied())
}

/// How long Puhuri Core may go without a good answer after a failure before `/readyz`
/// reports it unreachable.
pub const PUHURI_RECENT: Duration = Duration::from_secs(60);

/// A label set: fixed names, in the order they are rendered.
type Labels<const N: usize> = [(&'static str, String); N];

/// A family that is described on every scrape, also while it has no series yet (the
/// registry leaves out empty families otherwise).
#[derive(Debug)]
struct Described<M>(M);

impl<M: EncodeMetric> EncodeMetric for Described<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

/// A gauge read from the queue at scrape time: no sample while it could not be read.
#[derive(Clone, Debug, Default)]
struct Reading<N>(Arc<Mutex<Option<N>>>);

impl<N: Copy> Reading<N> {
    fn set(&self, value: Option<N>) {
        *lock(&self.0) = value;
    }
}

impl<N: EncodeGaugeValue + Copy> EncodeMetric for Reading<N> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        match *lock(&self.0) {
            Some(value) => encoder.encode_gauge(&value),
            None => Ok(()),
        }
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the queue told at one scrape.
#[derive(Debug, Default)]
struct QueueReading {
    connected: Option<u64>,
    depth: Option<u64>,
    dead: Option<u64>,
    oldest_age: Option<f64>,
}

/// The registry of one service.
pub struct Metrics {
    registry: Registry,
    notifications: Family<Labels<3>, Counter>,
    confirm_seconds: Histogram,
    queue_depth: Reading<u64>,
    queue_oldest_age: Reading<f64>,
    dead_letter_depth: Reading<u64>,
    decisions: Family<Labels<2>, Counter>,
    deliveries: Family<Labels<1>, Counter>,
    puhuri_requests: Family<Labels<2>, Counter>,
    puhuri_seconds: Family<Labels<1>, Histogram>,
    puhuri_last_success: Gauge<f64, AtomicU64>,
    retries: Family<Labels<1>, Counter>,
    reconcile_cycles: Family<Labels<1>, Counter>,
    reconcile_calls: Counter,
    reconcile_enqueued: Counter,
    reconcile_page_retries: Counter,
    dead_letters_resolved: Counter,
    policy_reloads: Counter,
    policy_reload_failures: Counter,
    policy_loaded: Gauge,
    broker_connected: Reading<u64>,
    broker_nacks: Counter,
    usage_records: Family<Labels<1>, Counter>,
    usage_reports: Counter,
    team_events: Family<Labels<1>, Counter>,
    puhuri_in_flight: Gauge,
    puhuri_slot_waits: Counter,
    puhuri_auth_ok: Gauge,
    puhuri_circuit_open: Gauge,
    review_held: Gauge,
    review_oldest_age: Gauge<f64, AtomicU64>,
    operator_decisions: Family<Labels<2>, Counter>,
    review_requests: Family<Labels<2>, Counter>,
    stomp_connected: Reading<u64>,
    stomp_frames: Family<Labels<1>, Counter>,
    stomp_acked: Counter,
    stomp_redelivered: Counter,
    stomp_reconnects: Counter,
    stomp_last_frame_age: Reading<f64>,
    /// Reads the event stream's state at scrape time: connected, seconds since its last frame.
    events: Mutex<Option<EventsReader>>,
    review_refresh_failures: Counter,
    /// The start-up probe's report (`/readyz`), and whether it passed.
    probe: Mutex<Option<(bool, serde_json::Value)>>,
    /// Why the circuit is open (`/readyz`): `unauthorized` or `unavailable`, and the detail.
    circuit: Mutex<Option<(&'static str, String)>>,
    runs_workers: AtomicBool,
    /// Oldest pending message's enqueue time as last seen on delivery (ms), RabbitMQ.
    last_delivered_received_ms: AtomicI64,
    /// Unix ms of the last Puhuri Core answer other than 5xx, and of the last failure.
    puhuri_ok_ms: AtomicI64,
    puhuri_failed_ms: AtomicI64,
    broker: Mutex<Option<Broker>>,
    /// Held from storing a scrape's queue reading until it is rendered.
    scraping: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Registers a handle to `metric` as `name` from [`METRIC_NAMES`]. The encoder appends
/// `_total` to a counter's name and a full stop to the help text, so neither is passed here.
fn register(registry: &mut Registry, name: &'static str, help: &str, metric: impl Metric) {
    let name = match metric.metric_type() {
        MetricType::Counter => name
            .strip_suffix("_total")
            .unwrap_or_else(|| panic!("counter {name} lacks _total")),
        _ => name,
    };
    registry.register(name, help, metric);
}

impl Metrics {
    pub fn new() -> Metrics {
        let metrics = Metrics {
            registry: Registry::default(),
            notifications: Family::default(),
            confirm_seconds: latency_histogram(),
            queue_depth: Reading::default(),
            queue_oldest_age: Reading::default(),
            dead_letter_depth: Reading::default(),
            decisions: Family::default(),
            deliveries: Family::default(),
            puhuri_requests: Family::default(),
            puhuri_seconds: Family::new_with_constructor(latency_histogram),
            puhuri_last_success: Gauge::default(),
            retries: Family::default(),
            reconcile_cycles: Family::default(),
            reconcile_calls: Counter::default(),
            reconcile_enqueued: Counter::default(),
            reconcile_page_retries: Counter::default(),
            dead_letters_resolved: Counter::default(),
            policy_reloads: Counter::default(),
            policy_reload_failures: Counter::default(),
            policy_loaded: Gauge::default(),
            broker_connected: Reading::default(),
            broker_nacks: Counter::default(),
            usage_records: Family::default(),
            usage_reports: Counter::default(),
            team_events: Family::default(),
            puhuri_in_flight: Gauge::default(),
            puhuri_slot_waits: Counter::default(),
            puhuri_auth_ok: Gauge::default(),
            puhuri_circuit_open: Gauge::default(),
            review_held: Gauge::default(),
            review_oldest_age: Gauge::default(),
            operator_decisions: Family::default(),
            review_requests: Family::default(),
            stomp_connected: Reading::default(),
            stomp_frames: Family::default(),
            stomp_acked: Counter::default(),
            stomp_redelivered: Counter::default(),
            stomp_reconnects: Counter::default(),
            stomp_last_frame_age: Reading::default(),
            events: Mutex::new(None),
            review_refresh_failures: Counter::default(),
            probe: Mutex::new(None),
            circuit: Mutex::new(None),
            runs_workers: AtomicBool::new(false),
            last_delivered_received_ms: AtomicI64::new(0),
            puhuri_ok_ms: AtomicI64::new(0),
            puhuri_failed_ms: AtomicI64::new(0),
            broker: Mutex::new(None),
            scraping: Mutex::new(()),
        };
        metrics.with_registry()
    }

    /// Fills the registry with a handle to every metric, in [`METRIC_NAMES`] order.
    fn with_registry(mut self) -> Metrics {
        let r = &mut self.registry;
        register(
            r,
            NOTIFICATIONS,
            "Notifications answered by source, outcome and refusal cause",
            Described(self.notifications.clone()),
        );
        register(
            r,
            CONFIRM_SECONDS,
            "Seconds from publish to durable confirm",
            self.confirm_seconds.clone(),
        );
        register(
            r,
            QUEUE_DEPTH,
            "Messages waiting in the work queue",
            self.queue_depth.clone(),
        );
        register(
            r,
            QUEUE_OLDEST_AGE,
            "Age in seconds of the oldest pending message (RabbitMQ: of the last delivered one while the queue is not empty)",
            self.queue_oldest_age.clone(),
        );
        register(
            r,
            DEAD_LETTER_DEPTH,
            "Messages in the dead-letter queue",
            self.dead_letter_depth.clone(),
        );
        register(
            r,
            DECISIONS,
            "Decisions by action and policy rule",
            Described(self.decisions.clone()),
        );
        register(
            r,
            DELIVERIES,
            "Deliveries settled by disposition",
            Described(self.deliveries.clone()),
        );
        register(
            r,
            PUHURI_REQUESTS,
            "Puhuri Core calls by endpoint and HTTP status (error: no answer)",
            Described(self.puhuri_requests.clone()),
        );
        register(
            r,
            PUHURI_SECONDS,
            "Latency of Puhuri Core calls by endpoint",
            Described(self.puhuri_seconds.clone()),
        );
        register(
            r,
            PUHURI_LAST_SUCCESS,
            "Unix time of the last Puhuri Core answer other than 5xx",
            self.puhuri_last_success.clone(),
        );
        register(
            r,
            RETRIES,
            "Retries scheduled by delay tier",
            Described(self.retries.clone()),
        );
        register(
            r,
            RECONCILE_CYCLES,
            "Reconcile cycles by result",
            Described(self.reconcile_cycles.clone()),
        );
        register(
            r,
            RECONCILE_CALLS,
            "Puhuri Core list calls of the reconciler",
            self.reconcile_calls.clone(),
        );
        register(
            r,
            RECONCILE_ENQUEUED,
            "Allocations enqueued by the reconciler",
            self.reconcile_enqueued.clone(),
        );
        register(
            r,
            RECONCILE_PAGE_RETRIES,
            "List pages the reconciler tried again within a pass",
            self.reconcile_page_retries.clone(),
        );
        register(
            r,
            DEAD_LETTERS_RESOLVED,
            "Dead letters removed because their allocation no longer waits",
            self.dead_letters_resolved.clone(),
        );
        register(
            r,
            POLICY_RELOADS,
            "Policies reloaded after start",
            self.policy_reloads.clone(),
        );
        register(
            r,
            POLICY_RELOAD_FAILURES,
            "Policy files refused; the running policy stayed",
            self.policy_reload_failures.clone(),
        );
        register(
            r,
            POLICY_LOADED,
            "1 while the workers run a policy",
            self.policy_loaded.clone(),
        );
        register(
            r,
            BROKER_CONNECTED,
            "1 while the broker connection is up",
            self.broker_connected.clone(),
        );
        register(
            r,
            BROKER_NACKS,
            "Publishes the broker refused (nack), each published again within the confirm timeout",
            self.broker_nacks.clone(),
        );
        register(
            r,
            USAGE_RECORDS,
            "Usage records settled by outcome",
            Described(self.usage_records.clone()),
        );
        register(
            r,
            USAGE_REPORTS,
            "set_usage calls that reported changed components",
            self.usage_reports.clone(),
        );
        register(
            r,
            TEAM_EVENTS,
            "Team events published by type",
            Described(self.team_events.clone()),
        );
        register(
            r,
            PUHURI_IN_FLIGHT,
            "Puhuri Core calls open now",
            self.puhuri_in_flight.clone(),
        );
        register(
            r,
            PUHURI_SLOT_WAITS,
            "Puhuri Core calls that waited for a free slot (puhuri.max_in_flight)",
            self.puhuri_slot_waits.clone(),
        );
        register(
            r,
            PUHURI_AUTH_OK,
            "1 while Puhuri Core accepts the token (0 after a 401 until a re-probe succeeds)",
            self.puhuri_auth_ok.clone(),
        );
        register(
            r,
            PUHURI_CIRCUIT_OPEN,
            "1 while consumption is paused: the token is refused or Puhuri Core keeps failing",
            self.puhuri_circuit_open.clone(),
        );
        register(
            r,
            REVIEW_HELD,
            "Allocations held for a person at the review queue's last listing or refresh",
            self.review_held.clone(),
        );
        register(
            r,
            REVIEW_OLDEST_AGE,
            "Age in seconds of the oldest held allocation at the review queue's last listing or refresh",
            self.review_oldest_age.clone(),
        );
        register(
            r,
            OPERATOR_DECISIONS,
            "Operators' decisions settled by the workers, by action and outcome",
            Described(self.operator_decisions.clone()),
        );
        register(
            r,
            REVIEW_REQUESTS,
            "Requests to the review page by route and HTTP status",
            Described(self.review_requests.clone()),
        );
        register(
            r,
            STOMP_CONNECTED,
            "1 while Waldur's event stream is connected and subscribed",
            self.stomp_connected.clone(),
        );
        register(
            r,
            STOMP_FRAMES,
            "Event stream MESSAGE frames by outcome",
            Described(self.stomp_frames.clone()),
        );
        register(
            r,
            STOMP_ACKED,
            "Event stream frames acknowledged after they were durably queued",
            self.stomp_acked.clone(),
        );
        register(
            r,
            STOMP_REDELIVERED,
            "Event stream frames the broker marked as redelivered",
            self.stomp_redelivered.clone(),
        );
        register(
            r,
            STOMP_RECONNECTS,
            "Event stream sessions lost and reconnected",
            self.stomp_reconnects.clone(),
        );
        register(
            r,
            STOMP_LAST_FRAME_AGE,
            "Seconds since the event stream's last frame",
            self.stomp_last_frame_age.clone(),
        );
        register(
            r,
            REVIEW_REFRESH_FAILURES,
            "Background refreshes of the review queue that failed",
            self.review_refresh_failures.clone(),
        );
        self
    }

    /// The review queue as a listing found it: how many are held, the oldest's age.
    pub fn review_listed(&self, held: usize, oldest_age_secs: f64) {
        self.review_held
            .set(i64::try_from(held).unwrap_or(i64::MAX));
        self.review_oldest_age.set(oldest_age_secs);
    }

    /// A background refresh of the review queue failed.
    pub fn review_refresh_failed(&self) {
        self.review_refresh_failures.inc();
    }

    /// An operator's decision, settled.
    pub fn operator_decision(&self, action: &str, outcome: &str) {
        let labels = [
            ("action", action.to_owned()),
            ("outcome", outcome.to_owned()),
        ];
        self.operator_decisions.get_or_create(&labels).inc();
    }

    /// One answered request of the review page.
    pub fn review_request(&self, route: &str, status: u16) {
        let labels = [("route", route.to_owned()), ("status", status.to_string())];
        self.review_requests.get_or_create(&labels).inc();
    }

    /// The event stream whose state `/metrics` and `/readyz` report.
    pub fn attach_events(&self, reader: EventsReader) {
        self.stomp_connected.set(Some(0));
        *lock(&self.events) = Some(reader);
    }

    /// Whether the event stream is connected: `None` where none runs.
    pub fn events_connected(&self) -> Option<bool> {
        lock(&self.events).as_ref().map(|read| read().0)
    }

    /// One `MESSAGE` frame of the event stream: `queued`, `ignored` or `dead-lettered`.
    pub fn stomp_frame(&self, outcome: &'static str, redelivered: bool) {
        self.stomp_frames
            .get_or_create(&[("outcome", outcome.to_owned())])
            .inc();
        if redelivered {
            self.stomp_redelivered.inc();
        }
    }

    pub fn stomp_acked(&self) {
        self.stomp_acked.inc();
    }

    pub fn stomp_reconnect(&self) {
        self.stomp_reconnects.inc();
    }

    /// Records the start-up probe for `/readyz`: `passed` and what it found (or why not).
    pub fn set_probe(&self, passed: bool, report: serde_json::Value) {
        *lock(&self.probe) = Some((passed, report));
    }

    /// The start-up probe: whether it passed and its report; `None` before it ran or where
    /// no workers run.
    pub fn probe(&self) -> Option<(bool, serde_json::Value)> {
        lock(&self.probe).clone()
    }

    /// Records the circuit's state: `Some((kind, detail))` while open.
    pub fn set_circuit(&self, open: Option<(&'static str, String)>) {
        let unauthorized = matches!(&open, Some(("unauthorized", _)));
        self.puhuri_auth_ok.set(i64::from(!unauthorized));
        self.puhuri_circuit_open.set(i64::from(open.is_some()));
        *lock(&self.circuit) = open;
    }

    /// Why the circuit is open, when it is.
    pub fn circuit(&self) -> Option<(&'static str, String)> {
        lock(&self.circuit).clone()
    }

    /// The queue whose depths are read at scrape time.
    pub fn attach_broker(&self, broker: Broker) {
        *lock(&self.broker) = Some(broker);
    }

    /// A notification answered: `outcome` and, for refusals, the problem cause.
    pub fn notification(&self, source: &str, outcome: &str, cause: &str) {
        let labels = [
            ("source", source.to_owned()),
            ("outcome", outcome.to_owned()),
            ("cause", cause.to_owned()),
        ];
        self.notifications.get_or_create(&labels).inc();
    }

    /// The time a publish took to be confirmed.
    pub fn confirm(&self, elapsed: Duration) {
        self.confirm_seconds.observe(elapsed.as_secs_f64());
    }

    /// A delivery taken by a worker, with its notification's `received_at_ms`.
    pub fn delivered(&self, received_at_ms: i64) {
        self.last_delivered_received_ms
            .store(received_at_ms, Ordering::Relaxed);
    }

    /// A settled delivery: its disposition and, when decided, the action and rule.
    pub fn settled(&self, disposition: &str, decision: Option<(&str, &str)>) {
        let labels = [("disposition", disposition.to_owned())];
        self.deliveries.get_or_create(&labels).inc();
        if let Some((action, rule)) = decision {
            let labels = [("action", action.to_owned()), ("rule", rule.to_owned())];
            self.decisions.get_or_create(&labels).inc();
        }
    }

    /// A retry scheduled into delay tier `tier` (1-based).
    pub fn retry(&self, tier: u32) {
        self.retries
            .get_or_create(&[("tier", tier.to_string())])
            .inc();
    }

    /// One Puhuri Core call: the operation, its HTTP status (`None`: no answer) and time.
    pub fn puhuri_call(&self, endpoint: &str, status: Option<u16>, elapsed: Duration) {
        let status_label = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        let labels = [("endpoint", endpoint.to_owned()), ("status", status_label)];
        self.puhuri_requests.get_or_create(&labels).inc();
        let [endpoint, _] = labels;
        self.puhuri_seconds
            .get_or_create(&[endpoint])
            .observe(elapsed.as_secs_f64());
        let now = now_ms();
        match status {
            Some(code) if code < 500 => {
                self.puhuri_ok_ms.store(now, Ordering::Relaxed);
                self.puhuri_last_success.set(now as f64 / 1000.0);
            }
            _ => self.puhuri_failed_ms.store(now, Ordering::Relaxed),
        }
    }

    /// One reconcile cycle: whether it succeeded, its list calls and what it enqueued.
    pub fn reconcile_cycle(&self, ok: bool, calls: usize, enqueued: usize) {
        let result = if ok { "ok" } else { "error" };
        self.reconcile_cycles
            .get_or_create(&[("result", result.to_owned())])
            .inc();
        self.reconcile_calls.inc_by(calls as u64);
        self.reconcile_enqueued.inc_by(enqueued as u64);
    }

    /// `n` list pages tried again within a reconcile pass.
    pub fn reconcile_page_retries(&self, n: usize) {
        self.reconcile_page_retries.inc_by(n as u64);
    }

    /// `n` dead letters removed because their allocation no longer waits.
    pub fn dead_letters_resolved(&self, n: usize) {
        self.dead_letters_resolved.inc_by(n as u64);
    }

    /// `n` usage records settled with `outcome`.
    pub fn usage_records(&self, outcome: &str, n: usize) {
        let labels = [("outcome", outcome.to_owned())];
        self.usage_records.get_or_create(&labels).inc_by(n as u64);
    }

    /// One `set_usage` call that reported changed components.
    pub fn usage_report(&self) {
        self.usage_reports.inc();
    }

    /// A team event published.
    pub fn team_event(&self, event_type: &str) {
        let labels = [("type", event_type.to_owned())];
        self.team_events.get_or_create(&labels).inc();
    }

    /// A policy reload attempt after start.
    pub fn policy_reload(&self, ok: bool) {
        if ok {
            self.policy_reloads.inc();
        } else {
            self.policy_reload_failures.inc();
        }
    }

    /// The workers of this process run a policy.
    pub fn policy_loaded(&self) {
        self.policy_loaded.set(1);
    }

    /// This process runs workers: readiness checks the policy and Puhuri Core.
    pub fn expect_workers(&self) {
        self.runs_workers.store(true, Ordering::Relaxed);
        self.puhuri_auth_ok.set(1);
    }

    pub fn runs_workers(&self) -> bool {
        self.runs_workers.load(Ordering::Relaxed)
    }

    /// Whether the attached broker is connected (`false` when none is attached).
    pub fn broker_connected(&self) -> bool {
        lock(&self.broker)
            .as_ref()
            .is_some_and(Broker::is_connected)
    }

    pub fn is_policy_loaded(&self) -> bool {
        self.policy_loaded.get() == 1
    }

    /// `false` when the last Puhuri Core call failed and no good answer came within
    /// [`PUHURI_RECENT`]; `true` before any call (nothing is known to be wrong).
    pub fn puhuri_reachable(&self) -> bool {
        let ok = self.puhuri_ok_ms.load(Ordering::Relaxed);
        let failed = self.puhuri_failed_ms.load(Ordering::Relaxed);
        failed == 0 || ok >= failed || now_ms() - ok <= PUHURI_RECENT.as_millis() as i64
    }

    /// Reads the scrape-time gauges from the attached queue, then renders everything.
    pub async fn scrape(&self) -> String {
        let broker = lock(&self.broker).clone();
        let reading = match &broker {
            Some(broker) => self.read_queue(broker).await,
            None => QueueReading::default(),
        };
        let _one_scrape = lock(&self.scraping);
        // The broker counts; the counter follows it (it only grows).
        let nacks = broker.as_ref().map_or(0, Broker::publish_nacks);
        let counted = self.broker_nacks.get();
        if nacks > counted {
            self.broker_nacks.inc_by(nacks - counted);
        }
        self.broker_connected.set(reading.connected);
        self.queue_depth.set(reading.depth);
        self.dead_letter_depth.set(reading.dead);
        self.queue_oldest_age.set(reading.oldest_age);
        if let Some(read) = lock(&self.events).clone() {
            let (connected, age) = read();
            self.stomp_connected.set(Some(u64::from(connected)));
            self.stomp_last_frame_age.set(age);
        }
        self.render()
    }

    /// Broker state always; depths and the oldest pending age only while connected.
    async fn read_queue(&self, broker: &Broker) -> QueueReading {
        let connected = broker.is_connected();
        let mut reading = QueueReading {
            connected: Some(u64::from(connected)),
            ..QueueReading::default()
        };
        if !connected {
            return reading;
        }
        reading.depth = broker.work_depth().await.ok();
        reading.dead = broker.dead_depth().await.ok();
        let oldest = match broker.oldest_pending_ms().await {
            Ok(Some(at)) => Some(at),
            // RabbitMQ: the last delivered message's age stands in while the queue is
            // not empty.
            Ok(None) if broker.is_embedded() => None,
            _ => match self.last_delivered_received_ms.load(Ordering::Relaxed) {
                0 => None,
                _ if reading.depth == Some(0) => None,
                at => Some(at),
            },
        };
        reading.oldest_age =
            Some(oldest.map_or(0.0, |at| ((now_ms() - at).max(0)) as f64 / 1000.0));
        reading
    }

    /// The registry in the Prometheus text format 0.0.4.
    fn render(&self) -> String {
        let mut text = String::new();
        if prometheus_text::encode(&mut text, &self.registry).is_err() {
            tracing::error!("metrics could not be rendered");
        }
        text
    }
}

impl puhuri_client::CallObserver for Metrics {
    fn observe(&self, operation: &'static str, status: Option<u16>, elapsed: Duration) {
        self.puhuri_call(operation, status, elapsed);
    }

    fn waited_for_slot(&self, _waited: Duration) {
        self.puhuri_slot_waits.inc();
    }

    fn in_flight(&self, open: usize) {
        self.puhuri_in_flight.set(open as i64);
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
        metrics.reconcile_cycle(true, 2, 1);
        metrics.team_event("team.changed");
        let text = metrics.render();
        assert!(text.contains(
            "puhuri_approver_notifications_total{source=\"sim\",outcome=\"rejected\",cause=\"bad-signature\"} 2\n"
        ));
        assert!(text.contains("source=\"a\\\"b\""));
        assert!(
            text.contains("puhuri_approver_confirm_duration_seconds_bucket{le=\"0.0025\"} 0\n")
        );
        assert!(text.contains("puhuri_approver_confirm_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("puhuri_approver_confirm_duration_seconds_bucket{le=\"10\"} 1\n"));
        assert!(text.contains("puhuri_approver_confirm_duration_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(text.contains("puhuri_approver_confirm_duration_seconds_count 1\n"));
        assert!(text.contains("puhuri_approver_reconcile_cycles_total{result=\"ok\"} 1\n"));
        assert!(text.contains("puhuri_approver_reconcile_calls_total 2\n"));
        assert!(text.contains("puhuri_approver_team_events_total{type=\"team.changed\"} 1\n"));
        assert!(text.contains(
            "# HELP puhuri_approver_notifications_total Notifications answered by source, outcome and refusal cause.\n"
        ));
    }

    #[test]
    fn describes_every_name_in_order_before_any_sample() {
        let metrics = Metrics::new();
        let text = metrics.render();
        let types: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split_once(' '))
            .collect();
        let names: Vec<&str> = types.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, METRIC_NAMES);
        for (name, kind) in types {
            let expected = if HISTOGRAMS.contains(&name) {
                "histogram"
            } else if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            assert_eq!(kind, expected, "{name}");
        }
        // Nothing was read from a queue: the scrape-time gauges have no sample.
        for name in [QUEUE_DEPTH, DEAD_LETTER_DEPTH, BROKER_CONNECTED] {
            assert!(!text.contains(&format!("\n{name} ")), "{name}");
        }
        assert!(text.contains("\npuhuri_approver_policy_loaded 0\n"));
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
