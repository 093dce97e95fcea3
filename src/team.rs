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
    // Sized for a team of a few members: one allocation instead of a series of regrowths.
    let mut body = Vec::with_capacity(512 + 256 * event.members.len());
    match serde_json::to_writer(&mut body, event) {
        Ok(()) => {}
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

/// An allocation's key in [`TeamMemory`]: its uuid as a number when it is Puhuri Core's
/// 32 lowercase hex digits, as text otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Uuid(u128),
    Text(Box<str>),
}

impl Key {
    fn of(uuid: &str) -> Key {
        match compact_uuid(uuid) {
            Some(number) => Key::Uuid(number),
            None => Key::Text(uuid.into()),
        }
    }

    fn extra_bytes(&self) -> usize {
        match self {
            Key::Uuid(_) => 0,
            Key::Text(text) => text.len() + ALLOCATION_OVERHEAD,
        }
    }
}

/// A uuid written as 32 lowercase hex digits, as a number; anything else is kept as text
/// so that it reads back exactly as it came.
fn compact_uuid(text: &str) -> Option<u128> {
    if text.len() == 32
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        u128::from_str_radix(text, 16).ok()
    } else {
        None
    }
}

/// What the watcher keeps of one allocation's team.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kept {
    /// The whole team, encoded by [`encode`]: a change can list who left and what changed.
    Team(Box<[u8]>),
    /// Only a 64-bit digest of the encoded team (evicted to stay within the budget): an
    /// unchanged team is recognised, a changed one is announced with a snapshot.
    Digest(u64),
}

/// Fixed cost of one allocation in [`TeamMemory`] (its map entry, its place in the
/// eviction order, the tables' spare room), in bytes.
pub const ENTRY_BYTES: usize = 128;
/// What the allocator adds to each heap block, in bytes.
const ALLOCATION_OVERHEAD: usize = 16;

#[derive(Debug)]
struct Entry {
    /// When the team last changed (a sequence number: larger is later).
    changed: u64,
    kept: Kept,
}

/// What the team watcher last saw of each approved allocation's team, within a byte
/// budget (`team.watch_memory_kib`).
///
/// Teams are kept compactly: per member, the uuid as a 128-bit number, the role as one
/// byte, the other fields as length-prefixed text. When the budget is exceeded, the team
/// that changed least recently is reduced to a digest; when only digests are left, the
/// oldest digest is forgotten. On its next pass an allocation kept as a digest gives no
/// event when its team is unchanged and a `team.snapshot` (never a `team.changed`) when
/// it changed; a forgotten one gives a `team.snapshot`, as on first sight.
#[derive(Debug)]
pub struct TeamMemory {
    budget: usize,
    bytes: usize,
    next: u64,
    entries: HashMap<Key, Entry>,
    /// Allocations kept as whole teams, by when they last changed.
    teams: BTreeMap<u64, Key>,
    /// Allocations kept as digests, by when they last changed.
    digests: BTreeMap<u64, Key>,
}

/// How an observed team compares with what [`TeamMemory`] kept.
#[derive(Debug, PartialEq, Eq)]
pub enum Compared {
    /// Never seen (or forgotten): announce it with a snapshot.
    New,
    /// The same as last time.
    Same,
    /// Changed, and this was the team before.
    Changed(Vec<TeamMember>),
    /// Changed, but only a digest was kept: announce it with a snapshot.
    ChangedFromDigest,
}

impl TeamMemory {
    pub fn new(budget: usize) -> TeamMemory {
        TeamMemory {
            budget,
            bytes: 0,
            next: 0,
            entries: HashMap::new(),
            teams: BTreeMap::new(),
            digests: BTreeMap::new(),
        }
    }

    /// Bytes in use by the count of [`ENTRY_BYTES`] and the encoded teams.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Allocations remembered (whole teams and digests).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Allocations kept as whole teams.
    pub fn whole_teams(&self) -> usize {
        self.teams.len()
    }

    fn cost(key: &Key, kept: &Kept) -> usize {
        ENTRY_BYTES
            + key.extra_bytes()
            + match kept {
                Kept::Team(bytes) => bytes.len() + ALLOCATION_OVERHEAD,
                Kept::Digest(_) => 0,
            }
    }

