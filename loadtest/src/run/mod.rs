//! `tandem-loadtest run`: load on the orders API, open-loop (a fixed arrival rate; latency is
//! measured from each request's intended start, so a stalled server cannot hide its queue:
//! coordinated omission is corrected) or closed-loop (a fixed number of clients), with
//! HdrHistogram latencies, throughput and errors by kind; and, with `--verify`, a comparison
//! of the old and new databases afterwards.

mod mix;
mod report;
mod verify;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use mix::{Mix, Operation};
pub use report::{Errors, Latencies, Report};

/// Requests in flight at most in open-loop mode; past it, arrivals are counted as `overload`
/// errors instead of piling up without bound.
const MAX_IN_FLIGHT: usize = 10_000;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table for people.
    Table,
    /// JSON for scripts.
    Json,
}

/// `tandem-loadtest run` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The orders API: a service directly, or a tandem proxy in front of two.
    #[arg(long)]
    pub target: String,
    /// Open loop: requests started per second, whatever the answers take.
    #[arg(
        long,
        conflicts_with = "concurrency",
        required_unless_present = "concurrency"
    )]
    pub rate: Option<u64>,
    /// Closed loop: clients each sending their next request when the last is answered.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// How long to send.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Operation weights.
    #[arg(long, default_value = "put=40,patch=20,get=35,delete=5")]
    pub mix: Mix,
    /// Order ids drawn from 1..=KEYS.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Output format (default: a table on a terminal, JSON otherwise).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Afterwards, compare these two databases (old, new) and report the divergences.
    #[arg(long, num_args = 2, value_names = ["OLD_DB_URL", "NEW_DB_URL"])]
    pub verify: Option<Vec<String>>,
    /// A tandem proxy's admin URL: before verifying, wait until its mirror queue is empty.
    #[arg(long)]
    pub admin: Option<String>,
    /// Longest wait for one answer (counted as a `timeout` error).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub timeout: Duration,
    /// Seed of the request sequence (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered as the API promises (a 404 for an order not written yet included).
    Ok,
    /// Another 4xx.
    ClientError,
    /// A 5xx.
    ServerError,
    /// No answer within `--timeout`.
    Timeout,
    /// The connection was refused (nothing listening).
    Connect,
    /// The connection broke while the request was under way.
    Broken,
    /// The generator was saturated (open loop only).
    Overload,
}

/// One request's latency and outcome.
struct Sample {
    latency: Duration,
    outcome: Outcome,
}

/// Runs the load as `args` says and prints the report.
///
/// # Errors
/// When the arguments are unusable or the verification cannot run.
pub async fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.keys > 0, "--keys must be at least 1");
    anyhow::ensure!(args.rate != Some(0), "--rate must be at least 1");
    anyhow::ensure!(
        args.concurrency != Some(0),
        "--concurrency must be at least 1"
    );
    let client = reqwest::Client::builder()
        .timeout(args.timeout)
        .pool_max_idle_per_host(1024)
        .build()?;
    let target = args.target.trim_end_matches('/').to_owned();
    let (samples, received) = mpsc::unbounded_channel();
    let collector = tokio::spawn(collect(received));
    let generator = Generator {
        client,
        target: target.clone(),
        mix: args.mix.clone(),
        keys: args.keys,
        samples,
    };
    match (args.rate, args.concurrency) {
        (Some(rate), _) => generator.open_loop(rate, args.duration).await,
        (None, Some(clients)) => generator.closed_loop(clients, args.duration).await,
        (None, None) => anyhow::bail!("give --rate (open loop) or --concurrency (closed loop)"),
    }
    // Throughput is over the sending period; the wait for the last answers is not part of it.
    let elapsed = args.duration;
    let (histogram, errors, ok) = collector.await?;
    let mut report = Report::new(
        &target,
        args.rate,
        args.concurrency,
        elapsed,
        &histogram,
        errors,
        ok,
    );
    if let Some(urls) = &args.verify {
        if let Some(admin) = &args.admin {
            verify::drained(admin).await?;
        }
        report.verify = Some(verify::compare_orders(&urls[0], &urls[1]).await?);
    }
    let format = args.format.unwrap_or(if std::io::stdout().is_terminal() {
        Format::Table
    } else {
        Format::Json
    });
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => print!("{}", report.table()),
    }
    Ok(match &report.verify {
        Some(verified) if !verified.identical => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    })
}

