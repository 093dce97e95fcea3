//! The circuit to Puhuri Core: whether workers may take new deliveries.
//!
//! It opens on a 401 (the token is refused: every call would fail, so nothing is
//! decided and nothing dead-lettered until it works again) and on sustained failure
//! ([`BREAKER_FAILURES`] calls in a row answered 5xx, 408 or 429, or not at all). While
//! it is open, workers take no new deliveries, deliveries refused with 401 go back to the
//! queue without counting an attempt, `/readyz` fails naming the reason, and
//! `puhuri_approver_puhuri_auth_ok` / `puhuri_approver_puhuri_circuit_open` say so.
//! [`Circuit::run`] re-probes (`GET /api/users/me/`, the half-open call) with a backoff
//! from [`REPROBE_FIRST`] doubling up to [`REPROBE_MAX`]; before each re-probe after a
//! 401 it re-reads the token (see [`TokenSource`]); SIGHUP re-probes at once. A re-probe
//! that succeeds closes the circuit.
//!
//! Until the start-up probe passes (`app.rs`), the circuit is held open as `probing`: the
//! workers, the reconciler and the team watcher wait for it.
//!
//! INVARIANT: only a successful re-probe (or the start-up probe) closes an open circuit; a
//! 401 always wins over an open `unavailable` circuit (the token must be fixed first);
//! nothing but the start-up probe replaces `probing`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use puhuri_client::{CallObserver, PuhuriClient};

/// Calls in a row that failed (5xx, 408, 429 or no answer) before the circuit opens.
pub const BREAKER_FAILURES: u32 = 20;
/// The first wait before a re-probe.
pub const REPROBE_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between re-probes.
pub const REPROBE_MAX: Duration = Duration::from_secs(60);

/// Why the circuit is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Open {
    /// Puhuri Core answered 401: the token is missing, invalid or expired.
    Unauthorized(String),
    /// Puhuri Core keeps failing or does not answer.
    Unavailable(String),
    /// The start-up probe has not passed yet (only it closes this state).
    Probing(String),
}

impl Open {
    pub fn kind(&self) -> &'static str {
        match self {
            Open::Unauthorized(_) => "unauthorized",
            Open::Unavailable(_) => "unavailable",
            Open::Probing(_) => "probing",
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            Open::Unauthorized(detail) | Open::Unavailable(detail) | Open::Probing(detail) => {
                detail
            }
        }
    }
}

/// Where a replaced token comes from: re-read before each re-probe after a 401 and on
/// SIGHUP. `None` when nothing new can be read (the token came from the environment).
pub trait TokenSource: Send + Sync {
    /// The current token, or why it cannot be read (never the token itself).
    fn read(&self) -> Option<Result<String, String>>;
}

/// No source of a new token: the process keeps its token.
pub struct FixedToken;

impl TokenSource for FixedToken {
    fn read(&self) -> Option<Result<String, String>> {
        None
    }
}

/// A file holding the token (`puhuri.token_file`), re-read whole and trimmed.
pub struct TokenFile(pub std::path::PathBuf);

impl TokenSource for TokenFile {
    fn read(&self) -> Option<Result<String, String>> {
        Some(match std::fs::read_to_string(&self.0) {
            Ok(text) if text.trim().is_empty() => {
                Err(format!("{}: the token file is empty", self.0.display()))
            }
            Ok(text) => Ok(text.trim().to_owned()),
            Err(error) => Err(format!("{}: cannot read: {error}", self.0.display())),
        })
    }
}

/// The circuit, shared by the client (as its call observer) and the workers.
pub struct Circuit {
    state: watch::Sender<Option<Open>>,
    failures: AtomicU32,
    metrics: Arc<Metrics>,
    /// Asks [`Circuit::run`] to re-read the token and re-probe now (SIGHUP).
    wake: Notify,
}

impl Circuit {
    pub fn new(metrics: Arc<Metrics>) -> Circuit {
        Circuit {
            state: watch::channel(None).0,
            failures: AtomicU32::new(0),
            metrics,
            wake: Notify::new(),
        }
    }

    /// Why it is open, when it is.
    pub fn open_reason(&self) -> Option<Open> {
        self.state.borrow().clone()
    }

    pub fn is_open(&self) -> bool {
        self.state.borrow().is_some()
    }

    /// Opens it (a 401 replaces an `unavailable` reason; nothing replaces `unauthorized`).
    pub fn open(&self, reason: Open) {
        let changed = self
            .state
            .send_if_modified(|state| match (&*state, &reason) {
                (None, _) | (Some(Open::Unavailable(_)), Open::Unauthorized(_)) => {
                    *state = Some(reason.clone());
                    true
                }
                _ => false,
            });
        if changed {
            tracing::error!(
                reason = reason.kind(),
                detail = reason.detail(),
                "circuit to Puhuri Core open: workers take no new deliveries until a re-probe succeeds"
            );
            self.metrics
                .set_circuit(Some((reason.kind(), reason.detail().to_owned())));
        }
    }

    /// Holds the workers until the start-up probe passes, saying why it has not yet.
    pub fn set_probing(&self, detail: String) {
        self.state.send_replace(Some(Open::Probing(detail.clone())));
        self.metrics.set_circuit(Some(("probing", detail)));
    }

    /// Closes it (a re-probe succeeded).
    pub fn close(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if self.state.send_replace(None).is_some() {
            tracing::info!("circuit to Puhuri Core closed: consuming again");
        }
        self.metrics.set_circuit(None);
    }

