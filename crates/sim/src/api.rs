//! The Waldur API surface under `/api/`, handled by one dispatcher so the order
//! of checks matches Django + DRF exactly:
//!
//! 1. injected latency, then an injected failure (no other effect);
//! 2. an unknown path answers 404; a path that only lacks its trailing slash
//!    answers 301 to the slashed path with the query kept (`APPEND_SLASH`,
//!    before authentication, like Django's `CommonMiddleware`);
//! 3. authentication (`Authorization: Token <t>`, keyword case-insensitive):
//!    401 `Authentication credentials were not provided.` without usable
//!    credentials, `Invalid token header. ...` for a malformed header,
//!    `Invalid token.` for an unknown token, `Token has expired.` for one
//!    unused for longer than the token lifetime (`session.rs`);
//! 4. 405 `Method "X" not allowed.` with `Allow`;
//! 5. object lookup (404 `No <Model> matches the given query.`, DRF's `Not
//!    found.` for a malformed uuid), then the
//!    action's validators (`marketplace/views.py`: project end date 400, state
//!    409, offering type 405), then the request body (lazily, only for
//!    actions that read it; DRF parser errors 400/415, field errors 400).
//!
//! Routes (lists are paginated with `Link` and `X-Result-Count`; action
//! answers are not):
//! - `GET|HEAD /api/marketplace-orders/`, `.../{uuid}/`; `POST .../{uuid}/`
//!   `approve_by_provider|reject_by_provider|set_state_erred|set_state_executing|set_state_done/`.
//! - `GET|HEAD /api/marketplace-provider-resources/`, `.../{uuid}/`; `POST .../{uuid}/`
//!   `set_backend_id|set_as_erred|submit_report/` (200); `GET|HEAD .../{uuid}/team/`
//!   (200, the project's members ordered by username) and `.../{uuid}/plan_periods/`
//!   (200, periods open or ended this month with this month's usages).
//! - `GET|HEAD /api/marketplace-resources/`, `.../{uuid}/`; `POST .../{uuid}/`
//!   `set_backend_id|set_as_erred|set_state_by_provider|submit_report/`;
//!   `GET|HEAD .../{uuid}/team/`, `.../{uuid}/plan_periods/`.
//! - `GET|HEAD /api/customers/`, `.../{uuid}/`: only the provider's own
//!   organisation; a consumer organisation is 404.
//! - `GET|HEAD /api/users/me/`: the token's user with `permissions` (`users.rs`).
//! - `GET|HEAD /api/marketplace-service-providers/` (filter `customer_uuid`),
//!   `.../{uuid}/`, `.../{uuid}/customers/` (paginated `ProviderCustomerSerializer`:
//!   `uuid, name, abbreviation, ...` of the organisations with a non-terminated
//!   resource of the provider's offerings).
//! - `GET|HEAD /api/users/me/`: the token's user with `permissions` (`session.rs`).
//! - `GET|HEAD /api/marketplace-provider-offerings/`, `.../{uuid}/`, and the same
//!   under `/api/marketplace-offerings/`: offerings with their components
//!   (`billing_type` `limit|usage|fixed|...`) and plan.
//! - `POST /api/marketplace-component-usages/set_usage/` (201, empty body;
//!   `ComponentUsageCreateSerializer`); `GET|HEAD /api/marketplace-component-usages/`,
//!   `.../{uuid}/`; `POST .../{uuid}/set_user_usage/` (201, empty body).
//! - `GET|HEAD /api/marketplace-component-user-usages/`, `.../{uuid}/`.
//!
//! Which of these a release serves is decided by `served`: 2021 has no
//! `marketplace-provider-*` views and no provider actions on orders; 7.0/8.0 have
//! no `marketplace-offerings` view and, under `marketplace-resources`, only `team`,
//! `plan_periods` and `set_as_erred`. `set_as_erred` is staff-only (403 before the
//! lookup) except on 8.0. Order `set_state_erred` is 405 unless the offering is
//! `Marketplace.Slurm`.
//!
//! Detail actions are POST-only (`Allow: POST, OPTIONS`) except `team`,
//! `plan_periods` and `customers` (`Allow: GET, HEAD, OPTIONS`). Other Waldur routes are not
//! simulated (404); methods Waldur offers to consumers (creating orders,
//! editing resources) answer 405.
//!
//! INVARIANT: the model lock is taken once per request, after any sleep, and
//! released before the response is returned.

use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use super::offerings::{OFFERING_STATES, OfferingFilter};
use super::query::{InvalidPage, Page, QueryPairs};
use super::serializers::{self, CharRules, FieldErrors, char_field, python_type};
use super::state::{
    Actor, ApiError, Model, ORDER_TYPES, OrderFilter, OrderState, ResourceFilter, ResourceState,
    SortKey,
};
use super::usage::UsageFilter;
use super::{RecordedCall, Sim, WaldurVersion};

/// Django's `DATA_UPLOAD_MAX_MEMORY_SIZE` (2.5 MiB).
const MAX_BODY: usize = 2_621_440;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Collection {
    Orders,
    ProviderResources,
    Resources,
    Customers,
    ProviderOfferings,
    /// The older generation's offering path (`/api/marketplace-offerings/`).
    Offerings,
    ComponentUsages,
    ComponentUserUsages,
    /// `/api/marketplace-service-providers/`: one per provider organisation.
    ServiceProviders,
}

impl Collection {
    fn from_segment(segment: &str) -> Option<Self> {
        match segment {
            "marketplace-orders" => Some(Collection::Orders),
            "marketplace-provider-resources" => Some(Collection::ProviderResources),
            "marketplace-resources" => Some(Collection::Resources),
            "customers" => Some(Collection::Customers),
            "marketplace-provider-offerings" => Some(Collection::ProviderOfferings),
            "marketplace-offerings" => Some(Collection::Offerings),
            "marketplace-component-usages" => Some(Collection::ComponentUsages),
            "marketplace-component-user-usages" => Some(Collection::ComponentUserUsages),
            "marketplace-service-providers" => Some(Collection::ServiceProviders),
            _ => None,
        }
    }

