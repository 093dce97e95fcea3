//! Fault scenarios. Each one streams allocations of three kinds (approve, reject, hold)
//! through a failure and then counts, from the simulator's state and write calls, the
//! allocations lost, written twice and decided wrongly, and from the events exchange (a
//! queue of the test's own) or the embedded event table, the decision events missing or
//! duplicated beyond their id: all must be zero. One table row per scenario is printed
//! for the CI log.

use std::time::Duration;

use futures_util::StreamExt;
use puhuri_approver::app::Roles;
use puhuri_approver::worker::{Disposition, Outcome};
use puhuri_sim::Faults;
use serde_json::json;

use crate::helpers::{
    Backend, Counts, EventTap, Expect, Options, Proxy, amqp_url, notify_until_accepted, report,
    spawn_app, temp_dir,
};

const RECOVERY: Duration = Duration::from_secs(60);

#[tokio::test]
async fn lost_notifications_are_all_decided_by_the_reconciler_alone() {
    let app = spawn_app(Options {
        reconcile_interval_secs: 1,
        reconcile_recheck_secs: 1,
        ..Options::default()
    })
    .await;
    let mut events = app.tap_events().await;
    // No notification is sent at all.
    let cases = app.create_mixed(30).await;
    let took = app.wait_decided(&cases, RECOVERY).await;
    let tally = app.check_all(&cases, &mut events, RECOVERY).await;
    report("notifications lost", tally, cases.len(), took);
    assert_eq!(tally.counts, Counts::default());
    app.stop().await;
}

#[tokio::test]
async fn a_reconcile_cycle_lists_with_few_calls_and_skips_what_it_enqueued_recently() {
    let app = spawn_app(Options {
        roles: Roles {
            receive: true,
            work: true,
        },
        ..Options::default()
    })
    .await;
    let mut events = app.tap_events().await;
    let cases = app.create_mixed(250).await;
    let reconciler = app
        .running
        .as_ref()
        .and_then(|r| r.reconciler.clone())
        .expect("reconciler");
    let first = reconciler.run_cycle().await.expect("cycle");
    // 250 waiting orders, 100 per page: 3 list calls, and the first page once more when
    // the workers shrank the list during the pass.
    assert_eq!((first.pending, first.enqueued), (250, 250));
    assert!((3..=4).contains(&first.calls), "{first:?}");
    let second = reconciler.run_cycle().await.expect("cycle");
    assert_eq!(second.enqueued, 0, "{second:?}");
    assert_eq!(second.recently_enqueued, second.pending);
    let took = app.wait_decided(&cases, RECOVERY).await;
    let tally = app.check_all(&cases, &mut events, RECOVERY).await;
    report("reconcile cycles only", tally, cases.len(), took);
    assert_eq!(tally.counts, Counts::default());
    app.stop().await;
}

crate::on_both_backends!(puhuri_core_failing_30_percent_of_calls_loses_and_duplicates_nothing);

async fn puhuri_core_failing_30_percent_of_calls_loses_and_duplicates_nothing(backend: Backend) {
    let app = spawn_app(Options {
        max_attempts: 6,
        retry_delays_ms: "[20, 50, 100]",
        puhuri_timeout_ms: 300,
        reconcile_interval_secs: 1,
        reconcile_recheck_secs: 1,
        backend,
        ..Options::default()
    })
    .await;
    let mut events = app.tap_events().await;
    let cases = app.create_mixed(30).await;
    app.sim.set_faults(Faults {
        error_rate: 0.3,
        error_statuses: vec![500, 429, 503, 502],
        slow_rate: 0.05,
        slow_ms: 600,
        ..Faults::default()
    });
    let started = std::time::Instant::now();
    for (i, (created, _)) in cases.iter().enumerate() {
        notify_until_accepted(&app, &format!("msg_flaky_{i}"), created).await;
    }
    let took = started.elapsed() + app.wait_decided(&cases, RECOVERY).await;
    app.sim.set_faults(Faults::default());
    let tally = app.check_all(&cases, &mut events, RECOVERY).await;
    report(
        &format!("Puhuri Core failing 30 % of calls ({backend:?})"),
        tally,
        cases.len(),
        took,
    );
    assert_eq!(tally.counts, Counts::default());
    app.stop().await;
}

