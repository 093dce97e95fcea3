//! The Puhuri Core (Waldur) client for the service-provider side.
//!
//! Speaks both API generations ([`ApiGeneration`]): the current one, where the provider
//! approves or rejects the *order*, and the 2021 one, where it changes the *resource's*
//! state. Every call has a timeout; every failure is classified as [`PuhuriError::Transient`]
//! (try again later), [`PuhuriError::Conflict`] (the allocation changed state: re-fetch),
//! [`PuhuriError::Unauthorized`] (the token is refused: no call can succeed until it is
//! replaced) or [`PuhuriError::Permanent`] (this request can never succeed).
//!
//! At most `max_in_flight` calls are open at once per client and its clones (a semaphore,
//! held until the answer's body is read); `Retry-After` is read in seconds or as an
//! HTTP date.
//!
//! INVARIANT: the token is sent only in the `Authorization` header and never appears in
//! an error or a log line. Every path ends with `/` (Waldur answers 301 otherwise and a
//! followed POST loses its body).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use tracing::Instrument;

pub mod events;
pub mod ids;
pub mod probe;
pub mod states;

pub use events::EventChannel;
pub use ids::{AllocationHint, InvalidUuid, OrderUuid, ResourceUuid, WaldurUuid};
pub use probe::{Me, OfferingSummary, Permission};
pub use states::{OrderState, OrderType, ResourceState};

/// Which generation of Waldur's provider API the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiGeneration {
    /// Current Waldur: orders are approved or rejected (`approve_by_provider`).
    Orders,
    /// The 2021 API: resources change state (`set_state_by_provider`).
    Resources,
}

impl ApiGeneration {
    /// The name used in the configuration (`puhuri.api`).
    pub fn name(self) -> &'static str {
        match self {
            ApiGeneration::Orders => "orders",
            ApiGeneration::Resources => "resources",
        }
    }
}

impl std::fmt::Display for ApiGeneration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where Puhuri Core is and how to talk to it. The token is given to [`PuhuriClient::new`]
/// apart, so that this can be printed.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The API base, ending in `/api/`.
    pub url: String,
    pub api: ApiGeneration,
    /// Per call, connect included.
    pub timeout: Duration,
}

/// Told of every call the client makes: its operation, the HTTP status (`None` when no
/// answer came) and how long it took. The service counts them in its metrics.
pub trait CallObserver: Send + Sync {
    fn observe(&self, operation: &'static str, status: Option<u16>, elapsed: Duration);
    /// A call found every slot taken and waited this long for one.
    fn waited_for_slot(&self, _waited: Duration) {}
    /// How many calls are open now (after one started or ended).
    fn in_flight(&self, _open: usize) {}
}

/// Concurrent calls per client when nothing else is configured.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;

/// A section of the access report shown to an allocation's users (`submit_report`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct ReportSection {
    pub header: String,
    pub body: String,
}

/// How a caller names a resource: by its uuid or by the provider's `backend_id`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceRef {
    Uuid(WaldurUuid),
    BackendId(String),
}

impl std::fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResourceRef::Uuid(u) => write!(f, "resource {u}"),
            ResourceRef::BackendId(b) => write!(f, "backend_id {b}"),
        }
    }
}

/// Why [`PuhuriClient::find_resource`] found no single resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotFound {
    #[error("no allocation has uuid {0} (or this token may not see it)")]
    Uuid(WaldurUuid),
    #[error("no allocation has backend_id `{0}` (or this token may not see it)")]
    BackendId(String),
    #[error("{count} allocations have backend_id `{backend_id}`; name it by its uuid")]
    Ambiguous { backend_id: String, count: usize },
}

/// One member of an allocation's project, as Puhuri Core's `team/` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct TeamMember {
    pub uuid: String,
    pub username: String,
    #[serde(default)]
    pub full_name: String,
    #[serde(default)]
    pub email: String,
    /// `admin`, `manager` or `member`.
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub expiration_time: Option<String>,
    /// The member's account name on this provider's offering, once one is set.
    #[serde(default)]
    pub offering_user_username: Option<String>,
}

/// An approved allocation as a resource list names it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct ResourceSummary {
    pub resource_uuid: String,
    pub backend_id: Option<String>,
    pub project_uuid: Option<String>,
    pub project_name: Option<String>,
    pub offering_uuid: Option<String>,
}

/// The numeric entries of a `limits` object, per component (others are left out).
pub fn numeric_limits(limits: &Map<String, Value>) -> BTreeMap<String, f64> {
    limits
        .iter()
        .filter_map(|(k, v)| v.as_f64().map(|v| (k.clone(), v)))
        .collect()
}

/// An allocation the provider granted already: its project and its limits.
#[derive(Debug, Clone, PartialEq)]
pub struct GrantedResource {
    pub uuid: String,
    pub project_uuid: Option<String>,
    pub limits: BTreeMap<String, f64>,
}

/// How a Puhuri Core call failed, by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum PuhuriError {
    #[error("{operation}: temporary failure: {detail}")]
    Transient {
        operation: &'static str,
        detail: String,
        retry_after: Option<Duration>,
    },
    #[error("{operation}: conflict with the allocation's current state: {detail}")]
    Conflict {
        operation: &'static str,
        detail: String,
    },
    /// 401: the token is missing, invalid or expired. Nothing this token asks can
    /// succeed until it is replaced; not a property of the allocation.
    #[error("{operation}: Puhuri Core refused the token (401): {detail}")]
    Unauthorized {
        operation: &'static str,
        detail: String,
    },
    #[error("{operation}: refused ({status}): {detail}")]
    Permanent {
        operation: &'static str,
        status: u16,
        detail: String,
    },
    /// The call cannot be made or its answer cannot be used, whatever the server does
    /// next: the allocation lacks what the call needs (no creation order, no organisation).
    #[error("{operation}: {detail}")]
    Unusable {
        operation: &'static str,
        detail: String,
    },
}

