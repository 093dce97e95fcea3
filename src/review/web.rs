//! The review page: server-rendered HTML (maud) on its own listener (`review.listen`),
//! working without JavaScript: the held allocations, one allocation in detail, and
//! approve and reject forms that queue the operator's decision for the workers.
//!
//! INVARIANT: nothing but the login form and the style sheet is answered without an
//! authenticated operator: anything else gets 401 and the login form, never data.
//! INVARIANT: every POST but the login carries the operator's CSRF token; the login
//! carries its form's. A missing or wrong token is 403 and nothing is done.
//! INVARIANT: login attempts are throttled per client address (an IPv6 client by its
//! /64; behind `review.trusted_proxies`, the nearest `X-Forwarded-For` address that is
//! not one of them, never an address a client could write alone): [`LOGIN_BURST`] at once, then one every [`LOGIN_PERIOD`]; past that, 429 with the
//! login form, a message and `Retry-After`, and the token is not looked at.
//! INVARIANT: every answer carries a strict `Content-Security-Policy` (no scripts at
//! all), `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer` and
//! `Cache-Control: no-store`; every request of an operator is logged with their name
//! and counted in `puhuri_approver_review_requests_total`.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, Form, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use super::session::{self, Auth, Operator};
use super::{Filter, Held, Review, ReviewError, Shown, age_text, amounts};
use crate::limits::KeyedBuckets;
use crate::metrics::Metrics;
use crate::notification::OperatorAction;
use puhuri_queue::Broker;

/// The page's Content-Security-Policy: no scripts, styles only from the page's own
/// style sheet, forms only to itself, never framed.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const STYLE: &str = include_str!("review.css");

/// Login attempts a client address may make at once.
pub const LOGIN_BURST: u32 = 5;
/// Then one more login attempt per this long.
pub const LOGIN_PERIOD: Duration = Duration::from_secs(12);
/// Client addresses whose login attempts are remembered at once.
const LOGIN_ADDRESSES: usize = 10_000;

/// What the page serves from.
pub struct ReviewPage {
    pub review: Review,
    pub broker: Broker,
    pub auth: Auth,
    pub metrics: Arc<Metrics>,
    /// Login attempts by client address.
    pub logins: KeyedBuckets<IpAddr>,
}

impl ReviewPage {
    /// The page over `review`, with the login throttle of [`LOGIN_BURST`] and [`LOGIN_PERIOD`].
    pub fn new(review: Review, broker: Broker, auth: Auth, metrics: Arc<Metrics>) -> ReviewPage {
        ReviewPage {
            review,
            broker,
            auth,
            metrics,
            logins: KeyedBuckets::new(LOGIN_PERIOD, LOGIN_BURST, LOGIN_ADDRESSES),
        }
    }
}

/// The client's address: the peer, unless the peer is a trusted proxy; then the
/// `X-Forwarded-For` entries read from the right (the proxies append), skipping trusted
/// proxies: the first that is not one is the client (entries further left are the
/// client's own claim). An entry that is not an address ends the walk.
fn client_address(auth: &Auth, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    if !auth.is_trusted_proxy(peer) {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        let Ok(ip) = entry.trim().parse::<IpAddr>() else {
            break;
        };
        client = ip;
        if !auth.is_trusted_proxy(ip) {
            break;
        }
    }
    client
}

/// The throttle's key of a client: its address; an IPv6 client's /64, which one client
/// usually holds whole.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000,
            )),
        },
    }
}

/// The operator a response was made for, for the request log.
#[derive(Clone)]
struct Served(String);

type Page = Arc<ReviewPage>;

/// The review page's routes.
pub fn router(page: Page) -> Router {
    Router::new()
        .route("/", get(list))
        .route("/allocations/{id}", get(show))
        .route("/allocations/{id}/approve", post(approve))
        .route("/allocations/{id}/reject", post(reject))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/review.css", get(style))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            page.clone(),
            secure_and_count,
        ))
        .with_state(page)
}

/// Headers on every answer, the request log with the operator, the request metric.
async fn secure_and_count(State(page): State<Page>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().clone();
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    let status = response.status().as_u16();
    page.metrics.review_request(&route, status);
    match response.extensions().get::<Served>() {
        Some(Served(operator)) => {
            tracing::info!(operator = %operator, method = %method, route = %route, status, "review request")
        }
        None => {
            tracing::info!(operator = "-", method = %method, route = %route, status, "review request")
        }
    }
    response
}

