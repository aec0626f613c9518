//! Channels, Subscriptions, Sequences and Parallels compile to the topology's channels and
//! subscriptions with Knative's names and wiring (SEMANTICS.md §9, §10); Knative's own
//! documentation examples load unchanged; invalid specs are refused naming the field.

use sluice_core::topology::{ChannelConfig, Key, Kind, ObjectRef, ReplyTo, Topology};
use sluice_crds::{build, build_lenient, parse_yaml, Defaults, LoadError, Loaded};

fn defaults() -> Defaults {
    let mut d = Defaults::new("http://127.0.0.1:8080/".parse().unwrap());
    d.kafka_bootstrap_servers = Some("127.0.0.1:9092".into());
    d
}

fn fixtures() -> Vec<Loaded> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/knative");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 6, "{files:?}");
    files
        .iter()
        .flat_map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            parse_yaml(&text, &p.display().to_string()).unwrap_or_else(|e| panic!("{e}"))
        })
        .collect()
}

fn key(name: &str) -> Key {
    Key::new("default", name)
}

fn sub(t: &Topology, name: &str) -> std::sync::Arc<sluice_core::topology::Subscription> {
    t.subscriptions
        .get(&ObjectRef::new(Kind::Subscription, key(name)))
        .unwrap_or_else(|| panic!("no subscription {name}: {:?}", t.subscriptions.keys()))
        .clone()
}

fn channel_reply(name: &str) -> ReplyTo {
    ReplyTo::Channel {
        key: key(name),
        address: format!("http://127.0.0.1:8080/default/channels/{name}")
            .parse()
            .unwrap(),
    }
}

fn svc(name: &str) -> String {
    format!("http://{name}.default.svc.cluster.local/")
}

#[test]
fn knative_documentation_examples_compile_to_the_graph() {
    let t = build(&fixtures(), &defaults()).unwrap_or_else(|e| panic!("{e:#?}"));

    // Channel with an InMemoryChannel template, and a KafkaChannel.
    let ch = &t.channels[&key("example-channel")];
    assert_eq!(ch.object.kind, Kind::Channel);
    assert!(matches!(ch.channel, ChannelConfig::Memory { .. }));
    assert_eq!(
        ch.address.as_str(),
        "http://127.0.0.1:8080/default/channels/example-channel"
    );
    let k = &t.channels[&key("my-kafka-channel")];
    assert_eq!(
        k.channel,
        ChannelConfig::Kafka {
            bootstrap_servers: "127.0.0.1:9092".into(),
            partitions: 3,
            replication_factor: 1
        }
    );

    // The Subscription: channel, Knative Service subscriber, its dead-letter sink, no reply.
    let s = sub(&t, "my-subscription");
    assert_eq!(s.channel, ObjectRef::channel(key("example-channel")));
    assert_eq!(s.subscriber.as_str(), svc("event-display"));
    assert_eq!(
        s.delivery.dead_letter_sink.as_ref().map(|e| e.as_str()),
        Some(svc("error-handler").as_str())
    );
    assert_eq!(s.reply, ReplyTo::Discard);

    // Sequence: three channels, each step's reply to the next, the last to the Broker.
    for i in 0..3 {
        let name = format!("sequence-kn-sequence-{i}");
        let c = &t.channels[&key(&name)];
        assert_eq!(c.object, ObjectRef::new(Kind::InMemoryChannel, key(&name)));
        assert_eq!(
            c.owner,
            Some(ObjectRef::new(Kind::Sequence, key("sequence")))
        );
        assert_eq!(sub(&t, &name).channel, ObjectRef::channel(key(&name)));
    }
    assert_eq!(
        sub(&t, "sequence-kn-sequence-0").reply,
        channel_reply("sequence-kn-sequence-1")
    );
    assert_eq!(
        sub(&t, "sequence-kn-sequence-1").subscriber.as_str(),
        svc("second")
    );
    assert_eq!(
        sub(&t, "sequence-kn-sequence-2").reply,
        ReplyTo::Broker(key("default"))
    );
    let flow = &t.flows[&ObjectRef::new(Kind::Sequence, key("sequence"))];
    assert_eq!(flow.address, key("sequence-kn-sequence-0"));
    assert_eq!(flow.channels.len(), 3);
    assert_eq!(flow.subscriptions.len(), 3);
    // A Trigger whose subscriber is the Sequence sends to its first channel.
    let trigger = t.trigger(&key("sequence-trigger")).unwrap();
    assert_eq!(
        trigger.subscriber.as_str(),
        "http://127.0.0.1:8080/default/channels/sequence-kn-sequence-0"
    );

    // Parallel: ingress channel, a channel per branch, a filter and a subscriber
    // subscription per branch.
    let p = "odd-even-parallel";
    let flow = &t.flows[&ObjectRef::new(Kind::Parallel, key(p))];
    assert_eq!(flow.address, key("odd-even-parallel-kn-parallel"));
    assert_eq!(flow.channels.len(), 3);
    assert_eq!(flow.subscriptions.len(), 4);
    let filter = sub(&t, "odd-even-parallel-kn-parallel-filter-1");
    assert_eq!(
        filter.channel,
        ObjectRef::channel(key("odd-even-parallel-kn-parallel"))
    );
    assert_eq!(filter.subscriber.as_str(), svc("odd-filter"));
    assert_eq!(
        filter.reply,
        channel_reply("odd-even-parallel-kn-parallel-1")
    );
    let branch = sub(&t, "odd-even-parallel-kn-parallel-1");
    assert_eq!(
        branch.channel,
        ObjectRef::channel(key("odd-even-parallel-kn-parallel-1"))
    );
    assert_eq!(branch.subscriber.as_str(), svc("odd-transformer"));
    assert_eq!(
        branch.reply,
        ReplyTo::Endpoint(svc("event-display").parse().unwrap())
    );
    // Filters given as URIs are used as they are.
    let me = sub(&t, "me-odd-even-parallel-kn-parallel-filter-0");
    assert_eq!(
        me.subscriber.as_str(),
        "http://me-even-odd-switcher.default.svc.cluster.local/0"
    );
}

