//! `puhuri-approver demo`: the whole product in one process, on nothing but this machine.
//!
//! It starts the Puhuri Core simulator with its seeded catalogue (LUMI offerings, Nordic
//! and Baltic organisations), the service (receiver and workers) on the embedded queue
//! with an example policy, and a stream of allocation requests of mixed kinds. Each
//! request travels the real path: the simulator announces it with a signed notification,
//! the receiver queues it durably, a worker re-fetches it and writes the decision back.
//! Decisions are printed as a table as they happen, then a summary.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::{self, Roles};
use crate::config::{Config, Environment};
use crate::worker::{Disposition, Outcome, Settled};
use puhuri_auth::secret::Secret;
use puhuri_auth::signature::WebhookSecret;
use puhuri_policy::Policy;
use puhuri_sim::{HookFormat, HookTarget, NewAllocation, Sim, SimConfig, WaldurVersion};

/// The example policy the demo runs when no other is given.
pub const EXAMPLE_POLICY_PATH: &str = "deploy/local/policy.toml";
const EXAMPLE_POLICY: &str = include_str!("../deploy/local/policy.toml");
/// The simulator's organisations as a provider would list them (country, abbreviation, tags).
const EXAMPLE_CUSTOMERS: &str = include_str!("../deploy/local/customers.toml");

/// What the demo should do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How many allocation requests to send (ignored with `forever`).
    pub count: usize,
    /// Requests per second.
    pub rate: f64,
    /// Keep sending until Ctrl-C.
    pub forever: bool,
    /// A policy file instead of the built-in example.
    pub policy: Option<PathBuf>,
    /// Where the embedded queue lives; a fresh temporary folder when `None`.
    pub data_dir: Option<PathBuf>,
    pub source: DemoSource,
}

/// How the demo's requests reach the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoSource {
    /// The simulator's signed notifications to the receiver.
    Hook,
    /// Waldur's event stream over STOMP from a local RabbitMQ with management and web-STOMP.
    Stomp,
}

/// The RabbitMQ the `stomp` demo uses, from the environment, checked reachable.
struct StompBroker {
    amqp: String,
    management: String,
    stomp: String,
}

async fn stomp_broker() -> anyhow::Result<StompBroker> {
    let var =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let broker = StompBroker {
        amqp: var(
            "PUHURI_APPROVER_DEMO_AMQP_URL",
            "amqp://guest:guest@127.0.0.1:5672",
        ),
        management: var(
            "PUHURI_APPROVER_DEMO_MANAGEMENT_URL",
            "http://guest:guest@127.0.0.1:15672",
        ),
        stomp: var("PUHURI_APPROVER_DEMO_STOMP_URL", "ws://127.0.0.1:15674/ws"),
    };
    for (what, url, plugin) in [
        ("AMQP", &broker.amqp, "RabbitMQ itself"),
        ("management", &broker.management, "rabbitmq_management"),
        ("web-STOMP", &broker.stomp, "rabbitmq_web_stomp"),
    ] {
        let address = host_port(url)
            .with_context(|| format!("the {what} URL is not a URL with a host and port"))?;
        tokio::net::TcpStream::connect(&address).await.with_context(|| {
            format!(
                "`demo --source stomp` needs RabbitMQ's {what} endpoint at {address} ({plugin}; enable plugins with `rabbitmq-plugins enable rabbitmq_management rabbitmq_web_stomp`, or start `deploy/rabbitmq/node start` and set PUHURI_APPROVER_DEMO_* from `deploy/rabbitmq/node env`)"
            )
        })?;
    }
    Ok(broker)
}

/// `host:port` of a URL, without its credentials.
fn host_port(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host.contains(':').then(|| host.to_owned())
}

/// One kind of request in the stream, and what the example policy does with it.
struct Request {
    offering: &'static str,
    project: &'static str,
    limits: Value,
    attributes: Value,
}

