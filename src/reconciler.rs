//! The reconciler: every interval, list the allocations waiting for this provider and
//! enqueue them, so that a lost notification delays a decision but never loses it; and
//! remove the dead letters of allocations that no longer wait, so that what stays in the
//! dead letters needs a human.
//!
//! INVARIANT: the reconciler only enqueues hints; deciding stays with the workers, which
//! re-fetch each allocation. Several replicas may run: a duplicate costs one re-fetch.
//! INVARIANT: an allocation this reconciler enqueued is not enqueued again within
//! `recheck` (held allocations are re-evaluated at that pace, not every cycle).
//! INVARIANT: a pass progresses under errors: a failed page is retried within the pass
//! (with backoff, honouring `Retry-After`), what each page found is enqueued before the
//! next page is read, and a pass that gives up on a page leaves a cursor there: the next
//! pass resumes from that page.
//! INVARIANT: after the first page, pages are read from the last one back, so that
//! allocations decided during the pass (which leave pages already read) never push one
//! still waiting past the reader.
//! INVARIANT: a dead letter is removed only when its allocation was read from Puhuri Core
//! and no longer waits; one that still waits, cannot be read, or is not about an
//! allocation's decision stays.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::ReconcileConfig;
use crate::metrics::Metrics;
use crate::notification::WorkItem;
use crate::work::Work;
use puhuri_client::{AllocationHint, Page, PuhuriClient, PuhuriError, Waiting};
use puhuri_queue::{Broker, PublishError, QueueError, Select};

/// Publishes in flight at once while enqueueing one page's allocations.
const ENQUEUE_CONCURRENCY: usize = 64;
/// Attempts at one list page within a pass before the pass gives up on it.
pub const PAGE_ATTEMPTS: u32 = 8;
/// The wait before the second attempt at a page; it doubles per attempt.
const PAGE_BACKOFF_FIRST: Duration = Duration::from_millis(200);
/// The longest wait between attempts at a page (a longer `Retry-After` is capped here).
const PAGE_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Dead letters examined per pass.
const DEAD_LETTERS_PER_PASS: usize = 500;
/// Allocations read at once while examining dead letters.
const DEAD_LETTER_CONCURRENCY: usize = 8;

/// What one cycle did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CycleReport {
    /// Puhuri Core list calls made (pages and their retries included).
    pub calls: usize,
    /// List calls that failed and were tried again within the pass.
    pub page_retries: usize,
    /// Whether the pass started from the page where the previous pass gave up.
    pub resumed: bool,
    /// Allocations found waiting (each once, also when the pass read it twice).
    pub pending: usize,
    /// Allocations enqueued for the workers.
    pub enqueued: usize,
    /// Allocations skipped because this reconciler enqueued them within `recheck`.
    pub recently_enqueued: usize,
    /// Dead letters removed because their allocation no longer waits.
    pub dead_letters_resolved: usize,
}

