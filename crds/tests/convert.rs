//! Resources to topology: resolution, delivery merging, and the messages for invalid resources.

use sluice_core::delivery::{BackoffPolicy, Format};
use sluice_core::topology::{ChannelConfig, Key, StartFrom};
use sluice_core::{Event, SpecVersion};
use sluice_crds::{build, build_lenient, parse_yaml, parse_yaml_lenient, Defaults};
use std::time::Duration;

fn defaults() -> Defaults {
    Defaults::new("http://127.0.0.1:8080/".parse().unwrap())
}

fn build_str(yaml: &str) -> Result<sluice_core::topology::Topology, Vec<String>> {
    let loaded = parse_yaml(yaml, "test.yaml").map_err(|e| vec![e.to_string()])?;
    build(&loaded, &defaults()).map_err(|es| es.iter().map(ToString::to_string).collect())
}

const BROKER: &str = r#"
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
spec:
  delivery:
    retry: 3
    backoffPolicy: linear
    backoffDelay: PT0.5S
    deadLetterSink:
      uri: http://localhost:9999/dead
"#;

#[test]
fn resolves_destinations_and_merges_delivery() {
    let yaml = format!(
        r#"{BROKER}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: inherits
spec:
  broker: default
  filter:
    attributes:
      type: com.example.a
  subscriber:
    ref:
      apiVersion: v1
      kind: Service
      name: display
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: replaces
  annotations:
    kafka.eventing.knative.dev/delivery.order: ordered
    sluice.dev/start-from: "2024-05-01T12:00:00+02:00"
    sluice.dev/concurrency: "7"
spec:
  broker: default
  subscriber:
    ref:
      apiVersion: eventing.knative.dev/v1
      kind: Broker
      name: default
    uri: extra
  delivery:
    timeout: PT2S
    format: json
"#
    );
    let t = build_str(&yaml).unwrap();
    let b = &t.brokers[&Key::new("default", "default")];
    assert_eq!(
        b.channel,
        ChannelConfig::Memory {
            capacity: ChannelConfig::DEFAULT_MEMORY_CAPACITY,
            max_bytes: ChannelConfig::DEFAULT_MEMORY_MAX_BYTES,
        }
    );
    let inherits = t.trigger(&Key::new("default", "inherits")).unwrap();
    assert_eq!(
        inherits.subscriber.as_str(),
        "http://display.default.svc.cluster.local/"
    );
    assert_eq!(inherits.delivery.retry, 3);
    assert_eq!(inherits.delivery.backoff_policy, BackoffPolicy::Linear);
    assert_eq!(inherits.delivery.backoff_delay, Duration::from_millis(500));
    assert!(!inherits.ordered);
    let mut e = Event::new(SpecVersion::V10, "1", "s", "com.example.a");
    assert!(inherits.wants(&e));
    e.set("type", "com.example.b");
    assert!(!inherits.wants(&e));

    let replaces = t.trigger(&Key::new("default", "replaces")).unwrap();
    assert_eq!(
        replaces.subscriber.as_str(),
        "http://127.0.0.1:8080/default/extra"
    );
    // The trigger's delivery replaces the broker's as a whole (no retries) but the
    // dead-letter sink falls back to the broker's.
    assert_eq!(replaces.delivery.retry, 0);
    assert_eq!(replaces.delivery.timeout, Duration::from_secs(2));
    assert_eq!(replaces.delivery.format, Format::Json);
    assert_eq!(
        replaces
            .delivery
            .dead_letter_sink
            .as_ref()
            .unwrap()
            .as_str(),
        "http://localhost:9999/dead"
    );
    assert!(replaces.ordered);
    assert_eq!(replaces.concurrency, 7);
    assert_eq!(replaces.start_from, StartFrom::Time(1_714_557_600_000));
}

