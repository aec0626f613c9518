//! ApiServerSource in embedded mode: `sluice run --kubeconfig` against a real kube-apiserver
//! (etcd + kube-apiserver from `sluice_tests::kube`), ConfigMaps created, updated and deleted
//! with kubectl, events received by a real HTTP sink.

mod common;

use common::*;
use sluice_tests::{shared_kube, KubeServer};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

async fn namespace(kube: &KubeServer, ns: &str) {
    let _ = kube.kubectl(&["create", "namespace", ns]).await;
}

async fn kubectl(kube: &KubeServer, args: &[&str]) {
    kube.kubectl(args).await.unwrap_or_else(|e| panic!("{e}"));
}

/// The status `/topology` gives the source.
async fn source_status(s: &Sluice, ns: &str, name: &str) -> Option<serde_json::Value> {
    let t: serde_json::Value = client()
        .get(format!("http://{}/topology", s.admin))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    t["sources"]
        .as_array()?
        .iter()
        .find(|o| o["kind"] == "ApiServerSource" && o["namespace"] == ns && o["name"] == name)
        .cloned()
}

async fn wait_ready(s: &Sluice, ns: &str, name: &str) {
    eventually(T, &format!("ApiServerSource {ns}/{name} ready"), || async {
        let st = source_status(s, ns, name).await?;
        (st["status"] == "True").then_some(())
    })
    .await;
}

fn source_yaml(ns: &str, mode: &str, sink: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: sources.knative.dev/v1
kind: ApiServerSource
metadata: {{name: watch, namespace: {ns}}}
spec:
  mode: {mode}
  resources:
    - apiVersion: v1
      kind: ConfigMap
      selector:
        matchLabels: {{app: watched}}
  sink: {{uri: "{sink}"}}
{extra}"#
    )
}

/// `type subject` of every request.
fn seen(got: &[Received]) -> Vec<String> {
    got.iter()
        .map(|r| {
            format!(
                "{} {}",
                r.header("ce-type").unwrap_or("-"),
                r.header("ce-subject").unwrap_or("-")
            )
        })
        .collect()
}

#[tokio::test]
async fn reference_mode_sends_exactly_the_matching_changes_in_order_and_a_restart_replays_nothing()
{
    let kube = shared_kube().await;
    let ns = "apisrc-ref";
    namespace(kube, ns).await;
    // Exists before the source starts: the first list is the baseline, no add for it.
    kubectl(
        kube,
        &["create", "configmap", "old", "-n", ns, "--from-literal=k=v"],
    )
    .await;
    kubectl(
        kube,
        &["label", "configmap", "old", "-n", ns, "app=watched"],
    )
    .await;

    let sink = Sink::ok().await;
    let dir = test_dir("apisrc-ref");
    std::fs::write(
        dir.join("resources.yaml"),
        source_yaml(ns, "Reference", &sink.url(), ""),
    )
    .unwrap();
    let kc = kube.kubeconfig_path().to_str().unwrap().to_string();
    let s = Sluice::start_in(dir.clone(), &["--kubeconfig", &kc]).await;
    wait_ready(&s, ns, "watch").await;

    kubectl(
        kube,
        &["create", "configmap", "a", "-n", ns, "--from-literal=k=1"],
    )
    .await;
    kubectl(kube, &["label", "configmap", "a", "-n", ns, "app=watched"]).await; // enters: add
    kubectl(
        kube,
        &[
            "create",
            "configmap",
            "other",
            "-n",
            ns,
            "--from-literal=k=1",
        ],
    )
    .await;
    kubectl(
        kube,
        &["label", "configmap", "other", "-n", ns, "app=ignored"],
    )
    .await;
    kubectl(kube, &["annotate", "configmap", "a", "-n", ns, "x=2"]).await; // update
    kubectl(kube, &["delete", "configmap", "a", "-n", ns]).await; // delete
    kubectl(kube, &["annotate", "configmap", "old", "-n", ns, "x=1"]).await; // update
    kubectl(kube, &["delete", "configmap", "other", "-n", ns]).await;
    // A last event: everything before it has arrived when it does.
    kubectl(kube, &["create", "configmap", "z", "-n", ns]).await;
    kubectl(kube, &["label", "configmap", "z", "-n", ns, "app=watched"]).await;

    let subject = |n: &str| format!("/apis/v1/namespaces/{ns}/configmaps/{n}");
    let got = sink.wait_for(5, T).await;
    assert_eq!(
        seen(&got),
        [
            format!("dev.knative.apiserver.ref.add {}", subject("a")),
            format!("dev.knative.apiserver.ref.update {}", subject("a")),
            format!("dev.knative.apiserver.ref.delete {}", subject("a")),
            format!("dev.knative.apiserver.ref.update {}", subject("old")),
            format!("dev.knative.apiserver.ref.add {}", subject("z")),
        ]
    );
    let first = &got[0];
    assert_eq!(first.header("ce-source"), Some(kube.server_url().as_str()));
    assert_eq!(first.header("ce-kind"), Some("ConfigMap"));
    assert_eq!(first.header("ce-apiversion"), Some("v1"));
    assert_eq!(first.header("ce-name"), Some("a"));
    assert_eq!(first.header("ce-namespace"), Some(ns));
    assert_eq!(first.header("content-type"), Some("application/json"));
    let data: serde_json::Value = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(
        data,
        serde_json::json!({"kind": "ConfigMap", "namespace": ns, "name": "a", "apiVersion": "v1"})
    );

    // A restart of the process: its first list is a new baseline. Nothing is re-emitted for
    // `old` and `z`, which it has seen before; the next change is sent once.
    s.kill().await;
    let s = Sluice::start_in(dir, &["--kubeconfig", &kc]).await;
    wait_ready(&s, ns, "watch").await;
    kubectl(kube, &["annotate", "configmap", "z", "-n", ns, "x=1"]).await;
    let got = sink.wait_for(6, T).await;
    assert_eq!(
        seen(&got[5..]),
        [format!("dev.knative.apiserver.ref.update {}", subject("z"))]
    );
    assert_eq!(sink.count(), 6, "no add for objects already seen");
}

