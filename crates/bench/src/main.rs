//! `puhuri-bench`: measures the service (the `puhuri-approver` executable beside this one,
//! or `PUHURI_APPROVER_BIN`) against the simulator. See README.md, "Benchmarks".

use std::path::PathBuf;

use clap::Parser;
use puhuri_auth::Secret;
use puhuri_bench::{BackendChoice, BenchOptions};

/// Measure the service against the simulator: ingest rate, latencies, decisions per
/// second, RSS and CPU, with a RabbitMQ baseline in the same run.
#[derive(Debug, Parser)]
#[command(name = "puhuri-bench", version, about)]
struct Args {
    /// Queue backends to measure (RabbitMQ from env PUHURI_APPROVER_AMQP_URL, default
    /// guest@127.0.0.1).
    #[arg(long, value_enum, default_value = "both")]
    backend: BackendChoice,
    /// Notifications per second of the rate phase.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of each load phase (and of the baseline).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Latency added to every simulator call in the latency and burst phases; 0 skips
    /// both.
    #[arg(long, default_value_t = 50)]
    upstream_latency_ms: u64,
    /// Notifications per second of the latency phase.
    #[arg(long, default_value_t = 20.0)]
    upstream_rate: f64,
    /// Notifications sent at once in the burst phase (100000 for the full burst); 0 skips
    /// it.
    #[arg(long, default_value_t = 2000)]
    burst: usize,
    /// `puhuri.max_in_flight` of the service under test (the burst drains under it).
    #[arg(long, default_value_t = 16)]
    max_in_flight: usize,
    /// `team.snapshot_on_approval` of the service under test (`false` leaves team events to
    /// the watcher: one GET and one event less per approval).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    team_snapshots: bool,
    /// Requests in flight in the as-fast-as-accepted ingest phase, and publishes in flight
    /// of the baseline.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// `worker.prefetch` of the service under test.
    #[arg(long, default_value_t = 512)]
    prefetch: u16,
    /// Pending allocations the reconcile measurement lists (100000 for the full one); 0
    /// skips it.
    #[arg(long, default_value_t = 10_000)]
    reconcile: usize,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let result = puhuri_bench::run(BenchOptions {
        backend: args.backend,
        rate: args.rate,
        duration: std::time::Duration::from_secs_f64(args.duration.clamp(0.5, 600.0)),
        upstream_latency_ms: args.upstream_latency_ms,
        upstream_rate: args.upstream_rate,
        burst: args.burst,
        max_in_flight: args.max_in_flight.clamp(1, 1024),
        team_snapshots: args.team_snapshots,
        concurrency: args.concurrency.max(1),
        prefetch: args.prefetch.max(1),
        reconcile: args.reconcile,
        json: args.json,
        amqp_url: Secret::new(
            std::env::var("PUHURI_APPROVER_AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
        ),
    })
    .await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
