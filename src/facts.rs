//! The policy's view of an allocation, built from what the Puhuri Core client fetched.
//!
//! This is the one place where the client's wire types meet the policy's `Allocation`:
//! the client knows nothing of the policy, the policy nothing of the wire.

use puhuri_client::{Fetched, GrantedResource, numeric_limits};
use puhuri_policy::GrantedFacts;
use puhuri_policy::allocation::{
    Allocation, CustomerFacts, OfferingFacts, OrderFacts, PlanFacts, ProjectFacts, ResourceFacts,
    UserFacts,
};

/// What is known of the requesting organisation beyond the order: its abbreviation from
/// the provider's customers list, and the provider's customers-file entry.
#[derive(Debug, Clone, Copy, Default)]
pub struct CustomerExtras<'a> {
    pub abbreviation: Option<&'a str>,
    pub entry: Option<&'a crate::customers::CustomerEntry>,
}

/// The allocation as `policy` sees it, with what it reads beyond the fetched resource and
/// order: the organisation's abbreviation (the customers file, else the provider's
/// customers list) and the totals granted already. The worker and `policy explain
/// --online` both build it here, so the two cannot disagree.
pub async fn gather(
    client: &puhuri_client::PuhuriClient,
    customers: &crate::customers::CustomerDirectory,
    abbreviations: &crate::customers::Abbreviations,
    policy: &puhuri_policy::Policy,
    fetched: &Fetched,
) -> Result<Allocation, puhuri_client::PuhuriError> {
    let basic = allocation(fetched, &CustomerExtras::default());
    let entry = customers.find(&basic.customer.uuid, &basic.customer.slug);
    let abbreviation =
        if policy.needs_customer_details() && entry.is_none_or(|e| e.abbreviation.is_empty()) {
            abbreviations
                .lookup(client, &basic.offering.provider_uuid, &basic.customer.uuid)
                .await?
        } else {
            None
        };
    let mut gathered = allocation(
        fetched,
        &CustomerExtras {
            abbreviation: abbreviation.as_deref(),
            entry,
        },
    );
    if policy.needs_granted() {
        let Some(customer) = puhuri_client::WaldurUuid::parse(&gathered.customer.uuid) else {
            return Err(puhuri_client::PuhuriError::Unusable {
                operation: "granted",
                detail:
                    "the allocation names no organisation, so what it was granted cannot be summed"
                        .into(),
            });
        };
        let totals = client.list_granted(&customer).await?;
        gathered.granted = granted(&totals, &gathered.project.uuid, &gathered.resource.uuid);
    }
    Ok(gathered)
}

/// The policy's view of the allocation. `customer.uuid/name/slug` come from the resource
/// or order; `abbreviation` from the customers-file entry, else the provider's customers
/// list; `country` and `tags` only from the customers-file entry. `created_by.username`
/// is empty where the server has no `created_by_username` (Waldur 7.0.x).
pub fn allocation(fetched: &Fetched, extras: &CustomerExtras<'_>) -> Allocation {
    let r = &fetched.resource;
    let o = fetched.order.as_ref();
    let pick = |a: &Option<String>, b: Option<&Option<String>>| -> String {
        a.clone()
            .filter(|a| !a.is_empty())
            .or_else(|| b.and_then(|b| b.clone()))
            .unwrap_or_default()
    };
    let text = |a: &Option<String>| a.clone().unwrap_or_default();
    let limits_source = r
        .limits
        .as_ref()
        .filter(|l| !l.is_empty())
        .or_else(|| o.and_then(|o| o.limits.as_ref()));
    let limits = limits_source.map(numeric_limits).unwrap_or_default();
    let attributes = o
        .and_then(|o| o.attributes.clone())
        .filter(|a| !a.is_empty())
        .or_else(|| r.attributes.clone())
        .unwrap_or_default();
    let date = |d: &Option<String>| d.clone().filter(|d| !d.is_empty());
    Allocation {
        resource: ResourceFacts {
            uuid: r.uuid.clone(),
            name: pick(&r.name, o.map(|o| &o.resource_name)),
            slug: text(&r.slug),
            state: r.state.to_string(),
            backend_id: text(&r.backend_id),
            created: text(&r.created),
            end_date: date(&r.end_date),
        },
        order: OrderFacts {
            uuid: o.map(|o| o.uuid.clone()).unwrap_or_default(),
            order_type: o.map(|o| o.order_type.to_string()).unwrap_or_default(),
            state: o.map(|o| o.state.to_string()).unwrap_or_default(),
            created: o.map(|o| text(&o.created)).unwrap_or_default(),
        },
        offering: OfferingFacts {
            uuid: pick(&r.offering_uuid, o.map(|o| &o.offering_uuid)),
            name: pick(&r.offering_name, o.map(|o| &o.offering_name)),
            offering_type: pick(&r.offering_type, o.map(|o| &o.offering_type)),
            provider_uuid: pick(&r.provider_uuid, o.map(|o| &o.provider_uuid)),
            provider_name: pick(&r.provider_name, o.map(|o| &o.provider_name)),
        },
        plan: PlanFacts {
            uuid: pick(&r.plan_uuid, o.map(|o| &o.plan_uuid)),
            name: pick(&r.plan_name, o.map(|o| &o.plan_name)),
        },
        project: ProjectFacts {
            uuid: pick(&r.project_uuid, o.map(|o| &o.project_uuid)),
            name: pick(&r.project_name, o.map(|o| &o.project_name)),
            slug: pick(&r.project_slug, o.map(|o| &o.project_slug)),
            end_date: date(&r.project_end_date),
        },
        customer: CustomerFacts {
            uuid: pick(&r.customer_uuid, o.map(|o| &o.customer_uuid)),
            name: pick(&r.customer_name, o.map(|o| &o.customer_name)),
            slug: pick(&r.customer_slug, o.map(|o| &o.customer_slug)),
            abbreviation: extras
                .entry
                .map(|e| e.abbreviation.as_str())
                .filter(|a| !a.is_empty())
                .or(extras.abbreviation)
                .unwrap_or_default()
                .to_owned(),
            country: extras.entry.map(|e| e.country.clone()).unwrap_or_default(),
            tags: extras.entry.map(|e| e.tags.clone()).unwrap_or_default(),
        },
        limits,
        attributes,
        created_by: UserFacts {
            username: o.map(|o| text(&o.created_by_username)).unwrap_or_default(),
            full_name: o.map(|o| text(&o.created_by_full_name)).unwrap_or_default(),
        },
        granted: Default::default(),
    }
}

/// What the provider granted the organisation and the project already, summed per
/// component over `granted`, without `exclude` (the allocation being decided).
pub fn granted(granted: &[GrantedResource], project_uuid: &str, exclude: &str) -> GrantedFacts {
    let mut facts = GrantedFacts::default();
    for resource in granted.iter().filter(|r| r.uuid != exclude) {
        let same_project = resource.project_uuid.as_deref() == Some(project_uuid);
        for (component, amount) in &resource.limits {
            *facts.customer.entry(component.clone()).or_default() += amount;
            if same_project {
                *facts.project.entry(component.clone()).or_default() += amount;
            }
        }
    }
    facts
}

/// The access report a rule rendered, as Puhuri Core takes it.
pub fn report(sections: &[puhuri_policy::ReportSection]) -> Vec<puhuri_client::ReportSection> {
    sections
        .iter()
        .map(|section| puhuri_client::ReportSection {
            header: section.header.clone(),
            body: section.body.clone(),
        })
        .collect()
}
