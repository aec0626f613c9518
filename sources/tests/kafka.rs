//! KafkaSource against real Apache Kafka (one broker for the binary, from the harness) and real
//! HTTP sinks: pass-through of CloudEvent records, the mapping of plain records, order per
//! partition, initial offsets, dead letters, and a restart that neither loses nor resends.

#![cfg(feature = "kafka")]

mod common;

use axum::http::StatusCode;
use common::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sluice_core::metrics::Metrics;
use sluice_core::topology::Topology;
use sluice_sources::{Health, Sources};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

async fn create_topic(servers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .unwrap();
    let res = admin
        .create_topics(
            [&NewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(5))),
        )
        .await
        .unwrap();
    for r in res {
        r.unwrap();
    }
}

fn producer(servers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("acks", "all")
        .set("linger.ms", "0")
        .create()
        .unwrap()
}

async fn produce(
    p: &FutureProducer,
    topic: &str,
    partition: i32,
    key: Option<&str>,
    headers: &[(&str, &str)],
    value: &str,
) {
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    let mut record: FutureRecord<'_, str, str> = FutureRecord::to(topic)
        .partition(partition)
        .payload(value)
        .headers(h);
    if let Some(k) = key {
        record = record.key(k);
    }
    p.send(record, Duration::from_secs(5)).await.unwrap();
}

/// A topic name no other test of this binary uses (they share one broker).
fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// A KafkaSource `shop/orders` reading `topic`, in a consumer group of that topic's own.
fn source_yaml(servers: &str, topic: &str, sink: &str, extra: &str) -> String {
    format!(
        "apiVersion: sources.knative.dev/v1\nkind: KafkaSource\nmetadata: {{name: orders, namespace: shop}}\nspec:\n  bootstrapServers: ['{servers}']\n  topics: [{topic}]\n  consumerGroup: group-{topic}\n  sink: {{uri: '{sink}'}}\n{extra}"
    )
}

/// Fast retries, so tests of failing sinks do not wait long.
const FAST_RETRY: &str =
    "  delivery: {retry: 1000, backoffPolicy: linear, backoffDelay: PT0.02S, backoffMax: PT0.05S}\n";

async fn start(yaml: &str, metrics: Arc<Metrics>) -> Sources {
    let mut sources = Sources::new(metrics);
    sources.apply(&topology(yaml)).await;
    wait_ready(&sources).await;
    sources
}

async fn wait_ready(sources: &Sources) {
    eventually(T, "the KafkaSource to be ready", || async {
        sources
            .status()
            .iter()
            .all(|s| s.health == Health::Ready)
            .then_some(())
    })
    .await;
}

/// (partition, offset) from a plain record's `ce-subject: partition:<p>#<o>`.
fn position(r: &Received) -> (i32, i64) {
    let s = r.header("ce-subject").unwrap();
    let (p, o) = s
        .strip_prefix("partition:")
        .unwrap()
        .split_once('#')
        .unwrap();
    (p.parse().unwrap(), o.parse().unwrap())
}

