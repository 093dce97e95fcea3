//! Configuration: documented defaults, one TOML file, environment overrides.
//!
//! The file's serde form ([`FileConfig`]) is parsed and validated once into [`Config`],
//! with errors that name the file, the line, the column and the key. Secrets are wrapped in
//! [`Secret`] or [`WebhookSecret`] so that no `Debug` output can show them.
//!
//! INVARIANT: no error quotes the file's text. The TOML parser's `Display` prints the
//! offending line (which may be the line holding a secret), so parse errors are built by
//! [`puhuri_policy::toml_error::locate`] from the span and the message with quoted values
//! removed; keys are named only from [`KEYS`]; a validation message repeats no free-form
//! value from the file (only validated source names, parsed addresses and file paths). The
//! serde form holding the raw secrets has no `Debug`.
//!
//! Environment overrides (each documented in `README.md`):
//! `PUHURI_APPROVER_LISTEN`, `PUHURI_APPROVER_METRICS_LISTEN`, `PUHURI_APPROVER_DATA_DIR`,
//! `PUHURI_APPROVER_AMQP_URL`, `PUHURI_APPROVER_AMQP_URLS` (comma-separated),
//! `PUHURI_APPROVER_PUHURI_URL`, `PUHURI_APPROVER_PUHURI_TOKEN`,
//! `PUHURI_APPROVER_PUHURI_TOKEN_FILE`, `PUHURI_APPROVER_POLICY`, and
//! `PUHURI_APPROVER_SOURCE_<NAME>_SECRETS` (comma-separated; `<NAME>` is the source name in
//! upper case with `-` replaced by `_`) or `PUHURI_APPROVER_SOURCE_<NAME>_SECRETS_FILE`.
//!
//! Nothing points at a Puhuri Core by default: `puhuri.url` (like the token and the policy
//! file) must be given to the roles that need it, which [`Config::require`] checks before
//! anything starts, naming every missing key at once.
//!
//! INVARIANT: a notification source fails closed at load: it names an authentication
//! scheme with at least one strong secret, or declares `auth = "none"` together with
//! `insecure_no_auth = true`; secrets come from the file, a secrets file or the
//! environment, never from the command line.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use ipnet::IpNet;

use puhuri_auth::secret::Secret;
use puhuri_auth::signature::{GithubSecret, PathSecret, WebhookSecret};

/// The RabbitMQ used when nothing else is configured.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// An error that points at the offending place in a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The TOML syntax, a type or an unknown key: the place and the parser's message,
    /// never the text of the line.
    #[error("{path}:{line}:{column}: {}{message}", key.as_ref().map(|k| format!("`{k}`: ")).unwrap_or_default())]
    Syntax {
        path: String,
        line: usize,
        column: usize,
        /// `None` when the place is under no key this service knows.
        key: Option<String>,
        message: String,
    },
    #[error("{path}:{line}:{column}: `{key}`: {message}")]
    Invalid {
        path: String,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
    #[error("environment variable `{var}`: {message}")]
    Env { var: String, message: String },
    /// A file a key (or its environment variable) names cannot be used.
    #[error("`{key}`: {message}")]
    KeyFile { key: String, message: String },
    #[error("{}", missing_message(origin, command, missing))]
    Missing {
        /// The file the configuration came from (or [`NO_FILE`]).
        origin: String,
        command: String,
        missing: Vec<Missing>,
    },
}

/// Every table and key name of the file: the only names a syntax error may quote from it
/// (anything else at a key's place could be a pasted secret).
pub const KEYS: &[&str] = &[
    // top level and tables
    "listen",
    "metrics_listen",
    "amqp",
    "queue",
    "worker",
    "reconcile",
    "team",
    "usage",
    "puhuri",
    "policy",
    "receiver",
    "sources",
    "review",
    "events",
    // [review]
    "session_key_file",
    "session_secs",
    "secure_cookie",
    "trusted_header",
    "trusted_proxies",
    "operators",
    "token_sha256",
    "refresh_secs",
    // [amqp]
    "url",
    "urls",
    "prefix",
    "publish_channels",
    "confirm_timeout_ms",
    "declare",
    // [queue]
    "backend",
    "data_dir",
    "lease_secs",
    // [worker]
    "prefetch",
    "max_attempts",
    "retry_delays_ms",
    "retry_jitter",
    "shutdown_deadline_ms",
    // [reconcile], [team], [usage]
    "interval_secs",
    "recheck_secs",
    "snapshot_on_approval",
    "watch_secs",
    "watch_memory_kib",
    "linger_ms",
    "max_batch",
    // [events]
    "flow",
    "heartbeat_ms",
    "backoff_initial_ms",
    "backoff_max_ms",
    "offerings",
    // [puhuri]
    "token",
    "token_file",
    "api",
    "timeout_ms",
    "max_in_flight",
    "offerings",
    // [policy]
    "file",
    "shadow",
    "customers_file",
    // [receiver]
    "trust_forwarded_for",
    "request_timeout_ms",
    "replay_cache_entries",
    // [[sources]]
    "name",
    "format",
    "auth",
    "secrets",
    "secrets_file",
    "tolerance_secs",
    "insecure_no_auth",
    "allowed_networks",
    "rate_limit_per_sec",
    "rate_limit_burst",
    "replay_window_secs",
];

/// A TOML error as a [`ConfigError::Syntax`]: never the parser's `Display`, which quotes
/// the offending line.
fn syntax_error(text: &str, path: &str, error: &toml::de::Error) -> ConfigError {
    let located = puhuri_policy::toml_error::locate(text, error, Some(KEYS));
    ConfigError::Syntax {
        path: path.to_owned(),
        line: located.line,
        column: located.column,
        key: located.key,
        message: located.message,
    }
}

/// The origin of a configuration read without a file (defaults and the environment).
pub const NO_FILE: &str = "<defaults>";

/// A setting a command needs that the configuration does not give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// The key in the file, e.g. `puhuri.url`.
    pub key: &'static str,
    /// The environment variable that can give it instead, if any.
    pub env: Option<&'static str>,
    /// What it is.
    pub what: &'static str,
}

fn missing_message(origin: &str, command: &str, missing: &[Missing]) -> String {
    let origin = if origin == NO_FILE {
        "no configuration file (`--config FILE` or `PUHURI_APPROVER_CONFIG`)".to_owned()
    } else {
        origin.to_owned()
    };
    let mut text = format!("{origin}: `{command}` needs settings that are not set:");
    for m in missing {
        text.push_str(&format!("\n  `{}`", m.key));
        if let Some(env) = m.env {
            text.push_str(&format!(" (or env `{env}`)"));
        }
        text.push_str(&format!(": {}", m.what));
    }
    text
}

/// What a command needs from the configuration beyond valid values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// Puhuri Core: `puhuri.url` and `puhuri.token` (`work`, `serve`, `team`).
    pub puhuri: bool,
    /// A policy file (`work`, `serve`).
    pub policy: bool,
    /// At least one notification source (`receive`, `serve`).
    pub sources: bool,
}

/// Why a Puhuri Core client cannot be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ClientSetupError {
    #[error("`puhuri.url` (or env `PUHURI_APPROVER_PUHURI_URL`) is not set")]
    NoUrl,
    #[error(transparent)]
    Build(#[from] puhuri_client::BuildError),
}

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the configuration came from (the file's path, or [`NO_FILE`]), for messages.
    pub origin: String,
    pub listen: SocketAddr,
    /// Where every role serves `/metrics`, `/healthz` and `/readyz` apart from `listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// Which queue backend runs.
    pub queue: QueueChoice,
    pub amqp: AmqpConfig,
    pub worker: WorkerConfig,
    pub reconcile: ReconcileConfig,
    pub team: TeamConfig,
    pub usage: UsageConfig,
    pub puhuri: PuhuriConfig,
    pub policy_file: Option<PathBuf>,
    /// Where `policy_file` was named (`FILE:LINE:COLUMN: \`policy.file\`` or the
    /// environment variable), for errors about the policy file.
    pub policy_file_from: Option<String>,
    /// Decide and publish decisions, but write nothing to Puhuri Core.
    pub policy_shadow: bool,
    /// The provider's customers file (organisation -> country, abbreviation, tags), the
    /// only source of `customer.country` and `customer.tags`; relative to the config
    /// file's folder.
    pub policy_customers_file: Option<PathBuf>,
    pub receiver: ReceiverConfig,
    pub sources: Vec<SourceConfig>,
    /// The review page (`[review]`): off unless `review.listen` is set.
    pub review: ReviewConfig,
    /// Waldur's event stream (`[events]`), when configured.
    pub events: Option<EventsConfig>,
}

/// Which registration flow the `[events]` source uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventsFlow {
    /// Event consumers when the server has them (the start-up probe), else subscriptions.
    Auto,
    Consumers,
    Subscriptions,
}

/// Waldur's own push channel: order events over STOMP 1.2 over WebSocket (`[events]`).
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// `ws://` or `wss://` URL of the web-STOMP endpoint.
    pub url: String,
    pub flow: EventsFlow,
    /// The heart-beat this side offers and asks for, both ways.
    pub heartbeat: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// The offerings registered for (default `puhuri.offerings`).
    pub offerings: Vec<String>,
}

/// `[review]`: the review page's listener and how operators authenticate.
#[derive(Debug, Clone, Default)]
pub struct ReviewConfig {
    /// Where the review page is served; `None`: not served.
    pub listen: Option<SocketAddr>,
    /// The HMAC key of session cookies (32 bytes or more); `None`: a random key per
    /// process, so sessions end when the process does.
    pub session_key_file: Option<PathBuf>,
    /// How long a session lasts.
    pub session: Duration,
    /// Whether the session cookie is `Secure` (sent only over HTTPS).
    pub secure_cookie: bool,
    /// The header a reverse proxy sets to the authenticated operator's name.
    pub trusted_header: Option<String>,
    /// The proxies whose `trusted_header` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Operators who log in with a token, by its SHA-256.
    pub operators: Vec<ReviewOperator>,
    /// How often the process serving the page recomputes the queue for the held gauges
    /// without a visitor; `None`: only when the queue is listed.
    pub refresh: Option<Duration>,
}

/// An operator who logs in with a token; only the token's SHA-256 is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewOperator {
    pub name: String,
    pub token_sha256: [u8; 32],
}

/// The queue backend: RabbitMQ when an AMQP URL is configured, else the embedded queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueChoice {
    RabbitMq,
    Embedded {
        /// The data folder holding `queue.sqlite3`.
        data_dir: PathBuf,
        /// How long a claimed message stays invisible before it is delivered again.
        lease: Duration,
    },
}

/// The default data folder of the embedded queue, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "puhuri-approver-data";

