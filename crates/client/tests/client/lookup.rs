//! `find_resource` by uuid and by the provider's `backend_id`.

use puhuri_client::{ApiGeneration, NotFound, ResourceRef, WaldurUuid};

use crate::harness::TestSim;
use crate::on_both_apis;

async fn finds_an_allocation_by_the_backend_id_set_on_it(api: ApiGeneration) {
    let sim = TestSim::start_for(api).await;
    let _other = sim.allocation().await;
    let created = sim.allocation().await;
    let client = sim.client(api);
    let backend_id = format!("climate_{}", &created.resource_uuid[..8]);
    client
        .set_backend_id(&created.resource_uuid, &backend_id)
        .await
        .expect("set backend_id");
    // Idempotent: the same value again is accepted.
    client
        .set_backend_id(&created.resource_uuid, &backend_id)
        .await
        .expect("set the same backend_id again");

    let found = client
        .find_resource(&ResourceRef::BackendId(backend_id.clone()))
        .await
        .expect("the lookup runs")
        .expect("one allocation has this backend_id");

    assert_eq!(found.uuid, created.resource_uuid);
    assert_eq!(found.backend_id.as_deref(), Some(backend_id.as_str()));
}

async fn an_unknown_backend_id_is_not_found(api: ApiGeneration) {
    let sim = TestSim::start_for(api).await;
    let created = sim.allocation().await;
    let client = sim.client(api);
    client
        .set_backend_id(&created.resource_uuid, "known")
        .await
        .expect("set backend_id");

    let missing = client
        .find_resource(&ResourceRef::BackendId("unknown".into()))
        .await
        .expect("the lookup runs");

    assert_eq!(
        missing.map(|r| r.uuid),
        Err(NotFound::BackendId("unknown".into()))
    );
}

async fn two_allocations_with_one_backend_id_are_ambiguous(api: ApiGeneration) {
    let sim = TestSim::start_for(api).await;
    let client = sim.client(api);
    for _ in 0..2 {
        let created = sim.allocation().await;
        client
            .set_backend_id(&created.resource_uuid, "shared")
            .await
            .expect("set backend_id");
    }

    let found = client
        .find_resource(&ResourceRef::BackendId("shared".into()))
        .await
        .expect("the lookup runs");

    assert_eq!(
        found.map(|r| r.uuid),
        Err(NotFound::Ambiguous {
            backend_id: "shared".into(),
            count: 2
        })
    );
}

async fn finds_an_allocation_by_uuid_and_not_an_unknown_one(api: ApiGeneration) {
    let sim = TestSim::start_for(api).await;
    let created = sim.allocation().await;
    let client = sim.client(api);
    let uuid = WaldurUuid::parse(&created.resource_uuid).expect("uuid");

    let found = client
        .find_resource(&ResourceRef::Uuid(uuid))
        .await
        .expect("the lookup runs")
        .expect("the allocation exists");
    assert_eq!(found.uuid, created.resource_uuid);

    let unknown = WaldurUuid::parse("0123456789abcdef0123456789abcdef").expect("uuid");
    let missing = client
        .find_resource(&ResourceRef::Uuid(unknown.clone()))
        .await
        .expect("a 404 is an answer, not a failure");
    assert_eq!(missing.map(|r| r.uuid), Err(NotFound::Uuid(unknown)));
}

on_both_apis!(
    finds_an_allocation_by_the_backend_id_set_on_it,
    an_unknown_backend_id_is_not_found,
    two_allocations_with_one_backend_id_are_ambiguous,
    finds_an_allocation_by_uuid_and_not_an_unknown_one,
);