    fn segment(self) -> &'static str {
        match self {
            Collection::Orders => "marketplace-orders",
            Collection::ProviderResources => "marketplace-provider-resources",
            Collection::Resources => "marketplace-resources",
            Collection::Customers => "customers",
            Collection::ProviderOfferings => "marketplace-provider-offerings",
            Collection::Offerings => "marketplace-offerings",
            Collection::ComponentUsages => "marketplace-component-usages",
            Collection::ComponentUserUsages => "marketplace-component-user-usages",
            Collection::ServiceProviders => "marketplace-service-providers",
        }
    }

    /// Actions on the collection itself (`@action(detail=False)`); DRF's
    /// router matches them before the detail route.
    fn list_actions(self) -> &'static [&'static str] {
        match self {
            Collection::ComponentUsages => &["set_usage"],
            _ => &[],
        }
    }

    /// Actions on one object (`@action(detail=True)`); POST unless
    /// [`is_get_action`] says otherwise.
    fn actions(self) -> &'static [&'static str] {
        match self {
            Collection::Orders => &[
                "approve_by_provider",
                "reject_by_provider",
                "set_state_erred",
                "set_state_executing",
                "set_state_done",
            ],
            Collection::ProviderResources => &[
                "set_backend_id",
                "set_as_erred",
                "submit_report",
                "team",
                "plan_periods",
            ],
            Collection::Resources => &[
                "set_backend_id",
                "set_as_erred",
                "set_state_by_provider",
                "submit_report",
                "team",
                "plan_periods",
            ],
            Collection::ComponentUsages => &["set_user_usage"],
            Collection::ServiceProviders => &["customers"],
            Collection::Customers
            | Collection::ProviderOfferings
            | Collection::Offerings
            | Collection::ComponentUserUsages => &[],
        }
    }
}

/// Detail actions declared `methods=["get"]`.
fn is_get_action(action: &str) -> bool {
    matches!(action, "team" | "plan_periods" | "customers")
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Root,
    List(Collection),
    Detail(Collection, String),
    Action(Collection, String, &'static str),
    ListAction(Collection, &'static str),
    /// `GET /api/users/me/`.
    Me,
}

impl Route {
    fn is_post(&self) -> bool {
        match self {
            Route::Action(_, _, action) => !is_get_action(action),
            Route::ListAction(..) => true,
            _ => false,
        }
    }

    fn allow(&self) -> &'static str {
        if self.is_post() {
            "POST, OPTIONS"
        } else {
            "GET, HEAD, OPTIONS"
        }
    }

    fn allows(&self, method: &Method) -> bool {
        if self.is_post() {
            method == Method::POST
        } else {
            method == Method::GET || method == Method::HEAD
        }
    }
}

/// DRF's default lookup pattern `[^/.]+`.
fn is_lookup(segment: &str) -> bool {
    !segment.is_empty() && !segment.contains('.')
}

/// Whether `version` serves `route`: the 2021 API has no provider-resource or
/// provider-offering views and no provider actions on orders (they lived on order
/// items); 7.0 and later have no `marketplace-offerings` view and no provider
/// actions under `marketplace-resources` (`team`, `plan_periods` and the staff-only
/// `set_as_erred` stay on the consumer's view).
fn served(version: WaldurVersion, route: &Route) -> bool {
    match route {
        Route::Root | Route::Me => true,
        Route::List(collection)
        | Route::Detail(collection, _)
        | Route::ListAction(collection, _) => match collection {
            Collection::ProviderResources | Collection::ProviderOfferings => version.is_current(),
            Collection::Offerings => !version.is_current(),
            _ => true,
        },
        Route::Action(collection, _, action) => match collection {
            Collection::ProviderResources | Collection::ProviderOfferings => version.is_current(),
            Collection::Offerings => !version.is_current(),
            Collection::Orders => version.is_current(),
            Collection::Resources => {
                !version.is_current() || matches!(*action, "team" | "plan_periods" | "set_as_erred")
            }
            _ => true,
        },
    }
}

/// Resolves a path that must end with `/` among the routes `version` serves.
fn resolve_for(version: WaldurVersion, path: &str) -> Option<Route> {
    resolve(path).filter(|route| served(version, route))
}

/// Resolves a path that must end with `/`.
fn resolve(path: &str) -> Option<Route> {
    let rest = path.strip_prefix("/api/")?;
    if rest.is_empty() {
        return Some(Route::Root);
    }
    let rest = rest.strip_suffix('/')?;
    if rest == "users/me" {
        return Some(Route::Me);
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let collection = Collection::from_segment(parts.first()?)?;
    match parts.as_slice() {
        [_] => Some(Route::List(collection)),
        [_, id] => match collection.list_actions().iter().find(|a| *a == id) {
            Some(action) => Some(Route::ListAction(collection, action)),
            None if is_lookup(id) => Some(Route::Detail(collection, (*id).to_string())),
            None => None,
        },
        [_, id, action] if is_lookup(id) => collection
            .actions()
            .iter()
            .find(|a| *a == action)
            .map(|a| Route::Action(collection, (*id).to_string(), a)),
        _ => None,
    }
}

/// A response before it becomes HTTP.
#[derive(Debug)]
pub(crate) struct Reply {
    status: u16,
    body: Option<Value>,
    /// Django's own HTML error page, for a crash of the view.
    html: Option<&'static str>,
    headers: Vec<(header::HeaderName, String)>,
}

impl Reply {
    fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            body: Some(body),
            html: None,
            headers: Vec::new(),
        }
    }

    fn empty(status: u16) -> Self {
        Self {
            status,
            body: None,
            html: None,
            headers: Vec::new(),
        }
    }

    /// What Django answers when a view raises (`DEBUG = False`).
    fn server_error() -> Self {
        Self {
            status: 500,
            body: None,
            html: Some("<h1>Server Error (500)</h1>"),
            headers: Vec::new(),
        }
    }

    fn with_header(mut self, name: header::HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn into_response(self, head: bool) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = match (&self.body, head) {
            (Some(body), false) => {
                let bytes = serde_json::to_vec(body).unwrap_or_default();
                (
                    status,
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )],
                    bytes,
                )
                    .into_response()
            }
            (Some(_), true) => (
                status,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
            )
                .into_response(),
            (None, _) => match self.html {
                Some(html) if !head => (
                    status,
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/html; charset=utf-8"),
                    )],
                    html,
                )
                    .into_response(),
                _ => status.into_response(),
            },
        };
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().append(name, value);
            }
        }
        response
    }
}

