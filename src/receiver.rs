//! The HTTP receiver: `POST /v1/notifications/{source}` (and
//! `POST /v1/notifications/{source}/{path_secret}` for `path-secret` sources), plus
//! `/healthz` and `/readyz`.
//!
//! Order of checks for a notification (each refusal has its own problem `type`, see
//! `docs/ingress.md`): known source → header count and size → allowed networks → the
//! source's rate limit → content type → body size and arrival time → authentication over
//! the raw bytes → payload limits and format → replay cache → publish with confirm.
//!
//! INVARIANT: `202 queued` is answered only after the broker's publisher confirm; when
//! the broker is away, nacks, or cannot route, the answer is `503` with `Retry-After`.
//! The publish runs in its own task, so a client that hangs up cannot cut it in half.
//! INVARIANT: every refusal is `application/problem+json` with a stable `type` per cause,
//! counted by cause ([`ReceiverStats::refusals`]), nothing is enqueued for it, and it is
//! logged with its cause only: no secret, no path secret, no body.
//! INVARIANT: a log line carries only validated text: a configured source name, a
//! verified id, or an escaped, length-capped form of anything else ([`log_safe`]); never
//! a raw path segment, header value or body field of an unauthenticated request.
//! INVARIANT: a verified `(source, id)` is published at most once per replay window and
//! receiver process; a replay is answered `200 duplicate`. The id is derived only from
//! bytes the source's authentication covers (see [`authenticate`]), so changing an
//! unsigned header does not make a replay new.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde_json::json;
use tracing::Instrument;

use crate::config::{Config, ReceiverConfig, SourceAuth, SourceConfig};
use crate::limits::{ReplayCache, Reserve, TokenBucket};
use crate::metrics::Metrics;
use crate::notification::{Parsed, WorkItem, derived_id, github_id, parse_payload};
use puhuri_auth::signature::{self, GithubHeaders, SignedHeaders, VerifyError};
use puhuri_queue::{Broker, PublishError};

/// The largest body accepted.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Seconds a client should wait after a 503.
pub const RETRY_AFTER_SECS: u64 = 5;
/// The most request headers accepted.
pub const MAX_HEADERS: usize = 64;
/// The most bytes of header names and values accepted, in total.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// An RFC 9457 problem answer.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    /// The stable last segment of the `type` URI, e.g. `bad-signature`.
    pub cause: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        cause: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Problem {
        Problem {
            status,
            cause,
            title,
            detail: detail.into(),
            retry_after: None,
        }
    }

    fn retry_after(mut self, secs: u64) -> Problem {
        self.retry_after = Some(secs.max(1));
        self
    }
}

/// The `type` URI of a problem cause.
pub fn problem_type(cause: &str) -> String {
    format!("urn:puhuri-approver:problem:{cause}")
}

impl Problem {
    /// The problem's JSON body.
    pub fn json(&self) -> serde_json::Value {
        json!({
            "type": problem_type(self.cause),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        })
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = self.json();
        let mut response = (self.status, body.to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Counts of what the receiver answered, by outcome, and refusals by cause.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    pub queued: AtomicU64,
    pub ignored: AtomicU64,
    pub duplicates: AtomicU64,
    /// Every 4xx refusal.
    pub refused: AtomicU64,
    /// Every 503.
    pub unavailable: AtomicU64,
    by_cause: Mutex<BTreeMap<&'static str, u64>>,
}

impl ReceiverStats {
    fn count_refusal(&self, problem: &Problem) {
        if problem.status == StatusCode::SERVICE_UNAVAILABLE {
            self.unavailable.fetch_add(1, Ordering::Relaxed);
        } else {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        let mut by_cause = self.by_cause.lock().unwrap_or_else(PoisonError::into_inner);
        *by_cause.entry(problem.cause).or_default() += 1;
    }

    /// `(cause, count)` for every cause answered at least once (4xx and 503), by cause.
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        let by_cause = self.by_cause.lock().unwrap_or_else(PoisonError::into_inner);
        by_cause.iter().map(|(cause, n)| (*cause, *n)).collect()
    }
}

/// A boxed publish future.
pub type PublishFuture<'a> = Pin<Box<dyn Future<Output = Result<(), PublishError>> + Send + 'a>>;

/// Where accepted notifications go: the broker, or a stand-in in tests and fuzzing.
pub trait Publisher: Send + Sync + 'static {
    /// `Ok` only once the notification is durably queued.
    fn publish<'a>(&'a self, item: &'a WorkItem) -> PublishFuture<'a>;
    /// Whether publishing can currently succeed (for `/readyz`).
    fn is_connected(&self) -> bool;
}

impl Publisher for Broker {
    fn publish<'a>(&'a self, item: &'a WorkItem) -> PublishFuture<'a> {
        Box::pin(crate::work::publish_notification(self, item))
    }