fn errors(yaml: &str, d: &Defaults) -> Vec<LoadError> {
    let loaded = parse_yaml(yaml, "f.yaml").unwrap_or_else(|e| panic!("{e}"));
    let (_, errors) = build_lenient(&loaded, d);
    errors
}

fn has(errors: &[LoadError], field: &str, text: &str) {
    assert!(
        errors
            .iter()
            .any(|e| e.field.as_deref() == Some(field) && e.message.contains(text)),
        "no error at `{field}` containing {text:?}: {errors:#?}"
    );
}

#[test]
fn invalid_specs_are_refused_naming_the_field() {
    let d = defaults();
    let e = errors(
        "apiVersion: flows.knative.dev/v1\nkind: Sequence\nmetadata: {name: s}\nspec: {steps: []}\n",
        &d,
    );
    has(&e, "spec.steps", "at least one step");

    let e = errors(
        "apiVersion: flows.knative.dev/v1\nkind: Parallel\nmetadata: {name: p}\nspec: {}\n",
        &d,
    );
    has(&e, "spec.branches", "at least one branch");

    let e = errors(
        "apiVersion: messaging.knative.dev/v1\nkind: Channel\nmetadata: {name: c}\nspec:\n  channelTemplate: {apiVersion: messaging.knative.dev/v1, kind: RedisChannel}\n",
        &d,
    );
    has(&e, "spec.channelTemplate.kind", "RedisChannel");

    let e = errors(
        "apiVersion: messaging.knative.dev/v1\nkind: Channel\nmetadata: {name: c}\nspec:\n  channelTemplate:\n    apiVersion: messaging.knative.dev/v1\n    kind: InMemoryChannel\n    spec: {numPartitions: 3}\n",
        &d,
    );
    has(
        &e,
        "spec.channelTemplate.spec.numPartitions",
        "unknown field",
    );

    let e = errors(
        "apiVersion: messaging.knative.dev/v1beta1\nkind: KafkaChannel\nmetadata: {name: k}\n",
        &Defaults::new("http://127.0.0.1:8080/".parse().unwrap()),
    );
    has(&e, "spec", "--kafka-bootstrap-servers");

    let e = errors(
        "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\nmetadata: {name: c}\nspec:\n  subscribers: [{subscriberUri: 'http://x/'}]\n",
        &d,
    );
    has(&e, "spec.subscribers", "Subscription");

    let e = errors(
        "apiVersion: messaging.knative.dev/v1\nkind: Subscription\nmetadata: {name: s}\nspec:\n  channel: {apiVersion: messaging.knative.dev/v1, kind: Channel, name: missing}\n  subscriber: {uri: 'http://x/'}\n",
        &d,
    );
    has(&e, "spec.channel", "not defined");

    let e = errors(
        "apiVersion: messaging.knative.dev/v1\nkind: Subscription\nmetadata: {name: s}\nspec: {}\n",
        &d,
    );
    has(&e, "spec.channel", "is required");
    has(&e, "spec.subscriber", "is required");

    // A step's delivery is checked with its path.
    let e = errors(
        "apiVersion: flows.knative.dev/v1\nkind: Sequence\nmetadata: {name: s}\nspec:\n  steps:\n    - uri: http://a/\n    - uri: http://b/\n      delivery: {retry: -1}\n",
        &d,
    );
    has(&e, "spec.steps[1].delivery.retry", "negative");

    // Channel names are shared by every channel kind and the channels flows make.
    let e = errors(
        "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\nmetadata: {name: s-kn-sequence-0}\n---\napiVersion: flows.knative.dev/v1\nkind: Sequence\nmetadata: {name: s}\nspec:\n  steps: [{uri: 'http://a/'}]\n",
        &d,
    );
    has(&e, "metadata.name", "unique per namespace");

    // So are Subscription names.
    let e = errors(
        "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\nmetadata: {name: c}\n---\napiVersion: messaging.knative.dev/v1\nkind: Subscription\nmetadata: {name: p-kn-parallel-filter-0}\nspec:\n  channel: {apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel, name: c}\n  subscriber: {uri: 'http://x/'}\n---\napiVersion: flows.knative.dev/v1\nkind: Parallel\nmetadata: {name: p}\nspec:\n  branches: [{subscriber: {uri: 'http://a/'}}]\n",
        &d,
    );
    has(
        &e,
        "metadata.name",
        "Subscription default/p-kn-parallel-filter-0 is also made by",
    );

    // A ref to a Sequence that does not exist.
    let e = errors(
        "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\nmetadata: {name: c}\n---\napiVersion: messaging.knative.dev/v1\nkind: Subscription\nmetadata: {name: s}\nspec:\n  channel: {apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel, name: c}\n  subscriber: {uri: 'http://x/'}\n  reply:\n    ref: {apiVersion: flows.knative.dev/v1, kind: Sequence, name: nope}\n",
        &d,
    );
    has(&e, "spec.reply.ref", "Sequence default/nope is not defined");
}