fn requests() -> Vec<Request> {
    let r = |offering, project, limits: Value, attributes: Value| Request {
        offering,
        project,
        limits,
        attributes,
    };
    vec![
        r(
            "LUMI-C",
            "Climate extremes",
            json!({"cpu_k_hours": 400, "gb_k_hours": 1000}),
            json!({"is_industry": false}),
        ),
        r(
            "LUMI-G",
            "Protein dynamics",
            json!({"gpu_k_hours": 60, "gb_k_hours": 200}),
            json!({"used_ai_tech": ["Deep Learning"]}),
        ),
        r(
            "LUMI-C",
            "Ocean circulation",
            json!({"cpu_k_hours": 200, "gb_k_hours": 300}),
            json!({}),
        ),
        r(
            "LUMI-C",
            "Climate extremes",
            json!({"cpu_k_hours": 900, "gb_k_hours": 4000}),
            json!({}),
        ),
        r(
            "LUMI-C",
            "Wind farm wakes",
            json!({"cpu_k_hours": 300, "gb_k_hours": 400}),
            json!({"is_industry": true}),
        ),
        r(
            "LUMI-C",
            "Climate extremes",
            json!({"cpu_k_hours": 2500, "gb_k_hours": 4000}),
            json!({}),
        ),
        r(
            "LUMI-C",
            "Estonian language models",
            json!({"cpu_k_hours": 500, "gb_k_hours": 800}),
            json!({}),
        ),
        r(
            "LUMI-C",
            "Climate extremes",
            json!({"cpu_k_hours": 150, "gb_k_hours": 300}),
            json!({"used_ai_tech": ["Machine Learning"]}),
        ),
    ]
}

/// What the table shows about one request.
struct Sent {
    organisation: String,
    requested: String,
    at: Instant,
}

