//! The allocation object: everything a rule can look at, as one documented tree.
//!
//! The worker builds an [`Allocation`] from Puhuri Core's wire types; `policy explain` and
//! `policy test` read it from JSON or TOML (every part optional, unknown keys refused).
//! [`SCHEMA`] lists every field with its type: the load-time checker and the template
//! compiler resolve names against it, so a misspelt field is a load error.
//!
//! INVARIANT: the CEL variables and the template view are both derived from
//! [`Allocation::view`], so a condition and a template always see the same values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// An allocation request, as the policy sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Allocation {
    pub resource: ResourceFacts,
    pub order: OrderFacts,
    pub offering: OfferingFacts,
    pub plan: PlanFacts,
    pub project: ProjectFacts,
    pub customer: CustomerFacts,
    /// Requested amount per component (`cpu_k_hours`, `gpu_k_hours`, `gb_k_hours`, ...).
    pub limits: BTreeMap<String, f64>,
    /// The order's attributes as the requester filled them in (`name`, `is_industry`,
    /// `is_commercial`, `is_training`, `used_ai_tech`, ...).
    pub attributes: Map<String, Value>,
    pub created_by: UserFacts,
    /// What this provider has granted already (read only when a rule uses it).
    pub granted: GrantedFacts,
}

/// The limits of the allocations this provider has granted already, summed per component:
/// every allocation of the organisation (`customer`) or of the project (`project`) that
/// the token sees in state `OK` or `Updating`, this one excluded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrantedFacts {
    pub customer: BTreeMap<String, f64>,
    pub project: BTreeMap<String, f64>,
}

/// The marketplace resource.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceFacts {
    pub uuid: String,
    pub name: String,
    pub slug: String,
    pub state: String,
    pub backend_id: String,
    /// RFC 3339.
    pub created: String,
    /// `YYYY-MM-DD`, or none.
    pub end_date: Option<String>,
}

/// The creation order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrderFacts {
    pub uuid: String,
    #[serde(rename = "type")]
    pub order_type: String,
    pub state: String,
    /// RFC 3339.
    pub created: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OfferingFacts {
    pub uuid: String,
    pub name: String,
    /// `Marketplace.Basic`, `Marketplace.Slurm`, ...
    #[serde(rename = "type")]
    pub offering_type: String,
    pub provider_uuid: String,
    pub provider_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlanFacts {
    pub uuid: String,
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectFacts {
    pub uuid: String,
    pub name: String,
    pub slug: String,
    /// `YYYY-MM-DD`, or none for a project without an end date.
    pub end_date: Option<String>,
}

/// The requesting organisation: `uuid`, `name` and `slug` from the order or resource;
/// `abbreviation` from the provider's customers list (or the provider's customers file);
/// `country` and `tags` only from the provider's customers file (no provider-visible
/// endpoint of Puhuri Core has an organisation's country).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CustomerFacts {
    pub uuid: String,
    pub name: String,
    pub slug: String,
    pub abbreviation: String,
    /// ISO 3166-1 alpha-2 code (`FI`, `EE`, ...); empty when the customers file does not say.
    pub country: String,
    /// The provider's own labels for the organisation (customers file).
    pub tags: Vec<String>,
}

/// The user who created the order: `full_name` on every server; `username` only where
/// the server renders `created_by_username` (not Waldur 7.0.x), else empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserFacts {
    pub username: String,
    pub full_name: String,
}

/// The type of a field, as far as the load-time checker knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    String,
    /// A `YYYY-MM-DD` string, or null.
    Date,
    /// A double.
    Number,
    Bool,
    /// A fixed set of fields.
    Object(&'static [(&'static str, FieldType)]),
    /// `limits`: the policy's components, each a double.
    Limits,
    /// `attributes`: any keys, any values.
    OpenMap,
    /// A list of strings (`customer.tags`): `"x" in customer.tags`, `size(...)`.
    StringList,
}

