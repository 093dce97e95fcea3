//! The RabbitMQ backend of the queue, through lapin: for many receivers and workers on a
//! cluster.
//!
//! Topology (all names start with the configured prefix `P`; see `ARCHITECTURE.md`):
//! - `P.work` (direct exchange) → `P.work` (quorum queue), routing key `allocation`.
//!   The queue declares `x-delivery-limit` and dead-letters to `P.dead` with
//!   `x-dead-letter-strategy = at-least-once` and `x-overflow = reject-publish`
//!   explicitly, so RabbitMQ 3.10 through 4.x behave alike (4.x would otherwise apply a
//!   default limit of 20 and drop at the limit).
//! - `P.retry` (direct) → one quorum queue per delay tier, `P.retry.<ms>ms`, each with
//!   `x-message-ttl` and dead-lettering back to `P.work` (per-queue TTL, so a long delay
//!   never blocks a short one; no delayed-message plugin).
//! - `P.dead` (fanout) → `P.dead` (quorum): messages that can never succeed, with every
//!   attempt's reason in the `x-puhuri-reasons` header.
//! - `P.events` (topic): decisions go out here for the provider's other systems.
//!
//! Nodes (`amqp.urls`): each process starts at a random node of the list, so that many
//! receivers and workers spread over the cluster, and after losing its connection tries
//! the next node in list order, each node once per round; when no node of a round
//! answers it backs off (100 ms doubling to 5 s) and starts another round. The node in
//! use is logged without credentials. Any node serves every queue: a quorum queue's
//! leader may be on another node, and the broker routes to it.
//!
//! INVARIANT: [`Backend::publish_work`] returns `Ok` only after the broker's
//! publisher confirm (`ack`, not returned): the message is on disk on a quorum majority.
//! INVARIANT: publishing is not serialized behind a lock: a small set of confirm-mode
//! channels is shared round-robin and each publish awaits only its own confirm.
//! INVARIANT: a delivery is settled exactly once ([`RabbitDelivery`] methods take `self`); a
//! retry or dead-letter copy is confirmed before the original is acked.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use async_trait::async_trait;
use puhuri_auth::Secret;

use super::{
    AmqpConfig, Backend, Claim, ClaimGuard, Consumer, DeadLetter, Deliveries, Delivery,
    Destination, Event, Kind, Progress, PublishError, QueueError, Select, Settle, Topology,
};

/// Header: the message's [`Kind`], on every copy the service publishes (retries and
/// dead letters come back to the work queue under one routing key).
pub const HEADER_KIND: &str = "x-puhuri-kind";
/// Header: the number of attempts already made.
pub const HEADER_ATTEMPTS: &str = "x-puhuri-attempts";
/// Header: one reason per failed attempt.
pub const HEADER_REASONS: &str = "x-puhuri-reasons";
/// Delivery limit declared on the work queue: deliveries that crash or stall workers
/// this many times are dead-lettered by the broker itself.
pub const WORK_DELIVERY_LIMIT: i64 = 50;
/// Delivery limit declared on the dead-letter queue (see `declare_topology`).
pub const DEAD_DELIVERY_LIMIT: i64 = 1_000_000;

struct Session {
    connection: Connection,
    channels: Vec<Channel>,
    next: AtomicUsize,
    generation: u64,
    /// The index in `amqp.urls` of the node this connection goes to.
    node: usize,
}

impl Session {
    fn channel(&self) -> &Channel {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        &self.channels[index]
    }

    /// Whether the connection and its publishing channels are open.
    fn is_up(&self) -> bool {
        self.connection.status().connected() && self.channels.iter().all(|c| c.status().connected())
    }
}

struct Inner {
    urls: Vec<Secret>,
    /// The node the next connection attempt starts with.
    next_node: AtomicUsize,
    topology: Topology,
    publish_channels: usize,
    confirm_timeout: Duration,
    declare: bool,
    // Held only to clone the Arc, never across an await.
    session: RwLock<Option<Arc<Session>>>,
    generation: AtomicU64,
    connected: watch::Sender<bool>,
    /// Publishes nacked by the broker since start.
    nacks: watch::Sender<u64>,
}

/// A supervised broker connection: reconnects with backoff, redeclares the topology,
/// and hands out publishers and consumers. Cheap to clone.
#[derive(Clone)]
pub struct RabbitBroker {
    inner: Arc<Inner>,
}

impl RabbitBroker {
    /// Starts the supervisor; it runs until `stop` is cancelled. The broker may be
    /// unreachable: publishing then fails fast with [`PublishError::Unavailable`].
    pub fn start(
        config: &AmqpConfig,
        retry_delays: Vec<Duration>,
        stop: CancellationToken,
    ) -> RabbitBroker {
        let (connected, _) = watch::channel(false);
        let broker = RabbitBroker {
            inner: Arc::new(Inner {
                urls: config.urls.clone(),
                next_node: AtomicUsize::new(random_index(config.urls.len())),
                topology: Topology {
                    prefix: config.prefix.clone(),
                    retry_delays,
                },
                publish_channels: config.publish_channels,
                confirm_timeout: config.confirm_timeout,
                declare: config.declare,
                session: RwLock::new(None),
                generation: AtomicU64::new(0),
                connected,
                nacks: watch::Sender::new(0),
            }),
        };
        let supervisor = broker.clone();
        tokio::spawn(async move { supervisor.supervise(stop).await });
        broker
    }

    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// Whether a connection with declared topology is up right now.
    pub fn is_connected(&self) -> bool {
        self.session().is_some()
    }

    /// The node connected to right now, as its URL without credentials.
    pub fn connected_node(&self) -> Option<String> {
        let session = self.session()?;
        self.inner
            .urls
            .get(session.node)
            .map(|url| redacted(url.expose()))
    }

