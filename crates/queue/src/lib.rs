//! The durable queue between receivers and workers: one [`Broker`] over a [`Backend`]
//! trait with two implementations, RabbitMQ ([`rabbitmq`], for many receivers and workers
//! on a cluster) and an embedded SQLite queue ([`embedded`], the default on one machine).
//!
//! The queue carries opaque bodies tagged with their [`Kind`]; what a body means (the
//! versioned work envelope, a usage record) is the service's business. This crate is the
//! only one that names `lapin` and `rusqlite`.
//!
//! Both backends keep the same semantics, which the rest of the product relies on:
//! INVARIANT: [`Broker::publish_work`] returns `Ok` only once the message is durable
//! (RabbitMQ: the publisher confirm of a persistent message on a quorum queue; embedded:
//! the committed, fsync'd transaction).
//! INVARIANT: delivery is at least once: a delivery that is not settled (the worker died,
//! the connection dropped, the lease expired) is delivered again, marked `redelivered`.
//! INVARIANT: a delivery is settled exactly once ([`Delivery`] methods take `self`); a
//! retry or dead-letter copy is durable before the original is removed.
//! INVARIANT: retries wait the configured delay tiers (with jitter and `Retry-After`);
//! after `max_attempts` the message goes to the dead letters with every attempt's reason.
//! The schedule is computed once, in [`Delivery::retry_later`]; a backend only moves a
//! message where it is told.
//! INVARIANT: a message keeps its [`Kind`] through retries, dead letters and replays.

pub mod embedded;
pub mod rabbitmq;

use std::any::Any;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use puhuri_auth::Secret;
use tokio_util::sync::CancellationToken;

use embedded::StorageError;
use rabbitmq::RabbitBroker;

pub use rabbitmq::{HEADER_ATTEMPTS, HEADER_KIND, HEADER_REASONS, RawMessage};

/// How to reach RabbitMQ and name what the service declares there.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// The cluster's nodes, tried in turn (see [`rabbitmq`]); one URL for a single node or a
    /// load balancer. Each holds credentials, so each is kept as a secret. Never empty.
    pub urls: Vec<Secret>,
    pub prefix: String,
    pub publish_channels: usize,
    pub confirm_timeout: Duration,
    /// Declare the topology at connect (`true`), or only check that an operator
    /// pre-declared it (passive declarations, no `configure` permission needed).
    pub declare: bool,
}

/// What a work message is. On RabbitMQ it is the routing key of the first publish and
/// the `x-puhuri-kind` header of every copy after; in the embedded queue a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A notification about an allocation (the service's versioned work envelope).
    Allocation,
    /// A usage record, as the provider's accounting publishes it.
    Usage,
}

impl Kind {
    /// The routing key on the work exchange, and the stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Allocation => "allocation",
            Kind::Usage => "usage",
        }
    }

    pub fn parse(value: &str) -> Option<Kind> {
        match value {
            "allocation" => Some(Kind::Allocation),
            "usage" => Some(Kind::Usage),
            _ => None,
        }
    }

    /// Every kind, for bindings.
    pub const ALL: [Kind; 2] = [Kind::Allocation, Kind::Usage];
}

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
    #[error("cannot encode the message")]
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
    /// What it is, when known.
    pub kind: Option<Kind>,
    /// Attempts made before it was dead-lettered.
    pub attempts: u32,
    /// The reasons of the last failed attempts, oldest first: of every attempt unless
    /// they exceed [`REASONS_BYTES`] together, then of the newest that fit.
    pub reasons: Vec<String>,
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

/// Reports progress of a dead-letter replay or purge: `(done, total)`.
pub type Progress<'a> = &'a mut (dyn FnMut(usize, usize) + Send);

/// A claim on a key, held by one process at a time (see [`Broker::claim`]).
#[async_trait]
pub trait Claim: Send {
    /// Gives the claim up.
    async fn release(self: Box<Self>);
}

/// A held claim.
pub type ClaimGuard = Box<dyn Claim>;