impl From<ApiError> for Reply {
    fn from(error: ApiError) -> Self {
        Reply::json(error.status, error.body)
    }
}

/// Entry point for every request the admin routes do not take.
pub(crate) async fn handle(State(sim): State<Sim>, request: Request) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let path = uri.path().to_string();
    if path != "/api" && !path.starts_with("/api/") {
        return Reply::json(404, json!({"detail": "Not found."})).into_response(false);
    }
    let headers = request.headers().clone();
    let is_write = matches!(
        method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    let body = to_bytes(request.into_body(), MAX_BODY).await;
    let _in_flight = sim.inner.in_flight.enter();
    if super::events::owns(sim.inner.waldur, &path) {
        let bytes = body.as_deref().unwrap_or_default();
        let (status, reply) = sim.handle_events(&method, &path, &headers, bytes).await;
        if is_write {
            let mut shared = sim.lock();
            shared.calls.push(RecordedCall {
                method: method.as_str().to_string(),
                path,
                query: uri.query().map(str::to_string),
                body: Value::Null,
                status,
                applied_status: None,
            });
            shared.call_times.push(std::time::Instant::now());
            drop(shared);
            sim.note_recorded();
        }
        let reply = Reply::json(status, reply);
        let reply = if status == 401 {
            reply.with_header(header::WWW_AUTHENTICATE, "Token")
        } else {
            reply
        };
        return reply.into_response(method == Method::HEAD);
    }

    let (latency, fault, slow) = sim.take_fault(&path, uri.query());
    if latency > 0 {
        crate::delay::sleep(std::time::Duration::from_millis(latency)).await;
    }

    let mut applied_status = None;
    let (status, response) = match (&body, fault) {
        (_, Some(status)) => (status, fault_response(status)),
        (Err(_), None) => {
            let reply = Reply::json(
                413,
                json!({"detail": "Request body exceeded the allowed size."}),
            );
            (413, reply.into_response(false))
        }
        (Ok(body), None) => {
            let reply = sim.dispatch(&method, uri.path(), uri.query(), &headers, body);
            let status = reply.status;
            match sim.take_applied_fault(is_write, status) {
                Some(fault) => {
                    applied_status = Some(status);
                    (fault, fault_response(fault))
                }
                None => (status, reply.into_response(method == Method::HEAD)),
            }
        }
    };

    sim.note_request(method.as_str(), &path, uri.query(), status);
    if is_write {
        let recorded_body = match &body {
            Ok(bytes) if !bytes.is_empty() => {
                serde_json::from_slice::<Value>(bytes).unwrap_or(Value::Null)
            }
            _ => Value::Null,
        };
        let mut shared = sim.lock();
        shared.calls.push(RecordedCall {
            method: method.as_str().to_string(),
            path,
            query: uri.query().map(str::to_string),
            body: recorded_body,
            status,
            applied_status,
        });
        shared.call_times.push(std::time::Instant::now());
        drop(shared);
        sim.note_recorded();
    }
    if slow > 0 {
        // The change is applied and recorded; the answer comes too late for the caller.
        tokio::time::sleep(std::time::Duration::from_millis(slow)).await;
    }
    response
}

/// What a broken upstream answers: Django's or a proxy's HTML error page.
fn fault_response(status: u16) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = if code == StatusCode::INTERNAL_SERVER_ERROR {
        "<h1>Server Error (500)</h1>".to_string()
    } else {
        let reason = code.canonical_reason().unwrap_or("Error");
        format!(
            "<html>\r\n<head><title>{} {reason}</title></head>\r\n<body>\r\n<center><h1>{} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n",
            code.as_u16(),
            code.as_u16()
        )
    };
    let mut response = (
        code,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        Body::from(body),
    )
        .into_response();
    if code == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

impl Sim {
    /// Takes the injected latency, the failure status when one is due, and the delay
    /// added after a call that succeeds slowly.
    fn take_fault(&self, path: &str, query: Option<&str>) -> (u64, Option<u16>, u64) {
        let mut shared = self.lock();
        let latency = shared.faults.latency_ms;
        let targeted = shared
            .faults
            .fail_path
            .as_deref()
            .is_none_or(|part| path.contains(part));
        if shared.faults.fail_next > 0 && targeted {
            shared.faults.fail_next -= 1;
            return (latency, Some(shared.faults.fail_status.unwrap_or(500)), 0);
        }
        let rate = shared.faults.error_rate;
        let rated = shared.faults.error_path.as_deref().is_none_or(|end| {
            path.ends_with(end) || query.is_some_and(|q| format!("{path}?{q}").ends_with(end))
        });
        if rate > 0.0 && rated && shared.random() < rate {
            let count = shared.faults.error_statuses.len();
            let status = if count == 0 {
                500
            } else {
                let pick = ((shared.random() * count as f64) as usize).min(count - 1);
                shared.faults.error_statuses[pick]
            };
            return (latency, Some(status), 0);
        }
        let slow_rate = shared.faults.slow_rate;
        if slow_rate > 0.0 && shared.random() < slow_rate {
            return (latency, None, shared.faults.slow_ms);
        }
        (latency, None, 0)
    }

    /// The server error that replaces the answer of a write that took effect, when
    /// `applied_error_rate` picks it (only for writes the model accepted: 2xx).
    fn take_applied_fault(&self, is_write: bool, status: u16) -> Option<u16> {
        if !is_write || !(200..300).contains(&status) {
            return None;
        }
        let mut shared = self.lock();
        let rate = shared.faults.applied_error_rate;
        if rate <= 0.0 || shared.random() >= rate {
            return None;
        }
        let statuses = match shared.faults.applied_error_statuses.as_slice() {
            [] => vec![500, 502, 503],
            some => some.to_vec(),
        };
        let pick = ((shared.random() * statuses.len() as f64) as usize).min(statuses.len() - 1);
        Some(statuses[pick])
    }

