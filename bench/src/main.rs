//! # sluice-bench
//!
//! The benchmark runner for Sluice's data plane. It starts the real `sluice` binary (release
//! build) as a child process on free loopback ports, drives open-model load of binary-mode
//! CloudEvents at it, and measures end-to-end delivery latency at an HTTP sink it runs itself,
//! beside a direct baseline (the same load POSTed straight to the sink) measured in the same
//! run. Results go to a Markdown report (`docs/benchmarks.md`).
//!
//! ```text
//! load generator ──POST (raw HTTP/1.1, keep-alive)──▶ sluice ingress ──▶ channel ──▶ dispatcher ──▶ sink
//!        │  ce-benchts = scheduled send time                                                    │
//!        └──────────────────────────── direct baseline ─────────────────────────────────────────┘
//!                                            sink: latency = arrival − ce-benchts
//! ```
//!
//! Autoscaled Services (A1–A4, [`autoscale`]) run on their own with `--only a1,a2,a3,a4` and
//! write their own report section.
//!
//! Modules: [`load`] (the generator), [`durable`] (raw Kafka / NATS clients), [`sink`], [`search`] (the rate search), [`stats`]
//! (accounting and formatting), [`sluice`] (the child process and its resources), [`proc`]
//! (`/proc` readings and the shared clock), [`scenarios`], [`report`].

mod autoscale;
mod durable;
mod load;
mod proc;
mod report;
mod scenarios;
mod search;
mod sink;
mod sluice;
mod stats;

use clap::Parser;
use std::path::PathBuf;

/// Benchmarks the Sluice data plane and writes a Markdown report.
#[derive(Parser, Debug, Clone)]
#[command(name = "sluice-bench")]
pub struct Args {
    /// Write the Markdown report here (e.g. docs/benchmarks.md).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// A short smoke run: 1 s steps, a coarser search, 5 s of overload.
    #[arg(long)]
    pub quick: bool,
    /// The sluice binary. Default: build it with `cargo build --release -p sluice` and use
    /// the one beside this binary.
    #[arg(long)]
    pub sluice: Option<PathBuf>,
    /// Event data sizes in bytes for S1.
    #[arg(long, value_delimiter = ',', default_value = "128,1024,8192")]
    pub sizes: Vec<usize>,
    /// A2: events in the backlog.
    #[arg(long, default_value_t = 10_000)]
    pub backlog_events: u64,
    /// A2: the function's delay per event, in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub backlog_delay_ms: u64,
    /// A3: the step's rate (events/s).
    #[arg(long, default_value_t = 200)]
    pub step_rate: u64,
    /// A3: how long the step's load lasts, in seconds.
    #[arg(long, default_value_t = 40.0)]
    pub step_load_secs: f64,
    /// Scenarios to run (baseline is run with S1 and for the half-load comparison); `a1`–`a4`
    /// (autoscaled Services) run on their own, without the `s` ones.
    #[arg(long, value_delimiter = ',', default_value = "s1,s2,s3,s4,s5,s6,s7")]
    pub only: Vec<String>,
    /// Load generator connections (each one request at a time).
    #[arg(long, default_value_t = 256)]
    pub connections: usize,
    /// Seconds per rate-search step (default 3, quick 1).
    #[arg(long)]
    pub step_secs: Option<f64>,
    /// Seconds of the half-load latency comparison (default 10, quick 3).
    #[arg(long)]
    pub half_secs: Option<f64>,
    /// Seconds of S5 overload (default 30, quick 5).
    #[arg(long)]
    pub overload_secs: Option<f64>,
    /// S5 rate when S1 was not run in this invocation (events/s).
    #[arg(long)]
    pub overload_rate: Option<u64>,
    /// Seconds at 10 000 events/s for S6 (default 10, quick 3).
    #[arg(long)]
    pub rss_secs: Option<f64>,
    /// Cold starts measured in S7 (default 7, quick 3).
    #[arg(long)]
    pub cold_starts: Option<usize>,
    /// p99 end-to-end latency a sustained rate must keep, in milliseconds.
    #[arg(long, default_value_t = 5.0)]
    pub p99_ms: f64,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 1)]
    pub load_threads: usize,
    /// Worker threads of the sink's runtime.
    #[arg(long, default_value_t = 1)]
    pub sink_threads: usize,
    /// Niceness to run at (the sluice child inherits it), so that other work on a shared
    /// machine disturbs the measurement less; needs root for negative values. The report
    /// says what was in force.
    #[arg(long, default_value_t = -10, allow_negative_numbers = true)]
    pub nice: i32,
    /// Real-time FIFO priority (1-89) for the sluice child (inherited from the bench's main
    /// thread), so that other work on a shared machine cannot preempt it; the load
    /// generator and sink threads run 10 above it. 0 keeps the normal scheduler (and only
    /// `--nice`). Needs root; the report says what was in force.
    #[arg(long, default_value_t = 10)]
    pub fifo: i32,
    /// Instead of the scenarios: one step at this rate straight to the sink, then one through
    /// Sluice (S1 set-up, first size), printed to stderr (for profiling with perf). With
    /// `--only s3`: one step of the raw Kafka client, then one through a Kafka broker.
    #[arg(long)]
    pub probe: Option<u64>,
    /// p99 end-to-end latency a sustained rate must keep on Kafka (S3 and its raw-client
    /// baseline), in milliseconds. Kafka answers a parked fetch as soon as records arrive, so
    /// this is about the acks=all round trips plus the consumers' batching, not
    /// `fetch.wait.max.ms`.
    #[arg(long, default_value_t = 100.0)]
    pub kafka_p99_ms: f64,
    /// p99 bound on NATS JetStream (S4 and its raw-client baseline), in milliseconds.
    #[arg(long, default_value_t = 50.0)]
    pub nats_p99_ms: f64,
    /// `fetch.wait.max.ms` for the raw Kafka consumer (default: 100, what Sluice's trigger
    /// consumers use), to see what the setting costs.
    #[arg(long)]
    pub raw_kafka_fetch_wait_ms: Option<u32>,
    /// Records the raw Kafka / NATS clients may have awaiting their acknowledgement at once
    /// (default: `--connections`, what the HTTP generator can have awaiting a 202, as a
    /// producer with that many connections would); 0 for no limit.
    #[arg(long)]
    pub raw_in_flight: Option<usize>,
}

