//! Kubernetes mode in tests: `sluice controller` / `sluice dataplane` processes against the
//! harness's real kube-apiserver, and kubectl helpers.

use super::binary;
use serde_json::Value;
use sluice_tests::KubeServer;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

const T: Duration = Duration::from_secs(60);

/// A `sluice controller` or `sluice dataplane` process, killed on drop.
pub struct Proc {
    child: Child,
}

impl Proc {
    /// `sluice <args> --kubeconfig <admin's>`.
    pub fn spawn(kube: &KubeServer, args: &[&str]) -> Proc {
        Self::spawn_with(kube.kubeconfig_path(), args)
    }

    /// `sluice <args> --kubeconfig <kubeconfig>` (e.g. a ServiceAccount's).
    pub fn spawn_with(kubeconfig: &Path, args: &[&str]) -> Proc {
        let child = Command::new(binary())
            .args(args)
            .arg("--kubeconfig")
            .arg(kubeconfig)
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

    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then waits for the process to exit (a graceful stop).
    pub async fn terminate(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let _ = tokio::time::timeout(T, self.child.wait()).await;
    }
}

pub async fn apply(kube: &KubeServer, yaml: &str) {
    kube.kubectl_stdin(&["apply", "-f", "-"], yaml)
        .await
        .unwrap_or_else(|e| panic!("kubectl apply: {e}\n{yaml}"));
}

pub async fn install_crds(kube: &KubeServer) {
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

pub fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", sluice_tests::free_port())
        .parse()
        .unwrap()
}

pub async fn get_json(kube: &KubeServer, args: &[&str]) -> Option<Value> {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    let out = kube.kubectl(&a).await.ok()?;
    serde_json::from_str(&out).ok()
}

pub fn condition<'a>(obj: &'a Value, ty: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
}

/// Waits until `kind/name` in `ns` has condition Ready with `status`, returning the object.
pub async fn wait_ready(kube: &KubeServer, ns: &str, what: &str, status: &str) -> Value {
    let last = std::sync::Mutex::new(Value::Null);
    let found = tokio::time::timeout(T, async {
        loop {
            if let Some(obj) = get_json(kube, &[what, "-n", ns]).await {
                let ok = condition(&obj, "Ready").is_some_and(|r| r["status"] == status);
                if ok {
                    return obj;
                }
                *last.lock().unwrap() = obj;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| {
        panic!(
            "timed out after {T:?} waiting for {what} Ready={status}; last seen status: {:#}",
            last.lock().unwrap()["status"]
        )
    })
}

/// Who holds the controller's leader Lease (in `sluice-system`).
pub async fn lease_holder(kube: &KubeServer) -> Option<String> {
    let lease = get_json(kube, &["lease/sluice-controller", "-n", "sluice-system"]).await?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_string)
}
