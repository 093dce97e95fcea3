//! Waldur's push channel for providers: event consumers (`8.0`) and event subscriptions
//! (`7.0`, `8.0`), and the order events published to the registered queues on a real
//! RabbitMQ, as Waldur does: the virtual host, user, permissions and queue are made through
//! the broker's management HTTP API, the messages are published over AMQP (persistent).
//!
//! Routes (not on `2021`, which has neither):
//! - `GET /api/event-consumers/` (8.0): the user's consumers, paginated (the probe's question).
//! - `POST /api/event-consumers/register/` (8.0) `{"object_types":["order"],"scopes":[{"type":
//!   "offering","uuid"}]}` → 201 new / 200 the same bindings again; 403 for empty scopes (the
//!   integration user is not staff); 400 for an offering the user does not manage.
//! - `POST /api/event-subscriptions/` `{"observable_objects":[{"object_type":"order"}]}` → 201.
//! - `POST /api/event-subscriptions/{uuid}/create_queue/` `{"offering_uuid","object_type"}` →
//!   201 (200 when the queue exists).
//!
//! Without a broker ([`Sim::set_event_broker`] not called) registration answers 500, like a
//! Waldur whose RabbitMQ management API is unreachable: the simulator never pretends to have
//! made a queue it has not.

use std::collections::HashMap;

use axum::http::HeaderMap;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use serde_json::{Value, json};
use uuid::Uuid;

use super::state::{ApiError, hex, stable_uuid};
use super::{Sim, WaldurVersion};

/// The broker Waldur's events go to: an AMQP URL and a management URL, both with the
/// administrator's credentials (`amqp://user:pass@host:port`, `http://user:pass@host:port`).
#[derive(Clone)]
pub struct EventBroker {
    pub amqp_url: String,
    pub management_url: String,
}

impl std::fmt::Debug for EventBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventBroker { .. }")
    }
}

/// One registered queue: the offering whose order events it receives, and the message form.
#[derive(Debug, Clone)]
struct Registration {
    vhost: String,
    queue: String,
    offering: Uuid,
    /// Consumers get the unified message; subscriptions the bare `{order_uuid, order_state}`.
    unified: bool,
}

#[derive(Debug, Clone)]
struct Consumer {
    uuid: Uuid,
    rmq_username: String,
    queue: String,
    vhost: String,
    offerings: Vec<Uuid>,
}

#[derive(Default)]
pub(crate) struct Events {
    broker: std::sync::Mutex<Option<EventBroker>>,
    state: std::sync::Mutex<EventState>,
    channels: tokio::sync::Mutex<HashMap<String, (Connection, lapin::Channel)>>,
}

#[derive(Default)]
struct EventState {
    registrations: Vec<Registration>,
    consumers: Vec<Consumer>,
    /// subscription uuid → owner's user uuid
    subscriptions: HashMap<Uuid, Uuid>,
    published: u64,
}

/// Whether a path is one of this module's, for `version`.
pub(crate) fn owns(version: WaldurVersion, path: &str) -> bool {
    match version {
        WaldurVersion::V2021 => false,
        WaldurVersion::V7_0 => path.starts_with("/api/event-subscriptions/"),
        WaldurVersion::V8_0 => {
            path.starts_with("/api/event-subscriptions/")
                || path.starts_with("/api/event-consumers/")
        }
    }
}

fn reply(status: u16, body: Value) -> (u16, Value) {
    (status, body)
}

fn error(e: ApiError) -> (u16, Value) {
    (e.status, e.body)
}

impl Sim {
    /// Publishes order events to `broker` from now on (see the module's documentation).
    pub fn set_event_broker(&self, broker: EventBroker) {
        *self
            .inner
            .events
            .broker
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(broker);
    }

    /// Order events published to the broker and confirmed so far.
    pub fn events_published(&self) -> u64 {
        self.inner
            .events
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .published
    }

