//! How failures are classified, against the simulator's real answers.

use puhuri_client::{ApiGeneration, PuhuriError};
use puhuri_sim::Faults;

use crate::harness::{TestSim, order_hint, resource_hint};
use crate::on_both_apis;

/// A well-formed uuid no allocation has.
const UNKNOWN: &str = "0123456789abcdef0123456789abcdef";

async fn an_unknown_resource_is_a_permanent_404(api: ApiGeneration) {
    let sim = TestSim::start_for(api).await;
    let _existing = sim.allocation().await;
    let error = sim
        .client(api)
        .get_resource(UNKNOWN)
        .await
        .expect_err("no resource has this uuid");
    assert!(
        matches!(
            error,
            PuhuriError::Permanent {
                status: 404,
                operation: "get resource",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(!error.is_transient());
}

async fn a_wrong_token_is_refused_with_401(api: ApiGeneration) {
    let sim = TestSim::start_for(api).await;
    let created = sim.allocation().await;
    let error = sim
        .client_with_token(api, "not-the-token")
        .fetch_allocation(&resource_hint(&created))
        .await
        .expect_err("the token is wrong");
    assert!(
        matches!(error, PuhuriError::Permanent { status: 401, .. }),
        "{error:?}"
    );
    // The token is never in an error.
    assert!(!error.to_string().contains("not-the-token"), "{error}");
}

async fn approving_twice_is_a_conflict(api: ApiGeneration) {
    let sim = TestSim::start_for(api).await;
    let created = sim.allocation().await;
    let client = sim.client(api);
    let fetched = client
        .fetch_allocation(&order_hint(&created))
        .await
        .expect("fetch");
    client.approve(&fetched).await.expect("first approval");

    let error = client
        .approve(&fetched)
        .await
        .expect_err("the allocation is approved already");
    assert!(matches!(error, PuhuriError::Conflict { .. }), "{error:?}");
}

async fn an_injected_503_is_transient_and_the_next_call_succeeds(api: ApiGeneration) {
    let sim = TestSim::start_for(api).await;
    let created = sim.allocation().await;
    let client = sim.client(api);
    sim.sim.set_faults(Faults {
        fail_next: 1,
        fail_status: Some(503),
        ..Faults::default()
    });

    let error = client
        .fetch_allocation(&resource_hint(&created))
        .await
        .expect_err("the simulator answers 503 once");
    assert!(error.is_transient(), "{error:?}");
    assert!(
        matches!(
            error,
            PuhuriError::Transient {
                operation: "get resource",
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(sim.sim.faults().fail_next, 0, "the fault was used up");

    let fetched = client
        .fetch_allocation(&resource_hint(&created))
        .await
        .expect("the fault is over");
    assert_eq!(fetched.resource.uuid, created.resource_uuid);
}

async fn an_injected_429_is_transient_with_its_retry_after(api: ApiGeneration) {
    let sim = TestSim::start_for(api).await;
    let created = sim.allocation().await;
    sim.sim.set_faults(Faults {
        error_rate: 1.0,
        error_statuses: vec![429],
        ..Faults::default()
    });

    let error = sim
        .client(api)
        .fetch_allocation(&resource_hint(&created))
        .await
        .expect_err("every call answers 429");
    match error {
        PuhuriError::Transient { retry_after, .. } => {
            assert_eq!(retry_after, Some(std::time::Duration::from_secs(1)));
        }
        other => panic!("not transient: {other:?}"),
    }
}

on_both_apis!(
    an_unknown_resource_is_a_permanent_404,
    a_wrong_token_is_refused_with_401,
    approving_twice_is_a_conflict,
    an_injected_503_is_transient_and_the_next_call_succeeds,
    an_injected_429_is_transient_with_its_retry_after,
);
