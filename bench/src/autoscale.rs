//! A1–A4: autoscaled `serving.knative.dev/v1` Services (issue 13), run with
//! `--only a1,a2,a3,a4` (on their own: they write their own report section).
//!
//! Every scenario runs the real `sluice run` with a Broker, a Trigger and a Service whose
//! replicas are a small Python HTTP function ([`FUNCTION`]): it answers 202 after a fixed
//! delay and appends `<ce-id> <wall-clock ns>` to a log the bench reads, so arrival times
//! come from the function itself. The baseline, measured in the same run, is the same
//! function started by hand: spawn → port ready → first request answered.
//!
//! - **A1** first event from zero: the Service is at zero replicas; one event is POSTed to
//!   the broker; latency = its arrival at the function − the POST. Repeated, each time after
//!   the Service went back to zero. Compared to the baseline process start.
//! - **A2** a 10 000-event backlog (cc=1, a short function) drained autoscaled vs a fixed
//!   single replica (`min-scale = max-scale = 1`).
//! - **A3** a 0 → 200 ev/s step (cc=1, a 50 ms function): events lost, 5xx to the producer,
//!   and the replicas over time against rate × 0.05 ÷ 0.7 ≈ 14.3.
//! - **A4** scale to zero: from the last event's arrival to zero replicas, against window +
//!   grace (the bench sets `window: 6s` and a 2 s grace to keep runs short; Knative's
//!   defaults are 60 s + 30 s).
//!
//! Wall-clock time (`SystemTime`) is used for arrivals because the function is another
//! process; both sides read the same machine clock.