/// A pass in progress: its report and the allocations it found.
#[derive(Default)]
struct Pass {
    report: CycleReport,
    seen: HashSet<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("listing pending allocations failed: {0}")]
    List(#[from] PuhuriError),
    #[error("enqueueing failed: {0}")]
    Publish(#[from] PublishError),
    #[error("stopped while waiting to retry a list page")]
    Stopped,
}

/// Where the next pass starts: an offering (its index) and the pages of it still to read
/// (none: from its first page).
#[derive(Debug, Clone)]
struct Cursor {
    scope: usize,
    pages: Vec<u64>,
}

/// The reconciler role.
pub struct Reconciler {
    client: PuhuriClient,
    broker: Broker,
    offerings: Vec<String>,
    config: ReconcileConfig,
    recent: Mutex<HashMap<String, Instant>>,
    resume: Mutex<Option<Cursor>>,
    passes: AtomicU64,
    last: Mutex<Option<CycleReport>>,
    metrics: Arc<Metrics>,
    /// Cuts the wait before the next pass short ([`Reconciler::request_pass`]).
    wake: tokio::sync::Notify,
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
            resume: Mutex::new(None),
            passes: AtomicU64::new(0),
            last: Mutex::new(None),
            metrics: Arc::new(Metrics::new()),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Counts cycles, their list calls and what they enqueued in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Reconciler {
        self.metrics = metrics;
        self
    }

    /// Runs the next pass now rather than after the interval (e.g. when the event stream
    /// reconnected: events published while it was away are not sent again). A request
    /// during a pass runs one more pass after it.
    pub fn request_pass(&self) {
        self.wake.notify_one();
    }

    /// Whether this reconciler runs passes on its own ([`Reconciler::run`]: an interval is
    /// set), so that [`Reconciler::request_pass`] is acted on.
    pub fn runs_passes(&self) -> bool {
        self.config.interval.is_some()
    }

    /// Passes started so far, whatever their outcome.
    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::Relaxed)
    }

    /// What the last pass did, also when it stopped at a page.
    pub fn last_report(&self) -> Option<CycleReport> {
        lock(&self.last).clone()
    }

    /// One pass over every configured offering (or everything the token sees), in a
    /// `reconcile` span, counted in the metrics.
    pub async fn run_cycle(&self) -> Result<CycleReport, ReconcileError> {
        self.run_cycle_until(&CancellationToken::new()).await
    }

    async fn run_cycle_until(
        &self,
        stop: &CancellationToken,
    ) -> Result<CycleReport, ReconcileError> {
        self.passes.fetch_add(1, Ordering::Relaxed);
        let mut pass = Pass::default();
        let result = self
            .cycle(&mut pass, stop)
            .instrument(tracing::info_span!("reconcile"))
            .await;
        let mut report = pass.report;
        self.metrics
            .reconcile_cycle(result.is_ok(), report.calls, report.enqueued);
        self.metrics.reconcile_page_retries(report.page_retries);
        if let Err(error) = &result {
            tracing::warn!(
                error = %error,
                calls = report.calls,
                page_retries = report.page_retries,
                pending = report.pending,
                enqueued = report.enqueued,
                "reconcile pass stopped at a page; the next pass resumes there"
            );
        }
        // Dead letters are examined whatever the listing did: they need only their own
        // allocations to be readable.
        if !stop.is_cancelled() {
            report.dead_letters_resolved = self.resolve_dead_letters().await;
        }
        *lock(&self.last) = Some(report.clone());
        result.map(|()| report)
    }

    fn scopes(&self) -> Vec<Option<&str>> {
        if self.offerings.is_empty() {
            vec![None]
        } else {
            self.offerings.iter().map(|o| Some(o.as_str())).collect()
        }
    }

    async fn cycle(&self, pass: &mut Pass, stop: &CancellationToken) -> Result<(), ReconcileError> {
        let now = Instant::now();
        self.with_recent(|recent| {
            recent.retain(|_, at| now.duration_since(*at) < self.config.recheck)
        });
        let scopes = self.scopes();
        let cursor = lock(&self.resume)
            .take()
            .filter(|cursor| cursor.scope < scopes.len());
        pass.report.resumed = cursor.is_some();
        let (first, mut resume_pages) = match cursor {
            Some(cursor) => (cursor.scope, cursor.pages),
            None => (0, Vec::new()),
        };
        for (scope, offering) in scopes.iter().enumerate().skip(first) {
            let pages = std::mem::take(&mut resume_pages);
            if let Err((pages, error)) = self.list_scope(*offering, pages, pass, stop).await {
                *lock(&self.resume) = Some(Cursor { scope, pages });
                return Err(error);
            }
        }
        Ok(())
    }

    /// Lists one offering (or everything) and enqueues each page as it is read. Without
    /// `pages`, the first page is read, then the others from the last one back, then the
    /// first again when the list shrank meanwhile: an allocation decided during the pass
    /// leaves the list from a page already read, which moves later allocations only
    /// towards pages still to read (the first page last), so none is skipped. On failure,
    /// returns the pages still to read, the failed one first.
    async fn list_scope(
        &self,
        offering: Option<&str>,
        mut pages: Vec<u64>,
        pass: &mut Pass,
        stop: &CancellationToken,
    ) -> Result<(), (Vec<u64>, ReconcileError)> {
        // The count when the first page was read, while it is to be read again if the
        // list shrinks.
        let mut first_total = None;
        if pages.is_empty() {
            let url = self.client.pending_page_url(offering, 1);
            let page = match self.read_page(&url, pass, stop).await {
                Ok(page) => page,
                Err(error) => return Err((Vec::new(), error)),
            };
            let (total, next) = (page.total, page.next.clone());
            if let Err(error) = self.enqueue(page.items, pass).await {
                return Err((Vec::new(), error.into()));
            }
            match (total, next) {
                (Some(total), _) => {
                    let last = total.div_ceil(puhuri_client::PENDING_PAGE_SIZE);
                    pages = (2..=last).rev().collect();
                    first_total = Some(total);
                }
                // No count: follow the links forward.
                (None, Some(next)) => return self.follow(next, pass, stop).await,
                (None, None) => {}
            }
        }
        while let Some(&number) = pages.first() {
            let url = self.client.pending_page_url(offering, number);
            match self.read_page(&url, pass, stop).await {
                Ok(page) => {
                    if number == 2
                        && let (Some(then), Some(now)) = (first_total, page.total)
                        && now < then
                    {
                        pages.push(1);
                    }
                    if let Err(error) = self.enqueue(page.items, pass).await {
                        return Err((pages, error.into()));
                    }
                }
                // The list shrank below this page since it was counted.
                Err(ReconcileError::List(PuhuriError::Permanent { status: 404, .. })) => {
                    if number == 2 && first_total.take().is_some() {
                        pages.push(1);
                    }
                }
                Err(error) => return Err((pages, error)),
            }
            pages.remove(0);
        }
        Ok(())
    }

    /// Follows `Link: rel="next"` from `url` to the end (a server that does not count).
    async fn follow(
        &self,
        url: String,
        pass: &mut Pass,
        stop: &CancellationToken,
    ) -> Result<(), (Vec<u64>, ReconcileError)> {
        let mut next = Some(url);
        while let Some(url) = next.take() {
            let page = match self.read_page(&url, pass, stop).await {
                Ok(page) => page,
                Err(ReconcileError::List(PuhuriError::Permanent { status: 404, .. })) => break,
                Err(error) => return Err((Vec::new(), error)),
            };
            if let Err(error) = self.enqueue(page.items, pass).await {
                return Err((Vec::new(), error.into()));
            }
            next = page.next;
        }
        Ok(())
    }

    /// Reads one page, retrying transient failures with a doubling, jittered backoff that
    /// covers the server's `Retry-After`.
    async fn read_page(
        &self,
        url: &str,
        pass: &mut Pass,
        stop: &CancellationToken,
    ) -> Result<Page<AllocationHint>, ReconcileError> {
        let mut backoff = PAGE_BACKOFF_FIRST;
        let mut attempt = 1;
        loop {
            pass.report.calls += 1;
            let error = match self.client.pending_page(url).await {
                Ok(page) => return Ok(page),
                Err(error) => error,
            };
            let retry_after = match &error {
                PuhuriError::Transient { retry_after, .. } if attempt < PAGE_ATTEMPTS => {
                    *retry_after
                }
                _ => return Err(error.into()),
            };
            let wait = puhuri_queue::jittered(backoff, 0.5)
                .max(retry_after.unwrap_or_default())
                .min(PAGE_BACKOFF_MAX);
            tracing::info!(
                attempt,
                wait_ms = wait.as_millis() as u64,
                error = %error,
                "list page failed; trying it again"
            );
            pass.report.page_retries += 1;
            tokio::select! {
                biased;
                () = stop.cancelled() => return Err(ReconcileError::Stopped),
                () = tokio::time::sleep(wait) => {}
            }
            backoff = (backoff * 2).min(PAGE_BACKOFF_MAX);
            attempt += 1;
        }
    }

    /// Enqueues one page's allocations, skipping those enqueued within `recheck`.
    /// Publishes run concurrently (each still awaits its own confirm); an allocation
    /// counts as enqueued, and is remembered, only once its publish is confirmed.
    async fn enqueue(
        &self,
        hints: Vec<AllocationHint>,
        pass: &mut Pass,
    ) -> Result<(), PublishError> {
        let Pass { report, seen } = pass;
        let received_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let mut items = Vec::new();
        for hint in hints {
            let key = hint.key();
            if !seen.insert(key.clone()) {
                continue;
            }
            report.pending += 1;
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
                    let at = Instant::now();
                    self.with_recent(|recent| recent.insert(key, at));
                    report.enqueued += 1;
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Removes the dead letters whose allocation no longer waits (decided since by this
    /// service, another replica or a human): each is read from Puhuri Core first. Returns
    /// how many were removed; failures leave the letters where they are.
    pub async fn resolve_dead_letters(&self) -> usize {
        let letters = match self.broker.dead_letters(DEAD_LETTERS_PER_PASS).await {
            Ok(letters) => letters,
            Err(error) => {
                tracing::warn!(error = %error, "dead letters could not be read");
                return 0;
            }
        };
        if letters.is_empty() {
            return 0;
        }
        // Per message id: how many letters there are, and the hints of those about an
        // allocation's decision. An id is resolved only when all its letters are.
        let mut by_id: HashMap<String, (usize, Vec<AllocationHint>)> = HashMap::new();
        for letter in &letters {
            let entry = by_id.entry(letter.message_id.clone()).or_default();
            entry.0 += 1;
            if let Ok(Work::Allocation(item)) = crate::work::dead(letter)
                && item.event_type != "access-report"
            {
                entry.1.push(item.hint);
            }
        }
        let candidates: Vec<(String, usize, Vec<AllocationHint>)> = by_id
            .into_iter()
            .filter(|(_, (count, hints))| *count == hints.len())
            .map(|(id, (count, hints))| (id, count, hints))
            .collect();
        let checked = futures_util::stream::iter(candidates)
            .map(|(id, count, hints)| async move {
                let mut states = Vec::new();
                for hint in &hints {
                    match self.no_longer_waits(hint).await {
                        Some(state) => states.push(state),
                        None => return None,
                    }
                }
                Some((id, count, states))
            })
            .buffer_unordered(DEAD_LETTER_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let mut removed = 0;
        for (id, count, states) in checked.into_iter().flatten() {
            for _ in 0..count {
                match self.remove_dead_letter(&id).await {
                    Ok(0) => break,
                    Ok(n) => {
                        removed += n;
                        self.metrics.dead_letters_resolved(n);
                        tracing::info!(
                            message_id = %id,
                            state = states.first().map(String::as_str).unwrap_or_default(),
                            "dead letter removed: its allocation no longer waits"
                        );
                    }
                    Err(error) => {
                        tracing::warn!(message_id = %id, error = %error, "a resolved dead letter could not be removed");
                        break;
                    }
                }
            }
        }
        removed
    }

    /// The allocation's state when it was read and no longer waits; `None` when it
    /// still waits, is not yet at the provider, or cannot be read.
    async fn no_longer_waits(&self, hint: &AllocationHint) -> Option<String> {
        match self.client.fetch_allocation(hint).await {
            Ok(fetched) => match fetched.waiting(self.client.api()) {
                Waiting::AlreadyHandled(state) => Some(state),
                Waiting::Yes | Waiting::NotYet(_) => None,
            },
            Err(error) => {
                tracing::debug!(error = %error, "a dead letter's allocation could not be read; it stays");
                None
            }
        }
    }

    async fn remove_dead_letter(&self, message_id: &str) -> Result<usize, QueueError> {
        self.broker
            .settle_dead_letters(Select::One(message_id), false, |_, _| {})
            .await
    }

    fn with_recent<T>(&self, f: impl FnOnce(&mut HashMap<String, Instant>) -> T) -> T {
        f(&mut lock(&self.recent))
    }

    /// Runs a pass as soon as the broker is connected, then one every interval (after
    /// the previous one ends), until `stop` fires; a pass due while the broker is away
    /// runs as soon as it is back. A pass that started finishes, except for waits
    /// between attempts at a page, which `stop` cuts short.
    pub async fn run(&self, stop: CancellationToken) {
        let Some(interval) = self.config.interval else {
            return;
        };
        loop {
            if !self.broker.is_connected() {
                tracing::debug!("reconcile pass waits for the broker");
            }
            if !self.broker.wait_connected(&stop).await {
                return;
            }
            let started = Instant::now();
            if let Ok(report) = self.run_cycle_until(&stop).await {
                tracing::info!(
                    calls = report.calls,
                    page_retries = report.page_retries,
                    resumed = report.resumed,
                    pending = report.pending,
                    enqueued = report.enqueued,
                    recently_enqueued = report.recently_enqueued,
                    dead_letters_resolved = report.dead_letters_resolved,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "reconcile cycle"
                );
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
                () = self.wake.notified() => {}
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}
