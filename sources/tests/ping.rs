//! PingSource in real time, through the `Sources` supervisor, to a real HTTP sink. (Schedule
//! timing in paused time is tested next to the loop, in `src/ping.rs`.)

mod common;

use common::*;
use sluice_core::metrics::Metrics;
use sluice_core::topology::Topology;
use sluice_sources::{Health, Kind, Sources};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

fn ping_yaml(name: &str, schedule: &str, sink: &str, extra: &str) -> String {
    format!(
        "apiVersion: sources.knative.dev/v1\nkind: PingSource\nmetadata: {{name: {name}, namespace: team}}\nspec:\n  schedule: '{schedule}'\n  sink: {{uri: '{sink}'}}\n{extra}"
    )
}

fn secs(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp()
}

#[tokio::test]
async fn a_six_field_schedule_sends_an_event_every_second() {
    let sink = Sink::ok().await;
    let yaml = ping_yaml(
        "beat",
        "*/1 * * * * *",
        &sink.url,
        "  contentType: application/json\n  data: '{\"hello\":\"world\"}'\n  ceOverrides: {extensions: {team: blue}}\n",
    );
    let metrics = Arc::new(Metrics::new());
    let mut sources = Sources::new(metrics.clone());
    sources.apply(&topology(&yaml)).await;
    let status = sources.status();
    assert_eq!(status.len(), 1);
    assert_eq!(
        (status[0].kind, &status[0].health),
        (Kind::Ping, &Health::Ready)
    );

    let got = sink.wait_accepted(3, Duration::from_secs(10)).await;
    sources.shutdown().await;

    let mut ids = HashSet::new();
    for r in &got {
        assert_eq!(r.header("ce-specversion"), Some("1.0"));
        assert_eq!(r.header("ce-type"), Some("dev.knative.sources.ping"));
        assert_eq!(
            r.header("ce-source"),
            Some("/apis/v1/namespaces/team/pingsources/beat")
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("ce-team"), Some("blue"));
        assert_eq!(r.header("kn-namespace"), Some("team"));
        assert_eq!(r.body.as_ref(), b"{\"hello\":\"world\"}");
        assert!(ids.insert(r.id().to_string()), "ids are fresh per tick");
        uuid_like(r.id());
    }
    // One event per whole second, none twice.
    let times: Vec<i64> = got
        .iter()
        .map(|r| secs(r.header("ce-time").unwrap()))
        .collect();
    for pair in times.windows(2) {
        assert_eq!(pair[1] - pair[0], 1, "ticks a second apart: {times:?}");
    }
    let labels = "{namespace=\"team\",source=\"beat\",kind=\"PingSource\"}";
    assert!(
        metric(
            &metrics,
            &format!("sluice_source_events_produced_total{labels}")
        ) >= 3.0
    );
    assert!(
        metric(
            &metrics,
            &format!("sluice_source_events_delivered_total{labels}")
        ) >= 3.0
    );
}

fn uuid_like(id: &str) {
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(id.matches('-').count(), 4, "{id}");
}

#[tokio::test]
async fn apply_keeps_unchanged_sources_and_stops_removed_ones() {
    let sink = Sink::ok().await;
    let yaml = ping_yaml("beat", "* * * * * *", &sink.url, "");
    let t = topology(&yaml);
    let mut sources = Sources::new(Arc::new(Metrics::new()));
    sources.apply(&t).await;
    sink.wait_accepted(1, Duration::from_secs(10)).await;
    // The same resources again (a reload that changed something else): the source keeps its
    // schedule, so no tick is sent twice.
    sources.apply(&topology(&yaml)).await;
    let got = sink.wait_accepted(3, Duration::from_secs(10)).await;
    let times: Vec<_> = got
        .iter()
        .map(|r| r.header("ce-time").unwrap().to_string())
        .collect();
    let unique: HashSet<_> = times.iter().collect();
    assert_eq!(
        unique.len(),
        times.len(),
        "a tick was sent twice: {times:?}"
    );

    // Removed (and another source added): "beat" stops. While "other" ticks twice (over a
    // second apart), a "beat" that kept running would have ticked too.
    let beat = |rs: &[Received]| {
        rs.iter()
            .filter(|r| r.header("ce-source").is_some_and(|s| s.ends_with("/beat")))
            .count()
    };
    let other = ping_yaml("other", "* * * * * *", &sink.url, "");
    sources.apply(&topology(&other)).await;
    let status = sources.status();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].key.name, "other");
    let beat_before = beat(&sink.received());
    eventually(
        Duration::from_secs(10),
        "two ticks of the new source",
        || async {
            let n = sink
                .received()
                .iter()
                .filter(|r| r.header("ce-source").is_some_and(|s| s.ends_with("/other")))
                .count();
            (n >= 2).then_some(())
        },
    )
    .await;
    assert_eq!(
        beat(&sink.received()),
        beat_before,
        "a removed source kept sending"
    );
    sources.apply(&Topology::default()).await;
    assert!(sources.status().is_empty());
}

#[tokio::test]
async fn base64_data_is_sent_as_bytes() {
    let sink = Sink::ok().await;
    let yaml = ping_yaml(
        "bin",
        "* * * * * *",
        &sink.url,
        "  contentType: application/octet-stream\n  dataBase64: AAEC/w==\n",
    );
    let mut sources = Sources::new(Arc::new(Metrics::new()));
    sources.apply(&topology(&yaml)).await;
    let got = sink.wait_accepted(1, Duration::from_secs(10)).await;
    sources.shutdown().await;
    assert_eq!(got[0].body.as_ref(), &[0u8, 1, 2, 255]);
    assert_eq!(
        got[0].header("content-type"),
        Some("application/octet-stream")
    );
}
