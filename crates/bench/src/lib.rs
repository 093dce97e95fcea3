//! `puhuri-bench`: measured speed of the whole path, with a broker baseline
//! measured in the same run.
//!
//! The bench process runs the Puhuri Core simulator and an open-loop load generator; the
//! service runs as a child process (`puhuri-approver serve`, the executable beside this one, with a
//! generated config), so its RSS and CPU time are read from `/proc/<pid>` apart from the
//! generator's. Per queue backend it measures, in order:
//! 1. idle RSS once the service is ready;
//! 2. **ingest**: as many signed notifications as accepted, `--concurrency` in flight;
//! 3. **rate**: `--rate` notifications per second (open loop: latency counts from the
//!    intended send time, so a stalled service cannot hide its stall);
//! 4. **upstream**: the same with `--upstream-latency-ms` added to every simulator call,
//!    at `--upstream-rate`.
//!
//! Every notification names an allocation created in the simulator just before (without
//! its hook), which the example policy approves; end-to-end latency is from the intended
//! send time to the simulator recording the `approve_by_provider` call of that order. On
//! RabbitMQ, a plain lapin publisher with confirms into an identical queue gives the
//! baseline (`baseline.rs`). Last, the reconciler lists `--reconcile` pending allocations.
//!
//! INVARIANT: a benchmark, not a test: nothing here asserts on timings; figures are
//! printed and written as JSON. Every RabbitMQ queue and exchange the bench creates has
//! a unique prefix and is deleted at the end; the child is stopped with SIGTERM (by its
//! own pid) and killed only if it does not exit.

mod baseline;
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
    /// Added to every simulator call in the upstream phase; 0 skips the phase.
    pub upstream_latency_ms: u64,
    /// Notifications per second of the upstream phase.
    pub upstream_rate: f64,
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
/// Kernel clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const CLOCK_TICKS: f64 = 100.0;
const EXAMPLE_POLICY: &str = include_str!("../../../deploy/local/policy.toml");

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
    pub concurrency: usize,
    pub prefetch: u16,
    pub reconcile: usize,
}

#[derive(Debug, Serialize)]
pub struct BackendReport {
    pub backend: String,
    pub idle_rss_kib: u64,
    pub phases: Vec<PhaseReport>,
    /// Ingest rate of the ingest phase over the baseline's confirmed-publish rate.
    pub ratio_to_baseline: Option<f64>,
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
    pub errors: BTreeMap<String, usize>,
}

