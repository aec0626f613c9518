//! # sluice-delivery
//!
//! Gets one event to one destination, the way SEMANTICS.md §4 says: POST it (binary mode, or
//! structured with `format: json`) with `Prefer: reply`, `Kn-Namespace` and the pass-through
//! headers; classify the answer; wait and try again while the failure is retryable and
//! attempts remain; then send the *original* event to the dead-letter sink with the
//! `knativeerror*` extensions, or drop it.
//!
//! The decisions are pure functions in [`policy`] (classification, backoff, Retry-After,
//! dead-letter event); [`Sender`] is the small loop around them and the pooled HTTP client.
//! Callers that retry by redelivery (a JetStream consumer naks with the delay) use
//! [`Sender::attempt`], [`policy::after_failure`] and [`Sender::dead_letter`] directly instead
//! of [`Sender::deliver`].
//!
//! Delivery knows nothing of brokers, triggers or channels: a reply is handed back to the
//! caller, which routes it.
//!
//! Tracing (`sluice_core::trace`, only when on): [`Sender::attempt_traced`] runs one attempt
//! in a `deliver attempt` span, a child of the caller's current span, recording the status
//! and retry number; the request's `traceparent` is that span's, so the sink continues the
//! trace from the attempt. [`Sender::deliver`] traces every attempt this way, dead letters
//! included.

pub mod policy;
mod tls;
pub mod token;

pub use tls::{client as http_client, trust_also, HttpClient, TRUST_BUNDLE_ENV};
pub use token::{Identity, TokenFile, TokenSource};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use policy::{after_failure, classify, dead_letter_event, parse_retry_after, Class, Next};
use sluice_core::delivery::{DeliveryPolicy, Endpoint, Format};
use sluice_core::event::TTL_ATTRIBUTE;
use sluice_core::trace;
use sluice_core::{http as codec, Envelope, Event};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// Largest response body read back (a reply event, or error data for a dead letter).
pub const MAX_RESPONSE_BODY: usize = 4 * 1024 * 1024;

/// The answer to one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The destination took the event; it may have answered with a reply event.
    Accepted { reply: Option<Event> },
    /// The attempt failed.
    Failed(Failure),
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The HTTP status, if the destination answered at all.
    pub status: Option<u16>,
    pub body: Bytes,
    pub retryable: bool,
    /// `Retry-After` from a 429 or 503.
    pub retry_after: Option<Duration>,
    /// A human-readable reason, for logs.
    pub reason: String,
}

/// How a whole delivery (all attempts, then the dead-letter sink) ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivered {
    /// The subscriber accepted the event.
    Ok { reply: Option<Event> },
    /// Every attempt failed and the dead-letter sink took the event.
    DeadLettered { last: Failure },
    /// Every attempt failed and there is no dead-letter sink.
    Dropped { last: Failure },
    /// Every attempt failed and so did the dead-letter sink.
    DeadLetterFailed { last: Failure, dead_letter: Failure },
}

/// What a delivery did, for metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub result: Delivered,
    /// Attempts made to the subscriber (not counting the dead-letter sink).
    pub attempts: u32,
}

/// One outbound request: where, what, and under which rules.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub url: &'a Endpoint,
    pub envelope: &'a Envelope,
    pub policy: &'a DeliveryPolicy,
    /// Sent as `Kn-Namespace` (the trigger's namespace).
    pub namespace: Option<&'a str>,
}

/// Sends events over a pooled HTTP client. Clone freely: clones share the pool.
///
/// The client is hyper's directly rather than reqwest: per event, reqwest re-parsed the URL
/// (with IDNA processing), built a second header map, armed its own timer and read the body
/// chunk by chunk, which together were a visible share of the data plane's CPU in the
/// benchmarks (docs/benchmarks.md).
#[derive(Debug, Clone)]
pub struct Sender {
    client: tls::HttpClient,
    /// Clients for destinations with their own `CACerts`, by PEM.
    with_ca: std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<std::sync::Arc<str>, tls::HttpClient>>,
    >,
    /// Where OIDC tokens come from (OIDC on), and whose this sender's are.
    tokens: Option<std::sync::Arc<dyn TokenSource>>,
    identity: Option<std::sync::Arc<Identity>>,
}

impl Default for Sender {
    fn default() -> Self {
        Self::new()
    }
}

