//! OpenTelemetry end to end: `sluice run` exporting to a real OTLP/HTTP receiver (an axum
//! server in this test decoding `POST /v1/traces` protobuf), and JSON logs.
//!
//! The chain asserted is one event's whole path: producer → ingress → channel publish →
//! deliver (trigger A) → deliver attempt → reply → channel publish → deliver (trigger B) →
//! deliver attempt, all in the producer's trace, each span the parent of the next; the sinks
//! receive the `traceparent` of the attempt that reached them.

mod common;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Router;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PRODUCER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";

/// One exported span, ids in hex.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: Vec<(String, String)>,
    service: String,
}

impl Span {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The `traceparent` naming this span.
    fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn text(kv: &KeyValue) -> (String, String) {
    let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    };
    (kv.key.clone(), v)
}

/// A real OTLP/HTTP trace receiver on loopback.
struct Collector {
    addr: std::net::SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Collector {
    async fn start() -> Collector {
        let spans: Arc<Mutex<Vec<Span>>> = Default::default();
        let app = Router::new()
            .route("/v1/traces", axum::routing::post(receive))
            .with_state(spans.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Collector { addr, spans }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until spans named `names` (with repeats) have all arrived.
    async fn wait_for(&self, names: &[&str]) -> Vec<Span> {
        eventually(
            Duration::from_secs(30),
            &format!("spans {names:?} at the collector"),
            || async {
                let spans = self.spans();
                let enough = names.iter().all(|n| {
                    let want = names.iter().filter(|m| *m == n).count();
                    spans.iter().filter(|s| s.name == *n).count() >= want
                });
                enough.then_some(spans)
            },
        )
        .await
    }
}

async fn receive(State(spans): State<Arc<Mutex<Vec<Span>>>>, body: Bytes) -> impl IntoResponse {
    let req = match ExportTraceServiceRequest::decode(body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}")).into_response(),
    };
    let mut got = spans.lock().unwrap();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter().map(text))
            .find(|(k, _)| k == "service.name")
            .map(|(_, v)| v)
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                got.push(Span {
                    name: s.name.clone(),
                    kind: s.kind,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent: hex(&s.parent_span_id),
                    attributes: s.attributes.iter().map(text).collect(),
                    service: service.clone(),
                });
            }
        }
    }
    (
        StatusCode::OK,
        [("content-type", "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
        .into_response()
}

fn one<'a>(spans: &'a [Span], what: &str, pred: impl Fn(&Span) -> bool) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| pred(s)).collect();
    assert_eq!(
        found.len(),
        1,
        "want exactly one {what}, got {found:#?}\nall spans: {spans:#?}"
    );
    found[0]
}

fn child_of<'a>(spans: &'a [Span], name: &str, parent: &Span) -> &'a Span {
    one(spans, &format!("`{name}` under `{}`", parent.name), |s| {
        s.name == name && s.parent == parent.span_id
    })
}

fn env(collector: &Collector) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
        // Export every 100 ms instead of every 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ]
}

