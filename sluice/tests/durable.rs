//! Durable brokers end to end (issue 4): every event answered 202 reaches the sink at least
//! once even when the sluice process is killed with SIGKILL mid-delivery, and a sink outage
//! loses nothing. Real servers (nats-server, Apache Kafka in KRaft mode) and real HTTP
//! sinks on loopback.

mod common;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const N: usize = 300;

fn broker_yaml(class: &str, config: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: channel, namespace: default}}
data:
{config}
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
  namespace: default
  annotations: {{eventing.knative.dev/broker.class: {class}}}
spec:
  config: {{apiVersion: v1, kind: ConfigMap, name: channel}}
  delivery:
    retry: 1000
    backoffPolicy: linear
    backoffDelay: PT0.05S
    backoffMax: PT0.5S
"#
    )
}

fn trigger_yaml(sink: &str) -> String {
    format!(
        "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: t, namespace: default}}\nspec:\n  broker: default\n  subscriber:\n    uri: {sink}\n"
    )
}

/// A trigger with at most 10 deliveries in flight, so a crash catches many events undelivered.
/// Not for the outage tests: where retries wait in-process (memory, Kafka), 10 slots would all
/// be held by the first 10 events' retries and the others never be attempted.
fn trigger_yaml_10_slots(sink: &str) -> String {
    format!(
        "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\n  namespace: default\n  annotations: {{sluice.dev/concurrency: \"10\"}}\nspec:\n  broker: default\n  subscriber:\n    uri: {sink}\n"
    )
}

fn nats_broker(url: &str) -> String {
    broker_yaml("NatsJetStreamBroker", &format!("  url: \"{url}\""))
}

fn kafka_broker(bootstrap_servers: &str) -> String {
    broker_yaml(
        "Kafka",
        &format!("  bootstrap.servers: \"{bootstrap_servers}\"\n  default.topic.partitions: \"3\""),
    )
}

/// Ids received by the sink, with how often each arrived.
fn ids(sink: &Sink) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in sink.received() {
        if let Some(id) = r.header("ce-id") {
            *m.entry(id.to_string()).or_insert(0) += 1;
        }
    }
    m
}

async fn produce(s: &Sluice, n: usize) {
    let url = s.broker_url("default", "default");
    let client = client();
    for i in 0..n {
        let status = client
            .post(&url)
            .header("ce-specversion", "1.0")
            .header("ce-id", format!("ev-{i}"))
            .header("ce-source", "/crash-test")
            .header("ce-type", "t")
            .body("{}")
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 202, "event {i} was refused");
    }
}

/// What a crash test waits for before the SIGKILL: deliveries a restart must not repeat.
enum Durable {
    /// Every ack is stored as it happens (NATS JetStream acks each message): deliveries.
    Acks,
    /// Offsets the trigger's consumer group has committed (Kafka commits finished offsets
    /// every 500 ms), read from the cluster at these bootstrap servers.
    #[cfg(feature = "kafka")]
    Committed(String),
}

/// Produces N events, kills sluice with SIGKILL once a good part of the deliveries is
/// durably recorded but well before the end, restarts it, and checks that every event
/// arrives and that only what was unrecorded at the crash (in flight, or finished since the
/// last Kafka commit) arrives twice.
async fn crash_and_restart(name: &str, durable: Durable, yaml_for_sink: impl Fn(&str) -> String) {
    // A slow sink keeps deliveries in flight when the process dies: 10 slots at 150 ms
    // each, about 66 deliveries a second, so the N events take several Kafka commit
    // intervals and the crash comes well before the end even when producing them (one
    // acknowledged request at a time) is slow.
    let sink = Sink::start_with_delay(
        |_, _| StatusCode::OK.into_response(),
        Duration::from_millis(150),
    )
    .await;
    let dir = test_dir(name);
    std::fs::write(dir.join("resources.yaml"), yaml_for_sink(&sink.url())).unwrap();
    let s = Sluice::start_in(dir.clone(), &[]).await;
    produce(&s, N).await;
    let recorded = match durable {
        Durable::Acks => {
            sink.wait_for(120, Duration::from_secs(30)).await;
            String::new()
        }
        #[cfg(feature = "kafka")]
        Durable::Committed(bootstrap_servers) => {
            use sluice_channels::kafka::{KafkaChannel, KafkaSettings};
            let settings = KafkaSettings::for_broker(
                &sluice_core::topology::Key::new("default", "default"),
                bootstrap_servers,
                3,
                1,
            );
            let ch = KafkaChannel::connect(settings).await.unwrap();
            let reader = ch.committed_offsets("default/t").unwrap();
            // Every partition starts at 0 (a new topic), so the sum counts committed events.
            let committed = eventually(
                Duration::from_secs(30),
                "offsets of 60 events committed",
                || async {
                    let c = reader.read().await.ok()?;
                    let sum: i64 = c.values().sum();
                    (sum >= 60).then_some(sum)
                },
            )
            .await;
            format!(" ({committed} committed)")
        }
    };
    s.kill().await;
    let before = ids(&sink).len();
    assert!(
        before < N,
        "the crash came too late to test anything ({before} delivered)"
    );

    let s = Sluice::start_in(dir, &[]).await;
    let got = eventually(
        Duration::from_secs(90),
        &format!("all {N} events after the restart"),
        || async {
            let got = ids(&sink);
            (got.len() == N).then_some(got)
        },
    )
    .await;
    let duplicates: usize = got.values().map(|c| c - 1).sum();
    println!("{name}: {N} events, {before} delivered before SIGKILL{recorded}, all {N} delivered after restart, {duplicates} duplicates");
    // Redelivered: what was in flight (10 slots) and, for Kafka, what finished since the last
    // commit. Never everything delivered before the crash.
    assert!(
        duplicates < before / 2,
        "{duplicates} of the {before} events delivered before the crash came again"
    );
    s.kill().await;
}

