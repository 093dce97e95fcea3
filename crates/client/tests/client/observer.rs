//! The `CallObserver` is told of every call with its operation and status.

use puhuri_client::ApiGeneration;
use puhuri_sim::Faults;

use crate::harness::{Observed, Recorder, TestSim, answered, order_hint};
use crate::on_both_apis;

async fn the_observer_is_told_of_each_call_with_its_operation_and_status(api: ApiGeneration) {
    let sim = TestSim::start_for(api).await;
    let created = sim.allocation().await;
    let recorder = Recorder::new();
    let client = sim.client(api).with_observer(recorder.clone());

    let fetched = client
        .fetch_allocation(&order_hint(&created))
        .await
        .expect("fetch");
    assert_eq!(
        recorder.take(),
        vec![answered("get order", 200), answered("get resource", 200)]
    );

    client.approve(&fetched).await.expect("approve");
    let decision = match api {
        ApiGeneration::Orders => "approve",
        ApiGeneration::Resources => "set state",
    };
    assert_eq!(recorder.take(), vec![answered(decision, 200)]);

    let refused = client.approve(&fetched).await;
    assert!(refused.is_err(), "approving twice is refused");
    let conflict_status = match api {
        ApiGeneration::Orders => 409,
        // The 2021 API answers a wrong state with 400.
        ApiGeneration::Resources => 400,
    };
    assert_eq!(recorder.take(), vec![answered(decision, conflict_status)]);

    client.list_pending(None).await.expect("list pending");
    assert_eq!(recorder.take(), vec![answered("list", 200)]);

    sim.sim.set_faults(Faults {
        fail_next: 1,
        fail_status: Some(503),
        ..Faults::default()
    });
    client
        .get_resource(&created.resource_uuid)
        .await
        .expect_err("503");
    assert_eq!(recorder.take(), vec![answered("get resource", 503)]);
}

#[tokio::test]
async fn the_observer_is_told_of_a_call_that_got_no_answer() {
    let sim = TestSim::start().await;
    let created = sim.allocation().await;
    let recorder = Recorder::new();
    let client = sim
        .client(ApiGeneration::Orders)
        .with_observer(recorder.clone());
    // Nothing serves any more: the connection is refused.
    sim.stop().await;

    let error = client
        .get_resource(&created.resource_uuid)
        .await
        .expect_err("nothing answers");

    assert!(error.is_transient(), "{error:?}");
    assert_eq!(
        recorder.take(),
        vec![Observed {
            operation: "get resource",
            status: None
        }]
    );
}

on_both_apis!(the_observer_is_told_of_each_call_with_its_operation_and_status);
