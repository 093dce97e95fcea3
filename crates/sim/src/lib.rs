//! Puhuri Core simulator: a standalone HTTP server that behaves like the part of
//! Waldur (the platform behind Puhuri Core) a service provider talks to, for
//! tests, demos and benchmarks.
//!
//! It is as strict as the real API: token authentication, Django's
//! `APPEND_SLASH` redirect, DRF error bodies and status codes, order and
//! resource state machines, filters, pagination with `Link` / `X-Result-Count`
//! and `field=` selection. One Waldur release is served at a time
//! ([`SimConfig::waldur`], `--waldur`): `2021` serves the 2021 API
//! (`/api/marketplace-resources/` with `set_state_by_provider`); `7.0` (the
//! default, the strictest) and `8.0` serve the current one
//! (`/api/marketplace-orders/`, `/api/marketplace-provider-resources/`) with that
//! release's rules: provider-resource `set_as_erred` is 403 for a provider on 7.0
//! and leaves the order untouched on 8.0; orders carry `created_by_username` only
//! on 8.0. A consumer organisation (`/api/customers/{uuid}/`) is 404 to the
//! provider; its `abbreviation` is listed by
//! `/api/marketplace-service-providers/{uuid}/customers/`.
//! See `api.rs` for the exact surface and the Waldur behaviour each rule follows.
//!
//! # Seeded catalogue (`SimConfig::seed`)
//! Provider `LUMI` (FI) with offerings `LUMI-C` (`Marketplace.Basic`;
//! `cpu_k_hours`, `gb_k_hours`), `LUMI-G` (`Marketplace.Basic`; `gpu_k_hours`,
//! `gb_k_hours`) and `LUMI-Slurm` (`Marketplace.Slurm`; all three plus the
//! `fixed` component `project_fee`, for which usage cannot be reported), one
//! plan each; the k-hour components are billed `limit`. Organisations
//! University of Helsinki (FI), KTH (SE), University of Tartu (EE), NTNU (NO),
//! DTU (DK), one project each: `Climate extremes` (the default), `Protein
//! dynamics`, `Estonian language models`, `Ocean circulation` (ended
//! 2024-12-31: approving its orders answers the "expired" 400), `Wind farm
//! wakes`. Each project's team is the organisation's PI (`manager`) and two
//! `member`s, `<project slug>-member1|2` (e.g. `climate-extremes-member1`);
//! a project added later starts with its organisation's PI. Uuids derive from
//! names, so they are the same on every start. API tokens act as the user
//! `sp-integration` (`sp-integration-<n>` for the n-th token). Every resource
//! gets a plan period when it is created.
//!
//! # Admin API (no authentication, JSON; errors are `application/problem+json`)
//! - `POST /admin/allocations` body [`NewAllocation`] -> 201 [`CreatedAllocation`];
//!   404 for an unknown offering or project, 400 for an unknown component, a
//!   limit that is not a non-negative integer or an unsupported `order_state`.
//!   Fires the configured hook once.
//! - `GET /admin/calls` -> `[RecordedCall]`; `DELETE /admin/calls` -> 204 (clears).
//! - `PUT /admin/faults` body [`Faults`] -> 204; `GET /admin/faults` -> the current faults.
//! - `GET /admin/catalogue` -> [`Catalogue`].
//! - `POST /admin/customers` body [`NewCustomer`], `POST /admin/projects` body
//!   [`NewProject`], `POST /admin/offerings` body [`NewOffering`] -> 201 `{"uuid": "..."}`;
//!   names are unique per kind (409 otherwise), references accept a uuid or a name.
//!   An offering's components are type strings (billed `limit`) or objects
//!   `{"type", "billing_type"?, "name"?, "measured_unit"?}`.
//! - `GET|POST /admin/projects/{project}/members`, `DELETE
//!   /admin/projects/{project}/members/{username}`: the project's team
//!   (body [`NewMember`]; 201, 204; 409 for a duplicate, 404 for a non-member).
//! - `POST /admin/resources/{uuid}/plan_periods/close` body `{"end": "<RFC 3339>"}`
//!   -> 200 the closed period.
//! - `PUT /admin/tokens/lifetime`, `PUT /admin/tokens/{index}`, `POST /admin/tokens/expire`,
//!   `GET|DELETE /admin/in_flight`: token lifetime, renewal and expiry, and the peak of
//!   concurrent API calls (`session.rs`).
//!
//! # Invariants
//! - All mutable state (model, recorded calls, faults, random generator) lives
//!   in one `std::sync::Mutex`, never held across an `.await`; injected latency
//!   and hook delivery happen outside it.
//! - Every write call (POST/PUT/PATCH/DELETE) under `/api/` is recorded once, in
//!   completion order, with its final status, including refused, redirected and
//!   fault-injected ones; admin calls are never recorded. Every `/api/` call, reads
//!   included, is counted (`Sim::api_calls`) and, while `Sim::record_requests` is on,
//!   logged with its method, path, query and status (`Sim::requests`).
//! - A fault-injected response leaves the model untouched, except an
//!   `applied_error_rate` fault: the write is applied, recorded with the fault's
//!   status and `applied_status`, and the caller receives the server error.
//! - Uuids are rendered as 32 lowercase hex digits; lookups also accept the
//!   hyphenated form. The seeded catalogue has the same uuids on every start.
//! - A hook is posted at most once per allocation, never retried, never
//!   blocking the creation; failures are logged without URLs or secrets.