/// Why an attempt got no classifiable answer.
enum AttemptError {
    /// No response: connect, write or read of the head failed.
    Send(hyper_util::client::legacy::Error),
    /// No response within the attempt's timeout.
    Timeout,
    /// The response head came, the body could not be read.
    Body { status: u16, reason: String },
    /// No client could be made for the destination (its `CACerts` do not parse).
    Client(String),
    /// No OIDC token could be had for the destination's audience.
    Token(String),
}

impl Sender {
    pub fn new() -> Self {
        Sender {
            client: tls::client(None).expect("a client without extra CAs always builds"),
            with_ca: Default::default(),
            tokens: None,
            identity: None,
        }
    }

    /// Attaches OIDC tokens from `source` to requests for destinations with an audience,
    /// once an identity is set ([`Sender::with_identity`]).
    pub fn with_tokens(mut self, source: std::sync::Arc<dyn TokenSource>) -> Self {
        self.tokens = Some(source);
        self
    }

    /// A sender (sharing the connection pool) that sends as `identity`.
    pub fn with_identity(&self, identity: Identity) -> Self {
        let mut s = self.clone();
        s.identity = Some(std::sync::Arc::new(identity));
        s
    }

    /// `Authorization: Bearer <token>` for `url`, when it wants tokens and this sender has
    /// an identity and a token source.
    async fn authorization(&self, url: &Endpoint) -> Result<Option<HeaderValue>, String> {
        let (Some(audience), Some(source), Some(identity)) =
            (url.audience(), &self.tokens, &self.identity)
        else {
            return Ok(None);
        };
        let token = source.token(identity, audience).await.map_err(|e| {
            format!(
                "no OIDC token for {}/{} and audience {audience}: {e}",
                identity.namespace, identity.service_account
            )
        })?;
        HeaderValue::from_str(&format!("Bearer {token}"))
            .map(Some)
            .map_err(|_| "the OIDC token holds characters a header cannot carry".into())
    }

    /// The client trusting `url`'s `CACerts`, made on first use.
    fn client_for(&self, url: &Endpoint) -> Result<tls::HttpClient, String> {
        let Some(pem) = url.ca_certs() else {
            return Ok(self.client.clone());
        };
        let mut map = self.with_ca.lock().expect("not poisoned");
        if let Some(c) = map.get(pem) {
            return Ok(c.clone());
        }
        let c = tls::client(Some(pem))?;
        map.insert(pem.into(), c.clone());
        Ok(c)
    }

