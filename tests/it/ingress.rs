//! The receiver's answers to every class of bad input (`docs/ingress.md`, one test per
//! row): status, problem `type`, and a work queue that stayed empty. Plus the accepted
//! schemes end to end, replays, and a log capture proving no secret is ever logged.

use std::sync::{Arc, Mutex};

use puhuri_approver::app::Roles;
use puhuri_auth::signature::{GithubSecret, WebhookSecret};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{Captured, Options, SECRET, TOKEN, TestApp, now, spawn_app};

const GITHUB_SECRET: &str = "It's a Secret to Everybody";
const PATH_SECRET: &str = "waldur-path-secret-0123456789abcdefghijkl";
const ORDER: &str = "0bd3a4ee3c0a4b4d8f0c6b2f6f1e2a11";

fn extra_config() -> String {
    format!(
        r#"
[receiver]
request_timeout_ms = 1500

[[sources]]
name = "gh"
format = "allocation"
auth = "github"
secrets = ["{GITHUB_SECRET}"]

[[sources]]
name = "waldur"
format = "waldur-hook"
auth = "path-secret"
secrets = ["{PATH_SECRET}"]

[[sources]]
name = "office"
format = "allocation"
auth = "none"
insecure_no_auth = true
allowed_networks = ["192.0.2.0/24", "2001:db8::/32"]

[[sources]]
name = "slow"
format = "allocation"
auth = "standard-webhooks"
secrets = ["{SECRET}"]
rate_limit_per_sec = 1
rate_limit_burst = 1
"#
    )
}

async fn receiver() -> TestApp {
    spawn_app(Options {
        roles: Roles {
            receive: true,
            work: false,
        },
        extra_config: extra_config(),
        ..Options::default()
    })
    .await
}

fn allocation(order: &str) -> Vec<u8> {
    json!({"type": "allocation.created", "order_uuid": order})
        .to_string()
        .into_bytes()
}

/// Standard Webhooks headers for `body` under `id`, signed now with the test secret.
fn signed(id: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    let secret = WebhookSecret::parse(SECRET).expect("secret");
    let ts = now();
    vec![
        ("content-type", "application/json".to_owned()),
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", ts.to_string()),
        ("webhook-signature", secret.sign(id, ts, body)),
    ]
}

