//! The review queue: allocations the policy holds for a person, and the operator's
//! decision on one.
//!
//! INVARIANT: the queue is computed from the truth, never kept beside it: each listing
//! reads the allocations waiting for the provider from Puhuri Core (the reconciler's
//! listing), gathers each as a worker does (`facts::gather`) and evaluates the running
//! policy with `explain`; what it holds is the queue.
//! INVARIANT: an operator's decision is never written from here: it is queued as work
//! (`work::publish_operator`), and a worker re-fetches the allocation, writes only while
//! it still waits, and writes exactly what an automatic decision writes (`[manual]`).
//! INVARIANT: the held gauges are set by one computation ([`Review::held_now`]): each
//! listing of the page, and in the process serving the page every `review.refresh_secs`
//! ([`refresh`]), so they are current without a visitor.

pub mod session;
pub mod web;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::circuit::Circuit;
use crate::customers::{Abbreviations, CustomerDirectory};
use crate::metrics::Metrics;
use crate::notification::{OperatorAction, OperatorDecision, OperatorWork, WorkItem};
use crate::reload::PolicyHandle;
use puhuri_client::{
    AllocationHint, Fetched, OrderUuid, PuhuriClient, PuhuriError, ResourceUuid, Waiting,
    WaldurUuid,
};
use puhuri_policy::{Action, Explanation, GrantedFacts};

/// Allocations gathered at once while listing.
const LIST_CONCURRENCY: usize = 8;

/// One held allocation, as the review queue shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Held {
    /// The allocation's resource uuid: the id `review show|approve|reject` take.
    pub id: String,
    pub order_uuid: String,
    pub name: String,
    pub offering: Named,
    pub project: Named,
    pub customer: Named,
    /// The allocation's end date, else its project's.
    pub end_date: Option<String>,
    /// Who asked: `username` (empty where Puhuri Core does not give it) and full name.
    pub requested_by: String,
    pub limits: BTreeMap<String, f64>,
    /// What the organisation and the project were granted already, per component.
    pub granted: GrantedFacts,
    /// The rule that held it; `None`: the default.
    pub rule: Option<String>,
    pub note: String,
    /// When it was requested (the order's creation, else the resource's).
    pub created: String,
    /// Seconds since `created` (0 when unknown).
    pub age_secs: i64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Named {
    pub uuid: String,
    pub name: String,
}

/// Which held allocations to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// An offering's uuid or name.
    pub offering: Option<String>,
    /// A rule's name; `default` for holds by the default.
    pub rule: Option<String>,
}

impl Filter {
    fn keeps(&self, held: &Held) -> bool {
        let offering = self.offering.as_deref().is_none_or(|o| {
            WaldurUuid::parse(o).map_or(o == held.offering.name, |u| {
                Some(u) == WaldurUuid::parse(&held.offering.uuid)
            })
        });
        let rule = self
            .rule
            .as_deref()
            .is_none_or(|r| held.rule.as_deref().unwrap_or("default") == r);
        offering && rule
    }
}

/// One allocation in detail: how the policy decides it now, and whether it waits.
pub struct Shown {
    pub held: Held,
    pub explanation: Explanation,
    /// `None` while it waits for the provider; else its state.
    pub not_waiting: Option<String>,
    /// What an operator's approval would write (`[manual]`): its `backend_id`, or why
    /// it would be held instead.
    pub manual_backend_id: Result<String, String>,
}

