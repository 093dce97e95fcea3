//! Plan periods, component usages and per-user usages of resources: what
//! `set_usage` and `set_user_usage` store and how the usage views render it.
//!
//! INVARIANT: there is at most one component usage per (resource, component,
//! plan period or none, billing period), as Waldur's unique constraints say;
//! a second report in the same month replaces the first
//! (`ComponentUsageCreateSerializer.save`: `update_or_create`).
//! INVARIANT: at most one user usage per (component usage, username).
//! INVARIANT: the billing period is the first day of the current UTC month at
//! the time of the report; a plan period is closed for reports when it ended
//! before that day.

use serde_json::{Map, Value, json};
use time::{Date, OffsetDateTime, UtcOffset};
use uuid::Uuid;

use super::decimal::Amount;
use super::state::{
    Actor, ComponentUsage, Model, PlanPeriod, UserUsage, date_string, hex, stable_uuid, timestamp,
};

/// The first day of `now`'s month (UTC), `core_utils.month_start`.
pub(crate) fn month_start(now: OffsetDateTime) -> Date {
    let date = now.to_offset(UtcOffset::UTC).date();
    date.replace_day(1).unwrap_or(date)
}

/// The first moment of `now`'s month (UTC).
pub(crate) fn month_start_time(now: OffsetDateTime) -> OffsetDateTime {
    month_start(now).midnight().assume_utc()
}

/// `t` at microsecond resolution (what Django stores).
pub(crate) fn truncate_to_micros(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(t.microsecond() * 1000).unwrap_or(t)
}

/// A Waldur user's primary key, as `modified_by` renders it: a stable small
/// integer derived from the username.
pub(crate) fn user_pk(username: &str) -> u64 {
    let uuid = stable_uuid("user-pk", username);
    let bytes = uuid.as_bytes();
    u64::from(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) % 100_000) + 1
}

/// One validated usage line of `set_usage`.
#[derive(Debug, Clone)]
pub(crate) struct UsageLine {
    pub component: String,
    pub amount: Amount,
    pub description: Option<String>,
    pub recurring: bool,
}

/// Filters of the component usage lists (validated).
#[derive(Debug, Default)]
pub(crate) struct UsageFilter {
    pub resource: Option<Uuid>,
    pub offering: Option<Uuid>,
    pub project: Option<Uuid>,
    pub customer: Option<Uuid>,
    pub component: Option<String>,
    pub billing_period: Option<Date>,
    pub date_before: Option<Date>,
    pub date_after: Option<Date>,
}

impl Model {
    pub(crate) fn plan_period_by_uuid(&self, uuid: Uuid) -> Option<usize> {
        self.plan_periods.iter().position(|p| p.uuid == uuid)
    }

    pub(crate) fn usage_by_uuid(&self, uuid: Uuid) -> Option<usize> {
        self.usages.iter().position(|u| u.uuid == uuid)
    }

