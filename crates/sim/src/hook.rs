//! Announcements of new allocations, posted once to the configured target.
//!
//! Two shapes: Waldur's own web hook (`hooks-web`: unsigned
//! `{created, message, event_type, context}` with a flat context where some
//! booleans and nulls arrive as the strings `"True"`, `"False"`, `"None"`), and
//! the `allocation.created` notification
//! (`schemas/allocation-notification.v1.schema.json`) signed with Standard
//! Webhooks headers.
//!
//! INVARIANT: payloads are built while the model is locked (a consistent
//! snapshot) and sent after it is released; one attempt, no retries, like
//! Waldur. Failures are logged with the target host only: URLs may carry
//! secret path tokens, and the signing secret is never logged.

use reqwest::header::CONTENT_TYPE;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::state::{Model, date_string, hex, timestamp};
use super::team::user_uuid;
use super::{HookFormat, HookTarget};
use puhuri_auth::signature::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};

/// A ready-to-send announcement.
pub(crate) struct Delivery {
    url: String,
    body: Vec<u8>,
    /// `(webhook-id, webhook-timestamp, webhook-signature)` when signed.
    signed: Option<(String, i64, String)>,
}

/// Python's `str()` of booleans and `None`, as Waldur's event context has them.
fn pythonic(value: &Value) -> Value {
    match value {
        Value::Bool(true) => Value::String("True".into()),
        Value::Bool(false) => Value::String("False".into()),
        Value::Null => Value::String("None".into()),
        other => other.clone(),
    }
}

/// The `marketplace_resource_create_requested` event of an allocation.
pub(crate) fn waldur_event(model: &Model, order: usize, now: OffsetDateTime) -> Value {
    let o = &model.orders[order];
    let r = &model.resources[o.resource];
    let off = &model.offerings[o.offering];
    let provider = &model.customers[off.provider];
    let project = &model.projects[o.project];
    let customer = &model.customers[project.customer];
    let attributes: Map<String, Value> = r
        .attributes
        .iter()
        .map(|(k, v)| (k.clone(), pythonic(v)))
        .collect();
    json!({
        "created": timestamp(now),
        "message": format!("Resource {} creation has been requested.", r.name),
        "event_type": "marketplace_resource_create_requested",
        "context": {
            "resource_uuid": hex(r.uuid),
            "resource_name": r.name,
            "resource_state": r.state.as_str(),
            "resource_backend_id": r.backend_id,
            "resource_limits": r.limits,
            "resource_attributes": attributes,
            "resource_end_date": pythonic(&r.end_date.map_or(Value::Null, |d| Value::String(date_string(d)))),
            "project_uuid": hex(project.uuid),
            "project_name": project.name,
            "project_end_date": pythonic(&project.end_date.map_or(Value::Null, |d| Value::String(date_string(d)))),
            "customer_uuid": hex(customer.uuid),
            "customer_name": customer.name,
            "customer_abbreviation": customer.abbreviation,
            "offering_uuid": hex(off.uuid),
            "offering_name": off.name,
            "offering_type": off.offering_type,
            "offering_shared": pythonic(&Value::Bool(true)),
            "provider_uuid": hex(provider.uuid),
            "provider_name": provider.name,
            "plan_uuid": hex(off.plan_uuid),
            "plan_name": off.plan_name,
            "order_uuid": hex(o.uuid),
            "order_state": o.state.as_str(),
            "order_type": "Create",
            "order_limits": o.limits,
            "user_uuid": hex(user_uuid(&o.created_by.username)),
            "user_username": o.created_by.username,
            "user_full_name": o.created_by.full_name,
        }
    })
}

/// The `allocation.created` notification of an allocation.
pub(crate) fn allocation_event(model: &Model, order: usize, now: OffsetDateTime) -> Value {
    let o = &model.orders[order];
    json!({
        "type": "allocation.created",
        "order_uuid": hex(o.uuid),
        "resource_uuid": hex(model.resources[o.resource].uuid),
        "offering_uuid": hex(model.offerings[o.offering].uuid),
        "occurred_at": timestamp(now),
    })
}

/// Builds the announcement of `order` for `target`.
pub(crate) fn prepare(
    target: &HookTarget,
    model: &Model,
    order: usize,
    now: OffsetDateTime,
) -> Delivery {
    match &target.format {
        HookFormat::WaldurHook => Delivery {
            url: target.url.clone(),
            body: serde_json::to_vec(&waldur_event(model, order, now)).unwrap_or_default(),
            signed: None,
        },
        HookFormat::Allocation { secret } => {
            let body = serde_json::to_vec(&allocation_event(model, order, now)).unwrap_or_default();
            let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
            let ts = now.unix_timestamp();
            let signature = secret.sign(&id, ts, &body);
            Delivery {
                url: target.url.clone(),
                body,
                signed: Some((id, ts, signature)),
            }
        }
    }
}

/// Posts once; logs the outcome.
pub(crate) async fn deliver(client: reqwest::Client, delivery: Delivery) {
    let host = reqwest::Url::parse(&delivery.url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "(invalid url)".to_string());
    let mut request = client
        .post(&delivery.url)
        .header(CONTENT_TYPE, "application/json")
        .body(delivery.body);
    // Waldur's own hooks carry no id.
    let id = delivery
        .signed
        .as_ref()
        .map_or_else(|| "none".to_owned(), |(id, _, _)| id.clone());
    if let Some((id, ts, signature)) = delivery.signed {
        request = request
            .header(HEADER_ID, id)
            .header(HEADER_TIMESTAMP, ts.to_string())
            .header(HEADER_SIGNATURE, signature);
    }
    match request.send().await {
        Ok(response) if response.status().is_success() => {
            tracing::debug!(%host, status = response.status().as_u16(), webhook_id = %id, "hook delivered");
        }
        Ok(response) => {
            tracing::warn!(%host, status = response.status().as_u16(), webhook_id = %id, "hook refused by its receiver; not retried");
        }
        Err(error) => {
            tracing::warn!(%host, error = %error.without_url(), webhook_id = %id, "hook delivery failed; not retried");
        }
    }
}
