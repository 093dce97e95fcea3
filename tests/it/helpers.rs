//! `spawn_app`: the simulator, the service on port 0 and a unique queue prefix per test.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use puhuri_approver::app::{self, Roles, Running};
use puhuri_approver::config::{Config, DEFAULT_AMQP_URL};
use puhuri_approver::policy::Policy;
use puhuri_approver::secret::Secret;
use puhuri_approver::signature::WebhookSecret;
use puhuri_approver::sim::{
    CreatedAllocation, HookFormat, HookTarget, NewAllocation, RecordedCall, Sim, SimConfig,
};
use puhuri_approver::worker::Settled;
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
offering = ["LUMI-C"]
max_limits = { cpu_k_hours = 1000 }
action = "approve"
backend_id = "{project_slug}_{resource_short_uuid}"

[[rule]]
name = "big-lumi-c"
offering = ["LUMI-C"]
action = "reject"
reason = "{project_name}: requests above 1000 CPU k-hours go to the allocation panel"

[default]
action = "hold"
note = "not an automatic case"
"#;

pub struct Options {
    pub policy: &'static str,
    pub api: &'static str,
    pub roles: Roles,
    pub amqp_url: Option<String>,
    pub max_attempts: u32,
    /// Have the simulator announce new allocations to the receiver.
    pub sim_hook: bool,
    /// TOML appended to the test config (more `[[sources]]`, a `[receiver]` table).
    pub extra_config: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            policy: APPROVE_SMALL,
            api: "orders",
            roles: Roles::ALL,
            amqp_url: None,
            max_attempts: 4,
            sim_hook: false,
            extra_config: String::new(),
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
    });
    let sim_stop = CancellationToken::new();
    tokio::spawn(sim.clone().serve(sim_listener, sim_stop.clone()));

    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let config_text = format!(
        r#"
[amqp]
prefix = "{prefix}"
publish_channels = 2

[worker]
prefetch = 16
max_attempts = {max_attempts}
retry_delays_ms = [50, 100]

[puhuri]
url = "http://{sim_addr}/api/"
token = "{TOKEN}"
api = "{api}"
timeout_ms = 5000

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
        api = options.api,
        extra_config = options.extra_config,
    );
    let env: std::collections::HashMap<String, String> = [(
        "PUHURI_APPROVER_AMQP_URL".to_owned(),
        options.amqp_url.clone().unwrap_or_else(amqp_url),
    )]
    .into_iter()
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
    if options.amqp_url.is_none() {
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

    pub async fn work_queue_depth(&self) -> u32 {
        let running = self.running.as_ref().expect("running");
        let queue = running.broker.topology().work_queue();
        running
            .broker
            .queue_depth(&queue)
            .await
            .expect("queue depth")
    }

    /// Stops the service, deletes this test's queues and exchanges, stops the simulator.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop_roles().await;
            if running.broker.is_connected() {
                running
                    .broker
                    .delete_topology()
                    .await
                    .expect("delete test topology");
            }
            running.shutdown().await;
        }
        self.sim_stop.cancel();
    }
}
