//! ContainerSource in embedded mode: the container's command runs as a local process with
//! `K_SINK` (here a Broker's ingress URL) and `K_CE_OVERRIDES`; it is restarted when it exits
//! and stopped when the source is removed.

mod common;

use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// Posts one event to $K_SINK (curl), exits with an error the first time (so Sluice restarts
/// it), then stays up (its PID in $STATE/pid).
const SCRIPT: &str = r#"#!/bin/sh
echo run >> "$STATE/runs"
n=$(wc -l < "$STATE/runs" | tr -d ' ')
curl -s -o /dev/null -X POST "$K_SINK" \
  -H "ce-specversion: 1.0" -H "ce-id: run-$n" -H "ce-type: from-script" -H "ce-source: /script" \
  -H "content-type: application/json" --data "$K_CE_OVERRIDES"
if [ "$n" -lt 2 ]; then exit 3; fi
echo $$ > "$STATE/pid"
exec sleep 1000
"#;

fn yaml(dir: &std::path::Path, sink: &str, with_source: bool) -> String {
    let mut y = format!(
        r#"apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default, namespace: default}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: scripted, namespace: default}}
spec:
  broker: default
  filter: {{attributes: {{type: from-script}}}}
  subscriber: {{uri: "{sink}"}}
"#
    );
    if with_source {
        y.push_str(&format!(
            r#"---
apiVersion: sources.knative.dev/v1
kind: ContainerSource
metadata: {{name: script, namespace: default}}
spec:
  template:
    spec:
      containers:
        - image: ignored-in-embedded-mode
          command: ["/bin/sh"]
          args: ["{script}"]
          env:
            - {{name: STATE, value: "{state}"}}
  ceOverrides: {{extensions: {{team: blue}}}}
  sink:
    ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
"#,
            script = dir.join("source.sh").display(),
            state = dir.display()
        ));
    }
    y
}

fn alive(pid: &str) -> bool {
    std::process::Command::new("kill")
        .args(["-0", pid])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[tokio::test]
async fn a_container_source_process_posts_to_k_sink_is_restarted_and_stopped_on_delete() {
    let sink = Sink::ok().await;
    let dir = test_dir("container-source");
    // The script and its state live outside the watched resource directory.
    let work = test_dir("container-source-work");
    std::fs::write(work.join("source.sh"), SCRIPT).unwrap();
    std::fs::write(dir.join("resources.yaml"), yaml(&work, &sink.url(), true)).unwrap();
    let s = Sluice::start_in(dir, &[]).await;

    let got = sink.wait_for(2, T).await;
    let ids: Vec<_> = got
        .iter()
        .map(|r| r.header("ce-id").unwrap_or("-"))
        .collect();
    assert_eq!(
        ids,
        ["run-1", "run-2"],
        "the exited process was started again"
    );
    for r in &got {
        assert_eq!(r.header("ce-type"), Some("from-script"));
        assert!(
            r.header("ce-knativearrivaltime").is_some(),
            "through the broker"
        );
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body, serde_json::json!({"extensions": {"team": "blue"}}));
    }
    let pid = eventually(T, "the second run's pid", || async {
        std::fs::read_to_string(work.join("pid"))
            .ok()
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
    })
    .await;
    assert!(alive(&pid), "the second run stays up");

    // Removing the source stops its process.
    s.write("resources.yaml", &yaml(&work, &sink.url(), false));
    eventually(T, "the process stopped", || async {
        (!alive(&pid)).then_some(())
    })
    .await;
    assert_eq!(sink.count(), 2);
}

/// Posts one event to $K_SINK with $K_CE_OVERRIDES as data, then stays up.
const BOUND_SCRIPT: &str = r#"#!/bin/sh
curl -s -o /dev/null -X POST "$K_SINK" \
  -H "ce-specversion: 1.0" -H "ce-id: bound-1" -H "ce-type: from-script" -H "ce-source: /script" \
  -H "content-type: application/json" --data "$K_CE_OVERRIDES"
exec sleep 1000
"#;

/// Embedded mode: a SinkBinding whose subject is a ContainerSource gives that local process
/// its K_SINK and K_CE_OVERRIDES (the binding's win over the source's own sink).
#[tokio::test]
async fn a_sink_binding_gives_a_container_source_process_its_sink() {
    let sink = Sink::ok().await;
    let dir = test_dir("container-source-bound");
    let work = test_dir("container-source-bound-work");
    std::fs::write(work.join("source.sh"), BOUND_SCRIPT).unwrap();
    let mut y = yaml(&work, &sink.url(), false);
    y.push_str(&format!(
        r#"---
apiVersion: sources.knative.dev/v1
kind: ContainerSource
metadata: {{name: script, namespace: default, labels: {{app: heartbeat}}}}
spec:
  template:
    spec:
      containers:
        - command: ["/bin/sh", "{script}"]
  # Nobody listens here: the binding's sink is used instead.
  sink: {{uri: "http://127.0.0.1:9/"}}
---
apiVersion: sources.knative.dev/v1
kind: SinkBinding
metadata: {{name: bind, namespace: default}}
spec:
  subject:
    apiVersion: sources.knative.dev/v1
    kind: ContainerSource
    selector: {{matchLabels: {{app: heartbeat}}}}
  sink:
    ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
  ceOverrides: {{extensions: {{bound: "yes"}}}}
"#,
        script = work.join("source.sh").display()
    ));
    std::fs::write(dir.join("resources.yaml"), &y).unwrap();
    let _s = Sluice::start_in(dir, &[]).await;
    let got = sink.wait_for(1, T).await;
    assert_eq!(got[0].header("ce-id"), Some("bound-1"));
    assert!(
        got[0].header("ce-knativearrivaltime").is_some(),
        "through the broker"
    );
    let body: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body, serde_json::json!({"extensions": {"bound": "yes"}}));
}
