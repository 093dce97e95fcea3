//! `puhuri-bench`: measured speed of the whole path, with a broker baseline
//! measured in the same run.
//!
//! The bench process runs the Puhuri Core simulator and an open-loop load generator; the
//! service runs as a child process (`puhuri-approver serve`, the executable beside this one, with a
//! generated config), so its RSS and CPU time are read from `/proc/<pid>` apart from the
//! generator's. Per queue backend it measures, in order:
//! 1. **receive**: the receiver alone (`puhuri-approver receive`, no workers, on a queue of
//!    its own), as many signed notifications with unique bodies as accepted,
//!    `--concurrency` in flight: its rate is compared with the RabbitMQ baseline
//!    measured in the same run with the same message size, confirm channels and
//!    in-flight count, and its CPU per notification is the receiver's cost;
//! 2. idle RSS of a fresh `serve` process once ready (no team watcher, no reconciler: a
//!    process that lists nothing), and how much of it is mapped files (code);
//! 3. **rate**: `--rate` notifications per second (open loop: latency counts from the
//!    intended send time, so a stalled service cannot hide its stall);
//! 4. **latency**: `--upstream-rate` (low) with `--upstream-latency-ms` L added to every
//!    simulator call: the time to a decision against its `3 × L + 5` ms target;
//! 5. **ingest**: the whole pipeline, as many notifications as accepted (after the paced
//!    phases, so that their peak RSS is not its backlog's);
//! 6. **burst**: `--burst` allocations created, then notified all at once, with the same
//!    latency, drained under `puhuri.max_in_flight` (`--max-in-flight`): the drain time
//!    against the cap's ideal, `N × calls per decision × L / cap`;
//! 7. RSS once idle again after the load.
//!
//! Each phase prints the service's CPU (user + system, `/proc/<pid>/stat`) per accepted
//! notification and per decision, its peak RSS (`VmHWM`, reset per phase), and the
//! Puhuri Core calls the simulator answered per decision and at most at once.
//!
//! Every notification of a deciding phase names an allocation created in the simulator
//! just before (without its hook), which the example policy approves; end-to-end latency
//! is from the intended send time to the simulator recording the `approve_by_provider`
//! call of that order. On RabbitMQ, a plain lapin publisher with confirms into an
//! identical queue gives the baseline (`baseline.rs`). Last, the reconciler lists
//! `--reconcile` pending allocations, counting its list calls against one per page of 100
//! plus one.
//!
//! INVARIANT: a benchmark, not a test: nothing here asserts on timings; figures are
//! printed and written as JSON. Every RabbitMQ queue and exchange the bench creates has
//! a unique prefix and is deleted at the end; the child is stopped with SIGTERM (by its
//! own pid) and killed only if it does not exit.

mod baseline;
mod cpu;
pub mod stats;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use puhuri_approver::notification::{AllocationHint, Envelope, WaldurUuid, WorkItem};
use puhuri_auth::Secret;
use puhuri_auth::signature::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, WebhookSecret};
use puhuri_sim::{Faults, NewAllocation, Sim, SimConfig, WaldurVersion};
use stats::Summary;

/// Which queue backends to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    Rabbitmq,
    Embedded,
    Both,
}

/// What the bench should do.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub backend: BackendChoice,
    /// Notifications per second of the rate phase.
    pub rate: f64,
    /// Length of each load phase.
    pub duration: Duration,
    /// Added to every simulator call in the latency and burst phases; 0 skips both.
    pub upstream_latency_ms: u64,
    /// Notifications per second of the latency phase (low: the phase measures the time
    /// to a decision, not throughput).
    pub upstream_rate: f64,
    /// Notifications sent at once in the burst phase; 0 skips it.
    pub burst: usize,
    /// `puhuri.max_in_flight` of the service under test: the cap the burst drains under.
    pub max_in_flight: usize,
    /// `team.snapshot_on_approval` of the service under test (a GET and an event per
    /// approval when on).
    pub team_snapshots: bool,
    /// Requests in flight in the ingest phase (and publishes in flight of the baseline).
    pub concurrency: usize,
    /// `worker.prefetch` of the service under test.
    pub prefetch: u16,
    /// Pending allocations listed by the reconcile measurement; 0 skips it.
    pub reconcile: usize,
    pub json: Option<PathBuf>,
    /// RabbitMQ URL (credentials: never printed).
    pub amqp_url: Secret,
}

/// How long the bench waits for the decisions of a phase after its last request.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Requests the generator keeps open at most in the open-loop phases.
const MAX_OPEN_REQUESTS: usize = 4096;
const EXAMPLE_POLICY: &str = include_str!("../../../deploy/local/policy.toml");
/// The example policy reads `customer.country`, which only the customers file fills.
const EXAMPLE_CUSTOMERS: &str = include_str!("../../../deploy/local/customers.toml");
/// Confirm channels of the service's publisher and of the baseline: the same for both.
const PUBLISH_CHANNELS: usize = 4;
/// Puhuri Core calls on the critical path of an approval: one GET, `set_backend_id`,
/// `approve_by_provider`.
const APPROVAL_ROUND_TRIPS: f64 = 3.0;
/// What the latency phase's e2e p50 should stay within: `3 × L + 5` ms.
const LATENCY_SLACK_MS: f64 = 5.0;

/// The whole report, as written to `--json`.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub options: ReportOptions,
    pub baseline: Option<baseline::BaselineReport>,
    pub backends: Vec<BackendReport>,
    pub reconcile: Option<ReconcileReport>,
}

#[derive(Debug, Serialize)]
pub struct ReportOptions {
    pub rate: f64,
    pub duration_secs: f64,
    pub upstream_latency_ms: u64,
    pub upstream_rate: f64,
    pub burst: usize,
    pub max_in_flight: usize,
    pub team_snapshots: bool,
    pub publish_channels: usize,
    pub concurrency: usize,
    pub prefetch: u16,
    pub reconcile: usize,
}