#[test]
fn broker_without_delivery_gets_knative_defaults() {
    let yaml = r#"
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: b, namespace: ns}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t, namespace: ns}
spec:
  broker: b
  subscriber: {uri: "http://localhost:8081/"}
"#;
    let t = build_str(yaml).unwrap();
    let tr = t.trigger(&Key::new("ns", "t")).unwrap();
    assert_eq!(tr.delivery.retry, 10);
    assert_eq!(tr.delivery.backoff_policy, BackoffPolicy::Exponential);
    assert_eq!(tr.delivery.backoff_delay, Duration::from_millis(200));
    assert!(tr.wants(&Event::new(SpecVersion::V10, "1", "s", "t")));
}

#[test]
fn broker_classes_and_config_maps() {
    let yaml = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: kafka-cfg}
data:
  bootstrap.servers: "127.0.0.1:9092"
  default.topic.partitions: "3"
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: k
  annotations: {eventing.knative.dev/broker.class: Kafka}
spec:
  config: {apiVersion: v1, kind: ConfigMap, name: kafka-cfg}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: nats-cfg}
data: {url: "nats://127.0.0.1:4222"}
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: n
  annotations: {eventing.knative.dev/broker.class: NatsJetStreamBroker}
spec:
  config: {apiVersion: v1, kind: ConfigMap, name: nats-cfg}
"#;
    let t = build_str(yaml).unwrap();
    assert_eq!(
        t.brokers[&Key::new("default", "k")].channel,
        ChannelConfig::Kafka {
            bootstrap_servers: "127.0.0.1:9092".into(),
            partitions: 3,
            replication_factor: 1
        }
    );
    assert_eq!(
        t.brokers[&Key::new("default", "n")].channel,
        ChannelConfig::Nats {
            url: "nats://127.0.0.1:4222".into(),
            max_age: ChannelConfig::DEFAULT_NATS_MAX_AGE,
            max_bytes: ChannelConfig::DEFAULT_NATS_MAX_BYTES,
        }
    );
}

