//! Wiring and supervision: starts the roles a command asks for (receiver, workers,
//! reconciler, team watcher, metrics listener, policy reloader) around one broker
//! connection, supervises them as named tasks, and shuts them down in order.
//!
//! INVARIANT: on shutdown the receiver stops accepting and finishes its requests, workers
//! finish the deliveries they started, and only then is the broker connection closed, so
//! every started publish and ack completes.
//! INVARIANT: a role that ends before shutdown was asked for, returns an error or panics
//! is logged with its name (`role=...`) and stops every other role, in the same order as
//! SIGTERM; [`Running::wait`] then returns a [`RoleFailed`] naming it, so the process
//! exits non-zero instead of running on without one of its roles.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::circuit::{Circuit, FixedToken, REPROBE_FIRST, REPROBE_MAX, TokenFile, TokenSource};
use crate::config::{Config, Needs, QueueChoice};
use crate::metrics::Metrics;
use crate::probe::{ProbeError, ProbeReport};
use crate::receiver::{self, ReceiverStats};
use crate::reconciler::Reconciler;
use crate::reload::PolicyFile;
use crate::team::TeamWatcher;
use crate::worker::Worker;
use puhuri_policy::Policy;
use puhuri_queue::Broker;

/// Which roles run in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub receive: bool,
    pub work: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        receive: true,
        work: true,
    };

    /// The command that runs these roles, for messages.
    pub fn command(self) -> &'static str {
        match (self.receive, self.work) {
            (true, true) => "serve",
            (true, false) => "receive",
            (false, true) => "work",
            (false, false) => "puhuri-approver",
        }
    }

    /// What these roles need from the configuration (the policy file is the caller's:
    /// [`start`] takes a compiled policy).
    pub fn needs(self) -> Needs {
        Needs {
            puhuri: self.work,
            policy: self.work,
            sources: self.receive,
        }
    }
}

/// A supervised task of the process, named in logs (`role=...`) and errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The HTTP server of notifications on `listen`.
    Receiver,
    /// `/metrics`, `/healthz` and `/readyz` on `metrics_listen`.
    Metrics,
    /// The worker loop, with the usage reporter it feeds.
    Worker,
    Reconciler,
    TeamWatcher,
    PolicyReloader,
    /// Re-probes Puhuri Core while the circuit is open (`circuit.rs`).
    Prober,
    /// The review page on `review.listen`.
    Review,
    /// Waldur's event stream (`[events]`, `events.rs`).
    Events,
    /// Recomputes the review queue for the held gauges (`review.refresh_secs`).
    ReviewRefresh,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Receiver => "receiver",
            Role::Metrics => "metrics",
            Role::Worker => "worker",
            Role::Reconciler => "reconciler",
            Role::TeamWatcher => "team-watcher",
            Role::PolicyReloader => "policy-reloader",
            Role::Prober => "prober",
            Role::Review => "review",
            Role::Events => "events",
            Role::ReviewRefresh => "review-refresh",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A role that ended on its own: it returned early, failed or panicked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("role `{role}` failed: {reason}; every other role was stopped")]
pub struct RoleFailed {
    pub role: Role,
    pub reason: String,
}

/// Runs the roles as named tasks; the first that ends on its own fires `stop`.
#[derive(Clone)]
struct Supervisor {
    stop: CancellationToken,
    tracker: TaskTracker,
    failure: Arc<Mutex<Option<RoleFailed>>>,
}

impl Supervisor {
    fn new(stop: CancellationToken) -> Supervisor {
        Supervisor {
            stop,
            tracker: TaskTracker::new(),
            failure: Arc::default(),
        }
    }

