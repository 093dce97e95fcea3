//! The whole path: HTTP in, RabbitMQ, worker, Puhuri Core (the simulator) written back.

use puhuri_approver::app::Roles;
use puhuri_approver::worker::{Disposition, Outcome};
use puhuri_sim::{Faults, WaldurVersion};
use serde_json::{Value, json};

use crate::helpers::{Backend, Options, SECRET, TOKEN, spawn_app};
use crate::on_both_backends;

fn paths(calls: &[puhuri_sim::RecordedCall]) -> Vec<String> {
    calls
        .iter()
        .map(|c| format!("{} {} {}", c.method, c.path, c.status))
        .collect()
}

async fn approves_a_small_allocation_setting_backend_id_first(backend: Backend) {
    let mut app = spawn_app(Options {
        backend,
        ..Options::default()
    })
    .await;
    let created = app
        .create(json!({"cpu_k_hours": 500, "gb_k_hours": 100}))
        .await;

    let response = app.notify("msg_approve_1", &created).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body, json!({"status": "queued", "id": "msg_approve_1"}));

    let settled = app.settled("msg_approve_1").await;
    let resource = app.resource(&created);
    let expected_backend_id = format!("climate-extremes_{}", &created.resource_uuid[..8]);
    assert_eq!(
        settled.result.ok(),
        Some(Outcome::Approved {
            backend_id: expected_backend_id.clone()
        })
    );
    assert_eq!(settled.disposition, Disposition::Acked);

    let writes = app.writes_for(&created);
    assert_eq!(
        paths(&writes),
        vec![
            format!(
                "POST /api/marketplace-provider-resources/{}/set_backend_id/ 200",
                created.resource_uuid
            ),
            format!(
                "POST /api/marketplace-orders/{}/approve_by_provider/ 200",
                created.order_uuid
            ),
        ]
    );
    assert_eq!(writes[0].body, json!({"backend_id": expected_backend_id}));
    assert_eq!(app.order_state(&created), "done");
    assert_eq!(resource["state"], "OK");
    assert_eq!(resource["backend_id"], json!(expected_backend_id));
    app.stop().await;
}

async fn rejects_a_large_allocation_with_the_rules_reason(backend: Backend) {
    let mut app = spawn_app(Options {
        backend,
        ..Options::default()
    })
    .await;
    let created = app.create(json!({"cpu_k_hours": 5000})).await;
    assert_eq!(app.notify("msg_reject_1", &created).await.status(), 202);

    let settled = app.settled("msg_reject_1").await;
    let reason = "Climate extremes: requests above 1000 CPU k-hours go to the allocation panel";
    assert_eq!(
        settled.result.ok(),
        Some(Outcome::Rejected {
            reason: reason.into()
        })
    );
    let writes = app.writes_for(&created);
    assert_eq!(
        paths(&writes),
        vec![format!(
            "POST /api/marketplace-orders/{}/reject_by_provider/ 200",
            created.order_uuid
        )]
    );
    assert_eq!(
        writes[0].body,
        json!({"provider_rejection_comment": reason})
    );
    assert_eq!(app.order_state(&created), "rejected");
    assert_eq!(app.resource(&created)["state"], "Terminated");
    app.stop().await;
}

async fn hold_writes_nothing(backend: Backend) {
    let mut app = spawn_app(Options {
        backend,
        ..Options::default()
    })
    .await;
    let request =
        serde_json::from_value(json!({"offering": "LUMI-G", "limits": {"gpu_k_hours": 10}}))
            .expect("request");
    let created = app.sim.create_allocation(request).await.expect("created");
    assert_eq!(app.notify("msg_hold_1", &created).await.status(), 202);

    let settled = app.settled("msg_hold_1").await;
    assert_eq!(
        settled.result.ok(),
        Some(Outcome::Held {
            note: "not an automatic case".into()
        })
    );
    assert_eq!(paths(&app.writes_for(&created)), Vec::<String>::new());
    assert_eq!(app.order_state(&created), "pending-provider");
    assert_eq!(app.resource(&created)["state"], "Creating");
    app.stop().await;
}

