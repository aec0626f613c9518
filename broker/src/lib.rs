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
use futures::StreamExt as _;
use http::{header, HeaderValue, Method, StatusCode};
use prometheus_client::metrics::counter::Counter;
use sluice_channels::{Channel, ChannelError, Health};
use sluice_core::metrics::{BrokerLabels, Metrics, RejectLabels};
use sluice_core::topology::Key;
use sluice_core::{Envelope, Event};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    #[error("sluice is shutting down and takes no new events; retry (another replica, or this one once restarted)")]
    ShuttingDown,
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
            IngestError::Channel { .. }
            | IngestError::NotReady { .. }
            | IngestError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
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
            IngestError::ShuttingDown => "shutting_down",
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
            IngestError::ShuttingDown => Some(1),
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
    /// Shutting down: producers get 503 while queued events drain (replies are still taken).
    closing: AtomicBool,
}

impl Ingress {
    pub fn new(metrics: Arc<Metrics>, max_body: usize) -> Self {
        Ingress {
            brokers: ArcSwap::from_pointee(HashMap::new()),
            metrics,
            max_body,
            closing: AtomicBool::new(false),
        }
    }

    /// Stops taking producers' events: from now on they are answered 503 with
    /// `Retry-After`, so a load balancer or the producer's retry sends them to another
    /// replica, while replies of the deliveries still draining are published as usual.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
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
        let result = if prepared.len() == 1 {
            let event = prepared.pop().expect("one event");
            entry
                .channel
                .publish(Envelope::with_headers(event, headers))
                .await
        } else {
            let envelopes = prepared
                .into_iter()
                .map(|e| Envelope::with_headers(e, headers.clone()))
                .collect();
            entry.channel.publish_batch(envelopes).await
        };
        result.map_err(|source| IngestError::Channel {
            broker: key.clone(),
            source,
        })?;
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
        if self.is_closing() {
            return Err(IngestError::ShuttingDown);
        }
        let (parts, body) = req.into_parts();
        let too_large = IngestError::TooLarge {
            limit: self.max_body,
        };
        let expects_continue = parts
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if let Some(len) = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
        {
            if len > self.max_body {
                // A client that waits for `100 Continue` never sends the body: answer now.
                // Any other client is writing the body already; closing on it would reset
                // the connection before it reads the 413 (a broken pipe instead of the
                // explanation), so read and discard it first, within bounds.
                if !expects_continue {
                    discard(body, len.min(DISCARD_MAX_BYTES)).await;
                }
                return Err(too_large);
            }
        }
        let mut body = body.into_data_stream();
        let mut buf = bytes::BytesMut::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| IngestError::Body(e.to_string()))?;
            if buf.len() + chunk.len() > self.max_body {
                // No Content-Length (chunked): the same courtesy as above.
                discard_stream(body, DISCARD_MAX_BYTES).await;
                return Err(too_large);
            }
            buf.extend_from_slice(&chunk);
        }
        let body: Bytes = buf.freeze();
        let events = sluice_core::http::decode(&parts.headers, body)?;
        let headers = sluice_core::envelope::passthrough_headers(&parts.headers);
        self.publish(key, events, headers).await?;
        Ok(StatusCode::ACCEPTED)
    }
}

/// The most of an oversized body read (and thrown away) so its sender sees the 413; beyond
/// this the connection is closed without reading further.
const DISCARD_MAX_BYTES: usize = 64 * 1024 * 1024;
/// The longest spent reading an oversized body to throw it away.
const DISCARD_MAX_TIME: Duration = Duration::from_secs(10);

async fn discard(body: Body, max: usize) {
    discard_stream(body.into_data_stream(), max).await
}

async fn discard_stream(mut body: axum::body::BodyDataStream, max: usize) {
    let mut read = 0usize;
    let _ = tokio::time::timeout(DISCARD_MAX_TIME, async {
        while let Some(Ok(chunk)) = body.next().await {
            read += chunk.len();
            if read >= max {
                break;
            }
        }
    })
    .await;
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
            let close = matches!(e, IngestError::TooLarge { .. });
            let mut resp = e.into_response();
            if close {
                // The rest of an oversized body may still be on its way: do not try to
                // read another request after it.
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
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

/// Connection limits of the ingress server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A client must send a request's whole head within this time, counted from the moment
    /// the server starts waiting for it (so an idle keep-alive connection is closed after
    /// it too).
    pub header_read_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
        }
    }
}

/// Serves the ingress on a bound listener until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ingress: Arc<Ingress>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, ingress, ServeOptions::default(), shutdown).await
}

/// [`serve`] with explicit limits. Slow or idle clients are cut off after
/// `header_read_timeout` instead of holding a connection (and its memory) forever; at most
/// `max_connections` are open at once. On shutdown the listener closes and connections
/// finish the request they are serving.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    ingress: Arc<Ingress>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, router(ingress), options, shutdown).await
}

/// [`serve_with`] for any router: the ingress router merged with other routes on the same
/// address (embedded mode adds the activator's `/<ns>/services/<name>` routes).
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let service = TowerToHyperService::new(router);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    let slots = Arc::new(tokio::sync::Semaphore::new(options.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn = builder.serve_connection(TokioIo::new(stream), service.clone());
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "ingress connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    // Requests in progress finish; idle connections are closed.
    graceful.shutdown().await;
    Ok(())
}
