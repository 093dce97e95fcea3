//! The command line: parsing with clap, and one function per command.
//!
//! INVARIANT: no secret is taken from argv (where `ps` and shell histories show it):
//! secrets come from files (`--*-file PATH`) or environment variables.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::app::{self, Roles};
use crate::config::{Config, ProcessEnv};
use crate::reload::PolicyFile;
use crate::work::Work;
use puhuri_auth::secret::read_secret;
use puhuri_auth::signature::{self, GithubSecret, WebhookSecret};
use puhuri_client::{Fetched, Resource};
use puhuri_policy::cases::Cases;
use puhuri_policy::{Action, Allocation, Policy};

/// Event-driven, policy-driven approval of Puhuri Core allocation requests.
#[derive(Debug, Parser)]
#[command(
    name = "puhuri-approver",
    version,
    about,
    after_help = "The Puhuri Core simulator and the benchmark are programs of their own: \
                  `puhuri-sim` and `puhuri-bench`."
)]
pub struct Cli {
    /// Log format: `text` (default) or `json`.
    #[arg(
        long,
        global = true,
        env = "PUHURI_APPROVER_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The production commands first, in the order an operator meets them; tools last.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every role in one process: receiver, workers, reconciler and team watcher (and
    /// the review page when `review.listen` is set).
    ///
    /// The process serving the review page also recomputes the review queue every
    /// `review.refresh_secs` (default 300; 0: only when listed) for the held gauges: one
    /// pending listing plus one read of each pending allocation per refresh.
    ///
    /// Needs `puhuri.url`, `puhuri.token`, `policy.file` and `[[sources]]`; every missing
    /// one is named before anything is opened or created.
    Serve(ServiceArgs),
    /// Run the receiver only (HTTP in, the queue out).
    ///
    /// Needs `[[sources]]` only: the policy is neither read nor required.
    Receive(ServiceArgs),
    /// Run the workers, reconciler and team watcher only (the queue in, Puhuri Core out),
    /// and the review page when `review.listen` is set.
    ///
    /// The process serving the review page also recomputes the review queue every
    /// `review.refresh_secs` (default 300; 0: only when listed) for the held gauges: one
    /// pending listing plus one read of each pending allocation per refresh.
    ///
    /// Needs `puhuri.url`, `puhuri.token` and `policy.file`; every missing one is named
    /// before anything is opened or created.
    Work(ServiceArgs),
    /// Ask a running service whether it is ready (`GET /readyz`): exit 0 on 200, else 1.
    ///
    /// For container health checks. Prints one line either way.
    Healthcheck(HealthcheckArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Policy tools.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Inspect, replay or purge the dead-letter queue.
    Dlq(DlqArgs),
    /// Print the members of an allocation's project with their roles.
    Team(TeamArgs),
    /// Usage reporting tools.
    Usage(UsageArgs),
    /// The review queue: allocations the policy holds for a person, and their decision.
    ///
    /// `list` and `show` read Puhuri Core and the configured policy as a worker would;
    /// `approve` and `reject` queue the operator's decision on the configured queue, and a
    /// worker writes it (re-fetched, only while it still waits) as an automatic decision
    /// is written, with the policy's `[manual]` section.
    Review(ReviewArgs),
    /// Print signature headers for a body, to send a test notification with curl.
    Sign(SignArgs),
    /// Secret tools.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// (tool) Show the whole product on this machine with the simulator.
    ///
    /// Runs the Puhuri Core simulator, the service on the embedded queue with an example
    /// policy, and a stream of allocation requests. Built only with the default `tools`
    /// feature.
    #[cfg(feature = "tools")]
    Demo(DemoArgs),
}

#[derive(Debug, clap::Args)]
pub struct HealthcheckArgs {
    /// The readiness URL to ask. Default: `/readyz` on `metrics_listen` of the
    /// configuration when set, else on `listen` (`0.0.0.0` and `::` mean this machine).
    #[arg(long)]
    pub url: Option<String>,
    /// The configuration file the address is read from (only `listen` and
    /// `metrics_listen`, and their environment variables, are read).
    #[arg(long, short, env = "PUHURI_APPROVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
}

#[derive(Debug, clap::Args)]
pub struct TeamArgs {
    /// The configuration the service runs with; else env `PUHURI_APPROVER_CONFIG`, else
    /// `/etc/puhuri-approver/puhuri-approver.toml` when it exists. `[[sources]]` are not read.
    #[arg(long, short, env = "PUHURI_APPROVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// The allocation: its resource uuid or its backend_id.
    pub resource: String,
    /// Print JSON (Puhuri Core's member objects) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct UsageArgs {
    /// The configuration the service runs with; else env `PUHURI_APPROVER_CONFIG`, else
    /// `/etc/puhuri-approver/puhuri-approver.toml` when it exists. `[[sources]]` are not read.
    #[arg(long, short, env = "PUHURI_APPROVER_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: UsageCommand,
}

#[derive(Debug, clap::Args)]
pub struct ReviewArgs {
    /// The configuration the service runs with; else env `PUHURI_APPROVER_CONFIG`, else
    /// `/etc/puhuri-approver/puhuri-approver.toml` when it exists. `[[sources]]` are not read.
    #[arg(long, short, env = "PUHURI_APPROVER_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: ReviewCommand,
}

#[derive(Debug, Subcommand)]
pub enum ReviewCommand {
    /// List the allocations the policy holds now, oldest first: the rule that held each
    /// and its note, limits, project, organisation, end date, requester, granted totals.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Only this offering (its uuid or name).
        #[arg(long)]
        offering: Option<String>,
        /// Only what this rule held (`default`: held by the default).
        #[arg(long)]
        rule: Option<String>,
    },
    /// Show how the policy decides one allocation now (as `policy explain --online`) and
    /// what an operator's approval would write.
    Show {
        /// The allocation's resource uuid.
        id: String,
    },
    /// Queue an operator's approval: backend_id and access report from the policy's
    /// `[manual]` section, then the team snapshot, as an automatic approval.
    Approve {
        /// The allocation's resource uuid.
        id: String,
        /// A comment kept in the decision event.
        #[arg(long, default_value = "")]
        comment: String,
        /// The operator's name in the decision event; default: the OS user (`$USER`).
        #[arg(long = "as", value_name = "NAME")]
        operator: Option<String>,
    },
    /// Queue an operator's rejection with the reason the requester sees.
    Reject {
        /// The allocation's resource uuid.
        id: String,
        /// The rejection comment the requester sees (required, not empty).
        #[arg(long)]
        reason: String,
        /// The operator's name in the decision event; default: the OS user (`$USER`).
        #[arg(long = "as", value_name = "NAME")]
        operator: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsageCommand {
    /// Queue the usage records of a file (CSV or JSON lines) for the workers, which check
    /// them and report them to Puhuri Core. A file with any invalid record queues nothing.
    Push {
        /// The file; its format follows the extension (`.csv`, `.jsonl`) or the content.
        file: PathBuf,
        #[arg(long, value_enum, default_value = "auto")]
        format: crate::usage::file::Format,
        /// Queue without first checking, in one paginated list from Puhuri Core, that
        /// every allocation the file names takes usage (`OK`, `Updating`, `Terminating`).
        #[arg(long)]
        no_lookup: bool,
    },
}

#[cfg(feature = "tools")]
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How many allocation requests to send.
    #[arg(long, default_value_t = 24)]
    pub count: usize,
    /// Requests per second.
    #[arg(long, default_value_t = 6.0)]
    pub rate: f64,
    /// Keep sending until Ctrl-C.
    #[arg(long)]
    pub forever: bool,
    /// A policy file to run instead of the example.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Keep the embedded queue in this folder (default: a temporary one, removed at the end).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// How requests reach the service: `hook` (the simulator's signed notifications) or
    /// `stomp` (Waldur's event stream, from a RabbitMQ with the management and web-STOMP
    /// plugins: env PUHURI_APPROVER_DEMO_AMQP_URL, default amqp://guest:guest@127.0.0.1:5672;
    /// PUHURI_APPROVER_DEMO_MANAGEMENT_URL, default http://guest:guest@127.0.0.1:15672;
    /// PUHURI_APPROVER_DEMO_STOMP_URL, default ws://127.0.0.1:15674/ws).
    #[arg(long, value_enum, default_value_t = crate::demo::DemoSource::Hook)]
    pub source: crate::demo::DemoSource,
}

#[derive(Debug, clap::Args)]
pub struct DlqArgs {
    /// The configuration the service runs with; else env `PUHURI_APPROVER_CONFIG`, else
    /// `/etc/puhuri-approver/puhuri-approver.toml` when it exists. `[[sources]]` are not read.
    #[arg(long, short, env = "PUHURI_APPROVER_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters: id, attempts, allocation and the last reason.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one dead letter with every attempt's reason.
    Show {
        /// The notification id (`message_id`).
        id: String,
    },
    /// Send dead letters back to the workers with a fresh attempt count.
    Replay {
        /// The notification id; omit with `--all`.
        id: Option<String>,
        /// Replay every dead letter present now.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Delete dead letters.
    Purge {
        /// The notification id; omit with `--all`.
        id: Option<String>,
        /// Delete every dead letter present now.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    /// The configuration file (TOML). Without it, defaults and environment variables
    /// apply; what the command needs and is not set is listed before anything starts.
    #[arg(long, short, env = "PUHURI_APPROVER_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// File holding the signing secret; otherwise env `PUHURI_APPROVER_SIGN_SECRET`.
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// Signature scheme: `standard-webhooks` (`whsec_...` secret) or `github`.
    #[arg(long, default_value = "standard-webhooks")]
    pub scheme: SignScheme,
    /// The notification id (`webhook-id`), or GitHub's `X-GitHub-Delivery` (a label only: the
    /// receiver keys GitHub-style notifications on the body); a fresh one when omitted.
    #[arg(long)]
    pub id: Option<String>,
    /// Unix seconds (`webhook-timestamp`, Standard Webhooks only); now when omitted.
    #[arg(long)]
    pub timestamp: Option<i64>,
    /// Print `-H name:value` arguments for curl instead of header lines.
    #[arg(long)]
    pub curl: bool,
    /// The body file, exactly as it will be sent; `-` reads standard input.
    pub body: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SignScheme {
    StandardWebhooks,
    Github,
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Print a new random secret (256 bits) in the form a source's `auth` expects.
    ///
    /// It goes to standard output only: redirect it into the secret file, e.g.
    /// `puhuri-approver secret generate --kind path-secret > /etc/puhuri-approver/hook-path`.
    Generate {
        /// `path-secret` (43 URL-safe characters), `standard-webhooks` (`whsec_` and
        /// base64), `github` (64 hexadecimal digits) or `review-token` (an operator's
        /// token for the review page, 43 URL-safe characters; its SHA-256 for
        /// `[[review.operators]] token_sha256` goes to standard error).
        #[arg(long, value_enum)]
        kind: SecretKindArg,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SecretKindArg {
    PathSecret,
    StandardWebhooks,
    Github,
    ReviewToken,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file as `serve` (or `--role`) would before it starts:
    /// every setting the role needs, the policy file it names, the Puhuri Core client.
    Check {
        /// The configuration file.
        file: PathBuf,
        /// The command the file is for: `serve` (default), `receive` or `work`.
        #[arg(long, value_enum, default_value = "serve")]
        role: RoleArg,
        /// Also probe Puhuri Core as `work` does at start: the token (`users/me`), the API
        /// generation the server speaks against `puhuri.api`, the user's provider roles and
        /// offerings against `puhuri.offerings`, and whether event consumers exist. Fails
        /// on a refused token, a mismatch or an unreachable server.
        #[arg(long)]
        online: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Serve,
    Receive,
    Work,
}

impl RoleArg {
    fn roles(self) -> Roles {
        match self {
            RoleArg::Serve => Roles::ALL,
            RoleArg::Receive => Roles {
                receive: true,
                work: false,
            },
            RoleArg::Work => Roles {
                receive: false,
                work: true,
            },
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file and list every problem with its line. With `--config`, also
    /// what the configuration lets production fill: fields nothing fills are refused
    /// (`customer.country` without `policy.customers_file`), and `erred` rules that are
    /// written as a reject for some offering types are warned about.
    Check {
        /// The policy file.
        file: PathBuf,
        /// The service's configuration file. Without it the current API is assumed and
        /// the fields only a customers file fills are warned about rather than refused.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Show how a policy decides one allocation: every rule, matched or not and why, the
    /// action, and the rendered backend_id, reason or note.
    Explain {
        /// The policy file.
        file: PathBuf,
        /// The allocation: the policy's allocation object (JSON, as in `policy test` cases),
        /// or a resource as Puhuri Core renders it (with `creation_order`); `-` reads stdin.
        /// With `--online`: a resource uuid, an order uuid or a backend_id.
        allocation: String,
        /// Fetch the allocation from Puhuri Core as a worker does (the organisation's
        /// abbreviation, the customers file, the totals granted already) and show the
        /// decision a worker would take now.
        #[arg(long)]
        online: bool,
        /// The configuration (Puhuri Core URL and token, customers file) for `--online`;
        /// else env `PUHURI_APPROVER_CONFIG`, else `/etc/puhuri-approver/puhuri-approver.toml`.
        #[arg(long, short, env = "PUHURI_APPROVER_CONFIG")]
        config: Option<PathBuf>,
        /// Evaluation time (RFC 3339); now when omitted.
        #[arg(long)]
        now: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a file of cases (allocations with expected decisions) against a policy.
    Test {
        /// The policy file.
        file: PathBuf,
        /// The cases file (TOML, `[[case]]` tables).
        cases: PathBuf,
    },
}

/// Sets up logging once.
pub fn init_logging(cli: &Cli) {
    // The demo prints a table; its logs stay quiet unless asked for.
    let default = match cli.command {
        #[cfg(feature = "tools")]
        Command::Demo(_) => "warn",
        _ => "info,lapin=warn,amq_protocol=warn",
    };
    let format = cli.log_format;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Spans go to an OpenTelemetry collector when the standard variables name one.
    let otlp = crate::otel::OtlpConfig::from_env(|name| std::env::var(name).ok())
        .filter(|_| {
            matches!(
                cli.command,
                Command::Serve(_) | Command::Receive(_) | Command::Work(_)
            )
        })
        .and_then(crate::otel::layer);
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let registry = tracing_subscriber::registry().with(otlp).with(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => registry.with(fmt).try_init(),
        LogFormat::Json => registry.with(fmt.json()).try_init(),
    };
}

/// Runs a parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => run_service(args, Roles::ALL).await,
        Command::Receive(args) => {
            run_service(
                args,
                Roles {
                    receive: true,
                    work: false,
                },
            )
            .await
        }
        Command::Work(args) => {
            run_service(
                args,
                Roles {
                    receive: false,
                    work: true,
                },
            )
            .await
        }
        Command::Healthcheck(args) => healthcheck(args).await,
        Command::Sign(args) => sign(args),
        Command::Secret(SecretCommand::Generate { kind }) => generate_secret(kind),
        Command::Config(ConfigCommand::Check { file, role, online }) => {
            let roles = role.roles();
            if online && !roles.work {
                bail!("`--online` probes Puhuri Core, which `receive` does not use");
            }
            let config = check_config(&file, roles)?;
            if online {
                check_online(&config).await?;
            }
            Ok(())
        }
        Command::Dlq(args) => dlq(args).await,
        Command::Team(args) => team(args).await,
        Command::Review(args) => review(args).await,
        Command::Usage(UsageArgs {
            config,
            command:
                UsageCommand::Push {
                    file,
                    format,
                    no_lookup,
                },
        }) => usage_push(config.as_deref(), &file, format, !no_lookup).await,
        #[cfg(feature = "tools")]
        Command::Demo(args) => {
            crate::demo::run(
                crate::demo::DemoOptions {
                    count: args.count,
                    rate: args.rate,
                    forever: args.forever,
                    policy: args.policy,
                    data_dir: args.data_dir,
                    source: args.source,
                },
                shutdown_signal(),
            )
            .await
        }
        Command::Policy(PolicyCommand::Check { file, config }) => {
            let policy = load_policy(&file)?;
            let checked = match &config {
                Some(path) => {
                    let config = load_config(Some(path))?;
                    if let Some(customers) = &config.policy_customers_file {
                        crate::customers::CustomerDirectory::load(customers)?;
                    }
                    crate::customers::check_policy(&policy, &config)
                }
                // Without the configuration, what it must provide is a warning.
                None => {
                    let api = crate::config::ApiGeneration::Orders;
                    let mut warnings =
                        match crate::customers::check_policy_with(&policy, false, api) {
                            Ok(warnings) => warnings,
                            Err(problems) => problems,
                        };
                    if let Ok(more) = crate::customers::check_policy_with(&policy, true, api) {
                        warnings.extend(more);
                    }
                    warnings.dedup();
                    Ok(warnings)
                }
            };
            report_policy_context(&file, checked)?;
            println!(
                "{}: ok ({} rules, version {})",
                file.display(),
                policy.rule_count(),
                policy.version()
            );
            Ok(())
        }
        Command::Policy(PolicyCommand::Explain {
            file,
            allocation,
            online,
            config,
            now,
            json,
        }) => {
            let (allocation, missing) = if online {
                fetch_for_explain(config.as_deref(), &file, &allocation).await?
            } else {
                read_allocation(Path::new(&allocation))?
            };
            explain_policy(&file, allocation, &missing, now.as_deref(), json)
        }
        Command::Policy(PolicyCommand::Test { file, cases }) => test_policy(&file, &cases),
    }
}

/// `1 source`, `2 sources`.
pub fn plural(count: usize, one: &str, many: &str) -> String {
    if count == 1 {
        format!("{count} {one}")
    } else {
        format!("{count} {many}")
    }
}

/// Left-aligned columns as wide as their widest value; the last column is not padded.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(&rows) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                out.push_str(cell);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push('\n');
    }
    out
}

/// `text` when it has at most `max` characters; otherwise cut at the last space before
/// `max` (mid-word only when there is none) and ended with `…`.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let cut: String = text.chars().take(max.saturating_sub(1)).collect();
    let at_word = match cut.rfind(' ') {
        Some(space) if space > max / 2 => cut[..space].trim_end(),
        _ => cut.as_str(),
    };
    format!("{at_word}…")
}

/// Prints a new secret of `kind`, from the operating system's random source.
fn generate_secret(kind_arg: SecretKindArg) -> anyhow::Result<()> {
    use puhuri_auth::generate::{SECRET_BYTES, SecretKind, encode};
    let kind = match kind_arg {
        SecretKindArg::PathSecret => SecretKind::PathSecret,
        SecretKindArg::StandardWebhooks => SecretKind::StandardWebhooks,
        SecretKindArg::Github => SecretKind::Github,
        SecretKindArg::ReviewToken => SecretKind::PathSecret,
    };
    let mut random = [0u8; SECRET_BYTES];
    getrandom::fill(&mut random)
        .map_err(|error| anyhow::anyhow!("the operating system gave no random bytes: {error}"))?;
    let secret = encode(kind, &random);
    println!("{secret}");
    if matches!(kind_arg, SecretKindArg::ReviewToken) {
        let digest = crate::review::session::token_sha256(&secret);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        eprintln!(
            "token_sha256 = \"{hex}\"  # for [[review.operators]]; give the token above to the operator"
        );
    }
    Ok(())
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    let config = match path {
        Some(path) => {
            let mut config = Config::load(path, &ProcessEnv)?;
            // Like the policy file, the customers file is relative to the config's folder.
            config.policy_customers_file = config
                .policy_customers_file
                .map(|customers| resolve_relative(path, &customers));
            config
        }
        None => Config::from_env(&ProcessEnv)?,
    };
    Ok(config)
}

/// The policy file the configuration names (relative to the configuration file), read
/// and compiled; a file that cannot be read is traced to the line that names it.
fn load_named_policy(
    config: &Config,
    config_path: Option<&Path>,
) -> anyhow::Result<Option<(PathBuf, Policy)>> {
    let Some(policy) = &config.policy_file else {
        return Ok(None);
    };
    let path = match config_path {
        Some(config_path) => resolve_relative(config_path, policy),
        None => policy.clone(),
    };
    if let Err(error) = std::fs::File::open(&path) {
        let from = config
            .policy_file_from
            .clone()
            .unwrap_or_else(|| "`policy.file`".into());
        bail!("{from}: {}: cannot read: {error}", path.display());
    }
    let compiled = load_policy(&path)?;
    Ok(Some((path, compiled)))
}

/// Reads and compiles a policy file; errors name the file and every line.
pub fn load_policy(path: &Path) -> anyhow::Result<Policy> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    Policy::parse(&text).map_err(|errors| {
        let lines: Vec<String> = errors
            .0
            .iter()
            .map(|e| {
                let place = e.position();
                format!("{}:{place}: {}: {}", path.display(), e.rule, e.message)
            })
            .collect();
        anyhow::anyhow!("{}", lines.join("\n"))
    })
}

/// Reads an allocation for `policy explain`: the allocation object, or a Puhuri Core
/// resource (recognised by its top-level `uuid`).
/// What an allocation read from a file lacks compared with what a worker gathers.
const OFFLINE_GAPS: &[&str] = &[
    "the organisation's abbreviation from Puhuri Core (customer.abbreviation)",
    "the provider's customers file (customer.country, customer.tags)",
    "the totals granted already (granted.*)",
];

/// The allocation a worker would decide now, fetched and gathered as the worker does
/// it, and what it still waits for (empty when it no longer waits).
async fn fetch_for_explain(
    config: Option<&Path>,
    policy_file: &Path,
    id: &str,
) -> anyhow::Result<(Allocation, Vec<String>)> {
    use puhuri_client::{
        AllocationHint, OrderUuid, PuhuriError, ResourceRef, ResourceUuid, WaldurUuid,
    };
    let config = tool_config(config)?;
    config.require(
        "policy explain --online",
        crate::config::Needs {
            puhuri: true,
            ..Default::default()
        },
    )?;
    let policy = load_policy(policy_file)?;
    let client = config.puhuri.client()?;
    let report = crate::probe::probe(&client, &config.puhuri).await?;
    client.set_api(report.api);
    let by_resource = |uuid: &str| AllocationHint {
        resource_uuid: ResourceUuid::parse(uuid),
        order_uuid: None,
    };
    let fetched = match WaldurUuid::parse(id) {
        // A resource uuid; one the token does not see as a resource is an order's.
        Some(uuid) => match client.fetch_allocation(&by_resource(uuid.as_str())).await {
            Err(PuhuriError::Permanent { status: 404, .. }) => {
                let order = AllocationHint {
                    resource_uuid: None,
                    order_uuid: OrderUuid::parse(uuid.as_str()),
                };
                client.fetch_allocation(&order).await
            }
            fetched => fetched,
        },
        None => {
            let resource = client
                .find_resource(&ResourceRef::BackendId(id.to_owned()))
                .await?
                .map_err(anyhow::Error::new)?;
            client.fetch_allocation(&by_resource(&resource.uuid)).await
        }
    }
    .with_context(|| format!("`{id}`"))?;
    let customers = match &config.policy_customers_file {
        Some(path) => crate::customers::CustomerDirectory::load(path)?,
        None => crate::customers::CustomerDirectory::default(),
    };
    let abbreviations = crate::customers::Abbreviations::default();
    let allocation =
        crate::facts::gather(&client, &customers, &abbreviations, &policy, &fetched).await?;
    let mut notes = Vec::new();
    match fetched.waiting(client.api()) {
        puhuri_client::Waiting::Yes => {}
        puhuri_client::Waiting::AlreadyHandled(state) | puhuri_client::Waiting::NotYet(state) => {
            notes.push(format!(
                "it does not wait for the provider ({state}): a worker would write nothing"
            ));
        }
    }
    Ok((allocation, notes))
}

/// Reads an allocation for `policy explain`, and what a worker would know that it lacks.
fn read_allocation(path: &Path) -> anyhow::Result<(Allocation, Vec<String>)> {
    let allocation = read_allocation_file(path)?;
    let missing = OFFLINE_GAPS
        .iter()
        .map(|gap| format!("not fetched: {gap}; `--online ID` gathers it as a worker does"))
        .collect();
    Ok((allocation, missing))
}

fn read_allocation_file(path: &Path) -> anyhow::Result<Allocation> {
    let text = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        text
    } else {
        std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?
    };
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}:{}: not JSON: {e}", path.display(), e.line()))?;
    if value.get("uuid").is_some() {
        let resource: Resource = serde_json::from_value(value)
            .map_err(|e| anyhow::anyhow!("{}: not a Puhuri Core resource: {e}", path.display()))?;
        let order = resource.creation_order.clone();
        return Ok(crate::facts::allocation(
            &Fetched { resource, order },
            &crate::facts::CustomerExtras::default(),
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| anyhow::anyhow!("{}: not an allocation object: {e}", path.display()))
}

fn parse_now(now: Option<&str>) -> anyhow::Result<time::OffsetDateTime> {
    match now {
        None => Ok(time::OffsetDateTime::now_utc()),
        Some(text) => {
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .map_err(|_| anyhow::anyhow!("--now: `{text}` is not an RFC 3339 timestamp"))
        }
    }
}

/// Each rule's line, result and the facts it read (the rule that decided marked `=>`), then
/// `LABEL: ACTION by RULE`: `policy explain` and `review show`.
fn print_explanation(explanation: &puhuri_policy::Explanation, label: &str) {
    let verdict = &explanation.verdict;
    for rule in &explanation.rules {
        let first = verdict.rule.as_deref() == Some(rule.rule.as_str());
        println!(
            "  {} line {:>4}  {:<12} {}",
            if first { "=>" } else { "  " },
            rule.line,
            rule.result,
            rule.rule
        );
        if let Some(error) = &rule.error {
            println!("                        error: {error}");
        }
        for (path, value) in &rule.facts {
            println!("                        {path} = {value}");
        }
    }
    println!(
        "{label}: {} by {}",
        verdict.action.name(),
        verdict
            .rule
            .as_deref()
            .map(|r| format!("rule `{r}`"))
            .unwrap_or_else(|| "the default".into())
    );
}

fn explain_policy(
    file: &Path,
    allocation: Allocation,
    notes: &[String],
    now: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let policy = load_policy(file)?;
    let explanation = policy.explain(&allocation, parse_now(now)?);
    let verdict = &explanation.verdict;
    let (key, value) = match &verdict.action {
        Action::Approve { backend_id, .. } => ("backend_id", backend_id),
        Action::Reject { reason } => ("reason", reason),
        Action::Erred { message, .. } => ("message", message),
        Action::Hold { note } => ("note", note),
    };
    if json {
        let report = match &verdict.action {
            Action::Approve { report, .. } => serde_json::to_value(report)?,
            _ => serde_json::Value::Null,
        };
        let body = serde_json::json!({
            "policy_version": verdict.policy_version.as_ref(),
            "rules": explanation.rules,
            "rule": verdict.rule,
            "action": verdict.action.name(),
            key: value,
            "report": report,
            "reasons": verdict.reasons,
            "rule_errors": verdict.errors,
            "notes": notes,
        });
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    println!("policy {} ({})", file.display(), verdict.policy_version);
    print_explanation(&explanation, "decision");
    println!("{key}: {value}");
    if let Action::Approve { report, .. } = &verdict.action {
        for section in report {
            println!("report: {}: {}", section.header, section.body);
        }
    }
    for reason in &verdict.reasons {
        println!("  - {reason}");
    }
    for note in notes {
        println!("note: {note}");
    }
    Ok(())
}

fn test_policy(file: &Path, cases_path: &Path) -> anyhow::Result<()> {
    let policy = load_policy(file)?;
    let text = std::fs::read_to_string(cases_path)
        .with_context(|| format!("{}: cannot read", cases_path.display()))?;
    let cases =
        Cases::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", cases_path.display()))?;
    let results = cases.run(&policy);
    let failed: Vec<_> = results.iter().filter(|r| !r.failures.is_empty()).collect();
    for result in &results {
        if result.failures.is_empty() {
            println!("ok      {}", result.name);
        } else {
            println!(
                "FAILED  {} ({}:{})",
                result.name,
                cases_path.display(),
                result.line
            );
            for failure in &result.failures {
                println!("          {failure}");
            }
        }
    }
    println!(
        "{} passed, {} failed",
        results.len() - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        bail!("{} of {} cases failed", failed.len(), results.len());
    }
    Ok(())
}

/// Prints the warnings of a policy checked against its configuration; the refused fields
/// are the error, each naming the policy file.
fn report_policy_context(
    file: &Path,
    checked: Result<Vec<String>, Vec<String>>,
) -> anyhow::Result<()> {
    match checked {
        Ok(warnings) => {
            for warning in warnings {
                eprintln!("{}: warning: {warning}", file.display());
            }
            Ok(())
        }
        Err(problems) => {
            let lines: Vec<String> = problems
                .iter()
                .map(|p| format!("{}: {p}", file.display()))
                .collect();
            bail!("{}", lines.join("\n"))
        }
    }
}

/// Runs the role's start-up checks on the file; the configuration when they pass.
fn check_config(path: &Path, roles: Roles) -> anyhow::Result<Config> {
    let config = load_config(Some(path))?;
    // What the role checks before it opens anything, in the same order.
    config.require(roles.command(), roles.needs())?;
    if roles.work {
        if let Some(customers) = &config.policy_customers_file {
            crate::customers::CustomerDirectory::load(customers)?;
        }
        if let Some((policy_path, policy)) = load_named_policy(&config, Some(path))? {
            report_policy_context(
                &policy_path,
                crate::customers::check_policy(&policy, &config),
            )?;
        }
        config
            .puhuri
            .client()
            .map_err(|error| anyhow::anyhow!("{}: Puhuri Core client: {error}", path.display()))?;
    }
    println!(
        "{}: ok for `{}` ({}, API `{}`, policy {})",
        path.display(),
        roles.command(),
        plural(config.sources.len(), "source", "sources"),
        config.puhuri.api.name(),
        match (&config.policy_file, roles.work) {
            (Some(policy), true) => format!("`{}`", policy.display()),
            (Some(_), false) => "not read by this role".into(),
            (None, _) => "none".into(),
        }
    );
    // A shared file may serve other roles too; say which ones it cannot run yet.
    for other in [Roles::ALL, RoleArg::Receive.roles(), RoleArg::Work.roles()] {
        if other == roles {
            continue;
        }
        let missing = config.missing(other.needs());
        if !missing.is_empty() {
            let keys: Vec<String> = missing.iter().map(|m| format!("`{}`", m.key)).collect();
            println!(
                "  `{}` would also need {}",
                other.command(),
                keys.join(", ")
            );
        }
    }
    Ok(config)
}

/// `config check --online`: the start-up probe, once (see `probe.rs`).
/// The start-up probe against a configuration `check_config` passed for a work role
/// (so Puhuri Core's URL and token are set).
async fn check_online(config: &Config) -> anyhow::Result<()> {
    let client = config.puhuri.client()?;
    let report = crate::probe::probe(&client, &config.puhuri).await?;
    println!(
        "Puhuri Core: ok (API `{}`: {}; user `{}`{})",
        report.api.name(),
        report.api_evidence,
        report.user,
        if report.is_staff { ", staff" } else { "" }
    );
    for role in &report.provider_roles {
        println!("  role: {role}");
    }
    for offering in &report.offerings {
        println!(
            "  offering: {} ({}, {})",
            offering.name, offering.uuid, offering.offering_type
        );
    }
    println!(
        "  event consumers (GET /api/event-consumers/): {}",
        if report.event_consumers {
            "present"
        } else {
            "absent"
        }
    );
    for warning in &report.warnings {
        println!("  warning: {warning}");
    }
    Ok(())
}

/// A relative policy path is relative to the config file's folder.
fn resolve_relative(config_path: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_owned();
    }
    config_path
        .parent()
        .map(|dir| dir.join(path))
        .unwrap_or_else(|| path.to_owned())
}

async fn run_service(args: ServiceArgs, roles: Roles) -> anyhow::Result<()> {
    let config = load_config(args.config.as_deref())?;
    // Before anything is opened or created: every missing setting, at once.
    config.require(roles.command(), roles.needs())?;
    // Only workers decide: `receive` neither reads nor compiles the policy, so a bad
    // policy edit never keeps a receiver from (re)starting.
    let named = if roles.work {
        load_named_policy(&config, args.config.as_deref())?
    } else {
        None
    };
    let policy_path = named.as_ref().map(|(path, _)| path.clone());
    let policy = match named {
        Some((path, policy)) => {
            tracing::info!(
                policy = %path.display(),
                rules = policy.rule_count(),
                version = policy.version(),
                shadow = config.policy_shadow,
                "policy loaded; reloaded on SIGHUP or when the file changes"
            );
            policy
        }
        None => Policy::hold_everything(),
    };
    let stop = CancellationToken::new();
    let customers_file = config.policy_customers_file.is_some();
    let watched =
        policy_path.map(|path| PolicyFile::new(path, &policy).with_customers_file(customers_file));
    let running = app::start(&config, roles, policy, None, stop).await?;
    if let Some(file) = watched {
        running.watch_policy(file);
    }
    running.wait(shutdown_signal()).await?;
    Ok(())
}

/// `healthcheck`: one line on stdout when ready (exit 0), the reason as the error
/// otherwise (exit 1).
async fn healthcheck(args: HealthcheckArgs) -> anyhow::Result<()> {
    let url = match args.url {
        Some(url) => url,
        None => {
            let addr = match &args.config {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("{}: cannot read", path.display()))?;
                    crate::config::probe_address(&text, &path.display().to_string(), &ProcessEnv)?
                }
                None => crate::config::probe_address("", crate::config::NO_FILE, &ProcessEnv)?,
            };
            format!("http://{addr}/readyz")
        }
    };
    let shown = crate::config::redacted_url(&url);
    let timeout = std::time::Duration::from_secs(args.timeout.max(1));
    match crate::healthcheck::probe(&url, timeout).await {
        Ok(answer) => {
            println!("ready: {shown} answered {answer}");
            Ok(())
        }
        Err(crate::healthcheck::NotReady::Answered(answer)) => {
            bail!("not ready: {shown} answered {answer}")
        }
        Err(crate::healthcheck::NotReady::Unreachable(error)) => {
            bail!("not ready: {shown}: {}", error_chain(error.as_ref()))
        }
    }
}

/// An error and its causes on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

fn sign(args: SignArgs) -> anyhow::Result<()> {
    let secret = read_secret(args.secret_file.as_deref(), "PUHURI_APPROVER_SIGN_SECRET")?
        .context("`--secret-file` or `PUHURI_APPROVER_SIGN_SECRET` is required")?;
    let secret = secret.expose();
    let body = if args.body == Path::new("-") {
        let mut body = Vec::new();
        std::io::stdin()
            .read_to_end(&mut body)
            .context("cannot read standard input")?;
        body
    } else {
        std::fs::read(&args.body)
            .with_context(|| format!("{}: cannot read", args.body.display()))?
    };
    let id = args
        .id
        .unwrap_or_else(|| format!("msg_{}", uuid::Uuid::new_v4().simple()));
    if !signature::is_valid_id(&id) {
        bail!("--id: expected 1 to 256 printable ASCII characters without spaces");
    }
    if let SignScheme::Github = args.scheme {
        let secret = GithubSecret::parse(secret).map_err(|e| anyhow::anyhow!("the secret: {e}"))?;
        let value = secret.sign(&body);
        let (delivery, signature) = (
            signature::HEADER_GITHUB_DELIVERY,
            signature::HEADER_GITHUB_SIGNATURE,
        );
        if args.curl {
            println!("-H {delivery}:{id} -H {signature}:{value}");
        } else {
            println!("{delivery}: {id}");
            println!("{signature}: {value}");
        }
        return Ok(());
    }
    let secret = WebhookSecret::parse(secret).map_err(|e| anyhow::anyhow!("the secret: {e}"))?;
    let timestamp = match args.timestamp {
        Some(ts) => ts,
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
    };
    let value = secret.sign(&id, timestamp, &body);
    if args.curl {
        println!(
            "-H {}:{id} -H {}:{timestamp} -H {}:{value}",
            signature::HEADER_ID,
            signature::HEADER_TIMESTAMP,
            signature::HEADER_SIGNATURE
        );
    } else {
        println!("{}: {id}", signature::HEADER_ID);
        println!("{}: {timestamp}", signature::HEADER_TIMESTAMP);
        println!("{}: {value}", signature::HEADER_SIGNATURE);
    }
    Ok(())
}

/// The records naming an allocation Puhuri Core takes no usage for, from one paginated
/// list of the provider's allocations in `OK`, `Updating` or `Terminating`.
async fn unknown_allocations(
    config: &Config,
    records: &[(usize, crate::usage::UsageRecord)],
) -> anyhow::Result<Vec<crate::usage::file::LineError>> {
    use puhuri_client::ResourceRef;
    config
        .require(
            "usage push",
            crate::config::Needs {
                puhuri: true,
                ..Default::default()
            },
        )
        .context(
            "the allocations are checked in Puhuri Core before queueing (`--no-lookup` skips it)",
        )?;
    let client = config.puhuri.client()?;
    let allocations = client.list_reportable().await.context(
        "cannot list the allocations in Puhuri Core to check the file (`--no-lookup` skips it)",
    )?;
    let uuids: std::collections::HashSet<&str> = allocations
        .iter()
        .map(|a| a.resource_uuid.as_str())
        .collect();
    let backend_ids: std::collections::HashSet<&str> = allocations
        .iter()
        .filter_map(|a| a.backend_id.as_deref())
        .collect();
    Ok(records
        .iter()
        .filter_map(|(line, record)| {
            let (field, known, name) = match &record.allocation {
                ResourceRef::Uuid(uuid) => (
                    "resource_uuid",
                    uuids.contains(uuid.as_str()),
                    uuid.as_str(),
                ),
                ResourceRef::BackendId(id) => {
                    ("backend_id", backend_ids.contains(id.as_str()), id.as_str())
                }
            };
            (!known).then(|| crate::usage::file::LineError {
                line: *line,
                field: field.into(),
                message: crate::usage::file::Problem::UnknownAllocation(name.to_owned()),
            })
        })
        .collect())
}

/// Where the tools (`dlq`, `team`, `usage push`) look for the deployment's configuration
/// when neither `--config` nor `PUHURI_APPROVER_CONFIG` names one: the file the systemd
/// unit runs with.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/puhuri-approver/puhuri-approver.toml";

/// The configuration of a tool: `--config` (or `PUHURI_APPROVER_CONFIG`), else
/// [`DEFAULT_CONFIG_PATH`] when it exists, else defaults and environment variables. The
/// same environment overrides as `serve` apply; `[[sources]]` and their secrets are not
/// read, since no tool receives notifications.
fn tool_config(path: Option<&Path>) -> anyhow::Result<Config> {
    let default = Path::new(DEFAULT_CONFIG_PATH);
    Ok(match path {
        Some(path) => Config::load_without_sources(path, &ProcessEnv)?,
        None if default.exists() => {
            eprintln!("reading {DEFAULT_CONFIG_PATH} (`--config FILE` reads another)");
            Config::load_without_sources(default, &ProcessEnv)?
        }
        None => Config::from_env_without_sources(&ProcessEnv)?,
    })
}

/// The RabbitMQ nodes of the configuration, without credentials.
fn redacted_urls(amqp: &puhuri_queue::AmqpConfig) -> String {
    amqp.urls
        .iter()
        .map(|url| crate::config::redacted_url(url.expose()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The deployment's queue, as it is: an embedded queue must exist already (a tool never
/// creates one, so a wrong folder is an error rather than an empty queue), and RabbitMQ's
/// exchanges and queues are only checked (passive declarations), never declared.
async fn open_existing_queue(
    config: &Config,
    stop: &CancellationToken,
) -> anyhow::Result<puhuri_queue::Broker> {
    let mut config = config.clone();
    match &config.queue {
        crate::config::QueueChoice::Embedded { data_dir, .. } => {
            if !puhuri_queue::embedded::exists(data_dir) {
                let origin = if config.origin == crate::config::NO_FILE {
                    format!(
                        "the default, as no configuration was named (`--config FILE`, \
                         `PUHURI_APPROVER_CONFIG`) and {DEFAULT_CONFIG_PATH} does not exist"
                    )
                } else {
                    format!("from {}", config.origin)
                };
                bail!(
                    "no embedded queue in `{}` ({origin}, or env `PUHURI_APPROVER_DATA_DIR`); \
                     name the configuration the service runs with; nothing was created",
                    data_dir.display()
                );
            }
        }
        crate::config::QueueChoice::RabbitMq => {
            config.amqp.declare = false;
            puhuri_queue::rabbitmq::check_declared(
                &config.amqp,
                config.worker.retry_delays.clone(),
            )
            .await
            .map_err(|error| {
                anyhow::anyhow!(
                    "RabbitMQ at {}: {error}; the exchanges and queues of prefix `{}` are \
                         declared by a worker when it starts, never by this command",
                    redacted_urls(&config.amqp),
                    config.amqp.prefix
                )
            })?;
        }
    }
    let broker = app::open_queue(&config, stop.clone())?;
    let connected = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        broker.wait_connected(stop),
    )
    .await;
    if connected != Ok(true) {
        bail!(
            "cannot use RabbitMQ at {} within 15 s: it is unreachable, or the exchanges and \
             queues of prefix `{}` are not declared there (a worker declares them when it \
             starts; the warnings above name what is missing)",
            redacted_urls(&config.amqp),
            config.amqp.prefix
        );
    }
    Ok(broker)
}

/// The review queue over the configuration's Puhuri Core and policy.
async fn review_source(
    config: &Config,
    origin: Option<&Path>,
) -> anyhow::Result<crate::review::Review> {
    config.require(
        "review",
        crate::config::Needs {
            puhuri: true,
            policy: true,
            ..Default::default()
        },
    )?;
    let Some((_, policy)) = load_named_policy(config, origin)? else {
        bail!("`review` needs `policy.file`");
    };
    let client = config.puhuri.client()?;
    let report = crate::probe::probe(&client, &config.puhuri).await?;
    client.set_api(report.api);
    let customers = match &config.policy_customers_file {
        Some(path) => crate::customers::CustomerDirectory::load(&resolve_relative(
            origin.unwrap_or(Path::new(".")),
            path,
        ))?,
        None => crate::customers::CustomerDirectory::default(),
    };
    Ok(crate::review::Review::new(
        client,
        crate::reload::PolicyHandle::new(policy),
        customers,
        config.puhuri.offerings.clone(),
    ))
}

/// The operator for the CLI: `--as`, else the OS user.
fn cli_operator(name: Option<String>) -> anyhow::Result<String> {
    match name
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
    {
        Some(name) if !name.trim().is_empty() => Ok(name),
        _ => bail!(
            "no operator name: pass `--as NAME` (the OS user is not known: `USER` is not set)"
        ),
    }
}

async fn review(args: ReviewArgs) -> anyhow::Result<()> {
    use crate::review::{Filter, age_text, amounts};
    let config = tool_config(args.config.as_deref())?;
    let origin = args.config.as_deref().or_else(|| {
        let default = Path::new(DEFAULT_CONFIG_PATH);
        default.exists().then_some(default)
    });
    match args.command {
        ReviewCommand::List {
            json,
            offering,
            rule,
        } => {
            let review = review_source(&config, origin).await?;
            let held = review.list(&Filter { offering, rule }).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&held)?);
                return Ok(());
            }
            let rows = held
                .iter()
                .map(|h| {
                    vec![
                        h.id.clone(),
                        age_text(h.age_secs),
                        h.offering.name.clone(),
                        h.project.name.clone(),
                        h.customer.name.clone(),
                        amounts(&h.limits),
                        h.rule.clone().unwrap_or_else(|| "default".into()),
                        shorten(&h.note, 60),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "ID",
                        "AGE",
                        "OFFERING",
                        "PROJECT",
                        "ORGANISATION",
                        "LIMITS",
                        "RULE",
                        "NOTE"
                    ],
                    rows
                )
            );
            println!(
                "{} held for a person",
                plural(held.len(), "allocation", "allocations")
            );
            Ok(())
        }
        ReviewCommand::Show { id } => {
            let review = review_source(&config, origin).await?;
            let shown = review.show(&id).await?;
            let h = &shown.held;
            println!("allocation {} ({})", h.id, h.name);
            println!("  order:        {}", h.order_uuid);
            println!("  offering:     {}", h.offering.name);
            println!("  project:      {}", h.project.name);
            println!("  organisation: {}", h.customer.name);
            println!(
                "  requested by: {}",
                if h.requested_by.is_empty() {
                    "-"
                } else {
                    &h.requested_by
                }
            );
            println!(
                "  requested:    {} ({} ago)",
                h.created,
                age_text(h.age_secs)
            );
            println!("  ends:         {}", h.end_date.as_deref().unwrap_or("-"));
            println!("  limits:       {}", amounts(&h.limits));
            println!(
                "  granted:      organisation {}; project {}",
                amounts(&h.granted.customer),
                amounts(&h.granted.project)
            );
            let verdict = &shown.explanation.verdict;
            print_explanation(&shown.explanation, "decision now");
            if let Action::Hold { note } = &verdict.action {
                println!("note: {note}");
            }
            for reason in &verdict.reasons {
                println!("  - {reason}");
            }
            match (&shown.not_waiting, &shown.manual_backend_id) {
                (Some(state), _) => println!(
                    "it does not wait for the provider ({state}): an operator's decision writes nothing"
                ),
                (None, Ok(backend_id)) => {
                    println!("an operator's approval sets backend_id {backend_id} ([manual])")
                }
                (None, Err(why)) => println!("an operator's approval would hold it again: {why}"),
            }
            Ok(())
        }
        ReviewCommand::Approve {
            id,
            comment,
            operator,
        } => {
            review_decide(
                &config,
                origin,
                &id,
                crate::notification::OperatorAction::Approve,
                operator,
                &comment,
            )
            .await
        }
        ReviewCommand::Reject {
            id,
            reason,
            operator,
        } => {
            review_decide(
                &config,
                origin,
                &id,
                crate::notification::OperatorAction::Reject,
                operator,
                &reason,
            )
            .await
        }
    }
}

async fn review_decide(
    config: &Config,
    origin: Option<&Path>,
    id: &str,
    action: crate::notification::OperatorAction,
    operator: Option<String>,
    comment: &str,
) -> anyhow::Result<()> {
    let operator = cli_operator(operator)?;
    // Checked before anything is read or opened.
    crate::notification::OperatorDecision::new(action, &operator, comment)
        .map_err(|problem| anyhow::anyhow!("{problem}"))?;
    let review = review_source(config, origin).await?;
    let stop = CancellationToken::new();
    let broker = open_existing_queue(config, &stop).await?;
    let queued = review.decide(&broker, id, action, &operator, comment).await;
    stop.cancel();
    let work = queued?;
    println!(
        "{} of {} by {} queued ({}); a worker writes it while the allocation still waits",
        match action {
            crate::notification::OperatorAction::Approve => "approval",
            crate::notification::OperatorAction::Reject => "rejection",
        },
        work.item.hint,
        work.operator.name,
        work.item.id
    );
    Ok(())
}

async fn team(args: TeamArgs) -> anyhow::Result<()> {
    let config = tool_config(args.config.as_deref())?;
    config.require(
        "team",
        crate::config::Needs {
            puhuri: true,
            ..Default::default()
        },
    )?;
    let client = config.puhuri.client()?;
    let allocation = match crate::notification::WaldurUuid::parse(&args.resource) {
        Some(uuid) => crate::usage::ResourceRef::Uuid(uuid),
        None => crate::usage::ResourceRef::BackendId(args.resource.clone()),
    };
    let uuid = client
        .find_resource(&allocation)
        .await?
        .map_err(anyhow::Error::new)?
        .uuid;
    let members = client.team(&uuid).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&members)?);
        return Ok(());
    }
    let rows = members
        .iter()
        .map(|m| {
            vec![
                m.username.clone(),
                m.role.clone().unwrap_or_else(|| "-".into()),
                m.full_name.clone(),
                m.email.clone(),
                m.expiration_time.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["USERNAME", "ROLE", "FULL NAME", "EMAIL", "EXPIRES"], rows)
    );
    println!(
        "{} of allocation {uuid}",
        plural(members.len(), "member", "members")
    );
    Ok(())
}

