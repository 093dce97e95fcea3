//! `spawn_app`: the simulator, the service on port 0 and a unique queue prefix per test.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use puhuri_approver::app::{self, Roles, Running};
use puhuri_approver::config::{Config, DEFAULT_AMQP_URL};
use puhuri_approver::worker::Settled;
use puhuri_auth::secret::Secret;
use puhuri_auth::signature::WebhookSecret;
use puhuri_policy::Policy;
use puhuri_sim::{
    CreatedAllocation, HookFormat, HookTarget, NewAllocation, RecordedCall, Sim, SimConfig,
    WaldurVersion,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "test-token";
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Long enough for any single step of a test on a loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(20);

pub const APPROVE_SMALL: &str = r#"
[[rule]]
name = "small-lumi-c"
when = 'offering.name == "LUMI-C" && limits.cpu_k_hours <= 1000'
action = "approve"
backend_id = "{project.slug}_{resource.short_uuid}"

[[rule]]
name = "big-lumi-c"
when = 'offering.name == "LUMI-C"'
action = "reject"
reason = "{project.name}: requests above 1000 CPU k-hours go to the allocation panel"

[default]
action = "hold"
note = "not an automatic case"
"#;

/// Which queue backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    RabbitMq,
    Embedded,
}

/// Runs an `async fn(Backend)` test once per backend, as `<name>::rabbitmq` and
/// `<name>::embedded`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn rabbitmq() {
                    super::$name($crate::helpers::Backend::RabbitMq).await
                }
                #[tokio::test]
                async fn embedded() {
                    super::$name($crate::helpers::Backend::Embedded).await
                }
            }
        )+
    };
}

pub struct Options {
    pub policy: &'static str,
    pub api: &'static str,
    /// The Waldur release the simulator serves; a test of the 2021 API (`api = "resources"`)
    /// sets `WaldurVersion::V2021`.
    pub waldur: WaldurVersion,
    pub roles: Roles,
    pub amqp_url: Option<String>,
    /// RabbitMQ nodes (`PUHURI_APPROVER_AMQP_URLS`), instead of `amqp_url`, when not empty.
    pub amqp_urls: Vec<String>,
    pub max_attempts: u32,
    /// Have the simulator announce new allocations to the receiver.
    pub sim_hook: bool,
    /// Policy shadow mode: decide and publish, write nothing.
    pub shadow: bool,
    /// TOML appended to the test config (more `[[sources]]`, a `[receiver]` table).
    pub extra_config: String,
    /// 0: no reconciler loop (tests call `run_cycle` themselves).
    pub reconcile_interval_secs: u64,
    pub puhuri_timeout_ms: u64,
    pub retry_delays_ms: &'static str,
    pub prefetch: u16,
    pub reconcile_recheck_secs: u64,
    pub backend: Backend,
    /// Wait for the broker at start (false when it is meant to be unreachable).
    pub expect_broker: bool,
    /// 0: no team watcher.
    pub team_watch_secs: u64,
    pub usage_linger_ms: u64,
    pub usage_max_batch: usize,
    /// `puhuri.max_in_flight`.
    pub max_in_flight: usize,
    /// `PUHURI_APPROVER_PUHURI_TOKEN_FILE`: the token from this file instead of the config.
    pub token_file: Option<std::path::PathBuf>,
    /// The broker the simulator publishes Waldur's order events to (`stomp.rs`).
    pub sim_events: Option<puhuri_sim::EventBroker>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            policy: APPROVE_SMALL,
            api: "orders",
            waldur: WaldurVersion::V7_0,
            roles: Roles::ALL,
            amqp_url: None,
            amqp_urls: Vec::new(),
            max_attempts: 4,
            sim_hook: false,
            shadow: false,
            extra_config: String::new(),
            reconcile_interval_secs: 0,
            puhuri_timeout_ms: 5000,
            retry_delays_ms: "[50, 100]",
            prefetch: 16,
            expect_broker: true,
            team_watch_secs: 0,
            usage_linger_ms: 100,
            usage_max_batch: 256,
            reconcile_recheck_secs: 600,
            backend: Backend::RabbitMq,
            max_in_flight: 16,
            token_file: None,
            sim_events: None,
        }
    }
}

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub sim: Sim,
    pub sim_url: String,
    pub http: reqwest::Client,
    pub running: Option<Running>,
    pub settled: Option<broadcast::Receiver<Settled>>,
    /// The service's configuration, for child processes and CLI commands.
    pub config_text: String,
    pub policy_text: &'static str,
    /// The embedded queue's folder, when that backend runs.
    pub data_dir: Option<std::path::PathBuf>,
    sim_stop: CancellationToken,
}

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned())
}

