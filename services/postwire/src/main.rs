//! `postwire`: load settings, start telemetry, run the chosen command until shutdown.

use clap::Parser;
use postwire::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Some(Command::RenderTemplate)) {
        // A render child of the gateway: no runtime, no settings, no logs; its limits are
        // lowered before the first job is read.
        let stdin = std::io::stdin().lock();
        let stdout = std::io::stdout().lock();
        return match postwire_api_gateway::renderer::serve_render_jobs(stdin, stdout) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(_) => std::process::ExitCode::FAILURE,
        };
    }
    postwire_telemetry::init_tracing();
    let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
    match runtime.block_on(postwire::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postwire: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
