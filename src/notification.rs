//! Notifications: the payload formats accepted at the receiver, and the versioned
//! envelope that travels through the queue.
//!
//! INVARIANT: a notification is only a hint that names an allocation (an order and/or a
//! resource). Nothing in it is trusted beyond the uuids: workers re-fetch the allocation
//! from Puhuri Core before deciding.
//! INVARIANT: parsing never panics and is bounded: the body is checked to be UTF-8, nested
//! at most [`MAX_JSON_DEPTH`] deep and free of number literals longer than
//! [`MAX_NUMBER_LEN`] in one linear scan before serde sees it; each refusal is a
//! [`PayloadError`] with a stable [`PayloadError::cause`].

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::PayloadFormat;
pub use puhuri_client::{AllocationHint, OrderUuid, ResourceUuid, WaldurUuid};

/// What a payload said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// It names an allocation that may be waiting for the provider.
    Allocation {
        event_type: String,
        hint: AllocationHint,
    },
    /// It is well-formed but says nothing about a new allocation.
    Ignored { event_type: String },
}

/// The deepest nesting of arrays and objects accepted (the formats need 3).
pub const MAX_JSON_DEPTH: usize = 16;
/// The longest number literal accepted, in characters.
pub const MAX_NUMBER_LEN: usize = 40;

/// Why a payload was refused. Messages name the field, never echo secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("the body is empty")]
    Empty,
    #[error("the body is not valid UTF-8 (byte {0})")]
    NotUtf8(usize),
    #[error("the body nests arrays or objects deeper than {MAX_JSON_DEPTH} levels")]
    TooDeep,
    #[error(
        "the body has a number literal longer than {MAX_NUMBER_LEN} characters or out of range"
    )]
    NumberTooLarge,
    #[error("the body is not valid JSON: {0}")]
    NotJson(String),
    #[error("the body does not match the `{format}` format: {detail}")]
    Shape {
        format: &'static str,
        detail: String,
    },
    #[error("`{0}` is not a uuid")]
    BadUuid(&'static str),
    #[error("the notification names no allocation: `order_uuid` or `resource_uuid` is required")]
    NoAllocation,
    #[error("unknown notification type `{0}`")]
    UnknownType(String),
}

impl PayloadError {
    /// The stable cause name (the last segment of the problem `type`).
    pub fn cause(&self) -> &'static str {
        match self {
            PayloadError::Empty => "empty-body",
            PayloadError::NotUtf8(_) => "invalid-utf8",
            PayloadError::TooDeep => "too-deeply-nested",
            PayloadError::NumberTooLarge => "number-too-large",
            PayloadError::NotJson(_) => "malformed-json",
            PayloadError::Shape { .. } => "invalid-payload",
            PayloadError::BadUuid(_) => "invalid-uuid",
            PayloadError::NoAllocation => "no-allocation",
            PayloadError::UnknownType(_) => "unknown-event-type",
        }
    }

    /// Whether the body is not JSON at all (as opposed to JSON of the wrong shape).
    pub fn is_syntax(&self) -> bool {
        matches!(
            self,
            PayloadError::Empty
                | PayloadError::NotUtf8(_)
                | PayloadError::TooDeep
                | PayloadError::NumberTooLarge
                | PayloadError::NotJson(_)
        )
    }
}

