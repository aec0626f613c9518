//! The sink: a real HTTP server (hyper, keep-alive) that every delivery ends at. It reads
//! `ce-id` (`s<step>-<seq>`), `ce-benchts` (the scheduled send time, nanoseconds on the shared
//! clock) and the path (`/t/<k>` for subscriber `k`, `/` for subscriber 0), counts how often
//! each (event, subscriber) arrived, and records the end-to-end latency of first arrivals.

use crate::proc::now_ns;
use crate::stats::histogram;
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// What the sink records during one load step.
pub struct Step {
    pub id: u32,
    pub fanout: usize,
    /// `deliveries[seq * fanout + k]`: arrivals of event `seq` at subscriber `k` (saturating).
    pub deliveries: Vec<AtomicU8>,
    /// Distinct (event, subscriber) pairs that arrived.
    pub delivered: AtomicU64,
    /// End-to-end latency of first arrivals, µs from the scheduled send time.
    pub latency: Mutex<Histogram<u64>>,
}

impl Step {
    pub fn new(id: u32, events: usize, fanout: usize) -> Self {
        Step {
            id,
            fanout,
            deliveries: (0..events * fanout).map(|_| AtomicU8::new(0)).collect(),
            delivered: AtomicU64::new(0),
            latency: Mutex::new(histogram()),
        }
    }

    /// Records one arrival; `benchts` is the scheduled send time on the shared clock.
    pub fn record(&self, seq: u64, k: usize, benchts: u64, now: u64) {
        if k >= self.fanout {
            return;
        }
        let Some(slot) = self.deliveries.get(seq as usize * self.fanout + k) else {
            return;
        };
        let before = slot
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some(c.saturating_add(1))
            })
            .unwrap_or(0);
        if before == 0 {
            self.delivered.fetch_add(1, Ordering::Relaxed);
            let us = now.saturating_sub(benchts) / 1000;
            let mut h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
            h.saturating_record(us.max(1));
        }
    }

    pub fn delivery_counts(&self) -> Vec<u8> {
        self.deliveries
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

/// The running sink.
pub struct Sink {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    current: ArcSwapOption<Step>,
    /// Arrivals that belong to no current step (late ones from an earlier step).
    stray: AtomicU64,
}

/// Parses `s<step>-<seq>`.
pub fn parse_id(id: &[u8]) -> Option<(u32, u64)> {
    let id = std::str::from_utf8(id).ok()?.strip_prefix('s')?;
    let (step, seq) = id.split_once('-')?;
    Some((step.parse().ok()?, seq.parse().ok()?))
}

/// Subscriber index from the path: `/t/<k>` → k, anything else → 0.
pub fn parse_subscriber(path: &str) -> usize {
    path.strip_prefix("/t/")
        .and_then(|k| k.trim_end_matches('/').parse().ok())
        .unwrap_or(0)
}

impl Sink {
    /// Binds 127.0.0.1:0 and serves on the current runtime.
    pub async fn start() -> std::io::Result<Sink> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            current: ArcSwapOption::empty(),
            stray: AtomicU64::new(0),
        });
        let s = shared.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(s.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Sink { addr, shared })
    }

    /// Starts recording a step.
    pub fn begin(&self, step: Arc<Step>) {
        self.shared.current.store(Some(step));
    }

    /// Stops recording; arrivals for the step after this count as stray.
    pub fn end(&self) {
        self.shared.current.store(None);
    }

    pub fn stray(&self) -> u64 {
        self.shared.stray.load(Ordering::Relaxed)
    }

    /// A handle for other receivers (the raw Kafka/NATS consumers) to record arrivals into
    /// the current step.
    pub fn recorder(&self) -> Recorder {
        Recorder(self.shared.clone())
    }
}

/// Records arrivals into the sink's current step.
#[derive(Clone)]
pub struct Recorder(Arc<Shared>);

impl Recorder {
    /// An arrival of event `id` (`s<step>-<seq>`) at subscriber `k` at `now`, scheduled at
    /// `benchts`.
    pub fn record(&self, id: &[u8], k: usize, benchts: u64, now: u64) {
        self.record_parsed(parse_id(id), k, benchts, now);
    }

    fn record_parsed(&self, id: Option<(u32, u64)>, k: usize, benchts: u64, now: u64) {
        let current = self.0.current.load();
        match (id, current.as_ref()) {
            (Some((step, seq)), Some(cur)) if cur.id == step => cur.record(seq, k, benchts, now),
            _ => {
                self.0.stray.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, hyper::Error> {
    let now = now_ns();
    let k = parse_subscriber(req.uri().path());
    let id = req
        .headers()
        .get("ce-id")
        .and_then(|v| parse_id(v.as_bytes()));
    let ts = req
        .headers()
        .get("ce-benchts")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Read the whole body, as a real subscriber would.
    let _ = req.into_body().collect().await?;
    match (id, ts) {
        (Some(id), Some(ts)) => Recorder(shared).record_parsed(Some(id), k, ts, now),
        _ => {
            shared.stray.fetch_add(1, Ordering::Relaxed);
        }
    }
    let mut resp = Response::new(Empty::new());
    *resp.status_mut() = StatusCode::OK;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_paths() {
        assert_eq!(parse_id(b"s3-1234"), Some((3, 1234)));
        assert_eq!(parse_id(b"x3-1"), None);
        assert_eq!(parse_id(b"s3"), None);
        assert_eq!(parse_subscriber("/t/17"), 17);
        assert_eq!(parse_subscriber("/"), 0);
    }

    #[test]
    fn step_counts_first_arrivals_and_duplicates() {
        let s = Step::new(1, 3, 2);
        s.record(0, 0, 1_000, 2_000_000);
        s.record(0, 1, 1_000, 2_000_000);
        s.record(0, 1, 1_000, 3_000_000);
        s.record(2, 0, 1_000, 2_000_000);
        s.record(9, 0, 0, 0); // out of range: ignored
        s.record(0, 5, 0, 0); // no such subscriber: ignored
        assert_eq!(s.delivered.load(Ordering::Relaxed), 3);
        assert_eq!(s.delivery_counts(), vec![1, 2, 0, 0, 1, 0]);
        let h = s.latency.lock().unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h.max(), h.highest_equivalent(1999));
    }
}