    /// Waits until connected, or returns `false` when `stop` fires first.
    pub async fn wait_connected(&self, stop: &CancellationToken) -> bool {
        let mut rx = self.inner.connected.subscribe();
        tokio::select! {
            result = rx.wait_for(|c| *c) => result.is_ok(),
            () = stop.cancelled() => false,
        }
    }

    fn session(&self) -> Option<Arc<Session>> {
        match self.inner.session.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_session(&self, session: Option<Arc<Session>>) {
        let connected = session.is_some();
        match self.inner.session.write() {
            Ok(mut guard) => *guard = session,
            Err(poisoned) => *poisoned.into_inner() = session,
        }
        self.inner.connected.send_replace(connected);
    }

    async fn supervise(self, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !stop.is_cancelled() {
            match self.connect().await {
                Ok(session) => {
                    backoff = Duration::from_millis(100);
                    let session = Arc::new(session);
                    tracing::info!(
                        generation = session.generation,
                        node = %self.node_name(session.node),
                        "broker connected, topology declared"
                    );
                    self.set_session(Some(session.clone()));
                    let mut events = session.connection.events_listener();
                    let mut tick = tokio::time::interval(Duration::from_millis(500));
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => break,
                            event = events.next() => match event {
                                // lapin reports a channel's error here too: a refused
                                // claim (RESOURCE_LOCKED) closes only its own channel.
                                // Reconnecting for it would drop every claim this process
                                // holds and requeue its unacked deliveries mid-write.
                                Some(lapin::Event::Error(error)) => {
                                    if !session.is_up() {
                                        tracing::warn!(error = %error, "broker connection failed");
                                        break;
                                    }
                                    tracing::debug!(error = %error, "a channel closed with an error; the connection stays");
                                }
                                Some(_) => {}
                                None => break,
                            },
                            _ = tick.tick() => {
                                if !session.is_up() {
                                    tracing::warn!("broker connection or channel closed");
                                    break;
                                }
                            }
                        }
                    }
                    self.set_session(None);
                    if stop.is_cancelled() {
                        let _ = session.connection.close(200, "shutting down".into()).await;
                        break;
                    }
                    let _ = session.connection.close(320, "reconnecting".into()).await;
                }
                Err(error) => {
                    tracing::warn!(error = %error, retry_in_ms = backoff.as_millis() as u64, "cannot connect to the broker");
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        self.set_session(None);
    }

    /// A node's URL without credentials, for log lines.
    fn node_name(&self, node: usize) -> String {
        self.inner
            .urls
            .get(node)
            .map(|url| redacted(url.expose()))
            .unwrap_or_default()
    }

    /// One round over the nodes, from the one after the last node used: the first that
    /// accepts the connection and the topology wins.
    async fn connect(&self) -> Result<Session, lapin::Error> {
        let count = self.inner.urls.len();
        let first = self.inner.next_node.load(Ordering::Relaxed);
        let mut failure = None;
        for step in 0..count {
            let node = (first + step) % count;
            match self.connect_node(node).await {
                Ok(session) => {
                    // A reconnect after this connection is lost starts with the next node.
                    self.inner
                        .next_node
                        .store((node + 1) % count, Ordering::Relaxed);
                    return Ok(session);
                }
                Err(error) => {
                    if count > 1 {
                        tracing::warn!(
                            node = %self.node_name(node),
                            error = %error,
                            "cannot connect to this broker node; trying the next"
                        );
                    }
                    failure = Some(error);
                }
            }
        }
        Err(failure.unwrap_or_else(|| {
            lapin::ErrorKind::IOError(Arc::new(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no broker URL is configured",
            )))
            .into()
        }))
    }

    async fn connect_node(&self, node: usize) -> Result<Session, lapin::Error> {
        let Some(url) = self.inner.urls.get(node) else {
            return Err(lapin::ErrorKind::IOError(Arc::new(std::io::Error::from(
                std::io::ErrorKind::InvalidInput,
            )))
            .into());
        };
        let connect = connect_to(url);
        let connection = match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(lapin::ErrorKind::IOError(Arc::new(std::io::Error::from(
                    std::io::ErrorKind::TimedOut,
                )))
                .into());
            }
        };
        let setup = connection.create_channel().await?;
        if self.inner.declare {
            declare_topology(&setup, &self.inner.topology).await?;
        } else {
            check_topology(&setup, &self.inner.topology).await?;
        }
        let _ = setup.close(200, "topology declared".into()).await;
        let mut channels = Vec::with_capacity(self.inner.publish_channels);
        for _ in 0..self.inner.publish_channels {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            channels.push(channel);
        }
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Session {
            connection,
            channels,
            next: AtomicUsize::new(0),
            generation,
            node,
        })
    }

    /// Publishes a work message; `Ok` only after the publisher confirm.
    async fn publish_kind(
        &self,
        kind: Kind,
        message_id: &str,
        body: &[u8],
        mut headers: FieldTable,
    ) -> Result<(), PublishError> {
        headers.insert(
            HEADER_KIND.into(),
            AMQPValue::LongString(kind.as_str().into()),
        );
        self.publish(
            &self.inner.topology.work_exchange(),
            kind.as_str(),
            body,
            work_properties(message_id, headers),
            true,
            false,
        )
        .await
    }

    /// Publishes a decision event on the events exchange. Nobody may be listening, so it
    /// is not mandatory, but it is confirmed. While the broker is not connected (a node
    /// went away and the next one is being tried) it waits for the connection, within the
    /// confirm timeout: the decision behind it is already written.
    async fn publish_to_events(
        &self,
        routing_key: &str,
        body: &[u8],
        message_id: &str,
    ) -> Result<(), PublishError> {
        self.publish(
            &self.inner.topology.events_exchange(),
            routing_key,
            body,
            work_properties(message_id, FieldTable::default()),
            false,
            true,
        )
        .await
    }

    /// Publishes and awaits the confirm. When the connection fails after the message
    /// was sent but before its confirm, the message is published again on the next
    /// connection, within the confirm timeout: every unconfirmed message is republished,
    /// and consumers tolerate the duplicate. A nack is published again too, after a pause
    /// that doubles from 25 ms to 400 ms, while the confirm timeout allows: a quorum queue
    /// refuses publishes for seconds after losing its leader's node, until it elects
    /// another. When not connected at all it answers at once (the sender retries), or with
    /// `await_connection` waits for the next connection within the confirm timeout.
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
        await_connection: bool,
    ) -> Result<(), PublishError> {
        let timeout = self.inner.confirm_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut session = match self.session() {
            Some(session) => session,
            None if await_connection => self
                .session_after(None, deadline)
                .await
                .ok_or(PublishError::Unavailable)?,
            None => return Err(PublishError::Unavailable),
        };
        let mut nacks = 0u32;
        loop {
            let channel = session.channel();
            let publish = async {
                channel
                    .basic_publish(
                        exchange.into(),
                        routing_key.into(),
                        BasicPublishOptions {
                            mandatory,
                            ..BasicPublishOptions::default()
                        },
                        body,
                        properties.clone(),
                    )
                    .await?
                    .await
            };
            let error = match tokio::time::timeout_at(deadline, publish).await {
                Err(_) => return Err(PublishError::Timeout(timeout)),
                Ok(Ok(Confirmation::Ack(None))) => return Ok(()),
                Ok(Ok(Confirmation::Ack(Some(returned)))) => {
                    return Err(PublishError::Unroutable(returned.reply_text.to_string()));
                }
                Ok(Ok(Confirmation::Nack(_))) => {
                    self.inner.nacks.send_modify(|n| *n += 1);
                    let pause = Duration::from_millis(25 << nacks.min(4));
                    nacks += 1;
                    if tokio::time::Instant::now() + pause >= deadline {
                        return Err(PublishError::Nacked);
                    }
                    tracing::debug!(
                        nacks,
                        retry_in_ms = pause.as_millis() as u64,
                        "publish nacked by the broker; publishing again"
                    );
                    tokio::time::sleep(pause).await;
                    // The connection may have been replaced meanwhile.
                    if let Some(current) = self.session() {
                        session = current;
                    }
                    continue;
                }
                Ok(Ok(Confirmation::NotRequested)) => return Err(PublishError::Nacked),
                Ok(Err(error)) => error,
            };
            // The channel or connection failed: wait for the supervisor's next session.
            match self.session_after(Some(session.generation), deadline).await {
                Some(current) => {
                    tracing::info!(error = %error, "publish interrupted by a reconnect; publishing again");
                    session = current;
                }
                None => return Err(PublishError::Broker(error)),
            }
        }
    }

    /// Waits until `deadline` for a session other than generation `not` (any session when
    /// `None`).
    async fn session_after(
        &self,
        not: Option<u64>,
        deadline: tokio::time::Instant,
    ) -> Option<Arc<Session>> {
        let next = async {
            let mut rx = self.inner.connected.subscribe();
            loop {
                if let Some(current) = self.session()
                    && Some(current.generation) != not
                {
                    return Some(current);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout_at(deadline, next).await.ok().flatten()
    }

    /// Opens a consumer on the work queue with the given prefetch, waiting for a
    /// connection first. Returns `None` when `stop` fires before that.
    async fn open_deliveries(
        &self,
        prefetch: u16,
        stop: &CancellationToken,
    ) -> Option<RabbitDeliveries> {
        loop {
            if !self.wait_connected(stop).await {
                return None;
            }
            let Some(session) = self.session() else {
                continue;
            };
            match self.open_consumer(&session, prefetch).await {
                Ok(consumer) => {
                    return Some(RabbitDeliveries {
                        consumer,
                        broker: self.clone(),
                        generation: session.generation,
                    });
                }
                Err(error) => {
                    tracing::warn!(error = %error, "cannot open a consumer; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return None,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }

    async fn open_consumer(
        &self,
        session: &Session,
        prefetch: u16,
    ) -> Result<lapin::Consumer, lapin::Error> {
        let channel = session.connection.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        channel
            .basic_consume(
                self.inner.topology.work_queue().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// Deletes every queue of this topology (tests and `purge` tooling).
    pub async fn delete_topology(&self) -> Result<(), QueueError> {
        let session = self.session().ok_or(PublishError::Unavailable)?;
        let channel = session.connection.create_channel().await?;
        for queue in self.inner.topology.queues() {
            channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
        }
        let topology = &self.inner.topology;
        for exchange in [
            topology.work_exchange(),
            topology.retry_exchange(),
            topology.dead_exchange(),
            topology.events_exchange(),
        ] {
            channel
                .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                .await?;
        }
        let _ = channel.close(200, "done".into()).await;
        Ok(())
    }

    /// Takes one message from a queue of this topology, acking it (tests and tooling).
    pub async fn take_one(&self, queue: &str) -> Result<Option<RawMessage>, QueueError> {
        let session = self.session().ok_or(PublishError::Unavailable)?;
        let channel = session.connection.create_channel().await?;
        let message = channel
            .basic_get(queue.into(), lapin::options::BasicGetOptions::default())
            .await?;
        let result = match message {
            Some(message) => {
                message
                    .delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await?;
                let headers = header_strings(&message.delivery.properties);
                Some(RawMessage {
                    message_id: message
                        .delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .map(|s| s.to_string())
                        .unwrap_or_default(),
                    body: message.delivery.data.clone(),
                    headers,
                })
            }
            None => None,
        };
        let _ = channel.close(200, "done".into()).await;
        Ok(result)
    }

    /// Messages ready in a queue of this topology.
    pub async fn queue_depth(&self, queue: &str) -> Result<u32, QueueError> {
        let session = self.session().ok_or(PublishError::Unavailable)?;
        let channel = session.connection.create_channel().await?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let _ = channel.close(200, "done".into()).await;
        Ok(declared.message_count())
    }

    /// Declares a queue bound to the events exchange with `binding` (e.g. `allocation.#`),
    /// for tests and tooling that read decision events with [`Broker::take_one`]. The
    /// queue is durable (events, persistent, survive a broker restart) and expires a
    /// minute after its last use.
    pub async fn bind_events_queue(&self, queue: &str, binding: &str) -> Result<(), QueueError> {
        let mut arguments = FieldTable::default();
        arguments.insert("x-expires".into(), AMQPValue::LongLongInt(60_000));
        self.declare_events_queue(queue, binding, arguments).await
    }
}

impl RabbitBroker {
    /// Like [`RabbitBroker::bind_events_queue`], but a quorum queue: its events survive the
    /// loss of a cluster node (a minority of them). It expires ten minutes after its last use.
    pub async fn bind_quorum_events_queue(
        &self,
        queue: &str,
        binding: &str,
    ) -> Result<(), QueueError> {
        let mut arguments = quorum_arguments();
        arguments.insert("x-expires".into(), AMQPValue::LongLongInt(600_000));
        self.declare_events_queue(queue, binding, arguments).await
    }

    /// Declares a durable queue with `arguments` and binds it to the events exchange.
    async fn declare_events_queue(
        &self,
        queue: &str,
        binding: &str,
        arguments: FieldTable,
    ) -> Result<(), QueueError> {
        let session = self.session().ok_or(PublishError::Unavailable)?;
        let channel = session.connection.create_channel().await?;
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await?;
        channel
            .queue_bind(
                queue.into(),
                self.inner.topology.events_exchange().into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let _ = channel.close(200, "done".into()).await;
        Ok(())
    }
}

fn dead_letter_from(delivery: &lapin::message::Delivery) -> DeadLetter {
    let (attempts, reasons) = attempt_history(&delivery.properties);
    DeadLetter {
        kind: kind_of(delivery),
        message_id: delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default(),
        attempts,
        reasons,
        body: delivery.data.clone(),
    }
}

impl RabbitBroker {
    /// Reads up to `limit` dead letters without removing them.
    async fn read_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let session = self.session().ok_or(QueueError::Unreachable)?;
        let channel = session.connection.create_channel().await?;
        let mut letters = Vec::new();
        while letters.len() < limit {
            let Some(message) = channel
                .basic_get(
                    self.inner.topology.dead_queue().into(),
                    lapin::options::BasicGetOptions::default(),
                )
                .await?
            else {
                break;
            };
            letters.push(dead_letter_from(&message.delivery));
        }
        // Closing the channel returns every message read to the queue.
        let _ = channel.close(200, "inspected".into()).await;
        // The return is asynchronous (a quorum queue goes through its log): wait, briefly,
        // until they are ready again, so that a replay right after finds them.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            match self.queue_depth(&self.inner.topology.dead_queue()).await {
                Ok(ready) if ready as usize >= letters.len() => break,
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(_) => break,
            }
        }
        Ok(letters)
    }

    /// Moves dead letters back to the work queue with a fresh attempt count, or removes
    /// them (`replay = false`). Each message is published and confirmed before its dead
    /// copy is acked. Calls `progress(done, total)` after each one. Returns how many.
    async fn settle_dead(
        &self,
        select: Select<'_>,
        replay: bool,
        progress: Progress<'_>,
    ) -> Result<usize, QueueError> {
        let session = self.session().ok_or(QueueError::Unreachable)?;
        let topology = &self.inner.topology;
        let channel = session.connection.create_channel().await?;
        // Only the messages present now: a replayed message that fails again and comes
        // back must not be replayed twice in one run.
        let present = channel
            .queue_declare(
                topology.dead_queue().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?
            .message_count() as usize;
        let total = match select {
            Select::One(_) => 1,
            Select::All => present,
        };
        let mut done = 0;
        for _ in 0..present {
            let Some(message) = channel
                .basic_get(
                    topology.dead_queue().into(),
                    lapin::options::BasicGetOptions::default(),
                )
                .await?
            else {
                break;
            };
            let letter = dead_letter_from(&message.delivery);
            if !select.matches(&letter.message_id) {
                continue; // left unacked: returned to the queue when the channel closes
            }
            if replay {
                let mut headers = FieldTable::default();
                headers.insert(
                    "x-puhuri-replayed-reasons".into(),
                    reasons_array(&letter.reasons),
                );
                self.publish_kind(
                    letter.kind.unwrap_or(Kind::Allocation),
                    &letter.message_id,
                    &letter.body,
                    headers,
                )
                .await?;
            }
            message
                .delivery
                .acker
                .ack(BasicAckOptions::default())
                .await?;
            done += 1;
            progress(done, total);
            if matches!(select, Select::One(_)) {
                break;
            }
        }
        let _ = channel.close(200, "settled".into()).await;
        // The messages read past return asynchronously (see `read_dead_letters`): wait,
        // briefly, until they are ready again, so that the next read finds them.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let expected = present.saturating_sub(done);
        while tokio::time::Instant::now() < deadline {
            match self.queue_depth(&topology.dead_queue()).await {
                Ok(ready) if ready as usize >= expected => break,
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(_) => break,
            }
        }
        Ok(done)
    }
}

/// A message read by [`RabbitBroker::take_one`].
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub message_id: String,
    pub body: Vec<u8>,
    /// String-valued headers, and string arrays joined with `\n`.
    pub headers: Vec<(String, String)>,
}

fn header_strings(properties: &BasicProperties) -> Vec<(String, String)> {
    let Some(headers) = properties.headers() else {
        return Vec::new();
    };
    headers
        .inner()
        .iter()
        .filter_map(|(key, value)| {
            let text = match value {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                AMQPValue::LongLongInt(n) => n.to_string(),
                AMQPValue::FieldArray(items) => items
                    .as_slice()
                    .iter()
                    .filter_map(|v| match v {
                        AMQPValue::LongString(s) => {
                            Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                        }
                        _ => None,
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => return None,
            };
            Some((key.to_string(), text))
        })
        .collect()
}

fn work_properties(message_id: &str, headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(message_id.into())
        .with_headers(headers)
}

fn quorum_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

fn safe_dead_lettering(args: &mut FieldTable, exchange: &str, routing_key: Option<&str>) {
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(exchange.into()),
    );
    if let Some(key) = routing_key {
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(key.into()),
        );
    }
    args.insert(
        "x-dead-letter-strategy".into(),
        AMQPValue::LongString("at-least-once".into()),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
}

/// Every exchange with its kind.
fn exchanges(topology: &Topology) -> [(String, ExchangeKind); 4] {
    [
        (topology.work_exchange(), ExchangeKind::Direct),
        (topology.retry_exchange(), ExchangeKind::Direct),
        (topology.dead_exchange(), ExchangeKind::Fanout),
        (topology.events_exchange(), ExchangeKind::Topic),
    ]
}

/// The largest frame asked of the broker unless the URL names one (`?frame_max=`). lapin keeps
/// a receive and a send buffer of 32 frames per connection, filled when the connection opens:
/// at RabbitMQ's default of 128 KiB that is 8 MiB of memory per connection, at 16 KiB 1 MiB.
/// A body larger than a frame (a big team's snapshot) travels in several frames; a message's
/// headers cannot, and the largest of them, the attempt reasons, are bounded by
/// [`crate::REASONS_BYTES`] to half a frame.
const FRAME_MAX: u32 = 16 * 1024;

/// Connects to one node, with [`FRAME_MAX`] unless its URL sets `frame_max`.
async fn connect_to(url: &Secret) -> Result<Connection, lapin::Error> {
    match with_frame_max(url.expose()) {
        Some(uri) => Connection::connect_uri(uri, ConnectionProperties::default()).await,
        // The same error as connecting with the text would give.
        None => Connection::connect(url.expose(), ConnectionProperties::default()).await,
    }
}

/// The URL parsed, with `frame_max` = [`FRAME_MAX`] unless it names its own.
fn with_frame_max(url: &str) -> Option<lapin::uri::AMQPUri> {
    let mut uri: lapin::uri::AMQPUri = url.parse().ok()?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    Some(uri)
}

/// One connection that checks, with passive declarations only, that every exchange and
/// queue of `config.prefix` exists, and says which one does not: for tools, which must
/// neither declare anything nor wait for a broker that is not there.
pub async fn check_declared(
    config: &AmqpConfig,
    retry_delays: Vec<Duration>,
) -> Result<(), QueueError> {
    // The first node that answers (a cluster shares its topology).
    let mut connected = Err(QueueError::Unreachable);
    for url in &config.urls {
        let connect = connect_to(url);
        connected = match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(QueueError::Unreachable),
        };
        if connected.is_ok() {
            break;
        }
    }
    let connection = connected?;
    let channel = connection.create_channel().await?;
    let topology = Topology {
        prefix: config.prefix.clone(),
        retry_delays,
    };
    let checked = check_topology(&channel, &topology).await;
    let _ = connection.close(200, "checked".into()).await;
    Ok(checked?)
}

/// Passive declarations of every exchange and queue (`amqp.declare = false`): the
/// topology was pre-declared by an operator (`deploy/rabbitmq/definitions.json`); a
/// missing one fails the connection attempt, which is logged and retried with backoff.
async fn check_topology(channel: &Channel, topology: &Topology) -> Result<(), lapin::Error> {
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    for (name, kind) in exchanges(topology) {
        channel
            .exchange_declare(name.into(), kind, passive, FieldTable::default())
            .await?;
    }
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    for queue in topology.queues() {
        channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await?;
    }
    Ok(())
}

async fn declare_topology(channel: &Channel, topology: &Topology) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    for (name, kind) in exchanges(topology) {
        channel
            .exchange_declare(name.into(), kind, durable, FieldTable::default())
            .await?;
    }

    channel
        .queue_declare(topology.dead_queue().into(), durable_queue, {
            // Inspecting dead letters (`dlq list`) returns them to the queue, which
            // counts as a delivery; the limit is set high so inspection never drops them.
            let mut args = quorum_arguments();
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(DEAD_DELIVERY_LIMIT),
            );
            args
        })
        .await?;
    channel
        .queue_bind(
            topology.dead_queue().into(),
            topology.dead_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let mut work_args = quorum_arguments();
    work_args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(WORK_DELIVERY_LIMIT),
    );
    safe_dead_lettering(&mut work_args, &topology.dead_exchange(), None);
    channel
        .queue_declare(topology.work_queue().into(), durable_queue, work_args)
        .await?;
    // Notifications and usage records share the work queue.
    for routing_key in Kind::ALL.map(Kind::as_str) {
        channel
            .queue_bind(
                topology.work_queue().into(),
                topology.work_exchange().into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }

    for delay in &topology.retry_delays {
        let mut args = quorum_arguments();
        let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
        safe_dead_lettering(
            &mut args,
            &topology.work_exchange(),
            Some(Kind::Allocation.as_str()),
        );
        let queue = topology.retry_queue(*delay);
        channel
            .queue_declare(queue.clone().into(), durable_queue, args)
            .await?;
        channel
            .queue_bind(
                queue.into(),
                topology.retry_exchange().into(),
                Topology::retry_routing_key(*delay).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// The stream of deliveries of one consumer.
pub struct RabbitDeliveries {
    consumer: lapin::Consumer,
    broker: RabbitBroker,
    generation: u64,
}

#[async_trait]
impl Consumer for RabbitDeliveries {
    /// The next delivery; `None` when the consumer's channel or connection is gone (the
    /// caller opens a new consumer, and unacked deliveries come back redelivered).
    async fn next(&mut self) -> Option<Delivery> {
        match self.consumer.next().await {
            Some(Ok(raw)) => Some(RabbitDelivery::delivery(
                raw,
                self.broker.clone(),
                self.generation,
            )),
            Some(Err(error)) => {
                tracing::warn!(error = %error, "consumer failed");
                None
            }
            None => None,
        }
    }
}

/// One delivery from the work queue, as RabbitMQ settles it.
struct RabbitDelivery {
    message_id: String,
    kind: Option<Kind>,
    raw: lapin::message::Delivery,
    broker: RabbitBroker,
    generation: u64,
}

/// A delivery's kind: its header when a copy carries one, else its routing key.
fn kind_of(raw: &lapin::message::Delivery) -> Option<Kind> {
    let header = raw.properties.headers().as_ref().and_then(|headers| {
        headers.inner().iter().find_map(|(key, value)| match value {
            AMQPValue::LongString(s) if key.as_str() == HEADER_KIND => {
                Kind::parse(&String::from_utf8_lossy(s.as_bytes()))
            }
            _ => None,
        })
    });
    header.or_else(|| Kind::parse(raw.routing_key.as_str()))
}

impl RabbitDelivery {
    fn delivery(raw: lapin::message::Delivery, broker: RabbitBroker, generation: u64) -> Delivery {
        let (attempts, reasons) = attempt_history(&raw.properties);
        let message_id = raw
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        let kind = kind_of(&raw);
        let body = raw.data.clone();
        let redelivered = raw.redelivered;
        let topology = broker.topology().clone();
        Delivery::new(
            kind,
            body,
            attempts,
            reasons,
            redelivered,
            message_id.clone(),
            topology,
            Box::new(RabbitDelivery {
                message_id,
                kind,
                raw,
                broker,
                generation,
            }),
        )
    }

    /// Acks on the channel it came from, unless that connection has been replaced: after
    /// a reconnect the broker has requeued it already, and an ack would be meaningless.
    async fn settle_ack(&self) -> Result<(), QueueError> {
        let current = self.broker.session().map(|s| s.generation);
        if current != Some(self.generation) {
            return Err(QueueError::Stale);
        }
        self.raw.acker.ack(BasicAckOptions::default()).await?;
        Ok(())
    }
}

#[async_trait]
impl Settle for RabbitDelivery {
    /// Published on the events exchange with the event's id as message id; returns after
    /// the confirm (a publish interrupted by a reconnect is published again).
    async fn stage_event(&mut self, event: Event) -> Result<(), QueueError> {
        self.broker
            .publish_to_events(&event.routing_key, &event.body, &event.message_id)
            .await?;
        Ok(())
    }

    async fn ack(self: Box<Self>) -> Result<(), QueueError> {
        self.settle_ack().await
    }

    /// `basic.nack` with requeue: the headers (attempts, reasons) are unchanged. After a
    /// reconnect the broker has requeued it already.
    async fn release(
        self: Box<Self>,
        _attempts: u32,
        _reasons: &[String],
    ) -> Result<(), QueueError> {
        let current = self.broker.session().map(|s| s.generation);
        if current != Some(self.generation) {
            return Err(QueueError::Stale);
        }
        self.raw
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await?;
        Ok(())
    }

    /// A retry goes to the tier's delay queue with the message's own expiration (the
    /// jittered wait), so a message waits behind an older one in its tier by at most the
    /// jitter; a dead letter to the dead-letter exchange. The copy is confirmed before
    /// the original is acked.
    async fn move_to(
        self: Box<Self>,
        to: Destination,
        attempts: u32,
        reasons: &[String],
    ) -> Result<(), QueueError> {
        let topology = self.broker.topology().clone();
        let mut headers = attempt_headers(attempts, reasons);
        if let Some(kind) = self.kind {
            headers.insert(
                HEADER_KIND.into(),
                AMQPValue::LongString(kind.as_str().into()),
            );
        }
        let properties = work_properties(&self.message_id, headers);
        let (exchange, routing_key, properties) = match to {
            Destination::Retry { tier, wait } => (
                topology.retry_exchange(),
                Topology::retry_routing_key(tier),
                properties.with_expiration(wait.as_millis().to_string().into()),
            ),
            Destination::Dead => (topology.dead_exchange(), "dead".to_owned(), properties),
        };
        self.broker
            .publish(
                &exchange,
                &routing_key,
                &self.raw.data,
                properties,
                true,
                false,
            )
            .await?;
        self.settle_ack().await
    }
}

#[async_trait]
impl Backend for RabbitBroker {
    fn describe(&self) -> String {
        match self.inner.urls.len() {
            1 => format!("RabbitMQ (prefix `{}`)", self.topology().prefix),
            nodes => format!(
                "RabbitMQ (prefix `{}`, {nodes} nodes)",
                self.topology().prefix
            ),
        }
    }

    fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    fn is_connected(&self) -> bool {
        self.session().is_some()
    }

    fn publish_nacks(&self) -> u64 {
        *self.inner.nacks.borrow()
    }

    fn is_embedded(&self) -> bool {
        false
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    async fn wait_connected(&self, stop: &CancellationToken) -> bool {
        RabbitBroker::wait_connected(self, stop).await
    }

    async fn publish_work(
        &self,
        kind: Kind,
        message_id: &str,
        body: &[u8],
    ) -> Result<(), PublishError> {
        self.publish_kind(kind, message_id, body, FieldTable::default())
            .await
    }

    async fn publish_event(
        &self,
        routing_key: &str,
        body: &[u8],
        message_id: &str,
    ) -> Result<(), PublishError> {
        self.publish_to_events(routing_key, body, message_id).await
    }

    async fn consume(&self, prefetch: u16, stop: &CancellationToken) -> Option<Deliveries> {
        self.open_deliveries(prefetch, stop)
            .await
            .map(|deliveries| Box::new(deliveries) as Deliveries)
    }

    async fn work_depth(&self) -> Result<u64, QueueError> {
        Ok(u64::from(
            self.queue_depth(&self.inner.topology.work_queue()).await?,
        ))
    }

    async fn dead_depth(&self) -> Result<u64, QueueError> {
        Ok(u64::from(
            self.queue_depth(&self.inner.topology.dead_queue()).await?,
        ))
    }

    /// RabbitMQ does not tell a queue's oldest message.
    async fn oldest_pending_ms(&self) -> Result<Option<i64>, QueueError> {
        Ok(None)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.read_dead_letters(limit).await
    }

    async fn settle_dead_letters(
        &self,
        select: Select<'_>,
        replay: bool,
        progress: Progress<'_>,
    ) -> Result<usize, QueueError> {
        self.settle_dead(select, replay, progress).await
    }

    async fn claim(&self, key: &str, _ttl: Duration) -> Result<Option<ClaimGuard>, QueueError> {
        let session = self.session().ok_or(QueueError::Unreachable)?;
        let channel = session.connection.create_channel().await?;
        let name = format!("{}.claim.{key}", self.inner.topology.prefix);
        let declared = channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(_) => Ok(Some(Box::new(RabbitClaim { channel, name }))),
            // The broker closes the channel with the refusal.
            Err(error) if is_resource_locked(&error) => Ok(None),
            Err(error) => {
                let _ = channel.close(200, "done".into()).await;
                Err(error.into())
            }
        }
    }

    async fn delete_topology(&self) -> Result<(), QueueError> {
        RabbitBroker::delete_topology(self).await
    }
}

fn attempt_history(properties: &BasicProperties) -> (u32, Vec<String>) {
    let mut attempts = 0;
    let mut reasons = Vec::new();
    if let Some(headers) = properties.headers() {
        for (key, value) in headers.inner() {
            match (key.as_str(), value) {
                (HEADER_ATTEMPTS, AMQPValue::LongLongInt(n)) => {
                    attempts = u32::try_from(*n).unwrap_or(0)
                }
                (HEADER_REASONS, AMQPValue::FieldArray(items)) => {
                    reasons = items
                        .as_slice()
                        .iter()
                        .filter_map(|v| match v {
                            AMQPValue::LongString(s) => {
                                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                            }
                            _ => None,
                        })
                        .collect();
                }
                _ => {}
            }
        }
    }
    (attempts, reasons)
}

fn reasons_array(reasons: &[String]) -> AMQPValue {
    let values: Vec<AMQPValue> = reasons
        .iter()
        .map(|r| AMQPValue::LongString(LongString::from(truncate_reason(r))))
        .collect();
    AMQPValue::FieldArray(FieldArray::from(values))
}

fn attempt_headers(attempts: u32, reasons: &[String]) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(
        HEADER_ATTEMPTS.into(),
        AMQPValue::LongLongInt(i64::from(attempts)),
    );
    headers.insert(HEADER_REASONS.into(), reasons_array(reasons));
    headers
}

/// A broker URL without its credentials and query: `amqp://user:pass@host:5672/v?x=y` →
/// `amqp://host:5672/v`.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(unparsable URL)".into();
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let host = authority
        .rsplit_once('@')
        .map(|(_, host)| host)
        .unwrap_or(authority);
    format!("{scheme}://{host}{path}")
}

/// A random index below `count` (0 when `count` is 0).
fn random_index(count: usize) -> usize {
    if count == 0 {
        return 0;
    }
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize % count
}

fn truncate_reason(reason: &str) -> String {
    reason.chars().take(super::REASON_CHARS).collect()
}

/// Whether another connection holds an exclusive queue of that name.
fn is_resource_locked(error: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e)
        if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED)))
}

/// A claim held as an exclusive queue; the broker drops it with the connection.
struct RabbitClaim {
    channel: lapin::Channel,
    name: String,
}

#[async_trait]
impl Claim for RabbitClaim {
    async fn release(self: Box<Self>) {
        let _ = self
            .channel
            .queue_delete(
                self.name.as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await;
        let _ = self.channel.close(200, "done".into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jittered;

    /// Against the broker of `AMQP_URL` (the local one by default): a queue bound to the
    /// events exchange that holds one message and refuses more (`reject-publish`) nacks a
    /// publish; once it has room, the publish that was nacked goes through, and one that never
    /// finds room is refused when the confirm timeout passes.
    #[tokio::test]
    async fn a_nacked_publish_is_published_again_within_the_confirm_timeout() {
        let url = std::env::var("AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
        let stop = CancellationToken::new();
        let config = AmqpConfig {
            urls: vec![Secret::new(url)],
            prefix: format!("nack-{}", uuid::Uuid::new_v4().simple()),
            publish_channels: 2,
            confirm_timeout: Duration::from_secs(2),
            declare: true,
        };
        let broker = RabbitBroker::start(&config, vec![Duration::from_secs(1)], stop.clone());
        let connected = tokio::time::timeout(Duration::from_secs(30), broker.wait_connected(&stop));
        assert_eq!(connected.await, Ok(true), "a broker at AMQP_URL");
        let full = format!("{}.full", config.prefix);
        let mut arguments = FieldTable::default();
        arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
        arguments.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        broker
            .declare_events_queue(&full, "#", arguments)
            .await
            .expect("declare the small queue");
        let publish = |id: &'static str| {
            let broker = broker.clone();
            async move {
                broker
                    .publish_to_events("allocation.approved", b"{}", id)
                    .await
            }
        };
        publish("first").await.expect("room for one");

        let mut nacks = broker.inner.nacks.subscribe();
        let second = tokio::spawn(publish("second"));
        tokio::time::timeout(Duration::from_secs(10), nacks.wait_for(|n| *n >= 1))
            .await
            .expect("the broker nacks the second")
            .expect("the broker runs");
        let taken = broker.take_one(&full).await.expect("take").expect("one");
        assert_eq!(taken.message_id, "first");
        second
            .await
            .expect("the task ran")
            .expect("published again once there was room");
        let taken = broker.take_one(&full).await.expect("take").expect("one");
        assert_eq!(taken.message_id, "second");
        assert!(broker.publish_nacks() >= 1);

        publish("third").await.expect("room for one");
        let refused = publish("fourth").await;
        assert!(matches!(refused, Err(PublishError::Nacked)), "{refused:?}");

        let channel = broker
            .session()
            .expect("connected")
            .connection
            .create_channel()
            .await
            .expect("channel");
        channel
            .queue_delete(full.as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("delete the small queue");
        broker.delete_topology().await.expect("clean up");
        stop.cancel();
    }

    #[test]
    fn connections_ask_for_small_frames_unless_the_url_names_a_size() {
        let asked = |url: &str| with_frame_max(url).and_then(|uri| uri.query.frame_max);
        assert_eq!(asked("amqp://u:p@h:5672/%2f"), Some(FRAME_MAX));
        assert_eq!(asked("amqp://h/%2f?heartbeat=5"), Some(FRAME_MAX));
        assert_eq!(asked("amqp://h/%2f?frame_max=131072"), Some(131_072));
        assert!(with_frame_max("garbage://").is_none());
        let uri = with_frame_max("amqps://u:secret@h:5671/vhost?heartbeat=7");
        let uri = uri.as_ref().expect("a valid URL parses");
        assert_eq!(
            (
                uri.scheme.clone(),
                uri.authority.host.as_str(),
                uri.authority.port
            ),
            (lapin::uri::AMQPScheme::AMQPS, "h", 5671)
        );
        assert_eq!(
            (uri.vhost.as_str(), uri.query.heartbeat),
            ("vhost", Some(7))
        );
        assert_eq!(uri.authority.userinfo.password, "secret");
    }

    #[test]
    fn node_names_carry_no_credentials() {
        assert_eq!(
            redacted("amqp://u:p@ss@h:5701/%2f?heartbeat=5"),
            "amqp://h:5701/%2f"
        );
        assert_eq!(redacted("amqps://h"), "amqps://h");
        assert_eq!(redacted("amqp://user:secret@h"), "amqp://h");
        assert_eq!(redacted("garbage"), "(unparsable URL)");
        for _ in 0..100 {
            assert!(random_index(3) < 3);
        }
        assert_eq!(random_index(0), 0);
    }

    #[test]
    fn delays_follow_the_tiers_and_stay_on_the_last() {
        let topology = Topology {
            prefix: "p".into(),
            retry_delays: vec![Duration::from_millis(10), Duration::from_millis(20)],
        };
        assert_eq!(topology.delay_for(1), Duration::from_millis(10));
        assert_eq!(topology.delay_for(2), Duration::from_millis(20));
        assert_eq!(topology.delay_for(9), Duration::from_millis(20));
        assert_eq!(
            topology.retry_queue(Duration::from_millis(10)),
            "p.retry.10ms"
        );
    }

    #[test]
    fn retry_after_picks_the_first_tier_that_covers_it() {
        let topology = Topology {
            prefix: "p".into(),
            retry_delays: vec![
                Duration::from_secs(1),
                Duration::from_secs(5),
                Duration::from_secs(30),
            ],
        };
        let covering =
            |attempts, secs| topology.delay_covering(attempts, Some(Duration::from_secs(secs)));
        assert_eq!(covering(1, 0), Duration::from_secs(1));
        assert_eq!(covering(1, 3), Duration::from_secs(5));
        assert_eq!(covering(1, 3600), Duration::from_secs(30));
        assert_eq!(covering(3, 2), Duration::from_secs(30));
    }

    #[test]
    fn jitter_only_shortens_and_stays_within_the_fraction() {
        for _ in 0..1000 {
            let delay = jittered(Duration::from_millis(1000), 0.2);
            assert!((800..=1000).contains(&delay.as_millis()), "{delay:?}");
        }
        assert_eq!(
            jittered(Duration::from_millis(1000), 0.0),
            Duration::from_millis(1000)
        );
    }
}
