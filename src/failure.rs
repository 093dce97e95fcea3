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
            ProcessError::NotYet(_) => true,
            ProcessError::Refused(_) => false,
        }
    }

    /// Whether Puhuri Core refused the token (401): not the message's fault, so it goes
    /// back to the queue unprocessed while the service pauses (see `circuit.rs`).
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, ProcessError::Puhuri(error) if error.is_unauthorized())
    }

    /// How long the server asked to wait, when it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProcessError::Puhuri(PuhuriError::Transient { retry_after, .. }) => *retry_after,
            _ => None,
        }
    }
}
