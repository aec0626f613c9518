//! The admin server: `/healthz`, `/readyz`, `/metrics` (Prometheus text) and `/topology`
//! (JSON, read by `sluice get`).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use sluice_channels::Health;
use sluice_core::metrics::Metrics;
use sluice_dispatcher::Dataplane;
use sluice_sources::Sources;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::Mutex;

pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub dataplane: Arc<Mutex<Dataplane>>,
    pub sources: Arc<Mutex<Sources>>,
    /// Resources loaded and the ingress listening.
    pub started: AtomicBool,
    /// Trigger keys and subscribers of the running topology, for /topology.
    pub topology: Mutex<Vec<serde_json::Value>>,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/topology", get(topology))
        .with_state(state)
}

async fn metrics(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

fn brokers_json(dp: &Dataplane) -> (bool, Vec<serde_json::Value>) {
    let mut all_ready = true;
    let brokers = dp
        .status()
        .into_iter()
        .map(|b| {
            let (ready, reason) = match &b.health {
                Health::Ready => (true, None),
                Health::NotReady(r) => (false, Some(r.clone())),
            };
            all_ready &= ready;
            serde_json::json!({
                "namespace": b.key.namespace,
                "name": b.key.name,
                "class": b.class,
                "ready": ready,
                "reason": reason,
                "triggers": b.triggers,
            })
        })
        .collect();
    (all_ready, brokers)
}

async fn readyz(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let started = s.started.load(Ordering::Acquire);
    let (brokers_ready, brokers) = brokers_json(&*s.dataplane.lock().await);
    let ready = started && brokers_ready;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({ "ready": ready, "started": started, "brokers": brokers })),
    )
}

async fn topology(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let (_, brokers) = brokers_json(&*s.dataplane.lock().await);
    let triggers = s.topology.lock().await.clone();
    let sources = sources_json(&*s.sources.lock().await);
    Json(serde_json::json!({ "brokers": brokers, "triggers": triggers, "sources": sources }))
}

/// Sources are not part of `/readyz`: a KafkaSource whose cluster is down does not stop the
/// brokers from taking events. Their state shows here and in `sluice get`.
fn sources_json(sources: &Sources) -> Vec<serde_json::Value> {
    sources
        .status()
        .into_iter()
        .map(|s| {
            let (ready, reason) = match &s.health {
                sluice_sources::Health::Ready => (true, None),
                sluice_sources::Health::NotReady(r) => (false, Some(r.clone())),
            };
            serde_json::json!({
                "kind": s.kind.as_str(),
                "namespace": s.key.namespace,
                "name": s.key.name,
                "sink": s.sink.as_str(),
                "ready": ready,
                "reason": reason,
            })
        })
        .collect()
}
