//! `puhuri-sim`: the Puhuri Core simulator as a process, for the demo scripts, manual tries
//! and benchmarks. Tests start it in-process through the library instead.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use puhuri_auth::Secret;
use puhuri_auth::secret::read_secret;
use puhuri_auth::signature::WebhookSecret;
use puhuri_sim::{HookFormat, HookTarget, Sim, SimConfig, WaldurVersion};
use tokio_util::sync::CancellationToken;

/// The Puhuri Core (Waldur) simulator: the service provider's API of one Waldur release, and
/// an admin API under `/admin/` to create allocations and inject faults.
#[derive(Debug, Parser)]
#[command(name = "puhuri-sim", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// File holding the API token the simulator accepts (`Authorization: Token <token>`);
    /// otherwise env `PUHURI_SIM_TOKEN`, otherwise `sim-token`.
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Announce each created allocation to this URL. For `waldur-hook`, the receiver's
    /// path secret is appended as the last path segment from `--hook-secret-file` (or env
    /// `PUHURI_SIM_HOOK_SECRET`), so it never stands on the command line.
    #[arg(long)]
    hook_url: Option<String>,
    /// Format of the announcement: Waldur's unsigned hook or a signed `allocation` notification.
    #[arg(long, default_value = "allocation")]
    hook_format: SimHookFormat,
    /// File holding the secret that signs `allocation` announcements (`whsec_...`), or the
    /// path secret appended to a `waldur-hook` URL; otherwise env `PUHURI_SIM_HOOK_SECRET`.
    #[arg(long, value_name = "PATH")]
    hook_secret_file: Option<PathBuf>,
    /// Give API tokens a sliding lifetime in seconds (Waldur's `TOKEN_LIFETIME`): a token
    /// unused for longer answers 401 `Token has expired.`.
    #[arg(long, value_name = "SECS")]
    token_lifetime_secs: Option<u64>,
    /// Start with an empty catalogue instead of the default offerings and organisations.
    #[arg(long)]
    no_seed: bool,
    /// The Waldur release to behave as: `2021` serves only the 2021 API
    /// (`marketplace-resources/.../set_state_by_provider/`); `7.0` (strict: provider-resource
    /// `set_as_erred` is staff-only, orders without `created_by_username`) and `8.0` serve
    /// only the current API (`marketplace-orders`, `marketplace-provider-resources`).
    #[arg(long, value_name = "VERSION", default_value = "7.0")]
    waldur: WaldurVersion,
    // Waldur's event stream: with env `PUHURI_SIM_EVENTS_AMQP_URL` and
    // `PUHURI_SIM_EVENTS_MANAGEMENT_URL` (a RabbitMQ with the management and web-STOMP
    // plugins, administrator credentials in the URLs; environment only, never argv), the
    // event registration endpoints provision queues there and order events are published to
    // them; without them registration answers 500.
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SimHookFormat {
    WaldurHook,
    Allocation,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let token = read_secret(args.token_file.as_deref(), "PUHURI_SIM_TOKEN")?
        .unwrap_or_else(|| Secret::new("sim-token"));
    let hook = match args.hook_url {
        None => None,
        Some(url) => {
            let secret = read_secret(args.hook_secret_file.as_deref(), "PUHURI_SIM_HOOK_SECRET")?;
            let (url, format) = match args.hook_format {
                SimHookFormat::WaldurHook => match secret {
                    // Waldur's hooks cannot sign: the receiver's path secret ends the URL.
                    Some(secret) => (
                        puhuri_sim::url_with_path_secret(&url, secret.expose()),
                        HookFormat::WaldurHook,
                    ),
                    None => (url, HookFormat::WaldurHook),
                },
                SimHookFormat::Allocation => {
                    let secret = secret.context(
                        "`--hook-secret-file` or `PUHURI_SIM_HOOK_SECRET` is required for `allocation` hooks",
                    )?;
                    let secret = WebhookSecret::parse(secret.expose())
                        .map_err(|e| anyhow::anyhow!("the hook secret: {e}"))?;
                    (url, HookFormat::Allocation { secret })
                }
            };
            Some(HookTarget { url, format })
        }
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let sim = Sim::new(SimConfig {
        tokens: vec![token],
        hook,
        seed: !args.no_seed,
        public_url: Some(format!("http://{addr}")),
        waldur: args.waldur,
    });
    sim.set_token_lifetime(args.token_lifetime_secs.map(std::time::Duration::from_secs));
    if let (Ok(amqp_url), Ok(management_url)) = (
        std::env::var("PUHURI_SIM_EVENTS_AMQP_URL"),
        std::env::var("PUHURI_SIM_EVENTS_MANAGEMENT_URL"),
    ) {
        sim.set_event_broker(puhuri_sim::EventBroker {
            amqp_url,
            management_url,
        });
        tracing::info!("order events are published to the configured RabbitMQ");
    }
    tracing::info!(listen = %addr, waldur = %args.waldur, "Puhuri Core simulator listening (API under /api/, admin under /admin/)");
    let stop = CancellationToken::new();
    let server = tokio::spawn(sim.serve(listener, stop.clone()));
    shutdown_signal().await;
    stop.cancel();
    server.await??;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