/// A queue backend. The service holds it as a [`Broker`].
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// What this backend is, for logs: never credentials.
    fn describe(&self) -> String;
    fn topology(&self) -> &Topology;
    /// Whether publishing can succeed right now.
    fn is_connected(&self) -> bool;
    /// Publishes the broker refused (nack) since start; each was published again while the
    /// confirm timeout allowed. The embedded queue has none.
    fn publish_nacks(&self) -> u64 {
        0
    }
    /// Whether the backend is the embedded queue (it knows its oldest message's age).
    fn is_embedded(&self) -> bool;
    /// The backend itself, for backend-specific tooling.
    fn as_any(&self) -> &dyn Any;
    /// Waits until connected, or returns `false` when `stop` fires first.
    async fn wait_connected(&self, stop: &CancellationToken) -> bool;
    /// Queues a work message; `Ok` only once it is durable.
    async fn publish_work(
        &self,
        kind: Kind,
        message_id: &str,
        body: &[u8],
    ) -> Result<(), PublishError>;
    /// Publishes an event (RabbitMQ: the events exchange; embedded: the audit table).
    async fn publish_event(
        &self,
        routing_key: &str,
        body: &[u8],
        message_id: &str,
    ) -> Result<(), PublishError>;
    /// Opens a consumer of the work queue with `prefetch` deliveries in flight at most;
    /// `None` when `stop` fires before it is open.
    async fn consume(&self, prefetch: u16, stop: &CancellationToken) -> Option<Deliveries>;
    /// Messages waiting in the work queue (ready ones for RabbitMQ; all for embedded).
    async fn work_depth(&self) -> Result<u64, QueueError>;
    /// Messages in the dead letters.
    async fn dead_depth(&self) -> Result<u64, QueueError>;
    /// Enqueue time (Unix ms) of the oldest work message, where the backend knows it.
    async fn oldest_pending_ms(&self) -> Result<Option<i64>, QueueError>;
    /// Reads up to `limit` dead letters without removing them.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError>;
    /// Replays (`replay`) or purges dead letters, reporting progress after each.
    async fn settle_dead_letters(
        &self,
        select: Select<'_>,
        replay: bool,
        progress: Progress<'_>,
    ) -> Result<usize, QueueError>;
    /// Removes this topology's queues and exchanges, or empties the embedded database.
    async fn delete_topology(&self) -> Result<(), QueueError>;
    /// Claims `key` against every other process on this queue (see [`Broker::claim`]).
    async fn claim(&self, key: &str, ttl: Duration) -> Result<Option<ClaimGuard>, QueueError>;
}

/// The deliveries of one consumer.
#[async_trait]
pub trait Consumer: Send {
    /// The next delivery; `None` when the consumer ended (RabbitMQ connection lost: the
    /// caller opens a new one).
    async fn next(&mut self) -> Option<Delivery>;
}

/// A consumer, boxed.
pub type Deliveries = Box<dyn Consumer>;

/// Where a backend moves a delivery it settles without acking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Back to the work queue after `wait` (`tier` names the RabbitMQ delay queue).
    Retry { tier: Duration, wait: Duration },
    /// To the dead letters.
    Dead,
}

/// An event that must be published before a delivery's ack (a decision event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub routing_key: String,
    pub body: Vec<u8>,
    /// A stable id: every publish of the same event carries it, so consumers de-duplicate.
    pub message_id: String,
}

/// How a backend settles one delivery.
#[async_trait]
pub trait Settle: Send {
    /// Publishes `event` so that the ack that follows is never without it: RabbitMQ
    /// publishes it now and returns after its confirm; the embedded queue keeps it and
    /// records it in the same transaction as the ack. An error leaves the delivery
    /// unsettled (it can still be retried or dead-lettered).
    async fn stage_event(&mut self, event: Event) -> Result<(), QueueError>;
    /// Removes it from the queue.
    async fn ack(self: Box<Self>) -> Result<(), QueueError>;
    /// Puts it back in the work queue unchanged, for another consumer or a later
    /// delivery (RabbitMQ: `basic.nack` with requeue; embedded: visible again at once),
    /// with this attempt history.
    async fn release(self: Box<Self>, attempts: u32, reasons: &[String]) -> Result<(), QueueError>;
    /// Stores a durable copy at `to` with this attempt history, then removes the original.
    async fn move_to(
        self: Box<Self>,
        to: Destination,
        attempts: u32,
        reasons: &[String],
    ) -> Result<(), QueueError>;
}

/// The longest reason kept per attempt, in characters.
pub const REASON_CHARS: usize = 500;

/// The most bytes of attempt reasons one message carries: the newest reasons that fit (the
/// attempt count is kept whole). On RabbitMQ they travel in the message's header frame, which
/// AMQP cannot split, so they stay well inside the 16 KiB frames the connections ask for,
/// whatever `worker.max_attempts` is.
pub const REASONS_BYTES: usize = 8 * 1024;

