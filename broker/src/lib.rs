//! # sluice-broker
//!
//! The broker ingress: `POST /<namespace>/<broker>` (a Broker) or
//! `POST /<namespace>/channels/<name>` (a messaging channel: Channel, InMemoryChannel, a
//! Sequence's or Parallel's channels) with one CloudEvent (binary or structured mode) or a
//! batch. Both are the same thing underneath — a channel storing events for subscriptions —
//! so they share this path. For each request:
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
//!
//! The same router is served over plain HTTP ([`serve_router`]) and, with a certificate,
//! over TLS ([`serve_router_tls`], certificates in [`tls`], reloaded when their files
//! change). Which of the two takes events is Knative's `transport-encryption`
//! ([`TransportMode`], checked by [`guard`] only when a certificate is configured, so the
//! plain-HTTP path of a process without TLS is exactly what it was).
//!
//! With tracing on (`sluice_core::trace`), each event of a request gets an `ingress` span
//! (its parent the request's `traceparent`, else the event's own extension) and a `channel
//! publish` span whose context is stored with the event in place of the producer's.
//!
//! With OIDC authentication on ([`Ingress::with_auth`]), the request's bearer token is
//! checked before the body is read (401) and the decoded events are authorized against the
//! EventPolicies (403); see [`auth`].

pub mod auth;
pub mod tls;
mod ttl;

pub use auth::AuthGate;

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
use sluice_core::eventtypes::EventTypeRegistry;
use sluice_core::metrics::{BrokerLabels, Metrics, RejectLabels};
use sluice_core::topology::{Key, Kind, ObjectRef};
pub use sluice_core::transport::TransportEncryption;
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
        Self::for_object(&ObjectRef::broker(key.clone()), channel, metrics)
    }

    /// An entry for a broker or a messaging channel; a channel's metrics are labelled
    /// `broker="channels/<name>"`, its path under the namespace.
    pub fn for_object(target: &ObjectRef, channel: Arc<dyn Channel>, metrics: &Metrics) -> Self {
        let broker = match target.kind {
            Kind::Broker => target.key.name.clone(),
            _ => format!("channels/{}", target.key.name),
        };
        let accepted = metrics
            .accepted
            .get_or_create(&BrokerLabels {
                namespace: target.key.namespace.clone(),
                broker,
            })
            .clone();
        BrokerEntry { channel, accepted }
    }
}

/// An object that answers each event POSTed to its path itself instead of storing it (an
/// EventTransform at `/<ns>/eventtransforms/<name>`): the request waits for its answer.
#[async_trait::async_trait]
pub trait EventHandler: Send + Sync {
    async fn handle(&self, event: Event, headers: Vec<(String, String)>) -> Response;
}

/// Why an event was refused.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(
        "no broker {0} here; check the namespace and name in the URL (POST /<namespace>/<broker>)"
    )]
    UnknownBroker(Key),
    #[error("no channel {0} here; check the namespace and name in the URL (POST /<namespace>/channels/<name>)")]
    UnknownChannel(Key),
    #[error("no EventTransform {0} here; check the namespace and name in the URL (POST /<namespace>/eventtransforms/<name>)")]
    UnknownTransform(Key),
    #[error("an EventTransform takes one event per request, got {0}")]
    OneEvent(usize),
    #[error("the request path must be /<namespace>/<broker> or /<namespace>/channels/<channel>, got {0:?}")]
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
    #[error("{target} cannot take events right now: {source}")]
    Channel {
        /// The Broker or Channel.
        target: ObjectRef,
        #[source]
        source: ChannelError,
    },
    #[error("{target} is not ready: {reason}")]
    NotReady { target: ObjectRef, reason: String },
    #[error("sluice is shutting down and takes no new events; retry (another replica, or this one once restarted)")]
    ShuttingDown,
    #[error("{}", transport_message(*https, *mode))]
    Transport {
        /// The request came over TLS.
        https: bool,
        mode: TransportEncryption,
    },
    #[error("unauthenticated: {0}")]
    Unauthenticated(#[from] sluice_auth::AuthError),
    #[error("forbidden: {0}")]
    Forbidden(String),
}

fn transport_message(https: bool, mode: TransportEncryption) -> String {
    if https {
        format!("HTTPS is off here (transport-encryption: {mode}); send to the http address")
    } else {
        format!("this ingress takes events over HTTPS only (transport-encryption: {mode}); send to its https address (the object's status.address)")
    }
}