    fn spawn<F>(&self, role: Role, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        // The role runs in a task of its own, so that a panic ends only that task and is
        // seen here as a `JoinError`.
        let handle = tokio::spawn(task);
        let this = self.clone();
        self.tracker.spawn(async move {
            let reason = match handle.await {
                Ok(Ok(())) if this.stop.is_cancelled() => return,
                Ok(Ok(())) => "it ended before shutdown was asked for".to_owned(),
                Ok(Err(error)) => format!("{error:#}"),
                Err(error) if error.is_panic() => {
                    format!("it panicked: {}", panic_message(error.into_panic()))
                }
                Err(error) => format!("it was cancelled: {error}"),
            };
            this.fail(role, reason);
        });
    }

    fn fail(&self, role: Role, reason: String) {
        tracing::error!(role = %role, error = %reason, "role failed; stopping every role");
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        if failure.is_none() {
            *failure = Some(RoleFailed { role, reason });
        }
        drop(failure);
        self.stop.cancel();
    }

    fn failure(&self) -> Option<RoleFailed> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(text) => (*text).to_owned(),
            Err(_) => "(no message)".to_owned(),
        },
    }
}

/// A started service.
pub struct Running {
    /// Where the receiver listens, when it runs.
    pub addr: Option<SocketAddr>,
    pub broker: Broker,
    pub stats: Arc<ReceiverStats>,
    pub metrics: Arc<Metrics>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served apart from the receiver
    /// (`metrics_listen`), when configured.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the review page is served (`review.listen`), where workers run.
    pub review_addr: Option<SocketAddr>,
    pub worker: Option<Arc<Worker>>,
    pub reconciler: Option<Arc<Reconciler>>,
    /// The circuit to Puhuri Core, where workers run.
    pub circuit: Option<Arc<Circuit>>,
    /// What the start-up probe found, where workers run.
    pub probe: Option<ProbeReport>,
    /// Waldur's event stream, where it runs (`[events]` with the receiver).
    pub events: Option<Arc<crate::events::StreamStats>>,
    supervisor: Supervisor,
    shutdown_deadline: Duration,
    broker_stop: CancellationToken,
}

