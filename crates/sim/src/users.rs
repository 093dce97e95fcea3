//! `GET /api/users/me/`: the authenticated user (`UserViewSet.me`), with the
//! `permissions` a provider's integration user holds: `CUSTOMER.OWNER` on every
//! service-provider organisation. Other user routes are not simulated.

use serde_json::{Map, Value, json};

use super::state::{Actor, Model, hex};
use super::team::user_uuid;

impl Model {
    /// The user as `UserSerializer` renders it for `me` (the fields a client reads).
    pub(crate) fn render_me(&self, actor: &Actor, base: &str) -> Map<String, Value> {
        let uuid = hex(user_uuid(&actor.username));
        let permissions: Vec<Value> = self
            .customers
            .iter()
            .filter(|c| c.is_provider)
            .map(|c| {
                json!({
                    "role_name": "CUSTOMER.OWNER",
                    "scope_type": "customer",
                    "scope_uuid": hex(c.uuid),
                    "scope_name": c.name,
                    "customer_uuid": hex(c.uuid),
                    "customer_name": c.name,
                })
            })
            .collect();
        let value = json!({
            "url": format!("{base}/api/users/{uuid}/"),
            "uuid": uuid,
            "username": actor.username,
            "full_name": actor.full_name,
            "native_name": "",
            "email": "",
            "is_staff": false,
            "is_support": false,
            "is_active": true,
            "permissions": permissions,
        });
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }
}
