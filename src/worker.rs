//! Workers: take notifications off the queue, re-fetch the allocation, decide by policy,
//! write the decision back to Puhuri Core, then settle the delivery.
//!
//! INVARIANT: a notification is never trusted: the allocation is re-fetched and acted on
//! only while it still waits for the provider.
//! INVARIANT: a delivery is acked only after Puhuri Core answered every write of the
//! decision (or the allocation turned out to be decided already). Transient failures go
//! to a delay tier and, after `max_attempts`, to the dead-letter queue; permanent ones go
//! to the dead-letter queue at once. Nothing is acked unprocessed and nothing loops forever.
//! INVARIANT: a 401 from Puhuri Core is not the message's fault: the delivery goes back to
//! the queue with no attempt counted, and while the circuit is open (`circuit.rs`) the
//! worker takes no new deliveries.
//! INVARIANT: `backend_id` is a deterministic function of the allocation, and
//! `set_backend_id` is idempotent, so a redelivery writes the same value again at most.
//! INVARIANT: within one worker process, one allocation is processed by one task at a
//! time; across processes, Puhuri Core's state machine (409) is the arbiter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::circuit::Circuit;
use crate::config::{ApiGeneration, TeamConfig, UsageConfig, WorkerConfig};
use crate::decision::{Decided, DecisionEvent};
use crate::metrics::Metrics;
use crate::notification::{AllocationHint, WorkItem};
use puhuri_queue::{Broker, Delivery, Retried};

use crate::customers::{Abbreviations, CustomerDirectory};
use crate::facts::CustomerExtras;
use crate::reload::{PolicyHandle, ReloadCounters};
use crate::team::{ResourceSummary, TeamEvent};
use crate::usage::report::{UsageReporter, UsageSettled};
use crate::work::Work;
use puhuri_client::{ErredWrite, Fetched, PuhuriClient, PuhuriError, ResourceState, Waiting};
use puhuri_policy::{Action, Policy, Verdict};

/// What happened to one allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Approved {
        backend_id: String,
    },
    Rejected {
        reason: String,
    },
    Erred {
        message: String,
    },
    Held {
        note: String,
    },
    /// It was decided already (redelivery, another replica, or a human).
    AlreadyHandled {
        state: String,
    },
    /// It has not reached the provider yet; the reconciler will find it when it does.
    NotWaiting {
        state: String,
    },
}

impl Outcome {
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Approved { .. } => "approved",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Erred { .. } => "erred",
            Outcome::Held { .. } => "held",
            Outcome::AlreadyHandled { .. } => "already-handled",
            Outcome::NotWaiting { .. } => "not-waiting",
        }
    }
}

/// What became of one delivery; sent to [`Worker::subscribe`] receivers.
#[derive(Debug, Clone)]
pub struct Settled {
    /// The notification id.
    pub id: String,
    /// Which attempt this was (1 for the first).
    pub attempt: u32,
    /// The allocation the notification named.
    pub hint: AllocationHint,
    /// The outcome, or why it failed.
    pub result: Result<Outcome, Arc<ProcessError>>,
    /// The policy rule that decided, when one did.
    pub rule: Option<String>,
    pub disposition: Disposition,
}

/// What was done with the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Acked,
    RetryScheduled,
    DeadLettered,
    /// Settling failed; the broker will redeliver it.
    LeftToBroker,
    /// Back to the queue unprocessed, no attempt counted (Puhuri Core refused the token).
    Released,
}

pub use crate::failure::ProcessError;

/// Serializes work on one allocation within this process.
#[derive(Default)]
struct KeyedLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = match self.locks.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        locks.entry(key.to_owned()).or_default().clone()
    }

    fn release(&self, key: &str) {
        let mut locks = match self.locks.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Only this map and the finishing task hold it: nobody else is waiting.
        if locks
            .get(key)
            .is_some_and(|lock| Arc::strong_count(lock) <= 2)
        {
            locks.remove(key);
        }
    }
}

/// The worker role.
pub struct Worker {
    client: PuhuriClient,
    policy: PolicyHandle,
    /// Decide and publish, but write nothing to Puhuri Core.
    shadow: bool,
    broker: Broker,
    config: WorkerConfig,
    locks: KeyedLocks,
    settled: tokio::sync::broadcast::Sender<Settled>,
    metrics: Arc<Metrics>,
    usage_config: UsageConfig,
    usage: Arc<UsageReporter>,
    team: TeamConfig,
    circuit: Arc<Circuit>,
    /// The provider's customers file (country, abbreviation, tags), when configured.
    customers: Arc<CustomerDirectory>,
    abbreviations: Arc<Abbreviations>,
}

