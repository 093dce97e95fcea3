//! Waldur's push channel for providers: registering for order events of offerings, with the
//! newer event consumers or the older event subscriptions. What comes back names the STOMP
//! login, virtual host and queues; the passcode is the API token that registered.

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{PuhuriClient, PuhuriError, WaldurUuid};

/// Where the events of the registered offerings wait: STOMP login, virtual host and the queues
/// to subscribe to (`/amq/queue/<name>`). The passcode is the token, not kept here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventChannel {
    pub login: String,
    pub vhost: String,
    pub queues: Vec<String>,
    /// Whether the server created something (`201`) rather than refreshed (`200`).
    pub created: bool,
}

#[derive(Deserialize)]
struct Registered {
    rmq_username: String,
    queue_name: String,
    vhost: String,
}

#[derive(Deserialize)]
struct Subscription {
    uuid: WaldurUuid,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct QueueCreated {
    queue_name: Option<String>,
}

impl PuhuriClient {
    /// The newer flow: `POST /api/event-consumers/register/` for order events of `offerings`.
    pub async fn register_event_consumer(
        &self,
        offerings: &[WaldurUuid],
    ) -> Result<EventChannel, PuhuriError> {
        let scopes: Vec<Value> = offerings
            .iter()
            .map(|uuid| json!({"type": "offering", "uuid": uuid.as_str()}))
            .collect();
        let body = json!({"object_types": ["order"], "scopes": scopes});
        let answer = self
            .call(
                "register event consumer",
                Method::POST,
                &self.url("event-consumers/register/"),
                Some(&body),
            )
            .await?;
        let created = answer.status == 201;
        let registered: Registered = answer.json("register event consumer")?;
        Ok(EventChannel {
            login: registered.rmq_username,
            vhost: registered.vhost,
            queues: vec![registered.queue_name],
            created,
        })
    }

    /// The older flow: one `POST /api/event-subscriptions/` for orders, then
    /// `create_queue/` per offering. The virtual host is the user's uuid (`users/me`).
    pub async fn subscribe_events(
        &self,
        offerings: &[WaldurUuid],
    ) -> Result<EventChannel, PuhuriError> {
        let me = self.me().await?;
        let vhost = WaldurUuid::parse(&me.uuid).ok_or_else(|| PuhuriError::Unusable {
            operation: "users me",
            detail: "the user's uuid is not a uuid".into(),
        })?;
        let body = json!({"observable_objects": [{"object_type": "order"}]});
        let subscription: Subscription = self
            .call(
                "create event subscription",
                Method::POST,
                &self.url("event-subscriptions/"),
                Some(&body),
            )
            .await?
            .json("create event subscription")?;
        let mut queues = Vec::new();
        for offering in offerings {
            let body = json!({"offering_uuid": offering.as_str(), "object_type": "order"});
            let answer = self
                .call(
                    "create event queue",
                    Method::POST,
                    &self.url(&format!(
                        "event-subscriptions/{}/create_queue/",
                        subscription.uuid
                    )),
                    Some(&body),
                )
                .await?;
            let created: QueueCreated = serde_json::from_slice(&answer.bytes).unwrap_or_default();
            queues.push(created.queue_name.unwrap_or_else(|| {
                format!(
                    "subscription_{}_offering_{}_order",
                    subscription.uuid, offering
                )
            }));
        }
        Ok(EventChannel {
            login: subscription.uuid.to_string(),
            vhost: vhost.to_string(),
            queues,
            created: true,
        })
    }
}
