//! The reconciler: every interval, list the allocations waiting for this provider and
//! enqueue them, so that a lost notification delays a decision but never loses it.
//!
//! INVARIANT: the reconciler only enqueues hints; deciding stays with the workers, which
//! re-fetch each allocation. Several replicas may run: a duplicate costs one re-fetch.
//! INVARIANT: an allocation this reconciler enqueued is not enqueued again within
//! `recheck` (held allocations are re-evaluated at that pace, not every cycle).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::ReconcileConfig;
use crate::metrics::Metrics;
use crate::notification::WorkItem;
use puhuri_client::{PuhuriClient, PuhuriError};
use puhuri_queue::{Broker, PublishError};

/// Publishes in flight at once while enqueueing one cycle's allocations.
const ENQUEUE_CONCURRENCY: usize = 64;

/// What one cycle did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CycleReport {
    /// Puhuri Core list calls made (pages included).
    pub calls: usize,
    /// Allocations found waiting.
    pub pending: usize,
    /// Allocations enqueued for the workers.
    pub enqueued: usize,
    /// Allocations skipped because this reconciler enqueued them within `recheck`.
    pub recently_enqueued: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("listing pending allocations failed: {0}")]
    List(#[from] PuhuriError),
    #[error("enqueueing failed: {0}")]
    Publish(#[from] PublishError),
}

/// The reconciler role.
pub struct Reconciler {
    client: PuhuriClient,
    broker: Broker,
    offerings: Vec<String>,
    config: ReconcileConfig,
    recent: Mutex<HashMap<String, Instant>>,
    metrics: Arc<Metrics>,
}

impl Reconciler {
    pub fn new(
        client: PuhuriClient,
        broker: Broker,
        offerings: Vec<String>,
        config: ReconcileConfig,
    ) -> Reconciler {
        Reconciler {
            client,
            broker,
            offerings,
            config,
            recent: Mutex::new(HashMap::new()),
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// Counts cycles, their list calls and what they enqueued in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Reconciler {
        self.metrics = metrics;
        self
    }

    /// One pass over every configured offering (or everything the token sees), in a
    /// `reconcile` span, counted in the metrics.
    pub async fn run_cycle(&self) -> Result<CycleReport, ReconcileError> {
        let result = self
            .cycle()
            .instrument(tracing::info_span!("reconcile"))
            .await;
        match &result {
            Ok(report) => self
                .metrics
                .reconcile_cycle(true, report.calls, report.enqueued),
            Err(_) => self.metrics.reconcile_cycle(false, 0, 0),
        }
        result
    }

    async fn cycle(&self) -> Result<CycleReport, ReconcileError> {
        let mut report = CycleReport::default();
        let mut hints = Vec::new();
        if self.offerings.is_empty() {
            let (found, calls) = self.client.list_pending(None).await?;
            hints.extend(found);
            report.calls += calls;
        } else {
            for offering in &self.offerings {
                let (found, calls) = self.client.list_pending(Some(offering)).await?;
                hints.extend(found);
                report.calls += calls;
            }
        }
        report.pending = hints.len();
        let now = Instant::now();
        self.with_recent(|recent| {
            recent.retain(|_, at| now.duration_since(*at) < self.config.recheck)
        });
        let received_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let mut items = Vec::new();
        for hint in hints {
            let key = hint.key();
            if self.with_recent(|recent| recent.contains_key(&key)) {
                report.recently_enqueued += 1;
                continue;
            }
            let id = format!(
                "reconcile-{}",
                key.trim_start_matches("r:").trim_start_matches("o:")
            );
            let item = WorkItem {
                id,
                source: "reconciler".into(),
                event_type: "allocation.pending".into(),
                hint,
                received_at_ms,
            };
            items.push((key, item));
        }
        // Publishes run concurrently (each still awaits its own confirm); an allocation
        // counts as enqueued, and is remembered, only once its publish is confirmed.
        let mut publishes = futures_util::stream::iter(items)
            .map(|(key, item)| async move {
                let result = crate::work::publish_notification(&self.broker, &item).await;
                (key, result)
            })
            .buffer_unordered(ENQUEUE_CONCURRENCY);
        let mut first_error = None;
        while let Some((key, result)) = publishes.next().await {
            match result {
                Ok(()) => {
                    self.with_recent(|recent| recent.insert(key, now));
                    report.enqueued += 1;
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        if let Some(error) = first_error {
            return Err(error.into());
        }
        Ok(report)
    }

    fn with_recent<T>(&self, f: impl FnOnce(&mut HashMap<String, Instant>) -> T) -> T {
        match self.recent.lock() {
            Ok(mut guard) => f(&mut guard),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Runs a cycle at start and then every interval until `stop` fires. A cycle that
    /// started always finishes.
    pub async fn run(&self, stop: CancellationToken) {
        let Some(interval) = self.config.interval else {
            return;
        };
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if !self.broker.is_connected() {
                tracing::debug!("reconcile cycle skipped: broker not connected");
                continue;
            }
            let started = Instant::now();
            match self.run_cycle().await {
                Ok(report) => tracing::info!(
                    calls = report.calls,
                    pending = report.pending,
                    enqueued = report.enqueued,
                    recently_enqueued = report.recently_enqueued,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "reconcile cycle"
                ),
                Err(error) => tracing::warn!(error = %error, "reconcile cycle failed"),
            }
        }
    }
}