fn embedded_choice(
    at: &Locator<'_>,
    file: &FileQueue,
    env: &dyn Environment,
) -> Result<QueueChoice, ConfigError> {
    let data_dir = env
        .get("PUHURI_APPROVER_DATA_DIR")
        .or_else(|| file.data_dir.clone())
        .unwrap_or_else(|| DEFAULT_DATA_DIR.to_owned());
    let lease = match &file.lease_secs {
        Some(s) if *s.get_ref() == 0 || *s.get_ref() > 3600 => {
            return Err(at.invalid(s.span(), "queue.lease_secs", "expected 1 to 3600"));
        }
        Some(s) => Duration::from_secs(*s.get_ref()),
        None => Duration::from_secs(60),
    };
    Ok(QueueChoice::Embedded {
        data_dir: PathBuf::from(data_dir),
        lease,
    })
}

/// Settings of the HTTP receiver shared by every source.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// How many reverse proxies in front of the receiver append to `X-Forwarded-For`;
    /// 0 (the default) ignores the header and uses the TCP peer address.
    pub trust_forwarded_for: usize,
    /// The longest time a request may take to arrive (headers to the end of the body).
    pub request_timeout: Duration,
    /// The most (source, id) pairs the replay cache keeps.
    pub replay_cache_entries: usize,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            trust_forwarded_for: 0,
            request_timeout: Duration::from_secs(10),
            replay_cache_entries: 100_000,
        }
    }
}

pub use puhuri_queue::AmqpConfig;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub prefetch: u16,
    pub max_attempts: u32,
    pub retry_delays: Vec<Duration>,
    /// Fraction (0..1) by which a retry delay is shortened at random, so that failures
    /// that happened together are not retried together.
    pub retry_jitter: f64,
    /// How long shutdown waits for in-flight requests and deliveries.
    pub shutdown_deadline: Duration,
}

/// The reconciler: polls Puhuri Core for allocations waiting for the provider.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    /// Time between cycles; `None` turns the reconciler off.
    pub interval: Option<Duration>,
    /// An allocation enqueued by this reconciler is not enqueued again for this long
    /// (held allocations are re-evaluated at this pace).
    pub recheck: Duration,
}

/// Project teams: snapshots after approval and the change watcher.
#[derive(Debug, Clone)]
pub struct TeamConfig {
    /// Publish a `team.snapshot` event after each approval.
    pub snapshot_on_approval: bool,
    /// Time between watch cycles (with the reconciler); `None` turns the watcher off.
    pub watch: Option<Duration>,
    /// Bytes the watcher may keep of the teams it saw last (`team.watch_memory_kib`).
    pub watch_memory_bytes: usize,
}

impl Default for TeamConfig {
    fn default() -> Self {
        TeamConfig {
            snapshot_on_approval: true,
            watch: Some(Duration::from_secs(300)),
            watch_memory_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Usage records: how long the worker gathers records of one allocation and month
/// before reporting them together.
#[derive(Debug, Clone)]
pub struct UsageConfig {
    pub linger: Duration,
    /// Records of one allocation and month that are reported at once without waiting.
    pub max_batch: usize,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            linger: Duration::from_millis(200),
            max_batch: 256,
        }
    }
}

pub use puhuri_client::ApiGeneration;

/// `puhuri.api`: the generation to speak, or `auto` (what the start-up probe finds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiChoice {
    Auto,
    Fixed(ApiGeneration),
}

impl ApiChoice {
    /// The generation to assume before the start-up probe: the configured one, or the
    /// current API for `auto`.
    pub fn assumed(self) -> ApiGeneration {
        match self {
            ApiChoice::Fixed(api) => api,
            ApiChoice::Auto => ApiGeneration::Orders,
        }
    }

    /// The configuration value.
    pub fn name(self) -> &'static str {
        match self {
            ApiChoice::Auto => "auto",
            ApiChoice::Fixed(ApiGeneration::Orders) => "orders",
            ApiChoice::Fixed(ApiGeneration::Resources) => "resources",
        }
    }
}

impl<'de> Deserialize<'de> for ApiChoice {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum Raw {
            Auto,
            Orders,
            Resources,
        }
        Ok(match Raw::deserialize(deserializer)? {
            Raw::Auto => ApiChoice::Auto,
            Raw::Orders => ApiChoice::Fixed(ApiGeneration::Orders),
            Raw::Resources => ApiChoice::Fixed(ApiGeneration::Resources),
        })
    }
}

/// Concurrent Puhuri Core calls per process when `puhuri.max_in_flight` is not set.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;

#[derive(Debug, Clone)]
pub struct PuhuriConfig {
    /// The API base, ending in `/api/`; required by every role that talks to Puhuri Core.
    pub url: Option<String>,
    pub token: Secret,
    /// Where the token was read from, when a file (re-read on SIGHUP and after a 401).
    pub token_file: Option<PathBuf>,
    pub api: ApiChoice,
    pub timeout: Duration,
    /// The most Puhuri Core calls open at once in this process.
    pub max_in_flight: usize,
    pub offerings: Vec<String>,
}

impl PuhuriConfig {
    /// The client for this configuration.
    pub fn client(&self) -> Result<puhuri_client::PuhuriClient, ClientSetupError> {
        let url = self.url.clone().ok_or(ClientSetupError::NoUrl)?;
        Ok(puhuri_client::PuhuriClient::new(
            &puhuri_client::ClientConfig {
                url,
                // With `auto`, the start-up probe decides (`PuhuriClient::with_api`).
                api: self.api.assumed(),
                timeout: self.timeout,
            },
            self.token.expose(),
        )?
        .with_max_in_flight(self.max_in_flight))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadFormat {
    /// Waldur's own hook JSON `{created, message, event_type, context}`.
    WaldurHook,
    /// The canonical notification, `schemas/allocation-notification.v1.schema.json`.
    Allocation,
}

/// How a source's notifications are authenticated.
#[derive(Clone)]
pub enum SourceAuth {
    /// Standard Webhooks v1 headers; any secret may match (rotation).
    StandardWebhooks {
        secrets: Vec<WebhookSecret>,
        tolerance_secs: i64,
    },
    /// `X-Hub-Signature-256` over the body; the id (and replay key) is a digest of the body, `X-GitHub-Delivery` only a label.
    Github { secrets: Vec<GithubSecret> },
    /// A secret path segment: `POST /v1/notifications/{source}/{secret}`.
    PathSecret { secrets: Vec<PathSecret> },
    /// No authentication; only with `insecure_no_auth = true`.
    None,
}

impl SourceAuth {
    /// The configuration name of the scheme.
    pub fn scheme(&self) -> &'static str {
        match self {
            SourceAuth::StandardWebhooks { .. } => "standard-webhooks",
            SourceAuth::Github { .. } => "github",
            SourceAuth::PathSecret { .. } => "path-secret",
            SourceAuth::None => "none",
        }
    }
}

impl fmt::Debug for SourceAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secrets = match self {
            SourceAuth::StandardWebhooks { secrets, .. } => secrets.len(),
            SourceAuth::Github { secrets } => secrets.len(),
            SourceAuth::PathSecret { secrets } => secrets.len(),
            SourceAuth::None => 0,
        };
        let mut out = f.debug_struct(self.scheme());
        out.field("secrets", &secrets);
        if let SourceAuth::StandardWebhooks { tolerance_secs, .. } = self {
            out.field("tolerance_secs", tolerance_secs);
        }
        out.finish()
    }
}

/// A token bucket: `per_sec` requests per second on average, bursts of `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_sec: u32,
    pub burst: u32,
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub name: String,
    pub format: PayloadFormat,
    pub auth: SourceAuth,
    /// Networks requests must come from; empty = any.
    pub allowed_networks: Vec<IpNet>,
    pub rate_limit: RateLimit,
    /// How long a (source, id) pair is remembered to refuse replays.
    pub replay_window: Duration,
}

// ---- the file's serde form -------------------------------------------------

