//! `tandem-loadtest`: runs the sample orders service.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tandem_loadtest::faults::Faults;
use tandem_loadtest::orders::{orders_router, OrderStore};
use tandem_loadtest::propagation::PropagationArgs;
use tandem_loadtest::run::RunArgs;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
        /// Address of the fault-switch listener (`GET`/`PUT /faults`); none when absent.
        #[arg(long, env = "TANDEM_LOADTEST_ADMIN_LISTEN")]
        admin_listen: Option<SocketAddr>,
    },
    /// Drive load at an orders service (directly or through tandem) and report latency.
    Run(RunArgs),
    /// Time stage changes until every proxy routes by them (p50/p99), as JSON.
    Propagation(PropagationArgs),
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
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve {
            db,
            listen,
            admin_listen,
        } => {
            serve(&db, listen, admin_listen).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => tandem_loadtest::run::run(&args).await,
        Command::Propagation(args) => {
            let measured = tandem_loadtest::propagation::measure(&args).await?;
            println!("{}", serde_json::to_string_pretty(&measured)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Serves the orders API until SIGTERM, closing and reopening its listener as the stopped
/// switch says.
async fn serve(
    db: &str,
    listen: SocketAddr,
    admin_listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let store = OrderStore::open(db)
        .await
        .context("cannot open the orders database")?;
    let faults = Faults::default();
    let app = orders_router(store.clone()).layer(axum::middleware::from_fn_with_state(
        faults.clone(),
        Faults::apply,
    ));
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr()?;
    println!("orders service listening on http://{address}");
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown_signal().await;
            shutdown.cancel();
        }
    });
    if let Some(admin_listen) = admin_listen {
        let admin = TcpListener::bind(admin_listen)
            .await
            .with_context(|| format!("cannot listen on {admin_listen}"))?;
        println!("faults admin listening on http://{}", admin.local_addr()?);
        let router = faults.admin_router();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(admin, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        });
    }
    let mut running = faults.running();
    let mut listener = Some(listener);
    loop {
        let current = match listener.take() {
            Some(listener) => listener,
            None => TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} again"))?,
        };
        let mut stopping = running.clone();
        let stop = shutdown.clone();
        axum::serve(current, app.clone())
            .with_graceful_shutdown(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    _ = stopping.wait_for(|running| !*running) => {}
                }
            })
            .await?;
        if shutdown.is_cancelled() {
            break;
        }
        tracing::info!("stopped: the API listener is closed");
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = running.wait_for(|running| *running) => {}
        }
        tracing::info!("started again");
    }
    store.close().await;
    Ok(())
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
