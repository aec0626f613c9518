//! PingSource and KafkaSource: loading, defaults, sink resolution, and the messages for invalid
//! sources.

use sluice_core::delivery::{BackoffPolicy, DeliveryPolicy};
use sluice_core::topology::{InitialOffset, Key, Topology};
use sluice_crds::{build, parse_yaml, Defaults};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn build_str(yaml: &str) -> Result<Topology, Vec<String>> {
    let loaded = parse_yaml(yaml, "src.yaml").map_err(|e| vec![e.to_string()])?;
    build(
        &loaded,
        &Defaults::new("http://127.0.0.1:8080/".parse().unwrap()),
    )
    .map_err(|es| es.iter().map(ToString::to_string).collect())
}

const BROKER: &str =
    "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: default, namespace: team}\n";

#[test]
fn ping_source_is_validated_and_resolved() {
    let yaml = format!(
        r#"{BROKER}---
apiVersion: sources.knative.dev/v1
kind: PingSource
metadata: {{name: beat, namespace: team}}
spec:
  schedule: "CRON_TZ=Europe/Paris 0 9 * * 1-5"
  contentType: application/json
  data: '{{"hello": "world"}}'
  ceOverrides:
    extensions: {{team: blue}}
  sink:
    ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
---
apiVersion: sources.knative.dev/v1
kind: PingSource
metadata: {{name: bin}}
spec:
  timezone: America/New_York
  dataBase64: |
    aGVs
    bG8=
  sink: {{uri: "http://localhost:9000/x"}}
"#
    );
    let t = build_str(&yaml).unwrap();
    let p = &t.ping_sources[&Key::new("team", "beat")];
    assert_eq!(p.sink.as_str(), "http://127.0.0.1:8080/team/default");
    assert_eq!(p.timezone, "Europe/Paris");
    assert_eq!(p.schedule_text, "CRON_TZ=Europe/Paris 0 9 * * 1-5");
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(p.data.as_deref(), Some(&b"{\"hello\": \"world\"}"[..]));
    assert!(!p.data_binary);
    assert_eq!(p.extensions["team"], "blue");
    assert_eq!(p.delivery, DeliveryPolicy::default());
    // 2024-03-01 is a Friday: the next tick is Monday 09:00 in Paris (08:00 UTC).
    let fri = UNIX_EPOCH + Duration::from_secs(1_709_280_000); // 2024-03-01T08:00:00Z
    let next = p.schedule.next_after(fri).unwrap();
    assert_eq!(
        next.duration_since(UNIX_EPOCH).unwrap().as_secs(),
        1_709_280_000 + 3 * 86_400
    );

    let b = &t.ping_sources[&Key::new("default", "bin")];
    assert_eq!(b.data.as_deref(), Some(&b"hello"[..]));
    assert!(b.data_binary);
    assert_eq!(b.timezone, "America/New_York");
    assert_eq!(b.content_type, None);
    // No schedule: Knative's default, every minute.
    assert_eq!(b.schedule_text, "* * * * *");
    let now = SystemTime::now();
    let next = b.schedule.next_after(now).unwrap();
    assert!(next > now && next.duration_since(now).unwrap() <= Duration::from_secs(60));
}

#[test]
fn kafka_source_defaults_and_options() {
    let yaml = r#"
apiVersion: sources.knative.dev/v1beta1
kind: KafkaSource
metadata: {name: orders, namespace: shop}
spec:
  bootstrapServers: ["k1:9092", "k2:9092,k3:9093"]
  topics: [orders, refunds]
  sink: {uri: "http://localhost:9000/"}
---
apiVersion: sources.knative.dev/v1
kind: KafkaSource
metadata: {name: tuned, namespace: shop}
spec:
  bootstrapServers: ["k1:9092"]
  topics: [orders]
  consumerGroup: my-group
  initialOffset: earliest
  ordering: unordered
  consumers: 3
  net: {}
  delivery:
    retry: 2
    backoffPolicy: linear
    deadLetterSink: {uri: "http://localhost:9001/dead"}
  ceOverrides: {extensions: {origin: kafka}}
  sink: {uri: "http://localhost:9000/"}
"#;
    let t = build_str(yaml).unwrap();
    let d = &t.kafka_sources[&Key::new("shop", "orders")];
    assert_eq!(d.bootstrap_servers, ["k1:9092", "k2:9092", "k3:9093"]);
    assert_eq!(d.topics, ["orders", "refunds"]);
    assert_eq!(d.consumer_group, "knative-kafka-source-shop-orders");
    assert_eq!(d.initial_offset, InitialOffset::Latest);
    assert!(d.ordered);
    assert_eq!(d.consumers, 1);
    assert_eq!(d.delivery, DeliveryPolicy::default());

    let k = &t.kafka_sources[&Key::new("shop", "tuned")];
    assert_eq!(k.consumer_group, "my-group");
    assert_eq!(k.initial_offset, InitialOffset::Earliest);
    assert!(!k.ordered);
    assert_eq!(k.consumers, 3);
    assert_eq!(k.delivery.retry, 2);
    assert_eq!(k.delivery.backoff_policy, BackoffPolicy::Linear);
    assert_eq!(
        k.delivery.dead_letter_sink.as_ref().map(|u| u.as_str()),
        Some("http://localhost:9001/dead")
    );
    assert_eq!(k.extensions["origin"], "kafka");
    assert_ne!(d.fingerprint, k.fingerprint);
}

#[test]
fn fingerprints_follow_the_spec() {
    let ping = |data: &str| {
        format!("apiVersion: sources.knative.dev/v1\nkind: PingSource\nmetadata: {{name: p}}\nspec:\n  data: {data}\n  sink: {{uri: 'http://x/'}}\n")
    };
    let fp =
        |yaml: &str| build_str(yaml).unwrap().ping_sources[&Key::new("default", "p")].fingerprint;
    assert_eq!(fp(&ping("a")), fp(&ping("a")));
    assert_ne!(fp(&ping("a")), fp(&ping("b")));
}

