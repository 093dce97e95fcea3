//! Puhuri Core as a server with limits: the start-up probe (`/readyz`, an explicit
//! `puhuri.api` the server does not speak), a token that expires mid-stream (the workers
//! pause, nothing is dead-lettered or acked undecided, they resume once the token is
//! replaced) and the cap on concurrent calls under a burst.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use puhuri_approver::app::{self, Roles};
use puhuri_approver::config::Config;
use puhuri_approver::notification::{AllocationHint, OrderUuid, ResourceUuid, WorkItem};
use puhuri_approver::worker::{Disposition, Outcome};
use puhuri_auth::secret::Secret;
use puhuri_policy::Policy;
use puhuri_sim::{CreatedAllocation, Faults, NewAllocation, Sim, SimConfig, WaldurVersion};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::{APPROVE_SMALL, Backend, Options, TOKEN, WAIT, spawn_app, temp_dir};
use crate::on_both_backends;

async fn metric(app: &crate::helpers::TestApp, name: &str) -> f64 {
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

fn hint(created: &CreatedAllocation) -> AllocationHint {
    AllocationHint {
        order_uuid: OrderUuid::parse(&created.order_uuid),
        resource_uuid: ResourceUuid::parse(&created.resource_uuid),
    }
}

/// `/readyz` names what the start-up probe found: the API generation, the user, its
/// provider role and offerings, and whether event consumers exist.
#[tokio::test]
async fn readyz_shows_the_start_up_probe() {
    let app = spawn_app(Options {
        api: "auto",
        ..Options::default()
    })
    .await;
    let (status, _, body) = app.readyz().await;
    assert_eq!(status, 200, "{body}");
    let probe = &body["probe"];
    assert_eq!(probe["api"], "orders", "{body}");
    assert_eq!(probe["user"], "sp-integration");
    assert_eq!(probe["is_staff"], false);
    assert_eq!(probe["event_consumers"], false);
    let roles = probe["provider_roles"].as_array().expect("roles");
    assert!(
        roles.iter().any(|r| r
            .as_str()
            .is_some_and(|r| r.starts_with("CUSTOMER.OWNER on LUMI"))),
        "{body}"
    );
    let offerings: Vec<&str> = probe["offerings"]
        .as_array()
        .expect("offerings")
        .iter()
        .filter_map(|o| o["name"].as_str())
        .collect();
    assert!(offerings.contains(&"LUMI-C"), "{body}");
    assert_eq!(body["circuit"], json!({"state": "closed"}));
    assert_eq!(
        app.running
            .as_ref()
            .and_then(|r| r.probe.as_ref())
            .map(|p| p.api),
        Some(puhuri_approver::config::ApiGeneration::Orders)
    );
    app.stop().await;
}

/// Starts only the workers against a simulator of `waldur` with `puhuri.api = api`.
async fn start_work(waldur: WaldurVersion, api: &str, offerings: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind sim");
    let addr = listener.local_addr().expect("addr");
    let sim = Sim::new(SimConfig {
        tokens: vec![Secret::new(TOKEN)],
        hook: None,
        seed: true,
        public_url: Some(format!("http://{addr}")),
        waldur,
    });
    let sim_stop = CancellationToken::new();
    tokio::spawn(sim.serve(listener, sim_stop.clone()));
    let dir = temp_dir("probe");
    let text = format!(
        "[queue]\nbackend = \"embedded\"\ndata_dir = \"{}\"\n\n[puhuri]\nurl = \"http://{addr}/api/\"\ntoken = \"{TOKEN}\"\napi = \"{api}\"\nofferings = {offerings}\n",
        dir.display()
    );
    let config = Config::parse(&text, "probe.toml", &HashMap::new()).expect("config");
    let policy = Policy::parse(APPROVE_SMALL).expect("policy");
    let work = Roles {
        receive: false,
        work: true,
    };
    let stop = CancellationToken::new();
    let result = tokio::time::timeout(WAIT, app::start(&config, work, policy, None, stop.clone()))
        .await
        .expect("start-up ends in time");
    let outcome = match result {
        Ok(running) => {
            running.shutdown().await;
            Ok(())
        }
        Err(error) => Err(error),
    };
    sim_stop.cancel();
    let _ = std::fs::remove_dir_all(dir);
    outcome
}

/// An explicit `puhuri.api` that the server does not speak fails start-up, naming what
/// the server answered; `auto` takes what it speaks.
#[tokio::test]
async fn an_explicit_api_the_server_does_not_speak_fails_start_up_naming_the_mismatch() {
    let error = start_work(WaldurVersion::V2021, "orders", "[]")
        .await
        .expect_err("the 2021 server has no current API");
    let text = format!("{error:#}");
    assert!(text.contains("`puhuri.api = \"orders\"`"), "{text}");
    assert!(
        text.contains("marketplace-provider-resources/ answered 404: the 2021 API"),
        "{text}"
    );

    let error = start_work(WaldurVersion::V7_0, "resources", "[]")
        .await
        .expect_err("a 7.0 server has no 2021 API");
    let text = format!("{error:#}");
    assert!(text.contains("`puhuri.api = \"resources\"`"), "{text}");
    assert!(text.contains("the current API (`orders`)"), "{text}");

    // An offering the token's user does not manage fails too, naming it.
    let error = start_work(
        WaldurVersion::V7_0,
        "auto",
        "[\"0123456789abcdef0123456789abcdef\"]",
    )
    .await
    .expect_err("not an offering of this provider");
    let text = format!("{error:#}");
    assert!(
        text.contains("`puhuri.offerings` names 0123456789abcdef0123456789abcdef"),
        "{text}"
    );
    assert!(text.contains("LUMI-C"), "{text}");

    start_work(WaldurVersion::V2021, "auto", "[]")
        .await
        .expect("auto takes the 2021 API");
    start_work(WaldurVersion::V2021, "resources", "[]")
        .await
        .expect("an explicit match starts");
}

/// The token expires while notifications stream in: the workers pause (the circuit
/// opens), nothing is dead-lettered or acked undecided, `/readyz` fails naming the
/// reason and the auth gauge drops; once the token is replaced (a new token file, then
/// SIGHUP's wake-up) every allocation is decided, 0 lost, no attempt counted.
async fn an_expired_token_pauses_the_workers_until_it_is_replaced(backend: Backend) {
    let dir = temp_dir("token");
    let token_file = dir.join("token");
    std::fs::write(&token_file, TOKEN).expect("token file");
    let mut app = spawn_app(Options {
        backend,
        token_file: Some(token_file.clone()),
        ..Options::default()
    })
    .await;
    let mut created = Vec::new();
    for _ in 0..20 {
        created.push(app.create(json!({"cpu_k_hours": 10})).await);
    }
    for (i, c) in created.iter().take(5).enumerate() {
        assert_eq!(app.notify(&format!("tok-{i}"), c).await.status(), 202);
        let settled = app.settled(&format!("tok-{i}")).await;
        assert_eq!(settled.disposition, Disposition::Acked);
    }
    assert_eq!(metric(&app, "puhuri_approver_puhuri_auth_ok").await, 1.0);

    app.sim.expire_tokens();
    for (i, c) in created.iter().enumerate().skip(5) {
        assert_eq!(app.notify(&format!("tok-{i}"), c).await.status(), 202);
    }
    let running = app.running.as_ref().expect("running");
    let circuit = running.circuit.clone().expect("workers run");
    let mut released = HashSet::new();
    // The first delivery refused with 401 goes back to the queue unprocessed.
    let receiver = app.settled.as_mut().expect("workers");
    let first = tokio::time::timeout(WAIT, receiver.recv())
        .await
        .expect("a delivery settles")
        .expect("settled events");
    assert_eq!(
        first.disposition,
        Disposition::Released,
        "while the token is expired nothing else settles: {first:?}"
    );
    released.insert(first.id.clone());
    assert!(circuit.is_open());
    let (status, content_type, body) = app.readyz().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(body["checks"]["puhuri"], "unauthorized", "{body}");
    assert_eq!(body["circuit"]["reason"], "unauthorized", "{body}");
    assert!(
        body["detail"].as_str().unwrap_or_default().contains("401"),
        "{body}"
    );
    assert_eq!(metric(&app, "puhuri_approver_puhuri_auth_ok").await, 0.0);
    assert_eq!(
        metric(&app, "puhuri_approver_puhuri_circuit_open").await,
        1.0
    );
    // Nothing decided for the streamed allocations, nothing dead-lettered.
    for c in created.iter().skip(5) {
        assert!(app.writes_for(c).is_empty(), "a write while paused");
        assert_eq!(app.order_state(c), "pending-provider");
    }
    let running = app.running.as_ref().expect("running");
    assert_eq!(running.broker.dead_depth().await.expect("dead depth"), 0);

    // The token is renewed: the sim takes a new one, the file holds it, SIGHUP wakes.
    assert!(app.sim.set_token(0, Secret::new("renewed-token")));
    std::fs::write(&token_file, "renewed-token\n").expect("token file");
    circuit.wake();

    let mut decided = HashSet::new();
    let receiver = app.settled.as_mut().expect("workers");
    tokio::time::timeout(WAIT, async {
        while decided.len() < 15 {
            let settled = receiver.recv().await.expect("settled events");
            match settled.disposition {
                Disposition::Released => {
                    released.insert(settled.id.clone());
                }
                Disposition::Acked => {
                    assert!(
                        matches!(settled.result, Ok(Outcome::Approved { .. })),
                        "{settled:?}"
                    );
                    // A released delivery counted no attempt.
                    assert_eq!(settled.attempt, 1, "{settled:?}");
                    decided.insert(settled.id.clone());
                }
                other => panic!("unexpected settlement {other:?}: {settled:?}"),
            }
        }
    })
    .await
    .expect("every allocation is decided after the renewal");
    assert!(!circuit.is_open());
    for c in &created {
        assert_eq!(app.order_state(c), "done", "0 lost");
    }
    let running = app.running.as_ref().expect("running");
    assert_eq!(running.broker.dead_depth().await.expect("dead depth"), 0);
    assert_eq!(metric(&app, "puhuri_approver_puhuri_auth_ok").await, 1.0);
    let (status, _, body) = app.readyz().await;
    assert_eq!(status, 200, "{body}");
    eprintln!(
        "token expiry ({backend:?}): {} deliveries released while paused, 15 decided after renewal",
        released.len()
    );
    app.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

on_both_backends!(an_expired_token_pauses_the_workers_until_it_is_replaced);

/// A burst of notifications, many more than `max_in_flight`, decided with the cap held:
/// the simulator never sees more calls open at once.
#[tokio::test]
async fn a_burst_never_has_more_than_max_in_flight_calls_open() {
    const COUNT: usize = 10_000;
    const CAP: usize = 8;
    let mut app = spawn_app(Options {
        max_in_flight: CAP,
        prefetch: 256,
        ..Options::default()
    })
    .await;
    let mut allocations = Vec::with_capacity(COUNT);
    let mut items = Vec::with_capacity(COUNT);
    for i in 0..COUNT {
        let created = app
            .sim
            .create_allocation(NewAllocation {
                offering: Some("LUMI-C".into()),
                limits: [("cpu_k_hours".to_owned(), json!(10))]
                    .into_iter()
                    .collect(),
                ..NewAllocation::default()
            })
            .await
            .expect("allocation");
        items.push(WorkItem {
            id: format!("burst-{i}"),
            source: "burst".into(),
            event_type: "allocation.created".into(),
            hint: hint(&created),
            received_at_ms: 1,
        });
        allocations.push(created);
    }
    // A little latency per call keeps calls overlapping.
    app.sim.set_faults(Faults {
        latency_ms: 2,
        ..Faults::default()
    });
    app.sim.reset_peak_in_flight();
    let started = Instant::now();
    let broker = app.running.as_ref().expect("running").broker.clone();
    for item in &items {
        puhuri_approver::work::publish_notification(&broker, item)
            .await
            .expect("published");
    }
    let receiver = app.settled.as_mut().expect("workers");
    tokio::time::timeout(Duration::from_secs(600), async {
        let mut settled_count = 0;
        while settled_count < COUNT {
            match receiver.recv().await {
                Ok(settled) => {
                    assert_eq!(settled.disposition, Disposition::Acked, "{settled:?}");
                    settled_count += 1;
                }
                // Settlements the test fell behind on; every order is checked below.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    settled_count += missed as usize;
                }
                Err(error) => panic!("settled events: {error}"),
            }
        }
    })
    .await
    .expect("the burst is decided");
    let elapsed = started.elapsed();
    let peak = app.sim.peak_in_flight();
    let waits = metric(&app, "puhuri_approver_puhuri_slot_waits_total").await;
    eprintln!(
        "burst: {COUNT} notifications decided in {} ms ({:.0}/s), peak {peak} calls open (cap {CAP}), {waits} waits for a slot",
        elapsed.as_millis(),
        COUNT as f64 / elapsed.as_secs_f64()
    );
    assert!(peak <= CAP, "peak {peak} > cap {CAP}");
    for created in &allocations {
        assert_eq!(app.order_state(created), "done");
    }
    // Calls did overlap up to the cap, and waited for it.
    assert_eq!(peak, CAP, "the burst never filled the cap");
    assert!(waits > 0.0);
    app.stop().await;
}