    /// One attempt: POST the event and classify the answer. The broker's TTL attribute is
    /// left out of what is sent (subscribers never see it; SEMANTICS.md §4).
    pub async fn attempt(
        &self,
        url: &Endpoint,
        envelope: &Envelope,
        format: Format,
        namespace: Option<&str>,
        timeout: Duration,
    ) -> Outcome {
        let mut headers = HeaderMap::with_capacity(16);
        let skip = Some(TTL_ATTRIBUTE);
        let body = match format {
            Format::Binary => codec::encode_binary_without(&envelope.event, &mut headers, skip),
            Format::Json => {
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(codec::STRUCTURED_CONTENT_TYPE),
                );
                Bytes::from(codec::encode_structured_without(&envelope.event, skip))
            }
        };
        headers.insert("prefer", HeaderValue::from_static("reply"));
        if let Some(ns) = namespace.and_then(|ns| HeaderValue::from_str(ns).ok()) {
            headers.insert("kn-namespace", ns);
        }
        for (name, value) in &envelope.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(n, v);
            }
        }
        if trace::enabled() {
            // The sink continues the trace from this attempt (see `attempt_traced`).
            trace::inject_http(&tracing::Span::current(), &mut headers);
        }
        match self.send(url, headers, body, timeout).await {
            Ok((status, headers, body)) => {
                if trace::enabled() {
                    trace::record_http(&tracing::Span::current(), Some(status), None);
                }
                interpret(status, &headers, body)
            }
            Err(AttemptError::Body { status, reason }) => Outcome::Failed(Failure {
                status: Some(status),
                body: Bytes::new(),
                retryable: true,
                retry_after: None,
                reason,
            }),
            Err(e) => Outcome::Failed(transport_failure(e, timeout)),
        }
    }

    /// [`Sender::attempt`] inside a `deliver attempt` span (a child of the current span),
    /// which gets the status and outcome and whose context the request carries. Attempt
    /// `number` 1 is the first. The span is returned so that a reply can be its child; with
    /// tracing off it is [`tracing::Span::none`] and this is `attempt` and nothing more.
    pub async fn attempt_traced(
        &self,
        url: &Endpoint,
        envelope: &Envelope,
        format: Format,
        namespace: Option<&str>,
        timeout: Duration,
        number: u32,
    ) -> (Outcome, tracing::Span) {
        if !trace::enabled() {
            let outcome = self
                .attempt(url, envelope, format, namespace, timeout)
                .await;
            return (outcome, tracing::Span::none());
        }
        let span = trace::attempt(url.as_str(), number);
        let outcome = self
            .attempt(url, envelope, format, namespace, timeout)
            .instrument(span.clone())
            .await;
        record_outcome(&span, &outcome);
        (outcome, span)
    }

    /// POSTs and reads the whole answer (at most [`MAX_RESPONSE_BODY`] bytes) within
    /// `timeout`.
    async fn send(
        &self,
        url: &Endpoint,
        headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(u16, HeaderMap, Bytes), AttemptError> {
        let mut req = http::Request::new(Full::new(body));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = url.uri().clone();
        *req.headers_mut() = headers;
        let deadline = tokio::time::Instant::now() + timeout;
        let client = self.client_for(url).map_err(AttemptError::Client)?;
        if let Some(auth) = self.authorization(url).await.map_err(AttemptError::Token)? {
            req.headers_mut().insert(http::header::AUTHORIZATION, auth);
        }
        let response = tokio::time::timeout_at(deadline, client.request(req))
            .await
            .map_err(|_| AttemptError::Timeout)?
            .map_err(AttemptError::Send)?;
        let (parts, body) = response.into_parts();
        let status = parts.status.as_u16();
        let body = match tokio::time::timeout_at(
            deadline,
            Limited::new(body, MAX_RESPONSE_BODY).collect(),
        )
        .await
        {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) => {
                let reason = if e.is::<LengthLimitError>() {
                    format!("response body larger than {MAX_RESPONSE_BODY} bytes")
                } else {
                    format!("reading the response body failed: {}", error_chain(&*e))
                };
                return Err(AttemptError::Body { status, reason });
            }
            Err(_) => {
                return Err(AttemptError::Body {
                    status,
                    reason: format!(
                    "reading the response body failed: not finished within the {timeout:?} timeout"
                ),
                })
            }
        };
        Ok((status, parts.headers, body))
    }

    /// Delivers with retries, then dead-letters (or drops). Waits with tokio time.
    pub async fn deliver(&self, req: Request<'_>) -> Report {
        self.deliver_from(req, 1).await
    }

    /// Like [`Sender::deliver`], but the first attempt made counts as attempt number
    /// `first_attempt` (a redelivered message continues its schedule).
    pub async fn deliver_from(&self, req: Request<'_>, first_attempt: u32) -> Report {
        let never = CancellationToken::new();
        match self.deliver_until(req, first_attempt, &never).await {
            Some(report) => report,
            None => unreachable!("a token nobody holds is never cancelled"),
        }
    }

    /// Like [`Sender::deliver_from`], but gives up waiting as soon as `stop` fires (the
    /// subscription was deleted or changed, or the drain period of a shutdown is over):
    /// `None` then, and the caller hands the event back to its channel.
    pub async fn deliver_until(
        &self,
        req: Request<'_>,
        first_attempt: u32,
        stop: &CancellationToken,
    ) -> Option<Report> {
        let (result, attempts) = self
            .send_with_retries(
                req.url,
                req.envelope,
                req.policy,
                req.namespace,
                first_attempt,
                stop,
            )
            .await?;
        let result = match result {
            Ok(reply) => Delivered::Ok { reply },
            Err(last) => self.dead_letter_until(req, last, stop).await?,
        };
        Some(Report { result, attempts })
    }

    /// After the last failed attempt: sends the original event, with the `knativeerror*`
    /// extensions, to the policy's dead-letter sink under the same retry policy.
    pub async fn dead_letter(&self, req: Request<'_>, last: Failure) -> Delivered {
        let never = CancellationToken::new();
        match self.dead_letter_until(req, last, &never).await {
            Some(d) => d,
            None => unreachable!("a token nobody holds is never cancelled"),
        }
    }

    /// [`Sender::dead_letter`] that stops waiting when `stop` fires (`None`).
    pub async fn dead_letter_until(
        &self,
        req: Request<'_>,
        last: Failure,
        stop: &CancellationToken,
    ) -> Option<Delivered> {
        let Some(dls) = &req.policy.dead_letter_sink else {
            return Some(Delivered::Dropped { last });
        };
        let event = dead_letter_event(
            &req.envelope.event,
            req.url.as_str(),
            last.status,
            &last.body,
        );
        let envelope = Envelope::with_headers(event, req.envelope.headers.clone());
        let (result, _) = self
            .send_with_retries(dls, &envelope, req.policy, req.namespace, 1, stop)
            .await?;
        Some(match result {
            Ok(_) => Delivered::DeadLettered { last },
            Err(dead_letter) => Delivered::DeadLetterFailed { last, dead_letter },
        })
    }

    /// Attempts until success, a terminal failure or the last retry; `None` when `stop`
    /// fired first (during an attempt or a wait).
    async fn send_with_retries(
        &self,
        url: &Endpoint,
        envelope: &Envelope,
        policy: &DeliveryPolicy,
        namespace: Option<&str>,
        first_attempt: u32,
        stop: &CancellationToken,
    ) -> Option<(Result<Option<Event>, Failure>, u32)> {
        let mut attempt = first_attempt.max(1);
        let mut made = 0;
        loop {
            made += 1;
            let outcome = tokio::select! {
                biased;
                _ = stop.cancelled() => return None,
                (o, _) = self.attempt_traced(url, envelope, policy.format, namespace, policy.timeout, attempt) => o,
            };
            let failure = match outcome {
                Outcome::Accepted { reply } => return Some((Ok(reply), made)),
                Outcome::Failed(f) => f,
            };
            match after_failure(
                policy,
                attempt,
                failure.retryable,
                failure.retry_after,
                fastrand::f64(),
            ) {
                Next::Retry(wait) => {
                    tracing::debug!(url = %url, attempt, status = ?failure.status, wait_ms = wait.as_millis() as u64, reason = %failure.reason, "delivery attempt failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    attempt += 1;
                }
                Next::GiveUp => {
                    tracing::debug!(url = %url, attempt, status = ?failure.status, reason = %failure.reason, "delivery failed; giving up");
                    return Some((Err(failure), made));
                }
            }
        }
    }
}

