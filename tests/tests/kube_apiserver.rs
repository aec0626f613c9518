//! The Kubernetes harness against a real kube-apiserver + etcd: custom resources with a status
//! subresource and CEL validation, RBAC with client-certificate and service-account
//! identities. One API server is shared by the tests in this binary.

use sluice_tests::{eventually, kube_version, shared_kube, start_kube, KubeServer};
use std::time::Duration;

/// A trimmed Knative Broker CRD: enough schema for the checks below, with `spec.config`
/// immutable through a CEL transition rule as in Knative (which enforces it in a webhook).
const BROKER_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: brokers.eventing.knative.dev
spec:
  group: eventing.knative.dev
  scope: Namespaced
  names:
    kind: Broker
    plural: brokers
    singular: broker
    listKind: BrokerList
  versions:
    - name: v1
      served: true
      storage: true
      subresources:
        status: {}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                config:
                  type: object
                  x-kubernetes-validations:
                    - rule: self == oldSelf
                      message: spec.config is immutable
                  properties:
                    apiVersion: {type: string}
                    kind: {type: string}
                    name: {type: string}
                    namespace: {type: string}
            status:
              type: object
              x-kubernetes-preserve-unknown-fields: true
"#;

async fn kube() -> &'static KubeServer {
    let kube = shared_kube().await;
    eprintln!(
        "kube-apiserver {} started in {:.1?}",
        kube_version(),
        kube.startup_time()
    );
    kube
}

async fn create_namespace(kube: &KubeServer, name: &str) {
    kube.kubectl(&["create", "namespace", name])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

fn ok(r: Result<String, String>) -> String {
    r.unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn discovery_and_kubectl_report_the_pinned_release() {
    let kube = kube().await;
    let (status, body) = kube
        .request_as(kube.admin(), "GET", "/version", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let version: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(version["gitVersion"], kube_version(), "{body}");

    let out = ok(kube.kubectl(&["version", "-o", "json"]).await);
    let versions: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(versions["clientVersion"]["gitVersion"], kube_version());
    assert_eq!(versions["serverVersion"]["gitVersion"], kube_version());
}

#[tokio::test]
async fn broker_crd_has_a_status_subresource_and_an_immutable_field() {
    let kube = kube().await;
    ok(kube.kubectl_stdin(&["apply", "-f", "-"], BROKER_CRD).await);
    ok(kube
        .kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/brokers.eventing.knative.dev",
            "--timeout=60s",
        ])
        .await);

    let ns = "crd-test";
    create_namespace(kube, ns).await;
    let broker = r#"{"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
        "metadata": {"name": "default"},
        "spec": {"config": {"apiVersion": "v1", "kind": "ConfigMap", "name": "config-br"}}}"#;
    // Discovery of a new CRD reaches kubectl's cache a moment after Established.
    eventually(
        Duration::from_secs(30),
        "the Broker kind to be served",
        || async {
            kube.kubectl_stdin(&["create", "-n", ns, "-f", "-"], broker)
                .await
                .ok()
        },
    )
    .await;
    let get = |path: &'static str| async move {
        ok(kube
            .kubectl(&[
                "get",
                "broker",
                "default",
                "-n",
                ns,
                "-o",
                &format!("jsonpath={path}"),
            ])
            .await)
    };

    ok(kube
        .kubectl(&[
            "patch",
            "broker",
            "default",
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status": {"address": {"url": "http://broker.example"}}}"#,
        ])
        .await);
    assert_eq!(get("{.status.address.url}").await, "http://broker.example");
    let generation = get("{.metadata.generation}").await;
    assert_eq!(
        generation, "1",
        "a status write must not bump the generation"
    );

    // With the subresource on, the main resource ignores status changes.
    ok(kube
        .kubectl(&[
            "patch",
            "broker",
            "default",
            "-n",
            ns,
            "--type=merge",
            "-p",
            r#"{"status": {"address": {"url": "http://other.example"}}}"#,
        ])
        .await);
    assert_eq!(get("{.status.address.url}").await, "http://broker.example");

    let refused = kube
        .kubectl(&[
            "patch",
            "broker",
            "default",
            "-n",
            ns,
            "--type=merge",
            "-p",
            r#"{"spec": {"config": {"name": "another"}}}"#,
        ])
        .await
        .expect_err("changing spec.config must be refused");
    assert!(refused.contains("spec.config is immutable"), "{refused}");
    assert!(refused.contains("Invalid"), "{refused}");
    assert_eq!(get("{.spec.config.name}").await, "config-br");
}

#[tokio::test]
async fn rbac_forbids_users_until_a_role_is_bound() {
    let kube = kube().await;
    let ns = "rbac-test";
    create_namespace(kube, ns).await;
    let path = format!("/api/v1/namespaces/{ns}/configmaps");

    let (status, body) = kube
        .request_as(kube.admin(), "GET", &path, None)
        .await
        .unwrap();
    assert_eq!(status, 200, "admin: {body}");

    let alice = kube.user("alice", Some("sluice-testers"));
    let whoami = ok(kube
        .kubectl_as(&alice, &["auth", "whoami", "-o", "json"], None)
        .await);
    let review: serde_json::Value = serde_json::from_str(&whoami).unwrap();
    assert_eq!(review["status"]["userInfo"]["username"], "alice");
    let groups = review["status"]["userInfo"]["groups"].to_string();
    assert!(groups.contains("sluice-testers"), "{groups}");

    let (status, body) = kube.request_as(&alice, "GET", &path, None).await.unwrap();
    assert_eq!(status, 403, "alice has no role yet: {body}");
    let err = kube
        .kubectl_as(&alice, &["get", "configmaps", "-n", ns], None)
        .await
        .expect_err("alice may not list configmaps");
    assert!(err.contains("Forbidden"), "{err}");

    let controller = kube.service_account(ns, "sluice-controller").await;
    assert_eq!(
        controller.name(),
        format!("system:serviceaccount:{ns}:sluice-controller")
    );
    let (status, body) = kube
        .request_as(&controller, "GET", &path, None)
        .await
        .unwrap();
    assert_eq!(status, 403, "the service account has no role yet: {body}");

    ok(kube
        .kubectl(&[
            "create",
            "role",
            "configmap-reader",
            "-n",
            ns,
            "--verb=get,list",
            "--resource=configmaps",
        ])
        .await);
    ok(kube
        .kubectl(&[
            "create",
            "rolebinding",
            "configmap-readers",
            "-n",
            ns,
            "--role=configmap-reader",
            "--group=sluice-testers",
            &format!("--serviceaccount={ns}:sluice-controller"),
        ])
        .await);
    // The RBAC authorizer learns of new bindings through a watch.
    for user in [&alice, &controller] {
        eventually(
            Duration::from_secs(30),
            "the role binding to apply",
            || async {
                let (status, _) = kube.request_as(user, "GET", &path, None).await.ok()?;
                (status == 200).then_some(())
            },
        )
        .await;
    }
    // The binding is for reading configmaps in this namespace only.
    let (status, body) = kube
        .request_as(&alice, "GET", "/api/v1/namespaces/default/configmaps", None)
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    let (status, body) = kube
        .request_as(
            &controller,
            "POST",
            &path,
            Some(r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}"#),
        )
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
}

#[tokio::test]
async fn a_private_server_is_killed_on_drop() {
    let kube = start_kube().await;
    let url = kube.server_url();
    let (status, _) = kube
        .request_as(kube.admin(), "GET", "/livez", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let port = kube.port();
    drop(kube);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "{url} still answers after the server was dropped"
    );
}
