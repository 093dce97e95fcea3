//! `fetch_allocation` from whatever a notification names, and `Fetched::waiting` before
//! and after the provider's decision.

use puhuri_client::{
    AllocationHint, ApiGeneration, Fetched, OrderState, OrderType, ResourceState, Waiting,
};
use puhuri_sim::{CreatedAllocation, NewAllocation};

use crate::harness::{TestSim, full_hint, order_hint, resource_hint};
use crate::on_both_apis;

/// The fetched allocation is the one created, waiting for the provider, its creation
/// order included.
fn assert_waits(fetched: &Fetched, created: &CreatedAllocation, api: ApiGeneration) {
    let resource = &fetched.resource;
    assert_eq!(resource.uuid, created.resource_uuid);
    assert_eq!(resource.state, ResourceState::Creating);
    assert_eq!(
        resource.project_uuid.as_deref(),
        Some(created.project_uuid.as_str())
    );
    assert_eq!(
        resource.offering_uuid.as_deref(),
        Some(created.offering_uuid.as_str())
    );
    let order = fetched
        .order
        .as_ref()
        .expect("the creation order comes along");
    assert_eq!(order.uuid, created.order_uuid);
    assert_eq!(order.state, OrderState::PendingProvider);
    assert_eq!(order.order_type, OrderType::Create);
    assert_eq!(
        order.marketplace_resource_uuid.as_deref(),
        Some(created.resource_uuid.as_str())
    );
    assert_eq!(fetched.waiting(api), Waiting::Yes);
}

async fn fetches_and_checks(api: ApiGeneration, hint: fn(&CreatedAllocation) -> AllocationHint) {
    let sim = TestSim::start_for(api).await;
    // Two allocations: the fetch must find the one named, not merely the first.
    let _other = sim.allocation().await;
    let created = sim.allocation().await;
    let fetched = sim
        .client(api)
        .fetch_allocation(&hint(&created))
        .await
        .expect("fetch");
    assert_waits(&fetched, &created, api);
}

async fn fetches_an_allocation_from_its_order(api: ApiGeneration) {
    fetches_and_checks(api, order_hint).await;
}

async fn fetches_an_allocation_from_its_resource(api: ApiGeneration) {
    fetches_and_checks(api, resource_hint).await;
}

async fn fetches_an_allocation_named_by_order_and_resource(api: ApiGeneration) {
    fetches_and_checks(api, full_hint).await;
}

async fn an_approved_allocation_is_already_handled(api: ApiGeneration) {
    let sim = TestSim::start_for(api).await;
    let created = sim.allocation().await;
    let client = sim.client(api);
    let fetched = client
        .fetch_allocation(&order_hint(&created))
        .await
        .expect("fetch");
    assert_eq!(fetched.waiting(api), Waiting::Yes);

    client.approve(&fetched).await.expect("approve");

    let again = client
        .fetch_allocation(&order_hint(&created))
        .await
        .expect("fetch after approving");
    assert!(
        matches!(again.waiting(api), Waiting::AlreadyHandled(_)),
        "after approving: {:?}",
        again.waiting(api)
    );
    let order = again.order.as_ref().expect("creation order");
    match api {
        // The provider approved the order: it is no longer pending.
        ApiGeneration::Orders => assert_ne!(order.state, OrderState::PendingProvider),
        // The provider set the resource's state.
        ApiGeneration::Resources => assert_eq!(again.resource.state, ResourceState::Ok),
    }
}

on_both_apis!(
    fetches_an_allocation_from_its_order,
    fetches_an_allocation_from_its_resource,
    fetches_an_allocation_named_by_order_and_resource,
    an_approved_allocation_is_already_handled,
);

/// Only the current API has consumer approval before the provider's turn.
#[tokio::test]
async fn an_allocation_the_consumer_has_not_approved_is_not_yet_waiting() {
    let sim = TestSim::start().await;
    let created = sim
        .sim
        .create_allocation(NewAllocation {
            order_state: Some("pending-consumer".into()),
            ..NewAllocation::default()
        })
        .await
        .expect("the simulator creates an allocation");
    let api = ApiGeneration::Orders;
    let fetched = sim
        .client(api)
        .fetch_allocation(&resource_hint(&created))
        .await
        .expect("fetch");
    let order = fetched.order.as_ref().expect("creation order");
    assert_eq!(order.state, OrderState::PendingConsumer);
    assert!(
        matches!(fetched.waiting(api), Waiting::NotYet(_)),
        "{:?}",
        fetched.waiting(api)
    );
}
