//! Project teams: who is a member of a project with which role, and the
//! `team` action of the resource views (`ProjectUserSerializer`).
//!
//! INVARIANT: a username appears at most once in a project's team; a user's
//! uuid is `stable_uuid("user", username)` everywhere (teams, hooks), so the
//! same person has the same uuid in every project.
//! INVARIANT: teams are listed ordered by username.

use serde_json::{Map, Value, json};

use super::SimError;
use super::state::{Member, Model, hex, stable_uuid, timestamp};

/// The uuid of the simulated user `username`.
pub(crate) fn user_uuid(username: &str) -> uuid::Uuid {
    stable_uuid("user", username)
}

impl Model {
    /// Adds `member` to the project's team; 409 when the username is already in it.
    pub(crate) fn add_member(&mut self, project: usize, member: Member) -> Result<(), SimError> {
        let p = &mut self.projects[project];
        if p.members.iter().any(|m| m.username == member.username) {
            return Err(SimError::Duplicate(format!(
                "member `{}` of project `{}`",
                member.username, p.name
            )));
        }
        p.members.push(member);
        Ok(())
    }

    /// Removes `username` from the project's team.
    pub(crate) fn remove_member(&mut self, project: usize, username: &str) -> Result<(), SimError> {
        let p = &mut self.projects[project];
        let Some(at) = p.members.iter().position(|m| m.username == username) else {
            return Err(SimError::UnknownMember {
                project: p.name.clone(),
                username: username.to_string(),
            });
        };
        p.members.remove(at);
        Ok(())
    }

    /// The project's members ordered by username.
    pub(crate) fn sorted_members(&self, project: usize) -> Vec<&Member> {
        let mut members: Vec<&Member> = self.projects[project].members.iter().collect();
        members.sort_by(|a, b| a.username.cmp(&b.username));
        members
    }

    /// The resource's project team as `GET .../{uuid}/team/` renders it.
    pub(crate) fn render_team(&self, resource: usize, base: &str) -> Value {
        let project = self.resources[resource].project;
        Value::Array(
            self.sorted_members(project)
                .into_iter()
                .map(|m| {
                    let mut map = Map::new();
                    map.insert(
                        "url".into(),
                        Value::String(format!("{base}/api/users/{}/", hex(user_uuid(&m.username)))),
                    );
                    map.extend(render_member(m));
                    Value::Object(map)
                })
                .collect(),
        )
    }
}

/// A member's fields (the `team` fields without `url`).
pub(crate) fn render_member(m: &Member) -> Map<String, Value> {
    let value = json!({
        "uuid": hex(user_uuid(&m.username)),
        "username": m.username,
        "full_name": m.full_name,
        "email": m.email,
        "role": m.role.as_str(),
        "expiration_time": m.expiration_time.map(timestamp),
        "offering_user_username": m.offering_user_username,
    });
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}