    /// Compares `encoded` (from [`encode`]) with what was kept for `resource_uuid`.
    pub fn compare(&self, resource_uuid: &str, encoded: &[u8]) -> Compared {
        match self.entries.get(&Key::of(resource_uuid)).map(|e| &e.kept) {
            None => Compared::New,
            Some(Kept::Team(kept)) if **kept == *encoded => Compared::Same,
            Some(Kept::Team(kept)) => match decode(kept) {
                Some(before) => Compared::Changed(before),
                None => Compared::ChangedFromDigest,
            },
            Some(Kept::Digest(digest)) if *digest == digest_of(encoded) => Compared::Same,
            Some(Kept::Digest(_)) => Compared::ChangedFromDigest,
        }
    }

    /// Keeps `encoded` as the team of `resource_uuid`, changed now; evicts to stay
    /// within the budget.
    pub fn remember(&mut self, resource_uuid: &str, encoded: Vec<u8>) {
        let key = Key::of(resource_uuid);
        self.forget(&key);
        let changed = self.next;
        self.next += 1;
        let kept = Kept::Team(encoded.into_boxed_slice());
        self.bytes += Self::cost(&key, &kept);
        self.teams.insert(changed, key.clone());
        self.entries.insert(key, Entry { changed, kept });
        self.make_room();
    }

    /// Forgets every allocation not in `listed` (no longer approved, or gone from view).
    pub fn retain_listed<'a>(&mut self, listed: impl IntoIterator<Item = &'a str>) {
        let listed: std::collections::HashSet<Key> = listed.into_iter().map(Key::of).collect();
        let gone: Vec<Key> = self
            .entries
            .keys()
            .filter(|key| !listed.contains(*key))
            .cloned()
            .collect();
        for key in gone {
            self.forget(&key);
        }
    }

    fn forget(&mut self, key: &Key) {
        if let Some(entry) = self.entries.remove(key) {
            self.bytes -= Self::cost(key, &entry.kept);
            self.teams.remove(&entry.changed);
            self.digests.remove(&entry.changed);
        }
    }

    fn make_room(&mut self) {
        while self.bytes > self.budget {
            if let Some((changed, key)) = self.teams.pop_first() {
                if let Some(entry) = self.entries.get_mut(&key) {
                    let digest = match &entry.kept {
                        Kept::Team(bytes) => digest_of(bytes),
                        Kept::Digest(digest) => *digest,
                    };
                    let before = Self::cost(&key, &entry.kept);
                    entry.kept = Kept::Digest(digest);
                    self.bytes = self.bytes - before + Self::cost(&key, &entry.kept);
                }
                self.digests.insert(changed, key);
            } else if let Some((_, key)) = self.digests.pop_first() {
                if let Some(entry) = self.entries.remove(&key) {
                    self.bytes -= Self::cost(&key, &entry.kept);
                }
            } else {
                break;
            }
        }
    }
}

fn digest_of(encoded: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    encoded.hash(&mut hasher);
    hasher.finish()
}

const ROLE_NONE: u8 = 0;
const ROLE_OTHER: u8 = 4;
const ROLES: [&str; 3] = ["admin", "manager", "member"];
const UUID_AS_TEXT: u8 = 1 << 3;
const HAS_EXPIRATION: u8 = 1 << 4;
const HAS_OFFERING_USERNAME: u8 = 1 << 5;

fn put_text(out: &mut Vec<u8>, text: &str) {
    let mut len = text.len();
    loop {
        let low = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(low);
            break;
        }
        out.push(low | 0x80);
    }
    out.extend_from_slice(text.as_bytes());
}