mod admin;
mod api;
mod decimal;
mod delay;
mod events;
pub use events::EventBroker;
mod hook;
mod offerings;
mod query;
mod serializers;
mod session;
mod state;
mod team;
#[cfg(test)]
mod tests;
mod usage;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use state::{BillingType, ComponentSpec, Member, Model, OrderState, Role};

/// The Waldur release whose API the simulator serves: one API generation and that
/// release's rules at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum WaldurVersion {
    /// The 2021 API: provider actions under `/api/marketplace-resources/{uuid}/`
    /// (`set_state_by_provider`, `set_backend_id`, `submit_report`) and offerings
    /// under `/api/marketplace-offerings/`; `/api/marketplace-provider-resources/`,
    /// `/api/marketplace-provider-offerings/` and the provider's order actions
    /// answer 404.
    #[serde(rename = "2021")]
    V2021,
    /// Waldur 7.0.x (the default): the current API only; provider-resource
    /// `set_as_erred` is staff-only (403); orders render `created_by_full_name`
    /// but no `created_by_username`.
    #[default]
    #[serde(rename = "7.0")]
    V7_0,
    /// Waldur 8.0: the current API only; a provider may call `set_as_erred`, which
    /// errs the resource and leaves its order untouched; orders also render
    /// `created_by_username`.
    #[serde(rename = "8.0")]
    V8_0,
}

impl WaldurVersion {
    /// Whether this release serves the current API (`marketplace-provider-resources`).
    pub fn is_current(self) -> bool {
        self != WaldurVersion::V2021
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WaldurVersion::V2021 => "2021",
            WaldurVersion::V7_0 => "7.0",
            WaldurVersion::V8_0 => "8.0",
        }
    }
}

impl std::fmt::Display for WaldurVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for WaldurVersion {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "2021" => Ok(WaldurVersion::V2021),
            "7.0" => Ok(WaldurVersion::V7_0),
            "8.0" => Ok(WaldurVersion::V8_0),
            other => Err(format!(
                "unknown Waldur version `{other}`; use `2021`, `7.0` or `8.0`"
            )),
        }
    }
}

/// How a simulator instance behaves.
pub struct SimConfig {
    /// Accepted API tokens (`Authorization: Token <t>`, keyword case-insensitive).
    pub tokens: Vec<puhuri_auth::Secret>,
    /// Where to announce new allocations.
    pub hook: Option<HookTarget>,
    /// Create the default catalogue at start.
    pub seed: bool,
    /// Base for absolute URLs in bodies and `Link` headers, e.g.
    /// `http://127.0.0.1:8090`; when `None`, the request's `Host` header is used.
    pub public_url: Option<String>,
    /// The Waldur release served (default [`WaldurVersion::V7_0`]).
    pub waldur: WaldurVersion,
}

/// The receiver of allocation announcements.
#[derive(Clone, Debug)]
pub struct HookTarget {
    pub url: String,
    pub format: HookFormat,
}

/// A Waldur-hook target: the receiver's path secret as the URL's last segment (Waldur's
/// hooks cannot sign, so the secret is the credential).
pub fn url_with_path_secret(url: &str, secret: &str) -> String {
    format!("{}/{secret}", url.trim_end_matches('/'))
}

/// The shape of an announcement.
#[derive(Clone, Debug)]
pub enum HookFormat {
    /// Waldur's own web hook: unsigned `{created, message, event_type, context}`.
    WaldurHook,
    /// The `allocation.created` notification, signed with Standard Webhooks headers.
    Allocation {
        secret: puhuri_auth::signature::WebhookSecret,
    },
}