    fn base_url(&self, headers: &HeaderMap) -> String {
        if let Some(url) = &self.inner.public_url {
            return url.clone();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or("localhost");
        format!("http://{host}")
    }

    /// Authenticates like DRF's `TokenAuthentication`.
    pub(crate) fn authenticate(&self, headers: &HeaderMap) -> Result<Actor, ApiError> {
        let not_provided =
            || ApiError::detail(401, "Authentication credentials were not provided.");
        let Some(raw) = headers.get(header::AUTHORIZATION) else {
            return Err(not_provided());
        };
        let raw = String::from_utf8_lossy(raw.as_bytes());
        let parts: Vec<&str> = raw.split_whitespace().collect();
        match parts.as_slice() {
            [keyword, ..] if !keyword.eq_ignore_ascii_case("token") => Err(not_provided()),
            [] => Err(not_provided()),
            [_] => Err(ApiError::detail(
                401,
                "Invalid token header. No credentials provided.",
            )),
            [_, token] => self.tokens().authenticate(token).map(super::session::actor),
            _ => Err(ApiError::detail(
                401,
                "Invalid token header. Token string should not contain spaces.",
            )),
        }
    }

    fn dispatch(
        &self,
        method: &Method,
        path: &str,
        raw_query: Option<&str>,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Reply {
        let version = self.inner.waldur;
        let Some(route) = resolve_for(version, path) else {
            let slashed = format!("{path}/");
            if !path.ends_with('/') && resolve_for(version, &slashed).is_some() {
                let location = match raw_query {
                    Some(q) => format!("{slashed}?{q}"),
                    None => slashed,
                };
                return Reply::empty(301).with_header(header::LOCATION, location);
            }
            return ApiError::not_found().into();
        };
        let actor = match self.authenticate(headers) {
            Ok(actor) => actor,
            Err(error) => {
                return Reply::from(error).with_header(header::WWW_AUTHENTICATE, "Token");
            }
        };
        if method == Method::OPTIONS {
            return Reply::json(
                200,
                json!({
                    "name": route_name(&route),
                    "description": "",
                    "renders": ["application/json"],
                    "parses": ["application/json", "application/x-www-form-urlencoded"],
                }),
            )
            .with_header(header::ALLOW, route.allow());
        }
        if !route.allows(method) {
            return Reply::json(
                405,
                json!({"detail": format!("Method \"{}\" not allowed.", method.as_str())}),
            )
            .with_header(header::ALLOW, route.allow());
        }
        let base = self.base_url(headers);
        let query = QueryPairs::parse(raw_query);
        let now = OffsetDateTime::now_utc();
        let mut shared = self.lock();
        let model = &mut shared.model;
        let ctx = Context {
            actor: &actor,
            headers,
            body,
            now,
            base: &base,
            path,
            query: &query,
        };
        let result = match route {
            Route::Root => Ok(api_root(version, &base)),
            Route::List(collection) => list(model, collection, &base, path, &query),
            Route::Detail(collection, id) => detail(model, collection, &id, &base, &query),
            Route::Action(collection, id, action) => act(model, collection, &id, action, &ctx),
            Route::ListAction(collection, action) => act_on_list(model, collection, action, &ctx),
            Route::Me => Ok(Reply::json(
                200,
                super::session::me(model, &actor, &query.all("field")),
            )),
        };
        result.unwrap_or_else(Reply::from)
    }
}

/// The API root: the collections this release serves.
fn api_root(version: WaldurVersion, base: &str) -> Reply {
    let mut root = Map::new();
    for collection in [
        Collection::Customers,
        Collection::Orders,
        Collection::ProviderResources,
        Collection::Resources,
        Collection::ProviderOfferings,
        Collection::Offerings,
        Collection::ComponentUsages,
        Collection::ComponentUserUsages,
        Collection::ServiceProviders,
    ] {
        if served(version, &Route::List(collection)) {
            let segment = collection.segment();
            root.insert(
                segment.to_string(),
                Value::String(format!("{base}/api/{segment}/")),
            );
        }
    }
    Reply::json(200, Value::Object(root))
}

fn route_name(route: &Route) -> &'static str {
    match route {
        Route::Root => "Api Root",
        Route::List(Collection::Orders) => "Order List",
        Route::Detail(Collection::Orders, _) => "Order Instance",
        Route::List(Collection::Customers) => "Customer List",
        Route::Detail(Collection::Customers, _) => "Customer Instance",
        Route::List(Collection::ProviderOfferings | Collection::Offerings) => "Offering List",
        Route::Detail(Collection::ProviderOfferings | Collection::Offerings, _) => {
            "Offering Instance"
        }
        Route::List(Collection::ComponentUsages) => "Component Usage List",
        Route::Detail(Collection::ComponentUsages, _) => "Component Usage Instance",
        Route::List(Collection::ComponentUserUsages) => "Component User Usage List",
        Route::List(Collection::ServiceProviders) => "Service Provider List",
        Route::Detail(Collection::ServiceProviders, _) => "Service Provider Instance",
        Route::Detail(Collection::ComponentUserUsages, _) => "Component User Usage Instance",
        Route::List(_) => "Resource List",
        Route::Detail(..) => "Resource Instance",
        Route::Action(_, _, "team") => "Team",
        Route::Action(_, _, "plan_periods") => "Plan Periods",
        Route::Action(_, _, "customers") => "Customers",
        Route::Action(..) | Route::ListAction(..) => "Action",
        Route::Me => "User Instance",
    }
}

// ----- lists -----

fn select_fields(mut object: Map<String, Value>, fields: &[&str]) -> Map<String, Value> {
    // Waldur's RestrictedSerializerMixin: unknown names are ignored; when no
    // requested name is known, every field is rendered.
    if fields.iter().any(|f| object.contains_key(*f)) {
        object.retain(|key, _| fields.contains(&key.as_str()));
    }
    object
}

fn choice_error(value: &str) -> String {
    format!("Select a valid choice. {value} is not one of the available choices.")
}

/// The filter side of [`FieldErrors`] (django-filter's messages).
impl FieldErrors {
    fn uuid(&mut self, query: &QueryPairs, field: &str) -> Option<Uuid> {
        let raw = query.last(field)?;
        if raw.is_empty() {
            return None;
        }
        match Uuid::parse_str(raw.trim()) {
            Ok(uuid) => Some(uuid),
            Err(_) => {
                self.add(field, "Enter a valid UUID.".to_string());
                None
            }
        }
    }

