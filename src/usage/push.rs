//! `usage push`: queues the records of a file for the workers, through the same queue
//! and the same checks as records other systems publish.
//!
//! INVARIANT: a file with any invalid record queues nothing (every problem is listed);
//! records are month-to-date readings, so pushing a file again after a failure is safe.

use std::io::Write as _;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::UsageRecord;
use puhuri_queue::{Broker, PublishError};

/// Publishes in flight at once.
const CONCURRENCY: usize = 64;

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushSummary {
    pub queued: usize,
    /// The first failure, with the line of the record that failed.
    pub failed: Option<(usize, String)>,
    pub elapsed: Duration,
}

/// The queue message id of a record: its own id, or a digest of its wire form.
pub fn message_id(record: &UsageRecord, body: &[u8]) -> String {
    match &record.id {
        Some(id) => id.clone(),
        None => {
            let digest = Sha256::digest(body);
            let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
            format!("usage_{hex}")
        }
    }
}

/// A progress line on stderr while it is a terminal, redrawn at most every 100 ms.
struct Progress {
    total: usize,
    started: Instant,
    drawn: Instant,
    terminal: bool,
}

impl Progress {
    fn draw(&mut self, done: usize, force: bool) {
        if !self.terminal || (!force && self.drawn.elapsed() < Duration::from_millis(100)) {
            return;
        }
        self.drawn = Instant::now();
        let width = 30;
        let filled = (done * width).checked_div(self.total).unwrap_or(width);
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r[{}{}] {done}/{} queued, {rate:.0}/s ",
            "#".repeat(filled),
            " ".repeat(width - filled),
            self.total
        );
        let _ = err.flush();
    }
}

/// Queues `records` (with their line numbers), `CONCURRENCY` confirms in flight; stops
/// at the first failure.
pub async fn push(broker: &Broker, records: &[(usize, UsageRecord)]) -> PushSummary {
    let started = Instant::now();
    let mut progress = Progress {
        total: records.len(),
        started,
        drawn: started,
        terminal: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let mut summary = PushSummary::default();
    let mut results = futures_util::stream::iter(records.iter())
        .map(|(line, record)| async move {
            let body = serde_json::to_vec(&record.to_raw()).map_err(PublishError::Encode);
            let result = match body {
                Ok(body) => {
                    broker
                        .publish_work(puhuri_queue::Kind::Usage, &message_id(record, &body), &body)
                        .await
                }
                Err(error) => Err(error),
            };
            (*line, result)
        })
        .buffered(CONCURRENCY);
    while let Some((line, result)) = results.next().await {
        match result {
            Ok(()) => {
                summary.queued += 1;
                progress.draw(summary.queued, false);
            }
            Err(error) => {
                summary.failed = Some((line, error.to_string()));
                break;
            }
        }
    }
    progress.draw(summary.queued, true);
    if progress.terminal {
        eprintln!();
    }
    summary.elapsed = started.elapsed();
    summary
}
