//! Wiring: starts the roles a command asks for (receiver, workers) around one supervised
//! broker connection, and shuts them down in order.
//!
//! INVARIANT: on shutdown the receiver stops accepting and finishes its requests, workers
//! finish the deliveries they started, and only then is the broker connection closed, so
//! every started publish and ack completes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, QueueChoice};
use crate::metrics::Metrics;
use crate::receiver::{self, ReceiverStats};
use crate::reconciler::Reconciler;
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
}

/// A started service.
pub struct Running {
    /// Where the receiver listens, when it runs.
    pub addr: Option<SocketAddr>,
    pub broker: Broker,
    pub stats: Arc<ReceiverStats>,
    pub metrics: Arc<Metrics>,
    /// Where the metrics listener of a process without a receiver listens.
    pub metrics_addr: Option<SocketAddr>,
    pub worker: Option<Arc<Worker>>,
    pub reconciler: Option<Arc<Reconciler>>,
    stop: CancellationToken,
    shutdown_deadline: Duration,
    broker_stop: CancellationToken,
    tracker: TaskTracker,
}

/// Starts the roles. `listener` is used by the receiver; when `None` and the receiver
/// runs, `config.listen` is bound.
pub async fn start(
    config: &Config,
    roles: Roles,
    policy: Policy,
    listener: Option<TcpListener>,
    stop: CancellationToken,
) -> anyhow::Result<Running> {
    let broker_stop = CancellationToken::new();
    let broker = open_queue(config, broker_stop.clone())?;
    tracing::info!(queue = %broker.describe(), "queue backend");
    let tracker = TaskTracker::new();
    let stats = Arc::new(ReceiverStats::default());
    let metrics = Arc::new(Metrics::new());
    metrics.attach_broker(broker.clone());
    if roles.work {
        metrics.expect_workers();
    }

    let mut addr = None;
    if roles.receive {
        let listener = match listener {
            Some(listener) => listener,
            None => TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?,
        };
        addr = Some(listener.local_addr()?);
        let router = receiver::router(config, broker.clone(), stats.clone(), metrics.clone());
        let header_timeout = config.receiver.request_timeout;
        let server_stop = stop.clone();
        tracker.spawn(async move {
            if let Err(error) =
                receiver::serve(listener, router, header_timeout, server_stop.clone()).await
            {
                tracing::error!(error = %error, "receiver failed; stopping");
                server_stop.cancel();
            }
        });
        tracing::info!(listen = ?addr, sources = config.sources.len(), "receiver listening");
    }
    let mut metrics_addr = None;
    if let (false, Some(listen)) = (roles.receive, config.metrics_listen) {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen} (metrics_listen)"))?;
        metrics_addr = Some(listener.local_addr()?);
        let router = receiver::ops_router(metrics.clone());
        let header_timeout = config.receiver.request_timeout;
        let server_stop = stop.clone();
        tracker.spawn(async move {
            if let Err(error) = receiver::serve(listener, router, header_timeout, server_stop).await
            {
                tracing::error!(error = %error, "metrics listener failed");
            }
        });
        tracing::info!(listen = ?metrics_addr, "metrics listening");
    }

    let mut worker = None;
    let mut reconciler = None;
    if roles.work {
        config.require_token()?;
        let client = config.puhuri.client()?.with_observer(metrics.clone());
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
            let reconcile_stop = stop.clone();
            tracker.spawn(async move { r.run(reconcile_stop).await });
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
            .with_metrics(metrics.clone())
            .with_usage(config.usage.clone())
            .with_team(config.team.clone()),
        );
        if let Some(period) = config.team.watch {
            let watcher = Arc::new(TeamWatcher::new(
                client,
                broker.clone(),
                config.puhuri.offerings.clone(),
                config.team.clone(),
                metrics.clone(),
            ));
            let watch_stop = stop.clone();
            tracker.spawn(async move { watcher.run(watch_stop).await });
            tracing::info!(period_secs = period.as_secs(), "team watcher started");
        }
        worker = Some(w.clone());
        let worker_stop = stop.clone();
        tracker.spawn(async move { w.run(worker_stop).await });
        tracing::info!(api = ?config.puhuri.api, puhuri = %config.puhuri.url, shadow = config.policy_shadow, "workers started");
    }
    tracker.close();

    Ok(Running {
        addr,
        broker,
        stats,
        metrics,
        metrics_addr,
        worker,
        reconciler,
        stop,
        shutdown_deadline: config.worker.shutdown_deadline,
        broker_stop,
        tracker,
    })
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
    /// Asks every role to stop, waits for in-flight work (up to the deadline), then closes
    /// the broker connection.
    pub async fn shutdown(self) {
        self.stop_roles().await;
        self.broker_stop.cancel();
    }

    /// Stops the receiver and workers and waits for their in-flight work, keeping the
    /// broker connection open (for tooling that still needs it).
    pub async fn stop_roles(&self) {
        self.stop.cancel();
        if tokio::time::timeout(self.shutdown_deadline, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "shutdown deadline passed with work in flight; redeliveries will finish it"
            );
        }
    }

    /// Waits until something (a signal handler, a failed role) fires the stop token, then
    /// shuts down in order.
    pub async fn wait(self) {
        self.stop.cancelled().await;
        self.shutdown().await;
    }
}
