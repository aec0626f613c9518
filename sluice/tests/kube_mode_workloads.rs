//! The kinds whose work pods do, in Kubernetes mode (issue 12): the controller writes
//! Kubernetes objects for them. A ContainerSource becomes a Deployment with `K_SINK`; a
//! SinkBinding puts `K_SINK` into its subjects' pod templates. The test API server has no
//! kubelet (no pod runs) and no garbage collector: readiness is simulated by patching the
//! Deployment's status subresource, and the controller deletes a removed source's Deployment
//! itself (the ownerReference is asserted too, for a cluster's garbage collector).

mod common;

use common::kube::*;
use common::*;
use serde_json::Value;
use sluice_tests::{eventually, shared_kube, KubeServer};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// The controller (admin kubeconfig) and one data plane, for namespace-independent tests.
async fn start(kube: &KubeServer) -> (Proc, Proc) {
    install_crds(kube).await;
    for crd in [
        "containersources.sources.knative.dev",
        "sinkbindings.sources.knative.dev",
    ] {
        kube.kubectl(&[
            "wait",
            "--for=condition=Established",
            &format!("crd/{crd}"),
            "--timeout=60s",
        ])
        .await
        .unwrap();
    }
    let _ = kube
        .kubectl(&["create", "namespace", "sluice-system"])
        .await;
    let (ingress, admin) = (addr(), addr());
    let dataplane = Proc::spawn(
        kube,
        &[
            "dataplane",
            "--ingress",
            &ingress.to_string(),
            "--admin",
            &admin.to_string(),
        ],
    );
    let controller = Proc::spawn(
        kube,
        &[
            "controller",
            "--admin",
            &addr().to_string(),
            "--dataplane-admin",
            &admin.to_string(),
        ],
    );
    (dataplane, controller)
}

/// The env of container `i` of the pod template of `what`, as name → value.
fn env_of(obj: &Value, i: usize) -> Vec<(String, String)> {
    obj["spec"]["template"]["spec"]["containers"][i]["env"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["name"].as_str().unwrap_or_default().to_string(),
                        e["value"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn env_value(obj: &Value, i: usize, name: &str) -> Option<String> {
    env_of(obj, i)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

#[tokio::test]
async fn a_container_source_becomes_a_deployment_with_k_sink_that_follows_the_sink() {
    let kube = shared_kube().await;
    let (_dataplane, _controller) = start(kube).await;
    let ns = "k8s-csrc";
    let _ = kube.kubectl(&["create", "namespace", ns]).await;
    // If anything ran the command locally (the data plane must not), this file would appear.
    let marker = test_dir("kube-csrc").join("ran");
    let _ = std::fs::remove_file(&marker);
    let source = |sink: &str| {
        format!(
            r#"apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default, namespace: {ns}}}
---
apiVersion: sources.knative.dev/v1
kind: ContainerSource
metadata: {{name: beat, namespace: {ns}}}
spec:
  template:
    metadata: {{labels: {{app: beat}}}}
    spec:
      containers:
        - name: beat
          image: example.com/heartbeat:1
          command: [sh, -c, "touch {marker}"]
          env: [{{name: PERIOD, value: "1"}}]
  ceOverrides: {{extensions: {{team: blue}}}}
  sink: {sink}
"#,
            marker = marker.display()
        )
    };
    apply(
        kube,
        &source("{ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}"),
    )
    .await;
    let broker_url = format!("http://sluice-ingress.sluice-system.svc.cluster.local/{ns}/default");

    let d = eventually(T, "the ContainerSource's Deployment", || async {
        get_json(kube, &["deployment/beat-deployment", "-n", ns]).await
    })
    .await;
    assert_eq!(
        env_value(&d, 0, "K_SINK").as_deref(),
        Some(broker_url.as_str())
    );
    assert_eq!(
        env_value(&d, 0, "K_CE_OVERRIDES").as_deref(),
        Some(r#"{"extensions":{"team":"blue"}}"#)
    );
    assert_eq!(env_value(&d, 0, "PERIOD").as_deref(), Some("1"));
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "example.com/heartbeat:1"
    );
    assert_eq!(d["spec"]["template"]["metadata"]["labels"]["app"], "beat");
    assert_eq!(
        d["spec"]["template"]["metadata"]["labels"]["eventing.knative.dev/sourceName"],
        "beat"
    );
    let src = get_json(kube, &["containersource/beat", "-n", ns])
        .await
        .unwrap();
    let owner = &d["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "ContainerSource");
    assert_eq!(owner["uid"], src["metadata"]["uid"]);
    assert_eq!(owner["controller"], true);

    // No kubelet: the Deployment is not ready, so neither is the source.
    let src = eventually(T, "the source's status", || async {
        let s = get_json(kube, &["containersource/beat", "-n", ns]).await?;
        condition(&s, "ReceiveAdapterReady").is_some().then_some(s)
    })
    .await;
    assert_eq!(
        condition(&src, "SinkBindingReady").unwrap()["status"],
        "True"
    );
    assert_eq!(
        condition(&src, "ReceiveAdapterReady").unwrap()["status"],
        "Unknown"
    );
    assert_eq!(src["status"]["sinkUri"], broker_url);
    // The Deployment's pods become ready (simulated): so does the source.
    kube.kubectl(&[
        "patch",
        "deployment/beat-deployment",
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":1,"readyReplicas":1,"availableReplicas":1}}"#,
    ])
    .await
    .unwrap();
    wait_ready(kube, ns, "containersource/beat", "True").await;

    // A new sink: K_SINK follows.
    apply(kube, &source(r#"{uri: "http://elsewhere.example/"}"#)).await;
    eventually(T, "K_SINK updated", || async {
        let d = get_json(kube, &["deployment/beat-deployment", "-n", ns]).await?;
        (env_value(&d, 0, "K_SINK").as_deref() == Some("http://elsewhere.example/")).then_some(())
    })
    .await;
    eventually(T, "sinkUri updated", || async {
        let s = get_json(kube, &["containersource/beat", "-n", ns]).await?;
        (s["status"]["sinkUri"] == "http://elsewhere.example/").then_some(())
    })
    .await;

    // The data plane never ran the command (it would have by now: the source has existed
    // through several of its topology rebuilds).
    assert!(
        !marker.exists(),
        "the data plane must not run a ContainerSource in Kubernetes mode"
    );

    // Deleting the source removes its Deployment.
    kube.kubectl(&["delete", "containersource/beat", "-n", ns])
        .await
        .unwrap();
    eventually(T, "the Deployment deleted", || async {
        get_json(kube, &["deployment/beat-deployment", "-n", ns])
            .await
            .is_none()
            .then_some(())
    })
    .await;
}
