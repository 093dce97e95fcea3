//! The queue contract: the same behaviour tests against both backends.

use std::time::Duration;

use puhuri_approver::config::AmqpConfig;
use puhuri_approver::notification::{AllocationHint, OrderUuid, WorkItem};
use puhuri_auth::secret::Secret;
use puhuri_queue::{Broker, Deliveries, Delivery, Retried, Select};
use tokio_util::sync::CancellationToken;

use crate::helpers::{Backend, WAIT, amqp_url, temp_dir};
use crate::on_both_backends;

/// One backend instance; `reopen` gives a second process's view of the same queue.
struct Harness {
    backend: Backend,
    prefix: String,
    dir: std::path::PathBuf,
    delays: Vec<Duration>,
}

impl Harness {
    fn new(backend: Backend, delays: Vec<Duration>) -> Harness {
        Harness {
            backend,
            prefix: format!("contract-{}", uuid::Uuid::new_v4().simple()),
            dir: temp_dir("contract"),
            delays,
        }
    }

    /// Opens the queue; the returned token closes it (RabbitMQ: the connection).
    async fn open(&self) -> (Broker, CancellationToken) {
        let stop = CancellationToken::new();
        let broker = match self.backend {
            Backend::RabbitMq => {
                let config = AmqpConfig {
                    urls: vec![Secret::new(amqp_url())],
                    prefix: self.prefix.clone(),
                    publish_channels: 2,
                    confirm_timeout: Duration::from_secs(5),
                    declare: true,
                };
                Broker::start_rabbit(&config, self.delays.clone(), stop.clone())
            }
            Backend::Embedded => {
                Broker::open_embedded(&self.dir, self.delays.clone(), Duration::from_millis(500))
                    .expect("open the embedded queue")
            }
        };
        let connected = tokio::time::timeout(WAIT, broker.wait_connected(&stop)).await;
        assert_eq!(connected, Ok(true), "the queue opens");
        (broker, stop)
    }

