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
    /// Where the ingress is reached.
    pub urls: IngressUrls,
}

/// The ingress's base URLs and the mode that decides which of them objects publish.
pub struct IngressUrls {
    pub http: url::Url,
    pub https: Option<url::Url>,
    pub mode: Arc<sluice_broker::TransportMode>,
}

impl IngressUrls {
    /// `(url, [{name, url}])`: what a Broker at `path` (`<ns>/<name>`) publishes as its
    /// `address` and `addresses` (SEMANTICS.md §11).
    fn addresses(&self, path: &str) -> (String, Value) {
        let http = format!("{}{path}", self.http);
        let https = self.https.as_ref().map(|b| format!("{b}{path}"));
        let (address, all) = self.mode.get().addresses(&http, https.as_deref());
        let all: Vec<Value> = all
            .iter()
            .map(|a| json!({"name": a.name, "url": a.url}))
            .collect();
        (address.url.to_string(), Value::Array(all))
    }
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/readyz/ingress", get(readyz_ingress))
        .route("/metrics", get(metrics))
        .route("/topology", get(topology))
        .route("/eventtypes", get(event_types))
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
/// every broker and messaging channel is ready. Sources are not part of it: a KafkaSource whose cluster is down
/// does not stop the brokers from taking events (their state shows in `/topology`).
async fn readyz(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let started = s.started.load(Ordering::Acquire);
    let closing = s.ingress.is_closing();
    let board = s.status.snapshot();
    // Brokers and messaging channels: what the ingress serves.
    let served = |o: &ObjectRef| o.kind == Kind::Broker || o.kind.is_channel();
    let brokers: Vec<Value> = board
        .iter()
        .filter(|(o, _)| served(o))
        .map(|(o, st)| status_json(o, Some(st)))
        .collect();
    let brokers_ready = board
        .iter()
        .filter(|(o, _)| served(o))
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
    let mut channels = Vec::new();
    let mut subscriptions = Vec::new();
    let mut flows = Vec::new();
    let reply_text = |r: &ReplyTo| match r {
        ReplyTo::Broker(b) => format!("broker {b}"),
        ReplyTo::Channel { address, .. } => address.to_string(),
        ReplyTo::Endpoint(u) => u.to_string(),
        ReplyTo::Discard => "discard".into(),
    };
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
                    let (url, all) = s
                        .urls
                        .addresses(&format!("{}/{}", obj.key.namespace, obj.key.name));
                    m.insert("url".into(), url.into());
                    m.insert("addresses".into(), all);
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
                    m.insert("reply".into(), reply_text(&sub.reply).into());
                }
                triggers.push(v);
            }
            Kind::Subscription => {
                if let Some(sub) = t.subscriptions.get(&obj) {
                    m.insert("channel".into(), sub.channel.key.name.clone().into());
                    m.insert("subscriber".into(), sub.subscriber.as_str().into());
                    m.insert("reply".into(), reply_text(&sub.reply).into());
                    m.insert(
                        "deadLetterSink".into(),
                        sub.delivery
                            .dead_letter_sink
                            .as_ref()
                            .map(|u| u.as_str())
                            .into(),
                    );
                }
                subscriptions.push(v);
            }
            k if k.is_channel() => {
                if let Some(c) = t.channels.get(&obj.key) {
                    // Where it stores events (a broker's class names are broker kinds).
                    let storage = match &c.channel {
                        sluice_core::topology::ChannelConfig::Memory { .. } => "InMemory",
                        sluice_core::topology::ChannelConfig::Kafka { .. } => "Kafka",
                        sluice_core::topology::ChannelConfig::Nats { .. } => "NatsJetStream",
                    };
                    m.insert("class".into(), storage.into());
                    m.insert("url".into(), c.address.as_str().into());
                    m.insert(
                        "owner".into(),
                        c.owner.as_ref().map(|o| o.to_string()).into(),
                    );
                }
                channels.push(v);
            }
            Kind::EventTransform => {
                if let Some(x) = t.transforms.get(&obj.key) {
                    m.insert("url".into(), x.address.as_str().into());
                    m.insert("sink".into(), x.sink.as_ref().map(|s| s.to_string()).into());
                }
                flows.push(v);
            }
            Kind::Sequence | Kind::Parallel => {
                if let Some(f) = t.flows.get(&obj) {
                    let url = t.channels.get(&f.address).map(|c| c.address.to_string());
                    m.insert("url".into(), url.into());
                    // Knative's channelStatuses / subscriptionStatuses, in order.
                    let part = |o: &ObjectRef| {
                        let st = board.get(o);
                        json!({
                            "kind": o.kind.as_str(),
                            "name": o.key.name,
                            "ready": st.map_or("Unknown", |s| s.ready.as_str()),
                            "message": st.filter(|s| !s.message.is_empty()).map(|s| s.message.clone()),
                        })
                    };
                    let channels: Vec<Value> = (f.channels.iter())
                        .filter_map(|k| t.channels.get(k))
                        .map(|c| part(&c.object))
                        .collect();
                    let subs: Vec<Value> = f.subscriptions.iter().map(part).collect();
                    m.insert("channelStatuses".into(), channels.into());
                    m.insert("subscriptionStatuses".into(), subs.into());
                }
                flows.push(v);
            }
            Kind::PingSource
            | Kind::KafkaSource
            | Kind::ApiServerSource
            | Kind::ContainerSource => {
                let sink = match obj.kind {
                    Kind::PingSource => t.ping_sources.get(&obj.key).map(|p| p.sink.to_string()),
                    Kind::ApiServerSource => {
                        (t.apiserver_sources.get(&obj.key)).map(|a| a.sink.to_string())
                    }
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
                    m.insert("backlog".into(), st.backlog.into());
                    m.insert("panic".into(), st.panic.into());
                }
                services.push(v);
            }
            _ => {}
        }
    }
    Json(json!({
        "ingress": {
            "http": s.urls.http.as_str(),
            "https": s.urls.https.as_ref().map(|u| u.as_str()),
            "transportEncryption": s.urls.mode.get().as_str(),
        },
        "brokers": brokers,
        "triggers": triggers,
        "sources": sources,
        "channels": channels,
        "subscriptions": subscriptions,
        "flows": flows,
        "services": services,
    }))
}

/// The `(type, source)` pairs seen per broker and channel (`sluice get eventtypes`).
async fn event_types(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let registry = s.ingress.event_types();
    let types: Vec<Value> = registry
        .snapshot()
        .into_iter()
        .map(|e| {
            let reference = match e.key.at.kind {
                Kind::Broker => format!("Broker {}", e.key.at.key.name),
                _ => format!("Channel {}", e.key.at.key.name),
            };
            json!({
                "namespace": e.key.at.key.namespace,
                "reference": reference,
                "type": e.key.event_type,
                "source": e.key.source,
                "count": e.count,
            })
        })
        .collect();
    Json(json!({
        "eventTypes": types,
        "capacity": registry.capacity(),
        "overflow": registry.overflow(),
    }))
}