use crate::load;
use crate::sluice::{free_addr, Sluice, BROKER, NAMESPACE};
use crate::Args;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// The function: `python3 fn.py LOG DELAY_MS`, listening on `$PORT`.
const FUNCTION: &str = r#"
import http.server, os, sys, time
LOG, DELAY = sys.argv[1], float(sys.argv[2]) / 1000.0
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        now = time.time_ns()
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if DELAY > 0:
            time.sleep(DELAY)
        with open(LOG, "a") as f:
            f.write("%s %d\n" % (self.headers.get("ce-id", "-"), now))
        self.send_response(202)
        self.send_header("content-length", "0")
        self.end_headers()
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn ms(ns: u64) -> String {
    format!("{:.0} ms", ns as f64 / 1e6)
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Median and max of a sample (ns).
fn median_max(v: &[u64]) -> (u64, u64) {
    let mut v = v.to_vec();
    v.sort_unstable();
    (
        v.get(v.len() / 2).copied().unwrap_or(0),
        v.last().copied().unwrap_or(0),
    )
}

/// A scratch directory with the function script.
struct Workdir {
    dir: PathBuf,
}

impl Workdir {
    fn new(name: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "sluice-bench-autoscale-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("fn.py"), FUNCTION)?;
        Ok(Workdir { dir })
    }

    fn script(&self) -> PathBuf {
        self.dir.join("fn.py")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("received.log")
    }

    /// `(ce-id, arrival ns)` lines the function wrote.
    fn received(&self) -> Vec<(String, u64)> {
        std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (id, t) = l.split_once(' ')?;
                Some((id.to_string(), t.parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Broker + Trigger + Service, the Service with `annotations` (YAML lines, 8 spaces in).
fn resources(w: &Workdir, delay_ms: u64, cc: u32, annotations: &[(&str, String)]) -> String {
    let mut ann = String::new();
    for (k, v) in annotations {
        let _ = writeln!(ann, "        {k}: \"{v}\"");
    }
    format!(
        r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata: {{name: fn, namespace: {NAMESPACE}}}
spec:
  template:
    metadata:
      annotations:
{ann}    spec:
      containerConcurrency: {cc}
      containers:
        - image: example.com/fn
          command: [python3, "{script}"]
          args: ["{log}", "{delay_ms}"]
          readinessProbe:
            httpGet: {{path: /}}
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: {BROKER}, namespace: {NAMESPACE}}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: to-fn, namespace: {NAMESPACE}}}
spec:
  broker: {BROKER}
  subscriber:
    ref: {{apiVersion: serving.knative.dev/v1, kind: Service, name: fn}}
"#,
        script = w.script().display(),
        log = w.log().display(),
    )
}

/// What `/topology` says about the Service.
#[derive(Debug, Clone, Copy, Default)]
struct Replicas {
    desired: u64,
    actual: u64,
    ready: u64,
}

/// Reads one unsigned field `"key":N` of the first service in `/topology` (no JSON parser
/// needed for a flat number).
fn field(json: &str, key: &str) -> Option<u64> {
    let services = &json[json.find("\"services\"")?..];
    let at = services.find(&format!("\"{key}\":"))? + key.len() + 3;
    let digits: String = services[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

async fn replicas(s: &Sluice) -> Option<Replicas> {
    let (code, body) = load::get_text(s.admin, "/topology").await.ok()?;
    if code != 200 {
        return None;
    }
    Some(Replicas {
        desired: field(&body, "desired")?,
        actual: field(&body, "actual")?,
        ready: field(&body, "readyReplicas")?,
    })
}

/// Polls until `f` holds, every 20 ms, up to `timeout`.
async fn until<F, Fut>(timeout: Duration, what: &str, f: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    until_every(Duration::from_millis(20), timeout, what, f).await
}

/// Polls until `f` holds, every `every`, up to `timeout`.
async fn until_every<F, Fut>(
    every: Duration,
    timeout: Duration,
    what: &str,
    mut f: F,
) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(every).await;
    }
}

/// POSTs event `s<step>-<seq>` to the broker on a fresh connection; the status (0: no answer).
async fn post(ingress: SocketAddr, step: u32, seq: u64) -> u16 {
    let path = format!("/{NAMESPACE}/{BROKER}");
    let req = load::single_event(ingress, &path, step, seq, 0);
    load::one_shot(ingress, &req).await.unwrap_or(0)
}

/// The baseline: the function started by hand: spawn → port answers, and spawn → first POST
/// answered, ns.
async fn baseline(w: &Workdir) -> anyhow::Result<(u64, u64)> {
    {
        let addr = free_addr()?;
        let t0 = wall_ns();
        let mut child = tokio::process::Command::new("python3")
            .arg(w.script())
            .arg(w.log())
            .arg("0")
            .env("PORT", addr.port().to_string())
            .kill_on_drop(true)
            .spawn()?;
        // Probed as often as Sluice probes a starting replica (5 ms), so neither side gains
        // from a coarser poll.
        until_every(
            Duration::from_millis(5),
            Duration::from_secs(30),
            "the function to listen",
            || async { tokio::net::TcpStream::connect(addr).await.is_ok() },
        )
        .await?;
        let ready = wall_ns() - t0;
        let req = load::single_event(addr, "/", 0, 0, 0);
        let status = load::one_shot(addr, &req).await?;
        anyhow::ensure!(status == 202, "the function answered {status}");
        let first = wall_ns() - t0;
        let _ = child.kill().await;
        Ok((ready, first))
    }
}

/// A1 + A4: cold starts from zero through a Trigger, and the time back to zero after each.
async fn cold_starts(bin: &Path, runs: usize, out: &mut String) -> anyhow::Result<()> {
    let w = Workdir::new("a1")?;
    let yaml = resources(
        &w,
        0,
        0,
        &[
            ("autoscaling.knative.dev/initial-scale", "0".into()),
            ("autoscaling.knative.dev/window", "6s".into()),
            ("sluice.dev/scale-to-zero-grace-period", "2s".into()),
        ],
    );
    let s = Sluice::start(bin, &yaml).await?;
    let base = Workdir::new("baseline")?;
    let (mut base_ready, mut base_first) = (Vec::new(), Vec::new());
    let mut first = Vec::new();
    let mut added = Vec::new();
    let mut to_zero = Vec::new();
    for i in 0..runs {
        // The baseline and the cold start alternate, so both see the same machine load.
        let (r, f) = baseline(&base).await?;
        base_ready.push(r);
        base_first.push(f);
        until(Duration::from_secs(120), "the Service at zero", || async {
            replicas(&s)
                .await
                .is_some_and(|r| r.actual == 0 && r.ready == 0)
        })
        .await?;
        let id = format!("s1-{i}");
        let t0 = wall_ns();
        let status = post(s.ingress, 1, i as u64).await;
        anyhow::ensure!(status == 202, "the broker answered {status}");
        until(
            Duration::from_secs(60),
            "the first event at the function",
            || async { w.received().iter().any(|(r, _)| *r == id) },
        )
        .await?;
        let arrived = w
            .received()
            .iter()
            .find(|(r, _)| *r == id)
            .map(|(_, t)| *t)
            .unwrap_or(t0);
        first.push(arrived.saturating_sub(t0));
        added.push(arrived.saturating_sub(t0) as i64 - f as i64);
        // A4: from this (last) event's arrival to zero replicas.
        until(Duration::from_secs(120), "back to zero", || async {
            replicas(&s).await.is_some_and(|r| r.actual == 0)
        })
        .await?;
        to_zero.push(wall_ns().saturating_sub(arrived));
    }
    s.stop().await;
    let (br, br_max) = median_max(&base_ready);
    let (bf, bf_max) = median_max(&base_first);
    let (f, f_max) = median_max(&first);
    let (z, z_max) = median_max(&to_zero);
    added.sort_unstable();
    let added_median = added.get(added.len() / 2).copied().unwrap_or(0);
    let _ = writeln!(out, "### A1 — first event from zero ({runs} cold starts)\n");
    let _ = writeln!(
        out,
        "A Python `http.server` function (`python3 fn.py`), `initial-scale: 0`; one event POSTed to the broker while the Service has no replica; latency = arrival at the function (its own clock reading) − the POST. Baseline in the same run: the same function started by hand.\n"
    );
    let _ = writeln!(out, "| | median | max |\n|---|---:|---:|");
    let _ = writeln!(
        out,
        "| baseline: process start → port accepts | {} | {} |",
        ms(br),
        ms(br_max)
    );
    let _ = writeln!(
        out,
        "| baseline: process start → first request answered | {} | {} |",
        ms(bf),
        ms(bf_max)
    );
    let _ = writeln!(
        out,
        "| **through Sluice: POST to broker → arrival at a cold function** | **{}** | **{}** |",
        ms(f),
        ms(f_max)
    );
    let _ = writeln!(
        out,
        "| added by Sluice (each cold start − the baseline run just before it) | {:+.0} ms | {:+.0} ms |\n",
        added_median as f64 / 1e6,
        added.last().copied().unwrap_or(0) as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "Target: ≤ process start + 50 ms (median: {}); Knative's SLA: p95 ≤ 2 s.\n",
        if added_median <= 50_000_000 {
            "met"
        } else {
            "missed"
        }
    );
    let _ = writeln!(out, "### A4 — scale to zero\n");
    let _ = writeln!(
        out,
        "From the last event's arrival to zero replicas, with `window: 6s` and `sluice.dev/scale-to-zero-grace-period: 2s` (to keep the run short; the defaults are 60 s + 30 s). Expected: the window (6–7 s until the 1 s buckets of the average are all 0) + the grace (from the first tick deciding zero) + up to two 2 s ticks ≈ 8–13 s.\n"
    );
    let _ = writeln!(
        out,
        "| runs | median | max |\n|---:|---:|---:|\n| {runs} | {} | {} |\n",
        secs(Duration::from_nanos(z)),
        secs(Duration::from_nanos(z_max))
    );
    Ok(())
}

/// Replicas seen over a run, sampled every `every`.
fn sample_replicas(
    s: &Sluice,
    every: Duration,
) -> (
    tokio::task::JoinHandle<Vec<(Duration, Replicas)>>,
    Arc<AtomicU64>,
) {
    let admin = s.admin;
    let stop = Arc::new(AtomicU64::new(0));
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let start = Instant::now();
        let mut out = Vec::new();
        while flag.load(Ordering::Relaxed) == 0 {
            if let Ok((200, body)) = load::get_text(admin, "/topology").await {
                if let (Some(desired), Some(actual), Some(ready)) = (
                    field(&body, "desired"),
                    field(&body, "actual"),
                    field(&body, "readyReplicas"),
                ) {
                    out.push((
                        start.elapsed(),
                        Replicas {
                            desired,
                            actual,
                            ready,
                        },
                    ));
                }
            }
            tokio::time::sleep(every).await;
        }
        out
    });
    (task, stop)
}

