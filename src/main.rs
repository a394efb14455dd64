//! The `redis-handover` binary: parses settings, sets up logging, and runs the proxy until SIGTERM/SIGINT.

use anyhow::Context;
use clap::Parser;
use redis_handover::config::{Config, LogFormat, Overrides};
use redis_handover::server::{self, Listeners};

/// A Redis proxy that upgrades a deployment from an OLD server to a NEW one live.
#[derive(Debug, Parser)]
#[command(name = "redis-handover", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Subcommand>,
    #[command(flatten)]
    overrides: Overrides,
    /// Check the configuration, print it as it would be used (passwords masked), and exit.
    #[arg(long)]
    check_config: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Subcommand {
    /// Talk to a running proxy's admin port: status, handover, abort, config.
    Ctl(redis_handover::ctl::CtlArgs),
    /// Write through a proxy for a while, then check that every acknowledged write is there.
    CheckConsistency(redis_handover::consistency::CheckArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Subcommand::Ctl(args)) => std::process::exit(redis_handover::ctl::run(args)),
        Some(Subcommand::CheckConsistency(args)) => std::process::exit(redis_handover::consistency::run_cli(args)),
        None => {}
    }
    let config = match Config::load(&cli.overrides.clone().with_environment_secrets()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("redis-handover: {error}");
            std::process::exit(2);
        }
    };
    if cli.check_config {
        print!("{}", config.masked().to_toml());
        return Ok(());
    }
    init_logging(config.log_format);
    // One thread by default: a proxy's work per command is a few syscalls, and a second worker thread mostly
    // adds wake-ups between threads (measured with scripts/bench.sh, README "Performance").
    let runtime = if config.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let proxy = server::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let admin = server::bind(&config.admin)
        .await
        .with_context(|| format!("cannot bind admin {}", config.admin))?;
    server::run(
        Listeners {
            proxy,
            admin: Some(admin),
        },
        config,
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
