//! ApiServerSource with two data-plane replicas (issue 12): the replicas elect one runner on
//! the Lease `sluice-apiserversources`, so each change is emitted once, not once per replica;
//! killing the runner hands the sources over to the other replica once the Lease expires; a
//! graceful stop gives the Lease back, so the next replica takes over at once.
//! Both run under deploy/'s ServiceAccount and roles (which must allow the Lease and must not
//! allow impersonation: a source with a serviceAccountName says how to enable it).

mod common;

use common::kube::*;
use common::*;
use sluice_tests::{eventually, shared_kube, KubeServer};
use std::net::SocketAddr;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Whether the data plane at `admin` runs ApiServerSource `ns/name` (lists it in /topology)
/// and, if so, whether it is ready (its first list, the baseline, is done).
async fn runs(admin: SocketAddr, ns: &str, name: &str) -> Option<bool> {
    let v = reqwest::get(format!("http://{admin}/topology"))
        .await
        .ok()?
        .json::<serde_json::Value>()
        .await
        .ok()?;
    v["sources"].as_array()?.iter().find_map(|s| {
        (s["kind"] == "ApiServerSource" && s["namespace"] == ns && s["name"] == name)
            .then(|| s["ready"] == true)
    })
}

async fn configmap(kube: &KubeServer, ns: &str, name: &str) {
    apply(
        kube,
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: watched}}}}\ndata: {{k: v}}\n"
        ),
    )
    .await;
}

