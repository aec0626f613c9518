//! Kubernetes mode end to end (issue 11): the real kube-apiserver of the test harness, Sluice's
//! CRDs applied with kubectl, `sluice dataplane` and `sluice controller` as processes (what
//! they are in a cluster; no kubelet runs pods here), Knative's documentation YAML applied
//! with kubectl.

mod common;

use common::kube::*;
use common::*;
use sluice_tests::{eventually, shared_kube, KubeServer};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Knative Serving's Service, reduced to what a ref resolution needs (an Addressable with a
/// status subresource): Knative Serving itself does not run here.
const KNATIVE_SERVICE_CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: services.serving.knative.dev}
spec:
  group: serving.knative.dev
  scope: Namespaced
  names: {plural: services, singular: service, kind: Service, shortNames: [ksvc]}
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

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/../tests/fixtures/knative-docs/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

async fn apply_in(kube: &KubeServer, ns: &str, yaml: &str) {
    kube.kubectl_stdin(&["apply", "-n", ns, "-f", "-"], yaml)
        .await
        .unwrap_or_else(|e| panic!("kubectl apply: {e}\n{yaml}"));
}

/// `kubectl apply` of Knative's documentation examples → the controller writes Ready and the
/// Knative address, the data plane (fed by its own watches) delivers to the subscriber
/// resolved through a Knative Service's address; a Trigger on a missing Broker says so and
/// recovers when the Broker appears; a second controller takes over when the leader dies.
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
    // where the local data plane is instead of finding it behind the sluice-admin Service.
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
    // Knative's "Creating a Broker" example, its placeholders filled.
    let broker = fixture("broker.yaml")
        .replace("<broker-name>", "default")
        .replace("<namespace>", "e2e");
    apply(kube, &broker).await;
    apply_in(
        kube,
        "e2e",
        &format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: display}}\nspec:\n  broker: default\n  filter: {{attributes: {{type: greeting}}}}\n  subscriber: {{uri: \"{}\"}}\n",
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

    // Knative's first Trigger example, unchanged: its subscriber is a Knative Service, a kind
    // Sluice does not run, resolved through its status.address (any Addressable). Until the
    // Service has an address the Trigger says why it is not ready.
    apply(kube, KNATIVE_SERVICE_CRD).await;
    kube.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/services.serving.knative.dev",
        "--timeout=60s",
    ])
    .await
    .unwrap();
    apply_in(
        kube,
        "e2e",
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: my-service}\n",
    )
    .await;
    apply_in(kube, "e2e", &fixture("trigger-service.yaml")).await;
    let unresolved = wait_ready(kube, "e2e", "trigger/my-service-trigger", "False").await;
    let why = condition(&unresolved, "SubscriberResolved").unwrap();
    assert!(
        why["message"].as_str().unwrap().contains("no address"),
        "{why}"
    );
    let fn_sink = Sink::ok().await;
    kube.kubectl(&[
        "patch",
        "services.serving.knative.dev/my-service",
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
    let resolved = wait_ready(kube, "e2e", "trigger/my-service-trigger", "True").await;
    assert_eq!(resolved["status"]["subscriberUri"], fn_sink.url());
    // The data plane picks the resolved URI up from the Trigger's status (every event of
    // the broker matches this trigger: it has no filter).
    eventually(T, "an event delivered to the Service's address", || async {
        let id = format!("f{}", fn_sink.count());
        assert_eq!(post_event(&url, &id, "any", &[], "{}").await, 202);
        (fn_sink.count() > 0).then_some(())
    })
    .await;

    // A Trigger on a Broker that does not exist: not ready, and why; it recovers when the
    // Broker is created.
    let orphan_sink = Sink::ok().await;
    apply_in(
        kube,
        "e2e",
        &format!("apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: orphan}}\nspec:\n  broker: later\n  subscriber: {{uri: \"{}\"}}\n", orphan_sink.url()),
    )
    .await;
    let orphan = wait_ready(kube, "e2e", "trigger/orphan", "False").await;
    let broker_ready = condition(&orphan, "BrokerReady").unwrap();
    assert_eq!(broker_ready["status"], "False");
    assert_eq!(broker_ready["reason"], "BrokerDoesNotExist");
    assert_eq!(
        condition(&orphan, "Ready").unwrap()["reason"],
        "BrokerDoesNotExist"
    );
    apply_in(
        kube,
        "e2e",
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: later}\n",
    )
    .await;
    wait_ready(kube, "e2e", "trigger/orphan", "True").await;
    let later = format!("http://{ingress}/e2e/later");
    assert_eq!(post_event(&later, "o1", "any", &[], "{}").await, 202);
    orphan_sink.wait_for(1, T).await;

    // Flows in Kubernetes mode: the data plane runs a Sequence applied with kubectl (its
    // channels and subscriptions compile into the same graph as in embedded mode).
    let step_sink = Sink::ok().await;
    apply_in(
        kube,
        "e2e",
        &format!("apiVersion: flows.knative.dev/v1\nkind: Sequence\nmetadata: {{name: seq}}\nspec:\n  channelTemplate: {{apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel}}\n  steps:\n  - uri: \"{}\"\n", step_sink.url()),
    )
    .await;
    let seq_url = format!("http://{ingress}/e2e/channels/seq-kn-sequence-0");
    // The controller writes the Sequence's status: Ready from the data plane's report, and the
    // address of its first channel.
    let seq = wait_ready(kube, "e2e", "sequence/seq", "True").await;
    assert_eq!(
        seq["status"]["address"]["url"],
        "http://sluice-ingress.sluice-system.svc.cluster.local/e2e/channels/seq-kn-sequence-0"
    );
    eventually(
        T,
        "an event through the Sequence's first channel",
        || async {
            let id = format!("s{}", step_sink.count());
            let status = post_event(&seq_url, &id, "step", &[], "{}").await;
            (status == 202 && step_sink.count() > 0).then_some(())
        },
    )
    .await;

    // Leader election: a second replica follows; when the leader dies, it takes the Lease
    // over and keeps status current (a new Trigger becomes Ready).
    let _follower = controller(kube);
    let first = eventually(T, "a Lease holder", || lease_holder(kube)).await;
    leader.kill().await;
    eventually(
        Duration::from_secs(90),
        "the follower takes the Lease over",
        || async {
            let h = lease_holder(kube).await?;
            (h != first).then_some(())
        },
    )
    .await;
    apply_in(
        kube,
        "e2e",
        &format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: after-failover}}\nspec:\n  broker: default\n  subscriber: {{uri: \"{}\"}}\n",
            sink.url()
        ),
    )
    .await;
    wait_ready(kube, "e2e", "trigger/after-failover", "True").await;
}
