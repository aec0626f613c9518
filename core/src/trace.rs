//! Distributed tracing of an event's path: W3C trace context in and out, and the spans each
//! component opens.
//!
//! ```text
//! producer ─traceparent─▶ ingress (server) ─▶ channel publish (producer) ══ stored ══▶
//!     deliver (consumer) ─▶ deliver attempt (client) ─traceparent─▶ sink
//!                                  └─▶ reply ─▶ channel publish ══ stored ══▶ deliver …
//! source emit (producer) ─▶ deliver attempt (client) ─traceparent─▶ sink
//! ```
//!
//! The context crosses storage in the envelope's `traceparent` / `tracestate` headers (the
//! same pass-through headers SEMANTICS.md §2 already carries; Kafka records and NATS
//! messages hold them as headers, see `sluice_channels::wire`). With tracing on, the
//! `channel publish` span *replaces* the producer's values there, so the dispatcher's
//! `deliver` span is its child; every delivery attempt again replaces them on the outgoing
//! request, so a sink continues the trace from the attempt that reached it. The event's
//! own `traceparent` extension (the CloudEvents distributed-tracing extension) is never
//! changed: it names the event's origin, and is used as the ingress span's parent only when
//! the request has no `traceparent` header.
//!
//! Spans are `tracing` spans with the target [`TARGET`]; the binary routes that target to
//! the OpenTelemetry layer (and keeps it out of the logs). Tracing is off unless the binary
//! calls [`set_enabled`]: then every constructor here returns [`Span::none`] after one
//! relaxed atomic load, and no span is allocated per event.
//!
//! Attributes follow the CloudEvents semantic conventions (`cloudevents.event_id`,
//! `cloudevents.event_source`, `cloudevents.event_type`, `cloudevents.event_subject`,
//! `cloudevents.event_spec_version`) and OpenTelemetry's messaging and HTTP conventions
//! (`messaging.destination.name`, `messaging.consumer.group.name`, `url.full`,
//! `http.response.status_code`, `http.request.resend_count`).

use crate::event::Event;
use opentelemetry::trace::{
    SpanContext, SpanId, Status, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The `tracing` target of every span opened here.
pub const TARGET: &str = "sluice::trace";

/// The W3C trace context header names (also the distributed-tracing extension's names).
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns span creation on (the binary does this once an exporter is installed).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether spans are created at all.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Parses a W3C `traceparent` (and optional `tracestate`) into a remote span context.
///
/// `None` for anything the Trace Context spec says to ignore: a wrong shape, upper-case or
/// non-hex digits, version `ff`, all-zero ids, or version `00` with extra fields. A later
/// version may append fields after the flags (`-…`), which are ignored. A malformed
/// `tracestate` is dropped, keeping the parent.
pub fn parse_traceparent(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let v = traceparent.trim();
    let bytes = v.as_bytes();
    if bytes.len() < 55 {
        return None;
    }
    let lower_hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let (version, trace_id, span_id, flags) = (&v[0..2], &v[3..35], &v[36..52], &v[53..55]);
    if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    if ![version, trace_id, span_id, flags]
        .iter()
        .all(|s| lower_hex(s))
        || version == "ff"
    {
        return None;
    }
    match (version, bytes.get(55)) {
        (_, None) => {}
        ("00", Some(_)) => return None,
        (_, Some(b'-')) => {}
        (_, Some(_)) => return None,
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let state = tracestate
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        state,
    ))
}

/// The `traceparent` value naming a span context; `None` for an invalid one.
pub fn format_traceparent(cx: &SpanContext) -> Option<String> {
    cx.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            cx.trace_id(),
            cx.span_id(),
            cx.trace_flags().to_u8() & TraceFlags::SAMPLED.to_u8()
        )
    })
}

/// The context carried by envelope headers (lower-case names, as stored).
pub fn from_headers(headers: &[(String, String)]) -> Option<SpanContext> {
    let find = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    };
    parse_traceparent(find(TRACEPARENT)?, find(TRACESTATE))
}

/// The context of an HTTP request's headers.
pub fn from_http(headers: &http::HeaderMap) -> Option<SpanContext> {
    let tp = headers.get(TRACEPARENT)?.to_str().ok()?;
    parse_traceparent(tp, headers.get(TRACESTATE).and_then(|v| v.to_str().ok()))
}

/// The context of the event's distributed-tracing extension.
pub fn from_event(event: &Event) -> Option<SpanContext> {
    parse_traceparent(event.get_str(TRACEPARENT)?, event.get_str(TRACESTATE))
}

/// The span context of `span` (invalid when tracing is off or the span is disabled).
pub fn span_context(span: &Span) -> SpanContext {
    span.context().span().span_context().clone()
}

/// Replaces `traceparent` / `tracestate` in envelope headers with `span`'s context. Leaves
/// the headers alone when the span has no valid context (tracing off).
pub fn inject(span: &Span, headers: &mut Vec<(String, String)>) {
    let cx = span_context(span);
    let Some(tp) = format_traceparent(&cx) else {
        return;
    };
    headers.retain(|(k, _)| {
        !k.eq_ignore_ascii_case(TRACEPARENT) && !k.eq_ignore_ascii_case(TRACESTATE)
    });
    headers.push((TRACEPARENT.to_owned(), tp));
    let state = cx.trace_state().header();
    if !state.is_empty() {
        headers.push((TRACESTATE.to_owned(), state));
    }
}