#[derive(Debug, Serialize)]
pub struct ReconcileReport {
    pub allocations_created: usize,
    pub create_secs: f64,
    pub pending: usize,
    pub list_calls: usize,
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
            concurrency: options.concurrency,
            prefetch: options.prefetch,
            reconcile: options.reconcile,
        },
        baseline: None,
        backends: Vec::new(),
        reconcile: None,
    };
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
                4,
                options.duration,
            )
            .await?,
        );
    }
    for backend in backends {
        let mut measured = run_backend(options, cx, backend).await?;
        if let (Some(baseline), Some(ingest)) = (&report.baseline, measured.phases.first()) {
            measured.ratio_to_baseline = Some(ingest.accepted_per_sec / baseline.per_sec);
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
    prefetch: u16,
) -> String {
    let queue = match backend {
        "rabbitmq" => format!("backend = \"rabbitmq\"\n\n[amqp]\nprefix = \"{prefix}\""),
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

[policy]
file = "policy.toml"

[puhuri]
url = "http://{sim_addr}/api/"

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
    fn start(cx: &Context_, config: &Path, dir: &Path) -> anyhow::Result<Service> {
        let exe = service_executable()?;
        let stderr = dir.join("service.log");
        let log = std::fs::File::create(&stderr)?;
        let mut command = Command::new(exe);
        command
            .arg("serve")
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

    /// Resets the peak RSS (`VmHWM`) to the current RSS.
    fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5");
    }

    /// User plus system CPU time of the service so far.
    fn cpu_secs(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // Fields after the parenthesised command name: state is the first, utime the 12th.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        (ticks(11) + ticks(12)) as f64 / CLOCK_TICKS
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
    let dir = cx.work_dir.join(backend);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("policy.toml"), EXAMPLE_POLICY)?;
    let listen = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?
    };
    let prefix = format!("puhuri-approver-bench-{}", cx.run_id);
    let config_path = dir.join("config.toml");
    std::fs::write(
        &config_path,
        service_config(
            backend,
            listen,
            cx.sim_addr,
            &prefix,
            &dir,
            options.prefetch,
        ),
    )?;
    eprintln!("bench: {backend}: starting the service");
    let mut service = Service::start(cx, &config_path, &dir)?;
    let result = async {
        service
            .wait_ready(&cx.http, &format!("http://{listen}/readyz"))
            .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle_rss_kib = service.memory_kib("VmRSS:");
        let url = format!("http://{listen}/v1/notifications/bench");
        let mut phases = Vec::new();
        eprintln!("bench: {backend}: ingest, as fast as accepted");
        phases.push(run_phase(cx, &service, &url, "ingest", None, options).await);
        eprintln!("bench: {backend}: {} notifications/s", options.rate);
        phases.push(run_phase(cx, &service, &url, "rate", Some(options.rate), options).await);
        if options.upstream_latency_ms > 0 {
            eprintln!(
                "bench: {backend}: {} notifications/s, upstream +{} ms",
                options.upstream_rate, options.upstream_latency_ms
            );
            cx.sim.set_faults(Faults {
                latency_ms: options.upstream_latency_ms,
                ..Faults::default()
            });
            let phase = run_phase(
                cx,
                &service,
                &url,
                &format!("upstream +{} ms", options.upstream_latency_ms),
                Some(options.upstream_rate),
                options,
            )
            .await;
            cx.sim.set_faults(Faults::default());
            phases.push(phase);
        }
        anyhow::Ok(BackendReport {
            backend: backend.to_owned(),
            idle_rss_kib,
            phases,
            ratio_to_baseline: None,
        })
    }
    .await;
    service.stop().await;
    if backend == "rabbitmq" {
        delete_rabbit_topology(options, cx, &prefix).await;
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
            url: options.amqp_url.clone(),
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

    fn count_of(&self, orders: &[&str]) -> usize {
        let times = self.times.lock().unwrap_or_else(|p| p.into_inner());
        orders.iter().filter(|o| times.contains_key(**o)).count()
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

/// Signs and posts the notification of one new allocation.
async fn send_one(cx: &Context_, url: &str, n: u64, intended: Instant) -> Sent {
    let (order, resource, offering) = match new_allocation(&cx.sim, n).await {
        Ok(ids) => ids,
        Err(error) => {
            return Sent {
                order: String::new(),
                intended,
                answered: Instant::now(),
                outcome: Err(format!("simulator: {error}")),
            };
        }
    };
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

/// One load phase: open loop at `rate`, or `options.concurrency` senders back to back
/// when `rate` is `None`; then waits for the decisions.
async fn run_phase(
    cx: &Context_,
    service: &Service,
    url: &str,
    name: &str,
    rate: Option<f64>,
    options: &BenchOptions,
) -> PhaseReport {
    static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let next = || SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    service.reset_peak();
    let cpu_before = service.cpu_secs();
    let started = Instant::now();
    let deadline = started + options.duration;
    let sent = Arc::new(Mutex::new(Vec::<Sent>::new()));
    match rate {
        None => {
            let senders = (0..options.concurrency.max(1)).map(|_| {
                let sent = sent.clone();
                async move {
                    while Instant::now() < deadline {
                        let one = send_one(cx, url, next(), Instant::now()).await;
                        sent.lock().unwrap_or_else(|p| p.into_inner()).push(one);
                    }
                }
            });
            futures_util::future::join_all(senders).await;
        }
        Some(rate) => {
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
                            let one = send_one(cx, url, n, intended).await;
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
    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    while cx.approvals.count_of(&accepted) < accepted.len() && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_secs = service.cpu_secs() - cpu_before;
    let peak_rss_kib = service.memory_kib("VmHWM:");

    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut ingest = Vec::new();
    let mut end_to_end = Vec::new();
    let mut last_decision = started;
    for one in &sent {
        match &one.outcome {
            Ok(202) => {
                ingest.push(one.answered.saturating_duration_since(one.intended));
                match cx.approvals.get(&one.order) {
                    Some(at) => {
                        end_to_end.push(at.saturating_duration_since(one.intended));
                        last_decision = last_decision.max(at);
                    }
                    None => *errors.entry("not decided within 20 s".into()).or_default() += 1,
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
    PhaseReport {
        name: name.to_owned(),
        target_rate: rate,
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
    println!();
    println!(
        "puhuri-bench: phases of {:.0} s, prefetch {}, ingest concurrency {}",
        report.options.duration_secs, report.options.prefetch, report.options.concurrency
    );
    if let Some(b) = &report.baseline {
        println!(
            "baseline: lapin publisher with confirms, quorum queue, persistent {}-byte messages, {} in flight on {} channels: {:.0} msg/s ({} errors)",
            b.message_bytes, b.in_flight, b.channels, b.per_sec, b.errors
        );
    }
    for backend in &report.backends {
        println!();
        let ratio = backend
            .ratio_to_baseline
            .map(|r| format!(", ingest / baseline = {:.0} %", r * 100.0))
            .unwrap_or_default();
        println!(
            "{}: idle RSS {:.1} MiB{ratio}",
            backend.backend,
            backend.idle_rss_kib as f64 / 1024.0
        );
        println!(
            "{:<18} {:>7} {:>8} {:>9} {:>8} {:>9} {:>28} {:>28} {:>9} {:>7}  errors",
            "phase",
            "target",
            "sent",
            "accept/s",
            "decided",
            "decide/s",
            "ingest p50/p90/p99/max ms",
            "e2e p50/p90/p99/max ms",
            "peak RSS",
            "CPU s"
        );
        for p in &backend.phases {
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
                "{:<18} {:>7} {:>8} {:>9.0} {:>8} {:>9.0} {:>28} {:>28} {:>5.1} MiB {:>7.2}  {errors}",
                p.name,
                p.target_rate
                    .map_or("max".to_owned(), |r| format!("{r:.0}/s")),
                p.sent,
                p.accepted_per_sec,
                p.decided,
                p.decisions_per_sec,
                ms(&p.ingest),
                ms(&p.end_to_end),
                p.peak_rss_kib as f64 / 1024.0,
                p.cpu_secs
            );
        }
    }
    if let Some(r) = &report.reconcile {
        println!();
        println!(
            "reconcile: {} allocations created in {:.2} s; {} pending listed in {} list calls, {:.2} s; one cycle (list + enqueue {}) {:.2} s",
            r.allocations_created,
            r.create_secs,
            r.pending,
            r.list_calls,
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
