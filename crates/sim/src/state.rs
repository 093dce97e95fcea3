//! The simulator's in-memory model of the Waldur marketplace slice a service
//! provider sees: organisations (customers, some of them providers), projects,
//! offerings with components and one plan, and allocations (a `Create` order
//! plus its marketplace resource). No IO happens here.
//!
//! INVARIANT: every allocation has exactly one creation order and one resource,
//! and each points at the other; indices into the vectors never change (nothing
//! is deleted except project members). Every resource has the plan period
//! opened at its creation (`usage.rs` keeps periods and usages; `team.rs` the
//! project teams; `offerings.rs` renders offerings).
//! INVARIANT: `created` timestamps are strictly increasing in creation order
//! (microsecond resolution), so sorting by `(created, uuid)` is stable and equals
//! insertion order.
//! INVARIANT: state changes follow Waldur's FSMs (`marketplace/models.py`):
//! order `reject` only from pending-consumer/pending-provider, resource
//! `set_state_ok` only from Creating/Erred/Updating(/Terminating), `erred` and
//! `terminated` from anywhere; a creation order that fails while its resource is
//! still `Creating` without a `backend_id` terminates the resource instead of
//! erring it (`handlers.update_resource_when_order_is_rejected_or_erred`).

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use time::{Date, Month, OffsetDateTime, UtcOffset};
use uuid::Uuid;

use super::decimal::Amount;
use super::{Catalogue, CatalogueCustomer, CatalogueOffering, CatalogueProject, SimError};

/// The offering type that always needs provider review (Puhuri's LUMI offerings).
pub(crate) const BASIC: &str = "Marketplace.Basic";
/// The agent-driven offering type (`SLURM_REMOTE_PLUGIN_NAME`).
pub(crate) const SLURM: &str = "Marketplace.Slurm";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OrderState {
    PendingConsumer,
    PendingProvider,
    PendingProject,
    Executing,
    Done,
    Erred,
    Canceled,
    Rejected,
}

impl OrderState {
    pub(crate) const ALL: [OrderState; 8] = [
        OrderState::PendingConsumer,
        OrderState::PendingProvider,
        OrderState::PendingProject,
        OrderState::Executing,
        OrderState::Done,
        OrderState::Erred,
        OrderState::Canceled,
        OrderState::Rejected,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            OrderState::PendingConsumer => "pending-consumer",
            OrderState::PendingProvider => "pending-provider",
            OrderState::PendingProject => "pending-project",
            OrderState::Executing => "executing",
            OrderState::Done => "done",
            OrderState::Erred => "erred",
            OrderState::Canceled => "canceled",
            OrderState::Rejected => "rejected",
        }
    }

    pub(crate) fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }

    pub(crate) fn is_terminal(self) -> bool {
        matches!(
            self,
            OrderState::Done | OrderState::Erred | OrderState::Canceled | OrderState::Rejected
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResourceState {
    Creating,
    Ok,
    Erred,
    Updating,
    Terminating,
    Terminated,
}

impl ResourceState {
    pub(crate) const ALL: [ResourceState; 6] = [
        ResourceState::Creating,
        ResourceState::Ok,
        ResourceState::Erred,
        ResourceState::Updating,
        ResourceState::Terminating,
        ResourceState::Terminated,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ResourceState::Creating => "Creating",
            ResourceState::Ok => "OK",
            ResourceState::Erred => "Erred",
            ResourceState::Updating => "Updating",
            ResourceState::Terminating => "Terminating",
            ResourceState::Terminated => "Terminated",
        }
    }

    pub(crate) fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }
}

/// Order types; the simulator only creates `Create` orders.
pub(crate) const ORDER_TYPES: [&str; 3] = ["Create", "Update", "Terminate"];

/// An error rendered the way Django REST framework renders it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub status: u16,
    pub body: Value,
}

impl ApiError {
    pub(crate) fn detail(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({ "detail": message.into() }),
        }
    }

    /// 403 from a permission check (`PermissionDenied()` without a message).
    pub(crate) fn permission_denied() -> Self {
        Self::detail(403, "You do not have permission to perform this action.")
    }

    /// Django's `get_object_or_404` for an unknown key (DRF >= 3.15 keeps its text).
    pub(crate) fn no_match(model_name: &str) -> Self {
        Self::detail(404, format!("No {model_name} matches the given query."))
    }

    pub(crate) fn not_found() -> Self {
        Self::detail(404, "Not found.")
    }

    /// 409 from `core_validators.StateValidator`.
    pub(crate) fn states(valid: &[&str]) -> Self {
        Self::detail(
            409,
            format!("Valid states for operation: {}.", valid.join(", ")),
        )
    }

    /// 400 `{"field": ["message"]}`.
    pub(crate) fn field(field: &str, message: impl Into<String>) -> Self {
        Self {
            status: 400,
            body: json!({ field: [message.into()] }),
        }
    }

    /// 400 `["message"]` (a bare `ValidationError`).
    pub(crate) fn bare(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            body: json!([message.into()]),
        }
    }

    /// 405 from `OfferingTypeValidator`.
    pub(crate) fn offering_type(offering_type: &str) -> Self {
        Self::detail(
            405,
            format!("The order's offering with {offering_type} type does not support this action"),
        )
    }
}

/// The user on whose behalf an API call acts.
#[derive(Debug, Clone)]
pub(crate) struct Actor {
    pub username: String,
    pub full_name: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Customer {
    pub uuid: Uuid,
    pub name: String,
    pub slug: String,
    pub abbreviation: String,
    pub country: String,
    pub is_provider: bool,
    /// The user who requests allocations for this organisation's projects.
    pub pi_username: String,
    pub pi_full_name: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Project {
    pub uuid: Uuid,
    pub name: String,
    pub slug: String,
    pub customer: usize,
    pub end_date: Option<Date>,
    /// The project team, at most one entry per username.
    pub members: Vec<Member>,
}

/// A project role as `get_old_role_name` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Admin,
    Manager,
    Member,
}

impl Role {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Manager => "manager",
            Role::Member => "member",
        }
    }

    pub(crate) fn parse(value: &str) -> Option<Self> {
        [Role::Admin, Role::Manager, Role::Member]
            .into_iter()
            .find(|r| r.as_str() == value)
    }
}

/// A user with a role in a project.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub username: String,
    pub full_name: String,
    pub email: String,
    pub role: Role,
    pub expiration_time: Option<OffsetDateTime>,
    pub offering_user_username: Option<String>,
}

/// `OfferingComponent.BillingTypes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BillingType {
    Fixed,
    Usage,
    Limit,
    OneTime,
    OnPlanSwitch,
}