#[tokio::test]
async fn cloudevent_records_pass_through_and_plain_records_are_mapped() {
    let servers = sluice_tests::shared_kafka().await.bootstrap_servers();
    let topic = unique("orders");
    create_topic(&servers, &topic, 1).await;
    let p = producer(&servers);
    // Binary mode (the CloudEvents Kafka binding), structured mode, and a plain record.
    produce(
        &p,
        &topic,
        0,
        Some("k0"),
        &[
            ("ce_specversion", "1.0"),
            ("ce_id", "order-1"),
            ("ce_source", "/shop"),
            ("ce_type", "com.example.order.created"),
            ("ce_myext", "mine"),
            ("content-type", "application/json"),
        ],
        "{\"total\":42}",
    )
    .await;
    produce(
        &p,
        &topic,
        0,
        None,
        &[("content-type", "application/cloudevents+json")],
        r#"{"specversion":"1.0","id":"s-1","source":"/s","type":"com.example.structured","datacontenttype":"application/json","count":7,"data":{"x":1}}"#,
    )
    .await;
    produce(
        &p,
        &topic,
        0,
        Some("customer-7"),
        &[("X-Trace-Id", "abc"), ("content-type", "text/plain")],
        "hello",
    )
    .await;

    let sink = Sink::ok().await;
    let metrics = Arc::new(Metrics::new());
    let yaml = source_yaml(
        &servers,
        &topic,
        &sink.url,
        "  initialOffset: earliest\n  ceOverrides: {extensions: {origin: kafka}}\n",
    );
    let mut sources = start(&yaml, metrics.clone()).await;
    let got = sink.wait_accepted(3, T).await;
    sources.shutdown().await;

    let binary = &got[0];
    assert_eq!(binary.header("ce-id"), Some("order-1"));
    assert_eq!(binary.header("ce-source"), Some("/shop"));
    assert_eq!(binary.header("ce-type"), Some("com.example.order.created"));
    assert_eq!(binary.header("ce-myext"), Some("mine"));
    assert_eq!(binary.header("content-type"), Some("application/json"));
    assert_eq!(
        binary.header("ce-origin"),
        Some("kafka"),
        "ceOverrides apply to all"
    );
    assert_eq!(
        binary.header("ce-key"),
        None,
        "a CloudEvent record is passed through"
    );
    assert_eq!(binary.body.as_ref(), b"{\"total\":42}");

    let structured = &got[1];
    assert_eq!(structured.header("ce-id"), Some("s-1"));
    assert_eq!(structured.header("ce-type"), Some("com.example.structured"));
    assert_eq!(structured.header("ce-count"), Some("7"));
    assert_eq!(structured.header("content-type"), Some("application/json"));
    assert_eq!(structured.body.as_ref(), b"{\"x\":1}");

    let plain = &got[2];
    assert_eq!(plain.header("ce-type"), Some("dev.knative.kafka.event"));
    assert_eq!(
        plain.header("ce-source"),
        Some(format!("/apis/v1/namespaces/shop/kafkasources/orders#{topic}").as_str())
    );
    assert_eq!(plain.header("ce-id"), Some("partition:0/offset:2"));
    assert_eq!(plain.header("ce-subject"), Some("partition:0#2"));
    assert_eq!(plain.header("ce-key"), Some("customer-7"));
    assert_eq!(plain.header("ce-partitionkey"), Some("customer-7"));
    assert_eq!(plain.header("ce-kafkaheaderxtraceid"), Some("abc"));
    assert_eq!(plain.header("content-type"), Some("text/plain"));
    assert_eq!(plain.header("ce-origin"), Some("kafka"));
    let time = plain.header("ce-time").expect("the record timestamp");
    chrono::DateTime::parse_from_rfc3339(time).unwrap();
    assert_eq!(plain.body.as_ref(), b"hello");
    assert_eq!(plain.header("kn-namespace"), Some("shop"));

    let labels = "{namespace=\"shop\",source=\"orders\",kind=\"KafkaSource\"}";
    assert_eq!(
        metric(
            &metrics,
            &format!("sluice_source_events_produced_total{labels}")
        ),
        3.0
    );
    assert_eq!(
        metric(
            &metrics,
            &format!("sluice_source_events_delivered_total{labels}")
        ),
        3.0
    );
}

#[tokio::test]
async fn ordered_delivery_keeps_each_partition_in_offset_order() {
    let servers = sluice_tests::shared_kafka().await.bootstrap_servers();
    let topic = unique("orders");
    create_topic(&servers, &topic, 3).await;
    let p = producer(&servers);
    for i in 0..15 {
        for partition in 0..3 {
            produce(
                &p,
                &topic,
                partition,
                None,
                &[],
                &format!("{partition}-{i}"),
            )
            .await;
        }
    }
    // A sink that takes a moment per event and fails every fourth attempt (retried): order
    // must hold through retries.
    let sink = Sink::start(|_, n| {
        let status = if n % 4 == 3 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        (status, Duration::from_millis(10))
    })
    .await;
    let yaml = source_yaml(
        &servers,
        &topic,
        &sink.url,
        &format!("  initialOffset: earliest\n  ordering: ordered\n{FAST_RETRY}"),
    );
    let mut sources = start(&yaml, Arc::new(Metrics::new())).await;
    let got = sink.wait_accepted(45, T).await;
    sources.shutdown().await;

    let mut last: HashMap<i32, i64> = HashMap::new();
    for r in &got {
        let (partition, offset) = position(r);
        let prev = last.insert(partition, offset);
        assert_eq!(
            offset,
            prev.map_or(0, |p| p + 1),
            "partition {partition}: offsets out of order or duplicated"
        );
        assert_eq!(r.body.as_ref(), format!("{partition}-{offset}").as_bytes());
    }
    assert_eq!(last.len(), 3);
    // One event in flight per partition, partitions side by side.
    assert!(sink.max_in_flight() <= 3, "{}", sink.max_in_flight());
}