impl PuhuriError {
    pub fn is_transient(&self) -> bool {
        matches!(self, PuhuriError::Transient { .. })
    }

    /// Whether the token was refused (401).
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, PuhuriError::Unauthorized { .. })
    }
}

/// An order as Puhuri Core renders it (the fields used here).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Order {
    pub uuid: String,
    #[serde(rename = "type")]
    pub order_type: OrderType,
    pub state: OrderState,
    pub marketplace_resource_uuid: Option<String>,
    pub resource_name: Option<String>,
    pub offering_uuid: Option<String>,
    pub offering_name: Option<String>,
    pub offering_type: Option<String>,
    pub project_uuid: Option<String>,
    pub project_name: Option<String>,
    pub project_slug: Option<String>,
    pub customer_uuid: Option<String>,
    pub customer_name: Option<String>,
    pub customer_slug: Option<String>,
    pub provider_uuid: Option<String>,
    pub provider_name: Option<String>,
    pub plan_uuid: Option<String>,
    pub plan_name: Option<String>,
    pub limits: Option<Map<String, Value>>,
    pub attributes: Option<Map<String, Value>>,
    pub created: Option<String>,
    pub created_by_username: Option<String>,
    pub created_by_full_name: Option<String>,
    /// The provider's rejection comment, on servers that keep it (8.0.3 and later).
    pub provider_rejection_comment: Option<String>,
}

/// A consumer organisation as its provider sees it in
/// `GET /api/marketplace-service-providers/{uuid}/customers/` (the fields used here).
/// The organisation's own record (`/api/customers/{uuid}/`) is not visible to a
/// provider, and no provider-visible endpoint has its country.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct ProviderCustomer {
    pub uuid: String,
    pub name: Option<String>,
    pub abbreviation: Option<String>,
}

/// A service provider as `GET /api/marketplace-service-providers/` renders it.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
struct ServiceProvider {
    uuid: String,
}

/// The offering type whose orders take `set_state_erred` from a provider
/// (`OfferingTypeValidator(SLURM_REMOTE_PLUGIN_NAME)`); any other type answers 405.
pub const SLURM_OFFERING_TYPE: &str = "Marketplace.Slurm";

/// How a policy's `erred` is written, given what the server allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErredWrite {
    /// 2021 API: `set_state_by_provider` `{"state": "erred"}`.
    ResourceState,
    /// Current API, `Marketplace.Slurm` offering: the order's `set_state_erred`.
    OrderErred,
    /// Current API, any other offering type: the order's `reject_by_provider` with the
    /// message as the comment (the only provider-side way to close the request).
    Reject,
}

impl ErredWrite {
    /// What the allocation becomes: `erred` or `rejected`.
    pub fn written_as(self) -> &'static str {
        match self {
            ErredWrite::ResourceState | ErredWrite::OrderErred => "erred",
            ErredWrite::Reject => "rejected",
        }
    }

    /// Whether `backend_id` is set before the write: a `Creating` resource that fails
    /// with one stays `Erred` rather than `Terminated`. A reject needs none.
    pub fn sets_backend_id(self) -> bool {
        self != ErredWrite::Reject
    }
}

/// A marketplace resource as Puhuri Core renders it (the fields used here).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Resource {
    pub uuid: String,
    pub name: Option<String>,
    pub slug: Option<String>,
    pub state: ResourceState,
    pub backend_id: Option<String>,
    pub attributes: Option<Map<String, Value>>,
    pub limits: Option<Map<String, Value>>,
    pub offering_uuid: Option<String>,
    pub offering_name: Option<String>,
    pub offering_type: Option<String>,
    pub plan_uuid: Option<String>,
    pub plan_name: Option<String>,
    pub provider_uuid: Option<String>,
    pub provider_name: Option<String>,
    pub project_uuid: Option<String>,
    pub project_name: Option<String>,
    pub project_slug: Option<String>,
    pub project_end_date: Option<String>,
    pub customer_uuid: Option<String>,
    pub customer_name: Option<String>,
    pub customer_slug: Option<String>,
    pub created: Option<String>,
    pub end_date: Option<String>,
    /// The access report shown to the allocation's users (a list of sections).
    #[serde(default)]
    pub report: Option<Value>,
    /// The message of the erred state, when one was given.
    pub error_message: Option<String>,
    pub creation_order: Option<Order>,
}

/// An allocation as re-fetched: its resource and, when known, its creation order.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub resource: Resource,
    pub order: Option<Order>,
}

/// Whether an allocation still waits for the provider's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// It waits: decide now.
    Yes,
    /// It has been decided already (by us, a human or another replica).
    AlreadyHandled(String),
    /// It is not yet at the provider (the consumer or project still has to approve).
    NotYet(String),
}

impl Fetched {
    /// Reads the state machine of the given API generation.
    pub fn waiting(&self, api: ApiGeneration) -> Waiting {
        match api {
            ApiGeneration::Resources => {
                if self.resource.state == ResourceState::Creating {
                    Waiting::Yes
                } else {
                    Waiting::AlreadyHandled(format!("resource is {}", self.resource.state))
                }
            }
            ApiGeneration::Orders => {
                let Some(order) = &self.order else {
                    return Waiting::AlreadyHandled("resource has no creation order".into());
                };
                match &order.state {
                    OrderState::PendingProvider
                        if self.resource.state == ResourceState::Creating =>
                    {
                        Waiting::Yes
                    }
                    OrderState::PendingProvider => {
                        Waiting::AlreadyHandled(format!("resource is {}", self.resource.state))
                    }
                    OrderState::PendingConsumer | OrderState::PendingProject => {
                        Waiting::NotYet(format!("order is {}", order.state))
                    }
                    other => Waiting::AlreadyHandled(format!("order is {other}")),
                }
            }
        }
    }
}