async fn the_same_notification_twice_approves_once(backend: Backend) {
    let mut app = spawn_app(Options {
        backend,
        ..Options::default()
    })
    .await;
    let created = app.create(json!({"cpu_k_hours": 10})).await;
    // Two notifications for one allocation (a replay under another id, or one that
    // reached another receiver replica): the workers decide it once.
    assert_eq!(app.notify("msg_twice", &created).await.status(), 202);
    assert_eq!(app.notify("msg_twice_b", &created).await.status(), 202);

    let events = app.settled.as_mut().expect("workers run");
    let mut settled = Vec::new();
    while settled.len() < 2 {
        let event = tokio::time::timeout(crate::helpers::WAIT, events.recv())
            .await
            .expect("settled in time")
            .expect("worker events");
        if event.id.starts_with("msg_twice") {
            settled.push(event);
        }
    }
    let (first, second) = (&settled[0], &settled[1]);
    let mut outcomes = vec![first.result.clone(), second.result.clone()];
    outcomes.sort_by_key(|o| format!("{o:?}"));
    assert!(
        matches!(outcomes[0], Ok(Outcome::AlreadyHandled { .. })),
        "{outcomes:?}"
    );
    assert!(
        matches!(outcomes[1], Ok(Outcome::Approved { .. })),
        "{outcomes:?}"
    );
    let approvals = app
        .writes_for(&created)
        .into_iter()
        .filter(|c| c.path.ends_with("/approve_by_provider/"))
        .count();
    assert_eq!(approvals, 1);
    app.stop().await;
}

async fn the_2021_resources_api_is_served_end_to_end(backend: Backend) {
    let mut app = spawn_app(Options {
        backend,
        api: "resources",
        waldur: WaldurVersion::V2021,
        ..Options::default()
    })
    .await;
    let created = app.create(json!({"cpu_k_hours": 100})).await;
    assert_eq!(app.notify("msg_2021", &created).await.status(), 202);

    let settled = app.settled("msg_2021").await;
    assert!(
        matches!(settled.result, Ok(Outcome::Approved { .. })),
        "{settled:?}"
    );
    let writes = app.writes_for(&created);
    assert_eq!(
        paths(&writes),
        vec![
            format!(
                "POST /api/marketplace-resources/{}/set_backend_id/ 200",
                created.resource_uuid
            ),
            format!(
                "POST /api/marketplace-resources/{}/set_state_by_provider/ 200",
                created.resource_uuid
            ),
        ]
    );
    assert_eq!(writes[1].body, json!({"state": "ok"}));
    assert_eq!(app.resource(&created)["state"], "OK");
    app.stop().await;
}

async fn a_bad_signature_is_refused_and_nothing_is_queued(backend: Backend) {
    let app = spawn_app(Options {
        backend,
        roles: Roles {
            receive: true,
            work: false,
        },
        ..Options::default()
    })
    .await;
    let created = app.create(json!({"cpu_k_hours": 10})).await;
    let body = json!({"type": "allocation.created", "order_uuid": created.order_uuid}).to_string();
    let other_secret = "whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldCBrZXkgMTIz";

    let response = app
        .post_signed("relay", "msg_forged", body.as_bytes(), other_secret)
        .await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let problem: Value = response.json().await.expect("problem json");
    assert_eq!(problem["type"], "urn:puhuri-approver:problem:bad-signature");
    assert_eq!(problem["status"], 401);
    assert_eq!(app.work_queue_depth().await, 0);

    // The same body, correctly signed, is queued: the check above can fail.
    let response = app
        .post_signed("relay", "msg_genuine", body.as_bytes(), SECRET)
        .await;
    assert_eq!(response.status(), 202);
    assert_eq!(app.work_queue_depth().await, 1);
    app.stop().await;
}

