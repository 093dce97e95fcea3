//! The durable queue between receivers and workers, with two backends behind one
//! boundary: RabbitMQ ([`rabbitmq`], for many receivers and workers on a cluster) and an
//! embedded SQLite queue ([`embedded`], the default on one machine).
//!
//! Both backends keep the same semantics, which the rest of the product relies on:
//! INVARIANT: `publish_notification` returns `Ok` only once the message is durable
//! (RabbitMQ: the publisher confirm of a persistent message on a quorum queue; embedded:
//! the committed, fsync'd transaction).
//! INVARIANT: delivery is at least once: a delivery that is not settled (the worker died,
//! the connection dropped, the lease expired) is delivered again, marked `redelivered`.
//! INVARIANT: a delivery is settled exactly once ([`Delivery`] methods take `self`); a
//! retry or dead-letter copy is durable before the original is removed.
//! INVARIANT: retries wait `worker.retry_delays_ms` tiers (with jitter and `Retry-After`);
//! after `max_attempts` the message goes to the dead letters with every attempt's reason.

pub mod embedded;
pub mod rabbitmq;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::AmqpConfig;
use crate::notification::{Envelope, WorkItem};
use embedded::{Claimed, EmbeddedQueue, Lane, StorageError};
use rabbitmq::{RabbitBroker, RabbitDeliveries, RabbitDelivery};

pub use rabbitmq::{
    HEADER_ATTEMPTS, HEADER_REASONS, RawMessage, USAGE_ROUTING_KEY, WORK_ROUTING_KEY,
};

/// Queue and exchange names derived from the prefix.
#[derive(Debug, Clone)]
pub struct Topology {
    pub prefix: String,
    pub retry_delays: Vec<Duration>,
}

impl Topology {
    pub fn work_exchange(&self) -> String {
        format!("{}.work", self.prefix)
    }
    pub fn work_queue(&self) -> String {
        format!("{}.work", self.prefix)
    }
    pub fn retry_exchange(&self) -> String {
        format!("{}.retry", self.prefix)
    }
    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.retry.{}ms", self.prefix, delay.as_millis())
    }
    pub(crate) fn retry_routing_key(delay: Duration) -> String {
        format!("delay.{}ms", delay.as_millis())
    }
    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }
    /// Every queue, for tooling and test clean-up.
    pub fn queues(&self) -> Vec<String> {
        let mut queues = vec![self.work_queue(), self.dead_queue()];
        queues.extend(self.retry_delays.iter().map(|d| self.retry_queue(*d)));
        queues
    }
    /// The delay before attempt `attempts + 1`, after `attempts` failed ones.
    pub fn delay_for(&self, attempts: u32) -> Duration {
        let index = (attempts.max(1) as usize - 1).min(self.retry_delays.len().saturating_sub(1));
        self.retry_delays
            .get(index)
            .copied()
            .unwrap_or(Duration::from_secs(1))
    }

    /// The attempt's tier, or the first tier at least as long as `retry_after`, bounded
    /// by the last tier.
    pub fn delay_covering(&self, attempts: u32, retry_after: Option<Duration>) -> Duration {
        let base = self.delay_for(attempts);
        let Some(wanted) = retry_after.filter(|w| *w > base) else {
            return base;
        };
        self.retry_delays
            .iter()
            .copied()
            .find(|d| *d >= wanted)
            .or_else(|| self.retry_delays.iter().copied().max())
            .unwrap_or(base)
    }
}

/// Shortens a delay by a random fraction of up to `jitter`.
pub fn jittered(delay: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 {
        return delay;
    }
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let random =
        u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as f64 / u32::MAX as f64;
    let factor = 1.0 - jitter.min(0.99) * random;
    Duration::from_millis(((delay.as_millis() as f64) * factor).max(1.0) as u64)
}