/// [`inject`] for an outgoing HTTP request.
pub fn inject_http(span: &Span, headers: &mut http::HeaderMap) {
    let cx = span_context(span);
    let Some(tp) = format_traceparent(&cx) else {
        return;
    };
    if let Ok(v) = http::HeaderValue::from_str(&tp) {
        headers.insert(TRACEPARENT, v);
    }
    headers.remove(TRACESTATE);
    let state = cx.trace_state().header();
    if let Ok(v) = http::HeaderValue::from_str(&state) {
        if !state.is_empty() {
            headers.insert(TRACESTATE, v);
        }
    }
}

/// `messaging.destination.name` of a broker or messaging channel: its ingress path without
/// the leading slash (`ns/broker`, `ns/channels/name`).
pub fn destination_name(target: &crate::topology::ObjectRef) -> String {
    match target.kind {
        crate::topology::Kind::Broker => target.key.to_string(),
        _ => format!("{}/channels/{}", target.key.namespace, target.key.name),
    }
}

/// Makes `parent` the span's parent, or makes the span a root when there is none (instead
/// of a child of whatever span happens to be current).
fn set_remote_parent(span: &Span, parent: Option<SpanContext>) {
    let cx = match parent {
        Some(p) => opentelemetry::Context::new().with_remote_span_context(p),
        None => opentelemetry::Context::new(),
    };
    let _ = span.set_parent(cx);
}

/// Adds the CloudEvents semantic-convention attributes that may be absent.
fn optional_event_attributes(span: &Span, event: &Event) {
    if let Some(subject) = event.get_str("subject") {
        span.set_attribute("cloudevents.event_subject", subject.to_owned());
    }
}

/// Records the outcome of an HTTP exchange (or a failure without one) on `span`.
pub fn record_http(span: &Span, status: Option<u16>, error: Option<&str>) {
    if span.is_none() {
        return;
    }
    if let Some(s) = status {
        span.set_attribute("http.response.status_code", i64::from(s));
    }
    if let Some(e) = error {
        span.set_attribute(
            "error.type",
            status.map_or_else(|| "transport".to_owned(), |s| s.to_string()),
        );
        span.set_status(Status::error(e.to_owned()));
    }
}

/// Marks `span` failed with a reason.
pub fn record_error(span: &Span, reason: &str) {
    if !span.is_none() {
        span.set_status(Status::error(reason.to_owned()));
    }
}

/// The `ingress` span of one event received over HTTP (server kind): its parent is the
/// request's `traceparent`, else the event's distributed-tracing extension, else none.
pub fn ingress(event: &Event, destination: &str, request: &http::HeaderMap) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "ingress",
        otel.kind = "server",
        http.request.method = "POST",
        messaging.system = "sluice",
        messaging.destination.name = destination,
        cloudevents.event_id = event.id(),
        cloudevents.event_source = event.source(),
        cloudevents.event_type = event.ty(),
        cloudevents.event_spec_version = event.spec_version().as_str(),
    );
    set_remote_parent(&span, from_http(request).or_else(|| from_event(event)));
    optional_event_attributes(&span, event);
    span
}

/// The `channel publish` span (producer kind) of one event stored into a broker or channel,
/// a child of the current span (the ingress or reply span).
pub fn publish(event: &Event, destination: &str) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "channel publish",
        otel.kind = "producer",
        messaging.system = "sluice",
        messaging.operation.type = "send",
        messaging.destination.name = destination,
        cloudevents.event_id = event.id(),
        cloudevents.event_source = event.source(),
        cloudevents.event_type = event.ty(),
        cloudevents.event_spec_version = event.spec_version().as_str(),
    );
    optional_event_attributes(&span, event);
    span
}

/// The `deliver` span (consumer kind) of one stored event handed to one subscription; its
/// parent is the context stored with the event.
pub fn deliver(
    event: &Event,
    stored_headers: &[(String, String)],
    destination: &str,
    subscription: &str,
) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "deliver",
        otel.kind = "consumer",
        messaging.system = "sluice",
        messaging.operation.type = "process",
        messaging.destination.name = destination,
        messaging.consumer.group.name = subscription,
        cloudevents.event_id = event.id(),
        cloudevents.event_source = event.source(),
        cloudevents.event_type = event.ty(),
        cloudevents.event_spec_version = event.spec_version().as_str(),
    );
    set_remote_parent(&span, from_headers(stored_headers));
    optional_event_attributes(&span, event);
    span
}

/// The `deliver attempt` span (client kind) of attempt number `attempt` (1 for the first)
/// to `url`, a child of the current span.
pub fn attempt(url: &str, attempt: u32) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "deliver attempt",
        otel.kind = "client",
        http.request.method = "POST",
        url.full = url,
        http.request.resend_count = i64::from(attempt.saturating_sub(1)),
    )
}