/// Checks, in one pass and without recursion, what serde would handle poorly or
/// ambiguously: encoding, emptiness, nesting depth and the length of number literals.
pub fn check_json_limits(body: &[u8]) -> Result<(), PayloadError> {
    if let Err(error) = std::str::from_utf8(body) {
        return Err(PayloadError::NotUtf8(error.valid_up_to()));
    }
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(PayloadError::Empty);
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut number_len = 0usize;
    for &byte in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        let in_number = number_len > 0;
        if byte.is_ascii_digit()
            || byte == b'-'
            || (in_number && matches!(byte, b'+' | b'.' | b'e' | b'E'))
        {
            number_len += 1;
            if number_len > MAX_NUMBER_LEN {
                return Err(PayloadError::NumberTooLarge);
            }
            continue;
        }
        number_len = 0;
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(PayloadError::TooDeep);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Maps a serde error to the payload error of a format.
fn serde_error(format: &'static str, error: serde_json::Error) -> PayloadError {
    let text = error.to_string();
    if text.starts_with("number out of range") {
        PayloadError::NumberTooLarge
    } else if error.is_data() {
        PayloadError::Shape {
            format,
            detail: text,
        }
    } else {
        PayloadError::NotJson(text)
    }
}

/// Event types of Waldur's hooks that may announce an allocation waiting for its provider.
pub const WALDUR_ALLOCATION_EVENTS: &[&str] = &[
    "marketplace_resource_create_requested",
    "marketplace_order_created",
    "marketplace_order_approved",
];

/// Event types of the canonical format.
pub const ALLOCATION_EVENTS: &[&str] = &["allocation.created", "allocation.pending"];

/// Parses a body in the given format.
pub fn parse_payload(format: PayloadFormat, body: &[u8]) -> Result<Parsed, PayloadError> {
    check_json_limits(body)?;
    match format {
        PayloadFormat::WaldurHook => parse_waldur_hook(body),
        PayloadFormat::Allocation => parse_allocation(body),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CanonicalNotification {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    order_uuid: Option<String>,
    #[serde(default)]
    resource_uuid: Option<String>,
    #[serde(default)]
    offering_uuid: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    occurred_at: Option<String>,
}

fn parse_allocation(body: &[u8]) -> Result<Parsed, PayloadError> {
    let value: CanonicalNotification =
        serde_json::from_slice(body).map_err(|error| serde_error("allocation", error))?;
    if !ALLOCATION_EVENTS.contains(&value.event_type.as_str()) {
        return Err(PayloadError::UnknownType(truncate(&value.event_type)));
    }
    let order_uuid = optional_uuid(value.order_uuid.as_deref(), "order_uuid")?;
    let resource_uuid = optional_uuid(value.resource_uuid.as_deref(), "resource_uuid")?;
    optional_uuid(value.offering_uuid.as_deref(), "offering_uuid")?;
    if order_uuid.is_none() && resource_uuid.is_none() {
        return Err(PayloadError::NoAllocation);
    }
    Ok(Parsed::Allocation {
        event_type: value.event_type,
        hint: AllocationHint {
            order_uuid: order_uuid.map(OrderUuid::from),
            resource_uuid: resource_uuid.map(ResourceUuid::from),
        },
    })
}

#[derive(Deserialize)]
struct WaldurHook {
    event_type: String,
    #[serde(default)]
    context: serde_json::Map<String, Value>,
    #[allow(dead_code)]
    #[serde(default)]
    created: Option<Value>,
    #[allow(dead_code)]
    #[serde(default)]
    message: Option<Value>,
}

fn parse_waldur_hook(body: &[u8]) -> Result<Parsed, PayloadError> {
    let hook: WaldurHook =
        serde_json::from_slice(body).map_err(|error| serde_error("waldur-hook", error))?;
    if !WALDUR_ALLOCATION_EVENTS.contains(&hook.event_type.as_str()) {
        return Ok(Parsed::Ignored {
            event_type: truncate(&hook.event_type),
        });
    }
    let order_uuid = context_uuid(&hook.context, "order_uuid")?;
    let resource_uuid = context_uuid(&hook.context, "resource_uuid")?;
    if order_uuid.is_none() && resource_uuid.is_none() {
        return Err(PayloadError::NoAllocation);
    }
    Ok(Parsed::Allocation {
        event_type: hook.event_type,
        hint: AllocationHint {
            order_uuid: order_uuid.map(OrderUuid::from),
            resource_uuid: resource_uuid.map(ResourceUuid::from),
        },
    })
}

/// Waldur renders null as the string `"None"` in hook context (and booleans as `"True"`
/// and `"False"`, which are never uuids).
fn context_uuid(
    context: &serde_json::Map<String, Value>,
    key: &'static str,
) -> Result<Option<WaldurUuid>, PayloadError> {
    match context.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() || s == "None" => Ok(None),
        Some(Value::String(s)) => WaldurUuid::parse(s)
            .map(Some)
            .ok_or(PayloadError::BadUuid(key)),
        Some(_) => Err(PayloadError::BadUuid(key)),
    }
}

fn optional_uuid(
    value: Option<&str>,
    key: &'static str,
) -> Result<Option<WaldurUuid>, PayloadError> {
    match value {
        None => Ok(None),
        Some(s) => WaldurUuid::parse(s)
            .map(Some)
            .ok_or(PayloadError::BadUuid(key)),
    }
}

fn truncate(value: &str) -> String {
    value.chars().take(100).collect()
}

/// A deterministic id for payloads that carry none (Waldur's hooks): the same body from
/// the same source always gets the same id, so identical deliveries share a message id.
pub fn derived_id(source: &str, body: &[u8]) -> String {
    body_digest_id("wh_", source, body)
}

/// The id of a GitHub-style notification: the signature covers only the body, so the id
/// (and replay key) is a digest of source and raw body, not the unsigned
/// `X-GitHub-Delivery`. Distinct bodies get distinct ids; a redelivery, or a replay under
/// a fresh delivery id, gets the same one.
pub fn github_id(source: &str, body: &[u8]) -> String {
    body_digest_id("gh_", source, body)
}

/// `prefix` + the first 128 bits of `sha256(source 0x00 body)` in hex.
pub(crate) fn body_digest_id(prefix: &str, source: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(source.as_bytes());
    hasher.update([0]);
    hasher.update(body);
    let digest = hasher.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

/// The queue message, versioned so that old and new workers can coexist during a deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "v")]
pub enum Envelope {
    #[serde(rename = "1")]
    V1(WorkItem),
    /// An operator's decision from the review queue. A tag of its own, so that a worker
    /// that predates it dead-letters it (replayable once upgraded) rather than reading it
    /// as a plain notification and dropping the decision.
    #[serde(rename = "operator.1")]
    Operator(OperatorWork),
    /// A request for a reconcile pass from a process without a reconciler of its own (a
    /// `receive` process whose event stream (re)connected). A tag of its own, so that a
    /// worker that predates it dead-letters it rather than reading it as a notification.
    #[serde(rename = "reconcile.1")]
    Reconcile(ReconcileRequest),
}

/// Asks the reconciler of the worker that takes it for a pass now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileRequest {
    /// The message id: `reconcile_` and a random uuid.
    pub id: String,
    /// What asked: `waldur-events` (the event stream (re)connected).
    pub source: String,
    pub requested_at_ms: i64,
}

impl ReconcileRequest {
    /// A request from `source`, with a fresh id.
    pub fn new(source: &str, requested_at_ms: i64) -> ReconcileRequest {
        ReconcileRequest {
            id: format!("reconcile_{}", uuid::Uuid::new_v4().simple()),
            source: source.to_owned(),
            requested_at_ms,
        }
    }
}

/// An operator's decision, queued for the workers: the allocation (a [`WorkItem`]) and
/// what the operator decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorWork {
    #[serde(flatten)]
    pub item: WorkItem,
    pub operator: OperatorDecision,
}

/// What an operator decided, who, and what they wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorDecision {
    pub action: OperatorAction,
    /// The operator's name (the review page's login, or `review --as` / the OS user).
    pub name: String,
    /// The operator's comment; for a rejection, the reason the requester sees
    /// (never empty).
    #[serde(default)]
    pub comment: String,
}