impl Args {
    /// The raw clients' limit on unacknowledged records (0: none).
    pub fn raw_in_flight(&self) -> usize {
        self.raw_in_flight.unwrap_or(self.connections)
    }
    pub fn step_secs(&self) -> f64 {
        self.step_secs.unwrap_or(if self.quick { 1.0 } else { 3.0 })
    }
    pub fn half_secs(&self) -> f64 {
        self.half_secs
            .unwrap_or(if self.quick { 3.0 } else { 10.0 })
    }
    pub fn overload_secs(&self) -> f64 {
        self.overload_secs
            .unwrap_or(if self.quick { 5.0 } else { 30.0 })
    }
    pub fn rss_secs(&self) -> f64 {
        self.rss_secs.unwrap_or(if self.quick { 3.0 } else { 10.0 })
    }
    pub fn cold_starts(&self) -> usize {
        self.cold_starts.unwrap_or(if self.quick { 3 } else { 7 })
    }
    pub fn runs(&self, scenario: &str) -> bool {
        self.only.iter().any(|s| s.eq_ignore_ascii_case(scenario))
    }
    /// The command line, for the report.
    pub fn command_line() -> String {
        let args: Vec<String> = std::env::args().skip(1).collect();
        format!("cargo run --release -p sluice-bench -- {}", args.join(" "))
    }
}

/// Finds (building it if needed) the sluice binary.
fn sluice_binary(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.sluice {
        return Ok(p.clone());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("sluice-bench: cargo build --release -p sluice");
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "-p", "sluice"])
        .status()?;
    anyhow::ensure!(status.success(), "building sluice failed");
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .map(|d| d.join("sluice"))
        .ok_or_else(|| anyhow::anyhow!("cannot locate the target directory"))?;
    anyhow::ensure!(
        bin.exists(),
        "{} not found; pass --sluice PATH",
        bin.display()
    );
    Ok(bin)
}

/// A runtime for one of the bench's instruments. With `fifo` > 0 its threads run at that
/// real-time priority, above Sluice's, so the generator keeps its schedule and the sink
/// timestamps arrivals when they happen rather than when Sluice lets go of a core.
fn runtime(name: &str, threads: usize, fifo: i32) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name(name)
        .on_thread_start(move || {
            if fifo > 0 {
                proc::set_fifo(fifo);
            }
        })
        .enable_all()
        .build()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    proc::init_clock();
    // Before any thread is started: threads and child processes inherit the niceness.
    proc::renice(args.nice);
    if args.fifo > 0 {
        proc::set_fifo(args.fifo);
    }
    let bin = sluice_binary(&args)?;
    // Three runtimes, so the report can say how much CPU each part used: the load
    // generator's, the sink's (thread names "bench-load" and "bench-sink") and this one,
    // which only orchestrates.
    let instruments = if args.fifo > 0 { args.fifo + 10 } else { 0 };
    let load_rt = runtime("bench-load", args.load_threads, instruments)?;
    let sink_rt = runtime("bench-sink", args.sink_threads, instruments)?;
    let main_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if args.only.iter().any(|s| s.starts_with(['a', 'A'])) {
        let md = main_rt.block_on(autoscale::run(&args, &bin));
        match &args.report {
            Some(path) => {
                std::fs::write(path, &md)?;
                eprintln!("sluice-bench: report written to {}", path.display());
            }
            None => println!("{md}"),
        }
        return Ok(());
    }
    let sink = sink_rt.block_on(sink::Sink::start())?;
    let results = main_rt.block_on(scenarios::run_all(
        &args,
        &bin,
        load_rt.handle().clone(),
        sink_rt.handle().clone(),
        &sink,
    ))?;
    let md = report::render(&args, &results);
    if let Some(path) = &args.report {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, &md)?;
        eprintln!("sluice-bench: report written to {}", path.display());
    } else {
        println!("{md}");
    }
    load_rt.shutdown_background();
    sink_rt.shutdown_background();
    Ok(())
}