    fn is_connected(&self) -> bool {
        Broker::is_connected(self)
    }
}

/// A publisher that keeps notifications in memory, for fuzzing the whole handler
/// without a broker. `fail` makes every publish answer `Unavailable`.
#[cfg(any(test, fuzzing))]
#[derive(Debug, Default)]
pub struct MemoryPublisher {
    pub items: Mutex<Vec<WorkItem>>,
    pub fail: std::sync::atomic::AtomicBool,
}

#[cfg(any(test, fuzzing))]
impl Publisher for MemoryPublisher {
    fn publish<'a>(&'a self, item: &'a WorkItem) -> PublishFuture<'a> {
        Box::pin(async move {
            if self.fail.load(Ordering::Relaxed) {
                return Err(PublishError::Unavailable);
            }
            self.items
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(item.clone());
            Ok(())
        })
    }

    fn is_connected(&self) -> bool {
        !self.fail.load(Ordering::Relaxed)
    }
}

struct Source {
    config: SourceConfig,
    bucket: Mutex<TokenBucket>,
}

struct ReceiverState {
    sources: HashMap<String, Source>,
    publisher: Arc<dyn Publisher>,
    stats: Arc<ReceiverStats>,
    metrics: Arc<Metrics>,
    replay: Arc<ReplayCache>,
    settings: ReceiverConfig,
}

/// Builds the receiver's router on the broker, with `/metrics`.
pub fn router(
    config: &Config,
    broker: Broker,
    stats: Arc<ReceiverStats>,
    metrics: Arc<Metrics>,
) -> Router {
    router_with_metrics(
        &config.receiver,
        &config.sources,
        Arc::new(broker),
        stats,
        metrics,
    )
}

/// The operations endpoints alone (`/metrics`, `/healthz`, `/readyz`), for processes
/// without a receiver (`work` with `metrics_listen`). Readiness reads the broker
/// attached to `metrics`.
pub fn ops_router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(ops_metrics))
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/readyz", get(ops_readiness))
        .with_state(metrics)
}

async fn ops_metrics(State(metrics): State<Arc<Metrics>>) -> Response {
    metrics_response(&metrics).await
}

async fn ops_readiness(State(metrics): State<Arc<Metrics>>) -> Response {
    readiness_response(metrics.broker_connected(), &metrics)
}

async fn metrics_response(metrics: &Metrics) -> Response {
    let mut response = metrics.scrape().await.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    response
}

/// Builds the receiver's router on any publisher. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()` so that the peer address is known
/// (without it, sources with `allowed_networks` refuse everything).
pub fn router_with(
    settings: &ReceiverConfig,
    sources: &[SourceConfig],
    publisher: Arc<dyn Publisher>,
    stats: Arc<ReceiverStats>,
) -> Router {
    router_with_metrics(
        settings,
        sources,
        publisher,
        stats,
        Arc::new(Metrics::new()),
    )
}

/// [`router_with`], counting into `metrics` and serving them on `/metrics`.
pub fn router_with_metrics(
    settings: &ReceiverConfig,
    sources: &[SourceConfig],
    publisher: Arc<dyn Publisher>,
    stats: Arc<ReceiverStats>,
    metrics: Arc<Metrics>,
) -> Router {
    let now = Instant::now();
    let state = Arc::new(ReceiverState {
        sources: sources
            .iter()
            .map(|s| {
                let source = Source {
                    config: s.clone(),
                    bucket: Mutex::new(TokenBucket::new(s.rate_limit, now)),
                };
                (s.name.clone(), source)
            })
            .collect(),
        publisher,
        stats,
        metrics,
        replay: ReplayCache::new(settings.replay_cache_entries),
        settings: settings.clone(),
    });
    Router::new()
        .route("/v1/notifications/{source}", post(receive_notification))
        .route(
            "/v1/notifications/{source}/{path_secret}",
            post(receive_notification),
        )
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readiness))
        .route(
            "/metrics",
            get(|State(state): State<Arc<ReceiverState>>| async move {
                metrics_response(&state.metrics).await
            }),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(state)
}

async fn method_not_allowed(State(state): State<Arc<ReceiverState>>) -> Problem {
    let problem = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        "notifications are sent with `POST`",
    );
    state.stats.count_refusal(&problem);
    state
        .metrics
        .notification("unknown", "rejected", problem.cause);
    problem
}