#[tokio::test]
async fn unordered_delivery_overlaps_events_of_a_partition() {
    let servers = sluice_tests::shared_kafka().await.bootstrap_servers();
    let topic = unique("orders");
    create_topic(&servers, &topic, 1).await;
    let p = producer(&servers);
    for i in 0..20 {
        produce(&p, &topic, 0, None, &[], &i.to_string()).await;
    }
    let sink = Sink::start(|_, _| (StatusCode::ACCEPTED, Duration::from_millis(200))).await;
    let yaml = source_yaml(
        &servers,
        &topic,
        &sink.url,
        "  initialOffset: earliest\n  ordering: unordered\n",
    );
    let mut sources = start(&yaml, Arc::new(Metrics::new())).await;
    let got = sink.wait_accepted(20, T).await;
    sources.shutdown().await;
    let mut offsets: Vec<i64> = got.iter().map(|r| position(r).1).collect();
    offsets.sort();
    assert_eq!(offsets, (0..20).collect::<Vec<_>>());
    assert!(sink.max_in_flight() >= 5, "{}", sink.max_in_flight());
}

#[tokio::test]
async fn latest_starts_after_the_records_already_in_the_topic() {
    let servers = sluice_tests::shared_kafka().await.bootstrap_servers();
    let topic = unique("orders");
    create_topic(&servers, &topic, 1).await;
    let p = producer(&servers);
    for i in 0..3 {
        produce(&p, &topic, 0, None, &[], &format!("old-{i}")).await;
    }
    let sink = Sink::ok().await;
    // No initialOffset: latest.
    let yaml = source_yaml(&servers, &topic, &sink.url, "");
    let mut sources = start(&yaml, Arc::new(Metrics::new())).await;
    for i in 0..2 {
        produce(&p, &topic, 0, None, &[], &format!("new-{i}")).await;
    }
    let got = sink.wait_accepted(2, T).await;
    sources.shutdown().await;
    let bodies: Vec<_> = got.iter().map(|r| r.body.clone()).collect();
    assert_eq!(bodies, ["new-0", "new-1"]);
    assert_eq!(got[0].header("ce-id"), Some("partition:0/offset:3"));
}

#[tokio::test]
async fn refused_records_go_to_the_dead_letter_sink_and_the_stream_moves_on() {
    let servers = sluice_tests::shared_kafka().await.bootstrap_servers();
    let topic = unique("orders");
    create_topic(&servers, &topic, 1).await;
    let p = producer(&servers);
    for v in ["good-1", "bad", "good-2"] {
        produce(&p, &topic, 0, None, &[], v).await;
    }
    let sink = Sink::start(|r, _| {
        let status = if r.body.as_ref() == b"bad" {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        };
        (status, Duration::ZERO)
    })
    .await;
    let dls = Sink::ok().await;
    let metrics = Arc::new(Metrics::new());
    let yaml = source_yaml(
        &servers,
        &topic,
        &sink.url,
        &format!(
            "  initialOffset: earliest\n  delivery: {{retry: 2, backoffDelay: PT0.01S, deadLetterSink: {{uri: '{}'}}}}\n",
            dls.url
        ),
    );
    let mut sources = start(&yaml, metrics.clone()).await;
    let got = sink.wait_accepted(2, T).await;
    let dead = dls.wait_accepted(1, T).await;
    sources.shutdown().await;
    assert_eq!(got[0].body.as_ref(), b"good-1");
    assert_eq!(got[1].body.as_ref(), b"good-2");
    assert_eq!(dead[0].body.as_ref(), b"bad");
    assert_eq!(dead[0].header("ce-knativeerrorcode"), Some("400"));
    assert_eq!(dead[0].header("ce-id"), Some("partition:0/offset:1"));
    let labels = "{namespace=\"shop\",source=\"orders\",kind=\"KafkaSource\"}";
    assert_eq!(
        metric(
            &metrics,
            &format!("sluice_source_events_dead_lettered_total{labels}")
        ),
        1.0
    );
}

