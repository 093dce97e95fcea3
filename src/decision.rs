//! The decision event: what the worker publishes on the topic exchange `{prefix}.events`
//! for every allocation it decides — the audit trail, and what a provider's other systems
//! subscribe to. Its JSON form is documented in `schemas/decision-event.v1.schema.json`.
//!
//! Routing keys: `allocation.approved`, `allocation.rejected`, `allocation.erred`,
//! `allocation.held` — by what became of the allocation (`written_as`), so an `erred`
//! decision written as a reject is `allocation.rejected` with `action: "erred"`; in shadow mode the same under `shadow.` (`shadow.allocation.approved`),
//! so a subscriber of `allocation.*` never acts on a decision that was not written.
//!
//! INVARIANT: an event is published only after every write of the decision succeeded
//! (`written: true`), or in shadow mode, where nothing is written (`written: false`).
//! INVARIANT: delivery is at least once with a stable id: the id is a function of the
//! allocation and what was decided (see [`event_id`]), so the first attempt, a retry
//! that finds the decision in Puhuri Core, and another worker all publish the same id,
//! and consumers de-duplicate on it.

use serde::Serialize;
use sha2::{Digest, Sha256};

use puhuri_policy::{AllocationIds, RuleError, Verdict};

/// The event's schema version.
pub const DECISION_EVENT_VERSION: u32 = 1;

/// One decision, as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecisionEvent {
    /// Schema version of this event ([`DECISION_EVENT_VERSION`]).
    pub v: u32,
    /// `allocation.approved`, `allocation.rejected`, `allocation.erred` or `allocation.held`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Stable per decision ([`event_id`]): every publish of one decision carries it.
    pub id: String,
    /// When this event was published (RFC 3339, UTC).
    pub time: String,
    /// The notification that led to the decision.
    pub notification_id: String,
    pub allocation: AllocationIds,
    /// What the policy asked: `approve`, `reject`, `erred` or `hold`.
    pub action: String,
    /// What the decision is written as in Puhuri Core (in shadow mode: would be):
    /// `approved`, `rejected` or `erred`; null for `hold`. An `erred` differs from
    /// `action` where the server allows no erred for the offering type (current API,
    /// any type but `Marketplace.Slurm`): the request is `rejected` with the message.
    pub written_as: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The rule that matched; null when the default applied.
    pub rule: Option<String>,
    pub reasons: Vec<String>,
    /// Rules skipped because their condition failed at run time.
    pub rule_errors: Vec<RuleError>,
    /// Digest of the policy file that decided (`sha256:...`).
    pub policy_version: String,
    /// `enforce` (written to Puhuri Core) or `shadow` (recorded only).
    pub mode: &'static str,
    /// Whether the decision was written to Puhuri Core.
    pub written: bool,
    /// Who decided, when a person did (an operator, from the review queue); absent when
    /// the policy's rules decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<DecidedBy>,
}

/// Who decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecidedBy {
    /// `operator`.
    pub kind: &'static str,
    pub name: String,
    /// The operator's comment (for a rejection: the reason the requester sees).
    pub comment: String,
}

impl DecidedBy {
    pub fn operator(name: &str, comment: &str) -> DecidedBy {
        DecidedBy {
            kind: "operator",
            name: name.to_owned(),
            comment: comment.to_owned(),
        }
    }
}

/// What became of the allocation, as the event's `type` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided {
    Approved,
    Rejected,
    Erred,
    Held,
}

impl Decided {
    pub fn name(self) -> &'static str {
        match self {
            Decided::Approved => "approved",
            Decided::Rejected => "rejected",
            Decided::Erred => "erred",
            Decided::Held => "held",
        }
    }
}

impl DecisionEvent {
    /// Builds the event for a verdict that was written (`shadow == false`) or only recorded.
    pub fn new(notification_id: &str, decided: Decided, verdict: &Verdict, shadow: bool) -> Self {
        use puhuri_policy::Action;
        let (backend_id, reason, message, note) = match &verdict.action {
            Action::Approve { backend_id, .. } => (Some(backend_id.clone()), None, None, None),
            Action::Reject { reason } => (None, Some(reason.clone()), None, None),
            // Written as a reject: no backend_id was set, the message is the reason.
            Action::Erred { message, .. } if decided == Decided::Rejected => {
                (None, Some(message.clone()), Some(message.clone()), None)
            }
            Action::Erred {
                backend_id,
                message,
            } => (Some(backend_id.clone()), None, Some(message.clone()), None),
            Action::Hold { note } => (None, None, None, Some(note.clone())),
        };
        DecisionEvent {
            v: DECISION_EVENT_VERSION,
            event_type: format!("allocation.{}", decided.name()),
            id: event_id(&verdict.allocation.resource_uuid, decided, verdict, shadow),
            time: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            notification_id: notification_id.to_owned(),
            allocation: verdict.allocation.clone(),
            action: verdict.action.name().to_owned(),
            written_as: match decided {
                Decided::Held => None,
                other => Some(other.name()),
            },
            backend_id,
            reason,
            message,
            note,
            rule: verdict.rule.clone(),
            reasons: verdict.reasons.clone(),
            rule_errors: verdict.errors.clone(),
            policy_version: verdict.policy_version.to_string(),
            mode: if shadow { "shadow" } else { "enforce" },
            written: !shadow,
            decided_by: None,
        }
    }

