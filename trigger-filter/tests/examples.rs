//! Keeps `examples/filters.yaml` honest: every Trigger in it compiles, passes the sample event
//! its header describes and rejects a different one.

use serde::Deserialize;
use serde_yaml::Value as Yaml;
use sluice_core::{Event, SpecVersion};
use sluice_filter::{compile, SubscriptionsApiFilter};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn sample() -> Event {
    let mut e = Event::new(
        SpecVersion::V10,
        "1",
        "https://shop.example.com/orders",
        "com.example.order.created",
    );
    e.set("subject", "order/4711");
    e.set("region", "eu-west");
    e.set("priority", "5");
    e.set("datacontenttype", "application/json");
    e.set_data(
        br#"{"order": {"id": 4711, "total": 120, "items": [{"sku": "A-1", "qty": 2}]}}"#.to_vec(),
        false,
    );
    e
}

fn other() -> Event {
    let mut e = Event::new(
        SpecVersion::V10,
        "2",
        "https://shop.example.com/refunds",
        "com.example.order.deleted",
    );
    e.set("region", "us-east");
    e.set("priority", "1");
    e
}

#[test]
fn example_triggers_compile_and_filter() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/filters.yaml");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut triggers = 0;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let doc = Yaml::deserialize(doc).expect("YAML document");
        if doc.get("kind").and_then(Yaml::as_str) != Some("Trigger") {
            continue;
        }
        triggers += 1;
        let name = doc["metadata"]["name"].as_str().unwrap_or("?").to_owned();
        let spec = &doc["spec"];
        let attributes: Option<BTreeMap<String, String>> = spec
            .get("filter")
            .and_then(|f| f.get("attributes"))
            .map(|a| serde_yaml::from_value(a.clone()).expect("filter.attributes"));
        let filters: Vec<SubscriptionsApiFilter> = spec
            .get("filters")
            .map(|f| serde_yaml::from_value(f.clone()).unwrap_or_else(|e| panic!("{name}: {e}")))
            .unwrap_or_default();
        let f = compile(attributes.as_ref(), &filters).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!f.is_match_all(), "{name} filters nothing");
        assert!(f.matches(&sample()), "{name} must pass the sample event");
        assert!(!f.matches(&other()), "{name} must reject the other event");
    }
    assert!(triggers >= 6, "only {triggers} triggers in the example");
}