#[derive(Debug, Serialize)]
pub struct BackendReport {
    pub backend: String,
    /// RSS of the `serve` process once ready, before any load.
    pub idle_rss_kib: u64,
    /// The part of it that maps files (the executable's code and libraries), not heap.
    pub idle_rss_file_kib: u64,
    /// RSS of the receiver-only (`receive`) process once ready, before any load.
    pub receiver_idle_rss_kib: u64,
    /// RSS of the `serve` process after its phases, once its queue is drained.
    pub rss_after_load_kib: u64,
    /// The receiver alone (`receive`, no workers): as many notifications as accepted.
    pub receive: Option<PhaseReport>,
    /// The receiver-only rate over the baseline's confirmed-publish rate (same message
    /// size, confirm channels and in-flight count); RabbitMQ only.
    pub receive_share_of_baseline: Option<f64>,
    /// Whole-pipeline ingest rate over the baseline's rate (receive and decide on the
    /// same cores: not the receiver's share).
    pub ratio_to_baseline: Option<f64>,
    /// Service CPU per decision of the rate phase less the receiver's share (the
    /// receiver-only phase's CPU per notification).
    pub worker_cpu_us_per_decision: Option<f64>,
    pub phases: Vec<PhaseReport>,
}

#[derive(Debug, Serialize)]
pub struct PhaseReport {
    pub name: String,
    /// Target rate; `None` for as fast as accepted.
    pub target_rate: Option<f64>,
    pub sent: usize,
    pub accepted: usize,
    pub accepted_per_sec: f64,
    pub decided: usize,
    pub decisions_per_sec: f64,
    pub ingest: Option<Summary>,
    pub end_to_end: Option<Summary>,
    pub peak_rss_kib: u64,
    pub cpu_secs: f64,
    /// Service CPU (user + system) per accepted notification, in µs.
    pub cpu_us_per_notification: Option<f64>,
    /// Service CPU per decision, in µs (receiving included).
    pub cpu_us_per_decision: Option<f64>,
    /// The local RabbitMQ node's CPU per accepted notification, in µs (when the bench's
    /// broker URL is a loopback one and exactly one node runs on this machine).
    pub broker_cpu_us_per_notification: Option<f64>,
    /// The bench process's CPU per accepted notification, in µs: the load generator and
    /// the simulator it hosts.
    pub bench_cpu_us_per_notification: Option<f64>,
    /// Latency added to every Puhuri Core call during the phase.
    pub upstream_latency_ms: u64,
    /// Puhuri Core calls answered during the phase per decision (follow-ups included).
    pub calls_per_decision: Option<f64>,
    /// The most Puhuri Core calls the simulator answered at once during the phase.
    pub peak_upstream_in_flight: usize,
    /// Latency phase: the e2e p50 it should stay within, `3 × L + 5` ms.
    pub e2e_p50_target_ms: Option<f64>,
    /// Burst phase: first notification sent to last decision.
    pub drain_secs: Option<f64>,
    /// Burst phase: `N × calls per decision × L / max_in_flight`.
    pub ideal_drain_secs: Option<f64>,
    /// Burst phase: the ideal with only the 3 calls of an approval's critical path.
    pub ideal_drain_secs_critical: Option<f64>,
    pub errors: BTreeMap<String, usize>,
}

#[derive(Debug, Serialize)]
pub struct ReconcileReport {
    pub allocations_created: usize,
    pub create_secs: f64,
    pub pending: usize,
    pub list_calls: usize,
    /// The most list calls the pending allocations may take: one per page of 100, plus
    /// one.
    pub list_calls_bound: usize,
    pub list_secs: f64,
    pub enqueued: usize,
    pub cycle_secs: f64,
}

/// Runs the bench and prints its table.
pub async fn run(options: BenchOptions) -> anyhow::Result<()> {
    let token = uuid::Uuid::new_v4().simple().to_string();
    let secret_text = WebhookSecret::generate_text();
    let secret =
        WebhookSecret::parse(&secret_text).map_err(|e| anyhow::anyhow!("bench secret: {e}"))?;
    let sim_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen for the simulator")?;
    let sim_addr = sim_listener.local_addr()?;
    let sim = Sim::new(SimConfig {
        tokens: vec![Secret::new(token.clone())],
        hook: None,
        seed: true,
        public_url: Some(format!("http://{sim_addr}")),
        waldur: WaldurVersion::V7_0,
    });
    let stop = CancellationToken::new();
    let sim_task = tokio::spawn(sim.clone().serve(sim_listener, stop.clone()));
    let approvals = Approvals::watch(&sim, stop.clone());
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let work_dir = std::env::temp_dir().join(format!("puhuri-approver-bench-{run_id}"));
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("{}: cannot create", work_dir.display()))?;
    let env = BenchEnv {
        token,
        secret: secret_text,
        amqp_url: options.amqp_url.expose().to_owned(),
    };
    let context = Context_ {
        sim: sim.clone(),
        sim_addr,
        secret,
        approvals,
        env,
        work_dir: work_dir.clone(),
        run_id,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(MAX_OPEN_REQUESTS)
            .timeout(Duration::from_secs(30))
            .build()?,
    };

    let result = run_all(&options, &context).await;
    stop.cancel();
    let _ = sim_task.await;
    let _ = std::fs::remove_dir_all(&work_dir);
    let report = result?;
    print_report(&report);
    if let Some(path) = &options.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("{}: cannot write", path.display()))?;
        println!("\nJSON written to {}", path.display());
    }
    Ok(())
}

/// Everything one run shares (named apart from `anyhow::Context`).
struct Context_ {
    sim: Sim,
    sim_addr: std::net::SocketAddr,
    secret: WebhookSecret,
    approvals: Approvals,
    env: BenchEnv,
    work_dir: PathBuf,
    run_id: String,
    http: reqwest::Client,
}