/// Why a publish did not get a positive confirm.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the broker is not connected")]
    Unavailable,
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("the message was unroutable: {0}")]
    Unroutable(String),
    #[error("no confirm within {0:?}")]
    Timeout(Duration),
    #[error("broker error: {0}")]
    Broker(#[source] lapin::Error),
    #[error("cannot encode the message: {0}")]
    Encode(#[source] serde_json::Error),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A queue operation other than publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("the delivery came from a connection that has since been replaced")]
    Stale,
    #[error("the broker is not reachable")]
    Unreachable,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A message in the dead-letter queue.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message_id: String,
    /// Attempts made before it was dead-lettered.
    pub attempts: u32,
    /// One reason per failed attempt, oldest first.
    pub reasons: Vec<String>,
    /// The decoded work item, when the body is one.
    pub item: Option<WorkItem>,
    pub body: Vec<u8>,
}

/// What to act on in the dead-letter queue.
#[derive(Debug, Clone, Copy)]
pub enum Select<'a> {
    One(&'a str),
    All,
}

impl Select<'_> {
    pub(crate) fn matches(&self, message_id: &str) -> bool {
        match self {
            Select::One(id) => *id == message_id,
            Select::All => true,
        }
    }
}

/// What [`Delivery::retry_later`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retried {
    Scheduled { attempts: u32, delay: Duration },
    DeadLettered { attempts: u32 },
}

/// The queue, on one of its backends. Cheap to clone.
#[derive(Clone)]
pub enum Broker {
    Rabbit(RabbitBroker),
    Embedded(Embedded),
}

/// The embedded backend with the retry schedule it applies.
#[derive(Clone)]
pub struct Embedded {
    queue: EmbeddedQueue,
    topology: Topology,
}

impl Broker {
    /// Starts the RabbitMQ backend; its supervisor runs until `stop` is cancelled.
    pub fn start_rabbit(
        config: &AmqpConfig,
        retry_delays: Vec<Duration>,
        stop: CancellationToken,
    ) -> Broker {
        Broker::Rabbit(RabbitBroker::start(config, retry_delays, stop))
    }

    /// Opens the embedded backend in `dir`.
    pub fn open_embedded(
        dir: &Path,
        retry_delays: Vec<Duration>,
        lease: Duration,
    ) -> Result<Broker, StorageError> {
        Ok(Broker::Embedded(Embedded {
            queue: EmbeddedQueue::open(dir, lease)?,
            topology: Topology {
                prefix: "embedded".into(),
                retry_delays,
            },
        }))
    }

    /// What this backend is, for logs: never credentials.
    pub fn describe(&self) -> String {
        match self {
            Broker::Rabbit(rabbit) => format!("RabbitMQ (prefix `{}`)", rabbit.topology().prefix),
            Broker::Embedded(embedded) => {
                format!("embedded queue at `{}`", embedded.queue.path().display())
            }
        }
    }

    pub fn topology(&self) -> &Topology {
        match self {
            Broker::Rabbit(rabbit) => rabbit.topology(),
            Broker::Embedded(embedded) => &embedded.topology,
        }
    }

    /// Whether publishing can succeed right now.
    pub fn is_connected(&self) -> bool {
        match self {
            Broker::Rabbit(rabbit) => rabbit.is_connected(),
            Broker::Embedded(_) => true,
        }
    }

    /// Waits until connected, or returns `false` when `stop` fires first.
    pub async fn wait_connected(&self, stop: &CancellationToken) -> bool {
        match self {
            Broker::Rabbit(rabbit) => rabbit.wait_connected(stop).await,
            Broker::Embedded(_) => !stop.is_cancelled(),
        }
    }

    /// Queues a notification for the workers; `Ok` only once it is durable.
    pub async fn publish_notification(&self, item: &WorkItem) -> Result<(), PublishError> {
        match self {
            Broker::Rabbit(rabbit) => rabbit.publish_notification(item).await,
            Broker::Embedded(embedded) => {
                let body = Envelope::encode(item).map_err(PublishError::Encode)?;
                embedded
                    .queue
                    .publish(Lane::Work, &item.id, &body, 0, &[], Duration::ZERO)
                    .await?;
                Ok(())
            }
        }
    }

    /// Queues a usage record (its JSON wire form) for the workers; `Ok` only once durable.
    pub async fn publish_usage(&self, body: &[u8], message_id: &str) -> Result<(), PublishError> {
        match self {
            Broker::Rabbit(rabbit) => rabbit.publish_usage(body, message_id).await,
            Broker::Embedded(embedded) => {
                embedded
                    .queue
                    .publish(Lane::Work, message_id, body, 0, &[], Duration::ZERO)
                    .await?;
                Ok(())
            }
        }
    }

