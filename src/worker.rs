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
//! time: every hint is resolved to the allocation's resource uuid before the lock is
//! taken, so hints naming its order and its resource serialize. Across processes, a
//! write Puhuri Core accepts in any state (erred, and every write of the 2021 API) is
//! made only under a claim on the allocation (`Broker::claim`) and after a re-read under
//! it; an allocation that cannot be claimed is retried, never written unclaimed. Puhuri
//! Core's state machine (409) guards the rest.
//! INVARIANT: every allocation this service decides gets its decision event with a
//! stable id, and the delivery is acked only with the event published (RabbitMQ: after
//! its confirm; embedded: in the ack's transaction). A retry that finds the allocation
//! decided as this policy writes it publishes the same event again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::circuit::Circuit;
use crate::config::{ApiGeneration, TeamConfig, UsageConfig, WorkerConfig};
use crate::decision::{Decided, DecisionEvent};
use crate::metrics::Metrics;
use crate::notification::{AllocationHint, OperatorDecision, WorkItem};
use puhuri_queue::{Broker, ClaimGuard, Delivery, Retried};

use crate::customers::{Abbreviations, CustomerDirectory};
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
        /// What Puhuri Core shows was written, when it is what this policy writes: its
        /// decision event is published (again, with the same id).
        found: Option<Decided>,
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

/// Ids of the events this process published for decisions that are re-evaluated
/// without a write — holds, and every decision in shadow mode — so that a reconciliation
/// re-evaluating them does not publish the same event again. Bounded (the oldest ids are
/// forgotten: that costs one more copy with the same id, which consumers de-duplicate).
#[derive(Default)]
struct Repeats {
    ids: Mutex<(
        std::collections::HashSet<String>,
        std::collections::VecDeque<String>,
    )>,
}

/// How many published ids [`Repeats`] keeps.
const REPEATS_KEPT: usize = 10_000;

impl Repeats {
    fn seen(&self, id: &str) -> bool {
        match self.ids.lock() {
            Ok(ids) => ids.0.contains(id),
            Err(poisoned) => poisoned.into_inner().0.contains(id),
        }
    }

    fn remember(&self, id: String) {
        let mut ids = match self.ids.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if ids.0.insert(id.clone()) {
            ids.1.push_back(id);
        }
        while ids.1.len() > REPEATS_KEPT {
            if let Some(oldest) = ids.1.pop_front() {
                ids.0.remove(&oldest);
            }
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
    repeats: Repeats,
    settled: tokio::sync::broadcast::Sender<Settled>,
    metrics: Arc<Metrics>,
    usage_config: UsageConfig,
    usage: Arc<UsageReporter>,
    team: TeamConfig,
    circuit: Arc<Circuit>,
    /// The provider's customers file (country, abbreviation, tags), when configured.
    customers: Arc<CustomerDirectory>,
    abbreviations: Arc<Abbreviations>,
    /// Runs a pass when a reconcile request is delivered.
    reconciler: Option<Arc<crate::reconciler::Reconciler>>,
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
            repeats: Repeats::default(),
            settled: tokio::sync::broadcast::channel(1024).0,
            circuit: Arc::new(Circuit::new(metrics.clone())),
            metrics,
            customers: Arc::new(CustomerDirectory::default()),
            abbreviations: Arc::new(Abbreviations::default()),
            reconciler: None,
        }
    }