    /// `utils.get_plan_period`: the latest-starting period of the resource that
    /// covers `now`.
    fn current_plan_period(&self, resource: usize, now: OffsetDateTime) -> Option<usize> {
        self.plan_periods
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                p.resource == resource && p.start <= now && p.end.is_none_or(|e| e > now)
            })
            .max_by_key(|(i, p)| (p.start, *i))
            .map(|(i, _)| i)
    }

    /// Whether a report may still name this period (`validate_plan_period`).
    pub(crate) fn plan_period_is_open(&self, period: usize, now: OffsetDateTime) -> bool {
        self.plan_periods[period]
            .end
            .is_none_or(|end| end >= month_start_time(now))
    }

    /// The resource's open period ends at `end`; returns it.
    pub(crate) fn close_plan_period(
        &mut self,
        resource: usize,
        end: OffsetDateTime,
    ) -> Option<usize> {
        let period = self
            .plan_periods
            .iter()
            .rposition(|p| p.resource == resource && p.end.is_none())?;
        self.plan_periods[period].end = Some(end);
        Some(period)
    }

    /// The reportable component types of the resource's offering
    /// (`get_components_map`).
    pub(crate) fn reportable_components(&self, resource: usize) -> Vec<&str> {
        let offering = &self.offerings[self.resources[resource].offering];
        offering
            .components
            .iter()
            .filter(|c| c.billing_type.is_reportable())
            .map(|c| c.kind.as_str())
            .collect()
    }

    /// `ComponentUsageCreateSerializer.save`, after validation.
    pub(crate) fn set_usage(
        &mut self,
        resource: usize,
        plan_period: Option<usize>,
        lines: &[UsageLine],
        actor: &Actor,
        now: OffsetDateTime,
    ) {
        let stamp = self.stamp(now);
        let billing_period = month_start(now);
        let mut period = plan_period;
        for line in lines {
            for u in self.usages.iter_mut().filter(|u| {
                u.resource == resource
                    && u.component == line.component
                    && u.billing_period == billing_period
            }) {
                u.recurring = false;
            }
            if period.is_none() {
                period = self.current_plan_period(resource, now);
            }
            let existing = self.usages.iter().position(|u| {
                u.resource == resource
                    && u.component == line.component
                    && u.plan_period == period
                    && u.billing_period == billing_period
            });
            let description = line.description.clone().unwrap_or_default();
            match existing {
                Some(i) => {
                    let u = &mut self.usages[i];
                    u.usage = line.amount;
                    u.date = stamp;
                    u.description = description;
                    u.recurring = line.recurring;
                    u.modified_by = Some(actor.username.clone());
                }
                None => self.usages.push(ComponentUsage {
                    uuid: Uuid::new_v4(),
                    resource,
                    component: line.component.clone(),
                    plan_period: period,
                    billing_period,
                    usage: line.amount,
                    date: stamp,
                    created: stamp,
                    description,
                    recurring: line.recurring,
                    modified_by: Some(actor.username.clone()),
                }),
            }
        }
        let r = &mut self.resources[resource];
        r.current_usages = lines
            .iter()
            .map(|l| (l.component.clone(), Value::String(l.amount.to_string())))
            .collect();
    }

    /// The user usage of `username` under `usage`, if any.
    pub(crate) fn user_usage(&self, usage: usize, username: &str) -> Option<usize> {
        self.user_usages
            .iter()
            .position(|u| u.component_usage == usage && u.username == username)
    }

    /// Creates or updates the user usage of `username` under `usage`.
    pub(crate) fn set_user_usage(
        &mut self,
        usage: usize,
        username: &str,
        amount: Amount,
        now: OffsetDateTime,
    ) {
        let stamp = self.stamp(now);
        match self.user_usage(usage, username) {
            Some(i) => {
                let u = &mut self.user_usages[i];
                u.usage = amount;
                u.modified = stamp;
            }
            None => self.user_usages.push(UserUsage {
                uuid: Uuid::new_v4(),
                component_usage: usage,
                username: username.to_string(),
                usage: amount,
                created: stamp,
                modified: stamp,
            }),
        }
    }

    fn usage_matches(&self, u: &ComponentUsage, f: &UsageFilter) -> bool {
        let r = &self.resources[u.resource];
        let offering = &self.offerings[r.offering];
        let project = &self.projects[r.project];
        let day = u.date.to_offset(UtcOffset::UTC).date();
        f.resource.is_none_or(|x| x == r.uuid)
            && f.offering.is_none_or(|x| x == offering.uuid)
            && f.project.is_none_or(|x| x == project.uuid)
            && f.customer
                .is_none_or(|x| x == self.customers[project.customer].uuid)
            && f.component.as_ref().is_none_or(|c| c == &u.component)
            && f.billing_period.is_none_or(|d| d == u.billing_period)
            && f.date_before.is_none_or(|d| day <= d)
            && f.date_after.is_none_or(|d| day >= d)
    }

    /// Component usages ordered by `-date, type` (then by creation).
    pub(crate) fn list_usages(&self, f: &UsageFilter) -> Vec<usize> {
        let mut out: Vec<usize> = (0..self.usages.len())
            .filter(|&i| self.usage_matches(&self.usages[i], f))
            .collect();
        out.sort_by(|&a, &b| {
            let (x, y) = (&self.usages[a], &self.usages[b]);
            y.date
                .cmp(&x.date)
                .then_with(|| x.component.cmp(&y.component))
                .then(a.cmp(&b))
        });
        out
    }

    /// User usages ordered by `-component_usage__date, component type`.
    pub(crate) fn list_user_usages(&self, f: &UsageFilter) -> Vec<usize> {
        let mut out: Vec<usize> = (0..self.user_usages.len())
            .filter(|&i| self.usage_matches(&self.usages[self.user_usages[i].component_usage], f))
            .collect();
        out.sort_by(|&a, &b| {
            let x = &self.usages[self.user_usages[a].component_usage];
            let y = &self.usages[self.user_usages[b].component_usage];
            y.date
                .cmp(&x.date)
                .then_with(|| x.component.cmp(&y.component))
                .then(a.cmp(&b))
        });
        out
    }

    /// `(name, measured_unit)` of a component of the usage's offering.
    fn component_labels(&self, u: &ComponentUsage) -> (String, String) {
        let offering = &self.offerings[self.resources[u.resource].offering];
        offering
            .components
            .iter()
            .find(|c| c.kind == u.component)
            .map(|c| (c.name.clone(), c.measured_unit.clone()))
            .unwrap_or_else(|| (u.component.clone(), String::new()))
    }

    /// `BaseComponentUsageSerializer`.
    fn render_usage_base(&self, u: &ComponentUsage) -> Map<String, Value> {
        let (name, unit) = self.component_labels(u);
        let value = json!({
            "uuid": hex(u.uuid),
            "created": timestamp(u.created),
            "description": u.description,
            "type": u.component,
            "name": name,
            "measured_unit": unit,
            "usage": u.usage.to_string(),
            "date": timestamp(u.date),
            "recurring": u.recurring,
        });
        into_map(value)
    }

    /// `ComponentUsageSerializer`.
    pub(crate) fn render_usage(&self, usage: usize) -> Map<String, Value> {
        let u = &self.usages[usage];
        let mut map = self.render_usage_base(u);
        map.extend(self.render_usage_resource(u.resource));
        map.extend(into_map(json!({
            "billing_period": date_string(u.billing_period),
            "modified_by": u.modified_by.as_deref().map(user_pk),
        })));
        map
    }

    /// The resource, offering, project and organisation fields both usage serializers add.
    fn render_usage_resource(&self, resource: usize) -> Map<String, Value> {
        let r = &self.resources[resource];
        let offering = &self.offerings[r.offering];
        let project = &self.projects[r.project];
        let customer = &self.customers[project.customer];
        into_map(json!({
            "resource_name": r.name,
            "resource_uuid": hex(r.uuid),
            "offering_name": offering.name,
            "offering_uuid": hex(offering.uuid),
            "project_name": project.name,
            "project_uuid": hex(project.uuid),
            "customer_name": customer.name,
            "customer_uuid": hex(customer.uuid),
        }))
    }

    /// `ComponentUserUsageSerializer`.
    pub(crate) fn render_user_usage(&self, user_usage: usize, base: &str) -> Map<String, Value> {
        let uu = &self.user_usages[user_usage];
        let u = &self.usages[uu.component_usage];
        let (_, unit) = self.component_labels(u);
        let value = json!({
            "uuid": hex(uu.uuid),
            "user": Value::Null,
            "username": uu.username,
            "component_usage": format!("{base}/api/marketplace-component-usages/{}/", hex(u.uuid)),
            "usage": uu.usage.to_string(),
            "measured_unit": unit,
            "description": "",
            "created": timestamp(uu.created),
            "modified": timestamp(uu.modified),
            "backend_id": "",
            "component_type": u.component,
            "date": timestamp(u.date),
        });
        let mut map = into_map(value);
        map.extend(self.render_usage_resource(u.resource));
        map
    }

    /// `ResourcePlanPeriodSerializer` with the usages of the current month.
    fn render_plan_period(&self, period: usize, now: OffsetDateTime) -> Value {
        let p: &PlanPeriod = &self.plan_periods[period];
        let month = month_start(now);
        let components: Vec<Value> = self
            .usages
            .iter()
            .filter(|u| u.plan_period == Some(period) && u.billing_period == month)
            .map(|u| Value::Object(self.render_usage_base(u)))
            .collect();
        json!({
            "uuid": hex(p.uuid),
            "plan_name": p.plan_name,
            "plan_uuid": hex(p.plan_uuid),
            "start": timestamp(p.start),
            "end": p.end.map(timestamp),
            "components": components,
        })
    }

    /// One period as the admin API answers it.
    pub(crate) fn render_one_plan_period(&self, period: usize, now: OffsetDateTime) -> Value {
        self.render_plan_period(period, now)
    }

    /// `GET .../{uuid}/plan_periods/`: periods still open or ended this month.
    pub(crate) fn render_plan_periods(&self, resource: usize, now: OffsetDateTime) -> Value {
        let since = month_start_time(now);
        Value::Array(
            self.plan_periods
                .iter()
                .enumerate()
                .filter(|(_, p)| p.resource == resource && p.end.is_none_or(|e| e >= since))
                .map(|(i, _)| self.render_plan_period(i, now))
                .collect(),
        )
    }
}

fn into_map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::{Month, PrimitiveDateTime, Time, UtcOffset};

    fn at(day: u8, hour: u8, offset_hours: i8) -> OffsetDateTime {
        let date = Date::from_calendar_date(2025, Month::March, day).unwrap();
        let time = Time::from_hms(hour, 30, 0).unwrap();
        PrimitiveDateTime::new(date, time)
            .assume_offset(UtcOffset::from_hms(offset_hours, 0, 0).unwrap())
    }

    #[test]
    fn month_start_is_the_first_utc_day() {
        // 00:30 on 1 March in UTC+2 is still February in UTC.
        assert_eq!(date_string(month_start(at(1, 0, 2))), "2025-02-01");
        assert_eq!(date_string(month_start(at(17, 12, 0))), "2025-03-01");
        assert_eq!(
            timestamp(month_start_time(at(17, 12, 0))),
            "2025-03-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn user_pks_are_stable_and_small() {
        assert_eq!(user_pk("sp-integration"), user_pk("sp-integration"));
        assert!((1..=100_000).contains(&user_pk("sp-integration-2")));
    }
}