/// `reasons` with `reason` (cut to [`REASON_CHARS`]) after them, less the oldest ones that do
/// not fit in [`REASONS_BYTES`]. The newest always fits: 500 characters are at most 2,000
/// bytes.
fn with_reason(mut reasons: Vec<String>, reason: &str) -> Vec<String> {
    reasons.push(reason.chars().take(REASON_CHARS).collect());
    let mut total: usize = reasons.iter().map(String::len).sum();
    let mut dropped = 0;
    while total > REASONS_BYTES && dropped + 1 < reasons.len() {
        total -= reasons[dropped].len();
        dropped += 1;
    }
    reasons.drain(..dropped);
    reasons
}

/// One delivery from the work queue, on either backend.
pub struct Delivery {
    /// What it is, when known (`None`: a routing key or header this version does not know).
    pub kind: Option<Kind>,
    pub body: Vec<u8>,
    /// Attempts made before this one.
    pub attempts: u32,
    /// Reasons of the earlier failed attempts.
    pub reasons: Vec<String>,
    pub redelivered: bool,
    pub message_id: String,
    topology: Topology,
    settle: Box<dyn Settle>,
}

impl Delivery {
    /// A delivery of a backend; `topology` gives the retry schedule.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kind: Option<Kind>,
        body: Vec<u8>,
        attempts: u32,
        reasons: Vec<String>,
        redelivered: bool,
        message_id: String,
        topology: Topology,
        settle: Box<dyn Settle>,
    ) -> Delivery {
        Delivery {
            kind,
            body,
            attempts,
            reasons,
            redelivered,
            message_id,
            topology,
            settle,
        }
    }

    /// Done: remove it from the queue.
    pub async fn ack(self) -> Result<(), QueueError> {
        self.settle.ack().await
    }

    /// Publishes an event that the ack must not go without (see [`Settle::stage_event`]):
    /// after `Ok`, [`Delivery::ack`] removes the delivery only with the event published
    /// (RabbitMQ: confirmed before; embedded: in the ack's transaction). After an error
    /// the delivery can still be retried or dead-lettered.
    pub async fn stage_event(&mut self, event: Event) -> Result<(), QueueError> {
        self.settle.stage_event(event).await
    }

    /// Schedules another attempt, or dead-letters it when `max_attempts` are used up.
    ///
    /// The delay is the attempt's tier, or the first longer tier that covers the
    /// server's `retry_after` (bounded by the last tier), shortened by up to `jitter` (a
    /// fraction) at random so that failures that happened together are not retried
    /// together. The copy is durable before the original is removed.
    pub async fn retry_later(
        self,
        reason: &str,
        max_attempts: u32,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Result<Retried, QueueError> {
        let attempts = self.attempts + 1;
        let reasons = with_reason(self.reasons, reason);
        if attempts >= max_attempts {
            self.settle
                .move_to(Destination::Dead, attempts, &reasons)
                .await?;
            return Ok(Retried::DeadLettered { attempts });
        }
        let tier = self.topology.delay_covering(attempts, retry_after);
        let wait = jittered(tier, jitter);
        self.settle
            .move_to(Destination::Retry { tier, wait }, attempts, &reasons)
            .await?;
        Ok(Retried::Scheduled {
            attempts,
            delay: wait,
        })
    }

    /// Not processed: back to the work queue as it came, counting no attempt (the
    /// service could not work at all, e.g. Puhuri Core refused its credentials).
    pub async fn release(self) -> Result<(), QueueError> {
        self.settle.release(self.attempts, &self.reasons).await
    }

    /// Moves it to the dead letters with every attempt's reason.
    pub async fn dead_letter(self, reason: &str) -> Result<(), QueueError> {
        let reasons = with_reason(self.reasons, reason);
        self.settle
            .move_to(Destination::Dead, self.attempts + 1, &reasons)
            .await
    }
}

/// The queue, on one of its backends. Cheap to clone.
#[derive(Clone)]
pub struct Broker(Arc<dyn Backend>);

impl Broker {
    /// A broker over any backend.
    pub fn new(backend: impl Backend) -> Broker {
        Broker(Arc::new(backend))
    }

    /// Starts the RabbitMQ backend; its supervisor runs until `stop` is cancelled.
    pub fn start_rabbit(
        config: &AmqpConfig,
        retry_delays: Vec<Duration>,
        stop: CancellationToken,
    ) -> Broker {
        Broker::new(RabbitBroker::start(config, retry_delays, stop))
    }

    /// Opens the embedded backend in `dir`.
    pub fn open_embedded(
        dir: &Path,
        retry_delays: Vec<Duration>,
        lease: Duration,
    ) -> Result<Broker, StorageError> {
        Ok(Broker::new(embedded::Embedded::open(
            dir,
            retry_delays,
            lease,
        )?))
    }