#[tokio::test]
async fn one_event_through_broker_trigger_reply_and_second_trigger_is_one_trace() {
    let collector = Collector::start().await;
    // Sink A answers the order with a reply event (binary mode); sink B takes the reply.
    let a = Sink::start(|_, _| {
        (
            StatusCode::OK,
            [
                ("ce-specversion", "1.0"),
                ("ce-id", "reply-1"),
                ("ce-source", "/sink-a"),
                ("ce-type", "com.example.shipped"),
                ("content-type", "application/json"),
            ],
            "{\"shipped\":true}",
        )
            .into_response()
    })
    .await;
    let b = Sink::ok().await;
    let yaml = format!(
        r#"apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default, namespace: default}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: a, namespace: default}}
spec:
  broker: default
  filter: {{attributes: {{type: com.example.order}}}}
  subscriber: {{uri: "{a}"}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: b, namespace: default}}
spec:
  broker: default
  filter: {{attributes: {{type: com.example.shipped}}}}
  subscriber: {{uri: "{b}"}}
"#,
        a = a.url(),
        b = b.url()
    );
    let dir = test_dir("tracing-chain");
    std::fs::write(dir.join("resources.yaml"), yaml).unwrap();
    let env = env(&collector);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let sluice = Sluice::start_in_env(dir, &[], &env).await;

    let producer = format!("00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01");
    let status = post_event(
        &sluice.broker_url("default", "default"),
        "order-1",
        "com.example.order",
        &[
            ("traceparent", producer.as_str()),
            ("tracestate", "vendor=x"),
        ],
        "{\"total\":42}",
    )
    .await;
    assert_eq!(status, 202);
    let to_a = a.wait_for(1, Duration::from_secs(20)).await;
    let to_b = b.wait_for(1, Duration::from_secs(20)).await;

    let spans = collector
        .wait_for(&[
            "ingress",
            "channel publish",
            "channel publish",
            "deliver",
            "deliver",
            "deliver attempt",
            "deliver attempt",
            "reply",
        ])
        .await;
    let ingress = one(&spans, "ingress", |s| s.name == "ingress");
    assert_eq!(
        ingress.parent, PRODUCER_SPAN,
        "the producer's span is the parent"
    );
    assert_eq!(ingress.kind, SpanKind::Server as i32);
    assert_eq!(ingress.service, "sluice");
    assert_eq!(ingress.attr("cloudevents.event_id"), Some("order-1"));
    assert_eq!(ingress.attr("cloudevents.event_source"), Some("/test"));
    assert_eq!(
        ingress.attr("cloudevents.event_type"),
        Some("com.example.order")
    );
    assert_eq!(ingress.attr("cloudevents.event_spec_version"), Some("1.0"));
    assert_eq!(
        ingress.attr("messaging.destination.name"),
        Some("default/default")
    );
    assert_eq!(ingress.attr("http.response.status_code"), Some("202"));

    let publish = child_of(&spans, "channel publish", ingress);
    assert_eq!(publish.kind, SpanKind::Producer as i32);
    let deliver_a = child_of(&spans, "deliver", publish);
    assert_eq!(deliver_a.kind, SpanKind::Consumer as i32);
    assert_eq!(
        deliver_a.attr("messaging.consumer.group.name"),
        Some("default/a")
    );
    let attempt_a = child_of(&spans, "deliver attempt", deliver_a);
    assert_eq!(attempt_a.kind, SpanKind::Client as i32);
    assert_eq!(attempt_a.attr("http.response.status_code"), Some("200"));
    assert_eq!(attempt_a.attr("http.request.resend_count"), Some("0"));
    assert_eq!(attempt_a.attr("url.full"), Some(a.url().as_str()));
    let reply = child_of(&spans, "reply", attempt_a);
    assert_eq!(reply.attr("cloudevents.event_id"), Some("reply-1"));
    assert_eq!(
        reply.attr("cloudevents.event_type"),
        Some("com.example.shipped")
    );
    let republish = child_of(&spans, "channel publish", reply);
    let deliver_b = child_of(&spans, "deliver", republish);
    assert_eq!(
        deliver_b.attr("messaging.consumer.group.name"),
        Some("default/b")
    );
    assert_eq!(deliver_b.attr("cloudevents.event_id"), Some("reply-1"));
    let attempt_b = child_of(&spans, "deliver attempt", deliver_b);
    assert_eq!(attempt_b.attr("http.response.status_code"), Some("200"));
    for s in [
        ingress, publish, deliver_a, attempt_a, reply, republish, deliver_b, attempt_b,
    ] {
        assert_eq!(
            s.trace_id, PRODUCER_TRACE,
            "{} is in the producer's trace",
            s.name
        );
    }

    // Each sink continues the trace from the attempt that reached it, with the producer's
    // tracestate.
    assert_eq!(
        to_a[0].header("traceparent"),
        Some(attempt_a.traceparent().as_str())
    );
    assert_eq!(to_a[0].header("tracestate"), Some("vendor=x"));
    assert_eq!(
        to_b[0].header("traceparent"),
        Some(attempt_b.traceparent().as_str())
    );
    sluice.kill().await;
}