async fn not_found(State(state): State<Arc<ReceiverState>>) -> Problem {
    let problem = Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        "no such endpoint",
    );
    state.stats.count_refusal(&problem);
    state
        .metrics
        .notification("unknown", "rejected", problem.cause);
    problem
}

async fn readiness(State(state): State<Arc<ReceiverState>>) -> Response {
    readiness_response(state.publisher.is_connected(), &state.metrics)
}

/// `200` when every check passes, else `503` as `application/problem+json`; the body
/// names each check's state: `broker` (connected), `policy` (loaded by this process's
/// workers) and `puhuri`: `ok`, `unreachable` (a failure without a good answer within
/// [`crate::metrics::PUHURI_RECENT`]), `probing` (the start-up probe has not passed yet),
/// `unauthorized` (the token is refused) or `circuit-open` (sustained failures). Checks of
/// a role this process does not run are `not-applicable`. Where workers run, `probe` is
/// what the start-up probe found (or why it has not passed) and `circuit` why the circuit
/// is open. `events` (only where it runs) is Waldur's event stream (`ok` or `connecting`): shown,
/// not gating readiness, since the HTTP sources and the reconciler work without it.
fn readiness_response(broker: bool, metrics: &Metrics) -> Response {
    let workers = metrics.runs_workers();
    let policy = match (workers, metrics.is_policy_loaded()) {
        (false, _) => "not-applicable",
        (true, true) => "ok",
        (true, false) => "not-loaded",
    };
    let probe = metrics.probe();
    let circuit = metrics.circuit();
    let puhuri = if !workers {
        "not-applicable"
    } else if let Some((kind, _)) = &circuit {
        match *kind {
            "unauthorized" => "unauthorized",
            "probing" => "probing",
            _ => "circuit-open",
        }
    } else if !matches!(probe, Some((true, _))) {
        "probing"
    } else if metrics.puhuri_reachable() {
        "ok"
    } else {
        "unreachable"
    };
    let ready = broker && policy != "not-loaded" && matches!(puhuri, "ok" | "not-applicable");
    let checks = json!({
        "broker": if broker { "ok" } else { "disconnected" },
        "policy": policy,
        "puhuri": puhuri,
    });
    let mut checks = checks;
    if let Some(connected) = metrics.events_connected() {
        checks["events"] = json!(if connected { "ok" } else { "connecting" });
    }
    let mut body = json!({
        "status": if ready { "ready" } else { "not-ready" },
        "checks": checks,
    });
    if workers {
        body["probe"] = probe
            .map(|(_, report)| report)
            .unwrap_or(serde_json::Value::Null);
        body["circuit"] = match &circuit {
            Some((kind, detail)) => json!({"state": "open", "reason": kind, "detail": detail}),
            None => json!({"state": "closed"}),
        };
    }
    if ready {
        return (StatusCode::OK, axum::Json(body)).into_response();
    }
    let mut reasons = Vec::new();
    if !broker {
        reasons.push("the queue is not connected".to_owned());
    }
    if policy == "not-loaded" {
        reasons.push("no policy is loaded".to_owned());
    }
    match puhuri {
        "unauthorized" | "circuit-open" => {
            if let Some((_, detail)) = &circuit {
                reasons.push(detail.clone());
            }
        }
        "probing" => reasons.push(match &circuit {
            Some((_, detail)) => {
                format!("the start-up probe of Puhuri Core has not passed: {detail}")
            }
            None => "the start-up probe of Puhuri Core has not passed".to_owned(),
        }),
        "unreachable" => reasons.push("Puhuri Core has not answered well recently".to_owned()),
        _ => {}
    }
    // Problem Details (RFC 9457): `status` is the HTTP status; the readiness word moves
    // to `readiness`.
    body["readiness"] = json!("not-ready");
    body["type"] = json!("about:blank");
    body["title"] = json!("Service Unavailable");
    body["status"] = json!(503);
    body["detail"] = json!(reasons.join("; "));
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        )],
        body.to_string(),
    )
        .into_response()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The client's address: the TCP peer, or with `trust_forwarded_for = n` the n-th
/// address from the right of the last `X-Forwarded-For` header (each trusted proxy
/// appends the address it saw). `None` when it cannot be known.
pub fn client_ip(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted_proxies: usize,
) -> Option<IpAddr> {
    if trusted_proxies == 0 {
        return peer.map(|ip| ip.to_canonical());
    }
    let forwarded = headers.get_all("x-forwarded-for").iter().next_back()?;
    let forwarded = forwarded.to_str().ok()?;
    let hops: Vec<&str> = forwarded.split(',').map(str::trim).collect();
    if hops.len() < trusted_proxies {
        return None;
    }
    hops[hops.len() - trusted_proxies]
        .parse::<IpAddr>()
        .ok()
        .map(|ip| ip.to_canonical())
}

