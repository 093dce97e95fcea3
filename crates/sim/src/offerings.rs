//! Offerings as the provider sees them (`ProviderOfferingDetailsSerializer`):
//! the list and detail views, with components and the one plan.
//!
//! INVARIANT: components are listed ordered by name (`OfferingComponent.Meta.ordering`);
//! offerings by name unless `o=` says otherwise. Every simulated offering is `Active`.

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::state::{Model, SortKey, hex};

/// `Offering.States` labels, as the `state` filter accepts them.
pub(crate) const OFFERING_STATES: [&str; 4] = ["Draft", "Active", "Paused", "Archived"];

/// Filters of the offering lists (validated).
#[derive(Debug, Default)]
pub(crate) struct OfferingFilter {
    pub customer: Option<Uuid>,
    pub name: Option<String>,
    pub name_exact: Option<String>,
    pub states: Vec<String>,
    pub types: Vec<String>,
}

impl Model {
    pub(crate) fn offering_by_uuid(&self, uuid: Uuid) -> Option<usize> {
        self.offerings.iter().position(|o| o.uuid == uuid)
    }

    pub(crate) fn list_offerings(
        &self,
        f: &OfferingFilter,
        sort: &[(SortKey, bool)],
    ) -> Vec<usize> {
        let mut out: Vec<usize> = (0..self.offerings.len())
            .filter(|&i| {
                let o = &self.offerings[i];
                f.customer
                    .is_none_or(|u| u == self.customers[o.provider].uuid)
                    && f.name
                        .as_ref()
                        .is_none_or(|n| o.name.to_lowercase().contains(&n.to_lowercase()))
                    && f.name_exact.as_ref().is_none_or(|n| n == &o.name)
                    && (f.states.is_empty() || f.states.iter().any(|s| s == "Active"))
                    && (f.types.is_empty() || f.types.contains(&o.offering_type))
            })
            .collect();
        out.sort_by(|&a, &b| {
            let (x, y) = (&self.offerings[a], &self.offerings[b]);
            for &(key, desc) in sort {
                let ord = match key {
                    SortKey::Name => x.name.cmp(&y.name),
                    SortKey::State | SortKey::Created | SortKey::Constant => {
                        std::cmp::Ordering::Equal
                    }
                };
                let ord = if desc { ord.reverse() } else { ord };
                if ord.is_ne() {
                    return ord;
                }
            }
            x.name.cmp(&y.name).then(a.cmp(&b))
        });
        out
    }

    /// The offering; `collection` is the path segment its own URL uses.
    pub(crate) fn render_offering(
        &self,
        offering: usize,
        base: &str,
        collection: &str,
    ) -> Map<String, Value> {
        let o = &self.offerings[offering];
        let provider = &self.customers[o.provider];
        let mut components: Vec<&super::state::Component> = o.components.iter().collect();
        components.sort_by(|a, b| a.name.cmp(&b.name));
        let components: Vec<Value> = components
            .into_iter()
            .map(|c| {
                json!({
                    "uuid": hex(c.uuid),
                    "billing_type": c.billing_type.as_str(),
                    "type": c.kind,
                    "name": c.name,
                    "description": "",
                    "measured_unit": c.measured_unit,
                    "limit_period": Value::Null,
                    "limit_amount": Value::Null,
                    "article_code": "",
                    "max_value": Value::Null,
                    "min_value": Value::Null,
                    "max_available_limit": Value::Null,
                    "is_boolean": false,
                    "default_limit": Value::Null,
                    "factor": Value::Null,
                    "is_builtin": false,
                })
            })
            .collect();
        let prices: Map<String, Value> = o
            .components
            .iter()
            .map(|c| (c.kind.clone(), Value::String("0.0000000".into())))
            .collect();
        let value = json!({
            "url": format!("{base}/api/{collection}/{}/", hex(o.uuid)),
            "uuid": hex(o.uuid),
            "name": o.name,
            "slug": o.slug,
            "description": "",
            "customer": format!("{base}/api/customers/{}/", hex(provider.uuid)),
            "customer_uuid": hex(provider.uuid),
            "customer_name": provider.name,
            "attributes": {},
            "options": {"options": {}, "order": []},
            "resource_options": {"options": {}, "order": []},
            "components": components,
            "plugin_options": {},
            "state": "Active",
            "plans": [{
                "url": format!("{base}/api/marketplace-plans/{}/", hex(o.plan_uuid)),
                "uuid": hex(o.plan_uuid),
                "name": o.plan_name,
                "description": "",
                "article_code": "",
                "archived": false,
                "is_active": true,
                "unit_price": "0.0000000",
                "unit": "month",
                "prices": prices,
            }],
            "type": o.offering_type,
            "shared": true,
            "billable": true,
            "backend_id": "",
        });
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }
}