/// Approve or reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperatorAction {
    Approve,
    Reject,
}

impl OperatorAction {
    pub fn name(self) -> &'static str {
        match self {
            OperatorAction::Approve => "approve",
            OperatorAction::Reject => "reject",
        }
    }
}

impl OperatorDecision {
    /// An operator's decision, checked: a name, and a reason for a rejection. Comments
    /// are kept to 1,000 characters (Puhuri Core's rejection comment is free text).
    pub fn new(
        action: OperatorAction,
        name: &str,
        comment: &str,
    ) -> Result<OperatorDecision, &'static str> {
        let name = name.trim();
        let comment = comment.trim();
        if name.is_empty() {
            return Err("the operator has no name");
        }
        if name.chars().count() > 200 || name.chars().any(char::is_control) {
            return Err(
                "the operator's name is longer than 200 characters or has control characters",
            );
        }
        if action == OperatorAction::Reject && comment.is_empty() {
            return Err(
                "a rejection needs a reason: the requester sees it as the rejection comment",
            );
        }
        if comment.chars().count() > 1000 {
            return Err("the comment is longer than 1,000 characters");
        }
        Ok(OperatorDecision {
            action,
            name: name.to_owned(),
            comment: comment.to_owned(),
        })
    }

    /// The policy's form of the decision.
    pub fn manual(&self) -> puhuri_policy::ManualDecision {
        match self.action {
            OperatorAction::Approve => puhuri_policy::ManualDecision::Approve,
            OperatorAction::Reject => puhuri_policy::ManualDecision::Reject {
                reason: self.comment.clone(),
            },
        }
    }
}