/// Starts the roles. `listener` is used by the receiver; when `None` and the receiver
/// runs, `config.listen` is bound. `stop` stops every role; a failing role fires it too.
pub async fn start(
    config: &Config,
    roles: Roles,
    policy: Policy,
    listener: Option<TcpListener>,
    stop: CancellationToken,
) -> anyhow::Result<Running> {
    // What the roles need is checked before anything is opened or created.
    config.require(
        roles.command(),
        Needs {
            policy: false,
            ..roles.needs()
        },
    )?;
    let client = if roles.work {
        Some(config.puhuri.client()?)
    } else {
        None
    };
    // A worker's policy may read only what production can fill; the customers file is
    // read (and checked) before anything is opened.
    let customers = if roles.work {
        if let Err(problems) = crate::customers::check_policy(&policy, config) {
            anyhow::bail!(
                "the policy reads fields nothing fills: {}",
                problems.join("; ")
            );
        }
        match &config.policy_customers_file {
            Some(path) => crate::customers::CustomerDirectory::load(path)?,
            None => crate::customers::CustomerDirectory::default(),
        }
    } else {
        crate::customers::CustomerDirectory::default()
    };
    // Addresses are bound before the queue is opened: a port in use leaves nothing behind.
    let receiver_listener = match (roles.receive, listener) {
        (false, _) => None,
        (true, Some(listener)) => Some(listener),
        (true, None) => Some(
            TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {} (listen)", config.listen))?,
        ),
    };
    let metrics_listener = match config.metrics_listen {
        None => None,
        Some(listen) => Some(
            TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen} (metrics_listen)"))?,
        ),
    };
    // The review page runs with the workers (it reads Puhuri Core and the policy).
    let review_listener = match config.review.listen.filter(|_| roles.work) {
        None => None,
        Some(listen) => Some(
            TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen} (review.listen)"))?,
        ),
    };
    let review_auth = match &review_listener {
        Some(_) => Some(crate::review::session::Auth::new(&config.review)?),
        None => None,
    };
    let review_addr = review_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let addr = receiver_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let metrics_addr = metrics_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let broker_stop = CancellationToken::new();
    let broker = open_queue(config, broker_stop.clone())?;
    tracing::info!(queue = %broker.describe(), "queue backend");
    let supervisor = Supervisor::new(stop.clone());
    let stats = Arc::new(ReceiverStats::default());
    let metrics = Arc::new(Metrics::new());
    metrics.attach_broker(broker.clone());
    if roles.work {
        metrics.expect_workers();
    }

    let header_timeout = config.receiver.request_timeout;
    if let Some(listener) = receiver_listener {
        let router = receiver::router(config, broker.clone(), stats.clone(), metrics.clone());
        let counters = receiver::Counters {
            stats: stats.clone(),
            metrics: metrics.clone(),
        };
        let server_stop = stop.clone();
        supervisor.spawn(Role::Receiver, async move {
            receiver::serve(
                listener,
                router,
                Some(counters),
                header_timeout,
                server_stop,
            )
            .await
            .context("the HTTP server stopped")
        });
        if let Some(addr) = addr {
            tracing::info!(listen = %addr, sources = config.sources.len(), "receiver listening");
        }
    }
    if let Some(listener) = metrics_listener {
        let router = receiver::ops_router(metrics.clone());
        let server_stop = stop.clone();
        supervisor.spawn(Role::Metrics, async move {
            receiver::serve(listener, router, None, header_timeout, server_stop)
                .await
                .context("the HTTP server stopped")
        });
        if let Some(addr) = metrics_addr {
            tracing::info!(listen = %addr, "metrics, health and readiness listening");
        }
    }

    let mut worker = None;
    let mut reconciler = None;
    let mut circuit = None;
    let mut probe = None;
    if let Some(client) = client {
        let breaker = Arc::new(Circuit::new(metrics.clone()));
        let client = client.with_observer(breaker.clone());
        let tokens: Arc<dyn TokenSource> = match &config.puhuri.token_file {
            Some(path) => Arc::new(TokenFile(path.clone())),
            None => Arc::new(FixedToken),
        };
        // One attempt now: a refused configuration fails start-up here. A refused token or
        // a failing server holds the roles that call Puhuri Core (the circuit is
        // `probing`) while the prober retries in the background.
        let first = match crate::probe::probe(&client, &config.puhuri).await {
            Ok(report) => Some(probe_passed(report, &client, &breaker, &metrics)),
            Err(error @ ProbeError::Refused(_)) => {
                metrics.set_probe(false, serde_json::json!({"error": error.to_string()}));
                // Nothing was started that needs an orderly stop but the listeners.
                stop.cancel();
                broker_stop.cancel();
                return Err(error.into());
            }
            Err(error) => {
                tracing::error!(error = %error, "start-up probe failed; the workers wait while it is retried");
                metrics.set_probe(false, serde_json::json!({"pending": error.to_string()}));
                breaker.set_probing(error.to_string());
                None
            }
        };
        let pending = first.is_none();
        let prober_client = client.clone();
        let prober = breaker.clone();
        let prober_stop = stop.clone();
        let prober_config = config.puhuri.clone();
        let prober_metrics = metrics.clone();
        supervisor.spawn(Role::Prober, async move {
            if pending {
                let Some(report) = startup_probe(
                    &prober_client,
                    &prober_config,
                    &prober_metrics,
                    tokens.as_ref(),
                    &prober_stop,
                )
                .await?
                else {
                    return Ok(());
                };
                probe_passed(report, &prober_client, &prober, &prober_metrics);
            }
            prober.run(prober_client, tokens, prober_stop).await;
            Ok(())
        });
        circuit = Some(breaker.clone());
        probe = first;
        let r = Arc::new(
            Reconciler::new(
                client.clone(),
                broker.clone(),
                config.puhuri.offerings.clone(),
                config.reconcile.clone(),
            )
            .with_metrics(metrics.clone()),
        );
        reconciler = Some(r.clone());
        if let Some(interval) = config.reconcile.interval {
            let r = r.clone();
            let reconcile_stop = stop.clone();
            let gate = breaker.clone();
            supervisor.spawn(Role::Reconciler, async move {
                if !gate.wait_closed(&reconcile_stop).await {
                    return Ok(());
                }
                r.run(reconcile_stop).await;
                Ok(())
            });
            tracing::info!(interval_secs = interval.as_secs(), "reconciler started");
        }
        let w = Arc::new(
            Worker::new(
                client.clone(),
                policy,
                broker.clone(),
                config.worker.clone(),
            )
            .with_shadow(config.policy_shadow)
            .with_customers(customers)
            .with_metrics(metrics.clone())
            .with_usage(config.usage.clone())
            .with_team(config.team.clone())
            .with_circuit(breaker.clone())
            .with_reconciler(r.clone()),
        );
        if let Some(period) = config.team.watch {
            let watcher = Arc::new(TeamWatcher::new(
                client.clone(),
                broker.clone(),
                config.puhuri.offerings.clone(),
                config.team.clone(),
                metrics.clone(),
            ));
            let watch_stop = stop.clone();
            let gate = breaker.clone();
            supervisor.spawn(Role::TeamWatcher, async move {
                if !gate.wait_closed(&watch_stop).await {
                    return Ok(());
                }
                watcher.run(watch_stop).await;
                Ok(())
            });
            tracing::info!(period_secs = period.as_secs(), "team watcher started");
        }
        if let (Some(listener), Some(auth)) = (review_listener, review_auth) {
            let customers = match &config.policy_customers_file {
                Some(path) => crate::customers::CustomerDirectory::load(path)?,
                None => crate::customers::CustomerDirectory::default(),
            };
            let review = crate::review::Review::new(
                client.clone(),
                w.policy_handle().clone(),
                customers,
                config.puhuri.offerings.clone(),
            );
            if let Some(every) = config.review.refresh {
                let refresh = crate::review::refresh(
                    review.clone(),
                    metrics.clone(),
                    breaker.clone(),
                    every,
                    stop.clone(),
                );
                supervisor.spawn(Role::ReviewRefresh, async move {
                    refresh.await;
                    Ok(())
                });
                tracing::info!(every_secs = every.as_secs(), "review queue refresh started");
            }
            let page = Arc::new(crate::review::web::ReviewPage::new(
                review,
                broker.clone(),
                auth,
                metrics.clone(),
            ));
            let router = crate::review::web::router(page);
            let server_stop = stop.clone();
            supervisor.spawn(Role::Review, async move {
                receiver::serve(listener, router, None, header_timeout, server_stop)
                    .await
                    .context("the review page's HTTP server stopped")
            });
            if let Some(addr) = review_addr {
                tracing::info!(listen = %addr, "review page listening");
            }
        }
        worker = Some(w.clone());
        let worker_stop = stop.clone();
        supervisor.spawn(Role::Worker, async move {
            w.run(worker_stop).await;
            Ok(())
        });
        tracing::info!(
            api = client_api(&probe).map_or("probing", |api| api.name()),
            max_in_flight = config.puhuri.max_in_flight,
            puhuri = crate::config::redacted_url(config.puhuri.url.as_deref().unwrap_or_default()),
            shadow = config.policy_shadow,
            "workers started"
        );
    }
    let mut events = None;
    if let (true, Some(events_config)) = (roles.receive, &config.events) {
        let client = config.puhuri.client()?;
        let stream = crate::events::EventStream::new(
            events_config.clone(),
            client,
            config.puhuri.token.clone(),
            broker.clone(),
            metrics.clone(),
        )
        .with_token_file(config.puhuri.token_file.clone());
        let stats = stream.stats();
        let read = stats.clone();
        metrics.attach_events(Arc::new(move || {
            (
                read.connected.load(std::sync::atomic::Ordering::Relaxed),
                read.last_frame_age(),
            )
        }));
        // Every (re)connect runs a reconcile pass: events published while the stream was
        // away are not sent again. Without a reconciler in this process (`receive`), the
        // request goes through the work queue to a worker's reconciler.
        let link = stats.clone();
        let link_stop = stop.clone();
        let local = reconciler.clone();
        let queue = broker.clone();
        tokio::spawn(async move {
            // A connect before this task first ran counts too.
            let mut first = true;
            loop {
                let notified = link.connected_notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let connected = link.connected.load(std::sync::atomic::Ordering::Relaxed);
                if !(first && connected) {
                    tokio::select! {
                        () = link_stop.cancelled() => return,
                        () = &mut notified => {}
                    }
                }
                first = false;
                match &local {
                    Some(r) => r.request_pass(),
                    None => request_remote_pass(&queue, &link_stop).await,
                }
            }
        });
        let events_stop = stop.clone();
        supervisor.spawn(Role::Events, async move {
            stream.run(events_stop).await;
            Ok(())
        });
        tracing::info!(url = %crate::config::redacted_url(&events_config.url), "event stream started");
        events = Some(stats);
    }
    supervisor.tracker.close();

    Ok(Running {
        addr,
        broker,
        stats,
        metrics,
        metrics_addr,
        review_addr,
        worker,
        reconciler,
        circuit,
        probe,
        events,
        supervisor,
        shutdown_deadline: config.worker.shutdown_deadline,
        broker_stop,
    })
}

