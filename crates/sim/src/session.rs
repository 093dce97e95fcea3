//! Who calls the simulator and how many call at once: API tokens with an optional
//! sliding lifetime (Waldur's `TOKEN_LIFETIME`), the user a token acts as
//! (`GET /api/users/me/`), and a counter of concurrent `/api/` calls with its peak.
//!
//! Waldur's `TokenAuthentication` compares the token's `created` with the lifetime:
//! an older token answers 401 `{"detail":"Token has expired."}` and stays expired;
//! a token that authenticates is touched (`created = now`), so the lifetime slides
//! with use. Replacing a token (the admin API) starts a fresh lifetime.
//!
//! Admin API (no authentication):
//! - `GET /admin/tokens` -> `{"count", "lifetime_ms"}` (never the tokens);
//!   `PUT /admin/tokens/lifetime` body `{"lifetime_ms": n | null}` -> 204;
//!   `PUT /admin/tokens/{index}` body `{"token": "..."}` -> 204 (replaces the
//!   index-th token, or adds one at index = count); `POST /admin/tokens/expire` -> 204
//!   (every token expires now, as if its lifetime had passed).
//! - `GET /admin/in_flight` -> `{"current", "peak"}`; `DELETE /admin/in_flight` -> 204
//!   (the peak restarts from the current count).
//!
//! INVARIANT: tokens are compared in constant time and never rendered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::Sim;
use super::admin::{parse, problem};
use super::state::{Actor, ApiError, Model, hex, stable_uuid};

/// The accepted tokens and when each was last used.
pub(crate) struct Tokens {
    tokens: Vec<(puhuri_auth::Secret, Instant, bool)>,
    lifetime: Option<Duration>,
}

