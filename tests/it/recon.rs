//! The reconciler under errors: passes that progress while list calls fail, the first
//! pass as soon as the broker connects, and dead letters of allocations decided since.

use std::time::{Duration, Instant};

use puhuri_approver::reconciler::Reconciler;
use puhuri_queue::Broker;
use puhuri_sim::{CreatedAllocation, Faults, NewAllocation};
use serde_json::json;
use tokio::net::TcpListener;

use crate::helpers::{Backend, Counts, Options, TOKEN, TestApp, amqp_url, report, spawn_app};
use crate::on_both_backends;

fn reconciler(app: &TestApp) -> std::sync::Arc<Reconciler> {
    app.running
        .as_ref()
        .and_then(|r| r.reconciler.clone())
        .expect("reconciler")
}

/// Waits until the workers have settled `count` deliveries of reconciler hints in all.
async fn settle_reconciled(
    receiver: &mut tokio::sync::broadcast::Receiver<puhuri_approver::worker::Settled>,
    seen: &mut usize,
    count: usize,
) {
    use tokio::sync::broadcast::error::RecvError;
    let wait = async {
        while *seen < count {
            match receiver.recv().await {
                Ok(settled) if settled.id.starts_with("reconcile-") => *seen += 1,
                Ok(_) => {}
                // Missed ones were settled too; the count is what matters.
                Err(RecvError::Lagged(n)) => *seen += n as usize,
                Err(RecvError::Closed) => panic!("worker events ended"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), wait)
        .await
        .unwrap_or_else(|_| panic!("only {seen} of {count} reconciler hints settled"));
}

async fn a_thousand_pending_with_30_percent_of_list_calls_failing(backend: Backend) {
    let app = spawn_app(Options {
        backend,
        prefetch: 64,
        ..Options::default()
    })
    .await;
    let cases = app.create_mixed(1000).await;
    let mut events = app.tap_events().await;
    app.sim.set_faults(Faults {
        error_rate: 0.3,
        error_statuses: vec![500, 502, 503, 429],
        error_path: Some("/marketplace-orders/".into()),
        ..Faults::default()
    });
    let reconciler = reconciler(&app);
    let mut settled = app
        .running
        .as_ref()
        .and_then(|r| r.worker.as_ref())
        .expect("workers")
        .subscribe();
    let started = Instant::now();
    let (mut passes, mut enqueued, mut seen, mut retries) = (0, 0, 0, 0);
    while !app.all_decided(&cases) {
        passes += 1;
        assert!(passes <= 3, "not decided within 3 passes");
        let outcome = reconciler.run_cycle().await;
        let pass = reconciler.last_report().expect("a report");
        eprintln!(
            "reconcile pass {passes} ({backend:?}): {} ({pass:?})",
            match &outcome {
                Ok(_) => "complete".to_owned(),
                Err(error) => format!("stopped: {error}"),
            }
        );
        enqueued += pass.enqueued;
        retries += pass.page_retries;
        settle_reconciled(&mut settled, &mut seen, enqueued).await;
    }
    let took = started.elapsed();
    app.sim.set_faults(Faults::default());
    let tally = app
        .check_all(&cases, &mut events, Duration::from_secs(30))
        .await;
    let counts = tally.counts;
    eprintln!(
        "1,000 pending, 30 % of list calls failing ({backend:?}): all decided after {passes} passes in {} ms, {retries} list pages retried",
        took.as_millis()
    );
    report(
        "1,000 pending, 30 % of list calls failing",
        tally,
        cases.len(),
        took,
    );
    assert!(retries > 0, "the fault injected no list failure");
    assert_eq!(counts, Counts::default());
    app.stop().await;
}

on_both_backends!(a_thousand_pending_with_30_percent_of_list_calls_failing);

/// A TCP gate in front of RabbitMQ: closed, it drops every connection it accepts.
async fn gate() -> (
    u16,
    tokio::sync::watch::Sender<bool>,
    tokio::sync::watch::Receiver<usize>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gate");
    let port = listener.local_addr().expect("gate addr").port();
    let upstream = reqwest::Url::parse(&amqp_url()).expect("AMQP URL");
    let upstream = format!(
        "{}:{}",
        upstream.host_str().unwrap_or("127.0.0.1"),
        upstream.port().unwrap_or(5672)
    );
    let (open, opened) = tokio::sync::watch::channel(false);
    let (refuse, refused) = tokio::sync::watch::channel(0usize);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            if !*opened.borrow() {
                drop(inbound);
                refuse.send_modify(|n| *n += 1);
                continue;
            }
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (port, open, refused)
}

#[tokio::test]
async fn the_first_pass_runs_as_soon_as_the_broker_connects() {
    let (port, open, mut refused) = gate().await;
    let mut url = reqwest::Url::parse(&amqp_url()).expect("AMQP URL");
    url.set_port(Some(port)).expect("port");
    // An hour between passes: only the start-up pass can decide anything in time.
    let app = spawn_app(Options {
        amqp_url: Some(url.to_string()),
        expect_broker: false,
        reconcile_interval_secs: 3600,
        ..Options::default()
    })
    .await;
    let cases = app.create_mixed(6).await;
    let broker = app.running.as_ref().expect("running").broker.clone();
    assert!(!broker.is_connected());
    // The service has tried the broker twice (the reconciler looked and found none);
    // then it comes.
    tokio::time::timeout(Duration::from_secs(20), refused.wait_for(|n| *n >= 2))
        .await
        .expect("the service tries the broker")
        .expect("gate runs");
    open.send_replace(true);
    let took = app.wait_decided(&cases, Duration::from_secs(30)).await;
    let counts = app.check(&cases);
    // The events tap needs the broker, which was away when the decisions began: this
    // scenario counts writes only.
    report(
        "broker connected after start",
        crate::helpers::Tally {
            counts,
            event_copies: 0,
        },
        cases.len(),
        took,
    );
    assert_eq!(counts, Counts::default());
    assert_eq!(reconciler(&app).passes(), 1);
    app.stop().await;
}

/// Approves an allocation as a human would, through the API.
async fn approve_by_hand(app: &TestApp, created: &CreatedAllocation) {
    let response = app
        .http
        .post(format!(
            "{}/api/marketplace-orders/{}/approve_by_provider/",
            app.sim_url, created.order_uuid
        ))
        .header("Authorization", format!("Token {TOKEN}"))
        .send()
        .await
        .expect("simulator answers");
    assert_eq!(response.status(), 200);
}

/// Dead-letters a notification for `created`: its first Puhuri Core call is refused (403).
async fn dead_letter(app: &mut TestApp, id: &str, created: &CreatedAllocation) {
    app.sim.set_faults(Faults {
        fail_next: 1,
        fail_status: Some(403),
        ..Faults::default()
    });
    assert_eq!(app.notify(id, created).await.status(), 202);
    let settled = app.settled(id).await;
    assert_eq!(
        settled.disposition,
        puhuri_approver::worker::Disposition::DeadLettered
    );
}

async fn dead_ids(broker: &Broker) -> Vec<String> {
    let mut ids: Vec<String> = broker
        .dead_letters(100)
        .await
        .expect("dead letters")
        .into_iter()
        .map(|l| l.message_id)
        .collect();
    ids.sort();
    ids
}

async fn dead_letters_of_decided_allocations_are_resolved(backend: Backend) {
    let mut app = spawn_app(Options {
        backend,
        ..Options::default()
    })
    .await;
    let decided = app.create(json!({"cpu_k_hours": 10})).await;
    let unreadable = app.create(json!({"cpu_k_hours": 11})).await;
    // The policy holds this one: it keeps waiting whatever the workers do.
    let request: NewAllocation =
        serde_json::from_value(json!({"offering": "LUMI-G", "limits": {"gpu_k_hours": 10}}))
            .expect("request");
    let waiting = app.sim.create_allocation(request).await.expect("created");
    dead_letter(&mut app, "msg_a_decided", &decided).await;
    dead_letter(&mut app, "msg_b_unreadable", &unreadable).await;
    dead_letter(&mut app, "msg_c_waiting", &waiting).await;
    let broker = app.running.as_ref().expect("running").broker.clone();
    assert_eq!(broker.dead_depth().await.expect("depth"), 3);
    // Two are decided by hand since, and one of those cannot be read right now.
    approve_by_hand(&app, &decided).await;
    approve_by_hand(&app, &unreadable).await;
    app.sim.set_faults(Faults {
        fail_next: 1_000,
        fail_path: Some(unreadable.resource_uuid.clone()),
        ..Faults::default()
    });
    let reconciler = reconciler(&app);
    let pass = reconciler.run_cycle().await.expect("pass");
    assert_eq!(pass.dead_letters_resolved, 1, "{pass:?}");
    assert_eq!(
        dead_ids(&broker).await,
        ["msg_b_unreadable", "msg_c_waiting"]
    );
    // Readable again: the next pass resolves it; the one still waiting stays.
    app.sim.set_faults(Faults::default());
    let pass = reconciler.run_cycle().await.expect("pass");
    assert_eq!(pass.dead_letters_resolved, 1, "{pass:?}");
    assert_eq!(dead_ids(&broker).await, ["msg_c_waiting"]);
    assert_eq!(app.order_state(&waiting), "pending-provider");
    let metrics = app
        .running
        .as_ref()
        .expect("running")
        .metrics
        .scrape()
        .await;
    assert!(
        metrics.contains("puhuri_approver_dead_letters_resolved_total 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("puhuri_approver_dead_letter_depth 1\n"),
        "{metrics}"
    );
    app.stop().await;
}

on_both_backends!(dead_letters_of_decided_allocations_are_resolved);

#[tokio::test]
async fn a_pass_that_gives_up_on_a_page_is_resumed_from_that_page() {
    let app = spawn_app(Options::default()).await;
    // 250 allocations the policy holds: the list keeps its three pages.
    for _ in 0..250 {
        let request: NewAllocation =
            serde_json::from_value(json!({"offering": "LUMI-G", "limits": {"gpu_k_hours": 10}}))
                .expect("request");
        app.sim.create_allocation(request).await.expect("created");
    }
    // Page 3 (the second read: page 1, then from the last page back) always fails.
    app.sim.set_faults(Faults {
        error_rate: 1.0,
        error_path: Some("&page=3".into()),
        ..Faults::default()
    });
    let reconciler = reconciler(&app);
    assert!(reconciler.run_cycle().await.is_err());
    let first = reconciler.last_report().expect("report");
    // Page 1 once, page 3 at every attempt.
    assert_eq!(
        (
            first.calls,
            first.page_retries,
            first.enqueued,
            first.resumed
        ),
        (
            1 + puhuri_approver::reconciler::PAGE_ATTEMPTS as usize,
            7,
            100,
            false
        ),
        "{first:?}"
    );
    app.sim.set_faults(Faults::default());
    // The next pass starts at page 3 and reads what is left: pages 3 and 2.
    let second = reconciler.run_cycle().await.expect("pass");
    assert_eq!(
        (second.calls, second.enqueued, second.resumed),
        (2, 150, true),
        "{second:?}"
    );
    // And the one after is a whole pass again.
    let third = reconciler.run_cycle().await.expect("pass");
    assert_eq!(
        (
            third.calls,
            third.pending,
            third.recently_enqueued,
            third.resumed
        ),
        (3, 250, 250, false),
        "{third:?}"
    );
    app.stop().await;
}