async fn run_all(options: &BenchOptions, cx: &Context_) -> anyhow::Result<BenchReport> {
    let backends: &[&str] = match options.backend {
        BackendChoice::Rabbitmq => &["rabbitmq"],
        BackendChoice::Embedded => &["embedded"],
        BackendChoice::Both => &["rabbitmq", "embedded"],
    };
    let mut report = BenchReport {
        options: ReportOptions {
            rate: options.rate,
            duration_secs: options.duration.as_secs_f64(),
            upstream_latency_ms: options.upstream_latency_ms,
            upstream_rate: options.upstream_rate,
            burst: options.burst,
            max_in_flight: options.max_in_flight,
            team_snapshots: options.team_snapshots,
            publish_channels: PUBLISH_CHANNELS,
            concurrency: options.concurrency,
            prefetch: options.prefetch,
            reconcile: options.reconcile,
        },
        baseline: None,
        backends: Vec::new(),
        reconcile: None,
    };
    cpu::set_broker_url(options.amqp_url.expose());
    if backends.contains(&"rabbitmq") {
        eprintln!(
            "bench: broker baseline ({} s)",
            options.duration.as_secs_f64()
        );
        let body = queue_message_size_body();
        report.baseline = Some(
            baseline::run(
                options.amqp_url.expose(),
                &format!("puhuri-approver-bench-{}.baseline", cx.run_id),
                body,
                options.concurrency,
                PUBLISH_CHANNELS,
                options.duration,
            )
            .await?,
        );
    }
    for backend in backends {
        let mut measured = run_backend(options, cx, backend).await?;
        if let Some(baseline) = report.baseline.as_ref().filter(|b| b.per_sec > 0.0) {
            if let Some(ingest) = measured.phases.iter().find(|p| p.name == "ingest") {
                measured.ratio_to_baseline = Some(ingest.accepted_per_sec / baseline.per_sec);
            }
            if *backend == "rabbitmq"
                && let Some(receive) = &measured.receive
            {
                measured.receive_share_of_baseline =
                    Some(receive.accepted_per_sec / baseline.per_sec);
            }
        }
        report.backends.push(measured);
    }
    if options.reconcile > 0 {
        eprintln!(
            "bench: reconcile of {} pending allocations",
            options.reconcile
        );
        report.reconcile = Some(reconcile(options, cx).await?);
    }
    Ok(report)
}

/// A queue message the size of the service's: the envelope of a realistic work item.
fn queue_message_size_body() -> Vec<u8> {
    let uuid = || WaldurUuid::parse(&uuid::Uuid::new_v4().simple().to_string());
    let item = WorkItem {
        id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
        source: "bench".into(),
        event_type: "allocation.created".into(),
        hint: AllocationHint {
            order_uuid: uuid().map(Into::into),
            resource_uuid: uuid().map(Into::into),
        },
        received_at_ms: 1_764_201_600_000,
    };
    Envelope::encode(&item).unwrap_or_default()
}

// ----- the service under test -----

/// The service's credentials, given to the child through its environment and to the
/// in-process reconciler through the config parser.
struct BenchEnv {
    token: String,
    secret: String,
    amqp_url: String,
}

impl BenchEnv {
    fn vars(&self) -> [(&'static str, &str); 3] {
        [
            ("PUHURI_APPROVER_PUHURI_TOKEN", &self.token),
            ("PUHURI_APPROVER_SOURCE_BENCH_SECRETS", &self.secret),
            ("PUHURI_APPROVER_AMQP_URL", &self.amqp_url),
        ]
    }
}

impl puhuri_approver::config::Environment for BenchEnv {
    fn get(&self, name: &str) -> Option<String> {
        self.vars()
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_owned())
    }
}

fn service_config(
    backend: &str,
    listen: std::net::SocketAddr,
    sim_addr: std::net::SocketAddr,
    prefix: &str,
    dir: &Path,
    options: &BenchOptions,
) -> String {
    let prefetch = options.prefetch;
    let max_in_flight = options.max_in_flight;
    let team_snapshots = options.team_snapshots;
    let queue = match backend {
        "rabbitmq" => format!(
            "backend = \"rabbitmq\"\n\n[amqp]\nprefix = \"{prefix}\"\npublish_channels = {PUBLISH_CHANNELS}"
        ),
        _ => format!(
            "backend = \"embedded\"\ndata_dir = \"{}\"",
            dir.join("queue")
                .display()
                .to_string()
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
        ),
    };
    format!(
        r#"listen = "{listen}"

[queue]
{queue}

[worker]
prefetch = {prefetch}

[reconcile]
interval_secs = 0

[team]
watch_secs = 0
snapshot_on_approval = {team_snapshots}

[policy]
file = "policy.toml"
customers_file = "customers.toml"

[puhuri]
url = "http://{sim_addr}/api/"
max_in_flight = {max_in_flight}

[[sources]]
name = "bench"
format = "allocation"
auth = "standard-webhooks"
rate_limit_per_sec = 100000
"#
    )
}

/// The service as a child process.
struct Service {
    child: Child,
    pid: u32,
    stderr: PathBuf,
}