/// The `reply` span of a subscriber's reply re-entering the broker (or going to a reply
/// URL), a child of the attempt span that received it.
pub fn reply(reply: &Event, destination: &str, attempt: &Span) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        parent: attempt,
        "reply",
        otel.kind = "producer",
        messaging.system = "sluice",
        messaging.destination.name = destination,
        cloudevents.event_id = reply.id(),
        cloudevents.event_source = reply.source(),
        cloudevents.event_type = reply.ty(),
        cloudevents.event_spec_version = reply.spec_version().as_str(),
    );
    optional_event_attributes(&span, reply);
    span
}

/// The `source emit` span (producer kind) of an event a source made. `kind` names the
/// source kind (`PingSource`, …), `name` the source (`ns/name`). `parent`: the context the
/// source's input carried (a Kafka record's `traceparent` header), if any.
pub fn source_emit(kind: &str, name: &str, event: &Event, parent: Option<SpanContext>) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "source emit",
        otel.kind = "producer",
        sluice.source.kind = kind,
        sluice.source.name = name,
        cloudevents.event_id = event.id(),
        cloudevents.event_source = event.source(),
        cloudevents.event_type = event.ty(),
        cloudevents.event_spec_version = event.spec_version().as_str(),
    );
    set_remote_parent(&span, parent.or_else(|| from_event(event)));
    optional_event_attributes(&span, event);
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// W3C Trace Context §3.2 (traceparent), case by case.
    #[test]
    fn traceparent_parsing_table() {
        let ok = |s: &str| parse_traceparent(s, None).is_some();
        let cases: &[(&str, bool, &str)] = &[
            (TP, true, "the spec's example"),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                true,
                "not sampled",
            ),
            (
                " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
                true,
                "outer spaces",
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                true,
                "a later version may add fields",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                false,
                "version 00 has exactly four fields",
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                false,
                "version ff is invalid",
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                false,
                "all-zero trace id",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                false,
                "all-zero parent id",
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                false,
                "upper-case hex",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
                false,
                "misplaced dash",
            ),
            ("00-abc-def-01", false, "short ids"),
            ("", false, "empty"),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
                false,
                "non-hex flags",
            ),
        ];
        for (value, want, why) in cases {
            assert_eq!(ok(value), *want, "{why}: {value:?}");
        }
    }

    #[test]
    fn parse_then_format_round_trips_and_keeps_state() {
        let cx = parse_traceparent(TP, Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")).unwrap();
        assert!(cx.is_remote() && cx.is_sampled());
        assert_eq!(format_traceparent(&cx).as_deref(), Some(TP));
        assert_eq!(cx.trace_state().get("congo"), Some("t61rcWkgMzE"));
        // A malformed tracestate is dropped; the parent is kept.
        let cx = parse_traceparent(TP, Some("not a list entry")).unwrap();
        assert_eq!(cx.trace_state().header(), "");
        // Unknown flag bits are not passed on.
        let cx = parse_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff",
            None,
        )
        .unwrap();
        assert!(format_traceparent(&cx).unwrap().ends_with("-01"));
        assert_eq!(format_traceparent(&SpanContext::empty_context()), None);
    }

    #[test]
    fn context_is_found_in_headers_requests_and_the_extension() {
        let headers = vec![
            ("x-request-id".to_owned(), "r".to_owned()),
            ("traceparent".to_owned(), TP.to_owned()),
            ("tracestate".to_owned(), "k=v".to_owned()),
        ];
        let cx = from_headers(&headers).unwrap();
        assert_eq!(cx.trace_state().get("k"), Some("v"));
        assert!(from_headers(&headers[..1]).is_none());

        let mut req = http::HeaderMap::new();
        req.insert("traceparent", TP.parse().unwrap());
        assert!(from_http(&req).is_some());
        assert!(from_http(&http::HeaderMap::new()).is_none());

        let mut event = Event::new(crate::SpecVersion::V10, "1", "/s", "t");
        assert!(from_event(&event).is_none());
        event.set("traceparent", TP);
        assert_eq!(
            from_event(&event).map(|c| c.span_id()),
            Some(SpanId::from_hex("00f067aa0ba902b7").unwrap())
        );
    }

    /// With tracing off (the default), no span is made and headers are left alone.
    #[test]
    fn off_means_no_spans_and_untouched_headers() {
        assert!(!enabled());
        let event = Event::new(crate::SpecVersion::V10, "1", "/s", "t");
        assert!(ingress(&event, "d", &http::HeaderMap::new()).is_none());
        assert!(publish(&event, "d").is_none());
        assert!(deliver(&event, &[], "d", "s").is_none());
        assert!(attempt("http://x/", 1).is_none());
        assert!(source_emit("PingSource", "ns/p", &event, None).is_none());
        let mut headers = vec![("traceparent".to_owned(), TP.to_owned())];
        inject(&Span::none(), &mut headers);
        assert_eq!(headers, [("traceparent".to_owned(), TP.to_owned())]);
        let mut http_headers = http::HeaderMap::new();
        inject_http(&Span::none(), &mut http_headers);
        assert!(http_headers.is_empty());
    }
}
