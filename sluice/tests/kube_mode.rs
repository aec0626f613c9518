//! Kubernetes mode end to end (issue 11): the real kube-apiserver of the test harness, Sluice's
//! CRDs applied with kubectl, `sluice dataplane` and `sluice controller` as processes (what
//! they are in a cluster; no kubelet runs pods here), Knative YAML applied with kubectl.
//!

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
    child: Child,
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
        Proc { child }
    }

    async fn kill(&mut self) {
        let _ = self.child.kill().await;
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

/// A CRD of some other project whose objects are Addressable (`status.address.url`).
const FUNCTION_CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: functions.example.dev}
spec:
  group: example.dev
  scope: Namespaced
  names: {plural: functions, singular: function, kind: Function}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

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

/// `kubectl apply` of a Broker and a Trigger → the controller writes Ready and the Knative
/// address, the data plane (fed by its own watches) delivers an event to the subscriber, a
/// Trigger on a missing Broker says so, and a second controller takes over when the leader
/// dies.
#[tokio::test]
async fn kubectl_apply_gives_ready_brokers_and_delivered_events() {
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
    // The API server refuses loopback addresses in EndpointSlices, so the controller is told
    // where the local data plane is instead of finding it behind the ingress Service.
    let controller = |kube| {
        Proc::spawn(
            kube,
            &[
                "controller",
                "--admin",
                &addr().to_string(),
                "--dataplane-admin",
                &admin.to_string(),
            ],
        )
    };
    let mut leader = controller(kube);

    let sink = Sink::ok().await;
    let _ = kube.kubectl(&["create", "namespace", "e2e"]).await;
    apply(
        kube,
        &format!(
            r#"apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default, namespace: e2e}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: display, namespace: e2e}}
spec:
  broker: default
  filter: {{attributes: {{type: greeting}}}}
  subscriber: {{uri: "{}"}}
"#,
            sink.url()
        ),
    )
    .await;

    let broker = wait_ready(kube, "e2e", "broker/default", "True").await;
    assert_eq!(
        broker["status"]["address"]["url"],
        "http://sluice-ingress.sluice-system.svc.cluster.local/e2e/default"
    );
    assert_eq!(
        broker["status"]["observedGeneration"],
        broker["metadata"]["generation"]
    );
    for c in [
        "IngressReady",
        "FilterReady",
        "TriggerChannelReady",
        "Addressable",
    ] {
        assert_eq!(
            condition(&broker, c).map(|c| c["status"].clone()),
            Some("True".into()),
            "{c}: {broker:#}"
        );
    }
    // What a platform team looks at: Knative's columns, filled by the controller.
    let table = kube
        .kubectl(&["get", "brokers", "-n", "e2e"])
        .await
        .unwrap();
    assert!(
        table.contains("URL") && table.contains("READY") && table.contains("REASON"),
        "{table}"
    );
    assert!(
        table.contains("http://sluice-ingress.sluice-system.svc.cluster.local/e2e/default")
            && table.contains("True"),
        "{table}"
    );
    let trigger = wait_ready(kube, "e2e", "trigger/display", "True").await;
    assert_eq!(trigger["status"]["subscriberUri"], sink.url());

    let url = format!("http://{ingress}/e2e/default");
    assert_eq!(post_event(&url, "e1", "greeting", &[], "{}").await, 202);
    assert_eq!(post_event(&url, "e2", "other", &[], "{}").await, 202);
    let got = sink.wait_for(1, T).await;
    assert_eq!(got[0].header("ce-id"), Some("e1"));

    // A subscriber of a kind Sluice does not run, resolved through its status.address.url
    // (any Addressable): the controller resolves it, the data plane uses what it wrote.
    apply(kube, FUNCTION_CRD).await;
    kube.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/functions.example.dev",
        "--timeout=60s",
    ])
    .await
    .unwrap();
    apply(
        kube,
        "apiVersion: example.dev/v1\nkind: Function\nmetadata: {name: fn, namespace: e2e}\n---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: to-fn, namespace: e2e}\nspec:\n  broker: default\n  filter: {attributes: {type: for-fn}}\n  subscriber:\n    ref: {apiVersion: example.dev/v1, kind: Function, name: fn}\n",
    )
    .await;
    let unresolved = wait_ready(kube, "e2e", "trigger/to-fn", "False").await;
    let why = condition(&unresolved, "SubscriberResolved").unwrap();
    assert!(
        why["message"].as_str().unwrap().contains("no address"),
        "{why}"
    );
    let fn_sink = Sink::ok().await;
    kube.kubectl(&[
        "patch",
        "function/fn",
        "-n",
        "e2e",
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!(
            r#"{{"status":{{"address":{{"url":"{}"}}}}}}"#,
            fn_sink.url()
        ),
    ])
    .await
    .unwrap();
    let resolved = wait_ready(kube, "e2e", "trigger/to-fn", "True").await;
    assert_eq!(resolved["status"]["subscriberUri"], fn_sink.url());
    // The data plane picks the resolved URI up from the Trigger's status.
    eventually(
        T,
        "an event delivered to the Function's address",
        || async {
            assert_eq!(
                post_event(&url, &format!("f{}", fn_sink.count()), "for-fn", &[], "{}").await,
                202
            );
            (fn_sink.count() > 0).then_some(())
        },
    )
    .await;

    // A Trigger on a Broker that does not exist: not ready, and why.
    apply(
        kube,
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: orphan, namespace: e2e}\nspec:\n  broker: missing\n  subscriber: {uri: \"http://127.0.0.1:1/\"}\n",
    )
    .await;
    let orphan = wait_ready(kube, "e2e", "trigger/orphan", "False").await;
    assert_eq!(
        condition(&orphan, "Ready").unwrap()["reason"],
        "BrokerDoesNotExist"
    );

    // Leader election: a second replica follows; when the leader dies, it takes the Lease
    // over and keeps status current (a new Trigger becomes Ready).
    let _follower = controller(kube);
    let holder = |kube: &'static KubeServer| async move {
        let lease = get_json(kube, &["lease/sluice-controller", "-n", "sluice-system"]).await?;
        lease["spec"]["holderIdentity"].as_str().map(str::to_string)
    };
    let first = eventually(T, "a Lease holder", || holder(kube)).await;
    leader.kill().await;
    eventually(
        Duration::from_secs(90),
        "the follower takes the Lease over",
        || async {
            let h = holder(kube).await?;
            (h != first).then_some(())
        },
    )
    .await;
    apply(
        kube,
        &format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: later, namespace: e2e}}\nspec:\n  broker: default\n  subscriber: {{uri: \"{}\"}}\n",
            sink.url()
        ),
    )
    .await;
    wait_ready(kube, "e2e", "trigger/later", "True").await;
}