pub async fn spawn_app(options: Options) -> TestApp {
    let sim_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sim");
    let sim_addr = sim_listener.local_addr().expect("sim addr");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let addr = listener.local_addr().expect("receiver addr");

    let hook = options.sim_hook.then(|| HookTarget {
        url: format!("http://{addr}/v1/notifications/relay"),
        format: HookFormat::Allocation {
            secret: WebhookSecret::parse(SECRET).expect("secret"),
        },
    });
    let sim = Sim::new(SimConfig {
        tokens: vec![Secret::new(TOKEN)],
        hook,
        seed: true,
        public_url: Some(format!("http://{sim_addr}")),
        waldur: options.waldur,
    });
    if let Some(broker) = options.sim_events.clone() {
        sim.set_event_broker(broker);
    }
    let sim_stop = CancellationToken::new();
    tokio::spawn(sim.clone().serve(sim_listener, sim_stop.clone()));

    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let data_dir = (options.backend == Backend::Embedded).then(|| temp_dir("queue"));
    let queue_section = match &data_dir {
        Some(dir) => format!(
            "[queue]\nbackend = \"embedded\"\ndata_dir = \"{}\"\nlease_secs = 5\n",
            dir.display()
        ),
        None => "[queue]\nbackend = \"rabbitmq\"\n".to_owned(),
    };
    let config_text = format!(
        r#"
{queue_section}
[amqp]
prefix = "{prefix}"
publish_channels = 2

[worker]
prefetch = {prefetch}
max_attempts = {max_attempts}
retry_delays_ms = {retry_delays}
shutdown_deadline_ms = 10000

[reconcile]
interval_secs = {reconcile}
recheck_secs = {recheck}

[team]
watch_secs = {team_watch}

[usage]
linger_ms = {usage_linger}
max_batch = {usage_batch}

[puhuri]
url = "http://{sim_addr}/api/"
token = "{TOKEN}"
api = "{api}"
timeout_ms = {puhuri_timeout}
max_in_flight = {max_in_flight}

[[sources]]
name = "relay"
format = "allocation"
auth = "standard-webhooks"
secrets = ["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD", "{SECRET}"]

[[sources]]
name = "waldur-relay"
format = "waldur-hook"
auth = "standard-webhooks"
secrets = ["{SECRET}"]

{extra_config}
"#,
        max_attempts = options.max_attempts,
        max_in_flight = options.max_in_flight,
        api = options.api,
        extra_config = options.extra_config,
        prefetch = options.prefetch,
        retry_delays = options.retry_delays_ms,
        reconcile = options.reconcile_interval_secs,
        recheck = options.reconcile_recheck_secs,
        puhuri_timeout = options.puhuri_timeout_ms,
        team_watch = options.team_watch_secs,
        usage_linger = options.usage_linger_ms,
        usage_batch = options.usage_max_batch,
    );
    let amqp = if options.amqp_urls.is_empty() {
        (
            "PUHURI_APPROVER_AMQP_URL".to_owned(),
            options.amqp_url.clone().unwrap_or_else(amqp_url),
        )
    } else {
        (
            "PUHURI_APPROVER_AMQP_URLS".to_owned(),
            options.amqp_urls.join(","),
        )
    };
    let env: std::collections::HashMap<String, String> = [
        amqp,
        (
            "PUHURI_APPROVER_POLICY_SHADOW".to_owned(),
            options.shadow.to_string(),
        ),
    ]
    .into_iter()
    .chain(options.token_file.as_ref().map(|path| {
        (
            "PUHURI_APPROVER_PUHURI_TOKEN_FILE".to_owned(),
            path.display().to_string(),
        )
    }))
    .collect();
    let config = Config::parse(&config_text, "test.toml", &env).expect("test config");
    let policy = Policy::parse(options.policy).expect("test policy");
    let running = app::start(
        &config,
        options.roles,
        policy,
        Some(listener),
        CancellationToken::new(),
    )
    .await
    .expect("service starts");
    let settled = running.worker.as_ref().map(|w| w.subscribe());
    if options.expect_broker {
        let connected = tokio::time::timeout(
            WAIT,
            running.broker.wait_connected(&CancellationToken::new()),
        )
        .await;
        assert_eq!(
            connected,
            Ok(true),
            "RabbitMQ at {} must be reachable",
            amqp_url()
        );
    }
    TestApp {
        addr,
        sim,
        sim_url: format!("http://{sim_addr}"),
        http: reqwest::Client::new(),
        running: Some(running),
        settled,
        config_text,
        policy_text: options.policy,
        data_dir,
        sim_stop,
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `GET /readyz`: the status, the content type and the body (null when not JSON).
    pub async fn readyz(&self) -> (u16, String, Value) {
        let response = self
            .http
            .get(self.url("/readyz"))
            .send()
            .await
            .expect("readyz answers");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (
            status,
            content_type,
            response.json().await.unwrap_or(Value::Null),
        )
    }

    /// Posts a body to a source, signed with `secret` under notification id `id`.
    pub async fn post_signed(
        &self,
        source: &str,
        id: &str,
        body: &[u8],
        secret: &str,
    ) -> reqwest::Response {
        let secret = WebhookSecret::parse(secret).expect("secret");
        let timestamp = now();
        self.http
            .post(self.url(&format!("/v1/notifications/{source}")))
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", secret.sign(id, timestamp, body))
            .body(body.to_vec())
            .send()
            .await
            .expect("receiver answers")
    }

    /// Posts a canonical notification for an allocation, correctly signed.
    pub async fn notify(&self, id: &str, created: &CreatedAllocation) -> reqwest::Response {
        let body = json!({
            "type": "allocation.created",
            "order_uuid": created.order_uuid,
            "resource_uuid": created.resource_uuid,
        });
        self.post_signed("relay", id, body.to_string().as_bytes(), SECRET)
            .await
    }

    pub async fn create(&self, limits: Value) -> CreatedAllocation {
        let request: NewAllocation = serde_json::from_value(json!({
            "offering": "LUMI-C",
            "limits": limits,
        }))
        .expect("allocation request");
        self.sim
            .create_allocation(request)
            .await
            .expect("allocation created")
    }

    /// Waits for the worker to settle the notification with this id.
    pub async fn settled(&mut self, id: &str) -> Settled {
        let receiver = self.settled.as_mut().expect("this app runs workers");
        let wait = async {
            loop {
                match receiver.recv().await {
                    Ok(settled) if settled.id == id => return settled,
                    Ok(_) => continue,
                    Err(error) => panic!("worker events ended: {error}"),
                }
            }
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("notification {id} was not settled in time"))
    }

    /// The write calls the simulator received for one allocation.
    pub fn writes_for(&self, created: &CreatedAllocation) -> Vec<RecordedCall> {
        self.sim
            .calls()
            .into_iter()
            .filter(|c| {
                c.path.contains(&created.order_uuid) || c.path.contains(&created.resource_uuid)
            })
            .collect()
    }

    pub fn order_state(&self, created: &CreatedAllocation) -> String {
        let order = self.sim.order(&created.order_uuid).expect("order exists");
        order["state"].as_str().unwrap_or_default().to_owned()
    }

    pub fn resource(&self, created: &CreatedAllocation) -> Value {
        self.sim
            .resource(&created.resource_uuid)
            .expect("resource exists")
    }

    pub async fn work_queue_depth(&self) -> u64 {
        let running = self.running.as_ref().expect("running");
        running.broker.work_depth().await.expect("queue depth")
    }

    /// Stops the service, deletes this test's queues and exchanges, stops the simulator.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop_roles().await;
            // Teardown only: the test's assertions are behind it. lapin may report a late
            // frame of a channel the roles closed (its id reused) as a connection error here;
            // the queues then stay behind under this test's own prefix.
            if running.broker.is_connected()
                && let Err(error) = running.broker.delete_topology().await
            {
                eprintln!("teardown: the test's queues and exchanges stay: {error}");
            }
            running.shutdown().await;
        }
        self.sim_stop.cancel();
        if let Some(dir) = self.data_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// What a policy should have done with an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Approve,
    Reject,
    Hold,
    Erred,
}

