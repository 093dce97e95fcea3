//! The worker's usage path: gathers the usage records of one allocation and month for
//! `usage.linger_ms` (or until `usage.max_batch` arrived, or until half of
//! `worker.prefetch` records wait in all), then checks them against Puhuri Core and
//! reports what changed with one `set_usage` call.
//!
//! INVARIANT: a record is acked only after Puhuri Core stored its component's total (or
//! already held it); transient failures retry the whole batch (set_usage is an upsert,
//! so a retry never counts twice); a record that can never be accepted (closed month,
//! unknown allocation, a component the offering does not bill by usage) goes to the
//! dead-letter queue with the reason.
//! INVARIANT: records are batched and locked by the allocation itself: a record naming
//! it by `backend_id` is resolved to its resource uuid first, so one allocation and month
//! is one batch and one `set_usage` call however the records name it.
//! INVARIANT: within one process, one allocation and month is reported by one task at a
//! time, so a later batch never overtakes an earlier one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::{
    ComponentTotal, Held, Month, Plan, ResourceRef, UsageRecord, aggregate, check_month, plan,
};
use crate::config::{UsageConfig, WorkerConfig};
use crate::failure::ProcessError;
use crate::metrics::Metrics;
use puhuri_client::{
    OfferingComponent, PuhuriClient, PuhuriError, Resource, ResourceState, WaldurUuid,
};
use puhuri_queue::{Delivery, Retried};

/// How long an offering's components are remembered.
const OFFERING_TTL: Duration = Duration::from_secs(300);
/// How long the resource uuid of a `backend_id` is remembered.
const BACKEND_ID_TTL: Duration = Duration::from_secs(300);

type Key = (ResourceRef, Month);

/// What became of one batch of records; sent to [`UsageReporter::subscribe`] receivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageSettled {
    pub allocation: ResourceRef,
    pub month: Month,
    /// Records in the batch.
    pub records: usize,
    /// Components sent with `set_usage`, with the amount sent.
    pub reported: Vec<(String, String)>,
    /// Components whose reading is older than what Puhuri Core holds (skipped).
    pub stale: Vec<String>,
    /// Components whose total Puhuri Core held already.
    pub unchanged: Vec<String>,
    /// Records dead-lettered, with the reason.
    pub dead_lettered: Vec<String>,
    /// Why the batch will be retried, if it will.
    pub retry: Option<String>,
}

/// The result of checking and reporting one batch.
#[derive(Debug, Default)]
struct Report {
    /// The allocation, once resolved.
    resource_uuid: String,
    backend_id: Option<String>,
    reported: Vec<(String, String)>,
    unchanged: Vec<String>,
    stale: Vec<String>,
    /// Indexes of records refused, with the reason.
    invalid: Vec<(usize, String)>,
}

struct Batch {
    generation: u64,
    records: Vec<(UsageRecord, Delivery)>,
}

/// Gathers and reports usage records.
pub struct UsageReporter {
    client: PuhuriClient,
    config: UsageConfig,
    worker: WorkerConfig,
    pending: Mutex<HashMap<Key, Batch>>,
    generation: std::sync::atomic::AtomicU64,
    flushing_all: std::sync::atomic::AtomicBool,
    running: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    offerings: tokio::sync::Mutex<HashMap<String, (Instant, Vec<OfferingComponent>)>>,
    backend_ids: Mutex<HashMap<String, (Instant, WaldurUuid)>>,
    tasks: TaskTracker,
    stop: CancellationToken,
    /// Where `usage.reported` events go.
    broker: puhuri_queue::Broker,
    settled: tokio::sync::broadcast::Sender<UsageSettled>,
    metrics: Arc<Metrics>,
}

impl UsageReporter {
    pub fn new(
        client: PuhuriClient,
        config: UsageConfig,
        worker: WorkerConfig,
        metrics: Arc<Metrics>,
        broker: puhuri_queue::Broker,
    ) -> UsageReporter {
        UsageReporter {
            client,
            config,
            worker,
            pending: Mutex::new(HashMap::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
            flushing_all: std::sync::atomic::AtomicBool::new(false),
            running: Mutex::new(HashMap::new()),
            offerings: tokio::sync::Mutex::new(HashMap::new()),
            backend_ids: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            broker,
            settled: tokio::sync::broadcast::channel(1024).0,
            metrics,
        }
    }

    /// Every settled batch from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<UsageSettled> {
        self.settled.subscribe()
    }