#[tokio::test]
async fn resource_mode_sends_the_object_and_a_reload_resumes_without_duplicates() {
    let kube = shared_kube().await;
    let ns = "apisrc-res";
    namespace(kube, ns).await;
    let sink = Sink::ok().await;
    let dir = test_dir("apisrc-res");
    std::fs::write(
        dir.join("resources.yaml"),
        source_yaml(ns, "Resource", &sink.url(), ""),
    )
    .unwrap();
    let kc = kube.kubeconfig_path().to_str().unwrap().to_string();
    let s = Sluice::start_in(dir, &["--kubeconfig", &kc]).await;
    wait_ready(&s, ns, "watch").await;

    kubectl(
        kube,
        &[
            "create",
            "configmap",
            "b",
            "-n",
            ns,
            "--from-literal=color=blue",
        ],
    )
    .await;
    kubectl(kube, &["label", "configmap", "b", "-n", ns, "app=watched"]).await;
    let got = sink.wait_for(1, T).await;
    assert_eq!(
        got[0].header("ce-type"),
        Some("dev.knative.apiserver.resource.add")
    );
    let data: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(data["kind"], "ConfigMap");
    assert_eq!(data["apiVersion"], "v1");
    assert_eq!(data["metadata"]["name"], "b");
    assert_eq!(data["data"]["color"], "blue");

    // Editing the source restarts it inside the process: it resumes its watch where it was,
    // so `b` is not added again, and what changed meanwhile is sent once.
    s.write(
        "resources.yaml",
        &source_yaml(
            ns,
            "Resource",
            &sink.url(),
            "  ceOverrides:\n    extensions: {team: blue}\n",
        ),
    );
    // Touch `b` until an update carries the new extension (the reload has then happened);
    // every touch is one update, sent once, by the old or the new run of the source.
    let mut touches = 0;
    loop {
        touches += 1;
        assert!(touches < 200, "the edited source never sent an event");
        kubectl(
            kube,
            &[
                "annotate",
                "--overwrite",
                "configmap",
                "b",
                "-n",
                ns,
                &format!("touch={touches}"),
            ],
        )
        .await;
        let got = sink.wait_for(1 + touches, T).await;
        if got.last().unwrap().header("ce-team") == Some("blue") {
            break;
        }
    }
    kubectl(kube, &["create", "configmap", "c", "-n", ns]).await;
    kubectl(kube, &["label", "configmap", "c", "-n", ns, "app=watched"]).await;
    kubectl(kube, &["delete", "configmap", "b", "-n", ns]).await;
    let got = sink.wait_for(3 + touches, T).await;
    let subject = |n: &str| format!("/apis/v1/namespaces/{ns}/configmaps/{n}");
    let mut want = vec![format!(
        "dev.knative.apiserver.resource.add {}",
        subject("b")
    )];
    want.extend(
        (0..touches).map(|_| format!("dev.knative.apiserver.resource.update {}", subject("b"))),
    );
    want.push(format!(
        "dev.knative.apiserver.resource.add {}",
        subject("c")
    ));
    want.push(format!(
        "dev.knative.apiserver.resource.delete {}",
        subject("b")
    ));
    assert_eq!(seen(&got), want, "one event per change, no add of b again");
    assert_eq!(got.last().unwrap().header("ce-team"), Some("blue"));
}