    fn event_state(&self) -> std::sync::MutexGuard<'_, EventState> {
        self.inner
            .events
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Answers a request under `event-consumers/` or `event-subscriptions/`: status and body.
    pub(crate) async fn handle_events(
        &self,
        method: &axum::http::Method,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> (u16, Value) {
        let token = match self.authenticate(headers) {
            Ok(_) => presented_token(headers),
            Err(e) => return error(e),
        };
        let Some(token) = token else {
            return error(ApiError::detail(
                401,
                "Authentication credentials were not provided.",
            ));
        };
        let user = self.user_uuid(headers);
        let rest = path.trim_start_matches("/api/");
        let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        let post = method == axum::http::Method::POST;
        let get = method == axum::http::Method::GET;
        match parts.as_slice() {
            ["event-consumers"] if get => {
                let state = self.event_state();
                let mine: Vec<Value> = state
                    .consumers
                    .iter()
                    .filter(|c| c.vhost == hex(user))
                    .map(|c| json!({"uuid": hex(c.uuid), "rmq_username": c.rmq_username, "queue_name": c.queue}))
                    .collect();
                reply(200, Value::Array(mine))
            }
            ["event-consumers", "register"] if post => {
                self.register_consumer(user, &token, body).await
            }
            ["event-subscriptions"] if post => self.create_subscription(user, body),
            ["event-subscriptions", id, "create_queue"] if post => {
                self.create_queue(user, &token, id, body).await
            }
            ["event-consumers"] | ["event-subscriptions"] | ["event-consumers", "register"] => {
                reply(
                    405,
                    json!({"detail": format!("Method \"{}\" not allowed.", method.as_str())}),
                )
            }
            _ => error(ApiError::not_found()),
        }
    }

    fn user_uuid(&self, headers: &HeaderMap) -> Uuid {
        let actor = self
            .authenticate(headers)
            .map(|a| a.username)
            .unwrap_or_default();
        stable_uuid("user", &actor)
    }

    /// The offerings of the provider organisations the user owns.
    fn managed_offering(&self, uuid: &str) -> Result<Uuid, ApiError> {
        let parsed = Uuid::parse_str(uuid).ok();
        let shared = self.lock();
        let model = &shared.model;
        parsed
            .and_then(|u| {
                model
                    .offerings
                    .iter()
                    .find(|o| o.uuid == u && model.customers[o.provider].is_provider)
            })
            .map(|o| o.uuid)
            .ok_or_else(|| {
                ApiError::field(
                    "scopes",
                    format!("You do not have permission to subscribe to offering {uuid}."),
                )
            })
    }

    async fn register_consumer(&self, user: Uuid, token: &str, body: &[u8]) -> (u16, Value) {
        let Ok(body) = serde_json::from_slice::<Value>(body) else {
            return error(ApiError::detail(400, "JSON parse error."));
        };
        let types = body["object_types"].as_array().cloned().unwrap_or_default();
        if types.is_empty() || types.iter().any(|t| t.as_str() != Some("order")) {
            return error(ApiError::field(
                "object_types",
                "Only order events are supported here.",
            ));
        }
        let Some(scopes) = body["scopes"].as_array() else {
            return error(ApiError::field("scopes", "This field is required."));
        };
        if scopes.is_empty() {
            return error(ApiError::detail(
                403,
                "Only staff can subscribe without scopes.",
            ));
        }
        let mut offerings = Vec::new();
        for scope in scopes {
            if scope["type"].as_str() != Some("offering") {
                return error(ApiError::field("scopes", "Unsupported scope type."));
            }
            match self.managed_offering(scope["uuid"].as_str().unwrap_or_default()) {
                Ok(uuid) => offerings.push(uuid),
                Err(e) => return error(e),
            }
        }
        offerings.sort();
        offerings.dedup();
        let vhost = hex(user);
        let existing = self
            .event_state()
            .consumers
            .iter()
            .find(|c| c.vhost == vhost && c.offerings == offerings)
            .cloned();
        let (consumer, status) = match existing {
            Some(c) => (c, 200),
            None => {
                let uuid = Uuid::new_v4();
                (
                    Consumer {
                        uuid,
                        rmq_username: hex(uuid),
                        queue: format!("consumer_{}", hex(uuid)),
                        vhost: vhost.clone(),
                        offerings: offerings.clone(),
                    },
                    201,
                )
            }
        };
        if let Err(status) = self
            .provision(&vhost, &consumer.rmq_username, token, &consumer.queue)
            .await
        {
            return status;
        }
        let mut state = self.event_state();
        if status == 201 {
            state.consumers.push(consumer.clone());
            for offering in &offerings {
                state.registrations.push(Registration {
                    vhost: vhost.clone(),
                    queue: consumer.queue.clone(),
                    offering: *offering,
                    unified: true,
                });
            }
        }
        reply(
            status,
            json!({
                "uuid": hex(consumer.uuid),
                "rmq_username": consumer.rmq_username,
                "queue_name": consumer.queue,
                "vhost": vhost,
                "observable_object_types": ["order"],
            }),
        )
    }

    fn create_subscription(&self, user: Uuid, body: &[u8]) -> (u16, Value) {
        let Ok(body) = serde_json::from_slice::<Value>(body) else {
            return error(ApiError::detail(400, "JSON parse error."));
        };
        let Some(objects) = body["observable_objects"].as_array() else {
            return error(ApiError::field(
                "observable_objects",
                "This field is required.",
            ));
        };
        if objects.iter().any(|o| o["object_type"].as_str().is_none()) {
            return error(ApiError::field(
                "observable_objects",
                "Every object needs an object_type.",
            ));
        }
        let uuid = Uuid::new_v4();
        self.event_state().subscriptions.insert(uuid, user);
        reply(
            201,
            json!({
                "uuid": hex(uuid),
                "user_uuid": hex(user),
                "observable_objects": objects,
            }),
        )
    }

    async fn create_queue(&self, user: Uuid, token: &str, id: &str, body: &[u8]) -> (u16, Value) {
        let subscription = Uuid::parse_str(id)
            .ok()
            .filter(|u| self.event_state().subscriptions.get(u) == Some(&user));
        let Some(subscription) = subscription else {
            return error(ApiError::no_match("EventSubscription"));
        };
        let Ok(body) = serde_json::from_slice::<Value>(body) else {
            return error(ApiError::detail(400, "JSON parse error."));
        };
        if body["object_type"].as_str() != Some("order") {
            return error(ApiError::field(
                "object_type",
                "Only order is supported here.",
            ));
        }
        let offering =
            match self.managed_offering(body["offering_uuid"].as_str().unwrap_or_default()) {
                Ok(uuid) => uuid,
                Err(_) => {
                    return error(ApiError::field(
                        "offering_uuid",
                        "You do not have permission to subscribe to this offering.",
                    ));
                }
            };
        let vhost = hex(user);
        let login = hex(subscription);
        let queue = format!("subscription_{}_offering_{}_order", login, hex(offering));
        if let Err(status) = self.provision(&vhost, &login, token, &queue).await {
            return status;
        }
        let mut state = self.event_state();
        let exists = state.registrations.iter().any(|r| r.queue == queue);
        if !exists {
            state.registrations.push(Registration {
                vhost: vhost.clone(),
                queue: queue.clone(),
                offering,
                unified: false,
            });
        }
        reply(
            if exists { 200 } else { 201 },
            json!({"queue_name": queue, "vhost": vhost}),
        )
    }

    /// The virtual host, the user (password: the token), its permissions and the queue, on
    /// the broker through its management API, as Waldur makes them.
    async fn provision(
        &self,
        vhost: &str,
        user: &str,
        token: &str,
        queue: &str,
    ) -> Result<(), (u16, Value)> {
        let server_error = || (500, json!({"detail": "Server Error (500)"}));
        let broker = self
            .inner
            .events
            .broker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(broker) = broker else {
            tracing::warn!("event registration without a broker: answering 500");
            return Err(server_error());
        };
        let Ok(base) = reqwest::Url::parse(&broker.management_url) else {
            return Err(server_error());
        };
        let admin_user = base.username().to_string();
        let admin_password = base.password().unwrap_or_default().to_string();
        let mut plain = base.clone();
        let _ = plain.set_username("");
        let _ = plain.set_password(None);
        let root = plain.as_str().trim_end_matches('/').to_string();
        let everything = json!({"configure": ".*", "write": ".*", "read": ".*"});
        let calls = [
            (format!("{root}/api/vhosts/{vhost}"), json!({})),
            (
                format!("{root}/api/users/{user}"),
                json!({"password": token, "tags": ""}),
            ),
            (
                format!("{root}/api/permissions/{vhost}/{user}"),
                everything.clone(),
            ),
            (
                format!("{root}/api/permissions/{vhost}/{admin_user}"),
                everything,
            ),
            (
                format!("{root}/api/queues/{vhost}/{queue}"),
                json!({"durable": true, "auto_delete": false, "arguments": {
                    "x-message-ttl": 3_600_000,
                    "x-max-length": 10_000,
                    "x-overflow": "reject-publish-dlx",
                }}),
            ),
        ];
        for (url, body) in calls {
            let answer = self
                .inner
                .http
                .put(&url)
                .basic_auth(&admin_user, Some(&admin_password))
                .json(&body)
                .send()
                .await;
            match answer {
                Ok(answer) if answer.status().is_success() => {}
                Ok(answer) => {
                    tracing::warn!(
                        status = answer.status().as_u16(),
                        "the broker's management API refused a call"
                    );
                    return Err(server_error());
                }
                Err(e) => {
                    tracing::warn!(error = %e.without_url(), "the broker's management API is unreachable");
                    return Err(server_error());
                }
            }
        }
        Ok(())
    }

    /// Publishes the order's event to every queue registered for its offering (spawned by
    /// the caller; an event that cannot be published is lost, as in Waldur).
    pub(crate) async fn publish_order_event(&self, offering: Uuid, unified: Value, bare: Value) {
        let targets: Vec<Registration> = self
            .event_state()
            .registrations
            .iter()
            .filter(|r| r.offering == offering)
            .cloned()
            .collect();
        for target in targets {
            let body = if target.unified { &unified } else { &bare };
            let bytes = serde_json::to_vec(body).unwrap_or_default();
            match self.publish(&target.vhost, &target.queue, &bytes).await {
                Ok(()) => self.event_state().published += 1,
                Err(e) => {
                    tracing::warn!(error = %e, queue = %target.queue, "publishing an order event failed; it is lost");
                    self.inner
                        .events
                        .channels
                        .lock()
                        .await
                        .remove(&target.vhost);
                }
            }
        }
    }

    async fn publish(&self, vhost: &str, queue: &str, body: &[u8]) -> Result<(), String> {
        let broker = self
            .inner
            .events
            .broker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or("no broker")?;
        let mut channels = self.inner.events.channels.lock().await;
        if !channels.contains_key(vhost) {
            let url = format!("{}/{vhost}", broker.amqp_url.trim_end_matches('/'));
            let connection = Connection::connect(&url, ConnectionProperties::default())
                .await
                .map_err(|e| e.to_string())?;
            let channel = connection
                .create_channel()
                .await
                .map_err(|e| e.to_string())?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            channels.insert(vhost.to_string(), (connection, channel));
        }
        let Some((_, channel)) = channels.get(vhost) else {
            return Err("no channel".into());
        };
        let confirmation = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            other => Err(format!("not confirmed: {other:?}")),
        }
    }
}

/// The token of an `Authorization: Token <t>` header (already authenticated).
fn presented_token(headers: &HeaderMap) -> Option<String> {
    let raw = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    raw.split_whitespace().nth(1).map(str::to_string)
}