impl Tokens {
    pub(crate) fn new(tokens: Vec<puhuri_auth::Secret>) -> Tokens {
        let now = Instant::now();
        Tokens {
            tokens: tokens.into_iter().map(|t| (t, now, false)).collect(),
            lifetime: None,
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.tokens.len()
    }

    pub(crate) fn lifetime(&self) -> Option<Duration> {
        self.lifetime
    }

    pub(crate) fn set_lifetime(&mut self, lifetime: Option<Duration>) {
        self.lifetime = lifetime;
        // A new lifetime counts from now for every token, like a server restart.
        let now = Instant::now();
        for (_, used, _) in &mut self.tokens {
            *used = now;
        }
    }

    /// Replaces the `index`-th token, or adds one when `index` is the count.
    pub(crate) fn set(&mut self, index: usize, token: puhuri_auth::Secret) -> bool {
        let now = Instant::now();
        match index.cmp(&self.tokens.len()) {
            std::cmp::Ordering::Less => {
                self.tokens[index] = (token, now, false);
                true
            }
            std::cmp::Ordering::Equal => {
                self.tokens.push((token, now, false));
                true
            }
            std::cmp::Ordering::Greater => false,
        }
    }

    /// Every token expires now, as if its lifetime had passed.
    pub(crate) fn expire_all(&mut self) {
        for (_, _, expired) in &mut self.tokens {
            *expired = true;
        }
    }

    /// The index of the matching token, touching it; 401 texts as Waldur's.
    pub(crate) fn authenticate(&mut self, presented: &str) -> Result<usize, ApiError> {
        let found = self
            .tokens
            .iter()
            .position(|(t, _, _)| bool::from(t.expose().as_bytes().ct_eq(presented.as_bytes())));
        let Some(index) = found else {
            return Err(ApiError::detail(401, "Invalid token."));
        };
        let (_, used, expired) = &mut self.tokens[index];
        if *expired
            || self
                .lifetime
                .is_some_and(|lifetime| used.elapsed() > lifetime)
        {
            *expired = true;
            return Err(ApiError::detail(401, "Token has expired."));
        }
        *used = Instant::now();
        Ok(index)
    }
}

/// The user a token acts as.
pub(crate) fn actor(index: usize) -> Actor {
    Actor {
        username: if index == 0 {
            "sp-integration".to_string()
        } else {
            format!("sp-integration-{}", index + 1)
        },
        full_name: "Service provider integration".to_string(),
    }
}

/// `GET /api/users/me/`: the integration user, owner (`CUSTOMER.OWNER`) of every
/// service-provider organisation; `field=` selects fields like every serializer.
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
    let uuid = hex(stable_uuid("user", &actor.username));
    let mut user = json!({
        "url": format!("/api/users/{uuid}/"),
        "uuid": uuid,
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

/// Concurrent `/api/` calls and the most seen at once.
#[derive(Default)]
pub(crate) struct InFlight {
    current: AtomicUsize,
    peak: AtomicUsize,
}

impl InFlight {
    /// Counts one call until the guard drops.
    pub(crate) fn enter(&self) -> InFlightGuard<'_> {
        let now = self.current.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        InFlightGuard(self)
    }

    pub(crate) fn current(&self) -> usize {
        self.current.load(Ordering::SeqCst)
    }

    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    pub(crate) fn reset_peak(&self) {
        self.peak.store(self.current(), Ordering::SeqCst);
    }
}

pub(crate) struct InFlightGuard<'a>(&'a InFlight);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(crate) fn admin_routes() -> Router<Sim> {
    Router::new()
        .route("/admin/tokens", get(get_tokens))
        .route("/admin/tokens/lifetime", put(put_lifetime))
        .route("/admin/tokens/expire", post(expire))
        .route("/admin/tokens/{index}", put(put_token))
        .route(
            "/admin/in_flight",
            get(get_in_flight).delete(reset_in_flight),
        )
}

async fn get_tokens(State(sim): State<Sim>) -> Response {
    let tokens = sim.tokens();
    axum::Json(json!({
        "count": tokens.count(),
        "lifetime_ms": tokens.lifetime().map(|l| l.as_millis() as u64),
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Lifetime {
    lifetime_ms: Option<u64>,
}

async fn put_lifetime(State(sim): State<Sim>, body: Bytes) -> Response {
    let lifetime: Lifetime = match parse(&body) {
        Ok(lifetime) => lifetime,
        Err(response) => return *response,
    };
    sim.set_token_lifetime(lifetime.lifetime_ms.map(Duration::from_millis));
    StatusCode::NO_CONTENT.into_response()
}

async fn expire(State(sim): State<Sim>) -> Response {
    sim.expire_tokens();
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    token: String,
}

async fn put_token(State(sim): State<Sim>, Path(index): Path<String>, body: Bytes) -> Response {
    let Ok(index) = index.parse::<usize>() else {
        return problem(404, "a token is named by its index (0, 1, ...)");
    };
    let token: NewToken = match parse(&body) {
        Ok(token) => token,
        Err(response) => return *response,
    };
    if token.token.is_empty() || token.token.chars().any(char::is_whitespace) {
        return problem(400, "a token is non-empty and has no whitespace");
    }
    if sim.set_token(index, puhuri_auth::Secret::new(&token.token)) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        problem(404, "no token at that index (add one at index = count)")
    }
}

async fn get_in_flight(State(sim): State<Sim>) -> Response {
    axum::Json(json!({"current": sim.in_flight(), "peak": sim.peak_in_flight()})).into_response()
}

async fn reset_in_flight(State(sim): State<Sim>) -> Response {
    sim.reset_peak_in_flight();
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::super::SimConfig;
    use super::*;
    use puhuri_auth::Secret;

    async fn start() -> (Sim, String, tokio_util::sync::CancellationToken) {
        let sim = Sim::new(SimConfig {
            tokens: vec![Secret::new("first-token")],
            hook: None,
            seed: true,
            public_url: None,
            waldur: Default::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(sim.clone().serve(listener, stop.clone()));
        (sim, base, stop)
    }

    async fn get(base: &str, path: &str, token: &str) -> (u16, Value) {
        let response = reqwest::Client::new()
            .get(format!("{base}{path}"))
            .header("Authorization", format!("Token {token}"))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn users_me_names_the_provider_roles_and_honours_field() {
        let (_sim, base, stop) = start().await;
        let (status, me) = get(
            &base,
            "/api/users/me/?field=uuid&field=username&field=is_staff&field=permissions",
            "first-token",
        )
        .await;
        assert_eq!(status, 200);
        let object = me.as_object().unwrap();
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["is_staff", "permissions", "username", "uuid"]);
        assert_eq!(me["username"], "sp-integration");
        assert_eq!(me["is_staff"], false);
        let permissions = me["permissions"].as_array().unwrap();
        assert_eq!(permissions.len(), 1, "{me}");
        assert_eq!(permissions[0]["role_name"], "CUSTOMER.OWNER");
        assert_eq!(permissions[0]["scope_type"], "customer");
        assert_eq!(permissions[0]["customer_name"], "LUMI");
        assert_eq!(
            permissions[0]["scope_uuid"],
            permissions[0]["customer_uuid"]
        );
        let (status, body) = get(&base, "/api/users/me/", "wrong").await;
        assert_eq!((status, body), (401, json!({"detail": "Invalid token."})));
        stop.cancel();
    }

    #[tokio::test]
    async fn an_expired_token_answers_401_until_replaced_and_use_slides_the_lifetime() {
        let (sim, base, stop) = start().await;
        let admin = reqwest::Client::new();
        let put = admin
            .put(format!("{base}/admin/tokens/lifetime"))
            .json(&json!({"lifetime_ms": 60_000}))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status().as_u16(), 204);
        assert_eq!(get(&base, "/api/users/me/", "first-token").await.0, 200);
        let expire = admin
            .post(format!("{base}/admin/tokens/expire"))
            .send()
            .await
            .unwrap();
        assert_eq!(expire.status().as_u16(), 204);
        let expired = (401, json!({"detail": "Token has expired."}));
        assert_eq!(get(&base, "/api/users/me/", "first-token").await, expired);
        assert_eq!(
            get(&base, "/api/marketplace-orders/", "first-token").await,
            expired
        );
        let replace = admin
            .put(format!("{base}/admin/tokens/0"))
            .json(&json!({"token": "second-token"}))
            .send()
            .await
            .unwrap();
        assert_eq!(replace.status().as_u16(), 204);
        assert_eq!(get(&base, "/api/users/me/", "second-token").await.0, 200);
        assert_eq!(get(&base, "/api/users/me/", "first-token").await.0, 401);
        // A short lifetime: each use within it extends it.
        sim.set_token_lifetime(Some(Duration::from_millis(1_000)));
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(get(&base, "/api/users/me/", "second-token").await.0, 200);
        }
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        assert_eq!(get(&base, "/api/users/me/", "second-token").await, expired);
        stop.cancel();
    }

    #[tokio::test]
    async fn counts_the_peak_of_concurrent_calls() {
        let (sim, base, stop) = start().await;
        sim.set_faults(super::super::Faults {
            latency_ms: 200,
            ..Default::default()
        });
        let calls: Vec<_> = (0..5)
            .map(|_| {
                let base = base.clone();
                tokio::spawn(async move { get(&base, "/api/users/me/", "first-token").await.0 })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap(), 200);
        }
        let admin = reqwest::Client::new();
        let counts: Value = admin
            .get(format!("{base}/admin/in_flight"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(counts, json!({"current": 0, "peak": 5}));
        let reset = admin
            .delete(format!("{base}/admin/in_flight"))
            .send()
            .await
            .unwrap();
        assert_eq!(reset.status().as_u16(), 204);
        assert_eq!(sim.peak_in_flight(), 0);
        stop.cancel();
    }
}