impl Service {
    /// Starts `puhuri-approver ROLE --config CONFIG` (`serve`, or `receive` alone).
    fn start(cx: &Context_, role: &str, config: &Path, dir: &Path) -> anyhow::Result<Service> {
        let exe = service_executable()?;
        let stderr = dir.join(format!("{role}.log"));
        let log = std::fs::File::create(&stderr)?;
        let mut command = Command::new(exe);
        command
            .arg(role)
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            );
        for (key, value) in cx.env.vars() {
            command.env(key, value);
        }
        let child = command.spawn().context("cannot start the service")?;
        let pid = child.id();
        Ok(Service { child, pid, stderr })
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    async fn wait_ready(&mut self, http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the service exited ({status}):\n{}", self.log_tail());
            }
            if let Ok(response) = http.get(url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the service was not ready in 30 s:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `VmRSS` or `VmHWM` of the service, in KiB.
    fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid));
        status
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|line| line.starts_with(field))
                    .and_then(|line| line.split_whitespace().nth(1))
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    }

    /// RSS once the process has been quiet for a second.
    async fn idle_rss_kib(&self) -> u64 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.memory_kib("VmRSS:")
    }

    /// Resets the peak RSS (`VmHWM`) to the current RSS.
    fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5");
    }

    /// User plus system CPU time of the service so far.
    fn cpu_secs(&self) -> f64 {
        cpu::cpu_secs_of(&self.pid.to_string()).unwrap_or(0.0)
    }

    /// SIGTERM by pid, then a kill after 15 s.
    async fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn run_backend(
    options: &BenchOptions,
    cx: &Context_,
    backend: &str,
) -> anyhow::Result<BackendReport> {
    // The receiver alone, on a queue of its own: what it accepts stays queued, unread.
    eprintln!("bench: {backend}: the receiver alone (receive), as fast as accepted");
    let prefix = format!("puhuri-approver-bench-{}.receive", cx.run_id);
    let receive = with_service(
        options,
        cx,
        backend,
        "receive",
        &prefix,
        async |service, url| {
            let idle = service.idle_rss_kib().await;
            let phase = run_phase(cx, service, url, &Phase::receive(), options).await;
            Ok((idle, phase))
        },
    )
    .await?;
    let (receiver_idle_rss_kib, receive) = receive;

    let prefix = format!("puhuri-approver-bench-{}", cx.run_id);
    with_service(options, cx, backend, "serve", &prefix, async |service, url| {
        let idle_rss_kib = service.idle_rss_kib().await;
        let idle_rss_file_kib = service.memory_kib("RssFile:");
        let mut phases = Vec::new();
        // The paced phases first, so that the rate phase's peak RSS is its own and not
        // what the backlog of the as-fast-as-accepted phase left.
        eprintln!("bench: {backend}: {} notifications/s", options.rate);
        phases.push(run_phase(cx, service, url, &Phase::rate(options.rate), options).await);
        let latency = options.upstream_latency_ms;
        if latency > 0 {
            eprintln!(
                "bench: {backend}: {} notifications/s, upstream +{latency} ms",
                options.upstream_rate
            );
            let phase = Phase::latency(options.upstream_rate, latency);
            phases.push(run_phase(cx, service, url, &phase, options).await);
        }
        eprintln!("bench: {backend}: ingest, as fast as accepted");
        phases.push(run_phase(cx, service, url, &Phase::ingest(), options).await);
        if latency > 0 && options.burst > 0 {
            eprintln!(
                "bench: {backend}: burst of {} notifications at once, upstream +{latency} ms, max_in_flight {}",
                options.burst, options.max_in_flight
            );
            let phase = Phase::burst(options.burst, latency);
            phases.push(run_phase(cx, service, url, &phase, options).await);
        }
        // Idle again, after the load: what the allocator kept.
        let rss_after_load_kib = service.idle_rss_kib().await;
        let worker_cpu_us_per_decision = phases
            .iter()
            .find(|p| p.name == "rate")
            .and_then(|p| {
                let per_notification = receive.cpu_us_per_notification?;
                let decided = p.decided as f64;
                (decided > 0.0).then(|| {
                    (p.cpu_secs * 1e6 - per_notification * p.accepted as f64) / decided
                })
            });
        Ok(BackendReport {
            backend: backend.to_owned(),
            idle_rss_kib,
            idle_rss_file_kib,
            receiver_idle_rss_kib,
            rss_after_load_kib,
            receive: Some(receive),
            receive_share_of_baseline: None,
            ratio_to_baseline: None,
            worker_cpu_us_per_decision,
            phases,
        })
    })
    .await
}