// No `Debug` here and below where a field holds a secret (`amqp.url`, `puhuri.token`,
// `sources.secrets`): the raw strings are wrapped only after validation.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<Spanned<String>>,
    metrics_listen: Option<Spanned<String>>,
    #[serde(default)]
    amqp: FileAmqp,
    #[serde(default)]
    queue: FileQueue,
    #[serde(default)]
    worker: FileWorker,
    #[serde(default)]
    reconcile: FileReconcile,
    #[serde(default)]
    team: FileTeam,
    #[serde(default)]
    usage: FileUsage,
    #[serde(default)]
    puhuri: FilePuhuri,
    #[serde(default)]
    policy: FilePolicy,
    #[serde(default)]
    receiver: FileReceiver,
    #[serde(default)]
    sources: Vec<Spanned<FileSource>>,
    #[serde(default)]
    review: FileReview,
    events: Option<Spanned<FileEvents>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileReview {
    listen: Option<Spanned<String>>,
    session_key_file: Option<String>,
    session_secs: Option<Spanned<u64>>,
    secure_cookie: Option<bool>,
    trusted_header: Option<Spanned<String>>,
    trusted_proxies: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    operators: Vec<Spanned<FileOperator>>,
    refresh_secs: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOperator {
    name: String,
    token_sha256: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEvents {
    url: Option<Spanned<String>>,
    flow: Option<EventsFlow>,
    heartbeat_ms: Option<Spanned<u64>>,
    backoff_initial_ms: Option<Spanned<u64>>,
    backoff_max_ms: Option<Spanned<u64>>,
    offerings: Option<Vec<String>>,
}

/// The two addresses `healthcheck` reads; every other key is left to the service.
#[derive(Debug, Default, Deserialize)]
struct ProbeFile {
    listen: Option<Spanned<String>>,
    metrics_listen: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileReceiver {
    trust_forwarded_for: Option<Spanned<usize>>,
    request_timeout_ms: Option<Spanned<u64>>,
    replay_cache_entries: Option<Spanned<usize>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAmqp {
    url: Option<Spanned<String>>,
    urls: Option<Spanned<Vec<Spanned<String>>>>,
    prefix: Option<Spanned<String>>,
    publish_channels: Option<Spanned<usize>>,
    confirm_timeout_ms: Option<Spanned<u64>>,
    declare: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWorker {
    prefetch: Option<Spanned<u16>>,
    max_attempts: Option<Spanned<u32>>,
    retry_delays_ms: Option<Spanned<Vec<u64>>>,
    retry_jitter: Option<Spanned<f64>>,
    shutdown_deadline_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQueue {
    backend: Option<Spanned<String>>,
    data_dir: Option<String>,
    lease_secs: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileReconcile {
    interval_secs: Option<Spanned<u64>>,
    recheck_secs: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTeam {
    snapshot_on_approval: Option<bool>,
    watch_secs: Option<Spanned<u64>>,
    watch_memory_kib: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUsage {
    linger_ms: Option<Spanned<u64>>,
    max_batch: Option<Spanned<usize>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePuhuri {
    url: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    api: Option<ApiChoice>,
    timeout_ms: Option<Spanned<u64>>,
    max_in_flight: Option<Spanned<usize>>,
    #[serde(default)]
    offerings: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePolicy {
    file: Option<Spanned<String>>,
    shadow: Option<bool>,
    customers_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSource {
    name: Spanned<String>,
    format: PayloadFormat,
    auth: Spanned<String>,
    secrets: Option<Spanned<Vec<String>>>,
    secrets_file: Option<Spanned<String>>,
    tolerance_secs: Option<Spanned<i64>>,
    insecure_no_auth: Option<Spanned<bool>>,
    allowed_networks: Option<Spanned<Vec<String>>>,
    rate_limit_per_sec: Option<Spanned<u32>>,
    rate_limit_burst: Option<Spanned<u32>>,
    replay_window_secs: Option<Spanned<u64>>,
}

/// Where values come from besides the file: the environment, or a map in tests.
pub trait Environment {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Environment for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

impl Config {
    /// Reads and validates a config file, then applies the environment.
    pub fn load(path: &Path, env: &dyn Environment) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string(), env)
    }

    /// Defaults plus the environment, for running without a file.
    pub fn from_env(env: &dyn Environment) -> Result<Config, ConfigError> {
        Self::parse("", NO_FILE, env)
    }

    /// Reads a config file for a tool that never receives notifications (`dlq`, `team`,
    /// `usage push`): every setting is validated as for `serve` except `[[sources]]`,
    /// which are skipped, so the tools need none of the webhook secrets.
    pub fn load_without_sources(path: &Path, env: &dyn Environment) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse_parts(&text, &path.display().to_string(), env, false)
    }

    /// Defaults plus the environment, without `[[sources]]` (see [`Config::load_without_sources`]).
    pub fn from_env_without_sources(env: &dyn Environment) -> Result<Config, ConfigError> {
        Self::parse_parts("", NO_FILE, env, false)
    }

    /// Parses config text; `path` is only used in messages. Relative paths in the file
    /// (the policy file) are kept as written.
    pub fn parse(text: &str, path: &str, env: &dyn Environment) -> Result<Config, ConfigError> {
        Self::parse_parts(text, path, env, true)
    }

    fn parse_parts(
        text: &str,
        path: &str,
        env: &dyn Environment,
        with_sources: bool,
    ) -> Result<Config, ConfigError> {
        let file: FileConfig =
            toml::from_str(text).map_err(|error| syntax_error(text, path, &error))?;
        let at = Locator { text, path };

        let (listen, metrics_listen) = addresses(&at, &file.listen, &file.metrics_listen, env)?;

        let review = review_config(&at, &file.review, [Some(listen), metrics_listen], env)?;
        let (amqp_urls, amqp_configured) = amqp_urls(&at, &file.amqp, env)?;
        let queue = match file
            .queue
            .backend
            .as_ref()
            .map(|b| (b.get_ref().as_str(), b.span()))
        {
            Some(("rabbitmq", _)) => QueueChoice::RabbitMq,
            Some(("embedded", _)) => embedded_choice(&at, &file.queue, env)?,
            Some((_, span)) => {
                return Err(at.invalid(
                    span,
                    "queue.backend",
                    "unknown backend; expected `embedded` or `rabbitmq`",
                ));
            }
            None if amqp_configured => QueueChoice::RabbitMq,
            None => embedded_choice(&at, &file.queue, env)?,
        };
        let prefix = match &file.amqp.prefix {
            Some(prefix) => {
                if !is_valid_prefix(prefix.get_ref()) {
                    return Err(at.invalid(
                        prefix.span(),
                        "amqp.prefix",
                        "expected 1 to 100 characters of letters, digits, `.`, `-` or `_`",
                    ));
                }
                prefix.get_ref().clone()
            }
            None => "puhuri-approver".to_owned(),
        };
        let publish_channels = match &file.amqp.publish_channels {
            Some(n) if !(1..=64).contains(n.get_ref()) => {
                return Err(at.invalid(n.span(), "amqp.publish_channels", "expected 1 to 64"));
            }
            Some(n) => *n.get_ref(),
            None => 4,
        };
        let confirm_timeout = millis(
            &at,
            &file.amqp.confirm_timeout_ms,
            "amqp.confirm_timeout_ms",
            5_000,
        )?;

        let prefetch = match &file.worker.prefetch {
            Some(n) if *n.get_ref() == 0 => {
                return Err(at.invalid(n.span(), "worker.prefetch", "expected at least 1"));
            }
            Some(n) => *n.get_ref(),
            // Deliveries wait on Puhuri Core most of the time (about four calls each): with
            // 50 ms a call, 1,000 decisions per second need some 200 in flight.
            None => 512,
        };
        let max_attempts = match &file.worker.max_attempts {
            Some(n) if !(1..=100).contains(n.get_ref()) => {
                return Err(at.invalid(n.span(), "worker.max_attempts", "expected 1 to 100"));
            }
            Some(n) => *n.get_ref(),
            None => 5,
        };
        let retry_delays = match &file.worker.retry_delays_ms {
            Some(list) => {
                if list.get_ref().is_empty()
                    || list.get_ref().iter().any(|ms| *ms == 0 || *ms > 86_400_000)
                {
                    return Err(at.invalid(
                        list.span(),
                        "worker.retry_delays_ms",
                        "expected a non-empty list of delays between 1 ms and 24 h",
                    ));
                }
                list.get_ref()
                    .iter()
                    .map(|ms| Duration::from_millis(*ms))
                    .collect()
            }
            None => vec![
                Duration::from_secs(1),
                Duration::from_secs(5),
                Duration::from_secs(30),
                Duration::from_secs(120),
            ],
        };

        let retry_jitter = match &file.worker.retry_jitter {
            Some(j) if !(0.0..1.0).contains(j.get_ref()) => {
                return Err(at.invalid(
                    j.span(),
                    "worker.retry_jitter",
                    "expected a fraction from 0 up to (not including) 1",
                ));
            }
            Some(j) => *j.get_ref(),
            None => 0.2,
        };
        let shutdown_deadline = millis(
            &at,
            &file.worker.shutdown_deadline_ms,
            "worker.shutdown_deadline_ms",
            30_000,
        )?;
        let reconcile = ReconcileConfig {
            interval: match &file.reconcile.interval_secs {
                Some(s) if *s.get_ref() > 86_400 => {
                    return Err(at.invalid(
                        s.span(),
                        "reconcile.interval_secs",
                        "expected 0 (off) to 86400",
                    ));
                }
                Some(s) if *s.get_ref() == 0 => None,
                Some(s) => Some(Duration::from_secs(*s.get_ref())),
                None => Some(Duration::from_secs(60)),
            },
            recheck: match &file.reconcile.recheck_secs {
                Some(s) if *s.get_ref() == 0 || *s.get_ref() > 86_400 => {
                    return Err(at.invalid(
                        s.span(),
                        "reconcile.recheck_secs",
                        "expected 1 to 86400",
                    ));
                }
                Some(s) => Duration::from_secs(*s.get_ref()),
                None => Duration::from_secs(900),
            },
        };
        let team = TeamConfig {
            snapshot_on_approval: file
                .team
                .snapshot_on_approval
                .unwrap_or(TeamConfig::default().snapshot_on_approval),
            watch: match &file.team.watch_secs {
                Some(s) if *s.get_ref() > 86_400 => {
                    return Err(at.invalid(
                        s.span(),
                        "team.watch_secs",
                        "expected 0 (off) to 86400",
                    ));
                }
                Some(s) if *s.get_ref() == 0 => None,
                Some(s) => Some(Duration::from_secs(*s.get_ref())),
                None => TeamConfig::default().watch,
            },
            watch_memory_bytes: match &file.team.watch_memory_kib {
                Some(s) if !(64..=4_194_304).contains(s.get_ref()) => {
                    return Err(at.invalid(
                        s.span(),
                        "team.watch_memory_kib",
                        "expected 64 to 4194304 (KiB)",
                    ));
                }
                Some(s) => usize::try_from(*s.get_ref())
                    .unwrap_or(usize::MAX / 1024)
                    .saturating_mul(1024),
                None => TeamConfig::default().watch_memory_bytes,
            },
        };
        let usage = UsageConfig {
            linger: match &file.usage.linger_ms {
                Some(s) if *s.get_ref() > 60_000 => {
                    return Err(at.invalid(s.span(), "usage.linger_ms", "expected 0 to 60000"));
                }
                Some(s) => {
                    let linger = Duration::from_millis(*s.get_ref());
                    if let QueueChoice::Embedded { lease, .. } = &queue
                        && linger * 2 >= *lease
                    {
                        return Err(at.invalid(
                            s.span(),
                            "usage.linger_ms",
                            &format!(
                                "must be under half of queue.lease_secs ({} s): records wait unacknowledged while they linger",
                                lease.as_secs()
                            ),
                        ));
                    }
                    linger
                }
                None => UsageConfig::default().linger,
            },
            max_batch: match &file.usage.max_batch {
                Some(s) if *s.get_ref() == 0 || *s.get_ref() > 10_000 => {
                    return Err(at.invalid(s.span(), "usage.max_batch", "expected 1 to 10000"));
                }
                Some(s) => *s.get_ref(),
                None => UsageConfig::default().max_batch,
            },
        };

        let puhuri_url = match env.get("PUHURI_APPROVER_PUHURI_URL") {
            Some(url) => Some(normalize_api_url(&url).map_err(|message| ConfigError::Env {
                var: "PUHURI_APPROVER_PUHURI_URL".into(),
                message: message.to_owned(),
            })?),
            None => match &file.puhuri.url {
                Some(url) => Some(
                    normalize_api_url(url.get_ref())
                        .map_err(|message| at.invalid(url.span(), "puhuri.url", message))?,
                ),
                None => None,
            },
        };
        let token_file = match env.get("PUHURI_APPROVER_PUHURI_TOKEN_FILE") {
            Some(path) if env.get("PUHURI_APPROVER_PUHURI_TOKEN").is_none() => {
                Some(PathBuf::from(path))
            }
            Some(_) => None,
            None => match &file.puhuri.token_file {
                Some(path) if env.get("PUHURI_APPROVER_PUHURI_TOKEN").is_none() => {
                    if file.puhuri.token.is_some() {
                        return Err(at.invalid(
                            path.span(),
                            "puhuri.token_file",
                            "give either `puhuri.token` or `puhuri.token_file`, not both",
                        ));
                    }
                    Some(PathBuf::from(path.get_ref()))
                }
                _ => None,
            },
        };
        let token_from_file = match &token_file {
            None => None,
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) if text.trim().is_empty() => {
                    return Err(ConfigError::KeyFile {
                        key: "puhuri.token_file".into(),
                        message: format!("{}: the token file is empty", path.display()),
                    });
                }
                Ok(text) => Some(Secret::new(text.trim())),
                Err(error) => {
                    return Err(ConfigError::KeyFile {
                        key: "puhuri.token_file".into(),
                        message: format!("{}: cannot read: {error}", path.display()),
                    });
                }
            },
        };
        let token = match (env.get("PUHURI_APPROVER_PUHURI_TOKEN"), token_from_file) {
            (Some(token), _) => Secret::new(token),
            (None, Some(token)) => token,
            (None, None) => match &file.puhuri.token {
                Some(token) if token.get_ref().trim().is_empty() => {
                    return Err(at.invalid(token.span(), "puhuri.token", "the token is empty"));
                }
                Some(token) => Secret::new(token.get_ref().trim()),
                None => Secret::new(""),
            },
        };
        let timeout = millis(&at, &file.puhuri.timeout_ms, "puhuri.timeout_ms", 10_000)?;
        let max_in_flight = match &file.puhuri.max_in_flight {
            Some(n) if *n.get_ref() == 0 || *n.get_ref() > 1024 => {
                return Err(at.invalid(n.span(), "puhuri.max_in_flight", "expected 1 to 1024"));
            }
            Some(n) => *n.get_ref(),
            None => DEFAULT_MAX_IN_FLIGHT,
        };

        let (policy_file, policy_file_from) =
            match (env.get("PUHURI_APPROVER_POLICY"), &file.policy.file) {
                (Some(from_env), _) => (
                    Some(PathBuf::from(from_env)),
                    Some("env `PUHURI_APPROVER_POLICY`".to_owned()),
                ),
                (None, Some(named)) => {
                    let (line, column) =
                        puhuri_policy::toml_error::line_column(text, named.span().start);
                    (
                        Some(PathBuf::from(named.get_ref())),
                        Some(format!("{path}:{line}:{column}: `policy.file`")),
                    )
                }
                (None, None) => (None, None),
            };
        let policy_shadow = match env.get("PUHURI_APPROVER_POLICY_SHADOW") {
            Some(value) => match value.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" | "" => false,
                _ => {
                    return Err(ConfigError::Env {
                        var: "PUHURI_APPROVER_POLICY_SHADOW".into(),
                        message: format!("`{value}` is not `true` or `false`"),
                    });
                }
            },
            None => file.policy.shadow.unwrap_or(false),
        };
        let policy_customers_file = file.policy.customers_file.map(PathBuf::from);

        let receiver = receiver_config(&at, &file.receiver)?;
        let mut sources: Vec<SourceConfig> = Vec::new();
        let file_sources = if with_sources {
            file.sources.as_slice()
        } else {
            &[]
        };
        for source in file_sources {
            let source = source_config(&at, env, source)?;
            if sources.iter().any(|s| s.name == source.name) {
                return Err(at.invalid(
                    span_of_name(&file.sources, &source.name),
                    "sources.name",
                    &format!(
                        "`{}` is defined twice (two sources would share one path)",
                        source.name
                    ),
                ));
            }
            if let SourceAuth::PathSecret { secrets } = &source.auth {
                let reused = sources.iter().any(|other| match &other.auth {
                    SourceAuth::PathSecret { secrets: theirs } => secrets
                        .iter()
                        .any(|mine| theirs.iter().any(|t| t.same_as(mine))),
                    _ => false,
                });
                if reused {
                    return Err(at.invalid(
                        span_of_name(&file.sources, &source.name),
                        "sources.secrets",
                        &format!(
                            "source `{}` reuses another source's path secret",
                            source.name
                        ),
                    ));
                }
            }
            sources.push(source);
        }

        let events = match &file.events {
            None => None,
            Some(section) => {
                let raw = section.get_ref();
                let url = match &raw.url {
                    Some(url) => {
                        let text = url.get_ref().trim();
                        if !(text.starts_with("ws://") || text.starts_with("wss://")) {
                            return Err(at.invalid(
                                url.span(),
                                "events.url",
                                "expected a `ws://` or `wss://` URL",
                            ));
                        }
                        text.to_owned()
                    }
                    None => match puhuri_url.as_deref().and_then(events_url_of) {
                        Some(url) => url,
                        None => {
                            return Err(at.invalid(
                                section.span(),
                                "events.url",
                                "needed: no `puhuri.url` to derive `wss://<host>/rmqws-stomp` from",
                            ));
                        }
                    },
                };
                let heartbeat = millis(&at, &raw.heartbeat_ms, "events.heartbeat_ms", 10_000)?;
                let backoff_initial = millis(
                    &at,
                    &raw.backoff_initial_ms,
                    "events.backoff_initial_ms",
                    1_000,
                )?;
                let backoff_max =
                    millis(&at, &raw.backoff_max_ms, "events.backoff_max_ms", 120_000)?;
                if backoff_max < backoff_initial
                    && let Some(max) = &raw.backoff_max_ms
                {
                    return Err(at.invalid(
                        max.span(),
                        "events.backoff_max_ms",
                        "expected at least `events.backoff_initial_ms`",
                    ));
                }
                let offerings = raw
                    .offerings
                    .clone()
                    .unwrap_or_else(|| file.puhuri.offerings.clone());
                if offerings.is_empty() {
                    return Err(at.invalid(
                        section.span(),
                        "events.offerings",
                        "needed: the offerings whose order events to receive (or `puhuri.offerings`)",
                    ));
                }
                Some(EventsConfig {
                    url,
                    flow: raw.flow.unwrap_or(EventsFlow::Auto),
                    heartbeat,
                    backoff_initial,
                    backoff_max,
                    offerings,
                })
            }
        };

        Ok(Config {
            origin: path.to_owned(),
            listen,
            metrics_listen,
            review,
            queue,
            amqp: AmqpConfig {
                urls: amqp_urls.into_iter().map(Secret::new).collect(),
                prefix,
                publish_channels,
                confirm_timeout,
                declare: file.amqp.declare.unwrap_or(true),
            },
            worker: WorkerConfig {
                prefetch,
                max_attempts,
                retry_delays,
                retry_jitter,
                shutdown_deadline,
            },
            reconcile,
            team,
            usage,
            puhuri: PuhuriConfig {
                url: puhuri_url,
                token,
                token_file,
                api: file.puhuri.api.unwrap_or(ApiChoice::Auto),
                timeout,
                max_in_flight,
                offerings: file.puhuri.offerings,
            },
            policy_file,
            policy_file_from,
            policy_shadow,
            policy_customers_file,
            receiver,
            sources,
            events,
        })
    }

    /// Every setting `needs` asks for that this configuration does not give.
    pub fn missing(&self, needs: Needs) -> Vec<Missing> {
        let mut missing = Vec::new();
        // The event stream registers with Puhuri Core and logs in with the token.
        let needs = Needs {
            puhuri: needs.puhuri || (needs.sources && self.events.is_some()),
            ..needs
        };
        if needs.puhuri && self.puhuri.url.is_none() {
            missing.push(Missing {
                key: "puhuri.url",
                env: Some("PUHURI_APPROVER_PUHURI_URL"),
                what: "Puhuri Core's API base URL, ending in `/api/`",
            });
        }
        if needs.puhuri && self.puhuri.token.is_empty() {
            missing.push(Missing {
                key: "puhuri.token",
                env: Some("PUHURI_APPROVER_PUHURI_TOKEN"),
                what: "the API token of the provider's integration user",
            });
        }
        if needs.policy && self.policy_file.is_none() {
            missing.push(Missing {
                key: "policy.file",
                env: Some("PUHURI_APPROVER_POLICY"),
                what: "the policy file (a policy whose `[default]` holds decides nothing automatically)",
            });
        }
        if needs.sources && self.sources.is_empty() && self.events.is_none() {
            missing.push(Missing {
                key: "sources",
                env: None,
                what: "at least one `[[sources]]` table: the notification sources the receiver accepts",
            });
        }
        missing
    }

    /// Fails, naming every missing setting at once, unless `command` has what it needs.
    pub fn require(&self, command: &str, needs: Needs) -> Result<(), ConfigError> {
        let missing = self.missing(needs);
        if missing.is_empty() {
            return Ok(());
        }
        Err(ConfigError::Missing {
            origin: self.origin.clone(),
            command: command.to_owned(),
            missing,
        })
    }
}

/// `listen` and `metrics_listen`, from the environment or else the file.
fn addresses(
    at: &Locator<'_>,
    listen: &Option<Spanned<String>>,
    metrics_listen: &Option<Spanned<String>>,
    env: &dyn Environment,
) -> Result<(SocketAddr, Option<SocketAddr>), ConfigError> {
    let listen = match address(at, listen, "listen", "PUHURI_APPROVER_LISTEN", env)? {
        Some(addr) => addr,
        None => SocketAddr::from(([127, 0, 0, 1], 8080)),
    };
    let metrics_addr = address(
        at,
        metrics_listen,
        "metrics_listen",
        "PUHURI_APPROVER_METRICS_LISTEN",
        env,
    )?;
    if metrics_addr == Some(listen) && listen.port() != 0 {
        let message = format!("must differ from `listen` ({listen}): both are served at once");
        return Err(
            match (env.get("PUHURI_APPROVER_METRICS_LISTEN"), metrics_listen) {
                (None, Some(value)) => at.invalid(value.span(), "metrics_listen", &message),
                _ => ConfigError::Env {
                    var: "PUHURI_APPROVER_METRICS_LISTEN".into(),
                    message,
                },
            },
        );
    }
    Ok((listen, metrics_addr))
}

fn address(
    at: &Locator<'_>,
    value: &Option<Spanned<String>>,
    key: &str,
    var: &str,
    env: &dyn Environment,
) -> Result<Option<SocketAddr>, ConfigError> {
    let example = if key == "listen" {
        "expected an address such as `0.0.0.0:8080`"
    } else {
        "expected an address such as `0.0.0.0:9090`"
    };
    if let Some(text) = env.get(var) {
        return text.trim().parse().map(Some).map_err(|_| ConfigError::Env {
            var: var.to_owned(),
            message: example.into(),
        });
    }
    match value {
        Some(text) => text
            .get_ref()
            .parse()
            .map(Some)
            .map_err(|_| at.invalid(text.span(), key, example)),
        None => Ok(None),
    }
}

/// Where a running service answers `/readyz`, for `healthcheck`: `metrics_listen` when
/// set, else `listen` (file and environment as for the service; no other key is read).
/// An unspecified host (`0.0.0.0`, `::`) becomes the loopback address of its family.
pub fn probe_address(
    text: &str,
    path: &str,
    env: &dyn Environment,
) -> Result<SocketAddr, ConfigError> {
    let file: ProbeFile = toml::from_str(text).map_err(|error| syntax_error(text, path, &error))?;
    let at = Locator { text, path };
    let (listen, metrics_listen) = addresses(&at, &file.listen, &file.metrics_listen, env)?;
    let mut addr = metrics_listen.unwrap_or(listen);
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(addr)
}

/// The span of the last source named `name` (for duplicate-name errors).
fn span_of_name(sources: &[Spanned<FileSource>], name: &str) -> Range<usize> {
    sources
        .iter()
        .rev()
        .find(|s| s.get_ref().name.get_ref() == name)
        .map(|s| s.get_ref().name.span())
        .unwrap_or(0..0)
}

fn receiver_config(at: &Locator<'_>, file: &FileReceiver) -> Result<ReceiverConfig, ConfigError> {
    let defaults = ReceiverConfig::default();
    let trust_forwarded_for = match &file.trust_forwarded_for {
        Some(n) if *n.get_ref() > 10 => {
            return Err(at.invalid(
                n.span(),
                "receiver.trust_forwarded_for",
                "expected the number of trusted proxies, 0 to 10",
            ));
        }
        Some(n) => *n.get_ref(),
        None => defaults.trust_forwarded_for,
    };
    let request_timeout = millis(
        at,
        &file.request_timeout_ms,
        "receiver.request_timeout_ms",
        defaults.request_timeout.as_millis() as u64,
    )?;
    let replay_cache_entries = match &file.replay_cache_entries {
        Some(n) if !(1_000..=10_000_000).contains(n.get_ref()) => {
            return Err(at.invalid(
                n.span(),
                "receiver.replay_cache_entries",
                "expected 1000 to 10000000",
            ));
        }
        Some(n) => *n.get_ref(),
        None => defaults.replay_cache_entries,
    };
    Ok(ReceiverConfig {
        trust_forwarded_for,
        request_timeout,
        replay_cache_entries,
    })
}

/// The raw secret strings of a source, by precedence: `..._SECRETS`, `..._SECRETS_FILE`,
/// `secrets_file`, `secrets`.
fn raw_secrets(
    at: &Locator<'_>,
    env: &dyn Environment,
    source: &Spanned<FileSource>,
) -> Result<Vec<String>, ConfigError> {
    let span = source.span();
    let source = source.get_ref();
    let name = source.name.get_ref();
    let env_name = name.to_uppercase().replace('-', "_");
    let env_var = format!("PUHURI_APPROVER_SOURCE_{env_name}_SECRETS");
    let file_var = format!("{env_var}_FILE");
    if let Some(list) = env.get(&env_var) {
        return Ok(split_secrets(&list, ','));
    }
    if let Some(path) = env.get(&file_var) {
        let text = std::fs::read_to_string(&path).map_err(|error| ConfigError::Env {
            var: file_var.clone(),
            message: format!("cannot read `{path}`: {error}"),
        })?;
        return Ok(split_secrets(&text, '\n'));
    }
    if let (Some(file), Some(_)) = (&source.secrets_file, &source.secrets) {
        return Err(at.invalid(
            file.span(),
            "sources.secrets_file",
            &format!("source `{name}` sets both `secrets` and `secrets_file`; keep one"),
        ));
    }
    if let Some(file) = &source.secrets_file {
        let path = at.relative(file.get_ref());
        let text = std::fs::read_to_string(&path).map_err(|error| {
            at.invalid(
                file.span(),
                "sources.secrets_file",
                &format!("cannot read `{}`: {error}", path.display()),
            )
        })?;
        return Ok(split_secrets(&text, '\n'));
    }
    let listed = source
        .secrets
        .as_ref()
        .map(|s| s.get_ref().clone())
        .unwrap_or_default();
    if listed.is_empty() {
        return Err(at.invalid(
            span,
            "sources.secrets",
            &format!(
                "source `{name}` needs at least one secret (`secrets`, `secrets_file`, `{env_var}` or `{file_var}`)"
            ),
        ));
    }
    Ok(listed)
}

/// Secrets separated by `separator`; blank entries and `#` comment lines are skipped.
fn split_secrets(text: &str, separator: char) -> Vec<String> {
    text.split(separator)
        .map(str::trim)
        .filter(|s| !s.is_empty() && !s.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

fn parsed_secrets<T, E: fmt::Display>(
    at: &Locator<'_>,
    env: &dyn Environment,
    source: &Spanned<FileSource>,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Vec<T>, ConfigError> {
    let raw = raw_secrets(at, env, source)?;
    let file = source.get_ref();
    let name = file.name.get_ref();
    let span = file
        .secrets
        .as_ref()
        .map(|s| s.span())
        .or(file.secrets_file.as_ref().map(|s| s.span()))
        .unwrap_or(source.span());
    let mut secrets = Vec::new();
    for (index, value) in raw.iter().enumerate() {
        let secret = parse(value).map_err(|error| {
            at.invalid(
                span.clone(),
                "sources.secrets",
                &format!("source `{name}`, secret #{}: {error}", index + 1),
            )
        })?;
        secrets.push(secret);
    }
    Ok(secrets)
}

fn source_config(
    at: &Locator<'_>,
    env: &dyn Environment,
    spanned: &Spanned<FileSource>,
) -> Result<SourceConfig, ConfigError> {
    let source = spanned.get_ref();
    let name = source.name.get_ref();
    if !is_valid_source_name(name) {
        return Err(at.invalid(
            source.name.span(),
            "sources.name",
            "expected 1 to 64 lowercase letters, digits or `-`",
        ));
    }
    let scheme = source.auth.get_ref().as_str();
    let insecure = source.insecure_no_auth.as_ref().map(|v| *v.get_ref());
    if let (Some(true), false) = (insecure, scheme == "none") {
        return Err(at.invalid(
            source
                .insecure_no_auth
                .as_ref()
                .map(|v| v.span())
                .unwrap_or(0..0),
            "sources.insecure_no_auth",
            &format!("source `{name}`: only meaningful with `auth = \"none\"`"),
        ));
    }
    if let (Some(t), false) = (&source.tolerance_secs, scheme == "standard-webhooks") {
        return Err(at.invalid(
            t.span(),
            "sources.tolerance_secs",
            &format!("source `{name}`: only `standard-webhooks` carries a timestamp"),
        ));
    }
    let auth = match scheme {
        "standard-webhooks" => {
            let secrets = parsed_secrets(at, env, spanned, WebhookSecret::parse)?;
            let tolerance_secs = match &source.tolerance_secs {
                Some(t) if !(1..=3600).contains(t.get_ref()) => {
                    return Err(at.invalid(
                        t.span(),
                        "sources.tolerance_secs",
                        "expected 1 to 3600",
                    ));
                }
                Some(t) => *t.get_ref(),
                None => 300,
            };
            SourceAuth::StandardWebhooks {
                secrets,
                tolerance_secs,
            }
        }
        "github" => SourceAuth::Github {
            secrets: parsed_secrets(at, env, spanned, GithubSecret::parse)?,
        },
        "path-secret" => SourceAuth::PathSecret {
            secrets: parsed_secrets(at, env, spanned, PathSecret::parse)?,
        },
        "none" => {
            if insecure != Some(true) {
                return Err(at.invalid(
                    source.auth.span(),
                    "sources.auth",
                    &format!(
                        "source `{name}` has no authentication; declare `insecure_no_auth = true` if that is intended"
                    ),
                ));
            }
            if source.secrets.is_some() || source.secrets_file.is_some() {
                return Err(at.invalid(
                    source.auth.span(),
                    "sources.secrets",
                    &format!("source `{name}` has `auth = \"none\"` but lists secrets"),
                ));
            }
            SourceAuth::None
        }
        _ => {
            // The value is not repeated: a secret pasted at the wrong key would be.
            return Err(at.invalid(
                source.auth.span(),
                "sources.auth",
                "unknown scheme; expected `standard-webhooks`, `github`, `path-secret` or `none`",
            ));
        }
    };

    let mut allowed_networks = Vec::new();
    if let Some(list) = &source.allowed_networks {
        if list.get_ref().is_empty() {
            return Err(at.invalid(
                list.span(),
                "sources.allowed_networks",
                "an empty list would refuse everything; omit the key to allow any network",
            ));
        }
        for (index, entry) in list.get_ref().iter().enumerate() {
            allowed_networks.push(parse_network(entry).ok_or_else(|| {
                at.invalid(
                    list.span(),
                    "sources.allowed_networks",
                    &format!(
                        "entry #{} is not an address or a CIDR network such as `192.0.2.0/24`",
                        index + 1
                    ),
                )
            })?);
        }
    }

    let per_sec = match &source.rate_limit_per_sec {
        Some(n) if !(1..=100_000).contains(n.get_ref()) => {
            return Err(at.invalid(
                n.span(),
                "sources.rate_limit_per_sec",
                "expected 1 to 100000",
            ));
        }
        Some(n) => *n.get_ref(),
        None => 50,
    };
    let burst = match &source.rate_limit_burst {
        Some(n) if !(1..=1_000_000).contains(n.get_ref()) => {
            return Err(at.invalid(
                n.span(),
                "sources.rate_limit_burst",
                "expected 1 to 1000000",
            ));
        }
        Some(n) => *n.get_ref(),
        None => per_sec.saturating_mul(2),
    };

    let minimum_window = match &auth {
        SourceAuth::StandardWebhooks { tolerance_secs, .. } => 2 * *tolerance_secs as u64,
        _ => 60,
    };
    let replay_window_secs = match &source.replay_window_secs {
        Some(n) if *n.get_ref() < minimum_window || *n.get_ref() > 7 * 86_400 => {
            return Err(at.invalid(
                n.span(),
                "sources.replay_window_secs",
                &format!("expected {minimum_window} (twice the timestamp tolerance) to 604800"),
            ));
        }
        Some(n) => *n.get_ref(),
        None => minimum_window.max(3600),
    };

    Ok(SourceConfig {
        name: name.clone(),
        format: source.format,
        auth,
        allowed_networks,
        rate_limit: RateLimit { per_sec, burst },
        replay_window: Duration::from_secs(replay_window_secs),
    })
}

/// An address (`192.0.2.7`, `2001:db8::1`) or a CIDR network (`192.0.2.0/24`).
/// `[review]`, checked: an address that differs from the others, a way to authenticate
/// whenever the page is served, proxies for a trusted header, operators' token hashes.
fn review_config(
    at: &Locator<'_>,
    file: &FileReview,
    others: [Option<SocketAddr>; 2],
    env: &dyn Environment,
) -> Result<ReviewConfig, ConfigError> {
    let from_env = env.get("PUHURI_APPROVER_REVIEW_LISTEN");
    let listen = match (&from_env, &file.listen) {
        (Some(value), _) => {
            Some(
                value
                    .trim()
                    .parse::<SocketAddr>()
                    .map_err(|_| ConfigError::Env {
                        var: "PUHURI_APPROVER_REVIEW_LISTEN".into(),
                        message: "expected an address and port such as `127.0.0.1:8070`".into(),
                    })?,
            )
        }
        (None, None) => None,
        (None, Some(value)) => {
            let addr: SocketAddr = value.get_ref().trim().parse().map_err(|_| {
                at.invalid(
                    value.span(),
                    "review.listen",
                    "expected an address and port such as `127.0.0.1:8090`",
                )
            })?;
            if others.contains(&Some(addr)) && addr.port() != 0 {
                return Err(at.invalid(
                    value.span(),
                    "review.listen",
                    "must differ from `listen` and `metrics_listen`: the review page has a listener of its own",
                ));
            }
            Some(addr)
        }
    };
    let session = match &file.session_secs {
        Some(secs) if *secs.get_ref() < 60 || *secs.get_ref() > 7 * 86_400 => {
            return Err(at.invalid(
                secs.span(),
                "review.session_secs",
                "expected 60 to 604800 seconds (a week)",
            ));
        }
        Some(secs) => Duration::from_secs(*secs.get_ref()),
        None => Duration::from_secs(8 * 3600),
    };
    let refresh = match &file.refresh_secs {
        Some(secs) if *secs.get_ref() > 86_400 => {
            return Err(at.invalid(
                secs.span(),
                "review.refresh_secs",
                "expected 0 (only when the queue is listed) to 86400 seconds (a day)",
            ));
        }
        Some(secs) if *secs.get_ref() == 0 => None,
        Some(secs) => Some(Duration::from_secs(*secs.get_ref())),
        None => Some(Duration::from_secs(300)),
    };
    let trusted_header = match &file.trusted_header {
        None => None,
        Some(name) => {
            let valid = hyper::http::HeaderName::from_bytes(name.get_ref().trim().as_bytes()).ok();
            match valid {
                Some(header) => Some(header.as_str().to_owned()),
                None => {
                    return Err(at.invalid(
                        name.span(),
                        "review.trusted_header",
                        "not an HTTP header name",
                    ));
                }
            }
        }
    };
    let mut trusted_proxies = Vec::new();
    if let Some(list) = &file.trusted_proxies {
        for (index, entry) in list.get_ref().iter().enumerate() {
            trusted_proxies.push(parse_network(entry).ok_or_else(|| {
                at.invalid(
                    list.span(),
                    "review.trusted_proxies",
                    &format!(
                        "entry #{} is not an address or a CIDR network such as `10.0.0.0/8`",
                        index + 1
                    ),
                )
            })?);
        }
    }
    if let Some(header) = &file.trusted_header
        && trusted_proxies.is_empty()
    {
        return Err(at.invalid(
            header.span(),
            "review.trusted_header",
            "needs `review.trusted_proxies`: the header is believed only from those addresses",
        ));
    }
    let mut operators: Vec<ReviewOperator> = Vec::new();
    for operator in &file.operators {
        let name = operator.get_ref().name.trim();
        if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
            return Err(at.invalid(
                operator.span(),
                "review.operators.name",
                "expected 1 to 200 characters without control characters",
            ));
        }
        if operators.iter().any(|o| o.name == name) {
            return Err(at.invalid(
                operator.span(),
                "review.operators.name",
                &format!("operator `{name}` is listed twice"),
            ));
        }
        let hex = operator.get_ref().token_sha256.trim();
        let mut digest = [0u8; 32];
        let parsed = hex.len() == 64
            && hex.is_ascii()
            && digest.iter_mut().enumerate().all(|(i, byte)| {
                u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16)
                    .map(|b| *byte = b)
                    .is_ok()
            });
        if !parsed {
            return Err(at.invalid(
                operator.span(),
                "review.operators.token_sha256",
                "expected the token's SHA-256 as 64 hexadecimal digits (`secret generate --kind review-token` prints it)",
            ));
        }
        operators.push(ReviewOperator {
            name: name.to_owned(),
            token_sha256: digest,
        });
    }
    if listen.is_some() && operators.is_empty() && trusted_header.is_none() {
        let message =
            "no operator could log in: add `[[review.operators]]` or `review.trusted_header`";
        return Err(match &file.listen {
            Some(value) => at.invalid(value.span(), "review.listen", message),
            None => ConfigError::Env {
                var: "PUHURI_APPROVER_REVIEW_LISTEN".into(),
                message: message.into(),
            },
        });
    }
    Ok(ReviewConfig {
        listen,
        session_key_file: file.session_key_file.as_deref().map(|p| at.relative(p)),
        session,
        secure_cookie: file.secure_cookie.unwrap_or(true),
        trusted_header,
        trusted_proxies,
        operators,
        refresh,
    })
}

pub fn parse_network(value: &str) -> Option<IpNet> {
    let value = value.trim();
    if let Ok(net) = value.parse::<IpNet>() {
        return Some(net.trunc());
    }
    value.parse::<std::net::IpAddr>().ok().map(IpNet::from)
}

struct Locator<'a> {
    text: &'a str,
    path: &'a str,
}

impl Locator<'_> {
    /// A path from the file, relative to the file's folder.
    fn relative(&self, value: &str) -> PathBuf {
        let value = Path::new(value);
        if value.is_absolute() {
            return value.to_owned();
        }
        match Path::new(self.path).parent() {
            Some(dir) => dir.join(value),
            None => value.to_owned(),
        }
    }

    fn invalid(&self, span: Range<usize>, key: &str, message: &str) -> ConfigError {
        let (line, column) = puhuri_policy::toml_error::line_column(self.text, span.start);
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line,
            column,
            key: key.to_owned(),
            message: message.to_owned(),
        }
    }
}

fn millis(
    at: &Locator<'_>,
    value: &Option<Spanned<u64>>,
    key: &str,
    default: u64,
) -> Result<Duration, ConfigError> {
    match value {
        Some(ms) if *ms.get_ref() == 0 || *ms.get_ref() > 600_000 => {
            Err(at.invalid(ms.span(), key, "expected 1 to 600000 milliseconds"))
        }
        Some(ms) => Ok(Duration::from_millis(*ms.get_ref())),
        None => Ok(Duration::from_millis(default)),
    }
}

/// `wss://<host>/rmqws-stomp` (or `ws://` for an `http://` API) from Puhuri Core's API URL.
pub fn events_url_of(api: &str) -> Option<String> {
    let (scheme, rest) = api.split_once("://")?;
    let host = rest.split('/').next().filter(|h| !h.is_empty())?;
    let scheme = match scheme {
        "https" => "wss",
        "http" => "ws",
        _ => return None,
    };
    Some(format!("{scheme}://{host}/rmqws-stomp"))
}

/// Puhuri Core's base URL must be http(s) and end with `/api/`; a missing final slash is added.
fn normalize_api_url(url: &str) -> Result<String, &'static str> {
    let url = url.trim();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("expected an `http://` or `https://` URL ending in `/api/`");
    }
    let url = if url.ends_with('/') {
        url.to_owned()
    } else {
        format!("{url}/")
    };
    if !url.ends_with("/api/") {
        return Err("expected the API base URL, ending in `/api/`");
    }
    Ok(url)
}

fn is_amqp_url(url: &str) -> bool {
    url.starts_with("amqp://") || url.starts_with("amqps://")
}

/// The RabbitMQ nodes: `PUHURI_APPROVER_AMQP_URL` (one) or `PUHURI_APPROVER_AMQP_URLS`
/// (comma-separated), else `amqp.url` or `amqp.urls`, else the default. The flag tells
/// whether any was given (which selects RabbitMQ when `queue.backend` is not set). No
/// message quotes a URL: it may hold a password.
fn amqp_urls(
    at: &Locator<'_>,
    file: &FileAmqp,
    env: &dyn Environment,
) -> Result<(Vec<String>, bool), ConfigError> {
    match (
        env.get("PUHURI_APPROVER_AMQP_URL"),
        env.get("PUHURI_APPROVER_AMQP_URLS"),
    ) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Env {
                var: "PUHURI_APPROVER_AMQP_URLS".into(),
                message: "`PUHURI_APPROVER_AMQP_URL` is set too; set one of them".into(),
            });
        }
        (Some(url), None) => return Ok((vec![url], true)),
        (None, Some(list)) => {
            let urls: Vec<String> = list
                .split(',')
                .map(str::trim)
                .filter(|url| !url.is_empty())
                .map(str::to_owned)
                .collect();
            if urls.is_empty() {
                return Err(ConfigError::Env {
                    var: "PUHURI_APPROVER_AMQP_URLS".into(),
                    message: "expected one or more comma-separated `amqp://` or `amqps://` URLs"
                        .into(),
                });
            }
            if let Some(index) = urls.iter().position(|url| !is_amqp_url(url)) {
                return Err(ConfigError::Env {
                    var: "PUHURI_APPROVER_AMQP_URLS".into(),
                    message: format!(
                        "URL {} of {} is not an `amqp://` or `amqps://` URL",
                        index + 1,
                        urls.len()
                    ),
                });
            }
            return Ok((urls, true));
        }
        (None, None) => {}
    }
    match (&file.url, &file.urls) {
        (Some(_), Some(urls)) => Err(at.invalid(
            urls.span(),
            "amqp.urls",
            "`amqp.url` is set too; list every node in `amqp.urls` and remove `amqp.url`",
        )),
        (Some(url), None) => {
            if !is_amqp_url(url.get_ref()) {
                return Err(at.invalid(
                    url.span(),
                    "amqp.url",
                    "expected an `amqp://` or `amqps://` URL",
                ));
            }
            Ok((vec![url.get_ref().clone()], true))
        }
        (None, Some(urls)) => {
            if urls.get_ref().is_empty() {
                return Err(at.invalid(
                    urls.span(),
                    "amqp.urls",
                    "expected at least one `amqp://` or `amqps://` URL",
                ));
            }
            let mut list = Vec::with_capacity(urls.get_ref().len());
            for url in urls.get_ref() {
                if !is_amqp_url(url.get_ref()) {
                    return Err(at.invalid(
                        url.span(),
                        "amqp.urls",
                        "expected an `amqp://` or `amqps://` URL",
                    ));
                }
                list.push(url.get_ref().clone());
            }
            Ok((list, true))
        }
        (None, None) => Ok((vec![DEFAULT_AMQP_URL.to_owned()], false)),
    }
}