    fn text(query: &QueryPairs, field: &str) -> Option<String> {
        query
            .last(field)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    }

    fn ordering(
        &mut self,
        query: &QueryPairs,
        allowed: &[(&str, SortKey)],
    ) -> Vec<(SortKey, bool)> {
        let mut out = Vec::new();
        let Some(raw) = query.last("o") else {
            return out;
        };
        for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, desc) = match item.strip_prefix('-') {
                Some(name) => (name, true),
                None => (item, false),
            };
            match allowed.iter().find(|(n, _)| *n == name) {
                Some((_, key)) => out.push((*key, desc)),
                None => self.add("o", choice_error(item)),
            }
        }
        out
    }

    /// A `DateFilter` (Django's `forms.DateField` with the English input formats).
    fn date(&mut self, query: &QueryPairs, field: &str) -> Option<time::Date> {
        let raw = query.last(field)?.trim();
        if raw.is_empty() {
            return None;
        }
        let parsed = django_date(raw);
        if parsed.is_none() {
            self.add(field, "Enter a valid date.".to_string());
        }
        parsed
    }
}

/// `forms.DateField`'s numeric input formats: `%Y-%m-%d`, `%m/%d/%Y`, `%m/%d/%y`
/// (month and day may lack their leading zero).
fn django_date(raw: &str) -> Option<time::Date> {
    let number = |s: &str, max_len: usize| -> Option<u32> {
        if s.is_empty() || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (year, month, day) = if let [y, m, d] = raw.split('-').collect::<Vec<_>>()[..] {
        if y.len() != 4 {
            return None;
        }
        (number(y, 4)?, number(m, 2)?, number(d, 2)?)
    } else if let [m, d, y] = raw.split('/').collect::<Vec<_>>()[..] {
        let year = match y.len() {
            4 => number(y, 4)?,
            // Python's `%y`: 69-99 are 19xx, 00-68 are 20xx.
            2 => number(y, 2).map(|y| if y >= 69 { 1900 + y } else { 2000 + y })?,
            _ => return None,
        };
        (year, number(m, 2)?, number(d, 2)?)
    } else {
        return None;
    };
    let month = time::Month::try_from(u8::try_from(month).ok()?).ok()?;
    time::Date::from_calendar_date(i32::try_from(year).ok()?, month, u8::try_from(day).ok()?).ok()
}

/// Whether the body is a form (its flat fields never hold lists).
fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase())
        .is_some_and(|v| {
            v.trim_start()
                .starts_with("application/x-www-form-urlencoded")
        })
}

fn order_filter(query: &QueryPairs) -> Result<(OrderFilter, Vec<(SortKey, bool)>), ApiError> {
    let mut errors = FieldErrors::new();
    let mut filter = OrderFilter::default();
    for value in query.all("state") {
        match OrderState::parse(value) {
            Some(state) => filter.states.push(state),
            None => errors.add("state", choice_error(value)),
        }
    }
    for value in query.all("type") {
        if ORDER_TYPES.contains(&value) {
            filter.types.push(value.to_string());
        } else {
            errors.add("type", choice_error(value));
        }
    }
    filter.offering_types = query
        .all("offering_type")
        .into_iter()
        .map(str::to_string)
        .collect();
    filter.offering = errors.uuid(query, "offering_uuid");
    filter.provider = errors.uuid(query, "provider_uuid");
    filter.project = errors.uuid(query, "project_uuid");
    filter.customer = errors.uuid(query, "customer_uuid");
    filter.resource = errors.uuid(query, "resource_uuid");
    let sort = errors.ordering(
        query,
        &[
            ("created", SortKey::Created),
            ("state", SortKey::State),
            ("cost", SortKey::Constant),
            ("consumer_reviewed_at", SortKey::Constant),
        ],
    );
    errors.finish()?;
    Ok((filter, sort))
}

fn resource_filter(query: &QueryPairs) -> Result<(ResourceFilter, Vec<(SortKey, bool)>), ApiError> {
    let mut errors = FieldErrors::new();
    let mut filter = ResourceFilter::default();
    for value in query.all("state") {
        match ResourceState::parse(value) {
            Some(state) => filter.states.push(state),
            None => errors.add("state", choice_error(value)),
        }
    }
    filter.offering = errors.uuid(query, "offering_uuid");
    filter.provider = errors.uuid(query, "provider_uuid");
    filter.project = errors.uuid(query, "project_uuid");
    filter.customer = errors.uuid(query, "customer_uuid");
    filter.backend_id = FieldErrors::text(query, "backend_id");
    filter.offering_type = FieldErrors::text(query, "offering_type");
    filter.name = FieldErrors::text(query, "name");
    filter.name_exact = FieldErrors::text(query, "name_exact");
    filter.project_name = FieldErrors::text(query, "project_name");
    let sort = errors.ordering(
        query,
        &[("name", SortKey::Name), ("created", SortKey::Created)],
    );
    errors.finish()?;
    Ok((filter, sort))
}