    /// Takes one record; it is reported with the others of its allocation and month.
    /// A record naming its allocation by `backend_id` is first resolved to the resource
    /// uuid (remembered for a while), so that the batch and its lock are the allocation's
    /// whatever the records call it; a record that cannot be resolved is settled here.
    pub async fn add(self: &Arc<Self>, mut record: UsageRecord, delivery: Delivery) {
        if let ResourceRef::BackendId(backend_id) = &record.allocation {
            let key = record.key();
            let resolved = match check_month(record.month, time::OffsetDateTime::now_utc()) {
                // A closed month is refused in its batch, without a call.
                Err(_) => None,
                Ok(()) => match self.resolve_backend_id(backend_id).await {
                    Ok(uuid) => Some(uuid),
                    Err(error) => {
                        let span = tracing::info_span!("usage", allocation = %key.0, month = %key.1, records = 1);
                        self.settle_failed(&key, 1, vec![delivery], error)
                            .instrument(span)
                            .await;
                        return;
                    }
                },
            };
            if let Some(uuid) = resolved {
                record.allocation = ResourceRef::Uuid(uuid);
            }
        }
        self.batch(record, delivery);
    }

    /// The resource uuid of the allocation with this `backend_id`.
    async fn resolve_backend_id(&self, backend_id: &str) -> Result<WaldurUuid, ProcessError> {
        if let Some((at, uuid)) = self
            .backend_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(backend_id)
            && at.elapsed() < BACKEND_ID_TTL
        {
            return Ok(uuid.clone());
        }
        let resource = self
            .resolve(&ResourceRef::BackendId(backend_id.to_owned()))
            .await?;
        let uuid = WaldurUuid::parse(&resource.uuid).ok_or_else(|| {
            ProcessError::refused(format!(
                "the allocation with backend_id `{backend_id}` has no valid uuid"
            ))
        })?;
        let mut cache = self.backend_ids.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|_, (at, _)| at.elapsed() < BACKEND_ID_TTL);
        cache.insert(backend_id.to_owned(), (Instant::now(), uuid.clone()));
        Ok(uuid)
    }

    fn batch(self: &Arc<Self>, record: UsageRecord, delivery: Delivery) {
        let key = record.key();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let batch = pending.entry(key.clone()).or_insert_with(|| {
            let generation = self
                .generation
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let this = self.clone();
            let key = key.clone();
            let linger = self.config.linger;
            let stop = self.stop.clone();
            self.tasks.spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(linger) => {}
                    // `drain` reports everything itself.
                    () = stop.cancelled() => return,
                }
                this.flush_if(&key, Some(generation)).await;
            });
            Batch {
                generation,
                records: Vec::new(),
            }
        });
        batch.records.push((record, delivery));
        if batch.records.len() >= self.config.max_batch {
            let generation = batch.generation;
            drop(pending);
            let this = self.clone();
            self.tasks
                .spawn(async move { this.flush_if(&key, Some(generation)).await });
            return;
        }
        // Lingering records hold the consumer's prefetch: when half of it waits, report
        // everything now rather than starve the consumer until the timers fire.
        let held: usize = pending.values().map(|b| b.records.len()).sum();
        if held >= self.flush_when_held()
            && !self
                .flushing_all
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            let keys: Vec<Key> = pending.keys().cloned().collect();
            drop(pending);
            let this = self.clone();
            self.tasks.spawn(async move {
                futures_util::future::join_all(keys.iter().map(|key| this.flush_if(key, None)))
                    .await;
                this.flushing_all
                    .store(false, std::sync::atomic::Ordering::Release);
            });
        }
    }

    fn flush_when_held(&self) -> usize {
        (usize::from(self.worker.prefetch) / 2).max(1)
    }

    /// Reports everything gathered so far and waits for every report to finish.
    pub async fn drain(self: &Arc<Self>) {
        self.stop.cancel();
        let keys: Vec<Key> = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for key in keys {
            self.flush_if(&key, None).await;
        }
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Flushes `key`'s batch if it is still the one of `generation` (any with `None`).
    /// The batch is taken only once this task holds the key's lock, so batches of one
    /// key are reported in arrival order and a newer reading is never overwritten by an
    /// older one from this process.
    async fn flush_if(&self, key: &Key, generation: Option<u64>) {
        let lock = {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            running.entry(key.clone()).or_default().clone()
        };
        {
            let _guard = lock.lock().await;
            let batch = {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                match pending.get(key) {
                    Some(batch) if generation.is_none_or(|g| g == batch.generation) => {
                        pending.remove(key)
                    }
                    _ => None,
                }
            };
            if let Some(batch) = batch {
                let span = tracing::info_span!(
                    "usage",
                    allocation = %key.0,
                    month = %key.1,
                    records = batch.records.len(),
                );
                self.flush(key, batch.records).instrument(span).await;
            }
        }
        drop(lock);
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running
            .get(key)
            .is_some_and(|lock| Arc::strong_count(lock) <= 1)
        {
            running.remove(key);
        }
    }

    async fn flush(&self, key: &Key, batch: Vec<(UsageRecord, Delivery)>) {
        let (records, deliveries): (Vec<UsageRecord>, Vec<Delivery>) = batch.into_iter().unzip();
        let mut settled = UsageSettled {
            allocation: key.0.clone(),
            month: key.1,
            records: records.len(),
            reported: Vec::new(),
            unchanged: Vec::new(),
            dead_lettered: Vec::new(),
            retry: None,
            stale: Vec::new(),
        };
        match self.report(key, &records).await {
            Ok(mut report) => {
                let invalid: HashMap<usize, String> =
                    std::mem::take(&mut report.invalid).into_iter().collect();
                let unchanged = report.unchanged.join(", ");
                let stale = report.stale.join(", ");
                if !report.reported.is_empty() {
                    let reported: Vec<String> = report
                        .reported
                        .iter()
                        .map(|(component, amount)| format!("{component}={amount}"))
                        .collect();
                    tracing::info!(reported = %reported.join(", "), %unchanged, %stale, "usage reported");
                } else {
                    tracing::info!(%unchanged, %stale, "usage unchanged; nothing sent");
                }
                let reported: Vec<&str> = report.reported.iter().map(|(c, _)| c.as_str()).collect();
                for (index, delivery) in deliveries.into_iter().enumerate() {
                    if let Some(reason) = invalid.get(&index) {
                        tracing::error!(error = %reason, "usage record refused; dead-lettering");
                        self.dead_letter(delivery, reason).await;
                        settled.dead_lettered.push(reason.clone());
                        continue;
                    }
                    let component = &records[index].component;
                    let outcome = if reported.contains(&component.as_str()) {
                        "reported"
                    } else if report.stale.contains(component) {
                        "stale"
                    } else {
                        "unchanged"
                    };
                    self.metrics.usage_records(outcome, 1);
                    if let Err(error) = delivery.ack().await {
                        tracing::warn!(error = %error, "ack failed; the redelivery will find the total unchanged");
                    }
                }
                settled.reported = report.reported;
                settled.unchanged = report.unchanged;
                settled.stale = report.stale;
            }
            Err(error) => {
                self.settle_failed(key, records.len(), deliveries, error)
                    .await;
                return;
            }
        }
        let _ = self.settled.send(settled);
    }

    /// Settles records that failed before anything was reported: dead-lettered when the
    /// failure is permanent, retried later when it is temporary.
    async fn settle_failed(
        &self,
        key: &Key,
        records: usize,
        deliveries: Vec<Delivery>,
        error: ProcessError,
    ) {
        let mut settled = UsageSettled {
            allocation: key.0.clone(),
            month: key.1,
            records,
            reported: Vec::new(),
            unchanged: Vec::new(),
            dead_lettered: Vec::new(),
            retry: None,
            stale: Vec::new(),
        };
        let reason = error.to_string();
        if error.is_unauthorized() {
            // An outage of the whole service, not a fault of these records.
            tracing::warn!(error = %reason, "Puhuri Core refused the token; usage records go back to the queue");
            for delivery in deliveries {
                if let Err(error) = delivery.release().await {
                    tracing::warn!(error = %error, "cannot release; the broker will redeliver");
                }
            }
            settled.retry = Some(reason);
        } else if !error.is_transient() {
            tracing::error!(error = %reason, "usage records refused; dead-lettering");
            for delivery in deliveries {
                self.dead_letter(delivery, &reason).await;
                settled.dead_lettered.push(reason.clone());
            }
        } else {
            let retry_after = error.retry_after();
            for delivery in deliveries {
                match delivery
                    .retry_later(
                        &reason,
                        self.worker.max_attempts,
                        retry_after,
                        self.worker.retry_jitter,
                    )
                    .await
                {
                    Ok(Retried::Scheduled { attempts, .. }) => {
                        let tiers = self.worker.retry_delays.len().max(1) as u32;
                        self.metrics.retry(attempts.clamp(1, tiers));
                        self.metrics.usage_records("retried", 1);
                    }
                    Ok(Retried::DeadLettered { .. }) => {
                        self.metrics.usage_records("dead-lettered", 1);
                        settled.dead_lettered.push(reason.clone());
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "cannot schedule a retry; the broker will redeliver");
                    }
                }
            }
            tracing::warn!(error = %reason, "usage not reported; retry scheduled");
            settled.retry = Some(reason);
        }
        let _ = self.settled.send(settled);
    }

    /// The `usage.reported` event (`schemas/usage-event.v1.schema.json`), published right
    /// after `set_usage` stored the totals. A failure is logged: the usage is stored either way.
    async fn publish_reported(&self, month: Month, report: &Report, records: usize) {
        let usages: Vec<serde_json::Value> = report
            .reported
            .iter()
            .map(
                |(component, amount)| serde_json::json!({"component": component, "amount": amount}),
            )
            .collect();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let event = serde_json::json!({
            "v": 1,
            "type": "usage.reported",
            "id": id,
            "time": time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            "allocation": {"resource_uuid": report.resource_uuid, "backend_id": report.backend_id},
            "month": month.to_string(),
            "usages": usages,
            "records": records,
        });
        let body = event.to_string();
        if let Err(error) = self
            .broker
            .publish_event("usage.reported", body.as_bytes(), &id)
            .await
        {
            tracing::warn!(error = %error, "usage.reported event not published");
        }
    }

    async fn dead_letter(&self, delivery: Delivery, reason: &str) {
        self.metrics.usage_records("dead-lettered", 1);
        if let Err(error) = delivery.dead_letter(reason).await {
            tracing::warn!(error = %error, "cannot dead-letter; it will be redelivered");
        }
    }

    async fn resolve(&self, allocation: &ResourceRef) -> Result<Resource, ProcessError> {
        self.client
            .find_resource(allocation)
            .await?
            .map_err(ProcessError::refused)
    }

    async fn components(&self, offering_uuid: &str) -> Result<Vec<OfferingComponent>, PuhuriError> {
        let mut cache = self.offerings.lock().await;
        if let Some((at, components)) = cache.get(offering_uuid)
            && at.elapsed() < OFFERING_TTL
        {
            return Ok(components.clone());
        }
        let components = self.client.offering_components(offering_uuid).await?;
        cache.insert(
            offering_uuid.to_owned(),
            (Instant::now(), components.clone()),
        );
        Ok(components)
    }

    async fn report(&self, key: &Key, records: &[UsageRecord]) -> Result<Report, ProcessError> {
        let (allocation, month) = key;
        check_month(*month, time::OffsetDateTime::now_utc()).map_err(ProcessError::refused)?;
        let resource = self.resolve(allocation).await?;
        match &resource.state {
            ResourceState::Ok | ResourceState::Updating | ResourceState::Terminating => {}
            ResourceState::Creating => {
                return Err(ProcessError::NotYet(
                    "the allocation is not approved yet (Creating)".into(),
                ));
            }
            other => {
                return Err(ProcessError::refused(format!(
                    "the allocation is {other}; Puhuri Core takes usage only while it is OK, Updating or Terminating"
                )));
            }
        }
        let mut report = Report {
            resource_uuid: resource.uuid.clone(),
            backend_id: resource.backend_id.clone().filter(|b| !b.is_empty()),
            ..Report::default()
        };
        let mut accepted: Vec<&UsageRecord> = Vec::new();
        match resource.offering_uuid.as_deref().filter(|o| !o.is_empty()) {
            Some(offering) => {
                let components = self.components(offering).await?;
                let takes: Vec<&str> = components
                    .iter()
                    .filter(|c| c.takes_usage(self.client.api()))
                    .map(|c| c.kind.as_str())
                    .collect();
                for (index, record) in records.iter().enumerate() {
                    if takes.contains(&record.component.as_str()) {
                        accepted.push(record);
                    } else {
                        report.invalid.push((
                            index,
                            format!(
                                "component `{}` takes no usage on offering {} (it takes: {})",
                                record.component,
                                resource.offering_name.as_deref().unwrap_or(offering),
                                if takes.is_empty() {
                                    "none".to_owned()
                                } else {
                                    takes.join(", ")
                                }
                            ),
                        ));
                    }
                }
            }
            None => accepted.extend(records.iter()),
        }
        let totals = aggregate(accepted);
        if totals.is_empty() {
            return Ok(report);
        }
        let period = month.billing_period();
        let stored = self
            .client
            .component_usages(&resource.uuid, &period)
            .await?;
        let held: BTreeMap<String, Held> = stored
            .iter()
            .filter_map(|u| {
                let cents = super::parse_cents(&u.usage)?;
                let measured_at = super::measured_from_description(&u.description);
                Some((u.kind.clone(), Held { cents, measured_at }))
            })
            .collect();
        let mut to_send: Vec<&ComponentTotal> = Vec::new();
        for total in &totals {
            match plan(total, held.get(&total.component)) {
                Plan::Send => to_send.push(total),
                Plan::Unchanged => report.unchanged.push(total.component.clone()),
                Plan::Stale => report.stale.push(total.component.clone()),
            }
        }
        if !to_send.is_empty() {
            // Puhuri Core files the call under the month it arrives in.
            check_month(*month, time::OffsetDateTime::now_utc()).map_err(ProcessError::refused)?;
            let usages: Vec<(String, String, String)> = to_send
                .iter()
                .map(|t| {
                    (
                        t.component.clone(),
                        t.amount.to_cents_string(),
                        super::stored_description(&t.description, t.measured_at),
                    )
                })
                .collect();
            self.client.set_usage(&resource.uuid, &usages).await?;
            self.metrics.usage_report();
            report.reported = usages.into_iter().map(|(c, a, _)| (c, a)).collect();
            self.publish_reported(*month, &report, records.len()).await;
        }
        // Users' shares of every total that is now current (sent or unchanged), where
        // Puhuri Core holds another value: a redelivery after a crash between the total
        // and the shares, or a new split of the same total, still gets them stored.
        let current: Vec<&ComponentTotal> = totals
            .iter()
            .filter(|t| !t.users.is_empty() && !report.stale.contains(&t.component))
            .collect();
        if !current.is_empty() {
            let stored = if report.reported.is_empty() {
                stored
            } else {
                self.client
                    .component_usages(&resource.uuid, &period)
                    .await?
            };
            for total in current {
                let Some(usage) = stored.iter().find(|u| u.kind == total.component) else {
                    return Err(ProcessError::NotYet(
                        format!(
                            "the usage of `{}` is not listed after set_usage",
                            total.component
                        )
                        .into(),
                    ));
                };
                let shares: BTreeMap<String, i128> = self
                    .client
                    .user_usages(&resource.uuid, &total.component)
                    .await?
                    .into_iter()
                    .filter(|u| u.component_usage.contains(&usage.uuid))
                    .filter_map(|u| super::parse_cents(&u.usage).map(|c| (u.username, c)))
                    .collect();
                for (username, amount) in &total.users {
                    if shares.get(username) != Some(&amount.cents()) {
                        self.client
                            .set_user_usage(&usage.uuid, username, &amount.to_cents_string())
                            .await?;
                    }
                }
            }
        }
        Ok(report)
    }
}
