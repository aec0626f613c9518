//! # sluice-broker
//!
//! The broker ingress: `POST /<namespace>/<broker>` with one CloudEvent (binary or structured
//! mode) or a batch. For each request:
//!
//! ```text
//! path → broker lookup → body (size-limited) → decode (sluice_core::http) → TTL + arrival time
//!      → Channel::publish → 202
//! ```
//!
//! Every refusal is an [`IngestError`], mapped in one place ([`IngestError::status`]) to the
//! status code of SEMANTICS.md §2 and a JSON body that says what to fix. The producer's
//! request returns as soon as the channel has stored the event: fan-out to triggers happens
//! later, in the dispatchers, so no subscriber can hold a producer up.
//!
//! Replies from subscribers come back through [`Ingress::publish`] with the same TTL rules
//! and the same durability as producer events.

mod ttl;

pub use ttl::{apply_ttl, TtlError, DEFAULT_TTL, TTL_ATTRIBUTE};

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use prometheus_client::metrics::counter::Counter;
use sluice_channels::{Channel, ChannelError, Health};
use sluice_core::metrics::{BrokerLabels, Metrics, RejectLabels};
use sluice_core::topology::Key;
use sluice_core::{Envelope, Event};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

/// Default largest request body: 4 MiB.
pub const DEFAULT_MAX_BODY: usize = 4 * 1024 * 1024;

/// A broker as the ingress sees it: where to publish, and its accepted-events counter.
#[derive(Clone)]
pub struct BrokerEntry {
    pub channel: Arc<dyn Channel>,
    accepted: Counter,
}

impl BrokerEntry {
    pub fn new(key: &Key, channel: Arc<dyn Channel>, metrics: &Metrics) -> Self {
        let accepted = metrics
            .accepted
            .get_or_create(&BrokerLabels {
                namespace: key.namespace.clone(),
                broker: key.name.clone(),
            })
            .clone();
        BrokerEntry { channel, accepted }
    }
}

/// Why an event was refused.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(
        "no broker {0} here; check the namespace and name in the URL (POST /<namespace>/<broker>)"
    )]
    UnknownBroker(Key),
    #[error("the request path must be /<namespace>/<broker>, got {0:?}")]
    BadPath(String),
    #[error("not found: POST events to /<namespace>/<broker>")]
    Root,
    #[error("method {0} is not allowed; POST events (OPTIONS lists what is allowed)")]
    Method(Method),
    #[error("{0}")]
    Malformed(#[from] sluice_core::Error),
    #[error(transparent)]
    Ttl(#[from] TtlError),
    #[error("the request body is larger than the {limit}-byte limit; send smaller events or raise --max-body-bytes")]
    TooLarge { limit: usize },
    #[error("could not read the request body: {0}")]
    Body(String),
    #[error("broker {broker} cannot take events right now: {source}")]
    Channel {
        broker: Key,
        #[source]
        source: ChannelError,
    },
    #[error("broker {broker} is not ready: {reason}")]
    NotReady { broker: Key, reason: String },
}

impl IngestError {
    /// The HTTP status for this refusal (SEMANTICS.md §2).
    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::UnknownBroker(_) | IngestError::Root => StatusCode::NOT_FOUND,
            IngestError::BadPath(_)
            | IngestError::Malformed(_)
            | IngestError::Ttl(_)
            | IngestError::Body(_) => StatusCode::BAD_REQUEST,
            IngestError::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            IngestError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::Channel { .. } | IngestError::NotReady { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// A short label for the `sluice_events_rejected_total` metric.
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::UnknownBroker(_) => "unknown_broker",
            IngestError::BadPath(_) | IngestError::Root => "bad_path",
            IngestError::Method(_) => "method",
            IngestError::Malformed(_) | IngestError::Body(_) => "malformed",
            IngestError::Ttl(_) => "ttl_exhausted",
            IngestError::TooLarge { .. } => "too_large",
            IngestError::Channel {
                source: ChannelError::Full(_),
                ..
            } => "full",
            IngestError::Channel { .. } | IngestError::NotReady { .. } => "unavailable",
        }
    }

    /// Seconds a producer should wait before retrying a 503.
    fn retry_after(&self) -> Option<u32> {
        match self {
            IngestError::Channel {
                source: ChannelError::Full(_),
                ..
            } => Some(1),
            IngestError::Channel { .. } | IngestError::NotReady { .. } => Some(5),
            _ => None,
        }
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::json!({
            "error": self.to_string(),
            "status": status.as_u16(),
            "reason": self.reason(),
        });
        let mut resp = (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        if let Some(secs) = self.retry_after() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"));
        }
        resp
    }
}

/// The ingress: the brokers it serves (swapped whole on every topology change) and the
/// request limits.
pub struct Ingress {
    brokers: ArcSwap<HashMap<Key, BrokerEntry>>,
    metrics: Arc<Metrics>,
    max_body: usize,
}

impl Ingress {
    pub fn new(metrics: Arc<Metrics>, max_body: usize) -> Self {
        Ingress {
            brokers: ArcSwap::from_pointee(HashMap::new()),
            metrics,
            max_body,
        }
    }

