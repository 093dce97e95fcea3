//! The `[events]` source: Waldur's own push channel for providers. Registers for order events
//! of the configured offerings (event consumers or event subscriptions), connects with STOMP
//! 1.2 over WebSocket, subscribes with `ack: client-individual`, and for each `MESSAGE`:
//! parse → allocation hint → publish with confirm to our queue → `ACK`.
//!
//! INVARIANT: a frame is acknowledged to Waldur's broker only after what it carried is
//! durably in our queue (the same publish the receiver answers 2xx after). A frame whose
//! publish fails is left un-acked and the connection is dropped, so Waldur's broker delivers
//! it again. A body that is not an order event is queued as it came (the workers
//! dead-letter it as undecodable, keeping the body), then acked. Other order states are
//! counted and acked.
//! INVARIANT: the passcode (the API token) is sent only in the `CONNECT` frame; it is never
//! logged (`Frame`'s `Debug` prints header names only).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use puhuri_client::{EventChannel, PuhuriClient, WaldurUuid};
use puhuri_queue::{Broker, Kind};
use puhuri_stomp::{Decoder, Frame, Item, Limits};
use serde_json::Value;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::config::{EventsConfig, EventsFlow};
use crate::notification::{AllocationHint, OrderUuid, ResourceUuid, WorkItem, body_digest_id};

/// The source name on work items from this stream.
pub const SOURCE: &str = "waldur-events";

/// What the stream has done, for metrics, `/readyz` and tests.
#[derive(Debug, Default)]
pub struct StreamStats {
    pub connected: AtomicBool,
    pub received: AtomicU64,
    pub queued: AtomicU64,
    pub ignored: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub acked: AtomicU64,
    /// Frames Waldur's broker marked `redelivered`.
    pub redelivered: AtomicU64,
    pub reconnects: AtomicU64,
    /// Unix ms of the last frame (0: none yet).
    pub last_frame_ms: AtomicI64,
    /// Fires on every (re)connect: the reconciler runs a pass.
    pub connected_notify: Notify,
    /// Fires when a session ends (the stream is about to reconnect).
    pub disconnected_notify: Notify,
    /// Fires when a `MESSAGE` frame arrives, before it is handled.
    pub frame_notify: Notify,
    /// Fires after each frame is handled (and acknowledged, where it had an `ack` id).
    pub handled_notify: Notify,
}

