//! The admin server: `/healthz`, `/readyz`, `/metrics` (Prometheus text) and `/topology`
//! (JSON, read by `sluice get`).
//!
//! Every handler reads the [`StatusBoard`] and the published topology, never the
//! reconcilers themselves, so the admin API answers at once even while a reconciler waits
//! on an unreachable server.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use sluice_broker::Ingress;
use sluice_core::metrics::Metrics;
use sluice_core::status::{Ready, Status, StatusBoard};
use sluice_core::topology::{Kind, ObjectRef, ReplyTo, Topology};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

pub struct AdminState {
    pub metrics: Arc<Metrics>,
    /// serving.knative.dev/v1 Services run by this process.
    pub services: Arc<sluice_autoscaler::LocalServices>,
    pub status: Arc<StatusBoard>,
    pub ingress: Arc<Ingress>,
    /// Resources loaded and the ingress listening.
    pub started: AtomicBool,
    /// The topology being run (what reconcilers converge to).
    pub topology: watch::Receiver<Arc<Topology>>,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/readyz/ingress", get(readyz_ingress))
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

fn status_json(obj: &ObjectRef, st: Option<&Status>) -> Value {
    let (ready, reason, message, gen) = match st {
        Some(s) => (
            s.ready.as_str(),
            s.reason.as_str(),
            s.message.as_str(),
            s.observed_generation,
        ),
        None => ("Unknown", "Pending", "not reconciled yet", 0),
    };
    json!({
        "kind": obj.kind.as_str(),
        "namespace": obj.key.namespace,
        "name": obj.key.name,
        // Kept for scripts written against the first /topology: a boolean.
        "ready": ready == "True",
        "status": ready,
        "reason": (!reason.is_empty()).then_some(reason),
        "message": (!message.is_empty()).then_some(message),
        "observedGeneration": gen,
    })
}

/// Ready when the resources are loaded, the ingress listens and is not shutting down, and
/// every broker is ready. Sources are not part of it: a KafkaSource whose cluster is down
/// does not stop the brokers from taking events (their state shows in `/topology`).
async fn readyz(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let started = s.started.load(Ordering::Acquire);
    let closing = s.ingress.is_closing();
    let board = s.status.snapshot();
    let brokers: Vec<Value> = board
        .iter()
        .filter(|(o, _)| o.kind == Kind::Broker)
        .map(|(o, st)| status_json(o, Some(st)))
        .collect();
    let brokers_ready = board
        .iter()
        .filter(|(o, _)| o.kind == Kind::Broker)
        .all(|(_, st)| st.ready == Ready::True);
    let ready = started && !closing && brokers_ready;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "ready": ready,
            "started": started,
            "shuttingDown": closing,
            "brokers": brokers,
        })),
    )
}

/// Ready when the process takes events at all (started, not shutting down), whatever the
/// state of each broker: the readiness probe of a data-plane pod in Kubernetes, where one
/// broker whose Kafka is down must not take the pod out of the Service for every other broker
/// (each broker's own readiness is in its status, from `/topology`).
async fn readyz_ingress(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let ready = s.started.load(Ordering::Acquire) && !s.ingress.is_closing();
    if ready {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not taking events")
    }
}

/// Every object with its status, plus what `sluice get` shows beside it.
async fn topology(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let t = s.topology.borrow().clone();
    let board: std::collections::BTreeMap<_, _> = s.status.snapshot().into_iter().collect();
    let mut objects: Vec<ObjectRef> = t.objects().chain(t.invalid.keys().cloned()).collect();
    objects.sort();
    objects.dedup();
    let mut brokers = Vec::new();
    let mut triggers = Vec::new();
    let mut sources = Vec::new();
    let mut services = Vec::new();
    let stats: std::collections::BTreeMap<_, _> = s
        .services
        .stats()
        .into_iter()
        .filter_map(|st| Some((st.key.clone()?, st)))
        .collect();
    for obj in objects {
        let mut v = status_json(&obj, board.get(&obj));
        let m = v.as_object_mut().expect("an object");
        match obj.kind {
            Kind::Broker => {
                if let Some(b) = t.brokers.get(&obj.key) {
                    m.insert("class".into(), b.channel.class_name().into());
                }
                brokers.push(v);
            }
            Kind::Trigger => {
                if let Some(sub) = t.subscriptions.get(&obj) {
                    m.insert("broker".into(), sub.channel.key.name.clone().into());
                    m.insert("subscriber".into(), sub.subscriber.as_str().into());
                    m.insert(
                        "deadLetterSink".into(),
                        sub.delivery
                            .dead_letter_sink
                            .as_ref()
                            .map(|u| u.as_str())
                            .into(),
                    );
                    let reply = match &sub.reply {
                        ReplyTo::Broker(b) => format!("broker {b}"),
                        ReplyTo::Endpoint(u) => u.to_string(),
                        ReplyTo::Discard => "discard".into(),
                    };
                    m.insert("reply".into(), reply.into());
                }
                triggers.push(v);
            }
            Kind::PingSource | Kind::KafkaSource => {
                let sink = match obj.kind {
                    Kind::PingSource => t.ping_sources.get(&obj.key).map(|p| p.sink.to_string()),
                    _ => t.kafka_sources.get(&obj.key).map(|k| k.sink.to_string()),
                };
                m.insert("sink".into(), sink.into());
                sources.push(v);
            }
            Kind::Service => {
                if let Some(svc) = t.services.get(&obj.key) {
                    m.insert("url".into(), svc.address.as_str().into());
                }
                if let Some(st) = stats.get(&obj.key) {
                    m.insert("desired".into(), st.desired.into());
                    m.insert("actual".into(), st.actual.into());
                    m.insert("readyReplicas".into(), st.ready.into());
                    m.insert("inFlight".into(), st.in_flight.into());
                    m.insert("queued".into(), st.queued.into());
                    m.insert("panic".into(), st.panic.into());
                }
                services.push(v);
            }
            Kind::ConfigMap => {}
        }
    }
    Json(
        json!({ "brokers": brokers, "triggers": triggers, "sources": sources, "services": services }),
    )
}