fn offering_filter(query: &QueryPairs) -> Result<(OfferingFilter, Vec<(SortKey, bool)>), ApiError> {
    let mut errors = FieldErrors::new();
    let mut filter = OfferingFilter::default();
    for value in query.all("state") {
        if OFFERING_STATES.contains(&value) {
            filter.states.push(value.to_string());
        } else {
            errors.add("state", choice_error(value));
        }
    }
    // `LooseMultipleChoiceFilter`: any value is accepted.
    filter.types = query
        .all("type")
        .into_iter()
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect();
    filter.customer = errors.uuid(query, "customer_uuid");
    filter.name = FieldErrors::text(query, "name");
    filter.name_exact = FieldErrors::text(query, "name_exact");
    let sort = errors.ordering(
        query,
        &[
            ("name", SortKey::Name),
            ("created", SortKey::Constant),
            ("type", SortKey::Constant),
            ("state", SortKey::Constant),
            ("total_customers", SortKey::Constant),
            ("total_cost", SortKey::Constant),
            ("total_cost_estimated", SortKey::Constant),
        ],
    );
    errors.finish()?;
    Ok((filter, sort))
}

/// `ComponentUsageFilter` / `ComponentUserUsageFilter`; the user usages name
/// the billing period `component_usage__billing_period`.
fn usage_filter(query: &QueryPairs, billing_period: &str) -> Result<UsageFilter, ApiError> {
    let mut errors = FieldErrors::new();
    let filter = UsageFilter {
        resource: errors.uuid(query, "resource_uuid"),
        offering: errors.uuid(query, "offering_uuid"),
        project: errors.uuid(query, "project_uuid"),
        customer: errors.uuid(query, "customer_uuid"),
        component: FieldErrors::text(query, "type"),
        billing_period: errors.date(query, billing_period),
        date_before: errors.date(query, "date_before"),
        date_after: errors.date(query, "date_after"),
    };
    errors.finish()?;
    Ok(filter)
}

/// `ComponentUsageSerializer.get_fields`: with `field=`, only the named known
/// fields (possibly none) are rendered.
fn select_usage_fields(mut object: Map<String, Value>, fields: &[&str]) -> Map<String, Value> {
    if !fields.is_empty() {
        object.retain(|key, _| fields.contains(&key.as_str()));
    }
    object
}

fn list(
    model: &Model,
    collection: Collection,
    base: &str,
    path: &str,
    query: &QueryPairs,
) -> Result<Reply, ApiError> {
    let fields = query.all("field");
    let with_order = fields.contains(&"creation_order");
    let items = match collection {
        Collection::Orders => {
            let (filter, sort) = order_filter(query)?;
            model.list_orders(&filter, &sort)
        }
        Collection::ProviderResources | Collection::Resources => {
            let (filter, sort) = resource_filter(query)?;
            model.list_resources(&filter, &sort)
        }
        // A provider's user sees the organisations it has a role in: its own.
        Collection::Customers => model.visible_customers(),
        Collection::ServiceProviders => {
            let mut errors = FieldErrors::new();
            let customer = errors.uuid(query, "customer_uuid");
            errors.finish()?;
            model.list_service_providers(customer)
        }
        Collection::ProviderOfferings | Collection::Offerings => {
            let (filter, sort) = offering_filter(query)?;
            model.list_offerings(&filter, &sort)
        }
        Collection::ComponentUsages => model.list_usages(&usage_filter(query, "billing_period")?),
        Collection::ComponentUserUsages => {
            model.list_user_usages(&usage_filter(query, "component_usage__billing_period")?)
        }
    };
    let render = |i: usize| match collection {
        Collection::Orders => select_fields(model.render_order(i, base), &fields),
        Collection::ProviderResources | Collection::Resources => {
            select_fields(model.render_resource(i, base, with_order), &fields)
        }
        Collection::Customers => select_fields(model.render_customer(i, base), &fields),
        Collection::ServiceProviders => {
            select_fields(model.render_service_provider(i, base), &fields)
        }
        Collection::ProviderOfferings | Collection::Offerings => select_fields(
            model.render_offering(i, base, collection.segment()),
            &fields,
        ),
        Collection::ComponentUsages => select_usage_fields(model.render_usage(i), &fields),
        // `ComponentUserUsageSerializer` has no field selection.
        Collection::ComponentUserUsages => model.render_user_usage(i, base),
    };
    paginated(&items, render, base, path, query)
}

/// One page of `items`, rendered, with `Link` and `X-Result-Count`.
fn paginated(
    items: &[usize],
    render: impl Fn(usize) -> Map<String, Value>,
    base: &str,
    path: &str,
    query: &QueryPairs,
) -> Result<Reply, ApiError> {
    let count = items.len();
    let page = Page::select(count, query.last("page"), query.last("page_size"))
        .map_err(|InvalidPage| ApiError::detail(404, "Invalid page."))?;
    let body: Vec<Value> = items[page.range(count)]
        .iter()
        .map(|&i| Value::Object(render(i)))
        .collect();
    let link = page.link_header(&format!("{base}{path}"), query);
    Ok(Reply::json(200, Value::Array(body))
        .with_header(
            header::HeaderName::from_static("x-result-count"),
            count.to_string(),
        )
        .with_header(header::LINK, link))
}

/// Looks `id` up with `find` like DRF's `get_object_or_404`: an unknown uuid is
/// Django's `No <Model> matches the given query.`; a malformed one fails the
/// `UUIDField` lookup and is DRF's bare `Not found.`.
fn lookup(
    id: &str,
    model_name: &str,
    find: impl Fn(Uuid) -> Option<usize>,
) -> Result<usize, ApiError> {
    let uuid = Uuid::parse_str(id).map_err(|_| ApiError::not_found())?;
    find(uuid).ok_or_else(|| ApiError::no_match(model_name))
}

fn find_order(model: &Model, id: &str) -> Result<usize, ApiError> {
    lookup(id, "Order", |uuid| model.order_by_uuid(uuid))
}

fn find_resource(model: &Model, id: &str) -> Result<usize, ApiError> {
    lookup(id, "Resource", |uuid| model.resource_by_uuid(uuid))
}

