//! `list_pending` follows `Link: rel="next"` across pages.

use puhuri_client::{AllocationHint, ApiGeneration, OrderUuid, ResourceUuid};
use puhuri_sim::{CreatedAllocation, NewAllocation};

use crate::harness::TestSim;
use crate::on_both_apis;

/// More than one page of the client's (100), less than two.
const ALLOCATIONS: usize = 150;

/// The hint `list_pending` gives for an allocation in this API generation: the current
/// API lists orders (with their resource), the 2021 one resources.
fn expected_hint(created: &CreatedAllocation, api: ApiGeneration) -> AllocationHint {
    AllocationHint {
        order_uuid: match api {
            ApiGeneration::Orders => {
                Some(OrderUuid::parse(&created.order_uuid).expect("order uuid"))
            }
            ApiGeneration::Resources => None,
        },
        resource_uuid: Some(ResourceUuid::parse(&created.resource_uuid).expect("resource uuid")),
    }
}

fn sorted_keys(hints: &[AllocationHint]) -> Vec<(Option<String>, Option<String>)> {
    let mut keys: Vec<_> = hints
        .iter()
        .map(|h| {
            (
                h.order_uuid.as_ref().map(ToString::to_string),
                h.resource_uuid.as_ref().map(ToString::to_string),
            )
        })
        .collect();
    keys.sort();
    keys
}

async fn lists_every_pending_allocation_once_across_pages(api: ApiGeneration) {
    let sim = TestSim::start_for(api).await;
    let mut expected = Vec::with_capacity(ALLOCATIONS);
    for _ in 0..ALLOCATIONS {
        expected.push(expected_hint(&sim.allocation().await, api));
    }

    let (hints, calls) = sim
        .client(api)
        .list_pending(None)
        .await
        .expect("list pending");

    assert_eq!(calls, 2, "one call per page of 100");
    assert_eq!(hints.len(), ALLOCATIONS);
    let keys = sorted_keys(&hints);
    let mut unique = keys.clone();
    unique.dedup();
    assert_eq!(unique.len(), keys.len(), "no allocation comes back twice");
    assert_eq!(keys, sorted_keys(&expected));
}

async fn lists_the_pending_allocations_of_one_offering(api: ApiGeneration) {
    let sim = TestSim::start_for(api).await;
    let on = |offering: &str| NewAllocation {
        offering: Some(offering.into()),
        ..NewAllocation::default()
    };
    let wanted = sim
        .sim
        .create_allocation(on("LUMI-G"))
        .await
        .expect("allocation on LUMI-G");
    sim.sim
        .create_allocation(on("LUMI-C"))
        .await
        .expect("allocation on LUMI-C");

    let (hints, calls) = sim
        .client(api)
        .list_pending(Some(&wanted.offering_uuid))
        .await
        .expect("list pending");

    assert_eq!(calls, 1);
    assert_eq!(hints, vec![expected_hint(&wanted, api)]);
}

async fn an_approved_allocation_is_no_longer_pending(api: ApiGeneration) {
    let sim = TestSim::start_for(api).await;
    let approved = sim.allocation().await;
    let waiting = sim.allocation().await;
    let client = sim.client(api);
    let fetched = client
        .fetch_allocation(&expected_hint(&approved, api))
        .await
        .expect("fetch");
    client.approve(&fetched).await.expect("approve");

    let (hints, _) = client.list_pending(None).await.expect("list pending");

    assert_eq!(hints, vec![expected_hint(&waiting, api)]);
}

on_both_apis!(
    lists_every_pending_allocation_once_across_pages,
    lists_the_pending_allocations_of_one_offering,
    an_approved_allocation_is_no_longer_pending,
);