#[tokio::test]
async fn without_rights_the_source_is_not_ready_with_the_missing_verbs_until_granted() {
    let kube = shared_kube().await;
    let ns = "apisrc-rbac";
    namespace(kube, ns).await;
    let user = kube.service_account(ns, "watcher").await;
    // The admin impersonates a second account (serviceAccountName) with no rights either.
    let _ = kube.service_account(ns, "nobody").await;
    let sink = Sink::ok().await;
    let dir = test_dir("apisrc-rbac");
    let yaml = format!(
        "{}---\n{}",
        source_yaml(ns, "Reference", &sink.url(), ""),
        source_yaml(
            ns,
            "Reference",
            &sink.url(),
            "  serviceAccountName: nobody\n"
        )
        .replace("name: watch,", "name: as-nobody,")
    );
    std::fs::write(dir.join("resources.yaml"), yaml).unwrap();
    let kc = user.kubeconfig_path().to_str().unwrap().to_string();
    let s = Sluice::start_in(dir.clone(), &["--kubeconfig", &kc]).await;
    let st = eventually(T, "the source denied", || async {
        let st = source_status(&s, ns, "watch").await?;
        (st["reason"] == "NoSufficientPermissions").then_some(st)
    })
    .await;
    assert_eq!(st["status"], "False");
    assert_eq!(
        st["message"],
        format!("User system:serviceaccount:{ns}:watcher cannot get, list, watch resource \"configmaps\" in API group \"\" in namespace \"{ns}\"")
    );

    // Granted list and watch only: `get` is still missing.
    kubectl(
        kube,
        &[
            "create",
            "role",
            "cm-lw",
            "-n",
            ns,
            "--verb=list,watch",
            "--resource=configmaps",
        ],
    )
    .await;
    kubectl(
        kube,
        &[
            "create",
            "rolebinding",
            "cm-lw",
            "-n",
            ns,
            "--role=cm-lw",
            &format!("--serviceaccount={ns}:watcher"),
        ],
    )
    .await;
    eventually(T, "only get missing", || async {
        let st = source_status(&s, ns, "watch").await?;
        (st["message"]
            == format!("User system:serviceaccount:{ns}:watcher cannot get resource \"configmaps\" in API group \"\" in namespace \"{ns}\""))
        .then_some(())
    })
    .await;
    kubectl(
        kube,
        &[
            "create",
            "role",
            "cm-get",
            "-n",
            ns,
            "--verb=get",
            "--resource=configmaps",
        ],
    )
    .await;
    kubectl(
        kube,
        &[
            "create",
            "rolebinding",
            "cm-get",
            "-n",
            ns,
            "--role=cm-get",
            &format!("--serviceaccount={ns}:watcher"),
        ],
    )
    .await;
    wait_ready(&s, ns, "watch").await;
    s.kill().await;

    // As the admin, impersonating `nobody`.
    let admin = kube.kubeconfig_path().to_str().unwrap().to_string();
    let s = Sluice::start_in(dir, &["--kubeconfig", &admin]).await;
    let st = eventually(T, "the impersonated source denied", || async {
        let st = source_status(&s, ns, "as-nobody").await?;
        (st["reason"] == "NoSufficientPermissions").then_some(st)
    })
    .await;
    assert_eq!(
        st["message"],
        format!("User system:serviceaccount:{ns}:nobody cannot get, list, watch resource \"configmaps\" in API group \"\" in namespace \"{ns}\"")
    );
    wait_ready(&s, ns, "watch").await;
}