async fn usage_push(
    config: Option<&Path>,
    file: &Path,
    format: crate::usage::file::Format,
    lookup: bool,
) -> anyhow::Result<()> {
    use crate::usage::file;
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("{}: cannot read", file.display()))?;
    let format = file::detect(file, &text, format);
    let mut parsed = file::parse(&text, format);
    // Puhuri Core takes usage only for the current month: refuse the rest before queueing.
    let now = time::OffsetDateTime::now_utc();
    for (line, record) in &parsed.records {
        if let Err(message) = crate::usage::check_month(record.month, now) {
            parsed.errors.push(file::LineError {
                line: *line,
                field: "month".into(),
                message: message.into(),
            });
        }
    }
    let config = tool_config(config)?;
    if lookup && !parsed.records.is_empty() {
        parsed
            .errors
            .extend(unknown_allocations(&config, &parsed.records).await?);
    }
    parsed.errors.sort_by_key(|e| e.line);
    if !parsed.errors.is_empty() {
        for e in parsed.errors.iter().take(50) {
            eprintln!("{}:{}: {}: {}", file.display(), e.line, e.field, e.message);
        }
        if parsed.errors.len() > 50 {
            eprintln!("... and {} more", parsed.errors.len() - 50);
        }
        let lines: std::collections::BTreeSet<usize> =
            parsed.errors.iter().map(|e| e.line).collect();
        bail!(
            "{}: {}; nothing was queued",
            file.display(),
            plural(lines.len(), "invalid record", "invalid records")
        );
    }
    if parsed.records.is_empty() {
        bail!("{}: no usage records in the file", file.display());
    }
    let stop = CancellationToken::new();
    let broker = open_existing_queue(&config, &stop).await?;
    let summary = crate::usage::push::push(&broker, &parsed.records).await;
    stop.cancel();
    let rate = summary.queued as f64 / summary.elapsed.as_secs_f64().max(0.001);
    let allocations: std::collections::BTreeSet<_> =
        parsed.records.iter().map(|(_, r)| r.key()).collect();
    println!(
        "{}: {} read ({format}), {} queued in {:.2} s ({rate:.0}/s) on {}",
        file.display(),
        plural(parsed.records.len(), "record", "records"),
        summary.queued,
        summary.elapsed.as_secs_f64(),
        broker.describe()
    );
    println!(
        "  {}; the workers report each changed total to Puhuri Core once",
        plural(allocations.len(), "allocation-month", "allocation-months")
    );
    if let Some((line, error)) = summary.failed {
        bail!(
            "{}:{line}: not queued: {error}; {} not queued (pushing the file again is safe: records are month-to-date readings)",
            file.display(),
            plural(
                parsed.records.len() - summary.queued,
                "record was",
                "records were"
            )
        );
    }
    Ok(())
}