/// Runs `measure` against a fresh service process of `role` on its own queue (`prefix`,
/// or a data directory of its own), then stops it and deletes its RabbitMQ queues.
async fn with_service<T>(
    options: &BenchOptions,
    cx: &Context_,
    backend: &str,
    role: &str,
    prefix: &str,
    measure: impl AsyncFnOnce(&Service, &str) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let dir = cx.work_dir.join(format!("{backend}-{role}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("policy.toml"), EXAMPLE_POLICY)?;
    std::fs::write(dir.join("customers.toml"), EXAMPLE_CUSTOMERS)?;
    let listen = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?
    };
    let config_path = dir.join("config.toml");
    std::fs::write(
        &config_path,
        service_config(backend, listen, cx.sim_addr, prefix, &dir, options),
    )?;
    let mut service = Service::start(cx, role, &config_path, &dir)?;
    // The pid, for a profiler to attach to.
    eprintln!("bench: {backend}: `{role}` started (pid {})", service.pid);
    let result = async {
        service
            .wait_ready(&cx.http, &format!("http://{listen}/readyz"))
            .await?;
        let url = format!("http://{listen}/v1/notifications/bench");
        measure(&service, &url).await
    }
    .await;
    service.stop().await;
    if backend == "rabbitmq" {
        delete_rabbit_topology(options, cx, prefix).await;
    }
    result
}

/// Deletes the queues and exchanges of the service under test.
/// The retry tiers are those of the service's config (the defaults), so that every tier
/// queue it declared is found by name.
async fn delete_rabbit_topology(options: &BenchOptions, cx: &Context_, prefix: &str) {
    let retry_delays = match puhuri_approver::config::Config::parse("", "<bench>", &cx.env) {
        Ok(config) => config.worker.retry_delays,
        Err(_) => return,
    };
    let stop = CancellationToken::new();
    let broker = puhuri_queue::Broker::start_rabbit(
        &puhuri_approver::config::AmqpConfig {
            urls: vec![options.amqp_url.clone()],
            prefix: prefix.to_owned(),
            publish_channels: 1,
            confirm_timeout: Duration::from_secs(5),
            declare: true,
        },
        retry_delays,
        stop.clone(),
    );
    let connected = tokio::time::timeout(Duration::from_secs(10), broker.wait_connected(&stop))
        .await
        .unwrap_or(false);
    if !connected || broker.delete_topology().await.is_err() {
        eprintln!("bench: could not delete the RabbitMQ queues of prefix `{prefix}`");
    }
    stop.cancel();
}

// ----- load -----

/// What became of one notification.
struct Sent {
    order: String,
    intended: Instant,
    answered: Instant,
    outcome: Result<u16, String>,
}

/// Approval times by order uuid, fed by a task watching the simulator's recorded calls.
#[derive(Clone)]
struct Approvals {
    times: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Approvals {
    fn watch(sim: &Sim, stop: CancellationToken) -> Approvals {
        let approvals = Approvals {
            times: Arc::new(Mutex::new(HashMap::new())),
        };
        let times = approvals.times.clone();
        let sim = sim.clone();
        let mut changes = sim.watch_calls();
        tokio::spawn(async move {
            let mut cursor = 0;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    changed = changes.changed() => if changed.is_err() { return },
                }
                let calls = sim.calls_since(cursor);
                cursor += calls.len();
                let mut times = times.lock().unwrap_or_else(|p| p.into_inner());
                for (call, at) in calls {
                    if call.method == "POST"
                        && (200..300).contains(&call.status)
                        && let Some(order) = call
                            .path
                            .strip_suffix("/approve_by_provider/")
                            .and_then(|p| p.rsplit('/').next())
                    {
                        times.entry(order.to_owned()).or_insert(at);
                    }
                }
            }
        });
        approvals
    }

    fn get(&self, order: &str) -> Option<Instant> {
        self.times
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(order)
            .copied()
    }

    /// Keeps in `orders` only those not approved yet.
    fn retain_pending(&self, orders: &mut Vec<&str>) {
        let times = self.times.lock().unwrap_or_else(|p| p.into_inner());
        orders.retain(|o| !times.contains_key(*o));
    }
}

/// Creates an allocation the example policy approves; returns `(order, resource, offering)`.
async fn new_allocation(sim: &Sim, n: u64) -> Result<(String, String, String), String> {
    let mut limits = serde_json::Map::new();
    limits.insert("cpu_k_hours".into(), 400.into());
    limits.insert("gb_k_hours".into(), 1000.into());
    let created = sim
        .create_allocation(NewAllocation {
            offering: Some("LUMI-C".into()),
            project: Some("Climate extremes".into()),
            // A name given keeps creation O(1) in the simulator.
            name: Some(format!("bench-{n}")),
            limits,
            ..NewAllocation::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        created.order_uuid,
        created.resource_uuid,
        created.offering_uuid,
    ))
}

/// Uuids no allocation has: the receiver-only phase sends unique bodies without creating
/// allocations (nothing decides them).
fn made_up_allocation() -> (String, String, String) {
    let uuid = || uuid::Uuid::new_v4().simple().to_string();
    (uuid(), uuid(), uuid())
}

/// Signs and posts the notification of a new allocation (made up when `made_up`).
async fn send_one(cx: &Context_, url: &str, n: u64, intended: Instant, made_up: bool) -> Sent {
    let ids = if made_up {
        made_up_allocation()
    } else {
        match new_allocation(&cx.sim, n).await {
            Ok(ids) => ids,
            Err(error) => {
                return Sent {
                    order: String::new(),
                    intended,
                    answered: Instant::now(),
                    outcome: Err(format!("simulator: {error}")),
                };
            }
        }
    };
    send_notification(cx, url, ids, intended).await
}

/// Signs and posts the notification of the allocation `(order, resource, offering)`.
async fn send_notification(
    cx: &Context_,
    url: &str,
    (order, resource, offering): (String, String, String),
    intended: Instant,
) -> Sent {
    let now = time::OffsetDateTime::now_utc();
    let occurred = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let body = serde_json::to_vec(&serde_json::json!({
        "type": "allocation.created",
        "order_uuid": order,
        "resource_uuid": resource,
        "offering_uuid": offering,
        "occurred_at": occurred,
    }))
    .unwrap_or_default();
    let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
    let ts = now.unix_timestamp();
    let signature = cx.secret.sign(&id, ts, &body);
    let outcome = cx
        .http
        .post(url)
        .header("content-type", "application/json")
        .header(HEADER_ID, id)
        .header(HEADER_TIMESTAMP, ts.to_string())
        .header(HEADER_SIGNATURE, signature)
        .body(body)
        .send()
        .await;
    let outcome = match outcome {
        Ok(response) => {
            let status = response.status().as_u16();
            // Read the body so the connection goes back to the pool.
            let _ = response.bytes().await;
            Ok(status)
        }
        Err(error) if error.is_timeout() => Err("timeout".into()),
        Err(error) if error.is_connect() => Err("connect".into()),
        Err(_) => Err("transport".into()),
    };
    Sent {
        order,
        intended,
        answered: Instant::now(),
        outcome,
    }
}

/// How a phase loads the service.
#[derive(Debug, Clone, Copy)]
enum Load {
    /// `options.concurrency` senders back to back for the phase's duration.
    AsFastAsAccepted,
    /// Open loop at this many notifications per second for the phase's duration.
    Rate(f64),
    /// This many allocations created first, then their notifications sent by
    /// `options.concurrency` senders back to back.
    Burst(usize),
}

/// One load phase.
#[derive(Debug, Clone)]
struct Phase {
    name: String,
    load: Load,
    /// Latency the simulator adds to every call during the phase.
    latency_ms: u64,
    /// Notifications name made-up allocations and nothing waits for decisions (the
    /// receiver-only phase).
    made_up: bool,
}