impl FieldType {
    /// The name used in messages.
    pub fn describe(self) -> &'static str {
        match self {
            FieldType::String => "a string",
            FieldType::Date => "a date string or null",
            FieldType::Number => "a number",
            FieldType::Bool => "a boolean",
            FieldType::Object(_) | FieldType::Limits | FieldType::OpenMap => "an object",
            FieldType::StringList => "a list of strings",
        }
    }
}

const S: FieldType = FieldType::String;

/// Every top-level name a condition or template may use, with its fields.
pub const SCHEMA: &[(&str, FieldType)] = &[
    (
        "resource",
        FieldType::Object(&[
            ("uuid", S),
            ("short_uuid", S),
            ("name", S),
            ("slug", S),
            ("state", S),
            ("backend_id", S),
            ("created", S),
            ("end_date", FieldType::Date),
        ]),
    ),
    (
        "order",
        FieldType::Object(&[
            ("uuid", S),
            ("short_uuid", S),
            ("type", S),
            ("state", S),
            ("created", S),
        ]),
    ),
    (
        "offering",
        FieldType::Object(&[
            ("uuid", S),
            ("name", S),
            ("type", S),
            ("provider_uuid", S),
            ("provider_name", S),
        ]),
    ),
    ("plan", FieldType::Object(&[("uuid", S), ("name", S)])),
    (
        "project",
        FieldType::Object(&[
            ("uuid", S),
            ("short_uuid", S),
            ("name", S),
            ("slug", S),
            ("end_date", FieldType::Date),
        ]),
    ),
    (
        "customer",
        FieldType::Object(&[
            ("uuid", S),
            ("name", S),
            ("slug", S),
            ("abbreviation", S),
            ("country", S),
            ("tags", FieldType::StringList),
        ]),
    ),
    ("limits", FieldType::Limits),
    ("attributes", FieldType::OpenMap),
    (
        "created_by",
        FieldType::Object(&[("username", S), ("full_name", S)]),
    ),
    (
        "granted",
        FieldType::Object(&[
            ("customer", FieldType::Limits),
            ("project", FieldType::Limits),
        ]),
    ),
    ("now", S),
    ("today", S),
];

/// The components every policy knows unless its file lists others: LUMI's.
pub const DEFAULT_COMPONENTS: &[&str] = &["cpu_k_hours", "gpu_k_hours", "gb_k_hours"];

/// The top-level names, for messages.
pub fn top_level_names() -> Vec<&'static str> {
    SCHEMA.iter().map(|(name, _)| *name).collect()
}