/// The usage path of a worker.
fn usage_reporter(
    client: &PuhuriClient,
    usage: &UsageConfig,
    worker: &WorkerConfig,
    metrics: &Arc<Metrics>,
    broker: &Broker,
) -> Arc<UsageReporter> {
    Arc::new(UsageReporter::new(
        client.clone(),
        usage.clone(),
        worker.clone(),
        metrics.clone(),
        broker.clone(),
    ))
}

impl Worker {
    pub fn new(
        client: PuhuriClient,
        policy: Policy,
        broker: Broker,
        config: WorkerConfig,
    ) -> Worker {
        let metrics = Arc::new(Metrics::new());
        let usage_config = UsageConfig::default();
        Worker {
            usage: usage_reporter(&client, &usage_config, &config, &metrics, &broker),
            usage_config,
            team: TeamConfig::default(),
            client,
            policy: PolicyHandle::new(policy),
            shadow: false,
            broker,
            config,
            locks: KeyedLocks::default(),
            settled: tokio::sync::broadcast::channel(1024).0,
            circuit: Arc::new(Circuit::new(metrics.clone())),
            metrics,
            customers: Arc::new(CustomerDirectory::default()),
            abbreviations: Arc::new(Abbreviations::default()),
        }
    }

    /// The provider's customers file: the source of `customer.country` and `tags`.
    pub fn with_customers(mut self, customers: CustomerDirectory) -> Worker {
        self.customers = Arc::new(customers);
        self
    }

    fn rebuild_usage(&mut self) {
        self.usage = usage_reporter(
            &self.client,
            &self.usage_config,
            &self.config,
            &self.metrics,
            &self.broker,
        );
    }