impl Phase {
    fn receive() -> Phase {
        Phase {
            name: "receive".into(),
            load: Load::AsFastAsAccepted,
            latency_ms: 0,
            made_up: true,
        }
    }

    fn ingest() -> Phase {
        Phase {
            name: "ingest".into(),
            load: Load::AsFastAsAccepted,
            latency_ms: 0,
            made_up: false,
        }
    }

    fn rate(rate: f64) -> Phase {
        Phase {
            name: "rate".into(),
            load: Load::Rate(rate),
            latency_ms: 0,
            made_up: false,
        }
    }

    fn latency(rate: f64, latency_ms: u64) -> Phase {
        Phase {
            name: format!("latency +{latency_ms} ms"),
            load: Load::Rate(rate),
            latency_ms,
            made_up: false,
        }
    }

    fn burst(count: usize, latency_ms: u64) -> Phase {
        Phase {
            name: format!("burst +{latency_ms} ms"),
            load: Load::Burst(count),
            latency_ms,
            made_up: false,
        }
    }
}

/// Runs one phase, then waits for the decisions of what it sent (unless made up).
async fn run_phase(
    cx: &Context_,
    service: &Service,
    url: &str,
    phase: &Phase,
    options: &BenchOptions,
) -> PhaseReport {
    static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let next = || SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let sent = Arc::new(Mutex::new(Vec::<Sent>::new()));
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    // A burst's allocations exist before its clock starts.
    let mut burst = Vec::new();
    if let Load::Burst(count) = phase.load {
        for _ in 0..count {
            match new_allocation(&cx.sim, next()).await {
                Ok(ids) => burst.push(ids),
                Err(error) => *errors.entry(format!("simulator: {error}")).or_default() += 1,
            }
        }
    }
    if phase.latency_ms > 0 {
        cx.sim.set_faults(Faults {
            latency_ms: phase.latency_ms,
            ..Faults::default()
        });
    }
    service.reset_peak();
    cx.sim.reset_peak_in_flight();
    let calls_before = cx.sim.api_calls();
    let cpu_before = service.cpu_secs();
    let side = cpu::SideCpu::start();
    let started = Instant::now();
    let deadline = started + options.duration;
    let made_up = phase.made_up;
    match phase.load {
        Load::AsFastAsAccepted => {
            let senders = (0..options.concurrency.max(1)).map(|_| {
                let sent = sent.clone();
                async move {
                    while Instant::now() < deadline {
                        let one = send_one(cx, url, next(), Instant::now(), made_up).await;
                        sent.lock().unwrap_or_else(|p| p.into_inner()).push(one);
                    }
                }
            });
            futures_util::future::join_all(senders).await;
        }
        Load::Burst(_) => {
            let queue = Arc::new(Mutex::new(std::mem::take(&mut burst)));
            let senders = (0..options.concurrency.max(1)).map(|_| {
                let sent = sent.clone();
                let queue = queue.clone();
                async move {
                    loop {
                        let ids = queue.lock().unwrap_or_else(|p| p.into_inner()).pop();
                        let Some(ids) = ids else { break };
                        let one = send_notification(cx, url, ids, Instant::now()).await;
                        sent.lock().unwrap_or_else(|p| p.into_inner()).push(one);
                    }
                }
            });
            futures_util::future::join_all(senders).await;
        }
        Load::Rate(rate) => {
            let interval = Duration::from_secs_f64(1.0 / rate.max(0.1));
            let total = (options.duration.as_secs_f64() * rate).ceil() as u64;
            let mut requests = futures_util::stream::FuturesUnordered::new();
            let mut i = 0u64;
            while i < total {
                if requests.len() >= MAX_OPEN_REQUESTS {
                    // The service is not keeping up: wait for an answer; the latency of
                    // the late requests still counts from their intended time.
                    requests.next().await;
                    continue;
                }
                let intended = started + interval.mul_f64(i as f64);
                tokio::select! {
                    () = tokio::time::sleep_until(intended.into()) => {
                        let sent = sent.clone();
                        let n = next();
                        requests.push(async move {
                            let one = send_one(cx, url, n, intended, made_up).await;
                            sent.lock().unwrap_or_else(|p| p.into_inner()).push(one);
                        });
                        i += 1;
                    }
                    Some(()) = requests.next(), if !requests.is_empty() => {}
                }
            }
            while requests.next().await.is_some() {}
        }
    }
    let load_secs = started.elapsed().as_secs_f64();
    let sent = std::mem::take(&mut *sent.lock().unwrap_or_else(|p| p.into_inner()));

    // Wait for the decisions of every accepted notification.
    let accepted: Vec<&str> = sent
        .iter()
        .filter(|s| s.outcome == Ok(202))
        .map(|s| s.order.as_str())
        .collect();
    let ideal_drain_secs = |calls_per_decision: f64| {
        let latency = phase.latency_ms as f64 / 1000.0;
        accepted.len() as f64 * calls_per_decision * latency / options.max_in_flight.max(1) as f64
    };
    let drain_timeout = DRAIN_TIMEOUT.max(Duration::from_secs_f64(
        4.0 * ideal_drain_secs(APPROVAL_ROUND_TRIPS + 2.0),
    ));
    if !made_up {
        let drain_deadline = Instant::now() + drain_timeout;
        // The drain time is the last approval's own; polling only ends the wait. Each poll
        // looks at the orders still pending, and a large burst is polled less often, so
        // that the bench's looking does not take the CPU the service is measured on.
        let poll = Duration::from_millis(20).max(Duration::from_micros(accepted.len() as u64));
        let mut pending = accepted.clone();
        loop {
            cx.approvals.retain_pending(&mut pending);
            if pending.is_empty() || Instant::now() >= drain_deadline {
                break;
            }
            tokio::time::sleep(poll).await;
        }
    }
    // What follows the decisions (access reports, team snapshots) and the acks.
    tokio::time::sleep(Duration::from_millis(200 + 4 * phase.latency_ms)).await;
    let cpu_secs = service.cpu_secs() - cpu_before;
    let (broker_cpu_us_per_notification, bench_cpu_us_per_notification) = side.per(accepted.len());
    let calls = cx.sim.api_calls() - calls_before;
    let peak_upstream_in_flight = cx.sim.peak_in_flight();
    let peak_rss_kib = service.memory_kib("VmHWM:");
    if phase.latency_ms > 0 {
        cx.sim.set_faults(Faults::default());
    }

    let mut ingest = Vec::new();
    let mut end_to_end = Vec::new();
    let mut last_decision = started;
    for one in &sent {
        match &one.outcome {
            Ok(202) => {
                ingest.push(one.answered.saturating_duration_since(one.intended));
                if made_up {
                    continue;
                }
                match cx.approvals.get(&one.order) {
                    Some(at) => {
                        end_to_end.push(at.saturating_duration_since(one.intended));
                        last_decision = last_decision.max(at);
                    }
                    None => {
                        *errors
                            .entry(format!("not decided within {} s", drain_timeout.as_secs()))
                            .or_default() += 1
                    }
                }
            }
            Ok(status) => *errors.entry(format!("http {status}")).or_default() += 1,
            Err(kind) => *errors.entry(kind.clone()).or_default() += 1,
        }
    }
    let decided = end_to_end.len();
    let decision_secs = last_decision
        .saturating_duration_since(started)
        .as_secs_f64();
    let per = |n: usize| (n > 0).then(|| cpu_secs * 1e6 / n as f64);
    let calls_per_decision = (decided > 0).then(|| calls as f64 / decided as f64);
    let is_burst = matches!(phase.load, Load::Burst(_));
    PhaseReport {
        name: phase.name.clone(),
        target_rate: match phase.load {
            Load::Rate(rate) => Some(rate),
            _ => None,
        },
        sent: sent.len(),
        accepted: accepted.len(),
        accepted_per_sec: accepted.len() as f64 / load_secs.max(f64::EPSILON),
        decided,
        decisions_per_sec: if decision_secs > 0.0 {
            decided as f64 / decision_secs
        } else {
            0.0
        },
        ingest: stats::summarize(ingest),
        end_to_end: stats::summarize(end_to_end),
        peak_rss_kib,
        cpu_secs,
        cpu_us_per_notification: per(accepted.len()),
        cpu_us_per_decision: per(decided),
        broker_cpu_us_per_notification,
        bench_cpu_us_per_notification,
        upstream_latency_ms: phase.latency_ms,
        calls_per_decision,
        peak_upstream_in_flight,
        e2e_p50_target_ms: (phase.latency_ms > 0 && !is_burst)
            .then_some(APPROVAL_ROUND_TRIPS * phase.latency_ms as f64 + LATENCY_SLACK_MS),
        drain_secs: (is_burst && decided > 0).then_some(decision_secs),
        ideal_drain_secs: calls_per_decision
            .filter(|_| is_burst)
            .map(ideal_drain_secs),
        ideal_drain_secs_critical: is_burst.then(|| ideal_drain_secs(APPROVAL_ROUND_TRIPS)),
        errors,
    }
}