/// A successful answer, read whole.
struct Answer {
    status: u16,
    headers: HeaderMap,
    bytes: Vec<u8>,
}

impl Answer {
    fn json<T: DeserializeOwned>(&self, operation: &'static str) -> Result<T, PuhuriError> {
        serde_json::from_slice(&self.bytes).map_err(|error| PuhuriError::Transient {
            operation,
            detail: format!("unreadable response: {error}"),
            retry_after: None,
        })
    }
}

/// How long `Retry-After` asks to wait: delay-seconds or an HTTP date (RFC 9110); a
/// date in the past is no wait.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// One page of a list, with the URL of the next page if any.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
    pub total: Option<u64>,
}

/// Allocations per page of [`PuhuriClient::pending_page`].
pub const PENDING_PAGE_SIZE: u64 = 100;

/// The client. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct PuhuriClient {
    http: reqwest::Client,
    /// `Token <token>`, marked sensitive; replaced by [`PuhuriClient::set_token`].
    auth: Arc<RwLock<HeaderValue>>,
    slots: Arc<Slots>,
    base: String,
    /// `base` parsed once: a call's URL is joined to it (its path alone is parsed, not
    /// the host again).
    base_url: Option<reqwest::Url>,
    /// Shared by clones: the start-up probe may set it once the server answered.
    api: Arc<std::sync::atomic::AtomicBool>,
    observer: Option<std::sync::Arc<dyn CallObserver>>,
}

/// The cap on concurrent calls.
struct Slots {
    semaphore: tokio::sync::Semaphore,
    max: usize,
}

fn auth_header(token: &str) -> Result<HeaderValue, BuildError> {
    let mut auth = HeaderValue::from_str(&format!("Token {token}"))
        .map_err(|_| BuildError::TokenNotAHeader)?;
    auth.set_sensitive(true);
    Ok(auth)
}

impl std::fmt::Debug for PuhuriClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PuhuriClient")
            .field("base", &self.base)
            .field("api", &self.api())
            .field("max_in_flight", &self.slots.max)
            .finish()
    }
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "cannot build the Puhuri Core client: the token contains characters not allowed in a header"
    )]
    TokenNotAHeader,
    #[error("cannot build the Puhuri Core client")]
    Http(#[source] reqwest::Error),
}

