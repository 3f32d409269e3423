//! `tandem-loadtest`: runs the sample orders service.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tandem_loadtest::orders::{orders_router, OrderStore};

/// Sample service and load generator for tandem.
#[derive(Debug, Parser)]
#[command(name = "tandem-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the sample "orders" REST API on a database (created if absent).
    Serve {
        /// Database URL: sqlite://FILE, postgres://… or mysql://….
        #[arg(long, env = "TANDEM_LOADTEST_DB")]
        db: String,
        /// Address to listen on (port 0 picks a free one).
        #[arg(long, env = "TANDEM_LOADTEST_LISTEN", default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { db, listen } => {
            let store = OrderStore::open(&db)
                .await
                .context("cannot open the orders database")?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            println!(
                "orders service listening on http://{}",
                listener.local_addr()?
            );
            axum::serve(listener, orders_router(store.clone()))
                .with_graceful_shutdown(shutdown_signal())
                .await?;
            store.close().await;
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
