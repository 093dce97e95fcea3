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

use serde::Serialize;

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
    /// A fresh id per event.
    pub id: String,
    /// When the decision was made (RFC 3339, UTC).
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
            id: uuid::Uuid::new_v4().simple().to_string(),
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
