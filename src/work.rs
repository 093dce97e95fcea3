//! What the work queue carries, as the service reads and writes it: [`Work`], one enum
//! with a variant per [`Kind`] — a notification in its versioned [`Envelope`], or a usage
//! record in its published wire form.
//!
//! INVARIANT: a body is decoded by its kind, never by probing its fields: the queue keeps
//! the kind beside the body through retries, dead letters and replays.

use puhuri_queue::{Broker, DeadLetter, Delivery, Kind, PublishError};

use crate::notification::{Envelope, OperatorWork, ReconcileRequest, WorkItem};
use crate::usage::{RecordDecodeError, UsageRecord};

/// One work message, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// A notification: look at this allocation.
    Allocation(WorkItem),
    /// A usage record (`schemas/usage-record.v1.schema.json`), as other systems publish it.
    Usage(UsageRecord),
    /// An operator's decision from the review queue.
    Operator(OperatorWork),
    /// A request for a reconcile pass (from a `receive` process whose event stream connected).
    Reconcile(ReconcileRequest),
}

/// Why a work message cannot be decoded. It can never succeed: it is dead-lettered.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("undecodable message: its kind is unknown to this version")]
    UnknownKind,
    #[error("undecodable message: {0}")]
    Envelope(#[source] serde_json::Error),
    /// Not a usage record, or an invalid one (the message names the field).
    #[error(transparent)]
    Usage(RecordDecodeError),
}

/// Decodes a body of the given kind.
pub fn decode(kind: Option<Kind>, body: &[u8]) -> Result<Work, DecodeError> {
    match kind {
        Some(Kind::Allocation) => match serde_json::from_slice::<Envelope>(body) {
            Ok(Envelope::V1(item)) => Ok(Work::Allocation(item)),
            Ok(Envelope::Operator(work)) => {
                // Checked again: a body from elsewhere must hold what the review checks.
                crate::notification::OperatorDecision::new(
                    work.operator.action,
                    &work.operator.name,
                    &work.operator.comment,
                )
                .map_err(|problem| DecodeError::Envelope(serde::de::Error::custom(problem)))?;
                Ok(Work::Operator(work))
            }
            Ok(Envelope::Reconcile(request)) => Ok(Work::Reconcile(request)),
            Err(error) => Err(DecodeError::Envelope(error)),
        },
        Some(Kind::Usage) => UsageRecord::decode(body)
            .map(Work::Usage)
            .map_err(DecodeError::Usage),
        None => Err(DecodeError::UnknownKind),
    }
}

/// The message of a delivery.
pub fn delivered(delivery: &Delivery) -> Result<Work, DecodeError> {
    decode(delivery.kind, &delivery.body)
}

/// The message of a dead letter.
pub fn dead(letter: &DeadLetter) -> Result<Work, DecodeError> {
    decode(letter.kind, &letter.body)
}

/// Queues a notification for the workers; `Ok` only once it is durable.
pub async fn publish_notification(broker: &Broker, item: &WorkItem) -> Result<(), PublishError> {
    let body = Envelope::encode(item).map_err(PublishError::Encode)?;
    broker.publish_work(Kind::Allocation, &item.id, &body).await
}

/// Queues a request for a reconcile pass for the workers; `Ok` only once it is durable.
pub async fn publish_reconcile_request(
    broker: &Broker,
    request: &ReconcileRequest,
) -> Result<(), PublishError> {
    let body =
        serde_json::to_vec(&Envelope::Reconcile(request.clone())).map_err(PublishError::Encode)?;
    broker
        .publish_work(Kind::Allocation, &request.id, &body)
        .await
}

/// Queues an operator's decision for the workers; `Ok` only once it is durable.
pub async fn publish_operator(broker: &Broker, work: &OperatorWork) -> Result<(), PublishError> {
    let body = Envelope::encode_operator(work).map_err(PublishError::Encode)?;
    broker
        .publish_work(Kind::Allocation, &work.item.id, &body)
        .await
}