/// Runs the demo until the requests are decided (or Ctrl-C with `forever`).
pub async fn run(
    options: DemoOptions,
    interrupted: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let (policy_text, policy_name) = match &options.policy {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read", path.display()))?,
            path.display().to_string(),
        ),
        None => (EXAMPLE_POLICY.to_owned(), EXAMPLE_POLICY_PATH.to_owned()),
    };
    let policy =
        Policy::parse(&policy_text).map_err(|errors| anyhow::anyhow!("{policy_name}: {errors}"))?;

    let temporary = options.data_dir.is_none();
    let data_dir = options.data_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "puhuri-approver-demo-{}",
            uuid::Uuid::new_v4().simple()
        ))
    });

    // Fresh credentials for this run: the simulator's token and the hook's signing secret.
    let token = uuid::Uuid::new_v4().simple().to_string();
    // The review page's operator token: made for this run, printed below; a demo login,
    // never one for production.
    let review_token = format!("demo-{}", uuid::Uuid::new_v4().simple());
    let review_hash: String = crate::review::session::token_sha256(&review_token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let secret_text = WebhookSecret::generate_text();
    let secret =
        WebhookSecret::parse(&secret_text).map_err(|e| anyhow::anyhow!("demo secret: {e}"))?;

    let receiver = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen for the receiver")?;
    let receiver_addr = receiver.local_addr()?;
    let sim_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen for the simulator")?;
    let sim_addr = sim_listener.local_addr()?;
    let stomp = match options.source {
        DemoSource::Hook => None,
        DemoSource::Stomp => Some(stomp_broker().await?),
    };
    let sim = Sim::new(SimConfig {
        tokens: vec![Secret::new(token.clone())],
        hook: stomp.is_none().then(|| HookTarget {
            url: format!("http://{receiver_addr}/v1/notifications/simulator"),
            format: HookFormat::Allocation { secret },
        }),
        seed: true,
        public_url: Some(format!("http://{sim_addr}")),
        // Event consumers are an 8.0 feature; the hook demo shows 7.0.
        waldur: if stomp.is_some() {
            WaldurVersion::V8_0
        } else {
            WaldurVersion::V7_0
        },
    });
    let events_section = match &stomp {
        None => String::new(),
        Some(broker) => {
            sim.set_event_broker(puhuri_sim::EventBroker {
                amqp_url: broker.amqp.clone(),
                management_url: broker.management.clone(),
            });
            let offerings: Vec<String> = sim
                .catalogue()
                .offerings
                .iter()
                .map(|o| format!("\"{}\"", o.uuid))
                .collect();
            format!(
                "[events]\nurl = \"{}\"\nofferings = [{}]\n",
                broker.stomp,
                offerings.join(", ")
            )
        }
    };
    let stop = CancellationToken::new();
    let sim_task = tokio::spawn(sim.clone().serve(sim_listener, stop.clone()));

    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("{}: cannot create", data_dir.display()))?;
    let customers_path = data_dir.join("customers.toml");
    std::fs::write(&customers_path, EXAMPLE_CUSTOMERS)
        .with_context(|| format!("{}: cannot write", customers_path.display()))?;
    let toml_path = |path: &std::path::Path| {
        path.display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    };
    let config_text = format!(
        r#"
[queue]
backend = "embedded"
data_dir = "{data_dir}"

[policy]
customers_file = "{customers_file}"

[worker]
retry_delays_ms = [200, 1000, 5000]

[reconcile]
interval_secs = 0

[puhuri]
url = "http://{sim_addr}/api/"

{events_section}
[[sources]]
name = "simulator"
format = "allocation"
auth = "standard-webhooks"

# The review page, for this run only: plain HTTP on loopback, one demo operator.
[review]
listen = "127.0.0.1:0"
secure_cookie = false

[[review.operators]]
name = "demo"
token_sha256 = "{review_hash}"
"#,
        data_dir = toml_path(&data_dir),
        customers_file = toml_path(&customers_path),
    );
    let env = DemoEnv {
        token,
        secret: secret_text,
    };
    let config = Config::parse(&config_text, "<demo>", &env)?;
    let running = app::start(&config, Roles::ALL, policy, Some(receiver), stop.clone()).await?;
    let mut settled = running
        .worker
        .as_ref()
        .map(|w| w.subscribe())
        .context("the demo runs workers")?;
    if let Some(stats) = running.events.clone() {
        // Requests are sent once the stream is subscribed: events before that wait in the
        // queue, but the table would start with a pause.
        let connected = async {
            loop {
                let notified = stats.connected_notify.notified();
                if stats.connected.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), connected)
            .await
            .context("Waldur's event stream did not connect within 30 s (is web-STOMP at the PUHURI_APPROVER_DEMO_STOMP_URL?)")?;
    }

    let mut out = std::io::stdout().lock();
    writeln!(out, "puhuri-approver demo")?;
    writeln!(
        out,
        "  Puhuri Core simulator  http://{sim_addr}/api/  (LUMI-C, LUMI-G; five Nordic and Baltic organisations)"
    )?;
    match &stomp {
        None => writeln!(
            out,
            "  receiver               http://{receiver_addr}/v1/notifications/simulator  (signed notifications)"
        )?,
        Some(broker) => writeln!(
            out,
            "  source                 Waldur's event stream, STOMP at {}  (order events, acked after the queue's commit)",
            broker.stomp
        )?,
    }
    writeln!(
        out,
        "  queue                  embedded, {}",
        data_dir.display()
    )?;
    writeln!(out, "  policy                 {policy_name}")?;
    if let Some(review) = running.review_addr {
        writeln!(
            out,
            "  review page            http://{review}/  (log in with the demo token {review_token}; demo only, not for production)"
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<10} {:<34} {:<30} {:<9} {:<46} {:>8}",
        "ALLOCATION", "ORGANISATION", "REQUESTED", "ACTION", "RULE", "TIME"
    )?;
    drop(out);

    let catalogue = sim.catalogue();
    let organisation_of: HashMap<String, String> = catalogue
        .projects
        .iter()
        .map(|p| (p.name.clone(), p.customer_name.clone()))
        .collect();
    let kinds = requests();
    let interval = Duration::from_secs_f64(1.0 / options.rate.clamp(0.1, 1000.0));
    let total = if options.forever {
        usize::MAX
    } else {
        options.count
    };
    let mut sent: HashMap<String, Sent> = HashMap::new();
    let mut decided: Vec<(String, Duration)> = Vec::new();
    let mut next_send = tokio::time::Instant::now();
    let mut created = 0;
    tokio::pin!(interrupted);

    while decided.len() < total {
        tokio::select! {
            () = &mut interrupted => break,
            () = tokio::time::sleep_until(next_send), if created < total => {
                let kind = &kinds[created % kinds.len()];
                let request: NewAllocation = serde_json::from_value(json!({
                    "offering": kind.offering,
                    "project": kind.project,
                    "limits": kind.limits,
                    "attributes": kind.attributes,
                }))?;
                let at = Instant::now();
                let allocation = sim.create_allocation(request).await.map_err(|e| anyhow::anyhow!("creating an allocation: {e}"))?;
                sent.insert(allocation.resource_uuid.clone(), Sent {
                    organisation: organisation_of.get(kind.project).cloned().unwrap_or_default(),
                    requested: describe_limits(&kind.limits),
                    at,
                });
                created += 1;
                next_send += interval;
            }
            event = settled.recv() => {
                let Ok(event) = event else { continue };
                if let Some(line) = row(&event, &mut sent) {
                    let (action, took, text) = line;
                    decided.push((action, took));
                    println!("{text}");
                }
            }
        }
    }

    summary(&decided, &policy_name, options.policy.is_none());
    running.shutdown().await;
    stop.cancel();
    let _ = sim_task.await;
    if temporary {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    Ok(())
}