impl PuhuriClient {
    /// A client for `config.url` authenticating with `token` (sent only in the
    /// `Authorization` header, marked sensitive).
    pub fn new(config: &ClientConfig, token: &str) -> Result<PuhuriClient, BuildError> {
        let auth = auth_header(token)?;
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(64)
            .user_agent(concat!("puhuri-approver/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(BuildError::Http)?;
        Ok(PuhuriClient {
            http,
            auth: Arc::new(RwLock::new(auth)),
            slots: Arc::new(Slots {
                semaphore: tokio::sync::Semaphore::new(DEFAULT_MAX_IN_FLIGHT),
                max: DEFAULT_MAX_IN_FLIGHT,
            }),
            base: config.url.clone(),
            base_url: reqwest::Url::parse(&config.url).ok(),
            api: Arc::new(std::sync::atomic::AtomicBool::new(
                config.api == ApiGeneration::Resources,
            )),
            observer: None,
        })
    }

    /// Caps the calls open at once (at least 1) for this client and its clones made from
    /// now on.
    pub fn with_max_in_flight(mut self, max: usize) -> Self {
        let max = max.max(1);
        self.slots = Arc::new(Slots {
            semaphore: tokio::sync::Semaphore::new(max),
            max,
        });
        self
    }

    /// The cap on calls open at once.
    pub fn max_in_flight(&self) -> usize {
        self.slots.max
    }

    /// Uses `token` from the next call on, in this client and every clone.
    pub fn set_token(&self, token: &str) -> Result<(), BuildError> {
        let auth = auth_header(token)?;
        *self
            .auth
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = auth;
        Ok(())
    }

    /// Tells `observer` of every call (by operation and status) and its latency.
    pub fn with_observer(mut self, observer: std::sync::Arc<dyn CallObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    fn record(
        &self,
        operation: &'static str,
        status: Option<StatusCode>,
        started: std::time::Instant,
    ) {
        let elapsed = started.elapsed();
        // Runs inside the caller's span (a notification's id, or the reconcile cycle).
        tracing::debug!(
            operation,
            status = status.map(|s| s.as_u16()),
            elapsed_ms = elapsed.as_millis() as u64,
            "Puhuri Core call"
        );
        if let Some(observer) = &self.observer {
            observer.observe(operation, status.map(|s| s.as_u16()), elapsed);
        }
    }

    pub fn api(&self) -> ApiGeneration {
        if self.api.load(std::sync::atomic::Ordering::Relaxed) {
            ApiGeneration::Resources
        } else {
            ApiGeneration::Orders
        }
    }

    /// Speaks `api` from now on, in this client and every clone.
    pub fn set_api(&self, api: ApiGeneration) {
        self.api.store(
            api == ApiGeneration::Resources,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `url` parsed by joining its path to the parsed base, when it is the base followed
    /// by a plain relative path; `None` leaves it to be parsed whole.
    fn joined(&self, url: &str) -> Option<reqwest::Url> {
        let path = url.strip_prefix(self.base.as_str())?;
        let plain = path
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && !path
                .split('/')
                .next()
                .is_some_and(|first| first.contains(':'));
        if !plain || !self.base.ends_with('/') {
            return None;
        }
        self.base_url.as_ref()?.join(path).ok()
    }

    /// Makes one call within a slot, reading the whole answer before the slot is freed.
    async fn call(
        &self,
        operation: &'static str,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Answer, PuhuriError> {
        let permit =
            match self.slots.semaphore.try_acquire() {
                Ok(permit) => permit,
                Err(_) => {
                    let waiting = std::time::Instant::now();
                    let permit = self.slots.semaphore.acquire().await.map_err(|_| {
                        PuhuriError::Transient {
                            operation,
                            detail: "the client is closed".into(),
                            retry_after: None,
                        }
                    })?;
                    if let Some(observer) = &self.observer {
                        observer.waited_for_slot(waiting.elapsed());
                    }
                    permit
                }
            };
        self.note_in_flight();
        let answer = self.call_in_slot(operation, method, url, body).await;
        drop(permit);
        self.note_in_flight();
        answer
    }

    fn note_in_flight(&self) {
        if let Some(observer) = &self.observer {
            observer.in_flight(self.slots.max - self.slots.semaphore.available_permits());
        }
    }

    async fn call_in_slot(
        &self,
        operation: &'static str,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Answer, PuhuriError> {
        let auth = self
            .auth
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let request = match self.joined(url) {
            Some(joined) => self.http.request(method, joined),
            None => self.http.request(method, url),
        };
        let mut request = request.header(AUTHORIZATION, auth);
        if let Some(body) = body {
            request = request.json(body);
        }
        let started = std::time::Instant::now();
        let span = tracing::info_span!("puhuri", operation, status = tracing::field::Empty);
        let sent = request.send().instrument(span.clone()).await;
        if let Ok(response) = &sent {
            // Signed: OpenTelemetry attributes have no unsigned integers.
            span.record("status", i64::from(response.status().as_u16()));
        }
        let mut response = sent.map_err(|error| {
            self.record(operation, None, started);
            PuhuriError::Transient {
                operation,
                detail: describe_reqwest_error(&error),
                retry_after: None,
            }
        })?;
        let status = response.status();
        // Taken, not copied: the body is read without them.
        let headers = std::mem::take(response.headers_mut());
        if status.is_success() {
            let bytes = response.bytes().await;
            self.record(operation, Some(status), started);
            let bytes = bytes.map_err(|error| PuhuriError::Transient {
                operation,
                detail: format!("unreadable response: {}", describe_reqwest_error(&error)),
                retry_after: None,
            })?;
            return Ok(Answer {
                status: status.as_u16(),
                headers,
                // Not copied when the body arrived in one piece.
                bytes: Vec::from(bytes),
            });
        }
        self.record(operation, Some(status), started);
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
        let text = response.text().await.unwrap_or_default();
        let detail = summarize_body(status, &text);
        Err(classify(operation, status, detail, &text, retry_after))
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        path: &str,
    ) -> Result<T, PuhuriError> {
        self.call(operation, Method::GET, &self.url(path), None)
            .await?
            .json(operation)
    }

    /// A write; its answer's body is not read into a value (no caller uses it).
    async fn post(
        &self,
        operation: &'static str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(), PuhuriError> {
        self.call(operation, Method::POST, &self.url(path), body.as_ref())
            .await
            .map(drop)
    }

    /// The provider's view of resources in this API generation.
    fn resources_path(&self) -> &'static str {
        match self.api() {
            ApiGeneration::Orders => "marketplace-provider-resources/",
            ApiGeneration::Resources => "marketplace-resources/",
        }
    }

    fn resource_path(&self, uuid: &str) -> String {
        format!("{}{uuid}/", self.resources_path())
    }

    pub async fn get_order(&self, uuid: &OrderUuid) -> Result<Order, PuhuriError> {
        self.get_json("get order", &format!("marketplace-orders/{uuid}/"))
            .await
    }

    pub async fn get_resource(&self, uuid: &str) -> Result<Resource, PuhuriError> {
        self.get_json("get resource", &self.resource_path(uuid))
            .await
    }

    /// Re-fetches an allocation from whatever the notification named.
    pub async fn fetch_allocation(&self, hint: &AllocationHint) -> Result<Fetched, PuhuriError> {
        let mut order = None;
        let resource_uuid = match (&hint.resource_uuid, &hint.order_uuid) {
            (Some(resource), _) => resource.to_string(),
            (None, Some(order_uuid)) => {
                let fetched = self.get_order(order_uuid).await?;
                let Some(resource) = fetched.marketplace_resource_uuid.clone() else {
                    return Err(PuhuriError::Unusable {
                        operation: "get order",
                        detail: format!("order {order_uuid} names no marketplace resource"),
                    });
                };
                order = Some(fetched);
                resource
            }
            (None, None) => {
                return Err(PuhuriError::Unusable {
                    operation: "fetch allocation",
                    detail: "the hint names no allocation".into(),
                });
            }
        };
        let mut resource = self.get_resource(&resource_uuid).await?;
        let order = match (order, resource.creation_order.take()) {
            (Some(order), _) => Some(order),
            (None, Some(creation)) => Some(creation),
            (None, None) => match &hint.order_uuid {
                Some(order_uuid) => Some(self.get_order(order_uuid).await?),
                None => None,
            },
        };
        Ok(Fetched { resource, order })
    }

    /// Sets the provider's reference. Idempotent in Waldur: the same value answers 200.
    pub async fn set_backend_id(
        &self,
        resource_uuid: &str,
        backend_id: &str,
    ) -> Result<(), PuhuriError> {
        let path = format!("{}set_backend_id/", self.resource_path(resource_uuid));
        self.post(
            "set backend_id",
            &path,
            Some(json!({ "backend_id": backend_id })),
        )
        .await
        .map(drop)
    }

    /// The service provider record of the provider organisation `provider_uuid` (the
    /// `provider_uuid` of orders and resources); `None` when there is none.
    pub async fn service_provider_uuid(
        &self,
        provider_uuid: &WaldurUuid,
    ) -> Result<Option<String>, PuhuriError> {
        let url = self.query_url(
            "marketplace-service-providers/",
            &[
                ("customer_uuid", &provider_uuid.to_string()),
                ("field", "uuid"),
            ],
        );
        let page: Page<ServiceProvider> = self.list_page(&url).await?;
        Ok(page.items.into_iter().next().map(|sp| sp.uuid))
    }

    /// The organisations with allocations of the provider's offerings, with their
    /// abbreviations (`marketplace-service-providers/{uuid}/customers/`, every page).
    pub async fn provider_customers(
        &self,
        service_provider_uuid: &str,
    ) -> Result<Vec<ProviderCustomer>, PuhuriError> {
        let sp = WaldurUuid::parse(service_provider_uuid).ok_or_else(|| PuhuriError::Unusable {
            operation: "provider customers",
            detail: "the service provider uuid is not a uuid".into(),
        })?;
        let url = self.query_url(
            &format!("marketplace-service-providers/{sp}/customers/"),
            &[("page_size", "100")],
        );
        Ok(self.list_all(url).await?.0)
    }

    /// Submits the access report shown to the allocation's users.
    pub async fn submit_report(
        &self,
        resource_uuid: &str,
        sections: &[ReportSection],
    ) -> Result<(), PuhuriError> {
        self.post(
            "submit report",
            &format!("{}submit_report/", self.resource_path(resource_uuid)),
            Some(json!({ "report": sections })),
        )
        .await
        .map(drop)
    }

    /// Approves: the order (current API) or the resource's state `ok` (2021 API).
    pub async fn approve(&self, fetched: &Fetched) -> Result<(), PuhuriError> {
        match self.api() {
            ApiGeneration::Orders => {
                let order = order_uuid(fetched, "approve")?;
                self.post(
                    "approve",
                    &format!("marketplace-orders/{order}/approve_by_provider/"),
                    None,
                )
                .await
                .map(drop)
            }
            ApiGeneration::Resources => self.set_state(&fetched.resource.uuid, "ok").await,
        }
    }

    /// Rejects with a comment. The 2021 API has no comment: the resource is terminated.
    pub async fn reject(&self, fetched: &Fetched, comment: &str) -> Result<(), PuhuriError> {
        match self.api() {
            ApiGeneration::Orders => {
                let order = order_uuid(fetched, "reject")?;
                self.post(
                    "reject",
                    &format!("marketplace-orders/{order}/reject_by_provider/"),
                    Some(json!({ "provider_rejection_comment": comment })),
                )
                .await
                .map(drop)
            }
            ApiGeneration::Resources => self.set_state(&fetched.resource.uuid, "terminated").await,
        }
    }

    /// How `erred` is written for this allocation: the 2021 API has a resource state for
    /// it; the current API lets a provider err only the order of a `Marketplace.Slurm`
    /// offering (405 otherwise; provider-resource `set_as_erred` is staff-only in 7.0 and
    /// never closes the order), so any other offering's request is rejected instead.
    pub fn erred_write(&self, fetched: &Fetched) -> ErredWrite {
        if self.api() == ApiGeneration::Resources {
            return ErredWrite::ResourceState;
        }
        let offering_type = fetched
            .resource
            .offering_type
            .as_deref()
            .filter(|t| !t.is_empty())
            .or_else(|| {
                fetched
                    .order
                    .as_ref()
                    .and_then(|o| o.offering_type.as_deref())
            });
        if offering_type == Some(SLURM_OFFERING_TYPE) {
            ErredWrite::OrderErred
        } else {
            ErredWrite::Reject
        }
    }

    /// Writes `erred` as [`PuhuriClient::erred_write`] says (callers set `backend_id`
    /// first when [`ErredWrite::sets_backend_id`]); returns what was written.
    pub async fn set_erred(
        &self,
        fetched: &Fetched,
        message: &str,
    ) -> Result<ErredWrite, PuhuriError> {
        let write = self.erred_write(fetched);
        match write {
            ErredWrite::ResourceState => self.set_state(&fetched.resource.uuid, "erred").await?,
            ErredWrite::OrderErred => {
                let order = order_uuid(fetched, "set erred")?;
                self.post(
                    "set erred",
                    &format!("marketplace-orders/{order}/set_state_erred/"),
                    Some(json!({ "error_message": message, "error_traceback": "" })),
                )
                .await?;
            }
            ErredWrite::Reject => self.reject(fetched, message).await?,
        }
        Ok(write)
    }

    async fn set_state(&self, resource_uuid: &str, state: &str) -> Result<(), PuhuriError> {
        self.post(
            "set state",
            &format!("marketplace-resources/{resource_uuid}/set_state_by_provider/"),
            Some(json!({ "state": state })),
        )
        .await
        .map(drop)
    }

    /// One page of a list endpoint. `path` is relative to the API base, with its query.
    pub async fn list_page<T: DeserializeOwned>(&self, url: &str) -> Result<Page<T>, PuhuriError> {
        let url = if url.starts_with("http://") || url.starts_with("https://") {
            url.to_owned()
        } else {
            self.url(url)
        };
        let response = self.call("list", Method::GET, &url, None).await?;
        let next = response
            .headers
            .get(reqwest::header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| link_with_rel(v, "next"));
        let total = response
            .headers
            .get("x-result-count")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let items = response.json::<Vec<T>>("list")?;
        Ok(Page { items, next, total })
    }

    /// Every allocation waiting for the provider, on one offering or (`None`) on all the
    /// token can see, following `Link: rel="next"` with field selection to keep the calls
    /// cheap. Returns the hints and the number of calls made.
    pub async fn list_pending(
        &self,
        offering_uuid: Option<&str>,
    ) -> Result<(Vec<AllocationHint>, usize), PuhuriError> {
        let mut url = Some(self.pending_list_url(offering_uuid));
        let mut hints = Vec::new();
        let mut calls = 0;
        while let Some(current) = url.take() {
            let page = self.pending_page(&current).await?;
            calls += 1;
            hints.extend(page.items);
            url = page.next.filter(|_| calls < 100_000);
        }
        Ok((hints, calls))
    }

    /// The first page of the allocations waiting for the provider, on one offering or
    /// (`None`) on all the token can see; [`PuhuriClient::pending_page`] reads it and
    /// names the next one.
    pub fn pending_list_url(&self, offering_uuid: Option<&str>) -> String {
        let offering = offering_uuid
            .map(|o| format!("&offering_uuid={o}"))
            .unwrap_or_default();
        match self.api() {
            ApiGeneration::Orders => format!(
                "marketplace-orders/?state=pending-provider&type=Create\
                 &page_size={PENDING_PAGE_SIZE}{offering}&field=uuid&field=marketplace_resource_uuid"
            ),
            ApiGeneration::Resources => {
                format!(
                    "marketplace-resources/?state=Creating&page_size={PENDING_PAGE_SIZE}{offering}&field=uuid"
                )
            }
        }
    }

    /// Page `page` (from 1) of the allocations waiting for the provider, of
    /// [`PENDING_PAGE_SIZE`] each; see [`PuhuriClient::pending_list_url`].
    pub fn pending_page_url(&self, offering_uuid: Option<&str>, page: u64) -> String {
        format!("{}&page={page}", self.pending_list_url(offering_uuid))
    }

    /// One page of waiting allocations (a URL from [`PuhuriClient::pending_list_url`] or
    /// a previous page's `next`).
    pub async fn pending_page(&self, url: &str) -> Result<Page<AllocationHint>, PuhuriError> {
        let page: Page<Value> = self.list_page(url).await?;
        let mut hints = Vec::new();
        for item in page.items {
            let uuid = item
                .get("uuid")
                .and_then(Value::as_str)
                .and_then(WaldurUuid::parse);
            let hint = match self.api() {
                ApiGeneration::Orders => AllocationHint {
                    order_uuid: uuid.map(OrderUuid::from),
                    resource_uuid: item
                        .get("marketplace_resource_uuid")
                        .and_then(Value::as_str)
                        .and_then(ResourceUuid::parse),
                },
                ApiGeneration::Resources => AllocationHint {
                    order_uuid: None,
                    resource_uuid: uuid.map(ResourceUuid::from),
                },
            };
            if hint.order_uuid.is_some() || hint.resource_uuid.is_some() {
                hints.push(hint);
            }
        }
        Ok(Page {
            items: hints,
            next: page.next,
            total: page.total,
        })
    }
}

/// A component of an offering, as far as usage reporting needs it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OfferingComponent {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub billing_type: String,
}

impl OfferingComponent {
    /// Current Waldur takes usage for components billed by usage or by limit; the 2021
    /// API only for those billed by usage.
    pub fn takes_usage(&self, api: ApiGeneration) -> bool {
        match api {
            ApiGeneration::Orders => matches!(self.billing_type.as_str(), "usage" | "limit"),
            ApiGeneration::Resources => self.billing_type == "usage",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct OfferingDetail {
    #[serde(default)]
    components: Vec<OfferingComponent>,
}

/// A stored usage of one component in one billing month.
#[derive(Debug, Clone, Deserialize)]
pub struct ComponentUsage {
    pub uuid: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Decimal, rendered as a string (`"12.50"`).
    pub usage: Value,
    #[serde(default)]
    pub description: String,
}

/// One user's share of a stored component usage.
#[derive(Debug, Clone, Deserialize)]
pub struct UserUsage {
    /// The URL of the component usage it belongs to.
    #[serde(default)]
    pub component_usage: String,
    pub username: String,
    pub usage: Value,
}

impl PuhuriClient {
    fn query_url(&self, path: &str, pairs: &[(&str, &str)]) -> String {
        match reqwest::Url::parse(&self.url(path)) {
            Ok(mut url) => {
                url.query_pairs_mut().extend_pairs(pairs);
                url.to_string()
            }
            Err(_) => self.url(path),
        }
    }

    /// Every page of a list, following `Link: rel="next"`; returns the items and calls.
    async fn list_all<T: DeserializeOwned>(
        &self,
        url: String,
    ) -> Result<(Vec<T>, usize), PuhuriError> {
        let mut url = url;
        let mut items = Vec::new();
        let mut calls = 0;
        loop {
            let page: Page<T> = self.list_page(&url).await?;
            calls += 1;
            items.extend(page.items);
            match page.next {
                Some(next) if calls < 100_000 => url = next,
                _ => break,
            }
        }
        Ok((items, calls))
    }

    /// The members of the allocation's project with their roles.
    pub async fn team(&self, resource_uuid: &str) -> Result<Vec<TeamMember>, PuhuriError> {
        self.get_json(
            "team",
            &format!("{}team/", self.resource_path(resource_uuid)),
        )
        .await
    }

    /// Approved allocations (state `OK` or `Updating`) on one offering or on every one the token sees.
    pub async fn list_approved(
        &self,
        offering_uuid: Option<&str>,
    ) -> Result<(Vec<ResourceSummary>, usize), PuhuriError> {
        self.list_summaries(&["OK", "Updating"], offering_uuid)
            .await
    }

    /// The allocations Puhuri Core takes usage for (state `OK`, `Updating` or
    /// `Terminating`) that the token sees. One paginated list.
    pub async fn list_reportable(&self) -> Result<Vec<ResourceSummary>, PuhuriError> {
        let (allocations, _) = self
            .list_summaries(&["OK", "Updating", "Terminating"], None)
            .await?;
        Ok(allocations)
    }

    async fn list_summaries(
        &self,
        states: &[&str],
        offering_uuid: Option<&str>,
    ) -> Result<(Vec<ResourceSummary>, usize), PuhuriError> {
        let path = self.resources_path();
        let mut pairs: Vec<(&str, &str)> = states.iter().map(|state| ("state", *state)).collect();
        pairs.push(("page_size", "100"));
        if let Some(offering) = offering_uuid {
            pairs.push(("offering_uuid", offering));
        }
        for field in [
            "uuid",
            "backend_id",
            "project_uuid",
            "project_name",
            "offering_uuid",
        ] {
            pairs.push(("field", field));
        }
        let (items, calls): (Vec<Value>, usize) =
            self.list_all(self.query_url(path, &pairs)).await?;
        let text = |item: &Value, key: &str| {
            item.get(key)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let allocations = items
            .iter()
            .filter_map(|item| {
                Some(ResourceSummary {
                    resource_uuid: text(item, "uuid")?,
                    backend_id: text(item, "backend_id"),
                    project_uuid: text(item, "project_uuid"),
                    project_name: text(item, "project_name"),
                    offering_uuid: text(item, "offering_uuid"),
                })
            })
            .collect();
        Ok((allocations, calls))
    }

    /// The allocations the provider granted the organisation already: those in state
    /// `OK` or `Updating` that the token sees, with their project and limits. One
    /// paginated list.
    pub async fn list_granted(
        &self,
        customer_uuid: &WaldurUuid,
    ) -> Result<Vec<GrantedResource>, PuhuriError> {
        let path = self.resources_path();
        let url = self.query_url(
            path,
            &[
                ("customer_uuid", customer_uuid.as_str()),
                ("state", "OK"),
                ("state", "Updating"),
                ("page_size", "100"),
                ("field", "uuid"),
                ("field", "project_uuid"),
                ("field", "limits"),
            ],
        );
        let (items, _): (Vec<Value>, usize) = self.list_all(url).await?;
        Ok(items
            .into_iter()
            .filter_map(|item| {
                let uuid = item.get("uuid").and_then(Value::as_str)?.to_owned();
                let project_uuid = item
                    .get("project_uuid")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let limits = item
                    .get("limits")
                    .and_then(Value::as_object)
                    .map(numeric_limits)
                    .unwrap_or_default();
                Some(GrantedResource {
                    uuid,
                    project_uuid,
                    limits,
                })
            })
            .collect())
    }

    /// The one allocation a uuid or a `backend_id` names; `Ok(Err(why))` when there is
    /// none the token sees, or several. A terminated predecessor that had the same
    /// backend_id does not count.
    pub async fn find_resource(
        &self,
        allocation: &ResourceRef,
    ) -> Result<Result<Resource, NotFound>, PuhuriError> {
        let backend_id = match allocation {
            ResourceRef::Uuid(uuid) => {
                return match self.get_resource(uuid.as_str()).await {
                    Ok(resource) => Ok(Ok(resource)),
                    Err(PuhuriError::Permanent { status: 404, .. }) => {
                        Ok(Err(NotFound::Uuid(uuid.clone())))
                    }
                    Err(error) => Err(error),
                };
            }
            ResourceRef::BackendId(backend_id) => backend_id,
        };
        let url = self.query_url(
            self.resources_path(),
            &[("backend_id", backend_id), ("page_size", "10")],
        );
        let page: Page<Resource> = self.list_page(&url).await?;
        // The filter is exact in Waldur; checking again costs nothing.
        let (mut live, terminated): (Vec<Resource>, Vec<Resource>) = page
            .items
            .into_iter()
            .filter(|r| r.backend_id.as_deref() == Some(backend_id.as_str()))
            .partition(|r| r.state != ResourceState::Terminated);
        if live.is_empty() {
            live = terminated;
        }
        Ok(match live.len() {
            1 => Ok(live.remove(0)),
            0 => Err(NotFound::BackendId(backend_id.clone())),
            count => Err(NotFound::Ambiguous {
                backend_id: backend_id.clone(),
                count,
            }),
        })
    }

    /// The offering's components.
    pub async fn offering_components(
        &self,
        offering_uuid: &str,
    ) -> Result<Vec<OfferingComponent>, PuhuriError> {
        let path = match self.api() {
            ApiGeneration::Orders => format!("marketplace-provider-offerings/{offering_uuid}/"),
            ApiGeneration::Resources => format!("marketplace-offerings/{offering_uuid}/"),
        };
        let detail: OfferingDetail = self.get_json("get offering", &path).await?;
        Ok(detail.components)
    }

    /// The usages stored for the allocation in one billing month (`YYYY-MM-01`).
    pub async fn component_usages(
        &self,
        resource_uuid: &str,
        billing_period: &str,
    ) -> Result<Vec<ComponentUsage>, PuhuriError> {
        let url = self.query_url(
            "marketplace-component-usages/",
            &[
                ("resource_uuid", resource_uuid),
                ("billing_period", billing_period),
                ("page_size", "100"),
            ],
        );
        Ok(self.list_all(url).await?.0)
    }

    /// The users' shares stored for the allocation's usages of one component.
    pub async fn user_usages(
        &self,
        resource_uuid: &str,
        component: &str,
    ) -> Result<Vec<UserUsage>, PuhuriError> {
        let url = self.query_url(
            "marketplace-component-user-usages/",
            &[
                ("resource_uuid", resource_uuid),
                ("type", component),
                ("page_size", "100"),
            ],
        );
        Ok(self.list_all(url).await?.0)
    }

    /// Reports the month-to-date usage of components (amounts with at most 2 decimals);
    /// Puhuri Core files it under the current billing month, replacing earlier values.
    pub async fn set_usage(
        &self,
        resource_uuid: &str,
        usages: &[(String, String, String)],
    ) -> Result<(), PuhuriError> {
        let usages: Vec<Value> = usages
            .iter()
            .map(|(kind, amount, description)| {
                json!({ "type": kind, "amount": amount, "description": description })
            })
            .collect();
        self.post(
            "set usage",
            "marketplace-component-usages/set_usage/",
            Some(json!({ "resource": resource_uuid, "usages": usages })),
        )
        .await
        .map(drop)
    }

    /// Sets one user's share of a stored component usage.
    pub async fn set_user_usage(
        &self,
        component_usage_uuid: &str,
        username: &str,
        usage: &str,
    ) -> Result<(), PuhuriError> {
        self.post(
            "set user usage",
            &format!("marketplace-component-usages/{component_usage_uuid}/set_user_usage/"),
            Some(json!({ "username": username, "usage": usage })),
        )
        .await
        .map(drop)
    }
}

fn order_uuid<'a>(fetched: &'a Fetched, operation: &'static str) -> Result<&'a str, PuhuriError> {
    fetched
        .order
        .as_ref()
        .map(|o| o.uuid.as_str())
        .ok_or_else(|| PuhuriError::Unusable {
            operation,
            detail: "the allocation has no creation order".into(),
        })
}

/// Finds the URL with the given `rel` in a `Link` header, by parsing each entry's
/// parameters rather than relying on their order.
pub fn link_with_rel(header: &str, rel: &str) -> Option<String> {
    header.split(',').find_map(|entry| {
        let mut parts = entry.split(';');
        let target = parts.next()?.trim();
        let url = target.strip_prefix('<')?.strip_suffix('>')?;
        let matches = parts.any(|param| {
            let mut kv = param.splitn(2, '=');
            let key = kv.next().map(str::trim);
            let value = kv.next().map(|v| v.trim().trim_matches('"'));
            key == Some("rel") && value.is_some_and(|v| v.split_whitespace().any(|r| r == rel))
        });
        matches.then(|| url.to_owned())
    })
}

fn classify(
    operation: &'static str,
    status: StatusCode,
    detail: String,
    body: &str,
    retry_after: Option<Duration>,
) -> PuhuriError {
    match status.as_u16() {
        409 => PuhuriError::Conflict { operation, detail },
        401 => PuhuriError::Unauthorized { operation, detail },
        // The 2021 API answers a wrong state with 400 and this message.
        400 if body.contains("Can't switch from state") => {
            PuhuriError::Conflict { operation, detail }
        }
        408 | 429 | 500..=599 => PuhuriError::Transient {
            operation,
            detail,
            retry_after,
        },
        code => PuhuriError::Permanent {
            operation,
            status: code,
            detail,
        },
    }
}

fn summarize_body(status: StatusCode, text: &str) -> String {
    let body: String = text.chars().take(300).collect();
    if body.is_empty() {
        format!("HTTP {}", status.as_u16())
    } else {
        format!("HTTP {}: {}", status.as_u16(), body.replace('\n', " "))
    }
}

/// reqwest's errors carry the URL (never the token); keep the kind and the URL path.
pub fn describe_reqwest_error(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else if error.is_decode() {
        "could not decode the body"
    } else {
        "request failed"
    };
    match error.url() {
        Some(url) => format!("{kind} ({})", url.path()),
        None => kind.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_joined_url_is_the_url_parsed_whole() {
        for base in [
            "http://127.0.0.1:8000/api/",
            "https://puhuri.example.org/api/",
        ] {
            let config = ClientConfig {
                url: base.into(),
                api: ApiGeneration::Orders,
                timeout: Duration::from_secs(1),
            };
            let client = PuhuriClient::new(&config, "t").unwrap_or_else(|e| panic!("{e}"));
            for path in [
                "marketplace-provider-resources/0123456789abcdef0123456789abcdef/",
                "marketplace-provider-resources/0123456789abcdef0123456789abcdef/team/",
                "marketplace-orders/0123456789abcdef0123456789abcdef/approve_by_provider/",
                "marketplace-provider-resources/?state=Creating&page_size=100&field=uuid",
                "users/?username=a%20b&x=\u{e9}",
                "weird path/with spaces/",
            ] {
                let url = client.url(path);
                let joined = client.joined(&url).map(|u| u.to_string());
                assert_eq!(
                    joined,
                    reqwest::Url::parse(&url).ok().map(|u| u.to_string())
                );
            }
            // Not a plain relative path: parsed whole.
            for path in ["/root/", "//other.host/x", "http:x", "?q=1", "#f", ""] {
                assert_eq!(client.joined(&client.url(path)), None, "{path}");
            }
            assert_eq!(client.joined("http://elsewhere/api/x/"), None);
        }
    }

    #[test]
    fn finds_rel_next_in_any_order() {
        let header = r#"<http://x/api/o/?page=3>; rel="last", <http://x/api/o/?page=2>; rel="next", <http://x/api/o/?page=1>; rel="first""#;
        assert_eq!(
            link_with_rel(header, "next").as_deref(),
            Some("http://x/api/o/?page=2")
        );
        assert_eq!(link_with_rel(header, "prev"), None);
    }

    #[test]
    fn reads_retry_after_in_seconds_and_as_a_date() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        // 2015-10-21T07:28:00Z is now; 07:30:00 is two minutes later.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn classifies_statuses() {
        let c = |code: u16, body: &str| {
            classify(
                "op",
                StatusCode::from_u16(code).expect("status"),
                String::new(),
                body,
                None,
            )
        };
        assert!(matches!(c(409, ""), PuhuriError::Conflict { .. }));
        assert!(matches!(
            c(400, r#"{"status":"Can't switch from state 'OK' to 'ok'."}"#),
            PuhuriError::Conflict { .. }
        ));
        assert!(matches!(
            c(400, "{}"),
            PuhuriError::Permanent { status: 400, .. }
        ));
        assert!(matches!(
            c(404, ""),
            PuhuriError::Permanent { status: 404, .. }
        ));
        assert!(c(429, "").is_transient());
        assert!(c(401, r#"{"detail":"Token has expired."}"#).is_unauthorized());
        assert!(matches!(
            c(403, ""),
            PuhuriError::Permanent { status: 403, .. }
        ));
        assert!(c(503, "").is_transient());
    }
}