/// Queues a usage record (its JSON wire form) for the workers; `Ok` only once durable.
pub async fn publish_usage(
    broker: &Broker,
    body: &[u8],
    message_id: &str,
) -> Result<(), PublishError> {
    broker.publish_work(Kind::Usage, message_id, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconcile_request_has_a_tag_of_its_own() {
        let request = ReconcileRequest::new("waldur-events", 7);
        let body = serde_json::to_vec(&Envelope::Reconcile(request.clone())).expect("encode");
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains(r#""v":"reconcile.1""#), "{text}");
        assert!(request.id.starts_with("reconcile_"), "{}", request.id);
        assert!(
            matches!(decode(Some(Kind::Allocation), &body), Ok(Work::Reconcile(r)) if r == request)
        );
        // Not a notification: it names no allocation.
        assert!(matches!(
            decode(Some(Kind::Usage), &body),
            Err(DecodeError::Usage(_))
        ));
    }

    #[test]
    fn a_body_is_decoded_by_its_kind() {
        let envelope = br#"{"v":"1","id":"msg_1","source":"relay","event_type":"allocation.created","resource_uuid":"a1916bd53fd04b1ab1a4e700c926607b","received_at_ms":1}"#;
        assert!(
            matches!(decode(Some(Kind::Allocation), envelope), Ok(Work::Allocation(item)) if item.id == "msg_1")
        );
        let record =
            br#"{"backend_id":"b","component":"cpu_k_hours","amount":"1","month":"2026-11"}"#;
        assert!(
            matches!(decode(Some(Kind::Usage), record), Ok(Work::Usage(r)) if r.component == "cpu_k_hours")
        );
        // The same bodies under the other kind are refused, not guessed at.
        assert!(matches!(
            decode(Some(Kind::Usage), envelope),
            Err(DecodeError::Usage(_))
        ));
        assert!(matches!(
            decode(Some(Kind::Allocation), record),
            Err(DecodeError::Envelope(_))
        ));
        let bad_record =
            br#"{"backend_id":"b","component":"cpu_k_hours","amount":"-1","month":"2026-11"}"#;
        assert!(
            decode(Some(Kind::Usage), bad_record)
                .is_err_and(|e| e.to_string().starts_with("invalid usage record: amount"))
        );
        for unknown in [&br#"{"v":"9","id":"x"}"#[..], b"not json", b"[1]"] {
            assert!(
                decode(Some(Kind::Allocation), unknown)
                    .is_err_and(|e| e.to_string().starts_with("undecodable message")),
                "{}",
                String::from_utf8_lossy(unknown)
            );
        }
        assert!(matches!(
            decode(None, envelope),
            Err(DecodeError::UnknownKind)
        ));
    }

    #[test]
    fn an_operator_decision_has_an_envelope_tag_of_its_own() {
        use crate::notification::{OperatorAction, OperatorDecision, OperatorWork};
        let item: WorkItem = serde_json::from_str(
            r#"{"id":"review_1","source":"review","event_type":"operator.approve","resource_uuid":"a1916bd53fd04b1ab1a4e700c926607b","received_at_ms":1}"#,
        )
        .expect("item");
        let work = OperatorWork {
            item,
            operator: OperatorDecision::new(OperatorAction::Approve, "alice", "ok").expect("ok"),
        };
        let body = Envelope::encode_operator(&work).expect("encodes");
        assert!(body.starts_with(br#"{"v":"operator.1""#));
        assert!(
            matches!(decode(Some(Kind::Allocation), &body), Ok(Work::Operator(w)) if w == work)
        );
        // A rejection without a reason is refused here too, whoever queued it.
        let forged = String::from_utf8_lossy(&body)
            .replace(r#""action":"approve""#, r#""action":"reject""#)
            .replace(r#""comment":"ok""#, r#""comment":"  ""#);
        assert!(
            decode(Some(Kind::Allocation), forged.as_bytes())
                .is_err_and(|e| e.to_string().contains("a rejection needs a reason"))
        );
        assert_eq!(
            OperatorDecision::new(OperatorAction::Approve, " ", "").err(),
            Some("the operator has no name")
        );
    }
}