    async fn clean_up(self, broker: &Broker) {
        broker.delete_topology().await.expect("clean up");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn item(id: &str) -> WorkItem {
    WorkItem {
        id: id.into(),
        source: "contract".into(),
        event_type: "allocation.created".into(),
        hint: AllocationHint {
            order_uuid: OrderUuid::parse(&uuid::Uuid::new_v4().simple().to_string()),
            resource_uuid: None,
        },
        received_at_ms: 1,
    }
}

async fn consumer(broker: &Broker, prefetch: u16) -> Deliveries {
    broker
        .consume(prefetch, &CancellationToken::new())
        .await
        .expect("consumer")
}

async fn next(deliveries: &mut Deliveries) -> Delivery {
    tokio::time::timeout(WAIT, deliveries.next())
        .await
        .expect("a delivery in time")
        .expect("a delivery")
}

async fn publish_is_confirmed_consumed_and_acked_once(backend: Backend) {
    let harness = Harness::new(backend, vec![Duration::from_millis(100)]);
    let (broker, _stop) = harness.open().await;
    let sent = item("contract-1");
    puhuri_approver::work::publish_notification(&broker, &sent)
        .await
        .expect("durable");
    assert_eq!(broker.work_depth().await.expect("depth"), 1);
    let mut broker_deliveries = consumer(&broker, 4).await;
    let delivery = next(&mut broker_deliveries).await;
    assert_eq!(
        puhuri_approver::work::delivered(&delivery).ok(),
        Some(puhuri_approver::work::Work::Allocation(sent.clone()))
    );
    assert_eq!((delivery.attempts, delivery.redelivered), (0, false));
    assert_eq!(delivery.message_id, "contract-1");
    delivery.ack().await.expect("ack");
    assert_eq!(broker.work_depth().await.expect("depth"), 0);
    harness.clean_up(&broker).await;
}

async fn concurrent_publishes_are_all_confirmed(backend: Backend) {
    let harness = Harness::new(backend, vec![Duration::from_millis(100)]);
    let (broker, _stop) = harness.open().await;
    let publishes = (0..200).map(|i| {
        let broker = broker.clone();
        async move {
            puhuri_approver::work::publish_notification(&broker, &item(&format!("m{i}"))).await
        }
    });
    let results = futures_util::future::join_all(publishes).await;
    assert!(results.iter().all(Result::is_ok), "every publish confirmed");
    assert_eq!(broker.work_depth().await.expect("depth"), 200);
    harness.clean_up(&broker).await;
}

async fn an_unsettled_delivery_comes_back_after_a_crash(backend: Backend) {
    let harness = Harness::new(backend, vec![Duration::from_millis(100)]);
    let (first, first_stop) = harness.open().await;
    let mut first_deliveries = consumer(&first, 1).await;
    puhuri_approver::work::publish_notification(&first, &item("crash-1"))
        .await
        .expect("durable");
    let delivery = next(&mut first_deliveries).await;
    assert!(!delivery.redelivered);
    // The consumer dies without settling: its connection closes, or its lease runs out.
    drop(delivery);
    first_stop.cancel();
    drop(first);

    let (second, _stop) = harness.open().await;
    let mut second_deliveries = consumer(&second, 1).await;
    let again = next(&mut second_deliveries).await;
    assert_eq!(again.message_id, "crash-1");
    assert!(again.redelivered, "marked as delivered before");
    again.ack().await.expect("ack");
    harness.clean_up(&second).await;
}

async fn a_retry_waits_for_its_tier_and_keeps_its_history(backend: Backend) {
    let delay = Duration::from_millis(400);
    let harness = Harness::new(backend, vec![delay]);
    let (broker, _stop) = harness.open().await;
    let mut broker_deliveries = consumer(&broker, 1).await;
    puhuri_approver::work::publish_notification(&broker, &item("retry-1"))
        .await
        .expect("durable");
    let delivery = next(&mut broker_deliveries).await;
    let retried_at = std::time::Instant::now();
    let retried = delivery
        .retry_later("upstream 503", 5, None, 0.0)
        .await
        .expect("retry");
    assert_eq!(retried, Retried::Scheduled { attempts: 1, delay });
    let again = next(&mut broker_deliveries).await;
    assert!(
        retried_at.elapsed() >= Duration::from_millis(350),
        "{:?}",
        retried_at.elapsed()
    );
    assert_eq!(again.attempts, 1);
    assert_eq!(again.reasons, vec!["upstream 503".to_owned()]);
    again.ack().await.expect("ack");
    harness.clean_up(&broker).await;
}

async fn the_last_attempt_dead_letters_and_replay_brings_it_back(backend: Backend) {
    let harness = Harness::new(backend, vec![Duration::from_millis(50)]);
    let (broker, _stop) = harness.open().await;
    let mut broker_deliveries = consumer(&broker, 1).await;
    puhuri_approver::work::publish_notification(&broker, &item("dead-1"))
        .await
        .expect("durable");
    let first = next(&mut broker_deliveries).await;
    first
        .retry_later("first failure", 2, None, 0.0)
        .await
        .expect("retry");
    let second = next(&mut broker_deliveries).await;
    let outcome = second
        .retry_later("second failure", 2, None, 0.0)
        .await
        .expect("dead letter");
    assert_eq!(outcome, Retried::DeadLettered { attempts: 2 });

    let dead = broker.dead_letters(10).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, "dead-1");
    assert_eq!(
        dead[0].reasons,
        vec!["first failure".to_owned(), "second failure".to_owned()]
    );
    assert_eq!(dead[0].message_id.as_str(), "dead-1");

    let replayed = broker
        .settle_dead_letters(Select::One("dead-1"), true, |_, _| {})
        .await
        .expect("replay");
    assert_eq!(replayed, 1);
    assert_eq!(broker.dead_depth().await.expect("depth"), 0);
    let again = next(&mut broker_deliveries).await;
    assert_eq!((again.message_id.as_str(), again.attempts), ("dead-1", 0));
    again.ack().await.expect("ack");
    harness.clean_up(&broker).await;
}

/// At the largest `worker.max_attempts`, with reasons of the largest size, a message keeps
/// going round and is dead-lettered with its whole attempt count and the newest reasons that
/// fit: on RabbitMQ its header frame stays inside the connection's frame size.
async fn a_hundred_long_reasons_keep_the_newest_that_fit(backend: Backend) {
    let harness = Harness::new(backend, vec![Duration::from_millis(1)]);
    let (broker, _stop) = harness.open().await;
    let mut broker_deliveries = consumer(&broker, 1).await;
    puhuri_approver::work::publish_notification(&broker, &item("long-1"))
        .await
        .expect("durable");
    let reason = |n: u32| format!("attempt {n:03}: {}", "\u{1D11E}".repeat(600));
    for n in 1..=100 {
        let delivery = next(&mut broker_deliveries).await;
        assert_eq!(delivery.attempts, n - 1);
        let outcome = delivery
            .retry_later(&reason(n), 100, None, 0.0)
            .await
            .expect("retried");
        if n < 100 {
            assert!(matches!(outcome, Retried::Scheduled { attempts, .. } if attempts == n));
        } else {
            assert_eq!(outcome, Retried::DeadLettered { attempts: 100 });
        }
    }
    let dead = broker.dead_letters(10).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 100);
    let kept: Vec<&str> = dead[0].reasons.iter().map(|r| &r[..11]).collect();
    assert_eq!(
        kept,
        ["attempt 097", "attempt 098", "attempt 099", "attempt 100"]
    );
    assert!(dead[0].reasons.iter().map(String::len).sum::<usize>() <= puhuri_queue::REASONS_BYTES);
    harness.clean_up(&broker).await;
}

