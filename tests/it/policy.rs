//! The policy end to end: fixture files run through one helper, the example policy's own
//! cases, and decisions against the simulator (approve, reject, hold, shadow, reload).

use std::path::{Path, PathBuf};

use puhuri_approver::reload::{self, Applied, PolicyFile};
use puhuri_approver::worker::{Disposition, Outcome};
use puhuri_policy::Policy;
use puhuri_policy::cases::Cases;
use puhuri_sim::NewAllocation;
use serde_json::{Value, json};

use crate::helpers::{Options, spawn_app};

const EXAMPLE: &str = include_str!("../../deploy/local/policy.toml");

/// The example policy reads `customer.country`, which only the customers file fills.
fn example_customers() -> String {
    format!(
        "[policy]\ncustomers_file = \"{}/deploy/local/customers.toml\"\n",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs one fixture: `NAME.toml` must compile and pass `NAME.cases.toml`, or fail to
/// compile with exactly the errors in `NAME.errors`. Returns what went wrong.
fn run_fixture(policy_path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(policy_path).expect("fixture readable");
    let cases_path = policy_path.with_extension("cases.toml");
    let errors_path = policy_path.with_extension("errors");
    let name = policy_path.display();
    match (Policy::parse(&text), errors_path.exists()) {
        (Ok(_), true) => vec![format!("{name}: compiled, but errors were expected")],
        (Err(errors), false) => vec![format!("{name}: does not compile:\n{errors}")],
        (Err(errors), true) => {
            let expected = std::fs::read_to_string(&errors_path).expect("golden readable");
            if errors.to_string().trim_end() == expected.trim_end() {
                vec![]
            } else {
                vec![format!(
                    "{name}: errors differ\n--- expected\n{}\n--- got\n{errors}",
                    expected.trim_end()
                )]
            }
        }
        (Ok(policy), false) => {
            let cases_text = std::fs::read_to_string(&cases_path)
                .unwrap_or_else(|_| panic!("{name}: needs {}", cases_path.display()));
            let cases = Cases::parse(&cases_text)
                .unwrap_or_else(|e| panic!("{}: {e}", cases_path.display()));
            cases
                .run(&policy)
                .into_iter()
                .filter(|r| !r.failures.is_empty())
                .map(|r| format!("{name}: case `{}`: {}", r.name, r.failures.join("; ")))
                .collect()
        }
    }
}

#[test]
fn every_policy_fixture_decides_or_fails_as_written() {
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(root().join("tests/policy"))
        .expect("tests/policy exists")
        .map(|entry| entry.expect("entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.ends_with(".toml") && !name.ends_with(".cases.toml")
        })
        .collect();
    fixtures.push(root().join("deploy/local/policy.toml"));
    fixtures.sort();
    assert!(fixtures.len() >= 4, "{fixtures:?}");
    let failures: Vec<String> = fixtures.iter().flat_map(|p| run_fixture(p)).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_fixture_with_a_wrong_expectation_fails() {
    let policy = Policy::parse(EXAMPLE).expect("example compiles");
    let cases = Cases::parse(
        "now = \"2026-01-01T00:00:00Z\"\n[[case]]\nname = \"wrong\"\nexpect = { action = \"approve\" }\n",
    )
    .expect("cases parse");
    let results = cases.run(&policy);
    assert_eq!(results.len(), 1);
    assert!(
        results[0].failures[0].contains("action: expected `approve`, got `hold`"),
        "{:?}",
        results[0].failures
    );
}

fn paths(calls: &[puhuri_sim::RecordedCall]) -> Vec<String> {
    calls
        .iter()
        .map(|c| {
            let action = c
                .path
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or("");
            format!("{} {} {}", c.method, action, c.status)
        })
        .collect()
}

#[tokio::test]
async fn the_example_policy_approves_a_domestic_cpu_request_and_submits_the_report() {
    let mut app = spawn_app(Options {
        policy: EXAMPLE,
        extra_config: example_customers(),
        ..Options::default()
    })
    .await;
    // The seeded first project is the University of Helsinki's (FI).
    let created = app
        .create(json!({"cpu_k_hours": 500, "gb_k_hours": 100}))
        .await;
    assert_eq!(
        app.notify("msg_policy_approve", &created).await.status(),
        202
    );
    let settled = app.settled("msg_policy_approve").await;
    let backend_id = format!("climate-extremes_{}", &created.resource_uuid[..8]);
    assert_eq!(
        settled.result.ok(),
        Some(Outcome::Approved {
            backend_id: backend_id.clone()
        })
    );
    let writes = app.writes_for(&created);
    assert_eq!(
        paths(&writes),
        vec![
            "POST set_backend_id 200",
            "POST approve_by_provider 200",
            "POST submit_report 200"
        ]
    );
    assert_eq!(
        app.resource(&created)["report"],
        json!([{"header": "Access", "body": format!("Your LUMI project is {backend_id}; log in to lumi.csc.fi with your MyAccessID account.")}])
    );
    app.stop().await;
}

#[tokio::test]
async fn the_example_policy_rejects_an_ended_project_with_the_rendered_reason() {
    let mut app = spawn_app(Options {
        policy: EXAMPLE,
        extra_config: example_customers(),
        ..Options::default()
    })
    .await;
    let created = app
        .sim
        .create_allocation(
            serde_json::from_value::<NewAllocation>(json!({
                "offering": "LUMI-C",
                "project": "Ocean circulation",
                "limits": {"cpu_k_hours": 10},
            }))
            .expect("request"),
        )
        .await
        .expect("allocation created");
    assert_eq!(
        app.notify("msg_policy_reject", &created).await.status(),
        202
    );
    let settled = app.settled("msg_policy_reject").await;
    let reason = "Project Ocean circulation ended on 2024-12-31; extend the project in Puhuri before requesting resources.";
    assert_eq!(
        settled.result.ok(),
        Some(Outcome::Rejected {
            reason: reason.into()
        })
    );
    let writes = app.writes_for(&created);
    assert_eq!(paths(&writes), vec!["POST reject_by_provider 200"]);
    assert_eq!(
        writes[0].body,
        json!({"provider_rejection_comment": reason})
    );
    assert_eq!(app.order_state(&created), "rejected");
    app.stop().await;
}

#[tokio::test]
async fn the_example_policy_holds_a_gpu_heavy_request_without_writing() {
    let mut app = spawn_app(Options {
        policy: EXAMPLE,
        extra_config: example_customers(),
        ..Options::default()
    })
    .await;
    let created = app
        .sim
        .create_allocation(
            serde_json::from_value::<NewAllocation>(json!({
                "offering": "LUMI-G",
                "limits": {"gpu_k_hours": 250},
            }))
            .expect("request"),
        )
        .await
        .expect("allocation created");
    assert_eq!(app.notify("msg_policy_hold", &created).await.status(), 202);
    let settled = app.settled("msg_policy_hold").await;
    assert_eq!(
        settled.result.ok(),
        Some(Outcome::Held {
            note: "250 GPU k-hours requested: GPU requests above 50 go to the allocation committee"
                .into()
        })
    );
    assert_eq!(settled.disposition, Disposition::Acked);
    assert_eq!(app.writes_for(&created), vec![]);
    assert_eq!(app.order_state(&created), "pending-provider");
    app.stop().await;
}

#[tokio::test]
async fn shadow_mode_publishes_the_decision_and_writes_nothing() {
    let mut app = spawn_app(Options {
        policy: EXAMPLE,
        extra_config: example_customers(),
        shadow: true,
        ..Options::default()
    })
    .await;
    let broker = app.running.as_ref().expect("running").broker.clone();
    let Some(rabbit) = broker.as_rabbit() else {
        panic!("the integration tests run on RabbitMQ")
    };
    let events = format!("{}.shadow-test", broker.topology().events_exchange());
    rabbit
        .bind_events_queue(&events, "shadow.allocation.#")
        .await
        .expect("bind");
    let created = app.create(json!({"cpu_k_hours": 500})).await;
    assert_eq!(
        app.notify("msg_policy_shadow", &created).await.status(),
        202
    );
    let settled = app.settled("msg_policy_shadow").await;
    assert!(
        matches!(settled.result, Ok(Outcome::Approved { .. })),
        "{settled:?}"
    );
    assert_eq!(app.writes_for(&created), vec![]);
    assert_eq!(app.order_state(&created), "pending-provider");

    let message = rabbit
        .take_one(&events)
        .await
        .expect("read events")
        .expect("a decision event was published");
    let event: Value = serde_json::from_slice(&message.body).expect("event is JSON");
    let policy = Policy::parse(EXAMPLE).expect("example compiles");
    assert_eq!(event["type"], "allocation.approved");
    assert_eq!(event["mode"], "shadow");
    assert_eq!(event["written"], false);
    assert_eq!(event["action"], "approve");
    assert_eq!(event["rule"], "domestic-cpu-under-ceiling");
    assert_eq!(event["policy_version"], policy.version());
    assert_eq!(event["notification_id"], "msg_policy_shadow");
    assert_eq!(
        event["allocation"]["order_uuid"],
        created.order_uuid.as_str()
    );
    assert_eq!(
        event["allocation"]["resource_uuid"],
        created.resource_uuid.as_str()
    );
    assert_eq!(
        event["backend_id"],
        format!("climate-extremes_{}", &created.resource_uuid[..8])
    );
    app.stop().await;
}

#[tokio::test]
async fn a_broken_policy_file_keeps_the_running_policy_and_a_good_one_replaces_it() {
    let mut app = spawn_app(Options::default()).await;
    let worker = app
        .running
        .as_ref()
        .and_then(|r| r.worker.clone())
        .expect("worker");
    let running = Policy::parse(crate::helpers::APPROVE_SMALL).expect("valid");
    let dir = std::env::temp_dir().join(format!("policy-reload-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("policy.toml");
    std::fs::write(&path, crate::helpers::APPROVE_SMALL).expect("write");
    let mut file = PolicyFile::new(path.clone(), &running);
    assert_eq!(
        reload::apply(&mut file, worker.policy_handle(), worker.metrics(), true),
        Applied::Unchanged
    );

    std::fs::write(
        &path,
        "[[rule]]\nname = \"x\"\nwhen = \"project.nope\"\naction = \"hold\"\n",
    )
    .expect("write");
    let refused = reload::apply(&mut file, worker.policy_handle(), worker.metrics(), true);
    assert!(
        matches!(&refused, Applied::Refused(why) if why.contains("policy.toml:3: rule `x`: `when`: unknown field `project.nope`")),
        "{refused:?}"
    );
    assert_eq!(worker.policy_version(), running.version());
    assert_eq!(
        worker
            .policy_reloads()
            .failures
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The old policy still decides.
    let created = app.create(json!({"cpu_k_hours": 5000})).await;
    app.notify("msg_reload_old", &created).await;
    assert!(matches!(
        app.settled("msg_reload_old").await.result,
        Ok(Outcome::Rejected { .. })
    ));

    std::fs::write(&path, "[default]\naction = \"hold\"\nnote = \"reloaded\"\n").expect("write");
    let reloaded = reload::apply(&mut file, worker.policy_handle(), worker.metrics(), true);
    assert!(matches!(reloaded, Applied::Reloaded(_)), "{reloaded:?}");
    assert_ne!(worker.policy_version(), running.version());
    let created = app.create(json!({"cpu_k_hours": 5000})).await;
    app.notify("msg_reload_new", &created).await;
    assert_eq!(
        app.settled("msg_reload_new").await.result.ok(),
        Some(Outcome::Held {
            note: "reloaded".into()
        })
    );
    let _ = std::fs::remove_dir_all(&dir);
    app.stop().await;
}

const SHARE: &str = r#"
[[rule]]
name = "within-share"
when = 'offering.name == "LUMI-C" && granted.customer.cpu_k_hours + limits.cpu_k_hours <= 1000.0'
action = "approve"
backend_id = "{project.slug}_{resource.short_uuid}"

[default]
action = "hold"
note = "over the organisation's share"
"#;

#[tokio::test]
async fn what_was_granted_already_counts_against_the_organisations_share() {
    let mut app = spawn_app(Options {
        policy: SHARE,
        ..Options::default()
    })
    .await;
    let mut outcomes = Vec::new();
    for (i, cpu) in [600, 300, 200].into_iter().enumerate() {
        let created = app.create(json!({"cpu_k_hours": cpu})).await;
        let id = format!("msg_share_{i}");
        assert_eq!(app.notify(&id, &created).await.status(), 202);
        outcomes.push(app.settled(&id).await.result.map(|o| o.name()).ok());
    }
    // 600, then 600 + 300 = 900, then 900 + 200 over 1000.
    assert_eq!(outcomes, [Some("approved"), Some("approved"), Some("held")]);
    app.stop().await;
}