async fn dlq(args: DlqArgs) -> anyhow::Result<()> {
    let config = tool_config(args.config.as_deref())?;
    let stop = CancellationToken::new();
    let broker = open_existing_queue(&config, &stop).await?;
    let result = match args.command {
        DlqCommand::List { limit } => {
            let letters = broker.dead_letters(limit).await?;
            if letters.is_empty() {
                println!("the dead-letter queue is empty ({})", broker.describe());
            } else {
                let rows = letters
                    .iter()
                    .map(|letter| {
                        let allocation = match crate::work::dead(letter) {
                            Ok(Work::Allocation(item)) => item.hint.to_string(),
                            Ok(Work::Operator(work)) => {
                                format!("{} by operator {}", work.item.hint, work.operator.name)
                            }
                            Ok(Work::Usage(record)) => {
                                format!("usage of {} for {}", record.allocation, record.month)
                            }
                            Ok(Work::Reconcile(request)) => {
                                format!("reconcile request from {}", request.source)
                            }
                            Err(_) => "(undecodable)".into(),
                        };
                        let reason = letter
                            .reasons
                            .last()
                            .map(|r| shorten(r, 100))
                            .unwrap_or_default();
                        vec![
                            letter.message_id.clone(),
                            letter.attempts.to_string(),
                            allocation,
                            reason,
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(&["ID", "ATTEMPTS", "ALLOCATION", "LAST REASON"], rows)
                );
                println!(
                    "{} shown (`dlq show ID` prints every reason in full)",
                    plural(letters.len(), "dead letter", "dead letters")
                );
            }
            Ok(())
        }
        DlqCommand::Show { id } => {
            let letters = broker.dead_letters(usize::MAX).await?;
            match letters.iter().find(|l| l.message_id == id) {
                None => Err(anyhow::anyhow!("no dead letter has id `{id}`")),
                Some(letter) => {
                    println!("id:        {}", letter.message_id);
                    println!("attempts:  {}", letter.attempts);
                    if let Ok(Work::Allocation(item)) = crate::work::dead(letter) {
                        println!("source:    {}", item.source);
                        println!("event:     {}", item.event_type);
                        if let Some(order) = &item.hint.order_uuid {
                            println!("order:     {order}");
                        }
                        if let Some(resource) = &item.hint.resource_uuid {
                            println!("resource:  {resource}");
                        }
                    } else {
                        println!("body:      {}", String::from_utf8_lossy(&letter.body));
                    }
                    // The newest reasons are kept (8 KiB of them): numbered by attempt.
                    let kept = u32::try_from(letter.reasons.len()).unwrap_or(u32::MAX);
                    let first = letter.attempts.saturating_sub(kept) + 1;
                    println!("reasons:");
                    if first > 1 {
                        println!("  (attempts 1 to {} are not kept)", first - 1);
                    }
                    for (attempt, reason) in (first..).zip(&letter.reasons) {
                        println!("  {attempt}. {reason}");
                    }
                    Ok(())
                }
            }
        }
        DlqCommand::Replay { id, all } | DlqCommand::Purge { id, all } if id.is_none() && !all => {
            Err(anyhow::anyhow!("name a dead letter id, or pass `--all`"))
        }
        DlqCommand::Replay { id, .. } => settle_dead(&broker, id, true).await,
        DlqCommand::Purge { id, .. } => settle_dead(&broker, id, false).await,
    };
    stop.cancel();
    result
}

/// Replays (`replay`) or purges one dead letter (`id`) or all of them.
async fn settle_dead(
    broker: &puhuri_queue::Broker,
    id: Option<String>,
    replay: bool,
) -> anyhow::Result<()> {
    use puhuri_queue::Select;
    let verb = if replay { "replayed" } else { "purged" };
    let select = id.as_deref().map(Select::One).unwrap_or(Select::All);
    let done = broker
        .settle_dead_letters(select, replay, progress_line(verb))
        .await?;
    finish_progress();
    match (done, id) {
        (0, Some(id)) => Err(anyhow::anyhow!("no dead letter has id `{id}`")),
        (n, _) if replay => {
            println!(
                "replayed {} to the work queue",
                plural(n, "dead letter", "dead letters")
            );
            Ok(())
        }
        (n, _) => {
            println!("purged {}", plural(n, "dead letter", "dead letters"));
            Ok(())
        }
    }
}

/// A progress line on standard error: rewritten in place on a terminal, every 100
/// messages otherwise.
fn progress_line(verb: &'static str) -> impl FnMut(usize, usize) {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    move |done, total| {
        if terminal {
            eprint!("\r{verb} {done}/{total}");
        } else if done % 100 == 0 || done == total {
            eprintln!("{verb} {done}/{total}");
        }
    }
}

fn finish_progress() {
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!();
    }
}