/// Why an admin operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("unknown offering `{0}`")]
    UnknownOffering(String),
    #[error("unknown project `{0}`")]
    UnknownProject(String),
    #[error("unknown customer `{0}`")]
    UnknownCustomer(String),
    #[error("unknown resource `{0}`")]
    UnknownResource(String),
    #[error("`{username}` is not a member of project `{project}`")]
    UnknownMember { project: String, username: String },
    #[error("offering `{offering}` has no component `{component}`")]
    UnknownComponent { component: String, offering: String },
    #[error("limit `{component}` must be a non-negative integer, got {value}")]
    InvalidLimit { component: String, value: String },
    #[error("{0} already exists")]
    Duplicate(String),
    #[error("{0}")]
    Invalid(String),
}

impl SimError {
    /// The HTTP status the admin API answers with.
    pub fn status(&self) -> u16 {
        match self {
            SimError::UnknownOffering(_)
            | SimError::UnknownProject(_)
            | SimError::UnknownCustomer(_)
            | SimError::UnknownResource(_)
            | SimError::UnknownMember { .. } => 404,
            SimError::Duplicate(_) => 409,
            SimError::UnknownComponent { .. }
            | SimError::InvalidLimit { .. }
            | SimError::Invalid(_) => 400,
        }
    }
}

/// A request for a new allocation (an order in `pending-provider` or
/// `pending-consumer` with its `Creating` resource).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct NewAllocation {
    /// Offering uuid or name; default: the first offering.
    pub offering: Option<String>,
    /// Project uuid or name; default: the first project.
    pub project: Option<String>,
    /// Resource name; default: `attributes.name`, else Waldur's suggested name
    /// `<customer slug>-<project slug>-<offering slug>-<n>`.
    pub name: Option<String>,
    /// Component type -> non-negative integer; every key must be a component
    /// of the offering.
    pub limits: serde_json::Map<String, serde_json::Value>,
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// `pending-provider` (default) or `pending-consumer`.
    pub order_state: Option<String>,
}

/// What a new allocation is made of.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CreatedAllocation {
    pub order_uuid: String,
    pub resource_uuid: String,
    pub offering_uuid: String,
    pub project_uuid: String,
    pub customer_uuid: String,
}

/// One write call received on the Waldur API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecordedCall {
    pub method: String,
    /// The path as requested (without the query).
    pub path: String,
    pub query: Option<String>,
    /// The JSON body; `Null` when there was none or it was not JSON.
    pub body: serde_json::Value,
    /// The status the caller received.
    pub status: u16,
    /// Set when the change was applied with this status but the caller received a
    /// fault instead (`Faults::applied_error_rate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_status: Option<u16>,
}

/// One call on the Waldur API, read or write, as [`Sim::record_requests`] logs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    /// The path as requested (without the query).
    pub path: String,
    pub query: Option<String>,
    /// The status the caller received.
    pub status: u16,
}

impl RecordedRequest {
    /// `METHOD path` with the query, e.g. `GET /api/marketplace-orders/<uuid>/`.
    pub fn line(&self) -> String {
        match &self.query {
            Some(query) => format!("{} {}?{query}", self.method, self.path),
            None => format!("{} {}", self.method, self.path),
        }
    }
}

/// Injected faults; they apply to every `/api/` request, never to `/admin/`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// The next N API calls (any method) answer `fail_status`.
    pub fail_next: u32,
    /// When set, `fail_next` counts only calls whose path contains this text
    /// (e.g. `submit_report`); other calls pass.
    pub fail_path: Option<String>,
    /// Default 500.
    pub fail_status: Option<u16>,
    /// 0..1: fraction of API calls answering an error at random.
    pub error_rate: f64,
    /// When set, `error_rate` applies only to calls whose path, or path and query, ends
    /// with this text (e.g. `/marketplace-orders/` for the order list, not one order;
    /// `&page=3` for that page of any list); other calls pass.
    pub error_path: Option<String>,
    /// The statuses `error_rate` picks from at random (default 500). A 429 carries
    /// `Retry-After: 1`.
    pub error_statuses: Vec<u16>,
    /// 0..1: fraction of API calls that take effect but answer only after `slow_ms`
    /// (a caller with a shorter timeout sees a timeout for a change that happened).
    pub slow_rate: f64,
    pub slow_ms: u64,
    /// Added to every API call.
    pub latency_ms: u64,
    /// 0..1: fraction of write calls (POST, PUT, PATCH, DELETE) that take effect and
    /// then answer a server error, as a proxy or a crashing worker behind Waldur does
    /// (the caller cannot tell that the change happened).
    pub applied_error_rate: f64,
    /// The statuses `applied_error_rate` picks from (default 500, 502, 503).
    pub applied_error_statuses: Vec<u16>,
}

