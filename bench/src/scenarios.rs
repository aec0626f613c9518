//! The scenarios (S1–S7) and the step they are all made of: run open-model load at one rate
//! for a while, wait for the deliveries to drain, and count what happened.

use crate::load::{self, Load, LoadResult};
use crate::proc;
use crate::search::RateSearch;
use crate::sink::{Sink, Step};
use crate::sluice::{self, Class, Sluice, TriggerSpec};
use crate::stats::{self, account, Accounting, Latency};
use crate::Args;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::time::Instant;

/// The rate search starts here and never goes past `MAX_RATE` (events/s).
const START_RATE: u64 = 2_000;
const MIN_RATE: u64 = 500;
const MAX_RATE: u64 = 400_000;
/// S6 measures memory at this rate.
pub const RSS_RATE: u64 = 10_000;
/// The size S2, S3–S6 use.
pub const DEFAULT_SIZE: usize = 1024;

/// One step: a rate held for a while, and what came of it.
#[derive(Debug, Clone)]
pub struct StepResult {
    pub rate: u64,
    pub secs: f64,
    pub size: usize,
    pub fanout: usize,
    pub acc: Accounting,
    /// End-to-end: scheduled send → first arrival at the sink.
    pub e2e: Latency,
    /// Producer's view: scheduled send → 2xx answer.
    pub producer: Latency,
    /// Scheduled send → 503 answer.
    pub refused: Latency,
    /// Request written → 503 answer.
    pub refused_service: Latency,
    /// How late the generator sent, after the scheduled time.
    pub send_lag: Latency,
    pub other_status: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    /// CPU used during the step, in cores (1.0 = one core busy the whole time).
    pub cpu_load: f64,
    pub cpu_sink: f64,
    pub cpu_sluice: Option<f64>,
    /// Largest VmRSS seen during the step, and VmHWM after it (KiB).
    pub rss_max_kib: Option<u64>,
    pub hwm_kib: Option<u64>,
    /// Every acknowledged delivery arrived before the drain timeout.
    pub drained: bool,
    /// Machine CPU time stolen by the hypervisor during the step, per cent.
    pub steal: f64,
    pub p99_limit_us: u64,
}

impl StepResult {
    /// Sustained: everything sent was accepted and delivered, and p99 stayed in bounds.
    pub fn passed(&self) -> bool {
        self.acc.sent > 0
            && self.acc.refused == 0
            && self.acc.failed == 0
            && self.acc.lost == 0
            && self.e2e.count > 0
            && self.e2e.p99 <= self.p99_limit_us
    }

    /// Delivered per second (counting each subscriber).
    pub fn deliveries_per_sec(&self) -> f64 {
        self.acc.delivered as f64 / self.secs
    }

    fn line(&self) -> String {
        format!(
            "rate {:>7}/s ×{} {:>5} B: e2e p50 {} p99 {} max {} ms | 2xx p99 {} ms | sent {} ok {} 503 {} err {} lost {} dup {} | cpu load {:.2} sink {:.2} sluice {} | lag p99 {} ms | steal {:.0}% | {}",
            self.rate,
            self.fanout,
            self.size,
            stats::ms(self.e2e.p50),
            stats::ms(self.e2e.p99),
            stats::ms(self.e2e.max),
            stats::ms(self.producer.p99),
            self.acc.sent,
            self.acc.accepted,
            self.acc.refused,
            self.acc.failed,
            self.acc.lost,
            self.acc.duplicated,
            self.cpu_load,
            self.cpu_sink,
            self.cpu_sluice.map_or("-".into(), |c| format!("{c:.2}")),
            stats::ms(self.send_lag.p99),
            self.steal,
            if self.passed() { "PASS" } else { "fail" }
        )
    }
}

/// A rate search and its steps.
#[derive(Debug, Clone)]
pub struct SearchResult {
    pub steps: Vec<StepResult>,
    /// The step at the highest passing rate.
    pub best: Option<StepResult>,
    /// Every step passed up to the search's maximum.
    pub capped: bool,
}

impl SearchResult {
    pub fn rate(&self) -> u64 {
        self.best.as_ref().map_or(0, |b| b.rate)
    }
}