#[tokio::test]
async fn a_namespace_selector_follows_namespaces_labelled_later() {
    let kube = shared_kube().await;
    let (home, a, b) = ("apisrc-nssel", "apisrc-nssel-a", "apisrc-nssel-b");
    for ns in [home, a, b] {
        namespace(kube, ns).await;
    }
    kubectl(kube, &["label", "namespace", a, "sluice-test=watched"]).await;
    kubectl(kube, &["create", "configmap", "x", "-n", b]).await;
    let sink = Sink::ok().await;
    let dir = test_dir("apisrc-nssel");
    let yaml = format!(
        r#"apiVersion: sources.knative.dev/v1
kind: ApiServerSource
metadata: {{name: watch, namespace: {home}}}
spec:
  namespaceSelector: {{matchLabels: {{sluice-test: watched}}}}
  resources: [{{apiVersion: v1, kind: ConfigMap}}]
  sink: {{uri: "{}"}}
"#,
        sink.url()
    );
    std::fs::write(dir.join("resources.yaml"), yaml).unwrap();
    let kc = kube.kubeconfig_path().to_str().unwrap().to_string();
    let s = Sluice::start_in(dir, &["--kubeconfig", &kc]).await;
    wait_ready(&s, home, "watch").await;

    kubectl(kube, &["create", "configmap", "c1", "-n", a]).await;
    let got = sink.wait_for(1, T).await;
    assert_eq!(
        seen(&got),
        [format!(
            "dev.knative.apiserver.ref.add /apis/v1/namespaces/{a}/configmaps/c1"
        )]
    );

    // `b` gets the label: the source starts watching it (its existing objects are the new
    // watch's baseline). Touch `x` until an update shows the watch is there.
    kubectl(kube, &["label", "namespace", b, "sluice-test=watched"]).await;
    let mut touch = 0;
    let sink_ref = &sink;
    eventually(T, "an update of b/x", || {
        touch += 1;
        let t = touch;
        async move {
            kubectl(
                kube,
                &[
                    "annotate",
                    "--overwrite",
                    "configmap",
                    "x",
                    "-n",
                    b,
                    &format!("t={t}"),
                ],
            )
            .await;
            (sink_ref.count() > 1).then_some(())
        }
    })
    .await;
    kubectl(kube, &["delete", "configmap", "x", "-n", b]).await;
    let delete = format!("dev.knative.apiserver.ref.delete /apis/v1/namespaces/{b}/configmaps/x");
    let got = eventually(T, "the delete of b/x", || async {
        let got = seen(&sink.received());
        got.contains(&delete).then_some(got)
    })
    .await;
    let update = format!("dev.knative.apiserver.ref.update /apis/v1/namespaces/{b}/configmaps/x");
    assert_eq!(got.last(), Some(&delete));
    assert!(
        got[1..got.len() - 1].iter().all(|e| *e == update),
        "only updates of x before its delete (no add): {got:?}"
    );
}

#[tokio::test]
async fn without_a_cluster_the_source_says_so_and_a_bad_kubeconfig_is_refused() {
    let sink = Sink::ok().await;
    let dir = test_dir("apisrc-nocluster");
    std::fs::write(
        dir.join("resources.yaml"),
        source_yaml("default", "Reference", &sink.url(), ""),
    )
    .unwrap();
    // No --kubeconfig and nothing to infer: the rest runs, the source is not ready.
    let missing = dir.join("no-such-kubeconfig");
    let missing = missing.to_str().unwrap();
    let s = Sluice::start_in_env(
        dir.clone(),
        &[],
        &[
            ("KUBECONFIG", missing),
            ("HOME", missing),
            ("KUBERNETES_SERVICE_HOST", ""),
        ],
    )
    .await;
    let st = eventually(T, "the source not ready", || async {
        let st = source_status(&s, "default", "watch").await?;
        (st["status"] == "False").then_some(st)
    })
    .await;
    assert_eq!(
        st["message"],
        "no Kubernetes API server to watch: give `sluice run` a --kubeconfig (or set KUBECONFIG)"
    );
    s.kill().await;

    // A --kubeconfig that cannot be read stops the start with a message naming it.
    let out = tokio::process::Command::new(binary())
        .args([
            "run",
            "--no-watch",
            "-f",
            dir.to_str().unwrap(),
            "--kubeconfig",
            missing,
        ])
        .args(["--ingress", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin", &format!("127.0.0.1:{}", free_port())])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot read the kubeconfig {missing}")),
        "{stderr}"
    );
}