impl Expect {
    /// The decision event's type.
    pub fn event_type(self) -> &'static str {
        match self {
            Expect::Approve => "allocation.approved",
            Expect::Reject => "allocation.rejected",
            Expect::Hold => "allocation.held",
            Expect::Erred => "allocation.erred",
        }
    }
}

/// The verdict of a fault scenario: every count must be zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Allocations that should have been decided and were not.
    pub lost: usize,
    /// Allocations with more than one decision write that took effect, or several
    /// backend ids.
    pub duplicated: usize,
    /// Allocations decided differently from the policy (or written when held), or with
    /// a decision event of another type.
    pub wrong: usize,
    /// Allocations without their decision event.
    pub events_missing: usize,
    /// Allocations whose decision events carry more than one id (duplicates beyond
    /// their id; copies with one id are what consumers de-duplicate).
    pub events_duplicated: usize,
}

/// Every count of a scenario, with the event copies seen.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    pub counts: Counts,
    /// Decision events received for the scenario's allocations, copies included.
    pub event_copies: usize,
}

/// Where a scenario reads the decision events: a queue bound to the events exchange
/// (RabbitMQ) or the embedded queue's event table.
pub struct EventTap {
    source: EventSource,
    /// Every decision event read so far.
    pub seen: Vec<Value>,
}

