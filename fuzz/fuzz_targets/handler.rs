//! The whole receiver (router, limits, authentication, parsing, replay cache) on arbitrary
//! requests, publishing into memory instead of RabbitMQ.
//!
//! Input: byte 0 picks the path, byte 1 holds flags (bit 0: sign the request correctly
//! for its source, so that fuzzing reaches the parsers behind authentication; bit 1: add
//! `content-type: application/json`; bit 2: the publisher fails), then `name: value`
//! header lines, an empty line, and the body.
//!
//! Checked besides not panicking: every answer is one the docs list, every refusal is
//! `application/problem+json`, and only a `202 queued` adds to the queue.
#![no_main]

use std::sync::OnceLock;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use puhuri_auth::signature::{GithubSecret, WebhookSecret};
use tower::ServiceExt;

#[path = "common/receiver.rs"]
mod common;
use common::{GITHUB_SECRET, Harness, PATH_SECRET, WEBHOOK_SECRET};

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| Harness::new(false))
}

const PATHS: &[&str] = &[
    "/v1/notifications/sw",
    "/v1/notifications/gh",
    "/v1/notifications/hook/fuzz-path-secret-0123456789abcdefghij",
    "/v1/notifications/hook/wrong",
    "/v1/notifications/open",
    "/v1/notifications/lan",
    "/v1/notifications/nope",
    "/v1/notifications/sw/extra",
    "/readyz",
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let path = PATHS[usize::from(data[0]) % PATHS.len()];
    let flags = data[1];
    let rest = &data[2..];
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&rest[..at], &rest[at + 2..]),
        None => (&rest[..0], rest),
    };

    let mut builder = Request::builder().method("POST").uri(path);
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        builder = builder.header(name, value);
    }
    if flags & 2 != 0 {
        builder = builder.header("content-type", "application/json");
    }
    if flags & 1 != 0 {
        let id = "msg_fuzz";
        if path.ends_with("/sw") {
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let secret = WebhookSecret::parse(WEBHOOK_SECRET).expect("secret");
            builder = builder
                .header("webhook-id", id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", secret.sign(id, ts, body));
        } else if path.ends_with("/gh") {
            let secret = GithubSecret::parse(GITHUB_SECRET).expect("secret");
            builder = builder
                .header("x-github-delivery", id)
                .header("x-hub-signature-256", secret.sign(body));
        }
    }
    // Header names or values the HTTP layer itself would refuse never reach the handler.
    let Ok(request) = builder.body(Body::from(body.to_vec())) else {
        return;
    };

    let harness = harness();
    harness
        .publisher
        .fail
        .store(flags & 4 != 0, Ordering::Relaxed);
    let before = harness.publisher.items.lock().map(|i| i.len()).unwrap_or(0);
    let response = harness
        .runtime
        .block_on(harness.router.clone().oneshot(request))
        .expect("the router is infallible");
    let after = harness.publisher.items.lock().map(|i| i.len()).unwrap_or(0);

    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if status.is_client_error() || status.is_server_error() {
        assert_eq!(content_type, "application/problem+json", "{status}");
    }
    assert!(
        matches!(
            status.as_u16(),
            200 | 202 | 400 | 401 | 403 | 404 | 405 | 408 | 409 | 413 | 415 | 422 | 429 | 431 | 503
        ),
        "unexpected {status}"
    );
    if status != StatusCode::ACCEPTED {
        assert_eq!(before, after, "{status} queued something");
    } else {
        assert!(after == before || after == before + 1);
    }
    let _ = PATH_SECRET;
});