/// Half-load comparison: the same rate straight to the sink and through Sluice.
#[derive(Debug, Clone)]
pub struct HalfLoad {
    pub baseline: StepResult,
    pub sluice: StepResult,
}

/// S1 for one size.
#[derive(Debug, Clone)]
pub struct S1 {
    pub size: usize,
    pub baseline: SearchResult,
    pub sluice: SearchResult,
    pub half: Option<HalfLoad>,
}

/// A scenario that may not have been run.
#[derive(Debug, Clone)]
pub enum Outcome<T> {
    Ran(T),
    NotRun(String),
}

#[derive(Debug, Clone)]
pub struct Overload {
    pub step: StepResult,
    pub alive: bool,
}

#[derive(Debug, Clone)]
pub struct Memory {
    pub idle_rss_kib: u64,
    pub idle_hwm_kib: u64,
    pub loaded: StepResult,
}

#[derive(Debug, Clone)]
pub struct ColdStart {
    /// Spawn → first 202, µs, per run.
    pub accepted_us: Vec<u64>,
    /// Spawn → first arrival at the sink, µs, per run.
    pub delivered_us: Vec<u64>,
}

#[derive(Debug, Clone)]
pub struct Durable {
    /// What ran against the server directly (None: not run, with the reason).
    pub raw: Outcome<SearchResult>,
    pub sluice: Outcome<SearchResult>,
    /// Sluice held at [`DURABLE_LATENCY_RATES`] for `--half-secs` each (latency at moderate
    /// load, whatever the highest sustained rate).
    pub fixed: Vec<StepResult>,
}

/// The rates at which S3/S4 measure Sluice's latency beside the search.
pub const DURABLE_LATENCY_RATES: [u64; 2] = [1000, 2000];

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct Results {
    pub machine: proc::Machine,
    pub loadavg_before: String,
    pub loadavg_after: String,
    /// CPU time stolen by the hypervisor over the whole run, per cent.
    pub steal: f64,
    pub started: String,
    pub s1: Vec<S1>,
    pub s2_one: Option<SearchResult>,
    pub s2_twenty: Option<SearchResult>,
    pub s3: Outcome<Durable>,
    pub s4: Outcome<Durable>,
    pub s5: Option<Outcome<Overload>>,
    pub s6: Option<Outcome<Memory>>,
    pub s7: Option<Outcome<ColdStart>>,
    pub wall_secs: f64,
}

/// The bench's moving parts.
pub struct Bench<'a> {
    pub args: &'a Args,
    pub bin: &'a Path,
    pub load_rt: Handle,
    pub sink_rt: Handle,
    pub sink: &'a Sink,
    steps: AtomicU32,
}

/// Where to send over HTTP.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub path: String,
    pub pid: Option<u32>,
}

/// What a step drives: HTTP (to Sluice or straight to the sink), or a raw client.
#[derive(Clone)]
pub enum Driver {
    Http(Target),
    #[cfg(feature = "kafka")]
    Kafka(Arc<crate::durable::kafka::KafkaRaw>),
    #[cfg(feature = "nats")]
    Nats(Arc<crate::durable::nats::NatsRaw>),
}

