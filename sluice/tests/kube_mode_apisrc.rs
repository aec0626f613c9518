//! ApiServerSource in Kubernetes mode: `sluice dataplane` runs it (with its own kube
//! configuration), `sluice controller` writes its status (SinkProvided, Deployed,
//! SufficientPermissions, ceAttributes with the API server's URL). A separate test binary from
//! `kube_mode.rs`, so that its API server (and its data planes, which run every source they
//! see) is its own.

mod common;

use common::kube::*;
use common::*;
use sluice_tests::shared_kube;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn the_dataplane_runs_an_apiserver_source_and_the_controller_reports_its_status() {
    let kube = shared_kube().await;
    install_crds(kube).await;
    let (ingress, admin) = (addr(), addr());
    let _ = kube
        .kubectl(&["create", "namespace", "sluice-system"])
        .await;
    let _dataplane = Proc::spawn(
        kube,
        &[
            "dataplane",
            "--ingress",
            &ingress.to_string(),
            "--admin",
            &admin.to_string(),
        ],
    );
    let _controller = Proc::spawn(
        kube,
        &[
            "controller",
            "--admin",
            &addr().to_string(),
            "--dataplane-admin",
            &admin.to_string(),
        ],
    );
    let ns = "k8s-apisrc";
    let _ = kube.kubectl(&["create", "namespace", ns]).await;
    let _ = kube.service_account(ns, "nobody").await;
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
metadata: {{name: denied, namespace: {ns}}}
spec:
  mode: Resource
  serviceAccountName: nobody
  resources:
    - apiVersion: v1
      kind: ConfigMap
  sink: {{uri: "{sink}"}}
"#,
            sink = sink.url()
        ),
    )
    .await;

    let src = wait_ready(kube, ns, "apiserversource/watch", "True").await;
    for c in ["SinkProvided", "Deployed", "SufficientPermissions"] {
        assert_eq!(
            condition(&src, c).map(|c| c["status"].clone()),
            Some("True".into()),
            "{c}: {src:#}"
        );
    }
    assert_eq!(src["status"]["sinkUri"], sink.url());
    let server = kube.server_url();
    assert_eq!(
        src["status"]["ceAttributes"],
        serde_json::json!([
            {"type": "dev.knative.apiserver.ref.add", "source": server},
            {"type": "dev.knative.apiserver.ref.update", "source": server},
            {"type": "dev.knative.apiserver.ref.delete", "source": server},
        ])
    );

    kube.kubectl(&["create", "configmap", "hello", "-n", ns])
        .await
        .unwrap();
    kube.kubectl(&["label", "configmap", "hello", "-n", ns, "app=watched"])
        .await
        .unwrap();
    let got = sink.wait_for(1, T).await;
    assert_eq!(
        got[0].header("ce-type"),
        Some("dev.knative.apiserver.ref.add")
    );
    assert_eq!(
        got[0].header("ce-subject"),
        Some(format!("/apis/v1/namespaces/{ns}/configmaps/hello").as_str())
    );

    let denied = wait_ready(kube, ns, "apiserversource/denied", "False").await;
    let perm = condition(&denied, "SufficientPermissions").expect("SufficientPermissions");
    assert_eq!(perm["status"], "False", "{denied:#}");
    assert_eq!(
        perm["message"],
        format!("User system:serviceaccount:{ns}:nobody cannot get, list, watch resource \"configmaps\" in API group \"\" in namespace \"{ns}\"")
    );
    assert_eq!(
        denied["status"]["ceAttributes"][0]["type"],
        "dev.knative.apiserver.resource.add"
    );
}