/// A URL without its credentials, for messages: `amqp://user:pass@host/v` → `amqp://host/v`.
pub fn redacted_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.rsplit_once('@').map(|(_, host)| host).unwrap_or(rest);
            format!("{scheme}://{rest}")
        }
        None => "(unparsable URL)".into(),
    }
}

fn is_valid_prefix(prefix: &str) -> bool {
    (1..=100).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Source names appear in URL paths and environment variable names.
pub fn is_valid_source_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", &HashMap::new())
    }

    const OFFERING: &str = "2f1c0d9e6a2b4c4e9d1f3a5b7c9e1f20";

    #[test]
    fn the_team_watchers_memory_is_read_in_kib_and_bounded() {
        let base = "[puhuri]\nurl = \"https://puhuri.example.org/api/\"\ntoken = \"t\"\n\n[team]\n";
        let config = parse(base).expect("valid");
        assert_eq!(config.team.watch_memory_bytes, 16 * 1024 * 1024);
        let config = parse(&format!("{base}watch_memory_kib = 2048\n")).expect("valid");
        assert_eq!(config.team.watch_memory_bytes, 2048 * 1024);
        let error = parse(&format!("{base}watch_memory_kib = 1\n")).expect_err("too small");
        assert_eq!(
            error.to_string(),
            "test.toml:6:20: `team.watch_memory_kib`: expected 64 to 4194304 (KiB)"
        );
    }

    #[test]
    fn the_event_stream_defaults_from_puhuri() {
        let config = parse(&format!(
            "[puhuri]\nurl = \"https://puhuri.example.org/api/\"\ntoken = \"t\"\nofferings = [\"{OFFERING}\"]\n\n[events]\n"
        ))
        .expect("valid");
        let events = config.events.clone().expect("events");
        assert_eq!(events.url, "wss://puhuri.example.org/rmqws-stomp");
        assert_eq!(events.flow, EventsFlow::Auto);
        assert_eq!(events.heartbeat, Duration::from_secs(10));
        assert_eq!(events.backoff_initial, Duration::from_secs(1));
        assert_eq!(events.backoff_max, Duration::from_secs(120));
        assert_eq!(events.offerings, [OFFERING]);
        // `receive` needs no `[[sources]]` with the stream, but Puhuri Core's token.
        assert!(
            config
                .missing(Needs {
                    sources: true,
                    ..Needs::default()
                })
                .is_empty()
        );
    }

    #[test]
    fn event_stream_errors_name_file_line_and_key() {
        let cases = [
            (
                format!("[events]\nurl = \"http://x/\"\nofferings = [\"{OFFERING}\"]\n"),
                "test.toml:2:7: `events.url`",
            ),
            (
                format!("[events]\nofferings = [\"{OFFERING}\"]\n"),
                "`events.url`",
            ),
            (
                "[puhuri]\nurl = \"https://p.example/api/\"\n\n[events]\n".to_owned(),
                "`events.offerings`",
            ),
            (
                format!("[events]\nurl = \"wss://x/\"\noffering = [\"{OFFERING}\"]\n"),
                "offering",
            ),
            (
                format!(
                    "[events]\nurl = \"wss://x/\"\nofferings = [\"{OFFERING}\"]\nbackoff_initial_ms = 5000\nbackoff_max_ms = 1000\n"
                ),
                "test.toml:5:18: `events.backoff_max_ms`",
            ),
            (
                format!(
                    "[events]\nurl = \"wss://x/\"\nofferings = [\"{OFFERING}\"]\nflow = \"sometimes\"\n"
                ),
                "flow",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(&text).map(|_| ()).expect_err(&text);
            assert!(error.to_string().contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn redacts_credentials_from_urls() {
        assert_eq!(redacted_url("amqp://u:p@h:5672/%2f"), "amqp://h:5672/%2f");
        assert_eq!(redacted_url("amqps://h/v"), "amqps://h/v");
        assert_eq!(redacted_url("garbage"), "(unparsable URL)");
    }

    #[test]
    fn defaults_need_no_file() {
        let config = parse("").expect("defaults");
        assert_eq!(
            config.queue,
            QueueChoice::Embedded {
                data_dir: PathBuf::from(DEFAULT_DATA_DIR),
                lease: Duration::from_secs(60)
            }
        );
        let config = parse("[amqp]\nurl = \"amqp://h/v\"\n").expect("rabbit");
        assert_eq!(config.queue, QueueChoice::RabbitMq);
        assert_eq!(config.amqp.prefix, "puhuri-approver");
        assert_eq!(config.worker.prefetch, 512);
        assert_eq!(config.puhuri.api, ApiChoice::Auto);
        assert_eq!(config.puhuri.max_in_flight, DEFAULT_MAX_IN_FLIGHT);
    }

    #[test]
    fn takes_one_amqp_url_or_a_list_of_nodes() {
        let config = parse("[amqp]\nurl = \"amqp://u:p@h:5672/v\"\n").expect("one URL");
        let urls: Vec<&str> = config.amqp.urls.iter().map(|u| u.expose()).collect();
        assert_eq!(urls, ["amqp://u:p@h:5672/v"]);
        let config =
            parse("[amqp]\nurls = [\n  \"amqp://u:p@a:5701/v\",\n  \"amqp://u:p@b:5702/v\",\n]\n")
                .expect("a list");
        assert_eq!(config.queue, QueueChoice::RabbitMq);
        let urls: Vec<&str> = config.amqp.urls.iter().map(|u| u.expose()).collect();
        assert_eq!(urls, ["amqp://u:p@a:5701/v", "amqp://u:p@b:5702/v"]);
        assert!(!format!("{config:?}").contains("u:p@"));

        let error =
            parse("[amqp]\nurl = \"amqp://u:s3cret@a/v\"\nurls = [\"amqp://u:s3cret@b/v\"]\n")
                .expect_err("both");
        let message = error.to_string();
        assert!(
            message.starts_with("test.toml:3:8: `amqp.urls`: `amqp.url` is set too"),
            "{message}"
        );
        assert!(!message.contains("s3cret"), "{message}");
        let error = parse("[amqp]\nurls = []\n").expect_err("empty");
        assert!(
            error.to_string().starts_with("test.toml:2:8: `amqp.urls`"),
            "{error}"
        );
        let error = parse("[amqp]\nurls = [\"amqp://a/v\",\n  \"http://s3cret@b/v\"]\n")
            .expect_err("not amqp");
        let message = error.to_string();
        assert!(
            message.starts_with("test.toml:3:3: `amqp.urls`: expected an `amqp://`"),
            "{message}"
        );
        assert!(!message.contains("s3cret"), "{message}");

        let env = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let config = Config::parse(
            "[amqp]\nurl = \"amqp://file/v\"\n",
            "t.toml",
            &env(&[(
                "PUHURI_APPROVER_AMQP_URLS",
                "amqp://u:p@a:5701/v, amqp://u:p@b:5702/v,",
            )]),
        )
        .expect("environment list");
        let urls: Vec<&str> = config.amqp.urls.iter().map(|u| u.expose()).collect();
        assert_eq!(urls, ["amqp://u:p@a:5701/v", "amqp://u:p@b:5702/v"]);
        let error = Config::parse(
            "",
            "t.toml",
            &env(&[
                ("PUHURI_APPROVER_AMQP_URLS", "amqp://a/v"),
                ("PUHURI_APPROVER_AMQP_URL", "amqp://b/v"),
            ]),
        )
        .expect_err("both variables");
        assert!(error.to_string().contains("set one of them"), "{error}");
        let error = Config::parse(
            "",
            "t.toml",
            &env(&[("PUHURI_APPROVER_AMQP_URLS", "amqp://a/v,s3cret@b")]),
        )
        .expect_err("bad entry");
        let message = error.to_string();
        assert!(message.contains("URL 2 of 2"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
    }

    #[test]
    fn names_the_line_and_key_of_a_bad_value() {
        let error =
            parse("listen = \"127.0.0.1:0\"\n\n[worker]\nprefetch = 0\n").expect_err("invalid");
        assert_eq!(
            error.to_string(),
            "test.toml:4:12: `worker.prefetch`: expected at least 1"
        );
    }

    #[test]
    fn names_an_unknown_key() {
        // The unknown key is placed, not quoted (it might be a pasted secret).
        let error = parse("[amqp]\nurll = \"x\"\n").expect_err("unknown key");
        let text = error.to_string();
        assert!(
            text.starts_with("test.toml:2:1: `amqp`: unknown field, expected one of `url`, "),
            "{text}"
        );
        assert!(!text.contains("urll"), "{text}");
    }

    #[test]
    fn every_key_of_the_file_is_known() {
        // serde lists a table's fields after an unknown one: each must be in `KEYS`, or a
        // syntax error under it would not be named.
        for table in [
            "",
            "[amqp]\n",
            "[queue]\n",
            "[worker]\n",
            "[reconcile]\n",
            "[team]\n",
            "[usage]\n",
            "[puhuri]\n",
            "[policy]\n",
            "[receiver]\n",
            "[[sources]]\n",
        ] {
            let error = parse(&format!("{table}zzz = 1\n")).expect_err("unknown key");
            let ConfigError::Syntax { message, .. } = &error else {
                panic!("{error}");
            };
            let (_, expected) = message.split_once("expected").expect("a list");
            let names: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            assert!(!names.is_empty(), "{message}");
            for name in names {
                assert!(KEYS.contains(&name), "`{name}` ({table:?}) is not in KEYS");
            }
        }
    }

    #[test]
    fn syntax_errors_place_the_key_without_quoting_the_line() {
        let cases = [
            (
                "[puhuri]\ntoken = \"t0ken-value\n",
                "test.toml:2:21: `puhuri.token`: ",
            ),
            (
                "[[sources]]\nsecrets = \"whsec_value\"\n",
                "test.toml:2:11: `sources.secrets`: invalid type: string, expected a sequence",
            ),
            (
                "[[sources]]\nsecrets = [\"whsec_value\" \"whsec_other\"]\n",
                "test.toml:2:26: `sources.secrets`: missing comma",
            ),
            (
                "[puhuri]\ntoken = \"t0ken\"\ntoken = \"t0ken\"\n",
                "test.toml:3:1: `puhuri.token`: duplicate key",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(text).expect_err("malformed");
            let message = error.to_string();
            assert!(message.starts_with(expected), "{message}");
            for secret in ["t0ken", "whsec_value", "whsec_other"] {
                assert!(!message.contains(secret), "{message}");
            }
            let probe = probe_address(text, "test.toml", &HashMap::new());
            if let Err(error) = probe {
                assert!(error.to_string().starts_with(expected), "{error}");
            }
        }
    }

    #[test]
    fn refuses_a_short_secret_without_printing_it() {
        let text = "[[sources]]\nname = \"relay\"\nformat = \"allocation\"\nauth = \"standard-webhooks\"\nsecrets = [\"whsec_c2hvcnRzZWNyZXQ=\"]\n";
        let error = parse(text).expect_err("short secret");
        let message = error.to_string();
        assert!(
            message.starts_with("test.toml:5:11: `sources.secrets`"),
            "{message}"
        );
        assert!(!message.contains("c2hvcnRzZWNyZXQ"), "{message}");
    }

    #[test]
    fn environment_overrides_secrets_and_urls() {
        let text = "[[sources]]\nname = \"my-relay\"\nformat = \"allocation\"\nauth = \"standard-webhooks\"\n";
        let env: HashMap<String, String> = [
            (
                "PUHURI_APPROVER_SOURCE_MY_RELAY_SECRETS".to_owned(),
                SECRET.to_owned(),
            ),
            ("PUHURI_APPROVER_PUHURI_TOKEN".to_owned(), "tok".to_owned()),
            (
                "PUHURI_APPROVER_AMQP_URL".to_owned(),
                "amqp://u:p@h:5672/v".to_owned(),
            ),
        ]
        .into_iter()
        .collect();
        let config = Config::parse(text, "t.toml", &env).expect("valid");
        assert_eq!(config.puhuri.token.expose(), "tok");
        assert_eq!(config.amqp.urls.len(), 1);
        assert_eq!(config.amqp.urls[0].expose(), "amqp://u:p@h:5672/v");
        assert!(!format!("{config:?}").contains("u:p@"));
        match &config.sources[0].auth {
            SourceAuth::StandardWebhooks { secrets, .. } => assert_eq!(secrets.len(), 1),
            other => panic!("unexpected scheme {other:?}"),
        }
    }

    fn source(extra: &str) -> String {
        format!("[[sources]]\nname = \"hook\"\nformat = \"waldur-hook\"\n{extra}\n")
    }

    #[test]
    fn fails_closed_on_sources_without_authentication() {
        let error = parse(&source("auth = \"none\"")).expect_err("no auth");
        assert!(
            error.to_string().contains("insecure_no_auth = true"),
            "{error}"
        );
        let config = parse(&source("auth = \"none\"\ninsecure_no_auth = true")).expect("declared");
        assert!(matches!(config.sources[0].auth, SourceAuth::None));
        let error = parse(&source(
            "auth = \"path-secret\"\ninsecure_no_auth = true\nsecrets = [\"p4th-s3cret_0123456789abcdefghijklmnop\"]",
        ))
        .expect_err("contradiction");
        assert!(error.to_string().contains("insecure_no_auth"), "{error}");
        let error = parse(&source("auth = \"github\"")).expect_err("no secret");
        assert!(
            error.to_string().contains("needs at least one secret"),
            "{error}"
        );
        let error = parse(&source("auth = \"github\"\nsecrets = [\"\"]")).expect_err("empty");
        assert!(error.to_string().contains("empty"), "{error}");
        let error = parse(&source("auth = \"github\"\nsecrets = [\"short\"]")).expect_err("short");
        assert!(
            error
                .to_string()
                .starts_with("test.toml:5:11: `sources.secrets`"),
            "{error}"
        );
        assert!(!error.to_string().contains("short\""), "{error}");
        let error = parse(&source("auth = \"hmac\"\nsecrets = [\"x\"]")).expect_err("unknown");
        assert!(
            error.to_string().contains("unknown scheme; expected"),
            "{error}"
        );
    }

    #[test]
    fn refuses_overlapping_sources() {
        let path = "auth = \"path-secret\"\nsecrets = [\"p4th-s3cret_0123456789abcdefghijklmnop\"]";
        let twice = format!("{}{}", source(path), source(path));
        let error = parse(&twice).expect_err("same name");
        assert!(error.to_string().contains("defined twice"), "{error}");
        let other = source(path).replace("\"hook\"", "\"other\"");
        let error = parse(&format!("{}{other}", source(path))).expect_err("same secret");
        assert!(
            error
                .to_string()
                .contains("reuses another source's path secret"),
            "{error}"
        );
    }

    #[test]
    fn reads_networks_limits_and_windows() {
        let config = parse(&format!(
            "[receiver]\ntrust_forwarded_for = 1\n\n{}",
            source(
                "auth = \"none\"\ninsecure_no_auth = true\nallowed_networks = [\"192.0.2.0/24\", \"2001:db8::1\"]\nrate_limit_per_sec = 5"
            )
        ))
        .expect("valid");
        assert_eq!(config.receiver.trust_forwarded_for, 1);
        let source0 = &config.sources[0];
        assert_eq!(source0.allowed_networks.len(), 2);
        assert!(
            source0.allowed_networks[0]
                .contains(&"192.0.2.77".parse::<std::net::IpAddr>().expect("ip"))
        );
        assert_eq!(
            source0.rate_limit,
            RateLimit {
                per_sec: 5,
                burst: 10
            }
        );
        assert_eq!(source0.replay_window, Duration::from_secs(3600));
        let error = parse(&source(
            "auth = \"none\"\ninsecure_no_auth = true\nallowed_networks = [\"192.0.2.0/33\"]",
        ))
        .expect_err("bad cidr");
        assert!(
            error.to_string().contains("entry #1 is not an address"),
            "{error}"
        );
        let error = parse(&format!(
            "{}\nreplay_window_secs = 100\n",
            "[[sources]]\nname = \"relay\"\nformat = \"allocation\"\nauth = \"standard-webhooks\"\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]"
        ))
        .expect_err("window shorter than the tolerance");
        assert!(
            error.to_string().contains("twice the timestamp tolerance"),
            "{error}"
        );
    }

    #[test]
    fn reads_secrets_from_files() {
        let dir = std::env::temp_dir().join(format!("pa-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("secrets");
        std::fs::write(&file, format!("# rotated 2026-01\n{SECRET}\n\n")).expect("write");
        let text = "[[sources]]\nname = \"relay\"\nformat = \"allocation\"\n".to_owned()
            + "auth = \"standard-webhooks\"\nsecrets_file = \"secrets\"\n";
        let config_path = dir.join("config.toml");
        let config = Config::parse(&text, &config_path.display().to_string(), &HashMap::new())
            .expect("relative to the config file");
        match &config.sources[0].auth {
            SourceAuth::StandardWebhooks { secrets, .. } => assert_eq!(secrets.len(), 1),
            other => panic!("unexpected scheme {other:?}"),
        }
        let env: HashMap<String, String> = [(
            "PUHURI_APPROVER_SOURCE_RELAY_SECRETS_FILE".to_owned(),
            dir.join("missing").display().to_string(),
        )]
        .into_iter()
        .collect();
        let error = Config::parse(&text, "t.toml", &env).expect_err("missing file");
        assert!(
            error
                .to_string()
                .contains("PUHURI_APPROVER_SOURCE_RELAY_SECRETS_FILE"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn names_every_missing_setting_at_once() {
        let config = parse("").expect("defaults");
        assert_eq!(config.puhuri.url, None, "no default Puhuri Core");
        let serve = Needs {
            puhuri: true,
            policy: true,
            sources: true,
        };
        let keys: Vec<&str> = config.missing(serve).iter().map(|m| m.key).collect();
        assert_eq!(
            keys,
            ["puhuri.url", "puhuri.token", "policy.file", "sources"]
        );
        let error = config.require("serve", serve).expect_err("missing");
        let text = error.to_string();
        assert!(text.starts_with("test.toml: `serve` needs"), "{text}");
        assert!(text.contains("`PUHURI_APPROVER_PUHURI_TOKEN`"), "{text}");
        let error = Config::from_env(&HashMap::new())
            .expect("defaults")
            .require("work", serve)
            .expect_err("missing");
        assert!(
            error.to_string().starts_with("no configuration file"),
            "{error}"
        );
        let config = parse(
            "[puhuri]\nurl = \"https://puhuri.example.org/api\"\ntoken = \"t\"\n[policy]\nfile = \"p.toml\"\n",
        )
        .expect("valid");
        assert_eq!(
            config.puhuri.url.as_deref(),
            Some("https://puhuri.example.org/api/")
        );
        assert_eq!(
            config.missing(Needs {
                puhuri: true,
                policy: true,
                sources: false
            }),
            vec![]
        );
        assert!(
            config
                .require(
                    "receive",
                    Needs {
                        sources: true,
                        ..Needs::default()
                    }
                )
                .is_err()
        );
    }

    #[test]
    fn probes_metrics_listen_else_listen_on_loopback() {
        let none = HashMap::new();
        let probe = |text: &str| probe_address(text, "t.toml", &none);
        assert_eq!(
            probe("").expect("default"),
            "127.0.0.1:8080".parse().expect("addr")
        );
        assert_eq!(
            probe("listen = \"0.0.0.0:8081\"\n[puhuri]\nwhatever = 1\n").expect("listen"),
            "127.0.0.1:8081".parse().expect("addr")
        );
        assert_eq!(
            probe("listen = \"0.0.0.0:8081\"\nmetrics_listen = \"[::]:9090\"\n").expect("metrics"),
            "[::1]:9090".parse().expect("addr")
        );
        let env: HashMap<String, String> = [(
            "PUHURI_APPROVER_METRICS_LISTEN".to_owned(),
            "10.0.0.5:9191".to_owned(),
        )]
        .into_iter()
        .collect();
        assert_eq!(
            probe_address("", "t.toml", &env).expect("env"),
            "10.0.0.5:9191".parse().expect("addr")
        );
        let error = parse("listen = \"0.0.0.0:8080\"\nmetrics_listen = \"0.0.0.0:8080\"\n")
            .expect_err("one port for both");
        assert_eq!(
            error.to_string(),
            "test.toml:2:18: `metrics_listen`: must differ from `listen` (0.0.0.0:8080): both are served at once"
        );
        let error = probe("\nmetrics_listen = \"nine\"\n").expect_err("bad");
        assert_eq!(
            error.to_string(),
            "t.toml:2:18: `metrics_listen`: expected an address such as `0.0.0.0:9090`"
        );
    }

    #[test]
    fn the_review_page_is_off_unless_listened_for_and_needs_a_login() {
        let config = parse("").expect("defaults");
        assert_eq!(config.review.listen, None);
        let hash = "ab".repeat(32);
        let config = parse(&format!(
            "[review]\nlisten = \"127.0.0.1:8070\"\n\n[[review.operators]]\nname = \"alice\"\ntoken_sha256 = \"{hash}\"\n"
        ))
        .expect("review");
        assert_eq!(
            config.review.listen,
            Some("127.0.0.1:8070".parse().expect("addr"))
        );
        assert_eq!(config.review.operators[0].token_sha256, [0xab; 32]);
        assert!(config.review.secure_cookie);
        assert_eq!(config.review.refresh, Some(Duration::from_secs(300)));
        let visits_only = parse(&format!(
            "[review]\nlisten = \"127.0.0.1:8070\"\nrefresh_secs = 0\n\n[[review.operators]]\nname = \"alice\"\ntoken_sha256 = \"{hash}\"\n"
        ))
        .expect("review");
        assert_eq!(visits_only.review.refresh, None);
        for (text, wanted) in [
            (
                "[review]\nlisten = \"127.0.0.1:8070\"\n".to_owned(),
                "test.toml:2:10: `review.listen`: no operator could log in",
            ),
            (
                "[review]\ntrusted_header = \"X-Forwarded-User\"\n".to_owned(),
                "test.toml:2:18: `review.trusted_header`: needs `review.trusted_proxies`",
            ),
            (
                "[[review.operators]]\nname = \"a\"\ntoken_sha256 = \"secret-token-pasted-here\"\n".to_owned(),
                "`review.operators.token_sha256`: expected the token's SHA-256",
            ),
            (
                "listen = \"127.0.0.1:8080\"\n[review]\nlisten = \"127.0.0.1:8080\"\ntrusted_header = \"x-user\"\ntrusted_proxies = [\"10.0.0.1\"]\n".to_owned(),
                "`review.listen`: must differ from `listen`",
            ),
            (
                "[review]\nrefresh_secs = 100000\n".to_owned(),
                "test.toml:2:16: `review.refresh_secs`: expected 0 (only when the queue is listed) to 86400",
            ),
        ] {
            let error = parse(&text).expect_err(&text).to_string();
            assert!(error.contains(wanted), "{error}");
            assert!(!error.contains("secret-token-pasted-here"), "{error}");
        }
    }
}