/// The organisations, projects and offerings currently known.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Catalogue {
    pub customers: Vec<CatalogueCustomer>,
    pub projects: Vec<CatalogueProject>,
    pub offerings: Vec<CatalogueOffering>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CatalogueCustomer {
    pub uuid: String,
    pub name: String,
    pub slug: String,
    pub abbreviation: String,
    pub country: String,
    /// Whether the organisation is a service provider (owns offerings).
    pub is_service_provider: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CatalogueProject {
    pub uuid: String,
    pub name: String,
    pub slug: String,
    pub customer_uuid: String,
    pub customer_name: String,
    /// `YYYY-MM-DD`; a project whose end date is today or earlier is expired.
    pub end_date: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CatalogueOffering {
    pub uuid: String,
    pub name: String,
    pub offering_type: String,
    pub provider_uuid: String,
    pub provider_name: String,
    /// Component types accepted in limits.
    pub components: Vec<String>,
    pub plan_uuid: String,
    pub plan_name: String,
}

/// A new organisation.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NewCustomer {
    pub name: String,
    /// Default: the slugified name.
    #[serde(default)]
    pub slug: Option<String>,
    /// ISO 3166 code, e.g. `FI`; default empty.
    #[serde(default)]
    pub country: Option<String>,
    #[serde(default)]
    pub abbreviation: Option<String>,
}

/// A new project of an existing organisation.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    /// Customer uuid or name.
    pub customer: String,
    pub name: String,
    #[serde(default)]
    pub slug: Option<String>,
    /// `YYYY-MM-DD`.
    #[serde(default)]
    pub end_date: Option<String>,
}

/// A new offering with one plan.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NewOffering {
    pub name: String,
    /// `Marketplace.Basic` (default) or `Marketplace.Slurm`.
    #[serde(default)]
    pub offering_type: Option<String>,
    /// Provider organisation uuid or name (it becomes a service provider);
    /// default: the first service provider.
    #[serde(default)]
    pub provider: Option<String>,
    /// Components: a type (`"cpu_k_hours"`, billed `limit`) or an object
    /// `{"type", "billing_type"?, "name"?, "measured_unit"?}`.
    pub components: Vec<NewComponent>,
    /// Default: `<name> Standard`.
    #[serde(default)]
    pub plan_name: Option<String>,
}

/// A component of a new offering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewComponent {
    /// The component type, e.g. `cpu_k_hours`.
    pub kind: String,
    /// `limit` (default), `usage`, `fixed`, `one` or `few`; usage can be
    /// reported only for `usage` and `limit`.
    pub billing_type: Option<String>,
    /// Default: the type.
    pub name: Option<String>,
    /// Default: empty.
    pub measured_unit: Option<String>,
}

impl From<&str> for NewComponent {
    fn from(kind: &str) -> Self {
        Self {
            kind: kind.to_string(),
            billing_type: None,
            name: None,
            measured_unit: None,
        }
    }
}

impl<'de> Deserialize<'de> for NewComponent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Spec {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            billing_type: Option<String>,
            #[serde(default)]
            name: Option<String>,
            #[serde(default)]
            measured_unit: Option<String>,
        }
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(kind) => Ok(NewComponent::from(kind.as_str())),
            value @ serde_json::Value::Object(_) => {
                let spec: Spec = serde_json::from_value(value).map_err(serde::de::Error::custom)?;
                Ok(NewComponent {
                    kind: spec.kind,
                    billing_type: spec.billing_type,
                    name: spec.name,
                    measured_unit: spec.measured_unit,
                })
            }
            _ => Err(serde::de::Error::custom(
                "a component is a type string or an object with `type`",
            )),
        }
    }
}

/// A new member of a project's team.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    pub username: String,
    /// Default: the username.
    #[serde(default)]
    pub full_name: Option<String>,
    /// Default: the username when it is an address, else `<username>@example.org`.
    #[serde(default)]
    pub email: Option<String>,
    /// `admin`, `manager` or `member` (default).
    #[serde(default)]
    pub role: Option<String>,
    /// RFC 3339 timestamp; default none.
    #[serde(default)]
    pub expiration_time: Option<String>,
    /// The member's account on the offering; default none.
    #[serde(default)]
    pub offering_user_username: Option<String>,
}

/// A running simulator; cheap to clone (shared state).
#[derive(Clone)]
pub struct Sim {
    inner: Arc<Inner>,
}

struct Inner {
    waldur: WaldurVersion,
    tokens: Mutex<session::Tokens>,
    in_flight: session::InFlight,
    hook: Option<HookTarget>,
    public_url: Option<String>,
    http: reqwest::Client,
    shared: Mutex<Shared>,
    /// Counts recorded write calls, so observers can await the next one.
    recorded: tokio::sync::watch::Sender<u64>,
    /// Every call under `/api/` answered so far, reads included.
    api_calls: std::sync::atomic::AtomicU64,
    /// Event registrations and the broker they publish to.
    events: events::Events,
}

