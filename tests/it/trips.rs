//! Round trips to Puhuri Core per decision, read from the simulator's log of every API
//! call (reads included): one GET of the provider resource (its creation order embedded)
//! decides; an approval then writes `backend_id` and approves (3 calls), a rejection
//! rejects (2), a hold writes nothing (1). What follows an approval (the access report,
//! the team snapshot) comes after the approval.

use puhuri_approver::worker::{Disposition, Outcome};
use puhuri_sim::CreatedAllocation;
use serde_json::json;

use crate::helpers::{APPROVE_SMALL, Options, SECRET, TestApp, spawn_app};

/// Approves small LUMI-C requests with an access report, rejects big ones, holds 7 CPU k-hours.
const WITH_REPORT: &str = r#"
[[rule]]
name = "seven-to-a-human"
when = 'limits.cpu_k_hours == 7.0'
action = "hold"
note = "seven CPU k-hours go to the committee"

[[rule]]
name = "small-lumi-c"
when = 'offering.name == "LUMI-C" && limits.cpu_k_hours <= 1000'
action = "approve"
backend_id = "{project.slug}_{resource.short_uuid}"
report = [{ header = "Access", body = "Your project is {project.slug}." }]

[[rule]]
name = "big-lumi-c"
when = 'offering.name == "LUMI-C"'
action = "reject"
reason = "{project.name}: requests above 1000 CPU k-hours go to the allocation panel"

[default]
action = "hold"
note = "not an automatic case"
"#;

/// `METHOD path` of every API call the simulator answered since recording began, with
/// the allocation's uuids written as `{order}` and `{resource}`.
fn trips(app: &TestApp, created: &CreatedAllocation) -> Vec<String> {
    app.sim
        .requests()
        .iter()
        .map(|r| {
            format!("{} {}", r.method, r.path)
                .replace(&created.order_uuid, "{order}")
                .replace(&created.resource_uuid, "{resource}")
        })
        .collect()
}

const GET_RESOURCE: &str = "GET /api/marketplace-provider-resources/{resource}/";
const SET_BACKEND_ID: &str = "POST /api/marketplace-provider-resources/{resource}/set_backend_id/";
const APPROVE: &str = "POST /api/marketplace-orders/{order}/approve_by_provider/";
const REJECT: &str = "POST /api/marketplace-orders/{order}/reject_by_provider/";
const SUBMIT_REPORT: &str = "POST /api/marketplace-provider-resources/{resource}/submit_report/";
const GET_TEAM: &str = "GET /api/marketplace-provider-resources/{resource}/team/";

async fn app_with(policy: &'static str) -> TestApp {
    let app = spawn_app(Options {
        policy,
        ..Options::default()
    })
    .await;
    // The start-up probe's calls are not the decision's.
    app.sim.record_requests(true);
    app
}

#[tokio::test]
async fn an_approval_takes_three_calls_and_the_report_follows_it() {
    let mut app = app_with(WITH_REPORT).await;
    let created = app.create(json!({"cpu_k_hours": 500})).await;
    assert_eq!(
        app.notify("msg_trips_approve", &created).await.status(),
        202
    );
    let settled = app.settled("msg_trips_approve").await;
    assert!(
        matches!(settled.result, Ok(Outcome::Approved { .. })),
        "{:?}",
        settled.result
    );
    assert_eq!(settled.disposition, Disposition::Acked);

    let trips = trips(&app, &created);
    assert_eq!(
        trips[..3],
        [GET_RESOURCE, SET_BACKEND_ID, APPROVE],
        "{trips:#?}"
    );
    // After the approval: the access report (before the ack), the team snapshot (may
    // still be under way); nothing else, and nothing before the approval.
    assert!(trips[3..].contains(&SUBMIT_REPORT.to_owned()), "{trips:#?}");
    assert!(
        trips[3..]
            .iter()
            .all(|t| t == SUBMIT_REPORT || t == GET_TEAM),
        "{trips:#?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_rejection_takes_two_calls_and_a_hold_one() {
    let mut app = app_with(WITH_REPORT).await;
    let big = app.create(json!({"cpu_k_hours": 5000})).await;
    assert_eq!(app.notify("msg_trips_reject", &big).await.status(), 202);
    let settled = app.settled("msg_trips_reject").await;
    assert!(
        matches!(settled.result, Ok(Outcome::Rejected { .. })),
        "{:?}",
        settled.result
    );
    assert_eq!(trips(&app, &big), [GET_RESOURCE, REJECT]);

    app.sim.record_requests(true);
    let seven = app.create(json!({"cpu_k_hours": 7})).await;
    assert_eq!(app.notify("msg_trips_hold", &seven).await.status(), 202);
    let settled = app.settled("msg_trips_hold").await;
    assert!(
        matches!(settled.result, Ok(Outcome::Held { .. })),
        "{:?}",
        settled.result
    );
    assert_eq!(trips(&app, &seven), [GET_RESOURCE]);
    app.stop().await;
}

/// A hook naming only the order costs one more GET: the order names the resource, whose
/// uuid keys the allocation's lock; the resource's GET (creation order embedded) decides.
#[tokio::test]
async fn an_order_only_hint_adds_one_get_of_the_order() {
    let mut app = app_with(APPROVE_SMALL).await;
    let created = app.create(json!({"cpu_k_hours": 500})).await;
    let body = json!({
        "created": "2026-01-01T00:00:00Z",
        "message": "order created",
        "event_type": "marketplace_order_created",
        "context": {"order_uuid": created.order_uuid},
    })
    .to_string();
    let response = app
        .post_signed("waldur-relay", "msg_trips_order", body.as_bytes(), SECRET)
        .await;
    assert_eq!(response.status(), 202);
    let settled = app.settled("msg_trips_order").await;
    assert!(
        matches!(settled.result, Ok(Outcome::Approved { .. })),
        "{:?}",
        settled.result
    );
    let trips = trips(&app, &created);
    assert_eq!(
        trips[..4],
        [
            "GET /api/marketplace-orders/{order}/",
            GET_RESOURCE,
            SET_BACKEND_ID,
            APPROVE
        ],
        "{trips:#?}"
    );
    assert!(trips[4..].iter().all(|t| t == GET_TEAM), "{trips:#?}");
    app.stop().await;
}
