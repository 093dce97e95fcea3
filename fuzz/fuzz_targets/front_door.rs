//! The receiver's front door: bytes on a connection, through hyper, the connection layer
//! (`receiver::serve_connection`, which answers hyper's own refusals) and the whole router,
//! publishing into memory instead of RabbitMQ. Time is tokio's paused clock, so the
//! header and body timeouts pass as soon as nothing else can happen.
//!
//! Input: byte 0 picks the method, byte 1 the path, byte 2 holds flags, byte 3 a repeat
//! count; then `name: value` header lines, an empty line, and the body. Flags:
//! - bit 0: sign the request correctly for its source (so that the parsers behind
//!   authentication are reached);
//! - bit 1: add `content-type: application/json`;
//! - bit 2: send the body chunked, in chunks whose sizes the body's own bytes pick;
//! - bit 3: send the request again on the same connection, with an unsigned header added:
//!   a replay;
//! - bit 4: repeat the first header line (byte 3 × 4 times, to reach the header limits);
//! - bit 5: the publisher fails;
//! - bit 6: the peer is inside the `lan` source's network;
//! - bit 7: raw: everything after byte 3 is written to the connection as it is.
//!
//! Checked besides not panicking: every answer is whole and one the docs list; every
//! non-2xx is `application/problem+json` with a `urn:puhuri-approver:problem:` type; nothing
//! is queued for a signed source unless the harness signed it (or sent the path secret);
//! a replay is never queued a second time.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use libfuzzer_sys::fuzz_target;
use puhuri_approver::notification::WorkItem;
use puhuri_approver::receiver::{self, MemoryPublisher};
use puhuri_auth::signature::{GithubSecret, WebhookSecret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

#[path = "common/receiver.rs"]
mod common;
use common::{GITHUB_SECRET, Harness, PATH_SECRET, WEBHOOK_SECRET};

const METHODS: &[&str] = &[
    "POST", "GET", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "P@ST",
];

const PATHS: &[&str] = &[
    "/v1/notifications/sw",
    "/v1/notifications/gh",
    "/v1/notifications/hook/fuzz-path-secret-0123456789abcdefghij",
    "/v1/notifications/hook/wrong",
    "/v1/notifications/open",
    "/v1/notifications/lan",
    "/v1/notifications/nope",
    "/v1/notifications/sw/extra",
    "/v1/notifications/%2e%2e/sw",
    "/readyz",
    "/healthz",
    "/metrics",
    "*",
    "http://receiver/v1/notifications/open",
];

/// The statuses the docs list (`docs/ingress.md`), and the operations endpoints' `200`.
const STATUSES: &[u16] = &[
    200, 202, 400, 401, 403, 404, 405, 408, 409, 413, 414, 415, 422, 429, 431, 503,
];

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| Harness::new(true))
}

/// One answer read back.
struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

/// Splits the bytes read back into answers; `head_only`: answers to `HEAD` carry no body.
/// Stops at the first bytes that are not a whole answer with a `content-length`.
fn answers(mut bytes: &[u8], head_only: bool) -> (Vec<Answer>, usize) {
    let mut answers = Vec::new();
    loop {
        let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
            return (answers, bytes.len());
        };
        let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
        let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let header = |name: &str| {
            head.lines()
                .skip(1)
                .find_map(|line| line.strip_prefix(name).map(|v| v.trim().to_owned()))
        };
        if (100..200).contains(&status) {
            bytes = &bytes[end + 4..];
            continue;
        }
        let Some(length) = header("content-length:").and_then(|v| v.parse::<usize>().ok()) else {
            return (answers, bytes.len());
        };
        let length = if head_only { 0 } else { length };
        if bytes.len() < end + 4 + length {
            return (answers, bytes.len());
        }
        answers.push(Answer {
            status,
            content_type: header("content-type:").unwrap_or_default(),
            body: bytes[end + 4..end + 4 + length].to_vec(),
        });
        bytes = &bytes[end + 4 + length..];
    }
}