fn detail(
    model: &Model,
    collection: Collection,
    id: &str,
    base: &str,
    query: &QueryPairs,
) -> Result<Reply, ApiError> {
    let fields = query.all("field");
    let object = match collection {
        Collection::Orders => {
            select_fields(model.render_order(find_order(model, id)?, base), &fields)
        }
        Collection::ProviderResources | Collection::Resources => select_fields(
            model.render_resource(find_resource(model, id)?, base, true),
            &fields,
        ),
        Collection::Customers => {
            let customer = lookup(id, "Customer", |uuid| model.visible_customer_by_uuid(uuid))?;
            select_fields(model.render_customer(customer, base), &fields)
        }
        Collection::ServiceProviders => {
            let provider = lookup(id, "ServiceProvider", |uuid| {
                model.service_provider_by_uuid(uuid)
            })?;
            select_fields(model.render_service_provider(provider, base), &fields)
        }
        Collection::ProviderOfferings | Collection::Offerings => {
            let offering = lookup(id, "Offering", |uuid| model.offering_by_uuid(uuid))?;
            select_fields(
                model.render_offering(offering, base, collection.segment()),
                &fields,
            )
        }
        Collection::ComponentUsages => {
            let usage = lookup(id, "ComponentUsage", |uuid| model.usage_by_uuid(uuid))?;
            select_usage_fields(model.render_usage(usage), &fields)
        }
        Collection::ComponentUserUsages => {
            let user_usage = lookup(id, "ComponentUserUsage", |uuid| {
                model.user_usages.iter().position(|u| u.uuid == uuid)
            })?;
            model.render_user_usage(user_usage, base)
        }
    };
    Ok(Reply::json(200, Value::Object(object)))
}

// ----- request bodies -----

/// `request.data` as DRF's parsers produce it.
fn request_data(headers: &HeaderMap, body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    if body.is_empty() {
        return Ok(Map::new());
    }
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    else {
        // Without a media type DRF does not parse the body at all.
        return Ok(Map::new());
    };
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/json" => {
            let value: Value = serde_json::from_slice(body)
                .map_err(|error| ApiError::detail(400, format!("JSON parse error - {error}")))?;
            match value {
                Value::Object(map) => Ok(map),
                other => Err(ApiError {
                    status: 400,
                    body: json!({"non_field_errors": [format!(
                        "Invalid data. Expected a dictionary, but got {}.",
                        python_type(&other)
                    )]}),
                }),
            }
        }
        "application/x-www-form-urlencoded" => {
            let text = String::from_utf8_lossy(body);
            let map = QueryPairs::parse(Some(&text))
                .last_values()
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            Ok(map)
        }
        _ => Err(ApiError::detail(
            415,
            format!("Unsupported media type \"{content_type}\" in request."),
        )),
    }
}

// ----- actions -----

/// What every action may need besides the model.
struct Context<'a> {
    actor: &'a Actor,
    headers: &'a HeaderMap,
    body: &'a Bytes,
    now: OffsetDateTime,
    base: &'a str,
    path: &'a str,
    query: &'a QueryPairs,
}

fn act(
    model: &mut Model,
    collection: Collection,
    id: &str,
    action: &str,
    ctx: &Context<'_>,
) -> Result<Reply, ApiError> {
    let (actor, headers, body, now) = (ctx.actor, ctx.headers, ctx.body, ctx.now);
    let optional_text = CharRules {
        required: false,
        allow_blank: true,
        max_length: None,
    };
    let required_text = CharRules {
        required: true,
        allow_blank: true,
        max_length: None,
    };
    if collection == Collection::ComponentUsages {
        let usage = lookup(id, "ComponentUsage", |uuid| model.usage_by_uuid(uuid))?;
        return match action {
            "set_user_usage" => {
                let data = request_data(headers, body)?;
                let request = serializers::set_user_usage(&data)?;
                let amount = match (request.usage, model.user_usage(usage, &request.username)) {
                    (Some(amount), _) => amount,
                    (None, None) => super::decimal::Amount::ZERO,
                    // Waldur reads `validated_data["usage"]` to update an
                    // existing entry: without it the view raises.
                    (None, Some(_)) => return Ok(Reply::server_error()),
                };
                model.set_user_usage(usage, &request.username, amount, now);
                Ok(Reply::empty(201))
            }
            _ => Err(ApiError::not_found()),
        };
    }
    if collection == Collection::ServiceProviders {
        let provider = lookup(id, "ServiceProvider", |uuid| {
            model.service_provider_by_uuid(uuid)
        })?;
        return match action {
            // `ProviderCustomerSerializer`: no field selection; the organisations with a
            // resource of the provider's offerings.
            "customers" => paginated(
                &model.provider_customers(provider),
                |i| model.render_provider_customer(i, provider),
                ctx.base,
                ctx.path,
                ctx.query,
            ),
            _ => Err(ApiError::not_found()),
        };
    }
    if collection == Collection::Orders {
        let order = find_order(model, id)?;
        return match action {
            "approve_by_provider" => {
                model.approve_by_provider(order, actor, now)?;
                Ok(Reply::empty(200))
            }
            "reject_by_provider" => {
                if model.orders[order].state != OrderState::PendingProvider {
                    return Err(ApiError::states(&["pending-provider"]));
                }
                let data = request_data(headers, body)?;
                let mut errors = FieldErrors::new();
                let comment = char_field(
                    &data,
                    "provider_rejection_comment",
                    &optional_text,
                    &mut errors,
                );
                errors.finish()?;
                model.reject_by_provider(order, actor, comment, now)?;
                Ok(Reply::empty(200))
            }
            "set_state_erred" => {
                model.check_order_erred_allowed(order)?;
                let data = request_data(headers, body)?;
                let mut errors = FieldErrors::new();
                let message = char_field(&data, "error_message", &required_text, &mut errors);
                let traceback = char_field(&data, "error_traceback", &required_text, &mut errors);
                errors.finish()?;
                model.set_order_erred(
                    order,
                    message.unwrap_or_default(),
                    traceback.unwrap_or_default(),
                    now,
                )?;
                Ok(Reply::empty(200))
            }
            "set_state_executing" => {
                model.set_order_executing(order, now)?;
                Ok(Reply::empty(200))
            }
            "set_state_done" => {
                model.set_order_done(order, now)?;
                Ok(Reply::empty(200))
            }
            _ => Err(ApiError::not_found()),
        };
    }
    if action == "set_as_erred" && model.version != WaldurVersion::V8_0 {
        // `set_as_erred_permissions = [is_staff]`, checked before the object lookup.
        return Err(ApiError::permission_denied());
    }
    let resource = find_resource(model, id)?;
    match action {
        "team" => Ok(Reply::json(200, model.render_team(resource, ctx.base))),
        "plan_periods" => Ok(Reply::json(200, model.render_plan_periods(resource, now))),
        "submit_report" => {
            // No state validator: any resource the provider sees takes a report.
            let data = request_data(headers, body)?;
            let sections = serializers::report(&data, is_form(headers))?;
            model.set_report(resource, sections, now);
            Ok(Reply::json(200, json!({"status": "Report is submitted"})))
        }
        "set_backend_id" => {
            let data = request_data(headers, body)?;
            let mut errors = FieldErrors::new();
            let rules = CharRules {
                required: true,
                allow_blank: true,
                max_length: Some(255),
            };
            let backend_id = char_field(&data, "backend_id", &rules, &mut errors);
            errors.finish()?;
            let changed = model.set_backend_id(resource, backend_id.unwrap_or_default(), now);
            let status = if changed {
                "Resource backend_id has been changed."
            } else {
                "Resource backend_id is not changed."
            };
            Ok(Reply::json(200, json!({ "status": status })))
        }
        "set_as_erred" => {
            // The view reads no body: the resource becomes `Erred`, its order is untouched.
            model.set_resource_erred(resource, now);
            Ok(Reply::empty(200))
        }
        "set_state_by_provider" => {
            let data = request_data(headers, body)?;
            let target = match data.get("state") {
                None => return Err(ApiError::field("state", "This field is required.")),
                Some(Value::Null) => {
                    return Err(ApiError::field("state", "This field may not be null."));
                }
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => if *b { "True" } else { "False" }.to_string(),
                Some(other) => other.to_string(),
            };
            model.set_state_by_provider(resource, &target, actor, now)?;
            Ok(Reply::json(
                200,
                json!({"status": "Resource state has been changed."}),
            ))
        }
        _ => Err(ApiError::not_found()),
    }
}