/// Puts a failed attempt's status and reason on its span (the HTTP status of an answer is
/// recorded when it arrives).
pub fn record_outcome(span: &tracing::Span, outcome: &Outcome) {
    match outcome {
        Outcome::Accepted { .. } => {}
        Outcome::Failed(f) => trace::record_http(span, f.status, Some(&f.reason)),
    }
}

/// GETs a small document (an OIDC discovery document, a JWKS) with the same TLS trust as
/// deliveries plus `ca_pem`, and an optional bearer token; the body of a 2xx, else an error
/// naming the URL and the status.
pub async fn get(
    url: &url::Url,
    ca_pem: Option<&str>,
    bearer: Option<&str>,
    timeout: Duration,
) -> Result<Bytes, String> {
    let client = tls::client(ca_pem)?;
    let mut req = http::Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = url
        .as_str()
        .parse()
        .map_err(|e| format!("{url}: not a valid request URI: {e}"))?;
    if let Some(token) = bearer {
        let v = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "the bearer token holds characters a header cannot carry".to_string())?;
        req.headers_mut().insert(http::header::AUTHORIZATION, v);
    }
    let work = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE_BODY)
            .collect()
            .await
            .map_err(|e| format!("GET {url}: reading the body: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "GET {url}: answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ));
        }
        Ok(body)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("GET {url}: no answer within {timeout:?}"))?
}