    /// The reconciler that a delivered reconcile request asks for a pass.
    pub fn with_reconciler(mut self, reconciler: Arc<crate::reconciler::Reconciler>) -> Worker {
        self.reconciler = Some(reconciler);
        self
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
        let (item, operator) = match crate::work::delivered(&delivery) {
            Ok(Work::Allocation(item)) => (item, None),
            Ok(Work::Operator(work)) => (work.item, Some(work.operator)),
            Ok(Work::Usage(record)) => {
                self.usage.add(record, delivery).await;
                return;
            }
            Ok(Work::Reconcile(request)) => {
                match self.reconciler.as_ref().filter(|r| r.runs_passes()) {
                    Some(reconciler) => {
                        tracing::info!(id = %request.id, source = %request.source, "reconcile pass requested");
                        reconciler.request_pass();
                    }
                    None => {
                        tracing::warn!(id = %request.id, source = %request.source, "reconcile pass requested, but no reconciler runs here (reconcile.interval_secs = 0)");
                    }
                }
                if let Err(error) = delivery.ack().await {
                    tracing::warn!(error = %error, "cannot acknowledge a reconcile request; it will be redelivered");
                }
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
            operator = tracing::field::Empty,
        );
        if let Some(operator) = &operator {
            span.record("operator", operator.name.as_str());
        }
        crate::otel::join_notification_trace(&span, &item.id);
        let operator = operator.as_ref();
        async move {
            // The allocation's identity first, so that every hint of it shares one lock.
            let item = match self.resolve(&item).await {
                Ok(resolved) => resolved,
                Err(error) => {
                    self.settle(delivery, &item, operator, Err(error)).await;
                    return;
                }
            };
            let key = item.hint.key();
            let lock = self.locks.lock_for(&key);
            let result = {
                let _guard = lock.lock().await;
                self.decide(&item, operator).await
            };
            drop(lock);
            self.locks.release(&key);
            self.settle(delivery, &item, operator, result).await;
        }
        .instrument(span)
        .await
    }

    /// The hint with the allocation's resource uuid: as given, or read from the order it
    /// names (one GET, which the re-fetch that follows does not repeat).
    async fn resolve(&self, item: &WorkItem) -> Result<WorkItem, ProcessError> {
        let (None, Some(order_uuid)) = (&item.hint.resource_uuid, &item.hint.order_uuid) else {
            return Ok(item.clone());
        };
        let order = self.client.get_order(order_uuid).await?;
        let resource = order
            .marketplace_resource_uuid
            .as_deref()
            .and_then(crate::notification::ResourceUuid::parse);
        let Some(resource) = resource else {
            return Err(PuhuriError::Unusable {
                operation: "get order",
                detail: format!("order {order_uuid} names no marketplace resource"),
            }
            .into());
        };
        let mut resolved = item.clone();
        resolved.hint.resource_uuid = Some(resource);
        Ok(resolved)
    }

    async fn settle(
        &self,
        mut delivery: Delivery,
        item: &WorkItem,
        operator: Option<&OperatorDecision>,
        result: Result<(Outcome, Option<Verdict>), ProcessError>,
    ) {
        let attempt = delivery.attempts + 1;
        // The event goes with the ack or not at all: when it cannot be published, the
        // delivery is retried, and the retry derives the same event from Puhuri Core.
        let mut repeat = None;
        let result = match result {
            Ok((outcome, verdict)) => {
                match self
                    .publish_decision(&mut delivery, item, operator, &outcome, verdict.as_ref())
                    .await
                {
                    Ok(staged) => {
                        repeat = staged;
                        Ok((outcome, verdict))
                    }
                    Err(error) => Err(crate::failure::owed(ProcessError::NotYet(
                        format!(
                            "decided ({}), but the decision event was not published: {error}",
                            outcome.name()
                        )
                        .into(),
                    ))),
                }
            }
            Err(error) => Err(error),
        };
        let rule = match &result {
            Ok((Outcome::AlreadyHandled { .. }, _)) => None,
            Ok((_, Some(verdict))) => verdict.rule.clone(),
            _ => None,
        };
        let (result, disposition) = match result {
            Ok((outcome, verdict)) => {
                let since_received_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64 - item.received_at_ms)
                    .unwrap_or(0);
                if let Some(operator) = operator {
                    self.metrics
                        .operator_decision(operator.action.name(), outcome.name());
                }
                tracing::info!(
                    outcome = outcome.name(),
                    operator = operator.map(|o| o.name.as_str()).unwrap_or("-"),
                    rule = verdict
                        .as_ref()
                        .and_then(|v| v.rule.as_deref())
                        .unwrap_or("-"),
                    since_received_ms,
                    "decided"
                );
                if let (Outcome::Approved { backend_id }, Some(verdict)) = (&outcome, &verdict)
                    && self.team.snapshot_on_approval
                    && !self.shadow
                {
                    self.publish_team_snapshot(verdict, backend_id).await;
                }
                let disposition = match delivery.ack().await {
                    Ok(()) => {
                        if let Some(id) = repeat.take() {
                            self.repeats.remember(id);
                        }
                        Disposition::Acked
                    }
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
                // A delivery that owes a decision event (this attempt's error says so, or
                // an earlier attempt's reason) is retried past `max_attempts`, at the last
                // tier: dead-lettered, its event would never be published.
                let owed = matches!(error, ProcessError::Owed(_))
                    || delivery
                        .reasons
                        .last()
                        .is_some_and(|r| crate::failure::is_owed(r));
                let (reason, max_attempts) = if owed {
                    (crate::failure::owed_reason(&error), u32::MAX)
                } else {
                    (error.to_string(), self.config.max_attempts)
                };
                let retry_after = error.retry_after();
                let disposition = match delivery
                    .retry_later(&reason, max_attempts, retry_after, self.config.retry_jitter)
                    .await
                {
                    Ok(Retried::Scheduled { attempts, delay }) => {
                        tracing::warn!(error = %reason, attempts, retry_in_ms = delay.as_millis() as u64, owed, "temporary failure; retry scheduled");
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

    /// Publishes the decision event with the delivery's ack (see
    /// [`Delivery::stage_event`]): for a decision just made, and for one a retry found in
    /// Puhuri Core as this policy writes it (`AlreadyHandled` with the verdict). A hold
    /// (or a shadow decision) this process published already is not published again;
    /// `Ok(Some(id))` names one staged now, to remember once acked.
    async fn publish_decision(
        &self,
        delivery: &mut Delivery,
        item: &WorkItem,
        operator: Option<&OperatorDecision>,
        outcome: &Outcome,
        verdict: Option<&Verdict>,
    ) -> Result<Option<String>, String> {
        let Some(verdict) = verdict else {
            return Ok(None);
        };
        let decided = match outcome {
            Outcome::Approved { .. } => Decided::Approved,
            Outcome::Rejected { .. } => Decided::Rejected,
            Outcome::Erred { .. } => Decided::Erred,
            Outcome::Held { .. } => Decided::Held,
            Outcome::AlreadyHandled { found, .. } => match (found, &verdict.action) {
                (_, Action::Hold { .. }) | (None, _) => return Ok(None),
                (Some(found), _) => *found,
            },
            Outcome::NotWaiting { .. } => return Ok(None),
        };
        let mut event = DecisionEvent::new(&item.id, decided, verdict, self.shadow);
        if let Some(operator) = operator {
            event.decided_by = Some(crate::decision::DecidedBy::operator(
                &operator.name,
                &operator.comment,
            ));
        }
        let repeatable = self.shadow || decided == Decided::Held;
        if repeatable && self.repeats.seen(&event.id) {
            return Ok(None);
        }
        let body = serde_json::to_vec(&event).map_err(|error| error.to_string())?;
        delivery
            .stage_event(puhuri_queue::Event {
                routing_key: event.routing_key(),
                body,
                message_id: event.id.clone(),
            })
            .await
            .map_err(|error| {
                tracing::warn!(error = %error, "decision event not published; the delivery is retried");
                error.to_string()
            })?;
        Ok(repeatable.then_some(event.id))
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

    /// An allocation found decided. When Puhuri Core holds it as this policy writes it
    /// (approved with its `backend_id`; rejected with its comment; erred with its
    /// `backend_id` and message), the verdict is returned so that its decision event is
    /// published (again: same id), and an approval's missing access report is submitted.
    async fn already_handled(
        &self,
        fetched: &Fetched,
        state: String,
        operator: Option<&OperatorDecision>,
    ) -> Result<(Outcome, Option<Verdict>), ProcessError> {
        let mut done = Outcome::AlreadyHandled { state, found: None };
        let api = self.client.api();
        // Shadow mode writes nothing, so nothing decided is its own.
        let Some(decided) = decided_in(fetched, api).filter(|_| !self.shadow) else {
            return Ok((done, None));
        };
        let policy = self.policy();
        let waited = as_it_waited(fetched, api);
        let allocation = match self.allocation(&policy, &waited).await {
            Ok(allocation) => allocation,
            // Decided, perhaps by this policy: its event may be owed.
            Err(error) if error.is_transient() => return Err(crate::failure::owed(error)),
            Err(error) => {
                tracing::warn!(error = %error, "allocation decided already; not re-evaluated, so no decision event");
                return Ok((done, None));
            }
        };
        let verdict = verdict_for(&policy, &allocation, operator);
        if !written_as(&verdict.action, decided, fetched) {
            return Ok((done, None));
        }
        if let Action::Approve { report, .. } = &verdict.action {
            let has_report = fetched
                .resource
                .report
                .as_ref()
                .and_then(serde_json::Value::as_array)
                .is_some_and(|sections| !sections.is_empty());
            if !report.is_empty() && !has_report && fetched.resource.state == ResourceState::Ok {
                self.client
                    .submit_report(&fetched.resource.uuid, &crate::facts::report(report))
                    .await
                    .map_err(crate::failure::owed)?;
                tracing::info!("access report submitted for an allocation approved earlier");
            }
        }
        if let Outcome::AlreadyHandled { found, .. } = &mut done {
            *found = Some(decided);
        }
        Ok((done, Some(verdict)))
    }

    /// The allocation as it is right before a write, when the state read at the start
    /// may be stale for it: writes Puhuri Core accepts in any state (erred; every write
    /// of the 2021 API) and decisions that waited on other calls first. Before a write
    /// Puhuri Core accepts in any state, the allocation is also claimed against other
    /// processes (held until the write is answered; release it). `Err` carries the
    /// outcome when it no longer waits.
    async fn recheck(
        &self,
        item: &WorkItem,
        operator: Option<&OperatorDecision>,
        policy: &Policy,
        action: &Action,
        fetched: Fetched,
    ) -> Result<Result<(Fetched, Option<ClaimGuard>), (Outcome, Option<Verdict>)>, ProcessError>
    {
        let api = self.client.api();
        let unguarded = api == ApiGeneration::Resources || matches!(action, Action::Erred { .. });
        let waited = policy.needs_customer_details() || policy.needs_granted();
        if matches!(action, Action::Hold { .. }) || !(unguarded || waited) {
            return Ok(Ok((fetched, None)));
        }
        let claim = if unguarded {
            let key = format!("allocation.{}", fetched.resource.uuid);
            match self.broker.claim(&key, CLAIM_TTL).await {
                Ok(Some(claim)) => Some(claim),
                Ok(None) => {
                    return Err(ProcessError::NotYet(
                        "another worker process is writing this allocation".into(),
                    ));
                }
                // Unclaimed, the write could race another process: retried later.
                Err(error) => {
                    tracing::warn!(error = %error, "allocation not claimed; not written, retried");
                    return Err(ProcessError::NotYet(
                        format!("the allocation could not be claimed: {error}").into(),
                    ));
                }
            }
        } else {
            None
        };
        let now = match self.client.fetch_allocation(&item.hint).await {
            Ok(now) => now,
            Err(error) => {
                release(claim).await;
                return Err(error.into());
            }
        };
        match now.waiting(api) {
            Waiting::Yes => Ok(Ok((now, claim))),
            Waiting::AlreadyHandled(state) => {
                release(claim).await;
                Ok(Err(self.already_handled(&now, state, operator).await?))
            }
            Waiting::NotYet(state) => {
                release(claim).await;
                Ok(Err((Outcome::NotWaiting { state }, None)))
            }
        }
    }

    /// The allocation as `policy` sees it, with what is known of the organisation and the
    /// totals granted already when the policy reads them.
    async fn allocation(
        &self,
        policy: &Policy,
        fetched: &Fetched,
    ) -> Result<puhuri_policy::Allocation, PuhuriError> {
        crate::facts::gather(
            &self.client,
            &self.customers,
            &self.abbreviations,
            policy,
            fetched,
        )
        .await
    }

    /// The step function: decide one notification and write the decision. Tests call it
    /// directly; [`Worker::run`] wraps it with queue settlement.
    pub async fn process(
        &self,
        item: &WorkItem,
    ) -> Result<(Outcome, Option<Verdict>), ProcessError> {
        self.decide(item, None).await
    }

    /// [`Worker::process`], or an operator's decision: re-fetched and checked still
    /// waiting like any notification, then written exactly as the policy's decision is,
    /// with `[manual]` (or the operator's reason) in place of the rules.
    pub async fn decide(
        &self,
        item: &WorkItem,
        operator: Option<&OperatorDecision>,
    ) -> Result<(Outcome, Option<Verdict>), ProcessError> {
        let fetched = self.client.fetch_allocation(&item.hint).await?;
        match fetched.waiting(self.client.api()) {
            Waiting::AlreadyHandled(state) => {
                return self.already_handled(&fetched, state, operator).await;
            }
            Waiting::NotYet(state) => return Ok((Outcome::NotWaiting { state }, None)),
            Waiting::Yes => {}
        }
        let policy = self.policy();
        let allocation = self.allocation(&policy, &fetched).await?;
        let verdict = verdict_for(&policy, &allocation, operator);
        if self.shadow {
            tracing::info!(
                action = verdict.action.name(),
                rule = verdict.rule.as_deref().unwrap_or("-"),
                "shadow mode: decision recorded, nothing written"
            );
            let outcome = shadow_outcome(&verdict.action, self.client.erred_write(&fetched));
            return Ok((outcome, Some(verdict)));
        }
        let fetched = match self
            .recheck(item, operator, &policy, &verdict.action, fetched)
            .await?
        {
            Ok(fetched) => fetched,
            Err(moved) => return Ok(moved),
        };
        let (fetched, claim) = fetched;
        let acted = self.act(&fetched, &verdict.action).await;
        release(claim).await;
        let outcome = match acted {
            Ok(outcome) => outcome,
            Err(ProcessError::Puhuri(PuhuriError::Conflict { .. })) => {
                // Someone else moved it: decide by what it is now.
                let now = self.client.fetch_allocation(&item.hint).await?;
                match now.waiting(self.client.api()) {
                    Waiting::AlreadyHandled(state) => {
                        return self.already_handled(&now, state, operator).await;
                    }
                    Waiting::NotYet(state) => Outcome::NotWaiting { state },
                    Waiting::Yes => {
                        return Err(ProcessError::NotYet(
                            "Puhuri Core answered 409 but the allocation still waits".into(),
                        ));
                    }
                }
            }
            Err(error) => return Err(error),
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

    async fn act(&self, fetched: &Fetched, action: &Action) -> Result<Outcome, ProcessError> {
        match action {
            Action::Approve { backend_id, .. } => {
                self.client
                    .set_backend_id(&fetched.resource.uuid, backend_id)
                    .await?;
                self.client
                    .approve(fetched)
                    .await
                    .map_err(decision_write_error)?;
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
                self.client
                    .reject(fetched, reason)
                    .await
                    .map_err(decision_write_error)?;
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
                let written = self
                    .client
                    .set_erred(fetched, message)
                    .await
                    .map_err(decision_write_error)?;
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

/// The error of a decision's own write: one whose answer was lost (a timeout, a 5xx) may
/// have been applied, so the delivery owes the decision's event (see
/// [`ProcessError::Owed`]). A conflict or a refusal was not applied.
fn decision_write_error(error: PuhuriError) -> ProcessError {
    if error.is_transient() {
        ProcessError::Owed(Box::new(error.into()))
    } else {
        error.into()
    }
}

/// The policy's verdict, or the operator's decision rendered by the policy's `[manual]`.
fn verdict_for(
    policy: &Policy,
    allocation: &puhuri_policy::Allocation,
    operator: Option<&OperatorDecision>,
) -> Verdict {
    let now = time::OffsetDateTime::now_utc();
    match operator {
        Some(operator) => policy.decide_manually(allocation, now, &operator.manual()),
        None => policy.evaluate(allocation, now),
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

/// How long a claim on an allocation lasts at most on the embedded queue (a process that
/// dies holding one blocks the allocation's unguarded writes that long).
const CLAIM_TTL: std::time::Duration = std::time::Duration::from_secs(60);

async fn release(claim: Option<ClaimGuard>) {
    if let Some(claim) = claim {
        claim.release().await;
    }
}

/// What Puhuri Core shows was decided, when it shows a decision a provider writes.
fn decided_in(fetched: &Fetched, api: ApiGeneration) -> Option<Decided> {
    use puhuri_client::OrderState;
    if fetched.resource.state == ResourceState::Erred {
        return Some(Decided::Erred);
    }
    match api {
        ApiGeneration::Resources => match fetched.resource.state {
            ResourceState::Ok => Some(Decided::Approved),
            ResourceState::Terminated => Some(Decided::Rejected),
            _ => None,
        },
        ApiGeneration::Orders => match fetched.order.as_ref().map(|o| &o.state) {
            Some(OrderState::Executing | OrderState::Done) => Some(Decided::Approved),
            Some(OrderState::Rejected) => Some(Decided::Rejected),
            Some(OrderState::Erred) => Some(Decided::Erred),
            _ => None,
        },
    }
}

/// The allocation as the policy saw it while it waited: the states and what a decision
/// writes (backend_id, report, error) as before it, the rest as it is now.
fn as_it_waited(fetched: &Fetched, api: ApiGeneration) -> Fetched {
    let mut waited = fetched.clone();
    waited.resource.state = ResourceState::Creating;
    waited.resource.backend_id = None;
    waited.resource.report = None;
    waited.resource.error_message = None;
    if api == ApiGeneration::Orders
        && let Some(order) = waited.order.as_mut()
    {
        order.state = puhuri_client::OrderState::PendingProvider;
        order.provider_rejection_comment = None;
    }
    waited
}

/// Whether what Puhuri Core holds is what `action` writes: the same `backend_id`, and
/// the same comment or message where Puhuri Core keeps one (a server that does not keep
/// the rejection comment cannot tell this policy's rejection from a human's with the
/// same outcome).
fn written_as(action: &Action, decided: Decided, fetched: &Fetched) -> bool {
    let backend_id = fetched.resource.backend_id.as_deref();
    let kept = |text: Option<&String>, wanted: &str| {
        text.is_none_or(|text| text.is_empty() || text == wanted)
    };
    let comment = fetched
        .order
        .as_ref()
        .and_then(|o| o.provider_rejection_comment.as_ref());
    match (action, decided) {
        (
            Action::Approve {
                backend_id: ours, ..
            },
            Decided::Approved,
        ) => backend_id == Some(ours.as_str()),
        (Action::Reject { reason }, Decided::Rejected) => kept(comment, reason),
        (
            Action::Erred {
                backend_id: ours,
                message,
            },
            Decided::Erred,
        ) => {
            backend_id == Some(ours.as_str())
                && kept(fetched.resource.error_message.as_ref(), message)
        }
        // Erred written as a rejection of the order, with the message as its comment.
        (Action::Erred { message, .. }, Decided::Rejected) => comment.is_some_and(|c| c == message),
        _ => false,
    }
}