/// Why the review queue cannot answer.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("Puhuri Core: {0}")]
    Puhuri(#[from] PuhuriError),
    #[error("`{0}` is not an allocation's uuid (32 hexadecimal digits, dashes allowed)")]
    NotAnId(String),
    #[error("{0}")]
    Refused(&'static str),
    #[error("the decision could not be queued: {0}")]
    Queue(#[from] puhuri_queue::PublishError),
}

/// The review queue over Puhuri Core and the running policy.
#[derive(Clone)]
pub struct Review {
    client: PuhuriClient,
    policy: PolicyHandle,
    customers: Arc<CustomerDirectory>,
    abbreviations: Arc<Abbreviations>,
    offerings: Vec<String>,
}

impl Review {
    pub fn new(
        client: PuhuriClient,
        policy: PolicyHandle,
        customers: CustomerDirectory,
        offerings: Vec<String>,
    ) -> Review {
        Review {
            client,
            policy,
            customers: Arc::new(customers),
            abbreviations: Arc::new(Abbreviations::default()),
            offerings,
        }
    }

    /// The allocations the policy holds now, oldest first.
    pub async fn list(&self, filter: &Filter) -> Result<Vec<Held>, ReviewError> {
        let scopes: Vec<Option<&str>> = if self.offerings.is_empty() {
            vec![None]
        } else {
            self.offerings.iter().map(|o| Some(o.as_str())).collect()
        };
        let mut hints = Vec::new();
        for scope in scopes {
            let (found, _) = self.client.list_pending(scope).await?;
            hints.extend(found);
        }
        let mut seen = std::collections::HashSet::new();
        hints.retain(|hint| seen.insert(hint.key()));
        let results: Vec<Result<Option<Held>, ReviewError>> = futures_util::stream::iter(hints)
            .map(|hint| async move {
                let fetched = match self.client.fetch_allocation(&hint).await {
                    Ok(fetched) => fetched,
                    // Gone between the listing and the read: it waits for nobody.
                    Err(PuhuriError::Permanent { status: 404, .. }) => return Ok(None),
                    Err(error) => return Err(error.into()),
                };
                if fetched.waiting(self.client.api()) != Waiting::Yes {
                    return Ok(None);
                }
                let (held, explanation, _) = self.evaluate(&fetched).await?;
                Ok(matches!(explanation.verdict.action, Action::Hold { .. }).then_some(held))
            })
            .buffer_unordered(LIST_CONCURRENCY)
            .collect()
            .await;
        let mut held = Vec::new();
        for result in results {
            if let Some(one) = result? {
                held.push(one);
            }
        }
        held.retain(|h| filter.keeps(h));
        held.sort_by(|a, b| b.age_secs.cmp(&a.age_secs).then(a.id.cmp(&b.id)));
        Ok(held)
    }

    /// Every allocation the policy holds now, oldest first, recorded in the held gauges:
    /// what the page lists and what [`refresh`] keeps current.
    pub async fn held_now(&self, metrics: &Metrics) -> Result<Vec<Held>, ReviewError> {
        let held = self.list(&Filter::default()).await?;
        metrics.review_listed(held.len(), held.first().map_or(0.0, |h| h.age_secs as f64));
        Ok(held)
    }

    /// One allocation: the policy's explanation now, and what approving it would write.
    pub async fn show(&self, id: &str) -> Result<Shown, ReviewError> {
        let fetched = self.fetch(id).await?;
        let not_waiting = match fetched.waiting(self.client.api()) {
            Waiting::Yes => None,
            Waiting::AlreadyHandled(state) | Waiting::NotYet(state) => Some(state),
        };
        let (held, explanation, allocation) = self.evaluate(&fetched).await?;
        let manual = self.policy.current().decide_manually(
            &allocation,
            time::OffsetDateTime::now_utc(),
            &puhuri_policy::ManualDecision::Approve,
        );
        let manual_backend_id = match manual.action {
            Action::Approve { backend_id, .. } => Ok(backend_id),
            _ => Err(manual.reasons.last().cloned().unwrap_or_default()),
        };
        Ok(Shown {
            held,
            explanation,
            not_waiting,
            manual_backend_id,
        })
    }

    /// Queues an operator's decision for the workers; `Ok` once it is durable. The
    /// allocation is read first, so that a mistyped id is an error here, not a dead letter.
    pub async fn decide(
        &self,
        broker: &puhuri_queue::Broker,
        id: &str,
        action: OperatorAction,
        operator: &str,
        comment: &str,
    ) -> Result<OperatorWork, ReviewError> {
        let decision =
            OperatorDecision::new(action, operator, comment).map_err(ReviewError::Refused)?;
        let fetched = self.fetch(id).await?;
        let hint = AllocationHint {
            resource_uuid: ResourceUuid::parse(&fetched.resource.uuid),
            order_uuid: fetched
                .order
                .as_ref()
                .and_then(|o| OrderUuid::parse(&o.uuid)),
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let work = OperatorWork {
            item: WorkItem {
                id: format!("review_{}", uuid::Uuid::new_v4().simple()),
                source: "review".into(),
                event_type: format!("operator.{}", action.name()),
                hint,
                received_at_ms: now_ms,
            },
            operator: decision,
        };
        crate::work::publish_operator(broker, &work).await?;
        tracing::info!(
            operator = %work.operator.name,
            action = action.name(),
            allocation = %work.item.hint,
            id = %work.item.id,
            "operator decision queued"
        );
        Ok(work)
    }

    async fn fetch(&self, id: &str) -> Result<Fetched, ReviewError> {
        let uuid = WaldurUuid::parse(id).ok_or_else(|| ReviewError::NotAnId(shorten(id)))?;
        let hint = AllocationHint {
            resource_uuid: ResourceUuid::parse(uuid.as_str()),
            order_uuid: None,
        };
        Ok(self.client.fetch_allocation(&hint).await?)
    }

    /// The allocation as a worker gathers it, with the totals granted already (read
    /// also when the policy does not), and the policy's explanation.
    async fn evaluate(
        &self,
        fetched: &Fetched,
    ) -> Result<(Held, Explanation, puhuri_policy::Allocation), ReviewError> {
        let policy = self.policy.current();
        let mut allocation = crate::facts::gather(
            &self.client,
            &self.customers,
            &self.abbreviations,
            &policy,
            fetched,
        )
        .await?;
        if !policy.needs_granted()
            && let Some(customer) = WaldurUuid::parse(&allocation.customer.uuid)
        {
            let totals = self.client.list_granted(&customer).await?;
            allocation.granted =
                crate::facts::granted(&totals, &allocation.project.uuid, &allocation.resource.uuid);
        }
        let now = time::OffsetDateTime::now_utc();
        let explanation = policy.explain(&allocation, now);
        let note = match &explanation.verdict.action {
            Action::Hold { note } => note.clone(),
            other => format!("the policy would {} it now", other.name()),
        };
        let created = if allocation.order.created.is_empty() {
            allocation.resource.created.clone()
        } else {
            allocation.order.created.clone()
        };
        let age_secs =
            time::OffsetDateTime::parse(&created, &time::format_description::well_known::Rfc3339)
                .map(|t| (now - t).whole_seconds().max(0))
                .unwrap_or(0);
        let requested_by = match (
            allocation.created_by.username.as_str(),
            allocation.created_by.full_name.as_str(),
        ) {
            ("", "") => String::new(),
            ("", name) | (name, "") => name.to_owned(),
            (user, name) => format!("{name} ({user})"),
        };
        let held = Held {
            id: allocation.resource.uuid.clone(),
            order_uuid: allocation.order.uuid.clone(),
            name: allocation.resource.name.clone(),
            offering: Named {
                uuid: allocation.offering.uuid.clone(),
                name: allocation.offering.name.clone(),
            },
            project: Named {
                uuid: allocation.project.uuid.clone(),
                name: allocation.project.name.clone(),
            },
            customer: Named {
                uuid: allocation.customer.uuid.clone(),
                name: allocation.customer.name.clone(),
            },
            end_date: allocation
                .resource
                .end_date
                .clone()
                .or_else(|| allocation.project.end_date.clone()),
            requested_by,
            limits: allocation.limits.clone(),
            granted: allocation.granted.clone(),
            rule: explanation.verdict.rule.clone(),
            note,
            created,
            age_secs,
        };
        Ok((held, explanation, allocation))
    }
}

/// Recomputes the review queue every `every` for the held gauges, until `stop`: one
/// listing of the pending allocations and one read of each per refresh, through the
/// client's `max_in_flight` calls like any other. Waits while the circuit to Puhuri Core
/// is open; a failure is counted each time and logged once per streak of failures, and
/// the next refresh tries again.
pub async fn refresh(
    review: Review,
    metrics: Arc<Metrics>,
    circuit: Arc<Circuit>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
        if !circuit.wait_closed(&stop).await {
            return;
        }
        let outcome = tokio::select! {
            outcome = review.held_now(&metrics) => outcome,
            () = stop.cancelled() => return,
        };
        match outcome {
            Ok(held) => {
                if failing {
                    tracing::info!(held = held.len(), "review queue refreshed again");
                }
                failing = false;
            }
            Err(error) => {
                metrics.review_refresh_failed();
                if !failing {
                    tracing::warn!(
                        error = %error,
                        "review queue refresh failed: the held gauges keep the last listing's numbers; retrying every refresh"
                    );
                }
                failing = true;
            }
        }
    }
}

/// An id from the command line or a URL, cut for messages.
fn shorten(text: &str) -> String {
    let cut: String = text.chars().take(64).filter(|c| !c.is_control()).collect();
    if cut.len() < text.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

/// `3d 4h`, `5h 10m`, `12m`, `40s`.
pub fn age_text(secs: i64) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m")
    } else {
        format!("{secs}s")
    }
}

/// `cpu_k_hours=1000, gpu_k_hours=5`.
pub fn amounts(values: &BTreeMap<String, f64>) -> String {
    if values.is_empty() {
        return "-".into();
    }
    values
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_people_say_them() {
        assert_eq!(age_text(40), "40s");
        assert_eq!(age_text(12 * 60 + 5), "12m");
        assert_eq!(age_text(5 * 3600 + 600), "5h 10m");
        assert_eq!(age_text(3 * 86_400 + 4 * 3600), "3d 4h");
    }

    #[test]
    fn filters_by_offering_name_or_uuid_and_by_rule() {
        let held = Held {
            id: "a".into(),
            order_uuid: String::new(),
            name: "n".into(),
            offering: Named {
                uuid: "0123456789abcdef0123456789abcdef".into(),
                name: "LUMI-C".into(),
            },
            project: Named::default(),
            customer: Named::default(),
            end_date: None,
            requested_by: String::new(),
            limits: BTreeMap::new(),
            granted: GrantedFacts::default(),
            rule: None,
            note: String::new(),
            created: String::new(),
            age_secs: 0,
        };
        let by = |offering: Option<&str>, rule: Option<&str>| Filter {
            offering: offering.map(str::to_owned),
            rule: rule.map(str::to_owned),
        };
        assert!(by(None, None).keeps(&held));
        assert!(by(Some("LUMI-C"), Some("default")).keeps(&held));
        assert!(by(Some("01234567-89ab-cdef-0123-456789abcdef"), None).keeps(&held));
        assert!(!by(Some("LUMI-G"), None).keeps(&held));
        assert!(!by(None, Some("big")).keeps(&held));
    }
}