#[test]
fn a_subscription_without_delivery_takes_the_channels_whole() {
    let yaml = "apiVersion: messaging.knative.dev/v1\nkind: Channel\nmetadata: {name: c}\nspec:\n  delivery:\n    retry: 4\n    deadLetterSink: {uri: 'http://dls/'}\n---\napiVersion: messaging.knative.dev/v1\nkind: Subscription\nmetadata: {name: inherit}\nspec:\n  channel: {apiVersion: messaging.knative.dev/v1, kind: Channel, name: c}\n  subscriber: {uri: 'http://x/'}\n---\napiVersion: messaging.knative.dev/v1\nkind: Subscription\nmetadata: {name: own}\nspec:\n  channel: {apiVersion: messaging.knative.dev/v1, kind: Channel, name: c}\n  subscriber: {uri: 'http://x/'}\n  delivery: {retry: 1}\n";
    let loaded = parse_yaml(yaml, "f.yaml").unwrap();
    let t = build(&loaded, &defaults()).unwrap_or_else(|e| panic!("{e:#?}"));
    let inherit = sub(&t, "inherit");
    assert_eq!(inherit.delivery.retry, 4);
    assert_eq!(
        inherit
            .delivery
            .dead_letter_sink
            .as_ref()
            .map(|e| e.as_str()),
        Some("http://dls/")
    );
    // Its own delivery replaces the channel's as a whole: no dead-letter sink.
    let own = sub(&t, "own");
    assert_eq!(own.delivery.retry, 1);
    assert!(own.delivery.dead_letter_sink.is_none());
}

