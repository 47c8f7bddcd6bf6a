//! `postwire`: load settings, start telemetry, run the chosen command until shutdown.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    postwire_telemetry::init_tracing();
    match postwire::cli::run(postwire::cli::Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postwire: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