/// Actions on a whole collection: `set_usage` (validated before anything
/// changes, answered 201 without a body).
fn act_on_list(
    model: &mut Model,
    collection: Collection,
    action: &str,
    ctx: &Context<'_>,
) -> Result<Reply, ApiError> {
    match (collection, action) {
        (Collection::ComponentUsages, "set_usage") => {
            let data = request_data(ctx.headers, ctx.body)?;
            let request = serializers::set_usage(model, &data, is_form(ctx.headers), ctx.now)?;
            model.set_usage(
                request.resource,
                request.plan_period,
                &request.lines,
                ctx.actor,
                ctx.now,
            );
            Ok(Reply::empty(201))
        }
        _ => Err(ApiError::not_found()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_routes() {
        assert_eq!(resolve("/api/"), Some(Route::Root));
        assert_eq!(
            resolve("/api/marketplace-orders/"),
            Some(Route::List(Collection::Orders))
        );
        assert_eq!(
            resolve("/api/marketplace-orders/abc/approve_by_provider/"),
            Some(Route::Action(
                Collection::Orders,
                "abc".into(),
                "approve_by_provider"
            ))
        );
        assert_eq!(resolve("/api/marketplace-orders"), None);
        assert_eq!(resolve("/api/marketplace-orders/abc/set_backend_id/"), None);
        assert_eq!(resolve("/api/marketplace-orders/a.b/"), None);
        assert_eq!(
            resolve("/api/marketplace-resources/x/set_state_by_provider/"),
            Some(Route::Action(
                Collection::Resources,
                "x".into(),
                "set_state_by_provider"
            ))
        );
        assert_eq!(
            resolve("/api/marketplace-provider-resources/x/set_state_by_provider/"),
            None
        );
    }

    #[test]
    fn resolves_list_actions_before_details_and_get_actions() {
        let usages = Collection::ComponentUsages;
        let set_usage = resolve("/api/marketplace-component-usages/set_usage/");
        assert_eq!(set_usage, Some(Route::ListAction(usages, "set_usage")));
        assert_eq!(set_usage.map(|r| r.allow()), Some("POST, OPTIONS"));
        assert_eq!(
            resolve("/api/marketplace-component-usages/abc/"),
            Some(Route::Detail(usages, "abc".into()))
        );
        let team = resolve("/api/marketplace-provider-resources/x/team/");
        assert_eq!(team.as_ref().map(Route::allow), Some("GET, HEAD, OPTIONS"));
        assert!(team.as_ref().is_some_and(|r| r.allows(&Method::HEAD)));
        assert!(!team.as_ref().is_some_and(|r| r.allows(&Method::POST)));
        assert_eq!(resolve("/api/marketplace-orders/x/team/"), None);
        assert_eq!(
            resolve("/api/marketplace-component-user-usages/x/set_user_usage/"),
            None
        );
    }

    #[test]
    fn dates_follow_django_input_formats() {
        let text = |raw: &str| django_date(raw).map(crate::state::date_string);
        assert_eq!(text("2025-03-01"), Some("2025-03-01".into()));
        assert_eq!(text("2025-3-1"), Some("2025-03-01".into()));
        assert_eq!(text("03/01/2025"), Some("2025-03-01".into()));
        assert_eq!(text("03/01/25"), Some("2025-03-01".into()));
        assert_eq!(text("2025-02-30"), None);
        assert_eq!(text("25-03-01"), None);
        assert_eq!(text("March"), None);
    }

    #[test]
    fn unknown_field_names_are_ignored() {
        let mut object = Map::new();
        object.insert("uuid".into(), json!("u"));
        object.insert("state".into(), json!("s"));
        assert_eq!(select_fields(object.clone(), &["nope"]).len(), 2);
        assert_eq!(select_fields(object, &["nope", "state"]).len(), 1);
    }
}