/// Whether `client` is in one of `networks`. An IPv4-mapped IPv6 address
/// (`::ffff:192.0.2.7`, as a `[::]` listener sees an IPv4 client) is the IPv4 address it
/// maps, and matches IPv4 networks; it still matches an IPv6 network written in the
/// mapped form (`::ffff:192.0.2.0/120`).
pub fn network_allows(networks: &[ipnet::IpNet], client: IpAddr) -> bool {
    let canonical = client.to_canonical();
    let mapped = match canonical {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        IpAddr::V6(_) => canonical,
    };
    networks
        .iter()
        .any(|net| net.contains(&canonical) || net.contains(&mapped))
}

/// The longest unknown path segment whose content is logged, in bytes: shorter than any
/// path secret ([`signature::MIN_PATH_SECRET_LEN`]), so that not one character of a
/// secret sent in place of a source name reaches the log.
pub const MAX_LOGGED_SEGMENT: usize = 24;
const _: () = assert!(MAX_LOGGED_SEGMENT < signature::MIN_PATH_SECRET_LEN);

/// `value` made safe for a log line of any format: cut at the first `/` (a decoded `%2F`
/// and whatever follows, e.g. a path secret, is shown as `/…`); longer than `max` bytes,
/// only its length is shown (`…(41 bytes)`), never a prefix; otherwise every byte outside
/// `A-Z a-z 0-9 - _ .` is percent-encoded (`%0A`, `%1B`, `%C3%A9`). No control byte, no
/// quote, no space and nothing non-ASCII from `value` reaches the log.
pub fn log_safe(value: &str, max: usize) -> String {
    let (head, cut_at_slash) = match value.split_once('/') {
        Some((head, _)) => (head, true),
        None => (value, false),
    };
    let mut out = String::new();
    if head.len() > max {
        out.push_str(&format!("…({} bytes)", head.len()));
    } else {
        for byte in head.bytes() {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.') {
                out.push(char::from(byte));
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    if cut_at_slash {
        out.push_str("/…");
    }
    out
}

async fn receive_notification(
    State(state): State<Arc<ReceiverState>>,
    path: Result<Path<HashMap<String, String>>, PathRejection>,
    request: Request,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    let (source_name, path_secret) = match path {
        Ok(Path(mut params)) => (
            params.remove("source").unwrap_or_default(),
            params.remove("path_secret"),
        ),
        Err(_) => (String::new(), None),
    };
    let started = Instant::now();
    // The path segment is logged as a source name only when it is one; anything else is
    // `unknown`, with an escaped, capped form of the segment cut before any `/`.
    let known = state.sources.contains_key(&source_name);
    let (source_label, segment) = if known {
        (source_name.as_str(), None)
    } else {
        ("unknown", Some(log_safe(&source_name, MAX_LOGGED_SEGMENT)))
    };
    // One span per notification; `id` is recorded once authenticated, and the worker's
    // span for the same notification carries the same id.
    let span = tracing::info_span!(
        "notification",
        source = source_label,
        segment = tracing::field::Empty,
        id = tracing::field::Empty,
    );
    if let Some(segment) = &segment {
        span.record("segment", segment.as_str());
    }
    let accepted = accept(
        &state,
        &source_name,
        path_secret.as_deref(),
        peer,
        request,
        started,
    )
    .instrument(span.clone())
    .await;
    let _entered = span.enter();
    match accepted {
        Ok(response) => response,
        Err(problem) => {
            state.stats.count_refusal(&problem);
            let outcome = if problem.status == StatusCode::SERVICE_UNAVAILABLE {
                "unavailable"
            } else {
                "rejected"
            };
            state
                .metrics
                .notification(source_label, outcome, problem.cause);
            // A configured source name or `unknown` (the span adds the escaped segment);
            // the path secret, the headers and the body are never logged.
            tracing::info!(
                source = source_label,
                peer = %peer
                    .map(|ip| ip.to_canonical().to_string())
                    .unwrap_or_else(|| "unknown".into()),
                status = problem.status.as_u16(),
                cause = problem.cause,
                "notification refused"
            );
            problem.into_response()
        }
    }
}

fn check_headers(headers: &HeaderMap) -> Result<(), Problem> {
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return Err(Problem::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            "Request headers too large",
            format!(
                "at most {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes of headers are accepted"
            ),
        ));
    }
    Ok(())
}

fn check_content_type(headers: &HeaderMap) -> Result<(), Problem> {
    let content_type = header_str(headers, header::CONTENT_TYPE.as_str()).unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence != "application/json" {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "notifications must be sent as `application/json`",
        ));
    }
    Ok(())
}