/// Writes `request` to a fresh connection served by the receiver and reads until the
/// receiver closes it, or until nothing more can happen (the paused clock then lets the
/// timeouts pass) and a last grace period passed.
/// With `expect`, reading stops once that many whole answers are read.
async fn exchange(
    router: Router,
    peer: SocketAddr,
    request: Vec<u8>,
    expect: Option<(usize, bool)>,
) -> Vec<u8> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let stop = CancellationToken::new();
    let served = tokio::spawn(receiver::serve_connection(
        server,
        peer,
        router,
        None,
        Duration::from_secs(10),
        stop.clone(),
    ));
    let (mut reader, mut writer) = tokio::io::split(client);
    let write = async move {
        // The receiver may close before it read everything.
        let _ = writer.write_all(&request).await;
        writer
    };
    let mut read_back = Vec::new();
    let read = async {
        let mut buffer = [0u8; 8192];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read_back.extend_from_slice(&buffer[..n]),
            }
            if let Some((count, head_only)) = expect
                && let (whole, 0) = answers(&read_back, head_only)
                && whole.len() >= count
            {
                break;
            }
        }
    };
    let both = async { tokio::join!(write, read) };
    let _ = tokio::time::timeout(Duration::from_secs(120), both).await;
    drop(reader);
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(120), served).await;
    read_back
}

/// The request the structured input describes, as bytes.
fn build(method: &str, path: &str, headers: &[Vec<u8>], body: &[u8], flags: u8) -> Vec<u8> {
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: receiver\r\n").into_bytes();
    for line in headers {
        request.extend_from_slice(line);
        request.extend_from_slice(b"\r\n");
    }
    if flags & 2 != 0 {
        request.extend_from_slice(b"content-type: application/json\r\n");
    }
    if flags & 1 != 0 {
        // A fresh id per input, so that signed requests reach the publisher; a replay
        // within the input repeats it.
        let id = &format!("msg_fuzz_{}", SIGNED.load(Ordering::Relaxed));
        if path.ends_with("/sw") {
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let secret = WebhookSecret::parse(WEBHOOK_SECRET).expect("secret");
            let signature = secret.sign(id, ts, body);
            request.extend_from_slice(
                format!(
                    "webhook-id: {id}\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: {signature}\r\n"
                )
                .as_bytes(),
            );
        } else if path.ends_with("/gh") {
            // The delivery id is not signed: a replay comes with a fresh one, and must
            // still be a duplicate (the replay key is the body's digest).
            let replayed = headers.iter().any(|line| line == b"x-replayed: 1");
            let delivery = if replayed {
                format!("{id}-again")
            } else {
                id.clone()
            };
            let secret = GithubSecret::parse(GITHUB_SECRET).expect("secret");
            let signature = secret.sign(body);
            request.extend_from_slice(
                format!("x-github-delivery: {delivery}\r\nx-hub-signature-256: {signature}\r\n")
                    .as_bytes(),
            );
        }
    }
    if flags & 4 != 0 {
        request.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
        let mut rest = body;
        while !rest.is_empty() {
            let size = (usize::from(rest[0]) % 64 + 1).min(rest.len());
            request.extend_from_slice(format!("{size:x}\r\n").as_bytes());
            request.extend_from_slice(&rest[..size]);
            request.extend_from_slice(b"\r\n");
            rest = &rest[size..];
        }
        request.extend_from_slice(b"0\r\n\r\n");
    } else {
        request.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
        request.extend_from_slice(body);
    }
    request
}

/// Numbers the signed inputs.
static SIGNED: AtomicU64 = AtomicU64::new(0);