    /// Replaces the set of brokers served.
    pub fn set_brokers(&self, brokers: HashMap<Key, BrokerEntry>) {
        self.brokers.store(Arc::new(brokers));
    }

    /// The channel of a broker, if it is served.
    pub fn channel(&self, key: &Key) -> Option<Arc<dyn Channel>> {
        self.brokers.load().get(key).map(|b| b.channel.clone())
    }

    /// Applies the TTL and arrival time to each event and publishes them, in order, into the
    /// broker's channel. Used for producer requests and for replies.
    pub async fn publish(
        &self,
        key: &Key,
        events: Vec<Event>,
        headers: Vec<(String, String)>,
    ) -> Result<(), IngestError> {
        let entry = self
            .brokers
            .load()
            .get(key)
            .cloned()
            .ok_or_else(|| IngestError::UnknownBroker(key.clone()))?;
        if let Health::NotReady(reason) = entry.channel.health() {
            return Err(IngestError::NotReady {
                broker: key.clone(),
                reason,
            });
        }
        let arrival = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let mut prepared = Vec::with_capacity(events.len());
        for mut event in events {
            apply_ttl(&mut event)?;
            event.set("knativearrivaltime", arrival.as_str());
            prepared.push(event);
        }
        let n = prepared.len() as u64;
        for event in prepared {
            entry
                .channel
                .publish(Envelope::with_headers(event, headers.clone()))
                .await
                .map_err(|source| IngestError::Channel {
                    broker: key.clone(),
                    source,
                })?;
        }
        entry.accepted.inc_by(n);
        Ok(())
    }

    fn reject(&self, key: Option<&Key>, e: &IngestError) {
        let (namespace, broker) = match (key, e) {
            // Don't let arbitrary URLs create label sets.
            (Some(k), e) if !matches!(e, IngestError::UnknownBroker(_)) => {
                (k.namespace.clone(), k.name.clone())
            }
            _ => (String::new(), String::new()),
        };
        self.metrics
            .rejected
            .get_or_create(&RejectLabels {
                namespace,
                broker,
                reason: e.reason().to_string(),
            })
            .inc();
    }

    async fn handle(&self, req: Request) -> Result<StatusCode, IngestError> {
        let key = parse_path(req.uri().path())?;
        if req.method() != Method::POST {
            return Err(IngestError::Method(req.method().clone()));
        }
        let result = self.handle_post(&key, req).await;
        if let Err(e) = &result {
            self.reject(Some(&key), e);
        }
        result
    }

    async fn handle_post(&self, key: &Key, req: Request) -> Result<StatusCode, IngestError> {
        if !self.brokers.load().contains_key(key) {
            return Err(IngestError::UnknownBroker(key.clone()));
        }
        let (parts, body) = req.into_parts();
        let too_large = IngestError::TooLarge {
            limit: self.max_body,
        };
        if let Some(len) = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
        {
            if len > self.max_body {
                return Err(too_large);
            }
        }
        let body: Bytes = axum::body::to_bytes(body, self.max_body)
            .await
            .map_err(|e| {
                if is_length_limit(&e) {
                    IngestError::TooLarge {
                        limit: self.max_body,
                    }
                } else {
                    IngestError::Body(e.to_string())
                }
            })?;
        let events = sluice_core::http::decode(&parts.headers, body)?;
        let headers = sluice_core::envelope::passthrough_headers(&parts.headers);
        self.publish(key, events, headers).await?;
        Ok(StatusCode::ACCEPTED)
    }
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        if err.to_string().contains("length limit") {
            return true;
        }
        cur = err.source();
    }
    false
}

/// `/<ns>/<name>` → the broker key; `/` → 404; anything else → 400.
pub fn parse_path(path: &str) -> Result<Key, IngestError> {
    let trimmed = path.trim_start_matches('/');
    if trimmed.is_empty() {
        return Err(IngestError::Root);
    }
    let mut parts = trimmed.trim_end_matches('/').split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(ns), Some(name), None) if !ns.is_empty() && !name.is_empty() => {
            Ok(Key::new(ns, name))
        }
        _ => Err(IngestError::BadPath(path.to_string())),
    }
}

async fn route(State(ingress): State<Arc<Ingress>>, req: Request) -> Response {
    if req.method() == Method::OPTIONS {
        return (
            StatusCode::OK,
            [(header::ALLOW, "POST, OPTIONS")],
            Body::empty(),
        )
            .into_response();
    }
    match ingress.handle(req).await {
        Ok(status) => status.into_response(),
        Err(e) => {
            tracing::debug!(error = %e, status = e.status().as_u16(), "event refused");
            e.into_response()
        }
    }
}

/// The ingress HTTP router.
pub fn router(ingress: Arc<Ingress>) -> Router {
    Router::new()
        .fallback(route)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(ingress)
}

/// Serves the ingress on a bound listener until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ingress: Arc<Ingress>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(ingress))
        .with_graceful_shutdown(shutdown)
        .await
}