/// Each invalid resource and a fragment its message must contain.
#[test]
fn invalid_resources_have_precise_messages() {
    let trig = |spec: &str| {
        format!(
            "{BROKER}\n---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: bad}}\nspec:\n{spec}"
        )
    };
    let cases: Vec<(String, &str)> = vec![
        (
            trig("  subscriber: {uri: http://x/}\n"),
            "test.yaml (document 2): Trigger default/bad: field `spec.broker`: is required",
        ),
        (
            trig("  broker: nope\n  subscriber: {uri: http://x/}\n"),
            "field `spec.broker`: broker default/nope is not defined in any loaded file (brokers defined: default/default)",
        ),
        (
            trig("  broker: default\n"),
            "field `spec.subscriber`: set `uri`",
        ),
        (
            trig("  broker: default\n  subscriber: {uri: /relative}\n"),
            "field `spec.subscriber.uri`: \"/relative\" is not an absolute URL",
        ),
        (
            trig("  broker: default\n  subscriber: {ref: {apiVersion: example.com/v1, kind: Widget, name: fn}}\n"),
            "field `spec.subscriber.ref`: cannot resolve Widget `fn`",
        ),
        (
            trig("  broker: default\n  subscriber: {uri: http://x/}\n  delivery: {backoffDelay: 200ms}\n"),
            "field `spec.delivery.backoffDelay`: \"200ms\" is not an ISO 8601 duration",
        ),
        (
            trig("  broker: default\n  subscriber: {uri: http://x/}\n  delivery: {backoffPolicy: fibonacci}\n"),
            "field `spec.delivery.backoffPolicy`: `fibonacci` is not a backoff policy",
        ),
        (
            trig("  broker: default\n  subscriber: {uri: http://x/}\n  delivery: {retry: -1}\n"),
            "field `spec.delivery.retry`: -1 is negative",
        ),
        (
            trig("  broker: default\n  subscriber: {uri: http://x/}\n  filter: {attributes: {Type: x}}\n"),
            "Trigger default/bad: invalid filter: spec.filter.attributes",
        ),
        (
            trig("  broker: default\n  subscriber: {uri: http://x/}\n  filters: [{cesql: \"type = \"}]\n"),
            "invalid filter: spec.filters[0].cesql",
        ),
        (
            trig("  broker: default\n  subscriber: {uri: http://x/}\n  delivery: {deadLetterSink: {uri: ftp://x/}}\n"),
            "field `spec.delivery.deadLetterSink.uri`: scheme `ftp` is not supported",
        ),
        (
            "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: b\n  annotations: {eventing.knative.dev/broker.class: Rabbit}\n".to_string(),
            "unknown broker class `Rabbit`",
        ),
        (
            "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: b\n  annotations: {eventing.knative.dev/broker.class: Kafka}\n".to_string(),
            "a Kafka broker needs bootstrap servers",
        ),
        (
            "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b}\nspec: {config: {apiVersion: v1, kind: ConfigMap, name: missing}}\n".to_string(),
            "ConfigMap default/missing is not defined",
        ),
        (
            format!("{BROKER}\n---\n{BROKER}"),
            "defined twice",
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
fn crds_are_generated_for_every_kind() {
    let yaml = sluice_crds::crds_yaml();
    assert!(yaml.contains("name: brokers.eventing.knative.dev"));
    assert!(yaml.contains("name: triggers.eventing.knative.dev"));
}

/// https destinations are accepted (issue 15 item 1), and a Destination's `CACerts` is checked
/// at load: PEM certificates, on an https URL.
#[test]
fn https_destinations_and_their_ca_certs_are_checked_at_load() {
    let trigger = |sub: &str| {
        format!(
            "{BROKER}---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: t}}\nspec:\n  broker: default\n  subscriber: {sub}\n"
        )
    };
    build_str(&trigger("{uri: \"https://example.com/\"}")).unwrap();
    let pem = "-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n";
    build_str(&trigger(&format!(
        "{{uri: \"https://example.com/\", CACerts: \"{pem}\"}}"
    )))
    .unwrap();
    let errs = build_str(&trigger(
        "{uri: \"https://example.com/\", CACerts: \"nope\"}",
    ))
    .unwrap_err();
    assert!(
        errs[0].contains("field `spec.subscriber.CACerts`") && errs[0].contains("PEM certificates"),
        "{errs:?}"
    );
    let errs = build_str(&trigger(&format!(
        "{{uri: \"http://example.com/\", CACerts: \"{pem}\"}}"
    )))
    .unwrap_err();
    assert!(errs[0].contains("not https"), "{errs:?}");
}

/// On reload, one bad object is reported on its own and the others are built.
#[test]
fn lenient_build_keeps_the_valid_objects_and_names_the_bad_one() {
    let yaml = format!(
        "{BROKER}---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: good}}\nspec:\n  broker: default\n  subscriber: {{uri: \"http://localhost:1/\"}}\n---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: bad}}\nspec:\n  broker: default\n  filters: [{{cesql: \"type =\"}}]\n  subscriber: {{uri: \"http://localhost:1/\"}}\n---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: typo}}\nspec:\n  brokr: default\n"
    );
    let (loaded, parse_errors) = parse_yaml_lenient(&yaml, "f.yaml");
    assert_eq!(parse_errors.len(), 1, "{parse_errors:?}");
    let typo = parse_errors[0].object.as_ref().unwrap();
    assert_eq!(typo.key, Key::new("default", "typo"));
    let (t, errors) = build_lenient(&loaded, &defaults());
    assert!(t.trigger(&Key::new("default", "good")).is_some());
    assert!(t.trigger(&Key::new("default", "bad")).is_none());
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].object.as_ref().unwrap().key,
        Key::new("default", "bad")
    );
}

const CONTAINER_SOURCE: &str = r#"
apiVersion: sources.knative.dev/v1
kind: ContainerSource
metadata: {name: beat, labels: {app: beat}}
spec:
  template: {spec: {containers: [{image: x, command: [/bin/true]}]}}
  sink: {uri: "http://own.example/"}
"#;

#[test]
fn a_sink_binding_gives_its_container_source_the_sink_in_embedded_mode() {
    let binding = |subject: &str| {
        format!(
            "{BROKER}---{CONTAINER_SOURCE}---\napiVersion: sources.knative.dev/v1\nkind: SinkBinding\nmetadata: {{name: b}}\nspec:\n  subject: {subject}\n  sink: {{ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}}}\n  ceOverrides: {{extensions: {{team: blue}}}}\n"
        )
    };
    let key = Key::new("default", "beat");
    let broker_url = "http://127.0.0.1:8080/default/default";
    for subject in [
        "{apiVersion: sources.knative.dev/v1, kind: ContainerSource, name: beat}",
        "{apiVersion: sources.knative.dev/v1, kind: ContainerSource, selector: {matchLabels: {app: beat}}}",
    ] {
        let t = build_str(&binding(subject)).unwrap();
        let c = &t.container_sources[&key];
        assert_eq!(c.sink.to_string(), broker_url, "{subject}");
        assert_eq!(c.extensions["team"], "blue");
    }
    // A change of the binding's overrides restarts the process (its fingerprint changes).
    let subject = "{apiVersion: sources.knative.dev/v1, kind: ContainerSource, name: beat}";
    let blue = build_str(&binding(subject)).unwrap();
    let red = build_str(&binding(subject).replace("team: blue", "team: red")).unwrap();
    assert_ne!(
        blue.container_sources[&key].fingerprint,
        red.container_sources[&key].fingerprint
    );
    // Not the subject: the source keeps its own sink.
    let t = build_str(&binding(
        "{apiVersion: sources.knative.dev/v1, kind: ContainerSource, name: other}",
    ))
    .unwrap();
    assert_eq!(
        t.container_sources[&key].sink.to_string(),
        "http://own.example/"
    );
    // Embedded mode binds only local processes.
    let errors = build_str(&binding(
        "{apiVersion: apps/v1, kind: Deployment, name: web}",
    ))
    .unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("field `spec.subject`") && errors[0].contains("needs Kubernetes mode"),
        "{}",
        errors[0]
    );
}

