//! The ApiServerSource watch loop against a real kube-apiserver: a watch resumed from a
//! resourceVersion etcd has compacted away (410 Gone) lists again and sends only what changed
//! since the objects were last seen — no adds for objects already seen.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ApiResource, DynamicObject};
use sluice_sources::apiserver::{watch, Change, ChangeKind, WatchState, Watched};
use sluice_tests::{start_kube_with, KubeServer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

async fn kubectl(kube: &KubeServer, args: &[&str]) {
    kube.kubectl(args).await.unwrap_or_else(|e| panic!("{e}"));
}

fn target(client: &kube::Client, ns: &str) -> Watched {
    let ar = ApiResource::erase::<ConfigMap>(&());
    Watched {
        api: Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar),
        ar,
        selector: "app=w".into(),
        owner: None,
    }
}

fn name(c: &Change) -> String {
    let n = c.object["metadata"]["name"].as_str().unwrap_or("?");
    format!("{:?} {n}", c.kind)
}

#[tokio::test]
async fn a_watch_whose_resource_version_was_compacted_relists_without_spurious_adds() {
    // Without the watch cache, watches read etcd: a compaction there is a 410 for them (with
    // the cache, the API server keeps serving the recent history from memory).
    let kube = &start_kube_with(&["--watch-cache=false"]).await;
    let ns = "watch-410";
    let _ = kube.kubectl(&["create", "namespace", ns]).await;
    for cm in ["a", "b", "unlabelled"] {
        kubectl(kube, &["create", "configmap", cm, "-n", ns]).await;
    }
    kubectl(kube, &["label", "configmap", "a", "b", "-n", ns, "app=w"]).await;
    let kc = kube::config::Kubeconfig::read_from(kube.kubeconfig_path()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();

    // First run: the list is the baseline (no events); stop once it is done.
    let mut state = WatchState::default();
    let (tx, mut rx) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    watch(target(&client, ns), &mut state, tx, cancel, |r| {
        assert_eq!(r, Ok(()));
        stop.cancel();
    })
    .await;
    assert!(rx.try_recv().is_err(), "the baseline list sends nothing");
    assert_eq!(state.tracker.len(), 2);
    let listed_at = state.resource_version.clone().expect("a resourceVersion");

    // While nobody watches: a changes, b goes, c comes, the unlabelled one changes.
    kubectl(kube, &["annotate", "configmap", "a", "-n", ns, "x=1"]).await;
    kubectl(kube, &["delete", "configmap", "b", "-n", ns]).await;
    kubectl(kube, &["create", "configmap", "c", "-n", ns]).await;
    kubectl(kube, &["label", "configmap", "c", "-n", ns, "app=w"]).await;
    kubectl(
        kube,
        &["annotate", "configmap", "unlabelled", "-n", ns, "x=1"],
    )
    .await;

    // etcd compacts its history (the API server does so every five minutes): the kept
    // resourceVersion is gone, the watch gets 410 Gone, the loop lists again and diffs
    // against what it had seen.
    kube.compact_etcd().await;
    let (tx, mut rx) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let collect = async move {
        let mut got = Vec::new();
        while got.len() < 3 {
            got.push(rx.recv().await.expect("a change"));
        }
        // One more change after the re-list arrives through the new watch.
        kubectl(kube, &["create", "configmap", "d", "-n", ns]).await;
        kubectl(kube, &["label", "configmap", "d", "-n", ns, "app=w"]).await;
        got.push(rx.recv().await.expect("a change"));
        stop.cancel();
        got
    };
    let (_, got) = tokio::join!(
        watch(target(&client, ns), &mut state, tx, cancel, |_| {}),
        collect
    );
    assert_eq!(
        got.iter().map(name).collect::<Vec<_>>(),
        ["Update a", "Add c", "Delete b", "Add d"]
    );
    assert_eq!(got[0].kind, ChangeKind::Update);
    assert_ne!(state.resource_version, Some(listed_at));
    assert_eq!(state.tracker.len(), 3);
}
