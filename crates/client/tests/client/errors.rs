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
    assert!(error.is_unauthorized(), "{error:?}");
    assert!(!error.is_transient());
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

async fn an_expired_token_is_unauthorized_until_the_client_takes_a_new_one(api: ApiGeneration) {
    let sim = TestSim::start().await;
    let created = sim.allocation().await;
    let client = sim.client(api);
    let copy = client.clone();
    client
        .fetch_allocation(&resource_hint(&created))
        .await
        .expect("the token works");
    sim.sim.expire_tokens();
    let error = client
        .fetch_allocation(&resource_hint(&created))
        .await
        .expect_err("the token expired");
    assert!(error.is_unauthorized(), "{error:?}");
    assert!(error.to_string().contains("Token has expired."), "{error}");
    assert!(
        sim.sim
            .set_token(0, puhuri_auth::Secret::new("renewed-token"))
    );
    client.set_token("renewed-token").expect("a header value");
    // Every clone uses the new token.
    copy.fetch_allocation(&resource_hint(&created))
        .await
        .expect("the new token works");
    let me = copy.me().await.expect("users/me");
    assert_eq!(me.username, "sp-integration");
    assert!(me.permissions.iter().any(|p| p.is_provider_customer_role()));
}

/// No more than `max_in_flight` calls are open at the simulator at once, however many
/// tasks call.
async fn concurrent_calls_never_exceed_max_in_flight(api: ApiGeneration) {
    let sim = TestSim::start().await;
    let created = sim.allocation().await;
    sim.sim.set_faults(Faults {
        latency_ms: 20,
        ..Faults::default()
    });
    let client = sim.client(api).with_max_in_flight(3);
    sim.sim.reset_peak_in_flight();
    let calls: Vec<_> = (0..24)
        .map(|_| {
            let client = client.clone();
            let hint = resource_hint(&created);
            tokio::spawn(async move { client.fetch_allocation(&hint).await.map(drop) })
        })
        .collect();
    for call in calls {
        call.await.expect("joined").expect("the call succeeds");
    }
    assert_eq!(sim.sim.peak_in_flight(), 3);
}

on_both_apis!(
    an_expired_token_is_unauthorized_until_the_client_takes_a_new_one,
    concurrent_calls_never_exceed_max_in_flight,
    an_unknown_resource_is_a_permanent_404,
    a_wrong_token_is_refused_with_401,
    approving_twice_is_a_conflict,
    an_injected_503_is_transient_and_the_next_call_succeeds,
    an_injected_429_is_transient_with_its_retry_after,
);