fn too_large() -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        "Body too large",
        format!("the body exceeds {MAX_BODY_BYTES} bytes"),
    )
}

/// Reads the body, at most [`MAX_BODY_BYTES`], before `deadline`.
async fn read_body(headers: &HeaderMap, body: Body, deadline: Instant) -> Result<Bytes, Problem> {
    if let Some(length) = header_str(headers, header::CONTENT_LENGTH.as_str())
        && length
            .parse::<u64>()
            .is_ok_and(|n| n > MAX_BODY_BYTES as u64)
    {
        return Err(too_large());
    }
    let read = async {
        let mut stream = body.into_data_stream();
        // A body that arrives in one chunk (the usual case) is kept as it is; only a body
        // in several chunks is copied into one buffer.
        let mut first: Option<Bytes> = None;
        let mut buffer = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "unreadable-body",
                    "Unreadable body",
                    "the request body could not be read",
                )
            })?;
            let held = first.as_ref().map_or(0, Bytes::len) + buffer.len();
            if held + chunk.len() > MAX_BODY_BYTES {
                return Err(too_large());
            }
            match first.take() {
                None if buffer.is_empty() => first = Some(chunk),
                earlier => {
                    if let Some(earlier) = earlier {
                        buffer.extend_from_slice(&earlier);
                    }
                    buffer.extend_from_slice(&chunk);
                }
            }
        }
        Ok(first.unwrap_or_else(|| Bytes::from(buffer)))
    };
    match tokio::time::timeout_at(deadline.into(), read).await {
        Ok(result) => result,
        Err(_) => Err(Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "Request timeout",
            "the request did not arrive in time",
        )),
    }
}

/// What authentication established about a request.
struct Verified {
    /// The notification id and replay key, from signed bytes only: the signed
    /// `webhook-id` (Standard Webhooks), else a digest of source and raw body.
    id: String,
    /// GitHub's `X-GitHub-Delivery`: validated (printable ASCII, at most 256 bytes) but
    /// not signed, so a label for logs only, never a key.
    delivery: Option<String>,
}

/// A signature header's value: `None` when absent, a problem when present but not
/// visible ASCII (which no scheme's header may be).
fn signature_header<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
) -> Result<Option<&'a str>, Problem> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value.to_str().map(Some).map_err(|_| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-header-value",
                "Invalid header value",
                format!("the `{name}` header is not visible ASCII"),
            )
        }),
    }
}

/// Authenticates the raw request and derives the notification id from what the
/// authentication covers:
///
/// - `standard-webhooks`: the `webhook-id`, which the signature covers
///   (`{id}.{timestamp}.{body}`);
/// - `github`: the signature covers the body only, so the id is
///   `gh_` + a digest of source and raw body; `X-GitHub-Delivery` is kept as a label;
/// - `path-secret` and `none`: nothing in the request is signed; the id is `wh_` + a
///   digest of source and raw body.
fn authenticate(
    source: &SourceConfig,
    headers: &HeaderMap,
    path_secret: Option<&str>,
    body: &[u8],
) -> Result<Verified, Problem> {
    let verified = match &source.auth {
        SourceAuth::StandardWebhooks {
            secrets,
            tolerance_secs,
        } => {
            let signed = SignedHeaders {
                id: signature_header(headers, signature::HEADER_ID)?,
                timestamp: signature_header(headers, signature::HEADER_TIMESTAMP)?,
                signature: signature_header(headers, signature::HEADER_SIGNATURE)?,
            };
            let id = signature::verify(secrets, signed, body, now_secs(), *tolerance_secs)
                .map_err(signature_problem)?;
            Verified {
                id: id.to_owned(),
                delivery: None,
            }
        }
        SourceAuth::Github { secrets } => {
            let signed = GithubHeaders {
                delivery: signature_header(headers, signature::HEADER_GITHUB_DELIVERY)?,
                signature: signature_header(headers, signature::HEADER_GITHUB_SIGNATURE)?,
            };
            let delivery =
                signature::verify_github(secrets, signed, body).map_err(signature_problem)?;
            Verified {
                id: github_id(&source.name, body),
                delivery: Some(delivery.to_owned()),
            }
        }
        SourceAuth::PathSecret { secrets } => {
            signature::verify_path_secret(secrets, path_secret).map_err(signature_problem)?;
            Verified {
                id: derived_id(&source.name, body),
                delivery: None,
            }
        }
        SourceAuth::None => Verified {
            id: derived_id(&source.name, body),
            delivery: None,
        },
    };
    Ok(verified)
}

fn unknown_source() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "unknown-source",
        "Unknown source",
        "no notification source has this name",
    )
}