struct Shared {
    model: Model,
    calls: Vec<RecordedCall>,
    /// When each of `calls` was recorded (same index).
    call_times: Vec<std::time::Instant>,
    faults: Faults,
    rng: u64,
    /// Every `/api/` call, reads included, while [`Sim::record_requests`] is on.
    requests: Option<Vec<RecordedRequest>>,
}

impl Shared {
    /// splitmix64: a uniform number in [0, 1).
    fn random(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How long hook delivery may take.
const HOOK_TIMEOUT: Duration = Duration::from_secs(10);

impl Sim {
    pub fn new(config: SimConfig) -> Sim {
        let mut model = Model::default();
        model.version = config.waldur;
        if config.seed
            && let Err(error) = model.seed()
        {
            tracing::error!(%error, "seeding the simulator catalogue failed");
        }
        let http = reqwest::Client::builder()
            .timeout(HOOK_TIMEOUT)
            .build()
            .unwrap_or_else(|error| {
                tracing::warn!(error = %error.without_url(), "hook client setup failed; using defaults");
                reqwest::Client::new()
            });
        let seed = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as u64;
        Sim {
            inner: Arc::new(Inner {
                recorded: tokio::sync::watch::channel(0).0,
                api_calls: std::sync::atomic::AtomicU64::new(0),
                events: events::Events::default(),
                waldur: config.waldur,
                tokens: Mutex::new(session::Tokens::new(config.tokens)),
                in_flight: session::InFlight::default(),
                hook: config.hook,
                public_url: config
                    .public_url
                    .map(|u| u.trim_end_matches('/').to_string()),
                http,
                shared: Mutex::new(Shared {
                    model,
                    calls: Vec::new(),
                    call_times: Vec::new(),
                    faults: Faults::default(),
                    rng: seed,
                    requests: None,
                }),
            }),
        }
    }

    fn tokens(&self) -> MutexGuard<'_, session::Tokens> {
        self.inner
            .tokens
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Gives every API token a sliding lifetime (`None`: tokens never expire); counts
    /// from now.
    pub fn set_token_lifetime(&self, lifetime: Option<Duration>) {
        self.tokens().set_lifetime(lifetime);
    }

    /// Replaces the `index`-th API token (or adds one at `index` = their count), with a
    /// fresh lifetime; `false` when `index` is beyond the count.
    pub fn set_token(&self, index: usize, token: puhuri_auth::Secret) -> bool {
        self.tokens().set(index, token)
    }

    /// Every API token expires now: calls answer 401 `Token has expired.` until it is
    /// replaced.
    pub fn expire_tokens(&self) {
        self.tokens().expire_all();
    }

    /// Calls under `/api/` being answered now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.current()
    }

    /// The most calls under `/api/` answered at once since start or the last
    /// [`Sim::reset_peak_in_flight`].
    pub fn peak_in_flight(&self) -> usize {
        self.inner.in_flight.peak()
    }

    /// Restarts the peak from the current count.
    pub fn reset_peak_in_flight(&self) {
        self.inner.in_flight.reset_peak();
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.inner
            .shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The Waldur release this simulator serves.
    pub fn waldur(&self) -> WaldurVersion {
        self.inner.waldur
    }

    /// The whole HTTP surface: `/api/...` (Waldur) and `/admin/...`.
    pub fn router(&self) -> axum::Router {
        admin::routes()
            .fallback(api::handle)
            .method_not_allowed_fallback(admin::method_not_allowed)
            .with_state(self.clone())
    }

    /// Serves until `shutdown` is cancelled, then finishes open requests.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let router = self.router();
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    }

    /// Creates an allocation as a consumer would, then fires the hook (spawned).
    pub async fn create_allocation(
        &self,
        request: NewAllocation,
    ) -> Result<CreatedAllocation, SimError> {
        let now = time::OffsetDateTime::now_utc();
        let (created, delivery) = {
            let mut shared = self.lock();
            let model = &mut shared.model;
            let offering = match &request.offering {
                Some(key) => model
                    .find_offering(key)
                    .ok_or_else(|| SimError::UnknownOffering(key.clone()))?,
                None if model.offerings.is_empty() => {
                    return Err(SimError::UnknownOffering("(no offering exists)".into()));
                }
                None => 0,
            };
            let project = match &request.project {
                Some(key) => model
                    .find_project(key)
                    .ok_or_else(|| SimError::UnknownProject(key.clone()))?,
                None if model.projects.is_empty() => {
                    return Err(SimError::UnknownProject("(no project exists)".into()));
                }
                None => 0,
            };
            let limits = model.validate_limits(offering, &request.limits)?;
            let order_state = match request.order_state.as_deref() {
                None | Some("pending-provider") => OrderState::PendingProvider,
                Some("pending-consumer") => OrderState::PendingConsumer,
                Some(other) => {
                    return Err(SimError::Invalid(format!(
                        "order_state `{other}` is not supported; use `pending-provider` or `pending-consumer`"
                    )));
                }
            };
            let name = match request.name {
                Some(name) if name.trim().is_empty() => {
                    return Err(SimError::Invalid("name must not be empty".into()));
                }
                other => other,
            };
            let (order, resource) = model.create_allocation(
                state::AllocationSpec {
                    offering,
                    project,
                    name,
                    limits,
                    attributes: request.attributes,
                    order_state,
                },
                now,
            );
            let customer = model.projects[project].customer;
            let created = CreatedAllocation {
                order_uuid: state::hex(model.orders[order].uuid),
                resource_uuid: state::hex(model.resources[resource].uuid),
                offering_uuid: state::hex(model.offerings[offering].uuid),
                project_uuid: state::hex(model.projects[project].uuid),
                customer_uuid: state::hex(model.customers[customer].uuid),
            };
            let delivery = self
                .inner
                .hook
                .as_ref()
                .map(|target| hook::prepare(target, model, order, now));
            let event = order_event(model, order);
            (created, (delivery, event))
        };
        let (delivery, (offering, unified, bare)) = delivery;
        if let Some(delivery) = delivery {
            let client = self.inner.http.clone();
            tokio::spawn(hook::deliver(client, delivery));
        }
        let sim = self.clone();
        tokio::spawn(async move { sim.publish_order_event(offering, unified, bare).await });
        Ok(created)
    }
}

/// Waldur's order event for the push channel: the offering, the unified message and the bare
/// `{order_uuid, order_state}` form.
fn order_event(model: &Model, order: usize) -> (uuid::Uuid, serde_json::Value, serde_json::Value) {
    let o = &model.orders[order];
    let resource = &model.resources[o.resource];
    let offering = &model.offerings[o.offering];
    let project = &model.projects[o.project];
    let bare = serde_json::json!({
        "order_uuid": state::hex(o.uuid),
        "order_state": o.state.as_str(),
    });
    let unified = serde_json::json!({
        "order_uuid": state::hex(o.uuid),
        "order_state": o.state.as_str(),
        "offering_uuid": state::hex(offering.uuid),
        "object_type": "order",
        "schema_version": "1.0",
        "order_type": "Create",
        "resource_uuid": state::hex(resource.uuid),
        "resource_name": resource.name,
        "project_uuid": state::hex(project.uuid),
        "project_name": project.name,
        "attributes": o.attributes,
        "limits": o.limits,
        "plan_uuid": state::hex(offering.plan_uuid),
    });
    (offering.uuid, unified, bare)
}

impl Sim {
    /// Every write call on the Waldur API so far, in order.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.lock().calls.clone()
    }

