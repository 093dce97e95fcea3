//! The service on a three-node RabbitMQ cluster started by `deploy/rabbitmq/cluster` in a
//! temporary folder (own node names, ports and Erlang cookie; the broker on 5672 is not
//! touched). While notifications stream in, the node leading the work queue is stopped
//! (and started again), then the node the service is connected to. Counted from the
//! simulator and the events exchange: allocations lost, written twice, decided wrongly,
//! and decision events missing or duplicated beyond their id — all must be zero.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use puhuri_sim::{CreatedAllocation, Faults};
use serde_json::Value;

use crate::helpers::{
    Counts, Expect, Options, TestApp, notify_until_accepted, spawn_app, temp_dir,
};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rabbitmq/cluster");

/// A cluster of this test's own; dropping it stops every node and removes its folder.
struct Cluster {
    dir: PathBuf,
}

/// One node as `cluster nodes` lists it.
struct Node {
    index: usize,
    name: String,
    port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Runs the harness (off the runtime's threads) and returns its standard output; a
/// failure panics with its standard error.
async fn harness(dir: &std::path::Path, args: &[&str]) -> String {
    let dir = dir.to_owned();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(SCRIPT)
            .arg("--dir")
            .arg(&dir)
            .args(&args)
            .output()
            .unwrap_or_else(|error| panic!("cannot run {SCRIPT}: {error}"));
        assert!(
            output.status.success(),
            "`cluster {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    })
    .await
    .expect("join the harness")
}

impl Cluster {
    /// Starts three nodes on free ports under unique node names, and joins them.
    async fn start() -> Cluster {
        let cluster = Cluster {
            dir: temp_dir("cluster"),
        };
        let name = format!("pa{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let ports = || {
            [free_port(), free_port(), free_port()]
                .map(|p| p.to_string())
                .join(",")
        };
        let (amqp, dist) = (ports(), ports());
        harness(
            &cluster.dir,
            &[
                "--name",
                &name,
                "--ports",
                &amqp,
                "--dist-ports",
                &dist,
                "start",
            ],
        )
        .await;
        cluster
    }

    async fn run(&self, args: &[&str]) -> String {
        harness(&self.dir, args).await
    }

    async fn nodes(&self) -> Vec<Node> {
        self.run(&["nodes"])
            .await
            .lines()
            .map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                assert_eq!(fields.len(), 4, "unexpected line {line:?}");
                Node {
                    index: fields[0].parse().expect("node index"),
                    name: fields[1].to_owned(),
                    port: fields[2].parse().expect("node port"),
                }
            })
            .collect()
    }

    async fn urls(&self) -> Vec<String> {
        self.nodes()
            .await
            .iter()
            .map(|n| format!("amqp://guest:guest@127.0.0.1:{}/%2f", n.port))
            .collect()
    }

    async fn leader_of(&self, queue: &str) -> Node {
        let leader = self.run(&["leader", queue]).await;
        let leader = leader.trim();
        self.nodes()
            .await
            .into_iter()
            .find(|n| n.name == leader)
            .unwrap_or_else(|| panic!("the leader {leader:?} is not a node of the cluster"))
    }

    async fn members_of(&self, queue: &str) -> Vec<String> {
        let mut members: Vec<String> = self
            .run(&["members", queue])
            .await
            .lines()
            .map(str::to_owned)
            .collect();
        members.sort();
        members
    }

    async fn node_on_port(&self, port: u16) -> Node {
        self.nodes()
            .await
            .into_iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node listens on {port}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let stopped = std::process::Command::new(SCRIPT)
            .arg("--dir")
            .arg(&self.dir)
            .arg("stop")
            .status();
        if !matches!(stopped, Ok(status) if status.success()) {
            eprintln!(
                "cluster in {} did not stop cleanly: {stopped:?}",
                self.dir.display()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The port of a `amqp://host:port/vhost` URL.
fn port_of(url: &str) -> u16 {
    url.rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// A stream: one notification every 100 ms, each sent until accepted.
async fn stream(app: &TestApp, batch: &str, part: &[(CreatedAllocation, Expect)]) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for (i, (created, _)) in part.iter().enumerate() {
        tick.tick().await;
        notify_until_accepted(app, &format!("msg_cluster_{batch}{i}"), created).await;
    }
}

#[tokio::test]
async fn losing_the_work_queue_leader_then_the_connected_node_loses_nothing() {
    let begun = Instant::now();
    let cluster = Cluster::start().await;
    let cluster_up = begun.elapsed();
    let urls = cluster.urls().await;
    let mut app = spawn_app(Options {
        amqp_urls: urls,
        max_attempts: 8,
        retry_delays_ms: "[50, 200, 500]",
        ..Options::default()
    })
    .await;
    let broker = app.running.as_ref().expect("running").broker.clone();
    let rabbit = broker.as_rabbit().expect("the RabbitMQ backend");
    let events = format!("{}.cluster-test", broker.topology().events_exchange());
    rabbit
        .bind_quorum_events_queue(&events, "allocation.#")
        .await
        .expect("bind the events queue");
    let work_queue = broker.topology().work_queue();
    // Every queue of the service is replicated on the three nodes.
    let mut names: Vec<String> = cluster.nodes().await.into_iter().map(|n| n.name).collect();
    names.sort();
    for queue in broker.topology().queues() {
        assert_eq!(
            cluster.members_of(&queue).await,
            names,
            "members of {queue}"
        );
    }

    // Puhuri Core answers in 20 ms, so deliveries are in flight when nodes go away.
    app.sim.set_faults(Faults {
        latency_ms: 20,
        ..Faults::default()
    });
    let cases = app.create_mixed(60).await;
    let (first, rest) = cases.split_at(20);
    let (second, third) = rest.split_at(20);
    stream(&app, "a", first).await;

    // 1. The node leading the work queue goes away while the stream goes on.
    let leader = cluster.leader_of(&work_queue).await;
    let connected_before = rabbit.connected_node().expect("connected");
    let leader_was_connected = port_of(&connected_before) == leader.port;
    let ((), ()) = tokio::join!(stream(&app, "b", second), async {
        cluster.run(&["stop-node", &leader.index.to_string()]).await;
    });
    cluster
        .run(&["start-node", &leader.index.to_string()])
        .await;

    // 2. Then the node the service is connected to.
    assert!(
        tokio::time::timeout(
            crate::helpers::WAIT,
            broker.wait_connected(&tokio_util::sync::CancellationToken::new())
        )
        .await
        .unwrap_or(false),
        "the service reconnects"
    );
    let connected = rabbit.connected_node().expect("connected");
    let victim = cluster.node_on_port(port_of(&connected)).await;
    let last_stop = Instant::now();
    let ((), ()) = tokio::join!(stream(&app, "c", third), async {
        cluster.run(&["stop-node", &victim.index.to_string()]).await;
    });
    app.wait_decided(&cases, Duration::from_secs(60)).await;
    let drain = last_stop.elapsed();
    let connected_after = rabbit.connected_node().unwrap_or_default();
    let counts = app.check(&cases);

    // Decision events: every allocation gets one of its kind; an allocation whose events
    // carry more than one event id counts as duplicated.
    let mut ids: HashMap<String, HashSet<String>> = HashMap::new();
    let mut kinds: HashMap<String, String> = HashMap::new();
    let read_events = |ids: &mut HashMap<String, HashSet<String>>,
                       kinds: &mut HashMap<String, String>,
                       message: puhuri_queue::RawMessage| {
        let event: Value = serde_json::from_slice(&message.body).expect("event JSON");
        let resource = event["allocation"]["resource_uuid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        ids.entry(resource.clone())
            .or_default()
            .insert(event["id"].as_str().unwrap_or_default().to_owned());
        kinds.insert(
            resource,
            event["type"].as_str().unwrap_or_default().to_owned(),
        );
    };
    let expected_type = Expect::event_type;
    let events_deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match rabbit.take_one(&events).await {
            Ok(Some(message)) => read_events(&mut ids, &mut kinds, message),
            Ok(None) | Err(_) => {
                let complete = cases
                    .iter()
                    .all(|(created, _)| ids.contains_key(&created.resource_uuid));
                if complete || tokio::time::Instant::now() >= events_deadline {
                    break;
                }
                // A worker publishes a decision's event before it settles the delivery:
                // wait for the next settlement, then read again.
                let settled = app.settled.as_mut().expect("this app runs workers");
                let next = tokio::time::timeout_at(events_deadline, settled.recv()).await;
                if let Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) = next {
                    break;
                }
            }
        }
    }
    let mut events_missing = 0;
    let mut events_duplicated = 0;
    let mut events_wrong = 0;
    for (created, expect) in &cases {
        match ids.get(&created.resource_uuid) {
            None => events_missing += 1,
            Some(set) => {
                if set.len() > 1 && *expect != Expect::Hold {
                    events_duplicated += 1;
                }
                if kinds.get(&created.resource_uuid).map(String::as_str)
                    != Some(expected_type(*expect))
                {
                    events_wrong += 1;
                }
            }
        }
    }

    // Past the test harness's capture, so CI logs show the figures.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "cluster scenario: {} allocations on 3 nodes (up in {} ms); stopped the work queue's leader {} (service on {connected_before}{}), restarted it, then the connected node {} (service now on {connected_after}): lost={} duplicated={} wrong={} events_missing={events_missing} events_duplicated={events_duplicated} events_wrong={events_wrong}; all decided {} ms after the last stop began; {} s until now",
        cases.len(),
        cluster_up.as_millis(),
        leader.name,
        if leader_was_connected {
            ", the same node"
        } else {
            ""
        },
        victim.name,
        counts.lost,
        counts.duplicated,
        counts.wrong,
        drain.as_millis(),
        begun.elapsed().as_secs(),
    );
    assert_eq!(counts, Counts::default());
    assert_eq!(
        (events_missing, events_duplicated, events_wrong),
        (0, 0, 0),
        "decision events missing, duplicated beyond their id, or of the wrong kind"
    );
    // The cluster is discarded whole, so the topology is not deleted (deleting a quorum
    // queue waits for its stopped member).
    if let Some(running) = app.running.take() {
        running.stop_roles().await;
        running.shutdown().await;
    }
    drop(cluster);
}