/// The names of the objects the sink was told about, in order.
fn names(sink: &Sink) -> Vec<String> {
    sink.received()
        .iter()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn one_replica_runs_each_apiserver_source_and_hands_over_when_killed() {
    let kube = shared_kube().await;
    let deploy = format!("{}/../deploy", env!("CARGO_MANIFEST_DIR"));
    kube.kubectl(&["apply", "-k", &deploy])
        .await
        .unwrap_or_else(|e| panic!("kubectl apply -k deploy/: {e}"));
    kube.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/apiserversources.sources.knative.dev",
        "--timeout=60s",
    ])
    .await
    .unwrap();
    let controller_sa = kube
        .service_account("sluice-system", "sluice-controller")
        .await;
    let dataplane_sa = kube
        .service_account("sluice-system", "sluice-dataplane")
        .await;
    let planes: Vec<(SocketAddr, SocketAddr)> = (0..2).map(|_| (addr(), addr())).collect();
    let mut dataplanes: Vec<Option<Proc>> = planes
        .iter()
        .map(|(ingress, admin)| {
            Some(Proc::spawn_with(
                dataplane_sa.kubeconfig_path(),
                &[
                    "dataplane",
                    "--ingress",
                    &ingress.to_string(),
                    "--admin",
                    &admin.to_string(),
                    "--drain-period",
                    "PT0S",
                ],
            ))
        })
        .collect();
    let admins = planes
        .iter()
        .map(|(_, a)| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let _controller = Proc::spawn_with(
        controller_sa.kubeconfig_path(),
        &[
            "controller",
            "--admin",
            &addr().to_string(),
            "--dataplane-admin",
            &admins,
        ],
    );

    let ns = "replicas";
    let _ = kube.kubectl(&["create", "namespace", ns]).await;
    let _ = kube.service_account(ns, "watcher").await;
    let sink = Sink::ok().await;
    apply(
        kube,
        &format!(
            r#"apiVersion: sources.knative.dev/v1
kind: ApiServerSource
metadata: {{name: watch, namespace: {ns}}}
spec:
  resources:
    - apiVersion: v1
      kind: ConfigMap
      selector: {{matchLabels: {{app: watched}}}}
  sink: {{uri: "{sink}"}}
---
apiVersion: sources.knative.dev/v1
kind: ApiServerSource
metadata: {{name: as-watcher, namespace: {ns}}}
spec:
  serviceAccountName: watcher
  resources:
    - apiVersion: v1
      kind: ConfigMap
  sink: {{uri: "{sink}"}}
"#,
            sink = sink.url()
        ),
    )
    .await;
    wait_ready(kube, ns, "apiserversource/watch", "True").await;

    // Impersonation is off in deploy/: the source that names a ServiceAccount says how to
    // turn it on.
    let denied = wait_ready(kube, ns, "apiserversource/as-watcher", "False").await;
    let perm = condition(&denied, "SufficientPermissions").expect("SufficientPermissions");
    assert_eq!(perm["status"], "False", "{perm}");
    let msg = perm["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("cannot impersonate ServiceAccount replicas/watcher")
            && msg.contains("apiServerSource.impersonation=true")
            && msg.contains("optional/apiserversource-impersonation.yaml"),
        "{msg}"
    );

    // Exactly one replica runs the sources.
    let runner = eventually(T, "one replica runs the source", || async {
        let a = runs(planes[0].1, ns, "watch").await;
        let b = runs(planes[1].1, ns, "watch").await;
        match (a, b) {
            (Some(true), None) => Some(0),
            (None, Some(true)) => Some(1),
            _ => None,
        }
    })
    .await;
    let other = 1 - runner;

    // Each change once: two ConfigMaps, in order, each named once.
    configmap(kube, ns, "one").await;
    configmap(kube, ns, "two").await;
    sink.wait_for(2, T).await;
    eventually(T, "both changes", || async {
        (names(&sink) == ["one", "two"]).then_some(())
    })
    .await;
    // A third change after the first two proves nothing else was on its way for them.
    configmap(kube, ns, "three").await;
    eventually(T, "the third change", || async {
        (names(&sink).len() >= 3).then_some(())
    })
    .await;
    assert_eq!(
        names(&sink),
        ["one", "two", "three"],
        "each change exactly once"
    );

    // Kill the runner: the other replica takes over once the Lease expires (15 s). What
    // changed in between is in the new runner's first list, its baseline: not emitted.
    dataplanes[runner].take().unwrap().kill().await;
    let killed = tokio::time::Instant::now();
    configmap(kube, ns, "during-handover").await;
    eventually(
        Duration::from_secs(90),
        "the other replica runs the source, its baseline listed",
        || async { (runs(planes[other].1, ns, "watch").await == Some(true)).then_some(()) },
    )
    .await;
    eprintln!(
        "handover after the runner was killed: {:?}",
        killed.elapsed()
    );
    configmap(kube, ns, "after").await;
    eventually(T, "the change after the handover", || async {
        names(&sink).contains(&"after".to_string()).then_some(())
    })
    .await;
    assert_eq!(
        names(&sink),
        ["one", "two", "three", "after"],
        "after a handover: nothing repeated; the change made while no replica ran it is not emitted"
    );

    // A graceful stop gives the Lease back: a new replica takes over well before the Lease
    // (15 s) could expire.
    let (ingress, admin) = (addr(), addr());
    let mut third = Proc::spawn_with(
        dataplane_sa.kubeconfig_path(),
        &[
            "dataplane",
            "--ingress",
            &ingress.to_string(),
            "--admin",
            &admin.to_string(),
            "--drain-period",
            "PT0S",
        ],
    );
    eventually(T, "the third replica is up", || async {
        reqwest::get(format!("http://{admin}/topology"))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    dataplanes[other].take().unwrap().terminate().await;
    let stopped = tokio::time::Instant::now();
    eventually(
        Duration::from_secs(10),
        "the third replica runs the source soon after the graceful stop",
        || async { (runs(admin, ns, "watch").await == Some(true)).then_some(()) },
    )
    .await;
    eprintln!("handover after a graceful stop: {:?}", stopped.elapsed());
    configmap(kube, ns, "last").await;
    eventually(T, "the change after the graceful handover", || async {
        names(&sink).contains(&"last".to_string()).then_some(())
    })
    .await;
    assert_eq!(names(&sink), ["one", "two", "three", "after", "last"]);
    third.kill().await;
    drop(dataplanes);
}
