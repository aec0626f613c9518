//! `serving.knative.dev/v1` Service in embedded mode (SEMANTICS.md §13): what is read, what
//! is refused and why, and how Triggers reach it.

use sluice_core::topology::Key;
use sluice_crds::{build, parse_yaml, Defaults};
use std::time::Duration;

fn build_str(yaml: &str) -> Result<sluice_core::topology::Topology, Vec<String>> {
    let defaults = Defaults::new("http://127.0.0.1:8080/".parse().unwrap());
    let loaded = parse_yaml(yaml, "svc.yaml").map_err(|e| vec![e.to_string()])?;
    build(&loaded, &defaults).map_err(|es| es.iter().map(ToString::to_string).collect())
}

const SERVICE: &str = r#"
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
  namespace: team
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: "0"
        autoscaling.knative.dev/max-scale: "3"
        autoscaling.knative.dev/window: "6s"
    spec:
      containerConcurrency: 5
      timeoutSeconds: 20
      containers:
        - image: ghcr.io/example/hello
          command: ["python3", "-m"]
          args: ["http.server"]
          env:
            - name: GREETING
              value: hi
          ports:
            - containerPort: 8080
          readinessProbe:
            httpGet:
              path: /healthz
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
  namespace: team
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: to-hello
  namespace: team
spec:
  broker: default
  subscriber:
    ref:
      apiVersion: serving.knative.dev/v1
      kind: Service
      name: hello
"#;

#[test]
fn a_service_becomes_a_topology_service_and_triggers_reach_it_through_the_ingress() {
    let t = build_str(SERVICE).unwrap();
    let s = &t.services[&Key::new("team", "hello")];
    assert_eq!(s.command, vec!["python3", "-m", "http.server"]);
    assert_eq!(s.env, vec![("GREETING".to_string(), "hi".to_string())]);
    assert_eq!(s.readiness_path.as_deref(), Some("/healthz"));
    assert_eq!(s.container_concurrency, 5);
    assert_eq!(s.timeout, Duration::from_secs(20));
    assert_eq!(s.scaling.max_scale, 3);
    assert_eq!(s.scaling.stable_window, Duration::from_secs(6));
    assert_eq!(
        s.scaling.target, 5.0,
        "the target follows containerConcurrency"
    );
    assert_eq!(
        s.address.as_str(),
        "http://127.0.0.1:8080/team/services/hello"
    );
    let sub = t.trigger(&Key::new("team", "to-hello")).unwrap();
    assert_eq!(
        sub.subscriber.url().as_str(),
        "http://127.0.0.1:8080/team/services/hello"
    );
}

#[test]
fn knative_defaults_apply() {
    let yaml = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: s}\nspec:\n  template:\n    spec:\n      containers: [{command: [./server]}]\n";
    let t = build_str(yaml).unwrap();
    let s = &t.services[&Key::new("default", "s")];
    assert_eq!(s.container_concurrency, 0);
    assert_eq!(s.timeout, Duration::from_secs(300));
    assert_eq!(s.scaling, sluice_core::topology::ScalingSpec::default());
    assert_eq!(s.readiness_path, None);
}

#[test]
fn what_embedded_mode_cannot_run_is_refused_with_the_fix() {
    let table: &[(&str, &str)] = &[
        (
            "containers: [{image: ghcr.io/x/y}]",
            "field `spec.template.spec.containers[0].command`: embedded mode runs each replica as a local process and cannot run the image \"ghcr.io/x/y\": give the program to start as `command`",
        ),
        ("containers: []", "field `spec.template.spec.containers`: is required"),
        (
            "containers: [{command: [a]}, {command: [b]}]",
            "one container per replica",
        ),
        (
            "containerConcurrency: 1001\n      containers: [{command: [a]}]",
            "field `spec.template.spec.containerConcurrency`: 1001 is not from 0 (unlimited) to 1000",
        ),
        (
            "timeoutSeconds: 601\n      containers: [{command: [a]}]",
            "field `spec.template.spec.timeoutSeconds`: 601 is not from 1 to 600",
        ),
        (
            "containers: [{command: [a], ports: [{containerPort: 8012}]}]",
            "8012 is reserved",
        ),
        (
            "containers: [{command: [a], env: [{name: PORT, value: '1'}]}]",
            "`PORT` is set by Sluice",
        ),
    ];
    for (spec, want) in table {
        let yaml = format!("apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {{name: s}}\nspec:\n  template:\n    spec:\n      {spec}\n");
        let errors = build_str(&yaml).unwrap_err();
        assert!(
            errors.iter().any(|e| e.contains(want)),
            "{spec}: {errors:#?}"
        );
    }
    let yaml = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: s}\nspec:\n  template:\n    metadata:\n      annotations: {autoscaling.knative.dev/window: 2s}\n    spec:\n      containers: [{command: [a]}]\n";
    let errors = build_str(yaml).unwrap_err();
    assert!(
        errors[0].contains(
            "field `spec.template.metadata.annotations[\"autoscaling.knative.dev/window\"]`: \"2s\" must be whole seconds from 6s to 1h"
        ),
        "{errors:?}"
    );
}

/// A ref to a Knative Service that is not loaded resolves to its cluster-local name (as
/// Knative Serving addresses it; SEMANTICS.md §13), so Knative's documentation examples load
/// unchanged; a loaded one resolves to its route on the ingress (the test above).
#[test]
fn a_ref_to_a_service_that_is_not_loaded_resolves_to_its_cluster_local_name() {
    let yaml = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b}\n---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\nspec:\n  broker: b\n  subscriber:\n    ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: nope}\n";
    let t = build_str(yaml).unwrap();
    let sub = t.subscriptions.values().next().unwrap();
    assert_eq!(
        sub.subscriber.as_str(),
        "http://nope.default.svc.cluster.local/"
    );
}
