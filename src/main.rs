use clap::Parser;
use puhuri_approver::cli::{self, Cli};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    cli::init_logging(&cli);
    let code = match cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    };
    // Spans still queued for an OpenTelemetry collector, when one is configured.
    puhuri_approver::otel::shutdown(std::time::Duration::from_secs(3));
    code
}
