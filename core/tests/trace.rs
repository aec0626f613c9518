//! The spans of `sluice_core::trace` with tracing on, recorded by the OpenTelemetry SDK's
//! in-memory exporter: parents come from where the module docs say, and the context
//! injected into headers is the span's own. (A separate test binary: turning tracing on is
//! process-wide.)

use opentelemetry::trace::{SpanId, SpanKind, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use sluice_core::{trace, Event, SpecVersion};
use tracing_subscriber::layer::SubscriberExt as _;

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

#[test]
fn spans_link_through_headers_and_carry_cloudevents_attributes() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    trace::set_enabled(true);

    let mut event = Event::new(SpecVersion::V10, "e-1", "/producer", "com.example.t");
    event.set("subject", "orders/1");
    let mut stored = vec![("x-request-id".to_owned(), "r".to_owned())];
    let mut outgoing = http::HeaderMap::new();
    tracing::subscriber::with_default(subscriber, || {
        let mut request = http::HeaderMap::new();
        request.insert("traceparent", TP.parse().unwrap());
        let ingress = trace::ingress(&event, "default/default", &request);
        let publish = ingress.in_scope(|| trace::publish(&event, "default/default"));
        trace::inject(&publish, &mut stored);
        drop(publish);
        drop(ingress);
        // The dispatcher side: only the stored headers connect it to the ingress.
        let deliver = trace::deliver(&event, &stored, "default/default", "default/t");
        let attempt = deliver.in_scope(|| trace::attempt("http://sink/", 2));
        trace::inject_http(&attempt, &mut outgoing);
        trace::record_http(&attempt, Some(503), Some("the destination answered 503"));
        let reply = trace::reply(&event, "default/default", &attempt);
        drop((reply, attempt, deliver));
    });

    let spans = exporter.get_finished_spans().unwrap();
    let by_name = |n: &str| {
        spans.iter().find(|s| s.name == n).unwrap_or_else(|| {
            panic!(
                "no `{n}` span in {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        })
    };
    let (ingress, publish, deliver, attempt, reply) = (
        by_name("ingress"),
        by_name("channel publish"),
        by_name("deliver"),
        by_name("deliver attempt"),
        by_name("reply"),
    );
    let producer_trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    for s in [ingress, publish, deliver, attempt, reply] {
        assert_eq!(s.span_context.trace_id(), producer_trace, "{}", s.name);
    }
    assert_eq!(
        ingress.parent_span_id,
        SpanId::from_hex("00f067aa0ba902b7").unwrap()
    );
    assert_eq!(publish.parent_span_id, ingress.span_context.span_id());
    assert_eq!(deliver.parent_span_id, publish.span_context.span_id());
    assert_eq!(attempt.parent_span_id, deliver.span_context.span_id());
    assert_eq!(reply.parent_span_id, attempt.span_context.span_id());
    assert_eq!(ingress.span_kind, SpanKind::Server);
    assert_eq!(publish.span_kind, SpanKind::Producer);
    assert_eq!(deliver.span_kind, SpanKind::Consumer);
    assert_eq!(attempt.span_kind, SpanKind::Client);

    // The stored and the outgoing headers name the publish and the attempt span.
    let tp = |s: &SpanData| {
        format!(
            "00-{}-{}-01",
            s.span_context.trace_id(),
            s.span_context.span_id()
        )
    };
    assert_eq!(
        stored,
        [
            ("x-request-id".to_owned(), "r".to_owned()),
            ("traceparent".to_owned(), tp(publish)),
        ]
    );
    assert_eq!(outgoing["traceparent"], tp(attempt).as_str());

    assert_eq!(
        attr(ingress, "cloudevents.event_id").as_deref(),
        Some("e-1")
    );
    assert_eq!(
        attr(ingress, "cloudevents.event_source").as_deref(),
        Some("/producer")
    );
    assert_eq!(
        attr(ingress, "cloudevents.event_type").as_deref(),
        Some("com.example.t")
    );
    assert_eq!(
        attr(ingress, "cloudevents.event_subject").as_deref(),
        Some("orders/1")
    );
    assert_eq!(
        attr(ingress, "cloudevents.event_spec_version").as_deref(),
        Some("1.0")
    );
    assert_eq!(
        attr(deliver, "messaging.consumer.group.name").as_deref(),
        Some("default/t")
    );
    assert_eq!(
        attr(attempt, "http.response.status_code").as_deref(),
        Some("503")
    );
    assert_eq!(
        attr(attempt, "http.request.resend_count").as_deref(),
        Some("1")
    );
    assert!(matches!(
        attempt.status,
        opentelemetry::trace::Status::Error { .. }
    ));
}

#[test]
fn the_event_extension_is_the_parent_when_the_request_has_none() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let mut event = Event::new(SpecVersion::V10, "e-2", "/p", "t");
    event.set("traceparent", TP);
    tracing::subscriber::with_default(subscriber, || {
        // Process-wide; every test in this binary wants it on.
        trace::set_enabled(true);
        let root = trace::source_emit(
            "PingSource",
            "ns/p",
            &Event::new(SpecVersion::V10, "x", "/s", "t"),
            None,
        );
        let ingress = trace::ingress(&event, "ns/b", &http::HeaderMap::new());
        drop((root, ingress));
    });
    let spans = exporter.get_finished_spans().unwrap();
    let ingress = spans.iter().find(|s| s.name == "ingress").unwrap();
    assert_eq!(
        ingress.span_context.trace_id(),
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
    );
    let root = spans.iter().find(|s| s.name == "source emit").unwrap();
    assert_eq!(root.parent_span_id, SpanId::INVALID);
    assert_eq!(
        attr(root, "sluice.source.kind").as_deref(),
        Some("PingSource")
    );
}