/// The demo's credentials, given to the config parser as environment overrides.
struct DemoEnv {
    token: String,
    secret: String,
}

impl Environment for DemoEnv {
    fn get(&self, name: &str) -> Option<String> {
        match name {
            "PUHURI_APPROVER_PUHURI_TOKEN" => Some(self.token.clone()),
            "PUHURI_APPROVER_SOURCE_SIMULATOR_SECRETS" => Some(self.secret.clone()),
            _ => None,
        }
    }
}

fn describe_limits(limits: &Value) -> String {
    let Some(map) = limits.as_object() else {
        return String::new();
    };
    map.iter()
        .map(|(k, v)| format!("{} {}", k.trim_end_matches("_k_hours"), v))
        .collect::<Vec<_>>()
        .join(", ")
        + " k-hours"
}

/// A table row for a settled delivery that ends the story of an allocation: decided, or
/// given up on. Retries in between print nothing.
fn row(event: &Settled, sent: &mut HashMap<String, Sent>) -> Option<(String, Duration, String)> {
    let resource = event.hint.resource_uuid.as_ref()?.to_string();
    let action = match (&event.result, event.disposition) {
        (Ok(Outcome::Approved { .. }), _) => "approved",
        (Ok(Outcome::Rejected { .. }), _) => "rejected",
        (Ok(Outcome::Erred { .. }), _) => "erred",
        (Ok(Outcome::Held { .. }), _) => "held",
        (Err(_), Disposition::DeadLettered) => "failed",
        _ => return None,
    };
    let info = sent.remove(&resource)?;
    let took = info.at.elapsed();
    let rule = match (&event.result, &event.rule) {
        (Err(reason), _) => format!(
            "dead letter: {}",
            reason.to_string().chars().take(36).collect::<String>()
        ),
        (_, Some(rule)) => rule.clone(),
        (_, None) => "(default)".into(),
    };
    let text = format!(
        "{:<10} {:<34} {:<30} {:<9} {:<46} {:>6} ms",
        &resource[..8.min(resource.len())],
        truncate(&info.organisation, 34),
        truncate(&info.requested, 30),
        action,
        truncate(&rule, 46),
        took.as_millis()
    );
    Some((action.to_owned(), took, text))
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

fn summary(decided: &[(String, Duration)], policy_name: &str, example: bool) {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for (action, _) in decided {
        match counts.iter_mut().find(|(a, _)| a == action) {
            Some((_, n)) => *n += 1,
            None => counts.push((action.clone(), 1)),
        }
    }
    // By action name: decisions finish concurrently, so first-seen order would vary.
    counts.sort();
    let mut times: Vec<Duration> = decided.iter().map(|(_, t)| *t).collect();
    times.sort();
    let median = times.get(times.len() / 2).copied().unwrap_or_default();
    let max = times.last().copied().unwrap_or_default();
    println!();
    println!(
        "{} allocations decided: {}",
        decided.len(),
        counts
            .iter()
            .map(|(a, n)| format!("{n} {a}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "time from request to decision written back: median {} ms, max {} ms",
        median.as_millis(),
        max.as_millis()
    );
    println!();
    println!("Where to look next:");
    if example {
        println!(
            "  - the policy that decided: {policy_name} (run `puhuri-approver demo --policy FILE` with your own)"
        );
    } else {
        println!("  - the policy that decided: {policy_name}");
    }
    println!("  - check a policy: puhuri-approver policy check {policy_name}");
    println!(
        "  - why a rule matched or not: puhuri-approver policy explain {policy_name} ALLOCATION.json"
    );
    if example {
        println!(
            "  - its regression cases: puhuri-approver policy test {policy_name} deploy/local/policy.cases.toml"
        );
    }
    println!(
        "  - a real Puhuri Core: set `puhuri.url`, PUHURI_APPROVER_PUHURI_TOKEN and a `[[sources]]` entry"
    );
    println!("    (README.md, \"Configuration\"), then run `puhuri-approver serve --config FILE`");
}