impl Driver {
    fn pid(&self) -> Option<u32> {
        match self {
            Driver::Http(t) => t.pid,
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
}

impl Bench<'_> {
    fn next_step(&self) -> u32 {
        self.steps.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The p99 bound of the broker class a driver exercises.
    fn p99_ms(&self, class: &Class) -> f64 {
        match class {
            Class::Memory => self.args.p99_ms,
            Class::Kafka { .. } => self.args.kafka_p99_ms,
            Class::Nats { .. } => self.args.nats_p99_ms,
        }
    }

    /// Runs one step at `rate` for `secs` against `target`, expecting `fanout` deliveries per
    /// event, then waits up to `drain` for them.
    #[allow(clippy::too_many_arguments)]
    pub async fn step(
        &self,
        driver: &Driver,
        p99_ms: f64,
        fanout: usize,
        size: usize,
        rate: u64,
        secs: f64,
        drain: Duration,
    ) -> StepResult {
        let id = self.next_step();
        let (addr, path) = match driver {
            Driver::Http(t) => (t.addr, t.path.clone()),
            #[allow(unreachable_patterns)]
            _ => (self.sink.addr, String::new()),
        };
        let pid = driver.pid();
        let l = Load {
            addr,
            path,
            ty: sluice::MATCH_TYPE.into(),
            size,
            rate,
            duration: Duration::from_secs_f64(secs),
            connections: match driver {
                Driver::Http(_) => self.args.connections,
                #[allow(unreachable_patterns)]
                _ => self.args.raw_in_flight(),
            },
            step: id,
        };
        let step = Arc::new(Step::new(id, l.events(), fanout));
        self.sink.begin(step.clone());
        let t0 = Instant::now();
        let ticks0 = proc::cpu_ticks();
        let (load0, sink0) = (
            proc::threads_cpu("bench-load"),
            proc::threads_cpu("bench-sink"),
        );
        let sluice0 = pid.map(proc::process_cpu);
        let mut rss_max: Option<u64> = None;
        let sample = |rss_max: &mut Option<u64>| {
            if let Some((rss, _)) = pid.and_then(proc::memory_kib) {
                *rss_max = Some(rss_max.map_or(rss, |m| m.max(rss)));
            }
        };
        let mut handle = match driver {
            Driver::Http(_) => self.load_rt.spawn(load::run(l)),
            #[cfg(feature = "kafka")]
            Driver::Kafka(k) => self.load_rt.spawn(k.clone().run(l)),
            #[cfg(feature = "nats")]
            Driver::Nats(n) => self.load_rt.spawn(n.clone().run(l)),
        };
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let result: LoadResult = loop {
            tokio::select! {
                r = &mut handle => break r.expect("the load generator panicked"),
                _ = tick.tick() => sample(&mut rss_max),
            }
        };
        let accepted = result
            .status
            .iter()
            .filter(|s| **s == stats::send_status::ACCEPTED)
            .count() as u64;
        let expected = accepted * fanout as u64;
        let deadline = Instant::now() + drain;
        let drained = loop {
            if step.delivered.load(Ordering::Relaxed) >= expected {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            sample(&mut rss_max);
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let wall = t0.elapsed().as_secs_f64();
        let steal = proc::steal_percent(ticks0, proc::cpu_ticks());
        let cpu_load = (proc::threads_cpu("bench-load") - load0) / wall;
        let cpu_sink = (proc::threads_cpu("bench-sink") - sink0) / wall;
        let cpu_sluice = pid
            .zip(sluice0)
            .map(|(pid, c0)| (proc::process_cpu(pid) - c0) / wall);
        sample(&mut rss_max);
        let hwm = pid.and_then(proc::memory_kib).map(|(_, h)| h);
        self.sink.end();
        let acc = account(&result.status, &step.delivery_counts(), fanout);
        let e2e = Latency::of(&step.latency.lock().unwrap_or_else(|e| e.into_inner()));
        let r = StepResult {
            rate,
            secs,
            size,
            fanout,
            acc,
            e2e,
            producer: Latency::of(&result.accepted),
            refused: Latency::of(&result.refused),
            refused_service: Latency::of(&result.refused_service),
            send_lag: Latency::of(&result.send_lag),
            other_status: result.other_status,
            transport_errors: result.transport_errors,
            cpu_load,
            cpu_sink,
            cpu_sluice,
            rss_max_kib: rss_max,
            hwm_kib: hwm,
            drained,
            steal,
            p99_limit_us: (p99_ms * 1000.0) as u64,
        };
        eprintln!("  {}", r.line());
        self.settle().await;
        r
    }

    /// Waits until late arrivals stop (a failed step can leave a backlog behind).
    async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let before = self.sink.stray();
            tokio::time::sleep(Duration::from_millis(300)).await;
            if self.sink.stray() == before || Instant::now() > deadline {
                break;
            }
        }
    }

    /// Finds the highest rate that passes.
    pub async fn search(
        &self,
        label: &str,
        driver: &Driver,
        p99_ms: f64,
        fanout: usize,
        size: usize,
    ) -> SearchResult {
        eprintln!("{label}: searching for the highest sustained rate");
        let (precision, max_steps) = if self.args.quick {
            (0.15, 9)
        } else {
            (0.05, 14)
        };
        let mut s = RateSearch::new(START_RATE, MIN_RATE, MAX_RATE, precision, max_steps);
        // Durable brokers deliver seconds late when overloaded: wait longer before calling
        // an event lost.
        let drain = Duration::from_secs(if p99_ms > self.args.p99_ms { 20 } else { 5 });
        // Warm up: connections, allocator, the sink's pool in sluice.
        let _ = self
            .step(
                driver,
                p99_ms,
                fanout,
                size,
                1000,
                0.5,
                Duration::from_secs(2),
            )
            .await;
        let mut steps = Vec::new();
        while let Some(rate) = s.next_rate() {
            let r = self
                .step(
                    driver,
                    p99_ms,
                    fanout,
                    size,
                    rate,
                    self.args.step_secs(),
                    drain,
                )
                .await;
            // A step that failed only on latency is run once more and the better of the two
            // kept: on this shared host a few milliseconds stolen by the hypervisor fail a p99
            // that the system under test would otherwise keep (both steps are reported).
            let retry = !r.passed()
                && r.acc.refused == 0
                && r.acc.failed == 0
                && r.acc.lost == 0
                && r.e2e.p99 <= 4 * r.p99_limit_us;
            let passed = r.passed();
            steps.push(r);
            if retry {
                let again = self
                    .step(
                        driver,
                        p99_ms,
                        fanout,
                        size,
                        rate,
                        self.args.step_secs(),
                        drain,
                    )
                    .await;
                let ok = again.passed();
                steps.push(again);
                s.record(rate, ok);
                continue;
            }
            s.record(rate, passed);
        }
        let best = s
            .best()
            .and_then(|b| steps.iter().find(|r| r.rate == b && r.passed()).cloned());
        SearchResult {
            steps,
            best,
            capped: s.capped(),
        }
    }

    async fn start_sluice(
        &self,
        class: &Class,
        triggers: &[TriggerSpec],
    ) -> anyhow::Result<Sluice> {
        let yaml = sluice::resources(class, triggers, self.sink.addr);
        Sluice::start(self.bin, &yaml).await
    }

    fn sluice_target(s: &Sluice) -> Driver {
        Driver::Http(Target {
            addr: s.ingress,
            path: s.broker_path(),
            pid: Some(s.pid),
        })
    }

    fn direct_target(&self) -> Driver {
        Driver::Http(Target {
            addr: self.sink.addr,
            path: "/t/0".into(),
            pid: None,
        })
    }

    async fn s1(&self, size: usize) -> anyhow::Result<S1> {
        let baseline = self
            .search(
                &format!("baseline {size} B"),
                &self.direct_target(),
                self.args.p99_ms,
                1,
                size,
            )
            .await;
        let s = self.start_sluice(&Class::Memory, &match_all()).await?;
        let target = Self::sluice_target(&s);
        let sluice = self
            .search(&format!("S1 {size} B"), &target, self.args.p99_ms, 1, size)
            .await;
        let half = if sluice.rate() > 0 {
            let rate = (sluice.rate() / 2).max(1);
            eprintln!("S1 {size} B: half load, {rate}/s");
            let secs = self.args.half_secs();
            let drain = Duration::from_secs(5);
            let b = self
                .step(
                    &self.direct_target(),
                    self.args.p99_ms,
                    1,
                    size,
                    rate,
                    secs,
                    drain,
                )
                .await;
            let t = self
                .step(&target, self.args.p99_ms, 1, size, rate, secs, drain)
                .await;
            Some(HalfLoad {
                baseline: b,
                sluice: t,
            })
        } else {
            None
        };
        s.stop().await;
        Ok(S1 {
            size,
            baseline,
            sluice,
            half,
        })
    }

    async fn s2(&self, matching: usize) -> anyhow::Result<SearchResult> {
        let s = self
            .start_sluice(&Class::Memory, &sluice::triggers(100, matching))
            .await?;
        let r = self
            .search(
                &format!("S2 100 triggers, {matching} matching"),
                &Self::sluice_target(&s),
                self.args.p99_ms,
                matching,
                DEFAULT_SIZE,
            )
            .await;
        s.stop().await;
        Ok(r)
    }

    async fn s5(&self, rate: u64) -> anyhow::Result<Overload> {
        let mut s = self.start_sluice(&Class::Memory, &match_all()).await?;
        let secs = self.args.overload_secs();
        eprintln!("S5: overload at {rate}/s for {secs} s");
        let target = Self::sluice_target(&s);
        let step = self
            .step(
                &target,
                self.args.p99_ms,
                1,
                DEFAULT_SIZE,
                rate,
                secs,
                Duration::from_secs(60),
            )
            .await;
        let alive = s.alive();
        s.stop().await;
        Ok(Overload { step, alive })
    }

    async fn s6(&self) -> anyhow::Result<Memory> {
        let s = self.start_sluice(&Class::Memory, &match_all()).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (idle_rss_kib, idle_hwm_kib) = proc::memory_kib(s.pid)
            .ok_or_else(|| anyhow::anyhow!("cannot read /proc/{}/status", s.pid))?;
        eprintln!("S6: idle VmRSS {idle_rss_kib} KiB; {RSS_RATE}/s");
        let loaded = self
            .step(
                &Self::sluice_target(&s),
                self.args.p99_ms,
                1,
                DEFAULT_SIZE,
                RSS_RATE,
                self.args.rss_secs(),
                Duration::from_secs(5),
            )
            .await;
        s.stop().await;
        Ok(Memory {
            idle_rss_kib,
            idle_hwm_kib,
            loaded,
        })
    }

    async fn s7(&self) -> anyhow::Result<ColdStart> {
        let yaml = sluice::resources(&Class::Memory, &match_all(), self.sink.addr);
        let mut accepted_us = Vec::new();
        let mut delivered_us = Vec::new();
        for i in 0..self.args.cold_starts() {
            let id = self.next_step();
            let step = Arc::new(Step::new(id, 1, 1));
            self.sink.begin(step.clone());
            let (s, spawned) = Sluice::spawn(self.bin, &yaml)?;
            // The event's timestamp is the spawn time, so the sink's latency is exactly
            // "process start → first delivered event".
            let ts = (spawned - proc::origin()).as_nanos() as u64;
            let req = load::single_event(s.ingress, &s.broker_path(), id, 0, ts);
            let deadline = spawned + Duration::from_secs(10);
            // Tight loop until the ingress takes the event.
            loop {
                if let Ok(202) = load::one_shot(s.ingress, &req).await {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "sluice did not accept an event within 10 s: {}",
                    s.log_tail()
                );
                tokio::task::yield_now().await;
            }
            let accepted = spawned.elapsed().as_micros() as u64;
            while step.delivered.load(Ordering::Relaxed) == 0 {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the first event was not delivered within 10 s"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            self.sink.end();
            let delivered = step.latency.lock().unwrap_or_else(|e| e.into_inner()).max();
            eprintln!(
                "S7 run {}: first 202 after {} ms, first delivery after {} ms",
                i + 1,
                stats::ms(accepted),
                stats::ms(delivered)
            );
            accepted_us.push(accepted);
            delivered_us.push(delivered);
            s.stop().await;
        }
        Ok(ColdStart {
            accepted_us,
            delivered_us,
        })
    }

    async fn durable(&self, kafka: bool) -> Outcome<Durable> {
        let label = if kafka { "S3 Kafka" } else { "S4 NATS" };
        // The servers panic with install instructions when their binary is missing; a
        // spawned task turns that into an error.
        let (class, server): (Class, Box<dyn std::any::Any>) = if kafka {
            match tokio::spawn(sluice_tests::start_kafka()).await {
                Ok(k) => (
                    Class::Kafka {
                        bootstrap_servers: k.bootstrap_servers(),
                    },
                    Box::new(k),
                ),
                Err(e) => return Outcome::NotRun(format!("cannot start Kafka: {e}")),
            }
        } else {
            match tokio::spawn(sluice_tests::start_nats()).await {
                Ok(n) => (Class::Nats { url: n.url() }, Box::new(n)),
                Err(e) => return Outcome::NotRun(format!("cannot start nats-server: {e}")),
            }
        };
        let raw = self.raw_search(label, &class).await;
        let mut fixed = Vec::new();
        let sluice = match self.start_sluice(&class, &match_all()).await {
            Ok(s) => {
                let target = Self::sluice_target(&s);
                let p99 = self.p99_ms(&class);
                for rate in DURABLE_LATENCY_RATES {
                    eprintln!("{label} via Sluice: latency at {rate}/s");
                    let drain = Duration::from_secs(20);
                    let secs = self.args.half_secs();
                    fixed.push(
                        self.step(&target, p99, 1, DEFAULT_SIZE, rate, secs, drain)
                            .await,
                    );
                }
                let r = self
                    .search(
                        &format!("{label} via Sluice"),
                        &target,
                        p99,
                        1,
                        DEFAULT_SIZE,
                    )
                    .await;
                s.stop().await;
                Outcome::Ran(r)
            }
            Err(e) => Outcome::NotRun(format!("{e:#}")),
        };
        drop(server);
        Outcome::Ran(Durable { raw, sluice, fixed })
    }

    /// `--probe RATE --only s3`: one step of the raw Kafka client, then one through a Sluice
    /// broker of class Kafka, on the same server (for profiling with perf).
    async fn probe_kafka(&self, rate: u64) -> anyhow::Result<()> {
        let kafka = tokio::spawn(sluice_tests::start_kafka()).await?;
        let class = Class::Kafka {
            bootstrap_servers: kafka.bootstrap_servers(),
        };
        let secs = self.args.step_secs();
        let drain = Duration::from_secs(20);
        let p99 = self.p99_ms(&class);
        #[cfg(feature = "kafka")]
        {
            let bs = kafka.bootstrap_servers();
            let (fetch_wait, recorder) = (self.args.raw_kafka_fetch_wait_ms, self.sink.recorder());
            let raw = self
                .sink_rt
                .spawn(async move {
                    crate::durable::kafka::KafkaRaw::start(&bs, fetch_wait, recorder).await
                })
                .await??;
            eprintln!("probe: raw kafka client");
            let driver = Driver::Kafka(Arc::new(raw));
            self.step(&driver, p99, 1, DEFAULT_SIZE, rate, secs, drain)
                .await;
        }
        let s = self.start_sluice(&class, &match_all()).await?;
        eprintln!("probe: sluice (kafka) pid {}", s.pid);
        self.step(
            &Self::sluice_target(&s),
            p99,
            1,
            DEFAULT_SIZE,
            rate,
            secs,
            drain,
        )
        .await;
        s.stop().await;
        drop(kafka);
        Ok(())
    }

    /// The raw-client search on the same server.
    async fn raw_search(&self, label: &str, class: &Class) -> Outcome<SearchResult> {
        let recorder = self.sink.recorder();
        let driver = match class {
            #[cfg(feature = "kafka")]
            Class::Kafka { bootstrap_servers } => {
                let bs = bootstrap_servers.clone();
                let fetch_wait = self.args.raw_kafka_fetch_wait_ms;
                match self
                    .sink_rt
                    .spawn(async move {
                        crate::durable::kafka::KafkaRaw::start(&bs, fetch_wait, recorder).await
                    })
                    .await
                {
                    Ok(Ok(k)) => Driver::Kafka(Arc::new(k)),
                    Ok(Err(e)) => return Outcome::NotRun(format!("raw Kafka client: {e:#}")),
                    Err(e) => return Outcome::NotRun(format!("raw Kafka client: {e}")),
                }
            }
            #[cfg(feature = "nats")]
            Class::Nats { url } => {
                let url = url.clone();
                match self
                    .sink_rt
                    .spawn(
                        async move { crate::durable::nats::NatsRaw::start(&url, recorder).await },
                    )
                    .await
                {
                    Ok(Ok(n)) => Driver::Nats(Arc::new(n)),
                    Ok(Err(e)) => return Outcome::NotRun(format!("raw NATS client: {e:#}")),
                    Err(e) => return Outcome::NotRun(format!("raw NATS client: {e}")),
                }
            }
            _ => {
                let _ = recorder;
                return Outcome::NotRun(
                    "this build of sluice-bench has no client for it (features `kafka`, `nats`)"
                        .into(),
                );
            }
        };
        Outcome::Ran(
            self.search(
                &format!("{label} raw client"),
                &driver,
                self.p99_ms(class),
                1,
                DEFAULT_SIZE,
            )
            .await,
        )
    }
}

/// One trigger with no filter.
fn match_all() -> Vec<TriggerSpec> {
    vec![TriggerSpec {
        filter_type: None,
        subscriber: 0,
    }]
}

fn now_rfc3339() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output();
    out.ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Runs every requested scenario.
pub async fn run_all(
    args: &Args,
    bin: &Path,
    load_rt: Handle,
    sink_rt: Handle,
    sink: &Sink,
) -> anyhow::Result<Results> {
    let t0 = Instant::now();
    let b = Bench {
        args,
        bin,
        load_rt,
        sink_rt,
        sink,
        steps: AtomicU32::new(0),
    };
    let loadavg_before = proc::loadavg();
    let ticks0 = proc::cpu_ticks();
    let started = now_rfc3339();
    let not_requested = || Outcome::NotRun("not requested (--only)".into());

    if let (Some(rate), true) = (args.probe, args.only == ["s3"]) {
        b.probe_kafka(rate).await?;
        std::process::exit(0);
    }
    if let Some(rate) = args.probe {
        let size = args.sizes.first().copied().unwrap_or(DEFAULT_SIZE);
        let secs = args.step_secs();
        let drain = Duration::from_secs(5);
        eprintln!("probe: direct");
        b.step(&b.direct_target(), args.p99_ms, 1, size, rate, secs, drain)
            .await;
        let s = b.start_sluice(&Class::Memory, &match_all()).await?;
        eprintln!("probe: sluice pid {}", s.pid);
        b.step(
            &Bench::sluice_target(&s),
            args.p99_ms,
            1,
            size,
            rate,
            secs,
            drain,
        )
        .await;
        s.stop().await;
        std::process::exit(0);
    }
    // Cold start and idle memory first, while nothing else of ours has run.
    let s7 = if args.runs("s7") {
        Some(
            b.s7()
                .await
                .map_or_else(|e| Outcome::NotRun(format!("{e:#}")), Outcome::Ran),
        )
    } else {
        None
    };
    let mut s1 = Vec::new();
    if args.runs("s1") {
        for &size in &args.sizes {
            s1.push(b.s1(size).await?);
        }
    }
    let s2_one = if args.runs("s2") {
        Some(b.s2(1).await?)
    } else {
        None
    };
    let s2_twenty = if args.runs("s2") {
        Some(b.s2(20).await?)
    } else {
        None
    };
    let s3 = if args.runs("s3") {
        b.durable(true).await
    } else {
        not_requested()
    };
    let s4 = if args.runs("s4") {
        b.durable(false).await
    } else {
        not_requested()
    };
    let s5 = if args.runs("s5") {
        let s1_rate = s1
            .iter()
            .find(|s| s.size == DEFAULT_SIZE)
            .or(s1.first())
            .map(|s| s.sluice.rate())
            .filter(|r| *r > 0);
        let rate = s1_rate.map(|r| r * 2).or(args.overload_rate);
        Some(match rate {
            Some(rate) => b
                .s5(rate)
                .await
                .map_or_else(|e| Outcome::NotRun(format!("{e:#}")), Outcome::Ran),
            None => Outcome::NotRun("S1 found no sustained rate; pass --overload-rate".into()),
        })
    } else {
        None
    };
    let s6 = if args.runs("s6") {
        Some(
            b.s6()
                .await
                .map_or_else(|e| Outcome::NotRun(format!("{e:#}")), Outcome::Ran),
        )
    } else {
        None
    };
    Ok(Results {
        machine: proc::Machine::read(),
        loadavg_before,
        loadavg_after: proc::loadavg(),
        steal: proc::steal_percent(ticks0, proc::cpu_ticks()),
        started,
        s1,
        s2_one,
        s2_twenty,
        s3,
        s4,
        s5,
        s6,
        s7,
        wall_secs: t0.elapsed().as_secs_f64(),
    })
}