async fn purge_removes_dead_letters(backend: Backend) {
    let harness = Harness::new(backend, vec![Duration::from_millis(50)]);
    let (broker, _stop) = harness.open().await;
    let mut broker_deliveries = consumer(&broker, 1).await;
    for id in ["p1", "p2"] {
        puhuri_approver::work::publish_notification(&broker, &item(id))
            .await
            .expect("durable");
        next(&mut broker_deliveries)
            .await
            .dead_letter("never works")
            .await
            .expect("dead letter");
    }
    assert_eq!(broker.dead_depth().await.expect("depth"), 2);
    let purged = broker
        .settle_dead_letters(Select::All, false, |_, _| {})
        .await
        .expect("purge");
    assert_eq!(purged, 2);
    assert_eq!(broker.dead_depth().await.expect("depth"), 0);
    assert_eq!(broker.work_depth().await.expect("depth"), 0);
    harness.clean_up(&broker).await;
}

/// Two processes claim keys against each other. A refusal (on RabbitMQ the broker closes
/// that claim's channel) leaves the refused process's connection, and so the claims it
/// holds, in place: the other process stays excluded until they are released.
async fn a_refused_claim_keeps_the_claims_its_process_holds(backend: Backend) {
    let harness = Harness::new(backend, vec![Duration::from_millis(100)]);
    let (first, _first_stop) = harness.open().await;
    let (second, _second_stop) = harness.open().await;
    let ttl = Duration::from_secs(60);
    let key_a = format!("{}.a", harness.prefix);
    let key_b = format!("{}.b", harness.prefix);
    let a = first.claim(&key_a, ttl).await.expect("answered");
    let a = a.expect("a granted to the first");
    let b = second.claim(&key_b, ttl).await.expect("answered");
    let b = b.expect("b granted to the second");
    for i in 0..10 {
        let refused = second.claim(&key_a, ttl).await.expect("answered");
        assert!(refused.is_none(), "a is held by the first");
        puhuri_approver::work::publish_notification(&second, &item(&format!("claim-{i}")))
            .await
            .expect("the refused process still publishes");
        let taken = first.claim(&key_b, ttl).await.expect("answered");
        assert!(taken.is_none(), "b is still held by the second (round {i})");
    }
    a.release().await;
    b.release().await;
    let b = first.claim(&key_b, ttl).await.expect("answered");
    let a = second.claim(&key_a, ttl).await.expect("answered");
    let (Some(a), Some(b)) = (a, b) else {
        panic!("released claims are granted again");
    };
    a.release().await;
    b.release().await;
    harness.clean_up(&first).await;
}

on_both_backends!(
    publish_is_confirmed_consumed_and_acked_once,
    concurrent_publishes_are_all_confirmed,
    an_unsettled_delivery_comes_back_after_a_crash,
    a_retry_waits_for_its_tier_and_keeps_its_history,
    the_last_attempt_dead_letters_and_replay_brings_it_back,
    purge_removes_dead_letters,
    a_hundred_long_reasons_keep_the_newest_that_fit,
    a_refused_claim_keeps_the_claims_its_process_holds,
);