/// A team (sorted by username) in the compact form [`TeamMemory`] keeps: equal teams
/// encode to equal bytes.
pub fn encode(members: &[TeamMember]) -> Vec<u8> {
    let mut out = Vec::with_capacity(members.len() * 96);
    for member in members {
        let uuid = compact_uuid(&member.uuid);
        let role = match member.role.as_deref() {
            None => ROLE_NONE,
            Some(role) => ROLES
                .iter()
                .position(|known| *known == role)
                .map_or(ROLE_OTHER, |i| i as u8 + 1),
        };
        let mut tag = role;
        if uuid.is_none() {
            tag |= UUID_AS_TEXT;
        }
        if member.expiration_time.is_some() {
            tag |= HAS_EXPIRATION;
        }
        if member.offering_user_username.is_some() {
            tag |= HAS_OFFERING_USERNAME;
        }
        out.push(tag);
        match uuid {
            Some(number) => out.extend_from_slice(&number.to_le_bytes()),
            None => put_text(&mut out, &member.uuid),
        }
        put_text(&mut out, &member.username);
        put_text(&mut out, &member.full_name);
        put_text(&mut out, &member.email);
        if let (ROLE_OTHER, Some(role)) = (role, member.role.as_deref()) {
            put_text(&mut out, role);
        }
        if let Some(expiration) = &member.expiration_time {
            put_text(&mut out, expiration);
        }
        if let Some(name) = &member.offering_user_username {
            put_text(&mut out, name);
        }
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }

    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn text(&mut self) -> Option<String> {
        let mut len = 0usize;
        let mut shift = 0u32;
        loop {
            let byte = self.byte()?;
            len |= usize::from(byte & 0x7f).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        String::from_utf8(self.bytes(len)?.to_vec()).ok()
    }
}

/// The team [`encode`] wrote; `None` if `bytes` is not such a team.
pub fn decode(bytes: &[u8]) -> Option<Vec<TeamMember>> {
    let mut reader = Reader(bytes);
    let mut members = Vec::new();
    while let Some(tag) = reader.byte() {
        let uuid = if tag & UUID_AS_TEXT != 0 {
            reader.text()?
        } else {
            let number: [u8; 16] = reader.bytes(16)?.try_into().ok()?;
            format!("{:032x}", u128::from_le_bytes(number))
        };
        let username = reader.text()?;
        let full_name = reader.text()?;
        let email = reader.text()?;
        let role = match tag & 0x7 {
            ROLE_NONE => None,
            ROLE_OTHER => Some(reader.text()?),
            known => Some((*ROLES.get(usize::from(known) - 1)?).to_owned()),
        };
        let expiration_time = if tag & HAS_EXPIRATION != 0 {
            Some(reader.text()?)
        } else {
            None
        };
        let offering_user_username = if tag & HAS_OFFERING_USERNAME != 0 {
            Some(reader.text()?)
        } else {
            None
        };
        members.push(TeamMember {
            uuid,
            username,
            full_name,
            email,
            role,
            expiration_time,
            offering_user_username,
        });
    }
    Some(members)
}

/// The team watcher.
pub struct TeamWatcher {
    client: PuhuriClient,
    broker: Broker,
    offerings: Vec<String>,
    known: tokio::sync::Mutex<TeamMemory>,
    config: TeamConfig,
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
            known: tokio::sync::Mutex::new(TeamMemory::new(config.watch_memory_bytes)),
            config,
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
        let mut known = self.known.lock().await;
        // Allocations no longer approved (terminated, or gone from view) are forgotten; one
        // that returns is announced with a snapshot again.
        known.retain_listed(allocations.iter().map(|a| a.resource_uuid.as_str()));
        let mut teams = futures_util::stream::iter(allocations)
            .map(|allocation| async move {
                let team = self.client.team(&allocation.resource_uuid).await;
                (allocation, team)
            })
            .buffer_unordered(WATCH_CONCURRENCY);
        while let Some((allocation, team)) = teams.next().await {
            report.calls += 1;
            let members = match team {
                Ok(members) => sorted(members),
                Err(error) => {
                    tracing::warn!(resource = %allocation.resource_uuid, error = %error, "team not readable this cycle");
                    report.failed += 1;
                    continue;
                }
            };
            let encoded = encode(&members);
            let key = allocation.resource_uuid.clone();
            let event = match known.compare(&key, &encoded) {
                Compared::Same => None,
                Compared::New | Compared::ChangedFromDigest => {
                    Some(TeamEvent::snapshot(allocation, members))
                }
                Compared::Changed(before) => TeamEvent::change(allocation, &before, members),
            };
            let Some(event) = event else { continue };
            if publish(&self.broker, &event).await {
                if event.event_type == "team.snapshot" {
                    report.snapshots += 1;
                } else {
                    report.changes += 1;
                }
                self.metrics.team_event(event.event_type);
                known.remember(&key, encoded);
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

    fn team(n: usize, role: &str) -> Vec<TeamMember> {
        sorted(
            (0..n)
                .map(|i| TeamMember {
                    uuid: format!("{:032x}", 0xabc0_0000_u128 + i as u128),
                    ..member(&format!("user{i:03}"), role)
                })
                .collect(),
        )
    }

    fn uuid(i: usize) -> String {
        format!("{:032x}", 0x5eed_0000_u128 + i as u128)
    }

    #[test]
    fn a_kept_team_reads_back_exactly() {
        let mut members = team(3, "manager");
        members[0].role = None;
        members[1].role = Some("PROJECT.ADMIN".into());
        members[1].expiration_time = Some("2027-01-01T00:00:00Z".into());
        members[2].offering_user_username = Some("u".repeat(300));
        members[2].uuid = "not-a-uuid-ABC".into();
        members[2].full_name = "Zoë Ångström".into();
        let encoded = encode(&members);
        assert_eq!(decode(&encoded), Some(members.clone()));
        // Compact: three members of a typical team take well under 100 bytes each here.
        assert!(encode(&team(3, "member")).len() < 3 * 80);
        assert_eq!(decode(&encoded[..encoded.len() - 1]), None);
        assert_eq!(decode(&[]), Some(Vec::new()));
    }

    #[test]
    fn the_memory_stays_within_its_budget_evicting_the_least_recently_changed() {
        let unchanged = encode(&team(3, "member"));
        let changed = encode(&team(3, "admin"));
        let one = ENTRY_BYTES + ALLOCATION_OVERHEAD + unchanged.len();
        let budget = 10 * one;
        let mut memory = TeamMemory::new(budget);
        for i in 0..20 {
            memory.remember(&uuid(i), unchanged.clone());
            assert!(memory.bytes() <= budget, "{} > {budget}", memory.bytes());
        }
        // Whole teams for the most recently changed, digests for the rest: all remembered.
        assert!(memory.whole_teams() >= 1 && memory.whole_teams() < 10);
        assert_eq!(memory.len(), 20);
        let kept = |memory: &TeamMemory, i: usize| {
            memory
                .entries
                .get(&Key::of(&uuid(i)))
                .map(|e| e.kept.clone())
        };
        assert!(matches!(kept(&memory, 19), Some(Kept::Team(_))));
        assert_eq!(kept(&memory, 0), Some(Kept::Digest(digest_of(&unchanged))));
        assert!(matches!(
            memory.compare(&uuid(19), &changed),
            Compared::Changed(before) if before == team(3, "member")
        ));
        assert_eq!(memory.compare(&uuid(19), &unchanged), Compared::Same);
        // A team kept as a digest: unchanged gives no event, changed a snapshot, never a
        // change.
        assert_eq!(memory.compare(&uuid(0), &unchanged), Compared::Same);
        assert_eq!(
            memory.compare(&uuid(0), &changed),
            Compared::ChangedFromDigest
        );
        // A change makes it the most recently changed: it is kept whole again.
        memory.remember(&uuid(0), changed.clone());
        assert!(matches!(kept(&memory, 0), Some(Kept::Team(_))));
        assert!(matches!(
            memory.compare(&uuid(0), &unchanged),
            Compared::Changed(_)
        ));
        // Past what digests can hold, the least recently changed are forgotten: new again.
        for i in 20..100 {
            memory.remember(&uuid(i), unchanged.clone());
            assert!(memory.bytes() <= budget, "{} > {budget}", memory.bytes());
        }
        assert!(memory.len() < 100 && memory.len() >= budget / one);
        assert_eq!(memory.compare(&uuid(1), &unchanged), Compared::New);
        assert_eq!(memory.compare(&uuid(99), &unchanged), Compared::Same);
        // Forgetting what is no longer listed gives its bytes back.
        memory.retain_listed([uuid(99).as_str(), "not-listed-before"]);
        assert_eq!(memory.len(), 1);
        assert!(memory.bytes() <= one);
        memory.retain_listed([]);
        assert_eq!((memory.len(), memory.bytes()), (0, 0));
    }

    #[test]
    fn a_team_larger_than_the_budget_is_kept_as_a_digest_or_not_at_all() {
        let big = encode(&team(200, "member"));
        let mut memory = TeamMemory::new(ENTRY_BYTES + 8);
        memory.remember(&uuid(1), big.clone());
        assert!(memory.bytes() <= ENTRY_BYTES + 8);
        assert_eq!(memory.whole_teams(), 0);
        assert_eq!(memory.compare(&uuid(1), &big), Compared::Same);
        let mut none = TeamMemory::new(0);
        none.remember("text-key", big.clone());
        assert_eq!((none.len(), none.bytes()), (0, 0));
        assert_eq!(none.compare("text-key", &big), Compared::New);
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