    /// Waits until it is closed; `false` when `stop` fires first.
    pub async fn wait_closed(&self, stop: &CancellationToken) -> bool {
        let mut state = self.state.subscribe();
        tokio::select! {
            closed = state.wait_for(Option::is_none) => closed.is_ok(),
            () = stop.cancelled() => false,
        }
    }

    /// Re-reads the token and re-probes now (SIGHUP).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Re-probes while open, until `stop`: see the module documentation.
    pub async fn run(
        self: Arc<Self>,
        client: PuhuriClient,
        tokens: Arc<dyn TokenSource>,
        stop: CancellationToken,
    ) {
        #[cfg(unix)]
        {
            // SIGHUP: re-read the token and re-probe now (the policy reloader hears it too).
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(mut hangup) => {
                    let this = self.clone();
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        loop {
                            tokio::select! {
                                () = stop.cancelled() => return,
                                received = hangup.recv() => match received {
                                    Some(()) => this.wake(),
                                    None => return,
                                },
                            }
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(error = %error, "cannot listen for SIGHUP; the token is re-read only while re-probing");
                }
            }
        }
        let mut state = self.state.subscribe();
        loop {
            tokio::select! {
                open = state.wait_for(|s| matches!(s, Some(Open::Unauthorized(_) | Open::Unavailable(_)))) => if open.is_err() { return },
                () = stop.cancelled() => return,
                () = self.wake.notified() => {
                    // SIGHUP while closed: take a new token now, before the old one fails.
                    reload_token(&client, tokens.as_ref());
                    continue;
                }
            }
            let mut wait = REPROBE_FIRST;
            while self.is_open() {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = self.wake.notified() => {}
                    () = stop.cancelled() => return,
                }
                if matches!(self.open_reason(), Some(Open::Unauthorized(_))) {
                    reload_token(&client, tokens.as_ref());
                }
                match client.me().await {
                    Ok(me) => {
                        tracing::info!(user = %me.username, "re-probe succeeded");
                        self.close();
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, retry_in_secs = wait.as_secs(), "re-probe failed; the circuit stays open");
                        wait = (wait * 2).min(REPROBE_MAX);
                    }
                }
            }
        }
    }
}

/// Takes the token from `tokens` into `client`, when it has one; problems are logged.
pub fn reload_token(client: &PuhuriClient, tokens: &dyn TokenSource) {
    match tokens.read() {
        None => {}
        Some(Ok(token)) => match client.set_token(&token) {
            Ok(()) => tracing::info!("Puhuri Core token re-read"),
            Err(error) => {
                tracing::error!(error = %error, "the re-read token is unusable; keeping the old one")
            }
        },
        Some(Err(error)) => {
            tracing::error!(error = %error, "cannot re-read the Puhuri Core token; keeping the old one");
        }
    }
}

impl CallObserver for Circuit {
    fn observe(&self, operation: &'static str, status: Option<u16>, elapsed: Duration) {
        self.metrics.observe(operation, status, elapsed);
        match status {
            Some(401) => self.open(Open::Unauthorized(format!(
                "Puhuri Core answered 401 to `{operation}`: the token is refused (expired, invalid or deleted)"
            ))),
            Some(408 | 429 | 500..=599) | None => {
                let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures >= BREAKER_FAILURES {
                    self.open(Open::Unavailable(format!(
                        "{failures} Puhuri Core calls in a row failed (5xx, 408, 429 or no answer); the last was `{operation}`"
                    )));
                }
            }
            Some(_) => self.failures.store(0, Ordering::Relaxed),
        }
    }

    fn waited_for_slot(&self, waited: Duration) {
        self.metrics.waited_for_slot(waited);
    }

    fn in_flight(&self, open: usize) {
        self.metrics.in_flight(open);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_on_sustained_failure_and_on_401_and_only_close_closes_it() {
        let metrics = Arc::new(Metrics::new());
        let circuit = Circuit::new(metrics.clone());
        let ms = Duration::from_millis(1);
        for _ in 0..BREAKER_FAILURES - 1 {
            circuit.observe("get order", Some(503), ms);
        }
        // A good answer in between starts the count again.
        circuit.observe("get order", Some(200), ms);
        for _ in 0..BREAKER_FAILURES - 1 {
            circuit.observe("get order", None, ms);
        }
        assert!(!circuit.is_open());
        circuit.observe("get order", Some(429), ms);
        assert_eq!(circuit.open_reason().map(|o| o.kind()), Some("unavailable"));
        assert_eq!(metrics.circuit().map(|c| c.0), Some("unavailable"));
        // A 401 wins; a later good answer does not close it.
        circuit.observe("approve", Some(401), ms);
        circuit.observe("get order", Some(200), ms);
        assert_eq!(
            circuit.open_reason().map(|o| o.kind()),
            Some("unauthorized")
        );
        // 403 and 404 are about one allocation, not the circuit.
        circuit.close();
        circuit.observe("approve", Some(403), ms);
        circuit.observe("get order", Some(404), ms);
        assert!(!circuit.is_open());
        assert_eq!(metrics.circuit(), None);
        // While probing, nothing but the probe's end replaces the state.
        circuit.set_probing("no answer yet".into());
        circuit.observe("users me", Some(401), ms);
        assert_eq!(circuit.open_reason().map(|o| o.kind()), Some("probing"));
    }
}