// ----- reconcile -----

async fn reconcile(options: &BenchOptions, cx: &Context_) -> anyhow::Result<ReconcileReport> {
    let created_at = Instant::now();
    for _ in 0..options.reconcile {
        new_allocation(
            &cx.sim,
            1_000_000_000 + SEQUENCE_RECONCILE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        )
        .await
        .map_err(|e| anyhow::anyhow!("creating allocations: {e}"))?;
    }
    let create_secs = created_at.elapsed().as_secs_f64();
    let dir = cx.work_dir.join("reconcile");
    let config_text = format!(
        "[queue]\nbackend = \"embedded\"\ndata_dir = \"{}\"\n\n[puhuri]\nurl = \"http://{}/api/\"\n",
        dir.join("queue")
            .display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\""),
        cx.sim_addr
    );
    let config = puhuri_approver::config::Config::parse(&config_text, "<bench>", &cx.env)?;
    let client = config.puhuri.client()?;
    let list_started = Instant::now();
    let (_, list_calls) = client.list_pending(None).await?;
    let list_secs = list_started.elapsed().as_secs_f64();
    let stop = CancellationToken::new();
    let broker = puhuri_approver::app::open_queue(&config, stop.clone())?;
    let reconciler = puhuri_approver::reconciler::Reconciler::new(
        client,
        broker,
        Vec::new(),
        config.reconcile.clone(),
    );
    let cycle_started = Instant::now();
    let cycle = reconciler.run_cycle().await?;
    let cycle_secs = cycle_started.elapsed().as_secs_f64();
    stop.cancel();
    Ok(ReconcileReport {
        allocations_created: options.reconcile,
        create_secs,
        pending: cycle.pending,
        list_calls: list_calls.max(cycle.calls),
        list_calls_bound: cycle
            .pending
            .div_ceil(puhuri_client::PENDING_PAGE_SIZE as usize)
            + 1,
        list_secs,
        enqueued: cycle.enqueued,
        cycle_secs,
    })
}

static SEQUENCE_RECONCILE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

// ----- report -----

fn ms(summary: &Option<Summary>) -> String {
    match summary {
        Some(s) => format!(
            "{:.1} / {:.1} / {:.1} / {:.1}",
            s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms
        ),
        None => "-".into(),
    }
}

