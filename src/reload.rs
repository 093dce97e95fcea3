//! Hot reload: the policy file is re-read on SIGHUP and whenever its content changes
//! (checked every [`POLL_INTERVAL`]), compiled, and swapped whole into the [`PolicyHandle`]
//! the workers read.
//!
//! This is the only part of the policy module that does IO.
//!
//! INVARIANT: a file that does not compile never replaces the running policy; the
//! errors are logged and counted, and the same content is not reported again until it
//! changes. Deliveries already being decided keep the policy they started with.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use tokio::sync::watch as channel;

use crate::metrics::Metrics;

/// The running policy, shared by the workers and the reloader: a compiled policy is
/// swapped in whole; a reader keeps the `Arc` it took for as long as it decides.
#[derive(Clone)]
pub struct PolicyHandle {
    current: Arc<channel::Sender<Arc<Policy>>>,
    counters: Arc<ReloadCounters>,
}

impl PolicyHandle {
    pub fn new(policy: Policy) -> PolicyHandle {
        PolicyHandle {
            current: Arc::new(channel::Sender::new(Arc::new(policy))),
            counters: Arc::default(),
        }
    }

    /// The running policy.
    pub fn current(&self) -> Arc<Policy> {
        self.current.borrow().clone()
    }

    /// Replaces the policy; deliveries already being decided keep the old one.
    pub fn replace(&self, policy: Policy) {
        self.current.send_replace(Arc::new(policy));
    }

    /// The running policy's version (`sha256:...`).
    pub fn version(&self) -> String {
        self.current.borrow().version().to_owned()
    }

    /// How often the policy was reloaded or a new file refused.
    pub fn reloads(&self) -> &ReloadCounters {
        &self.counters
    }
}
use puhuri_policy::Policy;

/// How often the file's modification time and size are looked at.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Reload counters, for logs now and metrics later.
#[derive(Debug, Default)]
pub struct ReloadCounters {
    /// Policies compiled and swapped in after start.
    pub reloads: AtomicU64,
    /// Files refused (unreadable or not compiling); the old policy kept running.
    pub failures: AtomicU64,
}

/// What a look at the file found.
#[derive(Debug)]
pub enum Reload {
    /// Same content as the running policy (or as the last refused one).
    Unchanged,
    /// A new policy, compiled.
    Compiled(Box<Policy>),
    /// The file cannot be read or does not compile: every reason, one per line.
    Refused(String),
}

/// The policy file being watched.
#[derive(Debug)]
pub struct PolicyFile {
    path: PathBuf,
    /// Modification time and size at the last read.
    stamp: Option<(SystemTime, u64)>,
    /// Digest of the last content read, compiled or not.
    seen: String,
    /// Whether a customers file is configured (a policy reading `customer.country`
    /// without one is refused).
    customers_file: bool,
}

impl PolicyFile {
    /// Watches `path`, whose content `running` was compiled from.
    pub fn new(path: PathBuf, running: &Policy) -> PolicyFile {
        let stamp = stamp_of(&path);
        PolicyFile {
            path,
            stamp,
            seen: running.version().to_owned(),
            customers_file: false,
        }
    }

    /// Whether the configuration names a customers file.
    pub fn with_customers_file(mut self, configured: bool) -> PolicyFile {
        self.customers_file = configured;
        self
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Reads the file when `force` is set or its stamp changed, and compiles it when its
    /// content differs from what was last seen.
    pub fn check(&mut self, force: bool) -> Reload {
        let stamp = stamp_of(&self.path);
        if !force && stamp == self.stamp {
            return Reload::Unchanged;
        }
        self.stamp = stamp;
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) => {
                let reason = format!("{}: cannot read: {error}", self.path.display());
                if self.seen == reason {
                    return Reload::Unchanged;
                }
                self.seen = reason.clone();
                return Reload::Refused(reason);
            }
        };
        match Policy::parse(&text) {
            Ok(policy) if policy.version() == self.seen => Reload::Unchanged,
            Ok(policy) => {
                self.seen = policy.version().to_owned();
                let unfillable = crate::customers::unfillable_fields(&policy, self.customers_file);
                if unfillable.is_empty() {
                    Reload::Compiled(Box::new(policy))
                } else {
                    Reload::Refused(
                        unfillable
                            .iter()
                            .map(|p| format!("{}: {p}", self.path.display()))
                            .collect::<Vec<_>>()
                            .join("\n"),
                    )
                }
            }
            Err(errors) => {
                let digest = puhuri_policy::version_of(&text).to_string();
                if digest == self.seen {
                    return Reload::Unchanged;
                }
                self.seen = digest;
                Reload::Refused(
                    errors
                        .0
                        .iter()
                        .map(|e| {
                            format!(
                                "{}:{}: {}: {}",
                                self.path.display(),
                                e.position(),
                                e.rule,
                                e.message
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
            }
        }
    }
}

fn stamp_of(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Unchanged,
    /// The new policy runs; its version.
    Reloaded(String),
    /// The running policy stays; every reason.
    Refused(String),
}

/// Applies one look at the file to the running policy; returns what happened.
pub fn apply(
    file: &mut PolicyFile,
    policy: &PolicyHandle,
    metrics: &Metrics,
    force: bool,
) -> Applied {
    let counters = policy.reloads();
    match file.check(force) {
        Reload::Unchanged => Applied::Unchanged,
        Reload::Compiled(compiled) => {
            counters.reloads.fetch_add(1, Ordering::Relaxed);
            metrics.policy_reload(true);
            let version = compiled.version().to_owned();
            tracing::info!(
                policy = %file.path().display(),
                version = %version,
                rules = compiled.rule_count(),
                "policy reloaded"
            );
            policy.replace(*compiled);
            Applied::Reloaded(version)
        }
        Reload::Refused(reasons) => {
            counters.failures.fetch_add(1, Ordering::Relaxed);
            metrics.policy_reload(false);
            tracing::error!(
                policy = %file.path().display(),
                error = %reasons,
                running = %policy.version(),
                "policy refused; the running policy stays"
            );
            Applied::Refused(reasons)
        }
    }
}

/// Watches the file until `stop`: on SIGHUP, and every [`POLL_INTERVAL`].
pub async fn watch(
    mut file: PolicyFile,
    policy: PolicyHandle,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    #[cfg(unix)]
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(error = %error, "cannot listen for SIGHUP; reloading on file changes only");
            None
        }
    };
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let hangup_received = async {
            match hangup.as_mut() {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hangup_received = std::future::pending::<()>();
        let force = tokio::select! {
            () = stop.cancelled() => return,
            () = hangup_received => {
                tracing::info!(policy = %file.path().display(), "SIGHUP: reloading the policy");
                true
            }
            _ = tick.tick() => false,
        };
        let applied = apply(&mut file, &policy, &metrics, force);
        if force && applied == Applied::Unchanged {
            tracing::info!(
                policy = %file.path().display(),
                version = %policy.version(),
                "policy unchanged"
            );
        }
    }
}