async fn accept(
    state: &ReceiverState,
    source_name: &str,
    path_secret: Option<&str>,
    peer: Option<IpAddr>,
    request: Request,
    started: Instant,
) -> Result<Response, Problem> {
    let source = state.sources.get(source_name).ok_or_else(unknown_source)?;
    // Only `path-secret` sources have the two-segment path.
    if path_secret.is_some() && !matches!(source.config.auth, SourceAuth::PathSecret { .. }) {
        return Err(unknown_source());
    }
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    check_headers(headers)?;

    if !source.config.allowed_networks.is_empty() {
        let client = client_ip(peer, headers, state.settings.trust_forwarded_for);
        let allowed = client.is_some_and(|ip| network_allows(&source.config.allowed_networks, ip));
        if !allowed {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden-network",
                "Forbidden",
                "requests to this source are not accepted from this address",
            ));
        }
    }

    let taken = source
        .bucket
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take(Instant::now());
    if let Err(wait) = taken {
        return Err(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
            format!(
                "this source accepts {} notifications per second (bursts of {})",
                source.config.rate_limit.per_sec, source.config.rate_limit.burst
            ),
        )
        .retry_after(wait.as_secs_f64().ceil() as u64));
    }

    check_content_type(headers)?;
    let body = read_body(headers, body, started + state.settings.request_timeout).await?;
    let source = &source.config;
    let Verified { id, delivery } = authenticate(source, headers, path_secret, &body)?;

    let parsed = parse_payload(source.format, &body).map_err(|error| {
        let status = if error.is_syntax() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        Problem::new(
            status,
            error.cause(),
            "Invalid notification",
            error.to_string(),
        )
    })?;

    let (event_type, hint) = match parsed {
        Parsed::Ignored { event_type } => {
            state.stats.ignored.fetch_add(1, Ordering::Relaxed);
            state.metrics.notification(&source.name, "ignored", "");
            tracing::debug!(
                source = %source.name,
                event_type = %log_safe(&event_type, 64),
                "notification ignored"
            );
            return Ok((
                StatusCode::ACCEPTED,
                axum::Json(json!({"status": "ignored", "event_type": event_type})),
            )
                .into_response());
        }
        Parsed::Allocation { event_type, hint } => (event_type, hint),
    };

    let span = tracing::Span::current();
    span.record("id", id.as_str());
    crate::otel::join_notification_trace(&span, &id);
    let reservation = match state.replay.reserve(&source.name, &id, Instant::now()) {
        Reserve::Fresh(reservation) => reservation,
        Reserve::Duplicate => {
            state.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            state.metrics.notification(&source.name, "duplicate", "");
            tracing::info!(
                id = %id,
                delivery = delivery.as_deref(),
                source = %source.name,
                "duplicate notification not queued again"
            );
            return Ok((
                StatusCode::OK,
                axum::Json(json!({"status": "duplicate", "id": id})),
            )
                .into_response());
        }
        Reserve::InFlight => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "duplicate-in-flight",
                "Duplicate in flight",
                "a notification with this id is being queued right now; send it again later",
            )
            .retry_after(1));
        }
    };

    let item = WorkItem {
        id: id.clone(),
        source: source.name.clone(),
        event_type,
        hint,
        received_at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
    };
    // The publish and its bookkeeping run in their own task: if the client goes away the
    // handler is dropped, but the publish finishes and the replay cache learns its result.
    let publisher = state.publisher.clone();
    let metrics = state.metrics.clone();
    let window = source.replay_window;
    let published = tokio::spawn(
        async move {
            let publish_started = Instant::now();
            let result = publisher.publish(&item).await;
            if result.is_ok() {
                metrics.confirm(publish_started.elapsed());
                reservation.commit(Instant::now() + window);
            }
            result
        }
        .in_current_span(),
    )
    .await;
    let result = match published {
        Ok(result) => result,
        Err(_) => Err(PublishError::Unavailable),
    };
    if let Err(error) = result {
        tracing::warn!(id = %id, error = %error, "notification not queued");
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            match error {
                PublishError::Unavailable => "broker-unavailable",
                _ => "queue-refused",
            },
            "Temporarily unavailable",
            "the notification could not be queued; send it again later",
        )
        .retry_after(RETRY_AFTER_SECS));
    }
    state.stats.queued.fetch_add(1, Ordering::Relaxed);
    state.metrics.notification(&source.name, "accepted", "");
    tracing::info!(
        id = %id,
        delivery = delivery.as_deref(),
        source = %source.name,
        "notification queued"
    );
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"status": "queued", "id": id})),
    )
        .into_response())
}

