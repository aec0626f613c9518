//! Kubernetes mode as `deploy/` installs it (issue 11): `kubectl apply -k deploy/` on the real
//! kube-apiserver, then the controller and two data-plane replicas run as processes under the
//! exact ServiceAccounts and roles of deploy/ (tokens from the TokenRequest API, as a pod
//! gets): least privilege is proven by everything working under them. On a NATS JetStream
//! broker the two data planes share each trigger's durable consumer; deleting a Trigger
//! removes its durable; restarting the controller rewrites no status.

mod common;

use common::kube::*;
use common::*;
use sluice_tests::{eventually, shared_kube, start_nats, KubeServer};
use std::collections::HashSet;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

async fn resource_version(kube: &KubeServer, what: &str) -> String {
    get_json(kube, &[what, "-n", "shop"]).await.unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn deploy_roles_two_data_planes_on_nats_cleanup_and_quiet_restart() {
    let kube = shared_kube().await;
    let deploy = format!("{}/../deploy", env!("CARGO_MANIFEST_DIR"));
    kube.kubectl(&["apply", "-k", &deploy])
        .await
        .unwrap_or_else(|e| panic!("kubectl apply -k deploy/: {e}"));
    kube.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/brokers.eventing.knative.dev",
        "crd/triggers.eventing.knative.dev",
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

    let nats = start_nats().await;
    let planes: Vec<_> = (0..2).map(|_| (addr(), addr())).collect();
    let _dataplanes: Vec<Proc> = planes
        .iter()
        .map(|(ingress, admin)| {
            Proc::spawn_with(
                dataplane_sa.kubeconfig_path(),
                &[
                    "dataplane",
                    "--ingress",
                    &ingress.to_string(),
                    "--admin",
                    &admin.to_string(),
                    "--nats-url",
                    &nats.url(),
                ],
            )
        })
        .collect();
    let admins = planes
        .iter()
        .map(|(_, a)| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let controller = || {
        Proc::spawn_with(
            controller_sa.kubeconfig_path(),
            &[
                "controller",
                "--admin",
                &addr().to_string(),
                "--dataplane-admin",
                &admins,
                "--nats-url",
                &nats.url(),
            ],
        )
    };
    let mut first_controller = controller();

    let sink = Sink::ok().await;
    let _ = kube.kubectl(&["create", "namespace", "shop"]).await;
    apply(
        kube,
        &format!(
            r#"apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: orders
  namespace: shop
  annotations: {{eventing.knative.dev/broker.class: NatsJetStreamBroker}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: fulfil, namespace: shop}}
spec:
  broker: orders
  subscriber: {{uri: "{}"}}
"#,
            sink.url()
        ),
    )
    .await;
    wait_ready(kube, "shop", "broker/orders", "True").await;
    wait_ready(kube, "shop", "trigger/fulfil", "True").await;

    // Both replicas take events; each event reaches the trigger's subscriber once.
    let n = 200;
    for i in 0..n {
        let (ingress, _) = planes[i % 2];
        let url = format!("http://{ingress}/shop/orders");
        assert_eq!(
            post_event(&url, &format!("o{i}"), "order", &[], "{}").await,
            202
        );
    }
    let got = sink.wait_for(n, T).await;
    let ids: HashSet<_> = got.iter().filter_map(|r| r.header("ce-id")).collect();
    assert_eq!(ids.len(), n, "every event delivered");
    assert_eq!(got.len(), n, "no event delivered twice");

    // A controller restart converges without writing anything: same statuses, same
    // resourceVersions. (The old leader's Lease must expire first; the new one proves it
    // has reconciled by making a new Trigger Ready.)
    let broker_rv = resource_version(kube, "broker/orders").await;
    let trigger_rv = resource_version(kube, "trigger/fulfil").await;
    let old = eventually(T, "a Lease holder", || lease_holder(kube)).await;
    first_controller.kill().await;
    let _second_controller = controller();
    eventually(
        Duration::from_secs(90),
        "the new controller leads",
        || async {
            let h = lease_holder(kube).await?;
            (h != old).then_some(())
        },
    )
    .await;
    apply(
        kube,
        &format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: audit, namespace: shop}}\nspec:\n  broker: orders\n  subscriber: {{uri: \"{}\"}}\n",
            sink.url()
        ),
    )
    .await;
    wait_ready(kube, "shop", "trigger/audit", "True").await;
    assert_eq!(resource_version(kube, "broker/orders").await, broker_rv);
    assert_eq!(resource_version(kube, "trigger/fulfil").await, trigger_rv);

    // Deleting a Trigger removes its durable consumer from the broker's stream.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream_name =
        sluice_channels::nats::stream_name(&sluice_core::topology::Key::new("shop", "orders"));
    let durables = || {
        let js = js.clone();
        let stream_name = stream_name.clone();
        async move {
            use futures::TryStreamExt;
            let stream = js.get_stream(&stream_name).await.unwrap();
            stream
                .consumer_names()
                .try_collect::<Vec<String>>()
                .await
                .unwrap()
        }
    };
    let before = durables().await;
    assert_eq!(before.len(), 2, "one durable per trigger: {before:?}");
    kube.kubectl(&["delete", "trigger/fulfil", "-n", "shop"])
        .await
        .unwrap();
    eventually(T, "the deleted trigger's durable is removed", || async {
        let now = durables().await;
        (now.len() == 1 && now.iter().all(|d| d.contains("audit"))).then_some(())
    })
    .await;
}

/// The Helm chart renders (`helm template`, helm built by scripts/install-kube.sh) to objects
/// the real API server accepts (server-side dry run: no kubelet runs the pods here), with the
/// image and replicas from values.
#[tokio::test]
async fn the_helm_chart_renders_objects_the_api_server_accepts() {
    let kube = shared_kube().await;
    let helm = std::env::var_os("SLUICE_HELM")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| {
                    std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache")
                });
            cache.join("sluice/helm-v4.3.2/helm")
        });
    assert!(
        helm.exists(),
        "{} is missing: run scripts/install-test-deps.sh (it builds helm from its Go module)",
        helm.display()
    );
    let chart = format!("{}/../deploy/helm/sluice", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new(&helm)
        .args([
            "template",
            "sluice",
            &chart,
            "-n",
            "helm-test",
            "--set",
            "image.tag=v9.9.9",
            "--set",
            "dataplane.replicas=5",
        ])
        .output()
        .await
        .expect("running helm");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8(out.stdout).unwrap();
    assert!(rendered.contains("image: \"ghcr.io/sluice-mesh/sluice:v9.9.9\""));
    assert!(rendered.contains("replicas: 5"));
    let _ = kube.kubectl(&["create", "namespace", "helm-test"]).await;
    let applied = kube
        .kubectl_stdin(
            &["apply", "--dry-run=server", "-n", "helm-test", "-f", "-"],
            &rendered,
        )
        .await
        .unwrap_or_else(|e| panic!("the API server refuses the chart: {e}"));
    for object in [
        "deployment.apps/sluice-controller",
        "deployment.apps/sluice-dataplane",
        "service/sluice-ingress",
        "service/sluice-admin",
        "clusterrole.rbac.authorization.k8s.io/sluice-controller",
        "poddisruptionbudget.policy/sluice-dataplane",
    ] {
        assert!(applied.contains(object), "{object} not in: {applied}");
    }
}