fn transport_failure(e: AttemptError, timeout: Duration) -> Failure {
    let reason = match e {
        AttemptError::Timeout => format!("no answer within the {timeout:?} timeout"),
        AttemptError::Send(e) if e.is_connect() => {
            format!("could not connect: {}", error_chain(&e))
        }
        AttemptError::Send(e) => format!("request failed: {}", error_chain(&e)),
        AttemptError::Body { reason, .. }
        | AttemptError::Client(reason)
        | AttemptError::Token(reason) => reason,
    };
    Failure {
        status: None,
        body: Bytes::new(),
        retryable: true,
        retry_after: None,
        reason,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}

/// Turns a status, headers and body into an [`Outcome`] (SEMANTICS.md §4): 202 is success
/// whatever the body; another 2xx is success if the body is empty, success with a reply if
/// it is a CloudEvent, and a retryable failure otherwise.
///
/// An empty body is success even when the Content-Type says `application/cloudevents+json`
/// (frameworks set a default Content-Type on every answer); only a binary-mode reply, whose
/// event lives in `ce-` headers, can be an event with no body.
pub fn interpret(status: u16, headers: &HeaderMap, body: Bytes) -> Outcome {
    match classify(status) {
        Class::Success if status == 202 => Outcome::Accepted { reply: None },
        Class::Success if body.is_empty() && !headers.contains_key("ce-specversion") => {
            Outcome::Accepted { reply: None }
        }
        Class::Success if codec::looks_like_event(headers) => {
            match codec::decode(headers, body.clone()) {
                Ok(mut events) if events.len() == 1 => Outcome::Accepted {
                    reply: events.pop(),
                },
                Ok(events) => Outcome::Failed(Failure {
                    status: Some(status),
                    body,
                    retryable: true,
                    retry_after: None,
                    reason: format!(
                        "the reply holds {} events; a reply is one event",
                        events.len()
                    ),
                }),
                Err(e) => Outcome::Failed(Failure {
                    status: Some(status),
                    body,
                    retryable: true,
                    retry_after: None,
                    reason: format!("the reply is not a valid CloudEvent: {e}"),
                }),
            }
        }
        Class::Success if body.is_empty() => Outcome::Accepted { reply: None },
        Class::Success => Outcome::Failed(Failure {
            status: Some(status),
            body,
            retryable: true,
            retry_after: None,
            reason: format!("{status} with a body that is not a CloudEvent"),
        }),
        class => {
            let retry_after = if status == 429 || status == 503 {
                headers
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()))
            } else {
                None
            };
            Outcome::Failed(Failure {
                status: Some(status),
                body,
                retryable: class == Class::Retryable,
                retry_after,
                reason: format!("the destination answered {status}"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn interpretation_table() {
        let ce = hm(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "r"),
            ("ce-source", "s"),
            ("ce-type", "reply"),
        ]);
        let none = HeaderMap::new();
        let b = Bytes::from_static;
        assert!(matches!(
            interpret(200, &none, b(b"")),
            Outcome::Accepted { reply: None }
        ));
        assert!(matches!(
            interpret(204, &none, b(b"")),
            Outcome::Accepted { reply: None }
        ));
        assert!(matches!(
            interpret(202, &none, b(b"whatever")),
            Outcome::Accepted { reply: None }
        ));
        match interpret(200, &ce, b(b"data")) {
            Outcome::Accepted { reply: Some(e) } => assert_eq!(e.ty(), "reply"),
            o => panic!("{o:?}"),
        }
        match interpret(200, &none, b(b"hello")) {
            Outcome::Failed(f) => assert!(f.retryable),
            o => panic!("{o:?}"),
        }
        match interpret(200, &hm(&[("ce-specversion", "1.0")]), b(b"")) {
            Outcome::Failed(f) => {
                assert!(f.retryable && f.reason.contains("not a valid CloudEvent"))
            }
            o => panic!("{o:?}"),
        }
        match interpret(503, &hm(&[("retry-after", "7")]), b(b"")) {
            Outcome::Failed(f) => {
                assert!(f.retryable);
                assert_eq!(f.retry_after, Some(Duration::from_secs(7)));
            }
            o => panic!("{o:?}"),
        }
        // Issue 9 item 6: an empty 200 labelled as a structured event was retried and
        // dropped; an empty body is success whatever the Content-Type.
        for ct in [
            "application/cloudevents+json",
            "application/cloudevents-batch+json",
        ] {
            assert!(matches!(
                interpret(200, &hm(&[("content-type", ct)]), b(b"")),
                Outcome::Accepted { reply: None }
            ));
        }
        match interpret(400, &none, b(b"bad")) {
            Outcome::Failed(f) => assert!(!f.retryable && f.status == Some(400)),
            o => panic!("{o:?}"),
        }
    }
}