    /// Counts decisions, settlements, retries and policy reloads in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Worker {
        metrics.policy_loaded();
        self.metrics = metrics;
        self.rebuild_usage();
        self
    }

    /// Takes no new deliveries while `circuit` is open.
    pub fn with_circuit(mut self, circuit: Arc<Circuit>) -> Worker {
        self.circuit = circuit;
        self
    }

    /// How usage records are gathered before they are reported.
    pub fn with_usage(mut self, usage: UsageConfig) -> Worker {
        self.usage_config = usage;
        self.rebuild_usage();
        self
    }

    /// Whether a team snapshot follows each approval.
    pub fn with_team(mut self, team: TeamConfig) -> Worker {
        self.team = team;
        self
    }

    /// Every settled batch of usage records from now on.
    pub fn subscribe_usage(&self) -> tokio::sync::broadcast::Receiver<UsageSettled> {
        self.usage.subscribe()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Every settled delivery from now on (for tests, tooling and metrics).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Settled> {
        self.settled.subscribe()
    }

    /// In shadow mode the worker decides and publishes the decision event, but writes
    /// nothing to Puhuri Core.
    pub fn with_shadow(mut self, shadow: bool) -> Worker {
        self.shadow = shadow;
        self
    }

    pub fn is_shadow(&self) -> bool {
        self.shadow
    }

    /// The running policy's version (`sha256:...`).
    pub fn policy_version(&self) -> String {
        self.policy.version()
    }

    /// How often the policy was reloaded or a new file refused.
    pub fn policy_reloads(&self) -> &ReloadCounters {
        self.policy.reloads()
    }

    /// The running policy, for the reloader to swap.
    pub fn policy_handle(&self) -> &PolicyHandle {
        &self.policy
    }

    fn policy(&self) -> Arc<Policy> {
        self.policy.current()
    }

    /// Consumes until `stop` fires, then lets every started delivery finish.
    ///
    /// Prefetch equals the number of allocations decided concurrently by this process:
    /// each decision waits on Puhuri Core for most of its time, so many in flight keep
    /// throughput up, while a bound keeps other workers fed and memory flat.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let tracker = TaskTracker::new();
        'outer: while !stop.is_cancelled() {
            let Some(mut deliveries) = self.broker.consume(self.config.prefetch, &stop).await
            else {
                break;
            };
            tracing::info!(prefetch = self.config.prefetch, "worker consuming");
            loop {
                if let Some(open) = self.circuit.open_reason() {
                    tracing::warn!(
                        reason = open.kind(),
                        detail = open.detail(),
                        "circuit open: taking no new deliveries until Puhuri Core answers again"
                    );
                    if !self.circuit.wait_closed(&stop).await {
                        break 'outer;
                    }
                    tracing::info!("circuit closed: taking deliveries again");
                }
                // Cancellation is checked only between deliveries; a started one finishes.
                let delivery = tokio::select! {
                    biased;
                    () = stop.cancelled() => break 'outer,
                    delivery = deliveries.next() => delivery,
                };
                let Some(delivery) = delivery else {
                    tracing::warn!("consumer ended; reopening");
                    break;
                };
                let worker = self.clone();
                tracker.spawn(async move { worker.handle(delivery).await });
            }
        }
        tracker.close();
        tracker.wait().await;
        self.usage.drain().await;
    }

    async fn handle(&self, delivery: Delivery) {
        let item = match crate::work::delivered(&delivery) {
            Ok(Work::Allocation(item)) => item,
            Ok(Work::Usage(record)) => {
                self.usage.add(record, delivery);
                return;
            }
            Err(error) => {
                let reason = error.to_string();
                tracing::error!(message_id = %delivery.message_id, error = %reason, "dead-lettering an undecodable message");
                if let Err(error) = delivery.dead_letter(&reason).await {
                    tracing::warn!(error = %error, "cannot dead-letter; it will be redelivered");
                }
                return;
            }
        };
        self.metrics.delivered(item.received_at_ms);
        let span = tracing::info_span!(
            "notification",
            id = %item.id,
            source = %item.source,
            // Signed: OpenTelemetry attributes have no unsigned integers.
            attempt = i64::from(delivery.attempts) + 1,
            redelivered = delivery.redelivered,
        );
        crate::otel::join_notification_trace(&span, &item.id);
        async move {
            let key = item.hint.key();
            let lock = self.locks.lock_for(&key);
            let result = {
                let _guard = lock.lock().await;
                self.process(&item).await
            };
            drop(lock);
            self.locks.release(&key);
            self.settle(delivery, &item, result).await;
        }
        .instrument(span)
        .await
    }

    async fn settle(
        &self,
        delivery: Delivery,
        item: &WorkItem,
        result: Result<(Outcome, Option<Verdict>), ProcessError>,
    ) {
        let attempt = delivery.attempts + 1;
        let rule = match &result {
            Ok((_, Some(verdict))) => verdict.rule.clone(),
            _ => None,
        };
        let (result, disposition) = match result {
            Ok((outcome, verdict)) => {
                let since_received_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64 - item.received_at_ms)
                    .unwrap_or(0);
                tracing::info!(
                    outcome = outcome.name(),
                    rule = verdict
                        .as_ref()
                        .and_then(|v| v.rule.as_deref())
                        .unwrap_or("-"),
                    since_received_ms,
                    "decided"
                );
                if matches!(
                    outcome,
                    Outcome::Approved { .. }
                        | Outcome::Rejected { .. }
                        | Outcome::Erred { .. }
                        | Outcome::Held { .. }
                ) {
                    self.publish_decision(item, &outcome, verdict.as_ref())
                        .await;
                }
                if let (Outcome::Approved { backend_id }, Some(verdict)) = (&outcome, &verdict)
                    && self.team.snapshot_on_approval
                    && !self.shadow
                {
                    self.publish_team_snapshot(verdict, backend_id).await;
                }
                let disposition = match delivery.ack().await {
                    Ok(()) => Disposition::Acked,
                    Err(error) => {
                        tracing::warn!(error = %error, "ack failed; the redelivery will find the allocation decided");
                        Disposition::LeftToBroker
                    }
                };
                (Ok(outcome), disposition)
            }
            Err(error) if error.is_unauthorized() => {
                tracing::warn!(error = %error, "Puhuri Core refused the token; the delivery goes back to the queue, no attempt counted");
                let disposition = match delivery.release().await {
                    Ok(()) => Disposition::Released,
                    Err(error) => {
                        tracing::warn!(error = %error, "cannot release; the broker will redeliver");
                        Disposition::LeftToBroker
                    }
                };
                (Err(Arc::new(error)), disposition)
            }
            Err(error) if error.is_transient() => {
                let reason = error.to_string();
                let retry_after = error.retry_after();
                let disposition = match delivery
                    .retry_later(
                        &reason,
                        self.config.max_attempts,
                        retry_after,
                        self.config.retry_jitter,
                    )
                    .await
                {
                    Ok(Retried::Scheduled { attempts, delay }) => {
                        tracing::warn!(error = %reason, attempts, retry_in_ms = delay.as_millis() as u64, "temporary failure; retry scheduled");
                        let tiers = self.config.retry_delays.len().max(1) as u32;
                        self.metrics.retry(attempts.clamp(1, tiers));
                        Disposition::RetryScheduled
                    }
                    Ok(Retried::DeadLettered { attempts }) => {
                        tracing::error!(error = %reason, attempts, "attempts exhausted; dead-lettered");
                        Disposition::DeadLettered
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "cannot schedule a retry; the broker will redeliver");
                        Disposition::LeftToBroker
                    }
                };
                (Err(Arc::new(error)), disposition)
            }
            Err(error) => {
                let reason = error.to_string();
                tracing::error!(error = %reason, "permanent failure; dead-lettering");
                let disposition = match delivery.dead_letter(&reason).await {
                    Ok(()) => Disposition::DeadLettered,
                    Err(error) => {
                        tracing::warn!(error = %error, "cannot dead-letter; the broker will redeliver");
                        Disposition::LeftToBroker
                    }
                };
                (Err(Arc::new(error)), disposition)
            }
        };
        let disposition_name = match disposition {
            Disposition::Acked => "acked",
            Disposition::RetryScheduled => "retry-scheduled",
            Disposition::DeadLettered => "dead-lettered",
            Disposition::LeftToBroker => "left-to-broker",
            Disposition::Released => "released",
        };
        let action = result.as_ref().ok().map(Outcome::name);
        let rule_name = rule.as_deref().unwrap_or("-");
        self.metrics
            .settled(disposition_name, action.map(|a| (a, rule_name)));
        let _ = self.settled.send(Settled {
            id: item.id.clone(),
            attempt,
            hint: item.hint.clone(),
            result,
            rule,
            disposition,
        });
    }

    async fn publish_decision(
        &self,
        item: &WorkItem,
        outcome: &Outcome,
        verdict: Option<&Verdict>,
    ) {
        let decided = match outcome {
            Outcome::Approved { .. } => Decided::Approved,
            Outcome::Rejected { .. } => Decided::Rejected,
            Outcome::Erred { .. } => Decided::Erred,
            Outcome::Held { .. } => Decided::Held,
            Outcome::AlreadyHandled { .. } | Outcome::NotWaiting { .. } => return,
        };
        let Some(verdict) = verdict else { return };
        let event = DecisionEvent::new(&item.id, decided, verdict, self.shadow);
        let body = match serde_json::to_vec(&event) {
            Ok(body) => body,
            Err(error) => {
                tracing::warn!(error = %error, "decision event not serializable");
                return;
            }
        };
        if let Err(error) = self
            .broker
            .publish_event(&event.routing_key(), &body, &item.id)
            .await
        {
            tracing::warn!(error = %error, "decision event not published");
        }
    }

    /// Publishes the approved allocation's team; a failure is logged (the team watcher
    /// publishes a snapshot of every approved allocation it has not seen).
    async fn publish_team_snapshot(&self, verdict: &Verdict, backend_id: &str) {
        let ids = &verdict.allocation;
        match self.client.team(&ids.resource_uuid).await {
            Ok(members) => {
                let allocation = ResourceSummary {
                    resource_uuid: ids.resource_uuid.clone(),
                    backend_id: Some(backend_id.to_owned()),
                    project_uuid: Some(ids.project_uuid.clone()).filter(|p| !p.is_empty()),
                    project_name: None,
                    offering_uuid: Some(ids.offering_uuid.clone()).filter(|o| !o.is_empty()),
                };
                let event = TeamEvent::snapshot(allocation, members);
                if crate::team::publish(&self.broker, &event).await {
                    self.metrics.team_event(event.event_type);
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, "team not readable after approval; no snapshot published");
            }
        }
    }

    /// Completes what an approval left undone: the access report, when the allocation is
    /// approved with this policy's `backend_id` and carries another report (or none).
    async fn complete_approval(
        &self,
        fetched: &Fetched,
        state: String,
    ) -> Result<(Outcome, Option<Verdict>), ProcessError> {
        let done = Outcome::AlreadyHandled { state };
        let has_report = fetched
            .resource
            .report
            .as_ref()
            .and_then(serde_json::Value::as_array)
            .is_some_and(|sections| !sections.is_empty());
        // Most redeliveries end here: the allocation is not approved, or it has its report.
        if self.shadow || fetched.resource.state != ResourceState::Ok || has_report {
            return Ok((done, None));
        }
        let policy = self.policy();
        let allocation = match self.allocation(&policy, fetched).await {
            Ok(allocation) => allocation,
            Err(error) => {
                tracing::warn!(error = %error, "allocation decided already; its report is not checked");
                return Ok((done, None));
            }
        };
        let verdict = policy.evaluate(&allocation, time::OffsetDateTime::now_utc());
        let Action::Approve { backend_id, report } = &verdict.action else {
            tracing::info!(
                action = verdict.action.name(),
                "allocation approved earlier without a report; the policy no longer approves it, so none is submitted"
            );
            return Ok((done, None));
        };
        if report.is_empty() || fetched.resource.backend_id.as_deref() != Some(backend_id) {
            return Ok((done, None));
        }
        self.client
            .submit_report(&fetched.resource.uuid, &crate::facts::report(report))
            .await?;
        tracing::info!("access report submitted for an allocation approved earlier");
        Ok((done, None))
    }

    /// The allocation as `policy` sees it, with what is known of the organisation and the
    /// totals granted already when the policy reads them.
    async fn allocation(
        &self,
        policy: &Policy,
        fetched: &Fetched,
    ) -> Result<puhuri_policy::Allocation, PuhuriError> {
        let basic = crate::facts::allocation(fetched, &CustomerExtras::default());
        let entry = self
            .customers
            .find(&basic.customer.uuid, &basic.customer.slug);
        let abbreviation =
            if policy.needs_customer_details() && entry.is_none_or(|e| e.abbreviation.is_empty()) {
                self.abbreviations
                    .lookup(
                        &self.client,
                        &basic.offering.provider_uuid,
                        &basic.customer.uuid,
                    )
                    .await?
            } else {
                None
            };
        let mut allocation = crate::facts::allocation(
            fetched,
            &CustomerExtras {
                abbreviation: abbreviation.as_deref(),
                entry,
            },
        );
        if policy.needs_granted() {
            let Some(customer) = puhuri_client::WaldurUuid::parse(&allocation.customer.uuid) else {
                return Err(PuhuriError::Unusable {
                    operation: "granted",
                    detail: "the allocation names no organisation, so what it was granted cannot be summed".into(),
                });
            };
            let granted = self.client.list_granted(&customer).await?;
            allocation.granted = crate::facts::granted(
                &granted,
                &allocation.project.uuid,
                &allocation.resource.uuid,
            );
        }
        Ok(allocation)
    }

    /// The step function: decide one notification and write the decision. Tests call it
    /// directly; [`Worker::run`] wraps it with queue settlement.
    pub async fn process(
        &self,
        item: &WorkItem,
    ) -> Result<(Outcome, Option<Verdict>), ProcessError> {
        let fetched = self.client.fetch_allocation(&item.hint).await?;
        match fetched.waiting(self.client.api()) {
            Waiting::AlreadyHandled(state) => return self.complete_approval(&fetched, state).await,
            Waiting::NotYet(state) => return Ok((Outcome::NotWaiting { state }, None)),
            Waiting::Yes => {}
        }
        let policy = self.policy();
        let allocation = self.allocation(&policy, &fetched).await?;
        let verdict = policy.evaluate(&allocation, time::OffsetDateTime::now_utc());
        if self.shadow {
            tracing::info!(
                action = verdict.action.name(),
                rule = verdict.rule.as_deref().unwrap_or("-"),
                "shadow mode: decision recorded, nothing written"
            );
            let outcome = shadow_outcome(&verdict.action, self.client.erred_write(&fetched));
            return Ok((outcome, Some(verdict)));
        }
        let outcome = match self.act(&fetched, &verdict.action).await {
            Ok(outcome) => outcome,
            Err(PuhuriError::Conflict { .. }) => {
                // Someone else moved it: decide by what it is now.
                let now = self.client.fetch_allocation(&item.hint).await?;
                match now.waiting(self.client.api()) {
                    Waiting::AlreadyHandled(state) => Outcome::AlreadyHandled { state },
                    Waiting::NotYet(state) => Outcome::NotWaiting { state },
                    Waiting::Yes => {
                        return Err(ProcessError::NotYet(
                            "Puhuri Core answered 409 but the allocation still waits".into(),
                        ));
                    }
                }
            }
            Err(error) => return Err(error.into()),
        };
        if let (Outcome::Approved { .. }, Action::Approve { report, .. }) =
            (&outcome, &verdict.action)
            && !report.is_empty()
        {
            self.submit_report_or_follow_up(item, &fetched, report)
                .await;
        }
        Ok((outcome, Some(verdict)))
    }

    /// Submits the access report of a fresh approval. When that fails, the approval
    /// stands and a follow-up notification for the allocation is queued: its worker finds
    /// the allocation approved and submits the report (`complete_approval`), with the
    /// usual retries and dead-lettering.
    async fn submit_report_or_follow_up(
        &self,
        item: &WorkItem,
        fetched: &Fetched,
        report: &[puhuri_policy::ReportSection],
    ) {
        let Err(error) = self
            .client
            .submit_report(&fetched.resource.uuid, &crate::facts::report(report))
            .await
        else {
            return;
        };
        tracing::warn!(error = %error, "approved, but the access report was not submitted; queueing a follow-up");
        let follow_up = WorkItem {
            id: format!("{}.report", item.id),
            source: item.source.clone(),
            event_type: "access-report".into(),
            hint: item.hint.clone(),
            received_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
        };
        if let Err(error) = crate::work::publish_notification(&self.broker, &follow_up).await {
            tracing::error!(error = %error, "the access report follow-up could not be queued; the report is missing until this allocation is processed again");
        }
    }

    async fn act(&self, fetched: &Fetched, action: &Action) -> Result<Outcome, PuhuriError> {
        match action {
            Action::Approve { backend_id, .. } => {
                self.client
                    .set_backend_id(&fetched.resource.uuid, backend_id)
                    .await?;
                self.client.approve(fetched).await?;
                Ok(Outcome::Approved {
                    backend_id: backend_id.clone(),
                })
            }
            Action::Reject { reason } => {
                if self.client.api() == ApiGeneration::Resources {
                    tracing::info!(
                        "the 2021 API takes no rejection comment; terminating without it"
                    );
                }
                self.client.reject(fetched, reason).await?;
                Ok(Outcome::Rejected {
                    reason: reason.clone(),
                })
            }
            Action::Erred {
                backend_id,
                message,
            } => {
                let write = self.client.erred_write(fetched);
                if write.sets_backend_id() {
                    // backend_id first: a Creating resource without one is Terminated, not Erred.
                    self.client
                        .set_backend_id(&fetched.resource.uuid, backend_id)
                        .await?;
                }
                let written = self.client.set_erred(fetched, message).await?;
                if written == ErredWrite::Reject {
                    tracing::info!(
                        "erred is not writable for this offering type; rejected with the message instead"
                    );
                }
                Ok(erred_outcome(written, message))
            }
            Action::Hold { note } => Ok(Outcome::Held { note: note.clone() }),
        }
    }
}

/// What an `erred` decision made of the allocation: erred, or rejected with the message
/// where the server allows no erred.
fn erred_outcome(written: ErredWrite, message: &str) -> Outcome {
    match written {
        ErredWrite::Reject => Outcome::Rejected {
            reason: message.to_owned(),
        },
        ErredWrite::ResourceState | ErredWrite::OrderErred => Outcome::Erred {
            message: message.to_owned(),
        },
    }
}

/// The outcome a decision would have had, for shadow mode (nothing was written).
fn shadow_outcome(action: &Action, erred: ErredWrite) -> Outcome {
    match action {
        Action::Approve { backend_id, .. } => Outcome::Approved {
            backend_id: backend_id.clone(),
        },
        Action::Reject { reason } => Outcome::Rejected {
            reason: reason.clone(),
        },
        Action::Erred { message, .. } => erred_outcome(erred, message),
        Action::Hold { note } => Outcome::Held { note: note.clone() },
    }
}
