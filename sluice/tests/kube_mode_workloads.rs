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

/// A controller (admin kubeconfig) and a data plane. Each test starts its own pair on the
/// shared API server and uses its own namespace; the controllers elect one leader, which
/// does the work for both.
async fn start(kube: &KubeServer) -> (Proc, Proc) {
    // The tests of this binary share the API server: one installs the CRDs at a time.
    static INSTALL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let installing = INSTALL.lock().await;
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
    drop(installing);
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

    // Someone edits K_SINK by hand: the controller puts the source's back.
    kube.kubectl(&[
        "set",
        "env",
        "deployment/beat-deployment",
        "-n",
        ns,
        "K_SINK=http://wrong.example/",
    ])
    .await
    .unwrap();
    eventually(T, "K_SINK put back", || async {
        let d = get_json(kube, &["deployment/beat-deployment", "-n", ns]).await?;
        (env_value(&d, 0, "K_SINK").as_deref() == Some("http://elsewhere.example/")).then_some(())
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

fn deployment(ns: &str, name: &str, labels: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}, labels: {labels}}}
spec:
  selector: {{matchLabels: {{run: {name}}}}}
  template:
    metadata: {{labels: {{run: {name}}}}}
    spec:
      containers:
        - {{name: app, image: example.com/app:1, env: [{{name: X, value: "1"}}]}}
        - {{name: side, image: example.com/side:1}}
"#
    )
}

async fn deployment_env(
    kube: &KubeServer,
    ns: &str,
    name: &str,
    i: usize,
) -> Vec<(String, String)> {
    get_json(kube, &[&format!("deployment/{name}"), "-n", ns])
        .await
        .map(|d| env_of(&d, i))
        .unwrap_or_default()
}

#[tokio::test]
async fn a_sink_binding_writes_k_sink_into_its_subjects_keeps_it_current_and_removes_it() {
    let kube = shared_kube().await;
    let (_dataplane, _controller) = start(kube).await;
    let ns = "k8s-sbind";
    let _ = kube.kubectl(&["create", "namespace", ns]).await;
    let mut objects = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {{name: default, namespace: {ns}}}\n"
    );
    for (name, labels) in [
        ("web", "{}"),
        ("w1", "{role: worker}"),
        ("w2", "{role: worker}"),
        ("w3", "{role: other}"),
    ] {
        objects.push_str("---\n");
        objects.push_str(&deployment(ns, name, labels));
    }
    apply(kube, &objects).await;
    let binding = |name: &str, subject: &str, sink: &str, extra: &str| {
        format!(
            "apiVersion: sources.knative.dev/v1\nkind: SinkBinding\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  subject: {subject}\n  sink: {sink}\n{extra}"
        )
    };
    let broker_ref = "{ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}";
    let broker_url = format!("http://sluice-ingress.sluice-system.svc.cluster.local/{ns}/default");
    apply(
        kube,
        &[
            binding(
                "by-name",
                "{apiVersion: apps/v1, kind: Deployment, name: web}",
                broker_ref,
                "",
            ),
            binding(
                "by-selector",
                "{apiVersion: apps/v1, kind: Deployment, selector: {matchLabels: {role: worker}}}",
                r#"{uri: "http://collector.example/"}"#,
                "  ceOverrides: {extensions: {team: blue}}\n",
            ),
            binding(
                "jobs",
                "{apiVersion: batch/v1, kind: Job, selector: {matchLabels: {app: batch}}}",
                broker_ref,
                "",
            ),
        ]
        .join("---\n"),
    )
    .await;

    // By name: every container gets K_SINK; the user's env stays; no overrides, no
    // K_CE_OVERRIDES.
    let web = wait_ready(kube, ns, "sinkbinding/by-name", "True").await;
    assert_eq!(web["status"]["sinkUri"], broker_url);
    for i in 0..2 {
        let env = deployment_env(kube, ns, "web", i).await;
        assert!(
            env.contains(&("K_SINK".into(), broker_url.clone())),
            "{env:?}"
        );
        assert!(!env.iter().any(|(n, _)| n == "K_CE_OVERRIDES"), "{env:?}");
    }
    assert!(deployment_env(kube, ns, "web", 0)
        .await
        .contains(&("X".into(), "1".into())));

    // By selector: the matching Deployments, not the other.
    wait_ready(kube, ns, "sinkbinding/by-selector", "True").await;
    for name in ["w1", "w2"] {
        let env = deployment_env(kube, ns, name, 0).await;
        assert!(
            env.contains(&("K_SINK".into(), "http://collector.example/".into()))
                && env.contains(&(
                    "K_CE_OVERRIDES".into(),
                    r#"{"extensions":{"team":"blue"}}"#.into()
                )),
            "{name}: {env:?}"
        );
    }
    assert!(!deployment_env(kube, ns, "w3", 0)
        .await
        .iter()
        .any(|(n, _)| n == "K_SINK"));

    // Jobs cannot be bound after creation (no admission webhook): said, not ignored.
    let jobs = wait_ready(kube, ns, "sinkbinding/jobs", "False").await;
    let c = condition(&jobs, "SinkBindingAvailable").unwrap();
    assert_eq!(c["reason"], "SubjectImmutable", "{c}");

    // The sink changes: K_SINK follows.
    apply(
        kube,
        &binding(
            "by-name",
            "{apiVersion: apps/v1, kind: Deployment, name: web}",
            r#"{uri: "http://moved.example/"}"#,
            "",
        ),
    )
    .await;
    eventually(T, "web's K_SINK follows the sink", || async {
        let env = deployment_env(kube, ns, "web", 1).await;
        env.contains(&("K_SINK".into(), "http://moved.example/".into()))
            .then_some(())
    })
    .await;

    // Someone takes K_SINK out by hand: the binding puts it back.
    kube.kubectl(&["set", "env", "deployment/web", "-n", ns, "K_SINK-"])
        .await
        .unwrap();
    eventually(T, "web's K_SINK put back", || async {
        let env = deployment_env(kube, ns, "web", 0).await;
        env.contains(&("K_SINK".into(), "http://moved.example/".into()))
            .then_some(())
    })
    .await;

    // w2 stops matching the selector: its K_SINK is taken out; w1 keeps it.
    kube.kubectl(&[
        "label",
        "deployment/w2",
        "-n",
        ns,
        "role=retired",
        "--overwrite",
    ])
    .await
    .unwrap();
    eventually(T, "w2 unbound", || async {
        let env = deployment_env(kube, ns, "w2", 0).await;
        (!env.is_empty() && !env.iter().any(|(n, _)| n.starts_with("K_"))).then_some(())
    })
    .await;
    assert!(deployment_env(kube, ns, "w1", 0)
        .await
        .iter()
        .any(|(n, _)| n == "K_SINK"));

    // Deleting a binding removes what it wrote, and only that.
    kube.kubectl(&["delete", "sinkbinding/by-name", "-n", ns])
        .await
        .unwrap();
    eventually(T, "web unbound", || async {
        let d = get_json(kube, &["deployment/web", "-n", ns]).await?;
        let clean = (0..2).all(|i| !env_of(&d, i).iter().any(|(n, _)| n.starts_with("K_")));
        let unlabelled = d["metadata"]["labels"]["sinkbindings.sluice.dev/bound"].is_null();
        (clean && unlabelled).then_some(d)
    })
    .await;
    assert_eq!(
        deployment_env(kube, ns, "web", 0).await,
        [("X".to_string(), "1".to_string())],
        "the user's own env stays"
    );
}