impl StreamStats {
    /// Seconds since the last frame, when one came.
    pub fn last_frame_age(&self) -> Option<f64> {
        let at = self.last_frame_ms.load(Ordering::Relaxed);
        (at > 0).then(|| (now_ms() - at).max(0) as f64 / 1000.0)
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What one order event means for us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Meaning {
    /// A Create order waiting for the provider (or a bare re-send naming an order).
    Allocation(AllocationHint),
    /// Well-formed, but nothing for the provider to decide (another state or type).
    Ignored(&'static str),
}

/// Why a body is not an order event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("the body is not a JSON object")]
    NotJson,
    #[error("the event names no order uuid")]
    NoOrder,
}

/// Maps Waldur's order message (`{"order_uuid","order_state", ...}`) to the hint the
/// receiver produces for a notification.
pub fn interpret(body: &[u8]) -> Result<Meaning, EventError> {
    if crate::notification::check_json_limits(body).is_err() {
        return Err(EventError::NotJson);
    }
    let value: Value = serde_json::from_slice(body).map_err(|_| EventError::NotJson)?;
    let object = value.as_object().ok_or(EventError::NotJson)?;
    if object
        .get("object_type")
        .and_then(Value::as_str)
        .is_some_and(|t| t != "order")
    {
        return Ok(Meaning::Ignored("not an order"));
    }
    let order = object
        .get("order_uuid")
        .and_then(Value::as_str)
        .and_then(OrderUuid::parse)
        .ok_or(EventError::NoOrder)?;
    match object.get("order_state").and_then(Value::as_str) {
        Some("pending-provider") | None => {}
        Some(_) => return Ok(Meaning::Ignored("order state")),
    }
    if let Some(order_type) = object.get("order_type").and_then(Value::as_str)
        && order_type != "Create"
    {
        return Ok(Meaning::Ignored("order type"));
    }
    let resource = object
        .get("resource_uuid")
        .and_then(Value::as_str)
        .and_then(ResourceUuid::parse);
    Ok(Meaning::Allocation(AllocationHint {
        order_uuid: Some(order),
        resource_uuid: resource,
    }))
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("registration failed: {0}")]
    Register(#[source] puhuri_client::PuhuriError),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("the server refused the session: {0}")]
    Refused(String),
    #[error("the connection failed: {0}")]
    Transport(String),
    #[error("the stream is malformed: {0}")]
    Malformed(#[from] puhuri_stomp::DecodeError),
    #[error("no heart-beat from the server for {0:?}")]
    Silent(Duration),
    #[error("queueing an event failed (left un-acked): {0}")]
    Publish(String),
    #[error("the server closed the connection")]
    Closed,
}

/// The `[events]` source.
pub struct EventStream {
    config: EventsConfig,
    client: PuhuriClient,
    /// The passcode: the API token.
    token: std::sync::Mutex<puhuri_auth::Secret>,
    broker: Broker,
    stats: Arc<StreamStats>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Where the token is re-read before registering again (`puhuri.token_file`), so a
    /// rotated token is picked up after the broker refuses the old one.
    token_file: Option<std::path::PathBuf>,
    /// The registration, kept across reconnects (registering again with the older flow
    /// would make a new subscription and queue); dropped when the broker refuses a login.
    channel: tokio::sync::Mutex<Option<EventChannel>>,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl EventStream {
    pub fn new(
        config: EventsConfig,
        client: PuhuriClient,
        token: puhuri_auth::Secret,
        broker: Broker,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> EventStream {
        EventStream {
            config,
            client,
            token: std::sync::Mutex::new(token),
            broker,
            stats: Arc::new(StreamStats::default()),
            metrics,
            token_file: None,
            channel: tokio::sync::Mutex::new(None),
        }
    }

    /// Re-reads the token from `path` before each registration (`puhuri.token_file`).
    pub fn with_token_file(mut self, path: Option<std::path::PathBuf>) -> EventStream {
        self.token_file = path;
        self
    }

    fn passcode(&self) -> puhuri_auth::Secret {
        self.token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn stats(&self) -> Arc<StreamStats> {
        self.stats.clone()
    }

    /// Runs sessions until `stop`, reconnecting with exponential backoff and jitter.
    pub async fn run(&self, stop: CancellationToken) {
        let mut delay = self.config.backoff_initial;
        loop {
            let began = Instant::now();
            let result = self.session(&stop).await;
            self.stats.connected.store(false, Ordering::Relaxed);
            self.stats.disconnected_notify.notify_waiters();
            match result {
                Ok(()) => return,
                Err(error) => {
                    self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    self.metrics.stomp_reconnect();
                    // A session that ran a while starts the backoff afresh.
                    if began.elapsed() > self.config.backoff_max {
                        delay = self.config.backoff_initial;
                    }
                    let wait = jittered(delay);
                    tracing::warn!(error = %error, retry_in_ms = wait.as_millis() as u64, "event stream lost; reconnecting");
                    delay = (delay * 2).min(self.config.backoff_max);
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    async fn register(&self) -> Result<EventChannel, SessionError> {
        if let Some(path) = &self.token_file {
            match std::fs::read_to_string(path) {
                Ok(text) if !text.trim().is_empty() => {
                    let token = text.trim().to_owned();
                    let changed = token != self.passcode().expose();
                    if changed {
                        if let Err(error) = self.client.set_token(&token) {
                            tracing::warn!(error = %error, "the token file's token is not usable; keeping the previous one");
                        } else {
                            *self
                                .token
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                                puhuri_auth::Secret::new(token);
                            tracing::info!("event stream: token re-read from puhuri.token_file");
                        }
                    }
                }
                _ => {
                    tracing::warn!(file = %path.display(), "event stream: cannot read puhuri.token_file; keeping the previous token")
                }
            }
        }
        let offerings: Vec<WaldurUuid> = self
            .config
            .offerings
            .iter()
            .filter_map(|o| WaldurUuid::parse(o))
            .collect();
        let consumers = match self.config.flow {
            EventsFlow::Consumers => true,
            EventsFlow::Subscriptions => false,
            EventsFlow::Auto => self
                .client
                .has_event_consumers()
                .await
                .map_err(SessionError::Register)?,
        };
        if consumers {
            self.client.register_event_consumer(&offerings).await
        } else {
            self.client.subscribe_events(&offerings).await
        }
        .map_err(SessionError::Register)
    }

    async fn session(&self, stop: &CancellationToken) -> Result<(), SessionError> {
        let known = self.channel.lock().await.clone();
        let channel = match known {
            Some(channel) => channel,
            None => {
                let channel = self.register().await?;
                *self.channel.lock().await = Some(channel.clone());
                channel
            }
        };
        let result = self.connected_session(&channel, stop).await;
        if matches!(result, Err(SessionError::Refused(_))) {
            *self.channel.lock().await = None;
        }
        result
    }

    async fn connected_session(
        &self,
        channel: &EventChannel,
        stop: &CancellationToken,
    ) -> Result<(), SessionError> {
        let (mut socket, _) = tokio_tungstenite::connect_async(self.config.url.as_str())
            .await
            .map_err(|e| SessionError::Connect(e.to_string()))?;
        let beat = self.config.heartbeat.as_millis() as u64;
        let passcode = self.passcode();
        let connect = Frame::new("CONNECT")
            .with("accept-version", "1.2")
            .with("host", channel.vhost.as_str())
            .with("login", channel.login.as_str())
            .with("passcode", passcode.expose())
            .with("heart-beat", format!("{beat},{beat}"));
        send(&mut socket, &connect).await?;
        let mut decoder = Decoder::new(Limits::default());
        let connected = loop {
            match next_frame(&mut socket, &mut decoder, None).await? {
                Some(frame) if frame.command == "CONNECTED" => break frame,
                Some(frame) if frame.command == "ERROR" => {
                    return Err(SessionError::Refused(
                        frame.header("message").unwrap_or("ERROR").to_owned(),
                    ));
                }
                Some(_) => {}
                None => return Err(SessionError::Closed),
            }
        };
        let server = connected
            .header("heart-beat")
            .and_then(puhuri_stomp::parse_heart_beat)
            .unwrap_or((0, 0));
        let (send_every, expect_every) = puhuri_stomp::negotiate_heart_beat((beat, beat), server);
        for (index, queue) in channel.queues.iter().enumerate() {
            let subscribe = Frame::new("SUBSCRIBE")
                .with("id", index.to_string())
                .with("destination", format!("/amq/queue/{queue}"))
                .with("ack", "client-individual")
                .with("prefetch-count", "50");
            send(&mut socket, &subscribe).await?;
        }
        self.stats.connected.store(true, Ordering::Relaxed);
        self.stats.connected_notify.notify_waiters();
        tracing::info!(
            queues = channel.queues.len(),
            heart_beat_ms = send_every,
            "event stream connected"
        );
        // Liveness: the server's heart-beats when negotiated, and in any case the pongs to
        // the WebSocket pings sent every interval; nothing for twice the interval drops the
        // connection. The deadline is kept across loop turns, so sending never extends it.
        let every = Duration::from_millis(if send_every > 0 {
            send_every
        } else {
            beat.max(1)
        });
        let silence = Duration::from_millis(expect_every.max(beat).max(1) * 2);
        let mut last_seen = tokio::time::Instant::now();
        let mut beat_timer = tokio::time::interval(every);
        beat_timer.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    let _ = send(&mut socket, &Frame::new("DISCONNECT")).await;
                    let _ = socket.close(None).await;
                    return Ok(());
                }
                _ = beat_timer.tick() => {
                    if send_every > 0 {
                        socket
                            .send(Message::text("\n"))
                            .await
                            .map_err(|e| SessionError::Transport(e.to_string()))?;
                    }
                    socket
                        .send(Message::Ping(Vec::new().into()))
                        .await
                        .map_err(|e| SessionError::Transport(e.to_string()))?;
                }
                frame = next_frame(&mut socket, &mut decoder, Some((&mut last_seen, silence))) => {
                    match frame? {
                        Some(frame) => self.handle(&mut socket, frame).await?,
                        None => return Err(SessionError::Closed),
                    }
                }
            }
        }
    }

    async fn handle(&self, socket: &mut Socket, frame: Frame) -> Result<(), SessionError> {
        match frame.command.as_str() {
            "MESSAGE" => {}
            "ERROR" => {
                return Err(SessionError::Refused(
                    frame.header("message").unwrap_or("ERROR").to_owned(),
                ));
            }
            _ => return Ok(()),
        }
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        self.stats.frame_notify.notify_waiters();
        self.stats.last_frame_ms.store(now_ms(), Ordering::Relaxed);
        let redelivered = frame.header("redelivered") == Some("true");
        if redelivered {
            self.stats.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        let id = body_digest_id("stomp_", SOURCE, &frame.body);
        let queued = match interpret(&frame.body) {
            Ok(Meaning::Allocation(hint)) => {
                let item = WorkItem {
                    id: id.clone(),
                    source: SOURCE.to_owned(),
                    event_type: "order.pending-provider".to_owned(),
                    hint,
                    received_at_ms: now_ms(),
                };
                crate::work::publish_notification(&self.broker, &item)
                    .await
                    .map_err(|e| SessionError::Publish(e.to_string()))?;
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
                self.metrics.stomp_frame("queued", redelivered);
                tracing::info!(notification = %id, allocation = %item.hint, redelivered, "event queued");
                true
            }
            Ok(Meaning::Ignored(why)) => {
                self.stats.ignored.fetch_add(1, Ordering::Relaxed);
                self.metrics.stomp_frame("ignored", redelivered);
                tracing::debug!(why, "event ignored");
                false
            }
            Err(error) => {
                // Queued as it came: the workers dead-letter it as undecodable, body kept.
                self.broker
                    .publish_work(Kind::Allocation, &id, &frame.body)
                    .await
                    .map_err(|e| SessionError::Publish(e.to_string()))?;
                self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                self.metrics.stomp_frame("dead-lettered", redelivered);
                tracing::warn!(notification = %id, error = %error, "event unreadable; dead-lettered");
                true
            }
        };
        if queued {
            hold_before_ack_for_tests(&id).await;
        }
        if let Some(ack) = frame.header("ack") {
            send(socket, &Frame::new("ACK").with("id", ack)).await?;
            self.stats.acked.fetch_add(1, Ordering::Relaxed);
            self.metrics.stomp_acked();
        }
        self.stats.handled_notify.notify_waiters();
        Ok(())
    }
}

/// A fault hook for the tests only: with the `tools` feature (never in a production build,
/// `--no-default-features`) and `PUHURI_APPROVER_TEST_HOLD_BEFORE_STOMP_ACK=1`, the session
/// logs [`HOLD_MARKER`] once an event is durably queued and then never sends its `ACK`, so a
/// test can SIGKILL the process exactly between the confirm and the `ACK`.
async fn hold_before_ack_for_tests(id: &str) {
    #[cfg(feature = "tools")]
    if std::env::var_os("PUHURI_APPROVER_TEST_HOLD_BEFORE_STOMP_ACK").is_some_and(|v| v == "1") {
        tracing::warn!(notification = %id, "{HOLD_MARKER}");
        std::future::pending::<()>().await;
    }
    let _ = id;
}

/// The line the test-only hook logs before it holds an `ACK` back.
pub const HOLD_MARKER: &str = "test hook: event queued, holding its ACK";

/// `delay` shortened or lengthened at random by up to 25 % (the queue's jitter, which only
/// shortens, applied to 125 % of it: 75 % to 125 %).
fn jittered(delay: Duration) -> Duration {
    puhuri_queue::jittered(delay.mul_f64(1.25), 0.4)
}

async fn send(socket: &mut Socket, frame: &Frame) -> Result<(), SessionError> {
    socket
        .send(Message::binary(frame.encode()))
        .await
        .map_err(|e| SessionError::Transport(e.to_string()))
}

/// The next frame (heart-beats are skipped), `None` once the server closed; with
/// `silence`, fails when nothing (frame, heart-beat or pong) arrived for that long since the
/// instant it holds, which every message moves on.
async fn next_frame(
    socket: &mut Socket,
    decoder: &mut Decoder,
    mut silence: Option<(&mut tokio::time::Instant, Duration)>,
) -> Result<Option<Frame>, SessionError> {
    loop {
        while let Some(item) = decoder.next_item()? {
            if let Item::Frame(frame) = item {
                return Ok(Some(frame));
            }
        }
        let message = match &mut silence {
            Some((last_seen, limit)) => {
                match tokio::time::timeout_at(**last_seen + *limit, socket.next()).await {
                    Ok(message) => {
                        **last_seen = tokio::time::Instant::now();
                        message
                    }
                    Err(_) => return Err(SessionError::Silent(*limit)),
                }
            }
            None => socket.next().await,
        };
        match message {
            None => return Ok(None),
            Some(Err(e)) => return Err(SessionError::Transport(e.to_string())),
            Some(Ok(Message::Text(text))) => decoder.push(text.as_bytes()),
            Some(Ok(Message::Binary(bytes))) => decoder.push(&bytes),
            Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_events_map_to_hints() {
        let unified = br#"{"order_uuid":"0bd3a4ee3c0a4b4d8f0c6b2f6f1e2a11","order_state":"pending-provider","object_type":"order","order_type":"Create","resource_uuid":"a1916bd53fd04b1ab1a4e700c926607b"}"#;
        let Ok(Meaning::Allocation(hint)) = interpret(unified) else {
            panic!("not an allocation");
        };
        assert!(hint.resource_uuid.is_some() && hint.order_uuid.is_some());
        let bare = br#"{"order_uuid":"0bd3a4ee3c0a4b4d8f0c6b2f6f1e2a11"}"#;
        assert!(matches!(interpret(bare), Ok(Meaning::Allocation(_))));
        let consumer = br#"{"order_uuid":"0bd3a4ee3c0a4b4d8f0c6b2f6f1e2a11","order_state":"pending-consumer"}"#;
        assert_eq!(interpret(consumer), Ok(Meaning::Ignored("order state")));
        let update = br#"{"order_uuid":"0bd3a4ee3c0a4b4d8f0c6b2f6f1e2a11","order_state":"pending-provider","order_type":"Update"}"#;
        assert_eq!(interpret(update), Ok(Meaning::Ignored("order type")));
        assert_eq!(interpret(b"nope"), Err(EventError::NotJson));
        assert_eq!(interpret(b"{}"), Err(EventError::NoOrder));
    }

    /// `wss://` builds rustls' client configuration (one crypto provider in the tree, the
    /// system's roots) and fails with an error, not a panic, on a server that speaks no TLS.
    #[tokio::test]
    async fn wss_against_a_server_without_tls_is_an_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            if let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let url = format!("wss://localhost:{port}/rmqws-stomp");
        assert!(
            tokio_tungstenite::connect_async(url.as_str())
                .await
                .is_err()
        );
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(4));
            assert!(d >= Duration::from_secs(3) && d <= Duration::from_secs(5));
        }
    }
}
