//! Per-event cost of each filter dialect on a realistic event (ten attributes, ~1 KiB of JSON).
//!
//! `cargo bench -p sluice-filter` (add `-- --quick` for a short run).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use sluice_core::{Event, SpecVersion};
use sluice_filter::{compile, CompiledFilter, SubscriptionsApiFilter};
use std::collections::BTreeMap;

fn event() -> Event {
    let mut e = Event::new(
        SpecVersion::V10,
        "a1b2c3d4-0000-4000-8000-000000000001",
        "/shop/orders",
        "com.example.order.created",
    );
    e.set("time", "2024-05-01T12:34:56.789+02:00");
    e.set("datacontenttype", "application/json");
    e.set("subject", "order/4711");
    e.set("knativearrivaltime", "2024-05-01T10:34:56.912Z");
    e.set(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    e.set("priority", "5");
    e.set("region", "eu-west");
    let items: Vec<String> = (0..10)
        .map(|i| {
            format!(
                r#"{{"sku": "SKU-{i:04}", "name": "Item number {i}", "qty": {q}, "price": {p}.95, "tags": ["a", "b"]}}"#,
                q = i % 3 + 1,
                p = 20 + i * 15
            )
        })
        .collect();
    let data = format!(
        r#"{{"order": {{"id": 4711, "customer": {{"id": "c-42", "name": "Ada Lovelace", "email": "ada@example.com"}}, "currency": "EUR", "items": [{}], "total": 812.60}}}}"#,
        items.join(", ")
    );
    assert!((1000..1300).contains(&data.len()), "{} bytes", data.len());
    e.set_data(data.into_bytes(), false);
    e
}

fn filters(yaml: &str) -> Vec<SubscriptionsApiFilter> {
    serde_yaml::from_str(yaml).expect("bench filter YAML")
}

fn bench(c: &mut Criterion) {
    let ev = event();
    let attrs: BTreeMap<String, String> = [("type".into(), "com.example.order.created".into())]
        .into_iter()
        .collect();
    let cases: Vec<(&str, CompiledFilter)> = vec![
        ("attributes_exact", compile(Some(&attrs), &[]).unwrap()),
        (
            "exact",
            compile(None, &filters("[{exact: {type: com.example.order.created}}]")).unwrap(),
        ),
        (
            "prefix",
            compile(None, &filters("[{prefix: {type: com.example.}}]")).unwrap(),
        ),
        (
            "cesql_5_clauses",
            compile(
                None,
                &filters(
                    r#"[{cesql: "type = 'com.example.order.created' AND source LIKE '/shop/%' AND EXISTS subject AND INT(priority) > 3 AND region IN ('eu-west', 'us-east')"}]"#,
                ),
            )
            .unwrap(),
        ),
        (
            "jsonpath_1kib",
            compile(
                None,
                &filters("[{jsonpath: '$.order.items[?@.price > 100]'}]"),
            )
            .unwrap(),
        ),
    ];
    let mut group = c.benchmark_group("filter");
    for (name, f) in &cases {
        assert!(f.matches(&ev), "{name} must match the bench event");
        group.bench_function(*name, |b| b.iter(|| f.matches(black_box(&ev))));
    }
    // Baseline for the JSONPath case: parsing the data alone.
    let data = ev.data().unwrap().clone();
    group.bench_function("json_parse_1kib_baseline", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&data)).unwrap())
    });
    group.finish();

    c.bench_function("compile/cesql_5_clauses", |b| {
        let src = filters(
            r#"[{cesql: "type = 'com.example.order.created' AND source LIKE '/shop/%' AND EXISTS subject AND INT(priority) > 3 AND region IN ('eu-west', 'us-east')"}]"#,
        );
        b.iter(|| compile(None, black_box(&src)).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