/// Sends requests and hands each one's sample to the collector.
struct Generator {
    client: reqwest::Client,
    target: String,
    mix: Mix,
    keys: u64,
    samples: mpsc::UnboundedSender<Sample>,
}

impl Generator {
    /// A fixed arrival rate: request `i` is due at `i / rate` seconds; its latency counts from
    /// then, however late it could actually start.
    async fn open_loop(self, rate: u64, duration: Duration) {
        let this = Arc::new(self);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0u64.. {
            let due = start + interval.mul_f64(index as f64);
            if due >= start + duration {
                break;
            }
            tokio::time::sleep_until(due).await;
            if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                let _ = this.samples.send(Sample {
                    latency: Duration::ZERO,
                    outcome: Outcome::Overload,
                });
                continue;
            }
            in_flight.fetch_add(1, Ordering::Relaxed);
            let (this, in_flight) = (Arc::clone(&this), Arc::clone(&in_flight));
            tasks.spawn(async move {
                let outcome = this.send(index).await;
                let _ = this.samples.send(Sample {
                    latency: due.elapsed(),
                    outcome,
                });
                in_flight.fetch_sub(1, Ordering::Relaxed);
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }

    /// A fixed number of clients, each sending its next request when the last is answered.
    async fn closed_loop(self, clients: usize, duration: Duration) {
        let this = Arc::new(self);
        let end = Instant::now() + duration;
        let mut tasks = tokio::task::JoinSet::new();
        for client in 0..clients {
            let this = Arc::clone(&this);
            tasks.spawn(async move {
                let mut index = client as u64;
                while Instant::now() < end {
                    let started = Instant::now();
                    let outcome = this.send(index).await;
                    let _ = this.samples.send(Sample {
                        latency: started.elapsed(),
                        outcome,
                    });
                    index += clients as u64;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Sends request `index` of the sequence.
    async fn send(&self, index: u64) -> Outcome {
        let mut rng = fastrand::Rng::with_seed(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let operation = self.mix.pick(rng.u32(..));
        let id = rng.u64(1..=self.keys);
        let url = format!("{}/orders/{id}", self.target);
        let status = ["open", "paid", "shipped"][rng.usize(0..3)];
        let request = match operation {
            Operation::Put => self.client.put(&url).json(&json!({
                "customer": format!("customer-{}", id % 997),
                "amount": format!("{}.{:02}", rng.u32(1..10_000), rng.u32(0..100)),
                "status": status,
            })),
            Operation::Patch => self.client.patch(&url).json(&json!({ "status": status })),
            Operation::Get => self.client.get(&url),
            Operation::Delete => self.client.delete(&url),
        };
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                // Reading the body is part of the request's time.
                let _ = response.bytes().await;
                if status.is_success()
                    || (status == reqwest::StatusCode::NOT_FOUND && operation != Operation::Put)
                {
                    Outcome::Ok
                } else if status.is_server_error() {
                    Outcome::ServerError
                } else {
                    Outcome::ClientError
                }
            }
            Err(err) if err.is_timeout() => Outcome::Timeout,
            Err(err) if err.is_connect() => Outcome::Connect,
            Err(_) => Outcome::Broken,
        }
    }
}

/// Records every sample until the generator is done.
async fn collect(mut samples: mpsc::UnboundedReceiver<Sample>) -> (Histogram<u64>, Errors, u64) {
    // Microseconds from 1 µs to an hour, 3 significant digits.
    let mut histogram =
        Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
    let (mut errors, mut ok) = (Errors::default(), 0);
    while let Some(sample) = samples.recv().await {
        if sample.outcome != Outcome::Overload {
            let micros = u64::try_from(sample.latency.as_micros()).unwrap_or(u64::MAX);
            histogram.saturating_record(micros.max(1));
        }
        match sample.outcome {
            Outcome::Ok => ok += 1,
            other => errors.count(other),
        }
    }
    (histogram, errors, ok)
}
