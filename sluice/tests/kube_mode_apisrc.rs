//! ApiServerSource in Kubernetes mode: `sluice dataplane` runs it (with its own kube
//! configuration), `sluice controller` writes its status (SinkProvided, Deployed,
//! SufficientPermissions, ceAttributes with the API server's URL). A separate test binary from
//! `kube_mode.rs`, so that its API server (and its data planes, which run every source they
//! see) is its own.

mod common;

use common::*;
use serde_json::Value;
use sluice_tests::eventually;
use sluice_tests::{shared_kube, KubeServer};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

const T: Duration = Duration::from_secs(60);

/// A `sluice controller` or `sluice dataplane` process, killed on drop.
struct Proc {
    _child: Child,
}

impl Proc {
    fn spawn(kube: &KubeServer, args: &[&str]) -> Proc {
        let child = Command::new(binary())
            .args(args)
            .arg("--kubeconfig")
            .arg(kube.kubeconfig_path())
            .env(
                "SLUICE_LOG",
                std::env::var("SLUICE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("SLUICE_TEST_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true)
            .spawn()
            .expect("starting sluice");
        Proc { _child: child }
    }
}

async fn apply(kube: &KubeServer, yaml: &str) {
    kube.kubectl_stdin(&["apply", "-f", "-"], yaml)
        .await
        .unwrap_or_else(|e| panic!("kubectl apply: {e}\n{yaml}"));
}

async fn install_crds(kube: &KubeServer) {
    let out = std::process::Command::new(binary())
        .arg("crdgen")
        .output()
        .expect("sluice crdgen");
    assert!(out.status.success());
    apply(kube, &String::from_utf8(out.stdout).unwrap()).await;
    for crd in [
        "brokers.eventing.knative.dev",
        "triggers.eventing.knative.dev",
        "pingsources.sources.knative.dev",
        "kafkasources.sources.knative.dev",
        "apiserversources.sources.knative.dev",
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
}

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", sluice_tests::free_port())
        .parse()
        .unwrap()
}

async fn get_json(kube: &KubeServer, args: &[&str]) -> Option<Value> {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    let out = kube.kubectl(&a).await.ok()?;
    serde_json::from_str(&out).ok()
}

fn condition<'a>(obj: &'a Value, ty: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
}

/// Waits until `kind/name` in `ns` has condition Ready with `status`, returning the object.
async fn wait_ready(kube: &KubeServer, ns: &str, what: &str, status: &str) -> Value {
    eventually(T, &format!("{what} Ready={status}"), || async {
        let obj = get_json(kube, &[what, "-n", ns]).await?;
        let ready = condition(&obj, "Ready")?;
        (ready["status"] == status).then_some(obj)
    })
    .await
}

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
