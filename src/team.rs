//! Project teams: who may use an allocation. The worker publishes a `team.snapshot` event
//! after each approval; the team watcher (running with the reconciler) lists approved
//! allocations every `team.watch_secs` and publishes `team.changed` when members were
//! added, removed or changed role, so the provider's account systems can create and
//! remove accounts. The JSON form is `schemas/team-event.v1.schema.json`.
//!
//! INVARIANT: events are safe to apply more than once (two watcher replicas publish the
//! same change; a restart publishes snapshots again): a snapshot is the whole team, and
//! applying "added X" or "removed X" twice changes nothing. Each event has a fresh `id`;
//! content-derived ids would make a team that changes back and forth (A→B→A→B) repeat an
//! id and a deduplicating consumer drop a real change.
//! INVARIANT: a watcher that starts (or sees an allocation for the first time) publishes
//! a `team.snapshot` for it: changes made while no watcher ran are never lost, because a
//! snapshot is the whole truth.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures_util::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::TeamConfig;
use crate::metrics::Metrics;
use puhuri_client::{PuhuriClient, PuhuriError};
use puhuri_queue::Broker;

/// The event's schema version.
pub const TEAM_EVENT_VERSION: u32 = 1;

/// Team calls in flight at once during a watch cycle.
const WATCH_CONCURRENCY: usize = 8;

pub use puhuri_client::{ResourceSummary, TeamMember};

/// A member whose role or details changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberChange {
    pub before: TeamMember,
    pub after: TeamMember,
}

/// `team.snapshot` or `team.changed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TeamEvent {
    pub v: u32,
    #[serde(rename = "type")]
    pub event_type: &'static str,
    /// Unique per event.
    pub id: String,
    /// When it was observed (RFC 3339, UTC).
    pub time: String,
    pub allocation: ResourceSummary,
    /// Every member now, by username.
    pub members: Vec<TeamMember>,
    /// Only in `team.changed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub added: Option<Vec<TeamMember>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed: Option<Vec<TeamMember>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<Vec<MemberChange>>,
}

fn sorted(mut members: Vec<TeamMember>) -> Vec<TeamMember> {
    members.sort_by(|a, b| a.username.cmp(&b.username));
    members
}

fn fresh_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl TeamEvent {
    /// The whole team of an allocation.
    pub fn snapshot(allocation: ResourceSummary, members: Vec<TeamMember>) -> TeamEvent {
        let members = sorted(members);
        TeamEvent {
            v: TEAM_EVENT_VERSION,
            event_type: "team.snapshot",
            id: fresh_id(),
            time: now_rfc3339(),
            allocation,
            members,
            added: None,
            removed: None,
            changed: None,
        }
    }

    /// What changed between two observations; `None` when nothing did.
    pub fn change(
        allocation: ResourceSummary,
        before: &[TeamMember],
        after: Vec<TeamMember>,
    ) -> Option<TeamEvent> {
        let after = sorted(after);
        let old: BTreeMap<&str, &TeamMember> =
            before.iter().map(|m| (m.username.as_str(), m)).collect();
        let new: BTreeMap<&str, &TeamMember> =
            after.iter().map(|m| (m.username.as_str(), m)).collect();
        let added: Vec<TeamMember> = after
            .iter()
            .filter(|m| !old.contains_key(m.username.as_str()))
            .cloned()
            .collect();
        let removed: Vec<TeamMember> = sorted(
            before
                .iter()
                .filter(|m| !new.contains_key(m.username.as_str()))
                .cloned()
                .collect(),
        );
        let changed: Vec<MemberChange> = after
            .iter()
            .filter_map(|m| {
                old.get(m.username.as_str())
                    .filter(|o| **o != m)
                    .map(|o| MemberChange {
                        before: (*o).clone(),
                        after: m.clone(),
                    })
            })
            .collect();
        if added.is_empty() && removed.is_empty() && changed.is_empty() {
            return None;
        }
        Some(TeamEvent {
            v: TEAM_EVENT_VERSION,
            event_type: "team.changed",
            id: fresh_id(),
            time: now_rfc3339(),
            allocation,
            members: after,
            added: Some(added),
            removed: Some(removed),
            changed: Some(changed),
        })
    }

    /// The routing key on the events exchange (the event's type).
    pub fn routing_key(&self) -> &'static str {
        self.event_type
    }
}