/// Without a producer context the ingress span starts a trace; the event's own
/// distributed-tracing extension is used when the request has no `traceparent` header; a
/// failed attempt is marked with its status and retried as its own span.
#[tokio::test]
async fn extension_parent_and_retried_attempts() {
    let collector = Collector::start().await;
    let sink = Sink::start(|_, n| {
        if n == 0 {
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        } else {
            StatusCode::OK.into_response()
        }
    })
    .await;
    let yaml = format!(
        r#"apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default, namespace: default}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: t, namespace: default}}
spec:
  broker: default
  subscriber: {{uri: "{}"}}
  delivery: {{retry: 2, backoffDelay: PT0.05S}}
"#,
        sink.url()
    );
    let dir = test_dir("tracing-retry");
    std::fs::write(dir.join("resources.yaml"), yaml).unwrap();
    let env = env(&collector);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let sluice = Sluice::start_in_env(dir, &[], &env).await;
    let ext = format!("00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01");
    let status = post_event(
        &sluice.broker_url("default", "default"),
        "e-1",
        "t",
        &[("ce-traceparent", ext.as_str())],
        "{}",
    )
    .await;
    assert_eq!(status, 202);
    let got = sink.wait_for(2, Duration::from_secs(20)).await;
    // The extension is the event's and reaches the sink unchanged (binary mode header).
    assert_eq!(got[1].header("ce-traceparent"), Some(ext.as_str()));

    let spans = collector
        .wait_for(&["ingress", "deliver", "deliver attempt", "deliver attempt"])
        .await;
    let ingress = one(&spans, "ingress", |s| s.name == "ingress");
    assert_eq!(ingress.parent, PRODUCER_SPAN);
    assert_eq!(ingress.trace_id, PRODUCER_TRACE);
    let deliver = one(&spans, "deliver", |s| s.name == "deliver");
    let first = one(&spans, "first attempt", |s| {
        s.parent == deliver.span_id && s.attr("http.request.resend_count") == Some("0")
    });
    assert_eq!(first.attr("http.response.status_code"), Some("503"));
    assert_eq!(first.attr("error.type"), Some("503"));
    let second = one(&spans, "second attempt", |s| {
        s.parent == deliver.span_id && s.attr("http.request.resend_count") == Some("1")
    });
    assert_eq!(second.attr("http.response.status_code"), Some("200"));
    assert_eq!(
        got[1].header("traceparent"),
        Some(second.traceparent().as_str())
    );
    sluice.kill().await;
}

/// The context crosses a durable channel: stored as a NATS message header by the ingress,
/// read back by the dispatcher (the `deliver` span is the stored `channel publish` span's
/// child).
#[cfg(feature = "nats")]
#[tokio::test]
async fn trace_context_survives_a_nats_channel() {
    let nats = sluice_tests::start_nats().await;
    let collector = Collector::start().await;
    let sink = Sink::ok().await;
    let yaml = format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: channel, namespace: default}}
data:
  url: "{url}"
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
  namespace: default
  annotations: {{eventing.knative.dev/broker.class: NatsJetStreamBroker}}
spec:
  config: {{apiVersion: v1, kind: ConfigMap, name: channel, namespace: default}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: t, namespace: default}}
spec:
  broker: default
  subscriber: {{uri: "{sink}"}}
"#,
        url = nats.url(),
        sink = sink.url()
    );
    let dir = test_dir("tracing-nats");
    std::fs::write(dir.join("resources.yaml"), yaml).unwrap();
    let env = env(&collector);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let sluice = Sluice::start_in_env(dir, &[], &env).await;
    let producer = format!("00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01");
    let status = post_event(
        &sluice.broker_url("default", "default"),
        "n-1",
        "t",
        &[("traceparent", producer.as_str())],
        "{}",
    )
    .await;
    assert_eq!(status, 202);
    let got = sink.wait_for(1, Duration::from_secs(30)).await;
    let spans = collector
        .wait_for(&["ingress", "channel publish", "deliver", "deliver attempt"])
        .await;
    let ingress = one(&spans, "ingress", |s| s.name == "ingress");
    let publish = child_of(&spans, "channel publish", ingress);
    let deliver = child_of(&spans, "deliver", publish);
    let attempt = child_of(&spans, "deliver attempt", deliver);
    assert_eq!(deliver.trace_id, PRODUCER_TRACE);
    assert_eq!(
        got[0].header("traceparent"),
        Some(attempt.traceparent().as_str())
    );
    sluice.kill().await;
}

/// `SLUICE_LOG_FORMAT=json`: every log line is a JSON object with a level and a message.
#[tokio::test]
async fn json_logs() {
    use tokio::io::AsyncBufReadExt as _;
    let dir = test_dir("tracing-json-logs");
    std::fs::write(
        dir.join("resources.yaml"),
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: default, namespace: default}\n",
    )
    .unwrap();
    let mut child = tokio::process::Command::new(binary())
        .args(["run", "-f"])
        .arg(&dir)
        .args(["--ingress", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin", &format!("127.0.0.1:{}", free_port())])
        .env("SLUICE_LOG_FORMAT", "json")
        .env("SLUICE_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("a log line within 20 s")
            .unwrap()
            .expect("sluice exited before logging");
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["timestamp"].is_string(), "{line}");
        assert!(v["message"].is_string(), "{line}");
        seen.push(v);
    }
    let _ = child.kill().await;

    // And an unknown format is refused with the choices.
    let out = tokio::process::Command::new(binary())
        .args(["get", "--admin", "127.0.0.1:1"])
        .env("SLUICE_LOG_FORMAT", "yaml")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("text") && err.contains("json"), "{err}");
}