impl IngestError {
    /// The HTTP status for this refusal (SEMANTICS.md §2).
    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::UnknownBroker(_)
            | IngestError::UnknownChannel(_)
            | IngestError::UnknownTransform(_)
            | IngestError::Transport { .. }
            | IngestError::Root => StatusCode::NOT_FOUND,
            IngestError::OneEvent(_) => StatusCode::BAD_REQUEST,
            IngestError::BadPath(_)
            | IngestError::Malformed(_)
            | IngestError::Ttl(_)
            | IngestError::Body(_) => StatusCode::BAD_REQUEST,
            IngestError::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            IngestError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            IngestError::Forbidden(_) => StatusCode::FORBIDDEN,
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
            IngestError::UnknownChannel(_) => "unknown_channel",
            IngestError::UnknownTransform(_) => "unknown_transform",
            IngestError::OneEvent(_) => "malformed",
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
            IngestError::Transport { .. } => "transport",
            IngestError::Unauthenticated(_) => "unauthenticated",
            IngestError::Forbidden(_) => "forbidden",
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
        if let IngestError::Unauthenticated(e) = &self {
            // RFC 6750 §3: what the client must present.
            let error = match e {
                sluice_auth::AuthError::Missing { .. } => "Bearer realm=\"sluice\"",
                _ => "Bearer realm=\"sluice\", error=\"invalid_token\"",
            };
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(error));
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
    /// Keyed by `ObjectRef::broker` / `ObjectRef::channel`.
    brokers: ArcSwap<HashMap<ObjectRef, BrokerEntry>>,
    /// Objects that answer events themselves (EventTransforms), by `ObjectRef`.
    handlers: ArcSwap<HashMap<ObjectRef, Arc<dyn EventHandler>>>,
    /// The `(type, source)` pairs accepted per broker and channel.
    event_types: Arc<EventTypeRegistry>,
    metrics: Arc<Metrics>,
    max_body: usize,
    /// Shutting down: producers get 503 while queued events drain (replies are still taken).
    closing: AtomicBool,
    /// OIDC authentication and EventPolicy authorization; `None` while OIDC is off.
    auth: Option<Arc<AuthGate>>,
}

impl Ingress {
    pub fn new(metrics: Arc<Metrics>, max_body: usize) -> Self {
        Ingress {
            brokers: ArcSwap::from_pointee(HashMap::new()),
            handlers: ArcSwap::from_pointee(HashMap::new()),
            event_types: Arc::new(EventTypeRegistry::default()),
            metrics,
            max_body,
            closing: AtomicBool::new(false),
            auth: None,
        }
    }

    /// Requires a valid bearer token on every request and authorizes its subject with the
    /// EventPolicies (SEMANTICS.md §11). Replies published in-process are not checked: they
    /// come from deliveries this process made.
    pub fn with_auth(mut self, gate: Arc<AuthGate>) -> Self {
        self.auth = Some(gate);
        self
    }

    /// The authentication gate, when OIDC is on.
    pub fn auth(&self) -> Option<&Arc<AuthGate>> {
        self.auth.as_ref()
    }

