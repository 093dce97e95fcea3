//! After approval, end to end against the simulator: the access report, team events and
//! usage reporting.

use std::collections::HashMap;
use std::time::Duration;

use puhuri_approver::config::{Config, TeamConfig};
use puhuri_approver::metrics::Metrics;
use puhuri_approver::team::TeamWatcher;
use puhuri_approver::usage::report::UsageSettled;
use puhuri_approver::worker::Outcome;
use puhuri_client::PuhuriClient;
use puhuri_queue::Broker;
use puhuri_sim::{CreatedAllocation, NewMember};
use serde_json::{Value, json};

use crate::helpers::{Backend, Options, TestApp, WAIT, amqp_url, spawn_app, temp_dir};
use crate::on_both_backends;

const WITH_REPORT: &str = r#"
[[rule]]
name = "small-lumi-c"
when = 'offering.name == "LUMI-C" && limits.cpu_k_hours <= 1000'
action = "approve"
backend_id = "{project.slug}_{resource.short_uuid}"
report = [
  { header = "Login", body = "ssh {project.slug}_{resource.short_uuid}@lumi.csc.fi" },
  { header = "Documentation", body = "https://docs.lumi-supercomputer.eu/" },
]

[[rule]]
name = "big-lumi-c"
when = 'offering.name == "LUMI-C"'
action = "reject"
reason = "over 1000 CPU k-hours go to the allocation panel"

[default]
action = "hold"
"#;

fn report_calls(app: &TestApp, created: &CreatedAllocation) -> Vec<u16> {
    app.writes_for(created)
        .iter()
        .filter(|c| c.path.ends_with("/submit_report/"))
        .map(|c| c.status)
        .collect()
}

async fn approve(app: &mut TestApp, id: &str) -> (CreatedAllocation, String) {
    let created = app.create(json!({"cpu_k_hours": 500})).await;
    assert_eq!(app.notify(id, &created).await.status(), 202);
    match app.settled(id).await.result {
        Ok(Outcome::Approved { backend_id }) => (created, backend_id),
        other => panic!("expected an approval, got {other:?}"),
    }
}

#[tokio::test]
async fn the_access_report_is_submitted_once_after_approval_and_never_after_rejection() {
    let mut app = spawn_app(Options {
        policy: WITH_REPORT,
        ..Options::default()
    })
    .await;
    let (created, backend_id) = approve(&mut app, "msg_report_1").await;
    assert_eq!(report_calls(&app, &created), [200]);
    assert_eq!(
        app.resource(&created)["report"],
        json!([
            {"header": "Login", "body": format!("ssh {backend_id}@lumi.csc.fi")},
            {"header": "Documentation", "body": "https://docs.lumi-supercomputer.eu/"},
        ])
    );

    // A redelivered or repeated notification finds it approved with the same report.
    assert_eq!(app.notify("msg_report_2", &created).await.status(), 202);
    let again = app.settled("msg_report_2").await;
    assert!(
        matches!(again.result, Ok(Outcome::AlreadyHandled { .. })),
        "{again:?}"
    );
    assert_eq!(report_calls(&app, &created), [200]);

    let big = app.create(json!({"cpu_k_hours": 5000})).await;
    assert_eq!(app.notify("msg_report_3", &big).await.status(), 202);
    let rejected = app.settled("msg_report_3").await;
    assert!(
        matches!(rejected.result, Ok(Outcome::Rejected { .. })),
        "{rejected:?}"
    );
    assert_eq!(report_calls(&app, &big), Vec::<u16>::new());
    assert_eq!(app.resource(&big)["report"], Value::Null);
    app.stop().await;
}

