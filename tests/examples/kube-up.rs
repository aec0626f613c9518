//! A throwaway Kubernetes API server (etcd + kube-apiserver, no kubelet) to try Kubernetes
//! mode and the ApiServerSource on a laptop: the same one the tests start. It prints a
//! kubeconfig and runs until Ctrl-C, then removes everything it made.
//!
//! ```sh
//! scripts/install-kube.sh                       # once: builds kube-apiserver, etcd, kubectl
//! cargo run -p sluice-tests --example kube-up   # prints `export KUBECONFIG=...`
//! ```

#[tokio::main]
async fn main() {
    let kube = sluice_tests::start_kube().await;
    let kubectl = kube.kubectl_path().display().to_string();
    println!("kube-apiserver ready at {}", kube.server_url());
    println!("export KUBECONFIG={}", kube.kubeconfig_path().display());
    println!("alias kubectl={kubectl}");
    println!("(Ctrl-C stops it and removes its files)");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    // Dropping `kube` stops the API server and etcd and removes their files.
    drop(kube);
}
