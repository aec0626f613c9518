//! Test helpers: a real HTTP sink that records requests and answers as scripted, polling
//! with deadlines, and topologies built from YAML the way `sluice run` builds them.

#![allow(dead_code)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use sluice_core::topology::Topology;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use sluice_tests::eventually;

/// One request a sink received, and how it answered.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn id(&self) -> &str {
        self.header("ce-id").unwrap_or_default()
    }
}

type Responder = dyn Fn(&Received, usize) -> (StatusCode, Duration) + Send + Sync;

#[derive(Clone)]
struct SinkState {
    received: Arc<Mutex<Vec<Received>>>,
    respond: Arc<Responder>,
    in_flight: Arc<(AtomicUsize, AtomicUsize)>,
}

/// A real HTTP server that records every request and answers `respond(request, n)` (status,
/// and a delay before answering), n counting requests from 0.
pub struct Sink {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    /// Requests being answered now, and the most ever at once.
    in_flight: Arc<(AtomicUsize, AtomicUsize)>,
}

impl Sink {
    pub async fn start(
        respond: impl Fn(&Received, usize) -> (StatusCode, Duration) + Send + Sync + 'static,
    ) -> Sink {
        let received = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let state = SinkState {
            received: received.clone(),
            respond: Arc::new(respond),
            in_flight: in_flight.clone(),
        };
        let app = Router::new().fallback(handle).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Sink {
            url: format!("http://{addr}/"),
            received,
            in_flight,
        }
    }

    /// Accepts everything at once with an empty 202.
    pub async fn ok() -> Sink {
        Self::start(|_, _| (StatusCode::ACCEPTED, Duration::ZERO)).await
    }

    /// The most requests the sink was answering at once.
    pub fn max_in_flight(&self) -> usize {
        self.in_flight.1.load(Ordering::SeqCst)
    }

    /// Every request so far in arrival order (status 0: not answered yet).
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The requests the sink accepted (2xx), in arrival order.
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }

    /// Waits until at least `n` requests were accepted.
    pub async fn wait_accepted(&self, n: usize, timeout: Duration) -> Vec<Received> {
        eventually(
            timeout,
            &format!("{n} events accepted by {}", self.url),
            || async {
                let got = self.accepted();
                (got.len() >= n).then_some(got)
            },
        )
        .await
    }
}

async fn handle(
    State(s): State<SinkState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut r = Received {
        path: uri.path().to_string(),
        headers,
        body,
        status: 0,
    };
    let now = s.in_flight.0.fetch_add(1, Ordering::SeqCst) + 1;
    s.in_flight.1.fetch_max(now, Ordering::SeqCst);
    let n = {
        let mut g = s.received.lock().unwrap();
        g.push(r.clone());
        g.len() - 1
    };
    let (status, delay) = (s.respond)(&r, n);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    r.status = status.as_u16();
    s.received.lock().unwrap()[n].status = r.status;
    s.in_flight.0.fetch_sub(1, Ordering::SeqCst);
    status.into_response()
}

/// Builds a topology from YAML as `sluice run` does (ingress at 127.0.0.1:8080).
pub fn topology(yaml: &str) -> Topology {
    let loaded = sluice_crds::parse_yaml(yaml, "test.yaml").unwrap();
    sluice_crds::build(
        &loaded,
        &sluice_crds::Defaults::new("http://127.0.0.1:8080/".parse().unwrap()),
    )
    .unwrap_or_else(|es| panic!("invalid test resources: {es:#?}"))
}

/// The value of one metric line (exact label text), 0 if absent.
pub fn metric(metrics: &sluice_core::metrics::Metrics, name_and_labels: &str) -> f64 {
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels).map(str::trim))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