enum EventSource {
    Rabbit {
        broker: puhuri_queue::Broker,
        queue: String,
    },
    Embedded(puhuri_queue::embedded::EmbeddedQueue),
}

impl EventTap {
    /// Binds a queue of its own to `allocation.#` of the broker's events exchange.
    pub async fn rabbit(broker: &puhuri_queue::Broker) -> EventTap {
        let queue = format!(
            "{}.audit-{}",
            broker.topology().prefix,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        broker
            .as_rabbit()
            .expect("a RabbitMQ broker")
            .bind_events_queue(&queue, "allocation.#")
            .await
            .expect("bind the events tap");
        EventTap {
            source: EventSource::Rabbit {
                broker: broker.clone(),
                queue,
            },
            seen: Vec::new(),
        }
    }

    /// The events recorded in an embedded queue's folder (shared with other processes).
    pub fn embedded(queue: puhuri_queue::embedded::EmbeddedQueue) -> EventTap {
        EventTap {
            source: EventSource::Embedded(queue),
            seen: Vec::new(),
        }
    }

    /// Reads what arrived since the last read.
    pub async fn read(&mut self) {
        match &self.source {
            EventSource::Rabbit { broker, queue } => {
                let rabbit = broker.as_rabbit().expect("a RabbitMQ broker");
                while let Ok(Some(message)) = rabbit.take_one(queue).await {
                    if let Ok(event) = serde_json::from_slice::<Value>(&message.body) {
                        self.seen.push(event);
                    }
                }
            }
            EventSource::Embedded(queue) => {
                if let Ok(events) = queue.events(usize::MAX >> 1).await {
                    // The table holds every event; decisions are `allocation.*`.
                    self.seen = events
                        .iter()
                        .filter(|(routing_key, _)| routing_key.starts_with("allocation."))
                        .filter_map(|(_, body)| serde_json::from_slice(body).ok())
                        .collect();
                }
            }
        }
    }

    /// Counts, per allocation, events missing, of another type, and with several ids.
    fn count(&self, cases: &[(CreatedAllocation, Expect)]) -> (usize, usize, usize, usize) {
        let (mut missing, mut wrong, mut duplicated, mut copies) = (0, 0, 0, 0);
        for (created, expect) in cases {
            let mine: Vec<&Value> = self
                .seen
                .iter()
                .filter(|e| e["allocation"]["resource_uuid"] == created.resource_uuid.as_str())
                .collect();
            copies += mine.len();
            let mut ids: Vec<&str> = mine.iter().filter_map(|e| e["id"].as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            if mine.is_empty() {
                missing += 1;
            }
            if mine.iter().any(|e| e["type"] != expect.event_type()) {
                wrong += 1;
            }
            if ids.len() > 1 {
                duplicated += 1;
            }
        }
        (missing, wrong, duplicated, copies)
    }
}

impl TestApp {
    /// Creates allocations of three kinds for `APPROVE_SMALL`, round-robin.
    pub async fn create_mixed(&self, count: usize) -> Vec<(CreatedAllocation, Expect)> {
        let mut cases = Vec::new();
        for i in 0..count {
            let (request, expect) = match i % 3 {
                0 => (
                    json!({"offering": "LUMI-C", "limits": {"cpu_k_hours": 100 + i % 900}}),
                    Expect::Approve,
                ),
                1 => (
                    json!({"offering": "LUMI-C", "limits": {"cpu_k_hours": 5000 + i}}),
                    Expect::Reject,
                ),
                _ => (
                    json!({"offering": "LUMI-G", "limits": {"gpu_k_hours": 10}}),
                    Expect::Hold,
                ),
            };
            let request: NewAllocation = serde_json::from_value(request).expect("request");
            let created = self.sim.create_allocation(request).await.expect("created");
            cases.push((created, expect));
        }
        cases
    }

    /// Whether every allocation that should be decided is.
    pub fn all_decided(&self, cases: &[(CreatedAllocation, Expect)]) -> bool {
        cases
            .iter()
            .filter(|(_, expect)| *expect != Expect::Hold)
            .all(|(created, _)| self.decided(created))
    }

    /// Whether the allocation left the provider's queue (erred may leave its order
    /// pending-provider, with the resource `Erred`).
    pub fn decided(&self, created: &CreatedAllocation) -> bool {
        self.order_state(created) != "pending-provider"
            || self.resource(created)["state"] == "Erred"
    }

    /// A tap on the decision events of this app's broker, opened before anything is
    /// decided.
    pub async fn tap_events(&self) -> EventTap {
        let broker = &self.running.as_ref().expect("running").broker;
        match broker.as_embedded() {
            Some(embedded) => EventTap::embedded(embedded.queue().clone()),
            None => EventTap::rabbit(broker).await,
        }
    }

    /// Counts writes (as [`TestApp::check`]) and decision events. Events are read until
    /// every allocation has one, or `within` passes (an event may trail its write).
    pub async fn check_all(
        &self,
        cases: &[(CreatedAllocation, Expect)],
        events: &mut EventTap,
        within: Duration,
    ) -> Tally {
        let deadline = tokio::time::Instant::now() + within;
        let mut counts = self.check(cases);
        loop {
            events.read().await;
            let (missing, wrong, duplicated, copies) = events.count(cases);
            if missing == 0 || tokio::time::Instant::now() >= deadline {
                counts.events_missing = missing;
                counts.events_duplicated = duplicated;
                counts.wrong += wrong;
                return Tally {
                    counts,
                    event_copies: copies,
                };
            }
            // RabbitMQ's basic.get and the event table have nothing to await.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (on the simulator's write calls, not on a clock) until every allocation that
    /// should be decided is, or `within` passes. Returns how long it took.
    pub async fn wait_decided(
        &self,
        cases: &[(CreatedAllocation, Expect)],
        within: Duration,
    ) -> Duration {
        let started = std::time::Instant::now();
        let mut changes = self.sim.watch_calls();
        let _ = tokio::time::timeout(within, async {
            while !self.all_decided(cases) {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        started.elapsed()
    }

    /// Counts lost, duplicated and wrong decisions from the simulator's state and calls.
    pub fn check(&self, cases: &[(CreatedAllocation, Expect)]) -> Counts {
        let calls = self.sim.calls();
        let mut counts = Counts::default();
        for (created, expect) in cases {
            let mine: Vec<&RecordedCall> = calls
                .iter()
                .filter(|c| {
                    c.path.contains(&created.order_uuid) || c.path.contains(&created.resource_uuid)
                })
                .collect();
            // A write counts when it took effect, whatever its caller was answered.
            let decisions = mine
                .iter()
                .filter(|c| {
                    (c.status == 200 || c.applied_status == Some(200))
                        && (c.path.ends_with("/approve_by_provider/")
                            || c.path.ends_with("/reject_by_provider/")
                            || c.path.ends_with("/set_as_erred/")
                            || c.path.ends_with("/set_state_erred/")
                            || c.path.ends_with("/set_state_by_provider/"))
                })
                .count();
            let mut backend_ids: Vec<&Value> = mine
                .iter()
                .filter(|c| c.path.ends_with("/set_backend_id/"))
                .map(|c| &c.body["backend_id"])
                .collect();
            backend_ids.dedup();
            if decisions > 1 || backend_ids.len() > 1 {
                counts.duplicated += 1;
            }
            let state = self.order_state(created);
            match expect {
                Expect::Hold => {
                    if !mine.is_empty() || state != "pending-provider" {
                        counts.wrong += 1;
                    }
                }
                Expect::Erred => {
                    if !self.decided(created) {
                        counts.lost += 1;
                    } else if self.resource(created)["state"] != "Erred" {
                        counts.wrong += 1;
                    }
                }
                Expect::Approve | Expect::Reject => {
                    let wanted = if *expect == Expect::Approve {
                        "done"
                    } else {
                        "rejected"
                    };
                    if state == "pending-provider" {
                        counts.lost += 1;
                    } else if state != wanted {
                        counts.wrong += 1;
                    }
                }
            }
        }
        counts
    }

    /// Another instance of the workers (its own `Worker`, locks and connection) on this
    /// app's queue, as a second `work` process would be.
    pub async fn start_second_worker(&self) -> Running {
        let env: std::collections::HashMap<String, String> =
            [("PUHURI_APPROVER_AMQP_URL".to_owned(), amqp_url())]
                .into_iter()
                .collect();
        let config = Config::parse(&self.config_text, "test.toml", &env).expect("test config");
        let policy = Policy::parse(self.policy_text).expect("test policy");
        let running = app::start(
            &config,
            Roles {
                receive: false,
                work: true,
            },
            policy,
            None,
            CancellationToken::new(),
        )
        .await
        .expect("second worker starts");
        let connected = tokio::time::timeout(
            WAIT,
            running.broker.wait_connected(&CancellationToken::new()),
        )
        .await;
        assert_eq!(connected, Ok(true), "the second worker connects");
        running
    }

    /// Writes the service's configuration to a file for a child process.
    pub fn write_config(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("puhuri-approver.toml");
        std::fs::write(dir.join("policy.toml"), self.policy_text).expect("write policy");
        let text = format!("{}\n[policy]\nfile = \"policy.toml\"\n", self.config_text);
        std::fs::write(&path, text).expect("write config");
        path
    }
}

/// Prints a scenario's figures past the test harness's capture, so CI logs show them:
/// one table row per scenario.
pub fn report(scenario: &str, tally: Tally, allocations: usize, recovery: Duration) {
    use std::io::Write;
    let counts = tally.counts;
    let _ = writeln!(
        std::io::stderr(),
        "| fault scenario | {scenario} | allocations {allocations} | lost {} | written twice {} | wrong {} | events missing {} | events duplicated beyond id {} | event copies {} | drained in {} ms |",
        counts.lost,
        counts.duplicated,
        counts.wrong,
        counts.events_missing,
        counts.events_duplicated,
        tally.event_copies,
        recovery.as_millis()
    );
}

/// A fresh temporary directory under the system's temp folder.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "puhuri-approver-{name}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Sends a notification until it is accepted, as a sender honouring 503 would (with a
/// short pause instead of the advertised `Retry-After`, to keep tests quick).
pub async fn notify_until_accepted(app: &TestApp, id: &str, created: &CreatedAllocation) -> usize {
    let mut tries = 0;
    loop {
        tries += 1;
        let status =
            match tokio::time::timeout(Duration::from_secs(10), app.notify(id, created)).await {
                Ok(response) => response.status().as_u16(),
                Err(_) => 0,
            };
        if status == 202 {
            return tries;
        }
        assert!(status == 503 || status == 0, "unexpected answer {status}");
        assert!(tries < 400, "notification {id} never accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP proxy in front of RabbitMQ that can cut every connection at once.
pub struct Proxy {
    pub port: u16,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: std::net::SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> =
            Default::default();
        let tracked = connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tracked
                    .lock()
                    .expect("proxy lock")
                    .push(task.abort_handle());
            }
        });
        Proxy {
            port,
            connections,
            accept,
        }
    }

    /// Drops every proxied connection: both peers see the TCP connection reset.
    pub fn cut(&self) -> usize {
        let mut connections = self.connections.lock().expect("proxy lock");
        let count = connections.len();
        for connection in connections.drain(..) {
            connection.abort();
        }
        count
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Debug renderings that must never reach an operator: output and log lines are written
/// for people (`Display`), not as Rust values.
pub const NOT_FOR_PEOPLE: &[&str] = &["Some(", "None)", "Ok(", "Err(", "`Orders`", "`Resources`"];

/// Fails when `text` (a command's output, or the service's own log lines) shows a Rust
/// value's `Debug` form.
pub fn assert_for_people(what: &str, text: &str) {
    for artifact in NOT_FOR_PEOPLE {
        if let Some(line) = text.lines().find(|line| line.contains(artifact)) {
            panic!("{what}: `{artifact}` in a line for people: {line}");
        }
    }
}

/// Log lines written through `tracing`, kept for a test to read.
#[derive(Clone, Default)]
pub struct Captured(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(
            &self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// While held, the log lines (at `filter`) of the tasks a current-thread test runtime runs on
/// this thread go to the returned [`Captured`].
pub struct ThreadLogs {
    _second: tracing::Dispatch,
    _default: tracing::subscriber::DefaultGuard,
}

pub fn capture_thread_logs(filter: &str) -> (Captured, ThreadLogs) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // A second live dispatcher: tracing then computes each callsite's interest over all
    // dispatchers, not only the thread that first reaches it (see tests/it/ingress.rs).
    let second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let default = tracing::subscriber::set_default(subscriber);
    (
        captured,
        ThreadLogs {
            _second: second,
            _default: default,
        },
    )
}
