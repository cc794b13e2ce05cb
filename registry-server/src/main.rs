//! The `blocks` command: start the registry server.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use registry_server::serve::{ServeArgs, start};
use tracing_subscriber::EnvFilter;

/// A secrets and configuration block registry, wire-compatible with Prefect's blocks.
#[derive(Debug, Parser)]
#[command(name = "blocks", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the registry server (SQLite under $BLOCKS_HOME unless --database-url).
    Serve(ServeArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("BLOCKS_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => match start(&args).await {
            Ok(running) => running.wait().await,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
