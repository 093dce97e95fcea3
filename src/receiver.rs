//! The HTTP receiver: `POST /v1/notifications/{source}`, plus `/healthz` and `/readyz`.
//!
//! Order of checks for a notification: known source → content type → body size →
//! authentication over the raw bytes → payload format → publish with confirm.
//!
//! INVARIANT: `202 queued` is answered only after the broker's publisher confirm; when
//! the broker is away, nacks, or cannot route, the answer is `503` with `Retry-After`.
//! INVARIANT: every refusal is `application/problem+json` with a stable `type` per cause,
//! nothing is enqueued for it, and no secret or body is logged.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::config::{SourceAuth, SourceConfig};
use crate::notification::{Parsed, WorkItem, derived_id, parse_payload};
use crate::queue::{Broker, PublishError};
use crate::signature::{self, SignedHeaders, VerifyError};

/// The largest body accepted.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Seconds a client should wait after a 503.
pub const RETRY_AFTER_SECS: u64 = 5;

/// An RFC 9457 problem answer.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    /// The stable last segment of the `type` URI, e.g. `bad-signature`.
    pub cause: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        cause: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Problem {
        Problem {
            status,
            cause,
            title,
            detail: detail.into(),
            retry_after: None,
        }
    }
}

/// The `type` URI of a problem cause.
pub fn problem_type(cause: &str) -> String {
    format!("urn:puhuri-approver:problem:{cause}")
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = json!({
            "type": problem_type(self.cause),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let mut response = (self.status, body.to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Counts of what the receiver answered, by outcome.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    pub queued: AtomicU64,
    pub ignored: AtomicU64,
    pub refused: AtomicU64,
    pub unavailable: AtomicU64,
}

struct ReceiverState {
    sources: HashMap<String, SourceConfig>,
    broker: Broker,
    stats: Arc<ReceiverStats>,
}

/// Builds the receiver's router.
pub fn router(sources: &[SourceConfig], broker: Broker, stats: Arc<ReceiverStats>) -> Router {
    let state = Arc::new(ReceiverState {
        sources: sources
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect(),
        broker,
        stats,
    });
    Router::new()
        .route("/v1/notifications/{source}", post(receive_notification))
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readiness))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        "no such endpoint",
    )
}

async fn readiness(State(state): State<Arc<ReceiverState>>) -> Response {
    let broker = state.broker.is_connected();
    let body = json!({
        "status": if broker { "ready" } else { "not-ready" },
        "checks": { "broker": if broker { "ok" } else { "disconnected" } },
    });
    let status = if broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn receive_notification(
    State(state): State<Arc<ReceiverState>>,
    Path(source_name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = accept(&state, &source_name, &headers, body).await;
    match result {
        Ok(response) => response,
        Err(problem) => {
            if problem.status == StatusCode::SERVICE_UNAVAILABLE {
                state.stats.unavailable.fetch_add(1, Ordering::Relaxed);
            } else {
                state.stats.refused.fetch_add(1, Ordering::Relaxed);
            }
            tracing::info!(source = %truncated(&source_name), status = problem.status.as_u16(), cause = problem.cause, "notification refused");
            problem.into_response()
        }
    }
}

fn truncated(value: &str) -> String {
    value.chars().take(64).collect()
}

async fn accept(
    state: &ReceiverState,
    source_name: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let source = state.sources.get(source_name).ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "unknown-source",
            "Unknown source",
            "no notification source has this name",
        )
    })?;

    let content_type = header_str(headers, header::CONTENT_TYPE.as_str()).unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence != "application/json" {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "notifications must be sent as `application/json`",
        ));
    }

    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Body too large",
                format!("the body exceeds {MAX_BODY_BYTES} bytes"),
            )
        } else {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "unreadable-body",
                "Unreadable body",
                "the request body could not be read",
            )
        }
    })?;

    let id = match &source.auth {
        SourceAuth::StandardWebhooks {
            secrets,
            tolerance_secs,
        } => {
            let signed = SignedHeaders {
                id: header_str(headers, signature::HEADER_ID),
                timestamp: header_str(headers, signature::HEADER_TIMESTAMP),
                signature: header_str(headers, signature::HEADER_SIGNATURE),
            };
            signature::verify(secrets, signed, &body, now_secs(), *tolerance_secs)
                .map_err(signature_problem)?
                .to_owned()
        }
    };

    let parsed = parse_payload(source.format, &body).map_err(|error| {
        let (status, cause) = match error {
            crate::notification::PayloadError::NotJson(_) => {
                (StatusCode::BAD_REQUEST, "malformed-json")
            }
            _ => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-payload"),
        };
        Problem::new(status, cause, "Invalid notification", error.to_string())
    })?;

    let (event_type, hint) = match parsed {
        Parsed::Ignored { event_type } => {
            state.stats.ignored.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(source = %source.name, event_type = %event_type, "notification ignored");
            return Ok((
                StatusCode::ACCEPTED,
                axum::Json(json!({"status": "ignored", "event_type": event_type})),
            )
                .into_response());
        }
        Parsed::Allocation { event_type, hint } => (event_type, hint),
    };

    let id = if id.is_empty() {
        derived_id(&source.name, &body)
    } else {
        id
    };
    let item = WorkItem {
        id: id.clone(),
        source: source.name.clone(),
        event_type,
        hint,
        received_at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
    };
    state
        .broker
        .publish_notification(&item)
        .await
        .map_err(|error| {
            tracing::warn!(id = %id, error = %error, "notification not queued");
            let mut problem = Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                match error {
                    PublishError::Unavailable => "broker-unavailable",
                    _ => "queue-refused",
                },
                "Temporarily unavailable",
                "the notification could not be queued; send it again later",
            );
            problem.retry_after = Some(RETRY_AFTER_SECS);
            problem
        })?;
    state.stats.queued.fetch_add(1, Ordering::Relaxed);
    tracing::info!(id = %id, source = %source.name, "notification queued");
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"status": "queued", "id": id})),
    )
        .into_response())
}

fn signature_problem(error: VerifyError) -> Problem {
    let cause = match error {
        VerifyError::MissingHeader(_) => "missing-signature-header",
        VerifyError::MalformedId => "malformed-id",
        VerifyError::MalformedTimestamp => "malformed-timestamp",
        VerifyError::TimestampTooOld(_) | VerifyError::TimestampTooNew(_) => "stale-timestamp",
        VerifyError::SignatureHeaderTooLarge => "signature-header-too-large",
        VerifyError::NoMatchingSignature => "bad-signature",
    };
    Problem::new(
        StatusCode::UNAUTHORIZED,
        cause,
        "Authentication failed",
        error.to_string(),
    )
}
