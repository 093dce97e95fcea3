//! Configuration: documented defaults, one TOML file, environment overrides.
//!
//! The file's serde form ([`FileConfig`]) is parsed and validated once into [`Config`],
//! with errors that name the file, the line and the key. Secrets are wrapped in
//! [`Secret`] or [`WebhookSecret`] so that no `Debug` output can show them.
//!
//! Environment overrides (each documented in `README.md`):
//! `PUHURI_APPROVER_LISTEN`, `PUHURI_APPROVER_AMQP_URL`, `PUHURI_APPROVER_PUHURI_URL`,
//! `PUHURI_APPROVER_PUHURI_TOKEN`, `PUHURI_APPROVER_POLICY`, and
//! `PUHURI_APPROVER_SOURCE_<NAME>_SECRETS` (comma-separated; `<NAME>` is the source name in
//! upper case with `-` replaced by `_`).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::secret::Secret;
use crate::signature::WebhookSecret;

/// The RabbitMQ used when nothing else is configured.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// An error that points at the offending place in a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{path}:{line}: `{key}`: {message}")]
    Invalid {
        path: String,
        line: usize,
        key: String,
        message: String,
    },
    #[error("environment variable `{var}`: {message}")]
    Env { var: String, message: String },
}

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Which queue backend runs.
    pub queue: QueueChoice,
    pub amqp: AmqpConfig,
    pub worker: WorkerConfig,
    pub reconcile: ReconcileConfig,
    pub puhuri: PuhuriConfig,
    pub policy_file: Option<PathBuf>,
    pub sources: Vec<SourceConfig>,
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

#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// Holds credentials, so it is kept as a secret.
    pub url: Secret,
    pub prefix: String,
    pub publish_channels: usize,
    pub confirm_timeout: Duration,
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiGeneration {
    /// Current Waldur: orders are approved or rejected (`approve_by_provider`).
    Orders,
    /// The 2021 API: resources change state (`set_state_by_provider`).
    Resources,
}