impl Envelope {
    /// The queue message of `item`, serialized without copying it first.
    pub fn encode(item: &WorkItem) -> serde_json::Result<Vec<u8>> {
        /// Serializes exactly as `Envelope` does, over a borrowed item.
        #[derive(Serialize)]
        #[serde(tag = "v")]
        enum Borrowed<'a> {
            #[serde(rename = "1")]
            V1(&'a WorkItem),
        }
        serde_json::to_vec(&Borrowed::V1(item))
    }

    /// The queue message of an operator's decision.
    pub fn encode_operator(work: &OperatorWork) -> serde_json::Result<Vec<u8>> {
        #[derive(Serialize)]
        #[serde(tag = "v")]
        enum Borrowed<'a> {
            #[serde(rename = "operator.1")]
            Operator(&'a OperatorWork),
        }
        serde_json::to_vec(&Borrowed::Operator(work))
    }
}

/// One allocation to look at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkItem {
    /// The notification id; also the AMQP `message_id`.
    pub id: String,
    /// The configured source it came from (or `reconciler`).
    pub source: String,
    pub event_type: String,
    #[serde(flatten)]
    pub hint: AllocationHint,
    /// Unix milliseconds at which the receiver accepted it.
    pub received_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: &str = "0bd3a4ee3c0a4b4d8f0c6b2f6f1e2a11";
    const RESOURCE: &str = "a1916bd53fd04b1ab1a4e700c926607b";

    #[test]
    fn parses_uuids_in_both_forms() {
        let dashed = "A1916BD5-3FD0-4B1A-B4E7-00C926607B00";
        assert_eq!(
            WaldurUuid::parse(dashed).map(|u| u.to_string()),
            Some("a1916bd53fd04b1ab4e700c926607b00".to_owned())
        );
        for bad in [
            "",
            "xyz",
            "a1916bd53fd04b1ab1a4e700c926607",
            "g1916bd53fd04b1ab1a4e700c926607b",
        ] {
            assert_eq!(WaldurUuid::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn reads_a_waldur_hook_with_stringly_nulls() {
        let body = format!(
            r#"{{"created":"2026-01-01T00:00:00Z","message":"m","event_type":"marketplace_resource_create_requested","context":{{"resource_uuid":"{RESOURCE}","order_uuid":"None","is_industry":"False"}}}}"#
        );
        let parsed = parse_payload(PayloadFormat::WaldurHook, body.as_bytes()).expect("parses");
        assert_eq!(
            parsed,
            Parsed::Allocation {
                event_type: "marketplace_resource_create_requested".into(),
                hint: AllocationHint {
                    order_uuid: None,
                    resource_uuid: ResourceUuid::parse(RESOURCE),
                },
            }
        );
    }

    #[test]
    fn ignores_unrelated_waldur_events() {
        let body =
            br#"{"created":"x","message":"m","event_type":"user_password_updated","context":{}}"#;
        assert_eq!(
            parse_payload(PayloadFormat::WaldurHook, body),
            Ok(Parsed::Ignored {
                event_type: "user_password_updated".into()
            })
        );
    }

    #[test]
    fn refuses_bad_canonical_notifications() {
        let cases: &[(&str, PayloadError)] = &[
            (
                r#"{"type":"allocation.created"}"#,
                PayloadError::NoAllocation,
            ),
            (
                r#"{"type":"allocation.created","order_uuid":"nope"}"#,
                PayloadError::BadUuid("order_uuid"),
            ),
            (
                r#"{"type":"allocation.deleted","order_uuid":"0bd3a4ee3c0a4b4d8f0c6b2f6f1e2a11"}"#,
                PayloadError::UnknownType("allocation.deleted".into()),
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(
                parse_payload(PayloadFormat::Allocation, body.as_bytes()).as_ref(),
                Err(expected),
                "{body}"
            );
        }
        assert!(matches!(
            parse_payload(PayloadFormat::Allocation, b"{not json"),
            Err(PayloadError::NotJson(_))
        ));
        assert!(matches!(
            parse_payload(PayloadFormat::Allocation, br#"{"type":1,"order_uuid":"x"}"#),
            Err(PayloadError::Shape { .. })
        ));
        assert!(matches!(
            parse_payload(PayloadFormat::Allocation, &[0xff, 0xfe]),
            Err(PayloadError::NotUtf8(0))
        ));
    }

    #[test]
    fn envelopes_round_trip_with_a_version_tag() {
        let envelope = Envelope::V1(WorkItem {
            id: "msg_1".into(),
            source: "relay".into(),
            event_type: "allocation.created".into(),
            hint: AllocationHint {
                order_uuid: OrderUuid::parse(ORDER),
                resource_uuid: None,
            },
            received_at_ms: 5,
        });
        let json = serde_json::to_string(&envelope).expect("serializes");
        assert!(json.starts_with(r#"{"v":"1","#), "{json}");
        let back: Envelope = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, envelope);
        let Envelope::V1(item) = &envelope else {
            panic!("a notification")
        };
        let encoded = Envelope::encode(item).expect("encodes");
        assert_eq!(String::from_utf8(encoded).expect("utf-8"), json);
    }

    #[test]
    fn derived_ids_are_stable_per_source_and_body() {
        assert_eq!(derived_id("a", b"x"), derived_id("a", b"x"));
        assert_ne!(derived_id("a", b"x"), derived_id("b", b"x"));
        assert_ne!(derived_id("a", b"x"), derived_id("a", b"y"));
        assert_eq!(github_id("a", b"x"), github_id("a", b"x"));
        assert_ne!(github_id("a", b"x"), github_id("a", b"y"));
        assert!(github_id("a", b"x").starts_with("gh_"));
    }

    #[test]
    fn bounds_depth_numbers_and_encoding_before_parsing() {
        let deep = format!(
            "{}{}",
            "[".repeat(MAX_JSON_DEPTH + 1),
            "]".repeat(MAX_JSON_DEPTH + 1)
        );
        assert_eq!(
            parse_payload(PayloadFormat::Allocation, deep.as_bytes()),
            Err(PayloadError::TooDeep)
        );
        let very_deep = "[".repeat(100_000);
        assert_eq!(
            parse_payload(PayloadFormat::WaldurHook, very_deep.as_bytes()),
            Err(PayloadError::TooDeep)
        );
        let in_string = format!(r#"{{"type":"{}","order_uuid":"{ORDER}"}}"#, "[".repeat(100));
        assert!(matches!(
            parse_payload(PayloadFormat::Allocation, in_string.as_bytes()),
            Err(PayloadError::UnknownType(_))
        ));
        let long = format!(
            r#"{{"type":"allocation.created","order_uuid":{}}}"#,
            "9".repeat(41)
        );
        assert_eq!(
            parse_payload(PayloadFormat::Allocation, long.as_bytes()),
            Err(PayloadError::NumberTooLarge)
        );
        assert_eq!(
            parse_payload(
                PayloadFormat::Allocation,
                br#"{"type":"allocation.created","order_uuid":1e999}"#
            ),
            Err(PayloadError::NumberTooLarge)
        );
        assert_eq!(
            parse_payload(PayloadFormat::Allocation, b"{\"type\":\"\xff\"}"),
            Err(PayloadError::NotUtf8(9))
        );
        assert_eq!(
            parse_payload(PayloadFormat::Allocation, b"  \n"),
            Err(PayloadError::Empty)
        );
        let escaped = format!(r#"{{"type":"a\"[[[[","order_uuid":"{ORDER}"}}"#);
        assert!(matches!(
            parse_payload(PayloadFormat::Allocation, escaped.as_bytes()),
            Err(PayloadError::UnknownType(_))
        ));
    }

    #[test]
    fn treats_stringly_booleans_in_hook_context_as_values_not_uuids() {
        let body = r#"{"event_type":"marketplace_order_created","context":{"order_uuid":"False","resource_uuid":"None"}}"#;
        assert_eq!(
            parse_payload(PayloadFormat::WaldurHook, body.as_bytes()),
            Err(PayloadError::BadUuid("order_uuid"))
        );
        let body = r#"{"event_type":"marketplace_order_created","context":{"order_uuid":"None","resource_uuid":"None","offering_shared":"True"}}"#;
        assert_eq!(
            parse_payload(PayloadFormat::WaldurHook, body.as_bytes()),
            Err(PayloadError::NoAllocation)
        );
        let body = r#"{"event_type":"marketplace_order_created","context":"None"}"#;
        assert!(matches!(
            parse_payload(PayloadFormat::WaldurHook, body.as_bytes()),
            Err(PayloadError::Shape { .. })
        ));
    }
}