#[test]
fn bound_sinks_resolve_container_sources_and_sink_bindings_and_name_their_problems() {
    let yaml = format!(
        "{BROKER}---{CONTAINER_SOURCE}---\napiVersion: sources.knative.dev/v1\nkind: SinkBinding\nmetadata: {{name: bad}}\nspec:\n  subject: {{apiVersion: apps/v1, kind: Deployment, name: web}}\n  sink: {{ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: missing}}}}\n"
    );
    let loaded = parse_yaml(&yaml, "t.yaml").unwrap();
    let mut d = defaults();
    d.kubernetes = true;
    let sinks = sluice_crds::bound_sinks(&loaded, &d);
    let beat = sinks
        .iter()
        .find(|(o, _)| o.key.name == "beat")
        .unwrap()
        .1
        .as_ref()
        .unwrap();
    assert_eq!(beat.sink, "http://own.example/");
    assert_eq!(beat.ce_overrides, None);
    let bad = sinks.iter().find(|(o, _)| o.key.name == "bad").unwrap().1;
    let errors = bad.as_ref().unwrap_err();
    assert_eq!(
        errors[0].field.as_deref(),
        Some("spec.sink.ref"),
        "{errors:?}"
    );
    // Kubernetes mode: neither kind is run by the data plane, and a Deployment subject is fine.
    let (t, errors) = build_lenient(&loaded, &d);
    assert!(t.container_sources.is_empty());
    assert!(
        errors.iter().all(|e| !e.to_string().contains("subject")),
        "{errors:?}"
    );
}