#[tokio::test]
async fn a_dead_letter_is_replayed_once_the_cause_is_fixed() {
    let mut app = spawn_app(Options::default()).await;
    let created = app.create(json!({"cpu_k_hours": 10})).await;
    // The integration user lacks a permission: 403 is permanent.
    app.sim.set_faults(Faults {
        fail_next: 1,
        fail_status: Some(403),
        ..Faults::default()
    });
    assert_eq!(app.notify("msg_forbidden", &created).await.status(), 202);
    let settled = app.settled("msg_forbidden").await;
    assert_eq!(settled.disposition, Disposition::DeadLettered);
    assert_eq!(app.order_state(&created), "pending-provider");

    let dir = temp_dir("dlq");
    let config = app.write_config(&dir);
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_puhuri-approver"))
            .arg("dlq")
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("PUHURI_APPROVER_AMQP_URL", amqp_url())
            .output()
            .expect("run the CLI");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.success(), stdout, stderr)
    };

    let (ok, listed, stderr) = cli(&["list"]);
    assert!(ok, "{stderr}");
    assert!(listed.contains("msg_forbidden"), "{listed}");
    assert!(listed.contains("403"), "{listed}");
    let (ok, shown, _) = cli(&["show", "msg_forbidden"]);
    assert!(ok);
    assert!(shown.contains(&created.resource_uuid), "{shown}");
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("  1. ") && l.contains("403")),
        "the one attempt's reason, numbered: {shown}"
    );
    let (ok, _, stderr) = cli(&["replay", "msg_missing"]);
    assert!(!ok);
    assert!(
        stderr.contains("no dead letter has id `msg_missing`"),
        "{stderr}"
    );

    // The cause is gone (the fault was one call); replay it.
    let (ok, replayed, stderr) = cli(&["replay", "msg_forbidden"]);
    assert!(ok, "{stderr}");
    assert!(replayed.contains("replayed 1 dead letter"), "{replayed}");
    let settled = app.settled("msg_forbidden").await;
    assert!(
        matches!(settled.result, Ok(Outcome::Approved { .. })),
        "{settled:?}"
    );
    assert_eq!(app.order_state(&created), "done");
    let (ok, listed, _) = cli(&["list"]);
    assert!(ok);
    assert!(listed.contains("is empty"), "{listed}");
    let _ = std::fs::remove_dir_all(dir);
    app.stop().await;
}

#[tokio::test]
async fn cutting_the_amqp_connection_mid_publish_loses_nothing() {
    let upstream: std::net::SocketAddr = "127.0.0.1:5672".parse().expect("addr");
    let proxy = Proxy::start(upstream).await;
    let app = spawn_app(Options {
        amqp_url: Some(format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port)),
        ..Options::default()
    })
    .await;
    let mut events = app.tap_events().await;
    let cases = app.create_mixed(60).await;
    let started = std::time::Instant::now();
    let accepted = std::sync::atomic::AtomicUsize::new(0);
    let progress = tokio::sync::Notify::new();
    let mut cuts = 0;
    {
        // Four senders at a time, so the stream lasts while the connection is cut.
        let sends = futures_util::stream::iter(cases.iter().enumerate())
            .map(|(i, (created, _))| {
                let (app, accepted, progress) = (&app, &accepted, &progress);
                async move {
                    notify_until_accepted(app, &format!("msg_cut_{i}"), created).await;
                    accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    progress.notify_one();
                }
            })
            .buffer_unordered(4)
            .collect::<Vec<()>>();
        tokio::pin!(sends);
        // Cut after 10 and after 30 accepted notifications, with publishes in flight.
        loop {
            tokio::select! {
                _ = &mut sends => break,
                () = progress.notified() => {
                    let done = accepted.load(std::sync::atomic::Ordering::SeqCst);
                    if (cuts == 0 && done >= 10) || (cuts == 1 && done >= 30) {
                        assert!(proxy.cut() > 0, "there were connections to cut");
                        cuts += 1;
                    }
                }
            }
        }
    }
    let took = app.wait_decided(&cases, RECOVERY).await;
    let tally = app.check_all(&cases, &mut events, RECOVERY).await;
    report(
        &format!("AMQP connection cut {cuts} times"),
        tally,
        cases.len(),
        started.elapsed().max(took),
    );
    assert_eq!(cuts, 2, "the connection was cut twice");
    assert_eq!(tally.counts, Counts::default());
    app.stop().await;
}