#[tokio::test]
async fn a_failed_access_report_is_submitted_by_a_follow_up_and_the_approval_stands() {
    let mut app = spawn_app(Options {
        policy: WITH_REPORT,
        ..Options::default()
    })
    .await;
    let mut faults = app.sim.faults();
    faults.fail_next = 1;
    faults.fail_status = Some(503);
    faults.fail_path = Some("submit_report".into());
    app.sim.set_faults(faults);

    let created = app.create(json!({"cpu_k_hours": 500})).await;
    assert_eq!(app.notify("msg_report_fail", &created).await.status(), 202);
    // The follow-up may settle before the notification that queued it.
    let receiver = app.settled.as_mut().expect("workers run");
    let mut results = HashMap::new();
    let wait = async {
        while results.len() < 2 {
            let settled = receiver.recv().await.expect("worker events");
            results.insert(settled.id.clone(), settled.result);
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("not settled in time: {results:?}"));
    assert!(
        matches!(
            results.get("msg_report_fail"),
            Some(Ok(Outcome::Approved { .. }))
        ),
        "{results:?}"
    );
    assert!(
        matches!(
            results.get("msg_report_fail.report"),
            Some(Ok(Outcome::AlreadyHandled { .. }))
        ),
        "{results:?}"
    );
    assert_eq!(app.order_state(&created), "done");
    assert_eq!(report_calls(&app, &created), [503, 200]);
    assert!(app.resource(&created)["report"].is_array());
    app.stop().await;
}

fn client_for(app: &TestApp) -> (Config, PuhuriClient) {
    let env: HashMap<String, String> = [("PUHURI_APPROVER_AMQP_URL".to_owned(), amqp_url())]
        .into_iter()
        .collect();
    let config = Config::parse(&app.config_text, "test.toml", &env).expect("config");
    let client = config.puhuri.client().expect("client");
    (config, client)
}

async fn next_event(broker: &Broker, queue: &str) -> Option<Value> {
    let Some(rabbit) = broker.as_rabbit() else {
        panic!("events are read from RabbitMQ")
    };
    rabbit
        .take_one(queue)
        .await
        .expect("read events")
        .map(|m| serde_json::from_slice(&m.body).expect("event is JSON"))
}

fn usernames(members: &Value) -> Vec<String> {
    members
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["username"].as_str().map(str::to_owned))
        .collect()
}

/// The app's broker and a queue of the test's own bound to its `team.#` events.
async fn team_events_queue(app: &TestApp, name: &str) -> (Broker, String) {
    let broker = app.running.as_ref().expect("running").broker.clone();
    let Some(rabbit) = broker.as_rabbit() else {
        panic!("RabbitMQ backend")
    };
    let events = format!("{}.{name}", broker.topology().events_exchange());
    rabbit
        .bind_events_queue(&events, "team.#")
        .await
        .expect("bind");
    (broker, events)
}