fn queued(publisher: &MemoryPublisher) -> Vec<WorkItem> {
    publisher
        .items
        .lock()
        .map(|items| items.clone())
        .unwrap_or_default()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let method = METHODS[usize::from(data[0]) % METHODS.len()];
    let path = PATHS[usize::from(data[1]) % PATHS.len()];
    let flags = data[2];
    let repeat = usize::from(data[3]) * 4;
    let rest = &data[4..];
    let raw = flags & 128 != 0;
    let replay = !raw && flags & 8 != 0;

    let request = if raw {
        rest.to_vec()
    } else {
        let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
            Some(at) => (&rest[..at], &rest[at + 2..]),
            None => (&rest[..0], rest),
        };
        let mut headers: Vec<Vec<u8>> = head
            .split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        if flags & 16 != 0
            && let Some(first) = headers.first().cloned()
        {
            headers.extend(std::iter::repeat_n(first, repeat));
        }
        let mut request = build(method, path, &headers, body, flags);
        if replay {
            headers.push(b"x-replayed: 1".to_vec());
            request.extend(build(method, path, &headers, body, flags));
        }
        request
    };

    SIGNED.fetch_add(1, Ordering::Relaxed);
    let harness = harness();
    harness
        .publisher
        .fail
        .store(!raw && flags & 32 != 0, Ordering::Relaxed);
    let peer: SocketAddr = if flags & 64 != 0 {
        "192.0.2.7:40000"
    } else {
        "198.51.100.7:40000"
    }
    .parse()
    .expect("address");
    let before = queued(&harness.publisher);
    let head_only = !raw && method == "HEAD";
    let expect = (!raw).then_some((1 + usize::from(replay), head_only));
    let read_back =
        harness
            .runtime
            .block_on(exchange(harness.router.clone(), peer, request, expect));
    let after = queued(&harness.publisher);
    let new = &after[before.len().min(after.len())..];

    // Every answer is whole, listed, and every refusal a problem.
    let (answers, left) = answers(&read_back, head_only);
    // An answer to `HEAD` that the connection layer wrote carries a body: hyper refused the
    // request before its method was known.
    if !raw && !head_only {
        assert_eq!(
            left,
            0,
            "a partial answer: {:?}",
            String::from_utf8_lossy(&read_back)
        );
        assert!(answers.len() <= 1 + usize::from(replay));
    } else if raw && !rest.starts_with(b"HEAD") {
        // Raw bytes may be a request hyper waits on until it times out (no answer), but
        // whatever is written back begins with a whole answer.
        assert!(
            read_back.is_empty() || !answers.is_empty(),
            "{:?}",
            String::from_utf8_lossy(&read_back)
        );
    }
    for answer in &answers {
        assert!(
            STATUSES.contains(&answer.status),
            "unexpected {}",
            answer.status
        );
        let readiness = answer.status == 503 && !raw && path == "/readyz";
        if answer.status >= 400 && !readiness {
            assert_eq!(
                answer.content_type, "application/problem+json",
                "{}",
                answer.status
            );
            if head_only {
                // An answer to `HEAD` has a head only.
                continue;
            }
            let problem: serde_json::Value =
                serde_json::from_slice(&answer.body).expect("problem json");
            assert!(
                problem["type"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("urn:puhuri-approver:problem:")),
                "{problem}"
            );
            assert_eq!(problem["status"], answer.status);
        }
    }
    if new.is_empty() {
        return;
    }
    assert!(
        answers.iter().any(|a| a.status == 202),
        "queued without a 202"
    );

    // Nothing queued for a signed source that the harness did not sign.
    for item in new {
        match item.source.as_str() {
            "sw" | "gh" => assert!(!raw && flags & 1 != 0, "{} queued unsigned", item.source),
            "hook" => assert!(
                !raw && path.ends_with(PATH_SECRET),
                "hook queued without its secret"
            ),
            "open" => {}
            "lan" => assert!(flags & 64 != 0, "lan queued from outside its network"),
            other => panic!("queued for {other}"),
        }
    }
    // A replay is never queued twice: not within this input, nor an id queued before.
    for (i, item) in new.iter().enumerate() {
        let key = (&item.source, &item.id);
        assert!(
            !new[..i]
                .iter()
                .any(|other| (&other.source, &other.id) == key),
            "{key:?} queued twice"
        );
    }
    if !raw {
        assert!(new.len() <= 1, "one request queued {} items", new.len());
    }
});
