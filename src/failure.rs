//! How processing one work message failed, by what its settlement is: try again later
//! (a retry tier), never (the dead letters), or not this message's fault at all (a
//! refused token: back to the queue, no attempt counted).
//!
//! INVARIANT: an error keeps its kind and its source chain up to the settlement that
//! logs it and records it as the attempt's reason; nothing is flattened to a string
//! before that.

use std::borrow::Cow;
use std::time::Duration;

use puhuri_client::PuhuriError;

/// Why processing did not finish.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Puhuri Core failed: a transient failure or a conflict is retried, a refusal is not.
    #[error(transparent)]
    Puhuri(#[from] PuhuriError),
    /// Not possible yet (the allocation is still being created, or its state is moving).
    #[error("{0}")]
    NotYet(Cow<'static, str>),
    /// Never possible: the message is dead-lettered with this reason.
    #[error(transparent)]
    Refused(Box<dyn std::error::Error + Send + Sync>),
    /// A transient failure after the allocation was decided in Puhuri Core, or after a
    /// decision write whose answer was lost (it may have been applied), and before the
    /// decision event was published. Retried like any transient failure, but never
    /// dead-lettered for running out of attempts: the event is owed, and nothing else would
    /// publish it (the reconciler lists only allocations still waiting).
    #[error("{0}{OWED}")]
    Owed(Box<ProcessError>),
}

/// The end of an attempt reason whose delivery owes a decision event (see
/// [`ProcessError::Owed`]): later attempts of the delivery read it in the newest reason.
pub const OWED: &str = " (decided in Puhuri Core, or maybe: its event is owed)";

/// `error` as an owed failure when it is transient (another attempt may publish the event);
/// as it is otherwise.
pub fn owed(error: impl Into<ProcessError>) -> ProcessError {
    match error.into() {
        owed @ ProcessError::Owed(_) => owed,
        error if error.is_transient() => ProcessError::Owed(Box::new(error)),
        error => error,
    }
}

/// The attempt reason of a failure of a delivery that owes its event: the error, cut so that
/// the reason keeps [`OWED`] at its end within the queue's limit of a reason.
pub fn owed_reason(error: &ProcessError) -> String {
    let error = match error {
        ProcessError::Owed(inner) => inner.to_string(),
        other => other.to_string(),
    };
    let keep = puhuri_queue::REASON_CHARS - OWED.chars().count();
    format!("{}{OWED}", error.chars().take(keep).collect::<String>())
}

/// Whether an attempt reason says its delivery owes a decision event.
pub fn is_owed(reason: &str) -> bool {
    reason.ends_with(OWED)
}

impl ProcessError {
    /// A message that can never succeed, for `reason` (an error, or a sentence).
    pub fn refused(reason: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> ProcessError {
        ProcessError::Refused(reason.into())
    }

    /// Whether another attempt may succeed. A conflict that survives a re-fetch is
    /// retried: the allocation's state is moving.
    pub fn is_transient(&self) -> bool {
        match self {
            ProcessError::Puhuri(error) => matches!(
                error,
                PuhuriError::Transient { .. } | PuhuriError::Conflict { .. }
            ),
            ProcessError::NotYet(_) | ProcessError::Owed(_) => true,
            ProcessError::Refused(_) => false,
        }
    }

    /// Whether Puhuri Core refused the token (401): not the message's fault, so it goes
    /// back to the queue unprocessed while the service pauses (see `circuit.rs`).
    pub fn is_unauthorized(&self) -> bool {
        match self {
            ProcessError::Puhuri(error) => error.is_unauthorized(),
            ProcessError::Owed(inner) => inner.is_unauthorized(),
            _ => false,
        }
    }

    /// How long the server asked to wait, when it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProcessError::Puhuri(PuhuriError::Transient { retry_after, .. }) => *retry_after,
            ProcessError::Owed(inner) => inner.retry_after(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient(detail: String) -> ProcessError {
        ProcessError::Puhuri(PuhuriError::Transient {
            operation: "approve",
            detail,
            retry_after: Some(Duration::from_secs(3)),
        })
    }

    #[test]
    fn an_owed_reason_keeps_its_mark_within_the_reason_limit() {
        let long = owed(transient("x".repeat(2_000)));
        assert!(matches!(long, ProcessError::Owed(_)));
        assert!(long.is_transient());
        assert_eq!(long.retry_after(), Some(Duration::from_secs(3)));
        let reason = owed_reason(&long);
        assert_eq!(reason.chars().count(), puhuri_queue::REASON_CHARS);
        assert!(is_owed(&reason), "{reason}");
        // Marked once, however often it is wrapped; a plain reason is not owed.
        assert!(
            matches!(owed(long), ProcessError::Owed(inner) if !matches!(*inner, ProcessError::Owed(_)))
        );
        assert!(!is_owed(&transient("HTTP 503".into()).to_string()));
        let short = owed_reason(&transient("HTTP 503".into()));
        assert!(short.starts_with("approve: ") && is_owed(&short), "{short}");
    }

    #[test]
    fn only_transient_failures_become_owed() {
        assert!(matches!(
            owed(ProcessError::refused("a refusal")),
            ProcessError::Refused(_)
        ));
        let unauthorized = ProcessError::Puhuri(PuhuriError::Unauthorized {
            operation: "approve",
            detail: "401".into(),
        });
        assert!(owed(unauthorized).is_unauthorized());
        assert!(matches!(
            owed(ProcessError::NotYet("not yet".into())),
            ProcessError::Owed(_)
        ));
    }
}