#[cfg(test)]
mod tests {
    use super::{plural, shorten, table};

    #[test]
    fn columns_stay_aligned_for_long_values() {
        let out = table(
            &["ID", "N", "LAST"],
            vec![
                vec![
                    "a-much-longer-identifier-than-the-header".into(),
                    "1".into(),
                    "x".into(),
                ],
                vec!["b".into(), "12345".into(), "y y".into()],
            ],
        );
        let lines: Vec<&str> = out.lines().collect();
        let column = |line: &str, text: &str| line.find(text).expect("present");
        assert_eq!(column(lines[0], "N"), column(lines[1], "1"));
        assert_eq!(column(lines[0], "N"), column(lines[2], "12345"));
        assert_eq!(column(lines[0], "LAST"), column(lines[2], "y y"));
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{out}");
    }

    #[test]
    fn long_reasons_are_cut_between_words() {
        assert_eq!(shorten("short", 10), "short");
        let cut = shorten("Puhuri Core answered 503 Service Unavailable", 30);
        assert_eq!(cut, "Puhuri Core answered 503…");
        assert_eq!(shorten("abcdefghijklmnopqrstuvwxyz", 10), "abcdefghi…");
    }

    #[test]
    fn counts_have_plurals() {
        assert_eq!(plural(1, "source", "sources"), "1 source");
        assert_eq!(plural(0, "source", "sources"), "0 sources");
        assert_eq!(plural(3, "dead letter", "dead letters"), "3 dead letters");
    }
}