fn print_report(report: &BenchReport) {
    let o = &report.options;
    println!();
    println!(
        "puhuri-bench: phases of {:.0} s, prefetch {}, max_in_flight {}, ingest concurrency {}, {} confirm channels, team snapshots {}",
        o.duration_secs,
        o.prefetch,
        o.max_in_flight,
        o.concurrency,
        o.publish_channels,
        if o.team_snapshots { "on" } else { "off" }
    );
    let us = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
    if let Some(b) = &report.baseline {
        println!(
            "baseline: lapin publisher with confirms, quorum queue, persistent {}-byte messages, {} in flight on {} channels: {:.0} msg/s ({} errors)",
            b.message_bytes, b.in_flight, b.channels, b.per_sec, b.errors
        );
        println!(
            "  CPU per message: publisher {} µs + broker {} µs",
            us(b.publisher_cpu_us_per_message),
            us(b.broker_cpu_us_per_message)
        );
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    for backend in &report.backends {
        println!();
        println!(
            "{}: idle RSS {:.1} MiB (serve), {:.1} MiB (receive alone), {:.1} MiB after load",
            backend.backend,
            mib(backend.idle_rss_kib),
            mib(backend.receiver_idle_rss_kib),
            mib(backend.rss_after_load_kib)
        );
        if let Some(receive) = &backend.receive {
            let share = backend
                .receive_share_of_baseline
                .map(|r| format!(" = {:.0} % of the baseline (target >= 80 %)", r * 100.0))
                .unwrap_or_default();
            println!(
                "  receiver alone: {:.0} notifications/s{share}; {} µs CPU per notification (target <= 25)",
                receive.accepted_per_sec,
                us(receive.cpu_us_per_notification)
            );
            println!(
                "  CPU per notification: receiver {} µs + broker {} µs + load generator {} µs",
                us(receive.cpu_us_per_notification),
                us(receive.broker_cpu_us_per_notification),
                us(receive.bench_cpu_us_per_notification)
            );
        }
        println!(
            "  idle RSS of serve: {:.1} MiB mapped files (code), {:.1} MiB heap and stacks",
            mib(backend.idle_rss_file_kib),
            mib(backend
                .idle_rss_kib
                .saturating_sub(backend.idle_rss_file_kib))
        );
        if let Some(ratio) = backend.ratio_to_baseline {
            println!(
                "  whole pipeline (ingest phase) / baseline = {:.0} %",
                ratio * 100.0
            );
        }
        if let Some(worker) = backend.worker_cpu_us_per_decision {
            println!(
                "  rate phase: {worker:.0} µs CPU per decision beyond receiving (target <= 150)"
            );
        }
        println!(
            "  {:<16} {:>7} {:>7} {:>8} {:>7} {:>8} {:>26} {:>26} {:>9} {:>6} {:>7} {:>7} {:>6} {:>5}  errors",
            "phase",
            "target",
            "sent",
            "accept/s",
            "decided",
            "decide/s",
            "ingest p50/p90/p99/max ms",
            "e2e p50/p90/p99/max ms",
            "peak RSS",
            "CPU s",
            "µs/ntf",
            "µs/dec",
            "calls",
            "up"
        );
        let all = backend.receive.iter().chain(&backend.phases);
        for p in all {
            let errors = if p.errors.is_empty() {
                "none".to_owned()
            } else {
                p.errors
                    .iter()
                    .map(|(k, n)| format!("{k}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            println!(
                "  {:<16} {:>7} {:>7} {:>8.0} {:>7} {:>8.0} {:>26} {:>26} {:>5.1} MiB {:>6.2} {:>7} {:>7} {:>6} {:>5}  {errors}",
                p.name,
                p.target_rate
                    .map_or("max".to_owned(), |r| format!("{r:.0}/s")),
                p.sent,
                p.accepted_per_sec,
                p.decided,
                p.decisions_per_sec,
                ms(&p.ingest),
                ms(&p.end_to_end),
                mib(p.peak_rss_kib),
                p.cpu_secs,
                us(p.cpu_us_per_notification),
                us(p.cpu_us_per_decision),
                p.calls_per_decision
                    .map_or("-".to_owned(), |c| format!("{c:.2}")),
                p.peak_upstream_in_flight
            );
            if let (Some(target), Some(e2e)) = (p.e2e_p50_target_ms, &p.end_to_end) {
                println!(
                    "    e2e p50 {:.1} ms, p99 {:.1} ms; target p50 <= 3 x {} + {LATENCY_SLACK_MS:.0} = {target:.0} ms",
                    e2e.p50_ms, e2e.p99_ms, p.upstream_latency_ms
                );
            }
            if let Some(ideal) = p.ideal_drain_secs {
                println!(
                    "    drained {} in {:.1} s; ideal at {:.2} calls per decision {:.1} s ({:.0} %), at the 3 calls of the critical path {:.1} s",
                    p.decided,
                    p.drain_secs.unwrap_or(0.0),
                    p.calls_per_decision.unwrap_or(0.0),
                    ideal,
                    100.0 * ideal / p.drain_secs.unwrap_or(f64::INFINITY),
                    p.ideal_drain_secs_critical.unwrap_or(0.0)
                );
            }
        }
    }
    if let Some(r) = &report.reconcile {
        println!();
        println!(
            "reconcile: {} allocations created in {:.2} s; {} pending listed in {} list calls (bound {}), {:.2} s; one cycle (list + enqueue {}) {:.2} s",
            r.allocations_created,
            r.create_secs,
            r.pending,
            r.list_calls,
            r.list_calls_bound,
            r.list_secs,
            r.enqueued,
            r.cycle_secs
        );
    }
}

/// The service executable: `PUHURI_APPROVER_BIN`, or `puhuri-approver` beside this one (both
/// are built by `cargo build --release`).
fn service_executable() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PUHURI_APPROVER_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let sibling = exe.with_file_name("puhuri-approver");
    if !sibling.is_file() {
        anyhow::bail!(
            "{}: not found; build the service first (`cargo build --release`) or set PUHURI_APPROVER_BIN",
            sibling.display()
        );
    }
    Ok(sibling)
}