#[tokio::test]
async fn team_events_follow_approval_and_member_changes() {
    let mut app = spawn_app(Options::default()).await;
    let (broker, events) = team_events_queue(&app, "team-test").await;

    let (created, backend_id) = approve(&mut app, "msg_team_1").await;
    let members: Vec<String> = app
        .sim
        .project_members(&created.project_uuid)
        .expect("members")
        .iter()
        .filter_map(|m| m["username"].as_str().map(str::to_owned))
        .collect();
    assert!(members.len() >= 2, "{members:?}");
    let snapshot = next_event(&broker, &events).await.expect("a snapshot");
    assert_eq!(snapshot["type"], "team.snapshot");
    assert_eq!(
        snapshot["allocation"]["resource_uuid"],
        created.resource_uuid
    );
    assert_eq!(snapshot["allocation"]["backend_id"], backend_id);
    let mut sorted = members.clone();
    sorted.sort();
    assert_eq!(usernames(&snapshot["members"]), sorted);

    let (config, client) = client_for(&app);
    let watcher = TeamWatcher::new(
        client,
        broker.clone(),
        Vec::new(),
        TeamConfig {
            snapshot_on_approval: true,
            watch: Some(Duration::from_secs(300)),
            ..TeamConfig::default()
        },
        std::sync::Arc::new(Metrics::new()),
    );
    drop(config);
    // First sight: a snapshot with the same members as the one after approval.
    let first = watcher.cycle().await.expect("cycle");
    assert_eq!(
        (first.allocations, first.snapshots, first.changes),
        (1, 1, 0)
    );
    let seen = next_event(&broker, &events).await.expect("a snapshot");
    assert_eq!(seen["type"], "team.snapshot");
    assert_eq!(seen["members"], snapshot["members"]);
    assert_ne!(seen["id"], snapshot["id"]);

    app.sim
        .add_member(
            &created.project_uuid,
            NewMember {
                username: "new.researcher@example.org".into(),
                full_name: Some("New Researcher".into()),
                role: Some("member".into()),
                ..NewMember::default()
            },
        )
        .expect("add member");
    let removed: String = snapshot["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["role"] == "member")
        .and_then(|m| m["username"].as_str())
        .expect("a member with role `member`")
        .to_owned();
    app.sim
        .remove_member(&created.project_uuid, &removed)
        .expect("remove member");
    let second = watcher.cycle().await.expect("cycle");
    assert_eq!((second.snapshots, second.changes), (0, 1));
    let change = next_event(&broker, &events).await.expect("a change");
    assert_eq!(change["type"], "team.changed");
    assert_eq!(usernames(&change["added"]), ["new.researcher@example.org"]);
    assert_eq!(
        usernames(&change["removed"]),
        std::slice::from_ref(&removed)
    );
    assert!(!usernames(&change["members"]).contains(&removed));

    let third = watcher.cycle().await.expect("cycle");
    assert_eq!((third.snapshots, third.changes), (0, 0));
    assert_eq!(next_event(&broker, &events).await, None);
    app.stop().await;
}

#[tokio::test]
async fn a_watcher_over_its_memory_budget_announces_changes_with_snapshots_only() {
    let mut app = spawn_app(Options::default()).await;
    let (broker, events) = team_events_queue(&app, "team-budget-test").await;
    let (first, _) = approve(&mut app, "msg_team_budget_1").await;
    approve(&mut app, "msg_team_budget_2").await;
    for _ in 0..2 {
        let after_approval = next_event(&broker, &events).await.expect("a snapshot");
        assert_eq!(after_approval["type"], "team.snapshot");
    }

    // Room for the digests of two teams, not for one team kept whole.
    let (config, client) = client_for(&app);
    let watcher = TeamWatcher::new(
        client,
        broker.clone(),
        Vec::new(),
        TeamConfig {
            watch_memory_bytes: 2 * puhuri_approver::team::ENTRY_BYTES,
            ..TeamConfig::default()
        },
        std::sync::Arc::new(Metrics::new()),
    );
    drop(config);
    let seen = watcher.cycle().await.expect("cycle");
    assert_eq!((seen.allocations, seen.snapshots, seen.changes), (2, 2, 0));
    for _ in 0..2 {
        let snapshot = next_event(&broker, &events).await.expect("a snapshot");
        assert_eq!(snapshot["type"], "team.snapshot");
    }
    // Kept as digests: an unchanged team gives no event.
    let unchanged = watcher.cycle().await.expect("cycle");
    assert_eq!((unchanged.snapshots, unchanged.changes), (0, 0));
    assert_eq!(next_event(&broker, &events).await, None);

    // A changed team gives its whole team again, never a change without the members before.
    app.sim
        .add_member(
            &first.project_uuid,
            NewMember {
                username: "budget.researcher@example.org".into(),
                role: Some("member".into()),
                ..NewMember::default()
            },
        )
        .expect("add member");
    let changed = watcher.cycle().await.expect("cycle");
    assert_eq!(changed.changes, 0);
    assert!(changed.snapshots >= 1, "{changed:?}");
    let snapshot = next_event(&broker, &events).await.expect("a snapshot");
    assert_eq!(snapshot["type"], "team.snapshot");
    assert_eq!(snapshot["allocation"]["resource_uuid"], first.resource_uuid);
    assert!(usernames(&snapshot["members"]).contains(&"budget.researcher@example.org".to_owned()));
    let settled = watcher.cycle().await.expect("cycle");
    assert_eq!((settled.snapshots, settled.changes), (0, 0));
    app.stop().await;
}

fn current_month() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!("{:04}-{:02}", now.year(), u8::from(now.month()))
}