impl BillingType {
    pub(crate) const ALL: [BillingType; 5] = [
        BillingType::Fixed,
        BillingType::Usage,
        BillingType::Limit,
        BillingType::OneTime,
        BillingType::OnPlanSwitch,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BillingType::Fixed => "fixed",
            BillingType::Usage => "usage",
            BillingType::Limit => "limit",
            BillingType::OneTime => "one",
            BillingType::OnPlanSwitch => "few",
        }
    }

    pub(crate) fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == value)
    }

    /// Whether `set_usage` accepts reports for it (`get_components_map`).
    pub(crate) fn is_reportable(self) -> bool {
        matches!(self, BillingType::Usage | BillingType::Limit)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Component {
    pub uuid: Uuid,
    pub kind: String,
    pub name: String,
    pub measured_unit: String,
    pub billing_type: BillingType,
}

/// A component as the admin API describes it.
#[derive(Debug, Clone)]
pub(crate) struct ComponentSpec {
    pub kind: String,
    pub name: Option<String>,
    pub measured_unit: Option<String>,
    pub billing_type: BillingType,
}

/// A resource's billing plan over a time frame (`ResourcePlanPeriod`).
#[derive(Debug, Clone)]
pub(crate) struct PlanPeriod {
    pub uuid: Uuid,
    pub resource: usize,
    pub plan_uuid: Uuid,
    pub plan_name: String,
    pub start: OffsetDateTime,
    pub end: Option<OffsetDateTime>,
}

/// One reported usage of a component in a month (`ComponentUsage`).
#[derive(Debug, Clone)]
pub(crate) struct ComponentUsage {
    pub uuid: Uuid,
    pub resource: usize,
    /// The component type (a reportable component of the resource's offering).
    pub component: String,
    pub plan_period: Option<usize>,
    /// The first day of the month the usage is for.
    pub billing_period: Date,
    pub usage: Amount,
    pub date: OffsetDateTime,
    pub created: OffsetDateTime,
    pub description: String,
    pub recurring: bool,
    pub modified_by: Option<String>,
}

/// A user's share of a component usage (`ComponentUserUsage`).
#[derive(Debug, Clone)]
pub(crate) struct UserUsage {
    pub uuid: Uuid,
    pub component_usage: usize,
    pub username: String,
    pub usage: Amount,
    pub created: OffsetDateTime,
    pub modified: OffsetDateTime,
}

#[derive(Debug, Clone)]
pub(crate) struct Offering {
    pub uuid: Uuid,
    pub name: String,
    pub slug: String,
    pub offering_type: String,
    pub provider: usize,
    pub components: Vec<Component>,
    pub plan_uuid: Uuid,
    pub plan_name: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Order {
    pub uuid: Uuid,
    pub state: OrderState,
    pub resource: usize,
    pub offering: usize,
    pub project: usize,
    pub attributes: Map<String, Value>,
    pub limits: Map<String, Value>,
    pub created: OffsetDateTime,
    pub modified: OffsetDateTime,
    pub created_by: Actor,
    pub provider_reviewed_by: Option<Actor>,
    pub provider_reviewed_at: Option<OffsetDateTime>,
    pub provider_rejection_comment: Option<String>,
    pub error_message: String,
    pub error_traceback: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Resource {
    pub uuid: Uuid,
    pub name: String,
    pub slug: String,
    pub state: ResourceState,
    pub backend_id: String,
    pub limits: Map<String, Value>,
    pub attributes: Map<String, Value>,
    pub offering: usize,
    pub project: usize,
    pub created: OffsetDateTime,
    pub modified: OffsetDateTime,
    pub end_date: Option<Date>,
    pub report: Option<Value>,
    pub error_message: String,
    pub creation_order: usize,
    /// The amounts of the last `set_usage` call, as strings.
    pub current_usages: Map<String, Value>,
}

/// A validated request for a new allocation.
#[derive(Debug, Clone)]
pub(crate) struct AllocationSpec {
    pub offering: usize,
    pub project: usize,
    pub name: Option<String>,
    pub limits: Map<String, Value>,
    pub attributes: Map<String, Value>,
    pub order_state: OrderState,
}

/// Filters of `GET /api/marketplace-orders/` (validated).
#[derive(Debug, Default)]
pub(crate) struct OrderFilter {
    pub states: Vec<OrderState>,
    pub types: Vec<String>,
    pub offering: Option<Uuid>,
    pub provider: Option<Uuid>,
    pub project: Option<Uuid>,
    pub customer: Option<Uuid>,
    pub resource: Option<Uuid>,
    pub offering_types: Vec<String>,
}

/// Filters of the resource lists (validated).
#[derive(Debug, Default)]
pub(crate) struct ResourceFilter {
    pub states: Vec<ResourceState>,
    pub offering: Option<Uuid>,
    pub provider: Option<Uuid>,
    pub project: Option<Uuid>,
    pub customer: Option<Uuid>,
    pub backend_id: Option<String>,
    pub offering_type: Option<String>,
    pub name: Option<String>,
    pub name_exact: Option<String>,
    pub project_name: Option<String>,
}

/// One key of an `o=` ordering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SortKey {
    Created,
    State,
    Name,
    /// A key Waldur accepts whose value is the same for every simulated object
    /// (`cost`, `consumer_reviewed_at`): it keeps the default order.
    Constant,
}

#[derive(Debug, Default)]
pub(crate) struct Model {
    pub customers: Vec<Customer>,
    pub projects: Vec<Project>,
    pub offerings: Vec<Offering>,
    pub orders: Vec<Order>,
    pub resources: Vec<Resource>,
    pub plan_periods: Vec<PlanPeriod>,
    pub usages: Vec<ComponentUsage>,
    pub user_usages: Vec<UserUsage>,
    order_index: HashMap<Uuid, usize>,
    resource_index: HashMap<Uuid, usize>,
    last_stamp: Option<OffsetDateTime>,
    /// The Waldur release whose rules and shapes apply.
    pub version: crate::WaldurVersion,
}

/// A uuid derived from a kind and a name, so seeded catalogues are reproducible.
pub(crate) fn stable_uuid(kind: &str, name: &str) -> Uuid {
    let digest = Sha256::digest(format!("puhuri-sim:{kind}:{name}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// Waldur's uuid rendering: 32 lowercase hex digits.
pub(crate) fn hex(uuid: Uuid) -> String {
    uuid.simple().to_string()
}

/// Django REST framework's datetime rendering in UTC (`...T10:00:00.123456Z`).
pub(crate) fn timestamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

pub(crate) fn date_string(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// Parses `YYYY-MM-DD`.
pub(crate) fn parse_date(value: &str) -> Option<Date> {
    let mut parts = value.split('-');
    let year = parts.next()?.parse::<i32>().ok()?;
    let month = parts.next()?.parse::<u8>().ok()?;
    let day = parts.next()?.parse::<u8>().ok()?;
    if parts.next().is_some() || value.len() != 10 {
        return None;
    }
    Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()
}

/// A user's e-mail address: the username when it is one, else `<username>@example.org`.
pub(crate) fn default_email(username: &str) -> String {
    if username.contains('@') {
        username.to_string()
    } else {
        format!("{username}@example.org")
    }
}

/// Waldur's `slugify`: lowercase ASCII words joined by `-`.
pub(crate) fn slugify(value: &str) -> String {
    let mut out = String::new();
    let mut dash = false;
    for c in value.chars() {
        if c.is_ascii_alphanumeric() {
            if dash && !out.is_empty() {
                out.push('-');
            }
            dash = false;
            out.push(c.to_ascii_lowercase());
        } else {
            dash = true;
        }
    }
    out
}

/// The union of two JSON objects.
fn object(first: Value, second: Value) -> Map<String, Value> {
    let mut map = match first {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    if let Value::Object(more) = second {
        map.extend(more);
    }
    map
}

fn opt_time(t: Option<OffsetDateTime>) -> Value {
    t.map_or(Value::Null, |t| Value::String(timestamp(t)))
}

fn opt_date(d: Option<Date>) -> Value {
    d.map_or(Value::Null, |d| Value::String(date_string(d)))
}

fn parse_uuid_or_name<T>(
    items: &[T],
    key: &str,
    uuid_of: impl Fn(&T) -> Uuid,
    name_of: impl Fn(&T) -> &str,
) -> Option<usize> {
    if let Ok(uuid) = Uuid::parse_str(key.trim())
        && let Some(i) = items.iter().position(|t| uuid_of(t) == uuid)
    {
        return Some(i);
    }
    items.iter().position(|t| name_of(t) == key)
}

impl Model {
    /// A creation or modification time: `now` truncated to microseconds, and
    /// strictly after every earlier one.
    pub(crate) fn stamp(&mut self, now: OffsetDateTime) -> OffsetDateTime {
        let truncated = now
            .replace_nanosecond(now.microsecond() * 1000)
            .unwrap_or(now);
        let next = match self.last_stamp {
            Some(last) if truncated <= last => last + time::Duration::microseconds(1),
            _ => truncated,
        };
        self.last_stamp = Some(next);
        next
    }

    pub(crate) fn order_by_uuid(&self, uuid: Uuid) -> Option<usize> {
        self.order_index.get(&uuid).copied()
    }

    pub(crate) fn resource_by_uuid(&self, uuid: Uuid) -> Option<usize> {
        self.resource_index.get(&uuid).copied()
    }

    pub(crate) fn customer_by_uuid(&self, uuid: Uuid) -> Option<usize> {
        self.customers.iter().position(|c| c.uuid == uuid)
    }

    /// The organisations the provider's user holds a role in (its own): a consumer
    /// organisation is outside its `customers/` queryset.
    pub(crate) fn visible_customers(&self) -> Vec<usize> {
        (0..self.customers.len())
            .filter(|&i| self.customers[i].is_provider)
            .collect()
    }

    pub(crate) fn visible_customer_by_uuid(&self, uuid: Uuid) -> Option<usize> {
        self.customer_by_uuid(uuid)
            .filter(|&i| self.customers[i].is_provider)
    }

    /// A provider organisation's `ServiceProvider` uuid (distinct from the organisation's).
    pub(crate) fn service_provider_uuid(&self, customer: usize) -> Uuid {
        stable_uuid("service-provider", &hex(self.customers[customer].uuid))
    }

    /// Service providers (as their organisations' indices), ordered by organisation name.
    pub(crate) fn list_service_providers(&self, customer: Option<Uuid>) -> Vec<usize> {
        let mut out: Vec<usize> = (0..self.customers.len())
            .filter(|&i| self.customers[i].is_provider)
            .filter(|&i| customer.is_none_or(|uuid| self.customers[i].uuid == uuid))
            .collect();
        out.sort_by(|&a, &b| self.customers[a].name.cmp(&self.customers[b].name));
        out
    }

    pub(crate) fn service_provider_by_uuid(&self, uuid: Uuid) -> Option<usize> {
        (0..self.customers.len())
            .find(|&i| self.customers[i].is_provider && self.service_provider_uuid(i) == uuid)
    }

    /// The provider's non-terminated resources.
    fn provider_resources(&self, provider: usize) -> impl Iterator<Item = &Resource> + '_ {
        self.resources.iter().filter(move |r| {
            self.offerings[r.offering].provider == provider && r.state != ResourceState::Terminated
        })
    }

    /// `ServiceProviderViewSet.customers`: the organisations with a non-terminated
    /// resource of the provider's offerings, ordered by name.
    pub(crate) fn provider_customers(&self, provider: usize) -> Vec<usize> {
        let mut out: Vec<usize> = self
            .provider_resources(provider)
            .map(|r| self.projects[r.project].customer)
            .collect();
        out.sort_by(|&a, &b| {
            self.customers[a]
                .name
                .cmp(&self.customers[b].name)
                .then(a.cmp(&b))
        });
        out.dedup();
        out
    }

    pub(crate) fn find_customer(&self, key: &str) -> Option<usize> {
        parse_uuid_or_name(&self.customers, key, |c| c.uuid, |c| &c.name)
    }

    pub(crate) fn find_project(&self, key: &str) -> Option<usize> {
        parse_uuid_or_name(&self.projects, key, |p| p.uuid, |p| &p.name)
    }

    pub(crate) fn find_offering(&self, key: &str) -> Option<usize> {
        parse_uuid_or_name(&self.offerings, key, |o| o.uuid, |o| &o.name)
    }

    // ----- catalogue -----

    pub(crate) fn add_customer(
        &mut self,
        name: &str,
        slug: Option<&str>,
        country: &str,
        abbreviation: Option<&str>,
        is_provider: bool,
        pi: Option<(&str, &str)>,
    ) -> Result<usize, SimError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(SimError::Invalid("customer name must not be empty".into()));
        }
        if self.customers.iter().any(|c| c.name == name) {
            return Err(SimError::Duplicate(format!("customer `{name}`")));
        }
        let slug = slug.map_or_else(|| slugify(name), str::to_string);
        let (pi_username, pi_full_name) = pi.map_or_else(
            || (format!("pi-{slug}"), format!("PI of {name}")),
            |(u, f)| (u.to_string(), f.to_string()),
        );
        self.customers.push(Customer {
            uuid: stable_uuid("customer", name),
            name: name.to_string(),
            abbreviation: abbreviation.unwrap_or("").to_string(),
            slug,
            country: country.to_string(),
            is_provider,
            pi_username,
            pi_full_name,
        });
        Ok(self.customers.len() - 1)
    }

    pub(crate) fn add_project(
        &mut self,
        customer: usize,
        name: &str,
        slug: Option<&str>,
        end_date: Option<Date>,
    ) -> Result<usize, SimError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(SimError::Invalid("project name must not be empty".into()));
        }
        if self.projects.iter().any(|p| p.name == name) {
            return Err(SimError::Duplicate(format!("project `{name}`")));
        }
        let pi = &self.customers[customer];
        let manager = Member {
            username: pi.pi_username.clone(),
            full_name: pi.pi_full_name.clone(),
            email: default_email(&pi.pi_username),
            role: Role::Manager,
            expiration_time: None,
            offering_user_username: None,
        };
        self.projects.push(Project {
            uuid: stable_uuid("project", name),
            name: name.to_string(),
            slug: slug.map_or_else(|| slugify(name), str::to_string),
            customer,
            end_date,
            members: vec![manager],
        });
        Ok(self.projects.len() - 1)
    }

    pub(crate) fn add_offering(
        &mut self,
        provider: usize,
        name: &str,
        offering_type: &str,
        components: &[ComponentSpec],
        plan_name: Option<&str>,
    ) -> Result<usize, SimError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(SimError::Invalid("offering name must not be empty".into()));
        }
        if self.offerings.iter().any(|o| o.name == name) {
            return Err(SimError::Duplicate(format!("offering `{name}`")));
        }
        if offering_type != BASIC && offering_type != SLURM {
            return Err(SimError::Invalid(format!(
                "offering type `{offering_type}` is not simulated; use `{BASIC}` or `{SLURM}`"
            )));
        }
        if components.is_empty() {
            return Err(SimError::Invalid(
                "an offering needs at least one component".into(),
            ));
        }
        let mut seen: Vec<&str> = Vec::new();
        for spec in components {
            let c = &spec.kind;
            if c.is_empty() || !c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(SimError::Invalid(format!(
                    "component type `{c}` must be non-empty letters, digits and `_`"
                )));
            }
            if seen.contains(&c.as_str()) {
                return Err(SimError::Invalid(format!(
                    "component type `{c}` is repeated"
                )));
            }
            seen.push(c);
        }
        self.customers[provider].is_provider = true;
        let plan_name = plan_name.map_or_else(|| format!("{name} Standard"), str::to_string);
        self.offerings.push(Offering {
            uuid: stable_uuid("offering", name),
            slug: slugify(name),
            name: name.to_string(),
            offering_type: offering_type.to_string(),
            provider,
            components: components
                .iter()
                .map(|c| Component {
                    uuid: stable_uuid("component", &format!("{name}/{}", c.kind)),
                    kind: c.kind.clone(),
                    name: c.name.clone().unwrap_or_else(|| c.kind.clone()),
                    measured_unit: c.measured_unit.clone().unwrap_or_default(),
                    billing_type: c.billing_type,
                })
                .collect(),
            plan_uuid: stable_uuid("plan", &plan_name),
            plan_name,
        });
        Ok(self.offerings.len() - 1)
    }

    /// The default catalogue: the LUMI provider, its offerings, five consortium
    /// organisations with one project each (NTNU's has ended). Each project's
    /// team is the organisation's PI (manager) and two members
    /// `<project slug>-member1|2`.
    pub(crate) fn seed(&mut self) -> Result<(), SimError> {
        let lumi = self.add_customer(
            "LUMI",
            Some("lumi"),
            "FI",
            Some("LUMI"),
            true,
            Some(("lumi-support", "LUMI User Support")),
        )?;
        let orgs = [
            (
                "University of Helsinki",
                "uh",
                "FI",
                "UH",
                ("aino.virtanen@helsinki.fi", "Aino Virtanen"),
                "Climate extremes",
                "climate-extremes",
                Some("2030-12-31"),
                ["Juho Korhonen", "Laura Mäkinen"],
            ),
            (
                "KTH Royal Institute of Technology",
                "kth",
                "SE",
                "KTH",
                ("erik.lindqvist@kth.se", "Erik Lindqvist"),
                "Protein dynamics",
                "protein-dynamics",
                None,
                ["Anna Svensson", "Lars Bergström"],
            ),
            (
                "University of Tartu",
                "ut",
                "EE",
                "UT",
                ("mari.tamm@ut.ee", "Mari Tamm"),
                "Estonian language models",
                "estonian-llm",
                Some("2029-06-30"),
                ["Kristjan Kask", "Liis Saar"],
            ),
            (
                "Norwegian University of Science and Technology",
                "ntnu",
                "NO",
                "NTNU",
                ("ingrid.hansen@ntnu.no", "Ingrid Hansen"),
                "Ocean circulation",
                "ocean-circulation",
                Some("2024-12-31"),
                ["Ole Nilsen", "Kari Johansen"],
            ),
            (
                "Technical University of Denmark",
                "dtu",
                "DK",
                "DTU",
                ("mads.jensen@dtu.dk", "Mads Jensen"),
                "Wind farm wakes",
                "wind-farm-wakes",
                Some("2031-01-31"),
                ["Sofie Nielsen", "Rasmus Larsen"],
            ),
        ];
        for (name, slug, country, abbr, pi, project, project_slug, end, team) in orgs {
            let customer =
                self.add_customer(name, Some(slug), country, Some(abbr), false, Some(pi))?;
            let project = self.add_project(
                customer,
                project,
                Some(project_slug),
                end.and_then(parse_date),
            )?;
            for (n, full_name) in team.into_iter().enumerate() {
                let username = format!("{project_slug}-member{}", n + 1);
                self.add_member(
                    project,
                    Member {
                        email: default_email(&username),
                        username,
                        full_name: full_name.to_string(),
                        role: Role::Member,
                        expiration_time: None,
                        offering_user_username: None,
                    },
                )?;
            }
        }
        // LUMI allocations are limit-based k-hours; the Slurm offering also
        // has a fixed-price component, for which usage cannot be reported.
        let c = |kind: &str, name: &str, unit: &str, billing_type| ComponentSpec {
            kind: kind.to_string(),
            name: Some(name.to_string()),
            measured_unit: Some(unit.to_string()),
            billing_type,
        };
        let cpu = c("cpu_k_hours", "CPU k-hours", "k-hours", BillingType::Limit);
        let gpu = c("gpu_k_hours", "GPU k-hours", "k-hours", BillingType::Limit);
        let storage = c(
            "gb_k_hours",
            "Storage GB k-hours",
            "GB k-hours",
            BillingType::Limit,
        );
        let fee = c("project_fee", "Project fee", "month", BillingType::Fixed);
        self.add_offering(
            lumi,
            "LUMI-C",
            BASIC,
            &[cpu.clone(), storage.clone()],
            Some("LUMI-C Standard"),
        )?;
        self.add_offering(
            lumi,
            "LUMI-G",
            BASIC,
            &[gpu.clone(), storage.clone()],
            Some("LUMI-G Standard"),
        )?;
        self.add_offering(
            lumi,
            "LUMI-Slurm",
            SLURM,
            &[cpu, gpu, storage, fee],
            Some("LUMI-Slurm Standard"),
        )?;
        Ok(())
    }

    pub(crate) fn catalogue(&self) -> Catalogue {
        Catalogue {
            customers: self
                .customers
                .iter()
                .map(|c| CatalogueCustomer {
                    uuid: hex(c.uuid),
                    name: c.name.clone(),
                    slug: c.slug.clone(),
                    abbreviation: c.abbreviation.clone(),
                    country: c.country.clone(),
                    is_service_provider: c.is_provider,
                })
                .collect(),
            projects: self
                .projects
                .iter()
                .map(|p| CatalogueProject {
                    uuid: hex(p.uuid),
                    name: p.name.clone(),
                    slug: p.slug.clone(),
                    customer_uuid: hex(self.customers[p.customer].uuid),
                    customer_name: self.customers[p.customer].name.clone(),
                    end_date: p.end_date.map(date_string),
                })
                .collect(),
            offerings: self
                .offerings
                .iter()
                .map(|o| CatalogueOffering {
                    uuid: hex(o.uuid),
                    name: o.name.clone(),
                    offering_type: o.offering_type.clone(),
                    provider_uuid: hex(self.customers[o.provider].uuid),
                    provider_name: self.customers[o.provider].name.clone(),
                    components: o
                        .components
                        .iter()
                        .filter(|c| c.billing_type == BillingType::Limit)
                        .map(|c| c.kind.clone())
                        .collect(),
                    plan_uuid: hex(o.plan_uuid),
                    plan_name: o.plan_name.clone(),
                })
                .collect(),
        }
    }

    // ----- allocations -----

    /// Checks limits against the offering's components: every key must be a
    /// limit-based component type and every value a non-negative integer (the
    /// order serializer's `DictField(child=IntegerField())`).
    pub(crate) fn validate_limits(
        &self,
        offering: usize,
        limits: &Map<String, Value>,
    ) -> Result<Map<String, Value>, SimError> {
        let off = &self.offerings[offering];
        let mut out = Map::new();
        for (key, value) in limits {
            let Some(component) = off.components.iter().find(|c| &c.kind == key) else {
                return Err(SimError::UnknownComponent {
                    component: key.clone(),
                    offering: off.name.clone(),
                });
            };
            if component.billing_type != BillingType::Limit {
                return Err(SimError::Invalid(format!(
                    "component `{key}` of offering `{}` is billed `{}`; limits are only for `limit` components",
                    off.name,
                    component.billing_type.as_str()
                )));
            }
            let number = match value {
                Value::Number(n) => n
                    .as_i64()
                    .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
                _ => None,
            };
            match number {
                Some(n) if n >= 0 => {
                    out.insert(key.clone(), Value::from(n));
                }
                _ => {
                    return Err(SimError::InvalidLimit {
                        component: key.clone(),
                        value: value.to_string(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Records a new allocation: a `Create` order and a `Creating` resource.
    pub(crate) fn create_allocation(
        &mut self,
        spec: AllocationSpec,
        now: OffsetDateTime,
    ) -> (usize, usize) {
        let created = self.stamp(now);
        let project = &self.projects[spec.project];
        let customer = &self.customers[project.customer];
        let offering = &self.offerings[spec.offering];
        let name = spec
            .name
            .clone()
            .or_else(|| {
                spec.attributes
                    .get("name")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| {
                let n = self
                    .resources
                    .iter()
                    .filter(|r| r.project == spec.project && r.offering == spec.offering)
                    .count();
                format!(
                    "{}-{}-{}-{}",
                    customer.slug,
                    project.slug,
                    offering.slug,
                    n + 1
                )
            });
        let mut attributes = spec.attributes;
        attributes
            .entry("name")
            .or_insert_with(|| Value::String(name.clone()));
        let created_by = Actor {
            username: customer.pi_username.clone(),
            full_name: customer.pi_full_name.clone(),
        };
        let order_index = self.orders.len();
        let resource_index = self.resources.len();
        let order_uuid = Uuid::new_v4();
        let resource_uuid = Uuid::new_v4();
        self.resources.push(Resource {
            uuid: resource_uuid,
            slug: slugify(&name),
            name,
            state: ResourceState::Creating,
            backend_id: String::new(),
            limits: spec.limits.clone(),
            attributes: attributes.clone(),
            offering: spec.offering,
            project: spec.project,
            created,
            modified: created,
            end_date: None,
            report: None,
            error_message: String::new(),
            creation_order: order_index,
            current_usages: Map::new(),
        });
        // Waldur opens the plan period when the resource is created.
        self.plan_periods.push(PlanPeriod {
            uuid: Uuid::new_v4(),
            resource: resource_index,
            plan_uuid: self.offerings[spec.offering].plan_uuid,
            plan_name: self.offerings[spec.offering].plan_name.clone(),
            start: created,
            end: None,
        });
        self.orders.push(Order {
            uuid: order_uuid,
            state: spec.order_state,
            resource: resource_index,
            offering: spec.offering,
            project: spec.project,
            attributes,
            limits: spec.limits,
            created,
            modified: created,
            created_by,
            provider_reviewed_by: None,
            provider_reviewed_at: None,
            provider_rejection_comment: None,
            error_message: String::new(),
            error_traceback: String::new(),
        });
        self.order_index.insert(order_uuid, order_index);
        self.resource_index.insert(resource_uuid, resource_index);
        (order_index, resource_index)
    }

    // ----- order actions -----

    /// `approve_by_provider`: the project must not have ended (checked first),
    /// the order must be `pending-provider`. A Basic offering completes at once.
    pub(crate) fn approve_by_provider(
        &mut self,
        order: usize,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<(), ApiError> {
        self.check_project_end_date(self.orders[order].project, now)?;
        if self.orders[order].state != OrderState::PendingProvider {
            return Err(ApiError::states(&["pending-provider"]));
        }
        let stamp = self.stamp(now);
        let basic = self.offerings[self.orders[order].offering].offering_type == BASIC;
        let o = &mut self.orders[order];
        o.provider_reviewed_by = Some(actor.clone());
        o.provider_reviewed_at = Some(stamp);
        o.state = OrderState::Executing;
        o.modified = stamp;
        if basic {
            self.complete_order(order, stamp);
        }
        Ok(())
    }

    /// `reject_by_provider`: only from `pending-provider`; the resource of a
    /// creation order is terminated.
    pub(crate) fn reject_by_provider(
        &mut self,
        order: usize,
        actor: &Actor,
        comment: Option<String>,
        now: OffsetDateTime,
    ) -> Result<(), ApiError> {
        if self.orders[order].state != OrderState::PendingProvider {
            return Err(ApiError::states(&["pending-provider"]));
        }
        let stamp = self.stamp(now);
        let o = &mut self.orders[order];
        o.provider_reviewed_by = Some(actor.clone());
        o.provider_reviewed_at = Some(stamp);
        if comment.is_some() {
            o.provider_rejection_comment = comment;
        }
        self.reject_order(order, stamp);
        Ok(())
    }

    /// `set_state_executing` (agent offerings only).
    pub(crate) fn set_order_executing(
        &mut self,
        order: usize,
        now: OffsetDateTime,
    ) -> Result<(), ApiError> {
        let valid = [
            OrderState::PendingConsumer,
            OrderState::PendingProvider,
            OrderState::Erred,
        ];
        if !valid.contains(&self.orders[order].state) {
            return Err(ApiError::states(&[
                "pending-consumer",
                "pending-provider",
                "erred",
            ]));
        }
        let offering_type = &self.offerings[self.orders[order].offering].offering_type;
        if offering_type != SLURM {
            return Err(ApiError::offering_type(offering_type));
        }
        let stamp = self.stamp(now);
        let o = &mut self.orders[order];
        o.state = OrderState::Executing;
        o.modified = stamp;
        Ok(())
    }

    /// `set_state_done`: only from `executing`; the resource becomes `OK`.
    pub(crate) fn set_order_done(
        &mut self,
        order: usize,
        now: OffsetDateTime,
    ) -> Result<(), ApiError> {
        if self.orders[order].state != OrderState::Executing {
            return Err(ApiError::states(&["executing"]));
        }
        let offering_type = &self.offerings[self.orders[order].offering].offering_type;
        if offering_type != SLURM && offering_type != BASIC {
            return Err(ApiError::offering_type(offering_type));
        }
        let stamp = self.stamp(now);
        self.complete_order(order, stamp);
        Ok(())
    }

    /// The offering-type check of `set_state_erred`, which runs before the body
    /// is read.
    pub(crate) fn check_order_erred_allowed(&self, order: usize) -> Result<(), ApiError> {
        let offering_type = &self.offerings[self.orders[order].offering].offering_type;
        if offering_type != SLURM {
            return Err(ApiError::offering_type(offering_type));
        }
        Ok(())
    }

    /// `set_state_erred` on an order (agent offerings only).
    pub(crate) fn set_order_erred(
        &mut self,
        order: usize,
        message: String,
        traceback: String,
        now: OffsetDateTime,
    ) -> Result<(), ApiError> {
        self.check_order_erred_allowed(order)?;
        let stamp = self.stamp(now);
        self.fail_order(order, stamp);
        let o = &mut self.orders[order];
        o.error_message = message;
        o.error_traceback = traceback;
        Ok(())
    }

    fn check_project_end_date(&self, project: usize, now: OffsetDateTime) -> Result<(), ApiError> {
        let p = &self.projects[project];
        let today = now.to_offset(UtcOffset::UTC).date();
        if p.end_date.is_some_and(|end| end <= today) {
            let customer = &self.customers[p.customer];
            return Err(ApiError::bare(format!(
                "Project '{} | {}' is expired.",
                p.name, customer.name
            )));
        }
        Ok(())
    }

    /// Order `done`; its resource `OK` (`resource_creation_succeeded`).
    fn complete_order(&mut self, order: usize, stamp: OffsetDateTime) {
        let o = &mut self.orders[order];
        o.state = OrderState::Done;
        o.modified = stamp;
        let r = &mut self.resources[o.resource];
        if r.state != ResourceState::Ok {
            r.state = ResourceState::Ok;
            r.modified = stamp;
        }
    }

    /// Order `rejected`; its resource `Terminated`.
    fn reject_order(&mut self, order: usize, stamp: OffsetDateTime) {
        let o = &mut self.orders[order];
        o.state = OrderState::Rejected;
        o.modified = stamp;
        let r = &mut self.resources[o.resource];
        r.state = ResourceState::Terminated;
        r.modified = stamp;
    }

    /// Order `erred`; a resource still `Creating` is terminated when it has no
    /// `backend_id`, erred otherwise.
    fn fail_order(&mut self, order: usize, stamp: OffsetDateTime) {
        let o = &mut self.orders[order];
        o.state = OrderState::Erred;
        o.modified = stamp;
        let r = &mut self.resources[o.resource];
        if r.state == ResourceState::Creating {
            r.state = if r.backend_id.is_empty() {
                ResourceState::Terminated
            } else {
                ResourceState::Erred
            };
            r.modified = stamp;
        }
    }

    // ----- resource actions -----

    /// `set_backend_id`; returns whether the value changed.
    pub(crate) fn set_report(&mut self, resource: usize, report: Value, now: OffsetDateTime) {
        let stamp = self.stamp(now);
        let r = &mut self.resources[resource];
        r.report = Some(report);
        r.modified = stamp;
    }

    pub(crate) fn set_backend_id(
        &mut self,
        resource: usize,
        backend_id: String,
        now: OffsetDateTime,
    ) -> bool {
        if self.resources[resource].backend_id == backend_id {
            return false;
        }
        let stamp = self.stamp(now);
        let r = &mut self.resources[resource];
        r.backend_id = backend_id;
        r.modified = stamp;
        true
    }

    /// `set_as_erred` (`Resource.set_state_erred`, from any state): only the
    /// resource becomes `Erred`; its order, open or not, is left as it is.
    pub(crate) fn set_resource_erred(&mut self, resource: usize, now: OffsetDateTime) {
        let stamp = self.stamp(now);
        let r = &mut self.resources[resource];
        r.state = ResourceState::Erred;
        r.modified = stamp;
    }

    /// The 2021 `set_state_by_provider`: `ok` only from Creating, Erred or
    /// Updating; `erred` and `terminated` from any state. The creation order
    /// follows while it is open.
    pub(crate) fn set_state_by_provider(
        &mut self,
        resource: usize,
        target: &str,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<(), ApiError> {
        let current = self.resources[resource].state;
        let next = match target {
            "ok" => ResourceState::Ok,
            "erred" => ResourceState::Erred,
            "terminated" => ResourceState::Terminated,
            other => {
                return Err(ApiError::field(
                    "state",
                    format!("\"{other}\" is not a valid choice."),
                ));
            }
        };
        if next == ResourceState::Ok
            && !matches!(
                current,
                ResourceState::Creating | ResourceState::Erred | ResourceState::Updating
            )
        {
            return Err(ApiError {
                status: 400,
                body: json!({
                    "status": format!("Can't switch from state '{}' to '{target}'.", current.as_str())
                }),
            });
        }
        let stamp = self.stamp(now);
        let order = self.resources[resource].creation_order;
        let o = &mut self.orders[order];
        if !o.state.is_terminal() {
            if o.state == OrderState::PendingProvider && next != ResourceState::Erred {
                o.provider_reviewed_by = Some(actor.clone());
                o.provider_reviewed_at = Some(stamp);
            }
            o.state = match next {
                ResourceState::Ok => OrderState::Done,
                ResourceState::Terminated => OrderState::Rejected,
                _ => OrderState::Erred,
            };
            o.modified = stamp;
        }
        let r = &mut self.resources[resource];
        r.state = next;
        r.modified = stamp;
        Ok(())
    }

    // ----- queries -----

    pub(crate) fn list_orders(&self, f: &OrderFilter, sort: &[(SortKey, bool)]) -> Vec<usize> {
        let mut out: Vec<usize> = (0..self.orders.len())
            .filter(|&i| {
                let o = &self.orders[i];
                let off = &self.offerings[o.offering];
                let project = &self.projects[o.project];
                (f.states.is_empty() || f.states.contains(&o.state))
                    && (f.types.is_empty() || f.types.iter().any(|t| t == "Create"))
                    && (f.offering_types.is_empty()
                        || f.offering_types.contains(&off.offering_type))
                    && f.offering.is_none_or(|u| u == off.uuid)
                    && f.provider
                        .is_none_or(|u| u == self.customers[off.provider].uuid)
                    && f.project.is_none_or(|u| u == project.uuid)
                    && f.customer
                        .is_none_or(|u| u == self.customers[project.customer].uuid)
                    && f.resource
                        .is_none_or(|u| u == self.resources[o.resource].uuid)
            })
            .collect();
        out.sort_by(|&a, &b| {
            let (x, y) = (&self.orders[a], &self.orders[b]);
            for &(key, desc) in sort {
                let ord = match key {
                    SortKey::Created => x.created.cmp(&y.created),
                    SortKey::State => x.state.as_str().cmp(y.state.as_str()),
                    SortKey::Name => self.resources[x.resource]
                        .name
                        .cmp(&self.resources[y.resource].name),
                    SortKey::Constant => std::cmp::Ordering::Equal,
                };
                let ord = if desc { ord.reverse() } else { ord };
                if ord.is_ne() {
                    return ord;
                }
            }
            x.created.cmp(&y.created).then(x.uuid.cmp(&y.uuid))
        });
        out
    }

    pub(crate) fn list_resources(
        &self,
        f: &ResourceFilter,
        sort: &[(SortKey, bool)],
    ) -> Vec<usize> {
        let mut out: Vec<usize> = (0..self.resources.len())
            .filter(|&i| {
                let r = &self.resources[i];
                let off = &self.offerings[r.offering];
                let project = &self.projects[r.project];
                (f.states.is_empty() || f.states.contains(&r.state))
                    && f.offering.is_none_or(|u| u == off.uuid)
                    && f.provider
                        .is_none_or(|u| u == self.customers[off.provider].uuid)
                    && f.project.is_none_or(|u| u == project.uuid)
                    && f.customer
                        .is_none_or(|u| u == self.customers[project.customer].uuid)
                    && f.backend_id.as_ref().is_none_or(|b| b == &r.backend_id)
                    && f.offering_type
                        .as_ref()
                        .is_none_or(|t| t == &off.offering_type)
                    && f.name
                        .as_ref()
                        .is_none_or(|n| r.name.to_lowercase().contains(&n.to_lowercase()))
                    && f.name_exact.as_ref().is_none_or(|n| n == &r.name)
                    && f.project_name.as_ref().is_none_or(|n| n == &project.name)
            })
            .collect();
        out.sort_by(|&a, &b| {
            let (x, y) = (&self.resources[a], &self.resources[b]);
            for &(key, desc) in sort {
                let ord = match key {
                    SortKey::Created => x.created.cmp(&y.created),
                    SortKey::State => x.state.as_str().cmp(y.state.as_str()),
                    SortKey::Name => x.name.cmp(&y.name),
                    SortKey::Constant => std::cmp::Ordering::Equal,
                };
                let ord = if desc { ord.reverse() } else { ord };
                if ord.is_ne() {
                    return ord;
                }
            }
            x.created.cmp(&y.created).then(x.uuid.cmp(&y.uuid))
        });
        out
    }

    // ----- rendering -----

    /// The order as `OrderDetailsSerializer` renders it to a provider.
    pub(crate) fn render_order(&self, order: usize, base: &str) -> Map<String, Value> {
        let o = &self.orders[order];
        let r = &self.resources[o.resource];
        let off = &self.offerings[o.offering];
        let provider = &self.customers[off.provider];
        let project = &self.projects[o.project];
        let customer = &self.customers[project.customer];
        let value = json!({
            "url": format!("{base}/api/marketplace-orders/{}/", hex(o.uuid)),
            "uuid": hex(o.uuid),
            "type": "Create",
            "state": o.state.as_str(),
            "created": timestamp(o.created),
            "modified": timestamp(o.modified),
            "resource_uuid": Value::Null,
            "resource_type": Value::Null,
            "marketplace_resource_uuid": hex(r.uuid),
            "resource_name": r.name,
            "attributes": o.attributes,
            "limits": o.limits,
            "offering": format!("{base}/api/marketplace-public-offerings/{}/", hex(off.uuid)),
            "offering_uuid": hex(off.uuid),
            "offering_name": off.name,
            "offering_type": off.offering_type,
            "offering_description": "",
            "offering_shared": true,
            "offering_billable": true,
            "provider_uuid": hex(provider.uuid),
            "provider_name": provider.name,
            "plan": format!("{base}/api/marketplace-plans/{}/", hex(off.plan_uuid)),
            "plan_uuid": hex(off.plan_uuid),
            "plan_name": off.plan_name,
            "plan_unit": "month",
            "new_plan_uuid": hex(off.plan_uuid),
            "new_plan_name": off.plan_name,
            "old_plan_uuid": Value::Null,
            "old_plan_name": Value::Null,
        });
        let rest = json!({
            "project_uuid": hex(project.uuid),
            "project_name": project.name,
            "project_slug": project.slug,
            "project_description": "",
            "customer_uuid": hex(customer.uuid),
            "customer_name": customer.name,
            "customer_slug": customer.slug,
            "created_by_full_name": o.created_by.full_name,
            "created_by_civil_number": Value::Null,
            "consumer_reviewed_by": Value::Null,
            "consumer_reviewed_by_full_name": Value::Null,
            "consumer_reviewed_at": Value::Null,
            "provider_reviewed_by": o.provider_reviewed_by.as_ref().map(|a| a.username.clone()),
            "provider_reviewed_by_full_name": o.provider_reviewed_by.as_ref().map(|a| a.full_name.clone()),
            "provider_reviewed_at": opt_time(o.provider_reviewed_at),
            "provider_rejection_comment": o.provider_rejection_comment,
            "termination_comment": Value::Null,
            "error_message": o.error_message,
            "output": "",
            "cost": "0.0000000000",
            "fixed_price": 0,
            "activation_price": 0,
            "can_terminate": false,
            "backend_id": "",
            "callback_url": Value::Null,
        });
        let mut order = object(value, rest);
        if self.version == crate::WaldurVersion::V8_0 {
            order.insert(
                "created_by_username".into(),
                Value::String(o.created_by.username.clone()),
            );
        }
        order
    }

    /// `ServiceProviderSerializer` (the fields a client reads).
    pub(crate) fn render_service_provider(
        &self,
        customer: usize,
        base: &str,
    ) -> Map<String, Value> {
        let c = &self.customers[customer];
        let uuid = hex(self.service_provider_uuid(customer));
        let value = json!({
            "url": format!("{base}/api/marketplace-service-providers/{uuid}/"),
            "uuid": uuid,
            "created": timestamp(OffsetDateTime::UNIX_EPOCH),
            "description": "",
            "enable_notifications": true,
            "customer": format!("{base}/api/customers/{}/", hex(c.uuid)),
            "customer_name": c.name,
            "customer_uuid": hex(c.uuid),
            "customer_image": Value::Null,
            "customer_abbreviation": c.abbreviation,
            "customer_native_name": "",
            "customer_country": c.country,
            "image": Value::Null,
            "organization_group": Value::Null,
            "offering_count": self.offerings.iter().filter(|o| o.provider == customer).count(),
        });
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    /// A consumer organisation as `ProviderCustomerSerializer` renders it to its provider:
    /// `abbreviation`, but no slug and no country.
    pub(crate) fn render_provider_customer(
        &self,
        customer: usize,
        provider: usize,
    ) -> Map<String, Value> {
        let c = &self.customers[customer];
        let resources: Vec<&Resource> = self
            .provider_resources(provider)
            .filter(|r| self.projects[r.project].customer == customer)
            .collect();
        let mut projects: Vec<usize> = resources.iter().map(|r| r.project).collect();
        projects.sort_unstable();
        projects.dedup();
        let value = json!({
            "uuid": hex(c.uuid),
            "name": c.name,
            "abbreviation": c.abbreviation,
            "phone_number": "",
            "email": "",
            "payment_profiles": [],
            "billing_price_estimate": {"total": 0, "current": 0, "tax": 0, "tax_current": 0},
            "projects_count": projects.len(),
            "users_count": 0,
            "projects": projects.iter().take(5).map(|&p| {
                let project = &self.projects[p];
                json!({"uuid": hex(project.uuid), "name": project.name})
            }).collect::<Vec<_>>(),
            "users": [],
        });
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    /// The organisation as `CustomerSerializer` renders it (the fields a provider reads).
    pub(crate) fn render_customer(&self, customer: usize, base: &str) -> Map<String, Value> {
        let c = &self.customers[customer];
        let value = json!({
            "url": format!("{base}/api/customers/{}/", hex(c.uuid)),
            "uuid": hex(c.uuid),
            "name": c.name,
            "slug": c.slug,
            "abbreviation": c.abbreviation,
            "native_name": "",
            "country": c.country,
            "is_service_provider": c.is_provider,
        });
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    /// The resource as `ResourceSerializer` renders it; `creation_order` (the
    /// full order) is included when `with_order`.
    pub(crate) fn render_resource(
        &self,
        resource: usize,
        base: &str,
        with_order: bool,
    ) -> Map<String, Value> {
        let r = &self.resources[resource];
        let off = &self.offerings[r.offering];
        let provider = &self.customers[off.provider];
        let project = &self.projects[r.project];
        let customer = &self.customers[project.customer];
        let value = json!({
            "url": format!("{base}/api/marketplace-resources/{}/", hex(r.uuid)),
            "uuid": hex(r.uuid),
            "name": r.name,
            "slug": r.slug,
            "description": "",
            "state": r.state.as_str(),
            "backend_id": r.backend_id,
            "effective_id": "",
            "limits": r.limits,
            "attributes": r.attributes,
            "current_usages": r.current_usages,
            "backend_metadata": {},
            "resource_uuid": Value::Null,
            "resource_type": Value::Null,
            "offering": format!("{base}/api/marketplace-public-offerings/{}/", hex(off.uuid)),
            "offering_uuid": hex(off.uuid),
            "offering_name": off.name,
            "offering_type": off.offering_type,
            "offering_shared": true,
            "offering_billable": true,
            "provider_uuid": hex(provider.uuid),
            "provider_name": provider.name,
            "plan": format!("{base}/api/marketplace-plans/{}/", hex(off.plan_uuid)),
            "plan_uuid": hex(off.plan_uuid),
            "plan_name": off.plan_name,
            "plan_unit": "month",
        });
        let rest = json!({
            "project": format!("{base}/api/projects/{}/", hex(project.uuid)),
            "project_uuid": hex(project.uuid),
            "project_name": project.name,
            "project_slug": project.slug,
            "project_description": "",
            "project_end_date": opt_date(project.end_date),
            "customer": format!("{base}/api/customers/{}/", hex(customer.uuid)),
            "customer_uuid": hex(customer.uuid),
            "customer_name": customer.name,
            "customer_slug": customer.slug,
            "created": timestamp(r.created),
            "modified": timestamp(r.modified),
            "end_date": opt_date(r.end_date),
            "report": r.report,
            "error_message": r.error_message,
            "paused": false,
            "downscaled": false,
            "restrict_member_access": false,
            "username": Value::Null,
        });
        let mut map = object(value, rest);
        if with_order {
            map.insert(
                "creation_order".into(),
                Value::Object(self.render_order(r.creation_order, base)),
            );
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded() -> Model {
        let mut m = Model::default();
        assert!(m.seed().is_ok());
        m
    }

    fn actor() -> Actor {
        Actor {
            username: "sp".into(),
            full_name: "Service Provider".into(),
        }
    }

    fn allocate(m: &mut Model, project: &str, state: OrderState) -> (usize, usize) {
        let offering = m.find_offering("LUMI-C").unwrap_or(0);
        let project = m.find_project(project).unwrap_or(0);
        m.create_allocation(
            AllocationSpec {
                offering,
                project,
                name: None,
                limits: Map::new(),
                attributes: Map::new(),
                order_state: state,
            },
            OffsetDateTime::now_utc(),
        )
    }

    #[test]
    fn seeded_uuids_are_stable() {
        let (a, b) = (seeded(), seeded());
        assert_eq!(a.offerings[0].uuid, b.offerings[0].uuid);
        assert_eq!(a.projects[3].uuid, b.projects[3].uuid);
        assert_eq!(a.offerings.len(), 3);
        assert_eq!(a.customers.len(), 6);
    }

    #[test]
    fn created_stamps_strictly_increase() {
        let mut m = seeded();
        let now = OffsetDateTime::now_utc();
        let a = m.stamp(now);
        let b = m.stamp(now);
        assert!(b > a);
        assert_eq!(b - a, time::Duration::microseconds(1));
    }

    #[test]
    fn default_name_follows_suggest_name() {
        let mut m = seeded();
        let (_, r) = allocate(&mut m, "Climate extremes", OrderState::PendingProvider);
        assert_eq!(m.resources[r].name, "uh-climate-extremes-lumi-c-1");
        let (_, r) = allocate(&mut m, "Climate extremes", OrderState::PendingProvider);
        assert_eq!(m.resources[r].name, "uh-climate-extremes-lumi-c-2");
        assert_eq!(
            m.resources[r].attributes.get("name"),
            Some(&Value::from("uh-climate-extremes-lumi-c-2"))
        );
    }

    #[test]
    fn reject_only_from_pending_provider() {
        let mut m = seeded();
        let (o, r) = allocate(&mut m, "Climate extremes", OrderState::PendingConsumer);
        let now = OffsetDateTime::now_utc();
        let err = m.reject_by_provider(o, &actor(), None, now);
        assert_eq!(err.map_err(|e| e.status), Err(409));
        assert_eq!(m.resources[r].state, ResourceState::Creating);
    }

    #[test]
    fn set_as_erred_errs_the_resource_and_leaves_the_order_pending() {
        let mut m = seeded();
        let now = OffsetDateTime::now_utc();
        let (o, r) = allocate(&mut m, "Climate extremes", OrderState::PendingProvider);
        m.set_resource_erred(r, now);
        assert_eq!(m.resources[r].state, ResourceState::Erred);
        assert_eq!(m.orders[o].state, OrderState::PendingProvider);
        assert_eq!(m.orders[o].error_message, "");
    }

    #[test]
    fn set_as_erred_on_done_allocation_keeps_order() {
        let mut m = seeded();
        let now = OffsetDateTime::now_utc();
        let (o, r) = allocate(&mut m, "Climate extremes", OrderState::PendingProvider);
        assert!(m.approve_by_provider(o, &actor(), now).is_ok());
        m.set_resource_erred(r, now);
        assert_eq!(m.resources[r].state, ResourceState::Erred);
        assert_eq!(m.orders[o].state, OrderState::Done);
    }

    #[test]
    fn slug_and_dates() {
        assert_eq!(slugify("LUMI-C  Standard!"), "lumi-c-standard");
        assert_eq!(
            parse_date("2024-02-29").map(date_string),
            Some("2024-02-29".into())
        );
        assert_eq!(parse_date("2023-02-29"), None);
        assert_eq!(parse_date("2023-2-1"), None);
    }
}
