//! `GET /api/users/me/` (`UserViewSet.me`): the token's user, owner (`CUSTOMER.OWNER`)
//! of every service-provider organisation. Other user routes are not simulated.

use serde_json::{Value, json};

use super::state::{Actor, Model, hex};
use super::team::user_uuid;

/// The user as `UserSerializer` renders it for `me` (the fields a provider's client
/// reads); `field=` selects fields like every serializer.
pub(crate) fn me(model: &Model, actor: &Actor, fields: &[&str]) -> Value {
    let permissions: Vec<Value> = model
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
    let mut user = json!({
        "uuid": hex(user_uuid(&actor.username)),
        "username": actor.username,
        "full_name": actor.full_name,
        "email": "",
        "is_staff": false,
        "is_support": false,
        "is_active": true,
        "permissions": permissions,
    });
    if let Some(object) = user.as_object_mut()
        && fields.iter().any(|f| object.contains_key(*f))
    {
        object.retain(|key, _| fields.contains(&key.as_str()));
    }
    user
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn me_owns_the_providers_and_selects_fields() {
        let mut model = Model::default();
        model.seed().expect("seed");
        let actor = Actor {
            username: "sp-integration".into(),
            full_name: "Service provider integration".into(),
        };
        let all = me(&model, &actor, &[]);
        assert_eq!(all["username"], json!("sp-integration"));
        let providers = model.customers.iter().filter(|c| c.is_provider).count();
        assert!(providers > 0);
        assert_eq!(all["permissions"].as_array().map(Vec::len), Some(providers));
        let picked = me(&model, &actor, &["uuid", "is_staff", "nope"]);
        let keys: Vec<&String> = picked
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        assert_eq!(keys, ["is_staff", "uuid"]);
    }
}