    /// Publishes a decision event (RabbitMQ: the events exchange; embedded: the audit table).
    pub async fn publish_event(
        &self,
        routing_key: &str,
        body: &[u8],
        message_id: &str,
    ) -> Result<(), PublishError> {
        match self {
            Broker::Rabbit(rabbit) => rabbit.publish_event(routing_key, body, message_id).await,
            Broker::Embedded(embedded) => {
                Ok(embedded.queue.record_event(routing_key, body).await?)
            }
        }
    }

    /// Opens a consumer of the work queue with `prefetch` deliveries in flight at most.
    /// Returns `None` when `stop` fires before it is open.
    pub async fn consume(&self, prefetch: u16, stop: &CancellationToken) -> Option<Deliveries> {
        match self {
            Broker::Rabbit(rabbit) => rabbit.consume(prefetch, stop).await.map(Deliveries::Rabbit),
            Broker::Embedded(embedded) => {
                if stop.is_cancelled() {
                    return None;
                }
                Some(Deliveries::Embedded(EmbeddedDeliveries {
                    embedded: embedded.clone(),
                    permits: Arc::new(Semaphore::new(usize::from(prefetch.max(1)))),
                    buffer: std::collections::VecDeque::new(),
                }))
            }
        }
    }

    /// Messages waiting in the work queue (ready ones for RabbitMQ; all for embedded).
    pub async fn work_depth(&self) -> Result<u64, QueueError> {
        match self {
            Broker::Rabbit(rabbit) => Ok(u64::from(
                rabbit.queue_depth(&rabbit.topology().work_queue()).await?,
            )),
            Broker::Embedded(embedded) => Ok(embedded.queue.depth(Lane::Work).await?),
        }
    }

    /// Enqueue time (Unix ms) of the oldest message in the work queue: the embedded
    /// queue knows it; RabbitMQ does not tell (`None`).
    pub async fn oldest_pending_ms(&self) -> Result<Option<i64>, QueueError> {
        match self {
            Broker::Rabbit(_) => Ok(None),
            Broker::Embedded(embedded) => Ok(embedded.queue.oldest_enqueued_ms().await?),
        }
    }

    pub fn is_embedded(&self) -> bool {
        matches!(self, Broker::Embedded(_))
    }

    /// Messages in the dead letters.
    pub async fn dead_depth(&self) -> Result<u64, QueueError> {
        match self {
            Broker::Rabbit(rabbit) => Ok(u64::from(
                rabbit.queue_depth(&rabbit.topology().dead_queue()).await?,
            )),
            Broker::Embedded(embedded) => Ok(embedded.queue.depth(Lane::Dead).await?),
        }
    }

    /// Reads up to `limit` dead letters without removing them.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        match self {
            Broker::Rabbit(rabbit) => rabbit.dead_letters(limit).await,
            Broker::Embedded(embedded) => Ok(embedded
                .queue
                .dead_letters(limit)
                .await?
                .into_iter()
                .map(|stored| DeadLetter {
                    item: decode_item(&stored.body).ok(),
                    message_id: stored.message_id,
                    attempts: stored.attempts,
                    reasons: stored.reasons,
                    body: stored.body,
                })
                .collect()),
        }
    }

    /// Replays (`replay`) or purges dead letters; `progress(done, total)` after each.
    pub async fn settle_dead_letters(
        &self,
        select: Select<'_>,
        replay: bool,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<usize, QueueError> {
        match self {
            Broker::Rabbit(rabbit) => rabbit.settle_dead_letters(select, replay, progress).await,
            Broker::Embedded(embedded) => {
                let id = match select {
                    Select::One(id) => Some(id),
                    Select::All => None,
                };
                let done = embedded.queue.settle_dead(id, replay).await?;
                progress(done, done);
                Ok(done)
            }
        }
    }

    /// Removes this topology's queues and exchanges, or empties the embedded database
    /// (tests and tooling).
    pub async fn delete_topology(&self) -> Result<(), QueueError> {
        match self {
            Broker::Rabbit(rabbit) => rabbit.delete_topology().await,
            Broker::Embedded(embedded) => Ok(embedded.queue.purge_everything().await?),
        }
    }
}