    /// Takes the EventPolicies and audiences of a new topology (nothing while OIDC is off).
    pub fn apply_auth(&self, t: &sluice_core::topology::Topology) {
        if let Some(gate) = &self.auth {
            gate.apply(t);
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

    /// Replaces the set of brokers served (and serves no messaging channel).
    pub fn set_brokers(&self, brokers: HashMap<Key, BrokerEntry>) {
        let routes = brokers
            .into_iter()
            .map(|(k, e)| (ObjectRef::broker(k), e))
            .collect();
        self.set_routes(routes);
    }

    /// Replaces the set of brokers and messaging channels served, keyed by
    /// `ObjectRef::broker` / `ObjectRef::channel`.
    pub fn set_routes(&self, routes: HashMap<ObjectRef, BrokerEntry>) {
        self.brokers.store(Arc::new(routes));
    }

    /// The event types seen so far (recorded once an event is stored).
    pub fn event_types(&self) -> &Arc<EventTypeRegistry> {
        &self.event_types
    }

    /// Replaces the objects that answer events themselves (EventTransforms).
    pub fn set_handlers(&self, handlers: HashMap<ObjectRef, Arc<dyn EventHandler>>) {
        self.handlers.store(Arc::new(handlers));
    }

    /// The channel of a broker, if it is served.
    pub fn channel(&self, key: &Key) -> Option<Arc<dyn Channel>> {
        self.storage(&ObjectRef::broker(key.clone()))
    }

    /// The storage of a broker or messaging channel, if it is served.
    pub fn storage(&self, target: &ObjectRef) -> Option<Arc<dyn Channel>> {
        self.brokers.load().get(target).map(|b| b.channel.clone())
    }

    /// Applies the TTL and arrival time to each event and publishes them, in order, into the
    /// broker's channel. Used for producer requests and for replies.
    pub async fn publish(
        &self,
        key: &Key,
        events: Vec<Event>,
        headers: Vec<(String, String)>,
    ) -> Result<(), IngestError> {
        self.publish_to(&ObjectRef::broker(key.clone()), events, headers)
            .await
    }

    /// [`publish`](Self::publish) into a broker or a messaging channel. Channels get the
    /// same loop guard (`knativebrokerttl`) as brokers: a reply wired back into the channel
    /// it came from ends instead of circling forever.
    ///
    /// With tracing on, each event gets a `channel publish` span, a child of the current
    /// span (a reply's, an attempt's), whose context replaces `traceparent` in what is stored.
    pub async fn publish_to(
        &self,
        target: &ObjectRef,
        events: Vec<Event>,
        headers: Vec<(String, String)>,
    ) -> Result<(), IngestError> {
        self.publish_traced(target, events, headers, &[]).await
    }

    /// [`publish_to`](Self::publish_to) where event `i`'s `channel publish` span is a child
    /// of `parents[i]` (its ingress span) instead of the current span.
    async fn publish_traced(
        &self,
        target: &ObjectRef,
        events: Vec<Event>,
        headers: Vec<(String, String)>,
        parents: &[tracing::Span],
    ) -> Result<(), IngestError> {
        let entry = self
            .brokers
            .load()
            .get(target)
            .cloned()
            .ok_or_else(|| unknown(target))?;
        if let Health::NotReady(reason) = entry.channel.health() {
            return Err(IngestError::NotReady {
                target: target.clone(),
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
        // Discovery: the pairs of valid events that reached it (even if storing them is then
        // refused for backpressure: the producer sends them all the same).
        for e in &prepared {
            self.event_types.record(target, e.ty(), e.source());
        }
        // Tracing off: no spans, the headers stored as they came.
        let spans: Vec<tracing::Span> = if sluice_core::trace::enabled() {
            let destination = sluice_core::trace::destination_name(target);
            prepared
                .iter()
                .enumerate()
                .map(|(i, e)| match parents.get(i) {
                    Some(p) => p.in_scope(|| sluice_core::trace::publish(e, &destination)),
                    None => sluice_core::trace::publish(e, &destination),
                })
                .collect()
        } else {
            Vec::new()
        };
        let result = if prepared.len() == 1 {
            let event = prepared.pop().expect("one event");
            let mut headers = headers;
            if let Some(span) = spans.first() {
                sluice_core::trace::inject(span, &mut headers);
            }
            entry
                .channel
                .publish(Envelope::with_headers(event, headers))
                .await
        } else {
            let envelopes = prepared
                .into_iter()
                .enumerate()
                .map(|(i, e)| {
                    let mut h = headers.clone();
                    if let Some(span) = spans.get(i) {
                        sluice_core::trace::inject(span, &mut h);
                    }
                    Envelope::with_headers(e, h)
                })
                .collect();
            entry.channel.publish_batch(envelopes).await
        };
        if let Err(e) = &result {
            for span in &spans {
                sluice_core::trace::record_error(span, &e.to_string());
            }
        }
        result.map_err(|source| IngestError::Channel {
            target: target.clone(),
            source,
        })?;
        entry.accepted.inc_by(n);
        Ok(())
    }

    fn reject(&self, target: Option<&ObjectRef>, e: &IngestError) {
        let (namespace, broker) = match (target, e) {
            // Don't let arbitrary URLs create label sets.
            (
                Some(_),
                IngestError::UnknownBroker(_)
                | IngestError::UnknownChannel(_)
                | IngestError::UnknownTransform(_),
            )
            | (None, _) => (String::new(), String::new()),
            (Some(t), _) if t.kind == Kind::Broker => (t.key.namespace.clone(), t.key.name.clone()),
            (Some(t), _) if t.kind == Kind::EventTransform => (
                t.key.namespace.clone(),
                format!("eventtransforms/{}", t.key.name),
            ),
            (Some(t), _) => (t.key.namespace.clone(), format!("channels/{}", t.key.name)),
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

    async fn handle(&self, req: Request) -> Result<Response, IngestError> {
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

    async fn handle_post(&self, key: &ObjectRef, req: Request) -> Result<Response, IngestError> {
        let handler = match key.kind {
            Kind::EventTransform => {
                Some((self.handlers.load().get(key).cloned()).ok_or_else(|| unknown(key))?)
            }
            _ if self.brokers.load().contains_key(key) => None,
            _ => return Err(unknown(key)),
        };
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
        let subject = match &self.auth {
            None => None,
            Some(gate) => match gate.authenticate(&parts.headers, key).await {
                Ok(subject) => Some(subject),
                Err(e) => {
                    // As for a 413 below: let the client finish writing so it reads the 401.
                    if !expects_continue {
                        discard(body, self.max_body).await;
                    }
                    return Err(e.into());
                }
            },
        };
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
        if let (Some(gate), Some(subject)) = (&self.auth, &subject) {
            if let sluice_auth::Decision::Deny(why) = gate.authorize(key, subject, &events) {
                return Err(IngestError::Forbidden(why));
            }
        }
        let headers = sluice_core::envelope::passthrough_headers(&parts.headers);
        if let Some(handler) = handler {
            if events.len() != 1 {
                return Err(IngestError::OneEvent(events.len()));
            }
            let event = events.into_iter().next().expect("one event");
            return Ok(handler.handle(event, headers).await);
        }
        if !sluice_core::trace::enabled() {
            self.publish_to(key, events, headers).await?;
            return Ok(StatusCode::ACCEPTED.into_response());
        }
        // One `ingress` span per event, its parent the request's trace context.
        let destination = sluice_core::trace::destination_name(key);
        let spans: Vec<tracing::Span> = events
            .iter()
            .map(|e| sluice_core::trace::ingress(e, &destination, &parts.headers))
            .collect();
        let result = self.publish_traced(key, events, headers, &spans).await;
        let status = result
            .as_ref()
            .err()
            .map(|e| (e.status().as_u16(), e.to_string()));
        for span in &spans {
            match &status {
                None => sluice_core::trace::record_http(span, Some(202), None),
                Some((code, why)) => sluice_core::trace::record_http(span, Some(*code), Some(why)),
            }
        }
        result?;
        Ok(StatusCode::ACCEPTED.into_response())
    }
}

fn unknown(target: &ObjectRef) -> IngestError {
    match target.kind {
        Kind::Broker => IngestError::UnknownBroker(target.key.clone()),
        Kind::EventTransform => IngestError::UnknownTransform(target.key.clone()),
        _ => IngestError::UnknownChannel(target.key.clone()),
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

/// `/<ns>/<name>` → a broker; `/<ns>/channels/<name>` → a messaging channel; `/` → 404;
/// anything else → 400. (A broker path has two segments, a channel path three, so a broker
/// named `channels` does not shadow channels.)
pub fn parse_path(path: &str) -> Result<ObjectRef, IngestError> {
    let trimmed = path.trim_start_matches('/');
    if trimmed.is_empty() {
        return Err(IngestError::Root);
    }
    let mut parts = trimmed.trim_end_matches('/').split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(ns), Some(name), None, None) if !ns.is_empty() && !name.is_empty() => {
            Ok(ObjectRef::broker(Key::new(ns, name)))
        }
        (Some(ns), Some("channels"), Some(name), None) if !ns.is_empty() && !name.is_empty() => {
            Ok(ObjectRef::channel(Key::new(ns, name)))
        }
        (Some(ns), Some("eventtransforms"), Some(name), None)
            if !ns.is_empty() && !name.is_empty() =>
        {
            Ok(ObjectRef::new(Kind::EventTransform, Key::new(ns, name)))
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
        Ok(response) => response,
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
    serve_connections(listener, router, options, None, shutdown).await
}

/// [`serve_router`] over TLS: each connection's handshake (bounded by
/// `header_read_timeout`) runs in the connection's own task, so a slow or failing client
/// never holds up the accept loop. The certificate is the one the acceptor's resolver holds
/// at handshake time ([`tls::Certificates`]: reloaded when its files change).
pub async fn serve_router_tls(
    listener: tokio::net::TcpListener,
    router: Router,
    options: ServeOptions,
    acceptor: tokio_rustls::TlsAcceptor,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_connections(listener, router, options, Some(acceptor), shutdown).await
}

async fn serve_connections(
    listener: tokio::net::TcpListener,
    router: Router,
    options: ServeOptions,
    tls: Option<tokio_rustls::TlsAcceptor>,
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
        match &tls {
            None => {
                let conn = builder.serve_connection(TokioIo::new(stream), service.clone());
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "ingress connection ended with an error");
                    }
                    drop(permit);
                });
            }
            Some(acceptor) => {
                // Taken now: shutdown waits for this connection, handshake included.
                let watcher = graceful.watcher();
                let (acceptor, builder, service) =
                    (acceptor.clone(), builder.clone(), service.clone());
                let timeout = options.header_read_timeout;
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake with a client failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(?timeout, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(error = %e, "ingress TLS connection ended with an error");
                    }
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    // Requests in progress finish; idle connections are closed.
    graceful.shutdown().await;
    Ok(())
}

/// The `transport-encryption` mode the ingress listeners obey, changeable while they run
/// (in Kubernetes mode it follows the `config-features` ConfigMap).
#[derive(Debug)]
pub struct TransportMode(std::sync::atomic::AtomicU8);

impl TransportMode {
    pub fn new(mode: TransportEncryption) -> Arc<Self> {
        Arc::new(TransportMode(std::sync::atomic::AtomicU8::new(mode as u8)))
    }

    pub fn get(&self) -> TransportEncryption {
        match self.0.load(Ordering::Relaxed) {
            x if x == TransportEncryption::Strict as u8 => TransportEncryption::Strict,
            x if x == TransportEncryption::Permissive as u8 => TransportEncryption::Permissive,
            _ => TransportEncryption::Disabled,
        }
    }

    /// Sets the mode; returns the previous one.
    pub fn set(&self, mode: TransportEncryption) -> TransportEncryption {
        let before = self.get();
        self.0.store(mode as u8, Ordering::Relaxed);
        before
    }
}

/// `router` behind the mode: a request on the plain listener (`https: false`) while the
/// mode is strict, or on the TLS listener while it is disabled, gets 404 and a JSON body
/// saying which address to use (SEMANTICS.md §11). Only used when the process has a
/// certificate: without one there is no mode to check and the plain path is untouched.
pub fn guard(router: Router, mode: Arc<TransportMode>, https: bool) -> Router {
    router.layer(axum::middleware::from_fn(
        move |req: Request, next: axum::middleware::Next| {
            let mode = mode.get();
            async move {
                let served = if https {
                    mode.serves_https()
                } else {
                    mode.serves_http()
                };
                if served {
                    next.run(req).await
                } else {
                    IngestError::Transport { https, mode }.into_response()
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_brokers_and_channels() {
        let broker = |ns: &str, n: &str| Ok(ObjectRef::broker(Key::new(ns, n)));
        let channel = |ns: &str, n: &str| Ok(ObjectRef::channel(Key::new(ns, n)));
        let cases: &[(&str, Result<ObjectRef, &str>)] = &[
            ("/ns/b", broker("ns", "b")),
            ("/ns/b/", broker("ns", "b")),
            // A broker may be called `channels`: two segments are always a broker.
            ("/ns/channels", broker("ns", "channels")),
            ("/ns/channels/c", channel("ns", "c")),
            ("/ns/channels/c/", channel("ns", "c")),
            (
                "/ns/eventtransforms/t",
                Ok(ObjectRef::new(Kind::EventTransform, Key::new("ns", "t"))),
            ),
            ("/", Err("root")),
            ("/ns", Err("bad")),
            ("/ns/other/c", Err("bad")),
            ("/ns/channels/c/x", Err("bad")),
        ];
        for (path, want) in cases {
            let got = parse_path(path);
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(w, g, "{path}"),
                (Err("root"), Err(IngestError::Root)) => {}
                (Err("bad"), Err(IngestError::BadPath(_))) => {}
                _ => panic!("{path}: got {got:?}, wanted {want:?}"),
            }
        }
        assert_eq!(
            unknown(&ObjectRef::channel(Key::new("ns", "c"))).status(),
            StatusCode::NOT_FOUND
        );
    }
}