impl ReviewPage {
    /// The operator of this request: a trusted proxy's header, else the session cookie.
    fn operator(&self, peer: SocketAddr, headers: &HeaderMap) -> Option<Operator> {
        let config = self.auth.config();
        if let Some(name) = &config.trusted_header {
            let value = headers.get(name.as_str()).and_then(|v| v.to_str().ok());
            if let Some(operator) = self.auth.proxy_operator(peer.ip(), value) {
                return Some(operator);
            }
        }
        let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
        let value = session::cookie(cookies, session::SESSION_COOKIE)?;
        self.auth.session(value)
    }

    /// 401 with the login form (and its cookie, unless the browser has a valid one),
    /// never data.
    fn unauthenticated(&self, headers: &HeaderMap, message: Option<&str>) -> Response {
        self.login_page(StatusCode::UNAUTHORIZED, headers, message)
    }

    /// The login form with `status` and an optional message.
    fn login_page(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        message: Option<&str>,
    ) -> Response {
        let kept = headers
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|c| session::cookie(c, session::LOGIN_COOKIE))
            .and_then(|c| self.auth.login_form_csrf(c));
        let (set, csrf) = match kept {
            Some(csrf) => (None, csrf),
            None => match self.auth.new_login_form() {
                Ok((cookie, csrf)) => (
                    Some(self.auth.set_cookie(
                        session::LOGIN_COOKIE,
                        Some(&cookie),
                        self.auth.login_form_lifetime(),
                    )),
                    csrf,
                ),
                Err(error) => {
                    return failure(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string());
                }
            },
        };
        let proxied = self.auth.config().trusted_header.is_some();
        let tokens = !self.auth.config().operators.is_empty();
        let body = layout(
            "Log in",
            None,
            html! {
                h1 { "Log in to the review queue" }
                @if let Some(message) = message { p.error { (message) } }
                @if tokens {
                    form method="post" action="/login" {
                        input type="hidden" name="csrf" value=(csrf);
                        label for="token" { "Operator token" }
                        input id="token" type="password" name="token" autocomplete="current-password" required;
                        button type="submit" { "Log in" }
                    }
                }
                @if proxied {
                    p { "Operators behind the organisation's login proxy are let in by it." }
                }
            },
        );
        let mut response = (status, Html(body.into_string())).into_response();
        let headers = response.headers_mut();
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Cookie realm=\"puhuri-review\", form-action=\"/login\""),
            );
        }
        if let Some(Ok(value)) = set.map(|set| HeaderValue::from_str(&set)) {
            headers.insert(header::SET_COOKIE, value);
        }
        response
    }
}

/// An answer for `operator`: logged with their name.
fn served(operator: &Operator, response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    response
        .extensions_mut()
        .insert(Served(operator.name.clone()));
    response
}

fn failure(status: StatusCode, message: &str) -> Response {
    let body = layout(
        status.canonical_reason().unwrap_or("Error"),
        None,
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p.error { (message) }
            p { a href="/" { "Back to the review queue" } }
        },
    );
    (status, Html(body.into_string())).into_response()
}