#[tokio::test]
async fn bad_input_is_answered_with_a_problem_and_not_queued() {
    let app = spawn_app(Options {
        roles: Roles {
            receive: true,
            work: false,
        },
        ..Options::default()
    })
    .await;
    let cases: Vec<(&str, &[u8], u16, &str)> = vec![
        ("relay", b"{not json", 400, "malformed-json"),
        (
            "relay",
            br#"{"type":"allocation.created"}"#,
            422,
            "no-allocation",
        ),
        (
            "relay",
            br#"{"type":"allocation.created","order_uuid":"nope"}"#,
            422,
            "invalid-uuid",
        ),
        ("nowhere", br#"{}"#, 404, "unknown-source"),
    ];
    for (source, body, status, cause) in cases {
        let response = app.post_signed(source, "msg_bad", body, SECRET).await;
        assert_eq!(
            response.status(),
            status,
            "{}",
            String::from_utf8_lossy(body)
        );
        let problem: Value = response.json().await.expect("problem json");
        assert_eq!(
            problem["type"],
            format!("urn:puhuri-approver:problem:{cause}")
        );
    }
    let response = app
        .http
        .post(app.url("/v1/notifications/relay"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 415);

    let ignored = json!({"created": "2026-01-01T00:00:00Z", "message": "m", "event_type": "user_password_updated", "context": {}});
    let response = app
        .post_signed(
            "waldur-relay",
            "msg_ignored",
            ignored.to_string().as_bytes(),
            SECRET,
        )
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "ignored");
    assert_eq!(
        app.running
            .as_ref()
            .map(|r| r.stats.ignored.load(std::sync::atomic::Ordering::Relaxed)),
        Some(1)
    );
    assert_eq!(app.work_queue_depth().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn an_unreachable_broker_answers_503_with_retry_after() {
    // Port 1 on loopback refuses connections.
    let app = spawn_app(Options {
        amqp_url: Some("amqp://guest:guest@127.0.0.1:1/%2f".into()),
        expect_broker: false,
        roles: Roles {
            receive: true,
            work: false,
        },
        ..Options::default()
    })
    .await;
    let created = app.create(json!({"cpu_k_hours": 10})).await;
    let response = app.notify("msg_no_broker", &created).await;
    assert_eq!(response.status(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("5")
    );
    let problem: Value = response.json().await.expect("problem json");
    assert_eq!(
        problem["type"],
        "urn:puhuri-approver:problem:broker-unavailable"
    );
    let ready = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("answer");
    assert_eq!(ready.status(), 503);
    app.stop().await;
}

async fn an_allocation_approved_already_is_acked_without_a_write(backend: Backend) {
    let mut app = spawn_app(Options {
        backend,
        ..Options::default()
    })
    .await;
    let created = app.create(json!({"cpu_k_hours": 10})).await;
    let approve = app
        .http
        .post(format!(
            "{}/api/marketplace-orders/{}/approve_by_provider/",
            app.sim_url, created.order_uuid
        ))
        .header("authorization", format!("Token {TOKEN}"))
        .send()
        .await
        .expect("sim answers");
    assert_eq!(approve.status(), 200);
    let writes_before = app.writes_for(&created).len();

    assert_eq!(app.notify("msg_late", &created).await.status(), 202);
    let settled = app.settled("msg_late").await;
    assert_eq!(
        settled.result.ok(),
        Some(Outcome::AlreadyHandled {
            state: "order is done".into()
        })
    );
    assert_eq!(settled.disposition, Disposition::Acked);
    assert_eq!(app.writes_for(&created).len(), writes_before);
    app.stop().await;
}

async fn a_puhuri_core_500_is_retried_and_then_succeeds(backend: Backend) {
    let mut app = spawn_app(Options {
        backend,
        ..Options::default()
    })
    .await;
    let created = app.create(json!({"cpu_k_hours": 10})).await;
    app.sim.set_faults(Faults {
        fail_next: 1,
        ..Faults::default()
    });
    assert_eq!(app.notify("msg_flaky", &created).await.status(), 202);

    let first = app.settled("msg_flaky").await;
    assert_eq!(first.attempt, 1);
    assert_eq!(first.disposition, Disposition::RetryScheduled);
    assert!(
        first
            .result
            .as_ref()
            .is_err_and(|e| e.to_string().contains("500")),
        "{first:?}"
    );

    let second = app.settled("msg_flaky").await;
    assert_eq!(second.attempt, 2);
    assert!(
        matches!(second.result, Ok(Outcome::Approved { .. })),
        "{second:?}"
    );
    assert_eq!(app.order_state(&created), "done");
    app.stop().await;
}

async fn a_permanent_failure_goes_to_the_dead_letter_queue_with_its_reason(backend: Backend) {
    let mut app = spawn_app(Options {
        backend,
        ..Options::default()
    })
    .await;
    // A well-formed uuid the simulator does not know: Puhuri Core answers 404.
    let body =
        json!({"type": "allocation.created", "resource_uuid": "0123456789abcdef0123456789abcdef"});
    let response = app
        .post_signed("relay", "msg_unknown", body.to_string().as_bytes(), SECRET)
        .await;
    assert_eq!(response.status(), 202);

    let settled = app.settled("msg_unknown").await;
    assert_eq!(settled.disposition, Disposition::DeadLettered);
    let running = app.running.as_ref().expect("running");
    let dead = running
        .broker
        .dead_letters(10)
        .await
        .expect("read dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, "msg_unknown");
    assert_eq!(dead[0].reasons.len(), 1);
    assert!(dead[0].reasons[0].contains("404"), "{:?}", dead[0].reasons);
    app.stop().await;
}

async fn transient_failures_stop_after_the_last_attempt(backend: Backend) {
    let mut app = spawn_app(Options {
        backend,
        max_attempts: 2,
        ..Options::default()
    })
    .await;
    let created = app.create(json!({"cpu_k_hours": 10})).await;
    app.sim.set_faults(Faults {
        fail_next: 100,
        fail_status: Some(503),
        ..Faults::default()
    });
    assert_eq!(app.notify("msg_down", &created).await.status(), 202);
    let first = app.settled("msg_down").await;
    assert_eq!(first.disposition, Disposition::RetryScheduled);
    let second = app.settled("msg_down").await;
    assert_eq!(
        (second.attempt, second.disposition),
        (2, Disposition::DeadLettered)
    );
    app.sim.set_faults(Faults::default());
    assert_eq!(app.order_state(&created), "pending-provider");
    app.stop().await;
}

async fn an_allocation_created_in_the_simulator_is_decided_through_its_hook(backend: Backend) {
    let mut app = spawn_app(Options {
        backend,
        sim_hook: true,
        ..Options::default()
    })
    .await;
    let mut settled = app.settled.take().expect("worker events");
    let created = app.create(json!({"cpu_k_hours": 10})).await;
    let event = tokio::time::timeout(crate::helpers::WAIT, settled.recv())
        .await
        .expect("decided in time")
        .expect("event");
    assert!(
        matches!(event.result, Ok(Outcome::Approved { .. })),
        "{event:?}"
    );
    assert_eq!(app.order_state(&created), "done");
    app.stop().await;
}

on_both_backends!(
    approves_a_small_allocation_setting_backend_id_first,
    rejects_a_large_allocation_with_the_rules_reason,
    hold_writes_nothing,
    the_same_notification_twice_approves_once,
    the_2021_resources_api_is_served_end_to_end,
    a_bad_signature_is_refused_and_nothing_is_queued,
    an_allocation_approved_already_is_acked_without_a_write,
    a_puhuri_core_500_is_retried_and_then_succeeds,
    a_permanent_failure_goes_to_the_dead_letter_queue_with_its_reason,
    transient_failures_stop_after_the_last_attempt,
    an_allocation_created_in_the_simulator_is_decided_through_its_hook,
);