fn signature_problem(error: VerifyError) -> Problem {
    let cause = match error {
        VerifyError::MissingHeader(_) => "missing-signature-header",
        VerifyError::MalformedId => "malformed-id",
        VerifyError::MalformedTimestamp => "malformed-timestamp",
        VerifyError::TimestampTooOld(_) | VerifyError::TimestampTooNew(_) => "stale-timestamp",
        VerifyError::SignatureHeaderTooLarge => "signature-header-too-large",
        VerifyError::MalformedSignature => "malformed-signature",
        VerifyError::NoMatchingSignature => "bad-signature",
        VerifyError::MissingPathSecret | VerifyError::BadPathSecret => "bad-path-secret",
    };
    Problem::new(
        StatusCode::UNAUTHORIZED,
        cause,
        "Authentication failed",
        error.to_string(),
    )
}

/// Where the HTTP layer's own refusals are counted, as the handler counts its: by cause in
/// [`ReceiverStats::refusals`], and in the notifications metric with source `unknown`.
#[derive(Clone)]
pub struct Counters {
    pub stats: Arc<ReceiverStats>,
    pub metrics: Arc<Metrics>,
}

/// Serves `router` on `listener` until `stop` fires, then lets every connection finish its
/// request in flight. Each connection is [`serve_connection`]'s.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    counters: Option<Counters>,
    header_timeout: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    tracing::warn!(error = %error, "cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        connections.spawn(serve_connection(
            stream,
            peer,
            router.clone(),
            counters.clone(),
            header_timeout,
            stop.clone(),
        ));
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Serves `router` on one connection from `peer` until it ends or `stop` fires
/// ([`crate::connection::serve`]: at most `header_timeout` and
/// [`crate::connection::MAX_HEAD_BYTES`] for the request head). What hyper refuses itself
/// (a malformed head, too many header lines, a head or target too long) is answered with
/// a [`Problem`] like the handler's (`400 malformed-request`, `431 headers-too-large`,
/// `414 uri-too-long`), counted into `counters` and logged with the peer and cause only.
pub async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    router: Router,
    counters: Option<Counters>,
    header_timeout: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(
        router.layer(axum::Extension(ConnectInfo(peer))),
    );
    let refuse: crate::connection::Refuse = Arc::new(move |status| {
        let problem = http_layer_refusal(status);
        if let Some(counters) = &counters {
            counters.stats.count_refusal(&problem);
            counters
                .metrics
                .notification("unknown", "rejected", problem.cause);
        }
        tracing::info!(
            peer = %peer.ip(),
            status = problem.status.as_u16(),
            cause = problem.cause,
            "request refused by the HTTP layer"
        );
        closing_answer(&problem)
    });
    crate::connection::serve(io, service, refuse, header_timeout, stop).await;
}

// The HTTP layer reads more than the handler accepts, so that the handler's own checks
// answer first wherever they can.
const _: () = assert!(
    crate::connection::MAX_HEADER_LINES > MAX_HEADERS
        && crate::connection::MAX_HEAD_BYTES >= crate::connection::MAX_URI_BYTES + MAX_HEADER_BYTES
);

/// The problem for a status hyper answered itself.
fn http_layer_refusal(status: u16) -> Problem {
    use crate::connection::{MAX_HEAD_BYTES, MAX_HEADER_LINES, MAX_URI_BYTES};
    match status {
        414 => Problem::new(
            StatusCode::URI_TOO_LONG,
            "uri-too-long",
            "URI too long",
            format!("the request target exceeds {MAX_URI_BYTES} bytes"),
        ),
        431 => Problem::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            "Request headers too large",
            format!(
                "at most {MAX_HEADER_LINES} header lines and {MAX_HEAD_BYTES} bytes of request line and headers are read"
            ),
        ),
        other => Problem::new(
            StatusCode::from_u16(other)
                .ok()
                .filter(StatusCode::is_client_error)
                .unwrap_or(StatusCode::BAD_REQUEST),
            "malformed-request",
            "Malformed request",
            "the request line, a header or the message framing is not valid HTTP/1.1",
        ),
    }
}