#[tokio::test]
async fn nats_broker_survives_sigkill() {
    let nats = sluice_tests::start_nats().await;
    let url = nats.url();
    crash_and_restart("crash-nats", Durable::Acks, |sink| {
        format!("{}{}", nats_broker(&url), trigger_yaml_10_slots(sink))
    })
    .await;
}

#[cfg(feature = "kafka")]
#[tokio::test]
async fn kafka_broker_survives_sigkill() {
    let kafka = sluice_tests::start_kafka().await;
    let bs = kafka.bootstrap_servers();
    crash_and_restart("crash-kafka", Durable::Committed(bs.clone()), |sink| {
        format!("{}{}", kafka_broker(&bs), trigger_yaml_10_slots(sink))
    })
    .await;
}

/// The sink answers 503 for a while, then recovers: nothing is lost and the backlog drains.
async fn sink_outage(name: &str, yaml_for_sink: impl Fn(&str) -> String) {
    let up = Arc::new(AtomicBool::new(false));
    let gate = up.clone();
    let sink = Sink::start(move |_, _| {
        if gate.load(Ordering::SeqCst) {
            StatusCode::OK.into_response()
        } else {
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    })
    .await;
    let dir = test_dir(name);
    std::fs::write(dir.join("resources.yaml"), yaml_for_sink(&sink.url())).unwrap();
    let s = Sluice::start_in(dir, &[]).await;
    produce(&s, 100).await;
    // Every event has been tried (and refused) at least once before the sink recovers.
    eventually(
        Duration::from_secs(30),
        "every event to be attempted",
        || async { (ids(&sink).len() == 100).then_some(()) },
    )
    .await;
    up.store(true, Ordering::SeqCst);
    eventually(Duration::from_secs(60), "the backlog to drain", || async {
        let delivered = s
            .metric("sluice_events_delivered_total{namespace=\"default\",broker=\"default\",trigger=\"t\"}")
            .await;
        (delivered >= 100.0).then_some(())
    })
    .await;
    let dropped = s.metrics().await;
    assert!(!dropped.contains("sluice_events_dropped_total{namespace=\"default\",broker=\"default\",trigger=\"t\",reason=\"no_dead_letter_sink\"} 1"), "{dropped}");
    s.kill().await;
}

#[tokio::test]
async fn memory_broker_rides_out_a_sink_outage() {
    sink_outage("outage-memory", |sink| {
        format!(
            "{}{}",
            broker_yaml("MTChannelBasedBroker", "  capacity: \"1000\""),
            trigger_yaml(sink)
        )
    })
    .await;
}

#[tokio::test]
async fn nats_broker_rides_out_a_sink_outage() {
    let nats = sluice_tests::start_nats().await;
    let url = nats.url();
    sink_outage("outage-nats", |sink| {
        format!("{}{}", nats_broker(&url), trigger_yaml(sink))
    })
    .await;
}

#[tokio::test]
async fn kafka_broker_rides_out_a_sink_outage() {
    let kafka = sluice_tests::start_kafka().await;
    let bs = kafka.bootstrap_servers();
    sink_outage("outage-kafka", |sink| {
        format!("{}{}", kafka_broker(&bs), trigger_yaml(sink))
    })
    .await;
}

/// An unreachable NATS server makes the broker not ready with the reason, its ingress answers
/// 503 with Retry-After, and it recovers when the server is back.
#[tokio::test]
async fn unreachable_server_means_not_ready_then_recovers() {
    let mut nats = sluice_tests::start_nats().await;
    let url = nats.url();
    let sink = Sink::ok().await;
    nats.stop().await;
    let dir = test_dir("unreachable");
    std::fs::write(
        dir.join("resources.yaml"),
        format!("{}{}", nats_broker(&url), trigger_yaml(&sink.url())),
    )
    .unwrap();
    let s = start_unready(dir).await;
    let resp = client()
        .post(s.broker_url("default", "default"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "x")
        .header("ce-source", "/s")
        .header("ce-type", "t")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let ready: serde_json::Value = client()
        .get(format!("http://{}/readyz", s.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], false, "{ready}");
    assert!(
        ready["brokers"][0]["reason"].as_str().unwrap_or("").len() > 5,
        "{ready}"
    );

    nats.start().await;
    eventually(
        Duration::from_secs(30),
        "the broker to become ready",
        || async {
            let r = client()
                .get(format!("http://{}/readyz", s.admin))
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(())
        },
    )
    .await;
    produce(&s, 5).await;
    sink.wait_for(5, Duration::from_secs(30)).await;
}

/// Starts sluice without waiting for readiness (the broker is expected not to be ready).
async fn start_unready(dir: std::path::PathBuf) -> Sluice {
    let s = Sluice::spawn(dir, &[]);
    eventually(Duration::from_secs(20), "the admin API", || async {
        client()
            .get(format!("http://{}/healthz", s.admin))
            .send()
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    s
}