fn review_failure(error: &ReviewError) -> Response {
    let status = match error {
        ReviewError::NotAnId(_) => StatusCode::NOT_FOUND,
        ReviewError::Refused(_) => StatusCode::BAD_REQUEST,
        ReviewError::Puhuri(puhuri_client::PuhuriError::Permanent { status: 404, .. }) => {
            StatusCode::NOT_FOUND
        }
        ReviewError::Puhuri(_) => StatusCode::BAD_GATEWAY,
        ReviewError::Queue(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    failure(status, &error.to_string())
}

fn layout(title: &str, operator: Option<&Operator>, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · puhuri-approver review" }
                link rel="stylesheet" href="/review.css";
            }
            body {
                header {
                    a.brand href="/" { "puhuri-approver · review queue" }
                    @if let Some(operator) = operator {
                        form.logout method="post" action="/logout" {
                            span { "Signed in as " strong { (operator.name) } }
                            @if operator.via == session::Via::Session {
                                input type="hidden" name="csrf" value=(operator.csrf);
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main { (content) }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    offering: Option<String>,
    rule: Option<String>,
}

async fn list(
    State(page): State<Page>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Response {
    let Some(operator) = page.operator(peer, &headers) else {
        return page.unauthenticated(&headers, None);
    };
    let filter = Filter {
        offering: query.offering.filter(|o| !o.trim().is_empty()),
        rule: query.rule.filter(|r| !r.trim().is_empty()),
    };
    let held = match page.review.held_now(&page.metrics).await {
        Ok(held) => held,
        Err(error) => return served(&operator, review_failure(&error)),
    };
    let total = held.len();
    let shown: Vec<&Held> = held.iter().filter(|h| filter.keeps(h)).collect();
    let body = layout(
        "Held allocations",
        Some(&operator),
        html! {
            h1 { "Held allocations" }
            p.summary {
                (shown.len()) " of " (total) " held for a person, oldest first. "
                "Approving or rejecting queues the decision; a worker writes it as an automatic decision is written."
            }
            form.filter method="get" action="/" {
                label for="offering" { "Offering" }
                input id="offering" name="offering" value=(filter.offering.as_deref().unwrap_or(""));
                label for="rule" { "Rule" }
                input id="rule" name="rule" value=(filter.rule.as_deref().unwrap_or(""));
                button type="submit" { "Filter" }
            }
            @if shown.is_empty() {
                p.empty { "Nothing is waiting for a person." }
            } @else {
                table.queue {
                    thead { tr {
                        th { "Age" } th { "Allocation" } th { "Offering" } th { "Project" }
                        th { "Organisation" } th { "Requested by" } th { "Limits" }
                        th { "Granted (organisation)" } th { "Ends" } th { "Held by" } th { "Note" }
                    } }
                    tbody {
                        @for h in &shown {
                            tr {
                                td { (age_text(h.age_secs)) }
                                td { a href={ "/allocations/" (h.id) } { (h.name) } }
                                td { (h.offering.name) }
                                td { (h.project.name) }
                                td { (h.customer.name) }
                                td { (h.requested_by) }
                                td { (amounts(&h.limits)) }
                                td { (amounts(&h.granted.customer)) }
                                td { (h.end_date.as_deref().unwrap_or("-")) }
                                td { (h.rule.as_deref().map_or("default".to_owned(), |r| format!("rule {r}"))) }
                                td { (h.note) }
                            }
                        }
                    }
                }
            }
        },
    );
    served(&operator, Html(body.into_string()))
}

#[derive(Debug, Deserialize)]
struct ShowQuery {
    queued: Option<String>,
}

async fn show(
    State(page): State<Page>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<ShowQuery>,
) -> Response {
    let Some(operator) = page.operator(peer, &headers) else {
        return page.unauthenticated(&headers, None);
    };
    let shown = match page.review.show(&id).await {
        Ok(shown) => shown,
        Err(error) => return served(&operator, review_failure(&error)),
    };
    let queued = query.queued.as_deref().and_then(|q| match q {
        "approve" => Some("Your approval is queued. A worker writes it while the allocation still waits; reload to see it decided."),
        "reject" => Some("Your rejection is queued. A worker writes it while the allocation still waits; reload to see it decided."),
        _ => None,
    });
    let body = layout(
        &shown.held.name,
        Some(&operator),
        detail(&shown, &operator, queued),
    );
    served(&operator, Html(body.into_string()))
}

fn detail(shown: &Shown, operator: &Operator, queued: Option<&str>) -> Markup {
    let h = &shown.held;
    let verdict = &shown.explanation.verdict;
    html! {
        p { a href="/" { "← Held allocations" } }
        h1 { (h.name) }
        @if let Some(message) = queued { p.notice { (message) } }
        @if let Some(state) = &shown.not_waiting {
            p.notice { "This allocation no longer waits for the provider (" (state) "): nothing can be written." }
        }
        table.facts {
            tr { th { "Allocation" } td { code { (h.id) } } }
            tr { th { "Order" } td { code { (h.order_uuid) } } }
            tr { th { "Offering" } td { (h.offering.name) } }
            tr { th { "Project" } td { (h.project.name) } }
            tr { th { "Organisation" } td { (h.customer.name) } }
            tr { th { "Requested by" } td { (h.requested_by) } }
            tr { th { "Requested" } td { (h.created) " (" (age_text(h.age_secs)) " ago)" } }
            tr { th { "Ends" } td { (h.end_date.as_deref().unwrap_or("-")) } }
            tr { th { "Limits" } td { (amounts(&h.limits)) } }
            tr { th { "Granted to the organisation" } td { (amounts(&h.granted.customer)) } }
            tr { th { "Granted to the project" } td { (amounts(&h.granted.project)) } }
        }
        h2 { "The policy now" }
        p {
            strong { (verdict.action.name()) } " by "
            (verdict.rule.as_deref().map_or("the default".to_owned(), |r| format!("rule {r}")))
            @if let puhuri_policy::Action::Hold { note } = &verdict.action { ": " (note) }
        }
        table.rules {
            thead { tr { th { "Line" } th { "Rule" } th { "Result" } th { "What it read" } } }
            tbody {
                @for rule in &shown.explanation.rules {
                    tr {
                        td { (rule.line) }
                        td { (rule.rule) }
                        td { (rule.result) @if let Some(error) = &rule.error { ": " (error) } }
                        td { @for (path, value) in &rule.facts { code { (path) " = " (value) } " " } }
                    }
                }
            }
        }
        ul.reasons { @for reason in &verdict.reasons { li { (reason) } } }
        @if shown.not_waiting.is_none() {
            h2 { "Decide" }
            @match &shown.manual_backend_id {
                Ok(backend_id) => p { "Approving sets backend_id " code { (backend_id) } ", approves, and submits the access report of the policy's " code { "[manual]" } " section." },
                Err(why) => p.error { "Approving would hold it again: " (why) },
            }
            div.decide {
                form method="post" action={ "/allocations/" (h.id) "/approve" } {
                    input type="hidden" name="csrf" value=(operator.csrf);
                    label for="comment" { "Comment (optional, kept in the decision event)" }
                    textarea id="comment" name="comment" rows="2" maxlength="1000" {}
                    button.approve type="submit" { "Approve" }
                }
                form method="post" action={ "/allocations/" (h.id) "/reject" } {
                    input type="hidden" name="csrf" value=(operator.csrf);
                    label for="reason" { "Reason (required; the requester sees it)" }
                    textarea id="reason" name="reason" rows="2" maxlength="1000" required {}
                    button.reject type="submit" { "Reject" }
                }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct DecisionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    reason: String,
}

async fn approve(
    state: State<Page>,
    peer: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    id: Path<String>,
    form: Form<DecisionForm>,
) -> Response {
    decide(state, peer, headers, id, form, OperatorAction::Approve).await
}

async fn reject(
    state: State<Page>,
    peer: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    id: Path<String>,
    form: Form<DecisionForm>,
) -> Response {
    decide(state, peer, headers, id, form, OperatorAction::Reject).await
}

async fn decide(
    State(page): State<Page>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<DecisionForm>,
    action: OperatorAction,
) -> Response {
    let Some(operator) = page.operator(peer, &headers) else {
        return page.unauthenticated(&headers, None);
    };
    if !session::same(&operator.csrf, &form.csrf) {
        tracing::warn!(operator = %operator.name, action = action.name(), "form refused: its CSRF token is missing or wrong");
        return served(
            &operator,
            failure(
                StatusCode::FORBIDDEN,
                "The form was refused: its CSRF token is missing or wrong. Open the allocation again and resubmit.",
            ),
        );
    }
    let comment = match action {
        OperatorAction::Approve => &form.comment,
        OperatorAction::Reject => &form.reason,
    };
    match page
        .review
        .decide(&page.broker, &id, action, &operator.name, comment)
        .await
    {
        Ok(work) => {
            let id = work
                .item
                .hint
                .resource_uuid
                .map(|r| r.to_string())
                .unwrap_or_default();
            served(
                &operator,
                Redirect::to(&format!("/allocations/{id}?queued={}", action.name())),
            )
        }
        Err(error) => served(&operator, review_failure(&error)),
    }
}

async fn login_form(
    State(page): State<Page>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Some(operator) = page.operator(peer, &headers) {
        return served(&operator, Redirect::to("/"));
    }
    page.unauthenticated(&headers, None)
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token: String,
}

async fn login(
    State(page): State<Page>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let client = client_address(&page.auth, peer.ip(), &headers);
    if let Err(wait) = page.logins.take(client_key(client), Instant::now()) {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        tracing::warn!(client = %client, retry_after_secs = secs, "login throttled: too many attempts from this address");
        let message =
            format!("Too many login attempts from your address: try again in {secs} seconds.");
        let mut response = page.login_page(StatusCode::TOO_MANY_REQUESTS, &headers, Some(&message));
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return response;
    }
    let cookie = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|c| session::cookie(c, session::LOGIN_COOKIE));
    if !cookie.is_some_and(|c| page.auth.login_form_matches(c, &form.csrf)) {
        tracing::warn!("login refused: the form's CSRF token is missing, wrong or expired");
        return failure(
            StatusCode::FORBIDDEN,
            "The login form was refused: it expired or did not come from this page. Open the login page again.",
        );
    }
    let Some(name) = page.auth.operator_of_token(&form.token) else {
        tracing::warn!("login refused: unknown token");
        return page.unauthenticated(&headers, Some("That token is not an operator's."));
    };
    let (value, operator) = match page.auth.new_session(&name) {
        Ok(session) => session,
        Err(error) => return failure(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    };
    tracing::info!(operator = %name, "operator logged in");
    let mut response = served(&operator, Redirect::to("/"));
    let session = page.auth.set_cookie(
        session::SESSION_COOKIE,
        Some(&value),
        page.auth.config().session,
    );
    let clear = page
        .auth
        .set_cookie(session::LOGIN_COOKIE, None, Default::default());
    for value in [session, clear] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

async fn logout(
    State(page): State<Page>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let Some(operator) = page.operator(peer, &headers) else {
        return page.unauthenticated(&headers, None);
    };
    if !session::same(&operator.csrf, &form.csrf) {
        return served(
            &operator,
            failure(
                StatusCode::FORBIDDEN,
                "The form was refused: its CSRF token is missing or wrong.",
            ),
        );
    }
    let mut response = served(&operator, Redirect::to("/login"));
    let clear = page
        .auth
        .set_cookie(session::SESSION_COOKIE, None, Default::default());
    if let Ok(value) = HeaderValue::from_str(&clear) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

async fn not_found(
    State(page): State<Page>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    match page.operator(peer, &headers) {
        Some(operator) => served(
            &operator,
            failure(StatusCode::NOT_FOUND, "There is no such page."),
        ),
        None => page.unauthenticated(&headers, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_its_address_or_its_ipv6_slash_64() {
        let key = |text: &str| client_key(text.parse().expect("address"));
        assert_eq!(key("192.0.2.7"), key("192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
    }

    #[test]
    fn behind_a_trusted_proxy_the_client_is_the_nearest_untrusted_forwarded_address() {
        let config = crate::config::ReviewConfig {
            trusted_header: Some("x-forwarded-user".into()),
            trusted_proxies: vec!["10.0.0.0/8".parse().expect("net")],
            ..Default::default()
        };
        let auth = Auth::with_key(&config, &[7u8; 32]).expect("key");
        let ip = |text: &str| -> IpAddr { text.parse().expect("address") };
        let forwarded = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(
                    "x-forwarded-for",
                    HeaderValue::from_str(value).expect("value"),
                );
            }
            headers
        };
        // A client reaching the port directly is its own address, whatever it claims.
        let claim = forwarded(&["198.51.100.1"]);
        assert_eq!(
            client_address(&auth, ip("192.0.2.7"), &claim),
            ip("192.0.2.7")
        );
        // Through the proxies: the nearest address they did not add themselves.
        let chain = forwarded(&["198.51.100.1, 192.0.2.7", "10.1.1.1"]);
        assert_eq!(
            client_address(&auth, ip("10.0.0.2"), &chain),
            ip("192.0.2.7")
        );
        // A proxy that forwards nothing, or garbage: the proxy.
        assert_eq!(
            client_address(&auth, ip("10.0.0.2"), &HeaderMap::new()),
            ip("10.0.0.2")
        );
        let garbage = forwarded(&["not-an-address"]);
        assert_eq!(
            client_address(&auth, ip("10.0.0.2"), &garbage),
            ip("10.0.0.2")
        );
    }
}