    /// The RabbitMQ backend, for tooling that reads events or queues directly.
    pub fn as_rabbit(&self) -> Option<&RabbitBroker> {
        self.0.as_any().downcast_ref::<RabbitBroker>()
    }

    /// The embedded backend, for tooling that reads its recorded events.
    pub fn as_embedded(&self) -> Option<&embedded::Embedded> {
        self.0.as_any().downcast_ref::<embedded::Embedded>()
    }

    pub fn describe(&self) -> String {
        self.0.describe()
    }

    pub fn topology(&self) -> &Topology {
        self.0.topology()
    }

    pub fn is_connected(&self) -> bool {
        self.0.is_connected()
    }

    pub fn is_embedded(&self) -> bool {
        self.0.is_embedded()
    }

    /// Publishes the broker refused (nack) since start (see [`Backend::publish_nacks`]).
    pub fn publish_nacks(&self) -> u64 {
        self.0.publish_nacks()
    }

    pub async fn wait_connected(&self, stop: &CancellationToken) -> bool {
        self.0.wait_connected(stop).await
    }

    /// Queues a work message; `Ok` only once it is durable.
    pub async fn publish_work(
        &self,
        kind: Kind,
        message_id: &str,
        body: &[u8],
    ) -> Result<(), PublishError> {
        self.0.publish_work(kind, message_id, body).await
    }

    /// Publishes an event (RabbitMQ: the events exchange; embedded: the audit table).
    pub async fn publish_event(
        &self,
        routing_key: &str,
        body: &[u8],
        message_id: &str,
    ) -> Result<(), PublishError> {
        self.0.publish_event(routing_key, body, message_id).await
    }

    pub async fn consume(&self, prefetch: u16, stop: &CancellationToken) -> Option<Deliveries> {
        self.0.consume(prefetch, stop).await
    }

    pub async fn work_depth(&self) -> Result<u64, QueueError> {
        self.0.work_depth().await
    }

    pub async fn oldest_pending_ms(&self) -> Result<Option<i64>, QueueError> {
        self.0.oldest_pending_ms().await
    }

    pub async fn dead_depth(&self) -> Result<u64, QueueError> {
        self.0.dead_depth().await
    }

    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.0.dead_letters(limit).await
    }

    /// Replays (`replay`) or purges dead letters; `progress(done, total)` after each.
    pub async fn settle_dead_letters(
        &self,
        select: Select<'_>,
        replay: bool,
        mut progress: impl FnMut(usize, usize) + Send,
    ) -> Result<usize, QueueError> {
        self.0
            .settle_dead_letters(select, replay, &mut progress)
            .await
    }

    pub async fn delete_topology(&self) -> Result<(), QueueError> {
        self.0.delete_topology().await
    }

    /// Claims `key` against every other process on this queue: `Ok(None)` while another
    /// process holds it. RabbitMQ: an exclusive queue `{prefix}.claim.{key}`, which the
    /// broker refuses (`RESOURCE_LOCKED`) to other connections and drops with its
    /// connection (needs `configure` permission on those names); embedded: a row of
    /// the `claims` table that expires after `ttl`. Within one process (one connection)
    /// a claim does not exclude: callers serialize their own tasks.
    pub async fn claim(&self, key: &str, ttl: Duration) -> Result<Option<ClaimGuard>, QueueError> {
        self.0.claim(key, ttl).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_keep_the_newest_that_fit_and_always_the_last() {
        // 500 four-byte characters: the largest reason, 2,000 bytes.
        let wide = |n: usize| format!("{n:03}{}", "\u{1D11E}".repeat(600));
        let mut reasons = Vec::new();
        for n in 0..100 {
            reasons = with_reason(reasons, &wide(n));
            assert!(reasons.iter().map(String::len).sum::<usize>() <= REASONS_BYTES);
            assert!(
                reasons
                    .last()
                    .is_some_and(|r| r.starts_with(&format!("{n:03}")))
            );
        }
        let kept: Vec<&str> = reasons.iter().map(|r| &r[..3]).collect();
        assert_eq!(kept, ["096", "097", "098", "099"]);
        assert!(reasons.iter().all(|r| r.chars().count() == REASON_CHARS));
        // Short reasons are all kept.
        let short = (0..100).fold(Vec::new(), |kept, n| {
            with_reason(kept, &format!("HTTP 503 ({n})"))
        });
        assert_eq!(short.len(), 100);
        assert_eq!(short[0], "HTTP 503 (0)");
    }
}