#[test]
fn invalid_sources_have_precise_messages() {
    let ping = |spec: &str| {
        format!("apiVersion: sources.knative.dev/v1\nkind: PingSource\nmetadata: {{name: p}}\nspec:\n{spec}")
    };
    let kafka = |spec: &str| {
        format!("apiVersion: sources.knative.dev/v1\nkind: KafkaSource\nmetadata: {{name: k}}\nspec:\n{spec}")
    };
    let sink = "  sink: {uri: 'http://x/'}\n";
    let k_ok = "  bootstrapServers: ['k:9092']\n  topics: [t]\n";
    let cases: Vec<(String, &str)> = vec![
        (
            ping(&format!("  schedule: '61 * * * *'\n{sink}")),
            "src.yaml: PingSource default/p: field `spec.schedule`: `61 * * * *` is not a valid cron schedule",
        ),
        (
            ping(&format!("  schedule: '* * * *'\n{sink}")),
            "field `spec.schedule`: `* * * *` is not a valid cron schedule",
        ),
        (
            ping(&format!("  schedule: '@every soon'\n{sink}")),
            "field `spec.schedule`: `@every soon` needs a Go duration",
        ),
        (
            ping(&format!("  timezone: Mars/Base\n{sink}")),
            "field `spec.timezone`: unknown time zone `Mars/Base`",
        ),
        (
            ping(&format!("  schedule: 'CRON_TZ=Nowhere * * * * *'\n{sink}")),
            "field `spec.schedule`: unknown time zone `Nowhere`",
        ),
        (
            ping(&format!("  schedule: 'CRON_TZ=UTC * * * * *'\n  timezone: Europe/Paris\n{sink}")),
            "field `spec.timezone`: the schedule's prefix says CRON_TZ=UTC but `timezone` is `Europe/Paris`",
        ),
        (
            ping(&format!("  data: x\n  dataBase64: eA==\n{sink}")),
            "field `spec.dataBase64`: set either `data` (text) or `dataBase64`",
        ),
        (
            ping(&format!("  dataBase64: 'not base64!'\n{sink}")),
            "field `spec.dataBase64`: is not valid base64",
        ),
        (
            ping(&format!("  ceOverrides: {{extensions: {{Bad-Name: x}}}}\n{sink}")),
            "field `spec.ceOverrides.extensions.Bad-Name`: `Bad-Name` is not a valid extension name",
        ),
        (
            ping(&format!("  ceOverrides: {{extensions: {{type: x}}}}\n{sink}")),
            "field `spec.ceOverrides.extensions.type`: `type` is a CloudEvents context attribute",
        ),
        (ping("  data: x\n"), "PingSource default/p: field `spec.sink`: set `uri`"),
        (
            ping("  sink: {ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: nope}}\n"),
            "field `spec.sink.ref`: Broker default/nope is not defined",
        ),
        (
            ping(&format!("  jsonData: x\n{sink}")),
            "field `spec.jsonData`: unknown field `jsonData`, expected one of",
        ),
        (
            kafka(&format!("  topics: [t]\n{sink}")),
            "KafkaSource default/k: field `spec.bootstrapServers`: is required",
        ),
        (
            kafka(&format!("  bootstrapServers: ['nohost']\n  topics: [t]\n{sink}")),
            "field `spec.bootstrapServers[0]`: `nohost` is not `host:port`",
        ),
        (
            kafka(&format!("  bootstrapServers: ['k:9092']\n{sink}")),
            "field `spec.topics`: is required",
        ),
        (
            kafka(&format!("  bootstrapServers: ['k:9092']\n  topics: ['a b']\n{sink}")),
            "field `spec.topics[0]`: `a b` is not a Kafka topic name",
        ),
        (
            kafka(&format!("  bootstrapServers: ['k:9092']\n  topics: [a, a]\n{sink}")),
            "field `spec.topics[1]`: topic `a` is listed twice",
        ),
        (
            kafka(&format!("{k_ok}  initialOffset: oldest\n{sink}")),
            "field `spec.initialOffset`: `oldest` is not an initial offset; use `earliest` or `latest`",
        ),
        (
            kafka(&format!("{k_ok}  ordering: random\n{sink}")),
            "field `spec.ordering`: `random` is not an ordering",
        ),
        (
            kafka(&format!("{k_ok}  consumers: 0\n{sink}")),
            "field `spec.consumers`: 0 is not a positive number",
        ),
        (
            kafka(&format!("{k_ok}  net: {{sasl: {{enable: true}}}}\n{sink}")),
            "field `spec.net`: TLS and SASL settings are not supported yet",
        ),
        (
            kafka(&format!("{k_ok}  delivery: {{backoffDelay: soon}}\n{sink}")),
            "field `spec.delivery.backoffDelay`",
        ),
        (kafka(k_ok), "KafkaSource default/k: field `spec.sink`: set `uri`"),
        (
            format!("{}---\n{}", ping(sink), ping(sink)),
            "PingSource default/p: field `metadata.name`: defined twice",
        ),
    ];
    for (yaml, want) in cases {
        let errs = build_str(&yaml).expect_err(want);
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "wanted {want:?} in {errs:#?}"
        );
    }
}

#[test]
fn crds_include_the_sources() {
    let yaml = sluice_crds::crds_yaml();
    assert!(yaml.contains("name: pingsources.sources.knative.dev"));
    assert!(yaml.contains("name: kafkasources.sources.knative.dev"));
    assert!(yaml.contains("x-kubernetes-preserve-unknown-fields: true"));
}
