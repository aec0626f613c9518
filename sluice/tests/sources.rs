//! Sources end to end: the real binary with a PingSource whose sink is a Broker, so ticks go
//! through the ingress, the broker's channel and a trigger to a real HTTP sink.

mod common;

use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_ping_source_feeds_a_broker_and_shows_in_topology_and_metrics() {
    let sink = Sink::ok().await;
    let yaml = format!(
        r#"apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default, namespace: default}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: pings, namespace: default}}
spec:
  broker: default
  filter:
    attributes: {{type: dev.knative.sources.ping}}
  subscriber: {{uri: "{}"}}
---
apiVersion: sources.knative.dev/v1
kind: PingSource
metadata: {{name: heartbeat, namespace: default}}
spec:
  schedule: "* * * * * *"
  contentType: application/json
  data: '{{"beat":true}}'
  sink:
    ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
"#,
        sink.url()
    );
    let s = Sluice::start("ping-source", &yaml).await;
    let got = sink.wait_for(2, T).await;
    let r = &got[0];
    assert_eq!(r.header("ce-type"), Some("dev.knative.sources.ping"));
    assert_eq!(
        r.header("ce-source"),
        Some("/apis/v1/namespaces/default/pingsources/heartbeat")
    );
    assert!(
        r.header("ce-knativearrivaltime").is_some(),
        "came through the broker"
    );
    assert_eq!(r.body.as_ref(), b"{\"beat\":true}");
    assert_ne!(got[0].header("ce-id"), got[1].header("ce-id"));

    let topology: serde_json::Value = client()
        .get(format!("http://{}/topology", s.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let src = &topology["sources"][0];
    assert_eq!(src["kind"], "PingSource");
    assert_eq!(src["name"], "heartbeat");
    assert_eq!(src["ready"], true);
    assert_eq!(src["sink"], s.broker_url("default", "default"));

    eventually(T, "source metrics", || async {
        (s.metric("sluice_source_events_delivered_total{namespace=\"default\",source=\"heartbeat\",kind=\"PingSource\"}").await >= 2.0)
            .then_some(())
    })
    .await;

    // A reload that removes the source stops it; the trigger and broker stay.
    s.write(
        "resources.yaml",
        &yaml[..yaml.find("---\napiVersion: sources").unwrap()],
    );
    eventually(T, "the source to be removed", || async {
        let t: serde_json::Value = client()
            .get(format!("http://{}/topology", s.admin))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        t["sources"]
            .as_array()
            .is_some_and(|a| a.is_empty())
            .then_some(())
    })
    .await;
    s.kill().await;
}