async fn post(
    app: &TestApp,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> reqwest::Response {
    let mut request = app.http.post(app.url(path));
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.body(body).send().await.expect("receiver answers")
}

/// Asserts a problem answer with its `type`, then that nothing was queued.
async fn assert_refused(app: &TestApp, response: reqwest::Response, status: u16, cause: &str) {
    assert_eq!(response.status().as_u16(), status, "cause `{cause}`");
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let body: Value = response.json().await.expect("problem json");
    assert_problem_counted(app, &body, status, cause).await;
}

/// Asserts a problem body's `type` and `status`, that nothing was queued, and that the
/// refusal was counted by its cause.
async fn assert_problem_counted(app: &TestApp, body: &Value, status: u16, cause: &str) {
    assert_eq!(
        body["type"],
        json!(format!("urn:puhuri-approver:problem:{cause}")),
        "{body}"
    );
    assert_eq!(body["status"], json!(status));
    assert_eq!(app.work_queue_depth().await, 0, "nothing is queued");
    let counted = app
        .running
        .as_ref()
        .expect("running")
        .stats
        .refusals()
        .into_iter()
        .any(|(c, n)| c == cause && n >= 1);
    assert!(counted, "`{cause}` is counted");
}

/// Posts a body signed correctly to `relay` and expects a refusal.
async fn signed_refusal(body: &[u8], status: u16, cause: &str) {
    let app = receiver().await;
    let response = post(
        &app,
        "/v1/notifications/relay",
        &signed("msg_bad", body),
        body.to_vec(),
    )
    .await;
    assert_refused(&app, response, status, cause).await;
    app.stop().await;
}

// ---- one test per row of the table in docs/ingress.md ------------------------------

#[tokio::test]
async fn row_unknown_source() {
    let app = receiver().await;
    let body = allocation(ORDER);
    let response = post(
        &app,
        "/v1/notifications/nobody",
        &signed("msg_1", &body),
        body,
    )
    .await;
    assert_refused(&app, response, 404, "unknown-source").await;
    app.stop().await;
}

#[tokio::test]
async fn row_secret_path_on_a_signed_source() {
    let app = receiver().await;
    let body = allocation(ORDER);
    let response = post(
        &app,
        "/v1/notifications/relay/extra",
        &signed("msg_1", &body),
        body,
    )
    .await;
    assert_refused(&app, response, 404, "unknown-source").await;
    app.stop().await;
}

#[tokio::test]
async fn row_wrong_method() {
    let app = receiver().await;
    let response = app
        .http
        .get(app.url("/v1/notifications/relay"))
        .send()
        .await
        .expect("answer");
    assert_refused(&app, response, 405, "method-not-allowed").await;
    app.stop().await;
}

#[tokio::test]
async fn row_too_many_headers() {
    let app = receiver().await;
    let body = allocation(ORDER);
    let mut headers = signed("msg_1", &body);
    for i in 0..70 {
        headers.push((
            Box::leak(format!("x-extra-{i}").into_boxed_str()),
            "1".into(),
        ));
    }
    let response = post(&app, "/v1/notifications/relay", &headers, body).await;
    assert_refused(&app, response, 431, "headers-too-large").await;
    app.stop().await;
}

#[tokio::test]
async fn row_headers_too_large() {
    let app = receiver().await;
    let body = allocation(ORDER);
    let mut headers = signed("msg_1", &body);
    headers.push(("x-padding", "a".repeat(17 * 1024)));
    let response = post(&app, "/v1/notifications/relay", &headers, body).await;
    assert_refused(&app, response, 431, "headers-too-large").await;
    app.stop().await;
}

#[tokio::test]
async fn row_address_outside_allowed_networks() {
    let app = receiver().await;
    let response = post(
        &app,
        "/v1/notifications/office",
        &[("content-type", "application/json".into())],
        allocation(ORDER),
    )
    .await;
    assert_refused(&app, response, 403, "forbidden-network").await;
    app.stop().await;
}

#[tokio::test]
async fn row_forwarded_for_is_ignored_unless_trusted() {
    let app = receiver().await;
    let response = post(
        &app,
        "/v1/notifications/office",
        &[
            ("content-type", "application/json".into()),
            ("x-forwarded-for", "192.0.2.10".into()),
        ],
        allocation(ORDER),
    )
    .await;
    assert_refused(&app, response, 403, "forbidden-network").await;
    app.stop().await;
}

#[tokio::test]
async fn row_rate_limit_exceeded() {
    let app = receiver().await;
    let body = allocation(ORDER);
    let mut limited = None;
    // Burst 1 at 1/s: the first unsigned request takes the token (401), a next one
    // within the same second is limited.
    for _ in 0..5 {
        let response = post(
            &app,
            "/v1/notifications/slow",
            &[("content-type", "application/json".into())],
            body.clone(),
        )
        .await;
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
        assert_eq!(response.status(), 401);
    }
    let response = limited.expect("a request was rate limited");
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("retry-after");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_refused(&app, response, 429, "rate-limited").await;
    app.stop().await;
}

#[tokio::test]
async fn row_wrong_content_type() {
    let app = receiver().await;
    let body = allocation(ORDER);
    let mut headers = signed("msg_1", &body);
    headers[0].1 = "text/plain".into();
    let response = post(&app, "/v1/notifications/relay", &headers, body).await;
    assert_refused(&app, response, 415, "unsupported-media-type").await;
    app.stop().await;
}

#[tokio::test]
async fn row_body_too_large() {
    let app = receiver().await;
    let body = vec![b' '; 256 * 1024 + 1];
    let response = post(
        &app,
        "/v1/notifications/relay",
        &signed("msg_1", &body),
        body,
    )
    .await;
    assert_refused(&app, response, 413, "body-too-large").await;
    app.stop().await;
}

#[tokio::test]
async fn row_body_too_slow() {
    let app = receiver().await;
    let mut stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    // Announces 100 bytes, sends 10, then waits: the receiver answers when its request
    // timeout passes.
    stream
        .write_all(
            b"POST /v1/notifications/relay HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"type\":\"a",
        )
        .await
        .expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(crate::helpers::WAIT, async {
        let mut buffer = [0u8; 4096];
        loop {
            let n = stream.read(&mut buffer).await.expect("read");
            answer.extend_from_slice(&buffer[..n]);
            if n == 0 || answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the receiver answered");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("urn:puhuri-approver:problem:request-timeout"),
        "{text}"
    );
    assert_eq!(app.work_queue_depth().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn row_missing_signature_header() {
    let app = receiver().await;
    let body = allocation(ORDER);
    let mut headers = signed("msg_1", &body);
    headers.retain(|(name, _)| *name != "webhook-signature");
    let response = post(&app, "/v1/notifications/relay", &headers, body).await;
    assert_refused(&app, response, 401, "missing-signature-header").await;
    app.stop().await;
}

#[tokio::test]
async fn row_malformed_id() {
    let app = receiver().await;
    let body = allocation(ORDER);
    let response = post(
        &app,
        "/v1/notifications/relay",
        &signed(&"x".repeat(300), &body),
        body,
    )
    .await;
    assert_refused(&app, response, 401, "malformed-id").await;
    app.stop().await;
}

#[tokio::test]
async fn row_malformed_timestamp() {
    let app = receiver().await;
    let body = allocation(ORDER);
    let mut headers = signed("msg_1", &body);
    headers[2].1 = format!("+{}", now());
    let response = post(&app, "/v1/notifications/relay", &headers, body).await;
    assert_refused(&app, response, 401, "malformed-timestamp").await;
    app.stop().await;
}

#[tokio::test]
async fn row_stale_timestamp() {
    let app = receiver().await;
    let body = allocation(ORDER);
    let secret = WebhookSecret::parse(SECRET).expect("secret");
    for ts in [now() - 310, now() + 310] {
        let headers = vec![
            ("content-type", "application/json".to_owned()),
            ("webhook-id", "msg_1".to_owned()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", secret.sign("msg_1", ts, &body)),
        ];
        let response = post(&app, "/v1/notifications/relay", &headers, body.clone()).await;
        assert_refused(&app, response, 401, "stale-timestamp").await;
    }
    app.stop().await;
}

#[tokio::test]
async fn row_bad_signature() {
    let app = receiver().await;
    let body = allocation(ORDER);
    let other = WebhookSecret::parse("whsec_bG9jYWwtZGVtby1zZWNyZXQtbm90LWZvci1wcm9kdWN0aW9u")
        .expect("secret");
    let ts = now();
    let headers = vec![
        ("content-type", "application/json".to_owned()),
        ("webhook-id", "msg_1".to_owned()),
        ("webhook-timestamp", ts.to_string()),
        ("webhook-signature", other.sign("msg_1", ts, &body)),
    ];
    let response = post(&app, "/v1/notifications/relay", &headers, body).await;
    assert_refused(&app, response, 401, "bad-signature").await;
    app.stop().await;
}

#[tokio::test]
async fn row_too_many_signatures() {
    let app = receiver().await;
    let body = allocation(ORDER);
    let mut headers = signed("msg_1", &body);
    headers[3].1 = vec![headers[3].1.clone(); 9].join(" ");
    let response = post(&app, "/v1/notifications/relay", &headers, body).await;
    assert_refused(&app, response, 401, "signature-header-too-large").await;
    app.stop().await;
}

#[tokio::test]
async fn row_github_signature_not_matching() {
    let app = receiver().await;
    let body = allocation(ORDER);
    let headers = vec![
        ("content-type", "application/json".to_owned()),
        ("x-github-delivery", "d-1".to_owned()),
        (
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".to_owned(),
        ),
    ];
    let response = post(&app, "/v1/notifications/gh", &headers, body).await;
    assert_refused(&app, response, 401, "bad-signature").await;
    app.stop().await;
}

#[tokio::test]
async fn row_github_signature_malformed() {
    let app = receiver().await;
    let headers = vec![
        ("content-type", "application/json".to_owned()),
        ("x-github-delivery", "d-1".to_owned()),
        ("x-hub-signature-256", "sha1=abc".to_owned()),
    ];
    let response = post(&app, "/v1/notifications/gh", &headers, allocation(ORDER)).await;
    assert_refused(&app, response, 401, "malformed-signature").await;
    app.stop().await;
}

#[tokio::test]
async fn row_path_secret_wrong_or_missing() {
    let app = receiver().await;
    let hook = br#"{"event_type":"marketplace_order_created","context":{"order_uuid":"0bd3a4ee3c0a4b4d8f0c6b2f6f1e2a11"}}"#;
    let json = [("content-type", "application/json".to_owned())];
    let wrong = format!("/v1/notifications/waldur/{}x", &PATH_SECRET[1..]);
    let response = post(&app, &wrong, &json, hook.to_vec()).await;
    assert_refused(&app, response, 401, "bad-path-secret").await;
    let response = post(&app, "/v1/notifications/waldur", &json, hook.to_vec()).await;
    assert_refused(&app, response, 401, "bad-path-secret").await;
    app.stop().await;
}

#[tokio::test]
async fn row_empty_body() {
    signed_refusal(b"", 400, "empty-body").await;
}

#[tokio::test]
async fn row_invalid_utf8() {
    signed_refusal(
        b"{\"type\":\"allocation.created\xff\"}",
        400,
        "invalid-utf8",
    )
    .await;
}

#[tokio::test]
async fn row_not_json() {
    signed_refusal(b"{\"type\": allocation.created}", 400, "malformed-json").await;
}

#[tokio::test]
async fn row_trailing_garbage() {
    let mut body = allocation(ORDER);
    body.extend_from_slice(b" {}");
    signed_refusal(&body, 400, "malformed-json").await;
}

#[tokio::test]
async fn row_too_deeply_nested() {
    let body = format!(
        r#"{{"type":"allocation.created","order_uuid":"{ORDER}","x":{}{}}}"#,
        "[".repeat(40),
        "]".repeat(40)
    );
    signed_refusal(body.as_bytes(), 400, "too-deeply-nested").await;
}

#[tokio::test]
async fn row_huge_number() {
    let body = format!(
        r#"{{"type":"allocation.created","order_uuid":{}}}"#,
        "9".repeat(400)
    );
    signed_refusal(body.as_bytes(), 400, "number-too-large").await;
}

#[tokio::test]
async fn row_wrong_json_type() {
    signed_refusal(
        br#"{"type":"allocation.created","order_uuid":["0bd3a4ee3c0a4b4d8f0c6b2f6f1e2a11"]}"#,
        422,
        "invalid-payload",
    )
    .await;
}

#[tokio::test]
async fn row_unknown_field() {
    let body = format!(r#"{{"type":"allocation.created","order_uuid":"{ORDER}","extra":1}}"#);
    signed_refusal(body.as_bytes(), 422, "invalid-payload").await;
}

#[tokio::test]
async fn row_unknown_event_type() {
    let body = format!(r#"{{"type":"allocation.deleted","order_uuid":"{ORDER}"}}"#);
    signed_refusal(body.as_bytes(), 422, "unknown-event-type").await;
}

#[tokio::test]
async fn row_malformed_uuid() {
    signed_refusal(&allocation("0bd3a4ee-nope"), 422, "invalid-uuid").await;
}

#[tokio::test]
async fn row_missing_uuid() {
    signed_refusal(br#"{"type":"allocation.created"}"#, 422, "no-allocation").await;
}

#[tokio::test]
async fn row_waldur_stringly_values() {
    let app = receiver().await;
    let path = format!("/v1/notifications/waldur/{PATH_SECRET}");
    let json = [("content-type", "application/json".to_owned())];
    let false_uuid = br#"{"event_type":"marketplace_order_created","context":{"order_uuid":"False","offering_shared":"True"}}"#;
    let response = post(&app, &path, &json, false_uuid.to_vec()).await;
    assert_refused(&app, response, 422, "invalid-uuid").await;
    let none_uuids = br#"{"event_type":"marketplace_order_created","context":{"order_uuid":"None","resource_uuid":"None"}}"#;
    let response = post(&app, &path, &json, none_uuids.to_vec()).await;
    assert_refused(&app, response, 422, "no-allocation").await;
    app.stop().await;
}

#[tokio::test]
async fn row_waldur_event_of_no_interest() {
    let app = receiver().await;
    let path = format!("/v1/notifications/waldur/{PATH_SECRET}");
    let body = br#"{"event_type":"user_password_updated","context":{"user_uuid":"None"}}"#;
    let response = post(
        &app,
        &path,
        &[("content-type", "application/json".to_owned())],
        body.to_vec(),
    )
    .await;
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(
        answer,
        json!({"status": "ignored", "event_type": "user_password_updated"})
    );
    assert_eq!(app.work_queue_depth().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn row_replay_is_answered_duplicate_and_not_queued_again() {
    let app = receiver().await;
    let body = allocation(ORDER);
    let headers = signed("msg_replay", &body);
    let first = post(&app, "/v1/notifications/relay", &headers, body.clone()).await;
    assert_eq!(first.status(), 202);
    let replay = post(&app, "/v1/notifications/relay", &headers, body.clone()).await;
    assert_eq!(replay.status(), 200);
    let answer: Value = replay.json().await.expect("json");
    assert_eq!(answer, json!({"status": "duplicate", "id": "msg_replay"}));
    // The same id re-signed later (a sender's retry) is a duplicate too.
    let retry = post(
        &app,
        "/v1/notifications/relay",
        &signed("msg_replay", &body),
        body,
    )
    .await;
    assert_eq!(retry.status(), 200);
    assert_eq!(app.work_queue_depth().await, 1);
    let stats = &app.running.as_ref().expect("running").stats;
    assert_eq!(
        stats.duplicates.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    app.stop().await;
}

#[tokio::test]
async fn row_identical_requests_at_once_queue_once() {
    let app = receiver().await;
    let body = allocation(ORDER);
    let headers = signed("msg_twice", &body);
    let (a, b) = tokio::join!(
        post(&app, "/v1/notifications/relay", &headers, body.clone()),
        post(&app, "/v1/notifications/relay", &headers, body.clone()),
    );
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort_unstable();
    assert!(
        statuses == [200, 202] || statuses == [202, 409],
        "{statuses:?}"
    );
    assert_eq!(app.work_queue_depth().await, 1);
    app.stop().await;
}

#[tokio::test]
async fn row_broker_unavailable() {
    let app = spawn_app(Options {
        roles: Roles {
            receive: true,
            work: false,
        },
        amqp_url: Some("amqp://guest:guest@127.0.0.1:1/%2f".into()),
        expect_broker: false,
        ..Options::default()
    })
    .await;
    let body = allocation(ORDER);
    let response = post(
        &app,
        "/v1/notifications/relay",
        &signed("msg_1", &body),
        body,
    )
    .await;
    assert_eq!(response.status(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("5")
    );
    let problem: Value = response.json().await.expect("json");
    assert_eq!(
        problem["type"],
        json!("urn:puhuri-approver:problem:broker-unavailable")
    );
    // Nothing was remembered: the sender's retry is not a duplicate.
    let body = allocation(ORDER);
    let retry = post(
        &app,
        "/v1/notifications/relay",
        &signed("msg_1", &body),
        body,
    )
    .await;
    assert_eq!(retry.status(), 503);
    app.stop().await;
}

/// GitHub-style headers for `body` under `delivery`, signed with the test secret.
fn github_signed(delivery: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    let signature = GithubSecret::parse(GITHUB_SECRET)
        .expect("secret")
        .sign(body);
    vec![
        ("content-type", "application/json".to_owned()),
        ("x-github-delivery", delivery.to_owned()),
        ("x-hub-signature-256", signature),
    ]
}

#[tokio::test]
async fn row_github_replay_with_a_fresh_delivery_id_is_a_duplicate() {
    let app = receiver().await;
    let body = allocation(ORDER);
    let first = post(
        &app,
        "/v1/notifications/gh",
        &github_signed("d-original", &body),
        body.clone(),
    )
    .await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.expect("json");
    // The captured request replayed with a fresh (unsigned) delivery id.
    let replay = post(
        &app,
        "/v1/notifications/gh",
        &github_signed("d-forged-fresh", &body),
        body.clone(),
    )
    .await;
    assert_eq!(replay.status(), 200);
    let replay: Value = replay.json().await.expect("json");
    assert_eq!(
        replay,
        json!({"status": "duplicate", "id": first["id"].clone()})
    );
    assert_eq!(app.work_queue_depth().await, 1);
    // A distinct body, even under the first delivery id, is a distinct notification with
    // an id of its own.
    let other = json!({"type": "allocation.pending", "order_uuid": ORDER})
        .to_string()
        .into_bytes();
    let response = post(
        &app,
        "/v1/notifications/gh",
        &github_signed("d-original", &other),
        other,
    )
    .await;
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.expect("json");
    assert_ne!(answer["id"], first["id"]);
    assert_eq!(app.work_queue_depth().await, 2);
    let stats = &app.running.as_ref().expect("running").stats;
    assert_eq!(
        stats.duplicates.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    app.stop().await;
}

/// Posts with header values given as raw bytes (reqwest refuses non-ASCII `&str` values).
async fn post_raw_headers(
    app: &TestApp,
    path: &str,
    headers: &[(&'static str, Vec<u8>)],
    body: Vec<u8>,
) -> reqwest::Response {
    let mut request = app.http.post(app.url(path));
    for (name, value) in headers {
        let value = reqwest::header::HeaderValue::from_bytes(value).expect("header value");
        request = request.header(*name, value);
    }
    request.body(body).send().await.expect("receiver answers")
}

#[tokio::test]
async fn row_signature_header_not_ascii() {
    let app = receiver().await;
    let body = allocation(ORDER);
    // A webhook-id with a non-ASCII byte: present, not missing.
    let mut headers: Vec<(&'static str, Vec<u8>)> = signed("msg_1", &body)
        .into_iter()
        .map(|(name, value)| (name, value.into_bytes()))
        .collect();
    headers[1].1 = "msg_\u{e9}".as_bytes().to_vec();
    let response = post_raw_headers(&app, "/v1/notifications/relay", &headers, body.clone()).await;
    assert_refused(&app, response, 400, "invalid-header-value").await;
    // The same for the GitHub scheme's delivery id and signature.
    for at in [1, 2] {
        let mut headers: Vec<(&'static str, Vec<u8>)> = github_signed("d-1", &body)
            .into_iter()
            .map(|(name, value)| (name, value.into_bytes()))
            .collect();
        headers[at].1.extend_from_slice("\u{e9}".as_bytes());
        let response = post_raw_headers(&app, "/v1/notifications/gh", &headers, body.clone()).await;
        assert_refused(&app, response, 400, "invalid-header-value").await;
    }
    app.stop().await;
}

/// A publisher that keeps what it is given, for a receiver served without a broker.
#[derive(Default)]
struct Kept(Mutex<Vec<puhuri_approver::notification::WorkItem>>);

impl puhuri_approver::receiver::Publisher for Kept {
    fn publish<'a>(
        &'a self,
        item: &'a puhuri_approver::notification::WorkItem,
    ) -> puhuri_approver::receiver::PublishFuture<'a> {
        Box::pin(async move {
            self.0.lock().expect("kept lock").push(item.clone());
            Ok(())
        })
    }

    fn is_connected(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn row_ipv4_mapped_peer_matches_ipv4_networks() {
    use puhuri_approver::config::{
        PayloadFormat, RateLimit, ReceiverConfig, SourceAuth, SourceConfig,
    };
    let source = |name: &str, network: &str| SourceConfig {
        name: name.to_owned(),
        format: PayloadFormat::Allocation,
        auth: SourceAuth::None,
        allowed_networks: vec![network.parse().expect("network")],
        rate_limit: RateLimit {
            per_sec: 50,
            burst: 100,
        },
        replay_window: std::time::Duration::from_secs(3600),
    };
    let sources = [
        source("loopback", "127.0.0.0/8"),
        source("far", "192.0.2.0/24"),
    ];
    let kept = Arc::new(Kept::default());
    let router = puhuri_approver::receiver::router_with(
        &ReceiverConfig::default(),
        &sources,
        kept.clone(),
        Arc::default(),
    );
    // A dual-stack `[::]` listener: an IPv4 client arrives as `::ffff:127.0.0.1`.
    let listener = tokio::net::TcpListener::bind("[::]:0")
        .await
        .expect("bind [::]");
    let port = listener.local_addr().expect("addr").port();
    let stop = tokio_util::sync::CancellationToken::new();
    let served = tokio::spawn(puhuri_approver::receiver::serve(
        listener,
        router,
        None,
        std::time::Duration::from_secs(5),
        stop.clone(),
    ));
    let http = reqwest::Client::new();
    let send = |source: &str| {
        http.post(format!("http://127.0.0.1:{port}/v1/notifications/{source}"))
            .header("content-type", "application/json")
            .body(allocation(ORDER))
            .send()
    };
    let allowed = send("loopback").await.expect("answer");
    assert_eq!(allowed.status(), 202, "{:?}", allowed.text().await);
    // Still refused when the mapped address is outside the IPv4 network.
    let refused = send("far").await.expect("answer");
    assert_eq!(refused.status(), 403);
    assert_eq!(kept.0.lock().expect("kept lock").len(), 1);
    stop.cancel();
    served.await.expect("serve task").expect("serve");
}

// ---- the accepted schemes end to end ------------------------------------------------

#[tokio::test]
async fn github_vector_authenticates_and_a_flipped_one_does_not() {
    let app = receiver().await;
    let headers = |signature: &str| {
        vec![
            ("content-type", "application/json".to_owned()),
            (
                "x-github-delivery",
                "72d3162e-cc78-11e3-81ab-4c9367dc0958".to_owned(),
            ),
            ("x-hub-signature-256", signature.to_owned()),
        ]
    };
    let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    let flipped = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e18";
    // The vector's body is not a notification: authenticated, then refused as not JSON.
    let response = post(
        &app,
        "/v1/notifications/gh",
        &headers(good),
        b"Hello, World!".to_vec(),
    )
    .await;
    assert_refused(&app, response, 400, "malformed-json").await;
    let response = post(
        &app,
        "/v1/notifications/gh",
        &headers(flipped),
        b"Hello, World!".to_vec(),
    )
    .await;
    assert_refused(&app, response, 401, "bad-signature").await;

    let body = allocation(ORDER);
    let signature = GithubSecret::parse(GITHUB_SECRET)
        .expect("secret")
        .sign(&body);
    let response = post(&app, "/v1/notifications/gh", &headers(&signature), body).await;
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["status"], json!("queued"));
    // The id is derived from the signed body, not from the unsigned delivery id.
    assert!(
        answer["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("gh_")),
        "{answer}"
    );
    assert_eq!(app.work_queue_depth().await, 1);
    app.stop().await;
}

#[tokio::test]
async fn waldur_hook_with_the_path_secret_is_queued_once() {
    let app = receiver().await;
    let path = format!("/v1/notifications/waldur/{PATH_SECRET}");
    let hook = format!(
        r#"{{"created":"2026-01-01T00:00:00Z","event_type":"marketplace_order_created","context":{{"order_uuid":"{ORDER}","resource_uuid":"None","is_industry":"False"}}}}"#
    );
    let json = [("content-type", "application/json".to_owned())];
    let response = post(&app, &path, &json, hook.clone().into_bytes()).await;
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.expect("json");
    assert!(
        answer["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("wh_")),
        "{answer}"
    );
    // Waldur sends the same hook body again: the derived id makes it a duplicate.
    let again = post(&app, &path, &json, hook.into_bytes()).await;
    assert_eq!(again.status(), 200);
    assert_eq!(app.work_queue_depth().await, 1);
    app.stop().await;
}

// ---- secret hygiene -------------------------------------------------------------------

/// Captures every log line of the process (receiver, workers, broker client, simulator;
/// successes and failures) at `debug` and checks that no secret appears in it.
#[tokio::test]
async fn no_secret_or_token_appears_in_the_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");

    let mut app = spawn_app(Options {
        extra_config: extra_config(),
        sim_hook: true,
        max_attempts: 1,
        ..Options::default()
    })
    .await;
    // Accepted and decided.
    let created = app.create(json!({"cpu_k_hours": 10})).await;
    assert_eq!(app.notify("msg_logs_ok", &created).await.status(), 202);
    app.settled("msg_logs_ok").await;
    // An allocation Puhuri Core does not know: dead-lettered.
    let unknown = allocation("ffffffffffffffffffffffffffffffff");
    let response = post(
        &app,
        "/v1/notifications/relay",
        &signed("msg_logs_dead", &unknown),
        unknown,
    )
    .await;
    assert_eq!(response.status(), 202);
    app.settled("msg_logs_dead").await;
    // Refusals of every scheme.
    let body = allocation(ORDER);
    let mut forged = signed("msg_forged", &body);
    forged[3].1 = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=".into();
    let response = post(&app, "/v1/notifications/relay", &forged, body.clone()).await;
    assert_eq!(response.status(), 401);
    let wrong_path = format!("/v1/notifications/waldur/{}", &PATH_SECRET[..35]);
    let json_only = [("content-type", "application/json".to_owned())];
    let response = post(&app, &wrong_path, &json_only, body.clone()).await;
    assert_eq!(response.status(), 401);
    let good_path = format!("/v1/notifications/waldur/{PATH_SECRET}");
    let response = post(&app, &good_path, &json_only, b"{".to_vec()).await;
    assert_eq!(response.status(), 400);
    let gh = vec![
        ("content-type", "application/json".to_owned()),
        ("x-github-delivery", "d-logs".to_owned()),
        ("x-hub-signature-256", format!("sha256={}", "0".repeat(64))),
    ];
    let response = post(&app, "/v1/notifications/gh", &gh, body.clone()).await;
    assert_eq!(response.status(), 401);
    app.stop().await;

    // The broker away: 503.
    let down = spawn_app(Options {
        roles: Roles {
            receive: true,
            work: false,
        },
        amqp_url: Some("amqp://guest:guest@127.0.0.1:1/%2f".into()),
        expect_broker: false,
        ..Options::default()
    })
    .await;
    let response = post(
        &down,
        "/v1/notifications/relay",
        &signed("msg_logs_503", &body),
        body,
    )
    .await;
    assert_eq!(response.status(), 503);
    down.stop().await;

    let logs = String::from_utf8_lossy(&captured.0.lock().expect("capture lock")).into_owned();
    // The service's own lines (not its libraries' debug output) are written for people.
    let own: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains(" puhuri_"))
        .collect();
    assert!(!own.is_empty(), "no line of the service was captured");
    crate::helpers::assert_for_people("the service's log lines", &own.join("\n"));
    for expected in [
        "notification queued",
        "notification refused",
        "msg_logs_dead",
    ] {
        assert!(logs.contains(expected), "the capture misses `{expected}`");
    }
    let secrets = [
        SECRET,
        &SECRET["whsec_".len()..],
        GITHUB_SECRET,
        PATH_SECRET,
        &PATH_SECRET[..35],
        TOKEN,
        "guest:guest",
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
    ];
    for secret in secrets {
        assert!(
            !logs.contains(secret),
            "a secret appears in the logs: {}",
            logs.lines()
                .find(|line| line.contains(secret))
                .unwrap_or_default()
                .replace(secret, "<the secret>")
        );
    }
}

/// Every string inside a JSON value, keys included.
fn json_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(text) => out.push(text.clone()),
        Value::Array(items) => items.iter().for_each(|item| json_strings(item, out)),
        Value::Object(map) => {
            for (key, item) in map {
                out.push(key.clone());
                json_strings(item, out);
            }
        }
        _ => {}
    }
}

/// An unknown source segment with a newline, a terminal escape or a path secret behind an
/// encoded `/` is logged as `unknown` with an escaped, capped, cut form: no forged line,
/// no escape, no secret, in text and in JSON logs.
#[tokio::test]
async fn row_unknown_source_segment_is_logged_escaped() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let text = Captured::default();
    let json_log = Captured::default();
    let (text_writer, json_writer) = (text.clone(), json_log.clone());
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("debug"))
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || text_writer.clone()),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .with_writer(move || json_writer.clone()),
        );
    // tracing caches each callsite's interest. While a single dispatcher is registered it
    // asks only the calling thread's default, so a callsite first hit on another test's
    // thread would stay disabled for this thread-local subscriber. A second live
    // dispatcher makes every interest the union over all registered dispatchers.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    // Scoped to this test's thread, on which the current-thread runtime runs the receiver.
    let _logs = tracing::subscriber::set_default(subscriber);

    let app = receiver().await;
    let json_only = [("content-type", "application/json".to_owned())];
    for path in [
        "/v1/notifications/%0Aforged%1B[31m".to_owned(),
        format!("/v1/notifications/waldur%2F{PATH_SECRET}"),
        format!("/v1/notifications/{PATH_SECRET}"),
    ] {
        let response = post(&app, &path, &json_only, allocation(ORDER)).await;
        assert_refused(&app, response, 404, "unknown-source").await;
    }
    app.stop().await;

    let text = String::from_utf8(text.0.lock().expect("capture lock").clone()).expect("utf-8");
    let json_text =
        String::from_utf8(json_log.0.lock().expect("capture lock").clone()).expect("utf-8");
    let refusals: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("notification refused"))
        .collect();
    assert_eq!(refusals.len(), 3, "{text}");
    assert!(
        refusals
            .iter()
            .all(|line| line.contains("source=\"unknown\"") || line.contains("source=unknown")),
        "{refusals:#?}"
    );
    assert!(
        text.contains("%0Aforged%1B%5B31m")
            && text.contains("waldur/…")
            && text.contains("…(41 bytes)"),
        "the escaped segments are logged: {text}"
    );
    for line in text.lines() {
        assert!(!line.starts_with("forged"), "a forged log line: {line:?}");
        assert!(!line.contains('\u{1b}'), "a terminal escape: {line:?}");
    }
    for (format, captured) in [("text", &text), ("json", &json_text)] {
        // Not even a prefix of it (`waldur-path-secret-0`).
        for secret in [PATH_SECRET, &PATH_SECRET[..20]] {
            assert!(
                !captured.contains(secret),
                "the path secret is in the {format} log"
            );
        }
    }
    let mut lines = 0;
    for line in json_text.lines() {
        let value: Value = serde_json::from_str(line).expect("every JSON log line is JSON");
        let mut strings = Vec::new();
        json_strings(&value, &mut strings);
        for string in strings {
            assert!(
                !string.chars().any(char::is_control),
                "a control character in a JSON log value: {string:?}"
            );
        }
        lines += 1;
    }
    assert!(
        json_text.matches("notification refused").count() == 3 && lines > 3,
        "{json_text}"
    );
}

#[tokio::test]
async fn a_client_that_sends_its_headers_too_slowly_is_disconnected() {
    let app = spawn_app(Options {
        roles: Roles {
            receive: true,
            work: false,
        },
        extra_config: "[receiver]\nrequest_timeout_ms = 300\n".into(),
        ..Options::default()
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    // The request line and one header, then nothing: the headers never end.
    stream
        .write_all(b"POST /v1/notifications/relay HTTP/1.1\r\nHost: receiver\r\n")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "the receiver closed the connection");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(app.work_queue_depth().await, 0);
    app.stop().await;
}

// ---- refusals by the HTTP layer, over a raw socket -----------------------------------
// Clients refuse to send these requests, so they are written byte by byte. Each answer
// must be a problem like the handler's, not hyper's bare status.

/// One answer read from a raw connection.
struct RawAnswer {
    status: u16,
    head: String,
    body: String,
}

/// Whether `bytes` hold a whole answer: its head and `content-length` bytes of body.
fn whole_answer(bytes: &[u8]) -> Option<usize> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (bytes.len() >= end + length).then_some(end)
}

/// Sends `request` as it is on a new connection and reads the first answer.
async fn send_raw(app: &TestApp, request: &[u8]) -> RawAnswer {
    let mut stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    // The receiver may answer and close before it read all of a refused request.
    let _ = stream.write_all(request).await;
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(crate::helpers::WAIT, async {
        let mut buffer = [0u8; 8192];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => bytes.extend_from_slice(&buffer[..n]),
            }
            if let Some(end) = whole_answer(&bytes) {
                return Some(end);
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let end = read
        .expect("an answer in time")
        .unwrap_or_else(|| panic!("no whole answer before the connection ended: {text:?}"));
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {text:?}"));
    RawAnswer {
        status,
        head: text[..end].to_ascii_lowercase(),
        body: text[end..].to_owned(),
    }
}

/// Asserts a problem answer read from a raw connection, then that nothing was queued and
/// that the refusal was counted by its cause.
async fn assert_raw_refused(app: &TestApp, answer: RawAnswer, status: u16, cause: &str) {
    assert_eq!(answer.status, status, "{}{}", answer.head, answer.body);
    assert!(
        answer
            .head
            .contains("content-type: application/problem+json\r\n"),
        "{}",
        answer.head
    );
    let body: Value = serde_json::from_str(&answer.body).expect("problem json");
    assert_problem_counted(app, &body, status, cause).await;
}

/// A signed request for `relay` with `extra` header lines, as raw bytes.
fn raw_request(target: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut head = format!("POST {target} HTTP/1.1\r\nhost: receiver\r\n");
    for (name, value) in signed("msg_raw", body) {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(extra);
    head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

#[tokio::test]
async fn row_more_header_lines_than_the_http_layer_reads() {
    let app = receiver().await;
    let extra: String = (0..150).map(|i| format!("x-extra-{i}: 1\r\n")).collect();
    let answer = send_raw(
        &app,
        &raw_request("/v1/notifications/relay", &extra, &allocation(ORDER)),
    )
    .await;
    assert_raw_refused(&app, answer, 431, "headers-too-large").await;
    app.stop().await;
}

#[tokio::test]
async fn row_head_over_the_http_layer_bound() {
    let app = receiver().await;
    // 80 KiB in one header: just over the 80 KiB bound on request line and headers
    // together; 128 KiB: also over what the connection's read buffer once let through.
    for padding in [80 * 1024, 128 * 1024] {
        let extra = format!("x-padding: {}\r\n", "a".repeat(padding));
        let answer = send_raw(
            &app,
            &raw_request("/v1/notifications/relay", &extra, &allocation(ORDER)),
        )
        .await;
        assert_raw_refused(&app, answer, 431, "headers-too-large").await;
    }
    app.stop().await;
}

#[tokio::test]
async fn row_uri_too_long() {
    let app = receiver().await;
    let target = format!("/v1/notifications/relay?pad={}", "a".repeat(70 * 1024));
    let answer = send_raw(&app, &raw_request(&target, "", &allocation(ORDER))).await;
    assert_raw_refused(&app, answer, 414, "uri-too-long").await;
    app.stop().await;
}

#[tokio::test]
async fn row_malformed_request() {
    let app = receiver().await;
    let body = allocation(ORDER);
    let malformed: Vec<Vec<u8>> = vec![
        // A request line that is not `method target version`.
        b"POST /v1/notifications/relay HTTP/1.1 and more\r\nhost: receiver\r\n\r\n".to_vec(),
        b"P@ST /v1/notifications/relay HTTP/1.1\r\nhost: receiver\r\n\r\n".to_vec(),
        b"POST /v1/notifications/relay HTTP/7.0\r\nhost: receiver\r\n\r\n".to_vec(),
        // A header name with a space, a header line without a colon.
        raw_request("/v1/notifications/relay", "bad header: 1\r\n", &body),
        raw_request("/v1/notifications/relay", "no-colon\r\n", &body),
        // Framing: an invalid length, two different lengths.
        b"POST /v1/notifications/relay HTTP/1.1\r\nhost: receiver\r\ncontent-length: ten\r\n\r\n"
            .to_vec(),
        raw_request("/v1/notifications/relay", "content-length: 3\r\n", &body),
    ];
    for request in malformed {
        let answer = send_raw(&app, &request).await;
        assert_raw_refused(&app, answer, 400, "malformed-request").await;
    }
    app.stop().await;
}

#[tokio::test]
async fn row_bad_chunked_framing() {
    let app = receiver().await;
    let request = b"POST /v1/notifications/relay HTTP/1.1\r\nhost: receiver\r\n\
        content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n\
        zz\r\n{}\r\n0\r\n\r\n";
    let answer = send_raw(&app, request).await;
    assert_raw_refused(&app, answer, 400, "unreadable-body").await;
    app.stop().await;
}

#[tokio::test]
async fn row_chunked_body_too_large() {
    let app = receiver().await;
    // No `Content-Length`: the limit is found while the body streams in.
    let mut request = b"POST /v1/notifications/relay HTTP/1.1\r\nhost: receiver\r\n\
        content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        .to_vec();
    let chunk = vec![b' '; 16 * 1024];
    for _ in 0..17 {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(&chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = send_raw(&app, &request).await;
    assert_raw_refused(&app, answer, 413, "body-too-large").await;
    app.stop().await;
}

#[tokio::test]
async fn a_refusal_after_an_answer_on_the_same_connection_is_a_problem_too() {
    let app = receiver().await;
    let mut stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    // A good request, then (on the same kept-alive connection) a malformed one.
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: receiver\r\n\r\n")
        .await
        .expect("write");
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 8192];
    tokio::time::timeout(crate::helpers::WAIT, async {
        loop {
            let n = stream.read(&mut buffer).await.expect("read");
            assert!(n > 0, "the connection stays open");
            bytes.extend_from_slice(&buffer[..n]);
            if whole_answer(&bytes).is_some() {
                return;
            }
        }
    })
    .await
    .expect("the first answer");
    assert!(bytes.starts_with(b"HTTP/1.1 200 "), "{bytes:?}");
    stream
        .write_all(b"POST /v1/notifications/relay HTTP/1.1 and more\r\n\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    tokio::time::timeout(crate::helpers::WAIT, stream.read_to_end(&mut rest))
        .await
        .expect("the second answer")
        .expect("read");
    let text = String::from_utf8_lossy(&rest).into_owned();
    let end = whole_answer(&rest).unwrap_or_else(|| panic!("a whole answer: {text:?}"));
    let answer = RawAnswer {
        status: text[9..12].parse().expect("status"),
        head: text[..end].to_ascii_lowercase(),
        body: text[end..].to_owned(),
    };
    assert_raw_refused(&app, answer, 400, "malformed-request").await;
    app.stop().await;
}