/// The type of a top-level name.
pub fn top_level(name: &str) -> Option<FieldType> {
    SCHEMA.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// The first 8 characters of a uuid, as people quote them.
fn short(uuid: &str) -> &str {
    uuid.get(..8).unwrap_or(uuid)
}

impl Allocation {
    /// The tree conditions and templates see: the fields, the derived `short_uuid`s,
    /// every policy component present in `limits` (0 when not requested), `now` (RFC 3339,
    /// UTC) and `today` (`YYYY-MM-DD`, UTC).
    pub fn view(&self, components: &[String], now: time::OffsetDateTime) -> Value {
        let per_component = |amounts: &BTreeMap<String, f64>| {
            let mut map: Map<String, Value> =
                components.iter().map(|c| (c.clone(), json!(0.0))).collect();
            for (component, amount) in amounts {
                map.insert(component.clone(), json!(amount));
            }
            map
        };
        let limits = per_component(&self.limits);
        let now = now.to_offset(time::UtcOffset::UTC);
        let now_text = now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let today = format!(
            "{:04}-{:02}-{:02}",
            now.year(),
            u8::from(now.month()),
            now.day()
        );
        json!({
            "resource": {
                "uuid": self.resource.uuid,
                "short_uuid": short(&self.resource.uuid),
                "name": self.resource.name,
                "slug": self.resource.slug,
                "state": self.resource.state,
                "backend_id": self.resource.backend_id,
                "created": self.resource.created,
                "end_date": self.resource.end_date,
            },
            "order": {
                "uuid": self.order.uuid,
                "short_uuid": short(&self.order.uuid),
                "type": self.order.order_type,
                "state": self.order.state,
                "created": self.order.created,
            },
            "offering": self.offering,
            "plan": self.plan,
            "project": {
                "uuid": self.project.uuid,
                "short_uuid": short(&self.project.uuid),
                "name": self.project.name,
                "slug": self.project.slug,
                "end_date": self.project.end_date,
            },
            "customer": self.customer,
            "limits": limits,
            "attributes": self.attributes,
            "created_by": self.created_by,
            "granted": {
                "customer": per_component(&self.granted.customer),
                "project": per_component(&self.granted.project),
            },
            "now": now_text,
            "today": today,
        })
    }

    /// The ids an audit record needs.
    pub fn ids(&self) -> AllocationIds {
        AllocationIds {
            resource_uuid: self.resource.uuid.clone(),
            order_uuid: self.order.uuid.clone(),
            offering_uuid: self.offering.uuid.clone(),
            project_uuid: self.project.uuid.clone(),
            customer_uuid: self.customer.uuid.clone(),
        }
    }
}

/// Which allocation a verdict is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AllocationIds {
    pub resource_uuid: String,
    pub order_uuid: String,
    pub offering_uuid: String,
    pub project_uuid: String,
    pub customer_uuid: String,
}

/// Converts the JSON view into a CEL value. Numbers under `limits` and `granted` are
/// doubles (so `limits.cpu_k_hours + granted.customer.cpu_k_hours` always type-checks);
/// other integers stay ints.
pub(crate) fn to_cel(value: &Value) -> cel::Value {
    convert(value, false)
}

fn convert(value: &Value, doubles: bool) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (doubles, n.as_i64()) {
            (false, Some(i)) => cel::Value::Int(i),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::from(s.as_str()),
        Value::Array(items) => cel::Value::List(std::sync::Arc::new(
            items.iter().map(|v| convert(v, doubles)).collect(),
        )),
        Value::Object(map) => {
            let entries: std::collections::HashMap<cel::objects::Key, cel::Value> = map
                .iter()
                .map(|(k, v)| {
                    let doubles = doubles || k == "limits" || k == "granted";
                    (cel::objects::Key::from(k.as_str()), convert(v, doubles))
                })
                .collect();
            cel::Value::Map(cel::objects::Map::from(entries))
        }
    }
}

/// Looks a dotted path up in the view (`project.slug`, `limits.cpu_k_hours`).
pub fn lookup<'a>(view: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(view, |value, key| value.get(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_fills_every_component_and_derives_short_uuids() {
        let allocation = Allocation {
            resource: ResourceFacts {
                uuid: "a1916bd53fd04b1ab1a4e700c926607b".into(),
                ..Default::default()
            },
            limits: [("cpu_k_hours".to_owned(), 10.0)].into_iter().collect(),
            ..Default::default()
        };
        let components: Vec<String> = DEFAULT_COMPONENTS.iter().map(|c| c.to_string()).collect();
        let now = time::OffsetDateTime::parse(
            "2026-03-04T05:06:07Z",
            &time::format_description::well_known::Rfc3339,
        )
        .expect("timestamp");
        let view = allocation.view(&components, now);
        assert_eq!(view["resource"]["short_uuid"], "a1916bd5");
        assert_eq!(view["limits"]["cpu_k_hours"], 10.0);
        assert_eq!(view["limits"]["gpu_k_hours"], 0.0);
        assert_eq!(view["today"], "2026-03-04");
        assert_eq!(view["now"], "2026-03-04T05:06:07Z");
        assert_eq!(view["project"]["end_date"], Value::Null);
        for (name, _) in SCHEMA {
            assert!(
                view.get(name).is_some(),
                "`{name}` is in the schema but not the view"
            );
        }
    }
}