/// What one backlog drain did.
struct Drain {
    took: Duration,
    received: usize,
    unique: usize,
    max_ready: u64,
    refused: u64,
}

/// A2, one run: `n` events POSTed as fast as 32 connections go, drained by the Service.
async fn drain(
    bin: &Path,
    n: u64,
    delay_ms: u64,
    annotations: &[(&str, String)],
    name: &str,
) -> anyhow::Result<Drain> {
    let w = Workdir::new(name)?;
    let s = Sluice::start(bin, &resources(&w, delay_ms, 1, annotations)).await?;
    let (sampler, stop) = sample_replicas(&s, Duration::from_millis(500));
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let ingress = s.ingress;
    let senders: Vec<_> = (0..32)
        .map(|_| {
            let (next, refused) = (next.clone(), refused.clone());
            tokio::spawn(async move {
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= n {
                        return;
                    }
                    // A full queue is a 503: the producer retries, as producers must.
                    while post(ingress, 2, seq).await != 202 {
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();
    for t in senders {
        t.await?;
    }
    until(
        Duration::from_secs(900),
        "every event at the function",
        || async { w.received().len() as u64 >= n },
    )
    .await?;
    let took = start.elapsed();
    stop.store(1, Ordering::Relaxed);
    let samples = sampler.await?;
    let got = w.received();
    let unique: BTreeSet<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    s.stop().await;
    Ok(Drain {
        took,
        received: got.len(),
        unique: unique.len(),
        max_ready: samples.iter().map(|(_, r)| r.ready).max().unwrap_or(0),
        refused: refused.load(Ordering::Relaxed),
    })
}

async fn backlog(bin: &Path, n: u64, delay_ms: u64, out: &mut String) -> anyhow::Result<()> {
    let fixed = drain(
        bin,
        n,
        delay_ms,
        &[
            ("autoscaling.knative.dev/min-scale", "1".into()),
            ("autoscaling.knative.dev/max-scale", "1".into()),
        ],
        "a2-fixed",
    )
    .await?;
    let scaled = drain(
        bin,
        n,
        delay_ms,
        &[
            ("autoscaling.knative.dev/initial-scale", "0".into()),
            ("autoscaling.knative.dev/max-scale", "10".into()),
            ("autoscaling.knative.dev/window", "6s".into()),
        ],
        "a2-scaled",
    )
    .await?;
    let _ = writeln!(out, "### A2 — a {n}-event backlog\n");
    let _ = writeln!(
        out,
        "`containerConcurrency: 1`, a {delay_ms} ms function; {n} events POSTed to the broker as fast as 32 connections go (a 503 from a full broker queue is retried by the producer, as the contract asks; counted below); time from the first POST to the last arrival. Autoscaled: from zero, `max-scale: 10` (this machine has 2 cores), `window: 6s`.\n"
    );
    let _ = writeln!(
        out,
        "| | drained in | events/s | arrivals (unique) | most ready replicas | producer retries (503) |\n|---|---:|---:|---:|---:|---:|"
    );
    for (label, d) in [
        ("fixed single replica (min = max = 1)", &fixed),
        ("autoscaled (0 → ≤ 10)", &scaled),
    ] {
        let _ = writeln!(
            out,
            "| {label} | {} | {:.0} | {} ({}) | {} | {} |",
            secs(d.took),
            n as f64 / d.took.as_secs_f64(),
            d.received,
            d.unique,
            d.max_ready,
            d.refused
        );
    }
    let _ = writeln!(
        out,
        "\nAutoscaled drains {:.1}× faster than the fixed replica.\n",
        fixed.took.as_secs_f64() / scaled.took.as_secs_f64()
    );
    Ok(())
}

/// A3: 0 → `rate` ev/s for `dur`, cc=1, a 50 ms function.
async fn step(bin: &Path, rate: u64, dur: Duration, out: &mut String) -> anyhow::Result<()> {
    let w = Workdir::new("a3")?;
    let yaml = resources(
        &w,
        50,
        1,
        &[
            ("autoscaling.knative.dev/initial-scale", "0".into()),
            ("autoscaling.knative.dev/window", "6s".into()),
            ("autoscaling.knative.dev/max-scale", "40".into()),
        ],
    );
    let s = Sluice::start(bin, &yaml).await?;
    let (sampler, stop) = sample_replicas(&s, Duration::from_secs(1));
    let total = (rate as f64 * dur.as_secs_f64()) as u64;
    let statuses = Arc::new(std::sync::Mutex::new(BTreeMap::<u16, u64>::new()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    let ingress = s.ingress;
    // Open model: event k is sent at k / rate whatever happened to the earlier ones.
    for seq in 0..total {
        let at = start + Duration::from_secs_f64(seq as f64 / rate as f64);
        tokio::time::sleep_until(at).await;
        let statuses = statuses.clone();
        tasks.push(tokio::spawn(async move {
            let code = post(ingress, 3, seq).await;
            *statuses
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(code)
                .or_default() += 1;
        }));
    }
    for t in tasks {
        t.await?;
    }
    let accepted = statuses
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&202)
        .copied()
        .unwrap_or(0);
    let delivered = until(
        Duration::from_secs(120),
        "every accepted event at the function",
        || async {
            let got = w.received();
            let unique: BTreeSet<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
            unique.len() as u64 >= accepted
        },
    )
    .await
    .is_ok();
    // Keep sampling a little after the load, to see the scale-down start.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(1, Ordering::Relaxed);
    let samples = sampler.await?;
    let got = w.received();
    let unique: BTreeSet<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    s.stop().await;
    let statuses = statuses.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let five_xx: u64 = statuses
        .iter()
        .filter(|(c, _)| **c >= 500)
        .map(|(_, n)| n)
        .sum();
    let expected = rate as f64 * 0.05 / 0.7;
    let load_end = dur.as_secs_f64();
    let steady: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| t.as_secs_f64() >= load_end / 2.0 && t.as_secs_f64() <= load_end)
        .map(|(_, r)| r.ready)
        .collect();
    let steady_avg = steady.iter().sum::<u64>() as f64 / steady.len().max(1) as f64;
    let _ = writeln!(
        out,
        "### A3 — a 0 → {rate} ev/s step, `containerConcurrency: 1`, a 50 ms function\n"
    );
    let _ = writeln!(
        out,
        "Open-model load for {} ({total} events, one connection each), from zero; `window: 6s` (the panic window is then 1 s, its minimum) and `max-scale: 40` as a safety cap on a 2-core machine. Expected replicas: rate × 0.05 s ÷ 0.7 = {expected:.1}.\n",
        secs(dur)
    );
    let _ = writeln!(
        out,
        "| sent | accepted (202) | 5xx to the producer | other answers | arrivals (unique) | lost | every accepted event arrived | ready replicas, 2nd half of the load (avg) |\n|---:|---:|---:|---|---:|---:|---|---:|"
    );
    // 0 = no HTTP answer (the bench could not connect or the connection broke).
    let other = statuses
        .iter()
        .filter(|(c, _)| **c != 202 && **c < 500)
        .map(|(c, n)| {
            if *c == 0 {
                format!("{n} × no answer")
            } else {
                format!("{n} × {c}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        out,
        "| {total} | {accepted} | {five_xx} | {other} | {} ({}) | {} | {} | {steady_avg:.1} |\n",
        got.len(),
        unique.len(),
        accepted.saturating_sub(unique.len() as u64),
        if delivered { "yes" } else { "no" },
    );
    let _ = writeln!(
        out,
        "Replicas over time (desired / actual / ready, every 2 s):\n\n```text"
    );
    for (t, r) in samples.iter().step_by(2) {
        let _ = writeln!(
            out,
            "t={:>5.1}s  desired {:>3}  actual {:>3}  ready {:>3}",
            t.as_secs_f64(),
            r.desired,
            r.actual,
            r.ready
        );
    }
    let _ = writeln!(out, "```\n");
    Ok(())
}

/// Runs the requested autoscaling scenarios; the Markdown section.
pub async fn run(args: &Args, bin: &Path) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## A1–A4 — autoscaled Services (issue 13)\n\n`{}`, {} UTC, load average before: {}.\n",
        Args::command_line(),
        String::from_utf8_lossy(
            &std::process::Command::new("date")
                .args(["-u", "+%Y-%m-%d %H:%M"])
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default()
        )
        .trim(),
        crate::proc::loadavg()
    );
    if args.runs("a1") || args.runs("a4") {
        if let Err(e) = cold_starts(bin, args.cold_starts(), &mut out).await {
            let _ = writeln!(out, "A1/A4 not run: {e:#}\n");
        }
    }
    if args.runs("a2") {
        if let Err(e) = backlog(bin, args.backlog_events, args.backlog_delay_ms, &mut out).await {
            let _ = writeln!(out, "A2 not run: {e:#}\n");
        }
    }
    if args.runs("a3") {
        let dur = Duration::from_secs_f64(args.step_load_secs);
        if let Err(e) = step(bin, args.step_rate, dur, &mut out).await {
            let _ = writeln!(out, "A3 not run: {e:#}\n");
        }
    }
    let _ = writeln!(out, "Load average after: {}.\n", crate::proc::loadavg());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_service_fields_of_topology() {
        let json = r#"{"brokers":[{"desired":9}],"services":[{"name":"fn","desired":3,"actual":2,"readyReplicas":1}]}"#;
        assert_eq!(field(json, "desired"), Some(3));
        assert_eq!(field(json, "actual"), Some(2));
        assert_eq!(field(json, "readyReplicas"), Some(1));
        assert_eq!(field(json, "queued"), None);
        assert_eq!(field(r#"{"services":[]}"#, "desired"), None);
    }

    #[test]
    fn median_and_max() {
        assert_eq!(median_max(&[5, 1, 3]), (3, 5));
        assert_eq!(median_max(&[]), (0, 0));
    }
}