/// Sends SIGTERM to one process, by its (positive) pid; a process that has exited
/// already is not an error.
fn terminate(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-s", "TERM", "--"])
        .arg(pid.to_string())
        .status();
}

/// A worker process started from the built binary.
struct WorkerProcess(std::process::Child);

impl WorkerProcess {
    fn start(config: &std::path::Path) -> WorkerProcess {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_puhuri-approver"))
            .arg("work")
            .arg("--config")
            .arg(config)
            .env("PUHURI_APPROVER_AMQP_URL", amqp_url())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start a worker process");
        WorkerProcess(child)
    }

    /// Sends SIGTERM to this process only.
    fn terminate(&self) {
        terminate(self.0.id());
    }

    /// Sends SIGKILL to this process only.
    fn kill(&mut self) {
        self.0.kill().expect("SIGKILL");
    }

    /// Waits for the process to exit (bounded), off the async runtime's threads.
    async fn wait(mut self, within: Duration) -> std::process::ExitStatus {
        tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + within;
            loop {
                if let Some(status) = self.0.try_wait().expect("wait") {
                    return status;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the worker did not exit in time"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .await
        .expect("join")
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn workers_stopped_and_killed_mid_delivery_lose_nothing() {
    // This process only receives; the workers are separate processes.
    let app = spawn_app(Options {
        roles: Roles {
            receive: true,
            work: false,
        },
        ..Options::default()
    })
    .await;
    let mut events = app.tap_events().await;
    let dir = temp_dir("worker-kill");
    let config = app.write_config(&dir);
    // Each Puhuri Core call takes 30 ms, so deliveries are in flight when signals arrive.
    app.sim.set_faults(Faults {
        latency_ms: 30,
        ..Faults::default()
    });
    let cases = app.create_mixed(60).await;
    for (i, (created, _)) in cases.iter().enumerate() {
        notify_until_accepted(&app, &format!("msg_kill_{i}"), created).await;
    }
    let started = std::time::Instant::now();
    let mut calls = app.sim.watch_calls();
    let wait_for_writes = |n: usize| {
        let sim = app.sim.clone();
        let mut calls = calls.clone();
        async move {
            while sim.calls().len() < n {
                if calls.changed().await.is_err() {
                    return;
                }
            }
        }
    };

    // SIGTERM: the worker finishes what it started, acks it, and exits cleanly.
    let worker = WorkerProcess::start(&config);
    tokio::time::timeout(RECOVERY, wait_for_writes(5))
        .await
        .expect("first writes");
    worker.terminate();
    let status = worker.wait(Duration::from_secs(15)).await;
    assert!(status.success(), "graceful shutdown exits 0, got {status}");

    // SIGKILL: in-flight deliveries are abandoned; the broker redelivers them.
    let mut worker = WorkerProcess::start(&config);
    let written = app.sim.calls().len();
    tokio::time::timeout(RECOVERY, wait_for_writes(written + 5))
        .await
        .expect("more writes");
    worker.kill();
    let _ = worker.wait(Duration::from_secs(15)).await;

    let worker = WorkerProcess::start(&config);
    let took = app.wait_decided(&cases, RECOVERY).await;
    let _ = calls.borrow_and_update();
    let tally = app.check_all(&cases, &mut events, RECOVERY).await;
    report(
        "worker stopped (SIGTERM) and killed (SIGKILL)",
        tally,
        cases.len(),
        started.elapsed().max(took),
    );
    assert_eq!(tally.counts, Counts::default());
    drop(worker);
    let _ = std::fs::remove_dir_all(dir);
    app.stop().await;
}

/// A RabbitMQ node of the test's own, on its own ports and data folder.
struct PrivateRabbit {
    dir: std::path::PathBuf,
    port: u16,
    dist_port: u16,
    name: String,
    process: Option<std::process::Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl PrivateRabbit {
    fn new() -> PrivateRabbit {
        let dir = temp_dir("rabbit");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("plugins file");
        PrivateRabbit {
            port: free_port(),
            dist_port: free_port(),
            name: format!(
                "pa-{}@localhost",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            dir,
            process: None,
        }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    async fn start(&mut self) {
        let server = [
            "/usr/lib/rabbitmq/bin/rabbitmq-server",
            "/usr/sbin/rabbitmq-server",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("RabbitMQ is installed (deploy/local/ensure-rabbitmq installs it)");
        let d = |name: &str| self.dir.join(name);
        let child = std::process::Command::new(server)
            .env("HOME", &self.dir)
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d("mnesia"))
            .env("RABBITMQ_LOG_BASE", d("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", d("rabbitmq"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d("advanced.config"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", d("plugins-expand"))
            .stdout(std::fs::File::create(d("out.log")).expect("log file"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start a private RabbitMQ node");
        self.process = Some(child);
        // The node answers on its port once it accepts AMQP connections.
        let port = self.port;
        let up = tokio::time::timeout(Duration::from_secs(90), async move {
            loop {
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(
            up.is_ok(),
            "the private RabbitMQ node did not start; see {}",
            d("out.log").display()
        );
    }

    /// Stops the node and waits for it to exit. The start script stops the Erlang VM
    /// gracefully when it receives SIGTERM.
    async fn stop(&mut self) {
        if let Some(mut child) = self.process.take() {
            terminate(child.id());
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
        // The Erlang VM may outlive the wrapper script briefly: wait for the port to close.
        let port = self.port;
        let _ = tokio::time::timeout(Duration::from_secs(30), async move {
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        if let Some(child) = &self.process {
            terminate(child.id());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_rabbitmq_restart_while_notifications_stream_in_loses_nothing() {
    let mut rabbit = PrivateRabbit::new();
    rabbit.start().await;
    let app = spawn_app(Options {
        amqp_url: Some(rabbit.url()),
        ..Options::default()
    })
    .await;
    let mut events = app.tap_events().await;
    let cases = app.create_mixed(45).await;
    let (first, rest) = cases.split_at(15);
    for (i, (created, _)) in first.iter().enumerate() {
        notify_until_accepted(&app, &format!("msg_restart_a{i}"), created).await;
    }
    let started = std::time::Instant::now();
    // Restart the broker while the rest streams in: senders see 503 and send again.
    let sends = async {
        for (i, (created, _)) in rest.iter().enumerate() {
            notify_until_accepted(&app, &format!("msg_restart_b{i}"), created).await;
        }
    };
    let restart = async {
        rabbit.stop().await;
        rabbit.start().await;
    };
    tokio::join!(sends, restart);
    let took = app.wait_decided(&cases, RECOVERY).await;
    let tally = app.check_all(&cases, &mut events, RECOVERY).await;
    report(
        "RabbitMQ restarted mid-stream",
        tally,
        cases.len(),
        started.elapsed().max(took),
    );
    assert_eq!(tally.counts, Counts::default());
    app.stop().await;
    rabbit.stop().await;
}

/// Posts a signed notification to a receiver at `base` until it answers 202; a receiver
/// that is down (connection refused) is tried again, as a sender would.
async fn notify_process_until_accepted(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    created: &puhuri_sim::CreatedAllocation,
) {
    let body = json!({
        "type": "allocation.created",
        "order_uuid": created.order_uuid,
        "resource_uuid": created.resource_uuid,
    })
    .to_string();
    let secret =
        puhuri_auth::signature::WebhookSecret::parse(crate::helpers::SECRET).expect("secret");
    for _ in 0..600 {
        let timestamp = crate::helpers::now();
        let sent = http
            .post(format!("{base}/v1/notifications/relay"))
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                secret.sign(id, timestamp, body.as_bytes()),
            )
            .body(body.clone())
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        match sent.map(|r| r.status().as_u16()) {
            Ok(202) => return,
            Ok(503) | Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Ok(other) => panic!("unexpected answer {other}"),
        }
    }
    panic!("notification {id} never accepted");
}

#[tokio::test]
async fn serve_killed_mid_stream_on_the_embedded_queue_loses_nothing() {
    // This process runs only the simulator; `serve` runs as a child on the embedded queue.
    let app = spawn_app(Options {
        roles: Roles {
            receive: false,
            work: false,
        },
        ..Options::default()
    })
    .await;
    let dir = temp_dir("embedded-kill");
    let port = free_port();
    let config_text = app.config_text.replacen(
        "[queue]\nbackend = \"rabbitmq\"\n",
        &format!(
            "[queue]\nbackend = \"embedded\"\ndata_dir = \"{}\"\nlease_secs = 1\n",
            dir.join("data").display()
        ),
        1,
    );
    assert_ne!(
        config_text, app.config_text,
        "the queue section was replaced"
    );
    let config_text =
        format!("listen = \"127.0.0.1:{port}\"\n{config_text}\n[policy]\nfile = \"policy.toml\"\n");
    std::fs::write(dir.join("policy.toml"), app.policy_text).expect("policy");
    let config = dir.join("serve.toml");
    std::fs::write(&config, config_text).expect("config");
    let serve = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_puhuri-approver"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env_remove("PUHURI_APPROVER_AMQP_URL")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start serve")
    };
    // Slow upstream calls keep deliveries in flight when the process dies.
    app.sim.set_faults(Faults {
        latency_ms: 30,
        ..Faults::default()
    });
    let cases = app.create_mixed(45).await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();

    let mut child = serve();
    let (first, rest) = cases.split_at(30);
    for (i, (created, _)) in first.iter().enumerate() {
        notify_process_until_accepted(&http, &base, &format!("msg_embedded_a{i}"), created).await;
    }
    // Every accepted notification is on disk: kill the process with work in flight.
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let decided_at_kill = cases
        .iter()
        .filter(|(c, _)| app.order_state(c) != "pending-provider")
        .count();

    let mut child = serve();
    for (i, (created, _)) in rest.iter().enumerate() {
        notify_process_until_accepted(&http, &base, &format!("msg_embedded_b{i}"), created).await;
    }
    let took = app.wait_decided(&cases, RECOVERY).await;
    // The event table of the child's folder, read beside it.
    let queue = puhuri_queue::embedded::EmbeddedQueue::open(&dir.join("data"), RECOVERY)
        .expect("open the child's queue");
    let mut events = EventTap::embedded(queue);
    let tally = app.check_all(&cases, &mut events, RECOVERY).await;
    report(
        &format!(
            "serve on the embedded queue killed (SIGKILL) with {decided_at_kill} of 45 decided"
        ),
        tally,
        cases.len(),
        started.elapsed().max(took),
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(tally.counts, Counts::default());
    let _ = std::fs::remove_dir_all(dir);
    app.stop().await;
}

crate::on_both_backends!(writes_applied_then_answered_5xx_are_decided_once_with_their_events);

/// 30 % of the writes take effect and then answer 500, 502 or 503: the retry finds the
/// allocation half-written (backend_id set) or decided, finishes it or publishes the
/// event it would have published, with the same id.
async fn writes_applied_then_answered_5xx_are_decided_once_with_their_events(backend: Backend) {
    let app = spawn_app(Options {
        max_attempts: 8,
        retry_delays_ms: "[20, 50, 100]",
        reconcile_interval_secs: 1,
        reconcile_recheck_secs: 1,
        backend,
        ..Options::default()
    })
    .await;
    let mut events = app.tap_events().await;
    let cases = app.create_mixed(60).await;
    app.sim.set_faults(Faults {
        applied_error_rate: 0.3,
        ..Faults::default()
    });
    let started = std::time::Instant::now();
    for (i, (created, _)) in cases.iter().enumerate() {
        notify_until_accepted(&app, &format!("msg_applied_{i}"), created).await;
    }
    let took = started.elapsed() + app.wait_decided(&cases, RECOVERY).await;
    let tally = app.check_all(&cases, &mut events, RECOVERY).await;
    app.sim.set_faults(Faults::default());
    let applied = app
        .sim
        .calls()
        .iter()
        .filter(|c| c.applied_status.is_some())
        .count();
    report(
        &format!("writes applied then answered 5xx, 30 % ({backend:?}; {applied} such answers)"),
        tally,
        cases.len(),
        took,
    );
    assert!(applied > 0, "some writes were applied and answered 5xx");
    assert_eq!(tally.counts, Counts::default());
    app.stop().await;
}

crate::on_both_backends!(a_decision_whose_answer_was_lost_owes_its_event_past_max_attempts);

/// A reject takes effect and is answered 502; the reads of the attempts after it fail more
/// times than `max_attempts` allows. The delivery owes the decision event (nothing else would
/// publish it: the allocation no longer waits, so the reconciler skips it), so it is retried
/// at the last tier instead of dead-lettered, and publishes the event once Puhuri Core
/// answers again.
async fn a_decision_whose_answer_was_lost_owes_its_event_past_max_attempts(backend: Backend) {
    let mut app = spawn_app(Options {
        max_attempts: 2,
        retry_delays_ms: "[1000]",
        backend,
        ..Options::default()
    })
    .await;
    let mut events = app.tap_events().await;
    let cases = app.create_mixed(2).await;
    let case = &cases[1..];
    let (created, expect) = &case[0];
    assert_eq!(*expect, Expect::Reject);
    app.sim.set_faults(Faults {
        applied_error_rate: 1.0,
        applied_error_statuses: vec![502],
        ..Faults::default()
    });
    notify_until_accepted(&app, "msg_owed", created).await;
    let first = app.settled("msg_owed").await;
    assert_eq!(first.disposition, Disposition::RetryScheduled, "{first:?}");
    assert!(
        app.writes_for(created)
            .iter()
            .any(|c| c.applied_status.is_some() && c.status == 502),
        "the reject was applied and answered 502"
    );
    // The next three reads of the allocation fail: past `max_attempts` (2).
    app.sim.set_faults(Faults {
        fail_next: 3,
        fail_path: Some(created.resource_uuid.clone()),
        fail_status: Some(503),
        ..Faults::default()
    });
    let mut retries = 1;
    let last = loop {
        let settled = app.settled("msg_owed").await;
        match settled.disposition {
            Disposition::RetryScheduled => retries += 1,
            _ => break settled,
        }
    };
    assert_eq!(last.disposition, Disposition::Acked, "{last:?}");
    assert!(
        matches!(last.result, Ok(Outcome::AlreadyHandled { .. })),
        "{last:?}"
    );
    assert_eq!(retries, 4, "the applied reject, then three failed reads");
    let tally = app.check_all(case, &mut events, RECOVERY).await;
    assert_eq!(tally.counts, Counts::default());
    let broker = &app.running.as_ref().expect("running").broker;
    assert_eq!(broker.dead_depth().await.expect("dead depth"), 0);
    app.stop().await;
}

/// [`crate::helpers::APPROVE_SMALL`] plus erred for every LUMI-Slurm request (the order's
/// `set_state_erred`, a write Puhuri Core accepts in any state); holds the rest.
const PAIR_POLICY: &str = r#"
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

[[rule]]
name = "slurm-full"
when = 'offering.name == "LUMI-Slurm"'
action = "erred"
backend_id = "{project.slug}_{resource.short_uuid}"
message = "the Slurm partition is full"

[default]
action = "hold"
note = "not an automatic case"
"#;

/// Allocations of four kinds for [`PAIR_POLICY`], round-robin.
async fn create_four_kinds(
    app: &crate::helpers::TestApp,
    count: usize,
) -> Vec<(puhuri_sim::CreatedAllocation, Expect)> {
    let mut cases = Vec::new();
    for i in 0..count {
        let (request, expect) = match i % 4 {
            0 => (
                json!({"offering": "LUMI-C", "limits": {"cpu_k_hours": 100 + i}}),
                Expect::Approve,
            ),
            1 => (
                json!({"offering": "LUMI-C", "limits": {"cpu_k_hours": 5000 + i}}),
                Expect::Reject,
            ),
            2 => (
                json!({"offering": "LUMI-G", "limits": {"gpu_k_hours": 10}}),
                Expect::Hold,
            ),
            // Slurm: erred is the order's `set_state_erred`, a write that needs the claim.
            _ => (
                json!({"offering": "LUMI-Slurm", "limits": {"cpu_k_hours": 500}}),
                Expect::Erred,
            ),
        };
        let request: puhuri_sim::NewAllocation = serde_json::from_value(request).expect("request");
        cases.push((
            app.sim.create_allocation(request).await.expect("created"),
            expect,
        ));
    }
    cases
}

/// Waldur's hook pair for one allocation, sent at once: `marketplace_order_created`
/// names only the order, `marketplace_resource_create_requested` only the resource.
async fn send_hook_pair(
    app: &crate::helpers::TestApp,
    i: usize,
    created: &puhuri_sim::CreatedAllocation,
) {
    let order = json!({
        "created": "2026-01-01T00:00:00Z",
        "message": "order created",
        "event_type": "marketplace_order_created",
        "context": {"order_uuid": created.order_uuid},
    })
    .to_string();
    let resource = json!({
        "created": "2026-01-01T00:00:00Z",
        "message": "resource create requested",
        "event_type": "marketplace_resource_create_requested",
        "context": {"resource_uuid": created.resource_uuid},
    })
    .to_string();
    let (order_id, resource_id) = (format!("msg_pair_o{i}"), format!("msg_pair_r{i}"));
    let (a, b) = tokio::join!(
        app.post_signed(
            "waldur-relay",
            &order_id,
            order.as_bytes(),
            crate::helpers::SECRET
        ),
        app.post_signed(
            "waldur-relay",
            &resource_id,
            resource.as_bytes(),
            crate::helpers::SECRET
        ),
    );
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (202, 202));
}

crate::on_both_backends!(a_hook_pair_naming_order_and_resource_writes_each_allocation_once);

/// The pair reaches one worker's deliveries together: both hints resolve to the
/// resource before the lock, so the second finds the allocation decided — erred, which
/// Puhuri Core would accept twice, included.
async fn a_hook_pair_naming_order_and_resource_writes_each_allocation_once(backend: Backend) {
    let app = spawn_app(Options {
        policy: PAIR_POLICY,
        backend,
        ..Options::default()
    })
    .await;
    // Slow enough upstream calls that both hints of a pair are in flight together.
    app.sim.set_faults(Faults {
        latency_ms: 10,
        ..Faults::default()
    });
    let mut events = app.tap_events().await;
    let cases = create_four_kinds(&app, 40).await;
    let started = std::time::Instant::now();
    let pairs = cases
        .iter()
        .enumerate()
        .map(|(i, (created, _))| send_hook_pair(&app, i, created));
    futures_util::future::join_all(pairs).await;
    let took = app.wait_decided(&cases, RECOVERY).await;
    let tally = app.check_all(&cases, &mut events, RECOVERY).await;
    report(
        &format!("Waldur hook pair (order + resource) per allocation, one worker ({backend:?})"),
        tally,
        cases.len(),
        started.elapsed().max(took),
    );
    assert_eq!(tally.counts, Counts::default());
    app.stop().await;
}

crate::on_both_backends!(a_hook_pair_across_two_worker_instances_writes_each_allocation_once);

/// Two worker instances (own locks, own connections) on one queue take the two hints of
/// each pair: the state machine's 409 guards approvals and rejections; erred, which
/// Puhuri Core accepts in any state, is claimed across processes and re-read first.
async fn a_hook_pair_across_two_worker_instances_writes_each_allocation_once(backend: Backend) {
    let app = spawn_app(Options {
        policy: PAIR_POLICY,
        backend,
        prefetch: 4,
        ..Options::default()
    })
    .await;
    let second = app.start_second_worker().await;
    let mut second_settled = second.worker.as_ref().expect("workers run").subscribe();
    app.sim.set_faults(Faults {
        latency_ms: 10,
        ..Faults::default()
    });
    let mut events = app.tap_events().await;
    let cases = create_four_kinds(&app, 48).await;
    let started = std::time::Instant::now();
    let pairs = cases
        .iter()
        .enumerate()
        .map(|(i, (created, _))| send_hook_pair(&app, i, created));
    futures_util::future::join_all(pairs).await;
    let took = app.wait_decided(&cases, RECOVERY).await;
    let tally = app.check_all(&cases, &mut events, RECOVERY).await;
    let processed_by_second = second_settled.try_recv().is_ok();
    report(
        &format!("Waldur hook pair across two worker instances ({backend:?})"),
        tally,
        cases.len(),
        started.elapsed().max(took),
    );
    assert!(processed_by_second, "the second worker took deliveries too");
    assert_eq!(tally.counts, Counts::default());
    second.stop_roles().await;
    second.shutdown().await;
    app.stop().await;
}

/// The broker stops while decisions are written and before their events are published:
/// every write is applied at once but answered 1.5 s late, and the broker is stopped as
/// soon as the last decision write is recorded, so the events (and acks) of those
/// deliveries meet a broker that is going away. The redeliveries find the allocations
/// decided and publish the events with the same ids.
#[tokio::test]
async fn a_broker_stop_between_the_write_and_its_event_loses_no_event() {
    let mut rabbit = PrivateRabbit::new();
    rabbit.start().await;
    let app = spawn_app(Options {
        amqp_url: Some(rabbit.url()),
        ..Options::default()
    })
    .await;
    let mut events = app.tap_events().await;
    let cases = app.create_mixed(12).await;
    app.sim.set_faults(Faults {
        slow_rate: 1.0,
        slow_ms: 1500,
        ..Faults::default()
    });
    let started = std::time::Instant::now();
    for (i, (created, _)) in cases.iter().enumerate() {
        notify_until_accepted(&app, &format!("msg_event_gap_{i}"), created).await;
    }
    // Every approval and rejection is applied (recorded); their answers are on the way.
    let decisions = cases.iter().filter(|(_, e)| *e != Expect::Hold).count();
    let mut calls = app.sim.watch_calls();
    let written = tokio::time::timeout(RECOVERY, async {
        loop {
            let recorded = app
                .sim
                .calls()
                .iter()
                .filter(|c| {
                    c.path.ends_with("/approve_by_provider/")
                        || c.path.ends_with("/reject_by_provider/")
                })
                .count();
            if recorded >= decisions || calls.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(written.is_ok(), "the decisions were written");
    rabbit.stop().await;
    app.sim.set_faults(Faults::default());
    rabbit.start().await;
    let took = app.wait_decided(&cases, RECOVERY).await;
    let tally = app.check_all(&cases, &mut events, RECOVERY).await;
    report(
        "RabbitMQ stopped between the decision writes and their events",
        tally,
        cases.len(),
        started.elapsed().max(took),
    );
    assert_eq!(tally.counts, Counts::default());
    app.stop().await;
    rabbit.stop().await;
}