/// What the work queue carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A notification: look at this allocation (the versioned [`Envelope`]).
    Allocation(WorkItem),
    /// A usage record (`schemas/usage-record.v1.schema.json`), as other systems publish it.
    Usage(crate::usage::UsageRecord),
}

/// Envelopes carry a version tag `v`; usage records never do. Notifications, the common
/// case, are parsed once.
pub(crate) fn decode_message(body: &[u8]) -> Result<Message, String> {
    let envelope_error = match serde_json::from_slice::<Envelope>(body) {
        Ok(Envelope::V1(item)) => return Ok(Message::Allocation(item)),
        Err(error) => error,
    };
    #[derive(serde::Deserialize)]
    struct Probe {
        v: Option<serde::de::IgnoredAny>,
    }
    match serde_json::from_slice::<Probe>(body) {
        Ok(Probe { v: None }) => crate::usage::UsageRecord::decode(body).map(Message::Usage),
        _ => Err(format!("undecodable message: {envelope_error}")),
    }
}

fn decode_item(body: &[u8]) -> Result<WorkItem, String> {
    match decode_message(body)? {
        Message::Allocation(item) => Ok(item),
        Message::Usage(_) => Err("a usage record".into()),
    }
}

/// The deliveries of one consumer.
pub enum Deliveries {
    Rabbit(RabbitDeliveries),
    Embedded(EmbeddedDeliveries),
}

/// A consumer of the embedded queue: leases messages as prefetch permits allow.
pub struct EmbeddedDeliveries {
    embedded: Embedded,
    permits: Arc<Semaphore>,
    buffer: std::collections::VecDeque<(Claimed, tokio::sync::OwnedSemaphorePermit)>,
}

/// How often an idle embedded consumer looks for work published by other processes.
const EMBEDDED_POLL: Duration = Duration::from_millis(250);

impl Deliveries {
    /// The next delivery; `None` when the consumer ended (RabbitMQ connection lost: the
    /// caller opens a new one).
    pub async fn next(&mut self) -> Option<Delivery> {
        match self {
            Deliveries::Rabbit(rabbit) => rabbit.next().await.map(Delivery::from_rabbit),
            Deliveries::Embedded(consumer) => consumer.next().await,
        }
    }
}

impl EmbeddedDeliveries {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            if let Some((claimed, permit)) = self.buffer.pop_front() {
                return Some(Delivery::from_embedded(
                    self.embedded.clone(),
                    claimed,
                    permit,
                ));
            }
            let first = self.permits.clone().acquire_owned().await.ok()?;
            let mut permits = vec![first];
            while permits.len() < 64 {
                match self.permits.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            match self.embedded.queue.claim(permits.len()).await {
                Ok(claimed) if !claimed.is_empty() => {
                    // Unused permits are released as the rest of `permits` drops.
                    self.buffer.extend(claimed.into_iter().zip(permits));
                }
                Ok(_) => {
                    drop(permits);
                    self.embedded.queue.wait_for_work(EMBEDDED_POLL).await;
                }
                Err(error) => {
                    tracing::warn!(error = %error, "cannot read the embedded queue");
                    drop(permits);
                    tokio::time::sleep(EMBEDDED_POLL).await;
                }
            }
        }
    }
}

/// One delivery from the work queue.
pub struct Delivery {
    /// The decoded message, or why it could not be decoded.
    pub item: Result<Message, String>,
    /// Attempts made before this one.
    pub attempts: u32,
    /// Reasons of the earlier failed attempts.
    pub reasons: Vec<String>,
    pub redelivered: bool,
    pub message_id: String,
    settle: Settle,
}

enum Settle {
    Rabbit(Box<RabbitDelivery>),
    Embedded {
        embedded: Embedded,
        claimed: Claimed,
        // Held until settled: it bounds the deliveries in flight.
        _permit: tokio::sync::OwnedSemaphorePermit,
    },
}