    /// The write calls from index `from` on, each with the instant it was recorded
    /// (for latency measurements that must not copy the whole log on every change).
    pub fn calls_since(&self, from: usize) -> Vec<(RecordedCall, std::time::Instant)> {
        let shared = self.lock();
        let from = from.min(shared.calls.len());
        shared.calls[from..]
            .iter()
            .cloned()
            .zip(shared.call_times[from..].iter().copied())
            .collect()
    }

    /// A receiver that changes after every recorded write call.
    pub fn watch_calls(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.recorded.subscribe()
    }

    pub(crate) fn note_recorded(&self) {
        self.inner.recorded.send_modify(|n| *n += 1);
    }

    /// Starts (empty) or stops logging every `/api/` call, reads included: what
    /// [`Sim::requests`] returns. Off by default (the write calls of [`Sim::calls`] are
    /// always recorded).
    pub fn record_requests(&self, on: bool) {
        self.lock().requests = on.then(Vec::new);
    }

    /// Every `/api/` call answered since [`Sim::record_requests`] was turned on, in
    /// completion order; empty when it is off.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone().unwrap_or_default()
    }

    /// How many `/api/` calls (reads and writes) were answered since start.
    pub fn api_calls(&self) -> u64 {
        self.inner
            .api_calls
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn note_request(&self, method: &str, path: &str, query: Option<&str>, status: u16) {
        self.inner
            .api_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut shared = self.lock();
        if let Some(requests) = shared.requests.as_mut() {
            requests.push(RecordedRequest {
                method: method.to_owned(),
                path: path.to_owned(),
                query: query.map(str::to_owned),
                status,
            });
        }
    }

    /// Forgets the recorded calls.
    pub fn clear_calls(&self) {
        let mut shared = self.lock();
        shared.calls.clear();
        shared.call_times.clear();
    }

    /// Replaces the injected faults (`error_rate` is clamped to 0..=1).
    pub fn set_faults(&self, mut faults: Faults) {
        faults.slow_rate = if faults.slow_rate.is_finite() {
            faults.slow_rate.clamp(0.0, 1.0)
        } else {
            0.0
        };
        faults.error_rate = if faults.error_rate.is_finite() {
            faults.error_rate.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.lock().faults = faults;
    }

    /// The faults currently injected (`fail_next` counts down).
    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    /// The order as `GET /api/marketplace-orders/{uuid}/` renders it.
    pub fn order(&self, uuid: &str) -> Option<serde_json::Value> {
        let id = uuid::Uuid::parse_str(uuid.trim()).ok()?;
        let shared = self.lock();
        let index = shared.model.order_by_uuid(id)?;
        Some(serde_json::Value::Object(
            shared.model.render_order(index, self.default_base()),
        ))
    }

    /// The resource as `GET /api/marketplace-provider-resources/{uuid}/` renders it.
    pub fn resource(&self, uuid: &str) -> Option<serde_json::Value> {
        let id = uuid::Uuid::parse_str(uuid.trim()).ok()?;
        let shared = self.lock();
        let index = shared.model.resource_by_uuid(id)?;
        Some(serde_json::Value::Object(shared.model.render_resource(
            index,
            self.default_base(),
            true,
        )))
    }

    pub fn catalogue(&self) -> Catalogue {
        self.lock().model.catalogue()
    }

    /// Adds an organisation; returns its uuid.
    pub fn add_customer(&self, customer: NewCustomer) -> Result<String, SimError> {
        let mut shared = self.lock();
        let model = &mut shared.model;
        let index = model.add_customer(
            &customer.name,
            customer.slug.as_deref(),
            customer.country.as_deref().unwrap_or(""),
            customer.abbreviation.as_deref(),
            false,
            None,
        )?;
        Ok(state::hex(model.customers[index].uuid))
    }

    /// Adds a project to an organisation; returns its uuid.
    pub fn add_project(&self, project: NewProject) -> Result<String, SimError> {
        let mut shared = self.lock();
        let model = &mut shared.model;
        let customer = model
            .find_customer(&project.customer)
            .ok_or_else(|| SimError::UnknownCustomer(project.customer.clone()))?;
        let end_date = match project.end_date.as_deref() {
            None => None,
            Some(raw) => Some(state::parse_date(raw).ok_or_else(|| {
                SimError::Invalid(format!("end_date `{raw}` is not a YYYY-MM-DD date"))
            })?),
        };
        let index =
            model.add_project(customer, &project.name, project.slug.as_deref(), end_date)?;
        Ok(state::hex(model.projects[index].uuid))
    }

    /// Adds an offering with one plan; returns its uuid.
    pub fn add_offering(&self, offering: NewOffering) -> Result<String, SimError> {
        let mut shared = self.lock();
        let model = &mut shared.model;
        let provider = match &offering.provider {
            Some(key) => model
                .find_customer(key)
                .ok_or_else(|| SimError::UnknownCustomer(key.clone()))?,
            None => model
                .customers
                .iter()
                .position(|c| c.is_provider)
                .ok_or_else(|| {
                    SimError::Invalid("no service provider exists; name one in `provider`".into())
                })?,
        };
        let mut components = Vec::with_capacity(offering.components.len());
        for c in &offering.components {
            let billing_type = match c.billing_type.as_deref() {
                None => BillingType::Limit,
                Some(raw) => BillingType::parse(raw).ok_or_else(|| {
                    SimError::Invalid(format!(
                        "billing_type `{raw}` of component `{}` is not one of fixed, usage, limit, one, few",
                        c.kind
                    ))
                })?,
            };
            components.push(ComponentSpec {
                kind: c.kind.clone(),
                name: c.name.clone(),
                measured_unit: c.measured_unit.clone(),
                billing_type,
            });
        }
        let index = model.add_offering(
            provider,
            &offering.name,
            offering.offering_type.as_deref().unwrap_or(state::BASIC),
            &components,
            offering.plan_name.as_deref(),
        )?;
        Ok(state::hex(model.offerings[index].uuid))
    }

    /// The project's team (project uuid or name), ordered by username:
    /// `{uuid, username, full_name, email, role, expiration_time, offering_user_username}`.
    pub fn project_members(&self, project: &str) -> Result<Vec<serde_json::Value>, SimError> {
        let shared = self.lock();
        let model = &shared.model;
        let index = model
            .find_project(project)
            .ok_or_else(|| SimError::UnknownProject(project.to_string()))?;
        Ok(model
            .sorted_members(index)
            .into_iter()
            .map(|m| serde_json::Value::Object(team::render_member(m)))
            .collect())
    }

    /// Adds a member to the project's team (project uuid or name); returns it
    /// as [`Sim::project_members`] renders it. 409 when the username is already
    /// a member, 400 for an unknown role or a bad timestamp.
    pub fn add_member(
        &self,
        project: &str,
        member: NewMember,
    ) -> Result<serde_json::Value, SimError> {
        let mut shared = self.lock();
        let model = &mut shared.model;
        let index = model
            .find_project(project)
            .ok_or_else(|| SimError::UnknownProject(project.to_string()))?;
        let username = member.username.trim().to_string();
        if username.is_empty() {
            return Err(SimError::Invalid("username must not be empty".into()));
        }
        let role = match member.role.as_deref() {
            None => Role::Member,
            Some(raw) => Role::parse(raw).ok_or_else(|| {
                SimError::Invalid(format!("role `{raw}` is not one of admin, manager, member"))
            })?,
        };
        let expiration_time = match member.expiration_time.as_deref() {
            None => None,
            Some(raw) => Some(
                time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| {
                        SimError::Invalid(format!(
                            "expiration_time `{raw}` is not an RFC 3339 timestamp"
                        ))
                    })?,
            ),
        };
        let member = Member {
            full_name: member.full_name.unwrap_or_else(|| username.clone()),
            email: member
                .email
                .unwrap_or_else(|| state::default_email(&username)),
            username,
            role,
            expiration_time: expiration_time.map(usage::truncate_to_micros),
            offering_user_username: member.offering_user_username,
        };
        let rendered = serde_json::Value::Object(team::render_member(&member));
        model.add_member(index, member)?;
        Ok(rendered)
    }

    /// Removes `username` from the project's team (project uuid or name).
    pub fn remove_member(&self, project: &str, username: &str) -> Result<(), SimError> {
        let mut shared = self.lock();
        let model = &mut shared.model;
        let index = model
            .find_project(project)
            .ok_or_else(|| SimError::UnknownProject(project.to_string()))?;
        model.remove_member(index, username)
    }

    /// The resource's component usages as `GET /api/marketplace-component-usages/?resource_uuid=`
    /// renders them (newest first); empty for an unknown resource.
    pub fn usages(&self, resource_uuid: &str) -> Vec<serde_json::Value> {
        let Ok(uuid) = uuid::Uuid::parse_str(resource_uuid.trim()) else {
            return Vec::new();
        };
        let shared = self.lock();
        let model = &shared.model;
        let filter = usage::UsageFilter {
            resource: Some(uuid),
            ..usage::UsageFilter::default()
        };
        model
            .list_usages(&filter)
            .into_iter()
            .map(|i| serde_json::Value::Object(model.render_usage(i)))
            .collect()
    }

    /// The resource's per-user usages as `GET /api/marketplace-component-user-usages/?resource_uuid=`
    /// renders them; empty for an unknown resource.
    pub fn user_usages(&self, resource_uuid: &str) -> Vec<serde_json::Value> {
        let Ok(uuid) = uuid::Uuid::parse_str(resource_uuid.trim()) else {
            return Vec::new();
        };
        let shared = self.lock();
        let model = &shared.model;
        let filter = usage::UsageFilter {
            resource: Some(uuid),
            ..usage::UsageFilter::default()
        };
        model
            .list_user_usages(&filter)
            .into_iter()
            .map(|i| serde_json::Value::Object(model.render_user_usage(i, self.default_base())))
            .collect()
    }

    /// Ends the resource's open plan period at `end` (a closed period refuses
    /// usage reports once `end` is before the current month); returns the
    /// period as `plan_periods` renders it.
    pub fn close_plan_period(
        &self,
        resource_uuid: &str,
        end: time::OffsetDateTime,
    ) -> Result<serde_json::Value, SimError> {
        let unknown = || SimError::UnknownResource(resource_uuid.to_string());
        let uuid = uuid::Uuid::parse_str(resource_uuid.trim()).map_err(|_| unknown())?;
        let mut shared = self.lock();
        let model = &mut shared.model;
        let resource = model.resource_by_uuid(uuid).ok_or_else(unknown)?;
        let end = usage::truncate_to_micros(end);
        let period = model
            .close_plan_period(resource, end)
            .ok_or_else(|| SimError::Invalid("the resource has no open plan period".into()))?;
        Ok(model.render_one_plan_period(period, time::OffsetDateTime::now_utc()))
    }

    /// The base of absolute URLs when no request is at hand.
    fn default_base(&self) -> &str {
        self.inner
            .public_url
            .as_deref()
            .unwrap_or("http://localhost")
    }
}