/// Publishes a team event; a failure is logged, never fatal (the next watch cycle or
/// snapshot carries the truth).
pub async fn publish(broker: &Broker, event: &TeamEvent) -> bool {
    let body = match serde_json::to_vec(event) {
        Ok(body) => body,
        Err(error) => {
            tracing::warn!(error = %error, "team event not serializable");
            return false;
        }
    };
    match broker
        .publish_event(event.routing_key(), &body, &event.id)
        .await
    {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(error = %error, "team event not published");
            false
        }
    }
}

/// What one watch cycle did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchReport {
    /// Approved allocations looked at.
    pub allocations: usize,
    /// Puhuri Core calls made (list pages and team calls).
    pub calls: usize,
    pub snapshots: usize,
    pub changes: usize,
    /// Allocations whose team could not be read this cycle.
    pub failed: usize,
}

/// The team watcher.
pub struct TeamWatcher {
    client: PuhuriClient,
    broker: Broker,
    offerings: Vec<String>,
    config: TeamConfig,
    known: tokio::sync::Mutex<HashMap<String, Vec<TeamMember>>>,
    metrics: Arc<Metrics>,
}

impl TeamWatcher {
    pub fn new(
        client: PuhuriClient,
        broker: Broker,
        offerings: Vec<String>,
        config: TeamConfig,
        metrics: Arc<Metrics>,
    ) -> TeamWatcher {
        TeamWatcher {
            client,
            broker,
            offerings,
            config,
            known: tokio::sync::Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// One pass: every approved allocation's team against the last one seen.
    pub async fn cycle(&self) -> Result<WatchReport, PuhuriError> {
        let mut report = WatchReport::default();
        let mut allocations = Vec::new();
        if self.offerings.is_empty() {
            let (found, calls) = self.client.list_approved(None).await?;
            allocations.extend(found);
            report.calls += calls;
        } else {
            for offering in &self.offerings {
                let (found, calls) = self.client.list_approved(Some(offering)).await?;
                allocations.extend(found);
                report.calls += calls;
            }
        }
        report.allocations = allocations.len();
        let teams: Vec<(ResourceSummary, Result<Vec<TeamMember>, PuhuriError>)> =
            futures_util::stream::iter(allocations)
                .map(|allocation| async move {
                    let team = self.client.team(&allocation.resource_uuid).await;
                    (allocation, team)
                })
                .buffer_unordered(WATCH_CONCURRENCY)
                .collect()
                .await;
        let mut known = self.known.lock().await;
        // Allocations no longer approved (terminated, or gone from view) are forgotten; one
        // that returns is announced with a snapshot again.
        let listed: std::collections::HashSet<String> =
            teams.iter().map(|(a, _)| a.resource_uuid.clone()).collect();
        known.retain(|uuid, _| listed.contains(uuid));
        for (allocation, team) in teams {
            report.calls += 1;
            let members = match team {
                Ok(members) => members,
                Err(error) => {
                    tracing::warn!(resource = %allocation.resource_uuid, error = %error, "team not readable this cycle");
                    report.failed += 1;
                    continue;
                }
            };
            let key = allocation.resource_uuid.clone();
            let event = match known.get(&key) {
                None => Some(TeamEvent::snapshot(allocation, members.clone())),
                Some(before) => TeamEvent::change(allocation, before, members.clone()),
            };
            let Some(event) = event else { continue };
            if publish(&self.broker, &event).await {
                if event.event_type == "team.snapshot" {
                    report.snapshots += 1;
                } else {
                    report.changes += 1;
                }
                self.metrics.team_event(event.event_type);
                known.insert(key, sorted(members));
            }
        }
        Ok(report)
    }

    /// Watches every `watch_secs` until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let Some(period) = self.config.watch else {
            return;
        };
        loop {
            let span = tracing::info_span!("team_watch");
            match self.cycle().instrument(span).await {
                Ok(report) => tracing::info!(
                    allocations = report.allocations,
                    calls = report.calls,
                    snapshots = report.snapshots,
                    changes = report.changes,
                    failed = report.failed,
                    "team watch cycle"
                ),
                Err(error) => tracing::warn!(error = %error, "team watch cycle failed"),
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(period) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(username: &str, role: &str) -> TeamMember {
        TeamMember {
            uuid: format!("{username}-uuid"),
            username: username.into(),
            full_name: username.to_uppercase(),
            email: format!("{username}@example.org"),
            role: Some(role.into()),
            expiration_time: None,
            offering_user_username: None,
        }
    }

    fn allocation() -> ResourceSummary {
        ResourceSummary {
            resource_uuid: "r1".into(),
            backend_id: Some("b1".into()),
            project_uuid: None,
            project_name: None,
            offering_uuid: None,
        }
    }

    #[test]
    fn a_change_lists_added_removed_and_changed_members() {
        let before = vec![member("bob", "member"), member("alice", "manager")];
        let after = vec![
            member("alice", "manager"),
            member("bob", "admin"),
            member("carol", "member"),
        ];
        let event = TeamEvent::change(allocation(), &before, after.clone());
        let event = event.unwrap_or_else(|| panic!("a change was expected"));
        assert_eq!(event.event_type, "team.changed");
        let names = |v: &Option<Vec<TeamMember>>| {
            v.iter()
                .flatten()
                .map(|m| m.username.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&event.added), ["carol"]);
        assert!(names(&event.removed).is_empty());
        let changed = event.changed.clone().unwrap_or_default();
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].after.role.as_deref(), Some("admin"));
        let users: Vec<&str> = event.members.iter().map(|m| m.username.as_str()).collect();
        assert_eq!(users, ["alice", "bob", "carol"]);
        // Every event has its own id, even for the same observation (A→B→A→B).
        let again = TeamEvent::change(allocation(), &before, after.clone());
        assert_ne!(again.map(|e| e.id), Some(event.id.clone()));
        let removal = TeamEvent::change(allocation(), &after, vec![member("alice", "manager")]);
        assert_eq!(
            removal.as_ref().map(|e| names(&e.removed)),
            Some(vec!["bob".to_owned(), "carol".to_owned()])
        );
        assert_ne!(removal.map(|e| e.id), Some(event.id));
    }

    #[test]
    fn the_schema_documents_every_field_of_a_change() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../schemas/team-event.v1.schema.json"))
                .unwrap_or_default();
        let before = vec![member("bob", "member")];
        let event = TeamEvent::change(allocation(), &before, vec![member("bob", "admin")])
            .map(|e| serde_json::to_value(e).unwrap_or_default())
            .unwrap_or_default();
        let keys = |v: &serde_json::Value| -> Vec<String> {
            let mut k: Vec<String> = v
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            k.sort();
            k
        };
        assert_eq!(keys(&event), keys(&schema["properties"]));
        assert_eq!(
            keys(&event["allocation"]),
            keys(&schema["properties"]["allocation"]["properties"])
        );
        assert_eq!(
            keys(&event["members"][0]),
            keys(&schema["$defs"]["member"]["properties"])
        );
    }

    #[test]
    fn an_unchanged_team_gives_no_event_in_any_order() {
        let before = vec![member("bob", "member"), member("alice", "manager")];
        let after = vec![member("alice", "manager"), member("bob", "member")];
        assert_eq!(TeamEvent::change(allocation(), &before, after), None);
        let a = TeamEvent::snapshot(allocation(), before.clone());
        let b = TeamEvent::snapshot(allocation(), before.into_iter().rev().collect());
        assert_eq!(a.members, b.members);
        assert_ne!(a.id, b.id);
        assert_eq!(a.routing_key(), "team.snapshot");
    }
}
