//! Waldur's event stream as a source (`[events]`): the simulator registers consumers and
//! subscriptions on a private RabbitMQ node with the management and web-STOMP plugins
//! (`deploy/rabbitmq/node`, own ports, name, data and cookie) and publishes order events
//! there; the service's STOMP source reads them through the real web-STOMP endpoint. HTTP
//! sources get nothing (the simulator announces nothing) and the reconciler's interval is an
//! hour, so a decision can only come through the stream.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use puhuri_sim::{EventBroker, Sim, SimConfig, WaldurVersion};
use serde_json::json;

use crate::helpers::{Backend, Counts, Expect, Options, Proxy, TOKEN, WAIT, spawn_app, temp_dir};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rabbitmq/node");

/// A RabbitMQ node with management and web-STOMP. A test's own node ([`Node::start`]) is
/// stopped and removed when dropped; the shared one ([`Node::shared`]) serves every test that
/// does not stop its broker, and is stopped by a watcher once this test process exits.
struct Node {
    dir: PathBuf,
    amqp: u16,
    management: u16,
    stomp: u16,
    owned: bool,
}

static SHARED: std::sync::OnceLock<Node> = std::sync::OnceLock::new();

/// A free port below Linux's ephemeral range (32768 and up), so that the listeners other
/// tests bind on port 0 cannot take it in the seconds before the node binds it.
fn free_port() -> u16 {
    loop {
        let port = 20_000 + (uuid::Uuid::new_v4().as_u128() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn try_script(dir: &std::path::Path, args: &[&str]) -> Result<(), String> {
    let output = std::process::Command::new(SCRIPT)
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {SCRIPT}: {error}"));
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`node {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn script(dir: &std::path::Path, args: &[&str]) {
    if let Err(error) = try_script(dir, args) {
        panic!("{error}");
    }
}

impl Node {
    /// The node shared by this test run, started by the first test that asks.
    async fn shared() -> &'static Node {
        if let Some(node) = SHARED.get() {
            return node;
        }
        tokio::task::spawn_blocking(|| {
            SHARED.get_or_init(|| {
                let node = Node::start_blocking(false);
                // Stops the node when this process is gone (`kill -0` probes our own pid).
                let watcher = format!(
                    "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {SCRIPT} --dir '{dir}' stop; rm -rf '{dir}'",
                    pid = std::process::id(),
                    dir = node.dir.display(),
                );
                let mut child = std::process::Command::new("sh")
                    .args(["-c", &watcher])
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("start the node's watcher");
                std::thread::spawn(move || child.wait());
                node
            })
        })
        .await
        .expect("join")
    }

    async fn start() -> Node {
        tokio::task::spawn_blocking(|| Node::start_blocking(true))
            .await
            .expect("join")
    }

    /// A node on free ports; a port taken between the choice and the bind fails the start at
    /// once, and the start is tried again on other ports (three times in all).
    fn start_blocking(owned: bool) -> Node {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let mut node = Node {
                dir: temp_dir("stomp-node"),
                amqp: free_port(),
                management: free_port(),
                stomp: free_port(),
                owned,
            };
            let name = format!("ps{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
            let ports = format!(
                "{},{},{},{}",
                node.amqp,
                node.management,
                node.stomp,
                free_port()
            );
            match try_script(&node.dir, &["--name", &name, "--ports", &ports, "start"]) {
                Ok(()) => return node,
                Err(error) => {
                    let _ = try_script(&node.dir, &["stop"]);
                    failures.push(error);
                    // Its folder stays for the logs the failure names.
                    node.owned = false;
                }
            }
        }
        panic!("the web-STOMP node did not start: {}", failures.join("; "));
    }

    fn broker(&self) -> EventBroker {
        EventBroker {
            amqp_url: format!("amqp://guest:guest@127.0.0.1:{}", self.amqp),
            management_url: format!("http://guest:guest@127.0.0.1:{}", self.management),
        }
    }

    async fn run(&self, command: &'static str) {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || script(&dir, &[command]))
            .await
            .expect("join");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        script(&self.dir, &["stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The seeded catalogue's offering uuid by name (uuids are stable across simulators).
fn offering(name: &str) -> String {
    let sim = Sim::new(SimConfig {
        tokens: vec![],
        hook: None,
        seed: true,
        public_url: None,
        waldur: WaldurVersion::V8_0,
    });
    sim.catalogue()
        .offerings
        .into_iter()
        .find(|o| o.name == name)
        .map(|o| o.uuid)
        .expect("offering in the catalogue")
}

fn events_config(stomp_port: u16, flow: &str) -> String {
    format!(
        "[events]\nurl = \"ws://127.0.0.1:{stomp_port}/ws\"\nflow = \"{flow}\"\nheartbeat_ms = 1000\nbackoff_initial_ms = 100\nbackoff_max_ms = 1000\nofferings = [\"{}\", \"{}\"]\n",
        offering("LUMI-C"),
        offering("LUMI-G"),
    )
}

async fn await_connected(stats: &puhuri_approver::events::StreamStats) {
    let wait = async {
        loop {
            let notified = stats.connected_notify.notified();
            if stats.connected.load(Ordering::Relaxed) {
                return;
            }
            notified.await;
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .expect("the event stream connects");
}

async fn stream_app(
    node: &Node,
    backend: Backend,
    waldur: WaldurVersion,
    flow: &str,
    url_port: u16,
    reconcile_interval_secs: u64,
) -> crate::helpers::TestApp {
    spawn_app(Options {
        backend,
        waldur,
        reconcile_interval_secs,
        sim_events: Some(node.broker()),
        extra_config: events_config(url_port, flow),
        ..Options::default()
    })
    .await
}

crate::on_both_backends!(an_allocation_is_decided_through_the_event_stream_alone);

async fn an_allocation_is_decided_through_the_event_stream_alone(backend: Backend) {
    let node = Node::shared().await;
    // No reconciler loop at all: the decision can only come through the stream.
    let app = stream_app(node, backend, WaldurVersion::V8_0, "auto", node.stomp, 0).await;
    let running = app.running.as_ref().expect("running");
    let stats = running.events.clone().expect("the stream runs");
    await_connected(&stats).await;
    let began = Instant::now();
    let cases = vec![(
        app.create(json!({"cpu_k_hours": 10})).await,
        Expect::Approve,
    )];
    app.wait_decided(&cases, WAIT).await;
    let took = began.elapsed();
    assert_eq!(app.check(&cases), Counts::default());
    // The workers may decide before the stream counts its confirm and sends the ACK.
    let handled = async {
        loop {
            let next = stats.handled_notify.notified();
            if stats.acked.load(Ordering::Relaxed) >= 1 {
                return;
            }
            next.await;
        }
    };
    tokio::time::timeout(WAIT, handled)
        .await
        .expect("the frame is acknowledged");
    assert_eq!(
        stats.queued.load(Ordering::Relaxed),
        1,
        "{stats:?}, published {}",
        app.sim.events_published()
    );
    assert_eq!(stats.acked.load(Ordering::Relaxed), 1, "{stats:?}");
    assert_eq!(running.reconciler.as_ref().map_or(0, |r| r.passes()), 0);
    let (_, _, ready) = app.readyz().await;
    assert_eq!(ready["checks"]["events"], "ok", "{ready}");
    println!(
        "stomp end to end ({backend:?}): created to decided in {} ms through the event stream alone",
        took.as_millis()
    );
    app.stop().await;
}

crate::on_both_backends!(a_cut_websocket_loses_nothing_and_decides_nothing_twice);

async fn a_cut_websocket_loses_nothing_and_decides_nothing_twice(backend: Backend) {
    let node = Node::shared().await;
    let proxy = Proxy::start(([127, 0, 0, 1], node.stomp).into()).await;
    let app = stream_app(node, backend, WaldurVersion::V7_0, "auto", proxy.port, 3600).await;
    let running = app.running.as_ref().expect("running");
    let stats = running.events.clone().expect("the stream runs");
    await_connected(&stats).await;
    // The cut lands as the first frame arrives, while later ones are still in flight
    // (delivered and not yet acknowledged, or not yet delivered).
    let first = stats.frame_notify.notified();
    let mut cases = app.create_mixed(30).await;
    tokio::time::timeout(WAIT, first)
        .await
        .expect("a frame arrives");
    assert!(proxy.cut() > 0, "the stream went through the proxy");
    cases.extend(app.create_mixed(9).await);
    await_connected(&stats).await;
    cases.extend(app.create_mixed(6).await);
    let took = app.wait_decided(&cases, WAIT).await;
    let counts = app.check(&cases);
    println!(
        "stomp cut ({backend:?}): {} allocations, websocket cut once: lost={} duplicated={} wrong={}; redelivered frames={} reconnects={} decided in {} ms",
        cases.len(),
        counts.lost,
        counts.duplicated,
        counts.wrong,
        stats.redelivered.load(Ordering::Relaxed),
        stats.reconnects.load(Ordering::Relaxed),
        took.as_millis()
    );
    assert_eq!(counts, Counts::default());
    assert!(stats.reconnects.load(Ordering::Relaxed) >= 1);
    app.stop().await;
}

crate::on_both_backends!(the_broker_stopped_mid_stream_loses_nothing);

async fn the_broker_stopped_mid_stream_loses_nothing(backend: Backend) {
    let node = Node::start().await;
    let app = stream_app(
        &node,
        backend,
        WaldurVersion::V8_0,
        "consumers",
        node.stomp,
        3600,
    )
    .await;
    let running = app.running.as_ref().expect("running");
    let stats = running.events.clone().expect("the stream runs");
    await_connected(&stats).await;
    // Stopped as the first frame arrives: later ones are in flight or still in Waldur's queue.
    let first = stats.frame_notify.notified();
    let mut cases = app.create_mixed(24).await;
    tokio::time::timeout(WAIT, first)
        .await
        .expect("a frame arrives");
    node.run("stop").await;
    // Created while Waldur's broker is away: their events are lost by design; the reconcile
    // pass on reconnect finds them.
    cases.extend(app.create_mixed(6).await);
    node.run("start").await;
    await_connected(&stats).await;
    cases.extend(app.create_mixed(6).await);
    let took = app.wait_decided(&cases, WAIT).await;
    let counts = app.check(&cases);
    println!(
        "stomp broker stop ({backend:?}): {} allocations: lost={} duplicated={} wrong={}; redelivered frames={} reconnects={} decided in {} ms",
        cases.len(),
        counts.lost,
        counts.duplicated,
        counts.wrong,
        stats.redelivered.load(Ordering::Relaxed),
        stats.reconnects.load(Ordering::Relaxed),
        took.as_millis()
    );
    assert_eq!(counts, Counts::default());
    app.stop().await;
}

#[tokio::test]
async fn registration_is_as_strict_as_waldur() {
    let node = Node::shared().await;
    let sim = Sim::new(SimConfig {
        tokens: vec![puhuri_auth::Secret::new(TOKEN)],
        hook: None,
        seed: true,
        public_url: None,
        waldur: WaldurVersion::V8_0,
    });
    sim.set_event_broker(node.broker());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(sim.clone().serve(listener, stop.clone()));
    let http = reqwest::Client::new();
    let post = |path: &str, token: Option<&str>, body: serde_json::Value| {
        let mut request = http.post(format!("http://{addr}/api/{path}")).json(&body);
        if let Some(token) = token {
            request = request.header("Authorization", format!("Token {token}"));
        }
        request.send()
    };
    let lumi = offering("LUMI-C");
    let scopes = json!({"object_types": ["order"], "scopes": [{"type": "offering", "uuid": lumi}]});
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        status(
            post("event-consumers/register/", None, scopes.clone())
                .await
                .expect("answer")
        ),
        401
    );
    let other = json!({"object_types": ["order"], "scopes": [{"type": "offering", "uuid": uuid::Uuid::new_v4().simple().to_string()}]});
    assert_eq!(
        status(
            post("event-consumers/register/", Some(TOKEN), other)
                .await
                .expect("answer")
        ),
        400
    );
    let empty = json!({"object_types": ["order"], "scopes": []});
    assert_eq!(
        status(
            post("event-consumers/register/", Some(TOKEN), empty)
                .await
                .expect("answer")
        ),
        403
    );
    assert_eq!(
        status(
            post("event-consumers/register/", Some(TOKEN), scopes.clone())
                .await
                .expect("answer")
        ),
        201
    );
    assert_eq!(
        status(
            post("event-consumers/register/", Some(TOKEN), scopes)
                .await
                .expect("answer")
        ),
        200
    );

    // Both flows through the client; the queues exist on the broker with Waldur's arguments.
    let client = puhuri_client::PuhuriClient::new(
        &puhuri_client::ClientConfig {
            url: format!("http://{addr}/api/"),
            api: puhuri_client::ApiGeneration::Orders,
            timeout: Duration::from_secs(5),
        },
        TOKEN,
    )
    .expect("client");
    assert!(client.has_event_consumers().await.expect("probe"));
    let uuid = puhuri_client::WaldurUuid::parse(&lumi).expect("uuid");
    let consumer = client
        .register_event_consumer(std::slice::from_ref(&uuid))
        .await
        .expect("consumer");
    let subscription = client
        .subscribe_events(std::slice::from_ref(&uuid))
        .await
        .expect("subscription");
    assert_eq!(consumer.vhost, subscription.vhost);
    for queue in consumer.queues.iter().chain(&subscription.queues) {
        let info: serde_json::Value = http
            .get(format!(
                "http://127.0.0.1:{}/api/queues/{}/{queue}",
                node.management, consumer.vhost
            ))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
            .expect("management answers")
            .json()
            .await
            .expect("json");
        assert_eq!(info["durable"], true, "{info}");
        assert_eq!(info["arguments"]["x-max-length"], 10_000, "{info}");
        assert_eq!(info["arguments"]["x-message-ttl"], 3_600_000, "{info}");
        assert_eq!(
            info["arguments"]["x-overflow"], "reject-publish-dlx",
            "{info}"
        );
    }
    // 7.0 has no event consumers: the probe says so.
    let old = Sim::new(SimConfig {
        tokens: vec![puhuri_auth::Secret::new(TOKEN)],
        hook: None,
        seed: true,
        public_url: None,
        waldur: WaldurVersion::V7_0,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let old_addr = listener.local_addr().expect("addr");
    tokio::spawn(old.serve(listener, stop.clone()));
    let old_client = puhuri_client::PuhuriClient::new(
        &puhuri_client::ClientConfig {
            url: format!("http://{old_addr}/api/"),
            api: puhuri_client::ApiGeneration::Orders,
            timeout: Duration::from_secs(5),
        },
        TOKEN,
    )
    .expect("client");
    assert!(!old_client.has_event_consumers().await.expect("probe"));
    // Without a broker, registration fails as a server whose broker is away.
    let error = old_client
        .subscribe_events(std::slice::from_ref(&uuid))
        .await;
    assert!(error.is_err());
    stop.cancel();
}

crate::on_both_backends!(killed_between_the_confirm_and_the_ack_loses_nothing);

/// A child process, SIGKILLed (to its own pid) and reaped when dropped, also when a test
/// fails first.
struct Child(std::process::Child);

impl Child {
    /// SIGKILL to the child's own pid; its exit status once reaped.
    fn kill(mut self) -> std::process::ExitStatus {
        let _ = self.0.kill();
        self.0.wait().expect("wait for the child")
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // A reaped child is not signalled again (std keeps its status).
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child process whose stderr is copied line by line into `log`; `marker` fires on the
/// first line containing `marker_text`.
fn spawn_logged(
    mut command: std::process::Command,
    log: PathBuf,
    marker_text: &'static str,
) -> (Child, tokio::sync::oneshot::Receiver<()>) {
    use std::io::{BufRead as _, Write as _};
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start a receiver process");
    let stderr = child.stderr.take().expect("piped stderr");
    let (marker, seen) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut file = std::fs::File::create(&log).expect("log file");
        let mut marker = Some(marker);
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(file, "{line}");
            if line.contains(marker_text)
                && let Some(marker) = marker.take()
            {
                let _ = file.flush();
                let _ = marker.send(());
            }
        }
    });
    (Child(child), seen)
}

/// A `receive` process SIGKILLed after an event is durably queued and before its `ACK` (the
/// test-only hook logs a marker there and holds the `ACK`; the test awaits the marker), then
/// a second `receive` process on the same queue, started once the first is gone (on the
/// embedded queue, the same data folder): Waldur's broker delivers the frame again, marked
/// redelivered, it is queued again under the same id, and the workers decide every
/// allocation once.
async fn killed_between_the_confirm_and_the_ack_loses_nothing(backend: Backend) {
    let node = Node::shared().await;
    let mut app = spawn_app(Options {
        backend,
        waldur: WaldurVersion::V8_0,
        roles: puhuri_approver::app::Roles {
            receive: false,
            work: true,
        },
        reconcile_interval_secs: 0,
        sim_events: Some(node.broker()),
        extra_config: events_config(node.stomp, "consumers"),
        ..Options::default()
    })
    .await;
    let dir = temp_dir("stomp-kill");
    let config = app.write_config(&dir);
    let receiver = |hold: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_puhuri-approver"));
        command
            .arg("receive")
            .arg("--config")
            .arg(&config)
            .env("PUHURI_APPROVER_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "debug");
        if backend == Backend::RabbitMq {
            command.env("PUHURI_APPROVER_AMQP_URL", crate::helpers::amqp_url());
        }
        if hold {
            command.env("PUHURI_APPROVER_TEST_HOLD_BEFORE_STOMP_ACK", "1");
        }
        let log = dir.join(if hold { "first.log" } else { "second.log" });
        spawn_logged(command, log, puhuri_approver::events::HOLD_MARKER)
    };
    let (first, held) = receiver(true);
    // The first receiver registers, connects and subscribes; the consumer's queue exists
    // once the simulator answered its registration.
    let registered = async {
        let mut calls = app.sim.watch_calls();
        while !app
            .sim
            .calls()
            .iter()
            .any(|c| c.path.ends_with("/event-consumers/register/"))
        {
            calls.changed().await.expect("simulator runs");
        }
    };
    tokio::time::timeout(WAIT, registered)
        .await
        .expect("the receiver registers");
    let cases = app.create_mixed(3).await;
    tokio::time::timeout(WAIT, held)
        .await
        .expect("the receiver queues an event and holds its ACK")
        .expect("the marker line");
    // SIGKILL to the child's own pid, then reaped: the second starts only once it is gone.
    let status = tokio::task::spawn_blocking(move || first.kill())
        .await
        .expect("join");
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(status.signal(), Some(9), "the first receiver is SIGKILLed");
    let (second, _) = receiver(false);
    let took = app.wait_decided(&cases, WAIT).await;
    // The frame queued before the kill is delivered again by Waldur's broker and queued
    // again under the same id: one notification more than events, which the workers absorb.
    let mut settled = app.settled.take().expect("workers run");
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    let count = async {
        while seen.values().sum::<usize>() < cases.len() + 1 {
            let one = settled.recv().await.expect("worker events");
            if one.id.starts_with("stomp_") {
                *seen.entry(one.id).or_default() += 1;
            }
        }
    };
    let all = tokio::time::timeout(WAIT, count).await;
    let duplicates = seen.values().filter(|&&n| n > 1).count();
    let counts = app.check(&cases);
    let _ = tokio::task::spawn_blocking(move || second.kill()).await;
    let first_log = std::fs::read_to_string(dir.join("first.log")).expect("read the log");
    let second_log = std::fs::read_to_string(dir.join("second.log")).expect("read the log");
    let held_ids: Vec<&str> = first_log
        .lines()
        .filter(|l| l.contains(puhuri_approver::events::HOLD_MARKER))
        .filter_map(|l| l.split("notification=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    let requeued: Vec<&str> = second_log
        .lines()
        .filter(|l| l.contains("event queued") && l.contains("redelivered=true"))
        .filter_map(|l| l.split("notification=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    println!(
        "stomp SIGKILL before ACK ({backend:?}): {} allocations: lost={} duplicated={} wrong={}; frames queued twice={duplicates}; redelivered frames queued by the second receiver={}; decided in {} ms",
        cases.len(),
        counts.lost,
        counts.duplicated,
        counts.wrong,
        requeued.len(),
        took.as_millis()
    );
    assert_eq!(counts, Counts::default());
    assert!(
        all.is_ok(),
        "the redelivered frame was queued again: {seen:?}"
    );
    assert_eq!(duplicates, 1, "{seen:?}");
    assert_eq!(held_ids.len(), 1, "{first_log}");
    assert!(
        requeued.contains(&held_ids[0]),
        "the held frame comes back marked redelivered: {held_ids:?} {requeued:?}"
    );
    assert_eq!(
        seen.get(held_ids[0]),
        Some(&2),
        "the held frame is the one queued twice: {seen:?}"
    );
    // Registration, login and every frame logged at debug: the token (the passcode) never.
    for (name, log) in [("first.log", &first_log), ("second.log", &second_log)] {
        assert!(log.contains("event stream connected"), "{name}: {log}");
        assert!(!log.contains(TOKEN), "{name} shows the token");
        crate::helpers::assert_for_people(name, log);
    }
    app.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

crate::on_both_backends!(a_receive_process_asks_the_workers_for_a_reconcile_pass);

/// A `receive` process has no reconciler: when its event stream connects, it queues a
/// reconcile request, and a worker's reconciler runs a pass. Allocations created before any
/// consumer was registered (Waldur sends their events to nobody) are decided by that pass;
/// the workers' own interval is an hour.
async fn a_receive_process_asks_the_workers_for_a_reconcile_pass(backend: Backend) {
    let node = Node::shared().await;
    let mut app = spawn_app(Options {
        backend,
        waldur: WaldurVersion::V8_0,
        roles: puhuri_approver::app::Roles {
            receive: false,
            work: true,
        },
        reconcile_interval_secs: 3600,
        sim_events: Some(node.broker()),
        extra_config: events_config(node.stomp, "consumers"),
        ..Options::default()
    })
    .await;
    let reconciler = app
        .running
        .as_ref()
        .and_then(|r| r.reconciler.clone())
        .expect("the workers' reconciler");
    // The pass at start; nothing announces its end but its report.
    tokio::time::timeout(WAIT, async {
        while reconciler.last_report().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the first reconcile pass ends");
    let cases = app.create_mixed(3).await;
    assert!(
        !app.sim
            .calls()
            .iter()
            .any(|c| c.path.ends_with("/event-consumers/register/")),
        "no consumer yet: Waldur sends these events to nobody"
    );
    let dir = temp_dir("stomp-reconcile");
    let config = app.write_config(&dir);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_puhuri-approver"));
    command
        .arg("receive")
        .arg("--config")
        .arg(&config)
        .env("PUHURI_APPROVER_LISTEN", "127.0.0.1:0");
    if backend == Backend::RabbitMq {
        command.env("PUHURI_APPROVER_AMQP_URL", crate::helpers::amqp_url());
    }
    let (receiver, requested) = spawn_logged(
        command,
        dir.join("receive.log"),
        "reconcile pass requested from the workers",
    );
    tokio::time::timeout(WAIT, requested)
        .await
        .expect("the receive process requests a pass")
        .expect("the request line");
    let took = app.wait_decided(&cases, WAIT).await;
    let counts = app.check(&cases);
    let mut settled = app.settled.take().expect("workers run");
    let mut ids = Vec::new();
    let all = tokio::time::timeout(WAIT, async {
        while ids.len() < cases.len() {
            ids.push(settled.recv().await.expect("worker events").id);
        }
    })
    .await;
    let _ = tokio::task::spawn_blocking(move || receiver.kill()).await;
    println!(
        "stomp reconcile request from a receive process ({backend:?}): {} allocations: lost={} duplicated={} wrong={}; reconcile passes={}; decided in {} ms",
        cases.len(),
        counts.lost,
        counts.duplicated,
        counts.wrong,
        reconciler.passes(),
        took.as_millis()
    );
    assert_eq!(counts, Counts::default());
    assert_eq!(reconciler.passes(), 2, "the start and the requested pass");
    assert!(all.is_ok(), "every allocation settled: {ids:?}");
    assert!(
        ids.iter().all(|id| !id.starts_with("stomp_")),
        "decided by the reconciler, not through the stream: {ids:?}"
    );
    app.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TCP proxy that can hold every byte (both ways) while keeping the connections open: a
/// WebSocket that goes silent without closing.
struct StallingProxy {
    port: u16,
    paused: tokio::sync::watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl StallingProxy {
    async fn start(upstream: u16) -> StallingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let (paused, _) = tokio::sync::watch::channel(false);
        let gate = paused.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                tokio::spawn(pipe(in_read, out_write, gate.subscribe()));
                tokio::spawn(pipe(out_read, in_write, gate.subscribe()));
            }
        });
        StallingProxy {
            port,
            paused,
            accept,
        }
    }

    fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies bytes while the gate is open; holds them (the connection stays open) while shut.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let Ok(n) = from.read(&mut buffer).await else {
            return;
        };
        if n == 0 {
            return;
        }
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// The server's heart-beats stop arriving while the connection stays open: the stream
/// notices after twice the interval, reconnects, and what was published meanwhile is
/// decided (redelivered, or found by the reconcile pass of the reconnect).
#[tokio::test]
async fn a_silent_connection_is_dropped_by_the_heart_beat() {
    let node = Node::shared().await;
    let proxy = StallingProxy::start(node.stomp).await;
    let app = stream_app(
        node,
        Backend::Embedded,
        WaldurVersion::V8_0,
        "consumers",
        proxy.port,
        3600,
    )
    .await;
    let running = app.running.as_ref().expect("running");
    let stats = running.events.clone().expect("the stream runs");
    await_connected(&stats).await;
    let down = stats.disconnected_notify.notified();
    proxy.pause(true);
    let began = Instant::now();
    let mut cases = app.create_mixed(6).await;
    tokio::time::timeout(WAIT, down)
        .await
        .expect("the silence is noticed");
    let noticed = began.elapsed();
    proxy.pause(false);
    await_connected(&stats).await;
    cases.extend(app.create_mixed(6).await);
    let took = app.wait_decided(&cases, WAIT).await;
    let counts = app.check(&cases);
    println!(
        "stomp silence: noticed after {} ms (heart-beat 1000 ms); {} allocations: lost={} duplicated={} wrong={}; redelivered frames={}; decided in {} ms",
        noticed.as_millis(),
        cases.len(),
        counts.lost,
        counts.duplicated,
        counts.wrong,
        stats.redelivered.load(Ordering::Relaxed),
        took.as_millis()
    );
    assert_eq!(counts, Counts::default());
    assert!(noticed < Duration::from_secs(10), "{noticed:?}");
    app.stop().await;
}

crate::on_both_backends!(an_unreadable_event_is_dead_lettered_with_its_body_and_acked);

/// Something that is not an order event arrives on the stream: it is queued as it came, the
/// workers dead-letter it (body kept), and the frame is acknowledged; an order event of
/// another state is counted and acknowledged; the stream goes on.
async fn an_unreadable_event_is_dead_lettered_with_its_body_and_acked(backend: Backend) {
    let node = Node::shared().await;
    let app = stream_app(
        node,
        backend,
        WaldurVersion::V8_0,
        "consumers",
        node.stomp,
        0,
    )
    .await;
    let running = app.running.as_ref().expect("running");
    let stats = running.events.clone().expect("the stream runs");
    await_connected(&stats).await;
    // Registering again with the same bindings answers the same queue (200).
    let client = puhuri_client::PuhuriClient::new(
        &puhuri_client::ClientConfig {
            url: format!("{}/api/", app.sim_url),
            api: puhuri_client::ApiGeneration::Orders,
            timeout: Duration::from_secs(5),
        },
        TOKEN,
    )
    .expect("client");
    let offerings = [offering("LUMI-C"), offering("LUMI-G")]
        .map(|o| puhuri_client::WaldurUuid::parse(&o).expect("uuid"));
    let channel = client
        .register_event_consumer(&offerings)
        .await
        .expect("registered again");
    assert!(!channel.created);
    let http = reqwest::Client::new();
    let publish = |payload: &'static str| {
        http.post(format!(
            "http://127.0.0.1:{}/api/exchanges/{}/amq.default/publish",
            node.management, channel.vhost
        ))
        .basic_auth("guest", Some("guest"))
        .json(&json!({
            "properties": {"delivery_mode": 2},
            "routing_key": channel.queues[0],
            "payload": payload,
            "payload_encoding": "string",
        }))
        .send()
    };
    const GARBAGE: &str = "this is not an order event";
    for payload in [
        GARBAGE,
        r#"{"order_uuid":"0bd3a4ee3c0a4b4d8f0c6b2f6f1e2a11","order_state":"pending-consumer"}"#,
    ] {
        let answer = publish(payload).await.expect("management answers");
        assert_eq!(answer.status().as_u16(), 200);
    }
    let broker = running.broker.clone();
    let dead = async {
        loop {
            let letters = broker.dead_letters(10).await.unwrap_or_default();
            let ignored = stats.ignored.load(Ordering::Relaxed) == 1;
            if let Some(letter) = letters.into_iter().find(|l| l.body == GARBAGE.as_bytes())
                && ignored
            {
                return letter;
            }
            // Neither the dead-letter queue nor the stream's counters can be awaited.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let letter = tokio::time::timeout(WAIT, dead)
        .await
        .expect("the unreadable event is dead-lettered");
    assert!(
        letter.message_id.starts_with("stomp_"),
        "{}",
        letter.message_id
    );
    let handled = async {
        loop {
            let next = stats.handled_notify.notified();
            if stats.acked.load(Ordering::Relaxed) >= 2 {
                return;
            }
            next.await;
        }
    };
    tokio::time::timeout(WAIT, handled)
        .await
        .expect("both frames are acknowledged");
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 1);
    assert_eq!(stats.ignored.load(Ordering::Relaxed), 1);
    assert!(stats.acked.load(Ordering::Relaxed) >= 2);
    // The stream goes on.
    let cases = vec![(
        app.create(json!({"cpu_k_hours": 10})).await,
        Expect::Approve,
    )];
    app.wait_decided(&cases, WAIT).await;
    assert_eq!(app.check(&cases), Counts::default());
    app.stop().await;
}

/// `demo --source stomp` as the README runs it, against the shared node; and the error that
/// names what is missing when web-STOMP is not there.
#[tokio::test]
async fn the_demo_runs_through_the_event_stream() {
    let node = Node::shared().await;
    let demo = |stomp_url: String| {
        let amqp = format!("amqp://guest:guest@127.0.0.1:{}", node.amqp);
        let management = format!("http://guest:guest@127.0.0.1:{}", node.management);
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_puhuri-approver"))
                .args(["demo", "--source", "stomp", "--count", "8", "--rate", "50"])
                .env_remove("PUHURI_APPROVER_AMQP_URL")
                .env_remove("PUHURI_APPROVER_CONFIG")
                .env("PUHURI_APPROVER_DEMO_AMQP_URL", amqp)
                .env("PUHURI_APPROVER_DEMO_MANAGEMENT_URL", management)
                .env("PUHURI_APPROVER_DEMO_STOMP_URL", stomp_url)
                .env("RUST_LOG", "error")
                .output()
                .expect("run the demo")
        })
    };
    let output = demo(format!("ws://127.0.0.1:{}/ws", node.stomp))
        .await
        .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("Waldur's event stream, STOMP at"),
        "{stdout}"
    );
    assert!(
        stdout.contains("8 allocations decided: 3 approved, 4 held, 1 rejected"),
        "{stdout}"
    );
    let closed = free_port();
    let output = demo(format!("ws://127.0.0.1:{closed}/ws"))
        .await
        .expect("join");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("web-STOMP endpoint") && stderr.contains("rabbitmq_web_stomp"),
        "{stderr}"
    );
    assert!(!stderr.contains("guest:guest"), "{stderr}");
}