#[derive(Debug, Clone)]
pub struct PuhuriConfig {
    pub url: String,
    pub token: Secret,
    pub api: ApiGeneration,
    pub timeout: Duration,
    pub offerings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadFormat {
    /// Waldur's own hook JSON `{created, message, event_type, context}`.
    WaldurHook,
    /// The canonical notification, `schemas/allocation-notification.v1.schema.json`.
    Allocation,
}

#[derive(Clone)]
pub enum SourceAuth {
    StandardWebhooks {
        secrets: Vec<WebhookSecret>,
        tolerance_secs: i64,
    },
}

impl fmt::Debug for SourceAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceAuth::StandardWebhooks {
                secrets,
                tolerance_secs,
            } => f
                .debug_struct("StandardWebhooks")
                .field("secrets", &secrets.len())
                .field("tolerance_secs", tolerance_secs)
                .finish(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub name: String,
    pub format: PayloadFormat,
    pub auth: SourceAuth,
}

// ---- the file's serde form -------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<Spanned<String>>,
    #[serde(default)]
    amqp: FileAmqp,
    #[serde(default)]
    queue: FileQueue,
    #[serde(default)]
    worker: FileWorker,
    #[serde(default)]
    reconcile: FileReconcile,
    #[serde(default)]
    puhuri: FilePuhuri,
    #[serde(default)]
    policy: FilePolicy,
    #[serde(default)]
    sources: Vec<Spanned<FileSource>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAmqp {
    url: Option<Spanned<String>>,
    prefix: Option<Spanned<String>>,
    publish_channels: Option<Spanned<usize>>,
    confirm_timeout_ms: Option<Spanned<u64>>,
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
struct FilePuhuri {
    url: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
    api: Option<ApiGeneration>,
    timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    offerings: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePolicy {
    file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSource {
    name: Spanned<String>,
    format: PayloadFormat,
    auth: Spanned<String>,
    secrets: Option<Spanned<Vec<String>>>,
    tolerance_secs: Option<Spanned<i64>>,
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
        Self::parse("", "<defaults>", env)
    }

    /// Parses config text; `path` is only used in messages. Relative paths in the file
    /// (the policy file) are kept as written.
    pub fn parse(text: &str, path: &str, env: &dyn Environment) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|error| ConfigError::Syntax {
            path: path.to_owned(),
            message: error.to_string().trim_end().to_owned(),
        })?;
        let at = Locator { text, path };

        let listen = match env.get("PUHURI_APPROVER_LISTEN") {
            Some(value) => value.parse().map_err(|_| ConfigError::Env {
                var: "PUHURI_APPROVER_LISTEN".into(),
                message: "expected an address such as `0.0.0.0:8080`".into(),
            })?,
            None => match &file.listen {
                Some(value) => value.get_ref().parse().map_err(|_| {
                    at.invalid(
                        value.span(),
                        "listen",
                        "expected an address such as `0.0.0.0:8080`",
                    )
                })?,
                None => SocketAddr::from(([127, 0, 0, 1], 8080)),
            },
        };

        let amqp_configured =
            env.get("PUHURI_APPROVER_AMQP_URL").is_some() || file.amqp.url.is_some();
        let amqp_url = match env.get("PUHURI_APPROVER_AMQP_URL") {
            Some(url) => url,
            None => match &file.amqp.url {
                Some(url) => {
                    if !(url.get_ref().starts_with("amqp://")
                        || url.get_ref().starts_with("amqps://"))
                    {
                        return Err(at.invalid(
                            url.span(),
                            "amqp.url",
                            "expected an `amqp://` or `amqps://` URL",
                        ));
                    }
                    url.get_ref().clone()
                }
                None => DEFAULT_AMQP_URL.to_owned(),
            },
        };
        let queue = match file
            .queue
            .backend
            .as_ref()
            .map(|b| (b.get_ref().as_str(), b.span()))
        {
            Some(("rabbitmq", _)) => QueueChoice::RabbitMq,
            Some(("embedded", _)) => embedded_choice(&at, &file.queue, env)?,
            Some((other, span)) => {
                return Err(at.invalid(
                    span,
                    "queue.backend",
                    &format!("unknown backend `{other}`; expected `embedded` or `rabbitmq`"),
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
            None => 32,
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

        let puhuri_url = match env.get("PUHURI_APPROVER_PUHURI_URL") {
            Some(url) => normalize_api_url(&url).map_err(|message| ConfigError::Env {
                var: "PUHURI_APPROVER_PUHURI_URL".into(),
                message,
            })?,
            None => match &file.puhuri.url {
                Some(url) => normalize_api_url(url.get_ref())
                    .map_err(|message| at.invalid(url.span(), "puhuri.url", &message))?,
                None => "http://127.0.0.1:8090/api/".to_owned(),
            },
        };
        let token = match env.get("PUHURI_APPROVER_PUHURI_TOKEN") {
            Some(token) => Secret::new(token),
            None => match &file.puhuri.token {
                Some(token) if token.get_ref().trim().is_empty() => {
                    return Err(at.invalid(token.span(), "puhuri.token", "the token is empty"));
                }
                Some(token) => Secret::new(token.get_ref().trim()),
                None => Secret::new(""),
            },
        };
        let timeout = millis(&at, &file.puhuri.timeout_ms, "puhuri.timeout_ms", 10_000)?;

        let policy_file = env
            .get("PUHURI_APPROVER_POLICY")
            .or(file.policy.file)
            .map(PathBuf::from);

        let mut sources = Vec::new();
        for source in &file.sources {
            let span = source.span();
            let source = source.get_ref();
            let name = source.name.get_ref();
            if !is_valid_source_name(name) {
                return Err(at.invalid(
                    source.name.span(),
                    "sources.name",
                    "expected 1 to 64 lowercase letters, digits or `-`",
                ));
            }
            if sources.iter().any(|s: &SourceConfig| &s.name == name) {
                return Err(at.invalid(
                    source.name.span(),
                    "sources.name",
                    &format!("`{name}` is defined twice"),
                ));
            }
            let auth = match source.auth.get_ref().as_str() {
                "standard-webhooks" => {
                    let env_var = format!(
                        "PUHURI_APPROVER_SOURCE_{}_SECRETS",
                        name.to_uppercase().replace('-', "_")
                    );
                    let raw: Vec<String> = match env.get(&env_var) {
                        Some(list) => list.split(',').map(|s| s.trim().to_owned()).collect(),
                        None => source
                            .secrets
                            .as_ref()
                            .map(|s| s.get_ref().clone())
                            .unwrap_or_default(),
                    };
                    if raw.is_empty() {
                        return Err(at.invalid(
                            span,
                            "sources.secrets",
                            &format!("source `{name}` needs at least one secret (or `{env_var}`)"),
                        ));
                    }
                    let mut secrets = Vec::new();
                    for (index, value) in raw.iter().enumerate() {
                        let secret = WebhookSecret::parse(value).map_err(|error| {
                            at.invalid(
                                source
                                    .secrets
                                    .as_ref()
                                    .map(|s| s.span())
                                    .unwrap_or(span.clone()),
                                "sources.secrets",
                                &format!("source `{name}`, secret #{}: {error}", index + 1),
                            )
                        })?;
                        secrets.push(secret);
                    }
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
                other => {
                    return Err(at.invalid(
                        source.auth.span(),
                        "sources.auth",
                        &format!("unknown scheme `{other}`; expected `standard-webhooks`"),
                    ));
                }
            };
            sources.push(SourceConfig {
                name: name.clone(),
                format: source.format,
                auth,
            });
        }

        Ok(Config {
            listen,
            queue,
            amqp: AmqpConfig {
                url: Secret::new(amqp_url),
                prefix,
                publish_channels,
                confirm_timeout,
            },
            worker: WorkerConfig {
                prefetch,
                max_attempts,
                retry_delays,
                retry_jitter,
                shutdown_deadline,
            },
            reconcile,
            puhuri: PuhuriConfig {
                url: puhuri_url,
                token,
                api: file.puhuri.api.unwrap_or(ApiGeneration::Orders),
                timeout,
                offerings: file.puhuri.offerings,
            },
            policy_file,
            sources,
        })
    }

    /// Problems that do not stop `receive` but stop a role that needs the value.
    pub fn require_token(&self) -> Result<(), ConfigError> {
        if self.puhuri.token.is_empty() {
            return Err(ConfigError::Env {
                var: "PUHURI_APPROVER_PUHURI_TOKEN".into(),
                message: "workers need a Puhuri Core token: set `puhuri.token` or this variable"
                    .into(),
            });
        }
        Ok(())
    }
}

struct Locator<'a> {
    text: &'a str,
    path: &'a str,
}

impl Locator<'_> {
    fn invalid(&self, span: Range<usize>, key: &str, message: &str) -> ConfigError {
        let line = self.text[..span.start.min(self.text.len())]
            .matches('\n')
            .count()
            + 1;
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line,
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

/// Puhuri Core's base URL must be http(s) and end with `/api/`; a missing final slash is added.
fn normalize_api_url(url: &str) -> Result<String, String> {
    let url = url.trim();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("expected an `http://` or `https://` URL ending in `/api/`".into());
    }
    let url = if url.ends_with('/') {
        url.to_owned()
    } else {
        format!("{url}/")
    };
    if !url.ends_with("/api/") {
        return Err("expected the API base URL, ending in `/api/`".into());
    }
    Ok(url)
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
        assert_eq!(config.worker.prefetch, 32);
        assert_eq!(config.puhuri.api, ApiGeneration::Orders);
    }

    #[test]
    fn names_the_line_and_key_of_a_bad_value() {
        let error =
            parse("listen = \"127.0.0.1:0\"\n\n[worker]\nprefetch = 0\n").expect_err("invalid");
        assert_eq!(
            error.to_string(),
            "test.toml:4: `worker.prefetch`: expected at least 1"
        );
    }

    #[test]
    fn names_an_unknown_key() {
        let error = parse("[amqp]\nurll = \"x\"\n").expect_err("unknown key");
        let text = error.to_string();
        assert!(text.starts_with("test.toml: "), "{text}");
        assert!(text.contains("line 2"), "{text}");
        assert!(text.contains("urll"), "{text}");
    }

    #[test]
    fn refuses_a_short_secret_without_printing_it() {
        let text = "[[sources]]\nname = \"relay\"\nformat = \"allocation\"\nauth = \"standard-webhooks\"\nsecrets = [\"whsec_c2hvcnRzZWNyZXQ=\"]\n";
        let error = parse(text).expect_err("short secret");
        let message = error.to_string();
        assert!(
            message.starts_with("test.toml:5: `sources.secrets`"),
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
        assert_eq!(config.amqp.url.expose(), "amqp://u:p@h:5672/v");
        assert!(!format!("{config:?}").contains("u:p@"));
        match &config.sources[0].auth {
            SourceAuth::StandardWebhooks { secrets, .. } => assert_eq!(secrets.len(), 1),
        }
    }
}