/// `problem` as a whole HTTP/1.1 answer that closes the connection.
fn closing_answer(problem: &Problem) -> Vec<u8> {
    let body = problem.json().to_string();
    let mut bytes = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        problem.status.as_u16(),
        problem.status.canonical_reason().unwrap_or(""),
        body.len(),
    )
    .into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_str(value).expect("header"),
        );
        headers
    }

    #[test]
    fn takes_the_client_address_from_trusted_proxies_only() {
        let peer: Option<IpAddr> = "10.0.0.1".parse().ok();
        let headers = forwarded("203.0.113.9, 198.51.100.7, 192.0.2.1");
        assert_eq!(client_ip(peer, &headers, 0), peer);
        assert_eq!(client_ip(peer, &headers, 1), "192.0.2.1".parse().ok());
        assert_eq!(client_ip(peer, &headers, 2), "198.51.100.7".parse().ok());
        assert_eq!(client_ip(peer, &headers, 4), None);
        assert_eq!(client_ip(peer, &HeaderMap::new(), 1), None);
        assert_eq!(client_ip(peer, &forwarded("not-an-ip"), 1), None);
    }

    #[test]
    fn an_ipv4_mapped_client_matches_ipv4_networks() {
        let networks: Vec<ipnet::IpNet> = ["192.0.2.0/24", "2001:db8::/32"]
            .iter()
            .map(|n| n.parse().expect("network"))
            .collect();
        let mapped: IpAddr = "::ffff:192.0.2.10".parse().expect("address");
        assert!(network_allows(&networks, mapped));
        assert!(network_allows(&networks, "192.0.2.10".parse().expect("ip")));
        assert!(network_allows(
            &networks,
            "2001:db8::1".parse().expect("ip")
        ));
        assert!(!network_allows(
            &networks,
            "::ffff:198.51.100.1".parse().expect("ip")
        ));
        assert!(!network_allows(
            &networks,
            "::c000:20a".parse().expect("ip")
        ));
        // A network written in the mapped form still matches both forms.
        let mapped_net: Vec<ipnet::IpNet> = vec!["::ffff:192.0.2.0/120".parse().expect("net")];
        assert!(network_allows(&mapped_net, mapped));
        assert!(network_allows(
            &mapped_net,
            "192.0.2.10".parse().expect("ip")
        ));
        // The peer and a trusted `X-Forwarded-For` hop come out as IPv4.
        let v4: Option<IpAddr> = "192.0.2.10".parse().ok();
        assert_eq!(client_ip(Some(mapped), &HeaderMap::new(), 0), v4);
        assert_eq!(
            client_ip(None, &forwarded("::ffff:192.0.2.10, 10.0.0.1"), 2),
            v4
        );
    }

    #[test]
    fn log_safe_escapes_caps_and_cuts_at_a_slash() {
        assert_eq!(log_safe("relay", 24), "relay");
        assert_eq!(log_safe("\nforged\u{1b}[31m", 24), "%0Aforged%1B%5B31m");
        assert_eq!(
            log_safe("waldur/waldur-path-secret-0123456789", 24),
            "waldur/…"
        );
        assert_eq!(log_safe(&"a".repeat(40), 24), "…(40 bytes)");
        assert_eq!(log_safe(&"a".repeat(24), 24), "a".repeat(24));
        assert_eq!(log_safe("é \"=%", 24), "%C3%A9%20%22%3D%25");
        assert_eq!(log_safe("\u{7f}\u{9b}x", 24), "%7F%C2%9Bx");
        for long in ["\u{7f}\u{9b}\n".repeat(20), "\u{1b}".repeat(25)] {
            assert!(!log_safe(&long, 24).chars().any(char::is_control));
        }
    }

    #[test]
    fn the_http_layers_refusals_are_problems_with_their_cause() {
        for (status, cause) in [
            (400, "malformed-request"),
            (414, "uri-too-long"),
            (431, "headers-too-large"),
        ] {
            let problem = http_layer_refusal(status);
            assert_eq!(problem.status.as_u16(), status);
            assert_eq!(problem.cause, cause);
            let text = String::from_utf8(closing_answer(&problem)).expect("utf-8");
            let (head, body) = text.split_once("\r\n\r\n").expect("a head");
            assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
            assert!(head.contains("\r\ncontent-type: application/problem+json\r\n"));
            assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())));
            assert!(head.ends_with("\r\nconnection: close"), "{head}");
            let json: serde_json::Value = serde_json::from_str(body).expect("json");
            assert_eq!(json["type"], problem_type(cause).as_str());
        }
    }

    #[test]
    fn counts_refusals_by_cause() {
        let stats = ReceiverStats::default();
        let refusal = Problem::new(StatusCode::UNAUTHORIZED, "bad-signature", "t", "d");
        stats.count_refusal(&refusal);
        stats.count_refusal(&refusal);
        stats.count_refusal(&Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker-unavailable",
            "t",
            "d",
        ));
        assert_eq!(
            stats.refusals(),
            vec![("bad-signature", 2), ("broker-unavailable", 1)]
        );
        assert_eq!(stats.refused.load(Ordering::Relaxed), 2);
        assert_eq!(stats.unavailable.load(Ordering::Relaxed), 1);
    }
}