impl Delivery {
    fn from_rabbit(delivery: RabbitDelivery) -> Delivery {
        Delivery {
            item: delivery.item.clone(),
            attempts: delivery.attempts,
            reasons: delivery.reasons.clone(),
            redelivered: delivery.redelivered,
            message_id: delivery.message_id.clone(),
            settle: Settle::Rabbit(Box::new(delivery)),
        }
    }

    fn from_embedded(
        embedded: Embedded,
        claimed: Claimed,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Delivery {
        Delivery {
            item: decode_message(&claimed.body),
            attempts: claimed.attempts,
            reasons: claimed.reasons.clone(),
            redelivered: claimed.redelivered,
            message_id: claimed.message_id.clone(),
            settle: Settle::Embedded {
                embedded,
                claimed,
                _permit: permit,
            },
        }
    }

    /// Done: remove it from the queue.
    pub async fn ack(self) -> Result<(), QueueError> {
        match self.settle {
            Settle::Rabbit(delivery) => delivery.ack().await,
            Settle::Embedded {
                embedded, claimed, ..
            } => Ok(embedded.queue.ack(claimed.id, claimed.token).await?),
        }
    }

    /// Schedules another attempt after the tier's delay (raised to cover `retry_after`,
    /// shortened by up to `jitter`), or dead-letters it when `max_attempts` are used up.
    pub async fn retry_later(
        self,
        reason: &str,
        max_attempts: u32,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Result<Retried, QueueError> {
        match self.settle {
            Settle::Rabbit(delivery) => {
                delivery
                    .retry_later(reason, max_attempts, retry_after, jitter)
                    .await
            }
            Settle::Embedded {
                embedded, claimed, ..
            } => {
                let attempts = self.attempts + 1;
                let mut reasons = self.reasons;
                reasons.push(reason.chars().take(500).collect());
                if attempts >= max_attempts {
                    embedded
                        .queue
                        .reschedule(&claimed, Lane::Dead, attempts, &reasons, Duration::ZERO)
                        .await?;
                    return Ok(Retried::DeadLettered { attempts });
                }
                let delay = jittered(
                    embedded.topology.delay_covering(attempts, retry_after),
                    jitter,
                );
                embedded
                    .queue
                    .reschedule(&claimed, Lane::Work, attempts, &reasons, delay)
                    .await?;
                Ok(Retried::Scheduled { attempts, delay })
            }
        }
    }

    /// Moves it to the dead letters with every attempt's reason.
    pub async fn dead_letter(self, reason: &str) -> Result<(), QueueError> {
        match self.settle {
            Settle::Rabbit(delivery) => delivery.dead_letter(reason).await,
            Settle::Embedded {
                embedded, claimed, ..
            } => {
                let mut reasons = self.reasons;
                reasons.push(reason.chars().take(500).collect());
                Ok(embedded
                    .queue
                    .reschedule(
                        &claimed,
                        Lane::Dead,
                        self.attempts + 1,
                        &reasons,
                        Duration::ZERO,
                    )
                    .await?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_queue_tells_notifications_from_usage_records() {
        let envelope = br#"{"v":"1","id":"msg_1","source":"relay","event_type":"allocation.created","resource_uuid":"a1916bd53fd04b1ab1a4e700c926607b","received_at_ms":1}"#;
        assert!(
            matches!(decode_message(envelope), Ok(Message::Allocation(item)) if item.id == "msg_1")
        );
        let record =
            br#"{"backend_id":"b","component":"cpu_k_hours","amount":"1","month":"2026-11"}"#;
        assert!(
            matches!(decode_message(record), Ok(Message::Usage(r)) if r.component == "cpu_k_hours")
        );
        let bad_record =
            br#"{"backend_id":"b","component":"cpu_k_hours","amount":"-1","month":"2026-11"}"#;
        assert!(
            decode_message(bad_record)
                .is_err_and(|e| e.starts_with("invalid usage record: amount"))
        );
        for unknown in [&br#"{"v":"9","id":"x"}"#[..], b"not json", b"[1]"] {
            assert!(
                decode_message(unknown).is_err_and(|e| e.starts_with("undecodable message")),
                "{}",
                String::from_utf8_lossy(unknown)
            );
        }
    }
}