#[test]
fn crds_have_status_and_printer_columns_for_every_new_kind() {
    let yaml = sluice_crds::crds_yaml();
    let docs: Vec<serde_yaml::Value> = yaml
        .split("---\n")
        .map(|d| serde_yaml::from_str(d).unwrap())
        .collect();
    for name in [
        "channels.messaging.knative.dev",
        "inmemorychannels.messaging.knative.dev",
        "kafkachannels.messaging.knative.dev",
        "natsjetstreamchannels.messaging.knative.dev",
        "subscriptions.messaging.knative.dev",
        "sequences.flows.knative.dev",
        "parallels.flows.knative.dev",
        "eventtransforms.eventing.knative.dev",
    ] {
        let crd = docs
            .iter()
            .find(|d| d["metadata"]["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no CRD {name}"));
        let version = &crd["spec"]["versions"][0];
        assert_eq!(
            version["subresources"]["status"],
            serde_yaml::Value::Mapping(Default::default()),
            "{name}"
        );
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(columns, ["URL", "AGE", "READY", "REASON"], "{name}");
        assert_eq!(crd["spec"]["scope"].as_str(), Some("Namespaced"), "{name}");
    }
}

#[test]
fn event_transforms_are_checked_when_loaded() {
    let d = defaults();
    let t = |spec: &str| {
        format!("apiVersion: eventing.knative.dev/v1alpha1\nkind: EventTransform\nmetadata: {{name: x}}\nspec:\n{spec}")
    };
    // A syntax error names the field and the position in the expression.
    let e = errors(&t("  jsonata:\n    expression: '{\"a\": 1'\n"), &d);
    has(&e, "spec.jsonata.expression", "invalid JSONata expression");
    assert!(e[0].message.contains(" @ "), "{}", e[0].message);
    let e = errors(&t("  sink: {uri: 'http://s/'}\n"), &d);
    has(&e, "spec.jsonata", "is required");
    let e = errors(
        &t("  jsonata: {expression: '$'}\n  reply: {discard: true}\n"),
        &d,
    );
    has(&e, "spec.reply", "needs `sink`");
    let e = errors(
        &t("  jsonata: {expression: '$'}\n  sink: {uri: 'http://s/'}\n  reply: {discard: true, jsonata: {expression: '$'}}\n"),
        &d,
    );
    has(&e, "spec.reply", "exactly one");

    // Valid: its address, and a Trigger can name it.
    let yaml = format!(
        "{}---\napiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {{name: b}}\n---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: t}}\nspec:\n  broker: b\n  subscriber:\n    ref: {{apiVersion: eventing.knative.dev/v1alpha1, kind: EventTransform, name: x}}\n",
        t("  jsonata: {expression: '$'}\n  sink: {uri: 'http://s/'}\n  reply: {jsonata: {expression: '$'}}\n")
    );
    let topology =
        build(&parse_yaml(&yaml, "f.yaml").unwrap(), &d).unwrap_or_else(|e| panic!("{e:#?}"));
    let x = &topology.transforms[&key("x")];
    assert_eq!(
        x.address.as_str(),
        "http://127.0.0.1:8080/default/eventtransforms/x"
    );
    assert_eq!(
        x.reply,
        sluice_core::topology::TransformReply::Jsonata("$".into())
    );
    assert_eq!(
        topology.trigger(&key("t")).unwrap().subscriber.as_str(),
        "http://127.0.0.1:8080/default/eventtransforms/x"
    );
}