async fn publish_usage(app: &TestApp, records: &[Value]) {
    let broker = &app.running.as_ref().expect("running").broker;
    for (i, record) in records.iter().enumerate() {
        let body = serde_json::to_vec(record).expect("json");
        puhuri_approver::work::publish_usage(
            broker,
            &body,
            &format!("usage-{}-{i}", uuid::Uuid::new_v4().simple()),
        )
        .await
        .expect("usage record queued");
    }
}

/// Waits until batches covering `records` records have settled.
async fn usage_settled(
    receiver: &mut tokio::sync::broadcast::Receiver<UsageSettled>,
    records: usize,
) -> Vec<UsageSettled> {
    usage_settled_until(receiver, |seen| {
        seen.iter().map(|s| s.records).sum::<usize>() >= records
    })
    .await
}

/// Waits until the batches settled so far satisfy `done`.
async fn usage_settled_until(
    receiver: &mut tokio::sync::broadcast::Receiver<UsageSettled>,
    done: impl Fn(&[UsageSettled]) -> bool,
) -> Vec<UsageSettled> {
    let mut seen = Vec::new();
    let wait = async {
        while !done(&seen) {
            match receiver.recv().await {
                Ok(settled) => seen.push(settled),
                Err(error) => panic!("usage events ended: {error}"),
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("usage records were not settled in time: {seen:?}"));
    seen
}

fn set_usage_calls(app: &TestApp) -> Vec<Value> {
    app.sim
        .calls()
        .into_iter()
        .filter(|c| c.path.ends_with("/set_usage/"))
        .map(|c| c.body)
        .collect()
}

/// `(key, value)` string pairs of simulator objects, sorted.
fn pairs(objects: &[Value], key: &str, value: &str) -> Vec<(String, String)> {
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let mut pairs: Vec<(String, String)> = objects
        .iter()
        .map(|o| (text(o, key), text(o, value)))
        .collect();
    pairs.sort();
    pairs
}

/// The stored usages of an allocation, `(component, amount)`.
fn stored(app: &TestApp, created: &CreatedAllocation) -> Vec<(String, String)> {
    pairs(&app.sim.usages(&created.resource_uuid), "type", "usage")
}

/// Every usage batch the app's worker settles from now on.
fn usage_events(app: &TestApp) -> tokio::sync::broadcast::Receiver<UsageSettled> {
    app.running
        .as_ref()
        .and_then(|r| r.worker.as_ref())
        .expect("worker")
        .subscribe_usage()
}

async fn usage_is_aggregated_reported_and_unchanged_totals_skipped(backend: Backend) {
    let mut app = spawn_app(Options {
        backend,
        // A batch closes when three records of one allocation and month arrived (the
        // linger stays under half the embedded queue's 5 s lease).
        usage_linger_ms: 2_400,
        usage_max_batch: 3,
        ..Options::default()
    })
    .await;
    let (created, backend_id) = approve(&mut app, "msg_usage_1").await;
    let mut settled = usage_events(&app);
    let broker = app.running.as_ref().expect("running").broker.clone();
    let events = format!("{}.usage-test", broker.topology().events_exchange());
    if let Some(rabbit) = broker.as_rabbit() {
        rabbit
            .bind_events_queue(&events, "usage.#")
            .await
            .expect("bind");
    }
    let month = current_month();
    let first = [
        json!({"backend_id": backend_id, "component": "cpu_k_hours", "amount": "10", "month": month,
               "measured_at": "2026-01-01T10:00:00Z"}),
        json!({"backend_id": backend_id, "component": "cpu_k_hours", "amount": "12.345", "month": month,
               "measured_at": "2026-01-01T11:00:00Z", "users": {"alice": "10.005", "bob": "2.3"}}),
        json!({"backend_id": backend_id, "component": "gb_k_hours", "amount": 5, "month": month}),
    ];
    publish_usage(&app, &first).await;
    let batches = usage_settled(&mut settled, 3).await;
    assert_eq!(
        batches.len(),
        1,
        "one batch for the allocation and month: {batches:?}"
    );
    assert_eq!(
        stored(&app, &created),
        [
            ("cpu_k_hours".to_owned(), "12.35".to_owned()),
            ("gb_k_hours".to_owned(), "5.00".to_owned())
        ]
    );
    let users = pairs(
        &app.sim.user_usages(&created.resource_uuid),
        "username",
        "usage",
    );
    assert_eq!(
        users,
        [
            ("alice".to_owned(), "10.01".to_owned()),
            ("bob".to_owned(), "2.30".to_owned())
        ]
    );
    let calls = set_usage_calls(&app);
    assert_eq!(
        calls,
        [json!({"resource": created.resource_uuid, "usages": [
            {"type": "cpu_k_hours", "amount": "12.35", "description": "(measured 2026-01-01T11:00:00Z)"},
            {"type": "gb_k_hours", "amount": "5.00", "description": ""},
        ]})]
    );

    if backend == Backend::RabbitMq {
        let event = next_event(&broker, &events).await.expect("usage.reported");
        assert_eq!(event["type"], "usage.reported");
        assert_eq!(event["allocation"]["backend_id"], backend_id);
        assert_eq!(event["month"], month);
        assert_eq!(event["records"], 3);
        assert_eq!(
            event["usages"],
            json!([{"component": "cpu_k_hours", "amount": "12.35"},
                   {"component": "gb_k_hours", "amount": "5.00"}])
        );
    }

    // The same readings again: nothing is sent, and no event.
    publish_usage(&app, &first).await;
    let again = usage_settled(&mut settled, 3).await;
    assert!(again.iter().all(|b| b.reported.is_empty()), "{again:?}");
    assert_eq!(set_usage_calls(&app).len(), 1);
    if backend == Backend::RabbitMq {
        assert_eq!(next_event(&broker, &events).await, None);
    }

    // Newer readings, naming the allocation by uuid: only the changed total is sent.
    let uuid = &created.resource_uuid;
    let newer = [
        json!({"resource_uuid": uuid, "component": "cpu_k_hours", "amount": "20", "month": month}),
        json!({"resource_uuid": uuid, "component": "gb_k_hours", "amount": "5.001", "month": month}),
        json!({"resource_uuid": uuid, "component": "cpu_k_hours", "amount": "20.5", "month": month}),
    ];
    publish_usage(&app, &newer).await;
    let third = usage_settled(&mut settled, 3).await;
    assert_eq!(third.len(), 1, "{third:?}");
    assert_eq!(
        third[0].reported,
        [("cpu_k_hours".to_owned(), "20.50".to_owned())]
    );
    assert_eq!(third[0].unchanged, ["gb_k_hours"]);
    assert_eq!(set_usage_calls(&app).len(), 2);
    assert_eq!(app.work_queue_depth().await, 0);
    app.stop().await;
}

async fn invalid_usage_records_are_dead_lettered_with_reasons(backend: Backend) {
    let mut app = spawn_app(Options {
        backend,
        usage_max_batch: 1,
        ..Options::default()
    })
    .await;
    let (created, backend_id) = approve(&mut app, "msg_usage_bad").await;
    let pending = app.create(json!({"cpu_k_hours": 100})).await;
    let mut settled = usage_events(&app);
    let month = current_month();
    let records = [
        json!({"backend_id": backend_id, "component": "cpu_k_hours", "amount": "1", "month": "2020-01"}),
        json!({"backend_id": backend_id, "component": "tape_tb", "amount": "1", "month": month}),
        json!({"backend_id": "no-such-allocation", "component": "cpu_k_hours", "amount": "1", "month": month}),
        json!({"resource_uuid": pending.resource_uuid, "component": "cpu_k_hours", "amount": "1", "month": month}),
    ];
    publish_usage(&app, &records).await;
    let broker = app.running.as_ref().expect("running").broker.clone();
    puhuri_approver::work::publish_usage(
        &broker,
        br#"{"backend_id":"x","component":"cpu_k_hours","amount":"-1","month":"2026-11"}"#,
        "usage-negative",
    )
    .await
    .expect("queued");
    // Three refused at once; the unapproved allocation is retried until attempts run out.
    let batches = usage_settled_until(&mut settled, |seen| {
        seen.iter().map(|s| s.dead_lettered.len()).sum::<usize>() >= 4
    })
    .await;
    let mut reasons: Vec<String> = batches
        .iter()
        .flat_map(|b| b.dead_lettered.clone())
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 4, "{batches:?}");
    let expect = [
        "is closed",
        "takes no usage",
        "no allocation has backend_id `no-such-allocation`",
        "not approved yet",
    ];
    for wanted in expect {
        assert!(
            reasons.iter().any(|r| r.contains(wanted)),
            "no reason mentions `{wanted}`: {reasons:?}"
        );
    }
    // The undecodable one is dead-lettered by the worker before any batch.
    let wait = async {
        loop {
            let letters = broker.dead_letters(100).await.expect("dead letters");
            if letters.len() == 5 {
                return letters;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let letters = tokio::time::timeout(WAIT, wait)
        .await
        .expect("five dead letters");
    let negative = letters
        .iter()
        .find(|l| l.message_id == "usage-negative")
        .expect("the negative record");
    assert!(
        negative
            .reasons
            .iter()
            .any(|r| r.contains("amount") && r.contains("negative")),
        "{:?}",
        negative.reasons
    );
    assert!(stored(&app, &created).is_empty());
    assert!(set_usage_calls(&app).is_empty());
    app.stop().await;
}

on_both_backends!(
    usage_is_aggregated_reported_and_unchanged_totals_skipped,
    invalid_usage_records_are_dead_lettered_with_reasons,
);

#[tokio::test]
async fn usage_push_queues_a_file_and_refuses_a_bad_one_whole() {
    let mut app = spawn_app(Options {
        backend: Backend::Embedded,
        ..Options::default()
    })
    .await;
    let (created, backend_id) = approve(&mut app, "msg_usage_push").await;
    let mut settled = usage_events(&app);
    let dir = temp_dir("usage-push");
    let config = app.write_config(&dir);
    let month = current_month();
    let bad = dir.join("bad.csv");
    std::fs::write(
        &bad,
        format!(
            "backend_id,component,amount,month\n{backend_id},cpu_k_hours,1,{month}\n{backend_id},cpu_k_hours,1.5.0,{month}\n{backend_id},cpu_k_hours,1,2020-01\nnever-granted,cpu_k_hours,1,{month}\n"
        ),
    )
    .expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_puhuri-approver"))
        .args(["usage", "push", "--config"])
        .arg(&config)
        .arg(&bad)
        .spawn_output()
        .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    crate::helpers::assert_for_people("usage push of a bad file", &stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!("{}:3: amount:", bad.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{}:4: month: month 2020-01 is closed",
            bad.display()
        )),
        "{stderr}"
    );
    // An allocation Puhuri Core does not have is refused before anything is queued.
    assert!(
        stderr.contains(&format!(
            "{}:5: backend_id: `never-granted` names no allocation",
            bad.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("3 invalid records; nothing was queued"),
        "{stderr}"
    );
    assert_eq!(app.work_queue_depth().await, 0);
    // `--no-lookup` leaves that check to the workers.
    let unknown = dir.join("unknown.csv");
    std::fs::write(
        &unknown,
        format!("backend_id,component,amount,month\nnever-granted,cpu_k_hours,1,{month}\n"),
    )
    .expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_puhuri-approver"))
        .args(["usage", "push", "--no-lookup", "--config"])
        .arg(&config)
        .arg(&unknown)
        .spawn_output()
        .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("1 queued"));
    usage_settled(&mut settled, 1).await;

    // 1,000 hourly readings of one component: the last one is the month's total.
    let good = dir.join("usage.jsonl");
    let lines: Vec<String> = (1..=1000)
        .map(|i| {
            json!({"backend_id": backend_id, "component": "cpu_k_hours",
                   "amount": format!("{}.25", i), "month": month,
                   "measured_at": format!("2026-01-01T00:00:00.{i:04}Z")})
            .to_string()
        })
        .collect();
    std::fs::write(&good, lines.join("\n")).expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_puhuri-approver"))
        .args(["usage", "push", "--config"])
        .arg(&config)
        .arg(&good)
        .spawn_output()
        .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("1000 records read"), "{stdout}");
    assert!(stdout.contains("1000 queued"), "{stdout}");
    usage_settled(&mut settled, 1000).await;
    assert_eq!(
        stored(&app, &created),
        [("cpu_k_hours".to_owned(), "1000.25".to_owned())]
    );
    let _ = std::fs::remove_dir_all(dir);
    app.stop().await;
}

#[tokio::test]
async fn policy_shadow_mode_still_reports_usage() {
    let app = spawn_app(Options {
        shadow: true,
        usage_max_batch: 1,
        ..Options::default()
    })
    .await;
    // Approved by hand: shadow mode writes no decision.
    let created = app.create(json!({"cpu_k_hours": 100})).await;
    let approved = app
        .http
        .post(format!(
            "{}/api/marketplace-orders/{}/approve_by_provider/",
            app.sim_url, created.order_uuid
        ))
        .header("Authorization", format!("Token {}", crate::helpers::TOKEN))
        .send()
        .await
        .expect("approve");
    assert_eq!(approved.status(), 200);
    let mut settled = usage_events(&app);
    let record = json!({"resource_uuid": created.resource_uuid, "component": "cpu_k_hours",
                        "amount": "1.005", "month": current_month()});
    publish_usage(&app, &[record]).await;
    let batches = usage_settled(&mut settled, 1).await;
    assert_eq!(
        batches[0].reported,
        [("cpu_k_hours".to_owned(), "1.01".to_owned())]
    );
    assert_eq!(
        stored(&app, &created),
        [("cpu_k_hours".to_owned(), "1.01".to_owned())]
    );
    app.stop().await;
}

#[tokio::test]
async fn an_older_reading_never_replaces_a_newer_one() {
    let mut app = spawn_app(Options {
        usage_max_batch: 1,
        ..Options::default()
    })
    .await;
    let (created, backend_id) = approve(&mut app, "msg_usage_stale").await;
    let mut settled = usage_events(&app);
    let month = current_month();
    let reading = |amount: &str, at: Option<&str>| {
        let mut record = json!({"backend_id": backend_id, "component": "cpu_k_hours",
                                "amount": amount, "month": month});
        if let Some(at) = at {
            record["measured_at"] = json!(at);
        }
        record
    };
    // The newest reading first, as after a retry of an older one.
    for (record, expect_stale) in [
        (reading("30", Some("2026-01-01T12:00:00Z")), false),
        (reading("20", Some("2026-01-01T11:00:00Z")), true),
        (reading("25", None), true),
        (reading("28", Some("2026-01-01T13:00:00Z")), false),
    ] {
        publish_usage(&app, &[record]).await;
        let batch = usage_settled(&mut settled, 1).await;
        assert_eq!(!batch[0].stale.is_empty(), expect_stale, "{batch:?}");
    }
    // A later reading may correct the total downwards; older ones never do.
    assert_eq!(
        stored(&app, &created),
        [("cpu_k_hours".to_owned(), "28.00".to_owned())]
    );
    assert_eq!(set_usage_calls(&app).len(), 2);
    let description = app.sim.usages(&created.resource_uuid)[0]["description"].clone();
    assert_eq!(description, "(measured 2026-01-01T13:00:00Z)");
    app.stop().await;
}

/// Runs a command off the async runtime, whose simulator must answer it meanwhile.
trait SpawnOutput {
    async fn spawn_output(&mut self) -> std::process::Output;
}

impl SpawnOutput for std::process::Command {
    async fn spawn_output(&mut self) -> std::process::Output {
        let child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the binary");
        tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .expect("join")
            .expect("run the binary")
    }
}
