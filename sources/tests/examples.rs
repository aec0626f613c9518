//! Keeps `examples/ping-source.yaml` and `examples/kafka-source.yaml` valid: they load and
//! convert like `sluice run` would load them.

use sluice_core::topology::Key;
use std::path::PathBuf;

fn load(file: &str) -> sluice_core::topology::Topology {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(file);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let loaded = sluice_crds::parse_yaml(&text, file).unwrap();
    sluice_crds::build(
        &loaded,
        &sluice_crds::Defaults::new("http://127.0.0.1:8080/".parse().unwrap()),
    )
    .unwrap_or_else(|es| panic!("{file}: {es:#?}"))
}

#[test]
fn ping_source_example_loads() {
    let t = load("ping-source.yaml");
    let hb = &t.ping_sources[&Key::new("default", "heartbeat")];
    assert_eq!(hb.sink.as_str(), "http://127.0.0.1:8080/default/default");
    let standup = &t.ping_sources[&Key::new("default", "standup")];
    assert_eq!(standup.timezone, "Europe/Paris");
    assert_eq!(standup.data.as_deref(), Some(&b"time for stand-up"[..]));
}

#[test]
fn kafka_source_example_loads() {
    let t = load("kafka-source.yaml");
    let k = &t.kafka_sources[&Key::new("default", "orders")];
    assert_eq!(k.topics, ["orders"]);
    assert!(k.ordered);
    assert!(k.delivery.dead_letter_sink.is_some());
}