fn client_api(probe: &Option<ProbeReport>) -> Option<crate::config::ApiGeneration> {
    probe.as_ref().map(|p| p.api)
}

/// Queues a request for a reconcile pass for the workers (the event stream of a process
/// without a reconciler connected), once the queue is connected; a failed publish is tried
/// again after a second, up to five times, and then left to the workers' interval.
async fn request_remote_pass(broker: &Broker, stop: &CancellationToken) {
    let request =
        crate::notification::ReconcileRequest::new(crate::events::SOURCE, crate::events::now_ms());
    for attempt in 1..=5 {
        if !broker.wait_connected(stop).await {
            return;
        }
        match crate::work::publish_reconcile_request(broker, &request).await {
            Ok(()) => {
                tracing::info!(id = %request.id, "reconcile pass requested from the workers");
                return;
            }
            Err(error) if attempt < 5 => {
                tracing::debug!(error = %error, attempt, "cannot request a reconcile pass yet");
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot request a reconcile pass from the workers; their interval covers it");
                return;
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

/// Records a passed start-up probe, sets the client's API generation and opens the way
/// for the roles that call Puhuri Core.
fn probe_passed(
    report: ProbeReport,
    client: &puhuri_client::PuhuriClient,
    circuit: &Circuit,
    metrics: &Metrics,
) -> ProbeReport {
    for warning in &report.warnings {
        tracing::warn!(warning = %warning, "start-up probe");
    }
    tracing::info!(
        api = ?report.api,
        user = %report.user,
        roles = ?report.provider_roles,
        offerings = report.offerings.len(),
        event_consumers = report.event_consumers,
        "start-up probe passed"
    );
    client.set_api(report.api);
    metrics.set_probe(
        true,
        serde_json::to_value(&report).unwrap_or(serde_json::Value::Null),
    );
    circuit.close();
    report
}

/// Retries the start-up probe (`probe.rs`) after a refused token (401) or a temporary
/// failure, with a backoff from [`REPROBE_FIRST`] doubling up to [`REPROBE_MAX`]
/// (re-reading `puhuri.token_file` after a 401), until it passes (`Some`) or `stop` fires
/// (`None`). A refused configuration (an explicit `puhuri.api` the server does not speak,
/// no provider role, an offering the user does not manage) is an error: the role fails
/// and the process stops naming it. `/readyz` shows the probe meanwhile.
async fn startup_probe(
    client: &puhuri_client::PuhuriClient,
    config: &crate::config::PuhuriConfig,
    metrics: &Metrics,
    tokens: &dyn TokenSource,
    stop: &CancellationToken,
) -> anyhow::Result<Option<ProbeReport>> {
    let mut wait = REPROBE_FIRST;
    let mut unauthorized = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return Ok(None),
        }
        wait = (wait * 2).min(REPROBE_MAX);
        if unauthorized {
            crate::circuit::reload_token(client, tokens);
        }
        match crate::probe::probe(client, config).await {
            Ok(report) => return Ok(Some(report)),
            Err(error @ ProbeError::Refused(_)) => {
                metrics.set_probe(false, serde_json::json!({"error": error.to_string()}));
                return Err(error.into());
            }
            Err(error) => {
                unauthorized = matches!(error, ProbeError::Unauthorized(_));
                metrics.set_probe(false, serde_json::json!({"pending": error.to_string()}));
                tracing::error!(error = %error, retry_in_secs = wait.as_secs(), "start-up probe failed; retrying");
            }
        }
    }
}

/// Opens the configured queue backend (RabbitMQ starts its supervisor, tied to `stop`).
pub fn open_queue(config: &Config, stop: CancellationToken) -> anyhow::Result<Broker> {
    Ok(match &config.queue {
        QueueChoice::RabbitMq => {
            Broker::start_rabbit(&config.amqp, config.worker.retry_delays.clone(), stop)
        }
        QueueChoice::Embedded { data_dir, lease } => {
            Broker::open_embedded(data_dir, config.worker.retry_delays.clone(), *lease)?
        }
    })
}

impl Running {
    /// Runs `task` as one more supervised role: when it ends before shutdown, fails or
    /// panics, every role stops and [`Running::wait`] reports it.
    pub fn supervise<F>(&self, role: Role, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.supervisor.spawn(role, task);
    }

    /// Reloads the workers' policy from `file` on SIGHUP and when it changes, as the
    /// supervised `policy-reloader` role. Without workers there is nothing to reload.
    pub fn watch_policy(&self, file: PolicyFile) {
        if let Some(worker) = self.worker.clone() {
            let stop = self.supervisor.stop.clone();
            self.supervise(Role::PolicyReloader, async move {
                crate::reload::watch(
                    file,
                    worker.policy_handle().clone(),
                    worker.metrics().clone(),
                    stop,
                )
                .await;
                Ok(())
            });
        }
    }

    /// The first role that ended on its own, if any.
    pub fn failure(&self) -> Option<RoleFailed> {
        self.supervisor.failure()
    }

    /// Asks every role to stop, waits for in-flight work (up to the deadline), then closes
    /// the broker connection.
    pub async fn shutdown(self) {
        self.stop_roles().await;
        self.broker_stop.cancel();
    }

    /// Stops the receiver and workers and waits for their in-flight work, keeping the
    /// broker connection open (for tooling that still needs it).
    pub async fn stop_roles(&self) {
        self.supervisor.stop.cancel();
        if tokio::time::timeout(self.shutdown_deadline, self.supervisor.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "shutdown deadline passed with work in flight; redeliveries will finish it"
            );
        }
    }

    /// Runs until `interrupt` completes (a signal) or a role ends on its own, then shuts
    /// down in order. Returns the failed role, if one ended the run.
    pub async fn wait(self, interrupt: impl Future<Output = ()>) -> Result<(), RoleFailed> {
        tokio::select! {
            () = interrupt => tracing::info!("shutting down"),
            () = self.supervisor.stop.cancelled() => {}
        }
        let supervisor = self.supervisor.clone();
        self.shutdown().await;
        match supervisor.failure() {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }
}