/// The consumer group's committed offset of partition 0.
fn committed(servers: &str, group: &str, topic: &str) -> Option<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let got = c.committed_offsets(tpl, Duration::from_secs(5)).unwrap();
    match got.elements()[0].offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

#[tokio::test]
async fn a_restart_resumes_after_the_last_delivered_record_without_loss_or_resend() {
    let servers = sluice_tests::shared_kafka().await.bootstrap_servers();
    let topic = unique("orders");
    create_topic(&servers, &topic, 1).await;
    let p = producer(&servers);
    for i in 0..10 {
        produce(&p, &topic, 0, None, &[], &i.to_string()).await;
    }
    // The sink accepts five events, then fails until told otherwise.
    let failing = Arc::new(AtomicBool::new(true));
    let accepted = Arc::new(AtomicUsize::new(0));
    let sink = {
        let (failing, accepted) = (failing.clone(), accepted.clone());
        Sink::start(move |_, _| {
            if accepted.load(Ordering::SeqCst) >= 5 && failing.load(Ordering::SeqCst) {
                return (StatusCode::SERVICE_UNAVAILABLE, Duration::ZERO);
            }
            accepted.fetch_add(1, Ordering::SeqCst);
            (StatusCode::OK, Duration::ZERO)
        })
        .await
    };
    let yaml = source_yaml(
        &servers,
        &topic,
        &sink.url,
        &format!("  initialOffset: earliest\n{FAST_RETRY}"),
    );
    let metrics = Arc::new(Metrics::new());
    let mut sources = start(&yaml, metrics.clone()).await;
    // Five delivered, and the sixth being retried.
    eventually(T, "the sixth event failing", || async {
        let got = sink.received();
        (got.iter().filter(|r| r.status == 503).count() >= 3).then_some(())
    })
    .await;
    // Stop mid-stream: what was delivered is committed, the record being retried is not.
    sources.apply(&Topology::default()).await;
    assert_eq!(
        committed(&servers, &format!("group-{topic}"), &topic),
        Some(5)
    );

    failing.store(false, Ordering::SeqCst);
    sources.apply(&topology(&yaml)).await;
    wait_ready(&sources).await;
    let got = sink.wait_accepted(10, T).await;
    sources.shutdown().await;

    let mut per_id: HashMap<String, usize> = HashMap::new();
    for r in &got {
        *per_id.entry(r.id().to_string()).or_default() += 1;
    }
    for i in 0..10 {
        assert_eq!(
            per_id.get(&format!("partition:0/offset:{i}")),
            Some(&1),
            "offset {i} accepted exactly once: {per_id:?}"
        );
    }
    let bodies: Vec<_> = got
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(bodies, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
    assert_eq!(
        committed(&servers, &format!("group-{topic}"), &topic),
        Some(10)
    );
}

#[tokio::test]
async fn a_missing_topic_makes_the_source_not_ready_until_it_exists() {
    let servers = sluice_tests::shared_kafka().await.bootstrap_servers();
    let topic = unique("later");
    let sink = Sink::ok().await;
    let yaml = source_yaml(&servers, &topic, &sink.url, "  initialOffset: earliest\n");
    let mut sources = Sources::new(Arc::new(Metrics::new()));
    sources.apply(&topology(&yaml)).await;
    let reason = eventually(T, "a not-ready reason", || async {
        match &sources.status()[0].health {
            Health::NotReady(r) if r.contains(topic.as_str()) => Some(r.clone()),
            _ => None,
        }
    })
    .await;
    assert!(
        reason.contains(&format!("topic `{topic}` does not exist")),
        "{reason}"
    );
    create_topic(&servers, &topic, 1).await;
    wait_ready(&sources).await;
    produce(&producer(&servers), &topic, 0, None, &[], "hi").await;
    let got = sink.wait_accepted(1, T).await;
    sources.shutdown().await;
    assert_eq!(got[0].body.as_ref(), b"hi");
}

/// Without a dead-letter sink, a record the sink refuses is not dropped and committed past
/// (SEMANTICS.md §6: offsets are committed only once the sink accepted the event or it was
/// dead-lettered): it is delivered again, with backoff, holding its partition's commit back,
/// until the sink takes it.
#[tokio::test]
async fn without_a_dead_letter_sink_a_refused_record_is_retried_and_never_committed_past() {
    let servers = sluice_tests::shared_kafka().await.bootstrap_servers();
    let topic = unique("orders");
    create_topic(&servers, &topic, 1).await;
    let p = producer(&servers);
    for v in ["good-1", "bad", "good-2"] {
        produce(&p, &topic, 0, None, &[], v).await;
    }
    let refusing = Arc::new(AtomicBool::new(true));
    let sink = {
        let refusing = refusing.clone();
        Sink::start(move |r, _| {
            let status = if r.body.as_ref() == b"bad" && refusing.load(Ordering::SeqCst) {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            };
            (status, Duration::ZERO)
        })
        .await
    };
    let yaml = source_yaml(
        &servers,
        &topic,
        &sink.url,
        "  initialOffset: earliest\n  delivery: {retry: 0, backoffDelay: PT0.01S}\n",
    );
    let mut sources = start(&yaml, Arc::new(Metrics::new())).await;
    // Refused (a terminal 400, no dead-letter sink) and delivered again, more than once.
    eventually(T, "the refused record delivered again", || async {
        let tries = sink
            .received()
            .iter()
            .filter(|r| r.body.as_ref() == b"bad")
            .count();
        (tries >= 2).then_some(())
    })
    .await;
    let group = format!("group-{topic}");
    eventually(T, "good-1 committed", || async {
        (committed(&servers, &group, &topic) == Some(1)).then_some(())
    })
    .await;
    assert!(
        !sink.received().iter().any(|r| r.body.as_ref() == b"good-2"),
        "an ordered partition moved past a record that was not delivered"
    );
    assert_eq!(
        committed(&servers, &group, &topic),
        Some(1),
        "committed past a record that reached no sink"
    );

    refusing.store(false, Ordering::SeqCst);
    eventually(T, "everything committed", || async {
        (committed(&servers, &group, &topic) == Some(3)).then_some(())
    })
    .await;
    sources.shutdown().await;
    let accepted: Vec<_> = sink
        .received()
        .into_iter()
        .filter(|r| r.status < 300)
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(accepted, ["good-1", "bad", "good-2"]);
}

/// `consumers: 2` puts two members in the source's consumer group, which share the topic's
/// partitions; every record is delivered once.
#[tokio::test]
async fn consumers_join_the_group_and_share_the_partitions() {
    let servers = sluice_tests::shared_kafka().await.bootstrap_servers();
    let topic = unique("orders");
    create_topic(&servers, &topic, 4).await;
    let sink = Sink::ok().await;
    let yaml = source_yaml(&servers, &topic, &sink.url, "  consumers: 2\n");
    let mut sources = start(&yaml, Arc::new(Metrics::new())).await;
    let group = format!("group-{topic}");
    let (s, g) = (servers.clone(), group.clone());
    let members = eventually(T, "two members in the group", || {
        let (s, g) = (s.clone(), g.clone());
        async move {
            let n = tokio::task::spawn_blocking(move || {
                let c: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", &s)
                    .create()
                    .unwrap();
                let list = c.fetch_group_list(Some(&g), Duration::from_secs(5)).ok()?;
                let group = list.groups().iter().find(|x| x.name() == g)?;
                (group.state() == "Stable").then(|| {
                    group
                        .members()
                        .iter()
                        .map(|m| m.client_id().to_string())
                        .collect::<Vec<_>>()
                })
            })
            .await
            .unwrap()?;
            (n.len() == 2).then_some(n)
        }
    })
    .await;
    assert!(
        members
            .iter()
            .all(|m| m.starts_with("sluice-kafkasource-shop-orders-")),
        "{members:?}"
    );
    let p = producer(&servers);
    for i in 0..40 {
        produce(&p, &topic, i % 4, None, &[], &format!("{}-{i}", i % 4)).await;
    }
    let got = sink.wait_accepted(40, T).await;
    sources.shutdown().await;
    let mut ids: Vec<String> = got.iter().map(|r| r.id().to_string()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        40,
        "duplicates or losses: {} distinct",
        ids.len()
    );
}