    /// The routing key on the events exchange.
    pub fn routing_key(&self) -> String {
        if self.written {
            self.event_type.clone()
        } else {
            format!("shadow.{}", self.event_type)
        }
    }
}

/// The event's id: the first 128 bits of a SHA-256, in hex, over the allocation's
/// resource uuid, what was decided and what was written — `backend_id` for an
/// approval, the comment for a rejection, `backend_id` and message for erred — all of
/// which Puhuri Core keeps, so a retry that finds the decision there derives the same
/// id. A hold writes nothing: its id adds the policy version, so one policy's hold of
/// one allocation is one event however often it is re-evaluated. Shadow decisions add
/// the mode and the policy version.
pub fn event_id(resource_uuid: &str, decided: Decided, verdict: &Verdict, shadow: bool) -> String {
    use puhuri_policy::Action;
    let version = verdict.policy_version.to_string();
    let mut parts: Vec<&str> = vec!["decision.v1", resource_uuid, decided.name()];
    match &verdict.action {
        Action::Approve { backend_id, .. } => parts.push(backend_id),
        Action::Reject { reason } => parts.push(reason),
        Action::Erred {
            backend_id,
            message,
        } => parts.extend([backend_id.as_str(), message.as_str()]),
        Action::Hold { note } => parts.extend([version.as_str(), note.as_str()]),
    }
    if shadow {
        parts.extend(["shadow", version.as_str()]);
    }
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use puhuri_policy::{Allocation, Policy};

    const POLICY: &str = r#"
[[rule]]
name = "small"
when = 'limits.cpu_k_hours <= 1000.0'
action = "approve"
backend_id = "p_{resource.uuid}"

[default]
action = "hold"
note = "for a human"
"#;

    fn verdict(policy: &str, cpu: f64) -> Verdict {
        let policy = Policy::parse(policy).expect("policy");
        let mut allocation = Allocation::default();
        allocation.resource.uuid = "0123456789abcdef0123456789abcdef".into();
        allocation.limits.insert("cpu_k_hours".into(), cpu);
        policy.evaluate(&allocation, time::OffsetDateTime::now_utc())
    }

    #[test]
    fn one_decision_has_one_id_whoever_publishes_it() {
        let approve = verdict(POLICY, 10.0);
        let first = DecisionEvent::new("msg_a", Decided::Approved, &approve, false);
        let retry = DecisionEvent::new("msg_b", Decided::Approved, &verdict(POLICY, 10.0), false);
        assert_eq!(first.id, retry.id);
        assert_eq!(first.id.len(), 32);
        assert!(first.id.chars().all(|c| c.is_ascii_hexdigit()));
        // An approval's id follows what was written, not the policy file: a reload
        // between the write and the retry keeps it.
        let reloaded = format!("{POLICY}\n# edited\n");
        let after_reload = verdict(&reloaded, 10.0);
        assert_ne!(after_reload.policy_version, approve.policy_version);
        assert_eq!(
            DecisionEvent::new("msg_c", Decided::Approved, &after_reload, false).id,
            first.id
        );
        // Shadow and enforce events of one decision differ.
        assert_ne!(
            DecisionEvent::new("msg_a", Decided::Approved, &approve, true).id,
            first.id
        );
    }

    #[test]
    fn a_hold_has_one_id_per_policy_version() {
        let held = verdict(POLICY, 5000.0);
        let again = verdict(POLICY, 5000.0);
        assert_eq!(
            DecisionEvent::new("a", Decided::Held, &held, false).id,
            DecisionEvent::new("b", Decided::Held, &again, false).id
        );
        let reloaded = verdict(&format!("{POLICY}\n# edited\n"), 5000.0);
        assert_ne!(
            DecisionEvent::new("a", Decided::Held, &held, false).id,
            DecisionEvent::new("a", Decided::Held, &reloaded, false).id
        );
    }
}
